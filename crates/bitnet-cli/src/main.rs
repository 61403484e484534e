//! The `bitnet` command: a thin layer of argument parsing and output over
//! the library crates. Each subcommand lives in its own module.

mod commands;

use clap::{Parser, Subcommand};

/// BitNet-Rust: run, quantize, train and serve 1.58-bit (ternary) models.
#[derive(Parser, Debug)]
#[command(name = "bitnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check this machine: CPU features, kernel dispatch, kernel self-tests,
    /// memory bandwidth and ternary kernel throughput.
    Doctor(commands::doctor::Args),
    /// Show what a GGUF file or HF checkpoint holds: metadata and tensors.
    Inspect(commands::inspect::Args),
    /// Prompt and generation speed the way llama-bench measures it.
    Bench(commands::bench::Args),
    /// Generate text with a model (GGUF file or HF checkpoint directory).
    Run(commands::run::Args),
    /// Chat with a model interactively (its chat template, multi-turn history).
    Chat(commands::chat::Args),
    /// Convert a float or ternary model to HF packed or GGUF (I2_S, TQ2_0,
    /// TQ1_0), with a per-tensor quality report.
    Convert(commands::convert::Args),
    /// Perplexity over a text file (and KL divergence against a base model).
    Perplexity(commands::perplexity::Args),
    /// Write a random-weight model of a real shape (HF directory or GGUF file).
    Synth(commands::synth::Args),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(commands::serve::Args),
    /// Manage tenants, API keys, usage, invoices and the audit log.
    Admin(commands::admin::Args),
    /// Measure the hosted API's per-request cost (auth, limits, metering).
    PlatformBench(commands::platform_bench::Args),
    /// Load-test a server: concurrent streaming clients, throughput,
    /// time to first token and server overhead.
    ServeBench(commands::serve_bench::Args),
    /// Show the token ids and pieces of a text under a model's tokenizer.
    Tokenize(commands::tokenize::Args),
    /// Train a BitNet model with quantization-aware training (train.toml).
    Train(commands::train::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Perplexity(args) => commands::perplexity::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Admin(args) => commands::admin::run(args),
        Command::PlatformBench(args) => commands::platform_bench::run(args),
        Command::ServeBench(args) => commands::serve_bench::run(args),
        Command::Train(args) => commands::train::run(args),
    }
}
