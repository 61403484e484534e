//! `bitnet convert`: a float (or our own ternary) checkpoint to an HF
//! packed checkpoint or a GGUF file, with a progress bar and an optional
//! per-tensor quality report (table on stdout, JSON to a file).

use anyhow::{Context, bail};
use bitnet_models::convert::policy::{AutoPrecision, LinearPrecision, PrecisionPolicy};
use bitnet_models::convert::{
    CalibrationInput, ConvertOptions, ConvertReport, FloatPrecision, Method, ScaleMode, Target,
    TensorReport, convert,
};
use bitnet_models::gguf_model::GgufArch;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `bitnet convert`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Input: an HF checkpoint directory (float BitNet or Llama, or packed /
    /// online BitNet) or a GGUF file.
    input: PathBuf,
    /// Output: a directory for `hf-packed`, a file for `gguf:*`.
    output: PathBuf,
    /// Output format: hf-packed, gguf:i2_s, gguf:tq2_0 or gguf:tq1_0.
    #[arg(long)]
    to: String,
    /// Embedding storage: f32, f16, bf16, q8_0, q6_k or q4_k (the last three GGUF only).
    #[arg(long, default_value = "f16")]
    embeddings: String,
    /// Output-layer storage (as --embeddings); default: with the embeddings
    /// (a tied model stays tied).
    #[arg(long)]
    output_type: Option<String>,
    /// Ternary scales of float layers: `tensor` (the reference), `channel`
    /// (one per output row) or `group` (one per block of 256 weights in a
    /// row); the last two TQ1_0/TQ2_0 only.
    #[arg(long, default_value = "tensor", value_parser = ["tensor", "channel", "group"])]
    scales: String,
    /// Store tensors the format cannot hold (rows not a multiple of the
    /// block) as F16 instead of failing.
    #[arg(long)]
    allow_fallback: bool,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,
    /// GGUF architecture name: `native` (bitnet.cpp's) or `bitnet`
    /// (llama.cpp's, loadable by llama.cpp's tools).
    #[arg(long, default_value = "native", value_parser = ["native", "bitnet"])]
    arch: String,
    /// Accept a Llama checkpoint by inserting unit sub-norms (changes the function).
    #[arg(long)]
    insert_subln: bool,
    /// Ternarization of float layers: `absmean` (the reference) or `gptq`
    /// (second-order error compensation on the same grid; needs --calib).
    #[arg(long, default_value = "absmean", value_parser = ["absmean", "gptq"])]
    method: String,
    /// Calibration text (tokenized with the input's tokenizer): enables
    /// GPTQ and held-out output-error columns in the report.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 128)]
    calib_ctx: usize,
    /// Calibration tokens in all (a quarter of the sequences are held out).
    #[arg(long, default_value_t = 8192)]
    calib_tokens: usize,
    /// GPTQ dampening, as a fraction of the Hessian's mean diagonal (1.0:
    /// measured best for ternary grids, see README "Quality")
    #[arg(long, default_value_t = 1.0)]
    damp: f64,
    /// Also measure a rank-K f16 residual correction per layer (report
    /// only: no engine here runs it).
    #[arg(long, default_value_t = 0)]
    low_rank: usize,
    /// Mixed precision: a TOML policy mapping tensor-name patterns to
    /// ternary, int8, int4, q6_k, f16, bf16 or f32 (GGUF targets).
    #[arg(long, value_name = "FILE", conflicts_with = "budget_mib")]
    precision_policy: Option<PathBuf>,
    /// Mixed precision chosen automatically: keep the layers whose
    /// ternarization costs the most held-out output error per byte in
    /// --promote-to, while the file stays within this many MiB (needs --calib).
    #[arg(long, value_name = "MIB")]
    budget_mib: Option<f64>,
    /// What --budget-mib promotes layers to.
    #[arg(long, default_value = "int8")]
    promote_to: String,
    /// Print the per-tensor report (precision, sparsity, MSE, SQNR, cosine).
    #[arg(long)]
    report: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn precision(s: &str) -> anyhow::Result<FloatPrecision> {
    FloatPrecision::parse(s)
        .with_context(|| format!("unknown precision `{s}` (f32, f16, bf16, q8_0, q6_k, q4_k)"))
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let Some(target) = Target::parse(&args.to) else {
        bail!(
            "unknown target `{}` (hf-packed, gguf:i2_s, gguf:tq2_0, gguf:tq1_0)",
            args.to
        );
    };
    let opts = ConvertOptions {
        target,
        embeddings: precision(&args.embeddings)?,
        output: args.output_type.as_deref().map(precision).transpose()?,
        scales: match args.scales.as_str() {
            "channel" => ScaleMode::Channel,
            "group" => ScaleMode::Group,
            _ => ScaleMode::Tensor,
        },
        allow_fallback: args.allow_fallback,
        force: args.force,
        arch: match args.arch.as_str() {
            "bitnet" => GgufArch::LlamaCpp,
            _ => GgufArch::Native,
        },
        insert_subln: args.insert_subln,
        measure_floats: args.report || args.report_json.is_some(),
        method: match args.method.as_str() {
            "gptq" => Method::Gptq,
            _ => Method::Absmean,
        },
        damp: args.damp,
        calibration: args.calib.as_ref().map(|text| CalibrationInput {
            text: text.clone(),
            ctx: args.calib_ctx,
            max_tokens: args.calib_tokens,
        }),
        low_rank: args.low_rank,
        policy: args
            .precision_policy
            .as_deref()
            .map(PrecisionPolicy::from_file)
            .transpose()?,
        auto_precision: match args.budget_mib {
            Some(mib) if !(mib.is_finite() && mib > 0.0) => {
                bail!("--budget-mib must be a positive number of MiB, not {mib}")
            }
            Some(mib) => Some(AutoPrecision {
                budget_bytes: (mib * 1048576.0) as u64,
                promote_to: match LinearPrecision::parse(&args.promote_to) {
                    Some(LinearPrecision::Float(p)) => p,
                    _ => bail!(
                        "--promote-to `{}`: use int8, int4, q6_k, f16, bf16 or f32",
                        args.promote_to
                    ),
                },
            }),
            None => None,
        },
    };
    let start = Instant::now();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let report = convert(&args.input, &args.output, &opts, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(p.tensor.to_string());
    })
    .with_context(|| {
        format!(
            "converting {} to {}",
            args.input.display(),
            args.output.display()
        )
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({:.1} MB) in {:.1} s",
        args.output.display(),
        report.output_bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    if args.report {
        print!("{}", table(&report));
    }
    if let Some(path) = &args.report_json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The report as an aligned text table, with held-out output errors
/// (`out_err`: stored weights, `absmean`: the baseline, `+lowrank`: stored
/// plus the measured correction) and their means when calibrated.
fn table(r: &ConvertReport) -> String {
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |x| format!("{x:.prec$}"));
    let sci = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3e}"));
    let mut out = format!(
        "{:<28} {:>11} {:<12} {:>6} {:>10} {:>7} {:>7} {:>10} {:>10} {:>10}\n",
        "tensor",
        "shape",
        "precision",
        "zeros",
        "mse",
        "sqnr_db",
        "cosine",
        "out_err",
        "absmean",
        "+lowrank"
    );
    let sensitive = r.tensors.iter().any(|t| t.sensitivity.is_some());
    for t in &r.tensors {
        out += &format!(
            "{:<28} {:>11} {:<12} {:>6} {:>10} {:>7} {:>7} {:>10} {:>10} {:>10}{}\n",
            t.name,
            format!("{}x{}", t.shape[0], t.shape[1]),
            t.precision,
            opt(t.sparsity, 3),
            sci(t.mse),
            opt(t.sqnr_db, 2),
            opt(t.cosine, 4),
            sci(t.out_err),
            sci(t.out_err_absmean),
            sci(t.out_err_low_rank),
            t.note
                .as_deref()
                .map_or(String::new(), |n| format!("  ({n})"))
                + &if sensitive {
                    format!("  sensitivity {}", sci(t.sensitivity))
                } else {
                    String::new()
                },
        );
    }
    let mean = |f: &dyn Fn(&TensorReport) -> Option<f64>| {
        let v: Vec<f64> = r.tensors.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let Some((c, h)) = r.calibration_tokens {
        out += &format!(
            "held-out relative output error, mean over layers ({c} calibration / {h} held-out \
             tokens): stored {}, absmean {}, stored+lowrank {}\n",
            sci(mean(&|t| t.out_err)),
            sci(mean(&|t| t.out_err_absmean)),
            sci(mean(&|t| t.out_err_low_rank)),
        );
    }
    if let Some(z) = mean(&|t| t.sparsity) {
        out += &format!("mean ternary sparsity (fraction of zero codes): {z:.3}\n");
    }
    out
}
