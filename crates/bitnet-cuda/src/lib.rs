//! BitNet inference on NVIDIA GPUs through CUDA.
//!
//! The kernels (`src/kernels.cu`) are CUDA C compiled at run time by NVRTC
//! for the device's own architecture, and the driver and NVRTC are loaded
//! with `dlopen` through [cudarc]: the build machine needs no CUDA toolkit,
//! and a machine without an NVIDIA driver gets a clear error (and the CLI
//! its CPU path), never a crash.
//!
//! - [`context`]: finding devices, checking the driver's CUDA version,
//!   opening a device.
//! - [`kernels`]: the kernel source, compiling it ([`compile`], what CI runs
//!   for `sm_90`), launching.
//! - [`model`]: [`CudaModel`], a model's weights and KV cache on the device
//!   behind [`bitnet_inference::SequenceForward`].
//! - [`selftest`]: every kernel against the CPU reference, and the whole
//!   model (what `bitnet doctor` runs).
//! - [`bench`]: the ternary matmul's memory bandwidth on real layer shapes.
//!
//! ```no_run
//! use bitnet_cuda::{CudaDevice, devices};
//! for d in devices()? {
//!     println!("cuda:{} {} ({:?})", d.ordinal, d.name, d.compute_capability);
//! }
//! let dev = CudaDevice::open(0)?;
//! # Ok::<(), bitnet_cuda::Error>(())
//! ```
//!
//! [cudarc]: https://docs.rs/cudarc

pub mod bench;
pub mod context;
pub mod error;
pub mod kernels;
pub mod model;
pub mod selftest;

pub use context::{CudaDevice, DeviceInfo, devices, driver_present, nvrtc_present};
pub use error::{Error, Result};
pub use kernels::{Compiled, KERNEL_NAMES, compile, compile_with};
pub use model::{CudaMemory, CudaModel, CudaOptions};
