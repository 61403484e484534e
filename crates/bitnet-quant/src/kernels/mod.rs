//! Ternary x int8 kernels: `y = W x` with `W` in {-1, 0, 1} (the runtime
//! layout of [`crate::formats::runtime`]) and `x` per-token int8 codes.
//!
//! Layers, as in memchr: [`reference`] is the obviously-correct scalar loop;
//! [`portable`] is plain Rust that compilers vectorize on any target; the
//! `x86_64` module has AVX2, AVX-512 VNNI and AMX-INT8 versions behind
//! checked constructors. The best backend is detected once per process
//! (with AMX's OS permission, the only statics in the crate) and can be
//! forced with [`TernaryKernel::new`].
//!
//! Every backend returns the exact integer dot products `Σ t·x` as i32, so
//! all of them must agree bit for bit; scales are applied by the caller
//! ([`crate::bitlinear`]). Weights are stored as `u = t + 1` and each kernel
//! computes `Σ u·x - Σ x`; accumulators stay exact for rows up to
//! [`crate::formats::runtime::MAX_COLS`] weights.
//!
//! Work is split over output rows; parallelism is explicit (a
//! [`Parallelism`] argument), never a global pool.

pub mod portable;
pub mod reference;
pub mod selftest;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

use crate::error::{Error, Result};
use crate::formats::runtime::PackedTernary;
use crate::quantize::int8::QuantizedActivations;
use bitnet_core::Parallelism;
use rayon::prelude::*;
use std::fmt;
use std::sync::OnceLock;

/// An implementation of the ternary kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Scalar loop over decoded codes: the reference every other path must equal.
    Reference,
    /// Portable Rust, vectorized by the compiler, for every target.
    Portable,
    /// x86-64 AVX2 (`vpmaddubsw`).
    Avx2,
    /// x86-64 AVX-512 with VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// x86-64 AMX-INT8 tiles (`tdpbusd`) for [`AMX_MIN_TOKENS`] tokens or
    /// more; fewer run the AVX-512 VNNI kernels.
    Amx,
}

impl Backend {
    /// Every backend, slowest first.
    pub const ALL: [Backend; 5] = [
        Backend::Reference,
        Backend::Portable,
        Backend::Avx2,
        Backend::Avx512Vnni,
        Backend::Amx,
    ];

    /// Whether this CPU can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Reference | Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Amx => {
                static AMX: OnceLock<bool> = OnceLock::new();
                Backend::Avx512Vnni.is_available() && *AMX.get_or_init(x86_64::amx::available)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 | Backend::Avx512Vnni | Backend::Amx => false,
        }
    }

    /// The backends this CPU can run.
    pub fn available() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_available())
            .collect()
    }

    /// The fastest available backend, detected on first call and cached.
    pub fn detect() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Backend::ALL
                .into_iter()
                .rev()
                .find(|b| b.is_available())
                .unwrap_or(Backend::Portable)
        })
    }

    /// A short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Portable => "portable",
            Backend::Avx2 => "avx2",
            Backend::Avx512Vnni => "avx512-vnni",
            Backend::Amx => "amx-int8",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The inputs one backend call works on: a run of whole rows.
pub(crate) struct RowsTask<'a> {
    /// Packed bytes of the rows, `rows * blocks * 64`.
    pub w: &'a [u8],
    /// Blocks of 256 weights per row.
    pub blocks: usize,
    /// Padded activation codes, `tokens * blocks * 256`.
    pub x: &'a [i8],
    /// Sum of each token's codes.
    pub sums: &'a [i32],
    /// 64-column fields of the last block that hold columns (1 to 4): a
    /// kernel may skip the rest, whose weights and activations are padding
    /// (a 384-column row is one and a half blocks, not two).
    pub tail_fields: usize,
}

impl RowsTask<'_> {
    pub(crate) fn rows(&self) -> usize {
        self.w.len() / (self.blocks * 64).max(1)
    }
    pub(crate) fn tokens(&self) -> usize {
        self.sums.len()
    }
    pub(crate) fn stride(&self) -> usize {
        self.blocks * 256
    }
}

/// Ternary x int8 matrix products on one chosen backend.
///
/// ```
/// use bitnet_quant::formats::runtime::PackedTernary;
/// use bitnet_quant::kernels::TernaryKernel;
/// use bitnet_quant::quantize::int8::QuantizedActivations;
/// use bitnet_core::Parallelism;
///
/// let w = PackedTernary::from_codes(&[1, -1, 0, 1, 1, 1], 2, 3).unwrap();
/// let x = QuantizedActivations::from_codes(&[10, 20, 30], &[1.0], 1, 3).unwrap();
/// let mut y = [0i32; 2];
/// TernaryKernel::detect().gemv(&w, &x, 0, &mut y, Parallelism::Sequential).unwrap();
/// assert_eq!(y, [10 - 20, 10 + 20 + 30]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TernaryKernel {
    backend: Backend,
}

impl TernaryKernel {
    /// The kernels of `backend`, or `None` when this CPU cannot run it.
    pub fn new(backend: Backend) -> Option<Self> {
        backend.is_available().then_some(TernaryKernel { backend })
    }

    /// The fastest kernels for this CPU.
    pub fn detect() -> Self {
        TernaryKernel {
            backend: Backend::detect(),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// One token (decode): `out[r] = Σ_c W[r, c] · x[token, c]`.
    pub fn gemv(
        &self,
        w: &PackedTernary,
        x: &QuantizedActivations,
        token: usize,
        out: &mut [i32],
        par: Parallelism<'_>,
    ) -> Result<()> {
        check_shapes(w, x, out.len(), 1)?;
        if token >= x.tokens() {
            return Err(Error::ShapeMismatch {
                op: "ternary gemv",
                detail: format!("token {token} of {}", x.tokens()),
            });
        }
        let x_codes = x.padded_codes(token);
        let sums = &x.sums()[token..token + 1];
        self.run(w, x_codes, sums, out, par);
        Ok(())
    }

    /// Many tokens (prefill): `out[r * tokens + t] = Σ_c W[r, c] · x[t, c]`,
    /// i.e. `out` is `[rows, tokens]` row-major. Each weight block is
    /// unpacked once and used for every token.
    pub fn gemm(
        &self,
        w: &PackedTernary,
        x: &QuantizedActivations,
        out: &mut [i32],
        par: Parallelism<'_>,
    ) -> Result<()> {
        check_shapes(w, x, out.len(), x.tokens())?;
        self.run(w, x.all_padded_codes(), x.sums(), out, par);
        Ok(())
    }

    fn run(
        &self,
        w: &PackedTernary,
        x: &[i8],
        sums: &[i32],
        out: &mut [i32],
        par: Parallelism<'_>,
    ) {
        let (row_bytes, tokens, blocks) = (w.row_bytes(), sums.len(), w.blocks_per_row());
        if blocks == 0 {
            // No columns: every dot product is empty.
            out.fill(0);
            return;
        }
        if tokens == 0 || w.rows() == 0 {
            return;
        }
        // AMX reads the activations as tiles: packed once for all tasks.
        // Below `AMX_MIN_TOKENS` the VNNI kernel is faster (the tiles would
        // be mostly padding, and unpacking the weights to bytes dominates).
        #[cfg(target_arch = "x86_64")]
        let packed = (self.backend == Backend::Amx && tokens >= AMX_MIN_TOKENS).then(|| {
            let stride = blocks * 256;
            let mut p = vec![0u8; x86_64::amx::packed_len(stride, tokens)];
            // One task per group of 16 tokens.
            let group = x86_64::amx::packed_len(stride, 1);
            let pack = |g: usize, dst: &mut [u8]| {
                let t0 = g * 16;
                let n = (tokens - t0).min(16);
                x86_64::amx::pack_activations(&x[t0 * stride..], stride, n, dst);
            };
            match par {
                Parallelism::Pool(pool) if tokens > 16 => pool.install(|| {
                    p.par_chunks_mut(group)
                        .enumerate()
                        .for_each(|(g, dst)| pack(g, dst))
                }),
                _ => p
                    .chunks_mut(group)
                    .enumerate()
                    .for_each(|(g, dst)| pack(g, dst)),
            }
            p
        });
        #[cfg(not(target_arch = "x86_64"))]
        let packed: Option<Vec<u8>> = None;
        let task = |first_row: usize, out: &mut [i32]| {
            let rows = out.len() / tokens;
            let t = RowsTask {
                w: &w.as_bytes()[first_row * row_bytes..(first_row + rows) * row_bytes],
                blocks,
                x,
                sums,
                tail_fields: (w.cols() - (blocks - 1) * 256).div_ceil(64),
            };
            self.run_rows(&t, packed.as_deref(), out);
        };
        match par {
            Parallelism::Sequential => task(0, out),
            Parallelism::Pool(pool) => {
                let chunk = rows_per_task(w.rows(), pool.current_num_threads());
                pool.install(|| {
                    out.par_chunks_mut(chunk * tokens)
                        .enumerate()
                        .for_each(|(i, o)| task(i * chunk, o));
                });
            }
        }
    }

    /// `packed`: the activations in AMX tiles, for [`Backend::Amx`] with
    /// several tokens.
    fn run_rows(&self, t: &RowsTask<'_>, packed: Option<&[u8]>, out: &mut [i32]) {
        match self.backend {
            Backend::Reference => reference::rows(t, out),
            Backend::Portable => portable::rows(t, out),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                // SAFETY: `TernaryKernel::new` only builds this backend when
                // the CPU has AVX2; `RowsTask` lengths were checked by `check_shapes`.
                unsafe { x86_64::avx2::rows(t, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Vnni => {
                // SAFETY: as above, for AVX-512F/BW/VNNI.
                unsafe { x86_64::avx512::rows(t, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Amx => match packed {
                // SAFETY: this backend exists only where `amx::available`
                // (and AVX-512 VNNI) holds; `packed` is the packing of
                // `t.x` made by `run`.
                Some(p) => unsafe { x86_64::amx::gemm(t, p, out) },
                // SAFETY: as for `Avx512Vnni`.
                None => unsafe { x86_64::avx512::rows(t, out) },
            },
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 | Backend::Avx512Vnni | Backend::Amx => portable::rows(t, out),
        }
    }
}

/// Fewest tokens for which [`Backend::Amx`] uses its tiles: measured on
/// a 6912 x 2560 matrix, one thread (`cargo bench -p bitnet-quant --bench
/// kernels -- gemm_batch`), AMX ran at 0.3x VNNI at 2 tokens, 0.6x at 16,
/// 1.06x at 32 and 1.9x at 128.
pub const AMX_MIN_TOKENS: usize = 32;

/// Rows per parallel task: several tasks per thread for balance, a multiple
/// of 4 for the register tiles, large enough to amortize scheduling.
fn rows_per_task(rows: usize, threads: usize) -> usize {
    let per = rows.div_ceil(threads.max(1) * 4);
    per.div_ceil(16).max(1) * 16
}

fn check_shapes(
    w: &PackedTernary,
    x: &QuantizedActivations,
    out_len: usize,
    tokens: usize,
) -> Result<()> {
    if x.cols() != w.cols() {
        return Err(Error::ShapeMismatch {
            op: "ternary matmul",
            detail: format!(
                "weights are [{}, {}] but activations have {} columns",
                w.rows(),
                w.cols(),
                x.cols()
            ),
        });
    }
    if out_len != w.rows() * tokens {
        return Err(Error::ShapeMismatch {
            op: "ternary matmul",
            detail: format!(
                "output holds {out_len} values, need {} rows x {tokens} tokens",
                w.rows()
            ),
        });
    }
    debug_assert_eq!(x.stride(), w.blocks_per_row() * 256);
    Ok(())
}

#[cfg(test)]
mod tests;
