//! The panels, one file each. Every `*_ui` function reads the store and the settings, changes
//! its own view state, and turns what the user asks for into [`Action`]s (`app.send`); none of
//! them changes the store.
//!
//! A new panel: a file here with its `*_ui` function, called from [`app_ui`] (or from the panel
//! that hosts it); state that must outlive a frame goes in `ViewState` (never in statics).

mod compare;
mod controls;
mod evaluate;
mod exports;
mod images;
mod probe;
mod quality;
mod runs;
mod saliency;
mod schedules;
mod timeline;
mod tokens;
mod top_bar;

use eframe::egui;

use super::{App, Tab};
use crate::trace::Run;

pub use exports::strip_steps;
pub use images::cell_at;

pub fn app_ui(app: &mut App, ui: &mut egui::Ui) {
    app.view.heatmap_rects.clear();
    exports::receive_panel_capture(app, ui.ctx());
    keyboard(app, ui);
    egui::Panel::top("top").show(ui, |ui| top_bar::top_bar_ui(app, ui));
    egui::Panel::left("controls").resizable(true).default_size(300.0).show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            controls::controls_ui(app, ui);
            ui.separator();
            runs::runs_ui(app, ui);
            ui.separator();
            controls::heatmap_controls_ui(app, ui);
        });
    });
    if app.view.tab == Tab::Run {
        egui::Panel::bottom("timeline")
            .resizable(true)
            .default_size(230.0)
            .min_size(200.0)
            .show(ui, |ui| timeline::timeline_ui(app, ui));
    }
    egui::CentralPanel::default().show(ui, |ui| match app.view.tab {
        Tab::Run => {
            tokens::tokens_ui(app, ui);
            saliency::saliency_row_ui(app, ui);
            ui.separator();
            images::image_ui(app, ui);
        }
        Tab::Schedules => schedules::schedules_ui(app, ui),
        Tab::Compare => compare::compare_ui(app, ui),
        Tab::Evaluate => evaluate::evaluate_ui(app, ui),
        Tab::Probe => probe::probe_ui(app, ui),
    });
    exports::path_prompt_ui(app, ui.ctx());
}

fn keyboard(app: &mut App, ui: &egui::Ui) {
    if ui.ctx().egui_wants_keyboard_input() {
        return;
    }
    let n = app.store.current().map_or(0, |r| r.steps.len());
    if n == 0 {
        return;
    }
    ui.input(|i| {
        if i.key_pressed(egui::Key::ArrowRight) {
            app.view.step = (app.view.step + 1).min(n - 1);
            app.view.follow = false;
        }
        if i.key_pressed(egui::Key::ArrowLeft) {
            app.view.step = app.view.step.saturating_sub(1);
            app.view.follow = false;
        }
        if i.key_pressed(egui::Key::Space) {
            app.view.playing = !app.view.playing;
            app.view.follow = false;
        }
    });
}

/// A layer key as a short label.
pub(crate) fn short_key(k: &str) -> String {
    if let Some(r) = k.strip_prefix("attn_res.") {
        return format!("resolution {r}");
    }
    k.strip_prefix("attn.")
        .unwrap_or(k)
        .replace(".transformer_blocks.", ".tb")
        .replace(".attentions.", ".a")
}

/// Words of the prompt as (label, token positions).
pub fn word_chips(run: &Run, show_special: bool) -> Vec<(String, Vec<usize>)> {
    let m = &run.meta;
    let mut chips: Vec<(String, Vec<usize>)> = Vec::new();
    if show_special && m.tokens_used > 0 {
        chips.push(("<bos>".into(), vec![0]));
    }
    for (w, word) in m.words.iter().enumerate() {
        let pos: Vec<usize> = m
            .word_of_token
            .iter()
            .enumerate()
            .filter(|(_, x)| **x == Some(w))
            .map(|(p, _)| p)
            .collect();
        if !pos.is_empty() {
            chips.push((word.clone(), pos));
        }
    }
    if show_special && m.tokens_used >= 2 {
        chips.push(("<eos>".into(), vec![m.tokens_used - 1]));
    }
    chips
}

/// The label of the word at token positions `pos` of `run`.
pub(crate) fn word_label(run: &Run, pos: &[usize]) -> String {
    word_chips(run, true)
        .into_iter()
        .find(|(_, p)| p == pos)
        .map(|(l, _)| l)
        .unwrap_or_default()
}
