//! The prompt's words as chips: click one to see its heatmap, shift-click to compare words.

use eframe::egui::{self, Color32, RichText};

use super::word_chips;
use crate::types::CaptureMode;
use crate::ui::heatmap::MAX_SLOTS;
use crate::ui::{App, theme};

pub fn tokens_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some(run) = app.store.current() else { return };
    let chips = word_chips(run, app.settings.show_special_tokens);
    let capture_off = run.meta.attention == CaptureMode::None;
    // In A/B, each selected word is drawn for both runs: half as many fit.
    let max_words = if app.store.compare.is_some() { MAX_SLOTS / 2 } else { MAX_SLOTS };
    let tokens = &mut app.view.tokens;
    ui.horizontal_wrapped(|ui| {
        ui.label("Tokens:");
        for (label, pos) in chips {
            let selected = tokens.contains(&pos);
            let text = RichText::new(&label).size(15.0);
            let b = egui::Button::new(text)
                .selected(selected)
                .fill(if selected { theme::CHIP_SELECTED } else { Color32::from_gray(45) });
            let r = ui.add(b).on_hover_text(format!("token positions {pos:?}; shift-click to compare"));
            if r.clicked() {
                let shift = ui.input(|i| i.modifiers.shift);
                if shift {
                    if selected {
                        tokens.retain(|p| p != &pos);
                    } else if tokens.len() < max_words {
                        tokens.push(pos);
                    }
                } else if selected && tokens.len() == 1 {
                    tokens.clear();
                } else {
                    *tokens = vec![pos];
                }
            }
        }
        if capture_off {
            ui.label(RichText::new("(attention capture was off for this run)").weak());
        }
    });
}
