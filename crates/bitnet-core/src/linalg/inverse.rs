//! Matrix inverse via LU with partial pivoting.

use faer::{Mat, MatRef};

use super::solve::solve_factored;
use super::{Real, check_square, lu};
use crate::error::Result;
use crate::ops::OpKind;
use crate::parallel::Parallelism;

/// Inverse of a square matrix.
///
/// Errors: [`Error::NotSquare`](crate::Error::NotSquare),
/// [`Error::Singular`](crate::Error::Singular) (see the [module docs](super)).
pub fn inverse<T: Real>(a: MatRef<'_, T>, par: Parallelism<'_>) -> Result<Mat<T>> {
    let n = check_square(OpKind::Inverse, a)?;
    let f = lu(a, par)?;
    f.check_nonsingular(OpKind::Inverse)?;
    Ok(solve_factored(&f, Mat::<T>::identity(n, n).as_ref(), par))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use faer::mat;

    #[test]
    fn two_by_two_and_errors() {
        let a = mat![[4.0f64, 7.0], [2.0, 6.0]];
        let inv = inverse(a.as_ref(), Parallelism::Sequential).unwrap();
        let want = mat![[0.6f64, -0.7], [-0.2, 0.4]];
        for i in 0..2 {
            for j in 0..2 {
                assert!((inv[(i, j)] - want[(i, j)]).abs() < 1e-12);
            }
        }
        let z = Mat::<f32>::zeros(3, 3);
        assert!(matches!(
            inverse(z.as_ref(), Parallelism::Sequential),
            Err(Error::Singular { index: 0, .. })
        ));
        // Scaled-down but well-conditioned matrices are not flagged.
        let tiny = mat![[1e-30f64, 0.0], [0.0, 1e-30]];
        assert!(inverse(tiny.as_ref(), Parallelism::Sequential).is_ok());
        let rect = Mat::<f64>::zeros(1, 2);
        assert!(matches!(
            inverse(rect.as_ref(), Parallelism::Sequential),
            Err(Error::NotSquare { .. })
        ));
    }
}
