//! BitNet model files for BitNet-Rust: configurations, weight containers and
//! file formats — HF safetensors with `config.json`, and the GGUF container
//! ([`gguf`]: a memory-mapped reader that validates every length, count and
//! offset before touching tensor data, and an atomic version-3 writer, both
//! aware of llama.cpp's TQ1_0/TQ2_0, bitnet.cpp's I2_S and the type-id
//! collision between the two forks); tokenizers ([`tokenizer`]: HF
//! `tokenizer.json` with `tokenizer_config.json`, or built from GGUF
//! metadata) and chat templates ([`chat`]).
//!
//! ```no_run
//! use bitnet_models::weights::BitNetWeights;
//! let w = BitNetWeights::from_hf_dir(std::path::Path::new("models/tiny"))?;
//! println!("{} layers", w.layers.len());
//! # Ok::<(), bitnet_models::Error>(())
//! ```

pub mod atomic;
pub mod chat;
pub mod config;
pub mod convert;
pub mod error;
mod float_dot;
pub mod float_matrix;
pub mod gguf;
pub mod gguf_model;
pub mod hf_export;
#[cfg(feature = "hub")]
pub mod hub;
mod mapped;
mod quant_dot;
pub use quant_dot::BlockQ8Activations;
pub mod safetensors;
pub mod synth;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
