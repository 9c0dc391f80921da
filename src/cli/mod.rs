//! Headless subcommands. They parse flags into the same plain config structs the app uses and
//! drive the same worker.

pub mod bench;
pub mod compare;
pub mod dataset;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod interrupt;
pub mod sweep;
pub mod unet_bench;

/// The model to use: `--model` when given, else the bundled model (an error naming its
/// folder when it is missing).
pub fn model_spec(model: Option<String>) -> anyhow::Result<String> {
    match model {
        Some(m) => Ok(m),
        None => {
            let p = diffusion_scope::bundled_model_path();
            anyhow::ensure!(
                p.join("model_index.json").is_file(),
                "no --model given and the bundled model is not present at {}; pass --model FOLDER_OR_HUB_ID",
                p.display()
            );
            Ok(p.display().to_string())
        }
    }
}
