//! Conversions between 2-D `f32` [`Tensor`]s and [`faer::Mat<f32>`].

use faer::{Mat, MatRef};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::tensor::Tensor;

/// Copies a 2-D `f32` tensor (any strides) into a faer matrix.
pub fn tensor_to_mat(t: &Tensor) -> Result<Mat<f32>> {
    let op = OpKind::ToMat;
    let &[m, n] = t.dims() else {
        return Err(Error::RankMismatch {
            op,
            expected: "2",
            shape: t.shape().clone(),
        });
    };
    if t.dtype() != DType::F32 {
        return Err(Error::DTypeMismatch {
            op,
            expected: DType::F32,
            got: t.dtype(),
        });
    }
    let data = t.f32_data(op)?;
    Ok(Mat::from_fn(m, n, |i, j| data[i * n + j]))
}

/// Copies a faer matrix into a new contiguous `[nrows, ncols]` `f32` tensor.
pub fn mat_to_tensor(m: MatRef<'_, f32>) -> Tensor {
    let (r, c) = (m.nrows(), m.ncols());
    let mut data = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            data.push(m[(i, j)]);
        }
    }
    Tensor::from_parts(crate::storage::Storage::F32(data), [r, c].into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strided() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
        let m = tensor_to_mat(&t).unwrap();
        assert_eq!((m.nrows(), m.ncols()), (2, 3));
        assert_eq!(m[(1, 0)], 4.0);
        assert_eq!(mat_to_tensor(m.as_ref()).to_vec_f32(), t.to_vec_f32());
        let mt = tensor_to_mat(&t.transpose(0, 1).unwrap()).unwrap();
        assert_eq!(mt[(2, 1)], 6.0);
        assert_eq!(mt[(0, 1)], 4.0);
    }

    #[test]
    fn errors() {
        let v = Tensor::from_vec(vec![1.0f32; 3], [3]).unwrap();
        assert!(matches!(tensor_to_mat(&v), Err(Error::RankMismatch { .. })));
        let h = Tensor::zeros([2, 2], DType::BF16);
        assert!(matches!(
            tensor_to_mat(&h),
            Err(Error::DTypeMismatch { .. })
        ));
    }
}
