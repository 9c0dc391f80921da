//! File work off the UI thread: opening and saving runs, writing exported PNGs, and the
//! native file dialogs (which block). Each job runs on its own named thread and reports back
//! over a bounded channel that the app drains in `App::logic`; the window keeps drawing while a
//! 400 MB trace loads, with its progress shown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::trace::{Run, load_run_with_progress, save_run};

/// What a path typed or picked is for.
#[derive(Debug, Clone, PartialEq)]
pub enum PathPurpose {
    /// A model folder (Browse next to the Model field; no prompt).
    Model,
    OpenRun,
    SaveRun(crate::ui::store::RunId),
    /// A PNG figure (already drawn) to write.
    ExportPng(Arc<image::RgbaImage>),
    /// An OOD reference file to load.
    OodReference,
    /// A folder of in-distribution images to fit an OOD reference on.
    OodFit,
    /// An image (or a folder of images) to score against the OOD reference.
    OodScore,
}

impl PathPurpose {
    pub fn title(&self) -> &'static str {
        match self {
            PathPurpose::Model => "Pick a diffusers folder",
            PathPurpose::OpenRun => "Open a run folder",
            PathPurpose::SaveRun(_) => "Save the run into a folder",
            PathPurpose::ExportPng(_) => "Export a PNG",
            PathPurpose::OodReference => "Load an OOD reference (JSON)",
            PathPurpose::OodFit => "Fit an OOD reference on a folder of images",
            PathPurpose::OodScore => "Score an image (or a folder of images)",
        }
    }

    pub fn wants_folder(&self) -> bool {
        !matches!(self, PathPurpose::ExportPng(_) | PathPurpose::OodReference | PathPurpose::OodScore)
    }
}

pub enum FileJob {
    OpenRun(PathBuf),
    SaveRun {
        run: Arc<Run>,
        dir: PathBuf,
    },
    SavePng {
        image: Arc<image::RgbaImage>,
        path: PathBuf,
    },
    /// The native dialog; its answer fills the path prompt.
    Pick {
        purpose: PathPurpose,
        start: PathBuf,
    },
}

pub enum FileResult {
    Opened { path: PathBuf, run: Box<Run> },
    Saved { dir: PathBuf },
    Exported { path: PathBuf },
    Picked { purpose: PathPurpose, path: Option<PathBuf> },
    Failed { error: String },
}

/// A job in flight, for the progress display.
pub struct JobInfo {
    pub label: String,
    /// 0..=1 where the job knows it (loading), else 0 (an indeterminate spinner).
    pub progress: Arc<AtomicU32>,
}

impl JobInfo {
    pub fn fraction(&self) -> f32 {
        f32::from_bits(self.progress.load(Ordering::Relaxed))
    }
}

pub struct Files {
    tx: Sender<(u64, FileResult)>,
    rx: Receiver<(u64, FileResult)>,
    next: u64,
    pub jobs: Vec<(u64, JobInfo)>,
}

impl Default for Files {
    fn default() -> Self {
        let (tx, rx) = bounded(16);
        Self {
            tx,
            rx,
            next: 0,
            jobs: Vec::new(),
        }
    }
}

impl Files {
    /// Starts a job on its own thread; `wake` is called when it is done (and as it progresses).
    pub fn start(&mut self, job: FileJob, wake: impl Fn() + Send + 'static) {
        let label = match &job {
            FileJob::OpenRun(p) => format!("opening {}", p.display()),
            FileJob::SaveRun { dir, .. } => format!("saving to {}", dir.display()),
            FileJob::SavePng { path, .. } => format!("writing {}", path.display()),
            FileJob::Pick { purpose, .. } => purpose.title().to_lowercase(),
        };
        let id = self.next;
        self.next += 1;
        let progress = Arc::new(AtomicU32::new(0f32.to_bits()));
        self.jobs.push((
            id,
            JobInfo {
                label,
                progress: progress.clone(),
            },
        ));
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new().name("file-job".into()).spawn(move || {
            let result = run_job(job, &progress, &wake);
            let _ = tx.send((id, result));
            wake();
        });
        if let Err(e) = spawned {
            self.jobs.retain(|(j, _)| *j != id);
            let _ = self.tx.try_send((
                id,
                FileResult::Failed {
                    error: format!("could not start a file job: {e}"),
                },
            ));
        }
    }

    /// Results of finished jobs.
    pub fn poll(&mut self) -> Vec<FileResult> {
        let mut out = Vec::new();
        while let Ok((id, r)) = self.rx.try_recv() {
            self.jobs.retain(|(j, _)| *j != id);
            out.push(r);
        }
        out
    }

    pub fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }
}

fn run_job(job: FileJob, progress: &AtomicU32, wake: &dyn Fn()) -> FileResult {
    match job {
        FileJob::OpenRun(path) => {
            // A file inside a run folder (dropped trace.json, say) opens its folder.
            let dir = if path.is_file() {
                path.parent().map(PathBuf::from).unwrap_or(path)
            } else {
                path
            };
            let report = |f: f32| {
                progress.store(f.to_bits(), Ordering::Relaxed);
                wake();
            };
            match load_run_with_progress(&dir, &report) {
                Ok(run) => FileResult::Opened {
                    path: dir,
                    run: Box::new(run),
                },
                Err(e) => FileResult::Failed {
                    error: format!("opening {}: {e}", dir.display()),
                },
            }
        }
        FileJob::SaveRun { run, dir } => match save_run(&run, &dir) {
            Ok(()) => FileResult::Saved { dir },
            Err(e) => FileResult::Failed {
                error: format!("save failed: {e}"),
            },
        },
        FileJob::SavePng { image, path } => match image.save(&path) {
            Ok(()) => FileResult::Exported { path },
            Err(e) => FileResult::Failed {
                error: format!("export to {} failed: {e}", path.display()),
            },
        },
        FileJob::Pick { purpose, start } => {
            let dialog = rfd::FileDialog::new().set_title(purpose.title());
            let path = if purpose.wants_folder() {
                dialog.set_directory(&start).pick_folder()
            } else {
                let dir = start.parent().map(PathBuf::from).unwrap_or_default();
                let name = start.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                dialog
                    .set_directory(dir)
                    .set_file_name(name)
                    .add_filter("PNG", &["png"])
                    .save_file()
            };
            FileResult::Picked { purpose, path }
        }
    }
}
