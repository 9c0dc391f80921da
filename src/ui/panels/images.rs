//! The image panel: x_t / x0 / model output of the selected step (or the final image), the
//! selected words' heatmaps over x0, and with a run B chosen, both runs side by side at the
//! same fraction of their runs with the same words.

use eframe::egui::{self, Color32, RichText, Sense, Vec2};
use eframe::egui_wgpu;

use super::{word_chips, word_label};
use crate::analysis::{self, colormap::Colormap};
use crate::trace::RgbImage;
use crate::ui::heatmap::{HeatmapCallback, MAX_SLOTS, MapData};
use crate::ui::store::RunId;
use crate::ui::{App, ImageView, MapKey, Normalize, Pic, TexKey};

pub fn image_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some((a, run)) = app.current() else {
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
    match app.store.compare {
        None => {
            let height = ui.available_height();
            run_pictures_ui(app, ui, a, height);
        }
        Some(b) => {
            // A and B side by side, each at the same fraction of its run.
            let height = ui.available_height() - 26.0;
            ui.columns(2, |cols| {
                for (col, (name, id)) in cols.iter_mut().zip([("A", a), ("B", b)]) {
                    let Some(r) = app.store.get(id) else { continue };
                    let n = r.run.steps.len();
                    let step = app.step_of(id).unwrap_or(0);
                    let header = format!("{name}  {}   step {}/{n}", r.label(), step + 1);
                    col.label(RichText::new(header).strong());
                    run_pictures_ui(app, col, id, height);
                }
            });
        }
    }
}

/// One run's pictures at its step (the current step, or the same fraction of the run for B):
/// the selected words' heatmaps when words are selected, else the pictures the view asks for.
fn run_pictures_ui(app: &mut App, ui: &mut egui::Ui, id: RunId, height: f32) {
    let ctx = ui.ctx().clone();
    let Some(step) = app.step_of(id) else {
        ui.label(RichText::new("this run has no steps").weak());
        return;
    };
    let Some(run) = app.store.get(id).map(|r| r.run.clone()) else {
        return;
    };
    let done = run.image.is_some();
    let selected = app.view.tokens.clone();
    let overlay = app.view.overlay.clone();
    if !selected.is_empty() || overlay.is_some() {
        let base = if app.settings.view == ImageView::Final && done {
            Pic::Final
        } else {
            Pic::X0
        };
        let count = selected.len() + usize::from(overlay.is_some());
        let avail = ui.available_width();
        let side = ((avail - 16.0 * count as f32) / count as f32).min(height - 70.0).max(64.0);
        // Selected words are positions in the current run; another run has them by name.
        let current = app.store.current.and_then(|c| app.store.get(c)).map(|r| r.run.clone());
        let chips = word_chips(&run, true);
        ui.horizontal(|ui| {
            if let Some(key) = &overlay {
                ui.vertical(|ui| {
                    ui.label(RichText::new(super::saliency::overlay_label(key)).strong());
                    if let Some((tex, _)) = pic_texture(app, &ctx, id, step, base) {
                        let map = app.saliency_map(id, step, key);
                        heatmap_image_ui(app, ui, &tex, map, None, side, "not computed at this step");
                    }
                });
            }
            for pos in &selected {
                let label = current.as_ref().map(|c| word_label(c, pos)).unwrap_or_default();
                let here = if Some(id) == app.store.current {
                    Some(pos.clone())
                } else {
                    chips.iter().find(|(l, _)| *l == label).map(|(_, p)| p.clone())
                };
                ui.vertical(|ui| {
                    ui.label(RichText::new(format!("“{label}”")).strong());
                    match here {
                        Some(p) => {
                            if let Some((tex, _)) = pic_texture(app, &ctx, id, step, base) {
                                let map = app.token_map(id, step, &p);
                                heatmap_image_ui(app, ui, &tex, map, Some((id, &p)), side, "no attention maps for this step");
                            }
                        }
                        None => {
                            ui.label(RichText::new("not a word of this run's prompt").weak());
                        }
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
    let avail = ui.available_width();
    let side = ((avail - 16.0 * pics.len() as f32) / pics.len() as f32)
        .min(height - 30.0)
        .max(64.0);
    ui.horizontal(|ui| {
        for p in pics {
            if let Some((tex, title)) = pic_texture(app, &ctx, id, step, p) {
                ui.vertical(|ui| {
                    ui.label(title);
                    let size = fit(tex.size_vec2(), side);
                    ui.add(egui::Image::new(&tex).fit_to_exact_size(size));
                });
            }
        }
    });
}

/// A step picture as an egui texture, cached by key.
fn texture(app: &mut App, ctx: &egui::Context, key: TexKey, img: impl FnOnce() -> RgbImage) -> egui::TextureHandle {
    if let Some(t) = app.view.textures.get(&key) {
        return t.clone();
    }
    let img = img();
    let color = egui::ColorImage::from_rgb([img.width, img.height], &img.pixels);
    let t = ctx.load_texture(format!("{key:?}"), color, egui::TextureOptions::NEAREST);
    app.view.textures.insert(key, t.clone());
    t
}

/// The texture of picture `pic` of step `step` of run `id`, and its title. x0 is the full VAE
/// decode once the worker has made it (asked for when the worker is idle).
pub(super) fn pic_texture(
    app: &mut App,
    ctx: &egui::Context,
    id: RunId,
    step: usize,
    pic: Pic,
) -> Option<(egui::TextureHandle, &'static str)> {
    if pic == Pic::X0 {
        let key = TexKey {
            run: id,
            step,
            pic: Pic::X0Decoded,
        };
        if let Some(t) = app.view.textures.get(&key) {
            return Some((t.clone(), "x0 (VAE decode)"));
        }
        if let Some(Ok(img)) = app.decoded_x0(id, step) {
            return Some((texture(app, ctx, key, || img), "x0 (VAE decode)"));
        }
    }
    let title = match pic {
        Pic::Latent => "x_t (latent preview)",
        Pic::X0 | Pic::X0Decoded => "x0 (latent preview; VAE decode when idle)",
        Pic::Eps => "model output",
        Pic::Final => "final image (VAE)",
    };
    let key = TexKey {
        run: id,
        step: if pic == Pic::Final { 0 } else { step },
        pic,
    };
    if let Some(t) = app.view.textures.get(&key) {
        return Some((t.clone(), title));
    }
    let run = app.store.get(id)?.run.clone();
    let [c, h, w] = run.meta.latent_shape;
    let s = run.steps.get(step)?;
    let img = match pic {
        Pic::Latent => analysis::latent_preview(&s.latents, c, h, w),
        Pic::X0 | Pic::X0Decoded => analysis::latent_preview(&s.x0, c, h, w),
        Pic::Eps => analysis::latent_preview(&s.model_output, c, h, w),
        Pic::Final => run.image.clone()?,
    };
    Some((texture(app, ctx, key, || img), title))
}

pub(super) fn fit(size: Vec2, side: f32) -> Vec2 {
    let s = side / size.x.max(size.y).max(1.0);
    size * s
}

/// The scale maximum of a word's map: its own, or its maximum over all steps of the run.
pub(super) fn vmax_for(app: &mut App, id: RunId, pos: &[usize], own: f32) -> f32 {
    if app.settings.normalize == Normalize::PerMap {
        return own;
    }
    app.word_stats(id, pos).iter().flatten().map(|st| st.max).fold(own, f32::max)
}

/// `tex` with a map over it: a word's attention (`word`: its run and token positions, for the
/// across-steps scale) or a saliency map (already in [0, 1]). `missing` is said when there is
/// no map.
fn heatmap_image_ui(
    app: &mut App,
    ui: &mut egui::Ui,
    tex: &egui::TextureHandle,
    map: Option<(MapKey, std::sync::Arc<MapData>)>,
    word: Option<(RunId, &[usize])>,
    side: f32,
    missing: &str,
) {
    let size = fit(tex.size_vec2(), side);
    let (rect, response) = ui.allocate_exact_size(size, Sense::hover());
    let slot = app.view.heatmap_rects.len();
    app.view.heatmap_rects.push(rect);
    ui.painter().image(
        tex.id(),
        rect,
        egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
        Color32::WHITE,
    );
    let Some((key, map)) = map else {
        ui.label(RichText::new(missing).weak());
        return;
    };
    let own_max = map.values.iter().copied().fold(0.0, f32::max);
    let vmax = match word {
        Some((id, pos)) => vmax_for(app, id, pos, own_max),
        None => 1.0,
    };
    let (colormap, opacity) = (app.settings.colormap, app.settings.opacity);
    if app.gpu && slot < MAX_SLOTS {
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
