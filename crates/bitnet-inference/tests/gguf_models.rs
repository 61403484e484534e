//! GGUF models: an HF packed checkpoint exported to GGUF (I2_S) gives the
//! transformers logits again; a synthetic model whose rows fit TQ blocks
//! gives the same logits from I2_S, TQ2_0 and TQ1_0 files.

use bitnet_inference::BitNetModel;
use bitnet_models::config::BitNetConfig;
use bitnet_models::float_matrix::FloatMatrix;
use bitnet_models::gguf::GgufFile;
use bitnet_models::gguf_model::{GgufArch, TernaryType};
use bitnet_models::weights::{BitNetWeights, Layer, Linear};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::runtime::PackedTernary;

mod common;
use common::{Expected, argmax_rows, dir as tiny, logits, max_abs_diff};

#[test]
fn hf_packed_and_exported_i2s_give_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    for variant in [
        "online",
        "autobitlinear_offline",
        "bitlinear_offline",
        "online_untied",
    ] {
        let exp = Expected::load(variant);
        let (ids, want) = (exp.ids("ids_p2"), exp.f32("logits_p2"));

        let weights = BitNetWeights::from_hf_dir(&tiny(variant)).unwrap();
        let path = dir.path().join(format!("{variant}.gguf"));
        weights.write_gguf(&path, TernaryType::I2S).unwrap();
        let model = BitNetModel::load(&path).unwrap();
        assert_eq!(
            model.config().tie_word_embeddings,
            variant != "online_untied"
        );
        let diff = max_abs_diff(&logits(&model, &ids), &want);
        assert!(diff < 2e-4, "{variant} via I2_S GGUF: {diff}");
    }
}

/// A random model whose every row length is a multiple of 256.
fn synthetic() -> BitNetWeights {
    let config = BitNetConfig::from_json(
        r#"{"vocab_size": 32, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "relu2",
            "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": true,
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}}"#,
    )
    .unwrap();
    let mut seed = 7u64;
    let mut rand = move |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let (h, f, kv) = (
        config.hidden_size,
        config.intermediate_size,
        config.kv_dim(),
    );
    // Ternary codes with a power-of-two scale, which f16 (the TQ block
    // scale) holds exactly, so every format must give identical logits.
    let mut lin = |rows: usize, cols: usize| {
        let codes: Vec<i8> = rand(rows * cols, 1.5)
            .iter()
            .map(|v| v.round().clamp(-1.0, 1.0) as i8)
            .collect();
        let packed = PackedTernary::from_codes(&codes, rows, cols).unwrap();
        Linear::Ternary(
            BitLinear::new(
                packed,
                WeightScale::Tensor(0.0625),
                ScaleConvention::Multiply,
            )
            .unwrap(),
        )
    };
    let layers = (0..config.num_layers)
        .map(|_| Layer {
            input_layernorm: vec![1.0; h],
            post_attention_layernorm: vec![1.0; h],
            attn_sub_norm: vec![1.0; h],
            ffn_sub_norm: vec![1.0; f],
            q_proj: lin(h, h),
            k_proj: lin(kv, h),
            v_proj: lin(kv, h),
            o_proj: lin(h, h),
            gate_proj: lin(f, h),
            up_proj: lin(f, h),
            down_proj: lin(h, f),
        })
        .collect();
    BitNetWeights {
        embed_tokens: FloatMatrix::from_f32(config.vocab_size, h, rand(config.vocab_size * h, 1.0))
            .unwrap(),
        norm: vec![1.0; h],
        lm_head: None,
        layers,
        config,
    }
}

#[test]
fn i2s_tq2_tq1_files_agree() {
    let weights = synthetic();
    let ids = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let reference = logits(&BitNetModel::new(weights.clone()).unwrap(), &ids);
    let magnitude = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let dir = tempfile::tempdir().unwrap();
    for ty in [TernaryType::I2S, TernaryType::Tq2_0, TernaryType::Tq1_0] {
        let path = dir.path().join(format!("{ty:?}.gguf"));
        weights.write_gguf(&path, ty).unwrap();
        let got = logits(&BitNetModel::load(&path).unwrap(), &ids);
        let diff = max_abs_diff(&got, &reference);
        assert!(
            diff <= 1e-6 * magnitude,
            "{ty:?}: {diff} (logits up to {magnitude})"
        );
    }
}

#[test]
fn llama_cpp_arch_keeps_the_relu2_activation() {
    let weights = synthetic();
    let ids = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let reference = logits(&BitNetModel::new(weights.clone()).unwrap(), &ids);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama.gguf");
    weights
        .write_gguf_as(&path, TernaryType::Tq2_0, GgufArch::LlamaCpp)
        .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let md = file.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "bitnet");
    assert_eq!(md.get_str("bitnet.hidden_activation").unwrap(), "relu2");
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "none");
    let model = BitNetModel::load(&path).unwrap();
    // The file's F32 output layer is dotted by the SIMD row kernel, the
    // in-memory one by `dot`: the same values summed in another order.
    let magnitude = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&logits(&model, &ids), &reference);
    assert!(
        diff <= 1e-6 * magnitude,
        "{diff} (logits up to {magnitude})"
    );
}

#[test]
fn gguf_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // TQ needs rows that are multiples of 256; the tiny model has 64.
    let weights = BitNetWeights::from_hf_dir(&tiny("online")).unwrap();
    let err = weights
        .write_gguf(&dir.path().join("x.gguf"), TernaryType::Tq2_0)
        .unwrap_err();
    assert!(
        err.to_string().contains("multiple of 256") && err.to_string().contains("attn_q"),
        "{err}"
    );
    // A float checkpoint has nothing ternary to write.
    let float = BitNetWeights::from_hf_dir(&tiny("float")).unwrap();
    assert!(
        float
            .write_gguf(&dir.path().join("f.gguf"), TernaryType::I2S)
            .is_err()
    );
    // Not a GGUF file at all.
    let bogus = dir.path().join("bogus.gguf");
    std::fs::write(&bogus, b"not a gguf file at all").unwrap();
    let err = BitNetModel::load(&bogus).unwrap_err().to_string();
    assert!(err.contains("bogus.gguf"), "{err}");
}

/// `tests/fixtures/gguf_py/`: a tiny llama.cpp `bitnet` model written by
/// llama.cpp's gguf-py and quantizer (see its README).
fn gguf_py(file: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf_py")
        .join(file)
}

/// llama.cpp's logits (`tools/llama_logits.c`) and the ids they are for.
fn llama_cpp_logits(file: &str) -> (Vec<u32>, Vec<f32>) {
    common::ids_and_logits(&gguf_py("llama_logits.safetensors"), file)
}

#[test]
fn gguf_py_tq_files_equal_the_safetensors_checkpoint() {
    let (ids, _) = llama_cpp_logits("tq2_0");
    let hf = BitNetModel::load(&gguf_py("hf")).unwrap();
    let want = logits(&hf, &ids);
    for file in ["tq2_0.gguf", "tq1_0.gguf"] {
        let model = BitNetModel::load(&gguf_py(file)).unwrap();
        assert_eq!(model.config(), hf.config(), "{file}");
        let diff = max_abs_diff(&logits(&model, &ids), &want);
        // Same codes, same f16-exact scales, same float embeddings.
        assert!(diff == 0.0, "{file}: {diff}");
    }
}

#[test]
fn gguf_py_files_match_llama_cpp() {
    // llama.cpp's logits from tools/llama_logits.c (one thread, f32 KV
    // cache); the fixture README says why they differ at all.
    for (key, file, tol) in [
        ("tq2_0_f32embd", "tq2_0", TOL_F32_EMBD),
        ("tq2_0_f32embd", "tq1_0", TOL_F32_EMBD),
        ("tq2_0", "tq2_0", TOL_F16_EMBD),
        ("tq1_0", "tq1_0", TOL_F16_EMBD),
        ("tq1_0_q6k", "tq1_0_q6k", TOL_K_EMBD),
        ("tq1_0_q4k", "tq1_0_q4k", TOL_K_EMBD),
    ] {
        let (ids, want) = llama_cpp_logits(key);
        let model = BitNetModel::load(&gguf_py(&format!("{file}.gguf"))).unwrap();
        let got = logits(&model, &ids);
        let diff = max_abs_diff(&got, &want);
        let vocab = model.config().vocab_size;
        let top = argmax_rows(&got, vocab);
        let agree = top
            .iter()
            .zip(argmax_rows(&want, vocab))
            .filter(|(a, b)| **a == *b)
            .count();
        let magnitude = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{file} vs llama.cpp {key}: max |diff| = {diff} (logits up to {magnitude}), \
             top-1 agrees at {agree}/{} positions",
            top.len()
        );
        assert!(
            diff < tol * magnitude,
            "{file}: {diff} >= {tol} x {magnitude}"
        );
        assert_eq!(agree, top.len(), "{file}: top-1 differs");
    }
}

/// The same model with its (f16-exact) embeddings stored as F32 for
/// llama.cpp, so its output projection runs in f32 too: the ternary layers
/// then agree to float rounding, since llama.cpp's Q8_K activations (int8
/// per 256-block) equal our per-token int8 when every row is one block, as
/// here. Measured 4.6e-5 with logits up to 182 (2.5e-7), relative.
const TOL_F32_EMBD: f32 = 2e-6;
/// F16 `token_embd`, tolerance relative to the largest logit: llama.cpp
/// dots the output projection against f16-rounded hidden states (its F16
/// `vec_dot_type`); measured 0.017 with logits up to 182 (1e-4), about what
/// f16 rounding (2^-11) of a 256-term dot product gives.
const TOL_F16_EMBD: f32 = 3e-4;
/// Q6_K / Q4_K `token_embd`, relative: like llama.cpp we quantize the
/// hidden state to Q8_K (int8 per 256-block) and dot each output row in
/// integers, so only the order of float additions differs; measured 3.1e-5
/// (Q6_K) and 4.6e-5 (Q4_K) with logits up to 182 (2.5e-7). Before the
/// integer kernel (f32 hidden state against dequantized rows) it was 0.34.
/// The embedding rows themselves are dequantized bit-identically to ggml
/// (bitnet-models' dequant oracle test).
const TOL_K_EMBD: f32 = 2e-6;

/// TQ2_0 with a different scale in every block (llama.cpp's quantizer on
/// float weights, `tools/make_group_scaled_fixture.py`): the layers load as
/// dense TQ2_0 matrices (the ternary kernels hold one scale per tensor or
/// row), dotted like llama.cpp's `vec_dot_tq2_0_q8_K` (Q8_K activations,
/// integer block sums), and give llama.cpp's logits: measured 0.16 on
/// logits up to 129 (1.3e-3; 7e-3 when the dense blocks were dotted with
/// f32 activations), allowed 3e-3 as for k-quant layers; same top-1.
#[test]
fn per_block_scaled_tq2_0_gives_llama_cpp_logits() {
    let (ids, want) = common::ids_and_logits(&gguf_py("group_llama_logits.safetensors"), "logits");
    let model = BitNetModel::load(&gguf_py("tq2_0_groups.gguf")).unwrap();
    for l in &model.weights().layers {
        // One block per row (width 256): a per-row scale, for the kernels.
        for lin in [&l.q_proj, &l.k_proj, &l.o_proj, &l.up_proj] {
            assert!(matches!(lin, Linear::Ternary(_)), "one block per row");
        }
        // Three blocks per row (width 768), three scales.
        assert!(matches!(l.down_proj, Linear::Dense(_)), "stays dense");
    }
    let got = logits(&model, &ids);
    let diff = max_abs_diff(&got, &want);
    let magnitude = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("per-block TQ2_0 vs llama.cpp: max |diff| {diff} (logits up to {magnitude})");
    assert!(diff < 3e-3 * magnitude, "{diff}");
    let vocab = model.config().vocab_size;
    assert_eq!(argmax_rows(&got, vocab), argmax_rows(&want, vocab));
}
