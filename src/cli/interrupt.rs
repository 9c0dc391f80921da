//! Ctrl-C, SIGTERM and SIGHUP for the long-running commands: the first one asks the worker to
//! stop after the current UNet evaluation (the command then saves what was computed and exits
//! 130); a second one exits at once — except while files are being written, when it waits for
//! the write to finish first, so that a run folder is never left half-written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Interrupt {
    interrupted: Arc<AtomicBool>,
    writing: Arc<Mutex<()>>,
}

impl Interrupt {
    /// Installs the handler; `cancel` is the worker's cancel flag. `unit` names what finishes
    /// before the stop ("UNet evaluation"), `then` what the command does next ("saving what was
    /// computed").
    pub fn install(cancel: Arc<AtomicBool>, unit: &'static str, then: &'static str) -> Self {
        let interrupted = Arc::new(AtomicBool::new(false));
        let writing = Arc::new(Mutex::new(()));
        let (flag, lock) = (interrupted.clone(), writing.clone());
        // ctrlc runs the handler on its own thread, so it may block and print.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                if lock.try_lock().is_err() {
                    eprintln!("\nwriting files; quitting as soon as they are complete");
                }
                let _guard = lock.lock();
                std::process::exit(130);
            }
            cancel.store(true, Ordering::SeqCst);
            eprintln!("\nstopping after the current {unit}, then {then} (again to quit now)");
        });
        Self { interrupted, writing }
    }

    /// Whether a signal arrived.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Runs `write`; a second signal meanwhile waits for it to finish before exiting.
    pub fn writing<T>(&self, write: impl FnOnce() -> T) -> T {
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        write()
    }
}
