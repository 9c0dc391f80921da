//! `diffusion-scope bench`: UNet step time on the SD 1.5 config with random weights, all
//! variants measured in one run, interleaved so that drift affects them alike.
//! `bench --generate`: whole generations on a real model (the bundled one by default) with
//! attention capture off / aggregate / full, and the model load time.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::unet_bench::{self as bench, Variant};
use diffusion_scope::model::{DTypeChoice, DeviceChoice};
use diffusion_scope::types::CaptureMode;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Image size in pixels (latents are size/8).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Timed forward passes per variant (after one warm-up each).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// The UNet config: sd15 (ours against candle-transformers') or sdxl (SDXL base 1.0's:
    /// ours with capture off / aggregate / full, and the capture memory of a 1024x1024 run).
    #[arg(long, default_value = "sd15")]
    unet: String,
    #[arg(long, default_value = "f32")]
    dtype: DTypeChoice,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Time whole generations (prompt to decoded image) on --model instead of the UNet alone.
    #[arg(long)]
    generate: bool,
    /// With --generate: the model (default: the bundled model).
    #[arg(long, requires = "generate")]
    model: Option<String>,
    /// With --generate: sampling steps per generation.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// With --generate: classifier-free guidance scale.
    #[arg(long, default_value_t = 5.0)]
    guidance: f32,
    /// With --generate: the prompt.
    #[arg(long, default_value = "a small red circle on the left")]
    prompt: String,
    /// SD 1.5 only: time our UNet with capture off and nothing else (for a profiler: no
    /// candle-transformers UNet, no comparison pass).
    #[arg(long, conflicts_with = "generate")]
    ours_only: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The first line of a UNet bench: config, sizes, dtype, device, threads.
fn print_setup(config: &str, a: &BenchArgs) {
    let l = a.size / 8;
    println!(
        "{config} UNet config, random weights, {}x{} image ({l}x{l} latents), batch 2 (CFG), {}, {:?}, {} threads",
        a.size,
        a.size,
        a.dtype.as_str(),
        a.device,
        candle_core::utils::get_num_threads()
    );
}

/// Median seconds of each of `n` variants over `reps` repetitions, the order rotated every
/// repetition so drifting machine load spreads over all of them; `time(i, rep)` times variant
/// `i` once. One untimed warm-up of each variant first.
fn interleaved_medians(n: usize, reps: usize, mut time: impl FnMut(usize, usize) -> anyhow::Result<f64>) -> anyhow::Result<Vec<f64>> {
    for i in 0..n {
        time(i, 0)?;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); n];
    for rep in 0..reps {
        for k in 0..n {
            let i = (k + rep) % n;
            times[i].push(time(i, rep)?);
        }
    }
    Ok(times.iter_mut().map(|t| median(t)).collect())
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if a.generate {
        return run_generate(a);
    }
    anyhow::ensure!(a.size.is_multiple_of(64) && a.size > 0, "--size must be a positive multiple of 64");
    anyhow::ensure!(a.reps > 0, "--reps must be at least 1");
    match a.unet.as_str() {
        "sd15" => {}
        "sdxl" => return run_xl(a),
        other => anyhow::bail!("--unet {other}: expected sd15 or sdxl"),
    }
    let device = a.device.device()?;
    print_setup("SD 1.5", &a);
    let setup = bench::setup(a.size, &device, a.dtype.dtype()).context("building the UNets")?;
    if a.ours_only {
        let off = Variant::Ours(CaptureMode::None);
        let med = interleaved_medians(1, a.reps, |_, rep| Ok(setup.time(off, 999.0 - rep as f64)?))?;
        println!("\n{:<28} {:>12.1} ms median over {} reps", off.label(), med[0] * 1e3, a.reps);
        return Ok(ExitCode::SUCCESS);
    }
    let diff = setup.max_abs_diff()?;
    println!("same weights, same input: max |ours - candle-transformers| = {diff:.3e}");
    let variants = [
        Variant::Ours(CaptureMode::None),
        Variant::Ours(CaptureMode::Aggregate),
        Variant::Ours(CaptureMode::Full),
        Variant::CandleTransformers,
    ];
    let med = interleaved_medians(variants.len(), a.reps, |i, rep| Ok(setup.time(variants[i], 999.0 - rep as f64)?))?;
    println!("\n{:<28} {:>12} {:>10}", "variant", "median ms", "ratio");
    for (i, v) in variants.iter().enumerate() {
        println!("{:<28} {:>12.1} {:>10.3}", v.label(), med[i] * 1e3, med[i] / med[0]);
    }
    println!("\naggregate / off  = {:.3}   (target <= 1.10)", med[1] / med[0]);
    println!("full / off       = {:.3}", med[2] / med[0]);
    println!(
        "ours / candle-transformers (capture off) = {:.3}   (target <= 1.05)",
        med[0] / med[3]
    );
    println!("({} cross-attention layers, {} reps per variant)", setup.attn_layers(), a.reps);
    Ok(ExitCode::SUCCESS)
}

/// SDXL base's UNet with random weights: capture off / aggregate / full, interleaved, and
/// what `aggregate` and `full` keep for a 30-step 1024x1024 run.
fn run_xl(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = a.device.device()?;
    print_setup("SDXL base 1.0", &a);
    let setup = bench::setup_xl(a.size, &device, a.dtype.dtype()).context("building the UNet")?;
    let modes = [CaptureMode::None, CaptureMode::Aggregate, CaptureMode::Full];
    let med = interleaved_medians(modes.len(), a.reps, |i, rep| Ok(setup.time(modes[i], 999.0 - rep as f64)?))?;
    println!("\n{:<28} {:>12} {:>10}", "capture", "median ms", "ratio");
    for (i, m) in modes.iter().enumerate() {
        println!("{:<28} {:>12.1} {:>10.3}", m.as_str(), med[i] * 1e3, med[i] / med[0]);
    }
    // What a 30-step 1024x1024 run keeps (f32 maps, 77 tokens): per layer for full, one map per
    // resolution for aggregate.
    let lat = 128usize;
    let l = a.size / 8;
    let sizes: Vec<(usize, usize)> = setup.layer_sizes().iter().map(|&(h, w)| (h * lat / l, w * lat / l)).collect();
    let full: usize = sizes.iter().map(|(h, w)| h * w * 77 * 4).sum();
    let mut res: Vec<(usize, usize)> = sizes.clone();
    res.sort();
    res.dedup();
    let agg: usize = res.iter().map(|(h, w)| h * w * 77 * 4).sum();
    let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
    println!(
        "\n{} cross-attention layers at {} resolutions; a 30-step 1024x1024 run keeps {:.1} MiB (aggregate: {:.2} MiB a step) or {:.0} MiB (full: {:.1} MiB a step)",
        sizes.len(),
        res.len(),
        30.0 * mib(agg),
        mib(agg),
        30.0 * mib(full),
        mib(full)
    );
    println!("({} reps per capture mode, interleaved)", a.reps);
    Ok(ExitCode::SUCCESS)
}

/// Whole generations on a real model at its default size: load once (timed), then the capture
/// modes interleaved, `reps` timed runs each after one warm-up.
fn run_generate(a: BenchArgs) -> anyhow::Result<ExitCode> {
    use diffusion_scope::engine::{ModelRequest, load_model};
    use diffusion_scope::pipeline::{self, RunConfig};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    anyhow::ensure!(a.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let spec = super::model_spec(a.model.clone())?;
    let t0 = Instant::now();
    let sd = load_model(&ModelRequest {
        spec: spec.clone(),
        device: a.device,
        dtype: a.dtype,
    })
    .with_context(|| format!("loading {spec}"))?;
    let load_secs = t0.elapsed().as_secs_f64();
    let size = sd.default_size();
    println!(
        "{}: {size}x{size} image, {} steps, guidance {} ({}), prompt '{}', {}, {:?}, {} threads",
        sd.root.display(),
        a.steps,
        a.guidance,
        if a.guidance > 1.0 { "CFG, UNet batch 2" } else { "no CFG" },
        a.prompt,
        a.dtype.as_str(),
        a.device,
        candle_core::utils::get_num_threads()
    );
    println!("model load: {load_secs:.3} s");
    let modes = [CaptureMode::None, CaptureMode::Aggregate, CaptureMode::Full];
    let never = AtomicBool::new(false);
    let time = |mode: CaptureMode, seed: u64| -> anyhow::Result<f64> {
        let cfg = RunConfig {
            prompt: a.prompt.clone(),
            steps: a.steps,
            guidance: a.guidance,
            seed,
            attention: mode,
            ..RunConfig::default()
        };
        let t = Instant::now();
        pipeline::run(&sd, &spec, &cfg, &never, &mut |_| {})?;
        Ok(t.elapsed().as_secs_f64())
    };
    let first = time(CaptureMode::Aggregate, 0)?; // the "cold" figure
    let med = interleaved_medians(modes.len(), a.reps, |i, rep| time(modes[i], rep as u64 + 1))?;
    println!("\n{:<28} {:>12} {:>10}", "capture", "median s", "ratio");
    for (i, m) in modes.iter().enumerate() {
        println!("{:<28} {:>12.3} {:>10.3}", m.as_str(), med[i], med[i] / med[0]);
    }
    println!(
        "\n{}-step generation with attention capture (aggregate, the default): {:.3} s   (target <= 1.5 s)",
        a.steps, med[1]
    );
    println!(
        "with the model load included: {:.3} s   (first generation after load: {first:.3} s)",
        load_secs + med[1]
    );
    println!("({} timed runs per capture mode, interleaved)", a.reps);
    Ok(ExitCode::SUCCESS)
}
