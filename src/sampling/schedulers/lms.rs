//! Linear multistep (order 4, k-diffusion's `sample_lms`), as diffusers' `LMSDiscreteScheduler`.
//! The coefficients are integrals of Lagrange basis polynomials over [sigma_i, sigma_{i+1}];
//! diffusers uses `scipy.integrate.quad`, here Gauss–Legendre quadrature (exact for these
//! polynomials of degree <= 3).

use super::super::config::ResolvedConfig;
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput};
use super::{Common, init_sigma, scale_by_sigma, sigma_schedule, x0_from_sigma};

const ORDER: usize = 4;

pub struct Lms {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<f64>,
    sigmas: Vec<f32>,
    init_sigma: f32,
    derivatives: Vec<Vec<f32>>,
}

impl Lms {
    pub(crate) fn new(rc: ResolvedConfig, c: Common) -> Self {
        let s = sigma_schedule(&rc, &c.alphas_cumprod, c.n);
        let init_sigma = init_sigma(rc.timestep_spacing, &s.sigmas);
        Self {
            ts: s.timesteps.iter().map(|&t| t as f64).collect(),
            sigmas: s.sigmas,
            init_sigma,
            rc,
            c,
            derivatives: Vec::new(),
        }
    }
}

/// Integral over [sigmas[t], sigmas[t+1]] of the Lagrange basis polynomial that is 1 at
/// sigmas[t - current] and 0 at the other nodes sigmas[t - k], k < order.
pub fn lms_coefficient(sigmas: &[f32], order: usize, t: usize, current: usize) -> f64 {
    let node = |k: usize| sigmas[t - k] as f64;
    let basis = |tau: f64| {
        let mut p = 1.0;
        for k in 0..order {
            if k != current {
                p *= (tau - node(k)) / (node(current) - node(k));
            }
        }
        p
    };
    // 4-point Gauss–Legendre: exact up to degree 7.
    const X: [f64; 4] = [
        -0.861_136_311_594_052_6,
        -0.339_981_043_584_856_3,
        0.339_981_043_584_856_3,
        0.861_136_311_594_052_6,
    ];
    const W: [f64; 4] = [
        0.347_854_845_137_453_9,
        0.652_145_154_862_546_1,
        0.652_145_154_862_546_1,
        0.347_854_845_137_453_9,
    ];
    let (a, b) = (sigmas[t] as f64, sigmas[t + 1] as f64);
    let (half, mid) = ((b - a) / 2.0, (a + b) / 2.0);
    X.iter().zip(W).map(|(&x, w)| w * basis(mid + half * x)).sum::<f64>() * half
}

impl Sampler for Lms {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Lms
    }
    sigma_accessors!();
    fn step(&mut self, model_output: &[f32], i: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput, SamplerError> {
        self.c.begin_step(i, self.ts.len(), model_output, sample)?;
        let sigma = self.sigmas[i];
        let x0 = x0_from_sigma(self.rc.prediction_type, sigma, model_output, sample);
        self.derivatives
            .push(sample.iter().zip(&x0).map(|(&s, &x)| (s - x) / sigma).collect());
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        let mut acc = vec![0.0f32; sample.len()];
        for (k, d) in self.derivatives.iter().rev().take(order).enumerate() {
            let coeff = lms_coefficient(&self.sigmas, order, i, k) as f32;
            for (a, &d) in acc.iter_mut().zip(d) {
                *a += coeff * d;
            }
        }
        let prev = sample.iter().zip(&acc).map(|(&s, &a)| s + a).collect();
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
            x0_from_scheduler: true,
        })
    }
    common_accessors!();
}
