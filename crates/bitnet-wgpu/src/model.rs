//! The BitNet forward pass on a wgpu device, for one sequence or several.
//!
//! Everything a pass needs is built once at load: weights uploaded into
//! device buffers in the kernels' layouts, activation buffers for up to
//! `max_batch_tokens` tokens, the KV cache for the whole context of each
//! of `sequences` slots, and a bind group per dispatch. A pass then
//! writes the token embeddings (a row lookup, done on the host), each
//! token's position and KV cache row, the rows that want logits and one
//! small uniform, records the ~15 dispatches per layer into a single
//! compute pass, and reads back only the logits and a status word. No
//! host round trip per layer.
//!
//! The tokens of one pass may belong to different sequences
//! ([`BatchForward`]): the linear layers see them as one matrix, and each
//! token's attention reads only its own slot of the cache. That is how
//! the server batches decode steps of many clients on one GPU.
//!
//! Numerics follow the CPU engine: RMSNorm then per-token absmax int8
//! codes (round half to even), ternary x int8 dot products summed exactly
//! in i32 and scaled once per output with the layer's convention,
//! rotate-half RoPE from the CPU's own cos/sin table, causal softmax
//! attention in f32, ReLU² or SiLU gating. The output layer runs in f32
//! when the file stores it in f32, else from f16 (halving its bandwidth;
//! the CPU runs Q6_K/Q8_0/Q4_K output layers in integers, so logits agree
//! to about 1e-3 relative, not bit for bit).

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{
    Dispatch, Grid, Kernel, Kernels, WG_GLU, WG_ROWS, Word, attention_params, f32_bytes,
    lm_head_params, matmul_params, norm_quant_params, pad16, rope_params, staging, storage,
    storage_with, u32_bytes, uniform,
};
use bitnet_core::ops::rows::RopeTable;
use bitnet_inference::device::{BatchForward, PassTokens, SlotFeed, SlotPasses, SlotState};
use bitnet_inference::{Logits, SequenceForward};
use bitnet_models::config::{Activation, BitNetConfig};
use bitnet_models::float_matrix::{FloatEncoding, FloatMatrix};
use bitnet_models::weights::{BitNetWeights, Linear};
use bitnet_quant::bitlinear::{BitLinear, ScaleConvention, WeightScale};

/// Settings of a GPU model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuOptions {
    /// Positions the KV cache holds (at most the model's context).
    pub context: usize,
    /// Tokens one pass runs at most; longer prompts run in several passes.
    pub max_batch_tokens: usize,
    /// Sequences held at once (slots of the KV cache, each of `context`
    /// positions); 1 for `bitnet run`, the batch size for a server.
    pub sequences: usize,
    /// Refuse to load when the model's buffers would exceed this many
    /// bytes (`None`: only the device's own limits apply).
    pub memory_budget: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            context: 4096,
            max_batch_tokens: 256,
            sequences: 1,
            memory_budget: None,
        }
    }
}

/// Device memory of a loaded model, by use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuMemory {
    /// Ternary layers, norms and the output layer.
    pub weights: u64,
    /// Keys and values for the whole context of every slot.
    pub kv_cache: u64,
    /// Activations, logits, tables and parameter blocks.
    pub scratch: u64,
}

impl GpuMemory {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.scratch
    }
}

/// A BitNet model loaded on a GPU, holding `sequences` sequences (one
/// through [`SequenceForward`], slot 0; several through [`BatchForward`]).
///
/// ```no_run
/// use bitnet_inference::{BitNetModel, Logits, SequenceForward};
/// use bitnet_wgpu::{AdapterChoice, GpuContext, GpuOptions, WgpuModel};
/// let model = BitNetModel::load("model.gguf".as_ref())?;
/// let ctx = GpuContext::open(AdapterChoice::First { allow_software: false })?;
/// let mut gpu = WgpuModel::new(ctx, model.weights(), GpuOptions::default())?;
/// let logits = gpu.forward(&[1, 2, 3], Logits::Last)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WgpuModel {
    ctx: GpuContext,
    kernels: Kernels,
    config: BitNetConfig,
    embed: FloatMatrix,
    options: GpuOptions,
    memory: GpuMemory,
    /// Logit rows one pass can return (the logits buffer's binding limit).
    logit_rows: usize,
    /// Positions held per slot, and the next pass's tokens.
    slots: SlotState,
    layers: Vec<Dispatch>,
    head: Vec<Dispatch>,
    step: wgpu::Buffer,
    tokens: wgpu::Buffer,
    rows: wgpu::Buffer,
    x: wgpu::Buffer,
    logits: wgpu::Buffer,
    status: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Kept alive for the bind groups that read them.
    _buffers: Vec<wgpu::Buffer>,
    host_x: Vec<f32>,
    host_out: Vec<f32>,
}

/// One ternary layer's upload: words `[cols_pad / 16, rows]` and a
/// per-row scale, with the matmul flag for its convention.
pub(crate) struct PackedLinear {
    pub(crate) words: Vec<u32>,
    pub(crate) scales: Vec<f32>,
    pub(crate) rows: usize,
    pub(crate) flags: u32,
}

/// Repacks a ternary layer for `matmul.wgsl`: word `k` of row `r` holds
/// columns 16k..16k+15, column 16k + 4i + b at bits 8b + 2i, as code + 1.
pub(crate) fn pack_linear(b: &BitLinear) -> PackedLinear {
    let (rows, cols) = (b.out_features(), b.in_features());
    let words_per_row = pad16(cols) / 16;
    let w = b.weights();
    let mut words = vec![0u32; words_per_row * rows];
    for r in 0..rows {
        for k in 0..words_per_row {
            let mut word = 0u32;
            for j in 0..16 {
                let c = 16 * k + j;
                // Padding columns hold code 0 (stored 1); their activations are 0.
                let code = if c < cols { w.code(r, c) } else { 0 };
                let (i, byte) = (j / 4, j % 4);
                word |= ((code + 1) as u32) << (8 * byte + 2 * i);
            }
            words[k * rows + r] = word;
        }
    }
    let scales = match b.scale() {
        WeightScale::Tensor(s) => vec![*s; rows],
        WeightScale::Channel(v) => v.clone(),
    };
    let flags = match b.convention() {
        ScaleConvention::Multiply => 2,
        ScaleConvention::Divide => 0,
    };
    PackedLinear {
        words,
        scales,
        rows,
        flags,
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

/// The output layer's slices: each `rows` vocabulary rows, transposed,
/// in f32 or f16 pairs, within `max_bytes`.
pub(crate) struct HeadPlan {
    f16: bool,
    slice_rows: usize,
}

impl HeadPlan {
    fn new(m: &FloatMatrix, max_bytes: u64) -> Result<Self> {
        let f16 = m.encoding() != FloatEncoding::F32;
        let h = m.cols() as u64;
        let per_row = if f16 { 2 * h } else { 4 * h };
        let mut slice_rows = (max_bytes / per_row).min(m.rows() as u64) as usize;
        if f16 && slice_rows < m.rows() {
            slice_rows &= !1;
        }
        if slice_rows == 0 {
            return Err(Error::Unsupported(format!(
                "one output-layer row ({per_row} bytes) exceeds the device's storage binding \
                 limit of {max_bytes} bytes"
            )));
        }
        Ok(HeadPlan { f16, slice_rows })
    }

    /// A plan with slices of `slice_rows` (the kernel checks).
    pub(crate) fn with_slice_rows(m: &FloatMatrix, slice_rows: usize) -> Self {
        HeadPlan {
            f16: m.encoding() != FloatEncoding::F32,
            slice_rows,
        }
    }

    pub(crate) fn slice_words(&self, m: &FloatMatrix, first: usize) -> Vec<u32> {
        let (h, rows) = (m.cols(), self.slice_rows.min(m.rows() - first));
        let mut row = vec![0.0f32; h];
        if self.f16 {
            let pairs = rows.div_ceil(2);
            let mut words = vec![0u32; h * pairs];
            for j in 0..rows {
                m.row_into(first + j, &mut row);
                let shift = 16 * (j % 2);
                for (k, &v) in row.iter().enumerate() {
                    words[k * pairs + j / 2] |=
                        u32::from(half::f16::from_f32(v).to_bits()) << shift;
                }
            }
            words
        } else {
            let mut words = vec![0u32; h * rows];
            for j in 0..rows {
                m.row_into(first + j, &mut row);
                for (k, &v) in row.iter().enumerate() {
                    words[k * rows + j] = v.to_bits();
                }
            }
            words
        }
    }
}

impl WgpuModel {
    /// Uploads `weights` to the device of `ctx` and builds every dispatch.
    ///
    /// Fails with [`Error::Unsupported`] for models with float or
    /// mixed-precision linear layers or head dims over 256, and with
    /// [`Error::OutOfMemory`] when the buffers exceed the budget or a
    /// device limit; nothing is allocated in either case.
    pub fn new(ctx: GpuContext, weights: &BitNetWeights, options: GpuOptions) -> Result<Self> {
        let c = weights.config.clone();
        let (h, kv, f, d) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
        if c.q_dim() != h {
            return Err(Error::Unsupported(format!(
                "heads x head_dim ({}) must equal hidden_size ({h})",
                c.q_dim()
            )));
        }
        if d > 256 || d % 2 != 0 {
            return Err(Error::Unsupported(format!(
                "head_dim {d}: the attention kernel takes even head dims up to 256"
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
        let sequences = options.sequences.max(1);
        let max_binding = ctx.max_binding();
        let out = weights.output_weight();
        let head_plan = HeadPlan::new(out, max_binding)?;
        let logit_rows = ((max_binding / (4 * c.vocab_size as u64)) as usize).clamp(1, tokens);

        // Plan the bytes before allocating anything.
        let (fp, hp) = (pad16(f), pad16(h));
        let stride_words = hp.max(fp) / 4;
        let mut packed = Vec::with_capacity(c.num_layers * 7);
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
                packed.push(ternary(l, name, lin)?);
            }
        }
        let linear_bytes: u64 = packed
            .iter()
            .map(|b| (pad16(b.in_features()) / 4 * b.out_features() + 4 * b.out_features()) as u64)
            .sum();
        let norm_bytes = 4 * (c.num_layers * (3 * h + f) + h) as u64;
        let head_bytes = if head_plan.f16 {
            2 * (out.rows().div_ceil(2) * 2 * h) as u64
        } else {
            4 * (out.rows() * h) as u64
        };
        let kv_bytes = 2 * 4 * (c.num_layers * sequences * context * kv) as u64;
        let act_bytes = 4 * (tokens * (3 * h + 2 * f + stride_words + 4)) as u64
            + 4 * (logit_rows * (h + 2 * c.vocab_size + 1)) as u64
            + 4 * (context * d) as u64;
        let memory = GpuMemory {
            weights: linear_bytes + norm_bytes + head_bytes,
            kv_cache: kv_bytes,
            scratch: act_bytes,
        };
        let needed_mib = memory.total() as f64 / (1 << 20) as f64;
        if let Some(budget) = options.memory_budget
            && memory.total() > budget
        {
            return Err(Error::OutOfMemory {
                needed_mib,
                context,
                limit: format!("the budget is {:.1} MiB", budget as f64 / (1 << 20) as f64),
            });
        }
        let biggest = [
            4 * (sequences * context * kv) as u64,
            4 * (tokens * f) as u64,
            4 * (logit_rows * c.vocab_size) as u64,
        ]
        .into_iter()
        .chain(
            packed
                .iter()
                .map(|b| (pad16(b.in_features()) / 4 * b.out_features()) as u64),
        )
        .max()
        .unwrap_or(0);
        if biggest > max_binding {
            return Err(Error::OutOfMemory {
                needed_mib,
                context,
                limit: format!(
                    "one of its buffers needs {biggest} bytes, over the device's {max_binding}-byte \
                     storage binding limit (a layer's KV cache holds {sequences} x {context} \
                     positions: fewer sequences or a shorter context shrink it)"
                ),
            });
        }

        let kernels = Kernels::new(&ctx)?;
        let built = ctx.checked("allocating and uploading the model", || {
            Build {
                ctx: &ctx,
                kernels: &kernels,
                c: &c,
                weights,
                packed: &packed,
                head_plan: &head_plan,
                context,
                sequences,
                tokens,
                logit_rows,
                stride_words,
            }
            .run()
        })?;
        ctx.wait("uploading the model")?;
        let Built {
            layers,
            head,
            step,
            tokens: token_buf,
            rows,
            x,
            logits,
            status,
            staging,
            buffers,
        } = built;
        Ok(WgpuModel {
            ctx,
            kernels,
            config: c,
            embed: weights.embed_tokens.clone(),
            options: GpuOptions {
                context,
                max_batch_tokens: tokens,
                sequences,
                ..options
            },
            memory,
            logit_rows,
            slots: SlotState::new(sequences),
            layers,
            head,
            step,
            tokens: token_buf,
            rows,
            x,
            logits,
            status,
            staging,
            _buffers: buffers,
            host_x: Vec::new(),
            host_out: Vec::new(),
        })
    }

    /// Device memory the model's buffers take.
    pub fn memory(&self) -> GpuMemory {
        self.memory
    }

    /// The settings in effect (context and batch clamped to the model).
    pub fn options(&self) -> GpuOptions {
        self.options
    }

    /// The context this model runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
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
        let q = self.ctx.queue();
        q.write_buffer(&self.x, 0, &f32_bytes(&self.host_x));
        q.write_buffer(&self.tokens, 0, &u32_bytes(&t.pairs));
        if m > 0 {
            q.write_buffer(&self.rows, 0, &u32_bytes(&t.rows));
        }
        let step = [n as u32, m as u32, 0, 0];
        q.write_buffer(&self.step, 0, &u32_bytes(&step));
        q.write_buffer(&self.status, 0, &[0u8; 16]);
        let mut enc = self
            .ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            self.kernels
                .record(&mut pass, &self.layers, n as u32, m as u32);
            if m > 0 {
                self.kernels
                    .record(&mut pass, &self.head, n as u32, m as u32);
            }
        }
        let logit_bytes = (4 * m * vocab) as u64;
        if m > 0 {
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, logit_bytes);
        }
        enc.copy_buffer_to_buffer(&self.status, 0, &self.staging, logit_bytes, 16);
        q.submit([enc.finish()]);
        self.ctx
            .read_f32(&self.staging, logit_bytes + 16, &mut self.host_out)?;
        let status = self.host_out[m * vocab].to_bits();
        if status != 0 {
            let positions: Vec<u32> = t.pairs.iter().step_by(2).copied().collect();
            return Err(Error::NonFinite(format!(
                "a layer input held NaN or infinity in a pass of {n} tokens at positions {}..={}",
                positions.iter().min().unwrap_or(&0),
                positions.iter().max().unwrap_or(&0),
            )));
        }
        if m == 0 {
            return Ok(None);
        }
        let out = self.host_out[..m * vocab].to_vec();
        if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("logit {bad} is {}", out[bad])));
        }
        Ok(Some(out))
    }
}

impl SlotPasses for WgpuModel {
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

impl SequenceForward for WgpuModel {
    fn device_memory_bytes(&self) -> Option<u64> {
        Some(self.memory.total())
    }
    fn device_name(&self) -> String {
        let a = self.ctx.adapter();
        format!("wgpu:{} {} ({}, {})", a.index, a.name, a.backend, a.kind)
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
}

impl BatchForward for WgpuModel {
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
    ctx: &'a GpuContext,
    kernels: &'a Kernels,
    c: &'a BitNetConfig,
    weights: &'a BitNetWeights,
    packed: &'a [&'a BitLinear],
    head_plan: &'a HeadPlan,
    context: usize,
    sequences: usize,
    tokens: usize,
    logit_rows: usize,
    stride_words: usize,
}

struct Built {
    layers: Vec<Dispatch>,
    head: Vec<Dispatch>,
    step: wgpu::Buffer,
    tokens: wgpu::Buffer,
    rows: wgpu::Buffer,
    x: wgpu::Buffer,
    logits: wgpu::Buffer,
    status: wgpu::Buffer,
    staging: wgpu::Buffer,
    buffers: Vec<wgpu::Buffer>,
}

impl Build<'_> {
    fn run(self) -> Built {
        let (ctx, k, c) = (self.ctx, self.kernels, self.c);
        let (h, kv, f, d) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.head_dim);
        let t = self.tokens;
        let mut keep: Vec<wgpu::Buffer> = Vec::new();

        let step = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let f4 = |n: usize| 4 * n as u64;
        let tokens = storage(ctx, "tokens", f4(2 * t));
        let rows = storage(ctx, "logit rows", f4(self.logit_rows));
        let x = storage(ctx, "x", f4(t * h));
        let codes = storage(ctx, "codes", f4(t * self.stride_words));
        let scales = storage(ctx, "scales", f4(t));
        let sums = storage(ctx, "sums", f4(t));
        let status = storage(ctx, "status", 16);
        let qb = storage(ctx, "q", f4(t * h));
        let ob = storage(ctx, "o", f4(t * h));
        let gate = storage(ctx, "gate", f4(t * f));
        let up = storage(ctx, "up", f4(t * f));
        let normed = storage(ctx, "normed", f4(self.logit_rows * h));
        let logits = storage(ctx, "logits", f4(self.logit_rows * c.vocab_size));
        let staging = staging(ctx, "staging", f4(self.logit_rows * c.vocab_size) + 16);

        let rope = RopeTable::new(d, c.rope_theta, 0..self.context);
        let (cos, sin) = rope.tables();
        let cos = storage_with(ctx, "rope cos", &f32_bytes(cos));
        let sin = storage_with(ctx, "rope sin", &f32_bytes(sin));

        let eps = Word::F(c.rms_norm_eps);
        let norm_quant = |keep: &mut Vec<wgpu::Buffer>, input: &wgpu::Buffer, w: &[f32]| {
            let cols = w.len();
            let p = norm_quant_params(ctx, cols, c.rms_norm_eps);
            let wb = storage_with(ctx, "norm", &f32_bytes(w));
            let bind = k.bind(
                ctx,
                Kernel::NormQuant,
                &[&p, &step, input, &wb, &codes, &scales, &sums, &status],
            );
            keep.extend([p, wb]);
            Dispatch {
                kernel: Kernel::NormQuant,
                bind,
                grid: Grid::Tokens,
            }
        };
        let matmul =
            |keep: &mut Vec<wgpu::Buffer>, b: &BitLinear, out: &wgpu::Buffer, extra: u32| {
                let pl = pack_linear(b);
                let p = matmul_params(ctx, pl.rows, b.in_features(), pl.flags | extra);
                let wb = storage_with(ctx, "ternary weights", &u32_bytes(&pl.words));
                let sb = storage_with(ctx, "weight scales", &f32_bytes(&pl.scales));
                let bind = k.bind(
                    ctx,
                    Kernel::Matmul,
                    &[&p, &step, &wb, &sb, &codes, &scales, &sums, out, &tokens],
                );
                keep.extend([p, wb, sb]);
                Dispatch {
                    kernel: Kernel::Matmul,
                    bind,
                    grid: Grid::Matmul {
                        x: (pl.rows as u32).div_ceil(WG_ROWS),
                    },
                }
            };
        let rope_dispatch = |keep: &mut Vec<wgpu::Buffer>,
                             buf: &wgpu::Buffer,
                             heads: usize,
                             stride: usize,
                             flags: u32| {
            let p = rope_params(ctx, heads, d, stride, flags);
            let bind = k.bind(ctx, Kernel::Rope, &[&p, &step, &cos, &sin, buf, &tokens]);
            keep.push(p);
            Dispatch {
                kernel: Kernel::Rope,
                bind,
                grid: Grid::PerToken {
                    x: ((heads * d / 2) as u32).div_ceil(WG_ROWS),
                },
            }
        };

        const ADD: u32 = 1;
        const INTO_CACHE: u32 = 4;
        let mut layers = Vec::new();
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let lin = &self.packed[7 * l..7 * l + 7];
            let cache = self.sequences * self.context * kv;
            let kc = storage(ctx, "k cache", f4(cache));
            let vc = storage(ctx, "v cache", f4(cache));
            layers.push(norm_quant(&mut keep, &x, &layer.input_layernorm));
            layers.push(matmul(&mut keep, lin[0], &qb, 0));
            layers.push(matmul(&mut keep, lin[1], &kc, INTO_CACHE));
            layers.push(matmul(&mut keep, lin[2], &vc, INTO_CACHE));
            layers.push(rope_dispatch(&mut keep, &qb, c.num_heads, h, 0));
            layers.push(rope_dispatch(&mut keep, &kc, c.num_kv_heads, kv, 1));
            let p = attention_params(ctx, c.num_heads, c.num_kv_heads, d, h, kv);
            let bind = k.bind(
                ctx,
                Kernel::Attention,
                &[&p, &step, &qb, &kc, &vc, &ob, &tokens],
            );
            keep.push(p);
            layers.push(Dispatch {
                kernel: Kernel::Attention,
                bind,
                grid: Grid::Attention {
                    heads: c.num_heads as u32,
                },
            });
            layers.push(norm_quant(&mut keep, &ob, &layer.attn_sub_norm));
            layers.push(matmul(&mut keep, lin[3], &x, ADD));
            layers.push(norm_quant(&mut keep, &x, &layer.post_attention_layernorm));
            layers.push(matmul(&mut keep, lin[4], &gate, 0));
            layers.push(matmul(&mut keep, lin[5], &up, 0));
            let act = match c.activation {
                Activation::Relu2 => 0,
                Activation::Silu => 1,
            };
            let p = uniform(ctx, "glu", &[Word::U(f as u32), Word::U(act)]);
            let bind = k.bind(ctx, Kernel::Glu, &[&p, &step, &gate, &up]);
            keep.push(p);
            layers.push(Dispatch {
                kernel: Kernel::Glu,
                bind,
                grid: Grid::PerToken {
                    x: (f as u32).div_ceil(WG_GLU),
                },
            });
            layers.push(norm_quant(&mut keep, &gate, &layer.ffn_sub_norm));
            layers.push(matmul(&mut keep, lin[6], &x, ADD));
            keep.extend([kc, vc]);
        }

        // Final norm and the output layer, slice by slice.
        let mut head = Vec::new();
        let p = uniform(ctx, "rms_norm", &[Word::U(h as u32), eps]);
        let nb = storage_with(ctx, "final norm", &f32_bytes(&self.weights.norm));
        let bind = k.bind(ctx, Kernel::RmsNorm, &[&p, &step, &x, &nb, &normed, &rows]);
        keep.extend([p, nb]);
        head.push(Dispatch {
            kernel: Kernel::RmsNorm,
            bind,
            grid: Grid::LogitRows,
        });
        let out = self.weights.output_weight();
        let plan = self.head_plan;
        let kernel = if plan.f16 {
            Kernel::LmHeadF16
        } else {
            Kernel::LmHeadF32
        };
        for first in (0..out.rows()).step_by(plan.slice_rows) {
            let rows = plan.slice_rows.min(out.rows() - first);
            let wb = storage_with(
                ctx,
                "output layer",
                &u32_bytes(&plan.slice_words(out, first)),
            );
            let p = lm_head_params(ctx, h, rows, c.vocab_size, first);
            let bind = k.bind(ctx, kernel, &[&p, &step, &normed, &wb, &logits]);
            keep.extend([p, wb]);
            let per = if plan.f16 { rows.div_ceil(2) } else { rows };
            head.push(Dispatch {
                kernel,
                bind,
                grid: Grid::PerLogitRow {
                    x: (per as u32).div_ceil(WG_ROWS),
                },
            });
        }
        keep.extend([codes, scales, sums, qb, ob, gate, up, normed, cos, sin]);
        Built {
            layers,
            head,
            step,
            tokens,
            rows,
            x,
            logits,
            status,
            staging,
            buffers: keep,
        }
    }
}
