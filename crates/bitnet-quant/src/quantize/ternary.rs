//! Ternary absmean quantization (`WeightQuant` in the reference).
//!
//! For each group of weights `g` (the whole tensor, one output row, or a run
//! of `n` consecutive weights in a row): `s = 1 / max(mean(|g|), 1e-5)` and
//! `t = clamp(round_half_even(w * s), -1, 1)`; dequantized `t / s`.

use super::{EPS, check_finite, check_matrix};
use crate::error::{Error, Result};

/// Which weights share one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Granularity {
    /// One scale for the whole tensor (the BitNet b1.58 reference).
    #[default]
    PerTensor,
    /// One scale per output row.
    PerChannel,
    /// One scale per run of this many weights along a row (the last run of a
    /// row may be shorter).
    PerGroup(usize),
}

/// A ternary weight matrix: codes in {-1, 0, 1} and quantization scales.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryWeights {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Row-major codes, `rows * cols` of them.
    pub codes: Vec<i8>,
    /// Quantization scales `s` (codes = round(w * s)); one per group, groups
    /// ordered row-major.
    pub scales: Vec<f32>,
    /// How scales map to weights.
    pub granularity: Granularity,
}

impl TernaryWeights {
    /// Number of weights per scale group along a row.
    fn group_len(&self) -> usize {
        group_len(self.granularity, self.cols)
    }

    /// Checks that the fields agree (they are public, so a caller may have
    /// built them by hand): code count, code values, scale count and values.
    pub fn check(&self) -> Result<()> {
        check_matrix("ternary weights", self.codes.len(), self.rows, self.cols)?;
        check_codes(&self.codes)?;
        let expected = match self.granularity {
            Granularity::PerTensor => 1,
            Granularity::PerChannel => self.rows,
            Granularity::PerGroup(0) => {
                return Err(Error::Unsupported(
                    "ternary group size must be at least 1".into(),
                ));
            }
            Granularity::PerGroup(n) => self.rows * self.cols.div_ceil(n),
        };
        if self.scales.len() != expected {
            return Err(Error::ShapeMismatch {
                op: "ternary weights",
                detail: format!(
                    "{:?} scales for a [{}, {}] matrix must number {expected}, got {}",
                    self.granularity,
                    self.rows,
                    self.cols,
                    self.scales.len()
                ),
            });
        }
        match self.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            Some(&value) => Err(Error::BadScale {
                what: "ternary",
                value,
            }),
            None => Ok(()),
        }
    }

    /// The quantization scale of element (`row`, `col`).
    pub fn scale_at(&self, row: usize, col: usize) -> f32 {
        match self.granularity {
            Granularity::PerTensor => self.scales[0],
            Granularity::PerChannel => self.scales[row],
            Granularity::PerGroup(_) => {
                let per_row = self.cols.div_ceil(self.group_len());
                self.scales[row * per_row + col / self.group_len()]
            }
        }
    }

    /// Float weights the codes stand for, `t / s`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.codes.len());
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(f32::from(self.codes[r * self.cols + c]) / self.scale_at(r, c));
            }
        }
        out
    }

    /// Fraction of codes that are zero.
    pub fn sparsity(&self) -> f64 {
        if self.codes.is_empty() {
            return 0.0;
        }
        self.codes.iter().filter(|&&c| c == 0).count() as f64 / self.codes.len() as f64
    }
}

fn group_len(granularity: Granularity, cols: usize) -> usize {
    match granularity {
        Granularity::PerTensor | Granularity::PerChannel => cols,
        Granularity::PerGroup(n) => n,
    }
}

/// Absmean scale of a group: `1 / max(mean(|w|), 1e-5)`.
///
/// The sum runs in f64 so the mean is the correctly rounded f32 mean, which is
/// what PyTorch's cascaded f32 reduction gives in practice; the division by the
/// count happens in f32 like the reference's `mean`. Weights so large that
/// the f32 sum overflows give an infinite mean and a zero scale, which
/// [`quantize`] rejects.
pub fn absmean_scale(group: &[f32]) -> f32 {
    // Eight f64 lanes: vectorizes, and f64's 29 spare bits make the lane
    // order invisible after rounding to f32.
    let mut lanes = [0.0f64; 8];
    let chunks = group.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|v| f64::from(v.abs())).sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += f64::from(v.abs());
        }
    }
    let sum = lanes.iter().sum::<f64>() + tail;
    let mean = (sum as f32) / group.len() as f32;
    1.0 / mean.max(EPS)
}

/// Checks that a scale and its inverse (the dequantizing multiplier) are
/// positive and finite in f32.
fn check_scale(tensor: &str, s: f32) -> Result<f32> {
    if s.is_finite() && s > 0.0 && (1.0 / s).is_finite() {
        Ok(s)
    } else {
        Err(Error::ScaleOutOfRange {
            tensor: tensor.to_string(),
            scale: s,
        })
    }
}

/// The ternary code of `w` under scale `s`: round first, then clamp.
#[inline]
pub fn ternary_code(w: f32, s: f32) -> i8 {
    // Clamping to ±2 first changes no result (rounding is monotonic) and
    // keeps the branch-free rounding in range.
    super::round_small((w * s).clamp(-2.0, 2.0)).clamp(-1.0, 1.0) as i8
}

/// Quantizes a row-major `rows x cols` float matrix named `tensor` to ternary.
///
/// ```
/// use bitnet_quant::quantize::ternary::{quantize, Granularity};
/// // mean |w| = 1, so the scale is 1; 0.5 and -0.5 round to even (0).
/// let t = quantize("w", &[0.5, -0.5, 1.5, 1.5], 1, 4, Granularity::PerTensor).unwrap();
/// assert_eq!(t.codes, vec![0, 0, 1, 1]);
/// assert_eq!(t.scales, vec![1.0]);
/// ```
pub fn quantize(
    tensor: &str,
    data: &[f32],
    rows: usize,
    cols: usize,
    granularity: Granularity,
) -> Result<TernaryWeights> {
    check_matrix("ternary quantize", data.len(), rows, cols)?;
    check_finite(tensor, data, "ternary quantize")?;
    if let Granularity::PerGroup(0) = granularity {
        return Err(Error::Unsupported(
            "ternary group size must be at least 1".into(),
        ));
    }
    let mut codes = vec![0i8; data.len()];
    let scales = match granularity {
        Granularity::PerTensor => {
            let s = check_scale(tensor, absmean_scale(data))?;
            for (c, &w) in codes.iter_mut().zip(data) {
                *c = ternary_code(w, s);
            }
            vec![s]
        }
        Granularity::PerChannel | Granularity::PerGroup(_) => {
            let n = group_len(granularity, cols);
            let mut scales = Vec::with_capacity(rows * cols.div_ceil(n));
            for (row, out) in data.chunks(cols).zip(codes.chunks_mut(cols)) {
                for (g, o) in row.chunks(n).zip(out.chunks_mut(n)) {
                    let s = check_scale(tensor, absmean_scale(g))?;
                    for (c, &w) in o.iter_mut().zip(g) {
                        *c = ternary_code(w, s);
                    }
                    scales.push(s);
                }
            }
            scales
        }
    };
    Ok(TernaryWeights {
        rows,
        cols,
        codes,
        scales,
        granularity,
    })
}

/// Checks that every code is -1, 0 or 1.
pub fn check_codes(codes: &[i8]) -> Result<()> {
    // A branch-free pass first (it vectorizes; `position` would not), the
    // search for the culprit only when there is one.
    if codes
        .iter()
        .fold(true, |ok, &c| ok & ((c as u8).wrapping_add(1) <= 2))
    {
        return Ok(());
    }
    match codes.iter().position(|c| !(-1..=1).contains(c)) {
        Some(index) => Err(Error::NotTernary {
            index,
            code: codes[index],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example_rounds_half_to_even() {
        let t = quantize("w", &[0.5, -0.5, 1.5, 1.5], 1, 4, Granularity::PerTensor).unwrap();
        assert_eq!(t.codes, vec![0, 0, 1, 1]);
        assert_eq!(t.dequantize(), vec![0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn all_zero_tensor_uses_epsilon() {
        let t = quantize("w", &[0.0; 6], 2, 3, Granularity::PerTensor).unwrap();
        assert_eq!(t.codes, vec![0; 6]);
        assert_eq!(t.scales, vec![1.0 / EPS]);
    }

    #[test]
    fn per_channel_and_group_scales() {
        let w = [1.0, -1.0, 2.0, 2.0, 0.0, 0.0, 4.0, -4.0];
        let ch = quantize("w", &w, 2, 4, Granularity::PerChannel).unwrap();
        assert_eq!(ch.scales, vec![1.0 / 1.5, 1.0 / 2.0]);
        assert_eq!(ch.codes, vec![1, -1, 1, 1, 0, 0, 1, -1]);
        let gr = quantize("w", &w, 2, 4, Granularity::PerGroup(3)).unwrap();
        // Row 0: groups [1,-1,2] and [2]; row 1: [0,0,4] and [-4].
        assert_eq!(gr.scales.len(), 4);
        assert_eq!(gr.scale_at(1, 3), 0.25);
        assert_eq!(gr.codes, vec![1, -1, 1, 1, 0, 0, 1, -1]);
    }

    #[test]
    fn rejects_nan_with_name_and_index() {
        let err = quantize(
            "blk.3.ffn_up",
            &[1.0, f32::NAN],
            1,
            2,
            Granularity::PerTensor,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("blk.3.ffn_up") && msg.contains("element 1"),
            "{msg}"
        );
        assert!(matches!(
            quantize("w", &[f32::INFINITY], 1, 1, Granularity::PerTensor),
            Err(Error::NonFinite { .. })
        ));
    }

    #[test]
    fn rejects_empty_and_bad_shapes() {
        assert!(matches!(
            quantize("w", &[], 0, 0, Granularity::PerTensor),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            quantize("w", &[1.0; 5], 2, 3, Granularity::PerTensor),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(quantize("w", &[1.0; 4], 2, 2, Granularity::PerGroup(0)).is_err());
    }

    #[test]
    fn rejects_weights_whose_scale_overflows() {
        for w in [vec![f32::MAX, f32::MAX], vec![f32::MAX]] {
            let n = w.len();
            let err = quantize("huge", &w, 1, n, Granularity::PerTensor).unwrap_err();
            assert!(matches!(err, Error::ScaleOutOfRange { .. }), "{err}");
            assert!(err.to_string().contains("huge"), "{err}");
        }
    }

    #[test]
    fn check_catches_hand_built_inconsistencies() {
        let mut t = quantize("w", &[1.0, -1.0, 0.5, 2.0], 2, 2, Granularity::PerChannel).unwrap();
        assert!(t.check().is_ok());
        t.scales.pop();
        assert!(matches!(t.check(), Err(Error::ShapeMismatch { .. })));
        t.scales = vec![1.0, f32::NAN];
        assert!(matches!(t.check(), Err(Error::BadScale { .. })));
        t.scales = vec![1.0, 1.0];
        t.codes[0] = 5;
        assert!(matches!(t.check(), Err(Error::NotTernary { .. })));
    }

    #[test]
    fn check_codes_names_first_bad_code() {
        assert!(check_codes(&[-1, 0, 1]).is_ok());
        assert!(matches!(
            check_codes(&[0, 2]),
            Err(Error::NotTernary { index: 1, code: 2 })
        ));
    }
}
