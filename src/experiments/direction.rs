//! Semantic directions: a direction in text-embedding space from prompt pairs (the mean of the
//! targets' encoder outputs minus the mean of the sources', as Pix2Pix-Zero builds its edit
//! directions), added to a prompt's conditioning with scale alpha. A sweep over alpha (x seeds
//! x prompts) is a grid of ordinary runs with `RunConfig::embeddings` set; alpha = 0 is the
//! plain run.
//!
//! With `detect` on (the bundled shapes world), every image goes through the world's detector:
//! per alpha, the fraction of images whose main object has each colour, whether its shape is
//! the shape it has at the alpha nearest 0, and how far its centre moved.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::compare::{generate, image_of};
use super::{ExperimentEvent, Progress, Stop};
use crate::analysis::probe;
use crate::model::StableDiffusion;
use crate::pipeline::{self, PromptEmbeddings, RunConfig, RunError};
use crate::sampling::SamplerKind;
use crate::trace::{RgbImage, Run};
use crate::types::CaptureMode;
use crate::world;

/// One pair: a source prompt and the target it should move towards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptPair {
    pub source: String,
    pub target: String,
}

/// Parses a pairs file: one pair a line, `SOURCE -> TARGET` or `SOURCE<TAB>TARGET`; blank lines
/// and lines starting with `#` are skipped.
pub fn parse_pairs(text: &str) -> Result<Vec<PromptPair>, String> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (s, t) = l
            .split_once("->")
            .or_else(|| l.split_once('\t'))
            .ok_or_else(|| format!("line {}: expected 'SOURCE -> TARGET' (or a tab between them), got '{l}'", i + 1))?;
        let (s, t) = (s.trim(), t.trim());
        if s.is_empty() || t.is_empty() {
            return Err(format!("line {}: an empty prompt in '{l}'", i + 1));
        }
        pairs.push(PromptPair {
            source: s.to_owned(),
            target: t.to_owned(),
        });
    }
    if pairs.is_empty() {
        return Err("no pairs (one a line: SOURCE -> TARGET)".into());
    }
    Ok(pairs)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionSettings {
    /// The prompts the direction is applied to (rows of the grid).
    pub prompts: Vec<String>,
    pub pairs: Vec<PromptPair>,
    pub alphas: Vec<f64>,
    pub seeds: Vec<u64>,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f32,
    pub sampler: Option<SamplerKind>,
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub attention: CaptureMode,
    /// Read every image with the shapes world's detector.
    pub detect: bool,
}

impl Default for DirectionSettings {
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            pairs: Vec::new(),
            alphas: probe::parse_range("-2..2:9").expect("a valid range"),
            seeds: vec![0],
            negative_prompt: String::new(),
            steps: 30,
            guidance: 5.0,
            sampler: None,
            height: None,
            width: None,
            attention: CaptureMode::Aggregate,
            detect: false,
        }
    }
}

impl DirectionSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.prompts.is_empty() || self.prompts.iter().any(|p| p.trim().is_empty()) {
            return Err("no prompt to apply the direction to".into());
        }
        if self.pairs.is_empty() {
            return Err("no prompt pairs: give --from and --to, or a pairs file".into());
        }
        if self.pairs.iter().all(|p| p.source == p.target) {
            return Err("every pair's source equals its target: the direction would be zero".into());
        }
        if self.alphas.is_empty() || self.alphas.iter().any(|a| !a.is_finite()) {
            return Err("alpha values must be finite numbers".into());
        }
        if self.seeds.is_empty() {
            return Err("no seeds".into());
        }
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        Ok(())
    }
}

/// One image of the grid.
pub struct DirectionImage {
    pub prompt_index: usize,
    pub seed_index: usize,
    pub alpha_index: usize,
    pub alpha: f64,
    pub image: RgbImage,
    pub run: Run,
}

/// What the detector read on one image: the largest object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub colour: String,
    pub shape: String,
    pub cx: f32,
    pub cy: f32,
}

/// Per alpha, over prompts x seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlphaReport {
    pub alpha: f64,
    pub images: usize,
    /// Fraction of images whose main object the detector reads as each colour.
    pub colours: BTreeMap<String, f64>,
    /// Fraction of images with no object found.
    pub nothing: f64,
    /// Fraction whose main object has the shape it has at the alpha nearest 0.
    pub same_shape: Option<f64>,
    /// Mean distance of the main object's centre from where it is at the alpha nearest 0
    /// (fractions of the image side).
    pub centre_shift: Option<f64>,
    /// Mean RMS difference from the image at the alpha nearest 0 (values in [0, 1]).
    pub image_change: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionReport {
    pub model: String,
    pub settings: DirectionSettings,
    /// |direction| over |prompt embedding| (how large alpha = 1 is).
    pub relative_norm: f64,
    pub complete: bool,
    pub rows: Vec<AlphaReport>,
    /// [prompt][seed][alpha] readings (with `detect`).
    pub readings: Vec<Vec<Vec<Option<Reading>>>>,
}

/// The index of the alpha nearest 0 (the reference of "stays put").
pub fn reference_alpha(alphas: &[f64]) -> usize {
    alphas
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .map_or(0, |(i, _)| i)
}

fn read(image: &RgbImage) -> Option<Reading> {
    let d = world::detect(&image.pixels, image.width, image.height);
    // Sorted by area, largest first.
    let main = d.first()?;
    Some(Reading {
        colour: main.colour.name().to_owned(),
        shape: main.shape.name().to_owned(),
        cx: main.cx,
        cy: main.cy,
    })
}

/// The direction sweep. Streams a [`DirectionImage`] per image, prompt by prompt, seed by
/// seed, alpha by alpha.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &DirectionSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(DirectionReport, Option<Stop>), RunError> {
    settings.validate().map_err(RunError::BadInput)?;
    let encode = |p: &str| -> Result<Vec<f32>, RunError> { Ok(pipeline::encode_prompt(sd, p, "", false, None)?.embeddings()?.positive) };
    let sources = settings.pairs.iter().map(|p| encode(&p.source)).collect::<Result<Vec<_>, _>>()?;
    let targets = settings.pairs.iter().map(|p| encode(&p.target)).collect::<Result<Vec<_>, _>>()?;
    let dir = probe::direction(&sources, &targets).ok_or_else(|| RunError::BadInput("the pairs' embeddings differ in shape".into()))?;
    let guided = settings.guidance > 1.0;
    let (na, nb, ns) = (settings.alphas.len(), settings.seeds.len(), settings.prompts.len());
    let total = na * nb * ns;
    let mut report = DirectionReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        relative_norm: 0.0,
        complete: false,
        rows: Vec::new(),
        readings: vec![vec![vec![None; na]; nb]; ns],
    };
    let mut images: Vec<Vec<Vec<Option<Vec<f32>>>>> = vec![vec![vec![None; na]; nb]; ns];
    let mut stopped = None;
    'all: for (pi, prompt) in settings.prompts.iter().enumerate() {
        let base = pipeline::encode_prompt(sd, prompt, &settings.negative_prompt, guided, None)?.embeddings()?;
        if pi == 0 {
            report.relative_norm = probe::norm(&dir) / probe::norm(&base.positive).max(f64::MIN_POSITIVE);
        }
        for (si, &seed) in settings.seeds.iter().enumerate() {
            for (ai, &alpha) in settings.alphas.iter().enumerate() {
                let done = (pi * nb + si) * na + ai;
                sink(ExperimentEvent::Progress(Progress {
                    done,
                    total,
                    message: format!("\"{prompt}\", seed {seed}, alpha {alpha}"),
                }));
                let cfg = RunConfig {
                    prompt: prompt.clone(),
                    negative_prompt: settings.negative_prompt.clone(),
                    steps: settings.steps,
                    guidance: settings.guidance,
                    sampler: settings.sampler,
                    seed,
                    height: settings.height,
                    width: settings.width,
                    attention: settings.attention,
                    embeddings: Some(PromptEmbeddings {
                        positive: probe::add_scaled(&base.positive, &dir, alpha),
                        ..base.clone()
                    }),
                    ..RunConfig::default()
                };
                let run = match generate(sd, model_spec, &cfg, cancel) {
                    Ok(r) => r,
                    Err(RunError::Cancelled { .. }) => {
                        stopped = Some(Stop::Cancelled);
                        break 'all;
                    }
                    Err(e) => {
                        stopped = Some(Stop::Failed(format!("\"{prompt}\", seed {seed}, alpha {alpha}: {e}")));
                        break 'all;
                    }
                };
                let image = image_of(&run).clone();
                if settings.detect {
                    report.readings[pi][si][ai] = read(&image);
                }
                images[pi][si][ai] = Some(probe::unit_pixels(&image.pixels));
                sink(ExperimentEvent::DirectionImage(Box::new(DirectionImage {
                    prompt_index: pi,
                    seed_index: si,
                    alpha_index: ai,
                    alpha,
                    image,
                    run,
                })));
            }
        }
    }
    report.rows = alpha_rows(settings, &report.readings, &images);
    report.complete = stopped.is_none();
    sink(ExperimentEvent::Progress(Progress {
        done: total,
        total,
        message: String::new(),
    }));
    Ok((report, stopped))
}

type Grid<T> = Vec<Vec<Vec<Option<T>>>>;

/// The per-alpha numbers over the images there are.
fn alpha_rows(settings: &DirectionSettings, readings: &Grid<Reading>, images: &Grid<Vec<f32>>) -> Vec<AlphaReport> {
    let r0 = reference_alpha(&settings.alphas);
    let mut rows = Vec::new();
    for (ai, &alpha) in settings.alphas.iter().enumerate() {
        let (mut n, mut nothing, mut change) = (0usize, 0usize, 0.0f64);
        let mut colours: BTreeMap<String, f64> = BTreeMap::new();
        let (mut same, mut compared, mut shift, mut shifted) = (0usize, 0usize, 0.0f64, 0usize);
        for pi in 0..images.len() {
            for si in 0..images[pi].len() {
                let Some(img) = &images[pi][si][ai] else { continue };
                n += 1;
                if let Some(reference) = &images[pi][si][r0] {
                    change += crate::analysis::rms_diff(img, reference) as f64;
                }
                if !settings.detect {
                    continue;
                }
                match &readings[pi][si][ai] {
                    None => nothing += 1,
                    Some(r) => {
                        *colours.entry(r.colour.clone()).or_default() += 1.0;
                        if let Some(r0) = &readings[pi][si][r0] {
                            compared += 1;
                            same += usize::from(r.shape == r0.shape);
                            shift += (((r.cx - r0.cx).powi(2) + (r.cy - r0.cy).powi(2)) as f64).sqrt();
                            shifted += 1;
                        }
                    }
                }
            }
        }
        if n == 0 {
            continue;
        }
        colours.values_mut().for_each(|v| *v /= n as f64);
        rows.push(AlphaReport {
            alpha,
            images: n,
            colours,
            nothing: nothing as f64 / n as f64,
            same_shape: (settings.detect && compared > 0).then(|| same as f64 / compared as f64),
            centre_shift: (settings.detect && shifted > 0).then(|| shift / shifted as f64),
            image_change: change / n as f64,
        });
    }
    rows
}

/// The report as a table (the CLI prints it).
pub fn render_report(r: &DirectionReport) -> String {
    let mut colours: Vec<String> = r.rows.iter().flat_map(|row| row.colours.keys().cloned()).collect();
    colours.sort();
    colours.dedup();
    let mut s = format!("direction norm = {:.3} x the prompt embedding's\n", r.relative_norm);
    s += &format!("{:>7} {:>6} {:>8}", "alpha", "images", "change");
    if r.settings.detect {
        s += &format!(" {:>8} {:>7}", "shape=", "shift");
        for c in &colours {
            s += &format!(" {:>7}", c);
        }
        s += &format!(" {:>7}", "none");
    }
    s.push('\n');
    for row in &r.rows {
        s += &format!("{:>7.2} {:>6} {:>8.4}", row.alpha, row.images, row.image_change);
        if r.settings.detect {
            let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0}%", 100.0 * v));
            s += &format!(
                " {:>8} {:>7}",
                pct(row.same_shape),
                row.centre_shift.map_or("-".into(), |v| format!("{v:.3}"))
            );
            for c in &colours {
                s += &format!(" {:>7}", pct(row.colours.get(c).copied().or(Some(0.0))));
            }
            s += &format!(" {:>7}", pct(Some(row.nothing)));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse() {
        let p = parse_pairs("# colours\na red circle -> a blue circle\n\na red square\ta blue square\n").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].target, "a blue square");
        assert!(parse_pairs("no arrow here").unwrap_err().contains("line 1"));
        assert!(parse_pairs("a -> ").unwrap_err().contains("empty"));
        assert!(parse_pairs("\n# nothing\n").unwrap_err().contains("no pairs"));
        assert_eq!(reference_alpha(&[-2.0, -0.5, 1.0]), 1);
    }
}
