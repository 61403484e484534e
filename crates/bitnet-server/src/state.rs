//! What every handler shares: the scheduler (the model's engine thread),
//! the tokenizer and chat template, the served model's id, settings and
//! metrics.

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use bitnet_inference::BitNetModel;
use bitnet_inference::device::BatchForward;
use bitnet_inference::scheduler::{Scheduler, SchedulerConfig};
use bitnet_models::chat::ChatTemplate;
use bitnet_models::tokenizer::TextTokenizer;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No model was given.
    #[error("no model: pass -m/--model, BITNET_MODEL or `model` in the config file")]
    NoModel,
    /// The settings are out of range.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Loading the model or starting its engine failed.
    #[error(transparent)]
    Inference(#[from] bitnet_inference::Error),
    /// Loading the tokenizer or chat template failed.
    #[error(transparent)]
    Models(#[from] bitnet_models::Error),
    /// The platform's database or limiter cannot be used.
    #[error(transparent)]
    Platform(#[from] bitnet_platform::PlatformError),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What runs the served model's passes.
pub enum ModelRunner {
    /// The CPU engine, with a paged KV pool under the configured budget.
    Cpu(Arc<BitNetModel>),
    /// A model that holds its sequences itself, one per slot: a GPU model
    /// (`--device`), whose KV cache lives in device memory.
    Slots(Box<dyn BatchForward>),
}

impl std::fmt::Debug for ModelRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelRunner::Cpu(_) => f.write_str("Cpu"),
            ModelRunner::Slots(m) => write!(f, "Slots({}, {} slots)", m.device_name(), m.slots()),
        }
    }
}

/// Opens the model on a device once it is loaded; `None` runs it on the
/// CPU (the opener says why, when a device was asked for).
pub type DeviceOpener =
    Box<dyn FnOnce(&BitNetModel) -> Option<Box<dyn BatchForward>> + Send + 'static>;

/// The state behind every route.
pub struct AppState {
    /// The engine.
    pub scheduler: Scheduler,
    /// The model's tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Its chat template (or the Llama-3 one).
    pub template: ChatTemplate,
    /// The id clients name.
    pub model_id: String,
    /// Unix seconds at load.
    pub created: u64,
    /// Settings.
    pub config: ServerConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Ids that end a generation (the tokenizer's end-of-turn ids).
    pub stop_ids: Vec<u32>,
    /// Identifies this build in responses.
    pub fingerprint: String,
    /// Tenants, keys, limits and metering (none: the API is open).
    pub platform: Option<Arc<bitnet_platform::Platform>>,
    /// What runs the model (`cpu (N threads)`, or the GPU's name).
    pub device: String,
    next_id: AtomicU64,
    seed_base: u64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model_id", &self.model_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    /// Loads the configured model and its tokenizer, and starts the engine.
    pub fn load(config: ServerConfig) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        let path = config.model.clone().ok_or(StartError::NoModel)?;
        let model = Arc::new(BitNetModel::load(&path)?);
        let tokenizer = TextTokenizer::for_model(&path)?;
        Self::new(config, model, tokenizer, &path)
    }

    /// A state over an already loaded model and tokenizer (`path` names
    /// the model when `model_id` is not set).
    pub fn new(
        config: ServerConfig,
        model: Arc<BitNetModel>,
        tokenizer: TextTokenizer,
        path: &Path,
    ) -> Result<Arc<Self>, StartError> {
        Self::with_platform(config, model, tokenizer, path, None)
    }

    /// A state whose `/v1` API is gated by `platform` (keys, limits,
    /// metering) when one is given.
    pub fn with_platform(
        config: ServerConfig,
        model: Arc<BitNetModel>,
        tokenizer: TextTokenizer,
        path: &Path,
        platform: Option<Arc<bitnet_platform::Platform>>,
    ) -> Result<Arc<Self>, StartError> {
        Self::with_runner(config, ModelRunner::Cpu(model), tokenizer, path, platform)
    }

    /// [`Self::with_platform`] with the model on any runner, a GPU
    /// included.
    pub fn with_runner(
        config: ServerConfig,
        runner: ModelRunner,
        tokenizer: TextTokenizer,
        path: &Path,
        platform: Option<Arc<bitnet_platform::Platform>>,
    ) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        let template = match &config.chat_template {
            Some(file) => {
                let text = std::fs::read_to_string(file).map_err(|source| {
                    crate::config::ConfigError::Template {
                        path: file.clone(),
                        source,
                    }
                })?;
                ChatTemplate::new(&text, file)?
            }
            None => tokenizer.chat_template_or_default()?,
        };
        let metrics = Arc::new(Metrics::new());
        let observer = Arc::clone(&metrics);
        let scheduler_config = SchedulerConfig {
            max_batch: config.max_batch,
            max_queue: config.max_queue,
            step_tokens: config.step_tokens,
            kv_block_size: config.kv_block_size,
            kv_budget_bytes: config.kv_budget_mib.saturating_mul(1 << 20),
            context: if config.context == 0 {
                usize::MAX
            } else {
                config.context
            },
            threads: config.threads,
            on_step: Some(Arc::new(move |r| observer.step(r))),
        };
        let (scheduler, device) = match runner {
            ModelRunner::Cpu(model) => {
                let threads = if config.threads == 0 {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                } else {
                    config.threads
                };
                let device = format!("cpu ({threads} threads)");
                (Scheduler::start(model, scheduler_config)?, device)
            }
            ModelRunner::Slots(model) => {
                let device = model.device_name();
                (Scheduler::start_slots(model, scheduler_config)?, device)
            }
        };
        metrics.gauges(0, 0, &scheduler.kv_stats());
        let model_id = config.model_id.clone().unwrap_or_else(|| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "bitnet".into());
            name.strip_suffix(".gguf")
                .map(str::to_string)
                .unwrap_or(name)
        });
        let stop_ids = tokenizer.stop_ids();
        let created = unix_now();
        Ok(Arc::new(AppState {
            scheduler,
            tokenizer: Arc::new(tokenizer),
            template,
            model_id,
            created,
            config,
            metrics,
            stop_ids,
            fingerprint: format!("bitnet-rust-{}", env!("CARGO_PKG_VERSION")),
            platform,
            device,
            next_id: AtomicU64::new(1),
            seed_base: random_seed(created),
        }))
    }

    /// Loads the model as [`AppState::load`] does, and connects the
    /// platform when the configuration names a database.
    pub async fn load_with_platform(config: ServerConfig) -> Result<Arc<Self>, StartError> {
        Self::load_on_device(config, Box::new(|_| None)).await
    }

    /// [`Self::load_with_platform`], then `open` puts the model on a
    /// device (the CPU when it returns `None`).
    pub async fn load_on_device(
        config: ServerConfig,
        open: DeviceOpener,
    ) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        let platform = match &config.platform.database_url {
            Some(_) => {
                let (p, _writer) =
                    bitnet_platform::Platform::start(config.platform.clone()).await?;
                Some(Arc::new(p))
            }
            None => None,
        };
        let path = config.model.clone().ok_or(StartError::NoModel)?;
        let c = config.clone();
        let (runner, tokenizer) = tokio::task::spawn_blocking(move || {
            let model = BitNetModel::load(&path)?;
            let tokenizer = TextTokenizer::for_model(&path)?;
            let runner = match open(&model) {
                Some(device) => ModelRunner::Slots(device),
                None => ModelRunner::Cpu(Arc::new(model)),
            };
            Ok::<_, StartError>((runner, tokenizer))
        })
        .await
        .map_err(|e| {
            StartError::Platform(bitnet_platform::PlatformError::Config(e.to_string()))
        })??;
        let path = c.model.clone().unwrap_or_default();
        Self::with_runner(c, runner, tokenizer, &path, platform)
    }

    /// A fresh id with `prefix` (`chatcmpl`, `cmpl`).
    pub fn next_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{n:08x}", self.seed_base)
    }

    /// A seed for a request that gave none: differs per request.
    pub fn fresh_seed(&self) -> u64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        (self.seed_base ^ n).wrapping_mul(0xbf58_476d_1ce4_e5b9)
    }
}

/// A per-process seed for ids: the clock mixed with OS randomness, so two
/// replicas started in the same second do not hand out the same ids.
fn random_seed(created: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (created ^ u64::from_le_bytes(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
