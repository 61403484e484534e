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

/// Runs one schedule of batched passes on `device` and on `reference` (three
/// prompts of different lengths in one pass, then three decode steps of all
/// three, each feeding the reference's greedy token) and returns each logit
/// row's [`max_rel_diff`] against the reference: the GPU backends'
/// self-test of their slot path. Both need three free slots of at least 24
/// positions and a vocabulary of at least 2 ids.
pub fn compare_slots(
    device: &mut dyn BatchForward,
    reference: &mut dyn BatchForward,
) -> Result<Vec<f32>> {
    let vocab = reference.config().vocab_size;
    let id = |i: usize| ((i * 97 + 13) % vocab) as u32;
    let prompts: Vec<Vec<u32>> = [7usize, 12, 1]
        .iter()
        .enumerate()
        .map(|(p, &n)| (0..n).map(|i| id(i + 5 * p)).collect())
        .collect();
    let mut feeds: Vec<Vec<u32>> = prompts;
    let mut diffs = Vec::new();
    for _ in 0..4 {
        let slot_feeds: Vec<SlotFeed<'_>> = feeds
            .iter()
            .enumerate()
            .map(|(slot, ids)| SlotFeed { slot, ids })
            .collect();
        let got = device.forward_slots(&slot_feeds)?;
        let want = reference.forward_slots(&slot_feeds)?;
        let rows = want.chunks_exact(vocab);
        diffs.extend(
            got.chunks_exact(vocab)
                .zip(rows.clone())
                .map(|(g, w)| max_rel_diff(g, w)),
        );
        feeds = rows
            .map(|w| vec![crate::generate::argmax(w) as u32])
            .collect();
    }
    for slot in 0..3 {
        device.clear_slot(slot);
        reference.clear_slot(slot);
    }
    Ok(diffs)
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
