//! Checks quantizers, HF packing and `BitLinear` against fixtures written by
//! HF transformers' own BitNet code (`tools/make_fixtures.py`): codes and
//! scales exactly, `bitlinear` outputs bit for bit, the others to 1e-6 of
//! the output's magnitude — on every kernel backend this CPU runs.

use bitnet_core::Parallelism;
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::{hf2bit, runtime::PackedTernary};
use bitnet_quant::kernels::{Backend, TernaryKernel};
use bitnet_quant::quantize::int8::QuantizedActivations;
use bitnet_quant::quantize::ternary::{Granularity, quantize};
use safetensors::SafeTensors;

const FIXTURE: &[u8] = include_bytes!("fixtures/bitlinear_reference.safetensors");

struct Fixture<'a>(SafeTensors<'a>);

impl Fixture<'_> {
    fn raw(&self, name: &str) -> (Vec<usize>, &[u8]) {
        let t = self
            .0
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        (t.shape().to_vec(), t.data())
    }
    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (s, d) = self.raw(name);
        (
            s,
            d.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }
    fn i8(&self, name: &str) -> Vec<i8> {
        self.raw(name).1.iter().map(|&b| b as i8).collect()
    }
    fn u8(&self, name: &str) -> Vec<u8> {
        self.raw(name).1.to_vec()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], exact: bool) {
    assert_eq!(got.len(), want.len(), "{what}");
    let magnitude = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if exact {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
        } else {
            assert!(
                (g - w).abs() <= 1e-6 * magnitude,
                "{what}[{i}]: {g} vs {w} (scale {magnitude})"
            );
        }
    }
}

#[test]
fn reference_examples() {
    let f = Fixture(SafeTensors::deserialize(FIXTURE).unwrap());
    let (_, x) = f.f32("act_example.x");
    let q = QuantizedActivations::quantize("act_example.x", &x, 1, 6).unwrap();
    assert_eq!(q.codes(0), f.i8("act_example.codes").as_slice());
    let (_, w) = f.f32("weight_example.w");
    let t = quantize("weight_example.w", &w, 1, 4, Granularity::PerTensor).unwrap();
    assert_eq!(t.codes, f.i8("weight_example.codes"));
}

#[test]
fn every_case_matches_transformers() {
    let f = Fixture(SafeTensors::deserialize(FIXTURE).unwrap());
    for case in 0..6 {
        let p = |s: &str| format!("c{case}.{s}");
        let (xs, x) = f.f32(&p("x"));
        let (ws, w) = f.f32(&p("w"));
        let (tokens, cols, rows) = (xs[0], xs[1], ws[0]);
        assert_eq!(ws[1], cols);

        // Activation codes and scales: exact.
        let q = QuantizedActivations::quantize(&p("x"), &x, tokens, cols).unwrap();
        let want_codes = f.i8(&p("x_codes"));
        let (_, want_scales) = f.f32(&p("x_scale"));
        for t in 0..tokens {
            assert_eq!(
                q.codes(t),
                &want_codes[t * cols..(t + 1) * cols],
                "c{case} token {t}"
            );
            assert_eq!(
                q.scale(t).to_bits(),
                want_scales[t].to_bits(),
                "c{case} scale {t}"
            );
        }

        // Weight codes exact. The scale may differ by an ulp: PyTorch sums
        // |W| in a SIMD cascade whose order depends on its build, we sum in
        // f64 (the correctly rounded mean); exact means (the tie cases) agree.
        let tw = quantize(&p("w"), &w, rows, cols, Granularity::PerTensor).unwrap();
        assert_eq!(tw.codes, f.i8(&p("w_codes")), "c{case} weight codes");
        let want_scale = f.f32(&p("w_scale")).1[0];
        assert!(
            (tw.scales[0] - want_scale).abs() <= 2.0 * f32::EPSILON * want_scale,
            "c{case} w_scale"
        );

        // HF packing: byte-exact both ways.
        let packed = f.u8(&p("packed"));
        assert_eq!(
            hf2bit::pack(&tw.codes, rows, cols).unwrap(),
            packed,
            "c{case} pack"
        );
        let codes = hf2bit::unpack(&packed, rows, cols).unwrap();
        assert_eq!(codes, tw.codes, "c{case} unpack");

        let runtime = PackedTernary::from_codes(&codes, rows, cols).unwrap();
        let ws_auto = f.f32(&p("weight_scale_autobitlinear")).1[0];
        let ws_bit = f.f32(&p("weight_scale_bitlinear")).1[0];
        for backend in Backend::available() {
            let kernel = TernaryKernel::new(backend).unwrap();
            let what = |s: &str| format!("c{case} {s} on {backend}");
            let layer = |ws, conv| {
                BitLinear::new(runtime.clone(), WeightScale::Tensor(ws), conv)
                    .unwrap()
                    .with_kernel(kernel)
            };
            let bit = layer(ws_bit, ScaleConvention::Divide);
            let y = bit.forward(&x, tokens, Parallelism::Sequential).unwrap();
            assert_close(
                &what("bitlinear offline"),
                &y,
                &f.f32(&p("y_bitlinear_offline")).1,
                true,
            );

            let auto = layer(ws_auto, ScaleConvention::Multiply);
            let y = auto.forward(&x, tokens, Parallelism::Sequential).unwrap();
            assert_close(
                &what("autobitlinear offline"),
                &y,
                &f.f32(&p("y_autobitlinear_offline")).1,
                false,
            );

            let online = BitLinear::from_ternary(&tw).unwrap().with_kernel(kernel);
            let y = online.forward(&x, tokens, Parallelism::Sequential).unwrap();
            assert_close(
                &what("autobitlinear online"),
                &y,
                &f.f32(&p("y_online")).1,
                false,
            );
        }
    }
}
