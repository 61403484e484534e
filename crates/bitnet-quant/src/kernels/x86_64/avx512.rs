//! AVX-512 VNNI kernels (`vpdpbusd`: u8 x i8 → i32, four products per lane).
//!
//! GEMV (one token) is memory bound: one 64-byte load gives a whole block;
//! masking it with `0x03`, `0x0c`, `0x30`, `0xc0` (no shifts) yields weights
//! scaled by 1, 4, 16, 64 that go straight into four accumulators, and the
//! scaling is undone once per row with exact arithmetic shifts (every lane of
//! accumulator `k` is a multiple of `4^k`). Four rows share each activation load.
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

/// Rows GEMV processes together, sharing each activation load.
pub(crate) const GEMV_ROWS: usize = 4;

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv(task: &RowsTask<'_>, out: &mut [i32]) {
    let rows = out.len();
    let mut r = 0;
    while r + GEMV_ROWS <= rows {
        // SAFETY: rows r..r + GEMV_ROWS exist; features as guaranteed to `rows`.
        unsafe { gemv_rows::<GEMV_ROWS>(task, r, out) };
        r += GEMV_ROWS;
    }
    while r < rows {
        // SAFETY: row r exists.
        unsafe { gemv_rows::<1>(task, r, out) };
        r += 1;
    }
}

/// `R` rows of GEMV starting at row `r0`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv_rows<const R: usize>(task: &RowsTask<'_>, r0: usize, out: &mut [i32]) {
    let row_bytes = task.blocks * 64;
    let wp = task.w.as_ptr();
    let xp = task.x.as_ptr();
    let masks = [
        _mm512_set1_epi8(0x03),
        _mm512_set1_epi8(0x0c),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(0xc0u8 as i8),
    ];
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    for b in 0..task.blocks {
        let mut w = [_mm512_setzero_si512(); R];
        for (i, w) in w.iter_mut().enumerate() {
            let at = (r0 + i) * row_bytes + b * 64;
            // SAFETY: row r0 + i exists and block b is inside it.
            *w = unsafe { _mm512_loadu_si512(wp.add(at).cast()) };
            // Hardware prefetchers alone leave one core well short of memory
            // bandwidth; prefetching never faults, so addresses past the end
            // are fine.
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(at + PREFETCH_BYTES).cast());
        }
        for (k, &mask) in masks.iter().enumerate() {
            // SAFETY: the activations hold blocks * 256 codes.
            let x = unsafe { _mm512_loadu_si512(xp.add(b * 256 + 64 * k).cast()) };
            for (a, &w) in acc.iter_mut().zip(&w) {
                a[k] = _mm512_dpbusd_epi32(a[k], _mm512_and_si512(w, mask), x);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        out[r0 + i] = combine(a) - task.sums[0];
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
