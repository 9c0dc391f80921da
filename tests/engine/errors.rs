//! Bad input gets a one-line error and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::fixtures;
use crate::parity::tempdir;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
}

/// Runs `generate` with `args` and returns stderr, asserting a clean failure.
fn fails(args: &[&str]) -> String {
    let out_dir = tempdir("err-out");
    let out = bin()
        .arg("generate")
        .args(args)
        .args(["--out", out_dir.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure for {args:?}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    stderr
}

fn check(args: &[&str], expected: &[&str]) {
    let stderr = fails(args);
    for e in expected {
        assert!(stderr.contains(e), "{args:?}: expected {e:?} in stderr:\n{stderr}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of tiny-sd1 with `edit` applied to one JSON file.
fn model_with(name: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let dir = tempdir(name).join("model");
    copy_dir(&fixtures().join("tiny-sd1"), &dir);
    let path = dir.join(file);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    dir
}

fn tiny() -> String {
    fixtures().join("tiny-sd1").display().to_string()
}

#[test]
fn missing_model_folder() {
    check(&["--model", "/no/such/model", "--prompt", "x"], &["does not exist"]);
}

#[test]
fn unknown_scheduler_lists_the_valid_ones() {
    check(
        &["--model", &tiny(), "--prompt", "x", "--scheduler", "magic"],
        &["magic", "euler-a"],
    );
}

#[test]
fn size_not_a_multiple_of_the_vae_factor() {
    check(
        &["--model", &tiny(), "--prompt", "x", "--height", "33", "--steps", "2"],
        &["height 33", "VAE factor 2"],
    );
}

#[test]
fn unsupported_config_value_names_key_and_value() {
    let m = model_with("act", "unet/config.json", |v| v["act_fn"] = "mish".into());
    check(&["--model", m.to_str().unwrap(), "--prompt", "x"], &["act_fn", "mish"]);
    let m = model_with("beta", "scheduler/scheduler_config.json", |v| v["beta_schedule"] = "exotic".into());
    check(&["--model", m.to_str().unwrap(), "--prompt", "x"], &["beta_schedule", "exotic"]);
}

#[test]
fn asymmetric_transformer_layers_need_the_reverse_list() {
    let m = model_with("nested", "unet/config.json", |v| {
        v["transformer_layers_per_block"] = serde_json::json!([1, [1, 2], 1])
    });
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["transformer_layers_per_block", "reverse_transformer_layers_per_block"],
    );
    let m = model_with("nested-short", "unet/config.json", |v| {
        v["transformer_layers_per_block"] = serde_json::json!([[1], [1], 1]);
        v["reverse_transformer_layers_per_block"] = serde_json::json!([[1, 1], [1, 1], [1]]);
    });
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["transformer_layers_per_block", "attention layers"],
    );
}

#[test]
fn second_prompt_and_clip_skip_are_checked_against_the_model() {
    check(
        &["--model", &tiny(), "--prompt", "x", "--prompt-2", "y"],
        &["second prompt", "SDXL"],
    );
    check(
        &["--model", &tiny(), "--prompt", "x", "--clip-skip", "9"],
        &["clip skip 9", "layers"],
    );
}

#[test]
fn missing_weight_names_the_key() {
    let m = model_with("layers", "unet/config.json", |v| v["layers_per_block"] = 2.into());
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["unet", "down_blocks.0.resnets.1"],
    );
}

#[test]
fn wrong_weight_shape_names_the_key() {
    let m = model_with("shape", "unet/config.json", |v| {
        v["block_out_channels"] = serde_json::json!([16, 32, 64])
    });
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["unet", "down_blocks.2", "shape"],
    );
}

#[test]
fn missing_tokenizer_file_is_named() {
    let m = model_with("tok", "model_index.json", |_| {});
    std::fs::remove_file(m.join("tokenizer/vocab.json")).unwrap();
    check(&["--model", m.to_str().unwrap(), "--prompt", "x"], &["vocab.json"]);
}

#[test]
fn init_latents_of_the_wrong_shape() {
    let dir = tempdir("bad-latents");
    let path = dir.join("l.safetensors");
    let t = candle_core::Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("latents".to_string(), t)]), &path).unwrap();
    check(
        &["--model", &tiny(), "--prompt", "x", "--init-latents", path.to_str().unwrap()],
        &["[1, 4, 16, 16]"],
    );
    check(
        &["--model", &tiny(), "--prompt", "x", "--init-latents", "/no/such.safetensors"],
        &["no such file"],
    );
}

#[test]
fn nan_names_the_step_and_the_trace_records_the_failure() {
    // Poison the UNet's output bias: the first model evaluation produces NaN.
    let m = model_with("nan", "model_index.json", |_| {});
    let wpath = m.join("unet/diffusion_pytorch_model.safetensors");
    let mut ts = candle_core::safetensors::load(&wpath, &candle_core::Device::Cpu).unwrap();
    let b = ts["conv_out.bias"].clone();
    ts.insert("conv_out.bias".into(), (b + f64::NAN).unwrap());
    candle_core::safetensors::save(&ts, &wpath).unwrap();
    let out_dir = tempdir("nan-out");
    let out = bin()
        .args([
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "3",
            "--scheduler",
            "ddim",
            "--quiet",
        ])
        .args(["--out", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("NaN") && stderr.contains("step 1 of 3"), "{stderr}");
    // The failure is recorded next to whatever was computed.
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("trace.json")).unwrap()).unwrap();
    assert_eq!(meta["status"], "failed");
    assert!(meta["error"].as_str().unwrap().contains("step 1 of 3"));
    assert!(!out_dir.join("image.png").exists());
}

#[test]
fn bad_flag_values() {
    check(&["--model", &tiny(), "--prompt", "x", "--attention", "some"], &["some"]);
    check(&["--model", &tiny(), "--prompt", "x", "--steps", "0"], &["steps"]);
    check(&["--model", &tiny(), "--prompt", "x", "--spacing", "odd"], &["odd", "trailing"]);
}

/// Ctrl-C (SIGINT) stops after the current step, saves what was computed, exits 130.
#[cfg(unix)]
#[test]
fn interrupt_saves_the_partial_trace() {
    signal_saves_the_partial_trace("INT");
}

/// Regression (hardening issue): SIGTERM and SIGHUP saved nothing; they now stop the run like
/// the first Ctrl-C.
#[test]
fn termination_signals_save_the_partial_trace_too() {
    signal_saves_the_partial_trace("TERM");
    signal_saves_the_partial_trace("HUP");
}

fn signal_saves_the_partial_trace(signal: &str) {
    let out_dir = tempdir("sigint");
    let child = bin()
        .args([
            "generate",
            "--model",
            &tiny(),
            "--prompt",
            "x",
            "--steps",
            "900",
            "--scheduler",
            "euler",
            "--quiet",
        ])
        .args(["--out", out_dir.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
    assert!(stderr.contains("cancelled after"), "{stderr}");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("trace.json")).unwrap()).unwrap();
    assert_eq!(meta["status"], "cancelled");
    let done = meta["step_secs"].as_array().unwrap().len();
    assert!(done < 900, "{done}");
}

/// Regression (hardening issue): a second Ctrl-C during the save left the new trace.json
/// beside the old tensors. Now the folder is written whole and a second signal waits for the
/// write. Whatever the timing of the second signal (before, during or after the save), the
/// folder holds one whole run, the earlier or the new one, and nothing is left beside it.
#[test]
fn a_second_signal_never_leaves_a_torn_run_folder() {
    let parent = tempdir("second-signal");
    let out = parent.join("run");
    let out_s = out.to_str().unwrap();
    let base = ["generate", "--model", &tiny(), "--steps", "2", "--quiet", "--out", out_s];
    let ok = bin().args(base).args(["--prompt", "old"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for delay_ms in [0, 20, 100, 300] {
        let child = bin()
            .args([
                "generate",
                "--model",
                &tiny(),
                "--prompt",
                "new",
                "--quiet",
                "--overwrite",
                "--out",
                out_s,
            ])
            .args(["--steps", "900", "--scheduler", "euler", "--attention", "full"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let int = || Command::new("kill").args(["-INT", &pid]).status();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        int().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        int().unwrap();
        let done = child.wait_with_output().unwrap();
        assert_eq!(done.status.code(), Some(130), "{}", String::from_utf8_lossy(&done.stderr));
        let run = diffusion_scope::trace::load_run(&out).unwrap_or_else(|e| panic!("second signal after {delay_ms} ms: {e}"));
        assert!(["old", "new"].contains(&run.meta.prompt.as_str()), "{}", run.meta.prompt);
        let names: Vec<String> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["run"], "second signal after {delay_ms} ms left {names:?}");
    }
}

/// `open DIR` refuses a folder that is not a run folder before any window opens.
#[test]
fn open_refuses_a_folder_that_is_not_a_run() {
    let empty = tempdir("not-a-run");
    for dir in [empty.to_str().unwrap(), "/no/such/run"] {
        let out = bin().args(["open", dir]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{dir}: {stderr}");
        assert!(stderr.contains("is not a run folder") && stderr.contains(dir), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// Regression (hardening issue): these config values panicked (remainder by zero, index out of
/// bounds) or gave a black image with exit 0; now each is refused naming key and value.
#[test]
fn config_values_the_math_cannot_honour_are_refused() {
    let m = model_with("groups0", "unet/config.json", |v| v["norm_num_groups"] = 0.into());
    check(&["--model", m.to_str().unwrap(), "--prompt", "x"], &["norm_num_groups", "0"]);
    let m = model_with("vaegroups0", "vae/config.json", |v| v["norm_num_groups"] = 0.into());
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["vae/config.json", "norm_num_groups"],
    );
    let m = model_with("scaling0", "vae/config.json", |v| v["scaling_factor"] = 0.into());
    check(&["--model", m.to_str().unwrap(), "--prompt", "x"], &["scaling_factor", "0"]);
    // Found by the fuzz tests: each panicked (overflow) or aborted (an allocation of 2^55 bytes).
    let m = model_with("offset-min", "scheduler/scheduler_config.json", |v| {
        v["steps_offset"] = i64::MIN.into()
    });
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x", "--scheduler", "ddim"],
        &["steps_offset", "from 0 to"],
    );
    let m = model_with("train-steps", "scheduler/scheduler_config.json", |v| {
        v["num_train_timesteps"] = 9007199254740993u64.into()
    });
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["num_train_timesteps", "from 2 to 100000"],
    );
    let m = model_with("padding", "unet/config.json", |v| v["downsample_padding"] = u64::MAX.into());
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["downsample_padding", "0 or 1"],
    );
}

/// Regression (hardening issue): 1000 steps with `steps_offset` 1 (leading spacing) put a
/// timestep past the training schedule; DDIM / DDPM / PNDM indexed out of bounds and panicked.
#[test]
fn steps_past_the_training_schedule_are_refused() {
    for s in ["ddim", "ddpm", "pndm"] {
        check(
            &["--model", &tiny(), "--prompt", "x", "--steps", "1000", "--scheduler", s],
            &["num_inference_steps = 1000", "past the last training timestep 999"],
        );
    }
    // dpm++2m and lms ended in NaN at step 2 (the leading schedule repeats a noise level and
    // both divide by the difference); now refused up front with the step count that works.
    for s in ["dpm++2m", "lms"] {
        check(
            &[
                "--model",
                &tiny(),
                "--prompt",
                "x",
                "--steps",
                "1000",
                "--scheduler",
                s,
                "--spacing",
                "leading",
            ],
            &["num_inference_steps = 1000", "repeats the noise level", "at most"],
        );
    }
}

fn load_run_ok(dir: &Path) -> bool {
    diffusion_scope::trace::load_run(dir).is_ok_and(|r| r.meta.prompt == "x")
}

/// Regression (hardening issue): `--out` naming a file was refused only after the whole run,
/// and a folder holding an earlier run was overwritten file by file (a cancelled run kept the
/// old image.png). Now both are checked first, and `--overwrite` replaces the folder whole.
#[test]
fn out_is_checked_before_the_run_and_replaced_whole() {
    let dir = tempdir("out-checks");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let run = |out: &Path, extra: &[&str]| {
        bin()
            .args(["generate", "--model", &tiny(), "--prompt", "x", "--steps", "2", "--quiet", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let t0 = std::time::Instant::now();
    let out = run(&file, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not a folder"), "{stderr}");
    assert!(t0.elapsed().as_secs() < 5, "refused before loading anything");

    // A folder with files that are not a run's is never replaced, not even with --overwrite.
    let other = dir.join("someone-elses");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let out = run(&other, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("notes.txt"), "{stderr}");
    }
    assert!(other.join("notes.txt").is_file(), "nothing touched");

    // An earlier run needs --overwrite, and is then replaced whole.
    let folder = dir.join("earlier");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("image.png"), "the earlier run's image").unwrap();
    std::fs::write(folder.join("trace.json"), "{}").unwrap();
    let out = run(&folder, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(std::fs::read_to_string(folder.join("trace.json")).unwrap(), "{}", "nothing touched");

    let out = run(&folder, &["--overwrite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(load_run_ok(&folder), "the folder holds the new run");
    assert_ne!(std::fs::read(folder.join("image.png")).unwrap(), b"the earlier run's image");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Regression (hardening issue): a weights file that is not safetensors said only "header too
/// large", and a weight stored as I64 was silently cast. Both are refused, naming file / tensor.
#[test]
fn weight_files_are_checked_before_loading() {
    use candle_core::{DType, Device};
    let m = model_with("not-safetensors", "model_index.json", |_| {});
    std::fs::write(
        m.join("vae/diffusion_pytorch_model.safetensors"),
        b"PK\x03\x04 this is a zip archive",
    )
    .unwrap();
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["vae", "not a safetensors file"],
    );

    let m = model_with("i64-weight", "model_index.json", |_| {});
    let path = m.join("unet/diffusion_pytorch_model.safetensors");
    let mut all = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let key = "conv_in.bias".to_string();
    let t = all[&key].to_dtype(DType::I64).unwrap();
    all.insert(key, t);
    candle_core::safetensors::save(&all, &path).unwrap();
    check(&["--model", m.to_str().unwrap(), "--prompt", "x"], &["conv_in.bias", "I64"]);
}

/// Regression (hardening issue): `beta_end` 1.5 gave garbage with exit 0.
#[test]
fn betas_outside_the_unit_interval_are_refused() {
    let m = model_with("beta-end", "scheduler/scheduler_config.json", |v| v["beta_end"] = 1.5.into());
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x", "--steps", "2"],
        &["beta_end", "1.5", "(0, 1]"],
    );
    let m = model_with("beta-start", "scheduler/scheduler_config.json", |v| v["beta_start"] = (-0.1).into());
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x", "--steps", "2"],
        &["beta_start", "-0.1"],
    );
}

/// Regression (hardening issue): sizes nobody can allocate aborted the process (16 TB asked
/// for at 4000x4000 after 17 s; 100000 grew without bound; a UNet `sample_size` of 100000 and
/// `dataset --size 100000` aborted). Now refused before anything is allocated, naming the size
/// and the memory it would need (hundreds of terabytes and more here: no machine has them).
#[test]
fn sizes_nobody_can_allocate_are_refused_up_front() {
    for s in ["4000", "100000"] {
        let t0 = std::time::Instant::now();
        check(
            &["--model", &tiny(), "--prompt", "x", "--height", s, "--width", s],
            &[
                &format!("{s}x{s} pixels"),
                "need about",
                "iB of memory",
                "self-attention",
                "available",
            ],
        );
        assert!(t0.elapsed().as_secs() < 20, "{s}: refused only after {:?}", t0.elapsed());
    }
    let m = model_with("sample-size", "unet/config.json", |v| v["sample_size"] = 100000.into());
    check(
        &["--model", m.to_str().unwrap(), "--prompt", "x"],
        &["200000x200000 pixels", "sample_size 100000", "need about"],
    );
    let out_dir = tempdir("dataset-huge").join("ds");
    let out = bin()
        .args(["dataset", "--size", "100000", "--out", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("100000x100000 need about"), "{stderr}");
    assert!(!out_dir.exists(), "dataset created {} before refusing", out_dir.display());
}
