//! Rate limits per tenant: keyed token buckets for requests and for tokens
//! per minute, and a count of requests running at once.
//!
//! A bucket holds up to a minute's allowance and refills continuously at
//! `limit / 60` per second, so a tenant can burst a minute's worth and
//! then runs at its rate. The state lives in this process
//! ([`Backend::Local`]) or, for several replicas, in Redis
//! ([`Backend::Redis`]), updated by Lua scripts that read, refill and take
//! in one atomic step on Redis's own clock.

use crate::config::Tier;
use crate::error::{PlatformError, Result};
use crate::redis::{RedisClient, Reply, Script};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket's answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Whether the cost was taken.
    pub allowed: bool,
    /// The bucket's size (the per-minute limit).
    pub limit: u64,
    /// Whole units left after this decision.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// When refused: time until the cost would fit.
    pub retry_after: Duration,
}

/// Token bucket arithmetic shared by the local backend and its tests (the
/// Redis script does the same in Lua).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: Instant,
}

fn take(b: &mut Bucket, now: Instant, limit: u64, cost: f64) -> Decision {
    let cap = limit as f64;
    let rate = cap / 60.0; // per second
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.level = (b.level + elapsed * rate).min(cap);
    b.at = now;
    let allowed = cost <= b.level;
    if allowed {
        b.level -= cost;
    }
    decision(allowed, limit, b.level, cost, rate)
}

fn decision(allowed: bool, limit: u64, level: f64, cost: f64, rate: f64) -> Decision {
    let cap = limit as f64;
    let secs = |x: f64| Duration::from_secs_f64((x / rate).clamp(0.0, 86_400.0));
    Decision {
        allowed,
        limit,
        remaining: level.max(0.0).floor() as u64,
        reset: secs(cap - level),
        retry_after: if allowed {
            Duration::ZERO
        } else {
            secs(cost - level)
        },
    }
}

#[derive(Default)]
struct LocalState {
    requests: HashMap<String, Bucket>,
    tokens: HashMap<String, Bucket>,
    running: HashMap<String, u32>,
}

/// Where limiter state is kept.
enum Backend {
    /// In this process.
    Local(Mutex<LocalState>),
    /// In Redis, shared by every replica (keys under `prefix`).
    Redis {
        /// The client.
        client: RedisClient,
        /// Key prefix (`bitnet:rl:` by default).
        prefix: String,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local(_) => f.write_str("Local"),
            Backend::Redis { client, prefix } => f
                .debug_struct("Redis")
                .field("client", client)
                .field("prefix", prefix)
                .finish(),
        }
    }
}

/// Refills and takes on Redis's clock. KEYS[1]: the bucket. ARGV: limit
/// per minute, cost (negative to give back). Returns {allowed, level*1000}.
const BUCKET_LUA: &str = r#"
local cap = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local rate = cap / 60000.0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(b[1])
local at = tonumber(b[2])
if level == nil or at == nil then level = cap; at = now end
level = math.min(cap, level + math.max(0, now - at) * rate)
local allowed = 0
if cost <= level then level = level - cost; allowed = 1 end
redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return {allowed, math.floor(level * 1000)}
"#;

/// Counts running requests. KEYS[1]: the counter. ARGV: limit, delta.
/// Returns {allowed, running}.
const RUNNING_LUA: &str = r#"
local limit = tonumber(ARGV[1])
local delta = tonumber(ARGV[2])
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if delta > 0 and n + delta > limit then return {0, n} end
n = math.max(0, n + delta)
redis.call('SET', KEYS[1], tostring(n), 'EX', 900)
return {1, n}
"#;

/// The limiter.
#[derive(Debug)]
pub struct Limiter {
    backend: Backend,
    bucket_script: Script,
    running_script: Script,
}

/// What a request was granted: give it back with [`Limiter::release`].
#[derive(Debug)]
#[must_use]
pub struct Admission {
    /// The requests bucket's decision (for the `x-ratelimit-*` headers).
    pub requests: Decision,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// Too many requests this minute.
    Requests(Decision),
    /// Too many tokens this minute.
    Tokens(Decision),
    /// Too many requests running.
    Concurrency {
        /// The limit.
        limit: u32,
    },
    /// One request asks for more tokens than a whole minute allows.
    TooLarge {
        /// What it asked for.
        needed: u64,
        /// The per-minute limit.
        limit: u64,
    },
}

impl Limiter {
    /// A limiter keeping state in this process.
    pub fn local() -> Limiter {
        Limiter::with(Backend::Local(Mutex::new(LocalState::default())))
    }

    /// A limiter keeping state in Redis at `url`.
    pub fn redis(url: &str, prefix: &str) -> Result<Limiter> {
        Ok(Limiter::with(Backend::Redis {
            client: RedisClient::new(url)?,
            prefix: prefix.to_string(),
        }))
    }

    fn with(backend: Backend) -> Limiter {
        Limiter {
            backend,
            bucket_script: Script::new(BUCKET_LUA),
            running_script: Script::new(RUNNING_LUA),
        }
    }

    /// Checks the backend answers.
    pub async fn ping(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(_) => Ok(()),
            Backend::Redis { client, .. } => client.ping().await,
        }
    }

    async fn bucket(&self, kind: &str, tenant: &str, limit: u64, cost: f64) -> Result<Decision> {
        match &self.backend {
            Backend::Local(state) => {
                let mut s = state.lock().expect("limiter state");
                let map = if kind == "req" {
                    &mut s.requests
                } else {
                    &mut s.tokens
                };
                let now = Instant::now();
                let b = map.entry(tenant.to_string()).or_insert(Bucket {
                    level: limit as f64,
                    at: now,
                });
                Ok(take(b, now, limit, cost))
            }
            Backend::Redis { client, prefix } => {
                let key = format!("{prefix}{kind}:{tenant}");
                let reply = client
                    .eval(
                        &self.bucket_script,
                        &[&key],
                        &[limit.to_string(), cost.to_string()],
                    )
                    .await?;
                let (allowed, milli) = two_ints(&reply)?;
                let level = milli as f64 / 1000.0;
                Ok(decision(
                    allowed == 1,
                    limit,
                    level,
                    cost,
                    limit as f64 / 60.0,
                ))
            }
        }
    }

    async fn running(&self, tenant: &str, limit: u32, delta: i64) -> Result<bool> {
        match &self.backend {
            Backend::Local(state) => {
                let mut s = state.lock().expect("limiter state");
                let n = s.running.entry(tenant.to_string()).or_insert(0);
                if delta > 0 && *n as i64 + delta > limit as i64 {
                    return Ok(false);
                }
                *n = (*n as i64 + delta).max(0) as u32;
                Ok(true)
            }
            Backend::Redis { client, prefix } => {
                let key = format!("{prefix}run:{tenant}");
                let reply = client
                    .eval(
                        &self.running_script,
                        &[&key],
                        &[limit.to_string(), delta.to_string()],
                    )
                    .await?;
                Ok(two_ints(&reply)?.0 == 1)
            }
        }
    }

    /// Admits one request of `tenant` on `tier`: a unit from the requests
    /// bucket and a running slot. On success, call [`Limiter::release`]
    /// when the request ends.
    pub async fn admit(
        &self,
        tenant: &str,
        tier: &Tier,
    ) -> Result<std::result::Result<Admission, Refusal>> {
        if !self.running(tenant, tier.concurrent_requests, 1).await? {
            return Ok(Err(Refusal::Concurrency {
                limit: tier.concurrent_requests,
            }));
        }
        let d = match self
            .bucket("req", tenant, tier.requests_per_minute as u64, 1.0)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                let _ = self.running(tenant, tier.concurrent_requests, -1).await;
                return Err(e);
            }
        };
        if !d.allowed {
            self.running(tenant, tier.concurrent_requests, -1).await?;
            return Ok(Err(Refusal::Requests(d)));
        }
        Ok(Ok(Admission { requests: d }))
    }

    /// Ends an admitted request (frees its running slot).
    pub async fn release(&self, tenant: &str, tier: &Tier, _admission: Admission) -> Result<()> {
        self.running(tenant, tier.concurrent_requests, -1)
            .await
            .map(|_| ())
    }

    /// Reserves `n` tokens (prompt plus `max_tokens`).
    pub async fn reserve_tokens(
        &self,
        tenant: &str,
        tier: &Tier,
        n: u64,
    ) -> Result<std::result::Result<Decision, Refusal>> {
        if n > tier.tokens_per_minute {
            return Ok(Err(Refusal::TooLarge {
                needed: n,
                limit: tier.tokens_per_minute,
            }));
        }
        let d = self
            .bucket("tok", tenant, tier.tokens_per_minute, n as f64)
            .await?;
        Ok(if d.allowed {
            Ok(d)
        } else {
            Err(Refusal::Tokens(d))
        })
    }

    /// Gives back tokens reserved but not used.
    pub async fn refund_tokens(&self, tenant: &str, tier: &Tier, n: u64) -> Result<Decision> {
        self.bucket("tok", tenant, tier.tokens_per_minute, -(n as f64))
            .await
    }

    /// The tokens bucket as it stands (takes nothing).
    pub async fn peek_tokens(&self, tenant: &str, tier: &Tier) -> Result<Decision> {
        self.bucket("tok", tenant, tier.tokens_per_minute, 0.0)
            .await
    }
}

fn two_ints(r: &Reply) -> Result<(i64, i64)> {
    match r {
        Reply::Array(v) if v.len() == 2 => match (&v[0], &v[1]) {
            (Reply::Int(a), Reply::Int(b)) => Ok((*a, *b)),
            _ => Err(PlatformError::Redis(format!(
                "unexpected script reply {r:?}"
            ))),
        },
        _ => Err(PlatformError::Redis(format!(
            "unexpected script reply {r:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bursts_a_minute_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            level: 60.0,
            at: t0,
        };
        for i in 0..60 {
            assert!(take(&mut b, t0, 60, 1.0).allowed, "{i}");
        }
        let d = take(&mut b, t0, 60, 1.0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset, Duration::from_secs(60));
        // Two seconds later two more fit, and no third.
        let t2 = t0 + Duration::from_secs(2);
        assert!(take(&mut b, t2, 60, 1.0).allowed);
        assert!(take(&mut b, t2, 60, 1.0).allowed);
        assert!(!take(&mut b, t2, 60, 1.0).allowed);
        // Never above the cap.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(take(&mut b, later, 60, 0.0).remaining, 60);
    }

    #[tokio::test]
    async fn local_limits_requests_concurrency_and_tokens() {
        let tier = Tier {
            requests_per_minute: 3,
            concurrent_requests: 2,
            tokens_per_minute: 100,
            ..Tier::defaults()[0].clone()
        };
        let l = Limiter::local();
        let a = l.admit("t", &tier).await.unwrap().unwrap();
        let b = l.admit("t", &tier).await.unwrap().unwrap();
        assert_eq!(
            l.admit("t", &tier).await.unwrap().unwrap_err(),
            Refusal::Concurrency { limit: 2 }
        );
        // Another tenant is unaffected.
        let other = l.admit("u", &tier).await.unwrap().unwrap();
        l.release("u", &tier, other).await.unwrap();
        l.release("t", &tier, a).await.unwrap();
        let c = l.admit("t", &tier).await.unwrap().unwrap();
        l.release("t", &tier, b).await.unwrap();
        l.release("t", &tier, c).await.unwrap();
        // Three requests this minute used up the bucket.
        assert!(matches!(
            l.admit("t", &tier).await.unwrap(),
            Err(Refusal::Requests(_))
        ));
        // Tokens: 60 + 40 fit, one more does not, a refund makes room.
        assert!(l.reserve_tokens("t", &tier, 60).await.unwrap().is_ok());
        assert!(l.reserve_tokens("t", &tier, 40).await.unwrap().is_ok());
        assert!(matches!(
            l.reserve_tokens("t", &tier, 5).await.unwrap(),
            Err(Refusal::Tokens(_))
        ));
        l.refund_tokens("t", &tier, 30).await.unwrap();
        assert!(l.reserve_tokens("t", &tier, 25).await.unwrap().is_ok());
        assert!(matches!(
            l.reserve_tokens("t", &tier, 101).await.unwrap(),
            Err(Refusal::TooLarge {
                needed: 101,
                limit: 100
            })
        ));
    }
}
