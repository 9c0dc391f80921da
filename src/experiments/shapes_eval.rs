//! The shapes-world evaluation: generate from held-out captions, judge every image with the
//! world's rule-based detector, and score each object word's cross-attention against the
//! object's mask (pointing game and IoU, overall, per layer and per step), twice:
//!
//! * on the generated images, with masks from the detector (each caption object is matched to a
//!   detection by [`crate::world::judge`]; a word of an object with no matched detection is
//!   counted as unscored, not as a miss). This is DAAM's protocol (maps of a generation,
//!   masks of its image), with the detector as annotator;
//! * on rendered scenes with exact masks ([`attention_on_truth`]): the world draws a scene
//!   for the caption, the VAE encodes it (posterior mean), and the latent is noised to each
//!   step's timestep with a seeded noise, `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`, as in
//!   training; one conditional UNet call per step gives the maps. No detector, no generation
//!   errors: only whether attention points at the object.
//!
//! Everything here is plain data in and out, and every model call goes through the pipeline's
//! pieces; [`run`] is the experiment (Settings → run → Report) that the worker runs for the CLI
//! `eval` and the app alike.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{ExperimentEvent, Progress, Stop};
use crate::analysis::pointing::{self, PointScore};
use crate::analysis::{MapSource, TokenMap, mean_map, word_map_in, word_map_mean};
use crate::model::StableDiffusion;
use crate::model::vae::VaeEncoder;
use crate::pipeline::{self, RunConfig, RunError, RunEvent};
use crate::sampling::{SamplerKind, SamplerOptions, TimestepSpacing, build_sampler};
use crate::trace::{AttnMap, RgbImage, Run, RunEnd};
use crate::types::CaptureMode;
use crate::world::rng::{Rng, seed_of};
use crate::world::{self, Colour, Detection, Judgement, Position, Shape, Size, Template, WorldConfig};

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
    /// Overrides the scheduler's timestep spacing (e.g. the exponential sampling of arXiv
    /// 2402.10404, to see which stage fixes which attribute).
    #[serde(default)]
    pub spacing: Option<TimestepSpacing>,
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
            spacing: None,
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
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
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
        spacing: settings.spacing,
        seed,
        attention: CaptureMode::Full,
        ..RunConfig::default()
    };
    let started = std::time::Instant::now();
    let mut run: Option<Run> = None;
    let image = pipeline::run(sd, model_spec, &cfg, cancel, &mut |ev| match ev {
        RunEvent::Started(m) => run = Some(Run::started(*m)),
        RunEvent::Step(s) => {
            if let Some(r) = run.as_mut() {
                r.push_step(*s);
            }
        }
        RunEvent::Decoding => {}
    })?;
    let secs = started.elapsed().as_secs_f64();
    let mut run = run.ok_or_else(|| bad("the run reported no metadata".into()))?;
    if run.meta.words != words {
        return Err(bad(format!(
            "the tokenizer splits it into {:?}, the world into {words:?}",
            run.meta.words
        )));
    }
    let (w, h) = (image.width, image.height);
    if w != h || w < 32 {
        return Err(EvalError::ImageSize { width: w, height: h });
    }
    let detections = world::detect(&image.pixels, w, h);
    let judgement = world::judge_spec(&spec, &detections);
    run.finish(RunEnd::Complete(image), secs);
    let layer_keys: Vec<String> = run.meta.attn_layers.iter().map(|l| AttnMap::layer_key(&l.path)).collect();
    let masks: Vec<Option<&[bool]>> = (0..spec.objects.len())
        .map(|o| {
            judgement
                .objects
                .get(o)
                .and_then(|j| j.detection)
                .map(|d| detections[d].mask.as_slice())
        })
        .collect();
    let tokens = WordTokens {
        words: &run.meta.words,
        word_of_token: &run.meta.word_of_token,
        tokens_used: run.meta.tokens_used,
    };
    let steps: Vec<&[AttnMap]> = run.steps.iter().map(|s| s.attention.as_slice()).collect();
    let scores = score_words(&steps, &layer_keys, &tokens, &word_object, &masks, w, h, settings.threshold).map_err(bad)?;
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

/// Which prompt tokens carry which word.
struct WordTokens<'a> {
    words: &'a [String],
    word_of_token: &'a [Option<usize>],
    tokens_used: usize,
}

/// Scores every object word (a word with an object and a [`WordKind`]) of the caption against
/// `masks[object]` (`None`: unscored) with the attention maps of each step in `steps`.
#[allow(clippy::too_many_arguments)]
fn score_words(
    steps: &[&[AttnMap]],
    layer_keys: &[String],
    tokens: &WordTokens,
    word_object: &[Option<usize>],
    masks: &[Option<&[bool]>],
    w: usize,
    h: usize,
    threshold: f32,
) -> Result<Vec<WordScore>, String> {
    let mut scores = Vec::new();
    for (k, word) in tokens.words.iter().enumerate() {
        let (Some(&Some(object)), Some(kind)) = (word_object.get(k), WordKind::of(word)) else {
            continue;
        };
        let toks: Vec<usize> = (0..tokens.tokens_used)
            .filter(|&t| tokens.word_of_token.get(t) == Some(&Some(k)))
            .collect();
        if toks.is_empty() {
            return Err(format!("no token carries the word '{word}'"));
        }
        let mut ws = WordScore {
            word: word.clone(),
            word_index: k,
            kind,
            object,
            aggregate: None,
            per_layer: Vec::new(),
            per_step: Vec::new(),
        };
        if let Some(mask) = masks.get(object).copied().flatten() {
            let missing = || format!("no attention maps for '{word}'");
            let sc = |m: &TokenMap| pointing::score(m, mask, w, h, threshold);
            // Each step's all-layer map once: scored per step, then averaged for the aggregate.
            let per_step: Vec<TokenMap> = steps
                .iter()
                .map(|s| word_map_in(s, &MapSource::All, &toks))
                .collect::<Option<_>>()
                .ok_or_else(missing)?;
            ws.per_step = per_step.iter().map(sc).collect();
            ws.aggregate = Some(sc(&mean_map(per_step).ok_or_else(missing)?));
            for key in layer_keys {
                ws.per_layer.push(sc(
                    &word_map_mean(steps.iter().copied(), &MapSource::Key(key.clone()), &toks).ok_or_else(missing)?
                ));
            }
        }
        scores.push(ws);
    }
    Ok(scores)
}

/// Attention on a rendered scene of the caption, against its exact masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthCase {
    pub index: usize,
    pub caption: String,
    pub template: Template,
    /// Seeds the scene layout and the noise.
    pub seed: u64,
    pub words: Vec<WordScore>,
}

/// Renders a scene of `caption` at the model's size (layout and background from the case's
/// seed), encodes it with the VAE (posterior mean), noises it to each timestep of the sampler's
/// schedule with one seeded noise (the torch-compatible generator, like the pipeline's initial
/// noise), and scores every object word's attention of the conditional UNet call at each step
/// against the scene's exact masks. Returns the scores and the rendered sample.
pub fn attention_on_truth(
    sd: &StableDiffusion,
    encoder: &VaeEncoder,
    index: usize,
    caption: &str,
    settings: &EvalSettings,
    cancel: &AtomicBool,
) -> Result<(TruthCase, world::Sample), EvalError> {
    let bad = |message: String| EvalError::Caption {
        caption: caption.to_owned(),
        message,
    };
    let spec = world::parse_caption(caption).map_err(|e| bad(e.to_string()))?;
    let (words, word_object) = world::caption_words(&spec);
    let size = sd.default_size();
    if size < 32 {
        return Err(EvalError::ImageSize { width: size, height: size });
    }
    let seed = settings.seed.wrapping_add(index as u64);
    let scene = world::scene_from_spec(&spec, true, &mut Rng::new(seed_of(&[seed, 0x7A07]))).map_err(|e| bad(e.to_string()))?;
    let sample = world::render(&scene, &WorldConfig::with_size(size));
    // x0: the scene's latent.
    let image = RgbImage {
        width: size,
        height: size,
        pixels: sample.rgb.clone(),
    };
    let (x0, latent) = pipeline::encode_image(encoder, &image)?;
    let eps = crate::sampling::NoiseSource::randn(&mut crate::sampling::rng::TorchRng::new(seed), x0.len());

    let cond = pipeline::encode_prompt(sd, caption, "", false, None)?;
    let prompt = &cond.positive;
    if prompt.words != words {
        return Err(bad(format!(
            "the tokenizer splits it into {:?}, the world into {words:?}",
            prompt.words
        )));
    }
    let kind = pipeline::sampler_kind(sd, settings.sampler)?;
    let options = SamplerOptions {
        karras: false,
        spacing: settings.spacing,
        eta: 0.0,
    };
    let sampler = build_sampler(
        kind,
        &pipeline::scheduler_config(sd).map_err(RunError::from)?,
        settings.steps,
        &options,
    )
    .map_err(RunError::from)?;
    let layers = pipeline::attn_layer_sizes(sd, latent[1], latent[2]);
    let mut steps = Vec::new();
    for (i, &t) in sampler.timesteps().iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(RunError::Cancelled {
                completed: i,
                total: sampler.timesteps().len(),
            }
            .into());
        }
        // alpha_bar of this step from its sigma: sigma^2 = (1 - a) / a.
        let sigma = sampler.sigma(i) as f64;
        let a = 1.0 / (1.0 + sigma * sigma);
        let (sa, sb) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
        let xt: Vec<f32> = x0.iter().zip(&eps).map(|(x, e)| sa * x + sb * e).collect();
        // One conditional UNet call (no guidance): only its attention is used.
        let out = pipeline::guided_eval(sd, &cond, xt, latent, t, 1.0, CaptureMode::Full, &layers)?;
        steps.push(out.attention);
    }
    let layer_keys: Vec<String> = layers.iter().map(|l| AttnMap::layer_key(&l.path)).collect();
    let object_masks: Vec<Vec<bool>> = (0..spec.objects.len()).map(|o| sample.mask_bool(o)).collect();
    let masks: Vec<Option<&[bool]>> = object_masks.iter().map(|m| Some(m.as_slice())).collect();
    let tokens = WordTokens {
        words: &prompt.words,
        word_of_token: &prompt.word_of_token,
        tokens_used: prompt.n_used,
    };
    let steps: Vec<&[AttnMap]> = steps.iter().map(Vec::as_slice).collect();
    let words = score_words(&steps, &layer_keys, &tokens, &word_object, &masks, size, size, settings.threshold).map_err(bad)?;
    Ok((
        TruthCase {
            index,
            caption: caption.to_owned(),
            template: spec.template(),
            seed,
            words,
        },
        sample,
    ))
}

/// `k` of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rate {
    pub k: usize,
    pub n: usize,
}

impl Rate {
    pub(crate) fn add(&mut self, ok: bool) {
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

/// Pointing game and IoU of a set of word scores: overall, per word kind, layer and step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AttentionSummary {
    /// Object words whose object has a mask (all kinds).
    pub pointing: PointingRate,
    /// Object words whose object has no mask (not found in the image; not scored).
    pub unscored_words: usize,
    pub by_kind: Vec<(WordKind, PointingRate)>,
    /// Per layer path (all steps).
    pub by_layer: Vec<(String, PointingRate)>,
    /// Per step (timestep; all layers).
    pub by_step: Vec<(f64, PointingRate)>,
}

impl AttentionSummary {
    /// `layers` and `timesteps` name the columns of the per-layer and per-step scores (words
    /// with other lengths are left out there).
    pub fn of<'a>(words: impl IntoIterator<Item = &'a WordScore>, layers: &[String], timesteps: &[f64]) -> Self {
        let words: Vec<&WordScore> = words.into_iter().collect();
        AttentionSummary {
            pointing: PointingRate::of(words.iter().filter_map(|w| w.aggregate.as_ref())),
            unscored_words: words.iter().filter(|w| w.aggregate.is_none()).count(),
            by_kind: WordKind::ALL
                .iter()
                .map(|&k| {
                    (
                        k,
                        PointingRate::of(words.iter().filter(|w| w.kind == k).filter_map(|w| w.aggregate.as_ref())),
                    )
                })
                .filter(|(_, r)| r.hits.n > 0)
                .collect(),
            by_layer: layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let it = words.iter().filter(|w| w.per_layer.len() == layers.len()).map(|w| &w.per_layer[i]);
                    (l.clone(), PointingRate::of(it))
                })
                .collect(),
            by_step: timesteps
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let it = words.iter().filter(|w| w.per_step.len() == timesteps.len()).map(|w| &w.per_step[i]);
                    (t, PointingRate::of(it))
                })
                .collect(),
        }
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
    /// Attention of the generations against the detected objects' masks.
    pub attention: AttentionSummary,
    /// Attention on rendered scenes against their exact masks.
    pub attention_truth: AttentionSummary,
}

/// Tallies the cases. `layers` and `timesteps` name the columns of the per-layer and per-step
/// scores.
pub fn summarize(cases: &[CaseResult], truth: &[TruthCase], layers: &[String], timesteps: &[f64]) -> Summary {
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
    s.attention = AttentionSummary::of(cases.iter().flat_map(|c| &c.words), layers, timesteps);
    s.attention_truth = AttentionSummary::of(truth.iter().flat_map(|c| &c.words), layers, timesteps);
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
    /// Attention on rendered scenes of the same captions (same order).
    pub truth: Vec<TruthCase>,
}

/// One evaluated caption as [`run`] streams it: the verdicts, the generation (full attention
/// capture) and the rendered scene of the same caption.
pub struct CaseOutput {
    pub case: CaseResult,
    pub truth: TruthCase,
    pub run: Run,
    pub scene: RgbImage,
}

/// The evaluation: `settings.count` held-out captions, each generated and judged
/// ([`evaluate_case`]) and scored on its rendered scene ([`attention_on_truth`]). Streams a
/// [`CaseOutput`] per caption; returns the report of the captions done and, when it stopped
/// early, why (cancel, or the failing caption's error).
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &EvalSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(EvalReport, Option<Stop>), EvalError> {
    let encoder = sd.vae_encoder()?;
    let captions = world::eval_captions(settings.count, settings.caption_seed);
    let mut cases: Vec<CaseResult> = Vec::new();
    let mut truth: Vec<TruthCase> = Vec::new();
    let mut layers: Vec<String> = Vec::new();
    let mut timesteps: Vec<f64> = Vec::new();
    let mut sampler = String::new();
    let mut stopped = None;
    for (i, caption) in captions.iter().enumerate() {
        sink(ExperimentEvent::Progress(Progress {
            done: i,
            total: captions.len(),
            message: caption.clone(),
        }));
        let both = evaluate_case(sd, model_spec, i, caption, settings, cancel)
            .and_then(|(case, run)| Ok((case, run, attention_on_truth(sd, &encoder, i, caption, settings, cancel)?)));
        match both {
            Ok((case, run, (truth_case, scene))) => {
                if layers.is_empty() {
                    layers = run.meta.attn_layers.iter().map(|l| l.path.clone()).collect();
                    timesteps = run.meta.timesteps.clone();
                    sampler = run.meta.sampler.clone();
                }
                cases.push(case.clone());
                truth.push(truth_case.clone());
                let scene = RgbImage {
                    width: scene.width,
                    height: scene.height,
                    pixels: scene.rgb,
                };
                sink(ExperimentEvent::ShapesEvalCase(Box::new(CaseOutput {
                    case,
                    truth: truth_case,
                    run,
                    scene,
                })));
            }
            Err(EvalError::Run(RunError::Cancelled { .. })) => {
                stopped = Some(Stop::Cancelled);
                break;
            }
            Err(e) => {
                stopped = Some(Stop::Failed(format!("caption {i}: {e}")));
                break;
            }
        }
    }
    sink(ExperimentEvent::Progress(Progress {
        done: cases.len(),
        total: captions.len(),
        message: String::new(),
    }));
    let complete = cases.len() == captions.len();
    let summary = summarize(&cases, &truth, &layers, &timesteps);
    let report = EvalReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        sampler,
        layers,
        timesteps,
        complete,
        summary,
        cases,
        truth,
    };
    Ok((report, stopped))
}

fn pointing_line(label: &str, width: usize, r: &PointingRate) -> String {
    format!("  {label:<width$} pointing {}   mean IoU {:.3}\n", r.hits, r.mean_iou)
}

/// The human-readable summary (printed and written to summary.txt).
pub fn render_summary(r: &EvalReport) -> String {
    let s = &r.summary;
    let st = &r.settings;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Shapes-world evaluation of {}\n{} held-out captions{}, {} steps, guidance {}, {}, seeds {}..{}",
        r.model,
        s.cases,
        if r.complete { "" } else { " (cancelled early)" },
        st.steps,
        st.guidance,
        r.sampler,
        st.seed,
        st.seed + s.cases.saturating_sub(1) as u64
    );
    let _ = writeln!(t, "\nImages, judged by the world's rule-based detector");
    let _ = writeln!(t, "  single object: colour right         {}   target >= 95%", s.single_colour);
    let _ = writeln!(t, "                 shape right          {}   target >= 90%", s.single_shape);
    let _ = writeln!(t, "                 position right       {}   target >= 90%", s.single_position);
    let _ = writeln!(t, "                 size right           {}", s.single_size);
    let _ = writeln!(t, "                 all stated right     {}", s.single_all);
    let _ = writeln!(t, "  two objects:   both objects right   {}   target >= 75%", s.two_both_objects);
    let _ = writeln!(t, "                 ... and relation     {}", s.two_all);
    let _ = writeln!(t, "  strictly right (all stated attributes, no extra object), by template:");
    for (tpl, rate) in &s.strict_by_template {
        let name = match tpl {
            Template::Colour => "a {colour} {shape}",
            Template::SizeColour => "a {size} {colour} {shape}",
            Template::ColourPosition => "a {colour} {shape} on the {position}",
            Template::SizeColourPosition => "a {size} {colour} {shape} on the {position}",
            Template::Relation => "a {colour} {shape} {relation} a ...",
        };
        let _ = writeln!(t, "    {name:<46} {rate}");
    }
    let width = s.attention.by_layer.iter().map(|(l, _)| l.len() + 2).max().unwrap_or(0).max(34);
    let _ = writeln!(
        t,
        "\nAttention of the generations vs the detected objects' masks (maps averaged over all layers and steps,\n\
         upsampled to the image; pointing game: the peak lies in the mask; IoU of the map thresholded at {} of its range)",
        st.threshold
    );
    attention_section(&mut t, &s.attention, width, true);
    let _ = writeln!(
        t,
        "\nAttention on rendered scenes of the same captions vs their exact masks (the scene's latent noised to\n\
         each step's t, one conditional UNet call per step)"
    );
    attention_section(&mut t, &s.attention_truth, width, false);
    t
}

fn attention_section(t: &mut String, a: &AttentionSummary, width: usize, generated: bool) {
    t.push_str(&pointing_line("all object words", width, &a.pointing));
    let _ = writeln!(t, "  {:<width$} target >= 80%", "");
    for (k, rate) in &a.by_kind {
        t.push_str(&pointing_line(&format!("{} words", k.name()), width, rate));
    }
    if generated {
        let _ = writeln!(t, "  words not scored (object not found): {}", a.unscored_words);
    }
    let _ = writeln!(t, "  per layer (all steps):");
    for (l, rate) in &a.by_layer {
        t.push_str(&pointing_line(&format!("  {l}"), width, rate));
    }
    let _ = writeln!(t, "  per step (all layers):");
    for (i, (ts, rate)) in a.by_step.iter().enumerate() {
        t.push_str(&pointing_line(&format!("  step {:>2}  t = {ts:>4}", i + 1), width, rate));
    }
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
        let s = summarize(&cases, &[], &["l0".into()], &[999.0, 500.0]);
        assert_eq!(s.single_colour, Rate { k: 2, n: 2 });
        assert_eq!(s.single_shape, Rate { k: 1, n: 2 });
        assert_eq!(s.single_position, Rate { k: 0, n: 2 });
        assert_eq!(s.single_size, Rate { k: 0, n: 0 });
        assert_eq!(s.two_both_objects, Rate { k: 1, n: 2 });
        assert_eq!(s.two_all, Rate { k: 1, n: 2 });
        let a = &s.attention;
        assert_eq!(a.pointing.hits, Rate { k: 1, n: 2 });
        assert!((a.pointing.mean_iou - 0.3).abs() < 1e-6);
        assert_eq!(a.unscored_words, 1);
        assert_eq!(a.by_layer[0].1.hits, Rate { k: 1, n: 2 });
        assert_eq!(a.by_step.len(), 2);
        assert_eq!(a.by_step[1].1.hits, Rate { k: 1, n: 2 });
        let kinds: Vec<WordKind> = a.by_kind.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![WordKind::Colour, WordKind::Shape]);
        assert_eq!(s.attention_truth.pointing.hits.n, 0);
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
