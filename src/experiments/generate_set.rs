//! A generated image set for the metrics: a plan of cells (sampler × steps × guidance) ×
//! prompts × seeds, one image per job, cut into shards for array jobs.
//!
//! Job `j` of the plan is always the same (cell, prompt, seed), whatever the shard count, so N
//! machines running shards 1/N..N/N into one folder make exactly the set one machine would; a
//! rerun skips the jobs already done (the caller passes them in `skip`).

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::{ExperimentEvent, Progress, Stop};
use crate::metrics::features::shard_range;
use crate::model::StableDiffusion;
use crate::pipeline::{self, RunConfig, RunError};
use crate::sampling::SamplerKind;
use crate::trace::RgbImage;
use crate::types::CaptureMode;

/// One (sampler, steps, guidance) combination of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SetCell {
    /// None: the model's own scheduler.
    pub sampler: Option<SamplerKind>,
    pub steps: usize,
    pub guidance: f32,
}

impl SetCell {
    /// The cell's folder name: `ddim-s30-w5` (`default` for the model's own scheduler).
    pub fn folder(&self) -> String {
        let sampler = self.sampler.map_or("default".to_owned(), |s| s.to_string());
        format!("{sampler}-s{}-w{}", self.steps, self.guidance)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSettings {
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    /// Every prompt runs with every seed.
    pub seeds: Vec<u64>,
    pub samplers: Vec<Option<SamplerKind>>,
    pub steps: Vec<usize>,
    pub guidances: Vec<f32>,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

/// One image of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetJob {
    /// Index in the whole plan (cell-major, then prompt, then seed).
    pub index: usize,
    pub cell: SetCell,
    /// Index of the cell in [`SetSettings::cells`].
    pub cell_index: usize,
    /// Index of the job within its cell (prompt-major): its file name.
    pub index_in_cell: usize,
    pub prompt: String,
    pub seed: u64,
}

impl SetSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.prompts.is_empty() {
            return Err("no prompts".into());
        }
        if self.seeds.is_empty() {
            return Err("no seeds".into());
        }
        if self.samplers.is_empty() || self.steps.is_empty() || self.guidances.is_empty() {
            return Err("the sampler, steps and guidance lists must not be empty".into());
        }
        if self.steps.contains(&0) {
            return Err("steps must be at least 1".into());
        }
        if let Some(w) = self.guidances.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(format!("guidance {w}: expected a finite number >= 0"));
        }
        let cells = self.cells();
        for (i, c) in cells.iter().enumerate() {
            if cells[..i].contains(c) {
                return Err(format!("{} is listed twice", c.folder()));
            }
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if self.seeds[..i].contains(s) {
                return Err(format!("seed {s} is listed twice"));
            }
        }
        Ok(())
    }

    /// The cells, sampler-major, then steps, then guidance.
    pub fn cells(&self) -> Vec<SetCell> {
        let mut out = Vec::new();
        for &sampler in &self.samplers {
            for &steps in &self.steps {
                for &guidance in &self.guidances {
                    out.push(SetCell { sampler, steps, guidance });
                }
            }
        }
        out
    }

    pub fn jobs_per_cell(&self) -> usize {
        self.prompts.len() * self.seeds.len()
    }

    pub fn total(&self) -> usize {
        self.cells().len() * self.jobs_per_cell()
    }

    /// Job `index` of the plan.
    pub fn job(&self, index: usize) -> SetJob {
        let cells = self.cells();
        let per_cell = self.jobs_per_cell();
        let (ci, k) = (index / per_cell, index % per_cell);
        let (pi, si) = (k / self.seeds.len(), k % self.seeds.len());
        SetJob {
            index,
            cell: cells[ci],
            cell_index: ci,
            index_in_cell: k,
            prompt: self.prompts[pi].clone(),
            seed: self.seeds[si],
        }
    }

    /// The plan's jobs of shard (i, n) (1-based), or all of them.
    pub fn shard(&self, shard: Option<(usize, usize)>) -> std::ops::Range<usize> {
        shard.map_or(0..self.total(), |s| shard_range(self.total(), s))
    }
}

/// What one invocation makes: the plan, the shard of it, and the jobs already done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRun {
    pub settings: SetSettings,
    /// (i, n), 1-based; None: the whole plan.
    pub shard: Option<(usize, usize)>,
    /// Plan indices already on disk: skipped, so a rerun resumes.
    pub skip: Vec<usize>,
}

/// One finished image.
#[derive(Debug, Clone)]
pub struct SetImage {
    pub job: SetJob,
    pub image: RgbImage,
    pub secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetReport {
    pub model: String,
    pub settings: SetSettings,
    pub shard: Option<(usize, usize)>,
    /// Jobs of this shard.
    pub jobs: usize,
    /// Made by this run.
    pub generated: usize,
    /// Already there (skipped).
    pub skipped: usize,
    pub secs_per_image: Option<f64>,
    pub complete: bool,
}

/// Makes the shard's images that are not in `skip`, streaming each as it is done.
pub fn run(
    sd: &StableDiffusion,
    model_spec: &str,
    req: &SetRun,
    cancel: &AtomicBool,
    sink: &mut dyn FnMut(ExperimentEvent),
) -> Result<(SetReport, Option<Stop>), RunError> {
    let (settings, shard) = (&req.settings, req.shard);
    settings.validate().map_err(RunError::BadInput)?;
    let skip: std::collections::HashSet<usize> = req.skip.iter().copied().collect();
    let range = settings.shard(shard);
    let todo: Vec<usize> = range.clone().filter(|j| !skip.contains(j)).collect();
    let mut report = SetReport {
        model: model_spec.to_owned(),
        settings: settings.clone(),
        shard,
        jobs: range.len(),
        generated: 0,
        skipped: range.len() - todo.len(),
        secs_per_image: None,
        complete: false,
    };
    let mut secs = 0.0;
    for (k, &j) in todo.iter().enumerate() {
        let job = settings.job(j);
        sink(ExperimentEvent::Progress(Progress {
            done: k,
            total: todo.len(),
            message: format!("{} {}: seed {}", job.cell.folder(), job.index_in_cell, job.seed),
        }));
        let cfg = RunConfig {
            prompt: job.prompt.clone(),
            negative_prompt: settings.negative_prompt.clone(),
            steps: job.cell.steps,
            guidance: job.cell.guidance,
            sampler: job.cell.sampler,
            seed: job.seed,
            height: settings.height,
            width: settings.width,
            attention: CaptureMode::None,
            ..RunConfig::default()
        };
        let t0 = std::time::Instant::now();
        match pipeline::run(sd, model_spec, &cfg, cancel, &mut |_| {}) {
            Ok(image) => {
                let dt = t0.elapsed().as_secs_f64();
                secs += dt;
                report.generated += 1;
                report.secs_per_image = Some(secs / report.generated as f64);
                sink(ExperimentEvent::SetImage(Box::new(SetImage { job, image, secs: dt })));
            }
            Err(RunError::Cancelled { .. }) => return Ok((report, Some(Stop::Cancelled))),
            Err(e) => return Ok((report, Some(Stop::Failed(format!("job {j} (seed {}): {e}", job.seed))))),
        }
    }
    report.complete = true;
    sink(ExperimentEvent::Progress(Progress {
        done: todo.len(),
        total: todo.len(),
        message: String::new(),
    }));
    Ok((report, None))
}

/// The folder of cell `ci` of a set written to `out`: the set folder itself when the plan has
/// one cell, else a subfolder named by [`SetCell::folder`].
pub fn cell_dir(out: &std::path::Path, s: &SetSettings, ci: usize) -> std::path::PathBuf {
    let cells = s.cells();
    if cells.len() == 1 {
        out.to_path_buf()
    } else {
        out.join(cells[ci].folder())
    }
}

/// A set folder written by `generate-set`, read back: its plan, and per cell the images there
/// (in plan order; missing ones are skipped and counted) with their prompts.
pub struct LoadedSet {
    pub settings: SetSettings,
    pub cells: Vec<(SetCell, Vec<RgbImage>, Vec<String>)>,
    pub missing: usize,
}

pub fn load_set(dir: &std::path::Path) -> Result<LoadedSet, String> {
    let plan_path = dir.join("set.json");
    let text = std::fs::read_to_string(&plan_path).map_err(|e| format!("{}: {e} (not a generate-set folder)", plan_path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", plan_path.display()))?;
    let settings: SetSettings = serde_json::from_value(v["settings"].clone()).map_err(|e| format!("{}: {e}", plan_path.display()))?;
    let mut cells = Vec::new();
    let mut missing = 0;
    let per_cell = settings.jobs_per_cell();
    for (ci, cell) in settings.cells().into_iter().enumerate() {
        let d = cell_dir(dir, &settings, ci);
        let (mut imgs, mut caps) = (Vec::new(), Vec::new());
        for k in 0..per_cell {
            let job = settings.job(ci * per_cell + k);
            match image::open(d.join(format!("{k:06}.png"))) {
                Ok(im) => {
                    let im = im.to_rgb8();
                    imgs.push(RgbImage {
                        width: im.width() as usize,
                        height: im.height() as usize,
                        pixels: im.into_raw(),
                    });
                    caps.push(job.prompt);
                }
                Err(_) => missing += 1,
            }
        }
        cells.push((cell, imgs, caps));
    }
    Ok(LoadedSet { settings, cells, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SetSettings {
        SetSettings {
            prompts: vec!["a".into(), "b".into(), "c".into()],
            negative_prompt: String::new(),
            seeds: vec![10, 11],
            samplers: vec![None, Some(SamplerKind::Euler)],
            steps: vec![5],
            guidances: vec![1.0, 5.0],
            height: None,
            width: None,
        }
    }

    #[test]
    fn shards_partition_the_plan_and_jobs_do_not_depend_on_the_shard_count() {
        let s = settings();
        assert_eq!(s.total(), 4 * 6);
        for n in [1, 5, 7, 24, 30] {
            let mut all: Vec<usize> = (1..=n).flat_map(|i| s.shard(Some((i, n)))).collect();
            all.sort();
            assert_eq!(all, (0..24).collect::<Vec<_>>(), "n = {n}");
        }
        let j = s.job(13);
        // Cell 2 (euler, w 1), job 1 of the cell: prompt "a", seed 11.
        assert_eq!((j.cell_index, j.index_in_cell, j.prompt.as_str(), j.seed), (2, 1, "a", 11));
        assert_eq!(j.cell.folder(), "euler-s5-w1");
        assert_eq!(s.job(0).cell.folder(), "default-s5-w1");
    }

    #[test]
    fn bad_plans_are_refused() {
        let mut s = settings();
        s.seeds = vec![1, 1];
        assert!(s.validate().unwrap_err().contains("seed 1 is listed twice"));
        let mut s = settings();
        s.guidances = vec![5.0, 5.0];
        assert!(s.validate().unwrap_err().contains("default-s5-w5 is listed twice"));
        let mut s = settings();
        s.steps = vec![0];
        assert!(s.validate().unwrap_err().contains("steps"));
    }
}
