//! Out-of-distribution images the world can make, for measuring OOD scores: scenes the
//! training data never shows (colours and shapes outside the palette, three to five objects,
//! an inverted background) and images that are not scenes at all (pixel noise, natural-image-
//! like 1/f textures). Deterministic per (set, seed, index), like [`super::sample`].

use serde::{Deserialize, Serialize};

use super::rng::{Rng, seed_of};
use super::{Colour, Object, Scene, Shape, Size, Template, WorldConfig, render, sample};

/// The OOD sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OodSet {
    /// A training scene with its objects repainted in colours outside the palette.
    UnseenColour,
    /// One object of a shape outside the world's four (ring, cross, star, crescent).
    UnseenShape,
    /// Three to five objects (the world has one or two).
    ManyObjects,
    /// A training scene with the background inverted (dark where it is light).
    InvertedBackground,
    /// Uniform pixel noise.
    Noise,
    /// Coloured 1/f noise (the spectrum of natural images).
    Texture,
}

impl OodSet {
    pub const ALL: [OodSet; 6] = [
        OodSet::UnseenColour,
        OodSet::UnseenShape,
        OodSet::ManyObjects,
        OodSet::InvertedBackground,
        OodSet::Noise,
        OodSet::Texture,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OodSet::UnseenColour => "unseen-colour",
            OodSet::UnseenShape => "unseen-shape",
            OodSet::ManyObjects => "many-objects",
            OodSet::InvertedBackground => "inverted-background",
            OodSet::Noise => "noise",
            OodSet::Texture => "texture",
        }
    }
}

/// Colours outside the palette: cyan, pink, brown, black.
pub const UNSEEN_COLOURS: [[u8; 3]; 4] = [[30, 190, 200], [240, 110, 170], [120, 75, 35], [25, 25, 25]];

/// Image `index` of `set` at `size` x `size`, RGB row-major.
pub fn ood_image(set: OodSet, size: usize, seed: u64, index: u64) -> Vec<u8> {
    let config = WorldConfig::with_size(size);
    let mut rng = Rng::new(seed_of(&[seed, 0x00d, set as u64, index]));
    match set {
        OodSet::UnseenColour => {
            let s = sample(&config, seed ^ 0x5eed, index);
            let mut rgb = s.rgb.clone();
            for (k, o) in s.scene.objects.iter().enumerate() {
                let new = UNSEEN_COLOURS[rng.below(UNSEEN_COLOURS.len())];
                let old = o.colour.rgb();
                for (i, &c) in s.masks[k].iter().enumerate() {
                    let a = c as f32 / 255.0;
                    for ch in 0..3 {
                        let v = rgb[i * 3 + ch] as f32 + a * (new[ch] as f32 - old[ch] as f32);
                        rgb[i * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
            rgb
        }
        OodSet::UnseenShape => {
            let mut s = sample(&config, seed ^ 0x5eed, index);
            s.scene.objects.clear();
            let mut rgb = render(&s.scene, &config).rgb;
            let colour = rng.pick(Colour::ALL).rgb();
            let r = rng.range(0.12, 0.2);
            let (cx, cy) = (rng.range(0.25, 0.75), rng.range(0.25, 0.75));
            let kind = rng.below(4);
            let inside = |u: f32, v: f32| -> bool {
                let d = (u * u + v * v).sqrt();
                match kind {
                    0 => (0.55..=1.0).contains(&d),
                    1 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
                    2 => u.abs().sqrt() + v.abs().sqrt() <= 1.0,
                    _ => d <= 1.0 && ((u - 0.45).powi(2) + v * v).sqrt() > 0.8,
                }
            };
            paint(&mut rgb, size, (cx, cy, r), colour, &inside);
            rgb
        }
        OodSet::ManyObjects => {
            let base = sample(&config, seed ^ 0x5eed, index);
            let count = 3 + rng.below(3);
            let mut objects: Vec<Object> = Vec::new();
            let mut attempts = 0;
            while objects.len() < count && attempts < 1000 {
                attempts += 1;
                let radius = rng.range(0.07, 0.12);
                let o = Object {
                    colour: rng.pick(Colour::ALL),
                    shape: rng.pick(Shape::ALL),
                    size: Size::Small,
                    cx: rng.range(0.15, 0.85),
                    cy: rng.range(0.15, 0.85),
                    radius,
                };
                let (x0, x1, y0, y1) = o.bbox();
                let inside = x0 > 0.02 && x1 < 0.98 && y0 > 0.02 && y1 < 0.98;
                let apart = objects.iter().all(|p| {
                    let (a0, a1, b0, b1) = p.bbox();
                    x1 + 0.03 < a0 || a1 + 0.03 < x0 || y1 + 0.03 < b0 || b1 + 0.03 < y0
                });
                if inside && apart {
                    objects.push(o);
                }
            }
            let scene = Scene {
                objects,
                template: Template::Relation,
                relation: None,
                caption: String::new(),
                words: Vec::new(),
                word_object: Vec::new(),
                background: base.scene.background,
            };
            render(&scene, &config).rgb
        }
        OodSet::InvertedBackground => {
            let s = sample(&config, seed ^ 0x5eed, index);
            let mut rgb = s.rgb.clone();
            for i in 0..size * size {
                let covered = s.masks.iter().map(|m| m[i] as f32 / 255.0).sum::<f32>().min(1.0);
                for ch in 0..3 {
                    let v = rgb[i * 3 + ch] as f32;
                    rgb[i * 3 + ch] = ((255.0 - v) * (1.0 - covered) + v * covered).round() as u8;
                }
            }
            rgb
        }
        OodSet::Noise => (0..size * size * 3).map(|_| (rng.next_u64() >> 56) as u8).collect(),
        OodSet::Texture => texture(size, &mut rng),
    }
}

/// Paints a shape given by `inside(u, v)` on the unit box [-1, 1]^2 centred at (cx, cy) with
/// half-side r (fractions of the image), 4x4 supersampled.
fn paint(rgb: &mut [u8], size: usize, (cx, cy, r): (f32, f32, f32), colour: [u8; 3], inside: &dyn Fn(f32, f32) -> bool) {
    const SS: usize = 4;
    for py in 0..size {
        for px in 0..size {
            let mut hit = 0;
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = (px as f32 + (sx as f32 + 0.5) / SS as f32) / size as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / SS as f32) / size as f32;
                    hit += usize::from(inside((x - cx) / r, (y - cy) / r));
                }
            }
            let a = hit as f32 / (SS * SS) as f32;
            let i = (py * size + px) * 3;
            for ch in 0..3 {
                rgb[i + ch] = (rgb[i + ch] as f32 * (1.0 - a) + colour[ch] as f32 * a).round() as u8;
            }
        }
    }
}

/// Coloured 1/f noise: value-noise octaves of doubling frequency and halving amplitude, per
/// channel around a random mean colour.
fn texture(size: usize, rng: &mut Rng) -> Vec<u8> {
    let seed = rng.next_u64();
    let mean: [f32; 3] = [rng.range(60.0, 200.0), rng.range(60.0, 200.0), rng.range(60.0, 200.0)];
    let lattice = |ch: u64, oct: u64, x: i64, y: i64| -> f32 {
        (seed_of(&[seed, ch, oct, x as u64, y as u64]) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut rgb = vec![0u8; size * size * 3];
    for py in 0..size {
        for px in 0..size {
            for ch in 0..3u64 {
                let mut v = 0.0f32;
                for oct in 0..6u64 {
                    let cells = (2u64 << oct) as f32;
                    let fx = (px as f32 + 0.5) / size as f32 * cells;
                    let fy = (py as f32 + 0.5) / size as f32 * cells;
                    let (ix, iy) = (fx.floor(), fy.floor());
                    let (tx, ty) = (fx - ix, fy - iy);
                    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
                    let l = |dx: i64, dy: i64| lattice(ch, oct, ix as i64 + dx, iy as i64 + dy);
                    let top = l(0, 0) + (l(1, 0) - l(0, 0)) * sx;
                    let bottom = l(0, 1) + (l(1, 1) - l(0, 1)) * sx;
                    v += (top + (bottom - top) * sy) * 0.5f32.powi(oct as i32);
                }
                rgb[(py * size + px) * 3 + ch as usize] = (mean[ch as usize] + 60.0 * v).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_deterministic_and_differ_from_renders() {
        for set in OodSet::ALL {
            let a = ood_image(set, 32, 1, 3);
            assert_eq!(a.len(), 32 * 32 * 3);
            assert_eq!(a, ood_image(set, 32, 1, 3), "{set:?}");
            assert_ne!(a, ood_image(set, 32, 1, 4), "{set:?}");
        }
        // Repainted objects: no pixel keeps a palette colour where an object is fully covered.
        let s = sample(&WorldConfig::with_size(32), 1 ^ 0x5eed, 3);
        let img = ood_image(OodSet::UnseenColour, 32, 1, 3);
        let full: Vec<usize> = (0..32 * 32).filter(|&i| s.masks.iter().any(|m| m[i] == 255)).collect();
        assert!(!full.is_empty());
        for i in full {
            let px = [img[i * 3], img[i * 3 + 1], img[i * 3 + 2]];
            assert!(UNSEEN_COLOURS.contains(&px), "{px:?}");
        }
    }
}
