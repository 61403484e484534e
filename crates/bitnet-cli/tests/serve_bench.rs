//! `bitnet serve-bench` end to end on a tiny model: the in-process server,
//! clients in lockstep and staggered, JSON rows (no timing thresholds).

mod common;
use common::{bitnet, tiny};

#[test]
fn clients_in_lockstep_and_staggered_get_well_formed_streams() {
    let dir = tiny("bitlinear_offline");
    let model = dir.to_str().unwrap();
    // A short template: the tiny model's context is 128 tokens.
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("plain.jinja");
    std::fs::write(
        &template,
        "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    .unwrap();
    for stagger in ["0", "0.4"] {
        let (ok, out, err) = bitnet(&[
            "serve-bench",
            "-m",
            model,
            "--chat-template",
            template.to_str().unwrap(),
            "--prompt",
            "hi",
            "--concurrency",
            "1,3",
            "--duration",
            "0.8",
            "--max-tokens",
            "3",
            "-t",
            "1",
            "--stagger",
            stagger,
            "--json",
        ]);
        assert!(ok, "{err}");
        let rows: Vec<serde_json::Value> = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(rows.len(), 2, "{out}");
        for (row, clients) in rows.iter().zip([1, 3]) {
            assert_eq!(row["concurrency"], clients, "{row}");
            assert!(row["requests"].as_u64().unwrap() >= clients, "{row}");
            assert!(row["tokens"].as_u64().unwrap() > 0, "{row}");
            for bad in ["server_errors", "other_status", "malformed"] {
                assert_eq!(row[bad], 0, "{row}");
            }
            // The server's own overhead arrives with every answer, and the
            // client's view of it (loopback, its own scheduling) is larger.
            let server = row["server_overhead_ms"][0].as_f64().unwrap();
            let client = row["overhead_ms"][0].as_f64().unwrap();
            assert!(server > 0.0 && server <= client + 1e-3, "{row}");
        }
    }
    let (ok, _, err) = bitnet(&["serve-bench", "-m", model, "--stagger=-1"]);
    assert!(!ok && err.contains("--stagger"), "{err}");
}
