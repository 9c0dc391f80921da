//! The Evaluate tab: the shapes-world evaluation (the same experiment as `diffusion-scope
//! eval`, run by the worker), its progress and its summary.

use eframe::egui::{self, RichText};

use crate::experiments::shapes_eval::render_summary;
use crate::experiments::{ExperimentReport, ExperimentSettings, Stop};
use crate::ui::store::Activity;
use crate::ui::{Action, App};

pub fn evaluate_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.heading("Shapes-world evaluation");
    ui.label(
        RichText::new(
            "Generates from held-out captions of the shapes world, judges each image with the world's detector and scores \
             every object word's attention against the object's mask (needs a shapes-world model, e.g. the bundled one).",
        )
        .weak(),
    );
    let busy = app.store.busy();
    let e = &mut app.settings.eval;
    egui::Grid::new("eval-settings").num_columns(2).show(ui, |ui| {
        let l = ui.label("Captions");
        ui.add(egui::DragValue::new(&mut e.count).range(1..=2000)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Steps");
        ui.add(egui::DragValue::new(&mut e.steps).range(1..=1000)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Guidance");
        ui.add(egui::DragValue::new(&mut e.guidance).range(1.0..=20.0).speed(0.1))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("First seed");
        ui.add(egui::DragValue::new(&mut e.seed)).labelled_by(l.id);
        ui.end_row();
    });
    let settings = e.clone();
    ui.horizontal(|ui| {
        if ui.add_enabled(!busy, egui::Button::new("Evaluate")).clicked() {
            app.send(Action::RunExperiment(ExperimentSettings::ShapesEval(settings)));
        }
        if ui.add_enabled(busy, egui::Button::new("Cancel evaluation")).clicked() {
            app.send(Action::Cancel);
        }
    });
    if let Activity::Experiment(p) = &app.store.activity {
        ui.add(egui::ProgressBar::new(p.done as f32 / p.total.max(1) as f32).text(format!("{}/{}  {}", p.done, p.total, p.message)));
    }
    ui.separator();
    match &app.store.experiment {
        None
        | Some((
            ExperimentReport::Compare(_)
            | ExperimentReport::Sweep(_)
            | ExperimentReport::GenerateSet(_)
            | ExperimentReport::Quality(_)
            | ExperimentReport::Saliency(_)
            | ExperimentReport::SaliencyEval(_)
            | ExperimentReport::Interpolate(_)
            | ExperimentReport::Direction(_)
            | ExperimentReport::OodFit(_)
            | ExperimentReport::OodScore(_)
            | ExperimentReport::OodEval(_)
            | ExperimentReport::Health(_),
            _,
        )) => {
            ui.label(RichText::new("No evaluation yet.").weak());
        }
        Some((ExperimentReport::ShapesEval(report), stopped)) => {
            if let Some(Stop::Failed(e)) = stopped {
                ui.label(RichText::new(format!("stopped: {e}")).color(crate::ui::theme::ERROR));
            }
            egui::ScrollArea::vertical().show(ui, |ui| {
                ui.label(RichText::new(render_summary(report)).monospace());
            });
        }
    }
}
