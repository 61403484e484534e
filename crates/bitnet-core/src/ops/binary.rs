//! Elementwise binary ops with numpy-style broadcasting: `add`, `sub`, `mul`.

use crate::error::{Error, Result};
use crate::layout::for_each_offset2;
use crate::ops::OpKind;
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Broadcast output shape: align trailing dims; each pair must be equal or 1.
fn broadcast_shape(op: OpKind, a: &Shape, b: &Shape) -> Result<Shape> {
    let rank = a.rank().max(b.rank());
    let mut dims = vec![0; rank];
    for (i, d) in dims.iter_mut().enumerate() {
        let da = dim_from_right(a, rank - 1 - i);
        let db = dim_from_right(b, rank - 1 - i);
        *d = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: a.clone(),
                    rhs: b.clone(),
                    reason: "not broadcastable (trailing dims must be equal or 1)",
                });
            }
        };
    }
    Ok(Shape::new(dims))
}

fn dim_from_right(s: &Shape, k: usize) -> usize {
    if k < s.rank() {
        s.dims()[s.rank() - 1 - k]
    } else {
        1
    }
}

/// Strides of `t` viewed at the broadcast `out` shape (0 on broadcast dims).
fn broadcast_strides(t: &Tensor, out: &Shape) -> Vec<usize> {
    let pad = out.rank() - t.rank();
    (0..out.rank())
        .map(|i| {
            if i < pad || t.dims()[i - pad] == 1 {
                0
            } else {
                t.layout().strides()[i - pad]
            }
        })
        .collect()
}

fn binary(op: OpKind, a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor> {
    let da = a.typed_storage::<f32>(op)?;
    let db = b.typed_storage::<f32>(op)?;
    let out_shape = broadcast_shape(op, a.shape(), b.shape())?;
    if a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous() {
        let (oa, ob, n) = (a.layout().offset(), b.layout().offset(), a.elem_count());
        let out: Vec<f32> = da[oa..oa + n]
            .iter()
            .zip(&db[ob..ob + n])
            .map(|(&x, &y)| f(x, y))
            .collect();
        return Tensor::from_vec(out, out_shape);
    }
    let sa = broadcast_strides(a, &out_shape);
    let sb = broadcast_strides(b, &out_shape);
    let mut out = Vec::with_capacity(out_shape.elem_count());
    for_each_offset2(
        out_shape.dims(),
        &sa,
        a.layout().offset(),
        &sb,
        b.layout().offset(),
        |i, j| out.push(f(da[i], db[j])),
    );
    Tensor::from_vec(out, out_shape)
}

/// `a + b` with broadcasting.
///
/// ```
/// use bitnet_core::{Tensor, ops};
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2])?;
/// let bias = Tensor::from_vec(vec![10.0f32, 20.0], [2])?;
/// assert_eq!(ops::add(&x, &bias)?.to_vec_f32(), vec![11.0, 22.0, 13.0, 24.0]);
/// # Ok::<(), bitnet_core::Error>(())
/// ```
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(OpKind::Add, a, b, |x, y| x + y)
}

/// `a - b` with broadcasting.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(OpKind::Sub, a, b, |x, y| x - y)
}

/// `a * b` (elementwise) with broadcasting.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(OpKind::Mul, a, b, |x, y| x * y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::ops::test_util::t;

    #[test]
    fn same_shape() {
        let a = t(&[1.0, 2.0, 3.0], &[3]);
        let b = t(&[4.0, 5.0, 6.0], &[3]);
        assert_eq!(add(&a, &b).unwrap().to_vec_f32(), vec![5.0, 7.0, 9.0]);
        assert_eq!(sub(&a, &b).unwrap().to_vec_f32(), vec![-3.0, -3.0, -3.0]);
        assert_eq!(mul(&a, &b).unwrap().to_vec_f32(), vec![4.0, 10.0, 18.0]);
    }

    #[test]
    fn scalar_like_and_trailing_broadcast() {
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let s = t(&[10.0], &[1]);
        assert_eq!(
            mul(&x, &s).unwrap().to_vec_f32(),
            vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        );
        let row = t(&[1.0, 0.0, -1.0], &[3]);
        let r = sub(&x, &row).unwrap();
        assert_eq!(r.dims(), &[2, 3]);
        assert_eq!(r.to_vec_f32(), vec![0.0, 2.0, 4.0, 3.0, 5.0, 7.0]);
        // Both sides broadcast: [2,1] + [1,3] -> [2,3].
        let col = t(&[100.0, 200.0], &[2, 1]);
        let row2 = t(&[1.0, 2.0, 3.0], &[1, 3]);
        assert_eq!(
            add(&col, &row2).unwrap().to_vec_f32(),
            vec![101.0, 102.0, 103.0, 201.0, 202.0, 203.0]
        );
        // Order of operands is respected for sub.
        assert_eq!(
            sub(&row, &x).unwrap().to_vec_f32(),
            vec![0.0, -2.0, -4.0, -3.0, -5.0, -7.0]
        );
    }

    #[test]
    fn strided_operands() {
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let xt = x.transpose(0, 1).unwrap(); // [[1,4],[2,5],[3,6]]
        let y = t(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[3, 2]);
        assert_eq!(
            add(&xt, &y).unwrap().to_vec_f32(),
            vec![1.0, 5.0, 4.0, 8.0, 7.0, 11.0]
        );
        let n = x.narrow(1, 1, 2).unwrap(); // [[2,3],[5,6]]
        let b = t(&[10.0, 100.0], &[2]);
        assert_eq!(
            mul(&n, &b).unwrap().to_vec_f32(),
            vec![20.0, 300.0, 50.0, 600.0]
        );
    }

    #[test]
    fn errors() {
        let a = t(&[1.0, 2.0, 3.0], &[3]);
        let b = t(&[1.0, 2.0], &[2]);
        let e = add(&a, &b).unwrap_err();
        assert!(matches!(
            e,
            Error::ShapeMismatch {
                op: OpKind::Add,
                ..
            }
        ));
        assert!(e.to_string().contains("[3] and [2]"));
        let h = a.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            mul(&a, &h),
            Err(Error::DTypeMismatch {
                got: DType::BF16,
                ..
            })
        ));
    }

    #[test]
    fn empty_broadcasts_to_empty() {
        let a = t(&[], &[0, 3]);
        let b = t(&[1.0, 2.0, 3.0], &[3]);
        assert_eq!(add(&a, &b).unwrap().dims(), &[0, 3]);
    }
}
