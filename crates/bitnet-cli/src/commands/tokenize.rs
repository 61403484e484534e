//! `bitnet tokenize`: the token ids and pieces a model's tokenizer gives
//! for a text, as lines or one JSON object.

use anyhow::Context;
use bitnet_models::tokenizer::TextTokenizer;
use std::path::PathBuf;

/// Arguments of `bitnet tokenize`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// An HF model directory (`tokenizer.json`, optional
    /// `tokenizer_config.json`), a `tokenizer.json` file, or a GGUF file
    /// (its metadata's tokenizer, else the `tokenizer.json` beside it).
    #[arg(short, long)]
    model: PathBuf,
    /// The text to tokenize.
    text: String,
    /// Do not add special tokens (the BOS the tokenizer would prepend).
    #[arg(long)]
    no_special: bool,
    /// `text` prints one `id<TAB>piece` line per token (pieces quoted and
    /// escaped); `json` prints `{"ids": [...], "pieces": [...], "text": ...}`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let tok = TextTokenizer::for_model(&args.model)
        .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?;
    let ids = tok.encode(&args.text, !args.no_special)?;
    let pieces = ids
        .iter()
        .map(|&id| tok.token_to_piece(id))
        .collect::<Result<Vec<_>, _>>()?;
    if args.output == "json" {
        let report = serde_json::json!({"ids": ids, "pieces": pieces, "text": args.text});
        println!("{report}");
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id}\t{piece:?}");
        }
    }
    Ok(())
}
