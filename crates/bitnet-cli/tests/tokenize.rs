//! `bitnet tokenize` on the tiny byte-level tokenizer: an HF directory, a
//! `tokenizer.json` file, and a GGUF file without tokenizer metadata that
//! falls back to the `tokenizer.json` beside it.

use bitnet_models::gguf::{GgufWriter, MetadataValue};
use std::path::PathBuf;

mod common;
use common::{bitnet, tiny};

fn tiny_dir() -> PathBuf {
    tiny("float")
}

#[test]
fn prints_ids_and_pieces() {
    let dir = tiny_dir();
    let (ok, out, err) = bitnet(&["tokenize", "-m", dir.to_str().unwrap(), "hi é"]);
    assert!(ok, "{err}");
    // One token per byte; "é" is two bytes, each alone not valid UTF-8.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "104\t\"h\"",
            "105\t\"i\"",
            "32\t\" \"",
            "195\t\"\u{FFFD}\"",
            "169\t\"\u{FFFD}\""
        ]
    );
}

#[test]
fn json_output_from_a_tokenizer_file() {
    let file = tiny_dir().join("tokenizer.json");
    let (ok, out, err) = bitnet(&[
        "tokenize",
        "-m",
        file.to_str().unwrap(),
        "--output",
        "json",
        "--no-special",
        "ok!",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ids"], serde_json::json!([111, 107, 33]));
    assert_eq!(v["pieces"], serde_json::json!(["o", "k", "!"]));
    assert_eq!(v["text"], "ok!");
}

#[test]
fn gguf_without_tokenizer_uses_the_json_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_dir().join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    // A GGUF file whose metadata has no tokenizer.
    let path = tmp.path().join("model.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .unwrap();
    w.write_to_path(&path).unwrap();
    let (ok, out, err) = bitnet(&["tokenize", "-m", path.to_str().unwrap(), "a"]);
    assert!(ok, "{err}");
    assert_eq!(out, "97\t\"a\"\n");

    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let (ok, _, err) = bitnet(&["tokenize", "-m", path.to_str().unwrap(), "a"]);
    assert!(!ok);
    assert!(err.contains("tokenizer.ggml.model"), "{err}");
}
