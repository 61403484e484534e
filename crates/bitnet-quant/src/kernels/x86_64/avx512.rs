//! AVX-512 VNNI kernels (`vpdpbusd`: u8 x i8 → i32, four products per lane).
//!
//! GEMV (one token) is memory bound: one 64-byte load gives a whole block;
//! masking it with `0x03`, `0x0c`, `0x30`, `0xc0` (no shifts) yields weights
//! scaled by 1, 4, 16, 64 that go straight into four accumulators, and the
//! scaling is undone once per row with exact arithmetic shifts (every lane of
//! accumulator `k` is a multiple of `4^k`). Two rows share each activation load.
//!
//! GEMM (many tokens) is compute bound: each run of 4 rows is unpacked once
//! (shift + mask) to one byte per weight in an L1-resident scratch buffer,
//! then a 4-row x 4-token register tile runs 16 `vpdpbusd` per 4 weight and
//! 4 activation loads, with no unpacking left on the vector ports. (Tiles of
//! 4x6, 3x8 and 2x12 measured slower than 4x4.)

use super::super::RowsTask;
use std::arch::x86_64::*;

/// Computes the task's rows. See the module doc.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512VNNI; `task.w` holds
/// whole rows of `task.blocks * 64` bytes and `task.x` `tokens` padded rows of
/// `task.blocks * 256` codes; `out.len() == rows * tokens`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn rows(task: &RowsTask<'_>, out: &mut [i32]) {
    let rows = task.rows();
    let tokens = task.tokens();
    assert!(task.w.len() >= rows * task.blocks * 64);
    assert!(task.x.len() >= tokens * task.stride());
    assert_eq!(out.len(), rows * tokens);
    if tokens == 1 {
        // SAFETY: lengths asserted above; features guaranteed by the caller.
        unsafe { gemv(task, out) };
    } else {
        // SAFETY: as above.
        unsafe { gemm(task, out) };
    }
}

/// How far ahead of the current block, in bytes, GEMV prefetches weights
/// (about 100 cache lines; measured best between 4 and 16 KiB on a 2-core
/// Xeon VM, where the hardware prefetchers alone reach half the bandwidth).
pub(crate) const PREFETCH_BYTES: usize = 8192;

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv(task: &RowsTask<'_>, out: &mut [i32]) {
    let row_bytes = task.blocks * 64;
    let wp = task.w.as_ptr();
    let xp = task.x.as_ptr();
    let masks = [
        _mm512_set1_epi8(0x03),
        _mm512_set1_epi8(0x0c),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(0xc0u8 as i8),
    ];
    let rows = out.len();
    let mut r = 0;
    while r + 2 <= rows {
        let mut acc = [[_mm512_setzero_si512(); 4]; 2];
        for b in 0..task.blocks {
            // SAFETY: rows r and r + 1 exist and block b is inside them; the
            // activations hold blocks * 256 codes.
            unsafe {
                let w0 = _mm512_loadu_si512(wp.add(r * row_bytes + b * 64).cast());
                let w1 = _mm512_loadu_si512(wp.add((r + 1) * row_bytes + b * 64).cast());
                // Ask for the lines a few rows ahead: hardware prefetchers
                // alone leave one core well short of memory bandwidth.
                // Prefetching never faults, so addresses past the end are fine.
                let ahead = wp.wrapping_add(r * row_bytes + b * 64 + PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(row_bytes).cast());
                for k in 0..4 {
                    let x = _mm512_loadu_si512(xp.add(b * 256 + 64 * k).cast());
                    acc[0][k] = _mm512_dpbusd_epi32(acc[0][k], _mm512_and_si512(w0, masks[k]), x);
                    acc[1][k] = _mm512_dpbusd_epi32(acc[1][k], _mm512_and_si512(w1, masks[k]), x);
                }
            }
        }
        out[r] = combine(&acc[0]) - task.sums[0];
        out[r + 1] = combine(&acc[1]) - task.sums[0];
        r += 2;
    }
    if r < rows {
        let mut acc = [_mm512_setzero_si512(); 4];
        for b in 0..task.blocks {
            // SAFETY: row r exists; as above.
            unsafe {
                let w0 = _mm512_loadu_si512(wp.add(r * row_bytes + b * 64).cast());
                for k in 0..4 {
                    let x = _mm512_loadu_si512(xp.add(b * 256 + 64 * k).cast());
                    acc[k] = _mm512_dpbusd_epi32(acc[k], _mm512_and_si512(w0, masks[k]), x);
                }
            }
        }
        out[r] = combine(&acc) - task.sums[0];
    }
}

/// Undoes the mask scaling (exact shifts) and sums all lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn combine(acc: &[__m512i; 4]) -> i32 {
    let a = _mm512_add_epi32(
        _mm512_add_epi32(acc[0], _mm512_srai_epi32::<2>(acc[1])),
        _mm512_add_epi32(
            _mm512_srai_epi32::<4>(acc[2]),
            _mm512_srai_epi32::<6>(acc[3]),
        ),
    );
    _mm512_reduce_add_epi32(a)
}

/// Rows and tokens of the GEMM register tile.
const TILE_ROWS: usize = 4;
const TILE_TOKENS: usize = 4;

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm(task: &RowsTask<'_>, out: &mut [i32]) {
    let (rows, tokens) = (task.rows(), task.tokens());
    // Weights of one row tile, unpacked to one byte each (L1-resident: 4 rows
    // of 6912 weights are 27 KiB) so every token tile reuses them.
    let mut unpacked = vec![_mm512_setzero_si512(); TILE_ROWS * task.blocks * 4];
    let mut r = 0;
    while r < rows {
        let rs = if rows - r >= TILE_ROWS { TILE_ROWS } else { 1 };
        unpack_rows(task, r, rs, &mut unpacked);
        let mut t = 0;
        while t < tokens {
            let ts = if tokens - t >= TILE_TOKENS {
                TILE_TOKENS
            } else {
                1
            };
            // SAFETY: the tile's rows and tokens are in range; features as
            // guaranteed to `rows`.
            unsafe {
                match (rs, ts) {
                    (TILE_ROWS, TILE_TOKENS) => {
                        tile::<TILE_ROWS, TILE_TOKENS>(task, &unpacked, r, t, out)
                    }
                    (TILE_ROWS, _) => tile::<TILE_ROWS, 1>(task, &unpacked, r, t, out),
                    (_, TILE_TOKENS) => tile::<1, TILE_TOKENS>(task, &unpacked, r, t, out),
                    _ => tile::<1, 1>(task, &unpacked, r, t, out),
                }
            }
            t += ts;
        }
        r += rs;
    }
}

/// Unpacks rows `r0..r0 + n` into `dst`: for block `b`, field `k`, row `i`,
/// the 64 weights `b*256 + 64k ..` as bytes in {0, 1, 2} at index
/// `(b * 4 + k) * n + i`.
#[target_feature(enable = "avx512f,avx512bw")]
fn unpack_rows(task: &RowsTask<'_>, r0: usize, n: usize, dst: &mut [__m512i]) {
    let row_bytes = task.blocks * 64;
    for i in 0..n {
        let row = &task.w[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
        for (b, block) in row.chunks_exact(64).enumerate() {
            // SAFETY: `block` is exactly 64 bytes.
            let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
            dst[(b * 4) * n + i] = field::<0>(v);
            dst[(b * 4 + 1) * n + i] = field::<2>(v);
            dst[(b * 4 + 2) * n + i] = field::<4>(v);
            dst[(b * 4 + 3) * n + i] = field::<6>(v);
        }
    }
}

/// Unpacks field `SHIFT / 2` of every byte to a u8 in {0, 1, 2}.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn field<const SHIFT: u32>(v: __m512i) -> __m512i {
    _mm512_and_si512(_mm512_srli_epi16::<SHIFT>(v), _mm512_set1_epi8(3))
}

// Tiles index rows and tokens of several arrays at once; ranges read clearer
// than zipped iterators here.
#[allow(clippy::needless_range_loop)]
/// One `R x T` register tile starting at row `r0`, token `t0`, reading the
/// row tile's weights from `unpacked` (laid out by [`unpack_rows`] with `R` rows).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const T: usize>(
    task: &RowsTask<'_>,
    unpacked: &[__m512i],
    r0: usize,
    t0: usize,
    out: &mut [i32],
) {
    let (stride, tokens) = (task.stride(), task.tokens());
    let xp = task.x.as_ptr();
    let mut acc = [[_mm512_setzero_si512(); T]; R];
    for bk in 0..task.blocks * 4 {
        let u = &unpacked[bk * R..bk * R + R];
        for j in 0..T {
            // SAFETY: token t0 + j < tokens; its padded row has blocks * 256
            // codes and bk * 64 + 64 <= blocks * 256.
            let x = unsafe { _mm512_loadu_si512(xp.add((t0 + j) * stride + bk * 64).cast()) };
            for i in 0..R {
                acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], u[i], x);
            }
        }
    }
    for i in 0..R {
        for j in 0..T {
            out[(r0 + i) * tokens + t0 + j] =
                _mm512_reduce_add_epi32(acc[i][j]) - task.sums[t0 + j];
        }
    }
}
