//! Rotary position embedding in the Hugging Face "rotate_half" convention
//! (first half / second half pairing, not interleaved).

use crate::error::{Error, Result};
use crate::ops::OpKind;
use crate::tensor::Tensor;

/// Applies RoPE to `x` shaped `[.., seq, head_dim]` (`head_dim` even).
///
/// With `d = head_dim`, `h = d / 2`, for each `i < h`:
/// `inv_freq[i] = 1 / theta^(2i/d)`, `a = pos * inv_freq[i]`,
/// `out[i] = x[i]·cos a − x[i+h]·sin a`, `out[i+h] = x[i+h]·cos a + x[i]·sin a`.
/// All arithmetic is `f32`, in that order, to track the PyTorch reference.
/// `positions[s]` is the absolute position of sequence index `s`;
/// `positions.len()` must equal `seq`.
pub fn rope_rotate_half(x: &Tensor, positions: &[usize], theta: f32) -> Result<Tensor> {
    let op = OpKind::Rope;
    let dims = x.dims();
    if dims.len() < 2 {
        return Err(Error::RankMismatch {
            op,
            expected: ">= 2 ([.., seq, head_dim])",
            shape: x.shape().clone(),
        });
    }
    let (seq, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let invalid = |msg: String| Err(Error::InvalidArgument { op, msg });
    if d == 0 || d % 2 != 0 {
        return invalid(format!(
            "head_dim must be even and non-zero, got {d} (shape {})",
            x.shape()
        ));
    }
    if positions.len() != seq {
        return invalid(format!(
            "positions.len() = {} but seq = {seq} (shape {})",
            positions.len(),
            x.shape()
        ));
    }
    if !(theta.is_finite() && theta > 0.0) {
        return invalid(format!("theta must be finite and > 0, got {theta}"));
    }
    let table = super::rows::RopeTable::new(d, theta, positions.iter().copied());
    let data = x.f32_data(op)?;
    let mut out = vec![0.0f32; data.len()];
    for (src, dst) in data
        .chunks_exact(seq * d)
        .zip(out.chunks_exact_mut(seq * d))
    {
        for s in 0..seq {
            table.rotate(&src[s * d..(s + 1) * d], s, &mut dst[s * d..(s + 1) * d]);
        }
    }
    Tensor::from_vec(out, x.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, t};

    fn vals(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37).sin() + 0.1 * i as f32)
            .collect()
    }

    #[test]
    fn position_zero_is_identity() {
        let v = vals(2 * 8);
        let x = t(&v, &[2, 8]);
        let y = rope_rotate_half(&x, &[0, 0], 10000.0).unwrap();
        assert_eq!(y.to_vec_f32(), v);
    }

    #[test]
    fn matches_naive_formula() {
        let (heads, seq, d) = (2, 3, 6);
        let v = vals(heads * seq * d);
        let pos = [0usize, 5, 17];
        let theta = 500_000.0f32;
        let y = rope_rotate_half(&t(&v, &[heads, seq, d]), &pos, theta)
            .unwrap()
            .to_vec_f32();
        let mut want = vec![0.0f32; v.len()];
        for hh in 0..heads {
            for (s, &p) in pos.iter().enumerate() {
                let base = (hh * seq + s) * d;
                for i in 0..d / 2 {
                    let ang = p as f64 / (theta as f64).powf(2.0 * i as f64 / d as f64);
                    let (x1, x2) = (v[base + i] as f64, v[base + i + d / 2] as f64);
                    want[base + i] = (x1 * ang.cos() - x2 * ang.sin()) as f32;
                    want[base + i + d / 2] = (x2 * ang.cos() + x1 * ang.sin()) as f32;
                }
            }
        }
        assert_close(&y, &want, 1e-4);
        // Rotation preserves the norm of each (i, i+h) pair.
        let n_in: f32 = v.iter().map(|a| a * a).sum();
        let n_out: f32 = y.iter().map(|a| a * a).sum();
        assert!((n_in - n_out).abs() < 1e-3);
    }

    #[test]
    fn strided_input() {
        let v = vals(2 * 4);
        let x = t(&v, &[4, 2]).transpose(0, 1).unwrap(); // [seq=2, d=4]
        let got = rope_rotate_half(&x, &[1, 2], 10000.0).unwrap();
        let want = rope_rotate_half(&x.contiguous(), &[1, 2], 10000.0).unwrap();
        assert_eq!(got.to_vec_f32(), want.to_vec_f32());
    }

    #[test]
    fn errors() {
        let x = t(&[0.0; 6], &[2, 3]);
        assert!(matches!(
            rope_rotate_half(&x, &[0, 1], 1e4),
            Err(Error::InvalidArgument { .. })
        ));
        let y = t(&[0.0; 8], &[2, 4]);
        assert!(rope_rotate_half(&y, &[0], 1e4).is_err());
        assert!(rope_rotate_half(&y, &[0, 1], 0.0).is_err());
        assert!(matches!(
            rope_rotate_half(&t(&[0.0; 4], &[4]), &[0], 1e4),
            Err(Error::RankMismatch { .. })
        ));
    }
}
