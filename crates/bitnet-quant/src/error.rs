//! The error type of `bitnet-quant`: every failure names what was wrong with
//! which input, so a person reading the message knows what to fix.

use std::fmt;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A packed weight format, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// HF `bitlinear`/`autobitlinear` 2-bit layout, `[ceil(out/4), in]`.
    Hf2Bit,
    /// bitnet.cpp I2_S.
    I2S,
    /// llama.cpp TQ1_0.
    Tq1_0,
    /// llama.cpp TQ2_0.
    Tq2_0,
    /// BitNet-Rust's runtime kernel layout.
    Runtime,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Hf2Bit => "HF 2-bit",
            Format::I2S => "I2_S",
            Format::Tq1_0 => "TQ1_0",
            Format::Tq2_0 => "TQ2_0",
            Format::Runtime => "runtime ternary",
        })
    }
}

/// Everything that can go wrong in quantization, packing and kernels.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value that cannot be quantized (NaN or infinite).
    #[error(
        "tensor `{tensor}` holds a non-finite value {value} at element {index}; fix or drop it before quantizing"
    )]
    NonFinite {
        /// Name of the tensor being quantized.
        tensor: String,
        /// Flat index of the first bad element.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// A tensor with no elements where data is required.
    #[error("tensor `{tensor}` is empty; {op} needs at least one element")]
    Empty {
        /// Name of the tensor.
        tensor: String,
        /// What was attempted.
        op: &'static str,
    },
    /// Sizes that do not agree.
    #[error("{op}: shape mismatch: {detail}")]
    ShapeMismatch {
        /// What was attempted.
        op: &'static str,
        /// Which sizes disagree, with their values.
        detail: String,
    },
    /// A packed buffer shorter or longer than its shape requires.
    #[error(
        "{format} buffer for a {shape} tensor must be {expected} bytes, got {actual} (truncated or wrong shape?)"
    )]
    BadLength {
        /// The packed format.
        format: Format,
        /// Shape described as text, e.g. `[640, 2560]`.
        shape: String,
        /// Required byte count.
        expected: usize,
        /// Byte count given.
        actual: usize,
    },
    /// A packed code outside the valid set (e.g. the 2-bit pattern `0b11`).
    #[error(
        "{format}: invalid packed code {code:#04b} in byte {byte}; the file is corrupt or not this format"
    )]
    InvalidCode {
        /// The packed format.
        format: Format,
        /// Offset of the byte holding the code.
        byte: usize,
        /// The offending code or byte.
        code: u8,
    },
    /// A ternary code outside {-1, 0, 1}.
    #[error("ternary code {code} at element {index} is not -1, 0 or 1")]
    NotTernary {
        /// Flat index.
        index: usize,
        /// The value found.
        code: i8,
    },
    /// A scale that is zero, negative, NaN or infinite where a positive finite one is needed.
    #[error("{what} scale {value} is not a positive finite number")]
    BadScale {
        /// Which scale.
        what: &'static str,
        /// The value found.
        value: f32,
    },
    /// A shape whose byte size does not fit in memory (a hostile or corrupt header).
    #[error("{format}: shape {shape} is too large to address")]
    ShapeOverflow {
        /// The packed format.
        format: Format,
        /// Shape described as text.
        shape: String,
    },
    /// Finite values so large that no finite f32 scale represents them.
    #[error(
        "tensor `{tensor}`: values too large for a finite f32 scale (scale came out {scale}); rescale the tensor before quantizing"
    )]
    ScaleOutOfRange {
        /// Name of the tensor.
        tensor: String,
        /// The unusable scale.
        scale: f32,
    },
    /// A parameter outside its supported range.
    #[error("{0}")]
    Unsupported(String),
}
