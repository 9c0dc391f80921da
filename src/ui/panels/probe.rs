//! The Probe tab: latent probing and model health, the same experiments as
//! `diffusion-scope interpolate | direction | ood | health`, run by the worker with the run
//! controls' prompt, steps, guidance, sampler, seed and size.
//!
//! - Interpolate: a slider moves through the frames (computed in the background, kept); a
//!   chosen word's attention (over the whole run) follows along on every frame.
//! - Direction: an alpha slider over the direction's sweep; the detector's readings per alpha.
//! - OOD: load or fit a reference, score an image (Score image… or drop it on the window) and
//!   see it on the histogram of the held-out reference scores.
//! - Health: the UNet output's change per unit t against the zeroed-embedding control, the
//!   verdicts and the schedule checks.

use std::sync::Arc;

use eframe::egui::{self, RichText};
use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints, VLine};

use super::exports::default_path;
use crate::analysis::probe::{self, PathKind, TimeVerdict};
use crate::analysis::{self, MapSource};
use crate::experiments::ExperimentSettings;
use crate::experiments::direction::{self, DirectionSettings, PromptPair};
use crate::experiments::health::{self, HealthSettings};
use crate::experiments::interpolate::{self, Endpoint, InterpolateSettings};
use crate::experiments::ood::ScoreKind;
use crate::trace::RgbImage;
use crate::types::CaptureMode;
use crate::ui::export::{self, Overlay};
use crate::ui::files::PathPurpose;
use crate::ui::store::Activity;
use crate::ui::{Action, App, ProbeMode};

pub fn probe_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        let m = &mut app.settings.probe.mode;
        ui.selectable_value(m, ProbeMode::Interpolate, "Interpolate");
        ui.selectable_value(m, ProbeMode::Direction, "Direction");
        ui.selectable_value(m, ProbeMode::Ood, "Out of distribution");
        ui.selectable_value(m, ProbeMode::Health, "Health");
    });
    ui.separator();
    match app.settings.probe.mode {
        ProbeMode::Interpolate => interpolate_ui(app, ui),
        ProbeMode::Direction => direction_ui(app, ui),
        ProbeMode::Ood => ood_ui(app, ui),
        ProbeMode::Health => health_ui(app, ui),
    }
}

/// "Run WHAT" / "Cancel", the settings' error, the progress bar. Returns the settings when Run
/// was clicked.
fn run_row<S>(app: &mut App, ui: &mut egui::Ui, what: &str, asked: Result<S, String>) -> Option<S> {
    let busy = app.store.busy();
    let mut run = false;
    ui.horizontal(|ui| {
        run = ui
            .add_enabled(asked.is_ok() && !busy, egui::Button::new(format!("Run {what}")))
            .clicked();
        if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
            app.send(Action::Cancel);
        }
        if let Err(e) = &asked {
            ui.label(RichText::new(e).color(crate::ui::theme::ERROR));
        }
    });
    if let Activity::Experiment(p) = &app.store.activity {
        ui.add(egui::ProgressBar::new(p.done as f32 / p.total.max(1) as f32).text(format!("{}/{}  {}", p.done, p.total, p.message)));
    }
    run.then(|| asked.ok()).flatten()
}

/// A texture of `img` cached under `key` (kind, generation, index, variant).
fn texture(app: &mut App, ctx: &egui::Context, key: (u8, u64, usize, u64), img: impl FnOnce() -> egui::ColorImage) -> egui::TextureHandle {
    app.view
        .probe_textures
        .entry(key)
        .or_insert_with(|| ctx.load_texture(format!("probe-{key:?}"), img(), egui::TextureOptions::NEAREST))
        .clone()
}

/// A clickable thumbnail, outlined when selected.
fn thumbnail(ui: &mut egui::Ui, tex: &egui::TextureHandle, side: f32, selected: bool) -> egui::Response {
    let r = ui.add(
        egui::Image::new(tex)
            .fit_to_exact_size(egui::vec2(side, side))
            .sense(egui::Sense::click()),
    );
    if selected {
        ui.painter().rect_stroke(
            r.rect.expand(1.5),
            0.0,
            egui::Stroke::new(2.0, ui.visuals().selection.stroke.color),
            egui::StrokeKind::Outside,
        );
    }
    r
}

fn color_image(img: &RgbImage) -> egui::ColorImage {
    egui::ColorImage::from_rgb([img.width, img.height], &img.pixels)
}

fn interpolate_settings(app: &App) -> Result<InterpolateSettings, String> {
    let s = &app.settings;
    let p = &s.probe;
    let settings = InterpolateSettings {
        from: Endpoint::parse(&p.from).map_err(|e| format!("from: {e}"))?,
        to: Endpoint::parse(&p.to).map_err(|e| format!("to: {e}"))?,
        frames: p.frames,
        path: if p.lerp { PathKind::Lerp } else { PathKind::Slerp },
        prompt: s.prompt.clone(),
        negative_prompt: s.negative_prompt.clone(),
        steps: s.steps.max(1),
        guidance: s.guidance,
        sampler: s.sampler,
        seed: s.seed,
        height: s.size.map(|(_, h)| h),
        width: s.size.map(|(w, _)| w),
        attention: CaptureMode::Aggregate,
    };
    settings.validate()?;
    Ok(settings)
}

fn interpolate_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        let p = &mut app.settings.probe;
        let l = ui.label("From");
        ui.add(egui::TextEdit::singleline(&mut p.from).desired_width(180.0))
            .labelled_by(l.id);
        let l = ui.label("to");
        ui.add(egui::TextEdit::singleline(&mut p.to).desired_width(180.0)).labelled_by(l.id);
        let l = ui.label("frames");
        ui.add(egui::DragValue::new(&mut p.frames).range(2..=interpolate::MAX_FRAMES))
            .labelled_by(l.id);
        ui.checkbox(&mut p.lerp, "lerp (not slerp)");
    });
    ui.label(
        RichText::new("Ends: two seeds (7), two prompts, image:PATH or latents:PATH. Noise paths use the prompt of the run controls.")
            .small()
            .weak(),
    );
    let asked = interpolate_settings(app);
    if let Some(s) = run_row(app, ui, "interpolation", asked) {
        app.view.probe_frame = 0;
        app.view.probe_word = None;
        app.send(Action::RunExperiment(ExperimentSettings::Interpolate(s)));
    }
    ui.separator();
    let Some(v) = app.store.interpolation.as_ref() else {
        ui.label(RichText::new("No interpolation yet.").weak());
        return;
    };
    let n = v.frames.len();
    let generation = v.generation;
    let ready = v.frames.iter().filter(|f| f.is_some()).count();
    app.view.probe_frame = app.view.probe_frame.min(n.saturating_sub(1));
    ui.horizontal(|ui| {
        let l = ui.label("Frame");
        ui.add(egui::Slider::new(&mut app.view.probe_frame, 0..=n.saturating_sub(1)).text(format!("of {n} ({ready} computed)")))
            .labelled_by(l.id);
        if ui.add_enabled(ready > 0, egui::Button::new("Export strip…")).clicked() {
            let v = app.store.interpolation.as_ref().expect("checked above");
            let frames: Vec<(RgbImage, String)> = v
                .frames
                .iter()
                .enumerate()
                .filter_map(|(i, f)| Some((f.as_ref()?.image.clone(), format!("{:.2}", i as f64 / (n - 1).max(1) as f64))))
                .collect();
            let title = format!("{} -> {}", v.settings.from.describe(), v.settings.to.describe());
            let fig = export::strip(&frames, 96, &title);
            let start = default_path(app, "interpolation_strip.png");
            app.send(Action::AskPath(PathPurpose::ExportPng(Arc::new(fig)), start));
        }
    });
    let k = app.view.probe_frame;
    // Word chips of the shown frame's run (the attention follows the frames).
    let v = app.store.interpolation.as_ref().expect("checked above");
    let run = v.frames.get(k).and_then(|f| f.as_ref()).and_then(|f| f.run.clone());
    if let Some(run) = &run {
        ui.horizontal_wrapped(|ui| {
            ui.label("Attention of:");
            if ui.selectable_label(app.view.probe_word.is_none(), "none").clicked() {
                app.view.probe_word = None;
            }
            for (label, pos) in super::word_chips(run, false) {
                let on = app.view.probe_word.as_ref() == Some(&pos);
                if ui.selectable_label(on, &label).clicked() {
                    app.view.probe_word = Some(pos);
                }
            }
        });
    }
    let word = app.view.probe_word.clone();
    let variant = word.as_ref().map_or(0, |w| {
        let look = format!("{w:?} {} {:?}", app.settings.opacity, app.settings.colormap);
        crate::world::rng::fnv1a(look.as_bytes())
    });
    let ctx = ui.ctx().clone();
    ui.horizontal_top(|ui| {
        let v = app.store.interpolation.as_ref().expect("checked above");
        let shown = v.frames.get(k).and_then(|f| f.as_ref()).map(|f| (f.image.clone(), f.run.clone()));
        match shown {
            Some((image, frame_run)) => {
                let map = word
                    .as_ref()
                    .zip(frame_run.as_ref())
                    .and_then(|(w, r)| analysis::word_map_over(r, 0..=r.steps.len().saturating_sub(1), &MapSource::All, w));
                let (opacity, colormap) = (app.settings.opacity, app.settings.colormap);
                let tex = texture(app, &ctx, (0, generation, k, variant), || {
                    let side = 384u32;
                    let img = match &map {
                        Some(m) => export::compose(
                            &image,
                            Some(&Overlay {
                                values: &m.values,
                                height: m.height,
                                width: m.width,
                                vmin: 0.0,
                                vmax: m.max().max(1e-12),
                                opacity,
                                colormap,
                            }),
                            side,
                            side,
                        ),
                        None => export::compose(&image, None, side, side),
                    };
                    egui::ColorImage::from_rgba_unmultiplied([img.width() as usize, img.height() as usize], img.as_raw())
                });
                let r = ui.add(egui::Image::new(&tex).fit_to_exact_size(egui::vec2(320.0, 320.0)));
                app.view.heatmap_rects.push(r.rect);
            }
            None => {
                ui.add_sized([320.0, 320.0], egui::Label::new(RichText::new("computing…").weak()));
            }
        }
        ui.vertical(|ui| {
            let v = app.store.interpolation.as_ref().expect("checked above");
            if let Some(r) = &v.report {
                ui.label(RichText::new(interpolate::render_report(r)).monospace().small());
                let line =
                    |name: &str, v: &[f64]| Line::new(name, PlotPoints::from_iter(v.iter().enumerate().map(|(i, &y)| [i as f64, y])));
                let img_steps = r.image_smoothness.as_ref().map(|s| s.steps.clone()).unwrap_or_default();
                Plot::new("probe-interp")
                    .legend(Legend::default())
                    .height(200.0)
                    .x_axis_label("frame")
                    .show(ui, |plot| {
                        plot.line(line("start RMS, slerp", &r.slerp_start_rms));
                        plot.line(line("start RMS, lerp", &r.lerp_start_rms));
                        plot.line(Line::new(
                            "image step (x10)",
                            PlotPoints::from_iter(img_steps.iter().enumerate().map(|(i, &y)| [i as f64 + 0.5, 10.0 * y])),
                        ));
                    });
            } else {
                ui.label(RichText::new("The report comes when every frame is done.").weak());
            }
        });
    });
    // Thumbnails: click one to show it.
    let mut pick = None;
    egui::ScrollArea::horizontal().show(ui, |ui| {
        ui.horizontal(|ui| {
            for i in 0..n {
                let img = app
                    .store
                    .interpolation
                    .as_ref()
                    .and_then(|v| v.frames.get(i))
                    .and_then(|f| f.as_ref())
                    .map(|f| f.image.clone());
                match img {
                    Some(img) => {
                        let tex = texture(app, &ctx, (1, generation, i, 0), || color_image(&img));
                        if thumbnail(ui, &tex, 48.0, i == k).clicked() {
                            pick = Some(i);
                        }
                    }
                    None => {
                        ui.add_sized([48.0, 48.0], egui::Label::new(RichText::new("…").weak()));
                    }
                }
            }
        });
    });
    if let Some(i) = pick {
        app.view.probe_frame = i;
    }
}

fn direction_settings(app: &App) -> Result<DirectionSettings, String> {
    let s = &app.settings;
    let p = &s.probe;
    let pairs = if p.pairs_file.trim().is_empty() {
        vec![PromptPair {
            source: p.dir_from.trim().to_owned(),
            target: p.dir_to.trim().to_owned(),
        }]
    } else {
        let text = std::fs::read_to_string(p.pairs_file.trim()).map_err(|e| format!("pairs file: {e}"))?;
        direction::parse_pairs(&text).map_err(|e| format!("pairs file: {e}"))?
    };
    if pairs.iter().any(|p| p.source.is_empty() || p.target.is_empty()) {
        return Err("type a source and a target prompt (or a pairs file)".into());
    }
    let settings = DirectionSettings {
        prompts: vec![s.prompt.clone()],
        pairs,
        alphas: probe::parse_range(&p.alphas).map_err(|e| format!("alpha: {e}"))?,
        seeds: crate::experiments::sweep::parse_seeds(&p.seeds).map_err(|e| format!("seeds: {e}"))?,
        negative_prompt: s.negative_prompt.clone(),
        steps: s.steps.max(1),
        guidance: s.guidance,
        sampler: s.sampler,
        height: s.size.map(|(_, h)| h),
        width: s.size.map(|(w, _)| w),
        attention: CaptureMode::None,
        detect: s.model.is_empty() || std::path::Path::new(&s.model).canonicalize().ok() == crate::bundled_model_path().canonicalize().ok(),
    };
    settings.validate()?;
    Ok(settings)
}

fn direction_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        let p = &mut app.settings.probe;
        let l = ui.label("Source");
        ui.add(egui::TextEdit::singleline(&mut p.dir_from).desired_width(160.0))
            .labelled_by(l.id);
        let l = ui.label("target");
        ui.add(egui::TextEdit::singleline(&mut p.dir_to).desired_width(160.0))
            .labelled_by(l.id);
        let l = ui.label("or pairs file");
        ui.add(egui::TextEdit::singleline(&mut p.pairs_file).desired_width(140.0))
            .labelled_by(l.id);
    });
    ui.horizontal_wrapped(|ui| {
        let p = &mut app.settings.probe;
        let l = ui.label("alpha");
        ui.add(egui::TextEdit::singleline(&mut p.alphas).desired_width(80.0))
            .labelled_by(l.id);
        let l = ui.label("seeds");
        ui.add(egui::TextEdit::singleline(&mut p.seeds).desired_width(60.0))
            .labelled_by(l.id);
        ui.label(RichText::new("applied to the prompt of the run controls").small().weak());
    });
    let asked = direction_settings(app);
    if let Some(s) = run_row(app, ui, "direction sweep", asked) {
        app.view.probe_alpha = direction::reference_alpha(&s.alphas);
        app.send(Action::RunExperiment(ExperimentSettings::Direction(s)));
    }
    ui.separator();
    let Some(v) = app.store.direction.as_ref() else {
        ui.label(RichText::new("No direction sweep yet.").weak());
        return;
    };
    let (na, ns) = (v.settings.alphas.len(), v.settings.seeds.len());
    let generation = v.generation;
    let alphas = v.settings.alphas.clone();
    let seeds = v.settings.seeds.clone();
    app.view.probe_alpha = app.view.probe_alpha.min(na.saturating_sub(1));
    ui.horizontal(|ui| {
        let l = ui.label("alpha");
        let mut ai = app.view.probe_alpha;
        ui.add(egui::Slider::new(&mut ai, 0..=na.saturating_sub(1)).custom_formatter(|i, _| format!("{:+.2}", alphas[i as usize])))
            .labelled_by(l.id);
        app.view.probe_alpha = ai;
    });
    let ai = app.view.probe_alpha;
    let ctx = ui.ctx().clone();
    ui.horizontal_wrapped(|ui| {
        for (si, seed) in seeds.iter().enumerate() {
            let img = app.store.direction.as_ref().and_then(|v| v.images.get(&(0, si, ai)).cloned());
            ui.vertical(|ui| {
                match img {
                    Some(img) => {
                        let tex = texture(app, &ctx, (2, generation, si * na + ai, 0), || color_image(&img));
                        ui.add(egui::Image::new(&tex).fit_to_exact_size(egui::vec2(192.0, 192.0)));
                    }
                    None => {
                        ui.add_sized([192.0, 192.0], egui::Label::new(RichText::new("computing…").weak()));
                    }
                }
                ui.label(RichText::new(format!("seed {seed}, alpha {:+.2}", alphas[ai])).small());
            });
        }
    });
    // Every image small: rows = seeds, columns = alpha.
    for si in 0..ns {
        ui.horizontal(|ui| {
            for a in 0..na {
                let img = app.store.direction.as_ref().and_then(|v| v.images.get(&(0, si, a)).cloned());
                match img {
                    Some(img) => {
                        let tex = texture(app, &ctx, (2, generation, si * na + a, 0), || color_image(&img));
                        if thumbnail(ui, &tex, 40.0, a == ai).clicked() {
                            app.view.probe_alpha = a;
                        }
                    }
                    None => {
                        ui.add_sized([40.0, 40.0], egui::Label::new(RichText::new("…").weak()));
                    }
                }
            }
        });
    }
    if let Some(r) = app.store.direction.as_ref().and_then(|v| v.report.as_ref()) {
        ui.label(RichText::new(direction::render_report(r)).monospace().small());
    }
}

fn ood_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        if ui.button("Load reference…").clicked() {
            let start = default_path(app, "ood-reference.json");
            app.send(Action::AskPath(PathPurpose::OodReference, start));
        }
        if ui
            .add_enabled(!app.store.busy(), egui::Button::new("Fit reference on a folder…"))
            .clicked()
        {
            let start = default_path(app, "");
            app.send(Action::AskPath(PathPurpose::OodFit, start));
        }
        let has_ref = app.store.ood.reference.is_some();
        if ui
            .add_enabled(has_ref && !app.store.busy(), egui::Button::new("Score image…"))
            .on_hover_text("an image file or a folder of images; or drop an image on the window")
            .clicked()
        {
            let start = default_path(app, "");
            app.send(Action::AskPath(PathPurpose::OodScore, start));
        }
        if app.store.busy() && ui.button("Cancel").clicked() {
            app.send(Action::Cancel);
        }
        let k = &mut app.settings.probe.score;
        ui.selectable_value(k, ScoreKind::Diag, "per-dimension score");
        ui.selectable_value(k, ScoreKind::Pooled, "pooled full-covariance score");
        ui.selectable_value(k, ScoreKind::Patch, "patch score");
    });
    if let Activity::Experiment(p) = &app.store.activity {
        ui.add(egui::ProgressBar::new(p.done as f32 / p.total.max(1) as f32).text(format!("{}/{}  {}", p.done, p.total, p.message)));
    }
    ui.separator();
    let kind = app.settings.probe.score;
    let Some((origin, reference)) = app.store.ood.reference.clone() else {
        ui.label(
            RichText::new(
                "No reference yet: load one (written by `diffusion-scope ood fit`) or fit one on a folder of in-distribution images.",
            )
            .weak(),
        );
        return;
    };
    let threshold = reference.threshold.get(kind);
    ui.label(format!(
        "Reference: {origin} ({} images fitted, {} held out; model {}); threshold {threshold:.3} at {:.0}% false positives",
        reference.diag.count,
        reference.held_out_diag.len(),
        reference.model,
        100.0 * reference.fpr
    ));
    let scored = app.store.ood.scored.clone();
    if let Some(s) = &scored {
        let flagged = s.scores.iter().filter(|x| x.score.get(kind) > threshold).count();
        ui.label(RichText::new(format!("{flagged} of {} scored images above the threshold", s.scores.len())).strong());
        egui::ScrollArea::vertical().id_salt("ood-scores").max_height(150.0).show(ui, |ui| {
            for img in &s.scores {
                let v = img.score.get(kind);
                let ood = v > threshold;
                ui.label(
                    RichText::new(format!(
                        "{}: {v:.3}, {}{}",
                        img.name,
                        if ood { "out of distribution" } else { "in distribution" },
                        img.resized_from.map_or(String::new(), |(w, h)| format!(" (resized from {w}x{h})"))
                    ))
                    .color(if ood { crate::ui::theme::ERROR } else { ui.visuals().text_color() }),
                );
            }
            for (name, why) in &s.skipped {
                ui.label(RichText::new(format!("skipped {name}: {why}")).color(crate::ui::theme::ERROR));
            }
        });
    } else {
        ui.label(RichText::new("Score an image (Score image…, or drop one on the window) to see it on the histogram.").weak());
    }
    // The histogram of the held-out reference scores, the threshold and the scored images.
    let held = reference.held_out(kind);
    let marks: Vec<f64> = scored
        .as_ref()
        .map_or(Vec::new(), |s| s.scores.iter().map(|x| x.score.get(kind)).collect());
    let lo = held.iter().chain(&marks).copied().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = held.iter().chain(&marks).copied().fold(threshold, f64::max) * 1.05;
    let bins = 30;
    let width = (hi - lo) / bins as f64;
    let counts = probe::histogram(held, lo, hi, bins);
    let bars: Vec<Bar> = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| Bar::new(lo + (i as f64 + 0.5) * width, c as f64).width(width))
        .collect();
    Plot::new("probe-ood")
        .legend(Legend::default())
        .height(260.0)
        .x_axis_label("score")
        .y_axis_label("held-out reference images")
        .show(ui, |plot| {
            plot.bar_chart(BarChart::new("held-out reference images", bars).color(egui::Color32::from_rgb(140, 140, 150)));
            plot.vline(
                VLine::new("threshold", threshold)
                    .color(egui::Color32::from_rgb(220, 60, 60))
                    .width(2.0),
            );
            for m in &marks {
                plot.vline(VLine::new("scored images", *m).color(egui::Color32::from_rgb(70, 130, 240)));
            }
        });
}

fn health_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        let p = &mut app.settings.probe;
        let l = ui.label("timesteps");
        ui.add(egui::DragValue::new(&mut p.health_points).range(3..=1000)).labelled_by(l.id);
        ui.checkbox(&mut p.health_control, "compare with the time embedding zeroed");
        ui.label(
            RichText::new("inputs: seeds 0 and 1; the prompt, sampler and steps of the run controls")
                .small()
                .weak(),
        );
    });
    let s = &app.settings;
    let settings = HealthSettings {
        prompt: s.prompt.clone(),
        seeds: vec![0, 1],
        points: s.probe.health_points,
        zeroed_control: s.probe.health_control,
        sampler: s.sampler,
        steps: s.steps.max(1),
        karras: s.karras,
        ..HealthSettings::default()
    };
    if let Some(s) = run_row(app, ui, "health check", Ok::<_, String>(settings)) {
        app.send(Action::RunExperiment(ExperimentSettings::Health(s)));
    }
    ui.separator();
    let Some(r) = app.store.health.clone() else {
        ui.label(RichText::new("No health check yet.").weak());
        return;
    };
    for (name, v) in [("Model", r.verdict), ("Time embedding zeroed (control)", r.zeroed_verdict)] {
        if let Some(v) = v {
            let colour = match v {
                TimeVerdict::Healthy => egui::Color32::from_rgb(45, 140, 65),
                _ => crate::ui::theme::ERROR,
            };
            ui.label(RichText::new(format!("{name}: {}", v.describe())).strong().color(colour));
        }
    }
    if ui.button("Export plots…").clicked() {
        let figs = export::health_figures(&r);
        if let Some((name, fig)) = figs.into_iter().next() {
            let start = default_path(app, name);
            app.send(Action::AskPath(PathPurpose::ExportPng(Arc::new(fig)), start));
        }
    }
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(ui.available_width() * 0.55);
            Plot::new("probe-health")
                .legend(Legend::default())
                .height(280.0)
                .x_axis_label("t")
                .y_axis_label("relative change per 1000 t")
                .show(ui, |plot| {
                    for (name, resp) in [("model", &r.response), ("time embedding zeroed", &r.zeroed)] {
                        if let Some(x) = resp {
                            let pts = x
                                .change_per_t
                                .iter()
                                .zip(x.timesteps.windows(2))
                                .map(|(c, t)| [(t[0] + t[1]) / 2.0, 1000.0 * c]);
                            plot.line(Line::new(name, PlotPoints::from_iter(pts)));
                        }
                    }
                });
        });
        ui.vertical(|ui| {
            ui.label(RichText::new(health::render_report(&r)).monospace());
        });
    });
    // The training schedule's log-SNR, with the sampler's first and last timesteps marked.
    let c = &r.schedule;
    Plot::new("probe-health-schedule")
        .legend(Legend::default())
        .height(200.0)
        .x_axis_label("t")
        .y_axis_label("log-SNR")
        .show(ui, |plot| {
            let pts = c
                .alpha_bar
                .iter()
                .enumerate()
                .map(|(t, &a)| [t as f64, ((a as f64) / (1.0 - a as f64)).ln()]);
            plot.line(Line::new("training schedule", PlotPoints::from_iter(pts)));
            plot.vline(VLine::new("sampler's first and last timestep", c.sampler_first_timestep));
            plot.vline(VLine::new("sampler's first and last timestep", c.sampler_last_timestep));
        });
}
