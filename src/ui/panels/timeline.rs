//! The timeline: play / pause, step buttons and slider, and the per-step plots (latent std, x0
//! change, the selected word's attention entropy); a click on a plot jumps there.

use eframe::egui::{self, RichText};
use egui_plot::{Line, Plot, PlotPoints, Points, VLine};

use super::exports::request_panel_export;
use crate::analysis;
use crate::ui::{App, theme};

pub fn timeline_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some((id, run)) = app.current() else {
        ui.label(RichText::new("The timeline fills in as a run streams.").weak());
        return;
    };
    let n = run.steps.len();
    if n == 0 {
        ui.label("waiting for the first step…");
        return;
    }
    let step = app.view.step.min(n - 1);
    let rec = &run.steps[step];
    let total = run.meta.timesteps.len();
    let info = format!("step {} · t = {:.1} · σ = {:.3}", step + 1, rec.timestep, rec.sigma);
    let b_info = app.store.compare.and_then(|b| {
        let r = app.store.get(b)?;
        let s = app.step_of(b)?;
        let rec = r.run.steps.get(s)?;
        Some(format!("B: {}/{} t={:.0}", s + 1, r.run.steps.len(), rec.timestep))
    });
    let (std, change) = analysis::step_curves(&run.steps);
    let mut export_plots = false;
    ui.horizontal(|ui| {
        if ui
            .button(if app.view.playing { "Pause" } else { "Play" })
            .on_hover_text("play / pause (space)")
            .clicked()
        {
            app.view.playing = !app.view.playing;
            app.view.follow = false;
        }
        if ui.button("<").on_hover_text("previous step (left arrow)").clicked() {
            app.view.step = step.saturating_sub(1);
            app.view.follow = false;
        }
        if ui.button(">").on_hover_text("next step (right arrow)").clicked() {
            app.view.step = (step + 1).min(n - 1);
            app.view.follow = false;
        }
        let mut s = step;
        let slider = ui.add(egui::Slider::new(&mut s, 0..=n - 1).text(format!("of {total}")));
        if slider.changed() {
            app.view.step = s;
            app.view.follow = false;
        }
        ui.checkbox(&mut app.view.follow, "follow");
        export_plots = ui
            .button("Export plots…")
            .on_hover_text("the three plots below as a PNG, as drawn")
            .clicked();
        ui.separator();
        ui.label(RichText::new(info).monospace());
        if let Some(b) = b_info {
            ui.separator();
            ui.label(RichText::new(b).monospace());
        }
    });
    let entropy = app.view.tokens.first().cloned().map(|pos| {
        app.word_stats(id, &pos)
            .iter()
            .map(|st| st.map(|st| st.entropy))
            .collect::<Vec<_>>()
    });
    let width = (ui.available_width() - 24.0) / 3.0;
    let plot_height = (ui.available_height() - 28.0).max(60.0);
    let mut jump = None;
    let plots = ui.horizontal(|ui| {
        for (name, values) in [
            ("latent std", std.iter().map(|&v| Some(v)).collect::<Vec<_>>()),
            ("x0 change (RMS)", change.iter().map(|&v| Some(v)).collect()),
            ("attention entropy (selected word)", entropy.clone().unwrap_or_default()),
        ] {
            ui.vertical(|ui| {
                ui.label(name);
                let pts: Vec<[f64; 2]> = values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| [i as f64, v as f64]))
                    .collect();
                let cur = values.get(step).copied().flatten();
                let resp = Plot::new(name)
                    .width(width)
                    .height(plot_height)
                    .allow_drag(false)
                    .allow_zoom(false)
                    .allow_scroll(false)
                    .show(ui, |p| {
                        if !pts.is_empty() {
                            p.line(Line::new(name, PlotPoints::from(pts)).color(theme::ACCENT));
                        }
                        p.vline(VLine::new("current step", step as f64).color(theme::MARKER));
                        if let Some(v) = cur {
                            p.points(Points::new("", vec![[step as f64, v as f64]]).radius(4.0).color(theme::MARKER));
                        }
                    });
                if resp.response.clicked()
                    && let Some(c) = resp.response.hover_pos().map(|pos| resp.transform.value_from_position(pos))
                {
                    jump = Some(c.x.round().clamp(0.0, (n - 1) as f64) as usize);
                }
            });
        }
    });
    app.view.panel_rects.insert("plots", plots.response.rect);
    if export_plots {
        request_panel_export(app, ui.ctx(), "plots", "step-curves.png");
    }
    if let Some(j) = jump {
        app.view.step = j;
        app.view.follow = false;
    }
}
