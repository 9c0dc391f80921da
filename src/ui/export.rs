//! Figure export on the CPU: a heatmap figure (image + attention overlay through the shared
//! colormap table, title, token, step, colour bar, axis labels) and a trajectory strip. The
//! overlay math is the shader's: nearest latent cell, value scaled to 0..1, table entry
//! round(t * 255), premultiplied blend with the given opacity.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use eframe::egui;
use image::{Rgba, RgbaImage};

use crate::analysis::colormap::Colormap;
use crate::trace::RgbImage;

const BG: Rgba<u8> = Rgba([255, 255, 255, 255]);
const FG: Rgba<u8> = Rgba([20, 20, 20, 255]);

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT).expect("bundled font parses")
}

/// Draws `text` with its top-left at (x, y), `size` px high.
pub fn draw_text(img: &mut RgbaImage, text: &str, x: f32, y: f32, size: f32, colour: Rgba<u8>) {
    let font = font();
    let scaled = font.as_scaled(PxScale::from(size));
    let mut caret = x;
    let baseline = y + scaled.ascent();
    let mut prev = None;
    for ch in text.chars() {
        let id = font.glyph_id(ch);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(PxScale::from(size), point(caret, baseline));
        caret += scaled.h_advance(id);
        prev = Some(id);
        if let Some(outlined) = font.outline_glyph(glyph) {
            let b = outlined.px_bounds();
            outlined.draw(|gx, gy, cov| {
                let (px, py) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    let dst = img.get_pixel_mut(px as u32, py as u32);
                    for k in 0..3 {
                        dst[k] = (dst[k] as f32 * (1.0 - cov) + colour[k] as f32 * cov).round() as u8;
                    }
                }
            });
        }
    }
}

/// Text width in pixels.
pub fn text_width(text: &str, size: f32) -> f32 {
    let font = font();
    let scaled = font.as_scaled(PxScale::from(size));
    text.chars().map(|c| scaled.h_advance(font.glyph_id(c))).sum()
}

/// The heatmap colour of `value` over a background pixel, exactly as the shader computes it.
pub fn overlay_pixel(lut: &[[u8; 4]; 256], value: f32, vmin: f32, vmax: f32, opacity: f32, under: [u8; 3]) -> [u8; 3] {
    let t = ((value - vmin) / (vmax - vmin).max(1e-12)).clamp(0.0, 1.0);
    let c = Colormap::lookup(lut, t);
    let mut out = [0u8; 3];
    for k in 0..3 {
        out[k] = (c[k] as f32 * opacity + under[k] as f32 * (1.0 - opacity)).round() as u8;
    }
    out
}

/// A latent-grid map ([h * w] values).
pub struct Overlay<'a> {
    pub values: &'a [f32],
    pub height: usize,
    pub width: usize,
    pub vmin: f32,
    pub vmax: f32,
    pub opacity: f32,
    pub colormap: Colormap,
}

/// `base` scaled (nearest) to `side` x `side`·aspect, with the overlay on top.
pub fn compose(base: &RgbImage, overlay: Option<&Overlay>, out_w: u32, out_h: u32) -> RgbaImage {
    let lut = overlay.map(|o| o.colormap.lut());
    let mut img = RgbaImage::new(out_w, out_h);
    for y in 0..out_h {
        for x in 0..out_w {
            let bx = (x as usize * base.width / out_w as usize).min(base.width.saturating_sub(1));
            let by = (y as usize * base.height / out_h as usize).min(base.height.saturating_sub(1));
            let i = (by * base.width + bx) * 3;
            let mut px = [
                base.pixels.get(i).copied().unwrap_or(0),
                base.pixels.get(i + 1).copied().unwrap_or(0),
                base.pixels.get(i + 2).copied().unwrap_or(0),
            ];
            if let (Some(o), Some(lut)) = (overlay, lut.as_ref()) {
                let cx = (x as usize * o.width / out_w as usize).min(o.width - 1);
                let cy = (y as usize * o.height / out_h as usize).min(o.height - 1);
                px = overlay_pixel(lut, o.values[cy * o.width + cx], o.vmin, o.vmax, o.opacity, px);
            }
            img.put_pixel(x, y, Rgba([px[0], px[1], px[2], 255]));
        }
    }
    img
}

/// What a heatmap figure says about itself.
pub struct FigureLabels {
    pub title: String,
    pub subtitle: String,
    /// What the colour bar measures ("attention", "saliency").
    pub quantity: String,
}

/// A publication figure: title, subtitle (token, step, t, resolution), the image with the
/// overlay, axis labels in latent cells, and a labelled colour bar.
pub fn heatmap_figure(base: &RgbImage, overlay: &Overlay, labels: &FigureLabels, side: u32) -> RgbaImage {
    let aspect = base.height as f32 / base.width.max(1) as f32;
    let (iw, ih) = (side, (side as f32 * aspect).round() as u32);
    let (left, top, bar_w, right) = (48u32, 64u32, 18u32, 90u32);
    let (w, h) = (left + iw + 24 + bar_w + right, top + ih + 48);
    let mut fig = RgbaImage::from_pixel(w, h, BG);
    draw_text(&mut fig, &labels.title, 12.0, 8.0, 20.0, FG);
    draw_text(&mut fig, &labels.subtitle, 12.0, 34.0, 15.0, FG);
    let body = compose(base, Some(overlay), iw, ih);
    image::imageops::overlay(&mut fig, &body, left as i64, top as i64);
    // Axes: ticks at 0, w/2, w latent cells.
    for (frac, label) in [
        (0.0, "0".to_string()),
        (0.5, format!("{}", overlay.width / 2)),
        (1.0, format!("{}", overlay.width)),
    ] {
        let x = left as f32 + frac * iw as f32;
        draw_text(
            &mut fig,
            &label,
            x - text_width(&label, 12.0) / 2.0,
            (top + ih + 4) as f32,
            12.0,
            FG,
        );
    }
    for (frac, label) in [
        (0.0, "0".to_string()),
        (0.5, format!("{}", overlay.height / 2)),
        (1.0, format!("{}", overlay.height)),
    ] {
        let y = top as f32 + frac * ih as f32;
        draw_text(&mut fig, &label, left as f32 - 6.0 - text_width(&label, 12.0), y - 7.0, 12.0, FG);
    }
    let xl = format!("x (latent cells, {}x{})", overlay.width, overlay.height);
    draw_text(
        &mut fig,
        &xl,
        left as f32 + iw as f32 / 2.0 - text_width(&xl, 13.0) / 2.0,
        (top + ih + 24) as f32,
        13.0,
        FG,
    );
    draw_text(&mut fig, "y", 12.0, top as f32 + ih as f32 / 2.0, 13.0, FG);
    // Colour bar: vmax at the top, vmin at the bottom.
    let lut = overlay.colormap.lut();
    let bx = left + iw + 24;
    for y in 0..ih {
        let t = 1.0 - y as f32 / (ih.max(2) - 1) as f32;
        let c = Colormap::lookup(&lut, t);
        for x in 0..bar_w {
            fig.put_pixel(bx + x, top + y, Rgba([c[0], c[1], c[2], 255]));
        }
    }
    draw_text(
        &mut fig,
        &format!("{:.3}", overlay.vmax),
        (bx + bar_w + 6) as f32,
        top as f32 - 2.0,
        12.0,
        FG,
    );
    draw_text(
        &mut fig,
        &format!("{:.3}", overlay.vmin),
        (bx + bar_w + 6) as f32,
        (top + ih) as f32 - 14.0,
        12.0,
        FG,
    );
    draw_text(
        &mut fig,
        &labels.quantity,
        (bx + bar_w + 6) as f32,
        top as f32 + ih as f32 / 2.0 - 7.0,
        12.0,
        FG,
    );
    fig
}

/// Frames in a row, each labelled below (e.g. "step 5  t=751").
pub fn strip(frames: &[(RgbImage, String)], side: u32, title: &str) -> RgbaImage {
    let pad = 8u32;
    let n = frames.len().max(1) as u32;
    let (w, h) = (pad + n * (side + pad), 40 + side + 28);
    let mut fig = RgbaImage::from_pixel(w, h, BG);
    draw_text(&mut fig, title, pad as f32, 8.0, 18.0, FG);
    for (i, (img, label)) in frames.iter().enumerate() {
        let x = pad + i as u32 * (side + pad);
        let aspect = img.height as f32 / img.width.max(1) as f32;
        let body = compose(img, None, side, (side as f32 * aspect).round().max(1.0) as u32);
        image::imageops::overlay(&mut fig, &body, x as i64, 40);
        draw_text(&mut fig, label, x as f32, (40 + side + 6) as f32, 13.0, FG);
    }
    fig
}

/// A labelled grid of frames: one row per entry (its label at the left, in up to two lines),
/// one column per `col_labels` entry (labels on top), each frame `side` px wide.
pub fn grid(rows: &[(String, String, Vec<RgbImage>)], col_labels: &[String], side: u32, title: &str) -> RgbaImage {
    let pad = 6u32;
    let label_w = rows
        .iter()
        .map(|(a, b, _)| text_width(a, 14.0).max(text_width(b, 12.0)))
        .fold(80.0f32, f32::max)
        .ceil() as u32
        + 2 * pad;
    let cols = col_labels.len().max(1) as u32;
    let top = 40 + 22;
    let (w, h) = (label_w + cols * (side + pad) + pad, top + rows.len() as u32 * (side + pad) + pad);
    let mut fig = RgbaImage::from_pixel(w, h, BG);
    draw_text(&mut fig, title, pad as f32, 8.0, 18.0, FG);
    for (c, label) in col_labels.iter().enumerate() {
        let x = label_w + c as u32 * (side + pad);
        let tw = text_width(label, 13.0);
        draw_text(&mut fig, label, x as f32 + (side as f32 - tw) / 2.0, 42.0, 13.0, FG);
    }
    for (r, (name, detail, frames)) in rows.iter().enumerate() {
        let y = top + r as u32 * (side + pad);
        draw_text(&mut fig, name, pad as f32, y as f32 + side as f32 / 2.0 - 16.0, 14.0, FG);
        draw_text(&mut fig, detail, pad as f32, y as f32 + side as f32 / 2.0 + 2.0, 12.0, MUTED);
        for (c, img) in frames.iter().enumerate().take(cols as usize) {
            let x = label_w + c as u32 * (side + pad);
            let aspect = img.height as f32 / img.width.max(1) as f32;
            let body = compose(img, None, side, (side as f32 * aspect).round().clamp(1.0, side as f32) as u32);
            image::imageops::overlay(&mut fig, &body, x as i64, y as i64);
        }
    }
    fig
}

const MUTED: Rgba<u8> = Rgba([100, 100, 100, 255]);

/// One labelled series of a [`plot`]: points joined in the given order.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A line plot with markers: axes with ticks at round values, a legend, log10 y on request
/// (non-positive values are dropped then). Non-finite points are skipped.
pub fn plot(title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool) -> RgbaImage {
    plot_coloured(title, x_label, y_label, series, log_y, &[])
}

/// [`plot`] with series `i` drawn in `colours[i]` (the palette for the rest), for series that
/// stand for colours.
pub fn plot_coloured(title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool, colours: &[[u8; 3]]) -> RgbaImage {
    const PALETTE: [[u8; 3]; 10] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ];
    let (w, h) = (760u32, 480u32);
    let (left, right, top, bottom) = (70.0f32, 190.0f32, 40.0f32, 50.0f32);
    let mut fig = RgbaImage::from_pixel(w, h, BG);
    draw_text(&mut fig, title, 10.0, 8.0, 17.0, FG);
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                .map(|&(x, y)| (x, ty(y)))
                .collect()
        })
        .collect();
    let all: Vec<(f64, f64)> = pts.iter().flatten().copied().collect();
    let (px0, px1, py0, py1) = (left, w as f32 - right, top, h as f32 - bottom);
    let axis = Rgba([60, 60, 60, 255]);
    line(&mut fig, (px0, py1), (px1, py1), axis);
    line(&mut fig, (px0, py0), (px0, py1), axis);
    draw_text(
        &mut fig,
        x_label,
        (px0 + px1) / 2.0 - text_width(x_label, 13.0) / 2.0,
        h as f32 - 22.0,
        13.0,
        FG,
    );
    let y_title = if log_y { format!("{y_label} (log)") } else { y_label.to_string() };
    draw_text(&mut fig, &y_title, 10.0, 24.0, 12.0, MUTED);
    if all.is_empty() {
        draw_text(&mut fig, "no data", (px0 + px1) / 2.0 - 25.0, (py0 + py1) / 2.0, 14.0, MUTED);
        return fig;
    }
    let range = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let span = (hi - lo).max(hi.abs() * 1e-6).max(1e-12);
        (lo - span * 0.05, hi + span * 0.05)
    };
    let (x0, x1) = range(all.iter().map(|p| p.0).collect());
    let (y0, y1) = range(all.iter().map(|p| p.1).collect());
    let sx = |x: f64| px0 + ((x - x0) / (x1 - x0)) as f32 * (px1 - px0);
    let sy = |y: f64| py1 - ((y - y0) / (y1 - y0)) as f32 * (py1 - py0);
    for t in nice_ticks(x0, x1) {
        let x = sx(t);
        line(&mut fig, (x, py1), (x, py1 + 4.0), axis);
        let l = tick_label(t);
        draw_text(&mut fig, &l, x - text_width(&l, 11.0) / 2.0, py1 + 6.0, 11.0, FG);
    }
    for t in nice_ticks(y0, y1) {
        let y = sy(t);
        line(&mut fig, (px0 - 4.0, y), (px0, y), axis);
        let l = if log_y { tick_label(10f64.powf(t)) } else { tick_label(t) };
        draw_text(&mut fig, &l, px0 - 8.0 - text_width(&l, 11.0), y - 7.0, 11.0, FG);
    }
    for (i, (s, p)) in series.iter().zip(&pts).enumerate() {
        let c = colours.get(i).copied().unwrap_or(PALETTE[i % PALETTE.len()]);
        let colour = Rgba([c[0], c[1], c[2], 255]);
        for pair in p.windows(2) {
            line(&mut fig, (sx(pair[0].0), sy(pair[0].1)), (sx(pair[1].0), sy(pair[1].1)), colour);
        }
        for &(x, y) in p {
            dot(&mut fig, sx(x), sy(y), 3.0, colour);
        }
        let ly = top + 4.0 + i as f32 * 18.0;
        dot(&mut fig, px1 + 18.0, ly + 7.0, 4.0, colour);
        draw_text(&mut fig, &s.label, px1 + 28.0, ly, 12.0, FG);
    }
    fig
}

/// About five round tick values in [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 20 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let digits = (-a.log10()).ceil() as usize + 1;
        format!("{v:.digits$}")
    }
}

/// A 1.5 px anti-aliasing-free line (Bresenham-style stepping).
fn line(img: &mut RgbaImage, a: (f32, f32), b: (f32, f32), colour: Rgba<u8>) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f32 / n as f32;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        for (dx, dy) in [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5)] {
            put(img, x + dx, y + dy, colour);
        }
    }
}

fn dot(img: &mut RgbaImage, cx: f32, cy: f32, r: f32, colour: Rgba<u8>) {
    let ri = r.ceil() as i32;
    for dy in -ri..=ri {
        for dx in -ri..=ri {
            if (dx * dx + dy * dy) as f32 <= r * r {
                put(img, cx + dx as f32, cy + dy as f32, colour);
            }
        }
    }
}

fn put(img: &mut RgbaImage, x: f32, y: f32, colour: Rgba<u8>) {
    if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// The part of a window screenshot under `rect` (in points; the screenshot is in physical
/// pixels, `pixels_per_point` of them per point). None when the rect misses the image.
pub fn crop_screenshot(shot: &egui::ColorImage, rect: egui::Rect, pixels_per_point: f32) -> Option<RgbaImage> {
    let [sw, sh] = shot.size;
    let x0 = ((rect.min.x * pixels_per_point).round().max(0.0) as usize).min(sw);
    let y0 = ((rect.min.y * pixels_per_point).round().max(0.0) as usize).min(sh);
    let x1 = ((rect.max.x * pixels_per_point).round().max(0.0) as usize).min(sw);
    let y1 = ((rect.max.y * pixels_per_point).round().max(0.0) as usize).min(sh);
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let mut out = RgbaImage::new((x1 - x0) as u32, (y1 - y0) as u32);
    for y in y0..y1 {
        for x in x0..x1 {
            let c = shot.pixels[y * sw + x].to_srgba_unmultiplied();
            out.put_pixel((x - x0) as u32, (y - y0) as u32, Rgba(c));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screenshot_crop_honours_pixels_per_point() {
        // 8x6 physical pixels whose colour encodes their position.
        let pixels = (0..48)
            .map(|i| egui::Color32::from_rgb((i % 8) as u8, (i / 8) as u8, 200))
            .collect();
        let shot = egui::ColorImage::new([8, 6], pixels);
        let rect = egui::Rect::from_min_max(egui::pos2(1.0, 0.5), egui::pos2(3.0, 2.5));
        let crop = crop_screenshot(&shot, rect, 2.0).unwrap();
        assert_eq!(crop.dimensions(), (4, 4));
        assert_eq!(crop.get_pixel(0, 0).0, [2, 1, 200, 255]);
        assert_eq!(crop.get_pixel(3, 3).0, [5, 4, 200, 255]);
        let off = egui::Rect::from_min_max(egui::pos2(10.0, 10.0), egui::pos2(12.0, 12.0));
        assert!(crop_screenshot(&shot, off, 1.0).is_none());
    }

    #[test]
    fn overlay_uses_the_shared_table() {
        let lut = Colormap::Magma.lut();
        assert_eq!(
            overlay_pixel(&lut, 1.0, 0.0, 1.0, 1.0, [0, 0, 0]),
            [lut[255][0], lut[255][1], lut[255][2]]
        );
        assert_eq!(
            overlay_pixel(&lut, 0.5, 0.0, 1.0, 1.0, [9, 9, 9]),
            [lut[128][0], lut[128][1], lut[128][2]]
        );
        assert_eq!(overlay_pixel(&lut, 0.5, 0.0, 1.0, 0.0, [9, 8, 7]), [9, 8, 7]);
    }

    #[test]
    fn figure_has_colour_bar_and_text() {
        let base = RgbImage {
            width: 4,
            height: 4,
            pixels: vec![128; 48],
        };
        let values: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let o = Overlay {
            values: &values,
            height: 4,
            width: 4,
            vmin: 0.0,
            vmax: 15.0,
            opacity: 1.0,
            colormap: Colormap::Viridis,
        };
        let fig = heatmap_figure(
            &base,
            &o,
            &FigureLabels {
                title: "a red circle".into(),
                subtitle: "token red".into(),
                quantity: "attention".into(),
            },
            128,
        );
        let lut = Colormap::Viridis.lut();
        // Top-left cell of the image is value 0, bottom-right 15.
        assert_eq!(fig.get_pixel(48 + 2, 64 + 2).0[..3], lut[0][..3]);
        assert_eq!(fig.get_pixel(48 + 126, 64 + 126).0[..3], lut[255][..3]);
        // The title left dark pixels in the header.
        assert!((0..300).any(|x| (8..30).any(|y| fig.get_pixel(x, y).0[0] < 100)));
    }
}

/// The health report's plots: the output's change per unit t (model and control) and the
/// schedule's log-SNR.
pub fn health_figures(r: &crate::experiments::health::HealthReport) -> Vec<(&'static str, image::RgbaImage)> {
    let mut series = Vec::new();
    for (label, resp) in [("model", &r.response), ("time embedding zeroed", &r.zeroed)] {
        if let Some(x) = resp {
            series.push(Series {
                label: label.into(),
                points: x
                    .change_per_t
                    .iter()
                    .zip(x.timesteps.windows(2))
                    .map(|(c, t)| ((t[0] + t[1]) / 2.0, 1000.0 * c))
                    .collect(),
            });
        }
    }
    let response = plot(
        "UNet output: relative change per 1000 timesteps",
        "t",
        "change / |output| per 1000 t",
        &series,
        false,
    );
    let lsnr: Vec<(f64, f64)> = r
        .schedule
        .alpha_bar
        .iter()
        .enumerate()
        .map(|(t, &a)| (t as f64, ((a as f64) / (1.0 - a as f64)).ln()))
        .collect();
    let schedule = plot(
        "Training schedule: log-SNR",
        "t",
        "ln(alpha_bar / (1 - alpha_bar))",
        &[Series {
            label: "log-SNR".into(),
            points: lsnr,
        }],
        false,
    );
    vec![("time_response.png", response), ("schedule.png", schedule)]
}
