//! One file per sampler; [`build`] resolves the config for the chosen class and constructs it.

/// `config()` and `settings_json()`: every sampler keeps both in its `Common`.
macro_rules! common_accessors {
    () => {
        fn config(&self) -> &SchedulerConfig {
            &self.c.config
        }
        fn settings_json(&self) -> serde_json::Value {
            self.c.settings.clone()
        }
    };
}

/// How the sigma-parameterised samplers (Euler, Euler-a, LMS, Heun) expose their schedule:
/// fields `ts`, `sigmas`, `init_sigma`; the model input is divided by sqrt(sigma^2 + 1).
macro_rules! sigma_accessors {
    () => {
        fn timesteps(&self) -> &[f64] {
            &self.ts
        }
        fn init_noise_sigma(&self) -> f32 {
            self.init_sigma
        }
        fn scale_model_input(&self, sample: &[f32], i: usize) -> Vec<f32> {
            scale_by_sigma(sample, self.sigmas[i])
        }
        fn sigma(&self, i: usize) -> f32 {
            self.sigmas[i]
        }
    };
}

mod ddim;
mod ddpm;
mod dpmpp_2m;
mod euler;
mod euler_ancestral;
mod heun;
mod lcm;
mod lms;
mod pndm;
#[cfg(test)]
mod tests;

use serde_json::{Value, json};

use super::config::{PredictionType, ResolvedConfig};
use super::{Sampler, schedule};
use super::{SamplerError, SamplerKind, SamplerOptions, SchedulerConfig, TimestepSpacing};

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpmpp_2m::DpmPP2M;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use heun::Heun;
pub use lcm::{Lcm, lcm_timesteps};
pub use lms::Lms;
pub use pndm::Pndm;

/// Resolves `config` for `kind` with the options applied, as diffusers'
/// `Class.from_config(config, use_karras_sigmas=..., timestep_spacing=...)` would.
pub fn resolve(kind: SamplerKind, config: &SchedulerConfig, options: &SamplerOptions) -> Result<ResolvedConfig, SamplerError> {
    if options.karras && !kind.supports_karras() {
        return Err(SamplerError::InvalidOption(format!(
            "karras sigmas are not supported by {kind} (supported: euler, dpm++2m, lms, heun)"
        )));
    }
    if !(options.eta.is_finite() && options.eta >= 0.0) {
        return Err(SamplerError::InvalidOption(format!("eta must be >= 0, got {}", options.eta)));
    }
    if options.eta != 0.0 && kind != SamplerKind::Ddim {
        return Err(SamplerError::InvalidOption(format!(
            "eta is a DDIM option; {kind} does not take it"
        )));
    }
    if kind == SamplerKind::Lcm && options.spacing.is_some() {
        return Err(SamplerError::InvalidOption(
            "lcm takes its timesteps from the distillation schedule (original_inference_steps); it has no timestep spacing".into(),
        ));
    }
    let mut map = config.effective_map(kind);
    if options.karras {
        map.insert("use_karras_sigmas".into(), json!(true));
    }
    let exp = match options.spacing {
        // The authors' lambda = 0 is "uniform": no override, the scheduler's own spacing.
        Some(TimestepSpacing::Exponential {
            gamma: 0.0,
            stretched: false,
            ..
        }) => None,
        Some(s @ TimestepSpacing::Exponential { .. }) => Some(s),
        Some(s) => {
            map.insert("timestep_spacing".into(), json!(s.name()));
            None
        }
        None => None,
    };
    let mut rc = ResolvedConfig::from_effective(kind, map)?;
    if let Some(s) = exp {
        if rc.use_karras_sigmas {
            return Err(SamplerError::InvalidOption(
                "the exponential timestep spacing cannot be combined with karras sigmas (diffusers rejects custom timesteps with use_karras_sigmas)".into(),
            ));
        }
        if kind == SamplerKind::Pndm {
            return Err(SamplerError::InvalidOption(
                "the exponential timestep spacing is not supported by pndm (its multistep formulas assume uniform steps)".into(),
            ));
        }
        rc.timestep_spacing = s;
        rc.effective.insert("timestep_spacing".into(), json!(s.name()));
    }
    Ok(rc)
}

pub fn build(
    kind: SamplerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
    options: &SamplerOptions,
) -> Result<Box<dyn Sampler>, SamplerError> {
    if let Some(s @ TimestepSpacing::Exponential { .. }) = options.spacing {
        let nt = config.num_train_timesteps;
        let ts = schedule::exponential_spacing(s, nt, num_inference_steps);
        if let Some(i) = schedule::repeated_timestep(&ts) {
            return Err(SamplerError::InvalidOption(format!(
                "{} gives {num_inference_steps} timesteps that repeat (t = {} at steps {} and {}); use a larger lambda or fewer steps",
                s.name(),
                ts[i + 1],
                i + 1,
                i + 2
            )));
        }
    }
    let sampler = build_unchecked_levels(kind, config, num_inference_steps, options)?;
    // DPM-Solver++ 2M and LMS divide by the difference of consecutive noise levels; a schedule
    // that repeats one (leading spacing with more steps than num_train_timesteps / steps_offset
    // allow: the step ratio rounds to 0 or the first timestep is clamped) gives NaN at the
    // second step, in diffusers too. Refused, naming the largest step count that works.
    if matches!(kind, SamplerKind::DpmPP2M | SamplerKind::Lms)
        && let Some(i) = repeated_level(sampler.as_ref())
    {
        let t = sampler.timesteps()[i];
        let fits = (1..num_inference_steps)
            .rev()
            .find(|&n| build_unchecked_levels(kind, config, n, options).is_ok_and(|s| repeated_level(s.as_ref()).is_none()));
        let spacing = sampler
            .config()
            .get("timestep_spacing")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(SamplerError::UnsupportedConfig {
            key: "num_inference_steps".into(),
            value: num_inference_steps.to_string(),
            reason: format!(
                "with '{spacing}' spacing the schedule repeats the noise level of timestep {t} (steps {} and {}), and {kind} divides by the difference of consecutive levels; use {}or another --spacing (trailing never repeats)",
                i + 1,
                i + 2,
                fits.map(|n| format!("at most {n} steps ")).unwrap_or_default()
            ),
        });
    }
    Ok(sampler)
}

/// The first loop iteration whose noise level equals the next one's (None: strictly
/// decreasing).
fn repeated_level(s: &dyn Sampler) -> Option<usize> {
    let n = s.timesteps().len();
    (0..n.saturating_sub(1)).find(|&i| s.sigma(i) <= s.sigma(i + 1))
}

/// [`build`] without the repeated-noise-level check.
fn build_unchecked_levels(
    kind: SamplerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
    options: &SamplerOptions,
) -> Result<Box<dyn Sampler>, SamplerError> {
    let rc = resolve(kind, config, options)?;
    schedule::check_steps(num_inference_steps, rc.num_train_timesteps)?;
    // A beta outside (0, 1] (beta_end 1.5, a negative beta_start, trained_betas from another
    // world) gives garbage or NaN; 1 itself is the zero-terminal-SNR rescale's last beta.
    if let Some(b) = schedule::betas(&rc).iter().find(|b| !(b.is_finite() && **b > 0.0 && **b <= 1.0)) {
        let (key, value) = match &rc.trained_betas {
            Some(_) => ("trained_betas".to_string(), format!("(contains {b})")),
            None => ("beta_start / beta_end".to_string(), format!("{} / {}", rc.beta_start, rc.beta_end)),
        };
        return Err(SamplerError::UnsupportedConfig {
            key,
            value,
            reason: format!("the schedule gets a beta of {b}; every beta must lie in (0, 1]"),
        });
    }
    let common = Common::new(&rc, num_inference_steps, options);
    let n_train = rc.num_train_timesteps;
    let sampler: Box<dyn Sampler> = match kind {
        SamplerKind::Ddim => Box::new(Ddim::new(rc, common, options.eta)),
        SamplerKind::Ddpm => Box::new(Ddpm::new(rc, common)),
        SamplerKind::Euler => Box::new(Euler::new(rc, common)),
        SamplerKind::EulerAncestral => Box::new(EulerAncestral::new(rc, common)),
        SamplerKind::DpmPP2M => Box::new(DpmPP2M::new(rc, common)),
        SamplerKind::Pndm => Box::new(Pndm::new(rc, common)),
        SamplerKind::Lms => Box::new(Lms::new(rc, common)),
        SamplerKind::Heun => Box::new(Heun::new(rc, common)),
        SamplerKind::Lcm => Box::new(Lcm::new(rc, common)?),
    };
    // DDIM, DDPM and PNDM index `alphas_cumprod` by timestep: with `steps_offset` (leading
    // spacing) a large step count points past its end, where diffusers fails with an
    // IndexError. (The sigma-based samplers interpolate, clamping, as diffusers does.)
    let indexes_alphas = matches!(kind, SamplerKind::Ddim | SamplerKind::Ddpm | SamplerKind::Pndm | SamplerKind::Lcm);
    if let Some(&t) = sampler
        .timesteps()
        .iter()
        .find(|&&t| indexes_alphas && !(0.0..=(n_train - 1) as f64).contains(&t))
    {
        return Err(SamplerError::UnsupportedConfig {
            key: "num_inference_steps".into(),
            value: num_inference_steps.to_string(),
            reason: format!(
                "with this scheduler config the timesteps reach {t}, past the last training timestep {}; use fewer steps (or a config without steps_offset)",
                n_train - 1
            ),
        });
    }
    Ok(sampler)
}

/// What every sampler keeps: the effective config, alphas_cumprod and the step bookkeeping.
pub(crate) struct Common {
    pub config: SchedulerConfig,
    pub settings: Value,
    pub alphas_cumprod: Vec<f32>,
    pub n: usize,
    pub next_index: usize,
}

impl Common {
    fn new(rc: &ResolvedConfig, n: usize, options: &SamplerOptions) -> Self {
        let mut eff = rc.effective.clone();
        eff.insert("_class_name".into(), json!(rc.kind.diffusers_class()));
        let config = SchedulerConfig::from_map(eff.clone());
        eff.remove("_class_name");
        let settings = json!({
            "class_name": rc.kind.diffusers_class(),
            "sampler": rc.kind.as_str(),
            "num_inference_steps": n,
            "config": Value::Object(eff),
            "options": {
                "karras": options.karras,
                "timestep_spacing": rc.timestep_spacing.name(),
                "eta": options.eta,
            },
        });
        Self {
            config,
            settings,
            alphas_cumprod: schedule::alphas_cumprod(rc),
            n,
            next_index: 0,
        }
    }

    /// Checks lengths and that steps come in order; returns nothing, advances the counter.
    pub fn begin_step(&mut self, index: usize, len: usize, model_output: &[f32], sample: &[f32]) -> Result<(), SamplerError> {
        if model_output.len() != sample.len() {
            return Err(SamplerError::LengthMismatch {
                what: "model_output vs sample".into(),
                expected: sample.len(),
                got: model_output.len(),
            });
        }
        if index != self.next_index || index >= len {
            return Err(SamplerError::StepOrder {
                index,
                expected: self.next_index,
                len,
            });
        }
        self.next_index += 1;
        Ok(())
    }

    /// sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t) for an integer timestep (t < 0: final alpha 1 -> 0).
    pub fn sigma_at(&self, t: i64) -> f32 {
        if t < 0 {
            return 0.0;
        }
        let a = self.alphas_cumprod[t as usize];
        ((1.0 - a) / a).sqrt()
    }
}

/// The standard x0 estimate of an alpha-parameterised sampler at alpha_bar `a` (float32 as diffusers).
pub(crate) fn x0_from_alpha(pt: PredictionType, a: f32, model_output: &[f32], sample: &[f32]) -> Vec<f32> {
    let sa = a.sqrt();
    let sb = (1.0 - a).sqrt();
    match pt {
        PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&s, &m)| (s - sb * m) / sa).collect(),
        PredictionType::VPrediction => sample.iter().zip(model_output).map(|(&s, &m)| sa * s - sb * m).collect(),
        PredictionType::Sample => model_output.to_vec(),
    }
}

/// x0 of the sigma-parameterised (k-diffusion style) samplers: Euler, Euler-a, LMS, Heun.
pub(crate) fn x0_from_sigma(pt: PredictionType, sigma: f32, model_output: &[f32], sample: &[f32]) -> Vec<f32> {
    match pt {
        PredictionType::Epsilon => sample.iter().zip(model_output).map(|(&s, &m)| s - sigma * m).collect(),
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let c_skip = sigma * sigma + 1.0;
            sample.iter().zip(model_output).map(|(&s, &m)| m * c_out + s / c_skip).collect()
        }
        PredictionType::Sample => model_output.to_vec(),
    }
}

/// `sample / sqrt(sigma^2 + 1)`.
pub(crate) fn scale_by_sigma(sample: &[f32], sigma: f32) -> Vec<f32> {
    let d = (sigma * sigma + 1.0).sqrt();
    sample.iter().map(|&x| x / d).collect()
}

pub(crate) fn clamp_all(v: &mut [f32], range: f64) {
    let r = range as f32;
    for x in v {
        *x = x.clamp(-r, r);
    }
}

/// Sigma-based samplers' schedule: float32 timesteps and the float32 sigmas (len n + 1), as
/// EulerDiscrete / EulerAncestral / LMS / Heun (before Heun's interleaving) compute them.
pub(crate) struct SigmaSchedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
}

/// `set_timesteps` of the k-diffusion family. `final_sigma_zero`: append 0 (else sigma_min of
/// `alphas_cumprod[0]`); `karras_from_f32`: DPM-style Karras bounds (the float32 table) instead
/// of the interpolated float64 sigmas.
pub(crate) fn sigma_schedule(rc: &ResolvedConfig, ac: &[f32], n: usize) -> SigmaSchedule {
    let base = schedule::sigmas_from_alphas_cumprod(ac);
    let log_sigmas = schedule::log_sigmas(&base);
    let ts: Vec<f32> = schedule::spaced_timesteps(rc.timestep_spacing, rc.num_train_timesteps, n, rc.steps_offset, false)
        .into_iter()
        .map(|t| t as f32)
        .collect();
    let mut sig: Vec<f64> = ts.iter().map(|&t| schedule::interp_index(t as f64, &base)).collect();
    let mut ts64: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
    if rc.use_karras_sigmas {
        let smin = rc.sigma_min.unwrap_or(sig[sig.len() - 1]);
        let smax = rc.sigma_max.unwrap_or(sig[0]);
        sig = schedule::karras_sigmas(smin, smax, n);
        ts64 = sig.iter().map(|&s| schedule::sigma_to_t(s, &log_sigmas)).collect();
    }
    let last = if rc.final_sigma_zero { 0.0 } else { base[0] };
    let mut sigmas: Vec<f32> = sig.iter().map(|&s| s as f32).collect();
    sigmas.push(last);
    SigmaSchedule {
        timesteps: ts64.iter().map(|&t| t as f32).collect(),
        sigmas,
    }
}

/// init_noise_sigma of the sigma-based classes: max sigma for linspace/trailing (and our
/// exponential spacing, which starts at T-1), sqrt(max^2 + 1) for leading.
pub(crate) fn init_sigma(spacing: TimestepSpacing, sigmas: &[f32]) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        _ => max,
    }
}
