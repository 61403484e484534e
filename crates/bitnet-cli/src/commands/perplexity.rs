//! `bitnet perplexity`: perplexity of a model over a text file, with
//! llama.cpp's chunking, optionally saving the log-probabilities or
//! comparing them with a base model's (KL divergence).

use crate::commands::model_args::{LoadedModel, ModelArgs};
use anyhow::{Context, bail};
use bitnet_inference::perplexity::{Chunking, LogProbsReader, LogProbsWriter, perplexity};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Arguments of `bitnet perplexity`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file to score.
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Tokens per chunk (each chunk scores its second half).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Save every scored log-probability row here, for a later `--kl-base`.
    #[arg(long)]
    save_logits: Option<PathBuf>,
    /// A file saved by `--save-logits` from a base model over the same
    /// text: report KL(base || this model) and top-1 agreement.
    #[arg(long, conflicts_with = "save_logits")]
    kl_base: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let loaded = LoadedModel::load(&args.model)?;
    let Some(tokenizer) = &loaded.tokenizer else {
        bail!(
            "{} has no tokenizer, so the text cannot be tokenized",
            args.model.describe()
        );
    };
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let tokens = tokenizer.encode(&text, false)?;
    let ctx = args.ctx.min(loaded.model.config().max_position_embeddings);
    let mut chunking = Chunking::new(tokens.len(), ctx)?;
    if let Some(n) = args.chunks {
        chunking.chunks = chunking.chunks.min(n.max(1));
    }
    let vocab = loaded.model.config().vocab_size;
    let mut writer = match &args.save_logits {
        Some(p) => Some(LogProbsWriter::create(p, &tokens, chunking, vocab)?),
        None => None,
    };
    let mut base = match &args.kl_base {
        Some(p) => Some(LogProbsReader::open(p)?),
        None => None,
    };
    let bar = ProgressBar::new(chunking.chunks as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} chunks {msg} [{elapsed} < {eta}]")
            .expect("static template"),
    );
    let scores = perplexity(
        &loaded.model,
        &tokens,
        chunking,
        loaded.model.config().bos_token_id,
        loaded.parallelism(),
        writer.as_mut(),
        base.as_mut(),
        |done, _, s| {
            bar.set_position(done as u64);
            bar.set_message(format!("ppl {:.4}", s.perplexity()));
        },
    )?;
    bar.finish_and_clear();
    let n = scores.count as f64;
    let kl = scores.kl.as_ref().map(|k| {
        let mean = k.sum / n;
        let se = ((k.sum2 / n - mean * mean).max(0.0) / (n - 1.0).max(1.0)).sqrt();
        (mean, se, k.max, k.same_top as f64 / n)
    });
    if args.output == "json" {
        let mut v = serde_json::json!({
            "model": args.model.describe(),
            "file": args.file.display().to_string(),
            "tokens": tokens.len(),
            "ctx": chunking.ctx,
            "chunks": chunking.chunks,
            "scored_tokens": scores.count,
            "perplexity": scores.perplexity(),
            "perplexity_stderr": scores.perplexity_error(),
            "mean_nll": scores.nll / n,
        });
        if let Some((mean, se, max, same)) = kl {
            v["kl_divergence"] = serde_json::json!({
                "mean": mean, "stderr": se, "max": max, "same_top_token": same,
            });
        }
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} ± {:.4} over {} tokens ({} chunks of {})",
            scores.perplexity(),
            scores.perplexity_error(),
            scores.count,
            chunking.chunks,
            chunking.ctx
        );
        if let Some((mean, se, max, same)) = kl {
            println!(
                "KL divergence {mean:.6} ± {se:.6} (max {max:.6}); same top token {:.2}%",
                same * 100.0
            );
        }
        if let Some(p) = &args.save_logits {
            println!("log-probabilities saved to {}", p.display());
        }
    }
    Ok(())
}
