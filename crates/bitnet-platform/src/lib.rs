//! The hosted-API side of BitNet-Rust: tenants and API keys, pricing
//! tiers, rate limits, usage metering, billing, an audit log and privacy
//! operations, stored in SQLite or PostgreSQL.
//!
//! One module per concern: [`db`] the store and migrations, [`keys`] key
//! secrets, [`tenants`] tenants and keys, [`audit`] the hash-chained log,
//! [`limits`] token buckets (in process or in Redis through [`redis`]),
//! [`metering`] usage rows, [`billing`] invoices, [`privacy`] export,
//! deletion and retention. [`Platform`] holds them together for a server.
//!
//! ```no_run
//! use bitnet_platform::{Platform, PlatformConfig};
//!
//! # async fn demo() -> Result<(), bitnet_platform::PlatformError> {
//! let config = PlatformConfig {
//!     database_url: Some("sqlite://platform.db".into()),
//!     ..PlatformConfig::default()
//! };
//! let (platform, writer) = Platform::start(config).await?;
//! let tenant = platform.create_tenant("admin", "Acme", "team").await?;
//! let key = platform.create_key("admin", &tenant.id, "production").await?;
//! println!("give this to Acme once: {}", key.key);
//! drop(platform);
//! writer.await.ok(); // every usage row is committed
//! # Ok(()) }
//! ```

pub mod audit;
pub mod billing;
pub mod config;
pub mod db;
pub mod error;
pub mod keys;
pub mod limits;
pub mod metering;
pub mod privacy;
pub mod redis;
pub mod tenants;

pub use config::{PlatformConfig, Tier};
pub use db::{DbKind, Store};
pub use error::{PlatformError, Result};
pub use limits::{Decision, Limiter, Refusal};
pub use metering::{Meter, UsageRecord};
pub use tenants::{AuthFailure, IssuedKey, KeyInfo, Principal, Tenant};

use std::time::Duration;

/// The platform's services over one store.
#[derive(Debug)]
pub struct Platform {
    /// Settings.
    pub config: PlatformConfig,
    /// The database.
    pub store: Store,
    /// Rate limits.
    pub limiter: Limiter,
    /// The usage writer.
    pub meter: Meter,
}

impl Platform {
    /// Connects the store (migrating it), the limiter, and starts the
    /// usage writer; await the returned handle after dropping the
    /// platform to flush the last rows.
    pub async fn start(config: PlatformConfig) -> Result<(Platform, tokio::task::JoinHandle<()>)> {
        config.validate()?;
        let url = config.database_url.clone().ok_or_else(|| {
            PlatformError::Config("no database URL (--database-url or BITNET_DATABASE_URL)".into())
        })?;
        let store = Store::connect(&url, config.max_connections).await?;
        Platform::with_store(config, store)
    }

    /// The platform over an already connected store.
    pub fn with_store(
        config: PlatformConfig,
        store: Store,
    ) -> Result<(Platform, tokio::task::JoinHandle<()>)> {
        config.validate()?;
        let limiter = match &config.redis_url {
            Some(url) => Limiter::redis(url, "bitnet:rl:")?,
            None => Limiter::local(),
        };
        let (meter, writer) = Meter::start(
            store.clone(),
            Duration::from_secs_f64(config.metering_timeout_secs),
        );
        Ok((
            Platform {
                config,
                store,
                limiter,
                meter,
            },
            writer,
        ))
    }

    /// The tier named `name`, or an error listing the tiers.
    pub fn tier(&self, name: &str) -> Result<&Tier> {
        self.config.tier(name).ok_or_else(|| {
            let names: Vec<&str> = self.config.tiers.iter().map(|t| t.name.as_str()).collect();
            PlatformError::Invalid(format!(
                "unknown tier `{name}`; the tiers are: {}",
                names.join(", ")
            ))
        })
    }

    /// The tier a tenant is on; a tier removed from the configuration
    /// falls back to the first (cheapest) one rather than locking the
    /// tenant out.
    pub fn tier_of(&self, tenant: &Tenant) -> &Tier {
        self.config
            .tier(&tenant.tier)
            .unwrap_or(&self.config.tiers[0])
    }

    /// Creates a tenant on a configured tier.
    pub async fn create_tenant(&self, actor: &str, name: &str, tier: &str) -> Result<Tenant> {
        self.tier(tier)?;
        tenants::create_tenant(&self.store, actor, name, tier).await
    }

    /// Moves a tenant to a configured tier.
    pub async fn set_tier(&self, actor: &str, id: &str, tier: &str) -> Result<Tenant> {
        self.tier(tier)?;
        tenants::set_tier(&self.store, actor, id, tier).await
    }

    /// Makes a key for a tenant.
    pub async fn create_key(&self, actor: &str, tenant_id: &str, name: &str) -> Result<IssuedKey> {
        tenants::create_key(&self.store, actor, tenant_id, name).await
    }

    /// The invoice of a tenant for a month (`YYYY-MM`).
    pub async fn invoice(&self, tenant: &Tenant, month: &str) -> Result<billing::Invoice> {
        billing::invoice(&self.store, &tenant.id, self.tier_of(tenant), month).await
    }
}
