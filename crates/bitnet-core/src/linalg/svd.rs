//! Thin singular value decomposition.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::svd::{self as fsvd, ComputeSvdVectors};
use faer::{Mat, MatRef};

use super::Real;
use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::parallel::Parallelism;

/// Thin SVD `A = U · diag(s) · Vᵀ` of an `m × n` matrix, `k = min(m, n)`.
#[derive(Clone, Debug)]
pub struct Svd<T> {
    /// `m × k`, orthonormal columns.
    pub u: Mat<T>,
    /// `k` singular values, non-negative, in descending order.
    pub s: Vec<T>,
    /// `k × n`, orthonormal rows.
    pub vt: Mat<T>,
}

/// Computes the thin SVD of `a` (any shape).
///
/// ```
/// use bitnet_core::faer::mat;
/// use bitnet_core::{linalg, Parallelism};
///
/// let a = mat![[3.0f64, 0.0], [0.0, -2.0], [0.0, 0.0]];
/// let r = linalg::svd(a.as_ref(), Parallelism::Sequential)?;
/// assert_eq!((r.u.nrows(), r.u.ncols(), r.vt.ncols()), (3, 2, 2));
/// assert!((r.s[0] - 3.0).abs() < 1e-12 && (r.s[1] - 2.0).abs() < 1e-12);
/// # Ok::<(), bitnet_core::Error>(())
/// ```
pub fn svd<T: Real>(a: MatRef<'_, T>, par: Parallelism<'_>) -> Result<Svd<T>> {
    let (m, n) = (a.nrows(), a.ncols());
    let k = m.min(n);
    par.run(|par| {
        let mut u = Mat::<T>::zeros(m, k);
        let mut v = Mat::<T>::zeros(n, k);
        let mut s = Diag::<T>::zeros(k);
        let thin = ComputeSvdVectors::Thin;
        let mut mem = MemBuffer::new(fsvd::svd_scratch::<T>(
            m,
            n,
            thin,
            thin,
            par,
            Default::default(),
        ));
        fsvd::svd(
            a,
            s.as_mut(),
            Some(u.as_mut()),
            Some(v.as_mut()),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|_| Error::NoConvergence { op: OpKind::Svd })?;
        Ok(Svd {
            u,
            s: s.column_vector().iter().copied().collect(),
            vt: v.transpose().to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_util::{max_abs_diff, mul};
    use faer::mat;

    #[test]
    fn rectangular_reconstruction_and_order() {
        let a = mat![[3.0f64, 1.0, 2.0], [-1.0, 4.0, 0.5]];
        let r = svd(a.as_ref(), Parallelism::Sequential).unwrap();
        assert_eq!((r.u.nrows(), r.u.ncols()), (2, 2));
        assert_eq!((r.vt.nrows(), r.vt.ncols()), (2, 3));
        assert!(r.s[0] >= r.s[1] && r.s[1] >= 0.0);
        let us = Mat::from_fn(2, 2, |i, j| r.u[(i, j)] * r.s[j]);
        let rec = mul(us.as_ref(), r.vt.as_ref());
        assert!(max_abs_diff(rec.as_ref(), a.as_ref()) < 1e-12);
    }

    #[test]
    fn known_singular_values_f32() {
        let a = mat![[0.0f32, 2.0], [3.0, 0.0], [0.0, 0.0]];
        let r = svd(a.as_ref(), Parallelism::Sequential).unwrap();
        assert!((r.s[0] - 3.0).abs() < 1e-6 && (r.s[1] - 2.0).abs() < 1e-6);
    }
}
