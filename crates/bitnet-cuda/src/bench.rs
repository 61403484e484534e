//! How close the ternary matmul comes to the card's memory bandwidth.
//!
//! The reference is a device-to-device copy of 1 GiB (bytes read plus
//! written over its time), the best a streaming kernel does on the card.
//! Each matmul shape of a decode step (as the model fuses them: q+k+v,
//! o, gate+up, down) runs over 30 distinct weight copies, so no launch
//! finds its weights in L2, captured in a CUDA graph as the decode step
//! is (so the host's launch rate does not count) and timed with CUDA
//! events over many replays; its bandwidth is weight bytes read per
//! second. The `layer` row runs the four in order over 30 layers' worth of
//! weights: the ternary part of one decode step.

use crate::context::CudaDevice;
use crate::error::{Error, Result};
use crate::kernels::{Kernels, Launch, pad64};
use crate::model::{Alloc, Output, matmul_args};
use cudarc::driver::sys;

/// One measured shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GemvResult {
    /// What ran (`q+k+v 3840x2560`, `layer x30`, ...).
    pub shape: String,
    /// Tokens per launch (1 for decode).
    pub tokens: usize,
    /// Weight bytes one launch (or one layer pass) reads.
    pub bytes: u64,
    /// Microseconds per launch (or per pass over the layers).
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

/// The launches of a 2B-4T decode step's ternary part, as the model fuses
/// them: (name, rows, cols).
pub const SHAPES_2B4T: [(&str, usize, usize); 4] = [
    ("q+k+v", 3840, 2560),
    ("o_proj", 2560, 2560),
    ("gate+up", 13824, 2560),
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

/// Microseconds per replay of `launches` (for `tokens` tokens and
/// `logit_rows` logit rows) captured as one graph: device time from CUDA
/// events, the mean of 20 replays after one untimed.
pub(crate) fn graph_micros(
    dev: &CudaDevice,
    k: &Kernels,
    launches: &[&Launch],
    tokens: u32,
    logit_rows: u32,
) -> Result<f64> {
    let what = "timing a captured graph";
    let s = dev.stream();
    s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| Error::driver(what, e))?;
    let launched = launches
        .iter()
        .try_for_each(|l| k.launch(l, tokens, logit_rows));
    let graph = s.end_capture(sys::CUgraphInstantiate_flags(0));
    launched?;
    let graph = graph
        .map_err(|e| Error::driver(what, e))?
        .ok_or_else(|| Error::driver(what, "nothing captured"))?;
    graph.launch().map_err(|e| Error::driver(what, e))?;
    let rounds = 20;
    let us = timed(dev, what, || {
        for _ in 0..rounds {
            graph.launch().map_err(|e| Error::driver(what, e))?;
        }
        Ok(())
    })?;
    Ok(us / rounds as f64)
}

/// Measures the copy bandwidth, then each shape of `shapes` at `tokens`
/// tokens per launch, and all of them in order as a layer, with the
/// kernels compiled with `options` (tuning defines, see kernels.cu).
pub fn gemv_bandwidth(
    dev: &CudaDevice,
    shapes: &[(&str, usize, usize)],
    tokens: usize,
    options: &[String],
) -> Result<GemvReport> {
    let k = Kernels::load_with(dev, options)?;
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
    let rmax = shapes.iter().map(|s| s.1).max().unwrap_or(2);
    let step = a.upload(&crate::kernels::step_for(tokens, 0, 0, &[]))?;
    let acts = [
        a.upload(&vec![1i8; tokens * kmax])?,
        a.upload(&vec![1.0f32; tokens])?,
        a.upload(&vec![0i32; tokens])?,
    ];
    let out = a.zeros(4 * tokens * rmax)?;
    let ws = a.upload(&vec![1.0f32; rmax])?;
    let pairs: Vec<[i32; 4]> = (0..rmax / 2)
        .map(|p| [0, 2 * p as i32, 2 * p as i32 + 1, 0])
        .collect();
    let pairs = a.upload(&pairs)?;
    // 30 layers' worth of each shape: several times an H100's or H200's L2.
    let copies = 30usize;
    let mut results = Vec::new();
    let mut per_shape = Vec::new();
    for &(name, rows, cols) in shapes {
        let chunks = pad64(cols) / 64;
        let bytes = 16 * rows * chunks;
        let base = a.zeros(bytes * copies)?;
        let outputs = [Output {
            ptr: out,
            stride: rows,
            flags: 0,
        }];
        let launches: Vec<Launch> = (0..copies)
            .map(|i| {
                matmul_args(
                    step,
                    [base + (i * bytes) as u64, ws, pairs],
                    acts,
                    &outputs,
                    (0, 0, 0),
                    rows / 2,
                    chunks,
                )
            })
            .collect();
        let refs: Vec<&Launch> = launches.iter().collect();
        let us = graph_micros(dev, &k, &refs, tokens as u32, 0)? / copies as f64;
        let gb = bytes as f64 / (us * 1e3);
        results.push(GemvResult {
            shape: format!("{name} {rows}x{cols}"),
            tokens,
            bytes: bytes as u64,
            micros: us,
            gb_per_s: gb,
            fraction_of_copy: gb / copy_gb_per_s,
        });
        per_shape.push((launches, bytes));
    }
    // The shapes in order, layer after layer, as a decode step runs them.
    let order: Vec<&Launch> = (0..copies)
        .flat_map(|c| per_shape.iter().map(move |(l, _)| &l[c]))
        .collect();
    let total: usize = per_shape.iter().map(|(_, b)| b * copies).sum();
    let us = graph_micros(dev, &k, &order, tokens as u32, 0)?;
    let gb = total as f64 / (us * 1e3);
    results.push(GemvResult {
        shape: format!("layer x{copies} (all of the above in order)"),
        tokens,
        bytes: total as u64,
        micros: us,
        gb_per_s: gb,
        fraction_of_copy: gb / copy_gb_per_s,
    });
    Ok(GemvReport {
        copy_gb_per_s,
        results,
    })
}
