//! The HTTP API end to end on a loopback port: the OpenAI shapes of every
//! endpoint, streaming, stop sequences, limits, seeds, log-probabilities,
//! batched answers equal to lone ones, every bad-input case, a full queue,
//! a client that leaves, and a graceful shutdown in the middle of a stream.

use bitnet_inference::BitNetModel;
use bitnet_server::ServerConfig;
use bitnet_server::loadgen::stream_chat;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

mod common;
use common::{TestServer, error_of};

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_in_openai_shapes() {
    let s = TestServer::start(ServerConfig::default()).await;
    assert_eq!(s.get("/health").await, (200, "ok".into()));
    assert_eq!(s.get("/ready").await, (200, "ready".into()));
    let (status, models) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(s.get("/v1/models/tiny").await.0, 200);
    assert_eq!(s.get("/v1/models/other").await.0, 404);
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object());
    assert!(doc["components"]["schemas"]["ChatCompletionRequest"].is_object());

    let (status, headers, v) = s
        .post(
            "/v1/chat/completions",
            &chat("Hello there", json!({"max_tokens": 5})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(headers.contains_key("x-request-id"));
    assert!(headers.contains_key("x-bitnet-engine-ms"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    let u = &v["usage"];
    let completion = u["completion_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&completion));
    assert_eq!(finish == "length", completion == 5, "{v}");
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + completion
    );

    let (status, _, v) = s
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "Once upon", "max_tokens": 4, "temperature": 0,
                    "logprobs": 2}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let lp = &v["choices"][0]["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);

    let (_, metrics) = s.get("/metrics").await;
    for name in [
        "bitnet_requests_total",
        "bitnet_request_duration_seconds_bucket",
        "bitnet_time_to_first_token_seconds",
        "bitnet_prompt_tokens_total",
        "bitnet_completion_tokens_total",
        "bitnet_queue_depth",
        "bitnet_batch_size",
        "bitnet_kv_blocks",
        "bitnet_kv_largest_free_run_blocks",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stops_seeds_and_logprobs() {
    let s = TestServer::start(ServerConfig::default()).await;
    let base = chat("Tell me a story", json!({"max_tokens": 12}));
    let (_, _, whole) = s.post("/v1/chat/completions", &base).await;
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    // The stream carries the same text, a finish chunk, usage, [DONE].
    let mut streamed = base.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let out = stream_chat(&s.client, &s.base, &streamed).await;
    assert!(out.malformed.is_empty(), "{:?}", out.malformed);
    assert_eq!(out.text, text);
    assert_eq!(
        out.completion_tokens,
        whole["usage"]["completion_tokens"]
            .as_u64()
            .map(|n| n as usize)
    );
    assert!(out.engine.is_some() && out.done);

    // A stop sequence from the middle of the text cuts it there.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let mut b = base.clone();
        b["stop"] = json!([stop.clone()]);
        let (_, _, v) = s.post("/v1/chat/completions", &b).await;
        let cut = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(cut, &text[..text.find(&stop).unwrap()], "stop {stop:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    // Seeds reproduce sampled text; other seeds usually differ.
    let sampled = |seed: i64| {
        let mut b = base.clone();
        b["temperature"] = json!(1.0);
        b["seed"] = json!(seed);
        b
    };
    let (_, _, a) = s.post("/v1/chat/completions", &sampled(7)).await;
    let (_, _, b) = s.post("/v1/chat/completions", &sampled(7)).await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);

    // Chat log-probabilities.
    let mut b = base.clone();
    b["logprobs"] = json!(true);
    b["top_logprobs"] = json!(3);
    let (status, _, v) = s.post("/v1/chat/completions", &b).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for c in content {
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(c["logprob"], top[0]["logprob"]);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let s = TestServer::start(ServerConfig {
        max_body_bytes: 1 << 20,
        ..ServerConfig::default()
    })
    .await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec(), 400, "not valid JSON"),
        ("empty body", Vec::new(), 400, "empty"),
        (
            "wrong type",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#
                .to_vec(),
            400,
            "invalid type",
        ),
        (
            "unknown model",
            br#"{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
            404,
            "gpt-9",
        ),
        (
            "n = 2",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"n":2}"#.to_vec(),
            400,
            "n = 2",
        ),
        (
            "absurd max_tokens",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":99999999999}"#
                .to_vec(),
            400,
            "maximum context length",
        ),
        (
            "prompt longer than the context",
            format!(
                r#"{{"model":"tiny","messages":[{{"role":"user","content":"{}"}}]}}"#,
                "word ".repeat(400)
            )
            .into_bytes(),
            400,
            "maximum context length",
        ),
        (
            // Long enough to be tokenized off the request's task.
            "long prompt longer than the context",
            format!(
                r#"{{"model":"tiny","messages":[{{"role":"user","content":"{}"}}]}}"#,
                "word ".repeat(5000)
            )
            .into_bytes(),
            400,
            "maximum context length",
        ),
        (
            "invalid UTF-8",
            b"{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "bad temperature",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"temperature":5}"#
                .to_vec(),
            400,
            "temperature",
        ),
        (
            "unknown role",
            br#"{"model":"tiny","messages":[{"role":"wizard","content":"hi"}]}"#.to_vec(),
            400,
            "unknown role",
        ),
    ];
    for (name, body, status, needle) in cases {
        let (got, _, bytes) = s.raw("POST", "/v1/chat/completions", body).await;
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{name}: body is not JSON: {bytes:?}"));
        let (kind, message) = error_of(&v);
        assert_eq!(got, status, "{name}: {v}");
        assert!(message.contains(needle), "{name}: {message}");
        assert!(kind.ends_with("_error"), "{name}: {kind}");
    }
    let (got, body) = s.post_oversized("/v1/chat/completions", 100 << 20).await;
    assert_eq!(got, 413, "{body}");
    assert!(body.contains("larger than the limit"), "{body}");
    let (got, _, bytes) = s.raw("GET", "/v1/chat/completions", Vec::new()).await;
    assert_eq!(got, 405, "{bytes:?}");
    let (got, _, bytes) = s.raw("GET", "/v2/nothing", Vec::new()).await;
    assert_eq!(got, 404);
    assert!(serde_json::from_slice::<Value>(&bytes).is_ok());
    // Still serving.
    let (status, _, _) = s
        .post(
            "/v1/chat/completions",
            &chat("hi", json!({"max_tokens": 2})),
        )
        .await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answers_the_same_alone_and_among_16_others() {
    let s = TestServer::start(ServerConfig::default()).await;
    let target = chat("The quick brown fox", json!({"max_tokens": 10}));
    let (_, _, alone) = s.post("/v1/chat/completions", &target).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let body = chat(
            &"lorem ipsum ".repeat(1 + i % 5),
            json!({"max_tokens": 3 + i % 7, "temperature": if i % 2 == 0 { 0.0 } else { 0.8 }}),
        );
        let (client, base) = (s.client.clone(), s.base.clone());
        tasks.push(tokio::spawn(async move {
            bitnet_server::loadgen::post_json(
                &client,
                &format!("{base}/v1/chat/completions"),
                &body,
            )
            .await
            .unwrap()
            .0
        }));
    }
    let (_, _, batched) = s.post("/v1/chat/completions", &target).await;
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(alone["choices"], batched["choices"]);
    s.stop().await;
}

/// The engine over a model that holds its sequences in slots (as a GPU
/// model does; the CPU's slot model here) answers as the paged CPU engine
/// does, with more concurrent requests than slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_model_serves_the_same_answers_with_more_clients_than_slots() {
    use bitnet_inference::device::CpuSlots;
    let paged = TestServer::start(ServerConfig::default()).await;
    let open: bitnet_server::DeviceOpener = Box::new(|m| {
        let model = std::sync::Arc::new(BitNetModel::new(m.weights().clone()).unwrap());
        Some(Box::new(CpuSlots::new(model, 3, 128, 1).unwrap()))
    });
    let slots = TestServer::start_on(ServerConfig::default(), Some(open)).await;
    assert!(
        slots.state.device.starts_with("cpu"),
        "{}",
        slots.state.device
    );
    let bodies: Vec<Value> = (0..7)
        .map(|i| {
            chat(
                &"lorem ipsum ".repeat(1 + i % 4),
                json!({"max_tokens": 4 + i % 5}),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for body in bodies.clone() {
        let (client, base) = (slots.client.clone(), slots.base.clone());
        tasks.push(tokio::spawn(async move {
            bitnet_server::loadgen::post_json(
                &client,
                &format!("{base}/v1/chat/completions"),
                &body,
            )
            .await
            .unwrap()
        }));
    }
    for (body, task) in bodies.iter().zip(tasks) {
        let (status, _, got) = task.await.unwrap();
        assert_eq!(status, 200);
        let got: Value = serde_json::from_slice(&got).unwrap();
        let (_, _, want) = paged.post("/v1/chat/completions", body).await;
        assert_eq!(got["choices"], want["choices"]);
        assert_eq!(got["usage"], want["usage"]);
    }
    let (_, metrics) = slots.get("/metrics").await;
    let total = metrics
        .lines()
        .find(|l| l.starts_with("bitnet_kv_blocks{") && l.contains("\"total\""))
        .unwrap_or_default();
    assert!(total.ends_with(" 3"), "{metrics}");
    paged.stop().await;
    slots.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_a_leaving_client_frees_its_slot() {
    let s = TestServer::start(ServerConfig {
        max_batch: 1,
        max_queue: 1,
        ..ServerConfig::default()
    })
    .await;
    // 30 long streams at once: one runs, one waits, the rest are refused
    // (or, if the engine is quick, run later); every answer is well-formed.
    let long = chat("a", json!({"max_tokens": 100, "stream": true}));
    let mut held = Vec::new();
    for _ in 0..30 {
        let (client, base, body) = (s.client.clone(), s.base.clone(), long.clone());
        held.push(tokio::spawn(async move {
            bitnet_server::loadgen::stream_chat(&client, &base, &body).await
        }));
    }
    let mut refused = 0;
    for h in held {
        let out = h.await.unwrap();
        if out.status == 429 {
            refused += 1;
            let v: Value = serde_json::from_str(&out.text).unwrap();
            assert_eq!(error_of(&v).0, "rate_limit_error");
        } else {
            assert_eq!(out.status, 200);
            assert!(out.malformed.is_empty(), "{:?}", out.malformed);
        }
    }
    assert!(refused > 0, "no 429 while the queue was full");
    let (status, headers, _) = {
        // Retry-After comes with the 429: fill the slot and queue again.
        let mut keep = Vec::new();
        for _ in 0..2 {
            let (client, base, body) = (s.client.clone(), s.base.clone(), long.clone());
            keep.push(tokio::spawn(async move {
                bitnet_server::loadgen::stream_chat(&client, &base, &body).await
            }));
        }
        let mut last = (0, hyper::HeaderMap::new(), Value::Null);
        for _ in 0..50 {
            last = s
                .post("/v1/chat/completions", &chat("b", json!({"max_tokens": 2})))
                .await;
            if last.0 == 429 {
                break;
            }
        }
        for k in keep {
            k.await.unwrap();
        }
        last
    };
    if status == 429 {
        assert!(headers.contains_key("retry-after"));
    }

    // A client that drops its stream: the engine lets go within a step.
    let req = hyper::Request::post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            long.to_string(),
        )))
        .unwrap();
    let res = s.client.request(req).await.unwrap();
    let mut body = res.into_body();
    use http_body_util::BodyExt;
    let _ = body.frame().await;
    drop(body);
    let start = Instant::now();
    while s.state.scheduler.running() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.state.scheduler.kv_stats().in_use, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_streams_and_stops() {
    let mut s = TestServer::start(ServerConfig {
        shutdown_grace_secs: 0.2,
        ..ServerConfig::default()
    })
    .await;
    let long = chat("a", json!({"max_tokens": 100, "stream": true}));
    let (client, base) = (s.client.clone(), s.base.clone());
    let stream =
        tokio::spawn(
            async move { bitnet_server::loadgen::stream_chat(&client, &base, &long).await },
        );
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.trigger_shutdown();
    let out = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the stream ended")
        .unwrap();
    // Finished in the grace period, or cut with an error event: either way
    // the stream ends with [DONE].
    assert!(out.done, "{:?}", out.malformed);
    let handle = s.handle.take().unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
    assert!(s.state.scheduler.is_draining());
}
