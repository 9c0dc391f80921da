//! Saliency of denoising steps as in arXiv 2402.10404 (X-Diffusion): DF-RISE and DF-CAM maps
//! computed inside a generation at chosen steps and attached to those steps' records, so the
//! trace holds them beside the attention (`rise`, `cam.<block>`, `cam.all`, [N, h, w]).
//!
//! What the authors' code does and what we do (github.com/ian-jihoonpark/X-Diffusion):
//! - DF-RISE: N binary masks per latent pixel (`uniform < 0.5`, the same for every channel)
//!   multiply the step's input latents x_t; the UNet runs on each masked input with guidance
//!   (both branches masked); each guided output is scored with the SSIM structure map against a
//!   reference, averaged over channels and kept per pixel; saliency = sum of mask * score, then
//!   ReLU and min-max. The authors' reference is the step's unperturbed *next latents* x_{t-1}
//!   (the scheduler's `prev_sample`) compared with the masked *noise prediction*, and their
//!   structure term has `2 σxy` in the numerator; both are our defaults
//!   ([`RiseCompare::NextLatents`], [`StructureTerm::Authors`]). Like-for-like comparison with
//!   the unperturbed output ([`RiseCompare::Output`]) and the textbook structure term are
//!   options. Masks come from NumPy's `RandomState(mask_seed)` (the authors leave NumPy
//!   unseeded); every step draws the same N masks, so steps are comparable. Masks are batched,
//!   `batch` per UNet call.
//! - DF-CAM: Grad-CAM on a UNet block's output at the step: one guided forward pass, one
//!   backward pass from the sum of the guided output; with guidance the block's activations and
//!   gradients are combined per branch as `u + w (c - u)`, as the authors do. Weights = the
//!   spatial mean of each channel's gradient; map = ReLU(sum_k w_k A_k), bilinearly resized to
//!   the latent grid, min-max scaled. `all` sums the min-max-scaled maps of the authors' 43-block
//!   set (every resnet, attention, down- and upsampler; of the mid block its two resnets), then
//!   min-max scales the sum. The authors' code takes the activations of the *last* step (their
//!   forward hook fires on every step, the backward hook only at the chosen one); we use the
//!   chosen step's own, which is what the paper describes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{ExperimentEvent, Progress, Stop};
use crate::analysis::saliency::{self as sal, StructureTerm};
use crate::metrics::nprand::RandomState;
use crate::model::StableDiffusion;
use crate::pipeline::{self, InitLatents, RunConfig, RunError, RunEvent, StepContext, StepHook};
use crate::sampling::{SamplerKind, TimestepSpacing};
use crate::trace::{Run, RunEnd, SaliencyMap};
use crate::types::CaptureMode;

/// The DF-CAM block of the authors' default.
pub const DEFAULT_CAM_BLOCK: &str = "mid_block.resnets.0";
/// The name of the sum over the authors' block set.
pub const CAM_ALL: &str = "all";

/// What DF-RISE compares each masked output with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RiseCompare {
    /// The authors' code: the unperturbed step's next latents x_{t-1} against the masked
    /// guided noise prediction.
    NextLatents,
    /// The unperturbed guided model output against the masked one (like for like).
    Output,
}

impl RiseCompare {
    pub fn as_str(self) -> &'static str {
        match self {
            RiseCompare::NextLatents => "next-latents",
            RiseCompare::Output => "output",
        }
    }
}

impl std::str::FromStr for RiseCompare {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "next-latents" => Ok(RiseCompare::NextLatents),
            "output" => Ok(RiseCompare::Output),
            _ => Err(format!(
                "unknown DF-RISE comparison {s:?}; valid: next-latents (the authors'), output"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiseSettings {
    /// Masks per step (the authors' AUC script: 500).
    pub masks: usize,
    /// Masks per UNet call; 0: as many as a quarter of the free memory holds (at most 64).
    pub batch: usize,
    /// Seed of NumPy's `RandomState` the masks are drawn from.
    pub mask_seed: u32,
    /// Probability that a latent pixel is kept (the authors: 0.5).
    pub keep: f64,
    pub compare: RiseCompare,
    pub structure: StructureTerm,
}

impl Default for RiseSettings {
    fn default() -> Self {
        Self {
            masks: 500,
            batch: 0,
            mask_seed: 0,
            keep: 0.5,
            compare: RiseCompare::NextLatents,
            structure: StructureTerm::Authors,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CamSettings {
    /// diffusers block paths (`mid_block.resnets.0`, ...) and/or `all`.
    pub blocks: Vec<String>,
}

impl Default for CamSettings {
    fn default() -> Self {
        Self {
            blocks: vec![DEFAULT_CAM_BLOCK.into()],
        }
    }
}

/// A generation and the saliency to compute inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaliencySettings {
    pub prompt: String,
    pub negative_prompt: String,
    #[serde(default)]
    pub text_options: crate::types::TextOptions,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f32,
    /// None: the model's own scheduler.
    pub sampler: Option<SamplerKind>,
    pub spacing: Option<TimestepSpacing>,
    pub karras: bool,
    pub eta: f32,
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// Initial latents from a file (`--init-latents`) instead of the seed.
    pub init_latents: Option<std::path::PathBuf>,
    pub attention: CaptureMode,
    /// 0-based loop iterations to compute saliency at; None: every step.
    pub steps_at: Option<Vec<usize>>,
    /// End the run after the last step in `steps_at` (no image): the app's on-demand maps.
    #[serde(default)]
    pub stop_after_last: bool,
    pub rise: Option<RiseSettings>,
    pub cam: Option<CamSettings>,
}

impl Default for SaliencySettings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            text_options: Default::default(),
            seed: 0,
            steps: 30,
            guidance: 7.5,
            sampler: None,
            spacing: None,
            karras: false,
            eta: 0.0,
            height: None,
            width: None,
            init_latents: None,
            attention: CaptureMode::Aggregate,
            steps_at: None,
            stop_after_last: false,
            rise: Some(RiseSettings::default()),
            cam: None,
        }
    }
}

impl SaliencySettings {
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            text_options: self.text_options.clone(),
            steps: self.steps,
            guidance: self.guidance,
            sampler: self.sampler,
            karras: self.karras,
            spacing: self.spacing,
            eta: self.eta,
            seed: self.seed,
            height: self.height,
            width: self.width,
            init_latents: self.init_latents.clone().map_or(InitLatents::Seed, InitLatents::File),
            embeddings: None,
            attention: self.attention,
        }
    }

    fn wants_step(&self, index: usize) -> bool {
        self.steps_at.as_ref().is_none_or(|s| s.contains(&index))
    }
}

/// The maps of one step, streamed as soon as the step is done.
#[derive(Debug, Clone, PartialEq)]
pub struct SaliencyStep {
    pub index: usize,
    pub timestep: f64,
    pub maps: Vec<SaliencyMap>,
}

/// Time spent per method, over the steps done.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SaliencyReport {
    /// Loop iterations saliency was computed at.
    pub steps_done: Vec<usize>,
    /// Masks per UNet call DF-RISE used (0 when it did not run).
    pub rise_batch: usize,
    pub rise_secs_per_step: Option<f64>,
    pub cam_secs_per_step: Option<f64>,
    /// The CAM blocks computed (`all` expanded to the blocks it sums).
    pub cam_blocks: Vec<String>,
}

/// The authors' "all blocks" set: every block the UNet taps except the mid block's attention.
pub fn authors_block_set(sd: &StableDiffusion) -> Vec<String> {
    pipeline::block_paths(sd)
        .into_iter()
        .filter(|p| p != "mid_block.attentions.0")
        .collect()
}

/// Checks the settings against the model: known blocks, sensible counts, steps in range.
fn validate(sd: &StableDiffusion, s: &SaliencySettings) -> Result<(), RunError> {
    if s.rise.is_none() && s.cam.is_none() {
        return Err(RunError::BadInput("choose a saliency method (rise, cam or both)".into()));
    }
    if let Some(r) = &s.rise {
        if r.masks == 0 {
            return Err(RunError::BadInput("DF-RISE needs at least one mask".into()));
        }
        if !(r.keep > 0.0 && r.keep <= 1.0) {
            return Err(RunError::BadInput(format!("the keep probability {} must be in (0, 1]", r.keep)));
        }
    }
    if let Some(c) = &s.cam {
        if c.blocks.is_empty() {
            return Err(RunError::BadInput("DF-CAM needs a block (e.g. mid_block.resnets.0, or all)".into()));
        }
        let known = pipeline::block_paths(sd);
        if let Some(b) = c.blocks.iter().find(|b| *b != CAM_ALL && !known.contains(b)) {
            return Err(RunError::BadInput(format!(
                "this UNet has no block {b:?}; its blocks: {}, or all",
                known.join(", ")
            )));
        }
    }
    if let Some(at) = &s.steps_at {
        if at.is_empty() {
            return Err(RunError::BadInput("no steps to compute saliency at".into()));
        }
        if let Some(i) = at.iter().find(|&&i| i >= s.steps) {
            return Err(RunError::BadInput(format!("step {} is past the last of {} steps", i + 1, s.steps)));
        }
    }
    Ok(())
}

/// Masks per UNet call when the settings leave it to us: as many as a quarter of the free
/// memory holds, at most 64.
pub fn auto_batch(sd: &StableDiffusion, latent: [usize; 3], guided: bool) -> usize {
    let per = pipeline::memory::unet_bytes(sd, latent, if guided { 2.0 } else { 1.0 });
    let budget = pipeline::memory::available_bytes().unwrap_or(4e9) / 4.0;
    ((budget / per.max(1.0)) as usize).clamp(1, 64)
}

/// The hook that computes the maps inside the sampler loop.
struct Saliency<'a> {
    settings: &'a SaliencySettings,
    report: SaliencyReport,
    rise_secs: f64,
    cam_secs: f64,
    /// Progress units: mask batches and CAM passes over all chosen steps.
    done: usize,
    total: usize,
    progress: &'a mut dyn FnMut(Progress),
}

impl Saliency<'_> {
    fn tick(&mut self, message: String) {
        self.done += 1;
        (self.progress)(Progress {
            done: self.done,
            total: self.total,
            message,
        });
    }

    fn rise(&mut self, ctx: &StepContext, r: &RiseSettings) -> Result<SaliencyMap, RunError> {
        let batch = self.report.rise_batch.max(1);
        let data = rise_at(ctx, r, batch, &mut |done| {
            self.tick(format!("step {}/{}: DF-RISE {done} of {} masks", ctx.index + 1, ctx.total, r.masks))
        })?;
        let [_, h, w] = ctx.latent;
        Ok(SaliencyMap {
            key: "rise".into(),
            height: h,
            width: w,
            data,
        })
    }

    fn cam(&mut self, ctx: &StepContext, c: &CamSettings) -> Result<Vec<SaliencyMap>, RunError> {
        let [_, h, w] = ctx.latent;
        let (maps, tapped) = cam_at(ctx, &c.blocks)?;
        self.report.cam_blocks = tapped;
        self.tick(format!("step {}/{}: DF-CAM", ctx.index + 1, ctx.total));
        Ok(maps
            .into_iter()
            .map(|(b, data)| SaliencyMap {
                key: format!("cam.{b}"),
                height: h,
                width: w,
                data,
            })
            .collect())
    }
}

/// DF-RISE's map at one step, ReLU'd and min-max scaled ([h * w]). `on_batch` hears the
/// number of masks done after each UNet call.
pub fn rise_at(ctx: &StepContext, r: &RiseSettings, batch: usize, on_batch: &mut dyn FnMut(usize)) -> Result<Vec<f32>, RunError> {
    let [c, h, w] = ctx.latent;
    let reference = match r.compare {
        RiseCompare::NextLatents => ctx.next,
        RiseCompare::Output => ctx.model_output,
    };
    let mut rng = RandomState::new(r.mask_seed);
    let mut acc = vec![0f32; h * w];
    let mut done = 0;
    while done < r.masks {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(RunError::Cancelled {
                completed: ctx.index,
                total: ctx.total,
            });
        }
        let n = (r.masks - done).min(batch.max(1));
        let masks: Vec<Vec<f32>> = (0..n).map(|_| sal::rise_mask(&mut || rng.random_sample(), h, w, r.keep)).collect();
        let inputs: Vec<Vec<f32>> = masks
            .iter()
            .map(|m| ctx.sampler.scale_model_input(&apply_mask(ctx.input, m), ctx.index))
            .collect();
        let outputs = pipeline::guided_eval_batch(ctx.sd, ctx.cond, &inputs, ctx.latent, ctx.t, ctx.guidance)?;
        for (m, out) in masks.iter().zip(&outputs) {
            let score = sal::ssim_structure(reference, out, c, h, w, r.structure);
            sal::rise_accumulate(&mut acc, m, &score);
        }
        done += n;
        on_batch(done);
    }
    Ok(sal::relu_minmax(&acc))
}

/// `x` [C, h, w] times a [h, w] mask, the same for every channel.
pub fn apply_mask(x: &[f32], mask: &[f32]) -> Vec<f32> {
    let hw = mask.len();
    x.iter().enumerate().map(|(i, v)| v * mask[i % hw]).collect()
}

/// DF-CAM's maps at one step for `blocks` (paths and/or `all`), each [h * w] in [0, 1], and
/// the blocks that were tapped (`all` expanded).
pub fn cam_at(ctx: &StepContext, blocks: &[String]) -> Result<(Vec<(String, Vec<f32>)>, Vec<String>), RunError> {
    let [_, h, w] = ctx.latent;
    let wants_all = blocks.iter().any(|b| b == CAM_ALL);
    let all = authors_block_set(ctx.sd);
    let tapped: Vec<String> = if wants_all {
        let mut v = all.clone();
        v.extend(blocks.iter().filter(|b| *b != CAM_ALL && !all.contains(b)).cloned());
        v
    } else {
        blocks.to_vec()
    };
    let scaled = ctx.sampler.scale_model_input(ctx.input, ctx.index);
    let (_, grads) = pipeline::cam_eval(ctx.sd, ctx.cond, scaled, ctx.latent, ctx.t, ctx.guidance, Some(&tapped))?;
    let map_of = |path: &str| -> Option<Vec<f32>> {
        grads
            .iter()
            .find(|g| g.path == path)
            .map(|g| sal::cam_map(&g.activation, &g.gradient, g.channels, g.height, g.width, h, w))
    };
    let mut maps = Vec::new();
    for b in blocks {
        let data = if b == CAM_ALL {
            let mut sum = vec![0f32; h * w];
            for p in &all {
                if let Some(m) = map_of(p) {
                    sum.iter_mut().zip(&m).for_each(|(s, v)| *s += v);
                }
            }
            sal::minmax(&sum)
        } else {
            map_of(b).ok_or_else(|| RunError::BadInput(format!("block {b} was not reached by the forward pass")))?
        };
        maps.push((b.clone(), data));
    }
    Ok((maps, tapped))
}

impl StepHook for Saliency<'_> {
    fn at_step(&mut self, ctx: &StepContext) -> Result<Vec<SaliencyMap>, RunError> {
        if !self.settings.wants_step(ctx.index) {
            return Ok(Vec::new());
        }
        let mut maps = Vec::new();
        if let Some(r) = &self.settings.rise {
            let t0 = Instant::now();
            maps.push(self.rise(ctx, r)?);
            self.rise_secs += t0.elapsed().as_secs_f64();
        }
        if let Some(c) = &self.settings.cam {
            let t0 = Instant::now();
            maps.extend(self.cam(ctx, c)?);
            self.cam_secs += t0.elapsed().as_secs_f64();
        }
        self.report.steps_done.push(ctx.index);
        Ok(maps)
    }

    fn finished(&self) -> bool {
        self.settings.stop_after_last
            && self
                .settings
                .steps_at
                .as_ref()
                .is_some_and(|at| at.iter().all(|i| self.report.steps_done.contains(i)))
    }
}

/// Runs the generation with saliency at the chosen steps. Streams progress and, at the end
/// (also when cancelled or failed part-way), the run with the maps on its steps
/// ([`ExperimentEvent::SaliencyRun`]).
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &SaliencySettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(SaliencyReport, Option<Stop>), RunError> {
    validate(sd, settings)?;
    let cfg = settings.run_config();
    let geo = pipeline::geometry(sd, &cfg)?;
    let n_steps = settings.steps_at.as_ref().map_or(settings.steps, Vec::len);
    let rise_batch = settings.rise.as_ref().map_or(0, |r| {
        if r.batch > 0 {
            r.batch.min(r.masks)
        } else {
            auto_batch(sd, geo.latent, cfg.guided(sd)).min(r.masks)
        }
    });
    let per_step = settings.rise.as_ref().map_or(0, |r| r.masks.div_ceil(rise_batch)) + usize::from(settings.cam.is_some());
    let t0 = Instant::now();
    let mut run: Option<Run> = None;
    // The hook's progress and the loop's steps both go to `sink`.
    let sink = std::cell::RefCell::new(sink);
    let (result, report) = {
        let mut progress = |p: Progress| (sink.borrow_mut())(ExperimentEvent::Progress(p));
        let mut hook = Saliency {
            settings,
            report: SaliencyReport {
                rise_batch,
                ..Default::default()
            },
            rise_secs: 0.0,
            cam_secs: 0.0,
            done: 0,
            total: n_steps * per_step,
            progress: &mut progress,
        };
        let result = pipeline::run_hooked(
            sd,
            model_spec,
            &cfg,
            cancel,
            &mut |ev| match ev {
                RunEvent::Started(m) => {
                    let mut r = Run::started(*m);
                    r.meta.saliency = serde_json::to_value(settings).ok();
                    run = Some(r);
                }
                RunEvent::Step(s) => {
                    if !s.saliency.is_empty() {
                        (sink.borrow_mut())(ExperimentEvent::SaliencyStep(Box::new(SaliencyStep {
                            index: s.index,
                            timestep: s.timestep,
                            maps: s.saliency.clone(),
                        })));
                    }
                    if let Some(r) = run.as_mut() {
                        r.push_step(*s);
                    }
                }
                RunEvent::Decoding => {}
            },
            &mut hook,
        );
        let done = hook.report.steps_done.len().max(1) as f64;
        let mut report = hook.report;
        if settings.rise.is_some() && !report.steps_done.is_empty() {
            report.rise_secs_per_step = Some(hook.rise_secs / done);
        }
        if settings.cam.is_some() && !report.steps_done.is_empty() {
            report.cam_secs_per_step = Some(hook.cam_secs / done);
        }
        (result, report)
    };
    let secs = t0.elapsed().as_secs_f64();
    let stopped = match result {
        Ok(Some(image)) => {
            if let Some(r) = run.as_mut() {
                r.finish(RunEnd::Complete(image), secs);
            }
            None
        }
        // Ended after the last step asked for: the maps are all there, the run is partial.
        Ok(None) => {
            if let Some(r) = run.as_mut() {
                r.finish(RunEnd::Cancelled, secs);
            }
            None
        }
        Err(RunError::Cancelled { .. }) => {
            if let Some(r) = run.as_mut() {
                r.finish(RunEnd::Cancelled, secs);
            }
            Some(Stop::Cancelled)
        }
        Err(e) => {
            if let Some(r) = run.as_mut() {
                r.finish(RunEnd::Failed(e.to_string()), secs);
            }
            if run.is_none() {
                return Err(e);
            }
            Some(Stop::Failed(e.to_string()))
        }
    };
    if let Some(r) = run {
        (sink.into_inner())(ExperimentEvent::SaliencyRun(Box::new(r)));
    }
    Ok((report, stopped))
}
