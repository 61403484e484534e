//! GGUF metadata: the 13 value types, typed arrays (nested arrays
//! included), and an ordered key → value map with typed getters.
//!
//! ```text
//! value type ids (u32):
//!   0 u8   1 i8   2 u16   3 i16   4 u32   5 i32   6 f32   7 bool (u8: 0 or 1)
//!   8 string (u64 len + UTF-8 bytes)   9 array   10 u64   11 i64   12 f64
//! array: u32 element type | u64 count | count elements (no per-element type)
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The on-disk id of a value type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// `u8`.
    U8 = 0,
    /// `i8`.
    I8 = 1,
    /// `u16`.
    U16 = 2,
    /// `i16`.
    I16 = 3,
    /// `u32`.
    U32 = 4,
    /// `i32`.
    I32 = 5,
    /// `f32`.
    F32 = 6,
    /// `bool`, one byte.
    Bool = 7,
    /// Length-prefixed UTF-8.
    String = 8,
    /// Typed array.
    Array = 9,
    /// `u64`.
    U64 = 10,
    /// `i64`.
    I64 = 11,
    /// `f64`.
    F64 = 12,
}

impl ValueType {
    /// Looks up an on-disk id.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fixed on-disk size of a scalar, `None` for strings and arrays.
    pub fn scalar_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The smallest number of bytes one value of this type takes on disk
    /// (used to bound allocations by the bytes left in the file).
    pub fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            other => other.scalar_size().unwrap_or(1),
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A string.
    String(String),
    /// A typed array.
    Array(MetadataArray),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

/// A typed array; every element has the array's type.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataArray {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Nested arrays (each may have its own element type).
    Array(Vec<MetadataArray>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl MetadataValue {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        use MetadataValue as V;
        match self {
            V::U8(_) => ValueType::U8,
            V::I8(_) => ValueType::I8,
            V::U16(_) => ValueType::U16,
            V::I16(_) => ValueType::I16,
            V::U32(_) => ValueType::U32,
            V::I32(_) => ValueType::I32,
            V::F32(_) => ValueType::F32,
            V::Bool(_) => ValueType::Bool,
            V::String(_) => ValueType::String,
            V::Array(_) => ValueType::Array,
            V::U64(_) => ValueType::U64,
            V::I64(_) => ValueType::I64,
            V::F64(_) => ValueType::F64,
        }
    }

    /// The value as a signed 128-bit integer if it is any integer type.
    pub fn as_integer(&self) -> Option<i128> {
        use MetadataValue as V;
        Some(match *self {
            V::U8(v) => v.into(),
            V::I8(v) => v.into(),
            V::U16(v) => v.into(),
            V::I16(v) => v.into(),
            V::U32(v) => v.into(),
            V::I32(v) => v.into(),
            V::U64(v) => v.into(),
            V::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl MetadataArray {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        use MetadataArray as A;
        match self {
            A::U8(_) => ValueType::U8,
            A::I8(_) => ValueType::I8,
            A::U16(_) => ValueType::U16,
            A::I16(_) => ValueType::I16,
            A::U32(_) => ValueType::U32,
            A::I32(_) => ValueType::I32,
            A::F32(_) => ValueType::F32,
            A::Bool(_) => ValueType::Bool,
            A::String(_) => ValueType::String,
            A::Array(_) => ValueType::Array,
            A::U64(_) => ValueType::U64,
            A::I64(_) => ValueType::I64,
            A::F64(_) => ValueType::F64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        use MetadataArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::F32(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F64(v) => v.len(),
        }
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// String elements, `None` for another element type.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            MetadataArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// `f32` elements, `None` for another element type.
    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            MetadataArray::F32(v) => Some(v),
            _ => None,
        }
    }

    /// `i32` elements, `None` for another element type.
    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            MetadataArray::I32(v) => Some(v),
            _ => None,
        }
    }
}

/// Ordered metadata of one file, with typed getters. Getter errors name
/// the file and key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    source: PathBuf,
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty map whose errors name `source`.
    pub fn new(source: impl Into<PathBuf>) -> Metadata {
        Metadata {
            source: source.into(),
            ..Metadata::default()
        }
    }

    /// Adds a pair; `Err(value)` gives the value back if the key exists.
    pub(crate) fn insert(
        &mut self,
        key: String,
        value: MetadataValue,
    ) -> std::result::Result<(), (String, MetadataValue)> {
        if self.index.contains_key(&key) {
            return Err((key, value));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key).ok_or_else(|| Error::MissingKey {
            path: self.source.clone(),
            key: key.to_owned(),
        })
    }

    fn wrong(&self, key: &str, expected: &str, found: &MetadataValue) -> Error {
        Error::BadMetadata {
            path: self.source.clone(),
            key: key.to_owned(),
            reason: format!("expected {expected}, found {:?}", found.value_type()),
        }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> Result<T> {
        let v = self.require(key)?;
        let i = v.as_integer().ok_or_else(|| self.wrong(key, expected, v))?;
        T::try_from(i).map_err(|_| Error::BadMetadata {
            path: self.source.clone(),
            key: key.to_owned(),
            reason: format!("value {i} does not fit in {expected}"),
        })
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            MetadataValue::String(s) => Ok(s),
            other => Err(self.wrong(key, "a string", other)),
        }
    }

    /// Any integer value that fits in `u32` (writers disagree on the width
    /// of counts).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "u32")
    }

    /// Any integer value that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "u64")
    }

    /// Any integer value that fits in `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_int(key, "i64")
    }

    /// An `f32` value.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            MetadataValue::F32(v) => Ok(*v),
            other => Err(self.wrong(key, "f32", other)),
        }
    }

    /// An `f32` or `f64` value, widened.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.require(key)? {
            MetadataValue::F32(v) => Ok((*v).into()),
            MetadataValue::F64(v) => Ok(*v),
            other => Err(self.wrong(key, "f32 or f64", other)),
        }
    }

    /// A `bool` value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            MetadataValue::Bool(v) => Ok(*v),
            other => Err(self.wrong(key, "bool", other)),
        }
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray> {
        match self.require(key)? {
            MetadataValue::Array(a) => Ok(a),
            other => Err(self.wrong(key, "an array", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_getters_convert_and_refuse() {
        let mut m = Metadata::new("<test>");
        m.insert("a".into(), MetadataValue::U8(7)).unwrap();
        m.insert("b".into(), MetadataValue::I32(-1)).unwrap();
        m.insert("s".into(), MetadataValue::String("x".into()))
            .unwrap();
        m.insert("f".into(), MetadataValue::F32(0.5)).unwrap();
        assert!(m.insert("a".into(), MetadataValue::U8(1)).is_err());
        assert_eq!(m.get_u32("a").unwrap(), 7);
        assert_eq!(m.get_i64("b").unwrap(), -1);
        assert!(matches!(m.get_u32("b"), Err(Error::BadMetadata { .. })));
        assert!(matches!(m.get_u32("s"), Err(Error::BadMetadata { .. })));
        assert!(matches!(m.get_str("zz"), Err(Error::MissingKey { .. })));
        assert_eq!(m.get_str("s").unwrap(), "x");
        assert_eq!(m.get_f64("f").unwrap(), 0.5);
        assert!(m.get_array("f").is_err());
        let keys: Vec<_> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "s", "f"]);
    }
}
