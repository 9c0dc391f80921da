//! The panels. Each `*_ui` function reads the store and the settings and turns user actions
//! into commands on the app (generate, cancel, select); none of them mutates the run history.

use eframe::egui::{self, Color32, RichText, Sense, Vec2};
use eframe::egui_wgpu;
use egui_plot::{Line, Plot, PlotPoints, Points, VLine};

use super::heatmap::{HeatmapCallback, MAX_SLOTS, MapData};
use super::store::Activity;
use super::{App, ImageView, Normalize, Tab, theme};
use crate::analysis::colormap::Colormap;
use crate::analysis::{self, MapSource, schedules};
use crate::model::unet::CaptureMode;
use crate::sampling::config::SchedulerConfig;
use crate::sampling::{ExpVariant, SamplerKind, schedule};
use crate::trace::{RgbImage, Run};

pub fn app_ui(app: &mut App, ui: &mut egui::Ui) {
    app.view.heatmap_rects.clear();
    receive_panel_capture(app, ui.ctx());
    keyboard(app, ui);
    egui::Panel::top("top").show(ui, |ui| top_bar_ui(app, ui));
    egui::Panel::left("controls").resizable(true).default_size(300.0).show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| controls_ui(app, ui));
    });
    if app.view.tab == Tab::Run {
        egui::Panel::bottom("timeline")
            .resizable(true)
            .default_size(230.0)
            .min_size(200.0)
            .show(ui, |ui| timeline_ui(app, ui));
    }
    egui::CentralPanel::default().show(ui, |ui| match app.view.tab {
        Tab::Run => {
            tokens_ui(app, ui);
            ui.separator();
            image_ui(app, ui);
        }
        Tab::Schedules => schedules_ui(app, ui),
    });
}

fn keyboard(app: &mut App, ui: &egui::Ui) {
    if ui.ctx().egui_wants_keyboard_input() {
        return;
    }
    let n = app.store.run.as_ref().map_or(0, |r| r.steps.len());
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

fn top_bar_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("Diffusion Scope");
        ui.separator();
        ui.selectable_value(&mut app.view.tab, Tab::Run, "Run");
        ui.selectable_value(&mut app.view.tab, Tab::Schedules, "Schedules");
        ui.separator();
        if ui.button("Open run…").clicked() {
            open_run(app);
        }
        let has_run = app.store.run.as_ref().is_some_and(|r| !r.steps.is_empty());
        if ui
            .add_enabled(has_run && !app.store.busy(), egui::Button::new("Save run…"))
            .clicked()
        {
            save_run(app);
        }
        if ui.add_enabled(has_run, egui::Button::new("Export heatmap…")).clicked() {
            export_heatmap(app);
        }
        if ui
            .add_enabled(has_run, egui::Button::new("Copy heatmap"))
            .on_hover_text("copy the heatmap figure to the clipboard")
            .clicked()
        {
            copy_heatmap(app, ui.ctx());
        }
        if ui
            .add_enabled(has_run, egui::Button::new("Export strip…"))
            .on_hover_text("x0 at evenly spaced steps (of the aggregation range when set)")
            .clicked()
        {
            export_strip(app);
        }
        if ui
            .add_enabled(has_run, egui::Button::new("Export step…"))
            .on_hover_text("x_t, x0, model output (and the final image) of the selected step, labelled")
            .clicked()
        {
            export_step(app);
        }
        let l = ui.label("strip:");
        ui.add(egui::DragValue::new(&mut app.settings.strip_frames).range(1..=20).suffix(" frames"))
            .labelled_by(l.id);
        ui.separator();
        match &app.store.activity {
            Activity::Idle => {}
            Activity::LoadingModel(m) => {
                ui.spinner();
                ui.label(format!("loading {m}"));
            }
            Activity::Running => {
                ui.spinner();
                let (done, total) = app.store.run.as_ref().map_or((0, 0), |r| (r.steps.len(), r.meta.timesteps.len()));
                ui.label(format!("step {done}/{total}"));
            }
            Activity::Decoding => {
                ui.spinner();
                ui.label("decoding");
            }
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

fn controls_ui(app: &mut App, ui: &mut egui::Ui) {
    let s = &mut app.settings;
    let model_heading = ui.heading("Model").id;
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::singleline(&mut s.model)
                .hint_text("folder or owner/name")
                .desired_width(190.0),
        )
        .labelled_by(model_heading);
        if ui.button("Browse").on_hover_text("Pick a diffusers folder").clicked()
            && let Some(dir) = rfd::FileDialog::new().pick_folder()
        {
            s.model = dir.display().to_string();
        }
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
    let rerun = g.drag_stopped() && s.auto_rerun;
    ui.add_space(8.0);
    let busy = app.store.busy();
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!busy, egui::Button::new(RichText::new("Generate").strong()))
            .clicked()
            || (rerun && !busy)
        {
            app.generate();
        }
        if ui.add_enabled(busy, egui::Button::new("Cancel")).clicked() {
            app.cancel();
        }
    });
    ui.add_space(10.0);
    ui.separator();
    heatmap_controls_ui(app, ui);
}

fn heatmap_controls_ui(app: &mut App, ui: &mut egui::Ui) {
    let keys: Vec<String> = app
        .store
        .run
        .as_ref()
        .and_then(|r| r.steps.first())
        .map(|s| s.attention.iter().map(|m| m.key.clone()).collect())
        .unwrap_or_default();
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
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.source, MapSource::All, "all resolutions");
                for k in &keys {
                    ui.selectable_value(&mut s.source, MapSource::Key(k.clone()), short_key(k));
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
    let n = app.store.run.as_ref().map_or(0, |r| r.steps.len());
    if app.settings.aggregate_steps && n > 0 {
        let (mut a, mut b) = app.view.range;
        ui.add(egui::Slider::new(&mut a, 0..=n - 1).text("from"));
        ui.add(egui::Slider::new(&mut b, 0..=n - 1).text("to"));
        app.view.range = (a.min(b), b.max(a));
    }
    ui.checkbox(&mut app.settings.show_special_tokens, "show special tokens");
}

fn short_key(k: &str) -> String {
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

fn tokens_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some(run) = &app.store.run else { return };
    let chips = word_chips(run, app.settings.show_special_tokens);
    ui.horizontal_wrapped(|ui| {
        ui.label("Tokens:");
        for (label, pos) in chips {
            let selected = app.view.tokens.contains(&pos);
            let text = RichText::new(&label).size(15.0);
            let b = egui::Button::new(text)
                .selected(selected)
                .fill(if selected { theme::CHIP_SELECTED } else { Color32::from_gray(45) });
            let r = ui.add(b).on_hover_text(format!("token positions {pos:?}; shift-click to compare"));
            if r.clicked() {
                let shift = ui.input(|i| i.modifiers.shift);
                if shift {
                    if selected {
                        app.view.tokens.retain(|p| p != &pos);
                    } else if app.view.tokens.len() < MAX_SLOTS {
                        app.view.tokens.push(pos);
                    }
                } else if selected && app.view.tokens.len() == 1 {
                    app.view.tokens.clear();
                } else {
                    app.view.tokens = vec![pos];
                }
            }
        }
        if run.meta.attention == CaptureMode::None {
            ui.label(RichText::new("(attention capture was off for this run)").weak());
        }
    });
}

/// A step picture as an egui texture, cached by key.
fn texture(app: &mut App, ctx: &egui::Context, key: String, img: impl FnOnce() -> RgbImage) -> egui::TextureHandle {
    if let Some(t) = app.view.textures.get(&key) {
        return t.clone();
    }
    let img = img();
    let color = egui::ColorImage::from_rgb([img.width, img.height], &img.pixels);
    let t = ctx.load_texture(&key, color, egui::TextureOptions::NEAREST);
    app.view.textures.insert(key, t.clone());
    t
}

#[derive(Clone, Copy, PartialEq)]
enum Pic {
    Latent,
    X0,
    Eps,
    Final,
}

fn pic_texture(app: &mut App, ctx: &egui::Context, pic: Pic) -> Option<(egui::TextureHandle, &'static str)> {
    let generation = app.store.generation;
    let step = app.view.step.min(app.store.run.as_ref()?.steps.len().checked_sub(1)?);
    let title = match pic {
        Pic::Latent => "x_t (latent preview)",
        Pic::X0 => "x0 (latent preview; VAE decode when idle)",
        Pic::Eps => "model output",
        Pic::Final => "final image (VAE)",
    };
    if pic == Pic::X0 {
        let key = format!("g{generation}:s{step}:x0-vae");
        if let Some(t) = app.view.textures.get(&key) {
            return Some((t.clone(), "x0 (VAE decode)"));
        }
        if let Some(Ok(img)) = app.decoded_x0() {
            return Some((texture(app, ctx, key, || img), "x0 (VAE decode)"));
        }
    }
    let key = if pic == Pic::Final {
        format!("g{generation}:final")
    } else {
        format!("g{generation}:s{step}:{title}")
    };
    if let Some(t) = app.view.textures.get(&key) {
        return Some((t.clone(), title));
    }
    let run = app.store.run.as_ref()?;
    let [c, h, w] = run.meta.latent_shape;
    let s = &run.steps[step];
    let img = match pic {
        Pic::Latent => analysis::latent_preview(&s.latents, c, h, w),
        Pic::X0 => analysis::latent_preview(&s.x0, c, h, w),
        Pic::Eps => analysis::latent_preview(&s.model_output, c, h, w),
        Pic::Final => run.image.clone()?,
    };
    Some((texture(app, ctx, key, || img), title))
}

fn image_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some(run) = &app.store.run else {
        ui.centered_and_justified(|ui| ui.label(RichText::new("No run yet. Type a prompt and press Generate.").size(18.0).weak()));
        return;
    };
    if run.steps.is_empty() {
        ui.centered_and_justified(|ui| ui.spinner());
        return;
    }
    let done = run.image.is_some();
    ui.horizontal(|ui| {
        ui.label("Show:");
        ui.selectable_value(&mut app.settings.view, ImageView::All, "x_t | x0 | eps");
        ui.selectable_value(&mut app.settings.view, ImageView::Latent, "x_t");
        ui.selectable_value(&mut app.settings.view, ImageView::X0, "x0");
        ui.selectable_value(&mut app.settings.view, ImageView::Eps, "eps");
        ui.add_enabled_ui(done, |ui| ui.selectable_value(&mut app.settings.view, ImageView::Final, "final"));
    });
    let ctx = ui.ctx().clone();
    let selected = app.view.tokens.clone();
    // With tokens selected: one panel per word, its heatmap over x0 (or the final image).
    if !selected.is_empty() {
        let base = if app.settings.view == ImageView::Final && done {
            Pic::Final
        } else {
            Pic::X0
        };
        let avail = ui.available_size();
        let side = ((avail.x - 16.0 * selected.len() as f32) / selected.len() as f32)
            .min(avail.y - 70.0)
            .max(64.0);
        let chips = app.store.run.as_ref().map(|r| word_chips(r, true)).unwrap_or_default();
        ui.horizontal(|ui| {
            for (slot, pos) in selected.iter().enumerate() {
                let label = chips.iter().find(|(_, p)| p == pos).map(|(l, _)| l.clone()).unwrap_or_default();
                ui.vertical(|ui| {
                    ui.label(RichText::new(format!("“{label}”")).strong());
                    if let Some((tex, _)) = pic_texture(app, &ctx, base) {
                        heatmap_image_ui(app, ui, &tex, pos, slot, side);
                    }
                });
            }
        });
        return;
    }
    let pics: Vec<Pic> = match app.settings.view {
        ImageView::All => vec![Pic::Latent, Pic::X0, Pic::Eps],
        ImageView::Latent => vec![Pic::Latent],
        ImageView::X0 => vec![Pic::X0],
        ImageView::Eps => vec![Pic::Eps],
        ImageView::Final => vec![if done { Pic::Final } else { Pic::X0 }],
    };
    let avail = ui.available_size();
    let side = ((avail.x - 16.0 * pics.len() as f32) / pics.len() as f32)
        .min(avail.y - 30.0)
        .max(64.0);
    ui.horizontal(|ui| {
        for p in pics {
            if let Some((tex, title)) = pic_texture(app, &ctx, p) {
                ui.vertical(|ui| {
                    ui.label(title);
                    let size = fit(tex.size_vec2(), side);
                    ui.add(egui::Image::new(&tex).fit_to_exact_size(size));
                });
            }
        }
    });
}

fn fit(size: Vec2, side: f32) -> Vec2 {
    let s = side / size.x.max(size.y).max(1.0);
    size * s
}

/// The scale maximum of a word's map: its own, or its maximum over all steps.
fn vmax_for(app: &mut App, pos: &[usize], own: f32) -> f32 {
    if app.settings.normalize == Normalize::PerMap {
        return own;
    }
    app.word_stats(pos).iter().flatten().map(|st| st.max).fold(own, f32::max)
}

fn heatmap_image_ui(app: &mut App, ui: &mut egui::Ui, tex: &egui::TextureHandle, pos: &[usize], slot: usize, side: f32) {
    let size = fit(tex.size_vec2(), side);
    let (rect, response) = ui.allocate_exact_size(size, Sense::hover());
    app.view.heatmap_rects.push(rect);
    ui.painter().image(
        tex.id(),
        rect,
        egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
        Color32::WHITE,
    );
    let Some((key, map)) = app.token_map(pos) else {
        ui.label(RichText::new("no attention maps for this step").weak());
        return;
    };
    let own_max = map.values.iter().copied().fold(0.0, f32::max);
    let vmax = vmax_for(app, pos, own_max);
    let (colormap, opacity) = (app.settings.colormap, app.settings.opacity);
    if app.gpu {
        let cb = HeatmapCallback {
            slot,
            key,
            data: map.clone(),
            vmin: 0.0,
            vmax,
            opacity,
            colormap,
        };
        ui.painter().add(egui_wgpu::Callback::new_paint_callback(rect, cb));
    }
    // Pixel-exact readout: the latent cell under the pointer and its value.
    if let Some(p) = response.hover_pos() {
        let (cx, cy) = cell_at(rect, p, &map);
        let v = map.values[cy * map.width + cx];
        response.on_hover_text(format!(
            "cell ({cx}, {cy}) of {}x{}\nvalue {v:.5}\n{:.1}% of max",
            map.width,
            map.height,
            100.0 * v / vmax.max(1e-12)
        ));
    }
    colour_bar_ui(ui, colormap, vmax, size.x);
}

/// The latent cell under screen point `p` (the shader's nearest-cell rule).
pub fn cell_at(rect: egui::Rect, p: egui::Pos2, map: &MapData) -> (usize, usize) {
    let u = ((p.x - rect.min.x) / rect.width()).clamp(0.0, 0.999_999);
    let v = ((p.y - rect.min.y) / rect.height()).clamp(0.0, 0.999_999);
    (
        ((u * map.width as f32) as usize).min(map.width - 1),
        ((v * map.height as f32) as usize).min(map.height - 1),
    )
}

fn colour_bar_ui(ui: &mut egui::Ui, colormap: Colormap, vmax: f32, width: f32) {
    let lut = colormap.lut();
    let (rect, _) = ui.allocate_exact_size(Vec2::new(width, 12.0), Sense::hover());
    let n = 64;
    for i in 0..n {
        let c = Colormap::lookup(&lut, i as f32 / (n - 1) as f32);
        let x0 = rect.min.x + rect.width() * i as f32 / n as f32;
        let x1 = rect.min.x + rect.width() * (i + 1) as f32 / n as f32;
        ui.painter().rect_filled(
            egui::Rect::from_min_max(egui::pos2(x0, rect.min.y), egui::pos2(x1, rect.max.y)),
            0.0,
            Color32::from_rgb(c[0], c[1], c[2]),
        );
    }
    ui.horizontal(|ui| {
        ui.label("0");
        ui.add_space((width - 80.0).max(0.0));
        ui.label(format!("{vmax:.4}"));
    });
}

fn timeline_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some(run) = &app.store.run else {
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
        ui.label(RichText::new(format!("step {} · t = {:.1} · σ = {:.3}", step + 1, rec.timestep, rec.sigma)).monospace());
    });
    let (std, change) = analysis::step_curves(&run.steps);
    let entropy = app
        .view
        .tokens
        .first()
        .cloned()
        .map(|pos| app.word_stats(&pos).iter().map(|st| st.map(|st| st.entropy)).collect::<Vec<_>>());
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
                            p.line(Line::new(name, PlotPoints::from(pts.clone())).color(theme::ACCENT));
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

fn schedules_ui(app: &mut App, ui: &mut egui::Ui) {
    thread_local! {
        static CURVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        static EXP: std::cell::Cell<(f64, usize, bool)> = const { std::cell::Cell::new((60.0, 10, false)) };
    }
    let mut which = CURVE.get();
    let (mut gamma, mut l, mut latter) = EXP.get();
    ui.horizontal(|ui| {
        ui.label("Curve:");
        ui.selectable_value(&mut which, 0, "alpha_bar");
        ui.selectable_value(&mut which, 1, "log-SNR");
        ui.selectable_value(&mut which, 2, "beta");
        ui.separator();
        ui.label("Exponential time-step sampling (arXiv 2402.10404):");
        let lg = ui.label("γ");
        ui.add(egui::DragValue::new(&mut gamma).range(0.0..=500.0)).labelled_by(lg.id);
        let ls = ui.label("steps");
        ui.add(egui::DragValue::new(&mut l).range(2..=200)).labelled_by(ls.id);
        ui.checkbox(&mut latter, "latter");
        ui.separator();
        if ui
            .button("Export plot…")
            .on_hover_text("the plot below as a PNG, as drawn")
            .clicked()
        {
            request_panel_export(
                app,
                ui.ctx(),
                "schedules",
                &format!("schedules-{}.png", ["alpha_bar", "log-snr", "beta"][which]),
            );
        }
    });
    CURVE.set(which);
    EXP.set((gamma, l, latter));
    let mut curves = schedules::standard_curves(1000);
    let run_t: Vec<f64> = app.store.run.as_ref().map(|r| r.meta.timesteps.clone()).unwrap_or_default();
    if let Some(run) = &app.store.run
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
    let variant = if latter { ExpVariant::Latter } else { ExpVariant::Early };
    let exp_t = schedule::exponential_timesteps(1000, l, variant, gamma);
    let value = |c: &schedules::ScheduleCurves, t: usize| -> f64 {
        match which {
            0 => c.alphas_cumprod[t] as f64,
            1 => c.log_snr[t],
            _ => c.betas[t] as f64,
        }
    };
    let ylabel = ["alpha_bar", "log-SNR", "beta"][which];
    let plot = Plot::new("schedules")
        .legend(egui_plot::Legend::default())
        .x_axis_label("training timestep t")
        .y_axis_label(ylabel)
        .show(ui, |p| {
            for c in &curves {
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

/// Asks the window for a screenshot; [`receive_panel_capture`] crops it to the panel drawn
/// last frame and offers to save it. Plots are exported exactly as they are on screen (axes,
/// legend, markers).
fn request_panel_export(app: &mut App, ctx: &egui::Context, panel: &'static str, name: &str) {
    if !app.view.panel_rects.contains_key(panel) {
        return;
    }
    app.view.pending_capture = Some((panel, name.to_owned()));
    let slot = app.view.capture_slot.clone();
    let repaint = ctx.clone();
    ctx.request_screenshot(move |image| {
        if let Ok(mut s) = slot.lock() {
            *s = Some(image);
        }
        repaint.request_repaint();
    });
}

fn receive_panel_capture(app: &mut App, ctx: &egui::Context) {
    let Some((panel, name)) = app.view.pending_capture.clone() else {
        return;
    };
    let Some(shot) = app.view.capture_slot.lock().ok().and_then(|mut s| s.take()) else {
        return;
    };
    app.view.pending_capture = None;
    let Some(rect) = app.view.panel_rects.get(panel).copied() else {
        return;
    };
    match super::export::crop_screenshot(&shot, rect, ctx.pixels_per_point()) {
        Some(fig) => save_png_dialog(app, fig, &name),
        None => app.view.message = Some("export failed: the panel is not on screen".into()),
    }
}

fn open_run(app: &mut App) {
    let Some(dir) = rfd::FileDialog::new().set_title("Open a run folder").pick_folder() else {
        return;
    };
    match crate::trace::load_run(&dir) {
        Ok(run) => app.store.open(run),
        Err(e) => app.store.error = Some(e.to_string()),
    }
}

fn save_run(app: &mut App) {
    let Some(run) = &app.store.run else { return };
    let Some(dir) = rfd::FileDialog::new().set_title("Save the run into a folder").pick_folder() else {
        return;
    };
    app.view.message = Some(match crate::trace::save_run(run, &dir) {
        Ok(()) => format!("saved to {}", dir.display()),
        Err(e) => format!("save failed: {e}"),
    });
}

/// The x0 preview (or the final image) and the first selected word's map, as a figure.
fn export_heatmap(app: &mut App) {
    if let Some((fig, name)) = heatmap_figure_for(app) {
        save_png_dialog(app, fig, &name);
    }
}

/// Puts the heatmap figure on the clipboard (where the platform allows images there).
fn copy_heatmap(app: &mut App, ctx: &egui::Context) {
    if let Some((fig, _)) = heatmap_figure_for(app) {
        let size = [fig.width() as usize, fig.height() as usize];
        ctx.copy_image(egui::ColorImage::from_rgba_unmultiplied(size, fig.as_raw()));
        app.view.message = Some("heatmap figure copied to the clipboard".into());
    }
}

/// The figure of the first selected word's heatmap and a file name for it.
fn heatmap_figure_for(app: &mut App) -> Option<(image::RgbaImage, String)> {
    let Some(pos) = app.view.tokens.first().cloned() else {
        app.view.message = Some("select a token first".into());
        return None;
    };
    let (_, map) = app.token_map(&pos)?;
    let own = map.values.iter().copied().fold(0.0, f32::max);
    let vmax = vmax_for(app, &pos, own);
    let run = app.store.run.as_ref()?;
    let step = app.view.step.min(run.steps.len() - 1);
    let s = &run.steps[step];
    let [c, h, w] = run.meta.latent_shape;
    let base = if app.settings.view == ImageView::Final {
        run.image.clone()
    } else {
        None
    }
    .unwrap_or_else(|| analysis::latent_preview(&s.x0, c, h, w));
    let word = word_chips(run, true)
        .into_iter()
        .find(|(_, p)| *p == pos)
        .map(|(l, _)| l)
        .unwrap_or_default();
    let overlay = super::export::Overlay {
        values: &map.values,
        height: map.height,
        width: map.width,
        vmin: 0.0,
        vmax,
        opacity: app.settings.opacity,
        colormap: app.settings.colormap,
    };
    let steps = if app.settings.aggregate_steps {
        format!("steps {}–{}", app.view.range.0 + 1, app.view.range.1 + 1)
    } else {
        format!("step {}/{} (t = {:.0})", step + 1, run.steps.len(), s.timestep)
    };
    let labels = super::export::FigureLabels {
        title: run.meta.prompt.clone(),
        subtitle: format!(
            "token “{word}” · {steps} · {} · {}",
            match &app.settings.source {
                MapSource::All => "all resolutions".into(),
                MapSource::Key(k) => short_key(k),
            },
            run.meta.sampler
        ),
    };
    let fig = super::export::heatmap_figure(&base, &overlay, &labels, 512);
    Some((fig, format!("heatmap-{word}-step{}.png", step + 1)))
}

/// Steps shown in the strip: `count` evenly spaced over the aggregation range when one is set,
/// else over the whole run (first and last always included).
pub fn strip_steps(n: usize, range: Option<(usize, usize)>, count: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let (lo, hi) = range.map_or((0, n - 1), |(a, b)| (a.min(n - 1), b.min(n - 1)));
    let k = count.clamp(1, hi - lo + 1);
    (0..k).map(|i| if k == 1 { hi } else { lo + i * (hi - lo) / (k - 1) }).collect()
}

fn export_strip(app: &mut App) {
    let Some(run) = &app.store.run else { return };
    let n = run.steps.len();
    let [c, h, w] = run.meta.latent_shape;
    let range = app.settings.aggregate_steps.then_some(app.view.range);
    let frames: Vec<(RgbImage, String)> = strip_steps(n, range, app.settings.strip_frames)
        .into_iter()
        .map(|idx| {
            let s = &run.steps[idx];
            (
                analysis::latent_preview(&s.x0, c, h, w),
                format!("step {}  t={:.0}", idx + 1, s.timestep),
            )
        })
        .collect();
    let fig = super::export::strip(&frames, 160, &format!("x0 over the trajectory: {}", run.meta.prompt));
    save_png_dialog(app, fig, "trajectory.png");
}

/// The image panel of the selected step as a figure: x_t, x0 (the VAE decode when the worker
/// has made it, else the latent preview), model output, and the final image when there is one.
fn export_step(app: &mut App) {
    let decoded = match app.decoded_x0() {
        Some(Ok(img)) => Some(img),
        _ => None,
    };
    let Some(run) = &app.store.run else { return };
    let step = app.view.step.min(run.steps.len().saturating_sub(1));
    let Some(s) = run.steps.get(step) else { return };
    let [c, h, w] = run.meta.latent_shape;
    let mut frames = vec![
        (analysis::latent_preview(&s.latents, c, h, w), "x_t (latent preview)".to_string()),
        match decoded {
            Some(img) => (img, "x0 (VAE decode)".to_string()),
            None => (analysis::latent_preview(&s.x0, c, h, w), "x0 (latent preview)".to_string()),
        },
        (analysis::latent_preview(&s.model_output, c, h, w), "model output".to_string()),
    ];
    if let Some(img) = &run.image {
        frames.push((img.clone(), "final image".to_string()));
    }
    let title = format!(
        "step {}/{}  t={:.0}  sigma={:.3}: {}",
        step + 1,
        run.steps.len(),
        s.timestep,
        s.sigma,
        run.meta.prompt
    );
    let fig = super::export::strip(&frames, 200, &title);
    save_png_dialog(app, fig, &format!("step{:03}.png", step + 1));
}

fn save_png_dialog(app: &mut App, fig: image::RgbaImage, name: &str) {
    let Some(path) = rfd::FileDialog::new().set_file_name(name).add_filter("PNG", &["png"]).save_file() else {
        return;
    };
    app.view.message = Some(match fig.save(&path) {
        Ok(()) => format!("exported {}", path.display()),
        Err(e) => format!("export failed: {e}"),
    });
}
