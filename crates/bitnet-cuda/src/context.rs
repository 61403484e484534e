//! Finding NVIDIA devices and opening one.
//!
//! The driver (`libcuda`) and the run-time compiler (`libnvrtc`) are
//! loaded with `dlopen` on first use. cudarc panics when a library it needs
//! is missing, so every entry point here checks that the library loads
//! first and reports [`Error::NoDriver`] / [`Error::NoNvrtc`] instead; the
//! few driver calls that could still panic (a symbol missing from an old
//! driver) run under [`guard`], which turns a panic into an error.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaStream, sys};
use std::sync::Arc;

/// The CUDA version this build's driver bindings are for (cudarc's
/// `cuda-13000`): the driver must implement at least this.
pub const NEEDED_CUDA: (i32, i32) = (13, 0);

/// Whether the driver library loads.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// Whether the NVRTC library loads.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Runs `f`, turning a panic inside cudarc (a missing library symbol)
/// into an error about `what`.
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let message = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA bindings panicked".into());
            Err(Error::Driver {
                what: what.into(),
                message,
            })
        }
    }
}

/// The CUDA version the installed driver implements, as (major, minor).
pub fn driver_cuda_version() -> Result<(i32, i32)> {
    if !driver_present() {
        return Err(Error::NoDriver);
    }
    guard("asking the driver its version", || {
        let mut v = 0i32;
        // SAFETY: writes one int; needs no cuInit.
        let r = unsafe { sys::cuDriverGetVersion(&mut v) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::driver("asking the driver its version", r));
        }
        Ok((v / 1000, (v % 1000) / 10))
    })
}

/// One CUDA device, as `bitnet doctor` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its CUDA ordinal (`--device cuda:N`).
    pub ordinal: usize,
    /// The device's name.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Device memory in bytes.
    pub total_memory: usize,
    /// Free device memory in bytes when it was opened.
    pub free_memory: usize,
    /// The CUDA version the driver implements.
    pub driver_cuda: (i32, i32),
}

impl DeviceInfo {
    /// The `sm_XY` architecture NVRTC compiles for.
    pub fn arch(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!("sm_{major}{minor}")
    }
}

fn check_driver() -> Result<(i32, i32)> {
    let version = driver_cuda_version()?;
    if version < NEEDED_CUDA {
        return Err(Error::DriverTooOld {
            found_major: version.0,
            found_minor: version.1,
            need_major: NEEDED_CUDA.0,
            need_minor: NEEDED_CUDA.1,
        });
    }
    Ok(version)
}

/// Every CUDA device the driver reports (empty when there is none).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    check_driver()?;
    let count = guard("counting CUDA devices", || {
        if let Err(e) = cudarc::driver::result::init() {
            // No device at all is reported by cuInit itself.
            if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
                return Ok(0);
            }
            return Err(Error::driver("initializing the CUDA driver", e));
        }
        CudaContext::device_count().map_err(|e| Error::driver("counting CUDA devices", e))
    })?;
    (0..count.max(0) as usize)
        .map(|i| CudaDevice::open(i).map(|d| d.info))
        .collect()
}

/// An open CUDA device: its context and the stream every kernel of this
/// crate runs on.
#[derive(Debug, Clone)]
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
}

impl CudaDevice {
    /// Opens device `ordinal`, after checking that the driver loads and is
    /// new enough.
    pub fn open(ordinal: usize) -> Result<Self> {
        let driver_cuda = check_driver()?;
        guard("opening the CUDA device", || {
            if let Err(e) = cudarc::driver::result::init() {
                if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
                    return Err(Error::NoSuchDevice {
                        index: ordinal,
                        count: 0,
                    });
                }
                return Err(Error::driver("initializing the CUDA driver", e));
            }
            let count = CudaContext::device_count()
                .map_err(|e| Error::driver("counting CUDA devices", e))?
                .max(0) as usize;
            if ordinal >= count {
                return Err(Error::NoSuchDevice {
                    index: ordinal,
                    count,
                });
            }
            let what = "opening the CUDA device";
            let ctx = CudaContext::new(ordinal).map_err(|e| Error::driver(what, e))?;
            // One stream, used in order: cudarc's per-buffer event tracking
            // would only add two driver calls per launch.
            // SAFETY: every buffer of this crate is used on `stream` alone.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.new_stream().map_err(|e| Error::driver(what, e))?;
            let (free_memory, total_memory) =
                ctx.mem_get_info().map_err(|e| Error::driver(what, e))?;
            let info = DeviceInfo {
                ordinal,
                name: ctx.name().map_err(|e| Error::driver(what, e))?,
                compute_capability: ctx
                    .compute_capability()
                    .map_err(|e| Error::driver(what, e))?,
                total_memory,
                free_memory,
                driver_cuda,
            };
            Ok(CudaDevice { ctx, stream, info })
        })
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream this crate's work runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for the stream's work, turning a failure into an error about
    /// `what`.
    pub fn synchronize(&self, what: &str) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| Error::driver(what, e))
    }
}
