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
use std::any::Any;

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

impl TernaryLinear {
    /// `w` as an inference layer: packed codes with their one scale.
    /// Codes outside {-1, 0, 1}, rows past the kernels' width limit or a
    /// non-finite scale are refused (the tape's float GEMM takes over).
    fn layer(&self, w: QuantizedRows<'_>) -> Option<BitLinear> {
        if w.scales.len() != 1 {
            return None;
        }
        let packed = PackedTernary::from_codes(w.codes, w.rows, w.cols).ok()?;
        // The values are `code / scale` on both sides: the inference
        // layer's `Divide` convention, whose output pass already turns the
        // kernel's [row, token] sums into [token, row] floats.
        let layer = BitLinear::new(
            packed,
            WeightScale::Tensor(w.scales[0]),
            ScaleConvention::Divide,
        )
        .ok()?;
        Some(layer.with_kernel(self.kernel))
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
        // A weight prepared for this step is packed already; one prepared
        // by another kernel (or not at all) is packed here.
        let packed;
        let layer = match w.prepared.and_then(|p| p.downcast_ref::<BitLinear>()) {
            Some(l) if l.out_features() == n && l.in_features() == w.cols => l,
            _ => match self.layer(w) {
                Some(l) => {
                    packed = l;
                    &packed
                }
                None => return false,
            },
        };
        let Ok(acts) = QuantizedActivations::from_codes(x.codes, x.scales, m, x.cols) else {
            return false;
        };
        let mut sums = Vec::new();
        layer.forward_quantized(&acts, out, &mut sums, par).is_ok()
    }

    fn prepare(&self, w: QuantizedRows<'_>) -> Option<Box<dyn Any + Send + Sync>> {
        Some(Box::new(self.layer(w)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_core::autograd::{Tape, TernaryWeight};
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

    /// A weight quantized once and packed by `prepare` (what a step's
    /// shards share) gives the same forward and gradients, bit for bit, as
    /// quantizing it on the tape; a weight prepared by no kernel still runs.
    #[test]
    fn a_shared_prepared_weight_equals_the_tape_quantizer() {
        let (m, k, n) = (9, 300, 21);
        let xs: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 17) as f32 - 8.0).collect();
        let ws: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let kernel = TernaryLinear::detect();
        let mut prepared = TernaryWeight::new(&ws);
        prepared.prepare(&kernel, n, k);
        assert!(format!("{prepared:?}").contains("prepared: true"));
        let plain = TernaryWeight::new(&ws);
        let run = |shared: Option<&TernaryWeight>| {
            let mut tape = Tape::with_quantized_linear(Parallelism::Sequential, &kernel);
            let x = tape.leaf(xs.clone(), &[m, k], true).unwrap();
            let w = tape.leaf_borrowed(&ws, &[n, k], true).unwrap();
            let xq = tape.act_quant_ste(x, 1.0).unwrap();
            let wq = match shared {
                Some(q) => tape.weight_quant_shared(w, q).unwrap(),
                None => tape.weight_quant_ste(w, 1.0).unwrap(),
            };
            let y = tape.linear(xq, wq).unwrap();
            let l = tape.sum(y).unwrap();
            let g = tape.backward(l).unwrap();
            (
                tape.value(y).to_vec(),
                g.get(x).unwrap().to_vec(),
                g.get(w).unwrap().to_vec(),
            )
        };
        let want = run(None);
        assert_eq!(run(Some(&prepared)), want);
        assert_eq!(run(Some(&plain)), want);
        // A quantization of another size is refused, not misread.
        let mut tape = Tape::new(Parallelism::Sequential);
        let w = tape.leaf(vec![0.5; 4], &[2, 2], true).unwrap();
        assert!(tape.weight_quant_shared(w, &prepared).is_err());
    }
}
