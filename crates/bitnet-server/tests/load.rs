//! Load against loopback: 64 concurrent streaming clients for 60 s
//! (`BITNET_LOAD_SECS` changes the length) on the tiny model; no 5xx, no
//! dropped or ill-formed stream, and the KV pool is whole again afterwards.

use bitnet_server::ServerConfig;
use bitnet_server::loadgen::{LoadConfig, quantile, run_load};
use std::time::Duration;

mod common;
use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streaming_clients_for_a_minute() {
    let secs: f64 = std::env::var("BITNET_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    let s = TestServer::start(ServerConfig {
        max_batch: 64,
        max_queue: 256,
        ..ServerConfig::default()
    })
    .await;
    let report = run_load(&LoadConfig {
        base_url: s.base.clone(),
        model: "tiny".into(),
        concurrency: 64,
        duration: Duration::from_secs_f64(secs),
        max_tokens: 24,
        prompt: "Tell me about the sea".into(),
        temperature: 0.8,
        api_key: None,
        stagger: Duration::ZERO,
    })
    .await;
    eprintln!(
        "{} streams in {:.1} s: {:.0} tokens/s, ttft p50 {:?} p95 {:?}, overhead p50 {:?} p95 {:?}",
        report.ok,
        report.elapsed.as_secs_f64(),
        report.tokens_per_second(),
        quantile(&report.ttft, 0.5),
        quantile(&report.ttft, 0.95),
        quantile(&report.overhead, 0.5),
        quantile(&report.overhead, 0.95),
    );
    assert_eq!(report.server_errors, 0, "5xx answers");
    assert_eq!(report.other_status, 0, "4xx answers (the queue holds 64)");
    assert!(
        report.malformed.is_empty(),
        "{:?}",
        &report.malformed[..report.malformed.len().min(5)]
    );
    assert!(report.ok >= 64, "only {} streams completed", report.ok);
    let kv = s.state.scheduler.kv_stats();
    assert_eq!((kv.in_use, kv.reserved), (0, 0));
    s.stop().await;
}
