//! A small load generator for this server (or any OpenAI-compatible one):
//! N concurrent clients, each sending streaming chat completions back to
//! back for a fixed time. Every answer is checked for well-formedness
//! (status, chunk shapes, one finish chunk, usage, `[DONE]`), and the
//! report gives throughput, time to first token, latency and the server's
//! own overhead (latency minus the engine's time, from the timing comment
//! the server writes before `[DONE]`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// What to send and for how long.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://host:port`.
    pub base_url: String,
    /// The model id.
    pub model: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// How long to keep sending.
    pub duration: Duration,
    /// `max_tokens` of each request.
    pub max_tokens: usize,
    /// The user message.
    pub prompt: String,
    /// Sampling temperature of every request (0: greedy). Requests may end
    /// early at a stop token; `length` and `stop` both count as success.
    pub temperature: f32,
    /// The API key sent as `Authorization: Bearer` (servers with accounts).
    pub api_key: Option<String>,
    /// Client `i` of `n` sends its first request `i / n` of this after the
    /// start, so that arrivals spread over time instead of all clients
    /// starting, and (every request taking as many steps) finishing, in
    /// lockstep. Zero: all start at once.
    pub stagger: Duration,
}

/// One streamed answer.
#[derive(Clone, Debug, Default)]
pub struct StreamOutcome {
    /// HTTP status.
    pub status: u16,
    /// Text received.
    pub text: String,
    /// The `finish_reason`, if a finish chunk came.
    pub finish_reason: Option<String>,
    /// Usage from the last chunk.
    pub completion_tokens: Option<usize>,
    /// Whether `[DONE]` ended the stream.
    pub done: bool,
    /// Problems with the stream's shape (empty when well-formed).
    pub malformed: Vec<String>,
    /// Time to the first content chunk.
    pub ttft: Option<Duration>,
    /// Time to the end.
    pub latency: Duration,
    /// The server's reported engine and queue times.
    pub engine: Option<Duration>,
    /// Time spent queued.
    pub queue: Option<Duration>,
    /// The server's own measure of its overhead: from the request's
    /// arrival to its last event, minus engine and queue time.
    pub server_overhead: Option<Duration>,
}

/// An HTTP/1 client over plain TCP.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client with keep-alive connections.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POSTs `body` as JSON; returns status, headers and the whole body.
pub async fn post_json(
    client: &HttpClient,
    url: &str,
    body: &Value,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body))
}

/// Sends one streaming chat completion and checks the stream.
pub async fn stream_chat(client: &HttpClient, base_url: &str, body: &Value) -> StreamOutcome {
    stream_chat_as(client, base_url, body, None).await
}

/// [`stream_chat`] with an API key.
pub async fn stream_chat_as(
    client: &HttpClient,
    base_url: &str,
    body: &Value,
    api_key: Option<&str>,
) -> StreamOutcome {
    let start = Instant::now();
    let mut out = StreamOutcome::default();
    let mut builder = Request::post(format!("{base_url}/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(key) = api_key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    let req = match builder.body(Full::new(Bytes::from(body.to_string()))) {
        Ok(r) => r,
        Err(e) => {
            out.malformed.push(e.to_string());
            return out;
        }
    };
    let res = match client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            out.malformed.push(format!("request failed: {e}"));
            return out;
        }
    };
    out.status = res.status().as_u16();
    if out.status != 200 {
        // An error answer: a JSON body, not a stream.
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        out.text = body.map_or_else(|e| e.to_string(), |b| String::from_utf8_lossy(&b).into());
        out.latency = start.elapsed();
        return out;
    }
    let mut body = res.into_body();
    let mut buf = Vec::new();
    let mut id: Option<String> = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                out.malformed.push(format!("body: {e}"));
                break;
            }
            Some(Ok(frame)) => {
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buf.extend_from_slice(data);
                while let Some(at) = find_event_end(&buf) {
                    let event: Vec<u8> = buf.drain(..at + 2).collect();
                    let event = String::from_utf8_lossy(&event).into_owned();
                    handle_event(&event, &mut out, &mut id, start);
                }
            }
        }
    }
    if !buf.iter().all(u8::is_ascii_whitespace) {
        out.malformed.push(format!(
            "trailing bytes after the last event: {:?}",
            String::from_utf8_lossy(&buf)
        ));
    }
    out.latency = start.elapsed();
    if !out.done {
        out.malformed.push("no [DONE]".into());
    }
    if out.finish_reason.is_none() {
        out.malformed.push("no finish_reason".into());
    }
    out
}

fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

fn handle_event(event: &str, out: &mut StreamOutcome, id: &mut Option<String>, start: Instant) {
    for line in event.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            for kv in comment.split_whitespace() {
                let ms = |v: &str| {
                    v.parse::<f64>()
                        .ok()
                        .map(|m| Duration::from_secs_f64(m / 1e3))
                };
                if let Some(v) = kv.strip_prefix("engine_ms=") {
                    out.engine = ms(v);
                } else if let Some(v) = kv.strip_prefix("queue_ms=") {
                    out.queue = ms(v);
                } else if let Some(v) = kv.strip_prefix("overhead_ms=") {
                    out.server_overhead = ms(v);
                }
            }
            continue;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            if !line.is_empty() {
                out.malformed.push(format!("unexpected line {line:?}"));
            }
            continue;
        };
        if out.done {
            out.malformed.push("data after [DONE]".into());
        }
        if data == "[DONE]" {
            out.done = true;
            continue;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                out.malformed.push(format!("chunk is not JSON: {e}"));
                continue;
            }
        };
        if let Some(err) = v.get("error") {
            out.malformed.push(format!("error event: {err}"));
            continue;
        }
        if v["object"] != "chat.completion.chunk" {
            out.malformed.push(format!("object is {}", v["object"]));
        }
        let this_id = v["id"].as_str().unwrap_or_default().to_string();
        match id {
            None => *id = Some(this_id),
            Some(first) if *first != this_id => out.malformed.push("chunk ids differ".into()),
            Some(_) => {}
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            out.completion_tokens = u["completion_tokens"].as_u64().map(|n| n as usize);
        }
        if let Some(choice) = v["choices"].get(0) {
            if let Some(text) = choice["delta"]["content"].as_str()
                && !text.is_empty()
            {
                out.ttft.get_or_insert_with(|| start.elapsed());
                out.text.push_str(text);
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                if out.finish_reason.is_some() {
                    out.malformed.push("two finish chunks".into());
                }
                out.finish_reason = Some(r.to_string());
            }
        }
    }
}

/// What a load run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests completed with 200 and a well-formed stream.
    pub ok: usize,
    /// Answers with a 5xx status.
    pub server_errors: usize,
    /// Other non-200 answers (e.g. 429).
    pub other_status: usize,
    /// The bodies of the first few non-200 answers.
    pub error_samples: Vec<String>,
    /// Streams that were cut or ill-formed, with the first problem of each.
    pub malformed: Vec<String>,
    /// Completion tokens of the good requests (from usage).
    pub tokens: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Times to first token.
    pub ttft: Vec<Duration>,
    /// Latencies.
    pub latency: Vec<Duration>,
    /// Latency minus engine and queue time, as the client sees it (its
    /// own scheduling and the loopback included).
    pub overhead: Vec<Duration>,
    /// The server's own overhead, as it reports it per request.
    pub server_overhead: Vec<Duration>,
}

/// The `q`-quantile (0..=1) of `xs` (nearest rank), or zero when empty.
pub fn quantile(xs: &[Duration], q: f64) -> Duration {
    if xs.is_empty() {
        return Duration::ZERO;
    }
    let mut v = xs.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

impl LoadReport {
    /// Generated tokens per second over the run.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `cfg.concurrency` clients for `cfg.duration`.
pub async fn run_load(cfg: &LoadConfig) -> LoadReport {
    let client = client();
    let body = json!({
        "model": cfg.model,
        "messages": [{"role": "user", "content": cfg.prompt}],
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "seed": 1,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let until = start + cfg.duration;
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    for i in 0..cfg.concurrency {
        let (client, body, base) = (client.clone(), body.clone(), cfg.base_url.clone());
        let key = cfg.api_key.clone();
        let delay = cfg.stagger.mul_f64(i as f64 / cfg.concurrency as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut outcomes = Vec::new();
            while Instant::now() < until {
                outcomes.push(stream_chat_as(&client, &base, &body, key.as_deref()).await);
            }
            outcomes
        }));
    }
    let mut report = LoadReport {
        concurrency: cfg.concurrency,
        ..LoadReport::default()
    };
    for t in tasks {
        let outcomes = match t.await {
            Ok(o) => o,
            Err(e) => {
                report.malformed.push(format!("client task failed: {e}"));
                continue;
            }
        };
        for o in outcomes {
            match o.status {
                200 if o.malformed.is_empty() => {
                    report.ok += 1;
                    report.tokens += o.completion_tokens.unwrap_or(0);
                    report.latency.push(o.latency);
                    if let Some(t) = o.ttft {
                        report.ttft.push(t);
                    }
                    if let (Some(e), Some(q)) = (o.engine, o.queue) {
                        report.overhead.push(o.latency.saturating_sub(e + q));
                    }
                    report.server_overhead.extend(o.server_overhead);
                }
                200 | 0 => report.malformed.push(o.malformed.join("; ")),
                s => {
                    if s >= 500 {
                        report.server_errors += 1;
                    } else {
                        report.other_status += 1;
                    }
                    if report.error_samples.len() < 3 {
                        report.error_samples.push(format!("{s}: {}", o.text));
                    }
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// A load of short, non-streaming completions: what a platform's
/// per-request costs (auth, limits, metering) show up in.
#[derive(Clone, Debug)]
pub struct ShortLoadConfig {
    /// `http://host:port`.
    pub base_url: String,
    /// The model id.
    pub model: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// How long to keep sending.
    pub duration: Duration,
    /// `max_tokens` of each request.
    pub max_tokens: usize,
    /// The prompt.
    pub prompt: String,
    /// The API key, if the server has accounts.
    pub api_key: Option<String>,
    /// Requests per second over all clients (open loop: each client sends
    /// on a fixed schedule); `None` sends as fast as answers come back.
    pub rate: Option<f64>,
}

/// What a short-request load measured.
#[derive(Clone, Debug, Default)]
pub struct ShortLoadReport {
    /// Requests answered 200.
    pub completed: usize,
    /// Other answers by status (0: the request itself failed).
    pub failed: std::collections::BTreeMap<u16, usize>,
    /// Wall time.
    pub elapsed: Duration,
    /// Client-side latency of each 200.
    pub latencies: Vec<Duration>,
    /// The server's `x-bitnet-platform-ms` of each 200 (auth, limits,
    /// metering), when it sent one.
    pub platform: Vec<Duration>,
}

impl ShortLoadReport {
    /// Completed requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `cfg.concurrency` clients sending short completions for
/// `cfg.duration`.
pub async fn run_short_load(cfg: &ShortLoadConfig) -> ShortLoadReport {
    let client = client();
    let body = json!({
        "model": cfg.model,
        "prompt": cfg.prompt,
        "max_tokens": cfg.max_tokens,
        "temperature": 0,
    })
    .to_string();
    let start = Instant::now();
    let until = start + cfg.duration;
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (client, body, url) = (
            client.clone(),
            body.clone(),
            format!("{}/v1/completions", cfg.base_url),
        );
        let key = cfg.api_key.clone();
        let period = cfg
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(cfg.concurrency as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut r = ShortLoadReport::default();
            let mut ticks = period.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while Instant::now() < until {
                if let Some(t) = ticks.as_mut() {
                    t.tick().await;
                }
                let mut b = Request::post(&url).header("content-type", "application/json");
                if let Some(k) = &key {
                    b = b.header("authorization", format!("Bearer {k}"));
                }
                let Ok(req) = b.body(Full::new(Bytes::from(body.clone()))) else {
                    *r.failed.entry(0).or_default() += 1;
                    continue;
                };
                let t0 = Instant::now();
                let res = match client.request(req).await {
                    Ok(res) => res,
                    Err(_) => {
                        *r.failed.entry(0).or_default() += 1;
                        continue;
                    }
                };
                let status = res.status().as_u16();
                let platform = res
                    .headers()
                    .get("x-bitnet-platform-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok());
                let ok = res.into_body().collect().await.is_ok();
                if status == 200 && ok {
                    r.completed += 1;
                    r.latencies.push(t0.elapsed());
                    if let Some(ms) = platform {
                        r.platform.push(Duration::from_secs_f64(ms / 1e3));
                    }
                } else {
                    *r.failed.entry(status).or_default() += 1;
                }
            }
            r
        }));
    }
    let mut report = ShortLoadReport::default();
    for t in tasks {
        if let Ok(r) = t.await {
            report.completed += r.completed;
            for (k, v) in r.failed {
                *report.failed.entry(k).or_default() += v;
            }
            report.latencies.extend(r.latencies);
            report.platform.extend(r.platform);
        } else {
            *report.failed.entry(0).or_default() += 1;
        }
    }
    report.elapsed = start.elapsed();
    report
}
