//! The BitNet b1.58 forward pass (NUMERICS.md, "Architecture"), reading
//! top-down like the reference:
//!
//! ```text
//! a = input_layernorm(x)
//! q, k, v = q_proj(a), k_proj(a), v_proj(a)       one int8 quantization, shared
//! q, k = rope(q), rope(k)                           rotate-half, positions from the cache
//! o = softmax(q kᵀ / sqrt(d) + causal) v            f32; head h reads kv head h / (H / KV)
//! h = x + o_proj(attn_sub_norm(o))
//! n = post_attention_layernorm(h)
//! y = h + down_proj(ffn_sub_norm(act(gate_proj(n)) * up_proj(n)))
//! logits = lm_head(norm(y))
//! ```

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use bitnet_core::Parallelism;
use bitnet_core::ops::rows::{
    RopeTable, dot, relu2_gate_in_place, rms_norm_into, silu_gate_in_place, softmax_in_place,
};
use bitnet_models::BlockQ8Activations;
use bitnet_models::config::{Activation, BitNetConfig};
use bitnet_models::weights::{BitNetWeights, Layer, Linear};
use bitnet_quant::quantize::int8::QuantizedActivations;
use rayon::prelude::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Which positions of a forward call get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (scoring, perplexity, tests).
    All,
}

/// A loaded BitNet model ready to run.
#[derive(Debug)]
pub struct BitNetModel {
    weights: BitNetWeights,
    rope: RopeTable,
}

impl BitNetModel {
    /// Loads an HF checkpoint directory (`config.json` + safetensors).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        Self::new(BitNetWeights::from_hf_dir(dir)?)
    }

    /// Loads a BitNet GGUF file.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        Self::new(BitNetWeights::from_gguf(path)?)
    }

    /// Loads `path`: a GGUF file, or an HF checkpoint directory.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_file() {
            Self::from_gguf(path)
        } else {
            Self::from_hf_dir(path)
        }
    }

    /// Wraps loaded weights.
    pub fn new(weights: BitNetWeights) -> Result<Self> {
        let c = &weights.config;
        if c.q_dim() != c.hidden_size {
            return Err(Error::Unsupported(format!(
                "attn_sub_norm runs over hidden_size ({}), so heads x head_dim ({}) must equal it",
                c.hidden_size,
                c.q_dim()
            )));
        }
        let rope = RopeTable::new(c.head_dim, c.rope_theta, 0..c.max_position_embeddings);
        Ok(BitNetModel { weights, rope })
    }

    /// The model's configuration.
    pub fn config(&self) -> &BitNetConfig {
        &self.weights.config
    }

    /// The weights.
    pub fn weights(&self) -> &BitNetWeights {
        &self.weights
    }

    /// A KV cache for one sequence of up to `capacity` tokens (at most the
    /// model's `max_position_embeddings`).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = self.config();
        KvCache::new(
            c.num_layers,
            c.kv_dim(),
            capacity.min(c.max_position_embeddings),
        )
    }

    /// Runs `ids` at the positions after those already in `cache`, appends
    /// their keys and values, and returns logits `[positions, vocab]` for
    /// the positions `which` selects. Allocates its buffers; a generation
    /// loop uses [`Self::forward_batch`] with a [`Workspace`] instead.
    pub fn forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        which: Logits,
        par: Parallelism<'_>,
    ) -> Result<Vec<f32>> {
        let mut ws = Workspace::default();
        let mut batch = [BatchEntry { ids, cache }];
        Ok(self
            .forward_batch(&mut batch, which, &mut ws, par)?
            .to_vec())
    }

    /// One forward pass over several independent sequences at once: every
    /// entry's `ids` run at the positions after those in its own cache.
    /// The linear layers see all tokens of all entries as one matrix (one
    /// GEMM pass), attention runs per entry over its own cache.
    ///
    /// Returns logits in `ws`: with [`Logits::Last`], one row per entry in
    /// batch order; with [`Logits::All`], a row per token, entry after
    /// entry. Every entry is checked before any cache changes, so an
    /// error leaves all caches as they were.
    pub fn forward_batch<'w>(
        &self,
        batch: &mut [BatchEntry<'_>],
        which: Logits,
        ws: &'w mut Workspace,
        par: Parallelism<'_>,
    ) -> Result<&'w [f32]> {
        match par {
            // The pass enters the pool once: its ~8 parallel regions per
            // layer then fork from a worker (the idle one steals), instead
            // of each injecting a job from outside and parking the caller
            // until it ends: two thread hand-offs per region, some 250 per
            // decoded token.
            Parallelism::Pool(pool) if pool.current_thread_index().is_none() => {
                pool.install(|| self.forward_batch_in_pool(batch, which, ws, par))
            }
            _ => self.forward_batch_in_pool(batch, which, ws, par),
        }
    }

    fn forward_batch_in_pool<'w>(
        &self,
        batch: &mut [BatchEntry<'_>],
        which: Logits,
        ws: &'w mut Workspace,
        par: Parallelism<'_>,
    ) -> Result<&'w [f32]> {
        let c = self.config();
        if batch.is_empty() {
            return Err(Error::EmptyInput);
        }
        ws.spans.clear();
        let mut total = 0;
        for e in batch.iter_mut() {
            self.check_entry(e)?;
            ws.spans.push(Span {
                offset: total,
                len: e.ids.len(),
                start: e.cache.len(),
            });
            total += e.ids.len();
        }
        let h = c.hidden_size;
        let mut x = std::mem::take(&mut ws.x);
        x.resize(total * h, 0.0);
        self.embed(batch.iter().flat_map(|e| e.ids.iter()), &mut x);
        let result = self
            .weights
            .layers
            .iter()
            .enumerate()
            .try_for_each(|(l, layer)| self.layer_forward(l, layer, &mut x, batch, ws, par));
        if let Err(e) = result {
            // Rows written for this call are not committed: caches keep their length.
            ws.x = x;
            return Err(e);
        }
        for e in batch.iter_mut() {
            e.cache.advance(e.ids.len());
        }

        // Final norm over the selected rows, then the output layer.
        let output_start = ws.stage_times.is_some().then(Instant::now);
        let mut normed = std::mem::take(&mut ws.normed);
        normed.clear();
        match which {
            Logits::All => {
                normed.resize(total * h, 0.0);
                rms_norm_into(&x, &self.weights.norm, c.rms_norm_eps, &mut normed);
            }
            Logits::Last => {
                normed.resize(batch.len() * h, 0.0);
                for (span, out) in ws.spans.iter().zip(normed.chunks_exact_mut(h)) {
                    let last = span.offset + span.len - 1;
                    rms_norm_into(
                        &x[last * h..(last + 1) * h],
                        &self.weights.norm,
                        c.rms_norm_eps,
                        out,
                    );
                }
            }
        }
        self.lm_head(
            &normed,
            &mut ws.logits,
            &mut ws.logits_t,
            &mut ws.block_acts,
            par,
        );
        ws.x = x;
        ws.normed = normed;
        if let (Some(times), Some(start)) = (ws.stage_times.as_mut(), output_start) {
            times.add(Stage::Output, start.elapsed());
            times.passes += 1;
        }
        Ok(&ws.logits)
    }

    /// The residual stream `[ids, hidden]` after the first `layers`
    /// decoder layers (0: the embeddings), from an empty cache: for
    /// checking one layer at a time against a reference.
    pub fn hidden_states(
        &self,
        ids: &[u32],
        layers: usize,
        par: Parallelism<'_>,
    ) -> Result<Vec<f32>> {
        let c = self.config();
        if layers > c.num_layers {
            return Err(Error::Unsupported(format!(
                "the model has {} layers, not {layers}",
                c.num_layers
            )));
        }
        let mut cache = self.new_cache(ids.len());
        let mut batch = [BatchEntry {
            ids,
            cache: &mut cache,
        }];
        self.check_entry(&mut batch[0])?;
        let mut ws = Workspace::default();
        ws.spans.push(Span {
            offset: 0,
            len: ids.len(),
            start: 0,
        });
        let h = c.hidden_size;
        let mut x = vec![0.0f32; ids.len() * h];
        self.embed(ids.iter(), &mut x);
        for (l, layer) in self.weights.layers[..layers].iter().enumerate() {
            self.layer_forward(l, layer, &mut x, &mut batch, &mut ws, par)?;
        }
        Ok(x)
    }

    /// Embedding rows of `ids` (checked in range) into `x` `[ids, hidden]`.
    fn embed<'i>(&self, ids: impl Iterator<Item = &'i u32>, x: &mut [f32]) {
        let h = self.config().hidden_size;
        for (&id, row) in ids.zip(x.chunks_exact_mut(h)) {
            self.weights.embed_tokens.row_into(id as usize, row);
        }
    }

    /// Checks an entry and takes the cache blocks its tokens need.
    fn check_entry(&self, e: &mut BatchEntry<'_>) -> Result<()> {
        let c = self.config();
        if e.ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        let cache = &mut e.cache;
        if cache.layers() != c.num_layers || cache.kv_dim() != c.kv_dim() {
            return Err(Error::CacheMismatch(format!(
                "cache has {} layers of width {}, model {} of width {}",
                cache.layers(),
                cache.kv_dim(),
                c.num_layers,
                c.kv_dim()
            )));
        }
        if cache.len() + e.ids.len() > self.rope.len() {
            return Err(Error::ContextFull {
                needed: cache.len() + e.ids.len(),
                capacity: self.rope.len(),
            });
        }
        if let Some((position, &id)) = e
            .ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= c.vocab_size)
        {
            return Err(Error::TokenOutOfRange {
                id,
                position,
                vocab: c.vocab_size,
            });
        }
        // Last: it may take blocks from a pool.
        e.cache.reserve(e.ids.len())
    }

    fn layer_forward(
        &self,
        l: usize,
        layer: &Layer,
        x: &mut [f32],
        batch: &mut [BatchEntry<'_>],
        ws: &mut Workspace,
        par: Parallelism<'_>,
    ) -> Result<()> {
        let c = self.config();
        let (h, kv, f, d) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
        let n = x.len() / h;
        let eps = c.rms_norm_eps;
        let Workspace {
            a,
            q,
            k,
            v,
            o,
            o_heads,
            proj,
            gate,
            up,
            scores,
            xq,
            dots,
            spans,
            stage_times,
            ..
        } = ws;
        let mut laps = Laps::start(stage_times.as_mut());
        for (buf, len) in [
            (&mut *a, n * h),
            (&mut *q, n * h),
            (&mut *k, n * kv),
            (&mut *v, n * kv),
            (&mut *o, n * h),
            (&mut *o_heads, n * h),
            (&mut *proj, n * h),
            (&mut *gate, n * f),
            (&mut *up, n * f),
        ] {
            buf.resize(len, 0.0);
        }

        // Attention.
        let norm = |w| rms_norm_rows(w, eps);
        for_rows(par, n, x, a, norm(&layer.input_layernorm));
        let qkv = [&layer.q_proj, &layer.k_proj, &layer.v_proj];
        let shared = quantize_for(&qkv, a, n, xq, par)?;
        laps.lap(Stage::Other);
        linear(&layer.q_proj, a, shared, xq, n, q, dots, par)?;
        linear(&layer.k_proj, a, shared, xq, n, k, dots, par)?;
        linear(&layer.v_proj, a, shared, xq, n, v, dots, par)?;
        laps.lap(Stage::Qkv);
        for (span, e) in spans.iter().zip(batch.iter_mut()) {
            for i in 0..span.len {
                let (row, pos) = (span.offset + i, span.start + i);
                for head in q[row * h..(row + 1) * h].chunks_exact_mut(d) {
                    self.rope.rotate_in_place(head, pos);
                }
                for head in k[row * kv..(row + 1) * kv].chunks_exact_mut(d) {
                    self.rope.rotate_in_place(head, pos);
                }
            }
            let rows = span.offset * kv..(span.offset + span.len) * kv;
            e.cache.write(l, &k[rows.clone()], &v[rows]);
        }
        laps.lap(Stage::RopeCache);
        self.attention(l, q, batch, spans, o_heads, o, scores, par);
        laps.lap(Stage::Attention);
        for_rows(par, n, o, a, norm(&layer.attn_sub_norm));
        laps.lap(Stage::Other);
        linear(&layer.o_proj, a, false, xq, n, proj, dots, par)?;
        laps.lap(Stage::OProj);
        x.iter_mut().zip(proj.iter()).for_each(|(x, p)| *x += p);

        // Feed-forward.
        for_rows(par, n, x, a, norm(&layer.post_attention_layernorm));
        let shared = quantize_for(&[&layer.gate_proj, &layer.up_proj], a, n, xq, par)?;
        laps.lap(Stage::Other);
        linear(&layer.gate_proj, a, shared, xq, n, gate, dots, par)?;
        linear(&layer.up_proj, a, shared, xq, n, up, dots, par)?;
        laps.lap(Stage::GateUp);
        let gated: fn(&mut [f32], &[f32]) = match c.activation {
            Activation::Relu2 => relu2_gate_in_place,
            Activation::Silu => silu_gate_in_place,
        };
        for_rows(par, n, up, gate, |up: &[f32], gate: &mut [f32]| {
            gated(gate, up)
        });
        // `up` is free again: it takes the normalized inner activation.
        for_rows(par, n, gate, up, norm(&layer.ffn_sub_norm));
        laps.lap(Stage::Other);
        linear(&layer.down_proj, up, false, xq, n, proj, dots, par)?;
        laps.lap(Stage::Down);
        x.iter_mut().zip(proj.iter()).for_each(|(x, p)| *x += p);
        laps.lap(Stage::Other);
        Ok(())
    }

    /// Causal attention of every entry's queries (rows `span.offset..` of
    /// `q`, positions `span.start..`) over its cached keys and values of
    /// layer `l`, into the same rows of `o`.
    ///
    /// All (entry, head) pairs of the batch run as one parallel pass, each
    /// into its own slice of `o_heads` (per entry, head-major) and of
    /// `scores`: a decode batch of many one-token entries would otherwise
    /// pay a fork-join per entry for a few microseconds of work each.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: usize,
        q: &[f32],
        batch: &[BatchEntry<'_>],
        spans: &[Span],
        o_heads: &mut [f32],
        o: &mut [f32],
        scores: &mut Vec<f32>,
        par: Parallelism<'_>,
    ) {
        let c = self.config();
        let (h, kv, d, heads) = (c.hidden_size, c.kv_dim(), c.head_dim, c.num_heads);
        let group = heads / c.num_kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let contexts = spans.iter().map(|s| s.start + s.len);
        scores.resize(heads * contexts.sum::<usize>(), 0.0);
        // Each task takes a run of one entry's heads, its output rows
        // `[heads, span.len, d]` and its score scratch (one context per
        // head). Many entries (a decode batch) get one task each, which
        // walks its cache rows once, front to back, for all heads; few
        // entries split their heads so that every thread has work.
        let wanted = 4 * par.threads();
        let mut tasks = Vec::with_capacity(wanted.max(spans.len()));
        let (mut outs, mut scratch) = (&mut o_heads[..], &mut scores[..]);
        for (span, e) in spans.iter().zip(batch) {
            let ctx = span.start + span.len;
            let pieces = wanted.div_ceil(spans.len()).clamp(1, heads);
            let per_task = heads.div_ceil(pieces);
            for first in (0..heads).step_by(per_task) {
                let count = per_task.min(heads - first);
                let (out, rest) = std::mem::take(&mut outs).split_at_mut(count * span.len * d);
                let (s, rest_s) = std::mem::take(&mut scratch).split_at_mut(count * ctx);
                (outs, scratch) = (rest, rest_s);
                let task = HeadTask {
                    layer: l,
                    q,
                    cache: &*e.cache,
                    span: *span,
                    h,
                    kv,
                    d,
                    heads: first..first + count,
                    group,
                    scale,
                };
                tasks.push((task, out, s));
            }
        }
        let attend = HeadAttention::detect();
        match par {
            Parallelism::Pool(pool) if tasks.len() > 1 => pool.install(|| {
                tasks
                    .par_iter_mut()
                    .for_each(|(task, out, s)| attend.run(task, out, s))
            }),
            _ => tasks
                .iter_mut()
                .for_each(|(task, out, s)| attend.run(task, out, s)),
        }
        // Per entry head-major back to row-major `[n, heads * d]`.
        for span in spans {
            let block = &o_heads[span.offset * h..(span.offset + span.len) * h];
            for (head, rows) in block.chunks_exact(span.len * d).enumerate() {
                for (i, src) in rows.chunks_exact(d).enumerate() {
                    let row = span.offset + i;
                    o[row * h + head * d..row * h + (head + 1) * d].copy_from_slice(src);
                }
            }
        }
    }

    /// `[rows, vocab]` logits of normalized hidden states `x` `[rows, hidden]`
    /// into `logits`.
    ///
    /// Each task takes a slice of the vocabulary and runs every row against
    /// each vocabulary row while it is in L1, so the output matrix is read
    /// once per call, not once per row (for a batch of decoding sequences
    /// that is the difference between reading it once and 64 times).
    ///
    /// A Q8_0/Q4_K/Q6_K output matrix dots in integers against the hidden
    /// states quantized to int8 blocks, as llama.cpp does (its logits to
    /// float rounding); a float one (F32/F16/BF16) dots in f32.
    fn lm_head(
        &self,
        x: &[f32],
        logits: &mut Vec<f32>,
        logits_t: &mut Vec<f32>,
        acts: &mut BlockQ8Activations,
        par: Parallelism<'_>,
    ) {
        const CHUNK: usize = 256;
        let c = self.config();
        let (h, vocab) = (c.hidden_size, c.vocab_size);
        let w = self.weights.output_weight();
        let rows = x.len() / h;
        let integer = w.quantize_activations(x, acts);
        let acts = &*acts;
        // `[vocab, rows]`: one contiguous block per vocabulary chunk (with
        // one row, that is already `[rows, vocab]`).
        let out_t = if rows == 1 {
            &mut *logits
        } else {
            &mut *logits_t
        };
        out_t.resize(rows * vocab, 0.0);
        let fill_t = |chunk: usize, out: &mut [f32]| {
            let first = chunk * CHUNK;
            if integer {
                w.dot_rows_quantized(first..first + out.len() / rows, acts, out);
            } else {
                w.dot_rows_many(first..first + out.len() / rows, x, out);
            }
        };
        match par {
            Parallelism::Sequential => out_t
                .chunks_mut(CHUNK * rows)
                .enumerate()
                .for_each(|(chunk, out)| fill_t(chunk, out)),
            Parallelism::Pool(pool) => pool.install(|| {
                out_t
                    .par_chunks_mut(CHUNK * rows)
                    .enumerate()
                    .for_each(|(chunk, out)| fill_t(chunk, out))
            }),
        }
        if rows > 1 {
            logits.resize(rows * vocab, 0.0);
            for (k, col) in logits_t.chunks_exact(rows).enumerate() {
                for (t, &v) in col.iter().enumerate() {
                    logits[t * vocab + k] = v;
                }
            }
        }
    }
}

/// A run of attention heads of one batch entry: its queries, the cache
/// it reads, and where its vectors sit in their rows.
struct HeadTask<'a> {
    /// Decoder layer.
    layer: usize,
    /// Queries `[rows, h]`; this task reads rows `span.offset..`.
    q: &'a [f32],
    cache: &'a KvCache,
    span: Span,
    /// Query row width (hidden size).
    h: usize,
    /// Key/value row width (kv_dim).
    kv: usize,
    /// Head dimension.
    d: usize,
    /// The query heads this task computes.
    heads: std::ops::Range<usize>,
    /// Query heads per key/value head.
    group: usize,
    /// 1 / sqrt(d).
    scale: f32,
}

/// Causal attention of a run of heads, compiled for the widest vectors
/// the CPU has. Every version runs the same Rust body with its own
/// [`Scores`] kernel, and every kernel and every fused multiply-add
/// computes the same bits, so the versions agree exactly; only the vector
/// width changes. (The plain version calls libm's `fmaf` on x86 CPUs
/// without FMA: exact, and slow, but those predate AVX2.)
#[derive(Clone, Copy)]
enum HeadAttention {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl HeadAttention {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return HeadAttention::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return HeadAttention::Avx2;
            }
        }
        HeadAttention::Plain
    }

    /// The task's queries over its cache into `out` (`[heads, span.len,
    /// d]`), with `scores` (`[heads, context]`) as scratch.
    fn run(self, task: &HeadTask<'_>, out: &mut [f32], scores: &mut [f32]) {
        match self {
            HeadAttention::Plain => attend_head::<PlainScores>(task, out, scores),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw AVX2 and FMA on this CPU.
            HeadAttention::Avx2 => unsafe { attend_head_avx2(task, out, scores) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw AVX-512F on this CPU.
            HeadAttention::Avx512 => unsafe { attend_head_avx512(task, out, scores) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_head_avx2(task: &HeadTask<'_>, out: &mut [f32], scores: &mut [f32]) {
    attend_head::<Avx2Scores>(task, out, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_head_avx512(task: &HeadTask<'_>, out: &mut [f32], scores: &mut [f32]) {
    attend_head::<Avx512Scores>(task, out, scores)
}

/// The body every [`HeadAttention`] version runs.
///
/// Each query walks its cache rows once, front to back, doing every head
/// of the task on a row before the next: a row is `kv_dim` contiguous
/// floats, so the reads stream instead of hopping one head's slice per
/// row. Rows go four at a time, so four independent dot products (and
/// four value rows per load and store of the output) are in flight. Per
/// head, the arithmetic is fixed whatever the task's size or the rows'
/// grouping: each score is [`score`], and each output element sums
/// `p_j * v_j` in position order with fused multiply-adds.
#[inline(always)]
fn attend_head<S: Scores>(task: &HeadTask<'_>, out: &mut [f32], scores: &mut [f32]) {
    let HeadTask {
        layer: l,
        q,
        cache,
        span,
        h,
        kv,
        d,
        ref heads,
        group,
        scale,
    } = *task;
    let ctx = span.start + span.len;
    let (first, count) = (heads.start, heads.len());
    let kv_off = |k: usize| (first + k) / group * d;
    for i in 0..span.len {
        let visible = span.start + i + 1;
        let row = span.offset + i;
        let qrow = &q[row * h..(row + 1) * h];
        // The cache comes in runs of positions (one per block).
        let mut j = 0;
        for (keys, _) in cache.runs(l, visible) {
            let mut quads = keys.chunks_exact(4 * kv);
            for quad in &mut quads {
                for k in 0..count {
                    let (qh, off) = (&qrow[(first + k) * d..(first + k + 1) * d], kv_off(k));
                    let ks = [0, 1, 2, 3].map(|r| &quad[r * kv + off..r * kv + off + d]);
                    // SAFETY: `S` matches the features of the caller.
                    let s4 = unsafe { S::score4(qh, ks) };
                    for (r, s) in s4.into_iter().enumerate() {
                        scores[k * ctx + j + r] = s * scale;
                    }
                }
                j += 4;
            }
            for key in quads.remainder().chunks_exact(kv) {
                for k in 0..count {
                    let (qh, off) = (&qrow[(first + k) * d..(first + k + 1) * d], kv_off(k));
                    // SAFETY: as above.
                    scores[k * ctx + j] = unsafe { S::score(qh, &key[off..off + d]) } * scale;
                }
                j += 1;
            }
        }
        for k in 0..count {
            // At least one position is visible, so the row is never all -inf.
            softmax_in_place(&mut scores[k * ctx..k * ctx + visible]);
            out[(k * span.len + i) * d..(k * span.len + i + 1) * d].fill(0.0);
        }
        let mut j = 0;
        for (_, values) in cache.runs(l, visible) {
            let mut quads = values.chunks_exact(4 * kv);
            for quad in &mut quads {
                for k in 0..count {
                    let off = kv_off(k);
                    let p = [0, 1, 2, 3].map(|r| scores[k * ctx + j + r]);
                    let vs = [0, 1, 2, 3].map(|r| &quad[r * kv + off..r * kv + off + d]);
                    let o = &mut out[(k * span.len + i) * d..(k * span.len + i + 1) * d];
                    accumulate4(o, p, vs);
                }
                j += 4;
            }
            for value in quads.remainder().chunks_exact(kv) {
                for k in 0..count {
                    let (p, off) = (scores[k * ctx + j], kv_off(k));
                    let o = &mut out[(k * span.len + i) * d..(k * span.len + i + 1) * d];
                    o.iter_mut()
                        .zip(&value[off..off + d])
                        .for_each(|(o, v)| *o = p.mul_add(*v, *o));
                }
                j += 1;
            }
        }
    }
}

/// Lanes of an attention score's partial sums.
const SCORE_LANES: usize = 16;

/// Reduces 16 lane sums in a fixed pairwise order.
#[inline(always)]
fn reduce_lanes(mut acc: [f32; SCORE_LANES]) -> f32 {
    let mut width = SCORE_LANES / 2;
    while width > 0 {
        for k in 0..width {
            acc[k] += acc[k + width];
        }
        width /= 2;
    }
    acc[0]
}

/// `q · k` for attention: lane `l` fuses the products of elements `l`,
/// `l + 16`, ..., the lanes reduce pairwise, and the elements past the
/// last whole lane block are added in order. [`score4`] computes exactly
/// this for four keys at once.
#[inline(always)]
fn score(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = [0.0f32; SCORE_LANES];
    for (x, y) in q.chunks_exact(SCORE_LANES).zip(k.chunks_exact(SCORE_LANES)) {
        for l in 0..SCORE_LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    reduce_lanes(acc) + score_tail(q, k)
}

/// [`score`] of one query against four keys, bit for bit, with the four
/// sums interleaved so that they do not wait on each other.
#[inline(always)]
fn score4(q: &[f32], ks: [&[f32]; 4]) -> [f32; 4] {
    let n = q.len() / SCORE_LANES * SCORE_LANES;
    let mut acc = [[0.0f32; SCORE_LANES]; 4];
    for b in (0..n).step_by(SCORE_LANES) {
        let x = &q[b..b + SCORE_LANES];
        for (a, k) in acc.iter_mut().zip(ks) {
            let y = &k[b..b + SCORE_LANES];
            for l in 0..SCORE_LANES {
                a[l] = x[l].mul_add(y[l], a[l]);
            }
        }
    }
    [0, 1, 2, 3].map(|r| reduce_lanes(acc[r]) + score_tail(q, ks[r]))
}

/// Attention scores ([`score`] and [`score4`]) with one instruction set.
/// Every implementation computes the same bits: 16 lane sums of fused
/// products, the same pairwise lane reduction, the tail added in order.
trait Scores {
    /// [`score4`].
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    unsafe fn score4(q: &[f32], ks: [&[f32]; 4]) -> [f32; 4];
    /// [`score`]: by default the first of four equal lanes of
    /// [`Scores::score4`] (only the rows left over after groups of four
    /// take this path).
    ///
    /// # Safety
    /// As [`Scores::score4`].
    #[inline(always)]
    unsafe fn score(q: &[f32], k: &[f32]) -> f32 {
        // SAFETY: the caller's promise, passed on.
        unsafe { Self::score4(q, [k, k, k, k])[0] }
    }
}

/// Plain Rust (the reference).
struct PlainScores;

impl Scores for PlainScores {
    #[inline(always)]
    unsafe fn score(q: &[f32], k: &[f32]) -> f32 {
        score(q, k)
    }
    #[inline(always)]
    unsafe fn score4(q: &[f32], ks: [&[f32]; 4]) -> [f32; 4] {
        score4(q, ks)
    }
}

/// The elements past the last whole 16-lane block, fused in order.
#[inline(always)]
fn score_tail(q: &[f32], k: &[f32]) -> f32 {
    let n = q.len() / SCORE_LANES * SCORE_LANES;
    let mut tail = 0.0f32;
    for (x, y) in q[n..].iter().zip(&k[n..q.len()]) {
        tail = x.mul_add(*y, tail);
    }
    tail
}

/// AVX2 + FMA: lanes 0-7 and 8-15 of each sum in two registers.
#[cfg(target_arch = "x86_64")]
struct Avx2Scores;

#[cfg(target_arch = "x86_64")]
impl Scores for Avx2Scores {
    #[inline(always)]
    unsafe fn score4(q: &[f32], ks: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: the caller's CPU has AVX2 and FMA.
        unsafe { score4_avx2(q, ks) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn score4_avx2(q: &[f32], ks: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = q.len() / SCORE_LANES * SCORE_LANES;
    assert!(ks.iter().all(|k| k.len() >= q.len()));
    let mut out = [0.0f32; 4];
    // SAFETY: loads stay within the first `n` elements of `q` and of
    // each key (asserted above).
    unsafe {
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        for b in (0..n).step_by(SCORE_LANES) {
            let (x0, x1) = (
                _mm256_loadu_ps(q.as_ptr().add(b)),
                _mm256_loadu_ps(q.as_ptr().add(b + 8)),
            );
            for r in 0..4 {
                let kp = ks[r].as_ptr().add(b);
                lo[r] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(kp), lo[r]);
                hi[r] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(kp.add(8)), hi[r]);
            }
        }
        for r in 0..4 {
            // Pairwise: 16 → 8 lanes, then 8 → 4 → 2 → 1, as `reduce_lanes`.
            let s8 = _mm256_add_ps(lo[r], hi[r]);
            out[r] = reduce8_avx(s8) + score_tail(q, ks[r]);
        }
    }
    out
}

/// Lanes `k + width` added onto lanes `k` for width 4, 2, 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
fn reduce8_avx(s8: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
    _mm_cvtss_f32(s1)
}

/// AVX-512: each sum's 16 lanes in one register.
#[cfg(target_arch = "x86_64")]
struct Avx512Scores;

#[cfg(target_arch = "x86_64")]
impl Scores for Avx512Scores {
    #[inline(always)]
    unsafe fn score4(q: &[f32], ks: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: the caller's CPU has AVX-512 F.
        unsafe { score4_avx512(q, ks) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn score4_avx512(q: &[f32], ks: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = q.len() / SCORE_LANES * SCORE_LANES;
    assert!(ks.iter().all(|k| k.len() >= q.len()));
    let mut out = [0.0f32; 4];
    // SAFETY: as in `score4_avx2`.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in (0..n).step_by(SCORE_LANES) {
            let x = _mm512_loadu_ps(q.as_ptr().add(b));
            for r in 0..4 {
                acc[r] = _mm512_fmadd_ps(x, _mm512_loadu_ps(ks[r].as_ptr().add(b)), acc[r]);
            }
        }
        for r in 0..4 {
            let s8 = _mm256_add_ps(
                _mm512_castps512_ps256(acc[r]),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r]))),
            );
            out[r] = reduce8_avx(s8) + score_tail(q, ks[r]);
        }
    }
    out
}

/// `o += p_r * v_r` for r = 0..4 in that order, element by element with
/// fused multiply-adds: the same as four single-row updates, with one
/// load and store of `o` instead of four.
#[inline(always)]
fn accumulate4(o: &mut [f32], p: [f32; 4], vs: [&[f32]; 4]) {
    let n = o.len();
    let [v0, v1, v2, v3] = vs.map(|v| &v[..n]);
    for e in 0..n {
        let mut a = o[e];
        a = p[0].mul_add(v0[e], a);
        a = p[1].mul_add(v1[e], a);
        a = p[2].mul_add(v2[e], a);
        a = p[3].mul_add(v3[e], a);
        o[e] = a;
    }
}

/// One sequence of a [`BitNetModel::forward_batch`] call.
#[derive(Debug)]
pub struct BatchEntry<'a> {
    /// New tokens of this sequence.
    pub ids: &'a [u32],
    /// Its cache: positions so far; receives the new keys and values.
    pub cache: &'a mut KvCache,
}

/// Rows of one batch entry: `len` tokens from row `offset` of the batch,
/// at positions `start..start + len` of its sequence.
#[derive(Clone, Copy, Debug)]
struct Span {
    offset: usize,
    len: usize,
    start: usize,
}

/// The buffers of forward passes, kept between calls so that a decode
/// loop allocates nothing once they have grown to its largest batch.
#[derive(Debug)]
pub struct Workspace {
    x: Vec<f32>,
    a: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    o_heads: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    normed: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
    logits_t: Vec<f32>,
    block_acts: BlockQ8Activations,
    xq: QuantizedActivations,
    dots: Vec<i32>,
    spans: Vec<Span>,
    stage_times: Option<StageTimes>,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            x: Vec::new(),
            a: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            o: Vec::new(),
            o_heads: Vec::new(),
            proj: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
            normed: Vec::new(),
            scores: Vec::new(),
            logits: Vec::new(),
            logits_t: Vec::new(),
            block_acts: BlockQ8Activations::new(),
            xq: QuantizedActivations::zeroed(0, 0),
            dots: Vec::new(),
            spans: Vec::new(),
            stage_times: None,
        }
    }
}

impl Workspace {
    /// Empty buffers; they grow on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The logits of the last forward call.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Mutable logits of the last forward call (samplers apply penalties in place).
    pub fn logits_mut(&mut self) -> &mut [f32] {
        &mut self.logits
    }

    /// Starts (from zero) or stops timing the stages of the forward passes
    /// run with this workspace. Off by default: a timed pass reads the
    /// clock about ten times per layer.
    pub fn time_stages(&mut self, on: bool) {
        self.stage_times = on.then(StageTimes::default);
    }

    /// The stage times summed since [`Self::time_stages`] turned them on.
    pub fn stage_times(&self) -> Option<&StageTimes> {
        self.stage_times.as_ref()
    }
}

/// A part of the CPU forward pass, for [`StageTimes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Norms, quantizing the inputs of q/k/v and gate/up, ReLU²/SiLU,
    /// residual adds.
    Other,
    /// The query, key and value projections.
    Qkv,
    /// RoPE and writing keys and values to the cache.
    RopeCache,
    /// Attention over the cache.
    Attention,
    /// The attention output projection, quantizing its input included.
    OProj,
    /// The gate and up projections.
    GateUp,
    /// The down projection, quantizing its input included.
    Down,
    /// The final norm and the output layer (logits).
    Output,
}

impl Stage {
    /// Every stage, in the order of a pass.
    pub const ALL: [Stage; 8] = [
        Stage::Other,
        Stage::Qkv,
        Stage::RopeCache,
        Stage::Attention,
        Stage::OProj,
        Stage::GateUp,
        Stage::Down,
        Stage::Output,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Other => "norms, quantization, activations",
            Stage::Qkv => "q/k/v projections",
            Stage::RopeCache => "RoPE, KV cache writes",
            Stage::Attention => "attention",
            Stage::OProj => "o projection",
            Stage::GateUp => "gate/up projections",
            Stage::Down => "down projection",
            Stage::Output => "output layer",
        }
    }
}

/// Wall time per [`Stage`] summed over forward passes
/// ([`Workspace::time_stages`]): where a CPU pass spends its time.
///
/// ```
/// use bitnet_inference::model::{Stage, StageTimes};
///
/// let times = StageTimes::default();
/// assert_eq!(times.passes, 0);
/// assert_eq!(times.total().as_nanos(), 0);
/// assert_eq!(times.get(Stage::Output).as_nanos(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// Forward passes timed.
    pub passes: u64,
    nanos: [u64; Stage::ALL.len()],
}

impl StageTimes {
    /// The time summed for `stage`.
    pub fn get(&self, stage: Stage) -> Duration {
        Duration::from_nanos(self.nanos[stage as usize])
    }

    /// The time of every stage together.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.nanos.iter().sum())
    }

    fn add(&mut self, stage: Stage, d: Duration) {
        self.nanos[stage as usize] += u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    }
}

/// Charges the time since the last lap to a stage, when timing is on
/// (and reads no clock when it is off).
struct Laps<'a> {
    timing: Option<(&'a mut StageTimes, Instant)>,
}

impl<'a> Laps<'a> {
    fn start(times: Option<&'a mut StageTimes>) -> Self {
        Laps {
            timing: times.map(|t| (t, Instant::now())),
        }
    }

    fn lap(&mut self, stage: Stage) {
        if let Some((times, last)) = &mut self.timing {
            let now = Instant::now();
            times.add(stage, now - *last);
            *last = now;
        }
    }
}

/// Quantizes `a` into `xq` once when the layers reading it are ternary;
/// returns whether it did.
fn quantize_for(
    layers: &[&Linear],
    a: &[f32],
    n: usize,
    xq: &mut QuantizedActivations,
    par: Parallelism<'_>,
) -> Result<bool> {
    let ternary = layers.iter().any(|l| matches!(l, Linear::Ternary(_)));
    if ternary {
        xq.quantize_into_par("hidden state", a, n, a.len() / n, par)?;
    }
    Ok(ternary)
}

/// RMSNorm with `weight` of every row of `x` into `out`.
fn rms_norm_rows(weight: &[f32], eps: f32) -> impl Fn(&[f32], &mut [f32]) + Sync + '_ {
    move |x, out| rms_norm_into(x, weight, eps, out)
}

/// `f` over matching runs of rows of `x` and `out` (`n` rows each, of any
/// widths), split over the pool's threads when there are enough rows (a
/// batch or a prompt): per-row work such as norms and activations would
/// otherwise run on the calling thread alone while the kernels' threads
/// wait. Each row's result is the same either way.
fn for_rows<F>(par: Parallelism<'_>, n: usize, x: &[f32], out: &mut [f32], f: F)
where
    F: Fn(&[f32], &mut [f32]) + Sync,
{
    match (par, par.rows_per_task(n)) {
        (Parallelism::Pool(pool), Some(rows)) => {
            let (wx, wo) = (x.len() / n, out.len() / n);
            pool.install(|| {
                x.par_chunks(rows * wx)
                    .zip(out.par_chunks_mut(rows * wo))
                    .for_each(|(x, o)| f(x, o))
            })
        }
        _ => f(x, out),
    }
}

/// `out [n, rows] = x [n, cols] · Wᵀ`. Ternary layers read `xq`, which
/// holds `x` quantized when `quantized` is true and is refilled otherwise.
#[allow(clippy::too_many_arguments)]
fn linear(
    layer: &Linear,
    x: &[f32],
    quantized: bool,
    xq: &mut QuantizedActivations,
    n: usize,
    out: &mut [f32],
    dots: &mut Vec<i32>,
    par: Parallelism<'_>,
) -> Result<()> {
    match layer {
        Linear::Ternary(b) => {
            if !quantized {
                xq.quantize_into_par("hidden state", x, n, b.in_features(), par)?;
            }
            b.forward_quantized(xq, out, dots, par)?;
        }
        Linear::Dense(m) => {
            // Row-parallel: each output row's weights are read once for
            // all `n` tokens. Q8_0/Q4_K/Q6_K rows dot in integers against
            // int8 blocks of `x`, as in llama.cpp (see `lm_head`).
            let (rows, cols) = (m.rows(), m.cols());
            let mut by_row = vec![0.0f32; rows * n];
            let mut acts = BlockQ8Activations::new();
            let integer = m.quantize_activations(&x[..n * cols], &mut acts);
            let work = |r: usize, o: &mut [f32]| {
                if integer {
                    m.dot_row_quantized(r, &acts, o);
                } else {
                    m.dot_row_many(r, &x[..n * cols], o);
                }
            };
            match par {
                Parallelism::Sequential => by_row
                    .chunks_mut(n)
                    .enumerate()
                    .for_each(|(r, o)| work(r, o)),
                Parallelism::Pool(pool) => pool.install(|| {
                    by_row
                        .par_chunks_mut(n)
                        .enumerate()
                        .for_each(|(r, o)| work(r, o))
                }),
            }
            for (r, col) in by_row.chunks(n).enumerate() {
                for (t, &v) in col.iter().enumerate() {
                    out[t * rows + r] = v;
                }
            }
        }
        Linear::Float { weight, rows, cols } => {
            for (xt, ot) in x.chunks_exact(*cols).zip(out.chunks_exact_mut(*rows)) {
                for (r, o) in ot.iter_mut().enumerate() {
                    *o = dot(xt, &weight[r * cols..(r + 1) * cols]);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvPool;

    fn values(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed % 20_001) as f32 - 10_000.0) / 4_000.0
            })
            .collect()
    }

    #[test]
    fn four_keys_or_value_rows_at_once_equal_one_at_a_time() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for d in (1..40).chain([64, 96, 100, 128]) {
            let q = values(d, &mut seed);
            let ks: Vec<Vec<f32>> = (0..4).map(|_| values(d, &mut seed)).collect();
            let four = score4(&q, [0, 1, 2, 3].map(|r| &ks[r][..]));
            for r in 0..4 {
                assert_eq!(four[r].to_bits(), score(&q, &ks[r]).to_bits(), "d {d}");
            }
            let p = [0.1, 0.7, 0.15, 0.05];
            let mut o4 = values(d, &mut seed);
            let mut o1 = o4.clone();
            accumulate4(&mut o4, p, [0, 1, 2, 3].map(|r| &ks[r][..]));
            for r in 0..4 {
                o1.iter_mut()
                    .zip(&ks[r])
                    .for_each(|(o, v)| *o = p[r].mul_add(*v, *o));
            }
            assert_eq!(o4, o1, "d {d}");
        }
    }

    #[test]
    fn every_attention_version_computes_the_same_bits() {
        for d in [20, 37, 96] {
            attention_versions_agree(d);
        }
    }

    fn attention_versions_agree(d: usize) {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        // Blocks of 5 positions: runs end inside and between groups of four.
        let (heads, group, positions) = (4, 2, 23);
        let kv = heads / group * d;
        let pool = KvPool::new(1, kv, 5, 1 << 20).expect("pool");
        let mut cache = KvCache::paged(&pool, positions, positions).expect("cache");
        cache.reserve(positions).expect("room");
        cache.write(
            0,
            &values(positions * kv, &mut seed),
            &values(positions * kv, &mut seed),
        );
        cache.advance(positions);
        // The last 7 positions as queries, heads 1..4 in one task.
        let span = Span {
            offset: 0,
            len: 7,
            start: positions - 7,
        };
        let q = values(span.len * heads * d, &mut seed);
        let task = HeadTask {
            layer: 0,
            q: &q,
            cache: &cache,
            span,
            h: heads * d,
            kv,
            d,
            heads: 1..4,
            group,
            scale: 0.3,
        };
        let run = |version: HeadAttention| {
            let mut out = vec![f32::NAN; 3 * span.len * d];
            let mut scores = vec![0.0; 3 * positions];
            version.run(&task, &mut out, &mut scores);
            out
        };
        let plain = run(HeadAttention::Plain);
        assert!(plain.iter().all(|v| v.is_finite()));
        // Each head alone gives its rows of the three-head task.
        for head in 1..4 {
            let one = HeadTask {
                layer: 0,
                q: &q,
                cache: &cache,
                span,
                h: heads * d,
                kv,
                d,
                heads: head..head + 1,
                group,
                scale: 0.3,
            };
            let mut out = vec![0.0; span.len * d];
            let mut scores = vec![0.0; positions];
            HeadAttention::Plain.run(&one, &mut out, &mut scores);
            let k = head - 1;
            assert_eq!(out, plain[k * span.len * d..(k + 1) * span.len * d]);
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert_eq!(run(HeadAttention::Avx2), plain);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert_eq!(run(HeadAttention::Avx512), plain);
            }
        }
    }
}
