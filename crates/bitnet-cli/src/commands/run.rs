//! `bitnet run`: load a model, encode the prompt, generate and stream the
//! text to stdout. Timings go to stderr, so stdout holds only the
//! generation; `--output json` prints one object instead (a stable
//! scripting interface).

use crate::commands::device::DeviceArgs;
use crate::commands::model_args::{LoadedModel, ModelArgs, SamplingArgs};
use anyhow::{Context, bail};
use bitnet_core::system;
use bitnet_inference::generate::{Session, generate, generate_on};
use bitnet_inference::text::TokenizerDecoder;
use std::io::Write;

/// Arguments of `bitnet run`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(short, long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// Prompt as token ids instead of text, e.g. `--prompt-ids 1,42,7`.
    #[arg(long = "prompt-ids", alias = "ids", value_delimiter = ',')]
    ids: Vec<u32>,
    /// Do not add the tokenizer's special tokens (BOS) to a text prompt.
    #[arg(long)]
    no_special: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// `text` streams the generation; `json` prints one object with the
    /// prompt and generated ids, text, speeds and peak memory.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let loaded = LoadedModel::load(&args.model)?;
    let LoadedModel {
        model,
        tokenizer,
        threads,
        ..
    } = &loaded;
    let prompt: Vec<u32> = match (&args.prompt, tokenizer) {
        (Some(text), Some(t)) => t.encode(text, !args.no_special)?,
        (Some(_), None) => bail!(
            "{} has no tokenizer: give the prompt as token ids with --prompt-ids",
            args.model.describe()
        ),
        (None, _) if !args.ids.is_empty() => args.ids.clone(),
        (None, _) => bail!("give a prompt with --prompt TEXT or --prompt-ids 1,2,3"),
    };
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let params = args.sampling.params(tokenizer.as_ref(), 32)?;
    let needed = prompt.len() + params.max_tokens;
    let context = model.config().max_position_embeddings;
    if prompt.len() >= context {
        bail!(
            "the prompt has {} tokens; the model's context is {context}",
            prompt.len()
        );
    }
    let json = args.output == "json";
    let mut decoder = tokenizer.as_ref().map(|t| TokenizerDecoder::new(t, true));
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let on_token = |id: u32, text: &str| {
        if json {
            return true;
        }
        let piece = if tokenizer.is_some() {
            text.to_string()
        } else {
            format!("{id} ")
        };
        match stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
        {
            Ok(()) => true,
            Err(e) => {
                write_error = Some(e);
                false
            }
        }
    };
    let decoder = decoder
        .as_mut()
        .map(|d| d as &mut dyn bitnet_inference::PieceDecoder);
    let gpu = args.device.open(model.weights(), needed.min(context));
    let device = gpu
        .as_ref()
        .map(|g| g.device_name())
        .unwrap_or_else(|| "cpu".into());
    let generation = match gpu {
        Some(mut seq) => generate_on(&mut *seq, &[], &prompt, &params, decoder, on_token)?,
        None => {
            let mut session = Session::new(model, needed.min(context));
            generate(
                model,
                &mut session,
                &prompt,
                &params,
                decoder,
                loaded.parallelism(),
                on_token,
            )?
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    let prefill = generation.prefill_time.as_secs_f64();
    let decode = generation.decode_time.as_secs_f64();
    let prefill_tps = generation.prompt_tokens_computed as f64 / prefill.max(1e-9);
    let decode_tps = generation.tokens.len().saturating_sub(1) as f64 / decode.max(1e-9);
    if json {
        let report = serde_json::json!({
            "model": args.model.describe(),
            "text": tokenizer.as_ref().map(|_| generation.text.clone()),
            "prompt_ids": prompt,
            "generated_ids": generation.tokens,
            "finish_reason": generation.finish.openai_name(),
            "prompt_tokens": prompt.len(),
            "generated_tokens": generation.tokens.len(),
            "threads": threads,
            "device": device,
            "load_seconds": loaded.load_time.as_secs_f64(),
            "prefill_seconds": prefill,
            "decode_seconds": decode,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "peak_rss_bytes": system::peak_rss_bytes(),
        });
        writeln!(stdout, "{report}")?;
        return Ok(());
    }
    writeln!(stdout)?;
    eprintln!(
        "prompt {} tokens in {:.3} s ({:.1} t/s); generated {} tokens, decode {:.1} t/s, {threads} thread{}, {device}; stopped: {:?}",
        prompt.len(),
        prefill,
        prefill_tps,
        generation.tokens.len(),
        decode_tps,
        if *threads == 1 { "" } else { "s" },
        generation.finish,
    );
    Ok(())
}
