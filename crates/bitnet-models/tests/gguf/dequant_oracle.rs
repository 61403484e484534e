//! Q8_0, Q4_K and Q6_K decoding against gguf-py's numpy `dequantize`
//! (fixture made by `tools/make_dequant_fixture.py`): bit-identical, whole
//! tensors and row by row from a memory-mapped GGUF file.

use bitnet_models::gguf::{GgmlType, GgufFile, GgufWriter, dequantize, dequantize_row};
use safetensors::SafeTensors;

const FIXTURE: &[u8] = include_bytes!("../fixtures/dequant_oracle.safetensors");

fn case(ty: GgmlType) -> (Vec<u8>, Vec<f32>, usize) {
    let st = SafeTensors::deserialize(FIXTURE).unwrap();
    let bytes = st.tensor(&format!("{ty}.bytes")).unwrap().data().to_vec();
    let exp = st.tensor(&format!("{ty}.expected")).unwrap();
    let row_len = exp.shape()[1];
    let floats = exp
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (bytes, floats, row_len)
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {i}: {g} vs {w}");
    }
}

const TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];

#[test]
fn equals_gguf_py_exactly() {
    for ty in TYPES {
        let (bytes, want, row_len) = case(ty);
        assert_bits_eq(&dequantize(ty, &bytes).unwrap(), &want, ty.name());
        let row_bytes = bytes.len() / (want.len() / row_len);
        for (r, (b, w)) in bytes
            .chunks(row_bytes)
            .zip(want.chunks(row_len))
            .enumerate()
        {
            let mut out = vec![f32::NAN; row_len];
            dequantize_row(ty, b, &mut out).unwrap();
            assert_bits_eq(&out, w, &format!("{ty} row {r}"));
        }
    }
}

#[test]
fn rows_from_a_mapped_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.gguf");
    let mut w = GgufWriter::new();
    let cases: Vec<_> = TYPES.iter().map(|&ty| (ty, case(ty))).collect();
    for (ty, (bytes, want, row_len)) in &cases {
        let dims = [*row_len as u64, (want.len() / row_len) as u64];
        w.add_tensor(ty.name(), &dims, *ty, bytes.clone()).unwrap();
    }
    w.write_to_path(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    for (ty, (_, want, row_len)) in &cases {
        for (r, w) in want.chunks(*row_len).enumerate() {
            let mut out = vec![0.0; *row_len];
            file.dequantize_row(ty.name(), r, &mut out).unwrap();
            assert_bits_eq(&out, w, &format!("{ty} row {r} from file"));
        }
        assert_bits_eq(&file.dequantize_tensor(ty.name()).unwrap(), want, "tensor");
        let rows = want.len() / row_len;
        let err = file
            .dequantize_row(ty.name(), rows, &mut vec![0.0; *row_len])
            .unwrap_err()
            .to_string();
        assert!(err.contains("k.gguf") && err.contains(ty.name()), "{err}");
    }
}

#[test]
fn non_finite_scale_names_file_and_tensor() {
    let (mut bytes, _, row_len) = case(GgmlType::Q6_K);
    // Second block of row 1: its f16 d (bytes 208..210) becomes NaN.
    let at = (row_len / 256 + 1) * 210 + 208;
    bytes[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor(
        "token_embd.weight",
        &[row_len as u64, 4],
        GgmlType::Q6_K,
        bytes,
    )
    .unwrap();
    w.write_to_path(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let mut out = vec![0.0; row_len];
    file.dequantize_row("token_embd.weight", 0, &mut out)
        .unwrap();
    let err = file
        .dequantize_row("token_embd.weight", 1, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nan.gguf") && err.contains("token_embd.weight") && err.contains("non-finite"),
        "{err}"
    );
}
