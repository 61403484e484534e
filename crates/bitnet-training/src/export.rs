//! Export of a trained model through `bitnet-models`: ternary codes and
//! per-tensor scales exactly as the trainer's eval forward quantizes
//! (absmean, `weight_scale = max(mean |W|, 1e-5)` multiplying), written as an
//! HF packed checkpoint (`autobitlinear` offline, with `tokenizer.json`) or
//! as GGUF (I2_S, or TQ2_0 when every row length is a multiple of 256).

use bitnet_models::config::LinearVariant;
use bitnet_models::float_matrix::FloatMatrix;
use bitnet_models::gguf_model::TernaryType;
use bitnet_models::hf_export::FloatDtype;
use bitnet_models::weights::{BitNetWeights, Layer, Linear};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::runtime::PackedTernary;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{ParamKind, TrainableModel};

fn ternary(name: &str, w: &[f32], rows: usize, cols: usize) -> Result<Linear> {
    let mean = w.iter().map(|v| v.abs()).sum::<f32>() / w.len().max(1) as f32;
    let s = 1.0 / mean.max(1e-5);
    let codes: Vec<i8> = w
        .iter()
        .map(|&v| (v * s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    let quant = |e| Error::Config(format!("{name}: {e}"));
    let packed = PackedTernary::from_codes(&codes, rows, cols).map_err(quant)?;
    let lin = BitLinear::new(
        packed,
        WeightScale::Tensor(mean.max(1e-5)),
        ScaleConvention::Multiply,
    )
    .map_err(quant)?;
    Ok(Linear::Ternary(lin))
}

/// The model as inference weights: ternary projections, f32 norms and
/// embeddings. A float (unquantized) training config is refused.
pub fn to_weights(model: &TrainableModel) -> Result<BitNetWeights> {
    if !model.quantized() {
        return Err(Error::Config(
            "a float model has no ternary layers to export".into(),
        ));
    }
    let mut config = model.config().clone();
    config.linear = LinearVariant::PackedMultiply;
    let ps = model.params();
    let (v, h) = (config.vocab_size, config.hidden_size);
    let embed_tokens = FloatMatrix::from_f32(v, h, ps[0].data.clone())?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for l in 0..config.num_layers {
        let base = 1 + l * 11;
        let lin = |i: usize| {
            let p = &ps[base + i];
            debug_assert_eq!(p.kind, ParamKind::Linear { layer: l });
            ternary(&p.name, &p.data, p.dims[0], p.dims[1])
        };
        layers.push(Layer {
            input_layernorm: ps[base].data.clone(),
            post_attention_layernorm: ps[base + 1].data.clone(),
            attn_sub_norm: ps[base + 2].data.clone(),
            ffn_sub_norm: ps[base + 3].data.clone(),
            q_proj: lin(4)?,
            k_proj: lin(5)?,
            v_proj: lin(6)?,
            o_proj: lin(7)?,
            gate_proj: lin(8)?,
            up_proj: lin(9)?,
            down_proj: lin(10)?,
        });
    }
    let norm_idx = 1 + config.num_layers * 11;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(FloatMatrix::from_f32(v, h, ps[norm_idx + 1].data.clone())?)
    };
    Ok(BitNetWeights {
        norm: ps[norm_idx].data.clone(),
        embed_tokens,
        layers,
        lm_head,
        config,
    })
}

/// Writes `dir/{config.json, model.safetensors}` (packed, `autobitlinear`
/// offline) and copies `tokenizer` (a `tokenizer.json`, with a sibling
/// `tokenizer_config.json` when present) beside them.
pub fn export_hf(
    model: &TrainableModel,
    dir: &Path,
    dtype: FloatDtype,
    tokenizer: Option<&Path>,
) -> Result<()> {
    to_weights(model)?.write_hf(dir, dtype)?;
    if let Some(tok) = tokenizer {
        let dst = dir.join("tokenizer.json");
        std::fs::copy(tok, &dst).map_err(Error::io(tok, "copy"))?;
        if let Some(cfg) = tok.parent().map(|p| p.join("tokenizer_config.json"))
            && cfg.exists()
        {
            let dst = dir.join("tokenizer_config.json");
            std::fs::copy(&cfg, &dst).map_err(Error::io(&cfg, "copy"))?;
        }
    }
    Ok(())
}

/// Whether `ty` can hold every projection of `model` (TQ1_0/TQ2_0 need
/// row lengths that are multiples of 256; I2_S whole 128-weight groups).
pub fn gguf_supports(model: &TrainableModel, ty: TernaryType) -> bool {
    let block = match ty {
        TernaryType::I2S => {
            return model
                .params()
                .iter()
                .filter(|p| p.kind.decays())
                .all(|p| p.data.len() % 128 == 0);
        }
        TernaryType::Tq2_0 | TernaryType::Tq1_0 => 256,
    };
    model
        .params()
        .iter()
        .filter(|p| p.kind.decays())
        .all(|p| p.dims[1] % block == 0)
}

/// Writes the model as a GGUF file with ternary tensors of type `ty`.
pub fn export_gguf(model: &TrainableModel, path: &Path, ty: TernaryType) -> Result<()> {
    if !gguf_supports(model, ty) {
        return Err(Error::Config(format!(
            "{ty:?} cannot hold these projection shapes (row lengths must be multiples of 256 for TQ types)"
        )));
    }
    to_weights(model)?.write_gguf(path, ty)?;
    Ok(())
}
