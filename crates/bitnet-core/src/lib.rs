//! `bitnet-core`: tensors, f32 neural-network ops and dense linear algebra
//! for BitNet-Rust.
//!
//! - [`Tensor`]: `Arc`-shared storage plus a strided [`Layout`]; views are
//!   cheap and never copy.
//! - [`ops`]: pure f32 operations (matmul, broadcasting arithmetic,
//!   RMSNorm, softmax, RoPE, activations, embedding, reductions).
//! - [`linalg`]: SVD, QR, Cholesky, LU, determinant, inverse, solve and
//!   symmetric eigendecomposition in f32 and f64 on top of [`faer`].
//! - [`Parallelism`]: explicit choice of sequential execution or a
//!   caller-owned rayon pool; there is no global pool.
//!
//! ```
//! use bitnet_core::{ops, Parallelism, Tensor};
//!
//! let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2])?;
//! let w = Tensor::from_vec(vec![1.0f32, 1.0], [2])?;
//! let h = ops::rms_norm(&x, &w, 1e-6)?;
//! let y = ops::matmul(&h, &x.transpose(0, 1)?, Parallelism::Sequential)?;
//! assert_eq!(y.dims(), &[2, 2]);
//! # Ok::<(), bitnet_core::Error>(())
//! ```

pub mod autograd;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod linalg;
pub mod ops;
pub mod parallel;
pub mod shape;
pub mod simd;
pub mod storage;
pub mod system;
pub mod tensor;
mod view;

pub use dtype::{DType, WithDType};
pub use error::{Error, Result};
pub use faer;
pub use layout::Layout;
pub use ops::OpKind;
pub use parallel::{Parallelism, build_pool};
pub use shape::Shape;
pub use storage::Storage;
pub use tensor::Tensor;
