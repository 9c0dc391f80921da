//! Heun's 2nd-order method (Karras et al. 2022, Algorithm 1), as diffusers' `HeunDiscreteScheduler`.
//! Every step except the last takes two model evaluations, so the loop has `2n - 1` iterations;
//! timesteps and sigmas are interleaved as in diffusers.

use super::super::config::ResolvedConfig;
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput};
use super::{Common, clamp_all, init_sigma, scale_by_sigma, sigma_schedule, x0_from_sigma};

pub struct Heun {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<f64>,
    /// Interleaved: [s0, s1, s1, s2, s2, ..., s_{n-1}, s_{n-1}, 0] (len 2n).
    sigmas: Vec<f32>,
    init_sigma: f32,
    /// First-order state kept for the correction iteration: (derivative, dt, sample).
    pending: Option<(Vec<f32>, f32, Vec<f32>)>,
}

impl Heun {
    pub(crate) fn new(rc: ResolvedConfig, c: Common) -> Self {
        let s = sigma_schedule(&rc, &c.alphas_cumprod, c.n);
        let n = c.n;
        let mut sigmas = vec![s.sigmas[0]];
        for &x in &s.sigmas[1..n] {
            sigmas.push(x);
            sigmas.push(x);
        }
        sigmas.push(s.sigmas[n]);
        let mut ts = vec![s.timesteps[0] as f64];
        for &t in &s.timesteps[1..] {
            ts.push(t as f64);
            ts.push(t as f64);
        }
        let init_sigma = init_sigma(rc.timestep_spacing, &sigmas);
        Self {
            rc,
            c,
            ts,
            sigmas,
            init_sigma,
            pending: None,
        }
    }
}

impl Sampler for Heun {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Heun
    }
    sigma_accessors!();
    fn step(&mut self, model_output: &[f32], i: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput, SamplerError> {
        self.c.begin_step(i, self.ts.len(), model_output, sample)?;
        let first_order = self.pending.is_none();
        let (sigma, sigma_next) = if first_order {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        let sigma_input = if first_order { sigma } else { sigma_next };
        let mut x0 = x0_from_sigma(self.rc.prediction_type, sigma_input, model_output, sample);
        if self.rc.clip_sample {
            clamp_all(&mut x0, self.rc.clip_sample_range);
        }
        let prev = if first_order {
            let d: Vec<f32> = sample.iter().zip(&x0).map(|(&s, &x)| (s - x) / sigma).collect();
            let dt = sigma_next - sigma;
            let prev = sample.iter().zip(&d).map(|(&s, &d)| s + d * dt).collect();
            // The last iteration is a plain Euler step; nothing follows it.
            if i + 1 < self.ts.len() {
                self.pending = Some((d, dt, sample.to_vec()));
            }
            prev
        } else {
            let (d_prev, dt, s0) = self.pending.take().expect("second-order state");
            s0.iter()
                .zip(sample.iter().zip(&x0))
                .zip(&d_prev)
                .map(|((&s0, (&s, &x)), &dp)| {
                    let d = (s - x) / sigma_next;
                    s0 + ((dp + d) / 2.0) * dt
                })
                .collect()
        };
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
            x0_from_scheduler: true,
        })
    }
    common_accessors!();
}
