//! The runtime layout the ternary kernels read, built once at load.
//!
//! Each row is cut into blocks of [`BLOCK`] = 256 weights stored in 64 bytes
//! (exactly 2 bits per weight). Byte `g` of a block holds the block's elements
//! `g`, `64 + g`, `128 + g` and `192 + g` in bits 0-1, 2-3, 4-5 and 6-7, each as
//! `t + 1` ∈ {0, 1, 2}:
//!
//! ```text
//! byte g:  [7 6 | 5 4 | 3 2 | 1 0]
//!           e192+g e128+g e64+g e0+g
//! ```
//!
//! so one 64-byte load masked with `0x03`, `0x0c`, `0x30`, `0xc0` gives four
//! registers of weights lined up with four consecutive 64-byte runs of
//! activations, with no shuffles. Storing `t + 1` makes the weights unsigned,
//! which `vpdpbusd`/`pmaddubsw` need; the kernels subtract the activation sum
//! once per row. Rows are padded to a whole block with the code for 0 and
//! start on a 64-byte boundary.

use super::shape_text;
use super::{QuantBlock, tq2_0::BlockTq2_0};
use crate::aligned::AlignedBytes;
use crate::error::{Error, Format, Result};
use crate::quantize::ternary::check_codes;

/// Weights per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = BLOCK / 4;
const _: () = assert!(BLOCK_BYTES == 64);

/// The largest row length the kernels accept: their i32 lane accumulators
/// stay exact up to this many columns (see the kernels' module doc).
pub const MAX_COLS: usize = 1 << 22;

/// A ternary matrix in the kernels' layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedTernary {
    rows: usize,
    cols: usize,
    blocks_per_row: usize,
    data: AlignedBytes,
}

/// Packs one block of [`BLOCK`] codes: each byte gathers its four columns
/// at once (the layout of `position`), a loop the compiler vectorizes.
#[inline]
fn pack_block(block: &[i8], dst: &mut [u8]) {
    let block: &[i8; BLOCK] = block.try_into().expect("a whole block");
    for (g, d) in dst.iter_mut().enumerate().take(BLOCK_BYTES) {
        let code = |k: usize| (block[64 * k + g] + 1) as u8;
        *d = code(0) | (code(1) << 2) | (code(2) << 4) | (code(3) << 6);
    }
}

impl PackedTernary {
    /// Packs row-major codes in {-1, 0, 1}.
    pub fn from_codes(codes: &[i8], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(codes.len()) {
            return Err(Error::ShapeMismatch {
                op: "pack runtime ternary",
                detail: format!("{} codes cannot be a [{rows}, {cols}] matrix", codes.len()),
            });
        }
        if cols > MAX_COLS {
            return Err(Error::Unsupported(format!(
                "rows of {cols} weights exceed the kernels' limit of {MAX_COLS}"
            )));
        }
        check_codes(codes)?;
        let blocks_per_row = cols.div_ceil(BLOCK);
        // 0b01 in every slot: the code of weight 0, so padding adds nothing.
        let mut data = AlignedBytes::filled(rows * blocks_per_row * BLOCK_BYTES, 0x55);
        let bytes = data.as_bytes_mut();
        for r in 0..rows {
            let row = &codes[r * cols..(r + 1) * cols];
            let out = &mut bytes
                [r * blocks_per_row * BLOCK_BYTES..(r + 1) * blocks_per_row * BLOCK_BYTES];
            let full = cols / BLOCK;
            for (block, dst) in row
                .chunks_exact(BLOCK)
                .zip(out.chunks_exact_mut(BLOCK_BYTES))
            {
                pack_block(block, dst);
            }
            // The partial last block: padded with code 0 (packed 0b01, what
            // adds nothing) and packed the same way.
            let rest = &row[full * BLOCK..];
            if !rest.is_empty() {
                let mut padded = [0i8; BLOCK];
                padded[..rest.len()].copy_from_slice(rest);
                pack_block(&padded, &mut out[full * BLOCK_BYTES..][..BLOCK_BYTES]);
            }
        }
        Ok(PackedTernary {
            rows,
            cols,
            blocks_per_row,
            data,
        })
    }

    /// Repacks llama.cpp TQ2_0 blocks (`rows` rows of `cols` weights, `cols`
    /// a multiple of 256, so that every row is whole blocks) by moving
    /// their 2-bit fields, without expanding them to codes first: that
    /// expansion and the packing after it were most of the time a 2B-4T
    /// GGUF took to load. The blocks' scales are not read here.
    ///
    /// TQ2_0 byte `32j + m` holds elements `128j + 32n + m` in bits `2n`,
    /// each as `t + 1`, the same code as here, so byte `m` of a runtime
    /// block (elements `m`, `64 + m`, `128 + m`, `192 + m`) takes fields 0
    /// and 2 of TQ2_0 bytes `m` and `32 + m`, and byte `32 + m` their
    /// fields 1 and 3.
    ///
    /// ```
    /// use bitnet_quant::formats::{runtime::PackedTernary, tq2_0};
    /// let codes: Vec<i8> = (0..512).map(|i| (i % 3) as i8 - 1).collect();
    /// let blocks = tq2_0::from_ternary(&codes, 0.5)?;
    /// let packed = PackedTernary::from_tq2_0(&blocks, 2, 256)?;
    /// assert_eq!(packed.to_codes(), codes);
    /// # Ok::<(), bitnet_quant::Error>(())
    /// ```
    pub fn from_tq2_0(blocks: &[BlockTq2_0], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) || rows.checked_mul(cols / BLOCK) != Some(blocks.len()) {
            return Err(Error::ShapeMismatch {
                op: "repack TQ2_0",
                detail: format!(
                    "{} blocks of {BLOCK} cannot be a [{rows}, {cols}] matrix of whole-block rows",
                    blocks.len()
                ),
            });
        }
        if cols > MAX_COLS {
            return Err(Error::Unsupported(format!(
                "rows of {cols} weights exceed the kernels' limit of {MAX_COLS}"
            )));
        }
        let mut data = AlignedBytes::filled(blocks.len() * BLOCK_BYTES, 0);
        for (i, (block, dst)) in blocks
            .iter()
            .zip(data.as_bytes_mut().chunks_exact_mut(BLOCK_BYTES))
            .enumerate()
        {
            if let Some(byte) = super::hf2bit::first_invalid_2bit(&block.qs) {
                return Err(Error::InvalidCode {
                    format: Format::Tq2_0,
                    byte: i * BlockTq2_0::BYTES + byte,
                    code: 0b11,
                });
            }
            let (lo, hi) = dst.split_at_mut(BLOCK_BYTES / 2);
            let (qa, qb) = block.qs.split_at(BLOCK_BYTES / 2);
            for (((lo, hi), &a), &b) in lo.iter_mut().zip(hi).zip(qa).zip(qb) {
                *lo = (a & 0x03) | ((a >> 2) & 0x0c) | ((b << 4) & 0x30) | ((b << 2) & 0xc0);
                *hi = ((a >> 2) & 0x03) | ((a >> 4) & 0x0c) | ((b << 2) & 0x30) | (b & 0xc0);
            }
        }
        Ok(PackedTernary {
            rows,
            cols,
            blocks_per_row: cols / BLOCK,
            data,
        })
    }

    /// Reads a buffer written by [`Self::as_bytes`], validating every code.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if cols > MAX_COLS {
            return Err(Error::Unsupported(format!(
                "rows of {cols} weights exceed the kernels' limit of {MAX_COLS}"
            )));
        }
        let blocks_per_row = cols.div_ceil(BLOCK);
        let expected = rows
            .checked_mul(blocks_per_row * BLOCK_BYTES)
            .ok_or_else(|| Error::ShapeOverflow {
                format: Format::Runtime,
                shape: shape_text(&[rows, cols]),
            })?;
        if bytes.len() != expected {
            return Err(Error::BadLength {
                format: Format::Runtime,
                shape: shape_text(&[rows, cols]),
                expected,
                actual: bytes.len(),
            });
        }
        if let Some(byte) = super::hf2bit::first_invalid_2bit(bytes) {
            return Err(Error::InvalidCode {
                format: Format::Runtime,
                byte,
                code: 0b11,
            });
        }
        let mut data = AlignedBytes::filled(expected, 0);
        data.as_bytes_mut()[..expected].copy_from_slice(bytes);
        Ok(PackedTernary {
            rows,
            cols,
            blocks_per_row,
            data,
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Weights per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Blocks per row (`ceil(cols / 256)`).
    pub fn blocks_per_row(&self) -> usize {
        self.blocks_per_row
    }
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.blocks_per_row * BLOCK_BYTES
    }
    /// The packed bytes, row after row.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data.as_bytes()[..self.rows * self.row_bytes()]
    }
    /// The packed bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data.as_bytes()[r * n..(r + 1) * n]
    }

    /// The code of element (`r`, `c`).
    pub fn code(&self, r: usize, c: usize) -> i8 {
        let (byte, shift) = position(c);
        ((self.row(r)[byte] >> shift) & 3) as i8 - 1
    }

    /// All codes, row-major.
    pub fn to_codes(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            out.extend((0..self.cols).map(|c| self.code(r, c)));
        }
        out
    }
}

/// Byte offset within a row and bit shift of column `c`.
#[inline]
fn position(c: usize) -> (usize, u32) {
    let (block, within) = (c / BLOCK, c % BLOCK);
    (block * BLOCK_BYTES + within % 64, 2 * (within / 64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(rows in 0usize..6, cols in 0usize..600, seed in any::<u64>()) {
            let codes: Vec<i8> = (0..rows * cols)
                .map(|i| ((seed.wrapping_mul(6364136223846793005).wrapping_add((i as u64).wrapping_mul(1442695040888963407)) >> 33) % 3) as i8 - 1)
                .collect();
            let p = PackedTernary::from_codes(&codes, rows, cols).unwrap();
            prop_assert_eq!(p.to_codes(), codes.clone());
            let q = PackedTernary::from_bytes(p.as_bytes(), rows, cols).unwrap();
            prop_assert_eq!(q, p);
        }
    }

    proptest! {
        /// TQ2_0 blocks repacked field by field equal packing their codes,
        /// and a field with the unused code 0b11 is refused with its byte.
        #[test]
        fn tq2_0_repacks_like_its_codes(rows in 0usize..4, blocks_per_row in 1usize..4, seed in any::<u64>(), bad in any::<Option<u16>>()) {
            let cols = blocks_per_row * BLOCK;
            let codes: Vec<i8> = (0..rows * cols)
                .map(|i| ((seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 29) % 3) as i8 - 1)
                .collect();
            let mut blocks = crate::formats::tq2_0::from_ternary(&codes, 0.25).unwrap();
            let want = PackedTernary::from_codes(&codes, rows, cols).unwrap();
            prop_assert_eq!(&PackedTernary::from_tq2_0(&blocks, rows, cols).unwrap(), &want);
            if let (Some(bad), false) = (bad, blocks.is_empty()) {
                let (b, byte) = (bad as usize % blocks.len(), bad as usize / 7 % 64);
                blocks[b].qs[byte] |= 0b11 << (2 * (bad % 4));
                let at = b * BlockTq2_0::BYTES + byte;
                let refused = matches!(
                    PackedTernary::from_tq2_0(&blocks, rows, cols),
                    Err(Error::InvalidCode { byte, .. }) if byte == at
                );
                prop_assert!(refused, "0b11 at byte {} not refused", at);
            }
        }
    }

    #[test]
    fn tq2_0_refuses_partial_rows() {
        let blocks = crate::formats::tq2_0::from_ternary(&[0; 512], 1.0).unwrap();
        assert!(PackedTernary::from_tq2_0(&blocks, 1, 512).is_ok());
        assert!(matches!(
            PackedTernary::from_tq2_0(&blocks, 2, 128),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(PackedTernary::from_tq2_0(&blocks, 3, 256).is_err());
    }

    #[test]
    fn layout_matches_diagram() {
        let mut codes = vec![0i8; 256];
        codes[0] = 1;
        codes[64] = -1;
        codes[128 + 3] = 1;
        codes[192] = 1;
        let p = PackedTernary::from_codes(&codes, 1, 256).unwrap();
        assert_eq!(p.row(0)[0], 0b10_01_00_10);
        assert_eq!(p.row(0)[3], 0b01_10_01_01);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            PackedTernary::from_codes(&[2], 1, 1),
            Err(Error::NotTernary { .. })
        ));
        assert!(PackedTernary::from_codes(&[0; 3], 2, 2).is_err());
        assert!(matches!(
            PackedTernary::from_bytes(&[0; 63], 1, 10),
            Err(Error::BadLength { .. })
        ));
        assert!(matches!(
            PackedTernary::from_bytes(&[], 0x0a00_2a0a_0000_0000, 10),
            Err(Error::ShapeOverflow { .. })
        ));
        assert!(PackedTernary::from_bytes(&[], 1, MAX_COLS + 1).is_err());
        let mut bytes = vec![0x55u8; 64];
        bytes[9] = 0xff;
        assert!(matches!(
            PackedTernary::from_bytes(&bytes, 1, 10),
            Err(Error::InvalidCode { byte: 9, .. })
        ));
    }
}
