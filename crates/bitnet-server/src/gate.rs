//! The platform's gate in front of `/v1/*`: API key authentication, the
//! tenant's rate limits, and the usage row of each generation request,
//! committed before its answer completes.
//!
//! A request passes [`gate`] with a [`TenantContext`] in its extensions.
//! Handlers reserve tokens through it once they know the prompt length
//! and `max_tokens`, and report the tokens used as they go. When the
//! answer ends (the JSON body is ready, the event stream's last chunk is
//! sent, or the client left), [`TenantContext::finish`] gives back unused
//! tokens, frees the running slot and writes the usage row.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bitnet_platform::limits::Admission;
use bitnet_platform::{Decision, Platform, PlatformError, Principal, Refusal, Tier, UsageRecord};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a request of an authenticated tenant carries.
pub struct TenantContext {
    platform: Arc<Platform>,
    /// Who is calling.
    pub principal: Principal,
    /// Its tier's limits.
    pub tier: Tier,
    admission: Mutex<Option<Admission>>,
    requests: Decision,
    tokens: Mutex<Option<Decision>>,
    reserved: AtomicU64,
    prompt_tokens: AtomicI64,
    completion_tokens: AtomicI64,
    endpoint: Option<&'static str>,
    model: String,
    arrived: Instant,
    arrived_ms: i64,
    finished: AtomicBool,
    /// Time spent in the gate itself (auth, limits, metering), µs.
    overhead_us: AtomicU64,
}

impl std::fmt::Debug for TenantContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantContext")
            .field("tenant", &self.principal.tenant.id)
            .field("key", &self.principal.key_id)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &PlatformError) -> ApiError {
    tracing::error!(error = %e, "platform backend unavailable");
    ApiError::unavailable("The service is temporarily unavailable; retry shortly")
}

fn reset_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl TenantContext {
    /// Reserves `n` tokens (prompt plus `max_tokens`) from the tenant's
    /// tokens-per-minute bucket.
    pub async fn reserve_tokens(&self, n: u64) -> Result<(), ApiError> {
        let t0 = Instant::now();
        let outcome = self
            .platform
            .limiter
            .reserve_tokens(&self.principal.tenant.id, &self.tier, n)
            .await;
        self.add_overhead(t0);
        match outcome {
            Ok(Ok(d)) => {
                self.reserved.fetch_add(n, Ordering::Relaxed);
                *self.tokens.lock().expect("tokens") = Some(d);
                Ok(())
            }
            Ok(Err(Refusal::TooLarge { needed, limit })) => Err(ApiError::rate_limited(
                format!(
                    "Request too large: it may use {needed} tokens (prompt plus max_tokens) and \
                     your tier allows {limit} tokens per minute; lower max_tokens or shorten \
                     the prompt"
                ),
                60,
            )
            .with_code("tokens_per_minute_exceeded")),
            Ok(Err(Refusal::Tokens(d))) => {
                let mut e = ApiError::rate_limited(
                    format!(
                        "Rate limit reached for tokens per min (TPM): limit {}, remaining {}, \
                         requested {n}. Try again in {:.1}s",
                        d.limit,
                        d.remaining,
                        d.retry_after.as_secs_f64()
                    ),
                    ceil_secs(d.retry_after).max(1),
                );
                e.headers = Some(Box::new(self.headers_with(Some(&d))));
                Err(e)
            }
            Ok(Err(other)) => Err(ApiError::internal(format!("unexpected refusal {other:?}"))),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Records the prompt length.
    pub fn set_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.store(n as i64, Ordering::Relaxed);
    }

    /// Records the final token counts.
    pub fn set_usage(&self, prompt: usize, completion: usize) {
        self.prompt_tokens.store(prompt as i64, Ordering::Relaxed);
        self.completion_tokens
            .store(completion as i64, Ordering::Relaxed);
    }

    /// Counts one more generated token (streams, so a client that leaves
    /// early is billed for what it was sent).
    pub fn add_completion_token(&self) {
        self.completion_tokens.fetch_add(1, Ordering::Relaxed);
    }

    fn add_overhead(&self, since: Instant) {
        self.overhead_us
            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn headers_with(&self, tokens: Option<&Decision>) -> Vec<(&'static str, String)> {
        let r = &self.requests;
        let mut h = vec![
            ("x-ratelimit-limit-requests", r.limit.to_string()),
            ("x-ratelimit-remaining-requests", r.remaining.to_string()),
            ("x-ratelimit-reset-requests", reset_text(r.reset)),
            (
                "x-ratelimit-limit-tokens",
                self.tier.tokens_per_minute.to_string(),
            ),
        ];
        if let Some(t) = tokens {
            h.push(("x-ratelimit-remaining-tokens", t.remaining.to_string()));
            h.push(("x-ratelimit-reset-tokens", reset_text(t.reset)));
        }
        h
    }

    fn apply_headers(&self, headers: &mut HeaderMap) {
        let tokens = *self.tokens.lock().expect("tokens");
        for (name, value) in self.headers_with(tokens.as_ref()) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }

    /// Ends the request once: tokens not used go back, the running slot
    /// is freed, and a generation request's usage row is committed.
    pub async fn finish(&self, status: u16) -> Result<(), PlatformError> {
        if self.finished.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let t0 = Instant::now();
        let tenant = &self.principal.tenant.id;
        let prompt = self.prompt_tokens.load(Ordering::Relaxed).max(0);
        let completion = self.completion_tokens.load(Ordering::Relaxed).max(0);
        let reserved = self.reserved.load(Ordering::Relaxed);
        let used = (prompt + completion) as u64;
        let limiter = &self.platform.limiter;
        if reserved > used
            && let Err(e) = limiter
                .refund_tokens(tenant, &self.tier, reserved - used)
                .await
        {
            tracing::warn!(error = %e, "tokens not given back");
        }
        let admission = self.admission.lock().expect("admission").take();
        if let Some(a) = admission
            && let Err(e) = limiter.release(tenant, &self.tier, a).await
        {
            tracing::warn!(error = %e, "running slot not freed");
        }
        let outcome = match self.endpoint {
            Some(endpoint) => {
                let id = format!("use_{}", random_id());
                self.platform
                    .meter
                    .record(UsageRecord {
                        id,
                        tenant_id: tenant.clone(),
                        key_id: self.principal.key_id.clone(),
                        model: self.model.clone(),
                        endpoint: endpoint.to_string(),
                        prompt_tokens: prompt,
                        completion_tokens: completion,
                        latency_ms: self.arrived.elapsed().as_secs_f64() * 1e3,
                        status: i64::from(status),
                        created_ms: self.arrived_ms,
                    })
                    .await
            }
            None => Ok(()),
        };
        self.add_overhead(t0);
        outcome
    }

    /// Microseconds spent in the gate so far.
    pub fn overhead(&self) -> Duration {
        Duration::from_micros(self.overhead_us.load(Ordering::Relaxed))
    }
}

fn random_id() -> String {
    let mut b = [0u8; 12];
    // The OS source does not fail on supported systems; a zero id would
    // only collide with another failure.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The generation endpoints, whose requests are metered.
fn metered_endpoint(path: &str) -> Option<&'static str> {
    match path {
        "/v1/chat/completions" => Some("chat_completions"),
        "/v1/completions" => Some("completions"),
        _ => None,
    }
}

/// The key from `Authorization: Bearer KEY`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The middleware: authenticate, admit, run, meter.
pub(crate) async fn gate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(platform) = state.platform.clone() else {
        return next.run(req).await;
    };
    let t0 = Instant::now();
    let arrived_ms = bitnet_platform::db::now_ms();
    let path = req.uri().path().to_string();
    let presented = bearer(req.headers()).unwrap_or("").to_string();
    let principal = match bitnet_platform::tenants::authenticate(&platform.store, &presented).await
    {
        Ok(Ok(p)) => p,
        Ok(Err((why, key_id))) => {
            let store = platform.store.clone();
            let detail =
                serde_json::json!({ "reason": why.label(), "key_id": key_id, "path": path });
            // Audited off the request path: a flood of bad keys must not
            // be answered more slowly than one.
            tokio::spawn(async move {
                if let Err(e) =
                    bitnet_platform::audit::append(&store, "anonymous", "auth.failed", None, detail)
                        .await
                {
                    tracing::warn!(error = %e, "auth failure not audited");
                }
            });
            state.metrics.auth_failure(why.label());
            return match why {
                bitnet_platform::AuthFailure::Suspended => ApiError::forbidden(
                    "This API key's organization is suspended; contact support",
                    "account_suspended",
                ),
                bitnet_platform::AuthFailure::Malformed if presented.is_empty() => {
                    ApiError::unauthorized(
                        "You didn't provide an API key. Send it as `Authorization: Bearer KEY`",
                    )
                }
                _ => ApiError::unauthorized("Incorrect API key provided"),
            }
            .into_response();
        }
        Err(e) => return unavailable(&e).into_response(),
    };
    let tier = platform.tier_of(&principal.tenant).clone();
    let admission = match platform.limiter.admit(&principal.tenant.id, &tier).await {
        Ok(Ok(a)) => a,
        Ok(Err(Refusal::Requests(d))) => {
            let mut e = ApiError::rate_limited(
                format!(
                    "Rate limit reached for requests per min (RPM): limit {}. Try again in {:.1}s",
                    d.limit,
                    d.retry_after.as_secs_f64()
                ),
                ceil_secs(d.retry_after).max(1),
            );
            e.headers = Some(Box::new(vec![
                ("x-ratelimit-limit-requests", d.limit.to_string()),
                ("x-ratelimit-remaining-requests", d.remaining.to_string()),
                ("x-ratelimit-reset-requests", reset_text(d.reset)),
                (
                    "x-ratelimit-limit-tokens",
                    tier.tokens_per_minute.to_string(),
                ),
            ]));
            state.metrics.rate_limited("requests");
            return e.into_response();
        }
        Ok(Err(Refusal::Concurrency { limit })) => {
            state.metrics.rate_limited("concurrency");
            return ApiError::rate_limited(
                format!("Too many requests at once: your tier allows {limit} running requests"),
                1,
            )
            .with_code("concurrency_limit_exceeded")
            .into_response();
        }
        Ok(Err(other)) => {
            return ApiError::internal(format!("unexpected refusal {other:?}")).into_response();
        }
        Err(e) => return unavailable(&e).into_response(),
    };
    let ctx = Arc::new(TenantContext {
        requests: admission.requests,
        admission: Mutex::new(Some(admission)),
        platform,
        principal,
        tier,
        tokens: Mutex::new(None),
        reserved: AtomicU64::new(0),
        prompt_tokens: AtomicI64::new(0),
        completion_tokens: AtomicI64::new(0),
        endpoint: metered_endpoint(&path),
        model: state.model_id.clone(),
        arrived: t0,
        arrived_ms,
        finished: AtomicBool::new(false),
        overhead_us: AtomicU64::new(t0.elapsed().as_micros() as u64),
    });
    req.extensions_mut().insert(Arc::clone(&ctx));
    let mut res = next.run(req).await;
    let status = res.status().as_u16();
    let streaming = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        ctx.apply_headers(res.headers_mut());
        return res.map(|body| guarded(body, ctx, Arc::clone(&state)));
    }
    if let Err(e) = ctx.finish(status).await {
        // The answer was computed but its usage is not recorded: do not
        // hand it out unbilled.
        return ApiError::unavailable(format!("{e}; the request was not billed; retry"))
            .into_response();
    }
    ctx.apply_headers(res.headers_mut());
    let overhead = ctx.overhead();
    state.metrics.platform_overhead(overhead.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1e3)) {
        res.headers_mut().insert("x-bitnet-platform-ms", v);
    }
    res
}

/// Ends the request's metering when its stream ends, or, if the client
/// leaves first, when the body is dropped.
struct StreamGuard {
    ctx: Arc<TenantContext>,
    state: Arc<AppState>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.ctx.finished.load(Ordering::Acquire) {
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        // 499: the client closed the connection (nginx's convention).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = ctx.finish(499).await {
                    tracing::warn!(error = %e, "usage of an abandoned stream not recorded");
                }
            });
        }
    }
}

fn guarded(body: Body, ctx: Arc<TenantContext>, state: Arc<AppState>) -> Body {
    let guard = StreamGuard { ctx, state };
    let tail = futures_util::stream::once(async move {
        let g = guard;
        let result = g.ctx.finish(200).await;
        g.state
            .metrics
            .platform_overhead(g.ctx.overhead().as_secs_f64());
        match result {
            Ok(()) => None,
            // Cut the connection instead of ending the body cleanly: the
            // client must not take an unrecorded answer as complete.
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    })
    .filter_map(std::future::ready);
    Body::from_stream(
        body.into_data_stream()
            .map(|r| r.map_err(std::io::Error::other))
            .chain(tail),
    )
}
