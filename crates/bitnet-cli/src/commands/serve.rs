//! `bitnet serve`: the OpenAI-compatible server. Settings come from the
//! defaults, then a TOML file (`--config`), then `BITNET_*` environment
//! variables, then flags; logs are JSON lines on stderr (`--log-format
//! text` for people), each carrying the request id inside a request.

use super::device::DeviceArgs;
use anyhow::Context;
use bitnet_server::{AppState, DeviceOpener, ServerConfig, serve, shutdown_signal};
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `bitnet serve`; each also reads the environment variable named.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// A BitNet GGUF file or HF checkpoint directory.
    #[arg(short, long, env = "BITNET_MODEL")]
    model: Option<PathBuf>,
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "BITNET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "BITNET_HOST")]
    host: Option<String>,
    /// Port (0: any free port).
    #[arg(long, env = "BITNET_PORT")]
    port: Option<u16>,
    /// The model id clients name (default: the file or directory name).
    #[arg(long, env = "BITNET_MODEL_ID")]
    model_id: Option<String>,
    /// A Jinja chat template file instead of the model's own.
    #[arg(long, env = "BITNET_CHAT_TEMPLATE", value_name = "FILE")]
    chat_template: Option<PathBuf>,
    /// Most sequences decoded together.
    #[arg(long, env = "BITNET_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Most requests waiting for a slot; more get 429.
    #[arg(long, env = "BITNET_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// Most tokens per engine step (decode tokens plus prompt chunks).
    #[arg(long, env = "BITNET_STEP_TOKENS")]
    step_tokens: Option<usize>,
    /// KV cache budget in MiB, shared by all sequences.
    #[arg(long, env = "BITNET_KV_BUDGET_MIB")]
    kv_budget_mib: Option<usize>,
    /// Positions per KV block.
    #[arg(long, env = "BITNET_KV_BLOCK_SIZE")]
    kv_block_size: Option<usize>,
    /// Positions per sequence (default: the model's context).
    #[arg(long, env = "BITNET_CONTEXT")]
    context: Option<usize>,
    /// Kernel threads (default: all logical CPUs).
    #[arg(short, long, env = "BITNET_THREADS")]
    threads: Option<usize>,
    /// max_tokens when a request gives none.
    #[arg(long, env = "BITNET_DEFAULT_MAX_TOKENS")]
    default_max_tokens: Option<usize>,
    /// Seconds a request may take, queueing included.
    #[arg(long, env = "BITNET_REQUEST_TIMEOUT")]
    request_timeout: Option<f64>,
    /// Largest request body in bytes.
    #[arg(long, env = "BITNET_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Seconds running streams get to finish after SIGTERM.
    #[arg(long, env = "BITNET_SHUTDOWN_GRACE")]
    shutdown_grace: Option<f64>,
    /// `json` or `text`.
    #[arg(long, env = "BITNET_LOG_FORMAT")]
    log_format: Option<String>,
    /// Turns on tenants, API keys, limits and metering, stored here:
    /// `sqlite://FILE` (created if missing) or `postgres://USER:PASS@HOST/DB`.
    #[arg(long, env = "BITNET_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// Keep rate limiter state in Redis (`redis://HOST:PORT`), shared by
    /// every replica.
    #[arg(long, env = "BITNET_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
    /// Bearer token of the /admin API (at least 16 characters).
    #[arg(
        long,
        env = "BITNET_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Purge usage rows older than this many days (0: keep them).
    #[arg(long, env = "BITNET_RETENTION_DAYS", value_name = "DAYS")]
    retention_days: Option<u32>,
    /// Where the model runs. On a GPU, `--max-batch` sequences of
    /// `--context` positions each keep their KV cache in GPU memory (fewer
    /// when that many do not fit); the KV pool settings apply to the CPU.
    #[command(flatten)]
    device: DeviceArgs,
}

impl Args {
    /// Defaults, then the file, then environment and flags.
    pub(crate) fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut c = match &self.config {
            Some(path) => ServerConfig::from_toml_file(path)?,
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident <- $arg:expr),* $(,)?) => {
                $(if let Some(v) = $arg.clone() { c.$field = v; })*
            };
        }
        set!(
            host <- self.host,
            port <- self.port,
            max_batch <- self.max_batch,
            max_queue <- self.max_queue,
            step_tokens <- self.step_tokens,
            kv_budget_mib <- self.kv_budget_mib,
            kv_block_size <- self.kv_block_size,
            context <- self.context,
            threads <- self.threads,
            default_max_tokens <- self.default_max_tokens,
            request_timeout_secs <- self.request_timeout,
            max_body_bytes <- self.max_body_bytes,
            shutdown_grace_secs <- self.shutdown_grace,
            log_format <- self.log_format,
        );
        if self.model.is_some() {
            c.model = self.model.clone();
        }
        if self.database_url.is_some() {
            c.platform.database_url = self.database_url.clone();
        }
        if self.redis_url.is_some() {
            c.platform.redis_url = self.redis_url.clone();
        }
        if self.admin_token.is_some() {
            c.platform.admin_token = self.admin_token.clone();
        }
        if let Some(d) = self.retention_days {
            c.platform.retention_days = d;
        }
        if self.model_id.is_some() {
            c.model_id = self.model_id.clone();
        }
        if self.chat_template.is_some() {
            c.chat_template = self.chat_template.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

/// Installs the log subscriber for this process (the binary's one global:
/// libraries only emit events).
pub(crate) fn init_logs(format: &str) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO);
    let _ = if format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    init_logs(&config.log_format);
    let addr = format!("{}:{}", config.host, config.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    let model = config.model.clone();
    let (device, context, sequences) = (args.device.clone(), config.context, config.max_batch);
    let open: DeviceOpener = Box::new(move |m| {
        let positions = m.config().max_position_embeddings;
        let context = if context == 0 {
            positions
        } else {
            context.min(positions)
        };
        device.open_slots(m.weights(), context, sequences)
    });
    runtime.block_on(async move {
        let state = AppState::load_on_device(config, open)
            .await
            .with_context(|| match &model {
                Some(p) => format!("loading {}", p.display()),
                None => "loading the model".into(),
            })?;
        if let Some(p) = &state.platform {
            tracing::info!(
                database = %bitnet_platform::db::redact(p.config.database_url.as_deref().unwrap_or("")),
                redis = p.config.redis_url.is_some(),
                admin_api = p.config.admin_token.is_some(),
                "accounts, limits and metering on"
            );
            if p.config.retention_days > 0 {
                tokio::spawn(retention(Arc::clone(p)));
            }
        } else {
            tracing::warn!("no --database-url: the API is open, with no keys, limits or metering");
        }
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(
            address = %local,
            model = %state.model_id,
            context = state.scheduler.context(),
            device = %state.device,
            "serving"
        );
        eprintln!(
            "bitnet serve: listening on http://{local} (model `{}` on {})",
            state.model_id, state.device
        );
        serve(state, listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Purges usage rows past the retention period once an hour.
async fn retention(platform: Arc<bitnet_platform::Platform>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let days = platform.config.retention_days;
        match bitnet_platform::privacy::purge(&platform.store, "system", days).await {
            Ok(n) => tracing::info!(rows = n, days, "usage retention purge"),
            Err(e) => tracing::warn!(error = %e, "usage retention purge failed"),
        }
    }
}
