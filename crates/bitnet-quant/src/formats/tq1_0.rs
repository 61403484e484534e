//! llama.cpp's TQ1_0 (type 34): 1.6875 bits per weight.
//!
//! Blocks of 256 weights: `qs[48]`, `qh[4]`, f16 `d` (54 bytes). Five trits
//! (code + 1 ∈ {0, 1, 2}) make a number `v < 243`, first trit most
//! significant, stored as `ceil(v * 256 / 243)` so that trit `n` comes out
//! as the high byte of `3 * (byte * 3^n mod 256)`, one multiply per digit.
//!
//! ```text
//! qs[m],      m < 32: elements n*32 + m           (n = trit 0..5)
//! qs[32 + m], m < 16: elements 160 + n*16 + m     (n = trit 0..5)
//! qh[j],      j < 4:  elements 240 + n*4 + j      (n = trit 0..4; trit 4 is 0)
//! ```
//!
//! Only 243 of 256 byte values (81 for `qh`) are ever written; the others
//! are rejected as invalid codes.

use super::{QuantBlock, TernaryBlock, read_f16};
use crate::error::{Error, Format, Result};
use half::f16;

/// Weights per block.
pub const QK: usize = 256;

/// One TQ1_0 block.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockTq1_0 {
    /// Five trits per byte (elements 0..240).
    pub qs: [u8; 48],
    /// Four trits per byte (elements 240..256).
    pub qh: [u8; 4],
    /// Dequantizing scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockTq1_0>() == 54);

const POW3: [u16; 5] = [81, 27, 9, 3, 1];

/// Byte index (0..52, `qh` from 48) and trit number of element `i`.
#[inline]
fn slot(i: usize) -> (usize, usize) {
    match i {
        0..160 => (i % 32, i / 32),
        160..240 => (32 + (i - 160) % 16, (i - 160) / 16),
        _ => (48 + (i - 240) % 4, (i - 240) / 4),
    }
}

/// `ceil(v * 256 / 243)`: a 5-trit number as stored.
const fn encode(v: u16) -> u8 {
    ((v * 256).div_ceil(243)) as u8
}

/// Trit `n` (0 most significant) of a stored byte.
#[inline]
fn decode_trit(byte: u8, n: usize) -> u8 {
    let q = byte.wrapping_mul([1u8, 3, 9, 27, 81][n]);
    ((u16::from(q) * 3) >> 8) as u8
}

const fn valid_table(step: u16, count: u16) -> [bool; 256] {
    let mut t = [false; 256];
    let mut v = 0;
    while v < count {
        t[encode(v * step) as usize] = true;
        v += 1;
    }
    t
}

static VALID_QS: [bool; 256] = valid_table(1, 243);
static VALID_QH: [bool; 256] = valid_table(3, 81);

impl BlockTq1_0 {
    /// Bits per weight.
    pub const BITS_PER_WEIGHT: f64 = 54.0 * 8.0 / QK as f64;

    fn from_codes(codes: &[i8], d: f16) -> Self {
        let mut v = [0u16; 52];
        for (i, &t) in codes.iter().enumerate() {
            let (byte, n) = slot(i);
            v[byte] += (t + 1) as u16 * POW3[n];
        }
        let mut b = BlockTq1_0 {
            qs: [0; 48],
            qh: [0; 4],
            d,
        };
        for (i, &v) in v.iter().enumerate() {
            match i {
                0..48 => b.qs[i] = encode(v),
                _ => b.qh[i - 48] = encode(v),
            }
        }
        b
    }

    /// The 256 codes of this block.
    pub fn codes(&self) -> [i8; QK] {
        let mut out = [0i8; QK];
        for (i, o) in out.iter_mut().enumerate() {
            let (byte, n) = slot(i);
            let b = if byte < 48 {
                self.qs[byte]
            } else {
                self.qh[byte - 48]
            };
            *o = decode_trit(b, n) as i8 - 1;
        }
        out
    }
}

impl QuantBlock for BlockTq1_0 {
    const FORMAT: Format = Format::Tq1_0;
    const WEIGHTS: usize = QK;
    const BYTES: usize = 54;

    fn read(bytes: &[u8], offset: usize) -> Result<Self> {
        let mut b = BlockTq1_0 {
            qs: [0; 48],
            qh: [0; 4],
            d: read_f16("TQ1_0 block", &bytes[52..])?,
        };
        b.qs.copy_from_slice(&bytes[..48]);
        b.qh.copy_from_slice(&bytes[48..52]);
        let bad =
            b.qs.iter()
                .position(|&q| !VALID_QS[q as usize])
                .or_else(|| {
                    b.qh.iter()
                        .position(|&q| !VALID_QH[q as usize])
                        .map(|j| 48 + j)
                });
        if let Some(i) = bad {
            return Err(Error::InvalidCode {
                format: Format::Tq1_0,
                byte: offset + i,
                code: bytes[i],
            });
        }
        Ok(b)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.qs);
        out.extend_from_slice(&self.qh);
        out.extend_from_slice(&self.d.to_le_bytes());
    }
}

impl TernaryBlock for BlockTq1_0 {
    fn from_codes(codes: &[i8], d: f16) -> Self {
        BlockTq1_0::from_codes(codes, d)
    }
    fn codes(&self) -> [i8; 256] {
        BlockTq1_0::codes(self)
    }
    fn scale(&self) -> f16 {
        self.d
    }
}

/// Packs ternary codes with one dequantizing scale (e.g. `mean |W|`) for
/// every block; `codes.len()` must be a multiple of 256.
pub fn from_ternary(codes: &[i8], scale: f32) -> Result<Vec<BlockTq1_0>> {
    super::blocks_from_ternary(codes, scale)
}

/// Quantizes floats as llama.cpp's `quantize_row_tq1_0_ref` does: `d` is the block
/// absmax, codes `lroundf(x / d)`.
pub fn quantize(x: &[f32]) -> Result<Vec<BlockTq1_0>> {
    super::quantize_blocks(x)
}

/// All codes and per-block scales.
pub fn to_codes(blocks: &[BlockTq1_0]) -> (Vec<i8>, Vec<f32>) {
    super::blocks_to_codes(blocks)
}

/// Dequantized weights.
pub fn dequantize(blocks: &[BlockTq1_0]) -> Vec<f32> {
    super::dequantize_blocks(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{blocks_from_bytes, blocks_to_bytes};
    use proptest::prelude::*;

    #[test]
    fn every_five_trit_number_decodes() {
        for v in 0..243u16 {
            let b = encode(v);
            let mut rest = v;
            for (n, &p) in POW3.iter().enumerate() {
                assert_eq!(u16::from(decode_trit(b, n)), rest / p, "v={v} n={n}");
                rest %= p;
            }
        }
        assert_eq!(VALID_QS.iter().filter(|&&x| x).count(), 243);
        assert_eq!(VALID_QH.iter().filter(|&&x| x).count(), 81);
    }

    proptest! {
        #[test]
        fn round_trip(blocks in 1usize..4, seed in any::<u32>()) {
            let codes: Vec<i8> = (0..blocks * QK).map(|i| ((seed as usize ^ (i * 29)) % 3) as i8 - 1).collect();
            let b = from_ternary(&codes, 1.5).unwrap();
            let bytes = blocks_to_bytes(&b);
            prop_assert_eq!(bytes.len(), blocks * 54);
            let back: Vec<BlockTq1_0> = blocks_from_bytes(&bytes, codes.len()).unwrap();
            prop_assert_eq!(to_codes(&back), (codes, vec![1.5; blocks]));
        }
    }

    #[test]
    fn ggml_quantize_and_layout() {
        let mut x = vec![0.0f32; QK];
        x[0] = 4.0; // qs[0], first (most significant) trit
        x[255] = -4.0; // qh[3], trit 3
        let b = quantize(&x).unwrap();
        assert_eq!(b[0].qs[0], encode(2 * 81 + 27 + 9 + 3 + 1));
        assert_eq!(b[0].qh[3], encode(3 * (27 + 9 + 3)));
        let y = dequantize(&b);
        assert_eq!((y[0], y[255], y[1]), (4.0, -4.0, 0.0));
    }

    #[test]
    fn rejects_bytes_no_encoder_writes() {
        let mut bytes = blocks_to_bytes(&from_ternary(&[0; QK], 1.0).unwrap());
        let invalid = (0..=255u8).find(|&b| !VALID_QS[b as usize]).unwrap();
        let mut inf = bytes.clone();
        inf[52..54].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        assert!(matches!(
            blocks_from_bytes::<BlockTq1_0>(&inf, QK),
            Err(Error::BadScale { .. })
        ));
        bytes[3] = invalid;
        assert!(matches!(
            blocks_from_bytes::<BlockTq1_0>(&bytes, QK),
            Err(Error::InvalidCode { byte: 3, .. })
        ));
        assert!(blocks_from_bytes::<BlockTq1_0>(&bytes[..53], QK).is_err());
    }

    #[test]
    fn refuses_scales_f16_cannot_hold() {
        assert!(from_ternary(&[0; QK], 1e6).is_err());
        assert!(from_ternary(&[0; QK], f32::NAN).is_err());
        assert!(quantize(&[-5.38e34; QK]).is_err());
    }
}
