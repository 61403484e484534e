//! The audit log: an append-only chain of admin and security events.
//!
//! Row `n` stores `hash_n = SHA-256(hash_{n-1} ‖ n ‖ time ‖ actor ‖ action
//! ‖ tenant ‖ detail)` (each field length-prefixed) beside `hash_{n-1}`,
//! and `audit_head` holds the last row's number and hash, written in the
//! same transaction. [`verify`] recomputes the chain: an edited row breaks
//! its own hash, a deleted row leaves a gap in the numbers or a broken
//! link, and rows cut off the end disagree with the head.

use crate::db::{Store, now_ms};
use crate::error::{PlatformError, Result};
use crate::keys::sha256_hex;
use serde::Serialize;
use sqlx::Row;

/// The hash before the first row.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit row.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix milliseconds.
    pub ts_ms: i64,
    /// Who: `admin`, `cli`, `system` or `key:<id>`.
    pub actor: String,
    /// What: `tenant.created`, `key.revoked`, `auth.failed`, ...
    pub action: String,
    /// The tenant it concerns.
    pub tenant_id: Option<String>,
    /// A JSON object with the particulars (ids and settings, never secrets
    /// or personal data, so the chain can outlive a tenant's deletion).
    pub detail: String,
    /// The previous row's hash.
    pub prev_hash: String,
    /// This row's hash.
    pub hash: String,
}

fn entry_hash(
    prev: &str,
    seq: i64,
    ts: i64,
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    detail: &str,
) -> String {
    let mut buf = Vec::with_capacity(256);
    let mut field = |b: &[u8]| {
        buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        buf.extend_from_slice(b);
    };
    field(prev.as_bytes());
    field(&seq.to_le_bytes());
    field(&ts.to_le_bytes());
    field(actor.as_bytes());
    field(action.as_bytes());
    match tenant {
        Some(t) => {
            field(b"1");
            field(t.as_bytes());
        }
        None => field(b"0"),
    }
    field(detail.as_bytes());
    sha256_hex(&buf)
}

/// Appends one event.
///
/// Concurrent appends (other tasks or replicas) race for the next number;
/// the loser's insert fails on the primary key and it tries again on the
/// new head.
pub async fn append(
    store: &Store,
    actor: &str,
    action: &str,
    tenant_id: Option<&str>,
    detail: serde_json::Value,
) -> Result<i64> {
    let detail = detail.to_string();
    let mut last_err = None;
    for attempt in 0..20u32 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2 << attempt.min(6))).await;
        }
        match try_append(store, actor, action, tenant_id, &detail).await {
            Ok(seq) => return Ok(seq),
            Err(PlatformError::Database(e)) if is_conflict(&e) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(PlatformError::Database(last_err.expect("20 conflicts")))
}

fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || d.message().contains("locked")
                || d.message().contains("busy")
                || d.code().as_deref() == Some("40001")
        }
        _ => false,
    }
}

async fn try_append(
    store: &Store,
    actor: &str,
    action: &str,
    tenant_id: Option<&str>,
    detail: &str,
) -> Result<i64> {
    let mut tx = store.pool().begin().await?;
    // Touch the head first: in SQLite this takes the write lock at once
    // (no deadlock upgrading a read lock), in PostgreSQL it locks the row.
    sqlx::query(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, $1) \
         ON CONFLICT (id) DO UPDATE SET seq = audit_head.seq",
    )
    .bind(GENESIS)
    .execute(&mut *tx)
    .await?;
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let (prev_seq, prev_hash): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
    let seq = prev_seq + 1;
    let ts = now_ms();
    let hash = entry_hash(&prev_hash, seq, ts, actor, action, tenant_id, detail);
    sqlx::query(
        "INSERT INTO audit_log (seq, ts_ms, actor, action, tenant_id, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(ts)
    .bind(actor)
    .bind(action)
    .bind(tenant_id)
    .bind(detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(seq)
}

fn entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.try_get(0)?,
        ts_ms: r.try_get(1)?,
        actor: r.try_get(2)?,
        action: r.try_get(3)?,
        tenant_id: r.try_get(4)?,
        detail: r.try_get(5)?,
        prev_hash: r.try_get(6)?,
        hash: r.try_get(7)?,
    })
}

const COLUMNS: &str = "seq, ts_ms, actor, action, tenant_id, detail, prev_hash, hash";

/// The most recent `limit` rows (of one tenant, if given), newest first.
pub async fn list(store: &Store, tenant_id: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>> {
    let rows =
        match tenant_id {
            Some(t) => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT $2"
            ))
            .bind(t)
            .bind(limit)
            .fetch_all(store.pool())
            .await?,
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(store.pool())
                .await?
            }
        };
    rows.iter().map(entry).collect()
}

/// What [`verify`] found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verification {
    /// Rows checked.
    pub rows: i64,
    /// The first problem, if any.
    pub problem: Option<String>,
}

impl Verification {
    /// Whether the chain is intact.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Recomputes the whole chain (in pages, so memory stays flat).
///
/// The head is read first and only rows up to it are checked: a row and
/// its head are committed together, so rows appended while this runs
/// (past the head read here) are left for the next check rather than
/// reported as a mismatch.
pub async fn verify(store: &Store) -> Result<Verification> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(store.pool())
        .await?;
    let (head_seq, head_hash) = match head {
        Some(h) => (h.try_get::<i64, _>(0)?, h.try_get::<String, _>(1)?),
        None => (0, GENESIS.to_string()),
    };
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1i64;
    let mut rows = 0i64;
    const PAGE: i64 = 1000;
    loop {
        let page = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3"
        ))
        .bind(expected_seq)
        .bind(head_seq)
        .bind(PAGE)
        .fetch_all(store.pool())
        .await?;
        let n = page.len();
        for r in &page {
            let e = entry(r)?;
            let fail = |problem: String| Verification {
                rows,
                problem: Some(problem),
            };
            if e.seq != expected_seq {
                return Ok(fail(format!(
                    "row {expected_seq} is missing (the next row is {})",
                    e.seq
                )));
            }
            if e.prev_hash != expected_prev {
                return Ok(fail(format!(
                    "row {} does not link to row {}: a row before it was changed or removed",
                    e.seq,
                    e.seq - 1
                )));
            }
            let h = entry_hash(
                &e.prev_hash,
                e.seq,
                e.ts_ms,
                &e.actor,
                &e.action,
                e.tenant_id.as_deref(),
                &e.detail,
            );
            if h != e.hash {
                return Ok(fail(format!(
                    "row {} was edited: its hash does not match",
                    e.seq
                )));
            }
            expected_prev = e.hash;
            expected_seq += 1;
            rows += 1;
        }
        if (n as i64) < PAGE {
            break;
        }
    }
    if head_seq != rows || head_hash != expected_prev {
        return Ok(Verification {
            rows,
            problem: Some(format!(
                "the chain ends at row {rows} but its head records row {head_seq}: rows were \
                 removed from the end or the head was changed"
            )),
        });
    }
    // Rows past the head are legitimate only if the head has moved on
    // since (a row and its head commit together): read the last row, then
    // the head again.
    let last: Option<i64> = sqlx::query("SELECT MAX(seq) FROM audit_log")
        .fetch_one(store.pool())
        .await?
        .try_get(0)?;
    let head_now: Option<i64> = sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
        .fetch_optional(store.pool())
        .await?
        .map(|h| h.try_get(0))
        .transpose()?;
    if let Some(last) = last
        && last > head_now.unwrap_or(0)
    {
        return Ok(Verification {
            rows,
            problem: Some(format!(
                "row {last} lies past the chain's head (row {}): rows were added without \
                 the head",
                head_now.unwrap_or(0)
            )),
        });
    }
    Ok(Verification {
        rows,
        problem: None,
    })
}
