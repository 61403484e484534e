//! Slice kernels behind the tape's ops: GEMM through faer (with transposed
//! operands as views, never copies), fused causal attention forward and
//! backward, and a small parallel-map helper over an explicit pool.

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::ops::{exp_in_place, rows};
use crate::parallel::Parallelism;

/// `dst[m,n] (+)= op(a) · op(b)`, all row-major. `a` is `[m,k]` (or `[k,m]`
/// when `ta`), `b` is `[k,n]` (or `[n,k]` when `tb`).
#[allow(clippy::too_many_arguments)] // a GEMM signature; a struct would only rename the fields
pub(crate) fn gemm(
    dst: &mut [f32],
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let lhs = if ta {
        MatRef::from_row_major_slice(a, k, m).transpose()
    } else {
        MatRef::from_row_major_slice(a, m, k)
    };
    let rhs = if tb {
        MatRef::from_row_major_slice(b, n, k).transpose()
    } else {
        MatRef::from_row_major_slice(b, k, n)
    };
    let out = MatMut::from_row_major_slice_mut(dst, m, n);
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    faer_matmul(out, accum, lhs, rhs, 1.0f32, par);
}

/// Writes into `out` (`src.len()` elements, every one written) the
/// `[cols, rows]` transpose of row-major `[rows, cols]` `src`, in 8 x 8
/// blocks that stay in cache, output rows split over the pool. Full blocks
/// go through AVX shuffles where the CPU has them (detected once per call).
pub(crate) fn transpose_into(
    par: Parallelism<'_>,
    src: &[f32],
    rows: usize,
    cols: usize,
    out: &mut [f32],
) {
    transpose_with(par, src, rows, cols, out, Block8::detect());
}

/// How a full 8 x 8 block is transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Block8 {
    /// Element by element (the reference).
    Scalar,
    /// Eight loads, 24 shuffles, eight stores.
    #[cfg(target_arch = "x86_64")]
    Avx,
}

impl Block8 {
    /// The fastest this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            return Block8::Avx;
        }
        Block8::Scalar
    }
}

/// [`transpose_into`] with full blocks on `block`.
pub(crate) fn transpose_with(
    par: Parallelism<'_>,
    src: &[f32],
    rows: usize,
    cols: usize,
    out: &mut [f32],
    block: Block8,
) {
    // 8 x 8 blocks: eight source rows are read and written out as eight
    // contiguous runs, so neither side strides through more than eight
    // cache lines at a time.
    const B: usize = 8;
    assert_eq!(out.len(), src.len());
    assert_eq!(src.len(), rows * cols);
    if rows == 0 || cols == 0 {
        return;
    }
    // One output row per source column.
    for_rows(par, out, rows, |c_first, chunk| {
        let ncols = chunk.len() / rows;
        for ct in (0..ncols).step_by(B) {
            let cw = B.min(ncols - ct);
            for rt in (0..rows).step_by(B) {
                let rh = B.min(rows - rt);
                let from = rt * cols + c_first + ct;
                let to = ct * rows + rt;
                match block {
                    #[cfg(target_arch = "x86_64")]
                    Block8::Avx if cw == B && rh == B => {
                        // Last source element read: row rt + 7, column
                        // c_first + ct + 7; last written: row ct + 7 of the
                        // chunk, column rt + 7. Both inside their slices.
                        assert!(
                            from + 7 * cols + B <= src.len() && to + 7 * rows + B <= chunk.len()
                        );
                        // SAFETY: AVX is present (detected); the asserts
                        // above bound every load and store.
                        unsafe {
                            transpose8_avx(
                                src.as_ptr().add(from),
                                cols,
                                chunk.as_mut_ptr().add(to),
                                rows,
                            )
                        };
                    }
                    _ => {
                        for i in 0..rh {
                            for j in 0..cw {
                                chunk[to + j * rows + i] = src[from + i * cols + j];
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Transposes the 8 x 8 block at `src` (rows `src_stride` apart) into `dst`
/// (rows `dst_stride` apart).
///
/// # Safety
/// AVX must be present; `src + r * src_stride + c` and
/// `dst + r * dst_stride + c` must be in bounds for `r, c < 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8_avx(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: every pointer is in bounds (the caller's contract).
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
        let cols = crate::simd::transpose8x8_ps(r);
        for (j, c) in cols.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(j * dst_stride), c);
        }
    }
}

/// Maps `f` over `0..n`, on the pool's threads when there is one.
pub(crate) fn par_map<T: Send>(
    par: Parallelism<'_>,
    n: usize,
    f: impl Fn(usize) -> T + Sync + Send,
) -> Vec<T> {
    match par {
        Parallelism::Sequential => (0..n).map(f).collect(),
        Parallelism::Pool(pool) => pool.install(|| (0..n).into_par_iter().map(f).collect()),
    }
}

/// Maps `f(index, chunk)` over `data` cut into chunks of `len`, one task
/// per chunk on the pool's threads when there is one; results in order.
pub(crate) fn par_chunks_map<T: Send>(
    par: Parallelism<'_>,
    data: &mut [f32],
    len: usize,
    f: impl Fn(usize, &mut [f32]) -> T + Sync + Send,
) -> Vec<T> {
    let len = len.max(1);
    match par {
        Parallelism::Sequential => data
            .chunks_exact_mut(len)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect(),
        Parallelism::Pool(pool) => pool.install(|| {
            data.par_chunks_exact_mut(len)
                .enumerate()
                .map(|(i, c)| f(i, c))
                .collect()
        }),
    }
}

/// Fewer elements than this run on the calling thread: splitting costs
/// more than it saves.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// The pool and the rows per task when `len` elements in rows of `width`
/// are worth splitting (about two tasks per thread); `None`: run them on
/// the calling thread.
fn row_split<'p>(
    par: Parallelism<'p>,
    len: usize,
    width: usize,
) -> Option<(&'p rayon::ThreadPool, usize)> {
    match par {
        Parallelism::Pool(pool) if pool.current_num_threads() > 1 && len >= PAR_MIN_ELEMS => {
            let rows = len / width;
            Some((pool, rows.div_ceil(2 * pool.current_num_threads()).max(1)))
        }
        _ => None,
    }
}

/// Runs `f(first_row, chunk)` over `data` cut into chunks of whole rows of
/// `width`, on the pool's threads when there is one and `data` is large;
/// returns each chunk's result in row order. Per-row work only: what `f`
/// computes must not depend on where the chunks fall, so results are the
/// same for every thread count.
pub(crate) fn for_rows<T: Send>(
    par: Parallelism<'_>,
    data: &mut [f32],
    width: usize,
    f: impl Fn(usize, &mut [f32]) -> T + Sync + Send,
) -> Vec<T> {
    let width = width.max(1);
    match row_split(par, data.len(), width) {
        Some((pool, per)) => pool.install(|| {
            data.par_chunks_mut(per * width)
                .enumerate()
                .map(|(i, chunk)| f(i * per, chunk))
                .collect()
        }),
        None => vec![f(0, data)],
    }
}

/// [`for_rows`] over two buffers of the same shape cut at the same rows.
pub(crate) fn for_rows_zip<U: Send, T: Send>(
    par: Parallelism<'_>,
    data: &mut [f32],
    other: &mut [U],
    width: usize,
    f: impl Fn(usize, &mut [f32], &mut [U]) -> T + Sync + Send,
) -> Vec<T> {
    debug_assert_eq!(data.len(), other.len());
    let width = width.max(1);
    match row_split(par, data.len(), width) {
        Some((pool, per)) => pool.install(|| {
            data.par_chunks_mut(per * width)
                .zip(other.par_chunks_mut(per * width))
                .enumerate()
                .map(|(i, (a, b))| f(i * per, a, b))
                .collect()
        }),
        None => vec![f(0, data, other)],
    }
}

/// Runs `f(offset, chunk)` over `data` cut into chunks (`offset` is the
/// chunk's first index), in parallel when `data` is large: elementwise work.
pub(crate) fn for_chunks(
    par: Parallelism<'_>,
    data: &mut [f32],
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    const CHUNK: usize = 4096;
    for_rows(par, data, CHUNK, |row, chunk| f(row * CHUNK, chunk));
}

/// Shapes of one causal attention call: activations are rows of
/// `[batch * seq, heads * head_dim]` (queries, output) and
/// `[batch * seq, kv_heads * head_dim]` (keys, values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl AttnDims {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }
}

/// Query rows per block of the causal GEMMs. A block's rows attend only to
/// the keys up to its last row, so blocking skips the masked upper
/// triangle: 5/8 of the full `seq x seq` work at 128 tokens. Smaller blocks
/// skip more but run faer's GEMM on thinner, slower shapes.
const CAUSAL_BLOCK: usize = 32;

/// `(first row, end row)` of each query block of a `seq`-token sequence.
fn causal_blocks(seq: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..seq)
        .step_by(CAUSAL_BLOCK)
        .map(move |r0| (r0, (r0 + CAUSAL_BLOCK).min(seq)))
}

/// Offset of head `h` of sequence `b` in a `[batch*seq, width]` buffer.
fn head_off(d: &AttnDims, b: usize, h: usize, width: usize) -> usize {
    b * d.seq * width + h * d.head_dim
}

/// Strided `[seq, head_dim]` view of one head.
fn head_view<'a>(
    buf: &'a [f32],
    d: &AttnDims,
    b: usize,
    h: usize,
    width: usize,
) -> MatRef<'a, f32> {
    let off = head_off(d, b, h, width);
    let len = (d.seq - 1) * width + d.head_dim;
    MatRef::from_row_major_slice_with_stride(&buf[off..off + len], d.seq, d.head_dim, width)
}

/// Forward: `out = softmax(q kᵀ · scale + causal) v` per head (GQA: head
/// `h` reads kv head `h / (heads / kv_heads)`). Writes every element of the
/// output `out` (`q`'s shape) and of `probs`, the attention probabilities
/// `[batch, heads, seq, seq]` kept for backward.
pub(crate) fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: AttnDims,
    par: Parallelism<'_>,
    out: &mut [f32],
    probs: &mut [f32],
) {
    let (t, hd) = (d.seq, d.head_dim);
    let group = d.heads / d.kv_heads;
    let (qw, kw) = (d.q_width(), d.kv_width());
    let scale = d.scale();
    assert_eq!(probs.len(), d.batch * d.heads * t * t);
    // Each head's probabilities are written where they are kept.
    let per_head = par_chunks_map(par, probs, t * t, |task, p| {
        let (b, h) = (task / d.heads, task % d.heads);
        let kvh = h / group;
        let qh = head_view(q, &d, b, h, qw);
        let kh = head_view(k, &d, b, kvh, kw);
        let vh = head_view(v, &d, b, kvh, kw);
        let mut o = vec![0.0f32; t * hd];
        for (r0, r1) in causal_blocks(t) {
            let rows = r1 - r0;
            let pb = &mut p[r0 * t..r1 * t];
            faer_matmul(
                MatMut::from_row_major_slice_mut(pb, rows, t).subcols_mut(0, r1),
                Accum::Replace,
                qh.subrows(r0, rows),
                kh.subrows(0, r1).transpose(),
                1.0f32,
                Par::Seq,
            );
            for (i, row) in (r0..r1).zip(pb.chunks_exact_mut(t)) {
                // Scale first, then softmax over the unmasked prefix, as the
                // reference does (matmul * scaling, + mask, softmax in f32).
                let live = &mut row[..=i];
                live.iter_mut().for_each(|x| *x *= scale);
                let max = rows::max(live);
                live.iter_mut().for_each(|x| *x -= max);
                exp_in_place(live);
                let inv = 1.0 / rows::sum(live);
                for x in live.iter_mut() {
                    *x *= inv;
                }
                row[i + 1..].fill(0.0);
            }
            faer_matmul(
                MatMut::from_row_major_slice_mut(&mut o[r0 * hd..r1 * hd], rows, hd),
                Accum::Replace,
                MatRef::from_row_major_slice(pb, rows, t).subcols(0, r1),
                vh.subrows(0, r1),
                1.0f32,
                Par::Seq,
            );
        }
        o
    });
    debug_assert_eq!(out.len(), d.batch * t * qw);
    for (task, o) in per_head.into_iter().enumerate() {
        let (b, h) = (task / d.heads, task % d.heads);
        let off = head_off(&d, b, h, qw);
        for i in 0..t {
            out[off + i * qw..off + i * qw + hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
}

/// Backward of [`attention_forward`]: writes every element of the
/// gradients `(dq, dk, dv)` for `(q, k, v)`, given the output gradient
/// `dout` and the saved probabilities.
#[allow(clippy::type_complexity)] // three parallel gradient buffers
pub(crate) fn attention_backward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    probs: &[f32],
    dout: &[f32],
    d: AttnDims,
    par: Parallelism<'_>,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (t, hd) = (d.seq, d.head_dim);
    let group = d.heads / d.kv_heads;
    let (qw, kw) = (d.q_width(), d.kv_width());
    let scale = d.scale();
    // One task per (sequence, kv head): the query heads sharing a kv head
    // accumulate into the same dk/dv, so they stay on one thread.
    let per_kv = par_map(par, d.batch * d.kv_heads, |task| {
        let (b, kvh) = (task / d.kv_heads, task % d.kv_heads);
        let kh = head_view(k, &d, b, kvh, kw);
        let vh = head_view(v, &d, b, kvh, kw);
        let mut dk = vec![0.0f32; t * hd];
        let mut dv = vec![0.0f32; t * hd];
        let mut dqs = Vec::with_capacity(group);
        let mut ds = vec![0.0f32; t * t];
        for h in kvh * group..(kvh + 1) * group {
            let qh = head_view(q, &d, b, h, qw);
            let doh = head_view(dout, &d, b, h, qw);
            let mut dq = vec![0.0f32; t * hd];
            for (r0, r1) in causal_blocks(t) {
                let rows = r1 - r0;
                let pb = &probs[(b * d.heads + h) * t * t..][r0 * t..r1 * t];
                let pm = MatRef::from_row_major_slice(pb, rows, t).subcols(0, r1);
                let dob = doh.subrows(r0, rows);
                // dv += pᵀ · dout
                faer_matmul(
                    MatMut::from_row_major_slice_mut(&mut dv[..r1 * hd], r1, hd),
                    Accum::Add,
                    pm.transpose(),
                    dob,
                    1.0f32,
                    Par::Seq,
                );
                // dp = dout · vᵀ, then ds = p ⊙ (dp − rowsum(dp ⊙ p)) · scale
                let db = &mut ds[r0 * t..r1 * t];
                faer_matmul(
                    MatMut::from_row_major_slice_mut(db, rows, t).subcols_mut(0, r1),
                    Accum::Replace,
                    dob,
                    vh.subrows(0, r1).transpose(),
                    1.0f32,
                    Par::Seq,
                );
                for ((i, pr), dr) in (r0..r1).zip(pb.chunks_exact(t)).zip(db.chunks_exact_mut(t)) {
                    let dot = rows::dot(&pr[..=i], &dr[..=i]);
                    for j in 0..=i {
                        dr[j] = pr[j] * (dr[j] - dot) * scale;
                    }
                    dr[i + 1..].fill(0.0);
                }
                let dsm = MatRef::from_row_major_slice(db, rows, t).subcols(0, r1);
                faer_matmul(
                    MatMut::from_row_major_slice_mut(&mut dq[r0 * hd..r1 * hd], rows, hd),
                    Accum::Replace,
                    dsm,
                    kh.subrows(0, r1),
                    1.0f32,
                    Par::Seq,
                );
                faer_matmul(
                    MatMut::from_row_major_slice_mut(&mut dk[..r1 * hd], r1, hd),
                    Accum::Add,
                    dsm.transpose(),
                    qh.subrows(r0, rows),
                    1.0f32,
                    Par::Seq,
                );
            }
            dqs.push(dq);
        }
        (dqs, dk, dv)
    });
    debug_assert_eq!((dq.len(), dk.len(), dv.len()), (q.len(), k.len(), v.len()));
    for (task, (dqs, dkh, dvh)) in per_kv.into_iter().enumerate() {
        let (b, kvh) = (task / d.kv_heads, task % d.kv_heads);
        let koff = head_off(&d, b, kvh, kw);
        for i in 0..t {
            dk[koff + i * kw..][..hd].copy_from_slice(&dkh[i * hd..(i + 1) * hd]);
            dv[koff + i * kw..][..hd].copy_from_slice(&dvh[i * hd..(i + 1) * hd]);
        }
        for (g, dqh) in dqs.iter().enumerate() {
            let qoff = head_off(&d, b, kvh * group + g, qw);
            for i in 0..t {
                dq[qoff + i * qw..][..hd].copy_from_slice(&dqh[i * hd..(i + 1) * hd]);
            }
        }
    }
}
