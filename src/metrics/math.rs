//! The metrics' formulas, in f64, as the reference implementations compute them:
//! - FID: |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), with the covariances unbiased
//!   (n - 1) as `np.cov`. tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of
//!   S1 S2 (what torch-fidelity computes with `eigvals`); we take them from the symmetric
//!   matrix sqrt(S1) S2 sqrt(S1), which has the same eigenvalues, with faer's symmetric
//!   eigensolver.
//! - KID: the unbiased MMD^2 with the kernel (x.y / d + 1)^3 over `subsets` random subsets of
//!   `subset_size` rows of each set (torch-fidelity: 100 subsets of 1000, indices from NumPy's
//!   `RandomState(2020)`, the fake set's subset drawn first); mean and population std.
//! - IS: the logits shuffled by `RandomState(2020).permutation`, softmax in f64, `splits`
//!   chunks `[i n / splits, (i + 1) n / splits)`, exp of the mean KL to the chunk's marginal;
//!   mean and population std over chunks.
//! - Precision / recall (Kynkäänniemi et al. 2019): a real sample's radius is the distance to
//!   its k-th nearest other real sample (k = 3); precision is the fraction of fake samples
//!   within the radius of some real sample, recall the same with the roles swapped.

use faer::{Mat, Side};

use super::MetricsError;

/// Rows of f32 features, one per image.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub n: usize,
    pub d: usize,
    pub data: Vec<f32>,
}

impl Rows {
    pub fn new(n: usize, d: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), n * d, "rows: {n} x {d} needs {} values", n * d);
        Self { n, d, data }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// The rows `idx` as an f64 matrix.
    fn select(&self, idx: &[usize]) -> Mat<f64> {
        Mat::from_fn(idx.len(), self.d, |i, j| self.data[idx[i] * self.d + j] as f64)
    }

    fn all(&self) -> Mat<f64> {
        Mat::from_fn(self.n, self.d, |i, j| self.data[i * self.d + j] as f64)
    }
}

/// Sufficient statistics of a feature set for FID: count, sum and sum of outer products (f64),
/// which add across shards.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub sum: Vec<f64>,
    /// Row-major d x d: the sum over rows of x x^T.
    pub outer: Vec<f64>,
}

impl Stats {
    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    pub fn of(rows: &Rows) -> Self {
        let d = rows.d;
        let x = rows.all();
        let outer = x.transpose() * &x;
        let sum = (0..d).map(|j| (0..rows.n).map(|i| x[(i, j)]).sum()).collect();
        Self {
            count: rows.n as u64,
            sum,
            outer: (0..d * d).map(|k| outer[(k / d, k % d)]).collect(),
        }
    }

    /// The statistics of both sets together.
    pub fn merge(&self, other: &Stats) -> Result<Stats, MetricsError> {
        if self.dim() != other.dim() {
            return Err(MetricsError::Dimensions(format!(
                "statistics of {}-d and {}-d features",
                self.dim(),
                other.dim()
            )));
        }
        Ok(Stats {
            count: self.count + other.count,
            sum: self.sum.iter().zip(&other.sum).map(|(a, b)| a + b).collect(),
            outer: self.outer.iter().zip(&other.outer).map(|(a, b)| a + b).collect(),
        })
    }

    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.count as f64).collect()
    }

    /// The unbiased covariance, (sum x x^T - n mu mu^T) / (n - 1).
    pub fn covariance(&self) -> Result<Mat<f64>, MetricsError> {
        if self.count < 2 {
            return Err(MetricsError::TooFew(format!(
                "a covariance needs at least 2 feature rows, this set has {}",
                self.count
            )));
        }
        let d = self.dim();
        let n = self.count as f64;
        let mu = self.mean();
        Ok(Mat::from_fn(d, d, |i, j| (self.outer[i * d + j] - n * mu[i] * mu[j]) / (n - 1.0)))
    }
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues from
/// rounding are taken as 0).
fn sqrt_psd(a: &Mat<f64>) -> Result<Mat<f64>, MetricsError> {
    let e = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| MetricsError::Numeric(format!("eigendecomposition: {e:?}")))?;
    let u = e.U();
    let s = e.S().column_vector();
    let d = a.nrows();
    let scaled = Mat::from_fn(d, d, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    Ok(&scaled * u.transpose())
}

/// The Fréchet distance between two Gaussians fitted to the statistics.
pub fn fid(a: &Stats, b: &Stats) -> Result<f64, MetricsError> {
    if a.dim() != b.dim() {
        return Err(MetricsError::Dimensions(format!(
            "{}-d features against {}-d features",
            a.dim(),
            b.dim()
        )));
    }
    let (s1, s2) = (a.covariance()?, b.covariance()?);
    let (m1, m2) = (a.mean(), b.mean());
    let diff: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y) * (x - y)).sum();
    let d = a.dim();
    let trace = |m: &Mat<f64>| (0..d).map(|i| m[(i, i)]).sum::<f64>();
    let r1 = sqrt_psd(&s1)?;
    let m = &r1 * &s2 * &r1;
    // Symmetrise away the rounding of the products before the symmetric solver reads one half.
    let m = Mat::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let eig = m
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| MetricsError::Numeric(format!("eigenvalues: {e:?}")))?;
    let tr_covmean: f64 = eig.iter().map(|&l| l.max(0.0).sqrt()).sum();
    let v = diff + trace(&s1) + trace(&s2) - 2.0 * tr_covmean;
    if !v.is_finite() {
        return Err(MetricsError::Numeric("FID is not finite (non-finite features?)".into()));
    }
    Ok(v)
}

/// KID settings (torch-fidelity's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KidSettings {
    pub subsets: usize,
    pub subset_size: usize,
    pub seed: u32,
}

impl Default for KidSettings {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
            seed: 2020,
        }
    }
}

/// The unbiased MMD^2 of one pair of subsets with the cubic polynomial kernel.
fn mmd2_poly(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    let m = x.nrows();
    let gamma = 1.0 / x.ncols() as f64;
    let kernel = |a: &Mat<f64>, b: &Mat<f64>| {
        let g = a * b.transpose();
        Mat::from_fn(m, m, |i, j| (g[(i, j)] * gamma + 1.0).powi(3))
    };
    let (kxx, kyy, kxy) = (kernel(x, x), kernel(y, y), kernel(x, y));
    let off_diag = |k: &Mat<f64>| -> f64 { (0..m).map(|i| (0..m).map(|j| k[(i, j)]).sum::<f64>() - k[(i, i)]).sum() };
    let sum_xy: f64 = (0..m).map(|j| (0..m).map(|i| kxy[(i, j)]).sum::<f64>()).sum();
    let m = m as f64;
    (off_diag(&kxx) + off_diag(&kyy)) / (m * (m - 1.0)) - 2.0 * sum_xy / (m * m)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// KID (mean, std) of `fake` against `real`; `progress` is called after every subset.
pub fn kid(real: &Rows, fake: &Rows, s: &KidSettings, progress: &mut dyn FnMut(usize)) -> Result<(f64, f64), MetricsError> {
    if real.d != fake.d {
        return Err(MetricsError::Dimensions(format!("real {}-d, fake {}-d", real.d, fake.d)));
    }
    if real.n < s.subset_size || fake.n < s.subset_size {
        return Err(MetricsError::TooFew(format!(
            "KID subsets of {} rows need at least that many in each set (real {}, fake {}); lower --kid-subset-size",
            s.subset_size, real.n, fake.n
        )));
    }
    if s.subset_size < 2 || s.subsets == 0 {
        return Err(MetricsError::TooFew("KID needs subsets of at least 2 rows".into()));
    }
    let mut rng = super::nprand::RandomState::new(s.seed);
    let mut mmds = Vec::with_capacity(s.subsets);
    for i in 0..s.subsets {
        let f = fake.select(&rng.choice(fake.n, s.subset_size));
        let r = real.select(&rng.choice(real.n, s.subset_size));
        mmds.push(mmd2_poly(&f, &r));
        progress(i + 1);
    }
    Ok(mean_std(&mmds))
}

/// Inception Score (mean, std) from logits, torch-fidelity's way.
pub fn inception_score(logits: &Rows, splits: usize, seed: u32) -> Result<(f64, f64), MetricsError> {
    if splits == 0 || logits.n < splits {
        return Err(MetricsError::TooFew(format!(
            "the Inception Score's {splits} splits need at least {splits} images, there are {}",
            logits.n
        )));
    }
    let n = logits.n;
    let c = logits.d;
    let order = super::nprand::RandomState::new(seed).permutation(n);
    // log-softmax per row, in f64.
    let log_p: Vec<Vec<f64>> = order
        .iter()
        .map(|&i| {
            let row: Vec<f64> = logits.row(i).iter().map(|&v| v as f64).collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            row.iter().map(|v| v - lse).collect()
        })
        .collect();
    let mut scores = Vec::with_capacity(splits);
    for k in 0..splits {
        let chunk = &log_p[k * n / splits..(k + 1) * n / splits];
        let q: Vec<f64> = (0..c)
            .map(|j| chunk.iter().map(|r| r[j].exp()).sum::<f64>() / chunk.len() as f64)
            .collect();
        let kl: f64 = chunk
            .iter()
            .map(|r| (0..c).map(|j| r[j].exp() * (r[j] - q[j].ln())).sum::<f64>())
            .sum::<f64>()
            / chunk.len() as f64;
        scores.push(kl.exp());
    }
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(MetricsError::Numeric(
            "the Inception Score is not finite (non-finite logits?)".into(),
        ));
    }
    Ok(mean_std(&scores))
}

/// Squared distances between every row of `a` and every row of `b`, `block` rows of `a` at a
/// time: `f(i, distances to all of b)`.
fn for_distance_rows(a: &Rows, b: &Rows, f: &mut dyn FnMut(usize, &[f64])) {
    const BLOCK: usize = 512;
    let bm = b.all();
    let bn: Vec<f64> = (0..b.n).map(|j| (0..b.d).map(|k| bm[(j, k)] * bm[(j, k)]).sum()).collect();
    let mut row = vec![0.0; b.n];
    for start in (0..a.n).step_by(BLOCK) {
        let idx: Vec<usize> = (start..(start + BLOCK).min(a.n)).collect();
        let am = a.select(&idx);
        let g = &am * bm.transpose();
        for (r, &i) in idx.iter().enumerate() {
            let an: f64 = (0..a.d).map(|k| am[(r, k)] * am[(r, k)]).sum();
            for (j, out) in row.iter_mut().enumerate() {
                *out = (an + bn[j] - 2.0 * g[(r, j)]).max(0.0).sqrt();
            }
            f(i, &row);
        }
    }
}

/// Each row's distance to its k-th nearest other row of the same set (the (k+1)-th smallest
/// distance, the row itself being the first).
fn radii(x: &Rows, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.n];
    for_distance_rows(x, x, &mut |i, d| {
        let mut v = d.to_vec();
        let (_, kth, _) = v.select_nth_unstable_by(k, f64::total_cmp);
        out[i] = *kth;
    });
    out
}

/// The fraction of rows of `probe` within the radius of some row of `reference`.
fn coverage(probe: &Rows, reference: &Rows, radius: &[f64]) -> f64 {
    let mut inside = 0usize;
    for_distance_rows(probe, reference, &mut |_, d| {
        if d.iter().zip(radius).any(|(x, r)| x <= r) {
            inside += 1;
        }
    });
    inside as f64 / probe.n as f64
}

/// Precision and recall of `fake` against `real` with k-nearest-neighbour manifolds.
pub fn precision_recall(real: &Rows, fake: &Rows, k: usize) -> Result<(f64, f64), MetricsError> {
    if real.d != fake.d {
        return Err(MetricsError::Dimensions(format!("real {}-d, fake {}-d", real.d, fake.d)));
    }
    if real.n <= k || fake.n <= k {
        return Err(MetricsError::TooFew(format!(
            "precision/recall with k = {k} needs more than {k} rows in each set (real {}, fake {})",
            real.n, fake.n
        )));
    }
    let precision = coverage(fake, real, &radii(real, k));
    let recall = coverage(real, fake, &radii(fake, k));
    Ok((precision, recall))
}
