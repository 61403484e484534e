//! `--device` for the commands that run a model (`run`, `bench`, `serve`):
//! which device, and the GPU model when one opens. Every failure to use a GPU
//! (none built in, no driver, no adapter, a kernel that does not compile,
//! a model that does not fit) prints one line saying why and leaves the
//! CPU path, which always works.

use bitnet_inference::device::BatchForward;
use bitnet_inference::{DeviceSpec, SequenceForward};
use bitnet_models::weights::BitNetWeights;

/// Device arguments.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DeviceArgs {
    /// Where to run: `cpu`, `cuda[:N]` (an NVIDIA GPU), `wgpu` (first GPU
    /// adapter through Vulkan/Metal/DX12; `wgpu:N` picks one), or `auto`
    /// (CUDA, else a hardware wgpu adapter, else the CPU). `bitnet doctor`
    /// lists the devices.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: DeviceSpec,
    /// Refuse to load a model whose GPU buffers exceed this many MiB.
    #[arg(long, value_name = "MIB")]
    pub(crate) gpu_memory_mib: Option<u64>,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}

/// A model on a GPU, behind the same interface as the CPU's.
pub(crate) type GpuSequence = Box<dyn SequenceForward>;

impl DeviceArgs {
    /// Opens the GPU the arguments ask for, with a KV cache of `context`
    /// positions; `None` (after a one-line notice on stderr when a GPU was
    /// asked for) means: run on the CPU.
    pub(crate) fn open(&self, weights: &BitNetWeights, context: usize) -> Option<GpuSequence> {
        let fallback = |why: String| {
            eprintln!("notice: {why}; running on the CPU");
            None
        };
        match self.device {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(i) => self
                .open_cuda(i, weights, context)
                .unwrap_or_else(|e| fallback(format!("--device cuda:{i}: {e}"))),
            DeviceSpec::Auto => {
                // CUDA first where a driver is installed, then any hardware
                // adapter through wgpu; the notice names both reasons.
                let cuda = match self.open_cuda(0, weights, context) {
                    Ok(seq) => return seq,
                    Err(e) => e,
                };
                match self.open_wgpu(DeviceSpec::Auto, weights, context) {
                    Ok(seq) => seq,
                    Err(wgpu) => fallback(format!("--device auto: CUDA: {cuda}; wgpu: {wgpu}")),
                }
            }
            spec => self
                .open_wgpu(spec, weights, context)
                .unwrap_or_else(fallback),
        }
    }

    #[cfg(feature = "cuda")]
    fn open_cuda(
        &self,
        ordinal: usize,
        weights: &BitNetWeights,
        context: usize,
    ) -> Result<Option<GpuSequence>, String> {
        use bitnet_cuda::{CudaDevice, CudaModel, CudaOptions};
        let dev = CudaDevice::open(ordinal).map_err(|e| e.to_string())?;
        let options = CudaOptions {
            context,
            memory_budget: self.gpu_memory_mib.map(|m| m << 20),
            ..CudaOptions::default()
        };
        let model = CudaModel::new(dev, weights, options).map_err(|e| e.to_string())?;
        let mem = model.memory();
        announce(&model, mem.weights, mem.kv_cache, mem.scratch);
        Ok(Some(Box::new(model)))
    }

    #[cfg(not(feature = "cuda"))]
    fn open_cuda(
        &self,
        _ordinal: usize,
        _weights: &BitNetWeights,
        _context: usize,
    ) -> Result<Option<GpuSequence>, String> {
        // `open` names the device in front of this.
        Err("this build has no CUDA backend (rebuild with the `cuda` feature)".into())
    }

    /// Opens the GPU the arguments ask for holding up to `sequences`
    /// sequences of `context` positions at once, for batches of sequences
    /// (the server, `bench --parallel`); fewer (down to one, with a notice)
    /// when that many do not fit. `None` (after a notice when a GPU was
    /// asked for) means: run on the CPU.
    pub(crate) fn open_slots(
        &self,
        weights: &BitNetWeights,
        context: usize,
        sequences: usize,
    ) -> Option<Box<dyn BatchForward>> {
        let fallback = |why: String| {
            eprintln!("notice: {why}; running on the CPU");
            None
        };
        match self.device {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(i) => match self.cuda_slots(i, weights, context, sequences) {
                Ok(model) => Some(model),
                Err(e) => fallback(format!("--device cuda:{i}: {e}")),
            },
            DeviceSpec::Auto => {
                let cuda = match self.cuda_slots(0, weights, context, sequences) {
                    Ok(model) => return Some(model),
                    Err(e) => e,
                };
                match self.wgpu_slots(DeviceSpec::Auto, weights, context, sequences) {
                    Ok(model) => Some(model),
                    Err(wgpu) => fallback(format!("--device auto: CUDA: {cuda}; wgpu: {wgpu}")),
                }
            }
            spec => match self.wgpu_slots(spec, weights, context, sequences) {
                Ok(model) => Some(model),
                Err(e) => fallback(format!("--device {spec}: {e}")),
            },
        }
    }

    /// `sequences` slots on CUDA device `ordinal` (halved until they fit),
    /// after the backend's self-test passed on it: many clients' tokens
    /// come from this model, so its kernels and its batched passes are
    /// checked against the CPU before it serves any.
    #[cfg(feature = "cuda")]
    fn cuda_slots(
        &self,
        ordinal: usize,
        weights: &BitNetWeights,
        context: usize,
        sequences: usize,
    ) -> Result<Box<dyn BatchForward>, String> {
        use bitnet_cuda::{CudaDevice, CudaModel, CudaOptions, Error, selftest};
        let dev = CudaDevice::open(ordinal).map_err(|e| e.to_string())?;
        let report =
            selftest::run(&dev).map_err(|e| format!("the self-test could not run: {e}"))?;
        if !report.passed() {
            return Err(format!(
                "the self-test failed on this device (`bitnet doctor` shows where): {report:?}"
            ));
        }
        let mut n = sequences.max(1);
        loop {
            let options = CudaOptions {
                context,
                sequences: n,
                memory_budget: self.gpu_memory_mib.map(|m| m << 20),
                ..CudaOptions::default()
            };
            match CudaModel::new(dev.clone(), weights, options) {
                Ok(model) => {
                    fewer_notice(n, sequences, context);
                    let mem = model.memory();
                    announce(&model, mem.weights, mem.kv_cache, mem.scratch);
                    return Ok(Box::new(model));
                }
                Err(Error::OutOfMemory { .. }) if n > 1 => n /= 2,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda_slots(
        &self,
        _ordinal: usize,
        _weights: &BitNetWeights,
        _context: usize,
        _sequences: usize,
    ) -> Result<Box<dyn BatchForward>, String> {
        Err("this build has no CUDA backend (rebuild with the `cuda` feature)".into())
    }

    /// `sequences` slots on the wgpu adapter `spec` names (halved until
    /// they fit), after the backend's self-test passed on it (see
    /// [`Self::cuda_slots`]).
    #[cfg(feature = "wgpu")]
    fn wgpu_slots(
        &self,
        spec: DeviceSpec,
        weights: &BitNetWeights,
        context: usize,
        sequences: usize,
    ) -> Result<Box<dyn BatchForward>, String> {
        let report =
            bitnet_wgpu::selftest::run(self.wgpu_context(spec).map_err(|e| e.to_string())?)
                .map_err(|e| format!("the self-test could not run: {e}"))?;
        if !report.passed() {
            return Err(format!(
                "the self-test failed on this adapter (`bitnet doctor` shows where): {report:?}"
            ));
        }
        let mut n = sequences.max(1);
        loop {
            match self.wgpu_model(spec, weights, context, n) {
                Ok(model) => {
                    fewer_notice(n, sequences, context);
                    let mem = model.memory();
                    announce(&model, mem.weights, mem.kv_cache, mem.scratch);
                    return Ok(Box::new(model));
                }
                Err(bitnet_wgpu::Error::OutOfMemory { .. }) if n > 1 => n /= 2,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    #[cfg(not(feature = "wgpu"))]
    fn wgpu_slots(
        &self,
        spec: DeviceSpec,
        _weights: &BitNetWeights,
        _context: usize,
        _sequences: usize,
    ) -> Result<Box<dyn BatchForward>, String> {
        Err(format!(
            "--device {spec}: this build has no wgpu backend (rebuild with the `wgpu` feature)"
        ))
    }

    #[cfg(feature = "wgpu")]
    fn open_wgpu(
        &self,
        spec: DeviceSpec,
        weights: &BitNetWeights,
        context: usize,
    ) -> Result<Option<GpuSequence>, String> {
        let model = self
            .wgpu_model(spec, weights, context, 1)
            .map_err(|e| e.to_string())?;
        let mem = model.memory();
        announce(&model, mem.weights, mem.kv_cache, mem.scratch);
        Ok(Some(Box::new(model)))
    }

    /// The adapter `spec` names, opened.
    #[cfg(feature = "wgpu")]
    fn wgpu_context(&self, spec: DeviceSpec) -> bitnet_wgpu::Result<bitnet_wgpu::GpuContext> {
        use bitnet_wgpu::{AdapterChoice, GpuContext};
        let choice = match spec {
            DeviceSpec::Wgpu(Some(i)) => AdapterChoice::Index(i),
            // An explicit `wgpu` may take a software adapter; `auto` only
            // takes hardware (software Vulkan is slower than our CPU path).
            DeviceSpec::Wgpu(None) => AdapterChoice::First {
                allow_software: true,
            },
            _ => AdapterChoice::First {
                allow_software: false,
            },
        };
        GpuContext::open(choice)
    }

    /// The wgpu model on the adapter `spec` names, with `sequences` slots.
    #[cfg(feature = "wgpu")]
    fn wgpu_model(
        &self,
        spec: DeviceSpec,
        weights: &BitNetWeights,
        context: usize,
        sequences: usize,
    ) -> bitnet_wgpu::Result<bitnet_wgpu::WgpuModel> {
        use bitnet_wgpu::{GpuOptions, WgpuModel};
        let ctx = self.wgpu_context(spec)?;
        let options = GpuOptions {
            context,
            sequences,
            memory_budget: self.gpu_memory_mib.map(|m| m << 20),
            ..GpuOptions::default()
        };
        WgpuModel::new(ctx, weights, options)
    }

    #[cfg(not(feature = "wgpu"))]
    fn open_wgpu(
        &self,
        spec: DeviceSpec,
        _weights: &BitNetWeights,
        _context: usize,
    ) -> Result<Option<GpuSequence>, String> {
        Err(format!(
            "--device {spec}: this build has no wgpu backend (rebuild with the `wgpu` feature)"
        ))
    }
}

/// Says so when fewer than the `asked` sequences fit on the GPU.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn fewer_notice(held: usize, asked: usize, context: usize) {
    if held < asked {
        eprintln!(
            "notice: the GPU holds {held} sequences of {context} positions, not {asked}: that \
             many do not fit"
        );
    }
}

/// The one line that says which GPU a model landed on and what it takes.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn announce(model: &dyn SequenceForward, weights: u64, kv_cache: u64, scratch: u64) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!(
        "device: {} - {:.1} MiB of GPU memory (weights {:.1}, KV cache {:.1}, scratch {:.1})",
        model.device_name(),
        mib(weights + kv_cache + scratch),
        mib(weights),
        mib(kv_cache),
        mib(scratch)
    );
}
