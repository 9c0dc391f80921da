//! Noise-schedule curves for the schedules view: beta, alpha_bar and log-SNR over the training
//! timesteps, for the standard schedules and for a model's own scheduler config. The numbers
//! come from the same functions the samplers use (`sampling::schedule`).

use serde_json::json;

use crate::sampling::config::SchedulerConfig;
use crate::sampling::{SamplerError, SamplerKind, schedule};

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleCurves {
    pub name: String,
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
    /// ln(alpha_bar / (1 - alpha_bar)).
    pub log_snr: Vec<f64>,
}

/// Curves of a scheduler config (its own beta schedule, as the samplers resolve it).
pub fn curves_for(name: &str, config: &SchedulerConfig) -> Result<ScheduleCurves, SamplerError> {
    let kind = config.native_kind().unwrap_or(SamplerKind::Ddim);
    let rc = config.resolve(kind)?;
    let betas = schedule::betas(&rc);
    let alphas_cumprod = schedule::alphas_cumprod(&rc);
    let log_snr = schedule::log_snr(&alphas_cumprod);
    Ok(ScheduleCurves {
        name: name.to_owned(),
        betas,
        alphas_cumprod,
        log_snr,
    })
}

/// linear (DDPM: 1e-4..0.02), scaled_linear (SD: 0.00085..0.012) and squaredcos_cap_v2
/// (cosine, Nichol & Dhariwal) over `num_train_timesteps`.
pub fn standard_curves(num_train_timesteps: usize) -> Vec<ScheduleCurves> {
    let make = |name: &str, schedule: &str, start: f64, end: f64| {
        let cfg = SchedulerConfig::from_map(
            json!({"_class_name": "DDIMScheduler", "num_train_timesteps": num_train_timesteps, "beta_schedule": schedule, "beta_start": start, "beta_end": end})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        curves_for(name, &cfg).ok()
    };
    [
        make("linear", "linear", 1e-4, 0.02),
        make("scaled_linear", "scaled_linear", 0.00085, 0.012),
        make("cosine", "squaredcos_cap_v2", 1e-4, 0.02),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_schedules_are_monotone_and_distinct() {
        let c = standard_curves(1000);
        assert_eq!(c.len(), 3);
        for s in &c {
            assert_eq!(s.alphas_cumprod.len(), 1000);
            assert!(s.alphas_cumprod.windows(2).all(|w| w[1] <= w[0]), "{}", s.name);
            assert!(s.log_snr[0] > s.log_snr[999]);
        }
        // scaled_linear ends at alpha_bar ~ 0.0047 (SD's), linear at ~ 4e-5.
        assert!((c[1].alphas_cumprod[999] - 0.00466).abs() < 2e-4, "{}", c[1].alphas_cumprod[999]);
        assert!(c[0].alphas_cumprod[999] < 1e-4);
    }
}
