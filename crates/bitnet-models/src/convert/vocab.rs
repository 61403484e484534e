//! The vocabulary a converted GGUF file carries, so that llama.cpp,
//! bitnet.cpp and our engine can tokenize text with the file alone.
//!
//! From an HF directory, its `tokenizer.json` (with the chat template of
//! `tokenizer_config.json`) becomes llama.cpp's `tokenizer.ggml.*` keys. A
//! tokenizer those keys cannot express travels whole under
//! `tokenizer.huggingface.json`, which our engine reads. From a GGUF file,
//! its `tokenizer.*` keys are copied. Token ids the model config already
//! names are written with the model metadata, not here.

use crate::config::BitNetConfig;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetadataValue};
use crate::tokenizer::gguf::{MetadataEntry, to_metadata};
use std::path::Path;

/// The `tokenizer.*` entries for a GGUF file converted from `input`;
/// empty when the input has no tokenizer.
pub(crate) fn tokenizer_entries(input: &Path, c: &BitNetConfig) -> Result<Vec<MetadataEntry>> {
    let dir = if input.is_dir() {
        input
    } else {
        let file = GgufFile::open(input)?;
        let md = file.metadata();
        if md.get("tokenizer.ggml.model").is_some()
            || md.get("tokenizer.huggingface.json").is_some()
        {
            let written_with_model = |k: &str| {
                (k == "tokenizer.ggml.bos_token_id" && c.bos_token_id.is_some())
                    || (k == "tokenizer.ggml.eos_token_id" && !c.eos_token_ids.is_empty())
            };
            return Ok(md
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer.") && !written_with_model(k))
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect());
        }
        // A vocabulary-less GGUF file may have its tokenizer beside it.
        input.parent().unwrap_or(Path::new("."))
    };
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let json = std::fs::read_to_string(&path).map_err(Error::io(&path, "read"))?;
    let template = chat_template(dir)?;
    let bos = c.bos_token_id;
    let eos = c.eos_token_ids.first().copied();
    match to_metadata(&json, c.vocab_size, bos, eos, template.as_deref(), &path) {
        Ok(entries) => Ok(entries),
        // Not expressible as llama.cpp keys (another tokenizer type, or ids
        // past the model's vocabulary): carried whole, for engines that
        // read HF tokenizers; they report any mismatch when they load it.
        Err(Error::InFile { .. }) => {
            let mut entries = vec![(
                "tokenizer.huggingface.json".to_owned(),
                MetadataValue::String(json),
            )];
            if let Some(t) = template {
                entries.push(("tokenizer.chat_template".into(), MetadataValue::String(t)));
            }
            Ok(entries)
        }
        Err(e) => Err(e),
    }
}

/// `chat_template` of `dir/tokenizer_config.json`, when it is one string.
fn chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path, "read"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::InFile {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    Ok(v["chat_template"].as_str().map(str::to_owned))
}
