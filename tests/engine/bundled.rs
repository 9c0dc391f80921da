//! The bundled shapes-world model (assets/shapes-model): it loads through the same path as any
//! SD folder, our engine reproduces diffusers' generations from it, and it draws what its
//! held-out captions ask for (a small, deterministic slice of `diffusion-scope eval`).

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use diffusion_scope::experiments::shapes_eval::{EvalSettings, evaluate_case, summarize};
use diffusion_scope::model::StableDiffusion;
use diffusion_scope::pipeline::RunConfig;
use diffusion_scope::world;

use crate::common::{fixtures, generate, rel_err};

fn bundled() -> StableDiffusion {
    let root = diffusion_scope::bundled_model_path();
    StableDiffusion::load(&root, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("loading {}: {e}", root.display()))
}

#[test]
fn bundled_model_is_small_and_matches_diffusers() {
    let root = diffusion_scope::bundled_model_path();
    let bytes: u64 = walk(&root).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(bytes < 30 << 20, "the bundled model is {bytes} bytes (limit 30 MB)");

    let sd = bundled();
    assert_eq!(sd.default_size(), 64);
    let dir = fixtures().join("ref");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("shapes_model_parity.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("shapes_model_parity.safetensors"), &Device::Cpu).unwrap();
    let prompts = json["prompts"].as_array().unwrap();
    assert!(!prompts.is_empty());
    for (i, p) in prompts.iter().enumerate() {
        // The pipeline's defaults: the model's own scheduler (DDIM), empty negative prompt.
        let cfg = RunConfig {
            prompt: p.as_str().unwrap().into(),
            steps: json["steps"].as_u64().unwrap() as usize,
            guidance: json["guidance"].as_f64().unwrap() as f32,
            seed: json["seeds"][i].as_u64().unwrap(),
            ..RunConfig::default()
        };
        let out = generate(&sd, &cfg);
        assert_eq!(out.meta.sampler, "ddim");
        let reference = tensors[&format!("latents_{i}")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = rel_err(&out.steps.last().unwrap().latents, &reference);
        assert!(
            e < 1e-4,
            "prompt '{}': final latents differ from diffusers by {e:.3e} (relative)",
            cfg.prompt
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn bundled_model_draws_held_out_captions() {
    let sd = bundled();
    let spec = diffusion_scope::bundled_model_path().display().to_string();
    let settings = EvalSettings::default();
    let never = AtomicBool::new(false);
    // Two captions per template, the first ones `diffusion-scope eval` uses.
    let captions = world::eval_captions(10, settings.caption_seed);
    let mut cases = Vec::new();
    let mut layers = Vec::new();
    let mut timesteps = Vec::new();
    for (i, c) in captions.iter().enumerate() {
        let (case, run) = evaluate_case(&sd, &spec, i, c, &settings, &never).unwrap_or_else(|e| panic!("{c}: {e}"));
        layers = run.meta.attn_layers.iter().map(|l| l.path.clone()).collect::<Vec<_>>();
        timesteps = run.meta.timesteps.clone();
        cases.push(case);
    }
    let s = summarize(&cases, &[], &layers, &timesteps);
    let report: Vec<String> = cases
        .iter()
        .map(|c| {
            format!(
                "{} -> {:?}",
                c.caption,
                c.found
                    .iter()
                    .map(|f| format!("{} {} {:?}", f.colour, f.shape, f.position))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    // Loose floors (the full evaluation reports the real figures); they catch a broken model
    // or a broken engine, not a slightly worse one.
    assert!(s.single_colour.k >= 7, "colour right on {} of 8: {report:#?}", s.single_colour.k);
    assert!(s.single_shape.k >= 7, "shape right on {} of 8: {report:#?}", s.single_shape.k);
    assert_eq!(s.single_position.n, 4, "two captions per position template");
    assert!(
        s.single_position.k >= 3,
        "position right on {} of 4: {report:#?}",
        s.single_position.k
    );
    assert!(
        s.attention.pointing.hits.pct() >= 80.0,
        "pointing game {}: {report:#?}",
        s.attention.pointing.hits
    );
}

#[test]
fn vae_encoder_mean_round_trips_a_scene() {
    let sd = bundled();
    let enc = sd.vae_encoder().unwrap();
    let sample = world::sample(&world::WorldConfig::with_size(64), 7, 0);
    let z1 = enc.encode_rgb(&sample.rgb, 64, 64).unwrap();
    let z2 = enc.encode_rgb(&sample.rgb, 64, 64).unwrap();
    let (a, b) = (
        z1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        z2.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert_eq!(a, b, "the posterior mean is deterministic");
    let img = diffusion_scope::pipeline::decode(&sd, a, [4, 16, 16]).unwrap();
    let mse: f64 = img
        .pixels
        .iter()
        .zip(&sample.rgb)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum::<f64>()
        / img.pixels.len() as f64;
    let psnr = 10.0 * (255.0f64 * 255.0 / mse).log10();
    assert!(psnr > 30.0, "decode(encode(scene)) PSNR {psnr:.1} dB");
}
