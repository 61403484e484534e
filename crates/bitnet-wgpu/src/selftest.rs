//! The GPU against the CPU reference: what `bitnet doctor` runs for an
//! adapter, and what the tests check.
//!
//! Kernel by kernel ([`check_kernels`]): each runs once on inputs with
//! awkward sizes (rows not a multiple of the workgroup, columns not a
//! multiple of 16, token counts not a multiple of 4) and is compared with
//! the CPU engine's own code on the same inputs: int8 codes, scales and
//! code sums exactly, float outputs within [`KERNEL_TOLERANCE`].
//!
//! Whole model ([`run`]): a random model with the tiny preset's shape runs
//! a prompt on the CPU engine and on the GPU. Logits agree to f32 rounding
//! at almost every position; where a value lands within rounding of an
//! int8 rounding boundary the two devices may pick neighbouring codes, and
//! that position's logits then differ by up to about 1e-2 of the largest
//! (one quantization step, carried through the layers). So the model check
//! is the median position's difference and the greedy continuation, token
//! for token.

use crate::context::GpuContext;
use crate::error::Result;
use crate::kernels::{
    Grid, Kernel, Kernels, WG_GLU, WG_ROWS, Word, attention_params, f32_bytes, lm_head_params,
    matmul_params, norm_quant_params, pad16, read_back, rope_params, run_once, storage,
    storage_with, u32_bytes, uniform,
};
use crate::model::{GpuOptions, WgpuModel, pack_linear};
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
    /// The kernel.
    pub kernel: &'static str,
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
    /// The adapter's name.
    pub adapter: String,
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

fn step(ctx: &GpuContext, n: u32, m: u32) -> wgpu::Buffer {
    uniform(ctx, "step", &[Word::U(n), Word::U(m)])
}

/// The kernels' per-token (position, cache row) pairs: `n` tokens from
/// position `start`, in the cache slot whose position 0 is row `base`.
fn token_rows(ctx: &GpuContext, n: usize, start: usize, base: usize) -> wgpu::Buffer {
    let pairs: Vec<u32> = (start..start + n)
        .flat_map(|pos| [pos as u32, (base + pos) as u32])
        .collect();
    storage_with(ctx, "tokens", &u32_bytes(&pairs))
}

/// Every kernel once against the CPU engine's code.
pub fn check_kernels(ctx: &GpuContext) -> Result<Vec<KernelCheck>> {
    let k = Kernels::new(ctx)?;
    let mut rng = Lcg(42);
    Ok(vec![
        check_norm_quant(ctx, &k, &mut rng)?,
        check_matmul(ctx, &k, &mut rng, ScaleConvention::Multiply)?,
        check_matmul(ctx, &k, &mut rng, ScaleConvention::Divide)?,
        check_rope_attention(ctx, &k, &mut rng)?,
        check_glu(ctx, &k, &mut rng)?,
        check_rms_norm(ctx, &k, &mut rng)?,
        check_lm_head(ctx, &k, &mut rng, false)?,
        check_lm_head(ctx, &k, &mut rng, true)?,
    ])
}

fn check_norm_quant(ctx: &GpuContext, k: &Kernels, rng: &mut Lcg) -> Result<KernelCheck> {
    let (n, cols) = (5usize, 200usize);
    let stride = pad16(cols) / 4;
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

    let p = norm_quant_params(ctx, cols, eps);
    let st = step(ctx, n as u32, 0);
    let xb = storage_with(ctx, "x", &f32_bytes(&x));
    let wb = storage_with(ctx, "w", &f32_bytes(&w));
    let codes = storage(ctx, "codes", 4 * (n * stride) as u64);
    let scales = storage(ctx, "scales", 4 * n as u64);
    let sums = storage(ctx, "sums", 4 * n as u64);
    let status = storage_with(ctx, "status", &[0u8; 16]);
    run_once(
        ctx,
        k,
        Kernel::NormQuant,
        &[&p, &st, &xb, &wb, &codes, &scales, &sums, &status],
        Grid::Tokens,
        n as u32,
        0,
    )?;
    let got_codes = read_back(ctx, &codes, n * stride)?;
    let got_scales = read_back(ctx, &scales, n)?;
    let got_sums = read_back(ctx, &sums, n)?;
    let mut exact = read_back(ctx, &status, 1)?[0].to_bits() == 0;
    for t in 0..n {
        let bytes: Vec<i8> = got_codes[t * stride..(t + 1) * stride]
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .map(|b| b as i8)
            .collect();
        exact &= bytes[..cols] == *want.codes(t);
        exact &= bytes[cols..].iter().all(|&b| b == 0);
        exact &= got_scales[t] == want.scale(t);
        exact &= got_sums[t].to_bits() as i32 == want.sum(t);
    }
    Ok(KernelCheck {
        kernel: "norm_quant",
        max_rel_diff: max_rel_diff(&got_scales, want.scales()),
        codes_exact: Some(exact),
    })
}

fn check_matmul(
    ctx: &GpuContext,
    k: &Kernels,
    rng: &mut Lcg,
    convention: ScaleConvention,
) -> Result<KernelCheck> {
    let (n, rows, cols) = (6usize, 70usize, 200usize);
    let stride = pad16(cols) / 4;
    let wcodes: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
    let scale = match convention {
        ScaleConvention::Multiply => WeightScale::Tensor(0.7),
        ScaleConvention::Divide => {
            WeightScale::Channel((0..rows).map(|_| 1.5 + rng.next()).collect())
        }
    };
    let layer = BitLinear::new(
        PackedTernary::from_codes(&wcodes, rows, cols)?,
        scale,
        convention,
    )?;
    let xcodes: Vec<i8> = (0..n * cols)
        .map(|_| (rng.below(255) as i32 - 127) as i8)
        .collect();
    let xscales: Vec<f32> = (0..n).map(|_| 20.0 + 10.0 * rng.next()).collect();
    let acts = QuantizedActivations::from_codes(&xcodes, &xscales, n, cols)?;
    let mut want = vec![0.0; n * rows];
    layer.forward_quantized(&acts, &mut want, &mut Vec::new(), Parallelism::Sequential)?;

    let packed = pack_linear(&layer);
    let mut words = vec![0u32; n * stride];
    for t in 0..n {
        for c in 0..cols {
            words[t * stride + c / 4] |= u32::from(xcodes[t * cols + c] as u8) << (8 * (c % 4));
        }
    }
    let sums: Vec<u32> = (0..n)
        .map(|t| {
            xcodes[t * cols..(t + 1) * cols]
                .iter()
                .map(|&c| i32::from(c))
                .sum::<i32>() as u32
        })
        .collect();
    let p = matmul_params(ctx, rows, cols, packed.flags);
    let st = step(ctx, n as u32, 0);
    let tb = token_rows(ctx, n, 0, 0);
    let wb = storage_with(ctx, "w", &u32_bytes(&packed.words));
    let sb = storage_with(ctx, "ws", &f32_bytes(&packed.scales));
    let cb = storage_with(ctx, "codes", &u32_bytes(&words));
    let xs = storage_with(ctx, "scales", &f32_bytes(&xscales));
    let sm = storage_with(ctx, "sums", &u32_bytes(&sums));
    let out = storage(ctx, "out", 4 * (n * rows) as u64);
    run_once(
        ctx,
        k,
        Kernel::Matmul,
        &[&p, &st, &wb, &sb, &cb, &xs, &sm, &out, &tb],
        Grid::Matmul {
            x: (rows as u32).div_ceil(WG_ROWS),
        },
        n as u32,
        0,
    )?;
    let got = read_back(ctx, &out, n * rows)?;
    Ok(KernelCheck {
        kernel: match convention {
            ScaleConvention::Multiply => "matmul (tensor scale, multiply)",
            ScaleConvention::Divide => "matmul (channel scales, divide)",
        },
        max_rel_diff: max_rel_diff(&got, &want),
        codes_exact: None,
    })
}

/// RoPE on queries and cached keys, then causal GQA attention of `n` new
/// tokens after `start` cached ones, against the CPU's RoPE table and a
/// softmax computed in f64. The sequence sits in the second slot of the
/// cache, so the kernels' slot offsets are checked too.
fn check_rope_attention(ctx: &GpuContext, k: &Kernels, rng: &mut Lcg) -> Result<KernelCheck> {
    let (heads, kv_heads, d) = (4usize, 2usize, 48usize);
    let (start, n) = (67usize, 5usize);
    let ctx_len = start + n;
    let (h, kv) = (heads * d, kv_heads * d);
    let table = RopeTable::new(d, 10_000.0, 0..ctx_len);
    let q: Vec<f32> = (0..n * h).map(|_| rng.next()).collect();
    let kc: Vec<f32> = (0..ctx_len * kv).map(|_| rng.next()).collect();
    let vc: Vec<f32> = (0..ctx_len * kv).map(|_| rng.next()).collect();
    // CPU: rotate the queries and the new keys, then attend.
    let mut qr = q.clone();
    let mut kr = kc.clone();
    for t in 0..n {
        for hd in qr[t * h..(t + 1) * h].chunks_exact_mut(d) {
            table.rotate_in_place(hd, start + t);
        }
        let pos = start + t;
        for hd in kr[pos * kv..(pos + 1) * kv].chunks_exact_mut(d) {
            table.rotate_in_place(hd, pos);
        }
    }
    let scale = 1.0 / (d as f64).sqrt();
    let mut want = vec![0.0f32; n * h];
    for t in 0..n {
        for head in 0..heads {
            let g = head / (heads / kv_heads);
            let qv = &qr[t * h + head * d..][..d];
            let s: Vec<f64> = (0..=start + t)
                .map(|j| {
                    let kv_row = &kr[j * kv + g * d..][..d];
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
    let st = step(ctx, n as u32, 0);
    // Slot 1 of a cache of 100-position slots; slot 0 holds noise.
    let base = 100;
    let tb = token_rows(ctx, n, start, base);
    let slotted = |v: &[f32]| {
        let mut all: Vec<f32> = (0..base * kv).map(|i| (i % 7) as f32 - 3.0).collect();
        all.extend_from_slice(v);
        all
    };
    let cosb = storage_with(ctx, "cos", &f32_bytes(cos));
    let sinb = storage_with(ctx, "sin", &f32_bytes(sin));
    let qb = storage_with(ctx, "q", &f32_bytes(&q));
    let kb = storage_with(ctx, "k", &f32_bytes(&slotted(&kc)));
    let vb = storage_with(ctx, "v", &f32_bytes(&slotted(&vc)));
    let ob = storage(ctx, "o", 4 * (n * h) as u64);
    for (buf, hs, stride, flags) in [(&qb, heads, h, 0u32), (&kb, kv_heads, kv, 1)] {
        let p = rope_params(ctx, hs, d, stride, flags);
        run_once(
            ctx,
            k,
            Kernel::Rope,
            &[&p, &st, &cosb, &sinb, buf, &tb],
            Grid::PerToken {
                x: ((hs * d / 2) as u32).div_ceil(WG_ROWS),
            },
            n as u32,
            0,
        )?;
    }
    let p = attention_params(ctx, heads, kv_heads, d, h, kv);
    run_once(
        ctx,
        k,
        Kernel::Attention,
        &[&p, &st, &qb, &kb, &vb, &ob, &tb],
        Grid::Attention {
            heads: heads as u32,
        },
        n as u32,
        0,
    )?;
    let got = read_back(ctx, &ob, n * h)?;
    Ok(KernelCheck {
        kernel: "rope + attention",
        max_rel_diff: max_rel_diff(&got, &want),
        codes_exact: None,
    })
}

fn check_glu(ctx: &GpuContext, k: &Kernels, rng: &mut Lcg) -> Result<KernelCheck> {
    let (n, cols) = (3usize, 300usize);
    let g: Vec<f32> = (0..n * cols).map(|_| 4.0 * rng.next()).collect();
    let u: Vec<f32> = (0..n * cols).map(|_| rng.next()).collect();
    let mut worst = 0.0f32;
    for (act, f) in [(0u32, relu2 as fn(f32) -> f32), (1, silu)] {
        let want: Vec<f32> = g.iter().zip(&u).map(|(&a, &b)| f(a) * b).collect();
        let p = uniform(ctx, "glu", &[Word::U(cols as u32), Word::U(act)]);
        let st = step(ctx, n as u32, 0);
        let gb = storage_with(ctx, "gate", &f32_bytes(&g));
        let ub = storage_with(ctx, "up", &f32_bytes(&u));
        run_once(
            ctx,
            k,
            Kernel::Glu,
            &[&p, &st, &gb, &ub],
            Grid::PerToken {
                x: (cols as u32).div_ceil(WG_GLU),
            },
            n as u32,
            0,
        )?;
        worst = worst.max(max_rel_diff(&read_back(ctx, &gb, n * cols)?, &want));
    }
    Ok(KernelCheck {
        kernel: "glu (relu², silu)",
        max_rel_diff: worst,
        codes_exact: None,
    })
}

fn check_rms_norm(ctx: &GpuContext, k: &Kernels, rng: &mut Lcg) -> Result<KernelCheck> {
    let (n, cols) = (4usize, 300usize);
    let x: Vec<f32> = (0..n * cols).map(|_| 3.0 * rng.next()).collect();
    let w: Vec<f32> = (0..cols).map(|_| 1.0 + 0.1 * rng.next()).collect();
    // The last row only (what generation asks for).
    let mut want = vec![0.0; cols];
    rms_norm_into(&x[(n - 1) * cols..], &w, 1e-6, &mut want);
    let p = uniform(ctx, "p", &[Word::U(cols as u32), Word::F(1e-6)]);
    let st = step(ctx, n as u32, 1);
    let rows = storage_with(ctx, "logit rows", &u32_bytes(&[(n - 1) as u32]));
    let xb = storage_with(ctx, "x", &f32_bytes(&x));
    let wb = storage_with(ctx, "w", &f32_bytes(&w));
    let ob = storage(ctx, "out", 4 * cols as u64);
    run_once(
        ctx,
        k,
        Kernel::RmsNorm,
        &[&p, &st, &xb, &wb, &ob, &rows],
        Grid::LogitRows,
        n as u32,
        1,
    )?;
    Ok(KernelCheck {
        kernel: "rms_norm",
        max_rel_diff: max_rel_diff(&read_back(ctx, &ob, cols)?, &want),
        codes_exact: None,
    })
}

fn check_lm_head(ctx: &GpuContext, k: &Kernels, rng: &mut Lcg, f16: bool) -> Result<KernelCheck> {
    let (m, h, vocab) = (3usize, 96usize, 133usize);
    let data: Vec<f32> = (0..vocab * h).map(|_| 0.1 * rng.next()).collect();
    let matrix = if f16 {
        let bytes: Vec<u8> = data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        FloatMatrix::from_encoded("check", bytes, vocab, h, FloatEncoding::F16)
    } else {
        FloatMatrix::from_f32(vocab, h, data)
    }?;
    let x: Vec<f32> = (0..m * h).map(|_| rng.next()).collect();
    let mut want = vec![0.0; m * vocab];
    for t in 0..m {
        for r in 0..vocab {
            want[t * vocab + r] = matrix.dot_row(r, &x[t * h..(t + 1) * h]);
        }
    }
    // Two slices, so the offset path runs too.
    let plan = crate::model::HeadPlan::with_slice_rows(&matrix, 70);
    let st = step(ctx, m as u32, m as u32);
    let xb = storage_with(ctx, "x", &f32_bytes(&x));
    let lb = storage(ctx, "logits", 4 * (m * vocab) as u64);
    let kernel = if f16 {
        Kernel::LmHeadF16
    } else {
        Kernel::LmHeadF32
    };
    for first in (0..vocab).step_by(70) {
        let rows = 70.min(vocab - first);
        let wb = storage_with(ctx, "w", &u32_bytes(&plan.slice_words(&matrix, first)));
        let p = lm_head_params(ctx, h, rows, vocab, first);
        let per = if f16 { rows.div_ceil(2) } else { rows };
        run_once(
            ctx,
            k,
            kernel,
            &[&p, &st, &xb, &wb, &lb],
            Grid::PerLogitRow {
                x: (per as u32).div_ceil(WG_ROWS),
            },
            m as u32,
            m as u32,
        )?;
    }
    Ok(KernelCheck {
        kernel: if f16 {
            "lm_head (f16)"
        } else {
            "lm_head (f32)"
        },
        max_rel_diff: max_rel_diff(&read_back(ctx, &lb, m * vocab)?, &want),
        codes_exact: None,
    })
}

/// Runs the kernel checks and the whole-model check on `ctx`'s device.
pub fn run(ctx: GpuContext) -> Result<SelfTestReport> {
    let adapter = ctx.adapter().name.clone();
    let kernels = check_kernels(&ctx)?;
    let weights = synthesize(Preset::Tiny, 7)?;
    let model = BitNetModel::new(weights)?;
    let options = GpuOptions {
        context: 64,
        // Small passes so that the prompt takes several (the chunked path).
        max_batch_tokens: 8,
        sequences: 1,
        memory_budget: None,
    };
    let mut gpu = WgpuModel::new(ctx, model.weights(), options)?;
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
    Ok(SelfTestReport {
        adapter,
        kernels,
        model_median_rel_diff: per_position[per_position.len() / 2],
        model_max_rel_diff: per_position[per_position.len() - 1],
        greedy_equal: g == c,
        greedy_tokens: steps,
        slots_median_rel_diff,
    })
}

/// The slot path: a three-slot model on `gpu`'s device, prompts split over
/// passes of 8 tokens and batched decode steps, against the CPU's slots;
/// returns the median logit row's relative difference.
fn check_slots(model: &BitNetModel, gpu: &WgpuModel) -> Result<f32> {
    let options = GpuOptions {
        context: 32,
        max_batch_tokens: 8,
        sequences: 3,
        memory_budget: None,
    };
    let mut slots = WgpuModel::new(gpu.context().clone(), model.weights(), options)?;
    let reference = Arc::new(BitNetModel::new(model.weights().clone())?);
    let mut cpu = CpuSlots::new(reference, 3, 32, 1)?;
    let report = compare_slots(&mut slots, &mut cpu, &mut [])?;
    if !report.lengths_agree {
        return Ok(f32::INFINITY);
    }
    Ok(report.median_vs_reference())
}
