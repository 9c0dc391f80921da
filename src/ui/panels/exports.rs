//! Figure exports (heatmap, strip, step, plot panels), the clipboard copy, and the path prompt
//! every file action goes through (typed path; Browse… for the native dialog). Figures are
//! drawn here; writing them is a background file job.

use std::sync::Arc;

use eframe::egui;

use super::images::vmax_for;
use super::{short_key, word_label};
use crate::analysis::{self, MapSource};
use crate::trace::RgbImage;
use crate::ui::files::PathPurpose;
use crate::ui::{Action, App, ImageView};

/// A path in the folder the last file action used.
pub(super) fn default_path(app: &App, name: &str) -> String {
    let dir = if app.settings.last_dir.is_empty() {
        std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
    } else {
        app.settings.last_dir.clone()
    };
    std::path::Path::new(&dir).join(name).display().to_string()
}

fn ask_png(app: &mut App, fig: image::RgbaImage, name: &str) {
    let start = default_path(app, name);
    app.send(Action::AskPath(PathPurpose::ExportPng(Arc::new(fig)), start));
}

/// The prompt window: a path field, Browse…, OK and Cancel.
pub fn path_prompt_ui(app: &mut App, ctx: &egui::Context) {
    let Some(prompt) = &mut app.view.path_prompt else { return };
    let title = prompt.purpose.title();
    let mut action = None;
    let mut close = false;
    egui::Window::new(title)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, egui::vec2(0.0, 0.0))
        .show(ctx, |ui| {
            let l = ui.label(if prompt.purpose.wants_folder() { "Folder:" } else { "File:" });
            let field = ui
                .add(egui::TextEdit::singleline(&mut prompt.text).desired_width(460.0))
                .labelled_by(l.id);
            if !prompt.focused {
                field.request_focus();
                prompt.focused = true;
            }
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                close = true;
            }
            ui.horizontal(|ui| {
                if ui.button("OK").clicked() || enter {
                    action = Some(Action::ConfirmPath);
                }
                if ui.button("Browse…").on_hover_text("the system's file dialog").clicked() {
                    action = Some(Action::Browse);
                }
                if ui.button("Cancel").clicked() {
                    close = true;
                }
            });
        });
    if close {
        app.view.path_prompt = None;
    }
    if let Some(a) = action {
        app.send(a);
    }
}

/// Asks the window for a screenshot; [`receive_panel_capture`] crops it to the panel drawn
/// last frame and offers to save it. Plots are exported exactly as they are on screen (axes,
/// legend, markers).
pub(super) fn request_panel_export(app: &mut App, ctx: &egui::Context, panel: &'static str, name: &str) {
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

pub(super) fn receive_panel_capture(app: &mut App, ctx: &egui::Context) {
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
    match crate::ui::export::crop_screenshot(&shot, rect, ctx.pixels_per_point()) {
        Some(fig) => ask_png(app, fig, &name),
        None => app.view.message = Some("export failed: the panel is not on screen".into()),
    }
}

/// The x0 preview (or the final image) and the first selected word's map, as a figure.
pub(super) fn export_heatmap(app: &mut App) {
    if let Some((fig, name)) = heatmap_figure_for(app) {
        ask_png(app, fig, &name);
    }
}

/// Puts the heatmap figure on the clipboard (where the platform allows images there).
pub(super) fn copy_heatmap(app: &mut App, ctx: &egui::Context) {
    if let Some((fig, _)) = heatmap_figure_for(app) {
        let size = [fig.width() as usize, fig.height() as usize];
        ctx.copy_image(egui::ColorImage::from_rgba_unmultiplied(size, fig.as_raw()));
        app.view.message = Some("heatmap figure copied to the clipboard".into());
    }
}

/// The figure of the saliency overlay shown, or else of the first selected word's heatmap, in
/// the current run, and a file name for it.
fn heatmap_figure_for(app: &mut App) -> Option<(image::RgbaImage, String)> {
    if let Some(key) = app.view.overlay.clone()
        && let Some(fig) = saliency_figure_for(app, &key)
    {
        return Some(fig);
    }
    let Some(pos) = app.view.tokens.first().cloned() else {
        app.view.message = Some("select a token (or show a computed saliency map) first".into());
        return None;
    };
    let id = app.store.current?;
    let step = app.step_of(id)?;
    let (_, map) = app.token_map(id, step, &pos)?;
    let own = map.values.iter().copied().fold(0.0, f32::max);
    let vmax = vmax_for(app, id, &pos, own);
    let run = app.store.current()?;
    let s = &run.steps[step];
    let base = figure_base(run, step, app.settings.view);
    let word = word_label(run, &pos);
    let overlay = crate::ui::export::Overlay {
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
    let labels = crate::ui::export::FigureLabels {
        title: run.meta.prompt.clone(),
        subtitle: format!(
            "token “{word}” · {steps} · {} · {}",
            match &app.settings.source {
                MapSource::All => "all resolutions".into(),
                MapSource::Key(k) => short_key(k),
            },
            run.meta.sampler
        ),
        quantity: "attention".into(),
    };
    let fig = crate::ui::export::heatmap_figure(&base, &overlay, &labels, 512);
    Some((fig, format!("heatmap-{word}-step{}.png", step + 1)))
}

/// What a figure draws its map over: the final image when the view shows it, else the step's
/// x0 preview.
fn figure_base(run: &crate::trace::Run, step: usize, view: ImageView) -> RgbImage {
    let [c, h, w] = run.meta.latent_shape;
    match (&run.image, view) {
        (Some(img), ImageView::Final) => img.clone(),
        _ => analysis::latent_preview(&run.steps[step].x0, c, h, w),
    }
}

/// The saliency map `key` at the selected step of the current run as a figure (None when it is
/// not computed there).
fn saliency_figure_for(app: &mut App, key: &str) -> Option<(image::RgbaImage, String)> {
    let id = app.store.current?;
    let step = app.step_of(id)?;
    let (_, map) = app.saliency_map(id, step, key)?;
    let run = app.store.current()?;
    let s = &run.steps[step];
    let base = figure_base(run, step, app.settings.view);
    let overlay = crate::ui::export::Overlay {
        values: &map.values,
        height: map.height,
        width: map.width,
        vmin: 0.0,
        vmax: 1.0,
        opacity: app.settings.opacity,
        colormap: app.settings.colormap,
    };
    let labels = crate::ui::export::FigureLabels {
        title: run.meta.prompt.clone(),
        subtitle: format!(
            "{} · step {}/{} (t = {:.0}) · {}",
            super::saliency::overlay_label(key),
            step + 1,
            run.steps.len(),
            s.timestep,
            run.meta.sampler
        ),
        quantity: "saliency".into(),
    };
    let fig = crate::ui::export::heatmap_figure(&base, &overlay, &labels, 512);
    Some((fig, format!("saliency-{key}-step{}.png", step + 1)))
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

pub(super) fn export_strip(app: &mut App) {
    let Some(run) = app.store.current() else { return };
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
    let fig = crate::ui::export::strip(&frames, 160, &format!("x0 over the trajectory: {}", run.meta.prompt));
    ask_png(app, fig, "trajectory.png");
}

/// The image panel of the selected step as a figure: x_t, x0 (the VAE decode when the worker
/// has made it, else the latent preview), model output, and the final image when there is one.
pub(super) fn export_step(app: &mut App) {
    let Some(id) = app.store.current else { return };
    let Some(step) = app.step_of(id) else { return };
    let decoded = match app.decoded_x0(id, step) {
        Some(Ok(img)) => Some(img),
        _ => None,
    };
    let Some(run) = app.store.current() else { return };
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
    let fig = crate::ui::export::strip(&frames, 200, &title);
    ask_png(app, fig, &format!("step{:03}.png", step + 1));
}
