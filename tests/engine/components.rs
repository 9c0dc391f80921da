//! Component-level parity (text encoder, one UNet call, VAE decode) against the tensors
//! diffusers recorded, so a pipeline mismatch can be pinned to one component.

use candle_core::{DType, Device, Tensor};

use crate::common::{Case, load_model, rel_err};
use diffusion_scope::model::unet::AttnProbe;

fn ids(case: &Case, key: &str) -> Tensor {
    let v: Vec<u32> = case.json[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    Tensor::new(v.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
}

fn check_components(model: &str, case_name: &str) {
    let sd = load_model(model);
    let case = Case::load(model, case_name);
    // Text encoder: [negative, positive].
    let pos = sd.text_encoder.forward(&ids(&case, "prompt_ids")).unwrap();
    let neg = sd.text_encoder.forward(&ids(&case, "negative_prompt_ids")).unwrap();
    let emb = Tensor::cat(&[&neg, &pos], 0).unwrap();
    let e = rel_err(&flat(&emb), &flat(&case.tensors["prompt_embeds"]));
    assert!(e < 1e-5, "{model} text encoder rel err {e:.3e}");

    // First UNet call on the reference embeddings and the scaled initial latents.
    let t0 = case.json["timesteps"][0].as_f64().unwrap();
    let sigma = case.json["init_noise_sigma"].as_f64().unwrap();
    let x = (&case.tensors["init_latents"] * sigma).unwrap();
    let x = Tensor::cat(&[&x, &x], 0).unwrap();
    let out = sd
        .unet
        .forward(&x, t0, &case.tensors["prompt_embeds"], &mut AttnProbe::off())
        .unwrap();
    let e = rel_err(&flat(&out), &flat(&case.tensors["unet_out0"]));
    assert!(e < 1e-5, "{model} unet rel err {e:.3e}");

    // VAE decode of diffusers' final latents.
    let n = case.tensors["latents"].dim(0).unwrap();
    let last = case.tensors["latents"].get(n - 1).unwrap().unsqueeze(0).unwrap();
    let img = sd.vae.decode_unit(&last).unwrap();
    let d = (img - &case.tensors["image"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "{model} vae max abs diff {d:.3e}");
}

#[test]
fn sd1_components_match_diffusers() {
    check_components("tiny-sd1", "ddim_g7.5");
}

#[test]
fn sd2_components_match_diffusers() {
    check_components("tiny-sd2", "ddim_g7.5");
}
