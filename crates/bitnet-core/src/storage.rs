//! Owned, typed element buffers ([`Storage`]) shared between tensor views.

use half::{bf16, f16};

use crate::dtype::DType;

/// A flat, owned element buffer. Tensors hold it behind an `Arc` so views
/// share it without copying.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f16` elements.
    F16(Vec<f16>),
    /// `bf16` elements.
    BF16(Vec<bf16>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u8` elements.
    U8(Vec<u8>),
}

impl Storage {
    /// The element type of the buffer.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::I8(_) => DType::I8,
            Storage::U8(_) => DType::U8,
        }
    }

    /// Number of elements in the buffer (not the number a view exposes).
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::I8(v) => v.len(),
            Storage::U8(v) => v.len(),
        }
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros(dtype: DType, len: usize) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(vec![0.0; len]),
            DType::F16 => Storage::F16(vec![f16::ZERO; len]),
            DType::BF16 => Storage::BF16(vec![bf16::ZERO; len]),
            DType::I8 => Storage::I8(vec![0; len]),
            DType::U8 => Storage::U8(vec![0; len]),
        }
    }
}

/// Applies a generic expression to the inner `Vec` of any [`Storage`] variant.
///
/// Lets dtype-agnostic code (gather, cat) be written once as a generic
/// function instead of five hand-copied match arms.
macro_rules! with_storage {
    ($storage:expr, |$v:ident| $body:expr) => {
        match $storage {
            $crate::storage::Storage::F32($v) => $body,
            $crate::storage::Storage::F16($v) => $body,
            $crate::storage::Storage::BF16($v) => $body,
            $crate::storage::Storage::I8($v) => $body,
            $crate::storage::Storage::U8($v) => $body,
        }
    };
}
pub(crate) use with_storage;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_have_right_dtype_and_len() {
        for dt in [DType::F32, DType::F16, DType::BF16, DType::I8, DType::U8] {
            let s = Storage::zeros(dt, 3);
            assert_eq!(s.dtype(), dt);
            assert_eq!(s.len(), 3);
            assert!(!s.is_empty());
        }
        assert!(Storage::zeros(DType::U8, 0).is_empty());
    }
}
