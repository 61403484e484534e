//! `config.json` of a BitNet checkpoint: the serde view of the file, and the
//! validated [`BitNetConfig`] the rest of the engine uses.
//!
//! Accepts both rope spellings (top-level `rope_theta` in older configs,
//! `rope_parameters.rope_theta` in newer ones) and reads
//! `quantization_config` to pick the linear-layer variant (NUMERICS.md):
//! none → float; `autobitlinear` + `online` → latent float weights quantized
//! at load; `autobitlinear` + `offline` → packed, `weight_scale` multiplies;
//! `bitlinear` + `offline` → packed, `weight_scale` divides.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// The feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `relu(x)^2` (BitNet b1.58 2B-4T).
    Relu2,
    /// `x * sigmoid(x)` (the 1bitLLM models, gated).
    Silu,
}

/// How the checkpoint stores its linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearVariant {
    /// Plain float weights; no quantization anywhere.
    Float,
    /// `autobitlinear` online: latent float weights, ternarized at load.
    Online,
    /// `autobitlinear` offline: packed codes, `weight_scale = mean |W|` multiplies.
    PackedMultiply,
    /// `bitlinear` offline: packed codes, `weight_scale = 1 / mean |W|` divides.
    PackedDivide,
}

/// A validated BitNet model configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BitNetConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// FFN activation.
    pub activation: Activation,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Whether the output layer reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// How linear layers are stored.
    pub linear: LinearVariant,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

#[derive(Deserialize)]
struct RawQuantization {
    quant_method: Option<String>,
    linear_class: Option<String>,
    quantization_mode: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<OneOrMany>,
    eos_token_id: Option<OneOrMany>,
    quantization_config: Option<RawQuantization>,
}

impl BitNetConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path, "read"))?;
        Self::from_json(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not a BitNet config.json: {e}")))?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self> {
        let bad = |msg: String| Err(Error::Config(msg));
        for (name, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        let num_heads = raw.num_attention_heads;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return bad(format!(
                "num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(num_heads) => raw.hidden_size / num_heads,
            None => {
                return bad(format!(
                    "hidden_size ({}) is not a multiple of num_attention_heads ({num_heads})",
                    raw.hidden_size
                ));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return bad(format!(
                "head_dim ({head_dim}) must be positive and even for RoPE"
            ));
        }
        let activation = match raw.hidden_act.as_deref().unwrap_or("relu2") {
            "relu2" => Activation::Relu2,
            "silu" | "swish" => Activation::Silu,
            other => {
                return bad(format!(
                    "hidden_act `{other}` is not supported (relu2, silu)"
                ));
            }
        };
        let rope_theta = raw
            .rope_parameters
            .and_then(|p| p.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return bad(format!("rope_theta {rope_theta} must be positive"));
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-5);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return bad(format!("rms_norm_eps {rms_norm_eps} must be positive"));
        }
        let linear = match raw.quantization_config {
            None => LinearVariant::Float,
            Some(q) => {
                if q.quant_method.as_deref().is_some_and(|m| m != "bitnet") {
                    return bad(format!(
                        "quantization_config.quant_method `{}` is not `bitnet`",
                        q.quant_method.unwrap_or_default()
                    ));
                }
                let class = q.linear_class.as_deref().unwrap_or("bitlinear");
                let mode = q.quantization_mode.as_deref().unwrap_or("offline");
                match (class, mode) {
                    ("autobitlinear", "online") => LinearVariant::Online,
                    ("autobitlinear", "offline") => LinearVariant::PackedMultiply,
                    ("bitlinear", "offline") => LinearVariant::PackedDivide,
                    (c, m) => {
                        return bad(format!(
                            "linear_class `{c}` with quantization_mode `{m}` is not supported"
                        ));
                    }
                }
            }
        };
        let ids = |v: Option<OneOrMany>| match v {
            None => Vec::new(),
            Some(OneOrMany::One(i)) => vec![i],
            Some(OneOrMany::Many(v)) => v,
        };
        Ok(BitNetConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            activation,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            bos_token_id: ids(raw.bos_token_id).first().copied(),
            eos_token_ids: ids(raw.eos_token_id),
            linear,
        })
    }

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Width of each of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B2_4T: &str = r#"{
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
        "vocab_size": 128256, "hidden_size": 2560, "intermediate_size": 6912,
        "num_hidden_layers": 30, "num_attention_heads": 20, "num_key_value_heads": 5,
        "hidden_act": "relu2", "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "max_position_embeddings": 4096, "tie_word_embeddings": true,
        "bos_token_id": 128000, "eos_token_id": 128001,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    }"#;

    #[test]
    fn reads_2b4t() {
        let c = BitNetConfig::from_json(B2_4T).unwrap();
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (128, 2560, 640));
        assert_eq!(c.linear, LinearVariant::PackedMultiply);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.eos_token_ids, vec![128001]);
    }

    #[test]
    fn both_rope_spellings_and_variants() {
        let newer = B2_4T
            .replace(
                r#""rope_theta": 500000.0"#,
                r#""rope_parameters": {"rope_type": "default", "rope_theta": 1234.0}"#,
            )
            .replace("autobitlinear", "bitlinear");
        let c = BitNetConfig::from_json(&newer).unwrap();
        assert_eq!(c.rope_theta, 1234.0);
        assert_eq!(c.linear, LinearVariant::PackedDivide);
        let online = B2_4T.replace("offline", "online");
        assert_eq!(
            BitNetConfig::from_json(&online).unwrap().linear,
            LinearVariant::Online
        );
        let mut float: serde_json::Value = serde_json::from_str(B2_4T).unwrap();
        float.as_object_mut().unwrap().remove("quantization_config");
        let float = BitNetConfig::from_json(&float.to_string()).unwrap();
        assert_eq!(float.linear, LinearVariant::Float);
    }

    #[test]
    fn clear_errors() {
        for (from, to, needle) in [
            (
                r#""num_key_value_heads": 5"#,
                r#""num_key_value_heads": 3"#,
                "multiple",
            ),
            (
                r#""hidden_act": "relu2""#,
                r#""hidden_act": "gelu""#,
                "gelu",
            ),
            (
                r#""quantization_mode": "offline""#,
                r#""quantization_mode": "weird""#,
                "weird",
            ),
            (
                r#""vocab_size": 128256"#,
                r#""vocab_size": 0"#,
                "vocab_size",
            ),
        ] {
            let err = BitNetConfig::from_json(&B2_4T.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(BitNetConfig::from_json("{").is_err());
    }
}
