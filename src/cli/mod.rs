//! Headless subcommands. They parse flags into the same plain config structs the app uses and
//! drive the same worker.

pub mod bench;
pub mod compare;
pub mod dataset;
pub mod eval;
pub mod generate;
pub mod generate_set;
pub mod inspect;
pub mod interrupt;
pub mod metrics;
pub mod probe;
pub mod saliency;
pub mod sweep;
pub mod unet_bench;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use diffusion_scope::engine::{Event, ModelRequest, Worker};
use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings, Stop};

use interrupt::Interrupt;

/// Runs an experiment through the worker with a progress bar (`unit`: what the bar counts),
/// Ctrl-C / SIGTERM / SIGHUP handled by [`Interrupt`]; every streamed item goes to `item`
/// (which writes its files through `Interrupt::writing`). Returns the report, why it stopped
/// early (if it did), and the interrupt handler for the final writes.
pub fn run_experiment(
    request: ModelRequest,
    settings: ExperimentSettings,
    quiet: bool,
    unit: &str,
    item: &mut dyn FnMut(ExperimentEvent, &Interrupt) -> anyhow::Result<()>,
) -> anyhow::Result<(ExperimentReport, Option<Stop>, Interrupt)> {
    let worker = Worker::spawn(Box::new(|| {})).context("starting the worker thread")?;
    let interrupt = Interrupt::install(worker.cancel_flag(), "UNet evaluation", "saving what was computed");
    worker.experiment(request, settings)?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}  {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (report, stopped) = loop {
        let Ok(ev) = worker.events().recv() else {
            anyhow::bail!("the worker thread stopped unexpectedly");
        };
        match ev {
            Event::LoadingModel { spec } => bar.set_message(format!("loading {spec}")),
            Event::ModelLoaded(info) => {
                if !quiet {
                    bar.suspend(|| eprintln!("loaded {} in {:.2}s", info.path, info.load_secs));
                }
            }
            Event::Experiment(ev) => match *ev {
                ExperimentEvent::Progress(p) => {
                    bar.set_length(p.total as u64);
                    bar.set_position(p.done as u64);
                    bar.set_message(p.message);
                }
                other => item(other, &interrupt)?,
            },
            Event::ExperimentFinished { outcome, .. } => break (outcome.report, outcome.stopped),
            Event::Failed { error, .. } => anyhow::bail!("{error}"),
            _ => {}
        }
    };
    bar.finish_and_clear();
    drop(worker);
    Ok((report, stopped, interrupt))
}

/// The model flags of the experiment commands (eval, compare, sweep).
#[derive(clap::Args, Debug)]
pub struct ModelTarget {
    /// A diffusers folder or a hub id (owner/name[@revision]); default: the bundled model.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value = "f32")]
    dtype: diffusion_scope::model::DTypeChoice,
    #[arg(long, default_value = "cpu")]
    device: diffusion_scope::model::DeviceChoice,
}

impl ModelTarget {
    /// Whether the bundled shapes-world model is used (no --model, or its folder).
    pub fn is_bundled(&self) -> bool {
        match &self.model {
            None => true,
            Some(m) => std::path::Path::new(m).canonicalize().ok() == diffusion_scope::bundled_model_path().canonicalize().ok(),
        }
    }

    /// The worker's model request (the bundled model when `--model` is omitted).
    pub fn request(&self) -> anyhow::Result<ModelRequest> {
        Ok(ModelRequest {
            spec: model_spec(self.model.clone())?,
            device: self.device,
            dtype: self.dtype,
        })
    }
}

/// `--shard I/N` as (i, n), or None; the error names the flag.
pub fn shard_flag(text: Option<&str>) -> anyhow::Result<Option<(usize, usize)>> {
    text.map(diffusion_scope::metrics::features::parse_shard)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--shard: {e}"))
}

/// The model to use: `--model` when given, else the bundled model (an error naming its
/// folder when it is missing).
pub fn model_spec(model: Option<String>) -> anyhow::Result<String> {
    match model {
        Some(m) => Ok(m),
        None => {
            let p = diffusion_scope::bundled_model_path();
            anyhow::ensure!(
                p.join("model_index.json").is_file(),
                "no --model given and the bundled model is not present at {}; pass --model FOLDER_OR_HUB_ID",
                p.display()
            );
            Ok(p.display().to_string())
        }
    }
}

/// Checks `--out` before anything is computed and creates it: a new or empty folder, or an
/// earlier output of `what` (it holds `report.json`), emptied only with `overwrite`.
pub fn prepare_out(out: &std::path::Path, overwrite: bool, what: &str) -> anyhow::Result<()> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {} is a file", out.display());
    }
    let non_empty = std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty {
        if !out.join("report.json").is_file() {
            anyhow::bail!(
                "--out {} holds files that are not an earlier {what}; refusing to write into it",
                out.display()
            );
        }
        if !overwrite {
            anyhow::bail!("--out {} holds an earlier {what}; pass --overwrite to replace it", out.display());
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

/// SDXL's second prompts and clip skip, for the commands that run one generation.
#[derive(clap::Args, Debug, Clone)]
pub struct TextArgs {
    /// SDXL: the second text encoder's prompt (diffusers' prompt_2); default: --prompt.
    #[arg(long, default_value = "")]
    prompt_2: String,
    /// SDXL: the second text encoder's negative prompt; default: --negative-prompt. As in
    /// diffusers, an empty --negative-prompt on a model with force_zeros_for_empty_prompt
    /// gives zero negative embeddings whatever this says.
    #[arg(long, default_value = "")]
    negative_prompt_2: String,
    /// diffusers' clip_skip: the text encoder's output this many layers earlier (the positive
    /// prompt only, as diffusers does).
    #[arg(long)]
    clip_skip: Option<usize>,
}

impl TextArgs {
    pub fn options(&self) -> diffusion_scope::types::TextOptions {
        diffusion_scope::types::TextOptions::new(&self.prompt_2, &self.negative_prompt_2, self.clip_skip)
    }
}
