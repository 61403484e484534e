//! Checks the ternary x int8 kernels on arbitrary small weights (including
//! arbitrary non-zero padding columns) and activations: for gemm and gemv,
//! every available backend, sequential and on a thread pool, equals
//! `Backend::Reference` exactly, and the reference equals a naive i64 dot
//! product over the decoded codes. Shape errors are `Err`, never panics.
#![no_main]

use bitnet_core::Parallelism;
use bitnet_quant::formats::runtime::{BLOCK, BLOCK_BYTES, PackedTernary};
use bitnet_quant::kernels::{Backend, TernaryKernel};
use bitnet_quant::quantize::int8::QuantizedActivations;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap())
}

/// Endless byte source: the input, cycled (zeros if empty).
struct Bytes<'a> {
    data: &'a [u8],
    i: usize,
}

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        if self.data.is_empty() {
            return 0;
        }
        let b = self.data[self.i % self.data.len()];
        self.i += 1;
        b
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 5 {
        return;
    }
    let (hdr, body) = input.split_at(5);
    let rows = usize::from(hdr[0] % 19); // 0..=18: odd and > one 16-row task
    let tokens = usize::from(hdr[1] % 10); // 0..=9: exercises 4x4 / 2x2 tiles and tails
    let cols = usize::from(hdr[2]) * 3 + usize::from(hdr[3] % 3); // 0..=767
    let raw_padding = hdr[4] & 1 == 1;
    let mut src = Bytes { data: body, i: 0 };

    let w = if raw_padding {
        // Arbitrary bytes, padding columns included; only 0b11 fields (which
        // the decoder rejects) are turned into 0b10.
        let len = rows * cols.div_ceil(BLOCK) * BLOCK_BYTES;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let b = src.next();
                b & !(b & (b >> 1) & 0x55)
            })
            .collect();
        PackedTernary::from_bytes(&bytes, rows, cols).expect("sanitized bytes must decode")
    } else {
        let codes: Vec<i8> = (0..rows * cols).map(|_| (src.next() % 3) as i8 - 1).collect();
        PackedTernary::from_codes(&codes, rows, cols).unwrap()
    };
    let x_codes: Vec<i8> = (0..tokens * cols).map(|_| src.next() as i8).collect();
    let x = QuantizedActivations::from_codes(&x_codes, &vec![1.0; tokens], tokens, cols).unwrap();

    // Independent oracle over decoded codes.
    let wc = w.to_codes();
    let mut naive = vec![0i32; rows * tokens];
    for r in 0..rows {
        for t in 0..tokens {
            let d: i64 = (0..cols)
                .map(|c| i64::from(wc[r * cols + c]) * i64::from(x_codes[t * cols + c]))
                .sum();
            naive[r * tokens + t] = i32::try_from(d).unwrap();
        }
    }

    let reference = TernaryKernel::new(Backend::Reference).unwrap();
    let mut want = vec![i32::MIN; rows * tokens];
    reference.gemm(&w, &x, &mut want, Parallelism::Sequential).unwrap();
    assert_eq!(want, naive, "reference gemm != naive dot products");

    for backend in Backend::available() {
        let k = TernaryKernel::new(backend).unwrap();
        for par in [Parallelism::Sequential, Parallelism::Pool(pool())] {
            let mut got = vec![i32::MIN; rows * tokens];
            k.gemm(&w, &x, &mut got, par).unwrap();
            assert_eq!(got, want, "{backend} gemm ({rows}x{cols}, {tokens} tokens) != reference");
            for t in 0..tokens {
                let mut y = vec![i32::MIN; rows];
                k.gemv(&w, &x, t, &mut y, par).unwrap();
                let col: Vec<i32> = (0..rows).map(|r| want[r * tokens + t]).collect();
                assert_eq!(y, col, "{backend} gemv token {t} ({rows}x{cols}) != reference");
            }
        }
        // Bad shapes are errors, not panics.
        let mut y = vec![0i32; rows];
        assert!(k.gemv(&w, &x, tokens, &mut y, Parallelism::Sequential).is_err());
        let mut wrong = vec![0i32; rows * tokens + 1];
        assert!(k.gemm(&w, &x, &mut wrong, Parallelism::Sequential).is_err());
        let other = QuantizedActivations::zeroed(tokens, cols + 1);
        let mut out = vec![0i32; rows * tokens];
        assert!(k.gemm(&w, &other, &mut out, Parallelism::Sequential).is_err());
    }
});
