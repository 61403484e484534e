//! `bitnet serve` as a process: settings from a TOML file, the environment
//! and flags (flags win), a completion over plain HTTP, JSON log lines with
//! the request id, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::tiny;

fn post(addr: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[cfg(unix)]
#[test]
fn serve_reads_file_env_and_flags_logs_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    // The file sets the port and a model id; the environment overrides the
    // id; the flag overrides the port (0: any free one).
    std::fs::write(
        &config,
        "port = 1\nmodel_id = \"from-file\"\nmax_batch = 4\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--port", "0", "-t", "1", "-m"])
        .arg(tiny("bitlinear_offline"))
        .env("BITNET_MODEL_ID", "from-env")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut lines = Vec::new();
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
            break;
        }
        lines.push(line);
    }
    let addr = addr.unwrap_or_else(|| panic!("no address in {lines:?}"));
    let answer = post(
        &addr,
        "/v1/completions",
        r#"{"model":"from-env","prompt":"Hello","max_tokens":3,"temperature":0}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"text_completion\""), "{answer}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let logs: Vec<serde_json::Value> = lines
        .iter()
        .map(String::as_str)
        .chain(rest.lines())
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let answered = logs
        .iter()
        .find(|l| l["fields"]["message"] == "request answered")
        .unwrap_or_else(|| panic!("no request line in {logs:?}"));
    assert!(
        answered["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req-")),
        "{answered}"
    );
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "shutting down: draining"),
        "{logs:?}"
    );
}

/// Starts `bitnet serve --device DEVICE` on the tiny model, asks for one
/// greedy completion, stops it; returns the text and the stderr lines up
/// to the listening one.
#[cfg(unix)]
fn complete_on(device: &str) -> (String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--port", "0", "-t", "1", "--max-batch", "2"])
        .args(["--device", device, "-m"])
        .arg(tiny("bitlinear_offline"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    let mut addr = None;
    for _ in 0..40 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        lines.push(line);
        if addr.is_some() {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no address in {lines:?}"));
    let answer = post(
        &addr,
        "/v1/completions",
        r#"{"model":"bitlinear_offline","prompt":"Hello","max_tokens":6,"temperature":0}"#,
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    (text, lines)
}

#[cfg(unix)]
#[test]
fn serve_on_a_gpu_answers_as_the_cpu_does_or_says_why_it_cannot() {
    let (cpu, _) = complete_on("cpu");
    let (gpu, lines) = complete_on("wgpu");
    assert_eq!(gpu, cpu);
    let on_gpu = lines
        .iter()
        .any(|l| l.contains("listening") && l.contains("on wgpu:"));
    let fell_back = lines
        .iter()
        .any(|l| l.starts_with("notice: --device wgpu") && l.contains("running on the CPU"));
    assert!(on_gpu != fell_back, "{lines:?}");
    if std::env::var_os("BITNET_TEST_WGPU").is_some() {
        assert!(on_gpu, "BITNET_TEST_WGPU is set: {lines:?}");
    }
    // CUDA batches no sequences yet: a notice, then the CPU.
    let (cuda, lines) = complete_on("cuda");
    assert_eq!(cuda, cpu);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("notice: --device cuda:0") && l.contains("running on the CPU")),
        "{lines:?}"
    );
}
