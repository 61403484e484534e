//! Helpers shared by the integration tests: fixture paths, the reference
//! outputs in `expected.safetensors`, and logit comparison.
#![allow(dead_code)] // each test binary uses a different subset

use bitnet_core::Parallelism;
use bitnet_inference::{BitNetModel, Logits};
use safetensors::SafeTensors;
use std::path::PathBuf;

/// The tiny transformers-made checkpoint of `variant`.
pub(crate) fn dir(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(variant)
}

/// The reference outputs of one variant.
pub(crate) struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    pub(crate) fn load(variant: &str) -> Self {
        Expected {
            bytes: std::fs::read(dir(variant).join("expected.safetensors")).unwrap(),
        }
    }
    fn data(&self, name: &str) -> Vec<u8> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        st.tensor(name).unwrap().data().to_vec()
    }
    /// An I64 id tensor as u32 ids.
    pub(crate) fn ids(&self, name: &str) -> Vec<u32> {
        self.data(name)
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    }
    /// An F32 tensor.
    pub(crate) fn f32(&self, name: &str) -> Vec<f32> {
        self.data(name)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// Logits at every position of `ids`, from a fresh cache.
pub(crate) fn logits(model: &BitNetModel, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(64);
    model
        .forward(ids, &mut cache, Logits::All, Parallelism::Sequential)
        .unwrap()
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// `ids` (I64) and the F32 tensor `key` of a logits fixture file, as
/// `tools/llama_logits.c`'s wrappers write them.
#[allow(dead_code)] // not every test binary reads llama.cpp fixtures
pub(crate) fn ids_and_logits(path: &std::path::Path, key: &str) -> (Vec<u32>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st
        .tensor("ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor(key)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, logits)
}

/// Index of the largest value of each `vocab`-long row.
#[allow(dead_code)] // not every test binary compares top-1 tokens
pub(crate) fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<usize> {
    logits
        .chunks(vocab)
        .map(|r| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
        .collect()
}
