//! The trace folder: written by `generate`, read back without recomputation, and laid out as
//! the CLI contract says (what Python users read with `safetensors` alone).

use std::process::Command;

use crate::common::{fixtures, rel_err};
use crate::parity::tempdir;
use diffusion_scope::trace::{RunStatus, load_run};

#[test]
fn generate_writes_a_trace_that_loads_back() {
    let out = tempdir("trace");
    let status = Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args([
            "generate",
            "--model",
            fixtures().join("tiny-sd2").to_str().unwrap(),
            "--prompt",
            "a red circle",
            "--steps",
            "4",
        ])
        .args([
            "--seed",
            "7",
            "--height",
            "32",
            "--width",
            "48",
            "--attention",
            "full",
            "--scheduler",
            "euler-a",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(out.join("image.png").is_file());
    let run = load_run(&out).unwrap();
    assert_eq!(run.meta.status, RunStatus::Complete);
    assert_eq!(run.steps.len(), 4);
    assert_eq!(run.meta.latent_shape, [4, 16, 24]);
    assert_eq!(run.meta.seed, 7);
    assert_eq!(run.meta.sampler, "euler-a");
    assert_eq!(run.meta.tokens.len(), 77);
    assert_eq!(run.meta.step_secs.len(), 4);
    let img = run.image.as_ref().unwrap();
    assert_eq!((img.width, img.height), (48, 32));

    // The raw file has exactly the documented tensors and shapes.
    let st = candle_core::safetensors::load(out.join("trace.safetensors"), &candle_core::Device::Cpu).unwrap();
    for k in ["latents", "x0", "model_output"] {
        assert_eq!(st[k].dims(), &[4, 4, 16, 24], "{k}");
    }
    assert_eq!(st["timesteps"].dims(), &[4]);
    let attn: Vec<_> = st.keys().filter(|k| k.starts_with("attn.")).collect();
    assert_eq!(attn.len(), run.meta.attn_layers.len());
    let l = &run.meta.attn_layers[0];
    assert_eq!(l.path, "down_blocks.0.attentions.0.transformer_blocks.0.attn2");
    assert_eq!(st[&format!("attn.{}", l.path)].dims(), &[4, 16 * 24, 77]);
    let mid = run.meta.attn_layers.iter().find(|l| l.path.starts_with("mid_block")).unwrap();
    assert_eq!((mid.height, mid.width), (4, 6));

    // Same numbers after the round trip.
    let last = st["latents"].get(3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(rel_err(&run.steps[3].latents, &last), 0.0);
}

/// Regression (hardening issue): traces whose parts do not fit each other panicked in the
/// loader (`chunks_exact(0)`) or later in the app (index out of bounds, zero-sized textures),
/// or loaded as a mix of two runs. Each is now refused, naming the file and the mismatch.
#[test]
fn load_run_refuses_traces_whose_parts_do_not_fit() {
    use candle_core::{DType, Device, Tensor};
    use diffusion_scope::trace::save_run;
    use diffusion_scope::trace::synthetic::{self, SyntheticSpec};
    let run = synthetic::run(&SyntheticSpec::small());
    let n = run.steps.len();
    let fresh = |name: &str| {
        let d = tempdir(name);
        save_run(&run, &d).unwrap();
        d
    };
    let edit_json = |d: &std::path::Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join("trace.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    };
    let replace_tensor = |d: &std::path::Path, name: &str, t: Tensor| {
        let p = d.join("trace.safetensors");
        let mut all = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        all.insert(name.to_string(), t);
        candle_core::safetensors::save(&all, &p).unwrap();
    };
    let refused = |d: &std::path::Path, expected: &[&str]| {
        let e = load_run(d).err().expect("refused").to_string();
        for x in expected {
            assert!(e.contains(x), "expected {x:?} in: {e}");
        }
    };
    let d = fresh("zero-latent-shape");
    edit_json(&d, &|v| v["latent_shape"][1] = 0.into());
    refused(&d, &["trace.json", "latent_shape"]);

    let key = run.steps[0].attention[0].key.clone(); // attn_res.16x16
    let d = fresh("zero-sized-attention");
    replace_tensor(&d, &key, Tensor::zeros((n, 0, 77), DType::F32, &Device::Cpu).unwrap());
    refused(&d, &["trace.safetensors", &key, "does not fit"]);

    let d = fresh("attention-size-not-its-name");
    replace_tensor(&d, &key, Tensor::zeros((n, 64, 77), DType::F32, &Device::Cpu).unwrap());
    refused(&d, &[&key, "16x16"]);

    let d = fresh("latents-of-another-shape");
    replace_tensor(&d, "latents", Tensor::zeros((n, 4, 8, 8), DType::F32, &Device::Cpu).unwrap());
    refused(&d, &["latents", "[10, 4, 16, 16]"]);

    let d = fresh("fewer-latents-than-steps");
    replace_tensor(&d, "x0", Tensor::zeros((n - 1, 4, 16, 16), DType::F32, &Device::Cpu).unwrap());
    refused(&d, &["x0", "10 timesteps"]);

    let d = fresh("newer-format");
    edit_json(&d, &|v| v["format_version"] = 2.into());
    refused(&d, &["trace.json", "format_version 2", "newer"]);

    let d = fresh("token-lists-disagree");
    edit_json(&d, &|v| v["word_of_token"].as_array_mut().unwrap().truncate(10));
    refused(&d, &["token lists disagree", "10 word_of_token"]);

    let d = fresh("word-that-does-not-exist");
    edit_json(&d, &|v| v["word_of_token"][1] = 99.into());
    refused(&d, &["word_of_token names word 99"]);

    let d = fresh("attention-of-other-tokens");
    replace_tensor(&d, &key, Tensor::zeros((n, 256, 20), DType::F32, &Device::Cpu).unwrap());
    refused(&d, &[&key, "77 tokens"]);

    let d = fresh("complete-but-short");
    edit_json(&d, &|v| v["timesteps"].as_array_mut().unwrap().push(0.5.into()));
    refused(&d, &["trace.safetensors", "holds 10 steps", "11 timesteps", "complete"]);

    // A folder mixed from two runs: an image.png of another size beside the trace.
    let d = fresh("mixed-image");
    image::RgbImage::new(64, 64).save(d.join("image.png")).unwrap();
    refused(&d, &["image.png", "64x64", "mixed"]);

    // The untouched trace still loads.
    assert_eq!(load_run(&fresh("intact")).unwrap().steps.len(), n);
}

/// `inspect DIR` loads a run folder as the app's Open does: a good one is summarised, a broken
/// one exits 1 with one line naming the file and the problem.
#[test]
fn inspect_summarises_or_names_the_first_problem() {
    use diffusion_scope::trace::save_run;
    use diffusion_scope::trace::synthetic::{self, SyntheticSpec};
    let d = tempdir("inspect");
    save_run(&synthetic::run(&SyntheticSpec::small()), &d).unwrap();
    let inspect = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
            .arg("inspect")
            .arg(&d)
            .output()
            .unwrap()
    };
    let out = inspect();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for x in [
        "complete (10 of 10 steps)",
        "\"a red circle\"",
        "latents [10, 4, 16, 16]",
        "attn_res.16x16 [10, 256, 77]",
        "image        128x128",
    ] {
        assert!(stdout.contains(x), "expected {x:?} in:\n{stdout}");
    }
    std::fs::write(d.join("trace.safetensors"), b"not safetensors").unwrap();
    let out = inspect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("trace.safetensors") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}
