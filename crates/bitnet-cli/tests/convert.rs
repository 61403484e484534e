//! `bitnet convert` when the disk fills up or the process dies mid-write.
//!
//! A full disk is simulated with the file size limit (`ulimit -f`): past it,
//! `write` fails with `EFBIG` when `SIGXFSZ` is ignored, exactly where a
//! full disk gives `ENOSPC`; with the signal's default action the kernel
//! kills the process in the middle of a write, like a crash or `kill -9`.
#![cfg(target_os = "linux")]

mod common;

use common::tiny;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `bitnet args...` with a file size limit of `blocks` 512-byte
/// blocks, `SIGXFSZ` ignored when `ignore_signal`.
fn bitnet_limited(blocks: u32, ignore_signal: bool, args: &[&str]) -> Output {
    let trap = if ignore_signal { "trap '' XFSZ; " } else { "" };
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f {blocks}; {trap}exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run sh")
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_full_disk_leaves_no_file_under_the_final_name_and_no_temporary() {
    let input = tiny("float");
    let input = input.to_str().unwrap();
    for target in ["gguf:i2_s", "hf-packed"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let out_s = out.to_str().unwrap();
        let o = bitnet_limited(16, true, &["convert", input, out_s, "--to", target, "-q"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{target}: must fail past 8 KiB");
        assert!(stderr.contains("File too large"), "{target}: {stderr}");
        assert!(
            stderr.contains(out_s),
            "{target}: names the output: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{target}: {stderr}");
        assert!(
            names(dir.path()).is_empty(),
            "{target}: left {:?}",
            names(dir.path())
        );

        // Without the limit the same conversion succeeds: the limit, not
        // the input, made it fail.
        let (ok, _, err) = common::bitnet(&["convert", input, out_s, "--to", target, "-q"]);
        assert!(ok, "{target}: {err}");
    }
}

#[test]
fn a_failed_or_killed_rewrite_keeps_the_previous_file_intact() {
    let input = tiny("float");
    let input = input.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let out_s = out.to_str().unwrap();
    let (ok, _, err) = common::bitnet(&["convert", input, out_s, "--to", "gguf:i2_s", "-q"]);
    assert!(ok, "{err}");
    let before = std::fs::read(&out).unwrap();

    let args = [
        "convert",
        input,
        out_s,
        "--to",
        "gguf:tq1_0",
        "--allow-fallback",
        "--force",
        "-q",
    ];
    // A write error: the old file stays, nothing else is left.
    let o = bitnet_limited(16, true, &args);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), before);
    assert_eq!(names(dir.path()), ["m.gguf"]);

    // Killed mid-write: the old file stays; only a hidden temporary can be
    // left, and the next conversion into that place sweeps it.
    let o = bitnet_limited(16, false, &args);
    assert!(o.status.code().is_none(), "killed by a signal: {o:?}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let left = names(dir.path());
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left[0].starts_with(".m.gguf.") && left[0].ends_with(".tmp") && left[1] == "m.gguf",
        "{left:?}"
    );
    let (ok, _, err) = common::bitnet(&args);
    assert!(ok, "{err}");
    assert_eq!(names(dir.path()), ["m.gguf"]);
    assert_ne!(std::fs::read(&out).unwrap(), before, "rewritten as TQ1_0");
}
