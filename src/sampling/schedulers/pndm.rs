//! PNDM (Liu et al. 2022, arXiv 2202.09778), as diffusers' `PNDMScheduler`: Runge–Kutta warm-up
//! steps (unless `skip_prk_steps`), then linear multistep (PLMS). With `skip_prk_steps` the loop
//! has `n + 1` iterations (the second one re-evaluates the first timestep's successor), without
//! it `n + 3` (12 PRK iterations, then PLMS).

use super::super::config::{PredictionType, ResolvedConfig};
use super::super::{NoiseSource, Sampler, SamplerError, SamplerKind, SchedulerConfig, StepOutput, TimestepSpacing};
use super::{Common, schedule, x0_from_alpha};

pub struct Pndm {
    rc: ResolvedConfig,
    c: Common,
    ts: Vec<i64>,
    ts_f64: Vec<f64>,
    n_prk: usize,
    final_alpha_cumprod: f32,
    ets: Vec<Vec<f32>>,
    counter: usize,
    cur_sample: Option<Vec<f32>>,
    cur_model_output: Option<Vec<f32>>,
}

impl Pndm {
    pub(crate) fn new(rc: ResolvedConfig, c: Common) -> Self {
        let n = c.n;
        let nt = rc.num_train_timesteps;
        // ascending base timesteps
        let base: Vec<i64> = match rc.timestep_spacing {
            TimestepSpacing::Linspace => schedule::np_linspace(0.0, (nt - 1) as f64, n)
                .into_iter()
                .map(|x| schedule::np_round(x) as i64)
                .collect(),
            TimestepSpacing::Trailing => {
                let mut v: Vec<i64> = schedule::np_arange(nt as f64, 0.0, -(nt as f64 / n as f64))
                    .into_iter()
                    .map(|x| schedule::np_round(x) as i64 - 1)
                    .collect();
                v.reverse();
                v
            }
            _ => {
                let ratio = (nt / n) as i64;
                (0..n as i64).map(|i| i * ratio + rc.steps_offset).collect()
            }
        };
        let (prk, plms): (Vec<i64>, Vec<i64>) = if rc.skip_prk_steps {
            let mut v: Vec<i64> = base[..n - 1].to_vec();
            if n >= 2 {
                v.push(base[n - 2]);
            }
            v.push(base[n - 1]);
            v.reverse();
            (Vec::new(), v)
        } else {
            let half = (nt / n / 2) as i64;
            let tail = &base[n.saturating_sub(4)..];
            let mut rep = Vec::new();
            for &t in tail {
                rep.push(t);
                rep.push(t + half);
            }
            rep.pop();
            let mut doubled = Vec::new();
            for &t in &rep {
                doubled.push(t);
                doubled.push(t);
            }
            let mut prk: Vec<i64> = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms: Vec<i64> = base[..n.saturating_sub(3)].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let n_prk = prk.len();
        let ts: Vec<i64> = prk.into_iter().chain(plms).collect();
        let ts_f64 = ts.iter().map(|&t| t as f64).collect();
        let final_alpha_cumprod = if rc.set_alpha_to_one { 1.0 } else { c.alphas_cumprod[0] };
        Self {
            rc,
            c,
            ts,
            ts_f64,
            n_prk,
            final_alpha_cumprod,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
            cur_model_output: None,
        }
    }

    fn prev_sample(&self, sample: &[f32], t: i64, prev_t: i64, mo: &[f32]) -> Vec<f32> {
        let a_t = self.c.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.c.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let eps: Vec<f32> = match self.rc.prediction_type {
            PredictionType::VPrediction => {
                let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
                mo.iter().zip(sample).map(|(&m, &s)| sa * m + sb * s).collect()
            }
            _ => mo.to_vec(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        sample
            .iter()
            .zip(&eps)
            .map(|(&s, &e)| sample_coeff * s - diff * e / denom)
            .collect()
    }

    fn step_prk(&mut self, mo: &[f32], t: i64, sample: &[f32]) -> Vec<f32> {
        let nt = self.rc.num_train_timesteps;
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { (nt / self.c.n / 2) as i64 };
        let prev_t = t - diff_to_prev;
        let t = self.ts[self.counter / 4 * 4];
        let scaled = |k: f32| mo.iter().map(|&m| k * m).collect::<Vec<f32>>();
        let add = |acc: Option<Vec<f32>>, k: f32| -> Vec<f32> {
            match acc {
                Some(a) => a.iter().zip(mo).map(|(&a, &m)| a + k * m).collect(),
                None => scaled(k),
            }
        };
        let model_output: Vec<f32> = match self.counter % 4 {
            0 => {
                let acc = add(self.cur_model_output.take(), (1.0f64 / 6.0) as f32);
                self.cur_model_output = Some(acc);
                self.ets.push(mo.to_vec());
                self.cur_sample = Some(sample.to_vec());
                mo.to_vec()
            }
            1 | 2 => {
                let acc = add(self.cur_model_output.take(), (1.0f64 / 3.0) as f32);
                self.cur_model_output = Some(acc);
                mo.to_vec()
            }
            _ => add(self.cur_model_output.take(), (1.0f64 / 6.0) as f32),
        };
        let cur = self.cur_sample.clone().unwrap_or_else(|| sample.to_vec());
        let prev = self.prev_sample(&cur, t, prev_t, &model_output);
        self.counter += 1;
        prev
    }

    fn step_plms(&mut self, mo: &[f32], t: i64, sample: &[f32]) -> Vec<f32> {
        let ratio = (self.rc.num_train_timesteps / self.c.n) as i64;
        let mut t = t;
        let mut prev_t = t - ratio;
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(mo.to_vec());
        } else {
            prev_t = t;
            t += ratio;
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = sample.to_vec();
        let model_output: Vec<f32> = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            mo.to_vec()
        } else if k == 1 && self.counter == 1 {
            sample = self.cur_sample.take().unwrap_or(sample);
            mo.iter().zip(&e[0]).map(|(&m, &e1)| (m + e1) / 2.0).collect()
        } else if k == 2 {
            e[1].iter().zip(&e[0]).map(|(&e1, &e2)| (3.0 * e1 - e2) / 2.0).collect()
        } else if k == 3 {
            (0..mo.len())
                .map(|j| (23.0 * e[2][j] - 16.0 * e[1][j] + 5.0 * e[0][j]) / 12.0)
                .collect()
        } else {
            let c = (1.0f64 / 24.0) as f32;
            (0..mo.len())
                .map(|j| c * (55.0 * e[3][j] - 59.0 * e[2][j] + 37.0 * e[1][j] - 9.0 * e[0][j]))
                .collect()
        };
        let prev = self.prev_sample(&sample, t, prev_t, &model_output);
        self.counter += 1;
        prev
    }
}

impl Sampler for Pndm {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Pndm
    }
    fn timesteps(&self) -> &[f64] {
        &self.ts_f64
    }
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    fn scale_model_input(&self, sample: &[f32], _i: usize) -> Vec<f32> {
        sample.to_vec()
    }
    fn step(&mut self, model_output: &[f32], i: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<StepOutput, SamplerError> {
        self.c.begin_step(i, self.ts.len(), model_output, sample)?;
        let t = self.ts[i];
        let prev = if self.counter < self.n_prk && !self.rc.skip_prk_steps {
            self.step_prk(model_output, t, sample)
        } else {
            self.step_plms(model_output, t, sample)
        };
        // diffusers' PNDM returns no x0: the standard estimate from this iteration's model output.
        let x0 = x0_from_alpha(self.rc.prediction_type, self.c.alphas_cumprod[t as usize], model_output, sample);
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
            x0_from_scheduler: false,
        })
    }
    fn sigma(&self, i: usize) -> f32 {
        self.c.sigma_at(self.ts[i])
    }
    common_accessors!();
}
