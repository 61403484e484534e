//! Cholesky factorization `A = L Lᵀ` of a symmetric positive definite matrix.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{self, LltError};
use faer::{Mat, MatRef};

use super::{Real, check_square};
use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::parallel::Parallelism;

/// Returns the lower-triangular `L` with `A = L Lᵀ`.
///
/// Only the lower triangle of `a` is read (symmetry is assumed, not checked).
/// Errors: [`Error::NotSquare`], [`Error::NotPositiveDefinite`].
pub fn cholesky<T: Real>(a: MatRef<'_, T>, par: Parallelism<'_>) -> Result<Mat<T>> {
    let op = OpKind::Cholesky;
    let n = check_square(op, a)?;
    par.run(|par| {
        let mut l = Mat::from_fn(n, n, |i, j| if i >= j { a[(i, j)] } else { T::zero_impl() });
        let mut mem = MemBuffer::new(factor::cholesky_in_place_scratch::<T>(
            n,
            par,
            Default::default(),
        ));
        factor::cholesky_in_place(
            l.as_mut(),
            Default::default(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|e| match e {
            LltError::NonPositivePivot { index } => Error::NotPositiveDefinite { op, index },
        })?;
        // faer leaves the strict upper triangle untouched; clear it so `L` is
        // truly lower-triangular.
        for j in 1..n {
            for i in 0..j {
                l[(i, j)] = T::zero_impl();
            }
        }
        Ok(l)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_util::{max_abs_diff, mul};
    use faer::mat;

    #[test]
    fn spd_reconstructs() {
        let a = mat![[4.0f64, 2.0, 0.4], [2.0, 5.0, 1.0], [0.4, 1.0, 3.0]];
        let l = cholesky(a.as_ref(), Parallelism::Sequential).unwrap();
        assert_eq!(l[(0, 1)], 0.0);
        assert!(max_abs_diff(mul(l.as_ref(), l.transpose()).as_ref(), a.as_ref()) < 1e-12);
    }

    #[test]
    fn errors() {
        let indef = mat![[1.0f64, 2.0], [2.0, 1.0]];
        assert!(matches!(
            cholesky(indef.as_ref(), Parallelism::Sequential),
            Err(Error::NotPositiveDefinite { .. })
        ));
        let neg = mat![[-1.0f32]];
        assert!(matches!(
            cholesky(neg.as_ref(), Parallelism::Sequential),
            Err(Error::NotPositiveDefinite { index: 0, .. })
        ));
        let rect = Mat::<f64>::zeros(2, 3);
        assert!(matches!(
            cholesky(rect.as_ref(), Parallelism::Sequential),
            Err(Error::NotSquare {
                rows: 2,
                cols: 3,
                ..
            })
        ));
    }
}
