//! The pieces every feature that drives the model calls: encode a prompt to conditioning
//! ([`encode_prompt`]), one guided UNet evaluation at (x_t, t) with an optional attention probe
//! ([`guided_eval`]), the sampler loop ([`run`]), VAE decode ([`decode`]) and VAE encode
//! ([`encode_image`]). Nothing else in the crate calls the text encoder, the UNet or the VAE:
//! a generation, the shapes-world evaluation and every experiment go through these.
//!
//! [`run`] is diffusers' `StableDiffusionPipeline.__call__`, one UNet evaluation at a time,
//! streaming a [`StepRecord`] per iteration. Order of operations (each one as diffusers does
//! it): tokenize and encode the prompt (and, with guidance > 1, the negative prompt, batch order
//! [negative, positive]); set the sampler's timesteps; draw the initial noise from the seeded
//! torch-compatible generator (or take it from [`InitLatents`]) and multiply it by
//! `init_noise_sigma`; per timestep: scale the model input, run the UNet on the (doubled) batch,
//! apply guidance `uncond + w * (cond - uncond)`, step the sampler; finally decode with the VAE.
//!
//! Architecture invariant: this module and `model` are the only ones that know candle; what
//! goes in and out of these functions is plain data (`Vec<f32>` with shapes, [`RgbImage`],
//! [`AttnMap`]) or an opaque handle ([`Conditioning`]).

pub mod memory;
mod pieces;
mod run;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

pub use pieces::{
    BlockGradient, Conditioning, UnetOutput, UnetVariant, attention_to_maps, cam_eval, decode, encode_image, encode_prompt, encode_text,
    guided_eval, guided_eval_batch, guided_eval_variant, zeroed_time_unet,
};
/// The UNet blocks whose outputs DF-CAM can use, by diffusers module path, in module order.
pub fn block_paths(sd: &StableDiffusion) -> Vec<String> {
    sd.unet.block_paths()
}

pub use run::{StepContext, StepHook, run, run_hooked};

use crate::model::StableDiffusion;
use crate::sampling::config::SchedulerConfig;
use crate::sampling::{SamplerError, SamplerKind, TimestepSpacing};
use crate::trace::{AttnLayer, RunMeta, StepRecord};
use crate::types::CaptureMode;
pub use crate::types::TextOptions;

/// Where a run's initial noise comes from (diffusers' `latents=` argument when given). The
/// noise is unit-variance; the run multiplies it by the sampler's `init_noise_sigma`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum InitLatents {
    /// `randn` of the torch-compatible generator seeded with `RunConfig::seed`.
    #[default]
    Seed,
    /// A safetensors file with one tensor `latents` [1, C, h, w].
    File(PathBuf),
    /// Values [C, h, w] given in memory (interpolation between noises, a re-run of a trace).
    Values(Vec<f32>),
}

/// Prompt embeddings as plain data: the text encoder's last hidden state of the positive
/// prompt and (for guidance) of the negative prompt, each [tokens, dim] row-major. Given in a
/// [`RunConfig`] they replace the text encoder's output (interpolation between prompts,
/// semantic directions); the prompt text still names the tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEmbeddings {
    pub tokens: usize,
    pub dim: usize,
    pub positive: Vec<f32>,
    pub negative: Vec<f32>,
    /// SDXL: the second encoder's pooled, projected embedding of each prompt (empty for SD).
    #[serde(default)]
    pub pooled: Vec<f32>,
    #[serde(default)]
    pub negative_pooled: Vec<f32>,
}

/// Everything that determines a run. Plain data: the UI and the CLI build it, the worker
/// consumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub prompt: String,
    pub negative_prompt: String,
    /// SDXL's second prompts and clip skip.
    #[serde(default)]
    pub text_options: TextOptions,
    pub steps: usize,
    pub guidance: f32,
    /// None = the model's own scheduler class (scheduler/scheduler_config.json `_class_name`),
    /// as a diffusers pipeline uses it.
    pub sampler: Option<SamplerKind>,
    pub karras: bool,
    pub spacing: Option<TimestepSpacing>,
    pub eta: f32,
    pub seed: u64,
    /// Image size in pixels; None = the model's default (unet sample_size * VAE factor).
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub init_latents: InitLatents,
    /// Replaces the text encoder's output when set.
    pub embeddings: Option<PromptEmbeddings>,
    pub attention: CaptureMode,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            text_options: TextOptions::default(),
            steps: 50,
            guidance: 7.5,
            sampler: None,
            karras: false,
            spacing: None,
            eta: 0.0,
            seed: 0,
            height: None,
            width: None,
            init_latents: InitLatents::Seed,
            embeddings: None,
            attention: CaptureMode::Aggregate,
        }
    }
}

impl RunConfig {
    /// Whether the run uses classifier-free guidance (a doubled UNet batch): guidance above 1
    /// on a UNet that does not take the guidance as an input (`time_cond_proj_dim`).
    pub fn guided(&self, sd: &StableDiffusion) -> bool {
        self.guidance > 1.0 && !sd.unet.embeds_guidance()
    }

    /// The prompts and text options as [`encode_text`] takes them.
    pub fn text(&self) -> PromptText<'_> {
        PromptText {
            prompt: &self.prompt,
            negative: &self.negative_prompt,
            prompt_2: self.text_options.prompt_2.as_deref(),
            negative_2: self.text_options.negative_prompt_2.as_deref(),
            clip_skip: self.text_options.clip_skip,
        }
    }
}

/// The text a run is conditioned on, as diffusers' `encode_prompt` takes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptText<'a> {
    pub prompt: &'a str,
    pub negative: &'a str,
    /// SDXL's second encoder's prompts (None or empty: the first ones, as diffusers).
    pub prompt_2: Option<&'a str>,
    pub negative_2: Option<&'a str>,
    /// diffusers' `clip_skip`: SD takes the output `clip_skip` layers before the last through
    /// the final layer norm, SDXL the hidden state `clip_skip` layers before the penultimate.
    /// As in diffusers, only the positive prompt's encoding skips layers.
    pub clip_skip: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    BadInput(String),
    #[error("--init-latents {path}: {message}")]
    InitLatents { path: PathBuf, message: String },
    #[error("non-finite values (NaN/Inf) in the {what} at step {step} of {total} (t = {timestep})")]
    NonFinite {
        what: &'static str,
        step: usize,
        total: usize,
        timestep: f64,
    },
    #[error("cancelled after {completed} of {total} steps")]
    Cancelled { completed: usize, total: usize },
    #[error("sampler: {0}")]
    Sampler(#[from] SamplerError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

/// What [`run`] reports, in order: `Started` once, `Step` per UNet evaluation, `Decoding`,
/// then the function returns the image.
pub enum RunEvent {
    Started(Box<RunMeta>),
    Step(Box<StepRecord>),
    Decoding,
}

pub(crate) fn check_finite(v: &[f32], what: &'static str, step: usize, total: usize, timestep: f64) -> Result<(), RunError> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(RunError::NonFinite {
            what,
            step: step + 1,
            total,
            timestep,
        })
    }
}

/// Reads `latents` [1, C, h, w] from a safetensors file.
pub fn read_init_latents(path: &Path, shape: [usize; 3]) -> Result<Vec<f32>, RunError> {
    let err = |message: String| RunError::InitLatents {
        path: path.to_owned(),
        message,
    };
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| err(e.to_string()))?;
    let t = tensors.get("latents").ok_or_else(|| {
        err(format!(
            "no tensor named 'latents' (found: {:?})",
            tensors.keys().collect::<Vec<_>>()
        ))
    })?;
    let [c, h, w] = shape;
    if t.dims() != [1, c, h, w] {
        return Err(err(format!(
            "'latents' has shape {:?}, this run needs [1, {c}, {h}, {w}]",
            t.dims()
        )));
    }
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| err(e.to_string()))?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(err("'latents' contains NaN or Inf".into()));
    }
    Ok(v)
}

/// The unit-variance initial noise of a run, [C, h, w].
pub fn initial_noise(init: &InitLatents, rng: &mut dyn crate::sampling::NoiseSource, latent: [usize; 3]) -> Result<Vec<f32>, RunError> {
    let n = latent.iter().product();
    match init {
        InitLatents::Seed => Ok(rng.randn(n)),
        InitLatents::File(path) => read_init_latents(path, latent),
        InitLatents::Values(v) => {
            if v.len() != n {
                return Err(RunError::BadInput(format!(
                    "the initial latents have {} values, this run needs {latent:?} = {n}",
                    v.len()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(RunError::BadInput("the initial latents contain NaN or Inf".into()));
            }
            Ok(v.clone())
        }
    }
}

/// The model's scheduler config (`scheduler/scheduler_config.json`), parsed by `sampling`.
pub fn scheduler_config(sd: &StableDiffusion) -> Result<SchedulerConfig, SamplerError> {
    SchedulerConfig::from_json_str(&sd.scheduler_json)
        .map_err(|e| SamplerError::ConfigParse(format!("{}: {e}", sd.root.join("scheduler/scheduler_config.json").display())))
}

/// The sampler a diffusers pipeline would use for this model: its own scheduler class.
pub fn model_sampler(config: &SchedulerConfig) -> Result<SamplerKind, RunError> {
    let class = config.class_name.as_deref().unwrap_or("");
    let kind = SamplerKind::ALL
        .iter()
        .copied()
        .find(|k| k.diffusers_class() == class)
        .ok_or_else(|| {
            RunError::BadInput(format!(
                "the model's scheduler class '{class}' is not implemented; choose one with --scheduler"
            ))
        })?;
    if kind == SamplerKind::DpmPP2M {
        let order = config.raw.get("solver_order").and_then(|v| v.as_u64()).unwrap_or(2);
        let algo = config.raw.get("algorithm_type").and_then(|v| v.as_str()).unwrap_or("dpmsolver++");
        if order != 2 || algo != "dpmsolver++" {
            return Err(RunError::BadInput(format!(
                "the model's scheduler is DPMSolverMultistepScheduler with algorithm_type '{algo}', solver_order {order}; only dpmsolver++ order 2 is implemented; choose one with --scheduler"
            )));
        }
    }
    Ok(kind)
}

/// The resolved geometry of a run.
pub struct Geometry {
    pub height: usize,
    pub width: usize,
    pub latent: [usize; 3],
}

pub fn geometry(sd: &StableDiffusion, cfg: &RunConfig) -> Result<Geometry, RunError> {
    let f = sd.vae_scale_factor();
    let height = cfg.height.unwrap_or_else(|| sd.default_size());
    let width = cfg.width.unwrap_or_else(|| sd.default_size());
    for (name, v) in [("height", height), ("width", width)] {
        if v == 0 || v % f != 0 {
            return Err(RunError::BadInput(format!(
                "{name} {v} is not a positive multiple of the VAE factor {f}"
            )));
        }
    }
    let latent = [sd.latent_channels(), height / f, width / f];
    if sd.device.is_cpu()
        && let Some(available) = memory::available_bytes()
    {
        let need = |l: [usize; 3]| memory::run_estimate(sd, l, cfg.guided(sd), cfg.steps, cfg.attention);
        let est = need(latent);
        if est.bytes > available {
            let source = match (cfg.height, cfg.width) {
                (Some(_), Some(_)) => String::new(),
                _ => format!(
                    " (the model's default size: unet sample_size {} x VAE factor {f})",
                    sd.unet.config.sample_size.unwrap_or(64)
                ),
            };
            // The largest square size that fits, in steps of the VAE factor.
            let (mut lo, mut hi) = (0usize, latent[1].max(latent[2]));
            while lo < hi {
                let mid = (lo + hi + 1) / 2;
                if need([latent[0], mid, mid]).bytes <= available {
                    lo = mid
                } else {
                    hi = mid - 1
                }
            }
            let fits = if lo == 0 {
                "no size fits".to_string()
            } else {
                format!("the largest square size that fits is about {0}x{0}", lo * f)
            };
            return Err(RunError::BadInput(format!(
                "{height}x{width} pixels{source} (latents {}x{}x{}) need about {} of memory, mostly {}; this machine has {} available; {fits}",
                latent[0],
                latent[1],
                latent[2],
                memory::human_bytes(est.bytes),
                est.dominant,
                memory::human_bytes(available),
            )));
        }
    }
    Ok(Geometry { height, width, latent })
}

/// The sampler a run uses: the one asked for, else the model's own scheduler class.
pub fn sampler_kind(sd: &StableDiffusion, asked: Option<SamplerKind>) -> Result<SamplerKind, RunError> {
    match asked {
        Some(k) => Ok(k),
        None => model_sampler(&scheduler_config(sd)?),
    }
}

/// The UNet's cross-attention layers and their map sizes for latents of `h` x `w`.
pub fn attn_layer_sizes(sd: &StableDiffusion, h: usize, w: usize) -> Vec<AttnLayer> {
    sd.unet
        .attn_layers()
        .iter()
        .map(|l| {
            let (lh, lw) = (0..l.level).fold((h, w), |(a, b), _| (a.div_ceil(2), b.div_ceil(2)));
            AttnLayer {
                path: l.path.clone(),
                heads: l.heads,
                height: lh,
                width: lw,
            }
        })
        .collect()
}
