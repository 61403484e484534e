//! Stable operation identifiers ([`OpKind`]) used in errors and, later, by an
//! autograd tape.

use std::fmt;

/// Identifies an operation. [`OpKind::name`] strings are stable: they appear
/// in error messages and are intended as keys for a future autograd tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// [`Tensor::from_vec`](crate::Tensor::from_vec) and friends.
    FromVec,
    /// [`Tensor::to_vec`](crate::Tensor::to_vec) / `as_slice`.
    ToVec,
    /// [`Tensor::to_dtype`](crate::Tensor::to_dtype).
    ToDType,
    /// [`Tensor::reshape`](crate::Tensor::reshape).
    Reshape,
    /// [`Tensor::transpose`](crate::Tensor::transpose).
    Transpose,
    /// [`Tensor::narrow`](crate::Tensor::narrow) / `slice`.
    Narrow,
    /// [`Tensor::cat`](crate::Tensor::cat).
    Cat,
    /// [`matmul`](crate::ops::matmul).
    Matmul,
    /// [`add`](crate::ops::add).
    Add,
    /// [`sub`](crate::ops::sub).
    Sub,
    /// [`mul`](crate::ops::mul).
    Mul,
    /// [`scale`](crate::ops::scale).
    Scale,
    /// [`rms_norm`](crate::ops::rms_norm).
    RmsNorm,
    /// [`softmax_last_dim`](crate::ops::softmax_last_dim).
    Softmax,
    /// [`rope_rotate_half`](crate::ops::rope_rotate_half).
    Rope,
    /// [`silu`](crate::ops::silu).
    Silu,
    /// [`relu`](crate::ops::relu).
    Relu,
    /// [`relu2`](crate::ops::relu2).
    Relu2,
    /// [`embedding`](crate::ops::embedding).
    Embedding,
    /// [`argmax_last_dim`](crate::ops::argmax_last_dim).
    Argmax,
    /// [`sum_last_dim`](crate::ops::sum_last_dim).
    Sum,
    /// [`max_last_dim`](crate::ops::max_last_dim).
    Max,
    /// [`linalg::svd`](crate::linalg::svd).
    Svd,
    /// [`linalg::qr`](crate::linalg::qr).
    Qr,
    /// [`linalg::cholesky`](crate::linalg::cholesky).
    Cholesky,
    /// [`linalg::lu`](crate::linalg::lu).
    Lu,
    /// [`linalg::det`](crate::linalg::det).
    Det,
    /// [`linalg::inverse`](crate::linalg::inverse).
    Inverse,
    /// [`linalg::solve`](crate::linalg::solve).
    Solve,
    /// [`linalg::eigh`](crate::linalg::eigh).
    Eigh,
    /// Tensor ↔ `faer::Mat` conversion.
    ToMat,
    /// [`build_pool`](crate::build_pool).
    BuildPool,
    /// Causal multi-head attention on the autograd tape.
    Attention,
    /// Cross-entropy loss on the autograd tape.
    CrossEntropy,
    /// Distillation KL divergence on the autograd tape.
    KlDiv,
    /// Straight-through fake quantization on the autograd tape.
    FakeQuant,
    /// Reverse pass of the autograd tape.
    Backward,
}

impl OpKind {
    /// Stable lowercase name of the operation.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::FromVec => "from_vec",
            OpKind::ToVec => "to_vec",
            OpKind::ToDType => "to_dtype",
            OpKind::Reshape => "reshape",
            OpKind::Transpose => "transpose",
            OpKind::Narrow => "narrow",
            OpKind::Cat => "cat",
            OpKind::Matmul => "matmul",
            OpKind::Add => "add",
            OpKind::Sub => "sub",
            OpKind::Mul => "mul",
            OpKind::Scale => "scale",
            OpKind::RmsNorm => "rms_norm",
            OpKind::Softmax => "softmax",
            OpKind::Rope => "rope_rotate_half",
            OpKind::Silu => "silu",
            OpKind::Relu => "relu",
            OpKind::Relu2 => "relu2",
            OpKind::Embedding => "embedding",
            OpKind::Argmax => "argmax",
            OpKind::Sum => "sum",
            OpKind::Max => "max",
            OpKind::Svd => "svd",
            OpKind::Qr => "qr",
            OpKind::Cholesky => "cholesky",
            OpKind::Lu => "lu",
            OpKind::Det => "det",
            OpKind::Inverse => "inverse",
            OpKind::Solve => "solve",
            OpKind::Eigh => "eigh",
            OpKind::ToMat => "to_mat",
            OpKind::BuildPool => "build_pool",
            OpKind::Attention => "attention",
            OpKind::CrossEntropy => "cross_entropy",
            OpKind::KlDiv => "kl_div",
            OpKind::FakeQuant => "fake_quant",
            OpKind::Backward => "backward",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        assert_eq!(OpKind::Rope.name(), "rope_rotate_half");
        assert_eq!(OpKind::Matmul.to_string(), "matmul");
        assert_eq!(OpKind::Eigh.name(), "eigh");
    }
}
