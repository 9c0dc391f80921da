//! Sampler comparison: the same prompt and the same initial noise through several samplers and
//! step counts, each cell measured against a reference solution of the same ODE.
//!
//! Per cell: UNet evaluations (NFE; each is one batch-2 call with guidance), seconds, the
//! trajectory (the decoded x0 at fractions 0, 1/F, ..., 1 of the run; the last column is the
//! final image), the distance of its final latents (RMSE) and final image (PSNR) to the
//! reference, and "recognisable at": the first fraction whose decoded x0 is within
//! `recognisable_db` of the cell's own final image, and (when the prompt is a shapes-world
//! caption) the first fraction at which the world's detector reads every stated attribute.
//! With `captions > 0` every cell also generates that many held-out captions and the detector
//! scores them: a quality column with meaning on the bundled model.
//!
//! The reference is DPM-Solver++ 2M at 200 steps by default: the deterministic samplers here
//! (DDIM, Euler, Heun, LMS, PNDM, DPM-Solver++) all integrate the probability-flow ODE of the
//! model, and a second-order multistep solver converges fastest per UNet evaluation; the
//! DPM-Solver papers compare solvers at fixed NFE against such a many-step solution. The
//! reference is run again at twice its steps: it counts as converged when doubling changes its
//! final latents less than any cell differs from it. Ancestral samplers (Euler-a, DDPM) sample
//! an SDE, not the ODE: their distance to the reference is reported but is not convergence.
//!
//! Every cell starts from the same noise: `randn` of the torch-compatible generator seeded
//! with `seed` (times each sampler's `init_noise_sigma`), as diffusers draws it. And every cell
//! integrates over the same interval: the timestep spacing is `trailing` for all of them by
//! default (every step count starts at t = T - 1). With SD's own `leading` spacing the first
//! timestep depends on the step count (DDIM 10 steps starts at t = 901, DPM-Solver++ 200 steps
//! at 801), so cells would start the same noise at different noise levels and no longer solve
//! one initial value problem; `spacing: None` keeps each config's own spacing on request.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::shapes_eval::Rate;
use super::{ExperimentEvent, Progress, Stop};
use crate::analysis;
use crate::model::StableDiffusion;
use crate::pipeline::{self, RunConfig, RunError, RunEvent};
use crate::sampling::{SamplerKind, TimestepSpacing};
use crate::trace::{RgbImage, Run, RunEnd};
use crate::types::CaptureMode;
use crate::world;

/// One cell: a sampler at a step count (with Karras sigmas where supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellSpec {
    pub sampler: SamplerKind,
    pub steps: usize,
    pub karras: bool,
}

impl CellSpec {
    /// `ddim:50`, `dpm++2m-karras:20`.
    pub fn label(&self) -> String {
        format!("{}{}:{}", self.sampler, if self.karras { "-karras" } else { "" }, self.steps)
    }

    /// Parses `NAME:STEPS` where NAME is a sampler, optionally with `-karras`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (name, steps) = t
            .rsplit_once(':')
            .ok_or_else(|| format!("'{t}': expected SAMPLER:STEPS, e.g. ddim:50 or dpm++2m-karras:20"))?;
        let steps: usize = steps
            .trim()
            .parse()
            .map_err(|_| format!("'{t}': the step count '{steps}' is not a whole number"))?;
        if steps == 0 {
            return Err(format!("'{t}': the step count must be at least 1"));
        }
        let (name, karras) = match name.trim().strip_suffix("-karras") {
            Some(n) => (n, true),
            None => (name.trim(), false),
        };
        let sampler: SamplerKind = name.parse().map_err(|e| format!("'{t}': {e}"))?;
        if karras && !sampler.supports_karras() {
            return Err(format!(
                "'{t}': {sampler} does not take Karras sigmas (euler, dpm++2m, lms, heun do)"
            ));
        }
        Ok(Self { sampler, steps, karras })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let cells: Vec<Self> = text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Self::parse)
            .collect::<Result<_, _>>()?;
        if cells.is_empty() {
            return Err("the sampler list is empty; e.g. ddim:50,dpm++2m:20".into());
        }
        Ok(cells)
    }

    /// Ancestral samplers draw fresh noise every step: they do not solve the ODE.
    pub fn stochastic(&self) -> bool {
        matches!(self.sampler, SamplerKind::EulerAncestral | SamplerKind::Ddpm)
    }
}

impl std::fmt::Display for CellSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareSettings {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub guidance: f32,
    pub cells: Vec<CellSpec>,
    pub reference: CellSpec,
    /// The timestep spacing of every run (None: each scheduler config's own).
    pub spacing: Option<TimestepSpacing>,
    /// Trajectory columns: fractions 0, 1/F, ..., 1.
    pub fractions: usize,
    /// "Recognisable": decoded x0 within this PSNR (dB) of the final image.
    pub recognisable_db: f64,
    /// Held-out captions per cell for the detector's quality column (0: none).
    pub captions: usize,
    pub caption_seed: u64,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: 0,
            guidance: 7.5,
            cells: Vec::new(),
            reference: CellSpec {
                sampler: SamplerKind::DpmPP2M,
                steps: 200,
                karras: false,
            },
            spacing: Some(TimestepSpacing::Trailing),
            fractions: 10,
            recognisable_db: 20.0,
            captions: 0,
            caption_seed: 0,
            height: None,
            width: None,
        }
    }
}

impl CompareSettings {
    /// The checks the CLI and the app run before sending the experiment.
    pub fn validate(&self) -> Result<(), String> {
        if self.cells.is_empty() {
            return Err("no cells to compare; e.g. --samplers ddim:50,dpm++2m:20".into());
        }
        if let Some(c) = self.cells.iter().find(|c| c.steps == 0) {
            return Err(format!("{c}: the step count must be at least 1"));
        }
        if self.cells.contains(&self.reference) {
            return Err(format!(
                "the reference {} is also one of the cells; a cell compared with itself says nothing (pick more reference steps)",
                self.reference
            ));
        }
        for (i, c) in self.cells.iter().enumerate() {
            if self.cells[..i].contains(c) {
                return Err(format!("{c} is listed twice"));
            }
        }
        if self.fractions == 0 || self.fractions > 100 {
            return Err(format!("fractions {}: expected 1 to 100", self.fractions));
        }
        if !self.guidance.is_finite() {
            return Err(format!("guidance {} is not a finite number", self.guidance));
        }
        if !(self.recognisable_db.is_finite() && self.recognisable_db > 0.0) {
            return Err(format!(
                "recognisable threshold {} dB: expected a positive number",
                self.recognisable_db
            ));
        }
        Ok(())
    }

    /// The run of a cell on the prompt: same seed, so the same initial noise.
    fn run_config(&self, cell: &CellSpec, prompt: &str, seed: u64, attention: CaptureMode) -> RunConfig {
        RunConfig {
            prompt: prompt.to_owned(),
            negative_prompt: self.negative_prompt.clone(),
            steps: cell.steps,
            guidance: self.guidance,
            sampler: Some(cell.sampler),
            karras: cell.karras,
            spacing: self.spacing,
            seed,
            height: self.height,
            width: self.width,
            attention,
            ..RunConfig::default()
        }
    }
}

/// One trajectory column of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryPoint {
    pub fraction: f64,
    /// The step whose x0 is shown (None: the final image).
    pub step: Option<usize>,
    /// PSNR of this frame to the cell's final image (dB; 100 = identical).
    pub psnr_to_final: f64,
    /// Whether the detector reads every stated attribute (None: the prompt is not a
    /// shapes-world caption).
    pub detector_correct: Option<bool>,
}

/// The detector's verdicts over held-out captions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub captions: usize,
    /// Every stated attribute (and the relation) right, no extra object.
    pub strict: Rate,
    /// Colour right, per caption object.
    pub colour: Rate,
    pub shape: Rate,
    /// Position right, per object whose caption states one.
    pub position: Rate,
    /// The relation holds, per two-object caption.
    pub relation: Rate,
}

impl Quality {
    /// Strict accuracy in percent (NaN without captions).
    pub fn accuracy(&self) -> f64 {
        self.strict.pct()
    }

    pub(crate) fn add(&mut self, j: &world::Judgement) {
        self.captions += 1;
        self.strict.add(j.strict_correct());
        for o in &j.objects {
            self.colour.add(o.colour);
            self.shape.add(o.shape);
            if let Some(p) = o.position {
                self.position.add(p);
            }
        }
        if let Some(r) = j.relation {
            self.relation.add(r);
        }
    }
}

/// A cell's (or the reference's) numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellReport {
    pub spec: CellSpec,
    pub label: String,
    pub stochastic: bool,
    /// UNet evaluations (each a batch of 2 with guidance).
    pub nfe: usize,
    /// Prompt encoding to decoded image, without the model load.
    pub secs: f64,
    /// RMSE of the final latents to the reference's.
    pub latent_rmse: f64,
    /// PSNR of the final image to the reference's (dB; 100 = identical).
    pub image_psnr: f64,
    pub trajectory: Vec<TrajectoryPoint>,
    /// First fraction whose decoded x0 is within `recognisable_db` of the final image.
    pub recognisable_at: Option<f64>,
    /// First fraction at which the detector reads every stated attribute (None: never, or not
    /// a shapes-world prompt).
    pub detector_at: Option<f64>,
    /// With `captions > 0`: the detector's quality over held-out captions.
    pub quality: Option<Quality>,
}

/// The reference and its convergence check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceReport {
    pub spec: CellSpec,
    pub nfe: usize,
    pub secs: f64,
    /// The same solver at twice the steps.
    pub double: CellSpec,
    /// Distances of the doubled run to the reference (None: the check was cancelled or failed).
    pub double_latent_rmse: Option<f64>,
    pub double_image_psnr: Option<f64>,
    /// The smallest latent RMSE of a deterministic cell to the reference (None: no such cell).
    pub closest_cell_rmse: Option<f64>,
    /// Doubling changes the reference less than any deterministic cell differs from it (false
    /// when the check did not run).
    pub converged: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    pub model: String,
    pub settings: CompareSettings,
    /// Whether every cell ran (false after a cancel or a failure).
    pub complete: bool,
    pub is_world_caption: bool,
    pub reference: Option<ReferenceReport>,
    pub cells: Vec<CellReport>,
}

/// Which run a [`CellOutput`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CellRole {
    Reference,
    Cell(usize),
}

/// What the experiment streams per finished cell: its numbers, its run (to open, with its
/// attention maps) and the trajectory frames (one per fraction; the last is the final image).
pub struct CellOutput {
    pub role: CellRole,
    pub report: CellReport,
    pub run: Run,
    pub frames: Vec<RgbImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{0}")]
    Settings(String),
    #[error("{0}")]
    Run(#[from] RunError),
}

/// Runs `cfg` to the end and returns the run with its final image.
pub(crate) fn generate(sd: &StableDiffusion, model_spec: &str, cfg: &RunConfig, cancel: &AtomicBool) -> Result<Run, RunError> {
    let t0 = std::time::Instant::now();
    let mut run: Option<Run> = None;
    let image = pipeline::run(sd, model_spec, cfg, cancel, &mut |ev| match ev {
        RunEvent::Started(m) => run = Some(Run::started(*m)),
        RunEvent::Step(s) => {
            if let Some(r) = run.as_mut() {
                r.push_step(*s);
            }
        }
        RunEvent::Decoding => {}
    })?;
    let mut run = run.ok_or_else(|| RunError::BadInput("the run reported no metadata".into()))?;
    run.finish(RunEnd::Complete(image), t0.elapsed().as_secs_f64());
    Ok(run)
}

pub(crate) fn final_latents(run: &Run) -> &[f32] {
    run.steps.last().map_or(&[], |s| s.latents.as_slice())
}

pub(crate) fn image_of(run: &Run) -> &RgbImage {
    run.image.as_ref().expect("a finished run has its image")
}

/// The step whose x0 stands for fraction `f` of a run of `n` evaluations: the prediction after
/// ceil(f n) evaluations (at least one). None for f = 1: the final image.
pub fn step_at_fraction(f: f64, n: usize) -> Option<usize> {
    if f >= 1.0 {
        return None;
    }
    Some(((f * n as f64).ceil() as usize).clamp(1, n) - 1)
}

/// The trajectory of a finished run: decoded frames and their distances to the final image.
fn trajectory(
    sd: &StableDiffusion,
    run: &Run,
    settings: &CompareSettings,
    caption: Option<&world::CaptionSpec>,
) -> Result<(Vec<TrajectoryPoint>, Vec<RgbImage>), RunError> {
    let n = run.steps.len();
    let final_image = image_of(run);
    let mut points = Vec::new();
    let mut frames = Vec::new();
    for k in 0..=settings.fractions {
        let fraction = k as f64 / settings.fractions as f64;
        let step = step_at_fraction(fraction, n);
        let frame = match step {
            Some(i) => pipeline::decode(sd, run.steps[i].x0.clone(), run.meta.latent_shape)?,
            None => final_image.clone(),
        };
        let psnr_to_final = analysis::psnr(&frame.pixels, &final_image.pixels).unwrap_or(0.0);
        let detector_correct = caption.map(|spec| {
            let detections = world::detect(&frame.pixels, frame.width, frame.height);
            world::judge_spec(spec, &detections).all_correct
        });
        points.push(TrajectoryPoint {
            fraction,
            step,
            psnr_to_final,
            detector_correct,
        });
        frames.push(frame);
    }
    Ok((points, frames))
}

/// The detector's quality over `count` held-out captions (shuffled by `caption_seed`);
/// `config(caption, i)` is the run of caption `i`.
pub(crate) fn caption_quality(
    sd: &StableDiffusion,
    model_spec: &str,
    count: usize,
    caption_seed: u64,
    config: impl Fn(&str, usize) -> RunConfig,
    cancel: &AtomicBool,
) -> Result<Quality, RunError> {
    let mut q = Quality::default();
    for (i, caption) in world::eval_captions(count, caption_seed).iter().enumerate() {
        let run = generate(sd, model_spec, &config(caption, i), cancel)?;
        let img = image_of(&run);
        q.add(&world::judge(caption, &world::detect(&img.pixels, img.width, img.height)));
    }
    Ok(q)
}

/// The comparison: the reference (and its doubled check), then every cell. Streams a
/// [`CellOutput`] per finished run; returns the report of what finished and why it stopped
/// early, if it did.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    settings: &CompareSettings,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(CompareReport, Option<Stop>), CompareError> {
    settings.validate().map_err(CompareError::Settings)?;
    let caption = world::parse_caption(&settings.prompt).ok();
    let per_cell_runs = 1 + settings.captions;
    let total = 2 + settings.cells.len() * per_cell_runs;
    let mut report = CompareReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        complete: false,
        is_world_caption: caption.is_some(),
        reference: None,
        cells: Vec::new(),
    };
    let mut done = 0;
    let progress = |done: usize, message: String, sink: &mut dyn FnMut(ExperimentEvent)| {
        sink(ExperimentEvent::Progress(Progress { done, total, message }))
    };
    let stop = |e: RunError, what: &str| match e {
        RunError::Cancelled { .. } => Stop::Cancelled,
        e => Stop::Failed(format!("{what}: {e}")),
    };

    // The reference (streamed at once), then the same solver at twice the steps.
    let r = settings.reference;
    progress(done, format!("reference {r}"), sink);
    let cfg = settings.run_config(&r, &settings.prompt, settings.seed, CaptureMode::Aggregate);
    let reference = match generate(sd, model_spec, &cfg, cancel) {
        Ok(run) => run,
        Err(e) => return Ok((report, Some(stop(e, &format!("reference {r}"))))),
    };
    done += 1;
    let ref_latents = final_latents(&reference).to_vec();
    let ref_image = image_of(&reference).clone();
    let (ref_nfe, ref_secs) = (reference.steps.len(), reference.meta.total_secs);
    match trajectory(sd, &reference, settings, caption.as_ref()) {
        Ok((points, frames)) => {
            let rep = cell_report(&r, &reference, points, settings, &ref_latents, &ref_image, None);
            sink(ExperimentEvent::CompareCell(Box::new(CellOutput {
                role: CellRole::Reference,
                report: rep,
                run: reference,
                frames,
            })));
        }
        Err(e) => return Ok((report, Some(stop(e, &format!("reference {r}"))))),
    }
    let double = CellSpec { steps: r.steps * 2, ..r };
    let mut reference_report = ReferenceReport {
        spec: r,
        nfe: ref_nfe,
        secs: ref_secs,
        double,
        double_latent_rmse: None,
        double_image_psnr: None,
        closest_cell_rmse: None,
        converged: false,
    };
    report.reference = Some(reference_report.clone());
    progress(done, format!("reference check {double}"), sink);
    let cfg = settings.run_config(&double, &settings.prompt, settings.seed, CaptureMode::None);
    let doubled = match generate(sd, model_spec, &cfg, cancel) {
        Ok(run) => run,
        Err(e) => return Ok((report, Some(stop(e, &format!("reference check {double}"))))),
    };
    done += 1;
    reference_report.double_latent_rmse = Some(analysis::rms_diff(final_latents(&doubled), &ref_latents) as f64);
    reference_report.double_image_psnr = analysis::psnr(&image_of(&doubled).pixels, &ref_image.pixels);
    report.reference = Some(reference_report.clone());

    let mut stopped = None;
    for (i, cell) in settings.cells.iter().enumerate() {
        progress(done, format!("{cell}"), sink);
        let cfg = settings.run_config(cell, &settings.prompt, settings.seed, CaptureMode::Aggregate);
        let result = generate(sd, model_spec, &cfg, cancel).and_then(|run| {
            let (points, frames) = trajectory(sd, &run, settings, caption.as_ref())?;
            let quality = if settings.captions > 0 {
                progress(done + 1, format!("{cell}: {} held-out captions", settings.captions), sink);
                let config =
                    |caption: &str, i: usize| settings.run_config(cell, caption, settings.seed.wrapping_add(i as u64), CaptureMode::None);
                Some(caption_quality(
                    sd,
                    model_spec,
                    settings.captions,
                    settings.caption_seed,
                    config,
                    cancel,
                )?)
            } else {
                None
            };
            Ok((run, points, frames, quality))
        });
        match result {
            Ok((run, points, frames, quality)) => {
                done += per_cell_runs;
                let rep = cell_report(cell, &run, points, settings, &ref_latents, &ref_image, quality);
                report.cells.push(rep.clone());
                sink(ExperimentEvent::CompareCell(Box::new(CellOutput {
                    role: CellRole::Cell(i),
                    report: rep,
                    run,
                    frames,
                })));
            }
            Err(e) => {
                stopped = Some(stop(e, &cell.label()));
                break;
            }
        }
    }
    let deterministic = report.cells.iter().filter(|c| !c.stochastic).map(|c| c.latent_rmse);
    reference_report.closest_cell_rmse = deterministic.reduce(f64::min);
    reference_report.converged = match (reference_report.double_latent_rmse, reference_report.closest_cell_rmse) {
        (Some(doubled), Some(closest)) => doubled < closest,
        (Some(_), None) => true,
        (None, _) => false,
    };
    report.reference = Some(reference_report);
    report.complete = stopped.is_none() && report.cells.len() == settings.cells.len();
    progress(done, String::new(), sink);
    Ok((report, stopped))
}

fn cell_report(
    spec: &CellSpec,
    run: &Run,
    trajectory: Vec<TrajectoryPoint>,
    settings: &CompareSettings,
    ref_latents: &[f32],
    ref_image: &RgbImage,
    quality: Option<Quality>,
) -> CellReport {
    let recognisable_at = trajectory
        .iter()
        .find(|p| p.psnr_to_final >= settings.recognisable_db)
        .map(|p| p.fraction);
    let detector_at = trajectory.iter().find(|p| p.detector_correct == Some(true)).map(|p| p.fraction);
    CellReport {
        spec: *spec,
        label: spec.label(),
        stochastic: spec.stochastic(),
        nfe: run.steps.len(),
        secs: run.meta.total_secs,
        latent_rmse: analysis::rms_diff(final_latents(run), ref_latents) as f64,
        image_psnr: analysis::psnr(&image_of(run).pixels, &ref_image.pixels).unwrap_or(0.0),
        trajectory,
        recognisable_at,
        detector_at,
        quality,
    }
}

/// Cells grouped by sampler (Karras sigmas as a group of their own), each group's points
/// `value(cell)` ordered by x: the series of the comparison plots.
pub fn by_sampler<'a>(
    cells: impl IntoIterator<Item = &'a CellReport>,
    value: impl Fn(&CellReport) -> Option<(f64, f64)>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut groups: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for c in cells {
        let name = format!("{}{}", c.spec.sampler, if c.spec.karras { "-karras" } else { "" });
        if let Some(p) = value(c) {
            groups.entry(name).or_default().push(p);
        }
    }
    groups
        .into_iter()
        .map(|(label, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (label, points)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        match (CellSpec::parse(input), expected) {
            (Ok(c), Ok(label)) => assert_eq!(c.label(), label, "{input}"),
            (Err(e), Err(part)) => assert!(e.contains(part), "{input}: {e}"),
            (got, want) => panic!("{input}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn cell_specs() {
        check("ddim:50", Ok("ddim:50"));
        check(" dpm++2m-karras:20 ", Ok("dpm++2m-karras:20"));
        check("euler-a:30", Ok("euler-a:30"));
        check("ddim", Err("expected SAMPLER:STEPS"));
        check("ddim:0", Err("at least 1"));
        check("ddim:x", Err("'x' is not a whole number"));
        check("foo:10", Err("unknown"));
        check("ddim-karras:10", Err("does not take Karras"));
        assert!(CellSpec::parse_list(" , ").unwrap_err().contains("empty"));
    }

    #[test]
    fn settings_are_checked() {
        let cells = CellSpec::parse_list("ddim:10,euler:10").unwrap();
        let ok = CompareSettings {
            cells: cells.clone(),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let same = CompareSettings {
            cells: vec![cells[0], ok.reference],
            ..Default::default()
        };
        assert!(same.validate().unwrap_err().contains("also one of the cells"));
        let twice = CompareSettings {
            cells: vec![cells[0], cells[0]],
            ..Default::default()
        };
        assert!(twice.validate().unwrap_err().contains("listed twice"));
        assert!(CompareSettings::default().validate().unwrap_err().contains("no cells"));
    }

    #[test]
    fn fractions_pick_the_step_after_that_share_of_evaluations() {
        // 10 evaluations: 0 -> the first prediction, 0.5 -> after 5, 1 -> the final image
        assert_eq!(step_at_fraction(0.0, 10), Some(0));
        assert_eq!(step_at_fraction(0.5, 10), Some(4));
        assert_eq!(step_at_fraction(0.55, 10), Some(5));
        assert_eq!(step_at_fraction(0.99, 10), Some(9));
        assert_eq!(step_at_fraction(1.0, 10), None);
    }
}
