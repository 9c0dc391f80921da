//! Noise schedules and timestep spacings, as pure functions (also used by the UI).
//!
//! Precision follows diffusers: betas / alphas_cumprod / sigmas are float32 torch tensors
//! (`torch.linspace` in float32, `torch.cumprod` accumulating in double and rounding each output
//! to float32), while timestep spacings, `np.interp` of sigmas and Karras sigmas are computed in
//! float64 numpy and only rounded to float32 at the end.

use super::config::{BetaSchedule, ResolvedConfig};
use super::{ExpVariant, SamplerError, TimestepSpacing};

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU, bit for bit: the float32
/// step, the two half-ranges computed from either end, and the vectorised kernel's
/// `base + i * step` blocks (16 lanes, two vectors per iteration, scalar tail).
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let s = start as f32;
    let e = end as f32;
    if steps == 0 {
        return Vec::new();
    }
    if steps == 1 {
        return vec![s];
    }
    let step = (e - s) / (steps - 1) as f32;
    let halfway = steps / 2;
    let scalar = |idx: usize| -> f32 {
        if idx < halfway {
            s + step * idx as f32
        } else {
            e - step * (steps - idx - 1) as f32
        }
    };
    const LANES: usize = 16;
    let mut out = Vec::with_capacity(steps);
    let mut idx = 0;
    while idx + 2 * LANES <= steps {
        for _ in 0..2 {
            let base = scalar(idx);
            for j in 0..LANES {
                out.push(base + j as f32 * step);
            }
            idx += LANES;
        }
    }
    while idx < steps {
        out.push(scalar(idx));
        idx += 1;
    }
    out
}

/// diffusers' `betas_for_alpha_bar(n)` with the cosine ("squaredcos_cap_v2") transform, max_beta 0.999.
pub fn betas_for_alpha_bar_cosine(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// The float32 betas of a resolved config (trained_betas, linear, scaled_linear, squaredcos_cap_v2),
/// including `rescale_betas_zero_snr` when the class has it and it is on.
pub fn betas(config: &ResolvedConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    let b = if let Some(tb) = &config.trained_betas {
        tb.iter().map(|&b| b as f32).collect()
    } else {
        match config.beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
            BetaSchedule::ScaledLinear => torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|x| x * x)
                .collect(),
            BetaSchedule::SquaredCosCapV2 => betas_for_alpha_bar_cosine(n),
        }
    };
    if config.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&b)
    } else {
        b
    }
}

/// `torch.cumprod(1 - betas)` in float32 (double accumulator, as torch's CPU kernel).
pub fn alphas_cumprod_from_betas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// alphas_cumprod of a resolved config, exactly as the diffusers class holds it (including the
/// `alphas_cumprod[-1] = 2**-24` that the sigma-based classes apply after a zero-SNR rescale).
pub fn alphas_cumprod(config: &ResolvedConfig) -> Vec<f32> {
    let mut ac = alphas_cumprod_from_betas(&betas(config));
    if config.rescale_betas_zero_snr
        && config.kind.is_sigma_based()
        && let Some(last) = ac.last_mut()
    {
        *last = 2f32.powi(-24);
    }
    ac
}

/// Zero terminal SNR rescale (Lin et al. 2023, arXiv 2305.08891, Algorithm 1), in float32.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let ac = alphas_cumprod_from_betas(betas);
    let mut s: Vec<f32> = ac.iter().map(|a| a.sqrt()).collect();
    let s0 = s[0];
    let st = s[s.len() - 1];
    let scale = s0 / (s0 - st);
    for v in &mut s {
        *v -= st;
        *v *= scale;
    }
    let bar: Vec<f32> = s.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// sigma_t = sqrt((1 - alpha_bar) / alpha_bar) in float32, indexed by training timestep.
pub fn sigmas_from_alphas_cumprod(ac: &[f32]) -> Vec<f32> {
    ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// log SNR = ln(alpha_bar / (1 - alpha_bar)) (float64, for display).
pub fn log_snr(ac: &[f32]) -> Vec<f64> {
    ac.iter().map(|&a| ((a as f64) / (1.0 - a as f64)).ln()).collect()
}

/// `np.linspace(start, stop, num)` in float64.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` for float arguments.
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    let len = if len.is_finite() && len > 0.0 { len as usize } else { 0 };
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// `np.round` (half to even).
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// Descending timesteps of the DDIM/DDPM/Euler-family `set_timesteps` for the three standard
/// spacings, before any dtype cast. `round_linspace` rounds linspace values to integers (the
/// integer-timestep classes); the sigma-based classes keep them fractional.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    n: usize,
    steps_offset: i64,
    round_linspace: bool,
) -> Vec<f64> {
    let t = num_train_timesteps as f64;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v = np_linspace(0.0, t - 1.0, n);
            if round_linspace {
                v.iter_mut().for_each(|x| *x = np_round(*x));
            }
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (num_train_timesteps / n) as i64;
            (0..n as i64).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t / n as f64;
            np_arange(t, 0.0, -ratio).into_iter().map(|x| np_round(x) - 1.0).collect()
        }
        TimestepSpacing::Exponential { .. } => exponential_spacing(spacing, num_train_timesteps, n)
            .into_iter()
            .map(|x| x as f64)
            .collect(),
    }
}

/// Exponential time-step sampling of Park, Ju & Lee, "Explaining generative diffusion models
/// via visual analysis for interpretable decision-making process", Expert Systems with
/// Applications 2024 (arXiv:2402.10404), exactly as the authors' code computes it
/// (`time_step_sampling(stage, num_step, lamda)` in github.com/ian-jihoonpark/X-Diffusion),
/// with their T = 1000 generalised to `num_train_timesteps`:
///
/// ```text
///     alpha = e ** (ln(T) / (n + lambda))
///     early:  t_i = T - int(alpha ** (i + 1 + lambda)), i = 0..n-1; T - 1 put first, the last dropped
///     latter: t_i = int(alpha ** (i + 1 + lambda)), sorted descending; a leading T becomes T - 1
/// ```
///
/// The powers are f64 `pow`, as Python's `**` on floats. Early is dense near t = T (the
/// "semantic" stage: layout), latter near small t (the "delicate" stage: details); neither
/// reaches t = 0. `lambda = 0` is the authors' "uniform" (no override): callers use the
/// scheduler's own spacing then. Values can repeat when `lambda` is small next to `n`; the
/// samplers refuse such schedules ([`repeated_timestep`]).
pub fn exponential_timesteps(num_train_timesteps: usize, n: usize, variant: ExpVariant, lambda: f64) -> Vec<i64> {
    let t = num_train_timesteps as i64;
    let alpha = std::f64::consts::E.powf((num_train_timesteps as f64).ln() / (n as f64 + lambda));
    let power = |i: usize| alpha.powf(i as f64 + 1.0 + lambda).trunc() as i64;
    match variant {
        ExpVariant::Early => {
            let mut ts: Vec<i64> = (0..n).map(|i| t - power(i)).collect();
            ts.insert(0, t - 1);
            ts.pop();
            ts
        }
        ExpVariant::Latter => {
            let mut ts: Vec<i64> = (0..n).map(power).collect();
            ts.sort_unstable_by(|a, b| b.cmp(a));
            if ts.first() == Some(&t) {
                ts[0] = t - 1;
            }
            ts
        }
    }
}

/// The first index `i` where `ts[i + 1]` does not go below `ts[i]` (a repeated or rising
/// timestep), if any.
/// The timesteps of an exponential spacing, in the form it names (empty for other spacings and
/// for the authors' lambda = 0, which means the scheduler's own spacing).
pub fn exponential_spacing(spacing: TimestepSpacing, num_train_timesteps: usize, n: usize) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Exponential {
            variant,
            gamma,
            stretched: false,
        } if gamma > 0.0 => exponential_timesteps(num_train_timesteps, n, variant, gamma),
        TimestepSpacing::Exponential {
            variant,
            gamma,
            stretched: true,
        } => stretched_exponential_timesteps(num_train_timesteps, n, variant, gamma),
        _ => Vec::new(),
    }
}

pub fn repeated_timestep(ts: &[i64]) -> Option<usize> {
    ts.windows(2).position(|w| w[1] >= w[0])
}

/// Our earlier reading of the paper's exponential sampling, kept because, unlike the authors'
/// schedule, it spans the whole range: it starts at `T - 1` and ends at 0, so an image sampled
/// with it is fully denoised.
///
/// With `T` training timesteps, `l` sampling steps and a shaping constant `gamma` (default 60),
/// the base of the exponential is
///
/// ```text
///     delta = exp(ln(T) / (l + gamma))        so that delta^(l + gamma) = T.
/// ```
///
/// The `l` points `d_i = delta^(gamma + i)`, `i = 1..=l`, are geometrically spaced and end at
/// `d_l = T`; their increments grow by the factor `delta`. They are mapped affinely onto the
/// full range so that the trajectory still starts at `T - 1` and ends at 0:
/// `r_i = (d_i - d_1) / (T - d_1)` in `[0, 1]`, then
/// * `Latter`: `t = round(r_i * (T - 1))`, i.e. steps are dense near t = 0 (the latter part of
///   denoising, fine details);
/// * `Early`: `t = T - 1 - round(r_i * (T - 1))`, dense near t = T (the early part, layout).
///
/// A larger `gamma` makes `delta` closer to 1 and the spacing closer to uniform; `gamma = 0` is
/// the most concentrated. Rounded values are made strictly decreasing (at least 1 apart) so no
/// timestep repeats. Returned in sampling order (descending). The affine normalisation is our
/// reading of the paper's definition (its text only fixes `delta`).
pub fn stretched_exponential_timesteps(num_train_timesteps: usize, l: usize, variant: ExpVariant, gamma: f64) -> Vec<i64> {
    let t = num_train_timesteps as f64;
    if l == 0 {
        return Vec::new();
    }
    if l == 1 {
        return vec![num_train_timesteps as i64 - 1];
    }
    let delta = (t.ln() / (l as f64 + gamma)).exp();
    let d: Vec<f64> = (1..=l).map(|i| delta.powf(gamma + i as f64)).collect();
    let d1 = d[0];
    let dl = d[l - 1];
    let top = (num_train_timesteps - 1) as f64;
    // ascending offsets from the dense end
    let mut off: Vec<i64> = d.iter().map(|&x| np_round((x - d1) / (dl - d1) * top) as i64).collect();
    for i in 1..l {
        if off[i] <= off[i - 1] {
            off[i] = off[i - 1] + 1;
        }
    }
    let max = top as i64;
    // if pushing duplicates apart overshot the top, pull the tail back down
    if off[l - 1] > max {
        off[l - 1] = max;
        for i in (0..l - 1).rev() {
            if off[i] >= off[i + 1] {
                off[i] = off[i + 1] - 1;
            }
        }
    }
    match variant {
        ExpVariant::Latter => off.into_iter().rev().collect(),
        ExpVariant::Early => off.into_iter().map(|o| max - o).collect(),
    }
}

/// `np.interp(x, arange(len(fp)), fp)` (float64).
pub fn interp_index(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1] as f64;
    }
    let j = x.floor() as usize;
    let (y0, y1) = (fp[j] as f64, fp[j + 1] as f64);
    let slope = (y1 - y0) / 1.0;
    slope * (x - j as f64) + y0
}

/// diffusers' `_sigma_to_t`: fractional timestep whose log-sigma interpolates `sigma`.
/// `log_sigmas` are the float32 logs of the per-timestep sigmas (ascending in t).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let mut low_idx = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            low_idx = i;
        }
    }
    let low_idx = low_idx.min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx] as f64;
    let high = log_sigmas[high_idx] as f64;
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// float32 natural logs of the float32 sigmas (numpy `np.log` on a float32 array).
pub fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| (s as f64).ln() as f32).collect()
}

/// Karras et al. 2022 (arXiv 2206.00364) sigmas, rho = 7, `n` values from sigma_max to sigma_min (float64).
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

pub(crate) fn check_steps(n: usize, max: usize) -> Result<(), SamplerError> {
    if n == 0 || n > max {
        return Err(SamplerError::InvalidSteps { steps: n, max });
    }
    Ok(())
}
