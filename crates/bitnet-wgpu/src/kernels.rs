//! The compute pipelines (one per WGSL kernel in `shaders/`) and the
//! small helpers every dispatch needs: uniform parameter blocks, storage
//! buffers, bind groups in binding order, and the workgroup grid a
//! dispatch takes for a given number of tokens.

use crate::context::GpuContext;
use crate::error::Result;

const COMMON: &str = include_str!("shaders/common.wgsl");

/// Which pipeline a dispatch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    NormQuant,
    Matmul,
    Rope,
    Attention,
    Glu,
    RmsNorm,
    LmHeadF32,
    LmHeadF16,
}

impl Kernel {
    const ALL: [Kernel; 8] = [
        Kernel::NormQuant,
        Kernel::Matmul,
        Kernel::Rope,
        Kernel::Attention,
        Kernel::Glu,
        Kernel::RmsNorm,
        Kernel::LmHeadF32,
        Kernel::LmHeadF16,
    ];

    fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::NormQuant => (include_str!("shaders/norm_quant.wgsl"), "main"),
            Kernel::Matmul => (include_str!("shaders/matmul.wgsl"), "main"),
            Kernel::Rope => (include_str!("shaders/rope.wgsl"), "main"),
            Kernel::Attention => (include_str!("shaders/attention.wgsl"), "main"),
            Kernel::Glu => (include_str!("shaders/glu.wgsl"), "main"),
            Kernel::RmsNorm => (include_str!("shaders/rms_norm.wgsl"), "main"),
            Kernel::LmHeadF32 => (include_str!("shaders/lm_head.wgsl"), "main_f32"),
            Kernel::LmHeadF16 => (include_str!("shaders/lm_head.wgsl"), "main_f16"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::NormQuant => "norm_quant",
            Kernel::Matmul => "matmul",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention",
            Kernel::Glu => "glu",
            Kernel::RmsNorm => "rms_norm",
            Kernel::LmHeadF32 => "lm_head_f32",
            Kernel::LmHeadF16 => "lm_head_f16",
        }
    }
}

/// Tokens one matmul invocation covers (`TOK` in matmul.wgsl).
pub(crate) const MATMUL_TOKENS: u32 = 4;
/// Invocations per workgroup of the row-parallel kernels.
pub(crate) const WG_ROWS: u32 = 64;
/// Invocations per workgroup of `glu`.
pub(crate) const WG_GLU: u32 = 256;

/// How many workgroups a dispatch takes, given the pass's tokens `n` and
/// logit rows `m`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grid {
    /// One workgroup per token row.
    Tokens,
    /// `(x, ceil(n / MATMUL_TOKENS))`.
    Matmul { x: u32 },
    /// `(x, n)`.
    PerToken { x: u32 },
    /// `(n, heads)`.
    Attention { heads: u32 },
    /// One workgroup per logit row.
    LogitRows,
    /// `(x, m)`.
    PerLogitRow { x: u32 },
}

impl Grid {
    pub(crate) fn size(self, n: u32, m: u32) -> (u32, u32, u32) {
        match self {
            Grid::Tokens => (n, 1, 1),
            Grid::Matmul { x } => (x, n.div_ceil(MATMUL_TOKENS), 1),
            Grid::PerToken { x } => (x, n, 1),
            Grid::Attention { heads } => (n, heads, 1),
            Grid::LogitRows => (m, 1, 1),
            Grid::PerLogitRow { x } => (x, m, 1),
        }
    }
}

/// One recorded dispatch: a pipeline, its bindings and its grid.
#[derive(Debug)]
pub(crate) struct Dispatch {
    pub(crate) kernel: Kernel,
    pub(crate) bind: wgpu::BindGroup,
    pub(crate) grid: Grid,
}

/// Every pipeline, compiled once per device.
#[derive(Debug)]
pub(crate) struct Kernels {
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Kernels {
    /// Compiles every kernel; a compile failure names the kernel.
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        let mut pipelines = Vec::with_capacity(Kernel::ALL.len());
        for k in Kernel::ALL {
            let (body, entry) = k.source();
            let source = format!("{COMMON}\n{body}");
            let what = format!("compiling the {} kernel", k.name());
            let pipeline = ctx.checked(&what, || {
                let module = ctx
                    .device()
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(k.name()),
                        source: wgpu::ShaderSource::Wgsl(source.into()),
                    });
                ctx.device()
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(k.name()),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    })
            })?;
            pipelines.push(pipeline);
        }
        Ok(Kernels { pipelines })
    }

    pub(crate) fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        // `new` compiles them in `Kernel::ALL` order, which is declaration order.
        &self.pipelines[k as usize]
    }

    /// A bind group with `buffers` at bindings 0, 1, 2, ...
    pub(crate) fn bind(
        &self,
        ctx: &GpuContext,
        k: Kernel,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.name()),
            layout: &self.pipeline(k).get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Records `dispatches` into `pass` for `n` tokens and `m` logit rows.
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        dispatches: &[Dispatch],
        n: u32,
        m: u32,
    ) {
        for d in dispatches {
            let (x, y, z) = d.grid.size(n, m);
            if x == 0 || y == 0 {
                continue;
            }
            pass.set_pipeline(self.pipeline(d.kernel));
            pass.set_bind_group(0, &d.bind, &[]);
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// Columns padded to whole 16-weight words (the kernels' row unit).
pub(crate) fn pad16(cols: usize) -> usize {
    cols.div_ceil(16) * 16
}

/// `norm_quant.wgsl`'s `Params`.
pub(crate) fn norm_quant_params(ctx: &GpuContext, cols: usize, eps: f32) -> wgpu::Buffer {
    let stride = (pad16(cols) / 4) as u32;
    uniform(
        ctx,
        "norm_quant",
        &[Word::U(cols as u32), Word::U(stride), Word::F(eps)],
    )
}

/// `matmul.wgsl`'s `Params` for a `[rows, cols]` layer.
pub(crate) fn matmul_params(
    ctx: &GpuContext,
    rows: usize,
    cols: usize,
    flags: u32,
) -> wgpu::Buffer {
    let p = pad16(cols) as u32;
    uniform(
        ctx,
        "matmul",
        &[
            Word::U(rows as u32),
            Word::U(p / 16),
            Word::U(p / 4),
            Word::U(flags),
        ],
    )
}

/// `rope.wgsl`'s `Params`.
pub(crate) fn rope_params(
    ctx: &GpuContext,
    heads: usize,
    d: usize,
    stride: usize,
    flags: u32,
) -> wgpu::Buffer {
    let w = |v: usize| Word::U(v as u32);
    uniform(ctx, "rope", &[w(heads), w(d), w(stride), Word::U(flags)])
}

/// `attention.wgsl`'s `Params`.
pub(crate) fn attention_params(
    ctx: &GpuContext,
    heads: usize,
    kv_heads: usize,
    d: usize,
    q_stride: usize,
    kv_stride: usize,
) -> wgpu::Buffer {
    let w = |v: usize| Word::U(v as u32);
    let scale = Word::F(1.0 / (d as f32).sqrt());
    uniform(
        ctx,
        "attention",
        &[
            w(heads),
            w(kv_heads),
            w(d),
            w(q_stride),
            w(kv_stride),
            scale,
        ],
    )
}

/// `lm_head.wgsl`'s `Params` for the slice of `rows` vocabulary rows from `first`.
pub(crate) fn lm_head_params(
    ctx: &GpuContext,
    h: usize,
    rows: usize,
    vocab: usize,
    first: usize,
) -> wgpu::Buffer {
    let w = |v: usize| Word::U(v as u32);
    uniform(ctx, "lm_head", &[w(h), w(rows), w(vocab), w(first)])
}

/// A value of a uniform parameter block.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Word {
    U(u32),
    F(f32),
}

/// A uniform buffer holding `words` (padded to 16 bytes).
pub(crate) fn uniform(ctx: &GpuContext, label: &str, words: &[Word]) -> wgpu::Buffer {
    let mut bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| match *w {
            Word::U(u) => u.to_le_bytes(),
            Word::F(f) => f.to_le_bytes(),
        })
        .collect();
    bytes.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(&buf, 0, &bytes);
    buf
}

/// An uninitialised storage buffer of `bytes` (rounded up to 16).
pub(crate) fn storage(ctx: &GpuContext, label: &str, bytes: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.div_ceil(16).max(1) * 16,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// A storage buffer holding `data`.
pub(crate) fn storage_with(ctx: &GpuContext, label: &str, data: &[u8]) -> wgpu::Buffer {
    let buf = storage(ctx, label, data.len() as u64);
    ctx.queue().write_buffer(&buf, 0, data);
    buf
}

/// Little-endian bytes of f32s.
pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of u32s.
pub(crate) fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A `MAP_READ` buffer results are copied into.
pub(crate) fn staging(ctx: &GpuContext, label: &str, bytes: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.div_ceil(16).max(1) * 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Runs one dispatch of `kernel` over `buffers` (bindings 0, 1, ...) and
/// waits for it: the kernel checks' harness.
pub(crate) fn run_once(
    ctx: &GpuContext,
    kernels: &Kernels,
    kernel: Kernel,
    buffers: &[&wgpu::Buffer],
    grid: Grid,
    n: u32,
    m: u32,
) -> Result<()> {
    let bind = ctx.checked("binding a kernel check", || {
        kernels.bind(ctx, kernel, buffers)
    })?;
    let d = [Dispatch { kernel, bind, grid }];
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        kernels.record(&mut pass, &d, n, m);
    }
    ctx.queue().submit([enc.finish()]);
    ctx.wait("running a kernel check")
}

/// The first `words` 32-bit words of `buf`, as f32 (reinterpret as needed).
pub(crate) fn read_back(ctx: &GpuContext, buf: &wgpu::Buffer, words: usize) -> Result<Vec<f32>> {
    let bytes = 4 * words as u64;
    let stage = staging(ctx, "read back", bytes);
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    enc.copy_buffer_to_buffer(buf, 0, &stage, 0, bytes);
    ctx.queue().submit([enc.finish()]);
    let mut out = Vec::new();
    ctx.read_f32(&stage, bytes, &mut out)?;
    Ok(out)
}
