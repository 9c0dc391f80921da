//! The Schedules tab: alpha_bar / log-SNR / beta of the standard schedules and of the shown
//! run's own, its timesteps, and the exponential time-step sampling of arXiv 2402.10404. The
//! curves are built once per shown run, not per frame.

use std::sync::Arc;

use eframe::egui;
use egui_plot::{Line, Plot, PlotPoints, Points};

use super::exports::request_panel_export;
use crate::analysis::schedules::{self, ScheduleCurves};
use crate::sampling::config::SchedulerConfig;
use crate::sampling::{ExpVariant, schedule};
use crate::trace::Run;
use crate::ui::{App, theme};

const CURVES: [&str; 3] = ["alpha_bar", "log-SNR", "beta"];

/// The standard curves and, when the run's scheduler settings allow, the run's own (last).
fn build_curves(run: Option<&Run>) -> Vec<ScheduleCurves> {
    let mut curves = schedules::standard_curves(1000);
    if let Some(run) = run
        && let (Some(class), Some(cfg)) = (
            run.meta.scheduler.get("class_name").and_then(|v| v.as_str()),
            run.meta.scheduler.get("config").and_then(|v| v.as_object()),
        )
    {
        let mut map = cfg.clone();
        map.insert("_class_name".into(), class.into());
        if let Ok(c) = schedules::curves_for(&format!("this model ({})", run.meta.sampler), &SchedulerConfig::from_map(map)) {
            curves.push(c);
        }
    }
    curves
}

pub fn schedules_ui(app: &mut App, ui: &mut egui::Ui) {
    let sv = &mut app.view.schedule;
    let mut export = false;
    ui.horizontal(|ui| {
        ui.label("Curve:");
        for (i, name) in CURVES.iter().enumerate() {
            ui.selectable_value(&mut sv.curve, i, *name);
        }
        ui.separator();
        ui.label("Exponential time-step sampling (arXiv 2402.10404):");
        let lg = ui.label("λ");
        ui.add(egui::DragValue::new(&mut sv.gamma).range(1.0..=500.0))
            .labelled_by(lg.id)
            .on_hover_text("the authors' lambda: larger is closer to uniform");
        let ls = ui.label("steps");
        ui.add(egui::DragValue::new(&mut sv.steps).range(2..=200)).labelled_by(ls.id);
        ui.checkbox(&mut sv.latter, "latter");
        ui.separator();
        export = ui
            .button("Export plot…")
            .on_hover_text("the plot below as a PNG, as drawn")
            .clicked();
    });
    let (which, gamma, l, latter) = (sv.curve, sv.gamma, sv.steps, sv.latter);
    if export {
        let name = format!("schedules-{}.png", ["alpha_bar", "log-snr", "beta"][which]);
        request_panel_export(app, ui.ctx(), "schedules", &name);
    }
    let shown = app.store.current;
    let curves = match &app.view.schedule.curves {
        Some((id, c)) if *id == shown => c.clone(),
        _ => {
            let c = Arc::new(build_curves(app.store.current()));
            app.view.schedule.curves = Some((shown, c.clone()));
            c
        }
    };
    let run_t: &[f64] = app.store.current().map_or(&[], |r| &r.meta.timesteps);
    let variant = if latter { ExpVariant::Latter } else { ExpVariant::Early };
    let exp_t = schedule::exponential_timesteps(1000, l, variant, gamma);
    let value = |c: &ScheduleCurves, t: usize| -> f64 {
        match which {
            0 => c.alphas_cumprod[t] as f64,
            1 => c.log_snr[t],
            _ => c.betas[t] as f64,
        }
    };
    let plot = Plot::new("schedules")
        .legend(egui_plot::Legend::default())
        .x_axis_label("training timestep t")
        .y_axis_label(CURVES[which])
        .show(ui, |p| {
            for c in curves.iter() {
                let pts: Vec<[f64; 2]> = (0..c.alphas_cumprod.len()).map(|t| [t as f64, value(c, t)]).collect();
                p.line(Line::new(c.name.clone(), PlotPoints::from(pts)));
            }
            if let Some(own) = curves.last() {
                let pts: Vec<[f64; 2]> = run_t
                    .iter()
                    .filter(|t| (**t as usize) < own.alphas_cumprod.len())
                    .map(|&t| [t, value(own, t as usize)])
                    .collect();
                p.points(Points::new("this run's timesteps", pts).radius(3.5).color(theme::MARKER));
            }
            let base = &curves[1.min(curves.len() - 1)];
            let pts: Vec<[f64; 2]> = exp_t
                .iter()
                .filter(|&&t| t >= 0 && (t as usize) < base.alphas_cumprod.len())
                .map(|&t| [t as f64, value(base, t as usize)])
                .collect();
            p.points(
                Points::new("exponential sampling (on scaled_linear)", pts)
                    .radius(3.0)
                    .shape(egui_plot::MarkerShape::Diamond),
            );
        });
    app.view.panel_rects.insert("schedules", plot.response.rect);
}
