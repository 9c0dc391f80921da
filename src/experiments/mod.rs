//! Experiments: work that drives the model many times and reports, as plain data.
//!
//! Each experiment is `Settings → run(&model, &cancel, &mut sink) → Report`: its settings and
//! report are serde structs, `run` streams [`ExperimentEvent`]s (progress and per-item results,
//! so a consumer can write files as they come and lose nothing on interruption) and returns
//! the report — also when cancelled or when an item failed, with [`Outcome::stopped`] saying
//! so. Every model call goes through `crate::pipeline`'s pieces; no experiment has its own
//! denoising loop. The worker runs experiments for the CLI and the app alike
//! (`engine::Command::Experiment`).
//!
//! A new experiment: a module here with its `Settings`, `Report` and `run`, one variant in
//! [`ExperimentSettings`], [`ExperimentReport`] (and [`ExperimentEvent`] when it streams items),
//! one arm in [`run`].

pub mod compare;
pub mod direction;
pub mod generate_set;
pub mod health;
pub mod interpolate;
pub mod ood;
pub mod quality;
pub mod saliency;
pub mod saliency_eval;
pub mod shapes_eval;
pub mod sweep;

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::model::StableDiffusion;

/// How far an experiment is: `done` of `total` items, and what it is working on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub message: String,
}

/// Every experiment's settings (the worker's `Experiment` command carries one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExperimentSettings {
    ShapesEval(shapes_eval::EvalSettings),
    Compare(compare::CompareSettings),
    Sweep(sweep::SweepSettings),
    GenerateSet(generate_set::SetRun),
    Quality(quality::QualitySettings),
    Saliency(saliency::SaliencySettings),
    SaliencyEval(saliency_eval::SaliencyEvalSettings),
    Interpolate(interpolate::InterpolateSettings),
    Direction(direction::DirectionSettings),
    OodFit(ood::OodFitSettings),
    OodScore(ood::OodScoreSettings),
    OodEval(ood::OodEvalSettings),
    Health(health::HealthSettings),
}

impl ExperimentSettings {
    pub fn name(&self) -> &'static str {
        match self {
            ExperimentSettings::ShapesEval(_) => "shapes-world evaluation",
            ExperimentSettings::Compare(_) => "sampler comparison",
            ExperimentSettings::Sweep(_) => "guidance sweep",
            ExperimentSettings::GenerateSet(_) => "image set",
            ExperimentSettings::Quality(_) => "quality metrics",
            ExperimentSettings::Saliency(_) => "saliency",
            ExperimentSettings::SaliencyEval(_) => "saliency faithfulness",
            ExperimentSettings::Interpolate(_) => "interpolation",
            ExperimentSettings::Direction(_) => "semantic direction",
            ExperimentSettings::OodFit(_) => "OOD reference fit",
            ExperimentSettings::OodScore(_) => "OOD scores",
            ExperimentSettings::OodEval(_) => "OOD evaluation",
            ExperimentSettings::Health(_) => "model health",
        }
    }
}

/// Every experiment's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExperimentReport {
    ShapesEval(Box<shapes_eval::EvalReport>),
    Compare(Box<compare::CompareReport>),
    Sweep(Box<sweep::SweepReport>),
    GenerateSet(Box<generate_set::SetReport>),
    Quality(Box<quality::QualityReport>),
    Saliency(Box<saliency::SaliencyReport>),
    SaliencyEval(Box<saliency_eval::SaliencyEvalReport>),
    Interpolate(Box<interpolate::InterpolateReport>),
    Direction(Box<direction::DirectionReport>),
    OodFit(Box<ood::OodFitReport>),
    OodScore(Box<ood::OodScoreReport>),
    OodEval(Box<ood::OodEvalReport>),
    Health(Box<health::HealthReport>),
}

/// What an experiment streams while it runs.
pub enum ExperimentEvent {
    Progress(Progress),
    /// One evaluated caption with its run and rendered scene.
    ShapesEvalCase(Box<shapes_eval::CaseOutput>),
    /// One finished cell (or the reference) of a sampler comparison.
    CompareCell(Box<compare::CellOutput>),
    /// One finished run (guidance x seed) of a guidance sweep.
    SweepRun(Box<sweep::SweepOutput>),
    /// One guidance value's numbers, as soon as its runs (and captions) are done.
    SweepRow(Box<sweep::GuidanceReport>),
    /// One finished image of an image set.
    SetImage(Box<generate_set::SetImage>),
    /// One scored row of the quality metrics.
    QualityRow(Box<quality::QualityRow>),
    /// One step's saliency maps, as soon as they are computed.
    SaliencyStep(Box<saliency::SaliencyStep>),
    /// The run with its saliency maps, at the end of a saliency experiment (also a partial one).
    SaliencyRun(Box<crate::trace::Run>),
    /// One finished frame of an interpolation.
    InterpFrame(Box<interpolate::InterpFrame>),
    /// One finished image of a direction sweep.
    DirectionImage(Box<direction::DirectionImage>),
}

/// Why an experiment stopped before its last item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stop {
    Cancelled,
    Failed(String),
}

/// What [`run`] returns: the report of the items done, and why it stopped early, if it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub report: ExperimentReport,
    pub stopped: Option<Stop>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{0}")]
    ShapesEval(#[from] shapes_eval::EvalError),
    #[error("{0}")]
    Compare(#[from] compare::CompareError),
    #[error("{0}")]
    Sweep(#[from] crate::pipeline::RunError),
    #[error("{0}")]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Runs one experiment on a loaded model. `Err` only when nothing could be computed at all
/// (e.g. a network failed to load); a failure part-way is `Ok` with `stopped` set.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &ExperimentSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<Outcome, ExperimentError> {
    match settings {
        ExperimentSettings::ShapesEval(s) => {
            let (report, stopped) = shapes_eval::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::ShapesEval(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::Compare(s) => {
            let (report, stopped) = compare::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::Compare(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::Sweep(s) => {
            let (report, stopped) = sweep::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::Sweep(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::Quality(s) => {
            let (report, stopped) = quality::run(s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::Quality(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::Saliency(s) => {
            let (report, stopped) = saliency::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::Saliency(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::SaliencyEval(s) => {
            let (report, stopped) = saliency_eval::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::SaliencyEval(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::Interpolate(s) => {
            let (report, stopped) = interpolate::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::Interpolate(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::Direction(s) => {
            let (report, stopped) = direction::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::Direction(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::OodFit(s) => {
            let (report, stopped) = ood::fit(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::OodFit(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::OodScore(s) => {
            let (report, stopped) = ood::score(sd, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::OodScore(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::OodEval(s) => {
            let (report, stopped) = ood::eval(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::OodEval(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::Health(s) => {
            let (report, stopped) = health::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::Health(Box::new(report)),
                stopped,
            })
        }
        ExperimentSettings::GenerateSet(s) => {
            let (report, stopped) = generate_set::run(sd, model_spec, s, cancel, sink)?;
            Ok(Outcome {
                report: ExperimentReport::GenerateSet(Box::new(report)),
                stopped,
            })
        }
    }
}
