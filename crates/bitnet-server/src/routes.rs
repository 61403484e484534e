//! The router: thin handlers over [`crate::generation`], a JSON body
//! extractor that answers in OpenAI's error shape, and the middleware that
//! gives every request an id, a log line and its metrics.

use crate::error::ApiError;
use crate::gate::TenantContext;
use crate::generation::{
    Collected, Prepared, Running, chat_logprob, collect, engine_failure, finish_reason,
    generate_params, record, submit, token_text, usage,
};
use crate::openai::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobs, ChatMessageOut, CompletionChoice,
    CompletionLogprobs, CompletionRequest, CompletionResponse, MessageContent, ModelCard,
    ModelList, PromptField,
};
use crate::state::{AppState, unix_now};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitnet_inference::scheduler::{Completion, Event};
use bitnet_models::chat::ChatMessage;
use futures_util::stream::{self, Stream};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The request's id (set by the middleware, read by handlers).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A JSON body whose rejections are OpenAI-style errors (400 for syntax,
/// types and encoding, 413 for size).
pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid(format!("Could not read the request body: {e}"))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::invalid(
                "The request body is empty; send a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(OpenAiJson).map_err(|e| {
            ApiError::invalid(format!(
                "The request body is not valid JSON for this endpoint: {e}"
            ))
        })
    }
}

/// The body limit, for the 413 message.
#[derive(Clone, Copy, Debug)]
struct BodyLimit(usize);

/// The router with every route, the middleware and the body limit.
///
/// `/v1/*` passes the platform's [`gate`](crate::gate) (keys, limits,
/// metering) when the state has a platform; `/admin/*` needs the admin
/// token; health, readiness, metrics, the OpenAPI document and the
/// dashboard page are public.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/usage", get(crate::account::usage))
        .route("/v1/usage/export", get(crate::account::usage_export))
        .route("/v1/invoice", get(crate::account::invoice))
        .route("/v1/dashboard/summary", get(crate::account::summary))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::gate::gate,
        ));
    Router::new()
        .merge(v1)
        .merge(crate::admin::routes(Arc::clone(&state)))
        .route("/dashboard", get(crate::account::dashboard_page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            observe,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
        .with_state(state)
}

/// Gives the request an id (echoed in `x-request-id`), runs it inside a
/// span carrying that id, logs its end, and counts it.
async fn observe(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let id = state.next_id("req");
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    let streaming = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let seconds = started.elapsed().as_secs_f64();
    // Streams are counted when they end (see `finish_stream`).
    if !streaming {
        state.metrics.request(endpoint(&path), status, seconds);
    }
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = seconds * 1e3,
            streaming,
            "request answered"
        )
    });
    res
}

/// A bounded label for the metrics (unknown paths share one).
fn endpoint(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        "/health" => "health",
        "/ready" => "ready",
        "/metrics" => "metrics",
        "/openapi.json" => "openapi",
        p if p.starts_with("/v1/models/") => "model",
        _ => "other",
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::route_not_found(req.uri().path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "The process is up")))]
pub(crate) async fn health() -> &'static str {
    "ok"
}

/// Readiness: the model is loaded and the server is not draining.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Ready for requests"),
    (status = 503, description = "Shutting down", body = crate::openai::ErrorBody)))]
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.scheduler.is_draining() {
        return Err(ApiError::unavailable("The server is shutting down"));
    }
    Ok("ready")
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.scheduler;
    state
        .metrics
        .gauges(s.queue_depth(), s.running(), &s.kv_stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This API's OpenAPI document.
async fn openapi() -> Response {
    let doc = crate::openapi::document();
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

fn card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.model_id.clone(),
        object: "model".into(),
        created: state.created,
        owned_by: "bitnet-rust".into(),
    }
}

/// The served model.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![card(&state)],
    })
}

/// One model by id.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = ModelCard), (status = 404, body = crate::openai::ErrorBody)))]
pub(crate) async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    if id != state.model_id {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(card(&state)))
}

fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model != state.model_id {
        return Err(ApiError::model_not_found(model));
    }
    Ok(())
}

/// Text up to this many bytes is templated and tokenized on the request's
/// own task: that takes tens of microseconds, less than handing it to
/// another thread (which, when a burst of requests arrives together,
/// wakes or starts a thread per request and measured 2-6 ms each at 64
/// concurrent streams on two cores).
const INLINE_TEXT_BYTES: usize = 16 << 10;

/// Runs CPU work (templating, tokenizing) over `text_bytes` of input:
/// inline when the text is short, off tokio's workers when it is long
/// enough to hold up the other requests.
async fn tokenizing<T: Send + 'static>(
    text_bytes: usize,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if text_bytes <= INLINE_TEXT_BYTES {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
}

/// Creates a chat completion.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The answer, or a `text/event-stream` of `ChatCompletionChunk`s ending in `data: [DONE]`", body = ChatCompletionResponse),
        (status = 400, body = crate::openai::ErrorBody), (status = 404, body = crate::openai::ErrorBody),
        (status = 413, body = crate::openai::ErrorBody), (status = 429, body = crate::openai::ErrorBody),
        (status = 503, body = crate::openai::ErrorBody), (status = 504, body = crate::openai::ErrorBody)))]
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    tenant: Option<axum::Extension<Arc<TenantContext>>>,
    OpenAiJson(req): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let tenant = tenant.map(|t| t.0);
    let arrived = Instant::now();
    check_model(&state, &req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > 20 => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!("top_logprobs must be between 0 and 20, not {n}"),
            ));
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        (true, n) => Some(n.unwrap_or(0) as usize),
        (false, None) => None,
    };
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].role"),
                    format!(
                        "unknown role `{other}`; use system, developer, user, assistant or tool"
                    ),
                ));
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid_param(
                                &format!("messages[{i}].content[{j}]"),
                                format!(
                                    "content parts of type `{}` are not supported; this model \
                                     reads text only",
                                    p.kind
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    let st = Arc::clone(&state);
    let text_bytes = messages.iter().map(|m| m.content.len()).sum();
    let prompt = tokenizing(text_bytes, move || {
        let bos = st.tokenizer.bos_token().unwrap_or_default();
        let eos = st.tokenizer.eos_token().unwrap_or_default();
        let text = st
            .template
            .render(&messages, true, &bos, &eos)
            .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
        st.tokenizer
            .encode(&text, false)
            .map_err(|e| ApiError::invalid_param("messages", e.to_string()))
    })
    .await?;
    let params = generate_params(&state, &req.sampling, prompt.len())?;
    charge(tenant.as_deref(), prompt.len(), params.max_tokens).await?;
    let run = submit(
        &state,
        Prepared {
            prompt,
            params,
            top_logprobs,
        },
        arrived,
    )?;
    let id = state.next_id("chatcmpl");
    if req.sampling.stream {
        let include_usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream_response(
            state,
            run,
            Flavor::Chat,
            id,
            include_usage,
            request_id,
            tenant,
        ));
    }
    let mut run = run;
    let (out, done) = collect(&mut run).await?;
    if let Some(t) = &tenant {
        t.set_usage(done.prompt_tokens, done.completion_tokens);
    }
    let finish = finish_reason(&state, &done)?;
    record(&state, &run, &done);
    let logprobs = top_logprobs.map(|_| ChatLogprobs {
        content: out
            .tokens
            .iter()
            .filter_map(|t| chat_logprob(&state, t))
            .collect(),
    });
    let body = ChatCompletionResponse {
        id,
        object: "chat.completion".into(),
        created: unix_now(),
        model: state.model_id.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessageOut {
                role: "assistant".into(),
                content: out.text,
            },
            logprobs,
            finish_reason: finish.into(),
        }],
        usage: usage(&done),
        system_fingerprint: state.fingerprint.clone(),
    };
    Ok(with_timing((Json(body)).into_response(), &done))
}

/// Reserves a tenant's tokens for a prompt and its `max_tokens`.
async fn charge(
    tenant: Option<&TenantContext>,
    prompt: usize,
    max_tokens: usize,
) -> Result<(), ApiError> {
    if let Some(t) = tenant {
        t.set_prompt_tokens(prompt);
        t.reserve_tokens(prompt.saturating_add(max_tokens) as u64)
            .await?;
    }
    Ok(())
}

/// Engine and queue times as headers, so a client can tell the server's
/// own overhead from the model's compute.
fn with_timing(mut res: Response, c: &Completion) -> Response {
    for (name, d) in [
        ("x-bitnet-engine-ms", c.engine_time),
        ("x-bitnet-queue-ms", c.queue_time),
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)) {
            res.headers_mut().insert(name, v);
        }
    }
    res
}

/// Creates a text completion.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses(
        (status = 200, description = "The answer, or a `text/event-stream` of chunks ending in `data: [DONE]`", body = CompletionResponse),
        (status = 400, body = crate::openai::ErrorBody), (status = 404, body = crate::openai::ErrorBody),
        (status = 413, body = crate::openai::ErrorBody), (status = 429, body = crate::openai::ErrorBody),
        (status = 503, body = crate::openai::ErrorBody), (status = 504, body = crate::openai::ErrorBody)))]
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    tenant: Option<axum::Extension<Arc<TenantContext>>>,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let tenant = tenant.map(|t| t.0);
    let arrived = Instant::now();
    check_model(&state, &req.model)?;
    if req.echo {
        return Err(ApiError::invalid_param("echo", "echo is not supported"));
    }
    let top_logprobs = match req.logprobs {
        Some(n) if n > 5 => {
            return Err(ApiError::invalid_param(
                "logprobs",
                format!("logprobs must be between 0 and 5, not {n}"),
            ));
        }
        other => other.map(|n| n as usize),
    };
    let prompt = match req.prompt {
        PromptField::Text(t) => Some(t),
        PromptField::Texts(mut v) if v.len() == 1 => v.pop(),
        PromptField::Texts(v) => {
            return Err(ApiError::invalid_param(
                "prompt",
                format!(
                    "{} prompts in one request are not supported; send one prompt",
                    v.len()
                ),
            ));
        }
        PromptField::Tokens(ids) => {
            if ids.is_empty() {
                return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
            }
            let vocab = state.tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary of {vocab}"),
                ));
            }
            return finish_completion(
                state,
                req.sampling,
                ids,
                top_logprobs,
                arrived,
                request_id,
                tenant,
            )
            .await;
        }
    };
    let text = prompt.unwrap_or_default();
    let st = Arc::clone(&state);
    let ids = tokenizing(text.len(), move || {
        st.tokenizer
            .encode(&text, true)
            .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))
    })
    .await?;
    if ids.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    finish_completion(
        state,
        req.sampling,
        ids,
        top_logprobs,
        arrived,
        request_id,
        tenant,
    )
    .await
}

async fn finish_completion(
    state: Arc<AppState>,
    sampling: crate::openai::SamplingFields,
    prompt: Vec<u32>,
    top_logprobs: Option<usize>,
    arrived: Instant,
    request_id: String,
    tenant: Option<Arc<TenantContext>>,
) -> Result<Response, ApiError> {
    let params = generate_params(&state, &sampling, prompt.len())?;
    charge(tenant.as_deref(), prompt.len(), params.max_tokens).await?;
    let run = submit(
        &state,
        Prepared {
            prompt,
            params,
            top_logprobs,
        },
        arrived,
    )?;
    let id = state.next_id("cmpl");
    if sampling.stream {
        let include_usage = sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream_response(
            state,
            run,
            Flavor::Completion,
            id,
            include_usage,
            request_id,
            tenant,
        ));
    }
    let mut run = run;
    let (out, done) = collect(&mut run).await?;
    if let Some(t) = &tenant {
        t.set_usage(done.prompt_tokens, done.completion_tokens);
    }
    let finish = finish_reason(&state, &done)?;
    record(&state, &run, &done);
    let logprobs = top_logprobs.map(|_| completion_logprobs(&state, &out, 0));
    let body = CompletionResponse {
        id,
        object: "text_completion".into(),
        created: unix_now(),
        model: state.model_id.clone(),
        choices: vec![CompletionChoice {
            index: 0,
            text: out.text,
            logprobs,
            finish_reason: Some(finish.into()),
        }],
        usage: Some(usage(&done)),
        system_fingerprint: state.fingerprint.clone(),
    };
    Ok(with_timing(Json(body).into_response(), &done))
}

/// The legacy log-probability layout; offsets count from `offset`.
fn completion_logprobs(state: &AppState, out: &Collected, offset: usize) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    let mut at = offset;
    for t in &out.tokens {
        let Some(l) = &t.logprobs else { continue };
        let token = token_text(state, t.id);
        lp.text_offset.push(at);
        at += token.len();
        lp.tokens.push(token);
        lp.token_logprobs.push(l.logprob);
        lp.top_logprobs.push(
            l.top
                .iter()
                .map(|&(id, v)| (token_text(state, id), v))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    lp
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Chat,
    Completion,
}

/// What the event stream still has to do.
struct StreamState {
    state: Arc<AppState>,
    run: Running,
    flavor: Flavor,
    id: String,
    created: u64,
    include_usage: bool,
    request_id: String,
    /// Events queued to send before reading the engine again.
    pending: std::collections::VecDeque<SseEvent>,
    sent_role: bool,
    done: bool,
    /// Offset of the next token in the text (completion log-probabilities).
    offset: usize,
    /// The tenant to meter, when the platform is on.
    tenant: Option<Arc<TenantContext>>,
}

fn json_event<T: serde::Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
}

impl StreamState {
    fn chat_chunk(
        &self,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&str>,
    ) -> SseEvent {
        json_event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.state.model_id.clone(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason: finish.map(str::to_string),
            }],
            usage: None,
            system_fingerprint: self.state.fingerprint.clone(),
        })
    }

    fn completion_chunk(
        &self,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&str>,
    ) -> SseEvent {
        json_event(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.state.model_id.clone(),
            choices: vec![CompletionChoice {
                index: 0,
                text,
                logprobs,
                finish_reason: finish.map(str::to_string),
            }],
            usage: None,
            system_fingerprint: self.state.fingerprint.clone(),
        })
    }

    fn token(&mut self, t: bitnet_inference::scheduler::TokenEvent) {
        if let Some(ctx) = &self.tenant {
            ctx.add_completion_token();
        }
        if t.text.is_empty() && t.logprobs.is_none() {
            return; // nothing to show yet (a held-back stop prefix or a split character)
        }
        let event = match self.flavor {
            Flavor::Chat => {
                let logprobs =
                    chat_logprob(&self.state, &t).map(|l| ChatLogprobs { content: vec![l] });
                self.chat_chunk(
                    ChatDelta {
                        role: None,
                        content: Some(t.text),
                    },
                    logprobs,
                    None,
                )
            }
            Flavor::Completion => {
                let logprobs = t.logprobs.is_some().then(|| {
                    let lp = completion_logprobs(
                        &self.state,
                        &Collected {
                            text: String::new(),
                            tokens: vec![t.clone()],
                        },
                        self.offset,
                    );
                    self.offset += lp.tokens.iter().map(String::len).sum::<usize>();
                    lp
                });
                self.completion_chunk(t.text, logprobs, None)
            }
        };
        self.pending.push_back(event);
    }

    fn finished(&mut self, c: Completion) {
        if let Some(ctx) = &self.tenant {
            ctx.set_usage(c.prompt_tokens, c.completion_tokens);
        }
        match finish_reason(&self.state, &c) {
            Ok(reason) => {
                let last = match self.flavor {
                    Flavor::Chat => self.chat_chunk(ChatDelta::default(), None, Some(reason)),
                    Flavor::Completion => self.completion_chunk(String::new(), None, Some(reason)),
                };
                self.pending.push_back(last);
                if self.include_usage {
                    let u = Some(usage(&c));
                    let event = match self.flavor {
                        Flavor::Chat => json_event(&ChatCompletionChunk {
                            id: self.id.clone(),
                            object: "chat.completion.chunk".into(),
                            created: self.created,
                            model: self.state.model_id.clone(),
                            choices: Vec::new(),
                            usage: u,
                            system_fingerprint: self.state.fingerprint.clone(),
                        }),
                        Flavor::Completion => json_event(&CompletionResponse {
                            id: self.id.clone(),
                            object: "text_completion".into(),
                            created: self.created,
                            model: self.state.model_id.clone(),
                            choices: Vec::new(),
                            usage: u,
                            system_fingerprint: self.state.fingerprint.clone(),
                        }),
                    };
                    self.pending.push_back(event);
                }
                let overhead = record(&self.state, &self.run, &c);
                // A comment line (ignored by clients) with the timings.
                self.pending.push_back(SseEvent::default().comment(format!(
                    "engine_ms={:.3} queue_ms={:.3} overhead_ms={:.3}",
                    c.engine_time.as_secs_f64() * 1e3,
                    c.queue_time.as_secs_f64() * 1e3,
                    overhead.as_secs_f64() * 1e3
                )));
                self.end(200);
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, e: ApiError) {
        tracing::warn!(request_id = %self.request_id, error = %e.message, "stream cut");
        self.pending.push_back(json_event(&e.body()));
        self.end(e.status.as_u16());
    }

    fn end(&mut self, status: u16) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
        let seconds = self.run.arrived.elapsed().as_secs_f64();
        let endpoint = match self.flavor {
            Flavor::Chat => "chat_completions",
            Flavor::Completion => "completions",
        };
        self.state.metrics.request(endpoint, status, seconds);
        tracing::info!(
            request_id = %self.request_id,
            status,
            latency_ms = seconds * 1e3,
            "stream finished"
        );
    }
}

/// The SSE answer: a first chunk with the role (chat), one chunk per token
/// with text, a last chunk with `finish_reason`, the usage chunk when
/// asked, then `data: [DONE]`. Errors after the stream started come as an
/// `{"error": ...}` event before `[DONE]`.
fn stream_response(
    state: Arc<AppState>,
    run: Running,
    flavor: Flavor,
    id: String,
    include_usage: bool,
    request_id: String,
    tenant: Option<Arc<TenantContext>>,
) -> Response {
    let st = StreamState {
        tenant,
        state,
        run,
        flavor,
        id,
        created: unix_now(),
        include_usage,
        request_id,
        pending: Default::default(),
        sent_role: false,
        done: false,
        offset: 0,
    };
    let events = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            if st.flavor == Flavor::Chat && !st.sent_role {
                st.sent_role = true;
                let first = st.chat_chunk(
                    ChatDelta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    },
                    None,
                    None,
                );
                st.pending.push_back(first);
                continue;
            }
            match st.run.events.recv().await {
                Some(Event::Token(t)) => st.token(t),
                Some(Event::Finished(c)) => st.finished(c),
                Some(Event::Failed(e)) => st.failed(engine_failure(e)),
                None => st.failed(ApiError::internal(
                    "the engine stopped without finishing the request",
                )),
            }
        }
    });
    sse(events)
}

fn sse(events: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    let mut res = Sse::new(events).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
