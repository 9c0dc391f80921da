//! Interpolation: frames along a path between two initial noises (seeds or latent files), two
//! images encoded by the VAE, or two prompts' conditionings.
//!
//! Noise and prompt paths give a full generation per frame from the interpolated start (the
//! same pipeline run as any other, with `InitLatents::Values` or `RunConfig::embeddings`);
//! image paths decode the interpolated latents (posterior mean times the scaling factor) with
//! no denoising. Slerp by default, falling back to lerp when the endpoints are nearly parallel
//! (as the common helper does); lerp on request. The report has the distance between
//! consecutive frames (images in [0, 1] units and latents), its maximum over its mean, and the
//! norm of the start vector along the path for both slerp and lerp (lerp's low-norm dip
//! between two noises is what slerp avoids).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::compare::{generate, image_of};
use super::{ExperimentEvent, Progress, Stop};
use crate::analysis::probe::{self, PathKind, Smoothness};
use crate::model::StableDiffusion;
use crate::pipeline::{self, InitLatents, PromptEmbeddings, RunConfig, RunError};
use crate::sampling::SamplerKind;
use crate::sampling::rng::TorchRng;
use crate::trace::{RgbImage, Run};
use crate::types::CaptureMode;

/// One end of an interpolation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Endpoint {
    /// The initial noise of this seed (the torch-compatible generator, as a run draws it).
    Seed(u64),
    /// Initial noise from a safetensors file (`latents` [1, C, h, w], unit variance).
    Latents(PathBuf),
    /// An image file, encoded by the VAE.
    Image(PathBuf),
    /// A prompt, encoded by the text encoder.
    Prompt(String),
}

/// What is interpolated (both ends must be of one kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    Noise,
    Image,
    Prompt,
}

impl Endpoint {
    pub fn space(&self) -> Space {
        match self {
            Endpoint::Seed(_) | Endpoint::Latents(_) => Space::Noise,
            Endpoint::Image(_) => Space::Image,
            Endpoint::Prompt(_) => Space::Prompt,
        }
    }

    /// Parses a command-line endpoint: `seed:N`, `latents:FILE`, `image:FILE`, `prompt:TEXT`,
    /// or without a prefix: a whole number is a seed, an existing `.safetensors` file latents,
    /// another existing file an image, anything else a prompt.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("an empty endpoint: give a seed, an image file, a latents file or a prompt".into());
        }
        if let Some((kind, rest)) = t.split_once(':') {
            match kind {
                "seed" => {
                    return rest
                        .trim()
                        .parse()
                        .map(Endpoint::Seed)
                        .map_err(|_| format!("'{rest}' is not a seed (a whole number)"));
                }
                "latents" => return Ok(Endpoint::Latents(PathBuf::from(rest))),
                "image" => return Ok(Endpoint::Image(PathBuf::from(rest))),
                "prompt" => return Ok(Endpoint::Prompt(rest.to_owned())),
                _ => {}
            }
        }
        if let Ok(seed) = t.parse::<u64>() {
            return Ok(Endpoint::Seed(seed));
        }
        let p = Path::new(t);
        if p.is_file() {
            return Ok(if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
                Endpoint::Latents(p.to_owned())
            } else {
                Endpoint::Image(p.to_owned())
            });
        }
        Ok(Endpoint::Prompt(t.to_owned()))
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoint::Seed(s) => format!("seed {s}"),
            Endpoint::Latents(p) => format!("latents {}", p.display()),
            Endpoint::Image(p) => format!("image {}", p.display()),
            Endpoint::Prompt(p) => format!("\"{p}\""),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterpolateSettings {
    pub from: Endpoint,
    pub to: Endpoint,
    /// Frames, both ends included (at least 2).
    pub frames: usize,
    pub path: PathKind,
    /// The prompt of noise interpolations (prompt interpolations take theirs from the ends).
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f32,
    pub sampler: Option<SamplerKind>,
    /// The seed of prompt interpolations (their initial noise), and of stochastic samplers.
    pub seed: u64,
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// Attention kept for every generated frame (the app's word overlay follows the frames).
    pub attention: CaptureMode,
}

impl Default for InterpolateSettings {
    fn default() -> Self {
        Self {
            from: Endpoint::Seed(0),
            to: Endpoint::Seed(1),
            frames: 16,
            path: PathKind::Slerp,
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 30,
            guidance: 5.0,
            sampler: None,
            seed: 0,
            height: None,
            width: None,
            attention: CaptureMode::Aggregate,
        }
    }
}

/// At most this many frames (each one a full generation).
pub const MAX_FRAMES: usize = 256;

impl InterpolateSettings {
    pub fn validate(&self) -> Result<Space, String> {
        let (a, b) = (self.from.space(), self.to.space());
        if a != b {
            return Err(format!(
                "both ends must be of one kind: {} is a {a:?} endpoint, {} a {b:?} one",
                self.from.describe(),
                self.to.describe()
            ));
        }
        if self.from == self.to {
            return Err(format!(
                "the two ends are identical ({}): nothing to interpolate",
                self.from.describe()
            ));
        }
        if !(2..=MAX_FRAMES).contains(&self.frames) {
            return Err(format!("frames: {} (expected 2 to {MAX_FRAMES})", self.frames));
        }
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(format!("guidance {}: expected a finite number >= 0", self.guidance));
        }
        Ok(a)
    }

    fn run_config(&self, prompt: &str) -> RunConfig {
        RunConfig {
            prompt: prompt.to_owned(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance: self.guidance,
            sampler: self.sampler,
            seed: self.seed,
            height: self.height,
            width: self.width,
            attention: self.attention,
            ..RunConfig::default()
        }
    }
}

/// One frame's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameReport {
    pub index: usize,
    /// Position on the path, 0 (from) .. 1 (to).
    pub t: f64,
    /// Norm of the start vector (the noise, the image latents or the prompt embedding) over
    /// the square root of its length.
    pub start_rms: f64,
    pub secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterpolateReport {
    pub model: String,
    pub settings: InterpolateSettings,
    pub space: Space,
    /// The path used: slerp, or lerp (asked for, or slerp's fallback for parallel ends).
    pub path_used: PathKind,
    pub complete: bool,
    pub frames: Vec<FrameReport>,
    /// Consecutive frames' images, values in [0, 1].
    pub image_smoothness: Option<Smoothness>,
    /// Consecutive frames' final latents (image paths: the interpolated latents).
    pub latent_smoothness: Option<Smoothness>,
    /// The start vector's RMS along the path, on slerp and on lerp (whatever was run).
    pub slerp_start_rms: Vec<f64>,
    pub lerp_start_rms: Vec<f64>,
}

/// One finished frame.
pub struct InterpFrame {
    pub index: usize,
    pub t: f64,
    pub image: RgbImage,
    /// The frame's generation (None for image interpolations, which only decode).
    pub run: Option<Run>,
}

/// An image file as RGB at `width` x `height`: a file of another size is centre-cropped to
/// that aspect ratio and resized (Lanczos3); the original size is returned then.
pub fn load_image(path: &Path, width: usize, height: usize) -> Result<(RgbImage, Option<(usize, usize)>), String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?.to_rgb8();
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    if (w0, h0) == (width, height) {
        return Ok((
            RgbImage {
                width,
                height,
                pixels: img.into_raw(),
            },
            None,
        ));
    }
    // Centre crop to the target aspect, then resize.
    let (cw, ch) = if w0 * height > h0 * width {
        ((h0 * width).div_ceil(height).min(w0), h0)
    } else {
        (w0, (w0 * height).div_ceil(width).min(h0))
    };
    let cropped = image::imageops::crop_imm(&img, ((w0 - cw) / 2) as u32, ((h0 - ch) / 2) as u32, cw as u32, ch as u32).to_image();
    let resized = image::imageops::resize(&cropped, width as u32, height as u32, image::imageops::FilterType::Lanczos3);
    Ok((
        RgbImage {
            width,
            height,
            pixels: resized.into_raw(),
        },
        Some((w0, h0)),
    ))
}

fn rms(v: &[f32]) -> f64 {
    probe::norm(v) / (v.len().max(1) as f64).sqrt()
}

/// The two start vectors and the shape of a frame's latents.
struct Ends {
    a: Vec<f32>,
    b: Vec<f32>,
    /// Prompt interpolation: the negative embedding and the embedding shape.
    prompt: Option<(usize, usize, Vec<f32>)>,
    /// SDXL prompt interpolation: both ends' pooled embeddings and the negative's.
    pooled: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

fn ends(sd: &StableDiffusion, s: &InterpolateSettings, space: Space) -> Result<(Ends, [usize; 3], (usize, usize)), RunError> {
    let geo = pipeline::geometry(sd, &s.run_config(""))?;
    let noise = |e: &Endpoint| -> Result<Vec<f32>, RunError> {
        match e {
            Endpoint::Seed(seed) => pipeline::initial_noise(&InitLatents::Seed, &mut TorchRng::new(*seed), geo.latent),
            Endpoint::Latents(p) => pipeline::read_init_latents(p, geo.latent),
            _ => unreachable!("validated: both ends are noises"),
        }
    };
    let ends = match space {
        Space::Noise => Ends {
            a: noise(&s.from)?,
            b: noise(&s.to)?,
            prompt: None,
            pooled: None,
        },
        Space::Image => {
            let encoder = sd.vae_encoder().map_err(|e| RunError::BadInput(format!("the VAE encoder: {e}")))?;
            let encode = |e: &Endpoint| -> Result<Vec<f32>, RunError> {
                let Endpoint::Image(p) = e else {
                    unreachable!("validated: both ends are images")
                };
                let (img, _) = load_image(p, geo.width, geo.height).map_err(RunError::BadInput)?;
                Ok(pipeline::encode_image(&encoder, &img)?.0)
            };
            Ends {
                a: encode(&s.from)?,
                b: encode(&s.to)?,
                prompt: None,
                pooled: None,
            }
        }
        Space::Prompt => {
            let guided = s.guidance > 1.0;
            let emb = |e: &Endpoint| -> Result<PromptEmbeddings, RunError> {
                let Endpoint::Prompt(p) = e else {
                    unreachable!("validated: both ends are prompts")
                };
                pipeline::encode_prompt(sd, p, &s.negative_prompt, guided, None)?.embeddings()
            };
            let (ea, eb) = (emb(&s.from)?, emb(&s.to)?);
            Ends {
                a: ea.positive,
                b: eb.positive,
                prompt: Some((ea.tokens, ea.dim, ea.negative)),
                pooled: (!ea.pooled.is_empty()).then_some((ea.pooled, eb.pooled, ea.negative_pooled)),
            }
        }
    };
    Ok((ends, geo.latent, (geo.width, geo.height)))
}

/// The interpolation: every frame in order, streamed as an [`InterpFrame`].
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &InterpolateSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(InterpolateReport, Option<Stop>), RunError> {
    let space = settings.validate().map_err(RunError::BadInput)?;
    let (ends, latent, _) = ends(sd, settings, space)?;
    let path_used = if settings.path == PathKind::Slerp && probe::nearly_parallel(&ends.a, &ends.b) {
        PathKind::Lerp
    } else {
        settings.path
    };
    let n = settings.frames;
    let starts = probe::path(&ends.a, &ends.b, n, settings.path);
    let other = probe::path(
        &ends.a,
        &ends.b,
        n,
        match settings.path {
            PathKind::Slerp => PathKind::Lerp,
            PathKind::Lerp => PathKind::Slerp,
        },
    );
    let (slerp_rms, lerp_rms): (Vec<f64>, Vec<f64>) = {
        let a: Vec<f64> = starts.iter().map(|v| rms(v)).collect();
        let b: Vec<f64> = other.iter().map(|v| rms(v)).collect();
        if settings.path == PathKind::Slerp { (a, b) } else { (b, a) }
    };
    let mut report = InterpolateReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        space,
        path_used,
        complete: false,
        frames: Vec::new(),
        image_smoothness: None,
        latent_smoothness: None,
        slerp_start_rms: slerp_rms,
        lerp_start_rms: lerp_rms,
    };
    let prompt = match &settings.from {
        Endpoint::Prompt(p) => p.clone(),
        _ => settings.prompt.clone(),
    };
    // SDXL: the pooled embeddings move along the same path.
    let (pooled_path, negative_pooled) = match &ends.pooled {
        Some((pa, pb, neg)) => (probe::path(pa, pb, n, settings.path), neg.clone()),
        None => (Vec::new(), Vec::new()),
    };
    let mut images: Vec<Vec<f32>> = Vec::new();
    let mut latents: Vec<Vec<f32>> = Vec::new();
    let mut stopped = None;
    for (i, start) in starts.into_iter().enumerate() {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            stopped = Some(Stop::Cancelled);
            break;
        }
        sink(ExperimentEvent::Progress(Progress {
            done: i,
            total: n,
            message: format!("frame {} of {n}", i + 1),
        }));
        let t = i as f64 / (n - 1) as f64;
        let t0 = std::time::Instant::now();
        let start_rms = rms(&start);
        let result = match space {
            Space::Image => pipeline::decode(sd, start.clone(), latent).map(|img| (img, None, start)),
            Space::Noise | Space::Prompt => {
                let mut cfg = settings.run_config(&prompt);
                match &ends.prompt {
                    None => cfg.init_latents = InitLatents::Values(start),
                    Some((tokens, dim, negative)) => {
                        cfg.embeddings = Some(PromptEmbeddings {
                            tokens: *tokens,
                            dim: *dim,
                            positive: start,
                            negative: negative.clone(),
                            pooled: pooled_path.get(i).cloned().unwrap_or_default(),
                            negative_pooled: negative_pooled.clone(),
                        })
                    }
                }
                generate(sd, model_spec, &cfg, cancel).map(|run| {
                    let last = run.steps.last().map(|s| s.latents.clone()).unwrap_or_default();
                    (image_of(&run).clone(), Some(run), last)
                })
            }
        };
        let (image, run, last) = match result {
            Ok(x) => x,
            Err(RunError::Cancelled { .. }) => {
                stopped = Some(Stop::Cancelled);
                break;
            }
            Err(e) => {
                stopped = Some(Stop::Failed(format!("frame {}: {e}", i + 1)));
                break;
            }
        };
        images.push(probe::unit_pixels(&image.pixels));
        latents.push(last);
        report.frames.push(FrameReport {
            index: i,
            t,
            start_rms,
            secs: t0.elapsed().as_secs_f64(),
        });
        sink(ExperimentEvent::InterpFrame(Box::new(InterpFrame { index: i, t, image, run })));
    }
    if images.len() >= 2 {
        report.image_smoothness = Some(probe::smoothness(&images));
        report.latent_smoothness = Some(probe::smoothness(&latents));
    }
    report.complete = stopped.is_none();
    sink(ExperimentEvent::Progress(Progress {
        done: report.frames.len(),
        total: n,
        message: String::new(),
    }));
    Ok((report, stopped))
}

/// The report as text (the CLI prints it, the app shows it).
pub fn render_report(r: &InterpolateReport) -> String {
    let mut s = format!(
        "{} frames, {} interpolation ({}{})\n",
        r.frames.len(),
        match r.space {
            Space::Noise => "initial-noise",
            Space::Image => "image-latent",
            Space::Prompt => "prompt-embedding",
        },
        r.path_used.as_str(),
        if r.path_used != r.settings.path {
            ", slerp fell back: the ends are nearly parallel"
        } else {
            ""
        }
    );
    if let (Some(img), Some(lat)) = (&r.image_smoothness, &r.latent_smoothness) {
        s += &format!(
            "consecutive frames: image RMS mean {:.4}, max {:.4} (max/mean {:.2}); latent RMS mean {:.4}, max {:.4} (max/mean {:.2})\n",
            img.mean, img.max, img.max_over_mean, lat.mean, lat.max, lat.max_over_mean
        );
    }
    let mid = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
    let ends = |v: &[f64]| (v.first().copied().unwrap_or(0.0) + v.last().copied().unwrap_or(0.0)) / 2.0;
    for (name, v) in [("slerp", &r.slerp_start_rms), ("lerp", &r.lerp_start_rms)] {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        s += &format!(
            "start RMS on {name}: ends {:.4}, middle {:.4}, minimum {:.4} ({:.0}% of the ends)\n",
            ends(v),
            mid(v),
            min,
            if ends(v) > 0.0 { 100.0 * min / ends(v) } else { 0.0 }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("42").unwrap(), Endpoint::Seed(42));
        assert_eq!(Endpoint::parse("seed:7").unwrap(), Endpoint::Seed(7));
        assert!(Endpoint::parse("seed:x").unwrap_err().contains("not a seed"));
        assert_eq!(Endpoint::parse("a red circle").unwrap(), Endpoint::Prompt("a red circle".into()));
        assert_eq!(Endpoint::parse("image:a.png").unwrap(), Endpoint::Image("a.png".into()));
        assert!(Endpoint::parse("  ").is_err());
        let s = InterpolateSettings {
            from: Endpoint::Seed(1),
            to: Endpoint::Prompt("x".into()),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("one kind"));
        let s = InterpolateSettings {
            to: Endpoint::Seed(0),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("identical"));
        let s = InterpolateSettings {
            frames: 1,
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("frames"));
    }
}
