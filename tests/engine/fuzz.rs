//! Fuzzing on stable Rust: structure-aware mutations of real inputs, a fixed iteration count
//! in CI, more with `FUZZ_ITERS=N` and other inputs with `FUZZ_SEED=S` (e.g.
//! `FUZZ_ITERS=30000 FUZZ_SEED=7 cargo test --test engine fuzz -- --nocapture`; the debug
//! build checks integer overflow). Every panic is a failure; the input that caused it is written to
//! `target/fuzz-crashes/` to replay.
//!
//! Targets:
//! - the trace loader: trace.json, trace.safetensors (header and bytes) and image.png of saved
//!   runs, mutated; a trace that loads is then used as the app uses it (every word's map from
//!   every source over every step, latent previews, the step curves);
//! - the model config parsers: unet, vae, text encoder, scheduler, tokenizer and model_index
//!   configs of the fixtures and the bundled model, mutated; every config that parses is
//!   validated, its samplers are built for several step counts and stepped, and every few
//!   iterations the whole model folder is loaded and, when it loads, run for one step.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

use diffusion_scope::analysis::{self, MapSource};
use diffusion_scope::model::StableDiffusion;
use diffusion_scope::model::config::{ModelIndex, TextEncoderConfig, UNetConfig, VaeConfig};
use diffusion_scope::model::tokenizer::ClipTokenizer;
use diffusion_scope::pipeline::{self, InitLatents, RunConfig};
use diffusion_scope::sampling::noise::ReplayNoise;
use diffusion_scope::sampling::{SamplerKind, SamplerOptions, SchedulerConfig, build_sampler};
use diffusion_scope::trace::synthetic::{self, SyntheticSpec};
use diffusion_scope::trace::{load_run, save_run};
use diffusion_scope::types::CaptureMode;

use crate::common::fixtures;
use crate::parity::tempdir;

/// Iterations per target: `FUZZ_ITERS` or `default`.
fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The generator of a target: its fixed seed, mixed with `FUZZ_SEED` when set (longer runs
/// explore other inputs; CI always replays the same ones).
fn rng(fixed: u64) -> Rng {
    let extra: u64 = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    Rng((fixed ^ extra.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
}

/// xorshift64*: deterministic, so a CI failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }
}

/// Values that break code: zeros, boundaries, huge and negative numbers, wrong types.
fn interesting(rng: &mut Rng) -> Value {
    let pool = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(3),
        json!(7),
        json!(8),
        json!(77),
        json!(999),
        json!(1000),
        json!(1001),
        json!(65536),
        json!(2147483648u64),
        json!(4294967296u64),
        json!(9007199254740993u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(-1e300),
        json!(0.5),
        json!(-0.0),
        json!(1e-300),
        json!(""),
        json!("x"),
        json!("DDIMScheduler"),
        json!("trailing"),
        json!("v_prediction"),
        json!("F16"),
        json!("I64"),
        json!(null),
        json!(true),
        json!(false),
        json!([]),
        json!({}),
        json!([0]),
        json!([1, 2, 3]),
        json!([0, 0, 0, 0]),
    ];
    pool[rng.below(pool.len())].clone()
}

/// JSON pointers of every node of `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// One structure-aware mutation somewhere in `v`; `keys` are names to add.
fn mutate_json(v: &mut Value, rng: &mut Rng, keys: &[String]) {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let p = ps[rng.below(ps.len())].clone();
    let Some(node) = v.pointer_mut(&p) else { return };
    match (rng.below(4), &mut *node) {
        (0, Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            let t = [x + 1.0, x - 1.0, x * 2.0, (x / 2.0).floor(), -x, x * 1000.0][rng.below(6)];
            *node = if t.fract() == 0.0 && t.abs() < 9e15 {
                json!(t as i64)
            } else {
                json!(t)
            };
        }
        (1, Value::Array(a)) => match rng.below(4) {
            0 => a.truncate(rng.below(a.len() + 1)),
            1 if !a.is_empty() => {
                let x = a[rng.below(a.len())].clone();
                a.push(x)
            }
            2 if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            _ => a.push(interesting(rng)),
        },
        (2, Value::Object(m)) => {
            if m.is_empty() || rng.chance(0.5) {
                let k = keys[rng.below(keys.len())].clone();
                m.insert(k, interesting(rng));
            } else {
                let k = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
                m.remove(&k);
            }
        }
        _ => *node = interesting(rng),
    }
}

fn keys_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                keys_of(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys_of(x, out)),
        _ => {}
    }
}

/// Mutated bytes: flipped, overwritten, cut or extended.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(4) {
        0 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        1 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
        }
        2 => b.truncate(rng.below(b.len() + 1)),
        _ => {
            let extra = rng.below(64);
            b.extend((0..extra).map(|_| rng.next() as u8));
        }
    }
}

/// A safetensors file with its JSON header mutated (shapes, dtypes, offsets, names) and the
/// data kept, or its bytes mutated.
fn mutate_safetensors(bytes: &[u8], rng: &mut Rng, keys: &[String]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if rng.chance(0.7) && bytes.len() >= 8 {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        if let Some(mut header) = bytes.get(8..8 + n).and_then(|h| serde_json::from_slice::<Value>(h).ok()) {
            for _ in 0..1 + rng.below(3) {
                mutate_json(&mut header, rng, keys);
            }
            let h = serde_json::to_vec(&header).unwrap();
            out = (h.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&h);
            out.extend_from_slice(&bytes[8 + n..]);
            return out;
        }
    }
    for _ in 0..1 + rng.below(4) {
        mutate_bytes(&mut out, rng);
    }
    out
}

/// Runs `f`, turning a panic into a failure report with the input saved for replay.
fn no_panic(target: &str, iteration: usize, input: &Path, f: impl FnOnce()) -> Option<String> {
    let result = catch_unwind(AssertUnwindSafe(f));
    let payload = result.err()?;
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    let keep = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-crashes")
        .join(format!("{target}-{iteration}"));
    let _ = std::fs::remove_dir_all(&keep);
    copy_tree(input, &keep);
    Some(format!(
        "{target} iteration {iteration}: panic {msg:?} (input kept in {})",
        keep.display()
    ))
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            let _ = std::fs::copy(e.path(), t);
        }
    }
}

/// What the app does with a run it opened.
fn use_run_as_the_app_does(run: &diffusion_scope::trace::Run) {
    let [c, h, w] = run.meta.latent_shape;
    for s in &run.steps {
        analysis::latent_preview(&s.latents, c, h, w);
        analysis::latent_preview(&s.x0, c, h, w);
    }
    analysis::step_curves(&run.steps);
    let mut sources = vec![MapSource::All];
    if let Some(s) = run.steps.first() {
        sources.extend(s.attention.iter().map(|a| MapSource::Key(a.key.clone())));
    }
    let last = run.steps.len().saturating_sub(1);
    for wi in 0..run.meta.words.len() {
        let tokens: Vec<usize> = (0..run.meta.word_of_token.len())
            .filter(|&t| run.meta.word_of_token[t] == Some(wi))
            .collect();
        for src in &sources {
            for s in &run.steps {
                if let Some(m) = analysis::word_map_at(s, src, &tokens) {
                    analysis::entropy(&m.values);
                }
            }
            analysis::word_map_over(run, 0..=last, src, &tokens);
        }
    }
}

#[test]
fn fuzz_the_trace_loader() {
    let iters = iterations(1500);
    let mut rng = rng(0x9E37_79B9_7F4A_7C15);
    let seeds: Vec<PathBuf> = [
        (SyntheticSpec::small(), "small"),
        (
            SyntheticSpec {
                aggregate: false,
                ..SyntheticSpec::small()
            },
            "full",
        ),
    ]
    .into_iter()
    .map(|(spec, name)| {
        let mut run = synthetic::run(&spec);
        run.meta.steps = run.steps.len();
        let d = tempdir(&format!("fuzz-seed-{name}"));
        save_run(&run, &d).unwrap();
        d
    })
    .collect();
    // A cancelled run without an image, too.
    let cancelled = tempdir("fuzz-seed-cancelled");
    {
        let mut run = synthetic::run(&SyntheticSpec::small());
        run.steps.truncate(3);
        run.image = None;
        run.meta.status = diffusion_scope::trace::RunStatus::Cancelled;
        save_run(&run, &cancelled).unwrap();
    }
    let seeds: Vec<PathBuf> = seeds.into_iter().chain([cancelled]).collect();
    let mut keys = Vec::new();
    for s in &seeds {
        keys_of(
            &serde_json::from_str(&std::fs::read_to_string(s.join("trace.json")).unwrap()).unwrap(),
            &mut keys,
        );
    }
    keys.extend(["dtype", "shape", "data_offsets", "attn_res.2x2", "attn.x", "latents", "sigmas"].map(String::from));
    let work = tempdir("fuzz-trace");
    let (mut loaded, mut refused) = (0, 0);
    let mut failures = Vec::new();
    for it in 0..iters {
        let seed = &seeds[rng.below(seeds.len())];
        let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(seed.join("trace.json")).unwrap()).unwrap();
        let mut st = std::fs::read(seed.join("trace.safetensors")).unwrap();
        let mut img = std::fs::read(seed.join("image.png")).ok();
        match rng.below(5) {
            0 | 1 => (0..1 + rng.below(3)).for_each(|_| mutate_json(&mut meta, &mut rng, &keys)),
            2 | 3 => st = mutate_safetensors(&st, &mut rng, &keys),
            _ => {
                if let Some(b) = img.as_mut() {
                    mutate_bytes(b, &mut rng)
                } else {
                    mutate_json(&mut meta, &mut rng, &keys)
                }
            }
        }
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let meta_text = if rng.chance(0.05) {
            let mut b = serde_json::to_vec(&meta).unwrap();
            mutate_bytes(&mut b, &mut rng);
            b
        } else {
            serde_json::to_vec(&meta).unwrap()
        };
        std::fs::write(work.join("trace.json"), meta_text).unwrap();
        std::fs::write(work.join("trace.safetensors"), &st).unwrap();
        if let Some(b) = &img {
            std::fs::write(work.join("image.png"), b).unwrap();
        }
        if let Some(f) = no_panic("trace", it, &work, || match load_run(&work) {
            Ok(run) => {
                loaded += 1;
                use_run_as_the_app_does(&run);
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }) {
            failures.push(f);
        }
    }
    eprintln!(
        "fuzz trace loader: {iters} inputs, {loaded} loaded, {refused} refused, {} panics",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(loaded > 0 && refused > 0, "the mutations should both keep and break traces");
}

/// The config files of a model folder the fuzzer mutates, with the parser that reads each.
const CONFIG_FILES: [&str; 6] = [
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "model_index.json",
    "tokenizer/tokenizer_config.json",
];

/// Parses `file` of the model at `root` as the loader does and uses what parses.
fn parse_config(root: &Path, file: &str) {
    let path = root.join(file);
    match file {
        "unet/config.json" => {
            if let Ok(c) = UNetConfig::from_file(&path) {
                for i in 0..c.block_out_channels.len() {
                    c.heads(i);
                    c.cross_attention_dim.get(i);
                    for j in 0..=c.layers_per_block {
                        c.down_transformer_layers(i, j);
                        c.up_transformer_layers(i, j);
                    }
                }
                c.mid_transformer_layers();
            }
        }
        "vae/config.json" => {
            if let Ok(c) = VaeConfig::from_file(&path) {
                c.scale_factor();
            }
        }
        "text_encoder/config.json" => {
            let _ = TextEncoderConfig::from_file(&path);
        }
        "model_index.json" => {
            if let Ok(i) = ModelIndex::from_file(&path) {
                let _ = i.check_supported();
            }
        }
        "tokenizer/tokenizer_config.json" => {
            if let Ok(t) = ClipTokenizer::from_dir(&root.join("tokenizer")) {
                let _ = t.encode("a red circle and a blue square");
            }
        }
        _ => {
            let Ok(text) = std::fs::read_to_string(&path) else { return };
            let Ok(cfg) = SchedulerConfig::from_json_str(&text) else { return };
            for kind in SamplerKind::ALL {
                for steps in [1, 2, 7, 50, 999, 1000] {
                    for karras in [false, true] {
                        let opts = SamplerOptions {
                            karras,
                            ..Default::default()
                        };
                        if let Ok(mut s) = build_sampler(kind, &cfg, steps, &opts) {
                            let n = s.timesteps().len().min(3);
                            let sample = vec![0.5f32; 8];
                            let mut noise = ReplayNoise::new(vec![vec![0.1f32; 8]; 8]);
                            for i in 0..n {
                                let x = s.scale_model_input(&sample, i);
                                if s.step(&x, i, &sample, &mut noise).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fuzz_the_model_config_parsers() {
    let iters = iterations(400);
    let mut rng = rng(0xD1B5_4A32_D192_ED03);
    let roots = [fixtures().join("tiny-sd1"), fixtures().join("tiny-sd2")];
    let mut keys = Vec::new();
    for r in &roots {
        for f in CONFIG_FILES {
            if let Ok(t) = std::fs::read_to_string(r.join(f)) {
                keys_of(&serde_json::from_str(&t).unwrap(), &mut keys);
            }
        }
    }
    keys.extend(
        [
            "num_attention_heads",
            "timestep_spacing",
            "use_karras_sigmas",
            "trained_betas",
            "rescale_betas_zero_snr",
        ]
        .map(String::from),
    );
    let work = tempdir("fuzz-config").join("model");
    let mut failures = Vec::new();
    let (mut loads, mut loaded) = (0, 0);
    for it in 0..iters {
        let root = &roots[rng.below(roots.len())];
        let file = CONFIG_FILES[rng.below(CONFIG_FILES.len())];
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        let mut v: Value = serde_json::from_str(&text).unwrap();
        (0..1 + rng.below(3)).for_each(|_| mutate_json(&mut v, &mut rng, &keys));
        let mut bytes = serde_json::to_vec_pretty(&v).unwrap();
        if rng.chance(0.05) {
            mutate_bytes(&mut bytes, &mut rng);
        }
        // The model folder: every file a link to the fixture's, the mutated one written.
        let _ = std::fs::remove_dir_all(&work);
        link_tree(root, &work);
        let target = work.join(file);
        let _ = std::fs::remove_file(&target);
        std::fs::write(&target, &bytes).unwrap();
        let full_load = it % 10 == 0;
        if std::env::var_os("FUZZ_VERBOSE").is_some() {
            eprintln!(
                "config iteration {it}: {file}{}: {}",
                if full_load { " (full load)" } else { "" },
                String::from_utf8_lossy(&bytes).replace('\n', "")
            );
        }
        let outcome = no_panic("config", it, &work, || {
            parse_config(&work, file);
            if full_load {
                loads += 1;
                if let Ok(sd) = StableDiffusion::load(&work, &candle_core::Device::Cpu, candle_core::DType::F32) {
                    loaded += 1;
                    generate_once(&sd);
                }
            }
        });
        failures.extend(outcome);
    }
    eprintln!(
        "fuzz config parsers: {iters} inputs ({loads} full model loads, {loaded} loaded and run), {} panics",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One tiny generation (any error is fine; a panic is not).
fn generate_once(sd: &StableDiffusion) {
    let f = sd.vae_scale_factor();
    let cfg = RunConfig {
        prompt: "a red circle".into(),
        negative_prompt: String::new(),
        text_options: Default::default(),
        steps: 2,
        guidance: 5.0,
        sampler: None,
        karras: false,
        spacing: None,
        eta: 0.0,
        seed: 1,
        height: Some(8 * f),
        width: Some(8 * f),
        init_latents: InitLatents::Seed,
        embeddings: None,
        attention: CaptureMode::Aggregate,
    };
    let _ = pipeline::run(sd, "fuzz", &cfg, &AtomicBool::new(false), &mut |_| {});
}

fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            link_tree(&e.path(), &t);
        } else {
            std::os::unix::fs::symlink(e.path(), t).unwrap();
        }
    }
}
