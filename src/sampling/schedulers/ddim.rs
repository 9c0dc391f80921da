//! DDIM (Song et al. 2021), as diffusers' `DDIMScheduler`.

use super::super::config::{PredictionType, ResolvedConfig};
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput, TimestepSpacing};
use super::{Common, clamp_all, schedule};

pub struct Ddim {
    rc: ResolvedConfig,
    c: Common,
    eta: f32,
    /// Integer timesteps in sampling order.
    ts: Vec<i64>,
    ts_f64: Vec<f64>,
    /// The timestep each step moves to (-1: the final alpha).
    prev: Vec<i64>,
    final_alpha_cumprod: f32,
}

impl Ddim {
    pub(crate) fn new(rc: ResolvedConfig, c: Common, eta: f32) -> Self {
        let n = c.n;
        let ts: Vec<i64> = schedule::spaced_timesteps(rc.timestep_spacing, rc.num_train_timesteps, n, rc.steps_offset, true)
            .into_iter()
            .map(|t| t as i64)
            .collect();
        // diffusers steps back by num_train_timesteps // n whatever the spacing; with our
        // exponential spacing (not in diffusers) the next listed timestep is used instead.
        let prev = match rc.timestep_spacing {
            TimestepSpacing::Exponential { .. } => (0..ts.len()).map(|i| ts.get(i + 1).copied().unwrap_or(-1)).collect(),
            _ => {
                let ratio = (rc.num_train_timesteps / n) as i64;
                ts.iter().map(|&t| t - ratio).collect()
            }
        };
        let final_alpha_cumprod = if rc.set_alpha_to_one { 1.0 } else { c.alphas_cumprod[0] };
        let ts_f64 = ts.iter().map(|&t| t as f64).collect();
        Self {
            rc,
            c,
            eta,
            ts,
            ts_f64,
            prev,
            final_alpha_cumprod,
        }
    }
}

impl Sampler for Ddim {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Ddim
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
        let pt = self.prev[i];
        let a_t = self.c.alphas_cumprod[t as usize];
        let a_prev = if pt >= 0 {
            self.c.alphas_cumprod[pt as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let (mut x0, eps): (Vec<f32>, Vec<f32>) = match self.rc.prediction_type {
            PredictionType::Epsilon => (
                sample.iter().zip(model_output).map(|(&s, &m)| (s - sb * m) / sa).collect(),
                model_output.to_vec(),
            ),
            PredictionType::Sample => {
                let x0 = model_output.to_vec();
                let e = sample.iter().zip(&x0).map(|(&s, &x)| (s - sa * x) / sb).collect();
                (x0, e)
            }
            PredictionType::VPrediction => (
                sample.iter().zip(model_output).map(|(&s, &m)| sa * s - sb * m).collect(),
                sample.iter().zip(model_output).map(|(&s, &m)| sa * m + sb * s).collect(),
            ),
        };
        if self.rc.clip_sample {
            clamp_all(&mut x0, self.rc.clip_sample_range);
        }
        let b_prev = 1.0 - a_prev;
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std = self.eta * variance.sqrt();
        let dir_coeff = (1.0 - a_prev - std * std).sqrt();
        let sa_prev = a_prev.sqrt();
        let mut prev: Vec<f32> = x0.iter().zip(&eps).map(|(&x, &e)| sa_prev * x + dir_coeff * e).collect();
        if self.eta > 0.0 {
            let z = noise.randn(sample.len());
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
