//! Out-of-distribution scores in the VAE's latent space.
//!
//! A reference is fitted on a set of images encoded by the VAE (posterior mean times the
//! scaling factor): per-dimension mean and standard deviation (the diagonal, Mahalanobis-like
//! score: the mean squared z-score, about 1 in distribution) and, on latents average-pooled to
//! C x p x p, a full covariance (squared Mahalanobis distance over the dimension count). Every
//! `holdout_every`-th image is held out of the fit and calibrates the thresholds: the
//! (1 - fpr) quantile of the held-out scores, so about `fpr` of in-distribution images are
//! flagged. The reference remembers its VAE (config and weight sizes); scoring with another
//! model's VAE is refused.
//!
//! `OodEval` measures the scores on the shapes world: AUROC of held-out renders against each
//! set of [`crate::world::ood`], and the model's own generations scored as a set.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::compare::{generate, image_of};
use super::interpolate::load_image;
use super::{ExperimentEvent, Progress, Stop};
use crate::analysis::probe::{self, DiagStats, FullStats, PatchBank};
use crate::model::StableDiffusion;
use crate::model::vae::VaeEncoder;
use crate::pipeline::{self, RunConfig, RunError};
use crate::trace::RgbImage;
use crate::types::CaptureMode;
use crate::world;

/// The format version of a reference file.
pub const REFERENCE_FORMAT: u32 = 1;

/// Which score decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// Per-dimension z-scores of the full latent.
    Diag,
    /// Full-covariance Mahalanobis on pooled latents.
    Pooled,
    /// Distance of the farthest latent patch to the reference's patch bank.
    Patch,
}

impl std::str::FromStr for ScoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "diag" => Ok(ScoreKind::Diag),
            "pooled" => Ok(ScoreKind::Pooled),
            "patch" => Ok(ScoreKind::Patch),
            _ => Err(format!("'{s}': expected diag, pooled or patch")),
        }
    }
}

impl ScoreKind {
    pub const ALL: [ScoreKind; 3] = [ScoreKind::Diag, ScoreKind::Pooled, ScoreKind::Patch];

    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Diag => "diag",
            ScoreKind::Pooled => "pooled",
            ScoreKind::Patch => "patch",
        }
    }
}

/// One number per score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PerScore {
    pub diag: f64,
    pub pooled: f64,
    pub patch: f64,
}

impl PerScore {
    pub fn get(&self, k: ScoreKind) -> f64 {
        match k {
            ScoreKind::Diag => self.diag,
            ScoreKind::Pooled => self.pooled,
            ScoreKind::Patch => self.patch,
        }
    }

    pub fn from_fn(f: impl Fn(ScoreKind) -> f64) -> Self {
        Self {
            diag: f(ScoreKind::Diag),
            pooled: f(ScoreKind::Pooled),
            patch: f(ScoreKind::Patch),
        }
    }
}

/// A fitted reference (written as JSON by `ood fit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodReference {
    pub format: u32,
    /// The model it was fitted with (for messages).
    pub model: String,
    /// The VAE's identity: its config and weight sizes.
    pub vae_fingerprint: String,
    pub width: usize,
    pub height: usize,
    pub latent_shape: [usize; 3],
    /// Side of the pooled latents of the full-covariance score.
    pub pool: usize,
    pub diag: DiagStats,
    pub pooled: FullStats,
    pub patches: PatchBank,
    /// The false-positive rate the thresholds are calibrated to.
    pub fpr: f64,
    pub threshold: PerScore,
    /// The held-out reference images' scores (the app's histogram).
    pub held_out_diag: Vec<f64>,
    pub held_out_pooled: Vec<f64>,
    pub held_out_patch: Vec<f64>,
}

impl OodReference {
    /// The image's two scores from its latents.
    pub fn score(&self, latent: &[f32]) -> PerScore {
        PerScore {
            diag: self.diag.score(latent),
            pooled: self.pooled.score(&probe::pool_latent(latent, self.latent_shape, self.pool)),
            patch: self.patches.score(latent, self.latent_shape),
        }
    }

    /// Refuses a reference made with another VAE or at another size.
    pub fn check(&self, sd: &StableDiffusion) -> Result<(), String> {
        if self.format != REFERENCE_FORMAT {
            return Err(format!(
                "the reference file has format {}, this version reads {REFERENCE_FORMAT}",
                self.format
            ));
        }
        let fp = vae_fingerprint(sd);
        if fp != self.vae_fingerprint {
            return Err(format!(
                "the reference was fitted with the VAE of {} (fingerprint {}); this model's VAE ({}, fingerprint {fp}) is another one: fit a reference with this model",
                self.model,
                self.vae_fingerprint,
                sd.root.display()
            ));
        }
        Ok(())
    }

    /// Writes the reference as JSON (what `ood fit` writes).
    pub fn write(&self, path: &std::path::Path) -> Result<(), String> {
        let text = serde_json::to_string(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing the reference {}: {e}", path.display()))
    }

    /// Reads a reference file.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not an OOD reference (written by `ood fit`): {e}", path.display()))
    }

    pub fn held_out(&self, k: ScoreKind) -> &[f64] {
        match k {
            ScoreKind::Diag => &self.held_out_diag,
            ScoreKind::Pooled => &self.held_out_pooled,
            ScoreKind::Patch => &self.held_out_patch,
        }
    }
}

/// The VAE's identity: a hash of its config and the byte sizes of its weight files.
pub fn vae_fingerprint(sd: &StableDiffusion) -> String {
    let config = serde_json::to_string(&sd.vae.config).unwrap_or_default();
    let sizes: u64 = crate::model::loader::weight_files(&sd.root.join("vae"), "diffusion_pytorch_model", sd.dtype)
        .map(|files| files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    format!("{:016x}-{sizes}", world::rng::fnv1a(config.as_bytes()))
}

/// The fewest images a reference is fitted on.
pub const MIN_REFERENCE_IMAGES: usize = 20;

/// Fits a reference on `latents` (every `holdout_every`-th held out to calibrate).
pub fn fit_reference(
    sd: &StableDiffusion,
    model_spec: &str,
    latents: &[Vec<f32>],
    shape: [usize; 3],
    (width, height): (usize, usize),
    settings: &FitOptions,
) -> Result<OodReference, String> {
    settings.validate()?;
    if latents.len() < MIN_REFERENCE_IMAGES {
        return Err(format!(
            "{} readable images; a reference needs at least {MIN_REFERENCE_IMAGES}",
            latents.len()
        ));
    }
    let k = settings.holdout_every;
    let (fit, held): (Vec<(usize, &Vec<f32>)>, Vec<(usize, &Vec<f32>)>) = latents.iter().enumerate().partition(|(i, _)| i % k != k - 1);
    let fit: Vec<Vec<f32>> = fit.into_iter().map(|(_, v)| v.clone()).collect();
    let diag = DiagStats::fit(&fit).ok_or("the latents differ in size")?;
    let pooled_set: Vec<Vec<f32>> = fit.iter().map(|v| probe::pool_latent(v, shape, settings.pool)).collect();
    let pooled = FullStats::fit(&pooled_set).ok_or("the pooled covariance is not positive definite")?;
    let patches = PatchBank::fit(&fit, shape, settings.patch, settings.bank)
        .ok_or_else(|| format!("no {0}x{0} patches in latents of shape {shape:?}", settings.patch))?;
    let mut reference = OodReference {
        format: REFERENCE_FORMAT,
        model: model_spec.to_owned(),
        vae_fingerprint: vae_fingerprint(sd),
        width,
        height,
        latent_shape: shape,
        pool: settings.pool,
        diag,
        pooled,
        patches,
        fpr: settings.fpr,
        threshold: PerScore::from_fn(|_| 0.0),
        held_out_diag: Vec::new(),
        held_out_pooled: Vec::new(),
        held_out_patch: Vec::new(),
    };
    let scores: Vec<PerScore> = held.iter().map(|(_, v)| reference.score(v)).collect();
    reference.held_out_diag = scores.iter().map(|s| s.diag).collect();
    reference.held_out_pooled = scores.iter().map(|s| s.pooled).collect();
    reference.held_out_patch = scores.iter().map(|s| s.patch).collect();
    let q = 1.0 - settings.fpr;
    if reference.held_out_diag.is_empty() {
        return Err("no held-out images".into());
    }
    reference.threshold = PerScore::from_fn(|k| probe::quantile(reference.held_out(k), q).unwrap_or(f64::NAN));
    Ok(reference)
}

/// How a reference is fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    pub fpr: f64,
    pub holdout_every: usize,
    pub pool: usize,
    /// Side of the patch score's latent patches.
    pub patch: usize,
    /// At most this many patches in the bank.
    pub bank: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            fpr: 0.05,
            holdout_every: 5,
            pool: 4,
            patch: 3,
            bank: 16384,
        }
    }
}

impl FitOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.fpr > 0.0 && self.fpr < 1.0) {
            return Err(format!("fpr {}: expected a fraction between 0 and 1", self.fpr));
        }
        if self.holdout_every < 2 {
            return Err(format!("holdout_every {}: at least 2", self.holdout_every));
        }
        if self.pool == 0 {
            return Err("pool must be at least 1".into());
        }
        if self.patch == 0 || self.bank == 0 {
            return Err("patch side and bank size must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodFitSettings {
    pub images: Vec<PathBuf>,
    pub options: FitOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodFitReport {
    pub reference: Option<OodReference>,
    /// Images that could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Images of another size (centre-cropped and resized to the model's).
    pub resized: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodScoreSettings {
    pub reference: Box<OodReference>,
    pub images: Vec<PathBuf>,
}

/// One image's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    pub name: String,
    pub score: PerScore,
    /// The size the file had when it was resized to the reference's.
    pub resized_from: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodScoreReport {
    pub threshold: PerScore,
    pub scores: Vec<ImageScore>,
    pub skipped: Vec<(String, String)>,
}

/// Whether a path names a png or jpg file (by its extension).
pub fn is_image_file(p: &std::path::Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The image files of `inputs`: folders listed (png, jpg; sorted), files taken as they are.
pub fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("reading {}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| is_image_file(f))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(format!("{} holds no png or jpg images", p.display()));
            }
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    Ok(files)
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Encodes image files at the model's size: (name, latents, resized_from) or the reason a
/// file was skipped. Stops early on cancel (the flag tells).
#[allow(clippy::type_complexity)]
fn encode_files(
    encoder: &VaeEncoder,
    files: &[PathBuf],
    (width, height): (usize, usize),
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(Vec<(String, Vec<f32>, Option<(usize, usize)>)>, Vec<(String, String)>), RunError> {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        if i % 8 == 0 {
            sink(ExperimentEvent::Progress(Progress {
                done: i,
                total: files.len(),
                message: format!("encoding {}", file_name(f)),
            }));
        }
        match load_image(f, width, height) {
            Ok((img, resized)) => ok.push((file_name(f), pipeline::encode_image(encoder, &img)?.0, resized)),
            Err(e) => skipped.push((file_name(f), e)),
        }
    }
    Ok((ok, skipped))
}

fn model_geometry(sd: &StableDiffusion) -> Result<((usize, usize), [usize; 3]), RunError> {
    let geo = pipeline::geometry(sd, &RunConfig::default())?;
    Ok(((geo.width, geo.height), geo.latent))
}

fn encoder(sd: &StableDiffusion) -> Result<VaeEncoder, RunError> {
    sd.vae_encoder().map_err(|e| RunError::BadInput(format!("the VAE encoder: {e}")))
}

/// Fits a reference on image files.
pub fn fit(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &OodFitSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(OodFitReport, Option<Stop>), RunError> {
    settings.options.validate().map_err(RunError::BadInput)?;
    let (size, shape) = model_geometry(sd)?;
    let (encoded, skipped) = encode_files(&encoder(sd)?, &settings.images, size, cancel, sink)?;
    let mut report = OodFitReport {
        reference: None,
        resized: encoded.iter().filter(|e| e.2.is_some()).count(),
        skipped,
    };
    if cancel.load(Ordering::Relaxed) {
        return Ok((report, Some(Stop::Cancelled)));
    }
    let latents: Vec<Vec<f32>> = encoded.into_iter().map(|e| e.1).collect();
    match fit_reference(sd, model_spec, &latents, shape, size, &settings.options) {
        Ok(r) => {
            report.reference = Some(r);
            Ok((report, None))
        }
        Err(e) => Ok((report, Some(Stop::Failed(e)))),
    }
}

/// Scores image files against a reference.
pub fn score(
    sd: &StableDiffusion,
    settings: &OodScoreSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(OodScoreReport, Option<Stop>), RunError> {
    let r = &settings.reference;
    r.check(sd).map_err(RunError::BadInput)?;
    let (_, shape) = model_geometry(sd)?;
    if shape != r.latent_shape {
        return Err(RunError::BadInput(format!(
            "the reference's latents are {:?}, this model's {shape:?}",
            r.latent_shape
        )));
    }
    let (encoded, skipped) = encode_files(&encoder(sd)?, &settings.images, (r.width, r.height), cancel, sink)?;
    let report = OodScoreReport {
        threshold: r.threshold,
        scores: encoded
            .into_iter()
            .map(|(name, lat, resized_from)| ImageScore {
                name,
                score: r.score(&lat),
                resized_from,
            })
            .collect(),
        skipped,
    };
    let stopped = cancel.load(Ordering::Relaxed).then_some(Stop::Cancelled);
    Ok((report, stopped))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodEvalSettings {
    /// Training-split renders the reference is fitted on (a fifth of them held out).
    pub reference: usize,
    /// Images per evaluated set (held-out renders and each OOD set).
    pub per_set: usize,
    /// The model's own generations scored as a set (0: none).
    pub generations: usize,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub options: FitOptions,
}

impl Default for OodEvalSettings {
    fn default() -> Self {
        Self {
            reference: 1000,
            per_set: 200,
            generations: 100,
            steps: 20,
            guidance: 5.0,
            seed: 0,
            options: FitOptions::default(),
        }
    }
}

/// One evaluated set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRow {
    pub set: String,
    pub images: usize,
    pub mean: PerScore,
    /// AUROC against the held-out renders (None for the held-out renders themselves).
    pub auroc: Option<PerScore>,
    /// Fraction above the calibrated threshold.
    pub flagged: PerScore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodEvalReport {
    pub model: String,
    pub settings: OodEvalSettings,
    pub threshold: Option<PerScore>,
    pub rows: Vec<SetRow>,
    pub complete: bool,
}

fn set_row(name: &str, scores: &[PerScore], reference: &OodReference, inside: Option<&[PerScore]>) -> SetRow {
    let n = scores.len().max(1) as f64;
    let col = |s: &[PerScore], k: ScoreKind| -> Vec<f64> { s.iter().map(|x| x.get(k)).collect() };
    SetRow {
        set: name.to_owned(),
        images: scores.len(),
        mean: PerScore::from_fn(|k| col(scores, k).iter().sum::<f64>() / n),
        auroc: inside.map(|ins| PerScore::from_fn(|k| probe::auroc(&col(ins, k), &col(scores, k)).unwrap_or(f64::NAN))),
        flagged: PerScore::from_fn(|k| col(scores, k).iter().filter(|&&v| v > reference.threshold.get(k)).count() as f64 / n),
    }
}

/// The shapes-world measurement of the scores.
pub fn eval(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &OodEvalSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(OodEvalReport, Option<Stop>), RunError> {
    settings.options.validate().map_err(RunError::BadInput)?;
    if settings.per_set == 0 {
        return Err(RunError::BadInput("per_set must be at least 1".into()));
    }
    let (size, shape) = model_geometry(sd)?;
    if size.0 != size.1 {
        return Err(RunError::BadInput(
            "the shapes world renders square images; this model's default size is not square".into(),
        ));
    }
    let side = size.0;
    let enc = encoder(sd)?;
    let mut report = OodEvalReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        threshold: None,
        rows: Vec::new(),
        complete: false,
    };
    let total = settings.reference + settings.per_set * (1 + world::ood::OodSet::ALL.len()) + settings.generations;
    let mut done = 0usize;
    let mut encode = |img: Vec<u8>, what: &str, done: &mut usize| -> Result<Vec<f32>, RunError> {
        if *done % 16 == 0 {
            sink(ExperimentEvent::Progress(Progress {
                done: *done,
                total,
                message: what.to_owned(),
            }));
        }
        *done += 1;
        let image = RgbImage {
            width: side,
            height: side,
            pixels: img,
        };
        Ok(pipeline::encode_image(&enc, &image)?.0)
    };
    let config = world::WorldConfig::with_size(side);
    let mut latents = Vec::with_capacity(settings.reference);
    for i in 0..settings.reference {
        if cancel.load(Ordering::Relaxed) {
            return Ok((report, Some(Stop::Cancelled)));
        }
        latents.push(encode(
            world::sample(&config, settings.seed, i as u64).rgb,
            "reference renders",
            &mut done,
        )?);
    }
    let reference = match fit_reference(sd, model_spec, &latents, shape, size, &settings.options) {
        Ok(r) => r,
        Err(e) => return Ok((report, Some(Stop::Failed(e)))),
    };
    report.threshold = Some(reference.threshold);
    // In distribution: renders of another seed, not seen by the fit.
    let mut inside = Vec::new();
    for i in 0..settings.per_set {
        if cancel.load(Ordering::Relaxed) {
            return Ok((report, Some(Stop::Cancelled)));
        }
        let lat = encode(
            world::sample(&config, settings.seed + 1, i as u64).rgb,
            "held-out renders",
            &mut done,
        )?;
        inside.push(reference.score(&lat));
    }
    report.rows.push(set_row("held-out renders", &inside, &reference, None));
    for set in world::ood::OodSet::ALL {
        let mut scores = Vec::new();
        for i in 0..settings.per_set {
            if cancel.load(Ordering::Relaxed) {
                return Ok((report, Some(Stop::Cancelled)));
            }
            let img = world::ood::ood_image(set, side, settings.seed + 2, i as u64);
            scores.push(reference.score(&encode(img, set.name(), &mut done)?));
        }
        report.rows.push(set_row(set.name(), &scores, &reference, Some(&inside)));
    }
    if settings.generations > 0 {
        let captions = world::eval_captions(settings.generations, settings.seed);
        let mut scores = Vec::new();
        for (i, caption) in captions.iter().enumerate() {
            sink(ExperimentEvent::Progress(Progress {
                done: done + i,
                total,
                message: format!("generating \"{caption}\""),
            }));
            let cfg = RunConfig {
                prompt: caption.clone(),
                steps: settings.steps,
                guidance: settings.guidance,
                seed: settings.seed + i as u64,
                attention: CaptureMode::None,
                ..RunConfig::default()
            };
            let run = match generate(sd, model_spec, &cfg, cancel) {
                Ok(r) => r,
                Err(RunError::Cancelled { .. }) => return Ok((report, Some(Stop::Cancelled))),
                Err(e) => return Ok((report, Some(Stop::Failed(format!("generating \"{caption}\": {e}"))))),
            };
            let lat = pipeline::encode_image(&enc, image_of(&run))?.0;
            scores.push(reference.score(&lat));
        }
        report.rows.push(set_row(
            &format!("model generations (w = {}, {} steps)", settings.guidance, settings.steps),
            &scores,
            &reference,
            Some(&inside),
        ));
    }
    report.complete = true;
    Ok((report, None))
}

/// The evaluation as a table.
pub fn render_eval(r: &OodEvalReport) -> String {
    let mut s = format!("{:<38} {:>6}", "set", "images");
    for k in ScoreKind::ALL {
        s += &format!(" {:>11} {:>8}", format!("AUROC {}", k.name()), "flagged");
    }
    s.push('\n');
    for row in &r.rows {
        s += &format!("{:<38} {:>6}", row.set, row.images);
        for k in ScoreKind::ALL {
            let a = row.auroc.map_or("-".to_string(), |x| format!("{:.3}", x.get(k)));
            s += &format!(" {:>11} {:>7.1}%", a, 100.0 * row.flagged.get(k));
        }
        s.push('\n');
    }
    if let Some(t) = r.threshold {
        s += &format!(
            "thresholds at {:.0}% false positives on held-out reference renders: diag {:.3}, pooled {:.3}, patch {:.3}\n",
            100.0 * r.settings.options.fpr,
            t.diag,
            t.pooled,
            t.patch
        );
    }
    s
}
