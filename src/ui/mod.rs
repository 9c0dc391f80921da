//! The interactive app (eframe/egui, wgpu). One [`App`] owns the worker handle, the
//! [`store::RunStore`], the view state and the background file jobs; `App::logic` drains worker
//! events and file results into the store with a small time budget, `App::ui` draws the panels
//! (`panels/`, one file a panel), which read the store and send [`Action`]s; the actions are
//! carried out after the panels have drawn.

pub mod export;
pub mod files;
pub mod heatmap;
pub mod panels;
pub mod store;
pub mod theme;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use serde::{Deserialize, Serialize};

use crate::analysis::colormap::Colormap;
use crate::analysis::schedules::ScheduleCurves;
use crate::analysis::{self, MapSource};
use crate::engine::{DecodeRequest, ModelRequest, Worker};
use crate::experiments::ExperimentSettings;
use crate::pipeline::{InitLatents, RunConfig};
use crate::sampling::SamplerKind;
use crate::trace::{RgbImage, Run};
use crate::types::CaptureMode;
use files::{FileJob, FileResult, Files, PathPurpose};
use heatmap::MapData;
use store::{DecodeState, QualityOf, RunId, RunStore};

/// Which picture of a step the image panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageView {
    /// x_t, x0 and eps side by side.
    All,
    Latent,
    X0,
    Eps,
    /// The VAE-decoded final image.
    Final,
}

/// How heatmap colours are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalize {
    /// 0 .. the map's own maximum.
    PerMap,
    /// 0 .. the token's maximum over all steps (fading attention stays visible as fading).
    AcrossSteps,
}

/// Settings that survive restarts (eframe storage).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: String,
    pub recent_models: Vec<String>,
    pub prompt: String,
    pub negative_prompt: String,
    /// SDXL's second prompts ("": the first ones) and clip skip.
    pub prompt_2: String,
    pub negative_prompt_2: String,
    pub clip_skip: Option<usize>,
    pub seed: u64,
    pub steps: usize,
    pub sampler: Option<SamplerKind>,
    pub karras: bool,
    pub guidance: f32,
    pub size: Option<(usize, usize)>,
    pub auto_rerun: bool,
    /// With `auto_rerun`: a released slider adds its w as a row of the shown guidance sweep.
    pub rerun_adds_sweep_row: bool,
    pub attention: CaptureMode,
    pub view: ImageView,
    pub colormap: Colormap,
    pub opacity: f32,
    pub normalize: Normalize,
    pub source: MapSource,
    pub show_special_tokens: bool,
    pub aggregate_steps: bool,
    /// Frames in an exported trajectory strip.
    pub strip_frames: usize,
    /// The folder file prompts start in.
    pub last_dir: String,
    /// The shapes-world evaluation's settings (Evaluate tab).
    pub eval: crate::experiments::shapes_eval::EvalSettings,
    /// The Compare tab's settings (prompt, seed, guidance and size come from the run controls).
    pub compare: CompareUi,
    /// DF-RISE / DF-CAM as the Run tab's saliency row computes them.
    pub saliency: SaliencyUi,
    /// The Probe tab's fields.
    pub probe: ProbeUi,
}

/// The Probe tab's views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ProbeMode {
    #[default]
    Interpolate,
    Direction,
    Ood,
    Health,
}

/// What the Probe tab asks for, as typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeUi {
    pub mode: ProbeMode,
    /// Interpolation ends (a seed, a prompt, image:PATH, latents:PATH).
    pub from: String,
    pub to: String,
    pub frames: usize,
    pub lerp: bool,
    /// A direction's source and target prompts, or a pairs file.
    pub dir_from: String,
    pub dir_to: String,
    pub pairs_file: String,
    pub alphas: String,
    pub seeds: String,
    /// Which OOD score decides.
    pub score: crate::experiments::ood::ScoreKind,
    pub health_points: usize,
    pub health_control: bool,
}

impl Default for ProbeUi {
    fn default() -> Self {
        Self {
            mode: ProbeMode::Interpolate,
            from: "0".into(),
            to: "1".into(),
            frames: 8,
            lerp: false,
            dir_from: "a red circle".into(),
            dir_to: "a blue circle".into(),
            pairs_file: String::new(),
            alphas: "-1..2:7".into(),
            seeds: "0..2".into(),
            score: crate::experiments::ood::ScoreKind::Diag,
            health_points: 41,
            health_control: true,
        }
    }
}

/// The saliency row's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SaliencyUi {
    /// DF-RISE masks per step.
    pub masks: usize,
    /// The DF-CAM block (a diffusers path) or `all`.
    pub block: String,
}

impl Default for SaliencyUi {
    fn default() -> Self {
        Self {
            masks: 500,
            block: crate::experiments::saliency::DEFAULT_CAM_BLOCK.into(),
        }
    }
}

/// What the Compare tab asks for, as typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompareUi {
    /// Samplers (rows = cells) or guidance values (rows = w).
    pub mode: CompareMode,
    /// Cells, `SAMPLER:STEPS,...`.
    pub samplers: String,
    pub reference: String,
    pub fractions: usize,
    /// Held-out captions per cell or per guidance value (0: none).
    pub captions: usize,
    /// The sweep's guidance values, `1,3,5`.
    pub guidances: String,
    /// The sweep's seeds, `0..3` or `0,4,9`.
    pub seeds: String,
    /// The sweep decodes x0 and x_t at 0, 1/4, 1/2, 3/4 and 1 of every run.
    pub snapshots: bool,
    /// Quality metrics: the CLIP model of the CLIP score (empty: none).
    pub clip_model: String,
    /// Quality metrics: the real set's feature file for FID (empty: none).
    pub real_features: String,
    /// Quality metrics: the Inception weights when the real features are Inception's (empty:
    /// the torch hub cache).
    pub inception_weights: String,
}

/// What the Compare tab compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareMode {
    Samplers,
    Guidance,
}

impl Default for CompareUi {
    fn default() -> Self {
        Self {
            samplers: "ddim:10,ddim:30,dpm++2m:10,dpm++2m:20,euler:20,heun:10".into(),
            reference: "dpm++2m:200".into(),
            fractions: 10,
            captions: 0,
            mode: CompareMode::Samplers,
            guidances: "1,3,5,7.5,10,15".into(),
            seeds: "0..3".into(),
            snapshots: false,
            // The bundled model's own evaluation networks; SD users pick theirs.
            clip_model: crate::metrics::clip::SHAPES.into(),
            real_features: "shapes".into(),
            inception_weights: String::new(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            recent_models: Vec::new(),
            prompt: "a red circle left of a blue square".into(),
            negative_prompt: String::new(),
            prompt_2: String::new(),
            negative_prompt_2: String::new(),
            clip_skip: None,
            seed: 0,
            steps: 30,
            sampler: None,
            karras: false,
            guidance: 5.0,
            size: None,
            auto_rerun: false,
            rerun_adds_sweep_row: false,
            attention: CaptureMode::Aggregate,
            view: ImageView::All,
            colormap: Colormap::Viridis,
            opacity: 0.6,
            normalize: Normalize::PerMap,
            source: MapSource::All,
            show_special_tokens: false,
            aggregate_steps: false,
            strip_frames: 6,
            last_dir: String::new(),
            eval: crate::experiments::shapes_eval::EvalSettings {
                count: 20,
                ..Default::default()
            },
            compare: CompareUi::default(),
            saliency: SaliencyUi::default(),
            probe: ProbeUi::default(),
        }
    }
}

/// What the timeline and the across-steps scaling need of a word's map at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WordStepStats {
    pub max: f32,
    pub entropy: f32,
}

/// Top-level tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Run,
    Schedules,
    Compare,
    Evaluate,
    Probe,
}

/// A picture of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pic {
    Latent,
    X0,
    /// The full VAE decode of the step's x0.
    X0Decoded,
    Eps,
    Final,
}

/// Key of a step picture's egui texture.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TexKey {
    pub run: RunId,
    pub step: usize,
    pub pic: Pic,
}

/// Key of a word's attention map (CPU copy and GPU texture): run, inclusive step range, layers,
/// the word's token positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapKey {
    pub run: RunId,
    pub steps: (usize, usize),
    pub source: MapSource,
    pub tokens: Vec<usize>,
    /// Bumped when the run's saliency maps are recomputed, so the GPU texture cache (keyed by
    /// this) never shows a replaced map; 0 for attention, which never changes.
    pub revision: u64,
}

/// Key of a word's per-step statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatsKey {
    pub run: RunId,
    pub source: MapSource,
    pub tokens: Vec<usize>,
}

/// The Schedules tab's controls and its curves, rebuilt only when the shown run changes.
pub struct ScheduleView {
    /// 0 alpha_bar, 1 log-SNR, 2 beta.
    pub curve: usize,
    pub gamma: f64,
    pub steps: usize,
    pub latter: bool,
    pub curves: Option<(Option<RunId>, Arc<Vec<ScheduleCurves>>)>,
}

impl Default for ScheduleView {
    fn default() -> Self {
        Self {
            curve: 0,
            gamma: 60.0,
            steps: 10,
            latter: false,
            curves: None,
        }
    }
}

/// The in-app path prompt (every file action takes a typed path; Browse… opens the native
/// dialog where there is one).
pub struct PathPrompt {
    pub purpose: PathPurpose,
    pub text: String,
    /// The path field has had its first focus (it gets it when the prompt opens).
    pub focused: bool,
}

/// Transient view state (not persisted). Panels change it directly: it is theirs.
pub struct ViewState {
    pub tab: Tab,
    /// The selected step of the current run.
    pub step: usize,
    /// Inclusive step range for aggregation.
    pub range: (usize, usize),
    pub playing: bool,
    pub last_advance: Instant,
    /// Follow the newest step while a run streams.
    pub follow: bool,
    /// Selected token positions, one entry per selected word (its sub-token positions).
    pub tokens: Vec<Vec<usize>>,
    /// CPU copies of maps shown.
    pub maps: HashMap<MapKey, Arc<MapData>>,
    pub textures: HashMap<TexKey, egui::TextureHandle>,
    pub message: Option<String>,
    /// Screen rects of the heatmaps drawn last frame (for tests and hover logic).
    pub heatmap_rects: Vec<egui::Rect>,
    /// Per-step statistics of selected words' maps (max, entropy), filled in as steps arrive.
    pub word_stats: HashMap<StatsKey, Vec<Option<WordStepStats>>>,
    /// Screen rects of the exportable plot panels drawn last frame ("plots", "schedules").
    pub panel_rects: HashMap<&'static str, egui::Rect>,
    /// A panel export waiting for the window screenshot: (panel, file name).
    pub pending_capture: Option<(&'static str, String)>,
    /// Where the screenshot callback (run by the integration) leaves the window image.
    pub capture_slot: Arc<std::sync::Mutex<Option<Arc<egui::ColorImage>>>>,
    pub schedule: ScheduleView,
    pub path_prompt: Option<PathPrompt>,
    /// The Compare tab's scrubber: the trajectory column every row shows.
    pub compare_fraction: usize,
    /// The comparison's large frames drawn last frame: (row, column shown, screen rect) (for
    /// tests).
    pub compare_rects: Vec<(usize, usize, egui::Rect)>,
    /// Textures of the Compare tab's frames by (0 comparison / 1 sweep, generation, row,
    /// column).
    pub compare_textures: HashMap<(u8, u64, usize, usize), egui::TextureHandle>,
    /// The sweep grid's columns: None the seeds, Some(i) the timestep snapshots of seed i.
    pub sweep_snapshots_of: Option<usize>,
    /// The saliency overlay shown over x0 (`rise`, `cam.<block>`, `cam.all`); None: none.
    pub overlay: Option<String>,
    /// Counts saliency updates (part of the saliency maps' cache keys).
    pub saliency_revision: u64,
    /// The Probe tab's textures by (view, generation, index, variant).
    pub probe_textures: HashMap<(u8, u64, usize, u64), egui::TextureHandle>,
    /// The interpolation frame shown, and the word whose attention follows the frames.
    pub probe_frame: usize,
    pub probe_word: Option<Vec<usize>>,
    /// The direction sweep's alpha shown (an index).
    pub probe_alpha: usize,
    /// The current run last frame (a switch resets the step and the selected words).
    seen_current: Option<RunId>,
}

impl Default for ViewState {
    fn default() -> Self {
        Self {
            tab: Tab::Run,
            step: 0,
            range: (0, 0),
            playing: false,
            last_advance: Instant::now(),
            follow: true,
            tokens: Vec::new(),
            maps: HashMap::new(),
            textures: HashMap::new(),
            message: None,
            heatmap_rects: Vec::new(),
            word_stats: HashMap::new(),
            panel_rects: HashMap::new(),
            pending_capture: None,
            capture_slot: Arc::default(),
            schedule: ScheduleView::default(),
            path_prompt: None,
            compare_fraction: 0,
            compare_rects: Vec::new(),
            compare_textures: HashMap::new(),
            sweep_snapshots_of: None,
            overlay: None,
            saliency_revision: 0,
            probe_textures: HashMap::new(),
            probe_frame: 0,
            probe_word: None,
            probe_alpha: 0,
            seen_current: None,
        }
    }
}

impl ViewState {
    /// Drops everything cached for a run that left the store.
    fn forget_run(&mut self, id: RunId) {
        self.maps.retain(|k, _| k.run != id);
        self.textures.retain(|k, _| k.run != id);
        self.word_stats.retain(|k, _| k.run != id);
    }
}

/// What panels ask of the app. Carried out after the panels have drawn
/// ([`App::apply_actions`]); the only way panels change the store or start work.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Generate,
    Cancel,
    /// Shows the path prompt for `purpose`, starting at `default`.
    AskPath(PathPurpose, String),
    /// Opens the native dialog for the prompt on screen.
    Browse,
    /// Opens the native dialog for a model folder.
    BrowseModel,
    /// The prompt's OK: carries out its purpose with the typed path.
    ConfirmPath,
    OpenRun(PathBuf),
    SelectRun(RunId),
    Compare(Option<RunId>),
    CloseRun(RunId),
    RunExperiment(ExperimentSettings),
    /// Adds row N of the comparison to the runs and shows it in the run view.
    OpenComparisonRow(usize),
    /// Runs the shown guidance sweep at one more w (its seeds and settings).
    AddSweepRow(f32),
    /// Adds the sweep's run at (row, column) to the runs and shows it in the run view.
    OpenSweepCell(usize, usize),
    /// Computes the shown saliency overlay for the current run at these steps (None: all), by
    /// rerunning it with the maps computed inside the loop.
    ComputeSaliency(Option<Vec<usize>>),
}

pub struct App {
    pub settings: Settings,
    pub store: RunStore,
    pub view: ViewState,
    worker: Worker,
    files: Files,
    actions: Vec<Action>,
    ctx: egui::Context,
    next_decode_id: u64,
    /// Whether a wgpu render state exists (heatmaps need it).
    pub gpu: bool,
}

const STORAGE_KEY: &str = "diffusion-scope-settings";
/// Time budget per frame for draining worker events.
const DRAIN_BUDGET: Duration = Duration::from_millis(4);

fn spawn_worker(ctx: &egui::Context) -> std::io::Result<Worker> {
    let wake_ctx = ctx.clone();
    Worker::spawn(Box::new(move || wake_ctx.request_repaint()))
}

impl App {
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let settings: Settings = cc.storage.and_then(|s| eframe::get_value(s, STORAGE_KEY)).unwrap_or_default();
        Self::with_settings_cc(cc, settings)
    }

    /// The app with explicit settings (tests, or a fresh start).
    pub fn with_settings_cc(cc: &eframe::CreationContext<'_>, settings: Settings) -> Self {
        let gpu = if let Some(rs) = cc.wgpu_render_state.as_ref() {
            heatmap::HeatmapResources::install(rs);
            true
        } else {
            false
        };
        theme::apply(&cc.egui_ctx);
        Self::with_settings(cc.egui_ctx.clone(), settings, gpu)
    }

    /// An app without eframe's creation context (tests); `ctx` gets the repaint requests.
    pub fn with_settings(ctx: egui::Context, mut settings: Settings, gpu: bool) -> Self {
        if settings.model.is_empty() {
            let bundled = crate::bundled_model_path();
            settings.model = if bundled.join("model_index.json").is_file() {
                bundled.display().to_string()
            } else {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/tiny-sd1")
                    .display()
                    .to_string()
            };
        }
        let worker = spawn_worker(&ctx).expect("spawning the worker thread");
        Self {
            settings,
            store: RunStore::default(),
            view: ViewState::default(),
            worker,
            files: Files::default(),
            actions: Vec::new(),
            ctx,
            next_decode_id: 1,
            gpu,
        }
    }

    /// Queues an action (panels call this).
    pub fn send(&mut self, action: Action) {
        self.actions.push(action);
    }

    /// The background file jobs in flight (for the progress display).
    pub fn file_jobs(&self) -> &[(u64, files::JobInfo)] {
        &self.files.jobs
    }

    fn model_request(spec: &str) -> ModelRequest {
        ModelRequest {
            spec: spec.to_owned(),
            device: Default::default(),
            dtype: Default::default(),
        }
    }

    /// Carries out the queued actions.
    pub fn apply_actions(&mut self) {
        for action in std::mem::take(&mut self.actions) {
            self.apply(action);
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Generate => self.generate(),
            Action::Cancel => self.worker.cancel(),
            Action::AskPath(purpose, text) => {
                self.view.path_prompt = Some(PathPrompt {
                    purpose,
                    text,
                    focused: false,
                })
            }
            Action::Browse => {
                if let Some(p) = &self.view.path_prompt {
                    let job = FileJob::Pick {
                        purpose: p.purpose.clone(),
                        start: PathBuf::from(&p.text),
                    };
                    self.start_job(job);
                }
            }
            Action::BrowseModel => self.start_job(FileJob::Pick {
                purpose: PathPurpose::Model,
                start: PathBuf::from(&self.settings.model),
            }),
            Action::ConfirmPath => {
                let Some(p) = self.view.path_prompt.take() else { return };
                let path = PathBuf::from(p.text.trim());
                if path.as_os_str().is_empty() {
                    self.view.message = Some("type a path first".into());
                    self.view.path_prompt = Some(p);
                    return;
                }
                // The next prompt starts beside this one (never inside a run folder just written).
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    self.settings.last_dir = dir.display().to_string();
                }
                match p.purpose {
                    PathPurpose::Model => self.settings.model = path.display().to_string(),
                    PathPurpose::OpenRun => self.open_path(path),
                    PathPurpose::SaveRun(id) => match self.store.get(id) {
                        Some(r) if !self.store.is_streaming(id) => {
                            let run = r.run.clone();
                            self.start_job(FileJob::SaveRun { run, dir: path });
                        }
                        _ => self.store.report_error("that run is gone or still streaming; nothing saved".into()),
                    },
                    PathPurpose::ExportPng(image) => self.start_job(FileJob::SavePng { image, path }),
                    PathPurpose::OodReference => match crate::experiments::ood::OodReference::read(&path) {
                        Ok(r) => {
                            self.store.ood.reference = Some((path.display().to_string(), Arc::new(r)));
                            self.store.ood.scored = None;
                            self.view.probe_textures.clear();
                        }
                        Err(e) => self.store.report_error(e),
                    },
                    PathPurpose::OodFit => self.ood_fit(path),
                    PathPurpose::OodScore => self.ood_score(vec![path]),
                }
            }
            Action::OpenRun(path) => self.open_path(path),
            Action::SelectRun(id) => self.store.select(id),
            Action::Compare(id) => self.store.set_compare(id),
            Action::CloseRun(id) => self.store.close(id),
            Action::OpenComparisonRow(row) => {
                if self.store.open_comparison_row(row).is_some() {
                    self.view.tab = Tab::Run;
                }
            }
            Action::OpenSweepCell(row, col) => {
                if self.store.open_sweep_cell(row, col).is_some() {
                    self.view.tab = Tab::Run;
                }
            }
            Action::AddSweepRow(w) => match self.store.extend_sweep(w) {
                Some(settings) => {
                    self.store.clear_error();
                    let model = Self::model_request(&self.settings.model);
                    if let Err(e) = self.worker.experiment(model, ExperimentSettings::Sweep(settings)) {
                        self.store.report_error(e.to_string());
                    }
                }
                None => self.store.report_error(format!(
                    "no guidance sweep to add w = {w} to (run one in the Compare tab), or it already has that row"
                )),
            },
            Action::ComputeSaliency(steps) => match self.saliency_settings(steps) {
                Ok((model, settings)) => {
                    self.store.clear_error();
                    self.store.saliency_for = self.store.current;
                    if let Err(e) = self
                        .worker
                        .experiment(Self::model_request(&model), ExperimentSettings::Saliency(settings))
                    {
                        self.store.report_error(e.to_string());
                    }
                }
                Err(e) => self.store.report_error(e),
            },
            Action::RunExperiment(settings) => {
                self.store.clear_error();
                match &settings {
                    ExperimentSettings::Compare(s) => {
                        self.store.begin_comparison(s.clone());
                        self.view.compare_textures.clear();
                    }
                    ExperimentSettings::Sweep(s) => {
                        self.store.begin_sweep(s.clone());
                        self.view.compare_textures.clear();
                    }
                    ExperimentSettings::Quality(s) => {
                        let of = match self.settings.compare.mode {
                            CompareMode::Samplers => self.store.comparison.as_ref().map(|c| QualityOf::Comparison(c.generation)),
                            CompareMode::Guidance => self.store.sweep.as_ref().map(|c| QualityOf::Sweep(c.generation)),
                        };
                        match of {
                            Some(of) => self.store.begin_quality(of, s.sets.iter().map(|s| s.label.clone()).collect()),
                            None => return,
                        }
                    }
                    ExperimentSettings::ShapesEval(_)
                    | ExperimentSettings::GenerateSet(_)
                    | ExperimentSettings::Saliency(_)
                    | ExperimentSettings::SaliencyEval(_)
                    | ExperimentSettings::OodEval(_) => {}
                    ExperimentSettings::Interpolate(s) => self.store.begin_interpolation(s.clone()),
                    ExperimentSettings::Direction(s) => self.store.begin_direction(s.clone()),
                    ExperimentSettings::OodFit(_) | ExperimentSettings::OodScore(_) => self.store.begin_ood(),
                    ExperimentSettings::Health(_) => self.store.health = None,
                }
                let model = Self::model_request(&self.settings.model);
                if let Err(e) = self.worker.experiment(model, settings) {
                    self.store.report_error(e.to_string());
                }
            }
        }
    }

    /// Fits an OOD reference on the images of `folder`; it is written beside the folder as
    /// `<folder>-ood-reference.json`.
    fn ood_fit(&mut self, folder: PathBuf) {
        use crate::experiments::ood::{FitOptions, OodFitSettings, image_files};
        match image_files(std::slice::from_ref(&folder)) {
            Ok(images) => {
                let name = folder.file_name().map_or("images".into(), |n| n.to_string_lossy().into_owned());
                self.store.ood.save_to = Some(folder.with_file_name(format!("{name}-ood-reference.json")));
                self.apply(Action::RunExperiment(ExperimentSettings::OodFit(OodFitSettings {
                    images,
                    options: FitOptions::default(),
                })));
            }
            Err(e) => self.store.report_error(e),
        }
    }

    /// Scores image files (or the images of folders) against the loaded OOD reference.
    pub fn ood_score(&mut self, paths: Vec<PathBuf>) {
        use crate::experiments::ood::{OodScoreSettings, image_files};
        let Some((_, reference)) = self.store.ood.reference.clone() else {
            self.store
                .report_error("load or fit an OOD reference first (Probe tab, Out of distribution)".into());
            return;
        };
        match image_files(&paths) {
            Ok(images) => self.apply(Action::RunExperiment(ExperimentSettings::OodScore(OodScoreSettings {
                reference: Box::new((*reference).clone()),
                images,
            }))),
            Err(e) => self.store.report_error(e),
        }
    }

    /// Opens a run folder in the background (the Open prompt, `diffusion-scope open DIR`, a
    /// folder dropped on the window).
    pub fn open_path(&mut self, path: PathBuf) {
        self.start_job(FileJob::OpenRun(path));
    }

    fn start_job(&mut self, job: FileJob) {
        let ctx = self.ctx.clone();
        self.files.start(job, move || ctx.request_repaint());
    }

    pub fn generate(&mut self) {
        let s = &self.settings;
        let cfg = RunConfig {
            prompt: s.prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            text_options: crate::types::TextOptions::new(&s.prompt_2, &s.negative_prompt_2, s.clip_skip),
            steps: s.steps.max(1),
            guidance: s.guidance,
            sampler: s.sampler,
            karras: s.karras,
            spacing: None,
            eta: 0.0,
            seed: s.seed,
            height: s.size.map(|(_, h)| h),
            width: s.size.map(|(w, _)| w),
            init_latents: InitLatents::Seed,
            embeddings: None,
            attention: s.attention,
        };
        let model = Self::model_request(&s.model);
        if !self.settings.recent_models.contains(&self.settings.model) {
            self.settings.recent_models.insert(0, self.settings.model.clone());
            self.settings.recent_models.truncate(8);
        }
        self.view.follow = true;
        self.view.playing = false;
        self.view.message = None;
        self.store.clear_error();
        if let Err(e) = self.worker.generate(model, cfg) {
            self.store.report_error(e.to_string());
        }
    }

    /// Makes the worker panic (tests of the panic boundary).
    #[doc(hidden)]
    pub fn inject_worker_panic(&self) {
        let _ = self.worker.inject_panic();
    }

    /// The full VAE decode of step `step` of run `id`: the image when the worker has answered;
    /// asks for it (when idle) otherwise. `Err` carries a failed decode's message.
    pub fn decoded_x0(&mut self, id: RunId, step: usize) -> Option<Result<RgbImage, String>> {
        match self.store.decode(id, step) {
            Some(DecodeState::Done(r)) => return Some(r.clone()),
            Some(DecodeState::Pending(_)) => return None,
            None => {}
        }
        let stored = self.store.get(id)?;
        let run = &stored.run;
        if self.store.busy() || run.meta.model_path == "synthetic" || self.store.is_streaming(id) {
            return None;
        }
        let rec = run.steps.get(step)?;
        let request = DecodeRequest {
            model: Self::model_request(&run.meta.model),
            id: self.next_decode_id,
            latents: rec.x0.clone(),
            shape: run.meta.latent_shape,
        };
        self.next_decode_id += 1;
        let request_id = request.id;
        match self.worker.decode(request) {
            Ok(replaced) => {
                if let Some(old) = replaced {
                    self.store.decode_superseded(old);
                }
                self.store.decode_requested(id, step, request_id);
            }
            Err(e) => self.store.report_error(e.to_string()),
        }
        None
    }

    /// Drains worker events and file results into the store (bounded time), then keeps view
    /// state consistent. A worker whose channel closed is reported and started again.
    pub fn pump(&mut self) {
        let start = Instant::now();
        while start.elapsed() < DRAIN_BUDGET {
            match self.worker.events().try_recv() {
                Ok(ev) => self.store.apply(ev),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.restart_worker();
                    break;
                }
            }
        }
        for result in self.files.poll() {
            self.file_result(result);
        }
        for id in self.store.take_removed() {
            self.view.forget_run(id);
        }
        for id in self.store.take_saliency_updated() {
            self.view.saliency_revision += 1;
            self.view
                .maps
                .retain(|k, _| !(k.run == id && matches!(&k.source, MapSource::Key(s) if crate::trace::SaliencyMap::is_key(s))));
        }
        if self.store.current != self.view.seen_current {
            // Another run is shown: keep the step fraction, drop the selected words.
            let old_n = self
                .view
                .seen_current
                .and_then(|id| self.store.get(id))
                .map_or(0, |r| r.run.steps.len());
            let new_n = self.store.current().map_or(0, |r| r.steps.len());
            self.view.step = scale_step(self.view.step, old_n, new_n);
            self.view.range = (0, new_n.saturating_sub(1));
            self.view.tokens.clear();
            self.view.seen_current = self.store.current;
        }
        let n = self.store.current().map_or(0, |r| r.steps.len());
        if n > 0 {
            if self.view.follow {
                self.view.step = n - 1;
                self.view.range.1 = n - 1;
            }
            self.view.step = self.view.step.min(n - 1);
            self.view.range.1 = self.view.range.1.min(n - 1);
            self.view.range.0 = self.view.range.0.min(self.view.range.1);
        }
        if self.view.playing && n > 0 && self.view.last_advance.elapsed() > Duration::from_millis(120) {
            self.view.step = (self.view.step + 1) % n;
            self.view.last_advance = Instant::now();
        }
    }

    fn restart_worker(&mut self) {
        self.store.apply(crate::engine::Event::Failed {
            error: "the worker thread stopped unexpectedly; it was restarted".into(),
            total_secs: 0.0,
        });
        match spawn_worker(&self.ctx) {
            Ok(w) => self.worker = w,
            Err(e) => self
                .store
                .report_error(format!("the worker thread stopped and could not be restarted: {e}")),
        }
    }

    fn file_result(&mut self, result: FileResult) {
        match result {
            FileResult::Opened { path, run } => {
                self.store.open(*run, Some(path));
                // Show its last step (until the user scrubs).
                self.view.follow = true;
            }
            FileResult::Saved { dir } => self.view.message = Some(format!("saved to {}", dir.display())),
            FileResult::Exported { path } => self.view.message = Some(format!("exported {}", path.display())),
            FileResult::Picked {
                purpose: PathPurpose::Model,
                path: Some(path),
            } => self.settings.model = path.display().to_string(),
            FileResult::Picked { purpose, path } => {
                if let (Some(p), Some(path)) = (&mut self.view.path_prompt, path)
                    && p.purpose == purpose
                {
                    p.text = path.display().to_string();
                }
            }
            FileResult::Failed { error } => self.store.report_error(error),
        }
    }

    /// The step of run `id` shown when the current run is at `self.view.step`: the same
    /// fraction of the run (A/B comparison).
    pub fn step_of(&self, id: RunId) -> Option<usize> {
        let n = self.store.get(id)?.run.steps.len();
        if n == 0 {
            return None;
        }
        if Some(id) == self.store.current {
            return Some(self.view.step.min(n - 1));
        }
        let cur = self.store.current().map_or(0, |r| r.steps.len());
        Some(scale_step(self.view.step, cur, n))
    }

    /// Max and entropy of a word's map at every step so far of run `id` (None where a step
    /// has no maps), computed once per step and extended as a run streams in.
    pub fn word_stats(&mut self, id: RunId, word_tokens: &[usize]) -> &[Option<WordStepStats>] {
        let key = StatsKey {
            run: id,
            source: self.settings.source.clone(),
            tokens: word_tokens.to_vec(),
        };
        let stats = self.view.word_stats.entry(key).or_default();
        if let Some(r) = self.store.get(id) {
            for step in &r.run.steps[stats.len().min(r.run.steps.len())..] {
                stats.push(
                    analysis::word_map_at(step, &self.settings.source, word_tokens).map(|m| WordStepStats {
                        max: m.max(),
                        entropy: analysis::entropy(&m.values),
                    }),
                );
            }
        }
        stats
    }

    /// The map of a word (its sub-tokens summed, as DAAM does) in run `id` at `step` (or over the
    /// aggregation range) under the current settings, cached by key.
    pub fn token_map(&mut self, id: RunId, step: usize, word_tokens: &[usize]) -> Option<(MapKey, Arc<MapData>)> {
        let run = &self.store.get(id)?.run;
        let steps = if self.settings.aggregate_steps {
            // The range is set on the current run; another run (B) gets the same fractions.
            let (cur, n) = (self.current_len(), run.steps.len());
            (scale_step(self.view.range.0, cur, n), scale_step(self.view.range.1, cur, n))
        } else {
            (step, step)
        };
        let key = MapKey {
            run: id,
            steps,
            source: self.settings.source.clone(),
            tokens: word_tokens.to_vec(),
            revision: 0,
        };
        if let Some(m) = self.view.maps.get(&key) {
            return Some((key, m.clone()));
        }
        let m = analysis::word_map_over(run, steps.0..=steps.1, &self.settings.source, word_tokens)?;
        let data = Arc::new(MapData {
            width: m.width,
            height: m.height,
            values: m.values,
        });
        self.view.maps.insert(key.clone(), data.clone());
        Some((key, data))
    }

    /// The saliency experiment that reruns the current run with the shown overlay's method at
    /// `steps`, and the model to run it on (the run's own).
    fn saliency_settings(&self, steps: Option<Vec<usize>>) -> Result<(String, crate::experiments::saliency::SaliencySettings), String> {
        use crate::experiments::saliency::{CamSettings, RiseSettings, SaliencySettings};
        let (_, run) = self.current().ok_or("no run to explain")?;
        let m = &run.meta;
        let key = self.view.overlay.clone().ok_or("choose DF-RISE or DF-CAM first")?;
        let init_latents = match m.init_latents.as_str() {
            "seed" => None,
            "given in memory" => return Err("this run started from latents given in memory; it cannot be rerun to explain it".into()),
            path => Some(PathBuf::from(path)),
        };
        let options = m.scheduler.get("options");
        let spacing = options
            .and_then(|o| o.get("timestep_spacing"))
            .and_then(|v| v.as_str())
            .map(|v| v.parse().map_err(|e| format!("the run's timestep spacing: {e}")))
            .transpose()?;
        let sampler = m.sampler.parse().map_err(|e| format!("the run's sampler: {e}"))?;
        let settings = SaliencySettings {
            prompt: m.prompt.clone(),
            negative_prompt: m.negative_prompt.clone(),
            text_options: m.text_options.clone(),
            seed: m.seed,
            steps: m.steps,
            guidance: m.guidance,
            sampler: Some(sampler),
            spacing,
            karras: options.and_then(|o| o.get("karras")).and_then(|v| v.as_bool()).unwrap_or(false),
            eta: options.and_then(|o| o.get("eta")).and_then(|v| v.as_f64()).unwrap_or(0.0) as f32,
            height: Some(m.height),
            width: Some(m.width),
            init_latents,
            attention: CaptureMode::None,
            stop_after_last: steps.is_some(),
            steps_at: steps,
            rise: (key == "rise").then(|| RiseSettings {
                masks: self.settings.saliency.masks.max(1),
                ..RiseSettings::default()
            }),
            cam: key.strip_prefix("cam.").map(|b| CamSettings {
                blocks: vec![b.to_owned()],
            }),
        };
        Ok((m.model.clone(), settings))
    }

    /// The saliency map `key` of run `id` at `step`, cached like the word maps.
    pub fn saliency_map(&mut self, id: RunId, step: usize, key: &str) -> Option<(MapKey, Arc<MapData>)> {
        let cache = MapKey {
            run: id,
            steps: (step, step),
            source: MapSource::Key(key.to_owned()),
            tokens: Vec::new(),
            revision: self.view.saliency_revision,
        };
        if let Some(m) = self.view.maps.get(&cache) {
            return Some((cache, m.clone()));
        }
        let run = &self.store.get(id)?.run;
        let m = run.steps.get(step)?.saliency.iter().find(|m| m.key == key)?;
        let data = Arc::new(MapData {
            width: m.width,
            height: m.height,
            values: m.data.clone(),
        });
        self.view.maps.insert(cache.clone(), data.clone());
        Some((cache, data))
    }

    fn current_len(&self) -> usize {
        self.store.current().map_or(0, |r| r.steps.len())
    }

    /// The current run's id and run (panels that show one run).
    pub fn current(&self) -> Option<(RunId, &Run)> {
        let id = self.store.current?;
        Some((id, self.store.get(id)?.run.as_ref()))
    }

    fn dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        // Images dropped on the Probe tab's OOD view are scored; anything else is a run folder.
        let (images, runs): (Vec<PathBuf>, Vec<PathBuf>) = dropped.into_iter().partition(|p| {
            self.view.tab == Tab::Probe && self.settings.probe.mode == ProbeMode::Ood && crate::experiments::ood::is_image_file(p)
        });
        if !images.is_empty() {
            self.ood_score(images);
        }
        for path in runs {
            self.open_path(path);
        }
    }
}

/// `step` of a run of `from` steps mapped to the same fraction of a run of `to` steps.
pub fn scale_step(step: usize, from: usize, to: usize) -> usize {
    if to == 0 {
        return 0;
    }
    if from <= 1 || from == to {
        return step.min(to - 1);
    }
    let f = step.min(from - 1) as f64 / (from - 1) as f64;
    ((f * (to - 1) as f64).round() as usize).min(to - 1)
}

impl eframe::App for App {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.dropped_files(ctx);
        self.pump();
        if self.store.busy() || self.view.playing || self.files.busy() {
            ctx.request_repaint_after(Duration::from_millis(30));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        panels::app_ui(self, ui);
        self.apply_actions();
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.settings);
    }
}

/// Opens the app window; `open` is a run folder to open at start (`diffusion-scope open DIR`).
pub fn run_app(open: Option<PathBuf>) -> eframe::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1400.0, 900.0])
            .with_title("Diffusion Scope")
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "Diffusion Scope",
        options,
        Box::new(|cc| {
            let mut app = App::new(cc);
            if let Some(dir) = open {
                app.open_path(dir);
            }
            Ok(Box::new(app))
        }),
    )
}
