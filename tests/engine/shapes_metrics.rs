//! The shapes world's evaluation networks (assets/shapes-metrics): the feature network against
//! PyTorch's outputs at export, the sanity ordering of FID under known damage on a small slice,
//! and the shapes CLIP telling a render's caption from another caption.

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use diffusion_scope::metrics::extract::{Network, NetworkChoice};
use diffusion_scope::metrics::sanity::{self, Damage};
use diffusion_scope::metrics::shapes_net::ShapesNet;

use crate::common::rel_err;

#[test]
fn the_feature_network_matches_pytorch() {
    let dir = diffusion_scope::shapes_featnet_path();
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let net = ShapesNet::load(&dir, &Device::Cpu).unwrap();
    let images = &reference["images"]; // [16, 64, 64, 3] u8
    let (n, h, w, _) = images.dims4().unwrap();
    let raw: Vec<u8> = images.flatten_all().unwrap().to_vec1().unwrap();
    let mut input = Vec::new();
    for i in 0..n {
        input.extend(net.input(&raw[i * h * w * 3..(i + 1) * h * w * 3], w, h));
    }
    let x = Tensor::from_vec(input, (n, 3, h, w), &Device::Cpu).unwrap();
    let out = net.forward(&x).unwrap();
    let rows = |t: &Tensor| -> Vec<Vec<f32>> { t.to_vec2().unwrap() };
    for (a, b) in rows(&out.features).iter().zip(rows(&reference["features"])) {
        assert!(rel_err(a, &b) < 1e-5, "features: {}", rel_err(a, &b));
    }
    for (name, t) in &out.heads {
        for (a, b) in rows(t).iter().zip(rows(&reference[&format!("logits.{name}")])) {
            assert!(rel_err(a, &b) < 1e-5, "{name}: {}", rel_err(a, &b));
        }
    }
    assert_eq!((net.features, net.classes), (256, 24));
}

#[test]
fn fid_on_the_shapes_network_grows_with_each_kind_of_damage() {
    let net = NetworkChoice::Shapes { dir: None }.load(&Device::Cpu).unwrap();
    assert!(matches!(net, Network::Shapes(_)));
    // Coarser steps than the CLI's table: at 200 images FID's noise hides the mildest damage.
    let ladders = [
        [Damage::Blur(1.0), Damage::Blur(2.0), Damage::Blur(3.0)],
        [Damage::Desaturate(0.5), Damage::Desaturate(0.75), Damage::Desaturate(1.0)],
        [Damage::WrongShape(0.5), Damage::WrongShape(0.75), Damage::WrongShape(1.0)],
    ];
    let damages: Vec<Damage> = std::iter::once(Damage::None).chain(ladders.iter().flatten().copied()).collect();
    let rows = sanity::study(&net, 200, &damages, false, &AtomicBool::new(false), &mut |_, _| {})
        .unwrap()
        .unwrap();
    let fid = |d: Damage| rows.iter().find(|r| r.damage == d).unwrap().fid;
    let clean = fid(Damage::None);
    for r in &rows[1..] {
        assert!(r.fid > clean, "{}: {} <= clean {clean}", r.label, r.fid);
    }
    for ladder in ladders {
        assert!(
            fid(ladder[0]) < fid(ladder[1]) && fid(ladder[1]) < fid(ladder[2]),
            "{ladder:?}: {rows:#?}"
        );
    }
}

#[test]
fn the_shapes_clip_scores_a_renders_caption_above_another_caption() {
    use diffusion_scope::metrics::clip::{self, Clip};
    let clip = Clip::load("shapes", &Device::Cpu).unwrap();
    assert_eq!(clip.name, "shapes");
    let samples = sanity::samples(40, 7);
    let images = sanity::damaged(&samples, Damage::None, 0);
    let captions: Vec<String> = samples.iter().map(|s| s.scene.caption.clone()).collect();
    // Each image against the caption of the image 17 places on (a different scene).
    let shifted: Vec<String> = (0..captions.len()).map(|i| captions[(i + 17) % captions.len()].clone()).collect();
    let score = |caps: &[String]| {
        clip::clip_score(&clip, &images, caps, 8, &AtomicBool::new(false), &mut |_, _| {})
            .unwrap()
            .unwrap()
    };
    let (right, wrong) = (score(&captions), score(&shifted));
    assert!(
        right.clip_score > wrong.clip_score + 30.0,
        "{} vs {}",
        right.clip_score,
        wrong.clip_score
    );
    // Per image, the right caption wins for most renders.
    let wins = right.scores.iter().zip(&wrong.scores).filter(|(a, b)| a.1 > b.1).count();
    assert!(wins >= 36, "{wins} of 40");
}
