//! The shapes world's feature network (`--network shapes`): a small CNN classifier of rendered
//! scenes trained by this project (`tools/shapes/train_metrics.py featnet`, shipped in
//! `assets/shapes-metrics/featnet`). Convolutions (3x3, padding 1, batch norm folded in) with
//! ReLU, a global average pool giving the 256-d feature vector of FID / KID / precision-recall,
//! and linear heads: object count, the larger object's colour / shape / size / grid cell, the
//! other object's colour / shape / size (or none), and the larger object's colour x shape (24
//! classes: the logits of the Inception Score).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
use serde::Deserialize;

use super::MetricsError;
use super::resize::pil_bicubic;

#[derive(Debug, Clone, Deserialize)]
struct ConvSpec {
    #[serde(rename = "in")]
    cin: usize,
    out: usize,
    stride: usize,
}

#[derive(Debug, Clone, Deserialize)]
struct HeadSpec {
    name: String,
    classes: usize,
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    architecture: String,
    input_size: usize,
    convs: Vec<ConvSpec>,
    features: usize,
    heads: Vec<HeadSpec>,
    logits_head: String,
}

/// What one forward pass gives: features [B, d], and every head's logits [B, classes].
pub struct ShapesOutput {
    pub features: Tensor,
    pub heads: HashMap<String, Tensor>,
}

pub struct ShapesNet {
    convs: Vec<Conv2d>,
    heads: Vec<(String, Linear)>,
    logits_head: String,
    pub input_size: usize,
    pub features: usize,
    pub classes: usize,
    device: Device,
}

fn bad(path: &Path, e: impl std::fmt::Display) -> MetricsError {
    MetricsError::File(format!("{}: {e}", path.display()))
}

impl ShapesNet {
    /// Loads `config.json` + `model.safetensors` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, MetricsError> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(bad(dir, "not a shapes feature-network folder (config.json and model.safetensors)"));
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| bad(&cfg_path, e))?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| bad(&cfg_path, e))?;
        if cfg.architecture != "shapes-featnet" {
            return Err(bad(&cfg_path, format!("architecture '{}' is not shapes-featnet", cfg.architecture)));
        }
        let weights = dir.join("model.safetensors");
        let vb =
            unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }.map_err(|e| bad(&weights, e))?;
        let missing = |e: candle_core::Error| bad(&weights, format!("not the shapes feature network: {e}"));
        let convs = cfg
            .convs
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let conf = Conv2dConfig {
                    padding: 1,
                    stride: c.stride,
                    ..Default::default()
                };
                candle_nn::conv2d(c.cin, c.out, 3, conf, vb.pp("convs").pp(k))
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(missing)?;
        let heads = cfg
            .heads
            .iter()
            .map(|h| {
                Ok((
                    h.name.clone(),
                    candle_nn::linear(cfg.features, h.classes, vb.pp("heads").pp(&h.name))?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(missing)?;
        let classes = cfg
            .heads
            .iter()
            .find(|h| h.name == cfg.logits_head)
            .map(|h| h.classes)
            .ok_or_else(|| bad(&cfg_path, format!("no head named {}", cfg.logits_head)))?;
        Ok(Self {
            convs,
            heads,
            logits_head: cfg.logits_head,
            input_size: cfg.input_size,
            features: cfg.features,
            classes,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The network input of one RGB image: [3, S, S], resized (clean-fid's PIL bicubic on
    /// float, clipped) when it is not S x S, scaled to x / 127.5 - 1.
    pub fn input(&self, rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
        let s = self.input_size;
        let mut out = Vec::with_capacity(3 * s * s);
        for c in 0..3 {
            let plane: Vec<f32> = (0..w * h).map(|i| rgb[i * 3 + c] as f32).collect();
            let plane = if (w, h) == (s, s) {
                plane
            } else {
                pil_bicubic(&plane, w, h, s, s).into_iter().map(|v| v.clamp(0.0, 255.0)).collect()
            };
            out.extend(plane.into_iter().map(|v| v / 127.5 - 1.0));
        }
        out
    }

    /// Features and every head's logits of `x` [B, 3, S, S].
    pub fn forward(&self, x: &Tensor) -> Result<ShapesOutput, MetricsError> {
        let run = || -> candle_core::Result<ShapesOutput> {
            let mut h = x.clone();
            for conv in &self.convs {
                h = conv.forward(&h)?.relu()?;
            }
            let features = h.mean(D::Minus1)?.mean(D::Minus1)?;
            let mut heads = HashMap::new();
            for (name, l) in &self.heads {
                heads.insert(name.clone(), l.forward(&features)?);
            }
            Ok(ShapesOutput { features, heads })
        };
        run().map_err(|e| MetricsError::Numeric(format!("shapes network: {e}")))
    }

    /// The logits the Inception Score uses (the larger object's colour x shape).
    pub fn logits<'a>(&self, out: &'a ShapesOutput) -> &'a Tensor {
        &out.heads[&self.logits_head]
    }
}
