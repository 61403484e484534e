//! BitNet inference on GPUs through [wgpu]: the forward pass as WGSL
//! compute shaders, which run on Vulkan (Linux, Windows, Android), Metal
//! (macOS, iOS) and DX12, so one backend serves NVIDIA, AMD, Intel and
//! Apple GPUs.
//!
//! - [`context`]: finding adapters and opening a device, with every wgpu
//!   error turned into a typed [`Error`] instead of a panic.
//! - [`kernels`](crate::kernels) (private): the pipelines, one per shader
//!   in `src/shaders/`.
//! - [`model`]: [`WgpuModel`], a model's weights and KV cache on the
//!   device behind [`bitnet_inference::SequenceForward`].
//! - [`selftest`]: every kernel against the CPU reference on a small
//!   random model (what `bitnet doctor` runs).
//!
//! Tested on Mesa's software Vulkan (lavapipe), which reports a `Cpu`
//! adapter: correct, and slower than the CPU engine, so `--device auto`
//! does not pick it.
//!
//! [wgpu]: https://wgpu.rs

pub mod context;
pub mod error;
mod kernels;
pub mod model;
pub mod selftest;

pub use context::{AdapterChoice, AdapterSummary, GpuContext, adapters};
pub use error::{Error, Result};
pub use model::{GpuMemory, GpuOptions, WgpuModel};
