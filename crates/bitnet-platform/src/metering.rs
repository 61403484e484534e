//! Usage metering: one row per generation request, committed before the
//! request's answer completes, and the usage reports built from the rows.
//!
//! Requests hand their row to one writer task and wait for its
//! acknowledgement. The writer commits whatever has queued in one
//! transaction (a group commit), so under load many rows share one
//! commit while each request still knows its row is durable before it
//! answers. When the database is down the writer retries; a request whose
//! wait runs out answers 503 and its row is dropped (the client was not
//! served, so it is not billed).

use crate::db::{Store, day_of};
use crate::error::{PlatformError, Result};
use serde::Serialize;
use sqlx::Row;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One metered request.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UsageRecord {
    /// The request's id.
    pub id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The key it used.
    pub key_id: String,
    /// The model.
    pub model: String,
    /// `chat_completions` or `completions`.
    pub endpoint: String,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Time from arrival to the end of the answer.
    pub latency_ms: f64,
    /// HTTP status.
    pub status: i64,
    /// Unix milliseconds at arrival.
    pub created_ms: i64,
}

type Ack = oneshot::Sender<Result<(), String>>;

/// The handle requests use; cloning shares the writer.
#[derive(Clone, Debug)]
pub struct Meter {
    tx: mpsc::Sender<(UsageRecord, Ack)>,
    timeout: Duration,
}

/// Rows per INSERT statement (11 parameters each, well under both
/// databases' parameter limits).
const ROWS_PER_STATEMENT: usize = 200;
/// Rows per transaction.
const ROWS_PER_COMMIT: usize = 2000;

impl Meter {
    /// Starts the writer on the current tokio runtime. It ends when every
    /// `Meter` clone is dropped and the queue is written; await the handle
    /// to flush at shutdown.
    pub fn start(store: Store, timeout: Duration) -> (Meter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(65_536);
        let handle = tokio::spawn(writer(store, rx));
        (Meter { tx, timeout }, handle)
    }

    /// Queues a row and waits until it is committed.
    pub async fn record(&self, row: UsageRecord) -> Result<()> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((row, ack))
            .await
            .map_err(|_| PlatformError::Metering("the usage writer has stopped".into()))?;
        match tokio::time::timeout(self.timeout, done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(PlatformError::Metering(e)),
            Ok(Err(_)) => Err(PlatformError::Metering(
                "the usage writer has stopped".into(),
            )),
            Err(_) => Err(PlatformError::Metering(format!(
                "the database did not commit it within {:?}",
                self.timeout
            ))),
        }
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<(UsageRecord, Ack)>) {
    let mut batch: Vec<(UsageRecord, Ack)> = Vec::new();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(item) => batch.push(item),
                None => return,
            }
        }
        while batch.len() < ROWS_PER_COMMIT {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        // Rows whose request stopped waiting are not written.
        batch.retain(|(_, ack)| !ack.is_closed());
        if batch.is_empty() {
            continue;
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match insert(&store, &batch).await {
                Ok(()) => {
                    for (_, ack) in batch.drain(..) {
                        let _ = ack.send(Ok(()));
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = batch.len(), "usage rows not committed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                    batch.retain(|(_, ack)| !ack.is_closed());
                    if batch.is_empty() {
                        break;
                    }
                }
            }
        }
    }
}

async fn insert(store: &Store, batch: &[(UsageRecord, Ack)]) -> Result<()> {
    let mut tx = store.pool().begin().await?;
    // Rows of tenants deleted meanwhile are dropped rather than failing
    // the batch (the foreign key would refuse them).
    let mut tenants: Vec<&str> = batch.iter().map(|(r, _)| r.tenant_id.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut live = std::collections::HashSet::new();
    for chunk in tenants.chunks(500) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT id FROM tenants WHERE id IN ({list})");
        let mut q = sqlx::query(&sql);
        for t in chunk {
            q = q.bind(*t);
        }
        for r in q.fetch_all(&mut *tx).await? {
            live.insert(r.try_get::<String, _>(0)?);
        }
    }
    let rows: Vec<&UsageRecord> = batch
        .iter()
        .map(|(r, _)| r)
        .filter(|r| live.contains(&r.tenant_id))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO usage_records (id, tenant_id, key_id, model, endpoint, prompt_tokens, \
             completion_tokens, latency_ms, status, created_ms, day) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 11;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(
                &(1..=11)
                    .map(|j| format!("${}", b + j))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            sql.push(')');
        }
        // A retried batch may have been committed already (the error came
        // after the commit): the ids make the retry a no-op.
        sql.push_str(" ON CONFLICT (id) DO NOTHING");
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(&r.id)
                .bind(&r.tenant_id)
                .bind(&r.key_id)
                .bind(&r.model)
                .bind(&r.endpoint)
                .bind(r.prompt_tokens)
                .bind(r.completion_tokens)
                .bind(r.latency_ms)
                .bind(r.status)
                .bind(r.created_ms)
                .bind(day_of(r.created_ms));
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Usage of one tenant for one day and model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DailyUsage {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The model.
    pub model: String,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
}

/// A tenant's usage by day and model for `from..=to` (days, inclusive).
pub async fn daily(
    store: &Store,
    tenant_id: &str,
    from: &str,
    to: &str,
) -> Result<Vec<DailyUsage>> {
    let rows = sqlx::query(
        "SELECT day, model, COUNT(*), CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) FROM usage_records \
         WHERE tenant_id = $1 AND day >= $2 AND day <= $3 GROUP BY day, model ORDER BY day, model",
    )
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DailyUsage {
                day: r.try_get(0)?,
                model: r.try_get(1)?,
                requests: r.try_get(2)?,
                prompt_tokens: r.try_get(3)?,
                completion_tokens: r.try_get(4)?,
            })
        })
        .collect()
}

/// A tenant's rows for `from..=to` (days), oldest first.
pub async fn records(
    store: &Store,
    tenant_id: &str,
    from: &str,
    to: &str,
) -> Result<Vec<UsageRecord>> {
    let rows = sqlx::query(
        "SELECT id, tenant_id, key_id, model, endpoint, prompt_tokens, completion_tokens, \
         latency_ms, status, created_ms FROM usage_records \
         WHERE tenant_id = $1 AND day >= $2 AND day <= $3 ORDER BY created_ms, id",
    )
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageRecord {
                id: r.try_get(0)?,
                tenant_id: r.try_get(1)?,
                key_id: r.try_get(2)?,
                model: r.try_get(3)?,
                endpoint: r.try_get(4)?,
                prompt_tokens: r.try_get(5)?,
                completion_tokens: r.try_get(6)?,
                latency_ms: r.try_get(7)?,
                status: r.try_get(8)?,
                created_ms: r.try_get(9)?,
            })
        })
        .collect()
}

/// Rows in the whole database (for load tests and operators).
pub async fn count(store: &Store) -> Result<i64> {
    Ok(sqlx::query("SELECT COUNT(*) FROM usage_records")
        .fetch_one(store.pool())
        .await?
        .try_get(0)?)
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(s: &str) -> String {
    // A leading = + - @ would run as a formula in a spreadsheet.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Rows as CSV with a header line.
pub fn records_csv(rows: &[UsageRecord]) -> String {
    let mut out = String::from(
        "id,created_utc_day,created_ms,key_id,model,endpoint,prompt_tokens,completion_tokens,total_tokens,latency_ms,status\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{:.3},{}\n",
            csv_field(&r.id),
            day_of(r.created_ms),
            r.created_ms,
            csv_field(&r.key_id),
            csv_field(&r.model),
            csv_field(&r.endpoint),
            r.prompt_tokens,
            r.completion_tokens,
            r.prompt_tokens + r.completion_tokens,
            r.latency_ms,
            r.status
        ));
    }
    out
}

/// Deletes rows created before `before_ms`; returns how many.
pub async fn purge_before(store: &Store, before_ms: i64) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM usage_records WHERE created_ms < $1")
            .bind(before_ms)
            .execute(store.pool())
            .await?
            .rows_affected(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }
}
