//! Plain data shared by every layer: what the model produces and what a trace stores. No
//! candle, no I/O, no imports from the rest of the crate, so `model`, `trace`, `pipeline` and
//! the UI can all use these without an import cycle.

use serde::{Deserialize, Serialize};

/// What to keep of the cross-attention probabilities during a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Nothing: the probe is a no-op.
    None,
    /// Per step, per resolution: the mean over the attn2 layers of that resolution of the
    /// head-averaged maps (conditional branch). Bounded memory.
    #[default]
    Aggregate,
    /// Every attn2 layer at every step (head-averaged, conditional branch).
    Full,
}

impl std::str::FromStr for CaptureMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "aggregate" => Ok(Self::Aggregate),
            "full" => Ok(Self::Full),
            other => Err(format!(
                "unknown attention capture mode '{other}' (expected none, aggregate or full)"
            )),
        }
    }
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Aggregate => "aggregate",
            Self::Full => "full",
        }
    }
}

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// The text options beyond the two prompts, as diffusers' pipelines take them; recorded in a
/// run's trace when set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextOptions {
    /// SDXL: the second text encoder's prompts (`prompt_2` / `negative_prompt_2`; None or
    /// empty: the first ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt_2: Option<String>,
    /// `clip_skip` (None: the pipeline's default layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<usize>,
}

impl TextOptions {
    /// Empty strings are "not given" (diffusers' `prompt_2 or prompt`).
    pub fn new(prompt_2: &str, negative_prompt_2: &str, clip_skip: Option<usize>) -> Self {
        let given = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            prompt_2: given(prompt_2),
            negative_prompt_2: given(negative_prompt_2),
            clip_skip,
        }
    }
}
