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
    /// Generate text with a model (HF checkpoint directory), greedily.
    Run(commands::run::Args),
    /// Write a random-weight model of a real shape (HF directory or GGUF file).
    Synth(commands::synth::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Synth(args) => commands::synth::run(args),
    }
}
