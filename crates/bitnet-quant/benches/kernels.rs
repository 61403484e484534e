//! Ternary x int8 kernel benchmarks on the 2B-4T layer shapes.
//!
//! Run with: `cargo bench -p bitnet-quant --bench kernels`
//! (filter with e.g. `-- gemv/stream`).
//!
//! - `gemv/stream`: one token, weights cycled through enough copies to
//!   exceed the last-level cache, so they come from memory (decode). The
//!   throughput is weight bytes streamed per second; compare it with
//!   `bitnet doctor`'s measured read bandwidth.
//! - `gemv/cached`: the same matrix every time (fits in L2/L3).
//! - `gemm128`: 128 tokens (prefill); throughput in int8 multiply-adds/s.
//! - `gemm_batch`: 2 to 32 tokens (a batch of decoding sequences), 1 thread.
//!
//! Every available backend runs side by side, at 1 and 2 threads.

use bitnet_core::{Parallelism, build_pool, system};
use bitnet_quant::formats::runtime::PackedTernary;
use bitnet_quant::kernels::{Backend, TernaryKernel};
use bitnet_quant::quantize::int8::QuantizedActivations;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const SHAPES: [(usize, usize); 4] = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];

fn matrix(rows: usize, cols: usize) -> PackedTernary {
    let codes: Vec<i8> = (0..rows * cols)
        .map(|i| ((i * 2654435761) % 3) as i8 - 1)
        .collect();
    PackedTernary::from_codes(&codes, rows, cols).expect("valid codes")
}

fn activations(tokens: usize, cols: usize) -> QuantizedActivations {
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| ((i * 7919) % 255) as f32 - 127.0)
        .collect();
    QuantizedActivations::quantize("bench", &x, tokens, cols).expect("finite input")
}

fn fast_backends() -> Vec<Backend> {
    Backend::available()
        .into_iter()
        .filter(|b| *b != Backend::Reference)
        .collect()
}

fn gemv(c: &mut Criterion) {
    let pools: Vec<_> = [1, 2].map(|n| build_pool(n).expect("thread pool")).into();
    let cache = system::largest_cache_bytes().unwrap_or(32 << 20);
    let mut group = c.benchmark_group("gemv");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (rows, cols) in SHAPES {
        let one = matrix(rows, cols);
        let bytes = one.as_bytes().len();
        let copies = vec![one; (2 * cache).div_ceil(bytes).max(2)];
        let x = activations(1, cols);
        let mut out = vec![0i32; rows];
        group.throughput(Throughput::Bytes(bytes as u64));
        for backend in fast_backends() {
            let k = TernaryKernel::new(backend).expect("available");
            for pool in &pools {
                let threads = pool.current_num_threads();
                let id = format!("{rows}x{cols}/{backend}/{threads}t");
                let mut i = 0;
                group.bench_function(BenchmarkId::new("stream", &id), |b| {
                    b.iter(|| {
                        i = (i + 1) % copies.len();
                        k.gemv(&copies[i], &x, 0, &mut out, Parallelism::Pool(pool))
                            .expect("shapes match");
                        black_box(&out);
                    })
                });
                group.bench_function(BenchmarkId::new("cached", &id), |b| {
                    b.iter(|| {
                        k.gemv(&copies[0], &x, 0, &mut out, Parallelism::Pool(pool))
                            .expect("shapes match");
                        black_box(&out);
                    })
                });
            }
        }
    }
    group.finish();
}

fn gemm(c: &mut Criterion) {
    let pools: Vec<_> = [1, 2].map(|n| build_pool(n).expect("thread pool")).into();
    let tokens = 128;
    let mut group = c.benchmark_group("gemm128");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for (rows, cols) in SHAPES {
        let w = matrix(rows, cols);
        let x = activations(tokens, cols);
        let mut out = vec![0i32; rows * tokens];
        group.throughput(Throughput::Elements((rows * cols * tokens) as u64));
        for backend in fast_backends() {
            let k = TernaryKernel::new(backend).expect("available");
            for pool in &pools {
                let id = format!("{rows}x{cols}/{backend}/{}t", pool.current_num_threads());
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter(|| {
                        k.gemm(&w, &x, &mut out, Parallelism::Pool(pool))
                            .expect("shapes match");
                        black_box(&out);
                    })
                });
            }
        }
    }
    group.finish();
}

/// A batch of decoding sequences: few tokens, where the register tiles
/// (4 tokens for VNNI, 16 for AMX) are partly empty.
fn gemm_batch(c: &mut Criterion) {
    let pool = build_pool(1).expect("thread pool");
    let (rows, cols) = (6912, 2560);
    let w = matrix(rows, cols);
    let mut group = c.benchmark_group("gemm_batch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for tokens in [2, 4, 8, 16, 32] {
        let x = activations(tokens, cols);
        let mut out = vec![0i32; rows * tokens];
        group.throughput(Throughput::Elements((rows * cols * tokens) as u64));
        for backend in fast_backends() {
            let k = TernaryKernel::new(backend).expect("available");
            let id = format!("{rows}x{cols}x{tokens}/{backend}/1t");
            group.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| {
                    k.gemm(&w, &x, &mut out, Parallelism::Pool(&pool))
                        .expect("shapes match");
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

/// Training's forwards (the bench config of `tools/bench_training.py`: a
/// shard of 256 tokens, hidden 384, MLP 1024): K of 384 is one and a half
/// blocks, so a tile's loop is short beside its epilogue.
fn gemm_train(c: &mut Criterion) {
    let pool = build_pool(1).expect("thread pool");
    let tokens = 256;
    let mut group = c.benchmark_group("gemm_train256");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2));
    for (rows, cols) in [(384, 384), (1024, 384), (384, 1024)] {
        let w = matrix(rows, cols);
        let x = activations(tokens, cols);
        let mut out = vec![0i32; rows * tokens];
        group.throughput(Throughput::Elements((rows * cols * tokens) as u64));
        let k = TernaryKernel::detect();
        let id = format!("{rows}x{cols}/{}/1t", k.backend());
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                k.gemm(&w, &x, &mut out, Parallelism::Pool(&pool))
                    .expect("shapes match");
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gemv, gemm, gemm_batch, gemm_train);
criterion_main!(benches);
