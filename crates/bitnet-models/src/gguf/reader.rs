//! The GGUF reader: [`GgufContent::parse`] validates a whole file held in
//! any byte slice; [`GgufFile::open`] memory-maps a file and parses it.
//!
//! Every length and count is capped ([`ReadLimits`]) and checked against
//! the bytes left before anything is allocated; every tensor's shape, type,
//! alignment and extent is checked, with checked arithmetic, before
//! [`GgufFile::tensor_bytes`] hands out a slice. Hostile input gives an
//! [`Error`], never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::dialect::{Unresolved, metadata_dialect, resolve};
use super::metadata::{Metadata, MetadataArray, MetadataValue, ValueType};
use super::types::{Dialect, GgmlType, SizeError, element_count};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::error::{Error, Result};

/// Caps on what a file may declare. The defaults accept every published
/// model file we know of.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadLimits {
    /// Longest metadata key (64 KiB).
    pub max_key_len: u64,
    /// Longest string value (16 MiB: `tokenizer.huggingface.json` holds a
    /// whole `tokenizer.json`).
    pub max_string_len: u64,
    /// Longest tensor name (4 KiB; ggml itself stops at 63 bytes).
    pub max_name_len: u64,
    /// Most elements in one array (16 Mi).
    pub max_array_len: u64,
    /// Deepest array nesting (an array of arrays is depth 2).
    pub max_depth: u32,
    /// Most metadata pairs.
    pub max_kv_count: u64,
    /// Most tensors.
    pub max_tensor_count: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_key_len: 64 << 10,
            max_string_len: 16 << 20,
            max_name_len: 4 << 10,
            max_array_len: 16 << 20,
            max_depth: 4,
            max_kv_count: 1 << 20,
            max_tensor_count: 1 << 20,
        }
    }
}

/// One tensor's entry in the file's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    ty: GgmlType,
    offset: u64,
    size: u64,
}

impl TensorInfo {
    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Dimensions in GGUF order: `dims()[0]` is the fastest-varying
    /// (ggml's `ne[0]`, the row length).
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }
    /// The raw type id stored in the file.
    pub fn type_id(&self) -> u32 {
        self.type_id
    }
    /// The type the id resolved to in this file's dialect.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }
    /// Offset from the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Bytes of data (without padding).
    pub fn size_bytes(&self) -> u64 {
        self.size
    }
    /// The number of elements.
    pub fn element_count(&self) -> u64 {
        // Checked when the file was parsed.
        element_count(&self.dims).unwrap_or(0)
    }
}

/// A parsed GGUF file: header, metadata and validated tensor table, without
/// the bytes themselves.
#[derive(Clone, Debug)]
pub struct GgufContent {
    source: PathBuf,
    version: u32,
    alignment: u64,
    data_start: u64,
    file_len: u64,
    dialect: Dialect,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    limits: &'a ReadLimits,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let available = self.remaining() as u64;
        if n > available {
            return Err(Error::Truncated {
                path: self.path.to_owned(),
                what,
                offset: self.offset(),
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn limit(&self, what: &'static str, offset: u64, value: u64, limit: u64) -> Result<()> {
        if value > limit {
            return Err(Error::LimitExceeded {
                path: self.path.to_owned(),
                what,
                offset,
                value,
                limit,
            });
        }
        Ok(())
    }

    fn invalid(&self, what: &'static str, offset: u64, reason: impl Into<String>) -> Error {
        Error::Invalid {
            path: self.path.to_owned(),
            what,
            offset,
            reason: reason.into(),
        }
    }

    /// A length-prefixed string of at most `cap` bytes, as raw bytes.
    fn string_bytes(&mut self, cap: u64, what: &'static str) -> Result<&'a [u8]> {
        let at = self.offset();
        let len = self.u64(what)?;
        self.limit(what, at, len, cap)?;
        self.take(len, what)
    }

    /// A key or tensor name: must be valid UTF-8.
    fn name(&mut self, cap: u64, what: &'static str) -> Result<String> {
        let at = self.offset();
        let raw = self.string_bytes(cap, what)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|e| self.invalid(what, at, format!("not UTF-8: {e}")))
    }

    /// A string value. Invalid UTF-8 is replaced (U+FFFD) rather than
    /// refused: some converters wrote raw byte tokens into vocabularies.
    fn string_value(&mut self) -> Result<String> {
        let raw = self.string_bytes(self.limits.max_string_len, "string length")?;
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value_type(&mut self) -> Result<ValueType> {
        let at = self.offset();
        let id = self.u32("value type")?;
        ValueType::from_id(id).ok_or_else(|| {
            self.invalid(
                "value type",
                at,
                format!("unknown metadata value type {id}"),
            )
        })
    }

    fn bool(&mut self) -> Result<bool> {
        let at = self.offset();
        match self.array::<1>("bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.invalid("bool", at, format!("byte {b} is neither 0 nor 1"))),
        }
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<MetadataValue> {
        use MetadataValue as V;
        Ok(match ty {
            ValueType::U8 => V::U8(u8::from_le_bytes(self.array("u8")?)),
            ValueType::I8 => V::I8(i8::from_le_bytes(self.array("i8")?)),
            ValueType::U16 => V::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => V::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => V::U32(self.u32("u32")?),
            ValueType::I32 => V::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::F32 => V::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::Bool => V::Bool(self.bool()?),
            ValueType::String => V::String(self.string_value()?),
            ValueType::Array => V::Array(self.array_value(depth + 1)?),
            ValueType::U64 => V::U64(self.u64("u64")?),
            ValueType::I64 => V::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F64 => V::F64(f64::from_le_bytes(self.array("f64")?)),
        })
    }

    /// Reads `count` elements with `read`, reserving no more than the
    /// bytes left could hold.
    fn elements<T>(
        &mut self,
        count: u64,
        min_size: usize,
        mut read: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let fits = (self.remaining() / min_size) as u64;
        let mut out = Vec::with_capacity(count.min(fits) as usize);
        for _ in 0..count {
            out.push(read(self)?);
        }
        Ok(out)
    }

    fn array_value(&mut self, depth: u32) -> Result<MetadataArray> {
        use MetadataArray as A;
        let at = self.offset();
        self.limit(
            "array nesting depth",
            at,
            depth.into(),
            self.limits.max_depth.into(),
        )?;
        let ty = self.value_type()?;
        let count_at = self.offset();
        let n = self.u64("array length")?;
        self.limit("array length", count_at, n, self.limits.max_array_len)?;
        // Every element takes at least `min_size` bytes: a count the rest
        // of the file cannot hold is truncation, found before allocating.
        let needed = n.saturating_mul(ty.min_size() as u64);
        if needed > self.remaining() as u64 {
            return Err(Error::Truncated {
                path: self.path.to_owned(),
                what: "array elements",
                offset: self.offset(),
                needed,
                available: self.remaining() as u64,
            });
        }
        let m = ty.min_size();
        fn le<const N: usize>(c: &mut Cursor<'_>) -> Result<[u8; N]> {
            c.array::<N>("array element")
        }
        Ok(match ty {
            ValueType::U8 => A::U8(self.take(n, "array elements")?.to_vec()),
            ValueType::I8 => A::I8(self.elements(n, m, |c| Ok(i8::from_le_bytes(le(c)?)))?),
            ValueType::U16 => A::U16(self.elements(n, m, |c| Ok(u16::from_le_bytes(le(c)?)))?),
            ValueType::I16 => A::I16(self.elements(n, m, |c| Ok(i16::from_le_bytes(le(c)?)))?),
            ValueType::U32 => A::U32(self.elements(n, m, |c| Ok(u32::from_le_bytes(le(c)?)))?),
            ValueType::I32 => A::I32(self.elements(n, m, |c| Ok(i32::from_le_bytes(le(c)?)))?),
            ValueType::F32 => A::F32(self.elements(n, m, |c| Ok(f32::from_le_bytes(le(c)?)))?),
            ValueType::Bool => A::Bool(self.elements(n, m, Cursor::bool)?),
            ValueType::String => A::String(self.elements(n, m, Cursor::string_value)?),
            ValueType::Array => A::Array(self.elements(n, m, |c| c.array_value(depth + 1))?),
            ValueType::U64 => A::U64(self.elements(n, m, |c| Ok(u64::from_le_bytes(le(c)?)))?),
            ValueType::I64 => A::I64(self.elements(n, m, |c| Ok(i64::from_le_bytes(le(c)?)))?),
            ValueType::F64 => A::F64(self.elements(n, m, |c| Ok(f64::from_le_bytes(le(c)?)))?),
        })
    }
}

/// A tensor-info record before its type is resolved.
struct RawTensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

fn checked_align(value: u64, alignment: u64) -> Option<u64> {
    value.checked_next_multiple_of(alignment)
}

impl GgufContent {
    /// Parses a whole GGUF file held in memory, with default limits.
    pub fn parse(bytes: &[u8]) -> Result<GgufContent> {
        Self::parse_with(bytes, Path::new("<memory>"), &ReadLimits::default())
    }

    /// Parses `bytes` (the whole file); errors name `source`.
    pub fn parse_with(bytes: &[u8], source: &Path, limits: &ReadLimits) -> Result<GgufContent> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            path: source,
            limits,
        };
        let magic = c.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(Error::BadMagic {
                path: source.to_owned(),
                found: magic,
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            let hint = if version == 1 {
                "version 1 (32-bit counts) is obsolete; convert the model again"
            } else if (1..=3).contains(&version.swap_bytes()) {
                "the file is big-endian; only little-endian files are read"
            } else {
                "this reader handles versions 2 and 3"
            };
            return Err(Error::UnsupportedVersion {
                path: source.to_owned(),
                version,
                hint,
            });
        }
        let at = c.offset();
        let tensor_count = c.u64("tensor count")?;
        c.limit("tensor count", at, tensor_count, limits.max_tensor_count)?;
        let at = c.offset();
        let kv_count = c.u64("metadata count")?;
        c.limit("metadata count", at, kv_count, limits.max_kv_count)?;

        let mut metadata = Metadata::new(source);
        for _ in 0..kv_count {
            let at = c.offset();
            let key = c.name(limits.max_key_len, "key length")?;
            let ty = c.value_type()?;
            let value = c.value(ty, 0)?;
            if let Err((key, _)) = metadata.insert(key, value) {
                return Err(Error::DuplicateKey {
                    path: source.to_owned(),
                    key,
                    offset: at,
                });
            }
        }

        let mut raw = Vec::with_capacity(tensor_count.min((c.remaining() / 24) as u64) as usize);
        for _ in 0..tensor_count {
            raw.push(read_tensor_info(&mut c)?);
        }

        let alignment = match metadata.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some(_) => {
                let a = metadata.get_u32(ALIGNMENT_KEY)?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(Error::BadMetadata {
                        path: source.to_owned(),
                        key: ALIGNMENT_KEY.to_owned(),
                        reason: format!("alignment {a} is not a non-zero power of two"),
                    });
                }
                u64::from(a)
            }
        };
        let file_len = bytes.len() as u64;
        let data_start = checked_align(c.offset(), alignment).unwrap_or(u64::MAX);
        let data_len = file_len.saturating_sub(data_start);
        let hint = metadata_dialect(&metadata);

        let mut content = GgufContent {
            source: source.to_owned(),
            version,
            alignment,
            data_start,
            file_len,
            dialect: hint.unwrap_or(Dialect::Upstream),
            metadata,
            tensors: Vec::with_capacity(raw.len()),
            by_name: HashMap::with_capacity(raw.len()),
        };
        if raw.is_empty() {
            return Ok(content);
        }
        if data_start > file_len {
            return Err(c.invalid(
                "data section",
                c.offset(),
                format!("data would start at byte {data_start}, past the end of the {file_len}-byte file"),
            ));
        }

        let mut offsets: Vec<u64> = raw.iter().map(|t| t.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let mut kinds = (None::<String>, None::<String>); // (bitnet-only, upstream collision)
        for t in raw {
            let bad = |reason: String| Error::BadTensor {
                path: source.to_owned(),
                tensor: t.name.clone(),
                reason,
            };
            if content.by_name.contains_key(&t.name) {
                return Err(Error::DuplicateTensor {
                    path: source.to_owned(),
                    tensor: t.name,
                });
            }
            if !t.offset.is_multiple_of(alignment) {
                return Err(bad(format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                )));
            }
            if t.offset >= data_len {
                return Err(bad(format!(
                    "data offset {} is past the end of the {data_len}-byte data section",
                    t.offset
                )));
            }
            let next = offsets
                .get(offsets.partition_point(|&o| o <= t.offset))
                .map_or(data_len, |&o| o.min(data_len));
            let ty = match resolve(t.type_id, &t.dims, next - t.offset, alignment, hint) {
                Ok(ty) => ty,
                Err(Unresolved::Unknown(detail)) => {
                    return Err(Error::UnknownTensorType {
                        path: source.to_owned(),
                        tensor: t.name,
                        type_id: t.type_id,
                        detail,
                    });
                }
                Err(Unresolved::Ambiguous(reason)) => {
                    return Err(Error::AmbiguousTensorType {
                        path: source.to_owned(),
                        tensor: t.name,
                        type_id: t.type_id,
                        reason,
                    });
                }
            };
            let size = match ty.byte_size(&t.dims) {
                Ok(size) => size,
                Err(SizeError::Unsized(reason)) => {
                    return Err(Error::UnsupportedTensorType {
                        path: source.to_owned(),
                        tensor: t.name,
                        type_name: ty.name(),
                        reason,
                    });
                }
                Err(e) => return Err(bad(format!("{ty} {:?}: {e}", t.dims))),
            };
            let end = t.offset.checked_add(size).filter(|&end| end <= data_len);
            if end.is_none() {
                return Err(bad(format!(
                    "{size} bytes of {ty} at data offset {} run past the end of the \
                     {data_len}-byte data section (file truncated?)",
                    t.offset
                )));
            }
            if ty.is_bitnet_cpp_only() {
                kinds.0.get_or_insert_with(|| t.name.clone());
                content.dialect = Dialect::BitnetCpp;
            } else if ty.is_upstream_collision() {
                kinds.1.get_or_insert_with(|| t.name.clone());
            }
            if let (Some(b), Some(u)) = &kinds {
                return Err(Error::AmbiguousTensorType {
                    path: source.to_owned(),
                    type_id: t.type_id,
                    reason: format!(
                        "the file mixes bitnet.cpp types (tensor {b:?}) with upstream \
                         types (tensor {u:?})"
                    ),
                    tensor: t.name,
                });
            }
            content
                .by_name
                .insert(t.name.clone(), content.tensors.len());
            content.tensors.push(TensorInfo {
                name: t.name,
                dims: t.dims,
                type_id: t.type_id,
                ty,
                offset: t.offset,
                size,
            });
        }

        let mut order: Vec<&TensorInfo> = content.tensors.iter().collect();
        order.sort_unstable_by_key(|t| t.offset);
        for pair in order.windows(2) {
            if pair[0].offset + pair[0].size > pair[1].offset {
                return Err(Error::BadTensor {
                    path: source.to_owned(),
                    tensor: pair[1].name.clone(),
                    reason: format!("its data overlaps tensor {:?}", pair[0].name),
                });
            }
        }
        Ok(content)
    }

    /// The file (or `<memory>`) the content came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// The data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// The byte where the data section starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }
    /// Which fork's type ids the file uses.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// The info of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound {
                path: self.source.clone(),
                tensor: name.to_owned(),
            })
    }

    /// The data of tensor `name` within `bytes`, which must be the buffer
    /// this content was parsed from (its length is checked again).
    pub fn tensor_bytes<'a>(&self, bytes: &'a [u8], name: &str) -> Result<&'a [u8]> {
        let t = self.tensor(name)?;
        let range = self
            .data_start
            .checked_add(t.offset)
            .and_then(|start| Some(start..start.checked_add(t.size)?))
            .filter(|r| r.end <= bytes.len() as u64 && bytes.len() as u64 == self.file_len);
        match range {
            Some(r) => Ok(&bytes[r.start as usize..r.end as usize]),
            None => Err(Error::BadTensor {
                path: self.source.clone(),
                tensor: name.to_owned(),
                reason: format!(
                    "the buffer ({} bytes) is not the {}-byte file this table came from",
                    bytes.len(),
                    self.file_len
                ),
            }),
        }
    }
}

fn read_tensor_info(c: &mut Cursor<'_>) -> Result<RawTensor> {
    let at = c.offset();
    let name = c.name(c.limits.max_name_len, "tensor name length")?;
    let path = c.path;
    let bad = |reason: String| Error::BadTensor {
        path: path.to_owned(),
        tensor: name.clone(),
        reason,
    };
    let n_dims = c.u32("tensor dimension count")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(bad(format!(
            "{n_dims} dimensions (info at byte {at}); GGUF allows 1 to {MAX_DIMS}"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64("tensor dimension")?);
    }
    if dims.contains(&0) {
        return Err(bad(format!(
            "dimensions {dims:?} include 0 (info at byte {at})"
        )));
    }
    if element_count(&dims).is_none() {
        return Err(bad(format!(
            "dimensions {dims:?} overflow the element count (info at byte {at})"
        )));
    }
    let type_id = c.u32("tensor type")?;
    let offset = c.u64("tensor offset")?;
    Ok(RawTensor {
        name,
        dims,
        type_id,
        offset,
    })
}

/// A memory-mapped GGUF file, validated on open.
///
/// The file must not be truncated or rewritten while it is open: the
/// mapping would change under the borrowed slices (or fault, if
/// truncated). [`GgufWriter::write_to_path`](super::GgufWriter::write_to_path)
/// replaces files by rename, which leaves an open mapping intact.
#[derive(Debug)]
pub struct GgufFile {
    map: std::sync::Arc<memmap2::Mmap>,
    content: GgufContent,
}

impl GgufFile {
    /// Opens and validates `path` with default limits.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        Self::open_with(path, &ReadLimits::default())
    }

    /// Opens and validates `path`.
    pub fn open_with(path: impl AsRef<Path>, limits: &ReadLimits) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |op| {
            move |source| Error::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        let file = File::open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        if len == 0 {
            return Err(Error::Truncated {
                path: path.to_owned(),
                what: "magic",
                offset: 0,
                needed: 4,
                available: 0,
            });
        }
        // SAFETY: the map is read-only and private to this value. The
        // documented contract of `GgufFile` is that nobody truncates or
        // rewrites the file while it is open; the parser treats the bytes
        // as untrusted and checks every offset against the mapped length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("map"))?;
        let content = GgufContent::parse_with(&map, path, limits)?;
        Ok(GgufFile {
            map: std::sync::Arc::new(map),
            content,
        })
    }

    /// The parsed header, metadata and tensor table.
    pub fn content(&self) -> &GgufContent {
        &self.content
    }
    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        self.content.metadata()
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.content.tensors()
    }
    /// Which fork's type ids the file uses.
    pub fn dialect(&self) -> Dialect {
        self.content.dialect()
    }
    /// The data of tensor `name`, borrowed from the mapping. It is aligned
    /// in the file, not necessarily in memory for types wider than the
    /// page alignment guarantees: copy before casting.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        self.content.tensor_bytes(&self.map, name)
    }
    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.map
    }
    /// The shared mapping, for tensors that stay in the file
    /// ([`crate::float_matrix::FloatMatrix`]).
    pub(crate) fn shared_map(&self) -> &std::sync::Arc<memmap2::Mmap> {
        &self.map
    }
    /// Lets the pages of tensor `name` leave the resident set once it has
    /// been converted (see [`crate::mapped::release`]).
    pub fn release(&self, name: &str) {
        if let Ok(bytes) = self.tensor_bytes(name) {
            crate::mapped::release(&self.map, bytes);
        }
    }
}
