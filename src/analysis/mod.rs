//! Pure functions over the plain arrays of a run: per-step statistics, attention maps for a
//! token (per step or aggregated, per resolution or across resolutions), latent previews, and
//! colormaps. No candle, no UI.

pub mod colormap;
pub mod pointing;
pub mod probe;
pub mod saliency;
pub mod schedules;

use crate::trace::{AttnMap, RgbImage, Run, StepRecord};

/// Standard deviation of a slice (population).
pub fn std_dev(v: &[f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt() as f32
}

/// Root-mean-square difference of two equally long slices.
pub fn rms_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    (a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt() as f32
}

/// Peak signal-to-noise ratio of two 8-bit images of one size, in dB: 10 log10(255^2 / MSE)
/// over every channel value. Identical images give [`PSNR_IDENTICAL`]; None when the sizes
/// differ.
pub fn psnr(a: &[u8], b: &[u8]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let mse = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    Some(if mse == 0.0 {
        PSNR_IDENTICAL
    } else {
        (10.0 * (255.0f64.powi(2) / mse).log10()).min(PSNR_IDENTICAL)
    })
}

/// Colour statistics of an 8-bit RGB image: mean HSV saturation ((max - min) / max per pixel,
/// 0 for black) and RMS contrast (the standard deviation of Rec. 601 luma, in [0, 1] units).
pub fn image_stats(rgb: &[u8]) -> (f64, f64) {
    let n = (rgb.len() / 3).max(1) as f64;
    let mut sat = 0.0;
    let (mut sum, mut sum2) = (0.0, 0.0);
    for p in rgb.chunks_exact(3) {
        let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
        let (hi, lo) = (r.max(g).max(b), r.min(g).min(b));
        if hi > 0.0 {
            sat += (hi - lo) / hi;
        }
        let y = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0;
        sum += y;
        sum2 += y * y;
    }
    let mean = sum / n;
    (sat / n, (sum2 / n - mean * mean).max(0.0).sqrt())
}

/// The PSNR reported for identical images (JSON has no infinity). One differing value in a
/// 64x64 RGB image gives about 88 dB.
pub const PSNR_IDENTICAL: f64 = 100.0;

/// Per-step curves for the timeline: latent std, and the RMS change of x0 from the previous
/// step (0 at the first step).
pub fn step_curves(steps: &[StepRecord]) -> (Vec<f32>, Vec<f32>) {
    let std = steps.iter().map(|s| std_dev(&s.latents)).collect();
    let change = steps
        .iter()
        .enumerate()
        .map(|(i, s)| if i == 0 { 0.0 } else { rms_diff(&s.x0, &steps[i - 1].x0) })
        .collect();
    (std, change)
}

/// Which attention maps of a step to use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MapSource {
    /// One saved map by its key (`attn_res.16x16` or `attn.<layer path>`).
    Key(String),
    /// All maps of the step, each upsampled to the finest one and averaged.
    All,
}

/// One token's attention over the latent grid: `values` is [height * width] row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMap {
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

impl TokenMap {
    pub fn max(&self) -> f32 {
        self.values.iter().copied().fold(0.0, f32::max)
    }
}

/// Column `token` of a [h*w, tokens] map.
fn column(map: &AttnMap, token: usize) -> Vec<f32> {
    (0..map.height * map.width).map(|p| map.data[p * map.tokens + token]).collect()
}

/// `u + w (c - u)`: classifier-free guidance of two branches' outputs, element by element (the
/// one formula of the pipeline's guided evaluations).
pub fn cfg_combine(uncond: &[f32], cond: &[f32], guidance: f32) -> Vec<f32> {
    uncond.iter().zip(cond).map(|(u, c)| u + guidance * (c - u)).collect()
}

/// Bilinear resampling of a [h, w] grid to [oh, ow] (align_corners = false, like
/// `F.interpolate(mode="bilinear")`, which DAAM uses to bring maps to one size).
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    if h == oh && w == ow {
        return src.to_vec();
    }
    let mut out = vec![0.0; oh * ow];
    let sy = h as f32 / oh as f32;
    let sx = w as f32 / ow as f32;
    for y in 0..oh {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let ty = fy - y0 as f32;
        for x in 0..ow {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let x0 = fx.floor() as usize;
            let x1 = (x0 + 1).min(w - 1);
            let tx = fx - x0 as f32;
            let top = src[y0 * w + x0] * (1.0 - tx) + src[y0 * w + x1] * tx;
            let bottom = src[y1 * w + x0] * (1.0 - tx) + src[y1 * w + x1] * tx;
            out[y * ow + x] = top * (1.0 - ty) + bottom * ty;
        }
    }
    out
}

/// The attention of `token` at one step from `source`, or None when the step has no such
/// maps (capture was off, or the key is absent).
pub fn token_map_at(step: &StepRecord, source: &MapSource, token: usize) -> Option<TokenMap> {
    token_map_in(&step.attention, source, token)
}

/// [`token_map_at`] over one step's maps.
pub fn token_map_in(maps: &[AttnMap], source: &MapSource, token: usize) -> Option<TokenMap> {
    match source {
        MapSource::Key(key) => {
            let m = maps.iter().find(|m| &m.key == key)?;
            (token < m.tokens).then(|| TokenMap {
                height: m.height,
                width: m.width,
                values: column(m, token),
            })
        }
        MapSource::All => {
            let finest = maps.iter().max_by_key(|m| m.height * m.width)?;
            let (h, w) = (finest.height, finest.width);
            let mut acc = vec![0.0f32; h * w];
            let mut n = 0;
            for m in maps.iter().filter(|m| token < m.tokens) {
                let up = resize_bilinear(&column(m, token), m.height, m.width, h, w);
                acc.iter_mut().zip(&up).for_each(|(a, b)| *a += b);
                n += 1;
            }
            (n > 0).then(|| TokenMap {
                height: h,
                width: w,
                values: acc.iter().map(|v| v / n as f32).collect(),
            })
        }
    }
}

/// A word's attention at one step: the sum of its sub-tokens' maps (as DAAM treats a word
/// split into several tokens). None when the step has no maps for them.
pub fn word_map_at(step: &StepRecord, source: &MapSource, tokens: &[usize]) -> Option<TokenMap> {
    word_map_in(&step.attention, source, tokens)
}

/// [`word_map_at`] over one step's maps.
pub fn word_map_in(maps: &[AttnMap], source: &MapSource, tokens: &[usize]) -> Option<TokenMap> {
    let mut acc: Option<TokenMap> = None;
    for &t in tokens {
        let m = token_map_in(maps, source, t)?;
        match &mut acc {
            None => acc = Some(m),
            Some(a) => a.values.iter_mut().zip(&m.values).for_each(|(x, y)| *x += y),
        }
    }
    acc
}

/// A word's attention averaged over the steps in `range` (inclusive), as DAAM aggregates over
/// time (divided by the number of steps so values stay comparable to one step's).
pub fn word_map_over(run: &Run, range: std::ops::RangeInclusive<usize>, source: &MapSource, tokens: &[usize]) -> Option<TokenMap> {
    let hi = (*range.end()).min(run.steps.len().checked_sub(1)?);
    let steps = run.steps.get(*range.start()..=hi)?;
    word_map_mean(steps.iter().map(|s| s.attention.as_slice()), source, tokens)
}

/// A word's attention averaged over steps (each step's maps); None when a step has no such
/// maps.
pub fn word_map_mean<'a>(steps: impl IntoIterator<Item = &'a [AttnMap]>, source: &MapSource, tokens: &[usize]) -> Option<TokenMap> {
    let maps: Option<Vec<TokenMap>> = steps.into_iter().map(|s| word_map_in(s, source, tokens)).collect();
    mean_map(maps?)
}

/// The element-wise mean of maps of one size; None for no maps.
pub fn mean_map(maps: Vec<TokenMap>) -> Option<TokenMap> {
    let n = maps.len() as f32;
    let mut it = maps.into_iter();
    let mut out = it.next()?;
    for m in it {
        out.values.iter_mut().zip(&m.values).for_each(|(a, b)| *a += b);
    }
    out.values.iter_mut().for_each(|v| *v /= n);
    Some(out)
}

/// Shannon entropy (nats) of a map normalised to a distribution over pixels: low when the
/// token attends to a small region, ln(h*w) when uniform.
pub fn entropy(values: &[f32]) -> f32 {
    let total: f64 = values.iter().map(|&v| v.max(0.0) as f64).sum();
    if total <= 0.0 {
        return 0.0;
    }
    -values
        .iter()
        .map(|&v| v.max(0.0) as f64 / total)
        .filter(|&p| p > 0.0)
        .map(|p| p * p.ln())
        .sum::<f64>() as f32
}

/// Linear latent → RGB factors for 4-channel SD latents (the approximation ComfyUI and A1111
/// use for instant previews), rows = latent channels, columns = R, G, B.
pub const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// A quick preview of latents [C, h, w] as an RGB image at latent resolution. 4-channel latents
/// use [`SD_LATENT_RGB`] (meant for latents scaled like the sampler's, i.e. times the VAE's
/// scaling factor); other channel counts show their first three channels, each normalised.
pub fn latent_preview(latents: &[f32], channels: usize, height: usize, width: usize) -> RgbImage {
    let n = height * width;
    let mut pixels = vec![0u8; n * 3];
    if channels == 4 && latents.len() == 4 * n {
        for p in 0..n {
            for (c, px) in pixels[p * 3..p * 3 + 3].iter_mut().enumerate() {
                let v: f32 = (0..4).map(|k| latents[k * n + p] * SD_LATENT_RGB[k][c]).sum();
                *px = (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    } else if latents.len() >= channels * n {
        for c in 0..3.min(channels) {
            let plane = &latents[c * n..(c + 1) * n];
            let (lo, hi) = plane.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let span = (hi - lo).max(1e-6);
            for p in 0..n {
                pixels[p * 3 + c] = (((plane[p] - lo) / span) * 255.0).round() as u8;
            }
        }
    }
    RgbImage { width, height, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_values() {
        // skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255) for a = [0]*4, b = [0, 0, 0, 10]:
        // MSE = 25, 10 log10(65025 / 25) = 34.1514 dB
        let p = psnr(&[0, 0, 0, 0], &[0, 0, 0, 10]).unwrap();
        assert!((p - 34.151_403).abs() < 1e-5, "{p}");
        assert_eq!(psnr(&[5; 12], &[5; 12]), Some(PSNR_IDENTICAL));
        assert_eq!(psnr(&[1, 2], &[1, 2, 3]), None);
    }

    #[test]
    fn image_stats_values() {
        // one pure red pixel and one grey: saturation (1 + 0) / 2; luma 0.299 and 0.50196
        let (sat, contrast) = image_stats(&[255, 0, 0, 128, 128, 128]);
        assert!((sat - 0.5).abs() < 1e-12);
        let (a, b) = (0.299, 128.0 / 255.0);
        assert!((contrast - (b - a) / 2.0).abs() < 1e-12, "{contrast}");
        assert_eq!(image_stats(&[0, 0, 0]), (0.0, 0.0));
    }

    #[test]
    fn entropy_bounds() {
        let uniform = vec![1.0; 16];
        assert!((entropy(&uniform) - (16f32).ln()).abs() < 1e-5);
        let mut peak = vec![0.0; 16];
        peak[3] = 5.0;
        assert_eq!(entropy(&peak), 0.0);
    }

    #[test]
    fn bilinear_matches_torch_align_corners_false() {
        // F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4), mode="bilinear")
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn token_maps_from_aggregate_and_all() {
        let map = |key: &str, h: usize, w: usize, v: f32| AttnMap {
            key: key.into(),
            height: h,
            width: w,
            tokens: 2,
            data: (0..h * w).flat_map(|p| [v * p as f32, 1.0]).collect(),
        };
        let step = StepRecord {
            index: 0,
            timestep: 1.0,
            sigma: 1.0,
            latents: vec![],
            x0: vec![],
            x0_from_scheduler: true,
            model_output: vec![],
            attention: vec![map("attn_res.4x4", 4, 4, 1.0), map("attn_res.2x2", 2, 2, 0.0)],
            saliency: Vec::new(),
            elapsed_secs: 0.0,
        };
        let m = token_map_at(&step, &MapSource::Key("attn_res.4x4".into()), 0).unwrap();
        assert_eq!(m.values[5], 5.0);
        let all = token_map_at(&step, &MapSource::All, 1).unwrap();
        assert_eq!((all.height, all.width), (4, 4));
        assert!(all.values.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(token_map_at(&step, &MapSource::Key("attn_res.8x8".into()), 0).is_none());
        assert!(token_map_at(&step, &MapSource::All, 2).is_none());
    }
}
