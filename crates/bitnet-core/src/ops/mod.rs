//! Tensor operations (f32 compute).
//!
//! # Design: pure ops, ready for an autograd tape
//!
//! Every op is a free function that takes its inputs by reference and returns
//! a freshly allocated output tensor; no op mutates an input or its storage
//! (views share storage, but storage is immutable behind an `Arc`). Each op
//! also has a stable identity, [`OpKind`], whose [`OpKind::name`] appears in
//! every error it returns.
//!
//! Those two properties are what a reverse-mode autograd tape needs: a later
//! `Tape` can wrap each call, recording `(OpKind, inputs, output)` — the
//! inputs are cheap `Tensor` clones that stay valid because nothing mutates
//! them — and replay the records backwards with per-`OpKind` gradient rules.
//! No op needs rewriting to add that.
//!
//! # Dtypes and layouts
//!
//! Compute is in `f32`. Unless an op says otherwise, a non-`f32` input yields
//! [`Error::DTypeMismatch`]; convert with
//! [`Tensor::to_dtype`](crate::Tensor::to_dtype) first. Strided views
//! (after `transpose`/`narrow`) are accepted everywhere and read correctly.

mod binary;
mod embedding;
mod exp;
mod kind;
mod matmul;
mod norm;
mod reduce;
mod rope;
mod round;
pub mod rows;
mod softmax;
mod unary;

pub use binary::{add, mul, sub};
pub use embedding::embedding;
pub use exp::{exp_fast, exp_in_place};
pub use kind::OpKind;
pub use matmul::matmul;
pub use norm::rms_norm;
pub use reduce::{argmax_last_dim, max_last_dim, sum_last_dim};
pub use rope::rope_rotate_half;
pub use round::round_half_even_small;
pub use softmax::softmax_last_dim;
pub use unary::{relu, relu2, scale, silu};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Splits `x` into `(rows, last_dim)` for last-dim ops, rejecting rank-0
/// inputs and an empty last dimension.
fn rows_and_last(op: OpKind, x: &Tensor) -> Result<(usize, usize)> {
    let last = x.shape().last_dim().ok_or_else(|| Error::RankMismatch {
        op,
        expected: ">= 1",
        shape: x.shape().clone(),
    })?;
    if last == 0 {
        return Err(Error::EmptyTensor {
            op,
            shape: x.shape().clone(),
        });
    }
    Ok((x.elem_count() / last, last))
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::Tensor;

    pub(crate) fn t(data: &[f32], dims: &[usize]) -> Tensor {
        Tensor::from_slice(data, dims).expect("test tensor")
    }

    pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "length mismatch");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "index {i}: got {g}, want {w}");
        }
    }
}
