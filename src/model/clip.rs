//! The CLIP text encoder (transformers' `CLIPTextModel`), built from `text_encoder/config.json`.
//! Weight names follow the checkpoint: `text_model.embeddings.token_embedding.weight`, ...
//! candle-transformers' CLIP cannot be used: its config is closed to the few checkpoints it
//! names and its "gelu" is the tanh approximation, where transformers' "gelu" is exact (erf).

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::config::TextEncoderConfig;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Activation {
    QuickGelu,
    GeluErf,
    GeluTanh,
}

impl Activation {
    /// transformers' `hidden_act` names: "gelu" is exact (erf), "gelu_new" /
    /// "gelu_pytorch_tanh" the tanh approximation.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Activation::QuickGelu),
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            Activation::GeluErf => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
        }
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The pre-norm transformer stack both CLIP towers share (`encoder.layers.N...`).
pub(crate) struct ClipEncoder {
    layers: Vec<EncoderLayer>,
    heads: usize,
    hidden: usize,
    activation: Activation,
}

/// The sizes of one tower's stack.
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    pub activation: Activation,
}

pub(crate) fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(dim, candle_nn::LayerNormConfig { eps, ..Default::default() }, vb)
}

impl ClipEncoder {
    /// `vb` points at the tower's `encoder`.
    pub(crate) fn new(vb: VarBuilder, s: &EncoderShape) -> Result<Self> {
        let d = s.hidden;
        let mut layers = Vec::with_capacity(s.layers);
        let vl = vb.pp("layers");
        for i in 0..s.layers {
            let v = vl.pp(i);
            let attn = v.pp("self_attn");
            layers.push(EncoderLayer {
                layer_norm1: layer_norm(d, s.eps, v.pp("layer_norm1"))?,
                q_proj: candle_nn::linear(d, d, attn.pp("q_proj"))?,
                k_proj: candle_nn::linear(d, d, attn.pp("k_proj"))?,
                v_proj: candle_nn::linear(d, d, attn.pp("v_proj"))?,
                out_proj: candle_nn::linear(d, d, attn.pp("out_proj"))?,
                layer_norm2: layer_norm(d, s.eps, v.pp("layer_norm2"))?,
                fc1: candle_nn::linear(d, s.intermediate, v.pp("mlp").pp("fc1"))?,
                fc2: candle_nn::linear(s.intermediate, d, v.pp("mlp").pp("fc2"))?,
            });
        }
        Ok(Self {
            layers,
            heads: s.heads,
            hidden: d,
            activation: s.activation,
        })
    }

    /// `xs` [B, L, D] through every layer; `mask` [1, 1, L, L] is added to the attention scores.
    pub(crate) fn forward(&self, xs: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_layers(xs, mask, 0..self.layers.len())
    }

    /// `xs` through the layers `range` only (transformers' `hidden_states[k]` is the output of
    /// layers `0..k`).
    pub(crate) fn forward_layers(&self, mut xs: Tensor, mask: Option<&Tensor>, range: std::ops::Range<usize>) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let d = self.hidden;
        let hd = d / self.heads;
        let scale = (hd as f64).powf(-0.5);
        for layer in &self.layers[range] {
            let residual = xs.clone();
            let h = layer.layer_norm1.forward(&xs)?;
            let split = |t: Tensor| -> Result<Tensor> { t.reshape((b, l, self.heads, hd))?.transpose(1, 2)?.contiguous() };
            let q = split((layer.q_proj.forward(&h)? * scale)?)?;
            let k = split(layer.k_proj.forward(&h)?)?;
            let v = split(layer.v_proj.forward(&h)?)?;
            let mut scores = q.matmul(&k.t()?)?;
            if let Some(m) = mask {
                scores = scores.broadcast_add(m)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let h = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
            xs = (residual + layer.out_proj.forward(&h)?)?;
            let residual = xs.clone();
            let h = layer.layer_norm2.forward(&xs)?;
            let h = layer.fc2.forward(&self.activation.forward(&layer.fc1.forward(&h)?)?)?;
            xs = (residual + h)?;
        }
        Ok(xs)
    }
}

pub struct ClipTextEncoder {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s `text_projection` (no bias), when the weights have it.
    text_projection: Option<Linear>,
    pub config: TextEncoderConfig,
}

/// What SDXL takes from a text encoder: a hidden state before the last layer (no final layer
/// norm) and, from the projection model, the projected EOS output.
pub struct ClipHidden {
    /// `hidden_states[-(skip + 2)]` [B, L, D].
    pub hidden: Tensor,
    /// `text_embeds` [B, projection_dim] (None without a projection).
    pub pooled: Option<Tensor>,
}

impl ClipTextEncoder {
    pub fn new(vb: VarBuilder, config: &TextEncoderConfig) -> Result<Self> {
        // transformers 4 saved `text_model.`-prefixed keys (what SD hub repos have);
        // transformers 5 saves them without the prefix. Both load.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let d = config.hidden_size;
        let emb = vb.pp("embeddings");
        let token_embedding = candle_nn::embedding(config.vocab_size, d, emb.pp("token_embedding"))?;
        let position_embedding = candle_nn::embedding(config.max_position_embeddings, d, emb.pp("position_embedding"))?;
        let shape = EncoderShape {
            hidden: d,
            intermediate: config.intermediate_size,
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
            activation: Activation::parse(&config.hidden_act).unwrap_or(Activation::GeluTanh),
        };
        let encoder = ClipEncoder::new(vb.pp("encoder"), &shape)?;
        let final_layer_norm = layer_norm(d, config.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            encoder,
            final_layer_norm,
            text_projection: None,
            config: config.clone(),
        })
    }

    /// A `CLIPTextModelWithProjection` (SDXL's second encoder): the text model and its
    /// `text_projection` [projection_dim, hidden_size] (no bias).
    pub fn with_projection(vb: VarBuilder, config: &TextEncoderConfig) -> Result<Self> {
        let p = config
            .projection_dim
            .ok_or_else(|| candle_core::Error::Msg("the config has no projection_dim".into()))?;
        let proj = candle_nn::linear_no_bias(config.hidden_size, p, vb.pp("text_projection"))?;
        let mut enc = Self::new(vb, config)?;
        enc.text_projection = Some(proj);
        Ok(enc)
    }

    fn embed(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, l) = ids.dims2()?;
        let positions = Tensor::arange(0u32, l as u32, ids.device())?.unsqueeze(0)?;
        let xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(l, xs.dtype(), ids.device())?;
        Ok((xs, mask))
    }

    /// SDXL's use of an encoder: the hidden state `skip + 1` layers before the output
    /// (diffusers' `hidden_states[-(clip_skip + 2)]`, skip 0 = the penultimate layer) and, with
    /// a projection, `text_embeds`: the final-layer-normed output at the EOS token (the first
    /// position of `eos_token_id`; of the largest id for configs with the legacy id 2),
    /// projected.
    pub fn forward_hidden(&self, ids: &Tensor, skip: usize) -> Result<ClipHidden> {
        let n = self.encoder.layers.len();
        if skip + 1 > n {
            candle_core::bail!("clip skip {skip} needs more than the encoder's {n} layers");
        }
        let (xs, mask) = self.embed(ids)?;
        let cut = n - 1 - skip;
        let hidden = self.encoder.forward_layers(xs, Some(&mask), 0..cut)?;
        let pooled = match &self.text_projection {
            None => None,
            Some(proj) => {
                let last = self.encoder.forward_layers(hidden.clone(), Some(&mask), cut..n)?;
                let last = self.final_layer_norm.forward(&last)?;
                let rows: Vec<Vec<u32>> = ids.to_vec2()?;
                let mut picked = Vec::with_capacity(rows.len());
                for (b, row) in rows.iter().enumerate() {
                    let pos = match self.config.eos_token_id {
                        Some(eos) if eos != 2 => row.iter().position(|&t| t == eos).unwrap_or(0),
                        _ => {
                            let max = row.iter().copied().max().unwrap_or(0);
                            row.iter().position(|&t| t == max).unwrap_or(0)
                        }
                    };
                    picked.push(last.get(b)?.get(pos)?);
                }
                Some(proj.forward(&Tensor::stack(&picked, 0)?)?)
            }
        };
        Ok(ClipHidden { hidden, pooled })
    }

    /// diffusers' SD pipelines' `clip_skip`: the output of the layer `clip_skip` layers before
    /// the last (`hidden_states[-(clip_skip + 1)]`; 0 is the last layer), through the final
    /// layer norm. `clip_skip` may be at most the number of layers (the embeddings alone).
    pub fn forward_clip_skip(&self, ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        let n = self.encoder.layers.len();
        if clip_skip > n {
            candle_core::bail!("clip skip {clip_skip} is more than the text encoder's {n} layers");
        }
        let (xs, mask) = self.embed(ids)?;
        let xs = self.encoder.forward_layers(xs, Some(&mask), 0..n - clip_skip)?;
        self.final_layer_norm.forward(&xs)
    }

    /// The number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }

    /// `last_hidden_state` for a batch of token ids [B, L] (u32): what diffusers' SD pipelines
    /// use as `prompt_embeds` (no attention mask, causal self-attention).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (xs, mask) = self.embed(ids)?;
        let xs = self.encoder.forward(xs, Some(&mask))?;
        self.final_layer_norm.forward(&xs)
    }
}

fn causal_mask(l: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_slice(&mask, (l, l), device)?
        .to_dtype(dtype)?
        .unsqueeze(0)?
        .unsqueeze(0)?
        .contiguous()?
        .narrow(D::Minus1, 0, l)
}
