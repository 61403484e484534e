//! The official `openai` Python client against this server: the script in
//! `tests/python/` drives every endpoint the way applications do. The
//! client is installed from PyPI into a virtualenv under the target
//! directory on first run (`BITNET_OFFLINE_TESTS=1` skips the test on a
//! machine without the registry; CI runs it).

use bitnet_server::ServerConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::TestServer;

const OPENAI_VERSION: &str = "3.57.0";

fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("openai-{OPENAI_VERSION}"));
    let python = dir.join("bin/python");
    let marker = dir.join("installed");
    if !marker.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 runs")
            .success();
        assert!(ok, "python3 -m venv failed");
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("openai=={OPENAI_VERSION}"))
            .status()
            .expect("pip runs")
            .success();
        assert!(ok, "pip install openai=={OPENAI_VERSION} failed");
        std::fs::write(&marker, "").unwrap();
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_works_against_the_server() {
    if std::env::var_os("BITNET_OFFLINE_TESTS").is_some() {
        eprintln!("skipped: BITNET_OFFLINE_TESTS is set");
        return;
    }
    let python = tokio::task::spawn_blocking(venv).await.unwrap();
    let s = TestServer::start(ServerConfig::default()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&s.base)
        .arg("tiny")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "the openai client checks failed");
    assert!(stdout.contains("checks passed"));
    s.stop().await;
}
