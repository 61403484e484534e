//! bitnet.cpp's I2_S tensor type (x86 layout), exactly 2 bits per weight.
//!
//! The tensor is flattened row-major and cut into groups of 128 weights, each
//! stored in 32 bytes. Byte `g` of a group holds the group's elements `g`,
//! `32 + g`, `64 + g`, `96 + g` at bit shifts 6, 4, 2, 0, as codes
//! 0, 1, 2 = -1, 0, +1. One f32 scale for the whole tensor (the dequantizing
//! multiplier, `mean |W|` for a BitNet tensor) follows at byte offset `n / 4`,
//! and the tensor occupies `n / 4 + 32` bytes (the scale padded to 32).
//!
//! ```text
//! byte g:  [7 6  | 5 4   | 3 2   | 1 0]
//!           e g   e 32+g  e 64+g  e 96+g
//! ```
//!
//! This is what bitnet.cpp's `quantize_i2_s` writes in its default x86
//! build (`ACT_PARALLEL` in `include/gemm-config.h`), checked against
//! `src/ggml-bitnet-mad.cpp`. Two other layouts share type id 36 and the
//! same byte count, and no header field tells them apart: x86 builds
//! without `ACT_PARALLEL` interleave four rows per byte, and newer ARM builds
//! pack groups of 64 into 16 bytes. Files from those read as scrambled
//! weights; convert them on x86 with the default build.

use super::{hf2bit::first_invalid_2bit, shape_text};
use crate::error::{Error, Format, Result};
use crate::quantize::ternary::check_codes;

/// Weights per group.
pub const GROUP: usize = 128;
/// Bytes after the packed weights (the scale and its padding).
pub const TRAILER: usize = 32;

/// Bytes an I2_S tensor of `n` weights occupies.
pub fn tensor_len(n: usize) -> usize {
    n / 4 + TRAILER
}

fn check_len(n: usize) -> Result<()> {
    if n == 0 || !n.is_multiple_of(GROUP) {
        return Err(Error::Unsupported(format!(
            "I2_S needs a non-zero element count that is a multiple of {GROUP}, got {n}"
        )));
    }
    Ok(())
}

/// Packs `n` codes (row-major) and the tensor's dequantizing scale.
pub fn pack(codes: &[i8], scale: f32) -> Result<Vec<u8>> {
    check_len(codes.len())?;
    check_codes(codes)?;
    // bitnet.cpp stores max |W| (never negative), and readers take the
    // magnitude, so a sign here would be silently lost.
    if !scale.is_finite() || scale.is_sign_negative() {
        return Err(Error::BadScale {
            what: "I2_S tensor",
            value: scale,
        });
    }
    let n = codes.len();
    let mut out = vec![0u8; tensor_len(n)];
    for (group, dst) in codes.chunks(GROUP).zip(out.chunks_mut(GROUP / 4)) {
        for (i, &t) in group.iter().enumerate() {
            dst[i % 32] |= ((t + 1) as u8) << (6 - 2 * (i / 32));
        }
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    Ok(out)
}

/// Unpacks an I2_S tensor of `n` weights: codes and scale.
pub fn unpack(bytes: &[u8], n: usize) -> Result<(Vec<i8>, f32)> {
    check_len(n)?;
    if bytes.len() != tensor_len(n) {
        return Err(Error::BadLength {
            format: Format::I2S,
            shape: shape_text(&[n]),
            expected: tensor_len(n),
            actual: bytes.len(),
        });
    }
    let packed = &bytes[..n / 4];
    if let Some(byte) = first_invalid_2bit(packed) {
        return Err(Error::InvalidCode {
            format: Format::I2S,
            byte,
            code: 0b11,
        });
    }
    let mut scale_bytes = [0u8; 4];
    scale_bytes.copy_from_slice(&bytes[n / 4..n / 4 + 4]);
    let scale = f32::from_le_bytes(scale_bytes);
    if !scale.is_finite() {
        return Err(Error::BadScale {
            what: "I2_S tensor",
            value: scale,
        });
    }
    let mut codes = vec![0i8; n];
    for (src, dst) in packed.chunks(GROUP / 4).zip(codes.chunks_mut(GROUP)) {
        if src.len() == 32 && dst.len() == 128 {
            // A whole group: four slices of 32, one per bit pair (vectorizes).
            for (k, part) in dst.chunks_exact_mut(32).enumerate() {
                let shift = 6 - 2 * k;
                for (d, &b) in part.iter_mut().zip(src) {
                    *d = ((b >> shift) & 3) as i8 - 1;
                }
            }
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = ((src[i % 32] >> (6 - 2 * (i / 32))) & 3) as i8 - 1;
            }
        }
    }
    Ok((codes, scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(groups in 1usize..6, seed in any::<u32>(), scale in 0.0f32..4.0) {
            let codes: Vec<i8> = (0..groups * GROUP).map(|i| ((seed as usize ^ (i * 31)) % 3) as i8 - 1).collect();
            let bytes = pack(&codes, scale).unwrap();
            prop_assert_eq!(bytes.len(), groups * 32 + 32);
            prop_assert_eq!(unpack(&bytes, codes.len()).unwrap(), (codes, scale));
        }
    }

    #[test]
    fn layout() {
        let mut codes = vec![0i8; 128];
        codes[0] = 1; // bits 6-7 of byte 0 = 2
        codes[96 + 5] = -1; // bits 0-1 of byte 5 = 0
        let b = pack(&codes, 0.5).unwrap();
        assert_eq!(b[0], 0b10_01_01_01);
        assert_eq!(b[5], 0b01_01_01_00);
        assert_eq!(&b[32..36], &0.5f32.to_le_bytes());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(pack(&[0; 100], 1.0).is_err());
        assert!(pack(&[0; 128], f32::NAN).is_err());
        assert!(pack(&[0; 128], -1.0).is_err() && pack(&[0; 128], -0.0).is_err());
        let mut b = pack(&[0; 128], 1.0).unwrap();
        assert!(matches!(
            unpack(&b[..40], 128),
            Err(Error::BadLength { .. })
        ));
        b[7] = 0b0000_0011;
        assert!(matches!(
            unpack(&b, 128),
            Err(Error::InvalidCode { byte: 7, .. })
        ));
    }
}
