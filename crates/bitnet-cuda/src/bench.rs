//! How close the ternary matmul comes to the card's memory bandwidth.
//!
//! The reference is a device-to-device copy of 1 GiB (bytes read plus
//! written over its time), the best a streaming kernel can do on the card.
//! Each matmul shape then runs over enough distinct weight copies that no
//! launch finds its weights in L2, timed with CUDA events over many
//! back-to-back launches; its bandwidth is weight bytes read per second.
//! The `layer` row runs the seven projections of a 2B-4T layer in order
//! over 30 layers' worth of weights: the ternary part of one decode step.

use crate::context::CudaDevice;
use crate::error::{Error, Result};
use crate::kernels::{Kernels, pad64};
use crate::model::{Alloc, PackedLinear, matmul_launch};
use cudarc::driver::sys;

/// One measured shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GemvResult {
    /// What ran (`q_proj 2560x2560`, `layer x30`, ...).
    pub shape: String,
    /// Tokens per launch (1 for decode).
    pub tokens: usize,
    /// Weight bytes one launch (or one layer pass) reads.
    pub bytes: u64,
    /// Microseconds per launch (or per layer pass).
    pub micros: f64,
    /// Weight bytes per second, in GB/s (1e9).
    pub gb_per_s: f64,
    /// `gb_per_s` over the copy's bandwidth.
    pub fraction_of_copy: f64,
}

/// The measurements.
#[derive(Clone, Debug, PartialEq)]
pub struct GemvReport {
    /// Device-to-device copy bandwidth, GB/s (read plus written).
    pub copy_gb_per_s: f64,
    /// Each shape.
    pub results: Vec<GemvResult>,
}

/// The 2B-4T projections: (name, rows, cols).
pub const SHAPES_2B4T: [(&str, usize, usize); 4] = [
    ("q_proj/o_proj", 2560, 2560),
    ("k_proj/v_proj", 640, 2560),
    ("gate_proj/up_proj", 6912, 2560),
    ("down_proj", 2560, 6912),
];

fn timed(dev: &CudaDevice, what: &str, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let ctx = dev.context();
    let s = dev.stream();
    let ev = |e| Error::driver(what, e);
    let start = ctx
        .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(ev)?;
    let end = ctx
        .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(ev)?;
    start.record(s).map_err(ev)?;
    f()?;
    end.record(s).map_err(ev)?;
    end.synchronize().map_err(ev)?;
    Ok(f64::from(start.elapsed_ms(&end).map_err(ev)?) * 1e3)
}

/// Measures the copy bandwidth, then each shape of `shapes` at `tokens`
/// tokens per launch, and the whole-layer sequence.
pub fn gemv_bandwidth(
    dev: &CudaDevice,
    shapes: &[(&str, usize, usize)],
    tokens: usize,
) -> Result<GemvReport> {
    let k = Kernels::load(dev)?;
    let s = dev.stream();
    let what = "measuring bandwidth";
    let gib = 1usize << 30;
    let src = s
        .alloc_zeros::<u8>(gib)
        .map_err(|e| Error::driver(what, e))?;
    let mut dst = s
        .alloc_zeros::<u8>(gib)
        .map_err(|e| Error::driver(what, e))?;
    s.memcpy_dtod(&src, &mut dst)
        .map_err(|e| Error::driver(what, e))?;
    let reps = 10;
    let us = timed(dev, what, || {
        for _ in 0..reps {
            s.memcpy_dtod(&src, &mut dst)
                .map_err(|e| Error::driver(what, e))?;
        }
        Ok(())
    })?;
    drop((src, dst));
    let copy_gb_per_s = (2 * gib * reps) as f64 / (us * 1e3);

    let mut a = Alloc {
        dev,
        keep: Vec::new(),
    };
    let kmax = shapes.iter().map(|s| pad64(s.2)).max().unwrap_or(64);
    let step = a.upload(&[tokens as u32, 0, 0, 0])?;
    let codes = a.upload(&vec![1i8; tokens * kmax])?;
    let scales = a.upload(&vec![1.0f32; tokens])?;
    let sums = a.upload(&vec![0i32; tokens])?;
    let rmax = shapes.iter().map(|s| s.1).max().unwrap_or(1);
    let out = a.zeros(4 * tokens * rmax)?;
    let ws = a.upload(&vec![1.0f32; rmax])?;
    // 30 layers' worth of each shape: 4x an H100's or H200's L2 at least.
    let copies = 30usize;
    let mut results = Vec::new();
    let mut layer = Vec::new();
    for &(name, rows, cols) in shapes {
        let chunks = pad64(cols) / 64;
        let bytes = 16 * rows * chunks;
        let base = a.zeros(bytes * copies)?;
        let pl = PackedLinear {
            words: Vec::new(),
            scales: Vec::new(),
            rows,
            chunks,
            flags: 0,
        };
        let launches: Vec<_> = (0..copies)
            .map(|i| {
                matmul_launch(
                    step,
                    base + (i * bytes) as u64,
                    ws,
                    codes,
                    scales,
                    sums,
                    out,
                    &pl,
                    0,
                )
            })
            .collect();
        for l in &launches {
            k.launch(l, tokens as u32, 0)?;
        }
        let rounds = 20;
        let us = timed(dev, what, || {
            for _ in 0..rounds {
                for l in &launches {
                    k.launch(l, tokens as u32, 0)?;
                }
            }
            Ok(())
        })? / (rounds * copies) as f64;
        let gb = bytes as f64 / (us * 1e3);
        results.push(GemvResult {
            shape: format!("{name} {rows}x{cols}"),
            tokens,
            bytes: bytes as u64,
            micros: us,
            gb_per_s: gb,
            fraction_of_copy: gb / copy_gb_per_s,
        });
        layer.push((launches, bytes, name));
    }
    // A layer's projections in order (q, k, v, o, gate, up, down), layer
    // after layer, as a decode step runs them.
    let find = |n: &str| layer.iter().position(|(_, _, name)| name.contains(n));
    if let (Some(q), Some(kv), Some(gu), Some(dn)) =
        (find("q_proj"), find("k_proj"), find("gate"), find("down"))
    {
        let order = [q, kv, kv, q, gu, gu, dn];
        let bytes: usize = order.iter().map(|&i| layer[i].1).sum();
        let rounds = 10;
        let us = timed(dev, what, || {
            for _ in 0..rounds {
                for c in 0..copies {
                    for &i in &order {
                        k.launch(&layer[i].0[c], tokens as u32, 0)?;
                    }
                }
            }
            Ok(())
        })? / rounds as f64;
        let total = bytes * copies;
        let gb = total as f64 / (us * 1e3);
        results.push(GemvResult {
            shape: format!("layer x{copies} (7 projections each)"),
            tokens,
            bytes: total as u64,
            micros: us,
            gb_per_s: gb,
            fraction_of_copy: gb / copy_gb_per_s,
        });
    }
    Ok(GemvReport {
        copy_gb_per_s,
        results,
    })
}
