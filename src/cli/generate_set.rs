//! `diffusion-scope generate-set`: the generated ("fake") image set for the metrics — prompts ×
//! seeds, for every combination of the listed samplers, step counts and guidance scales
//! (`experiments::generate_set`) — in shards for array jobs.
//!
//! Files: `set.json` (the plan), and per cell (one cell: the folder itself; several: a subfolder
//! per cell, `ddim-s30-w5`) the images `000000.png`, `000001.png`, ... (prompt-major, then
//! seed) and `prompts.txt` (the caption of every image, in order, for `metrics clip-score`).
//! Every shard writes the same `set.json` and `prompts.txt` and its own images, so N shards into
//! one folder make the set one job makes. An image is written whole (a temporary file renamed)
//! as soon as it is made; a rerun skips the images already there, so an interrupted shard
//! resumes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use diffusion_scope::experiments::generate_set::{SetRun, SetSettings, cell_dir};
use diffusion_scope::experiments::sweep::{parse_guidances, parse_seeds_up_to};
use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings, Stop};
use diffusion_scope::sampling::SamplerKind;

use crate::cli::interrupt::Interrupt;

#[derive(Args, Debug)]
pub struct GenerateSetArgs {
    #[command(flatten)]
    target: crate::cli::ModelTarget,
    /// One prompt for every image.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A file of prompts, one per line; every prompt runs with every seed.
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seeds: a range A..B (inclusive, up to a million) or a list.
    #[arg(long, default_value = "0..99")]
    seeds: String,
    /// Guidance scales, comma-separated (one cell each).
    #[arg(long, default_value = "5")]
    guidance: String,
    /// Step counts, comma-separated.
    #[arg(long, default_value = "30")]
    steps: String,
    /// Samplers, comma-separated (ddim, ddpm, euler, euler-a, dpm++2m, pndm, lms, heun);
    /// default: the model's own.
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    /// Make the I-th of N equal slices of the plan (1-based), for array jobs.
    #[arg(long)]
    shard: Option<String>,
    /// The set's folder (shards of one set share it).
    #[arg(long)]
    out: PathBuf,
    #[arg(short, long)]
    quiet: bool,
}

fn list<T>(text: &str, flag: &str, parse: impl Fn(&str) -> Result<T, String>) -> anyhow::Result<Vec<T>> {
    let v = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse(s.trim()))
        .collect::<Result<Vec<T>, String>>()
        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
    anyhow::ensure!(!v.is_empty(), "--{flag}: the list is empty");
    Ok(v)
}

fn settings(a: &GenerateSetArgs) -> anyhow::Result<SetSettings> {
    let prompts = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("--prompts {}", f.display()))?;
            let v: Vec<String> = text.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
            anyhow::ensure!(!v.is_empty(), "--prompts {}: no prompts in this file", f.display());
            v
        }
        _ => bail!("give --prompt TEXT or --prompts FILE"),
    };
    let samplers = match &a.scheduler {
        None => vec![None],
        Some(t) => list(t, "scheduler", |s| s.parse::<SamplerKind>().map(Some).map_err(|e| e.to_string()))?,
    };
    let s = SetSettings {
        prompts,
        negative_prompt: a.negative_prompt.clone(),
        seeds: parse_seeds_up_to(&a.seeds, 1_000_000).map_err(|e| anyhow::anyhow!("--seeds: {e}"))?,
        samplers,
        steps: list(&a.steps, "steps", |s| {
            s.parse::<usize>().map_err(|_| format!("'{s}' is not a whole number"))
        })?,
        guidances: parse_guidances(&a.guidance).map_err(|e| anyhow::anyhow!("--guidance: {e}"))?,
        height: a.height,
        width: a.width,
    };
    s.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(s)
}

fn image_path(out: &Path, s: &SetSettings, job: usize) -> PathBuf {
    let j = s.job(job);
    cell_dir(out, s, j.cell_index).join(format!("{:06}.png", j.index_in_cell))
}

/// Writes `text` to `path` whole (a temporary file renamed).
fn write_whole(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub fn run(a: GenerateSetArgs) -> anyhow::Result<ExitCode> {
    let request = a.target.request()?;
    let s = settings(&a)?;
    let shard = crate::cli::shard_flag(a.shard.as_deref())?;
    // One folder holds one set: a set.json of another plan (or model) is refused.
    let plan = serde_json::json!({ "model": request.spec, "settings": s });
    let plan_path = a.out.join("set.json");
    if plan_path.is_file() {
        let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan_path)?)
            .with_context(|| format!("{}: not a set.json", plan_path.display()))?;
        if old != plan {
            bail!(
                "--out {}: holds another image set (its set.json differs: model, prompts, seeds, samplers, steps, guidance or size); use a new folder",
                a.out.display()
            );
        }
    } else if a.out.is_dir() && std::fs::read_dir(&a.out)?.next().is_some() {
        bail!("--out {}: not empty and not an image set (no set.json)", a.out.display());
    }
    let cells = s.cells();
    for ci in 0..cells.len() {
        let d = cell_dir(&a.out, &s, ci);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_whole(&plan_path, &serde_json::to_string_pretty(&plan)?)?;
    let captions: String = s
        .prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.as_str(), s.seeds.len()))
        .map(|p| format!("{p}\n"))
        .collect();
    for ci in 0..cells.len() {
        write_whole(&cell_dir(&a.out, &s, ci).join("prompts.txt"), &captions)?;
    }
    let range = s.shard(shard);
    let skip: Vec<usize> = range.clone().filter(|&j| image_path(&a.out, &s, j).is_file()).collect();
    if skip.len() == range.len() {
        println!("all {} images of this shard are already in {}", range.len(), a.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if !skip.is_empty() {
        eprintln!("resuming: {} of {} images of this shard are already there", skip.len(), range.len());
    }
    let mut on_image = |ev: ExperimentEvent, interrupt: &Interrupt| -> anyhow::Result<()> {
        let ExperimentEvent::SetImage(img) = ev else { return Ok(()) };
        let path = image_path(&a.out, &s, img.job.index);
        let tmp = path.with_extension("partial");
        interrupt.writing(|| -> anyhow::Result<()> {
            let buf = image::RgbImage::from_raw(img.image.width as u32, img.image.height as u32, img.image.pixels.clone())
                .context("pixel buffer does not match the image size")?;
            buf.save_with_format(&tmp, image::ImageFormat::Png)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
        })
    };
    let req = SetRun {
        settings: s.clone(),
        shard,
        skip,
    };
    let (report, stopped, _interrupt) =
        crate::cli::run_experiment(request, ExperimentSettings::GenerateSet(req), a.quiet, "images", &mut on_image)?;
    let ExperimentReport::GenerateSet(report) = report else {
        bail!("the worker answered with another experiment's report");
    };
    let shard_text = shard.map_or(String::new(), |(i, n)| format!(" (shard {i}/{n})"));
    println!(
        "{} images made, {} already there, {} of the plan's {} in this shard{shard_text}{}",
        report.generated,
        report.skipped,
        report.jobs,
        s.total(),
        report.secs_per_image.map_or(String::new(), |t| format!("; {t:.2} s per image"))
    );
    match stopped {
        None => Ok(ExitCode::SUCCESS),
        Some(Stop::Failed(e)) => bail!("{e} (the images before it are kept; rerun to resume)"),
        Some(Stop::Cancelled) => {
            eprintln!("cancelled: the finished images are kept; the same command resumes");
            Ok(ExitCode::from(130))
        }
    }
}
