//! Euler (Karras et al. 2022, Algorithm 2 without churn), as diffusers' `EulerDiscreteScheduler`.

use super::super::config::ResolvedConfig;
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput};
use super::{Common, init_sigma, scale_by_sigma, sigma_schedule, x0_from_sigma};

pub struct Euler {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<f64>,
    sigmas: Vec<f32>,
    init_sigma: f32,
}

impl Euler {
    pub(crate) fn new(rc: ResolvedConfig, c: Common) -> Self {
        let s = sigma_schedule(&rc, &c.alphas_cumprod, c.n);
        let init_sigma = init_sigma(rc.timestep_spacing, &s.sigmas);
        Self {
            ts: s.timesteps.iter().map(|&t| t as f64).collect(),
            sigmas: s.sigmas,
            init_sigma,
            rc,
            c,
        }
    }
}

impl Sampler for Euler {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Euler
    }
    sigma_accessors!();
    fn step(&mut self, model_output: &[f32], i: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput, SamplerError> {
        self.c.begin_step(i, self.ts.len(), model_output, sample)?;
        let sigma = self.sigmas[i];
        let x0 = x0_from_sigma(self.rc.prediction_type, sigma, model_output, sample);
        let dt = self.sigmas[i + 1] - sigma;
        let prev = sample.iter().zip(&x0).map(|(&s, &x)| s + ((s - x) / sigma) * dt).collect();
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
            x0_from_scheduler: true,
        })
    }
    common_accessors!();
}
