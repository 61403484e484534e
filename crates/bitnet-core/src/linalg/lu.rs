//! LU factorization with partial (row) pivoting, plus the singularity test
//! shared by `inverse` and `solve`.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::lu::partial_pivoting::factor;
use faer::{Mat, MatRef};

use super::Real;
use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::parallel::Parallelism;

/// `P A = L U` for an `m × n` matrix, `k = min(m, n)`.
#[derive(Clone, Debug)]
pub struct Lu<T> {
    /// Row permutation: row `i` of `P A` is row `perm[i]` of `A`.
    pub perm: Vec<usize>,
    /// `m × k`, unit lower triangular.
    pub l: Mat<T>,
    /// `k × n`, upper triangular.
    pub u: Mat<T>,
}

impl<T: Real> Lu<T> {
    /// Sign of the permutation (+1 even, -1 odd).
    pub fn perm_sign(&self) -> T {
        let mut seen = vec![false; self.perm.len()];
        let mut odd = false;
        for start in 0..self.perm.len() {
            let mut len = 0usize;
            let mut i = start;
            while !seen[i] {
                seen[i] = true;
                i = self.perm[i];
                len += 1;
            }
            if len > 0 && len.is_multiple_of(2) {
                odd = !odd;
            }
        }
        let one = T::one_impl();
        if odd { T::zero_impl() - one } else { one }
    }

    /// Returns `Err(Error::Singular)` if some pivot `|U[i,i]| <= n·ε·max|U|`.
    pub(crate) fn check_nonsingular(&self, op: OpKind) -> Result<()> {
        let n = self.u.nrows();
        let mut max = T::zero_impl();
        for j in 0..self.u.ncols() {
            for i in 0..n {
                let v = self.u[(i, j)].magnitude();
                if v > max {
                    max = v;
                }
            }
        }
        let tol = T::from_usize(n) * T::EPSILON * max;
        for i in 0..n {
            let p = self.u[(i, i)].magnitude();
            // A NaN pivot compares as unordered and is also flagged.
            if p.partial_cmp(&tol) != Some(std::cmp::Ordering::Greater) {
                return Err(Error::Singular {
                    op,
                    n,
                    index: i,
                    pivot: p.into(),
                    tolerance: tol.into(),
                });
            }
        }
        Ok(())
    }
}

/// LU with partial pivoting of `a` (any shape). Never fails on singular
/// input: a zero pivot just shows up in `U`.
pub fn lu<T: Real>(a: MatRef<'_, T>, par: Parallelism<'_>) -> Result<Lu<T>> {
    let (m, n) = (a.nrows(), a.ncols());
    let k = m.min(n);
    Ok(par.run(|par| {
        let mut f = a.to_owned();
        let mut fwd = vec![0usize; m];
        let mut inv = vec![0usize; m];
        let mut mem = MemBuffer::new(factor::lu_in_place_scratch::<usize, T>(
            m,
            n,
            par,
            Default::default(),
        ));
        factor::lu_in_place(
            f.as_mut(),
            &mut fwd,
            &mut inv,
            par,
            MemStack::new(&mut mem),
            Default::default(),
        );
        let zero = T::zero_impl();
        let l = Mat::from_fn(m, k, |i, j| match i.cmp(&j) {
            std::cmp::Ordering::Greater => f[(i, j)],
            std::cmp::Ordering::Equal => T::one_impl(),
            std::cmp::Ordering::Less => zero,
        });
        let u = Mat::from_fn(k, n, |i, j| if i <= j { f[(i, j)] } else { zero });
        Lu { perm: fwd, l, u }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_util::{max_abs_diff, mul};
    use faer::mat;

    #[test]
    fn reconstructs_with_pivoting() {
        let a = mat![[0.0f64, 2.0, 1.0], [1.0, 1.0, 0.0], [4.0, -1.0, 3.0]];
        let r = lu(a.as_ref(), Parallelism::Sequential).unwrap();
        let lu_prod = mul(r.l.as_ref(), r.u.as_ref());
        let pa = Mat::from_fn(3, 3, |i, j| a[(r.perm[i], j)]);
        assert!(max_abs_diff(lu_prod.as_ref(), pa.as_ref()) < 1e-14);
        assert_eq!(r.perm[0], 2, "largest pivot in column 0 is row 2");
        for i in 0..3 {
            assert_eq!(r.l[(i, i)], 1.0);
        }
    }

    #[test]
    fn rectangular() {
        let a = mat![[1.0f64, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let r = lu(a.as_ref(), Parallelism::Sequential).unwrap();
        assert_eq!(
            (r.l.nrows(), r.l.ncols(), r.u.nrows(), r.u.ncols()),
            (2, 2, 2, 3)
        );
        let pa = Mat::from_fn(2, 3, |i, j| a[(r.perm[i], j)]);
        assert!(max_abs_diff(mul(r.l.as_ref(), r.u.as_ref()).as_ref(), pa.as_ref()) < 1e-14);
    }

    #[test]
    fn perm_sign_and_singularity() {
        let swap = Lu::<f64> {
            perm: vec![1, 0, 2],
            l: Mat::identity(3, 3),
            u: Mat::identity(3, 3),
        };
        assert_eq!(swap.perm_sign(), -1.0);
        let cyc = Lu::<f64> {
            perm: vec![1, 2, 0],
            ..swap.clone()
        };
        assert_eq!(cyc.perm_sign(), 1.0);
        assert!(swap.check_nonsingular(OpKind::Lu).is_ok());
        let sing = mat![[1.0f64, 2.0], [2.0, 4.0]];
        let r = lu(sing.as_ref(), Parallelism::Sequential).unwrap();
        assert!(matches!(
            r.check_nonsingular(OpKind::Inverse),
            Err(Error::Singular { index: 1, .. })
        ));
    }
}
