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

/// The shapes world's evaluation networks (feature network and CLIP), relative to the crate root.
pub const SHAPES_METRICS_DIR: &str = "assets/shapes-metrics";

/// The shapes world's feature network folder (`--network shapes`).
pub fn shapes_featnet_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(SHAPES_METRICS_DIR)
        .join("featnet")
}

/// The shapes CLIP folder (`clip-score --model shapes`).
pub fn shapes_clip_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(SHAPES_METRICS_DIR)
        .join("clip")
}

/// The shipped feature file of shapes-world renders (`--real shapes`): the shapes network's
/// features of 2000 renders.
pub fn shapes_renders_features_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(SHAPES_METRICS_DIR)
        .join("renders-2k.safetensors")
}
