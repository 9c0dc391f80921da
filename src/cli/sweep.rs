//! `diffusion-scope sweep`: the guidance sweep (see `experiments::sweep`) through the worker,
//! with its files: `grid.png` (rows = guidance, columns = seeds), with `--snapshots`
//! `snapshots.png` (the first seed: x0 and x_t at 0, 1/4, 1/2, 3/4 and 1 of the run per w),
//! `report.json`, `report.csv`, plots (`diversity_vs_guidance.png`,
//! `saturation_vs_guidance.png`, and with `--captions` `accuracy_vs_guidance.png`), and every
//! image in `images/` as soon as it is made.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use diffusion_scope::experiments::sweep::{self, Snapshot, SweepReport, SweepSettings};
use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings, Stop};
use diffusion_scope::sampling::SamplerKind;
use diffusion_scope::trace::{RgbImage, save_png, save_run};
use diffusion_scope::ui::export::{self, Series};

use crate::cli::interrupt::Interrupt;

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Guidance scales, comma-separated.
    #[arg(long, default_value = "1,3,5,7.5,10,15")]
    guidance: String,
    /// Seeds: a range A..B (inclusive) or a list; the same at every guidance.
    #[arg(long, default_value = "0..7")]
    seeds: String,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// ddim, ddpm, euler, euler-a, dpm++2m, pndm, lms, heun; default: the model's own.
    #[arg(long)]
    scheduler: Option<SamplerKind>,
    /// Held-out shapes-world captions per guidance, judged by the world's detector.
    #[arg(long, default_value_t = 0)]
    captions: usize,
    #[arg(long, default_value_t = 0)]
    caption_seed: u64,
    /// Also decode x0 and x_t at 0, 1/4, 1/2, 3/4 and 1 of every run.
    #[arg(long)]
    snapshots: bool,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    /// The output folder (new or empty; an earlier output only with --overwrite).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    /// Also write every run's trace (traces/w<W>_seed<S>/).
    #[arg(long)]
    save_traces: bool,
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: SweepArgs) -> anyhow::Result<ExitCode> {
    let request = a.target.request()?;
    let settings = SweepSettings {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        guidances: sweep::parse_guidances(&a.guidance).map_err(|e| anyhow::anyhow!("--guidance: {e}"))?,
        seeds: sweep::parse_seeds(&a.seeds).map_err(|e| anyhow::anyhow!("--seeds: {e}"))?,
        steps: a.steps,
        sampler: a.scheduler,
        captions: a.captions,
        caption_seed: a.caption_seed,
        snapshots: a.snapshots,
        height: a.height,
        width: a.width,
    };
    settings.validate().map_err(|e| anyhow::anyhow!(e))?;
    crate::cli::prepare_out(&a.out, a.overwrite, "sweep")?;
    std::fs::create_dir_all(a.out.join("images")).with_context(|| format!("creating {}", a.out.display()))?;

    let mut images: BTreeMap<(usize, usize), RgbImage> = BTreeMap::new();
    let mut snaps: BTreeMap<usize, Vec<Snapshot>> = BTreeMap::new();
    let mut on_run = |ev: ExperimentEvent, interrupt: &Interrupt| -> anyhow::Result<()> {
        let ExperimentEvent::SweepRun(o) = ev else { return Ok(()) };
        let (w, seed) = (settings.guidances[o.guidance_index], settings.seeds[o.seed_index]);
        let name = format!("w{w}_seed{seed}");
        let image = o.run.image.clone().context("a finished run has its image")?;
        interrupt.writing(|| -> anyhow::Result<()> {
            save_png(&image, &a.out.join("images").join(format!("{name}.png")))?;
            if a.save_traces {
                let dir = a.out.join("traces").join(&name);
                save_run(&o.run, &dir).with_context(|| format!("writing {}", dir.display()))?;
            }
            Ok(())
        })?;
        images.insert((o.guidance_index, o.seed_index), image);
        if o.seed_index == 0 && !o.snapshots.is_empty() {
            snaps.insert(o.guidance_index, o.snapshots);
        }
        Ok(())
    };
    let (report, stopped, interrupt) =
        crate::cli::run_experiment(request, ExperimentSettings::Sweep(settings.clone()), a.quiet, "runs", &mut on_run)?;
    let ExperimentReport::Sweep(report) = report else {
        bail!("the worker answered with another experiment's report");
    };

    interrupt.writing(|| write_outputs(&a.out, &report, &images, &snaps))?;
    print!("{}", summary(&report));
    println!("wrote {}", a.out.display());
    match stopped {
        None => Ok(ExitCode::SUCCESS),
        Some(Stop::Failed(e)) => bail!("{e} (the report covers the guidance values before it)"),
        Some(Stop::Cancelled) => {
            eprintln!(
                "cancelled after {} of {} guidance values (the report covers those; images/ holds every finished run)",
                report.rows.len(),
                report.settings.guidances.len()
            );
            Ok(ExitCode::from(130))
        }
    }
}

fn write_outputs(
    out: &std::path::Path,
    report: &SweepReport,
    images: &BTreeMap<(usize, usize), RgbImage>,
    snaps: &BTreeMap<usize, Vec<Snapshot>>,
) -> anyhow::Result<()> {
    let s = &report.settings;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(report)?).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(out.join("report.csv"), csv(report)).with_context(|| format!("writing {}", out.display()))?;
    let side = 96;
    let rows: Vec<(String, String, Vec<RgbImage>)> = s
        .guidances
        .iter()
        .enumerate()
        .filter(|(gi, _)| images.contains_key(&(*gi, 0)))
        .map(|(gi, w)| {
            let frames: Vec<RgbImage> = (0..s.seeds.len()).filter_map(|si| images.get(&(gi, si)).cloned()).collect();
            let detail = report
                .rows
                .get(gi)
                .and_then(|r| r.image_diversity.map(|d| format!("diversity {d:.3}")))
                .unwrap_or_default();
            (format!("w = {w}"), detail, frames)
        })
        .collect();
    if !rows.is_empty() {
        let cols: Vec<String> = s.seeds.iter().map(|seed| format!("seed {seed}")).collect();
        let title = format!("{:?}, {} steps, {}", s.prompt, s.steps, report.sampler);
        let p = out.join("grid.png");
        export::grid(&rows, &cols, side, &title)
            .save(&p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if !snaps.is_empty() {
        let cols: Vec<String> = sweep::SNAPSHOT_FRACTIONS
            .iter()
            .flat_map(|f| [format!("x0 {:.0}%", f * 100.0), format!("x_t {:.0}%", f * 100.0)])
            .collect();
        let rows: Vec<(String, String, Vec<RgbImage>)> = snaps
            .iter()
            .map(|(&gi, v)| {
                let frames = v.iter().flat_map(|sn| [sn.x0.clone(), sn.xt.clone()]).collect();
                let ts: Vec<String> = v.iter().map(|sn| format!("{:.0}", sn.timestep)).collect();
                (format!("w = {}", s.guidances[gi]), format!("t = {}", ts.join(", ")), frames)
            })
            .collect();
        let title = format!("{:?}, seed {}: x0 and x_t through the run", s.prompt, s.seeds[0]);
        let p = out.join("snapshots.png");
        export::grid(&rows, &cols, side, &title)
            .save(&p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let series = |label: &str, f: &dyn Fn(&sweep::GuidanceReport) -> Option<f64>| Series {
        label: label.into(),
        points: report.rows.iter().filter_map(|r| f(r).map(|v| (r.guidance as f64, v))).collect(),
    };
    let mut plots = vec![
        (
            "diversity_vs_guidance.png",
            export::plot(
                &format!("Diversity across {} seeds", s.seeds.len()),
                "guidance w",
                "mean pairwise RMSE",
                &[
                    series("final latents", &|r| r.latent_diversity),
                    series("images (0..1)", &|r| r.image_diversity),
                ],
                false,
            ),
        ),
        (
            "saturation_vs_guidance.png",
            export::plot(
                "Image statistics",
                "guidance w",
                "mean over seeds",
                &[
                    series("HSV saturation", &|r| Some(r.saturation)),
                    series("RMS contrast", &|r| Some(r.contrast)),
                ],
                false,
            ),
        ),
    ];
    if s.captions > 0 {
        plots.push((
            "accuracy_vs_guidance.png",
            export::plot(
                &format!("Detector accuracy over {} held-out captions", s.captions),
                "guidance w",
                "accuracy %",
                &[series("all attributes right", &|r| r.quality.as_ref().map(|q| q.accuracy()))],
                false,
            ),
        ));
    }
    for (name, fig) in plots {
        let p = out.join(name);
        fig.save(&p).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

fn csv(report: &SweepReport) -> String {
    let mut s = String::from("guidance,seeds,latent_diversity,image_diversity,saturation,contrast,secs,captions,accuracy\n");
    for r in &report.rows {
        s.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.4},{},{}\n",
            r.guidance,
            r.seeds,
            opt(r.latent_diversity),
            opt(r.image_diversity),
            r.saturation,
            r.contrast,
            r.secs,
            r.quality.as_ref().map_or(String::new(), |q| q.captions.to_string()),
            opt(r.quality.as_ref().map(|q| q.accuracy() / 100.0)),
        ));
    }
    s
}

fn summary(report: &SweepReport) -> String {
    let quality = report.settings.captions > 0;
    let mut s = format!(
        "{:>6} {:>17} {:>16} {:>11} {:>9} {:>8}{}\n",
        "w",
        "latent diversity",
        "image diversity",
        "saturation",
        "contrast",
        "s/run",
        if quality { "   accuracy" } else { "" }
    );
    let d = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.4}"));
    for r in &report.rows {
        s.push_str(&format!(
            "{:>6} {:>17} {:>16} {:>11.4} {:>9.4} {:>8.2}{}\n",
            r.guidance,
            d(r.latent_diversity),
            d(r.image_diversity),
            r.saturation,
            r.contrast,
            r.secs,
            r.quality.as_ref().map_or(String::new(), |q| format!("{:>10.1}%", q.accuracy()))
        ));
    }
    s
}
