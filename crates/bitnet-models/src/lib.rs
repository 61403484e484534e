//! BitNet model files for BitNet-Rust: configurations, weight containers and
//! file formats — HF safetensors with `config.json`, and the GGUF container
//! ([`gguf`]: a memory-mapped reader that validates every length, count and
//! offset before touching tensor data, and an atomic version-3 writer, both
//! aware of llama.cpp's TQ1_0/TQ2_0, bitnet.cpp's I2_S and the type-id
//! collision between the two forks).
//!
//! ```no_run
//! use bitnet_models::weights::BitNetWeights;
//! let w = BitNetWeights::from_hf_dir(std::path::Path::new("models/tiny"))?;
//! println!("{} layers", w.layers.len());
//! # Ok::<(), bitnet_models::Error>(())
//! ```

pub mod config;
pub mod error;
pub mod gguf;
pub mod gguf_model;
pub mod hf_export;
pub mod safetensors;
pub mod synth;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
