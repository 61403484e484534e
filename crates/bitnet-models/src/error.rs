//! The error type of `bitnet-models`: every variant names the file and, where
//! there is one, the tensor, so a person can tell which input is wrong.

use std::path::{Path, PathBuf};

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong reading or writing model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The OS refused a file operation.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `config.json` that is not a usable BitNet configuration.
    #[error("config: {0}")]
    Config(String),
    /// The same, with the file it came from.
    #[error("{path}: {message}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A safetensors file that does not parse.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error("tensor `{name}` is missing from {location}")]
    MissingTensor {
        /// Tensor name.
        name: String,
        /// Where it was looked for.
        location: String,
    },
    /// A tensor with the wrong shape.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Required shape.
        expected: Vec<usize>,
        /// Shape found.
        actual: Vec<usize>,
    },
    /// A tensor stored in a dtype this reader cannot use there.
    #[error("tensor `{name}` is {dtype}, expected {expected}")]
    TensorDtype {
        /// Tensor name.
        name: String,
        /// Dtype found.
        dtype: String,
        /// Acceptable dtypes.
        expected: &'static str,
    },
    /// Packed weights or quantization that failed.
    #[error("tensor `{name}`: {source}")]
    Quant {
        /// Tensor name.
        name: String,
        /// The quantization error.
        source: bitnet_quant::Error,
    },
}

impl Error {
    /// Attaches the file a configuration error came from.
    pub(crate) fn in_file(self, path: &Path) -> Error {
        match self {
            Error::Config(message) => Error::InFile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }
    }

    /// Wraps a quantization error with the tensor it concerns.
    pub(crate) fn quant(name: &str) -> impl FnOnce(bitnet_quant::Error) -> Error + '_ {
        move |source| Error::Quant {
            name: name.to_string(),
            source,
        }
    }
}
