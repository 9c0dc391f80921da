//! The denoising loop: diffusers' `StableDiffusionPipeline.__call__`, one UNet evaluation at
//! a time, streaming a [`StepRecord`] per iteration.
//!
//! Order of operations (each one as diffusers does it): tokenize and encode the prompt (and,
//! with guidance > 1, the negative prompt, batch order [negative, positive]); set the sampler's
//! timesteps; draw the initial noise from the seeded torch-compatible generator (or read it
//! from `--init-latents`) and multiply it by `init_noise_sigma`; per timestep: scale the model
//! input, run the UNet on the (doubled) batch, apply guidance
//! `uncond + w * (cond - uncond)`, step the sampler; finally decode with the VAE.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::noise::NoiseSource;
use super::rng::TorchRng;
use super::{SamplerKind, SamplerOptions, TimestepSpacing, build_sampler};
use crate::model::StableDiffusion;
use crate::model::unet::{AttnProbe, CaptureMode};
use crate::model::vae::Vae;
use crate::trace::{AttnLayer, AttnMap, RgbImage, RunMeta, RunStatus, StepRecord};

/// Everything that determines a run. Plain data: the UI and the CLI build it, the worker
/// consumes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    pub prompt: String,
    pub negative_prompt: String,
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
    /// A safetensors file with one tensor `latents` [1, C, h, w] of unit-variance noise.
    pub init_latents: Option<PathBuf>,
    pub attention: CaptureMode,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 50,
            guidance: 7.5,
            sampler: None,
            karras: false,
            spacing: None,
            eta: 0.0,
            seed: 0,
            height: None,
            width: None,
            init_latents: None,
            attention: CaptureMode::Aggregate,
        }
    }
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
    Sampler(#[from] super::SamplerError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

/// What the loop reports, in order: `Started` once, `Step` per UNet evaluation, `Decoding`,
/// then the function returns the image.
pub enum RunEvent {
    Started(Box<RunMeta>),
    Step(Box<StepRecord>),
    Decoding,
}

fn check_finite(v: &[f32], what: &'static str, step: usize, total: usize, timestep: f64) -> Result<(), RunError> {
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

/// The sampler a diffusers pipeline would use for this model: its own scheduler class.
pub fn model_sampler(config: &super::config::SchedulerConfig) -> Result<SamplerKind, RunError> {
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
    Ok(Geometry {
        height,
        width,
        latent: [sd.latent_channels(), height / f, width / f],
    })
}

/// The sampler a run uses: the one asked for, else the model's own scheduler class.
pub fn sampler_kind(sd: &StableDiffusion, asked: Option<SamplerKind>) -> Result<SamplerKind, RunError> {
    match asked {
        Some(k) => Ok(k),
        None => model_sampler(&sd.scheduler_config),
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

/// Runs the whole pipeline. `sink` gets every event as it happens; `cancel` is polled between
/// UNet evaluations. Returns the decoded image.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    cfg: &RunConfig,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(RunEvent),
) -> Result<RgbImage, RunError> {
    if cfg.steps == 0 {
        return Err(RunError::BadInput("steps must be at least 1".into()));
    }
    if !cfg.guidance.is_finite() {
        return Err(RunError::BadInput(format!("guidance {} is not a finite number", cfg.guidance)));
    }
    let geo = geometry(sd, cfg)?;
    let [c, h, w] = geo.latent;
    let n_latent = c * h * w;
    let cfg_on = cfg.guidance > 1.0;
    let device = &sd.device;

    // Prompt encoding.
    let pos = sd.tokenizer.encode(&cfg.prompt);
    let neg = sd.tokenizer.encode(&cfg.negative_prompt);
    let ids_tensor = |ids: &[u32]| Tensor::new(ids, device).and_then(|t| t.unsqueeze(0));
    let pos_emb = sd.text_encoder.forward(&ids_tensor(&pos.ids)?)?;
    let context = if cfg_on {
        let neg_emb = sd.text_encoder.forward(&ids_tensor(&neg.ids)?)?;
        Tensor::cat(&[&neg_emb, &pos_emb], 0)?
    } else {
        pos_emb
    };

    // Sampler and initial latents.
    let options = SamplerOptions {
        karras: cfg.karras,
        spacing: cfg.spacing,
        eta: cfg.eta,
    };
    let kind = sampler_kind(sd, cfg.sampler)?;
    let mut sampler = build_sampler(kind, &sd.scheduler_config, cfg.steps, &options)?;
    let timesteps = sampler.timesteps().to_vec();
    let total = timesteps.len();
    let mut rng = TorchRng::new(cfg.seed);
    let noise = match &cfg.init_latents {
        Some(path) => read_init_latents(path, geo.latent)?,
        None => rng.randn(n_latent),
    };
    let init_sigma = sampler.init_noise_sigma();
    let mut latents: Vec<f32> = noise.iter().map(|v| v * init_sigma).collect();

    let layer_sizes = attn_layer_sizes(sd, h, w);
    let meta = RunMeta {
        format_version: crate::trace::FORMAT_VERSION,
        app_version: env!("CARGO_PKG_VERSION").into(),
        model: model_spec.to_owned(),
        model_path: sd.root.display().to_string(),
        prompt: cfg.prompt.clone(),
        negative_prompt: cfg.negative_prompt.clone(),
        tokens: pos.tokens.clone(),
        token_ids: pos.ids.clone(),
        tokens_used: pos.n_used,
        word_of_token: pos.word_of_token.clone(),
        words: pos.words.clone(),
        truncated_words: pos.truncated_words.clone(),
        negative_token_ids: neg.ids.clone(),
        sampler: kind.as_str().into(),
        scheduler: sampler.settings_json(),
        steps: cfg.steps,
        guidance: cfg.guidance,
        seed: cfg.seed,
        init_latents: cfg
            .init_latents
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "seed".into()),
        height: geo.height,
        width: geo.width,
        latent_shape: geo.latent,
        vae_scale_factor: sd.vae_scale_factor(),
        prediction_type: sampler.config().prediction_type.as_str().into(),
        // JSON has no infinity (zero-terminal-SNR schedules end at sigma = inf): store f32::MAX.
        sigmas: (0..total)
            .map(|i| sampler.sigma(i))
            .map(|s| if s.is_finite() { s } else { f32::MAX })
            .collect(),
        timesteps: timesteps.clone(),
        init_noise_sigma: init_sigma,
        attention: cfg.attention,
        attn_layers: if cfg.attention == CaptureMode::None {
            Vec::new()
        } else {
            layer_sizes.clone()
        },
        dtype: format!("{:?}", sd.dtype).to_lowercase(),
        device: if device.is_cpu() { "cpu".into() } else { "cuda".into() },
        step_secs: Vec::new(),
        total_secs: 0.0,
        status: RunStatus::Running,
        error: None,
    };
    sink(RunEvent::Started(Box::new(meta)));

    let shape = (1, c, h, w);
    for (i, &t) in timesteps.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(RunError::Cancelled { completed: i, total });
        }
        let t_step = Instant::now();
        let scaled = sampler.scale_model_input(&latents, i);
        let x = Tensor::from_vec(scaled, shape, device)?.to_dtype(sd.dtype)?;
        let x = if cfg_on { Tensor::cat(&[&x, &x], 0)? } else { x };
        let mut probe = AttnProbe::new(cfg.attention, usize::from(cfg_on));
        let out = sd.unet.forward(&x, t, &context, &mut probe)?.to_dtype(DType::F32)?;
        let model_output: Vec<f32> = if cfg_on {
            let uncond = out.get(0)?.flatten_all()?.to_vec1::<f32>()?;
            let cond = out.get(1)?.flatten_all()?.to_vec1::<f32>()?;
            uncond.iter().zip(&cond).map(|(u, c)| u + cfg.guidance * (c - u)).collect()
        } else {
            out.flatten_all()?.to_vec1::<f32>()?
        };
        check_finite(&model_output, "model output", i, total, t)?;
        let step = sampler.step(&model_output, i, &latents, &mut rng)?;
        check_finite(&step.prev_sample, "latents", i, total, t)?;
        latents = step.prev_sample;
        let attention = attention_to_maps(probe, cfg.attention, &|i| {
            (layer_sizes[i].path.clone(), layer_sizes[i].height, layer_sizes[i].width)
        })?;
        let record = StepRecord {
            index: i,
            timestep: t,
            sigma: sampler.sigma(i),
            latents: latents.clone(),
            x0: step.pred_original_sample,
            x0_from_scheduler: step.x0_from_scheduler,
            model_output,
            attention,
            elapsed_secs: t_step.elapsed().as_secs_f64(),
        };
        sink(RunEvent::Step(Box::new(record)));
    }

    sink(RunEvent::Decoding);
    let unit = sd.vae.decode_unit(&Tensor::from_vec(latents, shape, device)?.to_dtype(sd.dtype)?)?;
    let image = Vae::to_rgb8(&unit)?;
    Ok(image)
}

/// Decodes latents [C, h, w] (as the sampler holds them) with the VAE to an 8-bit image.
pub fn decode(sd: &StableDiffusion, latents: Vec<f32>, shape: [usize; 3]) -> Result<RgbImage, RunError> {
    let [c, h, w] = shape;
    if latents.len() != c * h * w || c != sd.latent_channels() {
        return Err(RunError::BadInput(format!(
            "latents of shape {shape:?} do not fit this model ({} channels)",
            sd.latent_channels()
        )));
    }
    let t = Tensor::from_vec(latents, (1, c, h, w), &sd.device)?.to_dtype(sd.dtype)?;
    Ok(Vae::to_rgb8(&sd.vae.decode_unit(&t)?)?)
}

/// Turns the probe's device tensors into plain maps: one per layer (full) or the mean over the
/// layers of each resolution, finest first (aggregate). `layer` gives a layer's path and size.
pub fn attention_to_maps(
    probe: AttnProbe,
    mode: CaptureMode,
    layer: &dyn Fn(usize) -> (String, usize, usize),
) -> Result<Vec<AttnMap>, RunError> {
    let to_map = |key: String, height: usize, width: usize, t: &Tensor| -> Result<AttnMap, RunError> {
        let (_, tokens) = t.dims2()?;
        Ok(AttnMap {
            key,
            height,
            width,
            tokens,
            data: t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        })
    };
    match mode {
        CaptureMode::None => Ok(Vec::new()),
        CaptureMode::Full => probe
            .maps
            .iter()
            .map(|m| to_map(AttnMap::layer_key(&layer(m.layer).0), m.height, m.width, &m.probs))
            .collect(),
        CaptureMode::Aggregate => {
            let mut groups: Vec<((usize, usize), Tensor, usize)> = Vec::new();
            for m in &probe.maps {
                match groups.iter_mut().find(|(k, _, _)| *k == (m.height, m.width)) {
                    Some((_, sum, count)) => {
                        *sum = (&*sum + &m.probs)?;
                        *count += 1;
                    }
                    None => groups.push(((m.height, m.width), m.probs.clone(), 1)),
                }
            }
            groups.sort_by_key(|((h, w), _, _)| std::cmp::Reverse(h * w));
            groups
                .into_iter()
                .map(|((h, w), sum, count)| to_map(AttnMap::aggregate_key(h, w), h, w, &(sum / count as f64)?))
                .collect()
        }
    }
}
