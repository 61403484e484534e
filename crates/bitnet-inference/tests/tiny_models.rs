//! Whole-model checks against HF transformers (`tools/make_model_fixtures.py`):
//! every checkpoint variant (float, online, both packed conventions, untied
//! output layer) gives the reference's logits at every position of three
//! prompts and the same greedy continuation; incremental decoding through
//! the KV cache gives the logits of one full forward.

use bitnet_core::{Parallelism, build_pool};
use bitnet_inference::generate::greedy;
use bitnet_inference::{BitNetModel, Error, Logits};
use bitnet_models::tokenizer::TextTokenizer;

const VARIANTS: [&str; 5] = [
    "float",
    "online",
    "autobitlinear_offline",
    "bitlinear_offline",
    "online_untied",
];

mod common;
use common::{Expected, dir, max_abs_diff};

#[test]
fn logits_match_transformers_for_every_variant() {
    for variant in VARIANTS {
        let model = BitNetModel::from_hf_dir(&dir(variant)).unwrap();
        let exp = Expected::load(variant);
        for p in 0..3 {
            let ids = exp.ids(&format!("ids_p{p}"));
            let mut cache = model.new_cache(64);
            let got = model
                .forward(&ids, &mut cache, Logits::All, Parallelism::Sequential)
                .unwrap();
            let want = exp.f32(&format!("logits_p{p}"));
            let diff = max_abs_diff(&got, &want);
            eprintln!("{variant} prompt {p}: max |logit diff| {diff:.2e}");
            // Logits reach |35|; the reference paths themselves differ by ~2e-5.
            assert!(diff < 2e-4, "{variant} prompt {p}: max |logit diff| {diff}");
        }
    }
}

#[test]
fn greedy_matches_transformers_and_threads_agree() {
    let pool = build_pool(2).unwrap();
    for variant in VARIANTS {
        let model = BitNetModel::from_hf_dir(&dir(variant)).unwrap();
        let exp = Expected::load(variant);
        let prompt = exp.ids("ids_p1");
        let want = exp.ids("greedy_p1");
        let mut cache = model.new_cache(64);
        let got = greedy(
            &model,
            &prompt,
            want.len(),
            &mut cache,
            Parallelism::Sequential,
        )
        .unwrap();
        assert_eq!(got, want, "{variant} sequential");
        let mut cache = model.new_cache(64);
        let got = greedy(
            &model,
            &prompt,
            want.len(),
            &mut cache,
            Parallelism::Pool(&pool),
        )
        .unwrap();
        assert_eq!(got, want, "{variant} on 2 threads");
    }
}

#[test]
fn incremental_decode_equals_full_forward() {
    for variant in VARIANTS {
        let model = BitNetModel::from_hf_dir(&dir(variant)).unwrap();
        let ids = Expected::load(variant).ids("ids_p2");
        let mut full_cache = model.new_cache(64);
        let full = model
            .forward(&ids, &mut full_cache, Logits::All, Parallelism::Sequential)
            .unwrap();
        let vocab = model.config().vocab_size;
        let mut cache = model.new_cache(64);
        // A prefill chunk, then one token at a time.
        let mut got = model
            .forward(&ids[..5], &mut cache, Logits::All, Parallelism::Sequential)
            .unwrap();
        for &id in &ids[5..] {
            got.extend(
                model
                    .forward(&[id], &mut cache, Logits::Last, Parallelism::Sequential)
                    .unwrap(),
            );
        }
        assert_eq!(got.len(), ids.len() * vocab);
        let diff = max_abs_diff(&got, &full);
        assert!(diff < 1e-4, "{variant}: incremental vs full {diff}");
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = BitNetModel::from_hf_dir(&dir("online")).unwrap();
    let mut cache = model.new_cache(4);
    let seq = Parallelism::Sequential;
    assert!(matches!(
        model.forward(&[], &mut cache, Logits::Last, seq),
        Err(Error::EmptyInput)
    ));
    assert!(matches!(
        model.forward(&[1, 256], &mut cache, Logits::Last, seq),
        Err(Error::TokenOutOfRange {
            id: 256,
            position: 1,
            ..
        })
    ));
    assert!(matches!(
        model.forward(&[1, 2, 3, 4, 5], &mut cache, Logits::Last, seq),
        Err(Error::ContextFull { .. })
    ));
    let missing = model_dir_error("does-not-exist");
    assert!(missing.contains("does-not-exist"), "{missing}");
}

#[test]
fn tokenizer_matches_hf_tokenizers_both_ways() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir("").join("tokenizer_expected.json")).unwrap(),
    )
    .unwrap();
    let tok = TextTokenizer::from_file(&dir("online").join("tokenizer.json")).unwrap();
    for case in expected.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, true).unwrap(), text);
    }
    let err = TextTokenizer::from_file(&dir("online").join("config.json")).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

fn model_dir_error(name: &str) -> String {
    BitNetModel::from_hf_dir(&dir(name))
        .unwrap_err()
        .to_string()
}
