//! Replays reference trajectories recorded from diffusers (tests/fixtures/schedulers/
//! make_scheduler_refs.py) and checks config handling.

use serde_json::{Value, json};

use super::super::config::SchedulerConfig;
use super::super::noise::{NoiseSource, ReplayNoise};
use super::super::{ExpVariant, SamplerKind, SamplerOptions, TimestepSpacing, build_sampler, schedule};

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers/scheduler_refs.json");
    let text = std::fs::read_to_string(path).expect("run tests/fixtures/schedulers/make_scheduler_refs.py");
    serde_json::from_str(&text).unwrap()
}

fn unhex(v: &Value) -> Vec<f32> {
    let s = v.as_str().expect("hex string");
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// ||a - b|| / ||b|| (b the reference).
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

/// The fake model of the fixture, in float32 as torch computes it.
fn fake_model(x: &[f32], t: f64) -> Vec<f32> {
    let tt = (t as f32) / 300.0;
    x.iter().map(|&v| 0.9 * v + 0.1 * (v * 3.0 + tt).sin()).collect()
}

struct Counting {
    inner: ReplayNoise,
    draws: usize,
}
impl NoiseSource for Counting {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        self.draws += 1;
        self.inner.randn(n)
    }
}

const HARD: f64 = 1e-4;

#[test]
fn replays_diffusers_trajectories() {
    let fx = fixture();
    let mut report = Vec::new();
    let mut worst = 0.0f64;
    for case in fx["cases"].as_array().unwrap() {
        let sampler: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
        let name = format!(
            "{}/{}{}",
            case["sampler"].as_str().unwrap(),
            case["config_name"].as_str().unwrap(),
            {
                let o = &case["options"];
                let mut s = String::new();
                if o["karras"].as_bool() == Some(true) {
                    s.push_str("+karras");
                }
                if let Some(e) = o["eta"].as_f64() {
                    s.push_str(&format!("+eta{e}"));
                }
                s
            }
        );
        let config: SchedulerConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let options = SamplerOptions {
            karras: case["options"]["karras"].as_bool().unwrap_or(false),
            spacing: None,
            eta: case["options"]["eta"].as_f64().unwrap_or(0.0) as f32,
        };
        let steps = case["steps_count"].as_u64().unwrap() as usize;
        let mut s = build_sampler(sampler, &config, steps, &options).unwrap();
        assert_eq!(s.settings_json()["class_name"], case["class"], "{name}");
        let ref_ts: Vec<f64> = case["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // exact, except Karras timesteps (float32 log-sigma table, ~1e-7 relative)
        let tol = if options.karras { 1e-6 } else { 0.0 };
        assert_eq!(s.timesteps().len(), ref_ts.len(), "{name}: loop length");
        for (a, b) in s.timesteps().iter().zip(&ref_ts) {
            assert!(
                (a - b).abs() <= tol * b.abs(),
                "{name}: timesteps {:?} vs {ref_ts:?}",
                s.timesteps()
            );
        }
        let ref_init = case["init_noise_sigma"].as_f64().unwrap();
        let init_err = ((s.init_noise_sigma() as f64 - ref_init) / ref_init).abs();
        assert!(init_err < 1e-6, "{name}: init_noise_sigma {} vs {ref_init}", s.init_noise_sigma());

        let ref_steps = case["steps"].as_array().unwrap();
        let noise: Vec<Vec<f32>> = ref_steps
            .iter()
            .flat_map(|st| st["noise"].as_array().unwrap().iter().map(unhex))
            .collect();
        let n_noise = noise.len();
        let mut rng = Counting {
            inner: ReplayNoise::new(noise),
            draws: 0,
        };
        let mut x = unhex(&case["x_T"]);
        let mut m = [0.0f64; 4]; // input, output, prev, x0
        for (i, st) in ref_steps.iter().enumerate() {
            let t = s.timesteps()[i];
            let input = s.scale_model_input(&x, i);
            m[0] = m[0].max(rel_err(&input, &unhex(&st["input"])));
            let eps = fake_model(&input, t);
            m[1] = m[1].max(rel_err(&eps, &unhex(&st["output"])));
            let before = rng.draws;
            let out = s.step(&eps, i, &x, &mut rng).unwrap();
            assert_eq!(
                rng.draws - before,
                st["noise"].as_array().unwrap().len(),
                "{name}: noise draws at iteration {i}"
            );
            m[2] = m[2].max(rel_err(&out.prev_sample, &unhex(&st["prev"])));
            if !st["x0"].is_null() {
                assert!(out.x0_from_scheduler, "{name}");
                m[3] = m[3].max(rel_err(&out.pred_original_sample, &unhex(&st["x0"])));
            } else {
                assert!(!out.x0_from_scheduler, "{name}");
            }
            assert!(!s.sigma(i).is_nan()); // +inf at zero terminal SNR
            x = out.prev_sample;
        }
        assert_eq!(rng.draws, n_noise, "{name}: all recorded noise consumed");
        let w = m.iter().copied().fold(0.0, f64::max);
        worst = worst.max(w);
        report.push(format!(
            "{name:<32} input {:.1e} output {:.1e} prev {:.1e} x0 {:.1e}",
            m[0], m[1], m[2], m[3]
        ));
        assert!(w <= HARD, "{name}: max relative error {w:.3e} > {HARD:e}\n{}", report.join("\n"));
    }
    eprintln!("{}\nworst relative error: {worst:.3e}", report.join("\n"));
}

#[test]
fn alphas_cumprod_match_torch() {
    let fx = fixture();
    let configs = fx["cases"].as_array().unwrap();
    for (key, hex) in fx["alphas_cumprod"].as_object().unwrap() {
        let (cfg_name, sampler) = key.split_once('/').unwrap();
        let case = configs.iter().find(|c| c["config_name"] == cfg_name).unwrap();
        let config: SchedulerConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let kind: SamplerKind = sampler.parse().unwrap();
        let rc = config.resolve(kind).unwrap();
        let ours = schedule::alphas_cumprod(&rc);
        let theirs = unhex(hex);
        let max_ulp_rel = ours.iter().zip(&theirs).map(|(a, b)| ((a - b) / b).abs()).fold(0.0f32, f32::max);
        eprintln!("{key}: max relative difference {max_ulp_rel:e}");
        assert!(max_ulp_rel < 1e-5, "{key}: {max_ulp_rel}");
    }
}

fn sd15() -> SchedulerConfig {
    SchedulerConfig::from_json_str(
        r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null,
            "clip_sample": false}"#,
    )
    .unwrap()
}

/// `check(input, expected)`: builds `sampler` from a JSON config with options and 10 steps;
/// expected is Ok(first timesteps) or Err(substring of the error message).
fn check(sampler: &str, config: Value, options: SamplerOptions, expected: Result<&[f64], &str>) {
    let kind: SamplerKind = sampler.parse().unwrap();
    let cfg = SchedulerConfig::from_json_str(&config.to_string()).unwrap();
    let got = build_sampler(kind, &cfg, 10, &options);
    match (got, expected) {
        (Ok(s), Ok(ts)) => assert_eq!(&s.timesteps()[..ts.len()], ts, "{sampler} {config}"),
        (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{sampler} {config}: error {e:?} lacks {msg:?}"),
        (Ok(s), Err(msg)) => panic!("{sampler} {config}: expected error {msg:?}, got timesteps {:?}", s.timesteps()),
        (Err(e), Ok(_)) => panic!("{sampler} {config}: unexpected error {e}"),
    }
}

#[test]
fn config_cases() {
    let d = SamplerOptions::default;
    let karras = SamplerOptions {
        karras: true,
        ..Default::default()
    };
    // class defaults when switching: DDIM is leading, Euler linspace
    check("ddim", json!({"steps_offset": 1}), d(), Ok(&[901.0, 801.0]));
    check("euler", json!({"steps_offset": 1}), d(), Ok(&[999.0, 888.0]));
    check(
        "pndm",
        json!({"skip_prk_steps": true, "steps_offset": 1}),
        d(),
        Ok(&[901.0, 801.0, 801.0, 701.0]),
    );
    check("dpm++2m", json!({}), d(), Ok(&[999.0, 899.0]));
    check("heun", json!({}), d(), Ok(&[999.0, 888.0, 888.0]));
    check("ddim", json!({"timestep_spacing": "trailing"}), d(), Ok(&[999.0, 899.0]));
    // options override the config's spacing
    check(
        "ddim",
        json!({}),
        SamplerOptions {
            spacing: Some(TimestepSpacing::Trailing),
            ..Default::default()
        },
        Ok(&[999.0]),
    );
    // keys of other classes are ignored; unknown keys too
    check("euler", json!({"thresholding": true, "foo": 3}), d(), Ok(&[999.0]));
    // errors naming key and value
    check("ddim", json!({"thresholding": true}), d(), Err("thresholding = true"));
    check("ddim", json!({"beta_schedule": "sigmoid"}), d(), Err("beta_schedule = \"sigmoid\""));
    check(
        "pndm",
        json!({"prediction_type": "sample"}),
        d(),
        Err("prediction_type = \"sample\""),
    );
    check("ddim", json!({"prediction_type": "flow"}), d(), Err("prediction_type"));
    check("euler", json!({"interpolation_type": "log_linear"}), d(), Err("interpolation_type"));
    check("euler", json!({"use_exponential_sigmas": true}), d(), Err("use_exponential_sigmas"));
    check("ddpm", json!({"variance_type": "learned_range"}), d(), Err("variance_type"));
    check("ddim", json!({"timestep_spacing": "weird"}), d(), Err("timestep_spacing"));
    check("ddim", json!({"num_train_timesteps": "many"}), d(), Err("num_train_timesteps"));
    check("ddim", json!({"trained_betas": [0.1, 0.2]}), d(), Err("trained_betas"));
    check("ddim", json!({}), karras.clone(), Err("karras"));
    check("euler-a", json!({}), karras.clone(), Err("karras"));
    check(
        "euler",
        json!({}),
        SamplerOptions {
            eta: 0.3,
            ..Default::default()
        },
        Err("eta"),
    );
    check(
        "ddim",
        json!({}),
        SamplerOptions {
            eta: -1.0,
            ..Default::default()
        },
        Err("eta"),
    );
    check(
        "pndm",
        json!({}),
        SamplerOptions {
            spacing: Some(TimestepSpacing::Exponential {
                variant: ExpVariant::Early,
                gamma: 60.0,
                stretched: false,
            }),
            ..Default::default()
        },
        Err("exponential"),
    );
    check(
        "euler",
        json!({}),
        SamplerOptions {
            karras: true,
            spacing: Some(TimestepSpacing::Exponential {
                variant: ExpVariant::Early,
                gamma: 60.0,
                stretched: false,
            }),
            ..Default::default()
        },
        Err("karras"),
    );
    // karras from the config file itself
    check(
        "euler",
        json!({"use_karras_sigmas": true, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
        d(),
        Ok(&[999.0]),
    );
    // a DPM config written by python with -Infinity
    let cfg = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "solver_order": 2}"#,
    )
    .unwrap();
    assert!(build_sampler(SamplerKind::DpmPP2M, &cfg, 10, &SamplerOptions::default()).is_ok());
    // steps bounds
    for n in [0usize, 1001] {
        let e = build_sampler(SamplerKind::Euler, &sd15(), n, &SamplerOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("inference steps"), "{e}");
    }
    // _use_default_values: listed keys fall back to the class default
    let cfg = SchedulerConfig::from_json_str(r#"{"timestep_spacing": "trailing", "_use_default_values": ["timestep_spacing"]}"#).unwrap();
    assert_eq!(
        build_sampler(SamplerKind::Ddim, &cfg, 10, &SamplerOptions::default())
            .unwrap()
            .timesteps()[0],
        900.0
    );
    assert!(SchedulerConfig::from_json_str("[1,2]").is_err());
    assert!(SchedulerConfig::from_json_str("{").is_err());
}

#[test]
fn sampler_names() {
    for k in SamplerKind::ALL {
        assert_eq!(k.as_str().parse::<SamplerKind>().unwrap(), k);
    }
    let e = "dpm2".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(e.contains("dpm++2m") && e.contains("euler-a"), "{e}");
    assert_eq!(
        "exponential-latter:30".parse::<TimestepSpacing>().unwrap(),
        TimestepSpacing::Exponential {
            variant: ExpVariant::Latter,
            gamma: 30.0,
            stretched: false
        }
    );
    let s = "exponential-stretched-early:7".parse::<TimestepSpacing>().unwrap();
    assert_eq!(
        s,
        TimestepSpacing::Exponential {
            variant: ExpVariant::Early,
            gamma: 7.0,
            stretched: true
        }
    );
    assert_eq!(s.name().parse::<TimestepSpacing>().unwrap(), s);
    assert_eq!(
        "exp-early".parse::<TimestepSpacing>().unwrap(),
        TimestepSpacing::Exponential {
            variant: ExpVariant::Early,
            gamma: 60.0,
            stretched: false
        }
    );
    assert!("linspace:3".parse::<TimestepSpacing>().is_err());
}

/// The authors' `time_step_sampling` in Python (X-Diffusion, DF-CAM_auc.py), run as written.
fn authors_time_step_sampling(early: bool, n: usize, lamda: usize) -> Vec<i64> {
    let alpha = std::f64::consts::E.powf(1000f64.ln() / (n + lamda) as f64);
    if early {
        let mut ts: Vec<i64> = (0..n).map(|i| 1000 - alpha.powf((i + 1 + lamda) as f64) as i64).collect();
        ts.insert(0, 999);
        ts.pop();
        ts
    } else {
        let mut ts: Vec<i64> = (0..n).map(|i| alpha.powf((i + 1 + lamda) as f64) as i64).collect();
        ts.sort();
        ts.reverse();
        if ts[0] == 1000 {
            ts[0] = 999;
        }
        ts
    }
}

#[test]
fn exponential_spacing_is_the_authors() {
    // Values printed by the authors' function in Python for (30, 30) and (30, 60).
    let early_30_30 = [
        999, 965, 961, 956, 950, 944, 937, 930, 921, 911, 901, 888, 875, 859, 842, 823, 801, 777, 749, 719, 684, 646, 602, 554, 499, 438,
        370, 293, 206, 109,
    ];
    let latter_30_30 = [
        999, 891, 794, 707, 630, 562, 501, 446, 398, 354, 316, 281, 251, 223, 199, 177, 158, 141, 125, 112, 99, 89, 79, 70, 63, 56, 50, 44,
        39, 35,
    ];
    let latter_30_60 = [
        999, 926, 857, 794, 735, 681, 630, 584, 541, 501, 464, 429, 398, 368, 341, 316, 292, 271, 251, 232, 215, 199, 184, 171, 158, 146,
        135, 125, 116, 107,
    ];
    assert_eq!(schedule::exponential_timesteps(1000, 30, ExpVariant::Early, 30.0), early_30_30);
    assert_eq!(schedule::exponential_timesteps(1000, 30, ExpVariant::Latter, 30.0), latter_30_30);
    assert_eq!(schedule::exponential_timesteps(1000, 30, ExpVariant::Latter, 60.0), latter_30_60);
    for (n, lamda) in [(10, 60), (20, 5), (50, 30), (1, 10), (100, 200), (7, 1)] {
        for (early, variant) in [(true, ExpVariant::Early), (false, ExpVariant::Latter)] {
            assert_eq!(
                schedule::exponential_timesteps(1000, n, variant, lamda as f64),
                authors_time_step_sampling(early, n, lamda),
                "{variant:?} n={n} lambda={lamda}"
            );
        }
    }
    // The sampler runs exactly those timesteps (DDIM steps to the next listed one).
    let opts = |spacing: &str| SamplerOptions {
        spacing: Some(spacing.parse().unwrap()),
        ..Default::default()
    };
    let s = build_sampler(SamplerKind::Ddim, &sd15(), 30, &opts("exponential-latter:30")).unwrap();
    let want: Vec<f64> = latter_30_30.iter().map(|&t| t as f64).collect();
    assert_eq!(s.timesteps(), &want[..]);
    // lambda = 0 is the authors' "uniform": the scheduler's own spacing.
    let own = build_sampler(SamplerKind::Ddim, &sd15(), 30, &SamplerOptions::default()).unwrap();
    let zero = build_sampler(SamplerKind::Ddim, &sd15(), 30, &opts("exponential-early:0")).unwrap();
    assert_eq!(own.timesteps(), zero.timesteps());
    // A lambda too small for the step count repeats timesteps: refused with the reason.
    let e = build_sampler(SamplerKind::Euler, &sd15(), 50, &opts("exponential-latter:2"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("repeat") && e.contains("exponential-latter:2"), "{e}");
}

#[test]
fn stretched_exponential_spacing() {
    for variant in [ExpVariant::Early, ExpVariant::Latter] {
        for (n, gamma) in [(10usize, 60.0), (50, 60.0), (10, 0.0), (999, 60.0), (1000, 5.0), (1, 60.0)] {
            let ts = schedule::stretched_exponential_timesteps(1000, n, variant, gamma);
            assert_eq!(ts.len(), n);
            assert_eq!(ts[0], 999, "{variant:?} {n} {gamma}: {ts:?}");
            if n > 1 {
                assert_eq!(ts[n - 1], 0, "{variant:?} {n} {gamma}");
            }
            assert!(ts.windows(2).all(|w| w[0] > w[1]), "{variant:?} {n} {gamma}: {ts:?}");
        }
        let ts = schedule::stretched_exponential_timesteps(1000, 10, variant, 60.0);
        let first_gap = ts[0] - ts[1];
        let last_gap = ts[8] - ts[9];
        match variant {
            ExpVariant::Early => assert!(first_gap < last_gap, "{ts:?}"),
            ExpVariant::Latter => assert!(first_gap > last_gap, "{ts:?}"),
        }
    }
    // every sampler except PNDM runs with it
    for k in SamplerKind::ALL {
        let opts = SamplerOptions {
            spacing: Some(TimestepSpacing::Exponential {
                variant: ExpVariant::Latter,
                gamma: 60.0,
                stretched: true,
            }),
            ..Default::default()
        };
        let r = build_sampler(k, &sd15(), 10, &opts);
        if matches!(k, SamplerKind::Pndm | SamplerKind::Lcm) {
            assert!(r.is_err());
            continue;
        }
        let mut s = r.unwrap();
        let mut x = vec![0.5f32; 8];
        x.iter_mut().for_each(|v| *v *= s.init_noise_sigma());
        let mut noise = ReplayNoise::new((0..40).map(|_| vec![0.1f32; 8]));
        for i in 0..s.timesteps().len() {
            let inp = s.scale_model_input(&x, i);
            let eps = fake_model(&inp, s.timesteps()[i]);
            x = s.step(&eps, i, &x, &mut noise).unwrap().prev_sample;
        }
        assert!(x.iter().all(|v| v.is_finite()), "{k}");
    }
}

#[test]
fn step_order_and_lengths_are_checked() {
    let mut s = build_sampler(SamplerKind::Euler, &sd15(), 10, &SamplerOptions::default()).unwrap();
    let mut noise = ReplayNoise::new(Vec::<Vec<f32>>::new());
    assert!(s.step(&[0.0; 4], 1, &[0.0; 4], &mut noise).is_err());
    assert!(s.step(&[0.0; 3], 0, &[0.0; 4], &mut noise).is_err());
    assert!(s.step(&[0.0; 4], 0, &[1.0; 4], &mut noise).is_ok());
}

/// Leading spacing with as many steps as training timesteps repeats a noise level (the step
/// ratio rounds to 0 for DPM-Solver++, the first timestep is clamped for LMS): both solvers
/// divide by the difference and gave NaN at step 2. Refused with the largest count that works.
#[test]
fn repeated_noise_levels_refused() {
    let cfg = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "steps_offset": 1,
            "timestep_spacing": "leading", "set_alpha_to_one": false}"#,
    )
    .unwrap();
    let opts = SamplerOptions::default();
    for kind in [SamplerKind::DpmPP2M, SamplerKind::Lms] {
        let err = build_sampler(kind, &cfg, 1000, &opts)
            .err()
            .unwrap_or_else(|| panic!("{kind}: 1000 steps accepted"));
        let msg = err.to_string();
        assert!(msg.contains("repeats the noise level") && msg.contains("at most"), "{kind}: {msg}");
        let max: usize = msg.split("at most ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        let s = build_sampler(kind, &cfg, max, &opts).unwrap();
        assert!((0..max - 1).all(|i| s.sigma(i) > s.sigma(i + 1)), "{kind} at {max} steps");
        // (linspace at 1000 steps repeats timestep 500: round-half-even of 499.5 and 500.499)
        let trailing = SamplerOptions {
            spacing: Some(TimestepSpacing::Trailing),
            ..Default::default()
        };
        build_sampler(kind, &cfg, 1000, &trailing).unwrap_or_else(|e| panic!("{kind} trailing: {e}"));
    }
    // Euler takes a zero step without dividing by it: unchanged.
    build_sampler(SamplerKind::Euler, &cfg, 1000, &opts).unwrap();
}
