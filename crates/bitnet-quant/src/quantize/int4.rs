//! Symmetric int4 quantization per group (for mixed-precision layers).
//!
//! Each run of `group` consecutive values: `s = 7 / max(absmax, 1e-5)`,
//! `q = clamp(round_half_even(x * s), -8, 7)`, dequantized `q / s`. Codes are
//! packed two per byte, the even element in the low nibble (two's complement).

use super::{EPS, check_finite};
use crate::error::{Error, Result};

/// Int4 codes with one scale per group.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Groups {
    /// Number of values.
    pub len: usize,
    /// Values per scale.
    pub group: usize,
    /// Packed nibbles, `ceil(len / 2)` bytes.
    pub packed: Vec<u8>,
    /// One scale per group.
    pub scales: Vec<f32>,
}

/// Quantizes `data` (named `tensor`) in groups of `group` values.
pub fn quantize(tensor: &str, data: &[f32], group: usize) -> Result<Int4Groups> {
    check_finite(tensor, data, "int4 quantize")?;
    if group == 0 {
        return Err(Error::Unsupported(
            "int4 group size must be at least 1".into(),
        ));
    }
    let mut packed = vec![0u8; data.len().div_ceil(2)];
    let mut scales = Vec::with_capacity(data.len().div_ceil(group));
    for (g, chunk) in data.chunks(group).enumerate() {
        let absmax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = 7.0 / absmax.max(EPS);
        scales.push(s);
        for (j, &x) in chunk.iter().enumerate() {
            let i = g * group + j;
            let q = super::round_half_even(x * s).clamp(-8.0, 7.0) as i8;
            packed[i / 2] |= ((q as u8) & 0x0f) << (4 * (i % 2));
        }
    }
    Ok(Int4Groups {
        len: data.len(),
        group,
        packed,
        scales,
    })
}

impl Int4Groups {
    /// The signed code of element `i`.
    pub fn code(&self, i: usize) -> i8 {
        let nibble = (self.packed[i / 2] >> (4 * (i % 2))) & 0x0f;
        ((nibble << 4) as i8) >> 4
    }

    /// Dequantized values `q / s`.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.len)
            .map(|i| f32::from(self.code(i)) / self.scales[i / self.group])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_half_step() {
        let data: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let q = quantize("w", &data, 8).unwrap();
        for (i, (&x, y)) in data.iter().zip(q.dequantize()).enumerate() {
            let step = 1.0 / q.scales[i / 8];
            assert!((x - y).abs() <= 0.5 * step + 1e-6, "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn extremes_and_sign() {
        let q = quantize("w", &[-7.0, 7.0, 0.5, -0.5], 4).unwrap();
        assert_eq!(
            (0..4).map(|i| q.code(i)).collect::<Vec<_>>(),
            vec![-7, 7, 0, 0]
        );
        assert!(quantize("w", &[1.0], 0).is_err());
        assert!(quantize("w", &[f32::NAN], 4).is_err());
    }
}
