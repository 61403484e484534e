//! Arguments shared by the commands that load and run a model (`run`,
//! `chat`, `perplexity`): where the model is, threads, and sampling.

use anyhow::{Context, bail};
use bitnet_core::{Parallelism, build_pool, system};
use bitnet_inference::BitNetModel;
use bitnet_inference::generate::GenerateParams;
use bitnet_inference::sampler::SamplerParams;
use bitnet_models::hub::HubModel;
use bitnet_models::tokenizer::TextTokenizer;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which model to load and how many threads to run it on.
#[derive(clap::Args, Debug)]
pub(crate) struct ModelArgs {
    /// A BitNet GGUF file, or an HF checkpoint directory (`config.json`,
    /// `model.safetensors` or a sharded index). Text needs a tokenizer:
    /// `tokenizer.json` in the directory (beside a GGUF file).
    #[arg(short, long, required_unless_present = "hf", conflicts_with = "hf")]
    pub(crate) model: Option<PathBuf>,
    /// A model on the Hugging Face Hub, e.g. `microsoft/bitnet-b1.58-2B-4T`:
    /// taken from the standard HF cache, downloaded into it when missing.
    #[arg(long, value_name = "REPO")]
    hf: Option<String>,
    /// With --hf: a GGUF file of the repository instead of its safetensors.
    #[arg(long, requires = "hf", value_name = "FILE")]
    hf_file: Option<String>,
    /// With --hf: branch, tag or commit.
    #[arg(long, requires = "hf", default_value = "main")]
    revision: String,
    /// With --hf: the cache directory (default: $HF_HOME/hub or ~/.cache/huggingface/hub).
    #[arg(long, requires = "hf", value_name = "DIR")]
    hf_cache: Option<PathBuf>,
    /// With --hf: never use the network (also HF_HUB_OFFLINE=1).
    #[arg(long, requires = "hf")]
    offline: bool,
    /// Threads (default: all logical CPUs).
    #[arg(short, long)]
    pub(crate) threads: Option<usize>,
}

impl ModelArgs {
    /// The model's location, for messages.
    pub(crate) fn describe(&self) -> String {
        match (&self.model, &self.hf) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(repo)) => format!("hf:{repo}"),
            (None, None) => "(no model)".into(),
        }
    }

    /// The local path of the model, fetching it from the Hub for --hf.
    pub(crate) fn local_path(&self) -> anyhow::Result<PathBuf> {
        match (&self.model, &self.hf) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(repo)) => {
                let mut hub = HubModel::new(repo);
                hub.revision = self.revision.clone();
                hub.gguf_file = self.hf_file.clone();
                hub.cache_dir = self.hf_cache.clone();
                hub.offline |= self.offline;
                Ok(hub.resolve()?)
            }
            (None, None) => bail!("give a model with --model PATH or --hf REPO"),
        }
    }
}

/// A loaded model with its tokenizer (if any) and thread pool.
pub(crate) struct LoadedModel {
    pub(crate) model: BitNetModel,
    pub(crate) tokenizer: Option<TextTokenizer>,
    pub(crate) pool: rayon::ThreadPool,
    pub(crate) threads: usize,
    pub(crate) load_time: Duration,
}

impl LoadedModel {
    /// Loads the model and its tokenizer, reporting the time on stderr.
    pub(crate) fn load(args: &ModelArgs) -> anyhow::Result<Self> {
        let threads = args.threads.unwrap_or_else(system::logical_cpus);
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        let pool =
            build_pool(threads).with_context(|| format!("building a pool of {threads} threads"))?;
        let start = Instant::now();
        let path = &args.local_path()?;
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        let model =
            BitNetModel::load(path).with_context(|| format!("loading {}", path.display()))?;
        let tokenizer = find_tokenizer(path)?;
        let load_time = start.elapsed();
        eprintln!(
            "loaded {} in {:.2} s",
            path.display(),
            load_time.as_secs_f64()
        );
        Ok(LoadedModel {
            model,
            tokenizer,
            pool,
            threads,
            load_time,
        })
    }

    /// Parallelism over this model's pool.
    pub(crate) fn parallelism(&self) -> Parallelism<'_> {
        Parallelism::Pool(&self.pool)
    }
}

/// The model's tokenizer: `tokenizer.json` (with `tokenizer_config.json`)
/// of a checkpoint directory, or a GGUF file's tokenizer metadata (or the
/// `tokenizer.json` beside it). `None` when the model has none at all;
/// a tokenizer that is present but broken is an error.
fn find_tokenizer(model: &Path) -> anyhow::Result<Option<TextTokenizer>> {
    if model.is_dir() && !model.join("tokenizer.json").is_file() {
        return Ok(None);
    }
    match TextTokenizer::for_model(model) {
        Ok(t) => Ok(Some(t)),
        // A GGUF file without `tokenizer.ggml.*` and nothing beside it.
        Err(bitnet_models::Error::MissingKey { key, .. }) if key.starts_with("tokenizer.") => {
            Ok(None)
        }
        // `tokenizer.ggml.model = "none"`: llama.cpp's "no vocabulary".
        Err(bitnet_models::Error::UnsupportedTokenizer { model, .. })
            if model == "none" || model == "no_vocab" =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("loading the tokenizer of {}", model.display())),
    }
}

/// Sampling and stopping.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SamplingArgs {
    /// Tokens to generate at most (default: 32 for `run`, 512 per chat answer).
    #[arg(short = 'n', long)]
    pub(crate) max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty on tokens of the prompt and the generation (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Presence penalty, -2 to 2 (OpenAI's).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Frequency penalty, -2 to 2 (OpenAI's).
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Stop at these token ids, e.g. `--stop-ids 13,128009`.
    #[arg(long = "stop-ids", value_delimiter = ',')]
    stop_ids: Vec<u32>,
    /// Keep generating past the model's end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    /// Validated generation settings; the tokenizer's end-of-turn ids
    /// (`<|eot_id|>` and the like) stop generation too, unless `--ignore-eos`.
    pub(crate) fn params(
        &self,
        tokenizer: Option<&TextTokenizer>,
        default_max_tokens: usize,
    ) -> anyhow::Result<GenerateParams> {
        let sampler = SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        };
        if let Err(e) = sampler.validate() {
            bail!("{e}");
        }
        let mut stop_token_ids = self.stop_ids.clone();
        if !self.ignore_eos {
            stop_token_ids.extend(tokenizer.map(TextTokenizer::stop_ids).unwrap_or_default());
        }
        Ok(GenerateParams {
            max_tokens: self.max_tokens.unwrap_or(default_max_tokens),
            sampler,
            stop_token_ids,
            stop_strings: self.stop.clone(),
            ignore_eos: self.ignore_eos,
        })
    }
}
