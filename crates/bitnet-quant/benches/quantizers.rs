//! Quantizer throughput on a 6912x2560 tensor (the 2B-4T FFN shape), in
//! elements per second.
//!
//! Run with: `cargo bench -p bitnet-quant --bench quantizers`

use bitnet_quant::quantize::int4;
use bitnet_quant::quantize::int8::{QuantizedActivations, quantize_per_tensor};
use bitnet_quant::quantize::ternary::{Granularity, quantize};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const ROWS: usize = 6912;
const COLS: usize = 2560;

fn data() -> Vec<f32> {
    (0..ROWS * COLS)
        .map(|i| (((i * 2654435761) % 10007) as f32 / 10007.0 - 0.5) * 0.04)
        .collect()
}

fn quantizers(c: &mut Criterion) {
    let w = data();
    let mut group = c.benchmark_group("quantize_6912x2560");
    group
        .sample_size(10)
        .throughput(Throughput::Elements((ROWS * COLS) as u64));
    for (name, g) in [
        ("ternary_per_tensor", Granularity::PerTensor),
        ("ternary_per_channel", Granularity::PerChannel),
        ("ternary_per_group128", Granularity::PerGroup(128)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(quantize("w", &w, ROWS, COLS, g).expect("finite")))
        });
    }
    group.bench_function("int8_per_token", |b| {
        b.iter(|| black_box(QuantizedActivations::quantize("x", &w, ROWS, COLS).expect("finite")))
    });
    let mut reused = QuantizedActivations::zeroed(ROWS, COLS);
    group.bench_function("int8_per_token_reused_buffer", |b| {
        b.iter(|| reused.requantize("x", &w).expect("finite"))
    });
    group.bench_function("int8_per_tensor", |b| {
        b.iter(|| black_box(quantize_per_tensor("x", &w).expect("finite")))
    });
    group.bench_function("int4_group32", |b| {
        b.iter(|| black_box(int4::quantize("w", &w, 32).expect("finite")))
    });
    group.finish();
}

criterion_group!(benches, quantizers);
criterion_main!(benches);
