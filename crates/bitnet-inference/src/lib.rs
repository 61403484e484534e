//! Running BitNet models: the forward pass over the ternary kernels, the KV
//! cache and greedy generation.
//!
//! ```no_run
//! use bitnet_core::Parallelism;
//! use bitnet_inference::{BitNetModel, Logits};
//!
//! let model = BitNetModel::from_hf_dir(std::path::Path::new("model-dir"))?;
//! let mut cache = model.new_cache(256);
//! let logits = model.forward(&[1, 42, 7], &mut cache, Logits::Last, Parallelism::Sequential)?;
//! assert_eq!(logits.len(), model.config().vocab_size);
//! # Ok::<(), bitnet_inference::Error>(())
//! ```

pub mod device;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod sampler;
pub mod scheduler;
pub mod text;

pub use device::{CpuSequence, DeviceSpec, SequenceForward};
pub use error::{Error, Result};
pub use generate::{
    FinishReason, GenerateParams, Generation, PieceDecoder, Session, TokenLogprobs, generate,
    generate_batch, generate_on,
};
pub use kv_cache::{KvCache, KvPool, KvPoolStats};
pub use model::{BatchEntry, BitNetModel, Logits, Stage, StageTimes, Workspace};
pub use sampler::{Sampler, SamplerParams};
