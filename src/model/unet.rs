//! Our own `UNet2DConditionModel`, weight-compatible with diffusers' key names
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight`, ...), built from
//! `unet/config.json`. It exists because attention capture needs the softmax probabilities of
//! every cross-attention layer, which candle-transformers' UNet keeps to itself.
//!
//! Architecture invariant: the attention probe only *reads* the probabilities the forward pass
//! computes anyway; with capture on or off the same ops run on the same values, so the output
//! is bit-identical (tested).

use candle_core::{D, DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use super::kernels::{self, GroupNormLayer};

use super::config::UNetConfig;
use crate::types::CaptureMode;

/// One cross-attention layer of the UNet, in diffusers' module order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttnLayerInfo {
    /// diffusers module path, e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn2`.
    pub path: String,
    pub heads: usize,
    /// How many times the latent was halved before this layer (0 = full latent resolution).
    pub level: usize,
}

/// The head-averaged attention probabilities of one attn2 call: [h*w, tokens] at `height` x
/// `width` (the layer's own resolution), still on the model's device.
pub struct CapturedMap {
    pub layer: usize,
    pub height: usize,
    pub width: usize,
    pub probs: Tensor,
}

/// One tapped block output: the activation and the variable added to it, whose gradient is
/// the gradient of the block's output.
pub struct Tapped {
    /// diffusers module path of the block, e.g. `mid_block.resnets.0`.
    pub path: String,
    /// The block's output [B, K, h, w], without the delta.
    pub activation: Tensor,
    /// The delta added to the output (zeros unless one was given).
    pub delta: Var,
}

/// Which block outputs a forward pass keeps for gradients (DF-CAM). A tapped block's output
/// becomes `output + delta` with `delta` a variable (zeros, or a given offset), so one backward
/// pass gives d(target)/d(output) of every tapped block while gradients still flow through
/// each of them to the earlier ones. With taps on, the forward pass uses differentiable
/// versions of the fused softmax and layer norm (same maths, candle's fused kernels have no
/// backward); with taps off nothing changes.
pub struct Taps {
    /// Module paths to keep; None: every block ([`UNet::block_paths`]).
    want: Option<Vec<String>>,
    /// Offsets to add instead of zeros, by path (finite-difference checks).
    offsets: Vec<(String, Tensor)>,
    pub taken: Vec<Tapped>,
}

impl Taps {
    pub fn new(want: Option<Vec<String>>) -> Self {
        Self {
            want,
            offsets: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Adds `offset` (the block output's shape) instead of zeros at `path`.
    pub fn with_offset(mut self, path: &str, offset: Tensor) -> Self {
        self.offsets.push((path.to_owned(), offset));
        self
    }

    fn tap(&mut self, path: &str, xs: Tensor) -> Result<Tensor> {
        if let Some(want) = &self.want
            && !want.iter().any(|p| p == path)
        {
            return Ok(xs);
        }
        let delta = match self.offsets.iter().find(|(p, _)| p == path) {
            Some((_, o)) => Var::from_tensor(o)?,
            None => Var::zeros(xs.shape(), xs.dtype(), xs.device())?,
        };
        let out = (&xs + delta.as_tensor())?;
        self.taken.push(Tapped {
            path: path.to_owned(),
            activation: xs,
            delta,
        });
        Ok(out)
    }
}

/// One share of a batch that [`UNet::forward_added`] runs on its own thread.
struct Half {
    sample: Tensor,
    context: Tensor,
    text_time: Option<(Tensor, Tensor)>,
    probe: AttnProbe,
}

/// Collects cross-attention maps during one UNet forward pass, and block outputs for gradients
/// when `taps` is set.
pub struct AttnProbe {
    mode: CaptureMode,
    /// Index in the batch of the conditional (positive prompt) item: 1 with CFG ([uncond, cond]), 0 without.
    cond_index: usize,
    pub maps: Vec<CapturedMap>,
    pub taps: Option<Taps>,
}

impl AttnProbe {
    pub fn off() -> Self {
        Self::new(CaptureMode::None, 0)
    }

    pub fn new(mode: CaptureMode, cond_index: usize) -> Self {
        Self {
            mode,
            cond_index,
            maps: Vec::new(),
            taps: None,
        }
    }

    /// A probe that captures no attention and keeps `taps`.
    pub fn tapping(taps: Taps) -> Self {
        Self {
            taps: Some(taps),
            ..Self::off()
        }
    }

    /// True when the forward pass must be differentiable (taps on).
    fn differentiable(&self) -> bool {
        self.taps.is_some()
    }

    /// The block output at `path`, through the taps when they are on.
    fn tap(&mut self, path: impl FnOnce() -> String, xs: Tensor) -> Result<Tensor> {
        match &mut self.taps {
            Some(t) => t.tap(&path(), xs),
            None => Ok(xs),
        }
    }

    pub fn is_on(&self) -> bool {
        self.mode != CaptureMode::None
    }

    fn record(&mut self, layer: usize, heads: usize, height: usize, width: usize, probs: &Tensor) -> Result<()> {
        if !self.is_on() {
            return Ok(());
        }
        let (bh, lq, lk) = probs.dims3()?;
        let batch = bh / heads;
        // Mean over heads as a [1, heads] x [heads, lq*lk] product: one GEMM instead of a
        // strided reduction over the leading axis.
        let cond = probs.reshape((batch, heads, lq * lk))?.narrow(0, self.cond_index, 1)?.squeeze(0)?;
        let weights = Tensor::full(1f32 / heads as f32, (1, heads), probs.device())?.to_dtype(probs.dtype())?;
        let map = weights.matmul(&cond)?.reshape((lq, lk))?;
        self.maps.push(CapturedMap {
            layer,
            height,
            width,
            probs: map,
        });
        Ok(())
    }
}

fn conv2d(cin: usize, cout: usize, k: usize, padding: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    let inner = candle_nn::conv2d(
        cin,
        cout,
        k,
        Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        },
        vb,
    )?;
    let w_flat = if (k == 3 && padding == 1 || k == 1 && padding == 0) && stride == 1 {
        Some(inner.weight().reshape((cout, cin * k * k))?)
    } else {
        None
    };
    Ok(Conv { inner, w_flat, k3: k == 3 })
}

/// A 2-D convolution with diffusers' weights. The 3x3 stride-1 padding-1 ones and the 1x1 ones
/// (most of a UNet's) run on the CPU as one product per image in NCHW order: the weight
/// [c_out, c_in * k * k] as stored, against the im2col columns (3x3) or the input (1x1), the
/// bias and any per-image bias or residual being the accumulator's start
/// ([`kernels::conv_gemm`]). candle 0.11's CPU conv2d instead re-lays the input out as NHWC,
/// re-flattens the weight and gathers the patches pixel by pixel on every call (issue 17's
/// profile). Off the fast path (a GPU, f16/f64, gradients) the 3x3 ones use the same im2col
/// product through candle's ops on the CPU, and everything else candle's conv2d.
#[derive(Clone)]
struct Conv {
    inner: Conv2d,
    /// The weight as [c_out, c_in * k * k] when the product path applies (3x3 / 1x1, stride 1).
    w_flat: Option<Tensor>,
    k3: bool,
}

impl Conv {
    /// The convolution of `x` [B, C, H, W], plus `extra` [B, C_out] per image and channel, plus
    /// `residual` [B, C_out, H, W].
    fn forward_with(&self, x: &Tensor, extra: Option<&Tensor>, residual: Option<&Tensor>) -> Result<Tensor> {
        if let Some(w) = &self.w_flat
            && kernels::all_fast(&[Some(x), Some(w), self.inner.bias(), extra, residual])
        {
            let input = kernels::ConvInput::Nchw;
            return kernels::conv_gemm(x, input, w, self.k3, self.inner.bias(), extra, residual, false);
        }
        let mut out = self.forward_plain(x)?;
        if let Some(e) = extra {
            out = out.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        match residual {
            Some(r) => r + out,
            None => Ok(out),
        }
    }

    /// A 1x1 convolution between token layouts: `x` [B, H * W, C] in, and out [B, H * W, C_out]
    /// when `tokens_out` (else [B, C_out, H, W]), plus `residual` in the output's layout.
    fn forward_tokens(
        &self,
        x: &Tensor,
        (h, w): (usize, usize),
        tokens_in: bool,
        tokens_out: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if let Some(wf) = &self.w_flat
            && !self.k3
            && kernels::all_fast(&[Some(x), Some(wf), self.inner.bias(), residual])
        {
            let input = if tokens_in {
                kernels::ConvInput::Tokens { h, w }
            } else {
                kernels::ConvInput::Nchw
            };
            return kernels::conv_gemm(x, input, wf, false, self.inner.bias(), None, residual, tokens_out);
        }
        let nchw = if tokens_in {
            let (b, _, c) = x.dims3()?;
            x.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()?
        } else {
            x.clone()
        };
        let mut out = self.forward_plain(&nchw)?;
        if tokens_out {
            let (b, c, _, _) = out.dims4()?;
            out = out.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?;
        }
        match residual {
            Some(r) => out + r,
            None => Ok(out),
        }
    }

    fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        // On a GPU candle's conv2d (cuDNN / its kernels) is the better path.
        let Some(w) = self.w_flat.as_ref().filter(|_| x.device().is_cpu() && self.k3) else {
            return self.inner.forward(x);
        };
        let (b, _, h, wd) = x.dims4()?;
        let co = w.dim(0)?;
        // Row c * 9 + kh * 3 + kw of each image's column matrix: the order of the weight's
        // flattened (c_in, kh, kw).
        let cols = kernels::im2col_3x3(x)?;
        let out = w.broadcast_left(b)?.matmul(&cols)?.reshape((b, co, h, wd))?;
        match self.inner.bias() {
            Some(bias) => out.broadcast_add(&bias.reshape((1, co, 1, 1))?),
            None => Ok(out),
        }
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, None)
    }
}

fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNormLayer> {
    GroupNormLayer::new(groups, channels, eps, vb)
}

fn layer_norm(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(
        dim,
        candle_nn::LayerNormConfig {
            eps: 1e-5,
            ..Default::default()
        },
        vb,
    )
}

/// The precision attention and norms compute in: f32, or f64 for an f64 model.
fn internal_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 { DType::F64 } else { DType::F32 }
}

/// Layer norm: candle's fused kernel, or with `differentiable` the same maths in basic ops
/// (the fused kernel has no backward).
fn norm(ln: &LayerNorm, xs: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        return ln.forward(xs);
    }
    let dtype = xs.dtype();
    let x = xs.to_dtype(internal_dtype(dtype))?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_sub(&mean)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + ln.eps())?.sqrt()?)?.to_dtype(dtype)?;
    let x = x.broadcast_mul(ln.weight())?;
    match ln.bias() {
        Some(b) => x.broadcast_add(b),
        None => Ok(x),
    }
}

#[derive(Clone)]
struct ResnetBlock {
    norm1: GroupNormLayer,
    conv1: Conv,
    time_emb_proj: Linear,
    norm2: GroupNormLayer,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
    output_scale_factor: f64,
}

impl ResnetBlock {
    fn new(vb: VarBuilder, cin: usize, cout: usize, temb: usize, groups: usize, eps: f64, output_scale_factor: f64) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv2d(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(temb, cout, vb.pp("time_emb_proj"))?,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv2d(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv2d(cin, cout, 1, 0, 1, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
            output_scale_factor,
        })
    }

    /// `temb_act` is silu(temb), shared by all resnets of the UNet.
    fn forward(&self, xs: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        // conv1 + time embedding, and shortcut + conv2, each one product's accumulator start.
        let t = kernels::linear(temb_act, &self.time_emb_proj, None)?;
        let h = self.conv1.forward_with(&self.norm1.forward(xs, true)?, Some(&t), None)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(xs)?,
            None => xs.clone(),
        };
        let out = self.conv2.forward_with(&self.norm2.forward(&h, true)?, None, Some(&shortcut))?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

#[derive(Clone)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, query_dim: usize, context_dim: usize, heads: usize, dim_head: usize) -> Result<Self> {
        let inner = heads * dim_head;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            scale: (dim_head as f64).powf(-0.5),
        })
    }

    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        xs.reshape((b, l, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, l, d / self.heads))
    }

    /// `probe` is given for cross-attention only: (probe, layer index, height, width).
    /// `residual` is added to the output.
    fn forward(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        probe: Option<(&mut AttnProbe, usize, usize, usize)>,
        differentiable: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let context = context.unwrap_or(xs);
        if !differentiable && kernels::all_fast(&[Some(xs), Some(context), residual]) {
            // Heads read through strides, softmax fused, residual in the output product.
            let q = kernels::linear(xs, &self.to_q, None)?;
            let k = kernels::linear(context, &self.to_k, None)?;
            let v = kernels::linear(context, &self.to_v, None)?;
            // Cross-attention (given a probe) keeps its probabilities whatever the capture
            // mode, so capture on and off run the same arithmetic; self-attention keeps none.
            let (out, probs) = kernels::attention(&q, &k, &v, self.heads, self.scale as f32, probe.is_some())?;
            if let (Some((probe, layer, h, w)), Some(probs)) = (probe, probs) {
                probe.record(layer, self.heads, h, w, &probs)?;
            }
            return kernels::linear(&out, &self.to_out, residual);
        }
        let in_dtype = xs.dtype();
        let internal = internal_dtype(in_dtype);
        let q = self.split_heads(&self.to_q.forward(xs)?)?.to_dtype(internal)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?.to_dtype(internal)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?.to_dtype(internal)?;
        let scores = q.matmul(&(k.t()? * self.scale)?)?;
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            kernels::softmax_last_dim(&scores)?
        };
        if let Some((probe, layer, h, w)) = probe {
            probe.record(layer, self.heads, h, w, &probs)?;
        }
        let out = probs.matmul(&v)?.to_dtype(in_dtype)?;
        let dh = out.dim(D::Minus1)?;
        let out = out
            .reshape((b, self.heads, l, dh))?
            .transpose(1, 2)?
            .reshape((b, l, self.heads * dh))?;
        let out = self.to_out.forward(&out)?;
        match residual {
            Some(r) => out + r,
            None => Ok(out),
        }
    }
}

#[derive(Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        let net = vb.pp("net");
        Ok(Self {
            proj: candle_nn::linear(dim, inner * 2, net.pp("0").pp("proj"))?,
            out: candle_nn::linear(inner, dim, net.pp("2"))?,
        })
    }

    /// The feed-forward of `xs`, plus `residual`.
    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        kernels::linear(&kernels::geglu(&kernels::linear(xs, &self.proj, None)?)?, &self.out, Some(residual))
    }
}

#[derive(Clone)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    /// Index of attn2 in [`UNet::attn_layers`].
    layer: usize,
}

#[derive(Clone)]
enum Proj {
    Conv(Conv),
    Linear(Linear),
}

#[derive(Clone)]
struct Transformer2D {
    norm: GroupNormLayer,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

struct TransformerSpec<'a> {
    channels: usize,
    heads: usize,
    layers: usize,
    context_dim: usize,
    groups: usize,
    linear: bool,
    path: &'a str,
    level: usize,
}

impl Transformer2D {
    fn new(vb: VarBuilder, spec: TransformerSpec, registry: &mut Vec<AttnLayerInfo>) -> Result<Self> {
        let c = spec.channels;
        let dim_head = c / spec.heads;
        let proj = |name: &str| -> Result<Proj> {
            if spec.linear {
                Ok(Proj::Linear(candle_nn::linear(c, c, vb.pp(name))?))
            } else {
                Ok(Proj::Conv(conv2d(c, c, 1, 0, 1, vb.pp(name))?))
            }
        };
        let proj_in = proj("proj_in")?;
        let proj_out = proj("proj_out")?;
        let mut blocks = Vec::with_capacity(spec.layers);
        for i in 0..spec.layers {
            let v = vb.pp("transformer_blocks").pp(i);
            let layer = registry.len();
            registry.push(AttnLayerInfo {
                path: format!("{}.transformer_blocks.{i}.attn2", spec.path),
                heads: spec.heads,
                level: spec.level,
            });
            blocks.push(TransformerBlock {
                norm1: layer_norm(c, v.pp("norm1"))?,
                attn1: Attention::new(v.pp("attn1"), c, c, spec.heads, dim_head)?,
                norm2: layer_norm(c, v.pp("norm2"))?,
                attn2: Attention::new(v.pp("attn2"), c, spec.context_dim, spec.heads, dim_head)?,
                norm3: layer_norm(c, v.pp("norm3"))?,
                ff: FeedForward::new(v.pp("ff"), c)?,
                layer,
            });
        }
        Ok(Self {
            norm: group_norm(spec.groups, c, 1e-6, vb.pp("norm"))?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor, probe: &mut AttnProbe) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let residual = xs;
        let x = self.norm.forward(xs, false)?;
        let mut x = match &self.proj_in {
            Proj::Conv(conv) => conv.forward_tokens(&x, (h, w), false, true, None)?,
            Proj::Linear(lin) => lin.forward(&x.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)?,
        };
        let diff = probe.differentiable();
        for blk in &self.blocks {
            x = blk.attn1.forward(&norm(&blk.norm1, &x, diff)?, None, None, diff, Some(&x))?;
            let p = if probe.is_on() {
                Some((&mut *probe, blk.layer, h, w))
            } else {
                None
            };
            x = blk.attn2.forward(&norm(&blk.norm2, &x, diff)?, Some(context), p, diff, Some(&x))?;
            x = blk.ff.forward(&norm(&blk.norm3, &x, diff)?, &x)?;
        }
        match &self.proj_out {
            Proj::Conv(conv) => conv.forward_tokens(&x, (h, w), true, false, Some(residual)),
            Proj::Linear(lin) => kernels::linear(&x, lin, None)?.reshape((b, h, w, c))?.permute((0, 3, 1, 2))? + residual,
        }
    }
}

#[derive(Clone)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Conv>,
}

#[derive(Clone)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Conv>,
}

#[derive(Clone)]
struct MidBlock {
    resnet0: ResnetBlock,
    attention: Transformer2D,
    resnet1: ResnetBlock,
}

#[derive(Clone)]
pub struct UNet {
    conv_in: Conv,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNormLayer,
    conv_out: Conv,
    /// SDXL's `add_embedding` (`addition_embed_type: "text_time"`): linear_1, linear_2.
    add_embedding: Option<(Linear, Linear)>,
    /// LCM-distilled UNets' `time_embedding.cond_proj` (`time_cond_proj_dim`): the guidance
    /// embedding's projection, added to the timestep embedding before linear_1.
    cond_proj: Option<Linear>,
    attn_layers: Vec<AttnLayerInfo>,
    pub config: UNetConfig,
}

/// Conditioning beyond the text context for one UNet call, each part required by the UNets
/// that have it: SDXL's pooled text embeddings [B, P] and time ids [B, 6] (original size,
/// crop top-left, target size), and LCM-distilled UNets' guidance value.
#[derive(Clone, Copy, Default)]
pub struct AddedCond<'a> {
    /// (`text_embeds`, `time_ids`) for `addition_embed_type: "text_time"`.
    pub text_time: Option<(&'a Tensor, &'a Tensor)>,
    /// The w that `time_cond_proj_dim` UNets embed (diffusers' pipelines pass
    /// `guidance_scale - 1`).
    pub guidance_w: Option<f32>,
}

/// diffusers' `get_guidance_scale_embedding` of one value, in float32 with the same op order:
/// sin then cos of `1000 w` times `exp(-i ln(10000) / (dim/2 - 1))`, zero-padded to an odd `dim`.
pub fn guidance_embedding(w: f32, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let w = w * 1000.0;
    let mut out = vec![0f32; dim];
    for i in 0..half {
        let arg = w * (i as f32 * -step).exp();
        out[i] = arg.sin();
        out[half + i] = arg.cos();
    }
    out
}

/// diffusers' `get_timestep_embedding` of each value, in float32 with the same op order (so
/// the rounding matches): [n, dim], `flip` puts cos first.
fn sinusoidal(values: &[f32], dim: usize, flip: bool, shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let log_period = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|i| (log_period * i as f32 / (half as f32 - shift)).exp()).collect();
    let mut out = vec![0f32; values.len() * dim];
    for (k, &t) in values.iter().enumerate() {
        let row = &mut out[k * dim..(k + 1) * dim];
        for (i, f) in freqs.iter().enumerate() {
            let arg = t * f;
            let (s, c) = (arg.sin(), arg.cos());
            if flip {
                row[i] = c;
                row[half + i] = s;
            } else {
                row[i] = s;
                row[half + i] = c;
            }
        }
    }
    out
}

impl UNet {
    /// A copy whose time embedding is zero for every timestep (the second linear layer of
    /// the time MLP zeroed): the output no longer depends on t. The health check's negative
    /// control; the weights are shared with `self` except that layer.
    pub fn with_zeroed_time_embedding(&self) -> Result<Self> {
        let mut copy = self.clone();
        let w = self.time_linear_2.weight().zeros_like()?;
        let b = self.time_linear_2.bias().map(|b| b.zeros_like()).transpose()?;
        copy.time_linear_2 = Linear::new(w, b);
        Ok(copy)
    }

    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        let cfg = config;
        let n = cfg.block_out_channels.len();
        let ch = &cfg.block_out_channels;
        let temb = ch[0] * 4;
        let groups = cfg.norm_num_groups;
        let eps = cfg.norm_eps;
        let mut registry = Vec::new();

        let conv_in = conv2d(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?;
        let te = vb.pp("time_embedding");
        let time_linear_1 = candle_nn::linear(ch[0], temb, te.pp("linear_1"))?;
        let time_linear_2 = candle_nn::linear(temb, temb, te.pp("linear_2"))?;
        let cond_proj = match cfg.time_cond_proj_dim {
            Some(d) => Some(candle_nn::linear_no_bias(d, ch[0], te.pp("cond_proj"))?),
            None => None,
        };

        let mut down = Vec::with_capacity(n);
        let mut out_ch = ch[0];
        for (i, &block_ch) in ch.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = block_ch;
            let vbd = vb.pp("down_blocks").pp(i);
            let cross = UNetConfig::has_cross_attention(&cfg.down_block_types[i]);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let cin = if j == 0 { in_ch } else { out_ch };
                resnets.push(ResnetBlock::new(vbd.pp("resnets").pp(j), cin, out_ch, temb, groups, eps, 1.0)?);
                if cross {
                    let path = format!("down_blocks.{i}.attentions.{j}");
                    let spec = TransformerSpec {
                        channels: out_ch,
                        heads: cfg.heads(i),
                        layers: cfg.down_transformer_layers(i, j),
                        context_dim: cfg.cross_attention_dim.get(i),
                        groups,
                        linear: cfg.use_linear_projection,
                        path: &path,
                        level: i,
                    };
                    attentions.push(Transformer2D::new(vbd.pp("attentions").pp(j), spec, &mut registry)?);
                }
            }
            let downsampler = if i + 1 < n {
                Some(conv2d(
                    out_ch,
                    out_ch,
                    3,
                    cfg.downsample_padding,
                    2,
                    vbd.pp("downsamplers").pp("0").pp("conv"),
                )?)
            } else {
                None
            };
            down.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let last = ch[n - 1];
        let vbm = vb.pp("mid_block");
        let mid_scale = cfg.mid_block_scale_factor;
        let mid = MidBlock {
            resnet0: ResnetBlock::new(vbm.pp("resnets").pp("0"), last, last, temb, groups, eps, mid_scale)?,
            attention: Transformer2D::new(
                vbm.pp("attentions").pp("0"),
                TransformerSpec {
                    channels: last,
                    heads: cfg.heads(n - 1),
                    layers: cfg.mid_transformer_layers(),
                    context_dim: cfg.cross_attention_dim.get(n - 1),
                    groups,
                    linear: cfg.use_linear_projection,
                    path: "mid_block.attentions.0",
                    level: n - 1,
                },
                &mut registry,
            )?,
            resnet1: ResnetBlock::new(vbm.pp("resnets").pp("1"), last, last, temb, groups, eps, mid_scale)?,
        };

        let mut up = Vec::with_capacity(n);
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut prev_out = rev[0];
        for i in 0..n {
            let block = n - 1 - i; // the down block this up block mirrors
            let out_c = rev[i];
            let in_c = rev[(i + 1).min(n - 1)];
            let vbu = vb.pp("up_blocks").pp(i);
            let cross = UNetConfig::has_cross_attention(&cfg.up_block_types[i]);
            let layers = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { in_c } else { out_c };
                let rin = if j == 0 { prev_out } else { out_c };
                resnets.push(ResnetBlock::new(
                    vbu.pp("resnets").pp(j),
                    rin + skip,
                    out_c,
                    temb,
                    groups,
                    eps,
                    1.0,
                )?);
                if cross {
                    let path = format!("up_blocks.{i}.attentions.{j}");
                    let spec = TransformerSpec {
                        channels: out_c,
                        heads: cfg.heads(block),
                        layers: cfg.up_transformer_layers(i, j),
                        context_dim: cfg.cross_attention_dim.get(block),
                        groups,
                        linear: cfg.use_linear_projection,
                        path: &path,
                        level: block,
                    };
                    attentions.push(Transformer2D::new(vbu.pp("attentions").pp(j), spec, &mut registry)?);
                }
            }
            let upsampler = if i + 1 < n {
                Some(conv2d(out_c, out_c, 3, 1, 1, vbu.pp("upsamplers").pp("0").pp("conv"))?)
            } else {
                None
            };
            up.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
            prev_out = out_c;
        }

        let add_embedding = match cfg.addition_embed_type.as_deref() {
            Some("text_time") => {
                let input = cfg.projection_class_embeddings_input_dim.unwrap_or(0);
                let va = vb.pp("add_embedding");
                Some((
                    candle_nn::linear(input, temb, va.pp("linear_1"))?,
                    candle_nn::linear(temb, temb, va.pp("linear_2"))?,
                ))
            }
            _ => None,
        };

        Ok(Self {
            conv_in,
            time_linear_1,
            time_linear_2,
            add_embedding,
            cond_proj,
            down,
            mid,
            up,
            conv_norm_out: group_norm(groups, ch[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(ch[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
            attn_layers: registry,
            config: config.clone(),
        })
    }

    /// Every block whose output can be tapped, in diffusers' module order: each down block's
    /// resnets, attentions and downsampler, the mid block's resnet, attention, resnet, each up
    /// block's resnets, attentions and upsampler.
    pub fn block_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, blk) in self.down.iter().enumerate() {
            for j in 0..blk.resnets.len() {
                out.push(format!("down_blocks.{i}.resnets.{j}"));
                if j < blk.attentions.len() {
                    out.push(format!("down_blocks.{i}.attentions.{j}"));
                }
            }
            if blk.downsampler.is_some() {
                out.push(format!("down_blocks.{i}.downsamplers.0"));
            }
        }
        out.extend(["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"].map(String::from));
        for (i, blk) in self.up.iter().enumerate() {
            for j in 0..blk.resnets.len() {
                out.push(format!("up_blocks.{i}.resnets.{j}"));
                if j < blk.attentions.len() {
                    out.push(format!("up_blocks.{i}.attentions.{j}"));
                }
            }
            if blk.upsampler.is_some() {
                out.push(format!("up_blocks.{i}.upsamplers.0"));
            }
        }
        out
    }

    /// The cross-attention layers in diffusers' module order (down, mid, up).
    pub fn attn_layers(&self) -> &[AttnLayerInfo] {
        &self.attn_layers
    }

    /// diffusers' `get_timestep_embedding` in float32 (same op order, so the rounding matches).
    fn timestep_embedding(&self, timestep: f64, batch: usize, device: &Device, dtype: DType) -> Result<Tensor> {
        let dim = self.config.block_out_channels[0];
        let emb = sinusoidal(&[timestep as f32], dim, self.config.flip_sin_to_cos, self.config.freq_shift as f32);
        let one = Tensor::from_vec(emb, (1, dim), device)?;
        one.repeat((batch, 1))?.to_dtype(dtype)
    }

    /// Whether the UNet needs SDXL's added conditioning.
    pub fn needs_added_cond(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// Whether the UNet takes the guidance value as an input (`time_cond_proj_dim`, LCM
    /// distillation): its pipelines then run no classifier-free guidance batch.
    pub fn embeds_guidance(&self) -> bool {
        self.cond_proj.is_some()
    }

    /// SDXL's `aug_emb`: `add_embedding(concat(text_embeds, add_time_proj(time_ids)))`.
    fn aug_embedding(&self, text_embeds: &Tensor, time_ids: &Tensor, dtype: DType) -> Result<Option<Tensor>> {
        let Some((l1, l2)) = &self.add_embedding else { return Ok(None) };
        let (b, n) = time_ids.dims2()?;
        let dim = self.config.addition_time_embed_dim.unwrap_or(0);
        let ids: Vec<f32> = time_ids.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let t = sinusoidal(&ids, dim, self.config.flip_sin_to_cos, self.config.freq_shift as f32);
        let time_embeds = Tensor::from_vec(t, (b, n * dim), time_ids.device())?.to_dtype(dtype)?;
        let add = Tensor::cat(&[&text_embeds.to_dtype(dtype)?, &time_embeds], 1)?;
        Ok(Some(l2.forward(&l1.forward(&add)?.silu()?)?))
    }

    /// One UNet evaluation: `sample` [B, C, h, w], the same `timestep` for the whole batch,
    /// `context` [B, 77, D]. Cross-attention maps go to `probe` when it is on.
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor, probe: &mut AttnProbe) -> Result<Tensor> {
        self.forward_added(sample, timestep, context, AddedCond::default(), probe)
    }

    /// [`UNet::forward`] with the added conditioning: SDXL's text_time inputs (required when
    /// the config has `addition_embed_type: "text_time"`) and the guidance value (required with
    /// `time_cond_proj_dim`); parts the UNet does not have are ignored.
    ///
    /// On a multi-core CPU a batch of two or more (a CFG pair) is evaluated as two halves at
    /// once, one per thread, each with its kernels kept on its thread ([`kernels::serial`]):
    /// every layer works on each image separately, so the halves are the batch's rows, and two
    /// whole forward passes in parallel leave no core waiting on the small layers of a small
    /// model (issue 17).
    pub fn forward_added(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: AddedCond,
        probe: &mut AttnProbe,
    ) -> Result<Tensor> {
        if let Some(halves) = Self::split_batch(sample, context, &added, probe)? {
            return self.forward_halves(halves, timestep, added.guidance_w, probe);
        }
        self.forward_one(sample, timestep, context, added, probe)
    }

    /// The two halves of the batch when [`UNet::forward_added`] should run them in parallel:
    /// fast-path CPU tensors, at least two images, more than one rayon thread, no taps.
    fn split_batch(sample: &Tensor, context: &Tensor, added: &AddedCond, probe: &AttnProbe) -> Result<Option<[Half; 2]>> {
        let b = sample.dim(0)?;
        let text_time = added.text_time;
        let fits = |t: &Tensor| t.dims().first() == Some(&b);
        if b < 2
            || rayon::current_num_threads() < 2
            || probe.taps.is_some()
            || !kernels::all_fast(&[Some(sample), Some(context)])
            || !fits(context)
            || text_time.is_some_and(|(e, ids)| !fits(e) || !fits(ids))
        {
            return Ok(None);
        }
        let first = b / 2;
        let part = |start: usize, len: usize| -> Result<Half> {
            Ok(Half {
                sample: sample.narrow(0, start, len)?,
                context: context.narrow(0, start, len)?,
                text_time: text_time
                    .map(|(e, ids)| Ok::<_, candle_core::Error>((e.narrow(0, start, len)?, ids.narrow(0, start, len)?)))
                    .transpose()?,
                // The probe records one image: the half holding it records it.
                probe: match probe.cond_index.checked_sub(start) {
                    Some(i) if i < len => AttnProbe::new(probe.mode, i),
                    _ => AttnProbe::off(),
                },
            })
        };
        Ok(Some([part(0, first)?, part(first, b - first)?]))
    }

    /// Runs both halves of [`UNet::split_batch`] at once and joins their outputs and maps.
    fn forward_halves(&self, halves: [Half; 2], timestep: f64, guidance_w: Option<f32>, probe: &mut AttnProbe) -> Result<Tensor> {
        let run = |mut h: Half| -> Result<(Tensor, AttnProbe)> {
            kernels::serial(|| {
                let added = AddedCond {
                    text_time: h.text_time.as_ref().map(|(e, ids)| (e, ids)),
                    guidance_w,
                };
                let out = self.forward_one(&h.sample, timestep, &h.context, added, &mut h.probe)?;
                Ok((out, h.probe))
            })
        };
        let [a, b] = halves;
        let (ra, rb) = rayon::join(|| run(a), || run(b));
        let ((out_a, probe_a), (out_b, probe_b)) = (ra?, rb?);
        probe.maps.extend(probe_a.maps);
        probe.maps.extend(probe_b.maps);
        Tensor::cat(&[&out_a, &out_b], 0)
    }

    /// [`UNet::forward_added`] on the whole batch in one pass.
    fn forward_one(&self, sample: &Tensor, timestep: f64, context: &Tensor, added: AddedCond, probe: &mut AttnProbe) -> Result<Tensor> {
        let (b, _, _, _) = sample.dims4()?;
        let dtype = sample.dtype();
        let mut t_emb = self.timestep_embedding(timestep, b, sample.device(), dtype)?;
        if let Some(proj) = &self.cond_proj {
            let w = added
                .guidance_w
                .ok_or_else(|| candle_core::Error::Msg("this UNet (time_cond_proj_dim) needs the guidance value".into()))?;
            let dim = proj.weight().dim(1)?;
            let cond = Tensor::from_vec(guidance_embedding(w, dim), (1, dim), sample.device())?
                .to_dtype(dtype)?
                .repeat((b, 1))?;
            t_emb = (t_emb + proj.forward(&cond)?)?;
        }
        let mut emb = self.time_linear_2.forward(&self.time_linear_1.forward(&t_emb)?.silu()?)?;
        if self.add_embedding.is_some() {
            let (text_embeds, time_ids) = added
                .text_time
                .ok_or_else(|| candle_core::Error::Msg("this UNet (text_time) needs the pooled text embeddings and time ids".into()))?;
            if let Some(aug) = self.aug_embedding(text_embeds, time_ids, dtype)? {
                emb = (emb + aug)?;
            }
        }
        let emb_act = kernels::silu(&emb)?;

        let mut xs = self.conv_in.forward(sample)?;
        let mut skips = vec![xs.clone()];
        for (i, blk) in self.down.iter().enumerate() {
            for (j, resnet) in blk.resnets.iter().enumerate() {
                xs = probe.tap(|| format!("down_blocks.{i}.resnets.{j}"), resnet.forward(&xs, &emb_act)?)?;
                if let Some(attn) = blk.attentions.get(j) {
                    let out = attn.forward(&xs, context, probe)?;
                    xs = probe.tap(|| format!("down_blocks.{i}.attentions.{j}"), out)?;
                }
                skips.push(xs.clone());
            }
            if let Some(ds) = &blk.downsampler {
                xs = probe.tap(|| format!("down_blocks.{i}.downsamplers.0"), ds.forward(&xs)?)?;
                skips.push(xs.clone());
            }
        }

        xs = probe.tap(|| "mid_block.resnets.0".into(), self.mid.resnet0.forward(&xs, &emb_act)?)?;
        let out = self.mid.attention.forward(&xs, context, probe)?;
        xs = probe.tap(|| "mid_block.attentions.0".into(), out)?;
        xs = probe.tap(|| "mid_block.resnets.1".into(), self.mid.resnet1.forward(&xs, &emb_act)?)?;

        for (i, blk) in self.up.iter().enumerate() {
            for (j, resnet) in blk.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("UNet skip connections exhausted".into()))?;
                xs = Tensor::cat(&[&xs, &skip], 1)?;
                xs = probe.tap(|| format!("up_blocks.{i}.resnets.{j}"), resnet.forward(&xs, &emb_act)?)?;
                if let Some(attn) = blk.attentions.get(j) {
                    let out = attn.forward(&xs, context, probe)?;
                    xs = probe.tap(|| format!("up_blocks.{i}.attentions.{j}"), out)?;
                }
            }
            if let Some(us) = &blk.upsampler {
                // Upsample to the spatial size of the next skip connection: 2x when the latent
                // size divides evenly, and what diffusers' `upsample_size` does otherwise.
                let (_, _, th, tw) = skips.last().map(|s| s.dims4()).transpose()?.unwrap_or((0, 0, 0, 0));
                xs = probe.tap(
                    || format!("up_blocks.{i}.upsamplers.0"),
                    us.forward(&xs.upsample_nearest2d(th, tw)?)?,
                )?;
            }
        }
        let xs = self.conv_norm_out.forward(&xs, true)?;
        self.conv_out.forward(&xs)
    }
}
