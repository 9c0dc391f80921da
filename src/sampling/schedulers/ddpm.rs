//! DDPM ancestral sampling (Ho et al. 2020), as diffusers' `DDPMScheduler`.

use super::super::config::{PredictionType, ResolvedConfig};
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput};
use super::{Common, clamp_all, schedule, x0_from_alpha};

pub struct Ddpm {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<i64>,
    ts_f64: Vec<f64>,
}

impl Ddpm {
    pub(crate) fn new(rc: ResolvedConfig, c: Common) -> Self {
        let ts: Vec<i64> = schedule::spaced_timesteps(rc.timestep_spacing, rc.num_train_timesteps, c.n, rc.steps_offset, true)
            .into_iter()
            .map(|t| t as i64)
            .collect();
        let ts_f64 = ts.iter().map(|&t| t as f64).collect();
        Self { rc, c, ts, ts_f64 }
    }
}

impl Sampler for Ddpm {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Ddpm
    }
    fn timesteps(&self) -> &[f64] {
        &self.ts_f64
    }
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    fn scale_model_input(&self, sample: &[f32], _step_index: usize) -> Vec<f32> {
        sample.to_vec()
    }
    fn step(&mut self, model_output: &[f32], i: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<StepOutput, SamplerError> {
        self.c.begin_step(i, self.ts.len(), model_output, sample)?;
        let t = self.ts[i];
        // previous timestep = the next one in the list (diffusers' previous_timestep once
        // set_timesteps was called), -1 after the last.
        let pt = self.ts.get(i + 1).copied().unwrap_or(-1);
        let a_t = self.c.alphas_cumprod[t as usize];
        let a_prev = if pt >= 0 { self.c.alphas_cumprod[pt as usize] } else { 1.0 };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let mut x0 = match self.rc.prediction_type {
            PredictionType::Sample => model_output.to_vec(),
            pt => x0_from_alpha(pt, a_t, model_output, sample),
        };
        if self.rc.clip_sample {
            clamp_all(&mut x0, self.rc.clip_sample_range);
        }
        let c_x0 = a_prev.sqrt() * cur_beta / b_t;
        let c_s = cur_alpha.sqrt() * b_prev / b_t;
        let mut prev: Vec<f32> = x0.iter().zip(sample).map(|(&x, &s)| c_x0 * x + c_s * s).collect();
        if t > 0 {
            let z = noise.randn(sample.len());
            let var = ((1.0 - a_prev) / (1.0 - a_t) * cur_beta).max(1e-20);
            let std = match self.rc.variance_type.as_str() {
                "fixed_small_log" => (0.5 * var.ln()).exp(),
                "fixed_large" => cur_beta.sqrt(),
                _ => var.sqrt(),
            };
            for (p, z) in prev.iter_mut().zip(z) {
                *p += std * z;
            }
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
            x0_from_scheduler: true,
        })
    }
    fn sigma(&self, i: usize) -> f32 {
        self.c.sigma_at(self.ts[i])
    }
    common_accessors!();
}
