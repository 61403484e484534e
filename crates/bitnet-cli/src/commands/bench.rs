//! `bitnet bench`: prompt-processing and generation speed measured the way
//! llama.cpp's `llama-bench` measures them, printed as its markdown table or
//! as its JSON rows (the same field names), so that the two run side by side
//! on one GGUF file and tooling written for llama-bench reads our output.
//!
//! The tests mirror `tools/llama-bench/llama-bench.cpp`:
//!
//! - `ppN` (per `-p N`): N random token ids run as one forward pass from an
//!   empty cache, logits of the last position only (llama-bench feeds the
//!   prompt in `n_batch` = 2048-token chunks; we run it in one, the same for
//!   N ≤ 2048). No BOS: llama-bench adds one only when the vocabulary asks.
//! - `tgN` (per `-n N`): N forward passes of one token each from an empty
//!   cache, each feeding a random id rather than a sampled one (no sampling
//!   cost, as in llama-bench), logits computed at every step.
//! - Before the repetitions, one unmeasured warm-up: the whole prompt for
//!   `pp`, a single token for `tg`. Every repetition starts from a cleared
//!   cache.
//! - Per repetition, t/s = tokens / seconds; `avg_ts` and `stddev_ts` are the
//!   mean and sample standard deviation (n − 1) of those rates, `avg_ns` and
//!   `stddev_ns` of the times, exactly llama-bench's definitions.
//! - Rows run thread count by thread count, each with its `pp` tests, then
//!   its `tg` tests.
//!
//! Our additions, as extra JSON fields and table columns: the process's peak
//! RSS after each test (`peak_rss_bytes`), and for `tg` rows the bytes one
//! decode step reads (`decode_bytes_per_token`: the ternary and float
//! weights, the output layer, one embedding row and the average KV cache
//! read over the run), the read bandwidth measured at that thread count
//! (`read_bandwidth_bytes_per_s`, measured after all tests so that its buffer
//! does not count in the peak RSS), and `bandwidth_fraction` = bytes/token ×
//! t/s ÷ bandwidth. `model_size` and `model_n_params` count the weights as
//! we hold them in memory (ternary layers packed at 2 bits).
//!
//! `--profile` on the CPU times each stage of the forward pass over a
//! test's repetitions (the warm-up left out) and prints, per token, its
//! wall time and share, and for one-sequence `tg` tests the bytes of
//! weights it reads and the rate it read them at: which layers stream at
//! what fraction of the bandwidth.

use crate::commands::device::DeviceArgs;
use anyhow::{Context, bail};
use bitnet_core::{Parallelism, build_pool, system};
use bitnet_inference::device::SlotFeed;
use bitnet_inference::{BatchEntry, BitNetModel, DeviceSpec, Logits, Stage, StageTimes, Workspace};
use bitnet_models::weights::{BitNetWeights, Linear};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Arguments of `bitnet bench` (llama-bench's names where they exist).
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The model: a BitNet GGUF file or an HF checkpoint directory.
    #[arg(short, long)]
    model: PathBuf,
    /// Prompt sizes, one `pp` test each (0: none), e.g. `-p 128,512`.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths, one `tg` test each (0: none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Thread counts, e.g. `-t 1,2` (default: all logical CPUs).
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    reps: usize,
    /// `md` (llama-bench's table), `json` (an array of rows) or `jsonl`.
    #[arg(short = 'o', long, default_value = "md", value_parser = ["md", "json", "jsonl"])]
    output: String,
    /// Sequences decoded together in each `tg` test, e.g. `--parallel 1,16`
    /// (one row per count; t/s counts the tokens of all of them).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    parallel: Vec<usize>,
    /// Skip the warm-up run before each test.
    #[arg(long)]
    no_warmup: bool,
    /// Progress lines on stderr.
    #[arg(long)]
    progress: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// Buffer for the read-bandwidth measurement in MiB (default: twice the
    /// last-level cache, 512 to 1024); 0 skips it and the bandwidth fraction.
    #[arg(long, value_name = "MIB")]
    bandwidth_mib: Option<usize>,
    /// Where the time goes, on stderr: on the CPU, after each test, the
    /// wall time of each stage of the forward pass per token (with the
    /// bytes each stage's weights take and the rate it read them at, for
    /// one-sequence `tg` tests); on a GPU, after the tests, one decode
    /// step's device time per kind of kernel.
    #[arg(long)]
    profile: bool,
}

/// One test's results.
struct Row {
    n_threads: usize,
    n_prompt: usize,
    n_gen: usize,
    /// Sequences decoding together (`tg` rows; 1 for `pp`).
    n_parallel: usize,
    test_time: String,
    samples_ns: Vec<u64>,
    peak_rss_bytes: Option<u64>,
    /// Bytes a decode step reads (`tg` rows).
    bytes_per_token: Option<f64>,
    bandwidth: Option<f64>,
    /// The GPU it ran on (`None`: the CPU).
    device: Option<String>,
    /// Device memory the model's buffers take on the GPU.
    device_memory: Option<u64>,
}

impl Row {
    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen * self.n_parallel
    }
    fn samples_ts(&self) -> Vec<f64> {
        let n = self.tokens() as f64;
        self.samples_ns
            .iter()
            .map(|&t| 1e9 * n / t.max(1) as f64)
            .collect()
    }
    fn name(&self) -> String {
        let name = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        match self.n_parallel {
            1 => name,
            n => format!("{name} x{n}"),
        }
    }
    fn bandwidth_fraction(&self) -> Option<f64> {
        let ts = mean(&self.samples_ts());
        Some(self.bytes_per_token? * ts / self.bandwidth?)
    }
}

/// What the report says about the model.
struct ModelInfo {
    filename: String,
    kind: String,
    size: u64,
    n_params: u64,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let threads = if args.threads.is_empty() {
        vec![system::logical_cpus()]
    } else {
        args.threads.clone()
    };
    if threads.contains(&0) {
        bail!("--threads: thread counts must be at least 1");
    }
    if args.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.parallel.contains(&0) {
        bail!("--parallel: sequence counts must be at least 1");
    }
    let prompts: Vec<usize> = args.n_prompt.iter().copied().filter(|&n| n > 0).collect();
    let gens: Vec<usize> = args.n_gen.iter().copied().filter(|&n| n > 0).collect();
    if prompts.is_empty() && gens.is_empty() {
        bail!("nothing to run: give -p or -n greater than 0");
    }
    if !args.model.exists() {
        bail!("{} does not exist", args.model.display());
    }
    let start = Instant::now();
    let model = BitNetModel::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    eprintln!(
        "loaded {} in {:.2} s",
        args.model.display(),
        start.elapsed().as_secs_f64()
    );
    let info = model_info(&args, model.weights());
    let context = model.config().max_position_embeddings;
    let longest = prompts.iter().chain(&gens).copied().max().unwrap_or(1);
    if longest > context {
        bail!("a test needs {longest} positions; the model's context is {context}");
    }
    let widest = args.parallel.iter().copied().max().unwrap_or(1);
    // Several sequences decoding together on a GPU need a model that holds
    // them all (one slot each); one sequence takes the single-sequence path.
    let (mut gpu, mut slots) = if widest > 1 && args.device.device != DeviceSpec::Cpu {
        (
            None,
            args.device.open_slots(model.weights(), longest, widest),
        )
    } else {
        (args.device.open(model.weights(), longest), None)
    };
    if let Some(m) = &slots
        && m.slots() < widest
    {
        bail!(
            "--parallel {widest}: the GPU holds only {} sequences of {longest} positions",
            m.slots()
        );
    }
    let device = gpu
        .as_ref()
        .map(|g| g.device_name())
        .or_else(|| slots.as_ref().map(|m| m.device_name()));
    let device_memory = gpu
        .as_ref()
        .and_then(|g| g.device_memory_bytes())
        .or_else(|| slots.as_ref().and_then(|m| m.device_memory_bytes()));
    let mut caches: Vec<_> = (0..widest).map(|_| model.new_cache(longest)).collect();
    let mut ws = Workspace::new();
    let mut rng = SplitMix(0x5eed);
    let vocab = model.config().vocab_size as u64;
    let mut random_ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vocab)).collect() };

    let mut rows = Vec::new();
    for &n_threads in &threads {
        let pool = build_pool(n_threads)
            .with_context(|| format!("building a pool of {n_threads} threads"))?;
        let par = Parallelism::Pool(&pool);
        let tests = prompts.iter().map(|&p| (p, 0, 1)).chain(
            gens.iter()
                .flat_map(|&g| args.parallel.iter().map(move |&np| (0, g, np))),
        );
        for (n_prompt, n_gen, n_parallel) in tests {
            let mut row = Row {
                n_threads,
                n_prompt,
                n_gen,
                n_parallel,
                test_time: rfc3339_now(),
                samples_ns: Vec::with_capacity(args.reps),
                peak_rss_bytes: None,
                bytes_per_token: None,
                bandwidth: None,
                device: None,
                device_memory: None,
            };
            let cpu_profile = args.profile && slots.is_none() && gpu.is_none();
            let mut once = |warmup: bool, ws: &mut Workspace| -> anyhow::Result<u64> {
                let caches = &mut caches[..n_parallel];
                caches.iter_mut().for_each(|c| c.clear());
                let (p, g) = if warmup {
                    (n_prompt, n_gen.min(1))
                } else {
                    (n_prompt, n_gen)
                };
                let prompt = random_ids(p);
                let steps = random_ids(g * n_parallel);
                let t0 = Instant::now();
                if let Some(m) = slots.as_mut() {
                    (0..n_parallel).for_each(|s| m.clear_slot(s));
                    if p > 0 {
                        let feed = [SlotFeed {
                            slot: 0,
                            ids: &prompt,
                        }];
                        std::hint::black_box(m.forward_slots(&feed)?);
                    }
                    for ids in steps.chunks_exact(n_parallel) {
                        let feeds: Vec<SlotFeed<'_>> = ids
                            .iter()
                            .enumerate()
                            .map(|(slot, id)| SlotFeed {
                                slot,
                                ids: std::slice::from_ref(id),
                            })
                            .collect();
                        std::hint::black_box(m.forward_slots(&feeds)?);
                    }
                    return Ok(t0.elapsed().as_nanos() as u64);
                }
                if let Some(seq) = gpu.as_mut() {
                    seq.truncate(0);
                    if p > 0 {
                        std::hint::black_box(seq.forward(&prompt, Logits::Last)?);
                    }
                    for id in &steps {
                        std::hint::black_box(seq.forward(std::slice::from_ref(id), Logits::Last)?);
                    }
                    return Ok(t0.elapsed().as_nanos() as u64);
                }
                if p > 0 {
                    let mut batch = [BatchEntry {
                        ids: &prompt,
                        cache: &mut caches[0],
                    }];
                    model.forward_batch(&mut batch, Logits::Last, ws, par)?;
                }
                for ids in steps.chunks_exact(n_parallel) {
                    let mut batch: Vec<_> = ids
                        .iter()
                        .zip(caches.iter_mut())
                        .map(|(id, cache)| BatchEntry {
                            ids: std::slice::from_ref(id),
                            cache,
                        })
                        .collect();
                    model.forward_batch(&mut batch, Logits::Last, ws, par)?;
                }
                std::hint::black_box(ws.logits());
                Ok(t0.elapsed().as_nanos() as u64)
            };
            if !args.no_warmup {
                if args.progress {
                    eprintln!("bitnet bench: {} t={n_threads}: warmup", row.name());
                }
                once(true, &mut ws)?;
            }
            ws.time_stages(cpu_profile);
            for i in 0..args.reps {
                if args.progress {
                    eprintln!(
                        "bitnet bench: {} t={n_threads}: run {}/{}",
                        row.name(),
                        i + 1,
                        args.reps
                    );
                }
                row.samples_ns.push(once(false, &mut ws)?);
            }
            if let Some(times) = ws.stage_times() {
                print_stage_times(&row, times, model.weights());
                ws.time_stages(false);
            }
            row.peak_rss_bytes = system::peak_rss_bytes();
            // Bytes per token and the bandwidth fraction describe one
            // sequence; a batch reads the weights once for all of them.
            row.device = device.clone();
            row.device_memory = device_memory;
            if n_gen > 0 && n_parallel == 1 {
                row.bytes_per_token = Some(decode_bytes_per_token(model.weights(), n_gen));
            }
            rows.push(row);
        }
    }

    if args.profile {
        match gpu.as_mut() {
            Some(seq) => {
                // At the depth of the longest test's midpoint.
                let depth = (longest / 2).max(1);
                let ids: Vec<u32> = (0..depth as u64)
                    .map(|i| ((i * 7919) % vocab) as u32)
                    .collect();
                seq.truncate(0);
                seq.forward(&ids, Logits::Last)?;
                eprintln!(
                    "\ndecode step on {} at position {depth}:",
                    seq.device_name()
                );
                for (part, us) in seq.decode_profile()? {
                    eprintln!("  {part:<48} {us:>9.1} us");
                }
            }
            None if slots.is_some() => {
                eprintln!("--profile: times one sequence's decode step; run it with --parallel 1")
            }
            None => {}
        }
    }

    // Bandwidth last, so that its buffer does not count in the peak RSS.
    let buffer = match args.bandwidth_mib {
        Some(mib) => mib << 20,
        None => {
            let cache = system::largest_cache_bytes().unwrap_or(32 << 20);
            (2 * cache).clamp(512 << 20, 1 << 30)
        }
    };
    if buffer > 0 && !gens.is_empty() && device.is_none() {
        for &n in &threads {
            let pool = build_pool(n)?;
            if args.progress {
                eprintln!("bitnet bench: read bandwidth, {n} threads");
            }
            let bw = system::measure_read_bandwidth(buffer, 3, Parallelism::Pool(&pool));
            for r in rows.iter_mut().filter(|r| r.n_threads == n && r.n_gen > 0) {
                r.bandwidth = Some(bw);
            }
        }
    }

    match args.output.as_str() {
        "json" => {
            let all: Vec<_> = rows.iter().map(|r| json_row(&info, r)).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        "jsonl" => {
            for r in &rows {
                println!("{}", json_row(&info, r));
            }
        }
        _ => print_markdown(&info, &rows),
    }
    Ok(())
}

/// The bytes of weights each stage of a decode step reads (none for the
/// stages that read no weights).
fn stage_bytes(w: &BitNetWeights, stage: Stage) -> usize {
    let sum = |pick: fn(&bitnet_models::weights::Layer) -> Vec<&Linear>| {
        w.layers
            .iter()
            .flat_map(pick)
            .map(linear_bytes)
            .sum::<usize>()
    };
    match stage {
        Stage::Qkv => sum(|l| vec![&l.q_proj, &l.k_proj, &l.v_proj]),
        Stage::OProj => sum(|l| vec![&l.o_proj]),
        Stage::GateUp => sum(|l| vec![&l.gate_proj, &l.up_proj]),
        Stage::Down => sum(|l| vec![&l.down_proj]),
        Stage::Output => w.output_weight().size_bytes(),
        Stage::Other | Stage::RopeCache | Stage::Attention => 0,
    }
}

/// `--profile` on the CPU: one test's stage times per token, on stderr.
fn print_stage_times(row: &Row, times: &StageTimes, w: &BitNetWeights) {
    let tokens = (row.tokens() * row.n_parallel) as f64 * row.samples_ns.len() as f64;
    let decode = row.n_gen > 0 && row.n_parallel == 1;
    eprintln!(
        "\n{} at {} threads: time per token by stage ({} passes)",
        row.name(),
        row.n_threads,
        times.passes
    );
    eprintln!(
        "  {:<34} {:>9} {:>6} {:>10} {:>8}",
        "stage", "ms/token", "share", "MB/token", "GB/s"
    );
    let total = times.total().as_secs_f64();
    for stage in Stage::ALL {
        let secs = times.get(stage).as_secs_f64();
        let bytes = stage_bytes(w, stage) as f64;
        let (mb, rate) = if decode && bytes > 0.0 && secs > 0.0 {
            let per_token = secs / tokens;
            (
                format!("{:.1}", bytes / 1e6),
                format!("{:.1}", bytes / per_token / 1e9),
            )
        } else {
            (String::new(), String::new())
        };
        eprintln!(
            "  {:<34} {:>9.2} {:>5.1}% {:>10} {:>8}",
            stage.name(),
            secs * 1e3 / tokens,
            100.0 * secs / total.max(f64::MIN_POSITIVE),
            mb,
            rate
        );
    }
}

/// Bytes of a linear layer's weights as the kernels read them.
fn linear_bytes(l: &Linear) -> usize {
    match l {
        Linear::Float { weight, .. } => std::mem::size_of_val(weight.as_slice()),
        Linear::Ternary(b) => b.weights().as_bytes().len(),
        Linear::Dense(m) => m.size_bytes(),
    }
}

fn linears(w: &BitNetWeights) -> impl Iterator<Item = &Linear> {
    w.layers.iter().flat_map(|l| {
        [
            &l.q_proj,
            &l.k_proj,
            &l.v_proj,
            &l.o_proj,
            &l.gate_proj,
            &l.up_proj,
            &l.down_proj,
        ]
    })
}

fn norms_len(w: &BitNetWeights) -> usize {
    w.norm.len()
        + w.layers
            .iter()
            .map(|l| {
                l.input_layernorm.len()
                    + l.post_attention_layernorm.len()
                    + l.attn_sub_norm.len()
                    + l.ffn_sub_norm.len()
            })
            .sum::<usize>()
}

/// Bytes one decode step of a `tg{n_gen}` run reads on average: every
/// linear layer, the norms, the output layer, one embedding row, and the
/// keys and values of the positions so far (f32), averaged over the run.
fn decode_bytes_per_token(w: &BitNetWeights, n_gen: usize) -> f64 {
    let c = &w.config;
    let weights = linears(w).map(linear_bytes).sum::<usize>() + 4 * norms_len(w);
    let output = w.output_weight().size_bytes();
    let embed_row = w.embed_tokens.size_bytes() / w.embed_tokens.rows().max(1);
    let kv_per_position = (c.num_layers * 2 * c.kv_dim() * 4) as f64;
    let mean_positions = (n_gen as f64 + 1.0) / 2.0;
    (weights + output + embed_row) as f64 + kv_per_position * mean_positions
}

fn model_info(args: &Args, w: &BitNetWeights) -> ModelInfo {
    let mut size = linears(w).map(linear_bytes).sum::<usize>() + 4 * norms_len(w);
    let mut n_params = linears(w).map(|l| l.rows() * l.cols()).sum::<usize>() + norms_len(w);
    size += w.embed_tokens.size_bytes();
    n_params += w.embed_tokens.rows() * w.embed_tokens.cols();
    if let Some(head) = &w.lm_head {
        size += head.size_bytes();
        n_params += head.rows() * head.cols();
    }
    let ternary = linears(w).any(|l| matches!(l, Linear::Ternary(_)));
    let params = if n_params >= 1_000_000_000 {
        format!("{:.0}B", n_params as f64 / 1e9)
    } else {
        format!("{:.0}M", n_params as f64 / 1e6)
    };
    ModelInfo {
        filename: args.model.display().to_string(),
        kind: format!(
            "bitnet {params} {} (output {:?})",
            if ternary { "ternary" } else { "F32" },
            w.output_weight().encoding()
        ),
        size: size as u64,
        n_params: n_params as u64,
    }
}

/// The backend a row ran on, as llama-bench names them.
fn backend(r: &Row) -> &'static str {
    match r.device.as_deref() {
        None => "CPU",
        Some(d) if d.starts_with("cuda") => "CUDA",
        Some(_) => "wgpu",
    }
}

/// One row under llama-bench's JSON field names, then ours.
fn json_row(info: &ModelInfo, r: &Row) -> serde_json::Value {
    let ts = r.samples_ts();
    let ns: Vec<f64> = r.samples_ns.iter().map(|&t| t as f64).collect();
    serde_json::json!({
        "build_commit": concat!("bitnet-rs-", env!("CARGO_PKG_VERSION")),
        "build_number": 0,
        "cpu_info": system::cpu_name(),
        "gpu_info": r.device.clone().unwrap_or_default(),
        "gpu_memory_bytes": r.device_memory,
        "backends": backend(r),
        "model_filename": info.filename,
        "model_type": info.kind,
        "model_size": info.size,
        "model_n_params": info.n_params,
        "n_batch": r.n_prompt.max(1),
        "n_ubatch": r.n_prompt.max(1),
        "n_threads": r.n_threads,
        "type_k": "f32",
        "type_v": "f32",
        "n_gpu_layers": 0,
        "flash_attn": 0,
        "n_prompt": r.n_prompt,
        "n_gen": r.n_gen,
        "n_depth": 0,
        "n_parallel": r.n_parallel,
        "test_time": r.test_time,
        "avg_ns": mean(&ns) as u64,
        "stddev_ns": stddev(&ns) as u64,
        "avg_ts": mean(&ts),
        "stddev_ts": stddev(&ts),
        "samples_ns": r.samples_ns,
        "samples_ts": ts,
        "peak_rss_bytes": r.peak_rss_bytes,
        "decode_bytes_per_token": r.bytes_per_token,
        "read_bandwidth_bytes_per_s": r.bandwidth,
        "bandwidth_fraction": r.bandwidth_fraction(),
    })
}

/// llama-bench's markdown table, with our columns at the end.
fn print_markdown(info: &ModelInfo, rows: &[Row]) {
    let size = if info.size < 1 << 30 {
        format!("{:.2} MiB", info.size as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.2} GiB", info.size as f64 / (1u64 << 30) as f64)
    };
    let params = if info.n_params < 1_000_000_000 {
        format!("{:.2} M", info.n_params as f64 / 1e6)
    } else {
        format!("{:.2} B", info.n_params as f64 / 1e9)
    };
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} | {:>6} | {:>10} |",
        "model", "size", "params", "backend", "threads", "test", "t/s", "bw %", "peak RSS"
    );
    println!(
        "| {}- | {}: | {}: | {}- | {}: | {}: | {}: | {}: | {}: |",
        "-".repeat(29),
        "-".repeat(9),
        "-".repeat(9),
        "-".repeat(9),
        "-".repeat(6),
        "-".repeat(14),
        "-".repeat(19),
        "-".repeat(5),
        "-".repeat(9),
    );
    for r in rows {
        let ts = r.samples_ts();
        let bw = r
            .bandwidth_fraction()
            .map_or_else(|| "-".into(), |f| format!("{:.0}%", 100.0 * f));
        let rss = r.peak_rss_bytes.map_or_else(
            || "-".into(),
            |b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        );
        println!(
            "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} | {:>6} | {:>10} |",
            info.kind,
            size,
            params,
            backend(r),
            r.n_threads,
            r.name(),
            format!("{:.2} ± {:.2}", mean(&ts), stddev(&ts)),
            bw,
            rss
        );
    }
    if let Some(r) = rows.iter().find(|r| r.device.is_some()) {
        println!(
            "\nbackend {}: {}{}",
            backend(r),
            r.device.as_deref().unwrap_or(""),
            r.device_memory.map_or(String::new(), |b| format!(
                ", {:.1} MiB of GPU memory",
                b as f64 / (1u64 << 20) as f64
            ))
        );
    }
    println!(
        "\nbuild: bitnet-rs {} ({})",
        env!("CARGO_PKG_VERSION"),
        system::cpu_name()
    );
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n − 1), 0 for fewer than two values, as llama-bench.
fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// The current UTC time as RFC 3339 (`2024-05-01T12:34:56Z`), as llama-bench.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A small deterministic generator for the random token ids.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n.max(1)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stddev_is_the_sample_one() {
        assert_eq!(stddev(&[1.0]), 0.0);
        assert!((stddev(&[1.0, 3.0]) - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(mean(&[2.0, 4.0]), 3.0);
    }

    #[test]
    fn rfc3339_has_the_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
