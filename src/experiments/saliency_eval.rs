//! How faithful are DF-RISE, DF-CAM and token attention? Scored on the shapes world, where the
//! ground truth is exact (the check arXiv 2402.10404 leaves open).
//!
//! For each held-out caption: its scene is rendered at the model's size, encoded with the VAE
//! (posterior mean) and noised to each DDIM timestep with one seeded noise (as
//! `shapes_eval::attention_on_truth`). At every step, on that x_t, with guidance:
//! - the maps: DF-RISE, DF-CAM of every block of the authors' set and their sum (`cam.all`),
//!   the caption's object words' attention (each word's map averaged over the step's layers,
//!   min-max scaled, summed over the words, scaled again), and a uniformly random map (chance);
//! - against the union of the scene's object masks (the maps are not about one word): the
//!   pointing game (the map's peak inside an object) and the IoU of the map thresholded at
//!   DAAM's 0.4;
//! - the causal games of the RISE paper, in the authors' form: *insertion* starts from the
//!   latent blurred with their kernel (`gkern(11, 5)`) and puts x_t's latent pixels back in
//!   descending saliency; *deletion* starts from x_t and zeroes them. At each of `auc_points` + 1
//!   stages the guided UNet output is compared with x_t's own: the curve is the fraction of the
//!   distance from the start's output (insertion) or to the end's (deletion) covered, and the
//!   score its area (trapezoids on [0, 1]). Insertion: higher is more faithful; deletion:
//!   lower. The authors score each stage with the FID of one decoded image against one, which
//!   is undefined (a single sample has no covariance); we compare the model outputs, which is
//!   also what the explained step computes.
//!
//! Steps fall in bands by position in the schedule: early (first third), middle, late.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::saliency::{self as sal_exp, CAM_ALL, DEFAULT_CAM_BLOCK, RiseSettings};
use super::shapes_eval::Rate;
use super::{ExperimentEvent, Progress, Stop};
use crate::analysis::pointing::{self, DEFAULT_THRESHOLD};
use crate::analysis::saliency as sal;
use crate::analysis::{MapSource, TokenMap, resize_bilinear, word_map_in};
use crate::metrics::nprand::RandomState;
use crate::model::StableDiffusion;
use crate::pipeline::{self, RunError, StepContext};
use crate::sampling::rng::TorchRng;
use crate::sampling::{NoiseSource, SamplerKind, SamplerOptions, build_sampler};
use crate::trace::RgbImage;
use crate::types::CaptureMode;
use crate::world::rng::{Rng, seed_of};
use crate::world::{self, WorldConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaliencyEvalSettings {
    /// Held-out captions (cycling through the templates).
    pub count: usize,
    pub caption_seed: u64,
    /// Caption i's scene layout and noise come from `seed + i`.
    pub seed: u64,
    /// DDIM steps (every step is scored).
    pub steps: usize,
    pub guidance: f32,
    /// DF-RISE (masks, batch, comparison, structure term).
    pub rise: RiseSettings,
    /// Stages of the insertion and deletion games (plus the start).
    pub auc_points: usize,
    /// Threshold on the min-max scaled map for the IoU.
    pub threshold: f32,
}

impl Default for SaliencyEvalSettings {
    fn default() -> Self {
        Self {
            count: 24,
            caption_seed: 0,
            seed: 0,
            steps: 10,
            guidance: 5.0,
            rise: RiseSettings::default(),
            auc_points: 16,
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

/// The methods the games are played for (per-block DF-CAM is scored by pointing and IoU only).
pub const GAME_METHODS: [&str; 5] = ["rise", "cam.mid_block.resnets.0", "cam.all", "attention", "random"];

/// One method at one step of one caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepScore {
    pub hit: bool,
    pub iou: f32,
    pub insertion: Option<f64>,
    pub deletion: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSteps {
    pub method: String,
    /// One per step.
    pub steps: Vec<StepScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaliencyCase {
    pub index: usize,
    pub caption: String,
    pub seed: u64,
    pub methods: Vec<MethodSteps>,
}

/// One method over one band of steps, over all captions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandRow {
    pub method: String,
    pub band: String,
    pub pointing: Rate,
    pub mean_iou: f64,
    pub insertion: Option<f64>,
    pub deletion: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaliencyEvalReport {
    pub model: String,
    pub settings: SaliencyEvalSettings,
    pub timesteps: Vec<f64>,
    pub methods: Vec<String>,
    /// Masks per UNet call (DF-RISE and the games).
    pub batch: usize,
    pub secs_per_caption: f64,
    pub cases: Vec<SaliencyCase>,
    pub rows: Vec<BandRow>,
}

/// Band of step `i` of `n`: early (first third), middle, late.
pub fn band(i: usize, n: usize) -> &'static str {
    match (3 * i) / n.max(1) {
        0 => "early",
        1 => "middle",
        _ => "late",
    }
}

/// The caption's object words' attention at one step, at latent resolution: each word's map
/// (its tokens, all layers of the step) min-max scaled, summed, scaled again.
fn words_map(attention: &[crate::trace::AttnMap], word_tokens: &[Vec<usize>], h: usize, w: usize) -> Vec<f32> {
    let mut sum = vec![0f32; h * w];
    for tokens in word_tokens {
        if let Some(m) = word_map_in(attention, &MapSource::All, tokens) {
            let up = sal::minmax(&resize_bilinear(&m.values, m.height, m.width, h, w));
            sum.iter_mut().zip(&up).for_each(|(s, v)| *s += v);
        }
    }
    sal::minmax(&sum)
}

/// Scores one caption at every step.
#[allow(clippy::too_many_arguments)]
fn evaluate_caption(
    sd: &StableDiffusion,
    encoder: &crate::model::vae::VaeEncoder,
    index: usize,
    caption: &str,
    settings: &SaliencyEvalSettings,
    batch: usize,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(String),
) -> Result<SaliencyCase, RunError> {
    let bad = |m: String| RunError::BadInput(format!("caption {caption:?}: {m}"));
    let spec = world::parse_caption(caption).map_err(|e| bad(e.to_string()))?;
    let (words, word_object) = world::caption_words(&spec);
    let size = sd.default_size();
    let seed = settings.seed.wrapping_add(index as u64);
    let scene = world::scene_from_spec(&spec, true, &mut Rng::new(seed_of(&[seed, 0x7A07]))).map_err(|e| bad(e.to_string()))?;
    let sample = world::render(&scene, &WorldConfig::with_size(size));
    let image = RgbImage {
        width: size,
        height: size,
        pixels: sample.rgb.clone(),
    };
    let (x0, latent) = pipeline::encode_image(encoder, &image)?;
    let [c, h, w] = latent;
    let eps = NoiseSource::randn(&mut TorchRng::new(seed), x0.len());
    let union: Vec<bool> = {
        let masks: Vec<Vec<bool>> = (0..spec.objects.len()).map(|o| sample.mask_bool(o)).collect();
        (0..size * size).map(|p| masks.iter().any(|m| m[p])).collect()
    };

    let cond = pipeline::encode_prompt(sd, caption, "", settings.guidance > 1.0, None)?;
    if cond.positive.words != words {
        return Err(bad(format!(
            "the tokenizer splits it into {:?}, the world into {words:?}",
            cond.positive.words
        )));
    }
    let word_tokens: Vec<Vec<usize>> = (0..words.len())
        .filter(|&wi| word_object[wi].is_some())
        .map(|wi| {
            (0..cond.positive.n_used)
                .filter(|&t| cond.positive.word_of_token.get(t).copied().flatten() == Some(wi))
                .collect()
        })
        .collect();
    let mut sampler = build_sampler(
        SamplerKind::Ddim,
        &pipeline::scheduler_config(sd).map_err(RunError::from)?,
        settings.steps,
        &SamplerOptions::default(),
    )
    .map_err(RunError::from)?;
    let timesteps = sampler.timesteps().to_vec();
    let layers = pipeline::attn_layer_sizes(sd, h, w);
    let kernel = sal::authors_blur_kernel();
    let blocks: Vec<String> = sal_exp::authors_block_set(sd);
    let mut cam_request = blocks.clone();
    cam_request.push(CAM_ALL.into());
    let mut methods: Vec<MethodSteps> = Vec::new();
    let mut push = |method: &str, score: StepScore| match methods.iter_mut().find(|m| m.method == method) {
        Some(m) => m.steps.push(score),
        None => methods.push(MethodSteps {
            method: method.to_owned(),
            steps: vec![score],
        }),
    };
    let mut random = RandomState::new(seed as u32 ^ 0x5A11);
    let total = timesteps.len();
    for (i, &t) in timesteps.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(RunError::Cancelled { completed: i, total });
        }
        progress(format!("{caption}: step {}/{total}", i + 1));
        let sigma = sampler.sigma(i) as f64;
        let a = 1.0 / (1.0 + sigma * sigma);
        let (sa, sb) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
        let xt: Vec<f32> = x0.iter().zip(&eps).map(|(x, e)| sa * x + sb * e).collect();
        let scaled = sampler.scale_model_input(&xt, i);
        let out = pipeline::guided_eval(sd, &cond, scaled, latent, t, settings.guidance, CaptureMode::Aggregate, &layers)?;
        let next = sampler.step(&out.model_output, i, &xt, &mut TorchRng::new(0))?.prev_sample;
        let ctx = StepContext {
            sd,
            cond: &cond,
            index: i,
            total,
            t,
            guidance: settings.guidance,
            latent,
            input: &xt,
            model_output: &out.model_output,
            next: &next,
            sampler: sampler.as_ref(),
            cancel,
        };
        let rise = sal_exp::rise_at(&ctx, &settings.rise, batch, &mut |_| {})?;
        let (cams, _) = sal_exp::cam_at(&ctx, &cam_request)?;
        let attention = words_map(&out.attention, &word_tokens, h, w);
        let chance: Vec<f32> = (0..h * w).map(|_| random.random_sample() as f32).collect();
        let mut maps: Vec<(String, Vec<f32>)> = vec![("rise".into(), rise)];
        maps.extend(cams.into_iter().map(|(b, m)| (format!("cam.{b}"), m)));
        maps.push(("attention".into(), attention));
        maps.push(("random".into(), chance));

        // The games, all stages of all game methods batched together.
        let blurred = sal::blur_channels(&xt, c, h, w, &kernel, 11);
        let zeros = vec![0f32; xt.len()];
        let mut inputs: Vec<Vec<f32>> = Vec::new();
        let mut spans: Vec<(String, usize)> = Vec::new();
        for name in GAME_METHODS {
            let Some((_, m)) = maps.iter().find(|(k, _)| k == name) else {
                continue;
            };
            let order = sal::saliency_order(m);
            spans.push((name.to_owned(), inputs.len()));
            inputs.extend(sal::game_inputs(&blurred, &xt, &order, settings.auc_points));
            inputs.extend(sal::game_inputs(&xt, &zeros, &order, settings.auc_points));
        }
        let scaled_inputs: Vec<Vec<f32>> = inputs.iter().map(|x| sampler.scale_model_input(x, i)).collect();
        let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(inputs.len());
        for chunk in scaled_inputs.chunks(batch.max(1)) {
            if cancel.load(Ordering::Relaxed) {
                return Err(RunError::Cancelled { completed: i, total });
            }
            outputs.extend(pipeline::guided_eval_batch(sd, &cond, chunk, latent, t, settings.guidance)?);
        }
        let stages = settings.auc_points + 1;
        for (name, map) in &maps {
            let tm = TokenMap {
                height: h,
                width: w,
                values: map.clone(),
            };
            let p = pointing::score(&tm, &union, size, size, settings.threshold);
            let (insertion, deletion) = match spans.iter().find(|(k, _)| k == name) {
                Some((_, start)) => {
                    let ins = &outputs[*start..start + stages];
                    let del = &outputs[start + stages..start + 2 * stages];
                    (
                        sal::game_curve(ins, &out.model_output, true).map(|c| sal::auc(&c)),
                        sal::game_curve(del, &out.model_output, false).map(|c| sal::auc(&c)),
                    )
                }
                None => (None, None),
            };
            push(
                name,
                StepScore {
                    hit: p.hit,
                    iou: p.iou,
                    insertion,
                    deletion,
                },
            );
        }
    }
    Ok(SaliencyCase {
        index,
        caption: caption.to_owned(),
        seed,
        methods,
    })
}

/// The band table: every method over early / middle / late steps and all steps.
pub fn summarize(cases: &[SaliencyCase], steps: usize) -> Vec<BandRow> {
    let mut names: Vec<String> = Vec::new();
    for m in cases.iter().flat_map(|c| &c.methods) {
        if !names.contains(&m.method) {
            names.push(m.method.clone());
        }
    }
    let mut rows = Vec::new();
    for name in &names {
        for b in ["early", "middle", "late", "all"] {
            let mut pointing = Rate::default();
            let (mut iou, mut n) = (0f64, 0usize);
            let (mut ins, mut n_ins, mut del, mut n_del) = (0f64, 0usize, 0f64, 0usize);
            for m in cases.iter().flat_map(|c| &c.methods).filter(|m| &m.method == name) {
                for (i, s) in m.steps.iter().enumerate() {
                    if b != "all" && band(i, steps) != b {
                        continue;
                    }
                    pointing.add(s.hit);
                    iou += s.iou as f64;
                    n += 1;
                    if let Some(v) = s.insertion {
                        ins += v;
                        n_ins += 1;
                    }
                    if let Some(v) = s.deletion {
                        del += v;
                        n_del += 1;
                    }
                }
            }
            rows.push(BandRow {
                method: name.clone(),
                band: b.into(),
                pointing,
                mean_iou: if n > 0 { iou / n as f64 } else { f64::NAN },
                insertion: (n_ins > 0).then(|| ins / n_ins as f64),
                deletion: (n_del > 0).then(|| del / n_del as f64),
            });
        }
    }
    rows
}

/// The table as text (printed and written to summary.txt).
pub fn render_table(r: &SaliencyEvalReport) -> String {
    let mut t = format!(
        "Saliency against the exact object masks: {} held-out captions, {} DDIM steps, w = {}, DF-RISE {} masks ({}, {} structure)\n\
         pointing = the map's peak inside an object; IoU at {:.1} of the scaled map; insertion AUC (higher is better) and deletion AUC (lower is better) on the guided output, {} stages\n\n",
        r.cases.len(),
        r.settings.steps,
        r.settings.guidance,
        r.settings.rise.masks,
        r.settings.rise.compare.as_str(),
        r.settings.rise.structure.as_str(),
        r.settings.threshold,
        r.settings.auc_points
    );
    t += &format!(
        "{:<34} {:<7} {:>22} {:>9} {:>10} {:>10}\n",
        "method", "steps", "pointing", "mean IoU", "insertion", "deletion"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for row in &r.rows {
        let m = if row.method == "cam.all" {
            "cam.all (sum of the authors' blocks)".to_string()
        } else if row.method == format!("cam.{DEFAULT_CAM_BLOCK}") {
            format!("{} (default)", row.method)
        } else {
            row.method.clone()
        };
        t += &format!(
            "{:<34} {:<7} {:>22} {:>9.3} {:>10} {:>10}\n",
            m,
            row.band,
            row.pointing.to_string(),
            row.mean_iou,
            opt(row.insertion),
            opt(row.deletion)
        );
    }
    t
}

/// Runs the evaluation over `settings.count` held-out captions; streams progress and returns
/// the report of the captions done.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &SaliencyEvalSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(SaliencyEvalReport, Option<Stop>), RunError> {
    if settings.count == 0 || settings.steps == 0 || settings.auc_points == 0 || settings.rise.masks == 0 {
        return Err(RunError::BadInput(
            "count, steps, auc points and masks must all be at least 1".into(),
        ));
    }
    let encoder = sd.vae_encoder().map_err(|e| RunError::BadInput(format!("the VAE encoder: {e}")))?;
    let size = sd.default_size();
    let latent = [sd.latent_channels(), size / sd.vae_scale_factor(), size / sd.vae_scale_factor()];
    let batch = if settings.rise.batch > 0 {
        settings.rise.batch
    } else {
        sal_exp::auto_batch(sd, latent, settings.guidance > 1.0)
    };
    let captions = world::eval_captions(settings.count, settings.caption_seed);
    let t0 = std::time::Instant::now();
    let mut cases = Vec::new();
    let mut stopped = None;
    for (i, caption) in captions.iter().enumerate() {
        let done = cases.len();
        let mut progress = |message: String| {
            sink(ExperimentEvent::Progress(Progress {
                done,
                total: captions.len(),
                message,
            }))
        };
        match evaluate_caption(sd, &encoder, i, caption, settings, batch, cancel, &mut progress) {
            Ok(case) => cases.push(case),
            Err(RunError::Cancelled { .. }) => {
                stopped = Some(Stop::Cancelled);
                break;
            }
            Err(e) => {
                stopped = Some(Stop::Failed(format!("caption {i}: {e}")));
                break;
            }
        }
    }
    let timesteps = build_sampler(
        SamplerKind::Ddim,
        &pipeline::scheduler_config(sd).map_err(RunError::from)?,
        settings.steps,
        &SamplerOptions::default(),
    )
    .map_err(RunError::from)?
    .timesteps()
    .to_vec();
    let rows = summarize(&cases, settings.steps);
    let methods = cases
        .first()
        .map(|c| c.methods.iter().map(|m| m.method.clone()).collect())
        .unwrap_or_default();
    let report = SaliencyEvalReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        timesteps,
        methods,
        batch,
        secs_per_caption: t0.elapsed().as_secs_f64() / cases.len().max(1) as f64,
        cases,
        rows,
    };
    Ok((report, stopped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(hit: bool, iou: f32, ins: Option<f64>) -> StepScore {
        StepScore {
            hit,
            iou,
            insertion: ins,
            deletion: ins.map(|v| 1.0 - v),
        }
    }

    #[test]
    fn bands_are_thirds_of_the_schedule() {
        let b: Vec<&str> = (0..10).map(|i| band(i, 10)).collect();
        assert_eq!(
            b,
            [
                "early", "early", "early", "early", "middle", "middle", "middle", "late", "late", "late"
            ]
        );
        assert_eq!(band(0, 1), "early");
    }

    #[test]
    fn the_table_counts_what_it_says() {
        let case = |hits: [bool; 3]| SaliencyCase {
            index: 0,
            caption: "a red circle".into(),
            seed: 0,
            methods: vec![
                MethodSteps {
                    method: "rise".into(),
                    steps: hits.iter().map(|&h| score(h, if h { 0.5 } else { 0.1 }, Some(0.6))).collect(),
                },
                MethodSteps {
                    method: "cam.mid_block.resnets.1".into(),
                    steps: hits.iter().map(|_| score(false, 0.0, None)).collect(),
                },
            ],
        };
        let rows = summarize(&[case([true, false, true]), case([true, true, false])], 3);
        let row = |m: &str, b: &str| rows.iter().find(|r| r.method == m && r.band == b).unwrap();
        assert_eq!(row("rise", "early").pointing, Rate { k: 2, n: 2 });
        assert_eq!(row("rise", "middle").pointing, Rate { k: 1, n: 2 });
        assert_eq!(row("rise", "all").pointing, Rate { k: 4, n: 6 });
        assert!((row("rise", "late").mean_iou - 0.3).abs() < 1e-6);
        assert_eq!(row("rise", "all").insertion, Some(0.6));
        assert_eq!(row("cam.mid_block.resnets.1", "all").insertion, None);
        assert_eq!(rows.len(), 8);
    }
}
