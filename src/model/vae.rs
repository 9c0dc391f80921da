//! The VAE decoder: candle-transformers' `AutoEncoderKL` (weight names match diffusers),
//! configured from `vae/config.json`, plus diffusers' post-processing to 8-bit RGB; and
//! [`VaeEncoder`], the encoder's posterior mean.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};

use super::config::VaeConfig;
use crate::types::RgbImage;

/// candle-transformers' AutoencoderKL built from `vae/config.json`.
fn autoencoder(vb: VarBuilder, config: &VaeConfig) -> Result<AutoEncoderKL> {
    let cfg = AutoEncoderKLConfig {
        block_out_channels: config.block_out_channels.clone(),
        layers_per_block: config.layers_per_block,
        latent_channels: config.latent_channels,
        norm_num_groups: config.norm_num_groups,
        use_quant_conv: config.use_quant_conv,
        use_post_quant_conv: config.use_post_quant_conv,
    };
    AutoEncoderKL::new(vb, config.in_channels, config.out_channels, cfg)
}

pub struct Vae {
    inner: AutoEncoderKL,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        Ok(Self {
            inner: autoencoder(vb, config)?,
            config: config.clone(),
        })
    }

    /// Decodes latents [1, C, h, w] (as the sampler leaves them, i.e. still multiplied by
    /// `scaling_factor`) to the image in [0, 1], [1, 3, H, W] f32 — diffusers'
    /// `(vae.decode(latents / scaling_factor) / 2 + 0.5).clamp(0, 1)`.
    pub fn decode_unit(&self, latents: &Tensor) -> Result<Tensor> {
        let x = (latents / self.config.scaling_factor)?;
        let img = self.inner.decode(&x)?.to_dtype(DType::F32)?;
        ((img / 2.0)? + 0.5)?.clamp(0f32, 1f32)
    }

    /// The 8-bit image diffusers' `numpy_to_pil` makes: `(x * 255).round()`.
    pub fn to_rgb8(unit: &Tensor) -> Result<RgbImage> {
        let (_, c, h, w) = unit.dims4()?;
        let hwc = unit.squeeze(0)?.permute((1, 2, 0))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let pixels = hwc.iter().map(|v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8).collect();
        debug_assert_eq!(c, 3);
        Ok(RgbImage {
            width: w,
            height: h,
            pixels,
        })
    }
}

/// The VAE encoder's posterior mean times `scaling_factor` (diffusers'
/// `vae.encode(x).latent_dist.mean * vae.config.scaling_factor`).
///
/// candle-transformers' `AutoEncoderKL::encode` hands out a distribution that can only be
/// sampled. To read its mean deterministically, the encoder is built from weights in which the
/// output channels carrying the log-variance (the second half of `quant_conv`, or of
/// `encoder.conv_out` when there is no `quant_conv`) are zeroed and biased to -300: the
/// distribution's std is then exp(-150), which is 0 in f32, and `sample()` returns the mean
/// exactly.
pub struct VaeEncoder {
    inner: AutoEncoderKL,
    scaling_factor: f64,
    dtype: DType,
    device: Device,
}

impl VaeEncoder {
    /// Builds the encoder from the VAE's safetensors files.
    pub fn load(files: &[PathBuf], config: &VaeConfig, dtype: DType, device: &Device) -> Result<Self> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for f in files {
            tensors.extend(candle_core::safetensors::load(f, device)?);
        }
        let head = if config.use_quant_conv { "quant_conv" } else { "encoder.conv_out" };
        let lc = config.latent_channels;
        let (wk, bk) = (format!("{head}.weight"), format!("{head}.bias"));
        let w = tensors.get(&wk).ok_or_else(|| candle_core::Error::Msg(format!("no tensor {wk}")))?;
        let b = tensors.get(&bk).ok_or_else(|| candle_core::Error::Msg(format!("no tensor {bk}")))?;
        let (w_dtype, b_dtype) = (w.dtype(), b.dtype());
        let w = w.to_dtype(DType::F32)?;
        let b = b.to_dtype(DType::F32)?;
        let w = Tensor::cat(&[&w.narrow(0, 0, lc)?, &w.narrow(0, lc, lc)?.zeros_like()?], 0)?.to_dtype(w_dtype)?;
        let b = Tensor::cat(&[&b.narrow(0, 0, lc)?, &(b.narrow(0, lc, lc)?.zeros_like()? - 300.0)?], 0)?.to_dtype(b_dtype)?;
        tensors.insert(wk, w);
        tensors.insert(bk, b);
        Ok(Self {
            inner: autoencoder(VarBuilder::from_tensors(tensors, dtype, device), config)?,
            scaling_factor: config.scaling_factor,
            dtype,
            device: device.clone(),
        })
    }

    /// An 8-bit RGB image (row-major `width` x `height` x 3, as [`RgbImage`] and the world's
    /// renders store it) → scaled latents [1, C, H/f, W/f] in f32, with diffusers'
    /// preprocessing (`x / 127.5 - 1`).
    pub fn encode_rgb(&self, rgb: &[u8], width: usize, height: usize) -> Result<Tensor> {
        let pixels: Vec<f32> = rgb.iter().map(|&v| v as f32 / 127.5 - 1.0).collect();
        let image = Tensor::from_vec(pixels, (1, height, width, 3), &self.device)?
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .to_dtype(self.dtype)?;
        self.encode_mean(&image)?.to_dtype(DType::F32)
    }

    /// `image` [1, 3, H, W] in [-1, 1] → scaled latents [1, C, H/f, W/f].
    fn encode_mean(&self, image: &Tensor) -> Result<Tensor> {
        self.inner.encode(image)?.sample()? * self.scaling_factor
    }
}
