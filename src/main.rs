use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "diffusion-scope",
    version,
    about = "A microscope for text-to-image diffusion models (no subcommand: the app)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an image headless and write image.png, trace.json and trace.safetensors.
    Generate(cli::generate::GenerateArgs),
    /// Time the UNet on the SD 1.5 config: capture off / aggregate / full, ours vs candle-transformers'.
    Bench(cli::bench::BenchArgs),
    /// Write a shapes-world dataset (images, masks, captions) for training the bundled model.
    Dataset(cli::dataset::DatasetArgs),
    /// Evaluate a shapes-world model: generate from held-out captions, judge the images with the
    /// world's detector, score each object word's attention against the object's mask.
    Eval(cli::eval::EvalArgs),
    /// Compare samplers and step counts from the same noise: trajectories, distance to a
    /// reference solution, time, and (with --captions) the detector's quality.
    Compare(cli::compare::CompareArgs),
    /// Sweep the guidance scale over the same seeds: grid, diversity, saturation, and (with
    /// --captions) the detector's accuracy per w.
    Sweep(cli::sweep::SweepArgs),
    /// Generate an image set for the metrics (prompts x seeds for each sampler / steps /
    /// guidance), in shards (--shard I/N) for array jobs; resumes where it stopped.
    GenerateSet(cli::generate_set::GenerateSetArgs),
    /// Quality metrics: feature files (features, merge) and FID / KID / IS / precision-recall
    /// (compare), exact to torch-fidelity on the same features.
    Metrics(cli::metrics::MetricsArgs),
    /// A generation with DF-RISE / DF-CAM saliency maps (arXiv 2402.10404) at chosen steps, in
    /// its trace beside the attention.
    Saliency(cli::saliency::SaliencyArgs),
    /// Frames along a slerp (or lerp) path between two seeds, latent files, images or prompts:
    /// strip, animation, and the smoothness of the path.
    Interpolate(cli::probe::InterpolateArgs),
    /// A semantic direction (target prompts minus source prompts, in text-embedding space) added
    /// to a prompt with scale alpha: a grid over alpha x seeds, measured with the world's detector.
    Direction(cli::probe::DirectionArgs),
    /// Out-of-distribution scores in the VAE's latent space: fit a reference, score images,
    /// measure AUROC on the shapes world.
    Ood(cli::probe::OodArgs),
    /// Timestep-embedding health (the output as t sweeps, against a zeroed-embedding control)
    /// and schedule checks (alpha_bar, log-SNR, the sampler against the training schedule).
    Health(cli::probe::HealthArgs),
    /// Check a run folder as the app's Open does and print what it holds (exit 1 naming the
    /// first problem).
    Inspect(cli::inspect::InspectArgs),
    /// Open a saved run folder (written by generate, eval --save-traces or the app) in the app.
    Open {
        /// The run folder (trace.json, trace.safetensors, image.png).
        dir: std::path::PathBuf,
    },
}

fn open_app(dir: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    if let Some(d) = &dir {
        anyhow::ensure!(
            d.join("trace.json").is_file(),
            "{} is not a run folder (no trace.json in it)",
            d.display()
        );
    }
    match diffusion_scope::ui::run_app(dir) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::anyhow!("the app failed to start: {e}")),
    }
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread is started.
    unsafe { diffusion_scope::model::pin_cpu_threads() };
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Generate(args)) => cli::generate::run(args),
        Some(Command::Bench(args)) => cli::bench::run(args),
        Some(Command::Dataset(args)) => cli::dataset::run(args),
        Some(Command::Eval(args)) => cli::eval::run(args),
        Some(Command::Inspect(args)) => cli::inspect::run(args),
        Some(Command::Compare(args)) => cli::compare::run(args),
        Some(Command::Sweep(args)) => cli::sweep::run(args),
        Some(Command::Metrics(args)) => cli::metrics::run(args),
        Some(Command::GenerateSet(args)) => cli::generate_set::run(args),
        Some(Command::Saliency(args)) => cli::saliency::run(args),
        Some(Command::Interpolate(args)) => cli::probe::interpolate(args),
        Some(Command::Direction(args)) => cli::probe::direction(args),
        Some(Command::Ood(args)) => cli::probe::ood(args),
        Some(Command::Health(args)) => cli::probe::health(args),
        Some(Command::Open { dir }) => open_app(Some(dir)),
        None => open_app(None),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
