use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use diffusion_scope::model::StableDiffusion;
use diffusion_scope::pipeline::{self, RunConfig, RunEvent};
use diffusion_scope::sampling::SamplerKind;
use diffusion_scope::trace::{RgbImage, RunMeta, StepRecord};

/// Runs the binary with `args`.
pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args(args)
        .output()
        .unwrap()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_model(name: &str) -> StableDiffusion {
    StableDiffusion::load(&fixtures().join(name), &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A reference case written by tests/fixtures/make_fixtures.py.
pub struct Case {
    pub json: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Case {
    pub fn load(model: &str, case: &str) -> Self {
        let dir = fixtures().join("ref").join(model);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap()).unwrap();
        let tensors = candle_core::safetensors::load(dir.join(format!("{case}.safetensors")), &Device::Cpu).unwrap();
        Self { json, tensors }
    }

    pub fn get(&self, name: &str) -> Option<Vec<Vec<f32>>> {
        let t = self.tensors.get(name)?;
        let n = t.dim(0).unwrap();
        Some(
            (0..n)
                .map(|i| t.get(i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect(),
        )
    }

    pub fn run_config(&self) -> RunConfig {
        let j = &self.json;
        let sampler_name = j["sampler"].as_str().unwrap();
        let (name, karras) = match sampler_name.strip_suffix("-karras") {
            Some(base) => (base, true),
            None => (sampler_name, false),
        };
        RunConfig {
            prompt: j["prompt"].as_str().unwrap().into(),
            negative_prompt: j["negative_prompt"].as_str().unwrap_or("").into(),
            text_options: diffusion_scope::types::TextOptions::new(
                j["prompt_2"].as_str().unwrap_or(""),
                j["negative_prompt_2"].as_str().unwrap_or(""),
                j["clip_skip"].as_u64().map(|c| c as usize),
            ),
            steps: j["steps"].as_u64().unwrap() as usize,
            guidance: j["guidance"].as_f64().unwrap() as f32,
            sampler: Some(name.parse::<SamplerKind>().unwrap()),
            karras,
            seed: j["seed"].as_u64().unwrap(),
            height: Some(j["height"].as_u64().unwrap() as usize),
            width: Some(j["width"].as_u64().unwrap() as usize),
            ..RunConfig::default()
        }
    }
}

pub struct Output {
    pub meta: RunMeta,
    pub steps: Vec<StepRecord>,
    pub image: RgbImage,
}

pub fn generate(sd: &StableDiffusion, cfg: &RunConfig) -> Output {
    let cancel = AtomicBool::new(false);
    let mut meta = None;
    let mut steps = Vec::new();
    let image = pipeline::run(sd, "test", cfg, &cancel, &mut |ev| match ev {
        RunEvent::Started(m) => meta = Some(*m),
        RunEvent::Step(s) => steps.push(*s),
        RunEvent::Decoding => {}
    })
    .unwrap_or_else(|e| panic!("run failed: {e}"));
    Output {
        meta: meta.expect("Started event"),
        steps,
        image,
    }
}

/// ||a - b|| / ||b||
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

/// The largest difference between an 8-bit image and diffusers' float image [1, 3, H, W] in
/// [0, 1] (the parity bar is 1/255).
pub fn image_max_diff(image: &RgbImage, reference: &candle_core::Tensor) -> f32 {
    let hwc = reference
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    image
        .pixels
        .iter()
        .zip(&hwc)
        .map(|(p, r)| (*p as f32 / 255.0 - r).abs())
        .fold(0f32, f32::max)
}
