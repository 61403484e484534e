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
use bitnet_core::ops::rows::{RopeTable, dot, relu2, rms_norm_into, silu, softmax_in_place};
use bitnet_models::config::{Activation, BitNetConfig};
use bitnet_models::weights::{BitNetWeights, Layer, Linear};
use bitnet_quant::quantize::int8::QuantizedActivations;
use rayon::prelude::*;
use std::path::Path;

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
    /// the positions `which` selects.
    pub fn forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        which: Logits,
        par: Parallelism<'_>,
    ) -> Result<Vec<f32>> {
        let c = self.config();
        if ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        if cache.layers() != c.num_layers || cache.kv_dim() != c.kv_dim() {
            return Err(Error::CacheMismatch(format!(
                "cache has {} layers of width {}, model {} of width {}",
                cache.layers(),
                cache.kv_dim(),
                c.num_layers,
                c.kv_dim()
            )));
        }
        cache.reserve(ids.len())?;
        if cache.len() + ids.len() > self.rope.len() {
            return Err(Error::ContextFull {
                needed: cache.len() + ids.len(),
                capacity: self.rope.len(),
            });
        }
        let (n, h) = (ids.len(), c.hidden_size);
        let mut x = vec![0.0f32; n * h];
        for (i, (&id, row)) in ids.iter().zip(x.chunks_exact_mut(h)).enumerate() {
            let id_usize = id as usize;
            if id_usize >= c.vocab_size {
                return Err(Error::TokenOutOfRange {
                    id,
                    position: i,
                    vocab: c.vocab_size,
                });
            }
            row.copy_from_slice(&self.weights.embed_tokens[id_usize * h..(id_usize + 1) * h]);
        }
        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.layer_forward(l, layer, &mut x, n, cache, par)?;
        }
        cache.advance(n);

        let rows: &[f32] = match which {
            Logits::All => &x,
            Logits::Last => &x[(n - 1) * h..],
        };
        let mut normed = vec![0.0f32; rows.len()];
        rms_norm_into(rows, &self.weights.norm, c.rms_norm_eps, &mut normed);
        Ok(self.lm_head(&normed, par))
    }

    fn layer_forward(
        &self,
        l: usize,
        layer: &Layer,
        x: &mut [f32],
        n: usize,
        cache: &mut KvCache,
        par: Parallelism<'_>,
    ) -> Result<()> {
        let c = self.config();
        let (h, kv, f, d) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
        let start = cache.len();

        // Attention.
        let mut a = vec![0.0f32; n * h];
        rms_norm_into(x, &layer.input_layernorm, c.rms_norm_eps, &mut a);
        let (mut q, mut k, mut v) = (vec![0.0; n * h], vec![0.0; n * kv], vec![0.0; n * kv]);
        let shared = quantize_for(&[&layer.q_proj, &layer.k_proj, &layer.v_proj], &a, n, h)?;
        linear(&layer.q_proj, &a, shared.as_ref(), n, &mut q, par)?;
        linear(&layer.k_proj, &a, shared.as_ref(), n, &mut k, par)?;
        linear(&layer.v_proj, &a, shared.as_ref(), n, &mut v, par)?;
        for i in 0..n {
            for head in q[i * h..(i + 1) * h].chunks_exact_mut(d) {
                self.rope.rotate_in_place(head, start + i);
            }
            for head in k[i * kv..(i + 1) * kv].chunks_exact_mut(d) {
                self.rope.rotate_in_place(head, start + i);
            }
        }
        cache.write(l, &k, &v);
        let mut o = vec![0.0f32; n * h];
        self.attention(l, &q, cache, start, n, &mut o);
        let mut o_normed = vec![0.0f32; n * h];
        rms_norm_into(&o, &layer.attn_sub_norm, c.rms_norm_eps, &mut o_normed);
        let mut proj = vec![0.0f32; n * h];
        linear(&layer.o_proj, &o_normed, None, n, &mut proj, par)?;
        x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);

        // Feed-forward.
        rms_norm_into(x, &layer.post_attention_layernorm, c.rms_norm_eps, &mut a);
        let (mut gate, mut up) = (vec![0.0f32; n * f], vec![0.0f32; n * f]);
        let shared = quantize_for(&[&layer.gate_proj, &layer.up_proj], &a, n, h)?;
        linear(&layer.gate_proj, &a, shared.as_ref(), n, &mut gate, par)?;
        linear(&layer.up_proj, &a, shared.as_ref(), n, &mut up, par)?;
        let act = match c.activation {
            Activation::Relu2 => relu2,
            Activation::Silu => silu,
        };
        gate.iter_mut().zip(&up).for_each(|(g, u)| *g = act(*g) * u);
        let mut inner = vec![0.0f32; n * f];
        rms_norm_into(&gate, &layer.ffn_sub_norm, c.rms_norm_eps, &mut inner);
        linear(&layer.down_proj, &inner, None, n, &mut proj, par)?;
        x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        Ok(())
    }

    /// Causal attention of `n` new queries (positions `start..start + n`)
    /// over the cached keys and values of layer `l`, into `o` `[n, hidden]`.
    fn attention(
        &self,
        l: usize,
        q: &[f32],
        cache: &KvCache,
        start: usize,
        n: usize,
        o: &mut [f32],
    ) {
        let c = self.config();
        let (h, kv, d) = (c.hidden_size, c.kv_dim(), c.head_dim);
        let group = c.num_heads / c.num_kv_heads;
        let (keys, values) = cache.read(l, start + n);
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0.0f32; start + n];
        for i in 0..n {
            let visible = start + i + 1;
            for head in 0..c.num_heads {
                let kv_off = (head / group) * d;
                let qh = &q[i * h + head * d..i * h + (head + 1) * d];
                for (j, s) in scores[..visible].iter_mut().enumerate() {
                    *s = dot(qh, &keys[j * kv + kv_off..j * kv + kv_off + d]) * scale;
                }
                // At least one position is visible, so the row is never all -inf.
                softmax_in_place(&mut scores[..visible]);
                let out = &mut o[i * h + head * d..i * h + (head + 1) * d];
                out.fill(0.0);
                for (j, &p) in scores[..visible].iter().enumerate() {
                    let vj = &values[j * kv + kv_off..j * kv + kv_off + d];
                    out.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v);
                }
            }
        }
    }

    /// `[rows, vocab]` logits of normalized hidden states `x` `[rows, hidden]`.
    fn lm_head(&self, x: &[f32], par: Parallelism<'_>) -> Vec<f32> {
        let c = self.config();
        let (h, vocab) = (c.hidden_size, c.vocab_size);
        let w = self.weights.output_weight();
        let rows = x.len() / h;
        let mut logits = vec![0.0f32; rows * vocab];
        // Logits of vocabulary rows `first..` for hidden state `xt`.
        let fill = |xt: &[f32], first: usize, out: &mut [f32]| {
            for (k, o) in out.iter_mut().enumerate() {
                let v = first + k;
                *o = dot(xt, &w[v * h..(v + 1) * h]);
            }
        };
        match par {
            Parallelism::Sequential => {
                for (t, out) in logits.chunks_exact_mut(vocab).enumerate() {
                    fill(&x[t * h..(t + 1) * h], 0, out);
                }
            }
            Parallelism::Pool(pool) => pool.install(|| {
                // Split the vocabulary so one position also uses every thread.
                logits
                    .par_chunks_mut(vocab)
                    .enumerate()
                    .for_each(|(t, out)| {
                        let xt = &x[t * h..(t + 1) * h];
                        out.par_chunks_mut(1024)
                            .enumerate()
                            .for_each(|(chunk, o)| fill(xt, chunk * 1024, o));
                    })
            }),
        }
        logits
    }
}

/// Quantizes `a` once when the layers reading it are ternary.
fn quantize_for(
    layers: &[&Linear],
    a: &[f32],
    n: usize,
    cols: usize,
) -> Result<Option<QuantizedActivations>> {
    if layers.iter().any(|l| matches!(l, Linear::Ternary(_))) {
        Ok(Some(QuantizedActivations::quantize(
            "hidden state",
            a,
            n,
            cols,
        )?))
    } else {
        Ok(None)
    }
}

/// `out [n, rows] = x [n, cols] · Wᵀ`, reusing `xq` for ternary layers when given.
fn linear(
    layer: &Linear,
    x: &[f32],
    xq: Option<&QuantizedActivations>,
    n: usize,
    out: &mut [f32],
    par: Parallelism<'_>,
) -> Result<()> {
    match layer {
        Linear::Ternary(b) => {
            let owned;
            let q = match xq {
                Some(q) => q,
                None => {
                    owned = QuantizedActivations::quantize("hidden state", x, n, b.in_features())?;
                    &owned
                }
            };
            let mut scratch = Vec::new();
            b.forward_quantized(q, out, &mut scratch, par)?;
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
