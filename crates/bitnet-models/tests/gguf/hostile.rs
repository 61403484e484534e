//! Hostile input: every malformed file must give a clear error, never a
//! panic or a huge allocation.

use super::{info_pos, put_u32, put_u64, small_file, type_pos};
use bitnet_models::Error;
use bitnet_models::gguf::{GgmlType, GgufContent, GgufFile, GgufWriter, MetadataValue as V};
use bitnet_quant::formats::i2s;
use proptest::prelude::*;

fn parse(bytes: &[u8]) -> Result<GgufContent, Error> {
    GgufContent::parse(bytes)
}

/// A header with the given counts and nothing after.
fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b
}

#[test]
fn every_strict_prefix_is_an_error() {
    let bytes = small_file();
    let c = parse(&bytes).unwrap();
    assert_eq!(c.tensors().len(), 2);
    for len in 0..bytes.len() {
        assert!(
            parse(&bytes[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn truncation_is_reported_with_offsets() {
    let bytes = small_file();
    let e = parse(&bytes[..10]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Truncated {
                what: "tensor count",
                offset: 8,
                needed: 8,
                available: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = parse(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(e.to_string().contains("\"b\""), "{e}");
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = small_file();
    bytes[0] = b'X';
    assert!(matches!(parse(&bytes), Err(Error::BadMagic { found, .. }) if &found == b"XGUF"));
    for (v, hint) in [
        (1u32, "obsolete"),
        (4, "versions 2 and 3"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut bytes = small_file();
        put_u32(&mut bytes, 4, v);
        match parse(&bytes) {
            Err(e @ Error::UnsupportedVersion { version, .. }) => {
                assert_eq!(version, v);
                assert!(e.to_string().contains(hint), "{e}");
            }
            other => panic!("version {v}: {other:?}"),
        }
    }
    let mut bytes = small_file();
    put_u32(&mut bytes, 4, 2);
    assert!(parse(&bytes).is_ok(), "version 2 has the same layout");
}

#[test]
fn huge_lengths_and_counts_are_capped() {
    // key length
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        parse(&b),
        Err(Error::LimitExceeded {
            what: "key length",
            ..
        })
    ));
    // string value length above the cap
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        parse(&b),
        Err(Error::LimitExceeded {
            what: "string length",
            ..
        })
    ));
    // string value under the cap but past the end
    let n = b.len();
    put_u64(&mut b, n - 8, 1 << 20);
    assert!(matches!(
        parse(&b),
        Err(Error::Truncated {
            needed: 1048576,
            ..
        })
    ));
    // counts
    let b = header(3, u64::MAX, 0);
    assert!(matches!(
        parse(&b),
        Err(Error::LimitExceeded {
            what: "tensor count",
            ..
        })
    ));
    let b = header(3, 0, 1 << 40);
    assert!(matches!(
        parse(&b),
        Err(Error::LimitExceeded {
            what: "metadata count",
            ..
        })
    ));
    // a count under the cap that the file cannot hold fails without allocating
    let b = header(3, 1 << 20, 0);
    assert!(matches!(parse(&b), Err(Error::Truncated { .. })));
}

fn array_header(elem_type: u32, count: u64) -> Vec<u8> {
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&elem_type.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b
}

#[test]
fn hostile_arrays() {
    let b = array_header(10, u64::MAX);
    assert!(matches!(
        parse(&b),
        Err(Error::LimitExceeded {
            what: "array length",
            ..
        })
    ));
    let b = array_header(10, 1 << 20);
    assert!(matches!(
        parse(&b),
        Err(Error::Truncated { what: "array elements", needed, .. }) if needed == 8 << 20
    ));
    // arrays of arrays nested past the depth cap
    let mut b = array_header(9, 1);
    for _ in 0..10 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&[0; 64]);
    assert!(matches!(
        parse(&b),
        Err(Error::LimitExceeded {
            what: "array nesting depth",
            ..
        })
    ));
    // unknown element type, bool not 0/1
    let b = array_header(13, 1);
    assert!(matches!(
        parse(&b),
        Err(Error::Invalid {
            what: "value type",
            ..
        })
    ));
    let mut b = array_header(7, 1);
    b.push(2);
    assert!(matches!(
        parse(&b),
        Err(Error::Invalid { what: "bool", .. })
    ));
}

#[test]
fn bad_keys() {
    let mut b = header(3, 0, 2);
    for _ in 0..2 {
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(1);
    }
    assert!(
        matches!(parse(&b), Err(Error::DuplicateKey { ref key, offset: 38, .. }) if key == "k")
    );
    b[24 + 8] = 0xff;
    assert!(matches!(
        parse(&b),
        Err(Error::Invalid {
            what: "key length",
            ..
        })
    ));
}

#[test]
fn bad_dimensions() {
    let bytes = small_file();
    let p = info_pos(&bytes, "a");
    // product overflow: 2^32 * 2^32
    let mut b = bytes.clone();
    put_u64(&mut b, p + 4, 1 << 32);
    put_u64(&mut b, p + 12, 1 << 32);
    let e = parse(&b).unwrap_err();
    assert!(
        matches!(&e, Error::BadTensor { tensor, reason, .. } if tensor == "a" && reason.contains("overflow")),
        "{e}"
    );
    // a product that fits u64 but whose byte size does not
    let mut b = bytes.clone();
    put_u64(&mut b, p + 4, 1 << 31);
    put_u64(&mut b, p + 12, 1 << 31);
    assert!(matches!(parse(&b), Err(Error::BadTensor { .. })));
    // zero dimension
    let mut b = bytes.clone();
    put_u64(&mut b, p + 4, 0);
    assert!(matches!(parse(&b), Err(Error::BadTensor { .. })));
    // too many dimensions
    for n in [0u32, 5, u32::MAX] {
        let mut b = bytes.clone();
        put_u32(&mut b, p, n);
        assert!(
            matches!(parse(&b), Err(Error::BadTensor { .. })),
            "{n} dims"
        );
    }
}

#[test]
fn bad_offsets() {
    let bytes = small_file();
    let at = type_pos(&bytes, "b") + 4;
    let cases = [
        (8u64, "not a multiple"),
        (1 << 40, "past the end"),
        (u64::MAX - 31, "past the end"),
        (0, "overlaps"),
    ];
    for (offset, msg) in cases {
        let mut b = bytes.clone();
        put_u64(&mut b, at, offset);
        let e = parse(&b).unwrap_err();
        assert!(e.to_string().contains(msg), "offset {offset}: {e}");
    }
    // the last tensor's data runs past the end of the file
    let e = parse(&bytes[..bytes.len() - 4]).unwrap_err();
    assert!(e.to_string().contains("run past the end"), "{e}");
}

#[test]
fn bad_alignment_values() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", V::U32(32)).unwrap();
    let bytes = w.to_bytes().unwrap();
    let at = info_pos(&bytes, "general.alignment") + 4;
    for a in [0u32, 3, 96] {
        let mut b = bytes.clone();
        put_u32(&mut b, at, a);
        assert!(matches!(parse(&b), Err(Error::BadMetadata { .. })), "{a}");
    }
    let mut b = bytes.clone();
    put_u32(&mut b, at - 4, 6); // f32 instead of u32
    assert!(matches!(parse(&b), Err(Error::BadMetadata { .. })));
}

#[test]
fn unknown_type_ids_name_the_tensor() {
    for id in [4u32, 31, 33, 41, 1000, u32::MAX] {
        let mut b = small_file();
        let at = type_pos(&b, "b");
        put_u32(&mut b, at, id);
        match parse(&b) {
            Err(e @ Error::UnknownTensorType { .. }) => {
                assert!(e.to_string().contains("\"b\""), "{e}");
                assert!(e.to_string().contains(&id.to_string()), "{e}");
            }
            other => panic!("id {id}: {other:?}"),
        }
    }
}

#[test]
fn duplicate_tensor_names() {
    let mut w = GgufWriter::new();
    w.add_tensor("aa", &[8], GgmlType::F32, vec![0u8; 32])
        .unwrap();
    w.add_tensor("ab", &[8], GgmlType::F32, vec![0u8; 32])
        .unwrap();
    let mut b = w.to_bytes().unwrap();
    let p = info_pos(&b, "ab");
    b[p - 1] = b'a';
    assert!(matches!(parse(&b), Err(Error::DuplicateTensor { ref tensor, .. }) if tensor == "aa"));
}

fn ambiguous(b: &[u8], name: &str) {
    match parse(b) {
        Err(e @ Error::AmbiguousTensorType { .. }) => {
            assert!(e.to_string().contains(&format!("{name:?}")), "{e}")
        }
        other => panic!("expected ambiguous {name}: {other:?}"),
    }
}

#[test]
fn ambiguous_collision_ids() {
    let n = 4096u64;
    // bitnet.cpp metadata, id 36, but an MXFP4-sized tensor
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", V::String("bitnet-zz".into()))
        .unwrap();
    w.add_tensor(
        "w",
        &[n],
        GgmlType::MXFP4,
        vec![0u8; (n / 32 * 17) as usize],
    )
    .unwrap();
    let mut b = w.to_bytes().unwrap();
    let at = type_pos(&b, "w");
    put_u32(&mut b, at, 36);
    let arch = info_pos(&b, "general.architecture") + 4 + 8;
    b[arch..arch + 9].copy_from_slice(b"bitnet-25");
    ambiguous(&b, "w");

    // no metadata, id 39 with I2_S's size: neither TL2 nor MXFP4 fits
    let mut w = GgufWriter::new();
    let codes = vec![1i8; n as usize];
    w.add_tensor("w", &[n], GgmlType::I2_S, i2s::pack(&codes, 1.0).unwrap())
        .unwrap();
    let mut b = w.to_bytes().unwrap();
    let at = type_pos(&b, "w");
    put_u32(&mut b, at, 39);
    ambiguous(&b, "w");

    // an I2_S tensor and an MXFP4 tensor in one file
    let mut w = GgufWriter::new();
    w.add_tensor("i2", &[n], GgmlType::I2_S, i2s::pack(&codes, 1.0).unwrap())
        .unwrap();
    w.add_tensor(
        "mx",
        &[n / 32 * 17],
        GgmlType::I8,
        vec![0u8; (n / 32 * 17) as usize],
    )
    .unwrap();
    let mut b = w.to_bytes().unwrap();
    assert!(parse(&b).is_ok());
    let p = info_pos(&b, "mx");
    put_u64(&mut b, p + 4, n);
    let at = type_pos(&b, "mx");
    put_u32(&mut b, at, 39);
    ambiguous(&b, "mx");

    // bitnet.cpp defines no tensor type 40
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", V::String("bitnet-b1.58".into()))
        .unwrap();
    w.add_tensor("w", &[n], GgmlType::I2_S, i2s::pack(&codes, 1.0).unwrap())
        .unwrap();
    let mut b = w.to_bytes().unwrap();
    let at = type_pos(&b, "w");
    put_u32(&mut b, at, 40);
    assert!(matches!(
        parse(&b),
        Err(Error::UnknownTensorType { type_id: 40, .. })
    ));
    // TL1 is recognized but cannot be sized
    put_u32(&mut b, at, 38);
    assert!(matches!(
        parse(&b),
        Err(Error::UnsupportedTensorType {
            type_name: "TL1",
            ..
        })
    ));
}

#[test]
fn files_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty),
        Err(Error::Truncated { .. })
    ));
    let cut = dir.path().join("cut.gguf");
    let bytes = small_file();
    std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
    let e = GgufFile::open(&cut).unwrap_err();
    assert!(e.to_string().contains("cut.gguf"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_byte_flips_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut b = small_file();
        for (i, v) in flips {
            let i = i.index(b.len());
            b[i] = v;
        }
        if truncate {
            let n = cut.index(b.len());
            b.truncate(n);
        }
        if let Ok(c) = parse(&b) {
            for t in c.tensors() {
                let data = c.tensor_bytes(&b, t.name()).unwrap();
                prop_assert_eq!(data.len() as u64, t.size_bytes());
            }
        }
    }
}
