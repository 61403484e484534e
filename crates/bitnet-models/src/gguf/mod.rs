//! GGUF, llama.cpp's model container: read ([`GgufFile`], [`GgufContent`])
//! and write ([`GgufWriter`]), including llama.cpp's ternary TQ1_0/TQ2_0 and
//! bitnet.cpp's I2_S; dequantize the float storage types (F32, F16, BF16,
//! Q8_0, Q4_K, Q6_K) row by row ([`dequant`]) and encode them
//! ([`encode`], ports of ggml's reference quantizers). Large files can be
//! written tensor by tensor ([`GgufWriter::declare_tensor`],
//! [`GgufWriter::stream_to`]).
//!
//! All integers are little-endian. Versions 2 and 3 share this layout
//! (version 1 had 32-bit counts; version 3 only allowed big-endian files,
//! which this crate does not read).
//!
//! ```text
//! header
//!   0   4  magic "GGUF" (47 47 55 46)
//!   4   4  u32 version (2 or 3)
//!   8   8  u64 tensor count
//!  16   8  u64 metadata pair count
//!  24      metadata pairs, then tensor infos
//!
//! metadata pair
//!   8        u64 key length k        (key: UTF-8, capped at 64 KiB)
//!   k        key bytes               e.g. "general.architecture"
//!   4        u32 value type (0..=12, see `metadata`)
//!   ...      value; an array is: u32 element type | u64 count | elements
//!
//! tensor info
//!   8        u64 name length m       (UTF-8, capped at 4 KiB)
//!   m        name bytes              e.g. "blk.0.attn_q.weight"
//!   4        u32 n_dims (1..=4)
//!   8*n_dims u64 dims, ne[0] first (fastest varying; the row length)
//!   4        u32 type id (raw; 36..=40 depend on the dialect)
//!   8        u64 offset from the data section start (multiple of alignment)
//!
//! padding to `general.alignment` (u32, default 32, a power of two)
//! data section: each tensor at its offset, zero-padded to the alignment
//! ```

pub mod dequant;
pub mod dialect;
pub mod encode;
pub mod metadata;
pub mod reader;
pub mod types;
pub mod writer;

pub use dequant::{DequantError, dequantize, dequantize_row};
pub use dialect::metadata_dialect;
pub use metadata::{Metadata, MetadataArray, MetadataValue, ValueType};
pub use reader::{GgufContent, GgufFile, ReadLimits, TensorInfo};
pub use types::{Dialect, GgmlType, Layout, SizeError};
pub use writer::{GgufStream, GgufWriter};

/// The file magic.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version the writer produces.
pub const VERSION: u32 = 3;
/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
