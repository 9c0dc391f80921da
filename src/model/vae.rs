//! The VAE decoder: candle-transformers' `AutoEncoderKL` (weight names match diffusers),
//! configured from `vae/config.json`, plus diffusers' post-processing to 8-bit RGB.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};

use super::config::VaeConfig;
use crate::trace::RgbImage;

pub struct Vae {
    inner: AutoEncoderKL,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let cfg = AutoEncoderKLConfig {
            block_out_channels: config.block_out_channels.clone(),
            layers_per_block: config.layers_per_block,
            latent_channels: config.latent_channels,
            norm_num_groups: config.norm_num_groups,
            use_quant_conv: config.use_quant_conv,
            use_post_quant_conv: config.use_post_quant_conv,
        };
        Ok(Self {
            inner: AutoEncoderKL::new(vb, config.in_channels, config.out_channels, cfg)?,
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
