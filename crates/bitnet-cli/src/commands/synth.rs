//! `bitnet synth`: write a random-weight BitNet model of a real shape (HF
//! checkpoint directory or GGUF file), for tests and benchmarks when no
//! checkpoint is at hand.

use anyhow::{Context, bail};
use bitnet_models::gguf_model::{GgufArch, TernaryType};
use bitnet_models::hf_export::FloatDtype;
use bitnet_models::synth::{Preset, synthesize};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `bitnet synth`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Model shape: tiny, 125m, 700m or 2b4t.
    #[arg(long)]
    preset: String,
    /// `hf` (a directory), `hf-float` / `hf-float:f16` / `hf-float:f32`
    /// (a float checkpoint, bf16 by default, the input of `bitnet convert`),
    /// or `gguf`, `gguf:i2_s`, `gguf:tq2_0`, `gguf:tq1_0` (a file).
    #[arg(long, default_value = "hf")]
    format: String,
    /// Output directory (hf) or file (gguf).
    #[arg(long)]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// GGUF architecture name: `native` (bitnet.cpp's: `bitnet-b1.58` for
    /// ReLU² models) or `bitnet` (llama.cpp's, with no vocabulary, so that
    /// llama.cpp's tools load the file too).
    #[arg(long, default_value = "native", value_parser = ["native", "bitnet"])]
    arch: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let preset = Preset::parse(&args.preset)
        .with_context(|| format!("unknown preset `{}` (tiny, 125m, 700m, 2b4t)", args.preset))?;
    if let Some(dtype) = match args.format.as_str() {
        "hf-float" | "hf-float:bf16" => Some(FloatDtype::BF16),
        "hf-float:f16" => Some(FloatDtype::F16),
        "hf-float:f32" => Some(FloatDtype::F32),
        _ => None,
    } {
        let start = Instant::now();
        eprintln!(
            "writing float {} to {} ...",
            args.preset,
            args.out.display()
        );
        bitnet_models::synth::write_float_hf(preset, args.seed, &args.out, dtype, false)?;
        eprintln!("done in {:.1} s", start.elapsed().as_secs_f64());
        return Ok(());
    }
    let ternary = match args.format.as_str() {
        "hf" => None,
        "gguf" | "gguf:i2_s" => Some(TernaryType::I2S),
        "gguf:tq2_0" => Some(TernaryType::Tq2_0),
        "gguf:tq1_0" => Some(TernaryType::Tq1_0),
        other => bail!(
            "unknown format `{other}` (hf, hf-float[:f16|:f32], gguf, gguf:i2_s, gguf:tq2_0, gguf:tq1_0)"
        ),
    };
    let start = Instant::now();
    eprintln!("synthesizing {} (seed {}) ...", args.preset, args.seed);
    let weights = synthesize(preset, args.seed)?;
    eprintln!("writing {} ...", args.out.display());
    match ternary {
        None => weights.write_hf(&args.out, FloatDtype::BF16)?,
        Some(t) => {
            let arch = match args.arch.as_str() {
                "bitnet" => GgufArch::LlamaCpp,
                _ => GgufArch::Native,
            };
            weights.write_gguf_as(&args.out, t, arch)?
        }
    }
    eprintln!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
