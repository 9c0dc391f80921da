//! The two ways images reach the Inception's 299x299 input, bit for bit as the reference
//! implementations do them:
//! - `Clean` (clean-fid's default): each channel as a float image resized with PIL's bicubic
//!   filter (a = -0.5, support widened by the scale when shrinking, weights normalised, sums
//!   in f64, horizontal pass then vertical), clipped to [0, 255];
//! - `TfBilinear` (torch-fidelity, pytorch-fid's TF graph): TensorFlow 1.x bilinear without
//!   aligned corners (source = destination x in/out, no half-pixel offset), in f32.
//!
//! Both then scale to (v - 128) / 128.
//!
//! And, for CLIP's image processor, `torchvision_u8`: torchvision's antialiased resize of a
//! uint8 image (what transformers 5's default `CLIPImageProcessor` runs), bit for bit.

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

/// The filter of [`torchvision_u8`] (transformers' `resample`: 2 bilinear, 3 bicubic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum U8Filter {
    Bilinear,
    Bicubic,
}

impl U8Filter {
    fn support(self) -> f64 {
        match self {
            U8Filter::Bilinear => 1.0,
            U8Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            U8Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            U8Filter::Bicubic => bicubic(x),
        }
    }
}

/// One axis of torchvision's uint8 antialiased resize: per output index the first input index
/// and the weights as int16 fixed point, with the precision (bits) they were scaled by.
struct U8Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
    precision: u32,
}

fn u8_taps(in_size: usize, out_size: usize, filter: U8Filter) -> U8Taps {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { filter.support() * scale } else { filter.support() };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut first = Vec::with_capacity(out_size);
    let mut float = Vec::with_capacity(out_size);
    for i in 0..out_size {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let mut w: Vec<f64> = (0..xsize.max(0))
            .map(|j| filter.weight(((j + xmin) as f64 - center + 0.5) * inv))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        first.push(xmin as usize);
        float.push(w);
    }
    // The padding weights are 0, so the maximum is at least 0 as in the kernel's table.
    let w_max = float.iter().flatten().fold(0.0f64, |m, &v| m.max(v));
    let mut precision = 0u32;
    while precision < 22 {
        if (0.5 + w_max * (1u64 << (precision + 1)) as f64) as i64 >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let unit = (1u64 << precision) as f64;
    let weights = float
        .iter()
        .map(|w| {
            w.iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * unit) as i32
                    } else {
                        (0.5 + v * unit) as i32
                    }
                })
                .collect()
        })
        .collect();
    U8Taps { first, weights, precision }
}

/// torchvision's `resize(uint8 tensor, antialias=True)` on the CPU (`_upsample_*2d_aa` with
/// int16 weights): horizontal pass, then vertical, each rounding and saturating to uint8.
/// `rgb` is interleaved RGB, `w` x `h`.
pub fn torchvision_u8(rgb: &[u8], w: usize, h: usize, out_w: usize, out_h: usize, filter: U8Filter) -> Vec<u8> {
    let mut cur = rgb.to_vec();
    let mut cw = w;
    let pass = |src: &[u8], taps: &U8Taps, n_out: usize, at: &dyn Fn(usize, usize) -> usize, len: usize| -> Vec<u8> {
        // `at(o, j)`: index of the j-th input pixel (channel 0) for output o; `len` output pixels.
        let mut out = vec![0u8; len * 3];
        let round = 1i32 << (taps.precision.max(1) - 1);
        for o in 0..len {
            let (line, pos) = (o / n_out, o % n_out);
            let k = &taps.weights[pos];
            for c in 0..3 {
                let mut ss = round;
                for (j, &kv) in k.iter().enumerate() {
                    ss += src[at(line, taps.first[pos] + j) + c] as i32 * kv;
                }
                out[o * 3 + c] = (ss >> taps.precision).clamp(0, 255) as u8;
            }
        }
        out
    };
    if out_w != w {
        let taps = u8_taps(w, out_w, filter);
        cur = pass(&cur, &taps, out_w, &|y, x| (y * cw + x) * 3, h * out_w);
        cw = out_w;
    }
    if out_h != h {
        let taps = u8_taps(h, out_h, filter);
        // Output index o = x * out_h + y (column-major lines), re-ordered to rows below.
        let cols = pass(&cur, &taps, out_h, &|x, y| (y * cw + x) * 3, cw * out_h);
        let mut rows = vec![0u8; cols.len()];
        for x in 0..cw {
            for y in 0..out_h {
                rows[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&cols[(x * out_h + y) * 3..(x * out_h + y) * 3 + 3]);
            }
        }
        cur = rows;
    }
    cur
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
