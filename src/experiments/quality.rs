//! Quality metrics of the app's comparison views: for each row of a sampler comparison or a
//! guidance sweep (its images and their captions), the CLIP score, and FID / KID / precision /
//! recall (and the Inception Score, when the network has logits) against a real-set feature
//! file, through the same `crate::metrics` code as `diffusion-scope metrics`. What the sample
//! size allows is computed; the rest is said in the row's warnings (a row of 8 images has a
//! CLIP score worth reading and an FID that is mostly noise).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::compare::Quality;
use super::{ExperimentEvent, Progress, Stop};
use crate::metrics::clip::{self, Clip};
use crate::metrics::extract::{self, ExtractSettings, Network, NetworkChoice};
use crate::metrics::resize::Resize;
use crate::metrics::{self, FeatureFile, KidSettings, MetricSettings, MetricsError, MetricsReport};
use crate::trace::RgbImage;

/// One row to score: its images and each image's caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualitySet {
    pub label: String,
    pub images: Vec<RgbImage>,
    pub captions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualitySettings {
    pub sets: Vec<QualitySet>,
    /// The CLIP score with this CLIP folder or hub id (None: no CLIP score).
    pub clip_model: Option<String>,
    /// FID and friends against this feature file (None: none; `shapes`: the shipped features of
    /// shapes-world renders). Its `network` metadata says which network makes the rows'
    /// features: "shapes" (the shipped shapes network), "inception" (weights from
    /// `inception_weights` or the torch hub cache) or "clip:NAME" (the CLIP of `clip_model`).
    pub real_features: Option<PathBuf>,
    pub inception_weights: Option<PathBuf>,
    /// Also judge every image against its caption with the shapes world's detector (rows whose
    /// captions are not shapes-world captions get none).
    #[serde(default)]
    pub detector: bool,
}

/// One scored row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityRow {
    pub index: usize,
    pub label: String,
    pub metrics: MetricsReport,
    /// The shapes world's detector against the captions (with `detector`).
    #[serde(default)]
    pub detector: Option<Quality>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct QualityReport {
    pub rows: Vec<QualityRow>,
    pub complete: bool,
}

impl QualitySettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.sets.is_empty() || self.sets.iter().all(|s| s.images.is_empty()) {
            return Err("no images to score".into());
        }
        if self.clip_model.is_none() && self.real_features.is_none() && !self.detector {
            return Err("nothing to compute: give a CLIP model (CLIP score) or a real-set feature file (FID)".into());
        }
        if let Some(s) = self.sets.iter().find(|s| s.images.len() != s.captions.len()) {
            return Err(format!("{}: {} images but {} captions", s.label, s.images.len(), s.captions.len()));
        }
        Ok(())
    }
}

/// The network that made `real`, to make the rows' features the same way.
fn network_of(real: &FeatureFile, s: &QualitySettings, clip: Option<&Arc<Clip>>) -> Result<Network, MetricsError> {
    let name = real.meta.network.clone();
    match name.as_deref() {
        Some("shapes") => NetworkChoice::Shapes { dir: None }.load(&Device::Cpu),
        Some("inception") => NetworkChoice::Inception {
            weights: s.inception_weights.clone(),
        }
        .load(&Device::Cpu),
        // A file without metadata (another tool wrote it): 2048-d rows are pool3 features.
        None if real.dim() == Some(crate::metrics::inception::FEATURES) => NetworkChoice::Inception {
            weights: s.inception_weights.clone(),
        }
        .load(&Device::Cpu),
        Some(n) if n.starts_with("clip:") => match clip {
            Some(c) if format!("clip:{}", c.name) == n => Ok(Network::Clip(c.clone())),
            _ => Err(MetricsError::File(format!(
                "the real features come from {n}: set the CLIP model to that model to compare with them"
            ))),
        },
        other => Err(MetricsError::File(format!(
            "the real features come from network {}, which this view cannot run",
            other.unwrap_or("unknown")
        ))),
    }
}

/// Scores every set in order, streaming each row as it is done.
pub fn run(
    settings: &QualitySettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(QualityReport, Option<Stop>), MetricsError> {
    settings.validate().map_err(MetricsError::File)?;
    let clip = match &settings.clip_model {
        Some(m) => Some(Arc::new(Clip::load(m, &Device::Cpu)?)),
        None => None,
    };
    let real = match &settings.real_features {
        Some(p) => {
            // `shapes`: the shipped features of shapes-world renders.
            let p = if p.as_os_str() == "shapes" && !p.exists() {
                crate::shapes_renders_features_path()
            } else {
                p.clone()
            };
            let f = FeatureFile::read(&p)?;
            let net = network_of(&f, settings, clip.as_ref())?;
            Some((f, net))
        }
        None => None,
    };
    let mut report = QualityReport::default();
    let total = settings.sets.len();
    for (index, set) in settings.sets.iter().enumerate() {
        if cancel.load(Ordering::SeqCst) {
            return Ok((report, Some(Stop::Cancelled)));
        }
        let n = set.images.len();
        let mut m = MetricsReport {
            n_fake: n,
            ..Default::default()
        };
        let progress = |what: &str| Progress {
            done: index,
            total,
            message: format!("{}: {what}", set.label),
        };
        if n == 0 {
            m.warnings.push("no images".into());
        }
        if let (Some(c), true) = (&clip, n > 0) {
            sink(ExperimentEvent::Progress(progress("CLIP score")));
            match clip::clip_score(c.as_ref(), &set.images, &set.captions, 8, cancel, &mut |_, _| {})? {
                Some(out) => {
                    m.clip_score = Some(out.clip_score);
                    if out.truncated > 0 {
                        m.warnings
                            .push(format!("{} caption(s) cut at the CLIP position limit", out.truncated));
                    }
                }
                None => return Ok((report, Some(Stop::Cancelled))),
            }
            if real.is_none() {
                m.network = Some(format!("clip:{}", c.name));
                m.resize = Some("clip-processor".into());
            }
        }
        if let Some((real_file, net)) = &real {
            if n < 2 {
                m.warnings.push("FID needs at least 2 images per row (a covariance)".into());
            } else {
                sink(ExperimentEvent::Progress(progress("features")));
                let resize = real_file
                    .meta
                    .resize
                    .as_deref()
                    .and_then(|r| Resize::parse(r).ok())
                    .unwrap_or(Resize::Clean);
                let es = ExtractSettings {
                    resize,
                    ..Default::default()
                };
                let Some(x) = extract::extract(net, &set.images, &es, cancel, &mut |_, _| {})? else {
                    return Ok((report, Some(Stop::Cancelled)));
                };
                let fake = x.file;
                let n_min = fake.count().min(real_file.count());
                let s = MetricSettings {
                    kid: real_file.features.is_some().then(|| KidSettings {
                        subset_size: 1000.min(n_min),
                        ..KidSettings::default()
                    }),
                    is_splits: fake.logits.is_some().then(|| 10.min(fake.count())),
                    pr_k: (real_file.features.is_some() && n_min > 3).then_some(3),
                };
                sink(ExperimentEvent::Progress(progress("FID")));
                let clip_score = m.clip_score;
                let mut warnings = std::mem::take(&mut m.warnings);
                match metrics::compare(real_file, &fake, &s, &mut |_, _, _| {}) {
                    Ok(r) => {
                        m = r;
                        m.clip_score = clip_score;
                        warnings.append(&mut m.warnings);
                    }
                    Err(e) => warnings.push(format!("FID: {e}")),
                }
                m.warnings = warnings;
            }
        }
        let detector = (settings.detector && n > 0 && set.captions.iter().all(|c| crate::world::parse_caption(c).is_ok())).then(|| {
            let mut q = Quality::default();
            for (img, c) in set.images.iter().zip(&set.captions) {
                q.add(&crate::world::judge(c, &crate::world::detect(&img.pixels, img.width, img.height)));
            }
            q
        });
        let row = QualityRow {
            index,
            label: set.label.clone(),
            metrics: m,
            detector,
        };
        sink(ExperimentEvent::QualityRow(Box::new(row.clone())));
        report.rows.push(row);
    }
    report.complete = true;
    sink(ExperimentEvent::Progress(Progress {
        done: total,
        total,
        message: String::new(),
    }));
    Ok((report, None))
}
