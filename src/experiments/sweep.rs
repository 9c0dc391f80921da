//! Guidance sweep: the same prompt and the same seeds at every guidance scale w.
//!
//! Per w: every seed's run (a grid, rows = w, columns = seeds), the diversity across seeds
//! (mean pairwise RMSE of the final latents, and of the images in [0, 1] units), the images'
//! mean HSV saturation and RMS contrast (high guidance over-saturates), and with `captions > 0`
//! the world's detector over held-out captions (the same captions and seeds at every w).
//! Optionally timestep snapshots: for every run, x0 and x_t decoded at fractions 0, 1/4, 1/2,
//! 3/4 and 1 of the run (t from about T down to 0).

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::compare::{Quality, caption_quality, final_latents, generate, image_of, step_at_fraction};
use super::{ExperimentEvent, Progress, Stop};
use crate::analysis;
use crate::model::StableDiffusion;
use crate::pipeline::{self, RunConfig, RunError};
use crate::sampling::SamplerKind;
use crate::trace::{RgbImage, Run};
use crate::types::CaptureMode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSettings {
    pub prompt: String,
    pub negative_prompt: String,
    pub guidances: Vec<f32>,
    pub seeds: Vec<u64>,
    pub steps: usize,
    /// None: the model's own scheduler.
    pub sampler: Option<SamplerKind>,
    /// Held-out shapes-world captions per w for the detector's accuracy (0: none).
    pub captions: usize,
    pub caption_seed: u64,
    /// Decode x0 and x_t at fractions 0, 1/4, 1/2, 3/4, 1 of every run.
    pub snapshots: bool,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            guidances: vec![1.0, 3.0, 5.0, 7.5, 10.0, 15.0],
            seeds: (0..8).collect(),
            steps: 30,
            sampler: None,
            captions: 0,
            caption_seed: 0,
            snapshots: false,
            height: None,
            width: None,
        }
    }
}

/// The fractions of a run the snapshots show.
pub const SNAPSHOT_FRACTIONS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Parses `1,3,5,7.5`.
pub fn parse_guidances(text: &str) -> Result<Vec<f32>, String> {
    let v: Vec<f32> = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let w: f32 = s.trim().parse().map_err(|_| format!("'{}' is not a number", s.trim()))?;
            if w.is_finite() && w >= 0.0 {
                Ok(w)
            } else {
                Err(format!("guidance {w}: expected a finite number >= 0"))
            }
        })
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err("the guidance list is empty; e.g. 1,3,5,7.5,10".into());
    }
    Ok(v)
}

/// Parses `0..7` (inclusive) or `0,4,9` (at most 1024 seeds).
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    parse_seeds_up_to(text, 1024)
}

/// [`parse_seeds`] with another limit on a range's length.
pub fn parse_seeds_up_to(text: &str, max: u64) -> Result<Vec<u64>, String> {
    let t = text.trim();
    if let Some((a, b)) = t.split_once("..") {
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("'{}' is not a seed (a whole number)", s.trim()))
        };
        let (a, b) = (num(a)?, num(b.trim_start_matches('='))?);
        if b < a {
            return Err(format!("seeds {t}: the range is empty"));
        }
        if b - a >= max {
            return Err(format!("seeds {t}: at most {max} seeds"));
        }
        return Ok((a..=b).collect());
    }
    let v: Vec<u64> = t
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("'{}' is not a seed (a whole number)", s.trim()))
        })
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err("the seed list is empty; e.g. 0..7 or 0,4,9".into());
    }
    Ok(v)
}

impl SweepSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.guidances.is_empty() {
            return Err("no guidance values".into());
        }
        if let Some(w) = self.guidances.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(format!("guidance {w}: expected a finite number >= 0"));
        }
        for (i, w) in self.guidances.iter().enumerate() {
            if self.guidances[..i].contains(w) {
                return Err(format!("guidance {w} is listed twice"));
            }
        }
        if self.seeds.is_empty() {
            return Err("no seeds".into());
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if self.seeds[..i].contains(s) {
                return Err(format!("seed {s} is listed twice"));
            }
        }
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        Ok(())
    }

    fn run_config(&self, prompt: &str, guidance: f32, seed: u64, attention: CaptureMode) -> RunConfig {
        RunConfig {
            prompt: prompt.to_owned(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance,
            sampler: self.sampler,
            seed,
            height: self.height,
            width: self.width,
            attention,
            ..RunConfig::default()
        }
    }
}

/// The numbers of one guidance value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuidanceReport {
    pub guidance: f32,
    pub seeds: usize,
    /// Mean pairwise RMSE of the seeds' final latents (None with one seed).
    pub latent_diversity: Option<f64>,
    /// Mean pairwise RMSE of the seeds' images, values in [0, 1] (None with one seed).
    pub image_diversity: Option<f64>,
    /// Mean over seeds of the mean HSV saturation.
    pub saturation: f64,
    /// Mean over seeds of the RMS luma contrast.
    pub contrast: f64,
    /// Mean seconds per run.
    pub secs: f64,
    pub quality: Option<Quality>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub model: String,
    pub settings: SweepSettings,
    pub sampler: String,
    pub complete: bool,
    pub rows: Vec<GuidanceReport>,
}

/// One decoded snapshot of a run: the fraction, x0 and x_t.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub fraction: f64,
    pub step: usize,
    pub timestep: f64,
    pub x0: RgbImage,
    pub xt: RgbImage,
}

/// What the sweep streams per finished run.
pub struct SweepOutput {
    pub guidance_index: usize,
    pub seed_index: usize,
    pub run: Run,
    pub snapshots: Vec<Snapshot>,
}

fn snapshots(sd: &StableDiffusion, run: &Run) -> Result<Vec<Snapshot>, RunError> {
    let n = run.steps.len();
    SNAPSHOT_FRACTIONS
        .iter()
        .map(|&f| {
            let step = step_at_fraction(f, n).unwrap_or(n - 1);
            let s = &run.steps[step];
            Ok(Snapshot {
                fraction: f,
                step,
                timestep: s.timestep,
                x0: pipeline::decode(sd, s.x0.clone(), run.meta.latent_shape)?,
                xt: pipeline::decode(sd, s.latents.clone(), run.meta.latent_shape)?,
            })
        })
        .collect()
}

fn mean_pairwise(items: &[&[f32]]) -> Option<f64> {
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..items.len() {
        for j in i + 1..items.len() {
            sum += analysis::rms_diff(items[i], items[j]) as f64;
            pairs += 1;
        }
    }
    (pairs > 0).then(|| sum / pairs as f64)
}

/// The sweep: every w × seed, then (with captions) the detector's accuracy per w. Streams a
/// [`SweepOutput`] per run; returns the report of the rows done.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &SweepSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(SweepReport, Option<Stop>), RunError> {
    settings.validate().map_err(RunError::BadInput)?;
    let per_row = settings.seeds.len() + settings.captions;
    let total = settings.guidances.len() * per_row;
    let mut report = SweepReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        sampler: String::new(),
        complete: false,
        rows: Vec::new(),
    };
    let stop = |e: RunError, what: String| match e {
        RunError::Cancelled { .. } => Stop::Cancelled,
        e => Stop::Failed(format!("{what}: {e}")),
    };
    for (gi, &w) in settings.guidances.iter().enumerate() {
        let mut latents: Vec<Vec<f32>> = Vec::new();
        let mut images: Vec<Vec<f32>> = Vec::new();
        let (mut sat, mut contrast, mut secs) = (0.0, 0.0, 0.0);
        for (si, &seed) in settings.seeds.iter().enumerate() {
            sink(ExperimentEvent::Progress(Progress {
                done: gi * per_row + si,
                total,
                message: format!("w = {w}, seed {seed}"),
            }));
            let cfg = settings.run_config(&settings.prompt, w, seed, CaptureMode::Aggregate);
            let result = generate(sd, model_spec, &cfg, cancel)
                .and_then(|run| Ok((if settings.snapshots { snapshots(sd, &run)? } else { Vec::new() }, run)));
            let (snaps, run) = match result {
                Ok(x) => x,
                Err(e) => return Ok((report, Some(stop(e, format!("w = {w}, seed {seed}"))))),
            };
            if report.sampler.is_empty() {
                report.sampler = run.meta.sampler.clone();
            }
            let img = image_of(&run);
            let (s, c) = analysis::image_stats(&img.pixels);
            sat += s;
            contrast += c;
            secs += run.meta.total_secs;
            latents.push(final_latents(&run).to_vec());
            images.push(img.pixels.iter().map(|&v| v as f32 / 255.0).collect());
            sink(ExperimentEvent::SweepRun(Box::new(SweepOutput {
                guidance_index: gi,
                seed_index: si,
                run,
                snapshots: snaps,
            })));
        }
        let quality = if settings.captions > 0 {
            sink(ExperimentEvent::Progress(Progress {
                done: gi * per_row + settings.seeds.len(),
                total,
                message: format!("w = {w}: {} held-out captions", settings.captions),
            }));
            let config =
                |caption: &str, i: usize| settings.run_config(caption, w, settings.seeds[0].wrapping_add(i as u64), CaptureMode::None);
            match caption_quality(sd, model_spec, settings.captions, settings.caption_seed, config, cancel) {
                Ok(q) => Some(q),
                Err(e) => return Ok((report, Some(stop(e, format!("w = {w}, captions"))))),
            }
        } else {
            None
        };
        let n = settings.seeds.len() as f64;
        let lat: Vec<&[f32]> = latents.iter().map(Vec::as_slice).collect();
        let img: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let row = GuidanceReport {
            guidance: w,
            seeds: settings.seeds.len(),
            latent_diversity: mean_pairwise(&lat),
            image_diversity: mean_pairwise(&img),
            saturation: sat / n,
            contrast: contrast / n,
            secs: secs / n,
            quality,
        };
        sink(ExperimentEvent::SweepRow(Box::new(row.clone())));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse_guidances("1, 3,7.5").unwrap(), vec![1.0, 3.0, 7.5]);
        assert!(parse_guidances("1,x").unwrap_err().contains("'x' is not a number"));
        assert!(parse_guidances("").unwrap_err().contains("empty"));
        assert!(parse_guidances("-1").unwrap_err().contains(">= 0"));
        assert_eq!(parse_seeds("0..3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_seeds("5,2").unwrap(), vec![5, 2]);
        assert!(parse_seeds("3..1").unwrap_err().contains("empty"));
        assert!(parse_seeds("0..a").unwrap_err().contains("'a'"));
        let twice = SweepSettings {
            guidances: vec![1.0, 1.0],
            ..Default::default()
        };
        assert!(twice.validate().unwrap_err().contains("listed twice"));
    }
}
