//! `bitnet bench` end to end on tiny models: llama-bench's JSON fields and
//! markdown table, positive numbers (no timing thresholds).

use serde_json::Value;

mod common;
use common::{bitnet, tiny};

fn bench_json(model: &str) -> Vec<Value> {
    let (ok, out, err) = bitnet(&[
        "bench",
        "-m",
        model,
        "-p",
        "8",
        "-n",
        "4",
        "-t",
        "1,2",
        "-r",
        "2",
        "--bandwidth-mib",
        "8",
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    rows.as_array().expect("an array of rows").clone()
}

fn check_rows(rows: &[Value], model: &str) {
    // Per thread count: pp8, then tg4.
    let tests: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["n_threads"].as_u64().unwrap(),
                r["n_prompt"].as_u64().unwrap(),
                r["n_gen"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(tests, [(1, 8, 0), (1, 0, 4), (2, 8, 0), (2, 0, 4)]);
    for r in rows {
        for field in [
            "build_commit",
            "cpu_info",
            "backends",
            "model_type",
            "test_time",
        ] {
            assert!(r[field].is_string(), "{field} in {r}");
        }
        assert_eq!(r["model_filename"], model);
        for field in ["model_size", "model_n_params", "avg_ns", "peak_rss_bytes"] {
            assert!(r[field].as_u64().unwrap() > 0, "{field} in {r}");
        }
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["stddev_ts"].as_f64().unwrap() >= 0.0, "{r}");
        assert_eq!(r["samples_ns"].as_array().unwrap().len(), 2, "{r}");
        let ts = r["samples_ts"].as_array().unwrap();
        assert_eq!(ts.len(), 2, "{r}");
        assert!(ts.iter().all(|t| t.as_f64().unwrap() > 0.0), "{r}");
        if r["n_gen"].as_u64().unwrap() > 0 {
            for field in [
                "decode_bytes_per_token",
                "read_bandwidth_bytes_per_s",
                "bandwidth_fraction",
            ] {
                assert!(r[field].as_f64().unwrap() > 0.0, "{field} in {r}");
            }
        } else {
            assert!(r["bandwidth_fraction"].is_null(), "{r}");
        }
    }
}

#[test]
fn json_rows_carry_llama_bench_fields() {
    let dir = tiny("bitlinear_offline");
    let model = dir.to_str().unwrap();
    check_rows(&bench_json(model), model);
}

#[test]
fn synth_gguf_for_llama_cpp_benches_and_prints_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.gguf");
    let file = path.to_str().unwrap();
    let (ok, _, err) = bitnet(&[
        "synth",
        "--preset",
        "tiny",
        "--format",
        "gguf:i2_s",
        "--arch",
        "bitnet",
        "--out",
        file,
    ]);
    assert!(ok, "{err}");
    check_rows(&bench_json(file), file);

    let (ok, out, err) = bitnet(&[
        "bench",
        "-m",
        file,
        "-p",
        "4",
        "-n",
        "2",
        "-t",
        "1",
        "-r",
        "1",
        "--bandwidth-mib",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("| model"), "{out}");
    assert!(out.contains(" t/s |") && out.contains("peak RSS"), "{out}");
    assert!(out.contains(" pp4 |") && out.contains(" tg2 |"), "{out}");
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tiny("bitlinear_offline");
    let model = dir.to_str().unwrap();
    let (ok, _, err) = bitnet(&["bench", "-m", model, "-t", "0"]);
    assert!(!ok && err.contains("threads"), "{err}");
    let (ok, _, err) = bitnet(&["bench", "-m", model, "-p", "0", "-n", "0"]);
    assert!(!ok && err.contains("nothing to run"), "{err}");
}

#[test]
fn parallel_sequences_get_one_tg_row_per_count() {
    let dir = tiny("bitlinear_offline");
    let model = dir.to_str().unwrap();
    let (ok, out, err) = bitnet(&[
        "bench",
        "-m",
        model,
        "-p",
        "4",
        "-n",
        "3",
        "--parallel",
        "1,5",
        "-t",
        "1",
        "-r",
        "2",
        "--bandwidth-mib",
        "0",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let tests: Vec<(u64, u64, u64)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["n_prompt"].as_u64().unwrap(),
                r["n_gen"].as_u64().unwrap(),
                r["n_parallel"].as_u64().unwrap(),
            )
        })
        .collect();
    // One pp row, then tg3 with one and with five sequences.
    assert_eq!(tests, [(4, 0, 1), (0, 3, 1), (0, 3, 5)]);
    for r in rows.as_array().unwrap() {
        // t/s counts every sequence's tokens: tokens / seconds per sample.
        let tokens = r["n_prompt"].as_u64().unwrap()
            + r["n_gen"].as_u64().unwrap() * r["n_parallel"].as_u64().unwrap();
        let ns = r["samples_ns"][0].as_f64().unwrap();
        let ts = r["samples_ts"][0].as_f64().unwrap();
        assert!((ts - 1e9 * tokens as f64 / ns).abs() <= 1e-6 * ts, "{r}");
    }
    // The bandwidth figures describe one sequence only.
    assert!(rows[2]["decode_bytes_per_token"].is_null(), "{}", rows[2]);
    let (ok, _, err) = bitnet(&["bench", "-m", model, "--parallel", "0"]);
    assert!(!ok && err.contains("--parallel"), "{err}");
}

/// `--parallel` on a GPU: the sequences decode together in the GPU's slots
/// (lavapipe in CI), or a notice says why and the CPU runs them.
#[test]
fn parallel_sequences_decode_in_gpu_slots_or_on_the_cpu_with_a_notice() {
    let dir = tiny("bitlinear_offline");
    let model = dir.to_str().unwrap();
    let (ok, out, err) = bitnet(&[
        "bench",
        "-m",
        model,
        "-p",
        "4",
        "-n",
        "3",
        "--parallel",
        "1,3",
        "-t",
        "1",
        "-r",
        "1",
        "--device",
        "wgpu",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let rows = rows.as_array().expect("rows");
    let parallel: Vec<u64> = rows
        .iter()
        .map(|r| r["n_parallel"].as_u64().unwrap())
        .collect();
    assert_eq!(parallel, [1, 1, 3]);
    let on_gpu = rows.iter().all(|r| r["backends"] == "wgpu");
    let fell_back =
        err.contains("notice: --device wgpu") && rows.iter().all(|r| r["backends"] == "CPU");
    assert!(on_gpu != fell_back, "{err} {rows:?}");
    if std::env::var_os("BITNET_TEST_WGPU").is_some() {
        assert!(on_gpu, "BITNET_TEST_WGPU is set: {err}");
    }
    for r in rows {
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0, "{r}");
    }
}
