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
use common::{Expected, dir as tiny, logits, max_abs_diff};

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
    assert_eq!(max_abs_diff(&logits(&model, &ids), &reference), 0.0);
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
