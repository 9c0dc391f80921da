//! `diffusion-scope dataset`: writes a shapes-world dataset for training the bundled model.
//!
//! Layout of DIR: `images.safetensors` (one U8 tensor `images` [N, H, W, 3] and one U8 tensor
//! `masks` [N, 2, H, W] of per-object coverage, zeros where a scene has one object),
//! `captions.jsonl` (one JSON object a line: index, caption, template, words, word_object,
//! objects), `config.json` (the world settings and seed), and `previews/` (the first few samples
//! as PNG, for eyes).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::{Dtype, TensorView};

use diffusion_scope::pipeline::memory;
use diffusion_scope::world::{self, Split, WorldConfig};

#[derive(Args, Debug)]
pub struct DatasetArgs {
    #[arg(long)]
    out: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// train (captions not held out), held-out (only held-out captions) or all.
    #[arg(long, default_value = "train")]
    split: String,
    /// Fraction of two-object scenes.
    #[arg(long, default_value_t = 0.3)]
    two_object_fraction: f32,
    /// How many samples to also write as PNG previews.
    #[arg(long, default_value_t = 32)]
    previews: usize,
}

pub fn run(a: DatasetArgs) -> anyhow::Result<ExitCode> {
    ensure!(a.count > 0, "--count must be at least 1");
    ensure!(
        a.size >= 32 && a.size.is_multiple_of(8),
        "--size must be a multiple of 8, at least 32"
    );
    ensure!(
        (0.0..=1.0).contains(&a.two_object_fraction),
        "--two-object-fraction must be in [0, 1]"
    );
    // Everything is held in memory until the end: refuse sizes that cannot fit, up front.
    let px = a.size as f64 * a.size as f64;
    let need = a.count as f64 * px * 5.0 + px * 12.0;
    if let Some(available) = memory::available_bytes()
        && need > available
    {
        anyhow::bail!(
            "{} samples of {}x{} need about {} of memory (images and masks are kept until the end); this machine has {} available",
            a.count,
            a.size,
            a.size,
            memory::human_bytes(need),
            memory::human_bytes(available)
        );
    }
    let split = match a.split.as_str() {
        "train" => Split::Train,
        "held-out" | "heldout" => Split::HeldOut,
        "all" => Split::All,
        other => anyhow::bail!("unknown --split '{other}' (expected train, held-out or all)"),
    };
    let cfg = WorldConfig {
        size: a.size,
        two_object_fraction: a.two_object_fraction,
        split,
        ..WorldConfig::default()
    };
    std::fs::create_dir_all(a.out.join("previews")).with_context(|| format!("creating {}", a.out.display()))?;
    let n_px = a.size * a.size;
    let mut images = Vec::with_capacity(a.count * n_px * 3);
    let mut masks = vec![0u8; a.count * 2 * n_px];
    let captions_path = a.out.join("captions.jsonl");
    let mut captions =
        std::io::BufWriter::new(std::fs::File::create(&captions_path).with_context(|| format!("creating {}", captions_path.display()))?);
    let bar = ProgressBar::new(a.count as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} samples  {per_sec}  eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for i in 0..a.count {
        let s = world::sample(&cfg, a.seed, i as u64);
        images.extend_from_slice(&s.rgb);
        for (k, m) in s.masks.iter().take(2).enumerate() {
            masks[(i * 2 + k) * n_px..(i * 2 + k + 1) * n_px].copy_from_slice(m);
        }
        let line = serde_json::json!({
            "index": i,
            "caption": s.scene.caption,
            "template": s.scene.template,
            "words": s.scene.words,
            "word_object": s.scene.word_object,
            "objects": s.scene.objects,
        });
        writeln!(captions, "{line}")?;
        if i < a.previews {
            let p = a.out.join("previews").join(format!("{i:06}.png"));
            s.save_png(&p).with_context(|| format!("writing {}", p.display()))?;
        }
        bar.inc(1);
    }
    captions.flush()?;
    bar.finish_and_clear();
    let st_path = a.out.join("images.safetensors");
    let views = vec![
        (
            "images".to_string(),
            TensorView::new(Dtype::U8, vec![a.count, a.size, a.size, 3], &images)?,
        ),
        (
            "masks".to_string(),
            TensorView::new(Dtype::U8, vec![a.count, 2, a.size, a.size], &masks)?,
        ),
    ];
    safetensors::serialize_to_file(views, None, &st_path).with_context(|| format!("writing {}", st_path.display()))?;
    let meta = serde_json::json!({ "seed": a.seed, "count": a.count, "world": cfg, "app_version": env!("CARGO_PKG_VERSION") });
    std::fs::write(a.out.join("config.json"), serde_json::to_string_pretty(&meta)?)?;
    println!("wrote {} samples of {}x{} to {}", a.count, a.size, a.size, a.out.display());
    Ok(ExitCode::SUCCESS)
}
