//! Generation: prefill the prompt, then feed back the chosen token one step
//! at a time through the KV cache, until a stop condition.
//!
//! A [`Session`] owns one sequence's cache and the forward buffers, and
//! remembers which tokens its cache holds, so the next turn of a chat
//! recomputes only what follows the shared prefix. [`generate`] runs one
//! sequence; [`generate_batch`] runs several in the same forward passes
//! (prompts of different lengths prefilled together, then one token per
//! live sequence per step).
//!
//! Stops: end-of-sequence ids (the model's, unless ignored), extra stop
//! ids, stop strings (matched in the decoded text, held back while they
//! might still be completing, and cut from the output), the token limit and
//! the context size. Text is streamed in pieces that never split a UTF-8
//! character (through a [`PieceDecoder`]).

use crate::device::SequenceForward;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{BatchEntry, BitNetModel, Logits, Workspace};
use crate::sampler::{Sampler, SamplerParams};
use bitnet_core::Parallelism;
use std::time::{Duration, Instant};

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

/// Turns generated token ids into text, one piece at a time.
///
/// `step` returns `None` while the text so far ends inside a character
/// (byte-level tokens can split one), and the completed text once it does.
pub trait PieceDecoder {
    /// Feeds one generated id.
    fn step(&mut self, id: u32) -> Result<Option<String>>;

    /// Text still held back when the generation ends (bytes that never
    /// completed a character decode as `U+FFFD`, as a full decode would).
    fn flush(&mut self) -> Result<String> {
        Ok(String::new())
    }
}

impl<D: PieceDecoder + ?Sized> PieceDecoder for &mut D {
    fn step(&mut self, id: u32) -> Result<Option<String>> {
        (**self).step(id)
    }
    fn flush(&mut self) -> Result<String> {
        (**self).flush()
    }
}

impl<D: PieceDecoder + ?Sized> PieceDecoder for Box<D> {
    fn step(&mut self, id: u32) -> Result<Option<String>> {
        (**self).step(id)
    }
    fn flush(&mut self) -> Result<String> {
        (**self).flush()
    }
}

/// The log-probability of a chosen token under the model's distribution
/// (the raw logits, before penalties and temperature), with the most likely
/// tokens at that step.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen id.
    pub id: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The most likely ids and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// Log-probabilities of `id` and of the `top` most likely ids under
    /// `softmax(logits)` (ties keep the lower id first).
    pub fn from_logits(logits: &[f32], id: u32, top: usize) -> TokenLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let lse = max + sum.ln() as f32;
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if best.len() < top || l > best[best.len() - 1].1 {
                    let at = best.partition_point(|&(_, b)| b >= l);
                    best.insert(at, (i as u32, l));
                    best.truncate(top);
                }
            }
        }
        TokenLogprobs {
            id,
            logprob: logits
                .get(id as usize)
                .map_or(f32::NEG_INFINITY, |&l| l - lse),
            top: best.into_iter().map(|(i, l)| (i, l - lse)).collect(),
        }
    }
}

/// What a sequence emits for one generated token.
#[derive(Debug)]
pub(crate) struct Emitted<'a> {
    pub(crate) id: u32,
    pub(crate) text: &'a str,
    pub(crate) logprobs: Option<TokenLogprobs>,
}

/// What to generate and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerParams,
    /// Extra ids that end the generation (like end-of-sequence).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end the generation; the text stops before them.
    pub stop_strings: Vec<String>,
    /// Keep going past the model's end-of-sequence ids.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampler: SamplerParams::default(),
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence id of the model.
    Eos(u32),
    /// One of the extra stop ids.
    StopToken(u32),
    /// A stop string appeared in the text.
    StopString(String),
    /// `max_tokens` were generated.
    Length,
    /// The cache (context) is full.
    ContextFull,
    /// The caller's callback asked to stop, or the caller went away.
    Cancelled,
    /// The request's deadline passed.
    Timeout,
}

impl FinishReason {
    /// The OpenAI name: `stop` for the model or a stop condition, `length`
    /// for a limit, `cancelled` otherwise.
    pub fn openai_name(&self) -> &'static str {
        match self {
            FinishReason::Eos(_) | FinishReason::StopToken(_) | FinishReason::StopString(_) => {
                "stop"
            }
            FinishReason::Length | FinishReason::ContextFull => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Timeout => "timeout",
        }
    }
}

/// The result of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Generated ids, including a final stop id.
    pub tokens: Vec<u32>,
    /// The text streamed (empty without a decoder), without stop strings.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt tokens that ran (the rest came from the session's cache).
    pub prompt_tokens_computed: usize,
    /// Time to the first token (prefill).
    pub prefill_time: Duration,
    /// Time from the first token to the last.
    pub decode_time: Duration,
}

/// One sequence's KV cache and forward buffers, reused across calls.
#[derive(Debug)]
pub struct Session {
    cache: KvCache,
    ws: Workspace,
    /// The tokens whose keys and values the cache holds, in order.
    tokens: Vec<u32>,
}

impl Session {
    /// A session holding up to `capacity` tokens (at most the model's context).
    pub fn new(model: &BitNetModel, capacity: usize) -> Self {
        Session {
            cache: model.new_cache(capacity),
            ws: Workspace::new(),
            tokens: Vec::new(),
        }
    }

    /// Tokens whose keys and values are cached.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions the session can hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Forgets every cached token.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// Keeps the longest cached prefix of `prompt`, always leaving at least
    /// its last token to run (its logits are needed); returns the tokens to run.
    fn reuse_prefix<'p>(&mut self, prompt: &'p [u32]) -> &'p [u32] {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        self.cache.truncate(common);
        self.tokens.truncate(common);
        &prompt[common..]
    }
}

/// Holds back text that may be the start of a stop string.
#[derive(Debug)]
struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `piece`; returns the text now safe to emit and the stop string
    /// that matched, if one did (text from it on is dropped).
    fn push(&mut self, piece: &str) -> (String, Option<String>) {
        self.pending.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = hit {
            let stop = stop.clone();
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, Some(stop));
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| self.pending.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, None)
    }

    /// Text held back when the generation ends for another reason.
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// One sequence being generated: sampler, stop rules, text.
pub(crate) struct Sequence<'d> {
    params: GenerateParams,
    eos: Vec<u32>,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: Option<Box<dyn PieceDecoder + 'd>>,
    /// How many most likely tokens to report with each token's
    /// log-probability (`None`: no log-probabilities).
    top_logprobs: Option<usize>,
    logits_copy: Vec<f32>,
    pub(crate) generation: Generation,
    started: Instant,
    first_token: Option<Instant>,
}

impl<'d> Sequence<'d> {
    pub(crate) fn new(
        model: &BitNetModel,
        prompt: &[u32],
        params: &GenerateParams,
        decoder: Option<Box<dyn PieceDecoder + 'd>>,
        top_logprobs: Option<usize>,
    ) -> Self {
        Self::with_eos(
            &model.config().eos_token_ids,
            prompt,
            params,
            decoder,
            top_logprobs,
        )
    }

    /// [`Self::new`] for a model known only by its end-of-sequence ids.
    pub(crate) fn with_eos(
        eos: &[u32],
        prompt: &[u32],
        params: &GenerateParams,
        decoder: Option<Box<dyn PieceDecoder + 'd>>,
        top_logprobs: Option<usize>,
    ) -> Self {
        let mut sampler = Sampler::new(params.sampler);
        sampler.observe_prompt(prompt);
        Sequence {
            eos: if params.ignore_eos {
                Vec::new()
            } else {
                eos.to_vec()
            },
            sampler,
            stops: StopMatcher::new(&params.stop_strings),
            decoder,
            top_logprobs,
            logits_copy: Vec::new(),
            params: params.clone(),
            generation: Generation {
                tokens: Vec::new(),
                text: String::new(),
                finish: FinishReason::Length,
                prompt_tokens_computed: 0,
                prefill_time: Duration::ZERO,
                decode_time: Duration::ZERO,
            },
            started: Instant::now(),
            first_token: None,
        }
    }

    /// Samples from `logits`, streams the text through `emit`, and returns
    /// the token to feed next, or `None` once the sequence has finished.
    pub(crate) fn step(
        &mut self,
        logits: &mut [f32],
        room: bool,
        emit: &mut dyn FnMut(Emitted<'_>) -> bool,
    ) -> Result<Option<u32>> {
        let now = Instant::now();
        let first = *self.first_token.get_or_insert(now);
        self.generation.prefill_time = first - self.started;
        self.generation.decode_time = now - first;
        if self.top_logprobs.is_some() {
            // The sampler edits the logits in place (penalties, temperature).
            self.logits_copy.clear();
            self.logits_copy.extend_from_slice(logits);
        }
        let id = self.sampler.sample(logits);
        let logprobs = self
            .top_logprobs
            .map(|top| TokenLogprobs::from_logits(&self.logits_copy, id, top));
        self.generation.tokens.push(id);
        let mut finish = if self.eos.contains(&id) {
            Some(FinishReason::Eos(id))
        } else if self.params.stop_token_ids.contains(&id) {
            Some(FinishReason::StopToken(id))
        } else {
            None
        };
        let mut text = String::new();
        if finish.is_none()
            && let Some(d) = self.decoder.as_mut()
            && let Some(piece) = d.step(id)?
        {
            let (out, stop) = self.stops.push(&piece);
            text = out;
            finish = stop.map(FinishReason::StopString);
        }
        if finish.is_none() && self.generation.tokens.len() >= self.params.max_tokens {
            finish = Some(FinishReason::Length);
        }
        if finish.is_none() && !room {
            finish = Some(FinishReason::ContextFull);
        }
        if finish.is_some() && !matches!(finish, Some(FinishReason::StopString(_))) {
            if let Some(d) = self.decoder.as_mut() {
                let rest = d.flush()?;
                let (out, stop) = self.stops.push(&rest);
                text.push_str(&out);
                if let Some(stop) = stop {
                    finish = Some(FinishReason::StopString(stop));
                }
            }
            if !matches!(finish, Some(FinishReason::StopString(_))) {
                text.push_str(&self.stops.finish());
            }
        }
        self.generation.text.push_str(&text);
        if !emit(Emitted {
            id,
            text: &text,
            logprobs,
        }) && finish.is_none()
        {
            finish = Some(FinishReason::Cancelled);
        }
        Ok(match finish {
            Some(f) => {
                self.generation.finish = f;
                None
            }
            None => Some(id),
        })
    }
}

/// Generates after `prompt` in `session` (reusing its cached prefix),
/// calling `on_token(id, text)` for every token with the text it completes
/// (possibly empty); generation stops early when it returns `false`.
pub fn generate<'a>(
    model: &BitNetModel,
    session: &'a mut Session,
    prompt: &'a [u32],
    params: &'a GenerateParams,
    decoder: Option<&'a mut dyn PieceDecoder>,
    par: Parallelism<'_>,
    mut on_token: impl FnMut(u32, &str) -> bool,
) -> Result<Generation> {
    let mut out = generate_batch(
        model,
        &mut [BatchRequest {
            session,
            prompt,
            params,
            decoder,
        }],
        par,
        |_, id, text| on_token(id, text),
    )?;
    Ok(out.remove(0))
}

/// One sequence of [`generate_batch`].
pub struct BatchRequest<'a> {
    /// Its session (cache and buffers).
    pub session: &'a mut Session,
    /// Its prompt.
    pub prompt: &'a [u32],
    /// Its settings.
    pub params: &'a GenerateParams,
    /// Its text decoder, if text is wanted.
    pub decoder: Option<&'a mut dyn PieceDecoder>,
}

/// Generates for several sequences at once: their prompts run in one
/// batched prefill, then every live sequence advances one token per
/// batched decode step. `on_token(index, id, text)` streams each; it
/// returns `false` to stop that sequence. Results come in request order.
///
/// The forward buffers of the first request's session serve the batch.
pub fn generate_batch(
    model: &BitNetModel,
    requests: &mut [BatchRequest<'_>],
    par: Parallelism<'_>,
    mut on_token: impl FnMut(usize, u32, &str) -> bool,
) -> Result<Vec<Generation>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    if requests.iter().any(|r| r.prompt.is_empty()) {
        return Err(Error::EmptyInput);
    }
    let mut ws = std::mem::take(&mut requests[0].session.ws);
    let mut seqs: Vec<Sequence<'_>> = Vec::with_capacity(requests.len());
    let mut feeds: Vec<Vec<u32>> = Vec::with_capacity(requests.len());
    for r in requests.iter_mut() {
        let run = r.session.reuse_prefix(r.prompt).to_vec();
        let decoder = r
            .decoder
            .take()
            .map(|d| Box::new(d) as Box<dyn PieceDecoder + '_>);
        let mut seq = Sequence::new(model, r.prompt, r.params, decoder, None);
        seq.generation.prompt_tokens_computed = run.len();
        if r.params.max_tokens == 0 {
            seq.generation.finish = FinishReason::Length;
            feeds.push(Vec::new());
        } else {
            feeds.push(run);
        }
        seqs.push(seq);
    }
    let result = run_batch(
        model,
        requests,
        &mut seqs,
        &mut feeds,
        &mut ws,
        par,
        &mut on_token,
    );
    requests[0].session.ws = ws;
    result?;
    Ok(seqs.into_iter().map(|s| s.generation).collect())
}

/// The batched loop: `feeds[i]` holds what sequence `i` runs next (empty
/// once it has finished).
fn run_batch(
    model: &BitNetModel,
    requests: &mut [BatchRequest<'_>],
    seqs: &mut [Sequence<'_>],
    feeds: &mut [Vec<u32>],
    ws: &mut Workspace,
    par: Parallelism<'_>,
    on_token: &mut impl FnMut(usize, u32, &str) -> bool,
) -> Result<()> {
    let mut live: Vec<usize> = Vec::with_capacity(requests.len());
    loop {
        live.clear();
        live.extend((0..feeds.len()).filter(|&i| !feeds[i].is_empty()));
        if live.is_empty() {
            return Ok(());
        }
        if let [i] = live[..] {
            // One sequence: no per-step allocation at all.
            let mut entry = [BatchEntry {
                ids: &feeds[i],
                cache: &mut requests[i].session.cache,
            }];
            model.forward_batch(&mut entry, Logits::Last, ws, par)?;
        } else {
            let mut entries: Vec<BatchEntry<'_>> = requests
                .iter_mut()
                .zip(feeds.iter())
                .filter(|(_, f)| !f.is_empty())
                .map(|(r, f)| BatchEntry {
                    ids: f,
                    cache: &mut r.session.cache,
                })
                .collect();
            model.forward_batch(&mut entries, Logits::Last, ws, par)?;
        }
        let vocab = model.config().vocab_size;
        for (row, &i) in live.iter().enumerate() {
            let session = &mut *requests[i].session;
            session.tokens.extend_from_slice(&feeds[i]);
            let room = session.cache.len() < session.cache.capacity();
            let logits = &mut ws.logits_mut()[row * vocab..(row + 1) * vocab];
            let next = seqs[i].step(logits, room, &mut |e| on_token(i, e.id, e.text))?;
            feeds[i].clear();
            if let Some(id) = next {
                feeds[i].push(id);
            }
        }
    }
}

/// Generates after `prompt` on any device's sequence (a GPU's, or
/// [`crate::CpuSequence`]), from what `seq` already holds: its cached
/// tokens are kept only where they are a prefix of `prompt` (`cached`
/// says which tokens those are; pass `&[]` for a fresh sequence). Streams
/// like [`generate`]: `on_token(id, text)` per token, `false` stops.
pub fn generate_on(
    seq: &mut dyn SequenceForward,
    cached: &[u32],
    prompt: &[u32],
    params: &GenerateParams,
    decoder: Option<&mut dyn PieceDecoder>,
    mut on_token: impl FnMut(u32, &str) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::EmptyInput);
    }
    let common = cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count()
        .min(prompt.len() - 1)
        .min(seq.len());
    seq.truncate(common);
    let eos = seq.config().eos_token_ids.clone();
    let decoder = decoder.map(|d| Box::new(d) as Box<dyn PieceDecoder + '_>);
    let mut state = Sequence::with_eos(&eos, prompt, params, decoder, None);
    state.generation.prompt_tokens_computed = prompt.len() - common;
    if params.max_tokens == 0 {
        state.generation.finish = FinishReason::Length;
        return Ok(state.generation);
    }
    let mut feed = prompt[common..].to_vec();
    loop {
        let mut logits = seq.forward(&feed, Logits::Last)?;
        let room = seq.len() < seq.capacity();
        let next = state.step(&mut logits, room, &mut |e| on_token(e.id, e.text))?;
        match next {
            Some(id) => {
                feed.clear();
                feed.push(id);
            }
            None => return Ok(state.generation),
        }
    }
}

/// Greedy generation of up to `max_new` tokens after `prompt` in a fresh
/// `cache`, stopping after an end-of-sequence id. Returns the new tokens.
pub fn greedy(
    model: &BitNetModel,
    prompt: &[u32],
    max_new: usize,
    cache: &mut KvCache,
    par: Parallelism<'_>,
) -> Result<Vec<u32>> {
    let mut session = Session {
        cache: std::mem::replace(cache, KvCache::new(0, 0, 0)),
        ws: Workspace::new(),
        tokens: Vec::new(),
    };
    session.cache.clear();
    let params = GenerateParams {
        max_tokens: max_new,
        ..GenerateParams::default()
    };
    let out = generate(model, &mut session, prompt, &params, None, par, |_, _| true);
    *cache = session.cache;
    Ok(out?.tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_first_max_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    }

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let mut m = StopMatcher::new(&["</s>".into(), "\n\n".into()]);
        assert_eq!(m.push("Hello <"), ("Hello ".into(), None));
        assert_eq!(m.push("/"), (String::new(), None));
        assert_eq!(m.push("x> ok\n"), ("</x> ok".into(), None));
        assert_eq!(m.push("\nmore"), (String::new(), Some("\n\n".into())));
        let mut m = StopMatcher::new(&["ab".into()]);
        assert_eq!(m.push("xa"), ("x".into(), None));
        assert_eq!(m.finish(), "a");
        // Multi-byte stop strings are cut on character boundaries.
        let mut m = StopMatcher::new(&["é!".into()]);
        assert_eq!(m.push("café"), ("caf".into(), None));
        assert_eq!(m.push("!"), (String::new(), Some("é!".into())));
    }
}
