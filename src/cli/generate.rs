//! `diffusion-scope generate`: one run, streamed through the worker, saved as a trace folder.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use diffusion_scope::engine::{Event, ModelRequest, Worker};
use diffusion_scope::model::{DTypeChoice, DeviceChoice};
use diffusion_scope::pipeline::{InitLatents, RunConfig};
use diffusion_scope::sampling::{SamplerKind, TimestepSpacing};
use diffusion_scope::trace::{Run, save_run};
use diffusion_scope::types::CaptureMode;

use crate::cli::interrupt::Interrupt;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A diffusers folder or a hub id (owner/name[@revision]); default: the bundled model.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    #[command(flatten)]
    text: crate::cli::TextArgs,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale; <= 1 disables guidance (and the negative prompt).
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// ddim, ddpm, euler, euler-a, dpm++2m, pndm, lms, heun; default: the model's own scheduler.
    #[arg(long)]
    scheduler: Option<SamplerKind>,
    /// Karras sigmas (euler, dpm++2m, lms, heun).
    #[arg(long)]
    karras: bool,
    /// Override the config's timestep spacing: leading, linspace, trailing, or the exponential
    /// sampling of arXiv 2402.10404 exactly as the authors' code makes it:
    /// exponential-early[:lambda], exponential-latter[:lambda] (lambda 60; 0 = the config's own);
    /// exponential-stretched-early/latter[:lambda] stretches it to span t = 999..0.
    #[arg(long)]
    spacing: Option<TimestepSpacing>,
    /// DDIM eta.
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    /// Seed of the torch-compatible generator; random when omitted (recorded in trace.json).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    /// safetensors file with one tensor `latents` [1, C, h, w] (unit-variance noise).
    #[arg(long)]
    init_latents: Option<PathBuf>,
    #[arg(long, default_value = "aggregate")]
    attention: CaptureMode,
    #[arg(long, default_value = "f32")]
    dtype: DTypeChoice,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// The run folder to write (written whole at the end, also for a cancelled run).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out when it holds an earlier run (a folder with other files is never replaced).
    #[arg(long)]
    overwrite: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Validated settings: flags first become this, then objects are built from it.
struct GenerateConfig {
    model: ModelRequest,
    run: RunConfig,
    out: PathBuf,
    quiet: bool,
}

impl GenerateConfig {
    fn from_args(a: GenerateArgs) -> anyhow::Result<Self> {
        let spec = super::model_spec(a.model)?;
        if a.steps == 0 {
            bail!("--steps must be at least 1");
        }
        // Checked before anything is computed.
        check_run_out(&a.out, a.overwrite)?;
        if a.init_latents.as_ref().is_some_and(|p| !p.is_file()) {
            bail!("--init-latents {}: no such file", a.init_latents.unwrap_or_default().display());
        }
        let seed = a.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % (1 << 32))
                .unwrap_or(0)
        });
        Ok(Self {
            model: ModelRequest {
                spec,
                device: a.device,
                dtype: a.dtype,
            },
            run: RunConfig {
                prompt: a.prompt,
                negative_prompt: a.negative_prompt,
                text_options: a.text.options(),
                steps: a.steps,
                guidance: a.guidance,
                sampler: a.scheduler,
                karras: a.karras,
                spacing: a.spacing,
                eta: a.eta,
                seed,
                height: a.height,
                width: a.width,
                init_latents: a.init_latents.map_or(InitLatents::Seed, InitLatents::File),
                embeddings: None,
                attention: a.attention,
            },
            out: a.out,
            quiet: a.quiet,
        })
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let cfg = GenerateConfig::from_args(args)?;
    let worker = Worker::spawn(Box::new(|| {})).context("starting the worker thread")?;
    let interrupt = Interrupt::install(worker.cancel_flag(), "UNet evaluation", "saving what was computed");
    worker.generate(cfg.model.clone(), cfg.run.clone())?;

    let bar = if cfg.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    let t0 = Instant::now();
    let mut run: Option<Run> = None;
    let outcome: Result<(), String>;
    loop {
        let Ok(ev) = worker.events().recv() else {
            outcome = Err("the worker thread stopped unexpectedly".into());
            break;
        };
        if let Event::Started(meta) = &ev {
            if !meta.truncated_words.is_empty() {
                // Printed even with --quiet and without a terminal: it changes the result.
                bar.suspend(|| {
                    eprintln!(
                        "warning: the prompt is longer than the tokenizer's {} tokens; dropped: {}",
                        meta.token_ids.len(),
                        meta.truncated_words.join(" ")
                    )
                });
            }
            bar.set_length(meta.timesteps.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message("");
        }
        let end = match &ev {
            Event::Finished { .. } => Some(Ok(())),
            Event::Cancelled { completed, total, .. } => Some(Err(format!("cancelled after {completed} of {total} steps"))),
            Event::Failed { error, .. } => Some(Err(error.clone())),
            _ => None,
        };
        if matches!(ev, Event::Step(_)) {
            bar.inc(1);
        }
        let rest = match (ev, run.as_mut()) {
            (Event::Started(meta), _) => {
                run = Some(Run::started(*meta));
                None
            }
            (ev, Some(r)) => ev.record_into(r),
            (ev, None) => Some(ev),
        };
        match rest {
            Some(Event::LoadingModel { spec }) => bar.set_message(format!("loading {spec}")),
            Some(Event::ModelLoaded(info)) => {
                if !cfg.quiet {
                    bar.suspend(|| eprintln!("loaded {} in {:.2}s", info.path, info.load_secs));
                }
            }
            Some(Event::Decoding) => bar.set_message("decoding"),
            _ => {}
        }
        if let Some(end) = end {
            outcome = end;
            break;
        }
    }
    bar.finish_and_clear();
    drop(worker);

    // Whatever was computed is saved, also for a cancelled or failed run.
    if let Some(r) = run.as_ref() {
        interrupt
            .writing(|| save_run(r, &cfg.out))
            .with_context(|| format!("writing {}", cfg.out.display()))?;
    }
    match outcome {
        Ok(()) => {
            let r = run.as_ref();
            let n = r.map_or(0, |r| r.steps.len());
            let secs: f64 = r.map_or(0.0, |r| r.meta.step_secs.iter().sum());
            println!(
                "wrote {} ({} steps, {:.2} s sampling, {:.2} steps/s, {:.2} s with the model load)",
                cfg.out.display(),
                n,
                secs,
                n as f64 / secs.max(1e-9),
                t0.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let saved = if run.as_ref().is_some_and(|r| !r.steps.is_empty()) {
                format!(" (partial trace saved to {})", cfg.out.display())
            } else {
                String::new()
            };
            eprintln!("error: {e}{saved}");
            Ok(if interrupt.interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `--out` for a run folder: absent, empty, or an earlier run with `overwrite`; never a folder
/// holding other files.
pub fn check_run_out(out: &std::path::Path, overwrite: bool) -> anyhow::Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {} exists and is not a folder", out.display());
        }
        let non_empty = std::fs::read_dir(&out)
            .with_context(|| format!("reading --out {}", out.display()))?
            .next()
            .is_some();
        if let Some(other) = diffusion_scope::trace::foreign_entry(&out) {
            bail!(
                "--out {} holds {other}, which is not part of a run folder; choose another folder",
                out.display()
            );
        }
        if non_empty && !overwrite {
            bail!(
                "--out {} holds an earlier run; pass --overwrite to replace it (the whole folder is replaced)",
                out.display()
            );
        }
    }
    Ok(())
}
