//! `diffusion-scope metrics`: feature files (extract, merge) and the metrics on them (FID, KID,
//! IS, precision/recall), exact to torch-fidelity on the same features.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use candle_core::Device;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use diffusion_scope::metrics::clip::{self, Clip};
use diffusion_scope::metrics::extract::{self, ExtractSettings, Network, NetworkChoice};
use diffusion_scope::metrics::features::{FeatureFile, parse_shard};
use diffusion_scope::metrics::resize::Resize;
use diffusion_scope::metrics::{self, KidSettings, MetricSettings, MetricsReport};

use super::interrupt::Interrupt;

#[derive(Args)]
pub struct MetricsArgs {
    #[command(subcommand)]
    command: MetricsCommand,
}

#[derive(Subcommand)]
enum MetricsCommand {
    /// Extract features of a folder of images (or of run folders) into a feature file.
    Features(FeaturesArgs),
    /// Combine feature files (shards of one job, in order) into one.
    Merge(MergeArgs),
    /// FID (and KID, IS, precision/recall) of a fake set against a real set.
    Compare(CompareArgs),
    /// The CLIP score of images against their captions (torchmetrics' CLIPScore).
    ClipScore(ClipScoreArgs),
}

/// How images become features.
#[derive(Args, Clone)]
struct NetworkArgs {
    /// The feature network: inception (the FID Inception-v3 of 2015-12-05) or clip (a CLIP
    /// image tower's projected embeddings, clean-fid's CLIP features; see --model).
    #[arg(long, default_value = "inception")]
    network: String,
    /// The CLIP model for --network clip: a Hugging Face CLIP folder or hub id.
    #[arg(long, default_value = metrics::clip::DEFAULT_MODEL)]
    model: String,
    /// The network's weights; default: pt_inception-2015-12-05-6726825d.pth or
    /// weights-inception-2015-12-05-6726825d.pth in the torch hub cache.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// clean (clean-fid: PIL bicubic on float) or tf-bilinear (torch-fidelity / pytorch-fid).
    #[arg(long, default_value = "clean")]
    resize: String,
    /// Images per network call.
    #[arg(long, default_value_t = 8)]
    batch: usize,
}

#[derive(Args)]
struct FeaturesArgs {
    /// A folder of PNG / JPEG images (sorted by name: the rows' order).
    #[arg(long, conflicts_with = "run", required_unless_present = "run")]
    images: Option<PathBuf>,
    /// A folder of run folders (written by generate, eval --save-traces, compare, sweep): their
    /// final images.
    #[arg(long)]
    run: Option<PathBuf>,
    #[command(flatten)]
    net: NetworkArgs,
    /// Process the I-th of N equal slices of the input (1-based), for array jobs.
    #[arg(long)]
    shard: Option<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ClipScoreArgs {
    /// A folder of PNG / JPEG images (sorted by name).
    #[arg(long)]
    images: PathBuf,
    /// Captions, one per line: one line per image (in the images' order), or a single line for
    /// every image.
    #[arg(long)]
    prompts: PathBuf,
    /// A Hugging Face CLIP folder or hub id (torchmetrics' default).
    #[arg(long, default_value = metrics::clip::DEFAULT_MODEL)]
    model: String,
    /// Images per model call.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Write the score, and the score of every image, as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// Feature files; shards of one job in order (1/N first).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct CompareArgs {
    /// The real set: a feature file (.safetensors) or a folder of images.
    #[arg(long)]
    real: PathBuf,
    /// The generated set: a feature file or a folder of images.
    #[arg(long)]
    fake: PathBuf,
    /// Also KID (unbiased MMD, cubic kernel, 100 subsets).
    #[arg(long)]
    kid: bool,
    /// KID subset size; default min(1000, n_real, n_fake).
    #[arg(long)]
    kid_subset_size: Option<usize>,
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    /// Also the Inception Score of the fake set (needs the network's logits).
    #[arg(long = "is")]
    inception_score: bool,
    #[arg(long, default_value_t = 10)]
    is_splits: usize,
    /// Also precision and recall (k-nearest-neighbour manifolds).
    #[arg(long)]
    pr: bool,
    #[arg(long, default_value_t = 3)]
    pr_k: usize,
    /// Write the numbers as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    net: NetworkArgs,
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<std::process::ExitCode> {
    match args.command {
        MetricsCommand::Features(a) => features(a),
        MetricsCommand::Merge(a) => merge(a),
        MetricsCommand::Compare(a) => compare(a),
        MetricsCommand::ClipScore(a) => clip_score(a),
    }
}

fn check_out(out: &Path) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!("--out {}: is a folder; give a file name (FEATS.safetensors)", out.display());
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("--out {}: the folder {} does not exist", out.display(), parent.display());
        }
    }
    Ok(())
}

impl NetworkArgs {
    fn settings(&self, shard: Option<(usize, usize)>) -> anyhow::Result<ExtractSettings> {
        let resize = Resize::parse(&self.resize).map_err(|e| anyhow::anyhow!("--resize: {e}"))?;
        if self.network == "clip" && resize != Resize::Clean {
            bail!(
                "--resize {}: CLIP features use the clean resize (clean-fid's CLIP recipe)",
                self.resize
            );
        }
        if self.batch == 0 {
            bail!("--batch: must be at least 1");
        }
        Ok(ExtractSettings {
            resize,
            batch: self.batch,
            shard,
        })
    }

    fn load(&self) -> anyhow::Result<Network> {
        let choice = match self.network.as_str() {
            "inception" => NetworkChoice::Inception {
                weights: self.weights.clone(),
            },
            "clip" => NetworkChoice::Clip { model: self.model.clone() },
            other => bail!("--network: '{other}' is not a feature network (inception, clip)"),
        };
        let flag = if self.network == "clip" { "--model" } else { "--weights" };
        choice.load(&Device::Cpu).context(flag)
    }
}

/// Runs extraction with a progress bar (images/s) and Ctrl-C; None when interrupted.
fn run_extract(
    net: &Network,
    files: &[PathBuf],
    s: &ExtractSettings,
    quiet: bool,
    what: &str,
) -> anyhow::Result<Option<extract::Extracted>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let _interrupt = Interrupt::install(
        cancel.clone(),
        "batch",
        "exiting without writing this job's output (finished shards are kept)",
    );
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} images  {{per_sec}}  eta {{eta}}  {what}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let out = extract::extract(net, files, s, &cancel, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if let Some(x) = &out {
        if !x.skipped.is_empty() {
            eprintln!("skipped {} unreadable image(s):", x.skipped.len());
            for (p, e) in x.skipped.iter().take(10) {
                eprintln!("  {p}: {e}");
            }
        }
    }
    Ok(out)
}

fn features(a: FeaturesArgs) -> anyhow::Result<std::process::ExitCode> {
    check_out(&a.out)?;
    let shard = a
        .shard
        .as_deref()
        .map(parse_shard)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--shard: {e}"))?;
    let s = a.net.settings(shard)?;
    let files = match (&a.images, &a.run) {
        (Some(d), _) => extract::list_images(d)?,
        (None, Some(d)) => extract::list_run_images(d)?,
        _ => bail!("give --images DIR or --run DIR"),
    };
    let net = a.net.load()?;
    let t0 = std::time::Instant::now();
    let Some(x) = run_extract(&net, &files, &s, a.quiet, "")? else {
        eprintln!("interrupted: nothing written for this shard (finished shards are kept)");
        return Ok(std::process::ExitCode::from(130));
    };
    x.file.write(&a.out)?;
    let n = x.file.count();
    eprintln!(
        "wrote {} ({n} images{}, {} {}, {:.1} images/s)",
        a.out.display(),
        shard.map_or(String::new(), |(i, k)| format!(", shard {i}/{k} of {}", files.len())),
        net.name(),
        s.resize.name(),
        n as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn merge(a: MergeArgs) -> anyhow::Result<std::process::ExitCode> {
    check_out(&a.out)?;
    let parts = a
        .files
        .iter()
        .map(|p| Ok((p.display().to_string(), FeatureFile::read(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = FeatureFile::merge(&parts)?;
    merged.write(&a.out)?;
    eprintln!("wrote {} ({} rows from {} files)", a.out.display(), merged.count(), parts.len());
    Ok(std::process::ExitCode::SUCCESS)
}

/// A set given as a feature file or a folder of images.
fn load_set(p: &Path, what: &str, net: &mut Option<Network>, args: &NetworkArgs, quiet: bool) -> anyhow::Result<Option<FeatureFile>> {
    if p.is_file() {
        return Ok(Some(FeatureFile::read(p).with_context(|| format!("--{what}"))?));
    }
    if !p.is_dir() {
        bail!("--{what} {}: neither a feature file nor a folder", p.display());
    }
    let files = extract::list_images(p).with_context(|| format!("--{what}"))?;
    if net.is_none() {
        *net = Some(args.load()?);
    }
    let s = args.settings(None)?;
    Ok(run_extract(net.as_ref().unwrap(), &files, &s, quiet, what)?.map(|x| x.file))
}

fn compare(a: CompareArgs) -> anyhow::Result<std::process::ExitCode> {
    if let Some(j) = &a.json {
        check_out(j).context("--json")?;
    }
    if a.kid_subsets == 0 || a.is_splits == 0 || a.pr_k == 0 {
        bail!("--kid-subsets, --is-splits and --pr-k must be at least 1");
    }
    let mut net = None;
    let Some(real) = load_set(&a.real, "real", &mut net, &a.net, a.quiet)? else {
        return Ok(std::process::ExitCode::from(130));
    };
    let Some(fake) = load_set(&a.fake, "fake", &mut net, &a.net, a.quiet)? else {
        return Ok(std::process::ExitCode::from(130));
    };
    let kid = a.kid.then(|| KidSettings {
        subsets: a.kid_subsets,
        subset_size: a.kid_subset_size.unwrap_or_else(|| 1000.min(real.count()).min(fake.count())),
        ..KidSettings::default()
    });
    let s = MetricSettings {
        kid,
        is_splits: a.inception_score.then_some(a.is_splits),
        pr_k: a.pr.then_some(a.pr_k),
    };
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    let report = metrics::compare(&real, &fake, &s, &mut |done, total, what| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    })?;
    bar.finish_and_clear();
    print_report(&report);
    if let Some(j) = &a.json {
        std::fs::write(j, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_report(r: &MetricsReport) {
    println!(
        "real {} images, fake {} images, network {}, resize {}",
        r.n_real,
        r.n_fake,
        r.network.as_deref().unwrap_or("unknown"),
        r.resize.as_deref().unwrap_or("unknown")
    );
    let line = |name: &str, v: Option<f64>, sd: Option<f64>| {
        if let Some(v) = v {
            match sd {
                Some(sd) => println!("{name:<10} {v:.6} ± {sd:.6}"),
                None => println!("{name:<10} {v:.6}"),
            }
        }
    };
    line("FID", r.fid, None);
    line("KID", r.kid_mean, r.kid_std);
    line("IS", r.is_mean, r.is_std);
    line("precision", r.precision, None);
    line("recall", r.recall, None);
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}

/// The captions of `n` images: one line each, or one line for all.
fn read_captions(path: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--prompts {}", path.display()))?;
    let lines: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_owned()).collect();
    let lines: Vec<String> = match lines.iter().rposition(|l| !l.trim().is_empty()) {
        Some(last) => lines[..=last].to_vec(),
        None => bail!("--prompts {}: no captions in this file", path.display()),
    };
    match lines.len() {
        1 => Ok(vec![lines[0].clone(); n]),
        k if k == n => Ok(lines),
        k => bail!(
            "--prompts {}: {k} captions for {n} images; give one caption per image (in the images' sorted order) or a single caption for all",
            path.display()
        ),
    }
}

#[derive(serde::Serialize)]
struct PerImage {
    image: String,
    caption: String,
    score: f64,
}

#[derive(serde::Serialize)]
struct ClipScoreJson {
    #[serde(flatten)]
    report: MetricsReport,
    per_image: Vec<PerImage>,
}

fn clip_score(a: ClipScoreArgs) -> anyhow::Result<std::process::ExitCode> {
    if let Some(j) = &a.json {
        check_out(j).context("--json")?;
    }
    if a.batch == 0 {
        bail!("--batch: must be at least 1");
    }
    let files = extract::list_images(&a.images).context("--images")?;
    let captions = read_captions(&a.prompts, files.len())?;
    let model = Clip::load(&a.model, &Device::Cpu).context("--model")?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _interrupt = Interrupt::install(cancel.clone(), "batch", "exiting without a score");
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(files.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}  CLIP score")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let Some(out) = clip::clip_score(&model, &files, &captions, a.batch, &cancel, &mut |done, _| {
        bar.set_position(done as u64)
    })?
    else {
        bar.finish_and_clear();
        eprintln!("interrupted: no score");
        return Ok(std::process::ExitCode::from(130));
    };
    bar.finish_and_clear();
    let mut report = MetricsReport {
        clip_score: Some(out.clip_score),
        n_fake: out.scores.len(),
        network: Some(format!("clip:{}", model.name)),
        resize: Some("clip-processor".into()),
        ..Default::default()
    };
    if out.truncated > 0 {
        report.warnings.push(format!(
            "{} caption(s) longer than the model's position limit were cut there (without their end-of-text token, as torchmetrics does)",
            out.truncated
        ));
    }
    if !out.skipped.is_empty() {
        report.warnings.push(format!("{} unreadable image(s) skipped", out.skipped.len()));
        for (p, e) in out.skipped.iter().take(10) {
            eprintln!("  skipped {p}: {e}");
        }
    }
    println!("{} images, model {}", report.n_fake, model.name);
    println!("CLIP score {:.6}", out.clip_score);
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(j) = &a.json {
        let per_image = out
            .scores
            .iter()
            .map(|&(i, s)| PerImage {
                image: files[i].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                caption: captions[i].clone(),
                score: s,
            })
            .collect();
        let json = ClipScoreJson { report, per_image };
        std::fs::write(j, serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
