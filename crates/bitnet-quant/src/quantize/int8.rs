//! Int8 absmax quantization of activations (`ActQuant` in the reference).
//!
//! Per token (row): `s = 127 / max(absmax(row), 1e-5)`,
//! `q = clamp(round_half_even(x * s), -128, 127)`, dequantized `q / s`.
//! An all-zero row gives all-zero codes.
//!
//! [`QuantizedActivations`] is also the activation layout the ternary kernels
//! read: each token's codes start on a 64-byte boundary and are zero-padded to
//! a multiple of [`crate::formats::runtime::BLOCK`] so kernels never need a tail loop,
//! and each token carries the sum of its codes (the kernels store weights as
//! `t + 1` and subtract it).

use super::{EPS, check_finite, check_matrix};
use crate::aligned::AlignedBytes;
use crate::error::Result;
use crate::formats::runtime::BLOCK;
use bitnet_core::Parallelism;
use rayon::prelude::*;

/// The absmax scale `127 / max(absmax, 1e-5)` of a run of values.
pub fn absmax_scale(values: &[f32]) -> f32 {
    127.0 / bitnet_core::ops::rows::abs_max(values).max(EPS)
}

/// The int8 code of `x` under scale `s`.
#[inline]
pub fn int8_code(x: f32, s: f32) -> i8 {
    // |x * s| <= 127 by construction of s, so the branch-free rounding holds.
    super::round_small((x * s).clamp(-128.0, 127.0)) as i8
}

/// Quantizes one finite row into `out`; returns its scale and code sum.
/// This runs once per layer input in decode, so on x86-64 it is compiled a
/// second time with AVX2 (8 lanes instead of SSE2's 4) and picked at run time.
fn quantize_into(row: &[f32], out: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { quantize_into_avx2(row, out) };
    }
    quantize_into_generic(row, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_into_avx2(row: &[f32], out: &mut [i8]) -> (f32, i32) {
    quantize_into_generic(row, out)
}

#[inline(always)]
fn quantize_into_generic(row: &[f32], out: &mut [i8]) -> (f32, i32) {
    let s = absmax_scale(row);
    let mut sum = 0i32;
    for (o, &x) in out.iter_mut().zip(row) {
        *o = int8_code(x, s);
        sum += i32::from(*o);
    }
    (s, sum)
}

/// Quantizes a whole tensor with one absmax scale; returns codes and scale.
pub fn quantize_per_tensor(tensor: &str, data: &[f32]) -> Result<(Vec<i8>, f32)> {
    check_finite(tensor, data, "int8 per-tensor quantize")?;
    let s = absmax_scale(data);
    Ok((data.iter().map(|&x| int8_code(x, s)).collect(), s))
}

/// Int8 codes of `tokens` rows of `cols` activations, one scale per row, in
/// the kernels' padded layout.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActivations {
    tokens: usize,
    cols: usize,
    stride: usize,
    codes: AlignedBytes,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl QuantizedActivations {
    /// Quantizes a row-major `tokens x cols` matrix per token.
    ///
    /// ```
    /// use bitnet_quant::quantize::int8::QuantizedActivations;
    /// let q = QuantizedActivations::quantize("x", &[127.0, 0.5, 1.5, 2.5, -0.5, -2.5], 1, 6).unwrap();
    /// assert_eq!(q.codes(0), &[127, 0, 2, 2, 0, -2]);
    /// assert_eq!(q.scale(0), 1.0);
    /// ```
    pub fn quantize(tensor: &str, data: &[f32], tokens: usize, cols: usize) -> Result<Self> {
        check_matrix("int8 per-token quantize", data.len(), tokens, cols)?;
        check_finite(tensor, data, "int8 per-token quantize")?;
        let mut q = Self::zeroed(tokens, cols);
        for t in 0..tokens {
            q.quantize_row(t, &data[t * cols..(t + 1) * cols]);
        }
        Ok(q)
    }

    /// An all-zero buffer for `tokens x cols`, to be filled by [`Self::requantize`].
    pub fn zeroed(tokens: usize, cols: usize) -> Self {
        let stride = cols.div_ceil(BLOCK) * BLOCK;
        QuantizedActivations {
            tokens,
            cols,
            stride,
            codes: AlignedBytes::filled(tokens * stride, 0),
            scales: vec![127.0 / EPS; tokens],
            sums: vec![0; tokens],
        }
    }

    /// Re-quantizes new data of the same shape into this buffer, so a decode
    /// loop allocates nothing.
    pub fn requantize(&mut self, tensor: &str, data: &[f32]) -> Result<()> {
        check_matrix(
            "int8 per-token quantize",
            data.len(),
            self.tokens,
            self.cols,
        )?;
        check_finite(tensor, data, "int8 per-token quantize")?;
        for t in 0..self.tokens {
            self.quantize_row(t, &data[t * self.cols..(t + 1) * self.cols]);
        }
        Ok(())
    }

    /// Quantizes a `tokens x cols` matrix into this buffer, whatever shape
    /// it had before, reusing its allocations (they grow to the largest
    /// shape seen): the engine keeps one per session.
    pub fn quantize_into(
        &mut self,
        tensor: &str,
        data: &[f32],
        tokens: usize,
        cols: usize,
    ) -> Result<()> {
        self.quantize_into_par(tensor, data, tokens, cols, Parallelism::Sequential)
    }

    /// [`Self::quantize_into`] with the rows split over `par`'s threads
    /// when there are enough of them (a batch or a prompt); each row's
    /// codes, scale and sum are the same either way.
    pub fn quantize_into_par(
        &mut self,
        tensor: &str,
        data: &[f32],
        tokens: usize,
        cols: usize,
        par: Parallelism<'_>,
    ) -> Result<()> {
        check_matrix("int8 per-token quantize", data.len(), tokens, cols)?;
        check_finite(tensor, data, "int8 per-token quantize")?;
        let stride = cols.div_ceil(BLOCK) * BLOCK;
        self.codes.resize(tokens * stride, 0);
        self.scales.resize(tokens, 127.0 / EPS);
        self.sums.resize(tokens, 0);
        (self.tokens, self.cols, self.stride) = (tokens, cols, stride);
        if tokens == 0 {
            return Ok(());
        }
        let codes = &mut self.codes.as_i8_mut()[..tokens * stride];
        let (scales, sums) = (&mut self.scales[..tokens], &mut self.sums[..tokens]);
        let quantize_rows = |t0: usize, codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]| {
            for (i, ((c, s), sum)) in codes
                .chunks_exact_mut(stride)
                .zip(scales)
                .zip(sums)
                .enumerate()
            {
                // The kernels read whole blocks: the padding must be zero
                // even where an earlier, wider shape left codes.
                c[cols..].fill(0);
                let row = &data[(t0 + i) * cols..(t0 + i + 1) * cols];
                (*s, *sum) = quantize_into(row, &mut c[..cols]);
            }
        };
        match (par, par.rows_per_task(tokens)) {
            (Parallelism::Pool(pool), Some(per_task)) => pool.install(|| {
                codes
                    .par_chunks_mut(per_task * stride)
                    .zip(scales.par_chunks_mut(per_task))
                    .zip(sums.par_chunks_mut(per_task))
                    .enumerate()
                    .for_each(|(k, ((c, s), sum))| quantize_rows(k * per_task, c, s, sum))
            }),
            _ => quantize_rows(0, codes, scales, sums),
        }
        Ok(())
    }

    fn quantize_row(&mut self, t: usize, row: &[f32]) {
        let out = &mut self.codes.as_i8_mut()[t * self.stride..t * self.stride + self.cols];
        let (s, sum) = quantize_into(row, out);
        self.scales[t] = s;
        self.sums[t] = sum;
    }

    /// Builds activations from existing codes and scales (e.g. a fixture).
    pub fn from_codes(codes: &[i8], scales: &[f32], tokens: usize, cols: usize) -> Result<Self> {
        check_matrix("activations from codes", codes.len(), tokens, cols)?;
        check_matrix("activation scales", scales.len(), tokens, 1)?;
        let mut q = Self::zeroed(tokens, cols);
        for t in 0..tokens {
            let row = &codes[t * cols..(t + 1) * cols];
            q.codes.as_i8_mut()[t * q.stride..t * q.stride + cols].copy_from_slice(row);
            q.sums[t] = row.iter().map(|&c| i32::from(c)).sum();
            q.scales[t] = scales[t];
        }
        Ok(q)
    }

    /// Number of tokens (rows).
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Activations per token.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance in codes between consecutive tokens (`cols` padded to a block).
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// The codes of token `t` (without padding).
    pub fn codes(&self, t: usize) -> &[i8] {
        &self.codes.as_i8()[t * self.stride..t * self.stride + self.cols]
    }
    /// The codes of token `t` including the zero padding.
    pub fn padded_codes(&self, t: usize) -> &[i8] {
        &self.codes.as_i8()[t * self.stride..(t + 1) * self.stride]
    }
    /// All padded codes, token after token.
    pub fn all_padded_codes(&self) -> &[i8] {
        &self.codes.as_i8()[..self.tokens * self.stride]
    }
    /// Quantization scale of token `t`.
    pub fn scale(&self, t: usize) -> f32 {
        self.scales[t]
    }
    /// All scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// Sum of the codes of token `t`.
    pub fn sum(&self, t: usize) -> i32 {
        self.sums[t]
    }
    /// All code sums.
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }
    /// Dequantized activations `q / s`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.tokens)
            .flat_map(|t| {
                self.codes(t)
                    .iter()
                    .map(move |&q| f32::from(q) / self.scales[t])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example() {
        let q =
            QuantizedActivations::quantize("x", &[127.0, 0.5, 1.5, 2.5, -0.5, -2.5], 1, 6).unwrap();
        assert_eq!(q.codes(0), &[127, 0, 2, 2, 0, -2]);
        assert_eq!(q.sum(0), 129);
        assert_eq!(q.stride(), BLOCK);
        assert!(q.padded_codes(0)[6..].iter().all(|&c| c == 0));
    }

    #[test]
    fn zero_row_gives_zero_codes_and_clamped_scale() {
        let q = QuantizedActivations::quantize("x", &[0.0, 0.0, 1.0, -2.0], 2, 2).unwrap();
        assert_eq!(q.codes(0), &[0, 0]);
        assert_eq!(q.scale(0), 127.0 / EPS);
        assert_eq!(q.codes(1), &[64, -127]);
    }

    #[test]
    fn per_tensor_and_errors() {
        let (c, s) = quantize_per_tensor("x", &[1.0, -254.0]).unwrap();
        assert_eq!((c, s), (vec![0, -127], 0.5));
        assert!(quantize_per_tensor("x", &[]).is_err());
        let err = QuantizedActivations::quantize("h", &[f32::NAN], 1, 1).unwrap_err();
        assert!(err.to_string().contains("`h`"));
        assert!(QuantizedActivations::quantize("h", &[1.0; 3], 2, 2).is_err());
    }

    #[test]
    fn requantize_reuses_buffer() {
        let mut q = QuantizedActivations::zeroed(1, 3);
        q.requantize("x", &[1.0, 2.0, -4.0]).unwrap();
        assert_eq!(q.codes(0), &[32, 64, -127]);
        assert!(q.requantize("x", &[1.0]).is_err());
    }

    #[test]
    fn quantize_into_any_shape_equals_fresh_quantize() {
        let wide: Vec<f32> = (0..2 * 300)
            .map(|i| (i as f32 * 0.37).sin() * 9.0)
            .collect();
        let narrow: Vec<f32> = (0..3 * 5).map(|i| i as f32 - 7.0).collect();
        let mut q = QuantizedActivations::zeroed(0, 0);
        for (data, tokens, cols) in [(&wide, 2, 300), (&narrow, 3, 5), (&wide, 1, 600)] {
            q.quantize_into("x", data, tokens, cols).unwrap();
            assert_eq!(
                q,
                QuantizedActivations::quantize("x", data, tokens, cols).unwrap()
            );
        }
        assert!(q.quantize_into("x", &narrow, 4, 5).is_err());
    }

    #[test]
    fn rows_split_over_a_pool_equal_one_thread() {
        let pool = bitnet_core::build_pool(2).unwrap();
        let mut q = QuantizedActivations::zeroed(0, 0);
        // A wide shape first, so stale codes sit in the padding.
        let wide: Vec<f32> = (0..9 * 70).map(|i| (i as f32 * 0.71).cos() * 5.0).collect();
        q.quantize_into_par("x", &wide, 9, 70, Parallelism::Pool(&pool))
            .unwrap();
        for tokens in [1, 7, 8, 9, 33] {
            let data: Vec<f32> = (0..tokens * 45)
                .map(|i| (i as f32 * 0.37).sin() * 9.0 - 0.5)
                .collect();
            q.quantize_into_par("x", &data, tokens, 45, Parallelism::Pool(&pool))
                .unwrap();
            assert_eq!(
                q,
                QuantizedActivations::quantize("x", &data, tokens, 45).unwrap()
            );
        }
        let bad = [1.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert!(
            q.quantize_into_par("x", &bad, 8, 1, Parallelism::Pool(&pool))
                .is_err()
        );
    }
}
