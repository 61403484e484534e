//! The wgpu backend against the CPU engine and against HF transformers'
//! fixtures, on whatever adapter the machine has (lavapipe in CI, where
//! `BITNET_TEST_WGPU=1` makes a missing adapter a failure, not a skip).

use bitnet_core::Parallelism;
use bitnet_inference::device::{
    BatchForward, CpuSlots, SlotComparison, check_bad_feeds, compare_slots,
};
use bitnet_inference::scheduler::{Scheduler, SchedulerConfig};
use bitnet_inference::{BitNetModel, CpuSequence, GenerateParams, Logits, SequenceForward};
use bitnet_wgpu::selftest::{greedy_on, max_rel_diff};
use bitnet_wgpu::{AdapterChoice, Error, GpuContext, GpuOptions, WgpuModel};
use safetensors::SafeTensors;
use std::path::PathBuf;
use std::sync::Arc;

fn gpu() -> Option<GpuContext> {
    match GpuContext::open(AdapterChoice::First {
        allow_software: true,
    }) {
        Ok(c) => Some(c),
        Err(e) if std::env::var_os("BITNET_TEST_WGPU").is_some() => {
            panic!("BITNET_TEST_WGPU is set, but: {e}")
        }
        Err(e) => {
            eprintln!("skipped, no GPU adapter: {e}");
            None
        }
    }
}

fn fixture(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-inference/tests/fixtures/tiny")
        .join(variant)
}

struct Expected(Vec<u8>);

impl Expected {
    fn load(variant: &str) -> Self {
        Expected(std::fs::read(fixture(variant).join("expected.safetensors")).unwrap())
    }
    fn data(&self, name: &str) -> Vec<u8> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.tensor(name).unwrap().data().to_vec()
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.data(name)
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        self.data(name)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

fn small() -> GpuOptions {
    GpuOptions {
        context: 64,
        max_batch_tokens: 5,
        sequences: 1,
        memory_budget: None,
    }
}

fn kjv() -> BitNetModel {
    BitNetModel::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-kjv-5m"))
        .unwrap()
}

#[test]
fn self_test_passes() {
    let Some(ctx) = gpu() else { return };
    let report = bitnet_wgpu::selftest::run(ctx).unwrap();
    eprintln!("{report:#?}");
    for k in &report.kernels {
        assert!(k.passed(), "{k:?}");
    }
    assert!(report.greedy_equal, "{report:?}");
    assert!(report.passed(), "{report:?}");
}

#[test]
fn logits_and_greedy_match_transformers_for_ternary_variants() {
    for variant in [
        "online",
        "autobitlinear_offline",
        "bitlinear_offline",
        "online_untied",
    ] {
        let Some(ctx) = gpu() else { return };
        let model = BitNetModel::from_hf_dir(&fixture(variant)).unwrap();
        let mut g = WgpuModel::new(ctx, model.weights(), small()).unwrap();
        let exp = Expected::load(variant);
        for p in 0..3 {
            let ids = exp.ids(&format!("ids_p{p}"));
            g.truncate(0);
            let got = g.forward(&ids, Logits::All).unwrap();
            let want = exp.f32(&format!("logits_p{p}"));
            let rel = max_rel_diff(&got, &want);
            eprintln!("{variant} prompt {p}: max logit diff {rel:.2e} of the largest");
            assert!(rel < 1e-4, "{variant} prompt {p}: {rel}");
        }
        let prompt = exp.ids("ids_p1");
        let want = exp.ids("greedy_p1");
        g.truncate(0);
        let mut got = greedy_on(&mut g, &prompt, want.len()).unwrap();
        // The reference stops after an end-of-sequence id; so does the comparison.
        got.truncate(want.len());
        assert_eq!(got, want, "{variant}");
    }
}

#[test]
fn decoding_through_the_cache_gives_the_full_forward_logits() {
    let Some(ctx) = gpu() else { return };
    let model = kjv();
    let mut g = WgpuModel::new(ctx, model.weights(), small()).unwrap();
    let ids: Vec<u32> = (0..23u32).map(|i| (i * 131 + 7) % 2048).collect();
    let full = g.forward(&ids, Logits::All).unwrap();
    let vocab = 2048;
    g.truncate(0);
    g.forward(&ids[..9], Logits::Last).unwrap();
    for (i, &id) in ids.iter().enumerate().skip(9) {
        let step = g.forward(&[id], Logits::Last).unwrap();
        let rel = max_rel_diff(&step, &full[i * vocab..(i + 1) * vocab]);
        assert!(rel < 1e-5, "position {i}: {rel}");
    }
    // And against the CPU engine at every position.
    let mut cpu = CpuSequence::new(&model, 64, Parallelism::Sequential);
    let want = cpu.forward(&ids, Logits::All).unwrap();
    let rel = max_rel_diff(&full, &want);
    eprintln!("kjv-5m: max logit diff against the CPU {rel:.2e} of the largest");
    assert!(rel < 1e-3, "{rel}");
}

#[test]
fn bad_input_is_an_error_and_leaves_the_sequence_as_it_was() {
    let Some(ctx) = gpu() else { return };
    let model = BitNetModel::from_hf_dir(&fixture("online")).unwrap();
    let mut g = WgpuModel::new(ctx, model.weights(), small()).unwrap();
    g.forward(&[1, 2, 3], Logits::Last).unwrap();
    assert!(matches!(
        g.forward(&[], Logits::Last),
        Err(bitnet_inference::Error::EmptyInput)
    ));
    assert!(matches!(
        g.forward(&[4, 256], Logits::Last),
        Err(bitnet_inference::Error::TokenOutOfRange { id: 256, .. })
    ));
    assert!(matches!(
        g.forward(&[1; 62], Logits::Last),
        Err(bitnet_inference::Error::ContextFull { needed: 65, .. })
    ));
    assert_eq!(g.len(), 3);

    // A NaN reaching a layer input is reported, not turned into tokens.
    let Some(ctx) = gpu() else { return };
    let mut weights = model.weights().clone();
    weights.layers[1].post_attention_layernorm[3] = f32::NAN;
    let mut g = WgpuModel::new(ctx, &weights, small()).unwrap();
    let err = g.forward(&[1, 2, 3], Logits::Last).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    assert_eq!(g.len(), 0);
}

#[test]
fn float_layers_and_small_budgets_are_refused_with_a_reason() {
    let Some(ctx) = gpu() else { return };
    let float = BitNetModel::from_hf_dir(&fixture("float")).unwrap();
    let err = WgpuModel::new(ctx, float.weights(), small()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("float weights"), "{err}");

    let Some(ctx) = gpu() else { return };
    let model = BitNetModel::from_hf_dir(&fixture("online")).unwrap();
    let err = WgpuModel::new(
        ctx,
        model.weights(),
        GpuOptions {
            memory_budget: Some(1024),
            ..small()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    assert!(err.to_string().contains("budget"), "{err}");

    let count = bitnet_wgpu::adapters().len();
    let err = GpuContext::open(AdapterChoice::Index(count + 5)).unwrap_err();
    assert!(matches!(err, Error::NoSuchAdapter { .. }), "{err}");
}

/// Several sequences in one pass, each in its own slot of the cache:
/// prompts joining while others decode, a prompt longer than a pass, a
/// slot freed and reused (`bitnet_inference::device::compare_slots`).
/// Every step equals each sequence run alone on the GPU (the batching adds
/// nothing), and the CPU's batched reference to the GPU's usual rounding.
#[test]
fn batched_slots_match_each_sequence_alone_and_the_cpu_step_by_step() {
    let Some(ctx) = gpu() else { return };
    let model = Arc::new(kjv());
    let options = GpuOptions {
        sequences: 3,
        ..small()
    };
    let mut g = WgpuModel::new(ctx, model.weights(), options).unwrap();
    assert_eq!((BatchForward::slots(&g), g.slot_capacity()), (3, 64));
    let mut alone: Vec<WgpuModel> = (0..3)
        .map(|_| WgpuModel::new(gpu().unwrap(), model.weights(), small()).unwrap())
        .collect();
    let mut alone: Vec<&mut dyn SequenceForward> = alone
        .iter_mut()
        .map(|m| m as &mut dyn SequenceForward)
        .collect();
    let mut cpu = CpuSlots::new(Arc::clone(&model), 3, 64, 1).unwrap();
    let report = compare_slots(&mut g, &mut cpu, &mut alone).unwrap();
    assert!(report.lengths_agree);
    assert_eq!(report.vs_alone.len(), report.vs_reference.len());
    let alone_worst = SlotComparison::worst(&report.vs_alone);
    let cpu_worst = SlotComparison::worst(&report.vs_reference);
    eprintln!(
        "batched slots: max logit diff {alone_worst:.2e} against each sequence alone, {cpu_worst:.2e} against the CPU"
    );
    assert!(alone_worst < 1e-5, "{report:?}");
    assert!(cpu_worst < 5e-3, "{report:?}");
    check_bad_feeds(&mut g).unwrap();
}

/// The server's engine on the GPU: the same greedy tokens as on the CPU,
/// with more requests than slots.
#[test]
fn the_scheduler_serves_from_gpu_slots_with_the_cpu_tokens() {
    let Some(ctx) = gpu() else { return };
    let model = Arc::new(kjv());
    let options = GpuOptions {
        sequences: 2,
        ..small()
    };
    let g = WgpuModel::new(ctx, model.weights(), options).unwrap();
    let params = GenerateParams {
        max_tokens: 8,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|i| {
            (0..3 + 4 * i)
                .map(|j| (j * 97 + i * 13 + 5) % 2048)
                .collect()
        })
        .collect();
    let config = || SchedulerConfig {
        step_tokens: 8,
        threads: 1,
        ..SchedulerConfig::default()
    };
    let on_gpu = Scheduler::start_slots(Box::new(g), config())
        .unwrap()
        .generate_all(&prompts, &params)
        .unwrap();
    let on_cpu = Scheduler::start(Arc::clone(&model), config())
        .unwrap()
        .generate_all(&prompts, &params)
        .unwrap();
    assert_eq!(on_gpu, on_cpu);
}
