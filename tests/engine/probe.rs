//! Latent probing and model health (experiments::{interpolate, direction, ood, health}) on the
//! tiny SD 1.x model and the bundled model: interpolation endpoints are the plain runs, a
//! direction at alpha 0 is the plain run, reference images score as the reference, the health
//! check passes the bundled model and fails its zeroed copy, and the CLI's files and errors.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use diffusion_scope::analysis::probe::{self, PathKind, TimeVerdict};
use diffusion_scope::experiments::direction::{self, DirectionSettings, PromptPair};
use diffusion_scope::experiments::health::{self, HealthSettings};
use diffusion_scope::experiments::interpolate::{self, Endpoint, InterpolateSettings, Space};
use diffusion_scope::experiments::ood::{self, FitOptions, OodFitSettings, OodReference, OodScoreSettings};
use diffusion_scope::experiments::{ExperimentEvent, Stop};
use diffusion_scope::model::StableDiffusion;
use diffusion_scope::pipeline::RunConfig;
use diffusion_scope::trace::{RgbImage, save_png};
use diffusion_scope::types::CaptureMode;
use diffusion_scope::world;

use crate::common::{cli, generate, load_model};

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

fn interp(sd: &StableDiffusion, s: &InterpolateSettings) -> (interpolate::InterpolateReport, Option<Stop>, Vec<interpolate::InterpFrame>) {
    let mut frames = Vec::new();
    let (r, stopped) = interpolate::run(sd, "tiny-sd1", s, &no_cancel(), &mut |ev| {
        if let ExperimentEvent::InterpFrame(f) = ev {
            frames.push(*f);
        }
    })
    .unwrap();
    (r, stopped, frames)
}

fn plain(prompt: &str, seed: u64) -> RunConfig {
    RunConfig {
        prompt: prompt.into(),
        steps: 3,
        guidance: 4.0,
        seed,
        attention: CaptureMode::None,
        ..RunConfig::default()
    }
}

/// The first and last frames of a seed interpolation are the two seeds' plain runs, bit for
/// bit; slerp keeps the noise's norm where lerp dips.
#[test]
fn noise_interpolation_ends_are_the_plain_runs() {
    let sd = load_model("tiny-sd1");
    let s = InterpolateSettings {
        from: Endpoint::Seed(3),
        to: Endpoint::Seed(8),
        frames: 3,
        prompt: "a red circle".into(),
        steps: 3,
        guidance: 4.0,
        attention: CaptureMode::None,
        ..Default::default()
    };
    let (r, stopped, frames) = interp(&sd, &s);
    assert!(stopped.is_none());
    assert_eq!(r.space, Space::Noise);
    assert_eq!(r.path_used, PathKind::Slerp);
    assert_eq!(frames.len(), 3);
    for (frame, seed) in [(&frames[0], 3), (&frames[2], 8)] {
        let want = generate(&sd, &plain("a red circle", seed));
        let got = frame.run.as_ref().unwrap();
        assert_eq!(got.steps.last().unwrap().latents, want.steps.last().unwrap().latents, "seed {seed}");
        assert_eq!(frame.image, want.image);
    }
    // Unit noises of 1024 values: slerp's middle keeps the RMS, lerp's drops to about 1/sqrt(2).
    let mid = r.slerp_start_rms[1] / r.slerp_start_rms[0];
    assert!((mid - 1.0).abs() < 0.03, "slerp middle {mid}");
    let dip = r.lerp_start_rms[1] / r.lerp_start_rms[0];
    assert!((dip - 0.5f64.sqrt()).abs() < 0.05, "lerp middle {dip}");
    let sm = r.image_smoothness.as_ref().unwrap();
    assert_eq!(sm.steps.len(), 2);
    assert!(sm.max_over_mean >= 1.0);
}

/// Prompt interpolation: the ends are the prompts' plain runs. Image interpolation decodes
/// only; its ends are the VAE round trips of the two images.
#[test]
fn prompt_and_image_interpolation() {
    let sd = load_model("tiny-sd1");
    let s = InterpolateSettings {
        from: Endpoint::Prompt("a red circle".into()),
        to: Endpoint::Prompt("a blue square".into()),
        frames: 2,
        steps: 3,
        guidance: 4.0,
        seed: 5,
        attention: CaptureMode::None,
        ..Default::default()
    };
    let (r, _, frames) = interp(&sd, &s);
    assert_eq!(r.space, Space::Prompt);
    assert_eq!(frames[0].image, generate(&sd, &plain("a red circle", 5)).image);
    assert_eq!(frames[1].image, generate(&sd, &plain("a blue square", 5)).image);

    let dir = tempdir("interp-images");
    let paths: Vec<_> = (0..2)
        .map(|i| {
            let p = dir.join(format!("{i}.png"));
            let sample = world::sample(&world::WorldConfig::with_size(32), 1, i);
            sample.save_png(&p).unwrap();
            p
        })
        .collect();
    let s = InterpolateSettings {
        from: Endpoint::Image(paths[0].clone()),
        to: Endpoint::Image(paths[1].clone()),
        frames: 4,
        path: PathKind::Lerp,
        ..Default::default()
    };
    let (r, stopped, frames) = interp(&sd, &s);
    assert!(stopped.is_none());
    assert_eq!(r.space, Space::Image);
    assert_eq!(frames.len(), 4);
    assert!(frames.iter().all(|f| f.run.is_none() && f.image.width == 32));
    // An image interpolation is deterministic and its frames differ along the path.
    assert_ne!(frames[0].image, frames[3].image);
}

#[test]
fn interpolation_refuses_bad_ends() {
    let sd = load_model("tiny-sd1");
    for (from, to, want) in [
        (Endpoint::Seed(1), Endpoint::Seed(1), "identical"),
        (Endpoint::Seed(1), Endpoint::Prompt("x".into()), "one kind"),
        (
            Endpoint::Image("/nonexistent.png".into()),
            Endpoint::Image("/nope.png".into()),
            "nonexistent",
        ),
    ] {
        let s = InterpolateSettings {
            from,
            to,
            frames: 2,
            steps: 2,
            ..Default::default()
        };
        let err = interpolate::run(&sd, "tiny-sd1", &s, &no_cancel(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// A direction at alpha = 0 is the plain run, bit for bit; other alphas change the image.
#[test]
fn direction_at_alpha_zero_is_the_plain_run() {
    let sd = load_model("tiny-sd1");
    let s = DirectionSettings {
        prompts: vec!["a red circle".into()],
        pairs: vec![PromptPair {
            source: "a red circle".into(),
            target: "a blue circle".into(),
        }],
        alphas: vec![0.0, 1.5],
        seeds: vec![2],
        steps: 3,
        guidance: 4.0,
        attention: CaptureMode::None,
        detect: true,
        ..Default::default()
    };
    let mut images = Vec::new();
    let (r, stopped) = direction::run(&sd, "tiny-sd1", &s, &no_cancel(), &mut |ev| {
        if let ExperimentEvent::DirectionImage(d) = ev {
            images.push(*d);
        }
    })
    .unwrap();
    assert!(stopped.is_none());
    assert_eq!(images.len(), 2);
    let want = generate(&sd, &plain("a red circle", 2));
    assert_eq!(images[0].image, want.image);
    assert_eq!(images[0].run.steps.last().unwrap().latents, want.steps.last().unwrap().latents);
    assert_ne!(images[1].image, want.image);
    assert_eq!(r.rows.len(), 2);
    assert_eq!(r.rows[0].image_change, 0.0);
    assert!(r.rows[1].image_change > 0.0);
    assert!(r.relative_norm > 0.0);
    // A zero direction is refused.
    let zero = DirectionSettings {
        pairs: vec![PromptPair {
            source: "a".into(),
            target: "a".into(),
        }],
        ..s
    };
    assert!(direction::run(&sd, "tiny-sd1", &zero, &no_cancel(), &mut |_| {}).is_err());
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ds-probe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_renders(dir: &Path, n: u64, size: usize, seed: u64) {
    for i in 0..n {
        world::sample(&world::WorldConfig::with_size(size), seed, i)
            .save_png(dir.join(format!("{i:03}.png")))
            .unwrap();
    }
}

/// The reference's own fitted images score 1 on average (the mean squared z-score) and 0 on
/// the patch score when every patch is in the bank; the thresholds are the held-out quantile;
/// another VAE's reference is refused; images of another size are resized and say so.
#[test]
fn ood_reference_scores_its_own_images() {
    let sd = load_model("tiny-sd1");
    let dir = tempdir("ood");
    write_renders(&dir, 25, 32, 4);
    let files = ood::image_files(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(files.len(), 25);
    let options = FitOptions {
        bank: 1 << 20,
        ..FitOptions::default()
    };
    let (r, stopped) = ood::fit(
        &sd,
        "tiny-sd1",
        &OodFitSettings {
            images: files.clone(),
            options: options.clone(),
        },
        &no_cancel(),
        &mut |_| {},
    )
    .unwrap();
    assert!(stopped.is_none(), "{stopped:?}");
    let reference = r.reference.unwrap();
    assert_eq!(reference.held_out_diag.len(), 5);
    assert_eq!(reference.diag.count, 20);
    let q = probe::quantile(&reference.held_out_diag, 0.95).unwrap();
    assert_eq!(reference.threshold.diag, q);
    // Score the 20 fitted images (every 5th file was held out).
    let fitted: Vec<_> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 4)
        .map(|(_, f)| f.clone())
        .collect();
    let (scores, _) = ood::score(
        &sd,
        &OodScoreSettings {
            reference: Box::new(reference.clone()),
            images: fitted,
        },
        &no_cancel(),
        &mut |_| {},
    )
    .unwrap();
    let mean = scores.scores.iter().map(|s| s.score.diag).sum::<f64>() / 20.0;
    assert!((mean - 1.0).abs() < 1e-4, "mean diag score of the fitted images {mean}");
    assert!(scores.scores.iter().all(|s| s.score.patch == 0.0 && s.resized_from.is_none()));

    // The file round trip keeps every number.
    let path = dir.join("ref.json");
    reference.write(&path).unwrap();
    assert!(OodReference::read(&path).unwrap() == reference, "the reference changed in its file");

    // Another size: resized, and said so.
    let big = dir.join("big.png");
    save_png(
        &RgbImage {
            width: 48,
            height: 40,
            pixels: vec![200; 48 * 40 * 3],
        },
        &big,
    )
    .unwrap();
    let (scores, _) = ood::score(
        &sd,
        &OodScoreSettings {
            reference: Box::new(reference.clone()),
            images: vec![big],
        },
        &no_cancel(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(scores.scores[0].resized_from, Some((48, 40)));

    // The bundled model's VAE is another one.
    let bundled = StableDiffusion::load(
        &diffusion_scope::bundled_model_path(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let err = ood::score(
        &bundled,
        &OodScoreSettings {
            reference: Box::new(reference),
            images: files,
        },
        &no_cancel(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another one"), "{err}");
}

/// The bundled model's output depends on t; the copy with its time embedding zeroed does not.
#[test]
fn health_passes_the_bundled_model_and_fails_its_zeroed_copy() {
    let sd = StableDiffusion::load(
        &diffusion_scope::bundled_model_path(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let s = HealthSettings {
        prompt: "a red circle".into(),
        seeds: vec![0],
        points: 9,
        ..HealthSettings::default()
    };
    let (r, stopped) = health::run(&sd, "bundled", &s, &no_cancel(), &mut |_| {}).unwrap();
    assert!(stopped.is_none());
    assert_eq!(r.verdict, Some(TimeVerdict::Healthy), "{:?}", r.response);
    assert_eq!(r.zeroed_verdict, Some(TimeVerdict::DeadEmbedding));
    assert_eq!(r.zeroed.as_ref().unwrap().total_change, 0.0);
    let c = &r.schedule;
    assert!(c.alpha_bar_decreasing);
    assert!(c.mismatches.is_empty(), "{:?}", c.mismatches);
    assert!(
        c.log_snr_first > 5.0 && c.log_snr_last < -5.0,
        "{} {}",
        c.log_snr_first,
        c.log_snr_last
    );
    // The bundled DDIM at 30 leading steps starts at 958, and says so.
    assert_eq!(c.sampler_first_timestep, 958.0);
    assert!(c.notes.iter().any(|n| n.contains("958")), "{:?}", c.notes);
}

/// A sampler config of another schedule or prediction type is flagged.
#[test]
fn health_flags_a_mismatched_sampler_config() {
    let sd = load_model("tiny-sd1");
    let dir = tempdir("health");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(crate::common::fixtures().join("tiny-sd1/scheduler/scheduler_config.json")).unwrap())
            .unwrap();
    cfg["prediction_type"] = "v_prediction".into();
    cfg["beta_schedule"] = "linear".into();
    let path = dir.join("scheduler_config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let s = HealthSettings {
        scheduler_config: Some(path),
        ..HealthSettings::default()
    };
    let c = health::schedule_check(&sd, &s).unwrap();
    assert_eq!(c.mismatches.len(), 2, "{:?}", c.mismatches);
    assert!(c.mismatches[0].contains("VPrediction") && c.mismatches[1].contains("alpha_bar"));
}

#[test]
fn probe_cli_writes_its_files_and_refuses_bad_input() {
    let model = crate::common::fixtures().join("tiny-sd1");
    let model = model.to_str().unwrap();
    let out = tempdir("cli");
    let interp = out.join("interp");
    let o = cli(&[
        "interpolate",
        "--model",
        model,
        "--from",
        "1",
        "--to",
        "2",
        "--frames",
        "3",
        "--steps",
        "2",
        "--prompt",
        "a red circle",
        "--out",
        interp.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "strip.png",
        "interpolation.apng",
        "report.json",
        "frames/frame_002.png",
        "smoothness.png",
    ] {
        assert!(interp.join(f).is_file(), "{f}");
    }
    let apng = std::fs::read(interp.join("interpolation.apng")).unwrap();
    assert!(apng.windows(4).any(|w| w == b"acTL"), "not animated");
    // Identical ends, bad alpha ranges: clear errors.
    let o = cli(&[
        "interpolate",
        "--model",
        model,
        "--from",
        "1",
        "--to",
        "1",
        "--out",
        out.join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("identical"));
    let o = cli(&[
        "direction",
        "--model",
        model,
        "--prompt",
        "a",
        "--from",
        "b",
        "--to",
        "c",
        "--alpha",
        "2..-2:5",
        "--out",
        out.join("y").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--alpha"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // ood fit / score with the JSON the issue asks for.
    let imgs = out.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    write_renders(&imgs, 20, 32, 6);
    let reference = out.join("ref.json");
    let o = cli(&[
        "ood",
        "fit",
        "--model",
        model,
        "--images",
        imgs.to_str().unwrap(),
        "--out",
        reference.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = out.join("scores.json");
    let o = cli(&[
        "ood",
        "score",
        "--model",
        model,
        "--reference",
        reference.to_str().unwrap(),
        "--images",
        imgs.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["scores"].as_object().unwrap().len(), 20);
    assert!(v["scores"]["000.png"].is_f64() && v["threshold"].is_f64());
    // A file that is not a reference.
    let o = cli(&[
        "ood",
        "score",
        "--model",
        model,
        "--reference",
        json.to_str().unwrap(),
        "--images",
        imgs.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an OOD reference"));

    let h = out.join("health");
    let o = cli(&["health", "--model", model, "--points", "5", "--out", h.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(h.join("time_response.png").is_file() && h.join("report.json").is_file());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("time embedding zeroed (control)") && stdout.contains("dead embedding"),
        "{stdout}"
    );
}
