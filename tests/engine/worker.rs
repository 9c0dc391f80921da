//! The worker thread end to end: a run streams to completion, cancel stops a run, a failed
//! run reports its error and the worker stays usable.

use std::time::Duration;

use crate::common::fixtures;
use diffusion_scope::engine::{Event, ModelRequest, Worker};
use diffusion_scope::model::unet::CaptureMode;
use diffusion_scope::sampling::SamplerKind;
use diffusion_scope::sampling::denoise::RunConfig;

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

    worker.generate(request(), config(6));
    let (steps, end) = drain(&worker);
    assert_eq!(steps, 6);
    let Event::Finished { image, .. } = end else {
        panic!("expected Finished")
    };
    assert_eq!((image.width, image.height), (32, 32));

    // Cancel after the second step of a long run.
    worker.generate(request(), config(500));
    let mut seen = 0;
    loop {
        match worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::Step(_) => {
                seen += 1;
                if seen == 2 {
                    worker.cancel();
                }
            }
            Event::Cancelled { completed, total } => {
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
    worker.generate(request(), bad);
    let (_, end) = drain(&worker);
    let Event::Failed { error } = end else { panic!("expected Failed") };
    assert!(error.contains("height 31"), "{error}");

    worker.generate(request(), config(2));
    assert!(matches!(drain(&worker).1, Event::Finished { .. }));

    // A model that does not exist fails the same way.
    worker.generate(
        ModelRequest {
            spec: "/no/such/model".into(),
            ..request()
        },
        config(2),
    );
    let (_, end) = drain(&worker);
    assert!(matches!(end, Event::Failed { ref error } if error.contains("does not exist")));
}

#[test]
fn dropping_the_worker_mid_run_returns() {
    let worker = Worker::spawn(Box::new(|| {})).unwrap();
    worker.generate(request(), config(1000));
    // Wait for the run to be under way, then drop without draining.
    loop {
        if let Event::Step(_) = worker.events().recv_timeout(Duration::from_secs(120)).unwrap() {
            break;
        }
    }
    drop(worker); // must not hang
}
