//! Where a conversion reads from: a float HF checkpoint read tensor by
//! tensor from its memory map (BitNet, or Llama with inserted sub-norms),
//! or one of our own files (GGUF, or an HF packed/online checkpoint)
//! loaded whole, which is small because its linear layers are ternary.

use super::{ConvertOptions, LINEARS, Linears};
use crate::config::{BitNetConfig, LinearVariant};
use crate::error::{Error, Result};
use crate::float_matrix::FloatMatrix;
use crate::safetensors::SafetensorsCheckpoint;
use crate::weights::{BitNetWeights, Linear};
use bitnet_quant::bitlinear::{ScaleConvention, WeightScale};
use std::path::Path;

/// A linear layer as read: float weights, or ternary codes with their
/// dequantizing multipliers.
#[derive(Debug)]
pub(crate) enum LinearIn {
    /// Row-major float weights.
    Float(Vec<f32>),
    /// Codes with one multiplier per tensor or per row.
    Ternary {
        /// Row-major codes.
        codes: Vec<i8>,
        /// Dequantizing multipliers.
        scale: Mult,
    },
}

/// Dequantizing multipliers of ternary codes (`w ≈ code * m`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Mult {
    /// One for the tensor.
    Tensor(f32),
    /// One per output row.
    Channel(Vec<f32>),
    /// One per `len` consecutive weights of a row (the last group of a row
    /// may be shorter), row-major.
    Group { len: usize, m: Vec<f32> },
}

impl Mult {
    /// The multiplier of weight `idx` (row-major) of a matrix `cols` wide.
    pub(crate) fn at(&self, idx: usize, cols: usize) -> f32 {
        match self {
            Mult::Tensor(m) => *m,
            Mult::Channel(v) => v[idx / cols],
            Mult::Group { len, m } => {
                let (r, c) = (idx / cols, idx % cols);
                m[r * cols.div_ceil(*len) + c / len]
            }
        }
    }
}

/// The input model.
pub(crate) enum Source {
    /// A float HF checkpoint, read lazily. `subln` is true when the
    /// checkpoint (Llama) has no sub-norms and unit ones are inserted.
    HfFloat {
        config: BitNetConfig,
        ckpt: SafetensorsCheckpoint,
        subln: bool,
    },
    /// One of our own (ternary) files, loaded.
    Loaded(Box<BitNetWeights>),
}

/// `model_type` / `architectures` of a `config.json`, checked: BitNet, or
/// Llama (mapped onto BitNet's layout, which has two extra sub-norms).
fn architecture(dir: &Path) -> Result<(bool, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path, "read"))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::InFile {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    let model_type = json
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let arch = json
        .get("architectures")
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match (model_type, arch) {
        ("bitnet", _) | (_, "BitNetForCausalLM") => Ok((false, json)),
        ("llama", _) | (_, "LlamaForCausalLM") => Ok((true, json)),
        _ => Err(Error::InFile {
            path,
            message: format!(
                "unknown architecture (model_type `{model_type}`, architectures `{arch}`); \
                 convert reads BitNetForCausalLM and LlamaForCausalLM checkpoints"
            ),
        }),
    }
}

impl Source {
    /// Opens `input`: a GGUF file, or an HF checkpoint directory.
    pub(crate) fn open(input: &Path, opts: &ConvertOptions) -> Result<Self> {
        if input.is_file() {
            return Ok(Source::Loaded(Box::new(BitNetWeights::from_gguf(input)?)));
        }
        let (llama, mut json) = architecture(input)?;
        if llama {
            if !opts.insert_subln {
                return Err(Error::InFile {
                    path: input.join("config.json"),
                    message:
                        "a Llama checkpoint has no attn_sub_norm/ffn_sub_norm, which BitNet's \
                              layout (ours, bitnet.cpp's and llama.cpp's `bitnet`) requires; \
                              --insert-subln adds unit sub-norms, which changes the function \
                              (the result needs fine-tuning to be useful)"
                            .into(),
                });
            }
            // Llama's MLP is SiLU-gated; its config names it `silu` already.
            if let Some(o) = json.as_object_mut() {
                o.remove("quantization_config");
                o.entry("tie_word_embeddings")
                    .or_insert(serde_json::Value::Bool(false));
            }
        }
        let config = BitNetConfig::from_json(&json.to_string())
            .map_err(|e| e.in_file(&input.join("config.json")))?;
        if config.linear != LinearVariant::Float {
            return Ok(Source::Loaded(Box::new(BitNetWeights::from_hf_dir(input)?)));
        }
        let ckpt = SafetensorsCheckpoint::open_dir(input)?;
        Ok(Source::HfFloat {
            config,
            ckpt,
            subln: llama,
        })
    }

    pub(crate) fn config(&self) -> &BitNetConfig {
        match self {
            Source::HfFloat { config, .. } => config,
            Source::Loaded(w) => &w.config,
        }
    }

    /// Token embeddings, left in the input's encoding.
    pub(crate) fn embed(&self) -> Result<FloatMatrix> {
        match self {
            Source::HfFloat { config, ckpt, .. } => ckpt.float_matrix(
                "model.embed_tokens.weight",
                config.vocab_size,
                config.hidden_size,
            ),
            Source::Loaded(w) => Ok(w.embed_tokens.clone()),
        }
    }

    /// The untied output layer, if any.
    pub(crate) fn lm_head(&self) -> Result<Option<FloatMatrix>> {
        match self {
            Source::HfFloat { config, ckpt, .. } if !config.tie_word_embeddings => Ok(Some(
                ckpt.float_matrix("lm_head.weight", config.vocab_size, config.hidden_size)?,
            )),
            Source::HfFloat { .. } => Ok(None),
            Source::Loaded(w) => Ok(w.lm_head.clone()),
        }
    }

    /// Lets the pages of an input tensor go once it is converted.
    pub(crate) fn release(&self, hf_name: &str) {
        if let Source::HfFloat { ckpt, .. } = self {
            ckpt.release(hf_name);
        }
    }

    fn norm_vec(&self, hf_name: &str, len: usize) -> Result<Vec<f32>> {
        let Source::HfFloat { ckpt, .. } = self else {
            return Err(Error::Config("internal: norm of a loaded model".into()));
        };
        let v = ckpt.f32(hf_name, &[len])?;
        check_finite(hf_name, &v)?;
        Ok(v)
    }

    /// The final norm.
    pub(crate) fn final_norm(&self) -> Result<Vec<f32>> {
        match self {
            Source::HfFloat { config, .. } => {
                self.norm_vec("model.norm.weight", config.hidden_size)
            }
            Source::Loaded(w) => Ok(w.norm.clone()),
        }
    }

    /// The four norms of layer `i`: input, post-attention, attention
    /// sub-norm, FFN sub-norm.
    pub(crate) fn layer_norms(&self, i: usize) -> Result<[Vec<f32>; 4]> {
        match self {
            Source::HfFloat { config, subln, .. } => {
                let (h, f) = (config.hidden_size, config.intermediate_size);
                let p = format!("model.layers.{i}");
                let sub = |name: &str, len: usize| {
                    if *subln {
                        Ok(vec![1.0; len])
                    } else {
                        self.norm_vec(&format!("{p}.{name}.weight"), len)
                    }
                };
                Ok([
                    self.norm_vec(&format!("{p}.input_layernorm.weight"), h)?,
                    self.norm_vec(&format!("{p}.post_attention_layernorm.weight"), h)?,
                    sub("self_attn.attn_sub_norm", h)?,
                    sub("mlp.ffn_sub_norm", f)?,
                ])
            }
            Source::Loaded(w) => {
                let l = &w.layers[i];
                Ok([
                    l.input_layernorm.clone(),
                    l.post_attention_layernorm.clone(),
                    l.attn_sub_norm.clone(),
                    l.ffn_sub_norm.clone(),
                ])
            }
        }
    }

    /// Linear layer `k` (index into [`LINEARS`]) of layer `i`.
    pub(crate) fn linear(&self, i: usize, k: usize) -> Result<LinearIn> {
        match self {
            Source::HfFloat { config, ckpt, .. } => {
                let (rows, cols) = Linears::dims(config, k);
                let name = format!("model.layers.{i}.{}.weight", LINEARS[k].0);
                Ok(LinearIn::Float(ckpt.f32(&name, &[rows, cols])?))
            }
            Source::Loaded(w) => {
                let l = &w.layers[i];
                let lin = [
                    &l.q_proj,
                    &l.k_proj,
                    &l.v_proj,
                    &l.o_proj,
                    &l.gate_proj,
                    &l.up_proj,
                    &l.down_proj,
                ][k];
                Ok(match lin {
                    Linear::Float { weight, .. } => LinearIn::Float(weight.clone()),
                    // A dense layer of a mixed-precision file: its values,
                    // to keep dense or ternarize as the policy says.
                    Linear::Dense(m) => LinearIn::Float(m.to_f32()),
                    Linear::Ternary(b) => {
                        let scale = match (b.scale(), b.convention()) {
                            (WeightScale::Tensor(s), ScaleConvention::Multiply) => Mult::Tensor(*s),
                            (WeightScale::Tensor(s), ScaleConvention::Divide) => {
                                Mult::Tensor(1.0 / *s)
                            }
                            (WeightScale::Channel(v), ScaleConvention::Multiply) => {
                                Mult::Channel(v.clone())
                            }
                            (WeightScale::Channel(v), ScaleConvention::Divide) => {
                                Mult::Channel(v.iter().map(|s| 1.0 / s).collect())
                            }
                        };
                        LinearIn::Ternary {
                            codes: b.weights().to_codes(),
                            scale,
                        }
                    }
                })
            }
        }
    }
}

/// NaN/Inf check that names the tensor and the element.
pub(crate) fn check_finite(name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::TensorData {
            name: name.to_string(),
            message: format!(
                "non-finite value {} at element {i}; fix or drop it before converting",
                v[i]
            ),
        }),
        None => Ok(()),
    }
}
