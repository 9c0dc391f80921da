//! The two ways images reach the Inception's 299x299 input, bit for bit as the reference
//! implementations do them:
//! - `Clean` (clean-fid's default): each channel as a float image resized with PIL's bicubic
//!   filter (a = -0.5, support widened by the scale when shrinking, weights normalised, sums
//!   in f64, horizontal pass then vertical), clipped to [0, 255];
//! - `TfBilinear` (torch-fidelity, pytorch-fid's TF graph): TensorFlow 1.x bilinear without
//!   aligned corners (source = destination x in/out, no half-pixel offset), in f32.
//!
//! Both then scale to (v - 128) / 128.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    Clean,
    TfBilinear,
}

impl Resize {
    pub fn name(self) -> &'static str {
        match self {
            Resize::Clean => "clean",
            Resize::TfBilinear => "tf-bilinear",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "clean" => Ok(Resize::Clean),
            "tf-bilinear" | "legacy" => Ok(Resize::TfBilinear),
            other => Err(format!("'{other}' is not a resize protocol (clean, tf-bilinear)")),
        }
    }
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs` for the bicubic filter: per output index, the first input index
/// and the normalised weights.
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|v| *v /= ww);
            }
            (xmin, k)
        })
        .collect()
}

/// PIL's bicubic resize of one float channel (`Image.fromarray(x, 'F').resize`), row-major.
pub fn pil_bicubic(src: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let mut cur = src.to_vec();
    let mut cw = w;
    if out_w != w {
        let kx = coeffs(w, out_w);
        let mut tmp = vec![0f32; out_w * h];
        for y in 0..h {
            for (xx, (xmin, k)) in kx.iter().enumerate() {
                let mut ss = 0.0f64;
                for (i, kv) in k.iter().enumerate() {
                    ss += cur[y * cw + xmin + i] as f64 * kv;
                }
                tmp[y * out_w + xx] = ss as f32;
            }
        }
        cur = tmp;
        cw = out_w;
    }
    if out_h != h {
        let ky = coeffs(h, out_h);
        let mut tmp = vec![0f32; cw * out_h];
        for (yy, (ymin, k)) in ky.iter().enumerate() {
            for x in 0..cw {
                let mut ss = 0.0f64;
                for (i, kv) in k.iter().enumerate() {
                    ss += cur[(ymin + i) * cw + x] as f64 * kv;
                }
                tmp[yy * cw + x] = ss as f32;
            }
        }
        cur = tmp;
    }
    cur
}

/// torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x(align_corners=False)` ("slow",
/// bit-exact on the CPU) of one channel, row-major.
pub fn tf_bilinear(src: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let grid = |in_size: usize, out_size: usize| -> Vec<(usize, usize, f32)> {
        let scale = (in_size as f64 / out_size as f64) as f32;
        (0..out_size)
            .map(|i| {
                let g = i as f32 * scale;
                let lo = g as usize;
                (lo, (lo + 1).min(in_size - 1), g - lo as f32)
            })
            .collect()
    };
    let gx = grid(w, out_w);
    let gy = grid(h, out_h);
    let mut out = vec![0f32; out_w * out_h];
    for (yy, &(ylo, yhi, dy)) in gy.iter().enumerate() {
        for (xx, &(xlo, xhi, dx)) in gx.iter().enumerate() {
            let (p00, p01) = (src[ylo * w + xlo], src[ylo * w + xhi]);
            let (p10, p11) = (src[yhi * w + xlo], src[yhi * w + xhi]);
            let top = p00 + (p01 - p00) * dx;
            let bottom = p10 + (p11 - p10) * dx;
            out[yy * out_w + xx] = top + (bottom - top) * dy;
        }
    }
    out
}

/// An RGB image (interleaved u8, `w` x `h`) as the network's input: [3, 299, 299] planes,
/// resized by `resize` and scaled to (v - 128) / 128.
pub fn network_input(rgb: &[u8], w: usize, h: usize, resize: Resize) -> Vec<f32> {
    let size = super::inception::SIZE;
    let mut out = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        let plane: Vec<f32> = (0..w * h).map(|i| rgb[i * 3 + c] as f32).collect();
        let resized = match resize {
            Resize::Clean => pil_bicubic(&plane, w, h, size, size)
                .into_iter()
                .map(|v| v.clamp(0.0, 255.0))
                .collect(),
            Resize::TfBilinear => tf_bilinear(&plane, w, h, size, size),
        };
        out.extend(resized.into_iter().map(|v| (v - 128.0) / 128.0));
    }
    out
}
