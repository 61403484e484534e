//! Choosing the next token from logits: greedy at temperature 0, otherwise
//! softmax at a temperature, optionally restricted to the nucleus (top-p),
//! drawn from a seeded generator so a seed reproduces a generation.

/// Sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (1 = all).
    pub top_p: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A sampler with its own random state (one per sequence).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplerParams,
    state: u64,
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler; temperatures below 0 or NaN act as 0, `top_p` is clamped to (0, 1].
    pub fn new(params: SamplerParams) -> Self {
        Sampler {
            state: params.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            params,
            scratch: Vec::new(),
        }
    }

    fn uniform(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature;
        if t.is_nan() || t <= 0.0 || logits.len() < 2 {
            return crate::generate::argmax(logits) as u32;
        }
        let max = logits
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        self.scratch.clear();
        let mut total = 0.0f32;
        for (i, &l) in logits.iter().enumerate() {
            let p = if l.is_nan() {
                0.0
            } else {
                ((l - max) / t).exp()
            };
            total += p;
            self.scratch.push((p, i as u32));
        }
        let top_p = self.params.top_p.clamp(f32::MIN_POSITIVE, 1.0);
        let mut keep = self.scratch.len();
        if top_p < 1.0 {
            self.scratch.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            let mut acc = 0.0;
            for (i, (p, _)) in self.scratch.iter().enumerate() {
                acc += p / total;
                if acc >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            total = self.scratch[..keep].iter().map(|(p, _)| p).sum();
        }
        let mut r = self.uniform() * total;
        for &(p, id) in &self.scratch[..keep] {
            if r < p {
                return id;
            }
            r -= p;
        }
        self.scratch[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_is_argmax_and_seed_reproduces() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(Sampler::new(SamplerParams::default()).sample(&logits), 1);
        let p = SamplerParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 42,
        };
        let a: Vec<u32> = (0..50)
            .scan(Sampler::new(p), |s, _| Some(s.sample(&logits)))
            .collect();
        let b: Vec<u32> = (0..50)
            .scan(Sampler::new(p), |s, _| Some(s.sample(&logits)))
            .collect();
        assert_eq!(a, b);
        assert!(a.contains(&1) && a.contains(&2), "{a:?}");
    }

    #[test]
    fn frequencies_follow_softmax_and_top_p_cuts_the_tail() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 1,
        });
        let ones = (0..20_000).filter(|_| s.sample(&logits) == 1).count() as f64 / 20_000.0;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
        });
        assert!((0..1000).all(|_| s.sample(&logits) == 1));
    }
}
