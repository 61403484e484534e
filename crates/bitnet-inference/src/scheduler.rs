//! Continuous batching: one engine thread runs every admitted sequence in
//! shared forward passes, one token per running sequence per step.
//!
//! Requests join the running batch at the next step and leave it when they
//! finish, so a new request never waits for a whole batch to drain. Prompts
//! are prefilled in chunks under a per-step token budget that is shared
//! with the decoding sequences, so a long prompt does not stall the others'
//! streams. The KV memory is one [`KvPool`] under a byte budget: a request
//! is admitted only when the blocks for its prompt and its `max_tokens` can
//! be reserved, so an admitted sequence never runs out of memory half-way
//! and the process never grows past the budget; until then it waits in a
//! bounded queue, and [`Scheduler::submit`] refuses work once the queue is full.
//!
//! The engine thread owns the model's compute (its own thread pool for the
//! kernels); callers only talk to it through [`Scheduler::submit`] and the
//! [`EventSink`] of each request, so an async server never runs model code
//! on its executor.
//!
//! The same engine drives a device that holds its sequences itself
//! ([`Scheduler::start_slots`] over a [`BatchForward`], e.g. a GPU model
//! with a KV cache per slot in device memory): a request is then admitted
//! when a slot is free, and [`Scheduler::kv_stats`] counts slots as blocks
//! of a whole context each.
//!
//! ```no_run
//! use std::sync::{Arc, mpsc};
//! use bitnet_inference::scheduler::{Event, Request, Scheduler, SchedulerConfig};
//! use bitnet_inference::{BitNetModel, GenerateParams};
//!
//! let model = Arc::new(BitNetModel::load(std::path::Path::new("model-dir"))?);
//! let scheduler = Scheduler::start(model, SchedulerConfig::default())?;
//! let (tx, rx) = mpsc::channel();
//! scheduler.submit(Request::new(vec![1, 42, 7], GenerateParams::default(), Box::new(tx)))?;
//! for event in rx {
//!     match event {
//!         Event::Token(t) => println!("{}", t.id),
//!         Event::Finished(done) => { println!("{:?}", done.finish); break; }
//!         Event::Failed(e) => { eprintln!("{e}"); break; }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::device::{BatchForward, SlotFeed};
use crate::error::{Error, Result};
use crate::generate::{
    Emitted, FinishReason, GenerateParams, PieceDecoder, Sequence, TokenLogprobs,
};
use crate::kv_cache::{KvCache, KvPool, KvPoolStats};
use crate::model::{BatchEntry, BitNetModel, Logits, Workspace};
use bitnet_core::Parallelism;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A callback the engine calls after every step.
pub type StepObserver = Arc<dyn Fn(&StepReport) + Send + Sync>;

/// How the engine batches and how much memory it may use.
#[derive(Clone)]
pub struct SchedulerConfig {
    /// Most sequences in one step.
    pub max_batch: usize,
    /// Most requests waiting for admission; more are refused.
    pub max_queue: usize,
    /// Most tokens in one step (decode tokens plus prompt chunks): the
    /// prompt part of a step is what is left after one token per decoding
    /// sequence, and at least one prompt token when a prompt is waiting.
    pub step_tokens: usize,
    /// Positions per KV block.
    pub kv_block_size: usize,
    /// Bytes all KV blocks together may take.
    pub kv_budget_bytes: usize,
    /// Positions one sequence may hold (capped at the model's context).
    pub context: usize,
    /// Threads for the kernels (0: one per core).
    pub threads: usize,
    /// Called after every step, e.g. to update metrics.
    pub on_step: Option<StepObserver>,
}

impl std::fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("max_batch", &self.max_batch)
            .field("max_queue", &self.max_queue)
            .field("step_tokens", &self.step_tokens)
            .field("kv_block_size", &self.kv_block_size)
            .field("kv_budget_bytes", &self.kv_budget_bytes)
            .field("context", &self.context)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 64,
            max_queue: 256,
            step_tokens: 256,
            kv_block_size: 16,
            kv_budget_bytes: 1 << 30,
            context: usize::MAX,
            threads: 0,
            on_step: None,
        }
    }
}

/// What one engine step did.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Sequences in the step.
    pub batch_size: usize,
    /// Prompt tokens prefilled in the step.
    pub prefill_tokens: usize,
    /// Sequences that produced a token.
    pub decode_tokens: usize,
    /// Wall time of the forward pass and sampling.
    pub elapsed: Duration,
    /// Requests waiting for admission after the step.
    pub queue_depth: usize,
    /// Sequences running after the step.
    pub running: usize,
    /// The KV pool after the step.
    pub kv: KvPoolStats,
}

/// Where the engine sends a request's events; `send` returns `false` once
/// the receiver has gone (a client that disconnected), which frees the
/// request's slot at the next step.
pub trait EventSink: Send {
    /// Delivers one event; `false` if nobody is listening any more.
    fn send(&mut self, event: Event) -> bool;
    /// Whether the receiver has gone (checked before every step).
    fn is_closed(&self) -> bool {
        false
    }
}

impl EventSink for mpsc::Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        mpsc::Sender::send(self, event).is_ok()
    }
}

/// What the engine reports about a request.
#[derive(Debug)]
pub enum Event {
    /// A generated token, with the text it completes (possibly empty).
    Token(TokenEvent),
    /// The request finished; no more events follow.
    Finished(Completion),
    /// The request failed; no more events follow.
    Failed(Error),
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    /// The id.
    pub id: u32,
    /// Text it completes (stop strings are held back and cut).
    pub text: String,
    /// Its log-probability, when asked for.
    pub logprobs: Option<TokenLogprobs>,
}

/// How a request ended, and what it cost.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// From submission to admission.
    pub queue_time: Duration,
    /// From submission to the first token.
    pub time_to_first_token: Option<Duration>,
    /// From admission to the end: time the engine spent on it (shared
    /// with the rest of its batch).
    pub engine_time: Duration,
}

/// One generation request.
pub struct Request {
    /// The prompt's ids.
    pub prompt: Vec<u32>,
    /// Limits, sampling and stop conditions.
    pub params: GenerateParams,
    /// How many alternatives to report with each token's log-probability
    /// (`None`: no log-probabilities).
    pub top_logprobs: Option<usize>,
    /// Turns ids into text pieces; without one, events carry no text and
    /// stop strings cannot match.
    pub decoder: Option<Box<dyn PieceDecoder + Send>>,
    /// When to give up (finish with [`FinishReason::Timeout`]).
    pub deadline: Option<Instant>,
    /// Where the events go.
    pub sink: Box<dyn EventSink>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("prompt_len", &self.prompt.len())
            .field("params", &self.params)
            .field("top_logprobs", &self.top_logprobs)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request without text decoding, log-probabilities or deadline.
    pub fn new(prompt: Vec<u32>, params: GenerateParams, sink: Box<dyn EventSink>) -> Self {
        Request {
            prompt,
            params,
            top_logprobs: None,
            decoder: None,
            deadline: None,
            sink,
        }
    }
}

/// Why [`Scheduler::submit`] refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The waiting queue is full; try again later.
    #[error("the server is at capacity: {depth} requests are already waiting")]
    QueueFull {
        /// Requests waiting.
        depth: usize,
    },
    /// The scheduler is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request can never run (empty prompt, longer than the context,
    /// more KV memory than the whole budget, invalid sampling).
    #[error(transparent)]
    Invalid(#[from] Error),
}

/// Counters shared between the engine thread and callers.
#[derive(Debug, Default)]
struct Shared {
    waiting: AtomicUsize,
    running: AtomicUsize,
    draining: AtomicBool,
}

enum Command {
    Submit(Box<Request>, Instant),
    /// Stop admitting; cut what still runs at the deadline, then exit.
    Drain(Instant),
}

/// A handle to the engine thread; dropping it stops the engine (running
/// requests are cut with [`FinishReason::Cancelled`]).
pub struct Scheduler {
    tx: Option<mpsc::Sender<Command>>,
    shared: Arc<Shared>,
    memory: Memory,
    config: SchedulerConfig,
    context: usize,
    vocab: usize,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Starts the engine thread for `model` on the CPU, with a paged KV
    /// pool under `config`'s budget.
    pub fn start(model: Arc<BitNetModel>, config: SchedulerConfig) -> Result<Self> {
        check_config(&config)?;
        let c = model.config();
        let pool = KvPool::new(
            c.num_layers,
            c.kv_dim(),
            config.kv_block_size,
            config.kv_budget_bytes,
        )?;
        let context = config.context.min(c.max_position_embeddings);
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let kernels = bitnet_core::build_pool(threads)
            .map_err(|e| Error::InvalidArgument(format!("kernel thread pool: {e}")))?;
        let (vocab, eos) = (c.vocab_size, c.eos_token_ids.clone());
        let backend = Backend::Paged {
            model,
            pool: Arc::clone(&pool),
            ws: Box::new(Workspace::new()),
            kernels,
        };
        Self::spawn(backend, Memory::Pool(pool), config, context, vocab, eos)
    }

    /// Starts the engine thread for a model that holds its sequences
    /// itself, one per slot (a GPU model, or [`crate::device::CpuSlots`]).
    /// A request is admitted when a slot is free; `config`'s KV pool
    /// settings and `threads` do not apply (the model owns its memory and
    /// its compute).
    pub fn start_slots(model: Box<dyn BatchForward>, config: SchedulerConfig) -> Result<Self> {
        check_config(&config)?;
        let c = model.config();
        let context = config
            .context
            .min(c.max_position_embeddings)
            .min(model.slot_capacity());
        let (vocab, eos) = (c.vocab_size, c.eos_token_ids.clone());
        let slots = model.slots();
        let usage = Arc::new(SlotUse {
            total: slots,
            in_use: AtomicUsize::new(0),
            capacity: model.slot_capacity(),
            bytes: model.kv_bytes_per_slot(),
        });
        let backend = Backend::Slots {
            model,
            free: (0..slots).rev().collect(),
            usage: Arc::clone(&usage),
            logits: Vec::new(),
        };
        Self::spawn(backend, Memory::Slots(usage), config, context, vocab, eos)
    }

    fn spawn(
        backend: Backend,
        memory: Memory,
        config: SchedulerConfig,
        context: usize,
        vocab: usize,
        eos: Vec<u32>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let (engine_config, engine_shared) = (config.clone(), Arc::clone(&shared));
        // The engine is built on its thread: its sequences hold decoders
        // that need not be `Send` once there.
        let thread = std::thread::Builder::new()
            .name("bitnet-engine".into())
            .spawn(move || {
                Engine {
                    backend,
                    config: engine_config,
                    shared: engine_shared,
                    context,
                    vocab,
                    eos,
                    waiting: VecDeque::new(),
                    running: Vec::new(),
                    drain_deadline: None,
                }
                .run(rx)
            })
            .map_err(|e| Error::InvalidArgument(format!("cannot start the engine thread: {e}")))?;
        Ok(Scheduler {
            tx: Some(tx),
            shared,
            memory,
            config,
            context,
            vocab,
            thread: Some(thread),
        })
    }

    /// Positions one sequence may hold.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Requests waiting for admission.
    pub fn queue_depth(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// The KV pool's blocks now (for a slot model: its slots, each a
    /// block of a whole context).
    pub fn kv_stats(&self) -> KvPoolStats {
        self.memory.stats()
    }

    /// Whether [`Self::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Checks `request` and queues it; its events go to its sink.
    ///
    /// Refused without queueing: an empty prompt, a prompt plus
    /// `max_tokens` longer than the context, more KV memory than the whole
    /// budget, out-of-vocabulary ids, invalid sampling settings
    /// ([`SubmitError::Invalid`]); a full queue ([`SubmitError::QueueFull`]);
    /// a draining scheduler ([`SubmitError::ShuttingDown`]).
    pub fn submit(&self, request: Request) -> std::result::Result<(), SubmitError> {
        if self.is_draining() {
            return Err(SubmitError::ShuttingDown);
        }
        self.check(&request)?;
        let depth = self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        if depth >= self.config.max_queue {
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull { depth });
        }
        let tx = self.tx.as_ref().ok_or(SubmitError::ShuttingDown)?;
        if tx
            .send(Command::Submit(Box::new(request), Instant::now()))
            .is_err()
        {
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    fn check(&self, r: &Request) -> Result<()> {
        if r.prompt.is_empty() {
            return Err(Error::EmptyInput);
        }
        if let Some((position, &id)) = r
            .prompt
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= self.vocab)
        {
            return Err(Error::TokenOutOfRange {
                id,
                position,
                vocab: self.vocab,
            });
        }
        r.params
            .sampler
            .validate()
            .map_err(Error::InvalidArgument)?;
        let needed = r.prompt.len().saturating_add(r.params.max_tokens);
        if needed > self.context {
            return Err(Error::ContextFull {
                needed,
                capacity: self.context,
            });
        }
        let blocks = self.memory.blocks_for(needed);
        if blocks > self.memory.total_blocks() {
            let s = self.memory.stats();
            return Err(Error::KvBudgetExhausted {
                needed: blocks,
                available: s.total,
                total: s.total,
            });
        }
        Ok(())
    }

    /// Generates for every prompt with `params` as concurrent requests and
    /// waits for all of them: offline batch generation. Returns each
    /// request's generated ids, in prompt order, or the first failure
    /// (including a refused submission: more prompts than the queue holds
    /// fail with its message).
    pub fn generate_all(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
    ) -> Result<Vec<Vec<u32>>> {
        let receivers = prompts
            .iter()
            .map(|p| {
                let (tx, rx) = mpsc::channel();
                self.submit(Request::new(p.clone(), params.clone(), Box::new(tx)))
                    .map_err(|e| match e {
                        SubmitError::Invalid(e) => e,
                        other => Error::InvalidArgument(other.to_string()),
                    })?;
                Ok(rx)
            })
            .collect::<Result<Vec<_>>>()?;
        receivers
            .iter()
            .map(|rx| {
                let mut ids = Vec::new();
                loop {
                    match rx.recv() {
                        Ok(Event::Token(t)) => ids.push(t.id),
                        Ok(Event::Finished(_)) => return Ok(ids),
                        Ok(Event::Failed(e)) => return Err(e),
                        Err(_) => {
                            return Err(Error::InvalidArgument(
                                "the engine stopped before the request finished".into(),
                            ));
                        }
                    }
                }
            })
            .collect()
    }

    /// Stops admitting new requests (queued ones fail with
    /// [`SubmitError::ShuttingDown`]'s message); running ones go on until
    /// they finish or `deadline` passes, when they are cut with
    /// [`FinishReason::Cancelled`]. Returns at once; [`Self::join`] waits.
    pub fn drain(&self, deadline: Instant) {
        self.shared.draining.store(true, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Drain(deadline));
        }
    }

    /// Waits for the engine thread to end (after [`Self::drain`]).
    pub fn join(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        if let Some(tx) = self.tx.take() {
            if !self.is_draining() {
                let _ = tx.send(Command::Drain(Instant::now()));
            }
            drop(tx);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn check_config(config: &SchedulerConfig) -> Result<()> {
    if config.max_batch == 0 || config.step_tokens == 0 {
        return Err(Error::InvalidArgument(
            "max_batch and step_tokens must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Where the sequences' keys and values live, as callers see it.
#[derive(Debug)]
enum Memory {
    /// The CPU engine's paged pool.
    Pool(Arc<KvPool>),
    /// A slot model's slots.
    Slots(Arc<SlotUse>),
}

/// A slot model's slots, counted by the engine.
#[derive(Debug)]
struct SlotUse {
    total: usize,
    in_use: AtomicUsize,
    capacity: usize,
    bytes: usize,
}

impl SlotUse {
    fn stats(&self) -> KvPoolStats {
        let in_use = self.in_use.load(Ordering::Relaxed).min(self.total);
        KvPoolStats {
            total: self.total,
            in_use,
            reserved: 0,
            free: self.total - in_use,
            largest_free_run: self.total - in_use,
            block_size: self.capacity,
            block_bytes: self.bytes,
        }
    }
}

impl Memory {
    fn stats(&self) -> KvPoolStats {
        match self {
            Memory::Pool(p) => p.stats(),
            Memory::Slots(u) => u.stats(),
        }
    }

    fn blocks_for(&self, positions: usize) -> usize {
        match self {
            Memory::Pool(p) => p.blocks_for(positions),
            Memory::Slots(_) => 1,
        }
    }

    fn total_blocks(&self) -> usize {
        match self {
            Memory::Pool(p) => p.total_blocks(),
            Memory::Slots(u) => u.total,
        }
    }
}

/// What runs the passes, with the memory it hands out.
enum Backend {
    /// The CPU model over a paged pool, on the engine's kernel threads.
    Paged {
        model: Arc<BitNetModel>,
        pool: Arc<KvPool>,
        ws: Box<Workspace>,
        kernels: rayon::ThreadPool,
    },
    /// A model that keeps a sequence per slot.
    Slots {
        model: Box<dyn BatchForward>,
        /// Slots no sequence holds (popped from the end).
        free: Vec<usize>,
        usage: Arc<SlotUse>,
        logits: Vec<f32>,
    },
}

/// A running sequence's keys and values.
enum SeqCache {
    Paged(KvCache),
    Slot {
        slot: usize,
        len: usize,
        capacity: usize,
    },
}

impl SeqCache {
    fn len(&self) -> usize {
        match self {
            SeqCache::Paged(c) => c.len(),
            SeqCache::Slot { len, .. } => *len,
        }
    }

    fn capacity(&self) -> usize {
        match self {
            SeqCache::Paged(c) => c.capacity(),
            SeqCache::Slot { capacity, .. } => *capacity,
        }
    }
}

impl Backend {
    /// Whether a sequence of `needed` positions can be admitted now.
    fn has_room(&self, needed: usize) -> bool {
        match self {
            Backend::Paged { pool, .. } => pool.can_reserve(pool.blocks_for(needed)),
            Backend::Slots { free, .. } => !free.is_empty(),
        }
    }

    /// Memory for a sequence of up to `needed` positions, `first` of them
    /// allocated at once (after [`Self::has_room`]).
    fn open(&mut self, first: usize, needed: usize) -> Result<SeqCache> {
        match self {
            Backend::Paged { pool, .. } => {
                Ok(SeqCache::Paged(KvCache::paged(pool, first, needed)?))
            }
            Backend::Slots {
                model, free, usage, ..
            } => {
                let slot = free.pop().ok_or_else(|| {
                    Error::InvalidArgument("no free slot for the sequence".into())
                })?;
                model.clear_slot(slot);
                usage.in_use.fetch_add(1, Ordering::Relaxed);
                Ok(SeqCache::Slot {
                    slot,
                    len: 0,
                    capacity: needed.min(model.slot_capacity()),
                })
            }
        }
    }

    /// Gives a finished sequence's memory back.
    fn release(&mut self, cache: SeqCache) {
        match (self, cache) {
            (
                Backend::Slots {
                    model, free, usage, ..
                },
                SeqCache::Slot { slot, .. },
            ) => {
                model.clear_slot(slot);
                free.push(slot);
                usage.in_use.fetch_sub(1, Ordering::Relaxed);
            }
            // Paged blocks go back to the pool when the cache drops.
            (_, cache) => drop(cache),
        }
    }

    fn stats(&self) -> KvPoolStats {
        match self {
            Backend::Paged { pool, .. } => pool.stats(),
            Backend::Slots { usage, .. } => usage.stats(),
        }
    }
}

/// A request in the engine: waiting, or running with its cache.
struct Slot {
    request: Box<Request>,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    seq: Sequence<'static>,
    cache: SeqCache,
    /// Prompt tokens not yet run.
    prompt_left: usize,
    /// Tokens to run at the next step.
    feed: Vec<u32>,
    /// An error of this sequence alone (e.g. its text decoder's).
    failed: Option<Error>,
}

struct Engine {
    backend: Backend,
    config: SchedulerConfig,
    shared: Arc<Shared>,
    context: usize,
    vocab: usize,
    eos: Vec<u32>,
    waiting: VecDeque<(Box<Request>, Instant)>,
    running: Vec<Slot>,
    drain_deadline: Option<Instant>,
}

impl Engine {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut connected = true;
        loop {
            // Wait for work when idle; otherwise take what arrived.
            if connected && self.running.is_empty() && self.waiting.is_empty() {
                if self.drain_deadline.is_some() {
                    break;
                }
                match rx.recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        connected = false;
                        self.drain_deadline.get_or_insert_with(Instant::now);
                        break;
                    }
                }
            }
            self.expire();
            self.admit();
            if self.running.is_empty() {
                if self.drain_deadline.is_some() && self.waiting.is_empty() {
                    break;
                }
                if !connected {
                    break;
                }
                continue;
            }
            let started = Instant::now();
            let (prefill, decoded) = match self.step() {
                Ok(counts) => counts,
                Err(e) => {
                    // A failed pass leaves the caches as they were, but which
                    // sequence caused it is unknown: fail them all.
                    let msg = e.to_string();
                    for slot in std::mem::take(&mut self.running) {
                        let Slot {
                            mut request, cache, ..
                        } = slot;
                        self.backend.release(cache);
                        request
                            .sink
                            .send(Event::Failed(Error::InvalidArgument(msg.clone())));
                    }
                    (0, 0)
                }
            };
            self.shared
                .running
                .store(self.running.len(), Ordering::Relaxed);
            if let Some(on_step) = &self.config.on_step {
                on_step(&StepReport {
                    batch_size: self.running.len(),
                    prefill_tokens: prefill,
                    decode_tokens: decoded,
                    elapsed: started.elapsed(),
                    queue_depth: self.waiting.len(),
                    running: self.running.len(),
                    kv: self.backend.stats(),
                });
            }
            self.retire();
        }
        // Exiting: nothing may be left without a final event.
        for (mut r, _) in self.waiting.drain(..) {
            r.sink.send(Event::Failed(Error::InvalidArgument(
                SubmitError::ShuttingDown.to_string(),
            )));
        }
        for slot in std::mem::take(&mut self.running) {
            Self::finish(&mut self.backend, slot, FinishReason::Cancelled);
        }
        self.shared.waiting.store(0, Ordering::Relaxed);
        self.shared.running.store(0, Ordering::Relaxed);
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(r, at) => self.waiting.push_back((r, at)),
            Command::Drain(deadline) => {
                self.drain_deadline = Some(deadline);
                for (mut r, _) in self.waiting.drain(..) {
                    self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                    r.sink.send(Event::Failed(Error::InvalidArgument(
                        SubmitError::ShuttingDown.to_string(),
                    )));
                }
            }
        }
    }

    /// Ends requests whose client went away or whose deadline passed, and
    /// everything once a drain deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let draining_over = self.drain_deadline.is_some_and(|d| now >= d);
        let mut i = 0;
        while i < self.waiting.len() {
            let (r, _) = &self.waiting[i];
            let timed_out = r.deadline.is_some_and(|d| now >= d);
            if r.sink.is_closed() || timed_out {
                let (mut r, at) = self.waiting.remove(i).expect("index in range");
                self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                if timed_out {
                    r.sink.send(Event::Finished(Completion {
                        finish: FinishReason::Timeout,
                        prompt_tokens: r.prompt.len(),
                        completion_tokens: 0,
                        queue_time: now - at,
                        time_to_first_token: None,
                        engine_time: Duration::ZERO,
                    }));
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let reason = if draining_over || s.request.sink.is_closed() {
                Some(FinishReason::Cancelled)
            } else if s.request.deadline.is_some_and(|d| now >= d) {
                Some(FinishReason::Timeout)
            } else {
                None
            };
            match reason {
                Some(reason) => Self::finish(&mut self.backend, self.running.remove(i), reason),
                None => i += 1,
            }
        }
    }

    /// Moves waiting requests into the batch, in order, while the batch
    /// has room and the pool can reserve their blocks.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch {
            let Some((r, _)) = self.waiting.front() else {
                break;
            };
            let needed = r.prompt.len() + r.params.max_tokens;
            if !self.backend.has_room(needed) {
                break;
            }
            let (mut request, submitted) = self.waiting.pop_front().expect("checked");
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            let cache = match self.backend.open(self.context.min(needed), needed) {
                Ok(c) => c,
                Err(e) => {
                    request.sink.send(Event::Failed(e));
                    continue;
                }
            };
            let decoder = request
                .decoder
                .take()
                .map(|d| d as Box<dyn PieceDecoder + 'static>);
            let seq = Sequence::with_eos(
                &self.eos,
                &request.prompt,
                &request.params,
                decoder,
                request.top_logprobs,
            );
            let slot = Slot {
                prompt_left: request.prompt.len(),
                feed: Vec::new(),
                failed: None,
                submitted,
                admitted: Instant::now(),
                first_token: None,
                seq,
                cache,
                request,
            };
            if slot.request.params.max_tokens == 0 {
                Self::finish(&mut self.backend, slot, FinishReason::Length);
                continue;
            }
            self.running.push(slot);
        }
        self.shared
            .running
            .store(self.running.len(), Ordering::Relaxed);
    }

    /// One forward pass: every decoding sequence advances a token, and the
    /// token budget left over goes to prompt chunks in admission order.
    /// Returns (prompt tokens run, tokens generated).
    fn step(&mut self) -> Result<(usize, usize)> {
        let decoding = self.running.iter().filter(|s| s.prompt_left == 0).count();
        let mut budget = self.config.step_tokens.saturating_sub(decoding).max(1);
        let mut prefill = 0;
        for s in &mut self.running {
            if s.prompt_left > 0 {
                s.feed.clear();
                if budget == 0 {
                    continue;
                }
                let start = s.request.prompt.len() - s.prompt_left;
                let take = s.prompt_left.min(budget);
                s.feed
                    .extend_from_slice(&s.request.prompt[start..start + take]);
                budget -= take;
                prefill += take;
            }
        }
        let all_logits: &mut [f32] = match &mut self.backend {
            Backend::Paged {
                model, ws, kernels, ..
            } => {
                let mut entries: Vec<BatchEntry<'_>> = self
                    .running
                    .iter_mut()
                    .filter(|s| !s.feed.is_empty())
                    .map(|s| BatchEntry {
                        ids: &s.feed,
                        cache: match &mut s.cache {
                            SeqCache::Paged(c) => c,
                            SeqCache::Slot { .. } => {
                                unreachable!("a paged engine opens paged caches")
                            }
                        },
                    })
                    .collect();
                model.forward_batch(&mut entries, Logits::Last, ws, Parallelism::Pool(kernels))?;
                ws.logits_mut()
            }
            Backend::Slots { model, logits, .. } => {
                let feeds: Vec<SlotFeed<'_>> = self
                    .running
                    .iter()
                    .filter(|s| !s.feed.is_empty())
                    .map(|s| SlotFeed {
                        slot: match s.cache {
                            SeqCache::Slot { slot, .. } => slot,
                            SeqCache::Paged(_) => unreachable!("a slot engine opens slots"),
                        },
                        ids: &s.feed,
                    })
                    .collect();
                *logits = model.forward_slots(&feeds)?;
                for s in &mut self.running {
                    if let SeqCache::Slot { len, .. } = &mut s.cache {
                        *len += s.feed.len();
                    }
                }
                logits
            }
        };
        let vocab = self.vocab;
        let mut generated = 0;
        let fed = self.running.iter_mut().filter(|s| !s.feed.is_empty());
        for (row, s) in fed.enumerate() {
            let logits = &mut all_logits[row * vocab..(row + 1) * vocab];
            if s.prompt_left > 0 {
                s.prompt_left -= s.feed.len();
                if s.prompt_left > 0 {
                    // A chunk in the middle of the prompt: no token yet.
                    s.feed.clear();
                    continue;
                }
            }
            s.first_token.get_or_insert_with(Instant::now);
            let room = s.cache.len() < s.cache.capacity();
            let sink = &mut s.request.sink;
            let next = s.seq.step(logits, room, &mut |e: Emitted<'_>| {
                sink.send(Event::Token(TokenEvent {
                    id: e.id,
                    text: e.text.to_string(),
                    logprobs: e.logprobs,
                }))
            });
            let next = match next {
                Ok(next) => next,
                Err(e) => {
                    // This sequence's own failure: the others go on.
                    s.failed = Some(e);
                    None
                }
            };
            generated += 1;
            s.feed.clear();
            if let Some(id) = next {
                s.feed.push(id);
            }
        }
        Ok((prefill, generated))
    }

    /// Sends the final event of finished sequences and frees their blocks.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if s.prompt_left == 0 && s.feed.is_empty() {
                let mut slot = self.running.remove(i);
                if let Some(e) = slot.failed.take() {
                    let Slot {
                        mut request, cache, ..
                    } = slot;
                    self.backend.release(cache);
                    request.sink.send(Event::Failed(e));
                    continue;
                }
                let finish = slot.seq.generation.finish.clone();
                Self::finish(&mut self.backend, slot, finish);
            } else {
                i += 1;
            }
        }
        self.shared
            .running
            .store(self.running.len(), Ordering::Relaxed);
    }

    fn finish(backend: &mut Backend, slot: Slot, finish: FinishReason) {
        let Slot {
            mut request,
            cache,
            seq,
            submitted,
            admitted,
            first_token,
            ..
        } = slot;
        // The blocks go back before the client hears the end, so a client
        // that looks at the pool next sees them free.
        backend.release(cache);
        let now = Instant::now();
        let completion = Completion {
            finish,
            prompt_tokens: request.prompt.len(),
            completion_tokens: seq.generation.tokens.len(),
            queue_time: admitted - submitted,
            time_to_first_token: first_token.map(|t| t - submitted),
            engine_time: now - admitted,
        };
        request.sink.send(Event::Finished(completion));
    }
}
