//! Adapters and devices: finding them, opening one, waiting on it.
//!
//! wgpu's API is asynchronous; the engine is not, so [`block_on`] drives
//! its futures on the calling thread (they complete inside `Device::poll`
//! or the driver's own threads; nothing here needs an executor).
//!
//! Errors wgpu would otherwise report to its default handler (which
//! panics) are caught: an uncaptured-error handler stores them, and every
//! step that can fail ([`GpuContext::checked`]) turns them into
//! [`Error::Gpu`].

use crate::error::{Error, Result};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// How long one submission may run before the engine gives up on the
/// device instead of hanging (a whole prefill on a software adapter stays
/// well inside it).
pub const SUBMISSION_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs a future to completion on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(5)),
        }
    }
}

/// What an adapter is, as `bitnet doctor` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Index for `--device wgpu:N`.
    pub index: usize,
    /// The driver's name for it.
    pub name: String,
    /// Vulkan, Metal, Dx12, ...
    pub backend: String,
    /// DiscreteGpu, IntegratedGpu, Cpu (a software rasterizer), ...
    pub kind: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether it is a real GPU (not a CPU-emulated one).
    pub hardware: bool,
    /// Largest storage buffer one binding may see, in bytes.
    pub max_binding_bytes: u64,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

fn is_hardware(info: &wgpu::AdapterInfo) -> bool {
    matches!(
        info.device_type,
        wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
    )
}

fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        kind: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        hardware: is_hardware(&info),
        max_binding_bytes: a.limits().max_storage_buffer_binding_size,
    }
}

/// Every adapter wgpu finds on the primary backends (Vulkan, Metal, DX12),
/// in `wgpu:N` order. Empty, not an error, when there is no driver.
pub fn adapters() -> Vec<AdapterSummary> {
    let adapters = block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY));
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| summary(i, a))
        .collect()
}

/// Which adapter to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterChoice {
    /// `wgpu:N`.
    Index(usize),
    /// The first hardware adapter; a software one only if `allow_software`.
    First {
        /// Whether a CPU-emulated adapter (lavapipe, WARP) may be taken.
        allow_software: bool,
    },
}

/// An open device and its queue. A clone shares them (and the error
/// sink): models built on clones run on the same device.
#[derive(Clone)]
pub struct GpuContext {
    adapter: AdapterSummary,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Opens the adapter `choice` names, with every limit it supports
    /// (storage buffers as large as it allows).
    pub fn open(choice: AdapterChoice) -> Result<Self> {
        let all = block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY));
        let picked = match choice {
            AdapterChoice::Index(i) => all.get(i).map(|a| (i, a)).ok_or(Error::NoSuchAdapter {
                index: i,
                count: all.len(),
            })?,
            AdapterChoice::First { allow_software } => {
                let hw = all
                    .iter()
                    .enumerate()
                    .find(|(_, a)| is_hardware(&a.get_info()));
                let any = all
                    .iter()
                    .enumerate()
                    .find(|(_, a)| a.get_info().device_type != wgpu::DeviceType::Other);
                match (hw, allow_software) {
                    (Some(p), _) => p,
                    (None, true) => any.ok_or_else(|| Error::NoAdapter("none listed".into()))?,
                    (None, false) => {
                        return Err(Error::NoAdapter(if all.is_empty() {
                            "none listed".into()
                        } else {
                            format!(
                                "only software adapters ({}), slower than the CPU path",
                                all.iter()
                                    .map(|a| a.get_info().name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }));
                    }
                }
            }
        };
        let (index, adapter) = picked;
        let summary = summary(index, adapter);
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("bitnet"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) =
            block_on(adapter.request_device(&desc)).map_err(|e| Error::Device {
                adapter: summary.name.clone(),
                reason: e.to_string(),
            })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut v) = lost.lock() {
                v.push(format!("device lost ({reason:?}): {message}"));
            }
        });
        Ok(GpuContext {
            adapter: summary,
            device,
            queue,
            limits,
            errors,
        })
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Largest buffer one storage binding may see, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Runs `f` (resource creation, shader compilation) and returns its
    /// value, or the first validation or out-of-memory error it raised.
    pub fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let v = block_on(validation.pop());
        let o = block_on(oom.pop());
        if let Some(e) = v.or(o) {
            return Err(Error::Gpu {
                what: what.to_string(),
                message: e.to_string(),
            });
        }
        self.take_errors(what)?;
        Ok(value)
    }

    /// Errors raised outside any scope since the last call.
    pub fn take_errors(&self, what: &str) -> Result<()> {
        let mut errors = self.errors.lock().map_err(|_| Error::Gpu {
            what: what.to_string(),
            message: "error sink poisoned".into(),
        })?;
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(Error::Gpu {
            what: what.to_string(),
            message,
        })
    }

    /// Waits until the queue is idle (or [`SUBMISSION_TIMEOUT`] passes).
    pub fn wait(&self, what: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(SUBMISSION_TIMEOUT),
            })
            .map_err(|e| Error::Gpu {
                what: what.to_string(),
                message: e.to_string(),
            })?;
        self.take_errors(what)
    }

    /// Copies the first `bytes` of `staging` (a `MAP_READ` buffer whose
    /// copy has been submitted) into `out` as f32s.
    pub fn read_f32(&self, staging: &wgpu::Buffer, bytes: u64, out: &mut Vec<f32>) -> Result<()> {
        let slice = staging.slice(..bytes);
        let result = Arc::new(Mutex::new(None));
        let r = result.clone();
        slice.map_async(wgpu::MapMode::Read, move |res| {
            if let Ok(mut g) = r.lock() {
                *g = Some(res);
            }
        });
        self.wait("reading results back")?;
        let mapped = result.lock().ok().and_then(|mut g| g.take());
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(Error::Gpu {
                    what: "mapping the result buffer".into(),
                    message: e.to_string(),
                });
            }
            None => {
                return Err(Error::Gpu {
                    what: "mapping the result buffer".into(),
                    message: "the map did not complete".into(),
                });
            }
        }
        {
            let view = slice.get_mapped_range().map_err(|e| Error::Gpu {
                what: "reading the result buffer".into(),
                message: e.to_string(),
            })?;
            out.clear();
            out.extend(
                view.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        staging.unmap();
        Ok(())
    }
}
