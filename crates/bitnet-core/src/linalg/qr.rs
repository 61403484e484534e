//! Thin QR decomposition (Householder, no pivoting).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder;
use faer::linalg::qr::no_pivoting::factor;
use faer::{Conj, Mat, MatRef};

use super::Real;
use crate::error::Result;
use crate::parallel::Parallelism;

/// Thin QR `A = Q · R` of an `m × n` matrix, `k = min(m, n)`.
#[derive(Clone, Debug)]
pub struct Qr<T> {
    /// `m × k`, orthonormal columns.
    pub q: Mat<T>,
    /// `k × n`, upper trapezoidal.
    pub r: Mat<T>,
}

/// Computes the thin QR decomposition of `a` (any shape). Infallible for
/// finite input; the `Result` keeps the linalg API uniform.
pub fn qr<T: Real>(a: MatRef<'_, T>, par: Parallelism<'_>) -> Result<Qr<T>> {
    let (m, n) = (a.nrows(), a.ncols());
    let k = m.min(n);
    Ok(par.run(|par| {
        let mut f = a.to_owned();
        let bs = factor::recommended_block_size::<T>(m, n);
        let mut coeff = Mat::<T>::zeros(bs, k);
        let mut mem = MemBuffer::new(factor::qr_in_place_scratch::<T>(
            m,
            n,
            bs,
            par,
            Default::default(),
        ));
        factor::qr_in_place(
            f.as_mut(),
            coeff.as_mut(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        );
        let mut q = Mat::<T>::identity(m, k);
        let mut mem = MemBuffer::new(
            householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<T>(
                m, bs, k,
            ),
        );
        // `f`'s strictly-lower part holds the Householder basis.
        householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
            f.as_ref().subcols(0, k),
            coeff.as_ref(),
            Conj::No,
            q.as_mut(),
            par,
            MemStack::new(&mut mem),
        );
        let r = Mat::from_fn(k, n, |i, j| if i <= j { f[(i, j)] } else { T::zero_impl() });
        Qr { q, r }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_util::{max_abs_diff, mul};
    use faer::mat;

    #[test]
    fn tall_and_wide() {
        let tall = mat![[1.0f64, 2.0], [3.0, 4.0], [5.0, 7.0]];
        let wide = mat![[1.0f64, 2.0, 0.5], [3.0, -4.0, 1.0]];
        for a in [tall, wide] {
            let r = qr(a.as_ref(), Parallelism::Sequential).unwrap();
            let k = a.nrows().min(a.ncols());
            assert_eq!((r.q.ncols(), r.r.nrows()), (k, k));
            assert!(max_abs_diff(mul(r.q.as_ref(), r.r.as_ref()).as_ref(), a.as_ref()) < 1e-12);
            let qtq = mul(r.q.transpose(), r.q.as_ref());
            assert!(max_abs_diff(qtq.as_ref(), Mat::<f64>::identity(k, k).as_ref()) < 1e-12);
            for i in 0..k {
                for j in 0..i.min(r.r.ncols()) {
                    assert_eq!(r.r[(i, j)], 0.0);
                }
            }
        }
    }
}
