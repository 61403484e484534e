//! The GGUF writer: collects metadata and tensors, checks each as it is
//! added (sizes against shape and type, names, nesting, the dialect rules
//! the reader enforces), and writes a version 3 file, zero-padding to the
//! alignment, through a temporary file renamed into place.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::dialect::metadata_dialect;
use super::metadata::{Metadata, MetadataArray, MetadataValue};
use super::reader::ReadLimits;
use super::types::{Dialect, GgmlType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, VERSION};
use crate::error::{Error, Result};

const WRITER: &str = "<gguf writer>";

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    /// The bytes, or `None` for a tensor declared with
    /// [`GgufWriter::declare_tensor`] whose bytes come later through a
    /// [`GgufStream`].
    data: Option<Cow<'a, [u8]>>,
    /// Byte size (the data's length when present).
    size: u64,
}

/// Builds a GGUF file. Tensor data may be borrowed (e.g. from another
/// mapped file) or owned.
pub struct GgufWriter<'a> {
    metadata: Metadata,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    alignment: u64,
    limits: ReadLimits,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

fn writer_path() -> PathBuf {
    PathBuf::from(WRITER)
}

fn array_depth(a: &MetadataArray) -> u32 {
    match a {
        MetadataArray::Array(items) => 1 + items.iter().map(array_depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn array_too_long(a: &MetadataArray, max: u64) -> bool {
    a.len() as u64 > max
        || matches!(a, MetadataArray::Array(items) if items.iter().any(|i| array_too_long(i, max)))
}

fn strings_too_long(v: &MetadataValue, max: u64) -> bool {
    let long = |s: &String| s.len() as u64 > max;
    match v {
        MetadataValue::String(s) => long(s),
        MetadataValue::Array(a) => array_strings_too_long(a, max),
        _ => false,
    }
}

fn array_strings_too_long(a: &MetadataArray, max: u64) -> bool {
    match a {
        MetadataArray::String(v) => v.iter().any(|s| s.len() as u64 > max),
        MetadataArray::Array(v) => v.iter().any(|i| array_strings_too_long(i, max)),
        _ => false,
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            metadata: Metadata::new(WRITER),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT,
            limits: ReadLimits::default(),
        }
    }

    fn bad_metadata(key: &str, reason: String) -> Error {
        Error::BadMetadata {
            path: writer_path(),
            key: key.to_owned(),
            reason,
        }
    }

    /// Adds a metadata pair. `general.alignment` must be a `u32` power of
    /// two and sets the data alignment; it must come before any tensor.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> Result<()> {
        let key = key.into();
        let l = &self.limits;
        if key.len() as u64 > l.max_key_len {
            return Err(Self::bad_metadata(
                &key,
                format!("key longer than {}", l.max_key_len),
            ));
        }
        if strings_too_long(&value, l.max_string_len) {
            return Err(Self::bad_metadata(
                &key,
                format!("a string is longer than {} bytes", l.max_string_len),
            ));
        }
        if let MetadataValue::Array(a) = &value {
            if array_depth(a) > l.max_depth {
                return Err(Self::bad_metadata(
                    &key,
                    format!("arrays nested deeper than {}", l.max_depth),
                ));
            }
            if array_too_long(a, l.max_array_len) {
                return Err(Self::bad_metadata(
                    &key,
                    format!("an array has more than {} elements", l.max_array_len),
                ));
            }
        }
        if key == ALIGNMENT_KEY {
            let MetadataValue::U32(a) = value else {
                return Err(Self::bad_metadata(&key, "must be a u32".to_owned()));
            };
            if a == 0 || !a.is_power_of_two() {
                return Err(Self::bad_metadata(
                    &key,
                    format!("alignment {a} is not a non-zero power of two"),
                ));
            }
            if !self.tensors.is_empty() {
                return Err(Self::bad_metadata(
                    &key,
                    "set it before adding tensors".to_owned(),
                ));
            }
            self.alignment = a.into();
        }
        self.metadata
            .insert(key, value)
            .map_err(|(key, _)| Error::DuplicateKey {
                path: writer_path(),
                key,
                offset: 0,
            })
    }

    /// Adds a tensor of type `ty` with dimensions `dims` (GGUF order,
    /// `dims[0]` the row length) whose packed bytes are `data`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        self.push_tensor(name.into(), dims, ty, Some(data.into()))
    }

    /// Declares a tensor whose bytes are not at hand yet: they are written
    /// later, in declaration order, through the [`GgufStream`] that
    /// [`Self::stream_to`] returns. This is how a converter writes a file
    /// larger than it wants to hold in memory: the header needs only each
    /// tensor's name, shape and type.
    pub fn declare_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<()> {
        self.push_tensor(name.into(), dims, ty, None)
    }

    fn push_tensor(
        &mut self,
        name: String,
        dims: &[u64],
        ty: GgmlType,
        data: Option<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let bad = |reason: String| Error::BadTensor {
            path: writer_path(),
            tensor: name.clone(),
            reason,
        };
        if name.len() as u64 > self.limits.max_name_len {
            return Err(bad(format!(
                "name longer than {} bytes",
                self.limits.max_name_len
            )));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(bad(format!(
                "dimensions {dims:?}: GGUF needs 1 to {MAX_DIMS} non-zero dimensions"
            )));
        }
        let size = ty
            .byte_size(dims)
            .map_err(|e| bad(format!("{ty} {dims:?}: {e}")))?;
        if let Some(data) = &data
            && data.len() as u64 != size
        {
            return Err(bad(format!(
                "{ty} {dims:?} takes {size} bytes, got {}",
                data.len()
            )));
        }
        let conflict = self.tensors.iter().find(|t| {
            (t.ty.is_bitnet_cpp_only() && ty.is_upstream_collision())
                || (t.ty.is_upstream_collision() && ty.is_bitnet_cpp_only())
        });
        if let Some(other) = conflict {
            return Err(bad(format!(
                "{ty} cannot share a file with {} (tensor {:?}): type ids 36-40 would be ambiguous",
                other.ty, other.name
            )));
        }
        if self.names.contains(&name) {
            return Err(Error::DuplicateTensor {
                path: writer_path(),
                tensor: name,
            });
        }
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
            size,
        });
        Ok(())
    }

    /// Checks what can only be checked with all metadata present.
    fn check(&self) -> Result<()> {
        if metadata_dialect(&self.metadata) == Some(Dialect::BitnetCpp)
            && let Some(t) = self.tensors.iter().find(|t| t.ty.is_upstream_collision())
        {
            return Err(Error::BadTensor {
                path: writer_path(),
                tensor: t.name.clone(),
                reason: format!(
                    "{} (id {}) in a file whose metadata names a bitnet.cpp model would be \
                     read as a bitnet.cpp type",
                    t.ty,
                    t.ty.id()
                ),
            });
        }
        Ok(())
    }

    /// Writes the file to `out`; returns the bytes written. Errors name
    /// `path` (use any label for in-memory targets).
    pub fn write_to(&self, out: &mut impl Write, path: &Path) -> Result<u64> {
        if let Some(t) = self.tensors.iter().find(|t| t.data.is_none()) {
            return Err(Error::BadTensor {
                path: path.to_owned(),
                tensor: t.name.clone(),
                reason: "declared without data: write the file with `stream_to`".into(),
            });
        }
        let mut w = Counter { out, written: 0 };
        self.write_header(&mut w, path)?;
        let io = |source| Error::Io {
            path: path.to_owned(),
            op: "write",
            source,
        };
        for t in &self.tensors {
            w.put(t.data.as_deref().unwrap_or_default()).map_err(io)?;
            w.pad(self.alignment).map_err(io)?;
        }
        Ok(w.written)
    }

    /// Writes the header and tensor infos, padded to the alignment.
    fn write_header<W: Write>(&self, w: &mut Counter<'_, W>, path: &Path) -> Result<()> {
        self.check()?;
        let io = |source| Error::Io {
            path: path.to_owned(),
            op: "write",
            source,
        };
        w.put(MAGIC).map_err(io)?;
        w.put(&VERSION.to_le_bytes()).map_err(io)?;
        w.put(&(self.tensors.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.put(&(self.metadata.len() as u64).to_le_bytes())
            .map_err(io)?;
        for (key, value) in self.metadata.iter() {
            put_str(w, key).map_err(io)?;
            w.put(&(value.value_type() as u32).to_le_bytes())
                .map_err(io)?;
            put_value(w, value).map_err(io)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(w, &t.name).map_err(io)?;
            w.put(&(t.dims.len() as u32).to_le_bytes()).map_err(io)?;
            for d in &t.dims {
                w.put(&d.to_le_bytes()).map_err(io)?;
            }
            w.put(&t.ty.id().to_le_bytes()).map_err(io)?;
            w.put(&offset.to_le_bytes()).map_err(io)?;
            offset += t.size.next_multiple_of(self.alignment);
        }
        w.pad(self.alignment).map_err(io)
    }

    /// Writes the header to `out` and returns a stream that takes the
    /// tensors' bytes in declaration order (tensors added with data are
    /// written by the stream as their turn comes). Errors name `path`.
    pub fn stream_to<W: Write>(self, mut out: W, path: &Path) -> Result<GgufStream<'a, W>> {
        let mut w = Counter {
            out: &mut out,
            written: 0,
        };
        self.write_header(&mut w, path)?;
        let written = w.written;
        Ok(GgufStream {
            out,
            written,
            alignment: self.alignment,
            pending: self.tensors.into_iter().collect(),
            current: None,
            path: path.to_owned(),
        })
    }

    /// The file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out, Path::new("<memory>"))?;
        Ok(out)
    }

    /// Writes the file to `path` atomically: into a temporary file beside
    /// it, flushed to disk, then renamed over `path`.
    pub fn write_to_path(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.check()?;
        let file_name = path
            .file_name()
            .map_or_else(|| "gguf".into(), |n| n.to_string_lossy().into_owned());
        let io = |op, p: &Path| {
            let p = p.to_owned();
            move |source| Error::Io {
                path: p,
                op,
                source,
            }
        };
        // A fresh name beside the target: `create_new` refuses existing files,
        // so concurrent writers (threads or processes) never share one.
        let pid = std::process::id();
        let mut attempt = 0u32;
        let (tmp, file) = loop {
            let tmp = path.with_file_name(format!(".{file_name}.{pid}.{attempt}.tmp"));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => break (tmp, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 10_000 => {
                    attempt += 1
                }
                Err(e) => return Err(io("create", &tmp)(e)),
            }
        };
        let result = (|| {
            let mut buf = BufWriter::new(file);
            self.write_to(&mut buf, &tmp)?;
            let file = buf
                .into_inner()
                .map_err(|e| io("write", &tmp)(e.into_error()))?;
            file.sync_all().map_err(io("sync", &tmp))?;
            fs::rename(&tmp, path).map_err(io("rename", path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The data section of a GGUF file being written tensor by tensor (see
/// [`GgufWriter::stream_to`]).
pub struct GgufStream<'a, W: Write> {
    out: W,
    written: u64,
    alignment: u64,
    pending: std::collections::VecDeque<PendingTensor<'a>>,
    /// The tensor being written and the bytes it still needs.
    current: Option<(String, u64)>,
    path: PathBuf,
}

impl<W: Write> GgufStream<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let mut w = Counter {
            out: &mut self.out,
            written: self.written,
        };
        let r = w.put(bytes).and_then(|()| w.pad(self.alignment));
        self.written = w.written;
        r.map_err(|source| Error::Io {
            path: self.path.clone(),
            op: "write",
            source,
        })
    }

    /// Writes the tensors added with their data that come next.
    fn flush_ready(&mut self) -> Result<()> {
        while self.pending.front().is_some_and(|t| t.data.is_some()) {
            if let Some(t) = self.pending.pop_front() {
                self.put(t.data.as_deref().unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// Writes the bytes of the next declared tensor, which must be `name`
    /// and take exactly its declared size.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.start_tensor(name)?;
        self.write_part(bytes)?;
        self.end_tensor()
    }

    /// Starts the next declared tensor, which must be `name`; its bytes
    /// follow in any number of [`Self::write_part`] calls, then
    /// [`Self::end_tensor`] (so a large tensor need not sit in memory whole).
    pub fn start_tensor(&mut self, name: &str) -> Result<()> {
        self.flush_ready()?;
        let bad = |reason: String| Error::BadTensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
            reason,
        };
        if let Some((open, _)) = &self.current {
            return Err(bad(format!("`{open}` is still being written")));
        }
        let Some(next) = self.pending.front() else {
            return Err(bad("no tensor is left to write".into()));
        };
        if next.name != name || next.data.is_some() {
            return Err(bad(format!(
                "written out of order: `{}` comes next",
                next.name
            )));
        }
        let size = next.size;
        self.pending.pop_front();
        self.current = Some((name.to_owned(), size));
        Ok(())
    }

    /// Appends bytes to the tensor being written.
    pub fn write_part(&mut self, bytes: &[u8]) -> Result<()> {
        let Some((name, left)) = &mut self.current else {
            return Err(Error::BadTensor {
                path: self.path.clone(),
                tensor: String::new(),
                reason: "bytes written outside a tensor".into(),
            });
        };
        if bytes.len() as u64 > *left {
            return Err(Error::BadTensor {
                path: self.path.clone(),
                tensor: name.clone(),
                reason: format!("{} bytes more than declared", bytes.len() as u64 - *left),
            });
        }
        *left -= bytes.len() as u64;
        self.out.write_all(bytes).map_err(|source| Error::Io {
            path: self.path.clone(),
            op: "write",
            source,
        })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Ends the tensor being written, which must be complete, and pads.
    pub fn end_tensor(&mut self) -> Result<()> {
        match self.current.take() {
            Some((_, 0)) => self.put(&[]),
            Some((name, left)) => Err(Error::BadTensor {
                path: self.path.clone(),
                tensor: name,
                reason: format!("{left} bytes short of its declared size"),
            }),
            None => Ok(()),
        }
    }

    /// Checks every tensor was written; returns the output and the bytes written.
    pub fn finish(mut self) -> Result<(W, u64)> {
        self.end_tensor()?;
        self.flush_ready()?;
        if let Some(t) = self.pending.front() {
            return Err(Error::BadTensor {
                path: self.path.clone(),
                tensor: t.name.clone(),
                reason: "declared but never written".into(),
            });
        }
        Ok((self.out, self.written))
    }
}

/// Counts bytes written so padding can be computed.
struct Counter<'w, W: Write> {
    out: &'w mut W,
    written: u64,
}

impl<W: Write> Counter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, alignment: u64) -> std::io::Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut left = self.written.next_multiple_of(alignment) - self.written;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.put(&ZEROS[..n as usize])?;
            left -= n;
        }
        Ok(())
    }
}

fn put_str<W: Write>(w: &mut Counter<'_, W>, s: &str) -> std::io::Result<()> {
    w.put(&(s.len() as u64).to_le_bytes())?;
    w.put(s.as_bytes())
}

fn put_value<W: Write>(w: &mut Counter<'_, W>, v: &MetadataValue) -> std::io::Result<()> {
    use MetadataValue as V;
    match v {
        V::U8(x) => w.put(&x.to_le_bytes()),
        V::I8(x) => w.put(&x.to_le_bytes()),
        V::U16(x) => w.put(&x.to_le_bytes()),
        V::I16(x) => w.put(&x.to_le_bytes()),
        V::U32(x) => w.put(&x.to_le_bytes()),
        V::I32(x) => w.put(&x.to_le_bytes()),
        V::F32(x) => w.put(&x.to_le_bytes()),
        V::Bool(x) => w.put(&[u8::from(*x)]),
        V::String(s) => put_str(w, s),
        V::Array(a) => put_array(w, a),
        V::U64(x) => w.put(&x.to_le_bytes()),
        V::I64(x) => w.put(&x.to_le_bytes()),
        V::F64(x) => w.put(&x.to_le_bytes()),
    }
}

fn put_array<W: Write>(w: &mut Counter<'_, W>, a: &MetadataArray) -> std::io::Result<()> {
    use MetadataArray as A;
    w.put(&(a.element_type() as u32).to_le_bytes())?;
    w.put(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.put(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        A::U8(v) => w.put(v),
        A::I8(v) => each!(v),
        A::U16(v) => each!(v),
        A::I16(v) => each!(v),
        A::U32(v) => each!(v),
        A::I32(v) => each!(v),
        A::F32(v) => each!(v),
        A::Bool(v) => {
            for &b in v {
                w.put(&[u8::from(b)])?;
            }
            Ok(())
        }
        A::String(v) => {
            for s in v {
                put_str(w, s)?;
            }
            Ok(())
        }
        A::Array(v) => {
            for inner in v {
                put_array(w, inner)?;
            }
            Ok(())
        }
        A::U64(v) => each!(v),
        A::I64(v) => each!(v),
        A::F64(v) => each!(v),
    }
}
