//! The kernels of `kernels.cu`: compiled once per device by NVRTC, launched
//! from prebuilt argument lists.
//!
//! A model records each launch of its forward pass at load ([`Launch`]:
//! the kernel, a rule for its grid, and its arguments as raw device
//! pointers and scalars), so a pass is a loop of launches with no
//! allocation, and a CUDA graph can capture the same loop.

use crate::context::{CudaDevice, guard, nvrtc_present};
use crate::error::{Error, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// The kernels, in the order of [`Kernel`].
pub const KERNEL_NAMES: [&str; 11] = [
    "norm_quant",
    "matmul_1",
    "matmul_8",
    "attention",
    "rms_norm",
    "lm_head_f32_1",
    "lm_head_f32_8",
    "lm_head_f16_1",
    "lm_head_f16_8",
    "lm_head_bf16_1",
    "lm_head_bf16_8",
];

/// A kernel, by what it does; the token-count variants (`matmul_1` for
/// one token, `matmul_8` for more) are picked at launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    NormQuant,
    Matmul,
    Attention,
    RmsNorm,
    LmHeadF32,
    LmHeadF16,
    LmHeadBf16,
}

/// Threads per block of the matmul (a pair of rows per warp).
pub(crate) const MATMUL_BLOCK: u32 = 256;
/// Rows of the output matrix per lm_head block (a warp per row).
pub(crate) const HEAD_BLOCK: u32 = 256;

/// How a launch's grid follows the pass's token count `n` and logit rows `m`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grid {
    /// One block per token.
    Tokens,
    /// `x` blocks per group of 1 or 8 tokens (the matmul).
    Matmul { x: u32 },
    /// A block per (token, head).
    Attention { heads: u32 },
    /// A block per logit row.
    LogitRows,
    /// `x` blocks per group of 1 or 8 logit rows (the output layer).
    Head { x: u32 },
}

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

/// One recorded launch.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    pub(crate) kernel: Kernel,
    pub(crate) grid: Grid,
    pub(crate) block: u32,
    pub(crate) args: Vec<Arg>,
}

/// Kernels compiled for one architecture.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The architecture (`sm_90`, ...).
    pub arch: String,
    /// NVRTC's version.
    pub nvrtc_version: (i32, i32),
    /// The machine code (an ELF cubin).
    pub cubin: Vec<u8>,
}

fn nvrtc_log(prog: cudarc::nvrtc::sys::nvrtcProgram) -> String {
    // SAFETY: `prog` is a live program.
    match unsafe { cudarc::nvrtc::result::get_program_log(prog) } {
        Ok(log) => {
            let bytes: Vec<u8> = log
                .iter()
                .map(|&c| c as u8)
                .take_while(|&c| c != 0)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => format!("(no log: {e:?})"),
    }
}

/// Compiles the kernels to machine code for `arch` (`sm_90`, ...) and
/// checks that every kernel of [`KERNEL_NAMES`] is in it. Needs only
/// NVRTC, no device: CI runs this for Hopper.
///
/// Machine code, not PTX: a driver runs cubins from a newer compiler of
/// the same CUDA major version, but refuses PTX newer than itself, so
/// NVRTC 13.5 output runs on a 13.0 driver only as a cubin.
pub fn compile(arch: &str) -> Result<Compiled> {
    compile_with(arch, &[])
}

/// [`compile`] with extra NVRTC options (`-DNAME=VALUE` tuning knobs of
/// kernels.cu).
pub fn compile_with(arch: &str, extra: &[String]) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    if !nvrtc_present() {
        return Err(Error::NoNvrtc);
    }
    let fail = |log: String| Error::Compile {
        arch: arch.into(),
        log,
    };
    guard("compiling the CUDA kernels", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes two ints.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| fail(format!("{e:?}")))?;
        let src = std::ffi::CString::new(SOURCE).map_err(|e| fail(e.to_string()))?;
        let name = c"bitnet_kernels.cu";
        let prog = result::create_program(&src, Some(name)).map_err(|e| fail(format!("{e:?}")))?;
        let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
        options.extend(extra.iter().cloned());
        // SAFETY: `prog` lives until destroyed below; the sizes come from NVRTC.
        let compiled = unsafe {
            match result::compile_program(prog, &options) {
                Err(e) => Err(fail(format!("{e:?}: {}", nvrtc_log(prog)))),
                Ok(()) => {
                    let mut size = 0usize;
                    match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                        Err(e) => Err(fail(format!("no machine code ({e:?})"))),
                        Ok(()) => {
                            let mut cubin = vec![0u8; size];
                            sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                                .result()
                                .map(|_| cubin)
                                .map_err(|e| fail(format!("{e:?}")))
                        }
                    }
                }
            }
        };
        // SAFETY: destroyed once.
        let _ = unsafe { result::destroy_program(prog) };
        let cubin = compiled?;
        if cubin.is_empty() {
            return Err(fail("NVRTC returned no machine code".into()));
        }
        if let Some(missing) = KERNEL_NAMES.iter().find(|name| {
            let sym = format!("{name}\0");
            !cubin.windows(sym.len()).any(|w| w == sym.as_bytes())
        }) {
            return Err(fail(format!(
                "kernel `{missing}` is not in the machine code"
            )));
        }
        Ok(Compiled {
            arch: arch.into(),
            nvrtc_version: (major, minor),
            cubin,
        })
    })
}

/// The loaded kernels of one device.
#[derive(Debug)]
pub(crate) struct Kernels {
    functions: Vec<CudaFunction>,
    stream: Arc<CudaStream>,
}

impl Kernels {
    /// Compiles the kernels for `dev`'s architecture and loads them.
    pub(crate) fn load(dev: &CudaDevice) -> Result<Self> {
        Self::load_with(dev, &[])
    }

    /// [`Kernels::load`] with extra NVRTC options.
    pub(crate) fn load_with(dev: &CudaDevice, extra: &[String]) -> Result<Self> {
        let (major, minor) = dev.info().compute_capability;
        if (major, minor) < (6, 1) {
            return Err(Error::Unsupported(format!(
                "compute capability {major}.{minor}: the kernels need 6.1 or newer (dp4a)"
            )));
        }
        let compiled = compile_with(&dev.info().arch(), extra)?;
        let what = "loading the compiled kernels";
        let module = dev
            .context()
            .load_module(Ptx::from_binary(compiled.cubin))
            .map_err(|e| Error::driver(what, e))?;
        let functions = KERNEL_NAMES
            .iter()
            .map(|name| {
                module
                    .load_function(name)
                    .map_err(|e| Error::driver(&format!("loading kernel {name}"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Kernels {
            functions,
            stream: dev.stream().clone(),
        })
    }

    /// Launches `l` for a pass of `n` tokens with `m` logit rows.
    pub(crate) fn launch(&self, l: &Launch, n: u32, m: u32) -> Result<()> {
        let groups = |count: u32| {
            if count == 1 {
                (0, 1)
            } else {
                (1, count.div_ceil(8))
            }
        };
        let (index, grid) = match (l.kernel, l.grid) {
            (Kernel::NormQuant, Grid::Tokens) => (0, (n, 1)),
            (Kernel::Matmul, Grid::Matmul { x }) => {
                let (v, y) = groups(n);
                (1 + v, (x, y))
            }
            (Kernel::Attention, Grid::Attention { heads }) => (3, (n, heads)),
            (Kernel::RmsNorm, Grid::LogitRows) => (4, (m, 1)),
            (
                k @ (Kernel::LmHeadF32 | Kernel::LmHeadF16 | Kernel::LmHeadBf16),
                Grid::Head { x },
            ) => {
                let base = match k {
                    Kernel::LmHeadF32 => 5,
                    Kernel::LmHeadF16 => 7,
                    _ => 9,
                };
                let (v, y) = groups(m);
                (base + v, (x, y))
            }
            (k, g) => unreachable!("kernel {k:?} has no grid rule {g:?}"),
        };
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        let f = &self.functions[index];
        let mut b = self.stream.launch_builder(f);
        for a in &l.args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments were recorded for this kernel's signature
        // (kernels.cu) from buffers the model keeps alive.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| Error::driver(&format!("launching {}", KERNEL_NAMES[index]), e))
    }
}

/// The raw device address of `s`.
pub(crate) fn ptr<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

/// Pads a column count to the matmul's 64-column chunks.
pub(crate) fn pad64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

/// Threads per attention block for head dim `d` (each thread owns up to
/// two dims of the output).
pub(crate) fn attention_block(d: usize) -> u32 {
    (d.div_ceil(32) * 32).clamp(64, 256) as u32
}

/// Words of a step block (`Step` in `kernels.cu`) for up to `tokens`
/// tokens and `rows` logit rows.
pub(crate) fn step_words(tokens: usize, rows: usize) -> usize {
    4 + 2 * tokens + rows
}

/// The step block `kernels.cu` reads: the header, each token's (position,
/// cache row) pair from `pairs` (flattened), then the residual rows that
/// get logits.
pub(crate) fn step_block(pairs: &[u32], rows: &[u32]) -> Vec<u32> {
    debug_assert!(pairs.len().is_multiple_of(2));
    let mut b = Vec::with_capacity(4 + pairs.len() + rows.len());
    b.extend([(pairs.len() / 2) as u32, 0, rows.len() as u32, 0]);
    b.extend_from_slice(pairs);
    b.extend_from_slice(rows);
    b
}

/// A step block for `n` tokens of one sequence from position `start`, in
/// the cache slot whose position 0 is row `base`, with logits for `rows`.
pub(crate) fn step_for(n: usize, start: usize, base: usize, rows: &[u32]) -> Vec<u32> {
    let pairs: Vec<u32> = (start..start + n)
        .flat_map(|p| [p as u32, (base + p) as u32])
        .collect();
    step_block(&pairs, rows)
}
