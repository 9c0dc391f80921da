//! Loading a diffusers-format Stable Diffusion folder into candle modules.
//!
//! Architecture invariant: every size comes from the folder's own config files; nothing here
//! assumes a particular checkpoint.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::ModelError;
use super::clip::ClipTextEncoder;
use super::config::{ModelIndex, TextEncoderConfig, UNetConfig, VaeConfig};
use super::tokenizer::ClipTokenizer;
use super::unet::UNet;
use super::vae::Vae;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeChoice {
    #[default]
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype '{other}' (expected f32, f16 or bf16)")),
        }
    }
}

impl DTypeChoice {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(format!("unknown device '{other}' (expected cpu or cuda)")),
        }
    }
}

impl DeviceChoice {
    pub fn device(self) -> Result<Device, ModelError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => Device::new_cuda(0).map_err(ModelError::Candle),
        }
    }
}

/// The loaded pipeline components. Owned by the worker thread.
pub struct StableDiffusion {
    pub root: PathBuf,
    pub name: String,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextEncoder,
    /// SDXL's second tokenizer and text encoder, and its empty-negative rule.
    pub xl: Option<XlParts>,
    pub unet: UNet,
    pub vae: Vae,
    /// `scheduler/scheduler_config.json` as written. The model layer does not interpret it:
    /// `sampling::config::SchedulerConfig` parses it (through `pipeline::scheduler_config`).
    pub scheduler_json: String,
    pub device: Device,
    pub dtype: DType,
    /// The VAE's compute dtype: `dtype`, except f32 for an SDXL pipeline in f16 whose VAE has
    /// `force_upcast` (diffusers' `upcast_vae`: the f16 weights, decoded in f32).
    pub vae_dtype: DType,
}

/// What an SDXL pipeline has beyond SD's components.
pub struct XlParts {
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder_2: ClipTextEncoder,
    /// Zero negative embeddings when the negative prompt is empty (model_index.json).
    pub force_zeros_for_empty_prompt: bool,
}

/// The safetensors files holding one component's weights, preferring the variant that matches
/// the requested dtype (`*.fp16.safetensors` for f16) and falling back to the plain file.
pub fn weight_files(dir: &Path, stem: &str, dtype: DType) -> Result<Vec<PathBuf>, ModelError> {
    let variants: &[&str] = if dtype == DType::F16 { &[".fp16", ""] } else { &["", ".fp16"] };
    for v in variants {
        let single = dir.join(format!("{stem}{v}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{stem}{v}.safetensors.index.json"));
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
                path: index.clone(),
                source,
            })?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path: index.clone(),
                message: e.to_string(),
            })?;
            let mut files: Vec<PathBuf> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Json {
                    path: index.clone(),
                    message: "no weight_map".into(),
                })?
                .values()
                .filter_map(|v| v.as_str())
                .map(|f| dir.join(f))
                .collect();
            files.sort();
            files.dedup();
            return Ok(files);
        }
    }
    let bin = dir.join(format!("{stem}.bin"));
    if bin.is_file() {
        return Err(ModelError::Unsupported {
            file: bin.display().to_string(),
            key: "weights format".into(),
            value: "PyTorch pickle (.bin); only safetensors weights are loaded — convert the model with diffusers' save_pretrained(safe_serialization=True)".into(),
        });
    }
    Err(ModelError::MissingFile(dir.join(format!("{stem}.safetensors"))))
}

/// Reads a safetensors file's header and refuses what the loader would otherwise misread: a
/// file that is not safetensors at all, and tensors stored in a dtype other than F32 / F16 /
/// BF16 (candle would cast integers silently).
fn check_weight_file(path: &Path, component: &str) -> Result<(), ModelError> {
    use std::io::Read;
    let err = |message: String| ModelError::Weights {
        component: component.to_owned(),
        message: format!("{}: {message}", path.display()),
    };
    let io = |source| ModelError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| err(format!("not a safetensors file ({size} bytes, too short for a header)")))?;
    let len = u64::from_le_bytes(len);
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(err(format!(
            "not a safetensors file (its first 8 bytes announce a {len}-byte header in a {size}-byte file)"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| err(format!("not a safetensors file (header: {e})")))?;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let dt = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
        if !matches!(dt, "F32" | "F16" | "BF16") {
            return Err(err(format!("tensor {name} is stored as {dt}; weights must be F32, F16 or BF16")));
        }
    }
    Ok(())
}

/// The weights of `dir` as the `dtype` run picks them (`.fp16` files first for f16), converted
/// to `compute` on load.
fn var_builder(dir: &Path, stem: &str, dtype: DType, compute: DType, device: &Device) -> Result<VarBuilder<'static>, ModelError> {
    let files = weight_files(dir, stem, dtype)?;
    let component = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for f in &files {
        if !f.is_file() {
            return Err(ModelError::MissingFile(f.clone()));
        }
        check_weight_file(f, &component)?;
    }
    // SAFETY: the files are memory-mapped read-only; like every safetensors loader we rely on
    // nobody truncating them while the model is loaded.
    unsafe { VarBuilder::from_mmaped_safetensors(&files, compute, device) }.map_err(|e| ModelError::Weights {
        component: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        message: e.to_string(),
    })
}

fn weights_err(component: &str) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::Weights {
        component: component.to_owned(),
        message: e.to_string(),
    }
}

fn require(path: PathBuf) -> Result<PathBuf, ModelError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::MissingFile(path))
    }
}

impl StableDiffusion {
    /// Loads a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
    /// `tokenizer/`, `scheduler/`).
    pub fn load(root: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::NoSuchFolder(root.to_owned()));
        }
        if dtype == DType::BF16 && device.is_cpu() {
            return Err(ModelError::Unsupported {
                file: "--dtype".into(),
                key: "dtype".into(),
                value: "bf16 on the CPU (candle's CPU backend has no bf16 matmul); use f32 or f16".into(),
            });
        }
        let index = ModelIndex::from_file(&require(root.join("model_index.json"))?)?;
        index.check_supported()?;

        let unet_cfg = UNetConfig::from_file(&require(root.join("unet/config.json"))?)?;
        let vae_cfg = VaeConfig::from_file(&require(root.join("vae/config.json"))?)?;
        let te_cfg = TextEncoderConfig::from_file(&require(root.join("text_encoder/config.json"))?)?;
        let sched_path = require(root.join("scheduler/scheduler_config.json"))?;
        let scheduler_json = std::fs::read_to_string(&sched_path).map_err(|source| ModelError::Io {
            path: sched_path.clone(),
            source,
        })?;
        let tokenizer = ClipTokenizer::from_dir(&root.join("tokenizer"))?;

        if unet_cfg.in_channels != vae_cfg.latent_channels {
            return Err(ModelError::Unsupported {
                file: "unet/config.json".into(),
                key: "in_channels".into(),
                value: format!("{} (the VAE has {} latent channels)", unet_cfg.in_channels, vae_cfg.latent_channels),
            });
        }
        let xl_cfg = if index.is_xl() {
            let cfg2 = TextEncoderConfig::from_file(&require(root.join("text_encoder_2/config.json"))?)?;
            let tok2 = ClipTokenizer::from_dir(&root.join("tokenizer_2"))?;
            Some((cfg2, tok2))
        } else {
            None
        };
        let context_dim = te_cfg.hidden_size + xl_cfg.as_ref().map_or(0, |(c, _)| c.hidden_size);
        if let Some((cfg2, _)) = &xl_cfg {
            let want = 6 * unet_cfg.addition_time_embed_dim.unwrap_or(0) + cfg2.projection_dim.unwrap_or(0);
            if unet_cfg.addition_embed_type.as_deref() != Some("text_time") || unet_cfg.projection_class_embeddings_input_dim != Some(want)
            {
                return Err(ModelError::Unsupported {
                    file: "unet/config.json".into(),
                    key: "projection_class_embeddings_input_dim".into(),
                    value: format!(
                        "{:?} with addition_embed_type {:?} (an SDXL pipeline needs text_time and 6 x addition_time_embed_dim + text_encoder_2's projection_dim = {want})",
                        unet_cfg.projection_class_embeddings_input_dim, unet_cfg.addition_embed_type
                    ),
                });
            }
        } else if unet_cfg.addition_embed_type.is_some() {
            return Err(ModelError::Unsupported {
                file: "unet/config.json".into(),
                key: "addition_embed_type".into(),
                value: format!(
                    "{:?} (the pipeline has no second text encoder to feed it)",
                    unet_cfg.addition_embed_type
                ),
            });
        }
        if unet_cfg.cross_attention_dim.get(0) != context_dim {
            return Err(ModelError::Unsupported {
                file: "unet/config.json".into(),
                key: "cross_attention_dim".into(),
                value: format!(
                    "{:?} (the text encoders' hidden sizes add up to {context_dim})",
                    unet_cfg.cross_attention_dim
                ),
            });
        }
        if tokenizer.vocab_size() > te_cfg.vocab_size {
            return Err(ModelError::Unsupported {
                file: "text_encoder/config.json".into(),
                key: "vocab_size".into(),
                value: format!("{} (the tokenizer has {} tokens)", te_cfg.vocab_size, tokenizer.vocab_size()),
            });
        }

        let te_vb = var_builder(&root.join("text_encoder"), "model", dtype, dtype, device)?;
        let text_encoder = ClipTextEncoder::new(te_vb, &te_cfg).map_err(weights_err("text_encoder"))?;
        let xl = match xl_cfg {
            Some((cfg2, tokenizer_2)) => {
                let vb2 = var_builder(&root.join("text_encoder_2"), "model", dtype, dtype, device)?;
                if cfg2.projection_dim.is_none() {
                    return Err(ModelError::Unsupported {
                        file: "text_encoder_2/config.json".into(),
                        key: "projection_dim".into(),
                        value: "none (SDXL's second encoder is a CLIPTextModelWithProjection)".into(),
                    });
                }
                let text_encoder_2 = ClipTextEncoder::with_projection(vb2, &cfg2).map_err(weights_err("text_encoder_2"))?;
                Some(XlParts {
                    tokenizer_2,
                    text_encoder_2,
                    force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt,
                })
            }
            None => None,
        };
        let unet_vb = var_builder(&root.join("unet"), "diffusion_pytorch_model", dtype, dtype, device)?;
        let unet = UNet::new(unet_vb, &unet_cfg).map_err(weights_err("unet"))?;
        let vae_dtype = if index.is_xl() && dtype == DType::F16 && vae_cfg.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let vae_vb = var_builder(&root.join("vae"), "diffusion_pytorch_model", dtype, vae_dtype, device)?;
        let vae = Vae::new(vae_vb, &vae_cfg).map_err(weights_err("vae"))?;

        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| root.display().to_string());
        Ok(Self {
            root: root.to_owned(),
            name,
            tokenizer,
            text_encoder,
            xl,
            unet,
            vae,
            scheduler_json,
            device: device.clone(),
            dtype,
            vae_dtype,
        })
    }

    /// The VAE encoder (posterior mean); built on demand, the pipeline itself needs only the
    /// decoder.
    pub fn vae_encoder(&self) -> Result<super::vae::VaeEncoder, ModelError> {
        let files = weight_files(&self.root.join("vae"), "diffusion_pytorch_model", self.dtype)?;
        super::vae::VaeEncoder::load(&files, &self.vae.config, self.vae_dtype, &self.device).map_err(weights_err("vae encoder"))
    }

    /// Pixels per latent cell (2^(len(vae.block_out_channels) - 1)).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config.scale_factor()
    }

    pub fn latent_channels(&self) -> usize {
        self.unet.config.in_channels
    }

    /// The default image size: unet.sample_size * vae factor, as diffusers' pipelines.
    pub fn default_size(&self) -> usize {
        self.unet.config.sample_size.unwrap_or(64) * self.vae_scale_factor()
    }
}
