//! Write → read round trips for every value type and the tensor types the
//! engine uses.

use bitnet_models::Error;
use bitnet_models::gguf::{
    Dialect, GgmlType, GgufContent, GgufFile, GgufWriter, MetadataArray as A, MetadataValue as V,
};
use bitnet_quant::formats::{
    QuantBlock, blocks_from_bytes, blocks_to_bytes, i2s, tq1_0, tq1_0::BlockTq1_0, tq2_0,
    tq2_0::BlockTq2_0,
};

fn every_value() -> Vec<(&'static str, V)> {
    vec![
        ("u8", V::U8(200)),
        ("i8", V::I8(-100)),
        ("u16", V::U16(60000)),
        ("i16", V::I16(-30000)),
        ("u32", V::U32(4_000_000_000)),
        ("i32", V::I32(-2_000_000_000)),
        ("f32", V::F32(-1.5e-7)),
        ("bool.t", V::Bool(true)),
        ("bool.f", V::Bool(false)),
        ("string", V::String("héllo ✓".into())),
        ("string.empty", V::String(String::new())),
        ("u64", V::U64(u64::MAX)),
        ("i64", V::I64(i64::MIN)),
        ("f64", V::F64(std::f64::consts::PI)),
        ("arr.u8", V::Array(A::U8(vec![0, 1, 255]))),
        ("arr.i8", V::Array(A::I8(vec![-128, 127]))),
        ("arr.u16", V::Array(A::U16(vec![1, 65535]))),
        ("arr.i16", V::Array(A::I16(vec![-1, 2]))),
        ("arr.u32", V::Array(A::U32(vec![7]))),
        ("arr.i32", V::Array(A::I32(vec![-7, 0, 7]))),
        ("arr.f32", V::Array(A::F32(vec![0.25, -3.0]))),
        ("arr.bool", V::Array(A::Bool(vec![true, false, true]))),
        (
            "arr.str",
            V::Array(A::String(vec!["<s>".into(), "".into(), "Ġthe".into()])),
        ),
        ("arr.u64", V::Array(A::U64(vec![u64::MAX, 0]))),
        ("arr.i64", V::Array(A::I64(vec![i64::MIN]))),
        ("arr.f64", V::Array(A::F64(vec![1e300]))),
        ("arr.empty", V::Array(A::F32(vec![]))),
        (
            "arr.nested",
            V::Array(A::Array(vec![
                A::U8(vec![1, 2]),
                A::String(vec!["x".into()]),
                A::Array(vec![A::I32(vec![-1])]),
            ])),
        ),
    ]
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ternary(n: usize, seed: usize) -> Vec<i8> {
    (0..n).map(|i| ((i * 7 + seed) % 3) as i8 - 1).collect()
}

#[test]
fn every_metadata_type_and_float_tensors_round_trip() {
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.add_metadata(k, v).unwrap();
    }
    let f32_data = f32_bytes(&[1.0, -2.0, 3.5, 0.0, 1e-30, -0.0]);
    let f16_data: Vec<u8> = (0..10u16)
        .flat_map(|i| half::f16::from_f32(i as f32 - 4.5).to_le_bytes())
        .collect();
    // two raw Q8_0 blocks: f16 scale then 32 int8 each
    let q8_data: Vec<u8> = (0..68u32).map(|i| (i * 37 % 251) as u8).collect();
    w.add_tensor("f32", &[3, 2], GgmlType::F32, f32_data.as_slice())
        .unwrap();
    w.add_tensor("f16", &[5, 2], GgmlType::F16, f16_data.clone())
        .unwrap();
    w.add_tensor("q8", &[64], GgmlType::Q8_0, q8_data.clone())
        .unwrap();
    w.add_tensor("bf16", &[1], GgmlType::BF16, vec![0x80, 0x3f])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    w.write_to_path(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.as_bytes(), w.to_bytes().unwrap().as_slice());
    assert_eq!(f.content().version(), 3);
    assert_eq!(f.dialect(), Dialect::Upstream);

    let got: Vec<_> = f
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    let want: Vec<_> = every_value()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(got, want);
    assert_eq!(f.metadata().get_u32("u16").unwrap(), 60000);
    assert_eq!(f.metadata().get_str("string").unwrap(), "héllo ✓");
    assert_eq!(f.metadata().get_array("arr.str").unwrap().len(), 3);

    let names: Vec<_> = f.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["f32", "f16", "q8", "bf16"]);
    let t = &f.tensors()[0];
    assert_eq!(
        (t.dims(), t.ggml_type(), t.size_bytes()),
        (&[3u64, 2][..], GgmlType::F32, 24)
    );
    assert_eq!(f.tensors()[2].type_id(), 8);
    for t in f.tensors() {
        assert_eq!(t.offset() % 32, 0);
    }
    assert_eq!(f.content().data_start() % 32, 0);
    assert_eq!(f.tensor_bytes("f32").unwrap(), f32_data.as_slice());
    assert_eq!(f.tensor_bytes("f16").unwrap(), f16_data.as_slice());
    assert_eq!(f.tensor_bytes("q8").unwrap(), q8_data.as_slice());
    assert!(matches!(
        f.tensor_bytes("nope"),
        Err(Error::TensorNotFound { .. })
    ));
}

#[test]
fn ternary_formats_round_trip_in_a_bitnet_cpp_file() {
    let (rows, cols) = (3usize, 512usize);
    let n = rows * cols;
    let c1 = ternary(n, 1);
    let c2 = ternary(n, 2);
    let c3 = ternary(n, 0);
    let tq1 = blocks_to_bytes(&tq1_0::from_ternary(&c1, 0.5).unwrap());
    let tq2 = blocks_to_bytes(&tq2_0::from_ternary(&c2, 0.25).unwrap());
    let i2 = i2s::pack(&c3, 0.75).unwrap();

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", V::String("bitnet-b1.58".into()))
        .unwrap();
    w.add_metadata("general.file_type", V::U32(40)).unwrap();
    let dims = [cols as u64, rows as u64];
    w.add_tensor(
        "blk.0.attn_q.weight",
        &dims,
        GgmlType::TQ1_0,
        tq1.as_slice(),
    )
    .unwrap();
    w.add_tensor(
        "blk.0.attn_k.weight",
        &dims,
        GgmlType::TQ2_0,
        tq2.as_slice(),
    )
    .unwrap();
    w.add_tensor("blk.0.attn_v.weight", &dims, GgmlType::I2_S, i2.as_slice())
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    let c = GgufContent::parse(&bytes).unwrap();
    assert_eq!(c.dialect(), Dialect::BitnetCpp);
    let ids: Vec<_> = c
        .tensors()
        .iter()
        .map(|t| (t.type_id(), t.ggml_type()))
        .collect();
    assert_eq!(
        ids,
        [
            (34, GgmlType::TQ1_0),
            (35, GgmlType::TQ2_0),
            (36, GgmlType::I2_S)
        ]
    );

    let got1 = c.tensor_bytes(&bytes, "blk.0.attn_q.weight").unwrap();
    assert_eq!(got1, tq1.as_slice());
    let (codes, scales) = tq1_0::to_codes(&blocks_from_bytes::<BlockTq1_0>(got1, n).unwrap());
    assert_eq!(codes, c1);
    assert!(scales.iter().all(|&s| s == 0.5));
    assert_eq!(got1.len(), n / BlockTq1_0::WEIGHTS * BlockTq1_0::BYTES);

    let got2 = c.tensor_bytes(&bytes, "blk.0.attn_k.weight").unwrap();
    let (codes, _) = tq2_0::to_codes(&blocks_from_bytes::<BlockTq2_0>(got2, n).unwrap());
    assert_eq!(codes, c2);

    let got3 = c.tensor_bytes(&bytes, "blk.0.attn_v.weight").unwrap();
    assert_eq!(got3.len(), n / 4 + 32);
    assert_eq!(i2s::unpack(got3, n).unwrap(), (c3, 0.75));
}

#[test]
fn i2s_is_recognized_by_size_without_bitnet_metadata() {
    let codes = ternary(1024, 5);
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", V::String("llama".into()))
        .unwrap();
    w.add_tensor(
        "w",
        &[1024],
        GgmlType::I2_S,
        i2s::pack(&codes, 1.0).unwrap(),
    )
    .unwrap();
    w.add_tensor("n", &[8], GgmlType::F32, vec![0u8; 32])
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    let c = GgufContent::parse(&bytes).unwrap();
    assert_eq!(c.tensor("w").unwrap().ggml_type(), GgmlType::I2_S);
    assert_eq!(c.dialect(), Dialect::BitnetCpp);
}

#[test]
fn upstream_mxfp4_is_recognized_by_size() {
    let mut w = GgufWriter::new();
    w.add_tensor("m", &[4096], GgmlType::MXFP4, vec![1u8; 4096 / 32 * 17])
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    let c = GgufContent::parse(&bytes).unwrap();
    assert_eq!(c.tensor("m").unwrap().ggml_type(), GgmlType::MXFP4);
    assert_eq!(c.dialect(), Dialect::Upstream);
}

#[test]
fn custom_alignments_are_honoured() {
    for align in [1u32, 8, 64, 4096] {
        let mut w = GgufWriter::new();
        w.add_metadata("general.alignment", V::U32(align)).unwrap();
        w.add_tensor("a", &[3], GgmlType::I8, vec![1, 2, 3])
            .unwrap();
        w.add_tensor("b", &[3], GgmlType::I16, vec![4, 5, 6, 7, 8, 9])
            .unwrap();
        let bytes = w.to_bytes().unwrap();
        assert_eq!(bytes.len() % align as usize, 0);
        let c = GgufContent::parse(&bytes).unwrap();
        assert_eq!(c.alignment(), u64::from(align));
        assert_eq!(c.data_start() % u64::from(align), 0);
        assert_eq!(c.tensor("b").unwrap().offset() % u64::from(align), 0);
        assert_eq!(c.tensor_bytes(&bytes, "a").unwrap(), [1, 2, 3]);
        assert_eq!(c.tensor_bytes(&bytes, "b").unwrap(), [4, 5, 6, 7, 8, 9]);
    }
}

#[test]
fn empty_file_round_trips() {
    let bytes = GgufWriter::new().to_bytes().unwrap();
    assert_eq!(bytes.len(), 32);
    let c = GgufContent::parse(&bytes).unwrap();
    assert!(c.metadata().is_empty() && c.tensors().is_empty());
}

#[test]
fn writer_refuses_bad_input() {
    let mut w = GgufWriter::new();
    let len = |r: Result<(), Error>| matches!(r, Err(Error::BadTensor { .. }));
    assert!(len(w.add_tensor("x", &[4], GgmlType::F32, vec![0u8; 15])));
    assert!(len(w.add_tensor(
        "x",
        &[100],
        GgmlType::Q8_0,
        vec![0u8; 34 * 4]
    )));
    assert!(len(w.add_tensor(
        "x",
        &[1, 1, 1, 1, 1],
        GgmlType::I8,
        vec![0u8]
    )));
    assert!(len(w.add_tensor("x", &[0], GgmlType::I8, vec![])));
    assert!(len(w.add_tensor("x", &[128], GgmlType::TL1, vec![0u8; 64])));
    assert!(len(w.add_tensor(
        "x",
        &[128],
        GgmlType::I2_S,
        vec![0u8; 63]
    )));
    w.add_tensor("x", &[4], GgmlType::I8, vec![0u8; 4]).unwrap();
    assert!(matches!(
        w.add_tensor("x", &[4], GgmlType::I8, vec![0u8; 4]),
        Err(Error::DuplicateTensor { .. })
    ));
    assert!(matches!(
        w.add_metadata("general.alignment", V::U32(64)),
        Err(Error::BadMetadata { .. })
    ));
    w.add_metadata("k", V::U8(1)).unwrap();
    assert!(matches!(
        w.add_metadata("k", V::U8(2)),
        Err(Error::DuplicateKey { .. })
    ));

    let mut w = GgufWriter::new();
    for bad in [V::U32(0), V::U32(48), V::U64(64)] {
        assert!(matches!(
            w.add_metadata("general.alignment", bad),
            Err(Error::BadMetadata { .. })
        ));
    }
    let nest = |inner: A| A::Array(vec![inner]);
    let four = nest(nest(nest(A::U8(vec![7]))));
    w.add_metadata("four", V::Array(four.clone())).unwrap();
    assert!(
        w.add_metadata("five", V::Array(nest(four.clone())))
            .is_err()
    );
    let c = GgufContent::parse(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(c.metadata().get_array("four").unwrap(), &four);

    // bitnet.cpp and upstream meanings of ids 36-40 cannot share a file
    let mut w = GgufWriter::new();
    w.add_tensor("i2", &[128], GgmlType::I2_S, vec![0x55u8; 64])
        .unwrap();
    assert!(len(w.add_tensor(
        "m",
        &[32],
        GgmlType::MXFP4,
        vec![0u8; 17]
    )));
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", V::String("bitnet-25".into()))
        .unwrap();
    w.add_tensor("m", &[32], GgmlType::MXFP4, vec![0u8; 17])
        .unwrap();
    assert!(matches!(w.to_bytes(), Err(Error::BadTensor { .. })));
}

#[test]
fn write_to_path_replaces_atomically_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    let mut w = GgufWriter::new();
    w.add_tensor("t", &[2], GgmlType::F32, f32_bytes(&[1.0, 2.0]))
        .unwrap();
    w.write_to_path(&path).unwrap();
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "temporary file left behind");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_bytes("t").unwrap(), f32_bytes(&[1.0, 2.0]));

    let missing = dir.path().join("no/such/dir/x.gguf");
    assert!(matches!(
        w.write_to_path(&missing),
        Err(Error::Io { op: "create", .. })
    ));
    assert!(matches!(
        GgufFile::open(&missing),
        Err(Error::Io { op: "open", .. })
    ));
}
