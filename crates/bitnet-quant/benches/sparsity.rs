//! Does skipping zero weights pay off at the sparsity ternarization gives?
//!
//! Run with: `cargo bench -p bitnet-quant --bench sparsity`
//!
//! Absmean ternarization of Gaussian weights leaves about 31% zeros (see
//! `bitnet convert --report`). A zero-skipping kernel stores, per row, the
//! column indices of the +1 and of the -1 weights (u16 each: 16 bits per
//! non-zero instead of 2 bits per weight) and sums the selected int8
//! activations. This bench runs it beside the dense packed kernel
//! (detected backend) on the 2B-4T FFN shape, one token, one thread, with
//! the weights in cache, at 31%, 50%, 75% and 90% zeros: throughput in
//! weights per second.

use bitnet_core::Parallelism;
use bitnet_quant::formats::runtime::PackedTernary;
use bitnet_quant::kernels::TernaryKernel;
use bitnet_quant::quantize::int8::QuantizedActivations;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const ROWS: usize = 6912;
const COLS: usize = 2560;

/// Codes with the given fraction of zeros (deterministic).
fn codes(zeros: f64) -> Vec<i8> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..ROWS * COLS)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            if u < zeros {
                0
            } else if u < zeros + (1.0 - zeros) / 2.0 {
                1
            } else {
                -1
            }
        })
        .collect()
}

/// Per row: indices of +1 weights, then of -1 weights.
struct SparseRows {
    plus: Vec<Vec<u16>>,
    minus: Vec<Vec<u16>>,
}

impl SparseRows {
    fn new(codes: &[i8]) -> Self {
        let mut plus = Vec::with_capacity(ROWS);
        let mut minus = Vec::with_capacity(ROWS);
        for row in codes.chunks(COLS) {
            plus.push((0..COLS as u16).filter(|&c| row[c as usize] == 1).collect());
            minus.push(
                (0..COLS as u16)
                    .filter(|&c| row[c as usize] == -1)
                    .collect(),
            );
        }
        SparseRows { plus, minus }
    }

    fn gemv(&self, x: &[i8], out: &mut [i32]) {
        for ((o, p), m) in out.iter_mut().zip(&self.plus).zip(&self.minus) {
            let sp: i32 = p.iter().map(|&c| i32::from(x[c as usize])).sum();
            let sm: i32 = m.iter().map(|&c| i32::from(x[c as usize])).sum();
            *o = sp - sm;
        }
    }
}

fn sparsity(c: &mut Criterion) {
    let xf: Vec<f32> = (0..COLS)
        .map(|i| ((i * 7919) % 255) as f32 - 127.0)
        .collect();
    let x = QuantizedActivations::quantize("bench", &xf, 1, COLS).expect("finite");
    let kernel = TernaryKernel::detect();
    let mut group = c.benchmark_group("sparsity");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements((ROWS * COLS) as u64));
    let mut out = vec![0i32; ROWS];
    for zeros in [0.31, 0.5, 0.75, 0.9] {
        let codes = codes(zeros);
        let dense = PackedTernary::from_codes(&codes, ROWS, COLS).expect("valid");
        let sparse = SparseRows::new(&codes);
        // Same answer first.
        let mut want = vec![0i32; ROWS];
        kernel
            .gemv(&dense, &x, 0, &mut want, Parallelism::Sequential)
            .expect("shapes");
        sparse.gemv(x.codes(0), &mut out);
        assert_eq!(out, want, "zero-skipping kernel disagrees");
        let id = format!("{}pct_zeros", (zeros * 100.0) as u32);
        group.bench_function(BenchmarkId::new(kernel.backend().name(), &id), |b| {
            b.iter(|| {
                kernel
                    .gemv(&dense, &x, 0, &mut out, Parallelism::Sequential)
                    .expect("shapes");
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("zero-skip", &id), |b| {
            b.iter(|| {
                sparse.gemv(x.codes(0), &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sparsity);
criterion_main!(benches);
