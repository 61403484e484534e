//! Quantizers that turn float tensors into integer codes plus scales, exactly
//! as the reference (HF transformers' BitNet integration) computes them.
//!
//! Conventions shared by every quantizer here:
//! - rounding is half to even (`f32::round_ties_even`, like `torch.round`);
//! - a quantization *scale* `s` maps floats to codes, `q = clamp(round(x * s))`,
//!   and codes back to floats by division, `x ≈ q / s`;
//! - epsilons clamp the statistic (`max(stat, eps)`), they are never added;
//! - NaN and infinities are rejected with the tensor's name, never quantized.

pub mod int4;
pub mod int8;
pub mod ternary;

use crate::error::{Error, Result};

/// The smallest statistic a scale is computed from (the reference's 1e-5 clamp).
pub const EPS: f32 = 1e-5;

/// Rounds half to even, like `f32::round_ties_even` (and `torch.round`).
///
/// Baseline x86-64 has no rounding instruction, so `round_ties_even` becomes
/// a libm call per element; adding and subtracting 1.5·2^23 makes the FPU's
/// default round-to-nearest-even do the work in two vectorizable adds. Exact
/// for |v| < 2^22; larger magnitudes (already integers or halves) take the
/// library path.
#[inline]
pub fn round_half_even(v: f32) -> f32 {
    if v.abs() < 4_194_304.0 {
        round_small(v)
    } else {
        v.round_ties_even()
    }
}

/// [`round_half_even`] for |v| < 2^22 only (callers bound `v` first); no
/// branch, so loops over it vectorize.
#[inline]
pub(crate) fn round_small(v: f32) -> f32 {
    bitnet_core::ops::round_half_even_small(v)
}

/// Checks that `data` is non-empty and finite, naming `tensor` otherwise.
pub(crate) fn check_finite(tensor: &str, data: &[f32], op: &'static str) -> Result<()> {
    if data.is_empty() {
        return Err(Error::Empty {
            tensor: tensor.to_string(),
            op,
        });
    }
    // Branch-free scan (vectorizes); locate the bad element only on failure.
    let all_finite = data
        .chunks(64)
        .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()));
    if !all_finite
        && let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite())
    {
        return Err(Error::NonFinite {
            tensor: tensor.to_string(),
            index,
            value,
        });
    }
    Ok(())
}

/// Checks that a `rows x cols` matrix matches `len` elements.
pub(crate) fn check_matrix(op: &'static str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!("{len} elements cannot be a [{rows}, {cols}] matrix"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::round_half_even;
    use proptest::prelude::*;

    #[test]
    fn ties_and_edges() {
        for v in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -2.5,
            126.5,
            4_194_303.5,
            4_194_304.5,
            8_388_609.0,
            -0.0,
            1e30,
        ] {
            // Values, not bits: -0.5 may round to +0.0, which casts to the same code.
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    proptest! {
        #[test]
        fn equals_library_rounding(bits in any::<u32>()) {
            let v = f32::from_bits(bits);
            prop_assume!(v.is_finite());
            // -0.0 and 0.0 compare equal; the sign of zero does not matter here.
            prop_assert_eq!(round_half_even(v), v.round_ties_even());
        }
    }
}
