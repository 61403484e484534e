//! The crate's error type ([`Error`]) and [`Result`] alias. Every variant
//! says what to fix: the file, the tensor, the step.

use std::path::{Path, PathBuf};

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while training, checkpointing or exporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor op failed (shapes, ids).
    #[error(transparent)]
    Core(#[from] bitnet_core::Error),
    /// Reading a config, tokenizer or weights, or writing an export, failed.
    #[error(transparent)]
    Models(#[from] bitnet_models::Error),
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`read`, `write`, `rename`, ...).
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The training configuration is invalid.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The corpus cannot produce training sequences.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint is unreadable, truncated, corrupt or from another config.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The loss became NaN or infinite; training stopped.
    #[error(
        "loss is {loss} at step {step}; training stopped (the last good checkpoint is kept{})",
        last_checkpoint.as_ref().map(|p| format!(": {}", p.display())).unwrap_or_default()
    )]
    NonFiniteLoss {
        /// The optimizer step at which it happened.
        step: u64,
        /// The offending value.
        loss: f32,
        /// The newest checkpoint on disk, if any.
        last_checkpoint: Option<PathBuf>,
    },
}

impl Error {
    /// A closure for `map_err` on an I/O result.
    pub(crate) fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path,
            action,
            source,
        }
    }

    pub(crate) fn ckpt(path: &Path, msg: impl Into<String>) -> Error {
        Error::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
