//! The training loop: a [`TrainConfig`] (what `train.toml` holds) →
//! [`Trainer`], which owns the model, optimizer, data and thread pool and
//! runs steps with gradient accumulation, clipping, LR / weight-decay /
//! quantization schedules, optional distillation from a float teacher,
//! periodic validation with early stopping, checkpoints (resumable bit for
//! bit), metrics as JSONL and a loss-curve SVG beside the checkpoints.
//!
//! A NaN or infinite loss stops the run before anything is saved, so the
//! last good checkpoint stays the newest. A fresh run refuses an output
//! directory that already holds checkpoints (resume instead), so a failed
//! run never overwrites one.

use bitnet_core::Parallelism;
use bitnet_core::autograd::{BufferPool, IGNORE_INDEX, Tape};
use bitnet_models::config::BitNetConfig;
use bitnet_models::tokenizer::TextTokenizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checkpoint::{self, TrainState};
use crate::data::{self, DataPosition, Dataset};
use crate::error::{Error, Result};
use crate::model::{QuantizedWeights, TrainableModel, config_json};
use crate::optim::{Optimizer, OptimizerConfig, clip_factor, grad_norm};
use crate::schedule::{LrSchedule, QuantSchedule};
use crate::svg;
use crate::ternary_linear::TernaryLinear;

/// The model to train: either `config` (a `config.json`), `init_from` (an
/// HF directory with latent weights), or the inline shape below.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A `config.json` to take the shape from.
    pub config: Option<PathBuf>,
    /// An HF directory (online or float) to start from instead of random init.
    pub init_from: Option<PathBuf>,
    /// Vocabulary size; 0 takes the tokenizer's.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// `relu2` or `silu`.
    pub activation: String,
    /// RoPE base.
    pub rope_theta: f32,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Share the embedding with the output layer.
    pub tie_word_embeddings: bool,
    /// Ternary projections (false trains a float model, e.g. a teacher).
    pub quantized: bool,
    /// Init standard deviation of projections and embeddings.
    pub init_std: f32,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            config: None,
            init_from: None,
            vocab_size: 0,
            hidden_size: 256,
            intermediate_size: 768,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 4,
            activation: "relu2".into(),
            rope_theta: 10_000.0,
            max_position_embeddings: 1024,
            tie_word_embeddings: true,
            quantized: true,
            init_std: 0.02,
        }
    }
}

/// The corpus and how to cut it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Text or `.jsonl` files.
    pub files: Vec<PathBuf>,
    /// A `tokenizer.json` (or a directory holding one).
    pub tokenizer: PathBuf,
    /// JSONL field holding the text.
    pub jsonl_field: String,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Fraction of sequences held out for validation.
    pub val_fraction: f32,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            files: Vec::new(),
            tokenizer: PathBuf::new(),
            jsonl_field: "text".into(),
            seq_len: 128,
            val_fraction: 0.05,
        }
    }
}

/// Optimizer, learning rate and weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    pub lr: f32,
    /// Weight decay (projections only).
    pub weight_decay: f32,
    /// Update rule settings.
    #[serde(flatten)]
    pub optimizer: OptimizerConfig,
}

impl Default for OptimSection {
    fn default() -> Self {
        OptimSection {
            lr: 1.5e-3,
            weight_decay: 0.1,
            optimizer: OptimizerConfig::default(),
        }
    }
}

/// Knowledge distillation from a float teacher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    /// HF directory of the teacher (same vocabulary), run in float.
    pub teacher: PathBuf,
    /// Softmax temperature.
    #[serde(default = "two")]
    pub temperature: f32,
    /// Weight of the KL term; `1 - alpha` weighs the cross-entropy.
    #[serde(default = "half")]
    pub alpha: f32,
}

fn two() -> f32 {
    2.0
}
fn half() -> f32 {
    0.5
}

/// Loop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global-norm clip (0 disables).
    pub clip_norm: f32,
    /// Validate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Validation sequences per evaluation (0: all).
    pub eval_sequences: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints to keep (0: all).
    pub keep_last: usize,
    /// Stop after this many evaluations without improvement (0: never).
    pub patience: u64,
    /// Improvement that resets the patience counter.
    pub min_delta: f32,
    /// Compute threads.
    pub threads: usize,
    /// Seed of init and data order.
    pub seed: u64,
    /// Checkpoints, metrics and the loss curve go here.
    pub out_dir: PathBuf,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            steps: 1000,
            batch_size: 8,
            grad_accum: 1,
            clip_norm: 1.0,
            eval_every: 100,
            eval_sequences: 64,
            checkpoint_every: 200,
            keep_last: 3,
            patience: 0,
            min_delta: 0.0,
            threads: 1,
            seed: 0,
            out_dir: PathBuf::from("runs/train"),
        }
    }
}

/// Everything `train.toml` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The model.
    pub model: ModelSection,
    /// The corpus.
    pub data: DataSection,
    /// Optimizer.
    pub optim: OptimSection,
    /// LR schedule.
    pub schedule: LrSchedule,
    /// Progressive quantization.
    pub quant: QuantSchedule,
    /// Distillation (optional).
    pub distill: Option<DistillSection>,
    /// The loop.
    pub train: TrainSection,
}

/// One optimizer step's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Steps done after this one.
    pub step: u64,
    /// Mean training loss over the micro-batches.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Mean quantization λ.
    pub lambda: f32,
    /// Training tokens per second of this step.
    pub tokens_per_s: f64,
    /// Validation loss, when evaluated at this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
}

/// Why [`Trainer::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// All configured steps ran.
    Finished,
    /// Validation loss stopped improving for `patience` evaluations.
    EarlyStopped,
}

/// The model, optimizer, data and bookkeeping of one run.
pub struct Trainer {
    cfg: TrainConfig,
    model: TrainableModel,
    opt: Optimizer,
    data: Dataset,
    tokenizer: TextTokenizer,
    teacher: Option<TrainableModel>,
    state: TrainState,
    pool: rayon::ThreadPool,
    /// Integer kernels for fully quantized BitLinear forwards.
    ternary: TernaryLinear,
    /// One per shard: the buffers its tape and gradients had last step,
    /// for the same shapes this step.
    shard_pools: Vec<BufferPool>,
    best_val: f32,
    bad_evals: u64,
    history: Vec<StepMetrics>,
    last_checkpoint: Option<PathBuf>,
}

/// One micro-batch as the shards of a step read it.
struct MicroBatch<'a> {
    inputs: &'a [u32],
    targets: &'a [u32],
    seq: usize,
    /// Targets that count towards the cross-entropy (not ignored).
    counted: usize,
    /// The gradient seed: `1 / grad_accum`.
    seed: f32,
    lambdas: &'a [f32],
    quantized: &'a QuantizedWeights,
}

/// A shard's share of the micro-batch loss, its parameter gradients, and
/// its tape's buffers for the next step.
struct ShardOut {
    loss: f64,
    grads: Vec<Option<Vec<f32>>>,
    pool: BufferPool,
}

/// `batch` sequences split into `min(threads, batch)` contiguous ranges,
/// the first ones a sequence longer when it does not divide evenly.
fn shard_ranges(batch: usize, threads: usize) -> Vec<Range<usize>> {
    let n = threads.clamp(1, batch.max(1));
    let (base, extra) = (batch / n, batch % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .collect()
}

fn model_config(m: &ModelSection, vocab: usize) -> Result<BitNetConfig> {
    if let Some(path) = &m.config {
        return Ok(BitNetConfig::from_file(path)?);
    }
    if m.num_heads == 0 || !m.hidden_size.is_multiple_of(m.num_heads) {
        return Err(Error::Config(format!(
            "hidden_size {} is not a multiple of num_heads {}",
            m.hidden_size, m.num_heads
        )));
    }
    let mut v = serde_json::json!({
        "vocab_size": if m.vocab_size == 0 { vocab } else { m.vocab_size },
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "hidden_act": m.activation,
        "rope_theta": m.rope_theta,
        "max_position_embeddings": m.max_position_embeddings,
        "tie_word_embeddings": m.tie_word_embeddings,
    });
    if m.quantized {
        v["quantization_config"] = serde_json::json!({
            "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"
        });
    }
    Ok(BitNetConfig::from_json(&v.to_string())?)
}

impl TrainConfig {
    /// Rejects settings that cannot run, before any work.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if t.batch_size == 0 || t.grad_accum == 0 || t.threads == 0 {
            return Err(Error::Config(
                "batch_size, grad_accum and threads must be positive".into(),
            ));
        }
        if self.optim.lr.is_nan() || self.optim.lr <= 0.0 || self.optim.weight_decay < 0.0 {
            return Err(Error::Config(format!(
                "lr {} must be positive and weight_decay {} non-negative",
                self.optim.lr, self.optim.weight_decay
            )));
        }
        if let Some(d) = &self.distill
            && !(0.0..=1.0).contains(&d.alpha)
        {
            return Err(Error::Config(format!(
                "distill.alpha {} outside [0, 1]",
                d.alpha
            )));
        }
        self.optim.optimizer.validate()?;
        self.schedule.validate()
    }
}

impl Trainer {
    /// Prepares a run: validates the config, reads and packs the corpus,
    /// builds (or, with `resume`, restores from the newest checkpoint in
    /// `out_dir`) the model and optimizer.
    pub fn new(cfg: TrainConfig, resume: bool) -> Result<Self> {
        cfg.validate()?;
        let tokenizer = data::load_tokenizer(&cfg.data.tokenizer)?;
        let vocab = tokenizer.vocab_size();
        let docs = data::read_documents(&cfg.data.files, &cfg.data.jsonl_field)?;
        let eos = tokenizer.eos_id();
        let tokens = data::tokenize(&docs, &tokenizer, eos)?;
        let dataset = Dataset::pack(&tokens, cfg.data.seq_len, cfg.data.val_fraction)?;
        let fresh = match &cfg.model.init_from {
            Some(dir) => TrainableModel::from_hf_dir(dir)?,
            None => TrainableModel::init(
                model_config(&cfg.model, vocab)?,
                cfg.model.init_std,
                cfg.train.seed,
            )?,
        };
        if fresh.config().vocab_size < vocab {
            return Err(Error::Config(format!(
                "vocab_size {} is smaller than the tokenizer's {vocab}",
                fresh.config().vocab_size
            )));
        }
        if cfg.data.seq_len > fresh.config().max_position_embeddings {
            return Err(Error::Config(format!(
                "seq_len {} exceeds max_position_embeddings {}",
                cfg.data.seq_len,
                fresh.config().max_position_embeddings
            )));
        }
        let teacher = match &cfg.distill {
            Some(d) => {
                let t = TrainableModel::from_hf_dir(&d.teacher)?;
                if t.config().vocab_size != fresh.config().vocab_size {
                    return Err(Error::Config(format!(
                        "teacher vocab {} differs from the student's {}",
                        t.config().vocab_size,
                        fresh.config().vocab_size
                    )));
                }
                Some(t)
            }
            None => None,
        };
        let out = &cfg.train.out_dir;
        let existing = checkpoint::latest(out)?;
        let (model, opt, state, last_checkpoint) = match (resume, existing) {
            (true, Some(path)) => {
                let (m, o, s) = checkpoint::load(&path, Some(fresh.config()))?;
                if o.config() != &cfg.optim.optimizer {
                    return Err(Error::ckpt(&path, "written with other optimizer settings"));
                }
                (m, o, s, Some(path))
            }
            (false, Some(path)) => {
                return Err(Error::Config(format!(
                    "{} already holds checkpoints ({}); resume, or choose another out_dir",
                    out.display(),
                    path.display()
                )));
            }
            (_, None) => {
                let opt = Optimizer::new(cfg.optim.optimizer.clone(), fresh.params())?;
                let state = TrainState {
                    rng: cfg.train.seed,
                    ..Default::default()
                };
                (fresh, opt, state, None)
            }
        };
        let pool = bitnet_core::build_pool(cfg.train.threads)?;
        let extra = &state.extra;
        let best_val = extra
            .get("best_val")
            .and_then(|v| v.as_f64())
            .map_or(f32::INFINITY, |v| v as f32);
        let bad_evals = extra.get("bad_evals").and_then(|v| v.as_u64()).unwrap_or(0);
        let mut t = Trainer {
            cfg,
            model,
            opt,
            data: dataset,
            tokenizer,
            teacher,
            state,
            pool,
            ternary: TernaryLinear::detect(),
            shard_pools: Vec::new(),
            best_val,
            bad_evals,
            history: Vec::new(),
            last_checkpoint,
        };
        t.history = t.read_history()?;
        Ok(t)
    }

    /// The model being trained.
    pub fn model(&self) -> &TrainableModel {
        &self.model
    }

    /// The packed corpus.
    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Metrics of every step so far (including those before a resume).
    pub fn history(&self) -> &[StepMetrics] {
        &self.history
    }

    /// The newest checkpoint written or resumed from.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    fn read_history(&self) -> Result<Vec<StepMetrics>> {
        let path = self.cfg.train.out_dir.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
            let (Some(step), Some(loss)) = (f("step"), f("loss")) else {
                continue;
            };
            if step as u64 > self.state.step {
                continue; // written after the checkpoint we resume from
            }
            out.push(StepMetrics {
                step: step as u64,
                loss: loss as f32,
                lr: f("lr").unwrap_or(0.0) as f32,
                grad_norm: f("grad_norm").unwrap_or(0.0) as f32,
                lambda: f("lambda").unwrap_or(1.0) as f32,
                tokens_per_s: f("tokens_per_s").unwrap_or(0.0),
                val_loss: f("val_loss").map(|x| x as f32),
            });
        }
        Ok(out)
    }

    fn lambdas(&self, step: u64) -> Vec<f32> {
        self.cfg.quant.lambdas(step, self.model.config().num_layers)
    }

    /// One optimizer step (`grad_accum` micro-batches). Returns its metrics;
    /// a non-finite loss is [`Error::NonFiniteLoss`] and changes nothing.
    ///
    /// Each micro-batch is split by sequence into one shard per pool thread
    /// (at most one per sequence); a shard runs its forward and backward
    /// on its own thread, and the shards' gradients are summed in shard
    /// order. Per-sequence work is independent, so this is the same sum as
    /// one tape over the whole batch, rounded in another order: a run is
    /// reproducible bit for bit for a given thread count.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let start = Instant::now();
        let (b, t) = (self.cfg.train.batch_size, self.data.seq_len());
        let accum = self.cfg.train.grad_accum;
        let step = self.state.step;
        let lambdas = self.lambdas(step);
        let mut pos = self.state.data;
        let threads = self.pool.current_num_threads();
        let shards = shard_ranges(b, threads);
        // The first shard's gradients are taken as they are; later ones are
        // added (no zeroed buffers to fill and add into).
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; self.model.params().len()];
        let mut loss_sum = 0.0f64;
        let quantized = self
            .model
            .quantize_weights(&lambdas, &self.ternary, &self.pool);
        for _ in 0..accum {
            let (inputs, targets) = self.data.next_batch(b, self.cfg.train.seed, &mut pos);
            let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
            let batch = MicroBatch {
                inputs: &inputs,
                targets: &targets,
                seq: t,
                counted,
                seed: 1.0 / accum as f32,
                lambdas: &lambdas,
                quantized: &quantized,
            };
            self.shard_pools.resize_with(shards.len(), BufferPool::new);
            let pools = std::mem::take(&mut self.shard_pools);
            let outs: Vec<Result<ShardOut>> = self.pool.install(|| {
                shards
                    .par_iter()
                    .zip(pools)
                    .map(|(r, pool)| self.shard_step(&batch, r.clone(), pool))
                    .collect()
            });
            let mut loss = 0.0f64;
            for out in outs {
                let mut out = out?;
                loss += out.loss;
                let spent: Vec<Vec<f32>> = self.pool.install(|| {
                    grads
                        .par_iter_mut()
                        .zip(out.grads)
                        .filter_map(|(acc, g)| match (acc, g) {
                            (Some(a), Some(g)) => {
                                a.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                                Some(g)
                            }
                            (slot @ None, Some(g)) => {
                                *slot = Some(g);
                                None
                            }
                            (_, None) => None,
                        })
                        .collect()
                });
                spent.into_iter().for_each(|g| out.pool.give(g));
                self.shard_pools.push(out.pool);
            }
            if !loss.is_finite() {
                return Err(Error::NonFiniteLoss {
                    step,
                    loss: loss as f32,
                    last_checkpoint: self.last_checkpoint.clone(),
                });
            }
            loss_sum += loss;
        }
        let grads: Vec<Vec<f32>> = grads
            .into_iter()
            .zip(self.model.params())
            .map(|(g, p)| g.unwrap_or_else(|| vec![0.0; p.data.len()]))
            .collect();
        // Clipping is applied as AdamW reads each gradient (one product,
        // the same bits) instead of in a pass of its own over them all.
        let grad_norm = grad_norm(&grads, Parallelism::Pool(&self.pool));
        if !grad_norm.is_finite() {
            return Err(Error::NonFiniteLoss {
                step,
                loss: grad_norm,
                last_checkpoint: self.last_checkpoint.clone(),
            });
        }
        let total = self.cfg.train.steps;
        let lr = self.cfg.optim.lr * self.cfg.schedule.lr_factor(step, total);
        let wd = self.cfg.optim.weight_decay * self.cfg.schedule.wd_factor(step, total);
        self.opt.step_scaled(
            self.model.params_mut(),
            &grads,
            clip_factor(grad_norm, self.cfg.train.clip_norm),
            lr,
            wd,
            Parallelism::Pool(&self.pool),
        )?;
        // The first shard's gradient buffers were taken as the sums.
        if let Some(pool) = self.shard_pools.first_mut() {
            grads.into_iter().for_each(|g| pool.give(g));
        }
        self.state.step += 1;
        self.state.data = pos;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        Ok(StepMetrics {
            step: self.state.step,
            loss: (loss_sum / accum as f64) as f32,
            lr,
            grad_norm,
            lambda: lambdas.iter().sum::<f32>() / lambdas.len().max(1) as f32,
            tokens_per_s: (b * t * accum) as f64 / secs,
            val_loss: None,
        })
    }

    /// Forward and backward of sequences `range` of `batch` on one tape:
    /// the shard's share of the micro-batch loss (its cross-entropy
    /// weighted by its share of the counted targets, its distillation term
    /// by its share of the rows) and its parameter gradients, seeded with
    /// `batch.seed`.
    fn shard_step(
        &self,
        batch: &MicroBatch<'_>,
        range: Range<usize>,
        mut pool: BufferPool,
    ) -> Result<ShardOut> {
        let t = batch.seq;
        let seqs = range.len();
        let inputs = &batch.inputs[range.start * t..range.end * t];
        let targets = &batch.targets[range.start * t..range.end * t];
        let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
        let ce_share = counted as f32 / batch.counted.max(1) as f32;
        let row_share = targets.len() as f32 / batch.targets.len().max(1) as f32;
        // The shard's ops also fork onto the pool. With a shard per thread
        // the forks mostly run where they were made, but a thread whose
        // shard ends first (the two cores of a shared machine seldom run at
        // one speed) steals the other shard's halves instead of waiting:
        // CPU use on the bench config went from 89-96% of two cores to
        // 98-99% (README, Training). The splits do not depend on who runs
        // them, so the bits still depend only on the thread count.
        let par = Parallelism::Pool(&self.pool);
        pool.trim();
        let mut tape = Tape::with_quantized_linear(par, &self.ternary).with_pool(pool);
        let f = self.model.forward_with(
            &mut tape,
            inputs,
            seqs,
            t,
            batch.lambdas,
            true,
            Some(batch.quantized),
        )?;
        let ce = tape.cross_entropy(f.logits, targets)?;
        let loss = match (&self.cfg.distill, &self.teacher) {
            (Some(d), Some(teacher)) => {
                let mut ttape = Tape::with_quantized_linear(par, &self.ternary);
                let zeros = vec![0.0; teacher.config().num_layers];
                let tf = teacher.forward(&mut ttape, inputs, seqs, t, &zeros, false)?;
                let kl = tape.kl_distill(f.logits, ttape.value(tf.logits), d.temperature)?;
                let a = tape.scale(ce, (1.0 - d.alpha) * ce_share)?;
                let k = tape.scale(kl, d.alpha * row_share)?;
                tape.add(a, k)?
            }
            _ => tape.scale(ce, ce_share)?,
        };
        let value = tape.scalar(loss) as f64;
        if !value.is_finite() {
            // Reported by the caller; no backward through a NaN.
            return Ok(ShardOut {
                loss: value,
                grads: Vec::new(),
                pool: tape.into_pool(),
            });
        }
        let seeded = tape.scale(loss, batch.seed)?;
        let mut g = tape.backward(seeded)?;
        Ok(ShardOut {
            loss: value,
            grads: f.params.iter().map(|&v| g.take(v)).collect(),
            pool: tape.into_pool(),
        })
    }

    /// Mean cross-entropy over the validation windows (the first
    /// `eval_sequences` of them), with the current step's λ.
    pub fn evaluate(&self) -> Result<f32> {
        let t = self.data.seq_len();
        let n = match self.cfg.train.eval_sequences {
            0 => self.data.val().len(),
            k => k.min(self.data.val().len()),
        };
        let lambdas = self.lambdas(self.state.step);
        let b = self.cfg.train.batch_size;
        let (mut total, mut count) = (0.0f64, 0usize);
        for chunk in self.data.val()[..n].chunks(b) {
            let inputs: Vec<u32> = chunk.iter().flat_map(|w| w[..t].iter().copied()).collect();
            let targets: Vec<u32> = chunk.iter().flat_map(|w| w[1..].iter().copied()).collect();
            let mut tape =
                Tape::with_quantized_linear(Parallelism::Pool(&self.pool), &self.ternary);
            let f = self
                .model
                .forward(&mut tape, &inputs, chunk.len(), t, &lambdas, false)?;
            let l = tape.cross_entropy(f.logits, &targets)?;
            total += tape.scalar(l) as f64 * targets.len() as f64;
            count += targets.len();
        }
        Ok((total / count.max(1) as f64) as f32)
    }

    /// Writes a checkpoint of the current state now.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.state.extra = serde_json::json!({
            "best_val": if self.best_val.is_finite() { Some(self.best_val) } else { None },
            "bad_evals": self.bad_evals,
        });
        let p = checkpoint::save(
            &self.cfg.train.out_dir,
            &self.model,
            &self.opt,
            &self.state,
            self.cfg.train.keep_last,
        )?;
        self.last_checkpoint = Some(p.clone());
        Ok(p)
    }

    fn append_metrics(&self, m: &StepMetrics) -> Result<()> {
        let dir = &self.cfg.train.out_dir;
        std::fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
        let path = dir.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path, "open"))?;
        let line = serde_json::to_string(m).unwrap_or_default();
        writeln!(f, "{line}").map_err(Error::io(&path, "write"))
    }

    /// Writes `loss.svg` (training and validation loss against step).
    pub fn write_loss_curve(&self) -> Result<PathBuf> {
        let path = self.cfg.train.out_dir.join("loss.svg");
        let train: Vec<(f64, f64)> = self
            .history
            .iter()
            .map(|m| (m.step as f64, m.loss as f64))
            .collect();
        let val: Vec<(f64, f64)> = self
            .history
            .iter()
            .filter_map(|m| m.val_loss.map(|v| (m.step as f64, v as f64)))
            .collect();
        let text = svg::loss_curve(&[
            ("train", "#1f77b4", &train),
            ("validation", "#d62728", &val),
        ]);
        std::fs::write(&path, text).map_err(Error::io(&path, "write"))?;
        Ok(path)
    }

    /// Runs to the configured step count (or early stop), calling `on_step`
    /// after every step. Evaluates, checkpoints and logs on schedule, and
    /// writes a final checkpoint and the loss curve.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&StepMetrics)) -> Result<StopReason> {
        // A resumed run rewrites the log up to its checkpoint, dropping
        // lines from steps after it (they will be recomputed identically).
        let log = self.cfg.train.out_dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&log);
        for m in &self.history.clone() {
            self.append_metrics(m)?;
        }
        let tc = self.cfg.train.clone();
        let mut reason = StopReason::Finished;
        while self.state.step < tc.steps {
            let mut m = self.train_step()?;
            let s = self.state.step;
            let eval_now = (tc.eval_every > 0 && s.is_multiple_of(tc.eval_every)) || s == tc.steps;
            let save_now =
                (tc.checkpoint_every > 0 && s.is_multiple_of(tc.checkpoint_every)) || s == tc.steps;
            if eval_now || save_now {
                // The shards' buffers are a whole step's working set: freed
                // before work of other shapes, not held beside it. The next
                // step allocates them once again.
                self.shard_pools.clear();
            }
            if eval_now && !self.data.val().is_empty() {
                let v = self.evaluate()?;
                m.val_loss = Some(v);
                if v < self.best_val - tc.min_delta {
                    self.best_val = v;
                    self.bad_evals = 0;
                } else {
                    self.bad_evals += 1;
                }
            }
            self.append_metrics(&m)?;
            on_step(&m);
            self.history.push(m);
            let stop = tc.patience > 0 && self.bad_evals >= tc.patience;
            if save_now || stop {
                self.save_checkpoint()?;
                self.write_loss_curve()?;
            }
            if stop {
                reason = StopReason::EarlyStopped;
                break;
            }
        }
        self.write_loss_curve()?;
        Ok(reason)
    }

    /// Writes `config.json` (latent weights, `autobitlinear` online) and
    /// `model.safetensors` of the current latent weights to `dir`, loadable
    /// by [`TrainableModel::from_hf_dir`] and transformers.
    pub fn save_latent(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, config_json(self.model.config()))
            .map_err(Error::io(&cfg_path, "write"))?;
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .model
            .params()
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.dims.clone(),
                    p.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = owned
            .iter()
            .map(|(n, d, b)| {
                safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F32, d.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Config(format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Where the next batch starts.
    pub fn data_position(&self) -> DataPosition {
        self.state.data
    }
}

#[cfg(test)]
mod tests {
    use super::shard_ranges;

    #[test]
    fn shards_cover_the_batch_in_order() {
        assert_eq!(shard_ranges(4, 2), vec![0..2, 2..4]);
        assert_eq!(shard_ranges(5, 2), vec![0..3, 3..5]);
        assert_eq!(shard_ranges(2, 8), vec![0..1, 1..2]);
        assert_eq!(shard_ranges(3, 1), vec![0..3]);
        for (b, t) in [(7, 3), (16, 5), (1, 4)] {
            let r = shard_ranges(b, t);
            assert_eq!(r.len(), t.min(b));
            assert_eq!(r.first().unwrap().start, 0);
            assert_eq!(r.last().unwrap().end, b);
            assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            assert!(r.iter().all(|x| x.len() >= b / t.min(b)));
        }
    }
}
