//! Packed ternary weight formats: the files' layouts (HF 2-bit, bitnet.cpp
//! I2_S, llama.cpp TQ1_0 and TQ2_0) and the runtime layout the kernels read.
//!
//! Every format converts to and from plain row-major codes in {-1, 0, 1}
//! losslessly, and every decoder rejects codes that no encoder writes and
//! buffers whose length does not match the shape.

pub mod hf2bit;
pub mod i2s;
pub mod runtime;
pub mod tq1_0;
pub mod tq2_0;

/// Describes a shape for error messages.
pub(crate) fn shape_text(dims: &[usize]) -> String {
    format!("{dims:?}")
}

use crate::error::{Error, Format, Result};

/// A fixed-size quantization block of a llama.cpp-style format.
pub trait QuantBlock: Sized {
    /// The format, for errors.
    const FORMAT: Format;
    /// Weights per block.
    const WEIGHTS: usize;
    /// Bytes per block on disk.
    const BYTES: usize;
    /// Parses one block of exactly `Self::BYTES` bytes; `offset` is its
    /// position in the tensor, for errors.
    fn read(bytes: &[u8], offset: usize) -> Result<Self>;
    /// Appends the block's bytes.
    fn write(&self, out: &mut Vec<u8>);
}

/// Parses the blocks of a tensor of `n` weights, checking the length first.
pub fn blocks_from_bytes<B: QuantBlock>(bytes: &[u8], n: usize) -> Result<Vec<B>> {
    check_block_multiple::<B>(n)?;
    let expected = n / B::WEIGHTS * B::BYTES;
    if bytes.len() != expected {
        return Err(Error::BadLength {
            format: B::FORMAT,
            shape: shape_text(&[n]),
            expected,
            actual: bytes.len(),
        });
    }
    bytes
        .chunks_exact(B::BYTES)
        .enumerate()
        .map(|(i, b)| B::read(b, i * B::BYTES))
        .collect()
}

/// Serializes blocks back to bytes.
pub fn blocks_to_bytes<B: QuantBlock>(blocks: &[B]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len() * B::BYTES);
    for b in blocks {
        b.write(&mut out);
    }
    out
}

/// Checks that `n` weights fill whole blocks.
pub(crate) fn check_block_multiple<B: QuantBlock>(n: usize) -> Result<()> {
    if !n.is_multiple_of(B::WEIGHTS) {
        return Err(Error::Unsupported(format!(
            "{} needs a multiple of {} weights, got {n}",
            B::FORMAT,
            B::WEIGHTS
        )));
    }
    Ok(())
}

/// A block scale as f16, rejecting values f16 cannot hold (|d| > 65504 or
/// not finite) rather than storing an infinity that dequantizes to inf/NaN.
pub(crate) fn f16_scale(format: Format, value: f32) -> Result<half::f16> {
    let d = half::f16::from_f32(value);
    if d.is_finite() {
        Ok(d)
    } else {
        Err(Error::Unsupported(format!(
            "{format}: block scale {value} does not fit in f16 (|scale| <= 65504); \
             rescale the tensor first"
        )))
    }
}

/// Reads the little-endian f16 scale of a block, rejecting NaN and
/// infinities (a corrupt file: they would dequantize to NaN).
pub(crate) fn read_f16(what: &'static str, bytes: &[u8]) -> Result<half::f16> {
    let d = half::f16::from_le_bytes([bytes[0], bytes[1]]);
    if d.is_finite() {
        Ok(d)
    } else {
        Err(Error::BadScale {
            what,
            value: d.to_f32(),
        })
    }
}

/// A llama.cpp ternary block (TQ1_0, TQ2_0): 256 codes and an f16 scale.
pub trait TernaryBlock: QuantBlock {
    /// Packs 256 codes in {-1, 0, 1} with scale `d`.
    fn from_codes(codes: &[i8], d: half::f16) -> Self;
    /// The block's 256 codes.
    fn codes(&self) -> [i8; 256];
    /// The block's dequantizing scale.
    fn scale(&self) -> half::f16;
}

/// Packs codes with one dequantizing scale for every block.
pub(crate) fn blocks_from_ternary<B: TernaryBlock>(codes: &[i8], scale: f32) -> Result<Vec<B>> {
    check_block_multiple::<B>(codes.len())?;
    crate::quantize::ternary::check_codes(codes)?;
    let d = f16_scale(B::FORMAT, scale)?;
    Ok(codes
        .chunks(B::WEIGHTS)
        .map(|c| B::from_codes(c, d))
        .collect())
}

/// llama.cpp's reference quantization: `d` is the block absmax and codes are
/// `lroundf(x / d)`, which rounds half away from zero (unlike the BitNet
/// reference's half to even).
pub(crate) fn quantize_blocks<B: TernaryBlock>(x: &[f32]) -> Result<Vec<B>> {
    check_block_multiple::<B>(x.len())?;
    crate::quantize::check_finite("ternary block input", x, "ternary block quantize")?;
    x.chunks(B::WEIGHTS)
        .map(|b| {
            let d = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let codes: Vec<i8> = b
                .iter()
                .map(|&v| (v * id).round().clamp(-1.0, 1.0) as i8)
                .collect();
            Ok(B::from_codes(&codes, f16_scale(B::FORMAT, d)?))
        })
        .collect()
}

/// All codes and per-block scales.
pub(crate) fn blocks_to_codes<B: TernaryBlock>(blocks: &[B]) -> (Vec<i8>, Vec<f32>) {
    (
        blocks.iter().flat_map(|b| b.codes()).collect(),
        blocks.iter().map(|b| b.scale().to_f32()).collect(),
    )
}

/// Dequantized weights, `code * d`.
pub(crate) fn dequantize_blocks<B: TernaryBlock>(blocks: &[B]) -> Vec<f32> {
    blocks
        .iter()
        .flat_map(|b| {
            let d = b.scale().to_f32();
            b.codes().map(|t| f32::from(t) * d)
        })
        .collect()
}
