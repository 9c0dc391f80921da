//! `diffusion-scope saliency`: a generation with DF-RISE and/or DF-CAM maps (arXiv
//! 2402.10404) at chosen steps, through the worker (`experiments::saliency`). Writes the run
//! folder with the maps in its trace (`rise`, `cam.<block>`, `cam.all`: [N, h, w], a NaN row
//! for a step not computed) and, with `--figures`, one heatmap figure per step and map.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use diffusion_scope::analysis::colormap::Colormap;
use diffusion_scope::analysis::saliency::StructureTerm;
use diffusion_scope::experiments::saliency::{CAM_ALL, CamSettings, RiseCompare, RiseSettings, SaliencySettings};
use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings, Stop};
use diffusion_scope::sampling::{SamplerKind, TimestepSpacing};
use diffusion_scope::trace::{Run, save_run};
use diffusion_scope::types::CaptureMode;
use diffusion_scope::ui::export::{self, FigureLabels, Overlay};

#[derive(Args, Debug)]
pub struct SaliencyArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    #[command(flatten)]
    text: crate::cli::TextArgs,
    /// rise, cam, or both (rise,cam).
    #[arg(long, default_value = "rise")]
    method: String,
    /// Steps to compute the maps at: all, or 1-based step numbers (e.g. 1,10,20 or 5..8).
    #[arg(long, default_value = "all")]
    steps_at: String,
    /// DF-RISE masks per step (the authors: 500).
    #[arg(long, default_value_t = 500)]
    masks: usize,
    /// DF-RISE masks per UNet call; 0: as many as a quarter of the free memory holds (<= 64).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Seed of the masks (NumPy RandomState).
    #[arg(long, default_value_t = 0)]
    mask_seed: u32,
    /// Probability that a mask keeps a latent pixel.
    #[arg(long, default_value_t = 0.5)]
    keep: f64,
    /// What DF-RISE scores a masked output against: next-latents (the authors' code: the
    /// unperturbed step's x_{t-1}) or output (the unperturbed model output).
    #[arg(long, default_value = "next-latents")]
    compare: RiseCompare,
    /// SSIM structure term: authors ((2 σxy + C3) / (σx σy + C3), their ssim.py) or standard.
    #[arg(long, default_value = "authors")]
    structure: StructureTerm,
    /// DF-CAM blocks, comma-separated diffusers paths (mid_block.resnets.0, up_blocks.1.attentions.0,
    /// ...) and/or `all` (the authors' 43-block sum).
    #[arg(long, default_value = "mid_block.resnets.0")]
    layer: String,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// ddim, ddpm, euler, euler-a, dpm++2m, pndm, lms, heun; default: the model's own scheduler.
    #[arg(long)]
    scheduler: Option<SamplerKind>,
    /// leading, linspace, trailing, exponential-early[:lambda], exponential-latter[:lambda], ...
    #[arg(long)]
    spacing: Option<TimestepSpacing>,
    #[arg(long)]
    karras: bool,
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    /// safetensors file with one tensor `latents` [1, C, h, w] (unit-variance noise).
    #[arg(long)]
    init_latents: Option<PathBuf>,
    #[arg(long, default_value = "aggregate")]
    attention: CaptureMode,
    /// The run folder to write (the trace holds the maps).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    /// Also write a heatmap figure (PNG) per step and map into this folder.
    #[arg(long)]
    figures: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
}

/// "all" → None; "1,5..7" (1-based) → 0-based indices.
fn parse_steps_at(text: &str, steps: usize) -> anyhow::Result<Option<Vec<usize>>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once("..") {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |v: &str| -> anyhow::Result<usize> {
            let n: usize = v.parse().with_context(|| format!("--steps-at: {v:?} is not a step number"))?;
            if n == 0 || n > steps {
                bail!("--steps-at: step {n} is outside 1..{steps}");
            }
            Ok(n - 1)
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if b < a {
            bail!("--steps-at: {part} is an empty range");
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        bail!("--steps-at: no steps given (all, or step numbers like 1,10,20)");
    }
    Ok(Some(out))
}

pub fn run(a: SaliencyArgs) -> anyhow::Result<ExitCode> {
    let request = a.target.request()?;
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let methods: Vec<String> = a.method.split(',').map(|m| m.trim().to_ascii_lowercase()).collect();
    if let Some(m) = methods.iter().find(|m| *m != "rise" && *m != "cam") {
        bail!("--method: unknown method {m:?}; valid: rise, cam (or both: rise,cam)");
    }
    let blocks: Vec<String> = a.layer.split(',').map(|b| b.trim().to_owned()).filter(|b| !b.is_empty()).collect();
    if a.init_latents.as_ref().is_some_and(|p| !p.is_file()) {
        bail!(
            "--init-latents {}: no such file",
            a.init_latents.clone().unwrap_or_default().display()
        );
    }
    crate::cli::generate::check_run_out(&a.out, a.overwrite)?;
    let settings = SaliencySettings {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        text_options: a.text.options(),
        seed: a.seed,
        steps: a.steps,
        guidance: a.guidance,
        sampler: a.scheduler,
        spacing: a.spacing,
        karras: a.karras,
        eta: a.eta,
        height: a.height,
        width: a.width,
        init_latents: a.init_latents.clone(),
        attention: a.attention,
        steps_at: parse_steps_at(&a.steps_at, a.steps)?,
        stop_after_last: false,
        rise: methods.iter().any(|m| m == "rise").then(|| RiseSettings {
            masks: a.masks,
            batch: a.batch,
            mask_seed: a.mask_seed,
            keep: a.keep,
            compare: a.compare,
            structure: a.structure,
        }),
        cam: methods.iter().any(|m| m == "cam").then(|| CamSettings { blocks: blocks.clone() }),
    };
    let mut run: Option<Run> = None;
    let mut on_item = |ev: ExperimentEvent, _: &crate::cli::interrupt::Interrupt| -> anyhow::Result<()> {
        if let ExperimentEvent::SaliencyRun(r) = ev {
            run = Some(*r);
        }
        Ok(())
    };
    let (report, stopped, interrupt) =
        crate::cli::run_experiment(request, ExperimentSettings::Saliency(settings), a.quiet, "passes", &mut on_item)?;
    let ExperimentReport::Saliency(report) = report else {
        bail!("the worker answered with another experiment's report");
    };
    let run = run.context("the saliency experiment sent no run")?;
    interrupt.writing(|| -> anyhow::Result<()> {
        save_run(&run, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
        if let Some(dir) = &a.figures {
            write_figures(&run, dir)?;
        }
        Ok(())
    })?;
    let steps: Vec<String> = report.steps_done.iter().map(|i| (i + 1).to_string()).collect();
    if steps.is_empty() {
        println!("no saliency map was finished (of {} steps)", a.steps);
    } else {
        println!("saliency at step(s) {} of {}", steps.join(", "), a.steps);
    }
    if let Some(s) = report.rise_secs_per_step {
        println!(
            "DF-RISE: {s:.2} s per step ({} masks, {} per UNet call)",
            a.masks, report.rise_batch
        );
    }
    if let Some(s) = report.cam_secs_per_step {
        let n = report.cam_blocks.len();
        let all = if blocks.iter().any(|b| b == CAM_ALL) { " (all)" } else { "" };
        println!("DF-CAM: {s:.2} s per step ({n} block(s){all}, one forward and one backward pass)");
    }
    println!("wrote {}", a.out.display());
    match stopped {
        None => Ok(ExitCode::SUCCESS),
        Some(Stop::Failed(e)) => bail!("{e} (the run folder holds the steps before it)"),
        Some(Stop::Cancelled) => {
            eprintln!("cancelled (the run folder holds the steps done, with their maps)");
            Ok(ExitCode::from(130))
        }
    }
}

/// One figure per step and map: the step's predicted image under the map.
fn write_figures(run: &Run, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = run.image.clone().unwrap_or_else(|| diffusion_scope::trace::RgbImage {
        width: run.meta.width,
        height: run.meta.height,
        pixels: vec![0; run.meta.width * run.meta.height * 3],
    });
    for step in &run.steps {
        for m in &step.saliency {
            let overlay = Overlay {
                values: &m.data,
                height: m.height,
                width: m.width,
                vmin: 0.0,
                vmax: 1.0,
                opacity: 0.6,
                colormap: Colormap::Inferno,
            };
            let method = if m.key == "rise" {
                "DF-RISE".to_string()
            } else {
                format!("DF-CAM {}", &m.key[4..])
            };
            let labels = FigureLabels {
                title: format!("{method} — \"{}\"", run.meta.prompt),
                subtitle: format!("step {} of {}, t = {}", step.index + 1, run.meta.steps, step.timestep),
                quantity: "saliency".into(),
            };
            let fig = export::heatmap_figure(&base, &overlay, &labels, 384);
            let path = dir.join(format!("step{:03}_{}.png", step.index + 1, m.key));
            fig.save(&path).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
