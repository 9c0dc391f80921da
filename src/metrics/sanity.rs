//! Does a feature network see what FID should measure? Shapes-world renders against renders of
//! another seed (FID near 0) and against renders damaged by a known amount: blurred, with the
//! colours shifted towards a channel rotation, or with a fraction of the objects drawn as the
//! wrong shape. A network worth its FID orders each kind of damage by its amount
//! (`diffusion-scope metrics sanity`; the test runs a small slice).

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::extract::{self, ExtractSettings, Network};
use super::{FeatureFile, KidSettings, MetricSettings, MetricsError};
use crate::trace::RgbImage;
use crate::world::rng::Rng;
use crate::world::{Shape, Split, WorldConfig};
use crate::world::{render, sample};

/// A known damage of a set of renders.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Damage {
    None,
    /// Gaussian blur of this sigma (pixels at 64x64).
    Blur(f32),
    /// Colours washed out: each pixel moved this fraction of the way to its grey (Rec. 601
    /// luma). (A channel rotation would be a worse test: at 100% it maps the world's colours
    /// largely onto each other, which leaves the distribution, all FID sees, close to the
    /// original.)
    Desaturate(f32),
    /// This fraction of the objects drawn as circles (circles as squares), same place, size
    /// and colour: the shapes' distribution collapses towards one shape. (A permutation of the
    /// shapes would be wrong per caption but leave the distribution, which is all FID sees,
    /// unchanged.)
    WrongShape(f32),
}

impl Damage {
    pub fn label(self) -> String {
        match self {
            Damage::None => "renders, another seed".into(),
            Damage::Blur(s) => format!("blur sigma {s}"),
            Damage::Desaturate(a) => format!("colour washed out {:.0}%", a * 100.0),
            Damage::WrongShape(p) => format!("wrong shape (circle) {:.0}%", p * 100.0),
        }
    }
}

/// The damages `study` measures, in order.
pub const DAMAGES: [Damage; 10] = [
    Damage::None,
    Damage::Blur(0.75),
    Damage::Blur(1.5),
    Damage::Blur(3.0),
    Damage::Desaturate(0.2),
    Damage::Desaturate(0.5),
    Damage::Desaturate(1.0),
    Damage::WrongShape(0.25),
    Damage::WrongShape(0.5),
    Damage::WrongShape(1.0),
];

fn config() -> WorldConfig {
    WorldConfig {
        size: 64,
        two_object_fraction: 0.4,
        split: Split::All,
        ..WorldConfig::default()
    }
}

fn blur(img: &RgbImage, sigma: f32) -> RgbImage {
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let (w, h) = (img.width as i64, img.height as i64);
    let src: Vec<f32> = img.pixels.iter().map(|&v| v as f32).collect();
    let pass = |src: &[f32], dx: i64, dy: i64| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for (j, kv) in k.iter().enumerate() {
                        let o = j as i64 - r;
                        let (sx, sy) = ((x + o * dx).clamp(0, w - 1), (y + o * dy).clamp(0, h - 1));
                        acc += kv * src[((sy * w + sx) * 3 + c) as usize];
                    }
                    out[((y * w + x) * 3 + c) as usize] = acc;
                }
            }
        }
        out
    };
    let out = pass(&pass(&src, 1, 0), 0, 1);
    RgbImage {
        width: img.width,
        height: img.height,
        pixels: out.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect(),
    }
}

fn desaturate(img: &RgbImage, a: f32) -> RgbImage {
    let mut px = img.pixels.clone();
    for p in px.chunks_mut(3) {
        let luma = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        for v in p.iter_mut() {
            *v = ((1.0 - a) * *v as f32 + a * luma).round().clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage { pixels: px, ..img.clone() }
}

/// `n` renders of the shapes world at 64x64 (dataset seed `seed`), with their scenes.
pub fn samples(n: usize, seed: u64) -> Vec<crate::world::Sample> {
    let cfg = config();
    (0..n as u64).map(|i| sample(&cfg, seed, i)).collect()
}

/// The renders of `samples`, damaged by `damage` (wrong shapes re-render the scenes they
/// change; `salt` seeds which objects change).
pub fn damaged(samples: &[crate::world::Sample], damage: Damage, salt: u64) -> Vec<RgbImage> {
    let cfg = config();
    samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rgb = None;
            if let Damage::WrongShape(p) = damage {
                let mut rng = Rng::new(salt.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64));
                let mut scene = s.scene.clone();
                let mut changed = false;
                for o in &mut scene.objects {
                    if rng.f32() < p {
                        o.shape = if o.shape == Shape::Circle { Shape::Square } else { Shape::Circle };
                        changed = true;
                    }
                }
                if changed {
                    rgb = Some(render(&scene, &cfg).rgb);
                }
            }
            let img = RgbImage {
                width: s.width,
                height: s.height,
                pixels: rgb.unwrap_or_else(|| s.rgb.clone()),
            };
            match damage {
                Damage::Blur(sigma) => blur(&img, sigma),
                Damage::Desaturate(a) => desaturate(&img, a),
                _ => img,
            }
        })
        .collect()
}

/// One damaged set's numbers against the reference renders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SanityRow {
    pub damage: Damage,
    pub label: String,
    pub fid: f64,
    pub kid_mean: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// Inception Score of the set (with the network's logits).
    pub is_mean: Option<f64>,
}

fn features(net: &Network, imgs: &[RgbImage], cancel: &AtomicBool) -> Result<Option<FeatureFile>, MetricsError> {
    let s = ExtractSettings {
        batch: 32,
        ..Default::default()
    };
    Ok(extract::extract(net, &imgs.to_vec(), &s, cancel, &mut |_, _| {})?.map(|x| x.file))
}

/// Every damage of `damages` (e.g. [`DAMAGES`]) at `n` images a set (reference: dataset seed 1; sets: seed 2):
/// FID, and with `all` also KID, precision/recall and IS. `progress(done, total)` after each
/// set; None when cancelled.
pub fn study(
    net: &Network,
    n: usize,
    damages: &[Damage],
    all: bool,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Option<Vec<SanityRow>>, MetricsError> {
    let Some(real) = features(net, &damaged(&samples(n, 1), Damage::None, 0), cancel)? else {
        return Ok(None);
    };
    let base = samples(n, 2);
    let mut rows = Vec::new();
    for (k, &d) in damages.iter().enumerate() {
        progress(k, damages.len());
        let Some(fake) = features(net, &damaged(&base, d, 2), cancel)? else {
            return Ok(None);
        };
        let s = MetricSettings {
            kid: all.then(|| KidSettings {
                subset_size: 1000.min(n),
                ..KidSettings::default()
            }),
            is_splits: (all && fake.logits.is_some()).then_some(10.min(n)),
            pr_k: all.then_some(3),
        };
        let r = super::compare(&real, &fake, &s, &mut |_, _, _| {})?;
        rows.push(SanityRow {
            damage: d,
            label: d.label(),
            fid: r.fid.unwrap_or(f64::NAN),
            kid_mean: r.kid_mean,
            precision: r.precision,
            recall: r.recall,
            is_mean: r.is_mean,
        });
    }
    progress(damages.len(), damages.len());
    Ok(Some(rows))
}
