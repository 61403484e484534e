//! `bitnet serve-bench`: starts a server on a loopback port (or targets
//! `--url`) and runs the load generator at each concurrency: aggregate
//! generated tokens per second and the gain over one stream, time to first
//! token, latency and overhead (latency minus engine and queue time), p50
//! and p95: as the client sees it, and as the server reports it per request
//! (arrival to last event, without the client's own scheduling and the
//! loopback). Any 5xx or ill-formed stream is reported and makes the
//! command fail.

use anyhow::{Context, bail};
use bitnet_server::loadgen::{LoadConfig, LoadReport, quantile, run_load};
use bitnet_server::{AppState, ServerConfig, serve};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Model to serve in-process (ignored with --url).
    #[arg(short, long, required_unless_present = "url")]
    model: Option<PathBuf>,
    /// An already running server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: Option<String>,
    /// The model id (with --url: as that server names it).
    #[arg(long, default_value = "bench")]
    model_id: String,
    /// Concurrent streams to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// The user message.
    #[arg(long, default_value = "Tell me a story about the sea and the old man.")]
    prompt: String,
    /// A chat template file for the in-process server.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Kernel threads of the in-process server.
    #[arg(short, long)]
    threads: Option<usize>,
    /// KV budget of the in-process server, MiB.
    #[arg(long, default_value_t = 2048)]
    kv_budget_mib: usize,
    /// Spread the clients' first requests over this many seconds (client i
    /// of n starts at i/n of it) instead of starting all at once, so that
    /// they do not arrive and finish in lockstep.
    #[arg(long, default_value_t = 0.0)]
    stagger: f64,
    /// Print the results as JSON lines too.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if !(args.stagger >= 0.0 && args.stagger.is_finite()) {
        anyhow::bail!("--stagger must be a number of seconds, at least 0");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (base, _server) = match &args.url {
            Some(url) => (url.trim_end_matches('/').to_string(), None),
            None => {
                let max = args.concurrency.iter().copied().max().unwrap_or(1);
                let config = ServerConfig {
                    model: args.model.clone(),
                    model_id: Some(args.model_id.clone()),
                    chat_template: args.chat_template.clone(),
                    threads: args.threads.unwrap_or(0),
                    max_batch: max.max(1),
                    max_queue: max.max(1) * 4,
                    kv_budget_mib: args.kv_budget_mib,
                    log_format: "text".into(),
                    ..ServerConfig::default()
                };
                let state = AppState::load(config).context("loading the model")?;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let base = format!("http://{}", listener.local_addr()?);
                let server = tokio::spawn(serve(
                    Arc::clone(&state),
                    listener,
                    std::future::pending::<()>(),
                ));
                (base, Some(server))
            }
        };
        let mut cfg = LoadConfig {
            base_url: base,
            model: args.model_id.clone(),
            concurrency: 1,
            duration: Duration::from_secs(2),
            max_tokens: args.max_tokens,
            prompt: args.prompt.clone(),
            temperature: 0.0,
            api_key: None,
            stagger: Duration::ZERO,
        };
        eprintln!("warming up...");
        run_load(&cfg).await;
        cfg.duration = Duration::from_secs_f64(args.duration);
        cfg.stagger = Duration::from_secs_f64(args.stagger);
        println!(
            "{:>6} {:>8} {:>10} {:>6} {:>16} {:>18} {:>18} {:>18} {:>6}",
            "conc",
            "requests",
            "tok/s",
            "gain",
            "ttft p50/p95 ms",
            "latency p50/p95 ms",
            "overhead p50/p95",
            "server ovh p50/p95",
            "errors"
        );
        let mut single = None;
        let mut failed = false;
        for &c in &args.concurrency {
            cfg.concurrency = c;
            let r = run_load(&cfg).await;
            let tps = r.tokens_per_second();
            let base_tps = *single.get_or_insert(tps);
            print_row(&r, tps / base_tps);
            if args.json {
                println!("{}", json_row(&r));
            }
            failed |= r.server_errors > 0 || !r.malformed.is_empty();
            for m in r.malformed.iter().take(3) {
                eprintln!("  ill-formed stream: {m}");
            }
            for e in &r.error_samples {
                eprintln!("  error answer: {e}");
            }
            failed |= r.ok == 0;
        }
        if failed {
            bail!("some requests failed (5xx, ill-formed streams, or none succeeded)");
        }
        anyhow::Ok(())
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_row(r: &LoadReport, gain: f64) {
    println!(
        "{:>6} {:>8} {:>10.1} {:>5.2}x {:>7.1}/{:<8.1} {:>8.1}/{:<9.1} {:>7.2}/{:<8.2} {:>8.2}/{:<9.2} {:>6}",
        r.concurrency,
        r.ok,
        r.tokens_per_second(),
        gain,
        ms(quantile(&r.ttft, 0.5)),
        ms(quantile(&r.ttft, 0.95)),
        ms(quantile(&r.latency, 0.5)),
        ms(quantile(&r.latency, 0.95)),
        ms(quantile(&r.overhead, 0.5)),
        ms(quantile(&r.overhead, 0.95)),
        ms(quantile(&r.server_overhead, 0.5)),
        ms(quantile(&r.server_overhead, 0.95)),
        r.server_errors + r.malformed.len(),
    );
}

fn json_row(r: &LoadReport) -> serde_json::Value {
    serde_json::json!({
        "concurrency": r.concurrency,
        "requests": r.ok,
        "tokens": r.tokens,
        "tokens_per_second": r.tokens_per_second(),
        "ttft_ms": [ms(quantile(&r.ttft, 0.5)), ms(quantile(&r.ttft, 0.95))],
        "latency_ms": [ms(quantile(&r.latency, 0.5)), ms(quantile(&r.latency, 0.95))],
        "overhead_ms": [ms(quantile(&r.overhead, 0.5)), ms(quantile(&r.overhead, 0.95))],
        "server_overhead_ms": [
            ms(quantile(&r.server_overhead, 0.5)),
            ms(quantile(&r.server_overhead, 0.95))
        ],
        "server_errors": r.server_errors,
        "other_status": r.other_status,
        "malformed": r.malformed.len(),
    })
}
