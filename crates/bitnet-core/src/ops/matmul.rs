//! Matrix multiplication through faer's GEMM: 2-D, batched 3-D, and 3-D × 2-D
//! (the right operand broadcast over the batch).

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef};

use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::parallel::Parallelism;
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Matrix product of `f32` tensors.
///
/// Accepted shapes: `[m,k] x [k,n] -> [m,n]`, `[b,m,k] x [b,k,n] -> [b,m,n]`,
/// and `[b,m,k] x [k,n] -> [b,m,n]`. Strided inputs are copied to row-major
/// first. `k == 0` yields zeros.
///
/// ```
/// use bitnet_core::{Parallelism, Tensor, ops};
/// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2])?;
/// let id = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2])?;
/// let c = ops::matmul(&a, &id, Parallelism::Sequential)?;
/// assert_eq!(c.to_vec_f32(), vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), bitnet_core::Error>(())
/// ```
pub fn matmul(a: &Tensor, b: &Tensor, par: Parallelism<'_>) -> Result<Tensor> {
    let op = OpKind::Matmul;
    let mismatch = |reason| Error::ShapeMismatch {
        op,
        lhs: a.shape().clone(),
        rhs: b.shape().clone(),
        reason,
    };
    let (batch, m, k, b_batched) = match (a.dims(), b.dims()) {
        (&[m, k], &[_, _]) => (1, m, k, false),
        (&[bs, m, k], &[bb, _, _]) => {
            if bs != bb {
                return Err(mismatch("batch dimensions must agree"));
            }
            (bs, m, k, true)
        }
        (&[bs, m, k], &[_, _]) => (bs, m, k, false),
        (&[_, _], _) | (&[_, _, _], _) => {
            return Err(Error::RankMismatch {
                op,
                expected: "2 (or 3 when lhs is 3-D)",
                shape: b.shape().clone(),
            });
        }
        _ => {
            return Err(Error::RankMismatch {
                op,
                expected: "2 or 3",
                shape: a.shape().clone(),
            });
        }
    };
    let bd = b.dims();
    let (kb, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
    if kb != k {
        return Err(mismatch(
            "inner dimensions must agree (lhs last dim == rhs second-to-last dim)",
        ));
    }
    let da = a.f32_data(op)?;
    let db = b.f32_data(op)?;
    let mut out = vec![0.0f32; batch * m * n];
    if k > 0 {
        par.run(|fpar| {
            for (i, dst) in out.chunks_exact_mut(m * n).enumerate() {
                let lhs = MatRef::from_row_major_slice(&da[i * m * k..(i + 1) * m * k], m, k);
                let boff = if b_batched { i * k * n } else { 0 };
                let rhs = MatRef::from_row_major_slice(&db[boff..boff + k * n], k, n);
                let dst = MatMut::from_row_major_slice_mut(dst, m, n);
                faer_matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, fpar);
            }
        });
    }
    let shape = if a.rank() == 3 {
        Shape::from([batch, m, n])
    } else {
        Shape::from([m, n])
    };
    Tensor::from_vec(out, shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::ops::test_util::{assert_close, t};
    use crate::parallel::build_pool;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn seq(m: usize, n: usize, s: f32) -> Vec<f32> {
        (0..m * n).map(|i| ((i as f32) * s).sin()).collect()
    }

    #[test]
    fn two_d_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let (av, bv) = (seq(m, k, 0.3), seq(k, n, 0.7));
        let c = matmul(&t(&av, &[m, k]), &t(&bv, &[k, n]), Parallelism::Sequential).unwrap();
        assert_eq!(c.dims(), &[m, n]);
        assert_close(&c.to_vec_f32(), &naive(&av, &bv, m, k, n), 1e-5);
    }

    #[test]
    fn batched_and_broadcast_rhs() {
        let (bs, m, k, n) = (3, 2, 4, 5);
        let av = seq(bs * m, k, 0.11);
        let bv = seq(bs * k, n, 0.23);
        let a = t(&av, &[bs, m, k]);
        let c = matmul(&a, &t(&bv, &[bs, k, n]), Parallelism::Sequential).unwrap();
        assert_eq!(c.dims(), &[bs, m, n]);
        let got = c.to_vec_f32();
        for i in 0..bs {
            let want = naive(
                &av[i * m * k..][..m * k],
                &bv[i * k * n..][..k * n],
                m,
                k,
                n,
            );
            assert_close(&got[i * m * n..][..m * n], &want, 1e-5);
        }
        let b2 = &bv[..k * n];
        let c2 = matmul(&a, &t(b2, &[k, n]), Parallelism::Sequential).unwrap();
        let got2 = c2.to_vec_f32();
        for i in 0..bs {
            let want = naive(&av[i * m * k..][..m * k], b2, m, k, n);
            assert_close(&got2[i * m * n..][..m * n], &want, 1e-5);
        }
    }

    #[test]
    fn strided_inputs_and_pool() {
        let (m, k, n) = (4, 3, 6);
        let av = seq(k, m, 0.5); // stored as [k, m], used transposed
        let bv = seq(k, n + 2, 0.9); // narrowed to [k, n]
        let a = t(&av, &[k, m]).transpose(0, 1).unwrap();
        let b = t(&bv, &[k, n + 2]).narrow(1, 1, n).unwrap();
        let pool = build_pool(2).unwrap();
        let c = matmul(&a, &b, Parallelism::Pool(&pool)).unwrap();
        let want = naive(&a.to_vec_f32(), &b.to_vec_f32(), m, k, n);
        assert_close(&c.to_vec_f32(), &want, 1e-5);
    }

    #[test]
    fn zero_inner_dim_gives_zeros() {
        let c = matmul(&t(&[], &[2, 0]), &t(&[], &[0, 3]), Parallelism::Sequential).unwrap();
        assert_eq!(c.to_vec_f32(), vec![0.0; 6]);
    }

    #[test]
    fn errors() {
        let a = t(&[0.0; 6], &[2, 3]);
        let b = t(&[0.0; 8], &[4, 2]);
        let e = matmul(&a, &b, Parallelism::Sequential).unwrap_err();
        assert!(matches!(
            e,
            Error::ShapeMismatch {
                op: OpKind::Matmul,
                ..
            }
        ));
        let a3 = t(&[0.0; 12], &[2, 2, 3]);
        let b3 = t(&[0.0; 18], &[3, 3, 2]);
        assert!(matches!(
            matmul(&a3, &b3, Parallelism::Sequential),
            Err(Error::ShapeMismatch { .. })
        ));
        let v = t(&[0.0; 3], &[3]);
        assert!(matches!(
            matmul(&v, &a, Parallelism::Sequential),
            Err(Error::RankMismatch { .. })
        ));
        assert!(matches!(
            matmul(&a, &v, Parallelism::Sequential),
            Err(Error::RankMismatch { .. })
        ));
        let h = a.to_dtype(DType::F16).unwrap();
        let bt = t(&[0.0; 6], &[3, 2]);
        assert!(matches!(
            matmul(&h, &bt, Parallelism::Sequential),
            Err(Error::DTypeMismatch { .. })
        ));
    }
}
