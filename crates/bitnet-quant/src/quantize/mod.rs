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

/// Checks that `data` is non-empty and finite, naming `tensor` otherwise.
pub(crate) fn check_finite(tensor: &str, data: &[f32], op: &'static str) -> Result<()> {
    if data.is_empty() {
        return Err(Error::Empty {
            tensor: tensor.to_string(),
            op,
        });
    }
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
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
