//! The top bar: tabs, file actions, exports, what the worker and the file jobs are doing, and
//! the error or status line.

use eframe::egui::{self, RichText};

use super::exports;
use crate::ui::files::PathPurpose;
use crate::ui::store::Activity;
use crate::ui::{Action, App, Tab, theme};

pub fn top_bar_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("Diffusion Scope");
        ui.separator();
        ui.selectable_value(&mut app.view.tab, Tab::Run, "Run");
        ui.selectable_value(&mut app.view.tab, Tab::Schedules, "Schedules");
        ui.selectable_value(&mut app.view.tab, Tab::Compare, "Compare");
        ui.selectable_value(&mut app.view.tab, Tab::Evaluate, "Evaluate");
        ui.selectable_value(&mut app.view.tab, Tab::Probe, "Probe");
        ui.separator();
        if ui
            .button("Open run…")
            .on_hover_text("open a saved run folder (or drop one on the window)")
            .clicked()
        {
            let start = exports::default_path(app, "");
            app.send(Action::AskPath(PathPurpose::OpenRun, start));
        }
        let current = app.store.current;
        let has_run = app.store.current().is_some_and(|r| !r.steps.is_empty());
        let streaming = current.is_some_and(|id| app.store.is_streaming(id));
        if ui.add_enabled(has_run && !streaming, egui::Button::new("Save run…")).clicked()
            && let Some(id) = current
        {
            let start = exports::default_path(app, &format!("run-{}", id.0));
            app.send(Action::AskPath(PathPurpose::SaveRun(id), start));
        }
        if ui.add_enabled(has_run, egui::Button::new("Export heatmap…")).clicked() {
            exports::export_heatmap(app);
        }
        if ui
            .add_enabled(has_run, egui::Button::new("Copy heatmap"))
            .on_hover_text("copy the heatmap figure to the clipboard")
            .clicked()
        {
            exports::copy_heatmap(app, ui.ctx());
        }
        if ui
            .add_enabled(has_run, egui::Button::new("Export strip…"))
            .on_hover_text("x0 at evenly spaced steps (of the aggregation range when set)")
            .clicked()
        {
            exports::export_strip(app);
        }
        if ui
            .add_enabled(has_run, egui::Button::new("Export step…"))
            .on_hover_text("x_t, x0, model output (and the final image) of the selected step, labelled")
            .clicked()
        {
            exports::export_step(app);
        }
        let l = ui.label("strip:");
        ui.add(egui::DragValue::new(&mut app.settings.strip_frames).range(1..=20).suffix(" frames"))
            .labelled_by(l.id);
        ui.separator();
        activity_ui(app, ui);
        for (_, job) in app.file_jobs() {
            let f = job.fraction();
            if f > 0.0 {
                ui.add(egui::ProgressBar::new(f).desired_width(120.0).show_percentage())
                    .on_hover_text(&job.label);
            } else {
                ui.spinner();
            }
            ui.label(&job.label);
        }
        if let Some(e) = &app.store.error {
            ui.label(RichText::new(format!("error: {e}")).color(theme::ERROR));
        } else if let Some(m) = &app.view.message {
            ui.label(m);
        } else {
            ui.label(&app.store.status);
        }
    });
}

fn activity_ui(app: &App, ui: &mut egui::Ui) {
    match &app.store.activity {
        Activity::Idle => {}
        Activity::LoadingModel(m) => {
            ui.spinner();
            ui.label(format!("loading {m}"));
        }
        Activity::Running => {
            ui.spinner();
            let (done, total) = app.store.current().map_or((0, 0), |r| (r.steps.len(), r.meta.timesteps.len()));
            ui.label(format!("step {done}/{total}"));
        }
        Activity::Decoding => {
            ui.spinner();
            ui.label("decoding");
        }
        Activity::Experiment(p) => {
            ui.spinner();
            let item: String = p.message.chars().take(40).collect();
            ui.label(format!("experiment {}/{} {item}", p.done, p.total));
        }
    }
}
