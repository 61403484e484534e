//! `bitnet convert`: float or ternary checkpoints in, a ternary model out,
//! streamed tensor by tensor, with a per-tensor quality report.
//!
//! Inputs: an HF float checkpoint (`BitNetForCausalLM`, or
//! `LlamaForCausalLM` with unit sub-norms inserted on request), whose
//! linear layers are ternarized here with the reference absmean quantizer
//! (per tensor, or per output channel); or one of our own files (GGUF, HF
//! packed or online), whose ternary codes and scales are carried over
//! unchanged.
//!
//! Outputs ([`Target`]): an HF packed checkpoint (2B-4T's `autobitlinear`
//! offline layout, loadable by transformers' `BitNetForCausalLM`), or a
//! GGUF file with ternary layers in bitnet.cpp's I2_S or llama.cpp's
//! TQ2_0/TQ1_0, embeddings and output layer in F32/F16/BF16/Q8_0/Q6_K/Q4_K
//! ([`crate::gguf::encode`]).
//!
//! Memory: the output's header is written first from the declared shapes,
//! then each tensor is read (from the input's memory map), converted,
//! written and its input pages released, so the resident set stays near
//! one tensor's float copy plus the mapped pages in flight; the large
//! embedding matrix is converted in row chunks.
//!
//! The output appears atomically ([`crate::atomic`]); an existing one is
//! refused unless `force`. A shape a format cannot hold (TQ rows not a
//! multiple of 256, a k-quant row not a multiple of 256) is an error
//! naming the tensor, or with `allow_fallback` a documented fallback
//! (ternary codes stored as F16 with the exact scale in llama.cpp's optional
//! f32 `blk.N.<name>.scale` tensor, which every engine reads and our loader
//! recognises as ternary; float matrices in F16).

pub mod calib;
mod plan;
pub mod policy;
mod quality;
pub(crate) mod sink;
mod source;
mod vocab;
mod write;

use crate::atomic::{AtomicDir, AtomicFile};
use crate::config::BitNetConfig;
use crate::error::{Error, Result};
use crate::float_matrix::FloatMatrix;
use crate::gguf::encode::{self, encode_row};
use crate::gguf::{GgmlType, GgufWriter};
use crate::gguf_model::{GgufArch, TernaryType, gguf_metadata};
use crate::hf_export::{FloatDtype, hf_config_json};
use bitnet_core::Parallelism;
use bitnet_quant::formats::{blocks_to_bytes, hf2bit, i2s, tq1_0, tq2_0};
use bitnet_quant::ptq::{GptqParams, Hessian, gptq_ternary, low_rank_residual};
use bitnet_quant::quantize::ternary::{Granularity, quantize};
use policy::LinearPrecision;
use rayon::prelude::*;
use safetensors::tensor::Dtype;
use serde::Serialize;
use sink::{SafetensorsStream, Sink};
use source::{LinearIn, Mult, Source};
use std::path::{Path, PathBuf};

use plan::{Kind, Store, plan, store_bytes, store_name};
use quality::{
    Ternarized, compare, dequant, gptq, output_errors, precision_choices, run_calibration,
    ternarize,
};
use write::{write_float_matrix, write_ternary};

/// The seven linear layers of a block: HF name (under `model.layers.N.`)
/// and GGUF name (under `blk.N.`), in `Layer` field order.
pub(crate) const LINEARS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The four norms of a block: HF name and GGUF name.
const NORMS: [(&str, &str); 4] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.attn_sub_norm", "attn_sub_norm"),
    ("mlp.ffn_sub_norm", "ffn_sub_norm"),
];

/// Shapes of the linear layers.
pub(crate) struct Linears;

impl Linears {
    /// `(rows, cols)` of linear `k` in a model of `c`.
    pub(crate) fn dims(c: &BitNetConfig, k: usize) -> (usize, usize) {
        let (h, f, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)][k]
    }
}

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An HF checkpoint directory, 2-bit packed (`autobitlinear` offline).
    HfPacked,
    /// A GGUF file with ternary layers of this type.
    Gguf(TernaryType),
}

impl Target {
    /// Parses `hf-packed`, `gguf:i2_s`, `gguf:tq2_0`, `gguf:tq1_0`.
    pub fn parse(s: &str) -> Option<Target> {
        Some(match s {
            "hf-packed" | "hf" => Target::HfPacked,
            "gguf:i2_s" | "gguf" => Target::Gguf(TernaryType::I2S),
            "gguf:tq2_0" => Target::Gguf(TernaryType::Tq2_0),
            "gguf:tq1_0" => Target::Gguf(TernaryType::Tq1_0),
            _ => return None,
        })
    }
}

/// Storage of the embeddings and the output layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatPrecision {
    /// f32.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// ggml Q8_0 (GGUF only).
    Q8_0,
    /// ggml Q6_K (GGUF only).
    Q6K,
    /// ggml Q4_K (GGUF only).
    Q4K,
}

impl FloatPrecision {
    /// Parses `f32`, `f16`, `bf16`, `q8_0`, `q6_k`, `q4_k`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => FloatPrecision::F32,
            "f16" => FloatPrecision::F16,
            "bf16" => FloatPrecision::BF16,
            "q8_0" => FloatPrecision::Q8_0,
            "q6_k" => FloatPrecision::Q6K,
            "q4_k" => FloatPrecision::Q4K,
            _ => return None,
        })
    }

    /// The GGUF type.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            FloatPrecision::F32 => GgmlType::F32,
            FloatPrecision::F16 => GgmlType::F16,
            FloatPrecision::BF16 => GgmlType::BF16,
            FloatPrecision::Q8_0 => GgmlType::Q8_0,
            FloatPrecision::Q6K => GgmlType::Q6_K,
            FloatPrecision::Q4K => GgmlType::Q4_K,
        }
    }

    /// The safetensors dtype, for the plain float types.
    fn hf_dtype(self) -> Option<FloatDtype> {
        match self {
            FloatPrecision::F32 => Some(FloatDtype::F32),
            FloatPrecision::F16 => Some(FloatDtype::F16),
            FloatPrecision::BF16 => Some(FloatDtype::BF16),
            _ => None,
        }
    }
}

/// How float linear layers are ternarized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScaleMode {
    /// One absmean scale per tensor (the BitNet b1.58 reference; every
    /// format and engine holds it).
    #[default]
    Tensor,
    /// One absmean scale per output row (TQ1_0/TQ2_0 hold it in their
    /// per-block scales; I2_S and the HF layout cannot).
    Channel,
    /// One absmean scale per block of [`GROUP`] weights of a row: exactly
    /// what a TQ1_0/TQ2_0 block holds. Our engine (and llama.cpp) runs such
    /// layers block by block with int8 activations per block, slower than
    /// the ternary kernels (one scale per tensor or row).
    Group,
}

/// Weights per scale with [`ScaleMode::Group`]: one TQ1_0/TQ2_0 block.
pub const GROUP: usize = 256;

impl ScaleMode {
    fn granularity(self) -> Granularity {
        match self {
            ScaleMode::Tensor => Granularity::PerTensor,
            ScaleMode::Channel => Granularity::PerChannel,
            ScaleMode::Group => Granularity::PerGroup(GROUP),
        }
    }

    /// Dequantizing multipliers from quantizing scales `s` (codes = round(w·s)).
    fn mult(self, s: &[f32]) -> Mult {
        match self {
            ScaleMode::Tensor => Mult::Tensor(1.0 / s[0]),
            ScaleMode::Channel => Mult::Channel(s.iter().map(|s| 1.0 / s).collect()),
            ScaleMode::Group => Mult::Group {
                len: GROUP,
                m: s.iter().map(|s| 1.0 / s).collect(),
            },
        }
    }
}

/// How float linear layers are turned into ternary codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    /// Round each weight on the absmean grid (the reference).
    #[default]
    Absmean,
    /// GPTQ-style error compensation on the same grid (needs calibration).
    Gptq,
}

/// Calibration text and how to cut it.
#[derive(Clone, Debug)]
pub struct CalibrationInput {
    /// A UTF-8 text file, tokenized with the input model's tokenizer.
    pub text: PathBuf,
    /// Tokens per sequence.
    pub ctx: usize,
    /// At most this many tokens in all (a quarter are held out).
    pub max_tokens: usize,
}

/// Knobs of [`convert`].
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Output format.
    pub target: Target,
    /// Embedding storage.
    pub embeddings: FloatPrecision,
    /// Output-layer storage; `None` keeps it with the embeddings (tied
    /// models stay tied). A tied model given a different output precision
    /// gets a separate output tensor.
    pub output: Option<FloatPrecision>,
    /// Scales of ternarized float layers.
    pub scales: ScaleMode,
    /// Store tensors a format cannot hold in a fallback type instead of failing.
    pub allow_fallback: bool,
    /// Replace an existing output.
    pub force: bool,
    /// GGUF architecture naming.
    pub arch: GgufArch,
    /// Accept Llama checkpoints by inserting unit sub-norms.
    pub insert_subln: bool,
    /// Measure the error of every float matrix's encoding too (embeddings,
    /// output; costs a decode pass). Linear layers are always measured.
    pub measure_floats: bool,
    /// Ternarization method for float layers.
    pub method: Method,
    /// GPTQ dampening (fraction of the Hessian's mean diagonal).
    pub damp: f64,
    /// Calibration data: enables GPTQ and the held-out output-error columns.
    pub calibration: Option<CalibrationInput>,
    /// Measure a rank-`k` f16 residual correction per layer (0: off). Not
    /// exported: no engine here adds it at run time.
    pub low_rank: usize,
    /// Mixed precision from a policy (GGUF targets): which linear layers
    /// keep a float encoding.
    pub policy: Option<policy::PrecisionPolicy>,
    /// Mixed precision chosen from measured sensitivity under a size
    /// budget (needs calibration).
    pub auto_precision: Option<policy::AutoPrecision>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            target: Target::Gguf(TernaryType::I2S),
            embeddings: FloatPrecision::F16,
            output: None,
            scales: ScaleMode::Tensor,
            allow_fallback: false,
            force: false,
            arch: GgufArch::Native,
            insert_subln: false,
            measure_floats: false,
            method: Method::Absmean,
            damp: GptqParams::default().damp,
            calibration: None,
            low_rank: 0,
            policy: None,
            auto_precision: None,
        }
    }
}

/// What became of one weight matrix.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TensorReport {
    /// Output tensor name.
    pub name: String,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// Stored precision (`TQ2_0`, `I2_S`, `hf-2bit`, `F16`, `Q6_K`, ...).
    pub precision: String,
    /// Fraction of zero codes (ternary layers).
    pub sparsity: Option<f64>,
    /// Mean squared error against the float input (float inputs only).
    pub mse: Option<f64>,
    /// Signal-to-quantization-noise ratio in dB.
    pub sqnr_db: Option<f64>,
    /// Cosine similarity of the flattened matrices.
    pub cosine: Option<f64>,
    /// Relative squared output error `‖X(W−Ŵ)ᵀ‖²/‖XWᵀ‖²` of the stored
    /// weights on held-out calibration tokens.
    pub out_err: Option<f64>,
    /// The same for plain absmean rounding (the baseline).
    pub out_err_absmean: Option<f64>,
    /// The same for the stored weights plus a rank-k f16 residual
    /// correction (measured, not exported).
    pub out_err_low_rank: Option<f64>,
    /// Why the precision differs from the one asked for, if it does.
    pub note: Option<String>,
    /// Automatic mixed precision: the held-out relative output error this
    /// layer has when ternarized (its sensitivity).
    pub sensitivity: Option<f64>,
}

/// The result of a conversion.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertReport {
    /// The target, as given.
    pub target: String,
    /// Bytes written (the safetensors or GGUF file).
    pub output_bytes: u64,
    /// Calibration and held-out tokens, when calibrated.
    pub calibration_tokens: Option<(usize, usize)>,
    /// One entry per weight matrix, in file order.
    pub tensors: Vec<TensorReport>,
}

/// Progress of a conversion, reported after each tensor.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Tensors written.
    pub done: usize,
    /// Tensors in the output.
    pub total: usize,
    /// The tensor just written.
    pub tensor: &'a str,
}

/// Converts `input` (HF directory or GGUF file) to `output` as `opts`
/// says, calling `progress` after each tensor.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ConvertReport> {
    if input == output {
        return Err(Error::Config("input and output are the same path".into()));
    }
    crate::atomic::check_target(output, opts.force)?;
    let src = Source::open(input, opts)?;
    let c = src.config().clone();
    let lm_head = src.lm_head()?;
    let calibration = match &opts.calibration {
        Some(ci) => Some(run_calibration(input, &src, ci)?),
        None if opts.method == Method::Gptq => {
            return Err(Error::Config(
                "GPTQ needs calibration text (--calib FILE)".into(),
            ));
        }
        None => None,
    };
    let (choices, sensitivity) =
        precision_choices(&c, opts, &src, calibration.as_ref(), lm_head.is_some())?;
    let planned = plan(&c, opts, lm_head.is_some(), &choices)?;
    // Outputs: a GGUF file, or an HF directory holding a safetensors file.
    let dir = match opts.target {
        Target::HfPacked => Some(AtomicDir::create(output, opts.force)?),
        Target::Gguf(_) => None,
    };
    let file_path = match &dir {
        Some(d) => d.path().join("model.safetensors"),
        None => output.to_path_buf(),
    };
    let file = AtomicFile::create(&file_path, opts.force)?;
    let mut sink = match opts.target {
        Target::Gguf(tt) => {
            let mut w = GgufWriter::new();
            let tokenizer = vocab::tokenizer_entries(input, &c)?;
            gguf_metadata(&mut w, &c, tt, opts.arch, &tokenizer)?;
            let dense: Vec<String> = planned
                .iter()
                .filter(|p| {
                    matches!(p.kind, Kind::Linear(..)) && matches!(p.store, Store::Float(_))
                })
                .map(|p| p.name.clone())
                .collect();
            if !dense.is_empty() {
                w.add_metadata(
                    crate::gguf_model::DENSE_LINEARS_KEY,
                    crate::gguf::MetadataValue::Array(crate::gguf::MetadataArray::String(dense)),
                )?;
            }
            for p in &planned {
                let dims: Vec<u64> = p.shape.iter().rev().map(|&d| d as u64).collect();
                let ty = match p.store {
                    Store::Float(t) => t,
                    Store::Ternary(TernaryType::I2S) => GgmlType::I2_S,
                    Store::Ternary(TernaryType::Tq2_0) => GgmlType::TQ2_0,
                    Store::Ternary(TernaryType::Tq1_0) => GgmlType::TQ1_0,
                    Store::TernaryF16 => GgmlType::F16,
                    Store::Hf(_) | Store::HfPacked => {
                        return Err(Error::Config("internal: HF store in GGUF".into()));
                    }
                };
                w.declare_tensor(p.name.clone(), &dims, ty)?;
            }
            Sink::gguf(w, file, &file_path)?
        }
        Target::HfPacked => {
            let decl: Vec<(String, Dtype, Vec<usize>)> = planned
                .iter()
                .map(|p| match p.store {
                    Store::HfPacked => (
                        p.name.clone(),
                        Dtype::U8,
                        vec![p.shape[0].div_ceil(4), p.shape[1]],
                    ),
                    Store::Hf(d) => (p.name.clone(), d.safetensors_dtype(), p.shape.clone()),
                    _ => (p.name.clone(), Dtype::F32, p.shape.clone()),
                })
                .collect();
            Sink::Safetensors(SafetensorsStream::new(file, &file_path, &decl)?)
        }
    };
    let total = planned.len();
    let mut reports = Vec::new();
    let mut last_scale = 1.0f32;
    for (done, p) in planned.iter().enumerate() {
        let floats = |v: &[f32]| -> Vec<u8> {
            match p.store {
                Store::Hf(d) => d.encode(v).1,
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            }
        };
        match p.kind {
            Kind::Embed | Kind::Output(_) => {
                let m = match (p.kind, &lm_head) {
                    (Kind::Output(false), Some(head)) => head.clone(),
                    _ => src.embed()?,
                };
                let stats =
                    write_float_matrix(&mut sink, &p.name, &m, p.store, opts.measure_floats)?;
                src.release(if matches!(p.kind, Kind::Output(false)) {
                    "lm_head.weight"
                } else {
                    "model.embed_tokens.weight"
                });
                reports.push(TensorReport {
                    name: p.name.clone(),
                    shape: [m.rows(), m.cols()],
                    precision: store_name(p.store),
                    sparsity: None,
                    mse: stats.map(|s| s.0),
                    sqnr_db: stats.map(|s| s.1),
                    cosine: stats.map(|s| s.2),
                    out_err: None,
                    out_err_absmean: None,
                    out_err_low_rank: None,
                    note: p.note.clone(),
                    sensitivity: None,
                });
            }
            Kind::FinalNorm => sink.tensor(&p.name, &floats(&src.final_norm()?))?,
            Kind::Norm(i, j) => {
                // Norms of one layer are read together; cheap (a few KB).
                let norms = src.layer_norms(i)?;
                sink.tensor(&p.name, &floats(&norms[j]))?
            }
            Kind::WeightScale => sink.tensor(&p.name, &floats(&[last_scale]))?,
            Kind::Linear(i, k) if matches!(p.store, Store::Float(_)) => {
                // Kept dense by the precision policy or the budget.
                let (rows, cols) = (p.shape[0], p.shape[1]);
                let hf_name = format!("model.layers.{i}.{}.weight", LINEARS[k].0);
                let w = linear_values(src.linear(i, k)?, cols);
                src.release(&hf_name);
                let m = FloatMatrix::from_f32(rows, cols, w)?;
                let stats = write_float_matrix(&mut sink, &p.name, &m, p.store, true)?;
                reports.push(TensorReport {
                    name: p.name.clone(),
                    shape: [rows, cols],
                    precision: store_name(p.store),
                    sparsity: None,
                    mse: stats.map(|s| s.0),
                    sqnr_db: stats.map(|s| s.1),
                    cosine: stats.map(|s| s.2),
                    out_err: None,
                    out_err_absmean: None,
                    out_err_low_rank: None,
                    note: p.note.clone(),
                    sensitivity: sensitivity.get(&(i, k)).copied(),
                });
            }
            Kind::Linear(i, k) => {
                let (rows, cols) = (p.shape[0], p.shape[1]);
                let hf_name = format!("model.layers.{i}.{}.weight", LINEARS[k].0);
                let mut errs = (None, None, None);
                let (t, stats) = match src.linear(i, k)? {
                    LinearIn::Float(w) => {
                        let plain = ternarize(&hf_name, &w, rows, cols, opts.scales)?;
                        let t = match (opts.method, &calibration) {
                            (Method::Absmean, _) => plain.clone(),
                            (Method::Gptq, Some(cal)) => gptq(
                                &hf_name,
                                &w,
                                rows,
                                cols,
                                &cal.calib[i].inputs[calib::input_of(k)],
                                opts,
                            )?,
                            (Method::Gptq, None) => {
                                return Err(Error::Config("GPTQ needs calibration text".into()));
                            }
                        };
                        let stats =
                            compare(&w, |idx| f32::from(t.codes[idx]) * t.scale.at(idx, cols));
                        if let Some(cal) = &calibration {
                            let held = &cal.held_out[i].inputs[calib::input_of(k)];
                            errs = output_errors(&hf_name, &w, &t, &plain, rows, cols, held, opts)?;
                        }
                        (t, Some(stats))
                    }
                    LinearIn::Ternary { codes, scale } => (Ternarized { codes, scale }, None),
                };
                src.release(&hf_name);
                if let Mult::Tensor(m) = t.scale {
                    last_scale = m;
                }
                write_ternary(&mut sink, &p.name, &t, rows, cols, p.store)?;
                let zeros = t.codes.iter().filter(|&&c| c == 0).count();
                reports.push(TensorReport {
                    name: p.name.clone(),
                    shape: [rows, cols],
                    precision: store_name(p.store),
                    sparsity: Some(zeros as f64 / t.codes.len().max(1) as f64),
                    mse: stats.map(|s| s.0),
                    sqnr_db: stats.map(|s| s.1),
                    cosine: stats.map(|s| s.2),
                    out_err: errs.0,
                    out_err_absmean: errs.1,
                    out_err_low_rank: errs.2,
                    note: p.note.clone(),
                    sensitivity: sensitivity.get(&(i, k)).copied(),
                });
            }
        }
        progress(Progress {
            done: done + 1,
            total,
            tensor: &p.name,
        });
    }
    let file = sink.finish()?;
    file.commit()?;
    let output_bytes = std::fs::metadata(match &dir {
        Some(d) => d.path().join("model.safetensors"),
        None => output.to_path_buf(),
    })
    .map(|m| m.len())
    .unwrap_or(0);
    if let Some(dir) = dir {
        let mut hc = c.clone();
        hc.tie_word_embeddings = !planned.iter().any(|p| matches!(p.kind, Kind::Output(_)));
        let dtype = opts.embeddings.hf_dtype().unwrap_or(FloatDtype::F32);
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, hf_config_json(&hc, dtype)).map_err(Error::io(&cfg, "write"))?;
        // Tokenizer files travel with the model.
        if input.is_dir() {
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ] {
                let from = input.join(f);
                if from.is_file() {
                    let to = dir.path().join(f);
                    std::fs::copy(&from, &to).map_err(Error::io(&to, "copy"))?;
                }
            }
        }
        dir.commit()?;
    }
    Ok(ConvertReport {
        target: format!("{:?}", opts.target),
        output_bytes,
        calibration_tokens: calibration.as_ref().map(|c| c.tokens),
        tensors: reports,
    })
}

/// A linear layer's values as f32.
fn linear_values(l: LinearIn, cols: usize) -> Vec<f32> {
    match l {
        LinearIn::Float(w) => w,
        LinearIn::Ternary { codes, scale } => dequant(&Ternarized { codes, scale }, cols),
    }
}
