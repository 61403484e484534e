//! `bitnet train --config train.toml`: quantization-aware training with a
//! progress bar (loss, tokens/s, ETA), metrics JSONL and `loss.svg` beside
//! the checkpoints, then an export of the trained model (HF packed with the
//! tokenizer, optionally GGUF). The loop itself is `bitnet_training::Trainer`.

use anyhow::{Context, bail};
use bitnet_core::Parallelism;
use bitnet_models::gguf_model::TernaryType;
use bitnet_models::hf_export::FloatDtype;
use bitnet_training::{StopReason, TrainConfig, Trainer, export};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `bitnet train`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The training config (TOML; see the README's training section).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Override `train.steps`.
    #[arg(long)]
    steps: Option<u64>,
    /// Override `train.out_dir`.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Override `train.threads`.
    #[arg(long)]
    threads: Option<usize>,
    /// Override `optim.lr`.
    #[arg(long)]
    lr: Option<f32>,
    /// Also export GGUF: `i2_s` or `tq2_0` (next to the HF export).
    #[arg(long, value_parser = ["i2_s", "tq2_0"])]
    gguf: Option<String>,
    /// Store embeddings and norms of the HF export in bf16 (half the size).
    #[arg(long)]
    bf16: bool,
    /// Prompt for a short greedy sample from the trained model.
    #[arg(long, default_value = "The")]
    sample_prompt: String,
}

/// Keeps freed training buffers in the heap. Every step frees and
/// reallocates the same activation and gradient buffers (megabytes each);
/// glibc by default maps the larger ones fresh each time and trims the heap
/// top after frees, so each step page-faults its memory in again. Mapping
/// only above 32 MiB (glibc's ceiling for the dynamic threshold) and never
/// trimming took the process's system time from 8.1 s to 1.3 s, with the
/// same peak RSS (`tools/bench_training.py`, README "Training").
///
/// One arena: a step's shards allocate on every pool thread, and glibc's
/// per-thread arenas live in mapped heaps that it shrinks (and the next
/// step faults back in) whatever the trim threshold. On the bench config
/// (`/usr/bin/time bitnet train`, 25 steps, the arena count set through
/// `GLIBC_TUNABLES=glibc.malloc.arena_max=1` before this call existed)
/// system time went from 2.8-5.0 s to 1.7 s and peak RSS from 880-980 MB
/// to 736 MB; two threads rarely allocate at the same moment, so the
/// shared lock is not contended.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before the
    // training threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    keep_freed_memory();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let mut cfg: TrainConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    // Relative paths in the file are relative to the file.
    let base = args.config.parent().map(PathBuf::from).unwrap_or_default();
    let rel = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    cfg.data.files.iter_mut().for_each(rel);
    rel(&mut cfg.data.tokenizer);
    rel(&mut cfg.train.out_dir);
    cfg.model.config.iter_mut().for_each(rel);
    cfg.model.init_from.iter_mut().for_each(rel);
    if let Some(d) = cfg.distill.as_mut() {
        rel(&mut d.teacher);
    }
    if let Some(s) = args.steps {
        cfg.train.steps = s;
    }
    if let Some(o) = args.out_dir {
        cfg.train.out_dir = o;
    }
    if let Some(t) = args.threads {
        cfg.train.threads = t;
    }
    if let Some(lr) = args.lr {
        cfg.optim.lr = lr;
    }
    let out_dir = cfg.train.out_dir.clone();
    let total = cfg.train.steps;

    let mut trainer = Trainer::new(cfg, args.resume)?;
    let m = trainer.model();
    let c = m.config();
    eprintln!(
        "model: {:.2}M parameters (hidden {}, {} layers, {} heads, vocab {}), {}",
        m.num_params() as f64 / 1e6,
        c.hidden_size,
        c.num_layers,
        c.num_heads,
        c.vocab_size,
        if m.quantized() {
            "ternary QAT"
        } else {
            "float"
        }
    );
    let d = trainer.dataset();
    eprintln!(
        "data: {} training / {} validation sequences of {} tokens",
        d.train_len(),
        d.val().len(),
        d.seq_len()
    );
    if !d.val().is_empty() {
        eprintln!(
            "unigram baseline on the validation split: {:.3} nats/token",
            d.unigram_baseline(c.vocab_size)
        );
    }
    if trainer.step() > 0 {
        eprintln!("resumed at step {}", trainer.step());
    }
    let bar = ProgressBar::new(total);
    bar.set_position(trainer.step());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let start_step = trainer.step();
    let mut last_val = None;
    let reason = trainer.run(&mut |s| {
        if let Some(v) = s.val_loss {
            last_val = Some(v);
        }
        let val = last_val.map(|v| format!(" val {v:.3}")).unwrap_or_default();
        bar.set_message(format!(
            "loss {:.3}{val} lr {:.2e} {:.0} tok/s",
            s.loss, s.lr, s.tokens_per_s
        ));
        bar.set_position(s.step);
    });
    bar.finish();
    let reason = reason?;
    let secs = start.elapsed().as_secs_f64();
    let steps_run = trainer.step() - start_step;
    let c = trainer.config();
    let tokens =
        steps_run as f64 * (c.train.batch_size * c.train.grad_accum * c.data.seq_len) as f64;
    eprintln!(
        "{} after {} steps: {:.0} tokens in {:.1} s ({:.0} tokens/s)",
        match reason {
            StopReason::Finished => "finished",
            StopReason::EarlyStopped => "early-stopped (validation loss plateau)",
        },
        trainer.step(),
        tokens,
        secs,
        tokens / secs.max(1e-9)
    );
    eprintln!(
        "metrics: {}, curve: {}",
        out_dir.join("metrics.jsonl").display(),
        out_dir.join("loss.svg").display()
    );
    if let Some(p) = trainer.last_checkpoint() {
        eprintln!("checkpoint: {}", p.display());
    }

    let model = trainer.model();
    if !model.quantized() {
        let dir = out_dir.join("latent");
        trainer.save_latent(&dir)?;
        eprintln!("float model written to {}", dir.display());
        return Ok(());
    }
    let hf = out_dir.join("export");
    let tok_path = &trainer.config().data.tokenizer;
    let tok_file = if tok_path.is_dir() {
        tok_path.join("tokenizer.json")
    } else {
        tok_path.clone()
    };
    let dtype = if args.bf16 {
        FloatDtype::BF16
    } else {
        FloatDtype::F32
    };
    export::export_hf(model, &hf, dtype, Some(&tok_file))?;
    eprintln!("HF packed export: {}", hf.display());
    if let Some(g) = args.gguf {
        let ty = match g.as_str() {
            "tq2_0" => TernaryType::Tq2_0,
            "i2_s" => TernaryType::I2S,
            other => bail!("unknown GGUF type {other}"),
        };
        let path = out_dir.join(format!("model-{g}.gguf"));
        export::export_gguf(model, &path, ty)?;
        eprintln!("GGUF export: {}", path.display());
    }
    // A short greedy sample from the trainer's own eval forward.
    let tok = trainer.tokenizer();
    let mut ids = tok.encode(&args.sample_prompt, false)?;
    let max = model.config().max_position_embeddings.min(ids.len() + 32);
    while ids.len() < max {
        let logits = model.eval_logits(&ids, Parallelism::Sequential)?;
        let v = model.config().vocab_size;
        let last = &logits[logits.len() - v..];
        let next = last
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0 as u32;
        ids.push(next);
    }
    eprintln!("sample: {}", tok.decode(&ids, true)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_train_toml_parses_and_typos_are_refused() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/bitnet-kjv-5m/train.toml"
        );
        let cfg: TrainConfig = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.model.num_layers, 6);
        assert_eq!(cfg.data.seq_len, 128);
        assert!(matches!(
            cfg.schedule,
            bitnet_training::LrSchedule::TwoStage { warmup: 30, .. }
        ));
        assert!(toml::from_str::<TrainConfig>("[train]\nstepz = 3\n").is_err());
        let sgd: TrainConfig =
            toml::from_str("[optim]\nkind = \"sgd\"\nmomentum = 0.9\nnesterov = true\n").unwrap();
        assert_eq!(
            sgd.optim.optimizer.kind,
            bitnet_training::OptimizerKind::Sgd
        );
    }
}
