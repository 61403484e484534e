//! RMS normalization over the last dimension.

use crate::error::{Error, Result};
use crate::ops::{OpKind, rows_and_last};
use crate::tensor::Tensor;

/// `x * (1 / sqrt(mean(x^2) + eps)) * weight` over the last dim, in `f32`.
///
/// The operation order (mean of squares, reciprocal square root, multiply by
/// it, then by `weight`) mirrors the PyTorch reference so outputs match
/// bit-for-bit in the common case. `weight` must be 1-D with the size of the
/// last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let op = OpKind::RmsNorm;
    let (rows, h) = rows_and_last(op, x)?;
    if weight.dims() != [h] {
        return Err(Error::ShapeMismatch {
            op,
            lhs: x.shape().clone(),
            rhs: weight.shape().clone(),
            reason: "weight must be 1-D with the size of x's last dim",
        });
    }
    let xd = x.f32_data(op)?;
    let wd = weight.f32_data(op)?;
    let mut out = vec![0.0f32; rows * h];
    super::rows::rms_norm_into(&xd, &wd, eps, &mut out);
    Tensor::from_vec(out, x.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, t};

    #[test]
    fn matches_hand_computation() {
        let x = t(&[1.0, 2.0, 3.0, -4.0, 0.0, 4.0], &[2, 3]);
        let w = t(&[1.0, 0.5, 2.0], &[3]);
        let y = rms_norm(&x, &w, 1e-6).unwrap().to_vec_f32();
        let r0 = 1.0 / ((14.0f32 / 3.0) + 1e-6).sqrt();
        let r1 = 1.0 / ((32.0f32 / 3.0) + 1e-6).sqrt();
        let want = [
            r0,
            2.0 * r0 * 0.5,
            3.0 * r0 * 2.0,
            -4.0 * r1,
            0.0,
            4.0 * r1 * 2.0,
        ];
        assert_close(&y, &want, 1e-6);
    }

    #[test]
    fn zero_row_uses_eps_and_strided_input() {
        let x = t(&[0.0, 0.0], &[1, 2]);
        let w = t(&[1.0, 1.0], &[2]);
        assert_eq!(rms_norm(&x, &w, 1e-5).unwrap().to_vec_f32(), vec![0.0, 0.0]);
        let m = t(&[3.0, 1.0, 4.0, 1.0], &[2, 2]).transpose(0, 1).unwrap();
        let got = rms_norm(&m, &w, 0.0).unwrap().to_vec_f32();
        let want = rms_norm(&m.contiguous(), &w, 0.0).unwrap().to_vec_f32();
        assert_eq!(got, want);
        let r = 1.0 / 12.5f32.sqrt();
        assert_close(&got, &[3.0 * r, 4.0 * r, 1.0, 1.0], 1e-6);
    }

    #[test]
    fn errors() {
        let x = t(&[1.0; 6], &[2, 3]);
        assert!(matches!(
            rms_norm(&x, &t(&[1.0; 2], &[2]), 1e-6),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            rms_norm(&t(&[], &[2, 0]), &t(&[], &[0]), 1e-6),
            Err(Error::EmptyTensor { .. })
        ));
    }
}
