//! Continuous batching on a tiny transformers-made checkpoint: every request
//! gives the same tokens inside a changing batch (with chunked prefill and
//! paged caches crossing block boundaries) as alone; a memory budget holds
//! under pressure; a full queue, bad requests, a client that leaves and a
//! drain deadline all end cleanly.

use bitnet_core::Parallelism;
use bitnet_inference::device::{CpuSlots, check_bad_feeds};
use bitnet_inference::generate::{Session, generate};
use bitnet_inference::scheduler::{
    Completion, Event, EventSink, Request, Scheduler, SchedulerConfig, StepReport, SubmitError,
};
use bitnet_inference::{BitNetModel, FinishReason, GenerateParams, KvPool, SamplerParams};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

mod common;
use common::dir;

fn model() -> Arc<BitNetModel> {
    Arc::new(BitNetModel::from_hf_dir(&dir("bitlinear_offline")).unwrap())
}

/// Prompts of lengths 1..=n+, from a seeded generator.
fn prompt(i: usize) -> Vec<u32> {
    let mut s = 0x9e37_79b9u64.wrapping_mul(i as u64 + 1);
    (0..1 + (i * 7) % 40)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 256) as u32
        })
        .collect()
}

fn params(i: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: 3 + i % 9,
        sampler: SamplerParams {
            temperature: if i % 3 == 1 { 0.9 } else { 0.0 },
            seed: i as u64,
            ..SamplerParams::default()
        },
        ignore_eos: true,
        ..GenerateParams::default()
    }
}

/// Collects a request's events until its last one.
fn wait(rx: &mpsc::Receiver<Event>) -> (Vec<u32>, Result<Completion, String>) {
    let mut tokens = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).expect("an event") {
            Event::Token(t) => tokens.push(t.id),
            Event::Finished(c) => return (tokens, Ok(c)),
            Event::Failed(e) => return (tokens, Err(e.to_string())),
        }
    }
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        kv_block_size: 4,
        step_tokens: 8,
        threads: 2,
        ..SchedulerConfig::default()
    }
}

#[test]
fn a_request_gives_the_same_tokens_alone_and_inside_a_batch_of_16_others() {
    let model = model();
    let alone: Vec<Vec<u32>> = (0..17)
        .map(|i| {
            let mut s = Session::new(&model, 128);
            let p = prompt(i);
            generate(
                &model,
                &mut s,
                &p,
                &params(i),
                None,
                Parallelism::Sequential,
                |_, _| true,
            )
            .unwrap()
            .tokens
        })
        .collect();
    let max_batch = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&max_batch);
    let scheduler = Scheduler::start(
        Arc::clone(&model),
        SchedulerConfig {
            on_step: Some(Arc::new(move |r: &StepReport| {
                seen.fetch_max(r.batch_size, Ordering::Relaxed);
            })),
            ..config()
        },
    )
    .unwrap();
    let receivers: Vec<_> = (0..17)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            scheduler
                .submit(Request::new(prompt(i), params(i), Box::new(tx)))
                .unwrap();
            rx
        })
        .collect();
    for (i, rx) in receivers.iter().enumerate() {
        let (tokens, done) = wait(rx);
        let done = done.unwrap();
        assert_eq!(tokens, alone[i], "request {i}");
        assert_eq!(done.finish, FinishReason::Length);
        assert_eq!(done.completion_tokens, params(i).max_tokens);
        assert_eq!(done.prompt_tokens, prompt(i).len());
    }
    assert!(
        max_batch.load(Ordering::Relaxed) > 8,
        "requests ran together"
    );
    let kv = scheduler.kv_stats();
    assert_eq!((kv.in_use, kv.reserved), (0, 0), "every block came back");
}

#[test]
fn a_slot_model_gives_the_same_tokens_and_queues_requests_past_its_slots() {
    let model = model();
    let alone: Vec<Vec<u32>> = (0..9)
        .map(|i| {
            let mut s = Session::new(&model, 128);
            generate(
                &model,
                &mut s,
                &prompt(i),
                &params(i),
                None,
                Parallelism::Sequential,
                |_, _| true,
            )
            .unwrap()
            .tokens
        })
        .collect();
    // Three slots of 64 positions for nine requests: six wait for a slot.
    let slots = CpuSlots::new(Arc::clone(&model), 3, 64, 2).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let scheduler = Scheduler::start_slots(
        Box::new(slots),
        SchedulerConfig {
            on_step: Some(Arc::new(move |r: &StepReport| {
                log.lock()
                    .unwrap()
                    .push((r.running, r.kv.in_use, r.kv.total));
            })),
            ..config()
        },
    )
    .unwrap();
    assert_eq!(scheduler.context(), 64);
    let kv = scheduler.kv_stats();
    assert_eq!((kv.total, kv.free, kv.block_size), (3, 3, 64));
    let c = model.config();
    assert_eq!(
        kv.block_bytes,
        KvPool::block_bytes_for(c.num_layers, c.kv_dim(), 64)
    );
    let receivers: Vec<_> = (0..9)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            scheduler
                .submit(Request::new(prompt(i), params(i), Box::new(tx)))
                .unwrap();
            rx
        })
        .collect();
    for (i, rx) in receivers.iter().enumerate() {
        let (tokens, done) = wait(rx);
        assert_eq!(tokens, alone[i], "request {i}");
        assert_eq!(done.unwrap().finish, FinishReason::Length);
    }
    let steps = seen.lock().unwrap().clone();
    assert!(
        steps
            .iter()
            .all(|&(running, in_use, total)| running <= 3 && in_use == running && total == 3)
    );
    assert!(
        steps.iter().any(|&(running, ..)| running == 3),
        "slots were shared"
    );
    assert_eq!(scheduler.kv_stats().in_use, 0, "every slot came back");
    // A request longer than a slot is refused up front.
    let (tx, _rx) = mpsc::channel();
    let long = Request::new(vec![1; 64], params(0), Box::new(tx));
    assert!(matches!(
        scheduler.submit(long),
        Err(SubmitError::Invalid(_))
    ));
}

#[test]
fn the_kv_budget_holds_and_waiting_requests_run_later() {
    let model = model();
    let c = model.config();
    // Room for exactly two requests of 40 positions (10 blocks each).
    let block = KvPool::block_bytes_for(c.num_layers, c.kv_dim(), 4);
    let over = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&over);
    let scheduler = Scheduler::start(
        Arc::clone(&model),
        SchedulerConfig {
            kv_budget_bytes: 20 * block,
            on_step: Some(Arc::new(move |r: &StepReport| {
                if r.kv.in_use + r.kv.reserved > r.kv.total || r.running > 2 {
                    flag.store(true, Ordering::Relaxed);
                }
            })),
            ..config()
        },
    )
    .unwrap();
    let p = GenerateParams {
        max_tokens: 30,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let receivers: Vec<_> = (0..6)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            scheduler
                .submit(Request::new(vec![5; 10], p.clone(), Box::new(tx)))
                .unwrap();
            rx
        })
        .collect();
    let results: Vec<_> = receivers.iter().map(wait).collect();
    assert!(!over.load(Ordering::Relaxed), "the budget was exceeded");
    for (tokens, done) in &results {
        assert_eq!(tokens, &results[0].0);
        assert_eq!(done.as_ref().unwrap().finish, FinishReason::Length);
    }
    // One request larger than the whole budget can never run.
    let (tx, _rx) = mpsc::channel();
    let err = scheduler
        .submit(Request::new(
            vec![5; 10],
            GenerateParams {
                max_tokens: 100,
                ..p
            },
            Box::new(tx),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("KV cache budget"), "{err}");
}

#[test]
fn bad_requests_and_a_full_queue_are_refused() {
    let model = model();
    let scheduler = Scheduler::start(
        Arc::clone(&model),
        SchedulerConfig {
            max_batch: 1,
            max_queue: 2,
            ..config()
        },
    )
    .unwrap();
    let submit = |prompt: Vec<u32>, max_tokens: usize| {
        let (tx, rx) = mpsc::channel();
        let r = scheduler.submit(Request::new(
            prompt,
            GenerateParams {
                max_tokens,
                ignore_eos: true,
                ..GenerateParams::default()
            },
            Box::new(tx),
        ));
        (r, rx)
    };
    assert!(matches!(submit(vec![], 4).0, Err(SubmitError::Invalid(_))));
    assert!(matches!(
        submit(vec![300], 4).0,
        Err(SubmitError::Invalid(_))
    ));
    let err = submit(vec![1; 100], 100).0.unwrap_err();
    assert!(
        err.to_string().contains("exceeds the context of 128"),
        "{err}"
    );
    // One runs (long), two wait, the next is refused.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        match submit(vec![1; 8], 100) {
            (Ok(()), rx) => held.push(rx),
            (Err(SubmitError::QueueFull { .. }), _) => refused += 1,
            (Err(e), _) => panic!("{e}"),
        }
    }
    assert!(refused >= 5, "only {refused} refused");
    for rx in &held {
        assert!(wait(rx).1.is_ok());
    }
}

/// A sink whose receiver "disconnects" after `keep` tokens.
struct Leaving {
    left: usize,
    tokens: Arc<AtomicUsize>,
}

impl EventSink for Leaving {
    fn send(&mut self, event: Event) -> bool {
        if matches!(event, Event::Token(_)) {
            self.tokens.fetch_add(1, Ordering::Relaxed);
        }
        self.left = self.left.saturating_sub(1);
        self.left > 0
    }
    fn is_closed(&self) -> bool {
        self.left == 0
    }
}

#[test]
fn a_client_that_leaves_frees_its_slot_and_a_drain_cuts_the_rest() {
    let model = model();
    let scheduler = Scheduler::start(Arc::clone(&model), config()).unwrap();
    let tokens = Arc::new(AtomicUsize::new(0));
    scheduler
        .submit(Request::new(
            vec![3; 5],
            GenerateParams {
                max_tokens: 100,
                ignore_eos: true,
                ..GenerateParams::default()
            },
            Box::new(Leaving {
                left: 3,
                tokens: Arc::clone(&tokens),
            }),
        ))
        .unwrap();
    let start = Instant::now();
    while scheduler.running() + scheduler.queue_depth() > 0 || tokens.load(Ordering::Relaxed) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "slot never freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(tokens.load(Ordering::Relaxed) <= 4, "kept generating");
    assert_eq!(scheduler.kv_stats().in_use, 0);

    // A long request, then a drain with a deadline already passed.
    let (tx, rx) = mpsc::channel();
    scheduler
        .submit(Request::new(
            vec![3; 5],
            GenerateParams {
                max_tokens: 120,
                ignore_eos: true,
                ..GenerateParams::default()
            },
            Box::new(tx),
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    scheduler.drain(Instant::now());
    let (tx2, _rx2) = mpsc::channel();
    assert!(matches!(
        scheduler.submit(Request::new(
            vec![3],
            GenerateParams::default(),
            Box::new(tx2)
        )),
        Err(SubmitError::ShuttingDown)
    ));
    let (_, done) = wait(&rx);
    match done {
        Ok(c) => assert!(matches!(
            c.finish,
            FinishReason::Cancelled | FinishReason::Length
        )),
        Err(e) => assert!(e.contains("shutting down"), "{e}"),
    }
    scheduler.join();
}

#[test]
fn logprobs_and_deadlines() {
    let model = model();
    let scheduler = Scheduler::start(Arc::clone(&model), config()).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut r = Request::new(
        vec![7; 6],
        GenerateParams {
            max_tokens: 4,
            ignore_eos: true,
            ..GenerateParams::default()
        },
        Box::new(tx),
    );
    r.top_logprobs = Some(3);
    scheduler.submit(r).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    loop {
        match rx.recv().unwrap() {
            Event::Token(t) => got.lock().unwrap().push(t),
            Event::Finished(_) => break,
            Event::Failed(e) => panic!("{e}"),
        }
    }
    for t in got.lock().unwrap().iter() {
        let lp = t.logprobs.as_ref().unwrap();
        assert_eq!(lp.top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(lp.top[0], (t.id, lp.logprob));
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let mass: f32 = lp.top.iter().map(|(_, l)| l.exp()).sum();
        assert!(lp.logprob <= 0.0 && mass <= 1.0 + 1e-5);
    }

    let (tx, rx) = mpsc::channel();
    let mut r = Request::new(
        vec![7; 6],
        GenerateParams {
            max_tokens: 120,
            ignore_eos: true,
            ..GenerateParams::default()
        },
        Box::new(tx),
    );
    r.deadline = Some(Instant::now());
    scheduler.submit(r).unwrap();
    let (_, done) = wait(&rx);
    assert_eq!(done.unwrap().finish, FinishReason::Timeout);
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_beside_running_streams() {
    let model = model();
    let steps = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&steps);
    let scheduler = Scheduler::start(
        Arc::clone(&model),
        SchedulerConfig {
            on_step: Some(Arc::new(move |r: &StepReport| {
                log.lock()
                    .unwrap()
                    .push((r.prefill_tokens, r.decode_tokens));
            })),
            ..config()
        },
    )
    .unwrap();
    let p = |max_tokens| GenerateParams {
        max_tokens,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let (tx, running) = mpsc::channel();
    scheduler
        .submit(Request::new(vec![9; 4], p(60), Box::new(tx)))
        .unwrap();
    // Wait until the first stream decodes, then send a 100-token prompt.
    assert!(matches!(running.recv().unwrap(), Event::Token(_)));
    let (tx, long) = mpsc::channel();
    scheduler
        .submit(Request::new(vec![4; 100], p(2), Box::new(tx)))
        .unwrap();
    assert!(wait(&long).1.is_ok());
    assert!(wait(&running).1.is_ok());
    let steps = steps.lock().unwrap();
    let prefill_steps: Vec<_> = steps.iter().filter(|(p, _)| *p > 0 && *p < 100).collect();
    // 100 prompt tokens at most 8 per step (7 beside one decoding stream).
    assert!(prefill_steps.len() >= 100 / 8, "{steps:?}");
    assert!(
        prefill_steps.iter().all(|(p, d)| *p <= 8 && *d >= 1),
        "a prefill step stalled the running stream: {steps:?}"
    );
}

/// The CPU's slots refuse bad feeds without touching any slot: the check
/// every slot backend runs.
#[test]
fn cpu_slots_refuse_bad_feeds_and_keep_their_lengths() {
    let mut slots = CpuSlots::new(model(), 3, 16, 1).unwrap();
    check_bad_feeds(&mut slots).unwrap();
}
