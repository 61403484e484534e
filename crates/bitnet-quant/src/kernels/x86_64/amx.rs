//! AMX-INT8 GEMM: `tdpbusd` multiplies a 16 x 64 tile of u8 weights by a
//! 64 x 16 tile of i8 activations into a 16 x 16 tile of i32 — 16,384
//! products per instruction, against 64 for an AVX-512 `vpdpbusd`.
//! Prefill (and a batch of decoding sequences) is compute bound on the
//! VNNI path, so this is where a CPU with AMX (Xeon since Sapphire Rapids)
//! gets its speed. One token (GEMV) stays on the AVX-512 VNNI kernel:
//! it is memory bound, and a tile would be 15/16 padding.
//!
//! Layout, for a task's rows `r0..` and all its tokens:
//! - Activations are packed once per call ([`pack_activations`]) into
//!   B tiles, ordered `[token group of 16][64-column chunk]`: row `k` of a
//!   tile holds, for each token `n`, its 4 codes `4k..4k + 4` of the chunk
//!   (the "VNNI" layout `tdpbusd` expects). Missing tokens are zeros.
//! - Weights are unpacked 32 rows at a time to one byte per weight
//!   (`u = t + 1` in {0, 1, 2}), ordered `[64-column chunk][16-row half]`,
//!   so every A tile is 1 KiB contiguous; they are reused for every token
//!   group. Missing rows are zeros.
//! - Four accumulator tiles (2 row halves x 2 token groups) take 4
//!   `tdpbusd` per 2 A and 2 B tile loads.
//!
//! The sums are exact i32 (`Σ u·x`), corrected by `Σ x` per token as on
//! every backend, so results equal the reference bit for bit.
//!
//! Linux gives a process the AMX register state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), made once in
//! [`available`]; the tile configuration is loaded per call and released
//! after it, since it is per thread.

use super::super::RowsTask;
use std::arch::asm;
use std::arch::x86_64::*;

/// Tokens per B tile.
const TILE_TOKENS: usize = 16;
/// Rows per A tile.
const TILE_ROWS: usize = 16;
/// Bytes of one tile (16 rows of 64 bytes).
const TILE_BYTES: usize = 1024;

/// Whether this CPU has AMX-TILE and AMX-INT8 and the OS lets this
/// process use them. Asks Linux for the permission (once per process; a
/// repeated request is harmless).
pub(crate) fn available() -> bool {
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw"))
    {
        return false;
    }
    // CPUID leaf 7, sub-leaf 0: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
        return false;
    }
    request_permission()
}

#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes which register
    // state the kernel saves for this process; the syscall clobbers rcx
    // and r11 and returns in rax.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// `ldtilecfg`'s 64-byte operand: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn all_full() -> Self {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            c.colsb[t] = 64;
            c.rows[t] = TILE_ROWS as u8;
        }
        c
    }
}

/// Bytes [`pack_activations`] writes for `tokens` rows of `stride` codes.
pub(crate) fn packed_len(stride: usize, tokens: usize) -> usize {
    tokens.div_ceil(TILE_TOKENS) * (stride / 64) * TILE_BYTES
}

/// Packs `tokens` padded activation rows (`stride` codes each, a multiple
/// of 256) into B tiles (see the module doc) in `out` ([`packed_len`] bytes).
pub(crate) fn pack_activations(x: &[i8], stride: usize, tokens: usize, out: &mut [u8]) {
    let chunks = stride / 64;
    for (g, group) in out.chunks_exact_mut(chunks * TILE_BYTES).enumerate() {
        for (kc, tile) in group.chunks_exact_mut(TILE_BYTES).enumerate() {
            for (k, tile_row) in tile.chunks_exact_mut(64).enumerate() {
                for (n, dst) in tile_row.chunks_exact_mut(4).enumerate() {
                    let t = g * TILE_TOKENS + n;
                    if t < tokens {
                        let at = t * stride + kc * 64 + 4 * k;
                        for (d, &s) in dst.iter_mut().zip(&x[at..at + 4]) {
                            *d = s as u8;
                        }
                    } else {
                        dst.fill(0);
                    }
                }
            }
        }
    }
}

/// Unpacks rows `r0..r0 + n` (n <= 32) of the task into A tiles
/// `[chunk][half][16 rows][64]`; rows past `n` become zeros.
#[target_feature(enable = "avx512f,avx512bw")]
fn unpack_rows(task: &RowsTask<'_>, r0: usize, n: usize, dst: &mut [u8]) {
    let row_bytes = task.blocks * 64;
    let three = _mm512_set1_epi8(3);
    for m in 0..2 * TILE_ROWS {
        let (half, i) = (m / TILE_ROWS, m % TILE_ROWS);
        for b in 0..task.blocks {
            let fields = if m < n {
                let at = (r0 + m) * row_bytes + b * 64;
                // SAFETY: row r0 + m < rows, and block b is inside it.
                let v = unsafe { _mm512_loadu_si512(task.w.as_ptr().add(at).cast()) };
                [
                    _mm512_and_si512(v, three),
                    _mm512_and_si512(_mm512_srli_epi16::<2>(v), three),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), three),
                    _mm512_and_si512(_mm512_srli_epi16::<6>(v), three),
                ]
            } else {
                [_mm512_setzero_si512(); 4]
            };
            for (k, f) in fields.into_iter().enumerate() {
                let at = ((b * 4 + k) * 2 + half) * TILE_BYTES + i * 64;
                let slot = &mut dst[at..at + 64];
                // SAFETY: `slot` is 64 bytes.
                unsafe { _mm512_storeu_si512(slot.as_mut_ptr().cast(), f) };
            }
        }
    }
}

/// The task's rows for all its tokens, from activations packed by
/// [`pack_activations`].
///
/// # Safety
/// [`available`] returned true in this process; `task.w` holds whole rows
/// of `task.blocks * 64` bytes; `packed` is the packing of the task's
/// tokens with stride `task.blocks * 256`; `out.len() == rows * tokens`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn gemm(task: &RowsTask<'_>, packed: &[u8], out: &mut [i32]) {
    let (rows, tokens) = (task.rows(), task.tokens());
    let chunks = task.blocks * 4;
    let groups = tokens.div_ceil(TILE_TOKENS);
    assert!(task.w.len() >= rows * task.blocks * 64);
    assert!(packed.len() >= groups * chunks * TILE_BYTES);
    assert_eq!(out.len(), rows * tokens);
    let mut unpacked = vec![0u8; chunks * 2 * TILE_BYTES];
    let mut c = [[0i32; TILE_TOKENS]; TILE_ROWS];
    let cfg = TileConfig::all_full();
    // SAFETY: AMX is usable (caller); the configuration is a valid palette 1.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    let mut r0 = 0;
    while r0 < rows {
        let n = (rows - r0).min(2 * TILE_ROWS);
        unpack_rows(task, r0, n, &mut unpacked);
        let mut g = 0;
        while g < groups {
            let a = unpacked.as_ptr();
            let b = packed[g * chunks * TILE_BYTES..].as_ptr();
            let two_rows = n > TILE_ROWS;
            let two_groups = g + 1 < groups;
            // SAFETY: every tile read is inside `unpacked` (chunks * 2
            // tiles) or `packed` (groups * chunks tiles; the second group
            // only when it exists).
            unsafe {
                match (two_rows, two_groups) {
                    (true, true) => accumulate::<true, true>(a, b, chunks),
                    (true, false) => accumulate::<true, false>(a, b, chunks),
                    (false, true) => accumulate::<false, true>(a, b, chunks),
                    (false, false) => accumulate::<false, false>(a, b, chunks),
                }
            }
            // Tile (half, group) is in tmm(2 * half + group).
            for half in 0..2 {
                for dg in 0..2 {
                    let (rr, tt) = (r0 + half * TILE_ROWS, (g + dg) * TILE_TOKENS);
                    if rr >= rows || tt >= tokens {
                        continue;
                    }
                    // SAFETY: `c` is 16 rows of 64 bytes.
                    unsafe { store_tile(2 * half + dg, &mut c) };
                    for (i, crow) in c.iter().enumerate().take(rows - rr) {
                        let orow = &mut out[(rr + i) * tokens..(rr + i + 1) * tokens];
                        for (j, &v) in crow.iter().enumerate().take(tokens - tt) {
                            orow[tt + j] = v - task.sums[tt + j];
                        }
                    }
                }
            }
            g += 2;
        }
        r0 += 2 * TILE_ROWS;
    }
    // SAFETY: releases this thread's tile state; AMX is usable (caller).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Zeroes tmm0..tmm3 and accumulates every 64-column chunk: tmm4/tmm5 the
/// A tiles of the two row halves, tmm6/tmm7 the B tiles of the two token
/// groups, tmm(2h + g) += A_h · B_g.
///
/// # Safety
/// Tiles are configured; `a` holds `chunks * 2` tiles and `b` `chunks`
/// tiles (and `2 * chunks` when `G2`).
#[inline(always)]
unsafe fn accumulate<const R2: bool, const G2: bool>(a: *const u8, b: *const u8, chunks: usize) {
    const STRIDE: usize = 64;
    // SAFETY (every block): tile loads read 1 KiB inside `a` and `b`
    // (caller); tile registers are not touched by compiled code.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for kc in 0..chunks {
            let a0 = a.add(kc * 2 * TILE_BYTES);
            let b0 = b.add(kc * TILE_BYTES);
            asm!(
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tdpbusd tmm0, tmm4, tmm6",
                a = in(reg) a0, b = in(reg) b0, s = in(reg) STRIDE,
                options(nostack, readonly),
            );
            if G2 {
                let b1 = b.add((chunks + kc) * TILE_BYTES);
                asm!(
                    "tileloadd tmm7, [{b} + {s}*1]",
                    "tdpbusd tmm1, tmm4, tmm7",
                    b = in(reg) b1, s = in(reg) STRIDE,
                    options(nostack, readonly),
                );
            }
            if R2 {
                let a1 = a0.add(TILE_BYTES);
                asm!(
                    "tileloadd tmm5, [{a} + {s}*1]",
                    "tdpbusd tmm2, tmm5, tmm6",
                    a = in(reg) a1, s = in(reg) STRIDE,
                    options(nostack, readonly),
                );
                if G2 {
                    asm!("tdpbusd tmm3, tmm5, tmm7", options(nostack, nomem));
                }
            }
        }
    }
}

/// Stores accumulator tile `tmm{t}` (t < 4) into `c`.
///
/// # Safety
/// Tiles are configured and hold results.
#[inline(always)]
unsafe fn store_tile(t: usize, c: &mut [[i32; TILE_TOKENS]; TILE_ROWS]) {
    const STRIDE: usize = 64;
    let p = c.as_mut_ptr().cast::<u8>();
    // SAFETY: `c` is exactly one 16 x 64-byte tile.
    unsafe {
        match t {
            0 => {
                asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) STRIDE, options(nostack))
            }
            1 => {
                asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) STRIDE, options(nostack))
            }
            2 => {
                asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) STRIDE, options(nostack))
            }
            _ => {
                asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) STRIDE, options(nostack))
            }
        }
    }
}
