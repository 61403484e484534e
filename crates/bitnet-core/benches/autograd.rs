//! Training ops on the tape at the training benchmark's shape (hidden 384,
//! 6 heads of 64, a shard of 2 sequences of 128 tokens): forward and
//! backward together, as a training step runs them.
//!
//! Run with: `cargo bench -p bitnet-core --bench autograd`

use bitnet_core::autograd::{AttnDims, BufferPool, Tape};
use bitnet_core::parallel::Parallelism;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn data(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 2654435761 + salt) % 10007) as f32 / 10007.0 - 0.5) * 2.0)
        .collect()
}

fn attention(c: &mut Criterion) {
    let dims = AttnDims {
        batch: 2,
        seq: 128,
        heads: 6,
        kv_heads: 6,
        head_dim: 64,
    };
    let rows = dims.batch * dims.seq;
    let width = dims.heads * dims.head_dim;
    let (q, k, v) = (
        data(rows * width, 1),
        data(rows * width, 2),
        data(rows * width, 3),
    );
    let mut group = c.benchmark_group("attention_2x128_h6x64");
    group
        .sample_size(20)
        .throughput(Throughput::Elements(rows as u64));
    // Buffers carried from iteration to iteration, as the trainer carries
    // them from step to step: no page faults from fresh allocations.
    let mut pool = BufferPool::new();
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let mut tape = Tape::new(Parallelism::Sequential).with_pool(std::mem::take(&mut pool));
            let qv = tape.leaf_borrowed(&q, &[rows, width], true).expect("shape");
            let kv = tape.leaf_borrowed(&k, &[rows, width], true).expect("shape");
            let vv = tape.leaf_borrowed(&v, &[rows, width], true).expect("shape");
            let o = tape.causal_attention(qv, kv, vv, dims).expect("dims");
            let s = tape.sum(o).expect("sum");
            let mut grads = tape.backward(s).expect("backward");
            let mut spent = tape.into_pool();
            for g in [qv, kv, vv].into_iter().filter_map(|x| grads.take(x)) {
                spent.give(g);
            }
            spent.trim();
            pool = spent;
        })
    });
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
