//! The worker thread end to end: a run streams to completion, cancel stops a run, a failed
//! run reports its error and the worker stays usable.

use std::time::Duration;

use crate::common::fixtures;
use diffusion_scope::engine::{Event, ModelRequest, Worker};
use diffusion_scope::pipeline::RunConfig;
use diffusion_scope::sampling::SamplerKind;
use diffusion_scope::types::CaptureMode;

fn request() -> ModelRequest {
    ModelRequest {
        spec: fixtures().join("tiny-sd1").display().to_string(),
        device: Default::default(),
        dtype: Default::default(),
    }
}

fn config(steps: usize) -> RunConfig {
    RunConfig {
        prompt: "a red circle".into(),
        steps,
        sampler: Some(SamplerKind::EulerAncestral),
        seed: 3,
        attention: CaptureMode::Aggregate,
        ..RunConfig::default()
    }
}

/// Collects events until the run ends; returns (step events, final event).
fn drain(worker: &Worker) -> (usize, Event) {
    let mut steps = 0;
    loop {
        let ev = worker.events().recv_timeout(Duration::from_secs(120)).expect("worker event");
        match ev {
            Event::Step(_) => steps += 1,
            Event::Finished { .. } | Event::Cancelled { .. } | Event::Failed { .. } => return (steps, ev),
            _ => {}
        }
    }
}

#[test]
fn worker_streams_cancels_fails_and_recovers() {
    let worker = Worker::spawn(Box::new(|| {})).unwrap();

    worker.generate(request(), config(6)).expect("queued");
    let (steps, end) = drain(&worker);
    assert_eq!(steps, 6);
    let Event::Finished { image, .. } = end else {
        panic!("expected Finished")
    };
    assert_eq!((image.width, image.height), (32, 32));

    // Cancel after the second step of a long run.
    worker.generate(request(), config(500)).expect("queued");
    let mut seen = 0;
    loop {
        match worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::Step(_) => {
                seen += 1;
                if seen == 2 {
                    worker.cancel();
                }
            }
            Event::Cancelled { completed, total, .. } => {
                assert!((2..10).contains(&completed), "completed {completed}");
                assert_eq!(total, 500);
                break;
            }
            Event::Finished { .. } | Event::Failed { .. } => panic!("expected Cancelled"),
            _ => {}
        }
    }

    // A bad request fails with a message; the next good one works.
    let mut bad = config(3);
    bad.height = Some(31);
    worker.generate(request(), bad).expect("queued");
    let (_, end) = drain(&worker);
    let Event::Failed { error, .. } = end else {
        panic!("expected Failed")
    };
    assert!(error.contains("height 31"), "{error}");

    worker.generate(request(), config(2)).expect("queued");
    assert!(matches!(drain(&worker).1, Event::Finished { .. }));

    // A model that does not exist fails the same way.
    worker
        .generate(
            ModelRequest {
                spec: "/no/such/model".into(),
                ..request()
            },
            config(2),
        )
        .expect("queued");
    let (_, end) = drain(&worker);
    assert!(matches!(end, Event::Failed { ref error, .. } if error.contains("does not exist")));
}

#[test]
fn dropping_the_worker_mid_run_returns() {
    let worker = Worker::spawn(Box::new(|| {})).unwrap();
    worker.generate(request(), config(1000)).expect("queued");
    // Wait for the run to be under way, then drop without draining.
    loop {
        if let Event::Step(_) = worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            break;
        }
    }
    drop(worker); // must not hang
}

/// A panic while the worker handles a command becomes `Failed` with the panic's message and
/// location; the worker goes on (loading the model again) and the next run completes.
#[test]
fn a_panic_in_the_worker_is_reported_and_the_worker_goes_on() {
    let worker = Worker::spawn(Box::new(|| {})).unwrap();
    worker.generate(request(), config(2)).expect("queued");
    assert!(matches!(drain(&worker).1, Event::Finished { .. }));
    worker.inject_panic().expect("queued");
    let ev = worker.events().recv_timeout(Duration::from_secs(60)).expect("an answer");
    let Event::Failed { error, .. } = ev else {
        panic!("expected Failed")
    };
    assert!(error.contains("panicked") && error.contains("injected"), "{error}");
    assert!(error.contains(" at src/engine/mod.rs:"), "the location is named: {error}");
    worker.generate(request(), config(2)).expect("queued");
    let mut reloaded = false;
    loop {
        match worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::LoadingModel { .. } => reloaded = true,
            Event::Finished { .. } => break,
            Event::Failed { error, .. } | Event::DecodeFailed { error, .. } => panic!("{error}"),
            _ => {}
        }
    }
    assert!(reloaded, "the model is loaded again after a panic");
}

/// Decodes are latest-wins: a request still waiting when a newer one comes is replaced (and
/// reported to the caller as replaced), the newer one is answered; none is lost silently.
#[test]
fn decodes_are_latest_wins() {
    use diffusion_scope::engine::DecodeRequest;
    let worker = Worker::spawn(Box::new(|| {})).unwrap();
    // A long run keeps the worker busy while the decodes are asked.
    worker.generate(request(), config(1000)).expect("queued");
    loop {
        if let Event::Step(_) = worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            break;
        }
    }
    let ask = |id| {
        worker.decode(DecodeRequest {
            model: request(),
            id,
            latents: vec![0.1; 4 * 16 * 16],
            shape: [4, 16, 16],
        })
    };
    assert_eq!(ask(1), Ok(None));
    assert_eq!(ask(2), Ok(Some(1)), "the waiting request is replaced");
    worker.cancel();
    let mut answered = Vec::new();
    let mut cancelled = false;
    while answered.is_empty() {
        match worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::Cancelled { .. } => cancelled = true,
            Event::Decoded { id, image } => {
                assert_eq!((image.width, image.height), (32, 32));
                answered.push(id);
            }
            Event::DecodeFailed { error, .. } | Event::Failed { error, .. } => panic!("{error}"),
            _ => {}
        }
    }
    assert!(cancelled);
    assert_eq!(answered, vec![2]);
    // Nothing else is pending.
    assert!(worker.events().recv_timeout(Duration::from_millis(300)).is_err());
}

/// The CLI's and the app's way to run an experiment: through the worker, with progress,
/// per-item results and the report at the end.
#[test]
fn the_worker_runs_an_experiment() {
    use diffusion_scope::experiments::shapes_eval::EvalSettings;
    use diffusion_scope::experiments::{ExperimentEvent, ExperimentReport, ExperimentSettings};
    let worker = Worker::spawn(Box::new(|| {})).unwrap();
    let settings = EvalSettings {
        count: 2,
        steps: 2,
        ..EvalSettings::default()
    };
    worker
        .experiment(request(), ExperimentSettings::ShapesEval(settings.clone()))
        .expect("queued");
    let (mut progress, mut cases) = (0, Vec::new());
    let outcome = loop {
        match worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::Experiment(ev) => match *ev {
                ExperimentEvent::Progress(_) => progress += 1,
                ExperimentEvent::ShapesEvalCase(c) => {
                    assert!(c.run.image.is_some());
                    assert_eq!(c.run.meta.status, diffusion_scope::trace::RunStatus::Complete);
                    cases.push(c.case.index);
                }
                ExperimentEvent::CompareCell(_)
                | ExperimentEvent::SweepRun(_)
                | ExperimentEvent::SweepRow(_)
                | ExperimentEvent::SetImage(_)
                | ExperimentEvent::QualityRow(_)
                | ExperimentEvent::SaliencyStep(_)
                | ExperimentEvent::SaliencyRun(_)
                | ExperimentEvent::InterpFrame(_)
                | ExperimentEvent::DirectionImage(_) => {
                    panic!("another experiment's event")
                }
            },
            Event::ExperimentFinished { outcome, .. } => break outcome,
            Event::Failed { error, .. } => panic!("{error}"),
            _ => {}
        }
    };
    assert_eq!(cases, vec![0, 1]);
    assert!(progress >= 2);
    assert_eq!(outcome.stopped, None);
    let ExperimentReport::ShapesEval(report) = outcome.report else {
        panic!("another experiment's report")
    };
    assert!(report.complete);
    assert_eq!(report.settings, settings);
    assert_eq!(report.cases.len(), 2);
    assert_eq!(report.truth.len(), 2);
}
