//! Euler ancestral, as diffusers' `EulerAncestralDiscreteScheduler`. Draws noise every step.

use super::super::config::ResolvedConfig;
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput};
use super::{Common, init_sigma, scale_by_sigma, sigma_schedule, x0_from_sigma};

pub struct EulerAncestral {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<f64>,
    sigmas: Vec<f32>,
    init_sigma: f32,
}

impl EulerAncestral {
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

impl Sampler for EulerAncestral {
    fn kind(&self) -> SamplerKind {
        SamplerKind::EulerAncestral
    }
    sigma_accessors!();
    fn step(&mut self, model_output: &[f32], i: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<StepOutput, SamplerError> {
        self.c.begin_step(i, self.ts.len(), model_output, sample)?;
        let sigma = self.sigmas[i];
        let x0 = x0_from_sigma(self.rc.prediction_type, sigma, model_output, sample);
        let (from, to) = (sigma, self.sigmas[i + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let dt = down - sigma;
        let z = noise.randn(sample.len());
        let prev = sample
            .iter()
            .zip(&x0)
            .zip(z)
            .map(|((&s, &x), z)| (s + ((s - x) / sigma) * dt) + z * up)
            .collect();
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
            x0_from_scheduler: true,
        })
    }
    common_accessors!();
}
