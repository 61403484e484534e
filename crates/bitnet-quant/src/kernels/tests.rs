//! One property test per backend against the reference, exact equality,
//! with shapes straddling the block (0, 1, 255, 256, 257, ...) and extreme codes.

use super::*;
use crate::formats::runtime::PackedTernary;
use proptest::prelude::*;

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

fn case(
    rows: usize,
    cols: usize,
    tokens: usize,
    mut seed: u64,
) -> (PackedTernary, QuantizedActivations) {
    let codes: Vec<i8> = (0..rows * cols)
        .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
        .collect();
    // Mix in the extremes -128 and 127 so saturation bugs would show.
    let x: Vec<i8> = (0..tokens * cols)
        .map(|_| match lcg(&mut seed) % 8 {
            0 => -128,
            1 => 127,
            _ => (lcg(&mut seed) % 256) as i32 as i8,
        })
        .collect();
    let w = PackedTernary::from_codes(&codes, rows, cols).unwrap();
    let x = QuantizedActivations::from_codes(&x, &vec![1.0; tokens], tokens, cols).unwrap();
    (w, x)
}

fn col_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(255),
        Just(256),
        Just(257),
        Just(511),
        1usize..1100
    ]
}

/// `w · x` by the reference kernel and by `kernel` (its output buffer
/// starts as 7s, so a product it skips shows).
fn reference_and(
    kernel: &TernaryKernel,
    w: &PackedTernary,
    x: &QuantizedActivations,
) -> (Vec<i32>, Vec<i32>) {
    let reference = TernaryKernel::new(Backend::Reference).unwrap();
    let n = w.rows() * x.tokens();
    let (mut want, mut got) = (vec![0; n], vec![7; n]);
    reference
        .gemm(w, x, &mut want, Parallelism::Sequential)
        .unwrap();
    kernel
        .gemm(w, x, &mut got, Parallelism::Sequential)
        .unwrap();
    (want, got)
}

fn check_backend(
    backend: Backend,
    rows: usize,
    cols: usize,
    tokens: usize,
    seed: u64,
) -> std::result::Result<(), TestCaseError> {
    let Some(kernel) = TernaryKernel::new(backend) else {
        return Ok(()); // not on this CPU
    };
    let (w, x) = case(rows, cols, tokens, seed);
    let (want, got) = reference_and(&kernel, &w, &x);
    prop_assert_eq!(
        &got,
        &want,
        "gemm {} rows={} cols={} tokens={}",
        backend,
        rows,
        cols,
        tokens
    );
    for t in 0..tokens {
        let mut y = vec![7; rows];
        kernel
            .gemv(&w, &x, t, &mut y, Parallelism::Sequential)
            .unwrap();
        let col: Vec<i32> = (0..rows).map(|r| want[r * tokens + t]).collect();
        prop_assert_eq!(y, col, "gemv {} token {}", backend, t);
    }
    Ok(())
}

macro_rules! backend_props {
    ($name:ident, $backend:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn $name(rows in 0usize..11, cols in col_strategy(), tokens in 1usize..7, seed in any::<u64>()) {
                check_backend($backend, rows, cols, tokens, seed)?;
            }
        }
    };
}

backend_props!(portable_equals_reference, Backend::Portable);
backend_props!(avx2_equals_reference, Backend::Avx2);
backend_props!(avx512_vnni_equals_reference, Backend::Avx512Vnni);
backend_props!(amx_equals_reference, Backend::Amx);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Prefill-sized GEMMs: AVX2 unpacks blocks of rows (up to 32) to
    /// memory from `UNPACK_MIN_TOKENS` tokens and runs 6-token tiles, so
    /// shapes span several row blocks and every token remainder.
    #[test]
    fn many_tokens_equal_reference(rows in 0usize..70, cols in col_strategy(), tokens in 20usize..40, seed in any::<u64>()) {
        for backend in Backend::available().into_iter().filter(|&b| b != Backend::Reference) {
            check_backend(backend, rows, cols, tokens, seed)?;
        }
    }

    /// AMX tiles hold 16 rows and 16 tokens, processed 2 x 2, from
    /// `AMX_MIN_TOKENS` tokens: shapes around 16, 32, 48 and 64.
    #[test]
    fn amx_tiles_equal_reference(rows in 0usize..70, cols in col_strategy(), tokens in AMX_MIN_TOKENS..80, seed in any::<u64>()) {
        check_backend(Backend::Amx, rows, cols, tokens, seed)?;
    }
}

#[test]
fn amx_in_a_thread_pool_equals_reference() {
    let Some(kernel) = TernaryKernel::new(Backend::Amx) else {
        return; // not on this CPU
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let (w, x) = case(300, 1000, 67, 7);
    let mut want = vec![0; 300 * 67];
    TernaryKernel::new(Backend::Reference)
        .unwrap()
        .gemm(&w, &x, &mut want, Parallelism::Sequential)
        .unwrap();
    let mut got = vec![7; 300 * 67];
    kernel
        .gemm(&w, &x, &mut got, Parallelism::Pool(&pool))
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn reference_matches_plain_dot() {
    let (w, x) = case(3, 300, 2, 42);
    let codes = w.to_codes();
    let mut out = vec![0; 6];
    TernaryKernel::new(Backend::Reference)
        .unwrap()
        .gemm(&w, &x, &mut out, Parallelism::Sequential)
        .unwrap();
    for r in 0..3 {
        for t in 0..2 {
            let want: i32 = (0..300)
                .map(|c| i32::from(codes[r * 300 + c]) * i32::from(x.codes(t)[c]))
                .sum();
            assert_eq!(out[r * 2 + t], want);
        }
    }
}

#[test]
fn worst_case_magnitudes_are_exact() {
    // All +1 weights against all -128 codes: the largest |sum| per row.
    let cols = 4096;
    let w = PackedTernary::from_codes(&vec![1; 2 * cols], 2, cols).unwrap();
    let x = QuantizedActivations::from_codes(&vec![-128; cols * 5], &[1.0; 5], 5, cols).unwrap();
    for backend in Backend::available() {
        let mut out = vec![0; 10];
        TernaryKernel::new(backend)
            .unwrap()
            .gemm(&w, &x, &mut out, Parallelism::Sequential)
            .unwrap();
        assert!(
            out.iter().all(|&v| v == -128 * cols as i32),
            "{backend}: {out:?}"
        );
    }
}

#[test]
fn threaded_equals_sequential() {
    let pool = bitnet_core::parallel::build_pool(2).unwrap();
    let (w, x) = case(133, 700, 5, 9);
    for backend in Backend::available() {
        let k = TernaryKernel::new(backend).unwrap();
        let (mut a, mut b) = (vec![0; 133 * 5], vec![0; 133 * 5]);
        k.gemm(&w, &x, &mut a, Parallelism::Sequential).unwrap();
        k.gemm(&w, &x, &mut b, Parallelism::Pool(&pool)).unwrap();
        assert_eq!(a, b, "{backend}");
        let (mut c, mut d) = (vec![0; 133], vec![0; 133]);
        k.gemv(&w, &x, 4, &mut c, Parallelism::Sequential).unwrap();
        k.gemv(&w, &x, 4, &mut d, Parallelism::Pool(&pool)).unwrap();
        assert_eq!(c, d, "{backend}");
    }
}

#[test]
fn shape_errors() {
    let (w, x) = case(4, 10, 2, 1);
    let k = TernaryKernel::detect();
    assert!(
        k.gemm(&w, &x, &mut [0; 7], Parallelism::Sequential)
            .is_err()
    );
    assert!(
        k.gemv(&w, &x, 2, &mut [0; 4], Parallelism::Sequential)
            .is_err()
    );
    let (_, x11) = case(4, 11, 1, 1);
    assert!(
        k.gemv(&w, &x11, 0, &mut [0; 4], Parallelism::Sequential)
            .is_err()
    );
}

#[test]
fn detection_is_available() {
    assert!(Backend::detect().is_available());
    assert!(Backend::available().contains(&Backend::Reference));
}

/// The worst case for kernels that sum several blocks in i16 lanes before
/// widening: every weight +1 or -1 against every activation -128 or 127,
/// over more blocks than any such kernel holds in i16 (17 blocks, the last
/// one partial), with every tile shape (1 to 9 tokens, and 24 to 29 for
/// the 6-token tiles over rows unpacked in blocks of 22).
#[test]
fn extreme_codes_over_many_blocks_equal_the_reference() {
    let (rows, cols) = (47, 17 * 256 - 100);
    for backend in Backend::available() {
        let kernel = TernaryKernel::new(backend).unwrap();
        for (w_code, x_code) in [(1i8, -128i8), (1, 127), (-1, -128), (-1, 127)] {
            for tokens in (1..10).chain(24..30) {
                let w = PackedTernary::from_codes(&vec![w_code; rows * cols], rows, cols).unwrap();
                let x = QuantizedActivations::from_codes(
                    &vec![x_code; tokens * cols],
                    &vec![1.0; tokens],
                    tokens,
                    cols,
                )
                .unwrap();
                let (want, got) = reference_and(&kernel, &w, &x);
                assert_eq!(want[0], i32::from(w_code) * i32::from(x_code) * cols as i32);
                assert_eq!(got, want, "{backend} w {w_code} x {x_code} tokens {tokens}");
            }
        }
    }
}
