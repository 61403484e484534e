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

/// The per-block scale llama.cpp's reference quantizers use: the block's absmax.
pub(crate) fn block_absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// ggml's ternary code of `x` given `1 / absmax`: `lroundf(x * id)`, which
/// rounds half away from zero (unlike the BitNet reference's half to even).
pub(crate) fn ggml_ternary(x: f32, id: f32) -> i8 {
    (x * id).round().clamp(-1.0, 1.0) as i8
}
