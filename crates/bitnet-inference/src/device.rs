//! Where a model runs.
//!
//! A user names a device with `--device cpu|cuda[:N]|wgpu[:N]|auto`
//! ([`DeviceSpec`]). Every backend runs one sequence behind
//! [`SequenceForward`]: token ids in, logits out, the KV cache kept on the
//! device between calls. [`CpuSequence`] is the CPU's, over
//! [`BitNetModel`]; the GPU crates (`bitnet-wgpu`) implement the same
//! trait, so generation ([`crate::generate::generate_on`]) and benchmarks
//! run unchanged on any of them.
//!
//! Serving needs more than one sequence per pass: [`BatchForward`] holds
//! several sequences at once, each in a *slot* with its own KV cache on
//! the device, and runs the tokens of several slots in one pass (every
//! decoding sequence's next token, and prompt chunks). The scheduler
//! ([`crate::scheduler::Scheduler::start_slots`]) drives it for continuous
//! batching. [`CpuSlots`] is the CPU's, the reference the GPU backends'
//! tests compare with; [`plan_slot_passes`] and [`check_feeds`] are the
//! pieces every backend shares.
//!
//! ```
//! use bitnet_inference::DeviceSpec;
//! assert_eq!("wgpu:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu(Some(1)));
//! assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
//! assert!("tpu".parse::<DeviceSpec>().is_err());
//! ```

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{BatchEntry, BitNetModel, Logits, Workspace};
use bitnet_core::Parallelism;
use bitnet_models::config::BitNetConfig;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The device a user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU kernels (always available).
    #[default]
    Cpu,
    /// A GPU when one works, else the CPU (with a one-line notice).
    Auto,
    /// An adapter through wgpu (Vulkan, Metal, DX12): `None` picks the
    /// first hardware adapter, or a software one when there is no other.
    Wgpu(Option<usize>),
    /// An NVIDIA GPU by CUDA ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| format!("device index in `{s}` must be a non-negative integer"))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        match (name, index) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("auto", None) => Ok(DeviceSpec::Auto),
            ("wgpu" | "gpu", i) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            ("cpu" | "auto", Some(_)) => Err(format!("`{name}` takes no index")),
            _ => Err(format!(
                "unknown device `{s}`: use cpu, auto, wgpu, wgpu:N, cuda or cuda:N"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Wgpu(None) => f.write_str("wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// One sequence's forward passes on some device.
///
/// Each call runs `ids` at the positions after those already held,
/// appends their keys and values, and returns logits `[rows, vocab]` for
/// the rows `which` selects. An error leaves the held positions as they
/// were.
pub trait SequenceForward {
    /// What runs it, for messages (`cpu (2 threads)`, the adapter's name).
    fn device_name(&self) -> String;
    /// The model's configuration.
    fn config(&self) -> &BitNetConfig;
    /// Positions held (keys and values cached).
    fn len(&self) -> usize;
    /// Whether no position is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions the sequence can hold.
    fn capacity(&self) -> usize;
    /// Forgets positions from `len` on.
    fn truncate(&mut self, len: usize);
    /// Runs `ids`; see the trait's documentation.
    fn forward(&mut self, ids: &[u32], which: Logits) -> Result<Vec<f32>>;
    /// Bytes of device memory the model's buffers take (weights, KV
    /// cache, scratch), for devices with memory of their own.
    fn device_memory_bytes(&self) -> Option<u64> {
        None
    }
    /// Where one decode step's time goes, as (part, microseconds) rows,
    /// for devices that can time their own work (`bitnet bench
    /// --profile`); empty where there is nothing to add to the wall clock.
    /// Leaves the held positions as they were.
    fn decode_profile(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// Checks a GPU backend's call of `ids` at position `len` against the
/// model's vocabulary and the sequence's `capacity`, as the CPU engine
/// does: empty input, an id outside the vocabulary, a full context.
pub fn check_ids(ids: &[u32], vocab: usize, len: usize, capacity: usize) -> Result<()> {
    if ids.is_empty() {
        return Err(crate::Error::EmptyInput);
    }
    if let Some((position, &id)) = ids
        .iter()
        .enumerate()
        .find(|&(_, &id)| id as usize >= vocab)
    {
        return Err(crate::Error::TokenOutOfRange {
            id,
            position,
            vocab,
        });
    }
    if len + ids.len() > capacity {
        return Err(crate::Error::ContextFull {
            needed: len + ids.len(),
            capacity,
        });
    }
    Ok(())
}

/// Runs `ids` as passes of at most `max_tokens` tokens (`max_logit_rows`
/// when every row's logits are wanted), asking each `pass` for logits only
/// where `which` needs them, and concatenates what they return. A pass
/// returns `Some` logits exactly when it was asked for some. The first
/// error is returned as is; undoing the passes before it is the caller's.
pub fn run_in_passes<E>(
    ids: &[u32],
    which: Logits,
    max_tokens: usize,
    max_logit_rows: usize,
    mut pass: impl FnMut(&[u32], Option<Logits>) -> std::result::Result<Option<Vec<f32>>, E>,
) -> std::result::Result<Vec<f32>, E> {
    let piece = match which {
        Logits::Last => max_tokens,
        Logits::All => max_logit_rows,
    }
    .max(1);
    let pieces = ids.len().div_ceil(piece);
    let mut all = Vec::new();
    for (i, chunk) in ids.chunks(piece).enumerate() {
        let want = match which {
            Logits::All => Some(Logits::All),
            Logits::Last if i + 1 == pieces => Some(Logits::Last),
            Logits::Last => None,
        };
        if let Some(l) = pass(chunk, want)? {
            all.extend_from_slice(&l);
        }
    }
    Ok(all)
}

/// Largest |a - b| over the largest |b|: how GPU backends' self-tests and
/// tests compare their outputs with the CPU's (infinite when the lengths
/// differ or a value is NaN).
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    if a.len() != b.len() || worst.is_nan() {
        return f32::INFINITY;
    }
    worst / scale
}

/// Greedy continuation of `prompt` for `steps` tokens on any device.
pub fn greedy_on(seq: &mut dyn SequenceForward, prompt: &[u32], steps: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(steps);
    let mut logits = seq.forward(prompt, Logits::Last)?;
    for _ in 0..steps {
        let id = crate::generate::argmax(&logits) as u32;
        out.push(id);
        logits = seq.forward(&[id], Logits::Last)?;
    }
    Ok(out)
}

/// The CPU's [`SequenceForward`]: a [`BitNetModel`], one KV cache and the
/// forward buffers, on `par`'s threads.
#[derive(Debug)]
pub struct CpuSequence<'m> {
    model: &'m BitNetModel,
    cache: KvCache,
    ws: Workspace,
    par: Parallelism<'m>,
}

impl<'m> CpuSequence<'m> {
    /// A sequence of up to `capacity` positions (at most the model's context).
    pub fn new(model: &'m BitNetModel, capacity: usize, par: Parallelism<'m>) -> Self {
        CpuSequence {
            model,
            cache: model.new_cache(capacity),
            ws: Workspace::new(),
            par,
        }
    }
}

impl SequenceForward for CpuSequence<'_> {
    fn device_name(&self) -> String {
        format!("cpu ({} threads)", self.par.threads())
    }
    fn config(&self) -> &BitNetConfig {
        self.model.config()
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
    }
    fn forward(&mut self, ids: &[u32], which: Logits) -> Result<Vec<f32>> {
        let mut batch = [BatchEntry {
            ids,
            cache: &mut self.cache,
        }];
        Ok(self
            .model
            .forward_batch(&mut batch, which, &mut self.ws, self.par)?
            .to_vec())
    }
}

/// The tokens one slot runs in a batched pass.
#[derive(Clone, Copy, Debug)]
pub struct SlotFeed<'a> {
    /// Which sequence (`0..slots()`).
    pub slot: usize,
    /// Ids to run after the positions the slot holds.
    pub ids: &'a [u32],
}

/// Several sequences on one device, each in a slot with its own KV cache,
/// run together: what continuous batching needs from a backend.
///
/// [`Self::forward_slots`] runs every feed's ids at the positions after
/// those its slot holds, in as many device passes as the backend's limits
/// ask for, and returns the logits of each feed's last token, one row of
/// `vocab_size` per feed in feed order. An error leaves every slot's held
/// positions as they were.
///
/// ```
/// use bitnet_inference::device::{BatchForward, CpuSlots, SlotFeed};
/// use bitnet_inference::BitNetModel;
/// use bitnet_models::synth::{Preset, synthesize};
/// use std::sync::Arc;
/// let model = Arc::new(BitNetModel::new(synthesize(Preset::Tiny, 7)?)?);
/// let mut slots = CpuSlots::new(model, 2, 64, 1)?;
/// let logits = slots.forward_slots(&[
///     SlotFeed { slot: 0, ids: &[1, 2, 3] },
///     SlotFeed { slot: 1, ids: &[4] },
/// ])?;
/// assert_eq!(logits.len(), 2 * slots.config().vocab_size);
/// assert_eq!((slots.slot_len(0), slots.slot_len(1)), (3, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait BatchForward: Send {
    /// What runs it, for messages.
    fn device_name(&self) -> String;
    /// The model's configuration.
    fn config(&self) -> &BitNetConfig;
    /// Sequences it can hold at once.
    fn slots(&self) -> usize;
    /// Positions each slot can hold.
    fn slot_capacity(&self) -> usize;
    /// Positions `slot` holds.
    fn slot_len(&self, slot: usize) -> usize;
    /// Forgets every position of `slot`, making it free for a new sequence.
    fn clear_slot(&mut self, slot: usize);
    /// Runs `feeds`; see the trait's documentation.
    fn forward_slots(&mut self, feeds: &[SlotFeed<'_>]) -> Result<Vec<f32>>;
    /// Bytes of keys and values one slot takes.
    fn kv_bytes_per_slot(&self) -> usize;
    /// Bytes of device memory the model's buffers take, for devices with
    /// memory of their own.
    fn device_memory_bytes(&self) -> Option<u64> {
        None
    }
}

/// Checks a batched call before anything runs: at least one feed, slots
/// in range and distinct, no empty feed, ids inside the vocabulary, and
/// room in each slot (`len(slot)` held of `capacity`).
pub fn check_feeds(
    feeds: &[SlotFeed<'_>],
    slots: usize,
    vocab: usize,
    capacity: usize,
    len: impl Fn(usize) -> usize,
) -> Result<()> {
    if feeds.is_empty() {
        return Err(Error::EmptyInput);
    }
    let mut seen = vec![false; slots];
    for f in feeds {
        if f.slot >= slots {
            return Err(Error::InvalidArgument(format!(
                "slot {} does not exist: the model holds {slots} sequences",
                f.slot
            )));
        }
        if std::mem::replace(&mut seen[f.slot], true) {
            return Err(Error::InvalidArgument(format!(
                "slot {} is fed twice in one pass",
                f.slot
            )));
        }
        check_ids(f.ids, vocab, len(f.slot), capacity)?;
    }
    Ok(())
}

/// Part of one feed in one device pass: `len` of its ids from `start`,
/// with logits for the last of them when `logits` (the feed's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassPiece {
    /// Index of the feed.
    pub feed: usize,
    /// Its slot.
    pub slot: usize,
    /// First id of the piece within the feed.
    pub start: usize,
    /// Ids in the piece.
    pub len: usize,
    /// Whether the piece ends the feed (its last token gets logits).
    pub logits: bool,
}

/// Splits `feeds` into device passes of at most `max_tokens` tokens and
/// `max_logit_rows` logit rows, feed after feed. A feed longer than the
/// room left continues in the next pass (its later positions after its
/// earlier ones, so the KV cache fills in order); only its last piece
/// asks for logits. Each slot appears at most once per pass.
pub fn plan_slot_passes(
    feeds: &[SlotFeed<'_>],
    max_tokens: usize,
    max_logit_rows: usize,
) -> Vec<Vec<PassPiece>> {
    let (max_tokens, max_rows) = (max_tokens.max(1), max_logit_rows.max(1));
    let mut passes = Vec::new();
    let mut pass: Vec<PassPiece> = Vec::new();
    let (mut tokens, mut rows) = (0, 0);
    for (i, f) in feeds.iter().enumerate() {
        let mut start = 0;
        while start < f.ids.len() {
            if tokens == max_tokens || rows == max_rows {
                passes.push(std::mem::take(&mut pass));
                (tokens, rows) = (0, 0);
            }
            let len = (f.ids.len() - start).min(max_tokens - tokens);
            let logits = start + len == f.ids.len();
            pass.push(PassPiece {
                feed: i,
                slot: f.slot,
                start,
                len,
                logits,
            });
            tokens += len;
            rows += usize::from(logits);
            start += len;
        }
    }
    if !pass.is_empty() {
        passes.push(pass);
    }
    passes
}

/// The tokens of one device pass as the GPU kernels take them: the ids, a
/// (position, KV cache row) pair per token, and the tokens whose logits
/// are wanted. A slot's cache rows are `slot * context + position`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassTokens {
    /// The ids, in pass order.
    pub ids: Vec<u32>,
    /// Position, cache row; two per token.
    pub pairs: Vec<u32>,
    /// Tokens (indices into `ids`) that get logits, in logit-row order.
    pub rows: Vec<u32>,
}

impl PassTokens {
    /// Empties it for the next pass.
    pub fn clear(&mut self) {
        self.ids.clear();
        self.pairs.clear();
        self.rows.clear();
    }

    /// Appends `ids` of `slot` at positions from `pos`, in a cache of
    /// `context` positions per slot.
    pub fn push(&mut self, slot: usize, pos: usize, ids: &[u32], context: usize) {
        let base = slot * context;
        for (i, &id) in ids.iter().enumerate() {
            self.ids.push(id);
            self.pairs
                .extend([(pos + i) as u32, (base + pos + i) as u32]);
        }
    }
}

/// What a slot backend keeps between passes: each slot's held positions
/// and the host copy of the pass being built (kept to reuse its buffers).
#[derive(Clone, Debug, Default)]
pub struct SlotState {
    /// Positions each slot holds.
    pub lens: Vec<usize>,
    /// The pass being built.
    pub host: PassTokens,
}

impl SlotState {
    /// `slots` empty slots.
    pub fn new(slots: usize) -> Self {
        SlotState {
            lens: vec![0; slots],
            host: PassTokens::default(),
        }
    }
}

/// How a GPU backend runs its passes: the limits of one pass and the pass
/// itself, over the tokens [`PassTokens`] holds (logits of its `rows`, or
/// `None` when it lists none). The provided methods do the rest of
/// [`SequenceForward::forward`] (slot 0) and [`BatchForward::forward_slots`]:
/// checks, pass planning and the slot lengths.
pub trait SlotPasses {
    /// The backend's error.
    type Error: From<Error>;
    /// Positions per slot.
    fn context(&self) -> usize;
    /// Tokens one pass takes at most.
    fn max_pass_tokens(&self) -> usize;
    /// Logit rows one pass returns at most.
    fn max_logit_rows(&self) -> usize;
    /// Vocabulary size (ids are checked against it).
    fn vocab(&self) -> usize;
    /// The slot lengths and pass buffer.
    fn slot_state(&mut self) -> &mut SlotState;
    /// Runs one pass.
    fn run_pass(
        &mut self,
        tokens: &PassTokens,
    ) -> std::result::Result<Option<Vec<f32>>, Self::Error>;

    /// [`SequenceForward::forward`] over slot 0: checks, splits into
    /// passes, and leaves the slot's length as it was on error.
    fn forward_one(
        &mut self,
        ids: &[u32],
        which: Logits,
    ) -> std::result::Result<Vec<f32>, Self::Error> {
        // The state is taken out for the call so `run_pass` can borrow
        // the backend mutably; it is put back on every path.
        let mut state = std::mem::take(self.slot_state());
        let out = forward_one_with(self, &mut state, ids, which);
        *self.slot_state() = state;
        out
    }

    /// [`BatchForward::forward_slots`]: checks the feeds, runs the planned
    /// passes ([`plan_slot_passes`]) and returns each feed's last logits;
    /// slot lengths change only when every pass succeeded (positions a
    /// failed call wrote past a slot's length are overwritten by its next
    /// pass).
    fn forward_feeds(
        &mut self,
        feeds: &[SlotFeed<'_>],
    ) -> std::result::Result<Vec<f32>, Self::Error> {
        let mut state = std::mem::take(self.slot_state());
        let out = forward_feeds_with(self, &mut state, feeds);
        *self.slot_state() = state;
        out
    }
}

fn forward_one_with<B: SlotPasses + ?Sized>(
    backend: &mut B,
    state: &mut SlotState,
    ids: &[u32],
    which: Logits,
) -> std::result::Result<Vec<f32>, B::Error> {
    let context = backend.context();
    let SlotState { lens, host } = state;
    check_ids(ids, backend.vocab(), lens[0], context)?;
    let start = lens[0];
    let (max_tokens, max_rows) = (backend.max_pass_tokens(), backend.max_logit_rows());
    run_in_passes(ids, which, max_tokens, max_rows, |chunk, want| {
        host.clear();
        host.push(0, lens[0], chunk, context);
        let n = chunk.len() as u32;
        match want {
            None => {}
            Some(Logits::Last) => host.rows.push(n - 1),
            Some(Logits::All) => host.rows.extend(0..n),
        }
        let out = backend.run_pass(host)?;
        lens[0] += chunk.len();
        Ok(out)
    })
    .inspect_err(|_| lens[0] = start)
}

fn forward_feeds_with<B: SlotPasses + ?Sized>(
    backend: &mut B,
    state: &mut SlotState,
    feeds: &[SlotFeed<'_>],
) -> std::result::Result<Vec<f32>, B::Error> {
    let (context, vocab) = (backend.context(), backend.vocab());
    let SlotState { lens, host } = state;
    check_feeds(feeds, lens.len(), vocab, context, |s| lens[s])?;
    let passes = plan_slot_passes(feeds, backend.max_pass_tokens(), backend.max_logit_rows());
    let mut out = Vec::with_capacity(feeds.len() * vocab);
    for pieces in &passes {
        host.clear();
        for p in pieces {
            let ids = &feeds[p.feed].ids[p.start..p.start + p.len];
            host.push(p.slot, lens[p.slot] + p.start, ids, context);
            if p.logits {
                host.rows.push(host.ids.len() as u32 - 1);
            }
        }
        if let Some(l) = backend.run_pass(host)? {
            out.extend_from_slice(&l);
        }
    }
    for f in feeds {
        lens[f.slot] += f.ids.len();
    }
    Ok(out)
}

/// How a device's batched passes compare, logit row by logit row
/// ([`max_rel_diff`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotComparison {
    /// Against the reference's batched passes (the CPU's, usually).
    pub vs_reference: Vec<f32>,
    /// Against each sequence run alone on its own model (empty when none
    /// was given).
    pub vs_alone: Vec<f32>,
    /// Whether every slot held as many positions as the reference after
    /// every step.
    pub lengths_agree: bool,
}

impl SlotComparison {
    /// The median of [`Self::vs_reference`].
    pub fn median_vs_reference(&self) -> f32 {
        let mut v = self.vs_reference.clone();
        v.sort_by(f32::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f32::INFINITY)
    }

    /// The largest of a list (0 for none).
    pub fn worst(v: &[f32]) -> f32 {
        v.iter().fold(0.0f32, |m, &x| m.max(x))
    }
}

/// Runs one schedule of batched passes over three slots on `device`, on
/// `reference`, and, when given, on three one-sequence models `alone`
/// (slot `i` on `alone[i]`): two prompts in one pass, decode steps of every
/// running sequence with `device`'s greedy tokens, a 12-token prompt
/// joining at the third step (longer than small passes), and slot 0
/// freed and reused at the seventh. The GPU backends' self-test and tests
/// of their slot path. Both need three free slots of at least 32 positions.
pub fn compare_slots(
    device: &mut dyn BatchForward,
    reference: &mut dyn BatchForward,
    alone: &mut [&mut dyn SequenceForward],
) -> Result<SlotComparison> {
    let vocab = reference.config().vocab_size;
    let prompt = |seed: usize, n: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i * 131 + seed * 17 + 7) % vocab) as u32)
            .collect()
    };
    let mut next: Vec<Option<Vec<u32>>> = vec![Some(prompt(1, 9)), None, Some(prompt(2, 3))];
    let mut out = SlotComparison {
        lengths_agree: true,
        ..SlotComparison::default()
    };
    for step in 0..10 {
        if step == 2 {
            next[1] = Some(prompt(3, 12));
        }
        if step == 6 {
            device.clear_slot(0);
            reference.clear_slot(0);
            if let Some(a) = alone.get_mut(0) {
                a.truncate(0);
            }
            next[0] = Some(prompt(4, 6));
        }
        let feeds: Vec<SlotFeed<'_>> = next
            .iter()
            .enumerate()
            .filter_map(|(slot, ids)| ids.as_deref().map(|ids| SlotFeed { slot, ids }))
            .collect();
        let got = device.forward_slots(&feeds)?;
        let want = reference.forward_slots(&feeds)?;
        let mut picks = Vec::with_capacity(feeds.len());
        for (row, f) in feeds.iter().enumerate() {
            let g = &got[row * vocab..(row + 1) * vocab];
            out.vs_reference
                .push(max_rel_diff(g, &want[row * vocab..(row + 1) * vocab]));
            if let Some(a) = alone.get_mut(f.slot) {
                out.vs_alone
                    .push(max_rel_diff(g, &a.forward(f.ids, Logits::Last)?));
            }
            picks.push((f.slot, crate::generate::argmax(g) as u32));
        }
        out.lengths_agree &= (0..3).all(|s| device.slot_len(s) == reference.slot_len(s));
        for (slot, id) in picks {
            next[slot] = Some(vec![id]);
        }
    }
    for slot in 0..3 {
        device.clear_slot(slot);
        reference.clear_slot(slot);
    }
    Ok(out)
}

/// Feeds `device` four kinds of bad call (a slot out of range, one slot
/// twice, an id past the vocabulary, more tokens than a slot holds) after
/// a two-token prompt in slot 1, and returns why not if one of them ran
/// or changed a slot's length. Every [`BatchForward`] must pass it; it
/// needs two slots or more, of three positions or more.
pub fn check_bad_feeds(device: &mut dyn BatchForward) -> std::result::Result<(), String> {
    device
        .forward_slots(&[SlotFeed {
            slot: 1,
            ids: &[1, 2],
        }])
        .map_err(|e| format!("a good prompt failed: {e}"))?;
    let lens = |d: &dyn BatchForward| (0..d.slots()).map(|s| d.slot_len(s)).collect::<Vec<_>>();
    let before = lens(device);
    let vocab = device.config().vocab_size as u32;
    let past_vocab = [1, vocab];
    let too_long = vec![1; device.slot_capacity() + 1];
    let bad: [(&str, Vec<SlotFeed<'_>>); 4] = [
        (
            "a slot out of range",
            vec![SlotFeed {
                slot: device.slots(),
                ids: &[1],
            }],
        ),
        (
            "one slot twice",
            vec![
                SlotFeed { slot: 0, ids: &[1] },
                SlotFeed { slot: 0, ids: &[2] },
            ],
        ),
        (
            "an id past the vocabulary",
            vec![SlotFeed {
                slot: 1,
                ids: &past_vocab,
            }],
        ),
        (
            "more tokens than a slot holds",
            vec![SlotFeed {
                slot: 0,
                ids: &too_long,
            }],
        ),
    ];
    for (what, feeds) in &bad {
        if device.forward_slots(feeds).is_ok() {
            return Err(format!("{what} was accepted"));
        }
        if lens(device) != before {
            return Err(format!("{what} changed the slot lengths"));
        }
    }
    device.clear_slot(1);
    Ok(())
}

/// The CPU's [`BatchForward`]: a [`BitNetModel`], a KV cache per slot and
/// the forward buffers, on a thread pool of its own. The reference the
/// GPU backends' batched passes are tested against.
pub struct CpuSlots {
    model: Arc<BitNetModel>,
    caches: Vec<KvCache>,
    ws: Workspace,
    pool: rayon::ThreadPool,
}

impl fmt::Debug for CpuSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuSlots")
            .field("slots", &self.caches.len())
            .field("threads", &self.pool.current_num_threads())
            .finish_non_exhaustive()
    }
}

impl CpuSlots {
    /// `slots` sequences of up to `capacity` positions each (at most the
    /// model's context), on `threads` kernel threads.
    pub fn new(
        model: Arc<BitNetModel>,
        slots: usize,
        capacity: usize,
        threads: usize,
    ) -> Result<Self> {
        if slots == 0 {
            return Err(Error::InvalidArgument("slots must be at least 1".into()));
        }
        let pool = bitnet_core::build_pool(threads)
            .map_err(|e| Error::InvalidArgument(format!("kernel thread pool: {e}")))?;
        let caches = (0..slots).map(|_| model.new_cache(capacity)).collect();
        Ok(CpuSlots {
            model,
            caches,
            ws: Workspace::new(),
            pool,
        })
    }
}

impl BatchForward for CpuSlots {
    fn device_name(&self) -> String {
        format!("cpu ({} threads)", self.pool.current_num_threads())
    }
    fn config(&self) -> &BitNetConfig {
        self.model.config()
    }
    fn slots(&self) -> usize {
        self.caches.len()
    }
    fn slot_capacity(&self) -> usize {
        self.caches[0].capacity()
    }
    fn slot_len(&self, slot: usize) -> usize {
        self.caches[slot].len()
    }
    fn clear_slot(&mut self, slot: usize) {
        self.caches[slot].clear();
    }
    fn kv_bytes_per_slot(&self) -> usize {
        let c = self.model.config();
        crate::KvPool::block_bytes_for(c.num_layers, c.kv_dim(), self.slot_capacity())
    }
    fn forward_slots(&mut self, feeds: &[SlotFeed<'_>]) -> Result<Vec<f32>> {
        let c = self.model.config();
        check_feeds(
            feeds,
            self.caches.len(),
            c.vocab_size,
            self.slot_capacity(),
            |s| self.caches[s].len(),
        )?;
        let mut by_slot: Vec<Option<&mut KvCache>> = self.caches.iter_mut().map(Some).collect();
        let mut entries: Vec<BatchEntry<'_>> = feeds
            .iter()
            .map(|f| BatchEntry {
                ids: f.ids,
                cache: by_slot[f.slot].take().expect("check_feeds: distinct slots"),
            })
            .collect();
        let par = Parallelism::Pool(&self.pool);
        Ok(self
            .model
            .forward_batch(&mut entries, Logits::Last, &mut self.ws, par)?
            .to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in [
            "cpu", "auto", "wgpu", "wgpu:0", "wgpu:3", "cuda:0", "cuda:2",
        ] {
            let d: DeviceSpec = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("gpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Wgpu(None)));
        for bad in ["", "cpu:1", "auto:0", "cuda:x", "wgpu:-1", "metal", "cuda:"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    fn feed(slot: usize, ids: &[u32]) -> SlotFeed<'_> {
        SlotFeed { slot, ids }
    }

    #[test]
    fn passes_split_long_feeds_and_keep_every_token_once() {
        let a: Vec<u32> = (0..10).collect();
        let (b, c) = ([7u32], [8u32, 9]);
        let feeds = [feed(2, &a), feed(0, &b), feed(1, &c)];
        let passes = plan_slot_passes(&feeds, 4, 8);
        let lens: Vec<Vec<(usize, usize, usize, bool)>> = passes
            .iter()
            .map(|p| {
                p.iter()
                    .map(|x| (x.slot, x.start, x.len, x.logits))
                    .collect()
            })
            .collect();
        assert_eq!(
            lens,
            vec![
                vec![(2, 0, 4, false)],
                vec![(2, 4, 4, false)],
                vec![(2, 8, 2, true), (0, 0, 1, true), (1, 0, 1, false)],
                vec![(1, 1, 1, true)],
            ]
        );
        // Logit rows cap a pass too.
        let passes = plan_slot_passes(&[feed(0, &b), feed(1, &b), feed(2, &b)], 16, 2);
        assert_eq!(passes.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        // Every feed ends with exactly one logits piece, in feed order.
        for (max_t, max_r) in [(1, 1), (3, 2), (5, 1), (64, 64)] {
            let passes = plan_slot_passes(&feeds, max_t, max_r);
            let ends: Vec<usize> = passes
                .iter()
                .flatten()
                .filter(|p| p.logits)
                .map(|p| p.feed)
                .collect();
            assert_eq!(ends, [0, 1, 2]);
            for p in &passes {
                assert!(p.iter().map(|x| x.len).sum::<usize>() <= max_t);
                assert!(p.iter().filter(|x| x.logits).count() <= max_r);
            }
        }
    }

    #[test]
    fn feeds_are_checked_before_anything_runs() {
        let ids = [1u32, 2];
        let len = |_| 0;
        assert!(check_feeds(&[feed(0, &ids), feed(1, &ids)], 2, 10, 8, len).is_ok());
        for (bad, why) in [
            (vec![], "at least one token"),
            (vec![feed(2, &ids)], "does not exist"),
            (vec![feed(0, &ids), feed(0, &ids)], "twice"),
            (vec![feed(0, &[])], "at least one token"),
            (vec![feed(1, &[10])], "vocabulary"),
        ] {
            let e = check_feeds(&bad, 2, 10, 8, len).unwrap_err().to_string();
            assert!(e.to_lowercase().contains(why), "{e}");
        }
        let full = check_feeds(&[feed(1, &ids)], 2, 10, 8, |_| 7).unwrap_err();
        assert!(
            matches!(
                full,
                Error::ContextFull {
                    needed: 9,
                    capacity: 8
                }
            ),
            "{full}"
        );
    }
}
