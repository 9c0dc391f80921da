//! `diffusion-scope compare`: the sampler comparison experiment (see
//! `experiments::compare`), through the worker, with its files:
//! `grid.png` (rows = reference and cells, columns = fractions of the run), `report.json`,
//! `report.csv`, plots (`convergence_vs_nfe.png`, `convergence_vs_seconds.png`, and with
//! `--captions` `quality_vs_nfe.png`, `quality_vs_seconds.png`), per finished cell its
//! trajectory strip in `cells/` (and its trace with `--save-traces`) as soon as it is done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use diffusion_scope::experiments::compare::{self, CellReport, CellRole, CellSpec, CompareReport, CompareSettings};
use diffusion_scope::experiments::shapes_eval::Rate;
use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings, Stop};
use diffusion_scope::trace::{RgbImage, save_run};
use diffusion_scope::ui::export::{self, Series};

use crate::cli::interrupt::Interrupt;

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seed of the initial noise, the same in every cell.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Cells as SAMPLER:STEPS, comma-separated (SAMPLER-karras for Karras sigmas), e.g.
    /// ddim:50,dpm++2m:20,euler:30,dpm++2m-karras:20.
    #[arg(long)]
    samplers: String,
    /// The reference solution of the ODE (also run at twice its steps as a check).
    #[arg(long, default_value = "dpm++2m:200")]
    reference: String,
    /// Held-out shapes-world captions per cell, judged by the world's detector (quality column).
    #[arg(long, default_value_t = 0)]
    captions: usize,
    #[arg(long, default_value_t = 0)]
    caption_seed: u64,
    /// Timestep spacing of every run: trailing (default: every step count starts at t = T-1, so
    /// all cells solve the same problem), linspace, leading, or `model` for each config's own.
    #[arg(long, default_value = "trailing")]
    spacing: String,
    /// Trajectory columns: fractions 0, 1/F, ..., 1 of the run.
    #[arg(long, default_value_t = 10)]
    fractions: usize,
    /// "Recognisable at": the decoded x0 within this PSNR of the final image.
    #[arg(long, default_value_t = 20.0)]
    recognisable_db: f64,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    /// The output folder (new or empty; an earlier compare output only with --overwrite).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
    /// Also write every cell's trace (cells/NAME/).
    #[arg(long)]
    save_traces: bool,
    #[arg(short, long)]
    quiet: bool,
}

/// A folder name for a cell label (`dpm++2m-karras:20` → `dpm++2m-karras_20`).
fn file_stem(label: &str) -> String {
    label.replace(':', "_")
}

pub fn run(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let request = a.target.request()?;
    let cells = CellSpec::parse_list(&a.samplers).map_err(|e| anyhow::anyhow!("--samplers: {e}"))?;
    let reference = CellSpec::parse(&a.reference).map_err(|e| anyhow::anyhow!("--reference: {e}"))?;
    let spacing = match a.spacing.as_str() {
        "model" => None,
        s => Some(s.parse().map_err(|e| anyhow::anyhow!("--spacing: {e}"))?),
    };
    let settings = CompareSettings {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        seed: a.seed,
        guidance: a.guidance,
        cells,
        reference,
        spacing,
        fractions: a.fractions,
        recognisable_db: a.recognisable_db,
        captions: a.captions,
        caption_seed: a.caption_seed,
        height: a.height,
        width: a.width,
    };
    settings.validate().map_err(|e| anyhow::anyhow!(e))?;
    crate::cli::prepare_out(&a.out, a.overwrite, "comparison")?;
    std::fs::create_dir_all(a.out.join("cells")).with_context(|| format!("creating {}", a.out.display()))?;

    // Frames per row: the reference first, then the cells in order.
    let mut rows: BTreeMap<(usize, usize), (CellReport, Vec<RgbImage>)> = BTreeMap::new();
    let mut on_cell = |ev: ExperimentEvent, interrupt: &Interrupt| -> anyhow::Result<()> {
        let ExperimentEvent::CompareCell(c) = ev else { return Ok(()) };
        let key = match c.role {
            CellRole::Reference => (0, 0),
            CellRole::Cell(i) => (1, i),
        };
        let stem = file_stem(&c.report.label);
        let labels: Vec<String> = c.report.trajectory.iter().map(|p| column_label(p.fraction)).collect();
        interrupt.writing(|| -> anyhow::Result<()> {
            let frames: Vec<(RgbImage, String)> = c.frames.iter().cloned().zip(labels).collect();
            let strip = export::strip(&frames, 96, &row_label(&c.report).join("  "));
            let p = a.out.join("cells").join(format!("{stem}.png"));
            strip.save(&p).with_context(|| format!("writing {}", p.display()))?;
            if a.save_traces {
                let dir = a.out.join("cells").join(&stem);
                save_run(&c.run, &dir).with_context(|| format!("writing {}", dir.display()))?;
            }
            Ok(())
        })?;
        rows.insert(key, (c.report, c.frames));
        Ok(())
    };
    let (report, stopped, interrupt) =
        crate::cli::run_experiment(request, ExperimentSettings::Compare(settings), a.quiet, "runs", &mut on_cell)?;
    let ExperimentReport::Compare(report) = report else {
        bail!("the worker answered with another experiment's report");
    };

    interrupt.writing(|| write_outputs(&a.out, &report, &rows))?;
    print!("{}", summary(&report));
    println!("wrote {}", a.out.display());
    match stopped {
        None => Ok(ExitCode::SUCCESS),
        Some(Stop::Failed(e)) => bail!("{e} (the report covers the cells before it)"),
        Some(Stop::Cancelled) => {
            eprintln!(
                "cancelled after {} of {} cells (the report covers those)",
                report.cells.len(),
                report.settings.cells.len()
            );
            Ok(ExitCode::from(130))
        }
    }
}

fn column_label(fraction: f64) -> String {
    if fraction >= 1.0 {
        "final".into()
    } else {
        format!("{:.0}%", fraction * 100.0)
    }
}

/// Name and a detail line of a grid row.
fn row_label(c: &CellReport) -> [String; 2] {
    let mut detail = format!("{} NFE · {:.2} s", c.nfe, c.secs);
    if c.latent_rmse > 0.0 {
        detail.push_str(&format!(" · {:.1} dB", c.image_psnr));
    }
    [c.label.clone(), detail]
}

fn write_outputs(out: &Path, report: &CompareReport, rows: &BTreeMap<(usize, usize), (CellReport, Vec<RgbImage>)>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    std::fs::write(out.join("report.json"), json).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(out.join("report.csv"), csv(report)).with_context(|| format!("writing {}", out.display()))?;
    if let Some((first, _)) = rows.values().next() {
        let cols: Vec<String> = first.trajectory.iter().map(|p| column_label(p.fraction)).collect();
        let grid_rows: Vec<(String, String, Vec<RgbImage>)> = rows
            .iter()
            .map(|(&(kind, _), (c, frames))| {
                let [name, detail] = row_label(c);
                let name = if kind == 0 { format!("{name} (reference)") } else { name };
                (name, detail, frames.clone())
            })
            .collect();
        let title = format!(
            "{:?}, seed {}, guidance {}",
            report.settings.prompt, report.settings.seed, report.settings.guidance
        );
        let p = out.join("grid.png");
        export::grid(&grid_rows, &cols, 96, &title)
            .save(&p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    for (name, fig) in plots(report) {
        let p = out.join(name);
        fig.save(&p).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn by_sampler(report: &CompareReport, value: impl Fn(&CellReport) -> Option<(f64, f64)>) -> Vec<Series> {
    compare::by_sampler(&report.cells, value)
        .into_iter()
        .map(|(label, points)| Series { label, points })
        .collect()
}

fn plots(report: &CompareReport) -> Vec<(&'static str, image::RgbaImage)> {
    let r = report.settings.reference.label();
    let mut out = vec![
        (
            "convergence_vs_nfe.png",
            export::plot(
                &format!("Distance to the reference ({r}): final latents"),
                "UNet evaluations (NFE)",
                "latent RMSE",
                &by_sampler(report, |c| Some((c.nfe as f64, c.latent_rmse))),
                true,
            ),
        ),
        (
            "convergence_vs_seconds.png",
            export::plot(
                &format!("Distance to the reference ({r}): final latents"),
                "seconds",
                "latent RMSE",
                &by_sampler(report, |c| Some((c.secs, c.latent_rmse))),
                true,
            ),
        ),
    ];
    if report.settings.captions > 0 {
        let title = format!("Detector accuracy over {} held-out captions", report.settings.captions);
        let acc = |c: &CellReport| c.quality.as_ref().map(|q| q.accuracy());
        out.push((
            "quality_vs_nfe.png",
            export::plot(
                &title,
                "UNet evaluations (NFE)",
                "accuracy %",
                &by_sampler(report, |c| acc(c).map(|a| (c.nfe as f64, a))),
                false,
            ),
        ));
        out.push((
            "quality_vs_seconds.png",
            export::plot(
                &title,
                "seconds",
                "accuracy %",
                &by_sampler(report, |c| acc(c).map(|a| (c.secs, a))),
                false,
            ),
        ));
    }
    out
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

fn csv(report: &CompareReport) -> String {
    let mut s = String::from(
        "label,sampler,steps,karras,stochastic,nfe,secs,latent_rmse,image_psnr,recognisable_at,detector_at,captions,accuracy,colour,shape,position,relation\n",
    );
    let frac = |r: &Rate| {
        if r.n == 0 {
            String::new()
        } else {
            format!("{}", r.k as f64 / r.n as f64)
        }
    };
    for c in &report.cells {
        let q = c.quality.as_ref();
        s.push_str(&format!(
            "{},{},{},{},{},{},{:.4},{:.6},{:.3},{},{},{},{},{},{},{},{}\n",
            c.label,
            c.spec.sampler,
            c.spec.steps,
            c.spec.karras,
            c.stochastic,
            c.nfe,
            c.secs,
            c.latent_rmse,
            c.image_psnr,
            opt(c.recognisable_at),
            opt(c.detector_at),
            q.map_or(String::new(), |q| q.captions.to_string()),
            opt(q.map(|q| q.accuracy() / 100.0)),
            q.map_or(String::new(), |q| frac(&q.colour)),
            q.map_or(String::new(), |q| frac(&q.shape)),
            q.map_or(String::new(), |q| frac(&q.position)),
            q.map_or(String::new(), |q| frac(&q.relation)),
        ));
    }
    s
}

/// The table printed at the end.
fn summary(report: &CompareReport) -> String {
    let mut s = String::new();
    if let Some(r) = &report.reference {
        let check = match (r.double_latent_rmse, r.double_image_psnr) {
            (Some(rmse), psnr) => format!(
                "latent RMSE {rmse:.5}, image PSNR {:.1} dB -> {}",
                psnr.unwrap_or(f64::NAN),
                match (r.converged, r.closest_cell_rmse) {
                    (true, Some(c)) => format!("converged (closest deterministic cell: {c:.5})"),
                    (true, None) => "no deterministic cell to compare with".into(),
                    (false, Some(c)) => format!("NOT converged: a cell is closer ({c:.5}); use more reference steps"),
                    (false, None) => "not checked".into(),
                }
            ),
            (None, _) => "the check did not run".into(),
        };
        s.push_str(&format!(
            "reference {} ({} NFE, {:.2} s); doubled to {}: {check}\n",
            r.spec, r.nfe, r.secs, r.double
        ));
    }
    let quality = report.settings.captions > 0;
    s.push_str(&format!(
        "{:<20} {:>5} {:>8} {:>11} {:>9} {:>13}{}{}\n",
        "cell",
        "NFE",
        "seconds",
        "latent RMSE",
        "PSNR dB",
        "recognisable",
        if report.is_world_caption { "   detector" } else { "" },
        if quality { "   accuracy" } else { "" }
    ));
    for c in &report.cells {
        let pct = |v: Option<f64>| v.map_or("never".to_string(), |f| format!("{:.0}%", f * 100.0));
        s.push_str(&format!(
            "{:<20} {:>5} {:>8.2} {:>11.5} {:>9.1} {:>13}{}{}{}\n",
            c.label,
            c.nfe,
            c.secs,
            c.latent_rmse,
            c.image_psnr,
            pct(c.recognisable_at),
            if report.is_world_caption {
                format!("{:>11}", pct(c.detector_at))
            } else {
                String::new()
            },
            c.quality.as_ref().map_or(String::new(), |q| format!("{:>10.1}%", q.accuracy())),
            if c.stochastic { "  (stochastic: not an ODE solver)" } else { "" }
        ));
    }
    s
}
