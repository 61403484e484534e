//! BitNet models in GGUF: reading llama.cpp's `bitnet` architecture and
//! bitnet.cpp's `bitnet-b1.58` / `bitnet-25` into [`BitNetWeights`], and
//! writing [`BitNetWeights`] back out with ternary layers in I2_S, TQ2_0 or
//! TQ1_0.
//!
//! Tensor names (GGUF dims are fastest-first, so `[in, out]` in the file is
//! our row-major `[out, in]`): `token_embd`, `output_norm`, optional
//! `output`, and per block `blk.N.{attn_norm, attn_q, attn_k, attn_v,
//! attn_sub_norm, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_sub_norm,
//! ffn_down}`, each `.weight`, with an optional f32 `blk.N.<name>.scale` that
//! multiplies the layer output (older llama.cpp conversions).
//!
//! Ternary layers keep the file's per-tensor (I2_S) or per-block (TQ*)
//! dequantizing scale; blocks of one tensor must share it, or at least every
//! block of a row must (then the scale is per output channel).

use crate::config::{Activation, BitNetConfig, LinearVariant};
use crate::error::{Error, Result};
use crate::float_matrix::{FloatEncoding, FloatMatrix};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetadataArray, MetadataValue, dequant};
use crate::weights::{BitNetWeights, Layer, Linear};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::runtime::{self, PackedTernary};
use bitnet_quant::formats::tq1_0::{self, BlockTq1_0};
use bitnet_quant::formats::tq2_0::{self, BlockTq2_0};
use bitnet_quant::formats::{blocks_from_bytes, blocks_to_bytes, i2s};
use std::path::Path;

/// The ternary tensor type to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryType {
    /// bitnet.cpp I2_S: 2 bits per weight, one f32 scale per tensor.
    I2S,
    /// llama.cpp TQ2_0: 2.0625 bits per weight (rows must be multiples of 256).
    Tq2_0,
    /// llama.cpp TQ1_0: 1.6875 bits per weight (rows must be multiples of 256).
    Tq1_0,
}

/// The architecture name a written GGUF file carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufArch {
    /// bitnet.cpp's names: `bitnet-b1.58` for ReLU² models, `bitnet` for SiLU.
    Native,
    /// llama.cpp's `bitnet` for every model, the activation in
    /// `bitnet.hidden_activation` (llama.cpp ignores it and runs SiLU, which
    /// costs the same), and `tokenizer.ggml.model = "none"` so that
    /// llama.cpp loads a file without a vocabulary (for benchmarks).
    LlamaCpp,
}

/// The seven ternary projections of a block, in `Layer` field order.
const LINEARS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

fn bad(file: &GgufFile, msg: String) -> Error {
    Error::InFile {
        path: file.content().source().to_path_buf(),
        message: msg,
    }
}

/// Reads the configuration from GGUF metadata.
fn config_of(file: &GgufFile) -> Result<BitNetConfig> {
    let md = file.metadata();
    let arch = md.get_str("general.architecture")?.to_string();
    let activation = match arch.as_str() {
        "bitnet-b1.58" | "bitnet-25" => Activation::Relu2,
        "bitnet" => match md.get(&format!("{arch}.hidden_activation")) {
            Some(MetadataValue::String(s)) if s.contains("relu") => Activation::Relu2,
            Some(MetadataValue::String(s)) if s == "silu" || s == "swish" => Activation::Silu,
            Some(other) => {
                return Err(bad(
                    file,
                    format!("bitnet.hidden_activation {other:?} is not supported"),
                ));
            }
            None => Activation::Silu,
        },
        other => {
            return Err(bad(
                file,
                format!(
                    "architecture `{other}` is not a BitNet model (bitnet, bitnet-b1.58, bitnet-25)"
                ),
            ));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize> { Ok(md.get_u32(&key(k))? as usize) };
    let embd = file.content().tensor("token_embd.weight")?;
    let vocab = match md.get_u32(&key("vocab_size")) {
        Ok(v) => v as usize,
        Err(_) => *embd
            .dims()
            .get(1)
            .ok_or_else(|| bad(file, "token_embd.weight is not 2-D".into()))?
            as usize,
    };
    let heads = u("attention.head_count")?;
    let hidden = u("embedding_length")?;
    let json = serde_json::json!({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": md.get_u32(&key("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads),
        "head_dim": md.get_u32(&key("rope.dimension_count")).map(|v| v as usize).unwrap_or(hidden / heads.max(1)),
        "hidden_act": match activation { Activation::Relu2 => "relu2", Activation::Silu => "silu" },
        "rms_norm_eps": md.get_f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        "rope_theta": md.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
        "max_position_embeddings": md.get_u32(&key("context_length")).unwrap_or(4096),
        "tie_word_embeddings": file.content().tensor("output.weight").is_err(),
        "bos_token_id": md.get_u32("tokenizer.ggml.bos_token_id").ok(),
        "eos_token_id": md.get_u32("tokenizer.ggml.eos_token_id").ok(),
        // Ternary layers; the scales come from the tensors themselves.
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
    });
    BitNetConfig::from_json(&json.to_string()).map_err(|e| e.in_file(file.content().source()))
}

/// Checks a tensor's GGUF dims against our row-major shape.
fn check_dims(file: &GgufFile, name: &str, shape: &[usize]) -> Result<GgmlType> {
    let info = file.content().tensor(name)?;
    let want: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    if info.dims() != want.as_slice() {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            actual: info.dims().iter().rev().map(|&d| d as usize).collect(),
        });
    }
    Ok(info.ggml_type())
}

/// A float tensor (F32, F16, BF16, Q8_0, Q4_K or Q6_K) of row-major
/// `shape`, as f32.
fn float_tensor(file: &GgufFile, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let ty = check_dims(file, name, shape)?;
    if !dequant::is_supported(ty) {
        return Err(Error::TensorDtype {
            name: name.to_string(),
            dtype: ty.name().to_string(),
            expected: "F32, F16, BF16, Q8_0, Q4_K or Q6_K (re-export embeddings and output in one of these)",
        });
    }
    file.dequantize_tensor(name)
}

/// A `[rows, cols]` float matrix (token embeddings, output layer, dense
/// linear layers) that stays in the file, in any [`FloatEncoding`].
fn float_matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<FloatMatrix> {
    let ty = check_dims(file, name, &[rows, cols])?;
    let encoding = FloatEncoding::from_ggml_type(ty).ok_or_else(|| Error::TensorDtype {
        name: name.to_string(),
        dtype: ty.name().to_string(),
        expected: "F32, F16, BF16, Q8_0, Q4_K or Q6_K",
    })?;
    let bytes = file.tensor_bytes(name)?;
    let map = file.shared_map();
    let start = crate::mapped::offset_in(map, bytes).ok_or_else(|| Error::BadTensor {
        path: file.content().source().to_path_buf(),
        tensor: name.to_string(),
        reason: "tensor data is not inside the mapped file".into(),
    })?;
    let shared: crate::float_matrix::SharedBytes = map.clone();
    FloatMatrix::mapped(name, shared, start, bytes.len(), rows, cols, encoding)
        .map_err(|e| e.at_path(file.content().source()))
}

/// The GGUF type and bytes that store `m` without conversion.
fn gguf_float(m: &FloatMatrix) -> (GgmlType, Vec<u8>) {
    (m.encoding().ggml_type(), m.encoded_bytes().to_vec())
}

/// Per-block scales → one per tensor or one per row; `None` when the blocks
/// of one row differ (per-group scales, as llama.cpp's quantizer writes
/// for float weights), which the ternary kernels cannot run.
fn block_scale(scales: &[f32], rows: usize) -> Option<WeightScale> {
    let nonzero: Vec<f32> = scales.iter().copied().filter(|&d| d != 0.0).collect();
    let first = nonzero.first().copied().unwrap_or(1.0);
    if nonzero.iter().all(|&d| d == first) {
        return Some(WeightScale::Tensor(first.abs().max(f32::MIN_POSITIVE)));
    }
    let per_row = scales.len() / rows.max(1);
    let mut channel = Vec::with_capacity(rows);
    for row in scales.chunks(per_row.max(1)) {
        let nz: Vec<f32> = row.iter().copied().filter(|&d| d != 0.0).collect();
        let d = nz.first().copied().unwrap_or(1.0);
        if nz.iter().any(|&x| x != d) {
            return None;
        }
        channel.push(d.abs().max(f32::MIN_POSITIVE));
    }
    Some(WeightScale::Channel(channel))
}

/// Codes and a dequantizing scale of a float tensor that is ternary times
/// one scale (`{-a, 0, a}`), as older conversions store BitNet weights.
fn exact_ternary(w: &[f32]) -> Option<(Vec<i8>, f32)> {
    let a = w.iter().find(|v| **v != 0.0)?.abs();
    let codes = w
        .iter()
        .map(|&v| match v {
            _ if v == a => Some(1),
            _ if v == -a => Some(-1),
            _ if v == 0.0 => Some(0),
            _ => None,
        })
        .collect::<Option<Vec<i8>>>()?;
    Some((codes, a))
}

fn ternary_linear(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Linear> {
    let ty = check_dims(file, name, &[rows, cols])?;
    let q = Error::quant;
    let pack = |codes: Vec<i8>| PackedTernary::from_codes(&codes, rows, cols).map_err(q(name));
    let (packed, scale) = match ty {
        GgmlType::I2_S => {
            let (codes, s) = i2s::unpack(file.tensor_bytes(name)?, rows * cols).map_err(q(name))?;
            (
                pack(codes)?,
                WeightScale::Tensor(s.abs().max(f32::MIN_POSITIVE)),
            )
        }
        GgmlType::TQ2_0 => {
            let blocks: Vec<BlockTq2_0> =
                blocks_from_bytes(file.tensor_bytes(name)?, rows * cols).map_err(q(name))?;
            let d: Vec<f32> = blocks.iter().map(|b| b.d.to_f32()).collect();
            let Some(s) = block_scale(&d, rows) else {
                // Checked blocks, kept as they are and dotted block by block.
                return Ok(Linear::Dense(float_matrix(file, name, rows, cols)?));
            };
            if cols.is_multiple_of(runtime::BLOCK) {
                // Rows of whole blocks: their fields move straight into place.
                let packed = PackedTernary::from_tq2_0(&blocks, rows, cols).map_err(q(name))?;
                (packed, s)
            } else {
                (pack(tq2_0::to_codes(&blocks).0)?, s)
            }
        }
        GgmlType::TQ1_0 => {
            let blocks: Vec<BlockTq1_0> =
                blocks_from_bytes(file.tensor_bytes(name)?, rows * cols).map_err(q(name))?;
            let (codes, d) = tq1_0::to_codes(&blocks);
            match block_scale(&d, rows) {
                Some(s) => (pack(codes)?, s),
                None => return Ok(Linear::Dense(float_matrix(file, name, rows, cols)?)),
            }
        }
        _ => {
            let w = float_tensor(file, name, &[rows, cols])?;
            match exact_ternary(&w) {
                Some((codes, a)) => (pack(codes)?, WeightScale::Tensor(a)),
                None => {
                    // Latent float weights: ternarize like the online reference.
                    let t = bitnet_quant::quantize::ternary::quantize(
                        name,
                        &w,
                        rows,
                        cols,
                        bitnet_quant::quantize::ternary::Granularity::PerTensor,
                    )
                    .map_err(q(name))?;
                    return Ok(Linear::Ternary(
                        BitLinear::from_ternary(&t).map_err(q(name))?,
                    ));
                }
            }
        }
    };
    let extra = name.strip_suffix(".weight").map(|p| format!("{p}.scale"));
    let scale = match extra
        .as_deref()
        .filter(|s| file.content().tensor(s).is_ok())
    {
        Some(s) => {
            let m = float_tensor(file, s, &[1])?[0];
            match scale {
                WeightScale::Tensor(d) => WeightScale::Tensor(d * m),
                WeightScale::Channel(v) => WeightScale::Channel(v.iter().map(|d| d * m).collect()),
            }
        }
        None => scale,
    };
    Ok(Linear::Ternary(
        BitLinear::new(packed, scale, ScaleConvention::Multiply).map_err(q(name))?,
    ))
}

/// Metadata naming the linear layers a mixed-precision conversion kept in
/// a float encoding.
pub const DENSE_LINEARS_KEY: &str = "bitnet-rust.dense_linears";

fn dense_linears(file: &GgufFile) -> Result<Vec<String>> {
    match file.content().metadata().get(DENSE_LINEARS_KEY) {
        None => Ok(Vec::new()),
        Some(MetadataValue::Array(MetadataArray::String(v))) => Ok(v.clone()),
        Some(_) => Err(bad(
            file,
            format!("{DENSE_LINEARS_KEY} must be an array of strings"),
        )),
    }
}

/// Whether a linear layer runs dense: named in the metadata, or stored in
/// a type that never holds ternary weights (Q8_0/Q4_K/Q6_K, as llama.cpp's
/// mixed quantizations write). F16/F32 linears without the key stay
/// ternary (exact ternary values, or latent weights ternarized on load).
fn is_dense(file: &GgufFile, dense: &[String], name: &str) -> Result<bool> {
    let ty = file.content().tensor(name).map(|t| t.ggml_type());
    Ok(dense.iter().any(|d| d == name)
        || matches!(ty, Ok(GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)))
}

impl BitNetWeights {
    /// Loads a BitNet GGUF file (`bitnet`, `bitnet-b1.58` or `bitnet-25`).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = config_of(&file)?;
        let (h, f, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let embed_tokens = float_matrix(&file, "token_embd.weight", v, h)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(float_matrix(&file, "output.weight", v, h)?)
        };
        let dense = dense_linears(&file)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let dims = [
                (config.q_dim(), h),
                (config.kv_dim(), h),
                (config.kv_dim(), h),
                (h, config.q_dim()),
                (f, h),
                (f, h),
                (h, f),
            ];
            let mut lin = LINEARS
                .iter()
                .zip(dims)
                .map(|(name, (r, c))| {
                    if is_dense(&file, &dense, &n(name))? {
                        return Ok(Linear::Dense(float_matrix(&file, &n(name), r, c)?));
                    }
                    let linear = ternary_linear(&file, &n(name), r, c);
                    // Repacked: the file's copy need not stay resident.
                    file.release(&n(name));
                    linear
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter();
            let mut next = || {
                lin.next()
                    .ok_or_else(|| Error::Config("internal: layer list".into()))
            };
            layers.push(Layer {
                input_layernorm: float_tensor(&file, &n("attn_norm"), &[h])?,
                post_attention_layernorm: float_tensor(&file, &n("ffn_norm"), &[h])?,
                attn_sub_norm: float_tensor(&file, &n("attn_sub_norm"), &[h])?,
                ffn_sub_norm: float_tensor(&file, &n("ffn_sub_norm"), &[f])?,
                q_proj: next()?,
                k_proj: next()?,
                v_proj: next()?,
                o_proj: next()?,
                gate_proj: next()?,
                up_proj: next()?,
                down_proj: next()?,
            });
        }
        Ok(BitNetWeights {
            norm: float_tensor(&file, "output_norm.weight", &[h])?,
            embed_tokens,
            layers,
            lm_head,
            config,
        })
    }

    /// Writes the model as GGUF with ternary layers in `ternary` and float
    /// tensors in F32. Per-tensor scales only; float (unquantized) models
    /// are refused.
    pub fn write_gguf(&self, path: &Path, ternary: TernaryType) -> Result<()> {
        self.write_gguf_as(path, ternary, GgufArch::Native)
    }

    /// [`Self::write_gguf`] under the architecture name `arch` chooses.
    pub fn write_gguf_as(&self, path: &Path, ternary: TernaryType, arch: GgufArch) -> Result<()> {
        let c = &self.config;
        if c.linear == LinearVariant::Float {
            return Err(Error::Config(
                "a float model has no ternary layers to export; quantize it first".into(),
            ));
        }
        let mut w = GgufWriter::new();
        gguf_metadata(&mut w, c, ternary, arch, &[])?;
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (ty, bytes) = gguf_float(&self.embed_tokens);
        w.add_tensor("token_embd.weight", &[h as u64, v as u64], ty, bytes)?;
        w.add_tensor(
            "output_norm.weight",
            &[h as u64],
            GgmlType::F32,
            f32_bytes(&self.norm),
        )?;
        if let Some(head) = &self.lm_head {
            let (ty, bytes) = gguf_float(head);
            w.add_tensor("output.weight", &[h as u64, v as u64], ty, bytes)?;
        }
        let mut dense = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            for (name, norm, len) in [
                ("attn_norm", &l.input_layernorm, h),
                ("ffn_norm", &l.post_attention_layernorm, h),
                ("attn_sub_norm", &l.attn_sub_norm, h),
                ("ffn_sub_norm", &l.ffn_sub_norm, f),
            ] {
                w.add_tensor(n(name), &[len as u64], GgmlType::F32, f32_bytes(norm))?;
            }
            let lins = [
                &l.q_proj,
                &l.k_proj,
                &l.v_proj,
                &l.o_proj,
                &l.gate_proj,
                &l.up_proj,
                &l.down_proj,
            ];
            for (name, lin) in LINEARS.iter().zip(lins) {
                let (ty, bytes) = match lin {
                    Linear::Dense(m) => {
                        dense.push(n(name));
                        gguf_float(m)
                    }
                    _ => encode_ternary(&n(name), lin, ternary)?,
                };
                w.add_tensor(n(name), &[lin.cols() as u64, lin.rows() as u64], ty, bytes)?;
            }
        }
        if !dense.is_empty() {
            w.add_metadata(
                DENSE_LINEARS_KEY,
                MetadataValue::Array(MetadataArray::String(dense)),
            )?;
        }
        w.write_to_path(path)
    }
}

/// Writes the model metadata of a BitNet GGUF file (architecture, shape,
/// rope, activation, token ids) for `config` into `w`, with the vocabulary
/// `tokenizer` (`tokenizer.*` keys, see [`crate::tokenizer::gguf::to_metadata`]).
pub(crate) fn gguf_metadata(
    w: &mut GgufWriter<'_>,
    c: &BitNetConfig,
    ternary: TernaryType,
    arch: GgufArch,
    tokenizer: &[crate::tokenizer::gguf::MetadataEntry],
) -> Result<()> {
    let llama_cpp = arch == GgufArch::LlamaCpp;
    let arch = match c.activation {
        Activation::Relu2 if !llama_cpp => "bitnet-b1.58",
        _ => "bitnet",
    };
    let md = |k: &str| format!("{arch}.{k}");
    let u32v = |v: usize| MetadataValue::U32(v as u32);
    w.add_metadata("general.architecture", MetadataValue::String(arch.into()))?;
    if ternary == TernaryType::I2S {
        // bitnet.cpp's file type for I2_S; tells readers what id 36 means.
        w.add_metadata("general.file_type", MetadataValue::U32(40))?;
    }
    w.add_metadata(md("vocab_size"), u32v(c.vocab_size))?;
    w.add_metadata(md("context_length"), u32v(c.max_position_embeddings))?;
    w.add_metadata(md("embedding_length"), u32v(c.hidden_size))?;
    w.add_metadata(md("feed_forward_length"), u32v(c.intermediate_size))?;
    w.add_metadata(md("block_count"), u32v(c.num_layers))?;
    w.add_metadata(md("attention.head_count"), u32v(c.num_heads))?;
    w.add_metadata(md("attention.head_count_kv"), u32v(c.num_kv_heads))?;
    w.add_metadata(md("rope.dimension_count"), u32v(c.head_dim))?;
    w.add_metadata(
        md("attention.layer_norm_rms_epsilon"),
        MetadataValue::F32(c.rms_norm_eps),
    )?;
    w.add_metadata(md("rope.freq_base"), MetadataValue::F32(c.rope_theta))?;
    if arch == "bitnet" {
        let act = match c.activation {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        };
        w.add_metadata(md("hidden_activation"), MetadataValue::String(act.into()))?;
    }
    let has_model = tokenizer.iter().any(|(k, _)| k == "tokenizer.ggml.model");
    if llama_cpp && !has_model {
        // No vocabulary: llama.cpp then makes `vocab_size` dummy tokens.
        w.add_metadata("tokenizer.ggml.model", MetadataValue::String("none".into()))?;
    }
    for (k, v) in tokenizer {
        w.add_metadata(k.clone(), v.clone())?;
    }
    if let Some(b) = c.bos_token_id {
        w.add_metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(b))?;
    }
    if let Some(&e) = c.eos_token_ids.first() {
        w.add_metadata("tokenizer.ggml.eos_token_id", MetadataValue::U32(e))?;
    }
    Ok(())
}

/// A ternary layer's bytes in `ternary`, with its dequantizing scale.
fn encode_ternary(name: &str, lin: &Linear, ternary: TernaryType) -> Result<(GgmlType, Vec<u8>)> {
    let Linear::Ternary(b) = lin else {
        return Err(Error::Config(format!("tensor `{name}` is not ternary")));
    };
    let scale = b.tensor_multiplier().ok_or_else(|| {
        Error::Config(format!(
            "tensor `{name}` has per-channel scales; GGUF export writes one scale per tensor"
        ))
    })?;
    if ternary != TernaryType::I2S && !b.in_features().is_multiple_of(256) {
        return Err(Error::Config(format!(
            "tensor `{name}`: {ternary:?} needs rows that are a multiple of 256 weights, this one has {} \
             (use I2_S)",
            b.in_features()
        )));
    }
    let codes = b.weights().to_codes();
    let q = Error::quant(name);
    Ok(match ternary {
        TernaryType::I2S => (GgmlType::I2_S, i2s::pack(&codes, scale).map_err(q)?),
        TernaryType::Tq2_0 => (
            GgmlType::TQ2_0,
            blocks_to_bytes(&tq2_0::from_ternary(&codes, scale).map_err(q)?),
        ),
        TernaryType::Tq1_0 => (
            GgmlType::TQ1_0,
            blocks_to_bytes(&tq1_0::from_ternary(&codes, scale).map_err(q)?),
        ),
    })
}
