//! The CUDA kernels against the CPU reference: what `bitnet doctor` runs
//! for a device, and what the device tests check.
//!
//! Kernel by kernel ([`check_kernels`]): each runs once on inputs with
//! awkward sizes (odd row counts, columns not a multiple of 64, token
//! counts not a multiple of 8, a context longer than one attention tile),
//! every fused epilogue (residual add, RoPE into the KV cache, ReLU² and
//! SiLU gating) included, and is compared with the CPU engine's own code: int8
//! codes, scales and code sums exactly, float outputs within
//! [`KERNEL_TOLERANCE`] of the largest CPU output.
//!
//! Whole model ([`run`]): a random model of the tiny preset runs a prompt
//! on the CPU and on the device, in several passes, then a greedy
//! continuation through the captured decode graph. As on the wgpu backend,
//! a value within rounding of an int8 rounding boundary may get
//! neighbouring codes on the two devices, so the model check is the median
//! position's difference plus equal greedy tokens.

use crate::context::CudaDevice;
use crate::error::{Error, Result};
use crate::kernels::{Arg, Grid, Kernel, Kernels, Launch, attention_block, pad64};
use crate::model::{
    Alloc, CudaModel, CudaOptions, F_ADD, F_CACHE, F_GLU, F_ROPE, F_SILU, Output, Pairing, fuse,
    fused_launch, head_bytes, head_launch,
};
use bitnet_core::Parallelism;
use bitnet_core::ops::rows::{RopeTable, relu2, rms_norm_into, silu};
use bitnet_inference::device::{CpuSlots, compare_slots};
use bitnet_inference::{BitNetModel, CpuSequence, Logits, SequenceForward};
use bitnet_models::float_matrix::{FloatEncoding, FloatMatrix};
use bitnet_models::synth::{Preset, synthesize};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use bitnet_quant::formats::runtime::PackedTernary;
use bitnet_quant::quantize::int8::QuantizedActivations;
use std::sync::Arc;

/// Float outputs of a kernel must be within this of the CPU's, relative
/// to the largest CPU output.
pub const KERNEL_TOLERANCE: f32 = 1e-3;

/// One kernel's comparison with the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCheck {
    /// The kernel and the case.
    pub kernel: String,
    /// Largest |GPU - CPU| over the largest |CPU| of its float outputs.
    pub max_rel_diff: f32,
    /// For kernels that produce integer codes: whether all agree exactly.
    pub codes_exact: Option<bool>,
}

impl KernelCheck {
    /// Codes exact and floats within [`KERNEL_TOLERANCE`].
    pub fn passed(&self) -> bool {
        self.codes_exact != Some(false) && self.max_rel_diff <= KERNEL_TOLERANCE
    }
}

/// What the self-test measured.
#[derive(Clone, Debug, PartialEq)]
pub struct SelfTestReport {
    /// The device's name.
    pub device: String,
    /// Each kernel against the CPU.
    pub kernels: Vec<KernelCheck>,
    /// Whole model: the median position's |GPU - CPU| logit difference,
    /// relative to that position's largest |CPU logit|.
    pub model_median_rel_diff: f32,
    /// Whole model: the same at the worst position.
    pub model_max_rel_diff: f32,
    /// Whether the greedy continuations agree token for token.
    pub greedy_equal: bool,
    /// Tokens compared in the greedy continuation.
    pub greedy_tokens: usize,
    /// Several sequences in one pass (three slots, prompts of different
    /// lengths, then batched decode steps): the median logit row's
    /// difference from the CPU's, relative to its largest |CPU logit|.
    pub slots_median_rel_diff: f32,
    /// Whether the decode steps ran from a captured CUDA graph.
    pub graph: bool,
}

impl SelfTestReport {
    /// Every kernel passed, the median position is within
    /// [`KERNEL_TOLERANCE`] and the greedy tokens are equal.
    pub fn passed(&self) -> bool {
        self.kernels.iter().all(KernelCheck::passed)
            && self.model_median_rel_diff <= KERNEL_TOLERANCE
            && self.slots_median_rel_diff <= KERNEL_TOLERANCE
            && self.greedy_equal
    }
}

pub use bitnet_inference::device::{greedy_on, max_rel_diff};

/// Deterministic values in [-1, 1) (a tiny LCG: no dependency, no state
/// shared between checks).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn below(&mut self, n: u32) -> u32 {
        ((self.next() * 0.5 + 0.5) * n as f32) as u32 % n
    }
}

/// Buffers of one check, and running launches on them.
struct Bench<'a> {
    a: Alloc<'a>,
    k: &'a Kernels,
}

impl Bench<'_> {
    /// A step block: `n` tokens from position `start` in the cache slot
    /// whose position 0 is row `base`, logits for rows `first..first + m`.
    fn step(&mut self, n: u32, start: u32, base: u32, m: u32, first: u32) -> Result<u64> {
        let rows: Vec<u32> = (first..first + m).collect();
        let block = crate::kernels::step_for(n as usize, start as usize, base as usize, &rows);
        self.a.upload(&block)
    }
    fn run(&self, l: &Launch, n: u32, m: u32) -> Result<()> {
        self.k.launch(l, n, m)?;
        self.a.dev.synchronize("running a kernel check")
    }
    fn read<T: Copy + Default>(&self, p: u64, len: usize) -> Result<Vec<T>> {
        let bytes = self.a.download(p, len * std::mem::size_of::<T>())?;
        Ok(bytes
            .chunks_exact(std::mem::size_of::<T>())
            .map(|c| {
                let mut v = T::default();
                // SAFETY: T is plain old data (f32, i32, u32, i8) here.
                unsafe {
                    std::ptr::copy_nonoverlapping(c.as_ptr(), (&mut v as *mut T).cast(), c.len())
                };
                v
            })
            .collect())
    }
}

/// Every kernel once against the CPU engine's code.
pub fn check_kernels(dev: &CudaDevice) -> Result<Vec<KernelCheck>> {
    let k = Kernels::load(dev)?;
    let mut b = Bench {
        a: Alloc {
            dev,
            keep: Vec::new(),
        },
        k: &k,
    };
    let mut rng = Lcg(42);
    let mut out = vec![check_norm_quant(&mut b, &mut rng, 200)?];
    out.push(check_norm_quant(&mut b, &mut rng, 2560)?);
    for n in [6, 1, 11] {
        out.push(check_matmul(
            &mut b,
            &mut rng,
            ScaleConvention::Multiply,
            n,
        )?);
        out.push(check_matmul(&mut b, &mut rng, ScaleConvention::Divide, n)?);
    }
    out.extend(check_qkv_attention(&mut b, &mut rng, 67, 5, 48)?);
    out.extend(check_qkv_attention(&mut b, &mut rng, 1100, 1, 128)?);
    out.push(check_gate_up(&mut b, &mut rng, false, 3)?);
    out.push(check_gate_up(&mut b, &mut rng, true, 1)?);
    out.push(check_rms_norm(&mut b, &mut rng)?);
    for enc in [FloatEncoding::F32, FloatEncoding::F16, FloatEncoding::BF16] {
        for m in [3, 1] {
            out.push(check_lm_head(&mut b, &mut rng, enc, m, 96)?);
        }
        out.push(check_lm_head(&mut b, &mut rng, enc, 2, 70)?);
    }
    Ok(out)
}

fn check_norm_quant(b: &mut Bench, rng: &mut Lcg, cols: usize) -> Result<KernelCheck> {
    let n = 5usize;
    let stride = pad64(cols);
    // Multiples of 1/64 with small numerators: sums of squares are exact
    // in any order, so both devices normalize with the same factor and
    // the codes must agree exactly.
    let mut x: Vec<f32> = (0..n * cols)
        .map(|_| (rng.next() * 127.0).round() / 64.0)
        .collect();
    x[cols..2 * cols].fill(0.0);
    let w: Vec<f32> = (0..cols)
        .map(|_| 1.0 + (rng.next() * 8.0).round() / 16.0)
        .collect();
    let eps = 1e-5;
    let mut normed = vec![0.0; n * cols];
    rms_norm_into(&x, &w, eps, &mut normed);
    let want = QuantizedActivations::quantize("check", &normed, n, cols)?;

    let st = b.step(n as u32, 0, 0, 0, 0)?;
    let xb = b.a.upload(&x)?;
    let wb = b.a.upload(&w)?;
    let codes = b.a.zeros(n * stride)?;
    let scales = b.a.zeros(4 * n)?;
    let sums = b.a.zeros(4 * n)?;
    let status = b.a.zeros(16)?;
    let l = Launch {
        kernel: Kernel::NormQuant,
        grid: Grid::Tokens,
        block: 256,
        args: vec![
            Arg::Ptr(st),
            Arg::Ptr(xb),
            Arg::Ptr(wb),
            Arg::Ptr(codes),
            Arg::Ptr(scales),
            Arg::Ptr(sums),
            Arg::Ptr(status),
            Arg::I32(cols as i32),
            Arg::I32(stride as i32),
            Arg::F32(eps),
        ],
    };
    b.run(&l, n as u32, 0)?;
    let got_codes: Vec<i8> = b.read(codes, n * stride)?;
    let got_scales: Vec<f32> = b.read(scales, n)?;
    let got_sums: Vec<i32> = b.read(sums, n)?;
    let mut exact = b.read::<u32>(status, 1)?[0] == 0;
    for t in 0..n {
        let row = &got_codes[t * stride..(t + 1) * stride];
        exact &= row[..cols] == *want.codes(t);
        exact &= row[cols..].iter().all(|&c| c == 0);
        exact &= got_scales[t] == want.scale(t);
        exact &= got_sums[t] == want.sum(t);
    }
    Ok(KernelCheck {
        kernel: format!("norm_quant ({cols} columns)"),
        max_rel_diff: max_rel_diff(&got_scales, want.scales()),
        codes_exact: Some(exact),
    })
}

/// A random ternary layer.
fn random_layer(
    rng: &mut Lcg,
    rows: usize,
    cols: usize,
    convention: ScaleConvention,
) -> Result<BitLinear> {
    let wcodes: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
    let scale = match convention {
        ScaleConvention::Multiply => WeightScale::Tensor(0.7),
        ScaleConvention::Divide => {
            WeightScale::Channel((0..rows).map(|_| 1.5 + rng.next()).collect())
        }
    };
    Ok(BitLinear::new(
        PackedTernary::from_codes(&wcodes, rows, cols)?,
        scale,
        convention,
    )?)
}

/// Random int8 activations for `n` tokens: the CPU's form, and the
/// device's (codes padded to 64 columns, scales, code sums) uploaded.
fn random_acts(
    b: &mut Bench,
    rng: &mut Lcg,
    n: usize,
    cols: usize,
) -> Result<(QuantizedActivations, [u64; 3])> {
    let stride = pad64(cols);
    let xcodes: Vec<i8> = (0..n * cols)
        .map(|_| (rng.below(255) as i32 - 127) as i8)
        .collect();
    let xscales: Vec<f32> = (0..n).map(|_| 20.0 + 10.0 * rng.next()).collect();
    let acts = QuantizedActivations::from_codes(&xcodes, &xscales, n, cols)?;
    let mut padded = vec![0i8; n * stride];
    for t in 0..n {
        padded[t * stride..t * stride + cols].copy_from_slice(&xcodes[t * cols..(t + 1) * cols]);
    }
    let sums: Vec<i32> = (0..n)
        .map(|t| {
            xcodes[t * cols..(t + 1) * cols]
                .iter()
                .map(|&c| i32::from(c))
                .sum()
        })
        .collect();
    let dev = [
        b.a.upload(&padded)?,
        b.a.upload(&xscales)?,
        b.a.upload(&sums)?,
    ];
    Ok((acts, dev))
}

fn cpu_forward(layer: &BitLinear, acts: &QuantizedActivations, n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0; n * layer.out_features()];
    layer.forward_quantized(acts, &mut out, &mut Vec::new(), Parallelism::Sequential)?;
    Ok(out)
}

/// One layer (an odd row count: the last pair is half padding) added into
/// an output that already holds values (the residual path).
fn check_matmul(
    b: &mut Bench,
    rng: &mut Lcg,
    convention: ScaleConvention,
    n: usize,
) -> Result<KernelCheck> {
    let (rows, cols) = (71usize, 200usize);
    let layer = random_layer(rng, rows, cols, convention)?;
    let (acts, dev) = random_acts(b, rng, n, cols)?;
    let want: Vec<f32> = cpu_forward(&layer, &acts, n)?
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let st = b.step(n as u32, 0, 0, 0, 0)?;
    let out = b.a.upload(&vec![0.5f32; n * rows])?;
    let f = fuse(&[(
        Pairing::Neighbours(&layer),
        Output {
            ptr: out,
            stride: rows,
            flags: F_ADD,
        },
    )]);
    let l = fused_launch(&mut b.a, &f, st, dev, (0, 0, 0))?;
    b.run(&l, n as u32, 0)?;
    let got: Vec<f32> = b.read(out, n * rows)?;
    Ok(KernelCheck {
        kernel: format!(
            "matmul + add ({}, {n} token{})",
            match convention {
                ScaleConvention::Multiply => "tensor scale, multiply",
                ScaleConvention::Divide => "channel scales, divide",
            },
            if n == 1 { "" } else { "s" }
        ),
        max_rel_diff: max_rel_diff(&got, &want),
        codes_exact: None,
    })
}

/// q, k and v in one launch, rotated and written into a KV cache after
/// `start` cached positions, then causal GQA attention of the `n` new
/// tokens; against the CPU's BitLinear and RoPE table, and a softmax
/// computed in f64.
fn check_qkv_attention(
    b: &mut Bench,
    rng: &mut Lcg,
    start: usize,
    n: usize,
    d: usize,
) -> Result<[KernelCheck; 2]> {
    let (heads, kv_heads, cols) = (4usize, 2usize, 200usize);
    let ctx_len = start + n;
    let (h, kv) = (heads * d, kv_heads * d);
    let ql = random_layer(rng, h, cols, ScaleConvention::Multiply)?;
    let kl = random_layer(rng, kv, cols, ScaleConvention::Divide)?;
    let vl = random_layer(rng, kv, cols, ScaleConvention::Multiply)?;
    let (acts, dev) = random_acts(b, rng, n, cols)?;
    let table = RopeTable::new(d, 10_000.0, 0..ctx_len);
    let mut qr = cpu_forward(&ql, &acts, n)?;
    let knew = cpu_forward(&kl, &acts, n)?;
    let vnew = cpu_forward(&vl, &acts, n)?;
    // The cache: earlier positions random (already rotated), then the new.
    let mut kc: Vec<f32> = (0..ctx_len * kv).map(|_| rng.next()).collect();
    let mut vc: Vec<f32> = (0..ctx_len * kv).map(|_| rng.next()).collect();
    // The sequence sits in a later slot of the cache (its position 0 at row
    // `base`, noise before it), so the kernels' slot offsets are checked.
    let base = 37;
    let slotted = |v: &[f32]| {
        let mut all: Vec<f32> = (0..base * kv).map(|i| (i % 7) as f32 - 3.0).collect();
        all.extend_from_slice(v);
        all
    };
    let kc_dev = b.a.upload(&slotted(&kc))?;
    let vc_dev = b.a.upload(&slotted(&vc))?;
    for t in 0..n {
        let pos = start + t;
        for hd in qr[t * h..(t + 1) * h].chunks_exact_mut(d) {
            table.rotate_in_place(hd, pos);
        }
        kc[pos * kv..(pos + 1) * kv].copy_from_slice(&knew[t * kv..(t + 1) * kv]);
        for hd in kc[pos * kv..(pos + 1) * kv].chunks_exact_mut(d) {
            table.rotate_in_place(hd, pos);
        }
        vc[pos * kv..(pos + 1) * kv].copy_from_slice(&vnew[t * kv..(t + 1) * kv]);
    }
    let scale = 1.0 / (d as f64).sqrt();
    let mut want = vec![0.0f32; n * h];
    for t in 0..n {
        for head in 0..heads {
            let g = head / (heads / kv_heads);
            let qv = &qr[t * h + head * d..][..d];
            let s: Vec<f64> = (0..=start + t)
                .map(|j| {
                    let kv_row = &kc[j * kv + g * d..][..d];
                    qv.iter()
                        .zip(kv_row)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..d {
                let o: f64 = e
                    .iter()
                    .enumerate()
                    .map(|(j, w)| w * f64::from(vc[j * kv + g * d + i]))
                    .sum();
                want[t * h + head * d + i] = (o / z) as f32;
            }
        }
    }
    let (cos, sin) = table.tables();
    let st = b.step(n as u32, start as u32, base as u32, 0, 0)?;
    let cosb = b.a.upload(cos)?;
    let sinb = b.a.upload(sin)?;
    let qb = b.a.zeros(4 * n * h)?;
    let ob = b.a.zeros(4 * n * h)?;
    let f = fuse(&[
        (
            Pairing::Rope(&ql, d),
            Output {
                ptr: qb,
                stride: h,
                flags: F_ROPE,
            },
        ),
        (
            Pairing::Rope(&kl, d),
            Output {
                ptr: kc_dev,
                stride: kv,
                flags: F_ROPE | F_CACHE,
            },
        ),
        (
            Pairing::Neighbours(&vl),
            Output {
                ptr: vc_dev,
                stride: kv,
                flags: F_CACHE,
            },
        ),
    ]);
    let l = fused_launch(&mut b.a, &f, st, dev, (cosb, sinb, d / 2))?;
    b.run(&l, n as u32, 0)?;
    let mut got: Vec<f32> = b.read(qb, n * h)?;
    got.extend(&b.read::<f32>(kc_dev, (base + ctx_len) * kv)?[base * kv..]);
    got.extend(&b.read::<f32>(vc_dev, (base + ctx_len) * kv)?[base * kv..]);
    let mut expect = qr.clone();
    expect.extend(&kc);
    expect.extend(&vc);
    let projections = KernelCheck {
        kernel: format!("matmul q/k/v + rope into the cache (head dim {d}, at {start})"),
        max_rel_diff: max_rel_diff(&got, &expect),
        codes_exact: None,
    };
    let l = Launch {
        kernel: Kernel::Attention,
        grid: Grid::Attention {
            heads: heads as u32,
        },
        block: attention_block(d),
        args: vec![
            Arg::Ptr(st),
            Arg::Ptr(qb),
            Arg::Ptr(kc_dev),
            Arg::Ptr(vc_dev),
            Arg::Ptr(ob),
            Arg::I32(heads as i32),
            Arg::I32(kv_heads as i32),
            Arg::I32(d as i32),
            Arg::I32(h as i32),
            Arg::I32(kv as i32),
            Arg::F32(scale as f32),
        ],
    };
    b.run(&l, n as u32, 0)?;
    let got: Vec<f32> = b.read(ob, n * h)?;
    Ok([
        projections,
        KernelCheck {
            kernel: format!("attention (head dim {d}, {ctx_len} positions)"),
            max_rel_diff: max_rel_diff(&got, &want),
            codes_exact: None,
        },
    ])
}

/// gate and up in one launch, gated by ReLU² or SiLU on the way out.
fn check_gate_up(b: &mut Bench, rng: &mut Lcg, silu_gate: bool, n: usize) -> Result<KernelCheck> {
    let (rows, cols) = (70usize, 200usize);
    let gl = random_layer(rng, rows, cols, ScaleConvention::Multiply)?;
    let ul = random_layer(rng, rows, cols, ScaleConvention::Multiply)?;
    let (acts, dev) = random_acts(b, rng, n, cols)?;
    let act = if silu_gate { silu } else { relu2 };
    let want: Vec<f32> = cpu_forward(&gl, &acts, n)?
        .iter()
        .zip(cpu_forward(&ul, &acts, n)?)
        .map(|(&g, u)| act(g) * u)
        .collect();
    let st = b.step(n as u32, 0, 0, 0, 0)?;
    let out = b.a.zeros(4 * n * rows)?;
    let f = fuse(&[(
        Pairing::Glu(&gl, &ul),
        Output {
            ptr: out,
            stride: rows,
            flags: F_GLU | if silu_gate { F_SILU } else { 0 },
        },
    )]);
    let l = fused_launch(&mut b.a, &f, st, dev, (0, 0, 0))?;
    b.run(&l, n as u32, 0)?;
    Ok(KernelCheck {
        kernel: format!(
            "matmul gate/up + {} ({n} token{})",
            if silu_gate { "silu" } else { "relu²" },
            if n == 1 { "" } else { "s" }
        ),
        max_rel_diff: max_rel_diff(&b.read::<f32>(out, n * rows)?, &want),
        codes_exact: None,
    })
}

fn check_rms_norm(b: &mut Bench, rng: &mut Lcg) -> Result<KernelCheck> {
    let (n, cols) = (4usize, 300usize);
    let x: Vec<f32> = (0..n * cols).map(|_| 3.0 * rng.next()).collect();
    let w: Vec<f32> = (0..cols).map(|_| 1.0 + 0.1 * rng.next()).collect();
    // The last row only (what generation asks for).
    let mut want = vec![0.0; cols];
    rms_norm_into(&x[(n - 1) * cols..], &w, 1e-6, &mut want);
    let st = b.step(n as u32, 0, 0, 1, (n - 1) as u32)?;
    let xb = b.a.upload(&x)?;
    let wb = b.a.upload(&w)?;
    let ob = b.a.zeros(4 * cols)?;
    let l = Launch {
        kernel: Kernel::RmsNorm,
        grid: Grid::LogitRows,
        block: 256,
        args: vec![
            Arg::Ptr(st),
            Arg::Ptr(xb),
            Arg::Ptr(wb),
            Arg::Ptr(ob),
            Arg::I32(cols as i32),
            Arg::F32(1e-6),
        ],
    };
    b.run(&l, n as u32, 1)?;
    Ok(KernelCheck {
        kernel: "rms_norm".into(),
        max_rel_diff: max_rel_diff(&b.read::<f32>(ob, cols)?, &want),
        codes_exact: None,
    })
}

fn check_lm_head(
    b: &mut Bench,
    rng: &mut Lcg,
    enc: FloatEncoding,
    m: usize,
    h: usize,
) -> Result<KernelCheck> {
    let vocab = 133usize;
    let data: Vec<f32> = (0..vocab * h).map(|_| 0.1 * rng.next()).collect();
    let matrix = match enc {
        FloatEncoding::F16 => FloatMatrix::from_encoded(
            "check",
            data.iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            vocab,
            h,
            FloatEncoding::F16,
        ),
        FloatEncoding::BF16 => FloatMatrix::from_encoded(
            "check",
            data.iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            vocab,
            h,
            FloatEncoding::BF16,
        ),
        _ => FloatMatrix::from_f32(vocab, h, data),
    }?;
    let x: Vec<f32> = (0..m * h).map(|_| rng.next()).collect();
    let mut want = vec![0.0; m * vocab];
    for t in 0..m {
        for r in 0..vocab {
            want[t * vocab + r] = matrix.dot_row(r, &x[t * h..(t + 1) * h]);
        }
    }
    let (kernel, bytes) = head_bytes(&matrix);
    let st = b.step(m as u32, 0, 0, m as u32, 0)?;
    let xb = b.a.upload(&x)?;
    let wb = b.a.upload(&bytes)?;
    let lb = b.a.zeros(4 * m * vocab)?;
    b.run(
        &head_launch(kernel, st, xb, wb, lb, h, vocab),
        m as u32,
        m as u32,
    )?;
    Ok(KernelCheck {
        kernel: format!(
            "lm_head ({enc:?}, {m} row{}, h {h})",
            if m == 1 { "" } else { "s" }
        ),
        max_rel_diff: max_rel_diff(&b.read::<f32>(lb, m * vocab)?, &want),
        codes_exact: None,
    })
}

/// Runs the kernel checks and the whole-model check on `dev`.
pub fn run(dev: &CudaDevice) -> Result<SelfTestReport> {
    let kernels = check_kernels(dev)?;
    let weights = synthesize(Preset::Tiny, 7)?;
    let model = BitNetModel::new(weights)?;
    let options = CudaOptions {
        context: 64,
        // Small passes so that the prompt takes several (the chunked path).
        max_batch_tokens: 8,
        sequences: 1,
        memory_budget: None,
        graphs: true,
    };
    let mut gpu = CudaModel::new(dev.clone(), model.weights(), options)?;
    let mut cpu = CpuSequence::new(&model, 64, Parallelism::Sequential);
    let vocab = model.config().vocab_size;
    let prompt: Vec<u32> = (0..19u32).map(|i| (i * 97 + 13) % vocab as u32).collect();
    let g = gpu.forward(&prompt, Logits::All)?;
    let c = cpu.forward(&prompt, Logits::All)?;
    let mut per_position: Vec<f32> = g
        .chunks_exact(vocab)
        .zip(c.chunks_exact(vocab))
        .map(|(a, b)| max_rel_diff(a, b))
        .collect();
    for id in [5u32, 77, 300] {
        let g = gpu.forward(&[id], Logits::Last)?;
        let c = cpu.forward(&[id], Logits::Last)?;
        per_position.push(max_rel_diff(&g, &c));
    }
    per_position.sort_by(f32::total_cmp);
    gpu.truncate(0);
    cpu.truncate(0);
    let steps = 12;
    let g = greedy_on(&mut gpu, &prompt[..7], steps)?;
    let c = greedy_on(&mut cpu, &prompt[..7], steps)?;
    let slots_median_rel_diff = check_slots(&model, &gpu)?;
    let graph = match gpu.graph_status() {
        Ok(on) => on,
        Err(e) => return Err(Error::driver("capturing the decode graph", e)),
    };
    Ok(SelfTestReport {
        device: dev.info().name.clone(),
        kernels,
        model_median_rel_diff: per_position[per_position.len() / 2],
        model_max_rel_diff: per_position[per_position.len() - 1],
        greedy_equal: g == c,
        greedy_tokens: steps,
        slots_median_rel_diff,
        graph,
    })
}

/// The slot path: a three-slot model on `gpu`'s device, prompts split over
/// passes of 8 tokens and batched decode steps, against the CPU's slots;
/// returns the median logit row's relative difference.
fn check_slots(model: &BitNetModel, gpu: &CudaModel) -> Result<f32> {
    let options = CudaOptions {
        context: 32,
        max_batch_tokens: 8,
        sequences: 3,
        memory_budget: None,
        graphs: true,
    };
    let mut slots = CudaModel::new(gpu.device().clone(), model.weights(), options)?;
    let reference = Arc::new(BitNetModel::new(model.weights().clone())?);
    let mut cpu = CpuSlots::new(reference, 3, 32, 1)?;
    let report = compare_slots(&mut slots, &mut cpu, &mut [])?;
    if !report.lengths_agree {
        return Ok(f32::INFINITY);
    }
    Ok(report.median_vs_reference())
}
