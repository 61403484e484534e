//! The forward pass of a fully quantized BitLinear on the inference
//! engine's ternary kernels.
//!
//! At `λ = 1` a BitLinear multiplies int8 activation codes by ternary
//! weight codes; the float GEMM of their dequantized values (what the
//! reference computes) is the same sum, rounded along the way. Here the
//! tape hands the codes to `bitnet-quant`'s [`TernaryKernel`], which sums
//! them exactly in integers, and the inference engine's own
//! [`BitLinear::forward_quantized`] scales each sum once: `Σ c·t / (s_w s_x)`.
//! In `perf record` of a training step on AVX2 these forwards took 12% of
//! samples where the float GEMMs had taken about 22%. The backward pass is
//! unchanged (float GEMMs of the dequantized values).

use bitnet_core::Parallelism;
use bitnet_core::autograd::{QuantizedLinear, QuantizedRows};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::runtime::PackedTernary;
use bitnet_quant::kernels::TernaryKernel;
use bitnet_quant::quantize::int8::QuantizedActivations;

/// [`QuantizedLinear`] on the fastest ternary kernels of this CPU.
#[derive(Clone, Copy, Debug)]
pub struct TernaryLinear {
    kernel: TernaryKernel,
}

impl TernaryLinear {
    /// The kernels detected for this CPU.
    pub fn detect() -> Self {
        TernaryLinear {
            kernel: TernaryKernel::detect(),
        }
    }

    /// A specific kernel (tests pin the reference).
    pub fn new(kernel: TernaryKernel) -> Self {
        TernaryLinear { kernel }
    }
}

impl QuantizedLinear for TernaryLinear {
    fn forward(
        &self,
        x: QuantizedRows<'_>,
        w: QuantizedRows<'_>,
        out: &mut [f32],
        par: Parallelism<'_>,
    ) -> bool {
        let (m, n) = (x.rows, w.rows);
        if x.cols != w.cols || out.len() != m * n || x.scales.len() != m || w.scales.len() != 1 {
            return false;
        }
        // Codes outside {-1, 0, 1}, rows past the kernels' width limit or a
        // non-finite scale are refused here: the float GEMM takes over.
        let Ok(packed) = PackedTernary::from_codes(w.codes, n, w.cols) else {
            return false;
        };
        // The values are `code / scale` on both sides: the inference
        // layer's `Divide` convention, whose output pass already turns the
        // kernel's [row, token] sums into [token, row] floats.
        let Ok(layer) = BitLinear::new(
            packed,
            WeightScale::Tensor(w.scales[0]),
            ScaleConvention::Divide,
        ) else {
            return false;
        };
        let Ok(acts) = QuantizedActivations::from_codes(x.codes, x.scales, m, x.cols) else {
            return false;
        };
        let mut sums = Vec::new();
        layer
            .with_kernel(self.kernel)
            .forward_quantized(&acts, out, &mut sums, par)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_core::autograd::Tape;
    use bitnet_quant::kernels::Backend;

    /// A quantized linear on the kernels equals the float GEMM of the same
    /// fake-quantized values (to f32 rounding), forward and backward, on
    /// one thread and on a pool (several token tasks, two weight tiles).
    #[test]
    fn matches_the_float_gemm_of_the_dequantized_values() {
        let (m, k, n) = (37, 300, 70);
        let pool = bitnet_core::build_pool(2).unwrap();
        let xs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let ws: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let run = |kernel: Option<&dyn QuantizedLinear>, par| {
            let mut tape = match kernel {
                Some(k) => Tape::with_quantized_linear(par, k),
                None => Tape::new(par),
            };
            let x = tape.leaf(xs.clone(), &[m, k], true).unwrap();
            let w = tape.leaf(ws.clone(), &[n, k], true).unwrap();
            let xq = tape.act_quant_ste(x, 1.0).unwrap();
            let wq = tape.weight_quant_ste(w, 1.0).unwrap();
            let y = tape.linear(xq, wq).unwrap();
            let l = tape.sum(y).unwrap();
            let g = tape.backward(l).unwrap();
            (
                tape.value(y).to_vec(),
                g.get(x).unwrap().to_vec(),
                g.get(w).unwrap().to_vec(),
            )
        };
        for (backend, par) in Backend::available()
            .into_iter()
            .flat_map(|b| [(b, Parallelism::Sequential), (b, Parallelism::Pool(&pool))])
        {
            let float = run(None, par);
            let kernel = TernaryLinear::new(TernaryKernel::new(backend).unwrap());
            let int = run(Some(&kernel), par);
            let max = float.0.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (a, b) in int.0.iter().zip(&float.0) {
                assert!((a - b).abs() <= 1e-5 * max, "{backend:?}: {a} vs {b}");
            }
            assert_eq!(int.1, float.1, "{backend:?}: input gradient");
            assert_eq!(int.2, float.2, "{backend:?}: weight gradient");
        }
    }
}
