//! CLIP (transformers' `CLIPModel`) for the CLIP score and for CLIP image features.
//!
//! - The model: both towers of any Hugging Face CLIP folder or hub id (`config.json`,
//!   `model.safetensors`, the tokenizer, `preprocessor_config.json` or transformers 5's
//!   `processor_config.json`). The text tower is the same code as the SD text encoder
//!   (`model::clip`); the vision tower is the ViT of `CLIPVisionTransformer`.
//! - The CLIP score as torchmetrics 1.9 computes it: images through the model's image processor
//!   (transformers 5's default `CLIPImageProcessor`: torchvision's antialiased uint8 resize of the
//!   shortest edge, centre crop, rescale and normalise fused in f32), captions tokenized without
//!   truncation and then cut at `max_position_embeddings` (a caption longer than that loses its
//!   end-of-text token, as in torchmetrics), 100 x the cosine of the projected embeddings per
//!   pair, and the score = max(mean over pairs, 0): the clamp is applied to the mean, not per
//!   pair (torchmetrics' code; its docstring writes the clamp per pair).
//! - CLIP features for FID-style metrics (`--network clip`) as clean-fid's CLIP mode: the image
//!   resized to the model's input size by the clean protocol (PIL bicubic on float), /255, the
//!   CLIP mean/std, and the raw (not normalised) projected image embedding.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::MetricsError;
use super::extract::ImageSource;
use super::resize::{U8Filter, pil_bicubic, torchvision_u8};
use crate::model::clip::{Activation, ClipEncoder, ClipTextEncoder, EncoderShape, layer_norm};
use crate::model::config::TextEncoderConfig;
use crate::model::hub::{ModelSource, resolve_files};
use crate::model::tokenizer::ClipTokenizer;

/// torchmetrics' default CLIP-score model.
pub const DEFAULT_MODEL: &str = "openai/clip-vit-large-patch14";

/// The name of the shapes world's CLIP (`assets/shapes-metrics/clip`).
pub const SHAPES: &str = "shapes";

const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

fn err(e: impl std::fmt::Display) -> MetricsError {
    MetricsError::Numeric(e.to_string())
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> MetricsError {
    MetricsError::File(format!("{}: {e}", path.display()))
}

#[derive(Debug, Clone, Deserialize)]
struct VisionConfig {
    #[serde(default = "VisionConfig::d_hidden")]
    hidden_size: usize,
    #[serde(default = "VisionConfig::d_inter")]
    intermediate_size: usize,
    #[serde(default = "VisionConfig::d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "VisionConfig::d_heads")]
    num_attention_heads: usize,
    #[serde(default = "VisionConfig::d_image")]
    image_size: usize,
    #[serde(default = "VisionConfig::d_patch")]
    patch_size: usize,
    #[serde(default = "VisionConfig::d_act")]
    hidden_act: String,
    #[serde(default = "VisionConfig::d_eps")]
    layer_norm_eps: f64,
    #[serde(default = "VisionConfig::d_channels")]
    num_channels: usize,
}

// transformers' `CLIPVisionConfig` defaults.
impl VisionConfig {
    fn d_hidden() -> usize {
        768
    }
    fn d_inter() -> usize {
        3072
    }
    fn d_layers() -> usize {
        12
    }
    fn d_heads() -> usize {
        12
    }
    fn d_image() -> usize {
        224
    }
    fn d_patch() -> usize {
        32
    }
    fn d_act() -> String {
        "quick_gelu".into()
    }
    fn d_eps() -> f64 {
        1e-5
    }
    fn d_channels() -> usize {
        3
    }
}

#[derive(Debug, Clone, Deserialize)]
struct TextExtra {
    #[serde(default = "TextExtra::d_eos")]
    eos_token_id: u32,
}

impl TextExtra {
    fn d_eos() -> u32 {
        49407
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: Option<String>,
    text_config: serde_json::Value,
    vision_config: VisionConfig,
    #[serde(default = "RawConfig::d_projection")]
    projection_dim: usize,
}

impl RawConfig {
    fn d_projection() -> usize {
        512
    }
}

/// transformers' `size` / `crop_size`: an int, {"shortest_edge"}, or {"height", "width"}.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SizeSpec {
    ShortestEdge(usize),
    Exact { height: usize, width: usize },
}

impl SizeSpec {
    fn parse(v: &serde_json::Value, int_means_shortest: bool) -> Option<Self> {
        if let Some(n) = v.as_u64() {
            let n = n as usize;
            return Some(if int_means_shortest {
                SizeSpec::ShortestEdge(n)
            } else {
                SizeSpec::Exact { height: n, width: n }
            });
        }
        if let Some(n) = v.get("shortest_edge").and_then(|n| n.as_u64()) {
            if v.get("longest_edge").is_some() {
                return None;
            }
            return Some(SizeSpec::ShortestEdge(n as usize));
        }
        match (v.get("height").and_then(|n| n.as_u64()), v.get("width").and_then(|n| n.as_u64())) {
            (Some(h), Some(w)) => Some(SizeSpec::Exact {
                height: h as usize,
                width: w as usize,
            }),
            _ => None,
        }
    }
}

/// The image processor's steps, read from the model folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    resize: Option<(SizeSpec, U8Filter)>,
    crop: Option<(usize, usize)>,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
}

impl ImageProcessor {
    fn defaults(image_size: usize) -> Self {
        Self {
            resize: Some((SizeSpec::ShortestEdge(image_size), U8Filter::Bicubic)),
            crop: Some((image_size, image_size)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((OPENAI_MEAN, OPENAI_STD)),
        }
    }

    fn load(root: &Path, image_size: usize) -> Result<Self, MetricsError> {
        let pre = root.join("preprocessor_config.json");
        let proc = root.join("processor_config.json");
        let json: serde_json::Value = if pre.is_file() {
            read_json(&pre)?
        } else if proc.is_file() {
            match read_json(&proc)?.get("image_processor") {
                Some(v) => v.clone(),
                None => return Ok(Self::defaults(image_size)),
            }
        } else {
            return Ok(Self::defaults(image_size));
        };
        let path = if pre.is_file() { pre } else { proc };
        let flag = |k: &str| json.get(k).and_then(|v| v.as_bool()).unwrap_or(true);
        let bad = |what: &str| file_err(&path, format!("unsupported image processor setting {what}"));
        let resize = if flag("do_resize") {
            let size = json
                .get("size")
                .map(|v| SizeSpec::parse(v, true).ok_or_else(|| bad(&format!("size {v}"))))
                .transpose()?
                .unwrap_or(SizeSpec::ShortestEdge(image_size));
            let filter = match json.get("resample").and_then(|v| v.as_u64()).unwrap_or(3) {
                2 => U8Filter::Bilinear,
                3 => U8Filter::Bicubic,
                other => return Err(bad(&format!("resample {other} (2 bilinear and 3 bicubic are supported)"))),
            };
            Some((size, filter))
        } else {
            None
        };
        let crop = if flag("do_center_crop") {
            match json.get("crop_size").map(|v| SizeSpec::parse(v, false)) {
                None => Some((image_size, image_size)),
                Some(Some(SizeSpec::Exact { height, width })) => Some((height, width)),
                Some(_) => return Err(bad("crop_size")),
            }
        } else {
            None
        };
        let rescale = flag("do_rescale").then(|| json.get("rescale_factor").and_then(|v| v.as_f64()).unwrap_or(1.0 / 255.0));
        let triple = |k: &str, d: [f32; 3]| -> Result<[f32; 3], MetricsError> {
            match json.get(k) {
                None => Ok(d),
                Some(v) => {
                    let xs: Vec<f32> = serde_json::from_value(v.clone()).map_err(|_| bad(k))?;
                    <[f32; 3]>::try_from(xs.as_slice()).map_err(|_| bad(k))
                }
            }
        };
        let normalize = if flag("do_normalize") {
            Some((triple("image_mean", OPENAI_MEAN)?, triple("image_std", OPENAI_STD)?))
        } else {
            None
        };
        Ok(Self {
            resize,
            crop,
            rescale,
            normalize,
        })
    }

    /// `pixel_values` of one RGB image (interleaved u8): [3, h, w] planes, and (h, w).
    pub fn apply(&self, rgb: &[u8], w: usize, h: usize) -> (Vec<f32>, usize, usize) {
        let (mut img, mut w, mut h) = (rgb.to_vec(), w, h);
        if let Some((size, filter)) = self.resize {
            let (oh, ow) = match size {
                SizeSpec::Exact { height, width } => (height, width),
                SizeSpec::ShortestEdge(s) => {
                    // transformers' get_resize_output_image_size(default_to_square=False).
                    let (short, long) = if w <= h { (w, h) } else { (h, w) };
                    let new_long = (s as f64 * long as f64 / short as f64) as usize;
                    if w <= h { (new_long, s) } else { (s, new_long) }
                }
            };
            if (ow, oh) != (w, h) {
                img = torchvision_u8(&img, w, h, ow, oh, filter);
                (w, h) = (ow, oh);
            }
        }
        if let Some((ch, cw)) = self.crop {
            // Centre crop; a crop larger than the image pads with zeros first (left/top get
            // the smaller half), as the torchvision backend does.
            let (pw, ph) = (cw.max(w), ch.max(h));
            let (pl, pt) = ((pw - w) / 2, (ph - h) / 2);
            let top = (ph - ch) / 2;
            let left = (pw - cw) / 2;
            let mut out = vec![0u8; ch * cw * 3];
            for y in 0..ch {
                for x in 0..cw {
                    let (sy, sx) = (y + top, x + left);
                    if sy >= pt && sy < pt + h && sx >= pl && sx < pl + w {
                        let s = ((sy - pt) * w + (sx - pl)) * 3;
                        out[(y * cw + x) * 3..(y * cw + x) * 3 + 3].copy_from_slice(&img[s..s + 3]);
                    }
                }
            }
            (img, w, h) = (out, cw, ch);
        }
        // Rescale and normalise fused as transformers does: mean and std (f32) times
        // 1 / rescale_factor, then (x - mean) / std in f32; rescale alone is x * factor.
        let value = |x: f32, c: usize| -> f32 {
            match (self.rescale, self.normalize) {
                (Some(r), Some((m, s))) => {
                    let k = (1.0 / r) as f32;
                    (x - m[c] * k) / (s[c] * k)
                }
                (None, Some((m, s))) => (x - m[c]) / s[c],
                (Some(r), None) => x * r as f32,
                (None, None) => x,
            }
        };
        let mut planes = Vec::with_capacity(3 * w * h);
        for c in 0..3 {
            planes.extend((0..w * h).map(|i| value(img[i * 3 + c] as f32, c)));
        }
        (planes, h, w)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_err(path, e))
}

struct VisionTower {
    patch_embedding: candle_nn::Conv2d,
    class_embedding: Tensor,
    position_embedding: Embedding,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
}

impl VisionTower {
    fn new(vb: VarBuilder, c: &VisionConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        let emb = vb.pp("embeddings");
        let positions = (c.image_size / c.patch_size).pow(2) + 1;
        let conv = candle_nn::Conv2dConfig {
            stride: c.patch_size,
            ..Default::default()
        };
        let shape = EncoderShape {
            hidden: d,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            activation: Activation::parse(&c.hidden_act).unwrap_or(Activation::GeluTanh),
        };
        Ok(Self {
            patch_embedding: candle_nn::conv2d_no_bias(c.num_channels, d, c.patch_size, conv, emb.pp("patch_embedding"))?,
            class_embedding: emb.get(d, "class_embedding")?,
            position_embedding: candle_nn::embedding(positions, d, emb.pp("position_embedding"))?,
            // transformers' own (misspelt) name.
            pre_layrnorm: layer_norm(d, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: ClipEncoder::new(vb.pp("encoder"), &shape)?,
            post_layernorm: layer_norm(d, c.layer_norm_eps, vb.pp("post_layernorm"))?,
        })
    }

    /// The pooled output (post-layernorm class token) of pixel values [B, 3, S, S].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let patches = self.patch_embedding.forward(x)?.flatten_from(2)?.transpose(1, 2)?;
        let d = patches.dim(2)?;
        let cls = self.class_embedding.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let xs = Tensor::cat(&[&cls, &patches.contiguous()?], 1)?;
        let n = xs.dim(1)?;
        let ids = Tensor::arange(0u32, n as u32, x.device())?;
        let xs = xs.broadcast_add(&self.position_embedding.forward(&ids)?.unsqueeze(0)?)?;
        let xs = self.pre_layrnorm.forward(&xs)?;
        let xs = self.encoder.forward(xs, None)?;
        self.post_layernorm.forward(&xs.i((.., 0, ..))?)
    }
}

/// A text caption's embedding and whether it was cut at the position limit.
pub struct TextEmbedding {
    pub embedding: Vec<f32>,
    pub truncated: bool,
}

/// Both CLIP towers, the tokenizer and the image processor of one model.
pub struct Clip {
    text: ClipTextEncoder,
    text_projection: Linear,
    eos_token_id: u32,
    max_positions: usize,
    vision: VisionTower,
    visual_projection: Linear,
    tokenizer: ClipTokenizer,
    pub processor: ImageProcessor,
    /// The vision tower's input size.
    pub image_size: usize,
    pub projection_dim: usize,
    /// The folder or hub id it was loaded from.
    pub name: String,
    device: Device,
}

const REQUIRED: &[&str] = &["config.json"];
const OPTIONAL: &[&str] = &[
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    "model.safetensors.index.json",
];

impl Clip {
    /// Load a CLIP folder or hub id (fetched into the shared Hugging Face cache).
    /// `shapes` is the shapes world's CLIP shipped in `assets/shapes-metrics/clip`.
    pub fn load(spec: &str, device: &Device) -> Result<Self, MetricsError> {
        if spec == SHAPES {
            return Self::from_dir(&crate::shapes_clip_path(), SHAPES, device);
        }
        let source = ModelSource::parse(spec).map_err(|e| MetricsError::File(e.to_string()))?;
        let root = resolve_files(&source, REQUIRED, OPTIONAL).map_err(|e| MetricsError::File(e.to_string()))?;
        // The name feature files record: a hub id as given, a local folder by its own name (so
        // the same model in two places compares).
        let name = match &source {
            ModelSource::Hub { owner, name, .. } => format!("{owner}/{name}"),
            ModelSource::Local(p) => p
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| spec.to_owned()),
        };
        Self::from_dir(&root, &name, device)
    }

    fn from_dir(root: &Path, name: &str, device: &Device) -> Result<Self, MetricsError> {
        let cfg_path = root.join("config.json");
        if !cfg_path.is_file() {
            return Err(MetricsError::File(format!(
                "{}: not a CLIP model folder (no config.json; the CLIP score needs a transformers CLIPModel folder or hub id, e.g. {DEFAULT_MODEL})",
                root.display()
            )));
        }
        let raw: RawConfig = serde_json::from_value(read_json(&cfg_path)?)
            .map_err(|e| file_err(&cfg_path, format!("not a CLIP config (text_config and vision_config): {e}")))?;
        if let Some(t) = &raw.model_type
            && t != "clip"
        {
            return Err(file_err(&cfg_path, format!("model_type is '{t}', not 'clip'")));
        }
        let text_cfg: TextEncoderConfig =
            serde_json::from_value(raw.text_config.clone()).map_err(|e| file_err(&cfg_path, format!("text_config: {e}")))?;
        let extra: TextExtra =
            serde_json::from_value(raw.text_config.clone()).map_err(|e| file_err(&cfg_path, format!("text_config: {e}")))?;
        let v = &raw.vision_config;
        for (what, act) in [("text_config", &text_cfg.hidden_act), ("vision_config", &v.hidden_act)] {
            if Activation::parse(act).is_none() {
                return Err(file_err(&cfg_path, format!("{what}.hidden_act '{act}' is not supported")));
            }
        }
        if v.patch_size == 0 || v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return Err(file_err(&cfg_path, "vision_config: bad patch_size or num_attention_heads"));
        }
        let files = crate::model::loader::weight_files(root, "model", DType::F32).map_err(|e| MetricsError::File(e.to_string()))?;
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device) }.map_err(|e| file_err(root, e))?;
        let missing = |e: candle_core::Error| file_err(root, format!("not a usable CLIPModel checkpoint: {e}"));
        let text = ClipTextEncoder::new(vb.clone(), &text_cfg).map_err(missing)?;
        let text_projection =
            candle_nn::linear_no_bias(text_cfg.hidden_size, raw.projection_dim, vb.pp("text_projection")).map_err(missing)?;
        let vision = VisionTower::new(vb.pp("vision_model"), v).map_err(missing)?;
        let visual_projection =
            candle_nn::linear_no_bias(v.hidden_size, raw.projection_dim, vb.pp("visual_projection")).map_err(missing)?;
        let tokenizer = ClipTokenizer::from_dir(root).map_err(|e| MetricsError::File(e.to_string()))?;
        let processor = ImageProcessor::load(root, v.image_size)?;
        Ok(Self {
            text,
            text_projection,
            eos_token_id: extra.eos_token_id,
            max_positions: text_cfg.max_position_embeddings,
            vision,
            visual_projection,
            tokenizer,
            processor,
            image_size: v.image_size,
            projection_dim: raw.projection_dim,
            name: name.to_owned(),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The projected image embeddings of pixel values [B, 3, S, S].
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor, MetricsError> {
        self.vision
            .forward(pixels)
            .and_then(|p| self.visual_projection.forward(&p))
            .map_err(err)
    }

    /// The ids the model sees for `caption`: bos, tokens, eos, cut at the position limit.
    pub fn caption_ids(&self, caption: &str) -> (Vec<u32>, bool) {
        let mut ids = self.tokenizer.encode_untruncated(caption);
        let truncated = ids.len() > self.max_positions;
        ids.truncate(self.max_positions);
        (ids, truncated)
    }

    /// The projected text embedding of `caption` (pooled at the first end-of-text token, or at
    /// the highest id for configs with the legacy `eos_token_id` 2, as transformers does; a cut
    /// caption without one pools position 0).
    pub fn text_embedding(&self, caption: &str) -> Result<TextEmbedding, MetricsError> {
        let (ids, truncated) = self.caption_ids(caption);
        let pos = if self.eos_token_id == 2 {
            // torch's argmax: the first maximum.
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&i| i == max).unwrap_or(0)
        } else {
            ids.iter().position(|&i| i == self.eos_token_id).unwrap_or(0)
        };
        let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &self.device).map_err(err)?;
        let hidden = self.text.forward(&t).map_err(err)?;
        let pooled = hidden.i((.., pos, ..)).map_err(err)?;
        let e = self.text_projection.forward(&pooled).map_err(err)?;
        Ok(TextEmbedding {
            embedding: e.flatten_all().and_then(|t| t.to_vec1()).map_err(err)?,
            truncated,
        })
    }

    /// clean-fid's CLIP input for one RGB image: [3, S, S], PIL bicubic on float to the model's
    /// size, clipped, /255, CLIP mean/std.
    pub fn feature_input(&self, rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
        let s = self.image_size;
        let mut out = Vec::with_capacity(3 * s * s);
        for c in 0..3 {
            let plane: Vec<f32> = (0..w * h).map(|i| rgb[i * 3 + c] as f32).collect();
            let r = pil_bicubic(&plane, w, h, s, s);
            out.extend(
                r.into_iter()
                    .map(|v| (v.clamp(0.0, 255.0) / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c]),
            );
        }
        out
    }
}

/// 100 x cos(a, b).
pub fn score(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    100.0 * dot / (na * nb)
}

/// What `clip_score` computed.
#[derive(Debug, Clone)]
pub struct ClipScores {
    /// (image index, 100 x cos) per (image, caption) pair, in input order; skipped images are
    /// absent.
    pub scores: Vec<(usize, f64)>,
    /// max(mean of `scores`, 0), torchmetrics' `CLIPScore`.
    pub clip_score: f64,
    /// Captions cut at the model's position limit.
    pub truncated: usize,
    pub skipped: Vec<(String, String)>,
}

/// The CLIP score of `images` paired with `captions` (the same length). `progress(done, total)`
/// after each batch; `cancel` stops after the current batch (then `Ok(None)`).
pub fn clip_score<S: ImageSource + ?Sized>(
    clip: &Clip,
    images: &S,
    captions: &[String],
    batch: usize,
    cancel: &std::sync::atomic::AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Option<ClipScores>, MetricsError> {
    let n = images.count();
    if n != captions.len() {
        return Err(MetricsError::Dimensions(format!("{n} images but {} captions", captions.len())));
    }
    let mut text_cache: std::collections::HashMap<&str, TextEmbedding> = std::collections::HashMap::new();
    let mut out = ClipScores {
        scores: Vec::with_capacity(n),
        clip_score: 0.0,
        truncated: 0,
        skipped: Vec::new(),
    };
    let batch = batch.max(1);
    let order: Vec<usize> = (0..n).collect();
    for (bi, chunk) in order.chunks(batch).enumerate() {
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        let mut pixels = Vec::new();
        let mut kept = Vec::new();
        let mut shape = None;
        for &i in chunk {
            match images.rgb(i) {
                Ok((rgb, w, h)) => {
                    let (px, ph, pw) = clip.processor.apply(&rgb, w, h);
                    if shape.is_some_and(|s| s != (ph, pw)) {
                        return Err(MetricsError::Dimensions(
                            "the image processor gives different sizes for different images (no centre crop): CLIP needs one size".into(),
                        ));
                    }
                    shape = Some((ph, pw));
                    pixels.extend(px);
                    kept.push(i);
                }
                Err(e) => out.skipped.push((images.name(i), e)),
            }
        }
        if let Some((ph, pw)) = shape {
            let x = Tensor::from_vec(pixels, (kept.len(), 3, ph, pw), &clip.device).map_err(err)?;
            let e = clip.image_embeds(&x)?;
            let rows: Vec<Vec<f32>> = e.to_vec2().map_err(err)?;
            for (row, &i) in rows.iter().zip(&kept) {
                let cap = captions[i].as_str();
                if !text_cache.contains_key(cap) {
                    let t = clip.text_embedding(cap)?;
                    text_cache.insert(cap, t);
                }
                let t = &text_cache[cap];
                if t.truncated {
                    out.truncated += 1;
                }
                out.scores.push((i, score(row, &t.embedding)));
            }
        }
        progress((bi * batch + chunk.len()).min(n), n);
    }
    if out.scores.is_empty() {
        return Err(MetricsError::File(format!("none of the {n} images could be read")));
    }
    let mean = out.scores.iter().map(|(_, s)| s).sum::<f64>() / out.scores.len() as f64;
    out.clip_score = mean.max(0.0);
    Ok(Some(out))
}
