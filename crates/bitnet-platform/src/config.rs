//! Platform settings: the database, the optional Redis for shared limiter
//! state, the admin token, pricing tiers and retention.

use crate::error::{PlatformError, Result};
use serde::{Deserialize, Serialize};

/// A pricing tier: what a tenant may use and what it pays.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The name tenants are put on (`developer`, `team`, `business`).
    pub name: String,
    /// Base price per month in US dollars; it includes `monthly_tokens`.
    pub monthly_price_usd: f64,
    /// Requests per minute (a token bucket refilled continuously).
    pub requests_per_minute: u32,
    /// Prompt plus completion tokens per minute. A request reserves its
    /// prompt plus `max_tokens` when admitted; what it did not use is
    /// given back when it ends.
    pub tokens_per_minute: u64,
    /// Requests running at once.
    pub concurrent_requests: u32,
    /// Tokens included in the base price each month.
    pub monthly_tokens: u64,
    /// Price of each million tokens past `monthly_tokens`, in US dollars.
    pub overage_usd_per_million: f64,
}

impl Tier {
    fn new(name: &str, price: f64, rpm: u32, tpm: u64, conc: u32, month: u64, over: f64) -> Tier {
        Tier {
            name: name.into(),
            monthly_price_usd: price,
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            concurrent_requests: conc,
            monthly_tokens: month,
            overage_usd_per_million: over,
        }
    }

    /// The default tiers: Developer $99, Team $499, Business $2,999 a month.
    pub fn defaults() -> Vec<Tier> {
        vec![
            Tier::new("developer", 99.0, 60, 40_000, 4, 10_000_000, 2.0),
            Tier::new("team", 499.0, 600, 400_000, 16, 100_000_000, 1.5),
            Tier::new("business", 2999.0, 3_000, 2_000_000, 64, 1_000_000_000, 1.0),
        ]
    }
}

/// Everything the platform is told.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// `sqlite://FILE` (created if missing; WAL mode) or
    /// `postgres://USER:PASSWORD@HOST/DB`. Without it the server runs
    /// open, with no keys, limits or metering.
    pub database_url: Option<String>,
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]`: keep rate limiter state in
    /// Redis so that several replicas share it. Without it, each process
    /// limits on its own.
    pub redis_url: Option<String>,
    /// The bearer token of the `/admin` API (none: the admin API is off).
    pub admin_token: Option<String>,
    /// Pricing tiers.
    pub tiers: Vec<Tier>,
    /// Usage rows older than this many days are purged (0: kept forever).
    pub retention_days: u32,
    /// Seconds a finished request waits for its usage row to be committed
    /// before it answers 503 instead.
    pub metering_timeout_secs: f64,
    /// Most database connections.
    pub max_connections: u32,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            database_url: None,
            redis_url: None,
            admin_token: None,
            tiers: Tier::defaults(),
            retention_days: 0,
            metering_timeout_secs: 10.0,
            max_connections: 8,
        }
    }
}

impl PlatformConfig {
    /// Checks ranges and names.
    pub fn validate(&self) -> Result<()> {
        if self.tiers.is_empty() {
            return Err(PlatformError::Config("at least one tier is needed".into()));
        }
        for (i, t) in self.tiers.iter().enumerate() {
            if !valid_name(&t.name) {
                return Err(PlatformError::Config(format!(
                    "tier {i}: name `{}` must be 1-64 letters, digits, '-' or '_'",
                    t.name
                )));
            }
            if self.tiers[..i].iter().any(|o| o.name == t.name) {
                return Err(PlatformError::Config(format!(
                    "tier `{}` is defined twice",
                    t.name
                )));
            }
            let money_ok = |v: f64| v.is_finite() && v >= 0.0;
            if !money_ok(t.monthly_price_usd) || !money_ok(t.overage_usd_per_million) {
                return Err(PlatformError::Config(format!(
                    "tier `{}`: prices must be finite and not negative",
                    t.name
                )));
            }
            if t.requests_per_minute == 0 || t.tokens_per_minute == 0 || t.concurrent_requests == 0
            {
                return Err(PlatformError::Config(format!(
                    "tier `{}`: requests_per_minute, tokens_per_minute and concurrent_requests \
                     must be at least 1",
                    t.name
                )));
            }
        }
        if !(self.metering_timeout_secs.is_finite() && self.metering_timeout_secs > 0.0) {
            return Err(PlatformError::Config(
                "metering_timeout_secs must be a positive number".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(PlatformError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        if let Some(t) = &self.admin_token
            && t.len() < 16
        {
            return Err(PlatformError::Config(
                "the admin token must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    /// The tier named `name`.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }
}

/// Whether `s` is a safe identifier-like name (tiers).
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_priced_as_sold() {
        let c = PlatformConfig::default();
        c.validate().unwrap();
        let prices: Vec<f64> = c.tiers.iter().map(|t| t.monthly_price_usd).collect();
        assert_eq!(prices, [99.0, 499.0, 2999.0]);
    }

    #[test]
    fn bad_tiers_are_refused() {
        let mut c = PlatformConfig::default();
        c.tiers[1].name = "developer".into();
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        let mut c = PlatformConfig::default();
        c.tiers[0].overage_usd_per_million = f64::NAN;
        assert!(c.validate().is_err());
        let mut c = PlatformConfig::default();
        c.tiers[0].name = "a b".into();
        assert!(c.validate().is_err());
        let c = PlatformConfig {
            admin_token: Some("short".into()),
            ..PlatformConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
