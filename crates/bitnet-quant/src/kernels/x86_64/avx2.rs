//! AVX2 kernels (`vpmaddubsw` u8 x i8 → i16 pairs, `vpmaddwd` → i32).
//!
//! Each 64-byte block is read as two 32-byte halves; shifting by 0, 2, 4, 6
//! and masking with 3 gives weights in {0, 1, 2} lined up with four 32-code
//! runs of activations. `vpmaddubsw` pair sums stay within ±512, so a whole
//! lane accumulates in i16 over up to eight blocks before one widening
//! `vpmaddwd`. A GEMM of a few tokens uses 2-row x 4-token tiles that
//! unpack in registers, so the unpacked weights serve four tokens; from
//! `UNPACK_MIN_TOKENS` (prefill) it unpacks blocks of rows to memory once
//! and runs 2 x 6 tiles over them. GEMV ([`gemv_row`]) streams one row at a
//! time and unpacks with masks alone.

use super::super::RowsTask;
use std::arch::x86_64::*;

/// Computes the task's rows.
///
/// # Safety
/// The CPU must support AVX2; `task.w` holds whole rows of `task.blocks * 64`
/// bytes and `task.x` `tokens` padded rows of `task.blocks * 256` codes;
/// `out.len() == rows * tokens`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn rows(task: &RowsTask<'_>, out: &mut [i32]) {
    let (rows, tokens) = (task.rows(), task.tokens());
    assert!(task.w.len() >= rows * task.blocks * 64);
    assert!(task.x.len() >= tokens * task.stride());
    assert_eq!(out.len(), rows * tokens);
    if tokens == 1 {
        for (r, o) in out.iter_mut().enumerate() {
            // SAFETY: row r < rows (asserted above); AVX2 guaranteed by the caller.
            *o = unsafe { gemv_row(task, r) } - task.sums[0];
        }
        return;
    }
    if tokens < UNPACK_MIN_TOKENS {
        // SAFETY: as above.
        unsafe { packed_tiles(task, out) }
    } else {
        // SAFETY: as above.
        unsafe { unpacked_tiles(task, out) }
    }
}

/// A few tokens: 2 x 4 tiles that unpack their weights in registers.
///
/// # Safety
/// As for [`rows`], which checked the lengths.
#[target_feature(enable = "avx2")]
unsafe fn packed_tiles(task: &RowsTask<'_>, out: &mut [i32]) {
    let (rows, tokens) = (task.rows(), task.tokens());
    let mut r = 0;
    while r < rows {
        let rs = if rows - r >= 2 { 2 } else { 1 };
        let mut t = 0;
        while t < tokens {
            let ts = match tokens - t {
                1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
            // SAFETY: the tile is in range (checked by `rows`); AVX2 guaranteed by the caller.
            unsafe {
                match (rs, ts) {
                    (2, 4) => packed_tile::<2, 4>(task, r, t, out),
                    (1, 4) => packed_tile::<1, 4>(task, r, t, out),
                    (2, 2) => packed_tile::<2, 2>(task, r, t, out),
                    (2, _) => packed_tile::<2, 1>(task, r, t, out),
                    (_, 2) => packed_tile::<1, 2>(task, r, t, out),
                    _ => packed_tile::<1, 1>(task, r, t, out),
                }
            }
            t += ts;
        }
        r += rs;
    }
}

/// Many tokens: a block of rows is unpacked to bytes once, in column
/// order, and every token tile reads it from there, instead of unpacking
/// (shift and mask per field) in every tile; the registers the packed
/// halves held make the tiles 2 x 6 instead of 2 x 4.
///
/// # Safety
/// As for [`rows`], which checked the lengths.
#[target_feature(enable = "avx2")]
unsafe fn unpacked_tiles(task: &RowsTask<'_>, out: &mut [i32]) {
    let (rows, tokens) = (task.rows(), task.tokens());
    let stride = task.stride();
    let block_rows = (UNPACKED_BYTES / stride).clamp(2, MAX_BLOCK_ROWS);
    let mut unpacked = vec![0u8; block_rows.min(rows) * stride];
    let mut r0 = 0;
    while r0 < rows {
        let n = block_rows.min(rows - r0);
        // SAFETY: rows r0..r0 + n are in `task.w` (checked by `rows`), and
        // `unpacked` holds `n * stride` bytes.
        unsafe { unpack_rows(task, r0, n, &mut unpacked) };
        let mut t = 0;
        while t < tokens {
            let ts = match tokens - t {
                1 => 1,
                2 | 3 => 2,
                4 | 5 => 4,
                _ => 6,
            };
            let mut r = 0;
            while r < n {
                let rs = if n - r >= 2 { 2 } else { 1 };
                let u = &unpacked[r * stride..];
                // SAFETY: the tile is in range (checked by `rows`); AVX2
                // guaranteed by the caller; `u` holds rows r.. of the block.
                unsafe {
                    match (rs, ts) {
                        (2, 6) => tile::<2, 6>(task, u, r0 + r, t, out),
                        (2, 4) => tile::<2, 4>(task, u, r0 + r, t, out),
                        (2, 2) => tile::<2, 2>(task, u, r0 + r, t, out),
                        (2, _) => tile::<2, 1>(task, u, r0 + r, t, out),
                        (_, 6) => tile::<1, 6>(task, u, r0 + r, t, out),
                        (_, 4) => tile::<1, 4>(task, u, r0 + r, t, out),
                        (_, 2) => tile::<1, 2>(task, u, r0 + r, t, out),
                        _ => tile::<1, 1>(task, u, r0 + r, t, out),
                    }
                }
                r += rs;
            }
            t += ts;
        }
        r0 += n;
    }
}

/// Fewest tokens for which a GEMM unpacks blocks of rows to memory
/// first: below, the weights are unpacked in registers per tile.
const UNPACK_MIN_TOKENS: usize = 24;

/// Bytes of unpacked weights a GEMM keeps per block of rows: a fraction
/// of L2, beside the activations the token tiles stream through it.
const UNPACKED_BYTES: usize = 96 * 1024;

/// Most rows unpacked at once: past ~16 rows, reading every token's
/// activations once more per block costs little.
const MAX_BLOCK_ROWS: usize = 32;

/// Writes rows `r0..r0 + n` as bytes in {0, 1, 2}, in column order (the
/// order of the activation codes), `task.stride()` bytes a row.
///
/// # Safety
/// AVX2; rows `r0..r0 + n` are in `task.w`; `dst` holds `n * stride` bytes.
#[target_feature(enable = "avx2")]
unsafe fn unpack_rows(task: &RowsTask<'_>, r0: usize, n: usize, dst: &mut [u8]) {
    let row_bytes = task.blocks * 64;
    assert!(dst.len() >= n * task.stride());
    let src = &task.w[r0 * row_bytes..(r0 + n) * row_bytes];
    for b in 0..n * task.blocks {
        for h in 0..2 {
            // SAFETY: block b (of all n rows) is in `src`; its 256 unpacked
            // bytes are in `dst` (asserted above).
            unsafe {
                let v = _mm256_loadu_si256(src.as_ptr().add(b * 64 + 32 * h).cast());
                let d = dst.as_mut_ptr().add(b * 256 + 32 * h);
                _mm256_storeu_si256(d.cast(), field::<0>(v));
                _mm256_storeu_si256(d.add(64).cast(), field::<2>(v));
                _mm256_storeu_si256(d.add(128).cast(), field::<4>(v));
                _mm256_storeu_si256(d.add(192).cast(), field::<6>(v));
            }
        }
    }
}

/// Blocks summed in i16 lanes before widening. A lane gains 8 `vpmaddubsw`
/// pair sums per block, each of a weight in {0, 1, 2} times two int8 codes:
/// within [-512, 508]. Eight blocks stay within [-32768, 32512], inside i16.
const WIDEN_BLOCKS: usize = 8;

/// Unpacks field `SHIFT / 2` of every byte to a u8 in {0, 1, 2}.
#[inline]
#[target_feature(enable = "avx2")]
fn field<const SHIFT: i32>(v: __m256i) -> __m256i {
    _mm256_and_si256(_mm256_srli_epi16::<SHIFT>(v), _mm256_set1_epi8(3))
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// `Σ u·x` of row `r` against the one token, `u` the stored codes in {0, 1, 2}.
///
/// One row at a time: a 2-row tile reads two interleaved streams a row
/// apart, which the hardware prefetchers follow worse than one sequential
/// stream, and a token's activations are few enough to stay in L1 anyway.
///
/// Decode is bound by how fast a core streams the weights, and a core
/// streams faster the less it computes per byte, so the fields are
/// unpacked by a mask alone, without the shift: field `k` then reads as
/// `4^k · u`, and its `vpmaddubsw` pair sums as `4^k` times theirs. Each
/// field keeps its own i16 lanes, widened before they can overflow: pair
/// sums of field 0 lie in [-512, 508], so eight blocks (16 halves) fit; 4x
/// that for field 1 fits 16 halves too; field 2 (16x, [-8192, 8128]) is
/// widened every two blocks; field 3 (64x, [-32768, 32512], exactly i16's
/// range, no saturation) at once. Widened sums are exact multiples of
/// `4^k`, so an arithmetic shift divides them exactly.
///
/// # Safety
/// AVX2; `r < task.rows()`, one token in `task.x`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn gemv_row(task: &RowsTask<'_>, r: usize) -> i32 {
    let row_bytes = task.blocks * 64;
    // SAFETY: row r is in `task.w` (the caller's contract).
    let wr = unsafe { task.w.as_ptr().add(r * row_bytes) };
    let xp = task.x.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mask = |m: u8| _mm256_set1_epi8(m as i8);
    let (m0, m1, m2, m3) = (mask(0x03), mask(0x0c), mask(0x30), mask(0xc0));
    let zero = _mm256_setzero_si256();
    let (mut acc, mut acc2, mut acc3) = (zero, zero, zero);
    let (mut a0, mut a1, mut a2) = (zero, zero, zero);
    for b in 0..task.blocks {
        let ahead = wr.wrapping_add(b * 64 + super::avx512::PREFETCH_BYTES);
        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
        for h in 0..2 {
            // SAFETY: block b < blocks of row r, and the token's padded
            // codes hold `blocks * 256` bytes (the caller's contract).
            let (v, x) = unsafe {
                let v = _mm256_loadu_si256(wr.add(b * 64 + 32 * h).cast());
                let xb = xp.add(b * 256 + 32 * h);
                let x = |k: usize| _mm256_loadu_si256(xb.add(64 * k).cast());
                (v, [x(0), x(1), x(2), x(3)])
            };
            let dot = |m, x| _mm256_maddubs_epi16(_mm256_and_si256(v, m), x);
            a0 = _mm256_add_epi16(a0, dot(m0, x[0]));
            a1 = _mm256_add_epi16(a1, dot(m1, x[1]));
            a2 = _mm256_add_epi16(a2, dot(m2, x[2]));
            acc3 = _mm256_add_epi32(acc3, _mm256_madd_epi16(dot(m3, x[3]), ones));
        }
        let last = b + 1 == task.blocks;
        if b % 2 == 1 || last {
            acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(a2, ones));
            a2 = zero;
        }
        if (b + 1) % WIDEN_BLOCKS == 0 || last {
            let f0 = _mm256_madd_epi16(a0, ones);
            let f1 = _mm256_srai_epi32::<2>(_mm256_madd_epi16(a1, ones));
            let f23 = _mm256_add_epi32(_mm256_srai_epi32::<4>(acc2), _mm256_srai_epi32::<6>(acc3));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_add_epi32(f0, f1), f23));
            (a0, a1, acc2, acc3) = (zero, zero, zero, zero);
        }
    }
    hsum(acc)
}

// Tiles index rows and tokens of several arrays at once; ranges read clearer
// than zipped iterators here.
#[allow(clippy::needless_range_loop)]
/// One `R x T` tile starting at row `r0`, token `t0`, unpacking the
/// weights in registers: for a few tokens, where storing them unpacked
/// and reading them back costs more than it saves.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn packed_tile<const R: usize, const T: usize>(
    task: &RowsTask<'_>,
    r0: usize,
    t0: usize,
    out: &mut [i32],
) {
    let (row_bytes, stride) = (task.blocks * 64, task.stride());
    let wp = task.w.as_ptr();
    let xp = task.x.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let mut acc16 = [[_mm256_setzero_si256(); T]; R];
    for b in 0..task.blocks {
        // The last block's fields past `tail_fields` are padding on both
        // sides (weight code 0, activation 0): nothing to add.
        let fields = if b + 1 == task.blocks {
            task.tail_fields
        } else {
            4
        };
        for h in 0..2 {
            let mut v = [_mm256_setzero_si256(); R];
            for (i, v) in v.iter_mut().enumerate() {
                // SAFETY: row r0 + i < rows, block b < blocks, half h < 2.
                *v = unsafe {
                    _mm256_loadu_si256(wp.add((r0 + i) * row_bytes + b * 64 + 32 * h).cast())
                };
            }
            for k in 0..4 {
                if k >= fields {
                    break;
                }
                let mut u = [_mm256_setzero_si256(); R];
                for (u, &v) in u.iter_mut().zip(&v) {
                    *u = match k {
                        0 => field::<0>(v),
                        1 => field::<2>(v),
                        2 => field::<4>(v),
                        _ => field::<6>(v),
                    };
                }
                for j in 0..T {
                    let off = (t0 + j) * stride + b * 256 + 64 * k + 32 * h;
                    // SAFETY: token t0 + j < tokens; offset inside its padded row.
                    let x = unsafe { _mm256_loadu_si256(xp.add(off).cast()) };
                    for i in 0..R {
                        acc16[i][j] = _mm256_add_epi16(acc16[i][j], _mm256_maddubs_epi16(u[i], x));
                    }
                }
            }
        }
        // Widened to i32 every `WIDEN_BLOCKS` blocks, not every block:
        // fewer registers held, so 2 x 4 tiles fit.
        if (b + 1) % WIDEN_BLOCKS == 0 || b + 1 == task.blocks {
            for i in 0..R {
                for j in 0..T {
                    acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(acc16[i][j], ones));
                    acc16[i][j] = _mm256_setzero_si256();
                }
            }
        }
    }
    // SAFETY: AVX2 (this function's own feature); the tile is in `out`.
    unsafe { store_tile(task, &acc, r0, t0, out) };
}

// Tiles index rows and tokens of several arrays at once; ranges read clearer
// than zipped iterators here.
#[allow(clippy::needless_range_loop)]
/// One `R x T` tile: rows `r0..r0 + R` (unpacked in `u`, a row every
/// `task.stride()` bytes) against tokens `t0..t0 + T`.
///
/// Per 32 columns: R loads of weights, T of activations, R·T
/// `vpmaddubsw` + `vpaddw`. 2 x 6 holds 12 accumulators, 2 weights, the
/// activation and the product: all 16 registers.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize, const T: usize>(
    task: &RowsTask<'_>,
    u: &[u8],
    r0: usize,
    t0: usize,
    out: &mut [i32],
) {
    let stride = task.stride();
    // The last block's fields past `tail_fields` are padding on both sides
    // (weight code 0, activation 0): nothing to add.
    let chunks = (task.blocks - 1) * 8 + task.tail_fields * 2;
    assert!(u.len() >= (R - 1) * stride + chunks * 32);
    let up = u.as_ptr();
    let xp = task.x.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let mut acc16 = [[_mm256_setzero_si256(); T]; R];
    let mut c = 0;
    while c < chunks {
        // i16 lanes gain one pair sum in [-512, 508] per 32 columns:
        // widened every `WIDEN_BLOCKS` blocks of 8 chunks.
        let end = chunks.min(c + WIDEN_BLOCKS * 8);
        while c < end {
            let mut w = [_mm256_setzero_si256(); R];
            for i in 0..R {
                // SAFETY: chunk c of row i is in `u` (asserted above).
                w[i] = unsafe { _mm256_loadu_si256(up.add(i * stride + 32 * c).cast()) };
            }
            for j in 0..T {
                // SAFETY: token t0 + j < tokens; chunk c inside its padded row.
                let x = unsafe { _mm256_loadu_si256(xp.add((t0 + j) * stride + 32 * c).cast()) };
                for i in 0..R {
                    acc16[i][j] = _mm256_add_epi16(acc16[i][j], _mm256_maddubs_epi16(w[i], x));
                }
            }
            // Without this LLVM reassociates consecutive chunks' adds into
            // trees, which need more registers than there are and spill.
            for i in 0..R {
                for j in 0..T {
                    // SAFETY: an empty asm block: no instructions, no memory.
                    unsafe {
                        std::arch::asm!("/* {0} */", inout(ymm_reg) acc16[i][j], options(pure, nomem, nostack));
                    }
                }
            }
            c += 1;
        }
        for i in 0..R {
            for j in 0..T {
                acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(acc16[i][j], ones));
                acc16[i][j] = _mm256_setzero_si256();
            }
        }
    }
    // SAFETY: AVX2 (this function's own feature); the tile is in `out`.
    unsafe { store_tile(task, &acc, r0, t0, out) };
}

/// Writes a tile's sums minus each token's code sum to `out` (`[rows,
/// tokens]`). A row's tokens sit side by side there: three `vphaddd` fold
/// four accumulators into one vector of four sums, stored at once. (K is
/// short in training: 384 codes are a block and a half, so a tile's loop is
/// short and one horizontal sum per accumulator was a large share of it.)
///
/// # Safety
/// AVX2; rows `r0..r0 + R` and tokens `t0..t0 + T` are in `out` and `task`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_tile<const R: usize, const T: usize>(
    task: &RowsTask<'_>,
    acc: &[[__m256i; T]; R],
    r0: usize,
    t0: usize,
    out: &mut [i32],
) {
    let tokens = task.tokens();
    for i in 0..R {
        let row = &mut out[(r0 + i) * tokens + t0..][..T];
        let mut j = 0;
        while j + 4 <= T {
            let [a0, a1, a2, a3] = [acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]];
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
            let v = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            let sums = &task.sums[t0 + j..t0 + j + 4];
            let dst = &mut row[j..j + 4];
            // SAFETY: `sums` and `dst` hold four i32 each.
            unsafe {
                let s = _mm_loadu_si128(sums.as_ptr().cast());
                _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm_sub_epi32(v, s));
            }
            j += 4;
        }
        for j in j..T {
            row[j] = hsum(acc[i][j]) - task.sums[t0 + j];
        }
    }
}

/// The output pass of a layer for 8 rows x 8 tokens (AVX only, so any
/// backend of this module's CPUs can run it): sums `d` at
/// `sums + i * sums_stride + j` (row `i`, token `j`) become
/// `out[j * out_stride + i] = d / (w[i] · sx[j])` when `divide`, else
/// `d / sx[j] · w[i]`: the scalar pass's operations, so the same bits.
///
/// # Safety
/// AVX must be present; `sums + i * sums_stride + j` and
/// `out + j * out_stride + i` must be in bounds for `i, j < 8`.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn scale_out_block8(
    sums: *const i32,
    sums_stride: usize,
    w: &[f32; 8],
    sx: &[f32; 8],
    divide: bool,
    out: *mut f32,
    out_stride: usize,
) {
    // SAFETY: every pointer is in bounds (the caller's contract).
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| {
            _mm256_cvtepi32_ps(_mm256_loadu_si256(sums.add(i * sums_stride).cast()))
        });
        // One column per token.
        let cols = bitnet_core::simd::transpose8x8_ps(r);
        let wv = _mm256_loadu_ps(w.as_ptr());
        for (j, c) in cols.into_iter().enumerate() {
            _mm256_storeu_ps(out.add(j * out_stride), scale8(c, wv, sx[j], divide));
        }
    }
}

/// Eight sums `c` of one token scaled as the scalar pass does: `c / (w ·
/// sx)` when `divide`, else `c / sx · w`.
#[inline]
#[target_feature(enable = "avx")]
fn scale8(c: __m256, w: __m256, sx: f32, divide: bool) -> __m256 {
    let sx = _mm256_set1_ps(sx);
    if divide {
        _mm256_div_ps(c, _mm256_mul_ps(w, sx))
    } else {
        _mm256_mul_ps(_mm256_div_ps(c, sx), w)
    }
}

/// One token's column of [`scale_out_block8`]: the sums at `sums + i *
/// sums_stride` (row `i < 8`) become `out[i]`, scaled by [`scale8`]. A
/// decoded token (one column, `sums_stride == 1`) otherwise went element
/// by element, a division each: 5% of a 125M-shape decode step.
///
/// # Safety
/// AVX must be present; `sums + i * sums_stride` and `out + i` must be in
/// bounds for `i < 8`.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn scale_out_column8(
    sums: *const i32,
    sums_stride: usize,
    w: &[f32; 8],
    sx: f32,
    divide: bool,
    out: *mut f32,
) {
    // SAFETY: every pointer is in bounds (the caller's contract).
    unsafe {
        let d = if sums_stride == 1 {
            _mm256_loadu_si256(sums.cast())
        } else {
            let at = |i: usize| *sums.add(i * sums_stride);
            _mm256_setr_epi32(at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7))
        };
        let wv = _mm256_loadu_ps(w.as_ptr());
        _mm256_storeu_ps(out, scale8(_mm256_cvtepi32_ps(d), wv, sx, divide));
    }
}
