//! The shapes-world evaluation pipeline (`diffusion_scope::experiments::shapes_eval`) on the tiny random model:
//! the plumbing (words, layers, steps, summary) rather than the figures, which need the
//! bundled model (see `bundled.rs`).

use std::sync::atomic::AtomicBool;

use diffusion_scope::experiments::shapes_eval::{EvalSettings, WordKind, attention_on_truth, evaluate_case, summarize};
use diffusion_scope::world::Template;

use crate::common::{fixtures, load_model};

#[test]
fn every_object_word_is_scored_or_counted_unscored() {
    let sd = load_model("tiny-sd1");
    let spec = fixtures().join("tiny-sd1").display().to_string();
    let settings = EvalSettings {
        steps: 4,
        ..EvalSettings::default()
    };
    let never = AtomicBool::new(false);
    let captions = ["a big red circle on the left", "a blue square above a green triangle"];
    let mut cases = Vec::new();
    let mut layers = Vec::new();
    let mut timesteps = Vec::new();
    for (i, c) in captions.iter().enumerate() {
        let (case, run) = evaluate_case(&sd, &spec, i, c, &settings, &never).expect("evaluation runs");
        assert_eq!(case.seed, i as u64);
        assert_eq!(run.meta.seed, i as u64);
        assert_eq!(run.meta.guidance, 5.0);
        layers = run.meta.attn_layers.iter().map(|l| l.path.clone()).collect::<Vec<_>>();
        timesteps = run.meta.timesteps.clone();
        assert!(!layers.is_empty());
        // Object words: big red circle left / blue square green triangle.
        let words: Vec<(&str, WordKind, usize)> = case.words.iter().map(|w| (w.word.as_str(), w.kind, w.object)).collect();
        let expected: Vec<(&str, WordKind, usize)> = if i == 0 {
            vec![
                ("big", WordKind::Size, 0),
                ("red", WordKind::Colour, 0),
                ("circle", WordKind::Shape, 0),
                ("left", WordKind::Position, 0),
            ]
        } else {
            vec![
                ("blue", WordKind::Colour, 0),
                ("square", WordKind::Shape, 0),
                ("green", WordKind::Colour, 1),
                ("triangle", WordKind::Shape, 1),
            ]
        };
        assert_eq!(words, expected);
        for w in &case.words {
            let detected = case.judgement.objects[w.object].detection.is_some();
            assert_eq!(w.aggregate.is_some(), detected, "{}", w.word);
            if detected {
                assert_eq!(w.per_layer.len(), layers.len());
                assert_eq!(w.per_step.len(), run.steps.len());
                for s in w.per_layer.iter().chain(&w.per_step).chain(&w.aggregate) {
                    assert!((0.0..=1.0).contains(&s.iou));
                }
            }
        }
        cases.push(case);
    }
    assert_eq!(cases[0].template, Template::SizeColourPosition);
    assert_eq!(cases[1].template, Template::Relation);
    let s = summarize(&cases, &[], &layers, &timesteps);
    assert_eq!(s.single_colour.n, 1);
    assert_eq!(s.single_position.n, 1);
    assert_eq!(s.single_size.n, 1);
    assert_eq!(s.two_both_objects.n, 1);
    assert_eq!(s.attention.pointing.hits.n + s.attention.unscored_words, 8);
    assert_eq!(s.attention.by_layer.len(), layers.len());
    assert_eq!(s.attention.by_step.len(), timesteps.len());
}

#[test]
fn rendered_scenes_score_every_object_word_against_exact_masks() {
    let sd = load_model("tiny-sd1");
    let encoder = sd.vae_encoder().expect("VAE encoder");
    let settings = EvalSettings {
        steps: 4,
        ..EvalSettings::default()
    };
    let never = AtomicBool::new(false);
    let (case, scene) = attention_on_truth(&sd, &encoder, 3, "a blue square above a green triangle", &settings, &never).expect("runs");
    assert_eq!(case.seed, 3);
    assert_eq!(scene.width, sd.default_size());
    // Exact masks: every object word is scored, with one score per layer and per step.
    assert_eq!(case.words.len(), 4);
    let layers = sd.unet.attn_layers().len();
    for w in &case.words {
        assert!(w.aggregate.is_some(), "{}", w.word);
        assert_eq!(w.per_layer.len(), layers);
        assert_eq!(w.per_step.len(), 4 + 1, "PNDM (the tiny model's own) makes steps + 1 UNet calls");
    }
    // Deterministic: the same case gives the same scores.
    let (again, _) = attention_on_truth(&sd, &encoder, 3, "a blue square above a green triangle", &settings, &never).unwrap();
    assert_eq!(case, again);
}

#[test]
fn a_caption_outside_the_world_is_refused() {
    let sd = load_model("tiny-sd1");
    let never = AtomicBool::new(false);
    let err = evaluate_case(&sd, "tiny", 0, "a photo of a cat", &EvalSettings::default(), &never).unwrap_err();
    assert!(err.to_string().contains("a photo of a cat"), "{err}");
}
