//! `scheduler/scheduler_config.json` of a diffusers repository, and how a sampler class reads it.
//!
//! diffusers builds a scheduler with `Class.from_config(config)`: every `__init__` parameter of
//! the target class is taken from the config when the config has that key, otherwise the class's
//! own default is used; keys the class does not know are ignored, and keys listed in
//! `_use_default_values` are treated as absent. [`SchedulerConfig::resolve`] reproduces that, so
//! switching an SD1.5 repo (PNDM config) to `euler` behaves like
//! `EulerDiscreteScheduler.from_config(pndm_config)`.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{SamplerError, SamplerKind};

/// A scheduler config as stored on disk: the class name plus the raw key/value map.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// `_class_name`, e.g. `"PNDMScheduler"` (None when the file has none).
    pub class_name: Option<String>,
    /// `num_train_timesteps` (diffusers default 1000 when absent).
    pub num_train_timesteps: usize,
    /// `prediction_type` ("epsilon" when absent).
    pub prediction_type: String,
    /// `beta_schedule` ("linear" when absent).
    pub beta_schedule: String,
    /// All keys as written (including `_class_name` / `_diffusers_version`).
    pub raw: Map<String, Value>,
}

impl<'de> Deserialize<'de> for SchedulerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Map::<String, Value>::deserialize(d)?;
        Ok(Self::from_map(raw))
    }
}

impl serde::Serialize for SchedulerConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

/// The longest training schedule accepted (diffusers' models use 1000; the schedule is built
/// in memory, so a config saying 2^53 would abort the process).
pub const MAX_TRAIN_TIMESTEPS: u64 = 100_000;

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self::from_map(Map::new())
    }
}

impl SchedulerConfig {
    pub fn from_map(raw: Map<String, Value>) -> Self {
        let class_name = raw.get("_class_name").and_then(Value::as_str).map(str::to_owned);
        let mut c = Self {
            class_name,
            num_train_timesteps: 1000,
            prediction_type: "epsilon".into(),
            beta_schedule: "linear".into(),
            raw,
        };
        if let Some(n) = c.get("num_train_timesteps").and_then(Value::as_u64) {
            c.num_train_timesteps = n as usize;
        }
        if let Some(p) = c.get("prediction_type").and_then(Value::as_str) {
            c.prediction_type = p.to_owned();
        }
        if let Some(b) = c.get("beta_schedule").and_then(Value::as_str) {
            c.beta_schedule = b.to_owned();
        }
        c
    }

    /// Parses a config JSON text. Python's non-standard `Infinity` / `-Infinity` / `NaN` literals
    /// (which `json.dumps` writes for e.g. `lambda_min_clipped = -inf`) are accepted.
    pub fn from_json_str(text: &str) -> Result<Self, SamplerError> {
        let text = quote_non_finite_literals(text);
        let value: Value =
            serde_json::from_str(&text).map_err(|e| SamplerError::ConfigParse(format!("invalid scheduler config JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(Self::from_map(map)),
            other => Err(SamplerError::ConfigParse(format!(
                "scheduler config must be a JSON object, got {}",
                type_name(&other)
            ))),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, SamplerError> {
        let text = std::fs::read_to_string(path).map_err(|e| SamplerError::ConfigParse(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json_str(&text).map_err(|e| SamplerError::ConfigParse(format!("{}: {e}", path.display())))
    }

    /// The value of `key` as written in the file (None when absent or listed in `_use_default_values`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        if self.uses_default(key) {
            return None;
        }
        self.raw.get(key)
    }

    fn uses_default(&self, key: &str) -> bool {
        self.raw
            .get("_use_default_values")
            .and_then(Value::as_array)
            .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some(key)))
    }

    /// The sampler kind whose diffusers class wrote this config, if it is one of ours.
    pub fn native_kind(&self) -> Option<SamplerKind> {
        SamplerKind::ALL
            .iter()
            .copied()
            .find(|k| Some(k.diffusers_class()) == self.class_name.as_deref())
    }

    /// The parameters `kind`'s diffusers class would be constructed with from this config
    /// (its `__init__` keys, config values where present, class defaults otherwise).
    pub fn effective_map(&self, kind: SamplerKind) -> Map<String, Value> {
        let mut map = Map::new();
        for (key, default) in class_params(kind) {
            let v = self.get(key).cloned().unwrap_or(default);
            map.insert(key.to_string(), v);
        }
        map
    }

    /// Resolves and validates the config for `kind` (see [`ResolvedConfig`]).
    pub fn resolve(&self, kind: SamplerKind) -> Result<ResolvedConfig, SamplerError> {
        ResolvedConfig::from_effective(kind, self.effective_map(kind))
    }

    /// The config resolved for the class that wrote it (or DDPM-style defaults when the class is
    /// unknown) — what the UI uses to plot betas / alphas_cumprod of a repo.
    pub fn resolve_native(&self) -> Result<ResolvedConfig, SamplerError> {
        self.resolve(self.native_kind().unwrap_or(SamplerKind::Ddpm))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Wraps bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) in quotes.
fn quote_non_finite_literals(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            rest = &rest[1..];
            continue;
        }
        let mut matched = false;
        for lit in ["-Infinity", "Infinity", "NaN"] {
            if rest.starts_with(lit) {
                out.push('"');
                out.push_str(lit);
                out.push('"');
                rest = &rest[lit.len()..];
                matched = true;
                break;
            }
        }
        if !matched {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// A config key and the constructor of its default value.
type KeyDefault = (&'static str, fn() -> Value);

const COMMON: &[KeyDefault] = &[
    ("num_train_timesteps", || json!(1000)),
    ("beta_start", || json!(0.0001)),
    ("beta_end", || json!(0.02)),
    ("beta_schedule", || json!("linear")),
    ("trained_betas", || Value::Null),
];

/// `__init__` parameters and defaults of each diffusers class (diffusers 0.42), in signature order
/// after the common beta keys.
fn class_params(kind: SamplerKind) -> Vec<(&'static str, Value)> {
    let mut v: Vec<(&'static str, Value)> = COMMON.iter().map(|(k, f)| (*k, f())).collect();
    let eps = || json!("epsilon");
    let f = || json!(false);
    let extra: Vec<(&'static str, Value)> = match kind {
        SamplerKind::Ddim => vec![
            ("clip_sample", json!(true)),
            ("set_alpha_to_one", json!(true)),
            ("steps_offset", json!(0)),
            ("prediction_type", eps()),
            ("thresholding", f()),
            ("dynamic_thresholding_ratio", json!(0.995)),
            ("clip_sample_range", json!(1.0)),
            ("sample_max_value", json!(1.0)),
            ("timestep_spacing", json!("leading")),
            ("rescale_betas_zero_snr", f()),
        ],
        SamplerKind::Ddpm => vec![
            ("variance_type", json!("fixed_small")),
            ("clip_sample", json!(true)),
            ("prediction_type", eps()),
            ("thresholding", f()),
            ("dynamic_thresholding_ratio", json!(0.995)),
            ("clip_sample_range", json!(1.0)),
            ("sample_max_value", json!(1.0)),
            ("timestep_spacing", json!("leading")),
            ("steps_offset", json!(0)),
            ("rescale_betas_zero_snr", f()),
        ],
        SamplerKind::Euler => vec![
            ("prediction_type", eps()),
            ("interpolation_type", json!("linear")),
            ("use_karras_sigmas", f()),
            ("use_exponential_sigmas", f()),
            ("use_beta_sigmas", f()),
            ("sigma_min", Value::Null),
            ("sigma_max", Value::Null),
            ("timestep_spacing", json!("linspace")),
            ("timestep_type", json!("discrete")),
            ("steps_offset", json!(0)),
            ("rescale_betas_zero_snr", f()),
            ("final_sigmas_type", json!("zero")),
        ],
        SamplerKind::EulerAncestral => vec![
            ("prediction_type", eps()),
            ("timestep_spacing", json!("linspace")),
            ("steps_offset", json!(0)),
            ("rescale_betas_zero_snr", f()),
        ],
        SamplerKind::DpmPP2M => vec![
            ("solver_order", json!(2)),
            ("prediction_type", eps()),
            ("thresholding", f()),
            ("dynamic_thresholding_ratio", json!(0.995)),
            ("sample_max_value", json!(1.0)),
            ("algorithm_type", json!("dpmsolver++")),
            ("solver_type", json!("midpoint")),
            ("lower_order_final", json!(true)),
            ("euler_at_final", f()),
            ("use_karras_sigmas", f()),
            ("use_exponential_sigmas", f()),
            ("use_beta_sigmas", f()),
            ("use_lu_lambdas", f()),
            ("use_flow_sigmas", f()),
            ("flow_shift", json!(1.0)),
            ("final_sigmas_type", json!("zero")),
            ("lambda_min_clipped", json!("-Infinity")),
            ("variance_type", Value::Null),
            ("timestep_spacing", json!("linspace")),
            ("steps_offset", json!(0)),
            ("rescale_betas_zero_snr", f()),
            ("use_dynamic_shifting", f()),
            ("time_shift_type", json!("exponential")),
        ],
        SamplerKind::Pndm => vec![
            ("skip_prk_steps", f()),
            ("set_alpha_to_one", f()),
            ("prediction_type", eps()),
            ("timestep_spacing", json!("leading")),
            ("steps_offset", json!(0)),
        ],
        SamplerKind::Lms => vec![
            ("use_karras_sigmas", f()),
            ("use_exponential_sigmas", f()),
            ("use_beta_sigmas", f()),
            ("prediction_type", eps()),
            ("timestep_spacing", json!("linspace")),
            ("steps_offset", json!(0)),
        ],
        SamplerKind::Lcm => {
            // LCMScheduler's beta defaults are SD's.
            v[1].1 = json!(0.00085);
            v[2].1 = json!(0.012);
            v[3].1 = json!("scaled_linear");
            vec![
                ("original_inference_steps", json!(50)),
                ("clip_sample", f()),
                ("clip_sample_range", json!(1.0)),
                ("set_alpha_to_one", json!(true)),
                ("steps_offset", json!(0)),
                ("prediction_type", eps()),
                ("thresholding", f()),
                ("dynamic_thresholding_ratio", json!(0.995)),
                ("sample_max_value", json!(1.0)),
                ("timestep_spacing", json!("leading")),
                ("timestep_scaling", json!(10.0)),
                ("rescale_betas_zero_snr", f()),
            ]
        }
        SamplerKind::Heun => {
            // Heun's beta defaults differ from every other class.
            v[1].1 = json!(0.00085);
            v[2].1 = json!(0.012);
            vec![
                ("prediction_type", eps()),
                ("use_karras_sigmas", f()),
                ("use_exponential_sigmas", f()),
                ("use_beta_sigmas", f()),
                ("clip_sample", f()),
                ("clip_sample_range", json!(1.0)),
                ("timestep_spacing", json!("linspace")),
                ("steps_offset", json!(0)),
            ]
        }
    };
    v.extend(extra);
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// A config resolved for one sampler class: every parameter that class reads, typed and
/// validated. Parameters the class does not have keep the neutral value noted on the field.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    pub kind: SamplerKind,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    /// "leading" | "linspace" | "trailing" (as the class would use them).
    pub timestep_spacing: super::TimestepSpacing,
    pub steps_offset: i64,
    /// false for classes without the key.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub skip_prk_steps: bool,
    pub rescale_betas_zero_snr: bool,
    pub use_karras_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// true = final sigma is 0 ("zero"), false = "sigma_min".
    pub final_sigma_zero: bool,
    /// DDPM: "fixed_small" | "fixed_small_log" | "fixed_large".
    pub variance_type: String,
    /// DPM-Solver: "midpoint" | "heun".
    pub solver_type: String,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub lambda_min_clipped: f64,
    /// LCM: the distillation schedule's length and the boundary condition's time scale.
    pub original_inference_steps: usize,
    pub timestep_scaling: f64,
    /// The effective parameter map (what diffusers' `scheduler.config` would hold).
    pub effective: Map<String, Value>,
}

fn bad(key: &str, value: &Value, why: &str) -> SamplerError {
    SamplerError::UnsupportedConfig {
        key: key.to_string(),
        value: value.to_string(),
        reason: why.to_string(),
    }
}

impl ResolvedConfig {
    pub(crate) fn from_effective(kind: SamplerKind, map: Map<String, Value>) -> Result<Self, SamplerError> {
        let get = |k: &str| map.get(k).cloned().unwrap_or(Value::Null);
        let has = |k: &str| map.contains_key(k);
        let as_f64 = |k: &str| -> Result<f64, SamplerError> {
            let v = get(k);
            v.as_f64().ok_or_else(|| bad(k, &v, "expected a number"))
        };
        let opt_f64 = |k: &str| -> Result<Option<f64>, SamplerError> {
            match get(k) {
                Value::Null => Ok(None),
                v => v.as_f64().map(Some).ok_or_else(|| bad(k, &v, "expected a number or null")),
            }
        };
        let as_bool = |k: &str| -> Result<bool, SamplerError> {
            match get(k) {
                Value::Null if !has(k) => Ok(false),
                v => v.as_bool().ok_or_else(|| bad(k, &v, "expected true or false")),
            }
        };
        let as_str = |k: &str| -> Result<String, SamplerError> {
            let v = get(k);
            v.as_str().map(str::to_owned).ok_or_else(|| bad(k, &v, "expected a string"))
        };
        let must_be_false = |k: &str, why: &str| -> Result<(), SamplerError> {
            if has(k) && as_bool(k)? {
                return Err(bad(k, &get(k), why));
            }
            Ok(())
        };

        let num_train_timesteps = {
            let v = get("num_train_timesteps");
            match v.as_u64() {
                Some(n) if (2..=MAX_TRAIN_TIMESTEPS).contains(&n) => n as usize,
                _ => {
                    return Err(bad(
                        "num_train_timesteps",
                        &v,
                        &format!("expected an integer from 2 to {MAX_TRAIN_TIMESTEPS} (the schedule is built in memory)"),
                    ));
                }
            }
        };
        let beta_schedule = match as_str("beta_schedule")?.as_str() {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
            _ => {
                return Err(bad(
                    "beta_schedule",
                    &get("beta_schedule"),
                    "supported: \"linear\", \"scaled_linear\", \"squaredcos_cap_v2\"",
                ));
            }
        };
        let trained_betas = match get("trained_betas") {
            Value::Null => None,
            Value::Array(a) => {
                let betas: Option<Vec<f64>> = a.iter().map(Value::as_f64).collect();
                let betas = betas.ok_or_else(|| bad("trained_betas", &get("trained_betas"), "expected numbers"))?;
                if betas.len() != num_train_timesteps {
                    return Err(SamplerError::LengthMismatch {
                        what: "trained_betas".into(),
                        expected: num_train_timesteps,
                        got: betas.len(),
                    });
                }
                Some(betas)
            }
            v => return Err(bad("trained_betas", &v, "expected null or a list of numbers")),
        };
        let prediction_type = match as_str("prediction_type")?.as_str() {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" if kind != SamplerKind::Pndm => PredictionType::Sample,
            "original_sample" if kind == SamplerKind::Euler => PredictionType::Sample,
            _ => {
                let allowed = if kind == SamplerKind::Pndm {
                    "supported by PNDMScheduler: \"epsilon\", \"v_prediction\""
                } else {
                    "supported: \"epsilon\", \"v_prediction\", \"sample\""
                };
                return Err(bad("prediction_type", &get("prediction_type"), allowed));
            }
        };
        let timestep_spacing = match as_str("timestep_spacing")?.as_str() {
            "leading" => super::TimestepSpacing::Leading,
            "linspace" => super::TimestepSpacing::Linspace,
            "trailing" => super::TimestepSpacing::Trailing,
            _ => {
                return Err(bad(
                    "timestep_spacing",
                    &get("timestep_spacing"),
                    "supported: \"leading\", \"linspace\", \"trailing\"",
                ));
            }
        };
        let steps_offset = {
            let v = get("steps_offset");
            match v.as_i64() {
                Some(o) if (0..num_train_timesteps as i64).contains(&o) => o,
                _ => {
                    return Err(bad(
                        "steps_offset",
                        &v,
                        &format!(
                            "expected an integer from 0 to num_train_timesteps - 1 ({})",
                            num_train_timesteps - 1
                        ),
                    ));
                }
            }
        };
        must_be_false(
            "thresholding",
            "dynamic thresholding is not implemented (and unsuitable for latent diffusion)",
        )?;
        must_be_false(
            "use_exponential_sigmas",
            "exponential sigmas are not implemented (use the exponential timestep spacing option instead)",
        )?;
        must_be_false("use_beta_sigmas", "beta sigmas are not implemented")?;
        must_be_false("use_lu_lambdas", "Lu lambdas are not implemented")?;
        must_be_false("use_flow_sigmas", "flow sigmas are not implemented")?;
        must_be_false("use_dynamic_shifting", "dynamic shifting is not implemented")?;
        if has("interpolation_type") && as_str("interpolation_type")? != "linear" {
            return Err(bad(
                "interpolation_type",
                &get("interpolation_type"),
                "only \"linear\" is implemented",
            ));
        }
        if has("timestep_type") {
            let tt = as_str("timestep_type")?;
            if tt != "discrete" && !(tt == "continuous" && prediction_type != PredictionType::VPrediction) {
                return Err(bad("timestep_type", &get("timestep_type"), "only \"discrete\" is implemented"));
            }
        }
        let final_sigma_zero = if has("final_sigmas_type") {
            match as_str("final_sigmas_type")?.as_str() {
                "zero" => true,
                "sigma_min" => false,
                _ => {
                    return Err(bad(
                        "final_sigmas_type",
                        &get("final_sigmas_type"),
                        "supported: \"zero\", \"sigma_min\"",
                    ));
                }
            }
        } else {
            true
        };
        let variance_type = match kind {
            SamplerKind::Ddpm => {
                let vt = as_str("variance_type")?;
                if !["fixed_small", "fixed_small_log", "fixed_large"].contains(&vt.as_str()) {
                    return Err(bad(
                        "variance_type",
                        &get("variance_type"),
                        "supported by DDPM here: \"fixed_small\", \"fixed_small_log\", \"fixed_large\"",
                    ));
                }
                vt
            }
            SamplerKind::DpmPP2M => {
                if !get("variance_type").is_null() {
                    return Err(bad("variance_type", &get("variance_type"), "learned variance is not implemented"));
                }
                String::new()
            }
            _ => String::new(),
        };
        let (solver_type, lower_order_final, euler_at_final, lambda_min_clipped) = if kind == SamplerKind::DpmPP2M {
            // `dpm++2m` is DPM-Solver++ of order 2 by definition; a config written for another
            // algorithm or order (e.g. a DPMSolverMultistepScheduler config with solver_order 3)
            // is overridden rather than rejected. solver_type follows diffusers' own coercion.
            let st = match as_str("solver_type")?.as_str() {
                "midpoint" | "logrho" | "bh1" | "bh2" => "midpoint".to_string(),
                "heun" => "heun".to_string(),
                _ => return Err(bad("solver_type", &get("solver_type"), "supported: \"midpoint\", \"heun\"")),
            };
            let lmc = match get("lambda_min_clipped") {
                Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
                Value::Null => f64::NEG_INFINITY,
                v => v.as_f64().ok_or_else(|| bad("lambda_min_clipped", &v, "expected a number"))?,
            };
            (st, as_bool("lower_order_final")?, as_bool("euler_at_final")?, lmc)
        } else {
            (String::new(), false, false, f64::NEG_INFINITY)
        };
        let mut effective = map.clone();
        if kind == SamplerKind::DpmPP2M {
            effective.insert("algorithm_type".into(), json!("dpmsolver++"));
            effective.insert("solver_order".into(), json!(2));
            effective.insert("solver_type".into(), json!(solver_type));
        }
        Ok(Self {
            kind,
            num_train_timesteps,
            beta_start: as_f64("beta_start")?,
            beta_end: as_f64("beta_end")?,
            beta_schedule,
            trained_betas,
            prediction_type,
            timestep_spacing,
            steps_offset,
            clip_sample: as_bool("clip_sample")?,
            clip_sample_range: if has("clip_sample_range") {
                as_f64("clip_sample_range")?
            } else {
                1.0
            },
            set_alpha_to_one: as_bool("set_alpha_to_one")?,
            skip_prk_steps: as_bool("skip_prk_steps")?,
            rescale_betas_zero_snr: as_bool("rescale_betas_zero_snr")?,
            use_karras_sigmas: as_bool("use_karras_sigmas")?,
            sigma_min: opt_f64("sigma_min")?,
            sigma_max: opt_f64("sigma_max")?,
            final_sigma_zero,
            variance_type,
            solver_type,
            lower_order_final,
            euler_at_final,
            lambda_min_clipped,
            original_inference_steps: if has("original_inference_steps") {
                let v = get("original_inference_steps");
                v.as_u64()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad("original_inference_steps", &v, "expected a positive integer"))? as usize
            } else {
                50
            },
            timestep_scaling: if has("timestep_scaling") {
                as_f64("timestep_scaling")?
            } else {
                10.0
            },
            effective,
        })
    }
}
