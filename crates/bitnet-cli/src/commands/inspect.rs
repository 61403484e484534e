//! `bitnet inspect PATH`: what a model file holds, without loading the
//! weights. For a GGUF file: version, alignment, dialect, architecture, the
//! metadata (arrays summarized by element type and length), the tensor table
//! (name, type, dims, bytes) and totals per type. For an HF checkpoint
//! directory: the `config.json` summary, the linear-layer variant, and the
//! tensors (name, dtype, shape, bytes) from the safetensors headers.
//! `--output json` prints one JSON object instead of text.

use anyhow::Context;
use bitnet_models::config::BitNetConfig;
use bitnet_models::gguf::{Dialect, GgufFile, MetadataArray, MetadataValue};
use bitnet_models::safetensors::SafetensorsCheckpoint;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `bitnet inspect`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// A GGUF file, or an HF checkpoint directory (`config.json` and
    /// `model.safetensors` or its shard index).
    path: PathBuf,
    /// `text` for people, `json` for scripts.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

/// Strings longer than this are cut in the text output.
const MAX_STRING: usize = 80;

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let report = if args.path.is_dir() {
        hf_report(&args.path)?
    } else {
        gguf_report(&args.path)?
    };
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// One row of the per-type totals.
#[derive(Default)]
struct Total {
    tensors: u64,
    elements: u64,
    bytes: u64,
}

fn totals_json(totals: BTreeMap<String, Total>) -> Value {
    Value::Array(
        totals
            .into_iter()
            .map(|(ty, t)| {
                json!({"type": ty, "tensors": t.tensors, "elements": t.elements, "bytes": t.bytes})
            })
            .collect(),
    )
}

/// An f32 as the f64 with the same shortest decimal form (`1e-5`, not
/// `9.999999747378752e-6`); `None` (JSON null) for NaN and infinities.
fn f32_json(x: f32) -> Option<f64> {
    x.to_string().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn array_summary(a: &MetadataArray) -> Value {
    json!({"array": format!("{:?}", a.element_type()), "len": a.len()})
}

fn metadata_json(v: &MetadataValue) -> Value {
    use MetadataValue as V;
    match v {
        V::U8(x) => json!(x),
        V::I8(x) => json!(x),
        V::U16(x) => json!(x),
        V::I16(x) => json!(x),
        V::U32(x) => json!(x),
        V::I32(x) => json!(x),
        V::U64(x) => json!(x),
        V::I64(x) => json!(x),
        V::F32(x) => json!(f32_json(*x)),
        V::F64(x) => json!(x),
        V::Bool(x) => json!(x),
        V::String(s) => json!(s),
        V::Array(a) => array_summary(a),
    }
}

fn gguf_report(path: &Path) -> anyhow::Result<Value> {
    let file = GgufFile::open(path)?;
    let c = file.content();
    let metadata: serde_json::Map<String, Value> = c
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), metadata_json(v)))
        .collect();
    let mut totals: BTreeMap<String, Total> = BTreeMap::new();
    let tensors: Vec<Value> = c
        .tensors()
        .iter()
        .map(|t| {
            let ty = t.ggml_type().name();
            let e = totals.entry(ty.to_string()).or_default();
            e.tensors += 1;
            e.elements += t.element_count();
            e.bytes += t.size_bytes();
            json!({"name": t.name(), "type": ty, "dims": t.dims(), "bytes": t.size_bytes()})
        })
        .collect();
    let total_bytes: u64 = totals.values().map(|t| t.bytes).sum();
    Ok(json!({
        "format": "gguf",
        "path": path.display().to_string(),
        "version": c.version(),
        "alignment": c.alignment(),
        "dialect": match c.dialect() {
            Dialect::Upstream => "llama.cpp",
            Dialect::BitnetCpp => "bitnet.cpp",
        },
        "architecture": c.metadata().get_str("general.architecture").ok(),
        "metadata": metadata,
        "tensors": tensors,
        "totals": totals_json(totals),
        "total_bytes": total_bytes,
    }))
}

fn hf_report(dir: &Path) -> anyhow::Result<Value> {
    let config_path = dir.join("config.json");
    let config = match BitNetConfig::from_file(&config_path) {
        Ok(c) => json!({
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_layers": c.num_layers,
            "num_heads": c.num_heads,
            "num_kv_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "activation": format!("{:?}", c.activation),
            "rms_norm_eps": f32_json(c.rms_norm_eps),
            "rope_theta": f32_json(c.rope_theta),
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "bos_token_id": c.bos_token_id,
            "eos_token_ids": c.eos_token_ids,
            "variant": format!("{:?}", c.linear),
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    let ckpt = SafetensorsCheckpoint::open_dir(dir)
        .with_context(|| format!("{}: reading the safetensors headers", dir.display()))?;
    let mut totals: BTreeMap<String, Total> = BTreeMap::new();
    let mut tensors = Vec::new();
    for name in ckpt.names() {
        let t = ckpt.raw(name)?;
        let dtype = format!("{:?}", t.dtype);
        let e = totals.entry(dtype.clone()).or_default();
        e.tensors += 1;
        e.elements += t.shape.iter().map(|&d| d as u64).product::<u64>();
        e.bytes += t.data.len() as u64;
        tensors
            .push(json!({"name": name, "dtype": dtype, "shape": t.shape, "bytes": t.data.len()}));
    }
    let total_bytes: u64 = totals.values().map(|t| t.bytes).sum();
    Ok(json!({
        "format": "hf",
        "path": dir.display().to_string(),
        "config": config,
        "tensors": tensors,
        "totals": totals_json(totals),
        "total_bytes": total_bytes,
    }))
}

/// A JSON value on one line, strings cut to [`MAX_STRING`] characters and
/// array summaries as `[Type; len]`.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > MAX_STRING => {
            format!("{:?}...", s.chars().take(MAX_STRING).collect::<String>())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Object(o) if o.contains_key("array") => {
            format!("[{}; {}]", o["array"].as_str().unwrap_or("?"), o["len"])
        }
        other => other.to_string(),
    }
}

/// A JSON number for a padded column.
fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn print_text(r: &Value) {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    let empty = Vec::new();
    if s("format") == "gguf" {
        println!("{}: GGUF version {}", s("path"), r["version"]);
        println!(
            "architecture {}, dialect {}, alignment {}",
            short(&r["architecture"]),
            s("dialect"),
            r["alignment"]
        );
        println!("\nmetadata:");
        for (k, v) in r["metadata"].as_object().into_iter().flatten() {
            println!("  {k} = {}", short(v));
        }
    } else {
        println!("{}: HF checkpoint", s("path"));
        println!("\nconfig.json:");
        for (k, v) in r["config"].as_object().into_iter().flatten() {
            println!("  {k} = {}", short(v));
        }
    }
    let tensors = r["tensors"].as_array().unwrap_or(&empty);
    let width = tensors
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(4)
        .max(4);
    let (ty_key, dims_key) = if s("format") == "gguf" {
        ("type", "dims")
    } else {
        ("dtype", "shape")
    };
    println!("\n{} tensors:", tensors.len());
    println!(
        "  {:width$}  {:7}  {:20}  {:>12}",
        "name", ty_key, dims_key, "bytes"
    );
    for t in tensors {
        println!(
            "  {:width$}  {:7}  {:20}  {:>12}",
            t["name"].as_str().unwrap_or(""),
            t[ty_key].as_str().unwrap_or(""),
            t[dims_key].to_string(),
            num(&t["bytes"])
        );
    }
    println!("\ntotals:");
    for t in r["totals"].as_array().unwrap_or(&empty) {
        println!(
            "  {:7}  {:>5} tensors  {:>12} elements  {:>12} bytes",
            t["type"].as_str().unwrap_or(""),
            num(&t["tensors"]),
            num(&t["elements"]),
            num(&t["bytes"])
        );
    }
    println!(
        "  {:7}  {:>5}          {:>12}           {:>12} bytes",
        "all",
        "",
        "",
        num(&r["total_bytes"])
    );
}
