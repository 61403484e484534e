//! Embedding lookup: gathers rows of a `[vocab, hidden]` table by token id.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::shape::Shape;
use crate::tensor::Tensor;

const SUPPORTED: &[DType] = &[DType::F32, DType::F16, DType::BF16];

/// Looks up `ids` in `table` (`[vocab, hidden]`, dtype f32/f16/bf16) and
/// returns an `f32` tensor `[ids.len(), hidden]`.
///
/// Every id is validated before any work: an id `>= vocab` gives
/// [`Error::TokenIdOutOfRange`] naming the id, its position and the vocab.
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let op = OpKind::Embedding;
    if !SUPPORTED.contains(&table.dtype()) {
        return Err(Error::UnsupportedDType {
            op,
            got: table.dtype(),
            supported: SUPPORTED,
        });
    }
    let &[vocab, hidden] = table.dims() else {
        return Err(Error::RankMismatch {
            op,
            expected: "2 ([vocab, hidden])",
            shape: table.shape().clone(),
        });
    };
    if let Some((position, &id)) = ids
        .iter()
        .enumerate()
        .find(|&(_, &id)| usize::try_from(id).map_or(true, |i| i >= vocab))
    {
        return Err(Error::TokenIdOutOfRange {
            op,
            id,
            position,
            vocab,
        });
    }
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for &id in ids {
        // Narrowing first converts only the rows we need, not the whole table.
        let row = table.narrow(0, id as usize, 1)?;
        out.extend(row.to_vec_f32());
    }
    Tensor::from_vec(out, Shape::from([ids.len(), hidden]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Tensor {
        Tensor::from_vec((0..12).map(|x| x as f32).collect::<Vec<_>>(), [4, 3]).unwrap()
    }

    #[test]
    fn gathers_rows_all_float_dtypes() {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let tb = table().to_dtype(dt).unwrap();
            let y = embedding(&tb, &[2, 0, 2]).unwrap();
            assert_eq!(y.dims(), &[3, 3]);
            assert_eq!(y.dtype(), DType::F32);
            assert_eq!(
                y.to_vec_f32(),
                vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 6.0, 7.0, 8.0]
            );
        }
        assert_eq!(embedding(&table(), &[]).unwrap().dims(), &[0, 3]);
    }

    #[test]
    fn strided_table() {
        // Transposed [3,4] -> [4,3] view with the same logical values.
        let stored = Tensor::from_vec(
            (0..12)
                .map(|i| ((i % 4) * 3 + i / 4) as f32)
                .collect::<Vec<_>>(),
            [3, 4],
        )
        .unwrap();
        let tb = stored.transpose(0, 1).unwrap();
        assert_eq!(tb.to_vec_f32(), table().to_vec_f32());
        assert_eq!(
            embedding(&tb, &[3]).unwrap().to_vec_f32(),
            vec![9.0, 10.0, 11.0]
        );
    }

    #[test]
    fn errors() {
        let e = embedding(&table(), &[1, 4]).unwrap_err();
        assert!(matches!(
            e,
            Error::TokenIdOutOfRange {
                id: 4,
                position: 1,
                vocab: 4,
                ..
            }
        ));
        assert!(e.to_string().contains("token id 4"));
        assert!(e.to_string().contains("vocab size 4"));
        let i8t = table().to_dtype(DType::I8).unwrap();
        assert!(matches!(
            embedding(&i8t, &[0]),
            Err(Error::UnsupportedDType { got: DType::I8, .. })
        ));
        let flat = table().reshape(12).unwrap();
        assert!(matches!(
            embedding(&flat, &[0]),
            Err(Error::RankMismatch { .. })
        ));
    }
}
