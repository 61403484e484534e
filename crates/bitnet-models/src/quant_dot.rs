//! Integer dot products of ggml-quantized rows (Q8_0, Q4_K, Q6_K, and
//! TQ1_0/TQ2_0 with a scale per block) with
//! activations quantized to int8 blocks — how llama.cpp runs a matmul
//! whose weights are in one of these types, and how it runs the output
//! layer of a model whose `output`/`token_embd` is Q6_K.
//!
//! The activation vector is quantized once per call into the weight type's
//! `vec_dot_type` ([`BlockQ8Activations`]): Q8_K (256 int8 codes, an f32
//! step and the sums of each 16 codes) for the k-quants, Q8_0 (32 int8 codes
//! and an f16 step) for Q8_0, following ggml's `quantize_row_q8_K_ref` and
//! `quantize_row_q8_0_ref`. Each weight row is then dotted block by block in
//! integers, with one float multiply-add per block:
//!
//! ```text
//! Q6_K: isum = Σ_j sc[j] · Σ_{i∈j} q_i·y_i − 32 · Σ_j sc[j] · bsum[j]   (16 sub-blocks of 16)
//!       sum += (d_w · d_y) · isum
//! Q4_K: isc = Σ_j sc[j] · Σ_{i∈j} q_i·y_i,  imin = Σ_j m[j] · (bsum[2j] + bsum[2j+1])
//!       sum += (d_w · d_y) · isc;  sum −= (dmin_w · d_y) · imin        (8 sub-blocks of 32)
//! Q8_0: isum = Σ q_i·y_i;  sum += (d_w · d_y) · isum                    (blocks of 32)
//! TQ:   isum = Σ t_i·y_i (t in -1..1);  sum += (d_w · d_y) · isum       (blocks of 256)
//! ```
//!
//! The integer part is exact in every version (no partial sum can
//! overflow: the largest, Q6_K's, is below 2^28), and the float part runs
//! in the same order, so the AVX2 and AVX-512 versions return the scalar
//! reference's result bit for bit (tested). It is also ggml's arithmetic
//! up to the order of the float additions, which is why a model with a
//! K-quant output layer now gives llama.cpp's logits to float rounding.
//!
//! Against dequantizing each block to f32 and dotting in f32, this reads the
//! same bytes but does a quarter of the arithmetic, in 8-bit lanes.

use crate::gguf::GgmlType;
use crate::gguf::dequant::{BlockQ4K, QK_K, QK8_0};
use bitnet_quant::formats::{TernaryBlock, tq1_0::BlockTq1_0, tq2_0::BlockTq2_0};
use half::f16;

/// The instruction set a [`BlockQ8Activations`] is dotted with, chosen
/// once when the activations are quantized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Backend {
    /// Plain Rust: the reference.
    #[default]
    Scalar,
    /// AVX2 (`vpmaddubsw` + `vpmaddwd` on 32 bytes).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 BW (the same on 64 bytes).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Backend {
    /// The best version this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // F16C converts the blocks' f16 scales in line.
            if std::arch::is_x86_feature_detected!("f16c") {
                if std::arch::is_x86_feature_detected!("avx512bw") {
                    return Backend::Avx512;
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    return Backend::Avx2;
                }
            }
        }
        Backend::Scalar
    }
}

/// Rows of activations quantized for one weight type's integer dot (see
/// the module doc). Reused across calls: [`Self::quantize`] resizes.
#[derive(Clone, Debug, Default)]
pub struct BlockQ8Activations {
    ty: Option<GgmlType>,
    rows: usize,
    cols: usize,
    /// One step per block (Q8_K: f32; Q8_0: an f16 value held as f32).
    d: Vec<f32>,
    qs: Vec<i8>,
    /// Q8_K only: the sum of each 16 codes.
    bsums: Vec<i16>,
    backend: Backend,
}

impl BlockQ8Activations {
    /// Empty; fill with [`crate::float_matrix::FloatMatrix::quantize_activations`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of activation rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The weight type these activations were quantized for, if any.
    pub(crate) fn weight_type(&self) -> Option<GgmlType> {
        self.ty
    }

    /// Elements per row.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Quantizes `xs` (`rows` rows of `cols`) for weights of type `ty`
    /// (Q8_0, Q4_K or Q6_K; `cols` a whole number of its blocks, as a
    /// validated matrix guarantees). Returns false for other types.
    pub(crate) fn quantize(
        &mut self,
        ty: GgmlType,
        xs: &[f32],
        cols: usize,
        backend: Backend,
    ) -> bool {
        let block = match ty {
            GgmlType::Q8_0 => QK8_0,
            GgmlType::Q4_K | GgmlType::Q6_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => QK_K,
            _ => return false,
        };
        if cols == 0 || !cols.is_multiple_of(block) || !xs.len().is_multiple_of(cols) {
            return false;
        }
        self.ty = Some(ty);
        self.cols = cols;
        self.rows = xs.len() / cols;
        self.backend = backend;
        self.qs.resize(xs.len(), 0);
        self.d.resize(xs.len() / block, 0.0);
        if block == QK_K {
            self.bsums.resize(xs.len() / 16, 0);
            for ((x, q), (d, bs)) in xs
                .chunks_exact(QK_K)
                .zip(self.qs.chunks_exact_mut(QK_K))
                .zip(
                    self.d
                        .iter_mut()
                        .zip(self.bsums.chunks_exact_mut(QK_K / 16)),
                )
            {
                *d = quantize_q8k(x, q, bs);
            }
        } else {
            self.bsums.clear();
            for ((x, q), d) in xs
                .chunks_exact(QK8_0)
                .zip(self.qs.chunks_exact_mut(QK8_0))
                .zip(self.d.iter_mut())
            {
                *d = quantize_q8_0(x, q);
            }
        }
        true
    }

    /// Row `t`'s codes, steps and (Q8_K) code sums.
    fn row(&self, t: usize) -> ActRow<'_> {
        let block = if self.bsums.is_empty() { QK8_0 } else { QK_K };
        let per_row = self.cols / block;
        ActRow {
            qs: &self.qs[t * self.cols..(t + 1) * self.cols],
            d: &self.d[t * per_row..(t + 1) * per_row],
            bsums: if self.bsums.is_empty() {
                &[]
            } else {
                &self.bsums[t * self.cols / 16..(t + 1) * self.cols / 16]
            },
        }
    }

    /// `row · activation_t` into `out[t]` for every held row `t` (`out`
    /// `rows` long); `row` holds `cols` weights of the type quantized for.
    pub(crate) fn dot_row(&self, row: &[u8], out: &mut [f32]) {
        let Some(ty) = self.ty else {
            out.fill(f32::NAN);
            return;
        };
        for (t, o) in out.iter_mut().enumerate() {
            *o = dot(self.backend, ty, row, self.row(t));
        }
    }

    /// `row_i · activation_0` into `out[i]` for consecutive weight rows
    /// (`rows` holds `out.len()` rows of `cols` weights of the type
    /// quantized for) against the one activation row held: a decode
    /// step's output layer. Each `out[i]` equals what [`Self::dot_row`]
    /// gives for that row, bit for bit; the Q6_K versions (AVX2, AVX-512)
    /// reduce four blocks' integer lanes together across row boundaries
    /// (a 768-wide row has only three blocks), and the run of rows is
    /// dispatched once, not per row.
    ///
    /// # Panics
    /// If more or less than one activation row is held, or `rows` is not
    /// `out.len()` rows of `cols` weights.
    pub(crate) fn dot_rows_one(&self, rows: &[u8], out: &mut [f32]) {
        assert_eq!(self.rows, 1, "dot_rows_one needs one activation row");
        let Some(ty) = self.ty else {
            out.fill(f32::NAN);
            return;
        };
        let a = self.row(0);
        let row_bytes = crate::gguf::dequant::row_bytes(ty, self.cols)
            .expect("activations are only quantized for whole blocks of a supported type");
        assert_eq!(
            rows.len(),
            row_bytes * out.len(),
            "whole rows of {} columns",
            self.cols
        );
        if out.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if ty == GgmlType::Q6_K {
            match self.backend {
                // SAFETY: `Backend::detect` chose this version because the CPU has AVX2 and F16C.
                Backend::Avx2 => return unsafe { x86::q6k_rows_avx2(rows, a, out) },
                // SAFETY: as above, for AVX-512 BW and F16C.
                Backend::Avx512 => return unsafe { x86::q6k_rows_avx512(rows, a, out) },
                Backend::Scalar => {}
            }
        }
        if row_bytes == 0 {
            out.fill(0.0);
            return;
        }
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
            *o = dot(self.backend, ty, row, a);
        }
    }
}

/// One quantized activation row.
#[derive(Clone, Copy)]
struct ActRow<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    bsums: &'a [i16],
}

/// ggml's `quantize_row_q8_K_ref` for one block: step `max / -127` where
/// `max` is the element of largest magnitude, codes rounded half to even
/// and clamped to 127, then the sums of each 16 codes. Returns the step.
fn quantize_q8k(x: &[f32], qs: &mut [i8], bsums: &mut [i16]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        qs.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, q) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| i16::from(v)).sum();
    }
    1.0 / iscale
}

/// ggml's `quantize_row_q8_0_ref` for one block: step `amax / 127` stored
/// as f16, codes `round(x / step)` (half away from zero). Returns the step
/// as stored (f16 widened).
fn quantize_q8_0(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    f16::from_f32(d).to_f32()
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q6_K code `e` (0..256) of a block, 0..64 (the stored value is code − 32).
fn q6k_code(b: &[u8], e: usize) -> i32 {
    let (h, r) = (e / 128, e % 128);
    let (quad, l) = (r / 32, r % 32);
    let ql = b[64 * h + l + if quad % 2 == 1 { 32 } else { 0 }];
    let low = if quad < 2 { ql & 0xF } else { ql >> 4 };
    let high = (b[128 + 32 * h + l] >> (2 * quad)) & 3;
    i32::from(low | (high << 4))
}

/// The reference: every product in plain integers, one block at a time.
fn dot_scalar(ty: GgmlType, row: &[u8], a: ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    match ty {
        GgmlType::Q6_K => {
            for ((b, y), &dy) in row.chunks_exact(210).zip(a.qs.chunks_exact(QK_K)).zip(a.d) {
                let mut isum = 0i32;
                for (e, &ye) in y.iter().enumerate() {
                    let sc = i32::from(b[192 + e / 16] as i8);
                    isum += sc * (q6k_code(b, e) - 32) * i32::from(ye);
                }
                sum += (f16_at(b, 208) * dy) * isum as f32;
            }
        }
        GgmlType::Q4_K => {
            for (((b, y), &dy), bs) in row
                .chunks_exact(144)
                .zip(a.qs.chunks_exact(QK_K))
                .zip(a.d)
                .zip(a.bsums.chunks_exact(QK_K / 16))
            {
                let blk = q4k_scales(b);
                let (mut isc, mut imin) = (0i32, 0i32);
                for j in 0..8 {
                    let (sc, m) = blk.scale_min(j);
                    let qs = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
                    let mut s = 0i32;
                    for (l, &q) in qs.iter().enumerate() {
                        let q = if j % 2 == 0 { q & 0xF } else { q >> 4 };
                        s += i32::from(q) * i32::from(y[32 * j + l]);
                    }
                    isc += i32::from(sc) * s;
                    imin += i32::from(m) * (i32::from(bs[2 * j]) + i32::from(bs[2 * j + 1]));
                }
                sum += (f16_at(b, 0) * dy) * isc as f32;
                sum -= (f16_at(b, 2) * dy) * imin as f32;
            }
        }
        GgmlType::Q8_0 => {
            for ((b, y), &dy) in row.chunks_exact(34).zip(a.qs.chunks_exact(QK8_0)).zip(a.d) {
                let isum: i32 = b[2..]
                    .iter()
                    .zip(y)
                    .map(|(&w, &v)| i32::from(w as i8) * i32::from(v))
                    .sum();
                sum += (f16_at(b, 0) * dy) * isum as f32;
            }
        }
        _ => return f32::NAN,
    }
    sum
}

/// A Q4_K block's scales and mins, unpacked by [`BlockQ4K::scale_min`].
fn q4k_scales(b: &[u8]) -> BlockQ4K {
    let mut scales = [0u8; 12];
    scales.copy_from_slice(&b[4..16]);
    BlockQ4K {
        d: [b[0], b[1]],
        dmin: [b[2], b[3]],
        scales,
        qs: [0; QK_K / 2],
    }
}

/// The eight (scale, min) pairs of a Q4_K block as i16.
#[inline(always)]
fn q4k_scale_mins(b: &[u8]) -> ([i16; 8], [i16; 8]) {
    let blk = q4k_scales(b);
    let (mut sc, mut m) = ([0i16; 8], [0i16; 8]);
    for j in 0..8 {
        let (s, mm) = blk.scale_min(j);
        sc[j] = i16::from(s);
        m[j] = i16::from(mm);
    }
    (sc, m)
}

/// TQ1_0/TQ2_0 rows whose blocks carry their own scales (ggml's
/// `vec_dot_tq*_q8_K`): `isum = Σ code_i · y_i` per block of 256, then
/// `sum += (d_w · d_y) · isum`. One portable version: the codes are unpacked
/// per block and the integer loop vectorizes as it is. NaN for a block with
/// an invalid code (loading checks every block first).
fn dot_ternary<B: TernaryBlock>(row: &[u8], a: ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for ((b, y), &dy) in row
        .chunks_exact(B::BYTES)
        .zip(a.qs.chunks_exact(QK_K))
        .zip(a.d)
    {
        let Ok(block) = B::read(b, 0) else {
            return f32::NAN;
        };
        let isum: i32 = block
            .codes()
            .iter()
            .zip(y)
            .map(|(&c, &v)| i32::from(c) * i32::from(v))
            .sum();
        sum += (block.scale().to_f32() * dy) * isum as f32;
    }
    sum
}

fn dot(backend: Backend, ty: GgmlType, row: &[u8], a: ActRow<'_>) -> f32 {
    match ty {
        GgmlType::TQ1_0 => return dot_ternary::<BlockTq1_0>(row, a),
        GgmlType::TQ2_0 => return dot_ternary::<BlockTq2_0>(row, a),
        _ => {}
    }
    match backend {
        Backend::Scalar => dot_scalar(ty, row, a),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Backend::detect` chose this version because the CPU has AVX2 and F16C.
        Backend::Avx2 => unsafe { x86::dot_avx2(ty, row, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Backend::detect` chose this version because the CPU has AVX-512 BW and F16C.
        Backend::Avx512 => unsafe { x86::dot_avx512(ty, row, a) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActRow, QK_K, QK8_0, q4k_scale_mins};
    use crate::gguf::GgmlType;
    use std::arch::x86_64::*;

    /// The little-endian f16 at `b[at..at + 2]` as f32, by F16C's
    /// `vcvtph2ps` (exact, as `half`'s conversion): `half` checks for F16C
    /// at run time and calls out for each value, which made every block of
    /// these loops call a function and spill the vector registers around it.
    #[inline]
    #[target_feature(enable = "f16c")]
    fn f16c_at(b: &[u8], at: usize) -> f32 {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn hsum256(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// The lane sums of four vectors at once: `[hsum256(v[0]), ..]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum256x4(v: [__m256i; 4]) -> [i32; 4] {
        let pairs = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        // Lane j of each half now holds half of vector j's sum.
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(pairs),
            _mm256_extracti128_si256(pairs, 1),
        );
        let mut out = [0i32; 4];
        // SAFETY: `out` holds four i32, an unaligned 16-byte store.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), s) };
        out
    }

    /// How far ahead of the block in hand the Q6_K dot prefetches (the
    /// output layer is streamed from memory once per token): with it and
    /// the shuffled scales, 2B-4T decode with a Q6_K output ran 5-10%
    /// faster at one thread on an AMD EPYC, Zen 3 (`bitnet bench -p 0 -n 64
    /// -t 1,2`, alternating with the binary without them). The AVX-512
    /// version prefetches the same distance, not measured on a CPU with
    /// AVX-512 yet.
    const Q6K_PREFETCH_BYTES: usize = 2048;

    /// Byte-shuffle controls for [`dot_avx2`]'s Q6_K scales: for pair `k`,
    /// the i16 at index `2k` of a lane's eight repeated over the low lane
    /// and the one at `2k + 1` over the high lane.
    #[allow(clippy::cast_possible_truncation)]
    const Q6K_PICK: [__m256i; 4] = {
        let mut pick = [[0u8; 32]; 4];
        let mut k = 0;
        while k < 4 {
            let mut i = 0;
            while i < 16 {
                let byte = (i % 2) as u8;
                pick[k][i] = (4 * k) as u8 + byte;
                pick[k][16 + i] = (4 * k + 2) as u8 + byte;
                i += 1;
            }
            k += 1;
        }
        // SAFETY: [u8; 32] and __m256i have the same size, any bits valid.
        unsafe { std::mem::transmute::<[[u8; 32]; 4], [__m256i; 4]>(pick) }
    };

    /// Prefetches the four cache lines [`Q6K_PREFETCH_BYTES`] past the
    /// block at `b` (the output layer streams once per token). Prefetches
    /// never fault, so past the row's end (into the next row) needs no check.
    #[inline]
    #[target_feature(enable = "sse")]
    fn prefetch_ahead(b: &[u8]) {
        for line in 0..4 {
            let at = b.as_ptr().wrapping_add(Q6K_PREFETCH_BYTES + 64 * line);
            _mm_prefetch::<_MM_HINT_T0>(at.cast());
        }
    }

    /// Q6_K's code offset as lanes to subtract: `32 · Σ sc[j] · bsum[j]`
    /// over the block's 16 scales `sc16` (as i16) and code sums `bs`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6k_offset(sc16: __m256i, bs: &[i16]) -> __m256i {
        assert_eq!(bs.len(), QK_K / 16);
        // SAFETY: `bs` holds 16 i16, one 32-byte load.
        let bs16 = unsafe { _mm256_loadu_si256(bs.as_ptr().cast()) };
        _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs16), 5)
    }

    /// One Q6_K block's integer dot as eight i32 lanes (their sum is
    /// `isum` of the module doc): `b` the block's 210 bytes, `y` the 256
    /// activation codes, `bs` their 16 sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6k_block_avx2(b: &[u8], y: &[i8], bs: &[i16]) -> __m256i {
        assert!(b.len() == 210 && y.len() == QK_K && bs.len() == QK_K / 16);
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        prefetch_ahead(b);
        // SAFETY: every load reads 16..32 bytes inside `b`, `y` or `bs`,
        // whose lengths are asserted above.
        unsafe {
            let sc8 = _mm_loadu_si128(b.as_ptr().add(192).cast());
            // The 16 scales as i16, widened once; each half of the block
            // reads 8 of them, copied to both lanes so that one byte
            // shuffle per pair picks them.
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let halves = [
                _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                _mm256_permute2x128_si256::<0x11>(sc16, sc16),
            ];
            let mut acc = _mm256_setzero_si256();
            for (h, &half_scales) in halves.iter().enumerate() {
                let ql0 = _mm256_loadu_si256(b.as_ptr().add(64 * h).cast());
                let ql1 = _mm256_loadu_si256(b.as_ptr().add(64 * h + 32).cast());
                let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h).cast());
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                    ),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let yk = _mm256_loadu_si256(y.as_ptr().add(128 * h + 32 * k).cast());
                    let p = _mm256_maddubs_epi16(qk, yk);
                    // sc[8h + 2k] in the low eight lanes, sc[8h + 2k + 1]
                    // in the high eight: one byte shuffle of the half's scales.
                    let scales = _mm256_shuffle_epi8(half_scales, Q6K_PICK[k]);
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scales));
                }
            }
            _mm256_sub_epi32(acc, q6k_offset(sc16, bs))
        }
    }

    /// One Q6_K block's integer dot as eight i32 lanes, compiled for one
    /// instruction set.
    trait Q6kLanes {
        /// # Safety
        /// The CPU has the implementation's features; `b` is one block
        /// (210 bytes), `y` its 256 codes and `bs` their 16 sums.
        unsafe fn lanes(b: &[u8], y: &[i8], bs: &[i16]) -> __m256i;
    }

    struct Avx2Lanes;
    impl Q6kLanes for Avx2Lanes {
        #[inline(always)]
        unsafe fn lanes(b: &[u8], y: &[i8], bs: &[i16]) -> __m256i {
            // SAFETY: the caller guarantees AVX2 and F16C.
            unsafe { q6k_block_avx2(b, y, bs) }
        }
    }

    struct Avx512Lanes;
    impl Q6kLanes for Avx512Lanes {
        #[inline(always)]
        unsafe fn lanes(b: &[u8], y: &[i8], bs: &[i16]) -> __m256i {
            // SAFETY: the caller guarantees AVX-512 BW and F16C.
            unsafe { q6k_block_avx512(b, y, bs) }
        }
    }

    /// Q6_K rows (consecutive, `out.len()` of them in `rows`) against one
    /// activation row into `out`. Up to four blocks' lanes wait and are
    /// reduced together (one `vphaddd` tree, not four horizontal sums in a
    /// row), across row boundaries; their scaled sums are then added to
    /// their rows in block order, so each row's sum takes the same values
    /// as one row at a time.
    ///
    /// # Safety
    /// The CPU has AVX2, F16C and `L`'s features; inlined into a function
    /// compiled for them.
    #[inline(always)]
    unsafe fn q6k_rows<L: Q6kLanes>(rows: &[u8], a: ActRow<'_>, out: &mut [f32]) {
        let row_bytes = a.qs.len() / QK_K * 210;
        assert_eq!(rows.len(), row_bytes * out.len());
        out.fill(0.0);
        if row_bytes == 0 {
            return;
        }
        // SAFETY (intrinsics): AVX2, guaranteed by the caller.
        let mut pending = [unsafe { _mm256_setzero_si256() }; 4];
        let mut scales = [0.0f32; 4];
        let mut owner = [0usize; 4];
        let mut waiting = 0;
        for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
            for (((b, y), &dy), bs) in row
                .chunks_exact(210)
                .zip(a.qs.chunks_exact(QK_K))
                .zip(a.d)
                .zip(a.bsums.chunks_exact(QK_K / 16))
            {
                // SAFETY: one whole block and its codes; features as above.
                pending[waiting] = unsafe { L::lanes(b, y, bs) };
                // SAFETY: F16C, guaranteed by the caller.
                scales[waiting] = unsafe { f16c_at(b, 208) } * dy;
                owner[waiting] = r;
                waiting += 1;
                if waiting == 4 {
                    // SAFETY: AVX2, as above.
                    let sums = unsafe { hsum256x4(pending) };
                    for ((&scale, isum), &r) in scales.iter().zip(sums).zip(&owner) {
                        out[r] += scale * isum as f32;
                    }
                    waiting = 0;
                }
            }
        }
        for ((&scale, &lanes), &r) in scales.iter().zip(&pending).zip(&owner).take(waiting) {
            // SAFETY: AVX2, as above.
            out[r] += scale * unsafe { hsum256(lanes) } as f32;
        }
    }

    /// [`q6k_rows`] on AVX2.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn q6k_rows_avx2(rows: &[u8], a: ActRow<'_>, out: &mut [f32]) {
        // SAFETY: compiled for AVX2 and F16C, which the caller's CPU has.
        unsafe { q6k_rows::<Avx2Lanes>(rows, a, out) }
    }

    /// [`q6k_rows`] on AVX-512 BW (64-byte halves of each block).
    #[target_feature(enable = "avx512f,avx512bw,f16c")]
    pub(super) fn q6k_rows_avx512(rows: &[u8], a: ActRow<'_>, out: &mut [f32]) {
        // SAFETY: compiled for AVX-512 BW (which implies AVX2) and F16C, present.
        unsafe { q6k_rows::<Avx512Lanes>(rows, a, out) }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn dot_avx2(ty: GgmlType, row: &[u8], a: ActRow<'_>) -> f32 {
        let mut sum = 0.0f32;
        // SAFETY (every block): loads read 16..32 bytes inside `b`, `y`,
        // `bs`, whose lengths the `chunks_exact` calls fix.
        unsafe {
            match ty {
                GgmlType::Q6_K => {
                    let mut one = [0.0f32];
                    q6k_rows_avx2(row, a, &mut one);
                    return one[0];
                }
                GgmlType::Q4_K => {
                    let m4 = _mm256_set1_epi8(0x0F);
                    for (((b, y), &dy), bs) in row
                        .chunks_exact(144)
                        .zip(a.qs.chunks_exact(QK_K))
                        .zip(a.d)
                        .zip(a.bsums.chunks_exact(QK_K / 16))
                    {
                        let (sc, m) = q4k_scale_mins(b);
                        let mut acc = _mm256_setzero_si256();
                        for g in 0..4 {
                            let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * g).cast());
                            let lo = _mm256_and_si256(q, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                            let ylo = _mm256_loadu_si256(y.as_ptr().add(64 * g).cast());
                            let yhi = _mm256_loadu_si256(y.as_ptr().add(64 * g + 32).cast());
                            let plo = _mm256_madd_epi16(
                                _mm256_maddubs_epi16(lo, ylo),
                                _mm256_set1_epi16(sc[2 * g]),
                            );
                            let phi = _mm256_madd_epi16(
                                _mm256_maddubs_epi16(hi, yhi),
                                _mm256_set1_epi16(sc[2 * g + 1]),
                            );
                            acc = _mm256_add_epi32(acc, _mm256_add_epi32(plo, phi));
                        }
                        let isc = hsum256(acc);
                        let mut imin = 0i32;
                        for j in 0..8 {
                            imin +=
                                i32::from(m[j]) * (i32::from(bs[2 * j]) + i32::from(bs[2 * j + 1]));
                        }
                        sum += (f16c_at(b, 0) * dy) * isc as f32;
                        sum -= (f16c_at(b, 2) * dy) * imin as f32;
                    }
                }
                GgmlType::Q8_0 => {
                    let ones = _mm256_set1_epi16(1);
                    for ((b, y), &dy) in row.chunks_exact(34).zip(a.qs.chunks_exact(QK8_0)).zip(a.d)
                    {
                        let w = _mm256_loadu_si256(b.as_ptr().add(2).cast());
                        let v = _mm256_loadu_si256(y.as_ptr().cast());
                        // |w| · sign(v, w): maddubs needs an unsigned left side.
                        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(v, w));
                        let isum = hsum256(_mm256_madd_epi16(p, ones));
                        sum += (f16c_at(b, 0) * dy) * isum as f32;
                    }
                }
                _ => return f32::NAN,
            }
        }
        sum
    }

    /// 32 bytes from `lo` then 32 from `hi`.
    ///
    /// # Safety
    /// Both pointers must be valid for 32-byte reads.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load2x256(lo: *const u8, hi: *const u8) -> __m512i {
        // SAFETY: the caller guarantees both reads are in bounds.
        unsafe {
            _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(lo.cast())),
                _mm256_loadu_si256(hi.cast()),
                1,
            )
        }
    }

    /// For [`q6k_block_avx512`]: lane `p` of 64-code chunk `c` takes the
    /// block's scale `4c + p / 8`.
    #[allow(clippy::cast_possible_truncation)]
    const Q6K_SCALE_IDX512: [__m512i; 4] = {
        let mut idx = [[0i16; 32]; 4];
        let mut c = 0;
        while c < 4 {
            let mut p = 0;
            while p < 32 {
                idx[c][p] = (4 * c + p / 8) as i16;
                p += 1;
            }
            c += 1;
        }
        // SAFETY: [i16; 32] and __m512i have the same size, any bits valid.
        unsafe { std::mem::transmute::<[[i16; 32]; 4], [__m512i; 4]>(idx) }
    };

    /// [`q6k_block_avx2`] on 64-byte vectors: each half of the block's
    /// low bits is one load, its high bits one 32-byte load used twice.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn q6k_block_avx512(b: &[u8], y: &[i8], bs: &[i16]) -> __m256i {
        assert!(b.len() == 210 && y.len() == QK_K && bs.len() == QK_K / 16);
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        // qh's high bits for codes 0..32 | 32..64 sit at << 4 | << 2,
        // for 64..96 | 96..128 at >> 0 | >> 2 (then & 0x30).
        let shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let shr = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
        prefetch_ahead(b);
        // SAFETY: every load reads 16..64 bytes inside `b`, `y` or `bs`,
        // whose lengths are asserted above.
        unsafe {
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(192).cast()));
            let scz = _mm512_castsi256_si512(sc16);
            let mut acc = _mm512_setzero_si512();
            for h in 0..2 {
                let ql = _mm512_loadu_si512(b.as_ptr().add(64 * h).cast());
                let qh = b.as_ptr().add(128 + 32 * h);
                let qh = load2x256(qh, qh);
                let q_lo = _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30),
                );
                let q_hi = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30),
                );
                for (k, q) in [q_lo, q_hi].into_iter().enumerate() {
                    let c = 2 * h + k;
                    let yk = _mm512_loadu_si512(y.as_ptr().add(64 * c).cast());
                    let p = _mm512_maddubs_epi16(q, yk);
                    let scales = _mm512_permutexvar_epi16(Q6K_SCALE_IDX512[c], scz);
                    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(p, scales));
                }
            }
            let acc = _mm256_add_epi32(
                _mm512_castsi512_si256(acc),
                _mm512_extracti64x4_epi64(acc, 1),
            );
            _mm256_sub_epi32(acc, q6k_offset(sc16, bs))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,f16c")]
    pub(super) fn dot_avx512(ty: GgmlType, row: &[u8], a: ActRow<'_>) -> f32 {
        let mut sum = 0.0f32;
        // SAFETY (every block): loads read 16..64 bytes inside `b`, `y`,
        // `bs`, whose lengths the `chunks_exact` calls fix.
        unsafe {
            match ty {
                GgmlType::Q6_K => {
                    let mut one = [0.0f32];
                    q6k_rows_avx512(row, a, &mut one);
                    return one[0];
                }
                GgmlType::Q4_K => {
                    let m4 = _mm512_set1_epi8(0x0F);
                    for (((b, y), &dy), bs) in row
                        .chunks_exact(144)
                        .zip(a.qs.chunks_exact(QK_K))
                        .zip(a.d)
                        .zip(a.bsums.chunks_exact(QK_K / 16))
                    {
                        let (sc, m) = q4k_scale_mins(b);
                        let mut acc = _mm512_setzero_si512();
                        for g in [0, 2] {
                            // Groups g and g + 1: low nibbles are sub-blocks 2g
                            // and 2g + 2, high nibbles 2g + 1 and 2g + 3.
                            let q = _mm512_loadu_si512(b.as_ptr().add(16 + 32 * g).cast());
                            let lo = _mm512_and_si512(q, m4);
                            let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                            let yp = y.as_ptr().add(64 * g).cast::<u8>();
                            let ylo = load2x256(yp, yp.add(64));
                            let yhi = load2x256(yp.add(32), yp.add(96));
                            let slo = _mm512_inserti64x4(
                                _mm512_set1_epi16(sc[2 * g]),
                                _mm256_set1_epi16(sc[2 * g + 2]),
                                1,
                            );
                            let shi = _mm512_inserti64x4(
                                _mm512_set1_epi16(sc[2 * g + 1]),
                                _mm256_set1_epi16(sc[2 * g + 3]),
                                1,
                            );
                            let plo = _mm512_madd_epi16(_mm512_maddubs_epi16(lo, ylo), slo);
                            let phi = _mm512_madd_epi16(_mm512_maddubs_epi16(hi, yhi), shi);
                            acc = _mm512_add_epi32(acc, _mm512_add_epi32(plo, phi));
                        }
                        let isc = _mm512_reduce_add_epi32(acc);
                        let mut imin = 0i32;
                        for j in 0..8 {
                            imin +=
                                i32::from(m[j]) * (i32::from(bs[2 * j]) + i32::from(bs[2 * j + 1]));
                        }
                        sum += (f16c_at(b, 0) * dy) * isc as f32;
                        sum -= (f16c_at(b, 2) * dy) * imin as f32;
                    }
                }
                // One Q8_0 block is 32 bytes: the AVX2 version is the right width.
                GgmlType::Q8_0 => return dot_avx2(ty, row, a),
                _ => return f32::NAN,
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_quant::formats::QuantBlock;
    use proptest::prelude::*;

    /// A row of `blocks` random blocks of `ty` with finite f16 scales.
    fn random_row(ty: GgmlType, blocks: usize, bytes: &[u8], scale_bits: u16) -> Vec<u8> {
        let size = match ty {
            GgmlType::Q6_K => 210,
            GgmlType::Q4_K => 144,
            _ => 34,
        };
        let mut row: Vec<u8> = bytes.iter().copied().cycle().take(blocks * size).collect();
        for (i, b) in row.chunks_exact_mut(size).enumerate() {
            // A finite, moderate f16 (exponent below the all-ones
            // pattern), different per block, so that a sum paired with
            // another block's scale shows.
            let scale_bits = scale_bits.wrapping_add(977u16.wrapping_mul(i as u16));
            let scale = (scale_bits & 0x3fff).to_le_bytes();
            match ty {
                GgmlType::Q6_K => b[208..210].copy_from_slice(&scale),
                GgmlType::Q4_K => {
                    b[0..2].copy_from_slice(&scale);
                    b[2..4].copy_from_slice(&(scale_bits.rotate_left(3) & 0x3fff).to_le_bytes());
                }
                _ => b[0..2].copy_from_slice(&scale),
            }
        }
        row
    }

    fn dequantized_dot(ty: GgmlType, row: &[u8], x: &[f32]) -> f64 {
        let w = crate::gguf::dequant::dequantize(ty, row).unwrap();
        w.iter()
            .zip(x)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum()
    }

    proptest! {
        #[test]
        fn every_version_equals_the_reference(
            ty in prop::sample::select(vec![GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q8_0]),
            blocks in 1usize..10,
            bytes in prop::collection::vec(any::<u8>(), 1..700),
            scale_bits in any::<u16>(),
            x in prop::collection::vec(-4.0f32..4.0, 1024),
            rows in 1usize..3,
        ) {
            let cols = blocks * QK_K;
            let row = random_row(ty, blocks * QK_K / if ty == GgmlType::Q8_0 { QK8_0 } else { QK_K }, &bytes, scale_bits);
            let xs: Vec<f32> = x.iter().copied().cycle().take(rows * cols).collect();
            let mut reference = BlockQ8Activations::new();
            prop_assert!(reference.quantize(ty, &xs, cols, Backend::Scalar));
            let mut want = vec![0.0; rows];
            reference.dot_row(&row, &mut want);
            let mut got = vec![0.0; rows];
            let mut act = BlockQ8Activations::new();
            act.quantize(ty, &xs, cols, Backend::detect());
            act.dot_row(&row, &mut got);
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.to_bits(), w.to_bits(), "{:?}: {} vs {}", ty, g, w);
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
                act.quantize(ty, &xs, cols, Backend::Avx2);
                act.dot_row(&row, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    prop_assert_eq!(g.to_bits(), w.to_bits(), "{:?} AVX2: {} vs {}", ty, g, w);
                }
            }
        }
    }

    proptest! {
        /// A run of rows against one activation row equals each row's own
        /// dot on the reference, bit for bit, on every version this CPU
        /// runs: row lengths of 1-5 blocks (the reduction of four blocks
        /// then straddles rows) and 0-9 rows (no row, and a last group of
        /// fewer than four blocks).
        #[test]
        fn runs_of_rows_equal_one_row_at_a_time(
            ty in prop::sample::select(vec![GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q8_0]),
            blocks in 1usize..6,
            n in 0usize..10,
            bytes in prop::collection::vec(any::<u8>(), 1..700),
            scale_bits in any::<u16>(),
            x in prop::collection::vec(-4.0f32..4.0, 1..1300),
        ) {
            let cols = blocks * QK_K;
            let per_row = cols / if ty == GgmlType::Q8_0 { QK8_0 } else { QK_K };
            let rows: Vec<u8> = (0..n)
                .flat_map(|i| {
                    let shifted: Vec<u8> = bytes.iter().map(|&b| b.wrapping_add(i as u8 * 29)).collect();
                    random_row(ty, per_row, &shifted, scale_bits.wrapping_add(i as u16))
                })
                .collect();
            let xs: Vec<f32> = x.iter().copied().cycle().take(cols).collect();
            let mut reference = BlockQ8Activations::new();
            prop_assert!(reference.quantize(ty, &xs, cols, Backend::Scalar));
            let row_bytes = rows.len() / n.max(1);
            let want: Vec<f32> = rows
                .chunks_exact(row_bytes.max(1))
                .map(|row| {
                    let mut one = [0.0f32];
                    reference.dot_row(row, &mut one);
                    one[0]
                })
                .collect();
            let mut backends = vec![Backend::Scalar, Backend::detect()];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
                backends.push(Backend::Avx2);
            }
            for backend in backends {
                let mut act = BlockQ8Activations::new();
                act.quantize(ty, &xs, cols, backend);
                let mut got = vec![f32::NAN; n];
                act.dot_rows_one(&rows, &mut got);
                prop_assert_eq!(
                    got.iter().map(|g| g.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
                    "{:?} {:?}: {:?} vs {:?}", ty, backend, got, want
                );
            }
        }
    }

    proptest! {
        /// TQ rows with a scale per block: the integer dot is the exact
        /// block sum `Σ_b d_w·d_y·Σ t·q` of the Q8_K codes (an f64 sum from
        /// the quantized activations, independent of the implementation).
        #[test]
        fn ternary_rows_with_block_scales_dot_exactly(
            tq1 in any::<bool>(),
            codes in prop::collection::vec(-1i8..=1, 3 * QK_K),
            scales in prop::collection::vec(0.01f32..2.0, 3),
            x in prop::collection::vec(-4.0f32..4.0, 2 * 3 * QK_K),
        ) {
            let (cols, rows) = (3 * QK_K, 2);
            let mut row = Vec::new();
            for (c, &d) in codes.chunks(QK_K).zip(&scales) {
                let d = half::f16::from_f32(d);
                if tq1 {
                    BlockTq1_0::from_codes(c, d).write(&mut row);
                } else {
                    BlockTq2_0::from_codes(c, d).write(&mut row);
                }
            }
            let ty = if tq1 { GgmlType::TQ1_0 } else { GgmlType::TQ2_0 };
            let mut act = BlockQ8Activations::new();
            prop_assert!(act.quantize(ty, &x, cols, Backend::detect()));
            let mut got = vec![0.0; rows];
            act.dot_row(&row, &mut got);
            for (t, &g) in got.iter().enumerate() {
                let a = act.row(t);
                let want: f64 = (0..3)
                    .map(|b| {
                        let d = f64::from(half::f16::from_f32(scales[b]).to_f32());
                        let isum: i64 = (0..QK_K)
                            .map(|i| i64::from(codes[b * QK_K + i]) * i64::from(a.qs[b * QK_K + i]))
                            .sum();
                        d * f64::from(a.d[b]) * isum as f64
                    })
                    .sum();
                prop_assert!((f64::from(g) - want).abs() <= 1e-5 * want.abs().max(1.0), "{} vs {}", g, want);
                // And within int8 rounding of the f32 dot of the dequantized row.
                let float = dequantized_dot(ty, &row, &x[t * cols..(t + 1) * cols]);
                let norm: f64 = x[t * cols..(t + 1) * cols].iter().map(|v| f64::from(v.abs())).sum::<f64>() * 2.0 / 127.0;
                prop_assert!((f64::from(g) - float).abs() <= norm, "{} vs float {}", g, float);
            }
        }
    }

    #[test]
    fn integer_dot_approximates_the_float_dot() {
        // Deterministic pseudo-random data; int8 activations cost about
        // 1/127 of each block's largest element.
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for ty in [GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q8_0] {
            let bytes: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
            let blocks = if ty == GgmlType::Q8_0 { 64 } else { 8 };
            let row = random_row(ty, blocks, &bytes, 0x2c00); // scale 1/16
            let x: Vec<f32> = (0..2048)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut act = BlockQ8Activations::new();
            assert!(act.quantize(ty, &x, 2048, Backend::detect()));
            let mut got = [0.0f32];
            act.dot_row(&row, &mut got);
            let want = dequantized_dot(ty, &row, &x);
            let w = crate::gguf::dequant::dequantize(ty, &row).unwrap();
            let norm: f64 = w.iter().map(|&v| f64::from(v).abs()).sum::<f64>() / 127.0;
            assert!(
                (f64::from(got[0]) - want).abs() <= norm,
                "{ty:?}: {} vs {want} (bound {norm})",
                got[0]
            );
        }
    }

    #[test]
    fn q8k_quantizer_follows_ggml() {
        // The element of largest magnitude maps to -127 whatever its sign,
        // so a max of -127 gives a step of exactly 1: halves tie to even.
        let mut x = vec![0.0f32; QK_K];
        x[3] = -127.0;
        x[4] = 0.5;
        x[5] = 1.5;
        x[6] = -2.5;
        x[7] = 100.25;
        let mut qs = vec![0i8; QK_K];
        let mut bs = vec![0i16; QK_K / 16];
        let d = quantize_q8k(&x, &mut qs, &mut bs);
        assert_eq!(d, 1.0);
        assert_eq!(&qs[3..8], &[-127, 0, 2, -2, 100]);
        assert_eq!(bs[0], -127 + 2 - 2 + 100);
        x[3] = 127.0; // positive: the step is negative
        assert_eq!(quantize_q8k(&x, &mut qs, &mut bs), -1.0);
        assert_eq!(&qs[3..8], &[-127, 0, -2, 2, -100]);
        let zeros = [0.0f32; QK_K];
        assert_eq!(quantize_q8k(&zeros, &mut qs, &mut bs), 0.0);
        assert!(qs.iter().all(|&q| q == 0));
    }

    #[test]
    fn refuses_float_types_and_partial_blocks() {
        let mut act = BlockQ8Activations::new();
        assert!(!act.quantize(GgmlType::F16, &[0.0; 256], 256, Backend::Scalar));
        assert!(!act.quantize(GgmlType::Q6_K, &[0.0; 128], 128, Backend::Scalar));
        assert!(act.quantize(GgmlType::Q8_0, &[0.0; 64], 32, Backend::Scalar));
        assert_eq!(act.rows(), 2);
    }
}
