//! CPU fast paths for the UNet's element-wise work (issue 17): softmax over the last dim,
//! SiLU, GroupNorm (+ SiLU), GEGLU and the 3x3 convolution's im2col gather, each one pass over
//! memory with a vectorisable `exp` / `erf` instead of candle's chains of small ops and scalar
//! libm calls.
//!
//! Each entry point takes the fast path only for an f32 tensor on the CPU that no gradient is
//! tracked through (`!track_op()`: saliency's taps need candle's differentiable ops); anything
//! else goes to the candle op it replaces, so GPUs and f16/f64 models are untouched.
//!
//! The kernels are plain Rust compiled three times (AVX-512, AVX2 + FMA, baseline) and picked
//! at run time. They never call `mul_add` and keep reductions in fixed lane order, so all three
//! give the same bits, whichever the machine has.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use candle_nn::GroupNorm;
use rayon::prelude::*;

/// Work below this many elements runs on the calling thread: on small tensors (the bundled
/// model's) handing halves to another thread costs more than it saves.
const PAR_MIN: usize = 1 << 16;

/// Runs `f` compiled for the best instruction set this CPU has.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// True when `x` may take a fast path.
fn fast(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()
}

/// The f32 slice of a contiguous CPU storage.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expects f32")
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

// ---------------------------------------------------------------------------------------------
// exp and erf, written so that a loop over them vectorises.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody-Waite), the high part exact in few bits.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to the nearest
/// integer (ties to even) with no branch and no libm call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x in f32, within 2 ulp of the true value on [-87, 88]; 0 below -87.3 (where e^x is
/// subnormal) and e^88 above 88 (the callers never need more).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Cephes expf's minimax polynomial for e^r - 1 - r on |r| <= ln2 / 2.
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { y * scale }
}

/// erf in f32 by Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7, about 5e-7 in f32), the formula
/// PyTorch's vectorised CPU `erf` uses for float.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let mut p = 1.061_405_4_f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    if x < 0.0 { -y } else { y }
}

#[inline(always)]
fn silu1(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn gelu1(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Sum in 16 fixed lanes, then the lanes in order: vectorises, and gives the same bits on every
/// instruction set.
#[inline(always)]
fn sum_lanes(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v);
    }
    acc.iter().sum()
}

/// Same as [`sum_lanes`] in f64 (GroupNorm's statistics over up to millions of values).
#[inline(always)]
fn sum_lanes_f64(xs: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v as f64);
    }
    acc.iter().sum()
}

#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if v > *a { v } else { *a };
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Runs `f` on each `row`-long row of `dst` (with its index), on rayon's pool when the work is
/// large.
fn for_rows(dst: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(row).enumerate().for_each(|(i, d)| simd(|| f(i, d)));
    } else {
        simd(|| dst.chunks_mut(row).enumerate().for_each(|(i, d)| f(i, d)));
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension.

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "fast-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        for_rows(&mut dst, n, |i, d| {
            let s = &src[i * n..(i + 1) * n];
            let m = max_lanes(s);
            for (o, &v) in d.iter_mut().zip(s) {
                *o = exp(v - m);
            }
            let total = sum_lanes(d, |v| v);
            for o in d.iter_mut() {
                *o /= total;
            }
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Softmax over the last dimension (candle's `softmax_last_dim` off the fast path).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

// ---------------------------------------------------------------------------------------------
// SiLU.

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "fast-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut dst = vec![0f32; src.len()];
        let row = src.len().div_ceil(2).max(1);
        for_rows(&mut dst, row, |i, d| {
            for (o, &v) in d.iter_mut().zip(&src[i * row..]) {
                *o = silu1(v);
            }
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// x * sigmoid(x) (candle's `silu` off the fast path).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        x.contiguous()?.apply_op1_no_bwd(&Silu)
    } else {
        x.silu()
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm, optionally followed by SiLU.

/// A GroupNorm layer with its parameters at hand for the fused kernel; candle's layer for
/// everything off the fast path.
#[derive(Clone)]
pub struct GroupNormLayer {
    inner: GroupNorm,
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    eps: f64,
}

impl GroupNormLayer {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<Self> {
        let inner = candle_nn::group_norm(groups, channels, eps, vb.clone())?;
        let weight = vb.get(channels, "weight")?.to_dtype(DType::F32)?.to_vec1()?;
        let bias = vb.get(channels, "bias")?.to_dtype(DType::F32)?.to_vec1()?;
        Ok(Self {
            inner,
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// GroupNorm of `x` [B, C, ...], then SiLU when `silu`.
    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if fast(x) && x.rank() >= 3 && x.dim(1)? == self.weight.len() {
            return x.contiguous()?.apply_op1_no_bwd(&GroupNormOp { layer: self, silu });
        }
        let y = candle_core::Module::forward(&self.inner, x)?;
        if silu { y.silu() } else { Ok(y) }
    }
}

struct GroupNormOp<'a> {
    layer: &'a GroupNormLayer,
    silu: bool,
}

impl CustomOp1 for GroupNormOp<'_> {
    fn name(&self) -> &'static str {
        "fast-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let dims = layout.dims();
        let (c, g) = (dims[1], self.layer.groups);
        let hw: usize = dims[2..].iter().product();
        let per_group = c / g * hw;
        let (w, b, eps, silu) = (&self.layer.weight, &self.layer.bias, self.layer.eps, self.silu);
        let mut dst = vec![0f32; src.len()];
        // One row per (image, group); the group's channels are contiguous in it.
        for_rows(&mut dst, per_group, |i, d| {
            let s = &src[i * per_group..(i + 1) * per_group];
            let n = per_group as f64;
            let mean = sum_lanes_f64(s, |v| v) / n;
            let var = sum_lanes_f64(s, |v| (v - mean) * (v - mean)) / n;
            let rstd = 1.0 / (var + eps).sqrt();
            let c0 = (i % g) * (c / g);
            for (k, (dc, sc)) in d.chunks_mut(hw).zip(s.chunks(hw)).enumerate() {
                // (x - mean) * rstd * w + b as one multiply-add per value.
                let a = (rstd * w[c0 + k] as f64) as f32;
                let shift = (b[c0 + k] as f64 - mean * rstd * w[c0 + k] as f64) as f32;
                if silu {
                    for (o, &v) in dc.iter_mut().zip(sc) {
                        *o = silu1(v * a + shift);
                    }
                } else {
                    for (o, &v) in dc.iter_mut().zip(sc) {
                        *o = v * a + shift;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// GEGLU: the feed-forward's `hidden * gelu(gate)` with [hidden | gate] = the projection.

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "fast-geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut dims = layout.dims().to_vec();
        let two = *dims.last().unwrap_or(&0);
        let inner = two / 2;
        *dims.last_mut().expect("rank >= 1") = inner;
        let mut dst = vec![0f32; src.len() / 2];
        for_rows(&mut dst, inner.max(1), |i, d| {
            let s = &src[i * two..(i + 1) * two];
            let (hidden, gate) = s.split_at(inner);
            for ((o, &h), &g) in d.iter_mut().zip(hidden).zip(gate) {
                *o = h * gelu1(g);
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from(dims)))
    }
}

/// `h[..., :n] * gelu(h[..., n:])` for `h` [..., 2n], GELU the exact (erf) one.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    if fast(h) && h.dim(candle_core::D::Minus1)? % 2 == 0 {
        return h.contiguous()?.apply_op1_no_bwd(&Geglu);
    }
    let inner = h.dim(candle_core::D::Minus1)? / 2;
    let hidden = h.narrow(candle_core::D::Minus1, 0, inner)?;
    let gate = h.narrow(candle_core::D::Minus1, inner, inner)?;
    hidden * gate.gelu_erf()?
}

// ---------------------------------------------------------------------------------------------
// im2col for 3x3, stride 1, padding 1.

struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "fast-im2col-3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let &[b, c, h, w] = layout.dims() else {
            candle_core::bail!("{}: expects [B, C, H, W]", self.name())
        };
        let plane = h * w;
        let mut dst = vec![0f32; b * c * 9 * plane];
        // Nine rows per input channel (kh, kw in order), each the channel shifted by
        // (kh - 1, kw - 1) with zeros where the shift leaves the image.
        let body = |bc: usize, rows: &mut [f32]| {
            let s = &src[bc * plane..(bc + 1) * plane];
            for (k, out) in rows.chunks_mut(plane).enumerate() {
                let (dy, dx) = (k / 3, k % 3);
                for y in 0..h {
                    let sy = y + dy;
                    if sy < 1 || sy > h {
                        continue;
                    }
                    let srow = &s[(sy - 1) * w..sy * w];
                    let orow = &mut out[y * w..(y + 1) * w];
                    match dx {
                        0 => orow[1..].copy_from_slice(&srow[..w - 1]),
                        1 => orow.copy_from_slice(srow),
                        _ => orow[..w - 1].copy_from_slice(&srow[1..]),
                    }
                }
            }
        };
        if dst.len() >= PAR_MIN {
            dst.par_chunks_mut(9 * plane).enumerate().for_each(|(i, r)| body(i, r));
        } else {
            dst.chunks_mut(9 * plane).enumerate().for_each(|(i, r)| body(i, r));
        }
        Ok((CpuStorage::F32(dst), Shape::from((b, c * 9, plane))))
    }
}

/// The column matrix [B, C * 9, H * W] of a 3x3, stride-1, padding-1 convolution of `x`
/// [B, C, H, W]: row c * 9 + kh * 3 + kw is channel c shifted by (kh - 1, kw - 1), zero-padded.
pub fn im2col_3x3(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if fast(x) && w >= 2 {
        return x.contiguous()?.apply_op1_no_bwd(&Im2Col3x3);
    }
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut shifted = Vec::with_capacity(9);
    for kh in 0..3 {
        for kw in 0..3 {
            shifted.push(padded.narrow(2, kh, h)?.narrow(3, kw, w)?);
        }
    }
    Tensor::stack(&shifted, 2)?.reshape((b, c * 9, h * w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // A small LCG: the tests need varied values, not a distribution.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn exp_and_erf_are_close_to_libm() {
        let mut worst_exp = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst_exp = worst_exp.max(rel);
            x += 0.0137;
        }
        assert!(worst_exp < 2.5e-7, "exp relative error {worst_exp}");
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        let mut worst_erf = 0f32;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst_erf = worst_erf.max((erf(x) - libm_erf(x)).abs());
            x += 0.001;
        }
        // The formula's own error is 1.5e-7; evaluating it in f32 adds a few roundings.
        assert!(worst_erf < 8e-7, "erf absolute error {worst_erf}");
    }

    /// erf by its Taylor series / continued fraction in f64 (no libm erf in std).
    fn libm_erf(x: f32) -> f32 {
        let x = x as f64;
        if x.abs() < 3.0 {
            let (mut term, mut sum, mut k) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                k += 1.0;
                term *= -x * x / k;
                sum += term / (2.0 * k + 1.0);
            }
            (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
        } else {
            // erfc by a continued fraction for |x| >= 3.
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (x.signum() * (1.0 - erfc)) as f32
        }
    }

    #[test]
    fn kernels_match_candle_ops() {
        let x = rand(&[2, 3, 37], 1);
        assert!(max_diff(&softmax_last_dim(&x).unwrap(), &candle_nn::ops::softmax_last_dim(&x).unwrap()) < 1e-6);
        let big = rand(&[4, 128, 300], 2);
        assert!(max_diff(&softmax_last_dim(&big).unwrap(), &candle_nn::ops::softmax_last_dim(&big).unwrap()) < 1e-6);
        assert!(max_diff(&silu(&x).unwrap(), &x.silu().unwrap()) < 2e-6);
        let h = rand(&[2, 5, 24], 3);
        let want = (h.narrow(2, 0, 12).unwrap() * h.narrow(2, 12, 12).unwrap().gelu_erf().unwrap()).unwrap();
        assert!(max_diff(&geglu(&h).unwrap(), &want) < 2e-6);
        for (shape, seed) in [([2, 3, 5, 7], 4u64), ([1, 64, 40, 40], 5)] {
            let x = rand(&shape, seed);
            let padded = x.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
            let mut shifted = vec![];
            for kh in 0..3 {
                for kw in 0..3 {
                    shifted.push(padded.narrow(2, kh, shape[2]).unwrap().narrow(3, kw, shape[3]).unwrap());
                }
            }
            let want = Tensor::stack(&shifted, 2)
                .unwrap()
                .reshape((shape[0], shape[1] * 9, shape[2] * shape[3]))
                .unwrap();
            assert_eq!(max_diff(&im2col_3x3(&x).unwrap(), &want), 0.0);
        }
    }

    #[test]
    fn group_norm_matches_candle_and_tracked_tensors_take_candles_path() {
        let c = 8;
        let w = (rand(&[c], 6) * 0.25).unwrap();
        let b = rand(&[c], 7);
        let mut ws = std::collections::HashMap::new();
        ws.insert("weight".to_string(), w);
        ws.insert("bias".to_string(), b);
        let vb = candle_nn::VarBuilder::from_tensors(ws, DType::F32, &Device::Cpu);
        let gn = GroupNormLayer::new(4, c, 1e-5, vb).unwrap();
        let x = (rand(&[2, c, 9, 11], 8) * 3.0).unwrap();
        for silu in [false, true] {
            let want = candle_core::Module::forward(&gn.inner, &x).unwrap();
            let want = if silu { want.silu().unwrap() } else { want };
            assert!(max_diff(&gn.forward(&x, silu).unwrap(), &want) < 2e-6);
        }
        // A tracked input goes through candle's ops, so gradients flow.
        let v = Var::from_tensor(&x).unwrap();
        let y = gn.forward(v.as_tensor(), true).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(v.as_tensor()).is_some());
    }
}
