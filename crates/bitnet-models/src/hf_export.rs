//! Writing [`BitNetWeights`] as an HF checkpoint in the 2B-4T layout:
//! `config.json` (`autobitlinear` offline) and `model.safetensors` with
//! packed uint8 projections, their `weight_scale` (= mean |W|, multiplied),
//! and float embeddings and norms in f32 or bf16. Files are written to a
//! temporary name and renamed into place.

use crate::config::{Activation, BitNetConfig, LinearVariant};
use crate::error::{Error, Result};
use crate::weights::{BitNetWeights, Linear};
use bitnet_quant::formats::hf2bit;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// The float dtype for embeddings, norms and scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    /// 32-bit floats (exact).
    F32,
    /// bfloat16, as 2B-4T ships (rounds to 8 mantissa bits).
    BF16,
    /// IEEE half (rounds to 11 significant bits; range ±65504).
    F16,
}

impl FloatDtype {
    /// The name `config.json` gives this dtype (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "float32",
            FloatDtype::BF16 => "bfloat16",
            FloatDtype::F16 => "float16",
        }
    }

    /// The safetensors dtype.
    pub fn safetensors_dtype(self) -> Dtype {
        match self {
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::BF16 => Dtype::BF16,
            FloatDtype::F16 => Dtype::F16,
        }
    }

    /// Little-endian bytes of `v` in this dtype.
    pub fn encode(self, v: &[f32]) -> (Dtype, Vec<u8>) {
        match self {
            FloatDtype::F32 => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            FloatDtype::BF16 => (
                Dtype::BF16,
                v.iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
            FloatDtype::F16 => (
                Dtype::F16,
                v.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
        }
    }
}

impl BitNetWeights {
    /// The `config.json` text for this model (2B-4T's `autobitlinear` offline layout).
    pub fn hf_config_json(&self, dtype: FloatDtype) -> String {
        hf_config_json(&self.config, dtype)
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (creating `dir`).
    pub fn write_hf(&self, dir: &Path, dtype: FloatDtype) -> Result<()> {
        if self.config.linear == LinearVariant::Float {
            return Err(Error::Config(
                "a float model has no ternary layers to pack; quantize it first".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let (h, v) = (self.config.hidden_size, self.config.vocab_size);
        let mut float = |name: String, shape: Vec<usize>, data: &[f32]| {
            let (dt, bytes) = dtype.encode(data);
            tensors.push((name, dt, shape, bytes));
        };
        float(
            "model.embed_tokens.weight".into(),
            vec![v, h],
            &self.embed_tokens.to_f32(),
        );
        float("model.norm.weight".into(), vec![h], &self.norm);
        if let Some(head) = &self.lm_head {
            float("lm_head.weight".into(), vec![v, h], &head.to_f32());
        }
        let mut packed = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            float(
                format!("{p}.input_layernorm.weight"),
                vec![h],
                &l.input_layernorm,
            );
            float(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                &l.post_attention_layernorm,
            );
            float(
                format!("{p}.self_attn.attn_sub_norm.weight"),
                vec![h],
                &l.attn_sub_norm,
            );
            float(
                format!("{p}.mlp.ffn_sub_norm.weight"),
                vec![l.ffn_sub_norm.len()],
                &l.ffn_sub_norm,
            );
            for (name, lin) in [
                ("self_attn.q_proj", &l.q_proj),
                ("self_attn.k_proj", &l.k_proj),
                ("self_attn.v_proj", &l.v_proj),
                ("self_attn.o_proj", &l.o_proj),
                ("mlp.gate_proj", &l.gate_proj),
                ("mlp.up_proj", &l.up_proj),
                ("mlp.down_proj", &l.down_proj),
            ] {
                packed.push((format!("{p}.{name}"), lin));
            }
        }
        for (prefix, lin) in packed {
            let Linear::Ternary(b) = lin else {
                return Err(Error::Config(format!("`{prefix}` is not ternary")));
            };
            let scale = b.tensor_multiplier().ok_or_else(|| {
                Error::Config(format!(
                    "`{prefix}` has per-channel scales; the HF layout holds one per tensor"
                ))
            })?;
            let (rows, cols) = (b.out_features(), b.in_features());
            let bytes =
                hf2bit::pack(&b.weights().to_codes(), rows, cols).map_err(Error::quant(&prefix))?;
            tensors.push((
                format!("{prefix}.weight"),
                Dtype::U8,
                vec![rows.div_ceil(4), cols],
                bytes,
            ));
            let (dt, s) = dtype.encode(&[scale]);
            tensors.push((format!("{prefix}.weight_scale"), dt, vec![1], s));
        }
        let views = tensors
            .iter()
            .map(|(name, dt, shape, bytes)| {
                TensorView::new(*dt, shape.clone(), bytes)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| Error::Config(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let target = dir.join("model.safetensors");
        let tmp = dir.join(".model.safetensors.tmp");
        safetensors::tensor::serialize_to_file(views, None, &tmp).map_err(|e| {
            Error::Safetensors {
                path: tmp.clone(),
                message: e.to_string(),
            }
        })?;
        std::fs::rename(&tmp, &target).map_err(Error::io(&target, "rename"))?;
        let config = dir.join("config.json");
        std::fs::write(&config, self.hf_config_json(dtype)).map_err(Error::io(&config, "write"))?;
        Ok(())
    }
}

/// The `config.json` text for a model of `c` in 2B-4T's `autobitlinear`
/// offline layout, floats in `dtype`.
pub fn hf_config_json(c: &BitNetConfig, dtype: FloatDtype) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
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
        "eos_token_id": c.eos_token_ids.first(),
        "torch_dtype": dtype.torch_name(),
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "offline"
        }
    }))
    .unwrap_or_default()
}
