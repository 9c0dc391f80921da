//! The measurement harness of `bench` (binary-side: it builds UNets directly, which is why it
//! may use candle). UNet timing with random weights (no checkpoint needed): our UNet with attention capture
//! off / aggregate / full, and candle-transformers' UNet on the very same weight tensors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use candle_transformers::models::stable_diffusion::unet_2d;

use diffusion_scope::model::config::UNetConfig;
use diffusion_scope::model::unet::{AttnProbe, UNet};
use diffusion_scope::types::CaptureMode;

/// Hands out random tensors by name and remembers them, so two models built from it share
/// exactly the same weights. Norm scales are 1, biases 0, other weights N(0, 1/fan_in).
struct RandomWeights {
    tensors: Mutex<HashMap<String, Tensor>>,
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut map = self
            .tensors
            .lock()
            .map_err(|_| candle_core::Error::Msg("weights lock poisoned".into()))?;
        if let Some(t) = map.get(name) {
            if t.shape() != &s {
                return Err(candle_core::Error::Msg(format!("{name}: requested {s:?}, have {:?}", t.shape())));
            }
            return t.to_dtype(dtype);
        }
        let dims = s.dims();
        let is_norm = name.contains("norm");
        let t = if name.ends_with("bias") {
            Tensor::zeros(&s, DType::F32, dev)?
        } else if is_norm && dims.len() == 1 {
            Tensor::ones(&s, DType::F32, dev)?
        } else {
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            (Tensor::randn(0f32, 1f32, &s, dev)? / (fan_in as f64).sqrt())?
        };
        map.insert(name.to_owned(), t.clone());
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        let map = self
            .tensors
            .lock()
            .map_err(|_| candle_core::Error::Msg("weights lock poisoned".into()))?;
        map.get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?
            .to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.lock().map(|m| m.contains_key(name)).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Ours(CaptureMode),
    CandleTransformers,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::Ours(CaptureMode::None) => "ours, capture off",
            Variant::Ours(CaptureMode::Aggregate) => "ours, capture aggregate",
            Variant::Ours(CaptureMode::Full) => "ours, capture full",
            Variant::CandleTransformers => "candle-transformers UNet",
        }
    }
}

pub struct BenchSetup {
    ours: UNet,
    theirs: unet_2d::UNet2DConditionModel,
    sample: Tensor,
    context: Tensor,
    layer_sizes: Vec<(usize, usize)>,
}

/// candle-transformers' own SD 1.5 UNet config (its `StableDiffusionConfig::v1_5` keeps the
/// field private, so the values are restated from it here).
fn candle_sd15_config() -> unet_2d::UNet2DConditionModelConfig {
    let bc = |out_channels, use_cross_attn| unet_2d::BlockConfig {
        out_channels,
        use_cross_attn,
        attention_head_dim: 8,
    };
    unet_2d::UNet2DConditionModelConfig {
        blocks: vec![bc(320, Some(1)), bc(640, Some(1)), bc(1280, Some(1)), bc(1280, None)],
        center_input_sample: false,
        cross_attention_dim: 768,
        downsample_padding: 1,
        flip_sin_to_cos: true,
        freq_shift: 0.,
        layers_per_block: 2,
        mid_block_scale_factor: 1.,
        norm_eps: 1e-5,
        norm_num_groups: 32,
        sliced_attention_size: None,
        use_linear_projection: false,
    }
}

/// Builds both UNets on the SD 1.5 config with shared random weights, for `size`x`size`
/// images (latents size/8) and a CFG batch of 2.
pub fn setup(size: usize, device: &Device, dtype: DType) -> Result<BenchSetup> {
    let backend = RandomWeights {
        tensors: Mutex::new(HashMap::new()),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    let cfg = UNetConfig::sd15();
    let ours = UNet::new(vb.clone(), &cfg)?;
    let theirs = unet_2d::UNet2DConditionModel::new(vb, 4, 4, false, candle_sd15_config())?;
    let l = size / 8;
    let sample = Tensor::randn(0f32, 1f32, (2, 4, l, l), device)?.to_dtype(dtype)?;
    let context = Tensor::randn(0f32, 1f32, (2, 77, 768), device)?.to_dtype(dtype)?;
    let layer_sizes = ours
        .attn_layers()
        .iter()
        .map(|a| (0..a.level).fold((l, l), |(h, w), _| (h.div_ceil(2), w.div_ceil(2))))
        .collect();
    Ok(BenchSetup {
        ours,
        theirs,
        sample,
        context,
        layer_sizes,
    })
}

impl BenchSetup {
    pub fn attn_layers(&self) -> usize {
        self.layer_sizes.len()
    }

    /// One timed forward pass (including, for capture modes, bringing the maps to the host as
    /// the denoising loop does). Returns seconds.
    pub fn time(&self, variant: Variant, timestep: f64) -> Result<f64> {
        let t0 = Instant::now();
        let out = match variant {
            Variant::Ours(mode) => {
                let mut probe = AttnProbe::new(mode, 1);
                let out = self.ours.forward(&self.sample, timestep, &self.context, &mut probe)?;
                let maps = diffusion_scope::pipeline::attention_to_maps(probe, mode, &|i| {
                    let (h, w) = self.layer_sizes[i];
                    (format!("layer{i}"), h, w)
                });
                maps.map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                out
            }
            Variant::CandleTransformers => self.theirs.forward(&self.sample, timestep, &self.context)?,
        };
        // Force the result (lazy backends) before stopping the clock.
        let _ = out.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Max |ours - theirs| on the same input, to show the comparison is like for like.
    pub fn max_abs_diff(&self) -> Result<f32> {
        let a = self.ours.forward(&self.sample, 500.0, &self.context, &mut AttnProbe::off())?;
        let b = self.theirs.forward(&self.sample, 500.0, &self.context)?;
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()
    }
}

/// Our UNet alone on SDXL base's config with random weights (candle-transformers' UNet has no
/// text_time conditioning to compare with): a CFG batch of 2 at `size`x`size` pixels.
pub struct XlSetup {
    ours: UNet,
    sample: Tensor,
    context: Tensor,
    text_embeds: Tensor,
    time_ids: Tensor,
    layer_sizes: Vec<(usize, usize)>,
}

pub fn setup_xl(size: usize, device: &Device, dtype: DType) -> Result<XlSetup> {
    let backend = RandomWeights {
        tensors: Mutex::new(HashMap::new()),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    let ours = UNet::new(vb, &UNetConfig::sdxl())?;
    let l = size / 8;
    let f = size as f32;
    Ok(XlSetup {
        sample: Tensor::randn(0f32, 1f32, (2, 4, l, l), device)?.to_dtype(dtype)?,
        context: Tensor::randn(0f32, 1f32, (2, 77, 2048), device)?.to_dtype(dtype)?,
        text_embeds: Tensor::randn(0f32, 1f32, (2, 1280), device)?.to_dtype(dtype)?,
        time_ids: Tensor::new(&[[f, f, 0.0, 0.0, f, f], [f, f, 0.0, 0.0, f, f]], device)?.to_dtype(dtype)?,
        layer_sizes: ours
            .attn_layers()
            .iter()
            .map(|a| (0..a.level).fold((l, l), |(h, w), _| (h.div_ceil(2), w.div_ceil(2))))
            .collect(),
        ours,
    })
}

impl XlSetup {
    pub fn layer_sizes(&self) -> &[(usize, usize)] {
        &self.layer_sizes
    }

    /// One timed forward pass with capture `mode` (maps brought to the host). Seconds.
    pub fn time(&self, mode: CaptureMode, timestep: f64) -> Result<f64> {
        let t0 = Instant::now();
        let mut probe = AttnProbe::new(mode, 1);
        let added = diffusion_scope::model::unet::AddedCond {
            text_time: Some((&self.text_embeds, &self.time_ids)),
            guidance_w: None,
        };
        let out = self.ours.forward_added(&self.sample, timestep, &self.context, added, &mut probe)?;
        let maps = diffusion_scope::pipeline::attention_to_maps(probe, mode, &|i| {
            let (h, w) = self.layer_sizes[i];
            (format!("layer{i}"), h, w)
        });
        maps.map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let _ = out.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(t0.elapsed().as_secs_f64())
    }
}
