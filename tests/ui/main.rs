//! UI tests: egui_kittest renders the real app headless through wgpu (lavapipe in CI).
//! Snapshots live in tests/snapshots (regenerate with UPDATE_SNAPSHOTS=1 and look at them).

use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

use diffusion_scope::analysis::colormap::Colormap;
use diffusion_scope::trace::synthetic::{self, SyntheticSpec};
use diffusion_scope::trace::{Run, RunStatus};
use diffusion_scope::ui::{App, Settings, Tab};

pub fn synthetic_run() -> Run {
    synthetic::run(&SyntheticSpec::small())
}

/// Settings with a machine-independent model path (the snapshots show the model field; tests
/// run from the crate root).
fn settings() -> Settings {
    Settings {
        model: "tests/fixtures/tiny-sd1".into(),
        ..Settings::default()
    }
}

fn harness(settings: Settings) -> Harness<'static, App> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .wgpu()
        .build_eframe(move |cc| App::with_settings_cc(cc, settings.clone()))
}

fn with_run(settings: Settings) -> Harness<'static, App> {
    let mut h = harness(settings);
    h.state_mut().store.open(synthetic_run(), None);
    h.run_steps(3);
    h
}

#[test]
fn empty_app_snapshot() {
    let mut h = harness(settings());
    h.run_steps(2);
    h.get_by_label("Generate");
    h.snapshot("empty_app");
}

#[test]
fn run_view_snapshot() {
    let mut h = with_run(settings());
    h.snapshot("run_view");
}

#[test]
fn token_heatmap_snapshot_and_click() {
    let mut h = with_run(settings());
    h.get_by_label("red").click();
    h.run_steps(3);
    assert_eq!(h.state().view.tokens, vec![vec![2]]);
    // Shift-click adds a second word for side-by-side comparison.
    h.get_by_label("circle").click_modifiers(egui::Modifiers::SHIFT);
    h.run_steps(3);
    assert_eq!(h.state().view.tokens.len(), 2);
    assert_eq!(h.state().view.heatmap_rects.len(), 2);
    h.snapshot("token_heatmaps");
    // The figure of the first word goes to the clipboard.
    h.get_by_label("Copy heatmap").click();
    h.run_steps(2);
    assert_eq!(h.state().view.message.as_deref(), Some("heatmap figure copied to the clipboard"));
}

#[test]
fn arrow_keys_scrub_the_timeline() {
    let mut h = with_run(settings());
    h.state_mut().view.step = 4;
    h.state_mut().view.follow = false;
    h.key_press(egui::Key::ArrowRight);
    h.run_steps(2);
    assert_eq!(h.state().view.step, 5);
    h.key_press(egui::Key::ArrowLeft);
    h.key_press(egui::Key::ArrowLeft);
    h.run_steps(2);
    assert_eq!(h.state().view.step, 3);
}

#[test]
fn schedules_snapshot() {
    let mut h = with_run(settings());
    h.state_mut().view.tab = Tab::Schedules;
    h.run_steps(3);
    h.snapshot("schedules");
}

/// The GPU shader and the PNG exporter agree: with opacity 1 the rendered heatmap pixel at a
/// cell's centre is the exporter's colour for that cell's value.
#[test]
fn shader_matches_exporter_colours() {
    let settings = Settings {
        opacity: 1.0,
        colormap: Colormap::Magma,
        ..Settings::default()
    };
    let mut h = with_run(settings);
    h.state_mut().view.tokens = vec![vec![2]];
    h.state_mut().view.step = 9;
    h.state_mut().view.follow = false;
    h.run_steps(3);
    let rect = h.state().view.heatmap_rects[0];
    let img = h.render().expect("wgpu render");
    let run = synthetic_run();
    let map = diffusion_scope::analysis::token_map_at(&run.steps[9], &diffusion_scope::analysis::MapSource::All, 2).unwrap();
    let vmax = map.values.iter().copied().fold(0.0, f32::max);
    let lut = Colormap::Magma.lut();
    let ppp = h.ctx.pixels_per_point();
    let mut checked = 0;
    for (cx, cy) in [(2usize, 8usize), (4, 8), (12, 3), (15, 15), (0, 0), (8, 8)] {
        let px = ((rect.min.x + (cx as f32 + 0.5) * rect.width() / map.width as f32) * ppp) as u32;
        let py = ((rect.min.y + (cy as f32 + 0.5) * rect.height() / map.height as f32) * ppp) as u32;
        let got = img.get_pixel(px, py).0;
        let want = diffusion_scope::ui::export::overlay_pixel(&lut, map.values[cy * map.width + cx], 0.0, vmax, 1.0, [0, 0, 0]);
        for k in 0..3 {
            assert!(
                (got[k] as i32 - want[k] as i32).abs() <= 1,
                "cell ({cx},{cy}): screen {got:?} vs exporter {want:?}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}

/// The real worker with a tiny model: Generate streams a run into the store to completion.
#[test]
fn end_to_end_generate_with_the_tiny_model() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-sd1")
        .display()
        .to_string();
    let settings = Settings {
        model,
        steps: 6,
        prompt: "a red circle".into(),
        sampler: Some(diffusion_scope::sampling::SamplerKind::Euler),
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run_steps(2);
    h.get_by_label("Generate").click();
    let t0 = Instant::now();
    loop {
        h.step();
        let s = &h.state().store;
        if let Some(run) = s.current()
            && run.image.is_some()
        {
            assert_eq!(run.steps.len(), 6);
            assert_eq!(run.meta.status, RunStatus::Complete);
            break;
        }
        assert!(s.error.is_none(), "{:?}", s.error);
        assert!(t0.elapsed() < Duration::from_secs(120), "run did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The streamed run can be scrubbed and its tokens clicked.
    h.run_steps(2);
    h.get_by_label("red").click();
    h.run_steps(3);
    assert_eq!(h.state().view.heatmap_rects.len(), 1);
}

#[test]
fn strip_steps_are_even_and_inclusive() {
    use diffusion_scope::ui::panels::strip_steps;
    assert_eq!(strip_steps(10, None, 6), vec![0, 1, 3, 5, 7, 9]);
    assert_eq!(strip_steps(10, Some((2, 4)), 6), vec![2, 3, 4]);
    assert_eq!(strip_steps(10, None, 1), vec![9]);
    assert_eq!(strip_steps(0, None, 6), Vec::<usize>::new());
}

#[test]
fn plot_panels_can_be_exported() {
    let mut h = with_run(settings());
    // The plots' rect is known after a frame; the button asks the window for a screenshot.
    let plots = h.state().view.panel_rects.get("plots").copied().expect("plots drawn");
    assert!(plots.width() > 300.0 && plots.height() > 100.0, "{plots:?}");
    h.get_by_label("Export plots…").click();
    h.run_steps(1);
    assert_eq!(h.state().view.pending_capture.as_ref().map(|p| p.0), Some("plots"));
    h.state_mut().view.pending_capture = None;
    h.state_mut().view.tab = Tab::Schedules;
    h.run_steps(2);
    assert!(h.state().view.panel_rects.contains_key("schedules"));
    h.get_by_label("Export plot…").click();
    h.run_steps(1);
    assert_eq!(h.state().view.pending_capture.as_ref().map(|p| p.0), Some("schedules"));
}

fn tiny_model() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-sd1")
        .display()
        .to_string()
}

/// Steps the harness until `done` holds (or fails after `secs`).
fn step_until(h: &mut Harness<'static, App>, secs: u64, what: &str, done: impl Fn(&App) -> bool) {
    let t0 = Instant::now();
    while !done(h.state()) {
        h.step();
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A primary click at `pos` as the pointer makes it (move, press, release), then a few frames.
fn click_at(h: &mut Harness<'static, App>, pos: egui::Pos2) {
    h.hover_at(pos);
    h.step();
    h.drag_at(pos);
    h.step();
    h.drop_at(pos);
    h.run_steps(3);
}

fn generate_and_wait(h: &mut Harness<'static, App>) {
    let before = h.state().store.runs().len();
    h.get_by_label("Generate").click();
    h.step();
    step_until(h, 120, "the run to finish", |app| {
        assert!(app.store.error.is_none(), "{:?}", app.store.error);
        app.store.runs().len() > before && !app.store.busy() && app.store.current().is_some_and(|r| r.image.is_some())
    });
}

/// Regression (architecture issue): opening a real trace made the worker load the model for the
/// VAE decode, and `ModelLoaded`/`Decoded` never reset the activity, so Generate stayed
/// disabled for good.
#[test]
fn open_a_real_trace_then_generate_works() {
    let dir = std::env::temp_dir().join(format!("ds-ui-open-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args(["generate", "--model", &tiny_model(), "--prompt", "a red circle", "--steps", "3"])
        .args(["--scheduler", "euler", "--seed", "1", "--quiet", "--out"])
        .arg(&dir)
        .output()
        .expect("running generate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let settings = Settings {
        model: tiny_model(),
        steps: 4,
        prompt: "a blue square".into(),
        sampler: Some(diffusion_scope::sampling::SamplerKind::Euler),
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run_steps(2);
    h.state_mut().open_path(dir.clone());
    step_until(&mut h, 60, "the trace to open", |app| app.store.current().is_some());
    assert_eq!(h.state().store.current().unwrap().steps.len(), 3);
    // Showing x0 asks the worker for a VAE decode, which loads the model first.
    step_until(&mut h, 120, "the decode", |app| {
        let id = app.store.current.unwrap();
        matches!(
            app.store.decode(id, app.view.step),
            Some(diffusion_scope::ui::store::DecodeState::Done(Ok(_)))
        )
    });
    h.run_steps(2);
    assert!(!h.state().store.busy(), "{:?}", h.state().store.activity);
    generate_and_wait(&mut h);
    assert_eq!(h.state().store.current().unwrap().steps.len(), 4);
    assert_eq!(h.state().store.runs().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A panic inside the worker becomes an error in the top bar; the next Generate works.
#[test]
fn worker_panic_is_reported_and_the_app_recovers() {
    let settings = Settings {
        model: tiny_model(),
        steps: 3,
        prompt: "a red circle".into(),
        sampler: Some(diffusion_scope::sampling::SamplerKind::Euler),
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run_steps(2);
    h.state().inject_worker_panic();
    step_until(&mut h, 30, "the panic report", |app| app.store.error.is_some());
    let error = h.state().store.error.clone().unwrap();
    assert!(error.contains("panicked") && error.contains("injected"), "{error}");
    h.run_steps(2);
    h.get_by_label(&format!("error: {error}"));
    generate_and_wait(&mut h);
    assert!(h.state().store.error.is_none());
}

/// Two runs side by side: the same word's heatmap in both, at the same fraction of each run.
#[test]
fn two_runs_side_by_side() {
    let mut h = harness(settings());
    let a = h.state_mut().store.open(synthetic_run(), None);
    let mut other = synthetic_run();
    other.meta.prompt = "a blue square".into();
    let b = h.state_mut().store.open(other, None);
    h.run_steps(2);
    assert_eq!(h.state().store.current, Some(b));
    // Make the first run A again and the second B, through the runs list.
    h.get_by_label(&format!("show run {a}")).click();
    h.run_steps(2);
    h.get_by_label(&format!("compare run {b} side by side with A")).click();
    h.run_steps(2);
    assert_eq!((h.state().store.current, h.state().store.compare), (Some(a), Some(b)));
    h.state_mut().view.follow = false;
    h.state_mut().view.step = 9;
    h.get_by_label("red").click();
    h.run_steps(3);
    assert_eq!(h.state().view.heatmap_rects.len(), 2, "one heatmap per run");
    assert_eq!(h.state().step_of(b), Some(9));
    h.snapshot("side_by_side");
}

/// Regression (architecture issue): a decode that had to load the model left the store in
/// "loading" for good. Every terminal reply now returns it to idle.
#[test]
fn every_worker_reply_ends_the_activity_it_answers() {
    use diffusion_scope::engine::Event;
    use diffusion_scope::trace::RgbImage;
    use diffusion_scope::ui::store::{Activity, RunStore};
    let image = RgbImage {
        width: 1,
        height: 1,
        pixels: vec![0; 3],
    };
    let mut store = RunStore::default();
    store.apply(Event::LoadingModel { spec: "m".into() });
    assert!(store.busy());
    store.apply(Event::Decoded { id: 1, image });
    assert_eq!(store.activity, Activity::Idle);
    store.apply(Event::LoadingModel { spec: "m".into() });
    store.apply(Event::DecodeFailed { id: 2, error: "x".into() });
    assert_eq!(store.activity, Activity::Idle);
    store.apply(Event::LoadingModel { spec: "m".into() });
    store.apply(Event::Failed {
        error: "no such model".into(),
        total_secs: 0.0,
    });
    assert_eq!(store.activity, Activity::Idle);
    assert_eq!(store.error.as_deref(), Some("no such model"));
}

/// The store keeps at most MAX_RUNS runs; the oldest that is neither shown (A), compared (B)
/// nor streaming goes first, and is reported so the view drops its caches.
#[test]
fn the_store_keeps_a_bounded_number_of_runs() {
    use diffusion_scope::ui::store::{MAX_RUNS, RunStore};
    let mut store = RunStore::default();
    let first = store.open(synthetic_run(), None);
    let second = store.open(synthetic_run(), None);
    store.select(first);
    store.set_compare(Some(second));
    let mut last = second;
    for _ in 0..MAX_RUNS {
        last = store.open(synthetic_run(), None);
    }
    assert_eq!(store.runs().len(), MAX_RUNS);
    assert_eq!(store.current, Some(last));
    assert_eq!(store.compare, Some(second), "B stays");
    assert!(store.get(second).is_some());
    assert!(store.get(first).is_none(), "the oldest run that is not shown goes");
    let removed = store.take_removed();
    assert_eq!(removed.len(), 2);
    assert!(removed.contains(&first));
    assert!(store.take_removed().is_empty());
}

/// Opening a folder that is not a run ends in an error line; nothing else changes.
#[test]
fn opening_a_folder_that_is_not_a_run_reports_it() {
    let mut h = with_run(settings());
    let dir = std::env::temp_dir().join(format!("ds-ui-not-a-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    h.state_mut().open_path(dir.clone());
    step_until(&mut h, 30, "the error", |app| app.store.error.is_some());
    let error = h.state().store.error.clone().unwrap();
    assert!(error.contains("trace.json"), "{error}");
    assert_eq!(h.state().store.runs().len(), 1);
    assert!(h.state().file_jobs().is_empty());
}

/// A size nobody can allocate (2048x2048 on the tiny model: hundreds of GiB for one
/// self-attention) is refused before anything is allocated; the app shows the message, stays
/// up, and the next Generate at the model's size works.
#[test]
fn a_size_too_large_for_memory_is_reported_and_the_app_goes_on() {
    let settings = Settings {
        model: tiny_model(),
        steps: 3,
        prompt: "a red circle".into(),
        size: Some((2048, 2048)),
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run_steps(2);
    h.get_by_label("Generate").click();
    step_until(&mut h, 60, "the refusal", |app| app.store.error.is_some());
    let error = h.state().store.error.clone().unwrap();
    assert!(error.contains("2048x2048 pixels") && error.contains("need about"), "{error}");
    h.run_steps(2);
    assert!(!h.state().store.busy(), "{:?}", h.state().store.activity);
    h.state_mut().settings.size = None;
    generate_and_wait(&mut h);
}

/// The Compare tab: the rows fill in as the worker finishes cells (reference first), the
/// scrubber moves every row to the same fraction, and clicking a row's frame opens that run in
/// the run view.
#[test]
fn compare_view_fills_scrubs_and_opens_a_run() {
    let settings = Settings {
        model: tiny_model(),
        prompt: "a red circle".into(),
        compare: diffusion_scope::ui::CompareUi {
            samplers: "ddim:2,euler:3".into(),
            reference: "dpm++2m:6".into(),
            fractions: 2,
            captions: 1,
            ..diffusion_scope::ui::CompareUi::default()
        },
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.state_mut().view.tab = diffusion_scope::ui::Tab::Compare;
    h.run_steps(2);
    h.get_by_label("Run comparison").click();
    h.step();
    step_until(&mut h, 120, "the comparison", |app| {
        assert!(app.store.error.is_none(), "{:?}", app.store.error);
        app.store.comparison.as_ref().is_some_and(|c| c.report.is_some()) && !app.store.busy()
    });
    h.run_steps(2);
    let labels: Vec<String> = h
        .state()
        .store
        .comparison
        .as_ref()
        .unwrap()
        .rows
        .iter()
        .map(|r| r.report.label.clone())
        .collect();
    assert_eq!(labels, ["dpm++2m:6", "ddim:2", "euler:3"]);
    // With held-out captions every cell has a quality, and the accuracy plot is shown.
    assert!(
        h.state().store.comparison.as_ref().unwrap().rows[1..]
            .iter()
            .all(|r| r.report.quality.as_ref().is_some_and(|q| q.captions == 1))
    );
    h.get_by_label("Detector accuracy (%) over 1 captions vs UNet evaluations");
    // Every row shows the final image after the run; the scrubber moves them all.
    let shown = |h: &Harness<'static, App>| h.state().view.compare_rects.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>();
    assert_eq!(shown(&h), [(0, 2), (1, 2), (2, 2)]);
    h.state_mut().view.compare_fraction = 1;
    h.run_steps(2);
    assert_eq!(shown(&h), [(0, 1), (1, 1), (2, 1)]);
    // Clicking the second row's frame opens that run.
    let rect = h.state().view.compare_rects[1].2;
    click_at(&mut h, rect.center());
    assert_eq!(h.state().view.tab, diffusion_scope::ui::Tab::Run);
    let current = h.state().store.current().expect("a run is shown");
    assert_eq!((current.meta.sampler.as_str(), current.meta.steps), ("ddim", 2));
    assert_eq!(current.steps.len(), 2);
}

/// The Compare tab's Guidance mode: the sweep fills rows = w × columns = seeds, the guidance
/// slider's "as a new row" adds a w with the same seeds, and clicking a cell opens its run.
#[test]
fn guidance_sweep_fills_grows_by_a_row_and_opens_a_run() {
    use diffusion_scope::ui::{Action, CompareMode, CompareUi, Tab};
    let settings = Settings {
        model: tiny_model(),
        prompt: "a red circle".into(),
        steps: 2,
        sampler: Some(diffusion_scope::sampling::SamplerKind::Ddim),
        compare: CompareUi {
            mode: CompareMode::Guidance,
            guidances: "1,4".into(),
            seeds: "0..1".into(),
            ..CompareUi::default()
        },
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.state_mut().view.tab = Tab::Compare;
    h.run_steps(2);
    h.get_by_label("Timestep snapshots (x0 and x_t at t ~ T, 3T/4, T/2, T/4, 0)")
        .click();
    h.run_steps(2);
    assert!(h.state().settings.compare.snapshots);
    h.get_by_label("Run sweep").click();
    h.step();
    let done = |n: usize| {
        move |app: &App| {
            assert!(app.store.error.is_none(), "{:?}", app.store.error);
            app.store
                .sweep
                .as_ref()
                .is_some_and(|s| s.cells.len() == n && s.rows.len() == n / 2)
                && !app.store.busy()
        }
    };
    step_until(&mut h, 120, "the sweep", done(4));
    // What the released slider sends with "as a new row of the guidance sweep".
    h.state_mut().send(Action::AddSweepRow(7.0));
    h.step();
    step_until(&mut h, 120, "the added row", done(6));
    h.run_steps(2);
    let sw = h.state().store.sweep.as_ref().unwrap();
    assert_eq!(sw.settings.guidances, [1.0, 4.0, 7.0]);
    assert_eq!(sw.cells[&(2, 1)].run.meta.seed, sw.cells[&(0, 1)].run.meta.seed);
    assert_eq!(sw.cells[&(2, 1)].run.meta.guidance, 7.0);
    assert_eq!(h.state().view.compare_rects.len(), 6);
    assert!(sw.cells.values().all(|c| c.snapshots.len() == 5));
    // Quality metrics of the rows: the CLIP score of each w's two images (a tiny random CLIP).
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
    h.state_mut().settings.compare.clip_model = clip.display().to_string();
    h.run_steps(2);
    h.get_by_label("Compute metrics").click();
    h.step();
    step_until(&mut h, 120, "the metrics", |app| {
        assert!(app.store.error.is_none(), "{:?}", app.store.error);
        app.store.quality.as_ref().is_some_and(|q| q.rows.iter().all(Option::is_some)) && !app.store.busy()
    });
    h.run_steps(2);
    let q = h.state().store.quality.as_ref().unwrap();
    assert_eq!(q.labels, ["w = 1", "w = 4", "w = 7"]);
    assert!(
        q.rows
            .iter()
            .flatten()
            .all(|r| r.metrics.n_fake == 2 && r.metrics.clip_score.is_some())
    );
    // The table's header and the curves (the prompt is a shapes caption: the detector's too;
    // the real set defaults to the shipped renders: FID of 2 images a row).
    assert!(h.get_all_by_label("CLIP score").count() >= 1);
    h.get_by_label("CLIP score vs guidance w");
    h.get_by_label("FID vs guidance w");
    h.get_by_label("detector accuracy (%) vs guidance w");
    h.get_by_label("Copy CSV");
    // Columns: the timestep snapshots of seed 1 (one rect per row: its final x0).
    h.get_by_label("Columns").click();
    h.run_steps(2);
    h.get_by_label("timesteps of seed 1").click();
    h.run_steps(2);
    assert_eq!(h.state().view.sweep_snapshots_of, Some(1));
    assert_eq!(h.state().view.compare_rects.len(), 3);
    assert!(h.state().view.compare_rects.iter().all(|r| r.1 == 1));
    let rect = h.state().view.compare_rects.iter().find(|r| (r.0, r.1) == (2, 1)).unwrap().2;
    click_at(&mut h, rect.center());
    assert_eq!(h.state().view.tab, Tab::Run);
    let current = h.state().store.current().unwrap();
    assert_eq!((current.meta.guidance, current.meta.seed), (7.0, 1));
}

/// The saliency row end to end: DF-CAM and DF-RISE computed at the selected step by the real
/// worker (a rerun of the run), drawn as an overlay by the heatmap shader, and the stored run
/// holds the maps at that step only; an exported figure is made from them.
#[test]
fn saliency_overlay_is_computed_on_demand() {
    let settings = Settings {
        model: tiny_model(),
        steps: 4,
        prompt: "a red circle".into(),
        sampler: Some(diffusion_scope::sampling::SamplerKind::Ddim),
        saliency: diffusion_scope::ui::SaliencyUi {
            masks: 6,
            ..Default::default()
        },
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run_steps(2);
    generate_and_wait(&mut h);
    h.state_mut().view.follow = false;
    h.state_mut().view.step = 1;
    h.run_steps(2);
    for (button, key) in [("DF-CAM", "cam.mid_block.resnets.0"), ("DF-RISE", "rise")] {
        h.get_by_label(button).click();
        h.run_steps(2);
        assert_eq!(h.state().view.overlay.as_deref(), Some(key));
        assert!(h.query_by_label("not computed at this step").is_some());
        h.get_by_label("Compute at step 2").click();
        h.step();
        step_until(&mut h, 120, "the saliency map", |app| {
            assert!(app.store.error.is_none(), "{:?}", app.store.error);
            !app.store.busy()
                && app
                    .store
                    .current()
                    .is_some_and(|r| r.steps[1].saliency.iter().any(|m| m.key == key))
        });
        h.run_steps(3);
        let run = h.state().store.current().unwrap().clone();
        let with: Vec<usize> = (0..run.steps.len())
            .filter(|&i| run.steps[i].saliency.iter().any(|m| m.key == key))
            .collect();
        assert_eq!(with, vec![1], "{key}");
        assert_eq!(h.state().view.heatmap_rects.len(), 1, "{key}: one overlay drawn");
        assert!(h.query_by_label("not computed at this step").is_none());
    }
}

/// The Probe tab: an interpolation computed by the worker, its frames scrubbed with the
/// slider, a word's attention following along; the health check's verdicts; an OOD reference
/// loaded through the path prompt and an image scored against it.
#[test]
fn probe_tab_interpolates_checks_health_and_scores_images() {
    use diffusion_scope::ui::{ProbeMode, ProbeUi};
    let settings = Settings {
        model: tiny_model(),
        steps: 2,
        prompt: "a red circle".into(),
        probe: ProbeUi {
            frames: 3,
            health_points: 5,
            ..ProbeUi::default()
        },
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.state_mut().view.tab = Tab::Probe;
    h.run_steps(2);
    h.get_by_label("Run interpolation").click();
    h.step();
    step_until(&mut h, 120, "the interpolation", |app| {
        assert!(app.store.error.is_none(), "{:?}", app.store.error);
        !app.store.busy() && app.store.interpolation.as_ref().is_some_and(|v| v.report.is_some())
    });
    h.run_steps(3);
    let v = h.state().store.interpolation.as_ref().unwrap();
    assert!(v.frames.iter().all(Option::is_some));
    // The last frame, with the attention of "red" over it.
    h.state_mut().view.probe_frame = 2;
    h.run_steps(2);
    h.get_by_label("red").click();
    h.run_steps(2);
    assert!(h.state().view.probe_word.is_some());
    assert_eq!(h.state().view.heatmap_rects.len(), 1, "the frame with its overlay");
    assert!(h.state().view.probe_textures.keys().any(|k| k.0 == 0 && k.2 == 2 && k.3 != 0));

    h.state_mut().settings.probe.mode = ProbeMode::Health;
    h.run_steps(2);
    h.get_by_label("Run health check").click();
    h.step();
    step_until(&mut h, 120, "the health check", |app| {
        !app.store.busy() && app.store.health.is_some()
    });
    h.run_steps(2);
    assert!(h.query_all_by_label_contains("dead embedding").count() >= 1);

    // OOD: fit a reference on renders through the path prompt, as a user does.
    let dir = std::env::temp_dir().join(format!("ds-ui-ood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    for i in 0..20 {
        diffusion_scope::world::sample(&diffusion_scope::world::WorldConfig::with_size(32), 2, i)
            .save_png(dir.join("imgs").join(format!("{i:02}.png")))
            .unwrap();
    }
    h.state_mut().settings.probe.mode = ProbeMode::Ood;
    h.run_steps(2);
    h.get_by_label("Fit reference on a folder…").click();
    h.run_steps(2);
    h.state_mut().view.path_prompt.as_mut().unwrap().text = dir.join("imgs").display().to_string();
    h.run_steps(3);
    h.get_by_label("OK").click();
    h.step();
    step_until(&mut h, 120, "the OOD fit", |app| {
        assert!(app.store.error.is_none(), "{:?}", app.store.error);
        !app.store.busy() && app.store.ood.reference.is_some()
    });
    assert!(
        dir.join("imgs-ood-reference.json").is_file(),
        "the fitted reference is saved beside the folder"
    );
    h.run_steps(2);
    h.get_by_label("Score image…").click();
    h.run_steps(2);
    h.state_mut().view.path_prompt.as_mut().unwrap().text = dir.join("imgs/03.png").display().to_string();
    h.run_steps(3);
    h.get_by_label("OK").click();
    h.step();
    step_until(&mut h, 120, "the OOD score", |app| {
        !app.store.busy() && app.store.ood.scored.is_some()
    });
    h.run_steps(2);
    assert!(h.query_all_by_label_contains("03.png:").count() >= 1);
}

/// The folded text-encoder options reach the run: a second prompt and clip skip on the tiny
/// SDXL model are in the streamed run's settings.
#[test]
fn text_encoder_options_reach_the_run() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-sdxl")
        .display()
        .to_string();
    let settings = Settings {
        model,
        steps: 2,
        prompt: "a red circle".into(),
        attention: diffusion_scope::types::CaptureMode::None,
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run_steps(2);
    h.get_by_label("Text encoder options").click();
    h.run_steps(3);
    h.get_by_label("Prompt 2 (SDXL)").focus();
    h.run_steps(2);
    h.get_by_label("Prompt 2 (SDXL)").type_text("a blue square");
    h.get_by_label("Clip skip").click();
    h.run_steps(3);
    assert_eq!(h.state().settings.prompt_2, "a blue square");
    assert_eq!(h.state().settings.clip_skip, Some(1));
    generate_and_wait(&mut h);
    let meta = &h.state().store.current().unwrap().meta;
    assert_eq!(meta.text_options.prompt_2.as_deref(), Some("a blue square"));
    assert_eq!(meta.text_options.clip_skip, Some(1));
    // Loaded, the model says it has two encoders: the header now reads as set.
    h.run_steps(2);
    assert!(h.query_by_label("Text encoder options (set)").is_some());
}
