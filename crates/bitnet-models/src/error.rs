//! The crate's error type: every variant names the file (or `<memory>` for
//! parsed buffers), and where it applies the byte offset, metadata key or
//! tensor, so a person can find the problem. GGUF parsing and HF
//! safetensors/config loading share it.

use std::path::{Path, PathBuf};

/// Errors from reading or writing model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused a file operation.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("open", "map", "write", "rename", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends before a field it promises.
    #[error(
        "{}: truncated: {what} at byte {offset} needs {needed} bytes, \
         only {available} left",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The field being read.
        what: &'static str,
        /// Where the field starts.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{}: not a GGUF file: magic is {found:02x?}, expected \"GGUF\"", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The bytes found.
        found: [u8; 4],
    },
    /// A GGUF version this reader does not handle.
    #[error("{}: unsupported GGUF version {version}: {hint}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
        /// What to do about it.
        hint: &'static str,
    },
    /// A length, count or depth above the reader's cap.
    #[error(
        "{}: {what} at byte {offset} is {value}, above the limit of {limit}",
        path.display()
    )]
    LimitExceeded {
        /// The file.
        path: PathBuf,
        /// The quantity ("string length", "tensor count", ...).
        what: &'static str,
        /// Where it was read.
        offset: u64,
        /// The value found.
        value: u64,
        /// The cap.
        limit: u64,
    },
    /// Malformed header, metadata or tensor info.
    #[error("{}: invalid {what} at byte {offset}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        what: &'static str,
        /// Where it was read.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A metadata key appears twice.
    #[error("{}: duplicate metadata key {key:?} at byte {offset}", path.display())]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Where the second copy starts.
        offset: u64,
    },
    /// A key's value has the wrong type or an invalid value.
    #[error("{}: metadata key {key:?}: {reason}", path.display())]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A required metadata key is absent.
    #[error("{}: metadata key {key:?} is missing", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A tensor's type id is not one this crate knows.
    #[error(
        "{}: tensor {tensor:?}: unknown tensor type id {type_id}{detail}",
        path.display()
    )]
    UnknownTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The raw id.
        type_id: u32,
        /// Extra context, empty or starting with "; ".
        detail: String,
    },
    /// A known type whose layout this crate cannot size (TL1, TL2, NVFP4).
    #[error("{}: tensor {tensor:?}: type {type_name} is not supported: {reason}", path.display())]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type's name.
        type_name: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A type id in 36..=40 whose meaning (bitnet.cpp or upstream
    /// llama.cpp) the file does not settle.
    #[error(
        "{}: tensor {tensor:?}: ambiguous tensor type id {type_id}: {reason}",
        path.display()
    )]
    AmbiguousTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The raw id.
        type_id: u32,
        /// The conflicting evidence.
        reason: String,
    },
    /// A tensor whose shape, offset or size is invalid.
    #[error("{}: tensor {tensor:?}: {reason}", path.display())]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor name appears twice.
    #[error("{}: duplicate tensor name {tensor:?}", path.display())]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// No tensor has this name.
    #[error("{}: no tensor named {tensor:?}", path.display())]
    TensorNotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
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
    /// A tokenizer file that does not load, or text it cannot encode.
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A model that could not be found in, or fetched into, the HF cache.
    #[error("Hugging Face repo `{repo}`: {message}")]
    Hub {
        /// The repository id.
        repo: String,
        /// What failed and what to do.
        message: String,
    },
    /// Tensor data that cannot be used (wrong byte length, NaN scales...).
    #[error("tensor `{name}`: {message}")]
    TensorData {
        /// Tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A GGUF tokenizer model this crate cannot build.
    #[error(
        "{}: tokenizer model {model:?} is not supported (supported: {supported}); \
         put a tokenizer.json beside the file instead",
        path.display()
    )]
    UnsupportedTokenizer {
        /// The GGUF file.
        path: PathBuf,
        /// `tokenizer.ggml.model` as found.
        model: String,
        /// The models that are supported.
        supported: &'static str,
    },
    /// A chat template that does not compile or render.
    #[error("{}: chat template: {message}", path.display())]
    ChatTemplate {
        /// Where the template came from (`tokenizer_config.json`, a GGUF
        /// file, or `<built-in llama-3>`).
        path: PathBuf,
        /// The template engine's complaint, with the line where it has one.
        message: String,
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

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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

    /// Names the file a tensor-data error came from.
    pub(crate) fn at_path(self, path: &Path) -> Error {
        match self {
            Error::TensorData { name, message } => Error::BadTensor {
                path: path.to_path_buf(),
                tensor: name,
                reason: message,
            },
            other => other,
        }
    }

    /// Wraps an I/O error with the file and the operation that failed.
    pub(crate) fn io<'a>(
        path: &'a Path,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io {
            path: path.to_path_buf(),
            op,
            source,
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
