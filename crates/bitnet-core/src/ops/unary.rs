//! Elementwise unary ops: `scale`, `silu`, `relu`, `relu2`.

use crate::error::Result;
use crate::ops::OpKind;
use crate::tensor::Tensor;

fn map_f32(op: OpKind, x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    let data = x.f32_data(op)?;
    Tensor::from_vec(data.iter().map(|&v| f(v)).collect::<Vec<f32>>(), x.shape())
}

/// `x * factor`.
pub fn scale(x: &Tensor, factor: f32) -> Result<Tensor> {
    map_f32(OpKind::Scale, x, |v| v * factor)
}

/// SiLU / swish: `x * sigmoid(x)`, computed as `x / (1 + exp(-x))`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    map_f32(OpKind::Silu, x, super::rows::silu)
}

/// `max(x, 0)`. NaN stays NaN.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    map_f32(OpKind::Relu, x, relu_scalar)
}

/// Squared ReLU, `max(x, 0)^2` (BitNet b1.58's FFN activation).
pub fn relu2(x: &Tensor) -> Result<Tensor> {
    map_f32(OpKind::Relu2, x, super::rows::relu2)
}

fn relu_scalar(v: f32) -> f32 {
    // `f32::max` would turn NaN into 0 and hide upstream bugs.
    if v < 0.0 { 0.0 } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, t};
    use crate::{DType, Error};

    #[test]
    fn scale_and_activations() {
        let x = t(&[-2.0, -0.5, 0.0, 1.5], &[2, 2]);
        assert_eq!(
            scale(&x, 2.0).unwrap().to_vec_f32(),
            vec![-4.0, -1.0, 0.0, 3.0]
        );
        assert_eq!(relu(&x).unwrap().to_vec_f32(), vec![0.0, 0.0, 0.0, 1.5]);
        assert_eq!(relu2(&x).unwrap().to_vec_f32(), vec![0.0, 0.0, 0.0, 2.25]);
        let want: Vec<f32> = [-2.0f32, -0.5, 0.0, 1.5]
            .iter()
            .map(|&v| v * (1.0 / (1.0 + (-v).exp())))
            .collect();
        assert_close(&silu(&x).unwrap().to_vec_f32(), &want, 1e-6);
        assert!(relu(&t(&[f32::NAN], &[1])).unwrap().to_vec_f32()[0].is_nan());
    }

    #[test]
    fn strided_input_and_dtype_error() {
        let x = t(&[1.0, -2.0, 3.0, -4.0], &[2, 2]).transpose(0, 1).unwrap();
        assert_eq!(relu(&x).unwrap().to_vec_f32(), vec![1.0, 3.0, 0.0, 0.0]);
        let h = x.to_dtype(DType::F16).unwrap();
        assert!(matches!(
            silu(&h),
            Err(Error::DTypeMismatch {
                op: OpKind::Silu,
                ..
            })
        ));
    }
}
