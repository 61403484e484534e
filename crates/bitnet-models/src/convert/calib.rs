//! Calibration: run token sequences through the *float* model, layer by
//! layer, and collect each linear layer's input statistic `XᵀX`
//! ([`bitnet_quant::ptq::Hessian`]) for GPTQ and for measuring output
//! error.
//!
//! The forward pass is a plain f32 one written for this purpose (the
//! engine's pass quantizes activations to int8, which is the thing being
//! calibrated for): RMSNorm, q/k/v, rotate-half RoPE, causal GQA
//! attention, attention sub-norm, o_proj, then the FFN with its sub-norm
//! (NUMERICS.md). All sequences advance one layer at a time, so only one
//! layer's weights are in memory. Inputs come from the float model
//! throughout (GPTQ's "parallel" variant, not the sequential one that feeds
//! quantized outputs forward).
//!
//! Sequences alternate between a calibration set and a held-out set; the
//! held-out statistics measure what each method buys on tokens it did not
//! see. Cost: `layers × (3·hidden² + intermediate²)` f64 per set, so this
//! is for models up to a few hundred million parameters.

use super::source::{LinearIn, Source};
use crate::config::{Activation, BitNetConfig};
use crate::error::{Error, Result};
use bitnet_core::faer::Mat;
use bitnet_quant::ptq::Hessian;

/// Input statistics of one block's four distinct linear inputs: q/k/v,
/// o_proj, gate/up, down_proj.
#[derive(Clone, Debug)]
pub struct LayerStats {
    /// Indexed by [`input_of`] of the linear.
    pub inputs: [Hessian; 4],
}

/// Which of the four statistics linear `k` (in `LINEARS` order) reads.
pub fn input_of(k: usize) -> usize {
    [0, 0, 0, 1, 2, 2, 3][k]
}

/// Calibration and held-out statistics for every block.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Statistics of the calibration sequences, per block.
    pub calib: Vec<LayerStats>,
    /// Statistics of the held-out sequences, per block.
    pub held_out: Vec<LayerStats>,
    /// Tokens in each set.
    pub tokens: (usize, usize),
}

fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for row in x.chunks_exact_mut(n) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * r * g;
        }
    }
}

fn normed(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    rms_norm(&mut y, w, eps);
    y
}

/// `x W^T` for row-major `x` `[t, cols]` and `w` `[rows, cols]`.
fn matmul(x: &[f32], t: usize, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let xm = Mat::<f32>::from_fn(t, cols, |i, j| x[i * cols + j]);
    let wm = Mat::<f32>::from_fn(cols, rows, |i, j| w[j * cols + i]);
    let y = &xm * &wm;
    let mut out = vec![0.0f32; t * rows];
    for i in 0..t {
        for j in 0..rows {
            out[i * rows + j] = y[(i, j)];
        }
    }
    out
}

fn rope(x: &mut [f32], t: usize, heads: usize, d: usize, theta: f32) {
    let half = d / 2;
    for p in 0..t {
        for h in 0..heads {
            let v = &mut x[(p * heads + h) * d..(p * heads + h + 1) * d];
            for i in 0..half {
                let f = 1.0 / theta.powf(2.0 * i as f32 / d as f32);
                let (s, c) = (p as f32 * f).sin_cos();
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

/// Causal attention of one sequence; q `[t, H·d]`, k and v `[t, KV·d]`.
fn attention(q: &[f32], k: &[f32], v: &[f32], t: usize, c: &BitNetConfig) -> Vec<f32> {
    let (hq, hk, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let group = hq / hk;
    let mut out = vec![0.0f32; t * hq * d];
    let scale = 1.0 / (d as f32).sqrt();
    let mut p = vec![0.0f32; t];
    for h in 0..hq {
        let kh = h / group;
        for i in 0..t {
            let qi = &q[(i * hq + h) * d..(i * hq + h + 1) * d];
            let mut m = f32::NEG_INFINITY;
            for j in 0..=i {
                let kj = &k[(j * hk + kh) * d..(j * hk + kh + 1) * d];
                p[j] = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                m = m.max(p[j]);
            }
            let mut z = 0.0;
            for pj in &mut p[..=i] {
                *pj = (*pj - m).exp();
                z += *pj;
            }
            let o = &mut out[(i * hq + h) * d..(i * hq + h + 1) * d];
            for (j, pj) in p[..=i].iter().enumerate() {
                let vj = &v[(j * hk + kh) * d..(j * hk + kh + 1) * d];
                for (oo, vv) in o.iter_mut().zip(vj) {
                    *oo += pj / z * vv;
                }
            }
        }
    }
    out
}

/// Runs `sequences` through the float weights of `src`; sequence `i` goes
/// to the held-out set when `i % 4 == 3`, to calibration otherwise.
pub(crate) fn calibrate(src: &Source, sequences: &[Vec<u32>]) -> Result<Calibration> {
    let c = src.config().clone();
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let embed = src.embed()?;
    let mut states: Vec<Vec<f32>> = sequences
        .iter()
        .map(|s| {
            let mut x = vec![0.0f32; s.len() * h];
            for (t, &id) in s.iter().enumerate() {
                if (id as usize) >= c.vocab_size {
                    return Err(Error::Config(format!(
                        "calibration token {id} is outside the vocabulary ({})",
                        c.vocab_size
                    )));
                }
                embed.row_into(id as usize, &mut x[t * h..(t + 1) * h]);
            }
            Ok(x)
        })
        .collect::<Result<_>>()?;
    let new_stats = || LayerStats {
        inputs: [
            Hessian::new(h),
            Hessian::new(h),
            Hessian::new(h),
            Hessian::new(f),
        ],
    };
    let mut calib = Vec::with_capacity(c.num_layers);
    let mut held_out = Vec::with_capacity(c.num_layers);
    let q_err = |e: bitnet_quant::Error| Error::Config(format!("calibration: {e}"));
    for layer in 0..c.num_layers {
        let norms = src.layer_norms(layer)?;
        let w: Vec<Vec<f32>> = (0..7)
            .map(|k| {
                Ok(match src.linear(layer, k)? {
                    LinearIn::Float(w) => w,
                    LinearIn::Ternary { codes, scale } => {
                        let (_, cols) = super::Linears::dims(&c, k);
                        codes
                            .iter()
                            .enumerate()
                            .map(|(i, &q)| f32::from(q) * scale.at(i, cols))
                            .collect()
                    }
                })
            })
            .collect::<Result<_>>()?;
        let dims = |k: usize| super::Linears::dims(&c, k);
        let (mut cs, mut hs) = (new_stats(), new_stats());
        for (si, x) in states.iter_mut().enumerate() {
            let stats = if si % 4 == 3 { &mut hs } else { &mut cs };
            let t = x.len() / h;
            let a = normed(x, &norms[0], c.rms_norm_eps);
            stats.inputs[0].accumulate(&a).map_err(q_err)?;
            let mut q = matmul(&a, t, &w[0], dims(0).0, h);
            let mut k = matmul(&a, t, &w[1], dims(1).0, h);
            let v = matmul(&a, t, &w[2], dims(2).0, h);
            rope(&mut q, t, c.num_heads, c.head_dim, c.rope_theta);
            rope(&mut k, t, c.num_kv_heads, c.head_dim, c.rope_theta);
            let mut o = attention(&q, &k, &v, t, &c);
            rms_norm(&mut o, &norms[2], c.rms_norm_eps);
            stats.inputs[1].accumulate(&o).map_err(q_err)?;
            let o = matmul(&o, t, &w[3], h, dims(3).1);
            for (xv, ov) in x.iter_mut().zip(&o) {
                *xv += ov;
            }
            let n = normed(x, &norms[1], c.rms_norm_eps);
            stats.inputs[2].accumulate(&n).map_err(q_err)?;
            let g = matmul(&n, t, &w[4], f, h);
            let u = matmul(&n, t, &w[5], f, h);
            let mut m: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| match c.activation {
                    Activation::Relu2 => g.max(0.0) * g.max(0.0) * u,
                    Activation::Silu => g / (1.0 + (-g).exp()) * u,
                })
                .collect();
            rms_norm(&mut m, &norms[3], c.rms_norm_eps);
            stats.inputs[3].accumulate(&m).map_err(q_err)?;
            let d = matmul(&m, t, &w[6], h, f);
            for (xv, dv) in x.iter_mut().zip(&d) {
                *xv += dv;
            }
        }
        calib.push(cs);
        held_out.push(hs);
    }
    let count = |s: &[LayerStats]| s.first().map_or(0, |l| l.inputs[0].tokens);
    Ok(Calibration {
        tokens: (count(&calib), count(&held_out)),
        calib,
        held_out,
    })
}
