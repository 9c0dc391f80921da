//! `diffusion-scope eval`: generates from held-out shapes-world captions, judges the images with
//! the world's detector and scores the cross-attention of every object word against the
//! object's mask (see `diffusion_scope::eval`). Prints the summary; with `--out` also writes
//! `report.json`, `summary.txt`, every image and a contact sheet.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use diffusion_scope::engine::{ModelRequest, load_model};
use diffusion_scope::eval::{
    AttentionSummary, CaseResult, EvalError, EvalReport, EvalSettings, PointingRate, TruthCase, attention_on_truth, evaluate_case,
    summarize,
};
use diffusion_scope::model::{DTypeChoice, DeviceChoice};
use diffusion_scope::sampling::SamplerKind;
use diffusion_scope::sampling::denoise::RunError;
use diffusion_scope::trace::{RgbImage, save_png, save_run};
use diffusion_scope::world::{self, Template};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A diffusers folder or hub id of a shapes-world model; default: the bundled model.
    #[arg(long)]
    model: Option<String>,
    /// Number of held-out captions, cycling through the five caption templates.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Shuffles the held-out captions.
    #[arg(long, default_value_t = 0)]
    caption_seed: u64,
    /// Generation seed of the first caption (caption i uses seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 5.0)]
    guidance: f32,
    /// Sampler; default: the model's own scheduler.
    #[arg(long)]
    scheduler: Option<SamplerKind>,
    /// Threshold (fraction of the min-max range) of the attention map for the IoU (DAAM: 0.4).
    #[arg(long, default_value_t = diffusion_scope::analysis::pointing::DEFAULT_THRESHOLD)]
    threshold: f32,
    #[arg(long, default_value = "f32")]
    dtype: DTypeChoice,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Folder for report.json, summary.txt, images/ and contact_sheet.png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also save every run as a trace folder (out/traces/NNN; open them in the app).
    #[arg(long, requires = "out")]
    save_traces: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.count > 0, "--count must be at least 1");
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(
        a.threshold > 0.0 && a.threshold < 1.0,
        "--threshold must be between 0 and 1 (exclusive)"
    );
    let spec = super::model_spec(a.model.clone())?;
    let settings = EvalSettings {
        count: a.count,
        caption_seed: a.caption_seed,
        seed: a.seed,
        steps: a.steps,
        guidance: a.guidance,
        sampler: a.scheduler,
        threshold: a.threshold,
    };
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out.join("images")).with_context(|| format!("creating {}", out.display()))?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let t_load = std::time::Instant::now();
    let request = ModelRequest {
        spec: spec.clone(),
        device: a.device,
        dtype: a.dtype,
    };
    let sd = load_model(&request).with_context(|| format!("loading {spec}"))?;
    let encoder = sd.vae_encoder().context("loading the VAE encoder")?;
    if !a.quiet {
        eprintln!("loaded {} in {:.2}s", sd.root.display(), t_load.elapsed().as_secs_f64());
    }

    let captions = world::eval_captions(a.count, a.caption_seed);
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(captions.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} captions  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut cases: Vec<CaseResult> = Vec::new();
    let mut truth: Vec<TruthCase> = Vec::new();
    let mut images: Vec<RgbImage> = Vec::new();
    let mut layers: Vec<String> = Vec::new();
    let mut timesteps: Vec<f64> = Vec::new();
    let mut sampler = String::new();
    let mut failure: Option<anyhow::Error> = None;
    for (i, caption) in captions.iter().enumerate() {
        bar.set_message(caption.clone());
        let both = evaluate_case(&sd, &spec, i, caption, &settings, &cancel)
            .and_then(|(case, run)| Ok((case, run, attention_on_truth(&sd, &encoder, i, caption, &settings, &cancel)?)));
        match both {
            Ok((case, run, (truth_case, scene))) => {
                if layers.is_empty() {
                    layers = run.meta.attn_layers.iter().map(|l| l.path.clone()).collect();
                    timesteps = run.meta.timesteps.clone();
                    sampler = run.meta.sampler.clone();
                }
                if let (Some(out), Some(img)) = (&a.out, &run.image) {
                    save_png(img, &out.join("images").join(format!("{i:03}.png")))?;
                    scene
                        .save_png(out.join("images").join(format!("{i:03}_scene.png")))
                        .with_context(|| format!("writing the scene of caption {i}"))?;
                    if a.save_traces {
                        let dir = out.join("traces").join(format!("{i:03}"));
                        save_run(&run, &dir).with_context(|| format!("writing {}", dir.display()))?;
                    }
                }
                if let Some(img) = run.image {
                    images.push(img);
                }
                cases.push(case);
                truth.push(truth_case);
                bar.inc(1);
            }
            Err(EvalError::Run(RunError::Cancelled { .. })) => break,
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context(format!("caption {i}")));
                break;
            }
        }
    }
    bar.finish_and_clear();

    let complete = cases.len() == captions.len();
    let summary = summarize(&cases, &truth, &layers, &timesteps);
    let report = EvalReport {
        model: spec,
        settings,
        sampler,
        layers,
        timesteps,
        complete,
        summary,
        cases,
        truth,
    };
    let text = render_summary(&report);
    print!("{text}");
    if let Some(out) = &a.out {
        let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(out.join("report.json"), json).with_context(|| format!("writing {}", out.display()))?;
        std::fs::write(out.join("summary.txt"), &text).with_context(|| format!("writing {}", out.display()))?;
        if !images.is_empty() {
            let sheet = contact_sheet(&images, &report.cases);
            sheet
                .save(out.join("contact_sheet.png"))
                .with_context(|| format!("writing {}", out.join("contact_sheet.png").display()))?;
        }
        println!("wrote {}", out.display());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !complete {
        eprintln!(
            "cancelled after {} of {} captions (the summary covers those)",
            report.cases.len(),
            captions.len()
        );
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// All images in rows of 10, each framed green (every stated attribute right, no extra object)
/// or red.
fn contact_sheet(images: &[RgbImage], cases: &[CaseResult]) -> image::RgbImage {
    const COLS: usize = 10;
    const PAD: usize = 3;
    let (w, h) = (images[0].width, images[0].height);
    let rows = images.len().div_ceil(COLS);
    let cols = images.len().min(COLS);
    let mut sheet = image::RgbImage::from_pixel(
        (cols * (w + 2 * PAD)) as u32,
        (rows * (h + 2 * PAD)) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (i, (img, case)) in images.iter().zip(cases).enumerate() {
        let (x0, y0) = ((i % COLS) * (w + 2 * PAD), (i / COLS) * (h + 2 * PAD));
        let frame = if case.judgement.strict_correct() {
            [40, 170, 60]
        } else {
            [210, 40, 40]
        };
        for y in 0..h + 2 * PAD {
            for x in 0..w + 2 * PAD {
                let inside = (PAD..PAD + w).contains(&x) && (PAD..PAD + h).contains(&y) && img.width == w && img.height == h;
                let px = if inside {
                    let k = ((y - PAD) * w + (x - PAD)) * 3;
                    [img.pixels[k], img.pixels[k + 1], img.pixels[k + 2]]
                } else if x < 2 || y < 2 || x >= w + 2 * PAD - 2 || y >= h + 2 * PAD - 2 {
                    frame
                } else {
                    [255, 255, 255]
                };
                sheet.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
            }
        }
    }
    sheet
}

fn pointing_line(label: &str, width: usize, r: &PointingRate) -> String {
    format!("  {label:<width$} pointing {}   mean IoU {:.3}\n", r.hits, r.mean_iou)
}

/// The human-readable summary (printed and written to summary.txt).
pub fn render_summary(r: &EvalReport) -> String {
    let s = &r.summary;
    let st = &r.settings;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Shapes-world evaluation of {}\n{} held-out captions{}, {} steps, guidance {}, {}, seeds {}..{}",
        r.model,
        s.cases,
        if r.complete { "" } else { " (cancelled early)" },
        st.steps,
        st.guidance,
        r.sampler,
        st.seed,
        st.seed + s.cases.saturating_sub(1) as u64
    );
    let _ = writeln!(t, "\nImages, judged by the world's rule-based detector");
    let _ = writeln!(t, "  single object: colour right         {}   target >= 95%", s.single_colour);
    let _ = writeln!(t, "                 shape right          {}   target >= 90%", s.single_shape);
    let _ = writeln!(t, "                 position right       {}   target >= 90%", s.single_position);
    let _ = writeln!(t, "                 size right           {}", s.single_size);
    let _ = writeln!(t, "                 all stated right     {}", s.single_all);
    let _ = writeln!(t, "  two objects:   both objects right   {}   target >= 75%", s.two_both_objects);
    let _ = writeln!(t, "                 ... and relation     {}", s.two_all);
    let _ = writeln!(t, "  strictly right (all stated attributes, no extra object), by template:");
    for (tpl, rate) in &s.strict_by_template {
        let name = match tpl {
            Template::Colour => "a {colour} {shape}",
            Template::SizeColour => "a {size} {colour} {shape}",
            Template::ColourPosition => "a {colour} {shape} on the {position}",
            Template::SizeColourPosition => "a {size} {colour} {shape} on the {position}",
            Template::Relation => "a {colour} {shape} {relation} a ...",
        };
        let _ = writeln!(t, "    {name:<46} {rate}");
    }
    let width = s.attention.by_layer.iter().map(|(l, _)| l.len() + 2).max().unwrap_or(0).max(34);
    let _ = writeln!(
        t,
        "\nAttention of the generations vs the detected objects' masks (maps averaged over all layers and steps,\n\
         upsampled to the image; pointing game: the peak lies in the mask; IoU of the map thresholded at {} of its range)",
        st.threshold
    );
    attention_section(&mut t, &s.attention, width, true);
    let _ = writeln!(
        t,
        "\nAttention on rendered scenes of the same captions vs their exact masks (the scene's latent noised to\n\
         each step's t, one conditional UNet call per step)"
    );
    attention_section(&mut t, &s.attention_truth, width, false);
    t
}

fn attention_section(t: &mut String, a: &AttentionSummary, width: usize, generated: bool) {
    t.push_str(&pointing_line("all object words", width, &a.pointing));
    let _ = writeln!(t, "  {:<width$} target >= 80%", "");
    for (k, rate) in &a.by_kind {
        t.push_str(&pointing_line(&format!("{} words", k.name()), width, rate));
    }
    if generated {
        let _ = writeln!(t, "  words not scored (object not found): {}", a.unscored_words);
    }
    let _ = writeln!(t, "  per layer (all steps):");
    for (l, rate) in &a.by_layer {
        t.push_str(&pointing_line(&format!("  {l}"), width, rate));
    }
    let _ = writeln!(t, "  per step (all layers):");
    for (i, (ts, rate)) in a.by_step.iter().enumerate() {
        t.push_str(&pointing_line(&format!("  step {:>2}  t = {ts:>4}", i + 1), width, rate));
    }
}
