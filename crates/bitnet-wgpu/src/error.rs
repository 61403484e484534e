//! Errors of the GPU backend: each says what failed and what to do about
//! it; none of them is a panic.

/// A GPU backend error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter (GPU driver) was found.
    #[error(
        "no GPU adapter found ({0}); on Linux install a Vulkan driver (Debian: mesa-vulkan-drivers \
         libvulkan1), or run on the CPU with --device cpu"
    )]
    NoAdapter(String),
    /// `wgpu:N` named an adapter that does not exist.
    #[error("there is no GPU adapter {index}: {count} found (`bitnet doctor` lists them)")]
    NoSuchAdapter {
        /// The index asked for.
        index: usize,
        /// Adapters found.
        count: usize,
    },
    /// The adapter refused to open a device.
    #[error("opening a device on {adapter} failed: {reason}")]
    Device {
        /// The adapter's name.
        adapter: String,
        /// The driver's message.
        reason: String,
    },
    /// The device reported an error (shader compilation, validation, out of
    /// memory, device lost) while doing `what`.
    #[error("GPU error while {what}: {message}")]
    Gpu {
        /// The step that failed.
        what: String,
        /// The driver's or wgpu's message.
        message: String,
    },
    /// The model does not fit the memory budget or a device limit.
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
    /// Something in the model the GPU path does not run.
    #[error("not supported on the GPU: {0}")]
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
