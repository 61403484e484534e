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
        let simd = OutputPass::for_backend(self.kernel.backend());
        let scale_rows = |t0: usize, o: &mut [f32]| {
            let sums = SumsView {
                sums: scratch,
                tokens,
                t0,
            };
            scale_out(
                &sums,
                &self.scale,
                self.convention,
                x.scales(),
                o,
                rows,
                simd,
            );
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

/// Where [`BitLinear::forward_quantized`]'s output pass reads one task's
/// integer sums: `sums[r * tokens + t0 + j]` is row `r`, token `t0 + j`.
struct SumsView<'a> {
    sums: &'a [i32],
    tokens: usize,
    t0: usize,
}

/// How the output pass turns 8 rows x 8 tokens of sums into floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputPass {
    /// Element by element (the reference).
    Scalar,
    /// Eight rows converted, transposed and scaled in AVX registers.
    #[cfg(target_arch = "x86_64")]
    Avx,
}

impl OutputPass {
    /// AVX wherever the kernels run on x86-64 SIMD (every such CPU has
    /// AVX), so detection stays the kernel's, made once.
    fn for_backend(backend: crate::kernels::Backend) -> Self {
        match backend {
            #[cfg(target_arch = "x86_64")]
            crate::kernels::Backend::Avx2
            | crate::kernels::Backend::Avx512Vnni
            | crate::kernels::Backend::Amx => OutputPass::Avx,
            _ => OutputPass::Scalar,
        }
    }
}

/// Writes `o` (`[nt, rows]` for tokens `t0..t0 + nt`) from the sums:
/// `d / sx · w` ([`ScaleConvention::Multiply`]) or `d / (w · sx)`
/// ([`ScaleConvention::Divide`]) for sum `d`, token scale `sx` and row
/// scale `w`. Both passes compute each element with the same operations,
/// so they agree bit for bit.
fn scale_out(
    s: &SumsView<'_>,
    scale: &WeightScale,
    convention: ScaleConvention,
    token_scales: &[f32],
    o: &mut [f32],
    rows: usize,
    pass: OutputPass,
) {
    const B: usize = 8;
    let nt = o.len() / rows;
    let sx = &token_scales[s.t0..s.t0 + nt];
    for r0 in (0..rows).step_by(B) {
        let nr = B.min(rows - r0);
        let mut ws = [0.0f32; B];
        for (i, w) in ws.iter_mut().enumerate().take(nr) {
            *w = scale.get(r0 + i);
        }
        // Tokens before `j0` went through whole 8 x 8 blocks.
        let j0 = match pass {
            #[cfg(target_arch = "x86_64")]
            OutputPass::Avx if nr == B => {
                let mut j0 = 0;
                while j0 + B <= nt {
                    let from = r0 * s.tokens + s.t0 + j0;
                    let to = j0 * rows + r0;
                    // Last read: row r0 + 7, token t0 + j0 + 7; last write:
                    // token j0 + 7, row r0 + 7.
                    assert!(
                        from + 7 * s.tokens + B <= s.sums.len() && to + 7 * rows + B <= o.len()
                    );
                    let sxb: &[f32; B] = sx[j0..j0 + B].try_into().expect("eight scales");
                    // SAFETY: the backend ran x86-64 SIMD kernels, so AVX
                    // is present; the assert bounds every load and store.
                    unsafe {
                        crate::kernels::x86_64::avx2::scale_out_block8(
                            s.sums.as_ptr().add(from),
                            s.tokens,
                            &ws,
                            sxb,
                            convention == ScaleConvention::Divide,
                            o.as_mut_ptr().add(to),
                            rows,
                        )
                    };
                    j0 += B;
                }
                // The tokens left over (a decoded token is one) a column
                // at a time.
                while j0 < nt {
                    let from = r0 * s.tokens + s.t0 + j0;
                    let to = j0 * rows + r0;
                    assert!(from + 7 * s.tokens < s.sums.len() && to + B <= o.len());
                    // SAFETY: as above; the assert bounds every load and store.
                    unsafe {
                        crate::kernels::x86_64::avx2::scale_out_column8(
                            s.sums.as_ptr().add(from),
                            s.tokens,
                            &ws,
                            sx[j0],
                            convention == ScaleConvention::Divide,
                            o.as_mut_ptr().add(to),
                        )
                    };
                    j0 += 1;
                }
                j0
            }
            _ => 0,
        };
        for (j, &sxj) in sx.iter().enumerate().skip(j0) {
            let dst = &mut o[j * rows + r0..][..nr];
            for (i, (y, &w)) in dst.iter_mut().zip(&ws).enumerate() {
                let d = s.sums[(r0 + i) * s.tokens + s.t0 + j] as f32;
                *y = match convention {
                    ScaleConvention::Multiply => d / sxj * w,
                    ScaleConvention::Divide => d / (w * sxj),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::ternary::quantize;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The output pass this CPU's kernels use against the scalar
        /// reference, bit for bit: both conventions, tensor and channel
        /// scales, row and token counts with and without partial blocks,
        /// tasks starting past token 0.
        #[test]
        fn output_passes_agree(
            rows in 1usize..40,
            tokens in 1usize..40,
            t0_pick in 0usize..40,
            channel in any::<bool>(),
            divide in any::<bool>(),
            seed in any::<u32>(),
        ) {
            let t0 = t0_pick % tokens;
            let nt = (tokens - t0).min(16);
            let mix = |i: usize| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
            let sums: Vec<i32> = (0..rows * tokens).map(|i| (mix(i) % 20_001) as i32 - 10_000).collect();
            let token_scales: Vec<f32> = (0..tokens).map(|t| 1.0 + (mix(t + 7) % 1000) as f32 / 37.0).collect();
            let scale = if channel {
                WeightScale::Channel((0..rows).map(|r| 0.1 + (mix(r + 99) % 1000) as f32 / 333.0).collect())
            } else {
                WeightScale::Tensor(0.731)
            };
            let convention = if divide { ScaleConvention::Divide } else { ScaleConvention::Multiply };
            let view = SumsView { sums: &sums, tokens, t0 };
            let mut reference = vec![f32::NAN; nt * rows];
            scale_out(&view, &scale, convention, &token_scales, &mut reference, rows, OutputPass::Scalar);
            for j in 0..nt {
                for r in 0..rows {
                    let d = sums[r * tokens + t0 + j] as f32;
                    let (w, sx) = (scale.get(r), token_scales[t0 + j]);
                    let want = if divide { d / (w * sx) } else { d / sx * w };
                    prop_assert_eq!(reference[j * rows + r].to_bits(), want.to_bits());
                }
            }
            let mut fast = vec![f32::NAN; nt * rows];
            let pass = OutputPass::for_backend(crate::kernels::Backend::detect());
            scale_out(&view, &scale, convention, &token_scales, &mut fast, rows, pass);
            prop_assert_eq!(
                fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                reference.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

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
