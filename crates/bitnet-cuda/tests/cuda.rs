//! The CUDA backend: its kernels compile for Hopper wherever NVRTC is
//! installed (CI sets `BITNET_TEST_NVRTC=1`, which makes a missing NVRTC a
//! failure, not a skip), and, on a machine with an NVIDIA GPU, every kernel
//! and the whole model against the CPU engine and HF transformers'
//! fixtures (`BITNET_TEST_CUDA=1` makes a missing GPU a failure).

use bitnet_core::Parallelism;
use bitnet_cuda::selftest::{greedy_on, max_rel_diff};
use bitnet_cuda::{CudaDevice, CudaModel, CudaOptions, Error, KERNEL_NAMES};
use bitnet_inference::device::{
    BatchForward, CpuSlots, SlotComparison, check_bad_feeds, compare_slots,
};
use bitnet_inference::scheduler::{Scheduler, SchedulerConfig};
use bitnet_inference::{BitNetModel, CpuSequence, GenerateParams, Logits, SequenceForward};
use safetensors::SafeTensors;
use std::path::PathBuf;
use std::sync::Arc;

fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v != "0")
}

fn device() -> Option<CudaDevice> {
    match CudaDevice::open(0) {
        Ok(d) => Some(d),
        Err(e) if required("BITNET_TEST_CUDA") => panic!("BITNET_TEST_CUDA is set, but: {e}"),
        Err(e) => {
            eprintln!("skipped, no CUDA device: {e}");
            None
        }
    }
}

#[test]
fn every_kernel_compiles_for_hopper() {
    if !bitnet_cuda::nvrtc_present() {
        assert!(
            !required("BITNET_TEST_NVRTC"),
            "BITNET_TEST_NVRTC is set, but libnvrtc does not load (LD_LIBRARY_PATH?)"
        );
        eprintln!("skipped: NVRTC is not installed");
        return;
    }
    for arch in ["sm_90", "sm_80"] {
        let c = bitnet_cuda::compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        eprintln!(
            "{arch}: {} bytes of machine code for {} kernels (NVRTC {}.{})",
            c.cubin.len(),
            KERNEL_NAMES.len(),
            c.nvrtc_version.0,
            c.nvrtc_version.1
        );
        assert!(c.cubin.starts_with(b"\x7fELF"), "{arch}: not an ELF cubin");
    }
    // An architecture NVRTC does not know is an error with NVRTC's reason.
    let err = bitnet_cuda::compile("sm_1").unwrap_err();
    assert!(matches!(err, Error::Compile { .. }), "{err}");
}

#[test]
fn no_driver_is_an_error_not_a_panic() {
    if bitnet_cuda::driver_present() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    assert!(matches!(CudaDevice::open(0), Err(Error::NoDriver)));
    assert!(matches!(bitnet_cuda::devices(), Err(Error::NoDriver)));
    let msg = Error::NoDriver.to_string();
    assert!(msg.contains("--device cpu"), "{msg}");
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

fn small() -> CudaOptions {
    CudaOptions {
        context: 64,
        max_batch_tokens: 5,
        ..CudaOptions::default()
    }
}

#[test]
fn self_test_passes() {
    let Some(dev) = device() else { return };
    let report = bitnet_cuda::selftest::run(&dev).unwrap();
    eprintln!("{report:#?}");
    for k in &report.kernels {
        assert!(k.passed(), "{k:?}");
    }
    assert!(report.greedy_equal, "{report:?}");
    assert!(report.graph, "{report:?}");
    assert!(report.passed(), "{report:?}");
}

#[test]
fn logits_and_greedy_match_transformers_for_ternary_variants() {
    let Some(dev) = device() else { return };
    for variant in [
        "online",
        "autobitlinear_offline",
        "bitlinear_offline",
        "online_untied",
    ] {
        let model = BitNetModel::from_hf_dir(&fixture(variant)).unwrap();
        let mut g = CudaModel::new(dev.clone(), model.weights(), small()).unwrap();
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
        got.truncate(want.len());
        assert_eq!(got, want, "{variant}");
    }
}

#[test]
fn decoding_through_the_cache_gives_the_full_forward_logits() {
    let Some(dev) = device() else { return };
    let model = BitNetModel::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-kjv-5m"),
    )
    .unwrap();
    let mut g = CudaModel::new(dev, model.weights(), small()).unwrap();
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
    assert_eq!(g.graph_status(), Ok(true));
    let mut cpu = CpuSequence::new(&model, 64, Parallelism::Sequential);
    let want = cpu.forward(&ids, Logits::All).unwrap();
    let rel = max_rel_diff(&full, &want);
    eprintln!("kjv-5m: max logit diff against the CPU {rel:.2e} of the largest");
    assert!(rel < 1e-3, "{rel}");
}

#[test]
fn bad_input_and_budgets_are_errors_that_leave_the_sequence_as_it_was() {
    let Some(dev) = device() else { return };
    let model = BitNetModel::from_hf_dir(&fixture("online")).unwrap();
    let mut g = CudaModel::new(dev.clone(), model.weights(), small()).unwrap();
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

    let mut weights = model.weights().clone();
    weights.layers[1].post_attention_layernorm[3] = f32::NAN;
    let mut g = CudaModel::new(dev.clone(), &weights, small()).unwrap();
    let err = g.forward(&[1, 2, 3], Logits::Last).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    assert_eq!(g.len(), 0);

    let float = BitNetModel::from_hf_dir(&fixture("float")).unwrap();
    let err = CudaModel::new(dev.clone(), float.weights(), small()).unwrap_err();
    assert!(err.to_string().contains("float weights"), "{err}");
    let err = CudaModel::new(
        dev,
        model.weights(),
        CudaOptions {
            memory_budget: Some(1024),
            ..small()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    let err = CudaDevice::open(1000).unwrap_err();
    assert!(matches!(err, Error::NoSuchDevice { .. }), "{err}");
}

fn kjv() -> BitNetModel {
    BitNetModel::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-kjv-5m"))
        .unwrap()
}

/// Several sequences in one pass, each in its own slot of the cache:
/// prompts joining while others decode, a prompt longer than a pass, a
/// slot freed and reused (`bitnet_inference::device::compare_slots`).
/// Every step equals each sequence run alone on the GPU (the batching adds
/// nothing), and the CPU's batched reference to the GPU's usual rounding.
#[test]
fn batched_slots_match_each_sequence_alone_and_the_cpu_step_by_step() {
    let Some(dev) = device() else { return };
    let model = Arc::new(kjv());
    let options = CudaOptions {
        sequences: 3,
        ..small()
    };
    let mut g = CudaModel::new(dev.clone(), model.weights(), options).unwrap();
    assert_eq!((BatchForward::slots(&g), g.slot_capacity()), (3, 64));
    let mut alone: Vec<CudaModel> = (0..3)
        .map(|_| CudaModel::new(dev.clone(), model.weights(), small()).unwrap())
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
    assert_eq!(g.graph_status(), Ok(true));
    check_bad_feeds(&mut g).unwrap();
}

/// The server's engine on CUDA slots: the CPU scheduler's greedy tokens,
/// with more requests than slots.
#[test]
fn the_scheduler_serves_from_cuda_slots_with_the_cpu_tokens() {
    let Some(dev) = device() else { return };
    let model = Arc::new(kjv());
    let options = CudaOptions {
        sequences: 2,
        ..small()
    };
    let g = CudaModel::new(dev, model.weights(), options).unwrap();
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
