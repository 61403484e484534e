//! A BitNet model's weights in the engine's runtime form, loaded from an HF
//! checkpoint directory (`config.json` + safetensors).
//!
//! Ternary layers are repacked once, here, into the kernels' layout
//! ([`bitnet_quant::formats::runtime`]); online checkpoints are ternarized
//! here with the reference's absmean quantizer; float checkpoints keep float
//! linear layers. Norms are f32; embeddings and the output layer stay in
//! the file's encoding ([`FloatMatrix`]), mapped rather than copied.

use crate::config::{BitNetConfig, LinearVariant};
use crate::error::{Error, Result};
use crate::float_matrix::FloatMatrix;
use crate::safetensors::SafetensorsCheckpoint;
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::{hf2bit, runtime::PackedTernary};
use bitnet_quant::quantize::ternary::{Granularity, quantize};
use std::path::Path;

/// One linear layer, `y = W x` with `W` `[rows, cols]`.
#[derive(Clone, Debug)]
pub enum Linear {
    /// Float weights, row-major `[rows, cols]` (float checkpoints).
    Float {
        /// Row-major weights.
        weight: Vec<f32>,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
    },
    /// Ternary weights with int8 activations.
    Ternary(BitLinear),
    /// A layer a mixed-precision conversion kept in a float encoding (F16,
    /// BF16, Q8_0, Q4_K, Q6_K), run with f32 activations as llama.cpp runs
    /// such a layer; the encoding stays as stored.
    Dense(FloatMatrix),
}

impl Linear {
    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Float { rows, .. } => *rows,
            Linear::Ternary(b) => b.out_features(),
            Linear::Dense(m) => m.rows(),
        }
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Linear::Float { cols, .. } => *cols,
            Linear::Ternary(b) => b.in_features(),
            Linear::Dense(m) => m.cols(),
        }
    }
}

/// The weights of one transformer block.
#[derive(Clone, Debug)]
pub struct Layer {
    /// RMSNorm before attention, `[hidden]`.
    pub input_layernorm: Vec<f32>,
    /// RMSNorm before the FFN, `[hidden]`.
    pub post_attention_layernorm: Vec<f32>,
    /// RMSNorm on the attention output before `o_proj`, `[hidden]`.
    pub attn_sub_norm: Vec<f32>,
    /// RMSNorm on the FFN inner activation before `down_proj`, `[intermediate]`.
    pub ffn_sub_norm: Vec<f32>,
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Attention output projection.
    pub o_proj: Linear,
    /// FFN gate projection.
    pub gate_proj: Linear,
    /// FFN up projection.
    pub up_proj: Linear,
    /// FFN down projection.
    pub down_proj: Linear,
}

/// All weights of a BitNet causal LM.
#[derive(Clone, Debug)]
pub struct BitNetWeights {
    /// The model's configuration.
    pub config: BitNetConfig,
    /// Token embeddings `[vocab, hidden]`, in the file's encoding.
    pub embed_tokens: FloatMatrix,
    /// Transformer blocks.
    pub layers: Vec<Layer>,
    /// Final RMSNorm, `[hidden]`.
    pub norm: Vec<f32>,
    /// Separate output layer `[vocab, hidden]`; `None` when tied to the embeddings.
    pub lm_head: Option<FloatMatrix>,
}

impl BitNetWeights {
    /// Loads `dir/config.json` and the safetensors weights beside it.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let config = BitNetConfig::from_file(&dir.join("config.json"))?;
        let ckpt = SafetensorsCheckpoint::open_dir(dir)?;
        Self::from_checkpoint(config, &ckpt)
    }

    /// Builds the weights from an opened checkpoint.
    pub fn from_checkpoint(config: BitNetConfig, ckpt: &SafetensorsCheckpoint) -> Result<Self> {
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed_tokens = ckpt.float_matrix("model.embed_tokens.weight", v, h)?;
        // A tied checkpoint may still carry a copy of the embeddings as
        // `lm_head.weight`; it is not needed. An untied one must have it
        // (`f32` reports it missing, with the files searched).
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(ckpt.float_matrix("lm_head.weight", v, h)?)
        };
        let layers = (0..config.num_layers)
            .map(|i| load_layer(&config, ckpt, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(BitNetWeights {
            norm: ckpt.f32("model.norm.weight", &[h])?,
            embed_tokens,
            layers,
            lm_head,
            config,
        })
    }

    /// The output layer, `[vocab, hidden]` (the embeddings when tied).
    pub fn output_weight(&self) -> &FloatMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

fn load_layer(c: &BitNetConfig, ckpt: &SafetensorsCheckpoint, i: usize) -> Result<Layer> {
    let p = format!("model.layers.{i}");
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let lin = |name: &str, rows: usize, cols: usize| {
        load_linear(c.linear, ckpt, &format!("{p}.{name}"), rows, cols)
    };
    Ok(Layer {
        input_layernorm: ckpt.f32(&format!("{p}.input_layernorm.weight"), &[h])?,
        post_attention_layernorm: ckpt
            .f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
        attn_sub_norm: ckpt.f32(&format!("{p}.self_attn.attn_sub_norm.weight"), &[h])?,
        ffn_sub_norm: ckpt.f32(&format!("{p}.mlp.ffn_sub_norm.weight"), &[f])?,
        q_proj: lin("self_attn.q_proj", c.q_dim(), h)?,
        k_proj: lin("self_attn.k_proj", c.kv_dim(), h)?,
        v_proj: lin("self_attn.v_proj", c.kv_dim(), h)?,
        o_proj: lin("self_attn.o_proj", h, c.q_dim())?,
        gate_proj: lin("mlp.gate_proj", f, h)?,
        up_proj: lin("mlp.up_proj", f, h)?,
        down_proj: lin("mlp.down_proj", h, f)?,
    })
}

fn load_linear(
    variant: LinearVariant,
    ckpt: &SafetensorsCheckpoint,
    prefix: &str,
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    let name = format!("{prefix}.weight");
    let packed = |convention| -> Result<Linear> {
        let bytes = ckpt.u8(&name, &[rows.div_ceil(4), cols])?;
        let codes = hf2bit::unpack(bytes, rows, cols).map_err(Error::quant(&name))?;
        let runtime = PackedTernary::from_codes(&codes, rows, cols).map_err(Error::quant(&name))?;
        // Repacked: the file's copy need not stay resident.
        ckpt.release(&name);
        let scale_name = format!("{prefix}.weight_scale");
        let scale = ckpt.scalar_f32(&scale_name)?;
        let layer = BitLinear::new(runtime, WeightScale::Tensor(scale), convention)
            .map_err(Error::quant(&scale_name))?;
        Ok(Linear::Ternary(layer))
    };
    match variant {
        LinearVariant::Float => Ok(Linear::Float {
            weight: ckpt.f32(&name, &[rows, cols])?,
            rows,
            cols,
        }),
        LinearVariant::Online => {
            let latent = ckpt.f32(&name, &[rows, cols])?;
            let t = quantize(&name, &latent, rows, cols, Granularity::PerTensor)
                .map_err(Error::quant(&name))?;
            ckpt.release(&name);
            Ok(Linear::Ternary(
                BitLinear::from_ternary(&t).map_err(Error::quant(&name))?,
            ))
        }
        LinearVariant::PackedMultiply => packed(ScaleConvention::Multiply),
        LinearVariant::PackedDivide => packed(ScaleConvention::Divide),
    }
}
