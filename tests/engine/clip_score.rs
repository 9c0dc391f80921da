//! CLIP against transformers' `CLIPModel` / `CLIPProcessor` and torchmetrics' `clip_score` on a
//! tiny random-weight CLIP (tests/fixtures/make_clip_ref.py): the image processor bit for bit,
//! both towers' embeddings, the per-pair scores and the CLIP score, the CLIP features clean-fid's
//! recipe gives, and the CLI.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use diffusion_scope::metrics::clip::{self, Clip};
use diffusion_scope::metrics::extract::{self, ExtractSettings, Network};

use crate::common::{cli, fixtures, rel_err};
use crate::parity::tempdir;

fn reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let t = candle_core::safetensors::load(fixtures().join("clip-images/ref.safetensors"), &Device::Cpu).unwrap();
    let j = serde_json::from_str(&std::fs::read_to_string(fixtures().join("clip-images/ref.json")).unwrap()).unwrap();
    (t, j)
}

fn model() -> Clip {
    Clip::load(fixtures().join("tiny-clip").to_str().unwrap(), &Device::Cpu).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.flatten_from(1).unwrap().to_vec2().unwrap()
}

fn images() -> Vec<std::path::PathBuf> {
    extract::list_images(&fixtures().join("clip-images")).unwrap()
}

#[test]
fn the_image_processor_matches_transformers_bit_for_bit() {
    let (r, _) = reference();
    let clip = model();
    let want = rows(&r["pixel_values"]);
    for (i, p) in images().iter().enumerate() {
        // Sizes 80x48, 37x100 (RGBA), 30x30 (grey) and 64x64: both resize axes, each alone,
        // no resize at all.
        let img = image::open(p).unwrap().to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (px, ph, pw) = clip.processor.apply(img.as_raw(), w, h);
        assert_eq!((ph, pw), (30, 30));
        let d = px.iter().zip(&want[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d == 0.0, "image {i}: pixel_values differ by {d}");
    }
}

#[test]
fn both_towers_match_transformers() {
    let (r, j) = reference();
    let clip = model();
    let e = clip.image_embeds(&r["pixel_values"]).unwrap();
    for (i, (a, b)) in rows(&e).iter().zip(rows(&r["image_embeds"])).enumerate() {
        let err = rel_err(a, &b);
        assert!(err < 1e-5, "image {i}: {err}");
    }
    let ids: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let text = rows(&r["text_embeds"]);
    for (i, caption) in j["prompts"].as_array().unwrap().iter().enumerate() {
        let caption = caption.as_str().unwrap();
        let (ours, truncated) = clip.caption_ids(caption);
        // transformers pads the batch with the pad id (999) after our ids end.
        assert_eq!(
            ours.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            ids[i][..ours.len()].to_vec(),
            "{caption}"
        );
        assert!(ids[i][ours.len()..].iter().all(|&v| v == 999));
        // The fourth caption is longer than 77 tokens: cut, with no end-of-text token left.
        assert_eq!(truncated, i == 3);
        let t = clip.text_embedding(caption).unwrap();
        let err = rel_err(&t.embedding, &text[i]);
        assert!(err < 1e-5, "caption {i}: {err}");
    }
}

#[test]
fn the_clip_score_matches_torchmetrics() {
    let (_, j) = reference();
    let clip = model();
    let captions: Vec<String> = j["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let out = clip::clip_score(&clip, &images(), &captions, 3, &AtomicBool::new(false), &mut |_, _| {})
        .unwrap()
        .unwrap();
    let want: Vec<f64> = j["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(out.scores.len(), want.len());
    for ((_, a), b) in out.scores.iter().zip(&want) {
        assert!((a - b).abs() < 2e-4, "{a} vs {b}");
    }
    // One pair scores below 0 and still counts in the mean: the clamp is on the mean.
    assert!(want.iter().any(|&s| s < 0.0));
    let total = j["clip_score"].as_f64().unwrap();
    assert!((out.clip_score - total).abs() < 1e-4, "{} vs {total}", out.clip_score);
    assert_eq!(out.truncated, 1);
    // A cancelled run gives no score.
    assert!(
        clip::clip_score(&clip, &images(), &captions, 3, &AtomicBool::new(true), &mut |_, _| {})
            .unwrap()
            .is_none()
    );
    // Mismatched lengths are an error, not a silent zip.
    let e = clip::clip_score(&clip, &images(), &captions[..2], 3, &AtomicBool::new(false), &mut |_, _| {})
        .err()
        .unwrap();
    assert!(e.to_string().contains("4 images but 2 captions"), "{e}");
}

#[test]
fn clip_features_follow_clean_fids_recipe() {
    let (r, _) = reference();
    let net = Network::Clip(std::sync::Arc::new(model()));
    let s = ExtractSettings {
        batch: 3,
        ..Default::default()
    };
    let x = extract::extract(&net, &images(), &s, &AtomicBool::new(false), &mut |_, _| {})
        .unwrap()
        .unwrap();
    let f = x.file.features.unwrap();
    assert_eq!((f.n, f.d), (4, 24));
    assert_eq!(x.file.meta.network.as_deref(), Some("clip:tiny-clip"));
    assert!(x.file.logits.is_none());
    for (i, want) in rows(&r["clean_embeds"]).iter().enumerate() {
        let got: Vec<f32> = f.row(i).iter().map(|&v| v as f32).collect();
        let err = rel_err(&got, want);
        assert!(err < 1e-5, "image {i}: {err}");
    }
}

#[test]
fn the_clip_score_cli_writes_the_score_and_refuses_bad_input() {
    let (_, j) = reference();
    let dir = tempdir("clip-cli");
    let json = dir.join("clip.json");
    let imgs = fixtures().join("clip-images");
    let model = fixtures().join("tiny-clip");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let o = cli(&[
        "metrics",
        "clip-score",
        "--images",
        &s(&imgs),
        "--prompts",
        &s(&imgs.join("prompts.txt")),
        "--model",
        &s(&model),
        "--json",
        &s(&json),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let want = j["clip_score"].as_f64().unwrap();
    assert!((got["clip_score"].as_f64().unwrap() - want).abs() < 1e-4);
    assert_eq!(got["n_fake"], 4);
    assert_eq!(got["network"], "clip:tiny-clip");
    assert_eq!(got["per_image"].as_array().unwrap().len(), 4);
    assert_eq!(got["per_image"][1]["caption"], "two small green triangles");
    assert!(String::from_utf8_lossy(&o.stderr).contains("cut there"));

    // One caption for every image.
    let one = dir.join("one.txt");
    std::fs::write(&one, "a red circle\n").unwrap();
    let o = cli(&[
        "metrics",
        "clip-score",
        "--images",
        &s(&imgs),
        "--prompts",
        &s(&one),
        "--model",
        &s(&model),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Three captions for four images.
    let three = dir.join("three.txt");
    std::fs::write(&three, "a\nb\nc\n").unwrap();
    let o = cli(&[
        "metrics",
        "clip-score",
        "--images",
        &s(&imgs),
        "--prompts",
        &s(&three),
        "--model",
        &s(&model),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("3 captions for 4 images"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A diffusers folder is not a CLIP model.
    let o = cli(&[
        "metrics",
        "clip-score",
        "--images",
        &s(&imgs),
        "--prompts",
        &s(&one),
        "--model",
        &s(&fixtures().join("tiny-sd1")),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("not a CLIP model folder"), "{e}");
}

#[test]
fn the_quality_experiment_scores_rows_as_the_metrics_cli_does() {
    use diffusion_scope::experiments::quality::{self, QualitySet, QualitySettings};
    use diffusion_scope::experiments::{ExperimentEvent, Stop};
    use diffusion_scope::trace::RgbImage;
    let (_, j) = reference();
    let captions: Vec<String> = j["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let imgs: Vec<RgbImage> = images()
        .iter()
        .map(|p| {
            let im = image::open(p).unwrap().to_rgb8();
            RgbImage {
                width: im.width() as usize,
                height: im.height() as usize,
                pixels: im.into_raw(),
            }
        })
        .collect();
    // The real set: CLIP features of the four fixture images, as `metrics features --network clip`.
    let dir = tempdir("quality");
    let real = dir.join("real.safetensors");
    let net = Network::Clip(std::sync::Arc::new(model()));
    let x = extract::extract(
        &net,
        &images(),
        &ExtractSettings::default(),
        &AtomicBool::new(false),
        &mut |_, _| {},
    )
    .unwrap()
    .unwrap();
    x.file.write(&real).unwrap();
    let settings = QualitySettings {
        sets: vec![
            QualitySet {
                label: "first three".into(),
                images: imgs[..3].to_vec(),
                captions: captions[..3].to_vec(),
            },
            QualitySet {
                label: "one".into(),
                images: imgs[3..].to_vec(),
                captions: captions[3..].to_vec(),
            },
        ],
        clip_model: Some(fixtures().join("tiny-clip").to_str().unwrap().into()),
        real_features: Some(real.clone()),
        inception_weights: None,
        detector: false,
    };
    let mut streamed = Vec::new();
    let (report, stopped) = quality::run(&settings, &AtomicBool::new(false), &mut |ev| {
        if let ExperimentEvent::QualityRow(r) = ev {
            streamed.push(r.index);
        }
    })
    .unwrap();
    assert!(stopped.is_none() && report.complete);
    assert_eq!(streamed, vec![0, 1]);
    // Row 0: the CLIP score of its three pairs, and the FID of its features against the real file.
    let scores: Vec<f64> = j["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let r0 = &report.rows[0].metrics;
    let want = scores[..3].iter().sum::<f64>() / 3.0;
    assert!((r0.clip_score.unwrap() - want).abs() < 1e-4, "{r0:?}");
    let fake = extract::extract(
        &net,
        &imgs[..3].to_vec(),
        &ExtractSettings::default(),
        &AtomicBool::new(false),
        &mut |_, _| {},
    )
    .unwrap()
    .unwrap()
    .file;
    let direct = diffusion_scope::metrics::compare(&x.file, &fake, &Default::default(), &mut |_, _, _| {}).unwrap();
    assert_eq!(r0.fid, direct.fid);
    assert!(r0.kid_mean.is_some() && r0.warnings.iter().any(|w| w.contains("noise")));
    assert_eq!(r0.network.as_deref(), Some("clip:tiny-clip"));
    // Row 1: one image: a CLIP score (its pair is negative, and so is the mean: clamped at 0),
    // no FID, and a note saying why.
    let r1 = &report.rows[1].metrics;
    assert_eq!(r1.clip_score, Some(0.0));
    assert!(
        r1.fid.is_none() && r1.warnings.iter().any(|w| w.contains("at least 2 images")),
        "{r1:?}"
    );
    // Cancelled before the first row: nothing scored, and it says so.
    let (r, stopped) = quality::run(&settings, &AtomicBool::new(true), &mut |_| {}).unwrap();
    assert!(r.rows.is_empty() && stopped == Some(Stop::Cancelled));
    // Features of another CLIP cannot be compared: the error names the network.
    let mut other = settings.clone();
    other.clip_model = None;
    let e = quality::run(&other, &AtomicBool::new(false), &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("clip:tiny-clip"), "{e}");
}
