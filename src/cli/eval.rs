//! `diffusion-scope eval`: generates from held-out shapes-world captions, judges the images with
//! the world's detector and scores the cross-attention of every object word against the
//! object's mask (the experiment `diffusion_scope::experiments::shapes_eval`, run by the
//! worker as the app runs it). Prints the summary; with `--out` also writes `report.json`,
//! `summary.txt`, every image (as it is made) and a contact sheet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use diffusion_scope::analysis::saliency::StructureTerm;
use diffusion_scope::experiments::saliency::{RiseCompare, RiseSettings};
use diffusion_scope::experiments::saliency_eval::{SaliencyEvalSettings, render_table};
use diffusion_scope::experiments::shapes_eval::{CaseResult, EvalSettings, render_summary};
use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings, Stop};
use diffusion_scope::sampling::{SamplerKind, TimestepSpacing};
use diffusion_scope::trace::{RgbImage, save_png, save_run};

use crate::cli::interrupt::Interrupt;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// Number of held-out captions, cycling through the five caption templates.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Shuffles the held-out captions.
    #[arg(long, default_value_t = 0)]
    caption_seed: u64,
    /// Generation seed of the first caption (caption i uses seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 5.0)]
    guidance: f32,
    /// Sampler; default: the model's own scheduler.
    #[arg(long)]
    scheduler: Option<SamplerKind>,
    /// Timestep spacing override, e.g. exponential-early:30 / exponential-latter:30 (arXiv
    /// 2402.10404's stages).
    #[arg(long)]
    spacing: Option<TimestepSpacing>,
    /// Instead: score DF-RISE, DF-CAM and token attention against the exact object masks at
    /// every step of a DDIM schedule on rendered scenes (pointing, IoU, insertion / deletion AUC).
    #[arg(long)]
    saliency: bool,
    /// With --saliency: DF-RISE masks per step.
    #[arg(long, default_value_t = 500)]
    masks: usize,
    /// With --saliency: inputs per UNet call (0: from the free memory, at most 64).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// With --saliency: stages of the insertion and deletion games.
    #[arg(long, default_value_t = 16)]
    auc_points: usize,
    /// With --saliency: DF-RISE's comparison (next-latents, the authors'; or output).
    #[arg(long, default_value = "next-latents")]
    compare: RiseCompare,
    /// With --saliency: the SSIM structure term (authors or standard).
    #[arg(long, default_value = "authors")]
    structure: StructureTerm,
    /// Threshold (fraction of the min-max range) of the attention map for the IoU (DAAM: 0.4).
    #[arg(long, default_value_t = diffusion_scope::analysis::pointing::DEFAULT_THRESHOLD)]
    threshold: f32,
    /// Folder for report.json, summary.txt, images/ and contact_sheet.png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also save every run as a trace folder (out/traces/NNN; open them in the app).
    #[arg(long, requires = "out")]
    save_traces: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.count > 0, "--count must be at least 1");
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(
        a.threshold > 0.0 && a.threshold < 1.0,
        "--threshold must be between 0 and 1 (exclusive)"
    );
    let request = a.target.request()?;
    if a.saliency {
        return run_saliency(a, request);
    }
    let settings = EvalSettings {
        count: a.count,
        caption_seed: a.caption_seed,
        seed: a.seed,
        steps: a.steps,
        guidance: a.guidance,
        sampler: a.scheduler,
        spacing: a.spacing,
        threshold: a.threshold,
    };
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out.join("images")).with_context(|| format!("creating {}", out.display()))?;
    }
    let mut images: Vec<RgbImage> = Vec::new();
    let mut on_case = |ev: ExperimentEvent, interrupt: &Interrupt| -> anyhow::Result<()> {
        let ExperimentEvent::ShapesEvalCase(c) = ev else { return Ok(()) };
        let i = c.case.index;
        if let Some(out) = &a.out {
            interrupt.writing(|| -> anyhow::Result<()> {
                save_png(
                    c.run.image.as_ref().context("a finished case has an image")?,
                    &out.join("images").join(format!("{i:03}.png")),
                )?;
                save_png(&c.scene, &out.join("images").join(format!("{i:03}_scene.png")))
                    .with_context(|| format!("writing the scene of caption {i}"))?;
                if a.save_traces {
                    let dir = out.join("traces").join(format!("{i:03}"));
                    save_run(&c.run, &dir).with_context(|| format!("writing {}", dir.display()))?;
                }
                Ok(())
            })?;
        }
        if let Some(img) = c.run.image {
            images.push(img);
        }
        Ok(())
    };
    let (report, stopped, interrupt) =
        super::run_experiment(request, ExperimentSettings::ShapesEval(settings), a.quiet, "captions", &mut on_case)?;
    let ExperimentReport::ShapesEval(report) = report else {
        anyhow::bail!("the worker answered with another experiment's report");
    };

    let text = render_summary(&report);
    print!("{text}");
    if let Some(out) = &a.out {
        interrupt.writing(|| -> anyhow::Result<()> {
            let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
            std::fs::write(out.join("report.json"), json).with_context(|| format!("writing {}", out.display()))?;
            std::fs::write(out.join("summary.txt"), &text).with_context(|| format!("writing {}", out.display()))?;
            if !images.is_empty() {
                let sheet = contact_sheet(&images, &report.cases);
                sheet
                    .save(out.join("contact_sheet.png"))
                    .with_context(|| format!("writing {}", out.join("contact_sheet.png").display()))?;
            }
            Ok(())
        })?;
        println!("wrote {}", out.display());
    }
    match stopped {
        None => {}
        Some(Stop::Failed(e)) => anyhow::bail!("{e}"),
        Some(Stop::Cancelled) => {
            eprintln!(
                "cancelled after {} of {} captions (the summary covers those)",
                report.cases.len(),
                report.settings.count
            );
            return Ok(ExitCode::from(130));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `eval --saliency`: the faithfulness table of `experiments::saliency_eval`.
fn run_saliency(a: EvalArgs, request: diffusion_scope::engine::ModelRequest) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.scheduler.is_none_or(|s| s == SamplerKind::Ddim) && a.spacing.is_none(),
        "--saliency scores every step of a DDIM schedule on noised scenes; --scheduler and --spacing do not apply"
    );
    anyhow::ensure!(a.masks > 0 && a.auc_points > 0, "--masks and --auc-points must be at least 1");
    let settings = SaliencyEvalSettings {
        count: a.count,
        caption_seed: a.caption_seed,
        seed: a.seed,
        steps: a.steps,
        guidance: a.guidance,
        rise: RiseSettings {
            masks: a.masks,
            batch: a.batch,
            compare: a.compare,
            structure: a.structure,
            ..RiseSettings::default()
        },
        auc_points: a.auc_points,
        threshold: a.threshold,
    };
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let (report, stopped, interrupt) = super::run_experiment(
        request,
        ExperimentSettings::SaliencyEval(settings),
        a.quiet,
        "captions",
        &mut |_, _| Ok(()),
    )?;
    let ExperimentReport::SaliencyEval(report) = report else {
        anyhow::bail!("the worker answered with another experiment's report");
    };
    let text = render_table(&report);
    print!("{text}");
    println!(
        "{:.1} s per caption ({} steps, {} inputs per UNet call)",
        report.secs_per_caption, report.settings.steps, report.batch
    );
    if let Some(out) = &a.out {
        interrupt.writing(|| -> anyhow::Result<()> {
            let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
            std::fs::write(out.join("report.json"), json).with_context(|| format!("writing {}", out.display()))?;
            std::fs::write(out.join("summary.txt"), &text).with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        })?;
        println!("wrote {}", out.display());
    }
    match stopped {
        None => Ok(ExitCode::SUCCESS),
        Some(Stop::Failed(e)) => anyhow::bail!("{e}"),
        Some(Stop::Cancelled) => {
            eprintln!("cancelled after {} captions (the table covers those)", report.cases.len());
            Ok(ExitCode::from(130))
        }
    }
}

/// All images in rows of 10, each framed green (every stated attribute right, no extra object)
/// or red.
fn contact_sheet(images: &[RgbImage], cases: &[CaseResult]) -> image::RgbImage {
    const COLS: usize = 10;
    const PAD: usize = 3;
    let (w, h) = (images[0].width, images[0].height);
    let rows = images.len().div_ceil(COLS);
    let cols = images.len().min(COLS);
    let mut sheet = image::RgbImage::from_pixel(
        (cols * (w + 2 * PAD)) as u32,
        (rows * (h + 2 * PAD)) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (i, (img, case)) in images.iter().zip(cases).enumerate() {
        let (x0, y0) = ((i % COLS) * (w + 2 * PAD), (i / COLS) * (h + 2 * PAD));
        let frame = if case.judgement.strict_correct() {
            [40, 170, 60]
        } else {
            [210, 40, 40]
        };
        for y in 0..h + 2 * PAD {
            for x in 0..w + 2 * PAD {
                let inside = (PAD..PAD + w).contains(&x) && (PAD..PAD + h).contains(&y) && img.width == w && img.height == h;
                let px = if inside {
                    let k = ((y - PAD) * w + (x - PAD)) * 3;
                    [img.pixels[k], img.pixels[k + 1], img.pixels[k + 2]]
                } else if x < 2 || y < 2 || x >= w + 2 * PAD - 2 || y >= h + 2 * PAD - 2 {
                    frame
                } else {
                    [255, 255, 255]
                };
                sheet.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
            }
        }
    }
    sheet
}
