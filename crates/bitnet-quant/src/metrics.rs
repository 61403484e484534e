//! Quantization error metrics: how far a quantized tensor is from the original.
//! All sums run in f64 so the metrics do not add error of their own.

use crate::error::{Error, Result};

fn check(op: &'static str, reference: &[f32], approx: &[f32]) -> Result<()> {
    if reference.len() != approx.len() {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!(
                "reference has {} elements, approximation {}",
                reference.len(),
                approx.len()
            ),
        });
    }
    if reference.is_empty() {
        return Err(Error::Empty {
            tensor: "reference".into(),
            op,
        });
    }
    Ok(())
}

/// Mean squared error.
pub fn mse(reference: &[f32], approx: &[f32]) -> Result<f64> {
    check("mse", reference, approx)?;
    let sum: f64 = reference
        .iter()
        .zip(approx)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    Ok(sum / reference.len() as f64)
}

/// Signal-to-quantization-noise ratio in dB: `10 log10(Σx² / Σ(x-y)²)`.
/// Infinite when the approximation is exact.
pub fn sqnr_db(reference: &[f32], approx: &[f32]) -> Result<f64> {
    check("sqnr", reference, approx)?;
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (&a, &b) in reference.iter().zip(approx) {
        signal += f64::from(a).powi(2);
        noise += (f64::from(a) - f64::from(b)).powi(2);
    }
    Ok(10.0 * (signal / noise).log10())
}

/// Cosine similarity; 1 when both are zero, 0 when exactly one is.
pub fn cosine(reference: &[f32], approx: &[f32]) -> Result<f64> {
    check("cosine", reference, approx)?;
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in reference.iter().zip(approx) {
        let (a, b) = (f64::from(a), f64::from(b));
        dot += a * b;
        na += a * a;
        nb += b * b;
    }
    Ok(match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => dot / (na.sqrt() * nb.sqrt()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [1.0, 2.0, 3.0, 5.0];
        assert_eq!(mse(&a, &b).unwrap(), 0.25);
        assert!((sqnr_db(&a, &b).unwrap() - 10.0 * 30f64.log10()).abs() < 1e-12);
        assert_eq!(sqnr_db(&a, &a).unwrap(), f64::INFINITY);
        assert!((cosine(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[0.0, 1.0]).unwrap()).abs() < 1e-12);
        assert_eq!(cosine(&[0.0], &[0.0]).unwrap(), 1.0);
    }

    #[test]
    fn errors() {
        assert!(mse(&[1.0], &[1.0, 2.0]).is_err());
        assert!(cosine(&[], &[]).is_err());
    }
}
