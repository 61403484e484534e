//! llama.cpp's TQ2_0 (type 35): 2.0625 bits per weight.
//!
//! Blocks of 256 weights: `qs[64]` then an f16 scale `d` (66 bytes). Codes
//! 0, 1, 2 mean -1, 0, +1; element `j*128 + n*32 + m` (j < 2, n < 4, m < 32)
//! sits in byte `j*32 + m` at bits `2n..2n+1`. Dequantized `(code - 1) * d`.
//!
//! ```text
//! qs[j*32 + m]: [7 6       | 5 4      | 3 2      | 1 0]
//!                e j128+96+m  e j128+64+m e j128+32+m  e j128+m
//! ```

use super::{QuantBlock, TernaryBlock, read_f16};
use crate::error::{Error, Format, Result};
use half::f16;

/// Weights per block.
pub const QK: usize = 256;

/// One TQ2_0 block.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockTq2_0 {
    /// 2-bit codes, four per byte.
    pub qs: [u8; QK / 4],
    /// Dequantizing scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockTq2_0>() == 66);

impl BlockTq2_0 {
    /// Bits per weight.
    pub const BITS_PER_WEIGHT: f64 = 66.0 * 8.0 / QK as f64;

    fn from_codes(codes: &[i8], d: f16) -> Self {
        let mut qs = [0u8; QK / 4];
        for (i, &t) in codes.iter().enumerate() {
            let (j, n, m) = (i / 128, (i % 128) / 32, i % 32);
            qs[j * 32 + m] |= ((t + 1) as u8) << (2 * n);
        }
        BlockTq2_0 { qs, d }
    }

    /// The 256 codes of this block.
    pub fn codes(&self) -> [i8; QK] {
        let mut out = [0i8; QK];
        for (i, o) in out.iter_mut().enumerate() {
            let (j, n, m) = (i / 128, (i % 128) / 32, i % 32);
            *o = ((self.qs[j * 32 + m] >> (2 * n)) & 3) as i8 - 1;
        }
        out
    }
}

impl QuantBlock for BlockTq2_0 {
    const FORMAT: Format = Format::Tq2_0;
    const WEIGHTS: usize = QK;
    const BYTES: usize = 66;

    fn read(bytes: &[u8], offset: usize) -> Result<Self> {
        let mut qs = [0u8; QK / 4];
        qs.copy_from_slice(&bytes[..QK / 4]);
        if let Some(i) = super::hf2bit::first_invalid_2bit(&qs) {
            return Err(Error::InvalidCode {
                format: Format::Tq2_0,
                byte: offset + i,
                code: 0b11,
            });
        }
        Ok(BlockTq2_0 {
            qs,
            d: read_f16("TQ2_0 block", &bytes[QK / 4..])?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.qs);
        out.extend_from_slice(&self.d.to_le_bytes());
    }
}

impl TernaryBlock for BlockTq2_0 {
    fn from_codes(codes: &[i8], d: f16) -> Self {
        BlockTq2_0::from_codes(codes, d)
    }
    fn codes(&self) -> [i8; 256] {
        BlockTq2_0::codes(self)
    }
    fn scale(&self) -> f16 {
        self.d
    }
}

/// Packs ternary codes with one dequantizing scale (e.g. `mean |W|`) for
/// every block; `codes.len()` must be a multiple of 256.
pub fn from_ternary(codes: &[i8], scale: f32) -> Result<Vec<BlockTq2_0>> {
    super::blocks_from_ternary(codes, scale)
}

/// Quantizes floats as llama.cpp's `quantize_row_tq2_0_ref` does: `d` is the block
/// absmax, codes `lroundf(x / d)`.
pub fn quantize(x: &[f32]) -> Result<Vec<BlockTq2_0>> {
    super::quantize_blocks(x)
}

/// All codes and per-block scales.
pub fn to_codes(blocks: &[BlockTq2_0]) -> (Vec<i8>, Vec<f32>) {
    super::blocks_to_codes(blocks)
}

/// Dequantized weights.
pub fn dequantize(blocks: &[BlockTq2_0]) -> Vec<f32> {
    super::dequantize_blocks(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{blocks_from_bytes, blocks_to_bytes};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(blocks in 1usize..4, seed in any::<u32>()) {
            let codes: Vec<i8> = (0..blocks * QK).map(|i| ((seed as usize ^ (i * 13)) % 3) as i8 - 1).collect();
            let b = from_ternary(&codes, 0.75).unwrap();
            let bytes = blocks_to_bytes(&b);
            prop_assert_eq!(bytes.len(), blocks * 66);
            let back: Vec<BlockTq2_0> = blocks_from_bytes(&bytes, codes.len()).unwrap();
            prop_assert_eq!(to_codes(&back), (codes, vec![0.75; blocks]));
        }
    }

    #[test]
    fn layout_and_ggml_quantize() {
        let mut x = vec![0.0f32; QK];
        x[128 + 2 * 32 + 5] = 2.0; // j=1, n=2, m=5 → byte 37, bits 4-5
        x[0] = -1.0; // half of absmax: lroundf(-0.5) = -1
        let b = quantize(&x).unwrap();
        assert_eq!(b[0].d.to_f32(), 2.0);
        assert_eq!((b[0].qs[37] >> 4) & 3, 2);
        assert_eq!(b[0].qs[0] & 3, 0);
        assert_eq!(dequantize(&b)[0], -2.0);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(from_ternary(&[0; 100], 1.0).is_err());
        // Scales f16 cannot hold are refused, not stored as infinity.
        assert!(from_ternary(&[0; QK], 1e6).is_err());
        assert!(quantize(&[-5.38e34; QK]).is_err());
        let mut bytes = blocks_to_bytes(&from_ternary(&[0; QK], 1.0).unwrap());
        assert!(matches!(
            blocks_from_bytes::<BlockTq2_0>(&bytes[..65], QK),
            Err(Error::BadLength { .. })
        ));
        let mut nan = bytes.clone();
        nan[64..66].copy_from_slice(&half::f16::NAN.to_le_bytes());
        assert!(matches!(
            blocks_from_bytes::<BlockTq2_0>(&nan, QK),
            Err(Error::BadScale { .. })
        ));
        bytes[10] = 0xff;
        assert!(matches!(
            blocks_from_bytes::<BlockTq2_0>(&bytes, QK),
            Err(Error::InvalidCode { byte: 10, .. })
        ));
        assert!(quantize(&[f32::NAN; QK]).is_err());
    }
}
