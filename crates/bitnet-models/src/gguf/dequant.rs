//! Row-wise dequantization of the GGUF float storage types to f32: F32,
//! F16, BF16, Q8_0 and the k-quants Q4_K and Q6_K (what llama.cpp's
//! quantizer writes for `token_embd` and `output` by default).
//!
//! These types hold embeddings and the output projection, never the ternary
//! layers, so they live beside the GGUF type table rather than in
//! `bitnet_quant::formats` (whose formats are the ternary ones the kernels
//! compute with). The API works on one row at a time so that an engine can
//! dequantize a single embedding row straight from the memory-mapped file
//! ([`GgufFile::dequantize_row`]).
//!
//! Block layouts (ggml's `block_q8_0`, `block_q4_K`, `block_q6_K`; all
//! little-endian, no padding). Each decoder follows ggml's scalar
//! `dequantize_row_*` exactly, in the same float operation order, so the
//! results are bit-identical to ggml's and to gguf-py's numpy `dequantize`.
//!
//! ```text
//! Q8_0 (8.5 bits/weight): 32 weights, 34 bytes
//!   0   2  f16 d
//!   2  32  i8 qs[32]                 y[i] = d * qs[i]
//!
//! Q4_K (4.5 bits/weight): 256 weights in 8 sub-blocks of 32, 144 bytes
//!   0   2  f16 d                     super-block scale of the scales
//!   2   2  f16 dmin                  super-block scale of the mins
//!   4  12  scales: 8 six-bit scales sc[j] and 8 six-bit mins m[j]
//!          byte 0..4 : sc[0..4] in bits 0-5, bits 6-7 = high bits of sc[4..8]
//!          byte 4..8 : m[0..4]  in bits 0-5, bits 6-7 = high bits of m[4..8]
//!          byte 8..12: low nibble = sc[4..8] bits 0-3, high nibble = m[4..8] bits 0-3
//!  16 128  qs: 4-bit codes; 32-byte group g holds sub-block 2g in the low
//!          nibbles and sub-block 2g+1 in the high nibbles
//!          y = (d*sc[j]) * q - (dmin*m[j])
//!
//! Q6_K (6.5625 bits/weight): 256 weights in 16 sub-blocks of 16, 210 bytes
//!   0 128  ql: low 4 bits of the codes
//! 128  64  qh: high 2 bits of the codes
//! 192  16  i8 scales[16], one per 16 weights
//! 208   2  f16 d
//!          per half h (128 weights; ql += 64h, qh += 32h), l < 32:
//!          q[l]    = ql[l]    & 15 | (qh[l] >> 0 & 3) << 4
//!          q[l+32] = ql[l+32] & 15 | (qh[l] >> 2 & 3) << 4
//!          q[l+64] = ql[l]    >> 4 | (qh[l] >> 4 & 3) << 4
//!          q[l+96] = ql[l+32] >> 4 | (qh[l] >> 6 & 3) << 4
//!          y[i] = (d * scales[i / 16]) * (q[i] - 32)
//! ```
//!
//! A block whose f16 scale is NaN or infinite is rejected
//! ([`DequantError::NonFiniteScale`]) rather than spreading NaN into the
//! model; plain F32/F16/BF16 values are passed through as stored.

use super::reader::GgufFile;
use super::types::{GgmlType, Layout};
use crate::error::{Error, Result};
use bitnet_quant::formats::{TernaryBlock, tq1_0::BlockTq1_0, tq2_0::BlockTq2_0};
use half::{bf16, f16};
use std::fmt;

/// ggml's `QK_K`: weights per k-quant super-block.
pub const QK_K: usize = 256;
/// ggml's `QK8_0`: weights per Q8_0 block.
pub const QK8_0: usize = 32;

/// One Q8_0 block (8.5 bits per weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// f16 scale, little-endian bytes.
    pub d: [u8; 2],
    /// Signed 8-bit codes.
    pub qs: [i8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// One Q4_K super-block (4.5 bits per weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4K {
    /// f16 scale of the 6-bit sub-block scales, little-endian bytes.
    pub d: [u8; 2],
    /// f16 scale of the 6-bit sub-block mins, little-endian bytes.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit mins, packed (see the module doc).
    pub scales: [u8; 12],
    /// 4-bit codes, two per byte.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// One Q6_K super-block (6.5625 bits per weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ6K {
    /// Low 4 bits of the codes.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the codes.
    pub qh: [u8; QK_K / 4],
    /// Signed 8-bit scales, one per 16 weights.
    pub scales: [i8; QK_K / 16],
    /// f16 super-block scale, little-endian bytes.
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// Why a row could not be dequantized.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum DequantError {
    /// The type is not one of F32, F16, BF16, Q8_0, Q4_K, Q6_K.
    UnsupportedType(GgmlType),
    /// The output length is not a whole number of the type's blocks.
    PartialBlock {
        /// Output length asked for.
        len: usize,
        /// The type's weights per block.
        block: usize,
    },
    /// The input does not hold exactly the bytes `len` weights need.
    Length {
        /// Bytes required.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A ternary block holds a code outside {-1, 0, +1}.
    BadBlock {
        /// Block index within the row.
        block: usize,
    },
    /// A block's f16 scale is NaN or infinite.
    NonFiniteScale {
        /// Block index within the row.
        block: usize,
        /// The scale as f32.
        value: f32,
    },
}

impl fmt::Display for DequantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DequantError::UnsupportedType(t) => write!(
                f,
                "type {t} cannot be dequantized to f32 here (F32, F16, BF16, Q8_0, Q4_K, Q6_K, TQ1_0, TQ2_0 can)"
            ),
            DequantError::PartialBlock { len, block } => {
                write!(
                    f,
                    "{len} weights are not a multiple of the block size {block}"
                )
            }
            DequantError::Length { expected, actual } => {
                write!(f, "needs {expected} bytes, got {actual}")
            }
            DequantError::BadBlock { block } => {
                write!(f, "block {block} holds a ternary code outside -1, 0, +1")
            }
            DequantError::NonFiniteScale { block, value } => {
                write!(f, "block {block} has a non-finite scale {value}")
            }
        }
    }
}

impl std::error::Error for DequantError {}

/// Whether [`dequantize_row`] handles `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q6_K
            | GgmlType::TQ1_0
            | GgmlType::TQ2_0
    )
}

/// Bytes that `n` weights of `ty` occupy, checking `ty` is supported and
/// `n` fills whole blocks.
#[inline]
pub fn row_bytes(ty: GgmlType, n: usize) -> std::result::Result<usize, DequantError> {
    let Layout::Blocks { weights, bytes } = ty.layout() else {
        return Err(DequantError::UnsupportedType(ty));
    };
    if !is_supported(ty) {
        return Err(DequantError::UnsupportedType(ty));
    }
    let (w, b) = (weights as usize, bytes as usize);
    if !n.is_multiple_of(w) {
        return Err(DequantError::PartialBlock { len: n, block: w });
    }
    Ok(n / w * b)
}

#[inline(always)]
fn finite_f16(b: [u8; 2], block: usize) -> std::result::Result<f32, DequantError> {
    let v = f16::from_le_bytes(b).to_f32();
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DequantError::NonFiniteScale { block, value: v })
    }
}

/// Decodes `out.len()` weights of type `ty` from `bytes` (exactly
/// [`row_bytes`]`(ty, out.len())` bytes) into `out`.
/// Inlined into its callers so the block decoders vectorize under the
/// caller's target features (the output-layer row dots).
#[inline(always)]
pub fn dequantize_row(
    ty: GgmlType,
    bytes: &[u8],
    out: &mut [f32],
) -> std::result::Result<(), DequantError> {
    let expected = row_bytes(ty, out.len())?;
    if bytes.len() != expected {
        return Err(DequantError::Length {
            expected,
            actual: bytes.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (i, (o, c)) in out
                .chunks_exact_mut(QK8_0)
                .zip(bytes.chunks_exact(34))
                .enumerate()
            {
                BlockQ8_0::read(c).dequantize(i, o)?;
            }
        }
        GgmlType::Q4_K => {
            for (i, (o, c)) in out
                .chunks_exact_mut(QK_K)
                .zip(bytes.chunks_exact(144))
                .enumerate()
            {
                BlockQ4K::read(c).dequantize(i, o)?;
            }
        }
        GgmlType::Q6_K => {
            for (i, (o, c)) in out
                .chunks_exact_mut(QK_K)
                .zip(bytes.chunks_exact(210))
                .enumerate()
            {
                BlockQ6K::read(c).dequantize(i, o)?;
            }
        }
        GgmlType::TQ1_0 => ternary_blocks::<BlockTq1_0>(bytes, out)?,
        GgmlType::TQ2_0 => ternary_blocks::<BlockTq2_0>(bytes, out)?,
        other => return Err(DequantError::UnsupportedType(other)),
    }
    Ok(())
}

/// TQ1_0/TQ2_0 blocks as `code * d`, which is ggml's `(q - 1) * d`. Codes
/// are checked (ggml would read TQ2_0's unused code 3 as +2).
#[inline(always)]
fn ternary_blocks<B: TernaryBlock>(
    bytes: &[u8],
    out: &mut [f32],
) -> std::result::Result<(), DequantError> {
    for (i, (o, c)) in out
        .chunks_exact_mut(B::WEIGHTS)
        .zip(bytes.chunks_exact(B::BYTES))
        .enumerate()
    {
        let b = B::read(c, i * B::BYTES).map_err(|_| DequantError::BadBlock { block: i })?;
        let d = b.scale().to_f32();
        if !d.is_finite() {
            return Err(DequantError::NonFiniteScale { block: i, value: d });
        }
        for (y, t) in o.iter_mut().zip(b.codes()) {
            *y = f32::from(t) * d;
        }
    }
    Ok(())
}

/// Decodes a whole tensor of `ty` (rows of whole blocks) into a new vector.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> std::result::Result<Vec<f32>, DequantError> {
    let Layout::Blocks { weights, bytes: b } = ty.layout() else {
        return Err(DequantError::UnsupportedType(ty));
    };
    let n = bytes.len() / b as usize * weights as usize;
    let mut out = vec![0.0; n];
    dequantize_row(ty, bytes, &mut out)?;
    Ok(out)
}

impl BlockQ8_0 {
    /// Parses a 34-byte block.
    fn read(b: &[u8]) -> Self {
        let mut qs = [0i8; QK8_0];
        for (q, &v) in qs.iter_mut().zip(&b[2..34]) {
            *q = v as i8;
        }
        BlockQ8_0 {
            d: [b[0], b[1]],
            qs,
        }
    }

    /// ggml's `dequantize_row_q8_0` for one block; `index` is for errors.
    #[inline(always)]
    pub fn dequantize(
        &self,
        index: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), DequantError> {
        let d = finite_f16(self.d, index)?;
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
        Ok(())
    }
}

impl BlockQ4K {
    /// Parses a 144-byte block.
    fn read(b: &[u8]) -> Self {
        let mut blk = BlockQ4K {
            d: [b[0], b[1]],
            dmin: [b[2], b[3]],
            scales: [0; 12],
            qs: [0; QK_K / 2],
        };
        blk.scales.copy_from_slice(&b[4..16]);
        blk.qs.copy_from_slice(&b[16..144]);
        blk
    }

    /// Scale and min of sub-block `j` (ggml's `get_scale_min_k4`).
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        let q = &self.scales;
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// ggml's `dequantize_row_q4_K` for one block; `index` is for errors.
    #[inline(always)]
    pub fn dequantize(
        &self,
        index: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), DequantError> {
        let d = finite_f16(self.d, index)?;
        let min = finite_f16(self.dmin, index)?;
        for (g, (y, q)) in out
            .chunks_exact_mut(64)
            .zip(self.qs.chunks_exact(32))
            .enumerate()
        {
            let (sc, m) = self.scale_min(2 * g);
            let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
            let (sc, m) = self.scale_min(2 * g + 1);
            let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
            let (lo, hi) = y.split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * f32::from(q[l] & 0xF) - m1;
                hi[l] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
        Ok(())
    }
}

impl BlockQ6K {
    /// Parses a 210-byte block.
    fn read(b: &[u8]) -> Self {
        let mut blk = BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: [b[208], b[209]],
        };
        blk.ql.copy_from_slice(&b[..128]);
        blk.qh.copy_from_slice(&b[128..192]);
        for (s, &v) in blk.scales.iter_mut().zip(&b[192..208]) {
            *s = v as i8;
        }
        blk
    }

    /// ggml's `dequantize_row_q6_K` for one block; `index` is for errors.
    #[inline(always)]
    pub fn dequantize(
        &self,
        index: usize,
        out: &mut [f32],
    ) -> std::result::Result<(), DequantError> {
        let d = finite_f16(self.d, index)?;
        for (h, y) in out.chunks_exact_mut(128).enumerate() {
            let (ql, qh, sc) = (
                &self.ql[64 * h..64 * h + 64],
                &self.qh[32 * h..32 * h + 32],
                &self.scales[8 * h..8 * h + 8],
            );
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * f32::from(sc[is]) * f32::from(q1);
                y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
        Ok(())
    }
}

impl GgufFile {
    /// Dequantizes row `row` of the 2-D (or 1-D, row 0) tensor `name` into
    /// `out`, whose length must be the row length (`dims[0]`). Reads only
    /// that row's bytes from the mapping.
    pub fn dequantize_row(&self, name: &str, row: usize, out: &mut [f32]) -> Result<()> {
        let info = self.content().tensor(name)?;
        let bad = |reason: String| Error::BadTensor {
            path: self.content().source().to_path_buf(),
            tensor: name.to_string(),
            reason,
        };
        let dims = info.dims();
        let row_len = dims[0] as usize;
        let rows = (info.element_count() / dims[0].max(1)) as usize;
        if out.len() != row_len || row >= rows {
            return Err(bad(format!(
                "asked for row {row} into {} floats; the tensor has {rows} rows of {row_len}",
                out.len()
            )));
        }
        let ty = info.ggml_type();
        let rb = row_bytes(ty, row_len).map_err(|e| bad(e.to_string()))?;
        let data = self.tensor_bytes(name)?;
        let bytes = data
            .get(row * rb..(row + 1) * rb)
            .ok_or_else(|| bad(format!("row {row} lies outside the tensor data")))?;
        dequantize_row(ty, bytes, out).map_err(|e| bad(format!("row {row}: {e}")))
    }

    /// Dequantizes the whole tensor `name` to f32.
    pub fn dequantize_tensor(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.content().tensor(name)?;
        let bad = |reason: String| Error::BadTensor {
            path: self.content().source().to_path_buf(),
            tensor: name.to_string(),
            reason,
        };
        let mut out = vec![0.0; info.element_count() as usize];
        let ty = info.ggml_type();
        dequantize_row(ty, self.tensor_bytes(name)?, &mut out).map_err(|e| bad(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_by_hand() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0.0; 32];
        dequantize_row(GgmlType::Q8_0, &b, &mut out).unwrap();
        assert_eq!(out[0], -8.0);
        assert_eq!(out[31], 7.5);
    }

    #[test]
    fn q4_k_by_hand() {
        let mut b = [0u8; 144];
        b[..2].copy_from_slice(&f16b(2.0));
        b[2..4].copy_from_slice(&f16b(1.0));
        // sub-block 0: scale 3, min 5; sub-block 5: scale 0x2A, min 0x15.
        b[4] = 3;
        b[8] = 5;
        b[4 + 1] |= (0x2A >> 4) << 6;
        b[4 + 5] |= (0x15 >> 4) << 6;
        b[4 + 9] = (0x2A & 0xF) | ((0x15 & 0xF) << 4);
        b[16] = 0x7; // element 0 = 7
        b[16 + 64 + 1] = 0xC0; // group 2, high nibble: element 2*64+32+1 = 161 = 12
        let blk = BlockQ4K::read(&b);
        assert_eq!(blk.scale_min(0), (3, 5));
        assert_eq!(blk.scale_min(5), (0x2A, 0x15));
        let mut out = [0.0; 256];
        dequantize_row(GgmlType::Q4_K, &b, &mut out).unwrap();
        assert_eq!(out[0], 2.0 * 3.0 * 7.0 - 5.0);
        assert_eq!(out[1], -5.0);
        assert_eq!(out[161], 2.0 * 42.0 * 12.0 - 21.0);
        assert_eq!(out[160], -21.0);
    }

    #[test]
    fn q6_k_by_hand() {
        let mut b = [0u8; 210];
        b[208..].copy_from_slice(&f16b(0.25));
        b[192 + 5] = (-4i8) as u8; // scale of elements 80..96
        // element 128 + 64 + 17 = 209 (half 1, q3, l = 17): sub-block 13.
        b[192 + 13] = 2;
        b[64 + 17] = 0xF0; // ql high nibble = 15
        b[128 + 32 + 17] = 0b11 << 4; // qh bits 4-5 = 3 → q = 63 - 32 = 31
        let mut out = [0.0; 256];
        dequantize_row(GgmlType::Q6_K, &b, &mut out).unwrap();
        assert_eq!(out[209], 0.25 * 2.0 * 31.0);
        assert_eq!(out[80], 0.25 * -4.0 * -32.0);
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn errors() {
        let mut out = [0.0; 256];
        assert_eq!(
            dequantize_row(GgmlType::Q4_K, &[0; 143], &mut out),
            Err(DequantError::Length {
                expected: 144,
                actual: 143
            })
        );
        assert_eq!(
            dequantize_row(GgmlType::Q6_K, &[0; 210], &mut out[..100]),
            Err(DequantError::PartialBlock {
                len: 100,
                block: 256
            })
        );
        assert_eq!(
            dequantize_row(GgmlType::Q4_0, &[0; 18 * 8], &mut out),
            Err(DequantError::UnsupportedType(GgmlType::Q4_0))
        );
        // TQ2_0: code 3 (bits 11) is not a ternary code.
        let mut tq = [0x55u8; 66];
        tq[64..].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        assert_eq!(dequantize_row(GgmlType::TQ2_0, &tq, &mut out), Ok(()));
        assert!(out.iter().all(|&v| v == 0.0), "0b01 is code 0");
        tq[5] = 0xFF;
        assert_eq!(
            dequantize_row(GgmlType::TQ2_0, &tq, &mut out),
            Err(DequantError::BadBlock { block: 0 })
        );
        let mut b = [0u8; 210];
        b[208..].copy_from_slice(&f16::NAN.to_le_bytes());
        assert!(matches!(
            dequantize_row(GgmlType::Q6_K, &b, &mut out),
            Err(DequantError::NonFiniteScale { block: 0, .. })
        ));
        let mut b = [0u8; 288];
        b[144 + 2..144 + 4].copy_from_slice(&f16::INFINITY.to_le_bytes());
        let mut two = [0.0; 512];
        assert_eq!(
            dequantize_row(GgmlType::Q4_K, &b, &mut two),
            Err(DequantError::NonFiniteScale {
                block: 1,
                value: f32::INFINITY
            })
        );
        let mut b = [0u8; 34];
        b[..2].copy_from_slice(&f16::NEG_INFINITY.to_le_bytes());
        assert!(dequantize_row(GgmlType::Q8_0, &b, &mut [0.0; 32]).is_err());
        let mut none: [f32; 0] = [];
        assert_eq!(dequantize_row(GgmlType::Q4_K, &[], &mut none), Ok(()));
    }
}
