//! Helpers shared by the CLI integration tests: fixture paths and running
//! the built `bitnet` binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Command;

/// A directory under `crates/bitnet-inference/tests/fixtures`.
pub(crate) fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-inference/tests/fixtures")
        .join(sub)
}

/// The tiny transformers-made checkpoint of `variant`.
pub(crate) fn tiny(variant: &str) -> PathBuf {
    fixtures("tiny").join(variant)
}

/// Runs `bitnet args...`: (success, stdout, stderr).
pub(crate) fn bitnet(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .output()
        .expect("run bitnet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
