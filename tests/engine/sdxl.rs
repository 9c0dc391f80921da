//! The SDXL family against diffusers on a tiny random-weight StableDiffusionXLPipeline
//! (tests/fixtures/make_sdxl_fixtures.py): two text encoders of different widths, the
//! second's projection, text_time conditioning, transformer_layers_per_block (1, 2, 3); every
//! sampler with and without guidance, a real negative prompt, the Turbo setting, LCM at 4
//! steps, attention maps.

use diffusion_scope::pipeline;

use crate::common::{fixtures, load_model, rel_err};
use crate::parity::{check_case, check_case_with, check_model};

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

/// diffusers' `prompt_2` / `negative_prompt_2` and `clip_skip` (SDXL: from the penultimate
/// layer, positive prompt only; SD 1.x: through the final layer norm, positive prompt only).
/// Without the setting each case fails: the references do depend on it.
#[test]
fn second_prompts_and_clip_skip_match_diffusers() {
    let mut failures = Vec::new();
    for (model, case) in [
        ("tiny-sdxl", "euler_g5.0_p2"),
        ("tiny-sdxl", "euler_g5.0_neg_p2"),
        ("tiny-sdxl", "euler_g5.0_neg_clipskip1"),
        ("tiny-sd1", "euler_g7.5_clipskip1"),
    ] {
        failures.extend(check_case(model, case));
        let without = check_case_with(model, case, &|c| c.text_options = Default::default());
        assert!(!without.is_empty(), "{model}/{case} passes without its text options");
    }
    assert!(failures.is_empty(), "{} parity failures:\n{}", failures.len(), failures.join("\n"));
}

/// An LCM-distilled SDXL UNet (`time_cond_proj_dim`: the guidance goes in as an embedding, no
/// CFG batch, at any guidance) with an asymmetrical transformer layout (nested
/// `transformer_layers_per_block`, `reverse_transformer_layers_per_block`): LCM at 4 steps with
/// attention maps per layer, at w 1, and Euler at w 5.
#[test]
fn lcm_distilled_asymmetric_unet_matches_diffusers() {
    let sd = load_model("tiny-sdxl-lcm");
    assert!(sd.unet.embeds_guidance());
    // down 1: 1 + 2, down 2: 2 + 1, mid: 2, up 0: 1 + 2 + 1, up 1: 2 + 1 + 1 transformer blocks.
    assert_eq!(sd.unet.attn_layers().len(), 16);
    let mut failures = Vec::new();
    for case in ["attn_lcm_g8.5", "lcm_g1.0", "euler_g5.0"] {
        failures.extend(check_case("tiny-sdxl-lcm", case));
    }
    assert!(failures.is_empty(), "{} parity failures:\n{}", failures.len(), failures.join("\n"));
    // The guidance is an input: another w changes the run.
    let other = check_case_with("tiny-sdxl-lcm", "lcm_g1.0", &|c| c.guidance = 2.0);
    assert!(!other.is_empty());
}

/// SDXL in f16 decodes with the VAE upcast to f32 (diffusers' `force_upcast`); SD does not.
/// The upcast decode of diffusers' final latents is within 1/255 of its f32 image.
#[test]
fn f16_sdxl_upcasts_the_vae() {
    use candle_core::{DType, Device};
    use diffusion_scope::model::StableDiffusion;
    let xl = StableDiffusion::load(&fixtures().join("tiny-sdxl"), &Device::Cpu, DType::F16).unwrap();
    assert_eq!((xl.dtype, xl.vae_dtype), (DType::F16, DType::F32));
    let sd1 = StableDiffusion::load(&fixtures().join("tiny-sd1"), &Device::Cpu, DType::F16).unwrap();
    assert_eq!(sd1.vae_dtype, DType::F16);
    let case = crate::common::Case::load("tiny-sdxl", "euler_g5.0_neg");
    let last = case.get("latents").unwrap().pop().unwrap();
    let image = pipeline::decode(&xl, last, [4, 16, 16]).unwrap();
    let max = crate::common::image_max_diff(&image, &case.tensors["image"]);
    eprintln!("f16 weights, f32 decode: max pixel difference {max:.5}");
    assert!(max <= 1.0 / 255.0 + 1e-6, "{max}");
}
