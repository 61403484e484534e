//! GGUF integration tests, built as one binary: round trips through the
//! writer and reader, and hostile input.

mod dequant_oracle;
mod hostile;
mod roundtrip;

use bitnet_models::gguf::{GgmlType, GgufWriter, MetadataValue};

/// Position of the tensor info of `name` just after its name (the n_dims
/// field), found by its length-prefixed name.
pub(crate) fn info_pos(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == needle.as_slice())
        .expect("name in file");
    at + needle.len()
}

/// Byte position of a tensor's type id field.
pub(crate) fn type_pos(bytes: &[u8], name: &str) -> usize {
    let p = info_pos(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p + 4 + 8 * n_dims
}

pub(crate) fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A small valid file: metadata of several types and two F32 tensors whose
/// sizes are multiples of the alignment, so the file ends with the last
/// tensor's data and every strict prefix is truncated.
pub(crate) fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .unwrap();
    w.add_metadata("llama.block_count", MetadataValue::U32(2))
        .unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(bitnet_models::gguf::MetadataArray::String(vec![
            "a".into(),
            "bc".into(),
        ])),
    )
    .unwrap();
    w.add_metadata("eps", MetadataValue::F32(1e-5)).unwrap();
    let a: Vec<u8> = (0..64u8).collect();
    let b: Vec<u8> = (0..32u8).map(|x| x ^ 0x5a).collect();
    w.add_tensor("a", &[4, 4], GgmlType::F32, a).unwrap();
    w.add_tensor("b", &[8], GgmlType::F32, b).unwrap();
    w.to_bytes().unwrap()
}
