//! Ternary (1.58-bit) quantization for BitNet-Rust: quantizers that match the
//! reference exactly, packed weight formats, ternary x int8 kernels and an
//! inference `BitLinear`.
//!
//! ```
//! use bitnet_quant::bitlinear::BitLinear;
//! use bitnet_quant::quantize::ternary::{quantize, Granularity};
//! use bitnet_core::Parallelism;
//!
//! let w: Vec<f32> = (0..64 * 256).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
//! let t = quantize("layer.weight", &w, 64, 256, Granularity::PerTensor)?;
//! let layer = BitLinear::from_ternary(&t)?;
//! let y = layer.forward(&vec![0.5; 256], 1, Parallelism::Sequential)?;
//! assert_eq!(y.len(), 64);
//! # Ok::<(), bitnet_quant::Error>(())
//! ```

pub mod aligned;
pub mod bitlinear;
pub mod error;
pub mod formats;
pub mod kernels;
pub mod metrics;
pub mod ptq;
pub mod quantize;

pub use error::{Error, Result};
