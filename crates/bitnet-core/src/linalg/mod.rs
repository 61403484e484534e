//! Dense linear algebra in `f32` and `f64` on top of [`faer`], one file per
//! algorithm.
//!
//! Functions take a [`faer::MatRef`] and a [`Parallelism`](crate::Parallelism)
//! and return owned [`faer::Mat`] results in small structs. Use
//! [`tensor_to_mat`] / [`mat_to_tensor`] to move between 2-D `f32` tensors and
//! faer matrices.
//!
//! # Singularity
//!
//! [`inverse`] and [`solve`] factor `A = Pᵀ L U` with partial pivoting and
//! declare `A` singular (returning [`Error::Singular`])
//! when some pivot satisfies `|U[i,i]| <= n · ε · max|U|`, where `ε` is the
//! machine epsilon of the scalar type. The threshold is relative so that
//! scaling `A` does not change the verdict, and the `n` factor accounts for
//! rounding growth during elimination. [`det`] does not apply this test: it
//! returns the (possibly tiny) product of pivots.
//!
//! ```
//! use bitnet_core::faer::mat;
//! use bitnet_core::{linalg, Parallelism};
//!
//! let a = mat![[4.0f64, 1.0], [1.0, 3.0]];
//! let x = linalg::solve(a.as_ref(), mat![[1.0f64], [2.0]].as_ref(), Parallelism::Sequential)?;
//! assert!((4.0 * x[(0, 0)] + x[(1, 0)] - 1.0).abs() < 1e-12);
//! let e = linalg::eigh(a.as_ref(), Parallelism::Sequential)?;
//! assert!(e.w[0] <= e.w[1]);
//! # Ok::<(), bitnet_core::Error>(())
//! ```

mod cholesky;
mod convert;
mod det;
mod eigh;
mod inverse;
mod lu;
mod qr;
mod solve;
mod svd;

pub use cholesky::cholesky;
pub use convert::{mat_to_tensor, tensor_to_mat};
pub use det::det;
pub use eigh::{Eigh, eigh};
pub use inverse::inverse;
pub use lu::{Lu, lu};
pub use qr::{Qr, qr};
pub use solve::solve;
pub use svd::{Svd, svd};

use std::fmt::Debug;

use faer::MatRef;
use faer::traits::RealField;

use crate::error::{Error, Result};
use crate::ops::OpKind;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Scalar types the decompositions support: `f32` and `f64` (sealed).
pub trait Real: RealField + Copy + Debug + Send + Sync + Into<f64> + sealed::Sealed {
    /// Machine epsilon.
    const EPSILON: Self;
    /// Conversion used for tolerances (`n · ε`); exact for realistic sizes.
    fn from_usize(n: usize) -> Self;
    /// Absolute value.
    fn magnitude(self) -> Self;
}

impl Real for f32 {
    const EPSILON: Self = f32::EPSILON;
    fn from_usize(n: usize) -> Self {
        n as f32
    }
    fn magnitude(self) -> Self {
        self.abs()
    }
}

impl Real for f64 {
    const EPSILON: Self = f64::EPSILON;
    fn from_usize(n: usize) -> Self {
        n as f64
    }
    fn magnitude(self) -> Self {
        self.abs()
    }
}

fn check_square<T>(op: OpKind, a: MatRef<'_, T>) -> Result<usize> {
    if a.nrows() != a.ncols() {
        return Err(Error::NotSquare {
            op,
            rows: a.nrows(),
            cols: a.ncols(),
        });
    }
    Ok(a.nrows())
}

#[cfg(test)]
pub(crate) mod test_util {
    use faer::{Mat, MatRef};

    use super::Real;

    pub(crate) fn max_abs_diff<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> f64 {
        assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
        let mut m = 0.0f64;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                let d: f64 = (a[(i, j)] - b[(i, j)]).magnitude().into();
                m = m.max(d);
            }
        }
        m
    }

    pub(crate) fn mul<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> Mat<T> {
        Mat::from_fn(a.nrows(), b.ncols(), |i, j| {
            let mut s = T::zero_impl();
            for k in 0..a.ncols() {
                s += a[(i, k)] * b[(k, j)];
            }
            s
        })
    }
}
