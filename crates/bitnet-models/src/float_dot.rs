//! Dot products of an f32 vector with a row stored as little-endian f32,
//! f16 or bf16 bytes — the output layer's inner loop, run once per
//! vocabulary row per token.
//!
//! Every version keeps 16 lane sums (lane `k` adds elements `k`, `k + 16`,
//! ...) with one fused multiply-add per element, and reduces the lanes in
//! one fixed order, so the AVX2 and AVX-512 versions compute exactly the
//! plain reference's sums (`f32::mul_add`, correctly rounded) and are
//! tested against it bit for bit. Fusing halves the arithmetic of the
//! batched output layer, which is compute-bound once a row is reused for
//! many tokens. Dispatch reads the CPU features (cached by std) on each call.
//!
//! Half floats are widened with integer operations that vectorize: a bf16
//! is the top half of an f32; an f16's exponent and mantissa shifted into
//! place and multiplied by 2^112 give the f32 exactly, normals and
//! subnormals alike. NaN and infinity are not handled: matrices are
//! checked finite when loaded.

use crate::gguf::dequant;
use crate::gguf::{GgmlType, Layout};

/// How a row's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowFormat {
    /// Little-endian f32.
    F32,
    /// Little-endian IEEE half.
    F16,
    /// Little-endian bfloat16.
    BF16,
}

impl RowFormat {
    fn width(self) -> usize {
        match self {
            RowFormat::F32 => 4,
            RowFormat::F16 | RowFormat::BF16 => 2,
        }
    }
}

#[inline(always)]
fn widen(format: RowFormat, b: &[u8], i: usize) -> f32 {
    match format {
        RowFormat::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        RowFormat::BF16 => {
            f32::from_bits(u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])) << 16)
        }
        RowFormat::F16 => {
            let h = u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]));
            let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
            f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
        }
    }
}

const LANES: usize = 16;

/// Reduces the 16 lane sums in a fixed pairwise order (every version
/// ends with this) and adds the elements past the last whole lane block.
#[inline(always)]
fn finish(mut acc: [f32; LANES], format: RowFormat, x: &[f32], b: &[u8]) -> f32 {
    let blocks = x.len() / LANES;
    let mut tail = 0.0f32;
    for (i, &xi) in x.iter().enumerate().skip(blocks * LANES) {
        tail += xi * widen(format, b, i);
    }
    let mut width = LANES / 2;
    while width > 0 {
        for k in 0..width {
            acc[k] += acc[k + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// The plain version (the reference): lane `k` sums elements `k`, `k + 16`, ...
pub(crate) fn dot_reference(format: RowFormat, x: &[f32], b: &[u8]) -> f32 {
    let w = format.width();
    let mut acc = [0.0f32; LANES];
    for (blk, xs) in x.chunks_exact(LANES).enumerate() {
        let bs = &b[blk * LANES * w..(blk + 1) * LANES * w];
        for k in 0..LANES {
            acc[k] = xs[k].mul_add(widen(format, bs, k), acc[k]);
        }
    }
    finish(acc, format, x, b)
}

/// AVX2 (+FMA, F16C): lanes 0-7 and 8-15 in two registers, fused
/// multiply-adds as in the reference.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2(format: RowFormat, x: &[f32], b: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = x.len() / LANES;
    assert!(b.len() >= blocks * LANES * format.width());
    let (xp, bp) = (x.as_ptr(), b.as_ptr());
    // SAFETY: every load reads within `x[..blocks * 16]` and
    // `b[..blocks * 16 * width]` (asserted above); unaligned loads.
    let lanes = unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for blk in 0..blocks {
            let (w0, w1) = match format {
                RowFormat::F32 => {
                    let p = bp.add(blk * 64).cast::<f32>();
                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                }
                RowFormat::BF16 => {
                    let p = bp.add(blk * 32).cast::<__m128i>();
                    let widen =
                        |h| _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
                    (widen(_mm_loadu_si128(p)), widen(_mm_loadu_si128(p.add(1))))
                }
                RowFormat::F16 => {
                    let p = bp.add(blk * 32).cast::<__m128i>();
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(p)),
                        _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
                    )
                }
            };
            let xs = xp.add(blk * LANES);
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(xs), w0, lo);
            hi = _mm256_fmadd_ps(_mm256_loadu_ps(xs.add(8)), w1, hi);
        }
        let mut lanes = [0.0f32; LANES];
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
        lanes
    };
    finish(lanes, format, x, b)
}

/// AVX-512: all 16 lanes in one register (the 1 x 1 [`tile_avx512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(format: RowFormat, x: &[f32], b: &[u8]) -> f32 {
    tile_avx512::<1, 1>(format, [x], [b])[0][0]
}

/// Widens 16 elements of block `blk` of a row to f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widen16_avx512(
    format: RowFormat,
    row: *const u8,
    blk: usize,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees block `blk` lies within the row.
    unsafe {
        match format {
            RowFormat::F32 => _mm512_loadu_ps(row.add(blk * 64).cast::<f32>()),
            RowFormat::BF16 => {
                let h = _mm256_loadu_si256(row.add(blk * 32).cast::<__m256i>());
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            }
            RowFormat::F16 => {
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(blk * 32).cast::<__m256i>()))
            }
        }
    }
}

/// AVX-512, `R` rows against `T` vectors: a register tile of `R x T`
/// accumulators, so each widened row block serves `T` vectors and each
/// vector load serves `R` rows. Every (row, vector) pair keeps its own
/// 16 lane sums of fused multiply-adds and ends with [`finish`], so every
/// result is bit for bit the reference's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn tile_avx512<const R: usize, const T: usize>(
    format: RowFormat,
    xs: [&[f32]; T],
    rows: [&[u8]; R],
) -> [[f32; T]; R] {
    use std::arch::x86_64::*;
    let n = xs[0].len();
    assert!(xs.iter().all(|x| x.len() == n));
    let blocks = n / LANES;
    assert!(
        rows.iter()
            .all(|b| b.len() >= blocks * LANES * format.width())
    );
    // SAFETY: every load reads within the first `blocks * 16` elements of
    // a vector or a row (asserted above); unaligned loads.
    let lanes = unsafe {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for blk in 0..blocks {
            let w = rows.map(|b| widen16_avx512(format, b.as_ptr(), blk));
            for t in 0..T {
                let xv = _mm512_loadu_ps(xs[t].as_ptr().add(blk * LANES));
                for r in 0..R {
                    acc[r][t] = _mm512_fmadd_ps(xv, w[r], acc[r][t]);
                }
            }
        }
        acc.map(|row| {
            row.map(|a| {
                let mut l = [0.0f32; LANES];
                _mm512_storeu_ps(l.as_mut_ptr(), a);
                l
            })
        })
    };
    let mut out = [[0.0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = finish(lanes[r][t], format, xs[t], rows[r]);
        }
    }
    out
}

/// `R` rows against every vector of `xs`, into `out` (`[R, tokens]`),
/// `T` vectors at a time while they last, then one at a time.
#[cfg(target_arch = "x86_64")]
fn rows_avx512<const R: usize>(
    format: RowFormat,
    xs: &[f32],
    cols: usize,
    rows: [&[u8]; R],
    out: &mut [f32],
) {
    const T: usize = 4;
    let tokens = xs.len() / cols;
    let mut t0 = 0;
    while t0 < tokens {
        let width = if tokens - t0 >= T { T } else { 1 };
        let v = |i: usize| &xs[(t0 + i) * cols..(t0 + i + 1) * cols];
        // SAFETY (both): the caller checked AVX-512 F.
        if width == T {
            let r = unsafe { tile_avx512::<R, T>(format, [0, 1, 2, 3].map(v), rows) };
            for (i, row) in r.iter().enumerate() {
                out[i * tokens + t0..i * tokens + t0 + T].copy_from_slice(row);
            }
        } else {
            let r = unsafe { tile_avx512::<R, 1>(format, [v(0)], rows) };
            for (i, row) in r.iter().enumerate() {
                out[i * tokens + t0] = row[0];
            }
        }
        t0 += width;
    }
}

/// `x_t · row_r` for every vector `x_t` of `xs` (`cols` values each,
/// row-major) and every row of `rows` (`cols` elements each in `format`),
/// into `out[r * tokens + t]`; each equal to [`dot`] of that pair bit for
/// bit. Rows are taken four at a time and vectors four at a time, so a
/// batch reads the matrix once and each vector a quarter as often.
///
/// # Panics
/// If `xs` or `rows` is not a whole number of `cols`-long vectors or rows,
/// or `out` is not one value per (row, vector).
pub(crate) fn dot_rows_many(
    format: RowFormat,
    cols: usize,
    xs: &[f32],
    rows: &[u8],
    out: &mut [f32],
) {
    if cols == 0 {
        // Empty rows: every dot is 0, however many pairs `out` holds.
        out.fill(0.0);
        return;
    }
    let rb = cols * format.width();
    let (tokens, nrows) = (xs.len() / cols, rows.len() / rb);
    assert!(
        xs.len() == tokens * cols && rows.len() == nrows * rb && out.len() == nrows * tokens,
        "{} values, {} row bytes and {} outputs for width {cols}",
        xs.len(),
        rows.len(),
        out.len()
    );
    let row = |r: usize| &rows[r * rb..(r + 1) * rb];
    let mut r0 = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            while r0 < nrows {
                let o = &mut out[r0 * tokens..];
                if nrows - r0 >= 4 {
                    let four = [0, 1, 2, 3].map(|i| row(r0 + i));
                    rows_avx512::<4>(format, xs, cols, four, &mut o[..4 * tokens]);
                    r0 += 4;
                } else {
                    rows_avx512::<1>(format, xs, cols, [row(r0)], &mut o[..tokens]);
                    r0 += 1;
                }
            }
        }
    }
    for r in r0..nrows {
        for t in 0..tokens {
            out[r * tokens + t] = dot(format, &xs[t * cols..(t + 1) * cols], row(r));
        }
    }
}

/// `x · row` for a row of ggml blocks (Q8_0, Q4_K, Q6_K): each block is
/// decoded into a stack buffer by the shared dequantizer, then dotted. The
/// same body is compiled for AVX2 and AVX-512 so the decode vectorizes;
/// the arithmetic (and so the result) is the same in every version.
/// `None` if a block does not decode (impossible after load validation).
#[inline(always)]
fn quantized_body(ty: GgmlType, x: &[f32], row: &[u8]) -> Option<f32> {
    // A whole number of Q8_0 (32) and K-quant (256) blocks.
    const SPAN: usize = 256;
    let Layout::Blocks { weights, bytes } = ty.layout() else {
        return None;
    };
    let span_bytes = SPAN / weights as usize * bytes as usize;
    let mut buf = [0.0f32; SPAN];
    let mut sum = 0.0f32;
    for (xs, bs) in x.chunks(SPAN).zip(row.chunks(span_bytes)) {
        let b = &mut buf[..xs.len()];
        // `dequantize_row` is inline(always): its block decoders compile
        // here with this function's target features and vectorize.
        dequant::dequantize_row(ty, bs, b).ok()?;
        sum += bitnet_core::ops::rows::dot(xs, b);
    }
    Some(sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantized_avx2(ty: GgmlType, x: &[f32], row: &[u8]) -> Option<f32> {
    quantized_body(ty, x, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn quantized_avx512(ty: GgmlType, x: &[f32], row: &[u8]) -> Option<f32> {
    quantized_body(ty, x, row)
}

/// `x · row` for a row of ggml blocks; NaN if a block does not decode.
pub(crate) fn dot_quantized(ty: GgmlType, x: &[f32], row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512 F and BW (checked just above).
            return unsafe { quantized_avx512(ty, x, row) }.unwrap_or(f32::NAN);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { quantized_avx2(ty, x, row) }.unwrap_or(f32::NAN);
        }
    }
    quantized_body(ty, x, row).unwrap_or(f32::NAN)
}

/// `x · row`, where `b` holds `x.len()` elements in `format`.
pub(crate) fn dot(format: RowFormat, x: &[f32], b: &[u8]) -> f32 {
    debug_assert_eq!(b.len(), x.len() * format.width());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked just above).
            return unsafe { dot_avx512(format, x, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
            return unsafe { dot_avx2(format, x, b) };
        }
    }
    dot_reference(format, x, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(format: RowFormat, v: &[f32]) -> Vec<u8> {
        match format {
            RowFormat::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            RowFormat::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            RowFormat::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }

    proptest! {
        #[test]
        fn many_rows_and_vectors_at_once_equal_one_at_a_time(
            n in 0usize..11,
            nrows in 0usize..10,
            cols in 0usize..80,
            seed in any::<u64>(),
        ) {
            let mut s = seed | 1;
            let mut next = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s % 20_000) as f32 - 10_000.0) / 997.0
            };
            let rows: Vec<f32> = (0..nrows * cols).map(|_| next()).collect();
            let xs: Vec<f32> = (0..n * cols).map(|_| next()).collect();
            for format in [RowFormat::F32, RowFormat::F16, RowFormat::BF16] {
                let b = encode(format, &rows);
                let rb = cols * format.width();
                let mut out = vec![f32::NAN; nrows * n];
                dot_rows_many(format, cols, &xs, &b, &mut out);
                for r in 0..nrows {
                    for t in 0..n {
                        let one = dot(format, &xs[t * cols..(t + 1) * cols], &b[r * rb..(r + 1) * rb]);
                        prop_assert_eq!(out[r * n + t].to_bits(), one.to_bits(), "row {} vector {}", r, t);
                    }
                }
            }
        }
    }

    #[test]
    fn f16_widening_is_exact_for_every_finite_value() {
        for bits in 0u16..=u16::MAX {
            let h = half::f16::from_bits(bits);
            if h.is_finite() {
                let got = widen(RowFormat::F16, &bits.to_le_bytes(), 0);
                assert_eq!(got.to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
            }
        }
    }

    proptest! {
        #[test]
        fn every_version_equals_the_reference(
            x in prop::collection::vec(-4.0f32..4.0, 0..300),
            seed in any::<u32>(),
        ) {
            let w: Vec<f32> = (0..x.len())
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 500.0 - 2.0)
                .collect();
            for format in [RowFormat::F32, RowFormat::F16, RowFormat::BF16] {
                let b = encode(format, &w);
                let want = dot_reference(format, &x, &b);
                // Against f64 math on the decoded values.
                let exact: f64 = x.iter().enumerate()
                    .map(|(i, &xi)| f64::from(xi) * f64::from(widen(format, &b, i)))
                    .sum();
                prop_assert!((f64::from(want) - exact).abs() < 1e-3 * (1.0 + exact.abs()));
                prop_assert_eq!(dot(format, &x, &b).to_bits(), want.to_bits());
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                        && std::arch::is_x86_feature_detected!("f16c")
                    {
                        // SAFETY: AVX2, FMA and F16C checked just above.
                        let v = unsafe { dot_avx2(format, &x, &b) };
                        prop_assert_eq!(v.to_bits(), want.to_bits());
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: AVX-512 checked just above.
                        let v = unsafe { dot_avx512(format, &x, &b) };
                        prop_assert_eq!(v.to_bits(), want.to_bits());
                    }
                }
            }
        }
    }
}
