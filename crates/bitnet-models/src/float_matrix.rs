//! Dense float matrices that stay in the encoding of the file they came
//! from: the token embeddings and the output layer.
//!
//! These two tensors are the largest float tensors of a BitNet model (for
//! 2B-4T, 128,256 x 2,560 in bf16: 656 MB). Decoding them to an owned f32
//! copy would double their resident size, so a [`FloatMatrix`] keeps the
//! bytes where they are — usually a view into the memory-mapped model file —
//! and decodes one block at a time into a stack buffer: a row for an
//! embedding lookup, a dot product per vocabulary row for the logits.

use crate::error::{Error, Result};
use crate::float_dot::{self, RowFormat};
use crate::gguf::{GgmlType, dequant};
use crate::quant_dot::{self, BlockQ8Activations};
use std::sync::Arc;

/// How the elements of a [`FloatMatrix`] are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FloatEncoding {
    /// Little-endian f32.
    F32,
    /// Little-endian IEEE half.
    F16,
    /// Little-endian bfloat16.
    BF16,
    /// ggml Q8_0: blocks of 32 int8 with one f16 scale (34 bytes).
    Q8_0,
    /// ggml Q4_K: super-blocks of 256 (144 bytes).
    Q4K,
    /// ggml Q6_K: super-blocks of 256 (210 bytes).
    Q6K,
    /// ggml TQ1_0 with a scale per block of 256 (54 bytes): ternary
    /// weights whose scales differ within a row, which the ternary kernels
    /// (one scale per tensor or row) cannot run.
    Tq1_0,
    /// ggml TQ2_0 with a scale per block of 256 (66 bytes), as `Tq1_0`.
    Tq2_0,
}

impl FloatEncoding {
    /// The GGUF type with this encoding.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            FloatEncoding::F32 => GgmlType::F32,
            FloatEncoding::F16 => GgmlType::F16,
            FloatEncoding::BF16 => GgmlType::BF16,
            FloatEncoding::Q8_0 => GgmlType::Q8_0,
            FloatEncoding::Q4K => GgmlType::Q4_K,
            FloatEncoding::Q6K => GgmlType::Q6_K,
            FloatEncoding::Tq1_0 => GgmlType::TQ1_0,
            FloatEncoding::Tq2_0 => GgmlType::TQ2_0,
        }
    }

    /// The encoding of a GGUF type, if it is one a matrix can stay in.
    pub fn from_ggml_type(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::F32 => FloatEncoding::F32,
            GgmlType::F16 => FloatEncoding::F16,
            GgmlType::BF16 => FloatEncoding::BF16,
            GgmlType::Q8_0 => FloatEncoding::Q8_0,
            GgmlType::Q4_K => FloatEncoding::Q4K,
            GgmlType::Q6_K => FloatEncoding::Q6K,
            GgmlType::TQ1_0 => FloatEncoding::Tq1_0,
            GgmlType::TQ2_0 => FloatEncoding::Tq2_0,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            FloatEncoding::F32 | FloatEncoding::F16 | FloatEncoding::BF16 => 1,
            FloatEncoding::Q8_0 => 32,
            FloatEncoding::Q4K
            | FloatEncoding::Q6K
            | FloatEncoding::Tq1_0
            | FloatEncoding::Tq2_0 => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            FloatEncoding::F32 => 4,
            FloatEncoding::F16 | FloatEncoding::BF16 => 2,
            FloatEncoding::Q8_0 => 34,
            FloatEncoding::Q4K => 144,
            FloatEncoding::Q6K => 210,
            FloatEncoding::Tq1_0 => 54,
            FloatEncoding::Tq2_0 => 66,
        }
    }

    /// Bytes of a row of `cols` elements; `None` when `cols` is not a whole
    /// number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems())
            .then(|| cols / self.block_elems() * self.block_bytes())
    }

    /// Decodes `bytes` (whole blocks) into `out`, one f32 per element.
    fn decode(self, bytes: &[u8], out: &mut [f32]) -> Result<(), dequant::DequantError> {
        dequant::dequantize_row(self.ggml_type(), bytes, out)
    }
}

/// Bytes shared between the tensors of one file (usually its memory map).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where a matrix's encoded bytes live.
#[derive(Clone)]
enum Bytes {
    /// A range of shared bytes (a memory-mapped file), kept alive by the `Arc`.
    Mapped {
        map: SharedBytes,
        start: usize,
        len: usize,
    },
    /// Owned encoded bytes.
    Owned(Vec<u8>),
}

/// A `[rows, cols]` row-major float matrix in its file's encoding.
///
/// ```
/// use bitnet_models::float_matrix::FloatMatrix;
/// let m = FloatMatrix::from_f32(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
/// let mut row = [0.0; 3];
/// m.row_into(1, &mut row);
/// assert_eq!(row, [4.0, 5.0, 6.0]);
/// assert_eq!(m.dot_row(0, &[1.0, 1.0, 1.0]), 6.0);
/// ```
#[derive(Clone)]
pub struct FloatMatrix {
    rows: usize,
    cols: usize,
    encoding: FloatEncoding,
    row_bytes: usize,
    bytes: Bytes,
}

impl std::fmt::Debug for FloatMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.bytes {
            Bytes::Mapped { .. } => "mapped",
            Bytes::Owned(_) => "owned",
        };
        f.debug_struct("FloatMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("encoding", &self.encoding)
            .field("storage", &place)
            .finish()
    }
}

impl PartialEq for FloatMatrix {
    /// Equal shapes and equal decoded values.
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows && self.cols == other.cols && self.to_f32() == other.to_f32()
    }
}

/// Elements decoded per step into a stack buffer (a multiple of every block size).
const CHUNK: usize = 256;

impl FloatMatrix {
    /// An owned f32 matrix; `data` must hold `rows * cols` values.
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::TensorShape {
                name: "float matrix".into(),
                expected: vec![rows, cols],
                actual: vec![data.len()],
            });
        }
        Ok(FloatMatrix {
            rows,
            cols,
            encoding: FloatEncoding::F32,
            row_bytes: cols * 4,
            // Stored as the file would store it, so owned and mapped
            // matrices share one decode and one dot path.
            bytes: Bytes::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        })
    }

    /// A matrix over `map[start..start + len]`, validated: the length
    /// matches the shape and every block scale and float element is
    /// finite. `name` appears in errors.
    pub fn mapped(
        name: &str,
        map: SharedBytes,
        start: usize,
        len: usize,
        rows: usize,
        cols: usize,
        encoding: FloatEncoding,
    ) -> Result<Self> {
        let row_bytes = Self::check_len(name, len, rows, cols, encoding)?;
        if start
            .checked_add(len)
            .is_none_or(|end| end > (*map).as_ref().len())
        {
            return Err(Error::TensorData {
                name: name.into(),
                message: format!("tensor `{name}` lies outside the mapped file"),
            });
        }
        let m = FloatMatrix {
            rows,
            cols,
            encoding,
            row_bytes,
            bytes: Bytes::Mapped { map, start, len },
        };
        m.check_finite(name)?;
        Ok(m)
    }

    /// A matrix over owned encoded `bytes`, validated like [`Self::mapped`].
    pub fn from_encoded(
        name: &str,
        bytes: Vec<u8>,
        rows: usize,
        cols: usize,
        encoding: FloatEncoding,
    ) -> Result<Self> {
        let row_bytes = Self::check_len(name, bytes.len(), rows, cols, encoding)?;
        let m = FloatMatrix {
            rows,
            cols,
            encoding,
            row_bytes,
            bytes: Bytes::Owned(bytes),
        };
        m.check_finite(name)?;
        Ok(m)
    }

    fn check_len(
        name: &str,
        len: usize,
        rows: usize,
        cols: usize,
        encoding: FloatEncoding,
    ) -> Result<usize> {
        let row_bytes = encoding.row_bytes(cols).ok_or_else(|| Error::TensorData {
            name: name.into(),
            message: format!(
                "tensor `{name}`: rows of {cols} are not whole {encoding:?} blocks of {}",
                encoding.block_elems()
            ),
        })?;
        if rows.checked_mul(row_bytes) != Some(len) {
            return Err(Error::TensorData {
                name: name.into(),
                message: format!(
                    "tensor `{name}` holds {len} bytes; {rows} x {cols} {encoding:?} needs {}",
                    rows.saturating_mul(row_bytes)
                ),
            });
        }
        Ok(row_bytes)
    }

    /// Rejects NaN/inf scales and elements: one pass over the bytes at load.
    ///
    /// A Q8_0/Q4_K/Q6_K element is an f16 scale times small integers (less
    /// than 2^28 in size), so every element is finite exactly when every
    /// block's scales are: those are checked first, and only a matrix with a
    /// bad scale is decoded, to name the element. (Decoding all of a 2B-4T
    /// output layer took a sixth of its load time.)
    fn check_finite(&self, name: &str) -> Result<()> {
        let scales: &[usize] = match self.encoding {
            FloatEncoding::Q8_0 => &[0],
            FloatEncoding::Q4K => &[0, 2],
            FloatEncoding::Q6K => &[208],
            _ => &[],
        };
        let finite =
            |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) & 0x7c00 != 0x7c00;
        if !scales.is_empty()
            && self
                .encoded()
                .chunks_exact(self.encoding.block_bytes())
                .all(|b| scales.iter().all(|&at| finite(b, at)))
        {
            return Ok(());
        }
        let mut buf = [0.0f32; CHUNK];
        for r in 0..self.rows {
            for c0 in (0..self.cols).step_by(CHUNK) {
                let n = CHUNK.min(self.cols - c0);
                self.try_decode_span(r, c0, &mut buf[..n])
                    .map_err(|e| Error::TensorData {
                        name: name.into(),
                        message: format!("row {r}: {e}"),
                    })?;
                if let Some(k) = buf[..n].iter().position(|v| !v.is_finite()) {
                    return Err(Error::TensorData {
                        name: name.into(),
                        message: format!("element [{r}, {}] is not finite", c0 + k),
                    });
                }
            }
        }
        Ok(())
    }

    fn encoded(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { map, start, len } => &(**map).as_ref()[*start..*start + *len],
            Bytes::Owned(b) => b,
        }
    }

    /// The matrix in its encoding, as a file would store it.
    pub fn encoded_bytes(&self) -> &[u8] {
        self.encoded()
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The element encoding.
    pub fn encoding(&self) -> FloatEncoding {
        self.encoding
    }
    /// Bytes the matrix occupies in its encoding.
    pub fn size_bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// Decodes `out.len()` elements of row `r` from column `c0` (a multiple
    /// of the block size; `out` a whole number of blocks or the row's end).
    fn try_decode_span(
        &self,
        r: usize,
        c0: usize,
        out: &mut [f32],
    ) -> Result<(), dequant::DequantError> {
        let (be, bb) = (self.encoding.block_elems(), self.encoding.block_bytes());
        let from = r * self.row_bytes + c0 / be * bb;
        let to = from + out.len().div_ceil(be) * bb;
        self.encoding.decode(&self.encoded()[from..to], out)
    }

    /// [`Self::try_decode_span`] on a matrix validated at construction,
    /// where decoding cannot fail; NaN marks the impossible case rather
    /// than a panic in the decode loop.
    fn decode_span(&self, r: usize, c0: usize, out: &mut [f32]) {
        if self.try_decode_span(r, c0, out).is_err() {
            out.fill(f32::NAN);
        }
    }

    /// Decodes row `r` into `out` (`cols` long).
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() != cols` (callers check token ids).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() == self.cols,
            "row {r} of {self:?}"
        );
        for (k, chunk) in out.chunks_mut(CHUNK).enumerate() {
            self.decode_span(r, k * CHUNK, chunk);
        }
    }

    /// `row(r) · x` for `x` of `cols` values, decoding block by block.
    ///
    /// # Panics
    /// If `r >= rows` or `x.len() != cols`.
    pub fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        assert!(r < self.rows && x.len() == self.cols, "row {r} of {self:?}");
        let row = &self.encoded()[r * self.row_bytes..(r + 1) * self.row_bytes];
        match self.encoding {
            FloatEncoding::F32 => float_dot::dot(RowFormat::F32, x, row),
            FloatEncoding::F16 => float_dot::dot(RowFormat::F16, x, row),
            FloatEncoding::BF16 => float_dot::dot(RowFormat::BF16, x, row),
            _ => float_dot::dot_quantized(self.encoding.ggml_type(), x, row),
        }
    }

    /// `row(r) · x_t` for each of the `out.len()` vectors in `xs`
    /// (row-major, `cols` each): each result equals [`Self::dot_row`] of
    /// that vector bit for bit, but the row is read once for all of them.
    ///
    /// # Panics
    /// If `r >= rows` or `xs.len() != out.len() * cols`.
    pub fn dot_row_many(&self, r: usize, xs: &[f32], out: &mut [f32]) {
        self.dot_rows_many(r..r + 1, xs, out);
    }

    /// `row(r) · x_t` into `out[(r - rows.start) * tokens + t]` for every
    /// row `r` of `rows` and each of the `tokens` vectors in `xs`
    /// (row-major, `cols` each). Each result equals [`Self::dot_row`] of
    /// that pair bit for bit; float rows are dotted four rows by four
    /// vectors at a time, so a batch reads the matrix once and the vectors
    /// a quarter as often as one row at a time.
    ///
    /// # Panics
    /// If `rows` reaches past the matrix, `xs` is not a whole number of
    /// `cols`-long vectors, or `out.len()` is not `rows.len()` times their number.
    ///
    /// ```
    /// use bitnet_models::float_matrix::FloatMatrix;
    /// let m = FloatMatrix::from_f32(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    /// let xs = [1.0, 0.0, 0.0, 1.0]; // two vectors
    /// let mut out = [0.0; 4];
    /// m.dot_rows_many(1..3, &xs, &mut out);
    /// assert_eq!(out, [3.0, 4.0, 5.0, 6.0]);
    /// # Ok::<(), bitnet_models::Error>(())
    /// ```
    pub fn dot_rows_many(&self, rows: std::ops::Range<usize>, xs: &[f32], out: &mut [f32]) {
        let tokens = match self.cols {
            0 => out.len() / rows.len().max(1),
            cols => xs.len() / cols,
        };
        assert!(
            rows.start <= rows.end
                && rows.end <= self.rows
                && out.len() == rows.len() * tokens
                && xs.len() == tokens * self.cols,
            "rows {rows:?} of {self:?} against {} values into {} outputs",
            xs.len(),
            out.len()
        );
        let bytes = &self.encoded()[rows.start * self.row_bytes..rows.end * self.row_bytes];
        let format = match self.encoding {
            FloatEncoding::F32 => RowFormat::F32,
            FloatEncoding::F16 => RowFormat::F16,
            FloatEncoding::BF16 => RowFormat::BF16,
            _ => {
                for (i, r) in rows.enumerate() {
                    for t in 0..tokens {
                        let x = &xs[t * self.cols..(t + 1) * self.cols];
                        out[i * tokens + t] = self.dot_row(r, x);
                    }
                }
                return;
            }
        };
        float_dot::dot_rows_many(format, self.cols, xs, bytes, out);
    }

    /// Quantizes `xs` (rows of `cols` values) into `into` when this matrix
    /// has an integer dot (Q8_0, Q4_K, Q6_K, TQ1_0, TQ2_0): each row becomes
    /// int8 blocks as in llama.cpp (Q8_0 activations for Q8_0, Q8_K for the
    /// k-quants and TQ types),
    /// for [`Self::dot_row_quantized`]. Returns false for F32, F16 and
    /// BF16, which dot in f32 ([`Self::dot_row_many`]).
    ///
    /// # Panics
    /// If `xs.len()` is not a multiple of `cols`.
    pub fn quantize_activations(&self, xs: &[f32], into: &mut BlockQ8Activations) -> bool {
        assert!(
            self.cols > 0 && xs.len().is_multiple_of(self.cols),
            "{} values for {self:?}",
            xs.len()
        );
        let ty = match self.encoding {
            FloatEncoding::Q8_0
            | FloatEncoding::Q4K
            | FloatEncoding::Q6K
            | FloatEncoding::Tq1_0
            | FloatEncoding::Tq2_0 => self.encoding.ggml_type(),
            _ => return false,
        };
        into.quantize(ty, xs, self.cols, quant_dot::Backend::detect())
    }

    /// `row(r) · x_t` into `out[t]` for each activation row of `acts`,
    /// in integers: llama.cpp's arithmetic for this encoding, reading the
    /// row once for all of them.
    ///
    /// # Panics
    /// If `r >= rows`, `out.len() != acts.rows()`, or `acts` was not
    /// quantized by [`Self::quantize_activations`] of a matrix with this
    /// encoding and width.
    pub fn dot_row_quantized(&self, r: usize, acts: &BlockQ8Activations, out: &mut [f32]) {
        assert!(
            r < self.rows
                && out.len() == acts.rows()
                && acts.cols() == self.cols
                && acts.weight_type() == Some(self.encoding.ggml_type()),
            "row {r} of {self:?} with activations for {:?} x {}",
            acts.weight_type(),
            acts.cols()
        );
        let row = &self.encoded()[r * self.row_bytes..(r + 1) * self.row_bytes];
        acts.dot_row(row, out);
    }

    /// Rows `rows` dotted in integers with each activation row of `acts`,
    /// into `out` row by row (`out[i * acts.rows() + t]` for row
    /// `rows.start + i` and activation row `t`): what
    /// [`Self::dot_row_quantized`] gives for each row, bit for bit. With
    /// one activation row (a decode step) the run of rows is handed to the
    /// kernel at once, which saves a call per row and, for Q6_K on AVX2
    /// and AVX-512, a horizontal sum per block.
    ///
    /// # Panics
    /// If `rows` reaches past the matrix, `out.len() != rows.len() *
    /// acts.rows()`, or `acts` was not quantized by
    /// [`Self::quantize_activations`] of a matrix with this encoding and width.
    pub fn dot_rows_quantized(
        &self,
        rows: std::ops::Range<usize>,
        acts: &BlockQ8Activations,
        out: &mut [f32],
    ) {
        assert!(
            rows.start <= rows.end
                && rows.end <= self.rows
                && out.len() == rows.len() * acts.rows()
                && acts.cols() == self.cols
                && acts.weight_type() == Some(self.encoding.ggml_type()),
            "rows {rows:?} of {self:?} with activations for {:?} x {} into {} outputs",
            acts.weight_type(),
            acts.cols(),
            out.len()
        );
        if acts.rows() == 1 {
            let bytes = &self.encoded()[rows.start * self.row_bytes..rows.end * self.row_bytes];
            acts.dot_rows_one(bytes, out);
        } else if acts.rows() > 0 {
            for (r, o) in rows.zip(out.chunks_exact_mut(acts.rows())) {
                self.dot_row_quantized(r, acts, o);
            }
        }
    }

    /// The whole matrix as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
                self.row_into(r, row);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(values: &[f32], enc: FloatEncoding) -> Vec<u8> {
        match enc {
            FloatEncoding::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            FloatEncoding::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            FloatEncoding::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => unreachable!("test encodes plain floats only"),
        }
    }

    #[test]
    fn encodings_decode_rows_and_dots_like_f32() {
        let (rows, cols) = (3, 300);
        // Values exact in bf16 and f16.
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 8.0)
            .collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.1).sin()).collect();
        let reference = FloatMatrix::from_f32(rows, cols, values.clone()).unwrap();
        for enc in [FloatEncoding::F32, FloatEncoding::F16, FloatEncoding::BF16] {
            let m = FloatMatrix::from_encoded("t", encode(&values, enc), rows, cols, enc).unwrap();
            assert_eq!(m, reference);
            for r in 0..rows {
                let (a, b) = (m.dot_row(r, &x), reference.dot_row(r, &x));
                assert!((a - b).abs() < 1e-4, "{enc:?} row {r}: {a} vs {b}");
            }
            assert_eq!(m.size_bytes(), rows * cols * enc.block_bytes());
        }
    }

    #[test]
    fn q8_0_decodes_and_rejects_bad_scales() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        for i in 0..32 {
            block[2 + i] = (i as i8 - 16) as u8;
        }
        let m = FloatMatrix::from_encoded("q", block.clone(), 1, 32, FloatEncoding::Q8_0).unwrap();
        let row = m.to_f32();
        assert_eq!(row[0], -8.0);
        assert_eq!(row[31], 7.5);
        block[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        let err = FloatMatrix::from_encoded("q", block, 1, 32, FloatEncoding::Q8_0).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }

    /// The scale-only check agrees with decoding: a K-quant or Q8_0 matrix
    /// with an infinite or NaN scale in any block (any row, either of
    /// Q4_K's two scales) is refused, naming the value, and one with only
    /// finite scales (the largest f16 among them) loads.
    #[test]
    fn quantized_matrices_with_a_bad_scale_anywhere_are_refused() {
        for (enc, at) in [
            (FloatEncoding::Q8_0, 0),
            (FloatEncoding::Q4K, 0),
            (FloatEncoding::Q4K, 2),
            (FloatEncoding::Q6K, 208),
        ] {
            let (rows, cols) = (3, 2 * enc.block_elems());
            let bb = enc.block_bytes();
            let mut bytes: Vec<u8> = (0..rows * 2 * bb).map(|i| (i * 7) as u8).collect();
            for b in bytes.chunks_exact_mut(bb) {
                for s in [0, 2, 208].into_iter().filter(|&s| s + 2 <= bb) {
                    b[s..s + 2].copy_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
                }
            }
            bytes[at..at + 2].copy_from_slice(&half::f16::MAX.to_le_bytes());
            assert!(
                FloatMatrix::from_encoded("m", bytes.clone(), rows, cols, enc).is_ok(),
                "{enc:?}"
            );
            for block in [0, 3, 5] {
                for bad in [half::f16::INFINITY, half::f16::NEG_INFINITY, half::f16::NAN] {
                    let mut b = bytes.clone();
                    b[block * bb + at..][..2].copy_from_slice(&bad.to_le_bytes());
                    let e = FloatMatrix::from_encoded("m", b, rows, cols, enc).unwrap_err();
                    assert!(
                        e.to_string().contains(&format!("row {}", block / 2)),
                        "{enc:?}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_wrong_lengths_and_non_finite_elements() {
        let e = FloatMatrix::from_encoded("w", vec![0; 10], 2, 3, FloatEncoding::F16).unwrap_err();
        assert!(e.to_string().contains("needs 12"), "{e}");
        let e =
            FloatMatrix::from_encoded("w", vec![0; 34], 1, 20, FloatEncoding::Q8_0).unwrap_err();
        assert!(e.to_string().contains("whole"), "{e}");
        let bad = encode(&[1.0, f32::INFINITY], FloatEncoding::BF16);
        let e = FloatMatrix::from_encoded("w", bad, 1, 2, FloatEncoding::BF16).unwrap_err();
        assert!(e.to_string().contains("[0, 1]"), "{e}");
        assert!(FloatMatrix::from_f32(2, 2, vec![0.0; 3]).is_err());
    }
}
