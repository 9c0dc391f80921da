//! Latent probing and model health from the command line: `interpolate`, `direction`,
//! `ood fit|score|eval` and `health` (see `experiments::{interpolate, direction, ood, health}`),
//! each through the worker with a progress bar and Ctrl-C that keeps what was done.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use diffusion_scope::analysis::probe::{self, PathKind};
use diffusion_scope::experiments::direction::{self, DirectionSettings, PromptPair};
use diffusion_scope::experiments::health::{self, HealthSettings};
use diffusion_scope::experiments::interpolate::{self, Endpoint, InterpolateSettings};
use diffusion_scope::experiments::ood::{self, FitOptions, OodEvalSettings, OodFitSettings, OodReference, OodScoreSettings, ScoreKind};
use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings, Stop};
use diffusion_scope::sampling::{SamplerKind, TimestepSpacing};
use diffusion_scope::trace::{RgbImage, save_png};
use diffusion_scope::types::CaptureMode;
use diffusion_scope::ui::export::{self, Series};

use crate::cli::interrupt::Interrupt;

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?).with_context(|| format!("writing {}", path.display()))
}

fn stopped_code(stopped: Option<Stop>, what: &str) -> anyhow::Result<ExitCode> {
    match stopped {
        None => Ok(ExitCode::SUCCESS),
        Some(Stop::Failed(e)) => bail!("{e} (what finished before it was written)"),
        Some(Stop::Cancelled) => {
            eprintln!("cancelled; the {what} written covers what finished");
            Ok(ExitCode::from(130))
        }
    }
}

/// An animated PNG of `frames` (all one size), `delay_ms` per frame, looping.
pub fn write_apng(frames: &[RgbImage], path: &Path, delay_ms: u16) -> anyhow::Result<()> {
    let first = frames.first().context("no frames")?;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), first.width as u32, first.height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_animated(frames.len() as u32, 0)?;
    enc.set_frame_delay(delay_ms, 1000)?;
    let mut w = enc.write_header()?;
    for f in frames {
        anyhow::ensure!(f.width == first.width && f.height == first.height, "frames of different sizes");
        w.write_image_data(&f.pixels)?;
    }
    w.finish()?;
    Ok(())
}

/// The run flags the generating probes share.
#[derive(Args, Debug)]
pub struct RunFlags {
    #[arg(long, default_value = "")]
    negative_prompt: String,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 5.0)]
    guidance: f32,
    /// ddim, ddpm, euler, euler-a, dpm++2m, pndm, lms, heun; default: the model's own.
    #[arg(long)]
    scheduler: Option<SamplerKind>,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
}

#[derive(Args, Debug)]
pub struct InterpolateArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// The start: a seed (`7` or `seed:7`), an image file (`image:PATH`), a latents file
    /// (`latents:PATH`, [1, C, h, w] unit noise) or a prompt (`prompt:TEXT`, or any other text).
    #[arg(long)]
    from: String,
    /// The end, of the same kind as --from.
    #[arg(long)]
    to: String,
    /// Frames, both ends included.
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Linear interpolation instead of slerp.
    #[arg(long)]
    lerp: bool,
    /// The prompt of a noise interpolation.
    #[arg(long, default_value = "")]
    prompt: String,
    /// The seed of a prompt interpolation's initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: RunFlags,
    /// Milliseconds per frame of the animation.
    #[arg(long, default_value_t = 150)]
    delay_ms: u16,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    #[arg(short, long)]
    quiet: bool,
}

pub fn interpolate(a: InterpolateArgs) -> anyhow::Result<ExitCode> {
    let request = a.target.request()?;
    let settings = InterpolateSettings {
        from: Endpoint::parse(&a.from).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        to: Endpoint::parse(&a.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        frames: a.frames,
        path: if a.lerp { PathKind::Lerp } else { PathKind::Slerp },
        prompt: a.prompt.clone(),
        negative_prompt: a.run.negative_prompt.clone(),
        steps: a.run.steps,
        guidance: a.run.guidance,
        sampler: a.run.scheduler,
        seed: a.seed,
        height: a.run.height,
        width: a.run.width,
        attention: CaptureMode::None,
    };
    let space = settings.validate().map_err(|e| anyhow::anyhow!(e))?;
    if space == interpolate::Space::Noise && settings.prompt.is_empty() {
        eprintln!("note: no --prompt: the frames are generated from the empty prompt");
    }
    crate::cli::prepare_out(&a.out, a.overwrite, "interpolation")?;
    std::fs::create_dir_all(a.out.join("frames"))?;
    let mut frames: Vec<RgbImage> = Vec::new();
    let mut on_item = |ev: ExperimentEvent, interrupt: &Interrupt| -> anyhow::Result<()> {
        let ExperimentEvent::InterpFrame(f) = ev else { return Ok(()) };
        interrupt.writing(|| save_png(&f.image, &a.out.join("frames").join(format!("frame_{:03}.png", f.index))))?;
        frames.push(f.image);
        Ok(())
    };
    let (report, stopped, interrupt) = crate::cli::run_experiment(
        request,
        ExperimentSettings::Interpolate(settings.clone()),
        a.quiet,
        "frames",
        &mut on_item,
    )?;
    let ExperimentReport::Interpolate(report) = report else {
        bail!("the worker answered with another experiment's report");
    };
    interrupt.writing(|| -> anyhow::Result<()> {
        write_json(&a.out.join("report.json"), &report)?;
        if !frames.is_empty() {
            let labelled: Vec<(RgbImage, String)> = frames
                .iter()
                .zip(&report.frames)
                .map(|(img, f)| (img.clone(), format!("{:.2}", f.t)))
                .collect();
            let title = format!(
                "{} -> {} ({})",
                settings.from.describe(),
                settings.to.describe(),
                report.path_used.as_str()
            );
            export::strip(&labelled, 96, &title).save(a.out.join("strip.png"))?;
            write_apng(&frames, &a.out.join("interpolation.apng"), a.delay_ms)?;
            let mut series = vec![
                Series {
                    label: "slerp".into(),
                    points: report.slerp_start_rms.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect(),
                },
                Series {
                    label: "lerp".into(),
                    points: report.lerp_start_rms.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect(),
                },
            ];
            export::plot("Start vector RMS along the path", "frame", "RMS", &series, false).save(a.out.join("start_norm.png"))?;
            series.clear();
            if let Some(s) = &report.image_smoothness {
                series.push(Series {
                    label: "image".into(),
                    points: s.steps.iter().enumerate().map(|(i, &v)| (i as f64 + 0.5, v)).collect(),
                });
            }
            if let Some(s) = &report.latent_smoothness {
                series.push(Series {
                    label: "final latents".into(),
                    points: s.steps.iter().enumerate().map(|(i, &v)| (i as f64 + 0.5, v)).collect(),
                });
            }
            export::plot("RMS distance between consecutive frames", "frame", "RMS", &series, false).save(a.out.join("smoothness.png"))?;
        }
        Ok(())
    })?;
    print!("{}", interpolate::render_report(&report));
    println!("wrote {} (strip.png, interpolation.apng, frames/, report.json)", a.out.display());
    stopped_code(stopped, "frames")
}

#[derive(Args, Debug)]
pub struct DirectionArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// The prompt the direction is applied to (repeat for several).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// A file of pairs, one a line: `SOURCE -> TARGET`.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pairs: Option<PathBuf>,
    /// One pair's source prompt (with --to).
    #[arg(long, requires = "to")]
    from: Option<String>,
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Alpha values: LO..HI:N or a list.
    #[arg(long, default_value = "-2..2:9", allow_hyphen_values = true)]
    alpha: String,
    /// Seeds: a range A..B (inclusive) or a list.
    #[arg(long, default_value = "0")]
    seeds: String,
    #[command(flatten)]
    run: RunFlags,
    /// Read the images with the shapes world's detector (on by default for the bundled model).
    #[arg(long)]
    detect: Option<bool>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    #[arg(short, long)]
    quiet: bool,
}

pub fn direction(a: DirectionArgs) -> anyhow::Result<ExitCode> {
    let request = a.target.request()?;
    let pairs = match (&a.pairs, &a.from, &a.to) {
        (Some(file), _, _) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading --pairs {}", file.display()))?;
            direction::parse_pairs(&text).map_err(|e| anyhow::anyhow!("--pairs {}: {e}", file.display()))?
        }
        (None, Some(f), Some(t)) => vec![PromptPair {
            source: f.clone(),
            target: t.clone(),
        }],
        _ => bail!("give the direction: --from TEXT --to TEXT, or --pairs FILE"),
    };
    let bundled = a.target.is_bundled();
    let settings = DirectionSettings {
        prompts: a.prompt.clone(),
        pairs,
        alphas: probe::parse_range(&a.alpha).map_err(|e| anyhow::anyhow!("--alpha: {e}"))?,
        seeds: diffusion_scope::experiments::sweep::parse_seeds(&a.seeds).map_err(|e| anyhow::anyhow!("--seeds: {e}"))?,
        negative_prompt: a.run.negative_prompt.clone(),
        steps: a.run.steps,
        guidance: a.run.guidance,
        sampler: a.run.scheduler,
        height: a.run.height,
        width: a.run.width,
        attention: CaptureMode::None,
        detect: a.detect.unwrap_or(bundled),
    };
    settings.validate().map_err(|e| anyhow::anyhow!(e))?;
    crate::cli::prepare_out(&a.out, a.overwrite, "direction sweep")?;
    std::fs::create_dir_all(a.out.join("images"))?;
    let (np, ns, na) = (settings.prompts.len(), settings.seeds.len(), settings.alphas.len());
    let mut grid: Vec<Vec<Option<RgbImage>>> = vec![vec![None; na]; np * ns];
    let mut on_item = |ev: ExperimentEvent, interrupt: &Interrupt| -> anyhow::Result<()> {
        let ExperimentEvent::DirectionImage(d) = ev else { return Ok(()) };
        let name = format!("p{}_seed{}_alpha{:+.3}.png", d.prompt_index, settings.seeds[d.seed_index], d.alpha);
        interrupt.writing(|| save_png(&d.image, &a.out.join("images").join(name)))?;
        grid[d.prompt_index * ns + d.seed_index][d.alpha_index] = Some(d.image);
        Ok(())
    };
    let (report, stopped, interrupt) = crate::cli::run_experiment(
        request,
        ExperimentSettings::Direction(settings.clone()),
        a.quiet,
        "images",
        &mut on_item,
    )?;
    let ExperimentReport::Direction(report) = report else {
        bail!("the worker answered with another experiment's report");
    };
    interrupt.writing(|| -> anyhow::Result<()> {
        write_json(&a.out.join("report.json"), &report)?;
        let rows: Vec<(String, String, Vec<RgbImage>)> = grid
            .iter()
            .enumerate()
            .filter(|(_, r)| r.iter().all(Option::is_some))
            .map(|(i, r)| {
                let (p, s) = (i / ns, i % ns);
                (
                    format!("seed {}", settings.seeds[s]),
                    settings.prompts[p].clone(),
                    r.iter().flatten().cloned().collect(),
                )
            })
            .collect();
        if !rows.is_empty() {
            let cols: Vec<String> = settings.alphas.iter().map(|a| format!("alpha {a:+.2}")).collect();
            let p = &settings.pairs[0];
            let title = format!(
                "direction \"{}\" -> \"{}\"{}",
                p.source,
                p.target,
                if settings.pairs.len() > 1 {
                    format!(" (+{} pairs)", settings.pairs.len() - 1)
                } else {
                    String::new()
                }
            );
            export::grid(&rows, &cols, 96, &title).save(a.out.join("grid.png"))?;
        }
        if settings.detect && !report.rows.is_empty() {
            let mut colours: Vec<String> = report.rows.iter().flat_map(|r| r.colours.keys().cloned()).collect();
            colours.sort();
            colours.dedup();
            let mut series: Vec<Series> = colours
                .iter()
                .map(|c| Series {
                    label: c.clone(),
                    points: report
                        .rows
                        .iter()
                        .map(|r| (r.alpha, r.colours.get(c).copied().unwrap_or(0.0)))
                        .collect(),
                })
                .collect();
            series.push(Series {
                label: "same shape".into(),
                points: report.rows.iter().filter_map(|r| Some((r.alpha, r.same_shape?))).collect(),
            });
            let mut rgb: Vec<[u8; 3]> = colours
                .iter()
                .map(|c| diffusion_scope::world::Colour::from_name(c).map_or([0, 0, 0], |c| c.rgb()))
                .collect();
            rgb.push([120, 120, 120]);
            export::plot_coloured("Detector readings vs alpha", "alpha", "fraction of images", &series, false, &rgb)
                .save(a.out.join("readings.png"))?;
        }
        Ok(())
    })?;
    print!("{}", direction::render_report(&report));
    println!("wrote {} (grid.png, images/, report.json)", a.out.display());
    stopped_code(stopped, "images")
}

#[derive(Args, Debug)]
pub struct OodArgs {
    #[command(subcommand)]
    command: OodCommand,
}

#[derive(Subcommand, Debug)]
enum OodCommand {
    /// Fit a reference on a folder of images (their VAE latents) and calibrate the thresholds.
    Fit(OodFitArgs),
    /// Score images against a reference.
    Score(OodScoreArgs),
    /// Measure the scores on the shapes world: AUROC of held-out renders against sets the
    /// world can make, and the model's own generations.
    Eval(OodEvalArgs),
}

#[derive(Args, Debug)]
struct OodFitArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// A folder of images (png, jpg), or a single image (repeat --images for several).
    #[arg(long, required = true)]
    images: Vec<PathBuf>,
    /// The reference file to write (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The false-positive rate the thresholds are calibrated to on the held-out images.
    #[arg(long, default_value_t = 0.05)]
    fpr: f64,
    /// Every Nth image is held out of the fit to calibrate the thresholds.
    #[arg(long, default_value_t = 5)]
    holdout_every: usize,
    /// The full-covariance score pools latents to C x P x P.
    #[arg(long, default_value_t = 4)]
    pool: usize,
    /// The patch score's patch side (latent cells).
    #[arg(long, default_value_t = 3)]
    patch: usize,
    /// The patch score keeps at most this many reference patches.
    #[arg(long, default_value_t = 16384)]
    bank: usize,
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct OodScoreArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// The reference file (from `ood fit`).
    #[arg(long, alias = "ref")]
    reference: PathBuf,
    /// A folder of images, or image files.
    #[arg(long, required = true)]
    images: Vec<PathBuf>,
    /// Which score decides: diag (per-dimension), pooled (full covariance) or patch (nearest
    /// reference latent patch).
    #[arg(long, default_value = "diag")]
    score: ScoreKind,
    /// Write the scores as JSON (file name -> score, and the threshold).
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct OodEvalArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// Training renders the reference is fitted on (a fifth held out for the thresholds).
    #[arg(long, default_value_t = 1000)]
    reference: usize,
    /// Images per evaluated set.
    #[arg(long, default_value_t = 200)]
    per_set: usize,
    /// The model's own generations, scored as a set.
    #[arg(long, default_value_t = 100)]
    generations: usize,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 5.0)]
    guidance: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write a few images of each set here (to look at them).
    #[arg(long)]
    examples: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
}

pub fn ood(a: OodArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        OodCommand::Fit(a) => {
            let request = a.target.request()?;
            let settings = OodFitSettings {
                images: ood::image_files(&a.images).map_err(|e| anyhow::anyhow!("--images: {e}"))?,
                options: FitOptions {
                    fpr: a.fpr,
                    holdout_every: a.holdout_every,
                    pool: a.pool,
                    patch: a.patch,
                    bank: a.bank,
                },
            };
            settings.options.validate().map_err(|e| anyhow::anyhow!(e))?;
            let (report, stopped, _) =
                crate::cli::run_experiment(request, ExperimentSettings::OodFit(settings), a.quiet, "images", &mut |_, _| Ok(()))?;
            let ExperimentReport::OodFit(report) = report else {
                bail!("the worker answered with another experiment's report");
            };
            for (name, why) in &report.skipped {
                eprintln!("skipped {name}: {why}");
            }
            if report.resized > 0 {
                eprintln!(
                    "{} images were not the model's size: centre-cropped and resized (Lanczos3)",
                    report.resized
                );
            }
            let Some(r) = &report.reference else {
                return stopped_code(stopped, "reference").and_then(|_| bail!("no reference was fitted"));
            };
            r.write(&a.out).map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "fitted on {} images ({} held out); thresholds at {:.0}% false positives: diag {:.3}, pooled {:.3}, patch {:.3}",
                r.diag.count + r.held_out_diag.len(),
                r.held_out_diag.len(),
                100.0 * r.fpr,
                r.threshold.diag,
                r.threshold.pooled,
                r.threshold.patch
            );
            println!("wrote {}", a.out.display());
            stopped_code(stopped, "reference")
        }
        OodCommand::Score(a) => {
            let request = a.target.request()?;
            let reference = OodReference::read(&a.reference).map_err(|e| anyhow::anyhow!("--reference: {e}"))?;
            let settings = OodScoreSettings {
                reference: Box::new(reference),
                images: ood::image_files(&a.images).map_err(|e| anyhow::anyhow!("--images: {e}"))?,
            };
            let (report, stopped, _) =
                crate::cli::run_experiment(request, ExperimentSettings::OodScore(settings), a.quiet, "images", &mut |_, _| {
                    Ok(())
                })?;
            let ExperimentReport::OodScore(report) = report else {
                bail!("the worker answered with another experiment's report");
            };
            let threshold = report.threshold.get(a.score);
            let mut flagged = 0;
            for s in &report.scores {
                let v = s.score.get(a.score);
                flagged += usize::from(v > threshold);
                println!(
                    "{:<40} {:>10.3}  {}{}",
                    s.name,
                    v,
                    if v > threshold { "OOD" } else { "in distribution" },
                    s.resized_from.map_or(String::new(), |(w, h)| format!("  (resized from {w}x{h})"))
                );
            }
            for (name, why) in &report.skipped {
                eprintln!("skipped {name}: {why}");
            }
            println!(
                "{flagged} of {} above the {} threshold {threshold:.3}",
                report.scores.len(),
                a.score.name()
            );
            if let Some(path) = &a.json {
                let scores: serde_json::Map<String, serde_json::Value> = report
                    .scores
                    .iter()
                    .map(|s| (s.name.clone(), s.score.get(a.score).into()))
                    .collect();
                let all: serde_json::Map<String, serde_json::Value> = ScoreKind::ALL
                    .iter()
                    .map(|&k| {
                        let per: serde_json::Map<String, serde_json::Value> =
                            report.scores.iter().map(|s| (s.name.clone(), s.score.get(k).into())).collect();
                        (
                            k.name().to_owned(),
                            serde_json::json!({"threshold": report.threshold.get(k), "scores": per}),
                        )
                    })
                    .collect();
                let json = serde_json::json!({
                    "score": a.score,
                    "threshold": threshold,
                    "scores": scores,
                    "all_scores": all,
                    "resized": report.scores.iter().filter(|s| s.resized_from.is_some()).map(|s| s.name.clone()).collect::<Vec<_>>(),
                    "skipped": report.skipped,
                });
                write_json(path, &json)?;
                println!("wrote {}", path.display());
            }
            stopped_code(stopped, "scores")
        }
        OodCommand::Eval(a) => {
            let request = a.target.request()?;
            let settings = OodEvalSettings {
                reference: a.reference,
                per_set: a.per_set,
                generations: a.generations,
                steps: a.steps,
                guidance: a.guidance,
                seed: a.seed,
                options: FitOptions::default(),
            };
            if let Some(dir) = &a.examples {
                std::fs::create_dir_all(dir)?;
                let side = 64;
                for set in diffusion_scope::world::ood::OodSet::ALL {
                    for i in 0..4u64 {
                        let img = RgbImage {
                            width: side,
                            height: side,
                            pixels: diffusion_scope::world::ood::ood_image(set, side, a.seed + 2, i),
                        };
                        save_png(&img, &dir.join(format!("{}_{i}.png", set.name())))?;
                    }
                }
            }
            let (report, stopped, _) = crate::cli::run_experiment(
                request,
                ExperimentSettings::OodEval(settings),
                a.quiet,
                "images",
                &mut |_, _| Ok(()),
            )?;
            let ExperimentReport::OodEval(report) = report else {
                bail!("the worker answered with another experiment's report");
            };
            print!("{}", ood::render_eval(&report));
            if let Some(path) = &a.json {
                write_json(path, &report)?;
                println!("wrote {}", path.display());
            }
            stopped_code(stopped, "report")
        }
    }
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// The prompt of the fixed conditioning.
    #[arg(long, default_value = "")]
    prompt: String,
    /// The fixed inputs: each seed's unit-noise latents.
    #[arg(long, default_value = "0,1")]
    seeds: String,
    /// Timesteps in the sweep over 0..T-1.
    #[arg(long, default_value_t = 41)]
    points: usize,
    /// Skip the zeroed-time-embedding control.
    #[arg(long)]
    no_control: bool,
    /// The sampler checked against the training schedule (default: the model's own).
    #[arg(long)]
    scheduler: Option<SamplerKind>,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long)]
    karras: bool,
    /// leading, trailing, linspace, exponential-early:L, ...
    #[arg(long)]
    spacing: Option<TimestepSpacing>,
    /// The sampler's scheduler_config.json, when it is not the model's own.
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    #[arg(short, long)]
    quiet: bool,
}

pub fn health(a: HealthArgs) -> anyhow::Result<ExitCode> {
    let request = a.target.request()?;
    let settings = HealthSettings {
        prompt: a.prompt.clone(),
        seeds: diffusion_scope::experiments::sweep::parse_seeds(&a.seeds).map_err(|e| anyhow::anyhow!("--seeds: {e}"))?,
        points: a.points,
        zeroed_control: !a.no_control,
        sampler: a.scheduler,
        steps: a.steps,
        karras: a.karras,
        spacing: a.spacing,
        scheduler_config: a.scheduler_config.clone(),
    };
    crate::cli::prepare_out(&a.out, a.overwrite, "health check")?;
    let (report, stopped, _) = crate::cli::run_experiment(
        request,
        ExperimentSettings::Health(settings),
        a.quiet,
        "evaluations",
        &mut |_, _| Ok(()),
    )?;
    let ExperimentReport::Health(report) = report else {
        bail!("the worker answered with another experiment's report");
    };
    write_json(&a.out.join("report.json"), &report)?;
    for (file, fig) in export::health_figures(&report) {
        fig.save(a.out.join(file))?;
    }
    print!("{}", health::render_report(&report));
    println!("wrote {} (report.json, time_response.png, schedule.png)", a.out.display());
    stopped_code(stopped, "report")
}
