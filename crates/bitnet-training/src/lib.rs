//! `bitnet-training`: quantization-aware training (QAT) of BitNet b1.58
//! models on the `bitnet-core` autograd tape.
//!
//! - [`model`]: the trainable model (latent float weights, BitLinear with
//!   absmean ternary weights and per-token int8 activations in the forward
//!   pass, straight-through gradients), the same architecture and config as
//!   inference.
//! - [`optim`]: AdamW, Adam, SGD (momentum, Nesterov), global-norm clipping.
//! - [`schedule`]: LR schedules (constant, linear, cosine, step, BitNet's
//!   two-stage) and progressive quantization λ.
//! - [`data`]: text/JSONL corpus → tokenizer → packed sequences, seeded
//!   shuffle, validation split.
//! - [`checkpoint`]: atomic safetensors checkpoints with optimizer state,
//!   RNG, config and data position; keep-last-N; exact resume.
//! - [`trainer`]: the loop (`train.toml` → [`trainer::Trainer`]): gradient
//!   accumulation, clipping, evaluation, early stopping, NaN stop,
//!   distillation, metrics JSONL and a loss-curve SVG ([`svg`]).
//! - [`export`]: HF packed and GGUF (I2_S, TQ2_0) through `bitnet-models`.
//! - [`rng`]: the seeded generator whose state checkpoints carry.
//! - [`ternary_linear`]: fully quantized BitLinear forwards on the
//!   inference engine's integer kernels.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod export;
pub mod model;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod svg;
pub mod ternary_linear;
pub mod trainer;

pub use error::{Error, Result};
pub use model::{Param, ParamKind, QuantizedWeights, TrainableModel};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use schedule::{LrSchedule, QuantSchedule};
pub use trainer::{StepMetrics, StopReason, TrainConfig, Trainer};
