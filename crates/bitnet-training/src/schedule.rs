//! Learning-rate, weight-decay and quantization schedules, all pure
//! functions of the optimizer step so a resumed run continues exactly.
//!
//! - [`LrSchedule`]: constant, linear or cosine decay after a linear warmup,
//!   step decay, and BitNet b1.58's two-stage schedule ("The Era of 1-bit
//!   LLMs: Training Tips, Code and FAQ"): a high peak decaying linearly
//!   through the first half, then at mid-training a drop to a lower rate
//!   decaying to zero, with weight decay switched off in the second stage.
//! - [`QuantSchedule`]: progressive quantization λ (0 = float, 1 = ternary),
//!   ramped globally or layer by layer.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the learning rate (and weight decay) evolve over `total` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout (after an optional warmup).
    Constant {
        /// Linear warmup steps from 0.
        #[serde(default)]
        warmup: u64,
    },
    /// Warmup, then linear decay to `min_ratio · lr` at the last step.
    Linear {
        /// Linear warmup steps from 0.
        #[serde(default)]
        warmup: u64,
        /// Final rate as a fraction of the base rate.
        #[serde(default)]
        min_ratio: f32,
    },
    /// Warmup, then half-cosine decay to `min_ratio · lr`.
    Cosine {
        /// Linear warmup steps from 0.
        #[serde(default)]
        warmup: u64,
        /// Final rate as a fraction of the base rate.
        #[serde(default)]
        min_ratio: f32,
    },
    /// Multiply by `gamma` every `every` steps.
    Step {
        /// Steps between drops.
        every: u64,
        /// Factor per drop.
        gamma: f32,
    },
    /// BitNet b1.58's two-stage schedule: warmup, linear decay from the peak
    /// to `stage1_end` · lr at mid-training, then a restart at `stage2_peak`
    /// · lr decaying linearly to 0; weight decay is 0 in the second stage.
    TwoStage {
        /// Linear warmup steps from 0.
        #[serde(default)]
        warmup: u64,
        /// Rate at the end of stage 1, as a fraction of the peak.
        stage1_end: f32,
        /// Rate at the start of stage 2, as a fraction of the peak.
        stage2_peak: f32,
    },
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule::Cosine {
            warmup: 0,
            min_ratio: 0.1,
        }
    }
}

impl LrSchedule {
    /// Rejects nonsensical settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("lr schedule {self:?}: {m}")));
        match *self {
            LrSchedule::Linear { min_ratio, .. } | LrSchedule::Cosine { min_ratio, .. }
                if !(0.0..=1.0).contains(&min_ratio) =>
            {
                bad("min_ratio must be in [0, 1]")
            }
            LrSchedule::Step { every: 0, .. } => bad("`every` must be positive"),
            LrSchedule::Step { gamma, .. } if gamma.is_nan() || gamma <= 0.0 => {
                bad("gamma must be positive")
            }
            LrSchedule::TwoStage {
                stage1_end,
                stage2_peak,
                ..
            } if !(stage1_end >= 0.0 && stage2_peak >= 0.0) => bad("ratios must be non-negative"),
            _ => Ok(()),
        }
    }

    /// Multiplier of the base rate for 0-based `step` of `total`.
    pub fn lr_factor(&self, step: u64, total: u64) -> f32 {
        let warm = |w: u64| -> Option<f32> { (step < w).then(|| (step + 1) as f32 / w as f32) };
        // Progress through the decay phase, in [0, 1].
        let progress = |w: u64| -> f32 {
            let span = total.saturating_sub(w).max(1) as f32;
            ((step.saturating_sub(w)) as f32 / span).min(1.0)
        };
        match *self {
            LrSchedule::Constant { warmup } => warm(warmup).unwrap_or(1.0),
            LrSchedule::Linear { warmup, min_ratio } => {
                warm(warmup).unwrap_or_else(|| 1.0 - (1.0 - min_ratio) * progress(warmup))
            }
            LrSchedule::Cosine { warmup, min_ratio } => warm(warmup).unwrap_or_else(|| {
                let c = 0.5 * (1.0 + (std::f32::consts::PI * progress(warmup)).cos());
                min_ratio + (1.0 - min_ratio) * c
            }),
            LrSchedule::Step { every, gamma } => gamma.powi((step / every.max(1)) as i32),
            LrSchedule::TwoStage {
                warmup,
                stage1_end,
                stage2_peak,
            } => {
                if let Some(f) = warm(warmup) {
                    return f;
                }
                let mid = total / 2;
                if step < mid {
                    let span = mid.saturating_sub(warmup).max(1) as f32;
                    let t = (step - warmup.min(step)) as f32 / span;
                    1.0 - (1.0 - stage1_end) * t
                } else {
                    let span = (total - mid).max(1) as f32;
                    stage2_peak * (1.0 - (step - mid) as f32 / span)
                }
            }
        }
    }

    /// Multiplier of the base weight decay at `step`: 1, except 0 in the
    /// second stage of [`LrSchedule::TwoStage`].
    pub fn wd_factor(&self, step: u64, total: u64) -> f32 {
        match self {
            LrSchedule::TwoStage { .. } if step >= total / 2 => 0.0,
            _ => 1.0,
        }
    }
}

/// Progressive quantization: λ ramps linearly from 0 to 1 over `ramp`
/// steps starting at `start`; with `per_layer`, the ramp window is split
/// into consecutive slices, layer 0 first. `ramp = 0` means ternary from
/// the first step (plain QAT).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantSchedule {
    /// First step of the ramp.
    pub start: u64,
    /// Length of the ramp in steps.
    pub ramp: u64,
    /// Quantize layer by layer instead of all at once.
    pub per_layer: bool,
}

impl QuantSchedule {
    /// λ for each of `layers` layers at `step`.
    pub fn lambdas(&self, step: u64, layers: usize) -> Vec<f32> {
        let frac = |s: u64, len: u64| -> f32 {
            if len == 0 {
                return if step >= s { 1.0 } else { 0.0 };
            }
            (step.saturating_sub(s) as f32 / len as f32).min(1.0)
        };
        if !self.per_layer || layers == 0 {
            return vec![frac(self.start, self.ramp); layers];
        }
        let slice = self.ramp / layers as u64;
        (0..layers)
            .map(|l| frac(self.start + l as u64 * slice, slice))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_the_schedules() {
        let c = LrSchedule::Cosine {
            warmup: 10,
            min_ratio: 0.1,
        };
        assert_eq!(c.lr_factor(0, 110), 0.1);
        assert_eq!(c.lr_factor(9, 110), 1.0);
        assert_eq!(c.lr_factor(10, 110), 1.0);
        assert!((c.lr_factor(60, 110) - 0.55).abs() < 1e-6);
        assert!((c.lr_factor(110, 110) - 0.1).abs() < 1e-6);
        let l = LrSchedule::Linear {
            warmup: 0,
            min_ratio: 0.0,
        };
        assert_eq!(l.lr_factor(50, 100), 0.5);
        let s = LrSchedule::Step {
            every: 10,
            gamma: 0.5,
        };
        assert_eq!(s.lr_factor(25, 100), 0.25);
        let t = LrSchedule::TwoStage {
            warmup: 0,
            stage1_end: 0.5,
            stage2_peak: 0.25,
        };
        assert_eq!(t.lr_factor(0, 100), 1.0);
        assert_eq!(t.lr_factor(25, 100), 0.75);
        assert_eq!(t.lr_factor(50, 100), 0.25);
        assert_eq!(t.wd_factor(49, 100), 1.0);
        assert_eq!(t.wd_factor(50, 100), 0.0);
        assert_eq!(c.wd_factor(99, 100), 1.0);
        assert!(
            LrSchedule::Step {
                every: 0,
                gamma: 0.5
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn progressive_quantization() {
        let g = QuantSchedule {
            start: 10,
            ramp: 20,
            per_layer: false,
        };
        assert_eq!(g.lambdas(0, 2), vec![0.0, 0.0]);
        assert_eq!(g.lambdas(20, 2), vec![0.5, 0.5]);
        assert_eq!(g.lambdas(40, 2), vec![1.0, 1.0]);
        let p = QuantSchedule {
            start: 0,
            ramp: 20,
            per_layer: true,
        };
        assert_eq!(p.lambdas(5, 2), vec![0.5, 0.0]);
        assert_eq!(p.lambdas(15, 2), vec![1.0, 0.5]);
        assert_eq!(QuantSchedule::default().lambdas(0, 3), vec![1.0; 3]);
    }
}
