//! Quality metrics under the Compare tab's plot: the CLIP score of every row (its images
//! against the prompt) and, with a real-set feature file, FID / KID / precision / recall (the
//! experiment `experiments::quality`, run by the worker as `diffusion-scope metrics` computes
//! them). Rows fill in as they are scored; "Copy CSV" puts the table on the clipboard.

use std::path::PathBuf;

use eframe::egui::{self, RichText};

use crate::experiments::ExperimentSettings;
use crate::experiments::quality::{QualitySet, QualitySettings};
use crate::metrics::MetricsReport;
use crate::ui::store::QualityOf;
use crate::ui::{Action, App, CompareMode};

/// The rows of the shown comparison or sweep as sets to score, and which view they are.
fn sets(app: &App) -> Option<(QualityOf, Vec<QualitySet>)> {
    match app.settings.compare.mode {
        CompareMode::Samplers => {
            let cmp = app.store.comparison.as_ref()?;
            let sets = cmp
                .rows
                .iter()
                .map(|r| QualitySet {
                    label: r.report.label.clone(),
                    images: r.run.image.iter().cloned().collect(),
                    captions: r.run.image.iter().map(|_| cmp.settings.prompt.clone()).collect(),
                })
                .collect();
            Some((QualityOf::Comparison(cmp.generation), sets))
        }
        CompareMode::Guidance => {
            let sw = app.store.sweep.as_ref()?;
            let sets = sw
                .settings
                .guidances
                .iter()
                .enumerate()
                .map(|(gi, w)| {
                    let images: Vec<_> = (0..sw.settings.seeds.len())
                        .filter_map(|si| sw.cells.get(&(gi, si)).map(|c| c.image.clone()))
                        .collect();
                    QualitySet {
                        label: format!("w = {w}"),
                        captions: vec![sw.settings.prompt.clone(); images.len()],
                        images,
                    }
                })
                .collect();
            Some((QualityOf::Sweep(sw.generation), sets))
        }
    }
}

fn settings(app: &App, sets: Vec<QualitySet>) -> Result<QualitySettings, String> {
    let c = &app.settings.compare;
    let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let real = opt(&c.real_features).map(PathBuf::from);
    if let Some(p) = &real
        && !p.is_file()
        && p.as_os_str() != "shapes"
    {
        return Err(format!("{}: no such feature file", p.display()));
    }
    let s = QualitySettings {
        sets,
        clip_model: opt(&c.clip_model),
        real_features: real,
        inception_weights: opt(&c.inception_weights).map(PathBuf::from),
        // Rows whose prompt is a shapes-world caption get the detector's accuracy.
        detector: true,
    };
    s.validate()?;
    Ok(s)
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn csv(labels: &[String], rows: &[Option<&MetricsReport>], detector: &[Option<f64>]) -> String {
    let mut out = String::from("row,n,clip_score,fid,kid_mean,kid_std,precision,recall,is_mean,detector_pct,network\n");
    let f = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for ((label, r), d) in labels.iter().zip(rows).zip(detector) {
        if let Some(r) = r {
            out.push_str(&format!(
                "\"{}\",{},{},{},{},{},{},{},{},{},{}\n",
                label.replace('"', "\"\""),
                r.n_fake,
                f(r.clip_score),
                f(r.fid),
                f(r.kid_mean),
                f(r.kid_std),
                f(r.precision),
                f(r.recall),
                f(r.is_mean),
                f(*d),
                r.network.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

pub fn quality_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.separator();
    ui.label(RichText::new("Quality metrics").strong());
    let c = &mut app.settings.compare;
    egui::Grid::new("quality-settings").num_columns(2).show(ui, |ui| {
        let l = ui.label("CLIP model");
        ui.add(egui::TextEdit::singleline(&mut c.clip_model).desired_width(260.0).hint_text("none"))
            .on_hover_text("shapes (the shapes world's CLIP, for the bundled model), or a Hugging Face CLIP folder or hub id: the CLIP score of every row against the prompt (empty: none)")
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Real features");
        ui.add(
            egui::TextEdit::singleline(&mut c.real_features)
                .desired_width(260.0)
                .hint_text("FEATS.safetensors (metrics features)"),
        )
        .on_hover_text(
            "A feature file of the real set (diffusion-scope metrics features): FID, KID, precision and recall of every row against it",
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Inception weights");
        ui.add(
            egui::TextEdit::singleline(&mut c.inception_weights)
                .desired_width(260.0)
                .hint_text("torch hub cache"),
        )
        .labelled_by(l.id);
        ui.end_row();
    });
    let found = sets(app);
    let asked = match &found {
        None => Err("run a comparison or a sweep first".to_string()),
        Some((_, s)) => settings(app, s.clone()),
    };
    let busy = app.store.busy();
    let mut send = None;
    ui.horizontal(|ui| {
        if ui
            .add_enabled(asked.is_ok() && !busy, egui::Button::new("Compute metrics"))
            .clicked()
        {
            send = asked.as_ref().ok().cloned();
        }
        if let Err(e) = &asked {
            ui.label(RichText::new(e).color(crate::ui::theme::ERROR));
        }
    });
    if let Some(s) = send {
        app.send(Action::RunExperiment(ExperimentSettings::Quality(s)));
    }
    let shown = found.map(|(of, _)| of);
    let Some(q) = app.store.quality.as_ref().filter(|q| Some(q.of) == shown) else {
        ui.label(RichText::new("No metrics for these rows yet.").weak());
        return;
    };
    let rows: Vec<Option<&MetricsReport>> = q.rows.iter().map(|r| r.as_ref().map(|r| &r.metrics)).collect();
    let detector: Vec<Option<f64>> = q
        .rows
        .iter()
        .map(|r| r.as_ref().and_then(|r| r.detector.as_ref()).map(|d| d.accuracy()))
        .collect();
    let det = detector.iter().any(Option::is_some);
    if ui
        .add_enabled(rows.iter().any(Option::is_some), egui::Button::new("Copy CSV"))
        .clicked()
    {
        ui.ctx().copy_text(csv(&q.labels, &rows, &detector));
    }
    let has = |f: &dyn Fn(&MetricsReport) -> bool| rows.iter().flatten().any(|r| f(r));
    let (clip, fid, kid, pr) = (
        has(&|r| r.clip_score.is_some()),
        has(&|r| r.fid.is_some()),
        has(&|r| r.kid_mean.is_some()),
        has(&|r| r.precision.is_some()),
    );
    egui::Grid::new("quality-table").striped(true).num_columns(8).show(ui, |ui| {
        ui.label(RichText::new("row").strong());
        ui.label(RichText::new("n").strong());
        for (on, name) in [
            (clip, "CLIP score"),
            (fid, "FID"),
            (kid, "KID"),
            (pr, "precision"),
            (pr, "recall"),
            (det, "detector %"),
        ] {
            if on {
                ui.label(RichText::new(name).strong());
            }
        }
        ui.end_row();
        for ((label, r), d) in q.labels.iter().zip(&rows).zip(&detector) {
            let l = ui.label(label);
            match r {
                None => {
                    ui.label(RichText::new("…").weak());
                }
                Some(r) => {
                    if !r.warnings.is_empty() {
                        l.on_hover_text(r.warnings.join("\n"));
                    }
                    ui.label(r.n_fake.to_string());
                    if clip {
                        ui.label(cell(r.clip_score, 2));
                    }
                    if fid {
                        ui.label(cell(r.fid, 2));
                    }
                    if kid {
                        ui.label(format!("{} ± {}", cell(r.kid_mean, 4), cell(r.kid_std, 4)));
                    }
                    if pr {
                        ui.label(cell(r.precision, 3));
                        ui.label(cell(r.recall, 3));
                    }
                    if det {
                        ui.label(cell(*d, 0));
                    }
                }
            }
            ui.end_row();
        }
    });
    curves_ui(app, ui);
    let Some(q) = app.store.quality.as_ref() else { return };
    let rows: Vec<Option<&MetricsReport>> = q.rows.iter().map(|r| r.as_ref().map(|r| &r.metrics)).collect();
    let warnings: Vec<&String> = rows.iter().flatten().flat_map(|r| &r.warnings).collect();
    if let Some(w) = warnings.first() {
        ui.label(RichText::new(format!("{w} (hover a row for its notes)")).weak());
    }
    if let Some(crate::experiments::Stop::Cancelled) = q.stopped {
        ui.label(RichText::new("cancelled: the rows above were scored").weak());
    }
}

/// The metrics of the rows along w (sweep) or UNet evaluations (comparison): FID, CLIP score and
/// detector accuracy, each on its own plot (their scales differ), the FID minimum marked.
fn curves_ui(app: &mut App, ui: &mut egui::Ui) {
    let Some(q) = app.store.quality.as_ref() else { return };
    let x_label = match q.of {
        QualityOf::Sweep(_) => "guidance w",
        QualityOf::Comparison(_) => "UNet evaluations",
    };
    let points = |f: &dyn Fn(&crate::experiments::quality::QualityRow) -> Option<f64>| -> Vec<[f64; 2]> {
        let mut v: Vec<[f64; 2]> = q
            .rows
            .iter()
            .zip(&q.xs)
            .filter_map(|(r, &x)| r.as_ref().and_then(|r| f(r)).map(|y| [x, y]))
            .filter(|p| p[1].is_finite())
            .collect();
        v.sort_by(|a, b| a[0].total_cmp(&b[0]));
        v
    };
    let curves: Vec<(&str, Vec<[f64; 2]>)> = [
        ("FID", points(&|r| r.metrics.fid)),
        ("CLIP score", points(&|r| r.metrics.clip_score)),
        ("detector accuracy (%)", points(&|r| r.detector.as_ref().map(|d| d.accuracy()))),
    ]
    .into_iter()
    .filter(|(_, p)| p.len() >= 2)
    .collect();
    if curves.is_empty() {
        return;
    }
    let mut export = None;
    for (i, (name, pts)) in curves.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("{name} vs {x_label}")).strong());
            if ui.small_button("Export plot…").clicked() {
                export = Some(i);
            }
        });
        let best = (*name == "FID")
            .then(|| pts.iter().copied().min_by(|a, b| a[1].total_cmp(&b[1])))
            .flatten();
        // The wheel scrolls the column: these small plots neither zoom nor pan.
        egui_plot::Plot::new(("quality-curve", i))
            .height(150.0)
            .allow_scroll(false)
            .allow_zoom(false)
            .allow_drag(false)
            .allow_boxed_zoom(false)
            .x_axis_label(x_label)
            .legend(egui_plot::Legend::default())
            .show(ui, |plot| {
                plot.line(egui_plot::Line::new(*name, egui_plot::PlotPoints::from(pts.clone())));
                plot.points(egui_plot::Points::new(*name, egui_plot::PlotPoints::from(pts.clone())).radius(3.0));
                if let Some(b) = best {
                    plot.points(
                        egui_plot::Points::new(format!("minimum at {}", b[0]), egui_plot::PlotPoints::from(vec![b]))
                            .radius(6.0)
                            .color(crate::ui::theme::ERROR),
                    );
                }
            });
    }
    if let Some(i) = export {
        let (name, pts) = &curves[i];
        let mut series = vec![crate::ui::export::Series {
            label: name.to_string(),
            points: pts.iter().map(|p| (p[0], p[1])).collect(),
        }];
        if *name == "FID"
            && let Some(b) = pts.iter().min_by(|a, b| a[1].total_cmp(&b[1]))
        {
            series.push(crate::ui::export::Series {
                label: "FID minimum".into(),
                points: vec![(b[0], b[1])],
            });
        }
        let fig = crate::ui::export::plot(&format!("{name} vs {x_label}"), x_label, name, &series, false);
        let file = format!(
            "{}_vs_{}.png",
            name.split(' ').next().unwrap_or("metric").to_lowercase(),
            if x_label.starts_with('g') { "guidance" } else { "nfe" }
        );
        let start = super::exports::default_path(app, &file);
        app.send(Action::AskPath(
            crate::ui::files::PathPurpose::ExportPng(std::sync::Arc::new(fig)),
            start,
        ));
    }
}
