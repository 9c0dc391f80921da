//! The worker thread that owns the device, the loaded model and the sampler. Commands go in
//! and events come out over bounded channels; the UI and the CLI are both clients.
//!
//! Architecture invariant: nothing outside this module and `model`/`sampling` touches candle;
//! events carry plain data ([`StepRecord`], [`RunMeta`], [`RgbImage`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::model::hub::{self, ModelSource};
use crate::model::{DTypeChoice, DeviceChoice, ModelError, StableDiffusion};
use crate::sampling::denoise::{self, RunConfig, RunError, RunEvent};
use crate::trace::{RgbImage, RunMeta, StepRecord};

/// Capacity of the event channel. Step records are data and are never dropped: when the
/// consumer is slow the worker waits (backpressure).
pub const EVENT_CAPACITY: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// A folder or a hub id.
    pub spec: String,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
}

pub enum Command {
    Generate {
        model: ModelRequest,
        config: Box<RunConfig>,
    },
    /// Decode latents [C, h, w] (e.g. a step's x0) with the model's VAE; answered by
    /// `Decoded` / `DecodeFailed` with the same `id`. Queued behind a running generation.
    Decode {
        model: ModelRequest,
        id: u64,
        latents: Vec<f32>,
        shape: [usize; 3],
    },
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub spec: String,
    pub path: String,
    pub default_size: usize,
    pub vae_scale_factor: usize,
    pub attn_layers: usize,
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
    Finished {
        image: RgbImage,
        total_secs: f64,
    },
    /// Answer to `Command::Decode`.
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
    },
    /// The run (or the model load) failed; the worker stays usable.
    Failed {
        error: String,
    },
}

/// Handle to the worker thread. Dropping it cancels any run, shuts the thread down and joins it.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// `wake` is called after every event is queued (the UI passes `ctx.request_repaint`).
    pub fn spawn(wake: Box<dyn Fn() + Send>) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = bounded::<Command>(8);
        let (ev_tx, ev_rx) = bounded::<Event>(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let cancel_w = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("diffusion-worker".into())
            .spawn(move || worker_loop(cmd_rx, ev_tx, cancel_w, wake))?;
        Ok(Self {
            commands: cmd_tx,
            events: ev_rx,
            cancel,
            handle: Some(handle),
        })
    }

    pub fn generate(&self, model: ModelRequest, config: RunConfig) {
        self.cancel.store(false, Ordering::SeqCst);
        let _ = self.commands.send(Command::Generate {
            model,
            config: Box::new(config),
        });
    }

    /// Asks for a full VAE decode of latents [C, h, w]; the answer comes as `Event::Decoded`.
    pub fn decode(&self, model: ModelRequest, id: u64, latents: Vec<f32>, shape: [usize; 3]) {
        let _ = self.commands.try_send(Command::Decode { model, id, latents, shape });
    }

    /// Asks the running generation to stop after the current UNet evaluation.
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

struct Loaded {
    request: ModelRequest,
    model: StableDiffusion,
}

/// Resolves a model request (folder or hub id) and loads it: what the worker does, for
/// headless commands that drive the pipeline themselves.
pub fn load_model(request: &ModelRequest) -> Result<StableDiffusion, ModelError> {
    let source = ModelSource::parse(&request.spec)?;
    let root = hub::resolve(&source, request.dtype == DTypeChoice::F16)?;
    let device = request.device.device()?;
    StableDiffusion::load(&root, &device, request.dtype.dtype())
}

/// Makes `request` the loaded model, reporting progress; false when loading failed (already
/// reported) or the consumer is gone (`alive` cleared).
fn ensure_loaded(loaded: &mut Option<Loaded>, request: &ModelRequest, send: &dyn Fn(Event) -> bool, alive: &mut bool) -> bool {
    if loaded.as_ref().is_some_and(|l| &l.request == request) {
        return true;
    }
    *loaded = None;
    if !send(Event::LoadingModel {
        spec: request.spec.clone(),
    }) {
        *alive = false;
        return false;
    }
    let t0 = Instant::now();
    match load_model(request) {
        Ok(sd) => {
            let info = ModelInfo {
                spec: request.spec.clone(),
                path: sd.root.display().to_string(),
                default_size: sd.default_size(),
                vae_scale_factor: sd.vae_scale_factor(),
                attn_layers: sd.unet.attn_layers().len(),
                load_secs: t0.elapsed().as_secs_f64(),
            };
            *loaded = Some(Loaded {
                request: request.clone(),
                model: sd,
            });
            *alive = send(Event::ModelLoaded(info));
            *alive
        }
        Err(e) => {
            *alive = send(Event::Failed {
                error: first_line(&format!("loading model '{}': {e}", request.spec)),
            });
            false
        }
    }
}

fn worker_loop(commands: Receiver<Command>, events: Sender<Event>, cancel: Arc<AtomicBool>, wake: Box<dyn Fn() + Send>) {
    let send = |e: Event| -> bool {
        let ok = events.send(e).is_ok();
        wake();
        ok
    };
    let mut loaded: Option<Loaded> = None;
    let mut alive = true;
    while alive && let Ok(cmd) = commands.recv() {
        match cmd {
            Command::Shutdown => break,
            Command::Decode { model, id, latents, shape } => {
                if !ensure_loaded(&mut loaded, &model, &send, &mut alive) {
                    continue;
                }
                let Some(l) = &loaded else { continue };
                let ev = match denoise::decode(&l.model, latents, shape) {
                    Ok(image) => Event::Decoded { id, image },
                    Err(e) => Event::DecodeFailed {
                        id,
                        error: first_line(&e.to_string()),
                    },
                };
                alive = send(ev);
            }
            Command::Generate { model, config } => {
                if !ensure_loaded(&mut loaded, &model, &send, &mut alive) {
                    continue;
                }
                let Some(l) = &loaded else { continue };
                let t0 = Instant::now();
                let result = denoise::run(&l.model, &model.spec, &config, &cancel, &mut |ev| {
                    let e = match ev {
                        RunEvent::Started(meta) => Event::Started(meta),
                        RunEvent::Step(rec) => Event::Step(rec),
                        RunEvent::Decoding => Event::Decoding,
                    };
                    if alive && !send(e) {
                        alive = false;
                        cancel.store(true, Ordering::SeqCst);
                    }
                });
                if !alive {
                    break;
                }
                let ev = match result {
                    Ok(image) => Event::Finished {
                        image,
                        total_secs: t0.elapsed().as_secs_f64(),
                    },
                    Err(RunError::Cancelled { completed, total }) => Event::Cancelled { completed, total },
                    Err(e) => Event::Failed {
                        error: first_line(&e.to_string()),
                    },
                };
                alive = send(ev);
            }
        }
    }
}
