//! Checks the quantizers (ternary absmean, int8 per-tensor and per-token,
//! int4 groups, TQ1_0/TQ2_0 ggml quantize) on arbitrary f32 data and shapes:
//! they return `Ok` or a typed `Err` (never panic); when `Ok`, codes are in
//! range, scales are finite and positive, and dequantized values are finite.
#![no_main]

use bitnet_quant::Error;
use bitnet_quant::formats::{tq1_0, tq2_0};
use bitnet_quant::quantize::int8::{self, QuantizedActivations};
use bitnet_quant::quantize::ternary::{self, Granularity};
use bitnet_quant::quantize::int4;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let (hdr, body) = input.split_at(4);
    let mut data: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    data.truncate(2048);

    // Shape: mostly one that fits the data, sometimes a raw (likely wrong) one.
    let fit = hdr[0] & 1 == 0;
    let rows = usize::from(hdr[1] % 16);
    let (rows, cols) = if fit {
        let rows = rows.max(1);
        let cols = data.len() / rows;
        data.truncate(rows * cols);
        (rows, cols)
    } else {
        (rows, usize::from(hdr[2]))
    };
    // After the shape fitting above, which may drop a non-finite tail.
    let all_finite = data.iter().all(|v| v.is_finite());
    let shape_ok = rows * cols == data.len();
    let granularity = match hdr[0] >> 1 & 3 {
        0 => Granularity::PerTensor,
        1 => Granularity::PerChannel,
        _ => Granularity::PerGroup(usize::from(hdr[3] % 40)),
    };

    check_ternary(&data, rows, cols, granularity, shape_ok, all_finite);
    check_int8(&data, rows, cols, shape_ok, all_finite);
    check_int4(&data, usize::from(hdr[3] % 40), all_finite);
    if !data.is_empty() {
        // TQ quantizers need whole 256-weight blocks: repeat the data.
        let x: Vec<f32> = data.iter().copied().cycle().take(256 * (1 + usize::from(hdr[2] % 2))).collect();
        // Block scales are stored as f16: finite data whose block absmax
        // exceeds f16's range is refused with a typed error, by design.
        let finite = x.iter().all(|v| v.is_finite() && v.abs() <= 65504.0);
        match tq1_0::quantize(&x) {
            Ok(b) => {
                let (codes, _) = tq1_0::to_codes(&b);
                assert!(codes.iter().all(|c| (-1..=1).contains(c)));
                assert_finite(&tq1_0::dequantize(&b), "tq1_0 dequantize");
            }
            Err(e) => assert!(!finite, "tq1_0 rejected finite data: {e}"),
        }
        match tq2_0::quantize(&x) {
            Ok(b) => {
                let (codes, _) = tq2_0::to_codes(&b);
                assert!(codes.iter().all(|c| (-1..=1).contains(c)));
                assert_finite(&tq2_0::dequantize(&b), "tq2_0 dequantize");
            }
            Err(e) => assert!(!finite, "tq2_0 rejected finite data: {e}"),
        }
    }
});

fn assert_finite(v: &[f32], what: &str) {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!("{what}: element {i} is {} (not finite)", v[i]);
    }
}

fn assert_scale(s: f32, what: &str) {
    assert!(s.is_finite() && s > 0.0, "{what}: scale {s} is not positive finite");
}

fn check_ternary(data: &[f32], rows: usize, cols: usize, g: Granularity, shape_ok: bool, finite: bool) {
    match ternary::quantize("w", data, rows, cols, g) {
        Ok(t) => {
            assert!(shape_ok && finite && !data.is_empty());
            assert_eq!(t.codes.len(), rows * cols);
            assert!(t.codes.iter().all(|c| (-1..=1).contains(c)), "ternary code out of range");
            let expected_scales = match g {
                Granularity::PerTensor => 1,
                Granularity::PerChannel => rows,
                Granularity::PerGroup(n) => rows * cols.div_ceil(n),
            };
            assert_eq!(t.scales.len(), expected_scales);
            for &s in &t.scales {
                assert_scale(s, "ternary");
            }
            assert_finite(&t.dequantize(), "ternary dequantize");
        }
        Err(Error::ShapeMismatch { .. }) => assert!(!shape_ok),
        Err(Error::NonFinite { .. }) => assert!(!finite),
        Err(Error::Empty { .. }) => assert!(data.is_empty()),
        Err(Error::Unsupported(_)) => assert_eq!(g, Granularity::PerGroup(0)),
        // Only values near f32::MAX make the absmean scale unrepresentable.
        Err(Error::ScaleOutOfRange { .. }) => {
            assert!(data.iter().any(|v| v.abs() > 1e30), "scale out of range on modest data")
        }
        Err(e) => panic!("unexpected ternary error: {e}"),
    }
}

fn check_int8(data: &[f32], rows: usize, cols: usize, shape_ok: bool, finite: bool) {
    match int8::quantize_per_tensor("x", data) {
        Ok((codes, s)) => {
            assert!(finite && !data.is_empty());
            assert_eq!(codes.len(), data.len());
            assert_scale(s, "int8 per-tensor");
            let deq: Vec<f32> = codes.iter().map(|&q| f32::from(q) / s).collect();
            assert_finite(&deq, "int8 per-tensor dequantize");
        }
        Err(Error::NonFinite { .. }) => assert!(!finite),
        Err(Error::Empty { .. }) => assert!(data.is_empty()),
        Err(e) => panic!("unexpected int8 error: {e}"),
    }
    match QuantizedActivations::quantize("x", data, rows, cols) {
        Ok(q) => {
            assert!(shape_ok && finite && !data.is_empty());
            assert_eq!((q.tokens(), q.cols()), (rows, cols));
            assert_eq!(q.stride() % 256, 0);
            for t in 0..rows {
                assert_scale(q.scale(t), "int8 per-token");
                let sum: i32 = q.codes(t).iter().map(|&c| i32::from(c)).sum();
                assert_eq!(sum, q.sum(t), "per-token code sum");
                assert!(q.padded_codes(t)[cols..].iter().all(|&c| c == 0), "padding not zero");
            }
            assert_finite(&q.dequantize(), "int8 per-token dequantize");
            // requantize into a fresh buffer must give the same result.
            let mut z = QuantizedActivations::zeroed(rows, cols);
            z.requantize("x", data).expect("requantize of accepted data");
            assert_eq!(z, q);
        }
        Err(Error::ShapeMismatch { .. }) => assert!(!shape_ok),
        Err(Error::NonFinite { .. }) => assert!(!finite),
        Err(Error::Empty { .. }) => assert!(data.is_empty()),
        Err(e) => panic!("unexpected per-token error: {e}"),
    }
}

fn check_int4(data: &[f32], group: usize, finite: bool) {
    match int4::quantize("w", data, group) {
        Ok(q) => {
            assert!(finite && group > 0 && !data.is_empty());
            assert_eq!(q.packed.len(), data.len().div_ceil(2));
            assert_eq!(q.scales.len(), data.len().div_ceil(group));
            for i in 0..q.len {
                assert!((-8..=7).contains(&q.code(i)));
            }
            for &s in &q.scales {
                assert_scale(s, "int4");
            }
            assert_finite(&q.dequantize(), "int4 dequantize");
        }
        Err(Error::NonFinite { .. }) => assert!(!finite),
        Err(Error::Empty { .. }) => assert!(data.is_empty()),
        Err(Error::Unsupported(_)) => assert_eq!(group, 0),
        Err(e) => panic!("unexpected int4 error: {e}"),
    }
}
