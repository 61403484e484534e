//! How a tensor's logical elements map onto its storage buffer ([`Layout`]),
//! plus the strided offset walkers used by every copy and elementwise kernel.

use crate::shape::Shape;

/// Shape, per-dimension strides (in elements) and starting offset of a view.
///
/// Strides are unsigned: views produced by this crate (transpose, narrow,
/// broadcast) never need negative strides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// A row-major layout starting at offset 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset: 0,
        }
    }

    pub(crate) fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.rank(), strides.len());
        Layout {
            shape,
            strides,
            offset,
        }
    }

    /// The logical shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Strides in elements, one per dimension.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset (in elements) of the first logical element in storage.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether logical row-major order equals storage order (from `offset`).
    ///
    /// Dimensions of size 1 are ignored because their stride never affects
    /// an address; empty views are trivially contiguous.
    pub fn is_contiguous(&self) -> bool {
        if self.shape.elem_count() == 0 {
            return true;
        }
        let mut expected = 1usize;
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Calls `f` with the storage offset of every logical element, in
    /// row-major order.
    pub(crate) fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        for_each_offset2(
            self.shape.dims(),
            &self.strides,
            self.offset,
            &self.strides,
            self.offset,
            |a, _| f(a),
        );
    }
}

/// Walks `dims` in row-major order, yielding paired offsets into two strided
/// buffers. The innermost dimension is a tight loop because it dominates the
/// element count in practice.
pub(crate) fn for_each_offset2(
    dims: &[usize],
    strides_a: &[usize],
    offset_a: usize,
    strides_b: &[usize],
    offset_b: usize,
    mut f: impl FnMut(usize, usize),
) {
    if dims.contains(&0) {
        return;
    }
    let Some((&inner, outer_dims)) = dims.split_last() else {
        f(offset_a, offset_b);
        return;
    };
    let sa = strides_a[dims.len() - 1];
    let sb = strides_b[dims.len() - 1];
    let mut idx = vec![0usize; outer_dims.len()];
    let (mut base_a, mut base_b) = (offset_a, offset_b);
    loop {
        for i in 0..inner {
            f(base_a + i * sa, base_b + i * sb);
        }
        // Odometer increment over the outer dimensions.
        let mut d = outer_dims.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            base_a += strides_a[d];
            base_b += strides_b[d];
            if idx[d] < outer_dims[d] {
                break;
            }
            base_a -= strides_a[d] * idx[d];
            base_b -= strides_b[d] * idx[d];
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_layout() {
        let l = Layout::contiguous([2, 3]);
        assert_eq!(l.strides(), &[3, 1]);
        assert!(l.is_contiguous());
        let mut offs = vec![];
        l.for_each_offset(|o| offs.push(o));
        assert_eq!(offs, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn transposed_offsets() {
        let l = Layout::new(Shape::from([3, 2]), vec![1, 3], 0);
        assert!(!l.is_contiguous());
        let mut offs = vec![];
        l.for_each_offset(|o| offs.push(o));
        assert_eq!(offs, vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn offset_and_unit_dims() {
        let l = Layout::new(Shape::from([1, 2]), vec![99, 1], 4);
        assert!(l.is_contiguous());
        let mut offs = vec![];
        l.for_each_offset(|o| offs.push(o));
        assert_eq!(offs, vec![4, 5]);
    }

    #[test]
    fn scalar_and_empty_walks() {
        let mut n = 0;
        Layout::contiguous(Shape::new(vec![])).for_each_offset(|_| n += 1);
        assert_eq!(n, 1);
        let mut m = 0;
        Layout::contiguous([2, 0, 3]).for_each_offset(|_| m += 1);
        assert_eq!(m, 0);
    }

    #[test]
    fn paired_broadcast_walk() {
        let mut pairs = vec![];
        for_each_offset2(&[2, 2], &[2, 1], 0, &[0, 1], 10, |a, b| pairs.push((a, b)));
        assert_eq!(pairs, vec![(0, 10), (1, 11), (2, 10), (3, 11)]);
    }
}
