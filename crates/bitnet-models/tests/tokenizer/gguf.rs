//! Tokenizers built from GGUF metadata give the ids of the `tokenizer.json`
//! the metadata was written from (as `convert_hf_to_gguf.py` writes it).

use crate::{fixture, write_gguf_tokenizer};
use bitnet_models::Error;
use bitnet_models::gguf::{GgufWriter, MetadataArray, MetadataValue};
use bitnet_models::tokenizer::{
    TextTokenizer,
    gguf::{LLAMA3_REGEX, to_metadata},
};
use serde_json::{Value, json};
use std::path::Path;

/// The varied corpus of the Llama-3 fixture, plus added-token text.
pub(crate) fn corpus() -> Vec<String> {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama3_tokenizer_expected.json")).unwrap(),
    )
    .unwrap();
    let mut texts: Vec<String> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect();
    texts.push("hello world<|eos|> <user> 12345 hell held".into());
    texts.push("<|bos|>Hello <|eos|><|eos|>worldwide".into());
    texts
}

/// The tiny byte-level fixture with some merges and added tokens, so BPE
/// merging, ranks and added-token matching all take part.
fn small_bpe(llama3_pre: bool) -> Value {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-inference/tests/fixtures/tiny/float/tokenizer.json");
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    let merges = [
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("Ġ", "w"),
        ("o", "r"),
        ("Ġw", "or"),
        ("1", "2"),
        ("12", "3"),
        ("Ġ", "Ġ"),
        ("e", "s"),
    ];
    let vocab = j["model"]["vocab"].as_object_mut().unwrap();
    for (a, b) in merges {
        let id = vocab.len();
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    let n = vocab.len();
    j["model"]["merges"] = json!(merges.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>());
    let added = |id: usize, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": special})
    };
    j["added_tokens"] = json!([
        added(n, "<|bos|>", true),
        added(n + 1, "<|eos|>", true),
        added(n + 2, "<user>", false)
    ]);
    if llama3_pre {
        j["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]});
        j["model"]["ignore_merges"] = json!(true);
    }
    j
}

fn check_same_ids(j: &Value, pre: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, j.to_string()).unwrap();
    let hf = TextTokenizer::from_file(&path).unwrap();
    let n = hf.vocab_size() as u32;
    let (bos, eos) = (n - 3, n - 2);
    let file = write_gguf_tokenizer(
        j,
        pre,
        Some(bos),
        Some(eos),
        true,
        Some("{{ bos_token }}"),
        &dir.path().join("t.gguf"),
    );
    let g = TextTokenizer::from_gguf(&file).unwrap();
    assert_eq!(g.vocab_size(), hf.vocab_size());
    assert_eq!((g.bos_id(), g.eos_id()), (Some(bos), Some(eos)));
    assert_eq!(g.special_ids(), [bos, eos]);
    assert_eq!(g.chat_template(), Some("{{ bos_token }}"));
    let mut merged = 0;
    for text in corpus() {
        let want = hf.encode(&text, false).unwrap();
        assert_eq!(g.encode(&text, false).unwrap(), want, "{pre}: {text:?}");
        let with_bos = g.encode(&text, true).unwrap();
        assert_eq!(with_bos[0], bos, "{text:?}");
        assert_eq!(&with_bos[1..], want, "{text:?}");
        assert_eq!(
            g.decode(&want, false).unwrap(),
            hf.decode(&want, false).unwrap(),
            "{text:?}"
        );
        merged += want
            .iter()
            .filter(|&&id| (256..n - 3).contains(&id))
            .count();
    }
    assert!(merged > 10, "the corpus exercises the merges: {merged}");
}

#[test]
fn gguf_tokenizer_matches_its_source_gpt2_pre() {
    check_same_ids(&small_bpe(false), "gpt-2");
}

#[test]
fn gguf_tokenizer_matches_its_source_llama3_pre() {
    check_same_ids(&small_bpe(true), "llama-bpe");
}

fn metadata_file(pairs: Vec<(&str, MetadataValue)>) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut w = GgufWriter::new();
    for (k, v) in pairs {
        w.add_metadata(k, v).unwrap();
    }
    w.write_to_path(&path).unwrap();
    (dir, path)
}

#[test]
fn unsupported_and_malformed_metadata_are_typed_errors() {
    let s = |v: &str| MetadataValue::String(v.into());
    let toks = |v: &[&str]| {
        MetadataValue::Array(MetadataArray::String(
            v.iter().map(|t| t.to_string()).collect(),
        ))
    };
    let open = |pairs| {
        let (_dir, path) = metadata_file(pairs);
        let file = bitnet_models::gguf::GgufFile::open(&path).unwrap();
        TextTokenizer::from_gguf(&file).map(|_| ())
    };
    let e = open(vec![
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.ggml.tokens", toks(&["a"])),
    ])
    .unwrap_err();
    assert!(matches!(e, Error::UnsupportedTokenizer { .. }), "{e}");
    assert!(
        e.to_string().contains("gpt2") && e.to_string().contains("m.gguf"),
        "{e}"
    );
    let e = open(vec![]).unwrap_err();
    assert!(matches!(e, Error::MissingKey { .. }), "{e}");
    let e = open(vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("qwen2")),
        ("tokenizer.ggml.tokens", toks(&["a"])),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("qwen2"), "{e}");
    let e = open(vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.tokens", toks(&["a", "b"])),
        ("tokenizer.ggml.bos_token_id", MetadataValue::U32(7)),
    ])
    .unwrap_err();
    assert!(matches!(e, Error::BadMetadata { .. }), "{e}");
    let e = open(vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.tokens", toks(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", toks(&["ab"])),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("merge 0"), "{e}");
    let e = open(vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.tokens", toks(&["a", "b"])),
        (
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(vec![1])),
        ),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("token_type"), "{e}");
}

/// A GGUF file written by llama.cpp's `gguf` Python package
/// (tools/make_gguf_tokenizer_fixture.py): its keys and value types are the
/// real ones, and the ids are those of the equivalent HF tokenizer.
#[test]
fn gguf_py_written_tokenizer_gives_hf_ids() {
    let dir = fixture("gguf_tokenizer");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let file = bitnet_models::gguf::GgufFile::open(dir.join("tiny_bpe.gguf")).unwrap();
    let tok = TextTokenizer::from_gguf(&file).unwrap();
    assert_eq!(tok.bos_id(), doc["bos"].as_u64().map(|v| v as u32));
    assert_eq!(tok.eos_id(), doc["eos"].as_u64().map(|v| v as u32));
    assert_eq!(tok.vocab_size(), 270);
    let chat = tok.chat_template_or_default().unwrap();
    let out = chat
        .render(
            &[bitnet_models::chat::ChatMessage::new("user", "hi")],
            true,
            &tok.bos_token().unwrap(),
            &tok.eos_token().unwrap(),
        )
        .unwrap();
    assert_eq!(out, "<|bos|>hi");
    for case in doc["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn embedded_tokenizer_json_is_used_for_other_models() {
    let json = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bitnet-inference/tests/fixtures/tiny/float/tokenizer.json"),
    )
    .unwrap();
    let s = |v: &str| MetadataValue::String(v.into());
    let (_dir, path) = metadata_file(vec![
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.huggingface.json", s(&json)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(10)),
    ]);
    let file = bitnet_models::gguf::GgufFile::open(&path).unwrap();
    let tok = TextTokenizer::from_gguf(&file).unwrap();
    assert_eq!(tok.encode("hi", true).unwrap(), [104, 105]);
    assert_eq!(tok.eos_id(), Some(10));

    let (_dir, path) = metadata_file(vec![
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.huggingface.json", s(&json)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(999)),
    ]);
    let file = bitnet_models::gguf::GgufFile::open(&path).unwrap();
    let e = TextTokenizer::from_gguf(&file).unwrap_err();
    assert!(matches!(e, Error::BadMetadata { .. }), "{e}");
}

/// `tokenizer::gguf::to_metadata` (what `bitnet convert` writes into a GGUF
/// file) describes each supported `tokenizer.json` so that the tokenizer
/// built back from the file gives the source's ids, with the same keys as
/// `write_gguf_tokenizer` (convert_hf_to_gguf.py's recipe) and padding
/// tokens for model rows past the tokenizer.
#[test]
fn tokenizer_json_written_as_gguf_keys_gives_its_source_ids() {
    let kjv: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-kjv-5m/tokenizer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut with_bos = small_bpe(true);
    let n_small = with_bos["model"]["vocab"].as_object().unwrap().len() as u32;
    with_bos["post_processor"] = json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [n_small], "tokens": ["<|bos|>"]}}});
    let mut texts = corpus();
    texts.push("And God said, Let there be light: and there was light.".into());
    for (j, pre, add_bos) in [
        (small_bpe(false), "gpt-2", false),
        (small_bpe(true), "llama-bpe", false),
        (with_bos, "llama-bpe", true),
        (kjv, "gpt-2", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tokenizer.json");
        std::fs::write(&src, j.to_string()).unwrap();
        let hf = TextTokenizer::from_file(&src).unwrap();
        let n = hf.vocab_size();
        let entries =
            to_metadata(&j.to_string(), n + 3, None, None, Some("{{ x }}"), &src).unwrap();
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        assert_eq!(
            get("tokenizer.ggml.pre"),
            Some(&MetadataValue::String(pre.into()))
        );
        assert_eq!(
            get("tokenizer.ggml.add_bos_token"),
            Some(&MetadataValue::Bool(add_bos))
        );
        let reference =
            write_gguf_tokenizer(&j, pre, None, None, false, None, &dir.path().join("r.gguf"));
        let rmd = reference.metadata();
        let Some(MetadataValue::Array(MetadataArray::String(tokens))) =
            get("tokenizer.ggml.tokens")
        else {
            panic!("tokens")
        };
        let Some(MetadataValue::Array(MetadataArray::String(ref_tokens))) =
            rmd.get("tokenizer.ggml.tokens")
        else {
            panic!("reference tokens")
        };
        assert_eq!(&tokens[..n], &ref_tokens[..], "{pre}");
        assert_eq!(
            &tokens[n..],
            [
                "[PAD".to_owned() + &n.to_string() + "]",
                format!("[PAD{}]", n + 1),
                format!("[PAD{}]", n + 2)
            ]
        );
        let merges = "tokenizer.ggml.merges";
        assert_eq!(get(merges), rmd.get(merges), "{pre}");
        let Some(MetadataValue::Array(MetadataArray::I32(types))) =
            get("tokenizer.ggml.token_type")
        else {
            panic!("types")
        };
        let Some(MetadataValue::Array(MetadataArray::I32(ref_types))) =
            rmd.get("tokenizer.ggml.token_type")
        else {
            panic!("reference types")
        };
        assert_eq!(&types[..n], &ref_types[..]);
        assert_eq!(&types[n..], [5, 5, 5], "unused");

        let (_d, path) = metadata_file(
            entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect(),
        );
        let g =
            TextTokenizer::from_gguf(&bitnet_models::gguf::GgufFile::open(&path).unwrap()).unwrap();
        assert_eq!(g.chat_template(), Some("{{ x }}"));
        for text in &texts {
            assert_eq!(
                g.encode(text, true).unwrap(),
                hf.encode(text, true).unwrap(),
                "{pre}: {text:?}"
            );
        }
    }
}

#[test]
fn tokenizers_gguf_keys_cannot_express_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tokenizer.json");
    let n = 400;
    let mut unigram = small_bpe(false);
    unigram["model"]["type"] = json!("Unigram");
    let mut normalized = small_bpe(false);
    normalized["normalizer"] = json!({"type": "NFC"});
    let mut prefix_space = small_bpe(false);
    prefix_space["pre_tokenizer"]["add_prefix_space"] = json!(true);
    let mut mixed = small_bpe(false);
    mixed["model"]["ignore_merges"] = json!(true);
    for (j, what) in [
        (unigram, "Unigram"),
        (normalized, "NFC"),
        (prefix_space, "add_prefix_space"),
        (mixed, "ignore_merges = true"),
    ] {
        let e = to_metadata(&j.to_string(), n, None, None, None, &src).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(what) && msg.contains("tokenizer.json"),
            "{msg}"
        );
        assert!(msg.contains("byte-level BPE"), "{msg}");
    }
    // A tokenizer with more tokens than the model has rows.
    let e = to_metadata(&small_bpe(false).to_string(), 10, None, None, None, &src).unwrap_err();
    assert!(
        e.to_string()
            .contains("outside the model's vocabulary of 10"),
        "{e}"
    );
}
