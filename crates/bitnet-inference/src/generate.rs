//! Generation: prefill the prompt, then feed back the chosen token one step
//! at a time through the KV cache (greedy, or through a [`Sampler`]).

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::{BitNetModel, Logits};
use crate::sampler::{Sampler, SamplerParams};
use bitnet_core::Parallelism;

/// Index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Generates up to `max_new` tokens after `prompt` greedily, stopping after
/// an end-of-sequence token of the model's config. Returns the new tokens.
pub fn greedy(
    model: &BitNetModel,
    prompt: &[u32],
    max_new: usize,
    cache: &mut KvCache,
    par: Parallelism<'_>,
) -> Result<Vec<u32>> {
    greedy_with(model, prompt, max_new, cache, par, |_| true)
}

/// [`greedy`], calling `on_token` with each new token as soon as it is
/// chosen (for streaming); generation stops early when it returns `false`.
pub fn greedy_with(
    model: &BitNetModel,
    prompt: &[u32],
    max_new: usize,
    cache: &mut KvCache,
    par: Parallelism<'_>,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let mut sampler = Sampler::new(SamplerParams::default());
    generate_with(model, prompt, max_new, cache, par, &mut sampler, on_token)
}

/// Generation with any sampler, streaming through `on_token`.
pub fn generate_with(
    model: &BitNetModel,
    prompt: &[u32],
    max_new: usize,
    cache: &mut KvCache,
    par: Parallelism<'_>,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(max_new);
    if max_new == 0 {
        return Ok(out);
    }
    let mut logits = model.forward(prompt, cache, Logits::Last, par)?;
    loop {
        let next = sampler.sample(&logits);
        out.push(next);
        let go_on = on_token(next);
        if !go_on || out.len() == max_new || model.config().eos_token_ids.contains(&next) {
            return Ok(out);
        }
        logits = model.forward(&[next], cache, Logits::Last, par)?;
    }
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_first_max_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    }
}
