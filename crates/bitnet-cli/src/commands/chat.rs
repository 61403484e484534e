//! `bitnet chat`: an interactive conversation. Each turn renders the whole
//! history through the model's chat template (or the built-in Llama-3
//! one); the session keeps the cache of the previous turns, so only the
//! new text runs. `/reset` starts over, `/exit` (or end of input) quits.

use crate::commands::model_args::{LoadedModel, ModelArgs, SamplingArgs};
use anyhow::{Context, bail};
use bitnet_inference::PieceDecoder;
use bitnet_inference::generate::{Session, generate};
use bitnet_inference::text::TokenizerDecoder;
use bitnet_models::chat::ChatMessage;
use std::io::{BufRead, IsTerminal, Write};

/// Arguments of `bitnet chat`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let loaded = LoadedModel::load(&args.model)?;
    let Some(tokenizer) = &loaded.tokenizer else {
        bail!(
            "{} has no tokenizer; chat needs one (tokenizer.json, or GGUF tokenizer metadata)",
            args.model.describe()
        );
    };
    let template = tokenizer.chat_template_or_default()?;
    let bos = tokenizer.bos_token().unwrap_or_default();
    let eos = tokenizer.eos_token().unwrap_or_default();
    let mut params = args.sampling.params(Some(tokenizer), 512)?;
    let max_tokens = params.max_tokens;
    let model = &loaded.model;
    let context = model.config().max_position_embeddings;
    let mut session = Session::new(model, context);
    let system: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect();
    let mut history = system.clone();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chatting with {} — /reset starts over, /exit quits",
            args.model.describe()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut stdout = std::io::stdout().lock();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading the conversation from stdin")?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clone_from(&system);
                session.reset();
                eprintln!("[conversation reset]");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", input));
        // Render; drop the oldest turns while the prompt and the answer do
        // not fit the context.
        let prompt = loop {
            let text = template.render(&history, true, &bos, &eos)?;
            let ids = tokenizer.encode(&text, false)?;
            if ids.len() + max_tokens.min(context / 2) < context
                || history.len() <= system.len() + 1
            {
                break ids;
            }
            history.remove(system.len());
        };
        if prompt.len() >= context {
            eprintln!(
                "[this message alone is {} tokens; the context is {context}]",
                prompt.len()
            );
            history.pop();
            continue;
        }
        params.max_tokens = max_tokens.min(context - prompt.len());
        let mut decoder = TokenizerDecoder::new(tokenizer, true);
        let mut write_error = None;
        let out = generate(
            model,
            &mut session,
            &prompt,
            &params,
            Some(&mut decoder as &mut dyn PieceDecoder),
            loaded.parallelism(),
            |_, text| match stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
            {
                Ok(()) => true,
                Err(e) => {
                    write_error = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = write_error {
            return Err(e).context("writing to stdout");
        }
        writeln!(stdout)?;
        eprintln!(
            "[{} prompt tokens, {} cached; {} generated at {:.1} t/s; {}]",
            prompt.len(),
            prompt.len() - out.prompt_tokens_computed,
            out.tokens.len(),
            out.tokens.len().saturating_sub(1) as f64 / out.decode_time.as_secs_f64().max(1e-9),
            out.finish.openai_name()
        );
        history.push(ChatMessage::new("assistant", out.text.trim()));
    }
    Ok(())
}
