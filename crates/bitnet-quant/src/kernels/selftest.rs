//! A start-up self-test: runs a backend against the scalar reference on
//! deterministic random shapes that straddle the block size, so a user can
//! check that the fast path is right on *their* CPU (`bitnet doctor`).

use super::{Backend, TernaryKernel};
use crate::formats::runtime::PackedTernary;
use crate::quantize::int8::QuantizedActivations;
use bitnet_core::Parallelism;

/// What a self-test found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfTestReport {
    /// The backend tested.
    pub backend: Backend,
    /// Shapes tried (each as GEMV and GEMM).
    pub cases: usize,
    /// One line per mismatch, empty when the backend passed.
    pub failures: Vec<String>,
}

impl SelfTestReport {
    /// Whether every case matched the reference exactly.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (7, 255, 3),
    (8, 256, 1),
    (9, 257, 5),
    (64, 512, 8),
    (130, 1000, 2),
    (33, 2560, 4),
    (4, 6912, 9),
];

/// Runs `backend` against the reference; `None` when the CPU lacks it.
pub fn self_test(backend: Backend) -> Option<SelfTestReport> {
    let fast = TernaryKernel::new(backend)?;
    let reference = TernaryKernel::new(Backend::Reference)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut failures = Vec::new();
    for &(rows, cols, tokens) in &SHAPES {
        let codes: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
        let x: Vec<i8> = (0..tokens * cols).map(|_| next() as u8 as i8).collect();
        let (Ok(w), Ok(x)) = (
            PackedTernary::from_codes(&codes, rows, cols),
            QuantizedActivations::from_codes(&x, &vec![1.0; tokens], tokens, cols),
        ) else {
            failures.push(format!("[{rows}x{cols}] could not build inputs"));
            continue;
        };
        let mut want = vec![0; rows * tokens];
        let mut got = vec![0; rows * tokens];
        let ok = reference
            .gemm(&w, &x, &mut want, Parallelism::Sequential)
            .is_ok()
            && fast.gemm(&w, &x, &mut got, Parallelism::Sequential).is_ok();
        if !ok || got != want {
            failures.push(format!("GEMM [{rows}x{cols}] x {tokens} tokens differs"));
        }
        let mut y = vec![0; rows];
        let col: Vec<i32> = (0..rows).map(|r| want[r * tokens]).collect();
        if fast
            .gemv(&w, &x, 0, &mut y, Parallelism::Sequential)
            .is_err()
            || y != col
        {
            failures.push(format!("GEMV [{rows}x{cols}] differs"));
        }
    }
    Some(SelfTestReport {
        backend,
        cases: SHAPES.len(),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_backend_passes() {
        for b in Backend::available() {
            let r = self_test(b).unwrap();
            assert!(r.passed(), "{b}: {:?}", r.failures);
            assert_eq!(r.cases, SHAPES.len());
        }
    }
}
