//! Frame-time benchmark of the app on a synthetic SD-1.5-sized run (50 steps, 4x64x64
//! latents, 16 cross-attention layers with full capture, 77 tokens): p50/p95 of the UI pass
//! and of UI + wgpu render, while the run streams in (one step per frame, a token selected so
//! heatmaps are recomputed), while scrubbing back and forth, and while the same run, saved as a
//! ~400 MB trace folder, is opened in the background (the worst frame during the load), and on
//! the Compare tab while a 40-cell sampler comparison streams in (one finished cell per frame,
//! eleven 512x512 trajectory frames each, uploaded as textures when first shown) and while its
//! scrubber moves every row.
//!
//!     cargo bench --bench frames
//!
//! Renders through wgpu headless (lavapipe on a machine without a GPU, so the render figures
//! there measure a software rasteriser).

use std::time::Instant;

use eframe::egui;
use egui_kittest::Harness;

use diffusion_scope::engine::Event;
use diffusion_scope::trace::synthetic::{self, SyntheticSpec};
use diffusion_scope::ui::{App, Settings};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Frame times in ms: the UI pass alone, and UI pass + wgpu render.
#[derive(Default)]
struct Frames {
    ui: Vec<f64>,
    full: Vec<f64>,
}

impl Frames {
    fn time(&mut self, h: &mut Harness<'_, App>) {
        let t = Instant::now();
        h.step();
        self.ui.push(t.elapsed().as_secs_f64() * 1e3);
        let _ = h.render();
        self.full.push(t.elapsed().as_secs_f64() * 1e3);
    }

    fn report(mut self, name: &str) {
        println!(
            "{name:<22} UI pass p50 {:>7.2} ms  p95 {:>7.2} ms   | UI + render p50 {:>7.2} ms  p95 {:>7.2} ms   ({} frames)",
            pct(&mut self.ui, 0.5),
            pct(&mut self.ui, 0.95),
            pct(&mut self.full, 0.5),
            pct(&mut self.full, 0.95),
            self.ui.len()
        );
    }
}

fn main() {
    let t0 = Instant::now();
    let run = synthetic::run(&SyntheticSpec::sd15_full());
    println!(
        "synthetic run: {} steps, {} attention layers, built in {:.1} s",
        run.steps.len(),
        run.meta.attn_layers.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .wgpu()
        .build_eframe(|cc| App::with_settings_cc(cc, Settings::default()));
    h.run_steps(2);

    // Streaming: Started, then one step per frame, with the word "red" selected.
    let mut meta = run.meta.clone();
    meta.step_secs.clear();
    h.state_mut().store.apply(Event::Started(Box::new(meta)));
    // One frame to take in the new run (a new current run clears the selected words), then
    // select "red".
    h.step();
    h.state_mut().view.tokens = vec![vec![2]];
    let mut frames = Frames::default();
    for s in &run.steps {
        h.state_mut().store.apply(Event::Step(Box::new(s.clone())));
        frames.time(&mut h);
    }
    frames.report("while streaming");

    // Scrubbing: back and forth over all steps, one step per frame.
    h.state_mut().view.follow = false;
    let mut frames = Frames::default();
    let n = run.steps.len();
    for k in 0..2 * n {
        let step = if k < n { n - 1 - k } else { k - n };
        h.state_mut().view.step = step;
        frames.time(&mut h);
    }
    frames.report("while scrubbing");

    // Opening the run saved to disk: the load runs on a file-job thread; the window keeps
    // drawing. Frames are timed until the opened run is the current one.
    let dir = std::env::temp_dir().join(format!("ds-frames-bench-{}", std::process::id()));
    let t = Instant::now();
    diffusion_scope::trace::save_run(&run, &dir).expect("saving the synthetic trace");
    let bytes = std::fs::metadata(dir.join("trace.safetensors")).map(|m| m.len()).unwrap_or(0);
    println!("saved the run: {:.0} MB in {:.1} s", bytes as f64 / 1e6, t.elapsed().as_secs_f64());
    let before = h.state().store.runs().len();
    h.state_mut().open_path(dir.clone());
    let mut frames = Frames::default();
    let t = Instant::now();
    while h.state().store.runs().len() == before {
        frames.time(&mut h);
        assert!(t.elapsed().as_secs() < 300, "the trace did not open");
    }
    let load_secs = t.elapsed().as_secs_f64();
    frames.time(&mut h); // the first frame that shows it
    let worst_ui = frames.ui.iter().copied().fold(0.0, f64::max);
    let worst_full = frames.full.iter().copied().fold(0.0, f64::max);
    println!(
        "opening the {:.0} MB trace took {load_secs:.1} s; worst frame during the load: UI pass {worst_ui:.1} ms, UI + render {worst_full:.1} ms",
        bytes as f64 / 1e6
    );
    frames.report("while opening");
    let _ = std::fs::remove_dir_all(&dir);

    compare_tab(&mut h);
}

/// The Compare tab while a 40-cell comparison streams in, then while scrubbing it.
fn compare_tab(h: &mut Harness<'_, App>) {
    use diffusion_scope::experiments::ExperimentEvent;
    use diffusion_scope::experiments::compare::{CellOutput, CellReport, CellRole, CellSpec, CompareSettings, TrajectoryPoint};
    use diffusion_scope::trace::RgbImage;

    let mut cells = Vec::new();
    for sampler in ["ddim", "euler", "euler-a", "dpm++2m", "heun", "lms", "pndm", "ddpm"] {
        for steps in [5, 10, 20, 30, 50] {
            cells.push(CellSpec::parse(&format!("{sampler}:{steps}")).expect("a valid cell"));
        }
    }
    let settings = CompareSettings {
        prompt: "a red circle left of a blue square".into(),
        cells: cells.clone(),
        ..CompareSettings::default()
    };
    let n = settings.fractions;
    h.state_mut().view.tab = diffusion_scope::ui::Tab::Compare;
    h.state_mut().store.begin_comparison(settings);
    h.step();
    let small = synthetic::run(&SyntheticSpec::small());
    let frame = |k: usize, c: usize| RgbImage {
        width: 512,
        height: 512,
        pixels: (0..512 * 512)
            .flat_map(|p| [(p % 512 / 2 + k * 9) as u8, (p / 512 / 2 + c * 5) as u8, 128])
            .collect(),
    };
    let mut frames = Frames::default();
    let roles = std::iter::once(CellRole::Reference).chain((0..cells.len()).map(CellRole::Cell));
    for (c, role) in roles.enumerate() {
        let spec = match role {
            CellRole::Reference => CellSpec::parse("dpm++2m:200").expect("a valid cell"),
            CellRole::Cell(i) => cells[i],
        };
        let report = CellReport {
            spec,
            label: spec.label(),
            stochastic: spec.stochastic(),
            nfe: spec.steps,
            secs: 0.1 * spec.steps as f64,
            latent_rmse: 1.0 / spec.steps as f64,
            image_psnr: 20.0 + spec.steps as f64 / 5.0,
            trajectory: (0..=n)
                .map(|k| TrajectoryPoint {
                    fraction: k as f64 / n as f64,
                    step: (k < n).then_some(k),
                    psnr_to_final: 10.0 + k as f64,
                    detector_correct: Some(k > n / 2),
                })
                .collect(),
            recognisable_at: Some(0.5),
            detector_at: Some(0.6),
            quality: None,
        };
        let output = CellOutput {
            role,
            report,
            run: small.clone(),
            frames: (0..=n).map(|k| frame(k, c)).collect(),
        };
        h.state_mut()
            .store
            .apply(Event::Experiment(Box::new(ExperimentEvent::CompareCell(Box::new(output)))));
        frames.time(h);
    }
    frames.report("compare: streaming");
    let mut frames = Frames::default();
    for k in (0..=n).rev().chain(0..=n) {
        h.state_mut().view.compare_fraction = k;
        frames.time(h);
    }
    frames.report("compare: scrubbing");
}
