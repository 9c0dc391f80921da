//! Diffusion Scope: a microscope for text-to-image diffusion models.
//!
//! See ARCHITECTURE.md for the code map and the invariants.

pub mod analysis;
pub mod engine;
pub mod experiments;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod sampling;
pub mod trace;
pub mod types;
pub mod ui;
pub mod world;

/// Where the bundled model lives, relative to the crate root (issue: the shapes-world model).
pub const BUNDLED_MODEL_DIR: &str = "assets/shapes-model";

/// The bundled model's folder: next to the executable's crate when run from a checkout.
pub fn bundled_model_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_MODEL_DIR)
}
