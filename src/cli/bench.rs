//! `diffusion-scope bench`: UNet step time on the SD 1.5 config with random weights, all
//! variants measured in one run, interleaved so that drift affects them alike.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use diffusion_scope::model::bench::{self, Variant};
use diffusion_scope::model::unet::CaptureMode;
use diffusion_scope::model::{DTypeChoice, DeviceChoice};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Image size in pixels (latents are size/8).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Timed forward passes per variant (after one warm-up each).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value = "f32")]
    dtype: DTypeChoice,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.size.is_multiple_of(64) && a.size > 0, "--size must be a positive multiple of 64");
    anyhow::ensure!(a.reps > 0, "--reps must be at least 1");
    let device = a.device.device()?;
    println!(
        "SD 1.5 UNet config, random weights, {}x{} image ({}x{} latents), batch 2 (CFG), {}, {:?}, {} threads",
        a.size,
        a.size,
        a.size / 8,
        a.size / 8,
        a.dtype.as_str(),
        a.device,
        candle_core::utils::get_num_threads()
    );
    let setup = bench::setup(a.size, &device, a.dtype.dtype()).context("building the UNets")?;
    let diff = setup.max_abs_diff()?;
    println!("same weights, same input: max |ours - candle-transformers| = {diff:.3e}");
    let variants = [
        Variant::Ours(CaptureMode::None),
        Variant::Ours(CaptureMode::Aggregate),
        Variant::Ours(CaptureMode::Full),
        Variant::CandleTransformers,
    ];
    for v in variants {
        setup.time(v, 999.0)?; // warm-up
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for rep in 0..a.reps {
        // Rotate the order each repetition.
        for k in 0..variants.len() {
            let i = (k + rep) % variants.len();
            times[i].push(setup.time(variants[i], 999.0 - rep as f64)?);
        }
    }
    let med: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
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
