//! Everything that knows about model files and candle modules: configs, loading (local
//! folder, hub, bundled), tokenizer, text encoder, UNet with attention probes, VAE.

pub mod clip;
pub mod config;
pub mod hub;
pub mod kernels;
pub mod loader;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use std::path::PathBuf;

pub use loader::{DTypeChoice, DeviceChoice, StableDiffusion};

/// Fixes the CPU thread count candle uses for the rest of the process. candle 0.11's CPU
/// matmul asks `utils::get_num_threads()` on every call; unless `RAYON_NUM_THREADS` is set that
/// re-reads and parses /proc/cpuinfo (`num_cpus::get_physical`) each time, which was 13-20% of
/// a bundled 30-step generation on 2 cores (issue 17's profile). This asks once and sets
/// `RAYON_NUM_THREADS` to the same answer, so the thread count (and every result) is unchanged.
///
/// # Safety
/// Sets an environment variable: call it before any other thread exists (first thing in
/// `main`).
pub unsafe fn pin_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // SAFETY: the caller guarantees no other thread reads or writes the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

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
