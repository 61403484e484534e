//! Shape-manipulating views of a [`Tensor`]: reshape, transpose, narrow,
//! slice, and concatenation. Views share storage; only `cat` and a
//! non-contiguous `reshape` copy.

use std::ops::Range;
use std::sync::Arc;

use crate::dtype::WithDType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::ops::OpKind;
use crate::shape::Shape;
use crate::storage::with_storage;
use crate::tensor::{Tensor, gather};

impl Tensor {
    fn check_dim(&self, op: OpKind, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op,
                dim,
                shape: self.shape().clone(),
            });
        }
        Ok(())
    }

    /// Reinterprets the elements with a new shape of equal element count.
    /// A view when `self` is contiguous, otherwise a copy.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ElementCountMismatch {
                op: OpKind::Reshape,
                expected: shape.elem_count(),
                got: self.elem_count(),
                shape,
            });
        }
        let base = self.contiguous();
        let strides = shape.contiguous_strides();
        Ok(Tensor {
            storage: base.storage,
            layout: Layout::new(shape, strides, base.layout.offset()),
        })
    }

    /// Swaps dimensions `d0` and `d1` (a view).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        self.check_dim(OpKind::Transpose, d0)?;
        self.check_dim(OpKind::Transpose, d1)?;
        let mut dims = self.dims().to_vec();
        let mut strides = self.layout.strides().to_vec();
        dims.swap(d0, d1);
        strides.swap(d0, d1);
        Ok(Tensor {
            storage: Arc::clone(&self.storage),
            layout: Layout::new(Shape::new(dims), strides, self.layout.offset()),
        })
    }

    /// Restricts dimension `dim` to `start..start + len` (a view).
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.check_dim(OpKind::Narrow, dim)?;
        let size = self.dims()[dim];
        let in_range = start.checked_add(len).is_some_and(|end| end <= size);
        if !in_range {
            return Err(Error::NarrowOutOfRange {
                op: OpKind::Narrow,
                dim,
                start,
                len,
                size,
                shape: self.shape().clone(),
            });
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        let strides = self.layout.strides().to_vec();
        // An empty narrow never dereferences its offset, so clamp it to avoid
        // pointing past the buffer for `start == size`.
        let offset = if len == 0 {
            self.layout.offset()
        } else {
            self.layout.offset() + start * strides[dim]
        };
        Ok(Tensor {
            storage: Arc::clone(&self.storage),
            layout: Layout::new(Shape::new(dims), strides, offset),
        })
    }

    /// `narrow(dim, range.start, range.len())`; a reversed range is an error.
    pub fn slice(&self, dim: usize, range: Range<usize>) -> Result<Tensor> {
        if range.end < range.start {
            return Err(Error::InvalidArgument {
                op: OpKind::Narrow,
                msg: format!("reversed range {}..{} on dim {dim}", range.start, range.end),
            });
        }
        self.narrow(dim, range.start, range.end - range.start)
    }

    /// Concatenates tensors along `dim`. All inputs must share dtype, rank
    /// and every dimension except `dim`. The result is a new contiguous tensor.
    ///
    /// ```
    /// use bitnet_core::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0], [1, 2])?;
    /// let b = Tensor::from_vec(vec![3.0f32, 4.0], [1, 2])?;
    /// let c = Tensor::cat(&[&a, &b], 0)?;
    /// assert_eq!(c.dims(), &[2, 2]);
    /// # Ok::<(), bitnet_core::Error>(())
    /// ```
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let op = OpKind::Cat;
        let Some(first) = tensors.first() else {
            return Err(Error::InvalidArgument {
                op,
                msg: "cannot concatenate an empty list of tensors".into(),
            });
        };
        first.check_dim(op, dim)?;
        let mut out_dims = first.dims().to_vec();
        out_dims[dim] = 0;
        for t in tensors {
            if t.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch {
                    op,
                    expected: first.dtype(),
                    got: t.dtype(),
                });
            }
            let compatible = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == dim || a == b);
            if !compatible {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: first.shape().clone(),
                    rhs: t.shape().clone(),
                    reason: "all dims except the cat dim must match",
                });
            }
            out_dims[dim] += t.dims()[dim];
        }
        let outer: usize = first.dims()[..dim].iter().product();
        let inner: usize = first.dims()[dim + 1..].iter().product();
        let storage = with_storage!(&*first.storage, |v| {
            cat_typed(v, tensors, outer, inner, dim)
        });
        Ok(Tensor::from_parts(storage, Shape::new(out_dims)))
    }
}

fn cat_typed<T: WithDType>(
    _witness: &[T],
    tensors: &[&Tensor],
    outer: usize,
    inner: usize,
    dim: usize,
) -> crate::storage::Storage {
    // dtypes were checked by the caller, so every storage holds `T`.
    let parts: Vec<(Vec<T>, usize)> = tensors
        .iter()
        .map(|t| {
            let data = T::storage_slice(&t.storage).unwrap_or(&[]);
            (gather(data, &t.layout), t.dims()[dim] * inner)
        })
        .collect();
    let total: usize = parts.iter().map(|(v, _)| v.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (data, chunk) in &parts {
            out.extend_from_slice(&data[o * chunk..(o + 1) * chunk]);
        }
    }
    T::into_storage(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn t23() -> Tensor {
        Tensor::from_vec((0..6).map(|x| x as f32).collect::<Vec<_>>(), [2, 3]).unwrap()
    }

    #[test]
    fn reshape_view_and_copy() {
        let t = t23();
        let r = t.reshape([3, 2]).unwrap();
        assert!(r.shares_storage_with(&t));
        assert_eq!(r.to_vec_f32(), t.to_vec_f32());
        let tt = t.transpose(0, 1).unwrap();
        let r2 = tt.reshape(6).unwrap();
        assert!(!r2.shares_storage_with(&t));
        assert_eq!(r2.to_vec_f32(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert!(matches!(
            t.reshape([4, 2]),
            Err(Error::ElementCountMismatch { .. })
        ));
    }

    #[test]
    fn transpose_3d_and_errors() {
        let t = Tensor::from_vec((0..24).map(|x| x as f32).collect::<Vec<_>>(), [2, 3, 4]).unwrap();
        let v = t.transpose(0, 2).unwrap();
        assert_eq!(v.dims(), &[4, 3, 2]);
        let data = v.to_vec_f32();
        for i in 0..4 {
            for j in 0..3 {
                for k in 0..2 {
                    assert_eq!(data[i * 6 + j * 2 + k], (k * 12 + j * 4 + i) as f32);
                }
            }
        }
        assert!(matches!(
            t.transpose(0, 3),
            Err(Error::DimOutOfRange { dim: 3, .. })
        ));
    }

    #[test]
    fn narrow_and_slice() {
        let t = t23();
        let n = t.narrow(1, 1, 2).unwrap();
        assert!(n.shares_storage_with(&t));
        assert_eq!(n.dims(), &[2, 2]);
        assert!(!n.is_contiguous());
        assert_eq!(n.to_vec_f32(), vec![1.0, 2.0, 4.0, 5.0]);
        let r = t.narrow(0, 1, 1).unwrap();
        assert!(r.is_contiguous());
        assert_eq!(r.as_slice::<f32>().unwrap(), &[3.0, 4.0, 5.0]);
        assert_eq!(t.slice(1, 0..1).unwrap().to_vec_f32(), vec![0.0, 3.0]);
        assert_eq!(t.narrow(1, 3, 0).unwrap().elem_count(), 0);
        let e = t.narrow(1, 2, 2).unwrap_err();
        assert!(matches!(e, Error::NarrowOutOfRange { size: 3, .. }));
        assert!(t.narrow(1, usize::MAX, 2).is_err());
        assert!(t.narrow(2, 0, 1).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let rev = t.slice(1, 2..1);
        assert!(matches!(rev, Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn narrow_of_transpose() {
        let tt = t23().transpose(0, 1).unwrap(); // [[0,3],[1,4],[2,5]]
        let n = tt.narrow(0, 1, 2).unwrap();
        assert_eq!(n.to_vec_f32(), vec![1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn cat_dims_0_and_1() {
        let a = t23();
        let b = Tensor::from_vec(vec![6.0f32, 7.0, 8.0], [1, 3]).unwrap();
        let c0 = Tensor::cat(&[&a, &b], 0).unwrap();
        assert_eq!(c0.dims(), &[3, 3]);
        assert_eq!(
            c0.to_vec_f32(),
            (0..9).map(|x| x as f32).collect::<Vec<_>>()
        );
        let d = Tensor::from_vec(vec![10.0f32, 11.0], [2, 1]).unwrap();
        let c1 = Tensor::cat(&[&a, &d], 1).unwrap();
        assert_eq!(c1.dims(), &[2, 4]);
        assert_eq!(
            c1.to_vec_f32(),
            vec![0.0, 1.0, 2.0, 10.0, 3.0, 4.0, 5.0, 11.0]
        );
        // Strided inputs are gathered correctly.
        let at = a.transpose(0, 1).unwrap(); // [3,2]
        let c2 = Tensor::cat(&[&at, &at], 1).unwrap();
        assert_eq!(
            c2.to_vec_f32(),
            vec![0.0, 3.0, 0.0, 3.0, 1.0, 4.0, 1.0, 4.0, 2.0, 5.0, 2.0, 5.0]
        );
    }

    #[test]
    fn cat_other_dtypes_and_errors() {
        let a = Tensor::from_vec(vec![1u8, 2], 2).unwrap();
        let b = Tensor::from_vec(vec![3u8], 1).unwrap();
        let c = Tensor::cat(&[&a, &b], 0).unwrap();
        assert_eq!(c.dtype(), DType::U8);
        assert_eq!(c.to_vec::<u8>().unwrap(), vec![1, 2, 3]);
        let f = Tensor::from_vec(vec![1.0f32], 1).unwrap();
        assert!(matches!(
            Tensor::cat(&[&a, &f], 0),
            Err(Error::DTypeMismatch { .. })
        ));
        let m = t23();
        let bad = Tensor::from_vec(vec![0.0f32; 4], [2, 2]).unwrap();
        assert!(matches!(
            Tensor::cat(&[&m, &bad], 0),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(Tensor::cat(&[], 0).is_err());
        assert!(Tensor::cat(&[&m], 2).is_err());
    }
}
