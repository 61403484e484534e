//! Determinant via LU.

use faer::MatRef;

use super::{Real, check_square, lu};
use crate::error::Result;
use crate::ops::OpKind;
use crate::parallel::Parallelism;

/// Determinant of a square matrix: `sign(P) · Π U[i,i]`. The empty matrix
/// has determinant 1. Singular input is not an error (the result is ~0).
pub fn det<T: Real>(a: MatRef<'_, T>, par: Parallelism<'_>) -> Result<T> {
    let n = check_square(OpKind::Det, a)?;
    let f = lu(a, par)?;
    let mut d = f.perm_sign();
    for i in 0..n {
        d *= f.u[(i, i)];
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use faer::{Mat, mat};

    #[test]
    fn known_values() {
        let a = mat![[0.0f64, 2.0, 1.0], [1.0, 1.0, 0.0], [4.0, -1.0, 3.0]];
        // Cofactor expansion along row 0: -2*(3-0) + 1*(-1-4) = -11.
        assert!((det(a.as_ref(), Parallelism::Sequential).unwrap() + 11.0).abs() < 1e-12);
        let s = mat![[0.0f32, 1.0], [1.0, 0.0]];
        assert_eq!(det(s.as_ref(), Parallelism::Sequential).unwrap(), -1.0);
        let e = Mat::<f64>::zeros(0, 0);
        assert_eq!(det(e.as_ref(), Parallelism::Sequential).unwrap(), 1.0);
        let r = Mat::<f64>::zeros(2, 1);
        assert!(matches!(
            det(r.as_ref(), Parallelism::Sequential),
            Err(Error::NotSquare { .. })
        ));
    }
}
