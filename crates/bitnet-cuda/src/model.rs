//! The BitNet forward pass on a CUDA device, for one sequence or several.
//!
//! Everything a pass needs is built once at load: weights uploaded in the
//! kernels' layouts, activation buffers for up to `max_batch_tokens`
//! tokens, the KV cache for the whole context of each of `sequences`
//! slots, and the list of launches with their arguments. A pass writes the
//! token embeddings (a row lookup on the host) and a step block (each
//! token's position and KV cache row, the rows that get logits), launches
//! 9 kernels per layer on
//! one stream (layers that read the same activations share a launch, with
//! RoPE, the KV-cache write, the gate and the residual add fused into the
//! matmul's write), and reads back only the logits and a status word: no
//! host round trip per layer. Decode steps (a token and its logits for
//! each of up to 16 sequences) replay a CUDA graph captured on the first
//! step of that many tokens, which removes the host's cost for the ~270
//! launches of a 2B-4T step.
//!
//! The tokens of one pass may belong to different sequences
//! ([`BatchForward`]): the matmuls see them as one matrix, and each token's
//! attention reads only its own slot of the cache.
//!
//! Numerics are the wgpu backend's and the CPU engine's (see
//! `kernels.cu`). The output layer runs in the file's own f32, f16 or
//! bf16; quantized output layers (Q8_0, Q6_K, Q4_K) are widened to f16.

use crate::context::CudaDevice;
use crate::error::{Error, Result};
use crate::kernels::{
    Arg, Grid, HEAD_BLOCK, Kernel, Kernels, Launch, MATMUL_BLOCK, attention_block, pad64, ptr,
    step_block, step_words,
};
use bitnet_core::ops::rows::RopeTable;
use bitnet_inference::device::{BatchForward, PassTokens, SlotFeed, SlotPasses, SlotState};
use bitnet_inference::{Logits, SequenceForward};
use bitnet_models::config::{Activation, BitNetConfig};
use bitnet_models::float_matrix::{FloatEncoding, FloatMatrix};
use bitnet_models::weights::{BitNetWeights, Linear};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};
use cudarc::driver::{CudaGraph, CudaSlice, sys};
use rayon::prelude::*;

/// Settings of a CUDA model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// Positions the KV cache holds (at most the model's context).
    pub context: usize,
    /// Tokens one pass runs at most; longer prompts run in several passes.
    pub max_batch_tokens: usize,
    /// Sequences held at once (slots of the KV cache, each of `context`
    /// positions); 1 for `bitnet run`, the batch size for a server.
    pub sequences: usize,
    /// Refuse to load when the model's buffers would exceed this many
    /// bytes (`None`: the device's free memory is the limit).
    pub memory_budget: Option<u64>,
    /// Replay decode steps from a captured CUDA graph.
    pub graphs: bool,
}

/// Decode steps of up to this many tokens (one per sequence) replay a
/// graph captured for their token count.
const GRAPH_TOKENS: usize = 16;

/// A captured graph owned by one model, so that the model can move to the
/// server's engine thread.
struct OwnedGraph(CudaGraph);

// SAFETY: CUDA forbids touching one graph from two threads at once; it
// allows using it from any thread with its context current. The model owns
// its graphs and is used through `&mut self` (never shared: `CudaModel` is
// not `Sync`), so moving it only changes which one thread touches them, and
// `CudaGraph::launch` binds the context to the calling thread first.
unsafe impl Send for OwnedGraph {}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            context: 4096,
            max_batch_tokens: 512,
            sequences: 1,
            memory_budget: None,
            graphs: true,
        }
    }
}

/// Device memory of a loaded model, by use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaMemory {
    /// Ternary layers, norms and the output layer.
    pub weights: u64,
    /// Keys and values for the whole context.
    pub kv_cache: u64,
    /// Activations, logits and tables.
    pub scratch: u64,
}

impl CudaMemory {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.scratch
    }
}

/// Segment flags of the matmul (kernels.cu).
pub(crate) const F_ADD: i32 = 1;
pub(crate) const F_CACHE: i32 = 4;
pub(crate) const F_ROPE: i32 = 8;
pub(crate) const F_GLU: i32 = 16;
pub(crate) const F_SILU: i32 = 32;

/// How one layer's rows pair up in a fused matmul (a warp computes a pair).
pub(crate) enum Pairing<'a> {
    /// Rows 2i and 2i + 1.
    Neighbours(&'a BitLinear),
    /// Rows j and j + d/2 of each head of dim `d`, rotated together.
    Rope(&'a BitLinear, usize),
    /// Row i of the gate layer and row i of the up layer.
    Glu(&'a BitLinear, &'a BitLinear),
}

/// Where a fused matmul's segment writes: a buffer, its row length, flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    pub(crate) ptr: u64,
    pub(crate) stride: usize,
    pub(crate) flags: i32,
}

/// Layers that read the same activations, in the matmul's layout: rows
/// in pair order, each `chunks` 16-byte chunks (word k holds columns
/// 16k..16k+15, column 16k + 4i + b at bits 8b + 2i, as code + 1), one
/// scale per row, and a descriptor per pair (kernels.cu).
pub(crate) struct Fused {
    pub(crate) words: Vec<u32>,
    pub(crate) scales: Vec<f32>,
    pub(crate) pairs: Vec<[i32; 4]>,
    pub(crate) chunks: usize,
    pub(crate) outputs: Vec<Output>,
}

fn row_scale(b: &BitLinear, r: usize) -> f32 {
    match b.scale() {
        WeightScale::Tensor(s) => *s,
        WeightScale::Channel(v) => v[r],
    }
}

/// Packs `parts` (at most three, all with the same input width) for one
/// fused launch.
pub(crate) fn fuse(parts: &[(Pairing, Output)]) -> Fused {
    let first = match &parts[0].0 {
        Pairing::Neighbours(b) | Pairing::Rope(b, _) | Pairing::Glu(b, _) => *b,
    };
    let cols = first.in_features();
    let chunks = pad64(cols) / 64;
    let mut rows: Vec<Option<(&BitLinear, usize)>> = Vec::new();
    let mut pairs = Vec::new();
    let mul = |b: &BitLinear| i32::from(b.convention() == ScaleConvention::Multiply);
    for (s, (pairing, _)) in parts.iter().enumerate() {
        let s = s as i32;
        match *pairing {
            Pairing::Neighbours(b) => {
                for i in (0..b.out_features()).step_by(2) {
                    let next = (i + 1 < b.out_features()).then_some(i + 1);
                    rows.push(Some((b, i)));
                    rows.push(next.map(|r| (b, r)));
                    let flags = s | mul(b) << 8 | if next.is_some() { mul(b) << 9 } else { 0 };
                    pairs.push([flags, i as i32, next.map_or(-1, |r| r as i32), 0]);
                }
            }
            Pairing::Rope(b, d) => {
                let half = d / 2;
                for head in 0..b.out_features() / d {
                    for j in 0..half {
                        let a = head * d + j;
                        rows.push(Some((b, a)));
                        rows.push(Some((b, a + half)));
                        let flags = s | mul(b) << 8 | mul(b) << 9;
                        pairs.push([flags, a as i32, (a + half) as i32, j as i32]);
                    }
                }
            }
            Pairing::Glu(g, u) => {
                for i in 0..g.out_features() {
                    rows.push(Some((g, i)));
                    rows.push(Some((u, i)));
                    pairs.push([s | mul(g) << 8 | mul(u) << 9, i as i32, i as i32, 0]);
                }
            }
        }
    }
    let per_row = 4 * chunks;
    let mut words = vec![0u32; rows.len() * per_row];
    words
        .par_chunks_mut(per_row)
        .zip(rows.par_iter())
        .for_each(|(out, row)| {
            let Some((b, r)) = *row else { return };
            let w = b.weights();
            for (k, word) in out.iter_mut().enumerate() {
                let mut v = 0u32;
                for j in 0..16 {
                    let c = 16 * k + j;
                    // Padding columns hold code 0 (stored 1); their activations are 0.
                    let code = if c < cols { w.code(r, c) } else { 0 };
                    v |= ((code + 1) as u32) << (8 * (j % 4) + 2 * (j / 4));
                }
                *word = v;
            }
        });
    let scales = rows
        .iter()
        .map(|row| row.map_or(1.0, |(b, r)| row_scale(b, r)))
        .collect();
    Fused {
        words,
        scales,
        pairs,
        chunks,
        outputs: parts.iter().map(|p| p.1).collect(),
    }
}

/// Uploads `f` and records its launch; `rope` is the cos/sin tables and
/// half the head dim (any values when no segment rotates).
pub(crate) fn fused_launch(
    a: &mut Alloc,
    f: &Fused,
    step: u64,
    acts: [u64; 3],
    rope: (u64, u64, usize),
) -> Result<Launch> {
    let w = a.upload(&f.words)?;
    let ws = a.upload(&f.scales)?;
    let pairs = a.upload(&f.pairs)?;
    Ok(matmul_args(
        step,
        [w, ws, pairs],
        acts,
        &f.outputs,
        rope,
        f.pairs.len(),
        f.chunks,
    ))
}

/// The launch of a matmul over weights, scales and pair table already on
/// the device (`weights`), reading `acts` (codes, scales, code sums).
pub(crate) fn matmul_args(
    step: u64,
    weights: [u64; 3],
    acts: [u64; 3],
    outputs: &[Output],
    rope: (u64, u64, usize),
    npairs: usize,
    chunks: usize,
) -> Launch {
    let [w, ws, pairs] = weights;
    let out = |i: usize| outputs.get(i).copied();
    let mut args = vec![
        Arg::Ptr(step),
        Arg::Ptr(w),
        Arg::Ptr(ws),
        Arg::Ptr(pairs),
        Arg::Ptr(acts[0]),
        Arg::Ptr(acts[1]),
        Arg::Ptr(acts[2]),
    ];
    args.extend((0..3).map(|i| Arg::Ptr(out(i).map_or(0, |o| o.ptr))));
    args.extend((0..3).map(|i| Arg::I32(out(i).map_or(0, |o| o.stride as i32))));
    args.extend((0..3).map(|i| Arg::I32(out(i).map_or(0, |o| o.flags))));
    args.extend([
        Arg::Ptr(rope.0),
        Arg::Ptr(rope.1),
        Arg::I32(rope.2 as i32),
        Arg::I32(npairs as i32),
        Arg::I32(chunks as i32),
        Arg::I32((64 * chunks) as i32),
    ]);
    Launch {
        kernel: Kernel::Matmul,
        grid: Grid::Matmul {
            x: (npairs as u32).div_ceil(MATMUL_BLOCK / 32),
        },
        block: MATMUL_BLOCK,
        args,
    }
}

fn ternary<'a>(layer: usize, name: &str, l: &'a Linear) -> Result<&'a BitLinear> {
    match l {
        Linear::Ternary(b) => Ok(b),
        Linear::Float { .. } => Err(Error::Unsupported(format!(
            "layer {layer} {name} has float weights (a float checkpoint); the GPU path runs \
             ternary layers only"
        ))),
        Linear::Dense(m) => Err(Error::Unsupported(format!(
            "layer {layer} {name} is kept in {:?} (mixed precision); the GPU path runs ternary \
             layers only",
            m.encoding()
        ))),
    }
}

/// The output layer as uploaded: its kernel and bytes (row-major).
pub(crate) fn head_bytes(m: &FloatMatrix) -> (Kernel, Vec<u8>) {
    match m.encoding() {
        FloatEncoding::F32 => (Kernel::LmHeadF32, m.encoded_bytes().to_vec()),
        FloatEncoding::F16 => (Kernel::LmHeadF16, m.encoded_bytes().to_vec()),
        FloatEncoding::BF16 => (Kernel::LmHeadBf16, m.encoded_bytes().to_vec()),
        _ => {
            let h = m.cols();
            let mut bytes = vec![0u8; 2 * m.rows() * h];
            bytes
                .par_chunks_mut(2 * h)
                .enumerate()
                .for_each(|(r, out)| {
                    let mut row = vec![0.0f32; h];
                    m.row_into(r, &mut row);
                    for (o, v) in out.chunks_exact_mut(2).zip(&row) {
                        o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                    }
                });
            (Kernel::LmHeadF16, bytes)
        }
    }
}

fn head_elem_bytes(m: &FloatMatrix) -> u64 {
    if m.encoding() == FloatEncoding::F32 {
        4
    } else {
        2
    }
}

/// A BitNet model loaded on a CUDA device, holding one sequence.
///
/// ```no_run
/// use bitnet_inference::{BitNetModel, Logits, SequenceForward};
/// use bitnet_cuda::{CudaDevice, CudaModel, CudaOptions};
/// let model = BitNetModel::load("model.gguf".as_ref())?;
/// let dev = CudaDevice::open(0)?;
/// let mut gpu = CudaModel::new(dev, model.weights(), CudaOptions::default())?;
/// let logits = gpu.forward(&[1, 2, 3], Logits::Last)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CudaModel {
    dev: CudaDevice,
    kernels: Kernels,
    config: BitNetConfig,
    embed: FloatMatrix,
    options: CudaOptions,
    memory: CudaMemory,
    logit_rows: usize,
    /// Positions held per slot, and the next pass's tokens.
    slots: SlotState,
    layers: Vec<Launch>,
    head: Vec<Launch>,
    step: CudaSlice<u32>,
    x: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    status: CudaSlice<u32>,
    /// Kept alive for the launches that point into them.
    _buffers: Vec<CudaSlice<u8>>,
    /// Decode steps by token count (a token and its logits per
    /// sequence), each once captured.
    graphs: Vec<Option<OwnedGraph>>,
    /// Why capturing failed, if it did (decode then launches directly).
    graph_error: Option<String>,
    host_x: Vec<f32>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("device", &self.dev.info())
            .field("options", &self.options)
            .field("memory", &self.memory)
            .field("lens", &self.slots.lens)
            .finish_non_exhaustive()
    }
}

impl CudaModel {
    /// Uploads `weights` to `dev` and records every launch.
    ///
    /// Fails with [`Error::Unsupported`] for models with float or
    /// mixed-precision linear layers or head dims over 512, and with
    /// [`Error::OutOfMemory`] when the buffers exceed the budget or the
    /// device's free memory; nothing is allocated in either case.
    pub fn new(dev: CudaDevice, weights: &BitNetWeights, options: CudaOptions) -> Result<Self> {
        let c = weights.config.clone();
        let (h, kv, f, d) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
        if c.q_dim() != h {
            return Err(Error::Unsupported(format!(
                "heads x head_dim ({}) must equal hidden_size ({h})",
                c.q_dim()
            )));
        }
        if d > 512 || d % 2 != 0 {
            return Err(Error::Unsupported(format!(
                "head_dim {d}: the attention kernel takes even head dims up to 512"
            )));
        }
        if c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return Err(Error::Unsupported(format!(
                "{} heads do not split into {} key/value heads",
                c.num_heads, c.num_kv_heads
            )));
        }
        let context = options.context.min(c.max_position_embeddings).max(1);
        let tokens = options.max_batch_tokens.clamp(1, context);
        let logit_rows = tokens;
        let sequences = options.sequences.max(1);
        let out = weights.output_weight();

        let mut lins = Vec::with_capacity(c.num_layers * 7);
        for (l, layer) in weights.layers.iter().enumerate() {
            for (name, lin) in [
                ("q_proj", &layer.q_proj),
                ("k_proj", &layer.k_proj),
                ("v_proj", &layer.v_proj),
                ("o_proj", &layer.o_proj),
                ("gate_proj", &layer.gate_proj),
                ("up_proj", &layer.up_proj),
                ("down_proj", &layer.down_proj),
            ] {
                lins.push(ternary(l, name, lin)?);
            }
        }
        // Plan the bytes before allocating anything.
        let stride = pad64(h).max(pad64(f));
        let linear_bytes: u64 = lins
            .iter()
            .map(|b| ((pad64(b.in_features()) / 4 + 12) * (b.out_features() + 1)) as u64)
            .sum();
        let norm_bytes = 4 * (c.num_layers * (3 * h + f) + h) as u64;
        let head_bytes_n = head_elem_bytes(out) * (out.rows() * out.cols()) as u64;
        let kv_bytes = 2 * 4 * (c.num_layers * sequences * context * kv) as u64;
        let scratch = 4 * (tokens * (3 * h + f + 2) + tokens * stride / 4 + 8) as u64
            + 4 * step_words(tokens, logit_rows) as u64
            + 4 * (logit_rows * (h + c.vocab_size)) as u64
            + 4 * (context * d) as u64;
        let memory = CudaMemory {
            weights: linear_bytes + norm_bytes + head_bytes_n,
            kv_cache: kv_bytes,
            scratch,
        };
        let needed_mib = memory.total() as f64 / (1 << 20) as f64;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        if let Some(budget) = options.memory_budget
            && memory.total() > budget
        {
            return Err(Error::OutOfMemory {
                needed_mib,
                context,
                limit: format!("the budget is {:.1} MiB", mib(budget)),
            });
        }
        let free = dev.info().free_memory as u64;
        if memory.total() > free {
            return Err(Error::OutOfMemory {
                needed_mib,
                context,
                limit: format!("{} has {:.1} MiB free", dev.info().name, mib(free)),
            });
        }

        let kernels = Kernels::load(&dev)?;
        let built = Build {
            dev: &dev,
            c: &c,
            weights,
            lins: &lins,
            context,
            sequences,
            tokens,
            logit_rows,
            stride,
        }
        .run()?;
        dev.synchronize("uploading the model")?;
        Ok(CudaModel {
            kernels,
            config: c,
            embed: weights.embed_tokens.clone(),
            options: CudaOptions {
                context,
                max_batch_tokens: tokens,
                sequences,
                ..options
            },
            memory,
            logit_rows,
            slots: SlotState::new(sequences),
            layers: built.layers,
            head: built.head,
            step: built.step,
            x: built.x,
            logits: built.logits,
            status: built.status,
            _buffers: built.buffers,
            graphs: (0..=GRAPH_TOKENS).map(|_| None).collect(),
            graph_error: None,
            host_x: Vec::new(),
            dev,
        })
    }

    /// Device memory the model's buffers take.
    pub fn memory(&self) -> CudaMemory {
        self.memory
    }

    /// The settings in effect (context and batch clamped to the model).
    pub fn options(&self) -> CudaOptions {
        self.options
    }

    /// The device.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Whether decode steps replay a captured graph (after the first one),
    /// or why they do not.
    pub fn graph_status(&self) -> std::result::Result<bool, &str> {
        match &self.graph_error {
            Some(e) => Err(e),
            None => Ok(self.graphs.iter().any(Option::is_some)),
        }
    }

    /// Where a decode step's time goes, at the current position: the
    /// whole step through `forward` (host included), its captured graph
    /// alone, and each kind of launch captured and replayed on its own
    /// (device time from CUDA events, mean of 20 replays, microseconds).
    pub fn profile(&mut self) -> Result<Vec<(String, f64)>> {
        let what = "profiling a decode step";
        let len = self.slots.lens[0];
        if len + 1 > self.options.context {
            return Err(bitnet_inference::Error::ContextFull {
                needed: len + 1,
                capacity: self.options.context,
            }
            .into());
        }
        let rounds = 20;
        let t0 = std::time::Instant::now();
        for _ in 0..rounds {
            self.forward_one(&[1], Logits::Last)?;
            self.slots.lens[0] = len;
        }
        let mut rows = vec![(
            "decode step, host to logits (forward)".to_string(),
            t0.elapsed().as_secs_f64() * 1e6 / rounds as f64,
        )];
        let step = crate::kernels::step_for(1, len, 0, &[0]);
        self.dev
            .stream()
            .memcpy_htod(&step, &mut self.step.slice_mut(..step.len()))
            .map_err(|e| Error::driver(what, e))?;
        let kinds: [(&str, &dyn Fn(Kernel) -> bool); 6] = [
            ("all launches (the decode graph)", &|_| true),
            ("norm + int8 quantize", &|k| k == Kernel::NormQuant),
            ("ternary matmuls", &|k| k == Kernel::Matmul),
            ("attention", &|k| k == Kernel::Attention),
            ("final norm", &|k| k == Kernel::RmsNorm),
            ("output layer", &|k| {
                matches!(
                    k,
                    Kernel::LmHeadF32 | Kernel::LmHeadF16 | Kernel::LmHeadBf16
                )
            }),
        ];
        for (name, keep) in kinds {
            let launches: Vec<&Launch> = self
                .layers
                .iter()
                .chain(&self.head)
                .filter(|l| keep(l.kernel))
                .collect();
            let us = crate::bench::graph_micros(&self.dev, &self.kernels, &launches, 1, 1)?;
            rows.push((format!("{name}: {} launches", launches.len()), us));
        }
        // The replays wrote keys and values at `len`; nothing reads them
        // before a real step overwrites them.
        self.slots.lens[0] = len;
        Ok(rows)
    }

    fn launch_all(&self, n: u32, m: u32) -> Result<()> {
        for l in &self.layers {
            self.kernels.launch(l, n, m)?;
        }
        if m > 0 {
            for l in &self.head {
                self.kernels.launch(l, n, m)?;
            }
        }
        Ok(())
    }

    /// Captures the launches of a decode step of `n` tokens (each with
    /// its logits) into a graph.
    fn capture(&mut self, n: u32) -> Result<CudaGraph> {
        let s = self.dev.stream().clone();
        let what = "capturing the decode step as a CUDA graph";
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::driver(what, e))?;
        let launched = self.launch_all(n, n);
        let graph = s.end_capture(sys::CUgraphInstantiate_flags(0));
        launched?;
        graph
            .map_err(|e| Error::driver(what, e))?
            .ok_or_else(|| Error::driver(what, "the capture recorded nothing"))
    }

    /// One pass over `t`'s tokens (see [`PassTokens`]); held positions
    /// are the caller's.
    fn pass(&mut self, t: &PassTokens) -> Result<Option<Vec<f32>>> {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let (n, m) = (t.ids.len(), t.rows.len());
        debug_assert!(n <= self.options.max_batch_tokens && m <= self.logit_rows);
        self.host_x.resize(n * h, 0.0);
        for (&id, row) in t.ids.iter().zip(self.host_x.chunks_exact_mut(h)) {
            self.embed.row_into(id as usize, row);
        }
        let s = self.dev.stream().clone();
        let what = "running the forward pass";
        let step = step_block(&t.pairs, &t.rows);
        s.memcpy_htod(&step, &mut self.step.slice_mut(..step.len()))
            .map_err(|e| Error::driver(what, e))?;
        s.memcpy_htod(&self.host_x, &mut self.x.slice_mut(..n * h))
            .map_err(|e| Error::driver(what, e))?;
        s.memset_zeros(&mut self.status)
            .map_err(|e| Error::driver(what, e))?;
        // A decode step: a token and its logits per sequence.
        let decode = n == m && n <= GRAPH_TOKENS && self.options.graphs;
        if decode && self.graphs[n].is_none() && self.graph_error.is_none() {
            match self.capture(n as u32) {
                Ok(g) => self.graphs[n] = Some(OwnedGraph(g)),
                Err(e) => self.graph_error = Some(e.to_string()),
            }
        }
        match (&self.graphs.get(n), decode) {
            (Some(Some(g)), true) => g.0.launch().map_err(|e| Error::driver(what, e))?,
            _ => self.launch_all(n as u32, m as u32)?,
        }
        // Straight into the Vec that is returned: no staging copy.
        let mut out = vec![0.0f32; m * vocab];
        if m > 0 {
            s.memcpy_dtoh(&self.logits.slice(..m * vocab), &mut out[..])
                .map_err(|e| Error::driver(what, e))?;
        }
        let mut status = [0u32; 4];
        s.memcpy_dtoh(&self.status, &mut status)
            .map_err(|e| Error::driver(what, e))?;
        s.synchronize().map_err(|e| Error::driver(what, e))?;
        if status[0] != 0 {
            let positions = t.pairs.iter().step_by(2);
            return Err(Error::NonFinite(format!(
                "a layer input held NaN or infinity in a pass of {n} tokens at positions {}..={}",
                positions.clone().min().unwrap_or(&0),
                positions.max().unwrap_or(&0),
            )));
        }
        if m == 0 {
            return Ok(None);
        }
        if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("logit {bad} is {}", out[bad])));
        }
        Ok(Some(out))
    }
}

impl SlotPasses for CudaModel {
    type Error = Error;
    fn context(&self) -> usize {
        self.options.context
    }
    fn max_pass_tokens(&self) -> usize {
        self.options.max_batch_tokens
    }
    fn max_logit_rows(&self) -> usize {
        self.logit_rows
    }
    fn vocab(&self) -> usize {
        self.config.vocab_size
    }
    fn slot_state(&mut self) -> &mut SlotState {
        &mut self.slots
    }
    fn run_pass(&mut self, tokens: &PassTokens) -> Result<Option<Vec<f32>>> {
        self.pass(tokens)
    }
}

impl SequenceForward for CudaModel {
    fn device_memory_bytes(&self) -> Option<u64> {
        Some(self.memory.total())
    }
    fn device_name(&self) -> String {
        let i = self.dev.info();
        format!(
            "cuda:{} {} (sm_{}{})",
            i.ordinal, i.name, i.compute_capability.0, i.compute_capability.1
        )
    }
    fn config(&self) -> &BitNetConfig {
        &self.config
    }
    fn len(&self) -> usize {
        self.slots.lens[0]
    }
    fn capacity(&self) -> usize {
        self.options.context
    }
    fn truncate(&mut self, len: usize) {
        self.slots.lens[0] = self.slots.lens[0].min(len);
    }
    fn forward(&mut self, ids: &[u32], which: Logits) -> bitnet_inference::Result<Vec<f32>> {
        Ok(self.forward_one(ids, which)?)
    }
    fn decode_profile(&mut self) -> bitnet_inference::Result<Vec<(String, f64)>> {
        Ok(self.profile()?)
    }
}

impl BatchForward for CudaModel {
    fn device_name(&self) -> String {
        SequenceForward::device_name(self)
    }
    fn config(&self) -> &BitNetConfig {
        &self.config
    }
    fn slots(&self) -> usize {
        self.slots.lens.len()
    }
    fn slot_capacity(&self) -> usize {
        self.options.context
    }
    fn slot_len(&self, slot: usize) -> usize {
        self.slots.lens[slot]
    }
    fn clear_slot(&mut self, slot: usize) {
        self.slots.lens[slot] = 0;
    }
    fn forward_slots(&mut self, feeds: &[SlotFeed<'_>]) -> bitnet_inference::Result<Vec<f32>> {
        Ok(self.forward_feeds(feeds)?)
    }
    fn kv_bytes_per_slot(&self) -> usize {
        (self.memory.kv_cache / self.slots.lens.len() as u64) as usize
    }
    fn device_memory_bytes(&self) -> Option<u64> {
        Some(self.memory.total())
    }
}

struct Build<'a> {
    dev: &'a CudaDevice,
    c: &'a BitNetConfig,
    weights: &'a BitNetWeights,
    lins: &'a [&'a BitLinear],
    context: usize,
    sequences: usize,
    tokens: usize,
    logit_rows: usize,
    stride: usize,
}

struct Built {
    layers: Vec<Launch>,
    head: Vec<Launch>,
    step: CudaSlice<u32>,
    x: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    status: CudaSlice<u32>,
    buffers: Vec<CudaSlice<u8>>,
}

/// Allocation helpers over one stream, keeping every buffer alive.
pub(crate) struct Alloc<'a> {
    pub(crate) dev: &'a CudaDevice,
    pub(crate) keep: Vec<CudaSlice<u8>>,
}

impl Alloc<'_> {
    /// A zeroed buffer of `bytes`; returns its address.
    pub(crate) fn zeros(&mut self, bytes: usize) -> Result<u64> {
        let s = self.dev.stream();
        let b = s
            .alloc_zeros::<u8>(bytes.max(16))
            .map_err(|e| Error::driver("allocating device memory", e))?;
        let p = ptr(&b, s);
        self.keep.push(b);
        Ok(p)
    }

    /// The first `bytes` of the buffer at address `p`.
    pub(crate) fn download(&self, p: u64, bytes: usize) -> Result<Vec<u8>> {
        let s = self.dev.stream();
        let b = self
            .keep
            .iter()
            .find(|b| ptr(*b, s) == p)
            .ok_or_else(|| Error::driver("reading back a buffer", "unknown buffer"))?;
        let out = s
            .clone_dtoh(&b.slice(..bytes))
            .map_err(|e| Error::driver("reading back a buffer", e))?;
        Ok(out)
    }

    /// A buffer holding `data`; returns its address.
    pub(crate) fn upload<T: Copy>(&mut self, data: &[T]) -> Result<u64> {
        // SAFETY: T is plain old data (f32, u32, i32 or u8) here.
        let bytes = unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        };
        let s = self.dev.stream();
        let b = s
            .clone_htod(bytes)
            .map_err(|e| Error::driver("uploading weights", e))?;
        let p = ptr(&b, s);
        self.keep.push(b);
        Ok(p)
    }
}

impl Build<'_> {
    fn run(self) -> Result<Built> {
        let c = self.c;
        let (h, kv, f, d) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
        let t = self.tokens;
        let s = self.dev.stream();
        let what = "allocating device memory";
        let step = s
            .alloc_zeros::<u32>(step_words(t, self.logit_rows))
            .map_err(|e| Error::driver(what, e))?;
        let x = s
            .alloc_zeros::<f32>(t * h)
            .map_err(|e| Error::driver(what, e))?;
        let logits = s
            .alloc_zeros::<f32>(self.logit_rows * c.vocab_size)
            .map_err(|e| Error::driver(what, e))?;
        let status = s
            .alloc_zeros::<u32>(4)
            .map_err(|e| Error::driver(what, e))?;
        let (stp, xp, lp, stat) = (ptr(&step, s), ptr(&x, s), ptr(&logits, s), ptr(&status, s));
        let mut a = Alloc {
            dev: self.dev,
            keep: Vec::new(),
        };
        let codes = a.zeros(t * self.stride)?;
        let scales = a.zeros(4 * t)?;
        let sums = a.zeros(4 * t)?;
        let qb = a.zeros(4 * t * h)?;
        let ob = a.zeros(4 * t * h)?;
        let gate = a.zeros(4 * t * f)?;
        let normed = a.zeros(4 * self.logit_rows * h)?;
        let rope = RopeTable::new(d, c.rope_theta, 0..self.context);
        let (cos, sin) = rope.tables();
        let (cos, sin) = (a.upload(cos)?, a.upload(sin)?);
        let eps = c.rms_norm_eps;

        let norm_quant = |a: &mut Alloc, input: u64, w: &[f32]| -> Result<Launch> {
            let cols = w.len();
            let wb = a.upload(w)?;
            Ok(Launch {
                kernel: Kernel::NormQuant,
                grid: Grid::Tokens,
                block: if cols >= 2048 { 512 } else { 256 },
                args: vec![
                    Arg::Ptr(stp),
                    Arg::Ptr(input),
                    Arg::Ptr(wb),
                    Arg::Ptr(codes),
                    Arg::Ptr(scales),
                    Arg::Ptr(sums),
                    Arg::Ptr(stat),
                    Arg::I32(cols as i32),
                    Arg::I32(pad64(cols) as i32),
                    Arg::F32(eps),
                ],
            })
        };
        let acts = [codes, scales, sums];
        let rope = (cos, sin, d / 2);
        let out = |ptr: u64, stride: usize, flags: i32| Output { ptr, stride, flags };
        let silu = match c.activation {
            Activation::Relu2 => 0,
            Activation::Silu => F_SILU,
        };

        let mut layers = Vec::new();
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let lin = &self.lins[7 * l..7 * l + 7];
            let kc = a.zeros(4 * self.sequences * self.context * kv)?;
            let vc = a.zeros(4 * self.sequences * self.context * kv)?;
            layers.push(norm_quant(&mut a, xp, &layer.input_layernorm)?);
            // q, k and v in one launch, rotated, k and v straight into the cache.
            let qkv = fuse(&[
                (Pairing::Rope(lin[0], d), out(qb, h, F_ROPE)),
                (Pairing::Rope(lin[1], d), out(kc, kv, F_ROPE | F_CACHE)),
                (Pairing::Neighbours(lin[2]), out(vc, kv, F_CACHE)),
            ]);
            layers.push(fused_launch(&mut a, &qkv, stp, acts, rope)?);
            drop(qkv);
            layers.push(Launch {
                kernel: Kernel::Attention,
                grid: Grid::Attention {
                    heads: c.num_heads as u32,
                },
                block: attention_block(d),
                args: vec![
                    Arg::Ptr(stp),
                    Arg::Ptr(qb),
                    Arg::Ptr(kc),
                    Arg::Ptr(vc),
                    Arg::Ptr(ob),
                    Arg::I32(c.num_heads as i32),
                    Arg::I32(c.num_kv_heads as i32),
                    Arg::I32(d as i32),
                    Arg::I32(h as i32),
                    Arg::I32(kv as i32),
                    Arg::F32(1.0 / (d as f32).sqrt()),
                ],
            });
            layers.push(norm_quant(&mut a, ob, &layer.attn_sub_norm)?);
            let o = fuse(&[(Pairing::Neighbours(lin[3]), out(xp, h, F_ADD))]);
            layers.push(fused_launch(&mut a, &o, stp, acts, rope)?);
            drop(o);
            layers.push(norm_quant(&mut a, xp, &layer.post_attention_layernorm)?);
            // gate and up in one launch, gated on the way out.
            let gu = fuse(&[(Pairing::Glu(lin[4], lin[5]), out(gate, f, F_GLU | silu))]);
            layers.push(fused_launch(&mut a, &gu, stp, acts, rope)?);
            drop(gu);
            layers.push(norm_quant(&mut a, gate, &layer.ffn_sub_norm)?);
            let down = fuse(&[(Pairing::Neighbours(lin[6]), out(xp, h, F_ADD))]);
            layers.push(fused_launch(&mut a, &down, stp, acts, rope)?);
        }

        let nb = a.upload(&self.weights.norm)?;
        let out = self.weights.output_weight();
        let (kernel, bytes) = head_bytes(out);
        let wb = a.upload(&bytes)?;
        drop(bytes);
        let head = vec![
            Launch {
                kernel: Kernel::RmsNorm,
                grid: Grid::LogitRows,
                block: 256,
                args: vec![
                    Arg::Ptr(stp),
                    Arg::Ptr(xp),
                    Arg::Ptr(nb),
                    Arg::Ptr(normed),
                    Arg::I32(h as i32),
                    Arg::F32(eps),
                ],
            },
            head_launch(kernel, stp, normed, wb, lp, h, out.rows()),
        ];
        Ok(Built {
            layers,
            head,
            step,
            x,
            logits,
            status,
            buffers: a.keep,
        })
    }
}

/// The launch of the output layer (also used by the self-test).
pub(crate) fn head_launch(
    kernel: Kernel,
    step: u64,
    x: u64,
    w: u64,
    logits: u64,
    h: usize,
    vocab: usize,
) -> Launch {
    Launch {
        kernel,
        grid: Grid::Head {
            x: (vocab as u32).div_ceil(HEAD_BLOCK / 32),
        },
        block: HEAD_BLOCK,
        args: vec![
            Arg::Ptr(step),
            Arg::Ptr(x),
            Arg::Ptr(w),
            Arg::Ptr(logits),
            Arg::I32(h as i32),
            Arg::I32(vocab as i32),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_quant::formats::runtime::PackedTernary;

    fn layer(rows: usize, cols: usize, seed: u64, convention: ScaleConvention) -> BitLinear {
        let mut x = seed;
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                ((x >> 33) % 3) as i8 - 1
            })
            .collect();
        let scale = WeightScale::Channel((0..rows).map(|r| 1.0 + r as f32).collect());
        BitLinear::new(
            PackedTernary::from_codes(&codes, rows, cols).unwrap(),
            scale,
            convention,
        )
        .unwrap()
    }

    /// The codes of packed row `i`, read back the way the kernel reads them.
    fn unpack(f: &Fused, i: usize, cols: usize) -> Vec<i8> {
        let row = &f.words[i * 4 * f.chunks..(i + 1) * 4 * f.chunks];
        (0..cols)
            .map(|c| {
                let (k, j) = (c / 16, c % 16);
                ((row[k] >> (8 * (j % 4) + 2 * (j / 4))) & 3) as i8 - 1
            })
            .collect()
    }

    fn codes(b: &BitLinear, r: usize) -> Vec<i8> {
        (0..b.in_features())
            .map(|c| b.weights().code(r, c))
            .collect()
    }

    #[test]
    fn fused_rows_pair_up_as_the_kernel_writes_them() {
        let out = |ptr| Output {
            ptr,
            stride: 0,
            flags: 0,
        };
        let (d, cols) = (8, 70);
        let q = layer(16, cols, 1, ScaleConvention::Multiply);
        let k = layer(8, cols, 2, ScaleConvention::Divide);
        let v = layer(7, cols, 3, ScaleConvention::Multiply);
        let f = fuse(&[
            (Pairing::Rope(&q, d), out(1)),
            (Pairing::Rope(&k, d), out(2)),
            (Pairing::Neighbours(&v), out(3)),
        ]);
        assert_eq!(f.chunks, 2);
        assert_eq!(f.pairs.len(), 8 + 4 + 4);
        assert_eq!(f.words.len(), 2 * f.pairs.len() * 4 * f.chunks);
        let mut seen = vec![Vec::new(); 3];
        for (p, pair) in f.pairs.iter().enumerate() {
            let seg = (pair[0] & 255) as usize;
            let lin = [&q, &k, &v][seg];
            let mul = lin.convention() == ScaleConvention::Multiply;
            assert_eq!(pair[0] & 256 != 0, mul, "pair {p}");
            for (slot, &row) in [pair[1], pair[2]].iter().enumerate() {
                if row < 0 {
                    // Only the odd layer's last pair has an empty half.
                    assert_eq!((seg, pair[1]), (2, 6));
                    continue;
                }
                let row = row as usize;
                assert_eq!(unpack(&f, 2 * p + slot, cols), codes(lin, row), "pair {p}");
                assert_eq!(f.scales[2 * p + slot], 1.0 + row as f32);
                seen[seg].push(row);
            }
            if seg < 2 {
                // RoPE pairs: j and j + d/2 of one head, and j.
                assert_eq!(pair[2] - pair[1], d as i32 / 2);
                assert_eq!(pair[3], pair[1] % d as i32);
            }
        }
        for (seg, rows) in [16, 8, 7].into_iter().enumerate() {
            let mut s = seen[seg].clone();
            s.sort_unstable();
            assert_eq!(s, (0..rows).collect::<Vec<_>>(), "segment {seg}");
        }
    }

    #[test]
    fn gate_and_up_rows_share_a_pair() {
        let cols = 130;
        let g = layer(5, cols, 4, ScaleConvention::Multiply);
        let u = layer(5, cols, 5, ScaleConvention::Divide);
        let f = fuse(&[(
            Pairing::Glu(&g, &u),
            Output {
                ptr: 0,
                stride: 5,
                flags: F_GLU,
            },
        )]);
        assert_eq!(f.chunks, 3);
        for (i, pair) in f.pairs.iter().enumerate() {
            assert_eq!(pair, &[256, i as i32, i as i32, 0]);
            assert_eq!(unpack(&f, 2 * i, cols), codes(&g, i));
            assert_eq!(unpack(&f, 2 * i + 1, cols), codes(&u, i));
        }
        // Padding columns hold weight 0 (stored 1).
        let row = &f.words[..4 * f.chunks];
        assert_eq!(row[4 * f.chunks - 1], 0x5555_5555);
    }
}
