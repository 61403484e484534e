//! Random-weight BitNet models of real shapes, for tests and benchmarks when
//! no checkpoint is at hand (`bitnet synth`).
//!
//! [`write_float_hf`] writes the float counterpart (latent master weights,
//! no `quantization_config`), streamed to disk tensor by tensor so that a
//! 2B-4T-shaped float checkpoint (about 4.8 GB in bf16) never sits in
//! memory: the input `bitnet convert` is measured on.
//!
//! Ternary layers get codes with about a third zeros (what absmean
//! quantization of Gaussian weights gives) and a per-tensor scale around
//! the magnitudes trained BitNet layers carry; norms are near 1;
//! embeddings are small Gaussians. Every float is rounded to bf16 so an HF
//! export in bf16 (like 2B-4T's) reloads bit for bit.

use crate::config::BitNetConfig;
use crate::error::Result;
use crate::float_matrix::{FloatEncoding, FloatMatrix};
use crate::weights::{BitNetWeights, Layer, Linear};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::runtime::PackedTernary;

/// A model shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// 2 layers, hidden 256: fast tests (rows fit TQ blocks).
    Tiny,
    /// A 125M-parameter-class llama-style BitNet (hidden 768, 12 layers, SiLU).
    M125,
    /// 1bitLLM bitnet_b1_58-large (hidden 1536, 24 layers, SiLU).
    M700,
    /// microsoft/bitnet-b1.58-2B-4T (hidden 2560, 30 layers, ReLU², GQA).
    B2_4T,
}

impl Preset {
    /// Parses `tiny`, `125m`, `700m`, `2b4t`.
    pub fn parse(s: &str) -> Option<Preset> {
        Some(match s {
            "tiny" => Preset::Tiny,
            "125m" => Preset::M125,
            "700m" => Preset::M700,
            "2b4t" => Preset::B2_4T,
            _ => return None,
        })
    }

    /// The preset's `config.json`.
    pub fn config_json(self) -> String {
        let (vocab, hidden, inter, layers, heads, kv, act, theta, ctx) = match self {
            Preset::Tiny => (512, 256, 512, 2, 4, 2, "relu2", 10_000.0, 512),
            Preset::M125 => (32_002, 768, 2048, 12, 12, 12, "silu", 10_000.0, 2048),
            Preset::M700 => (32_002, 1536, 4096, 24, 16, 16, "silu", 10_000.0, 2048),
            Preset::B2_4T => (128_256, 2560, 6912, 30, 20, 5, "relu2", 500_000.0, 4096),
        };
        serde_json::json!({
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "hidden_act": act,
            "rms_norm_eps": 1e-5,
            "rope_theta": theta,
            "max_position_embeddings": ctx,
            "tie_word_embeddings": true,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "bfloat16",
            "quantization_config": {
                "quant_method": "bitnet",
                "linear_class": "autobitlinear",
                "quantization_mode": "offline"
            }
        })
        .to_string()
    }
}

/// A small, fast, seeded generator (xorshift*): reproducible weights
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately standard normal (sum of four uniforms, rescaled).
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 1.732_050_8
    }
}

fn bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// Builds the preset's model with weights drawn from `seed`.
pub fn synthesize(preset: Preset, seed: u64) -> Result<BitNetWeights> {
    let config = BitNetConfig::from_json(&preset.config_json())?;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (h, f, kv, q) = (
        config.hidden_size,
        config.intermediate_size,
        config.kv_dim(),
        config.q_dim(),
    );
    let ternary = |rows: usize, cols: usize, rng: &mut Rng| -> Result<Linear> {
        // P(0) = 1/3, P(±1) = 1/3 each.
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| (rng.next() % 3) as i8 - 1)
            .collect();
        let packed =
            PackedTernary::from_codes(&codes, rows, cols).map_err(crate::Error::quant("synth"))?;
        let scale = bf16(1.0 + rng.uniform());
        Ok(Linear::Ternary(
            BitLinear::new(
                packed,
                WeightScale::Tensor(scale),
                ScaleConvention::Multiply,
            )
            .map_err(crate::Error::quant("synth"))?,
        ))
    };
    let norm = |n: usize, rng: &mut Rng| -> Vec<f32> {
        (0..n).map(|_| bf16(1.0 + 0.1 * rng.normal())).collect()
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        layers.push(Layer {
            input_layernorm: norm(h, &mut rng),
            post_attention_layernorm: norm(h, &mut rng),
            attn_sub_norm: norm(h, &mut rng),
            ffn_sub_norm: norm(f, &mut rng),
            q_proj: ternary(q, h, &mut rng)?,
            k_proj: ternary(kv, h, &mut rng)?,
            v_proj: ternary(kv, h, &mut rng)?,
            o_proj: ternary(h, q, &mut rng)?,
            gate_proj: ternary(f, h, &mut rng)?,
            up_proj: ternary(f, h, &mut rng)?,
            down_proj: ternary(h, f, &mut rng)?,
        });
    }
    // bf16, as the 2B-4T checkpoint stores them.
    let embed_bytes = (0..config.vocab_size * h)
        .flat_map(|_| half::bf16::from_f32(0.02 * rng.normal()).to_le_bytes())
        .collect();
    let embed_tokens = FloatMatrix::from_encoded(
        "model.embed_tokens.weight",
        embed_bytes,
        config.vocab_size,
        h,
        FloatEncoding::BF16,
    )?;
    Ok(BitNetWeights {
        embed_tokens,
        norm: norm(h, &mut rng),
        lm_head: None,
        layers,
        config,
    })
}

/// Writes a float BitNet checkpoint of `preset` (`config.json` without
/// `quantization_config`, `model.safetensors` in `dtype`) into the new
/// directory `dir`, one tensor at a time. Linear weights are approximately
/// Gaussian with standard deviation 0.02 (what trained layers carry),
/// norms near 1, embeddings like [`synthesize`]'s.
pub fn write_float_hf(
    preset: Preset,
    seed: u64,
    dir: &std::path::Path,
    dtype: crate::hf_export::FloatDtype,
    force: bool,
) -> Result<()> {
    use crate::convert::sink::{SafetensorsStream, Sink};
    let config = BitNetConfig::from_json(&preset.config_json())?;
    let mut json: serde_json::Value = serde_json::from_str(&preset.config_json())
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    if let Some(o) = json.as_object_mut() {
        o.remove("quantization_config");
        o.insert("torch_dtype".into(), dtype.torch_name().into());
    }
    let out = crate::atomic::AtomicDir::create(dir, force)?;
    let (h, f, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    // (name, shape, standard deviation, mean)
    let mut tensors: Vec<(String, Vec<usize>, f32, f32)> =
        vec![("model.embed_tokens.weight".into(), vec![v, h], 0.02, 0.0)];
    tensors.push(("model.norm.weight".into(), vec![h], 0.1, 1.0));
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        for (n, len) in [
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
            ("self_attn.attn_sub_norm", h),
            ("mlp.ffn_sub_norm", f),
        ] {
            tensors.push((format!("{p}.{n}.weight"), vec![len], 0.1, 1.0));
        }
        for k in 0..7 {
            let (r, c) = crate::convert::Linears::dims(&config, k);
            let name = crate::convert::LINEARS[k].0;
            tensors.push((format!("{p}.{name}.weight"), vec![r, c], 0.02, 0.0));
        }
    }
    let decl: Vec<_> = tensors
        .iter()
        .map(|(n, s, _, _)| (n.clone(), dtype.safetensors_dtype(), s.clone()))
        .collect();
    let path = out.path().join("model.safetensors");
    let file = crate::atomic::AtomicFile::create(&path, false)?;
    let mut sink = Sink::Safetensors(SafetensorsStream::new(file, &path, &decl)?);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut buf = Vec::new();
    for (name, shape, std, mean) in &tensors {
        let n: usize = shape.iter().product();
        sink.start(name)?;
        for start in (0..n).step_by(1 << 20) {
            let len = (1 << 20).min(n - start);
            // One draw per value: four 16-bit uniforms summed (Irwin-Hall),
            // rescaled to unit variance; fast enough for billions.
            buf.clear();
            buf.extend((0..len).map(|_| {
                let r = rng.next();
                let s = (r & 0xffff) + (r >> 16 & 0xffff) + (r >> 32 & 0xffff) + (r >> 48);
                let z = (s as f32 / 65536.0 - 2.0) * 1.732_050_8;
                mean + std * z
            }));
            sink.part(&dtype.encode(&buf).1)?;
        }
        sink.end()?;
    }
    sink.finish()?.commit()?;
    let cfg = out.path().join("config.json");
    std::fs::write(&cfg, json.to_string()).map_err(crate::Error::io(&cfg, "write"))?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_their_shapes_and_are_seeded() {
        for (name, hidden) in [("tiny", 256), ("125m", 768), ("700m", 1536), ("2b4t", 2560)] {
            let c = BitNetConfig::from_json(&Preset::parse(name).unwrap().config_json()).unwrap();
            assert_eq!(c.hidden_size, hidden);
        }
        assert!(Preset::parse("3b").is_none());
        let a = synthesize(Preset::Tiny, 1).unwrap();
        let b = synthesize(Preset::Tiny, 1).unwrap();
        let c = synthesize(Preset::Tiny, 2).unwrap();
        assert_eq!(a.embed_tokens, b.embed_tokens);
        assert_ne!(a.embed_tokens, c.embed_tokens);
        let Linear::Ternary(q) = &a.layers[0].q_proj else {
            panic!("ternary")
        };
        let codes = q.weights().to_codes();
        let zeros = codes.iter().filter(|&&c| c == 0).count() as f64 / codes.len() as f64;
        assert!((zeros - 1.0 / 3.0).abs() < 0.02, "{zeros}");
    }
}
