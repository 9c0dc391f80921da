//! Quality metrics on feature sets: FID, KID, Inception Score, precision/recall, exact to
//! torch-fidelity on the same features (`math`), over feature files that shard and merge
//! (`features`).

pub mod clip;
pub mod extract;
pub mod features;
pub mod inception;
pub mod math;
pub mod nprand;
pub mod resize;
pub mod sanity;
pub mod shapes_net;
pub mod torchscript;

use serde::{Deserialize, Serialize};

pub use features::{FeatureFile, FeatureMeta};
pub use math::{KidSettings, Rows, Stats};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{0}")]
    File(String),
    #[error("mismatched feature dimensions: {0}")]
    Dimensions(String),
    #[error("too few samples: {0}")]
    TooFew(String),
    #[error("numerical failure: {0}")]
    Numeric(String),
}

/// Which metrics `compare` computes besides FID.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricSettings {
    pub kid: Option<KidSettings>,
    /// Inception Score splits (of the fake set's logits).
    pub is_splits: Option<usize>,
    /// Precision/recall neighbourhood k.
    pub pr_k: Option<usize>,
}

/// The numbers, with the JSON keys the issue fixes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricsReport {
    pub fid: Option<f64>,
    pub kid_mean: Option<f64>,
    pub kid_std: Option<f64>,
    pub is_mean: Option<f64>,
    pub is_std: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub clip_score: Option<f64>,
    pub n_real: usize,
    pub n_fake: usize,
    pub network: Option<String>,
    pub resize: Option<String>,
    /// Sample-size warnings and anything else a reader should know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// FID below this many samples is mostly noise (common guidance; 10000 recommended).
pub const FID_MIN_SAMPLES: usize = 5000;

/// FID (and what `s` asks for) of `fake` against `real`. `progress(done, total, what)`.
pub fn compare(
    real: &FeatureFile,
    fake: &FeatureFile,
    s: &MetricSettings,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<MetricsReport, MetricsError> {
    if let (Some(a), Some(b)) = (real.dim(), fake.dim()) {
        if a != b {
            return Err(MetricsError::Dimensions(format!(
                "the real features are {a}-d, the fake ones {b}-d"
            )));
        }
    }
    for (what, a, b) in [
        ("network", &real.meta.network, &fake.meta.network),
        ("resize", &real.meta.resize, &fake.meta.resize),
    ] {
        if let (Some(a), Some(b)) = (a, b) {
            if a != b {
                return Err(MetricsError::File(format!(
                    "the real features come from {what} {a}, the fake ones from {b}: not comparable"
                )));
            }
        }
    }
    let mut r = MetricsReport {
        n_real: real.count(),
        n_fake: fake.count(),
        network: fake.meta.network.clone().or(real.meta.network.clone()),
        resize: fake.meta.resize.clone().or(real.meta.resize.clone()),
        ..Default::default()
    };
    progress(0, 1, "FID");
    r.fid = Some(math::fid(&real.fid_stats().unwrap(), &fake.fid_stats().unwrap())?);
    let n_min = r.n_real.min(r.n_fake);
    if n_min < FID_MIN_SAMPLES {
        r.warnings.push(format!(
            "{n_min} samples: FID (and precision/recall) below {FID_MIN_SAMPLES} samples is mostly noise and biased upwards; 10000 or more is recommended"
        ));
    }
    let rows = |f: &FeatureFile, which: &str, metric: &str| -> Result<Rows, MetricsError> {
        f.features.clone().ok_or_else(|| {
            MetricsError::File(format!(
                "{metric} needs the {which} feature rows; this file holds only FID statistics"
            ))
        })
    };
    if let Some(k) = &s.kid {
        let (a, b) = (rows(real, "real", "KID")?, rows(fake, "fake", "KID")?);
        if k.subset_size >= a.n.min(b.n) && a.n == b.n {
            r.warnings.push(format!(
                "KID subsets of {} rows take every row of both sets: all subsets are the same, so kid_std is 0",
                k.subset_size
            ));
        }
        let total = k.subsets;
        let (m, sd) = math::kid(&a, &b, k, &mut |i| progress(i, total, "KID subsets"))?;
        r.kid_mean = Some(m);
        r.kid_std = Some(sd);
    }
    if let Some(splits) = s.is_splits {
        let logits = fake.logits.as_ref().ok_or_else(|| {
            MetricsError::File(format!(
                "the Inception Score needs class logits of the fake images; the fake features (network {}) have none",
                fake.meta.network.as_deref().unwrap_or("unknown")
            ))
        })?;
        progress(0, 1, "Inception Score");
        let (m, sd) = math::inception_score(logits, splits, 2020)?;
        r.is_mean = Some(m);
        r.is_std = Some(sd);
    }
    if let Some(k) = s.pr_k {
        let (a, b) = (rows(real, "real", "precision/recall")?, rows(fake, "fake", "precision/recall")?);
        progress(0, 1, "precision/recall");
        let (p, rc) = math::precision_recall(&a, &b, k)?;
        r.precision = Some(p);
        r.recall = Some(rc);
    }
    Ok(r)
}
