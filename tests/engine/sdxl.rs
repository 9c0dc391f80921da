//! The SDXL family against diffusers on a tiny random-weight StableDiffusionXLPipeline
//! (tests/fixtures/make_sdxl_fixtures.py): two text encoders of different widths, the
//! second's projection, text_time conditioning, transformer_layers_per_block (1, 2, 3); every
//! sampler with and without guidance, a real negative prompt, the Turbo setting, LCM at 4
//! steps, attention maps.

use diffusion_scope::pipeline;

use crate::common::{fixtures, load_model, rel_err};
use crate::parity::{check_case, check_model};

#[test]
fn sdxl_every_sampler_matches_diffusers() {
    check_model("tiny-sdxl");
}

#[test]
fn sdxl_negative_prompt_turbo_lcm_and_attention_match_diffusers() {
    let mut failures = Vec::new();
    for case in [
        "euler_g5.0_neg",
        "euler-a_g0.0_trailing_s1",
        "euler-a_g0.0_trailing_s2",
        "euler-a_g0.0_trailing_s4",
        "attn_ddim_g7.5",
        "lcm_g1.0",
        "lcm_g1.5",
    ] {
        failures.extend(check_case("tiny-sdxl", case));
    }
    assert!(failures.is_empty(), "{} parity failures:\n{}", failures.len(), failures.join("\n"));
}

/// Both encoders' penultimate states concatenated, the projected pooled embedding, and the
/// zeroed negative of an empty negative prompt, as diffusers' encode_prompt gives them.
#[test]
fn sdxl_prompt_encoding_matches_diffusers() {
    let sd = load_model("tiny-sdxl");
    let reference =
        candle_core::safetensors::load(fixtures().join("ref/tiny-sdxl/encoders.safetensors"), &candle_core::Device::Cpu).unwrap();
    let get = |k: &str| reference[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let prompt = "a big red circle left of a small blue square";
    let e = pipeline::encode_prompt(&sd, prompt, "", true, None).unwrap().embeddings().unwrap();
    assert_eq!(e.dim, 80);
    for (name, ours, key) in [("prompt embeddings", &e.positive, "prompt_embeds"), ("pooled", &e.pooled, "pooled")] {
        let err = rel_err(ours, &get(key));
        assert!(err < 1e-5, "{name}: relative error {err:e}");
    }
    assert!(e.negative.iter().chain(&e.negative_pooled).all(|&v| v == 0.0));
    assert_eq!(e.negative_pooled.len(), 40);
}
