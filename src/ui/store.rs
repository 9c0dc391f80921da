//! The UI-side store: owns the history of the current run as it streams in. Fed by
//! [`RunStore::apply`] from worker events (in `App::logic`); panels only read it.

use crate::engine::{Event, ModelInfo};
use crate::trace::{Run, RunStatus};

/// What the worker is doing, as far as the UI knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    Idle,
    LoadingModel(String),
    Running,
    Decoding,
}

pub struct RunStore {
    pub run: Option<Run>,
    /// Bumped whenever `run` is replaced (new run or opened from disk): caches key on it.
    pub generation: u64,
    pub activity: Activity,
    pub model: Option<ModelInfo>,
    /// The last error (failed run or failed load), shown until the next run starts.
    pub error: Option<String>,
    /// A short status line ("cancelled after 3 of 30 steps", "done in 1.2 s").
    pub status: String,
    /// Full VAE decodes answered by the worker, by request id (errors as text).
    pub decoded: std::collections::HashMap<u64, Result<crate::trace::RgbImage, String>>,
}

impl Default for RunStore {
    fn default() -> Self {
        Self {
            run: None,
            generation: 0,
            activity: Activity::Idle,
            model: None,
            error: None,
            status: String::new(),
            decoded: Default::default(),
        }
    }
}

impl RunStore {
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::LoadingModel { spec } => {
                self.activity = Activity::LoadingModel(spec);
                self.error = None;
            }
            Event::ModelLoaded(info) => {
                self.status = format!("loaded {} in {:.2} s", info.spec, info.load_secs);
                self.model = Some(info);
            }
            Event::Started(meta) => {
                self.run = Some(Run {
                    meta: *meta,
                    steps: Vec::new(),
                    image: None,
                });
                self.generation += 1;
                self.activity = Activity::Running;
                self.error = None;
                // The previous run's "done in …" would read as this run's.
                self.status.clear();
            }
            Event::Step(rec) => {
                if let Some(run) = &mut self.run {
                    run.meta.step_secs.push(rec.elapsed_secs);
                    run.steps.push(*rec);
                }
            }
            Event::Decoding => self.activity = Activity::Decoding,
            Event::Finished { image, total_secs } => {
                if let Some(run) = &mut self.run {
                    run.image = Some(image);
                    run.meta.status = RunStatus::Complete;
                    run.meta.total_secs = total_secs;
                }
                self.activity = Activity::Idle;
                self.status = format!("done in {total_secs:.2} s");
            }
            Event::Cancelled { completed, total } => {
                if let Some(run) = &mut self.run {
                    run.meta.status = RunStatus::Cancelled;
                }
                self.activity = Activity::Idle;
                self.status = format!("cancelled after {completed} of {total} steps");
            }
            Event::Decoded { id, image } => {
                self.decoded.insert(id, Ok(image));
            }
            Event::DecodeFailed { id, error } => {
                self.decoded.insert(id, Err(error));
            }
            Event::Failed { error } => {
                if let Some(run) = &mut self.run
                    && run.meta.status == RunStatus::Running
                {
                    run.meta.status = RunStatus::Failed;
                    run.meta.error = Some(error.clone());
                }
                self.activity = Activity::Idle;
                self.error = Some(error);
            }
        }
    }

    /// Replaces the run with one opened from disk.
    pub fn open(&mut self, run: Run) {
        self.run = Some(run);
        self.generation += 1;
        self.error = None;
        self.status = "opened from disk".into();
    }

    pub fn busy(&self) -> bool {
        self.activity != Activity::Idle
    }
}
