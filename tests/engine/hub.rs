//! The hub code path, against a local Hugging Face cache laid out as hf-hub and
//! huggingface_hub write it (models--owner--name/refs/main + snapshots/<commit>/...).

use std::process::Command;

use crate::common::fixtures;
use crate::parity::tempdir;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn run(cache: &std::path::Path, model: &str, out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args([
            "generate",
            "--model",
            model,
            "--prompt",
            "a red circle",
            "--steps",
            "2",
            "--seed",
            "1",
            "--quiet",
        ])
        .args(["--out", out.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .output()
        .unwrap()
}

#[test]
fn hub_id_resolves_from_the_cache_offline() {
    let cache = tempdir("hf-cache");
    let repo = cache.join("models--testowner--tiny-sd2");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    copy_dir(&fixtures().join("tiny-sd2"), &repo.join("snapshots").join(commit));

    let out = tempdir("hub-out");
    let o = run(&cache, "testowner/tiny-sd2", &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).unwrap()).unwrap();
    assert_eq!(meta["model"], "testowner/tiny-sd2");
    assert!(meta["model_path"].as_str().unwrap().contains(commit));

    // A repo that is not cached: a clear error, no network attempt.
    let o = run(&cache, "testowner/absent", &tempdir("hub-out2"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

/// The layout of stabilityai/sdxl-turbo in the cache: an SDXL pipeline whose weights are only
/// the `.fp16` variants (here converted to f16 for real), the second text encoder and
/// tokenizer, the repo's trailing Euler-ancestral scheduler config; one step at guidance 0.
#[test]
fn sdxl_turbo_layout_resolves_from_the_cache() {
    let cache = tempdir("hf-cache-xl");
    let repo = cache.join("models--stabilityai--sdxl-turbo");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    copy_dir(&fixtures().join("tiny-sdxl"), &snap);
    for (dir, stem) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
    ] {
        let plain = snap.join(dir).join(format!("{stem}.safetensors"));
        let tensors = candle_core::safetensors::load(&plain, &candle_core::Device::Cpu).unwrap();
        let half: std::collections::HashMap<String, candle_core::Tensor> = tensors
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, snap.join(dir).join(format!("{stem}.fp16.safetensors"))).unwrap();
        std::fs::remove_file(plain).unwrap();
    }
    // sdxl-turbo's scheduler: Euler ancestral, trailing spacing.
    let sched = serde_json::json!({
        "_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "steps_offset": 1, "timestep_spacing": "trailing", "trained_betas": null
    });
    std::fs::write(snap.join("scheduler/scheduler_config.json"), sched.to_string()).unwrap();

    let out = tempdir("hub-out-xl");
    let o = Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args([
            "generate",
            "--model",
            "stabilityai/sdxl-turbo",
            "--prompt",
            "a red circle",
            "--steps",
            "1",
            "--guidance",
            "0",
        ])
        .args(["--seed", "1", "--quiet", "--out", out.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).unwrap()).unwrap();
    assert_eq!(meta["sampler"], "euler-a");
    assert_eq!(meta["timesteps"], serde_json::json!([999.0]));
    assert!(meta["model_path"].as_str().unwrap().contains(commit));
    assert!(out.join("image.png").is_file());
}
