//! The Compare tab: the sampler comparison (the same experiment as `diffusion-scope compare`,
//! run by the worker) with the prompt, seed, guidance and size of the run controls. Rows fill
//! in as cells finish; one scrubber moves every row to the same fraction of its run; hovering
//! a frame shows the row's numbers; clicking it opens that run (with its attention maps) in
//! the run view. The convergence plot sits beside the grid; grid and plot export as PNGs.

use std::sync::Arc;

use eframe::egui::{self, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use super::exports::default_path;
use crate::experiments::ExperimentSettings;
use crate::experiments::compare::{self, CellRole, CellSpec, CompareSettings};
use crate::experiments::sweep::{self, GuidanceReport, SweepSettings};
use crate::ui::export::{self, Series};
use crate::ui::files::PathPurpose;
use crate::ui::store::{Activity, Comparison, ComparisonRow, SweepView};
use crate::ui::{Action, App, CompareMode};

/// The settings the tab would send, or what is wrong with them.
fn settings(app: &App) -> Result<CompareSettings, String> {
    let c = &app.settings.compare;
    let s = CompareSettings {
        prompt: app.settings.prompt.clone(),
        negative_prompt: app.settings.negative_prompt.clone(),
        seed: app.settings.seed,
        guidance: app.settings.guidance,
        cells: CellSpec::parse_list(&c.samplers).map_err(|e| format!("samplers: {e}"))?,
        reference: CellSpec::parse(&c.reference).map_err(|e| format!("reference: {e}"))?,
        fractions: c.fractions,
        captions: c.captions,
        height: app.settings.size.map(|(_, h)| h),
        width: app.settings.size.map(|(w, _)| w),
        ..CompareSettings::default()
    };
    s.validate()?;
    Ok(s)
}

fn column_label(k: usize, n: usize) -> String {
    if k == n {
        "final".into()
    } else {
        format!("{:.0}%", 100.0 * k as f64 / n as f64)
    }
}

/// The numbers of a row, one per line (hover text).
fn row_numbers(r: &ComparisonRow) -> String {
    let c = &r.report;
    let mut s = format!("{}\n{} UNet evaluations, {:.2} s", c.label, c.nfe, c.secs);
    match r.role {
        CellRole::Reference => s.push_str("\nthe reference solution"),
        CellRole::Cell(_) => {
            s.push_str(&format!(
                "\nto the reference: latent RMSE {:.5}, image PSNR {:.1} dB",
                c.latent_rmse, c.image_psnr
            ));
            if c.stochastic {
                s.push_str("\n(ancestral sampler: not an ODE solver)");
            }
        }
    }
    let pct = |v: Option<f64>| v.map_or("never".to_string(), |f| format!("{:.0}% of the run", f * 100.0));
    s.push_str(&format!("\nrecognisable at {}", pct(c.recognisable_at)));
    if c.trajectory.iter().any(|p| p.detector_correct.is_some()) {
        s.push_str(&format!("\ndetector right from {}", pct(c.detector_at)));
    }
    if let Some(q) = &c.quality {
        s.push_str(&format!("\ndetector accuracy {:.1}% over {} captions", q.accuracy(), q.captions));
    }
    s.push_str("\n(click: open this run)");
    s
}

pub fn compare_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        let m = &mut app.settings.compare.mode;
        ui.selectable_value(m, CompareMode::Samplers, "Samplers");
        ui.selectable_value(m, CompareMode::Guidance, "Guidance");
    });
    match app.settings.compare.mode {
        CompareMode::Samplers => samplers_ui(app, ui),
        CompareMode::Guidance => sweep_ui(app, ui),
    }
}

fn samplers_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.heading("Sampler comparison");
    ui.label(
        RichText::new(
            "The prompt, seed, guidance and size of the run controls through several samplers from the same noise \
             (trailing spacing: one initial value problem), each measured against a reference solution.",
        )
        .weak(),
    );
    let c = &mut app.settings.compare;
    egui::Grid::new("compare-settings").num_columns(2).show(ui, |ui| {
        let l = ui.label("Samplers");
        ui.add(egui::TextEdit::singleline(&mut c.samplers).desired_width(420.0))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Reference");
        ui.add(egui::TextEdit::singleline(&mut c.reference).desired_width(160.0))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Columns");
        ui.add(egui::DragValue::new(&mut c.fractions).range(1..=20)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Captions per cell");
        ui.add(egui::DragValue::new(&mut c.captions).range(0..=500)).labelled_by(l.id);
        ui.end_row();
    });
    let asked = settings(app);
    if let Some(s) = run_controls(app, ui, "comparison", asked) {
        app.view.compare_fraction = s.fractions;
        app.send(Action::RunExperiment(ExperimentSettings::Compare(s)));
    }
    let Some(cmp) = app.store.comparison.as_ref() else {
        ui.label(RichText::new("No comparison yet.").weak());
        return;
    };
    let n = cmp.settings.fractions;
    app.view.compare_fraction = app.view.compare_fraction.min(n);
    if let Some(r) = cmp.report.as_ref().and_then(|r| r.reference.as_ref()) {
        let (text, ok) = match r.double_latent_rmse {
            None => (format!("Reference {}: its check at {} did not run", r.spec, r.double), false),
            Some(d) => (
                format!(
                    "Reference {} doubled to {}: latent RMSE {d:.5}: {}",
                    r.spec,
                    r.double,
                    if r.converged {
                        "converged (closer than every deterministic cell)"
                    } else {
                        "NOT converged: use more reference steps"
                    }
                ),
                r.converged,
            ),
        };
        ui.label(RichText::new(text).color(if ok { ui.visuals().text_color() } else { crate::ui::theme::ERROR }));
    }
    let mut k = app.view.compare_fraction;
    let mut export: Option<(image::RgbaImage, &str)> = None;
    ui.horizontal(|ui| {
        let l = ui.label("Fraction of the run");
        ui.add(egui::Slider::new(&mut k, 0..=n).custom_formatter(move |v, _| column_label(v as usize, n)))
            .labelled_by(l.id);
        if ui.add_enabled(!cmp.rows.is_empty(), egui::Button::new("Export grid…")).clicked() {
            export = Some((grid_figure(cmp), "compare_grid.png"));
        }
        if ui.add_enabled(cmp.rows.len() > 1, egui::Button::new("Export plot…")).clicked() {
            export = Some((plot_figure(cmp), "compare_convergence.png"));
        }
    });
    app.view.compare_fraction = k;
    if let Some((fig, name)) = export {
        let start = default_path(app, name);
        app.send(Action::AskPath(PathPurpose::ExportPng(Arc::new(fig)), start));
    }
    let k = app.view.compare_fraction;
    let mut open = None;
    // The grid as wide as its rows (label, large frame, one small frame per column), the plot
    // in the rest.
    let avail = ui.available_size();
    let grid_w = (180.0 + 124.0 + (n + 1) as f32 * 42.0 + 16.0).min(avail.x * 0.72);
    ui.horizontal_top(|ui| {
        ui.allocate_ui_with_layout(egui::vec2(grid_w, avail.y), egui::Layout::top_down(egui::Align::Min), |ui| {
            egui::ScrollArea::both()
                .id_salt("compare-grid")
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    open = grid_ui(app, ui, k);
                });
        });
        ui.separator();
        ui.vertical(|ui| {
            egui::ScrollArea::both().id_salt("compare-side").show(ui, |ui| {
                if let Some(cmp) = app.store.comparison.as_ref() {
                    convergence_plot(cmp, ui);
                }
                super::quality::quality_ui(app, ui);
            });
        });
    });
    if let Some(row) = open {
        app.send(Action::OpenComparisonRow(row));
    }
}

/// The rows: label and numbers, the frame at column `k` (large), and every column (small, the
/// scrubbed one framed). Returns the row clicked.
fn grid_ui(app: &mut App, ui: &mut egui::Ui, k: usize) -> Option<usize> {
    app.view.compare_rects.clear();
    let cmp = app.store.comparison.as_ref()?;
    if cmp.rows.is_empty() {
        ui.label(RichText::new("The rows appear as their runs finish (the reference first).").weak());
    }
    let generation = cmp.generation;
    let mut clicked = None;
    for (ri, row) in cmp.rows.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.set_width(170.0);
                let name = match row.role {
                    CellRole::Reference => format!("{} (reference)", row.report.label),
                    CellRole::Cell(_) => row.report.label.clone(),
                };
                ui.label(RichText::new(name).strong());
                ui.label(RichText::new(format!("{} NFE · {:.2} s", row.report.nfe, row.report.secs)).small());
                if let CellRole::Cell(_) = row.role {
                    ui.label(RichText::new(format!("RMSE {:.4} · {:.1} dB", row.report.latent_rmse, row.report.image_psnr)).small());
                }
            });
            let ctx = ui.ctx().clone();
            let mut tex = |col: usize| {
                app.view
                    .compare_textures
                    .entry((0, generation, ri, col))
                    .or_insert_with(|| {
                        let img = &row.frames[col];
                        let color = egui::ColorImage::from_rgb([img.width, img.height], &img.pixels);
                        ctx.load_texture(format!("compare-{generation}-{ri}-{col}"), color, egui::TextureOptions::NEAREST)
                    })
                    .clone()
            };
            if let Some(big) = (k < row.frames.len()).then(|| tex(k)) {
                let r = ui
                    .add(
                        egui::Image::new(&big)
                            .fit_to_exact_size(egui::vec2(112.0, 112.0))
                            .sense(egui::Sense::click()),
                    )
                    .on_hover_text(row_numbers(row));
                app.view.compare_rects.push((ri, k, r.rect));
                if r.clicked() {
                    clicked = Some(ri);
                }
            }
            for col in 0..row.frames.len() {
                let t = tex(col);
                let r = ui.add(egui::Image::new(&t).fit_to_exact_size(egui::vec2(36.0, 36.0)));
                if col == k {
                    ui.painter().rect_stroke(
                        r.rect.expand(1.5),
                        0.0,
                        egui::Stroke::new(2.0, ui.visuals().selection.stroke.color),
                        egui::StrokeKind::Outside,
                    );
                }
            }
        });
    }
    clicked
}

/// "Run WHAT" and "Cancel WHAT" (the settings' error beside them when they are refused), the
/// progress bar while an experiment runs, and a separator. Returns the settings to run when
/// Run was clicked.
fn run_controls<S>(app: &mut App, ui: &mut egui::Ui, what: &str, asked: Result<S, String>) -> Option<S> {
    let busy = app.store.busy();
    let mut run = None;
    ui.horizontal(|ui| {
        if ui
            .add_enabled(asked.is_ok() && !busy, egui::Button::new(format!("Run {what}")))
            .clicked()
        {
            run = Some(());
        }
        if ui.add_enabled(busy, egui::Button::new(format!("Cancel {what}"))).clicked() {
            app.send(Action::Cancel);
        }
        if let Err(e) = &asked {
            ui.label(RichText::new(e).color(crate::ui::theme::ERROR));
        }
    });
    if let Activity::Experiment(p) = &app.store.activity {
        ui.add(egui::ProgressBar::new(p.done as f32 / p.total.max(1) as f32).text(format!("{}/{}  {}", p.done, p.total, p.message)));
    }
    ui.separator();
    run.and(asked.ok())
}

/// A series drawn as a line with markers in the `i`-th colour of egui_plot's palette (one
/// colour for both, so the legend entry matches).
fn line_with_points(plot: &mut egui_plot::PlotUi, name: &str, pts: Vec<[f64; 2]>, i: usize) {
    let golden = 0.618_034_f32;
    let colour: egui::Color32 = egui::ecolor::Hsva::new((i as f32 * golden).fract(), 0.85, 0.5, 1.0).into();
    plot.line(Line::new(name, PlotPoints::from(pts.clone())).color(colour));
    plot.points(Points::new(name, PlotPoints::from(pts)).radius(3.0).color(colour));
}

/// Latent RMSE to the reference against NFE, one line per sampler (log10 axis).
fn convergence_plot(cmp: &Comparison, ui: &mut egui::Ui) {
    ui.label(RichText::new("Distance to the reference (log10 latent RMSE) vs UNet evaluations").strong());
    let series = by_sampler(cmp, |c| Some((c.nfe as f64, c.latent_rmse)));
    Plot::new("compare-convergence")
        .legend(Legend::default())
        .height(280.0)
        .x_axis_label("NFE")
        .y_axis_label("log10 latent RMSE")
        .show(ui, |plot| {
            for (i, s) in series.iter().enumerate() {
                let pts: Vec<[f64; 2]> = s.points.iter().filter(|p| p.1 > 0.0).map(|&(x, y)| [x, y.log10()]).collect();
                line_with_points(plot, &s.label, pts, i);
            }
        });
    // With held-out captions: the detector's accuracy against NFE.
    let quality = by_sampler(cmp, |c| c.quality.as_ref().map(|q| (c.nfe as f64, q.accuracy())));
    if quality.iter().any(|s| !s.points.is_empty()) {
        ui.label(
            RichText::new(format!(
                "Detector accuracy (%) over {} captions vs UNet evaluations",
                cmp.settings.captions
            ))
            .strong(),
        );
        // Accuracy rises with NFE: the legend goes where the points are not.
        Plot::new("compare-quality")
            .legend(Legend::default().position(egui_plot::Corner::RightBottom))
            .height(220.0)
            .x_axis_label("NFE")
            .show(ui, |plot| {
                for (i, s) in quality.iter().enumerate() {
                    let pts: Vec<[f64; 2]> = s.points.iter().map(|&(x, y)| [x, y]).collect();
                    line_with_points(plot, &s.label, pts, i);
                }
            });
    }
}

fn by_sampler(cmp: &Comparison, value: impl Fn(&compare::CellReport) -> Option<(f64, f64)>) -> Vec<Series> {
    let cells = cmp.rows.iter().filter(|r| matches!(r.role, CellRole::Cell(_))).map(|r| &r.report);
    compare::by_sampler(cells, value)
        .into_iter()
        .map(|(label, points)| Series { label, points })
        .collect()
}

fn grid_figure(cmp: &Comparison) -> image::RgbaImage {
    let n = cmp.settings.fractions;
    let cols: Vec<String> = (0..=n).map(|k| column_label(k, n)).collect();
    let rows: Vec<(String, String, Vec<crate::trace::RgbImage>)> = cmp
        .rows
        .iter()
        .map(|r| {
            let name = match r.role {
                CellRole::Reference => format!("{} (reference)", r.report.label),
                CellRole::Cell(_) => r.report.label.clone(),
            };
            (name, format!("{} NFE · {:.2} s", r.report.nfe, r.report.secs), r.frames.clone())
        })
        .collect();
    let s = &cmp.settings;
    export::grid(
        &rows,
        &cols,
        96,
        &format!("{:?}, seed {}, guidance {}", s.prompt, s.seed, s.guidance),
    )
}

fn plot_figure(cmp: &Comparison) -> image::RgbaImage {
    export::plot(
        &format!("Distance to the reference ({}): final latents", cmp.settings.reference),
        "UNet evaluations (NFE)",
        "latent RMSE",
        &by_sampler(cmp, |c| Some((c.nfe as f64, c.latent_rmse))),
        true,
    )
}

/// The sweep the Guidance mode would send, or what is wrong with it.
fn sweep_settings(app: &App) -> Result<SweepSettings, String> {
    let c = &app.settings.compare;
    let s = SweepSettings {
        prompt: app.settings.prompt.clone(),
        negative_prompt: app.settings.negative_prompt.clone(),
        guidances: sweep::parse_guidances(&c.guidances).map_err(|e| format!("guidance: {e}"))?,
        seeds: sweep::parse_seeds(&c.seeds).map_err(|e| format!("seeds: {e}"))?,
        steps: app.settings.steps,
        sampler: app.settings.sampler,
        captions: c.captions,
        snapshots: c.snapshots,
        height: app.settings.size.map(|(_, h)| h),
        width: app.settings.size.map(|(w, _)| w),
        ..SweepSettings::default()
    };
    s.validate()?;
    Ok(s)
}

/// The Guidance mode: the same seeds at every w (the experiment of `diffusion-scope sweep`),
/// rows = w, columns = seeds, filled as runs finish; the diversity plot beside.
fn sweep_ui(app: &mut App, ui: &mut egui::Ui) {
    ui.heading("Guidance sweep");
    ui.label(
        RichText::new(
            "The prompt, steps, sampler and size of the run controls at every guidance value, with the same seeds. \
             With \"re-run when the slider is released … as a new row\" the guidance slider adds rows here.",
        )
        .weak(),
    );
    let c = &mut app.settings.compare;
    egui::Grid::new("sweep-settings").num_columns(2).show(ui, |ui| {
        let l = ui.label("Guidance values");
        ui.add(egui::TextEdit::singleline(&mut c.guidances).desired_width(240.0))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Seeds");
        ui.add(egui::TextEdit::singleline(&mut c.seeds).desired_width(120.0))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Captions per value");
        ui.add(egui::DragValue::new(&mut c.captions).range(0..=500)).labelled_by(l.id);
        ui.end_row();
        ui.label("");
        ui.checkbox(&mut c.snapshots, "Timestep snapshots (x0 and x_t at t ~ T, 3T/4, T/2, T/4, 0)");
        ui.end_row();
    });
    let asked = sweep_settings(app);
    if let Some(s) = run_controls(app, ui, "sweep", asked) {
        app.send(Action::RunExperiment(ExperimentSettings::Sweep(s)));
    }
    let Some(sw) = app.store.sweep.as_ref() else {
        ui.label(RichText::new("No sweep yet.").weak());
        return;
    };
    let has_snapshots = sw.cells.values().any(|c| !c.snapshots.is_empty());
    let mut of = app
        .view
        .sweep_snapshots_of
        .filter(|&i| has_snapshots && i < sw.settings.seeds.len());
    let mut export = None;
    ui.horizontal(|ui| {
        if has_snapshots {
            let l = ui.label("Columns");
            let name = |of: Option<usize>| match of {
                None => "seeds".to_string(),
                Some(i) => format!("timesteps of seed {}", sw.settings.seeds[i]),
            };
            egui::ComboBox::from_id_salt("sweep-columns")
                .selected_text(name(of))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut of, None, name(None));
                    for i in 0..sw.settings.seeds.len() {
                        ui.selectable_value(&mut of, Some(i), name(Some(i)));
                    }
                })
                .response
                .labelled_by(l.id);
        }
        if ui.add_enabled(!sw.cells.is_empty(), egui::Button::new("Export grid…")).clicked() {
            export = Some(match of {
                None => sweep_grid_figure(sw),
                Some(si) => snapshot_grid_figure(sw, si),
            });
        }
    });
    app.view.sweep_snapshots_of = of;
    if let Some(fig) = export {
        let name = if of.is_some() { "sweep_timesteps.png" } else { "sweep_grid.png" };
        let start = default_path(app, name);
        app.send(Action::AskPath(PathPurpose::ExportPng(Arc::new(fig)), start));
    }
    let Some(sw) = app.store.sweep.as_ref() else { return };
    let avail = ui.available_size();
    let columns = match of {
        None => sw.settings.seeds.len(),
        Some(_) => sweep::SNAPSHOT_FRACTIONS.len(),
    };
    let grid_w = (110.0 + columns as f32 * 100.0 + 16.0).min(avail.x * 0.72);
    let mut open = None;
    ui.horizontal_top(|ui| {
        ui.allocate_ui_with_layout(egui::vec2(grid_w, avail.y), egui::Layout::top_down(egui::Align::Min), |ui| {
            egui::ScrollArea::both()
                .id_salt("sweep-grid")
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    open = match of {
                        None => sweep_seed_grid(app, ui),
                        Some(si) => sweep_snapshot_grid(app, ui, si),
                    };
                });
        });
        ui.separator();
        ui.vertical(|ui| {
            egui::ScrollArea::both().id_salt("sweep-side").show(ui, |ui| {
                if let Some(sw) = app.store.sweep.as_ref() {
                    sweep_plot(sw, ui);
                }
                super::quality::quality_ui(app, ui);
            });
        });
    });
    if let Some((gi, si)) = open {
        app.send(Action::OpenSweepCell(gi, si));
    }
}

/// The label column of a guidance row: w and its numbers once its runs are done.
fn sweep_row_label(sw: &SweepView, ui: &mut egui::Ui, w: f32) {
    ui.vertical(|ui| {
        ui.set_width(100.0);
        ui.label(RichText::new(format!("w = {w}")).strong());
        if let Some(r) = sw.rows.iter().find(|r| r.guidance == w) {
            if let Some(d) = r.image_diversity {
                ui.label(RichText::new(format!("diversity {d:.3}")).small());
            }
            ui.label(RichText::new(format!("saturation {:.2}", r.saturation)).small());
            if let Some(q) = &r.quality {
                ui.label(RichText::new(format!("accuracy {:.0}%", q.accuracy())).small());
            }
        }
    });
}

/// A sweep image as a texture cached under `key`.
fn sweep_texture(
    cache: &mut std::collections::HashMap<(u8, u64, usize, usize), egui::TextureHandle>,
    ctx: &egui::Context,
    key: (u8, u64, usize, usize),
    img: &crate::trace::RgbImage,
) -> egui::TextureHandle {
    cache
        .entry(key)
        .or_insert_with(|| {
            let color = egui::ColorImage::from_rgb([img.width, img.height], &img.pixels);
            ctx.load_texture(format!("sweep-{key:?}"), color, egui::TextureOptions::NEAREST)
        })
        .clone()
}

/// Rows = w, columns = seeds (final images). Returns the cell clicked.
fn sweep_seed_grid(app: &mut App, ui: &mut egui::Ui) -> Option<(usize, usize)> {
    app.view.compare_rects.clear();
    let sw = app.store.sweep.as_ref()?;
    let generation = sw.generation;
    let mut open = None;
    ui.horizontal(|ui| {
        ui.add_space(104.0);
        for seed in &sw.settings.seeds {
            ui.add_sized(egui::vec2(96.0, 16.0), egui::Label::new(format!("seed {seed}")));
        }
    });
    for (gi, &w) in sw.settings.guidances.iter().enumerate() {
        ui.horizontal(|ui| {
            sweep_row_label(sw, ui, w);
            for si in 0..sw.settings.seeds.len() {
                let Some(cell) = sw.cells.get(&(gi, si)) else {
                    ui.add_sized(egui::vec2(96.0, 96.0), egui::Label::new(RichText::new("…").weak()));
                    continue;
                };
                let tex = sweep_texture(
                    &mut app.view.compare_textures,
                    &ui.ctx().clone(),
                    (1, generation, gi, si),
                    &cell.image,
                );
                let m = &cell.run.meta;
                let r = ui
                    .add(
                        egui::Image::new(&tex)
                            .fit_to_exact_size(egui::vec2(96.0, 96.0))
                            .sense(egui::Sense::click()),
                    )
                    .on_hover_text(format!(
                        "w = {w}, seed {}\n{} {} steps, {:.2} s\n(click: open this run)",
                        m.seed, m.sampler, m.steps, m.total_secs
                    ));
                app.view.compare_rects.push((gi, si, r.rect));
                if r.clicked() {
                    open = Some((gi, si));
                }
            }
        });
    }
    open
}

/// The snapshot columns' labels: the fraction of the run and the timestep there (from the
/// first run that has snapshots).
fn snapshot_columns(sw: &SweepView) -> Vec<String> {
    let first = sw.cells.values().find(|c| !c.snapshots.is_empty());
    sweep::SNAPSHOT_FRACTIONS
        .iter()
        .enumerate()
        .map(|(j, f)| match first.and_then(|c| c.snapshots.get(j)) {
            Some(s) => format!("{:.0}% (t {:.0})", f * 100.0, s.timestep),
            None => format!("{:.0}%", f * 100.0),
        })
        .collect()
}

/// Rows = w (x0 above x_t), columns = the snapshot fractions of seed `si`'s run. Returns the
/// cell clicked.
fn sweep_snapshot_grid(app: &mut App, ui: &mut egui::Ui, si: usize) -> Option<(usize, usize)> {
    app.view.compare_rects.clear();
    let sw = app.store.sweep.as_ref()?;
    let generation = sw.generation;
    let mut open = None;
    ui.horizontal(|ui| {
        ui.add_space(104.0 + 24.0);
        for c in snapshot_columns(sw) {
            ui.add_sized(egui::vec2(72.0, 16.0), egui::Label::new(RichText::new(c).small()));
        }
    });
    for (gi, &w) in sw.settings.guidances.iter().enumerate() {
        ui.horizontal(|ui| {
            sweep_row_label(sw, ui, w);
            let Some(cell) = sw.cells.get(&(gi, si)).filter(|c| !c.snapshots.is_empty()) else {
                ui.label(RichText::new("…").weak());
                return;
            };
            ui.vertical(|ui| {
                for (which, name) in [(0usize, "x0"), (1, "x_t")] {
                    ui.horizontal(|ui| {
                        ui.add_sized(egui::vec2(20.0, 72.0), egui::Label::new(RichText::new(name).small()));
                        for (j, snap) in cell.snapshots.iter().enumerate() {
                            let img = if which == 0 { &snap.x0 } else { &snap.xt };
                            let key = (2, generation, gi, (si * 2 + which) * 16 + j);
                            let tex = sweep_texture(&mut app.view.compare_textures, &ui.ctx().clone(), key, img);
                            let r = ui
                                .add(
                                    egui::Image::new(&tex)
                                        .fit_to_exact_size(egui::vec2(72.0, 72.0))
                                        .sense(egui::Sense::click()),
                                )
                                .on_hover_text(format!(
                                    "w = {w}, seed {}: {name} at step {} of {} (t {:.0})\n(click: open this run)",
                                    cell.run.meta.seed,
                                    snap.step + 1,
                                    cell.run.steps.len(),
                                    snap.timestep
                                ));
                            if which == 0 && j + 1 == cell.snapshots.len() {
                                app.view.compare_rects.push((gi, si, r.rect));
                            }
                            if r.clicked() {
                                open = Some((gi, si));
                            }
                        }
                    });
                }
            });
        });
    }
    open
}

/// Diversity across seeds against w (and the detector's accuracy when asked for).
fn sweep_plot(sw: &SweepView, ui: &mut egui::Ui) {
    ui.label(RichText::new("Diversity across seeds vs guidance").strong());
    let mut rows: Vec<&GuidanceReport> = sw.rows.iter().collect();
    rows.sort_by(|a, b| a.guidance.total_cmp(&b.guidance));
    let line = |f: &dyn Fn(&GuidanceReport) -> Option<f64>| -> Vec<[f64; 2]> {
        rows.iter().filter_map(|r| f(r).map(|v| [r.guidance as f64, v])).collect()
    };
    let image = line(&|r| r.image_diversity);
    let latent = line(&|r| r.latent_diversity);
    let saturation = line(&|r| Some(r.saturation));
    Plot::new("sweep-diversity")
        .legend(Legend::default())
        .height(260.0)
        .x_axis_label("guidance w")
        .show(ui, |plot| {
            for (i, (name, pts)) in [("image diversity", image), ("latent diversity", latent), ("saturation", saturation)]
                .into_iter()
                .enumerate()
            {
                line_with_points(plot, name, pts, i);
            }
        });
    let acc = line(&|r| r.quality.as_ref().map(|q| q.accuracy()));
    if !acc.is_empty() {
        ui.label(RichText::new("Detector accuracy (%) vs guidance").strong());
        Plot::new("sweep-accuracy")
            .height(200.0)
            .x_axis_label("guidance w")
            .show(ui, |plot| {
                plot.line(Line::new("accuracy", PlotPoints::from(acc.clone())));
                plot.points(Points::new("accuracy", PlotPoints::from(acc)).radius(3.0));
            });
    }
}

fn sweep_grid_figure(sw: &SweepView) -> image::RgbaImage {
    let s = &sw.settings;
    let cols: Vec<String> = s.seeds.iter().map(|seed| format!("seed {seed}")).collect();
    let rows: Vec<(String, String, Vec<crate::trace::RgbImage>)> = s
        .guidances
        .iter()
        .enumerate()
        .map(|(gi, w)| {
            let frames = (0..s.seeds.len())
                .filter_map(|si| sw.cells.get(&(gi, si)).map(|c| c.image.clone()))
                .collect();
            let detail = sw
                .rows
                .iter()
                .find(|r| r.guidance == *w)
                .and_then(|r| r.image_diversity)
                .map_or(String::new(), |d| format!("diversity {d:.3}"));
            (format!("w = {w}"), detail, frames)
        })
        .collect();
    export::grid(&rows, &cols, 96, &format!("{:?}, {} steps", s.prompt, s.steps))
}

/// The timestep snapshots of seed `si` as a labelled figure: two rows per w (x0, x_t).
fn snapshot_grid_figure(sw: &SweepView, si: usize) -> image::RgbaImage {
    let s = &sw.settings;
    let mut rows: Vec<(String, String, Vec<crate::trace::RgbImage>)> = Vec::new();
    for (gi, w) in s.guidances.iter().enumerate() {
        let Some(cell) = sw.cells.get(&(gi, si)) else { continue };
        rows.push((
            format!("w = {w}"),
            "x0 (predicted clean)".into(),
            cell.snapshots.iter().map(|p| p.x0.clone()).collect(),
        ));
        rows.push((
            format!("w = {w}"),
            "x_t (noisy latents)".into(),
            cell.snapshots.iter().map(|p| p.xt.clone()).collect(),
        ));
    }
    let title = format!("{:?}, seed {}, {} steps", s.prompt, s.seeds[si], s.steps);
    export::grid(&rows, &snapshot_columns(sw), 96, &title)
}
