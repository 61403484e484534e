//! `bitnet platform-bench`: the hosted API's per-request cost. Starts the
//! server in-process twice on the same model, open and with accounts on
//! `--database-url`, sends short non-streaming completions from
//! `--concurrency` clients, and reports requests per second, latency, and
//! the platform's own time per request (auth, limits, metering; the
//! `x-bitnet-platform-ms` header), p50/p95/p99. It then checks that the
//! database holds exactly one usage row per completed request.

use anyhow::{Context, bail};
use bitnet_platform::{PlatformConfig, Tier};
use bitnet_server::loadgen::{ShortLoadConfig, ShortLoadReport, quantile, run_short_load};
use bitnet_server::{AppState, ServerConfig, serve};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Model to serve.
    #[arg(short, long)]
    model: PathBuf,
    /// The platform database (use a fresh one: a tenant is created).
    #[arg(long)]
    database_url: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 1)]
    max_tokens: usize,
    /// The prompt.
    #[arg(long, default_value = "And God said")]
    prompt: String,
    /// Kernel threads.
    #[arg(short, long, default_value_t = 1)]
    threads: usize,
    /// Skip the run without accounts.
    #[arg(long)]
    only_platform: bool,
    /// Send this many requests per second in all (open loop) instead of
    /// as fast as answers come back.
    #[arg(long)]
    rate: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line(label: &str, r: &ShortLoadReport) {
    println!(
        "{label:<10} {:>8.1} req/s  completed {:>6}  failed {:?}  latency p50 {:>6.2} p95 {:>6.2} ms  platform p50 {:>6.3} p95 {:>6.3} p99 {:>6.3} ms",
        r.requests_per_second(),
        r.completed,
        r.failed,
        ms(quantile(&r.latencies, 0.5)),
        ms(quantile(&r.latencies, 0.95)),
        ms(quantile(&r.platform, 0.5)),
        ms(quantile(&r.platform, 0.95)),
        ms(quantile(&r.platform, 0.99)),
    );
}

async fn start(config: ServerConfig) -> anyhow::Result<(Arc<AppState>, String)> {
    let state = AppState::load_with_platform(config)
        .await
        .context("starting the server")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(serve(
        Arc::clone(&state),
        listener,
        std::future::pending::<()>(),
    ));
    Ok((state, base))
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    runtime.block_on(async {
        let base_config = ServerConfig {
            model: Some(args.model.clone()),
            model_id: Some("bench".into()),
            threads: args.threads,
            max_batch: args.concurrency.max(1),
            max_queue: args.concurrency.max(1) * 4,
            log_format: "text".into(),
            ..ServerConfig::default()
        };
        let load = |base: String, key: Option<String>| ShortLoadConfig {
            base_url: base,
            model: "bench".into(),
            concurrency: args.concurrency,
            duration: Duration::from_secs_f64(args.duration),
            max_tokens: args.max_tokens,
            prompt: args.prompt.clone(),
            api_key: key,
            rate: args.rate,
        };
        if !args.only_platform {
            let (_state, base) = start(base_config.clone()).await?;
            run_short_load(&ShortLoadConfig {
                duration: Duration::from_secs(2),
                ..load(base.clone(), None)
            })
            .await;
            line("open", &run_short_load(&load(base, None)).await);
        }
        // A tier whose limits the benchmark does not reach: it measures
        // the cost of checking them, not their effect.
        let mut tiers = Tier::defaults();
        tiers.push(Tier {
            name: "bench".into(),
            monthly_price_usd: 0.0,
            requests_per_minute: 10_000_000,
            tokens_per_minute: 10_000_000_000,
            concurrent_requests: 100_000,
            monthly_tokens: 0,
            overage_usd_per_million: 1.0,
        });
        let config = ServerConfig {
            platform: PlatformConfig {
                database_url: Some(args.database_url.clone()),
                tiers,
                ..PlatformConfig::default()
            },
            ..base_config
        };
        let (state, base) = start(config).await?;
        let platform = state.platform.clone().context("no platform")?;
        let name = format!("bench-{}", bitnet_platform::db::now_ms());
        let tenant = platform.create_tenant("bench", &name, "bench").await?;
        let key = platform.create_key("bench", &tenant.id, "bench").await?;
        run_short_load(&ShortLoadConfig {
            duration: Duration::from_secs(2),
            ..load(base.clone(), Some(key.key.clone()))
        })
        .await;
        let before = bitnet_platform::metering::count(&platform.store).await?;
        let report = run_short_load(&load(base, Some(key.key))).await;
        line("platform", &report);
        let rows = bitnet_platform::metering::count(&platform.store).await? - before;
        println!(
            "usage rows written during the run: {rows}; completed requests: {}; failed: {}",
            report.completed,
            report.failed.values().sum::<usize>()
        );
        let answered = report.completed
            + report
                .failed
                .iter()
                .filter(|(s, _)| **s != 0 && **s != 401 && **s != 429)
                .map(|(_, n)| n)
                .sum::<usize>();
        if rows as usize != answered {
            bail!("{rows} usage rows for {answered} answered requests: rows were lost");
        }
        Ok(())
    })
}
