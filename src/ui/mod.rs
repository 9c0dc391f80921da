//! The interactive app (eframe/egui, wgpu). One [`App`] owns the worker handle, the
//! [`store::RunStore`] and the view state; `App::logic` drains worker events into the store with
//! a small time budget, `App::ui` draws panels that read the store and send commands.

pub mod export;
pub mod heatmap;
pub mod panels;
pub mod store;
pub mod theme;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use serde::{Deserialize, Serialize};

use crate::analysis::colormap::Colormap;
use crate::analysis::{self, MapSource};
use crate::engine::{ModelRequest, Worker};
use crate::model::unet::CaptureMode;
use crate::sampling::SamplerKind;
use crate::sampling::denoise::RunConfig;
use heatmap::MapData;
use store::RunStore;

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
    pub seed: u64,
    pub steps: usize,
    pub sampler: Option<SamplerKind>,
    pub karras: bool,
    pub guidance: f32,
    pub size: Option<(usize, usize)>,
    pub auto_rerun: bool,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            recent_models: Vec::new(),
            prompt: "a red circle left of a blue square".into(),
            negative_prompt: String::new(),
            seed: 0,
            steps: 30,
            sampler: None,
            karras: false,
            guidance: 5.0,
            size: None,
            auto_rerun: false,
            attention: CaptureMode::Aggregate,
            view: ImageView::All,
            colormap: Colormap::Viridis,
            opacity: 0.6,
            normalize: Normalize::PerMap,
            source: MapSource::All,
            show_special_tokens: false,
            aggregate_steps: false,
            strip_frames: 6,
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
}

/// Transient view state (not persisted).
pub struct ViewState {
    pub tab: Tab,
    pub step: usize,
    /// Inclusive step range for aggregation.
    pub range: (usize, usize),
    pub playing: bool,
    pub last_advance: Instant,
    /// Follow the newest step while a run streams.
    pub follow: bool,
    /// Selected token positions, one entry per selected word (its sub-token positions).
    pub tokens: Vec<Vec<usize>>,
    /// CPU copies of maps shown, keyed like the GPU textures.
    pub maps: HashMap<String, Arc<MapData>>,
    pub textures: HashMap<String, egui::TextureHandle>,
    pub message: Option<String>,
    /// Screen rects of the heatmaps drawn last frame (for tests and hover logic).
    pub heatmap_rects: Vec<egui::Rect>,
    /// Per-step statistics of selected words' maps (max, entropy), filled in as steps arrive;
    /// keyed by run generation, map source and token positions.
    pub word_stats: HashMap<String, Vec<Option<WordStepStats>>>,
    /// Full VAE decodes asked of the worker: (run generation, step) → request id.
    pub decode_requests: HashMap<(u64, usize), u64>,
    /// Screen rects of the exportable plot panels drawn last frame ("plots", "schedules").
    pub panel_rects: HashMap<&'static str, egui::Rect>,
    /// A panel export waiting for the window screenshot: (panel, file name).
    pub pending_capture: Option<(&'static str, String)>,
    /// Where the screenshot callback (run by the integration) leaves the window image.
    pub capture_slot: Arc<std::sync::Mutex<Option<Arc<egui::ColorImage>>>>,
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
            decode_requests: HashMap::new(),
            word_stats: HashMap::new(),
            panel_rects: HashMap::new(),
            pending_capture: None,
            capture_slot: Arc::default(),
        }
    }
}

pub struct App {
    pub settings: Settings,
    pub store: RunStore,
    pub view: ViewState,
    worker: Worker,
    /// Whether a wgpu render state exists (heatmaps need it).
    pub gpu: bool,
    seen_generation: u64,
}

const STORAGE_KEY: &str = "diffusion-scope-settings";
/// Time budget per frame for draining worker events.
const DRAIN_BUDGET: Duration = Duration::from_millis(4);

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
        let wake_ctx = ctx.clone();
        let worker = Worker::spawn(Box::new(move || wake_ctx.request_repaint())).expect("spawning the worker thread");
        Self {
            settings,
            store: RunStore::default(),
            view: ViewState::default(),
            worker,
            gpu,
            seen_generation: 0,
        }
    }

    pub fn generate(&mut self) {
        let s = &self.settings;
        let cfg = RunConfig {
            prompt: s.prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            steps: s.steps.max(1),
            guidance: s.guidance,
            sampler: s.sampler,
            karras: s.karras,
            spacing: None,
            eta: 0.0,
            seed: s.seed,
            height: s.size.map(|(_, h)| h),
            width: s.size.map(|(w, _)| w),
            init_latents: None,
            attention: s.attention,
        };
        let model = ModelRequest {
            spec: s.model.clone(),
            device: Default::default(),
            dtype: Default::default(),
        };
        if !self.settings.recent_models.contains(&self.settings.model) {
            self.settings.recent_models.insert(0, self.settings.model.clone());
            self.settings.recent_models.truncate(8);
        }
        self.view.follow = true;
        self.view.playing = false;
        self.worker.generate(model, cfg);
    }

    /// The full VAE decode of the selected step's x0: the image when the worker has answered;
    /// asks for it (when idle) otherwise. `Err` carries a failed decode's message.
    pub fn decoded_x0(&mut self) -> Option<Result<crate::trace::RgbImage, String>> {
        let run = self.store.run.as_ref()?;
        let step = self.view.step.min(run.steps.len().checked_sub(1)?);
        let key = (self.store.generation, step);
        if let Some(id) = self.view.decode_requests.get(&key) {
            return self.store.decoded.get(id).cloned();
        }
        if self.store.busy() || run.meta.model_path == "synthetic" {
            return None;
        }
        let id = self.view.decode_requests.len() as u64 + 1 + (self.store.generation << 32);
        let model = ModelRequest {
            spec: run.meta.model.clone(),
            device: Default::default(),
            dtype: Default::default(),
        };
        self.worker.decode(model, id, run.steps[step].x0.clone(), run.meta.latent_shape);
        self.view.decode_requests.insert(key, id);
        None
    }

    pub fn cancel(&self) {
        self.worker.cancel();
    }

    /// Drains worker events into the store (bounded time), then keeps view state consistent.
    pub fn pump(&mut self) {
        let start = Instant::now();
        while start.elapsed() < DRAIN_BUDGET {
            match self.worker.events().try_recv() {
                Ok(ev) => self.store.apply(ev),
                Err(_) => break,
            }
        }
        if self.store.generation != self.seen_generation {
            self.seen_generation = self.store.generation;
            self.view.maps.clear();
            self.view.textures.clear();
            self.view.word_stats.clear();
            self.view.step = 0;
            self.view.range = (0, 0);
            self.view.tokens.retain(|_| false);
        }
        let n = self.store.run.as_ref().map_or(0, |r| r.steps.len());
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

    /// Max and entropy of a word's map at every step so far (None where a step has no maps),
    /// computed once per step and extended as a run streams in.
    pub fn word_stats(&mut self, word_tokens: &[usize]) -> &[Option<WordStepStats>] {
        let key = format!("g{}:{:?}:{word_tokens:?}", self.store.generation, self.settings.source);
        let stats = self.view.word_stats.entry(key).or_default();
        if let Some(run) = &self.store.run {
            for step in &run.steps[stats.len().min(run.steps.len())..] {
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

    /// The map of selected word `word` (its sub-tokens summed, as DAAM does) under the
    /// current settings, cached by key.
    pub fn token_map(&mut self, word_tokens: &[usize]) -> Option<(String, Arc<MapData>)> {
        let run = self.store.run.as_ref()?;
        let (lo, hi) = if self.settings.aggregate_steps {
            self.view.range
        } else {
            (self.view.step, self.view.step)
        };
        let source_key = match &self.settings.source {
            MapSource::All => "all".to_string(),
            MapSource::Key(k) => k.clone(),
        };
        let key = format!("g{}:{lo}-{hi}:{source_key}:{:?}", self.store.generation, word_tokens);
        if let Some(m) = self.view.maps.get(&key) {
            return Some((key, m.clone()));
        }
        let m = analysis::word_map_over(run, lo..=hi, &self.settings.source, word_tokens)?;
        let data = Arc::new(MapData {
            width: m.width,
            height: m.height,
            values: m.values,
        });
        self.view.maps.insert(key.clone(), data.clone());
        Some((key, data))
    }
}

impl eframe::App for App {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.pump();
        if self.store.busy() || self.view.playing {
            ctx.request_repaint_after(Duration::from_millis(30));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        panels::app_ui(self, ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.settings);
    }
}

/// Opens the app window.
pub fn run_app() -> eframe::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1400.0, 900.0])
            .with_title("Diffusion Scope"),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native("Diffusion Scope", options, Box::new(|cc| Ok(Box::new(App::new(cc)))))
}
