//! Tokenizer integration tests, built as one binary: chat templates against
//! `transformers`' renderings, GGUF-built tokenizers against the
//! `tokenizer.json` they came from, and the real Llama-3 tokenizer against
//! HF `tokenizers`' ids.

mod chat;
mod gguf;
mod llama3;

use bitnet_models::gguf::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use serde_json::Value;
use std::path::Path;

/// The tests' fixtures folder.
pub(crate) fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Writes the tokenizer of an HF `tokenizer.json` into a GGUF file the way
/// llama.cpp's `convert_hf_to_gguf.py` does for byte-level BPE: tokens by
/// id, types (3 control for special added tokens, 4 user-defined for other
/// added tokens, 1 normal), merges as "left right", and the BOS/EOS ids.
pub(crate) fn write_gguf_tokenizer(
    tokenizer_json: &Value,
    pre: &str,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    chat_template: Option<&str>,
    out: &Path,
) -> GgufFile {
    let model = &tokenizer_json["model"];
    let mut by_id: Vec<(u32, String, i32)> = model["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, id)| (id.as_u64().unwrap() as u32, t.clone(), 1))
        .collect();
    for a in tokenizer_json["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as u32;
        let ty = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
        let text = a["content"].as_str().unwrap().to_owned();
        match by_id.iter_mut().find(|e| e.0 == id) {
            Some(e) => e.2 = ty,
            None => by_id.push((id, text, ty)),
        }
    }
    by_id.sort_by_key(|e| e.0);
    assert!(
        by_id.iter().enumerate().all(|(i, e)| e.0 as usize == i),
        "dense ids"
    );
    let merges: Vec<String> = model["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            other => panic!("merge {other}"),
        })
        .collect();
    let mut w = GgufWriter::new();
    let s = |v: &str| MetadataValue::String(v.to_owned());
    w.add_metadata("general.architecture", s("llama")).unwrap();
    w.add_metadata("tokenizer.ggml.model", s("gpt2")).unwrap();
    w.add_metadata("tokenizer.ggml.pre", s(pre)).unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(
            by_id.iter().map(|e| e.1.clone()).collect(),
        )),
    )
    .unwrap();
    w.add_metadata(
        "tokenizer.ggml.token_type",
        MetadataValue::Array(MetadataArray::I32(by_id.iter().map(|e| e.2).collect())),
    )
    .unwrap();
    w.add_metadata(
        "tokenizer.ggml.merges",
        MetadataValue::Array(MetadataArray::String(merges)),
    )
    .unwrap();
    if let Some(b) = bos {
        w.add_metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(b))
            .unwrap();
    }
    if let Some(e) = eos {
        w.add_metadata("tokenizer.ggml.eos_token_id", MetadataValue::U32(e))
            .unwrap();
    }
    w.add_metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(add_bos))
        .unwrap();
    if let Some(t) = chat_template {
        w.add_metadata("tokenizer.chat_template", s(t)).unwrap();
    }
    w.write_to_path(out).unwrap();
    GgufFile::open(out).unwrap()
}

/// Bytes shown as U+FFFD after `MAX_PENDING` ids that later ids would
/// complete into a character (ids 237 x 16 then 148 148 on the tiny
/// byte-level vocabulary: the last 0xED starts a valid 3-byte sequence)
/// keep streaming: the shown text stays, the rest decodes on its own.
/// Found by the `openai_requests` fuzz target, where it was a 500.
#[test]
fn stream_decoding_survives_bytes_completed_after_they_were_shown() {
    use bitnet_models::tokenizer::TextTokenizer;
    let tok = TextTokenizer::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bitnet-inference/tests/fixtures/tiny/bitlinear_offline/tokenizer.json"),
    )
    .unwrap();
    let mut ids = vec![237u32; 16];
    ids.extend([148, 148, 72, 105]);
    let mut stream = tok.stream_decoder(true);
    let mut text = String::new();
    for &id in &ids {
        if let Some(piece) = stream.step(&tok, id).unwrap() {
            text.push_str(&piece);
        }
    }
    if let Some(rest) = stream.flush(&tok).unwrap() {
        text.push_str(&rest);
    }
    assert!(text.starts_with('\u{FFFD}'), "{text:?}");
    assert!(text.ends_with("Hi") || text.contains('H'), "{text:?}");
}
