//! Checks every packed-format decoder (HF 2-bit, I2_S, TQ1_0, TQ2_0, runtime)
//! on arbitrary bytes with small shapes: no decoder panics, accepted codes are
//! in {-1, 0, 1}, and re-encoding what a decoder accepted gives back the
//! bytes (up to the bits the format ignores: HF 2-bit padding rows, I2_S
//! scale padding, runtime padding columns).
#![no_main]

use bitnet_quant::formats::runtime::{BLOCK, BLOCK_BYTES, PackedTernary};
use bitnet_quant::formats::tq1_0::{self, BlockTq1_0};
use bitnet_quant::formats::tq2_0::{self, BlockTq2_0};
use bitnet_quant::formats::{QuantBlock, blocks_from_bytes, blocks_to_bytes, hf2bit, i2s};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (hdr, body) = data.split_at(6);
    // Bit 0 of the mode byte: derive the shape from the body length so the
    // decoders mostly accept; otherwise take it raw from the header (mostly
    // rejected, exercising the length checks).
    let fit = hdr[0] & 1 == 0;
    hf2bit_case(fit, hdr[1], hdr[2], body);
    i2s_case(fit, hdr[3], body);
    tq_case::<BlockTq1_0>(fit, hdr[4], body, tq1_reencode);
    tq_case::<BlockTq2_0>(fit, hdr[4], body, tq2_reencode);
    runtime_case(fit, hdr[5], hdr[2], body);
});

fn assert_ternary(codes: &[i8], what: &str) {
    assert!(codes.iter().all(|c| (-1..=1).contains(c)), "{what}: code out of range");
}

/// Cross-check: codes a decoder accepted survive the runtime layout.
fn runtime_round_trip(codes: &[i8], rows: usize, cols: usize) {
    let p = PackedTernary::from_codes(codes, rows, cols).expect("valid codes must pack");
    assert_eq!(p.to_codes(), codes);
}

fn hf2bit_case(fit: bool, a: u8, b: u8, body: &[u8]) {
    let cols = usize::from(b % 17); // 0..=16
    let (out, bytes) = if fit {
        let c = cols.max(1);
        let r_len = (body.len() / c).min(16);
        let out = (4 * r_len).saturating_sub(usize::from(a % 4));
        let out = if r_len == 0 { 0 } else { out };
        (out, &body[..(out.div_ceil(4) * cols).min(body.len())])
    } else {
        (usize::from(a % 64), body)
    };
    let Ok(codes) = hf2bit::unpack(bytes, out, cols) else {
        return;
    };
    assert_eq!(Some(bytes.len()), hf2bit::packed_len(out, cols));
    assert_eq!(codes.len(), out * cols);
    assert_ternary(&codes, "hf2bit");
    let packed = hf2bit::pack(&codes, out, cols).expect("decoded codes must re-pack");
    // Padding rows (index >= out) are dropped by unpack and written as 0 by
    // pack, so the invertible part is the bytes with padding fields cleared.
    let r_len = out.div_ceil(4);
    let mut expected = bytes.to_vec();
    for r in 0..r_len {
        for slot in 0..4 {
            if slot * r_len + r >= out {
                for byte in &mut expected[r * cols..(r + 1) * cols] {
                    *byte &= !(3 << (2 * slot));
                }
            }
        }
    }
    assert_eq!(packed, expected, "hf2bit: pack(unpack(b)) != b without padding");
    assert_eq!(hf2bit::unpack(&packed, out, cols).unwrap(), codes);
    runtime_round_trip(&codes, out, cols);
}

fn i2s_case(fit: bool, a: u8, body: &[u8]) {
    let (n, bytes) = if fit {
        let groups = (body.len().saturating_sub(i2s::TRAILER) / 32).min(16);
        let n = groups * i2s::GROUP;
        (n, &body[..i2s::tensor_len(n).min(body.len())])
    } else {
        (usize::from(a) * 8, body)
    };
    let Ok((codes, scale)) = i2s::unpack(bytes, n) else {
        return;
    };
    assert_eq!(codes.len(), n);
    assert_ternary(&codes, "i2s");
    assert!(scale.is_finite());
    let packed = i2s::pack(&codes, scale).expect("decoded codes must re-pack");
    // The 28 bytes after the f32 scale are padding the decoder ignores.
    let meaningful = n / 4 + 4;
    assert_eq!(packed.len(), bytes.len());
    assert_eq!(&packed[..meaningful], &bytes[..meaningful], "i2s: pack(unpack(b)) != b");
    let (codes2, scale2) = i2s::unpack(&packed, n).expect("packed bytes must decode");
    assert_eq!(codes2, codes);
    assert_eq!(scale2.to_bits(), scale.to_bits());
}

fn tq_case<B: QuantBlock + PartialEq + std::fmt::Debug>(
    fit: bool,
    a: u8,
    body: &[u8],
    reencode: fn(&[B]),
) {
    let (n, bytes) = if fit {
        let blocks = (body.len() / B::BYTES).min(8);
        (blocks * B::WEIGHTS, &body[..blocks * B::BYTES])
    } else {
        (usize::from(a) * 16, body)
    };
    let Ok(blocks) = blocks_from_bytes::<B>(bytes, n) else {
        return;
    };
    assert_eq!(blocks.len() * B::WEIGHTS, n);
    assert_eq!(blocks_to_bytes(&blocks), bytes, "{}: blocks_to_bytes(blocks_from_bytes(b)) != b", B::FORMAT);
    reencode(&blocks);
}

/// Re-encodes each TQ1_0 block from its decoded codes and scale.
fn tq1_reencode(blocks: &[BlockTq1_0]) {
    let (codes, scales) = tq1_0::to_codes(blocks);
    assert_ternary(&codes, "tq1_0");
    for ((b, c), s) in blocks.iter().zip(codes.chunks(256)).zip(&scales) {
        let again = tq1_0::from_ternary(c, *s).expect("decoded codes must re-pack");
        assert_eq!(again[0].qs, b.qs, "tq1_0 qs not canonical");
        assert_eq!(again[0].qh, b.qh, "tq1_0 qh not canonical");
        if !b.d.is_nan() {
            assert_eq!(again[0].d.to_bits(), b.d.to_bits());
        }
    }
    runtime_round_trip(&codes, blocks.len(), 256);
}

/// Re-encodes each TQ2_0 block from its decoded codes and scale.
fn tq2_reencode(blocks: &[BlockTq2_0]) {
    let (codes, scales) = tq2_0::to_codes(blocks);
    assert_ternary(&codes, "tq2_0");
    for ((b, c), s) in blocks.iter().zip(codes.chunks(256)).zip(&scales) {
        let again = tq2_0::from_ternary(c, *s).expect("decoded codes must re-pack");
        assert_eq!(again[0].qs, b.qs, "tq2_0 qs not canonical");
        if !b.d.is_nan() {
            assert_eq!(again[0].d.to_bits(), b.d.to_bits());
        }
    }
    runtime_round_trip(&codes, blocks.len(), 256);
    // The direct repack (how GGUF TQ2_0 layers load) equals packing the
    // codes, as one row of all blocks and as a row per block.
    let packed = PackedTernary::from_codes(&codes, blocks.len(), 256).expect("valid codes");
    let repacked = PackedTernary::from_tq2_0(blocks, blocks.len(), 256).expect("valid blocks");
    assert_eq!(repacked, packed, "tq2_0 repack differs from packing its codes");
    let one_row = PackedTernary::from_tq2_0(blocks, 1, 256 * blocks.len()).expect("valid blocks");
    assert_eq!(one_row.to_codes(), codes, "tq2_0 repack as one row");
}

fn runtime_case(fit: bool, a: u8, b: u8, body: &[u8]) {
    let cols = usize::from(a) * 3 + usize::from(b % 4); // 0..=768
    let row_bytes = cols.div_ceil(BLOCK) * BLOCK_BYTES;
    let (rows, bytes) = if fit {
        let rows = if row_bytes == 0 {
            usize::from(b % 8)
        } else {
            (body.len() / row_bytes).min(8)
        };
        (rows, &body[..rows * row_bytes])
    } else {
        (usize::from(b % 8), body)
    };
    let Ok(p) = PackedTernary::from_bytes(bytes, rows, cols) else {
        return;
    };
    assert_eq!((p.rows(), p.cols()), (rows, cols));
    assert_eq!(p.as_bytes(), bytes, "runtime: as_bytes differs from input");
    let q = PackedTernary::from_bytes(p.as_bytes(), rows, cols).expect("as_bytes must decode");
    assert_eq!(q, p);
    let codes = p.to_codes();
    assert_eq!(codes.len(), rows * cols);
    assert_ternary(&codes, "runtime");
    for r in 0..rows {
        for c in 0..cols {
            assert_eq!(p.code(r, c), codes[r * cols + c]);
        }
    }
    // from_codes writes padding columns as code 0 (0b01); the rest must match.
    let again = PackedTernary::from_codes(&codes, rows, cols).expect("decoded codes must re-pack");
    let mut expected = bytes.to_vec();
    for r in 0..rows {
        for c in cols..cols.div_ceil(BLOCK) * BLOCK {
            let (blk, within) = (c / BLOCK, c % BLOCK);
            let byte = r * row_bytes + blk * BLOCK_BYTES + within % 64;
            let shift = 2 * (within / 64);
            expected[byte] = (expected[byte] & !(3 << shift)) | (1 << shift);
        }
    }
    assert_eq!(again.as_bytes(), &expected[..], "runtime: from_codes(to_codes(p)) != p up to padding");
}
