//! Choosing the next token from logits.
//!
//! The order is the one llama.cpp and transformers use: penalties on the
//! raw logits, then temperature, then the truncations (top-k, top-p,
//! min-p), then a draw from a seeded generator, so a seed reproduces a
//! generation. Temperature 0 is greedy (argmax after penalties).
//!
//! Penalties follow their sources: the repetition penalty is
//! transformers' (a seen token's positive logit is divided by it, a
//! negative one multiplied) over prompt and generated tokens; presence and
//! frequency penalties are OpenAI's (`logit -= presence * [count > 0] +
//! frequency * count`) over generated tokens.

use std::collections::{HashMap, HashSet};

/// Sampling settings. The default is greedy with no penalty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches this (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// transformers' repetition penalty (1 = off; > 1 discourages repeats).
    pub repetition_penalty: f32,
    /// OpenAI presence penalty, -2..=2 (0 = off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty, -2..=2 (0 = off).
    pub frequency_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplerParams {
    /// Checks every setting is in range, naming the first that is not.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str, value: f32, range: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{what} must be {range}, got {value}"))
            }
        };
        let t = self.temperature;
        check(
            t.is_finite() && t >= 0.0,
            "temperature",
            t,
            "finite and >= 0",
        )?;
        let p = self.top_p;
        check(p > 0.0 && p <= 1.0, "top_p", p, "in (0, 1]")?;
        let m = self.min_p;
        check((0.0..=1.0).contains(&m), "min_p", m, "in [0, 1]")?;
        let r = self.repetition_penalty;
        check(r.is_finite() && r > 0.0, "repetition_penalty", r, "> 0")?;
        for (what, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            check((-2.0..=2.0).contains(&v), what, v, "in [-2, 2]")?;
        }
        Ok(())
    }
}

/// A sampler with its own random state and token history (one per sequence).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplerParams,
    state: u64,
    scratch: Vec<(f32, u32)>,
    /// Tokens of the prompt and the generation (repetition penalty).
    seen: HashSet<u32>,
    /// Counts of generated tokens (presence and frequency penalties).
    generated: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler. Out-of-range settings are clamped ([`SamplerParams::validate`]
    /// reports them instead): temperatures below 0 or NaN act as 0, `top_p`
    /// is clamped to (0, 1], `min_p` to [0, 1].
    pub fn new(params: SamplerParams) -> Self {
        Sampler {
            state: params.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            params,
            scratch: Vec::new(),
            seen: HashSet::new(),
            generated: HashMap::new(),
        }
    }

    /// The settings.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Records prompt tokens for the repetition penalty.
    pub fn observe_prompt(&mut self, prompt: &[u32]) {
        if self.params.repetition_penalty != 1.0 {
            self.seen.extend(prompt.iter().copied());
        }
    }

    fn uniform(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let r = self.params.repetition_penalty;
        if r != 1.0 {
            for &id in &self.seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
        }
        let (pp, fp) = (self.params.presence_penalty, self.params.frequency_penalty);
        if pp != 0.0 || fp != 0.0 {
            for (&id, &count) in &self.generated {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= pp + fp * count as f32;
                }
            }
        }
    }

    /// Chooses the next token from `logits` (penalties are applied in
    /// place) and records it as generated.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_penalties(logits);
        let id = self.choose(logits);
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(id);
        }
        if self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0 {
            *self.generated.entry(id).or_insert(0) += 1;
        }
        id
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature;
        if t.is_nan() || t <= 0.0 || logits.len() < 2 {
            return crate::generate::argmax(logits) as u32;
        }
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (l / t, i as u32)),
        );
        if self.scratch.is_empty() {
            return 0;
        }
        let by_value_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        let k = self.params.top_k;
        if k > 0 && k < self.scratch.len() {
            self.scratch.select_nth_unstable_by(k - 1, by_value_desc);
            self.scratch.truncate(k);
        }
        // Softmax over the kept tokens.
        let max = self
            .scratch
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for c in &mut self.scratch {
            c.0 = (c.0 - max).exp();
            total += c.0;
        }
        let top_p = self.params.top_p.clamp(f32::MIN_POSITIVE, 1.0);
        let min_p = self.params.min_p.clamp(0.0, 1.0);
        if top_p < 1.0 || min_p > 0.0 {
            self.scratch.sort_unstable_by(by_value_desc);
            let p_max = self.scratch[0].0;
            let mut keep = self.scratch.len();
            if min_p > 0.0 {
                keep = self.scratch.partition_point(|c| c.0 >= min_p * p_max);
            }
            if top_p < 1.0 {
                let mut acc = 0.0;
                for (i, (p, _)) in self.scratch[..keep].iter().enumerate() {
                    acc += p / total;
                    if acc >= top_p {
                        keep = i + 1;
                        break;
                    }
                }
            }
            self.scratch.truncate(keep.max(1));
            total = self.scratch.iter().map(|(p, _)| p).sum();
        }
        let mut r = self.uniform() * total;
        for &(p, id) in &self.scratch {
            if r < p {
                return id;
            }
            r -= p;
        }
        self.scratch[self.scratch.len() - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplerParams {
        SamplerParams {
            temperature,
            seed: 42,
            ..SamplerParams::default()
        }
    }

    fn draws(p: SamplerParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(p);
        (0..n).map(|_| s.sample(&mut logits.to_vec())).collect()
    }

    #[test]
    fn zero_temperature_is_argmax_and_seed_reproduces() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(draws(SamplerParams::default(), &logits, 1), [1]);
        let a = draws(params(1.0), &logits, 50);
        assert_eq!(a, draws(params(1.0), &logits, 50));
        assert!(a.contains(&1) && a.contains(&2), "{a:?}");
    }

    #[test]
    fn frequencies_follow_softmax_and_truncations_cut_the_tail() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let ones = draws(params(1.0), &logits, 20_000)
            .iter()
            .filter(|&&t| t == 1)
            .count() as f64
            / 20_000.0;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
        let only_top = |p: SamplerParams| draws(p, &logits, 1000).iter().all(|&t| t == 1);
        assert!(only_top(SamplerParams {
            top_p: 0.5,
            ..params(1.0)
        }));
        assert!(only_top(SamplerParams {
            top_k: 1,
            ..params(1.0)
        }));
        // 1/4 < 0.5 * 3/4: min-p drops token 0.
        assert!(only_top(SamplerParams {
            min_p: 0.5,
            ..params(1.0)
        }));
        // Top-k keeps exactly k tokens, in proportion.
        let wide = [3.0f32, 2.0, 1.0, 0.0, -1.0];
        let d = draws(
            SamplerParams {
                top_k: 2,
                ..params(1.0)
            },
            &wide,
            5000,
        );
        assert!(d.iter().all(|&t| t < 2));
        let zeros = d.iter().filter(|&&t| t == 0).count() as f64 / 5000.0;
        let want = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((zeros - want).abs() < 0.03, "{zeros} vs {want}");
    }

    #[test]
    fn penalties_change_greedy_choices() {
        let logits = [2.0f32, 1.5, -1.0];
        // Repetition: token 0 seen in the prompt, 2.0 / 2 = 1.0 < 1.5.
        let mut s = Sampler::new(SamplerParams {
            repetition_penalty: 2.0,
            ..SamplerParams::default()
        });
        s.observe_prompt(&[0]);
        assert_eq!(s.sample(&mut logits.to_vec()), 1);
        // Negative logits are multiplied: -1.0 * 2 = -2.0.
        let mut l = logits.to_vec();
        s.observe_prompt(&[2]);
        s.apply_penalties(&mut l);
        assert_eq!(l, [1.0, 0.75, -2.0]);
        // Frequency: each repeat of the generated token costs 0.3.
        let mut s = Sampler::new(SamplerParams {
            frequency_penalty: 0.3,
            ..SamplerParams::default()
        });
        let got: Vec<u32> = (0..4).map(|_| s.sample(&mut logits.to_vec())).collect();
        assert_eq!(got, [0, 0, 1, 0]);
        // Presence: a flat 0.6 once generated.
        let mut s = Sampler::new(SamplerParams {
            presence_penalty: 0.6,
            ..SamplerParams::default()
        });
        let got: Vec<u32> = (0..3).map(|_| s.sample(&mut logits.to_vec())).collect();
        assert_eq!(got, [0, 1, 0]);
    }

    #[test]
    fn validation_names_the_setting() {
        assert!(SamplerParams::default().validate().is_ok());
        for (p, what) in [
            (
                SamplerParams {
                    temperature: -1.0,
                    ..SamplerParams::default()
                },
                "temperature",
            ),
            (
                SamplerParams {
                    top_p: 0.0,
                    ..SamplerParams::default()
                },
                "top_p",
            ),
            (
                SamplerParams {
                    min_p: 1.5,
                    ..SamplerParams::default()
                },
                "min_p",
            ),
            (
                SamplerParams {
                    repetition_penalty: 0.0,
                    ..SamplerParams::default()
                },
                "repetition_penalty",
            ),
            (
                SamplerParams {
                    frequency_penalty: 3.0,
                    ..SamplerParams::default()
                },
                "frequency_penalty",
            ),
        ] {
            let e = p.validate().unwrap_err();
            assert!(e.starts_with(what), "{e}");
        }
    }
}
