//! DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095), as diffusers'
//! `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`.

use super::super::config::{BetaSchedule, PredictionType, ResolvedConfig};
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput, TimestepSpacing};
use super::{Common, schedule};

pub struct DpmPP2M {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<f64>,
    sigmas: Vec<f32>,
    prev_x0: Option<Vec<f32>>,
    lower_order_nums: usize,
}

/// (alpha_t, sigma_t) of the VP parameterisation for a k-diffusion sigma.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(sigma: f32) -> f32 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

impl DpmPP2M {
    pub(crate) fn new(rc: ResolvedConfig, c: Common) -> Self {
        let n = c.n;
        let nt = rc.num_train_timesteps;
        let ac = &c.alphas_cumprod;
        // last_timestep from lambda_min_clipped (searchsorted on the flipped float32 lambdas)
        let lambdas: Vec<f32> = ac.iter().map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln()).collect();
        let clipped_idx = lambdas.iter().rev().take_while(|&&l| (l as f64) < rc.lambda_min_clipped).count();
        let last = (nt - clipped_idx) as f64;
        let ts: Vec<f64> = match rc.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> = schedule::np_linspace(0.0, last - 1.0, n + 1)
                    .into_iter()
                    .map(schedule::np_round)
                    .collect();
                v.reverse();
                v.truncate(n);
                v
            }
            TimestepSpacing::Leading => {
                let ratio = (last as i64) / (n as i64 + 1);
                (1..=n as i64).rev().map(|i| (i * ratio + rc.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = nt as f64 / n as f64;
                schedule::np_arange(last, 0.0, -ratio)
                    .into_iter()
                    .map(|x| schedule::np_round(x) - 1.0)
                    .collect()
            }
            TimestepSpacing::Exponential { .. } => schedule::exponential_spacing(rc.timestep_spacing, nt, n)
                .into_iter()
                .map(|t| t as f64)
                .collect(),
        };
        let base = schedule::sigmas_from_alphas_cumprod(ac);
        let (mut sig, ts): (Vec<f64>, Vec<f64>) = if rc.use_karras_sigmas {
            let log_sigmas = schedule::log_sigmas(&base);
            let k = schedule::karras_sigmas(base[0] as f64, base[nt - 1] as f64, n);
            let mut t: Vec<f64> = k.iter().map(|&s| schedule::sigma_to_t(s, &log_sigmas)).collect();
            if rc.beta_schedule != BetaSchedule::SquaredCosCapV2 {
                t.iter_mut().for_each(|x| *x = schedule::np_round(*x));
            }
            (k, t)
        } else {
            (ts.iter().map(|&t| schedule::interp_index(t, &base)).collect(), ts)
        };
        let last_sigma = if rc.final_sigma_zero { 0.0 } else { base[0] as f64 };
        sig.push(last_sigma);
        let sigmas = sig.iter().map(|&s| s as f32).collect();
        // timesteps are int64 in diffusers (truncation toward zero of the float values)
        let ts = ts.iter().map(|&t| t.trunc()).collect();
        Self {
            rc,
            c,
            ts,
            sigmas,
            prev_x0: None,
            lower_order_nums: 0,
        }
    }
}

impl Sampler for DpmPP2M {
    fn kind(&self) -> SamplerKind {
        SamplerKind::DpmPP2M
    }
    fn timesteps(&self) -> &[f64] {
        &self.ts
    }
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    fn scale_model_input(&self, sample: &[f32], _i: usize) -> Vec<f32> {
        sample.to_vec()
    }
    fn step(&mut self, model_output: &[f32], i: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput, SamplerError> {
        let len = self.ts.len();
        self.c.begin_step(i, len, model_output, sample)?;
        let lower_order_final =
            i == len - 1 && (self.rc.euler_at_final || (self.rc.lower_order_final && len < 15) || self.rc.final_sigma_zero);
        let sigma = self.sigmas[i];
        let (alpha_s0, sigma_s0) = alpha_sigma(sigma);
        let x0: Vec<f32> = match self.rc.prediction_type {
            PredictionType::Epsilon => sample
                .iter()
                .zip(model_output)
                .map(|(&s, &m)| (s - sigma_s0 * m) / alpha_s0)
                .collect(),
            PredictionType::VPrediction => sample
                .iter()
                .zip(model_output)
                .map(|(&s, &m)| alpha_s0 * s - sigma_s0 * m)
                .collect(),
            PredictionType::Sample => model_output.to_vec(),
        };
        let sigma_next = self.sigmas[i + 1];
        let (alpha_t, sigma_t) = alpha_sigma(sigma_next);
        let lambda_t = alpha_t.ln() - sigma_t.ln();
        let lambda_s0 = alpha_s0.ln() - sigma_s0.ln();
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let c0 = alpha_t * ((-h).exp() - 1.0);
        let prev: Vec<f32> = match (&self.prev_x0, self.lower_order_nums < 1 || lower_order_final) {
            (Some(m1), false) => {
                let lambda_s1 = lambda(self.sigmas[i - 1]);
                let h0 = lambda_s0 - lambda_s1;
                let r0 = h0 / h;
                let inv_r0 = 1.0 / r0;
                let c1 = if self.rc.solver_type == "heun" {
                    alpha_t * (((-h).exp() - 1.0) / h + 1.0)
                } else {
                    0.5 * (alpha_t * ((-h).exp() - 1.0))
                };
                let heun = self.rc.solver_type == "heun";
                sample
                    .iter()
                    .zip(&x0)
                    .zip(m1)
                    .map(|((&s, &m0), &m1)| {
                        let d1 = inv_r0 * (m0 - m1);
                        if heun {
                            ratio * s - c0 * m0 + c1 * d1
                        } else {
                            ratio * s - c0 * m0 - c1 * d1
                        }
                    })
                    .collect()
            }
            _ => sample.iter().zip(&x0).map(|(&s, &m0)| ratio * s - c0 * m0).collect(),
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        self.prev_x0 = Some(x0.clone());
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
            x0_from_scheduler: false,
        })
    }
    fn sigma(&self, i: usize) -> f32 {
        self.sigmas[i]
    }
    common_accessors!();
}
