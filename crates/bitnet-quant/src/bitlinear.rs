//! `BitLinear` for inference: f32 input → per-token int8 → ternary kernel →
//! scales → f32 output.
//!
//! The two offline checkpoint classes store opposite scales (NUMERICS.md):
//!
//! | class | `weight_scale` | output |
//! |---|---|---|
//! | `autobitlinear` | `mean |W|` | `(Σ q·t) / s_x * weight_scale` |
//! | `bitlinear` | `1 / mean |W|` | `(Σ q·t) / (weight_scale * s_x)` |
//!
//! The online `autobitlinear` (latent float weights) quantizes at load and
//! uses the `bitlinear` form with the absmean scale `s_w = 1 / mean |W|`.
//! The operations run in the reference's order so results match it to f32
//! rounding (bit for bit for `bitlinear`).

use crate::error::{Error, Result};
use crate::formats::runtime::PackedTernary;
use crate::kernels::TernaryKernel;
use crate::quantize::int8::QuantizedActivations;
use crate::quantize::ternary::{Granularity, TernaryWeights};
use bitnet_core::Parallelism;
use rayon::prelude::*;

/// How a stored weight scale turns integer dot products into outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleConvention {
    /// `autobitlinear`: the scale is `mean |W|` and multiplies.
    Multiply,
    /// `bitlinear`: the scale is `1 / mean |W|` and divides.
    Divide,
}

/// Weight scales: one for the tensor or one per output row.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightScale {
    /// One scale for every row.
    Tensor(f32),
    /// One scale per output row.
    Channel(Vec<f32>),
}

impl WeightScale {
    #[inline]
    fn get(&self, row: usize) -> f32 {
        match self {
            WeightScale::Tensor(s) => *s,
            WeightScale::Channel(v) => v[row],
        }
    }
}

/// A ternary linear layer ready for inference.
///
/// ```
/// use bitnet_quant::bitlinear::BitLinear;
/// use bitnet_quant::quantize::ternary::{quantize, Granularity};
/// use bitnet_core::Parallelism;
///
/// let w = quantize("w", &[1.0, -1.0, 0.1, 1.0, 1.0, 1.0], 2, 3, Granularity::PerTensor).unwrap();
/// let layer = BitLinear::from_ternary(&w).unwrap();
/// let y = layer.forward(&[1.0, 2.0, 4.0], 1, Parallelism::Sequential).unwrap();
/// assert_eq!(y.len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct BitLinear {
    weights: PackedTernary,
    scale: WeightScale,
    convention: ScaleConvention,
    kernel: TernaryKernel,
}

impl BitLinear {
    /// A layer from packed weights and their stored scale.
    pub fn new(
        weights: PackedTernary,
        scale: WeightScale,
        convention: ScaleConvention,
    ) -> Result<Self> {
        let ok = |s: f32| s.is_finite() && s > 0.0;
        match &scale {
            WeightScale::Tensor(s) if !ok(*s) => {
                return Err(Error::BadScale {
                    what: "weight",
                    value: *s,
                });
            }
            WeightScale::Channel(v) => {
                if v.len() != weights.rows() {
                    return Err(Error::ShapeMismatch {
                        op: "BitLinear",
                        detail: format!("{} channel scales for {} rows", v.len(), weights.rows()),
                    });
                }
                if let Some(&value) = v.iter().find(|&&s| !ok(s)) {
                    return Err(Error::BadScale {
                        what: "channel",
                        value,
                    });
                }
            }
            WeightScale::Tensor(_) => {}
        }
        Ok(BitLinear {
            weights,
            scale,
            convention,
            kernel: TernaryKernel::detect(),
        })
    }

    /// A layer from freshly quantized weights (the online `autobitlinear` path).
    pub fn from_ternary(w: &TernaryWeights) -> Result<Self> {
        w.check()?;
        let scale = match w.granularity {
            Granularity::PerTensor => WeightScale::Tensor(w.scales[0]),
            Granularity::PerChannel => WeightScale::Channel(w.scales.clone()),
            Granularity::PerGroup(n) => {
                return Err(Error::Unsupported(format!(
                    "BitLinear needs per-tensor or per-channel scales; per-group ({n}) scales \
                     must be folded by the caller"
                )));
            }
        };
        let packed = PackedTernary::from_codes(&w.codes, w.rows, w.cols)?;
        BitLinear::new(packed, scale, ScaleConvention::Divide)
    }

    /// Uses `kernel` instead of the detected one (tests and benchmarks).
    pub fn with_kernel(mut self, kernel: TernaryKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weights.cols()
    }
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weights.rows()
    }
    /// The packed weights.
    pub fn weights(&self) -> &PackedTernary {
        &self.weights
    }
    /// The stored weight scale(s).
    pub fn scale(&self) -> &WeightScale {
        &self.scale
    }
    /// How the scale applies.
    pub fn convention(&self) -> ScaleConvention {
        self.convention
    }
    /// The per-tensor dequantizing multiplier (`mean |W|`, what
    /// `autobitlinear`, I2_S and TQ* store) whichever convention the layer
    /// was loaded with; `None` for per-channel scales.
    pub fn tensor_multiplier(&self) -> Option<f32> {
        match (&self.scale, self.convention) {
            (WeightScale::Tensor(s), ScaleConvention::Multiply) => Some(*s),
            (WeightScale::Tensor(s), ScaleConvention::Divide) => Some(1.0 / *s),
            (WeightScale::Channel(_), _) => None,
        }
    }

    /// `x` is row-major `[tokens, in]`; returns `[tokens, out]`.
    pub fn forward(&self, x: &[f32], tokens: usize, par: Parallelism<'_>) -> Result<Vec<f32>> {
        let q = QuantizedActivations::quantize("BitLinear input", x, tokens, self.in_features())?;
        let mut out = vec![0.0; tokens * self.out_features()];
        let mut scratch = Vec::new();
        self.forward_quantized(&q, &mut out, &mut scratch, par)?;
        Ok(out)
    }

    /// Forward from already-quantized activations (shared by q/k/v, say),
    /// writing `[tokens, out]` into `out`; `scratch` is reused across calls.
    pub fn forward_quantized(
        &self,
        x: &QuantizedActivations,
        out: &mut [f32],
        scratch: &mut Vec<i32>,
        par: Parallelism<'_>,
    ) -> Result<()> {
        let (tokens, rows) = (x.tokens(), self.out_features());
        if out.len() != tokens * rows {
            return Err(Error::ShapeMismatch {
                op: "BitLinear",
                detail: format!("output holds {} values, need {tokens} x {rows}", out.len()),
            });
        }
        scratch.clear();
        scratch.resize(tokens * rows, 0);
        if tokens == 1 {
            self.kernel.gemv(&self.weights, x, 0, scratch, par)?;
        } else {
            self.kernel.gemm(&self.weights, x, scratch, par)?;
        }
        // `scratch` is `[rows, tokens]`, `out` `[tokens, rows]`: each task
        // takes a few tokens, so it reads short contiguous runs of
        // `scratch` and writes a few sequential streams of `out`.
        const TOKENS_PER_TASK: usize = 16;
        let scratch = &scratch[..];
        // Through a small transposed block, so the division runs 16 rows
        // wide in vector registers (it is exact per element either way).
        const ROWS_PER_BLOCK: usize = 16;
        let scale_rows = |t0: usize, o: &mut [f32]| {
            let nt = o.len() / rows;
            let mut block = [[0i32; ROWS_PER_BLOCK]; TOKENS_PER_TASK];
            let mut ws = [0.0f32; ROWS_PER_BLOCK];
            for r0 in (0..rows).step_by(ROWS_PER_BLOCK) {
                let nr = ROWS_PER_BLOCK.min(rows - r0);
                for (i, w) in ws.iter_mut().enumerate().take(nr) {
                    *w = self.scale.get(r0 + i);
                    let dots = &scratch[(r0 + i) * tokens + t0..][..nt];
                    for (j, &d) in dots.iter().enumerate() {
                        block[j][i] = d;
                    }
                }
                for (j, dots) in block.iter().enumerate().take(nt) {
                    let sx = x.scale(t0 + j);
                    let dst = &mut o[j * rows + r0..j * rows + r0 + nr];
                    match self.convention {
                        ScaleConvention::Multiply => {
                            for ((y, &d), &w) in dst.iter_mut().zip(dots).zip(&ws) {
                                *y = d as f32 / sx * w;
                            }
                        }
                        ScaleConvention::Divide => {
                            for ((y, &d), &w) in dst.iter_mut().zip(dots).zip(&ws) {
                                *y = d as f32 / (w * sx);
                            }
                        }
                    }
                }
            }
        };
        match par {
            Parallelism::Pool(pool) if tokens > 1 => pool.install(|| {
                out.par_chunks_mut(TOKENS_PER_TASK * rows)
                    .enumerate()
                    .for_each(|(i, o)| scale_rows(i * TOKENS_PER_TASK, o))
            }),
            _ => out
                .chunks_mut(TOKENS_PER_TASK * rows)
                .enumerate()
                .for_each(|(i, o)| scale_rows(i * TOKENS_PER_TASK, o)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::ternary::quantize;

    #[test]
    fn conventions_agree_on_the_same_weights() {
        let data: Vec<f32> = (0..40)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let w = quantize("w", &data, 5, 8, Granularity::PerTensor).unwrap();
        let packed = PackedTernary::from_codes(&w.codes, 5, 8).unwrap();
        let div = BitLinear::new(
            packed.clone(),
            WeightScale::Tensor(w.scales[0]),
            ScaleConvention::Divide,
        )
        .unwrap();
        let mul = BitLinear::new(
            packed,
            WeightScale::Tensor(1.0 / w.scales[0]),
            ScaleConvention::Multiply,
        )
        .unwrap();
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.7).cos()).collect();
        let a = div.forward(&x, 2, Parallelism::Sequential).unwrap();
        let b = mul.forward(&x, 2, Parallelism::Sequential).unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        // Against float math on the dequantized operands.
        let xq = QuantizedActivations::quantize("x", &x, 2, 8)
            .unwrap()
            .dequantize();
        let wq = w.dequantize();
        for t in 0..2 {
            for r in 0..5 {
                let want: f32 = (0..8).map(|c| xq[t * 8 + c] * wq[r * 8 + c]).sum();
                assert!(
                    (a[t * 5 + r] - want).abs() < 1e-5,
                    "{} vs {want}",
                    a[t * 5 + r]
                );
            }
        }
    }

    #[test]
    fn rejects_bad_scales_and_shapes() {
        let p = PackedTernary::from_codes(&[0; 4], 2, 2).unwrap();
        assert!(
            BitLinear::new(p.clone(), WeightScale::Tensor(0.0), ScaleConvention::Divide).is_err()
        );
        assert!(
            BitLinear::new(
                p.clone(),
                WeightScale::Channel(vec![1.0]),
                ScaleConvention::Divide
            )
            .is_err()
        );
        let l = BitLinear::new(p, WeightScale::Tensor(1.0), ScaleConvention::Divide).unwrap();
        assert!(l.forward(&[1.0; 3], 1, Parallelism::Sequential).is_err());
        assert!(
            l.forward(&[f32::NAN, 1.0], 1, Parallelism::Sequential)
                .is_err()
        );
    }
}
