//! The shapes-world evaluation: generate from held-out captions, judge every image with the
//! world's rule-based detector, and score each object word's cross-attention against the
//! object's mask (pointing game and IoU, overall, per layer and per step).
//!
//! Masks: the image is generated, so its ground truth is what the detector finds in it (on
//! clean world renders the detector is exact; see `world::tests`). Each caption object is
//! matched to a detection by [`crate::world::judge`]; a word of an object with no matched
//! detection is counted as unscored, not as a miss.
//!
//! Everything here is plain data in and out; `cli::eval` adds the progress bar and the files.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::analysis::pointing::{self, PointScore};
use crate::analysis::{MapSource, word_map_at, word_map_over};
use crate::model::StableDiffusion;
use crate::model::unet::CaptureMode;
use crate::sampling::SamplerKind;
use crate::sampling::denoise::{self, RunConfig, RunError, RunEvent};
use crate::trace::{AttnMap, Run, RunMeta, RunStatus, StepRecord};
use crate::world::{self, Colour, Detection, Judgement, Position, Shape, Size, Template};

/// What to evaluate and how to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Number of held-out captions (cycling through the five templates).
    pub count: usize,
    /// Shuffles the held-out captions.
    pub caption_seed: u64,
    /// Generation seed of the first caption; caption `i` uses `seed + i`.
    pub seed: u64,
    pub steps: usize,
    pub guidance: f32,
    /// None: the model's own scheduler.
    pub sampler: Option<SamplerKind>,
    /// Threshold on the min-max normalised map for the IoU.
    pub threshold: f32,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            count: 200,
            caption_seed: 0,
            seed: 0,
            steps: 30,
            guidance: 5.0,
            sampler: None,
            threshold: pointing::DEFAULT_THRESHOLD,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("caption '{caption}': {message}")]
    Caption { caption: String, message: String },
    #[error("the model's image is {width}x{height}; the world's detector needs a square image of at least 32 pixels")]
    ImageSize { width: usize, height: usize },
}

/// Which property a caption word names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordKind {
    Colour,
    Shape,
    Size,
    Position,
}

impl WordKind {
    pub const ALL: [WordKind; 4] = [WordKind::Colour, WordKind::Shape, WordKind::Size, WordKind::Position];

    pub fn of(word: &str) -> Option<Self> {
        if Colour::from_name(word).is_some() {
            Some(WordKind::Colour)
        } else if Shape::from_name(word).is_some() {
            Some(WordKind::Shape)
        } else if Size::from_name(word).is_some() {
            Some(WordKind::Size)
        } else if Position::from_name(word).is_some() {
            Some(WordKind::Position)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WordKind::Colour => "colour",
            WordKind::Shape => "shape",
            WordKind::Size => "size",
            WordKind::Position => "position",
        }
    }
}

/// The attention of one object word against its object's mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordScore {
    pub word: String,
    pub word_index: usize,
    pub kind: WordKind,
    /// Index of the caption object the word describes.
    pub object: usize,
    /// All layers and all steps (DAAM's aggregate); None when the object was not detected.
    pub aggregate: Option<PointScore>,
    /// All steps, one layer at a time (in [`EvalReport::layers`] order); empty when unscored.
    pub per_layer: Vec<PointScore>,
    /// All layers, one step at a time; empty when unscored.
    pub per_step: Vec<PointScore>,
}

/// A detection without its mask (for the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Found {
    pub colour: Colour,
    pub shape: Shape,
    pub size: Size,
    pub cx: f32,
    pub cy: f32,
    pub position: Option<Position>,
}

impl From<&Detection> for Found {
    fn from(d: &Detection) -> Self {
        Found {
            colour: d.colour,
            shape: d.shape,
            size: d.size,
            cx: d.cx,
            cy: d.cy,
            position: d.position,
        }
    }
}

/// One generated image and its verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub index: usize,
    pub caption: String,
    pub template: Template,
    pub seed: u64,
    pub judgement: Judgement,
    pub found: Vec<Found>,
    pub words: Vec<WordScore>,
    pub secs: f64,
}

/// Generates `caption` with full attention capture and scores it. Returns the result and the
/// run (meta, steps, image) so that the caller can save it.
pub fn evaluate_case(
    sd: &StableDiffusion,
    model_spec: &str,
    index: usize,
    caption: &str,
    settings: &EvalSettings,
    cancel: &AtomicBool,
) -> Result<(CaseResult, Run), EvalError> {
    let bad = |message: String| EvalError::Caption {
        caption: caption.to_owned(),
        message,
    };
    let spec = world::parse_caption(caption).map_err(|e| bad(e.to_string()))?;
    let (words, word_object) = world::caption_words(&spec);
    let seed = settings.seed.wrapping_add(index as u64);
    let cfg = RunConfig {
        prompt: caption.to_owned(),
        steps: settings.steps,
        guidance: settings.guidance,
        sampler: settings.sampler,
        seed,
        attention: CaptureMode::Full,
        ..RunConfig::default()
    };
    let started = std::time::Instant::now();
    let mut meta: Option<RunMeta> = None;
    let mut steps: Vec<StepRecord> = Vec::new();
    let image = denoise::run(sd, model_spec, &cfg, cancel, &mut |ev| match ev {
        RunEvent::Started(m) => meta = Some(*m),
        RunEvent::Step(s) => steps.push(*s),
        RunEvent::Decoding => {}
    })?;
    let secs = started.elapsed().as_secs_f64();
    let mut meta = meta.ok_or_else(|| bad("the run reported no metadata".into()))?;
    meta.status = RunStatus::Complete;
    meta.total_secs = secs;
    meta.step_secs = steps.iter().map(|s| s.elapsed_secs).collect();
    if meta.words != words {
        return Err(bad(format!(
            "the tokenizer splits it into {:?}, the world into {words:?}",
            meta.words
        )));
    }
    let (w, h) = (image.width, image.height);
    if w != h || w < 32 {
        return Err(EvalError::ImageSize { width: w, height: h });
    }
    let detections = world::detect(&image.pixels, w, h);
    let judgement = world::judge_spec(&spec, &detections);
    let run = Run {
        meta,
        steps,
        image: Some(image),
    };
    let layer_keys: Vec<String> = run.meta.attn_layers.iter().map(|l| AttnMap::layer_key(&l.path)).collect();
    let mut scores = Vec::new();
    for (k, word) in words.iter().enumerate() {
        let (Some(object), Some(kind)) = (word_object[k], WordKind::of(word)) else {
            continue;
        };
        let tokens: Vec<usize> = (0..run.meta.tokens_used)
            .filter(|&t| run.meta.word_of_token.get(t) == Some(&Some(k)))
            .collect();
        if tokens.is_empty() {
            return Err(bad(format!("no token carries the word '{word}'")));
        }
        let mask = judgement.objects.get(object).and_then(|j| j.detection).map(|d| &detections[d].mask);
        let mut ws = WordScore {
            word: word.clone(),
            word_index: k,
            kind,
            object,
            aggregate: None,
            per_layer: Vec::new(),
            per_step: Vec::new(),
        };
        if let Some(mask) = mask {
            let last = run.steps.len() - 1;
            let sc = |m: Option<crate::analysis::TokenMap>| -> Result<PointScore, EvalError> {
                let m = m.ok_or_else(|| bad(format!("no attention maps for '{word}'")))?;
                Ok(pointing::score(&m, mask, w, h, settings.threshold))
            };
            ws.aggregate = Some(sc(word_map_over(&run, 0..=last, &MapSource::All, &tokens))?);
            for key in &layer_keys {
                ws.per_layer
                    .push(sc(word_map_over(&run, 0..=last, &MapSource::Key(key.clone()), &tokens))?);
            }
            for s in &run.steps {
                ws.per_step.push(sc(word_map_at(s, &MapSource::All, &tokens))?);
            }
        }
        scores.push(ws);
    }
    let result = CaseResult {
        index,
        caption: caption.to_owned(),
        template: spec.template(),
        seed,
        judgement,
        found: detections.iter().map(Found::from).collect(),
        words: scores,
        secs,
    };
    Ok((result, run))
}

/// `k` of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rate {
    pub k: usize,
    pub n: usize,
}

impl Rate {
    fn add(&mut self, ok: bool) {
        self.n += 1;
        self.k += ok as usize;
    }
    /// Percentage; NaN when `n == 0`.
    pub fn pct(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            100.0 * self.k as f64 / self.n as f64
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            write!(f, "     -   (0/0)")
        } else {
            write!(f, "{:6.1}%  ({}/{})", self.pct(), self.k, self.n)
        }
    }
}

/// Pointing-game hits and the mean IoU of a set of word scores.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PointingRate {
    pub hits: Rate,
    pub mean_iou: f64,
}

impl PointingRate {
    fn of<'a>(scores: impl Iterator<Item = &'a PointScore>) -> Self {
        let mut r = PointingRate::default();
        let mut iou = 0.0;
        for s in scores {
            r.hits.add(s.hit);
            iou += s.iou as f64;
        }
        r.mean_iou = if r.hits.n == 0 { f64::NAN } else { iou / r.hits.n as f64 };
        r
    }
}

/// The headline figures of an evaluation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub cases: usize,
    /// Single-object captions: the caption's object was found with the right colour / shape /
    /// size (captions that state one) / position (captions that state one) / everything.
    pub single_colour: Rate,
    pub single_shape: Rate,
    pub single_size: Rate,
    pub single_position: Rate,
    pub single_all: Rate,
    /// Two-object captions: both objects found with the right colour and shape.
    pub two_both_objects: Rate,
    /// ... and the relation holds between them.
    pub two_all: Rate,
    /// Every stated attribute right and no extra object, per template.
    pub strict_by_template: Vec<(Template, Rate)>,
    /// Object words whose object was detected (all kinds).
    pub pointing: PointingRate,
    /// Object words whose object was not found (not scored).
    pub unscored_words: usize,
    pub pointing_by_kind: Vec<(WordKind, PointingRate)>,
    /// Per layer path (all steps).
    pub pointing_by_layer: Vec<(String, PointingRate)>,
    /// Per step (timestep; all layers).
    pub pointing_by_step: Vec<(f64, PointingRate)>,
}

/// Tallies the cases. `layers` and `timesteps` name the columns of the per-layer and per-step
/// scores (every case has the same; cases with other lengths are skipped there).
pub fn summarize(cases: &[CaseResult], layers: &[String], timesteps: &[f64]) -> Summary {
    let mut s = Summary {
        cases: cases.len(),
        ..Default::default()
    };
    for c in cases {
        let j = &c.judgement;
        if c.template == Template::Relation {
            let both = j.objects.len() == 2 && j.objects.iter().all(|o| o.colour && o.shape);
            s.two_both_objects.add(both);
            s.two_all.add(j.all_correct);
        } else if let Some(o) = j.objects.first() {
            s.single_colour.add(o.colour);
            s.single_shape.add(o.shape);
            if let Some(ok) = o.size {
                s.single_size.add(ok);
            }
            if let Some(ok) = o.position {
                s.single_position.add(ok);
            }
            s.single_all.add(j.all_correct);
        }
    }
    s.strict_by_template = Template::ALL
        .iter()
        .map(|&t| {
            let mut r = Rate::default();
            cases
                .iter()
                .filter(|c| c.template == t)
                .for_each(|c| r.add(c.judgement.strict_correct()));
            (t, r)
        })
        .collect();
    let words: Vec<&WordScore> = cases.iter().flat_map(|c| &c.words).collect();
    s.unscored_words = words.iter().filter(|w| w.aggregate.is_none()).count();
    s.pointing = PointingRate::of(words.iter().filter_map(|w| w.aggregate.as_ref()));
    s.pointing_by_kind = WordKind::ALL
        .iter()
        .map(|&k| {
            (
                k,
                PointingRate::of(words.iter().filter(|w| w.kind == k).filter_map(|w| w.aggregate.as_ref())),
            )
        })
        .filter(|(_, r)| r.hits.n > 0)
        .collect();
    s.pointing_by_layer = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let it = words.iter().filter(|w| w.per_layer.len() == layers.len()).map(|w| &w.per_layer[i]);
            (l.clone(), PointingRate::of(it))
        })
        .collect();
    s.pointing_by_step = timesteps
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let it = words.iter().filter(|w| w.per_step.len() == timesteps.len()).map(|w| &w.per_step[i]);
            (t, PointingRate::of(it))
        })
        .collect();
    s
}

/// Everything an evaluation produced (written as `report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub model: String,
    pub settings: EvalSettings,
    /// Sampler actually used.
    pub sampler: String,
    /// Cross-attention layer paths (columns of `per_layer`).
    pub layers: Vec<String>,
    /// Timesteps (columns of `per_step`).
    pub timesteps: Vec<f64>,
    /// False when the evaluation was cancelled before the last caption.
    pub complete: bool,
    pub summary: Summary,
    pub cases: Vec<CaseResult>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::ObjectJudgement;

    fn case(template: Template, objects: Vec<ObjectJudgement>, all: bool, words: Vec<WordScore>) -> CaseResult {
        CaseResult {
            index: 0,
            caption: String::new(),
            template,
            seed: 0,
            judgement: Judgement {
                parse_error: None,
                objects,
                relation: None,
                count: true,
                all_correct: all,
            },
            found: Vec::new(),
            words,
            secs: 0.0,
        }
    }

    fn word(kind: WordKind, score: Option<(bool, f32)>) -> WordScore {
        let s = score.map(|(hit, iou)| PointScore { hit, iou });
        WordScore {
            word: String::new(),
            word_index: 0,
            kind,
            object: 0,
            aggregate: s,
            per_layer: s.into_iter().collect(),
            per_step: s.into_iter().chain(s).collect(),
        }
    }

    #[test]
    fn summary_counts_what_it_says() {
        let ok = ObjectJudgement {
            detection: Some(0),
            colour: true,
            shape: true,
            size: None,
            position: Some(false),
        };
        let wrong_shape = ObjectJudgement { shape: false, ..ok };
        let cases = vec![
            case(
                Template::ColourPosition,
                vec![ok],
                false,
                vec![word(WordKind::Colour, Some((true, 0.5))), word(WordKind::Position, None)],
            ),
            case(
                Template::Colour,
                vec![wrong_shape],
                false,
                vec![word(WordKind::Shape, Some((false, 0.1)))],
            ),
            case(Template::Relation, vec![ok, ok], true, vec![]),
            case(Template::Relation, vec![ok, wrong_shape], false, vec![]),
        ];
        let s = summarize(&cases, &["l0".into()], &[999.0, 500.0]);
        assert_eq!(s.single_colour, Rate { k: 2, n: 2 });
        assert_eq!(s.single_shape, Rate { k: 1, n: 2 });
        assert_eq!(s.single_position, Rate { k: 0, n: 2 });
        assert_eq!(s.single_size, Rate { k: 0, n: 0 });
        assert_eq!(s.two_both_objects, Rate { k: 1, n: 2 });
        assert_eq!(s.two_all, Rate { k: 1, n: 2 });
        assert_eq!(s.pointing.hits, Rate { k: 1, n: 2 });
        assert!((s.pointing.mean_iou - 0.3).abs() < 1e-6);
        assert_eq!(s.unscored_words, 1);
        assert_eq!(s.pointing_by_layer[0].1.hits, Rate { k: 1, n: 2 });
        assert_eq!(s.pointing_by_step.len(), 2);
        assert_eq!(s.pointing_by_step[1].1.hits, Rate { k: 1, n: 2 });
        let kinds: Vec<WordKind> = s.pointing_by_kind.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![WordKind::Colour, WordKind::Shape]);
    }

    #[test]
    fn word_kinds() {
        assert_eq!(WordKind::of("purple"), Some(WordKind::Colour));
        assert_eq!(WordKind::of("diamond"), Some(WordKind::Shape));
        assert_eq!(WordKind::of("big"), Some(WordKind::Size));
        assert_eq!(WordKind::of("center"), Some(WordKind::Position));
        assert_eq!(WordKind::of("above"), None);
    }
}
