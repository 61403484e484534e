//! Portable kernels: plain Rust shaped so compilers vectorize it on any
//! target. GEMM unpacks each weight block once into bytes and reuses it for
//! every token.

use super::RowsTask;

/// Dot product of one packed 256-weight block (as `t + 1`) with 256 codes.
///
/// Lane-wise i16 accumulation over the four fields (|u·x| <= 256, four of
/// them fit easily), then one widening sum: shaped so compilers emit 16-bit
/// vector multiplies on any target instead of a scalar reduction.
#[inline]
fn block_dot(w: &[u8], x: &[i8]) -> i32 {
    let (w, x) = (&w[..64], &x[..256]);
    let mut acc = [0i16; 64];
    for k in 0..4 {
        let xs = &x[64 * k..64 * (k + 1)];
        for ((a, &b), &xv) in acc.iter_mut().zip(w).zip(xs) {
            *a += i16::from((b >> (2 * k)) & 3) * i16::from(xv);
        }
    }
    acc.iter().map(|&a| i32::from(a)).sum()
}

/// `out[r * tokens + t] = Σ_c t[r, c] · x[t, c]` over the task's rows.
pub(crate) fn rows(task: &RowsTask<'_>, out: &mut [i32]) {
    let (tokens, stride, row_bytes) = (task.tokens(), task.stride(), task.blocks * 64);
    if tokens == 1 {
        for (r, o) in out.iter_mut().enumerate() {
            let w = &task.w[r * row_bytes..(r + 1) * row_bytes];
            let sum: i32 = w
                .chunks_exact(64)
                .zip(task.x.chunks_exact(256))
                .map(|(wb, xb)| block_dot(wb, xb))
                .sum();
            *o = sum - task.sums[0];
        }
        return;
    }
    let mut unpacked = [0u8; 256];
    for r in 0..task.rows() {
        let o = &mut out[r * tokens..(r + 1) * tokens];
        o.iter_mut().zip(task.sums).for_each(|(o, &s)| *o = -s);
        for b in 0..task.blocks {
            let wb = &task.w[r * row_bytes + b * 64..r * row_bytes + (b + 1) * 64];
            for (i, u) in unpacked.iter_mut().enumerate() {
                *u = (wb[i % 64] >> (2 * (i / 64))) & 3;
            }
            for (t, o) in o.iter_mut().enumerate() {
                let x = &task.x[t * stride + b * 256..t * stride + (b + 1) * 256];
                let mut acc = [0i16; 64];
                for (u, x) in unpacked.chunks_exact(64).zip(x.chunks_exact(64)) {
                    for ((a, &u), &x) in acc.iter_mut().zip(u).zip(x) {
                        *a += i16::from(u) * i16::from(x);
                    }
                }
                let dot: i32 = acc.iter().map(|&a| i32::from(a)).sum();
                *o += dot;
            }
        }
    }
}
