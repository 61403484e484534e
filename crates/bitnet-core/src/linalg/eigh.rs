//! Symmetric eigendecomposition `A = V diag(w) Vᵀ`.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::{Mat, MatRef};

use super::{Real, check_square};
use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::parallel::Parallelism;

/// Eigenpairs of a symmetric matrix.
#[derive(Clone, Debug)]
pub struct Eigh<T> {
    /// Eigenvalues in ascending order.
    pub w: Vec<T>,
    /// Orthonormal eigenvectors as columns, matching `w`.
    pub v: Mat<T>,
}

/// Eigendecomposition of a symmetric matrix. Only the lower triangle is
/// read. Errors: [`Error::NotSquare`], [`Error::NoConvergence`].
pub fn eigh<T: Real>(a: MatRef<'_, T>, par: Parallelism<'_>) -> Result<Eigh<T>> {
    let op = OpKind::Eigh;
    let n = check_square(op, a)?;
    par.run(|par| {
        let mut v = Mat::<T>::zeros(n, n);
        let mut w = Diag::<T>::zeros(n);
        let mut mem = MemBuffer::new(evd::self_adjoint_evd_scratch::<T>(
            n,
            ComputeEigenvectors::Yes,
            par,
            Default::default(),
        ));
        evd::self_adjoint_evd(
            a,
            w.as_mut(),
            Some(v.as_mut()),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|_| Error::NoConvergence { op })?;
        Ok(Eigh {
            w: w.column_vector().iter().copied().collect(),
            v,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::mat;

    #[test]
    fn known_eigenvalues_and_errors() {
        let a = mat![[2.0f64, 1.0], [1.0, 2.0]];
        let e = eigh(a.as_ref(), Parallelism::Sequential).unwrap();
        assert!((e.w[0] - 1.0).abs() < 1e-12 && (e.w[1] - 3.0).abs() < 1e-12);
        let v0 = (e.v[(0, 0)], e.v[(1, 0)]);
        assert!((v0.0 + v0.1).abs() < 1e-12, "eigvec of 1 is (1,-1)/sqrt2");
        let rect = Mat::<f32>::zeros(3, 2);
        assert!(matches!(
            eigh(rect.as_ref(), Parallelism::Sequential),
            Err(Error::NotSquare {
                rows: 3,
                cols: 2,
                ..
            })
        ));
    }
}
