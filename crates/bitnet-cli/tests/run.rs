//! `bitnet run` end to end on the tiny transformers-made checkpoint: text in,
//! the reference's greedy continuation out.

use std::process::Command;

mod common;
use common::{bitnet, tiny};

#[test]
fn ids_prompt_gives_the_reference_greedy_tokens() {
    // ids_p1 and greedy_p1 of the fixture (see its README).
    let dir = tiny("bitlinear_offline");
    let exp = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&exp).unwrap();
    let ids = |name: &str| -> Vec<String> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()).to_string())
            .collect()
    };
    let prompt = ids("ids_p1").join(",");
    let want = ids("greedy_p1");
    // Without a tokenizer the ids are printed; hide it by pointing at a copy.
    let copy = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), copy.path().join(f)).unwrap();
    }
    let n = want.len().to_string();
    // Every device gives the reference's tokens: a GPU that is missing or
    // not built in falls back to the CPU with a notice.
    for device in ["cpu", "wgpu", "auto", "cuda:0"] {
        let (ok, out, err) = bitnet(&[
            "run",
            "-m",
            copy.path().to_str().unwrap(),
            "--ids",
            &prompt,
            "-n",
            &n,
            "-t",
            "1",
            "--device",
            device,
        ]);
        assert!(ok, "{device}: {err}");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            want,
            "{device}: {err}"
        );
        assert!(err.contains("decode"), "{err}");
        if device == "cuda:0" {
            if std::env::var_os("BITNET_TEST_CUDA").is_some() {
                assert!(err.contains("device: cuda:0"), "{err}");
            } else {
                assert!(
                    err.contains("notice: --device cuda:0") || err.contains("device: cuda:0"),
                    "{err}"
                );
            }
        }
        if device == "wgpu" && std::env::var_os("BITNET_TEST_WGPU").is_some() {
            assert!(err.contains("device: wgpu:0"), "{err}");
        }
    }
    let (ok, _, err) = bitnet(&[
        "run",
        "-m",
        copy.path().to_str().unwrap(),
        "--ids",
        &prompt,
        "--device",
        "tpu",
    ]);
    assert!(!ok && err.contains("unknown device `tpu`"), "{err}");
}

#[test]
fn text_prompt_streams_text() {
    let (ok, out, err) = bitnet(&[
        "run",
        "-m",
        tiny("online").to_str().unwrap(),
        "-p",
        "hello",
        "-n",
        "5",
    ]);
    assert!(ok, "{err}");
    assert!(
        !out.trim_end_matches('\n').is_empty() || err.contains("generated 5"),
        "{out:?} {err}"
    );
    assert!(err.contains("prompt 5 tokens"), "{err}");
}

#[test]
fn clear_errors() {
    let (ok, _, err) = bitnet(&["run", "-m", "/nonexistent/model", "-p", "x"]);
    assert!(!ok && err.contains("/nonexistent/model"), "{err}");
    let (ok, _, err) = bitnet(&["run", "-m", tiny("online").to_str().unwrap()]);
    assert!(!ok && err.contains("--prompt"), "{err}");
    let (ok, _, err) = bitnet(&[
        "run",
        "-m",
        tiny("online").to_str().unwrap(),
        "--ids",
        "999",
    ]);
    assert!(!ok && err.contains("999"), "{err}");
}

#[test]
fn synth_then_run_hf_and_gguf_agree() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("tiny-hf");
    let gguf = dir.path().join("tiny.gguf");
    let (ok, _, err) = bitnet(&[
        "synth",
        "--preset",
        "tiny",
        "--format",
        "hf",
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = bitnet(&[
        "synth",
        "--preset",
        "tiny",
        "--format",
        "gguf:tq2_0",
        "--out",
        gguf.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let run = |m: &str| {
        let (ok, out, err) = bitnet(&[
            "run",
            "-m",
            m,
            "--prompt-ids",
            "5,6,7,8",
            "-n",
            "6",
            "-t",
            "1",
        ]);
        assert!(ok, "{err}");
        out
    };
    // Same seed, same weights: both files generate the same tokens.
    assert_eq!(run(hf.to_str().unwrap()), run(gguf.to_str().unwrap()));
    let (ok, _, err) = bitnet(&["synth", "--preset", "9b", "--out", "x"]);
    assert!(!ok && err.contains("9b"), "{err}");
}

#[test]
fn json_output_and_sampling_are_reproducible() {
    let m = tiny("online");
    let args = |seed: &str| {
        bitnet(&[
            "run",
            "-m",
            m.to_str().unwrap(),
            "--prompt-ids",
            "10,20,30",
            "-n",
            "8",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--output",
            "json",
        ])
    };
    let (ok, a, err) = args("7");
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(a.trim()).unwrap();
    for key in [
        "text",
        "prompt_ids",
        "generated_ids",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "peak_rss_bytes",
        "finish_reason",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["prompt_ids"], serde_json::json!([10, 20, 30]));
    assert_eq!(
        v["generated_ids"].as_array().unwrap().len(),
        v["generated_tokens"].as_u64().unwrap() as usize
    );
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(v["text"].is_string());
    let (_, b, _) = args("7");
    let w: serde_json::Value = serde_json::from_str(b.trim()).unwrap();
    assert_eq!(
        v["generated_ids"], w["generated_ids"],
        "same seed, same tokens"
    );
}

#[test]
fn perplexity_saves_logits_and_reports_kl() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let corpus: String = (0..40)
        .map(|i| format!("Line {i}: the quick brown fox jumps over the lazy dog. "))
        .collect();
    std::fs::write(&text, corpus).unwrap();
    let saved = dir.path().join("base.logprobs");
    let run = |variant: &str, extra: &[&str]| {
        let m = tiny(variant);
        let mut args = vec![
            "perplexity",
            "-m",
            m.to_str().unwrap(),
            "-f",
            text.to_str().unwrap(),
            "--ctx",
            "64",
            "--chunks",
            "3",
            "--output",
            "json",
            "-t",
            "1",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = bitnet(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let base = run("online", &["--save-logits", saved.to_str().unwrap()]);
    assert_eq!(base["chunks"], 3);
    assert_eq!(base["scored_tokens"], 3 * 31);
    let ppl = base["perplexity"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{base}");
    // The same model against itself: KL ~ 0 (f16 rounding), same top token.
    let same = run("online", &["--kl-base", saved.to_str().unwrap()]);
    assert_eq!(same["perplexity"], base["perplexity"]);
    let kl = &same["kl_divergence"];
    assert!(kl["mean"].as_f64().unwrap().abs() < 1e-3, "{kl}");
    assert_eq!(kl["same_top_token"], 1.0);
    // Another output layer: a real divergence.
    let other = run("online_untied", &["--kl-base", saved.to_str().unwrap()]);
    assert!(
        other["kl_divergence"]["mean"].as_f64().unwrap() > 0.01,
        "{other}"
    );
    // A mismatched base is refused with a reason.
    let m = tiny("online");
    let (ok, _, err) = bitnet(&[
        "perplexity",
        "-m",
        m.to_str().unwrap(),
        "-f",
        text.to_str().unwrap(),
        "--ctx",
        "32",
        "--kl-base",
        saved.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("does not match"), "{err}");
}

#[test]
fn hf_models_come_from_the_cache_offline_and_fail_clearly_without_network() {
    // The layout huggingface_hub writes: refs/main names the snapshot.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--owner--tiny");
    let snap = repo.join("snapshots/5ca1ab1e");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "5ca1ab1e").unwrap();
    let src = tiny("bitlinear_offline");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), snap.join(f)).unwrap();
    }
    let c = cache.path().to_str().unwrap();
    let (ok, out, err) = bitnet(&[
        "run",
        "--hf",
        "owner/tiny",
        "--hf-cache",
        c,
        "--offline",
        "-p",
        "hi",
        "-n",
        "3",
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 3, "{v}");

    let (ok, _, err) = bitnet(&[
        "run",
        "--hf",
        "owner/missing",
        "--hf-cache",
        c,
        "--offline",
        "-p",
        "hi",
    ]);
    assert!(
        !ok && err.contains("owner/missing") && err.contains("offline"),
        "{err}"
    );

    // Online, but the Hub is unreachable: a clear error, no hang.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["run", "--hf", "owner/missing", "--hf-cache", c, "-p", "hi"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("could not download"),
        "{err}"
    );
}

#[test]
fn chat_keeps_history_reuses_the_cache_and_resets() {
    use std::io::Write;
    // The tiny vocabulary is bytes, so Llama-3's markers would fill its
    // 128-token context: give the model a short template of its own.
    let m = tempfile::tempdir().unwrap();
    let src = tiny("bitlinear_offline");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), m.path().join(f)).unwrap();
    }
    let template = "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}\
                    {% if add_generation_prompt %}a:{% endif %}";
    std::fs::write(
        m.path().join("tokenizer_config.json"),
        serde_json::json!({ "chat_template": template }).to_string(),
    )
    .unwrap();
    let m = m.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "chat",
            "-m",
            m.to_str().unwrap(),
            "-n",
            "4",
            "-t",
            "1",
            "--ignore-eos",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nhow are you?\n/reset\nagain\n/exit\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // "[N prompt tokens, M cached; ...]" per turn.
    let turns: Vec<(usize, usize)> = err
        .lines()
        .filter(|l| l.contains("prompt tokens"))
        .map(|l| {
            let n: Vec<usize> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            (n[0], n[1])
        })
        .collect();
    assert_eq!(turns.len(), 3, "{err}");
    assert_eq!(turns[0].1, 0, "first turn has nothing cached: {err}");
    // The second turn re-renders the first (template + answer): its prefix is cached.
    assert!(
        turns[1].0 > turns[0].0 && turns[1].1 > turns[0].0 / 2,
        "{err}"
    );
    assert_eq!(turns[2].1, 0, "reset forgets the cache: {err}");
    assert!(err.contains("conversation reset"), "{err}");
}
