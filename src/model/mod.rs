//! Everything that knows about model files and candle modules: configs, loading (local
//! folder, hub, bundled), tokenizer, text encoder, UNet with attention probes, VAE.

pub mod clip;
pub mod config;
pub mod hub;
pub mod loader;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use std::path::PathBuf;

pub use loader::{DTypeChoice, DeviceChoice, StableDiffusion};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model folder {0} does not exist")]
    NoSuchFolder(PathBuf),
    #[error("'{0}' is neither an existing folder nor a hub id of the form owner/name")]
    BadModelSpec(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("missing file {0}")]
    MissingFile(PathBuf),
    #[error("model_index.json has no '{component}' component")]
    MissingComponent { component: String },
    #[error("{file}: unsupported value for '{key}': {value}")]
    Unsupported { file: String, key: String, value: String },
    #[error("{component} weights: {message}")]
    Weights { component: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("scheduler config: {0}")]
    Scheduler(String),
    #[error("hub: {0}")]
    Hub(String),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}
