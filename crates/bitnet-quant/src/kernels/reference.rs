//! The scalar reference: decode each code, multiply, add. Slow and obvious;
//! every other backend is tested against it.

use super::RowsTask;

/// `out[r * tokens + t] = Σ_c t[r, c] · x[t, c]` over the task's rows.
pub(crate) fn rows(task: &RowsTask<'_>, out: &mut [i32]) {
    let (tokens, stride, row_bytes) = (task.tokens(), task.stride(), task.blocks * 64);
    for r in 0..task.rows() {
        let w = &task.w[r * row_bytes..(r + 1) * row_bytes];
        for t in 0..tokens {
            let x = &task.x[t * stride..(t + 1) * stride];
            let mut acc = 0i32;
            for (c, &xc) in x.iter().enumerate() {
                let byte = w[c / 256 * 64 + c % 64];
                let code = i32::from((byte >> (2 * ((c % 256) / 64))) & 3) - 1;
                acc += code * i32::from(xc);
            }
            out[r * tokens + t] = acc;
        }
    }
}
