//! Reductions over the last dimension: `argmax`, `sum`, `max`.

use crate::error::Result;
use crate::ops::{OpKind, rows_and_last};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Index of the largest element in each last-dim row (row-major order over
/// the leading dims).
///
/// NaN is treated as smaller than every number, so it is only chosen when a
/// row is entirely NaN (then index 0). Ties resolve to the first occurrence.
pub fn argmax_last_dim(x: &Tensor) -> Result<Vec<usize>> {
    let op = OpKind::Argmax;
    let (_, n) = rows_and_last(op, x)?;
    let data = x.f32_data(op)?;
    Ok(data
        .chunks_exact(n)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate().skip(1) {
                // `!(b >= v)` would let NaN win; comparing only when `v > b` or
                // the incumbent is NaN keeps NaN as the minimum.
                if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                    best = i;
                }
            }
            best
        })
        .collect())
}

fn reduce_last(op: OpKind, x: &Tensor, f: impl Fn(&[f32]) -> f32) -> Result<Tensor> {
    let (_, n) = rows_and_last(op, x)?;
    let data = x.f32_data(op)?;
    let out: Vec<f32> = data.chunks_exact(n).map(f).collect();
    let dims = &x.dims()[..x.rank() - 1];
    Tensor::from_vec(out, Shape::from(dims))
}

/// Sum over the last dimension; the output drops that dimension.
pub fn sum_last_dim(x: &Tensor) -> Result<Tensor> {
    reduce_last(OpKind::Sum, x, |row| row.iter().sum())
}

/// Maximum over the last dimension; the output drops that dimension.
/// NaN propagates (a row containing NaN yields NaN), like `torch.max`.
pub fn max_last_dim(x: &Tensor) -> Result<Tensor> {
    reduce_last(OpKind::Max, x, |row| {
        row.iter().copied().fold(f32::NEG_INFINITY, |m, v| {
            if v.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(v)
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::ops::test_util::t;

    #[test]
    fn argmax_rows_ties_and_nan() {
        let x = t(&[1.0, 3.0, 3.0, -1.0, -5.0, -2.0], &[2, 3]);
        assert_eq!(argmax_last_dim(&x).unwrap(), vec![1, 0]);
        let nan = f32::NAN;
        let y = t(&[nan, 1.0, nan, 2.0, nan, nan], &[3, 2]);
        assert_eq!(argmax_last_dim(&y).unwrap(), vec![1, 1, 0]);
        let xt = x.transpose(0, 1).unwrap(); // [[1,-1],[3,-5],[3,-2]]
        assert_eq!(argmax_last_dim(&xt).unwrap(), vec![0, 0, 0]);
    }

    #[test]
    fn sum_and_max() {
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let s = sum_last_dim(&x).unwrap();
        assert_eq!(s.dims(), &[2]);
        assert_eq!(s.to_vec_f32(), vec![6.0, 15.0]);
        assert_eq!(max_last_dim(&x).unwrap().to_vec_f32(), vec![3.0, 6.0]);
        let xt = x.transpose(0, 1).unwrap();
        assert_eq!(sum_last_dim(&xt).unwrap().to_vec_f32(), vec![5.0, 7.0, 9.0]);
        let v = t(&[1.0, f32::NAN], &[2]);
        let m = max_last_dim(&v).unwrap();
        assert_eq!(m.rank(), 0);
        assert!(m.to_vec_f32()[0].is_nan());
    }

    #[test]
    fn empty_is_error() {
        assert!(matches!(
            argmax_last_dim(&t(&[], &[2, 0])),
            Err(Error::EmptyTensor { .. })
        ));
        assert!(sum_last_dim(&t(&[], &[0])).is_err());
    }
}
