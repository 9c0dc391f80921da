//! The runs the app holds: pick the one shown (A), the one beside it (B), close runs.

use eframe::egui::{self, RichText};

use crate::trace::RunStatus;
use crate::ui::{Action, App};

pub fn runs_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.heading("Runs");
    if app.store.runs().is_empty() {
        ui.label(RichText::new("Generated and opened runs are listed here.").weak());
        return;
    }
    ui.label(RichText::new("A: shown · B: side by side with A").weak());
    let (current, compare) = (app.store.current, app.store.compare);
    let mut actions = Vec::new();
    egui::Grid::new("runs").num_columns(4).striped(true).show(ui, |ui| {
        for r in app.store.runs().iter().rev() {
            let id = r.id;
            let is_a = current == Some(id);
            let a = ui.selectable_label(is_a, "A");
            a.widget_info(|| egui::WidgetInfo::selected(egui::Role::Button, true, is_a, format!("show run {id}")));
            if a.on_hover_text(format!("show run {id}")).clicked() {
                actions.push(Action::SelectRun(id));
            }
            let is_b = compare == Some(id);
            let enabled = current != Some(id);
            let b = ui.add_enabled(enabled, egui::Button::selectable(is_b, "B"));
            b.widget_info(|| {
                egui::WidgetInfo::selected(egui::Role::Button, enabled, is_b, format!("compare run {id} side by side with A"))
            });
            if b.on_hover_text(format!("compare run {id} side by side with A")).clicked() {
                actions.push(Action::Compare(if is_b { None } else { Some(id) }));
            }
            let status = match r.run.meta.status {
                RunStatus::Running if app.store.is_streaming(id) => " (running)",
                RunStatus::Running | RunStatus::Complete => "",
                RunStatus::Cancelled => " (cancelled)",
                RunStatus::Failed => " (failed)",
            };
            let origin = match &r.origin {
                crate::ui::store::Origin::Generated => String::new(),
                crate::ui::store::Origin::Opened(p) => format!("\nopened from {}", p.display()),
            };
            ui.label(format!("{}{status}", r.label()))
                .on_hover_text(format!("{}{origin}", r.run.meta.prompt));
            let closable = !app.store.is_streaming(id);
            let x = ui.add_enabled(closable, egui::Button::new("×"));
            x.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, closable, format!("close run {id}")));
            if x.on_hover_text(format!("close run {id}")).clicked() {
                actions.push(Action::CloseRun(id));
            }
            ui.end_row();
        }
    });
    for a in actions {
        app.send(a);
    }
}
