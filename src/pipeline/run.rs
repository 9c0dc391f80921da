//! The sampler loop: one whole generation, streamed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{
    Conditioning, InitLatents, RunConfig, RunError, RunEvent, attn_layer_sizes, check_finite, decode, encode_text, geometry, guided_eval,
    initial_noise, sampler_kind, scheduler_config,
};
use crate::model::StableDiffusion;
use crate::sampling::rng::TorchRng;
use crate::sampling::{Sampler, SamplerOptions, build_sampler};
use crate::trace::{RgbImage, RunMeta, RunStatus, SaliencyMap, StepRecord};
use crate::types::CaptureMode;

/// What one step of the loop computed, for work that hooks into it ([`StepHook`]).
pub struct StepContext<'a> {
    pub sd: &'a StableDiffusion,
    pub cond: &'a Conditioning,
    pub index: usize,
    pub total: usize,
    pub t: f64,
    pub guidance: f32,
    pub latent: [usize; 3],
    /// x_t: the latents the step started from (before `scale_model_input`).
    pub input: &'a [f32],
    /// The guided model output the sampler was given.
    pub model_output: &'a [f32],
    /// x_{t-1}: the sampler's `prev_sample` from that output.
    pub next: &'a [f32],
    /// The sampler, for `scale_model_input` of other inputs at this step.
    pub sampler: &'a dyn Sampler,
    pub cancel: &'a AtomicBool,
}

/// Work done inside the sampler loop after a step (the saliency methods): it returns maps to
/// attach to the step's record. It may call the pipeline's pieces; it must not change the run.
pub trait StepHook {
    fn at_step(&mut self, ctx: &StepContext) -> Result<Vec<SaliencyMap>, RunError>;
    /// True once the hook needs no more steps: the loop ends after the step just streamed
    /// (an on-demand map at one step of a long run need not finish the run).
    fn finished(&self) -> bool {
        false
    }
}

/// No hook.
struct NoHook;

impl StepHook for NoHook {
    fn at_step(&mut self, _ctx: &StepContext) -> Result<Vec<SaliencyMap>, RunError> {
        Ok(Vec::new())
    }
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
    run_hooked(sd, model_spec, cfg, cancel, sink, &mut NoHook)?
        .ok_or_else(|| RunError::BadInput("the run ended before its last step".into()))
}

/// [`run`] with `hook` called after every step, before the step's record is streamed. Returns
/// None when the hook ended the run early ([`StepHook::finished`]): no decode, no image.
pub fn run_hooked(
    sd: &StableDiffusion,
    model_spec: &str,
    cfg: &RunConfig,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(RunEvent),
    hook: &mut dyn StepHook,
) -> Result<Option<RgbImage>, RunError> {
    if cfg.steps == 0 {
        return Err(RunError::BadInput("steps must be at least 1".into()));
    }
    if !cfg.guidance.is_finite() {
        return Err(RunError::BadInput(format!("guidance {} is not a finite number", cfg.guidance)));
    }
    let geo = geometry(sd, cfg)?;
    let [c, h, w] = geo.latent;
    let device = &sd.device;

    let mut cond = encode_text(sd, &cfg.text(), cfg.guided(sd), cfg.embeddings.as_ref())?;
    cond.set_image_size(geo.height, geo.width)?;

    // Sampler and initial latents.
    let options = SamplerOptions {
        karras: cfg.karras,
        spacing: cfg.spacing,
        eta: cfg.eta,
    };
    let kind = sampler_kind(sd, cfg.sampler)?;
    let mut sampler = build_sampler(kind, &scheduler_config(sd)?, cfg.steps, &options)?;
    let timesteps = sampler.timesteps().to_vec();
    let total = timesteps.len();
    let mut rng = TorchRng::new(cfg.seed);
    let noise = initial_noise(&cfg.init_latents, &mut rng, geo.latent)?;
    let init_sigma = sampler.init_noise_sigma();
    let mut latents: Vec<f32> = noise.iter().map(|v| v * init_sigma).collect();

    let layer_sizes = attn_layer_sizes(sd, h, w);
    let (pos, neg) = (&cond.positive, &cond.negative);
    let meta = RunMeta {
        format_version: crate::trace::FORMAT_VERSION,
        app_version: env!("CARGO_PKG_VERSION").into(),
        model: model_spec.to_owned(),
        model_path: sd.root.display().to_string(),
        prompt: cfg.prompt.clone(),
        negative_prompt: cfg.negative_prompt.clone(),
        text_options: cfg.text_options.clone(),
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
        init_latents: match &cfg.init_latents {
            InitLatents::Seed => "seed".into(),
            InitLatents::File(p) => p.display().to_string(),
            InitLatents::Values(_) => "given in memory".into(),
        },
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
        saliency: None,
    };
    sink(RunEvent::Started(Box::new(meta)));

    for (i, &t) in timesteps.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(RunError::Cancelled { completed: i, total });
        }
        let t_step = Instant::now();
        let scaled = sampler.scale_model_input(&latents, i);
        let out = guided_eval(sd, &cond, scaled, geo.latent, t, cfg.guidance, cfg.attention, &layer_sizes)?;
        check_finite(&out.model_output, "model output", i, total, t)?;
        let step = sampler.step(&out.model_output, i, &latents, &mut rng)?;
        check_finite(&step.prev_sample, "latents", i, total, t)?;
        // The step's own time; a hook's work is not part of the run's step times.
        let elapsed_secs = t_step.elapsed().as_secs_f64();
        let saliency = hook.at_step(&StepContext {
            sd,
            cond: &cond,
            index: i,
            total,
            t,
            guidance: cfg.guidance,
            latent: geo.latent,
            input: &latents,
            model_output: &out.model_output,
            next: &step.prev_sample,
            sampler: sampler.as_ref(),
            cancel,
        })?;
        latents = step.prev_sample;
        let record = StepRecord {
            index: i,
            timestep: t,
            sigma: sampler.sigma(i),
            latents: latents.clone(),
            x0: step.pred_original_sample,
            x0_from_scheduler: step.x0_from_scheduler,
            model_output: out.model_output,
            attention: out.attention,
            saliency,
            elapsed_secs,
        };
        sink(RunEvent::Step(Box::new(record)));
        if hook.finished() {
            return Ok(None);
        }
    }

    sink(RunEvent::Decoding);
    decode(sd, latents, [c, h, w]).map(Some)
}
