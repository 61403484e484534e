//! Files written by `bitnet_models::convert` run right: a float checkpoint
//! ternarized by the converter gives transformers' logits for the same
//! latent weights quantized online, in every target; and our packed
//! checkpoint converted to llama.cpp's TQ2_0/TQ1_0 gives llama.cpp's own
//! logits (`tools/llama_logits.c`, committed in the `gguf_py` fixture)
//! within the tolerances `gguf_models.rs` documents.

use bitnet_inference::BitNetModel;
use bitnet_models::convert::{ConvertOptions, FloatPrecision, Target, convert};
use bitnet_models::gguf_model::{GgufArch, TernaryType};
use std::path::{Path, PathBuf};

mod common;
use common::{Expected, argmax_rows, dir as tiny, logits, max_abs_diff};

fn run(input: &Path, output: &Path, o: &ConvertOptions) {
    convert(input, output, o, &mut |_| {}).unwrap();
}

/// The `online` fixture holds latent float weights; without its
/// `quantization_config` it is a float checkpoint, which the converter
/// ternarizes exactly as transformers' online `AutoBitLinear` does.
#[test]
fn converted_float_checkpoint_gives_transformers_online_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let float = tmp.path().join("float");
    std::fs::create_dir(&float).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny("online").join("config.json")).unwrap())
            .unwrap();
    cfg.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(float.join("config.json"), cfg.to_string()).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny("online").join(f), float.join(f)).unwrap();
    }
    let exp = Expected::load("online");
    for (target, name, tol) in [
        (Target::HfPacked, "hf", 2e-4),
        (Target::Gguf(TernaryType::I2S), "m.gguf", 2e-4),
        // 64-wide rows: TQ falls back to F16 codes plus an f32 `.scale`.
        (Target::Gguf(TernaryType::Tq2_0), "tq.gguf", 2e-4),
    ] {
        let out = tmp.path().join(name);
        let o = ConvertOptions {
            target,
            embeddings: FloatPrecision::F32,
            allow_fallback: true,
            ..ConvertOptions::default()
        };
        run(&float, &out, &o);
        let model = BitNetModel::load(&out).unwrap();
        for p in 0..3 {
            let ids = exp.ids(&format!("ids_p{p}"));
            let diff = max_abs_diff(&logits(&model, &ids), &exp.f32(&format!("logits_p{p}")));
            eprintln!("{name} prompt {p}: max |logit diff| vs transformers {diff:.2e}");
            assert!(diff < tol, "{name} prompt {p}: {diff}");
        }
    }
}

fn gguf_py(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf_py")
        .join(file)
}

fn llama_cpp_logits(key: &str) -> (Vec<u32>, Vec<f32>) {
    common::ids_and_logits(&gguf_py("llama_logits.safetensors"), key)
}

/// The fixture's HF packed checkpoint converted to llama.cpp-arch TQ files
/// gives llama.cpp's logits for the gguf-py/llama.cpp-written files of the
/// same weights (tolerances relative to the largest logit, as in
/// gguf_models.rs: F32 embeddings 2e-6, F16 3e-4, Q6_K/Q4_K 3e-3), with
/// the same top-1 token everywhere.
#[test]
fn converted_tq_files_match_llama_cpp_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (tt, emb, key, tol) in [
        (
            TernaryType::Tq2_0,
            FloatPrecision::F32,
            "tq2_0_f32embd",
            2e-6,
        ),
        (
            TernaryType::Tq1_0,
            FloatPrecision::F32,
            "tq2_0_f32embd",
            2e-6,
        ),
        (TernaryType::Tq2_0, FloatPrecision::F16, "tq2_0", 3e-4),
        (TernaryType::Tq1_0, FloatPrecision::Q6K, "tq1_0_q6k", 3e-3),
        (TernaryType::Tq1_0, FloatPrecision::Q4K, "tq1_0_q4k", 3e-3),
    ] {
        let out = tmp.path().join(format!("{tt:?}_{emb:?}.gguf"));
        let o = ConvertOptions {
            target: Target::Gguf(tt),
            embeddings: emb,
            arch: GgufArch::LlamaCpp,
            ..ConvertOptions::default()
        };
        run(&gguf_py("hf"), &out, &o);
        let (ids, want) = llama_cpp_logits(key);
        let model = BitNetModel::load(&out).unwrap();
        let got = logits(&model, &ids);
        let diff = max_abs_diff(&got, &want);
        let magnitude = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{tt:?} {emb:?} vs llama.cpp {key}: max |diff| {diff} (logits up to {magnitude})"
        );
        assert!(diff < tol * magnitude, "{tt:?} {emb:?}: {diff}");
        let vocab = model.config().vocab_size;
        assert_eq!(
            argmax_rows(&got, vocab),
            argmax_rows(&want, vocab),
            "{tt:?} {emb:?}: top-1"
        );
    }
}

/// Mixed precision against transformers: the `float` fixture's layers kept
/// dense (f32, then f16) by a policy give transformers' float logits; a
/// policy that keeps only some layers dense runs too, between the two.
#[test]
fn dense_layers_of_a_mixed_precision_file_give_transformers_float_logits() {
    use bitnet_models::convert::policy::PrecisionPolicy;
    use bitnet_models::weights::Linear;
    let tmp = tempfile::tempdir().unwrap();
    let exp = Expected::load("float");
    for (policy, tol) in [
        ("default = \"f32\"", 1e-3),
        ("default = \"f16\"", 0.1),
        (
            "default = \"ternary\"\n[[rules]]\nmatch = \"blk.{first}.*\"\nprecision = \"int8\"\n",
            f32::INFINITY,
        ),
    ] {
        let out = tmp.path().join("mixed.gguf");
        let o = ConvertOptions {
            target: Target::Gguf(TernaryType::I2S),
            embeddings: FloatPrecision::F32,
            policy: Some(PrecisionPolicy::parse(policy).unwrap()),
            force: true,
            ..ConvertOptions::default()
        };
        run(&tiny("float"), &out, &o);
        let model = BitNetModel::load(&out).unwrap();
        let dense = model
            .weights()
            .layers
            .iter()
            .flat_map(|l| [&l.q_proj, &l.down_proj])
            .filter(|l| matches!(l, Linear::Dense(_)))
            .count();
        assert!(dense > 0, "{policy}: no dense layer loaded");
        for p in 0..3 {
            let ids = exp.ids(&format!("ids_p{p}"));
            let got = logits(&model, &ids);
            assert!(got.iter().all(|v| v.is_finite()));
            let diff = max_abs_diff(&got, &exp.f32(&format!("logits_p{p}")));
            eprintln!("{policy:?} prompt {p}: max |logit diff| vs transformers float {diff:.2e}");
            assert!(diff < tol, "{policy} prompt {p}: {diff}");
        }
    }
}

/// A mixed-precision file (block 0 in Q8_0, one Q6_K and one F16 layer, the
/// rest TQ2_0) written for llama.cpp's architecture loads in llama.cpp,
/// which reads the dense layers as plain matmuls: its logits
/// (`tools/make_mixed_llama_fixture.py`) match ours. llama.cpp multiplies
/// Q8_0/Q6_K weights with int8-quantized activations (Q8_0/Q8_K) and F16
/// weights with f16 ones, where we keep f32 activations for dense layers;
/// measured 2.9e-3 on logits up to 182 (1.6e-5 of the largest), allowed
/// 1e-4 of it. The top-1 token agrees everywhere.
#[test]
fn a_mixed_precision_file_gives_llama_cpp_logits() {
    use bitnet_models::convert::policy::PrecisionPolicy;
    let fixture = gguf_py("mixed_llama_logits.safetensors");
    let bytes = std::fs::read(&fixture).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let policy = meta.metadata().as_ref().unwrap()["policy"].clone();
    let (ids, want) = common::ids_and_logits(&fixture, "logits");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixed.gguf");
    let o = ConvertOptions {
        target: Target::Gguf(TernaryType::Tq2_0),
        embeddings: FloatPrecision::F32,
        arch: GgufArch::LlamaCpp,
        policy: Some(PrecisionPolicy::parse(&policy).unwrap()),
        ..ConvertOptions::default()
    };
    run(&gguf_py("hf"), &out, &o);
    let model = BitNetModel::load(&out).unwrap();
    let dense = model
        .weights()
        .layers
        .iter()
        .flat_map(|l| [&l.q_proj, &l.v_proj, &l.down_proj])
        .filter(|l| matches!(l, bitnet_models::weights::Linear::Dense(_)))
        .count();
    assert_eq!(dense, 5, "block 0's q, v, down; block 1's v and down");
    let got = logits(&model, &ids);
    let diff = max_abs_diff(&got, &want);
    let magnitude = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("mixed vs llama.cpp: max |diff| {diff} (logits up to {magnitude})");
    assert!(diff < 1e-4 * magnitude, "{diff}");
    let vocab = model.config().vocab_size;
    assert_eq!(argmax_rows(&got, vocab), argmax_rows(&want, vocab), "top-1");
}
