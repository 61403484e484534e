//! `bitnet_models::convert`: float and ternary checkpoints converted to
//! every target reload with the codes of the reference absmean quantizer
//! and their scales; bad inputs fail with the tensor named; outputs appear
//! atomically and are not overwritten without `force`.

use bitnet_models::convert::{ConvertOptions, FloatPrecision, ScaleMode, Target, convert};
use bitnet_models::float_matrix::FloatEncoding;
use bitnet_models::gguf_model::TernaryType;
use bitnet_models::safetensors::SafetensorsCheckpoint;
use bitnet_models::synth::{Preset, synthesize};
use bitnet_models::weights::{BitNetWeights, Linear};
use bitnet_quant::bitlinear::ScaleConvention;
use bitnet_quant::quantize::ternary::{Granularity, quantize};
use std::path::{Path, PathBuf};

/// The tiny float BitNet checkpoint written by transformers (hidden 64).
fn float_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bitnet-inference/tests/fixtures/tiny/float")
}

const PROJ: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

fn linears(l: &bitnet_models::weights::Layer) -> [&Linear; 7] {
    [
        &l.q_proj,
        &l.k_proj,
        &l.v_proj,
        &l.o_proj,
        &l.gate_proj,
        &l.up_proj,
        &l.down_proj,
    ]
}

/// Codes and dequantizing multiplier of a per-tensor ternary layer.
fn codes_scale(l: &Linear) -> (Vec<i8>, f32) {
    let Linear::Ternary(b) = l else {
        panic!("not ternary")
    };
    assert_eq!(b.convention(), ScaleConvention::Multiply);
    (b.weights().to_codes(), b.tensor_multiplier().unwrap())
}

fn opts(target: Target) -> ConvertOptions {
    ConvertOptions {
        target,
        embeddings: FloatPrecision::F32,
        ..ConvertOptions::default()
    }
}

fn run(input: &Path, output: &Path, o: &ConvertOptions) -> bitnet_models::Result<usize> {
    let mut calls = 0;
    convert(input, output, o, &mut |_| calls += 1)?;
    Ok(calls)
}

/// Float → every target: the codes are the reference quantizer's, the
/// scale its `1 / s`, and every target reloads to the same weights.
#[test]
fn float_checkpoint_converts_to_the_reference_codes_in_every_target() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = SafetensorsCheckpoint::open_dir(&float_dir()).unwrap();
    let hf = tmp.path().join("hf");
    assert!(run(&float_dir(), &hf, &opts(Target::HfPacked)).unwrap() > 0);
    let i2s = tmp.path().join("m.gguf");
    run(&float_dir(), &i2s, &opts(Target::Gguf(TernaryType::I2S))).unwrap();
    // 64-wide rows do not fit TQ blocks: F16 ternary values instead.
    let tq = tmp.path().join("tq.gguf");
    let mut o = opts(Target::Gguf(TernaryType::Tq2_0));
    o.allow_fallback = true;
    run(&float_dir(), &tq, &o).unwrap();
    let loaded = [
        BitNetWeights::from_hf_dir(&hf).unwrap(),
        BitNetWeights::from_gguf(&i2s).unwrap(),
        BitNetWeights::from_gguf(&tq).unwrap(),
    ];
    for w in &loaded {
        for (i, layer) in w.layers.iter().enumerate() {
            for (k, lin) in linears(layer).into_iter().enumerate() {
                let name = format!("model.layers.{i}.{}.weight", PROJ[k]);
                let (rows, cols) = (lin.rows(), lin.cols());
                let f = ckpt.f32(&name, &[rows, cols]).unwrap();
                let want = quantize(&name, &f, rows, cols, Granularity::PerTensor).unwrap();
                let (codes, scale) = codes_scale(lin);
                assert_eq!(codes, want.codes, "{name}");
                // Exact in every target (the F16 fallback carries an f32 `.scale`).
                let tol = 1e-6 * scale;
                assert!((scale - 1.0 / want.scales[0]).abs() <= tol, "{name}");
            }
            let norm = ckpt
                .f32(&format!("model.layers.{i}.mlp.ffn_sub_norm.weight"), &[160])
                .unwrap();
            assert_eq!(layer.ffn_sub_norm, norm);
        }
        let emb = ckpt.f32("model.embed_tokens.weight", &[256, 64]).unwrap();
        assert_eq!(w.embed_tokens.to_f32(), emb);
        assert!(w.lm_head.is_none(), "stays tied");
    }
    // The HF directory carries the tokenizer along.
    assert!(hf.join("tokenizer.json").is_file());
}

#[test]
fn formats_that_cannot_hold_a_shape_fail_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tq.gguf");
    let err = run(&float_dir(), &out, &opts(Target::Gguf(TernaryType::Tq1_0)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("--allow-fallback"),
        "{err}"
    );
    assert!(!out.exists());
    let mut o = opts(Target::Gguf(TernaryType::Tq2_0));
    o.embeddings = FloatPrecision::Q6K;
    let err = run(&float_dir(), &out, &o).unwrap_err().to_string();
    assert!(err.contains("token_embd.weight"), "{err}");
    let mut o = opts(Target::Gguf(TernaryType::I2S));
    o.scales = ScaleMode::Channel;
    assert!(run(&float_dir(), &out, &o).is_err());
    let mut o = opts(Target::HfPacked);
    o.embeddings = FloatPrecision::Q8_0;
    assert!(run(&float_dir(), &out, &o).is_err());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no leftovers"
    );
}

#[test]
fn existing_outputs_are_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let err = run(&float_dir(), &out, &opts(Target::Gguf(TernaryType::I2S)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let mut o = opts(Target::Gguf(TernaryType::I2S));
    o.force = true;
    run(&float_dir(), &out, &o).unwrap();
    BitNetWeights::from_gguf(&out).unwrap();
    let dir = tmp.path().join("hf");
    std::fs::create_dir(&dir).unwrap();
    assert!(run(&float_dir(), &dir, &opts(Target::HfPacked)).is_err());
    let mut o = opts(Target::HfPacked);
    o.force = true;
    run(&float_dir(), &dir, &o).unwrap();
    BitNetWeights::from_hf_dir(&dir).unwrap();
}

/// A copy of the float fixture with `edit` applied to its config text and
/// `poison` (a tensor name) holding a NaN.
fn edited_copy(tmp: &Path, edit: impl Fn(&str) -> String, poison: Option<&str>) -> PathBuf {
    let dir = tmp.join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(float_dir().join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), edit(&config)).unwrap();
    let mut bytes = std::fs::read(float_dir().join("model.safetensors")).unwrap();
    if let Some(name) = poison {
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let at = 8 + n + meta.info(name).unwrap().data_offsets.0 + 4 * 3;
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

#[test]
fn non_finite_weights_and_unknown_architectures_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    for poisoned in [
        "model.layers.1.mlp.up_proj.weight",
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
    ] {
        let input = edited_copy(tmp.path(), str::to_string, Some(poisoned));
        let err = run(&input, &out, &opts(Target::Gguf(TernaryType::I2S)))
            .unwrap_err()
            .to_string();
        assert!(err.contains(poisoned) && err.contains("finite"), "{err}");
        assert!(!out.exists());
    }
    let input = edited_copy(tmp.path(), |c| c.replace("\"bitnet\"", "\"gpt2\""), None);
    let err = run(&input, &out, &opts(Target::HfPacked))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown architecture") && err.contains("gpt2"),
        "{err}"
    );
    // Llama: refused without --insert-subln (no sub-norms), converted with it.
    let input = edited_copy(
        tmp.path(),
        |c| {
            c.replace("\"bitnet\"", "\"llama\"")
                .replace("\"relu2\"", "\"silu\"")
        },
        None,
    );
    let err = run(&input, &out, &opts(Target::HfPacked))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--insert-subln"), "{err}");
    let mut o = opts(Target::Gguf(TernaryType::I2S));
    o.insert_subln = true;
    run(&input, &out, &o).unwrap();
    let w = BitNetWeights::from_gguf(&out).unwrap();
    assert!(w.layers[0].attn_sub_norm.iter().all(|&v| v == 1.0));
}

/// Our own files in: codes and scales carried over unchanged, embeddings
/// re-encoded in the precision asked for.
#[test]
fn own_files_convert_between_targets_and_embedding_precisions() {
    let tmp = tempfile::tempdir().unwrap();
    let w = synthesize(Preset::Tiny, 3).unwrap();
    let src = tmp.path().join("src.gguf");
    w.write_gguf(&src, TernaryType::I2S).unwrap();
    for (target, emb, enc) in [
        (TernaryType::Tq1_0, FloatPrecision::Q6K, FloatEncoding::Q6K),
        (TernaryType::Tq2_0, FloatPrecision::Q4K, FloatEncoding::Q4K),
        (TernaryType::I2S, FloatPrecision::Q8_0, FloatEncoding::Q8_0),
    ] {
        let out = tmp.path().join(format!("{target:?}.gguf"));
        let mut o = opts(Target::Gguf(target));
        o.embeddings = emb;
        o.measure_floats = true;
        let mut report = None;
        convert(&src, &out, &o, &mut |_| {})
            .map(|r| report = Some(r))
            .unwrap();
        let back = BitNetWeights::from_gguf(&out).unwrap();
        assert_eq!(back.embed_tokens.encoding(), enc);
        let (a, b) = (w.embed_tokens.to_f32(), back.embed_tokens.to_f32());
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.01, "{emb:?}: {err}");
        for (l0, l1) in w.layers.iter().zip(&back.layers) {
            for (x, y) in linears(l0).into_iter().zip(linears(l1)) {
                assert_eq!(codes_scale(x), codes_scale(y));
            }
        }
        let r = report.unwrap();
        let emb_report = &r.tensors[0];
        assert_eq!(emb_report.name, "token_embd.weight");
        assert!(emb_report.sqnr_db.unwrap() > 15.0, "{emb_report:?}");
        let lin = r
            .tensors
            .iter()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap();
        assert!((lin.sparsity.unwrap() - 1.0 / 3.0).abs() < 0.05, "{lin:?}");
    }
    // An HF packed checkpoint in: its codes and scales carry over.
    let hf = tmp.path().join("hf");
    w.write_hf(&hf, bitnet_models::hf_export::FloatDtype::F32)
        .unwrap();
    let out = tmp.path().join("back.gguf");
    run(&hf, &out, &opts(Target::Gguf(TernaryType::Tq2_0))).unwrap();
    let back = BitNetWeights::from_gguf(&out).unwrap();
    assert_eq!(
        codes_scale(&back.layers[1].down_proj),
        codes_scale(&w.layers[1].down_proj)
    );
}

/// Calibrated conversion: GPTQ keeps the absmean grid, loads like any
/// other file, and on held-out tokens its output error is below plain
/// absmean's (on average over layers); the low-rank column lowers it more.
#[test]
fn gptq_with_calibration_beats_absmean_on_held_out_tokens() {
    use bitnet_models::convert::{CalibrationInput, Method};
    let tmp = tempfile::tempdir().unwrap();
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let mut o = opts(Target::Gguf(TernaryType::I2S));
    o.method = Method::Gptq;
    o.low_rank = 4;
    o.calibration = Some(CalibrationInput {
        text,
        ctx: 64,
        max_tokens: 4096,
    });
    let out = tmp.path().join("g.gguf");
    let r = convert(&float_dir(), &out, &o, &mut |_| {}).unwrap();
    let (c, h) = r.calibration_tokens.unwrap();
    assert!(c >= 3 * 64 && h >= 64, "{c} / {h}");
    let lin: Vec<_> = r.tensors.iter().filter(|t| t.sparsity.is_some()).collect();
    assert_eq!(lin.len(), 14);
    let mean = |f: &dyn Fn(&&bitnet_models::convert::TensorReport) -> f64| {
        lin.iter().map(f).sum::<f64>() / lin.len() as f64
    };
    let gptq = mean(&|t| t.out_err.unwrap());
    let plain = mean(&|t| t.out_err_absmean.unwrap());
    let lowrank = mean(&|t| t.out_err_low_rank.unwrap());
    assert!(gptq < 0.9 * plain, "gptq {gptq} vs absmean {plain}");
    assert!(lowrank < gptq, "low-rank {lowrank} vs {gptq}");
    // Same grid: every layer's scale is the absmean one.
    let ckpt = SafetensorsCheckpoint::open_dir(&float_dir()).unwrap();
    let w = BitNetWeights::from_gguf(&out).unwrap();
    let f = ckpt
        .f32("model.layers.0.mlp.up_proj.weight", &[160, 64])
        .unwrap();
    let want = quantize("up", &f, 160, 64, Granularity::PerTensor).unwrap();
    let (codes, scale) = codes_scale(&w.layers[0].up_proj);
    assert!((scale - 1.0 / want.scales[0]).abs() < 1e-6 * scale);
    assert_ne!(codes, want.codes, "GPTQ moved some codes");
    // No calibration, no GPTQ.
    o.calibration = None;
    let err = convert(&float_dir(), &tmp.path().join("x.gguf"), &o, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("calibration"), "{err}");
}

/// Our Q6_K / Q4_K encoders against ggml's own: the `gguf_py` fixture's
/// `tq1_0_q6k.gguf` / `tq1_0_q4k.gguf` were quantized by llama.cpp's
/// `llama_model_quantize` (tools/llama_quantize_tq.c) from the same
/// (f16-exact) embeddings the fixture's HF checkpoint holds. Converting that
/// checkpoint with `--embeddings q6_k` / `q4_k` must give the same bytes.
#[test]
fn k_quant_embeddings_are_byte_identical_to_llama_cpp_quantizer() {
    use bitnet_models::gguf::GgufFile;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-inference/tests/fixtures/gguf_py");
    let tmp = tempfile::tempdir().unwrap();
    for (prec, file) in [
        (FloatPrecision::Q6K, "tq1_0_q6k.gguf"),
        (FloatPrecision::Q4K, "tq1_0_q4k.gguf"),
    ] {
        let out = tmp.path().join(file);
        let mut o = opts(Target::Gguf(TernaryType::Tq1_0));
        o.embeddings = prec;
        o.arch = bitnet_models::gguf_model::GgufArch::LlamaCpp;
        run(&fixtures.join("hf"), &out, &o).unwrap();
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(fixtures.join(file)).unwrap();
        let (a, b) = (
            ours.tensor_bytes("token_embd.weight").unwrap(),
            theirs.tensor_bytes("token_embd.weight").unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
        assert_eq!(same, a.len(), "{prec:?}: {same}/{} bytes equal", a.len());
    }
}

/// The tiny preset as a bf16 float HF checkpoint in `dir/float` (every row
/// a whole number of TQ blocks), and the checkpoint opened.
fn tiny_float(dir: &Path, seed: u64) -> (PathBuf, SafetensorsCheckpoint) {
    let float = dir.join("float");
    bitnet_models::synth::write_float_hf(
        Preset::Tiny,
        seed,
        &float,
        bitnet_models::hf_export::FloatDtype::BF16,
        false,
    )
    .unwrap();
    let ckpt = SafetensorsCheckpoint::open_dir(&float).unwrap();
    (float, ckpt)
}

/// A float checkpoint from `synth --format hf-float` (rows fit TQ blocks)
/// converted with per-channel scales: TQ2_0/TQ1_0 carry one absmean scale
/// per row, which reloads as a per-channel `BitLinear`.
#[test]
fn per_channel_scales_survive_in_tq_formats() {
    use bitnet_quant::bitlinear::WeightScale;
    let tmp = tempfile::tempdir().unwrap();
    let (float, ckpt) = tiny_float(tmp.path(), 5);
    for tt in [TernaryType::Tq2_0, TernaryType::Tq1_0] {
        let out = tmp.path().join(format!("{tt:?}.gguf"));
        let mut o = opts(Target::Gguf(tt));
        o.scales = ScaleMode::Channel;
        run(&float, &out, &o).unwrap();
        let w = BitNetWeights::from_gguf(&out).unwrap();
        let Linear::Ternary(b) = &w.layers[1].down_proj else {
            panic!("ternary")
        };
        let (rows, cols) = (b.out_features(), b.in_features());
        let f = ckpt
            .f32("model.layers.1.mlp.down_proj.weight", &[rows, cols])
            .unwrap();
        let want = quantize("d", &f, rows, cols, Granularity::PerChannel).unwrap();
        assert_eq!(b.weights().to_codes(), want.codes);
        let WeightScale::Channel(got) = b.scale() else {
            panic!("per-channel scales expected")
        };
        for (g, s) in got.iter().zip(&want.scales) {
            // TQ blocks store the scale in f16.
            assert!((g - 1.0 / s).abs() <= 1e-3 * g, "{g} vs {}", 1.0 / s);
        }
    }
}

/// A policy file keeps the named layers dense (in the file's metadata and
/// on reload), the rest ternary; mistakes are clear errors.
#[test]
fn a_precision_policy_keeps_named_layers_dense() {
    use bitnet_models::convert::policy::PrecisionPolicy;
    let tmp = tempfile::tempdir().unwrap();
    let policy = "default = \"ternary\"\n\
        [[rules]]\nmatch = \"blk.{first}.attn_*\"\nprecision = \"int8\"\n\
        [[rules]]\nmatch = \"model.layers.{last}.mlp.down_proj.weight\"\nprecision = \"f16\"\n";
    let mut o = opts(Target::Gguf(TernaryType::I2S));
    o.policy = Some(PrecisionPolicy::parse(policy).unwrap());
    let out = tmp.path().join("mixed.gguf");
    let r = convert(&float_dir(), &out, &o, &mut |_| {}).unwrap();
    let precision = |n: &str| {
        r.tensors
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .precision
            .clone()
    };
    assert_eq!(precision("blk.0.attn_q.weight"), "Q8_0");
    assert_eq!(precision("blk.0.attn_output.weight"), "Q8_0");
    assert_eq!(precision("blk.0.ffn_up.weight"), "I2_S");
    assert_eq!(precision("blk.1.ffn_down.weight"), "F16");
    let q8 = r
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    assert!(q8.sqnr_db.unwrap() > 30.0, "{q8:?}");
    let w = BitNetWeights::from_gguf(&out).unwrap();
    let enc = |l: &Linear| match l {
        Linear::Dense(m) => Some(m.encoding()),
        _ => None,
    };
    assert_eq!(enc(&w.layers[0].q_proj), Some(FloatEncoding::Q8_0));
    assert_eq!(enc(&w.layers[0].v_proj), Some(FloatEncoding::Q8_0));
    assert_eq!(enc(&w.layers[1].down_proj), Some(FloatEncoding::F16));
    assert_eq!(enc(&w.layers[1].q_proj), None);
    // Our own mixed file converts on (the dense layers' values carried).
    let again = tmp.path().join("again.gguf");
    let mut o2 = opts(Target::Gguf(TernaryType::I2S));
    o2.policy = Some(PrecisionPolicy::parse(policy).unwrap());
    convert(&out, &again, &o2, &mut |_| {}).unwrap();
    // The HF layout cannot hold dense linears; a rule that matches nothing is a typo.
    let mut hf = opts(Target::HfPacked);
    hf.policy = Some(PrecisionPolicy::parse(policy).unwrap());
    let e = convert(&float_dir(), &tmp.path().join("hf"), &hf, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("GGUF target"), "{e}");
    let mut typo = opts(Target::Gguf(TernaryType::I2S));
    typo.policy = Some(
        PrecisionPolicy::parse("[[rules]]\nmatch = \"blk.0.atn_q.weight\"\nprecision = \"int8\"\n")
            .unwrap(),
    );
    let e = convert(&float_dir(), &tmp.path().join("t.gguf"), &typo, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("matches no linear layer"), "{e}");
    assert!(!tmp.path().join("t.gguf").exists());
}

/// The automatic mode measures every layer's sensitivity on held-out
/// calibration tokens and promotes the most sensitive per byte while the
/// output stays within the budget.
#[test]
fn a_size_budget_promotes_the_most_sensitive_layers() {
    use bitnet_models::convert::CalibrationInput;
    use bitnet_models::convert::policy::AutoPrecision;
    let tmp = tempfile::tempdir().unwrap();
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let calib = CalibrationInput {
        text,
        ctx: 64,
        max_tokens: 4096,
    };
    let base = tmp.path().join("base.gguf");
    let r0 = convert(
        &float_dir(),
        &base,
        &opts(Target::Gguf(TernaryType::I2S)),
        &mut |_| {},
    )
    .unwrap();
    // Room for a few Q8_0 layers: a 64x64 one adds 64*68 - 64*16 - 32 bytes.
    let extra = 3 * 64 * 52;
    let mut o = opts(Target::Gguf(TernaryType::I2S));
    o.calibration = Some(calib.clone());
    o.auto_precision = Some(AutoPrecision {
        budget_bytes: r0.output_bytes + extra as u64,
        promote_to: FloatPrecision::Q8_0,
    });
    let out = tmp.path().join("auto.gguf");
    let r = convert(&float_dir(), &out, &o, &mut |_| {}).unwrap();
    let lin: Vec<_> = r
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk."))
        .collect();
    assert_eq!(lin.len(), 14);
    assert!(
        lin.iter().all(|t| t.sensitivity.is_some_and(|s| s > 0.0)),
        "{lin:?}"
    );
    let promoted: Vec<_> = lin.iter().filter(|t| t.precision == "Q8_0").collect();
    assert!(!promoted.is_empty() && promoted.len() < 14, "{promoted:?}");
    assert!(
        r.output_bytes <= r0.output_bytes + extra as u64 + 4096,
        "{} vs {}",
        r.output_bytes,
        r0.output_bytes
    );
    // Among same-shape layers, a promoted one is at least as sensitive as
    // any that stayed ternary.
    let min_promoted = promoted
        .iter()
        .filter(|t| t.shape == [64, 64])
        .map(|t| t.sensitivity.unwrap())
        .fold(f64::INFINITY, f64::min);
    let max_kept = lin
        .iter()
        .filter(|t| t.shape == [64, 64] && t.precision != "Q8_0")
        .map(|t| t.sensitivity.unwrap())
        .fold(0.0, f64::max);
    if min_promoted.is_finite() {
        assert!(min_promoted >= max_kept, "{min_promoted} < {max_kept}");
    }
    // A budget below the all-ternary size, or no calibration: clear errors.
    o.auto_precision = Some(AutoPrecision {
        budget_bytes: 1000,
        promote_to: FloatPrecision::Q8_0,
    });
    let e = convert(&float_dir(), &tmp.path().join("x.gguf"), &o, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("below the all-ternary size"), "{e}");
    o.calibration = None;
    o.auto_precision = Some(AutoPrecision {
        budget_bytes: 1 << 30,
        promote_to: FloatPrecision::Q8_0,
    });
    let e = convert(&float_dir(), &tmp.path().join("x.gguf"), &o, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--calib"), "{e}");
}

/// A converted GGUF file carries the input's vocabulary (llama.cpp's
/// `tokenizer.ggml.*` keys), so it tokenizes alone, as the input's
/// `tokenizer.json` does; converting that file again keeps it.
#[test]
fn converted_gguf_files_carry_the_tokenizer() {
    use bitnet_models::gguf::{GgufFile, MetadataValue};
    use bitnet_models::tokenizer::TextTokenizer;
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("a/m.gguf");
    let second = tmp.path().join("b/m.gguf");
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    std::fs::create_dir_all(second.parent().unwrap()).unwrap();
    run(&float_dir(), &first, &opts(Target::Gguf(TernaryType::I2S))).unwrap();
    let mut o = opts(Target::Gguf(TernaryType::Tq1_0));
    o.allow_fallback = true;
    run(&first, &second, &o).unwrap();
    let hf = TextTokenizer::from_dir(&float_dir()).unwrap();
    for path in [&first, &second] {
        let file = GgufFile::open(path).unwrap();
        assert_eq!(
            file.metadata().get("tokenizer.ggml.model"),
            Some(&MetadataValue::String("gpt2".into()))
        );
        let t = TextTokenizer::from_gguf(&file).unwrap();
        for text in ["hello world", "Hi there,  12345 héllo\n\tend"] {
            assert_eq!(
                t.encode(text, true).unwrap(),
                hf.encode(text, true).unwrap()
            );
        }
    }
}

/// `--scales group`: one absmean scale per block of 256 weights, stored in
/// the TQ blocks. Rows of one block load as per-row ternary layers; wider
/// rows (several scales) load as dense TQ matrices holding exactly the
/// reference quantizer's codes times its f16-rounded multipliers. Formats
/// with one scale per tensor refuse it.
#[test]
fn per_group_scales_are_stored_block_by_block() {
    use bitnet_models::float_matrix::FloatEncoding;
    let tmp = tempfile::tempdir().unwrap();
    let (float, ckpt) = tiny_float(tmp.path(), 6);
    for (tt, enc) in [
        (TernaryType::Tq2_0, FloatEncoding::Tq2_0),
        (TernaryType::Tq1_0, FloatEncoding::Tq1_0),
    ] {
        let out = tmp.path().join(format!("{tt:?}.gguf"));
        let mut o = opts(Target::Gguf(tt));
        o.scales = ScaleMode::Group;
        run(&float, &out, &o).unwrap();
        let w = BitNetWeights::from_gguf(&out).unwrap();
        assert!(
            matches!(w.layers[0].q_proj, Linear::Ternary(_)),
            "one block per row"
        );
        let Linear::Dense(m) = &w.layers[1].down_proj else {
            panic!("{tt:?}: rows of several blocks stay dense")
        };
        assert_eq!(m.encoding(), enc);
        let (rows, cols) = (m.rows(), m.cols());
        assert!(cols > 256, "several blocks per row");
        let f = ckpt
            .f32("model.layers.1.mlp.down_proj.weight", &[rows, cols])
            .unwrap();
        let want = quantize("d", &f, rows, cols, Granularity::PerGroup(256)).unwrap();
        let got = m.to_f32();
        for (i, &g) in got.iter().enumerate() {
            let (r, c) = (i / cols, i % cols);
            let mult = half::f16::from_f32(1.0 / want.scale_at(r, c)).to_f32();
            assert_eq!(g, f32::from(want.codes[i]) * mult, "{tt:?} weight {i}");
        }
    }
    for target in [Target::Gguf(TernaryType::I2S), Target::HfPacked] {
        let mut o = opts(target);
        o.scales = ScaleMode::Group;
        let e = run(&float, &tmp.path().join("x"), &o).unwrap_err();
        assert!(e.to_string().contains("per-group"), "{e}");
    }
}
