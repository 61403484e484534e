//! Deciding what tensor type ids 36..=40 mean in one file.
//!
//! bitnet.cpp's fork of ggml numbers I2_S = 36, I8_S = 37, TL1 = 38,
//! TL2 = 39 (file types TL1 = 38, TL2 = 39, I2_S = 40); upstream llama.cpp
//! leaves 36..=38 unused and uses 39 = MXFP4, 40 = NVFP4. Two kinds of
//! evidence decide:
//!
//! - **metadata**: `general.architecture` `bitnet-b1.58` or `bitnet-25`
//!   (bitnet.cpp's names), or a `bitnet*` architecture with
//!   `general.file_type` 40 (bitnet.cpp's I2_S file type), means bitnet.cpp;
//! - **sizes**: a tensor spans from its offset to the next tensor's offset
//!   (or the end of the data), less under `alignment` bytes of padding. An
//!   I2_S tensor of `n` weights spans `n / 4 + 32` bytes; MXFP4 spans
//!   `n / 32 * 17`.
//!
//! When the evidence disagrees, or nothing decides, the reader refuses the
//! tensor with [`crate::Error::AmbiguousTensorType`].

use super::metadata::Metadata;
use super::types::{Dialect, GgmlType, SizeError};

/// Architecture names only bitnet.cpp writes.
pub const BITNET_CPP_ARCHITECTURES: &[&str] = &["bitnet-b1.58", "bitnet-25"];
/// bitnet.cpp's `general.file_type` for an I2_S model.
pub const FILE_TYPE_I2_S: u32 = 40;

/// What the metadata alone says: `Some(BitnetCpp)` for a bitnet.cpp file,
/// `None` when it does not say (upstream files carry no marker).
pub fn metadata_dialect(metadata: &Metadata) -> Option<Dialect> {
    let arch = metadata.get_str("general.architecture").ok()?;
    if BITNET_CPP_ARCHITECTURES.contains(&arch) {
        return Some(Dialect::BitnetCpp);
    }
    let file_type = metadata.get_u32("general.file_type").ok();
    if arch.starts_with("bitnet") && file_type == Some(FILE_TYPE_I2_S) {
        return Some(Dialect::BitnetCpp);
    }
    None
}

/// Why a type id could not be resolved.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Unresolved {
    /// No fork defines the id (in this dialect).
    Unknown(String),
    /// The evidence disagrees or decides nothing.
    Ambiguous(String),
}

/// Whether a tensor of `ty` and `dims` fills `span` bytes, allowing under
/// `alignment` bytes of padding.
fn fits(ty: GgmlType, dims: &[u64], span: u64, alignment: u64) -> Result<u64, SizeError> {
    let size = ty.byte_size(dims)?;
    if size <= span && span - size < alignment {
        Ok(size)
    } else {
        Err(SizeError::Overflow)
    }
}

fn describe(ty: Option<GgmlType>, dims: &[u64]) -> String {
    match ty {
        None => "nothing".to_owned(),
        Some(t) => match t.byte_size(dims) {
            Ok(size) => format!("{t} ({size} bytes)"),
            Err(e) => format!("{t} ({e})"),
        },
    }
}

/// Resolves a raw type id. `span` is the bytes from the tensor's offset
/// to the next tensor (or the end of the data); `hint` is
/// [`metadata_dialect`].
pub(crate) fn resolve(
    id: u32,
    dims: &[u64],
    span: u64,
    alignment: u64,
    hint: Option<Dialect>,
) -> Result<GgmlType, Unresolved> {
    if !GgmlType::is_collision_id(id) {
        return GgmlType::from_id(id, Dialect::Upstream)
            .ok_or_else(|| Unresolved::Unknown(String::new()));
    }
    let bitnet = GgmlType::from_id(id, Dialect::BitnetCpp);
    let upstream = GgmlType::from_id(id, Dialect::Upstream);
    let readings = format!(
        "bitnet.cpp reads it as {}, upstream llama.cpp as {}; the tensor spans {span} bytes",
        describe(bitnet, dims),
        describe(upstream, dims)
    );
    if hint == Some(Dialect::BitnetCpp) {
        let Some(ty) = bitnet else {
            return Err(Unresolved::Unknown(
                "; the metadata names a bitnet.cpp model, and bitnet.cpp defines no tensor type 40"
                    .to_owned(),
            ));
        };
        return match fits(ty, dims, span, alignment) {
            Ok(_) => Ok(ty),
            Err(SizeError::Unsized(_)) => Ok(ty),
            Err(_) => Err(Unresolved::Ambiguous(format!(
                "the metadata names a bitnet.cpp model but the size does not match; {readings}"
            ))),
        };
    }
    let fit = |t: Option<GgmlType>| t.filter(|&t| fits(t, dims, span, alignment).is_ok());
    match (fit(bitnet), fit(upstream)) {
        (Some(t), None) | (None, Some(t)) => Ok(t),
        (Some(_), Some(_)) => Err(Unresolved::Ambiguous(format!(
            "the size matches both and the metadata names no bitnet.cpp architecture; {readings}"
        ))),
        (None, None) => Err(Unresolved::Ambiguous(format!(
            "the size matches neither and the metadata names no bitnet.cpp architecture; \
             {readings}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::metadata::MetadataValue;

    fn meta(arch: &str, file_type: Option<u32>) -> Metadata {
        let mut m = Metadata::new("<test>");
        m.insert(
            "general.architecture".into(),
            MetadataValue::String(arch.into()),
        )
        .unwrap();
        if let Some(ft) = file_type {
            m.insert("general.file_type".into(), MetadataValue::U32(ft))
                .unwrap();
        }
        m
    }

    #[test]
    fn metadata_evidence() {
        use Dialect::BitnetCpp;
        assert_eq!(
            metadata_dialect(&meta("bitnet-b1.58", None)),
            Some(BitnetCpp)
        );
        assert_eq!(
            metadata_dialect(&meta("bitnet-25", Some(1))),
            Some(BitnetCpp)
        );
        assert_eq!(metadata_dialect(&meta("bitnet", Some(40))), Some(BitnetCpp));
        assert_eq!(metadata_dialect(&meta("bitnet", Some(36))), None);
        assert_eq!(metadata_dialect(&meta("llama", Some(40))), None);
        assert_eq!(metadata_dialect(&Metadata::new("<test>")), None);
    }

    #[test]
    fn sizes_decide_without_metadata() {
        let n = 4096u64;
        let i2s = n / 4 + 32;
        let mxfp4 = n / 32 * 17;
        assert_eq!(resolve(36, &[n], i2s, 32, None), Ok(GgmlType::I2_S));
        assert_eq!(resolve(39, &[n], mxfp4, 32, None), Ok(GgmlType::MXFP4));
        assert_eq!(resolve(37, &[n], n, 32, None), Ok(GgmlType::I8_S));
        // padding under the alignment is fine, a whole extra alignment is not
        assert_eq!(resolve(36, &[n], i2s + 31, 32, None), Ok(GgmlType::I2_S));
        assert!(matches!(
            resolve(36, &[n], i2s + 32, 32, None),
            Err(Unresolved::Ambiguous(_))
        ));
        // TL2 cannot be sized, so id 39 with an I2_S-like size is ambiguous
        assert!(matches!(
            resolve(39, &[n], i2s, 32, None),
            Err(Unresolved::Ambiguous(_))
        ));
    }

    #[test]
    fn metadata_and_size_must_agree() {
        let hint = Some(Dialect::BitnetCpp);
        let n = 4096u64;
        assert_eq!(resolve(36, &[n], n / 4 + 32, 32, hint), Ok(GgmlType::I2_S));
        let e = resolve(36, &[n], n / 32 * 17, 32, hint).unwrap_err();
        assert!(
            matches!(&e, Unresolved::Ambiguous(r) if r.contains("I2_S (1056 bytes)")),
            "{e:?}"
        );
        assert!(matches!(
            resolve(39, &[n], n / 32 * 17, 32, hint),
            Ok(GgmlType::TL2)
        ));
        assert!(matches!(
            resolve(40, &[n], 100, 32, hint),
            Err(Unresolved::Unknown(_))
        ));
        assert_eq!(resolve(35, &[256], 66, 32, hint), Ok(GgmlType::TQ2_0));
        assert!(matches!(
            resolve(33, &[256], 66, 32, None),
            Err(Unresolved::Unknown(_))
        ));
    }
}
