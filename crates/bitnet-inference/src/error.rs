//! The error type of `bitnet-inference`.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading the model failed.
    #[error(transparent)]
    Model(#[from] bitnet_models::Error),
    /// A quantization or kernel call failed.
    #[error(transparent)]
    Quant(#[from] bitnet_quant::Error),
    /// A token id outside the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Its index in the input.
        position: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The sequence would exceed the KV cache or the model's context.
    #[error("sequence of {needed} tokens exceeds the context of {capacity}")]
    ContextFull {
        /// Tokens the sequence would hold.
        needed: usize,
        /// What fits.
        capacity: usize,
    },
    /// The KV memory budget has no room for the blocks a sequence needs.
    #[error("the KV cache budget is spent: {needed} blocks needed, {available} of {total} free")]
    KvBudgetExhausted {
        /// Blocks asked for.
        needed: usize,
        /// Blocks neither in use nor reserved.
        available: usize,
        /// Blocks the budget allows.
        total: usize,
    },
    /// A forward call with no tokens.
    #[error("forward needs at least one token")]
    EmptyInput,
    /// A cache built for another model shape.
    #[error("KV cache does not match the model: {0}")]
    CacheMismatch(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file this crate reads that is not in its format or does not fit.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Settings that cannot work (e.g. a context too short to score).
    #[error("{0}")]
    InvalidArgument(String),
    /// A model whose shapes this engine cannot run.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A GPU backend failed (its own message says what and why).
    #[error("{0}")]
    Device(String),
}
