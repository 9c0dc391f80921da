//! Noise schedulers ("samplers") reproducing diffusers' scheduler classes step for step.
//!
//! A sampling loop is driven like diffusers' pipeline loop:
//! ```text
//! let mut s = build_sampler(kind, &config, steps, &options)?;
//! let mut x = initial_noise.iter().map(|v| v * s.init_noise_sigma()).collect::<Vec<_>>();
//! for i in 0..s.timesteps().len() {
//!     let input = s.scale_model_input(&x, i);
//!     let eps = unet(&input, s.timesteps()[i]);
//!     x = s.step(&eps, i, &x, &mut noise)?.prev_sample;
//! }
//! ```
//! The loop length is `timesteps().len()`, which is not always `steps`: Heun runs `2*steps - 1`
//! iterations, PNDM with `skip_prk_steps` runs `steps + 1`, PNDM with PRK steps `steps + 3`.
//! `step` must be called with consecutive indices starting at 0 (samplers keep history).

pub mod config;
pub mod noise;
pub mod rng;
pub mod schedule;
pub mod schedulers;

use std::fmt;
use std::str::FromStr;

pub use config::SchedulerConfig;
pub use noise::NoiseSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SamplerKind {
    Ddim,
    Ddpm,
    Euler,
    EulerAncestral,
    DpmPP2M,
    Pndm,
    Lms,
    Heun,
    Lcm,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 9] = [
        SamplerKind::Ddim,
        SamplerKind::Ddpm,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmPP2M,
        SamplerKind::Pndm,
        SamplerKind::Lms,
        SamplerKind::Heun,
        SamplerKind::Lcm,
    ];

    /// The CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::DpmPP2M => "dpm++2m",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Lms => "lms",
            SamplerKind::Heun => "heun",
            SamplerKind::Lcm => "lcm",
        }
    }

    /// The diffusers class this sampler reproduces.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Ddpm => "DDPMScheduler",
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SamplerKind::DpmPP2M => "DPMSolverMultistepScheduler",
            SamplerKind::Pndm => "PNDMScheduler",
            SamplerKind::Lms => "LMSDiscreteScheduler",
            SamplerKind::Heun => "HeunDiscreteScheduler",
            SamplerKind::Lcm => "LCMScheduler",
        }
    }

    /// Whether `--karras` (use_karras_sigmas) applies to this sampler.
    pub fn supports_karras(self) -> bool {
        matches!(
            self,
            SamplerKind::Euler | SamplerKind::DpmPP2M | SamplerKind::Lms | SamplerKind::Heun
        )
    }

    /// The classes that keep sigmas (and set `alphas_cumprod[-1] = 2**-24` under zero-SNR rescale).
    pub fn is_sigma_based(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::EulerAncestral | SamplerKind::DpmPP2M)
    }

    /// Whether the sampler draws noise during `step` (with default options; DDIM does when eta > 0).
    pub fn is_stochastic(self) -> bool {
        matches!(self, SamplerKind::Ddpm | SamplerKind::EulerAncestral | SamplerKind::Lcm)
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SamplerKind {
    type Err = SamplerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        SamplerKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == lower)
            .ok_or_else(|| SamplerError::UnknownSampler {
                name: s.to_string(),
                valid: SamplerKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
            })
    }
}

/// Which end of the trajectory the exponential spacing concentrates steps on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExpVariant {
    /// Dense at the start of sampling (high noise, large t).
    Early,
    /// Dense at the end of sampling (low noise, small t).
    Latter,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TimestepSpacing {
    Leading,
    Linspace,
    Trailing,
    /// Exponential time-step sampling of arXiv 2402.10404 with shaping constant `gamma` (the
    /// authors' lambda): exactly the authors' timesteps ([`schedule::exponential_timesteps`]),
    /// or with `stretched` our earlier affine reading that spans the whole range
    /// ([`schedule::stretched_exponential_timesteps`]).
    Exponential {
        variant: ExpVariant,
        gamma: f64,
        #[serde(default)]
        stretched: bool,
    },
}

impl TimestepSpacing {
    /// Default gamma of the exponential spacing.
    pub const DEFAULT_EXP_GAMMA: f64 = 60.0;

    pub fn name(&self) -> String {
        match self {
            TimestepSpacing::Leading => "leading".into(),
            TimestepSpacing::Linspace => "linspace".into(),
            TimestepSpacing::Trailing => "trailing".into(),
            TimestepSpacing::Exponential { variant, gamma, stretched } => {
                let form = if *stretched { "exponential-stretched" } else { "exponential" };
                let end = match variant {
                    ExpVariant::Early => "early",
                    ExpVariant::Latter => "latter",
                };
                format!("{form}-{end}:{gamma}")
            }
        }
    }
}

impl FromStr for TimestepSpacing {
    type Err = SamplerError;
    /// "leading" | "linspace" | "trailing" | "exponential-early[:gamma]" | "exponential-latter[:gamma]"
    /// ("exp-early" / "exp-latter" also accepted) | "exponential-stretched-early[:gamma]" |
    /// "exponential-stretched-latter[:gamma]".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let err = || {
            SamplerError::InvalidOption(format!(
                "unknown timestep spacing {s:?}; valid: leading, linspace, trailing, exponential-early[:gamma], exponential-latter[:gamma], exponential-stretched-early[:gamma], exponential-stretched-latter[:gamma]"
            ))
        };
        let (head, gamma) = match lower.split_once(':') {
            Some((h, g)) => (h.to_string(), Some(g.parse::<f64>().map_err(|_| err())?)),
            None => (lower.clone(), None),
        };
        let (variant, stretched) = match head.as_str() {
            "leading" | "linspace" | "trailing" if gamma.is_some() => return Err(err()),
            "leading" => return Ok(TimestepSpacing::Leading),
            "linspace" => return Ok(TimestepSpacing::Linspace),
            "trailing" => return Ok(TimestepSpacing::Trailing),
            "exponential-early" | "exp-early" => (ExpVariant::Early, false),
            "exponential-latter" | "exp-latter" => (ExpVariant::Latter, false),
            "exponential-stretched-early" => (ExpVariant::Early, true),
            "exponential-stretched-latter" => (ExpVariant::Latter, true),
            _ => return Err(err()),
        };
        let gamma = gamma.unwrap_or(Self::DEFAULT_EXP_GAMMA);
        if !(gamma.is_finite() && gamma >= 0.0) {
            return Err(err());
        }
        Ok(TimestepSpacing::Exponential { variant, gamma, stretched })
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerOptions {
    /// use_karras_sigmas=True (euler, dpm++2m, lms, heun only).
    pub karras: bool,
    /// Overrides the config's timestep_spacing (None: the config's / class default).
    pub spacing: Option<TimestepSpacing>,
    /// DDIM eta (0 = deterministic). Other samplers reject eta != 0.
    pub eta: f32,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self {
            karras: false,
            spacing: None,
            eta: 0.0,
        }
    }
}

pub struct StepOutput {
    pub prev_sample: Vec<f32>,
    pub pred_original_sample: Vec<f32>,
    /// true when diffusers' step returns this x0 itself; false when we computed the standard
    /// estimate from the model output and the current sample (PNDM, DPM-Solver multistep).
    pub x0_from_scheduler: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("unknown sampler {name:?}; valid samplers: {valid}")]
    UnknownSampler { name: String, valid: String },
    #[error("unsupported scheduler config value {key} = {value}: {reason}")]
    UnsupportedConfig { key: String, value: String, reason: String },
    #[error("{0}")]
    ConfigParse(String),
    #[error("invalid number of inference steps {steps}: must be between 1 and num_train_timesteps ({max})")]
    InvalidSteps { steps: usize, max: usize },
    #[error("invalid sampler option: {0}")]
    InvalidOption(String),
    #[error("length mismatch for {what}: expected {expected}, got {got}")]
    LengthMismatch { what: String, expected: usize, got: usize },
    #[error("step index {index} out of order: expected {expected} (the sampler has {len} iterations)")]
    StepOrder { index: usize, expected: usize, len: usize },
}

pub trait Sampler: Send {
    fn kind(&self) -> SamplerKind;
    /// The timestep given to the UNet at each loop iteration (len = number of loop iterations,
    /// as `len(scheduler.timesteps)` in diffusers).
    fn timesteps(&self) -> &[f64];
    fn init_noise_sigma(&self) -> f32;
    fn scale_model_input(&self, sample: &[f32], step_index: usize) -> Vec<f32>;
    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &[f32],
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput, SamplerError>;
    /// Noise level at this iteration, sigma = sqrt((1-alpha_bar)/alpha_bar).
    fn sigma(&self, step_index: usize) -> f32;
    /// The effective config (class name of the diffusers class, parameters incl. overrides).
    fn config(&self) -> &SchedulerConfig;
    fn settings_json(&self) -> serde_json::Value;
}

pub fn build_sampler(
    kind: SamplerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
    options: &SamplerOptions,
) -> Result<Box<dyn Sampler>, SamplerError> {
    schedulers::build(kind, config, num_inference_steps, options)
}
