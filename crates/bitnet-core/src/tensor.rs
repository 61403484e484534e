//! The [`Tensor`] type: an `Arc`-shared [`Storage`] plus a [`Layout`].
//! This file owns construction, accessors and element/dtype conversion;
//! views (reshape, transpose, narrow, cat) live in `view.rs`.

use std::borrow::Cow;
use std::sync::Arc;

use crate::dtype::{DType, WithDType};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::ops::OpKind;
use crate::shape::Shape;
use crate::storage::{Storage, with_storage};

/// An n-dimensional array with a runtime [`DType`].
///
/// Cloning is cheap: clones and views share the same storage through an
/// `Arc`, and no operation mutates storage in place.
///
/// ```
/// use bitnet_core::{DType, Tensor};
///
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3])?;
/// assert_eq!(t.dims(), &[2, 3]);
/// let tt = t.transpose(0, 1)?; // a view: no copy
/// assert!(!tt.is_contiguous());
/// assert_eq!(tt.to_vec_f32(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
/// let h = t.to_dtype(DType::BF16)?;
/// assert_eq!(h.dtype(), DType::BF16);
/// # Ok::<(), bitnet_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tensor {
    pub(crate) storage: Arc<Storage>,
    pub(crate) layout: Layout,
}

impl Tensor {
    pub(crate) fn from_parts(storage: Storage, shape: Shape) -> Self {
        debug_assert_eq!(storage.len(), shape.elem_count());
        Tensor {
            storage: Arc::new(storage),
            layout: Layout::contiguous(shape),
        }
    }

    /// Builds a contiguous tensor that takes ownership of `data`.
    ///
    /// Fails with [`Error::ElementCountMismatch`] if `data.len()` differs from
    /// the shape's element count.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCountMismatch {
                op: OpKind::FromVec,
                expected: shape.elem_count(),
                got: data.len(),
                shape,
            });
        }
        Ok(Self::from_parts(T::into_storage(data), shape))
    }

    /// Like [`Tensor::from_vec`] but copies from a slice.
    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }

    /// A zero-filled contiguous tensor.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Self {
        let shape = shape.into();
        Self::from_parts(Storage::zeros(dtype, shape.elem_count()), shape)
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.layout.shape().dims()
    }

    /// The layout (shape, strides, offset).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape().rank()
    }

    /// Number of logical elements.
    pub fn elem_count(&self) -> usize {
        self.shape().elem_count()
    }

    /// Whether the view is row-major over its storage.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Whether `self` and `other` share the same storage buffer.
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Borrows the elements of a contiguous tensor of dtype `T`.
    ///
    /// Errors: [`Error::DTypeMismatch`] or [`Error::NonContiguous`].
    pub fn as_slice<T: WithDType>(&self) -> Result<&[T]> {
        let data = self.typed_storage::<T>(OpKind::ToVec)?;
        if !self.is_contiguous() {
            return Err(Error::NonContiguous {
                op: OpKind::ToVec,
                shape: self.shape().clone(),
            });
        }
        let start = self.layout.offset();
        Ok(&data[start..start + self.elem_count()])
    }

    /// Copies the logical elements (row-major, respecting strides) out as `T`,
    /// which must be the tensor's exact dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        let data = self.typed_storage::<T>(OpKind::ToVec)?;
        Ok(gather(data, &self.layout))
    }

    /// Copies the logical elements out as `f32`, converting from any dtype
    /// (exact: every supported dtype embeds in `f32`).
    pub fn to_vec_f32(&self) -> Vec<f32> {
        with_storage!(&*self.storage, |v| gather_map(
            v,
            &self.layout,
            WithDType::to_f32
        ))
    }

    /// Converts to another dtype, returning a new contiguous tensor.
    ///
    /// Conversions go through `f32`: float targets round to nearest even
    /// (via `half`), integer targets round half to even and saturate
    /// (NaN becomes 0). Converting to the same dtype returns a contiguous copy
    /// of the view (or a cheap clone if already contiguous).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.contiguous());
        }
        let f = self.to_vec_f32();
        let storage = match dtype {
            DType::F32 => Storage::F32(f),
            DType::F16 => Storage::F16(f.into_iter().map(WithDType::from_f32).collect()),
            DType::BF16 => Storage::BF16(f.into_iter().map(WithDType::from_f32).collect()),
            DType::I8 => Storage::I8(f.into_iter().map(WithDType::from_f32).collect()),
            DType::U8 => Storage::U8(f.into_iter().map(WithDType::from_f32).collect()),
        };
        Ok(Self::from_parts(storage, self.shape().clone()))
    }

    /// Returns a row-major tensor with the same values: a cheap clone when
    /// already contiguous, otherwise a copy into fresh storage.
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        let storage = with_storage!(&*self.storage, |v| WithDType::into_storage(gather(
            v,
            &self.layout
        )));
        Self::from_parts(storage, self.shape().clone())
    }

    /// Contiguous `f32` elements, borrowed when possible. Used by the f32 ops.
    pub(crate) fn f32_data(&self, op: OpKind) -> Result<Cow<'_, [f32]>> {
        let data = self.typed_storage::<f32>(op)?;
        if self.is_contiguous() {
            let start = self.layout.offset();
            Ok(Cow::Borrowed(&data[start..start + self.elem_count()]))
        } else {
            Ok(Cow::Owned(gather(data, &self.layout)))
        }
    }

    /// The full storage buffer as `T`, or a dtype error naming `op`.
    pub(crate) fn typed_storage<T: WithDType>(&self, op: OpKind) -> Result<&[T]> {
        T::storage_slice(&self.storage).ok_or(Error::DTypeMismatch {
            op,
            expected: T::DTYPE,
            got: self.dtype(),
        })
    }
}

/// Copies the view described by `layout` out of `data` in row-major order.
pub(crate) fn gather<T: Copy>(data: &[T], layout: &Layout) -> Vec<T> {
    gather_map(data, layout, |x| x)
}

fn gather_map<T: Copy, U>(data: &[T], layout: &Layout, f: impl Fn(T) -> U) -> Vec<U> {
    let n = layout.shape().elem_count();
    if layout.is_contiguous() {
        let start = layout.offset();
        return data[start..start + n].iter().map(|&x| f(x)).collect();
    }
    let mut out = Vec::with_capacity(n);
    layout.for_each_offset(|o| out.push(f(data[o])));
    out
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    #[test]
    fn from_vec_checks_len() {
        let err = Tensor::from_vec(vec![1.0f32; 5], [2, 3]).unwrap_err();
        assert!(matches!(
            err,
            Error::ElementCountMismatch {
                expected: 6,
                got: 5,
                ..
            }
        ));
        assert!(err.to_string().contains("[2, 3]"));
    }

    #[test]
    fn accessors() {
        let t = Tensor::from_slice(&[1u8, 2, 3, 4, 5, 6], [3, 2]).unwrap();
        assert_eq!(t.shape(), &Shape::from([3, 2]));
        assert_eq!(t.dims(), &[3, 2]);
        assert_eq!(t.rank(), 2);
        assert_eq!(t.elem_count(), 6);
        assert_eq!(t.dtype(), DType::U8);
        assert!(t.is_contiguous());
        assert_eq!(t.as_slice::<u8>().unwrap(), &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn zeros_all_dtypes() {
        for dt in [DType::F32, DType::F16, DType::BF16, DType::I8, DType::U8] {
            let z = Tensor::zeros([2, 2], dt);
            assert_eq!(z.dtype(), dt);
            assert_eq!(z.to_vec_f32(), vec![0.0; 4]);
        }
    }

    #[test]
    fn wrong_dtype_access_is_typed_error() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0], 2).unwrap();
        let e = t.to_vec::<i8>().unwrap_err();
        assert!(matches!(
            e,
            Error::DTypeMismatch {
                expected: DType::I8,
                got: DType::F32,
                ..
            }
        ));
        assert!(t.as_slice::<f16>().is_err());
    }

    #[test]
    fn as_slice_rejects_strided_view() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
        let tt = t.transpose(0, 1).unwrap();
        assert!(matches!(
            tt.as_slice::<f32>(),
            Err(Error::NonContiguous { .. })
        ));
        assert_eq!(tt.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
    }

    #[test]
    fn f16_bf16_round_trip_and_rounding() {
        let vals = vec![0.0f32, 1.0, -2.5, 0.333_333_34, 65504.0, 1e-3];
        let t = Tensor::from_vec(vals.clone(), 6).unwrap();
        let h = t.to_dtype(DType::F16).unwrap();
        let expect_h: Vec<f16> = vals.iter().map(|&v| f16::from_f32(v)).collect();
        assert_eq!(h.to_vec::<f16>().unwrap(), expect_h);
        let b = t.to_dtype(DType::BF16).unwrap();
        let expect_b: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
        assert_eq!(b.to_vec::<bf16>().unwrap(), expect_b);
        // Values exactly representable in both survive the round trip.
        let exact = Tensor::from_vec(vec![0.5f32, -3.0, 256.0], 3).unwrap();
        for dt in [DType::F16, DType::BF16] {
            let back = exact.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(back.to_vec::<f32>().unwrap(), vec![0.5, -3.0, 256.0]);
        }
        // 1 + 2^-8 is a bf16 tie between 1 and 1 + 2^-7: even mantissa wins.
        let tie = Tensor::from_vec(vec![1.0f32 + 1.0 / 256.0], 1).unwrap();
        assert_eq!(tie.to_dtype(DType::BF16).unwrap().to_vec_f32(), vec![1.0]);
    }

    #[test]
    fn integer_conversions() {
        let t = Tensor::from_vec(vec![-300.0f32, -1.5, 0.5, 2.5, 127.4, 300.0], 6).unwrap();
        let i = t.to_dtype(DType::I8).unwrap();
        assert_eq!(i.to_vec::<i8>().unwrap(), vec![-128, -2, 0, 2, 127, 127]);
        let u = t.to_dtype(DType::U8).unwrap();
        assert_eq!(u.to_vec::<u8>().unwrap(), vec![0, 0, 0, 2, 127, 255]);
        assert_eq!(
            i.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(),
            vec![-128.0, -2.0, 0.0, 2.0, 127.0, 127.0]
        );
        assert_eq!(u.to_vec_f32(), vec![0.0, 0.0, 0.0, 2.0, 127.0, 255.0]);
    }

    #[test]
    fn to_dtype_respects_strides() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
        let v = t.transpose(0, 1).unwrap().to_dtype(DType::F16).unwrap();
        assert!(v.is_contiguous());
        assert_eq!(v.dims(), &[3, 2]);
        assert_eq!(v.to_vec_f32(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn contiguous_is_noop_when_already_contiguous() {
        let t = Tensor::from_vec(vec![1i8, 2, 3, 4], [2, 2]).unwrap();
        assert!(t.contiguous().shares_storage_with(&t));
        let c = t.transpose(0, 1).unwrap().contiguous();
        assert!(!c.shares_storage_with(&t));
        assert_eq!(c.as_slice::<i8>().unwrap(), &[1, 3, 2, 4]);
    }
}
