//! The metric math against torch-fidelity / clean-fid reference values on the same features
//! (tests/fixtures/make_metrics_ref.py), and feature files: write, read, shard, merge.

use diffusion_scope::metrics::features::{FeatureFile, FeatureMeta, shard_range};
use diffusion_scope::metrics::nprand::RandomState;
use diffusion_scope::metrics::{self, KidSettings, MetricSettings, Rows, math};
use serde_json::Value;

use crate::common::fixtures;
use crate::parity::tempdir;

fn sets() -> std::collections::HashMap<String, Rows> {
    let bytes = std::fs::read(fixtures().join("metrics/sets.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.names()
        .into_iter()
        .map(|name| {
            let t = st.tensor(name).unwrap();
            let data = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name.to_string(), Rows::new(t.shape()[0], t.shape()[1], data))
        })
        .collect()
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("metrics/ref.json")).unwrap()).unwrap()
}

fn close(what: &str, ours: f64, theirs: f64, rel: f64) {
    let err = (ours - theirs).abs() / theirs.abs().max(1e-12);
    assert!(
        err <= rel,
        "{what}: ours {ours}, reference {theirs}, relative difference {err:.2e} > {rel:.0e}"
    );
}

#[test]
fn numpy_legacy_random_state_draws_the_same_indices() {
    let r = reference();
    let perm: Vec<usize> = serde_json::from_value(r["numpy_permutation_2020_10"].clone()).unwrap();
    assert_eq!(RandomState::new(2020).permutation(10), perm);
    let twice: Vec<Vec<usize>> = serde_json::from_value(r["numpy_choice_2020_1000_7_twice"].clone()).unwrap();
    let mut rs = RandomState::new(2020);
    assert_eq!([rs.choice(1000, 7), rs.choice(1000, 7)].to_vec(), twice);
}

#[test]
fn fid_kid_is_and_precision_recall_match_torch_fidelity() {
    let s = sets();
    let r = reference();
    let real = &s["real"];
    for case in ["fake", "near"] {
        let fake = &s[case];
        let want = &r[case];
        let fid = math::fid(&metrics::Stats::of(real), &metrics::Stats::of(fake)).unwrap();
        close(&format!("{case} FID vs torch-fidelity"), fid, want["fid"].as_f64().unwrap(), 1e-9);
        close(
            &format!("{case} FID vs clean-fid"),
            fid,
            want["fid_cleanfid"].as_f64().unwrap(),
            1e-9,
        );
        let k = KidSettings {
            subset_size: want["kid_subset_size"].as_u64().unwrap() as usize,
            ..KidSettings::default()
        };
        let (m, sd) = math::kid(real, fake, &k, &mut |_| {}).unwrap();
        close(&format!("{case} KID mean"), m, want["kid_mean"].as_f64().unwrap(), 1e-9);
        close(&format!("{case} KID std"), sd, want["kid_std"].as_f64().unwrap(), 1e-9);
        let (p, rc) = math::precision_recall(real, fake, 3).unwrap();
        // torch-fidelity returns the fractions as float32: compare the counts.
        assert_eq!(
            (p * fake.n as f64).round(),
            (want["precision"].as_f64().unwrap() * fake.n as f64).round(),
            "{case} precision"
        );
        assert_eq!(
            (rc * real.n as f64).round(),
            (want["recall"].as_f64().unwrap() * real.n as f64).round(),
            "{case} recall"
        );
        assert!((p - want["precision"].as_f64().unwrap()).abs() < 1e-7 && (rc - want["recall"].as_f64().unwrap()).abs() < 1e-7);
    }
    let (m, sd) = math::inception_score(&s["logits"], 10, 2020).unwrap();
    close("IS mean", m, r["is_mean"].as_f64().unwrap(), 1e-9);
    close("IS std", sd, r["is_std"].as_f64().unwrap(), 1e-9);
}

#[test]
fn sharded_feature_files_merge_to_the_numbers_of_one_job() {
    let s = sets();
    let dir = tempdir("metrics-shards");
    let meta = |shard| FeatureMeta {
        network: Some("test".into()),
        resize: Some("clean".into()),
        shard,
        images: Some(200),
    };
    let fake = &s["fake"];
    let logits = &s["logits"];
    let slice = |r: &Rows, range: std::ops::Range<usize>| Rows::new(range.len(), r.d, r.data[range.start * r.d..range.end * r.d].to_vec());
    let whole = FeatureFile::from_rows(fake.clone(), Some(logits.clone()), meta(None));
    let mut parts = Vec::new();
    for i in 1..=3 {
        let range = shard_range(fake.n, (i, 3));
        let f = FeatureFile::from_rows(slice(fake, range.clone()), Some(slice(logits, range)), meta(Some((i, 3))));
        let p = dir.join(format!("part{i}.safetensors"));
        f.write(&p).unwrap();
        let back = FeatureFile::read(&p).unwrap();
        assert_eq!(back, f, "a feature file reads back as written");
        parts.push((p.display().to_string(), back));
    }
    let merged = FeatureFile::merge(&parts).unwrap();
    assert_eq!(merged.features, whole.features);
    assert_eq!(merged.logits, whole.logits);
    let real = FeatureFile::from_rows(s["real"].clone(), None, meta(None));
    let all = MetricSettings {
        kid: Some(KidSettings {
            subset_size: 100,
            ..KidSettings::default()
        }),
        is_splits: Some(10),
        pr_k: Some(3),
    };
    let one = metrics::compare(&real, &whole, &all, &mut |_, _, _| {}).unwrap();
    let from_shards = metrics::compare(&real, &merged, &all, &mut |_, _, _| {}).unwrap();
    close("FID of merged shards", from_shards.fid.unwrap(), one.fid.unwrap(), 1e-12);
    assert_eq!(
        (from_shards.kid_mean, from_shards.is_mean, from_shards.precision),
        (one.kid_mean, one.is_mean, one.precision)
    );
    assert!(one.warnings.iter().any(|w| w.contains("5000")), "{:?}", one.warnings);
    // Shards out of order, twice, or missing are refused by name.
    let swapped = vec![parts[1].clone(), parts[0].clone(), parts[2].clone()];
    assert!(FeatureFile::merge(&swapped).unwrap_err().to_string().contains("in order"));
    let missing = vec![parts[0].clone(), parts[2].clone()];
    assert!(
        FeatureFile::merge(&missing)
            .unwrap_err()
            .to_string()
            .contains("each of 1/3 .. 3/3 once")
    );
    // Only statistics (no rows): FID works, KID names what it lacks.
    let stats_only = FeatureFile {
        features: None,
        logits: None,
        ..merged.clone()
    };
    let p = dir.join("stats.safetensors");
    stats_only.write(&p).unwrap();
    let back = FeatureFile::read(&p).unwrap();
    close(
        "FID from statistics only",
        metrics::compare(&real, &back, &MetricSettings::default(), &mut |_, _, _| {})
            .unwrap()
            .fid
            .unwrap(),
        one.fid.unwrap(),
        1e-12,
    );
    let e = metrics::compare(&real, &back, &all, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("KID needs the fake feature rows"), "{e}");
}

#[test]
fn bad_feature_sets_are_refused_by_name() {
    let s = sets();
    let real = &s["real"];
    let short = Rows::new(1, real.d, real.row(0).to_vec());
    let e = math::fid(&metrics::Stats::of(real), &metrics::Stats::of(&short))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2 feature rows"), "{e}");
    let other = Rows::new(3, 5, vec![0.5; 15]);
    let e = math::fid(&metrics::Stats::of(real), &metrics::Stats::of(&other))
        .unwrap_err()
        .to_string();
    assert!(e.contains("24-d features against 5-d"), "{e}");
    let e = math::kid(real, &s["fake"], &KidSettings::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--kid-subset-size"), "{e}");
    let dir = tempdir("metrics-bad");
    let p = dir.join("x.safetensors");
    std::fs::write(&p, b"not a safetensors file").unwrap();
    assert!(FeatureFile::read(&p).unwrap_err().to_string().contains("not a safetensors file"));
    // A safetensors file without `features`.
    let data = vec![0u8; 16];
    let v = safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F32, vec![2, 2], &data).unwrap();
    safetensors::serialize_to_file(vec![("pool3", v)], None, &p).unwrap();
    let e = FeatureFile::read(&p).unwrap_err().to_string();
    assert!(e.contains("neither `features`") && e.contains("pool3"), "{e}");
}
