//! Linear solve `A X = B` via LU with partial pivoting.

use faer::linalg::triangular_solve;
use faer::{Mat, MatRef};

use super::{Lu, Real, check_square, lu};
use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::parallel::Parallelism;

/// Solves `A X = B` for square `a` (`n × n`) and `b` (`n × k`).
///
/// Errors: [`Error::NotSquare`], [`Error::ShapeMismatch`] if `b` has the
/// wrong row count, [`Error::Singular`] (see the [module docs](super)).
pub fn solve<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>, par: Parallelism<'_>) -> Result<Mat<T>> {
    let op = OpKind::Solve;
    let n = check_square(op, a)?;
    if b.nrows() != n {
        return Err(Error::ShapeMismatch {
            op,
            lhs: [a.nrows(), a.ncols()].into(),
            rhs: [b.nrows(), b.ncols()].into(),
            reason: "rhs must have as many rows as the matrix",
        });
    }
    let f = lu(a, par)?;
    f.check_nonsingular(op)?;
    Ok(solve_factored(&f, b, par))
}

/// `X = U⁻¹ L⁻¹ (P B)` for an already-checked factorization.
pub(crate) fn solve_factored<T: Real>(f: &Lu<T>, b: MatRef<'_, T>, par: Parallelism<'_>) -> Mat<T> {
    par.run(|par| {
        let mut x = Mat::from_fn(b.nrows(), b.ncols(), |i, j| b[(f.perm[i], j)]);
        triangular_solve::solve_unit_lower_triangular_in_place(f.l.as_ref(), x.as_mut(), par);
        triangular_solve::solve_upper_triangular_in_place(f.u.as_ref(), x.as_mut(), par);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_util::{max_abs_diff, mul};
    use faer::mat;

    #[test]
    fn solves_multiple_rhs() {
        let a = mat![[0.0f64, 2.0, 1.0], [1.0, 1.0, 0.0], [4.0, -1.0, 3.0]];
        let b = mat![[1.0f64, 0.0], [2.0, 1.0], [3.0, -1.0]];
        let x = solve(a.as_ref(), b.as_ref(), Parallelism::Sequential).unwrap();
        assert!(max_abs_diff(mul(a.as_ref(), x.as_ref()).as_ref(), b.as_ref()) < 1e-12);
    }

    #[test]
    fn errors() {
        let sing = mat![[1.0f64, 2.0], [2.0, 4.0]];
        let b = mat![[1.0f64], [1.0]];
        let e = solve(sing.as_ref(), b.as_ref(), Parallelism::Sequential).unwrap_err();
        assert!(matches!(
            e,
            Error::Singular {
                op: OpKind::Solve,
                ..
            }
        ));
        let a = mat![[1.0f64, 0.0], [0.0, 1.0]];
        let bad = mat![[1.0f64], [1.0], [1.0]];
        assert!(matches!(
            solve(a.as_ref(), bad.as_ref(), Parallelism::Sequential),
            Err(Error::ShapeMismatch { .. })
        ));
        let rect = Mat::<f64>::zeros(2, 3);
        assert!(matches!(
            solve(rect.as_ref(), b.as_ref(), Parallelism::Sequential),
            Err(Error::NotSquare { .. })
        ));
    }
}
