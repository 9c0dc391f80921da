//! Latent probing and model health, the maths: interpolation paths (slerp with the usual lerp
//! fallback, lerp), path smoothness, semantic directions in embedding space, reference
//! statistics and out-of-distribution scores, AUROC, and the timestep-embedding health
//! statistics. Slices in, numbers out; f64 inside.

use serde::{Deserialize, Serialize};

/// Above this |cosine| the endpoints are treated as parallel and slerp falls back to lerp (the
/// threshold the common `slerp` helper of the Stable Diffusion community uses).
pub const SLERP_PARALLEL: f64 = 0.9995;

/// How to move between two endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    Slerp,
    Lerp,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Slerp => "slerp",
            PathKind::Lerp => "lerp",
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The Euclidean norm.
pub fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

/// Cosine similarity (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot(a, b) / (na * nb) }
}

/// `(1 - t) a + t b`.
pub fn lerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| ((1.0 - t) * x as f64 + t * y as f64) as f32)
        .collect()
}

/// Spherical interpolation: along the great circle between the directions of `a` and `b`, the
/// norm interpolated the same way slerp moves the coefficients (so two noises of one norm
/// keep it). Falls back to [`lerp`] when |cos| > [`SLERP_PARALLEL`] or a vector is zero.
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return lerp(a, b, t);
    }
    let c = dot(a, b) / (na * nb);
    if c.abs() > SLERP_PARALLEL {
        return lerp(a, b, t);
    }
    let theta = c.acos();
    let s = theta.sin();
    let wa = ((1.0 - t) * theta).sin() / s;
    let wb = (t * theta).sin() / s;
    a.iter().zip(b).map(|(&x, &y)| (wa * x as f64 + wb * y as f64) as f32).collect()
}

/// `n` points from `a` to `b` inclusive (n >= 2) on the chosen path.
pub fn path(a: &[f32], b: &[f32], n: usize, kind: PathKind) -> Vec<Vec<f32>> {
    let n = n.max(2);
    (0..n)
        .map(|i| {
            let t = i as f64 / (n - 1) as f64;
            match kind {
                PathKind::Slerp => slerp(a, b, t),
                PathKind::Lerp => lerp(a, b, t),
            }
        })
        .collect()
}

/// Whether slerp between `a` and `b` would fall back to lerp.
pub fn nearly_parallel(a: &[f32], b: &[f32]) -> bool {
    cosine(a, b).abs() > SLERP_PARALLEL
}

/// Consecutive distances along a path of frames and their summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Smoothness {
    /// RMS difference between frame k and k+1, for every k.
    pub steps: Vec<f64>,
    pub mean: f64,
    pub max: f64,
    /// max / mean: 1 for evenly spaced frames; large when one step jumps ("no sudden jumps"
    /// means close to 1). 0 when every frame is the same.
    pub max_over_mean: f64,
}

/// RMS difference of consecutive frames (each a flat vector of one length).
pub fn smoothness(frames: &[Vec<f32>]) -> Smoothness {
    let steps: Vec<f64> = frames
        .windows(2)
        .map(|w| {
            let n = w[0].len().max(1) as f64;
            (w[0].iter().zip(&w[1]).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / n).sqrt()
        })
        .collect();
    let mean = if steps.is_empty() {
        0.0
    } else {
        steps.iter().sum::<f64>() / steps.len() as f64
    };
    let max = steps.iter().copied().fold(0.0, f64::max);
    Smoothness {
        max_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
        steps,
        mean,
        max,
    }
}

/// An 8-bit image as floats in [0, 1] (for [`smoothness`] of images).
pub fn unit_pixels(rgb: &[u8]) -> Vec<f32> {
    rgb.iter().map(|&v| v as f32 / 255.0).collect()
}

/// A semantic direction in embedding space, as Pix2Pix-Zero builds it: the mean of the target
/// embeddings minus the mean of the source embeddings (each a flat [tokens x dim] vector).
pub fn direction(sources: &[Vec<f32>], targets: &[Vec<f32>]) -> Option<Vec<f32>> {
    let len = sources.first()?.len();
    if targets.is_empty() || sources.iter().chain(targets).any(|v| v.len() != len) {
        return None;
    }
    let (s, t) = (mean_of(sources, len), mean_of(targets, len));
    Some(t.iter().zip(&s).map(|(a, b)| (a - b) as f32).collect())
}

/// `base + alpha * dir`.
pub fn add_scaled(base: &[f32], dir: &[f32], alpha: f64) -> Vec<f32> {
    base.iter().zip(dir).map(|(&b, &d)| (b as f64 + alpha * d as f64) as f32).collect()
}

/// Parses `LO..HI:N` (N evenly spaced values, both ends included) or a comma list `a,b,c`.
pub fn parse_range(text: &str) -> Result<Vec<f64>, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a range: write LO..HI:N (e.g. -2..2:9) or a list (e.g. -1,0,1)");
    let values: Vec<f64> = if let Some((range, n)) = text.split_once(':') {
        let (lo, hi) = range.split_once("..").ok_or_else(bad)?;
        let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
        let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if n < 2 {
            return Err(format!("'{text}': a range needs at least 2 values"));
        }
        if lo >= hi {
            return Err(format!("'{text}': the low end must be below the high end"));
        }
        (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect()
    } else {
        text.split(',')
            .map(|v| v.trim().parse::<f64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?
    };
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return Err(bad());
    }
    Ok(values)
}

/// The per-dimension mean of vectors of length `d`, in f64.
fn mean_of(set: &[Vec<f32>], d: usize) -> Vec<f64> {
    let mut mean = vec![0.0f64; d];
    for v in set {
        for (m, &x) in mean.iter_mut().zip(v) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= set.len().max(1) as f64);
    mean
}

/// Per-dimension reference statistics of a set of vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagStats {
    pub count: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// The floor of a dimension's standard deviation, as a fraction of the mean standard deviation
/// (a dimension that never varies would otherwise give an infinite score).
pub const STD_FLOOR: f64 = 1e-3;

impl DiagStats {
    /// Mean and (population) standard deviation per dimension; None for no vectors or unequal
    /// lengths.
    pub fn fit(set: &[Vec<f32>]) -> Option<Self> {
        let d = set.first()?.len();
        if set.iter().any(|v| v.len() != d) || d == 0 {
            return None;
        }
        let n = set.len() as f64;
        let mean = mean_of(set, d);
        let mut var = vec![0.0f64; d];
        for v in set {
            for ((s, &x), m) in var.iter_mut().zip(v).zip(&mean) {
                *s += (x as f64 - m).powi(2);
            }
        }
        let std: Vec<f64> = var.iter().map(|s| (s / n).sqrt()).collect();
        let floor = STD_FLOOR * std.iter().sum::<f64>() / d as f64;
        Some(Self {
            count: set.len(),
            mean,
            std: std.iter().map(|s| s.max(floor).max(f64::MIN_POSITIVE)).collect(),
        })
    }

    /// The Mahalanobis-like score with a diagonal covariance: the mean over dimensions of the
    /// squared z-score. About 1 for a vector drawn from the reference distribution.
    pub fn score(&self, v: &[f32]) -> f64 {
        v.iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((&x, m), s)| ((x as f64 - m) / s).powi(2))
            .sum::<f64>()
            / self.mean.len().max(1) as f64
    }
}

/// Average-pools a [C, h, w] latent to [C, p, p] (adaptive pooling as torch's
/// `adaptive_avg_pool2d`: cell i covers floor(i h / p) .. ceil((i + 1) h / p)).
pub fn pool_latent(v: &[f32], shape: [usize; 3], p: usize) -> Vec<f32> {
    let [c, h, w] = shape;
    let mut out = Vec::with_capacity(c * p * p);
    for ch in 0..c {
        for i in 0..p {
            let (y0, y1) = (i * h / p, ((i + 1) * h).div_ceil(p));
            for j in 0..p {
                let (x0, x1) = (j * w / p, ((j + 1) * w).div_ceil(p));
                let mut s = 0.0f64;
                for y in y0..y1 {
                    for x in x0..x1 {
                        s += v[ch * h * w + y * w + x] as f64;
                    }
                }
                out.push((s / ((y1 - y0) * (x1 - x0)) as f64) as f32);
            }
        }
    }
    out
}

/// Full-covariance reference statistics (of pooled latents): mean and the inverse of the
/// covariance, shrunk towards its mean variance by [`COV_SHRINK`] so a small reference set
/// still gives a well-conditioned inverse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullStats {
    pub count: usize,
    pub mean: Vec<f64>,
    /// Row-major [d, d].
    pub precision: Vec<f64>,
}

/// Shrinkage of the covariance: (1 - s) Σ + s (tr Σ / d) I.
pub const COV_SHRINK: f64 = 0.01;

impl FullStats {
    pub fn fit(set: &[Vec<f32>]) -> Option<Self> {
        let d = set.first()?.len();
        if d == 0 || set.iter().any(|v| v.len() != d) {
            return None;
        }
        let n = set.len() as f64;
        let mean = mean_of(set, d);
        let mut cov = vec![0.0f64; d * d];
        for v in set {
            let c: Vec<f64> = v.iter().zip(&mean).map(|(&x, m)| x as f64 - m).collect();
            for i in 0..d {
                for j in 0..d {
                    cov[i * d + j] += c[i] * c[j];
                }
            }
        }
        cov.iter_mut().for_each(|x| *x /= n);
        let avg_var = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / d as f64;
        let avg_var = if avg_var > 0.0 { avg_var } else { 1.0 };
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] *= 1.0 - COV_SHRINK;
            }
            cov[i * d + i] += COV_SHRINK * avg_var;
        }
        let precision = invert_spd(&cov, d)?;
        Some(Self {
            count: set.len(),
            mean,
            precision,
        })
    }

    /// Squared Mahalanobis distance over the dimension count (about 1 in distribution).
    pub fn score(&self, v: &[f32]) -> f64 {
        let d = self.mean.len();
        let c: Vec<f64> = v.iter().zip(&self.mean).map(|(&x, m)| x as f64 - m).collect();
        let mut s = 0.0;
        for i in 0..d {
            let row = &self.precision[i * d..(i + 1) * d];
            s += c[i] * row.iter().zip(&c).map(|(p, x)| p * x).sum::<f64>();
        }
        s / d.max(1) as f64
    }
}

/// Every `side` x `side` window of a [C, h, w] latent (no padding), each flattened to
/// C * side * side values (channel-major), row by row.
pub fn patches(v: &[f32], shape: [usize; 3], side: usize) -> Vec<Vec<f32>> {
    let [c, h, w] = shape;
    if side == 0 || side > h || side > w {
        return Vec::new();
    }
    let mut out = Vec::with_capacity((h - side + 1) * (w - side + 1));
    for y in 0..=h - side {
        for x in 0..=w - side {
            let mut p = Vec::with_capacity(c * side * side);
            for ch in 0..c {
                for dy in 0..side {
                    let row = ch * h * w + (y + dy) * w + x;
                    p.extend_from_slice(&v[row..row + side]);
                }
            }
            out.push(p);
        }
    }
    out
}

/// A memory bank of reference latent patches (as PatchCore keeps one): a patch's score is
/// its distance to the nearest bank patch, each dimension divided by its standard deviation
/// over the reference; an image's score is its farthest patch. Catches what the global
/// statistics miss: a local pattern (a colour, an edge) the reference never shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchBank {
    pub side: usize,
    pub dim: usize,
    /// 1 / standard deviation per dimension.
    pub scale: Vec<f32>,
    /// [n, dim] row-major, already scaled.
    pub vectors: Vec<f32>,
}

impl PatchBank {
    /// The bank of `set`'s patches, at most `max` of them (an even subsample, deterministic).
    pub fn fit(set: &[Vec<f32>], shape: [usize; 3], side: usize, max: usize) -> Option<Self> {
        let all: Vec<Vec<f32>> = set.iter().flat_map(|v| patches(v, shape, side)).collect();
        let dim = all.first()?.len();
        let stats = DiagStats::fit(&all)?;
        let scale: Vec<f32> = stats.std.iter().map(|s| (1.0 / s) as f32).collect();
        let n = all.len().min(max.max(1));
        let mut vectors = Vec::with_capacity(n * dim);
        for k in 0..n {
            // Evenly spread over every image and position.
            let p = &all[k * all.len() / n];
            vectors.extend(p.iter().zip(&scale).map(|(x, s)| x * s));
        }
        Some(Self { side, dim, scale, vectors })
    }

    /// The distance of the image's farthest patch to its nearest bank patch.
    pub fn score(&self, v: &[f32], shape: [usize; 3]) -> f64 {
        let mut worst = 0.0f32;
        for p in patches(v, shape, self.side) {
            let q: Vec<f32> = p.iter().zip(&self.scale).map(|(x, s)| x * s).collect();
            let mut best = f32::INFINITY;
            for b in self.vectors.chunks_exact(self.dim) {
                let mut d = 0.0f32;
                for (x, y) in q.iter().zip(b) {
                    d += (x - y) * (x - y);
                }
                best = best.min(d);
            }
            worst = worst.max(best);
        }
        (worst as f64).sqrt()
    }
}

/// The inverse of a symmetric positive definite matrix through its Cholesky factor; None when
/// it is not positive definite.
pub fn invert_spd(a: &[f64], d: usize) -> Option<Vec<f64>> {
    // a = L L^T
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if !(v > 0.0) {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    // inverse of L (lower triangular), then A^-1 = L^-T L^-1
    let mut li = vec![0.0f64; d * d];
    for i in 0..d {
        li[i * d + i] = 1.0 / l[i * d + i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i * d + k] * li[k * d + j]).sum();
            li[i * d + j] = -s / l[i * d + i];
        }
    }
    let mut inv = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (i..d).map(|k| li[k * d + i] * li[k * d + j]).sum();
            inv[i * d + j] = s;
            inv[j * d + i] = s;
        }
    }
    Some(inv)
}

/// The value below which a fraction `q` of `scores` lie (linear interpolation between order
/// statistics, NumPy's default `percentile` method).
pub fn quantile(scores: &[f64], q: f64) -> Option<f64> {
    if scores.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut s: Vec<f64> = scores.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

/// Area under the ROC curve of a score that should be higher for `positive` than for
/// `negative` (the Mann-Whitney statistic; ties count one half). None when a side is empty.
pub fn auroc(negative: &[f64], positive: &[f64]) -> Option<f64> {
    if negative.is_empty() || positive.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = negative
        .iter()
        .map(|&v| (v, false))
        .chain(positive.iter().map(|&v| (v, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' mid-ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (np, nn) = (positive.len() as f64, negative.len() as f64);
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

/// A histogram of `values` over `bins` equal bins from `lo` to `hi` (values outside go to the
/// end bins).
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let n = bins.max(1);
    let mut h = vec![0usize; n];
    let width = (hi - lo) / n as f64;
    for &v in values {
        let i = if width > 0.0 { ((v - lo) / width).floor() } else { 0.0 };
        h[(i.max(0.0) as usize).min(n - 1)] += 1;
    }
    h
}

/// How strongly a model's output depends on its timestep, for fixed inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeResponse {
    /// The timesteps, ascending.
    pub timesteps: Vec<f64>,
    /// The output's RMS at each timestep.
    pub output_rms: Vec<f64>,
    /// RMS of the change between consecutive timesteps over the output's mean RMS, per unit t
    /// (so independent of the grid's spacing).
    pub change_per_t: Vec<f64>,
    /// The sum of the relative changes over the whole grid (the path length of the output as
    /// t sweeps, in units of its size).
    pub total_change: f64,
    /// Cosine similarity of the outputs at the two ends of the grid.
    pub end_similarity: f64,
    /// The mean cosine similarity of all pairs at least half the range apart.
    pub far_similarity: f64,
}

/// The response of `outputs[k]` (the model output at `timesteps[k]`, ascending) to t.
pub fn time_response(timesteps: &[f64], outputs: &[Vec<f32>]) -> Option<TimeResponse> {
    if timesteps.len() < 2 || timesteps.len() != outputs.len() {
        return None;
    }
    let rms: Vec<f64> = outputs.iter().map(|o| norm(o) / (o.len().max(1) as f64).sqrt()).collect();
    let mean_rms = rms.iter().sum::<f64>() / rms.len() as f64;
    let scale = if mean_rms > 0.0 { mean_rms } else { 1.0 };
    let steps = smoothness(outputs).steps;
    let change_per_t: Vec<f64> = steps
        .iter()
        .zip(timesteps.windows(2))
        .map(|(d, t)| d / scale / (t[1] - t[0]).abs().max(f64::MIN_POSITIVE))
        .collect();
    let total_change = steps.iter().sum::<f64>() / scale;
    let range = timesteps[timesteps.len() - 1] - timesteps[0];
    let mut far = Vec::new();
    for i in 0..outputs.len() {
        for j in i + 1..outputs.len() {
            if (timesteps[j] - timesteps[i]).abs() >= range / 2.0 {
                far.push(cosine(&outputs[i], &outputs[j]));
            }
        }
    }
    Some(TimeResponse {
        output_rms: rms,
        change_per_t,
        total_change,
        end_similarity: cosine(&outputs[0], &outputs[outputs.len() - 1]),
        far_similarity: if far.is_empty() {
            1.0
        } else {
            far.iter().sum::<f64>() / far.len() as f64
        },
        timesteps: timesteps.to_vec(),
    })
}

/// Below this total relative change over the whole timestep range the embedding is dead: the
/// output moves less than 2% of its own size from t = 0 to t = T.
pub const DEAD_TOTAL_CHANGE: f64 = 0.02;
/// Below this (and above [`DEAD_TOTAL_CHANGE`]) the dependence on t is weak.
pub const WEAK_TOTAL_CHANGE: f64 = 0.2;

/// The health verdict of a [`TimeResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeVerdict {
    Healthy,
    Weak,
    DeadEmbedding,
}

impl TimeVerdict {
    pub fn of(r: &TimeResponse) -> Self {
        if r.total_change < DEAD_TOTAL_CHANGE {
            TimeVerdict::DeadEmbedding
        } else if r.total_change < WEAK_TOTAL_CHANGE {
            TimeVerdict::Weak
        } else {
            TimeVerdict::Healthy
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TimeVerdict::Healthy => "healthy: the output depends on t",
            TimeVerdict::Weak => "weak: the output barely depends on t",
            TimeVerdict::DeadEmbedding => "dead embedding: the output does not depend on t",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slerp_keeps_endpoints_and_norm() {
        let a = vec![1.0f32, 0.0, 0.0];
        let b = vec![0.0f32, 1.0, 0.0];
        assert_eq!(slerp(&a, &b, 0.0), a);
        let end = slerp(&a, &b, 1.0);
        assert!(end.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-7));
        let mid = slerp(&a, &b, 0.5);
        assert!((norm(&mid) - 1.0).abs() < 1e-6, "{}", norm(&mid));
        assert!((mid[0] - 0.5f32.sqrt()).abs() < 1e-6);
        // lerp dips to 1/sqrt(2) at the middle.
        assert!((norm(&lerp(&a, &b, 0.5)) - 0.5f64.sqrt()).abs() < 1e-7);
        // Parallel endpoints fall back to lerp.
        let c = vec![2.0f32, 0.0, 0.0];
        assert!(nearly_parallel(&a, &c));
        assert_eq!(slerp(&a, &c, 0.5), lerp(&a, &c, 0.5));
    }

    #[test]
    fn smoothness_of_even_and_jumping_paths() {
        let even: Vec<Vec<f32>> = (0..5).map(|i| vec![i as f32; 4]).collect();
        let s = smoothness(&even);
        assert_eq!(s.steps, vec![1.0; 4]);
        assert_eq!(s.max_over_mean, 1.0);
        let jump = vec![vec![0.0f32], vec![0.0], vec![3.0], vec![3.0]];
        let s = smoothness(&jump);
        assert_eq!(s.max, 3.0);
        assert!((s.max_over_mean - 3.0).abs() < 1e-12);
    }

    #[test]
    fn direction_is_difference_of_means() {
        let src = vec![vec![1.0f32, 0.0], vec![3.0, 0.0]];
        let tgt = vec![vec![0.0f32, 2.0]];
        assert_eq!(direction(&src, &tgt).unwrap(), vec![-2.0, 2.0]);
        assert!(direction(&src, &[vec![1.0]]).is_none());
        assert_eq!(add_scaled(&[1.0, 1.0], &[-2.0, 2.0], 0.5), vec![0.0, 2.0]);
    }

    #[test]
    fn ranges_parse_or_say_why() {
        assert_eq!(parse_range("-2..2:5").unwrap(), vec![-2.0, -1.0, 0.0, 1.0, 2.0]);
        assert_eq!(parse_range("0, 1.5").unwrap(), vec![0.0, 1.5]);
        for bad in ["2..-2:5", "-2..2", "a..b:3", "0..1:1", "", "1,x"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reference_scores() {
        // Reference: x ~ two points per dimension, mean 0, std 1.
        let set = vec![vec![1.0f32, -2.0], vec![-1.0, 2.0]];
        let s = DiagStats::fit(&set).unwrap();
        assert_eq!(s.mean, vec![0.0, 0.0]);
        assert_eq!(s.std, vec![1.0, 2.0]);
        // The reference points themselves score exactly 1.
        assert!((s.score(&set[0]) - 1.0).abs() < 1e-12);
        assert!((s.score(&[3.0, 0.0]) - 4.5).abs() < 1e-12);
    }

    #[test]
    fn full_covariance_inverse() {
        let a = vec![4.0, 2.0, 2.0, 3.0];
        let inv = invert_spd(&a, 2).unwrap();
        // [4 2; 2 3]^-1 = [3 -2; -2 4] / 8
        let want = [0.375, -0.25, -0.25, 0.5];
        assert!(inv.iter().zip(want).all(|(x, y)| (x - y).abs() < 1e-12), "{inv:?}");
        assert!(invert_spd(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        // Gaussian-ish cloud: in-distribution points score near 1, far points far higher.
        let mut rng = crate::world::rng::Rng::new(3);
        let set: Vec<Vec<f32>> = (0..400).map(|_| (0..3).map(|_| rng.normal()).collect()).collect();
        let f = FullStats::fit(&set).unwrap();
        let mean_score = set.iter().map(|v| f.score(v)).sum::<f64>() / set.len() as f64;
        assert!((mean_score - 1.0).abs() < 0.05, "{mean_score}");
        assert!(f.score(&[5.0, 5.0, 5.0]) > 20.0);
    }

    #[test]
    fn pooling_averages_cells() {
        let v: Vec<f32> = (0..16).map(|i| i as f32).collect();
        assert_eq!(pool_latent(&v, [1, 4, 4], 2), vec![2.5, 4.5, 10.5, 12.5]);
        // 3 -> 2 cells overlap in the middle row, as torch's adaptive pooling.
        let v: Vec<f32> = (0..9).map(|i| i as f32).collect();
        assert_eq!(pool_latent(&v, [1, 3, 3], 2), vec![2.0, 3.0, 5.0, 6.0]);
    }

    #[test]
    fn patch_bank_finds_a_new_local_pattern() {
        // [1, 4, 4] latents: a constant field with small noise; the odd one has a bright spot.
        let mut rng = crate::world::rng::Rng::new(9);
        let set: Vec<Vec<f32>> = (0..20).map(|_| (0..16).map(|_| 0.1 * rng.normal()).collect()).collect();
        let bank = PatchBank::fit(&set, [1, 4, 4], 2, 1000).unwrap();
        assert_eq!(bank.dim, 4);
        assert_eq!(patches(&set[0], [1, 4, 4], 2).len(), 9);
        // A reference image's patches are in the bank: distance 0.
        assert_eq!(bank.score(&set[3], [1, 4, 4]), 0.0);
        let mut odd = set[0].clone();
        odd[5] = 3.0;
        let fresh: Vec<f32> = (0..16).map(|_| 0.1 * rng.normal()).collect();
        assert!(bank.score(&odd, [1, 4, 4]) > 5.0 * bank.score(&fresh, [1, 4, 4]));
    }

    #[test]
    fn auroc_and_quantile() {
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), Some(1.0));
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), Some(0.0));
        assert_eq!(auroc(&[1.0, 2.0], &[1.0, 2.0]), Some(0.5));
        assert_eq!(auroc(&[1.0, 3.0], &[2.0]), Some(0.5));
        assert_eq!(auroc(&[], &[1.0]), None);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.25), Some(1.25));
        assert_eq!(histogram(&[0.0, 0.5, 0.99, 5.0, -1.0], 0.0, 1.0, 2), vec![2, 3]);
    }

    #[test]
    fn time_response_verdicts() {
        let ts: Vec<f64> = (0..5).map(|i| i as f64 * 250.0).collect();
        let same: Vec<Vec<f32>> = vec![vec![1.0, 2.0, 3.0]; 5];
        let r = time_response(&ts, &same).unwrap();
        assert_eq!(r.total_change, 0.0);
        assert!((r.far_similarity - 1.0).abs() < 1e-12);
        assert_eq!(TimeVerdict::of(&r), TimeVerdict::DeadEmbedding);
        let moving: Vec<Vec<f32>> = (0..5).map(|i| vec![1.0, i as f32, -(i as f32)]).collect();
        let r = time_response(&ts, &moving).unwrap();
        assert!(r.total_change > 1.0);
        assert_eq!(TimeVerdict::of(&r), TimeVerdict::Healthy);
        assert!(r.end_similarity < 0.5);
    }
}
