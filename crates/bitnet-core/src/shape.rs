//! Tensor dimensions ([`Shape`]).

use std::fmt;

/// The dimensions of a tensor, outermost first (row-major order).
///
/// A rank-0 shape (`[]`) describes a scalar with one element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    dims: Vec<usize>,
}

impl Shape {
    /// Creates a shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape { dims: dims.into() }
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Total number of elements (1 for a rank-0 shape).
    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Row-major ("C order") strides in elements.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.dims.len()];
        let mut acc = 1usize;
        for (s, &d) in strides.iter_mut().zip(&self.dims).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }

    /// The size of the last dimension, if any.
    pub fn last_dim(&self) -> Option<usize> {
        self.dims.last().copied()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape { dims }
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape {
            dims: dims.to_vec(),
        }
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Shape {
            dims: dims.to_vec(),
        }
    }
}

impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape { dims: vec![d] }
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!(s.rank(), 3);
        assert_eq!(s.elem_count(), 24);
        assert_eq!(s.contiguous_strides(), vec![12, 4, 1]);
        assert_eq!(s.to_string(), "[2, 3, 4]");
        assert_eq!(s.last_dim(), Some(4));
    }

    #[test]
    fn scalar_and_empty() {
        let s = Shape::new(Vec::<usize>::new());
        assert_eq!(s.elem_count(), 1);
        assert_eq!(s.to_string(), "[]");
        assert_eq!(s.last_dim(), None);
        assert_eq!(Shape::from([3, 0]).elem_count(), 0);
    }
}
