//! `diffusion-scope inspect DIR`: checks a run folder exactly as the app's Open does (the same
//! `load_run`) and prints what it holds; exits 1 naming the first problem.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, ensure};
use clap::Args;

use diffusion_scope::trace::{Run, RunStatus, load_run};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The run folder (trace.json, trace.safetensors, image.png).
    dir: PathBuf,
}

pub fn run(a: InspectArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        a.dir.join("trace.json").is_file(),
        "{} is not a run folder (no trace.json in it)",
        a.dir.display()
    );
    let run = load_run(&a.dir).with_context(|| format!("{} is not a valid run folder", a.dir.display()))?;
    print!("{}", summary(&a.dir.display().to_string(), &run));
    Ok(ExitCode::SUCCESS)
}

/// The text `inspect` prints.
fn summary(dir: &str, run: &Run) -> String {
    let m = &run.meta;
    let n = run.steps.len();
    let planned = m.timesteps.len();
    let status = match m.status {
        RunStatus::Complete => format!("complete ({n} of {planned} steps)"),
        RunStatus::Cancelled => format!("cancelled after {n} of {planned} steps"),
        RunStatus::Running => format!("saved while running ({n} of {planned} steps)"),
        RunStatus::Failed => format!(
            "failed after {n} of {planned} steps: {}",
            m.error.as_deref().unwrap_or("(no message)")
        ),
    };
    let spacing = m.scheduler["options"]["timestep_spacing"].as_str().unwrap_or("default");
    let class = m.scheduler["class_name"].as_str().unwrap_or("?");
    let [c, h, w] = m.latent_shape;
    let mut lines = vec![
        ("run folder", dir.to_string()),
        ("status", status),
        (
            "model",
            if m.model == m.model_path {
                m.model.clone()
            } else {
                format!("{} ({})", m.model, m.model_path)
            },
        ),
        (
            "prompt",
            format!("{:?} ({} words, {} tokens used)", m.prompt, m.words.len(), m.tokens_used),
        ),
        ("negative", format!("{:?}", m.negative_prompt)),
        (
            "sampler",
            format!(
                "{} ({class}, {spacing} spacing), {} steps, guidance {}, seed {}, init {}",
                m.sampler, m.steps, m.guidance, m.seed, m.init_latents
            ),
        ),
        (
            "size",
            format!("{}x{} pixels, latents {c}x{h}x{w}, {} on {}", m.width, m.height, m.dtype, m.device),
        ),
        (
            "time",
            format!("{:.2} s sampling, {:.2} s in all", m.step_secs.iter().sum::<f64>(), m.total_secs),
        ),
        (
            "attention",
            format!("{} capture, {} cross-attention layers", m.attention.as_str(), m.attn_layers.len()),
        ),
        (
            "image",
            run.image
                .as_ref()
                .map_or("none (the run did not finish)".into(), |i| format!("{}x{}", i.width, i.height)),
        ),
    ];
    let mut tensors = vec![format!("timesteps [{n}]"), format!("sigmas [{n}]")];
    if n > 0 {
        for name in ["latents", "x0", "model_output"] {
            tensors.push(format!("{name} [{n}, {c}, {h}, {w}]"));
        }
        for a in &run.steps[0].attention {
            tensors.push(format!(
                "{} [{n}, {}, {}] ({}x{})",
                a.key,
                a.height * a.width,
                a.tokens,
                a.height,
                a.width
            ));
        }
        // Saliency maps: each key with the steps it was computed at.
        let mut keys: Vec<(&str, usize, usize, Vec<usize>)> = Vec::new();
        for (i, s) in run.steps.iter().enumerate() {
            for m in &s.saliency {
                match keys.iter_mut().find(|k| k.0 == m.key) {
                    Some(k) => k.3.push(i + 1),
                    None => keys.push((&m.key, m.height, m.width, vec![i + 1])),
                }
            }
        }
        for (key, mh, mw, at) in keys {
            let steps = if at.len() == n {
                "every step".to_string()
            } else {
                format!("step(s) {}", at.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
            };
            tensors.push(format!("{key} [{n}, {mh}, {mw}] (saliency at {steps})"));
        }
    }
    lines.push(("tensors", tensors.join("\n             ")));
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{k:<12} {v}\n"));
    }
    out
}
