//! The pieces: prompt → conditioning, one guided UNet evaluation, VAE decode / encode.

use candle_core::{DType, Tensor};

use super::{PromptEmbeddings, PromptText, RunError};
use crate::model::StableDiffusion;
use crate::model::tokenizer::TokenizedPrompt;
use crate::model::unet::{AddedCond, AttnProbe, Taps, UNet};
use crate::model::vae::{Vae, VaeEncoder};
use crate::trace::{AttnLayer, AttnMap, RgbImage};
use crate::types::CaptureMode;

/// A prompt's conditioning on the model's device, ready for [`guided_eval`]: the text
/// encoder's output for [negative, positive] with guidance, for the positive prompt alone
/// without. Opaque to callers (no candle outside the pipeline); the tokenized prompts are
/// plain data.
pub struct Conditioning {
    context: Tensor,
    /// SDXL: the pooled text embeddings [B, P] and the time ids [B, 6], batch order as
    /// `context`.
    added: Option<(Tensor, Tensor)>,
    guided: bool,
    pub positive: TokenizedPrompt,
    pub negative: TokenizedPrompt,
}

impl Conditioning {
    /// The embeddings as plain data (the negative half is empty without guidance).
    pub fn embeddings(&self) -> Result<PromptEmbeddings, RunError> {
        let (_, tokens, dim) = self.context.dims3()?;
        let row = |t: &Tensor, i: usize| -> Result<Vec<f32>, RunError> { Ok(t.get(i)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
        let pos = usize::from(self.guided);
        let (pooled, negative_pooled) = match &self.added {
            Some((p, _)) => (row(p, pos)?, if self.guided { row(p, 0)? } else { Vec::new() }),
            None => (Vec::new(), Vec::new()),
        };
        Ok(PromptEmbeddings {
            tokens,
            dim,
            positive: row(&self.context, pos)?,
            negative: if self.guided { row(&self.context, 0)? } else { Vec::new() },
            pooled,
            negative_pooled,
        })
    }

    /// SDXL: the time ids for an image of `height` x `width` (original size = target size, no
    /// crop: the pipeline's defaults). Nothing to do for SD.
    pub fn set_image_size(&mut self, height: usize, width: usize) -> Result<(), RunError> {
        if let Some((pooled, ids)) = &self.added {
            let b = pooled.dim(0)?;
            let one = [height as f32, width as f32, 0.0, 0.0, height as f32, width as f32];
            let all: Vec<f32> = (0..b).flat_map(|_| one).collect();
            let ids2 = Tensor::from_vec(all, (b, 6), ids.device())?.to_dtype(ids.dtype())?;
            self.added = Some((pooled.clone(), ids2));
        }
        Ok(())
    }

    /// The UNet's added conditioning for a batch of `n` copies of each branch (the same
    /// layout as [`batch_context`]).
    fn added_for(&self, n: usize) -> Result<Option<(Tensor, Tensor)>, RunError> {
        let Some((p, ids)) = &self.added else { return Ok(None) };
        if n == 1 {
            return Ok(Some((p.clone(), ids.clone())));
        }
        let rep = |t: &Tensor| -> Result<Tensor, RunError> {
            if !self.guided {
                return Ok(t.repeat((n, 1))?);
            }
            let u = t.narrow(0, 0, 1)?.repeat((n, 1))?;
            let c = t.narrow(0, 1, 1)?.repeat((n, 1))?;
            Ok(Tensor::cat(&[&u, &c], 0)?)
        };
        Ok(Some((rep(p)?, rep(ids)?)))
    }
}

/// The UNet's added conditioning: [`Conditioning::added_for`]'s tensors and, for UNets that
/// embed the guidance (`time_cond_proj_dim`), `guidance - 1` as diffusers' pipelines pass it.
fn as_added<'a>(unet: &UNet, added: &'a Option<(Tensor, Tensor)>, guidance: f32) -> AddedCond<'a> {
    AddedCond {
        text_time: added.as_ref().map(|(p, ids)| (p, ids)),
        guidance_w: unet.embeds_guidance().then(|| (f64::from(guidance) - 1.0) as f32),
    }
}

/// SDXL's prompt encoding (diffusers' `StableDiffusionXLPipeline.encode_prompt`): both
/// encoders' penultimate hidden states (or `clip_skip` layers earlier, positive prompt only)
/// concatenated, the first encoder reading `prompt` and the second `prompt_2` (the first when
/// unset); the second encoder's projected EOS output as the pooled embedding. With
/// `force_zeros_for_empty_prompt` an empty negative prompt gives zeros (whatever
/// `negative_2` says, as in diffusers).
fn encode_xl(
    sd: &StableDiffusion,
    xl: &crate::model::loader::XlParts,
    text: &PromptText,
    guided: bool,
) -> Result<(Tensor, Tensor), RunError> {
    let device = &sd.device;
    let encode = |first: &str, second: &str, skip: usize| -> Result<(Tensor, Tensor), RunError> {
        let ids1 = Tensor::new(sd.tokenizer.encode(first).ids.as_slice(), device)?.unsqueeze(0)?;
        let ids2 = Tensor::new(xl.tokenizer_2.encode(second).ids.as_slice(), device)?.unsqueeze(0)?;
        let h1 = sd.text_encoder.forward_hidden(&ids1, skip)?;
        let h2 = xl.text_encoder_2.forward_hidden(&ids2, skip)?;
        let pooled = h2
            .pooled
            .ok_or_else(|| RunError::BadInput("text_encoder_2 has no projection".into()))?;
        Ok((Tensor::cat(&[&h1.hidden, &h2.hidden], 2)?, pooled))
    };
    let second = |p: Option<&str>, first: &str| p.filter(|s| !s.is_empty()).unwrap_or(first).to_owned();
    let (pos, pooled) = encode(text.prompt, &second(text.prompt_2, text.prompt), text.clip_skip.unwrap_or(0))?;
    if !guided {
        return Ok((pos, pooled));
    }
    let (neg, neg_pooled) = if text.negative.is_empty() && xl.force_zeros_for_empty_prompt {
        (pos.zeros_like()?, pooled.zeros_like()?)
    } else {
        encode(text.negative, &second(text.negative_2, text.negative), 0)?
    };
    Ok((Tensor::cat(&[&neg, &pos], 0)?, Tensor::cat(&[&neg_pooled, &pooled], 0)?))
}

/// Tokenizes `prompt` (and `negative` when `guided`) and encodes them with the text encoder,
/// or takes the encoder outputs from `overrides`: [`encode_text`] without the SDXL second
/// prompts and clip skip.
pub fn encode_prompt(
    sd: &StableDiffusion,
    prompt: &str,
    negative: &str,
    guided: bool,
    overrides: Option<&PromptEmbeddings>,
) -> Result<Conditioning, RunError> {
    let text = PromptText {
        prompt,
        negative,
        ..PromptText::default()
    };
    encode_text(sd, &text, guided, overrides)
}

/// diffusers' `encode_prompt` of `text` (or the encoder outputs in `overrides`). `guided`
/// asks for the negative branch; a UNet that embeds the guidance (`time_cond_proj_dim`) never
/// gets one, as in diffusers.
pub fn encode_text(
    sd: &StableDiffusion,
    text: &PromptText,
    guided: bool,
    overrides: Option<&PromptEmbeddings>,
) -> Result<Conditioning, RunError> {
    let device = &sd.device;
    let guided = guided && !sd.unet.embeds_guidance();
    let second_given = text.prompt_2.is_some_and(|p| !p.is_empty()) || text.negative_2.is_some_and(|p| !p.is_empty());
    if second_given && sd.xl.is_none() {
        return Err(RunError::BadInput(
            "a second prompt (prompt_2 / negative_prompt_2) needs an SDXL model: this one has one text encoder".into(),
        ));
    }
    if overrides.is_some() && (second_given || text.clip_skip.is_some()) {
        return Err(RunError::BadInput(
            "given prompt embeddings replace the text encoders: a second prompt or clip skip does not apply".into(),
        ));
    }
    if let Some(c) = text.clip_skip {
        // SDXL counts from the penultimate layer.
        let layers = sd.text_encoder.num_layers();
        let most = if sd.xl.is_some() { layers.saturating_sub(1) } else { layers };
        if c > most {
            return Err(RunError::BadInput(format!(
                "clip skip {c} is more than this text encoder allows ({most}; it has {layers} layers)"
            )));
        }
    }
    let positive = sd.tokenizer.encode(text.prompt);
    let negative = sd.tokenizer.encode(text.negative);
    let encode = |ids: &[u32], skip: Option<usize>| -> Result<Tensor, RunError> {
        let ids = Tensor::new(ids, device)?.unsqueeze(0)?;
        Ok(match skip {
            None => sd.text_encoder.forward(&ids)?,
            Some(c) => sd.text_encoder.forward_clip_skip(&ids, c)?,
        })
    };
    if let Some(xl) = &sd.xl
        && overrides.is_none()
    {
        let (context, pooled) = encode_xl(sd, xl, text, guided)?;
        let b = pooled.dim(0)?;
        let mut cond = Conditioning {
            context,
            added: Some((pooled, Tensor::zeros((b, 6), sd.dtype, device)?)),
            guided,
            positive,
            negative,
        };
        let s = sd.default_size();
        cond.set_image_size(s, s)?;
        return Ok(cond);
    }
    let (pos_emb, neg_emb) = match overrides {
        None => {
            // As diffusers: clip skip applies to the positive prompt only.
            let pos = encode(&positive.ids, text.clip_skip)?;
            let neg = if guided { Some(encode(&negative.ids, None)?) } else { None };
            (pos, neg)
        }
        Some(e) => {
            // The encoder's own output shape is the contract: [1, tokens, hidden_size].
            let dim = sd.text_encoder.config.hidden_size + sd.xl.as_ref().map_or(0, |x| x.text_encoder_2.config.hidden_size);
            let tokens = positive.ids.len();
            let as_tensor = |what: &str, v: &[f32]| -> Result<Tensor, RunError> {
                if e.tokens != tokens || e.dim != dim || v.len() != tokens * dim {
                    return Err(RunError::BadInput(format!(
                        "{what} prompt embeddings are {} x {} ({} values); this model's text encoder gives {tokens} x {dim}",
                        e.tokens,
                        e.dim,
                        v.len()
                    )));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(RunError::BadInput(format!("{what} prompt embeddings contain NaN or Inf")));
                }
                Ok(Tensor::from_vec(v.to_vec(), (1, tokens, dim), device)?.to_dtype(sd.dtype)?)
            };
            let pos = as_tensor("positive", &e.positive)?;
            let neg = if guided { Some(as_tensor("negative", &e.negative)?) } else { None };
            (pos, neg)
        }
    };
    let context = match neg_emb {
        Some(neg) => Tensor::cat(&[&neg, &pos_emb], 0)?,
        None => pos_emb,
    };
    // SDXL with given embeddings: the pooled embeddings come with them.
    let added = match (&sd.xl, overrides) {
        (Some(xl), Some(e)) => {
            let p = xl.text_encoder_2.config.projection_dim.unwrap_or(0);
            let vec = |what: &str, v: &[f32]| -> Result<Tensor, RunError> {
                if v.len() != p {
                    return Err(RunError::BadInput(format!(
                        "{what} pooled embedding has {} values; this model's is {p}",
                        v.len()
                    )));
                }
                Ok(Tensor::from_vec(v.to_vec(), (1, p), device)?.to_dtype(sd.dtype)?)
            };
            let pooled = if guided {
                Tensor::cat(&[&vec("negative", &e.negative_pooled)?, &vec("positive", &e.pooled)?], 0)?
            } else {
                vec("positive", &e.pooled)?
            };
            let b = pooled.dim(0)?;
            Some((pooled, Tensor::zeros((b, 6), sd.dtype, device)?))
        }
        _ => None,
    };
    let mut cond = Conditioning {
        context,
        added,
        guided,
        positive,
        negative,
    };
    let s = sd.default_size();
    cond.set_image_size(s, s)?;
    Ok(cond)
}

/// What one UNet evaluation gives: the (guided) model output [C, h, w] and the attention maps
/// of the conditional branch.
pub struct UnetOutput {
    pub model_output: Vec<f32>,
    pub attention: Vec<AttnMap>,
}

/// One UNet evaluation at `x` [C, h, w] (already scaled by the sampler's
/// `scale_model_input`) and timestep `t`: with guidance the batch is [x, x] against
/// [negative, positive] and the output is `uncond + guidance * (cond - uncond)`. The probe
/// keeps the conditional branch's cross-attention as `capture` says; `layers` names the
/// layers and their sizes (from [`super::attn_layer_sizes`]).
pub fn guided_eval(
    sd: &StableDiffusion,
    cond: &Conditioning,
    x: Vec<f32>,
    latent: [usize; 3],
    t: f64,
    guidance: f32,
    capture: CaptureMode,
    layers: &[AttnLayer],
) -> Result<UnetOutput, RunError> {
    eval_on(&sd.unet, sd, cond, x, latent, t, guidance, capture, layers)
}

/// A UNet other than the model's own, opaque to callers: the health check's copy with its time
/// embedding zeroed ([`zeroed_time_unet`]).
pub struct UnetVariant(UNet);

/// A copy of the model's UNet whose output cannot depend on t (the time MLP's last layer
/// zeroed), made in memory; the other weights are shared.
pub fn zeroed_time_unet(sd: &StableDiffusion) -> Result<UnetVariant, RunError> {
    Ok(UnetVariant(sd.unet.with_zeroed_time_embedding()?))
}

/// [`guided_eval`] on another UNet (attention not captured).
pub fn guided_eval_variant(
    sd: &StableDiffusion,
    unet: &UnetVariant,
    cond: &Conditioning,
    x: Vec<f32>,
    latent: [usize; 3],
    t: f64,
    guidance: f32,
) -> Result<Vec<f32>, RunError> {
    Ok(eval_on(&unet.0, sd, cond, x, latent, t, guidance, CaptureMode::None, &[])?.model_output)
}

#[allow(clippy::too_many_arguments)]
fn eval_on(
    unet: &UNet,
    sd: &StableDiffusion,
    cond: &Conditioning,
    x: Vec<f32>,
    latent: [usize; 3],
    t: f64,
    guidance: f32,
    capture: CaptureMode,
    layers: &[AttnLayer],
) -> Result<UnetOutput, RunError> {
    let [c, h, w] = latent;
    let x = Tensor::from_vec(x, (1, c, h, w), &sd.device)?.to_dtype(sd.dtype)?;
    let x = if cond.guided { Tensor::cat(&[&x, &x], 0)? } else { x };
    let mut probe = AttnProbe::new(capture, usize::from(cond.guided));
    let added = cond.added_for(1)?;
    let out = unet
        .forward_added(&x, t, &cond.context, as_added(unet, &added, guidance), &mut probe)?
        .to_dtype(DType::F32)?;
    let model_output: Vec<f32> = if cond.guided {
        let uncond = out.get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let cnd = out.get(1)?.flatten_all()?.to_vec1::<f32>()?;
        crate::analysis::cfg_combine(&uncond, &cnd, guidance)
    } else {
        out.flatten_all()?.to_vec1::<f32>()?
    };
    let attention = attention_to_maps(probe, capture, &|i| (layers[i].path.clone(), layers[i].height, layers[i].width))?;
    Ok(UnetOutput { model_output, attention })
}

/// Decodes latents [C, h, w] (as the sampler holds them) with the VAE to an 8-bit image.
pub fn decode(sd: &StableDiffusion, latents: Vec<f32>, shape: [usize; 3]) -> Result<RgbImage, RunError> {
    let [c, h, w] = shape;
    if latents.len() != c * h * w || c != sd.latent_channels() {
        return Err(RunError::BadInput(format!(
            "latents of shape {shape:?} do not fit this model ({} channels)",
            sd.latent_channels()
        )));
    }
    let t = Tensor::from_vec(latents, (1, c, h, w), &sd.device)?.to_dtype(sd.vae_dtype)?;
    Ok(Vae::to_rgb8(&sd.vae.decode_unit(&t)?)?)
}

/// Encodes an 8-bit RGB image (row-major, 3 bytes a pixel) to scaled latents [C, h, w]: the
/// VAE posterior mean times `scaling_factor`, with diffusers' preprocessing.
pub fn encode_image(encoder: &VaeEncoder, image: &RgbImage) -> Result<(Vec<f32>, [usize; 3]), RunError> {
    if image.pixels.len() != image.width * image.height * 3 {
        return Err(RunError::BadInput(format!(
            "an image of {}x{} needs {} bytes, got {}",
            image.width,
            image.height,
            image.width * image.height * 3,
            image.pixels.len()
        )));
    }
    let x0 = encoder.encode_rgb(&image.pixels, image.width, image.height)?;
    let (_, c, h, w) = x0.dims4()?;
    Ok((x0.flatten_all()?.to_vec1()?, [c, h, w]))
}

/// Turns the probe's device tensors into plain maps: one per layer (full) or the mean over the
/// layers of each resolution, finest first (aggregate). `layer` gives a layer's path and size.
pub fn attention_to_maps(
    probe: AttnProbe,
    mode: CaptureMode,
    layer: &dyn Fn(usize) -> (String, usize, usize),
) -> Result<Vec<AttnMap>, RunError> {
    let to_map = |key: String, height: usize, width: usize, t: &Tensor| -> Result<AttnMap, RunError> {
        let (_, tokens) = t.dims2()?;
        Ok(AttnMap {
            key,
            height,
            width,
            tokens,
            data: t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        })
    };
    match mode {
        CaptureMode::None => Ok(Vec::new()),
        CaptureMode::Full => probe
            .maps
            .iter()
            .map(|m| to_map(AttnMap::layer_key(&layer(m.layer).0), m.height, m.width, &m.probs))
            .collect(),
        CaptureMode::Aggregate => {
            let mut groups: Vec<((usize, usize), Tensor, usize)> = Vec::new();
            for m in &probe.maps {
                match groups.iter_mut().find(|(k, _, _)| *k == (m.height, m.width)) {
                    Some((_, sum, count)) => {
                        *sum = (&*sum + &m.probs)?;
                        *count += 1;
                    }
                    None => groups.push(((m.height, m.width), m.probs.clone(), 1)),
                }
            }
            groups.sort_by_key(|((h, w), _, _)| std::cmp::Reverse(h * w));
            groups
                .into_iter()
                .map(|((h, w), sum, count)| to_map(AttnMap::aggregate_key(h, w), h, w, &(sum / count as f64)?))
                .collect()
        }
    }
}

/// The context for a batch of `n` items: each branch's embedding repeated `n` times, unconditional
/// block first ([u; n] ++ [c; n]) with guidance, [c; n] without.
fn batch_context(cond: &Conditioning, n: usize) -> Result<Tensor, RunError> {
    if !cond.guided {
        return Ok(cond.context.repeat((n, 1, 1))?);
    }
    let u = cond.context.narrow(0, 0, 1)?.repeat((n, 1, 1))?;
    let c = cond.context.narrow(0, 1, 1)?.repeat((n, 1, 1))?;
    Ok(Tensor::cat(&[&u, &c], 0)?)
}

/// [`guided_eval`] of several inputs at one timestep in one UNet call (attention not
/// captured): each `xs[i]` [C, h, w] (already scaled by `scale_model_input`) gives its guided
/// output. With guidance the batch is [x_1..x_n, x_1..x_n] against [negative x n, positive x n].
/// DF-RISE's masked latents go through here.
pub fn guided_eval_batch(
    sd: &StableDiffusion,
    cond: &Conditioning,
    xs: &[Vec<f32>],
    latent: [usize; 3],
    t: f64,
    guidance: f32,
) -> Result<Vec<Vec<f32>>, RunError> {
    let [c, h, w] = latent;
    let n = xs.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    if xs.iter().any(|x| x.len() != c * h * w) {
        return Err(RunError::BadInput(format!("every input of a batch must be [{c}, {h}, {w}]")));
    }
    let flat: Vec<f32> = xs.iter().flatten().copied().collect();
    let x = Tensor::from_vec(flat, (n, c, h, w), &sd.device)?.to_dtype(sd.dtype)?;
    let x = if cond.guided { Tensor::cat(&[&x, &x], 0)? } else { x };
    let context = batch_context(cond, n)?;
    let added = cond.added_for(n)?;
    let out = sd
        .unet
        .forward_added(&x, t, &context, as_added(&sd.unet, &added, guidance), &mut AttnProbe::off())?
        .to_dtype(DType::F32)?;
    let mut outputs = Vec::with_capacity(n);
    for i in 0..n {
        let v = if cond.guided {
            let u = out.get(i)?.flatten_all()?.to_vec1::<f32>()?;
            let cnd = out.get(n + i)?.flatten_all()?.to_vec1::<f32>()?;
            crate::analysis::cfg_combine(&u, &cnd, guidance)
        } else {
            out.get(i)?.flatten_all()?.to_vec1::<f32>()?
        };
        outputs.push(v);
    }
    Ok(outputs)
}

/// One UNet block's output and the gradient of the guided output's sum with respect to it,
/// both [channels, height, width], classifier-free guidance applied as the authors of DF-CAM
/// do: `A = a_u + w (a_c - a_u)` and `g = g_u + w (g_c - g_u)` with `g_b` the gradient of the
/// sum of branch b's output (which is the gradient of the guided output's sum, summed over
/// the two branches).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockGradient {
    pub path: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub activation: Vec<f32>,
    pub gradient: Vec<f32>,
}

/// DF-CAM's model evaluation: one guided UNet call at `x` [C, h, w] (scaled) and `t` with the
/// outputs of `blocks` (diffusers module paths; None: every block) tapped, then one backward
/// pass from the sum of the guided output. Returns the guided output and each block's
/// activation and gradient, in the order the forward pass met them.
pub fn cam_eval(
    sd: &StableDiffusion,
    cond: &Conditioning,
    x: Vec<f32>,
    latent: [usize; 3],
    t: f64,
    guidance: f32,
    blocks: Option<&[String]>,
) -> Result<(Vec<f32>, Vec<BlockGradient>), RunError> {
    let [c, h, w] = latent;
    let x = Tensor::from_vec(x, (1, c, h, w), &sd.device)?.to_dtype(sd.dtype)?;
    let x = if cond.guided { Tensor::cat(&[&x, &x], 0)? } else { x };
    let mut probe = AttnProbe::tapping(Taps::new(blocks.map(<[String]>::to_vec)));
    let added = cond.added_for(1)?;
    let out = sd
        .unet
        .forward_added(&x, t, &cond.context, as_added(&sd.unet, &added, guidance), &mut probe)?
        .to_dtype(DType::F32)?;
    let guided = if cond.guided {
        let (u, cnd) = (out.get(0)?, out.get(1)?);
        (&u + ((&cnd - &u)? * guidance as f64)?)?
    } else {
        out.get(0)?
    };
    let grads = guided.sum_all()?.backward()?;
    let model_output = guided.flatten_all()?.to_vec1::<f32>()?;
    let taken = probe.taps.map(|t| t.taken).unwrap_or_default();
    let mut result = Vec::with_capacity(taken.len());
    for tap in taken {
        let (b, k, bh, bw) = tap.activation.dims4()?;
        let a = tap.activation.to_dtype(DType::F32)?;
        let g = match grads.get(tap.delta.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?,
            None => a.zeros_like()?,
        };
        let (activation, gradient) = if b == 2 {
            let combine = |t: &Tensor| -> Result<Vec<f32>, RunError> {
                let (u, cnd) = (t.get(0)?, t.get(1)?);
                Ok((&u + ((&cnd - &u)? * guidance as f64)?)?.flatten_all()?.to_vec1::<f32>()?)
            };
            // The summed per-branch gradients are (1 - w) g_u and w g_c; the authors' combined
            // gradient g_u + w (g_c - g_u) is their sum.
            let gsum = (g.get(0)? + g.get(1)?)?.flatten_all()?.to_vec1::<f32>()?;
            (combine(&a)?, gsum)
        } else {
            (a.flatten_all()?.to_vec1::<f32>()?, g.flatten_all()?.to_vec1::<f32>()?)
        };
        result.push(BlockGradient {
            path: tap.path,
            channels: k,
            height: bh,
            width: bw,
            activation,
            gradient,
        });
    }
    Ok((model_output, result))
}
