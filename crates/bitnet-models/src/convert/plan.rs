//! The conversion plan: every output tensor's name, shape and storage,
//! decided before any data is written (both output formats need all the
//! headers first).

use super::*;

/// What one output tensor holds.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Embed,
    /// The output layer; `true` when it is written from the embeddings.
    Output(bool),
    FinalNorm,
    Norm(usize, usize),
    Linear(usize, usize),
    /// The HF `weight_scale` of the linear just written.
    WeightScale,
}

/// How one output tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Store {
    /// A GGUF float type.
    Float(GgmlType),
    /// A GGUF ternary type.
    Ternary(TernaryType),
    /// Ternary values `code * m` as GGUF F16 (the fallback).
    TernaryF16,
    /// HF float.
    Hf(FloatDtype),
    /// HF 2-bit packed.
    HfPacked,
}

#[derive(Debug)]
pub(super) struct Planned {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) store: Store,
    /// Row-major shape.
    pub(super) shape: Vec<usize>,
    pub(super) note: Option<String>,
}

pub(super) fn fallback_or(
    opts: &ConvertOptions,
    name: &str,
    why: String,
    fallback: Store,
) -> Result<(Store, Option<String>)> {
    if opts.allow_fallback {
        Ok((
            fallback,
            Some(format!("{why}; stored as F16 (--allow-fallback)")),
        ))
    } else {
        Err(Error::TensorData {
            name: name.into(),
            message: format!("{why}; pass --allow-fallback to store it as F16 instead"),
        })
    }
}

/// Decides every output tensor's name, shape and storage from the shapes
/// alone, before any data is read.
pub(super) fn plan(
    c: &BitNetConfig,
    opts: &ConvertOptions,
    has_lm_head: bool,
    choices: &[[LinearPrecision; 7]],
) -> Result<Vec<Planned>> {
    let dense_at = |i: usize, k: usize| match choices.get(i).map(|l| l[k]) {
        Some(LinearPrecision::Float(p)) => Some(p),
        _ => None,
    };
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let mut out = Vec::new();
    let mut push = |name: String, kind, store, shape: Vec<usize>, note| {
        out.push(Planned {
            name,
            kind,
            store,
            shape,
            note,
        })
    };
    let output_prec = opts.output.unwrap_or(opts.embeddings);
    let separate_output = has_lm_head || output_prec != opts.embeddings;
    match opts.target {
        Target::HfPacked => {
            if choices
                .iter()
                .flatten()
                .any(|c| *c != LinearPrecision::Ternary)
            {
                return Err(Error::Config(
                    "mixed precision: the HF packed layout holds only ternary linear layers; \
                     use a GGUF target (gguf:tq2_0, gguf:tq1_0, gguf:i2_s)"
                        .into(),
                ));
            }
            let dt = |p: FloatPrecision, what: &str| {
                p.hf_dtype().ok_or_else(|| {
                    Error::Config(format!(
                        "--{what} {p:?}: the HF layout stores f32, f16 or bf16; \
                         Q8_0/Q6_K/Q4_K are GGUF types"
                    ))
                })
            };
            let emb = dt(opts.embeddings, "embeddings")?;
            if opts.scales != ScaleMode::Tensor {
                return Err(Error::Config(
                    "per-channel and per-group scales: the HF packed layout holds one \
                     weight_scale per tensor (use gguf:tq2_0 or gguf:tq1_0)"
                        .into(),
                ));
            }
            push(
                "model.embed_tokens.weight".into(),
                Kind::Embed,
                Store::Hf(emb),
                vec![v, h],
                None,
            );
            push(
                "model.norm.weight".into(),
                Kind::FinalNorm,
                Store::Hf(emb),
                vec![h],
                None,
            );
            if separate_output {
                push(
                    "lm_head.weight".into(),
                    Kind::Output(!has_lm_head),
                    Store::Hf(dt(output_prec, "output")?),
                    vec![v, h],
                    None,
                );
            }
            for i in 0..c.num_layers {
                let p = format!("model.layers.{i}");
                for (j, (hf, _)) in NORMS.iter().enumerate() {
                    let len = if j == 3 { f } else { h };
                    push(
                        format!("{p}.{hf}.weight"),
                        Kind::Norm(i, j),
                        Store::Hf(emb),
                        vec![len],
                        None,
                    );
                }
                for (k, (hf, _)) in LINEARS.iter().enumerate() {
                    let (r, cols) = Linears::dims(c, k);
                    push(
                        format!("{p}.{hf}.weight"),
                        Kind::Linear(i, k),
                        Store::HfPacked,
                        vec![r, cols],
                        None,
                    );
                    push(
                        format!("{p}.{hf}.weight_scale"),
                        Kind::WeightScale,
                        Store::Hf(emb),
                        vec![1],
                        None,
                    );
                }
            }
        }
        Target::Gguf(tt) => {
            let float = |name: &str, p: FloatPrecision| -> Result<(Store, Option<String>)> {
                let ty = p.ggml_type();
                let block = encode::block_len(ty);
                if h.is_multiple_of(block) {
                    Ok((Store::Float(ty), None))
                } else {
                    fallback_or(
                        opts,
                        name,
                        format!("{ty} needs rows that are a multiple of {block}, this one has {h}"),
                        Store::Float(GgmlType::F16),
                    )
                }
            };
            let (s, note) = float("token_embd.weight", opts.embeddings)?;
            push("token_embd.weight".into(), Kind::Embed, s, vec![v, h], note);
            push(
                "output_norm.weight".into(),
                Kind::FinalNorm,
                Store::Float(GgmlType::F32),
                vec![h],
                None,
            );
            if separate_output {
                let (s, note) = float("output.weight", output_prec)?;
                push(
                    "output.weight".into(),
                    Kind::Output(!has_lm_head),
                    s,
                    vec![v, h],
                    note,
                );
            }
            if tt == TernaryType::I2S && opts.scales != ScaleMode::Tensor {
                return Err(Error::Config(
                    "per-channel and per-group scales: I2_S holds one scale per tensor (use \
                     gguf:tq2_0 or gguf:tq1_0)"
                        .into(),
                ));
            }
            for i in 0..c.num_layers {
                for (j, (_, g)) in NORMS.iter().enumerate() {
                    let len = if j == 3 { f } else { h };
                    push(
                        format!("blk.{i}.{g}.weight"),
                        Kind::Norm(i, j),
                        Store::Float(GgmlType::F32),
                        vec![len],
                        None,
                    );
                }
                for (k, (_, g)) in LINEARS.iter().enumerate() {
                    let (r, cols) = Linears::dims(c, k);
                    let name = format!("blk.{i}.{g}.weight");
                    if let Some(p) = dense_at(i, k) {
                        let ty = p.ggml_type();
                        let block = encode::block_len(ty);
                        let (store, note) = if cols.is_multiple_of(block) {
                            (
                                Store::Float(ty),
                                Some(format!("kept dense as {} (mixed precision)", ty.name())),
                            )
                        } else {
                            fallback_or(
                                opts,
                                &name,
                                format!(
                                    "{ty} needs rows that are a multiple of {block}, this one has {cols}"
                                ),
                                Store::Float(GgmlType::F16),
                            )?
                        };
                        push(name, Kind::Linear(i, k), store, vec![r, cols], note);
                        continue;
                    }
                    let ok = match tt {
                        TernaryType::I2S => (r * cols).is_multiple_of(i2s::GROUP),
                        _ => cols.is_multiple_of(256),
                    };
                    let (store, note) = if ok {
                        (Store::Ternary(tt), None)
                    } else if opts.scales != ScaleMode::Tensor {
                        return Err(Error::TensorData {
                            name,
                            message: format!(
                                "{tt:?} cannot hold a [{r}, {cols}] matrix and the F16 fallback \
                                 holds one scale per tensor; use per-tensor scales"
                            ),
                        });
                    } else {
                        let why = match tt {
                            TernaryType::I2S => format!(
                                "I2_S needs a multiple of {} weights, [{r}, {cols}] is not",
                                i2s::GROUP
                            ),
                            _ => format!(
                                "{tt:?} needs rows that are a multiple of 256 weights, this one has {cols}"
                            ),
                        };
                        fallback_or(opts, &name, why, Store::TernaryF16)?
                    };
                    push(name, Kind::Linear(i, k), store, vec![r, cols], note);
                    if store == Store::TernaryF16 {
                        // The codes stay exact in F16; the scale goes, exact,
                        // into llama.cpp's optional per-layer f32 scale.
                        push(
                            format!("blk.{i}.{g}.scale"),
                            Kind::WeightScale,
                            Store::Float(GgmlType::F32),
                            vec![1],
                            None,
                        );
                    }
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn store_name(s: Store) -> String {
    match s {
        Store::Float(t) => t.name().to_string(),
        Store::Ternary(TernaryType::I2S) => "I2_S".into(),
        Store::Ternary(TernaryType::Tq2_0) => "TQ2_0".into(),
        Store::Ternary(TernaryType::Tq1_0) => "TQ1_0".into(),
        Store::TernaryF16 => "F16 (ternary values)".into(),
        Store::Hf(d) => d.torch_name().into(),
        Store::HfPacked => "hf-2bit".into(),
    }
}

/// Bytes a planned tensor takes in the output.
pub(super) fn store_bytes(store: Store, shape: &[usize]) -> u64 {
    let ty = match store {
        Store::Float(t) => t,
        Store::Ternary(TernaryType::I2S) => GgmlType::I2_S,
        Store::Ternary(TernaryType::Tq2_0) => GgmlType::TQ2_0,
        Store::Ternary(TernaryType::Tq1_0) => GgmlType::TQ1_0,
        Store::TernaryF16 | Store::Hf(FloatDtype::F16) => GgmlType::F16,
        Store::Hf(FloatDtype::BF16) => GgmlType::BF16,
        Store::Hf(FloatDtype::F32) => GgmlType::F32,
        Store::HfPacked => {
            return (shape[0].div_ceil(4) * shape.get(1).copied().unwrap_or(1)) as u64;
        }
    };
    let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    ty.byte_size(&dims)
        .unwrap_or_else(|_| shape.iter().product::<usize>() as u64 * 4)
}
