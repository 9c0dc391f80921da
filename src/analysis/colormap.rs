//! The colormaps, defined once: a 256-entry RGBA8 lookup table per map. The GPU heatmap shader
//! samples the very same table (uploaded as a 256x1 texture) and the PNG exporter indexes it on
//! the CPU, so a screen and an exported figure agree (tested in the UI tests).
//!
//! viridis / magma / inferno use Matt Zucker's degree-6 polynomial fits of the matplotlib maps;
//! turbo uses Google's published polynomial approximation, which drifts from the exact
//! turbo table by up to ~25 of 255 levels near its ends (tested bounds below).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Colormap {
    #[default]
    Viridis,
    Magma,
    Inferno,
    Turbo,
    Gray,
}

impl Colormap {
    pub const ALL: [Colormap; 5] = [
        Colormap::Viridis,
        Colormap::Magma,
        Colormap::Inferno,
        Colormap::Turbo,
        Colormap::Gray,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colormap::Viridis => "viridis",
            Colormap::Magma => "magma",
            Colormap::Inferno => "inferno",
            Colormap::Turbo => "turbo",
            Colormap::Gray => "gray",
        }
    }

    /// The colour of `t` in [0, 1] (clamped), as linear 0..1 sRGB-encoded floats.
    pub fn eval(self, t: f32) -> [f32; 3] {
        let t = t.clamp(0.0, 1.0) as f64;
        let poly = |c: &[[f64; 3]; 7]| -> [f32; 3] {
            let mut out = [0f32; 3];
            for (k, o) in out.iter_mut().enumerate() {
                let mut v = c[6][k];
                for i in (0..6).rev() {
                    v = c[i][k] + t * v;
                }
                *o = v.clamp(0.0, 1.0) as f32;
            }
            out
        };
        match self {
            Colormap::Viridis => poly(&VIRIDIS),
            Colormap::Magma => poly(&MAGMA),
            Colormap::Inferno => poly(&INFERNO),
            Colormap::Turbo => {
                let (x, x2, x3) = (t, t * t, t * t * t);
                let (x4, x5) = (x2 * x2, x2 * x3);
                let r = 0.13572138 + 4.61539260 * x - 42.66032258 * x2 + 132.13108234 * x3 - 152.94239396 * x4 + 59.28637943 * x5;
                let g = 0.09140261 + 2.19418839 * x + 4.84296658 * x2 - 14.18503333 * x3 + 4.27729857 * x4 + 2.82956604 * x5;
                let b = 0.10667330 + 12.64194608 * x - 60.58204836 * x2 + 110.36276771 * x3 - 89.90310912 * x4 + 27.34824973 * x5;
                [r.clamp(0.0, 1.0) as f32, g.clamp(0.0, 1.0) as f32, b.clamp(0.0, 1.0) as f32]
            }
            Colormap::Gray => [t as f32; 3],
        }
    }

    /// The lookup table: entry i is the colour of i / 255, RGBA8.
    pub fn lut(self) -> [[u8; 4]; 256] {
        let mut out = [[0u8; 4]; 256];
        for (i, e) in out.iter_mut().enumerate() {
            let [r, g, b] = self.eval(i as f32 / 255.0);
            *e = [(r * 255.0).round() as u8, (g * 255.0).round() as u8, (b * 255.0).round() as u8, 255];
        }
        out
    }

    /// The table entry for a normalised value, as the shader picks it (nearest of 256).
    pub fn lookup(lut: &[[u8; 4]; 256], t: f32) -> [u8; 4] {
        let i = (t.clamp(0.0, 1.0) * 255.0).round() as usize;
        lut[i]
    }
}

const VIRIDIS: [[f64; 3]; 7] = [
    [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
    [0.1050930431085774, 1.404613529898575, 1.384590162594685],
    [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
    [-4.634230498983486, -5.799100973351585, -19.33244095627987],
    [6.228269936347081, 14.17993336680509, 56.69055260068105],
    [4.776384997670288, -13.74514537774601, -65.35303263337234],
    [-5.435455855934631, 4.645852612178535, 26.3124352495832],
];

const MAGMA: [[f64; 3]; 7] = [
    [-0.002136485053939582, -0.000749655052795221, -0.005386127855323933],
    [0.2516605407371642, 0.6775232436837668, 2.494026599312351],
    [8.353717279216625, -3.577719514958484, 0.3144679030132573],
    [-27.66873308576866, 14.26473078096533, -13.64921318813922],
    [52.17613981234068, -27.94360607168351, 12.94416944238394],
    [-50.76852536473588, 29.04658282127291, 4.23415299384598],
    [18.65570506591883, -11.48977351997711, -5.601961508734096],
];

const INFERNO: [[f64; 3]; 7] = [
    [0.0002189403691192265, 0.001651004631001012, -0.01948089843709184],
    [0.1065134194856116, 0.5639564367884091, 3.932712388889277],
    [11.60249308247187, -3.972853965665698, -15.9423941062914],
    [-41.70399613139459, 17.43639888205313, 44.35414519872813],
    [77.162935699427, -33.40235894210092, -81.80730925738993],
    [-71.31942824499214, 32.62606426397723, 73.20951985803202],
    [25.13112622477341, -12.24266895238567, -23.07032500287172],
];

#[cfg(test)]
mod tests {
    use super::*;

    /// `tol`: the polynomial fits are within a few levels of matplotlib's tables for the
    /// perceptual maps; turbo's approximation drifts up to ~25 levels at its ends.
    fn check(map: Colormap, t: f32, expected: [u8; 3], tol: i32) {
        let c = Colormap::lookup(&map.lut(), t);
        for k in 0..3 {
            assert!(
                (c[k] as i32 - expected[k] as i32).abs() <= tol,
                "{} at {t}: {c:?} vs {expected:?}",
                map.name()
            );
        }
    }

    #[test]
    fn endpoints_match_matplotlib() {
        // matplotlib: viridis(0) = #440154, viridis(1) = #fde725; magma(1) = #fcfdbf;
        // inferno(1) = #fcffa4; turbo(0) = #30123b, turbo(1) = #7a0403.
        check(Colormap::Viridis, 0.0, [0x44, 0x01, 0x54], 5);
        check(Colormap::Viridis, 1.0, [0xfd, 0xe7, 0x25], 5);
        check(Colormap::Viridis, 0.5, [0x21, 0x91, 0x8c], 5);
        check(Colormap::Magma, 1.0, [0xfc, 0xfd, 0xbf], 5);
        check(Colormap::Inferno, 1.0, [0xfc, 0xff, 0xa4], 5);
        check(Colormap::Turbo, 0.5, [0xa4, 0xfc, 0x3c], 25);
        check(Colormap::Turbo, 1.0, [0x7a, 0x04, 0x03], 25);
        check(Colormap::Gray, 0.5, [128, 128, 128], 0);
    }
}
