//! The crate-wide error type ([`Error`]) and [`Result`] alias.
//!
//! Every variant names the operation ([`OpKind`]) that failed and the shapes,
//! dtypes or indices involved, so the message alone tells a caller what to fix.

use crate::dtype::DType;
use crate::ops::OpKind;
use crate::shape::Shape;

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in `bitnet-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands (or an operand and an expected shape) are incompatible,
    /// e.g. non-broadcastable elementwise inputs or a matmul inner-dim clash.
    #[error("{op}: incompatible shapes {lhs} and {rhs}: {reason}")]
    ShapeMismatch {
        /// Operation that failed.
        op: OpKind,
        /// First (left) shape involved.
        lhs: Shape,
        /// Second (right) shape involved.
        rhs: Shape,
        /// What was required of the shapes.
        reason: &'static str,
    },

    /// A buffer length does not match the element count of the requested shape.
    #[error("{op}: {got} elements cannot fill shape {shape} ({expected} elements)")]
    ElementCountMismatch {
        /// Operation that failed.
        op: OpKind,
        /// Requested shape.
        shape: Shape,
        /// Elements the shape needs.
        expected: usize,
        /// Elements provided.
        got: usize,
    },

    /// An input has the wrong element type.
    #[error("{op}: expected dtype {expected}, got {got}")]
    DTypeMismatch {
        /// Operation that failed.
        op: OpKind,
        /// Required dtype.
        expected: DType,
        /// Dtype provided.
        got: DType,
    },

    /// An input's dtype is not in the set an operation accepts.
    #[error("{op}: dtype {got} is not supported (supported: {supported:?})")]
    UnsupportedDType {
        /// Operation that failed.
        op: OpKind,
        /// Dtype provided.
        got: DType,
        /// Dtypes the operation accepts.
        supported: &'static [DType],
    },

    /// An input has the wrong number of dimensions.
    #[error("{op}: expected rank {expected}, got shape {shape}")]
    RankMismatch {
        /// Operation that failed.
        op: OpKind,
        /// Human-readable accepted ranks, e.g. `"2 or 3"`.
        expected: &'static str,
        /// Shape provided.
        shape: Shape,
    },

    /// A dimension index is not smaller than the tensor rank.
    #[error("{op}: dimension {dim} out of range for shape {shape} (rank {})", shape.rank())]
    DimOutOfRange {
        /// Operation that failed.
        op: OpKind,
        /// Dimension requested.
        dim: usize,
        /// Shape of the tensor.
        shape: Shape,
    },

    /// `start + len` exceeds the dimension size in a narrow/slice.
    #[error(
        "{op}: range {start}..{start}+{len} out of bounds for dim {dim} of size {size} (shape {shape})"
    )]
    NarrowOutOfRange {
        /// Operation that failed.
        op: OpKind,
        /// Dimension being narrowed.
        dim: usize,
        /// Requested start.
        start: usize,
        /// Requested length.
        len: usize,
        /// Actual size of `dim`.
        size: usize,
        /// Shape of the tensor.
        shape: Shape,
    },

    /// The operation needs at least one element (along the reduced dim, or overall).
    #[error("{op}: empty input of shape {shape}")]
    EmptyTensor {
        /// Operation that failed.
        op: OpKind,
        /// Shape of the empty input.
        shape: Shape,
    },

    /// An embedding id is not smaller than the vocabulary size.
    #[error("{op}: token id {id} at position {position} out of range for vocab size {vocab}")]
    TokenIdOutOfRange {
        /// Operation that failed.
        op: OpKind,
        /// Offending id.
        id: u32,
        /// Index of the id in the input slice.
        position: usize,
        /// Number of rows in the table.
        vocab: usize,
    },

    /// [`Tensor::as_slice`](crate::Tensor::as_slice) on a strided view.
    #[error("{op}: tensor of shape {shape} is not contiguous; call contiguous() first")]
    NonContiguous {
        /// Operation that failed.
        op: OpKind,
        /// Shape of the view.
        shape: Shape,
    },

    /// A scalar argument is invalid (odd head dim, wrong positions length, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// Operation that failed.
        op: OpKind,
        /// What was wrong and what was expected.
        msg: String,
    },

    /// Softmax row with every entry `-inf`: its normalizer would be zero.
    #[error("{op}: row {row} is entirely -inf; softmax is undefined (mask at least one position)")]
    AllMaskedRow {
        /// Operation that failed.
        op: OpKind,
        /// Flat row index (over all leading dims).
        row: usize,
    },

    /// A square matrix was required.
    #[error("{op}: expected a square matrix, got {rows}x{cols}")]
    NotSquare {
        /// Operation that failed.
        op: OpKind,
        /// Rows provided.
        rows: usize,
        /// Columns provided.
        cols: usize,
    },

    /// Cholesky hit a non-positive pivot.
    #[error("{op}: matrix is not positive definite (non-positive pivot at index {index})")]
    NotPositiveDefinite {
        /// Operation that failed.
        op: OpKind,
        /// Pivot index where factorization broke down.
        index: usize,
    },

    /// The matrix is singular to working precision (see [`crate::linalg`] for the test).
    #[error(
        "{op}: {n}x{n} matrix is singular to working precision (|U[{index},{index}]| = {pivot:e} <= tolerance {tolerance:e})"
    )]
    Singular {
        /// Operation that failed.
        op: OpKind,
        /// Matrix order.
        n: usize,
        /// Index of the first offending pivot.
        index: usize,
        /// Absolute value of that pivot (as f64).
        pivot: f64,
        /// Tolerance it was compared against (as f64).
        tolerance: f64,
    },

    /// An iterative decomposition (SVD, eigh) did not converge.
    #[error("{op}: iterative algorithm did not converge")]
    NoConvergence {
        /// Operation that failed.
        op: OpKind,
    },

    /// Building a rayon thread pool failed.
    #[error("could not build a thread pool with {threads} threads: {source}")]
    ThreadPool {
        /// Requested thread count.
        threads: usize,
        /// Underlying rayon error.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_op_shapes_and_dtypes() {
        let e = Error::ShapeMismatch {
            op: OpKind::Matmul,
            lhs: Shape::from([2, 3]),
            rhs: Shape::from([4, 5]),
            reason: "inner dimensions must agree",
        };
        assert_eq!(
            e.to_string(),
            "matmul: incompatible shapes [2, 3] and [4, 5]: inner dimensions must agree"
        );
        let e = Error::DTypeMismatch {
            op: OpKind::Add,
            expected: DType::F32,
            got: DType::BF16,
        };
        assert_eq!(e.to_string(), "add: expected dtype f32, got bf16");
    }
}
