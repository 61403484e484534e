//! The HTTP API on arbitrary request bodies: the whole router (body limit,
//! JSON extraction, validation, tokenization, the engine) runs in-process
//! over the tiny checkpoint, and every answer must be a 2xx or a 4xx with
//! OpenAI's error JSON (or the 504 of a request past its timeout): never a
//! panic, never another 5xx.
#![no_main]

use axum::body::Body;
use bitnet_server::{AppState, ServerConfig, router};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

struct Harness {
    runtime: tokio::runtime::Runtime,
    state: Arc<AppState>,
}

// One model and runtime for the whole run (a harness, not library code).
fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/bitnet-inference/tests/fixtures/tiny/bitlinear_offline");
        let template = std::env::temp_dir().join("bitnet-fuzz-template.jinja");
        std::fs::write(
            &template,
            "{% for m in messages %}{{ m['content'] }}\n{% endfor %}a:",
        )
        .unwrap();
        let state = AppState::load(ServerConfig {
            model: Some(dir),
            model_id: Some("tiny".into()),
            chat_template: Some(template),
            threads: 1,
            max_body_bytes: 1 << 16,
            request_timeout_secs: 10.0,
            ..ServerConfig::default()
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Harness { runtime, state }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    // The first byte picks the endpoint; the rest is the body.
    let Some((&which, body)) = data.split_first() else { return };
    let path = if which % 2 == 0 { "/v1/chat/completions" } else { "/v1/completions" };
    let app = router(Arc::clone(&h.state));
    let req = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    h.runtime.block_on(async move {
        let res = app.oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        // 504 is the documented answer when a request outlives its timeout
        // (a long `max_tokens` on this instrumented build); any other 5xx
        // is a bug.
        assert!(
            !status.is_server_error() || status == 504,
            "{status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if status.is_client_error() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("error bodies are JSON");
            assert!(v["error"]["message"].is_string(), "{v}");
        }
    });
});
