//! Plain config structs mirroring the diffusers / transformers JSON files of a model folder:
//! `model_index.json`, `unet/config.json`, `vae/config.json`, `text_encoder/config.json`.
//! Unknown keys are ignored (as diffusers does); values we cannot honour are rejected with an
//! error that names the key and the value, never silently approximated.

use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

use super::ModelError;

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let value = read_json(path)?;
    serde_json::from_value(value).map_err(|e| ModelError::Json {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn unsupported(file: &str, key: &str, value: impl std::fmt::Display) -> ModelError {
    ModelError::Unsupported {
        file: file.to_owned(),
        key: key.to_owned(),
        value: value.to_string(),
    }
}

/// An int that diffusers also accepts as a per-block list (`attention_head_dim`,
/// `transformer_layers_per_block`, `num_attention_heads`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, block: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(list) => list[block.min(list.len().saturating_sub(1))],
        }
    }

    fn check_len(&self, n: usize, file: &str, key: &str) -> Result<(), ModelError> {
        match self {
            PerBlock::Each(list) if list.len() != n => {
                Err(unsupported(file, key, format!("{list:?} (expected {n} entries, one per block)")))
            }
            _ => Ok(()),
        }
    }
}

/// `transformer_layers_per_block`: one count for every block, one per block, or (asymmetrical
/// UNets) per block a list with one count per attention layer of the block.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum TransformerLayers {
    One(usize),
    Each(Vec<PerBlock>),
}

impl TransformerLayers {
    fn block(&self, block: usize) -> PerBlock {
        match self {
            TransformerLayers::One(v) => PerBlock::One(*v),
            TransformerLayers::Each(list) => list[block.min(list.len().saturating_sub(1))].clone(),
        }
    }

    fn nested(&self) -> bool {
        matches!(self, TransformerLayers::Each(list) if list.iter().any(|b| matches!(b, PerBlock::Each(_))))
    }
}

/// `unet/config.json` of a `UNet2DConditionModel`
/// (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5/unet/config.json).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct UNetConfig {
    #[serde(default = "UNetConfig::default_class")]
    pub _class_name: String,
    #[serde(default = "d4")]
    pub in_channels: usize,
    #[serde(default = "d4")]
    pub out_channels: usize,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "UNetConfig::default_blocks")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "UNetConfig::default_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "UNetConfig::default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "UNetConfig::default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d2")]
    pub layers_per_block: usize,
    #[serde(default = "UNetConfig::default_head_dim")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default = "UNetConfig::default_cross_dim")]
    pub cross_attention_dim: PerBlock,
    #[serde(default = "UNetConfig::default_tlpb")]
    pub transformer_layers_per_block: TransformerLayers,
    /// The up blocks' counts of an asymmetrical UNet (required with nested
    /// `transformer_layers_per_block`), in up-block order.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<PerBlock>>,
    #[serde(default = "d32")]
    pub norm_num_groups: usize,
    #[serde(default = "UNetConfig::default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "UNetConfig::default_act")]
    pub act_fn: String,
    #[serde(default = "d1")]
    pub downsample_padding: usize,
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub only_cross_attention: Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub conv_in_kernel: Option<usize>,
    #[serde(default)]
    pub conv_out_kernel: Option<usize>,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default)]
    pub attention_type: Option<String>,
}

fn d1() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn d2() -> usize {
    2
}
fn d4() -> usize {
    4
}
fn d32() -> usize {
    32
}
fn yes() -> bool {
    true
}

impl UNetConfig {
    fn default_class() -> String {
        "UNet2DConditionModel".into()
    }
    fn default_blocks() -> Vec<usize> {
        vec![320, 640, 1280, 1280]
    }
    fn default_down() -> Vec<String> {
        [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ]
        .map(String::from)
        .to_vec()
    }
    fn default_up() -> Vec<String> {
        ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
            .map(String::from)
            .to_vec()
    }
    fn default_mid() -> Option<String> {
        Some("UNetMidBlock2DCrossAttn".into())
    }
    fn default_head_dim() -> PerBlock {
        PerBlock::One(8)
    }
    fn default_cross_dim() -> PerBlock {
        PerBlock::One(1280)
    }
    fn default_tlpb() -> TransformerLayers {
        TransformerLayers::One(1)
    }
    fn default_norm_eps() -> f64 {
        1e-5
    }
    fn default_act() -> String {
        "silu".into()
    }

    /// The SD 1.5 UNet (stable-diffusion-v1-5/stable-diffusion-v1-5/unet/config.json).
    pub fn sd15() -> Self {
        serde_json::from_value(serde_json::json!({
            "_class_name": "UNet2DConditionModel",
            "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 768,
            "layers_per_block": 2,
            "sample_size": 64
        }))
        .expect("static config parses")
    }

    /// stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the fields that differ from
    /// the defaults).
    pub fn sdxl() -> Self {
        serde_json::from_value(serde_json::json!({
            "_class_name": "UNet2DConditionModel",
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "layers_per_block": 2,
            "projection_class_embeddings_input_dim": 2816,
            "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "use_linear_projection": true
        }))
        .expect("static config parses")
    }

    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let cfg: Self = parse(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Number of attention heads of down block `block` (diffusers' quirk: for SD1/SD2 configs
    /// `attention_head_dim` holds the number of heads; `num_attention_heads`, when set, wins).
    pub fn heads(&self, block: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(block)
    }

    /// Transformer layers of attention `j` of down block `block` (diffusers: an int per block is
    /// repeated for each of the block's layers).
    pub fn down_transformer_layers(&self, block: usize, j: usize) -> usize {
        self.transformer_layers_per_block.block(block).get(j)
    }

    /// Transformer layers of the mid block's attention (the last block's entry; its first
    /// count when nested, as diffusers' mid block indexes it).
    pub fn mid_transformer_layers(&self) -> usize {
        self.transformer_layers_per_block.block(self.block_out_channels.len() - 1).get(0)
    }

    /// Transformer layers of attention `j` of up block `up` (up-block order): from
    /// `reverse_transformer_layers_per_block` when set, else the mirrored down block's count.
    pub fn up_transformer_layers(&self, up: usize, j: usize) -> usize {
        match &self.reverse_transformer_layers_per_block {
            Some(rev) => rev[up].get(j),
            None => self
                .transformer_layers_per_block
                .block(self.block_out_channels.len() - 1 - up)
                .get(j),
        }
    }

    pub fn has_cross_attention(block_type: &str) -> bool {
        block_type.starts_with("CrossAttn")
    }

    /// `transformer_layers_per_block` (and its reverse) against the block layout, with
    /// diffusers' rule that nested counts need the reverse list.
    fn check_transformer_layers(&self) -> Result<(), ModelError> {
        const F: &str = "unet/config.json";
        let n = self.block_out_channels.len();
        let tl = &self.transformer_layers_per_block;
        if let TransformerLayers::Each(list) = tl
            && list.len() != n
        {
            return Err(unsupported(
                F,
                "transformer_layers_per_block",
                format!("{list:?} (expected {n} entries, one per block)"),
            ));
        }
        let empty = |b: &PerBlock| matches!(b, PerBlock::Each(l) if l.is_empty());
        let mut all_rev = self.reverse_transformer_layers_per_block.iter().flatten();
        if (0..n).map(|i| tl.block(i)).any(|b| empty(&b)) || all_rev.any(empty) {
            return Err(unsupported(F, "transformer_layers_per_block", "an empty list of counts"));
        }
        // A block's per-layer list must cover every attention the block has.
        let covers = |b: &PerBlock, layers: usize| match b {
            PerBlock::One(_) => true,
            PerBlock::Each(l) => l.len() >= layers,
        };
        for (i, t) in self.down_block_types.iter().enumerate() {
            if Self::has_cross_attention(t) && !covers(&tl.block(i), self.layers_per_block) {
                return Err(unsupported(
                    F,
                    "transformer_layers_per_block",
                    format!("{:?} (down block {i} has {} attention layers)", tl.block(i), self.layers_per_block),
                ));
            }
        }
        match &self.reverse_transformer_layers_per_block {
            None if tl.nested() => Err(unsupported(
                F,
                "transformer_layers_per_block",
                format!("{tl:?} (nested counts need reverse_transformer_layers_per_block, as in diffusers)"),
            )),
            None => Ok(()),
            Some(rev) if rev.len() != n => Err(unsupported(
                F,
                "reverse_transformer_layers_per_block",
                format!("{rev:?} (expected {n} entries, one per up block)"),
            )),
            Some(rev) => {
                for (i, t) in self.up_block_types.iter().enumerate() {
                    if Self::has_cross_attention(t) && !covers(&rev[i], self.layers_per_block + 1) {
                        return Err(unsupported(
                            F,
                            "reverse_transformer_layers_per_block",
                            format!("{:?} (up block {i} has {} attention layers)", rev[i], self.layers_per_block + 1),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        const F: &str = "unet/config.json";
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(unsupported(F, "block_out_channels", "[]"));
        }
        if self.down_block_types.len() != n {
            return Err(unsupported(
                F,
                "down_block_types",
                format!("{:?} (expected {n} entries)", self.down_block_types),
            ));
        }
        if self.up_block_types.len() != n {
            return Err(unsupported(
                F,
                "up_block_types",
                format!("{:?} (expected {n} entries)", self.up_block_types),
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(unsupported(F, "down_block_types", t));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(unsupported(F, "up_block_types", t));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => return Err(unsupported(F, "mid_block_type", format!("{other:?}"))),
        }
        self.attention_head_dim.check_len(n, F, "attention_head_dim")?;
        if let Some(h) = &self.num_attention_heads {
            h.check_len(n, F, "num_attention_heads")?;
        }
        self.check_transformer_layers()?;
        self.cross_attention_dim.check_len(n, F, "cross_attention_dim")?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                return Err(unsupported(
                    F,
                    "norm_num_groups",
                    format!("{} (does not divide block_out_channels[{i}] = {c})", self.norm_num_groups),
                ));
            }
            let heads = self.heads(i);
            if heads == 0 || c % heads != 0 {
                return Err(unsupported(
                    F,
                    "attention_head_dim",
                    format!("{heads} heads (does not divide {c} channels)"),
                ));
            }
        }
        if self.addition_embed_type.as_deref() == Some("text_time") {
            if self.addition_time_embed_dim.is_none_or(|d| d == 0 || d % 2 != 0) {
                return Err(unsupported(
                    F,
                    "addition_time_embed_dim",
                    format!("{:?} (text_time needs an even size)", self.addition_time_embed_dim),
                ));
            }
            if self.projection_class_embeddings_input_dim.is_none_or(|d| d == 0) {
                return Err(unsupported(
                    F,
                    "projection_class_embeddings_input_dim",
                    format!("{:?} (text_time needs it)", self.projection_class_embeddings_input_dim),
                ));
            }
        }
        if self.act_fn != "silu" {
            return Err(unsupported(F, "act_fn", &self.act_fn));
        }
        match &self.only_cross_attention {
            Value::Null | Value::Bool(false) => {}
            Value::Array(a) if a.iter().all(|v| v == &Value::Bool(false)) => {}
            other => return Err(unsupported(F, "only_cross_attention", other)),
        }
        let checks: [(&str, bool, String); 9] = [
            ("dual_cross_attention", self.dual_cross_attention, "true".into()),
            (
                "class_embed_type",
                self.class_embed_type.is_some(),
                format!("{:?}", self.class_embed_type),
            ),
            (
                "addition_embed_type",
                self.addition_embed_type.as_deref().is_some_and(|t| t != "text_time"),
                format!("{:?} (only SDXL's \"text_time\" is supported)", self.addition_embed_type),
            ),
            (
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift.as_deref().is_some_and(|s| s != "default"),
                format!("{:?}", self.resnet_time_scale_shift),
            ),
            (
                "time_embedding_type",
                self.time_embedding_type.as_deref().is_some_and(|s| s != "positional"),
                format!("{:?}", self.time_embedding_type),
            ),
            (
                "encoder_hid_dim",
                self.encoder_hid_dim.is_some(),
                format!("{:?}", self.encoder_hid_dim),
            ),
            (
                "downsample_padding",
                self.downsample_padding > 1,
                format!("{} (diffusers' UNets use 0 or 1)", self.downsample_padding),
            ),
            (
                "conv_in_kernel",
                self.conv_in_kernel.is_some_and(|k| k != 3) || self.conv_out_kernel.is_some_and(|k| k != 3),
                format!("{:?}/{:?}", self.conv_in_kernel, self.conv_out_kernel),
            ),
            (
                "attention_type",
                self.attention_type.as_deref().is_some_and(|s| s != "default"),
                format!("{:?}", self.attention_type),
            ),
        ];
        for (key, bad, value) in checks {
            if bad {
                return Err(unsupported(F, key, value));
            }
        }
        Ok(())
    }
}

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct VaeConfig {
    #[serde(default = "d3")]
    pub in_channels: usize,
    #[serde(default = "d3")]
    pub out_channels: usize,
    #[serde(default = "VaeConfig::default_blocks")]
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "d1")]
    pub layers_per_block: usize,
    #[serde(default = "d4")]
    pub latent_channels: usize,
    #[serde(default = "d32")]
    pub norm_num_groups: usize,
    #[serde(default = "VaeConfig::default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// SDXL: decode in f32 even when the model runs in f16 (diffusers' default: true).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "VaeConfig::default_act")]
    pub act_fn: String,
}

fn d3() -> usize {
    3
}

impl VaeConfig {
    fn default_blocks() -> Vec<usize> {
        vec![64]
    }
    fn default_scaling() -> f64 {
        0.18215
    }
    fn default_act() -> String {
        "silu".into()
    }

    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        const F: &str = "vae/config.json";
        let cfg: Self = parse(path)?;
        for t in &cfg.down_block_types {
            if t != "DownEncoderBlock2D" {
                return Err(unsupported(F, "down_block_types", t));
            }
        }
        for t in &cfg.up_block_types {
            if t != "UpDecoderBlock2D" {
                return Err(unsupported(F, "up_block_types", t));
            }
        }
        if !cfg.mid_block_add_attention {
            return Err(unsupported(F, "mid_block_add_attention", "false"));
        }
        if cfg.act_fn != "silu" {
            return Err(unsupported(F, "act_fn", &cfg.act_fn));
        }
        if cfg.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(unsupported(F, "shift_factor", format!("{:?}", cfg.shift_factor)));
        }
        if cfg.block_out_channels.is_empty() || cfg.block_out_channels.len() > 16 {
            return Err(unsupported(
                F,
                "block_out_channels",
                format!("{:?} (1 to 16 blocks: the VAE factor is 2^(blocks - 1))", cfg.block_out_channels),
            ));
        }
        if let Some(c) = cfg
            .block_out_channels
            .iter()
            .find(|&&c| cfg.norm_num_groups == 0 || c % cfg.norm_num_groups != 0)
        {
            return Err(unsupported(
                F,
                "norm_num_groups",
                format!("{} (does not divide block_out_channels {c})", cfg.norm_num_groups),
            ));
        }
        if !(cfg.scaling_factor.is_finite() && cfg.scaling_factor > 0.0) {
            return Err(unsupported(
                F,
                "scaling_factor",
                format!("{} (must be a positive number)", cfg.scaling_factor),
            ));
        }
        Ok(cfg)
    }

    /// Pixels per latent cell: 2^(len(block_out_channels) - 1), as diffusers' `vae_scale_factor`.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `text_encoder/config.json` of a transformers `CLIPTextModel`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct TextEncoderConfig {
    #[serde(default = "TextEncoderConfig::default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "TextEncoderConfig::default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "TextEncoderConfig::default_inter")]
    pub intermediate_size: usize,
    #[serde(default = "TextEncoderConfig::default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "TextEncoderConfig::default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "TextEncoderConfig::default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "TextEncoderConfig::default_act")]
    pub hidden_act: String,
    #[serde(default = "TextEncoderConfig::default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// The projection of `CLIPTextModelWithProjection` (SDXL's second encoder).
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// transformers' pooling: 2 (the legacy configs) means "the position of the largest id".
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl TextEncoderConfig {
    fn default_vocab() -> usize {
        49408
    }
    fn default_hidden() -> usize {
        512
    }
    fn default_inter() -> usize {
        2048
    }
    fn default_layers() -> usize {
        12
    }
    fn default_heads() -> usize {
        8
    }
    fn default_positions() -> usize {
        77
    }
    fn default_act() -> String {
        "quick_gelu".into()
    }
    fn default_eps() -> f64 {
        1e-5
    }

    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        const F: &str = "text_encoder/config.json";
        let cfg: Self = parse(path)?;
        if !matches!(cfg.hidden_act.as_str(), "quick_gelu" | "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(unsupported(F, "hidden_act", &cfg.hidden_act));
        }
        if let Some(arch) = &cfg.architectures
            && !arch.iter().any(|a| a == "CLIPTextModel" || a == "CLIPTextModelWithProjection")
        {
            return Err(unsupported(F, "architectures", format!("{arch:?}")));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(unsupported(F, "num_attention_heads", cfg.num_attention_heads));
        }
        Ok(cfg)
    }
}

/// `model_index.json`: which component classes the pipeline has.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    pub class_name: String,
    pub components: Vec<(String, Option<(String, String)>)>,
    /// SDXL's `force_zeros_for_empty_prompt` (diffusers' default: true).
    pub force_zeros_for_empty_prompt: bool,
}

impl ModelIndex {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let value = read_json(path)?;
        let obj = value.as_object().ok_or_else(|| ModelError::Json {
            path: path.to_owned(),
            message: "not a JSON object".into(),
        })?;
        let class_name = obj.get("_class_name").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut components = Vec::new();
        for (k, v) in obj {
            if k.starts_with('_') {
                continue;
            }
            let pair = v
                .as_array()
                .and_then(|a| match (a.first().and_then(Value::as_str), a.get(1).and_then(Value::as_str)) {
                    (Some(lib), Some(class)) => Some((lib.to_owned(), class.to_owned())),
                    _ => None,
                });
            components.push((k.clone(), pair));
        }
        let force_zeros_for_empty_prompt = obj.get("force_zeros_for_empty_prompt").and_then(Value::as_bool).unwrap_or(true);
        Ok(Self {
            class_name,
            components,
            force_zeros_for_empty_prompt,
        })
    }

    /// An SDXL pipeline (two text encoders, text_time conditioning).
    pub fn is_xl(&self) -> bool {
        self.class_name == "StableDiffusionXLPipeline" || self.component("text_encoder_2").is_some()
    }

    pub fn component(&self, name: &str) -> Option<&(String, String)> {
        self.components.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.as_ref())
    }

    /// Pipelines whose components this loader knows how to run.
    pub fn check_supported(&self) -> Result<(), ModelError> {
        const F: &str = "model_index.json";
        if self.class_name.contains("XL") && !matches!(self.class_name.as_str(), "StableDiffusionXLPipeline") {
            return Err(unsupported(
                F,
                "_class_name",
                format!("{} (of the SDXL family only StableDiffusionXLPipeline runs)", self.class_name),
            ));
        }
        if self.is_xl() {
            match self.component("text_encoder_2") {
                Some((_, class)) if class == "CLIPTextModelWithProjection" => {}
                Some((_, class)) => return Err(unsupported(F, "text_encoder_2", class)),
                None => {
                    return Err(ModelError::MissingComponent {
                        component: "text_encoder_2".into(),
                    });
                }
            }
        }
        for (name, expected) in [
            ("unet", "UNet2DConditionModel"),
            ("vae", "AutoencoderKL"),
            ("text_encoder", "CLIPTextModel"),
        ] {
            match self.component(name) {
                Some((_, class)) if class == expected || (name == "text_encoder" && class == "CLIPTextModelWithProjection") => {}
                Some((_, class)) => return Err(unsupported(F, name, class)),
                None => {
                    return Err(ModelError::MissingComponent {
                        component: name.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}
