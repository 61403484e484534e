//! Mixed precision: which linear layers stay ternary and which keep a
//! float encoding (int8 = Q8_0, int4 = Q4_K, Q6_K, F16, BF16, F32).
//!
//! Either a policy file maps tensor-name patterns to precisions, or the
//! automatic mode keeps ternary everywhere except the layers whose
//! ternarization costs the most output error per extra byte, as many as a
//! size budget allows. A dense layer runs with f32 activations (as
//! llama.cpp runs a Q8_0 layer); the GGUF file lists such layers under
//! [`crate::gguf_model::DENSE_LINEARS_KEY`].
//!
//! A policy file (TOML); the first rule that matches wins, `{first}` and
//! `{last}` stand for the first and last block, patterns match the GGUF
//! or the HF tensor name with `*` and `?`:
//!
//! ```toml
//! default = "ternary"
//! [[rules]]
//! match = "blk.{first}.*"
//! precision = "int8"
//! [[rules]]
//! match = "blk.{last}.ffn_down.weight"
//! precision = "f16"
//! ```

use super::{FloatPrecision, LINEARS};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// A linear layer's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPrecision {
    /// Ternary in the target's ternary type.
    Ternary,
    /// Kept in a float encoding.
    Float(FloatPrecision),
}

impl LinearPrecision {
    /// Parses `ternary`, `int8`/`q8_0`, `int4`/`q4_k`, `q6_k`, `f16`,
    /// `bf16`, `f32`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ternary" | "1.58" => Some(LinearPrecision::Ternary),
            "int8" => Some(LinearPrecision::Float(FloatPrecision::Q8_0)),
            "int4" => Some(LinearPrecision::Float(FloatPrecision::Q4K)),
            other => FloatPrecision::parse(other).map(LinearPrecision::Float),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<String>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(rename = "match")]
    pattern: String,
    precision: String,
}

/// A parsed policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionPolicy {
    default: LinearPrecision,
    rules: Vec<(String, LinearPrecision)>,
}

fn precision(s: &str, where_: &str) -> Result<LinearPrecision> {
    LinearPrecision::parse(s).ok_or_else(|| {
        Error::Config(format!(
            "{where_}: unknown precision `{s}`; use ternary, int8, int4, q6_k, f16, bf16 or f32"
        ))
    })
}

impl PrecisionPolicy {
    /// Every linear in one precision (`default`), no rules.
    pub fn uniform(default: LinearPrecision) -> Self {
        PrecisionPolicy {
            default,
            rules: Vec::new(),
        }
    }

    /// Parses policy TOML.
    pub fn parse(text: &str) -> Result<Self> {
        let f: PolicyFile =
            toml::from_str(text).map_err(|e| Error::Config(format!("precision policy: {e}")))?;
        let default = match &f.default {
            Some(d) => precision(d, "precision policy `default`")?,
            None => LinearPrecision::Ternary,
        };
        let mut rules = Vec::new();
        for (i, r) in f.rules.iter().enumerate() {
            if r.pattern.trim().is_empty() {
                return Err(Error::Config(format!(
                    "precision policy rule {i}: empty `match`"
                )));
            }
            rules.push((
                r.pattern.clone(),
                precision(&r.precision, &format!("precision policy rule {i}"))?,
            ));
        }
        Ok(PrecisionPolicy { default, rules })
    }

    /// Reads a policy file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path, "read"))?;
        Self::parse(&text).map_err(|e| Error::InFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The precision of every linear, `[layer][k]`. A rule that matches no
    /// layer is an error (a typo would otherwise pass silently).
    pub fn resolve(&self, num_layers: usize) -> Result<Vec<[LinearPrecision; 7]>> {
        let last = num_layers.saturating_sub(1).to_string();
        let patterns: Vec<String> = self
            .rules
            .iter()
            .map(|(p, _)| p.replace("{first}", "0").replace("{last}", &last))
            .collect();
        let mut used = vec![false; patterns.len()];
        let mut out = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let mut layer = [self.default; 7];
            for (k, (hf, gg)) in LINEARS.iter().enumerate() {
                let names = [
                    format!("blk.{i}.{gg}.weight"),
                    format!("model.layers.{i}.{hf}.weight"),
                ];
                if let Some(r) = patterns
                    .iter()
                    .position(|p| names.iter().any(|n| glob(p, n)))
                {
                    used[r] = true;
                    layer[k] = self.rules[r].1;
                }
            }
            out.push(layer);
        }
        if let Some(r) = used.iter().position(|u| !u) {
            return Err(Error::Config(format!(
                "precision policy rule {r} (`{}`) matches no linear layer; names look like \
                 `blk.3.attn_q.weight` or `model.layers.3.self_attn.q_proj.weight`",
                self.rules[r].0
            )));
        }
        Ok(out)
    }
}

/// `*` (any run) and `?` (one character) matching, whole string.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The automatic mode: a size budget for the whole output file and the
/// precision the most sensitive layers are promoted to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoPrecision {
    /// Most bytes of tensor data in the output.
    pub budget_bytes: u64,
    /// What a promoted layer is stored as.
    pub promote_to: FloatPrecision,
}

/// One candidate of the automatic choice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) layer: usize,
    pub(crate) k: usize,
    /// Held-out output error removed by promoting it.
    pub(crate) gain: f64,
    /// Bytes it adds.
    pub(crate) cost: u64,
}

/// Greedy by error removed per byte, within `room` bytes; returns the
/// promoted `(layer, k)`.
pub(crate) fn choose(mut c: Vec<Candidate>, mut room: u64) -> Vec<(usize, usize)> {
    c.sort_by(|a, b| {
        let (ra, rb) = (a.gain / a.cost.max(1) as f64, b.gain / b.cost.max(1) as f64);
        rb.total_cmp(&ra)
            .then(a.layer.cmp(&b.layer))
            .then(a.k.cmp(&b.k))
    });
    let mut out = Vec::new();
    for x in c {
        if x.gain > 0.0 && x.cost <= room {
            room -= x.cost;
            out.push((x.layer, x.k));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("blk.0.*", "blk.0.attn_q.weight"));
        assert!(!glob("blk.0.*", "blk.10.attn_q.weight"));
        assert!(glob("*.ffn_*", "blk.3.ffn_down.weight"));
        assert!(glob("blk.?.attn_v.weight", "blk.7.attn_v.weight"));
        assert!(!glob("blk.?.attn_v.weight", "blk.17.attn_v.weight"));
        assert!(glob("*", ""));
    }

    #[test]
    fn first_match_wins_and_unused_rules_are_errors() {
        let p = PrecisionPolicy::parse(
            r#"
            default = "ternary"
            [[rules]]
            match = "blk.{last}.ffn_down.weight"
            precision = "f16"
            [[rules]]
            match = "model.layers.{first}.*"
            precision = "int8"
            [[rules]]
            match = "blk.*.ffn_down.weight"
            precision = "int4"
            "#,
        )
        .unwrap();
        let r = p.resolve(3).unwrap();
        assert_eq!(r[0][0], LinearPrecision::Float(FloatPrecision::Q8_0));
        assert_eq!(r[0][6], LinearPrecision::Float(FloatPrecision::Q8_0));
        assert_eq!(r[1][0], LinearPrecision::Ternary);
        assert_eq!(r[1][6], LinearPrecision::Float(FloatPrecision::Q4K));
        assert_eq!(r[2][6], LinearPrecision::Float(FloatPrecision::F16));
        let typo = PrecisionPolicy::parse(
            "[[rules]]\nmatch = \"blk.0.atn_q.weight\"\nprecision = \"int8\"\n",
        )
        .unwrap();
        assert!(
            typo.resolve(2)
                .unwrap_err()
                .to_string()
                .contains("matches no linear")
        );
        assert!(PrecisionPolicy::parse("default = \"int3\"").is_err());
        assert!(PrecisionPolicy::parse("defualt = \"int8\"").is_err());
    }

    #[test]
    fn the_greedy_choice_respects_the_budget() {
        let c = |layer, gain, cost| Candidate {
            layer,
            k: 0,
            gain,
            cost,
        };
        let picked = choose(
            vec![c(0, 0.5, 100), c(1, 0.1, 10), c(2, 0.9, 1000), c(3, 0.0, 1)],
            150,
        );
        assert_eq!(picked, vec![(1, 0), (0, 0)]);
    }
}
