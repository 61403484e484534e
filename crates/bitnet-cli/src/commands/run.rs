//! `bitnet run`: load a GGUF file or HF checkpoint directory, encode the prompt with its
//! `tokenizer.json`, generate greedily and stream the text; timings go to
//! stderr so stdout holds only the generation.

use anyhow::{Context, bail};
use bitnet_core::{Parallelism, build_pool, system};
use bitnet_inference::BitNetModel;
use bitnet_inference::generate::generate_with;
use bitnet_inference::sampler::{Sampler, SamplerParams};
use bitnet_models::tokenizer::TextTokenizer;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `bitnet run`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// A BitNet GGUF file, or an HF checkpoint directory (`config.json`,
    /// `model.safetensors` or a sharded index). Text prompts need a
    /// `tokenizer.json` in that directory (beside the GGUF file).
    #[arg(short, long)]
    model: PathBuf,
    /// Prompt text.
    #[arg(short, long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// Prompt as token ids instead of text, e.g. `--prompt-ids 1,42,7`.
    #[arg(long = "prompt-ids", alias = "ids", value_delimiter = ',')]
    ids: Vec<u32>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long, default_value_t = 32)]
    max_tokens: usize,
    /// Threads (default: all logical CPUs).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `text` streams the generation; `json` prints one object with the
    /// tokens, text, speeds and peak memory.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(system::logical_cpus);
    let pool =
        build_pool(threads).with_context(|| format!("building a pool of {threads} threads"))?;
    let par = Parallelism::Pool(&pool);

    let start = Instant::now();
    let model = BitNetModel::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tok_dir = if args.model.is_file() {
        args.model.parent().map(PathBuf::from).unwrap_or_default()
    } else {
        args.model.clone()
    };
    let tok_path = tok_dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(TextTokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    eprintln!(
        "loaded {} in {:.2} s",
        args.model.display(),
        start.elapsed().as_secs_f64()
    );

    let prompt: Vec<u32> = match (&args.prompt, &tokenizer) {
        (Some(text), Some(t)) => t.encode(text, true)?,
        (Some(_), None) => bail!(
            "{} has no tokenizer.json: give the prompt as token ids with --prompt-ids",
            tok_dir.display()
        ),
        (None, _) if !args.ids.is_empty() => args.ids.clone(),
        (None, _) => bail!("give a prompt with --prompt TEXT or --prompt-ids 1,2,3"),
    };
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }

    let mut cache = model.new_cache(prompt.len() + args.max_tokens);
    let mut generated = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    let started = Instant::now();
    let mut first_token_at = None;
    let mut write_error = None;
    let json = args.output == "json";
    let mut sampler = Sampler::new(SamplerParams {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    });
    let out = generate_with(
        &model,
        &prompt,
        args.max_tokens,
        &mut cache,
        par,
        &mut sampler,
        |id| {
            first_token_at.get_or_insert_with(Instant::now);
            generated.push(id);
            if json {
                return true;
            }
            let piece = match &tokenizer {
                // Decode everything so far: a token may end mid UTF-8 sequence.
                Some(t) => match t.decode(&generated, true) {
                    Ok(text) if text.len() > printed && text.is_char_boundary(printed) => {
                        let piece = text[printed..].to_string();
                        printed = text.len();
                        piece
                    }
                    _ => String::new(),
                },
                None => format!("{id} "),
            };
            if let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
            {
                write_error = Some(e);
                return false;
            }
            true
        },
    )?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    let first = first_token_at.unwrap_or(started);
    let prefill = first.duration_since(started).as_secs_f64();
    let decode = first.elapsed().as_secs_f64();
    let prefill_tps = prompt.len() as f64 / prefill.max(1e-9);
    let decode_tps = (out.len().saturating_sub(1)) as f64 / decode.max(1e-9);
    if json {
        let text = match &tokenizer {
            Some(t) => Some(t.decode(&out, true)?),
            None => None,
        };
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "prompt_tokens": prompt.len(),
            "generated_tokens": out.len(),
            "tokens": out,
            "text": text,
            "threads": threads,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "peak_rss_bytes": system::peak_rss_bytes(),
        });
        writeln!(stdout, "{report}")?;
        return Ok(());
    }
    writeln!(stdout)?;
    eprintln!(
        "prompt {} tokens in {:.3} s ({:.1} t/s); generated {} tokens, decode {:.1} t/s, {threads} thread{}",
        prompt.len(),
        prefill,
        prefill_tps,
        out.len(),
        decode_tps,
        if threads == 1 { "" } else { "s" }
    );
    Ok(())
}
