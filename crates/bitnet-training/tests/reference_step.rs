//! One QAT step against transformers' `autobitlinear` online mode
//! (`tools/make_training_fixtures.py`): the loss, every parameter's
//! gradient, and the loss after one AdamW step. Twice: with the BitLinear
//! forwards as float GEMMs, and on the integer ternary kernels the trainer
//! uses.

use bitnet_core::Parallelism;
use bitnet_core::autograd::{IGNORE_INDEX, QuantizedLinear, Tape};
use bitnet_models::safetensors::SafetensorsCheckpoint;
use bitnet_training::ternary_linear::TernaryLinear;
use bitnet_training::{Optimizer, OptimizerConfig, TrainableModel};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qat_step")
}

/// Loss of the fixture batch (labels = inputs, shifted inside like HF) and
/// the gradients in parameter order.
fn loss_and_grads(
    model: &TrainableModel,
    ids: &[u32],
    batch: usize,
    seq: usize,
    kernel: Option<&dyn QuantizedLinear>,
) -> (f32, Vec<Vec<f32>>) {
    let mut targets = vec![IGNORE_INDEX; ids.len()];
    for b in 0..batch {
        for t in 0..seq - 1 {
            targets[b * seq + t] = ids[b * seq + t + 1];
        }
    }
    let mut tape = match kernel {
        Some(k) => Tape::with_quantized_linear(Parallelism::Sequential, k),
        None => Tape::new(Parallelism::Sequential),
    };
    let lambdas = vec![1.0; model.config().num_layers];
    let f = model
        .forward(&mut tape, ids, batch, seq, &lambdas, true)
        .unwrap();
    let loss = tape.cross_entropy(f.logits, &targets).unwrap();
    let mut grads = tape.backward(loss).unwrap();
    let g = f.params.iter().map(|&v| grads.take(v).unwrap()).collect();
    (tape.scalar(loss), g)
}

#[test]
fn loss_gradients_and_adamw_step_match_transformers() {
    check(None);
}

#[test]
fn the_same_on_the_integer_ternary_kernels() {
    check(Some(&TernaryLinear::detect()));
}

fn check(kernel: Option<&dyn QuantizedLinear>) {
    let dir = fixture();
    let mut model = TrainableModel::from_hf_dir(&dir).unwrap();
    let exp = SafetensorsCheckpoint::from_files(&[dir.join("expected.safetensors")]).unwrap();
    let raw = exp.raw("input_ids").unwrap();
    let (batch, seq) = (raw.shape[0], raw.shape[1]);
    let ids: Vec<u32> = raw
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let want_loss = exp.f32("loss", &[1]).unwrap()[0];
    let (loss, grads) = loss_and_grads(&model, &ids, batch, seq, kernel);
    let rel = ((loss - want_loss) / want_loss).abs();
    eprintln!("loss {loss} vs {want_loss} (rel {rel:.2e})");
    assert!(rel < 1e-4, "loss {loss} vs {want_loss}");
    for (p, g) in model.params().iter().zip(&grads) {
        let want = exp.f32(&format!("grad.{}", p.name), &p.dims).unwrap();
        let diff: f64 = g
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        eprintln!("{}: |diff|/|grad| {:.2e}", p.name, diff / norm);
        assert!(diff / norm < 1e-3, "{}: rel diff {}", p.name, diff / norm);
    }
    // Two groups as the fixture: weight decay 0.1 on projections only.
    let cfg = OptimizerConfig::default();
    let mut opt = Optimizer::new(cfg, model.params()).unwrap();
    opt.step(
        model.params_mut(),
        &grads,
        1e-3,
        0.1,
        Parallelism::Sequential,
    )
    .unwrap();
    let (after, _) = loss_and_grads(&model, &ids, batch, seq, kernel);
    let want_after = exp.f32("loss_after", &[1]).unwrap()[0];
    eprintln!("loss after one AdamW step {after} vs {want_after}");
    assert!(((after - want_after) / want_after).abs() < 1e-3);
}
