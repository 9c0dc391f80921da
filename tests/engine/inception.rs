//! Our FID Inception-v3 against torch-fidelity's `FeatureExtractorInceptionV3` with the same
//! seeded random weights (tests/fixtures/make_inception_ref.py), through both resize
//! protocols, and the resize protocols alone against PIL and torch-fidelity.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use diffusion_scope::metrics::inception::{Inception, SIZE};
use diffusion_scope::metrics::nprand::RandomState;
use diffusion_scope::metrics::resize::{self, Resize};

use crate::common::{cli, fixtures};
use crate::parity::tempdir;

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

/// The seeded weights as a safetensors file, for the CLI.
fn weights_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("inception-random.safetensors");
    candle_core::safetensors::save(&random_weights(), &p).unwrap();
    p
}

#[test]
fn the_metrics_cli_extracts_shards_merges_and_compares() {
    use diffusion_scope::metrics::FeatureFile;
    let dir = tempdir("metrics-cli");
    let w = weights_file(&dir);
    // Four images: the two fixtures, a grey copy and an RGBA copy (both become RGB), and a
    // corrupt file that is skipped and counted.
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for n in ["a", "b"] {
        std::fs::copy(fixtures().join(format!("inception/{n}.png")), imgs.join(format!("{n}.png"))).unwrap();
    }
    let a = image::open(fixtures().join("inception/a.png")).unwrap();
    a.to_luma8().save(imgs.join("c_grey.png")).unwrap();
    a.to_rgba8().save(imgs.join("d_rgba.png")).unwrap();
    std::fs::write(imgs.join("e_broken.png"), b"not a png").unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (w, imgs_s) = (s(&w), s(&imgs));
    let whole = dir.join("whole.safetensors");
    let o = cli(&[
        "metrics",
        "features",
        "--images",
        &imgs_s,
        "--weights",
        &w,
        "--quiet",
        "--out",
        &s(&whole),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("skipped 1 unreadable image") && err.contains("e_broken.png"), "{err}");
    let f = FeatureFile::read(&whole).unwrap();
    assert_eq!(f.count(), 4);
    assert_eq!(
        (f.meta.network.as_deref(), f.meta.resize.as_deref()),
        (Some("inception"), Some("clean"))
    );
    let rows = f.features.as_ref().unwrap();
    // The grey image is its own RGB; the RGBA copy equals the original.
    assert_eq!(rows.row(3), rows.row(0), "RGBA (opaque) reads as its RGB");
    assert_ne!(rows.row(2), rows.row(0));
    // Two shards of the five files, merged: the same rows.
    let mut parts = Vec::new();
    for i in 1..=2 {
        let p = dir.join(format!("part{i}.safetensors"));
        let o = cli(&[
            "metrics",
            "features",
            "--images",
            &imgs_s,
            "--weights",
            &w,
            "--shard",
            &format!("{i}/2"),
            "--quiet",
            "--out",
            &s(&p),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        parts.push(s(&p));
    }
    let merged = dir.join("merged.safetensors");
    let o = cli(&["metrics", "merge", &parts[0], &parts[1], "--out", &s(&merged)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(FeatureFile::read(&merged).unwrap().features, f.features);
    // compare (on the 24-d fixture sets: FID at 2048-d takes minutes in a debug build, whose
    // faer code is not optimised; tools/metrics/check_inception.py runs it on folders).
    let bytes = std::fs::read(fixtures().join("metrics/sets.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rows = |name: &str| {
        let t = st.tensor(name).unwrap();
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        diffusion_scope::metrics::Rows::new(t.shape()[0], t.shape()[1], v)
    };
    let meta = diffusion_scope::metrics::FeatureMeta::default();
    let real = dir.join("real.safetensors");
    FeatureFile::from_rows(rows("real"), None, meta.clone()).write(&real).unwrap();
    let fake = dir.join("fake.safetensors");
    // The logits (200 rows) stand in for the fake set's classifier output.
    FeatureFile::from_rows(rows("fake"), Some(rows("logits")), meta)
        .write(&fake)
        .unwrap();
    let json = dir.join("m.json");
    let o = cli(&[
        "metrics",
        "compare",
        "--real",
        &s(&real),
        "--fake",
        &s(&fake),
        "--kid",
        "--is",
        "--pr",
        "--json",
        &s(&json),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in [
        "fid",
        "kid_mean",
        "kid_std",
        "is_mean",
        "is_std",
        "precision",
        "recall",
        "n_real",
        "n_fake",
    ] {
        assert!(!v[k].is_null(), "{k} missing in {v}");
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("metrics/ref.json")).unwrap()).unwrap();
    assert!((v["fid"].as_f64().unwrap() - r["fake"]["fid"].as_f64().unwrap()).abs() < 1e-9);
    assert!((v["is_mean"].as_f64().unwrap() - r["is_mean"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!((v["n_real"].as_u64(), v["n_fake"].as_u64()), (Some(240), Some(200)));
    // The default KID subset size is min(1000, n_real, n_fake) = 200 here.
    assert!(v["kid_mean"].as_f64().unwrap() > 0.0);
    assert!(String::from_utf8_lossy(&o.stderr).contains("below 5000 samples"));
    // Bad input: one line naming the problem.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (args, expected) in [
        (
            vec![
                "metrics",
                "features",
                "--images",
                s(&empty).as_str(),
                "--weights",
                w.as_str(),
                "--out",
                "x.safetensors",
            ],
            "no PNG or JPEG images",
        ),
        (
            vec![
                "metrics",
                "features",
                "--images",
                imgs_s.as_str(),
                "--weights",
                imgs_s.as_str(),
                "--out",
                "x.safetensors",
            ],
            "not a torch state dict",
        ),
        (
            vec![
                "metrics",
                "features",
                "--images",
                imgs_s.as_str(),
                "--weights",
                w.as_str(),
                "--shard",
                "3/2",
                "--out",
                "x.safetensors",
            ],
            "--shard",
        ),
        (
            vec![
                "metrics",
                "compare",
                "--real",
                s(&real).as_str(),
                "--fake",
                s(&fake).as_str(),
                "--kid",
                "--kid-subset-size",
                "900",
            ],
            "--kid-subset-size",
        ),
        (
            vec![
                "metrics",
                "compare",
                "--real",
                s(&real).as_str(),
                "--fake",
                s(&real).as_str(),
                "--is",
            ],
            "needs class logits",
        ),
        (
            vec!["metrics", "compare", "--real", s(&real).as_str(), "--fake", s(&whole).as_str()],
            "the real features are 24-d, the fake ones 2048-d",
        ),
        (
            vec!["metrics", "merge", parts[1].as_str(), parts[0].as_str(), "--out", "x.safetensors"],
            "in order",
        ),
    ] {
        let o = cli(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(expected), "{args:?}: {e}");
    }
}

/// A TorchScript archive's tensors by module path, as torch's `state_dict()` names them: nested
/// modules, a buffer, a float16 tensor (candle's flat `pickle::read_all` finds none of them).
#[test]
fn torchscript_archives_are_read_by_module_path() {
    use diffusion_scope::metrics::torchscript;
    let path = fixtures().join("torchscript/nested.pt");
    assert!(candle_core::pickle::read_all(&path).unwrap().is_empty());
    assert!(torchscript::is_torchscript(&path));
    let got = torchscript::read(&path).unwrap();
    let want = candle_core::safetensors::load(fixtures().join("torchscript/nested.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = got.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "layers.0.conv.weight",
            "layers.0.f16",
            "layers.0.var",
            "layers.1.bias",
            "layers.1.weight",
            "scale"
        ]
    );
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!((g.dims(), g.dtype()), (w.dims(), w.dtype()), "{k}");
        let (g, w) = (
            values(&g.to_dtype(candle_core::DType::F32).unwrap()),
            values(&w.to_dtype(candle_core::DType::F32).unwrap()),
        );
        assert_eq!(g, w, "{k}");
    }
    // Not the FID Inception: said by name, not a panic.
    let e = Inception::load(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("without the FID Inception's parameters"), "{e}");
    // A state-dict .pth is not mistaken for an archive.
    assert!(!torchscript::is_torchscript(&fixtures().join("inception/a.png")));
}
