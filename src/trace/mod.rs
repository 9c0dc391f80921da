//! Plain-data records of a run: what the worker streams to the UI and what is saved to disk.
//! No tensors here: everything is `Vec<f32>` with its shape, so the UI and the analysis code
//! never see candle.
//!
//! On disk a run is a folder with `trace.json` ([`RunMeta`]), `trace.safetensors` (stacked
//! per-step arrays, readable from Python with `safetensors` alone) and `image.png`.

mod io;
pub mod synthetic;

pub use io::{RUN_FILES, TraceError, foreign_entry, load_run, load_run_with_progress, save_png, save_run};

use serde::{Deserialize, Serialize};

pub use crate::types::{CaptureMode, RgbImage};

pub const FORMAT_VERSION: u32 = 1;

/// One cross-attention layer as the run saw it (its resolution depends on the image size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttnLayer {
    pub path: String,
    pub heads: usize,
    pub height: usize,
    pub width: usize,
}

/// A head-averaged cross-attention map of the conditional branch: `data` is [height*width,
/// tokens] row-major (row = latent cell at this resolution, column = token position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttnMap {
    /// `attn.<diffusers module path>` for one layer (full capture) or `attn_res.<h>x<w>` for
    /// the mean over the layers of one resolution (aggregate capture).
    pub key: String,
    pub height: usize,
    pub width: usize,
    pub tokens: usize,
    pub data: Vec<f32>,
}

impl AttnMap {
    pub fn aggregate_key(height: usize, width: usize) -> String {
        format!("attn_res.{height}x{width}")
    }
    pub fn layer_key(path: &str) -> String {
        format!("attn.{path}")
    }
}

/// A saliency map of one step at latent resolution: `data` is [height * width] row-major,
/// scaled to [0, 1]. Keys: `rise` (DF-RISE), `cam.<diffusers block path>` (DF-CAM of one
/// block), `cam.all` (DF-CAM summed over the blocks, then scaled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaliencyMap {
    pub key: String,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl SaliencyMap {
    /// True for the trace keys saliency maps are stored under.
    pub fn is_key(key: &str) -> bool {
        key == "rise" || key.starts_with("cam.")
    }
}

/// Everything recorded at one loop iteration (one UNet evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: usize,
    pub timestep: f64,
    pub sigma: f32,
    /// Latents after this step, as diffusers' `callback_on_step_end` sees them. [C, h, w]
    pub latents: Vec<f32>,
    /// Predicted clean latents. [C, h, w]
    pub x0: Vec<f32>,
    /// True when `x0` is the scheduler's own `pred_original_sample`; false when the scheduler
    /// returns none and it was computed from the model output with the standard formula.
    pub x0_from_scheduler: bool,
    /// The (guided) model output given to the scheduler. [C, h, w]
    pub model_output: Vec<f32>,
    pub attention: Vec<AttnMap>,
    /// Saliency maps computed at this step (DF-RISE / DF-CAM), if any.
    #[serde(default)]
    pub saliency: Vec<SaliencyMap>,
    pub elapsed_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Complete,
    Cancelled,
    Failed,
}

/// The run's settings and per-run facts: `trace.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub format_version: u32,
    pub app_version: String,
    /// The model as the user named it (folder or hub id) and the folder it was loaded from.
    pub model: String,
    pub model_path: String,
    pub prompt: String,
    pub negative_prompt: String,
    /// SDXL's second prompts and clip skip, when set.
    #[serde(flatten)]
    pub text_options: crate::types::TextOptions,
    /// Token strings and ids of the prompt, padded to the tokenizer's max length.
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    /// bos + prompt tokens + eos (positions before padding).
    pub tokens_used: usize,
    /// Word index of each token position (None for special tokens and padding).
    pub word_of_token: Vec<Option<usize>>,
    pub words: Vec<String>,
    pub truncated_words: Vec<String>,
    pub negative_token_ids: Vec<u32>,
    pub sampler: String,
    /// The scheduler class, its effective config and options.
    pub scheduler: serde_json::Value,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    /// "seed" or the path of the `--init-latents` file.
    pub init_latents: String,
    pub height: usize,
    pub width: usize,
    /// [C, h, w] of the latents.
    pub latent_shape: [usize; 3],
    pub vae_scale_factor: usize,
    pub prediction_type: String,
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
    pub attention: CaptureMode,
    pub attn_layers: Vec<AttnLayer>,
    pub dtype: String,
    pub device: String,
    pub step_secs: Vec<f64>,
    pub total_secs: f64,
    pub status: RunStatus,
    pub error: Option<String>,
    /// The settings the saliency maps of the steps were computed with (absent: none were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saliency: Option<serde_json::Value>,
}

/// A run as the app, the CLI and the experiments hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub meta: RunMeta,
    pub steps: Vec<StepRecord>,
    pub image: Option<RgbImage>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    Complete(RgbImage),
    Cancelled,
    Failed(String),
}

/// The one assembly of a run from what the pipeline streams (`Started`, `Step`s, the end):
/// the CLI, the app's store and the experiments all build their `Run`s through these three
/// methods, so `step_secs`, `status` and `total_secs` mean the same everywhere.
///
/// `total_secs` is the wall time of the run itself: from the start of the pipeline (prompt
/// encoding) to its end (image decoded, or cancel / failure), without the model load.
impl Run {
    /// A run that has just started (its meta from the pipeline's `Started`), no steps yet.
    pub fn started(meta: RunMeta) -> Self {
        Run {
            meta,
            steps: Vec::new(),
            image: None,
        }
    }

    /// Appends one step and its time.
    pub fn push_step(&mut self, step: StepRecord) {
        self.meta.step_secs.push(step.elapsed_secs);
        self.steps.push(step);
    }

    /// Records the end of the run.
    pub fn finish(&mut self, end: RunEnd, total_secs: f64) {
        self.meta.total_secs = total_secs;
        match end {
            RunEnd::Complete(image) => {
                self.image = Some(image);
                self.meta.status = RunStatus::Complete;
            }
            RunEnd::Cancelled => self.meta.status = RunStatus::Cancelled,
            RunEnd::Failed(error) => {
                self.meta.status = RunStatus::Failed;
                self.meta.error = Some(error);
            }
        }
    }
}
