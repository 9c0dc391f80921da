//! The Run tab's saliency row: choose DF-RISE or DF-CAM (arXiv 2402.10404) as the overlay
//! drawn over x0, and compute it for the selected step or for every step (the run is rerun
//! with the maps computed inside the loop; progress shown, cancellable).

use eframe::egui::{self, RichText};

use crate::experiments::saliency::CAM_ALL;
use crate::ui::store::Activity;
use crate::ui::{Action, App};

/// The DF-CAM blocks offered: the authors' default, the transformer blocks of the run's layers,
/// the mid block's resnets and the sum over all blocks.
fn block_choices(app: &App) -> Vec<String> {
    let mut v = vec!["mid_block.resnets.0".to_string(), "mid_block.resnets.1".to_string()];
    if let Some(run) = app.store.current() {
        for l in &run.meta.attn_layers {
            if let Some((block, _)) = l.path.split_once(".transformer_blocks.")
                && !v.iter().any(|b| b == block)
            {
                v.push(block.to_owned());
            }
        }
        for key in run
            .steps
            .iter()
            .flat_map(|s| &s.saliency)
            .filter_map(|m| m.key.strip_prefix("cam."))
        {
            if !v.iter().any(|b| b == key) {
                v.push(key.to_owned());
            }
        }
    }
    if !v.iter().any(|b| b == CAM_ALL) {
        v.push(CAM_ALL.into());
    }
    v
}

/// "DF-RISE", "DF-CAM mid_block.resnets.0", ...
pub fn overlay_label(key: &str) -> String {
    match key.strip_prefix("cam.") {
        Some(b) if b == CAM_ALL => "DF-CAM, all blocks".into(),
        Some(b) => format!("DF-CAM {b}"),
        None => "DF-RISE".into(),
    }
}

pub fn saliency_row_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some(run) = app.store.current() else { return };
    let n = run.steps.len();
    let step = app.view.step.min(n.saturating_sub(1));
    let finished = run.image.is_some();
    let blocks = block_choices(app);
    let busy = !matches!(app.store.activity, Activity::Idle);
    let computing = app.store.saliency_for.is_some() && busy;
    ui.horizontal_wrapped(|ui| {
        ui.label("Saliency:");
        let mut choice = app.view.overlay.clone();
        ui.selectable_value(&mut choice, None, "off");
        ui.selectable_value(&mut choice, Some("rise".to_string()), "DF-RISE")
            .on_hover_text("masks on x_t, scored by the SSIM structure of the step's output (arXiv 2402.10404)");
        let cam = format!("cam.{}", app.settings.saliency.block);
        ui.selectable_value(&mut choice, Some(cam.clone()), "DF-CAM")
            .on_hover_text("Grad-CAM of a UNet block at the step");
        let bl = ui.label("block");
        egui::ComboBox::from_id_salt("cam-block")
            .selected_text(&app.settings.saliency.block)
            .width(200.0)
            .show_ui(ui, |ui| {
                for b in &blocks {
                    ui.selectable_value(&mut app.settings.saliency.block, b.clone(), b);
                }
            })
            .response
            .labelled_by(bl.id);
        // Picking another block while DF-CAM is shown shows that block.
        if choice.as_deref().is_some_and(|c| c.starts_with("cam.")) {
            choice = Some(format!("cam.{}", app.settings.saliency.block));
        }
        app.view.overlay = choice;
        ui.separator();
        let l = ui.label("masks");
        ui.add(egui::DragValue::new(&mut app.settings.saliency.masks).range(1..=5000))
            .labelled_by(l.id)
            .on_hover_text("DF-RISE masks per step (the authors: 500)");
    });
    let Some(key) = app.view.overlay.clone() else { return };
    let have: usize = run.steps.iter().filter(|s| s.saliency.iter().any(|m| m.key == key)).count();
    let here = run.steps.get(step).is_some_and(|s| s.saliency.iter().any(|m| m.key == key));
    ui.horizontal(|ui| {
        let can = finished && !busy;
        let why = if !finished {
            "wait for the run to finish"
        } else if busy {
            "the worker is busy"
        } else {
            "reruns this run and computes the map inside the loop"
        };
        if ui
            .add_enabled(can, egui::Button::new(format!("Compute at step {}", step + 1)))
            .on_hover_text(why)
            .on_disabled_hover_text(why)
            .clicked()
        {
            app.send(Action::ComputeSaliency(Some(vec![step])));
        }
        if ui
            .add_enabled(can, egui::Button::new("Compute at every step"))
            .on_hover_text(why)
            .on_disabled_hover_text(why)
            .clicked()
        {
            app.send(Action::ComputeSaliency(None));
        }
        if ui.add_enabled(computing, egui::Button::new("Cancel")).clicked() {
            app.send(Action::Cancel);
        }
        let status = format!(
            "{}: {have} of {n} steps computed{}",
            overlay_label(&key),
            if here { "" } else { " (not this one)" }
        );
        ui.label(RichText::new(status).weak());
    });
    if computing && let Activity::Experiment(p) = &app.store.activity {
        ui.add(egui::ProgressBar::new(p.done as f32 / p.total.max(1) as f32).text(format!("{}/{}  {}", p.done, p.total, p.message)));
    }
}
