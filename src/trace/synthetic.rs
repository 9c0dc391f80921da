//! Synthetic runs for UI tests and the frame-time benchmark: the shapes of a real run (latents,
//! x0, model output, attention maps per layer or per resolution) with deterministic contents in
//! which the word "red" attends to a disc on the left that sharpens over the steps.

use super::{AttnLayer, AttnMap, RgbImage, Run, RunMeta, RunStatus, StepRecord};
use crate::types::CaptureMode;

/// What to synthesise.
pub struct SyntheticSpec {
    pub steps: usize,
    pub latent: [usize; 3],
    /// Cross-attention layers as (path, height, width); with `aggregate` they are merged per
    /// resolution like `--attention aggregate` does.
    pub layers: Vec<(String, usize, usize)>,
    pub aggregate: bool,
}

impl SyntheticSpec {
    /// A small run: 10 steps, 4x16x16 latents, one layer at 16x16 and one at 8x8, aggregate.
    pub fn small() -> Self {
        Self {
            steps: 10,
            latent: [4, 16, 16],
            layers: vec![
                ("down_blocks.0.attentions.0.transformer_blocks.0.attn2".into(), 16, 16),
                ("down_blocks.1.attentions.0.transformer_blocks.0.attn2".into(), 8, 8),
            ],
            aggregate: true,
        }
    }

    /// SD 1.5 at 512x512 with full capture: 50 steps, 4x64x64 latents, 16 attn2 layers
    /// (5 at 64², 5 at 32², 5 at 16², 1 at 8²).
    pub fn sd15_full() -> Self {
        let mut layers = Vec::new();
        for (block, res) in [(0usize, 64usize), (1, 32), (2, 16)] {
            for j in 0..2 {
                layers.push((format!("down_blocks.{block}.attentions.{j}.transformer_blocks.0.attn2"), res, res));
            }
        }
        layers.push(("mid_block.attentions.0.transformer_blocks.0.attn2".into(), 8, 8));
        for (block, res) in [(1usize, 16usize), (2, 32), (3, 64)] {
            for j in 0..3 {
                layers.push((format!("up_blocks.{block}.attentions.{j}.transformer_blocks.0.attn2"), res, res));
            }
        }
        Self {
            steps: 50,
            latent: [4, 64, 64],
            layers,
            aggregate: false,
        }
    }
}

/// The prompt "a red circle": tokens bos, a, red, circle, eos, padding.
pub fn run(spec: &SyntheticSpec) -> Run {
    let n = spec.steps;
    let [c, h, w] = spec.latent;
    let words: Vec<String> = ["a", "red", "circle"].map(String::from).to_vec();
    let mut tokens = vec![
        "<|startoftext|>".to_string(),
        "a</w>".into(),
        "red</w>".into(),
        "circle</w>".into(),
        "<|endoftext|>".into(),
    ];
    tokens.resize(77, "<|endoftext|>".into());
    let mut word_of_token = vec![None, Some(0), Some(1), Some(2)];
    word_of_token.resize(77, None);
    let map = |key: String, hh: usize, ww: usize, step: usize| {
        let mut data = vec![0f32; hh * ww * 77];
        let sharp = (step + 1) as f32 / n as f32;
        for y in 0..hh {
            for x in 0..ww {
                let (fx, fy) = ((x as f32 + 0.5) / ww as f32, (y as f32 + 0.5) / hh as f32);
                let inside = (fx - 0.3).powi(2) + (fy - 0.5).powi(2) < 0.04;
                let v = if inside { 0.2 + 0.5 * sharp } else { 0.2 * (1.0 - sharp) };
                let p = y * ww + x;
                data[p * 77 + 2] = v;
                data[p * 77 + 3] = v * 0.8;
                data[p * 77] = 1.0 - 1.8 * v;
            }
        }
        AttnMap {
            key,
            height: hh,
            width: ww,
            tokens: 77,
            data,
        }
    };
    let mut resolutions: Vec<(usize, usize)> = Vec::new();
    for (_, lh, lw) in &spec.layers {
        if !resolutions.contains(&(*lh, *lw)) {
            resolutions.push((*lh, *lw));
        }
    }
    resolutions.sort_by_key(|(a, b)| std::cmp::Reverse(a * b));
    let steps: Vec<StepRecord> = (0..n)
        .map(|i| {
            let fade = 1.0 - i as f32 / n as f32;
            let latents: Vec<f32> = (0..c * h * w)
                .map(|k| (((k * 7 + i * 13) % 29) as f32 / 29.0 - 0.5) * fade * 3.0)
                .collect();
            let x0: Vec<f32> = (0..c * h * w)
                .map(|k| if (k % (h * w)) % w < w / 2 { 0.8 } else { -0.6 } * if k < h * w { 1.0 } else { 0.3 })
                .collect();
            let attention = if spec.aggregate {
                resolutions
                    .iter()
                    .map(|&(rh, rw)| map(AttnMap::aggregate_key(rh, rw), rh, rw, i))
                    .collect()
            } else {
                spec.layers
                    .iter()
                    .map(|(p, lh, lw)| map(AttnMap::layer_key(p), *lh, *lw, i))
                    .collect()
            };
            StepRecord {
                index: i,
                timestep: 999.0 * (1.0 - i as f64 / n as f64),
                sigma: 10.0 * fade,
                model_output: latents.iter().map(|v| -v).collect(),
                latents,
                x0,
                x0_from_scheduler: true,
                attention,
                saliency: Vec::new(),
                elapsed_secs: 0.05,
            }
        })
        .collect();
    let meta = RunMeta {
        format_version: super::FORMAT_VERSION,
        app_version: env!("CARGO_PKG_VERSION").into(),
        model: "synthetic".into(),
        model_path: "synthetic".into(),
        prompt: "a red circle".into(),
        negative_prompt: String::new(),
        text_options: Default::default(),
        tokens,
        token_ids: vec![0; 77],
        tokens_used: 5,
        word_of_token,
        words,
        truncated_words: vec![],
        negative_token_ids: vec![0; 77],
        sampler: "ddim".into(),
        scheduler: serde_json::json!({"class_name": "DDIMScheduler", "config": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}}),
        steps: n,
        guidance: 5.0,
        seed: 1,
        init_latents: "seed".into(),
        height: h * 8,
        width: w * 8,
        latent_shape: spec.latent,
        vae_scale_factor: 8,
        prediction_type: "epsilon".into(),
        timesteps: (0..n).map(|i| 999.0 * (1.0 - i as f64 / n as f64)).collect(),
        sigmas: (0..n).map(|i| 10.0 * (1.0 - i as f32 / n as f32)).collect(),
        init_noise_sigma: 1.0,
        attention: if spec.aggregate {
            CaptureMode::Aggregate
        } else {
            CaptureMode::Full
        },
        attn_layers: spec
            .layers
            .iter()
            .map(|(p, lh, lw)| AttnLayer {
                path: p.clone(),
                heads: 8,
                height: *lh,
                width: *lw,
            })
            .collect(),
        dtype: "f32".into(),
        device: "cpu".into(),
        step_secs: vec![0.05; n],
        total_secs: 0.05 * n as f64,
        status: RunStatus::Complete,
        error: None,
        saliency: None,
    };
    let (ih, iw) = (h * 8, w * 8);
    let image = RgbImage {
        width: iw,
        height: ih,
        pixels: (0..ih * iw)
            .flat_map(|p| if p % iw < iw / 2 { [200, 40, 40] } else { [230, 230, 230] })
            .collect(),
    };
    Run {
        meta,
        steps,
        image: Some(image),
    }
}
