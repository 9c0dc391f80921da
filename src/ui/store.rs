//! The UI-side store: owns the history of every run the app holds (generated since start-up
//! or opened from disk), by [`RunId`], and what the worker last said. Fed by
//! [`RunStore::apply`] from worker events and by the app's actions (open, select, compare,
//! close); panels only read it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::{Event, ModelInfo};
use crate::experiments::compare::{CellReport, CellRole, CompareReport, CompareSettings};
use crate::experiments::direction::{DirectionReport, DirectionSettings};
use crate::experiments::health::HealthReport;
use crate::experiments::interpolate::{InterpolateReport, InterpolateSettings};
use crate::experiments::ood::{OodReference, OodScoreReport};
use crate::experiments::quality::QualityRow;
use crate::experiments::saliency::SaliencyStep;
use crate::experiments::sweep::{GuidanceReport, Snapshot, SweepSettings};
use crate::experiments::{ExperimentEvent, ExperimentReport, Progress, Stop};
use crate::trace::{RgbImage, Run};

/// Identifies a run in the store for the app's lifetime (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub u64);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a run came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Generated,
    Opened(PathBuf),
}

pub struct StoredRun {
    pub id: RunId,
    /// Shared with background jobs (saving) without a copy; the store appends to it only while
    /// it streams, when nothing else holds it.
    pub run: Arc<Run>,
    pub origin: Origin,
}

impl StoredRun {
    /// A short label for lists: id, prompt, sampler and steps.
    pub fn label(&self) -> String {
        let m = &self.run.meta;
        let mut prompt: String = m.prompt.chars().take(28).collect();
        if m.prompt.chars().count() > 28 {
            prompt.push('…');
        }
        format!(
            "{} {prompt} · {} {} · w {} · seed {}",
            self.id, m.sampler, m.steps, m.guidance, m.seed
        )
    }
}

/// What the worker is doing, as far as the UI knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    Idle,
    LoadingModel(String),
    Running,
    Decoding,
    Experiment(Progress),
}

/// A full VAE decode of one step's x0: asked (request id) or answered.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeState {
    Pending(u64),
    Done(Result<RgbImage, String>),
}

/// One row of the sampler comparison as it arrived: its numbers, its trajectory frames and its
/// run (opened in the run view on request).
pub struct ComparisonRow {
    pub role: CellRole,
    pub report: CellReport,
    pub frames: Vec<RgbImage>,
    pub run: Arc<Run>,
}

/// The comparison the app last started: rows fill in as cells finish (the reference first).
pub struct Comparison {
    /// Increases with every new comparison (view caches key on it).
    pub generation: u64,
    pub settings: CompareSettings,
    pub rows: Vec<ComparisonRow>,
    /// The report, once the experiment ended.
    pub report: Option<CompareReport>,
}

/// One finished run of the guidance sweep.
pub struct SweepCell {
    pub image: RgbImage,
    pub run: Arc<Run>,
    /// x0 and x_t at the sweep's snapshot fractions (empty unless the sweep asked for them).
    pub snapshots: Vec<Snapshot>,
}

/// The guidance sweep the app shows: runs by (guidance row, seed column) as they finish. Rows
/// added later ("re-run on release adds a row") extend `settings.guidances` and `report.rows`.
pub struct SweepView {
    pub generation: u64,
    pub settings: SweepSettings,
    pub cells: BTreeMap<(usize, usize), SweepCell>,
    /// Per-guidance numbers, as each guidance value's runs finish.
    pub rows: Vec<GuidanceReport>,
    /// Where the running sweep's guidance 0 lands in `settings.guidances`.
    offset: usize,
}

impl SweepView {
    /// Records a guidance value's numbers (replacing an earlier record of the same w).
    fn add_row(&mut self, row: GuidanceReport) {
        match self.rows.iter_mut().find(|r| r.guidance == row.guidance) {
            Some(r) => *r = row,
            None => self.rows.push(row),
        }
    }
}

/// Which Compare view a set of quality rows belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityOf {
    /// The sampler comparison of this generation.
    Comparison(u64),
    /// The guidance sweep of this generation.
    Sweep(u64),
}

/// The quality metrics of a comparison's or a sweep's rows, filled as rows are scored.
pub struct QualityView {
    pub of: QualityOf,
    pub labels: Vec<String>,
    /// Each row's place on the curves' x axis: w for a sweep, UNet evaluations for a comparison.
    pub xs: Vec<f64>,
    pub rows: Vec<Option<QualityRow>>,
    pub stopped: Option<Stop>,
}

/// One frame of the Probe tab's interpolation.
pub struct InterpFrameView {
    pub image: RgbImage,
    /// The frame's generation (None for image interpolations).
    pub run: Option<Arc<Run>>,
}

/// The Probe tab's interpolation: frames fill in as the worker finishes them.
pub struct InterpView {
    pub generation: u64,
    pub settings: InterpolateSettings,
    pub frames: Vec<Option<InterpFrameView>>,
    pub report: Option<InterpolateReport>,
}

/// The Probe tab's direction sweep: images by (prompt, seed, alpha).
pub struct DirectionView {
    pub generation: u64,
    pub settings: DirectionSettings,
    pub images: HashMap<(usize, usize, usize), RgbImage>,
    pub report: Option<DirectionReport>,
}

/// The Probe tab's OOD state: the reference in use and the last scores.
#[derive(Default)]
pub struct OodView {
    pub generation: u64,
    /// The reference and where it came from (a file, or "fitted on FOLDER").
    pub reference: Option<(String, Arc<OodReference>)>,
    /// Where a fitted reference is written (empty: kept in memory only).
    pub save_to: Option<PathBuf>,
    pub scored: Option<OodScoreReport>,
}

/// How many runs the store keeps; the oldest that is neither shown nor streaming is dropped
/// first (a full-capture SD 1.5 run is ~400 MB).
pub const MAX_RUNS: usize = 8;

pub struct RunStore {
    runs: Vec<StoredRun>,
    next_id: u64,
    /// The run the panels show (A).
    pub current: Option<RunId>,
    /// The run shown beside it (B), if any.
    pub compare: Option<RunId>,
    /// The run the worker is streaming into.
    streaming: Option<RunId>,
    pub activity: Activity,
    pub model: Option<ModelInfo>,
    /// The last error (failed run, failed load, failed file job), shown until the next run starts.
    pub error: Option<String>,
    /// A short status line ("cancelled after 3 of 30 steps", "done in 1.2 s").
    pub status: String,
    /// Full VAE decodes by (run, step).
    decodes: HashMap<(RunId, usize), DecodeState>,
    /// The last shapes-world evaluation's report (and why it stopped early, if it did).
    pub experiment: Option<(ExperimentReport, Option<Stop>)>,
    /// Runs dropped since the app last looked: their view caches are cleared.
    removed: Vec<RunId>,
    /// The sampler comparison shown in the Compare tab.
    pub comparison: Option<Comparison>,
    /// The guidance sweep shown in the Compare tab.
    pub sweep: Option<SweepView>,
    /// The quality metrics last computed in the Compare tab.
    pub quality: Option<QualityView>,
    /// The run the saliency being computed belongs to.
    pub saliency_for: Option<RunId>,
    /// Runs whose saliency maps changed since the app last looked (their map caches go).
    saliency_updated: Vec<RunId>,
    /// The Probe tab's interpolation, direction sweep, OOD scores and health check.
    pub interpolation: Option<InterpView>,
    pub direction: Option<DirectionView>,
    pub ood: OodView,
    pub health: Option<HealthReport>,
}

impl Default for RunStore {
    fn default() -> Self {
        Self {
            runs: Vec::new(),
            next_id: 1,
            current: None,
            compare: None,
            streaming: None,
            activity: Activity::Idle,
            model: None,
            error: None,
            status: String::new(),
            decodes: HashMap::new(),
            experiment: None,
            removed: Vec::new(),
            comparison: None,
            sweep: None,
            quality: None,
            saliency_for: None,
            saliency_updated: Vec::new(),
            interpolation: None,
            direction: None,
            ood: OodView::default(),
            health: None,
        }
    }
}

impl RunStore {
    pub fn apply(&mut self, event: Event) {
        let event = match event {
            Event::Started(meta) => {
                // A new run: it gets an id and becomes the current one.
                let id = self.add(Arc::new(Run::started(*meta)), Origin::Generated);
                self.streaming = Some(id);
                self.activity = Activity::Running;
                self.error = None;
                // The previous run's "done in …" would read as this run's.
                self.status.clear();
                return;
            }
            other => other,
        };
        let end = match &event {
            Event::Finished { total_secs, .. } => Some(format!("done in {total_secs:.2} s")),
            Event::Cancelled { completed, total, .. } => Some(format!("cancelled after {completed} of {total} steps")),
            _ => None,
        };
        let terminal = event.is_terminal();
        let streaming = self.streaming.and_then(|id| self.runs.iter_mut().find(|r| r.id == id));
        let rest = match streaming {
            // Nothing else holds a streaming run (saving waits for the end): no copy.
            Some(r) => event.record_into(Arc::make_mut(&mut r.run)),
            None => Some(event),
        };
        if let Some(status) = end {
            self.status = status;
        }
        match rest {
            Some(Event::LoadingModel { spec }) => {
                self.activity = Activity::LoadingModel(spec);
                self.error = None;
            }
            Some(Event::ModelLoaded(info)) => {
                self.status = format!("loaded {} in {:.2} s", info.spec, info.load_secs);
                self.model = Some(info);
            }
            Some(Event::Decoding) => self.activity = Activity::Decoding,
            Some(Event::Decoded { id, image }) => self.answer_decode(id, Ok(image)),
            Some(Event::DecodeFailed { id, error }) => self.answer_decode(id, Err(error)),
            Some(Event::Failed { error, .. }) => self.error = Some(error),
            Some(Event::Experiment(ev)) => match *ev {
                ExperimentEvent::Progress(p) => self.activity = Activity::Experiment(p),
                ExperimentEvent::CompareCell(c) => {
                    if let Some(cmp) = self.comparison.as_mut() {
                        let c = *c;
                        cmp.rows.push(ComparisonRow {
                            role: c.role,
                            report: c.report,
                            frames: c.frames,
                            run: Arc::new(c.run),
                        });
                        cmp.rows.sort_by_key(|r| match r.role {
                            CellRole::Reference => 0,
                            CellRole::Cell(i) => i + 1,
                        });
                    }
                }
                ExperimentEvent::SweepRun(o) => {
                    if let Some(sw) = self.sweep.as_mut() {
                        let o = *o;
                        let image = o.run.image.clone();
                        if let Some(image) = image {
                            sw.cells.insert(
                                (sw.offset + o.guidance_index, o.seed_index),
                                SweepCell {
                                    image,
                                    run: Arc::new(o.run),
                                    snapshots: o.snapshots,
                                },
                            );
                        }
                    }
                }
                ExperimentEvent::SweepRow(row) => {
                    if let Some(sw) = self.sweep.as_mut() {
                        sw.add_row(*row);
                    }
                }
                ExperimentEvent::SaliencyStep(st) => {
                    if let Some(id) = self.saliency_for {
                        self.merge_saliency_step(id, &st);
                    }
                }
                // Every step came as a SaliencyStep already: keep the settings they were made with.
                ExperimentEvent::SaliencyRun(r) => {
                    if let Some(stored) = self.saliency_for.and_then(|id| self.runs.iter_mut().find(|s| s.id == id)) {
                        Arc::make_mut(&mut stored.run).meta.saliency = r.meta.saliency.clone();
                    }
                }
                ExperimentEvent::InterpFrame(f) => {
                    if let Some(slot) = self.interpolation.as_mut().and_then(|v| v.frames.get_mut(f.index)) {
                        let f = *f;
                        *slot = Some(InterpFrameView {
                            image: f.image,
                            run: f.run.map(Arc::new),
                        });
                    }
                }
                ExperimentEvent::DirectionImage(d) => {
                    if let Some(v) = self.direction.as_mut() {
                        v.images.insert((d.prompt_index, d.seed_index, d.alpha_index), d.image);
                    }
                }
                ExperimentEvent::QualityRow(row) => {
                    if let Some(slot) = self.quality.as_mut().and_then(|q| q.rows.get_mut(row.index)) {
                        *slot = Some(*row);
                    }
                }
                _ => {}
            },
            Some(Event::ExperimentFinished { outcome, total_secs }) => {
                self.status = match &outcome.stopped {
                    None => format!("experiment done in {total_secs:.1} s"),
                    Some(Stop::Cancelled) => "experiment cancelled (the report covers what was done)".into(),
                    Some(Stop::Failed(e)) => {
                        self.error = Some(e.clone());
                        "experiment failed (the report covers what was done)".into()
                    }
                };
                if let (ExperimentReport::Compare(r), Some(cmp)) = (&outcome.report, self.comparison.as_mut()) {
                    cmp.report = Some((**r).clone());
                }
                if let (ExperimentReport::Sweep(r), Some(sw)) = (&outcome.report, self.sweep.as_mut()) {
                    // Normally streamed row by row already; the report is the record.
                    for row in &r.rows {
                        sw.add_row(row.clone());
                    }
                }
                if let (ExperimentReport::Quality(r), Some(q)) = (&outcome.report, self.quality.as_mut()) {
                    for row in &r.rows {
                        if let Some(slot) = q.rows.get_mut(row.index) {
                            *slot = Some(row.clone());
                        }
                    }
                    q.stopped = outcome.stopped.clone();
                }
                if matches!(outcome.report, ExperimentReport::Saliency(_)) {
                    self.saliency_for = None;
                }
                match &outcome.report {
                    ExperimentReport::Interpolate(r) => {
                        if let Some(v) = self.interpolation.as_mut() {
                            v.report = Some((**r).clone());
                        }
                    }
                    ExperimentReport::Direction(r) => {
                        if let Some(v) = self.direction.as_mut() {
                            v.report = Some((**r).clone());
                        }
                    }
                    ExperimentReport::OodFit(r) => {
                        if let Some(reference) = &r.reference {
                            let origin = match &self.ood.save_to {
                                Some(p) => match reference.write(p) {
                                    Ok(()) => p.display().to_string(),
                                    Err(e) => {
                                        self.error = Some(e);
                                        "fitted (not saved)".into()
                                    }
                                },
                                None => "fitted (not saved)".into(),
                            };
                            self.ood.reference = Some((origin, Arc::new(reference.clone())));
                            self.ood.scored = None;
                        }
                    }
                    ExperimentReport::OodScore(r) => self.ood.scored = Some((**r).clone()),
                    ExperimentReport::Health(r) => self.health = Some((**r).clone()),
                    _ => {}
                }
                // The Evaluate tab shows the last evaluation; comparisons and sweeps keep
                // theirs in `comparison` / `sweep`.
                if matches!(outcome.report, ExperimentReport::ShapesEval(_)) {
                    self.experiment = Some((outcome.report, outcome.stopped));
                }
            }
            _ => {}
        }
        if terminal {
            // Every worker reply ends the activity it answers.
            self.activity = Activity::Idle;
            self.streaming = None;
        }
    }

    /// Starts showing a new interpolation.
    pub fn begin_interpolation(&mut self, settings: InterpolateSettings) {
        let generation = self.interpolation.as_ref().map_or(1, |v| v.generation + 1);
        self.interpolation = Some(InterpView {
            generation,
            frames: (0..settings.frames).map(|_| None).collect(),
            settings,
            report: None,
        });
    }

    /// Starts showing a new direction sweep.
    pub fn begin_direction(&mut self, settings: DirectionSettings) {
        let generation = self.direction.as_ref().map_or(1, |v| v.generation + 1);
        self.direction = Some(DirectionView {
            generation,
            settings,
            images: HashMap::new(),
            report: None,
        });
    }

    /// An OOD fit or scoring started: the last scores go.
    pub fn begin_ood(&mut self) {
        self.ood.generation += 1;
        self.ood.scored = None;
    }

    /// Starts showing a new comparison (its rows arrive as the worker finishes cells).
    pub fn begin_comparison(&mut self, settings: CompareSettings) {
        let generation = self.comparison.as_ref().map_or(1, |c| c.generation + 1);
        self.comparison = Some(Comparison {
            generation,
            settings,
            rows: Vec::new(),
            report: None,
        });
    }

    /// Starts showing the quality rows of `of` (labelled, scored as they arrive).
    pub fn begin_quality(&mut self, of: QualityOf, labels: Vec<String>) {
        let xs = match of {
            QualityOf::Sweep(_) => self
                .sweep
                .as_ref()
                .map(|s| s.settings.guidances.iter().map(|&w| w as f64).collect()),
            QualityOf::Comparison(_) => self
                .comparison
                .as_ref()
                .map(|c| c.rows.iter().map(|r| r.report.nfe as f64).collect()),
        }
        .unwrap_or_default();
        self.quality = Some(QualityView {
            of,
            xs,
            rows: vec![None; labels.len()],
            labels,
            stopped: None,
        });
    }

    /// Starts showing a new guidance sweep.
    pub fn begin_sweep(&mut self, settings: SweepSettings) {
        let generation = self.sweep.as_ref().map_or(1, |s| s.generation + 1);
        self.sweep = Some(SweepView {
            generation,
            settings,
            cells: BTreeMap::new(),
            rows: Vec::new(),
            offset: 0,
        });
    }

    /// The sweep to run for one more guidance row with the shown sweep's seeds and settings
    /// (None when no sweep is shown or `w` is already a row); the shown sweep expects it.
    pub fn extend_sweep(&mut self, w: f32) -> Option<SweepSettings> {
        let sw = self.sweep.as_mut()?;
        if sw.settings.guidances.contains(&w) {
            return None;
        }
        sw.offset = sw.settings.guidances.len();
        sw.settings.guidances.push(w);
        Some(SweepSettings {
            guidances: vec![w],
            ..sw.settings.clone()
        })
    }

    /// Adds the sweep's run at (row, column) to the runs and makes it the current one.
    pub fn open_sweep_cell(&mut self, row: usize, col: usize) -> Option<RunId> {
        let run = self.sweep.as_ref()?.cells.get(&(row, col))?.run.clone();
        let id = self.add(run, Origin::Generated);
        self.select(id);
        self.status = "opened from the sweep".into();
        Some(id)
    }

    /// Adds row `row` of the comparison as a run and makes it the current one.
    pub fn open_comparison_row(&mut self, row: usize) -> Option<RunId> {
        let run = self.comparison.as_ref()?.rows.get(row)?.run.clone();
        let id = self.add(run, Origin::Generated);
        self.select(id);
        self.status = "opened from the comparison".into();
        Some(id)
    }

    /// Adds a run opened from disk and makes it the current one.
    pub fn open(&mut self, run: Run, path: Option<PathBuf>) -> RunId {
        let id = self.add(Arc::new(run), path.map_or(Origin::Generated, Origin::Opened));
        self.error = None;
        self.status = "opened from disk".into();
        id
    }

    fn add(&mut self, run: Arc<Run>, origin: Origin) -> RunId {
        let id = RunId(self.next_id);
        self.next_id += 1;
        self.runs.push(StoredRun { id, run, origin });
        self.current = Some(id);
        while self.runs.len() > MAX_RUNS {
            let keep = [self.current, self.compare, self.streaming];
            let Some(pos) = self.runs.iter().position(|r| !keep.contains(&Some(r.id))) else {
                break;
            };
            let gone = self.runs.remove(pos).id;
            self.forget(gone);
        }
        id
    }

    /// Drops a run and everything cached for it.
    pub fn close(&mut self, id: RunId) {
        if self.streaming == Some(id) {
            return;
        }
        if let Some(pos) = self.runs.iter().position(|r| r.id == id) {
            self.runs.remove(pos);
            self.forget(id);
        }
        if self.current == Some(id) {
            self.current = self.runs.last().map(|r| r.id);
        }
    }

    fn forget(&mut self, id: RunId) {
        self.decodes.retain(|(run, _), _| *run != id);
        if self.compare == Some(id) {
            self.compare = None;
        }
        self.removed.push(id);
    }

    /// Puts one step's saliency maps (from a rerun of run `id`) on that step of the stored run;
    /// maps of the same key are replaced. A step that does not match the run's (another
    /// timestep: another schedule) is reported and ignored.
    pub fn merge_saliency_step(&mut self, id: RunId, computed: &SaliencyStep) {
        let Some(stored) = self.runs.iter_mut().find(|r| r.id == id) else {
            return;
        };
        if stored.run.steps.get(computed.index).is_none_or(|s| s.timestep != computed.timestep) {
            self.error = Some(format!(
                "the saliency rerun's step {} does not match the run (another schedule); its maps were not added",
                computed.index + 1
            ));
            return;
        }
        let run = Arc::make_mut(&mut stored.run);
        let step = &mut run.steps[computed.index];
        for m in &computed.maps {
            step.saliency.retain(|old| old.key != m.key);
            step.saliency.push(m.clone());
        }
        self.saliency_updated.push(id);
    }

    /// Runs whose saliency maps changed since the last call.
    pub fn take_saliency_updated(&mut self) -> Vec<RunId> {
        std::mem::take(&mut self.saliency_updated)
    }

    /// Runs dropped since the last call (the view clears their caches).
    pub fn take_removed(&mut self) -> Vec<RunId> {
        std::mem::take(&mut self.removed)
    }

    pub fn select(&mut self, id: RunId) {
        if self.get(id).is_some() {
            self.current = Some(id);
            if self.compare == Some(id) {
                self.compare = None;
            }
        }
    }

    pub fn set_compare(&mut self, id: Option<RunId>) {
        self.compare = id.filter(|id| self.get(*id).is_some() && Some(*id) != self.current);
    }

    pub fn runs(&self) -> &[StoredRun] {
        &self.runs
    }

    pub fn get(&self, id: RunId) -> Option<&StoredRun> {
        self.runs.iter().find(|r| r.id == id)
    }

    /// The run the panels show.
    pub fn current(&self) -> Option<&Run> {
        self.current.and_then(|id| self.get(id)).map(|r| r.run.as_ref())
    }

    /// The run shown beside the current one.
    pub fn compared(&self) -> Option<&StoredRun> {
        self.compare.and_then(|id| self.get(id))
    }

    /// Whether `id` is the run the worker is streaming into.
    pub fn is_streaming(&self, id: RunId) -> bool {
        self.streaming == Some(id)
    }

    pub fn busy(&self) -> bool {
        self.activity != Activity::Idle
    }

    pub fn decode(&self, run: RunId, step: usize) -> Option<&DecodeState> {
        self.decodes.get(&(run, step))
    }

    /// Records that a decode of (run, step) was asked with request `id`.
    pub fn decode_requested(&mut self, run: RunId, step: usize, id: u64) {
        self.decodes.insert((run, step), DecodeState::Pending(id));
    }

    /// A request the worker replaced with a newer one (latest wins): it may be asked again.
    pub fn decode_superseded(&mut self, id: u64) {
        self.decodes.retain(|_, s| *s != DecodeState::Pending(id));
    }

    fn answer_decode(&mut self, id: u64, result: Result<RgbImage, String>) {
        if let Some(s) = self.decodes.values_mut().find(|s| **s == DecodeState::Pending(id)) {
            *s = DecodeState::Done(result);
        }
    }

    /// Records a failure the user should see (a file job, a worker that could not be reached).
    pub fn report_error(&mut self, error: String) {
        self.error = Some(error);
    }

    /// Clears the error line (a new run or experiment was asked for).
    pub fn clear_error(&mut self) {
        self.error = None;
    }
}
