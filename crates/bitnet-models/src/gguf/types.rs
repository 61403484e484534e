//! Tensor types: the raw `u32` ids GGUF stores, their names, and the type
//! table (weights per block, bytes per block) that sizes a tensor.
//!
//! Ids 36..=40 mean different things in upstream llama.cpp and in
//! bitnet.cpp's fork, so a lookup takes a [`Dialect`]; ids outside that
//! range mean the same in both. [`crate::gguf::dialect`] decides the
//! dialect of a file.

use std::fmt;

/// Which fork's meaning applies to tensor type ids 36..=40.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Upstream llama.cpp / ggml: 36..=38 unused, 39 = MXFP4, 40 = NVFP4.
    Upstream,
    /// bitnet.cpp: 36 = I2_S, 37 = I8_S, 38 = TL1, 39 = TL2.
    BitnetCpp,
}

/// A ggml tensor type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 4-bit, 32 per block, f16 scale.
    Q4_0,
    /// 4-bit, 32 per block, f16 scale and min.
    Q4_1,
    /// 5-bit, 32 per block.
    Q5_0,
    /// 5-bit with min, 32 per block.
    Q5_1,
    /// 8-bit, 32 per block, f16 scale.
    Q8_0,
    /// 8-bit, 32 per block, f16 scale and sum.
    Q8_1,
    /// 2-bit k-quant.
    Q2_K,
    /// 3-bit k-quant.
    Q3_K,
    /// 4-bit k-quant.
    Q4_K,
    /// 5-bit k-quant.
    Q5_K,
    /// 6-bit k-quant.
    Q6_K,
    /// 8-bit k-quant (activations).
    Q8_K,
    /// i-quant 2.06 bpw.
    IQ2_XXS,
    /// i-quant 2.31 bpw.
    IQ2_XS,
    /// i-quant 3.06 bpw.
    IQ3_XXS,
    /// i-quant 1.56 bpw.
    IQ1_S,
    /// 4-bit non-linear, 32 per block.
    IQ4_NL,
    /// i-quant 3.44 bpw.
    IQ3_S,
    /// i-quant 2.5 bpw.
    IQ2_S,
    /// i-quant 4.25 bpw.
    IQ4_XS,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// i-quant 1.75 bpw.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// llama.cpp ternary, 1.6875 bpw (id 34).
    TQ1_0,
    /// llama.cpp ternary, 2.0625 bpw (id 35).
    TQ2_0,
    /// Upstream MXFP4 (id 39 upstream).
    MXFP4,
    /// Upstream NVFP4 (id 40 upstream); layout not sized by this crate.
    NVFP4,
    /// bitnet.cpp I2_S (id 36 in bitnet.cpp): `n / 4 + 32` bytes per tensor.
    I2_S,
    /// bitnet.cpp I8_S (id 37 in bitnet.cpp): one byte per element.
    I8_S,
    /// bitnet.cpp TL1 (id 38 in bitnet.cpp); layout depends on the build.
    TL1,
    /// bitnet.cpp TL2 (id 39 in bitnet.cpp); layout depends on the build.
    TL2,
}

/// How a type is sized on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Rows are cut into blocks of `weights` elements stored in `bytes`.
    Blocks {
        /// Elements per block.
        weights: u64,
        /// Bytes per block.
        bytes: u64,
    },
    /// bitnet.cpp I2_S: `n / 4` packed bytes then a 32-byte scale trailer.
    I2S,
    /// The layout is not fixed by the type id (TL1, TL2) or not sized by
    /// this crate (NVFP4).
    Unsized(&'static str),
}

/// One row of the type table.
struct Row {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    layout: Layout,
}

const fn blk(weights: u64, bytes: u64) -> Layout {
    Layout::Blocks { weights, bytes }
}

use GgmlType as T;

/// The type table, from ggml's `type_traits` (and bitnet.cpp's for I2_S,
/// I8_S, TL1, TL2). Sizes are the `block_*` struct sizes.
#[rustfmt::skip]
const TABLE: &[Row] = &[
    Row { ty: T::F32, id: 0, name: "F32", layout: blk(1, 4) },
    Row { ty: T::F16, id: 1, name: "F16", layout: blk(1, 2) },
    Row { ty: T::Q4_0, id: 2, name: "Q4_0", layout: blk(32, 18) },
    Row { ty: T::Q4_1, id: 3, name: "Q4_1", layout: blk(32, 20) },
    Row { ty: T::Q5_0, id: 6, name: "Q5_0", layout: blk(32, 22) },
    Row { ty: T::Q5_1, id: 7, name: "Q5_1", layout: blk(32, 24) },
    Row { ty: T::Q8_0, id: 8, name: "Q8_0", layout: blk(32, 34) },
    Row { ty: T::Q8_1, id: 9, name: "Q8_1", layout: blk(32, 36) },
    Row { ty: T::Q2_K, id: 10, name: "Q2_K", layout: blk(256, 84) },
    Row { ty: T::Q3_K, id: 11, name: "Q3_K", layout: blk(256, 110) },
    Row { ty: T::Q4_K, id: 12, name: "Q4_K", layout: blk(256, 144) },
    Row { ty: T::Q5_K, id: 13, name: "Q5_K", layout: blk(256, 176) },
    Row { ty: T::Q6_K, id: 14, name: "Q6_K", layout: blk(256, 210) },
    Row { ty: T::Q8_K, id: 15, name: "Q8_K", layout: blk(256, 292) },
    Row { ty: T::IQ2_XXS, id: 16, name: "IQ2_XXS", layout: blk(256, 66) },
    Row { ty: T::IQ2_XS, id: 17, name: "IQ2_XS", layout: blk(256, 74) },
    Row { ty: T::IQ3_XXS, id: 18, name: "IQ3_XXS", layout: blk(256, 98) },
    Row { ty: T::IQ1_S, id: 19, name: "IQ1_S", layout: blk(256, 50) },
    Row { ty: T::IQ4_NL, id: 20, name: "IQ4_NL", layout: blk(32, 18) },
    Row { ty: T::IQ3_S, id: 21, name: "IQ3_S", layout: blk(256, 110) },
    Row { ty: T::IQ2_S, id: 22, name: "IQ2_S", layout: blk(256, 82) },
    Row { ty: T::IQ4_XS, id: 23, name: "IQ4_XS", layout: blk(256, 136) },
    Row { ty: T::I8, id: 24, name: "I8", layout: blk(1, 1) },
    Row { ty: T::I16, id: 25, name: "I16", layout: blk(1, 2) },
    Row { ty: T::I32, id: 26, name: "I32", layout: blk(1, 4) },
    Row { ty: T::I64, id: 27, name: "I64", layout: blk(1, 8) },
    Row { ty: T::F64, id: 28, name: "F64", layout: blk(1, 8) },
    Row { ty: T::IQ1_M, id: 29, name: "IQ1_M", layout: blk(256, 56) },
    Row { ty: T::BF16, id: 30, name: "BF16", layout: blk(1, 2) },
    Row { ty: T::TQ1_0, id: 34, name: "TQ1_0", layout: blk(256, 54) },
    Row { ty: T::TQ2_0, id: 35, name: "TQ2_0", layout: blk(256, 66) },
    Row { ty: T::MXFP4, id: 39, name: "MXFP4", layout: blk(32, 17) },
    Row {
        ty: T::NVFP4,
        id: 40,
        name: "NVFP4",
        layout: Layout::Unsized("NVFP4 block layout is not implemented by this reader"),
    },
    Row { ty: T::I2_S, id: 36, name: "I2_S", layout: Layout::I2S },
    Row { ty: T::I8_S, id: 37, name: "I8_S", layout: blk(1, 1) },
    Row {
        ty: T::TL1,
        id: 38,
        name: "TL1",
        layout: Layout::Unsized("TL1's layout depends on bitnet.cpp's generated kernel config"),
    },
    Row {
        ty: T::TL2,
        id: 39,
        name: "TL2",
        layout: Layout::Unsized("TL2's layout depends on bitnet.cpp's generated kernel config"),
    },
];

/// The first id whose meaning depends on the dialect.
pub const COLLISION_FIRST: u32 = 36;
/// The last id whose meaning depends on the dialect.
pub const COLLISION_LAST: u32 = 40;

impl GgmlType {
    fn row(self) -> &'static Row {
        // Every variant has exactly one row (checked by a test).
        TABLE.iter().find(|r| r.ty == self).unwrap_or(&TABLE[0])
    }

    /// All types in the table.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|r| r.ty)
    }

    /// The id written to a file.
    pub fn id(self) -> u32 {
        self.row().id
    }

    /// ggml's name for the type.
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// How the type is sized.
    pub fn layout(self) -> Layout {
        self.row().layout
    }

    /// Whether `id` means different types in the two dialects.
    pub fn is_collision_id(id: u32) -> bool {
        (COLLISION_FIRST..=COLLISION_LAST).contains(&id)
    }

    /// Whether the type exists only in bitnet.cpp's fork.
    pub fn is_bitnet_cpp_only(self) -> bool {
        matches!(self, T::I2_S | T::I8_S | T::TL1 | T::TL2)
    }

    /// Whether the type is upstream's use of a colliding id.
    pub fn is_upstream_collision(self) -> bool {
        matches!(self, T::MXFP4 | T::NVFP4)
    }

    /// Looks up a raw id; ids 36..=40 are read in `dialect`. `None` for an
    /// id neither fork defines.
    pub fn from_id(id: u32, dialect: Dialect) -> Option<GgmlType> {
        TABLE
            .iter()
            .filter(|r| r.id == id)
            .find(|r| {
                !Self::is_collision_id(id)
                    || match dialect {
                        Dialect::Upstream => r.ty.is_upstream_collision(),
                        Dialect::BitnetCpp => r.ty.is_bitnet_cpp_only(),
                    }
            })
            .map(|r| r.ty)
    }

    /// Bytes a tensor of this type with dimensions `dims` (GGUF order,
    /// `dims[0]` fastest) occupies, or why it cannot be sized: a row
    /// (`dims[0]`) must hold whole blocks, and the arithmetic must not
    /// overflow.
    pub fn byte_size(self, dims: &[u64]) -> std::result::Result<u64, SizeError> {
        let n = element_count(dims).ok_or(SizeError::Overflow)?;
        match self.layout() {
            Layout::Blocks { weights, bytes } => {
                let row = dims.first().copied().unwrap_or(1);
                if !row.is_multiple_of(weights) {
                    return Err(SizeError::PartialBlock {
                        row,
                        block: weights,
                    });
                }
                (n / weights).checked_mul(bytes).ok_or(SizeError::Overflow)
            }
            Layout::I2S => (n / 4).checked_add(32).ok_or(SizeError::Overflow),
            Layout::Unsized(reason) => Err(SizeError::Unsized(reason)),
        }
    }
}

/// The product of `dims`, `None` on overflow.
pub fn element_count(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Why a tensor cannot be sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// The element count or byte size overflows `u64`.
    Overflow,
    /// A row does not hold a whole number of blocks.
    PartialBlock {
        /// The row length (`dims[0]`).
        row: u64,
        /// The type's block size.
        block: u64,
    },
    /// The type has no fixed layout.
    Unsized(&'static str),
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Overflow => f.write_str("element count or byte size overflows u64"),
            SizeError::PartialBlock { row, block } => {
                write!(
                    f,
                    "row length {row} is not a multiple of the block size {block}"
                )
            }
            SizeError::Unsized(reason) => f.write_str(reason),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_quant::formats::{QuantBlock, i2s, tq1_0::BlockTq1_0, tq2_0::BlockTq2_0};

    #[test]
    fn every_type_has_one_row_and_ids_round_trip() {
        for row in TABLE {
            assert_eq!(
                TABLE.iter().filter(|r| r.ty == row.ty).count(),
                1,
                "{}",
                row.name
            );
            let dialect = if row.ty.is_bitnet_cpp_only() {
                Dialect::BitnetCpp
            } else {
                Dialect::Upstream
            };
            assert_eq!(
                GgmlType::from_id(row.id, dialect),
                Some(row.ty),
                "{}",
                row.name
            );
            assert_eq!(row.ty.id(), row.id);
        }
    }

    #[test]
    fn collision_ids_depend_on_dialect() {
        use Dialect::*;
        assert_eq!(GgmlType::from_id(36, BitnetCpp), Some(T::I2_S));
        assert_eq!(GgmlType::from_id(36, Upstream), None);
        assert_eq!(GgmlType::from_id(39, BitnetCpp), Some(T::TL2));
        assert_eq!(GgmlType::from_id(39, Upstream), Some(T::MXFP4));
        assert_eq!(GgmlType::from_id(40, BitnetCpp), None);
        assert_eq!(GgmlType::from_id(40, Upstream), Some(T::NVFP4));
        assert_eq!(GgmlType::from_id(35, BitnetCpp), Some(T::TQ2_0));
        for unknown in [4, 5, 31, 32, 33, 41, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(unknown, Upstream), None, "{unknown}");
            assert_eq!(GgmlType::from_id(unknown, BitnetCpp), None, "{unknown}");
        }
    }

    #[test]
    fn sizes_agree_with_bitnet_quant() {
        assert_eq!(
            T::TQ1_0.layout(),
            blk(BlockTq1_0::WEIGHTS as u64, BlockTq1_0::BYTES as u64)
        );
        assert_eq!(
            T::TQ2_0.layout(),
            blk(BlockTq2_0::WEIGHTS as u64, BlockTq2_0::BYTES as u64)
        );
        for n in [128u64, 2560 * 6912] {
            assert_eq!(
                T::I2_S.byte_size(&[n]),
                Ok(i2s::tensor_len(n as usize) as u64)
            );
        }
        assert_eq!(T::TQ2_0.byte_size(&[2560, 3]), Ok(10 * 66 * 3));
        assert_eq!(T::F16.byte_size(&[3, 5]), Ok(30));
        assert_eq!(T::Q8_0.byte_size(&[64, 2]), Ok(4 * 34));
    }

    #[test]
    fn sizing_errors() {
        assert_eq!(
            T::Q4_K.byte_size(&[100]),
            Err(SizeError::PartialBlock {
                row: 100,
                block: 256
            })
        );
        assert_eq!(
            T::F32.byte_size(&[1 << 32, 1 << 32]),
            Err(SizeError::Overflow)
        );
        assert_eq!(T::F64.byte_size(&[1 << 62]), Err(SizeError::Overflow));
        assert!(matches!(
            T::TL1.byte_size(&[128]),
            Err(SizeError::Unsized(_))
        ));
    }
}
