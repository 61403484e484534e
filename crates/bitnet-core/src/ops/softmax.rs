//! Numerically stable softmax over the last dimension.

use crate::error::{Error, Result};
use crate::ops::{OpKind, rows_and_last};
use crate::tensor::Tensor;

/// Softmax over the last dimension, computed as `exp(x - max) / sum`.
///
/// A row whose entries are all `-inf` (fully masked) has no defined softmax;
/// rather than silently producing NaN or zeros, this returns
/// [`Error::AllMaskedRow`] naming the row. NaN inputs propagate to NaN
/// outputs for their row.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let op = OpKind::Softmax;
    let (_, n) = rows_and_last(op, x)?;
    let data = x.f32_data(op)?;
    let mut out = data.to_vec();
    for (r, row) in out.chunks_exact_mut(n).enumerate() {
        if !super::rows::softmax_in_place(row) {
            return Err(Error::AllMaskedRow { op, row: r });
        }
    }
    Tensor::from_vec(out, x.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, t};

    #[test]
    fn rows_sum_to_one_and_match_naive() {
        let vals = [1.0, 2.0, 3.0, -1.0, 0.0, 1000.0];
        let y = softmax_last_dim(&t(&vals, &[2, 3])).unwrap().to_vec_f32();
        for row in y.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let e: Vec<f32> = [1.0f32, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let s: f32 = e.iter().sum();
        assert_close(&y[..3], &[e[0] / s, e[1] / s, e[2] / s], 1e-6);
        // Large logit does not overflow thanks to max subtraction.
        assert_close(&y[3..], &[0.0, 0.0, 1.0], 1e-6);
    }

    #[test]
    fn masked_entries_and_strided() {
        let ninf = f32::NEG_INFINITY;
        let y = softmax_last_dim(&t(&[0.0, ninf, 0.0], &[1, 3])).unwrap();
        assert_eq!(y.to_vec_f32(), vec![0.5, 0.0, 0.5]);
        let x = t(&[1.0, 5.0, 2.0, 6.0], &[2, 2]).transpose(0, 1).unwrap();
        let got = softmax_last_dim(&x).unwrap().to_vec_f32();
        let want = softmax_last_dim(&x.contiguous()).unwrap().to_vec_f32();
        assert_eq!(got, want);
    }

    #[test]
    fn fully_masked_row_is_error() {
        let ninf = f32::NEG_INFINITY;
        let e = softmax_last_dim(&t(&[0.0, 1.0, ninf, ninf], &[2, 2])).unwrap_err();
        assert!(matches!(e, Error::AllMaskedRow { row: 1, .. }));
        assert!(matches!(
            softmax_last_dim(&t(&[], &[3, 0])),
            Err(Error::EmptyTensor { .. })
        ));
    }
}
