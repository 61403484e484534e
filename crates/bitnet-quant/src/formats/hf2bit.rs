//! The HF transformers 2-bit layout (`pack_weights` / `unpack_weights`), used
//! by the `bitlinear` and `autobitlinear` offline checkpoints such as 2B-4T.
//!
//! A `[out, in]` ternary matrix is stored as uint8 `[R, in]` with
//! `R = ceil(out / 4)`. Byte `[r, c]` holds rows `r`, `r + R`, `r + 2R`,
//! `r + 3R` of column `c` as `t + 1` in bits 0-1, 2-3, 4-5, 6-7: four
//! contiguous row blocks, not four adjacent rows.
//!
//! ```text
//! byte [r, c]:  [7 6    | 5 4    | 3 2   | 1 0]
//!                row r+3R  row r+2R  row r+R  row r
//! ```
//!
//! Rows past `out` (when `out % 4 != 0`) are padding and dropped on unpack;
//! the pattern `0b11` is invalid anywhere.

use super::shape_text;
use crate::error::{Error, Format, Result};
use crate::quantize::ternary::check_codes;

/// Packed byte count of an `[out, in]` matrix, `None` when it overflows.
pub fn packed_len(out: usize, cols: usize) -> Option<usize> {
    out.div_ceil(4).checked_mul(cols)
}

/// Packs row-major `[out, in]` codes in {-1, 0, 1}.
pub fn pack(codes: &[i8], out: usize, cols: usize) -> Result<Vec<u8>> {
    if out.checked_mul(cols) != Some(codes.len()) {
        return Err(Error::ShapeMismatch {
            op: "pack HF 2-bit",
            detail: format!("{} codes cannot be a [{out}, {cols}] matrix", codes.len()),
        });
    }
    check_codes(codes)?;
    let r_len = out.div_ceil(4);
    let mut packed = vec![0u8; r_len * cols];
    for (row, codes_row) in codes.chunks(cols.max(1)).enumerate().take(out) {
        let (r, slot) = (row % r_len, row / r_len);
        let dst = &mut packed[r * cols..(r + 1) * cols];
        for (d, &t) in dst.iter_mut().zip(codes_row) {
            *d |= ((t + 1) as u8) << (2 * slot);
        }
    }
    Ok(packed)
}

/// Unpacks to row-major `[out, in]` codes, rejecting `0b11` and wrong lengths.
pub fn unpack(packed: &[u8], out: usize, cols: usize) -> Result<Vec<i8>> {
    let expected = packed_len(out, cols).ok_or_else(|| Error::ShapeOverflow {
        format: Format::Hf2Bit,
        shape: shape_text(&[out, cols]),
    })?;
    if packed.len() != expected {
        return Err(Error::BadLength {
            format: Format::Hf2Bit,
            shape: shape_text(&[out, cols]),
            expected,
            actual: packed.len(),
        });
    }
    if let Some(byte) = first_invalid_2bit(packed) {
        return Err(Error::InvalidCode {
            format: Format::Hf2Bit,
            byte,
            code: 0b11,
        });
    }
    let r_len = out.div_ceil(4);
    let mut codes = vec![0i8; out * cols];
    for (row, dst) in codes.chunks_mut(cols.max(1)).enumerate().take(out) {
        let (r, slot) = (row % r_len, row / r_len);
        for (d, &b) in dst.iter_mut().zip(&packed[r * cols..(r + 1) * cols]) {
            *d = ((b >> (2 * slot)) & 3) as i8 - 1;
        }
    }
    Ok(codes)
}

/// Offset of the first byte holding a `0b11` 2-bit field, if any.
///
/// Each 64-byte chunk is first tested as a whole, an OR over the chunk
/// that vectorizes; only a chunk with a bad field is searched byte by
/// byte. (A byte-by-byte search with its exit test per byte was most of
/// the time a 2B-4T GGUF took to load, once repacking was cheap.)
pub(crate) fn first_invalid_2bit(bytes: &[u8]) -> Option<usize> {
    let bad = |b: u8| b & (b >> 1) & 0x55;
    bytes.chunks(64).enumerate().find_map(|(i, chunk)| {
        if chunk.iter().fold(0, |any, &b| any | bad(b)) == 0 {
            return None;
        }
        chunk.iter().position(|&b| bad(b) != 0).map(|k| 64 * i + k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(out in 0usize..11, cols in 0usize..9, seed in any::<u32>()) {
            let codes: Vec<i8> = (0..out * cols).map(|i| ((seed as usize + i * 7) % 3) as i8 - 1).collect();
            let p = pack(&codes, out, cols).unwrap();
            prop_assert_eq!(Some(p.len()), packed_len(out, cols));
            prop_assert_eq!(unpack(&p, out, cols).unwrap(), codes);
        }
    }

    #[test]
    fn finds_the_first_invalid_field() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            let mut bytes = vec![0b10_01_00_10u8; len];
            assert_eq!(first_invalid_2bit(&bytes), None);
            for at in [len / 2, len.saturating_sub(1)] {
                if at < len {
                    for shift in [0, 2, 4, 6] {
                        let mut b = bytes.clone();
                        b[at] |= 0b11 << shift;
                        assert_eq!(first_invalid_2bit(&b), Some(at), "len {len}, byte {at}");
                    }
                }
            }
            if len > 3 {
                bytes[len - 1] = 0xff;
                bytes[2] = 0b11_00_00_00;
                assert_eq!(first_invalid_2bit(&bytes), Some(2));
            }
        }
    }

    #[test]
    fn row_blocks_not_adjacent_rows() {
        // out = 5: R = 2, so byte [0, 0] holds rows 0, 2, 4 and byte [1, 0] rows 1, 3.
        let codes = [1, -1, 0, 1, -1];
        let p = pack(&codes, 5, 1).unwrap();
        assert_eq!(p, vec![0b00_00_01_10, 0b00_00_10_00]);
    }

    #[test]
    fn rejects_invalid_and_truncated() {
        assert!(matches!(
            unpack(&[0b1100_0000, 0], 5, 1),
            Err(Error::InvalidCode { byte: 0, .. })
        ));
        assert!(matches!(
            unpack(&[0; 3], 5, 2),
            Err(Error::BadLength { expected: 4, .. })
        ));
        assert!(pack(&[3], 1, 1).is_err());
        // A header claiming 2^63 columns must not wrap to an empty buffer.
        assert!(matches!(
            unpack(&[], 8, 1 << 63),
            Err(Error::ShapeOverflow { .. })
        ));
    }
}
