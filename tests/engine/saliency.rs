//! DF-RISE and DF-CAM (experiments::saliency) on the tiny SD 1.x model: the gradient against
//! finite differences, RISE's invariants, maps in the trace, the CLI.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use diffusion_scope::analysis::saliency::{StructureTerm, relu_minmax, ssim_structure};
use diffusion_scope::experiments::saliency::{self, CamSettings, RiseCompare, RiseSettings, SaliencySettings};
use diffusion_scope::experiments::{ExperimentEvent, Stop};
use diffusion_scope::model::StableDiffusion;
use diffusion_scope::model::unet::{AttnProbe, Taps};
use diffusion_scope::pipeline;
use diffusion_scope::trace::{Run, load_run, save_run};
use diffusion_scope::types::CaptureMode;

use crate::common::{cli, fixtures, generate, load_model};

fn settings(rise: Option<RiseSettings>, cam: Option<CamSettings>) -> SaliencySettings {
    SaliencySettings {
        prompt: "a red circle".into(),
        steps: 6,
        guidance: 7.5,
        seed: 3,
        steps_at: Some(vec![1, 4]),
        rise,
        cam,
        ..Default::default()
    }
}

fn run_saliency(sd: &StableDiffusion, s: &SaliencySettings) -> (saliency::SaliencyReport, Option<Stop>, Run) {
    let mut run = None;
    let (report, stopped) = saliency::run(sd, "tiny-sd1", s, &AtomicBool::new(false), &mut |ev| {
        if let ExperimentEvent::SaliencyRun(r) = ev {
            run = Some(*r);
        }
    })
    .unwrap();
    (report, stopped, run.expect("a run"))
}

fn map<'a>(run: &'a Run, step: usize, key: &str) -> &'a [f32] {
    &run.steps[step]
        .saliency
        .iter()
        .find(|m| m.key == key)
        .unwrap_or_else(|| panic!("step {step} has no {key}"))
        .data
}

/// d(sum of the guided output)/d(block output) from one backward pass equals central finite
/// differences of the same sum, element by element, in f64 on the tiny model; the pipeline's
/// combined gradient is the two branches' sum.
#[test]
fn df_cam_gradient_matches_finite_differences() {
    let sd = StableDiffusion::load(&fixtures().join("tiny-sd1"), &Device::Cpu, DType::F64).unwrap();
    // The text encoder's fused layer norm has no f64 kernel: its f32 output, widened.
    let sd32 = load_model("tiny-sd1");
    let ids = |text: &str| {
        Tensor::new(sd32.tokenizer.encode(text).ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    };
    let context = Tensor::cat(
        &[
            &sd32.text_encoder.forward(&ids("")).unwrap(),
            &sd32.text_encoder.forward(&ids("a red circle")).unwrap(),
        ],
        0,
    )
    .unwrap()
    .to_dtype(DType::F64)
    .unwrap();
    let (c, h, w) = (4, 16, 16);
    let x: Vec<f64> = (0..c * h * w).map(|i| ((i * 7919 % 1000) as f64 / 500.0 - 1.0) * 0.8).collect();
    let x1 = Tensor::from_vec(x.clone(), (1, c, h, w), &Device::Cpu).unwrap();
    let x2 = Tensor::cat(&[&x1, &x1], 0).unwrap();
    let (t, guidance) = (421.0, 7.5);
    let guided_sum = |out: &Tensor| -> Tensor {
        let (u, cnd) = (out.get(0).unwrap(), out.get(1).unwrap());
        (&u + ((&cnd - &u).unwrap() * guidance).unwrap()).unwrap().sum_all().unwrap()
    };
    for path in ["mid_block.resnets.0", "up_blocks.1.attentions.0", "down_blocks.0.resnets.0"] {
        let mut probe = AttnProbe::tapping(Taps::new(Some(vec![path.into()])));
        let out = sd.unet.forward(&x2, t, &context, &mut probe).unwrap();
        let grads = guided_sum(&out).backward().unwrap();
        let tap = &probe.taps.as_ref().unwrap().taken[0];
        let g = grads
            .get(tap.delta.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let shape = tap.activation.dims().to_vec();
        let n = g.len();
        let eps = 1e-4;
        for idx in [0, n / 2 + 3, n / 4 + 17, n - 1] {
            let f = |e: f64| -> f64 {
                let mut d = vec![0f64; n];
                d[idx] = e;
                let offset = Tensor::from_vec(d, shape.clone(), &Device::Cpu).unwrap();
                let mut p = AttnProbe::tapping(Taps::new(Some(vec![path.into()])).with_offset(path, offset));
                let out = sd.unet.forward(&x2, t, &context, &mut p).unwrap();
                guided_sum(&out).to_scalar::<f64>().unwrap()
            };
            let fd = (f(eps) - f(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[idx]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{path}[{idx}]: backward {} vs finite difference {fd}",
                g[idx]
            );
        }
        // The pipeline's combined gradient (f32): branch 0 + branch 1 of the same gradient.
        let cond = pipeline::encode_prompt(&sd32, "a red circle", "", true, None).unwrap();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let (_, blocks) = pipeline::cam_eval(&sd32, &cond, xf, [c, h, w], t, guidance as f32, Some(&[path.to_string()])).unwrap();
        let half = n / 2;
        let scale = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        for i in [0, half / 3, half - 1] {
            let want = g[i] + g[half + i];
            let got = blocks[0].gradient[i] as f64;
            assert!(
                (got - want).abs() <= 1e-4 * scale,
                "{path} combined [{i}]: {got} vs {want} (scale {scale})"
            );
        }
    }
}

/// With every mask all ones, each masked input is the step's own input: DF-RISE's map is the
/// scaled structure map of the step's next latents against its own model output (both in the
/// trace), and with like-for-like comparison and the standard term it is constant.
#[test]
fn rise_with_all_ones_masks() {
    let sd = load_model("tiny-sd1");
    let ones = |compare, structure| RiseSettings {
        masks: 3,
        batch: 2,
        keep: 1.0,
        compare,
        structure,
        ..Default::default()
    };
    let (_, stopped, run) = run_saliency(&sd, &settings(Some(ones(RiseCompare::NextLatents, StructureTerm::Authors)), None));
    assert!(stopped.is_none());
    let [c, h, w] = run.meta.latent_shape;
    for step in [1, 4] {
        let s = &run.steps[step];
        let want = relu_minmax(&ssim_structure(&s.latents, &s.model_output, c, h, w, StructureTerm::Authors));
        let got = map(&run, step, "rise");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-3, "step {step}: max difference {worst}");
        assert!(got.iter().any(|&v| v > 0.5) && got.iter().any(|&v| v < 0.5), "not a constant map");
    }
    // Steps not asked for have no maps.
    assert!(run.steps[0].saliency.is_empty() && run.steps[2].saliency.is_empty());
    let (_, _, run) = run_saliency(&sd, &settings(Some(ones(RiseCompare::Output, StructureTerm::Standard)), None));
    for step in [1, 4] {
        let m = map(&run, step, "rise");
        assert!(m.iter().all(|&v| v == m[0]), "step {step}: {m:?}");
    }
}

/// The masks per UNet call change nothing but the speed; the run itself is the plain run's.
#[test]
fn rise_batches_agree_and_the_run_is_unchanged() {
    let sd = load_model("tiny-sd1");
    let rise = |batch| RiseSettings {
        masks: 10,
        batch,
        mask_seed: 7,
        ..Default::default()
    };
    let (r1, _, a) = run_saliency(&sd, &settings(Some(rise(1)), None));
    let (r4, _, b) = run_saliency(&sd, &settings(Some(rise(4)), None));
    assert_eq!((r1.rise_batch, r4.rise_batch), (1, 4));
    for step in [1, 4] {
        let (x, y) = (map(&a, step, "rise"), map(&b, step, "rise"));
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "step {step}: {worst}");
    }
    let plain = generate(&sd, &settings(None, None).run_config());
    for (s, p) in a.steps.iter().zip(&plain.steps) {
        assert_eq!(s.latents, p.latents, "step {}", s.index);
    }
}

/// DF-CAM maps per block and summed, written to the trace and read back; NaN rows for the
/// steps not computed are not maps.
#[test]
fn cam_maps_go_through_the_trace() {
    let sd = load_model("tiny-sd1");
    let cam = CamSettings {
        blocks: vec!["mid_block.resnets.0".into(), "all".into()],
    };
    let (report, stopped, run) = run_saliency(&sd, &settings(None, Some(cam)));
    assert!(stopped.is_none());
    // The authors' set: every tappable block except the mid block's attention.
    let all = saliency::authors_block_set(&sd);
    assert!(!all.contains(&"mid_block.attentions.0".to_string()) && all.contains(&"mid_block.resnets.1".to_string()));
    assert_eq!(report.cam_blocks.len(), all.len());
    for step in [1, 4] {
        for key in ["cam.mid_block.resnets.0", "cam.all"] {
            let m = map(&run, step, key);
            assert_eq!(m.len(), 16 * 16);
            let (lo, hi) = m.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(lo == 0.0 && hi == 1.0, "{key} at {step}: {lo}..{hi}");
        }
    }
    let dir = crate::parity::tempdir("saliency-trace");
    save_run(&run, &dir).unwrap();
    let back = load_run(&dir).unwrap();
    for (a, b) in run.steps.iter().zip(&back.steps) {
        let mut x = a.saliency.clone();
        let mut y = b.saliency.clone();
        x.sort_by(|p, q| p.key.cmp(&q.key));
        y.sort_by(|p, q| p.key.cmp(&q.key));
        assert_eq!(x, y, "step {}", a.index);
    }
    assert!(back.meta.saliency.is_some());
}

#[test]
fn saliency_cli_writes_the_run_and_refuses_bad_input() {
    let dir = crate::parity::tempdir("saliency-cli");
    let model = fixtures().join("tiny-sd1");
    let out = dir.join("run");
    let figs = dir.join("figs");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "saliency",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a red circle",
            "--steps",
            "4",
            "--scheduler",
            "ddim",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        cli(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&[
        "--method",
        "rise,cam",
        "--masks",
        "4",
        "--steps-at",
        "2..3",
        "--layer",
        "all",
        "--out",
        out.to_str().unwrap(),
        "--figures",
        figs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = load_run(&out).unwrap();
    let keys: Vec<Vec<&str>> = back
        .steps
        .iter()
        .map(|s| s.saliency.iter().map(|m| m.key.as_str()).collect())
        .collect();
    assert_eq!(keys, vec![vec![], vec!["cam.all", "rise"], vec!["cam.all", "rise"], vec![]]);
    assert!(figs.join("step002_rise.png").is_file() && figs.join("step003_cam.all.png").is_file());
    assert_eq!(back.meta.attention, CaptureMode::Aggregate);
    let o = cli(&["inspect", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("rise [4, 16, 16] (saliency at step(s) 2, 3)"), "{text}");

    let bad = |extra: &[&str], want: &str| {
        let o = run(extra);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(want), "{extra:?}: {err}");
    };
    let fresh = dir.join("fresh");
    let fresh = fresh.to_str().unwrap();
    bad(
        &["--method", "cam", "--layer", "mid_block.resnet.0", "--out", fresh],
        "mid_block.resnets.0",
    );
    bad(&["--method", "gradcam", "--out", fresh], "unknown method");
    bad(&["--steps-at", "5", "--out", fresh], "outside 1..4");
    bad(&["--masks", "0", "--out", fresh], "at least one mask");
    bad(&["--out", out.to_str().unwrap()], "--overwrite");
}

/// `eval --saliency`'s experiment on the tiny model: every method scored at every step, the
/// games played for the game methods, the table made.
#[test]
fn faithfulness_eval_runs_on_the_tiny_model() {
    use diffusion_scope::experiments::saliency_eval::{self, GAME_METHODS, SaliencyEvalSettings, render_table};
    let sd = load_model("tiny-sd1");
    let settings = SaliencyEvalSettings {
        count: 2,
        steps: 3,
        rise: RiseSettings {
            masks: 4,
            batch: 3,
            ..Default::default()
        },
        auc_points: 4,
        ..Default::default()
    };
    let mut progress = 0;
    let (report, stopped) = saliency_eval::run(&sd, "tiny", &settings, &AtomicBool::new(false), &mut |ev| {
        if let ExperimentEvent::Progress(_) = ev {
            progress += 1;
        }
    })
    .unwrap();
    assert!(stopped.is_none(), "{stopped:?}");
    assert!(progress >= 6);
    assert_eq!(report.cases.len(), 2);
    assert_eq!(report.batch, 3);
    let blocks = saliency::authors_block_set(&sd);
    for case in &report.cases {
        assert_eq!(
            case.methods.len(),
            blocks.len() + 4,
            "rise, every block, cam.all, attention, random"
        );
        for m in &case.methods {
            assert_eq!(m.steps.len(), 3, "{}", m.method);
            let game = GAME_METHODS.contains(&m.method.as_str());
            for s in &m.steps {
                assert!((0.0..=1.0).contains(&s.iou), "{}: {}", m.method, s.iou);
                assert_eq!(s.insertion.is_some(), game, "{}", m.method);
            }
        }
    }
    let table = render_table(&report);
    assert!(
        table.contains("attention") && table.contains("random") && table.contains("cam.all"),
        "{table}"
    );
    assert_eq!(report.rows.len(), report.cases[0].methods.len() * 4);
}

/// The app's on-demand map at one step ends the rerun right after that step.
#[test]
fn an_on_demand_map_stops_the_rerun_after_its_step() {
    let sd = load_model("tiny-sd1");
    let mut s = settings(
        None,
        Some(CamSettings {
            blocks: vec!["mid_block.resnets.0".into()],
        }),
    );
    s.steps_at = Some(vec![2]);
    s.stop_after_last = true;
    let (report, stopped, run) = run_saliency(&sd, &s);
    assert!(stopped.is_none(), "{stopped:?}");
    assert_eq!(report.steps_done, vec![2]);
    assert_eq!(run.steps.len(), 3);
    assert!(run.image.is_none());
    assert!(!map(&run, 2, "cam.mid_block.resnets.0").is_empty());
}
