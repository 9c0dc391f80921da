//! Latent Consistency Model multistep sampling (Luo et al. 2023), as diffusers'
//! `LCMScheduler`: the timesteps are taken evenly (by index) from the distillation schedule
//! `k, 2k, ..., original_inference_steps * k` minus 1 (k = T / original_inference_steps),
//! largest first; each step predicts x0, applies the consistency boundary condition
//! `denoised = c_out x0 + c_skip x_t` (c from `timestep_scaling`, sigma_data 0.5) and, except
//! at the last step, noises `denoised` to the next timestep with fresh noise.

use super::super::config::ResolvedConfig;
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput};
use super::{Common, clamp_all, x0_from_alpha};

pub struct Lcm {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<i64>,
    ts_f64: Vec<f64>,
    final_alpha_cumprod: f32,
}

/// diffusers' LCM timesteps for `n` steps (None when `n` exceeds `original_inference_steps`).
pub fn lcm_timesteps(num_train_timesteps: usize, original_steps: usize, n: usize) -> Option<Vec<i64>> {
    if original_steps == 0 || original_steps > num_train_timesteps || n == 0 || n > original_steps {
        return None;
    }
    let k = (num_train_timesteps / original_steps) as i64;
    let origin: Vec<i64> = (1..=original_steps as i64).rev().map(|i| i * k - 1).collect();
    // np.floor(np.linspace(0, len, n, endpoint=False))
    let len = origin.len() as f64;
    Some((0..n).map(|i| origin[(len * i as f64 / n as f64).floor() as usize]).collect())
}

impl Lcm {
    pub(crate) fn new(rc: ResolvedConfig, c: Common) -> Result<Self, SamplerError> {
        let ts =
            lcm_timesteps(rc.num_train_timesteps, rc.original_inference_steps, c.n).ok_or_else(|| SamplerError::UnsupportedConfig {
                key: "num_inference_steps".into(),
                value: c.n.to_string(),
                reason: format!(
                    "LCM takes its steps from the {} of original_inference_steps: at most that many",
                    rc.original_inference_steps
                ),
            })?;
        let ts_f64 = ts.iter().map(|&t| t as f64).collect();
        let final_alpha_cumprod = if rc.set_alpha_to_one { 1.0 } else { c.alphas_cumprod[0] };
        Ok(Self {
            rc,
            c,
            ts,
            ts_f64,
            final_alpha_cumprod,
        })
    }

    /// (c_skip, c_out) of the consistency boundary condition at timestep `t`, in float32 as
    /// torch computes them on a long timestep.
    fn scalings(&self, t: i64) -> (f32, f32) {
        let sigma_data = 0.5f32;
        let s = t as f32 * self.rc.timestep_scaling as f32;
        let c_skip = sigma_data * sigma_data / (s * s + sigma_data * sigma_data);
        let c_out = s / (s * s + sigma_data * sigma_data).sqrt();
        (c_skip, c_out)
    }
}

impl Sampler for Lcm {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Lcm
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
        let pt = self.ts.get(i + 1).copied().unwrap_or(t);
        let a_t = self.c.alphas_cumprod[t as usize];
        let a_prev = if pt >= 0 {
            self.c.alphas_cumprod[pt as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_prev = 1.0 - a_prev;
        let (c_skip, c_out) = self.scalings(t);
        let mut x0 = x0_from_alpha(self.rc.prediction_type, a_t, model_output, sample);
        if self.rc.clip_sample {
            clamp_all(&mut x0, self.rc.clip_sample_range);
        }
        let denoised: Vec<f32> = x0.iter().zip(sample).map(|(&x, &s)| c_out * x + c_skip * s).collect();
        let prev = if i + 1 < self.ts.len() {
            let z = noise.randn(sample.len());
            let (sa, sb) = (a_prev.sqrt(), b_prev.sqrt());
            denoised.iter().zip(z).map(|(&d, z)| sa * d + sb * z).collect()
        } else {
            denoised.clone()
        };
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: denoised,
            x0_from_scheduler: true,
        })
    }
    fn sigma(&self, i: usize) -> f32 {
        self.c.sigma_at(self.ts[i])
    }
    common_accessors!();
}
