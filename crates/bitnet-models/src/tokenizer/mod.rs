//! Text ↔ token ids through HF `tokenizer.json` files (the `tokenizers`
//! crate, pure Rust with `fancy-regex`, which handles the Llama-3
//! pre-tokenizer), with what generation needs around them: BOS/EOS and
//! special token ids and the chat template from `tokenizer_config.json`
//! ([`config`]), tokenizers built from GGUF metadata ([`gguf`]), and
//! incremental decoding that never splits a character ([`stream`]).
//!
//! ```no_run
//! use bitnet_models::tokenizer::TextTokenizer;
//! let tok = TextTokenizer::from_dir(std::path::Path::new("models/bitnet-2b"))?;
//! let ids = tok.encode("Hello", true)?;
//! let mut stream = tok.stream_decoder(true);
//! for &id in &ids {
//!     if let Some(piece) = stream.step(&tok, id)? {
//!         print!("{piece}");
//!     }
//! }
//! # Ok::<(), bitnet_models::Error>(())
//! ```

pub mod config;
pub mod gguf;
pub mod stream;

pub use config::TokenizerConfig;
pub use stream::StreamDecoder;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Metadata};
use std::path::{Path, PathBuf};

/// Token texts that end a turn or the text in common chat vocabularies;
/// [`TextTokenizer::stop_ids`] adds those present to the EOS id.
const STOP_TOKENS: [&str; 4] = [
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
];

/// A loaded tokenizer: a `tokenizer.json` (from a file, a model directory,
/// or built from GGUF metadata) with its special tokens and chat template.
pub struct TextTokenizer {
    source: PathBuf,
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    extra_stop_ids: Vec<u32>,
    special_ids: Vec<u32>,
    chat_template: Option<String>,
    chat_template_source: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// The text of the BOS token that a `TemplateProcessing` post-processor
/// puts first, from the raw `tokenizer.json`.
fn post_processor_bos(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        post_processor: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_str(json).ok()?;
    let pp = head.post_processor?;
    let first = match pp.get("type")?.as_str()? {
        "TemplateProcessing" => pp.get("single")?.get(0)?.clone(),
        "Sequence" => pp
            .get("processors")?
            .as_array()?
            .iter()
            .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing"))?
            .get("single")?
            .get(0)?
            .clone(),
        _ => return None,
    };
    Some(first.get("SpecialToken")?.get("id")?.as_str()?.to_owned())
}

impl TextTokenizer {
    fn from_json(json: &str, source: &Path) -> Result<Self> {
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| Error::Tokenizer {
            path: source.to_path_buf(),
            message: format!("{e}"),
        })?;
        let mut special_ids: Vec<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        special_ids.sort_unstable();
        let mut tok = TextTokenizer {
            source: source.to_path_buf(),
            inner,
            bos_id: None,
            eos_id: None,
            extra_stop_ids: Vec::new(),
            special_ids,
            chat_template: None,
            chat_template_source: source.to_path_buf(),
        };
        tok.bos_id = post_processor_bos(json).and_then(|t| tok.token_to_id(&t));
        tok.extra_stop_ids = STOP_TOKENS
            .iter()
            .filter_map(|t| tok.token_to_id(t))
            .collect();
        Ok(tok)
    }

    /// Loads a `tokenizer.json` alone. Special ids come from its added
    /// tokens; the BOS id from its post-processor, if that adds one; there
    /// is no EOS id or chat template (see [`TextTokenizer::from_dir`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(Error::io(path, "read"))?;
        Self::from_json(&json, path)
    }

    /// Loads `dir/tokenizer.json` with `dir/tokenizer_config.json` if
    /// present (BOS/EOS tokens, special tokens, chat template); a
    /// `dir/chat_template.jinja` (newer `transformers`) overrides the
    /// config's template.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut tok = Self::from_file(&dir.join("tokenizer.json"))?;
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let cfg = TokenizerConfig::from_file(&cfg_path)?;
            tok.apply_config(&cfg, &cfg_path)?;
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            tok.chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(Error::io(&jinja, "read"))?);
            tok.chat_template_source = jinja;
        }
        Ok(tok)
    }

    /// Applies a parsed `tokenizer_config.json` (read from `path`).
    pub fn apply_config(&mut self, cfg: &TokenizerConfig, path: &Path) -> Result<()> {
        let id_of = |name: &Option<String>, what: &str| -> Result<Option<u32>> {
            match name {
                None => Ok(None),
                Some(t) => self
                    .token_to_id(t)
                    .map(Some)
                    .ok_or_else(|| Error::Tokenizer {
                        path: path.to_path_buf(),
                        message: format!("{what} {t:?} is not in the vocabulary"),
                    }),
            }
        };
        let bos = id_of(&cfg.bos_token, "bos_token")?;
        let eos = id_of(&cfg.eos_token, "eos_token")?;
        self.bos_id = bos.or(self.bos_id);
        self.eos_id = eos.or(self.eos_id);
        for (id, _, special) in &cfg.added_tokens {
            if *special && self.id_to_token(*id).is_some() {
                self.special_ids.push(*id);
            }
        }
        self.special_ids.sort_unstable();
        self.special_ids.dedup();
        if let Some(t) = &cfg.chat_template {
            self.chat_template = Some(t.clone());
            self.chat_template_source = path.to_path_buf();
        }
        Ok(())
    }

    /// Builds the tokenizer described by a GGUF file's metadata (see
    /// [`gguf`] for what is supported).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_gguf_metadata(file.metadata(), file.content().source())
    }

    /// [`TextTokenizer::from_gguf`] from the metadata alone; errors name
    /// `source`. A file whose `tokenizer.ggml.*` keys are absent or describe
    /// an unsupported model but that embeds a whole `tokenizer.json` under
    /// `tokenizer.huggingface.json` uses that.
    pub fn from_gguf_metadata(md: &Metadata, source: &Path) -> Result<Self> {
        let g = match gguf::from_metadata(md, source) {
            Ok(g) => g,
            Err(e @ (Error::UnsupportedTokenizer { .. } | Error::MissingKey { .. })) => {
                match gguf::embedded_hf_json(md, source)? {
                    Some(g) => g,
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let mut tok = Self::from_json(&g.json, source)?;
        for (key, id) in [("bos", g.bos_id), ("eos", g.eos_id), ("eot", g.eot_id)] {
            if let Some(id) = id.filter(|&id| tok.id_to_token(id).is_none()) {
                return Err(Error::BadMetadata {
                    path: source.to_path_buf(),
                    key: format!("tokenizer.ggml.{key}_token_id"),
                    reason: format!("token id {id} is not in the vocabulary"),
                });
            }
        }
        tok.bos_id = g.bos_id.or(tok.bos_id);
        tok.eos_id = g.eos_id;
        if let Some(eot) = g.eot_id {
            tok.extra_stop_ids.insert(0, eot);
        }
        tok.chat_template = g.chat_template;
        Ok(tok)
    }

    /// The tokenizer of a model at `path`: an HF directory
    /// ([`TextTokenizer::from_dir`]), a `*.json` tokenizer file, or a GGUF
    /// file ([`TextTokenizer::from_gguf`]; if its metadata has no tokenizer
    /// or an unsupported one, the `tokenizer.json` beside it, with its
    /// `tokenizer_config.json`, when there is one).
    pub fn for_model(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if path.extension().is_some_and(|e| e == "json") {
            return Self::from_file(path);
        }
        let file = GgufFile::open(path)?;
        match Self::from_gguf(&file) {
            Err(e @ (Error::UnsupportedTokenizer { .. } | Error::MissingKey { .. })) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                if dir.join("tokenizer.json").is_file() {
                    Self::from_dir(dir)
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    /// Where the tokenizer came from (a `tokenizer.json` or GGUF file).
    pub fn source(&self) -> &Path {
        &self.source
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.source.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's
    /// post-processor (e.g. a leading BOS). Special tokens written in the
    /// text (`<|eot_id|>`) are matched either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, optionally without special tokens. Bytes that do not
    /// form complete UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    /// A decoder for streaming generated ids as text (see [`stream`]).
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder::new(skip_special_tokens)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The vocabulary entry of `id` as stored (byte-level BPE shows a space
    /// as `Ġ`), `None` past the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry or added token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of one token as decoding shows it (`" hello"` for
    /// `Ġhello`; U+FFFD where the token is part of a multi-byte
    /// character; special tokens as written).
    pub fn token_to_piece(&self, id: u32) -> Result<String> {
        if self.id_to_token(id).is_none() {
            return Err(self.err(format!(
                "token id {id} is outside the vocabulary of {}",
                self.vocab_size()
            )));
        }
        self.decode(&[id], false)
    }

    /// The BOS id, from `tokenizer_config.json`, the post-processor or
    /// GGUF metadata.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The EOS id, from `tokenizer_config.json` or GGUF metadata.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The BOS token's text.
    pub fn bos_token(&self) -> Option<String> {
        self.bos_id.and_then(|id| self.id_to_token(id))
    }

    /// The EOS token's text.
    pub fn eos_token(&self) -> Option<String> {
        self.eos_id.and_then(|id| self.id_to_token(id))
    }

    /// Ids at which generation should stop: the EOS id, GGUF's EOT id, and
    /// those of `<|eot_id|>`, `<|end_of_text|>`, `<|im_end|>` and
    /// `<|endoftext|>` where the vocabulary has them. Sorted, no repeats.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .eos_id
            .into_iter()
            .chain(self.extra_stop_ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Ids of special tokens (added tokens marked special, and control
    /// tokens of GGUF vocabularies), sorted.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// Whether `id` is a special token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// The model's own chat template text, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template compiled, or the built-in Llama-3 one
    /// ([`crate::chat::ChatTemplate::llama3`]) when it has none.
    pub fn chat_template_or_default(&self) -> Result<crate::chat::ChatTemplate> {
        match &self.chat_template {
            Some(t) => crate::chat::ChatTemplate::new(t, &self.chat_template_source),
            None => Ok(crate::chat::ChatTemplate::llama3()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TextTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bitnet-inference/tests/fixtures/tiny/float/tokenizer.json");
        TextTokenizer::from_file(&path).unwrap()
    }

    #[test]
    fn stream_decoder_never_splits_a_character() {
        let tok = tiny();
        // One token per byte: "é" is 2 tokens, the emoji 4, CJK 3 each.
        let text = "a é 😀 世界 ok";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids.len(), text.len());
        let mut dec = tok.stream_decoder(false);
        let mut out = String::new();
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(p) = dec.step(&tok, id).unwrap() {
                assert!(!p.contains('\u{FFFD}'), "{p:?}");
                out.push_str(&p);
                pieces.push(p);
            }
            assert!(dec.window_len() <= 8, "window grows: {}", dec.window_len());
        }
        assert_eq!(dec.flush(&tok).unwrap(), None);
        assert_eq!(out, text);
        assert!(pieces.contains(&"😀".to_string()), "{pieces:?}");
    }

    #[test]
    fn stream_decoder_flushes_and_bounds_invalid_bytes() {
        let tok = tiny();
        // Byte 0xF0 starts a 4-byte sequence that never completes.
        let lead = tok.encode("😀", false).unwrap()[0];
        let mut dec = tok.stream_decoder(false);
        assert_eq!(dec.step(&tok, lead).unwrap(), None);
        assert_eq!(dec.flush(&tok).unwrap().as_deref(), Some("\u{FFFD}"));
        let mut emitted = false;
        for _ in 0..stream::MAX_PENDING {
            emitted |= dec.step(&tok, lead).unwrap().is_some();
        }
        assert!(emitted, "invalid bytes are held forever");
        assert!(dec.window_len() <= stream::MAX_PENDING);
    }

    #[test]
    fn pieces_and_vocab_lookups() {
        let tok = tiny();
        assert_eq!(tok.id_to_token(32).as_deref(), Some("Ġ"));
        assert_eq!(tok.token_to_piece(32).unwrap(), " ");
        assert_eq!(tok.token_to_id("a"), Some(97));
        assert!(tok.token_to_piece(100_000).is_err());
        assert_eq!(tok.bos_id(), None);
        assert!(tok.special_ids().is_empty());
        assert!(tok.chat_template().is_none());
    }

    #[test]
    fn from_dir_reads_the_config() {
        let dir = tempfile::tempdir().unwrap();
        // The tiny byte vocabulary plus two special tokens.
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bitnet-inference/tests/fixtures/tiny/float/tokenizer.json");
        let mut j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
        j["added_tokens"] = serde_json::json!([
            {"id": 256, "content": "<s>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true},
            {"id": 257, "content": "</s>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true}]);
        std::fs::write(dir.path().join("tokenizer.json"), j.to_string()).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": [{"name": "default", "template": "{{ bos_token }}x"}]}"#,
        )
        .unwrap();
        let tok = TextTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(256), Some(257)));
        assert_eq!(tok.bos_token().as_deref(), Some("<s>"));
        assert_eq!(tok.special_ids(), [256, 257]);
        assert!(tok.is_special(257) && !tok.is_special(97));
        assert_eq!(tok.stop_ids(), [257]);
        assert_eq!(tok.chat_template(), Some("{{ bos_token }}x"));
        assert_eq!(tok.encode("a</s>", false).unwrap(), [97, 257]);
        assert_eq!(tok.decode(&[97, 257], true).unwrap(), "a");

        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": "<nope>"}"#,
        )
        .unwrap();
        let e = TextTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("tokenizer_config.json"), "{e}");
        let e = TextTokenizer::from_dir(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}
