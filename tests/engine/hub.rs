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

/// A snapshot of `fixture` in a fresh cache as `models--owner--name`, with each weight file in
/// the variants `plain` / `fp16` the repo holds (fp16: converted to f16 for real), and
/// `extra` files that the repo also holds and the app must not need.
fn cache_layout(repo_id: &str, fixture: &str, plain: bool, fp16: bool, extra: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let cache = tempdir(&format!("hf-cache-{}", repo_id.replace('/', "-")));
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    copy_dir(&fixtures().join(fixture), &snap);
    for dir in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        let stem = if dir.starts_with("text_encoder") {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
        let path = snap.join(dir).join(format!("{stem}.safetensors"));
        if !path.exists() {
            continue;
        }
        if fp16 {
            let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
            let half: std::collections::HashMap<String, candle_core::Tensor> = tensors
                .into_iter()
                .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F16).unwrap()))
                .collect();
            candle_core::safetensors::save(&half, snap.join(dir).join(format!("{stem}.fp16.safetensors"))).unwrap();
        }
        if !plain {
            std::fs::remove_file(path).unwrap();
        }
    }
    for f in extra {
        let p = snap.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"not something the app reads").unwrap();
    }
    (cache, snap)
}

fn run_hub(cache: &std::path::Path, model: &str, extra_args: &[&str]) -> serde_json::Value {
    let out = tempdir("hub-layout-out");
    let o = Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args(["generate", "--model", model, "--prompt", "a red circle", "--seed", "1", "--quiet"])
        .args(extra_args)
        .args(["--out", out.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{model} {extra_args:?}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("image.png").is_file());
    serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).unwrap()).unwrap()
}

/// stabilityai/sd-turbo's layout: an SD 2.x pipeline with plain and `.fp16` weights side by
/// side, a single-file checkpoint at the root (not read), trailing spacing; one step at
/// guidance 0 in f32 (the plain files) and in f16 (the `.fp16` files).
#[test]
fn sd_turbo_layout_resolves_from_the_cache_in_both_dtypes() {
    let (cache, snap) = cache_layout(
        "stabilityai/sd-turbo",
        "tiny-sd2",
        true,
        true,
        &["sd_turbo.safetensors", "sd_turbo.ckpt"],
    );
    let sched = serde_json::json!({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "steps_offset": 1, "timestep_spacing": "trailing", "interpolation_type": "linear",
        "use_karras_sigmas": false, "trained_betas": null
    });
    std::fs::write(snap.join("scheduler/scheduler_config.json"), sched.to_string()).unwrap();
    for dtype in ["f32", "f16"] {
        let meta = run_hub(
            &cache,
            "stabilityai/sd-turbo",
            &["--steps", "1", "--guidance", "0", "--dtype", dtype],
        );
        assert_eq!(meta["sampler"], "euler");
        assert_eq!(meta["timesteps"], serde_json::json!([999.0]));
        assert_eq!(meta["dtype"], dtype);
    }
}

/// stabilityai/stable-diffusion-xl-base-1.0's layout: plain and `.fp16` weights for every
/// component, the repo's extra folders and single-file checkpoints (not read), the leading
/// Euler scheduler; two steps with guidance, in f32 and in f16.
#[test]
fn sdxl_base_layout_resolves_from_the_cache_in_both_dtypes() {
    let extra = [
        "sd_xl_base_1.0.safetensors",
        "sd_xl_offset_example-lora_1.0.safetensors",
        "vae_1_0/diffusion_pytorch_model.safetensors",
        "vae_decoder/model.onnx",
        "unet/diffusion_flax_model.msgpack",
        "text_encoder_2/model.onnx",
    ];
    let (cache, _) = cache_layout("stabilityai/stable-diffusion-xl-base-1.0", "tiny-sdxl", true, true, &extra);
    for dtype in ["f32", "f16"] {
        let meta = run_hub(
            &cache,
            "stabilityai/stable-diffusion-xl-base-1.0",
            &["--steps", "2", "--guidance", "5", "--dtype", dtype],
        );
        assert_eq!(meta["sampler"], "euler");
        assert_eq!(meta["dtype"], dtype);
        assert_eq!(meta["timesteps"].as_array().unwrap().len(), 2);
    }
}
