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
use diffusion_scope::metrics::features::FeatureFile;
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
    /// FID, KID, precision/recall, IS, CLIP score and detector accuracy of every cell of a
    /// `generate-set` folder, as a table and curves along the axis the set varies (guidance or
    /// steps).
    Curves(CurvesArgs),
    /// Check a feature network on shapes-world renders: FID near 0 between two seeds, and
    /// growing with known amounts of blur, colour shift and wrong shapes.
    Sanity(SanityArgs),
}

#[derive(Args)]
struct SanityArgs {
    /// Images per set (11 sets).
    #[arg(long, default_value_t = 500)]
    n: usize,
    /// The feature network (shapes, inception, clip; see `metrics features`).
    #[arg(long, default_value = "shapes")]
    network: String,
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, default_value = metrics::clip::DEFAULT_MODEL)]
    model: String,
    /// Write the table as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

/// How images become features.
#[derive(Args, Clone)]
struct NetworkArgs {
    /// The feature network: inception (the FID Inception-v3 of 2015-12-05), clip (a CLIP image
    /// tower's projected embeddings, clean-fid's CLIP features; see --model), or shapes (the
    /// shapes world's own classifier, shipped; --weights FOLDER for another copy).
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
    /// A Hugging Face CLIP folder or hub id (default: torchmetrics'), or `shapes` (the shapes
    /// world's CLIP, shipped).
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
    /// The real set: a feature file (.safetensors), a folder of images, or `shapes` (the shipped
    /// shapes-network features of 2000 shapes-world renders).
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
        MetricsCommand::Sanity(a) => sanity(a),
        MetricsCommand::Curves(a) => curves(a),
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
            "shapes" => NetworkChoice::Shapes { dir: self.weights.clone() },
            other => bail!("--network: '{other}' is not a feature network (inception, clip, shapes)"),
        };
        let flag = match self.network.as_str() {
            "clip" => "--model",
            _ => "--weights",
        };
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
    let shard = crate::cli::shard_flag(a.shard.as_deref())?;
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
    if p == Path::new("shapes") && !p.exists() {
        let f = diffusion_scope::shapes_renders_features_path();
        return Ok(Some(FeatureFile::read(&f).with_context(|| format!("--{what} shapes"))?));
    }
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

fn sanity(a: SanityArgs) -> anyhow::Result<std::process::ExitCode> {
    use diffusion_scope::metrics::sanity;
    if let Some(j) = &a.json {
        check_out(j).context("--json")?;
    }
    anyhow::ensure!(a.n >= 10, "--n: at least 10 images a set");
    let net = NetworkArgs {
        network: a.network.clone(),
        model: a.model.clone(),
        weights: a.weights.clone(),
        resize: "clean".into(),
        batch: 32,
    }
    .load()?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _interrupt = Interrupt::install(cancel.clone(), "set", "exiting without a table");
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(sanity::DAMAGES.len() as u64)
    };
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} sets  eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let t0 = std::time::Instant::now();
    let Some(rows) = sanity::study(&net, a.n, &sanity::DAMAGES, true, &cancel, &mut |done, _| {
        bar.set_position(done as u64)
    })?
    else {
        bar.finish_and_clear();
        eprintln!("interrupted: no table");
        return Ok(std::process::ExitCode::from(130));
    };
    bar.finish_and_clear();
    println!(
        "network {}, {} images a set (reference: dataset seed 1; sets: seed 2), {:.0} s",
        net.name(),
        a.n,
        t0.elapsed().as_secs_f64()
    );
    println!("| set | FID | KID | precision | recall | IS |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let f = |v: Option<f64>, d: usize| v.map_or("–".into(), |v| format!("{v:.d$}"));
        println!(
            "| {} | {:.3} | {} | {} | {} | {} |",
            r.label,
            r.fid,
            f(r.kid_mean, 5),
            f(r.precision, 3),
            f(r.recall, 3),
            f(r.is_mean, 2)
        );
    }
    if let Some(j) = &a.json {
        std::fs::write(j, serde_json::to_string_pretty(&rows)?).with_context(|| format!("writing {}", j.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Args)]
struct CurvesArgs {
    /// A set folder written by `generate-set` (set.json, a folder per cell).
    #[arg(long)]
    set: PathBuf,
    /// The real set's feature file, or `shapes` (the shipped shapes-world renders).
    #[arg(long, default_value = "shapes")]
    real: PathBuf,
    /// The CLIP model of the CLIP score (`shapes`, a folder or a hub id; `none` for none).
    #[arg(long, default_value = "shapes")]
    clip: String,
    /// Inception weights, when the real features are Inception's.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Folder for report.json, report.csv and the plots (default: the set folder).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

/// What the cells of a set vary along, for the x axis.
fn curve_axis(
    s: &diffusion_scope::experiments::generate_set::SetSettings,
) -> (
    &'static str,
    Box<dyn Fn(&diffusion_scope::experiments::generate_set::SetCell) -> (String, f64)>,
) {
    if s.guidances.len() > 1 {
        (
            "guidance w",
            Box::new(|c| {
                (
                    format!("{} {} steps", c.sampler.map_or("default".into(), |k| k.to_string()), c.steps),
                    c.guidance as f64,
                )
            }),
        )
    } else if s.steps.len() > 1 {
        (
            "steps",
            Box::new(|c| {
                (
                    format!("{} w {}", c.sampler.map_or("default".into(), |k| k.to_string()), c.guidance),
                    c.steps as f64,
                )
            }),
        )
    } else {
        ("cell", Box::new(|c| (c.folder(), 0.0)))
    }
}

fn curves(a: CurvesArgs) -> anyhow::Result<std::process::ExitCode> {
    use diffusion_scope::experiments::generate_set::load_set;
    use diffusion_scope::experiments::quality::{self, QualitySet, QualitySettings};
    use diffusion_scope::ui::export::{self, Series};
    let out = a.out.clone().unwrap_or_else(|| a.set.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let set = load_set(&a.set).map_err(|e| anyhow::anyhow!("--set: {e}"))?;
    if set.missing > 0 {
        eprintln!(
            "warning: {} images of the plan are missing (an unfinished shard?); the rows use those present",
            set.missing
        );
    }
    let sets: Vec<QualitySet> = set
        .cells
        .iter()
        .map(|(c, imgs, caps)| QualitySet {
            label: c.folder(),
            images: imgs.clone(),
            captions: caps.clone(),
        })
        .collect();
    let settings = QualitySettings {
        sets,
        clip_model: (a.clip != "none").then(|| a.clip.clone()),
        real_features: Some(a.real.clone()),
        inception_weights: a.weights.clone(),
        detector: true,
    };
    settings.validate().map_err(|e| anyhow::anyhow!(e))?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _interrupt = Interrupt::install(cancel.clone(), "row", "writing the rows done");
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(set.cells.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} cells  eta {eta}  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (report, stopped) = quality::run(&settings, &cancel, &mut |ev| {
        if let diffusion_scope::experiments::ExperimentEvent::Progress(p) = ev {
            bar.set_position(p.done as u64);
            bar.set_message(p.message);
        }
    })?;
    bar.finish_and_clear();
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    let f = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut csv = String::from("cell,n,fid,kid_mean,kid_std,precision,recall,is_mean,clip_score,detector_pct\n");
    for r in &report.rows {
        let m = &r.metrics;
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.label,
            m.n_fake,
            f(m.fid),
            f(m.kid_mean),
            f(m.kid_std),
            f(m.precision),
            f(m.recall),
            f(m.is_mean),
            f(m.clip_score),
            f(r.detector.as_ref().map(|d| d.accuracy()))
        ));
    }
    std::fs::write(out.join("report.csv"), &csv)?;
    // The curves: one series per fixed part of the cell, along the axis the plan varies.
    let (x_label, axis) = curve_axis(&set.settings);
    let cells: Vec<_> = set.settings.cells();
    let series = |metric: &dyn Fn(&diffusion_scope::experiments::quality::QualityRow) -> Option<f64>| -> Vec<Series> {
        let mut out: Vec<Series> = Vec::new();
        for r in &report.rows {
            let (name, x) = axis(&cells[r.index]);
            let Some(y) = metric(r) else { continue };
            match out.iter_mut().find(|s| s.label == name) {
                Some(s) => s.points.push((x, y)),
                None => out.push(Series {
                    label: name,
                    points: vec![(x, y)],
                }),
            }
        }
        out
    };
    let mut fid = series(&|r| r.metrics.fid);
    // Mark each curve's FID minimum (the guidance or step count past which FID stops improving).
    let minima: Vec<(f64, f64)> = fid
        .iter()
        .filter_map(|s| s.points.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)))
        .collect();
    if !minima.is_empty() {
        fid.push(Series {
            label: "FID minimum".into(),
            points: minima.clone(),
        });
    }
    let n = report.rows.first().map_or(0, |r| r.metrics.n_fake);
    let plots = [
        (
            "fid.png",
            export::plot(
                &format!("FID against the real set ({n} images a cell)"),
                x_label,
                "FID",
                &fid,
                false,
            ),
        ),
        (
            "clip_score.png",
            export::plot("CLIP score", x_label, "CLIP score", &series(&|r| r.metrics.clip_score), false),
        ),
        (
            "precision_recall.png",
            export::plot(
                "Precision and recall (k = 3)",
                x_label,
                "fraction",
                &[series(&|r| r.metrics.precision), series(&|r| r.metrics.recall)]
                    .into_iter()
                    .zip(["precision", "recall"])
                    .flat_map(|(v, what)| {
                        v.into_iter().map(move |s| Series {
                            label: format!("{what}: {}", s.label),
                            points: s.points,
                        })
                    })
                    .collect::<Vec<_>>(),
                false,
            ),
        ),
        (
            "detector.png",
            export::plot(
                "Detector accuracy (%)",
                x_label,
                "% of captions right",
                &series(&|r| r.detector.as_ref().map(|d| d.accuracy())),
                false,
            ),
        ),
    ];
    for (name, img) in plots {
        let p = out.join(name);
        img.save(&p).with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{csv}");
    for (x, y) in &minima {
        println!("FID minimum: {y:.3} at {x_label} {x}");
    }
    println!("wrote {}", out.display());
    Ok(if stopped.is_some() {
        std::process::ExitCode::from(130)
    } else {
        std::process::ExitCode::SUCCESS
    })
}
