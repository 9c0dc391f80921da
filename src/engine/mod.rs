//! The worker thread that owns the device, the loaded model and the sampler. Commands go in
//! and events come out over bounded channels; the UI and the CLI are both clients.
//!
//! Every command is answered by exactly one terminal event: `Generate` by `Finished`,
//! `Cancelled` or `Failed`; `Decode` by `Decoded` or `DecodeFailed` (or `Failed` when the model
//! could not be loaded); `Experiment` by `ExperimentFinished` or `Failed`. A panic while a
//! command runs is caught: it becomes `Failed` with the panic message and location, the worker drops its
//! loaded model (its state may be broken) and goes on with the next command, as a restarted
//! worker would.
//!
//! Architecture invariant: events carry plain data ([`StepRecord`], [`RunMeta`], [`RgbImage`],
//! experiment reports); nothing above this module sees candle.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::experiments::{self, ExperimentEvent, ExperimentSettings, Outcome};
use crate::model::hub::{self, ModelSource};
use crate::model::{DTypeChoice, DeviceChoice, ModelError, StableDiffusion};
use crate::pipeline::{self, RunConfig, RunError, RunEvent};
use crate::trace::{RgbImage, Run, RunEnd, RunMeta, RunStatus, StepRecord};

/// Capacity of the event channel. Step records are data and are never dropped: when the
/// consumer is slow the worker waits (backpressure).
pub const EVENT_CAPACITY: usize = 64;
/// Capacity of the command channel; a full queue is reported, never waited on.
pub const COMMAND_CAPACITY: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// A folder or a hub id.
    pub spec: String,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
}

/// A full VAE decode of latents [C, h, w] (e.g. a step's x0), answered by `Decoded` /
/// `DecodeFailed` with the same `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeRequest {
    pub model: ModelRequest,
    pub id: u64,
    pub latents: Vec<f32>,
    pub shape: [usize; 3],
}

pub enum Command {
    Generate {
        model: ModelRequest,
        config: Box<RunConfig>,
    },
    /// A decode request is waiting in the latest-wins slot (see [`Worker::decode`]).
    DecodePending,
    Experiment {
        model: ModelRequest,
        settings: Box<ExperimentSettings>,
    },
    /// Panics inside the worker (tests of the panic boundary).
    #[doc(hidden)]
    InjectPanic,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub spec: String,
    pub path: String,
    pub default_size: usize,
    pub vae_scale_factor: usize,
    pub attn_layers: usize,
    /// SDXL: a second text encoder (prompt 2 applies).
    pub second_text_encoder: bool,
    /// The (first) text encoder's layers: the most clip skip can be.
    pub text_encoder_layers: usize,
    pub load_secs: f64,
}

pub enum Event {
    LoadingModel {
        spec: String,
    },
    ModelLoaded(ModelInfo),
    Started(Box<RunMeta>),
    Step(Box<StepRecord>),
    Decoding,
    /// `total_secs`: the run from prompt encoding to the decoded image, without the model load
    /// (see [`Run::finish`]).
    Finished {
        image: RgbImage,
        total_secs: f64,
    },
    /// Answer to a decode request.
    Decoded {
        id: u64,
        image: RgbImage,
    },
    DecodeFailed {
        id: u64,
        error: String,
    },
    Cancelled {
        completed: usize,
        total: usize,
        total_secs: f64,
    },
    /// The run, the experiment or the model load failed (or the worker panicked and was
    /// restarted); the worker stays usable. `total_secs`: how long the failed work ran.
    Failed {
        error: String,
        total_secs: f64,
    },
    /// Progress and per-item results of a running experiment.
    Experiment(Box<ExperimentEvent>),
    /// The experiment's report (also after a cancel or a failed item: see `Outcome::stopped`).
    ExperimentFinished {
        outcome: Box<Outcome>,
        total_secs: f64,
    },
}

impl Event {
    /// Records a run event (`Step`, `Finished`, `Cancelled`, `Failed`) into `run` through the
    /// one assembly ([`Run::push_step`], [`Run::finish`]; `Started` is [`Run::started`]). Other
    /// events, and `Failed` (its message is for the caller too), are handed back.
    pub fn record_into(self, run: &mut Run) -> Option<Event> {
        match self {
            Event::Step(rec) => run.push_step(*rec),
            Event::Finished { image, total_secs } => run.finish(RunEnd::Complete(image), total_secs),
            Event::Cancelled { total_secs, .. } => run.finish(RunEnd::Cancelled, total_secs),
            Event::Failed { ref error, total_secs } => {
                if run.meta.status == RunStatus::Running {
                    run.finish(RunEnd::Failed(error.clone()), total_secs);
                }
                return Some(self);
            }
            other => return Some(other),
        }
        None
    }

    /// Whether this event ends the command it answers (the worker is then free).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::Finished { .. }
                | Event::Cancelled { .. }
                | Event::Failed { .. }
                | Event::Decoded { .. }
                | Event::DecodeFailed { .. }
                | Event::ExperimentFinished { .. }
        )
    }
}

/// Why a command was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the worker is busy ({COMMAND_CAPACITY} commands queued); try again when it is done")]
    Busy,
    #[error("the worker thread has stopped")]
    Stopped,
}

/// Handle to the worker thread. Dropping it cancels any run, shuts the thread down and joins it.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    decode_slot: Arc<Mutex<Option<DecodeRequest>>>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// `wake` is called after every event is queued (the UI passes `ctx.request_repaint`).
    pub fn spawn(wake: Box<dyn Fn() + Send>) -> std::io::Result<Self> {
        install_panic_hook();
        let (cmd_tx, cmd_rx) = bounded::<Command>(COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = bounded::<Event>(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let decode_slot = Arc::new(Mutex::new(None));
        let state = WorkerState {
            events: ev_tx,
            cancel: cancel.clone(),
            decode_slot: decode_slot.clone(),
            wake,
            loaded: None,
            alive: true,
        };
        let handle = std::thread::Builder::new().name("diffusion-worker".into()).spawn(move || {
            IN_WORKER.with(|w| w.set(true));
            state.run(cmd_rx)
        })?;
        Ok(Self {
            commands: cmd_tx,
            events: ev_rx,
            cancel,
            decode_slot,
            handle: Some(handle),
        })
    }

    fn send(&self, cmd: Command) -> Result<(), SendError> {
        self.commands.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => SendError::Busy,
            TrySendError::Disconnected(_) => SendError::Stopped,
        })
    }

    pub fn generate(&self, model: ModelRequest, config: RunConfig) -> Result<(), SendError> {
        self.cancel.store(false, Ordering::SeqCst);
        self.send(Command::Generate {
            model,
            config: Box::new(config),
        })
    }

    /// Runs an experiment; progress comes as `Event::Experiment`, the report as
    /// `Event::ExperimentFinished`.
    pub fn experiment(&self, model: ModelRequest, settings: ExperimentSettings) -> Result<(), SendError> {
        self.cancel.store(false, Ordering::SeqCst);
        self.send(Command::Experiment {
            model,
            settings: Box::new(settings),
        })
    }

    /// Asks for a full VAE decode; the answer comes as `Event::Decoded` / `DecodeFailed`.
    ///
    /// Latest wins: there is one pending decode at a time. A request that is still waiting when
    /// a newer one arrives is replaced and will not be answered; its id is returned so the caller
    /// can forget it (and ask again later). Requests are never dropped silently.
    pub fn decode(&self, request: DecodeRequest) -> Result<Option<u64>, SendError> {
        if self.handle.as_ref().is_none_or(|h| h.is_finished()) {
            return Err(SendError::Stopped);
        }
        let replaced = match self.decode_slot.lock() {
            Ok(mut slot) => slot.replace(request).map(|r| r.id),
            Err(_) => return Err(SendError::Stopped),
        };
        // A full queue is fine: the worker looks at the slot after every command.
        match self.commands.try_send(Command::DecodePending) {
            Err(TrySendError::Disconnected(_)) => Err(SendError::Stopped),
            _ => Ok(replaced),
        }
    }

    /// Asks the running generation or experiment to stop after the current UNet evaluation.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// A flag that cancels the current run when set (for signal handlers).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Makes the worker panic while handling a command (tests of the panic boundary).
    #[doc(hidden)]
    pub fn inject_panic(&self) -> Result<(), SendError> {
        self.send(Command::InjectPanic)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.commands.try_send(Command::Shutdown);
        // Dropping our receiver makes any blocked or later `send` in the worker fail, which
        // ends its loop even mid-run.
        drop(std::mem::replace(&mut self.events, crossbeam_channel::never()));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// candle errors carry a backtrace after their message when RUST_BACKTRACE is set; users get
/// the one-line message.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim_end().to_owned()
}

/// The text of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

thread_local! {
    /// Set on the worker thread: its panics are reported as `Failed` events.
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the worker thread last panicked ("src/x.rs:12:5").
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once per process) a panic hook that records where a worker thread panicked, for
/// the `Failed` event, instead of printing the default report over the progress bar (it is
/// still printed with RUST_BACKTRACE set). Panics on other threads go to the previous hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_WORKER.with(|w| w.get()) {
                let at = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                PANIC_AT.with(|p| *p.borrow_mut() = at);
                if std::env::var_os("RUST_BACKTRACE").is_none() {
                    return;
                }
            }
            previous(info);
        }));
    });
}

/// Resolves a model request (folder or hub id) and loads it, checking that its scheduler
/// config parses.
pub fn load_model(request: &ModelRequest) -> Result<StableDiffusion, ModelError> {
    let source = ModelSource::parse(&request.spec)?;
    let root = hub::resolve(&source, request.dtype == DTypeChoice::F16)?;
    let device = request.device.device()?;
    let sd = StableDiffusion::load(&root, &device, request.dtype.dtype())?;
    pipeline::scheduler_config(&sd).map_err(|e| ModelError::Scheduler(e.to_string()))?;
    Ok(sd)
}

struct Loaded {
    request: ModelRequest,
    model: StableDiffusion,
}

/// Everything the worker thread owns.
struct WorkerState {
    events: Sender<Event>,
    cancel: Arc<AtomicBool>,
    decode_slot: Arc<Mutex<Option<DecodeRequest>>>,
    wake: Box<dyn Fn() + Send>,
    loaded: Option<Loaded>,
    /// Cleared when the consumer is gone: the loop ends.
    alive: bool,
}

impl WorkerState {
    fn run(mut self, commands: Receiver<Command>) {
        while self.alive
            && let Ok(cmd) = commands.recv()
        {
            if matches!(cmd, Command::Shutdown) {
                break;
            }
            self.guarded(|s| s.handle(cmd));
            // A decode waiting in the slot is served after every command.
            if self.alive {
                self.guarded(|s| s.serve_decode());
            }
        }
    }

    /// Runs `f`; a panic becomes a `Failed` event and the loaded model is dropped.
    fn guarded(&mut self, f: impl FnOnce(&mut Self)) {
        let t0 = Instant::now();
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            self.loaded = None;
            let at = PANIC_AT
                .with(|p| p.borrow_mut().take())
                .map(|at| format!(" at {at}"))
                .unwrap_or_default();
            let error = format!(
                "internal error: the worker panicked ({}){at}; it was restarted, the model will be loaded again",
                first_line(&panic_message(payload.as_ref()))
            );
            self.send(Event::Failed {
                error,
                total_secs: t0.elapsed().as_secs_f64(),
            });
        }
    }

    fn send(&mut self, e: Event) {
        if self.alive && self.events.send(e).is_err() {
            self.alive = false;
            self.cancel.store(true, Ordering::SeqCst);
        }
        (self.wake)();
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown | Command::DecodePending => {}
            Command::InjectPanic => panic!("injected panic (test)"),
            Command::Generate { model, config } => self.generate(&model, &config),
            Command::Experiment { model, settings } => self.experiment(&model, &settings),
        }
    }

    /// Makes `request` the loaded model, reporting progress; None when loading failed (already
    /// reported).
    fn ensure_loaded(&mut self, request: &ModelRequest) -> Option<&StableDiffusion> {
        if !self.loaded.as_ref().is_some_and(|l| &l.request == request) {
            self.loaded = None;
            self.send(Event::LoadingModel {
                spec: request.spec.clone(),
            });
            let t0 = Instant::now();
            match load_model(request) {
                Ok(sd) => {
                    let info = ModelInfo {
                        spec: request.spec.clone(),
                        path: sd.root.display().to_string(),
                        default_size: sd.default_size(),
                        vae_scale_factor: sd.vae_scale_factor(),
                        attn_layers: sd.unet.attn_layers().len(),
                        second_text_encoder: sd.xl.is_some(),
                        text_encoder_layers: sd.text_encoder.num_layers(),
                        load_secs: t0.elapsed().as_secs_f64(),
                    };
                    self.loaded = Some(Loaded {
                        request: request.clone(),
                        model: sd,
                    });
                    self.send(Event::ModelLoaded(info));
                }
                Err(e) => {
                    self.send(Event::Failed {
                        error: first_line(&format!("loading model '{}': {e}", request.spec)),
                        total_secs: 0.0,
                    });
                    return None;
                }
            }
        }
        if !self.alive {
            return None;
        }
        self.loaded.as_ref().map(|l| &l.model)
    }

    /// Runs `work` on the model of `request` (loading it first) and times it; None when the
    /// model could not be loaded (already reported) or the consumer is gone.
    fn with_model<T>(&mut self, request: &ModelRequest, work: impl FnOnce(&mut Self, &StableDiffusion) -> T) -> Option<(T, f64)> {
        self.ensure_loaded(request)?;
        let l = self.loaded.take()?;
        let t0 = Instant::now();
        let out = work(self, &l.model);
        self.loaded = Some(l);
        self.alive.then(|| (out, t0.elapsed().as_secs_f64()))
    }

    fn generate(&mut self, model: &ModelRequest, config: &RunConfig) {
        let cancel = self.cancel.clone();
        let run = self.with_model(model, |s, sd| {
            pipeline::run(sd, &model.spec, config, &cancel, &mut |ev| {
                s.send(match ev {
                    RunEvent::Started(meta) => Event::Started(meta),
                    RunEvent::Step(rec) => Event::Step(rec),
                    RunEvent::Decoding => Event::Decoding,
                })
            })
        });
        let Some((result, total_secs)) = run else { return };
        self.send(match result {
            Ok(image) => Event::Finished { image, total_secs },
            Err(RunError::Cancelled { completed, total }) => Event::Cancelled {
                completed,
                total,
                total_secs,
            },
            Err(e) => Event::Failed {
                error: first_line(&e.to_string()),
                total_secs,
            },
        });
    }

    fn experiment(&mut self, model: &ModelRequest, settings: &ExperimentSettings) {
        let cancel = self.cancel.clone();
        let run = self.with_model(model, |s, sd| {
            experiments::run(sd, &model.spec, settings, &cancel, &mut |ev| {
                s.send(Event::Experiment(Box::new(ev)))
            })
        });
        let Some((result, total_secs)) = run else { return };
        self.send(match result {
            Ok(outcome) => Event::ExperimentFinished {
                outcome: Box::new(outcome),
                total_secs,
            },
            Err(e) => Event::Failed {
                error: first_line(&format!("{}: {e}", settings.name())),
                total_secs,
            },
        });
    }

    fn serve_decode(&mut self) {
        let request = match self.decode_slot.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let Some(DecodeRequest { model, id, latents, shape }) = request else {
            return;
        };
        let Some(sd) = self.ensure_loaded(&model) else {
            // The load failure was reported as `Failed`; answer the request too.
            self.send(Event::DecodeFailed {
                id,
                error: format!("the model '{}' could not be loaded", model.spec),
            });
            return;
        };
        let ev = match pipeline::decode(sd, latents, shape) {
            Ok(image) => Event::Decoded { id, image },
            Err(e) => Event::DecodeFailed {
                id,
                error: first_line(&e.to_string()),
            },
        };
        self.send(ev);
    }
}
