//! The left panel's model, prompt and sampling controls (Generate / Cancel), and the heatmap
//! controls.

use eframe::egui::{self, RichText};

use super::short_key;
use crate::analysis::MapSource;
use crate::analysis::colormap::Colormap;
use crate::sampling::SamplerKind;
use crate::types::CaptureMode;
use crate::ui::{Action, App, Normalize};

/// SDXL's second prompts and clip skip, folded away. `loaded`: whether the loaded model has a
/// second text encoder, and its first encoder's layer count.
fn text_options_ui(ui: &mut egui::Ui, s: &mut crate::ui::Settings, loaded: Option<(bool, usize)>) {
    let set = !s.prompt_2.is_empty() || !s.negative_prompt_2.is_empty() || s.clip_skip.is_some();
    let title = if set {
        "Text encoder options (set)"
    } else {
        "Text encoder options"
    };
    egui::CollapsingHeader::new(title).id_salt("text-options").show(ui, |ui| {
        let xl = loaded.is_none_or(|(xl, _)| xl);
        let why = if xl {
            "SDXL's second text encoder reads this (empty: the prompt above)"
        } else {
            "the loaded model has one text encoder"
        };
        ui.add_enabled_ui(xl, |ui| {
            let l = ui.label("Prompt 2 (SDXL)");
            ui.add(
                egui::TextEdit::singleline(&mut s.prompt_2)
                    .hint_text("= prompt")
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(l.id)
            .on_hover_text(why);
            let l = ui.label("Negative prompt 2 (SDXL)");
            ui.add(
                egui::TextEdit::singleline(&mut s.negative_prompt_2)
                    .hint_text("= negative prompt")
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(l.id)
            .on_hover_text(why);
        });
        ui.horizontal(|ui| {
            let mut on = s.clip_skip.is_some();
            ui.checkbox(&mut on, "Clip skip")
                .on_hover_text("diffusers' clip_skip: the text encoder's output this many layers earlier (positive prompt only)");
            if on {
                let most = loaded.map_or(12, |(_, layers)| layers);
                let mut c = s.clip_skip.unwrap_or(1);
                ui.add(egui::DragValue::new(&mut c).range(0..=most));
                s.clip_skip = Some(c);
            } else {
                s.clip_skip = None;
            }
        });
    });
}

pub fn controls_ui(app: &mut App, ui: &mut egui::Ui) {
    let s = &mut app.settings;
    let model_heading = ui.heading("Model").id;
    let mut browse = false;
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::singleline(&mut s.model)
                .hint_text("folder or owner/name")
                .desired_width(190.0),
        )
        .labelled_by(model_heading);
        browse = ui.button("Browse").on_hover_text("Pick a diffusers folder").clicked();
    });
    if !s.recent_models.is_empty() {
        egui::ComboBox::from_id_salt("recent")
            .selected_text("recent models")
            .width(270.0)
            .show_ui(ui, |ui| {
                for m in s.recent_models.clone() {
                    if ui.selectable_label(s.model == m, &m).clicked() {
                        s.model = m;
                    }
                }
            })
            .response
            .labelled_by(model_heading);
    }
    ui.add_space(6.0);
    let l = ui.heading("Prompt");
    ui.add(
        egui::TextEdit::multiline(&mut s.prompt)
            .desired_rows(2)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(l.id);
    let l = ui.label("Negative prompt");
    ui.add(egui::TextEdit::singleline(&mut s.negative_prompt).desired_width(f32::INFINITY))
        .labelled_by(l.id);
    let loaded = app.store.model.as_ref().map(|m| (m.second_text_encoder, m.text_encoder_layers));
    text_options_ui(ui, s, loaded);
    ui.add_space(6.0);
    egui::Grid::new("settings").num_columns(2).show(ui, |ui| {
        let l = ui.label("Seed");
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut s.seed)).labelled_by(l.id);
            if ui.button("Random").on_hover_text("roll a random seed").clicked() {
                s.seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
                    .unwrap_or(0)
                    % 1_000_000;
            }
        });
        ui.end_row();
        let l = ui.label("Steps");
        ui.add(egui::DragValue::new(&mut s.steps).range(1..=1000)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Sampler");
        egui::ComboBox::from_id_salt("sampler")
            .selected_text(s.sampler.map_or("model's own", |k| k.as_str()))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.sampler, None, "model's own");
                for k in SamplerKind::ALL {
                    ui.selectable_value(&mut s.sampler, Some(k), k.as_str());
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
        if s.sampler.is_some_and(|k| k.supports_karras()) {
            ui.label("");
            ui.checkbox(&mut s.karras, "Karras sigmas");
            ui.end_row();
        }
        ui.label("Size");
        let mut custom = s.size.is_some();
        ui.horizontal(|ui| {
            ui.checkbox(&mut custom, "custom");
            if custom {
                let (mut w, mut h) = s.size.unwrap_or((64, 64));
                let l = ui.label("w");
                ui.add(egui::DragValue::new(&mut w).range(8..=2048).speed(8)).labelled_by(l.id);
                let l = ui.label("h");
                ui.add(egui::DragValue::new(&mut h).range(8..=2048).speed(8)).labelled_by(l.id);
                s.size = Some((w, h));
            } else {
                s.size = None;
                ui.label("model default");
            }
        });
        ui.end_row();
        let l = ui.label("Attention");
        egui::ComboBox::from_id_salt("capture")
            .selected_text(s.attention.as_str())
            .show_ui(ui, |ui| {
                for m in [CaptureMode::None, CaptureMode::Aggregate, CaptureMode::Full] {
                    ui.selectable_value(&mut s.attention, m, m.as_str());
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
    });
    let l = ui.label("Guidance scale");
    let g = ui
        .add(egui::Slider::new(&mut s.guidance, 1.0..=15.0).step_by(0.1))
        .labelled_by(l.id);
    ui.checkbox(&mut s.auto_rerun, "re-run when the slider is released");
    ui.add_enabled(
        s.auto_rerun,
        egui::Checkbox::new(&mut s.rerun_adds_sweep_row, "as a new row of the guidance sweep"),
    );
    let rerun = g.drag_stopped() && s.auto_rerun;
    let add_row = rerun && s.rerun_adds_sweep_row;
    let w = s.guidance;
    ui.add_space(8.0);
    if browse {
        app.send(Action::BrowseModel);
    }
    let busy = app.store.busy();
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!busy, egui::Button::new(RichText::new("Generate").strong()))
            .clicked()
            || (rerun && !add_row && !busy)
        {
            app.send(Action::Generate);
        }
        if add_row && !busy {
            app.send(Action::AddSweepRow(w));
        }
        if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
            app.send(Action::Cancel);
        }
    });
}

pub fn heatmap_controls_ui(app: &mut App, ui: &mut egui::Ui) {
    let keys: Vec<(String, usize, usize)> = app
        .store
        .current()
        .and_then(|r| r.steps.first())
        .map(|s| s.attention.iter().map(|m| (m.key.clone(), m.height, m.width)).collect())
        .unwrap_or_default();
    let groups = layer_groups(&keys);
    let s = &mut app.settings;
    ui.heading("Heatmap");
    egui::Grid::new("heatmap").num_columns(2).show(ui, |ui| {
        let l = ui.label("Colormap");
        egui::ComboBox::from_id_salt("cmap")
            .selected_text(s.colormap.name())
            .show_ui(ui, |ui| {
                for c in Colormap::ALL {
                    ui.selectable_value(&mut s.colormap, c, c.name());
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Opacity");
        ui.add(egui::Slider::new(&mut s.opacity, 0.0..=1.0)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Layers");
        let label = match &s.source {
            MapSource::All => "all resolutions".to_string(),
            MapSource::Key(k) => short_key(k),
        };
        egui::ComboBox::from_id_salt("source")
            .selected_text(label)
            .width(180.0)
            .height(420.0)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.source, MapSource::All, "all resolutions");
                // Full capture of a large UNet (SDXL: 70 layers) is grouped by block and
                // resolution; aggregate keys are one per resolution.
                for (title, members) in &groups {
                    if let Some(t) = title {
                        ui.label(RichText::new(t).strong().small());
                    }
                    for (k, label) in members {
                        ui.selectable_value(&mut s.source, MapSource::Key(k.clone()), label);
                    }
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
        ui.label("Scale");
        ui.horizontal(|ui| {
            ui.radio_value(&mut s.normalize, Normalize::PerMap, "per map");
            ui.radio_value(&mut s.normalize, Normalize::AcrossSteps, "across steps");
        });
        ui.end_row();
        ui.label("Steps");
        ui.checkbox(&mut s.aggregate_steps, "aggregate over a range");
        ui.end_row();
    });
    let n = app.store.current().map_or(0, |r| r.steps.len());
    if app.settings.aggregate_steps && n > 0 {
        let (mut a, mut b) = app.view.range;
        ui.add(egui::Slider::new(&mut a, 0..=n - 1).text("from"));
        ui.add(egui::Slider::new(&mut b, 0..=n - 1).text("to"));
        app.view.range = (a.min(b), b.max(a));
    }
    ui.checkbox(&mut app.settings.show_special_tokens, "show special tokens");
}

/// The captured layers grouped for the layer picker: per-layer keys (`attn.<path>`) by their
/// block (`down_blocks.2`, `mid_block`, ...) with the block's map size as the title and the
/// rest of the path as the label; other keys (per-resolution aggregates) ungrouped.
pub(crate) fn layer_groups(keys: &[(String, usize, usize)]) -> Vec<(Option<String>, Vec<(String, String)>)> {
    let mut groups: Vec<(Option<String>, Vec<(String, String)>)> = Vec::new();
    for (k, h, w) in keys {
        let Some(path) = k.strip_prefix("attn.") else {
            groups.push((None, vec![(k.clone(), short_key(k))]));
            continue;
        };
        let (block, rest) = match path.split_once(".attentions.") {
            Some((b, r)) => (
                b.to_owned(),
                format!("a{}", r.replace(".transformer_blocks.", ".tb").trim_end_matches(".attn2")),
            ),
            None => (String::new(), path.to_owned()),
        };
        let title = format!("{block} · {h}x{w}");
        match groups.last_mut() {
            Some((Some(t), members)) if *t == title => members.push((k.clone(), rest)),
            _ => groups.push((Some(title), vec![(k.clone(), rest)])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::layer_groups;

    #[test]
    fn layers_group_by_block_and_size() {
        let k = |p: &str, s: usize| (format!("attn.{p}.attn2"), s, s);
        let keys = vec![
            k("down_blocks.1.attentions.0.transformer_blocks.0", 64),
            k("down_blocks.1.attentions.0.transformer_blocks.1", 64),
            k("down_blocks.2.attentions.1.transformer_blocks.9", 32),
            k("mid_block.attentions.0.transformer_blocks.0", 32),
            ("attn_res.64x64".to_string(), 64, 64),
        ];
        let g = layer_groups(&keys);
        let titles: Vec<Option<String>> = g.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(
            titles,
            vec![
                Some("down_blocks.1 · 64x64".into()),
                Some("down_blocks.2 · 32x32".into()),
                Some("mid_block · 32x32".into()),
                None
            ]
        );
        assert_eq!(g[0].1.len(), 2);
        assert_eq!(g[0].1[1].1, "a0.tb1");
        assert_eq!(g[1].1[0].1, "a1.tb9");
    }
}
