//! Prometheus metrics of one server: a registry owned by the server state
//! (no process-wide recorder), rendered in the text exposition format at
//! `GET /metrics`.

use bitnet_inference::scheduler::StepReport;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 2 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Every metric the server reports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    time_to_first_token: Histogram,
    server_overhead: Histogram,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    queue_depth: Gauge,
    running: Gauge,
    batch_size: Histogram,
    step_seconds: Histogram,
    kv_blocks: Family<Labels, Gauge>,
    kv_largest_free_run: Gauge,
    auth_failures: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    platform_overhead: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bitnet");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and status code",
            requests.clone(),
        );
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by endpoint, to the last byte",
            latency.clone(),
        );
        let time_to_first_token = latency_histogram();
        registry.register(
            "time_to_first_token_seconds",
            "From the request's arrival to its first generated token",
            time_to_first_token.clone(),
        );
        let server_overhead = latency_histogram();
        registry.register(
            "server_overhead_seconds",
            "Request latency minus the engine's time on it (parsing, tokenizing, queueing, writing)",
            server_overhead.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens received",
            prompt_tokens.clone(),
        );
        let completion_tokens = Counter::default();
        registry.register(
            "completion_tokens",
            "Tokens generated",
            completion_tokens.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting for admission",
            queue_depth.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "running_sequences",
            "Sequences in the batch",
            running.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "batch_size",
            "Sequences per engine step",
            batch_size.clone(),
        );
        let step_seconds = latency_histogram();
        registry.register(
            "step_duration_seconds",
            "Wall time of one engine step",
            step_seconds.clone(),
        );
        let kv_blocks = Family::<Labels, Gauge>::default();
        registry.register(
            "kv_blocks",
            "KV cache blocks by state (in_use, reserved, free, total)",
            kv_blocks.clone(),
        );
        let kv_largest_free_run = Gauge::default();
        registry.register(
            "kv_largest_free_run_blocks",
            "The longest run of consecutive free KV blocks",
            kv_largest_free_run.clone(),
        );
        let auth_failures = Family::<Labels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for their API key, by reason",
            auth_failures.clone(),
        );
        let rate_limited = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a tenant's limit, by limit",
            rate_limited.clone(),
        );
        // 10 µs to about 1.3 s.
        let platform_overhead = Histogram::new(exponential_buckets(1e-5, 2.0, 18));
        registry.register(
            "platform_overhead_seconds",
            "Time a request spends in authentication, rate limiting and metering",
            platform_overhead.clone(),
        );
        Metrics {
            auth_failures,
            rate_limited,
            platform_overhead,
            registry,
            requests,
            latency,
            time_to_first_token,
            server_overhead,
            prompt_tokens,
            completion_tokens,
            queue_depth,
            running,
            batch_size,
            step_seconds,
            kv_blocks,
            kv_largest_free_run,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("endpoint".into(), endpoint.into()),
                ("status".into(), status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("endpoint".into(), endpoint.into())])
            .observe(seconds);
    }

    /// Records a finished generation.
    pub fn generation(
        &self,
        prompt_tokens: usize,
        completion_tokens: usize,
        ttft: Option<f64>,
        overhead: f64,
    ) {
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.completion_tokens.inc_by(completion_tokens as u64);
        if let Some(t) = ttft {
            self.time_to_first_token.observe(t);
        }
        self.server_overhead.observe(overhead.max(0.0));
    }

    /// Records one engine step (called on the engine thread).
    pub fn step(&self, r: &StepReport) {
        self.batch_size.observe(r.batch_size as f64);
        self.step_seconds.observe(r.elapsed.as_secs_f64());
        self.queue_depth.set(r.queue_depth as i64);
        self.running.set(r.running as i64);
        self.kv(&r.kv);
    }

    /// Sets the queue and KV gauges from a snapshot.
    pub fn gauges(&self, queue_depth: usize, running: usize, kv: &bitnet_inference::KvPoolStats) {
        self.queue_depth.set(queue_depth as i64);
        self.running.set(running as i64);
        self.kv(kv);
    }

    fn kv(&self, kv: &bitnet_inference::KvPoolStats) {
        for (state, n) in [
            ("in_use", kv.in_use),
            ("reserved", kv.reserved),
            ("free", kv.free),
            ("total", kv.total),
        ] {
            self.kv_blocks
                .get_or_create(&vec![("state".into(), state.into())])
                .set(n as i64);
        }
        self.kv_largest_free_run.set(kv.largest_free_run as i64);
    }

    /// Counts a refused key.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// Counts a request refused by a limit.
    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited
            .get_or_create(&vec![("limit".into(), limit.into())])
            .inc();
    }

    /// Records the platform's time on one request.
    pub fn platform_overhead(&self, seconds: f64) {
        self.platform_overhead.observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
