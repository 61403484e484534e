//! HF safetensors checkpoints: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, memory-mapped. The header is parsed and
//! validated (offsets, sizes) by the `safetensors` crate; data is read from
//! the map and converted, since a file's data may be unaligned.
//! [`SafetensorsCheckpoint::from_bytes`] parses a buffer in memory through
//! the same code (for tests and fuzzing).

use crate::error::{Error, Result};
use crate::float_matrix::{FloatEncoding, FloatMatrix};
use crate::gguf::{GgmlType, dequantize};
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A shard's bytes: a read-only map of the file, or a buffer in memory.
enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One safetensors file, parsed.
struct Shard {
    path: PathBuf,
    map: Arc<Bytes>,
    data_start: usize,
    metadata: Metadata,
}

/// A set of safetensors shards addressed by tensor name.
pub struct SafetensorsCheckpoint {
    shards: Vec<Shard>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsCheckpoint")
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.by_name.len())
            .finish()
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(Error::io(path, "open"))?;
        // SAFETY: the map is read-only and private to this process; like every
        // mmap-based loader we assume the file is not truncated underneath us
        // while the model is loaded.
        let map = unsafe { Mmap::map(&file) }.map_err(Error::io(path, "map"))?;
        Self::parse(path, Bytes::Map(map))
    }

    /// Parses and validates the header of `map` (which came from `path`).
    fn parse(path: &Path, map: Bytes) -> Result<Self> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Shard {
            path: path.to_path_buf(),
            map: Arc::new(map),
            data_start: 8 + header_len,
            metadata,
        })
    }
}

/// A tensor's dtype, shape and raw little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Bytes (possibly unaligned).
    pub data: &'a [u8],
}

impl SafetensorsCheckpoint {
    /// Opens `dir/model.safetensors`, or the shards named by
    /// `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::from_files(&[single]);
        }
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|_| Error::MissingTensor {
            name: "model.safetensors or model.safetensors.index.json".into(),
            location: dir.display().to_string(),
        })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::InFile {
            path: index.clone(),
            message: format!("not JSON: {e}"),
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::InFile {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for v in map.values() {
            let name = v.as_str().ok_or_else(|| Error::InFile {
                path: index.clone(),
                message: "`weight_map` values must be file names".into(),
            })?;
            if name.contains('/') || name.contains('\\') || name == ".." {
                return Err(Error::InFile {
                    path: index.clone(),
                    message: format!("shard `{name}` is not a plain file name"),
                });
            }
            let p = dir.join(name);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        Self::from_files(&files)
    }

    /// Parses one safetensors file held in memory; `source` names it in
    /// errors (e.g. `<memory>`). The same validation as for files.
    pub fn from_bytes(bytes: Vec<u8>, source: &Path) -> Result<Self> {
        Ok(Self::from_shards(vec![Shard::parse(
            source,
            Bytes::Owned(bytes),
        )?]))
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn from_files(files: &[PathBuf]) -> Result<Self> {
        Ok(Self::from_shards(
            files
                .iter()
                .map(|p| Shard::open(p))
                .collect::<Result<Vec<_>>>()?,
        ))
    }

    fn from_shards(shards: Vec<Shard>) -> Self {
        let mut by_name = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.tensors().keys() {
                by_name.insert(name.clone(), i);
            }
        }
        SafetensorsCheckpoint { shards, by_name }
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The raw tensor `name`.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let shard = self
            .by_name
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                location: self.location(),
            })?;
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                location: shard.path.display().to_string(),
            })?;
        let (s, e) = info.data_offsets;
        let data = shard
            .map
            .get(shard.data_start + s..shard.data_start + e)
            .ok_or_else(|| Error::Safetensors {
                path: shard.path.clone(),
                message: format!("tensor `{name}` lies outside the file"),
            })?;
        Ok(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            data,
        })
    }

    fn location(&self) -> String {
        self.shards
            .iter()
            .map(|s| s.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A float tensor (F32, F16 or BF16) of exactly `shape`, as f32.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.raw(name)?;
        check_shape(name, t.shape, shape)?;
        to_f32(name, &t)
    }

    /// A `[rows, cols]` float matrix (F32, F16 or BF16) left in the mapped
    /// file rather than copied.
    pub fn float_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<FloatMatrix> {
        let t = self.raw(name)?;
        check_shape(name, t.shape, &[rows, cols])?;
        let encoding = match t.dtype {
            Dtype::F32 => FloatEncoding::F32,
            Dtype::F16 => FloatEncoding::F16,
            Dtype::BF16 => FloatEncoding::BF16,
            other => {
                return Err(Error::TensorDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    expected: "F32, F16 or BF16",
                });
            }
        };
        let shard = &self.shards[self.by_name[name]];
        let start =
            crate::mapped::offset_in(&shard.map, t.data).ok_or_else(|| Error::Safetensors {
                path: shard.path.clone(),
                message: format!("tensor `{name}` lies outside the file"),
            })?;
        FloatMatrix::mapped(
            name,
            shard.map.clone() as crate::float_matrix::SharedBytes,
            start,
            t.data.len(),
            rows,
            cols,
            encoding,
        )
    }

    /// Lets the pages of tensor `name` leave the resident set once it has
    /// been converted (see [`crate::mapped::release`]).
    pub fn release(&self, name: &str) {
        if let (Ok(t), Some(&i)) = (self.raw(name), self.by_name.get(name))
            && let Bytes::Map(map) = &*self.shards[i].map
        {
            crate::mapped::release(map, t.data);
        }
    }

    /// A scalar float (shape `[]` or `[1]`), as f32.
    pub fn scalar_f32(&self, name: &str) -> Result<f32> {
        let t = self.raw(name)?;
        if t.shape.iter().product::<usize>() != 1 {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: vec![1],
                actual: t.shape.to_vec(),
            });
        }
        Ok(to_f32(name, &t)?[0])
    }

    /// A U8 tensor of exactly `shape`.
    pub fn u8(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        let t = self.raw(name)?;
        check_shape(name, t.shape, shape)?;
        if t.dtype != Dtype::U8 {
            return Err(Error::TensorDtype {
                name: name.to_string(),
                dtype: format!("{:?}", t.dtype),
                expected: "U8",
            });
        }
        Ok(t.data)
    }
}

fn check_shape(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// Decodes with the GGUF row decoder, so both formats share one float path.
fn to_f32(name: &str, t: &RawTensor<'_>) -> Result<Vec<f32>> {
    let ty = match t.dtype {
        Dtype::F32 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        other => {
            return Err(Error::TensorDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
                expected: "F32, F16 or BF16",
            });
        }
    };
    // The header parser checked that the data holds whole elements.
    dequantize(ty, t.data).map_err(|e| Error::Config(format!("tensor `{name}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_bytes_parses_and_names_the_source_in_errors() {
        let data = [1.0f32, -2.0].iter().flat_map(|v| v.to_le_bytes());
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &[0u8; 8]).unwrap();
        let mut bytes = safetensors::serialize([("w", view)], None).unwrap();
        let n = bytes.len();
        bytes[n - 8..].copy_from_slice(&data.collect::<Vec<u8>>());
        let ckpt = SafetensorsCheckpoint::from_bytes(bytes, Path::new("<memory>")).unwrap();
        assert_eq!(ckpt.names(), ["w"]);
        assert_eq!(ckpt.f32("w", &[2]).unwrap(), [1.0, -2.0]);
        let err = SafetensorsCheckpoint::from_bytes(vec![9; 12], Path::new("<memory>"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("<memory>"), "{err}");
    }
}
