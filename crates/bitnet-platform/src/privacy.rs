//! Privacy: everything stored about a tenant as one JSON document, the
//! tenant deleted with everything of it, and usage rows purged after the
//! retention period.
//!
//! Audit rows are not personal data by construction (ids and settings, no
//! names or secrets), so they stay when a tenant is deleted or usage is
//! purged, and the chain stays verifiable.

use crate::audit::{self, AuditEntry};
use crate::db::{Store, now_ms};
use crate::error::Result;
use crate::metering::{self, UsageRecord};
use crate::tenants::{self, KeyInfo, Tenant};
use serde::Serialize;

/// All data of one tenant.
#[derive(Clone, Debug, Serialize)]
pub struct TenantExport {
    /// When the export was made (Unix milliseconds).
    pub exported_ms: i64,
    /// The tenant.
    pub tenant: Tenant,
    /// Its keys (ids and labels; secrets are never stored).
    pub keys: Vec<KeyInfo>,
    /// Every usage row.
    pub usage: Vec<UsageRecord>,
    /// Audit events about it.
    pub audit: Vec<AuditEntry>,
}

/// Collects a tenant's data.
pub async fn export(store: &Store, actor: &str, tenant_id: &str) -> Result<TenantExport> {
    let tenant = tenants::get_tenant(store, tenant_id).await?;
    let keys = tenants::list_keys(store, tenant_id).await?;
    let usage = metering::records(store, tenant_id, "0000-01-01", "9999-12-31").await?;
    audit::append(
        store,
        actor,
        "tenant.exported",
        Some(tenant_id),
        serde_json::json!({}),
    )
    .await?;
    let audit = audit::list(store, Some(tenant_id), i64::MAX).await?;
    Ok(TenantExport {
        exported_ms: now_ms(),
        tenant,
        keys,
        usage,
        audit,
    })
}

/// What a deletion removed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Deleted {
    /// Keys removed.
    pub keys: u64,
    /// Usage rows removed.
    pub usage_rows: u64,
}

/// Deletes a tenant, its keys and its usage rows in one transaction.
pub async fn delete_tenant(store: &Store, actor: &str, tenant_id: &str) -> Result<Deleted> {
    tenants::get_tenant(store, tenant_id).await?;
    let mut tx = store.pool().begin().await?;
    let usage_rows = sqlx::query("DELETE FROM usage_records WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let keys = sqlx::query("DELETE FROM api_keys WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    audit::append(
        store,
        actor,
        "tenant.deleted",
        Some(tenant_id),
        serde_json::json!({ "keys": keys, "usage_rows": usage_rows }),
    )
    .await?;
    Ok(Deleted { keys, usage_rows })
}

/// Deletes usage rows older than `days` days; returns how many.
pub async fn purge(store: &Store, actor: &str, days: u32) -> Result<u64> {
    let before = now_ms() - days as i64 * 86_400_000;
    let n = metering::purge_before(store, before).await?;
    audit::append(
        store,
        actor,
        "usage.purged",
        None,
        serde_json::json!({ "older_than_days": days, "before_ms": before, "rows": n }),
    )
    .await?;
    Ok(n)
}
