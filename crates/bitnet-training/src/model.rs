//! The trainable BitNet b1.58 model: the architecture of `BitNetForCausalLM`
//! (NUMERICS.md) on the autograd tape, with latent float weights.
//!
//! Every projection is a BitLinear in transformers' `autobitlinear` online
//! form: `linear(ActQuant(x), WeightQuant(W))`, both quantizers with
//! straight-through gradients. Progressive quantization mixes float and
//! quantized values, `x + λ (q(x) − x)`, with one λ per layer (λ = 1 is the
//! exact reference forward; λ = 0 a float model). A config without
//! `quantization_config` trains a plain float model.
//!
//! ```text
//! x = embed(ids)
//! per layer:  a = input_layernorm(x); q,k,v = BitLinear(a); rope(q), rope(k)
//!             x += o_proj(attn_sub_norm(causal_attention(q, k, v)))
//!             n = post_attention_layernorm(x)
//!             x += down_proj(ffn_sub_norm(act(gate_proj(n)) * up_proj(n)))
//! logits = lm_head(norm(x))      (lm_head = embed when tied; never quantized)
//! ```

use bitnet_core::Parallelism;
use bitnet_core::autograd::{AttnDims, QuantizedLinear, Tape, TernaryWeight, Var};
use bitnet_models::config::{Activation, BitNetConfig, LinearVariant};
use bitnet_models::safetensors::SafetensorsCheckpoint;
use rayon::prelude::*;
use std::path::Path;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::ternary_linear::TernaryLinear;

/// The BitLinear weights of one optimizer step, quantized once by
/// [`TrainableModel::quantize_weights`] and shared by its shards' tapes.
#[derive(Debug)]
pub struct QuantizedWeights {
    /// By parameter index; `None` for parameters quantized on the tape.
    weights: Vec<Option<TernaryWeight>>,
}

/// What a parameter is, which decides weight decay and quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// The token embedding (also the output layer when tied).
    Embedding,
    /// An untied output layer.
    LmHead,
    /// An RMSNorm weight.
    Norm,
    /// A ternary projection in layer `layer`.
    Linear {
        /// Its transformer block.
        layer: usize,
    },
}

impl ParamKind {
    /// Weight decay applies to ternary projections only (not to norms and
    /// embeddings), as the BitNet training recipe does.
    pub fn decays(self) -> bool {
        matches!(self, ParamKind::Linear { .. })
    }
}

/// One named parameter with its latent float values.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// HF state-dict name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape.
    pub dims: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
    /// What it is.
    pub kind: ParamKind,
}

/// A BitNet model with trainable latent weights.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainableModel {
    config: BitNetConfig,
    params: Vec<Param>,
}

/// Tape handles of one forward pass.
pub struct Forward {
    /// Logits `[batch * seq, vocab]`.
    pub logits: Var,
    /// One handle per parameter, in [`TrainableModel::params`] order.
    pub params: Vec<Var>,
}

/// Per layer: the seven projections, in state-dict order.
const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];
const NORMS: [&str; 4] = [
    "input_layernorm",
    "post_attention_layernorm",
    "self_attn.attn_sub_norm",
    "mlp.ffn_sub_norm",
];
/// Parameters per layer: four norms, then seven projections.
const PER_LAYER: usize = 11;

/// Every parameter's name, shape and kind for `config`, in a fixed order.
pub fn param_specs(config: &BitNetConfig) -> Vec<(String, Vec<usize>, ParamKind)> {
    let c = config;
    let (h, f, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
        ParamKind::Embedding,
    )];
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let norm_dims = [h, h, q, f];
        for (n, d) in NORMS.iter().zip(norm_dims) {
            out.push((format!("{p}.{n}.weight"), vec![d], ParamKind::Norm));
        }
        let lin_dims = [[q, h], [kv, h], [kv, h], [h, q], [f, h], [f, h], [h, f]];
        for (n, d) in LINEARS.iter().zip(lin_dims) {
            out.push((
                format!("{p}.{n}.weight"),
                d.to_vec(),
                ParamKind::Linear { layer: l },
            ));
        }
    }
    out.push(("model.norm.weight".into(), vec![h], ParamKind::Norm));
    if !c.tie_word_embeddings {
        out.push((
            "lm_head.weight".into(),
            vec![c.vocab_size, h],
            ParamKind::LmHead,
        ));
    }
    out
}

impl TrainableModel {
    /// A freshly initialized model: projections and embeddings `N(0, std²)`,
    /// norms 1 (transformers' `_init_weights` with `initializer_range = std`).
    pub fn init(config: BitNetConfig, std: f32, seed: u64) -> Result<Self> {
        validate(&config)?;
        let mut rng = Rng::new(seed);
        let params = param_specs(&config)
            .into_iter()
            .map(|(name, dims, kind)| {
                let n: usize = dims.iter().product();
                let data = match kind {
                    ParamKind::Norm => vec![1.0; n],
                    _ => (0..n).map(|_| std * rng.normal()).collect(),
                };
                Param {
                    name,
                    dims,
                    data,
                    kind,
                }
            })
            .collect();
        Ok(TrainableModel { config, params })
    }

    /// Builds a model from `config` and parameters in [`param_specs`] order
    /// (names and shapes must match).
    pub fn from_params(config: BitNetConfig, params: Vec<Param>) -> Result<Self> {
        validate(&config)?;
        let specs = param_specs(&config);
        if specs.len() != params.len() {
            return Err(Error::Config(format!(
                "{} parameters given, the config needs {}",
                params.len(),
                specs.len()
            )));
        }
        for ((name, dims, _), p) in specs.iter().zip(&params) {
            let n: usize = dims.iter().product();
            if name != &p.name || dims != &p.dims || p.data.len() != n {
                return Err(Error::Config(format!(
                    "parameter `{}` {:?} does not match `{name}` {dims:?}",
                    p.name, p.dims
                )));
            }
        }
        Ok(TrainableModel { config, params })
    }

    /// Loads latent float weights from an HF directory (`config.json` and
    /// `model.safetensors` with float projections: no `quantization_config`
    /// or `autobitlinear` online).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let config = BitNetConfig::from_file(&dir.join("config.json"))?;
        if !matches!(config.linear, LinearVariant::Online | LinearVariant::Float) {
            return Err(Error::Config(format!(
                "{}: packed checkpoints hold no latent weights; train from an online or float checkpoint",
                dir.display()
            )));
        }
        let ckpt = SafetensorsCheckpoint::open_dir(dir)?;
        let params = param_specs(&config)
            .into_iter()
            .map(|(name, dims, kind)| {
                let data = ckpt.f32(&name, &dims)?;
                Ok(Param {
                    name,
                    dims,
                    data,
                    kind,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_params(config, params)
    }

    /// The model configuration.
    pub fn config(&self) -> &BitNetConfig {
        &self.config
    }

    /// The parameters, in [`param_specs`] order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Mutable parameters (for optimizers).
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    /// The parameter named `name`.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.data.len()).sum()
    }

    /// Whether the projections are quantized at all (false for float configs).
    pub fn quantized(&self) -> bool {
        self.config.linear != LinearVariant::Float
    }

    /// Records the forward pass of `ids` (`batch` sequences of `seq` tokens,
    /// row-major) on `tape`. `lambdas[l]` is layer `l`'s quantization mix
    /// (ignored for a float config); parameters get gradients when `train`.
    pub fn forward<'p>(
        &'p self,
        tape: &mut Tape<'p>,
        ids: &[u32],
        batch: usize,
        seq: usize,
        lambdas: &[f32],
        train: bool,
    ) -> Result<Forward> {
        self.forward_with(tape, ids, batch, seq, lambdas, train, None)
    }

    /// Every BitLinear weight of the layers at `λ = 1` quantized once (and
    /// prepared for `kernel`), one task per weight on `pool`: what
    /// [`forward_with`](Self::forward_with) reads instead of quantizing
    /// each weight again on every tape of an optimizer step.
    pub fn quantize_weights(
        &self,
        lambdas: &[f32],
        kernel: &dyn QuantizedLinear,
        pool: &rayon::ThreadPool,
    ) -> QuantizedWeights {
        let quant = self.quantized();
        let weights = pool.install(|| {
            self.params
                .par_iter()
                .map(|p| match p.kind {
                    ParamKind::Linear { layer }
                        if quant && lambdas.get(layer) == Some(&1.0) && p.dims.len() == 2 =>
                    {
                        let mut q = TernaryWeight::new(&p.data);
                        q.prepare(kernel, p.dims[0], p.dims[1]);
                        Some(q)
                    }
                    _ => None,
                })
                .collect()
        });
        QuantizedWeights { weights }
    }

    /// [`forward`](Self::forward) reading the weights quantized beforehand
    /// by [`quantize_weights`](Self::quantize_weights) with the same
    /// `lambdas` and the current parameters (layers without one quantize
    /// on the tape).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with<'p>(
        &'p self,
        tape: &mut Tape<'p>,
        ids: &[u32],
        batch: usize,
        seq: usize,
        lambdas: &[f32],
        train: bool,
        quantized: Option<&'p QuantizedWeights>,
    ) -> Result<Forward> {
        let c = &self.config;
        if ids.len() != batch * seq || seq == 0 {
            return Err(Error::Config(format!(
                "{} ids do not form {batch} sequences of {seq}",
                ids.len()
            )));
        }
        if seq > c.max_position_embeddings {
            return Err(Error::Config(format!(
                "sequence length {seq} exceeds max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        if lambdas.len() != c.num_layers {
            return Err(Error::Config(format!(
                "{} quantization lambdas for {} layers",
                lambdas.len(),
                c.num_layers
            )));
        }
        let vars = self
            .params
            .iter()
            .map(|p| tape.leaf_borrowed(&p.data, &p.dims, train))
            .collect::<bitnet_core::Result<Vec<Var>>>()?;
        let quant = self.quantized();
        let eps = c.rms_norm_eps;
        let dims = AttnDims {
            batch,
            seq,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let mut x = tape.embedding(vars[0], ids)?;
        for (l, &lambda) in lambdas.iter().enumerate() {
            let base = 1 + l * PER_LAYER;
            let p = |i: usize| vars[base + i];
            // BitLinear: ActQuant(x) · WeightQuant(W)ᵀ, both straight-through.
            let bitlinear = |tape: &mut Tape<'p>, xq: Var, i: usize| -> Result<Var> {
                let shared = quantized.and_then(|q| q.weights.get(base + i)?.as_ref());
                let w = match (quant, shared) {
                    (true, Some(q)) => tape.weight_quant_shared(p(i), q)?,
                    (true, None) => tape.weight_quant_ste(p(i), lambda)?,
                    (false, _) => p(i),
                };
                Ok(tape.linear(xq, w)?)
            };
            let act_q = |tape: &mut Tape<'_>, v: Var| -> Result<Var> {
                Ok(if quant {
                    tape.act_quant_ste(v, lambda)?
                } else {
                    v
                })
            };
            let a = tape.rms_norm(x, p(0), eps)?;
            let aq = act_q(tape, a)?;
            let q = bitlinear(tape, aq, 4)?;
            let k = bitlinear(tape, aq, 5)?;
            let v = bitlinear(tape, aq, 6)?;
            let q = tape.rope(q, seq, c.head_dim, c.rope_theta)?;
            let k = tape.rope(k, seq, c.head_dim, c.rope_theta)?;
            let o = tape.causal_attention(q, k, v, dims)?;
            let o = tape.rms_norm(o, p(2), eps)?;
            let oq = act_q(tape, o)?;
            let o = bitlinear(tape, oq, 7)?;
            x = tape.add(x, o)?;
            let n = tape.rms_norm(x, p(1), eps)?;
            let nq = act_q(tape, n)?;
            let g = bitlinear(tape, nq, 8)?;
            let u = bitlinear(tape, nq, 9)?;
            let g = match c.activation {
                Activation::Relu2 => tape.relu2(g)?,
                Activation::Silu => tape.silu(g)?,
            };
            let m = tape.mul(g, u)?;
            let m = tape.rms_norm(m, p(3), eps)?;
            let mq = act_q(tape, m)?;
            let d = bitlinear(tape, mq, 10)?;
            x = tape.add(x, d)?;
        }
        let norm_idx = 1 + c.num_layers * PER_LAYER;
        let h = tape.rms_norm(x, vars[norm_idx], eps)?;
        let head = if c.tie_word_embeddings {
            vars[0]
        } else {
            vars[norm_idx + 1]
        };
        let logits = tape.linear(h, head)?;
        Ok(Forward {
            logits,
            params: vars,
        })
    }

    /// Logits `[ids.len(), vocab]` of one sequence with every layer fully
    /// quantized (λ = 1): the trainer's eval forward, what an export runs.
    pub fn eval_logits(&self, ids: &[u32], par: Parallelism<'_>) -> Result<Vec<f32>> {
        let kernel = TernaryLinear::detect();
        let mut tape = Tape::with_quantized_linear(par, &kernel);
        let lambdas = vec![1.0; self.config.num_layers];
        let f = self.forward(&mut tape, ids, 1, ids.len(), &lambdas, false)?;
        Ok(tape.value(f.logits).to_vec())
    }
}

/// `config.json` text for `c` with latent weights: `autobitlinear` online
/// (or no `quantization_config` for a float model). Round-trips through
/// [`BitNetConfig::from_json`].
pub fn config_json(c: &BitNetConfig) -> String {
    let mut v = serde_json::json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": match c.activation { Activation::Relu2 => "relu2", Activation::Silu => "silu" },
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids,
        "torch_dtype": "float32",
    });
    if c.linear != LinearVariant::Float {
        v["quantization_config"] = serde_json::json!({
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "online"
        });
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn validate(c: &BitNetConfig) -> Result<()> {
    if c.num_kv_heads == 0
        || !c.num_heads.is_multiple_of(c.num_kv_heads)
        || !c.head_dim.is_multiple_of(2)
        || c.vocab_size == 0
    {
        return Err(Error::Config(format!(
            "impossible shapes: {} heads / {} kv heads, head_dim {}, vocab {}",
            c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny_config() -> BitNetConfig {
        BitNetConfig::from_json(
            r#"{"vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 32, "bos_token_id": 1, "eos_token_id": 2,
                "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                        "quantization_mode": "online"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn shapes_and_kinds() {
        let m = TrainableModel::init(tiny_config(), 0.02, 1).unwrap();
        assert_eq!(m.params().len(), 1 + 2 * PER_LAYER + 1);
        assert!(
            m.param("model.layers.1.mlp.down_proj.weight")
                .unwrap()
                .kind
                .decays()
        );
        assert!(!m.param("model.embed_tokens.weight").unwrap().kind.decays());
        let mut tape = Tape::new(Parallelism::Sequential);
        let ids: Vec<u32> = (0..12).map(|i| i % 40).collect();
        let f = m.forward(&mut tape, &ids, 2, 6, &[1.0, 0.5], true).unwrap();
        assert_eq!(tape.dims(f.logits), &[12, 40]);
        assert!(m.forward(&mut tape, &ids, 3, 6, &[1.0, 1.0], true).is_err());
        assert!(m.forward(&mut tape, &ids, 2, 6, &[1.0], true).is_err());
        let mut bad = m.params().to_vec();
        bad.pop();
        assert!(TrainableModel::from_params(tiny_config(), bad).is_err());
    }
}
