//! `bitnet inspect` on the llama.cpp-written GGUF fixture and the HF
//! checkpoint beside it, as text and as JSON.

use std::path::PathBuf;

mod common;
use common::{bitnet, fixtures};

fn fixture(name: &str) -> PathBuf {
    fixtures("gguf_py").join(name)
}

#[test]
fn gguf_json_has_metadata_tensors_and_totals() {
    let path = fixture("tq1_0_q6k.gguf");
    let (ok, out, err) = bitnet(&["inspect", path.to_str().unwrap(), "--output", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["version"], 3);
    assert_eq!(v["architecture"], "bitnet");
    assert_eq!(v["dialect"], "llama.cpp");
    assert_eq!(v["metadata"]["bitnet.embedding_length"], 256);
    // Arrays are summarized, not dumped.
    assert_eq!(
        v["metadata"]["tokenizer.ggml.tokens"],
        serde_json::json!({"array": "String", "len": 64})
    );
    let tensors = v["tensors"].as_array().unwrap();
    let embd = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["type"], "Q6_K");
    assert_eq!(embd["dims"], serde_json::json!([256, 64]));
    assert_eq!(embd["bytes"], 64 * 210);
    let totals = v["totals"].as_array().unwrap();
    let tq1 = totals.iter().find(|t| t["type"] == "TQ1_0").unwrap();
    assert_eq!(tq1["tensors"], 14);
    let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["total_bytes"], sum);
}

#[test]
fn gguf_text_lists_tensors() {
    let path = fixture("tq2_0.gguf");
    let (ok, out, err) = bitnet(&["inspect", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("GGUF version 3"), "{out}");
    assert!(
        out.contains("tokenizer.ggml.merges = [String; 22]"),
        "{out}"
    );
    assert!(
        out.contains("blk.1.ffn_down.weight") && out.contains("TQ2_0"),
        "{out}"
    );
}

#[test]
fn hf_dir_shows_config_variant_and_tensors() {
    let dir = fixture("hf");
    let (ok, out, err) = bitnet(&["inspect", dir.to_str().unwrap(), "--output", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "hf");
    assert_eq!(v["config"]["variant"], "PackedMultiply");
    assert_eq!(v["config"]["hidden_size"], 256);
    let q = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q["dtype"], "U8");
    assert_eq!(q["shape"], serde_json::json!([64, 256]));
    assert_eq!(q["bytes"], 64 * 256);
    let (ok, text, err) = bitnet(&["inspect", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        text.contains("HF checkpoint") && text.contains("variant"),
        "{text}"
    );
}

#[test]
fn not_a_model_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.gguf");
    std::fs::write(&bogus, b"nope").unwrap();
    let (ok, _, err) = bitnet(&["inspect", bogus.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bogus.gguf"), "{err}");
}
