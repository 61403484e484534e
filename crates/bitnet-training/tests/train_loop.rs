//! The training loop end to end on a tiny model: bit-identical resume,
//! NaN stop keeping the last good checkpoint, early stopping, bad inputs,
//! and exports (HF packed, GGUF I2_S and TQ2_0) that our engine loads with
//! the trainer's eval logits.

use bitnet_core::Parallelism;
use bitnet_inference::{BitNetModel, Logits};
use bitnet_models::gguf_model::TernaryType;
use bitnet_models::hf_export::FloatDtype;
use bitnet_training::trainer::{ModelSection, TrainConfig};
use bitnet_training::{Error, StopReason, Trainer, checkpoint, export};
use std::path::{Path, PathBuf};

fn tokenizer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-inference/tests/fixtures/tiny/online/tokenizer.json")
}

const TEXT: &str = "In the beginning the quick brown fox jumped over the lazy dog, and the dog \
    slept while the fox ran into the green wood. The wood was dark and the river was cold. ";

fn corpus(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, TEXT.repeat(12)).unwrap();
    p
}

fn config(dir: &Path, hidden: usize, steps: u64) -> TrainConfig {
    let mut c = TrainConfig {
        model: ModelSection {
            hidden_size: hidden,
            intermediate_size: hidden,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            max_position_embeddings: 64,
            init_std: 0.05,
            ..Default::default()
        },
        ..Default::default()
    };
    c.data.files = vec![corpus(dir)];
    c.data.tokenizer = tokenizer();
    c.data.seq_len = 16;
    c.data.val_fraction = 0.1;
    c.optim.lr = 3e-3;
    c.train.steps = steps;
    c.train.batch_size = 2;
    c.train.grad_accum = 2;
    c.train.eval_every = 2;
    c.train.eval_sequences = 4;
    c.train.checkpoint_every = 2;
    c.train.keep_last = 2;
    c.train.threads = 2;
    c.train.out_dir = dir.join("run");
    c
}

#[test]
fn resume_reproduces_the_loss_sequence_bit_for_bit() {
    let a = tempfile::tempdir().unwrap();
    let mut full = Trainer::new(config(a.path(), 64, 6), false).unwrap();
    assert_eq!(full.run(&mut |_| {}).unwrap(), StopReason::Finished);
    let want: Vec<u32> = full.history().iter().map(|m| m.loss.to_bits()).collect();
    assert_eq!(want.len(), 6);
    assert!(
        full.history()[5].loss < full.history()[0].loss,
        "{:?}",
        full.history()
    );
    assert!(a.path().join("run/loss.svg").exists());

    let b = tempfile::tempdir().unwrap();
    let cfg = config(b.path(), 64, 6);
    let mut first = Trainer::new(cfg.clone(), false).unwrap();
    for _ in 0..3 {
        first.train_step().unwrap();
    }
    first.save_checkpoint().unwrap();
    drop(first);
    // A fresh (non-resume) run must not touch the existing checkpoint.
    let e = Trainer::new(cfg.clone(), false).err().unwrap().to_string();
    assert!(e.contains("already holds checkpoints"), "{e}");
    let mut resumed = Trainer::new(cfg, true).unwrap();
    assert_eq!(resumed.step(), 3);
    let mut got = Vec::new();
    resumed.run(&mut |m| got.push(m.loss.to_bits())).unwrap();
    assert_eq!(got, want[3..]);
    assert_eq!(resumed.model(), full.model());
    // keep_last = 2
    assert_eq!(checkpoint::list(&b.path().join("run")).unwrap().len(), 2);
}

#[test]
fn nan_stops_and_keeps_the_last_good_checkpoint_and_early_stopping() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path(), 64, 50);
    cfg.optim.lr = 1e38;
    cfg.optim.weight_decay = 0.0;
    cfg.schedule = bitnet_training::LrSchedule::Constant { warmup: 0 };
    cfg.train.checkpoint_every = 1;
    cfg.train.clip_norm = 0.0;
    let mut t = Trainer::new(cfg, false).unwrap();
    let e = t.run(&mut |_| {}).unwrap_err();
    let Error::NonFiniteLoss {
        step,
        last_checkpoint,
        ..
    } = &e
    else {
        panic!("expected a NaN stop, got {e}");
    };
    let last = last_checkpoint.clone().unwrap();
    assert!(e.to_string().contains("last good checkpoint"));
    assert_eq!(
        checkpoint::latest(&d.path().join("run")).unwrap().unwrap(),
        last
    );
    let (_, _, s) = checkpoint::load(&last, None).unwrap();
    assert_eq!(s.step, *step);

    let d2 = tempfile::tempdir().unwrap();
    let mut cfg = config(d2.path(), 64, 50);
    cfg.optim.lr = 1e-12;
    cfg.train.eval_every = 1;
    cfg.train.patience = 2;
    cfg.train.min_delta = 1e-3;
    let mut t = Trainer::new(cfg, false).unwrap();
    assert_eq!(t.run(&mut |_| {}).unwrap(), StopReason::EarlyStopped);
    assert_eq!(t.step(), 3);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path(), 64, 2);
    cfg.model.num_heads = 3;
    let e = Trainer::new(cfg, false).err().unwrap().to_string();
    assert!(e.contains("multiple of num_heads"), "{e}");
    let mut cfg = config(d.path(), 64, 2);
    cfg.data.seq_len = 60;
    std::fs::write(d.path().join("small.txt"), "tiny corpus").unwrap();
    cfg.data.files = vec![d.path().join("small.txt")];
    let e = Trainer::new(cfg, false).err().unwrap().to_string();
    assert!(e.contains("too few for sequence length"), "{e}");
    let mut cfg = config(d.path(), 64, 2);
    cfg.train.batch_size = 0;
    assert!(Trainer::new(cfg, false).is_err());
    // A checkpoint from another config is refused on resume.
    let mut t = Trainer::new(config(d.path(), 64, 2), false).unwrap();
    t.train_step().unwrap();
    t.save_checkpoint().unwrap();
    let e = Trainer::new(config(d.path(), 32, 2), true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another model config"), "{e}");
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn exports_load_in_the_engine_with_the_trainers_logits() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path(), 256, 3);
    cfg.model.intermediate_size = 256;
    let mut t = Trainer::new(cfg, false).unwrap();
    t.run(&mut |_| {}).unwrap();
    let model = t.model();
    let ids: Vec<u32> = t.tokenizer().encode("the quick brown fox", false).unwrap();
    let want = model.eval_logits(&ids, Parallelism::Sequential).unwrap();

    let hf = d.path().join("hf");
    export::export_hf(model, &hf, FloatDtype::F32, Some(&tokenizer())).unwrap();
    assert!(hf.join("tokenizer.json").exists());
    // HF and I2_S keep the f32 scale: only summation order differs. TQ2_0
    // stores each block's scale as f16 (~5e-4 relative), so logits move by
    // that much through the layers; NUMERICS.md's whole-model tolerance is
    // far wider (0.05-0.2 absolute).
    let mut files = vec![("hf".to_string(), hf.clone(), 1e-4)];
    for ty in [TernaryType::I2S, TernaryType::Tq2_0] {
        assert!(export::gguf_supports(model, ty));
        let p = d.path().join(format!("model-{ty:?}.gguf"));
        export::export_gguf(model, &p, ty).unwrap();
        let tol = if ty == TernaryType::Tq2_0 { 1e-2 } else { 1e-4 };
        files.push((format!("{ty:?}"), p, tol));
    }
    for (name, path, tol) in files {
        let engine = BitNetModel::load(&path).unwrap();
        let mut cache = engine.new_cache(64);
        let got = engine
            .forward(&ids, &mut cache, Logits::All, Parallelism::Sequential)
            .unwrap();
        let diff = max_rel_diff(&got, &want);
        eprintln!("{name}: max |engine - trainer| / max|logit| = {diff:.2e}");
        assert!(diff < tol, "{name}: {diff}");
    }
    // Small shapes cannot be TQ2_0.
    let small = Trainer::new(config(&d.path().join("s"), 64, 1), false).unwrap();
    assert!(!export::gguf_supports(small.model(), TernaryType::Tq2_0));
    assert!(
        export::export_gguf(small.model(), &d.path().join("x.gguf"), TernaryType::Tq2_0).is_err()
    );
}

#[test]
fn distillation_from_a_float_teacher_and_progressive_quantization() {
    let d = tempfile::tempdir().unwrap();
    let mut tcfg = config(&d.path().join("teacher"), 64, 2);
    tcfg.model.quantized = false;
    let mut teacher = Trainer::new(tcfg, false).unwrap();
    teacher.run(&mut |_| {}).unwrap();
    // A float model has nothing ternary to export; its latent weights load back.
    assert!(export::to_weights(teacher.model()).is_err());
    let tdir = d.path().join("teacher-latent");
    teacher.save_latent(&tdir).unwrap();

    let mut cfg = config(&d.path().join("student"), 64, 4);
    cfg.distill = Some(bitnet_training::trainer::DistillSection {
        teacher: tdir,
        temperature: 2.0,
        alpha: 0.5,
    });
    cfg.quant = bitnet_training::QuantSchedule {
        start: 0,
        ramp: 4,
        per_layer: false,
    };
    let mut s = Trainer::new(cfg, false).unwrap();
    let mut lambdas = Vec::new();
    s.run(&mut |m| {
        assert!(m.loss.is_finite());
        lambdas.push(m.lambda);
    })
    .unwrap();
    assert_eq!(lambdas, vec![0.0, 0.25, 0.5, 0.75]);
}

/// A step split into per-thread shards is the one-tape step rounded in
/// another order: one thread (one shard), two threads (a shard per
/// sequence) and three threads (fewer shards than threads, each forking
/// onto the pool) give the same losses to float rounding.
#[test]
fn sharded_steps_match_a_single_tape() {
    let run = |threads: usize| {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = config(d.path(), 64, 4);
        cfg.train.threads = threads;
        cfg.train.eval_every = 0;
        cfg.train.checkpoint_every = 0;
        let mut t = Trainer::new(cfg, false).unwrap();
        (0..4)
            .map(|_| t.train_step().unwrap().loss)
            .collect::<Vec<f32>>()
    };
    let one = run(1);
    for threads in [2, 3] {
        let got = run(threads);
        for (a, b) in one.iter().zip(&got) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs(),
                "{threads} threads: {one:?} vs {got:?}"
            );
        }
    }
    assert!(one[3] < one[0], "{one:?}");
}
