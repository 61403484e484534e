//! A tokenizer from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys),
//! built as the equivalent HF `tokenizer.json` and loaded by `tokenizers`.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is supported, with
//! the pre-tokenizers llama.cpp calls `llama-bpe`/`llama3` (Llama-3's split
//! regex, merges ignored for whole-word vocabulary hits, as llama.cpp and
//! HF both do for Llama-3) and `gpt-2`/`default` (GPT-2's regex).
//!
//! ```text
//! tokenizer.ggml.model         string    "gpt2" (byte-level BPE)
//! tokenizer.ggml.pre           string    "llama-bpe" | "llama3" | "gpt-2" | "default" | absent
//! tokenizer.ggml.tokens        [string]  id -> token text (GPT-2 byte alphabet)
//! tokenizer.ggml.token_type    [i32]     1 normal, 2 unknown, 3 control, 4 user-defined,
//!                                        5 unused, 6 byte
//! tokenizer.ggml.merges        [string]  "left right", in rank order
//! tokenizer.ggml.bos_token_id  u32       optional; likewise eos_/eot_/padding_token_id
//! tokenizer.ggml.add_bos_token bool      optional; add_eos_token likewise
//! tokenizer.chat_template      string    optional
//! ```
//!
//! Control tokens become special added tokens and user-defined tokens
//! non-special added tokens, so both match whole in the input text, as in
//! llama.cpp. When `tokenizer.ggml.pre` is absent (as in some published
//! BitNet GGUF files) a vocabulary with `<|begin_of_text|>` is taken as
//! Llama-3's, any other as GPT-2's.

use crate::error::{Error, Result};
use crate::gguf::{Metadata, MetadataArray, MetadataValue};
use serde_json::{Map, Value, json};
use std::path::Path;

/// The tokenizer models this module builds.
pub const SUPPORTED_MODELS: &str = "\"gpt2\" (byte-level BPE)";
/// The pre-tokenizer names this module knows.
pub const SUPPORTED_PRE: &str = "llama-bpe, llama3, llama-v3, dbrx, smaug-bpe, gpt-2, default";

/// Llama-3's pre-tokenizer split regex (HF `tokenizer.json` and llama.cpp).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// The parts of GGUF metadata a tokenizer needs, beyond the JSON.
#[derive(Debug)]
pub(crate) struct GgufTokenizer {
    /// The equivalent `tokenizer.json`.
    pub(crate) json: String,
    pub(crate) bos_id: Option<u32>,
    pub(crate) eos_id: Option<u32>,
    pub(crate) eot_id: Option<u32>,
    pub(crate) chat_template: Option<String>,
}

fn bad(source: &Path, key: &str, reason: impl Into<String>) -> Error {
    Error::BadMetadata {
        path: source.to_path_buf(),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn opt_id(md: &Metadata, key: &str, n_vocab: usize, source: &Path) -> Result<Option<u32>> {
    if md.get(key).is_none() {
        return Ok(None);
    }
    let id = md.get_u32(key)?;
    if id as usize >= n_vocab {
        return Err(bad(
            source,
            key,
            format!("token id {id} is outside the vocabulary of {n_vocab}"),
        ));
    }
    Ok(Some(id))
}

fn opt_bool(md: &Metadata, key: &str) -> Result<Option<bool>> {
    md.get(key).map(|_| md.get_bool(key)).transpose()
}

fn token_types(md: &Metadata, n_vocab: usize, source: &Path) -> Result<Vec<i32>> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(v) = md.get(KEY) else {
        return Ok(vec![1; n_vocab]);
    };
    let types: Vec<i32> = match v {
        MetadataValue::Array(MetadataArray::I32(t)) => t.clone(),
        MetadataValue::Array(MetadataArray::U32(t)) => t.iter().map(|&x| x as i32).collect(),
        MetadataValue::Array(MetadataArray::I8(t)) => t.iter().map(|&x| x.into()).collect(),
        MetadataValue::Array(MetadataArray::U8(t)) => t.iter().map(|&x| x.into()).collect(),
        other => {
            return Err(bad(
                source,
                KEY,
                format!("expected an integer array, found {:?}", other.value_type()),
            ));
        }
    };
    if types.len() != n_vocab {
        return Err(bad(
            source,
            KEY,
            format!("{} entries for {n_vocab} tokens", types.len()),
        ));
    }
    Ok(types)
}

/// Builds the `tokenizer.json` equivalent of `md`'s tokenizer.
pub(crate) fn from_metadata(md: &Metadata, source: &Path) -> Result<GgufTokenizer> {
    let model = md.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::UnsupportedTokenizer {
            path: source.to_path_buf(),
            model: model.to_owned(),
            supported: SUPPORTED_MODELS,
        });
    }
    const TOKENS: &str = "tokenizer.ggml.tokens";
    let tokens = md
        .get_array(TOKENS)?
        .as_strings()
        .ok_or_else(|| bad(source, TOKENS, "expected an array of strings"))?;
    if tokens.is_empty() {
        return Err(bad(source, TOKENS, "the vocabulary is empty"));
    }
    let n = tokens.len();
    let types = token_types(md, n, source)?;
    const MERGES: &str = "tokenizer.ggml.merges";
    let merges: &[String] = match md.get(MERGES) {
        None => &[],
        Some(_) => md
            .get_array(MERGES)?
            .as_strings()
            .ok_or_else(|| bad(source, MERGES, "expected an array of strings"))?,
    };
    let pre = match md.get("tokenizer.ggml.pre") {
        Some(_) => md.get_str("tokenizer.ggml.pre")?.to_owned(),
        None if tokens.iter().any(|t| t == "<|begin_of_text|>") => "llama-bpe".to_owned(),
        None => "default".to_owned(),
    };
    let (pre_tokenizer, ignore_merges) = match pre.as_str() {
        "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX},
                 "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false}]}),
            true,
        ),
        "gpt-2" | "default" => (
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": true}),
            false,
        ),
        other => {
            return Err(bad(
                source,
                "tokenizer.ggml.pre",
                format!("pre-tokenizer {other:?} is not supported (supported: {SUPPORTED_PRE})"),
            ));
        }
    };

    let bos_id = opt_id(md, "tokenizer.ggml.bos_token_id", n, source)?;
    let eos_id = opt_id(md, "tokenizer.ggml.eos_token_id", n, source)?;
    let eot_id = opt_id(md, "tokenizer.ggml.eot_token_id", n, source)?;
    let add_bos = opt_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = opt_bool(md, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let chat_template = match md.get("tokenizer.chat_template") {
        Some(_) => Some(md.get_str("tokenizer.chat_template")?.to_owned()),
        None => None,
    };

    let mut vocab = Map::with_capacity(n);
    let mut added = Vec::new();
    for (id, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        // A repeated text keeps its first id (a map cannot hold both).
        if !vocab.contains_key(tok) {
            vocab.insert(tok.clone(), json!(id));
        }
        let special = ty == TYPE_CONTROL || Some(id as u32) == bos_id || Some(id as u32) == eos_id;
        if special || ty == TYPE_USER_DEFINED {
            added.push(json!({"id": id, "content": tok, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": special}));
        }
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first byte.
        let split = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at);
        let Some(at) = split else {
            return Err(bad(
                source,
                MERGES,
                format!("merge {i} ({m:?}) is not two space-separated tokens"),
            ));
        };
        merge_pairs.push(json!([&m[..at], &m[at + 1..]]));
    }

    let post_processor = template_processing(
        tokens,
        bos_id.filter(|_| add_bos),
        eos_id.filter(|_| add_eos),
    );
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merge_pairs},
    });
    Ok(GgufTokenizer {
        json: tokenizer.to_string(),
        bos_id,
        eos_id,
        eot_id,
        chat_template,
    })
}

/// A `tokenizer.ggml.*` key and its value, as [`to_metadata`] gives them.
pub type MetadataEntry = (String, MetadataValue);

/// The `tokenizer.ggml.*` keys describing the HF `tokenizer.json` in `json`
/// to llama.cpp, as `convert_hf_to_gguf.py` writes them for byte-level BPE:
/// the inverse of [`from_metadata`] for the two pre-tokenizers it knows.
///
/// `n_vocab` is the model's vocabulary (embedding rows): ids the tokenizer
/// does not use become unused `[PAD{id}]` tokens, since llama.cpp needs one
/// token per row. `known_bos`/`known_eos` are the ids the model config
/// already names (written by the caller); BOS/EOS added by the tokenizer's
/// post-processor become `add_bos_token`/`add_eos_token`, with their ids
/// when the config names none. `chat_template` comes from
/// `tokenizer_config.json`. Errors name `source` and say what is not
/// expressible (another model type or pre-tokenizer, a normalizer).
pub fn to_metadata(
    json: &str,
    n_vocab: usize,
    known_bos: Option<u32>,
    known_eos: Option<u32>,
    chat_template: Option<&str>,
    source: &Path,
) -> Result<Vec<MetadataEntry>> {
    let unsupported = |what: String| Error::InFile {
        path: source.to_path_buf(),
        message: format!(
            "{what}; GGUF's tokenizer.ggml keys hold byte-level BPE with GPT-2's or Llama-3's \
             pre-tokenizer only"
        ),
    };
    let j: Value = serde_json::from_str(json).map_err(|e| Error::InFile {
        path: source.to_path_buf(),
        message: format!("not a tokenizer.json: {e}"),
    })?;
    let model = &j["model"];
    if model["type"] != "BPE" {
        return Err(unsupported(format!("tokenizer model {}", model["type"])));
    }
    if !j["normalizer"].is_null() {
        return Err(unsupported(format!(
            "normalizer {}",
            j["normalizer"]["type"]
        )));
    }
    let byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel"
            && v["add_prefix_space"] != true
            && v["use_regex"].as_bool().unwrap_or(true) == regex
    };
    let pre_tok = &j["pre_tokenizer"];
    let ignore_merges = model["ignore_merges"].as_bool().unwrap_or(false);
    let pre = if byte_level(pre_tok, true) && !ignore_merges {
        "gpt-2"
    } else if pre_tok["type"] == "Sequence"
        && pre_tok["pretokenizers"].as_array().is_some_and(|p| {
            p.len() == 2
                && p[0]["type"] == "Split"
                && p[0]["pattern"]["Regex"] == LLAMA3_REGEX
                && p[0]["behavior"] == "Isolated"
                && p[0]["invert"] != true
                && byte_level(&p[1], false)
        })
        && ignore_merges
    {
        "llama-bpe"
    } else {
        return Err(unsupported(format!(
            "pre-tokenizer {pre_tok} with ignore_merges = {ignore_merges}"
        )));
    };
    if !j["decoder"].is_null() && j["decoder"]["type"] != "ByteLevel" {
        return Err(unsupported(format!("decoder {}", j["decoder"]["type"])));
    }

    // id -> (text, llama.cpp type)
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get_mut(i))
            .ok_or_else(|| Error::InFile {
                path: source.to_path_buf(),
                message: format!(
                    "token {text:?} has id {id}, outside the model's vocabulary of {n_vocab}"
                ),
            })?;
        *slot = Some((text.to_owned(), ty));
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| unsupported("a BPE model without a vocab map".into()))?;
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| unsupported(format!("token {text:?} without an integer id")))?;
        put(id, text, 1)?;
    }
    let text_id = |t: &str| vocab.get(t).and_then(Value::as_u64);
    let mut added_ids = std::collections::HashMap::new();
    for a in j["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(unsupported(format!("added token {a}")));
        };
        let ty = if a["special"] == true {
            TYPE_CONTROL
        } else {
            TYPE_USER_DEFINED
        };
        put(id, text, ty)?;
        added_ids.insert(text.to_owned(), id);
    }
    let lookup = |t: &str| added_ids.get(t).copied().or_else(|| text_id(t));
    const TYPE_UNUSED: i32 = 5;
    let (texts, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| t.unwrap_or_else(|| (format!("[PAD{id}]"), TYPE_UNUSED)))
        .unzip();

    let mut merges = Vec::new();
    for m in model["merges"].as_array().into_iter().flatten() {
        merges.push(match m {
            Value::String(s) => s.clone(),
            Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                format!(
                    "{} {}",
                    p[0].as_str().unwrap_or(""),
                    p[1].as_str().unwrap_or("")
                )
            }
            other => return Err(unsupported(format!("merge {other}"))),
        });
    }

    let mut out: Vec<MetadataEntry> = vec![
        (
            "tokenizer.ggml.model".into(),
            MetadataValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            MetadataValue::String(pre.into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            MetadataValue::Array(MetadataArray::String(texts)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            MetadataValue::Array(MetadataArray::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            MetadataValue::Array(MetadataArray::String(merges)),
        ),
    ];
    // BOS/EOS the post-processor adds around a single sequence.
    let post = &j["post_processor"];
    let single = match post["type"].as_str() {
        None => &[][..],
        Some("TemplateProcessing") => post["single"].as_array().map_or(&[][..], Vec::as_slice),
        Some(other) => return Err(unsupported(format!("post-processor {other}"))),
    };
    let special_at = |v: Option<&Value>| -> Option<u32> {
        let name = v?["SpecialToken"]["id"].as_str()?;
        lookup(name).and_then(|id| u32::try_from(id).ok())
    };
    for (which, id, known) in [
        ("bos", special_at(single.first()), known_bos),
        ("eos", special_at(single.last()), known_eos),
    ] {
        let add = id.is_some() && (known.is_none() || known == id);
        out.push((
            format!("tokenizer.ggml.add_{which}_token"),
            MetadataValue::Bool(add),
        ));
        if let (true, None, Some(id)) = (add, known, id) {
            out.push((
                format!("tokenizer.ggml.{which}_token_id"),
                MetadataValue::U32(id),
            ));
        }
    }
    if let Some(t) = chat_template {
        out.push((
            "tokenizer.chat_template".into(),
            MetadataValue::String(t.to_owned()),
        ));
    }
    Ok(out)
}

/// The `tokenizer.json` some converters embed whole under
/// `tokenizer.huggingface.json`, with the BOS/EOS/EOT ids of the
/// `tokenizer.ggml.*` keys where present; `None` when the key is absent.
pub(crate) fn embedded_hf_json(md: &Metadata, source: &Path) -> Result<Option<GgufTokenizer>> {
    const KEY: &str = "tokenizer.huggingface.json";
    if md.get(KEY).is_none() {
        return Ok(None);
    }
    let json = md.get_str(KEY)?.to_owned();
    // Ids are checked against the vocabulary when the tokenizer is built.
    let id = |key| opt_id(md, key, usize::MAX, source);
    let chat_template = match md.get("tokenizer.chat_template") {
        Some(_) => Some(md.get_str("tokenizer.chat_template")?.to_owned()),
        None => None,
    };
    Ok(Some(GgufTokenizer {
        json,
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        eot_id: id("tokenizer.ggml.eot_token_id")?,
        chat_template,
    }))
}

/// A `TemplateProcessing` post-processor adding `bos` before and `eos`
/// after each sequence, or `null` when neither is added.
fn template_processing(tokens: &[String], bos: Option<u32>, eos: Option<u32>) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |id: u32, type_id: u32| json!({"SpecialToken": {"id": tokens[id as usize], "type_id": type_id}});
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    for (name, type_id, out) in [("A", 0, &mut single), ("B", 1, &mut pair)] {
        if let Some(b) = bos {
            out.push(special(b, type_id));
        }
        out.push(seq(name, type_id));
        if let Some(e) = eos {
            out.push(special(e, type_id));
        }
    }
    let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
    for id in bos.into_iter().chain(eos) {
        let t = &tokens[id as usize];
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair,
           "special_tokens": specials})
}
