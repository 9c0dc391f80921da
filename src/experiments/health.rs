//! Timestep-embedding health and schedule checks.
//!
//! For fixed inputs (seeded unit-noise latents and one prompt's conditioning, the conditional
//! branch), the UNet output as t sweeps the training range 0..T-1: its size, the relative
//! change per unit t, the total change over the range and the similarity of outputs far apart
//! in t, with a verdict ("dead embedding" when the output barely depends on t). The same model
//! with its time embedding zeroed (a copy made in memory) is the negative control: it must
//! fail.
//!
//! Schedule checks: alpha_bar strictly decreasing, the log-SNR range, whether the last training
//! step reaches zero SNR, and the model's training schedule against the chosen sampler's (its
//! config, its number of training steps, prediction type and alpha_bar; where its first
//! timestep starts).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{ExperimentEvent, Progress, Stop};
use crate::analysis::probe::{self, TimeResponse, TimeVerdict};
use crate::model::StableDiffusion;
use crate::pipeline::{self, InitLatents, RunConfig, RunError};
use crate::sampling::config::SchedulerConfig;
use crate::sampling::rng::TorchRng;
use crate::sampling::{SamplerKind, SamplerOptions, TimestepSpacing, build_sampler, schedule};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSettings {
    pub prompt: String,
    /// The inputs: each seed's unit-noise latents.
    pub seeds: Vec<u64>,
    /// Timesteps in the sweep, 0 and T-1 included.
    pub points: usize,
    /// Also check a copy with the time embedding zeroed.
    pub zeroed_control: bool,
    /// The sampler checked against the training schedule (None: the model's own).
    pub sampler: Option<SamplerKind>,
    pub steps: usize,
    pub karras: bool,
    pub spacing: Option<TimestepSpacing>,
    /// The sampler's scheduler config when it is not the model's own.
    pub scheduler_config: Option<PathBuf>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            seeds: vec![0, 1],
            points: 41,
            zeroed_control: true,
            sampler: None,
            steps: 30,
            karras: false,
            spacing: None,
            scheduler_config: None,
        }
    }
}

/// The schedule checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleCheck {
    pub num_train_timesteps: usize,
    pub prediction_type: String,
    pub alpha_bar_decreasing: bool,
    pub log_snr_first: f64,
    pub log_snr_last: f64,
    pub zero_terminal_snr: bool,
    pub sampler: String,
    pub sampler_first_timestep: f64,
    pub sampler_last_timestep: f64,
    /// Differences between the model's training schedule and the sampler's that change what
    /// the model is asked (a real problem).
    pub mismatches: Vec<String>,
    /// Facts worth knowing (terminal SNR above zero, a first timestep below T-1).
    pub notes: Vec<String>,
    /// alpha_bar per training timestep (the model's), for the plot.
    pub alpha_bar: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub model: String,
    pub settings: HealthSettings,
    pub response: Option<TimeResponse>,
    pub verdict: Option<TimeVerdict>,
    pub zeroed: Option<TimeResponse>,
    pub zeroed_verdict: Option<TimeVerdict>,
    pub schedule: ScheduleCheck,
}

/// The training schedule against the sampler's.
pub fn schedule_check(sd: &StableDiffusion, s: &HealthSettings) -> Result<ScheduleCheck, RunError> {
    let model_cfg = pipeline::scheduler_config(sd)?;
    let kind = pipeline::sampler_kind(sd, s.sampler)?;
    let sampler_cfg = match &s.scheduler_config {
        Some(p) => SchedulerConfig::from_file(p)?,
        None => model_cfg.clone(),
    };
    let train = model_cfg.resolve_native().or_else(|_| model_cfg.resolve(kind))?;
    let used = sampler_cfg.resolve(kind)?;
    let ab = schedule::alphas_cumprod(&train);
    let ab_used = schedule::alphas_cumprod(&used);
    let lsnr = schedule::log_snr(&ab);
    let options = SamplerOptions {
        karras: s.karras,
        spacing: s.spacing,
        eta: 0.0,
    };
    let sampler = build_sampler(kind, &sampler_cfg, s.steps.max(1), &options)?;
    let ts = sampler.timesteps();
    let t_train = train.num_train_timesteps;
    let mut mismatches = Vec::new();
    let mut notes = Vec::new();
    if used.num_train_timesteps != t_train {
        mismatches.push(format!(
            "the sampler assumes {} training steps, the model was trained with {t_train}",
            used.num_train_timesteps
        ));
    }
    if used.prediction_type != train.prediction_type {
        mismatches.push(format!(
            "the sampler reads the output as {:?}, the model predicts {:?}",
            used.prediction_type, train.prediction_type
        ));
    }
    let worst = ab
        .iter()
        .zip(&ab_used)
        .map(|(a, b)| ((*a as f64).ln() - (*b as f64).ln()).abs())
        .fold(0.0, f64::max);
    if ab.len() == ab_used.len() && worst > 1e-4 {
        mismatches.push(format!(
            "the sampler's alpha_bar differs from the training schedule's (up to {worst:.3} in log alpha_bar): {:?} {}..{} against {:?} {}..{}",
            used.beta_schedule, used.beta_start, used.beta_end, train.beta_schedule, train.beta_start, train.beta_end
        ));
    }
    let zero_terminal = ab.last().is_some_and(|&a| a <= 2f32.powi(-24));
    let last = *lsnr.last().unwrap_or(&0.0);
    if !zero_terminal {
        notes.push(format!(
            "the last training step keeps signal (log-SNR {last:.2}): a run that starts from pure noise starts where training never was (Lin et al. 2024, arXiv 2305.08891)"
        ));
    }
    let first = ts.first().copied().unwrap_or(0.0);
    if first < (t_train - 1) as f64 - 0.5 {
        let i = (first.round() as usize).min(ab.len().saturating_sub(1));
        notes.push(format!(
            "the sampler's first timestep is {first:.1}, not {} (log-SNR {:.2} there against {last:.2}): its first step denoises pure noise as if it held signal (leading spacing does this; trailing does not)",
            t_train - 1,
            lsnr[i]
        ));
    }
    Ok(ScheduleCheck {
        num_train_timesteps: t_train,
        prediction_type: format!("{:?}", train.prediction_type),
        alpha_bar_decreasing: ab.windows(2).all(|w| w[1] < w[0]),
        log_snr_first: lsnr.first().copied().unwrap_or(0.0),
        log_snr_last: last,
        zero_terminal_snr: zero_terminal,
        sampler: kind.as_str().to_owned(),
        sampler_first_timestep: first,
        sampler_last_timestep: ts.last().copied().unwrap_or(0.0),
        mismatches,
        notes,
        alpha_bar: ab,
    })
}

/// The timestep grid: `points` values from 0 to T-1, rounded to whole timesteps.
pub fn grid(num_train_timesteps: usize, points: usize) -> Vec<f64> {
    let last = (num_train_timesteps - 1) as f64;
    let mut v: Vec<f64> = (0..points).map(|k| (last * k as f64 / (points - 1) as f64).round()).collect();
    v.dedup();
    v
}

/// The health check.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &HealthSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(HealthReport, Option<Stop>), RunError> {
    if settings.points < 3 {
        return Err(RunError::BadInput(format!("points {}: at least 3", settings.points)));
    }
    if settings.seeds.is_empty() {
        return Err(RunError::BadInput("no seeds".into()));
    }
    let schedule = schedule_check(sd, settings)?;
    let mut report = HealthReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        response: None,
        verdict: None,
        zeroed: None,
        zeroed_verdict: None,
        schedule,
    };
    let ts = grid(report.schedule.num_train_timesteps, settings.points);
    let geo = pipeline::geometry(sd, &RunConfig::default())?;
    let cond = pipeline::encode_prompt(sd, &settings.prompt, "", false, None)?;
    let inputs: Vec<Vec<f32>> = settings
        .seeds
        .iter()
        .map(|&s| pipeline::initial_noise(&InitLatents::Seed, &mut TorchRng::new(s), geo.latent))
        .collect::<Result<_, _>>()?;
    let zeroed = if settings.zeroed_control {
        Some(pipeline::zeroed_time_unet(sd)?)
    } else {
        None
    };
    let models = 1 + usize::from(zeroed.is_some());
    let total = ts.len() * models;
    for m in 0..models {
        let mut outputs = Vec::with_capacity(ts.len());
        for (k, &t) in ts.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Ok((report, Some(Stop::Cancelled)));
            }
            sink(ExperimentEvent::Progress(Progress {
                done: m * ts.len() + k,
                total,
                message: format!("{} at t = {t}", if m == 0 { "model" } else { "zeroed copy" }),
            }));
            let mut out = Vec::new();
            for x in &inputs {
                let o = match (&zeroed, m) {
                    (Some(z), 1) => pipeline::guided_eval_variant(sd, z, &cond, x.clone(), geo.latent, t, 1.0)?,
                    _ => {
                        pipeline::guided_eval(sd, &cond, x.clone(), geo.latent, t, 1.0, crate::types::CaptureMode::None, &[])?.model_output
                    }
                };
                out.extend(o);
            }
            outputs.push(out);
        }
        let r = probe::time_response(&ts, &outputs).ok_or_else(|| RunError::BadInput("too few timesteps".into()))?;
        let v = TimeVerdict::of(&r);
        if m == 0 {
            report.response = Some(r);
            report.verdict = Some(v);
        } else {
            report.zeroed = Some(r);
            report.zeroed_verdict = Some(v);
        }
    }
    sink(ExperimentEvent::Progress(Progress {
        done: total,
        total,
        message: String::new(),
    }));
    Ok((report, None))
}

/// The report as text.
pub fn render_report(r: &HealthReport) -> String {
    let mut s = String::new();
    let line = |name: &str, resp: &Option<TimeResponse>, v: &Option<TimeVerdict>| -> String {
        match (resp, v) {
            (Some(x), Some(v)) => format!(
                "{name}: total change over t = 0..T {:.3} x its size, mean change per 1000 t {:.3}, similarity of far-apart t {:.3} -> {}\n",
                x.total_change,
                1000.0 * x.change_per_t.iter().sum::<f64>() / x.change_per_t.len().max(1) as f64,
                x.far_similarity,
                v.describe()
            ),
            _ => String::new(),
        }
    };
    s += &line("model", &r.response, &r.verdict);
    s += &line("time embedding zeroed (control)", &r.zeroed, &r.zeroed_verdict);
    let c = &r.schedule;
    s += &format!(
        "schedule: {} training steps, {} prediction, alpha_bar {}, log-SNR {:.2} .. {:.2}{}\n",
        c.num_train_timesteps,
        c.prediction_type,
        if c.alpha_bar_decreasing {
            "strictly decreasing"
        } else {
            "NOT strictly decreasing"
        },
        c.log_snr_first,
        c.log_snr_last,
        if c.zero_terminal_snr { " (zero terminal SNR)" } else { "" }
    );
    s += &format!(
        "sampler {}: timesteps {:.1} .. {:.1}\n",
        c.sampler, c.sampler_first_timestep, c.sampler_last_timestep
    );
    if c.mismatches.is_empty() {
        s += "training schedule and sampler agree\n";
    }
    for m in &c.mismatches {
        s += &format!("MISMATCH: {m}\n");
    }
    for n in &c.notes {
        s += &format!("note: {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_spans_the_range() {
        let g = grid(1000, 5);
        assert_eq!(g, vec![0.0, 250.0, 500.0, 749.0, 999.0]);
        assert_eq!(grid(3, 10), vec![0.0, 1.0, 2.0]);
    }
}
