//! Errors of the CUDA backend: each says what failed and what to do about
//! it; none of them is a panic.

/// A CUDA backend error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver library (`libcuda.so`) could not be loaded.
    #[error(
        "no NVIDIA driver found (libcuda.so.1 is not on the library path); install the NVIDIA \
         driver, or run on the CPU with --device cpu"
    )]
    NoDriver,
    /// The run-time compiler (`libnvrtc.so`) could not be loaded.
    #[error(
        "the CUDA run-time compiler was not found (libnvrtc.so.13 or .12 is not on the library \
         path); install the CUDA toolkit or `pip install nvidia-cuda-nvrtc` and add its lib \
         folder to LD_LIBRARY_PATH, or run with --device cpu"
    )]
    NoNvrtc,
    /// The driver is older than the CUDA version the kernels are built for.
    #[error(
        "the NVIDIA driver supports CUDA {found_major}.{found_minor}, and this build needs CUDA \
         {need_major}.{need_minor} or newer (driver 580+); update the driver or run with \
         --device cpu"
    )]
    DriverTooOld {
        /// The driver's CUDA version.
        found_major: i32,
        /// The driver's CUDA minor version.
        found_minor: i32,
        /// The version the build needs.
        need_major: i32,
        /// The version the build needs (minor).
        need_minor: i32,
    },
    /// `cuda:N` named a device that does not exist.
    #[error("there is no CUDA device {index}: {count} found (`bitnet doctor` lists them)")]
    NoSuchDevice {
        /// The ordinal asked for.
        index: usize,
        /// Devices found.
        count: usize,
    },
    /// A driver call failed while doing `what`.
    #[error("CUDA error while {what}: {message}")]
    Driver {
        /// The step that failed.
        what: String,
        /// The driver's message.
        message: String,
    },
    /// NVRTC refused the kernels.
    #[error("the CUDA kernels did not compile for {arch}: {log}")]
    Compile {
        /// The target architecture.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// The model does not fit the memory budget or the device.
    #[error(
        "the model needs {needed_mib:.1} MiB of GPU memory for a context of {context} tokens; \
         {limit}. Use a shorter context, a larger --gpu-memory-mib, or --device cpu"
    )]
    OutOfMemory {
        /// Bytes the model's buffers need, in MiB.
        needed_mib: f64,
        /// The context the KV cache was sized for.
        context: usize,
        /// Which limit it exceeds.
        limit: String,
    },
    /// Something in the model or device the CUDA path does not run.
    #[error("not supported on the CUDA device: {0}")]
    Unsupported(String),
    /// The forward pass produced NaN or infinity.
    #[error("the forward pass produced non-finite values ({0})")]
    NonFinite(String),
    /// Bad input or state, as the CPU engine reports it.
    #[error(transparent)]
    Inference(#[from] bitnet_inference::Error),
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A driver error while doing `what`.
    pub(crate) fn driver(what: &str, e: impl std::fmt::Debug) -> Self {
        Error::Driver {
            what: what.to_string(),
            message: format!("{e:?}"),
        }
    }
}

impl From<Error> for bitnet_inference::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Inference(e) => e,
            other => bitnet_inference::Error::Device(other.to_string()),
        }
    }
}

impl From<bitnet_quant::Error> for Error {
    fn from(e: bitnet_quant::Error) -> Self {
        Error::Inference(e.into())
    }
}

impl From<bitnet_models::Error> for Error {
    fn from(e: bitnet_models::Error) -> Self {
        Error::Inference(e.into())
    }
}
