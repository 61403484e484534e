//! Tenants and their API keys: create, list, suspend, resume, change tier,
//! delete; create, list, rotate, revoke keys. Every change appends an
//! audit event, and authentication looks keys up here.

use crate::audit;
use crate::db::{Store, now_ms};
use crate::error::{PlatformError, Result};
use crate::keys;
use serde::Serialize;
use sqlx::Row;

/// A customer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Tenant {
    /// `ten_` and 16 hex digits.
    pub id: String,
    /// A unique display name.
    pub name: String,
    /// Its pricing tier.
    pub tier: String,
    /// `active` or `suspended`.
    pub status: String,
    /// Unix milliseconds.
    pub created_ms: i64,
}

/// A key as listed (the secret is never stored, so never shown again).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KeyInfo {
    /// `key_` and 16 hex digits.
    pub id: String,
    /// The owning tenant.
    pub tenant_id: String,
    /// A label.
    pub name: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// A key just made: its info and the secret, shown this once.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedKey {
    /// The stored part.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The whole key. It cannot be recovered later.
    pub key: String,
}

/// Who a valid key belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    /// The tenant.
    pub tenant: Tenant,
    /// The key's id.
    pub key_id: String,
}

/// Why a presented key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key, or not shaped like one.
    Malformed,
    /// No such key, or the secret does not match.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The tenant is suspended.
    Suspended,
}

impl AuthFailure {
    /// A short label for the audit log and metrics.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Suspended => "suspended",
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(PlatformError::Invalid(
            "a name must be 1-128 characters without control characters".into(),
        ));
    }
    Ok(())
}

fn tenant(r: &sqlx::any::AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        tier: r.try_get(2)?,
        status: r.try_get(3)?,
        created_ms: r.try_get(4)?,
    })
}

fn key_info(r: &sqlx::any::AnyRow) -> Result<KeyInfo> {
    Ok(KeyInfo {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        name: r.try_get(2)?,
        created_ms: r.try_get(3)?,
        revoked_ms: r.try_get(4)?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Creates a tenant on `tier` (checked against the configured tiers by the
/// caller).
pub async fn create_tenant(store: &Store, actor: &str, name: &str, tier: &str) -> Result<Tenant> {
    check_name(name)?;
    let t = Tenant {
        id: format!("ten_{}", keys::random_hex(8)?),
        name: name.to_string(),
        tier: tier.to_string(),
        status: "active".into(),
        created_ms: now_ms(),
    };
    sqlx::query(
        "INSERT INTO tenants (id, name, tier, status, created_ms) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(&t.tier)
    .bind(&t.status)
    .bind(t.created_ms)
    .execute(store.pool())
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            PlatformError::Conflict(format!("a tenant named `{name}` already exists"))
        } else {
            e.into()
        }
    })?;
    audit::append(
        store,
        actor,
        "tenant.created",
        Some(&t.id),
        serde_json::json!({ "tier": tier }),
    )
    .await?;
    Ok(t)
}

const TENANT_COLUMNS: &str = "id, name, tier, status, created_ms";
const KEY_COLUMNS: &str = "id, tenant_id, name, created_ms, revoked_ms";

/// Every tenant, oldest first.
pub async fn list_tenants(store: &Store) -> Result<Vec<Tenant>> {
    sqlx::query(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_ms, id"
    ))
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(tenant)
    .collect()
}

/// One tenant.
pub async fn get_tenant(store: &Store, id: &str) -> Result<Tenant> {
    let row = sqlx::query(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(store.pool())
    .await?
    .ok_or_else(|| PlatformError::NotFound(format!("tenant `{id}`")))?;
    tenant(&row)
}

/// Sets a tenant's status (`active` or `suspended`). A suspended tenant's
/// keys stop working at once.
pub async fn set_status(store: &Store, actor: &str, id: &str, status: &str) -> Result<Tenant> {
    if status != "active" && status != "suspended" {
        return Err(PlatformError::Invalid(format!(
            "status must be `active` or `suspended`, not `{status}`"
        )));
    }
    let before = get_tenant(store, id).await?;
    sqlx::query("UPDATE tenants SET status = $1 WHERE id = $2")
        .bind(status)
        .bind(id)
        .execute(store.pool())
        .await?;
    let action = if status == "suspended" {
        "tenant.suspended"
    } else {
        "tenant.resumed"
    };
    audit::append(
        store,
        actor,
        action,
        Some(id),
        serde_json::json!({ "from": before.status, "to": status }),
    )
    .await?;
    get_tenant(store, id).await
}

/// Moves a tenant to another tier (a limit change, audited).
pub async fn set_tier(store: &Store, actor: &str, id: &str, tier: &str) -> Result<Tenant> {
    let before = get_tenant(store, id).await?;
    sqlx::query("UPDATE tenants SET tier = $1 WHERE id = $2")
        .bind(tier)
        .bind(id)
        .execute(store.pool())
        .await?;
    audit::append(
        store,
        actor,
        "tenant.limits_changed",
        Some(id),
        serde_json::json!({ "from_tier": before.tier, "to_tier": tier }),
    )
    .await?;
    get_tenant(store, id).await
}

/// Makes a key for a tenant.
pub async fn create_key(
    store: &Store,
    actor: &str,
    tenant_id: &str,
    name: &str,
) -> Result<IssuedKey> {
    check_name(name)?;
    get_tenant(store, tenant_id).await?;
    let k = keys::generate()?;
    let info = KeyInfo {
        id: k.id,
        tenant_id: tenant_id.to_string(),
        name: name.to_string(),
        created_ms: now_ms(),
        revoked_ms: None,
    };
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, name, hash, created_ms, revoked_ms) \
         VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(&info.id)
    .bind(&info.tenant_id)
    .bind(&info.name)
    .bind(&k.hash)
    .bind(info.created_ms)
    .execute(store.pool())
    .await?;
    audit::append(
        store,
        actor,
        "key.created",
        Some(tenant_id),
        serde_json::json!({ "key_id": info.id }),
    )
    .await?;
    Ok(IssuedKey {
        info,
        key: k.secret,
    })
}

/// A tenant's keys, revoked ones included.
pub async fn list_keys(store: &Store, tenant_id: &str) -> Result<Vec<KeyInfo>> {
    get_tenant(store, tenant_id).await?;
    sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_ms, id"
    ))
    .bind(tenant_id)
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(key_info)
    .collect()
}

/// One key.
pub async fn get_key(store: &Store, key_id: &str) -> Result<KeyInfo> {
    let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
        .bind(key_id)
        .fetch_optional(store.pool())
        .await?
        .ok_or_else(|| PlatformError::NotFound(format!("key `{key_id}`")))?;
    key_info(&row)
}

/// Revokes a key; it stops working with the next request.
pub async fn revoke_key(store: &Store, actor: &str, key_id: &str) -> Result<KeyInfo> {
    let k = get_key(store, key_id).await?;
    if k.revoked_ms.is_none() {
        sqlx::query("UPDATE api_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms())
            .bind(key_id)
            .execute(store.pool())
            .await?;
        audit::append(
            store,
            actor,
            "key.revoked",
            Some(&k.tenant_id),
            serde_json::json!({ "key_id": key_id }),
        )
        .await?;
    }
    get_key(store, key_id).await
}

/// Replaces a key: a new one with the same name, and the old one revoked.
pub async fn rotate_key(store: &Store, actor: &str, key_id: &str) -> Result<IssuedKey> {
    let old = get_key(store, key_id).await?;
    if old.revoked_ms.is_some() {
        return Err(PlatformError::Invalid(format!(
            "key `{key_id}` is revoked; create a new key instead"
        )));
    }
    let new = create_key(store, actor, &old.tenant_id, &old.name).await?;
    revoke_key(store, actor, key_id).await?;
    audit::append(
        store,
        actor,
        "key.rotated",
        Some(&old.tenant_id),
        serde_json::json!({ "old_key_id": key_id, "new_key_id": new.info.id }),
    )
    .await?;
    Ok(new)
}

/// Checks a presented key: one indexed lookup, then a constant-time hash
/// comparison. Nothing is cached, so revocation and suspension take effect
/// with the next request on every replica.
pub async fn authenticate(
    store: &Store,
    presented: &str,
) -> Result<std::result::Result<Principal, (AuthFailure, Option<String>)>> {
    let Some(key_id) = keys::key_id(presented) else {
        return Ok(Err((AuthFailure::Malformed, None)));
    };
    let row = sqlx::query(
        "SELECT k.hash, k.revoked_ms, t.id, t.name, t.tier, t.status, t.created_ms \
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1",
    )
    .bind(&key_id)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else {
        // Hash anyway, so a miss takes as long as a wrong secret.
        let _ = keys::matches(presented, "");
        return Ok(Err((AuthFailure::Unknown, Some(key_id))));
    };
    let hash: String = row.try_get(0)?;
    if !keys::matches(presented, &hash) {
        return Ok(Err((AuthFailure::Unknown, Some(key_id))));
    }
    let revoked: Option<i64> = row.try_get(1)?;
    if revoked.is_some() {
        return Ok(Err((AuthFailure::Revoked, Some(key_id))));
    }
    let tenant = Tenant {
        id: row.try_get(2)?,
        name: row.try_get(3)?,
        tier: row.try_get(4)?,
        status: row.try_get(5)?,
        created_ms: row.try_get(6)?,
    };
    if tenant.status != "active" {
        return Ok(Err((AuthFailure::Suspended, Some(key_id))));
    }
    Ok(Ok(Principal { tenant, key_id }))
}
