//! Checks the decoders' length checks against untrusted shapes (as a file
//! header would give them): any `usize` dimensions with a short buffer must
//! give `Err` or a result whose size really matches the shape, never a panic
//! (e.g. an arithmetic overflow while computing the expected length).
#![no_main]

use bitnet_quant::formats::runtime::PackedTernary;
use bitnet_quant::formats::tq1_0::BlockTq1_0;
use bitnet_quant::formats::tq2_0::BlockTq2_0;
use bitnet_quant::formats::{blocks_from_bytes, hf2bit, i2s};
use libfuzzer_sys::fuzz_target;

fn dim(b: &[u8]) -> usize {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a) as usize
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (a, b, body) = (dim(&data[..8]), dim(&data[8..16]), &data[16..]);
    if let Ok(codes) = hf2bit::unpack(body, a, b) {
        assert_eq!(Some(codes.len()), a.checked_mul(b), "hf2bit accepted a shape it did not fill");
    }
    if let Ok((codes, _)) = i2s::unpack(body, a) {
        assert_eq!(codes.len(), a);
    }
    if let Ok(blocks) = blocks_from_bytes::<BlockTq1_0>(body, a) {
        assert_eq!(Some(blocks.len() * 256), Some(a));
    }
    if let Ok(blocks) = blocks_from_bytes::<BlockTq2_0>(body, a) {
        assert_eq!(Some(blocks.len() * 256), Some(a));
    }
    if let Ok(p) = PackedTernary::from_bytes(body, a, b) {
        assert_eq!(p.to_codes().len(), a * b, "runtime accepted a shape it did not fill");
    }
});
