//! From a validated request to the engine and back: sampling settings and
//! limits from the OpenAI fields, submission to the scheduler, and the
//! events turned into one JSON answer or a server-sent event stream.
//!
//! The engine sends events through an unbounded channel whose receiver
//! lives in the handler (or its stream). When a client disconnects, axum
//! drops that receiver, the engine sees its sink closed, and the sequence
//! leaves the batch at the next step.

use crate::error::ApiError;
use crate::openai::{SamplingFields, TokenLogprob, TopLogprob, Usage};
use crate::state::AppState;
use bitnet_inference::scheduler::{Completion, Event, EventSink, Request, SubmitError, TokenEvent};
use bitnet_inference::text::TokenizerDecoder;
use bitnet_inference::{Error as InferenceError, FinishReason, GenerateParams, SamplerParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The engine's events for one request, delivered into tokio.
struct ChannelSink(mpsc::UnboundedSender<Event>);

impl EventSink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A request ready for the engine.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: GenerateParams,
    pub(crate) top_logprobs: Option<usize>,
}

/// Checks the sampling and limit fields and builds the engine's settings
/// for a prompt of `prompt_len` tokens.
pub(crate) fn generate_params(
    state: &AppState,
    f: &SamplingFields,
    prompt_len: usize,
) -> Result<GenerateParams, ApiError> {
    if let Some(n) = f.n
        && n != 1
    {
        return Err(ApiError::invalid_param(
            "n",
            format!("n = {n} is not supported: this server generates one choice per request"),
        ));
    }
    let temperature = f.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature must be between 0 and 2, not {temperature}"),
        ));
    }
    let top_p = f.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("top_p must be above 0 and at most 1, not {top_p}"),
        ));
    }
    for (name, v) in [
        ("presence_penalty", f.presence_penalty),
        ("frequency_penalty", f.frequency_penalty),
    ] {
        if let Some(v) = v
            && !(-2.0..=2.0).contains(&v)
        {
            return Err(ApiError::invalid_param(
                name,
                format!("{name} must be between -2 and 2, not {v}"),
            ));
        }
    }
    let stop_strings = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop_strings.len() > 4 {
        return Err(ApiError::invalid_param(
            "stop",
            format!("at most 4 stop sequences, not {}", stop_strings.len()),
        ));
    }
    let context = state.scheduler.context();
    if prompt_len >= context {
        return Err(ApiError::invalid_param(
            "messages",
            format!(
                "This model's maximum context length is {context} tokens, and the prompt has \
                 {prompt_len}; shorten it"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt_len;
    let max_tokens = match f.max_completion_tokens.or(f.max_tokens) {
        Some(m) => {
            let m = usize::try_from(m).unwrap_or(usize::MAX);
            if m == 0 {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    "max_tokens must be at least 1",
                ));
            }
            if m > room {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    format!(
                        "This model's maximum context length is {context} tokens. However, you \
                         requested {} tokens ({prompt_len} in the prompt, {m} for the \
                         completion). Reduce the prompt or max_tokens",
                        prompt_len.saturating_add(m)
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            m
        }
        None => state.config.default_max_tokens.min(room),
    };
    let sampler = SamplerParams {
        temperature,
        top_p,
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        seed: f.seed.map_or_else(|| state.fresh_seed(), |s| s as u64),
        ..SamplerParams::default()
    };
    sampler.validate().map_err(ApiError::invalid)?;
    Ok(GenerateParams {
        max_tokens,
        sampler,
        stop_token_ids: state.stop_ids.clone(),
        stop_strings,
        ignore_eos: false,
    })
}

/// A submitted request: its events, and when it arrived.
pub(crate) struct Running {
    pub(crate) events: mpsc::UnboundedReceiver<Event>,
    pub(crate) arrived: Instant,
}

/// Queues `p` in the engine.
pub(crate) fn submit(
    state: &Arc<AppState>,
    p: Prepared,
    arrived: Instant,
) -> Result<Running, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let request = Request {
        prompt: p.prompt,
        params: p.params,
        top_logprobs: p.top_logprobs,
        decoder: Some(Box::new(TokenizerDecoder::new(
            Arc::clone(&state.tokenizer),
            true,
        ))),
        deadline: Some(arrived + state.config.request_timeout()),
        sink: Box::new(ChannelSink(tx)),
    };
    state.scheduler.submit(request).map_err(|e| match e {
        SubmitError::QueueFull { depth } => ApiError::overloaded(
            format!(
                "The server is at capacity ({depth} requests waiting); retry after the \
                 Retry-After delay"
            ),
            1,
        ),
        SubmitError::ShuttingDown => ApiError::unavailable("The server is shutting down"),
        SubmitError::Invalid(e @ InferenceError::ContextFull { .. }) => {
            ApiError::invalid(e.to_string()).with_code("context_length_exceeded")
        }
        SubmitError::Invalid(e) => ApiError::invalid(e.to_string()),
        other => ApiError::internal(other.to_string()),
    })?;
    Ok(Running {
        events: rx,
        arrived,
    })
}

/// Everything a finished request produced.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub(crate) text: String,
    pub(crate) tokens: Vec<TokenEvent>,
}

/// The OpenAI `finish_reason`, or the error a cut request answers with.
pub(crate) fn finish_reason(state: &AppState, c: &Completion) -> Result<&'static str, ApiError> {
    match c.finish {
        FinishReason::Eos(_) | FinishReason::StopToken(_) | FinishReason::StopString(_) => {
            Ok("stop")
        }
        FinishReason::Length | FinishReason::ContextFull => Ok("length"),
        FinishReason::Timeout => Err(ApiError::timeout(state.config.request_timeout_secs)),
        _ => Err(ApiError::unavailable(
            "The request was cut: the server is shutting down",
        )),
    }
}

/// Waits for the whole answer.
pub(crate) async fn collect(run: &mut Running) -> Result<(Collected, Completion), ApiError> {
    let mut out = Collected::default();
    while let Some(event) = run.events.recv().await {
        match event {
            Event::Token(t) => {
                out.text.push_str(&t.text);
                out.tokens.push(t);
            }
            Event::Finished(c) => return Ok((out, c)),
            Event::Failed(e) => return Err(engine_failure(e)),
        }
    }
    Err(ApiError::internal(
        "the engine stopped without finishing the request",
    ))
}

/// An engine-side failure as an answer.
pub(crate) fn engine_failure(e: InferenceError) -> ApiError {
    let msg = e.to_string();
    if msg.contains("shutting down") {
        ApiError::unavailable(msg)
    } else {
        ApiError::internal(msg)
    }
}

/// Token counts.
pub(crate) fn usage(c: &Completion) -> Usage {
    Usage {
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        total_tokens: c.prompt_tokens + c.completion_tokens,
    }
}

/// A token's text as OpenAI shows it in log-probabilities.
pub(crate) fn token_text(state: &AppState, id: u32) -> String {
    state
        .tokenizer
        .token_to_piece(id)
        .unwrap_or_else(|_| format!("<{id}>"))
}

/// Chat log-probabilities of one token.
pub(crate) fn chat_logprob(state: &AppState, t: &TokenEvent) -> Option<TokenLogprob> {
    let lp = t.logprobs.as_ref()?;
    let token = token_text(state, t.id);
    Some(TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob: lp.logprob,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, logprob)| {
                let token = token_text(state, id);
                TopLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob,
                }
            })
            .collect(),
    })
}

/// Records the request's token counts, time to first token and overhead.
pub(crate) fn record(state: &AppState, run: &Running, c: &Completion) -> Duration {
    let latency = run.arrived.elapsed();
    let overhead = latency.saturating_sub(c.engine_time + c.queue_time);
    state.metrics.generation(
        c.prompt_tokens,
        c.completion_tokens,
        c.time_to_first_token.map(|t| t.as_secs_f64()),
        overhead.as_secs_f64(),
    );
    overhead
}
