//! BitNet model files for BitNet-Rust: configurations, weight containers and
//! file formats (HF safetensors with `config.json`).
//!
//! ```no_run
//! use bitnet_models::weights::BitNetWeights;
//! let w = BitNetWeights::from_hf_dir(std::path::Path::new("models/tiny"))?;
//! println!("{} layers", w.layers.len());
//! # Ok::<(), bitnet_models::Error>(())
//! ```

pub mod config;
pub mod error;
pub mod safetensors;
pub mod weights;

pub use error::{Error, Result};
