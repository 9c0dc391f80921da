//! Our FID Inception-v3 against torch-fidelity's `FeatureExtractorInceptionV3` with the same
//! seeded random weights (tests/fixtures/make_inception_ref.py), through both resize
//! protocols, and the resize protocols alone against PIL and torch-fidelity.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use diffusion_scope::metrics::inception::{Inception, SIZE};
use diffusion_scope::metrics::nprand::RandomState;
use diffusion_scope::metrics::resize::{self, Resize};

use crate::common::fixtures;

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("inception/ref.safetensors"), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The script's weights: every tensor in sorted-name order from one RandomState(7) stream.
fn random_weights() -> HashMap<String, Tensor> {
    let text = std::fs::read_to_string(fixtures().join("inception/names.json")).unwrap();
    let names: Vec<(String, Vec<usize>)> = serde_json::from_str(&text).unwrap();
    let mut rs = RandomState::new(7);
    names
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let map: Box<dyn Fn(f64) -> f64> = if name.ends_with("conv.weight") {
                let fan_in: usize = shape[1..].iter().product();
                let bound = (6.0 / fan_in as f64).sqrt();
                Box::new(move |u| (u * 2.0 - 1.0) * bound)
            } else if name.ends_with("bn.weight") {
                Box::new(|u| 0.8 + 0.4 * u)
            } else if name.ends_with("bn.running_var") {
                Box::new(|u| 0.5 + u)
            } else if name == "fc.weight" {
                let bound = (3.0 / shape[1] as f64).sqrt();
                Box::new(move |u| (u * 2.0 - 1.0) * bound)
            } else {
                Box::new(|u| 0.2 * u - 0.1)
            };
            let v: Vec<f32> = (0..n).map(|_| map(rs.random_sample()) as f32).collect();
            (name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

fn max_rel(ours: &[f32], theirs: &[f32]) -> f32 {
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
    ours.iter().zip(theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn resize_protocols_match_pil_and_torch_fidelity() {
    let r = reference();
    let src = &r["resize.src"];
    let (h, w) = src.dims2().unwrap();
    let src = values(src);
    for (ow, oh) in [(31, 20), (6, 4), (70, 50)] {
        let pil = values(&r[&format!("resize.pil.{ow}x{oh}")]);
        let ours = resize::pil_bicubic(&src, w, h, ow, oh);
        let worst = ours.iter().zip(&pil).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4, "PIL bicubic {w}x{h} -> {ow}x{oh}: max difference {worst}");
        let tf = values(&r[&format!("resize.tf.{ow}x{oh}")]);
        assert_eq!(resize::tf_bilinear(&src, w, h, ow, oh), tf, "TF bilinear {w}x{h} -> {ow}x{oh}");
    }
}

#[test]
fn the_network_matches_torch_fidelity_on_seeded_weights() {
    let r = reference();
    let net = Inception::from_tensors(&random_weights(), &Device::Cpu).unwrap();
    assert!(net.has_logits());
    for name in ["a", "b"] {
        let img = image::open(fixtures().join(format!("inception/{name}.png"))).unwrap().to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        for (protocol, resize) in [("legacy", Resize::TfBilinear), ("clean", Resize::Clean)] {
            let x = resize::network_input(img.as_raw(), w, h, resize);
            let x = Tensor::from_vec(x, (1, 3, SIZE, SIZE), &Device::Cpu).unwrap();
            let out = net.forward(&x).unwrap();
            let pool = values(&out.pool3);
            let logits = values(out.logits.as_ref().unwrap());
            let e_pool = max_rel(&pool, &values(&r[&format!("{name}.{protocol}.pool3")]));
            let e_logits = max_rel(&logits, &values(&r[&format!("{name}.{protocol}.logits")]));
            eprintln!("{name} ({protocol}): pool3 {e_pool:.2e}, logits {e_logits:.2e}");
            assert!(
                e_pool < 1e-4 && e_logits < 1e-4,
                "{name} ({protocol}): pool3 max difference {e_pool:.2e}, logits {e_logits:.2e} (of the largest value)"
            );
        }
    }
}

#[test]
fn weights_of_another_network_name_the_missing_key() {
    let mut w = random_weights();
    w.remove("Mixed_6c.branch7x7dbl_3.bn.running_var");
    let e = Inception::from_tensors(&w, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("`Mixed_6c.branch7x7dbl_3.bn.running_var`"), "{e}");
}
