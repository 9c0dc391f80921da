//! Rendering scenes to antialiased RGB images and exact per-object coverage masks.

use super::rng::{Rng, seed_of};
use super::scene::generate_scene;
use super::{Background, Sample, Scene, Split, WorldConfig};

/// Sample `index` of dataset `seed`: a random scene of `config.split`, rendered. Independent
/// of every other index, and identical on every platform.
pub fn sample(config: &WorldConfig, seed: u64, index: u64) -> Sample {
    for attempt in 0u64.. {
        let mut rng = Rng::new(seed_of(&[seed, index, attempt]));
        let scene = generate_scene(config, &mut rng);
        let keep = match config.split {
            Split::All => true,
            Split::Train => !scene.spec().is_held_out(),
            Split::HeldOut => scene.spec().is_held_out(),
        };
        if keep {
            return render(&scene, config);
        }
    }
    unreachable!()
}

/// Uniform in [-1, 1] from a hash of the words.
fn hash_unit(parts: &[u64]) -> f32 {
    (seed_of(parts) >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0
}

/// Background luminance offset (added to all channels) at pixel `(px, py)` of an image of side
/// `size`.
fn background_offset(bg: &Background, px: usize, py: usize, size: usize) -> f32 {
    let u = (px as f32 + 0.5) / size as f32;
    let v = (py as f32 + 0.5) / size as f32;
    let mut off = bg.gradient_amp * ((u - 0.5) * bg.gradient_dir[0] + (v - 0.5) * bg.gradient_dir[1]);
    if bg.noise_amp != 0.0 {
        // Smooth value noise on a 6x6 lattice over the image.
        const CELLS: f32 = 6.0;
        let (fx, fy) = (u * CELLS, v * CELLS);
        let (ix, iy) = (fx.floor(), fy.floor());
        let (tx, ty) = (fx - ix, fy - iy);
        let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let l = |dx: u64, dy: u64| hash_unit(&[bg.seed, 1, ix as u64 + dx, iy as u64 + dy]);
        let top = l(0, 0) + (l(1, 0) - l(0, 0)) * sx;
        let bottom = l(0, 1) + (l(1, 1) - l(0, 1)) * sx;
        off += bg.noise_amp * (top + (bottom - top) * sy);
    }
    if bg.grain_amp != 0.0 {
        off += bg.grain_amp * hash_unit(&[bg.seed, 2, size as u64, px as u64, py as u64]);
    }
    off
}

/// Renders a scene at `config.size` x `config.size` with `config.supersample`² samples per
/// pixel. Masks hold each object's exact sample coverage (0..=255).
pub fn render(scene: &Scene, config: &WorldConfig) -> Sample {
    let n = config.size;
    let ss = config.supersample.max(1);
    let total = (ss * ss) as f32;
    let mut coverage: Vec<Vec<u16>> = vec![vec![0; n * n]; scene.objects.len()];
    for (k, o) in scene.objects.iter().enumerate() {
        let (x0, x1, y0, y1) = o.bbox();
        let clampi = |t: f32| ((t * n as f32).floor().max(0.0) as usize).min(n - 1);
        for py in clampi(y0)..=clampi(y1) {
            for px in clampi(x0)..=clampi(x1) {
                let mut c = 0u16;
                for sy in 0..ss {
                    let y = (py as f32 + (sy as f32 + 0.5) / ss as f32) / n as f32;
                    for sx in 0..ss {
                        let x = (px as f32 + (sx as f32 + 0.5) / ss as f32) / n as f32;
                        c += o.contains(x, y) as u16;
                    }
                }
                coverage[k][py * n + px] = c;
            }
        }
    }
    let bg = &scene.background;
    let mut rgb = vec![0u8; n * n * 3];
    for py in 0..n {
        for px in 0..n {
            let i = py * n + px;
            let off = background_offset(bg, px, py, n);
            let mut acc = [0f32; 3];
            let mut alpha_sum = 0.0;
            for (k, o) in scene.objects.iter().enumerate() {
                let a = coverage[k][i] as f32 / total;
                if a > 0.0 {
                    alpha_sum += a;
                    let c = o.colour.rgb();
                    for ch in 0..3 {
                        acc[ch] += a * c[ch] as f32;
                    }
                }
            }
            let rest = (1.0 - alpha_sum).max(0.0);
            for ch in 0..3 {
                let b = (bg.base[ch] as f32 + off).clamp(0.0, 255.0);
                rgb[i * 3 + ch] = (acc[ch] + rest * b).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    let masks = coverage
        .iter()
        .map(|c| c.iter().map(|&v| ((v as f32 * 255.0 / total).round()) as u8).collect())
        .collect();
    Sample {
        scene: scene.clone(),
        width: n,
        height: n,
        rgb,
        masks,
    }
}
