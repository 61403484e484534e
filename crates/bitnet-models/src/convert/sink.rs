//! Where a conversion writes to, one tensor at a time: a GGUF file
//! ([`crate::gguf::GgufStream`]) or a safetensors file, both behind
//! [`crate::atomic::AtomicFile`]. Every tensor's name, shape and type is
//! declared first (the headers of both formats need all of them before any
//! data), then the bytes follow in declaration order, in parts, so no
//! output tensor needs to be held whole.
//!
//! safetensors layout written here (the format's only layout):
//!
//! ```text
//!   0      8  u64 header length n (little-endian)
//!   8      n  JSON: {"name": {"dtype": "U8", "shape": [..], "data_offsets": [b, e]}, ...,
//!                    "__metadata__": {"format": "pt"}}, space-padded to a multiple of 8
//!   8+n       tensor data, back to back, in declaration order
//! ```

use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use crate::gguf::{GgufStream, GgufWriter};
use safetensors::tensor::Dtype;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A safetensors file written tensor by tensor.
pub(crate) struct SafetensorsStream {
    out: AtomicFile,
    /// (name, bytes) still to come, in order.
    pending: std::collections::VecDeque<(String, u64)>,
    current: Option<(String, u64)>,
    path: PathBuf,
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::U8 => "U8",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        _ => "F32",
    }
}

fn dtype_size(d: Dtype) -> u64 {
    match d {
        Dtype::U8 => 1,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => 4,
    }
}

impl SafetensorsStream {
    /// Writes the header of a file holding `tensors` (name, dtype, shape)
    /// into `out`.
    pub(crate) fn new(
        mut out: AtomicFile,
        path: &Path,
        tensors: &[(String, Dtype, Vec<usize>)],
    ) -> Result<Self> {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        let mut pending = std::collections::VecDeque::new();
        for (name, dtype, shape) in tensors {
            let size = shape.iter().product::<usize>() as u64 * dtype_size(*dtype);
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": dtype_name(*dtype),
                    "shape": shape,
                    "data_offsets": [offset, offset + size],
                }),
            );
            offset += size;
            pending.push_back((name.clone(), size));
        }
        header.insert(
            "__metadata__".into(),
            serde_json::json!({"format": "pt", "converter": "bitnet convert"}),
        );
        let mut text = serde_json::to_string(&header)
            .map_err(|e| Error::Config(format!("safetensors header: {e}")))?
            .into_bytes();
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let io = Error::io(path, "write");
        out.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&text))
            .map_err(io)?;
        Ok(SafetensorsStream {
            out,
            pending,
            current: None,
            path: path.to_path_buf(),
        })
    }
}

/// A file being written tensor by tensor.
pub(crate) enum Sink<'a> {
    /// GGUF.
    Gguf(Box<GgufStream<'a, AtomicFile>>),
    /// safetensors.
    Safetensors(SafetensorsStream),
}

impl<'a> Sink<'a> {
    /// Starts a GGUF file from a writer holding metadata and declarations.
    pub(crate) fn gguf(w: GgufWriter<'a>, out: AtomicFile, path: &Path) -> Result<Self> {
        Ok(Sink::Gguf(Box::new(w.stream_to(out, path)?)))
    }

    /// Starts the next tensor, which must be `name`.
    pub(crate) fn start(&mut self, name: &str) -> Result<()> {
        match self {
            Sink::Gguf(s) => s.start_tensor(name),
            Sink::Safetensors(s) => {
                let next = s.pending.pop_front();
                match next {
                    Some((n, size)) if n == name && s.current.is_none() => {
                        s.current = Some((n, size));
                        Ok(())
                    }
                    other => Err(Error::BadTensor {
                        path: s.path.clone(),
                        tensor: name.into(),
                        reason: format!("written out of order (expected {other:?})"),
                    }),
                }
            }
        }
    }

    /// Appends bytes to the current tensor.
    pub(crate) fn part(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Sink::Gguf(s) => s.write_part(bytes),
            Sink::Safetensors(s) => {
                let Some((name, left)) = &mut s.current else {
                    return Err(Error::Config("internal: bytes outside a tensor".into()));
                };
                if bytes.len() as u64 > *left {
                    return Err(Error::BadTensor {
                        path: s.path.clone(),
                        tensor: name.clone(),
                        reason: "more bytes than declared".into(),
                    });
                }
                *left -= bytes.len() as u64;
                s.out.write_all(bytes).map_err(Error::io(&s.path, "write"))
            }
        }
    }

    /// Ends the current tensor.
    pub(crate) fn end(&mut self) -> Result<()> {
        match self {
            Sink::Gguf(s) => s.end_tensor(),
            Sink::Safetensors(s) => match s.current.take() {
                Some((_, 0)) | None => Ok(()),
                Some((name, left)) => Err(Error::BadTensor {
                    path: s.path.clone(),
                    tensor: name,
                    reason: format!("{left} bytes short"),
                }),
            },
        }
    }

    /// A whole tensor.
    pub(crate) fn tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.start(name)?;
        self.part(bytes)?;
        self.end()
    }

    /// Checks completeness and returns the file, ready to commit.
    pub(crate) fn finish(self) -> Result<AtomicFile> {
        match self {
            Sink::Gguf(s) => Ok(s.finish()?.0),
            Sink::Safetensors(s) => {
                if let Some((name, _)) = s.pending.front().or(s.current.as_ref()) {
                    return Err(Error::BadTensor {
                        path: s.path.clone(),
                        tensor: name.clone(),
                        reason: "declared but never written".into(),
                    });
                }
                Ok(s.out)
            }
        }
    }
}
