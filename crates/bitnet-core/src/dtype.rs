//! Element data types ([`DType`]) and the sealed [`WithDType`] trait that ties
//! Rust scalar types to their [`DType`] and [`Storage`] variant.

use std::fmt;

use half::{bf16, f16};

use crate::storage::Storage;

/// The element type of a tensor's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary16.
    F16,
    /// bfloat16 (8 exponent bits, 7 mantissa bits).
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 => 1,
        }
    }

    /// Short lowercase name, as used in error messages (`"f32"`, `"bf16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
        }
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i8 {}
    impl Sealed for u8 {}
}

/// A Rust scalar type that can be stored in a [`Tensor`](crate::Tensor).
///
/// Sealed: the set of element types is closed so that every `match` over
/// [`Storage`] stays exhaustive.
pub trait WithDType:
    Copy + Send + Sync + fmt::Debug + PartialEq + 'static + sealed::Sealed
{
    /// The [`DType`] tag for this type.
    const DTYPE: DType;

    /// Exact widening to `f32` (every supported type embeds exactly in `f32`).
    fn to_f32(self) -> f32;

    /// Narrowing from `f32`: floats round to nearest even; integers round
    /// half to even and saturate at the type bounds (NaN maps to 0).
    fn from_f32(v: f32) -> Self;

    /// Wraps an owned buffer into the matching [`Storage`] variant.
    fn into_storage(data: Vec<Self>) -> Storage;

    /// Borrows the whole buffer if `storage` holds this type.
    fn storage_slice(storage: &Storage) -> Option<&[Self]>;
}

macro_rules! impl_with_dtype {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;

            #[inline]
            fn to_f32(self) -> f32 {
                $to(self)
            }

            #[inline]
            fn from_f32(v: f32) -> Self {
                $from(v)
            }

            fn into_storage(data: Vec<Self>) -> Storage {
                Storage::$variant(data)
            }

            fn storage_slice(storage: &Storage) -> Option<&[Self]> {
                match storage {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

impl_with_dtype!(f32, F32, |v: f32| v, |v: f32| v);
impl_with_dtype!(f16, F16, f16::to_f32, f16::from_f32);
impl_with_dtype!(bf16, BF16, bf16::to_f32, bf16::from_f32);
// `as` from float to int saturates and maps NaN to 0, which is exactly the
// documented policy once the value is rounded half-to-even.
impl_with_dtype!(i8, I8, |v: i8| v as f32, |v: f32| v.round_ties_even() as i8);
impl_with_dtype!(u8, U8, |v: u8| v as f32, |v: f32| v.round_ties_even() as u8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(DType::F32.size_in_bytes(), 4);
        assert_eq!(DType::BF16.size_in_bytes(), 2);
        assert_eq!(DType::F16.size_in_bytes(), 2);
        assert_eq!(DType::I8.size_in_bytes(), 1);
        assert_eq!(DType::U8.size_in_bytes(), 1);
        assert_eq!(DType::BF16.to_string(), "bf16");
        assert_eq!(DType::U8.name(), "u8");
        assert!(DType::F16.is_float());
        assert!(!DType::I8.is_float());
    }

    #[test]
    fn integer_narrowing_saturates_and_rounds_half_even() {
        assert_eq!(i8::from_f32(2.5), 2);
        assert_eq!(i8::from_f32(3.5), 4);
        assert_eq!(i8::from_f32(-2.5), -2);
        assert_eq!(i8::from_f32(1000.0), 127);
        assert_eq!(i8::from_f32(-1000.0), -128);
        assert_eq!(i8::from_f32(f32::NAN), 0);
        assert_eq!(u8::from_f32(-3.0), 0);
        assert_eq!(u8::from_f32(255.6), 255);
        assert_eq!(u8::from_f32(0.5), 0);
        assert_eq!(u8::from_f32(1.5), 2);
    }
}
