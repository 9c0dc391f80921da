//! The sampler comparison (`experiments::compare`) on the tiny random model: the same noise
//! in every cell, the reference and its convergence check, the report's fields, cancel, and
//! the CLI's files and bad input.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use diffusion_scope::experiments::ExperimentEvent;
use diffusion_scope::experiments::Stop;
use diffusion_scope::experiments::compare::{self, CellRole, CellSpec, CompareSettings};

use crate::common::{fixtures, load_model};
use crate::parity::tempdir;

fn settings(cells: &str) -> CompareSettings {
    CompareSettings {
        prompt: "a red circle".into(),
        seed: 3,
        guidance: 5.0,
        cells: CellSpec::parse_list(cells).unwrap(),
        reference: CellSpec::parse("dpm++2m:40").unwrap(),
        fractions: 4,
        ..CompareSettings::default()
    }
}

#[test]
fn every_cell_starts_from_the_same_noise_and_is_measured_against_the_reference() {
    let sd = load_model("tiny-sd1");
    let spec = fixtures().join("tiny-sd1").display().to_string();
    let s = settings("ddim:5,ddim:10,dpm++2m:5,heun:4,euler-a:6");
    let mut outputs = Vec::new();
    let never = AtomicBool::new(false);
    let (report, stopped) = compare::run(&sd, &spec, &s, &never, &mut |ev| {
        if let ExperimentEvent::CompareCell(c) = ev {
            outputs.push(*c)
        }
    })
    .unwrap();
    assert_eq!(stopped, None);
    assert!(report.complete);
    assert!(report.is_world_caption);
    assert_eq!(outputs.len(), 6);
    assert_eq!(outputs[0].role, CellRole::Reference);

    // Same noise, same start (trailing spacing: t = 999 for every step count). DDIM and
    // DPM-Solver++ give the UNet the noise itself at the first step, so their first model
    // outputs are bit-identical.
    let cells: Vec<_> = outputs.iter().filter(|o| matches!(o.role, CellRole::Cell(_))).collect();
    for c in &cells {
        assert_eq!(c.run.meta.seed, 3);
        assert_eq!(c.run.meta.timesteps[0], 999.0, "{}", c.report.label);
    }
    let first = |i: usize| &cells[i].run.steps[0].model_output;
    assert_eq!(first(0), first(1));
    assert_eq!(first(0), first(2));
    assert_eq!(first(0), &outputs[0].run.steps[0].model_output, "the reference starts there too");

    // NFE, trajectory, distances.
    let by = |label: &str| report.cells.iter().find(|c| c.label == label).unwrap();
    assert_eq!(by("ddim:5").nfe, 5);
    assert_eq!(by("heun:4").nfe, 7, "Heun: 2 steps - 1 evaluations");
    for c in &report.cells {
        assert_eq!(c.trajectory.len(), 5);
        let last = c.trajectory.last().unwrap();
        assert_eq!((last.step, last.psnr_to_final), (None, 100.0));
        assert_eq!(c.trajectory[0].step, Some(0));
        assert!(c.recognisable_at.is_some_and(|f| (0.0..=1.0).contains(&f)));
        assert!(c.latent_rmse > 0.0 && c.image_psnr < 100.0, "{}", c.label);
    }
    assert!(by("euler-a:6").stochastic && !by("ddim:5").stochastic);
    // More DDIM steps land closer to the reference solution of the same ODE.
    assert!(by("ddim:10").latent_rmse < by("ddim:5").latent_rmse, "{report:#?}");

    // The reference check: the same solver at twice the steps, closer than any cell.
    let r = report.reference.as_ref().unwrap();
    assert_eq!(r.double.steps, 80);
    assert_eq!(r.nfe, 40);
    let closest = report
        .cells
        .iter()
        .filter(|c| !c.stochastic)
        .map(|c| c.latent_rmse)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(r.closest_cell_rmse, Some(closest));
    assert_eq!(r.converged, r.double_latent_rmse.unwrap() < closest);
    assert!(r.converged, "{r:?}");
}

#[test]
fn cancel_keeps_the_finished_cells() {
    let sd = load_model("tiny-sd1");
    let s = settings("ddim:3,ddim:4,ddim:6");
    let cancel = AtomicBool::new(false);
    let mut cells = 0;
    let (report, stopped) = compare::run(&sd, "tiny", &s, &cancel, &mut |ev| {
        if let ExperimentEvent::CompareCell(c) = ev
            && matches!(c.role, CellRole::Cell(_))
        {
            cells += 1;
            cancel.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(stopped, Some(Stop::Cancelled));
    assert_eq!((cells, report.cells.len()), (1, 1));
    assert!(!report.complete);
    assert!(report.reference.as_ref().is_some_and(|r| r.double_latent_rmse.is_some()));

    // Cancelled during the reference check: the reference is reported, its check is not.
    let cancel = AtomicBool::new(false);
    let (report, stopped) = compare::run(&sd, "tiny", &s, &cancel, &mut |ev| {
        if let ExperimentEvent::CompareCell(c) = ev
            && c.role == CellRole::Reference
        {
            cancel.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(stopped, Some(Stop::Cancelled));
    let r = report.reference.expect("the reference is reported");
    assert_eq!((r.double_latent_rmse, r.converged, report.cells.len()), (None, false, 0));
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .arg("compare")
        .args(["--model", fixtures().join("tiny-sd1").to_str().unwrap(), "--quiet"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_cli_writes_the_grid_the_report_and_the_plots() {
    let out = tempdir("compare-cli").join("cmp");
    let o = cli(&[
        "--prompt",
        "a blue square",
        "--samplers",
        "ddim:4,euler:4,dpm++2m:4",
        "--reference",
        "dpm++2m:20",
        "--fractions",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("reference dpm++2m:20") && stdout.contains("euler:4"), "{stdout}");
    for f in [
        "grid.png",
        "report.json",
        "report.csv",
        "convergence_vs_nfe.png",
        "convergence_vs_seconds.png",
        "cells/ddim_4.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let grid = image::open(out.join("grid.png")).unwrap();
    assert!(grid.height() > 4 * 96, "4 rows of frames: {}x{}", grid.width(), grid.height());
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.lines().nth(1).unwrap().starts_with("ddim:4,ddim,4,false,false,4,"), "{csv}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["complete"], true);
    assert_eq!(report["cells"].as_array().unwrap().len(), 3);
    // An earlier comparison is replaced only with --overwrite.
    let again = cli(&[
        "--prompt",
        "x",
        "--samplers",
        "ddim:2",
        "--reference",
        "ddim:4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
}

#[test]
fn bad_input_gets_one_line_naming_the_part() {
    let out = tempdir("compare-bad").join("cmp");
    let o = out.to_str().unwrap();
    for (args, expected) in [
        (vec!["--samplers", ""], "empty"),
        (vec!["--samplers", "ddim:10,foo:5"], "'foo:5'"),
        (vec!["--samplers", "ddim:0"], "at least 1"),
        (vec!["--samplers", "ddim"], "SAMPLER:STEPS"),
        (vec!["--samplers", "ddim:10,dpm++2m:200"], "also one of the cells"),
        (vec!["--samplers", "ddim:10", "--reference", "lms-karras:x"], "--reference"),
        (vec!["--samplers", "ddim:10", "--spacing", "sideways"], "--spacing"),
    ] {
        let r = cli(&[&["--prompt", "x", "--out", o][..], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?}");
        assert!(
            stderr.contains(expected) && stderr.trim().lines().count() == 1,
            "{args:?}: {stderr}"
        );
        assert!(!out.exists(), "{args:?}: --out created before the input was checked");
    }
}

#[test]
fn the_sweep_uses_the_same_seeds_at_every_guidance() {
    use diffusion_scope::experiments::sweep::{self, SweepSettings};
    let sd = load_model("tiny-sd1");
    let s = SweepSettings {
        prompt: "a red circle".into(),
        guidances: vec![1.0, 5.0],
        seeds: vec![4, 9],
        steps: 3,
        sampler: Some(diffusion_scope::sampling::SamplerKind::Ddim),
        snapshots: true,
        ..SweepSettings::default()
    };
    let mut runs = Vec::new();
    // The order of the streamed runs and rows: (guidance index, seed index) or (w, None).
    let mut order: Vec<(f32, Option<usize>)> = Vec::new();
    let never = AtomicBool::new(false);
    let (report, stopped) = sweep::run(&sd, "tiny", &s, &never, &mut |ev| match ev {
        ExperimentEvent::SweepRun(o) => {
            order.push((o.guidance_index as f32, Some(o.seed_index)));
            runs.push(*o)
        }
        ExperimentEvent::SweepRow(r) => order.push((r.guidance, None)),
        _ => {}
    })
    .unwrap();
    assert_eq!(stopped, None);
    assert!(report.complete);
    assert_eq!(runs.len(), 4);
    // Each guidance value's numbers stream as soon as its runs are done.
    assert_eq!(
        order,
        [
            (0.0, Some(0)),
            (0.0, Some(1)),
            (1.0, None),
            (1.0, Some(0)),
            (1.0, Some(1)),
            (5.0, None)
        ]
    );
    let at = |g: usize, si: usize| runs.iter().find(|o| (o.guidance_index, o.seed_index) == (g, si)).unwrap();
    for si in 0..2 {
        assert_eq!(at(0, si).run.meta.seed, at(1, si).run.meta.seed);
        assert_eq!(at(0, si).run.meta.guidance, 1.0);
        assert_eq!(at(1, si).run.meta.guidance, 5.0);
    }
    // Different seeds differ; the same seed at another w is another image from the same noise.
    assert_ne!(at(0, 0).run.steps[2].latents, at(0, 1).run.steps[2].latents);
    let o = at(1, 0);
    assert_eq!(o.snapshots.len(), 5);
    assert_eq!(o.snapshots.iter().map(|s| s.step).collect::<Vec<_>>(), vec![0, 0, 1, 2, 2]);
    assert_eq!(&o.snapshots[4].x0.width, &o.run.image.as_ref().unwrap().width);
    assert_eq!(report.rows.len(), 2);
    for r in &report.rows {
        assert_eq!(r.seeds, 2);
        let d = r.latent_diversity.unwrap();
        let expected = diffusion_scope::analysis::rms_diff(
            &at(report.rows.iter().position(|x| x == r).unwrap(), 0).run.steps[2].latents,
            &at(report.rows.iter().position(|x| x == r).unwrap(), 1).run.steps[2].latents,
        ) as f64;
        assert_eq!(d, expected, "one pair: its RMSE");
        assert!((0.0..=1.0).contains(&r.saturation) && (0.0..=0.5).contains(&r.contrast));
    }
}

#[test]
fn the_sweep_cli_writes_its_files() {
    let out = tempdir("sweep-cli").join("sw");
    let o = Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args(["sweep", "--model", fixtures().join("tiny-sd1").to_str().unwrap(), "--quiet"])
        .args([
            "--prompt",
            "a red circle",
            "--guidance",
            "1,4",
            "--seeds",
            "0..2",
            "--steps",
            "2",
            "--snapshots",
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "grid.png",
        "snapshots.png",
        "report.json",
        "report.csv",
        "diversity_vs_guidance.png",
        "saturation_vs_guidance.png",
        "images/w4_seed2.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let bad = Command::new(env!("CARGO_BIN_EXE_diffusion-scope"))
        .args(["sweep", "--prompt", "x", "--guidance", "1,,x", "--out", "/nonexistent/never"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--guidance") && stderr.contains("'x'"), "{stderr}");
}
