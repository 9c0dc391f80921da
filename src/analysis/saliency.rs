//! The maths of the saliency methods of arXiv 2402.10404 (DF-RISE, DF-CAM), over plain slices.
//! The model evaluations that feed them are in `pipeline::saliency`; what is compared and how
//! follows the authors' code (github.com/ian-jihoonpark/X-Diffusion, `ssim.py`,
//! `models/stablediffusion.py`, `DF-CAM_auc.py`), with the differences named where they are.

/// Which structure term DF-RISE scores a mask with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StructureTerm {
    /// The authors' `ssim.py`: `(2 σxy + C3) / (σx σy + C3)` (a factor 2 in the numerator).
    Authors,
    /// The textbook SSIM structure term `(σxy + C3) / (σx σy + C3)` (1 for identical inputs).
    Standard,
}

impl StructureTerm {
    pub fn as_str(self) -> &'static str {
        match self {
            StructureTerm::Authors => "authors",
            StructureTerm::Standard => "standard",
        }
    }
}

impl std::str::FromStr for StructureTerm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "authors" => Ok(StructureTerm::Authors),
            "standard" => Ok(StructureTerm::Standard),
            _ => Err(format!("unknown structure term {s:?}; valid: authors, standard")),
        }
    }
}

/// The SSIM window of the authors' `ssim.py`: 15 x 15.
pub const SSIM_WINDOW: usize = 15;
/// Its Gaussian sigma.
pub const SSIM_SIGMA: f64 = 1.5;
/// C2 = (0.03 * max_val)^2 with max_val = 1; C3 = C2 / 2.
pub const SSIM_C3: f32 = 0.03 * 0.03 / 2.0;

/// torchgeometry's `get_gaussian_kernel2d((size, size), (sigma, sigma))`: the outer product of
/// two normalised 1-D Gaussians centred on `size / 2` (each sums to 1, so the 2-D kernel does).
pub fn gaussian_window(size: usize, sigma: f64) -> Vec<f32> {
    let centre = (size / 2) as f64;
    let g: Vec<f64> = (0..size)
        .map(|x| (-(x as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = g.iter().sum();
    let g: Vec<f32> = g.iter().map(|v| (v / sum) as f32).collect();
    let mut out = Vec::with_capacity(size * size);
    for a in &g {
        for b in &g {
            out.push(a * b);
        }
    }
    out
}

/// `F.conv2d(x, window, padding = k / 2)` of one [h, w] plane: zero padding, the window not
/// renormalised at the borders.
fn filter(plane: &[f32], h: usize, w: usize, window: &[f32], k: usize) -> Vec<f32> {
    let r = (k / 2) as isize;
    let mut out = vec![0f32; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut acc = 0f32;
            for dy in -r..=r {
                let yy = y + dy;
                if yy < 0 || yy >= h as isize {
                    continue;
                }
                let row = &window[((dy + r) as usize) * k..];
                for dx in -r..=r {
                    let xx = x + dx;
                    if xx < 0 || xx >= w as isize {
                        continue;
                    }
                    acc += row[(dx + r) as usize] * plane[yy as usize * w + xx as usize];
                }
            }
            out[y as usize * w + x as usize] = acc;
        }
    }
    out
}

/// The SSIM structure map of two [c, h, w] arrays, averaged over channels: [h, w], as the
/// authors' `SSIM(15, mode="structure")` returns it (`ssim_map.mean(1)`, no spatial mean).
/// Local statistics come from the 15 x 15 Gaussian window (sigma 1.5) with zero padding:
/// `mu = G*x`, `σx² = G*(x²) - mu²`, `σxy = G*(xy) - mu_x mu_y`. The authors take the square
/// root of the variance unclamped (a rounding-negative variance gives NaN there); here it is
/// clamped at 0.
pub fn ssim_structure(x: &[f32], y: &[f32], c: usize, h: usize, w: usize, term: StructureTerm) -> Vec<f32> {
    assert_eq!(x.len(), c * h * w, "ssim_structure: x is not [c, h, w]");
    assert_eq!(y.len(), c * h * w, "ssim_structure: y is not [c, h, w]");
    let window = gaussian_window(SSIM_WINDOW, SSIM_SIGMA);
    let k = SSIM_WINDOW;
    let factor = match term {
        StructureTerm::Authors => 2.0,
        StructureTerm::Standard => 1.0,
    };
    let mut out = vec![0f32; h * w];
    for ch in 0..c {
        let xs = &x[ch * h * w..(ch + 1) * h * w];
        let ys = &y[ch * h * w..(ch + 1) * h * w];
        let prod = |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(p, q)| p * q).collect() };
        let mu_x = filter(xs, h, w, &window, k);
        let mu_y = filter(ys, h, w, &window, k);
        let xx = filter(&prod(xs, xs), h, w, &window, k);
        let yy = filter(&prod(ys, ys), h, w, &window, k);
        let xy = filter(&prod(xs, ys), h, w, &window, k);
        for p in 0..h * w {
            let sx = (xx[p] - mu_x[p] * mu_x[p]).max(0.0).sqrt();
            let sy = (yy[p] - mu_y[p] * mu_y[p]).max(0.0).sqrt();
            let sxy = xy[p] - mu_x[p] * mu_y[p];
            out[p] += (factor * sxy + SSIM_C3) / (sx * sy + SSIM_C3);
        }
    }
    out.iter_mut().for_each(|v| *v /= c as f32);
    out
}

/// One DF-RISE mask: `uniform(0, 1) < p` per latent pixel, the authors' draw
/// (`np.random.uniform(0, 1, size=(h, w)) < 0.5`), from a source of uniform doubles.
pub fn rise_mask(uniform: &mut dyn FnMut() -> f64, h: usize, w: usize, p: f64) -> Vec<f32> {
    (0..h * w).map(|_| if uniform() < p { 1.0 } else { 0.0 }).collect()
}

/// `acc += mask * score` (both [h, w]), the authors' accumulation (no division by N or p).
pub fn rise_accumulate(acc: &mut [f32], mask: &[f32], score: &[f32]) {
    for ((a, m), s) in acc.iter_mut().zip(mask).zip(score) {
        *a += m * s;
    }
}

/// ReLU, then min-max scaling to [0, 1], as the authors display both methods. A map that is
/// constant after the ReLU (all zero, say) becomes all zeros (the authors' 0 / 0 is NaN).
pub fn relu_minmax(map: &[f32]) -> Vec<f32> {
    let r: Vec<f32> = map.iter().map(|v| v.max(0.0)).collect();
    minmax(&r)
}

/// Min-max scaling to [0, 1]; a constant map becomes all zeros. A spread below 1e-5 of the
/// map's magnitude is rounding, not signal (an all-ones DF-RISE sums N equal scores in f32),
/// and counts as constant: scaling it would blow rounding up to the full colour range.
pub fn minmax(map: &[f32]) -> Vec<f32> {
    let lo = map.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !(hi - lo > 1e-5 * hi.abs().max(lo.abs())) {
        return vec![0.0; map.len()];
    }
    map.iter().map(|v| (v - lo) / (hi - lo)).collect()
}

/// Grad-CAM of one block: `ReLU(sum_k alpha_k A_k)` with `alpha_k` the spatial mean of the
/// gradient of channel k. `activations` and `gradients` are [k, h, w]; returns [h, w].
pub fn grad_cam(activations: &[f32], gradients: &[f32], k: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(activations.len(), k * h * w, "grad_cam: activations are not [k, h, w]");
    assert_eq!(gradients.len(), k * h * w, "grad_cam: gradients are not [k, h, w]");
    let hw = h * w;
    let mut out = vec![0f32; hw];
    for ch in 0..k {
        let g = &gradients[ch * hw..(ch + 1) * hw];
        let alpha = (g.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
        for (o, a) in out.iter_mut().zip(&activations[ch * hw..(ch + 1) * hw]) {
            *o += alpha * a;
        }
    }
    out.iter_mut().for_each(|v| *v = v.max(0.0));
    out
}

/// A DF-CAM map as the authors display it: the block's Grad-CAM brought to [oh, ow] by bilinear
/// interpolation (align_corners = false) and min-max scaled.
pub fn cam_map(activations: &[f32], gradients: &[f32], k: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let cam = grad_cam(activations, gradients, k, h, w);
    minmax(&super::resize_bilinear(&cam, h, w, oh, ow))
}

/// The blur of the authors' insertion game: `gkern(11, 5)`, SciPy's `gaussian_filter` (sigma 5,
/// truncate 4, mode "reflect") of an 11 x 11 delta. With the reflections it is almost a box
/// filter (values 0.0077 .. 0.0088, summing to 1). Row-major 11 x 11.
pub fn authors_blur_kernel() -> Vec<f32> {
    let (n, sigma) = (11usize, 5.0f64);
    let radius = (4.0 * sigma + 0.5) as isize;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|j| (-0.5 * (j * j) as f64 / (sigma * sigma)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // SciPy's "reflect": (d c b a | a b c d | d c b a), period 2n.
    let reflect = |m: isize| -> usize {
        let p = 2 * n as isize;
        let r = m.rem_euclid(p) as usize;
        if r >= n { 2 * n - 1 - r } else { r }
    };
    // The filtered 1-D delta at the centre; the 2-D filter of a 2-D delta is its outer product.
    let k1: Vec<f64> = (0..n as isize)
        .map(|i| {
            (-radius..=radius)
                .filter(|&j| reflect(i + j) == n / 2)
                .map(|j| weights[(j + radius) as usize] / total)
                .sum()
        })
        .collect();
    let mut out = Vec::with_capacity(n * n);
    for a in &k1 {
        for b in &k1 {
            out.push((a * b) as f32);
        }
    }
    out
}

/// Each channel of `x` [c, h, w] convolved with a k x k `kernel`, zero padding k / 2 (the
/// authors' `F.conv2d(latent, kernel, padding=klen//2)` with the kernel on the channel diagonal).
pub fn blur_channels(x: &[f32], c: usize, h: usize, w: usize, kernel: &[f32], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for ch in 0..c {
        out.extend(filter(&x[ch * h * w..(ch + 1) * h * w], h, w, kernel, k));
    }
    out
}

/// Latent pixels in descending order of `map` (ties by index), the order the insertion and
/// deletion games add or remove them in.
pub fn saliency_order(map: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..map.len()).collect();
    idx.sort_by(|&a, &b| map[b].total_cmp(&map[a]).then(a.cmp(&b)));
    idx
}

/// The inputs of a causal game over `points` + 1 stages: stage k takes `from` and puts the
/// first `ceil(k * hw / points)` pixels of `order` (all channels) of `to` in. Insertion: from
/// the blurred latent to x_t; deletion: from x_t to zeros.
pub fn game_inputs(from: &[f32], to: &[f32], order: &[usize], points: usize) -> Vec<Vec<f32>> {
    let hw = order.len();
    let c = from.len() / hw.max(1);
    (0..=points)
        .map(|k| {
            let n = (k * hw).div_ceil(points.max(1)).min(hw);
            let mut x = from.to_vec();
            for &p in &order[..n] {
                for ch in 0..c {
                    x[ch * hw + p] = to[ch * hw + p];
                }
            }
            x
        })
        .collect()
}

/// A game's curve: how much of the way from the start's output to the reference output each
/// stage's output has come, `1 - ||y_k - y|| / ||y_0 - y||` for insertion (0 at the start, ~1 at
/// the end), or its mirror for deletion against the last stage. None when the start (or end)
/// does not move the output.
pub fn game_curve(outputs: &[Vec<f32>], reference: &[f32], insertion: bool) -> Option<Vec<f64>> {
    let dist = |y: &[f32]| -> f64 { y.iter().zip(reference).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt() };
    let anchor = if insertion { outputs.first()? } else { outputs.last()? };
    let d0 = dist(anchor);
    if !(d0 > 1e-12) {
        return None;
    }
    Some(outputs.iter().map(|y| 1.0 - dist(y) / d0).collect())
}

/// The area under a curve sampled at equal steps on [0, 1] (trapezoids), the authors'
/// `normal_auc` without their min-max of the mean curve.
pub fn auc(curve: &[f64]) -> f64 {
    let n = curve.len();
    if n < 2 {
        return curve.first().copied().unwrap_or(0.0);
    }
    (curve.iter().sum::<f64>() - curve[0] / 2.0 - curve[n - 1] / 2.0) / (n - 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "[{i}] {g} vs {w}");
        }
    }

    #[test]
    fn window_is_the_normalised_gaussian() {
        let w = gaussian_window(15, 1.5);
        assert_eq!(w.len(), 225);
        check(&[w.iter().sum::<f32>()], &[1.0], 1e-6);
        // Peak at the centre: (1 / sum_x exp(-x^2 / 4.5))^2 over x = -7..7.
        let s: f64 = (-7..=7).map(|x: i32| (-(x * x) as f64 / 4.5).exp()).sum();
        check(&[w[7 * 15 + 7]], &[(1.0 / (s * s)) as f32], 1e-6);
        check(&[w[0]], &[((-49.0f64 / 4.5).exp() * (-49.0f64 / 4.5).exp() / (s * s)) as f32], 1e-6);
    }

    /// The structure term straight from its definition: every sum over the window written out
    /// in f64, for one pixel.
    fn direct(x: &[f64], y: &[f64], h: usize, w: usize, py: usize, px: usize, factor: f64) -> f64 {
        let g: Vec<f64> = (0..15).map(|i| (-((i as f64 - 7.0).powi(2)) / 4.5).exp()).collect();
        let gs: f64 = g.iter().sum();
        let (mut mx, mut my, mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (dy, gy) in g.iter().enumerate() {
            for (dx, gx) in g.iter().enumerate() {
                let (yy_, xx_) = (py as isize + dy as isize - 7, px as isize + dx as isize - 7);
                if yy_ < 0 || xx_ < 0 || yy_ >= h as isize || xx_ >= w as isize {
                    continue;
                }
                let wt = gy * gx / (gs * gs);
                let (a, b) = (x[yy_ as usize * w + xx_ as usize], y[yy_ as usize * w + xx_ as usize]);
                mx += wt * a;
                my += wt * b;
                xx += wt * a * a;
                yy += wt * b * b;
                xy += wt * a * b;
            }
        }
        let c3 = 0.03f64 * 0.03 / 2.0;
        (factor * (xy - mx * my) + c3) / ((xx - mx * mx).max(0.0).sqrt() * (yy - my * my).max(0.0).sqrt() + c3)
    }

    #[test]
    fn structure_term_against_its_definition() {
        let (c, h, w) = (2, 9, 11);
        let x: Vec<f32> = (0..c * h * w).map(|i| ((i * 37 % 23) as f32 / 23.0 - 0.4) * 1.7).collect();
        let y: Vec<f32> = (0..c * h * w).map(|i| ((i * 53 % 29) as f32 / 29.0 - 0.6) + 0.3 * x[i]).collect();
        for (term, factor) in [(StructureTerm::Authors, 2.0), (StructureTerm::Standard, 1.0)] {
            let got = ssim_structure(&x, &y, c, h, w, term);
            let mut want = vec![0f32; h * w];
            for ch in 0..c {
                let xs: Vec<f64> = x[ch * h * w..(ch + 1) * h * w].iter().map(|&v| v as f64).collect();
                let ys: Vec<f64> = y[ch * h * w..(ch + 1) * h * w].iter().map(|&v| v as f64).collect();
                for py in 0..h {
                    for px in 0..w {
                        want[py * w + px] += (direct(&xs, &ys, h, w, py, px, factor) / c as f64) as f32;
                    }
                }
            }
            check(&got, &want, 2e-4);
        }
        // Identical inputs: the standard term is 1 everywhere, the authors' (2σ² + C3)/(σ² + C3).
        let s = ssim_structure(&x, &x, c, h, w, StructureTerm::Standard);
        check(&s, &vec![1.0; h * w], 1e-5);
        let a = ssim_structure(&x, &x, c, h, w, StructureTerm::Authors);
        assert!(a.iter().all(|&v| v > 1.0 && v <= 2.0), "{a:?}");
    }

    #[test]
    fn grad_cam_and_scaling() {
        // Two channels of 2x2: alpha = mean gradient = (1, -0.5).
        let acts = [1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 0.0, 10.0];
        let grads = [1.0, 1.0, 1.0, 1.0, -1.0, 0.0, -1.0, 0.0];
        // 1*[1,2,3,4] - 0.5*[2,2,0,10] = [0, 1, 3, -1] -> ReLU
        check(&grad_cam(&acts, &grads, 2, 2, 2), &[0.0, 1.0, 3.0, 0.0], 0.0);
        check(&relu_minmax(&[-1.0, 1.0, 3.0]), &[0.0, 1.0 / 3.0, 1.0], 1e-7);
        assert_eq!(relu_minmax(&[-1.0, -2.0]), vec![0.0, 0.0]);
        assert_eq!(minmax(&[5.0, 5.0]), vec![0.0, 0.0]);
        assert_eq!(minmax(&[500.0, 500.00003]), vec![0.0, 0.0]);
        assert_eq!(minmax(&[0.0, 1e-9]), vec![0.0, 1.0]);
        check(&crate::analysis::cfg_combine(&[1.0, 2.0], &[3.0, 0.0], 7.5), &[16.0, -13.0], 0.0);
        let m = cam_map(&acts, &grads, 2, 2, 2, 4, 4);
        assert_eq!(m.len(), 16);
        assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn blur_kernel_is_scipys() {
        // scipy.ndimage.gaussian_filter(delta_11x11, 5): centre row and a corner.
        let k = authors_blur_kernel();
        check(&[k.iter().sum::<f32>()], &[1.0], 1e-6);
        check(
            &k[5 * 11..5 * 11 + 6],
            &[0.00826649, 0.00835464, 0.00850295, 0.00866431, 0.00878633, 0.00883263],
            1e-6,
        );
        check(&[k[0]], &[0.007736635408576913], 1e-6);
        // A constant plane stays constant in the interior.
        let x = vec![2.0f32; 3 * 13 * 13];
        let b = blur_channels(&x, 3, 13, 13, &k, 11);
        check(&[b[6 * 13 + 6], b[169 + 6 * 13 + 6]], &[2.0 * (k.iter().sum::<f32>()), 2.0], 1e-5);
    }

    #[test]
    fn games_and_auc() {
        assert_eq!(saliency_order(&[0.1, 0.9, 0.5, 0.9]), vec![1, 3, 2, 0]);
        // 2 channels of 2x2; 2 points: stages insert 0, 2, 4 pixels.
        let from = vec![0.0; 8];
        let to: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let stages = game_inputs(&from, &to, &[3, 0, 1, 2], 2);
        assert_eq!(stages[0], vec![0.0; 8]);
        assert_eq!(stages[1], vec![1.0, 0.0, 0.0, 4.0, 5.0, 0.0, 0.0, 8.0]);
        assert_eq!(stages[2], to);
        let reference = vec![1.0f32, 1.0];
        let outs = vec![vec![0.0, 1.0], vec![0.5, 1.0], vec![1.0, 1.0]];
        assert_eq!(game_curve(&outs, &reference, true).unwrap(), vec![0.0, 0.5, 1.0]);
        let del = vec![vec![1.0, 1.0], vec![0.5, 1.0], vec![0.0, 1.0]];
        assert_eq!(game_curve(&del, &reference, false).unwrap(), vec![1.0, 0.5, 0.0]);
        assert!(game_curve(&[vec![1.0, 1.0]], &reference, true).is_none());
        assert!((auc(&[0.0, 0.5, 1.0]) - 0.5).abs() < 1e-12);
        assert!((auc(&[0.0, 1.0, 1.0]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn rise_masks_and_accumulation() {
        let draws = [0.1, 0.7, 0.49, 0.5];
        let mut it = draws.iter().copied();
        let m = rise_mask(&mut || it.next().unwrap(), 2, 2, 0.5);
        assert_eq!(m, vec![1.0, 0.0, 1.0, 0.0]);
        let mut acc = vec![1.0; 4];
        rise_accumulate(&mut acc, &m, &[2.0, 3.0, 4.0, 5.0]);
        assert_eq!(acc, vec![3.0, 1.0, 5.0, 1.0]);
    }
}
