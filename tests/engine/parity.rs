//! Parity with diffusers on the tiny random-weight models in tests/fixtures (written by
//! tests/fixtures/make_fixtures.py): latents, x0 and model output after every step, the final
//! image, cross-attention maps per layer.

use crate::common::{Case, generate, load_model, rel_err};
use diffusion_scope::types::CaptureMode;

const TOL: f64 = 1e-4;

const SAMPLERS: &[&str] = &[
    "ddim",
    "ddpm",
    "euler",
    "euler-a",
    "dpm++2m",
    "dpm++2m-karras",
    "pndm",
    "lms",
    "heun",
];

pub fn check_case(model: &str, case_name: &str) -> Vec<String> {
    check_case_with(model, case_name, &|_| {})
}

/// [`check_case`] with the case's run config changed by `edit` first (to show that a setting
/// matters: without it the case must fail).
pub fn check_case_with(model: &str, case_name: &str, edit: &dyn Fn(&mut diffusion_scope::pipeline::RunConfig)) -> Vec<String> {
    let sd = load_model(model);
    let case = Case::load(model, case_name);
    let mut cfg = case.run_config();
    if let Some(sp) = case.json["scheduler_overrides"]["timestep_spacing"].as_str() {
        cfg.spacing = Some(sp.parse().unwrap());
    }
    edit(&mut cfg);
    let with_attn = case.tensors.keys().any(|k| k.starts_with("attn."));
    cfg.attention = if with_attn { CaptureMode::Full } else { CaptureMode::None };
    let out = generate(&sd, &cfg);
    let mut failures = Vec::new();
    let mut fail = |msg: String| failures.push(format!("{model}/{case_name}: {msg}"));

    let ref_t: Vec<f64> = case.json["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    if out.meta.timesteps.len() != ref_t.len() || out.meta.timesteps.iter().zip(&ref_t).any(|(a, b)| (a - b).abs() > 1e-3) {
        fail(format!("timesteps {:?} != {:?}", out.meta.timesteps, ref_t));
        return failures;
    }
    let ids: Vec<u32> = case.json["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    if out.meta.token_ids != ids {
        fail(format!("token ids {:?} != {:?}", out.meta.token_ids, ids));
    }
    for (name, get) in [
        (
            "latents",
            (|s: &diffusion_scope::trace::StepRecord| s.latents.clone()) as fn(&_) -> Vec<f32>,
        ),
        ("model_output", |s| s.model_output.clone()),
        ("x0", |s| s.x0.clone()),
    ] {
        let Some(reference) = case.get(name) else { continue };
        assert_eq!(reference.len(), out.steps.len(), "{name}: step count");
        for (i, r) in reference.iter().enumerate() {
            let e = rel_err(&get(&out.steps[i]), r);
            if e.is_nan() || e > TOL {
                fail(format!("{name} step {i}: relative error {e:.3e}"));
                break;
            }
        }
    }
    // Final image: within 1/255 of diffusers' float image.
    let max_diff = crate::common::image_max_diff(&out.image, &case.tensors["image"]);
    if max_diff > 1.0 / 255.0 + 1e-6 {
        fail(format!("image differs by up to {:.4} (> 1/255)", max_diff));
    }
    if with_attn {
        for (k, t) in case.tensors.iter().filter(|(k, _)| k.starts_with("attn.")) {
            let n = t.dim(0).unwrap();
            for i in 0..n {
                let r = t.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let Some(m) = out.steps[i].attention.iter().find(|m| &m.key == k) else {
                    fail(format!("no captured map {k}"));
                    break;
                };
                let e = rel_err(&m.data, &r);
                if e.is_nan() || e > TOL {
                    fail(format!("{k} step {i}: relative error {e:.3e}"));
                    break;
                }
            }
        }
        let n_ref = case.tensors.keys().filter(|k| k.starts_with("attn.")).count();
        if out.steps[0].attention.len() != n_ref {
            fail(format!("captured {} layers, diffusers has {n_ref}", out.steps[0].attention.len()));
        }
    }
    failures
}

pub fn check_model(model: &str) {
    let mut failures = Vec::new();
    for s in SAMPLERS {
        for g in ["1.0", "7.5"] {
            failures.extend(check_case(model, &format!("{s}_g{g}")));
        }
    }
    assert!(failures.is_empty(), "{} parity failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn sd1_every_sampler_matches_diffusers() {
    check_model("tiny-sd1");
}

#[test]
fn sd2_vpred_every_sampler_matches_diffusers() {
    check_model("tiny-sd2");
}

#[test]
fn sd1_attention_maps_match_diffusers() {
    let f = check_case("tiny-sd1", "attn_ddim_g7.5");
    assert!(f.is_empty(), "{}", f.join("\n"));
}

#[test]
fn sd2_non_square_attention_maps_match_diffusers() {
    let f = check_case("tiny-sd2", "attn_ddim_g7.5");
    assert!(f.is_empty(), "{}", f.join("\n"));
}

/// The probe only reads: a run with full capture is bit-identical to one without.
#[test]
fn capture_does_not_change_the_math() {
    let sd = load_model("tiny-sd1");
    let case = Case::load("tiny-sd1", "euler-a_g7.5");
    let mut cfg = case.run_config();
    let mut runs = Vec::new();
    for mode in [CaptureMode::None, CaptureMode::Aggregate, CaptureMode::Full] {
        cfg.attention = mode;
        runs.push(generate(&sd, &cfg));
    }
    for r in &runs[1..] {
        for (a, b) in r.steps.iter().zip(&runs[0].steps) {
            assert_eq!(a.latents, b.latents, "step {}", a.index);
            assert_eq!(a.model_output, b.model_output);
        }
        assert_eq!(r.image, runs[0].image);
    }
    assert!(runs[0].steps[0].attention.is_empty());
    // Aggregate = per-resolution mean of the full maps.
    let full = &runs[2].steps[3].attention;
    for agg in &runs[1].steps[3].attention {
        let same: Vec<_> = full.iter().filter(|m| m.height == agg.height && m.width == agg.width).collect();
        assert!(!same.is_empty());
        let mean: Vec<f32> = (0..agg.data.len())
            .map(|i| same.iter().map(|m| m.data[i]).sum::<f32>() / same.len() as f32)
            .collect();
        assert!(rel_err(&agg.data, &mean) < 1e-6, "{}", agg.key);
        // Each row of a softmax map sums to 1.
        let row: f32 = agg.data[..agg.tokens].iter().sum();
        assert!((row - 1.0).abs() < 1e-4, "row sum {row}");
    }
}

/// A CFG pair split into two halves run at once (one per thread, `UNet::forward_added` on
/// a multi-threaded pool) gives the same bits as the whole batch in one pass (a one-thread
/// pool, where nothing is split): latents, model outputs, attention maps and image.
#[test]
fn split_cfg_batch_matches_one_pass_bit_for_bit() {
    let sd = load_model("tiny-sd1");
    let mut cfg = Case::load("tiny-sd1", "ddim_g7.5").run_config();
    cfg.attention = CaptureMode::Full;
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| generate(&sd, &cfg))
    };
    let (split, whole) = (on(2), on(1));
    assert_eq!(split.steps.len(), whole.steps.len());
    for (a, b) in split.steps.iter().zip(&whole.steps) {
        assert_eq!(a.latents, b.latents, "step {}", a.index);
        assert_eq!(a.model_output, b.model_output, "step {}", a.index);
        assert_eq!(a.attention.len(), b.attention.len());
        assert!(!a.attention.is_empty());
        for (ma, mb) in a.attention.iter().zip(&b.attention) {
            assert_eq!((&ma.key, &ma.data), (&mb.key, &mb.data), "step {}", a.index);
        }
    }
    assert_eq!(split.image, whole.image);
}

/// `--init-latents` with the noise diffusers drew gives the same run as the seed.
#[test]
fn init_latents_file_reproduces_the_seeded_run() {
    let sd = load_model("tiny-sd1");
    let case = Case::load("tiny-sd1", "ddim_g7.5");
    let cfg = case.run_config();
    let dir = tempdir("init-latents");
    let path = dir.join("noise.safetensors");
    let init = case.tensors["init_latents"].clone();
    candle_core::safetensors::save(&std::collections::HashMap::from([("latents".to_string(), init)]), &path).unwrap();
    let seeded = generate(&sd, &cfg);
    let mut cfg2 = cfg.clone();
    cfg2.init_latents = diffusion_scope::pipeline::InitLatents::File(path);
    cfg2.seed = 999_999; // must not matter for a deterministic sampler
    let from_file = generate(&sd, &cfg2);
    for (a, b) in seeded.steps.iter().zip(&from_file.steps) {
        let e = rel_err(&a.latents, &b.latents);
        assert!(e < 1e-5, "step {}: {e:.3e}", a.index);
    }
}

/// A fresh directory, unique per call (tests run in parallel in one process).
pub fn tempdir(name: &str) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("diffusion-scope-test-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Without `--scheduler` the run uses the model's own scheduler class, as a diffusers
/// pipeline does (tiny-sd1 ships PNDM's config, tiny-sd2 DDIM's).
#[test]
fn default_sampler_is_the_models_own() {
    for (model, case_name, expected) in [("tiny-sd1", "pndm_g7.5", "pndm"), ("tiny-sd2", "ddim_g1.0", "ddim")] {
        let sd = load_model(model);
        let case = Case::load(model, case_name);
        let mut cfg = case.run_config();
        cfg.sampler = None;
        let out = generate(&sd, &cfg);
        assert_eq!(out.meta.sampler, expected);
        let reference = case.get("latents").unwrap();
        let e = rel_err(&out.steps.last().unwrap().latents, reference.last().unwrap());
        assert!(e <= TOL, "{model}: {e:.3e}");
    }
}

/// Initial latents given in memory and prompt embeddings given as plain data (what
/// interpolation and semantic directions pass) reproduce the ordinary run bit for bit.
#[test]
fn in_memory_latents_and_embeddings_reproduce_the_run() {
    use diffusion_scope::pipeline::{self, InitLatents};
    let sd = load_model("tiny-sd1");
    let case = Case::load("tiny-sd1", "ddim_g7.5");
    let cfg = case.run_config();
    let seeded = generate(&sd, &cfg);
    let noise = diffusion_scope::sampling::NoiseSource::randn(
        &mut diffusion_scope::sampling::rng::TorchRng::new(cfg.seed),
        seeded.meta.latent_shape.iter().product(),
    );
    let cond = pipeline::encode_prompt(&sd, &cfg.prompt, &cfg.negative_prompt, cfg.guided(&sd), None).unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.init_latents = InitLatents::Values(noise);
    cfg2.embeddings = Some(cond.embeddings().unwrap());
    cfg2.seed = 12_345; // must not matter: the noise is given
    let given = generate(&sd, &cfg2);
    assert_eq!(given.meta.init_latents, "given in memory");
    for (a, b) in seeded.steps.iter().zip(&given.steps) {
        assert_eq!(a.latents, b.latents, "step {}", a.index);
    }
    assert_eq!(seeded.image, given.image);
    // Embeddings of the wrong size are refused with both sizes named.
    let mut bad = cfg.clone();
    let mut e = cond.embeddings().unwrap();
    e.dim += 1;
    bad.embeddings = Some(e);
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let err = pipeline::run(&sd, "test", &bad, &cancel, &mut |_| {}).err().expect("refused");
    assert!(err.to_string().contains("prompt embeddings"), "{err}");
}
