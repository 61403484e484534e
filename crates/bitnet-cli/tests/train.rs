//! `bitnet train` end to end: a run's outputs, and a run killed twice (once
//! with SIGKILL mid-training, once by the kernel in the middle of writing a
//! checkpoint) that resumes to the same loss sequence as an uninterrupted
//! run, bit for bit.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: &str = "300";

/// A training config for a tiny model over a small corpus in `dir`.
fn setup(dir: &Path) -> PathBuf {
    let text = "In the beginning the quick brown fox jumped over the lazy dog, and the dog \
        slept while the fox ran into the green wood. The wood was dark and the river was cold. ";
    std::fs::write(dir.join("corpus.txt"), text.repeat(12)).unwrap();
    std::fs::copy(
        common::tiny("online").join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        r#"
[model]
hidden_size = 64
intermediate_size = 64
num_layers = 1
num_heads = 4
num_kv_heads = 2
max_position_embeddings = 64
init_std = 0.05

[data]
files = ["corpus.txt"]
tokenizer = "tokenizer.json"
seq_len = 16
val_fraction = 0.1

[optim]
kind = "adamw"
lr = 3e-3

[train]
batch_size = 2
grad_accum = 2
eval_every = 10
eval_sequences = 4
checkpoint_every = 10
keep_last = 2
threads = 1
seed = 1
"#,
    )
    .unwrap();
    config
}

fn train(config: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    c.args(["train", "--config"])
        .arg(config)
        .arg("--out-dir")
        .arg(out)
        .args(["--steps", STEPS])
        .env("RUST_BACKTRACE", "0");
    if resume {
        c.arg("--resume");
    }
    c
}

/// (step, loss, val_loss) of every line of `out/metrics.jsonl`, as written.
fn losses(out: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].to_string(),
                v["loss"].to_string(),
                v["val_loss"].to_string(),
            )
        })
        .collect()
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    v.sort();
    v
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_loss_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());

    // Uninterrupted, with its outputs.
    let a = dir.path().join("a");
    let o = train(&config, &a, false).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let want = losses(&a);
    assert_eq!(want.len(), 300);
    assert_eq!(want.last().unwrap().0, "300");
    assert!(stderr.contains("HF packed export"), "{stderr}");
    let svg = std::fs::read_to_string(a.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg"), "a picture");
    assert_eq!(checkpoints(&a).len(), 2, "keep_last = 2");
    let (ok, _, err) = common::bitnet(&[
        "run",
        "-m",
        a.join("export").to_str().unwrap(),
        "-p",
        "The",
        "-n",
        "3",
    ]);
    assert!(ok, "the export runs: {err}");

    // SIGKILL once a few checkpoints exist.
    let b = dir.path().join("b");
    let mut child = train(&config, &b, false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(b.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= 45 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = checkpoints(&b);
    assert!(!kept.is_empty() && kept.len() <= 2, "{kept:?}");

    // Killed by the kernel while writing the next checkpoint: a file size
    // limit below a checkpoint's size, with SIGXFSZ's default action.
    let size = std::fs::metadata(b.join(&kept[kept.len() - 1]))
        .unwrap()
        .len();
    let mut resumed = train(&config, &b, true);
    let program = resumed.get_program().to_owned();
    let args: Vec<_> = resumed.get_args().map(|a| a.to_owned()).collect();
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f {}; exec \"$0\" \"$@\"", size / 1024))
        .arg(program)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(o.status.code().is_none(), "killed mid-save: {o:?}");
    let after = checkpoints(&b);
    assert_eq!(after, kept, "complete checkpoints are untouched");
    let partial = std::fs::read_dir(&b)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with(".ckpt-") && n.ends_with(".tmp")
        })
        .count();
    assert_eq!(partial, 1, "the interrupted save left only its temporary");

    // Resume: the same losses as the uninterrupted run, every step.
    let o = resumed.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&b), want);
    assert_eq!(checkpoints(&b), checkpoints(&a));
}
