//! HF `tokenizer_config.json`: the BOS/EOS token names, the special tokens
//! of `added_tokens_decoder`, `add_bos_token`, and the chat template (one
//! string, or a list of `{name, template}` of which `default` is used).
//!
//! ```text
//! {
//!   "bos_token": "<|begin_of_text|>"          or {"content": "<|begin_of_text|>", ...}
//!   "eos_token": "<|eot_id|>"                 or {"content": ...}
//!   "add_bos_token": true                     (optional)
//!   "added_tokens_decoder": {"128000": {"content": "<|begin_of_text|>", "special": true, ...}}
//!   "chat_template": "{% for message in messages %}..."
//!                    or [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
//! }
//! ```

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// What this crate uses of a `tokenizer_config.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// `bos_token` (the token's text).
    pub bos_token: Option<String>,
    /// `eos_token` (the token's text).
    pub eos_token: Option<String>,
    /// `add_bos_token`, where given.
    pub add_bos_token: Option<bool>,
    /// `added_tokens_decoder` entries as `(id, text, special)`, by id.
    pub added_tokens: Vec<(u32, String, bool)>,
    /// The chat template: the string form, or the list entry named
    /// `default`.
    pub chat_template: Option<String>,
    /// Every named template of the list form, in file order.
    pub named_chat_templates: Vec<(String, String)>,
}

impl TokenizerConfig {
    /// Reads and parses `path`.
    pub fn from_file(path: &Path) -> Result<TokenizerConfig> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path, "read"))?;
        Self::from_json(&text, path)
    }

    /// Parses JSON text; errors name `source`.
    pub fn from_json(text: &str, source: &Path) -> Result<TokenizerConfig> {
        let bad = |message: String| Error::Tokenizer {
            path: source.to_path_buf(),
            message,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("tokenizer_config.json is not a JSON object".into()))?;
        let mut cfg = TokenizerConfig {
            bos_token: token_text(obj.get("bos_token"), "bos_token").map_err(bad)?,
            eos_token: token_text(obj.get("eos_token"), "eos_token").map_err(bad)?,
            add_bos_token: obj.get("add_bos_token").and_then(Value::as_bool),
            ..TokenizerConfig::default()
        };
        if let Some(decoder) = obj.get("added_tokens_decoder") {
            let map = decoder
                .as_object()
                .ok_or_else(|| bad("added_tokens_decoder is not an object".into()))?;
            for (key, entry) in map {
                let id: u32 = key.parse().map_err(|_| {
                    bad(format!(
                        "added_tokens_decoder key {key:?} is not a token id"
                    ))
                })?;
                let content = entry
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("added_tokens_decoder[{key}] has no content")))?;
                let special = entry
                    .get("special")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                cfg.added_tokens.push((id, content.to_owned(), special));
            }
            cfg.added_tokens.sort_by_key(|t| t.0);
        }
        match obj.get("chat_template") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => cfg.chat_template = Some(s.clone()),
            Some(Value::Array(items)) => {
                for item in items {
                    let name = item.get("name").and_then(Value::as_str);
                    let template = item.get("template").and_then(Value::as_str);
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(bad(
                            "chat_template list entries need string `name` and `template`".into(),
                        ));
                    };
                    cfg.named_chat_templates
                        .push((name.to_owned(), template.to_owned()));
                }
                cfg.chat_template = cfg
                    .named_chat_templates
                    .iter()
                    .find(|(n, _)| n == "default")
                    .map(|(_, t)| t.clone());
            }
            Some(_) => return Err(bad("chat_template is neither a string nor a list".into())),
        }
        Ok(cfg)
    }
}

/// The text of a `bos_token`/`eos_token` entry: a string, an object with
/// `content` (HF's serialized `AddedToken`), or null.
fn token_text(v: Option<&Value>, key: &str) -> std::result::Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("{key} object has no string `content`")),
        },
        Some(_) => Err(format!("{key} is neither a string nor an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenizerConfig> {
        TokenizerConfig::from_json(text, Path::new("tokenizer_config.json"))
    }

    #[test]
    fn reads_string_and_object_tokens_and_added_tokens() {
        let cfg = parse(
            r#"{"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false},
                "add_bos_token": true,
                "added_tokens_decoder": {
                    "2": {"content": "</s>", "special": true},
                    "1": {"content": "<s>", "special": true},
                    "7": {"content": "<extra>", "special": false}},
                "chat_template": "{{ bos_token }}"}"#,
        )
        .unwrap();
        assert_eq!(cfg.bos_token.as_deref(), Some("<s>"));
        assert_eq!(cfg.eos_token.as_deref(), Some("</s>"));
        assert_eq!(cfg.add_bos_token, Some(true));
        assert_eq!(
            cfg.added_tokens,
            [
                (1, "<s>".into(), true),
                (2, "</s>".into(), true),
                (7, "<extra>".into(), false)
            ]
        );
        assert_eq!(cfg.chat_template.as_deref(), Some("{{ bos_token }}"));
    }

    #[test]
    fn list_form_picks_default() {
        let cfg = parse(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.chat_template.as_deref(), Some("D"));
        assert_eq!(cfg.named_chat_templates.len(), 2);
        let none = parse(r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#).unwrap();
        assert_eq!(none.chat_template, None);
    }

    #[test]
    fn bad_input_is_a_typed_error_naming_the_file() {
        for text in [
            "[1]",
            "nope",
            r#"{"bos_token": 3}"#,
            r#"{"chat_template": 3}"#,
            r#"{"chat_template": [{"name": "default"}]}"#,
            r#"{"added_tokens_decoder": {"x": {"content": "a"}}}"#,
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                matches!(e, Error::Tokenizer { .. }) && e.to_string().contains("tokenizer_config"),
                "{text}: {e}"
            );
        }
    }
}
