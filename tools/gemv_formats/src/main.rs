//! How fast one core can run a decode GEMV, by weight format, on this CPU
//! (x86-64 with AVX2). The answers behind two decisions of the CPU
//! performance work, rerunnable:
//!
//! - The 2-bit GEMV against a plain AVX2 read loop over the same bytes, and
//!   against reading 2 or 4 rows far apart at once: is decode at the
//!   core's streaming rate, and do more streams help?
//! - A ~1.6-bit base-3 format (TQ1_0's: 5 trits a byte, `q = ceil(v ·
//!   256 / 243)`, digit k = `((q · 3^k) mod 256 · 3) >> 8`), unpacked in
//!   16-bit lanes: does reading 20% fewer bytes pay for the unpacking?
//!
//! The 2-bit loop is the one in `bitnet-quant`'s `avx2::gemv_row` (mask-only
//! unpack), copied so that the formats run side by side; both are checked
//! against scalar loops first. Nine alternating rounds over a matrix much
//! larger than the last-level cache; medians, and the median of per-round
//! ratios to the 2-bit GEMV. Rates are weights/4 per second (the bytes a
//! 2-bit format would read), so formats compare by weights streamed.
//!
//! ```sh
//! cargo run --release --manifest-path tools/gemv_formats/Cargo.toml --target-dir target/tools
//! ```

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const PREFETCH_BYTES: usize = 8192;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// One row's accumulators of the mask-only 2-bit dot (see
    /// `bitnet-quant`'s `gemv_row` for why each field has its own lanes).
    #[derive(Clone, Copy)]
    struct Row {
        a0: __m256i,
        a1: __m256i,
        a2: __m256i,
        acc: __m256i,
        acc2: __m256i,
        acc3: __m256i,
    }

    impl Row {
        #[target_feature(enable = "avx2")]
        fn new() -> Self {
            let z = _mm256_setzero_si256();
            Row {
                a0: z,
                a1: z,
                a2: z,
                acc: z,
                acc2: z,
                acc3: z,
            }
        }

        /// Adds block `b` of the row at `w` against the codes `x`.
        ///
        /// # Safety
        /// AVX2; block `b` of the row and its 256 codes are in bounds.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn block(&mut self, w: *const u8, x: *const i8, b: usize, blocks: usize) {
            let ones = _mm256_set1_epi16(1);
            let mask = |m: u8| _mm256_set1_epi8(m as i8);
            let (m0, m1, m2, m3) = (mask(0x03), mask(0x0c), mask(0x30), mask(0xc0));
            let zero = _mm256_setzero_si256();
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(b * 64 + PREFETCH_BYTES).cast());
            for h in 0..2 {
                // SAFETY: in bounds (the caller's contract).
                let (v, xs) = unsafe {
                    let v = _mm256_loadu_si256(w.add(b * 64 + 32 * h).cast());
                    let xb = x.add(b * 256 + 32 * h);
                    let xk = |k: usize| _mm256_loadu_si256(xb.add(64 * k).cast());
                    (v, [xk(0), xk(1), xk(2), xk(3)])
                };
                let dot = |m, x| _mm256_maddubs_epi16(_mm256_and_si256(v, m), x);
                self.a0 = _mm256_add_epi16(self.a0, dot(m0, xs[0]));
                self.a1 = _mm256_add_epi16(self.a1, dot(m1, xs[1]));
                self.a2 = _mm256_add_epi16(self.a2, dot(m2, xs[2]));
                self.acc3 = _mm256_add_epi32(self.acc3, _mm256_madd_epi16(dot(m3, xs[3]), ones));
            }
            let last = b + 1 == blocks;
            if b % 2 == 1 || last {
                self.acc2 = _mm256_add_epi32(self.acc2, _mm256_madd_epi16(self.a2, ones));
                self.a2 = zero;
            }
            if (b + 1).is_multiple_of(8) || last {
                let f0 = _mm256_madd_epi16(self.a0, ones);
                let f1 = _mm256_srai_epi32::<2>(_mm256_madd_epi16(self.a1, ones));
                let f23 = _mm256_add_epi32(
                    _mm256_srai_epi32::<4>(self.acc2),
                    _mm256_srai_epi32::<6>(self.acc3),
                );
                let all = _mm256_add_epi32(_mm256_add_epi32(f0, f1), f23);
                self.acc = _mm256_add_epi32(self.acc, all);
                (self.a0, self.a1, self.acc2, self.acc3) = (zero, zero, zero, zero);
            }
        }
    }

    /// `Σ u·x` per row of 2-bit codes, `N` rows `rows / N` apart at once
    /// (`N` streams).
    ///
    /// # Safety
    /// AVX2; `w` holds `out.len()` rows of `blocks * 64` bytes, `x` holds
    /// `blocks * 256` codes, `N` divides `out.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gemv_2bit<const N: usize>(w: &[u8], x: &[i8], blocks: usize, out: &mut [i32]) {
        let per = out.len() / N;
        assert!(w.len() >= out.len() * blocks * 64 && x.len() >= blocks * 256);
        for r in 0..per {
            let mut rows = [Row::new(); N];
            // SAFETY: row r + i·per < out.len() (asserted above).
            let wr: [*const u8; N] =
                std::array::from_fn(|i| unsafe { w.as_ptr().add((r + i * per) * blocks * 64) });
            for b in 0..blocks {
                for (row, &w) in rows.iter_mut().zip(&wr) {
                    // SAFETY: block b of the row, codes of the token.
                    unsafe { row.block(w, x.as_ptr(), b, blocks) };
                }
            }
            for (i, row) in rows.iter().enumerate() {
                out[r + i * per] = hsum(row.acc);
            }
        }
    }

    /// `Σ t·x` per row of base-3 bytes: byte j of each 32-byte group holds
    /// five codes, digit k against code `x[5 · group + 32k + j]`.
    ///
    /// # Safety
    /// AVX2; `w` holds `out.len()` rows of `row_bytes` (a multiple of 32),
    /// `x` holds `row_bytes * 5` codes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gemv_base3(w: &[u8], x: &[i8], row_bytes: usize, out: &mut [i32]) {
        assert!(w.len() >= out.len() * row_bytes && x.len() >= row_bytes * 5);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi16(0x00FF);
        let high = _mm256_set1_epi16(0xFF00u16 as i16);
        let three = _mm256_set1_epi16(3);
        for (r, o) in out.iter_mut().enumerate() {
            // SAFETY: row r is in `w` (asserted above).
            let wr = unsafe { w.as_ptr().add(r * row_bytes) };
            let mut acc = _mm256_setzero_si256();
            for c in (0..row_bytes).step_by(32) {
                _mm_prefetch::<_MM_HINT_T0>(wr.wrapping_add(c + PREFETCH_BYTES).cast());
                // SAFETY: bytes c..c + 32 of the row.
                let q = unsafe { _mm256_loadu_si256(wr.add(c).cast()) };
                let q_high = _mm256_and_si256(q, high);
                let mut a16 = _mm256_setzero_si256();
                for (k, p) in [1i16, 3, 9, 27, 81].into_iter().enumerate() {
                    let p = _mm256_set1_epi16(p);
                    // (q · 3^k) mod 256 per byte: the low bytes from one
                    // 16-bit product, the high bytes masked first.
                    let m = _mm256_or_si256(
                        _mm256_and_si256(_mm256_mullo_epi16(q, p), low),
                        _mm256_mullo_epi16(q_high, p),
                    );
                    // (m · 3) >> 8 per byte, as the high half of m·256 · 3.
                    let d_low = _mm256_mulhi_epu16(_mm256_slli_epi16::<8>(m), three);
                    let d_high = _mm256_mulhi_epu16(_mm256_and_si256(m, high), three);
                    let digits = _mm256_or_si256(d_low, _mm256_slli_epi16::<8>(d_high));
                    // SAFETY: codes 5c + 32k .. + 32 (asserted above).
                    let xv = unsafe { _mm256_loadu_si256(x.as_ptr().add(c * 5 + 32 * k).cast()) };
                    a16 = _mm256_add_epi16(a16, _mm256_maddubs_epi16(digits, xv));
                }
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a16, ones));
            }
            *o = hsum(acc);
        }
    }

    /// Sums every byte: the plain read loop the GEMVs are compared with.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn read_all(w: &[u8]) -> i64 {
        let mut a = [_mm256_setzero_si256(); 4];
        for c in w.chunks_exact(128) {
            for (i, a) in a.iter_mut().enumerate() {
                // SAFETY: 32 bytes inside the 128-byte chunk.
                let v = unsafe { _mm256_loadu_si256(c.as_ptr().add(32 * i).cast()) };
                *a = _mm256_add_epi64(*a, _mm256_sad_epu8(v, _mm256_setzero_si256()));
            }
        }
        let s = _mm256_add_epi64(_mm256_add_epi64(a[0], a[1]), _mm256_add_epi64(a[2], a[3]));
        _mm256_extract_epi64::<0>(s)
            + _mm256_extract_epi64::<1>(s)
            + _mm256_extract_epi64::<2>(s)
            + _mm256_extract_epi64::<3>(s)
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::time::Instant;
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("this experiment needs AVX2");
        std::process::exit(1);
    }
    // 96,000 rows of 2560 weights: 61 MB at 2 bits, past any L3 here.
    let (rows, cols) = (96_000usize, 2560usize);
    let blocks = cols / 256;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // 2-bit: fields in {0, 1, 2}; base-3: values 0..243 stored as ceil(v·256/243).
    let w2: Vec<u8> = (0..rows * blocks * 64)
        .map(|_| (0..4).fold(0u8, |b, k| b | (((next() % 3) as u8) << (2 * k))))
        .collect();
    let b3_row = cols / 5;
    let w3: Vec<u8> = (0..rows * b3_row)
        .map(|_| (next() % 243 * 256).div_ceil(243) as u8)
        .collect();
    let x: Vec<i8> = (0..cols).map(|_| next() as i8).collect();

    let scalar_2bit = |r: usize| -> i32 {
        (0..cols)
            .map(|c| {
                let (b, k, h, j) = (c / 256, c % 256 / 64, c % 64 / 32, c % 32);
                let u = (w2[r * blocks * 64 + b * 64 + 32 * h + j] >> (2 * k)) & 3;
                i32::from(u) * i32::from(x[c])
            })
            .sum()
    };
    let scalar_base3 = |r: usize| -> i32 {
        (0..cols)
            .map(|c| {
                let (g, k, j) = (c / 160, c % 160 / 32, c % 32);
                let q = u32::from(w3[r * b3_row + 32 * g + j]);
                let digit = (((q * 3u32.pow(k as u32)) & 0xFF) * 3) >> 8;
                digit as i32 * i32::from(x[c])
            })
            .sum()
    };
    let (mut out, mut other) = (vec![0i32; rows], vec![0i32; rows]);
    // SAFETY: AVX2 checked above; the shapes fit each kernel's contract.
    unsafe {
        avx2::gemv_2bit::<1>(&w2, &x, blocks, &mut out);
        for r in [0, 1, rows / 2, rows - 1] {
            assert_eq!(out[r], scalar_2bit(r), "2-bit row {r}");
        }
        avx2::gemv_2bit::<4>(&w2, &x, blocks, &mut other);
        assert_eq!(out, other, "four streams");
        avx2::gemv_base3(&w3, &x, b3_row, &mut other);
        for r in [0, 1, rows / 2, rows - 1] {
            assert_eq!(other[r], scalar_base3(r), "base-3 row {r}");
        }
    }

    let names = [
        "read loop",
        "2-bit, 1 row",
        "2-bit, 2 streams",
        "2-bit, 4 streams",
        "base-3",
    ];
    let weights = (rows * cols) as f64;
    let mut rates = vec![Vec::new(); names.len()];
    for _ in 0..9 {
        for (i, rate) in rates.iter_mut().enumerate() {
            let t0 = Instant::now();
            // SAFETY: as above.
            unsafe {
                match i {
                    0 => {
                        std::hint::black_box(avx2::read_all(&w2));
                    }
                    1 => avx2::gemv_2bit::<1>(&w2, &x, blocks, &mut out),
                    2 => avx2::gemv_2bit::<2>(&w2, &x, blocks, &mut out),
                    3 => avx2::gemv_2bit::<4>(&w2, &x, blocks, &mut out),
                    _ => avx2::gemv_base3(&w3, &x, b3_row, &mut out),
                }
            }
            std::hint::black_box(&out);
            rate.push(weights / 4.0 / t0.elapsed().as_secs_f64() / 1e9);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("one thread, {rows} x {cols} weights, 9 alternating rounds, medians");
    println!("{:<18} {:>10} {:>14}", "", "GB/s (2-bit)", "vs 2-bit GEMV");
    for (name, r) in names.iter().zip(&rates) {
        let ratio = median(r.iter().zip(&rates[1]).map(|(a, b)| a / b).collect());
        println!("{name:<18} {:>10.1} {:>14.3}", median(r.clone()), ratio);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("this experiment is for x86-64 with AVX2");
}
