//! CPU fast paths for the UNet's element-wise work (issue 17): softmax over the last dim,
//! SiLU, GroupNorm (+ SiLU), GEGLU and the 3x3 convolution's im2col gather, each one pass over
//! memory with a vectorisable `exp` / `erf` instead of candle's chains of small ops and scalar
//! libm calls.
//!
//! Each entry point takes the fast path only for an f32 tensor on the CPU that no gradient is
//! tracked through (`!track_op()`: saliency's taps need candle's differentiable ops); anything
//! else goes to the candle op it replaces, so GPUs and f16/f64 models are untouched.
//!
//! The element-wise kernels are plain Rust compiled three times (AVX-512, AVX2 + FMA,
//! baseline) and picked at run time. They never call `mul_add` and keep reductions in fixed
//! lane order, so all three give the same bits, whichever the machine has. The matrix products
//! (`linear`, `conv_gemm`, `attention`) call the gemm crate directly, as candle's matmul does,
//! with the bias, per-image bias and residual as the accumulator's starting value and per-head
//! or transposed operands read through strides instead of copied.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use candle_nn::GroupNorm;
use rayon::prelude::*;

/// Work below this many elements runs on the calling thread: on small tensors (the bundled
/// model's) handing halves to another thread costs more than it saves.
const PAR_MIN: usize = 1 << 16;

thread_local! {
    /// Set while this thread runs one share of work already split across the cores
    /// ([`serial`]): the kernels then stay on it instead of handing parts to other threads.
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the kernels called on this thread kept on it (no rayon hand-offs, gemm
/// single-threaded): for work that is itself one of several run in parallel, such as one half
/// of a CFG batch ([`crate::model::unet::UNet::forward_added`]). Bits do not change: no
/// kernel's result depends on how its rows are split across threads.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(SERIAL.with(|s| s.replace(true)));
    f()
}

/// The threads a kernel may use: rayon's, or 1 inside [`serial`].
fn threads() -> usize {
    if SERIAL.with(|s| s.get()) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Defines `fn $name(args)` that runs `$body` compiled for the best instruction set this CPU
/// has: the body is an `#[inline(always)]` function inlined into one copy per target feature
/// set, so every helper it calls (`exp`, the lane sums) is vectorised for that set too.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn v4($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Splits `dst` into runs of whole `row`-long rows and calls `f(first_row, run)` on each: one
/// run on the calling thread for small work, one per rayon thread for large.
fn split_rows(dst: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let row = row.max(1);
    let rows = dst.len() / row;
    let threads = threads();
    if dst.len() < PAR_MIN || threads < 2 || rows < 2 {
        return f(0, dst);
    }
    let per = rows.div_ceil(threads);
    dst.par_chunks_mut(per * row).enumerate().for_each(|(i, run)| f(i * per, run));
}

/// True when `x` may take a fast path.
pub fn fast(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() && x.elem_count() > 0
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
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Cephes expf's minimax polynomial for e^r - 1 - r on |r| <= ln2 / 2.
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // 2^n from the integer in t's low mantissa bits (a float-to-int `as` cast does not
    // vectorise as well).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()).wrapping_add(127) << 23);
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

/// A sum in 8 fixed f64 lanes, then the lanes in order (GroupNorm's statistics over up to
/// millions of values): vectorises, and gives the same bits on every instruction set.
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
        let mut dst = src.to_vec();
        split_rows(&mut dst, n, |_, run| softmax_rows_in_place(run, n));
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

multiversion! {
    fn silu_slice(src: &[f32], dst: &mut [f32]) {
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = silu1(v);
        }
    }
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "fast-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut dst = vec![0f32; src.len()];
        split_rows(&mut dst, 1, |first, run| silu_slice(&src[first..first + run.len()], run));
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

struct GnParams<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f64,
    silu: bool,
    hw: usize,
    per_group: usize,
    channels_per_group: usize,
    groups: usize,
}

multiversion! {
    /// GroupNorm (+ SiLU) of whole (image, group) rows of `src` into `dst`, the first being row
    /// `first` of the tensor.
    fn group_norm_rows(src: &[f32], dst: &mut [f32], first: usize, p: &GnParams) {
        let n = p.per_group as f64;
        for (r, (s, d)) in src.chunks_exact(p.per_group).zip(dst.chunks_exact_mut(p.per_group)).enumerate() {
            let mean = sum_lanes_f64(s, |v| v) / n;
            let var = sum_lanes_f64(s, |v| (v - mean) * (v - mean)) / n;
            let rstd = 1.0 / (var + p.eps).sqrt();
            let c0 = ((first + r) % p.groups) * p.channels_per_group;
            for (k, (dc, sc)) in d.chunks_exact_mut(p.hw).zip(s.chunks_exact(p.hw)).enumerate() {
                // (x - mean) * rstd * w + b as one multiply and one add per value.
                let w = p.weight[c0 + k] as f64;
                let a = (rstd * w) as f32;
                let shift = (p.bias[c0 + k] as f64 - mean * rstd * w) as f32;
                if p.silu {
                    for (o, &v) in dc.iter_mut().zip(sc) {
                        *o = silu1(v * a + shift);
                    }
                } else {
                    for (o, &v) in dc.iter_mut().zip(sc) {
                        *o = v * a + shift;
                    }
                }
            }
        }
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
        let (w, b, eps, silu) = (&self.layer.weight[..], &self.layer.bias[..], self.layer.eps, self.silu);
        let mut dst = vec![0f32; src.len()];
        let p = GnParams {
            weight: w,
            bias: b,
            eps,
            silu,
            hw,
            per_group,
            channels_per_group: c / g,
            groups: g,
        };
        // One row per (image, group); the group's channels are contiguous in it.
        split_rows(&mut dst, per_group, |first, run| {
            group_norm_rows(&src[first * per_group..first * per_group + run.len()], run, first, &p)
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// GEGLU: the feed-forward's `hidden * gelu(gate)` with [hidden | gate] = the projection.

multiversion! {
    /// `hidden * gelu(gate)` for each row [hidden | gate] (2 `inner` long) of `src`.
    fn geglu_rows(src: &[f32], dst: &mut [f32], inner: usize) {
        for (s, d) in src.chunks_exact(2 * inner).zip(dst.chunks_exact_mut(inner)) {
            let (hidden, gate) = s.split_at(inner);
            for ((o, &h), &g) in d.iter_mut().zip(hidden).zip(gate) {
                *o = h * gelu1(g);
            }
        }
    }
}

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
        split_rows(&mut dst, inner, |first, run| {
            geglu_rows(&src[first * two..first * two + 2 * run.len()], run, inner)
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
        // (kh - 1, kw - 1) with zeros where the shift leaves the image. In the flattened plane a
        // shift is one offset, so each row is one contiguous copy; then the column that wrapped
        // around from the neighbouring image row is zeroed.
        let body = |bc: usize, rows: &mut [f32]| {
            let s = &src[bc * plane..(bc + 1) * plane];
            for (k, out) in rows.chunks_mut(plane).enumerate() {
                let (dy, dx) = ((k / 3) as isize - 1, (k % 3) as isize - 1);
                let off = dy * w as isize + dx;
                // Output rows whose source row is inside the image.
                let (y0, y1) = ((-dy).max(0) as usize, (h as isize - dy).min(h as isize) as usize);
                let lo = ((y0 * w) as isize).max(-off);
                let hi = ((y1 * w) as isize).min(plane as isize - off);
                if lo < hi {
                    let (slo, shi) = ((lo + off) as usize, (hi + off) as usize);
                    out[lo as usize..hi as usize].copy_from_slice(&s[slo..shi]);
                }
                let edge = match dx {
                    -1 => Some(0),
                    1 => Some(w - 1),
                    _ => None,
                };
                if let Some(x) = edge {
                    for y in y0..y1 {
                        out[y * w + x] = 0.0;
                    }
                }
            }
        };
        if dst.len() >= PAR_MIN && threads() > 1 {
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

// ---------------------------------------------------------------------------------------------
// Matrix products through the gemm crate directly: bias, per-image bias and residual are the
// accumulator's starting value (no separate broadcast passes), and transposed or per-head
// operands are read through strides (no copies).

/// A matrix inside a slice: element (r, c) at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn at(self, offset: usize) -> Mat<'a> {
        Mat {
            data: &self.data[offset..],
            ..self
        }
    }
}

/// `dst` (m x n, row stride `dst_rs`) = (dst when `accumulate`, else 0) + beta * lhs (m x k) *
/// rhs (k x n).
#[allow(clippy::too_many_arguments)]
fn gemm_into(dst: &mut [f32], dst_rs: usize, dims: (usize, usize, usize), lhs: Mat, rhs: Mat, accumulate: bool, beta: f32, threads: usize) {
    let (m, n, _) = dims;
    assert!(m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len());
    // SAFETY: the assert keeps the output inside `dst`, which is borrowed mutably.
    unsafe { gemm_ptr(dst.as_mut_ptr(), dst_rs, dims, lhs, rhs, accumulate, beta, threads) }
}

/// [`gemm_into`] with the output behind a raw pointer.
///
/// # Safety
/// `dst` must be valid for writes of rows `0..m` (stride `dst_rs`), columns `0..n`, and nothing
/// else may access those elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_ptr(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    beta: f32,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |x: Mat, r: usize, c: usize| r.saturating_sub(1) * x.rs + c.saturating_sub(1) * x.cs;
    assert!(k == 0 || last(lhs, m, k) < lhs.data.len());
    assert!(k == 0 || last(rhs, k, n) < rhs.data.len());
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts keep every operand element the strides reach inside its slice; the
    // caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Calls `f` with the f32 data of CPU tensor `t` (made contiguous first).
fn read<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("kernels: expects an f32 CPU tensor")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("kernels: expects a contiguous tensor")
    };
    f(&data[a..b])
}

/// True when every tensor may take a fast path (`None`s count as yes).
pub fn all_fast(ts: &[Option<&Tensor>]) -> bool {
    ts.iter().all(|t| t.is_none_or(fast))
}

/// `x · wᵀ + bias (+ residual)` for `x` [..., K], `w` [N, K]: candle's `Linear` with the
/// residual added, in one product whose accumulator starts at bias + residual.
pub fn linear(x: &Tensor, lin: &candle_nn::Linear, residual: Option<&Tensor>) -> Result<Tensor> {
    let w = lin.weight();
    if !all_fast(&[Some(x), Some(w), lin.bias(), residual]) {
        let y = candle_core::Module::forward(lin, x)?;
        return match residual {
            Some(r) => y + r,
            None => Ok(y),
        };
    }
    let (n, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    let m = x.elem_count() / k.max(1);
    *dims.last_mut().expect("rank >= 1") = n;
    let mut dst = match residual {
        Some(r) => read(r, |r| Ok(r.to_vec()))?,
        None => vec![0f32; m * n],
    };
    if dst.len() != m * n {
        candle_core::bail!("linear: residual has {} values, the output {}", dst.len(), m * n)
    }
    if let Some(b) = lin.bias() {
        read(b, |b| {
            for row in dst.chunks_exact_mut(n) {
                for (o, &v) in row.iter_mut().zip(b) {
                    *o += v;
                }
            }
            Ok(())
        })?;
    }
    read(x, |xs| {
        read(w, |ws| {
            let lhs = Mat { data: xs, rs: k, cs: 1 };
            let rhs = Mat { data: ws, rs: 1, cs: k };
            gemm_into(&mut dst, n, (m, n, k), lhs, rhs, true, 1.0, threads());
            Ok(())
        })
    })?;
    Tensor::from_vec(dst, dims, x.device())
}

/// How a convolution's input is laid out for [`conv_gemm`].
#[derive(Clone, Copy, PartialEq)]
pub enum ConvInput {
    /// [B, C, H, W].
    Nchw,
    /// [B, H * W, C] (a transformer's tokens going back to the image); only for 1x1.
    Tokens { h: usize, w: usize },
}

/// A 3x3 (stride 1, padding 1) or 1x1 convolution as one product per image: `w_flat`
/// [C_out, C_in * k * k] against the im2col columns (3x3) or the input itself (1x1), the
/// accumulator starting at bias + `extra` [B, C_out] (per image and channel) + `residual`
/// [B, C_out, H, W]. Output [B, C_out, H, W], or [B, H * W, C_out] with `tokens_out`.
#[allow(clippy::too_many_arguments)]
pub fn conv_gemm(
    x: &Tensor,
    input: ConvInput,
    w_flat: &Tensor,
    k3: bool,
    bias: Option<&Tensor>,
    extra: Option<&Tensor>,
    residual: Option<&Tensor>,
    tokens_out: bool,
) -> Result<Tensor> {
    let (b, c, h, w) = match input {
        ConvInput::Nchw => x.dims4()?,
        ConvInput::Tokens { h, w } => {
            let (b, _, c) = x.dims3()?;
            (b, c, h, w)
        }
    };
    let (co, kdim) = w_flat.dims2()?;
    let plane = h * w;
    let winograd = k3 && kdim == c * 9 && input == ConvInput::Nchw && !tokens_out && winograd_fits(h, w);
    let cols = if k3 && !winograd { Some(im2col_3x3(x)?) } else { None };
    // The starting accumulator, [B, C_out, plane] (or [B, plane, C_out] for tokens_out).
    let mut dst = match residual {
        Some(r) => read(r, |r| Ok(r.to_vec()))?,
        None => vec![0f32; b * co * plane],
    };
    if dst.len() != b * co * plane {
        candle_core::bail!("conv: residual has {} values, the output {}", dst.len(), b * co * plane)
    }
    let bias = bias.map(|t| read(t, |v| Ok(v.to_vec()))).transpose()?;
    let extra = extra.map(|t| read(t, |v| Ok(v.to_vec()))).transpose()?;
    if bias.is_some() || extra.is_some() {
        for (bi, img) in dst.chunks_exact_mut(co * plane).enumerate() {
            for ch in 0..co {
                let add = bias.as_ref().map_or(0.0, |v| v[ch]) + extra.as_ref().map_or(0.0, |v| v[bi * co + ch]);
                if tokens_out {
                    img[ch..].iter_mut().step_by(co).for_each(|o| *o += add);
                } else {
                    img[ch * plane..(ch + 1) * plane].iter_mut().for_each(|o| *o += add);
                }
            }
        }
    }
    if winograd {
        read(x, |xs| read(w_flat, |ws| Ok(winograd_3x3(xs, (b, c, h, w), ws, co, &mut dst))))?;
        return Tensor::from_vec(dst, (b, co, h, w), x.device());
    }
    let src = cols.as_ref().unwrap_or(x);
    read(src, |xs| {
        read(w_flat, |ws| {
            let per_image = kdim * plane;
            for (bi, img) in dst.chunks_exact_mut(co * plane).enumerate() {
                let rhs = match (input, k3) {
                    // Column matrix [K, plane].
                    (_, true) | (ConvInput::Nchw, false) => Mat {
                        data: &xs[bi * per_image..],
                        rs: plane,
                        cs: 1,
                    },
                    // Tokens [plane, C]: read transposed.
                    (ConvInput::Tokens { .. }, false) => Mat {
                        data: &xs[bi * per_image..],
                        rs: 1,
                        cs: c,
                    },
                };
                let lhs = Mat { data: ws, rs: kdim, cs: 1 };
                if tokens_out {
                    // outᵀ [plane, C_out] = rhsᵀ · wᵀ.
                    let rhs_t = Mat {
                        data: rhs.data,
                        rs: rhs.cs,
                        cs: rhs.rs,
                    };
                    let w_t = Mat { data: ws, rs: 1, cs: kdim };
                    gemm_into(img, co, (plane, co, kdim), rhs_t, w_t, true, 1.0, threads());
                } else {
                    gemm_into(img, plane, (co, plane, kdim), lhs, rhs, true, 1.0, threads());
                }
            }
            Ok(())
        })
    })?;
    if tokens_out {
        Tensor::from_vec(dst, (b, plane, co), x.device())
    } else {
        Tensor::from_vec(dst, (b, co, h, w), x.device())
    }
}

// ---------------------------------------------------------------------------------------------
// 3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016): each 2x2
// block of outputs from a 4x4 input patch with 16 products per channel pair instead of 36. The
// patch d and the kernel g go to the 4x4 transform domain, V = Bᵀ d B and U = G g Gᵀ; there
// the sum over input channels is one product per transform position, M = Σ_c U ⊙ V (16 matrix
// products [C_out, C_in] x [C_in, tiles]), and Aᵀ M A is the 2x2 output block. The transform
// coefficients are 0, ±1 and ±1/2 (exact in binary), so the rounding stays that of a sum of a
// few more terms: a few ulps from the direct sum, well inside every parity tolerance.

/// Fewest 2x2 output tiles per image for which a 3x3 convolution goes through Winograd (a
/// 32x32 plane): on smaller planes the 16 products are too thin to run at speed, and with the
/// weight transformed on each call the 2.25x fewer multiplications no longer pay (measured: 1.5x
/// faster at 32x32, none at 16x16). Per image, not per batch, so an image's bits never depend
/// on what else is in its batch (the CFG halves run together or apart).
const WINOGRAD_MIN_TILES: usize = 256;

thread_local! {
    /// The transformed weights, inputs and products of this thread's last Winograd
    /// convolution, kept for the next: fresh buffers of this size would cost more in page
    /// faults than the transforms themselves.
    static WINOGRAD_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// True when a 3x3 convolution of an H x W plane takes the Winograd path.
pub fn winograd_fits(h: usize, w: usize) -> bool {
    h >= 2 && w >= 2 && h.div_ceil(2) * w.div_ceil(2) >= WINOGRAD_MIN_TILES
}

/// `out[i] = f(a[i], b[i], c[i])` (inlined into the callers' vectorised bodies).
#[inline(always)]
fn lanes3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(x, y, z);
    }
}

multiversion! {
    /// The kernels of `ws` [K, C * 9] in the transform domain: `u` [K, 16, C], U = G g Gᵀ with
    /// G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1], for output channels `k0..` (one 16 * C run each).
    /// Each kernel row is first transposed to [9, C] so the arithmetic runs along C in lanes.
    fn winograd_weights(ws: &[f32], c: usize, k0: usize, u: &mut [f32]) {
        let mut gt = vec![0f32; 9 * c];
        let mut t = vec![0f32; 3 * c];
        for (kk, uk) in u.chunks_exact_mut(16 * c).enumerate() {
            let wk = &ws[(k0 + kk) * c * 9..(k0 + kk + 1) * c * 9];
            for (ci, g) in wk.chunks_exact(9).enumerate() {
                for (j, &x) in g.iter().enumerate() {
                    gt[j * c + ci] = x;
                }
            }
            // Row i of t = G g (4 x 3, each entry a run over C), then row i of U = t Gᵀ.
            let g = |kh: usize, kw: usize| &gt[(kh * 3 + kw) * c..(kh * 3 + kw + 1) * c];
            for i in 0..4 {
                for (kw, tj) in t.chunks_exact_mut(c).enumerate() {
                    let (g0, g1, g2) = (g(0, kw), g(1, kw), g(2, kw));
                    match i {
                        0 => tj.copy_from_slice(g0),
                        1 => lanes3(tj, g0, g1, g2, |a, b, cc| (a + b + cc) * 0.5),
                        2 => lanes3(tj, g0, g1, g2, |a, b, cc| (a - b + cc) * 0.5),
                        _ => tj.copy_from_slice(g2),
                    }
                }
                let (t0, t1, t2) = (&t[..c], &t[c..2 * c], &t[2 * c..]);
                let ui = &mut uk[i * 4 * c..(i + 1) * 4 * c];
                let (u0, rest) = ui.split_at_mut(c);
                let (u1, rest) = rest.split_at_mut(c);
                let (u2, u3) = rest.split_at_mut(c);
                u0.copy_from_slice(t0);
                lanes3(u1, t0, t1, t2, |a, b, cc| (a + b + cc) * 0.5);
                lanes3(u2, t0, t1, t2, |a, b, cc| (a - b + cc) * 0.5);
                u3.copy_from_slice(t2);
            }
        }
    }
}

multiversion! {
    /// The input patches of planes `src` (H x W each, consecutive) in the transform domain:
    /// for each plane a [16, tiles] run of `v`, V = Bᵀ d B with
    /// Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], d the 4x4 patch whose top-left is
    /// (2 ty - 1, 2 tx - 1), zero outside the plane. Bᵀ runs down whole padded rows first, then
    /// B along each of the four rows it gives.
    fn winograd_inputs(src: &[f32], h: usize, w: usize, v: &mut [f32]) {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = th * tw;
        let pw = 2 * tw + 2;
        let mut pad = vec![0f32; (2 * th + 2) * pw];
        let mut t = vec![0f32; 4 * pw];
        for (plane, vp) in src.chunks_exact(h * w).zip(v.chunks_exact_mut(16 * tiles)) {
            for y in 0..h {
                pad[(y + 1) * pw + 1..(y + 1) * pw + 1 + w].copy_from_slice(&plane[y * w..(y + 1) * w]);
            }
            for ty in 0..th {
                let d = |r: usize| &pad[(2 * ty + r) * pw..(2 * ty + r + 1) * pw];
                let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                {
                    let (t0, rest) = t.split_at_mut(pw);
                    let (t1, rest) = rest.split_at_mut(pw);
                    let (t2, t3) = rest.split_at_mut(pw);
                    lanes3(t0, d0, d2, d2, |a, b, _| a - b);
                    lanes3(t1, d1, d2, d2, |a, b, _| a + b);
                    lanes3(t2, d2, d1, d1, |a, b, _| a - b);
                    lanes3(t3, d1, d3, d3, |a, b, _| a - b);
                }
                for (i, ti) in t.chunks_exact(pw).enumerate() {
                    let at = ty * tw;
                    let row = |r: usize| (i * 4 + r) * tiles + at;
                    let (a, b) = (ti[..2 * tw].chunks_exact(2), ti[2..].chunks_exact(2));
                    for (tx, (p, q)) in a.zip(b).enumerate() {
                        let (x0, x1, x2, x3) = (p[0], p[1], q[0], q[1]);
                        vp[row(0) + tx] = x0 - x2;
                        vp[row(1) + tx] = x1 + x2;
                        vp[row(2) + tx] = x2 - x1;
                        vp[row(3) + tx] = x1 - x3;
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Adds the output blocks Aᵀ M A, Aᵀ = [1 1 1 0; 0 1 -1 -1], of each [16, tiles] run of `m`
    /// into the matching H x W plane of `dst` (dropping the row / column past an odd edge).
    fn winograd_outputs(m: &[f32], h: usize, w: usize, dst: &mut [f32]) {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = th * tw;
        for (mp, out) in m.chunks_exact(16 * tiles).zip(dst.chunks_exact_mut(h * w)) {
            for ty in 0..th {
                for tx in 0..tw {
                    let at = ty * tw + tx;
                    let e = |i: usize| mp[i * tiles + at];
                    // t = Aᵀ M (2 x 4), then Y = t A (2 x 2).
                    let mut t = [[0f32; 4]; 2];
                    for j in 0..4 {
                        let (m0, m1, m2, m3) = (e(j), e(4 + j), e(8 + j), e(12 + j));
                        t[0][j] = m0 + m1 + m2;
                        t[1][j] = m1 - m2 - m3;
                    }
                    for (i, ti) in t.iter().enumerate() {
                        let y = 2 * ty + i;
                        if y >= h {
                            continue;
                        }
                        let x = 2 * tx;
                        out[y * w + x] += ti[0] + ti[1] + ti[2];
                        if x + 1 < w {
                            out[y * w + x + 1] += ti[1] - ti[2] - ti[3];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the 3x3 (stride 1, padding 1) convolution of `xs` [B, C, H, W] by `ws` [K, C * 9]
/// into `dst` [B, K, H, W] through F(2x2, 3x3). The 16 products per image each run on one
/// thread (several at once when there are threads to spare), so the bits never depend on the
/// thread count.
fn winograd_3x3(xs: &[f32], (b, c, h, w): (usize, usize, usize, usize), ws: &[f32], k: usize, dst: &mut [f32]) {
    let tiles = h.div_ceil(2) * w.div_ceil(2);
    let (nu, nv, nm) = (k * 16 * c, b * c * 16 * tiles, b * k * 16 * tiles);
    // Taken out while in use: a nested call (rayon work stolen meanwhile) starts its own.
    let mut scratch = WINOGRAD_SCRATCH.take();
    if scratch.len() < nu + nv + nm {
        // Every element is written before it is read: no need to clear what was there.
        scratch.resize(nu + nv + nm, 0.0);
    }
    let (u, rest) = scratch.split_at_mut(nu);
    let (v, rest) = rest.split_at_mut(nv);
    let m = &mut rest[..nm];
    split_rows(u, 16 * c, |k0, run| winograd_weights(ws, c, k0, run));
    split_rows(v, 16 * tiles, |p0, run| {
        let planes = run.len() / (16 * tiles);
        winograd_inputs(&xs[p0 * h * w..(p0 + planes) * h * w], h, w, run)
    });
    let (u, v) = (&*u, &*v);
    let m_ptr = SharedOut(m.as_mut_ptr());
    let m_len = m.len();
    let product = |job: usize| {
        let (bi, xi) = (job / 16, job % 16);
        let lhs = Mat {
            data: u,
            rs: 16 * c,
            cs: 1,
        }
        .at(xi * c);
        let rhs = Mat {
            data: v,
            rs: 16 * tiles,
            cs: 1,
        }
        .at(bi * c * 16 * tiles + xi * tiles);
        let start = bi * k * 16 * tiles + xi * tiles;
        assert!(start + (k - 1) * 16 * tiles + tiles <= m_len);
        // SAFETY: inside `m` (the assert); job (bi, xi) writes only columns xi * tiles ..
        // (xi + 1) * tiles of image bi's K rows, which no other job touches, and `m` is not
        // otherwise accessed until all are done.
        unsafe { gemm_ptr(m_ptr.ptr().add(start), 16 * tiles, (k, tiles, c), lhs, rhs, false, 1.0, 1) };
    };
    if threads() > 1 {
        (0..b * 16).into_par_iter().for_each(product);
    } else {
        (0..b * 16).for_each(product);
    }
    split_rows(dst, h * w, |p0, run| {
        let planes = run.len() / (h * w);
        winograd_outputs(&m[p0 * 16 * tiles..(p0 + planes) * 16 * tiles], h, w, run)
    });
    WINOGRAD_SCRATCH.set(scratch);
}

/// A raw pointer that rayon's workers may share: each writes a disjoint part.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: used only for disjoint writes: the pairs of [`attention`], the products of
// [`winograd_3x3`].
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// (A method, so closures capture the whole wrapper, not its raw field.)
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

multiversion! {
    /// Softmax of each `n`-long row of `d`, in place: exp(x - max) summed in 16 fixed lanes,
    /// then times 1 / sum (as PyTorch's CPU softmax does it).
    fn softmax_rows_in_place(d: &mut [f32], n: usize) {
        for row in d.chunks_exact_mut(n) {
            let m = max_lanes(row);
            let mut acc = [0f32; 16];
            let mut chunks = row.chunks_exact_mut(16);
            for c in &mut chunks {
                for (a, o) in acc.iter_mut().zip(c) {
                    let e = exp(*o - m);
                    *o = e;
                    *a += e;
                }
            }
            for (a, o) in acc.iter_mut().zip(chunks.into_remainder()) {
                let e = exp(*o - m);
                *o = e;
                *a += e;
            }
            let inv = 1.0 / acc.iter().sum::<f32>();
            for o in row.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// Rows of queries per block when attention keeps no probabilities: a block's scores
/// (`ATTN_ROWS` x Lk) stay in the core's cache between the two products. Above 64, so a block's
/// products take the same path through gemm as the whole matrix's (its small-matrix path for
/// m, n <= 64 blocks the sum differently): a block's rows get the same bits either way.
const ATTN_ROWS: usize = 128;

/// Multi-head attention from the projections `q` [B, Lq, H * d], `k`, `v` [B, Lk, H * d]:
/// per (image, head) softmax(scale · q kᵀ) v, the heads read and written through strides.
/// Returns the output [B, Lq, H * d] and, with `keep_probs`, the probabilities
/// [B * H, Lq, Lk]. Without, the queries go through in blocks of about [`ATTN_ROWS`] rows
/// whose scores never leave a small scratch buffer (self-attention at 64x64 latents would
/// otherwise write and reread 4096 x 4096 floats per head); each row's arithmetic is the same.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32, keep_probs: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (b, lq, c) = q.dims3()?;
    let lk = k.dim(1)?;
    let d = c / heads;
    let pairs = b * heads;
    // Row blocks per (image, head): all rows in one when keeping the probabilities or when
    // there are few; otherwise blocks of ATTN_ROWS to 2 * ATTN_ROWS - 1 rows.
    let blocks = if keep_probs { 1 } else { (lq / ATTN_ROWS).max(1) };
    let block_start = |i: usize| i * lq / blocks;
    let mut probs = if keep_probs { vec![0f32; pairs * lq * lk] } else { Vec::new() };
    let mut out = vec![0f32; b * lq * c];
    let jobs = pairs * blocks;
    let par = pairs * lq * lk >= PAR_MIN && threads() > 1 && jobs > 1;
    read(q, |qs| {
        read(k, |ks| {
            read(v, |vs| {
                let out_ptr = SharedOut(out.as_mut_ptr());
                let out_len = out.len();
                // Block `blk` of pair `p`, its scores in `scores` (rows x lk).
                let one = |job: usize, scores: &mut [f32]| {
                    let (p, blk) = (job / blocks, job % blocks);
                    let (bi, hi) = (p / heads, p % heads);
                    let (r0, r1) = (block_start(blk), block_start(blk + 1));
                    let rows = r1 - r0;
                    let scores = &mut scores[..rows * lk];
                    let qm = Mat { data: qs, rs: c, cs: 1 }.at((bi * lq + r0) * c + hi * d);
                    let kt = Mat { data: ks, rs: 1, cs: c }.at(bi * lk * c + hi * d);
                    let vm = Mat { data: vs, rs: c, cs: 1 }.at(bi * lk * c + hi * d);
                    gemm_into(scores, lk, (rows, lk, d), qm, kt, false, scale, 1);
                    softmax_rows_in_place(scores, lk);
                    let pm = Mat {
                        data: scores,
                        rs: lk,
                        cs: 1,
                    };
                    let start = (bi * lq + r0) * c + hi * d;
                    assert!(rows == 0 || start + (rows - 1) * c + d <= out_len);
                    // SAFETY: inside `out` (the assert); this job's output is rows
                    // bi * lq + r0 .. bi * lq + r1, columns hi * d .. (hi + 1) * d, which no
                    // other job touches, and `out` is not otherwise accessed until all are done.
                    unsafe { gemm_ptr(out_ptr.ptr().add(start), c, (rows, d, lk), pm, vm, false, 1.0, 1) };
                };
                let scratch = || vec![0f32; (lq - block_start(blocks - 1)) * lk];
                match (keep_probs, par) {
                    (true, true) => probs.par_chunks_mut(lq * lk).enumerate().for_each(|(p, s)| one(p, s)),
                    (true, false) => probs.chunks_mut(lq * lk).enumerate().for_each(|(p, s)| one(p, s)),
                    (false, true) => (0..jobs).into_par_iter().for_each_init(scratch, |s, job| one(job, s)),
                    (false, false) => {
                        let mut s = scratch();
                        (0..jobs).for_each(|job| one(job, &mut s))
                    }
                }
                Ok(())
            })
        })
    })?;
    let probs = keep_probs
        .then(|| Tensor::from_vec(probs, (pairs, lq, lk), q.device()))
        .transpose()?;
    Ok((Tensor::from_vec(out, (b, lq, c), q.device())?, probs))
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

    /// The bit patterns of a tensor's values, for bit-for-bit comparisons.
    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
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
        for (shape, seed) in [([2, 3, 5, 7], 4u64), ([1, 2, 1, 2], 9), ([1, 3, 4, 1], 10), ([1, 64, 40, 40], 5)] {
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

    /// Attention without the probabilities runs the queries in blocks; every output value must
    /// keep its bits (capture on / off and parity rely on it), on one thread and on several.
    #[test]
    fn attention_in_blocks_gives_the_same_bits_as_whole() {
        for (b, lq, lk, heads, d) in [
            (2, 1000, 1000, 2, 40),
            (1, 300, 77, 8, 8),
            (2, 100, 100, 1, 16),
            (1, 256, 64, 4, 32),
        ] {
            let q = rand(&[b, lq, heads * d], 11);
            let k = rand(&[b, lk, heads * d], 12);
            let v = rand(&[b, lk, heads * d], 13);
            let scale = (d as f32).powf(-0.5);
            let (whole, probs) = attention(&q, &k, &v, heads, scale, true).unwrap();
            let probs = probs.expect("kept");
            for serial_run in [false, true] {
                let run = || attention(&q, &k, &v, heads, scale, false).unwrap();
                let (blocked, none) = if serial_run { serial(run) } else { run() };
                assert!(none.is_none());
                assert!(
                    bits(&whole) == bits(&blocked),
                    "({b}, {lq}, {lk}, {heads}, {d}), serial {serial_run}"
                );
            }
            // And it is attention: against candle's ops per head.
            let heads_of = |t: &Tensor, l: usize| t.reshape((b, l, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
            let (qh, kh, vh) = (heads_of(&q, lq), heads_of(&k, lk), heads_of(&v, lk));
            let p = candle_nn::ops::softmax_last_dim(&(qh.matmul(&kh.t().unwrap()).unwrap() * scale as f64).unwrap()).unwrap();
            let want = p.matmul(&vh).unwrap().transpose(1, 2).unwrap().reshape((b, lq, heads * d)).unwrap();
            assert!(max_diff(&whole, &want) < 1e-4);
            assert!(max_diff(&probs, &p.reshape((b * heads, lq, lk)).unwrap()) < 1e-5);
        }
    }

    /// 3x3 convolutions through Winograd's F(2x2, 3x3) against candle's direct conv2d (odd and
    /// even planes, bias, per-image bias, residual), with the same bits on one thread and on
    /// several and for an image alone or in a batch.
    #[test]
    fn winograd_conv_matches_direct_convolution() {
        for (b, c, k, h, w) in [(2, 8, 5, 32, 32), (1, 3, 7, 33, 31), (2, 40, 24, 32, 34), (1, 1, 1, 31, 32)] {
            assert!(winograd_fits(h, w));
            let x = rand(&[b, c, h, w], 21);
            let wt = (rand(&[k, c, 3, 3], 22) * 0.1).unwrap();
            let bias = rand(&[k], 23);
            let extra = rand(&[b, k], 24);
            let residual = rand(&[b, k, h, w], 25);
            let w_flat = wt.reshape((k, c * 9)).unwrap();
            let want = (x.conv2d(&wt, 1, 1, 1, 1).unwrap()
                + bias.reshape((1, k, 1, 1)).unwrap().broadcast_as((b, k, h, w)).unwrap()
                + extra.reshape((b, k, 1, 1)).unwrap().broadcast_as((b, k, h, w)).unwrap()
                + &residual)
                .unwrap();
            let run = || {
                conv_gemm(
                    &x,
                    ConvInput::Nchw,
                    &w_flat,
                    true,
                    Some(&bias),
                    Some(&extra),
                    Some(&residual),
                    false,
                )
                .unwrap()
            };
            let got = run();
            // Sums of up to c * 9 terms of size ~0.4 * 4: relative to that scale.
            let scale = (c * 9) as f32 * 1.6;
            assert!(
                max_diff(&got, &want) < 2e-6 * scale,
                "({b}, {c}, {k}, {h}, {w}): {}",
                max_diff(&got, &want)
            );
            assert!(bits(&got) == bits(&serial(run)), "thread count changed bits");
            let first = conv_gemm(
                &x.narrow(0, 0, 1).unwrap(),
                ConvInput::Nchw,
                &w_flat,
                true,
                Some(&bias),
                Some(&extra.narrow(0, 0, 1).unwrap()),
                Some(&residual.narrow(0, 0, 1).unwrap()),
                false,
            )
            .unwrap();
            assert!(bits(&first) == bits(&got.narrow(0, 0, 1).unwrap()), "batching changed bits");
        }
        assert!(!winograd_fits(16, 16) && !winograd_fits(30, 32) && !winograd_fits(1, 1000));
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
