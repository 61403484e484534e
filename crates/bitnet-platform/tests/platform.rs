//! The platform's storage, limits, metering, billing, audit and privacy
//! operations, each run on SQLite and (when configured) PostgreSQL.

mod common;

use bitnet_platform::audit;
use bitnet_platform::billing;
use bitnet_platform::db::now_ms;
use bitnet_platform::metering;
use bitnet_platform::privacy;
use bitnet_platform::tenants;
use bitnet_platform::{AuthFailure, Platform, PlatformConfig, Store, UsageRecord};
use sqlx::Connection;

async fn platform(url: &str) -> (Platform, tokio::task::JoinHandle<()>) {
    Platform::start(PlatformConfig {
        database_url: Some(url.into()),
        ..PlatformConfig::default()
    })
    .await
    .unwrap()
}

fn usage(tenant: &str, key: &str, n: usize, prompt: i64, completion: i64, at: i64) -> UsageRecord {
    UsageRecord {
        id: common::unique("use_") + &n.to_string(),
        tenant_id: tenant.into(),
        key_id: key.into(),
        model: "tiny".into(),
        endpoint: "completions".into(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        latency_ms: 1.5,
        status: 200,
        created_ms: at,
    }
}

/// Runs raw SQL on the test database (the tampering an attacker with
/// database access would do).
async fn raw(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(sql).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_authenticate_revoke_rotate_and_suspend() {
    for db in common::databases().await {
        let (p, _w) = platform(&db.url).await;
        let s = &p.store;
        let a = p.create_tenant("admin", "Acme", "team").await.unwrap();
        let b = p.create_tenant("admin", "Beta", "developer").await.unwrap();
        // Names are unique; tiers must exist.
        assert!(
            p.create_tenant("admin", "Acme", "team")
                .await
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        assert!(
            p.create_tenant("admin", "X", "platinum")
                .await
                .unwrap_err()
                .to_string()
                .contains("unknown tier")
        );
        let ka = p.create_key("admin", &a.id, "prod").await.unwrap();
        let kb = p.create_key("admin", &b.id, "prod").await.unwrap();
        let who = tenants::authenticate(s, &ka.key).await.unwrap().unwrap();
        assert_eq!(
            (who.tenant.id.as_str(), who.key_id.as_str()),
            (a.id.as_str(), ka.info.id.as_str())
        );
        let who = tenants::authenticate(s, &kb.key).await.unwrap().unwrap();
        assert_eq!(who.tenant.id, b.id, "{}", db.label);
        // A key with the right id and a wrong secret is unknown.
        let forged = format!("{}{}", &ka.key[..ka.key.len() - 4], "0000");
        let bad = tenants::authenticate(s, &forged)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(bad.0, AuthFailure::Unknown);
        assert_eq!(
            tenants::authenticate(s, "nope")
                .await
                .unwrap()
                .unwrap_err()
                .0,
            AuthFailure::Malformed
        );
        // Revoked at once.
        tenants::revoke_key(s, "admin", &ka.info.id).await.unwrap();
        assert_eq!(
            tenants::authenticate(s, &ka.key)
                .await
                .unwrap()
                .unwrap_err()
                .0,
            AuthFailure::Revoked
        );
        assert!(tenants::rotate_key(s, "admin", &ka.info.id).await.is_err());
        // Rotation: the new key works, the old one stops.
        let kb2 = tenants::rotate_key(s, "admin", &kb.info.id).await.unwrap();
        assert!(tenants::authenticate(s, &kb2.key).await.unwrap().is_ok());
        assert_eq!(
            tenants::authenticate(s, &kb.key)
                .await
                .unwrap()
                .unwrap_err()
                .0,
            AuthFailure::Revoked
        );
        // Suspension stops every key of the tenant, and resuming restores them.
        tenants::set_status(s, "admin", &b.id, "suspended")
            .await
            .unwrap();
        assert_eq!(
            tenants::authenticate(s, &kb2.key)
                .await
                .unwrap()
                .unwrap_err()
                .0,
            AuthFailure::Suspended
        );
        tenants::set_status(s, "admin", &b.id, "active")
            .await
            .unwrap();
        assert!(tenants::authenticate(s, &kb2.key).await.unwrap().is_ok());
        assert!(
            tenants::set_status(s, "admin", &b.id, "gone")
                .await
                .is_err()
        );
        // Listing shows ids and labels, never secrets.
        let keys = tenants::list_keys(s, &b.id).await.unwrap();
        assert_eq!(keys.len(), 2);
        let listed = serde_json::to_string(&keys).unwrap();
        assert!(!listed.contains(&kb2.key[10..]));
        assert_eq!(tenants::list_tenants(s).await.unwrap().len(), 2);
        assert!(audit::verify(s).await.unwrap().ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_shaped_names_and_ids_are_data() {
    for db in common::databases().await {
        let (p, _w) = platform(&db.url).await;
        let name = "Robert'); DROP TABLE tenants;--";
        let t = p.create_tenant("admin", name, "developer").await.unwrap();
        assert_eq!(
            tenants::get_tenant(&p.store, &t.id).await.unwrap().name,
            name
        );
        let err = tenants::get_tenant(&p.store, "x' OR '1'='1")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{}: {err}", db.label);
        assert!(
            tenants::revoke_key(&p.store, "admin", "' OR 1=1 --")
                .await
                .is_err()
        );
        assert_eq!(tenants::list_tenants(&p.store).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_detects_edits_deletions_and_truncation() {
    for db in common::databases().await {
        let (p, _w) = platform(&db.url).await;
        let t = p.create_tenant("admin", "Acme", "team").await.unwrap();
        for i in 0..5 {
            p.create_key("admin", &t.id, &format!("k{i}"))
                .await
                .unwrap();
        }
        // Concurrent appends keep one linear chain.
        let mut joins = Vec::new();
        for i in 0..16 {
            let store = p.store.clone();
            joins.push(tokio::spawn(async move {
                audit::append(
                    &store,
                    "system",
                    "test.event",
                    None,
                    serde_json::json!({ "i": i }),
                )
                .await
                .unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for j in joins {
            seqs.push(j.await.unwrap());
        }
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 16);
        let v = audit::verify(&p.store).await.unwrap();
        assert!(v.ok(), "{}: {v:?}", db.label);
        assert_eq!(v.rows, 1 + 5 + 16);
        let entries = audit::list(&p.store, Some(&t.id), 100).await.unwrap();
        assert_eq!(entries.len(), 6);
        assert_eq!(entries.last().unwrap().action, "tenant.created");

        // An edited row.
        raw(
            &db.url,
            "UPDATE audit_log SET detail = '{\"tier\":\"business\"}' WHERE seq = 1",
        )
        .await;
        let v = audit::verify(&p.store).await.unwrap();
        assert!(
            v.problem.as_deref().unwrap().contains("row 1 was edited"),
            "{v:?}"
        );
        // Re-hashing the edited row breaks the link of the next one.
        let e = &audit::list(&p.store, None, 1000).await.unwrap();
        let second = e.iter().find(|x| x.seq == 2).unwrap().clone();
        raw(
            &db.url,
            &format!(
                "UPDATE audit_log SET hash = 'x' WHERE seq = 1 AND '{}' <> ''",
                second.hash
            ),
        )
        .await;
        assert!(!audit::verify(&p.store).await.unwrap().ok());
    }
    for db in common::databases().await {
        let (p, _w) = platform(&db.url).await;
        let t = p.create_tenant("admin", "Acme", "team").await.unwrap();
        for i in 0..4 {
            p.create_key("admin", &t.id, &format!("k{i}"))
                .await
                .unwrap();
        }
        raw(&db.url, "DELETE FROM audit_log WHERE seq = 3").await;
        let v = audit::verify(&p.store).await.unwrap();
        assert!(
            v.problem.as_deref().unwrap().contains("row 3 is missing"),
            "{v:?}"
        );
    }
    for db in common::databases().await {
        let (p, _w) = platform(&db.url).await;
        let t = p.create_tenant("admin", "Acme", "team").await.unwrap();
        p.create_key("admin", &t.id, "k").await.unwrap();
        raw(&db.url, "DELETE FROM audit_log WHERE seq = 2").await;
        let v = audit::verify(&p.store).await.unwrap();
        assert!(
            v.problem
                .as_deref()
                .unwrap()
                .contains("removed from the end"),
            "{v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_usage_reports_and_invoices() {
    for db in common::databases().await {
        let (p, writer) = platform(&db.url).await;
        let a = p.create_tenant("admin", "Acme", "developer").await.unwrap();
        let b = p.create_tenant("admin", "Beta", "team").await.unwrap();
        // 400 rows at once from many tasks: every one is committed.
        let now = now_ms();
        let mut joins = Vec::new();
        for i in 0..400usize {
            let meter = p.meter.clone();
            let (t, k) = if i % 4 == 0 {
                (b.id.clone(), "kb")
            } else {
                (a.id.clone(), "ka")
            };
            joins.push(tokio::spawn(async move {
                meter
                    .record(usage(&t, k, i, 1000 + i as i64, 50_000, now))
                    .await
            }));
        }
        for j in joins {
            j.await.unwrap().unwrap();
        }
        assert_eq!(metering::count(&p.store).await.unwrap(), 400);
        let today = bitnet_platform::db::day_of(now);
        let daily = metering::daily(&p.store, &a.id, &today, &today)
            .await
            .unwrap();
        assert_eq!(daily.len(), 1);
        assert_eq!(daily[0].requests, 300);
        let prompt_a: i64 = (0..400)
            .filter(|i| i % 4 != 0)
            .map(|i| 1000 + i as i64)
            .sum();
        assert_eq!(daily[0].prompt_tokens, prompt_a);
        assert_eq!(daily[0].completion_tokens, 300 * 50_000);
        // B sees only its own rows.
        let rows_b = metering::records(&p.store, &b.id, &today, &today)
            .await
            .unwrap();
        assert_eq!(rows_b.len(), 100);
        assert!(rows_b.iter().all(|r| r.tenant_id == b.id));
        let csv = metering::records_csv(&rows_b);
        assert_eq!(csv.lines().count(), 101);

        // The invoice against a hand computation on the same rows.
        let month = &today[..7];
        let inv = p.invoice(&a, month).await.unwrap();
        let tokens = (prompt_a + 300 * 50_000) as f64;
        let hand = 99.0 + (tokens - 10_000_000.0).max(0.0) / 1e6 * 2.0;
        assert!(
            (inv.total_usd - hand).abs() <= hand * 0.01,
            "{} vs {hand}",
            inv.total_usd
        );
        assert!(
            (inv.total_usd - hand).abs() < 0.006,
            "to the cent: {} vs {hand}",
            inv.total_usd
        );
        assert_eq!(inv.requests, 300);
        let csv = billing::invoice_csv(&inv);
        assert!(csv.contains("developer tier"), "{csv}");
        // Another month is just the base price.
        let empty = p.invoice(&a, "2001-01").await.unwrap();
        assert_eq!(empty.total_cents, 9_900);
        assert!(p.invoice(&a, "2026-13").await.is_err());

        // Rows for a deleted tenant are dropped, not failing the batch.
        let gone = p.create_tenant("admin", "Gone", "developer").await.unwrap();
        privacy::delete_tenant(&p.store, "admin", &gone.id)
            .await
            .unwrap();
        p.meter
            .record(usage(&gone.id, "k", 9999, 1, 1, now))
            .await
            .unwrap();
        p.meter
            .record(usage(&a.id, "ka", 10_000, 1, 1, now))
            .await
            .unwrap();
        assert_eq!(metering::count(&p.store).await.unwrap(), 401);
        drop(p);
        writer.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_delete_and_retention() {
    for db in common::databases().await {
        let (p, _w) = platform(&db.url).await;
        let a = p.create_tenant("admin", "Acme", "developer").await.unwrap();
        let b = p.create_tenant("admin", "Beta", "developer").await.unwrap();
        let ka = p.create_key("admin", &a.id, "prod").await.unwrap();
        p.create_key("admin", &b.id, "prod").await.unwrap();
        let old = now_ms() - 100 * 86_400_000;
        p.meter
            .record(usage(&a.id, &ka.info.id, 1, 10, 20, now_ms()))
            .await
            .unwrap();
        p.meter
            .record(usage(&a.id, &ka.info.id, 2, 10, 20, old))
            .await
            .unwrap();
        p.meter
            .record(usage(&b.id, "kb", 3, 10, 20, old))
            .await
            .unwrap();

        let export = privacy::export(&p.store, "admin", &a.id).await.unwrap();
        assert_eq!(export.tenant.name, "Acme");
        assert_eq!(export.keys.len(), 1);
        assert_eq!(export.usage.len(), 2);
        assert!(export.audit.iter().any(|e| e.action == "tenant.created"));
        let json = serde_json::to_string(&export).unwrap();
        assert!(!json.contains(&b.id), "another tenant's data in the export");

        // Retention: rows older than 90 days go, the recent one stays.
        assert_eq!(privacy::purge(&p.store, "system", 90).await.unwrap(), 2);
        assert_eq!(metering::count(&p.store).await.unwrap(), 1);

        let deleted = privacy::delete_tenant(&p.store, "admin", &a.id)
            .await
            .unwrap();
        assert_eq!((deleted.keys, deleted.usage_rows), (1, 1));
        assert!(tenants::get_tenant(&p.store, &a.id).await.is_err());
        assert_eq!(
            tenants::authenticate(&p.store, &ka.key)
                .await
                .unwrap()
                .unwrap_err()
                .0,
            AuthFailure::Unknown
        );
        assert_eq!(metering::count(&p.store).await.unwrap(), 0);
        // B is untouched; the chain still verifies after deletion and purge.
        assert_eq!(tenants::list_keys(&p.store, &b.id).await.unwrap().len(), 1);
        assert!(audit::verify(&p.store).await.unwrap().ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_reopen() {
    for db in common::databases().await {
        let s1 = Store::connect(&db.url, 2).await.unwrap();
        let s2 = Store::connect(&db.url, 2).await.unwrap();
        s1.ping().await.unwrap();
        s2.ping().await.unwrap();
    }
    assert!(Store::connect("sqlite::memory:", 1).await.is_err());
    let err = Store::connect("mysql://u:secret@h/db", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("must start with") && !err.contains("secret"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_limits_are_shared_by_replicas() {
    use bitnet_platform::{Limiter, Refusal, Tier};
    let Some(url) = common::redis_url() else {
        return;
    };
    let tier = Tier {
        requests_per_minute: 3,
        concurrent_requests: 2,
        tokens_per_minute: 100,
        ..Tier::defaults()[0].clone()
    };
    // Two replicas, one Redis; a unique prefix keeps parallel tests apart.
    let prefix = common::unique("bitnet:test:") + ":";
    let r1 = Limiter::redis(&url, &prefix).unwrap();
    let r2 = Limiter::redis(&url, &prefix).unwrap();
    r1.ping().await.unwrap();
    let a = r1.admit("t", &tier).await.unwrap().unwrap();
    assert_eq!(a.requests.remaining, 2);
    let b = r2.admit("t", &tier).await.unwrap().unwrap();
    assert_eq!(
        r1.admit("t", &tier).await.unwrap().unwrap_err(),
        Refusal::Concurrency { limit: 2 }
    );
    r1.release("t", &tier, a).await.unwrap();
    let c = r2.admit("t", &tier).await.unwrap().unwrap();
    r2.release("t", &tier, b).await.unwrap();
    r1.release("t", &tier, c).await.unwrap();
    // The fourth request of the minute, on either replica, is refused.
    match r1.admit("t", &tier).await.unwrap() {
        Err(Refusal::Requests(d)) => {
            assert_eq!(d.remaining, 0);
            assert!(
                d.retry_after.as_secs_f64() > 0.0 && d.retry_after.as_secs_f64() <= 20.5,
                "{d:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Another tenant has its own buckets.
    let u = r2.admit("u", &tier).await.unwrap().unwrap();
    r2.release("u", &tier, u).await.unwrap();
    // Tokens across replicas, with a refund.
    assert!(r1.reserve_tokens("t", &tier, 70).await.unwrap().is_ok());
    assert!(matches!(
        r2.reserve_tokens("t", &tier, 40).await.unwrap(),
        Err(Refusal::Tokens(_))
    ));
    r2.refund_tokens("t", &tier, 20).await.unwrap();
    assert!(r2.reserve_tokens("t", &tier, 40).await.unwrap().is_ok());
    // A Redis that is not there is an error (the server answers 503).
    let down = Limiter::redis("redis://127.0.0.1:1", &prefix).unwrap();
    let err = down.admit("t", &tier).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}
