//! The hosted API end to end: keys gate `/v1`, tenants are isolated,
//! limits answer 429 with OpenAI's headers, every completed request has
//! its usage row, the admin API, a database that goes away, and the
//! dashboard in headless Chromium. Each runs on SQLite and, when
//! `BITNET_TEST_POSTGRES_URL` is set (`.ci/run` sets it), PostgreSQL.

mod common;

use bitnet_platform::{PlatformConfig, Tier};
use bitnet_server::ServerConfig;
use common::TestServer;
use serde_json::{Value, json};
use sqlx::Connection;

const ADMIN: &str = "test-admin-token-0123456789";

fn required() -> bool {
    std::env::var("BITNET_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn env_url(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                !required(),
                "BITNET_REQUIRE_SERVICES=1 but {name} is not set"
            );
            eprintln!("{name} not set: that part is skipped");
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!("{prefix}{}", u64::from_le_bytes(b))
}

async fn fresh_postgres(server: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = unique("bitnet_srv_");
    let mut c = sqlx::AnyConnection::connect(server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    format!("{}/{name}", server.rsplit_once('/').unwrap().0)
}

/// (label, database URL, what keeps a SQLite file alive).
async fn databases() -> Vec<(&'static str, String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![(
        "sqlite",
        format!("sqlite://{}", dir.path().join("p.db").display()),
        Some(dir),
    )];
    if let Some(server) = env_url("BITNET_TEST_POSTGRES_URL") {
        out.push(("postgres", fresh_postgres(&server).await, None));
    }
    out
}

fn tiers() -> Vec<Tier> {
    let mut t = Tier::defaults();
    // A tier small enough to hit its limits in a test.
    t.push(Tier {
        name: "tiny".into(),
        monthly_price_usd: 10.0,
        requests_per_minute: 3,
        tokens_per_minute: 100,
        concurrent_requests: 2,
        monthly_tokens: 100,
        overage_usd_per_million: 1000.0,
    });
    t
}

async fn server(url: &str) -> TestServer {
    TestServer::start(ServerConfig {
        platform: PlatformConfig {
            database_url: Some(url.to_string()),
            admin_token: Some(ADMIN.into()),
            tiers: tiers(),
            metering_timeout_secs: 3.0,
            ..PlatformConfig::default()
        },
        ..ServerConfig::default()
    })
    .await
}

async fn tenant_with_key(s: &TestServer, name: &str, tier: &str) -> (String, String) {
    let (st, _, t) = s
        .json(
            "POST",
            "/admin/tenants",
            Some(ADMIN),
            Some(&json!({"name": name, "tier": tier})),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let (st, _, k) = s
        .json(
            "POST",
            &format!("/admin/tenants/{id}/keys"),
            Some(ADMIN),
            Some(&json!({"name": "test"})),
        )
        .await;
    assert_eq!(st, 201, "{k}");
    (id, k["key"].as_str().unwrap().to_string())
}

/// The key with its last secret digit changed.
fn forged(key: &str) -> String {
    let last = if key.ends_with('0') { "1" } else { "0" };
    format!("{}{last}", &key[..key.len() - 1])
}

fn completion(max_tokens: u32) -> Value {
    json!({"model": "tiny", "prompt": "hello", "max_tokens": max_tokens, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_gate_v1_and_tenants_never_see_each_other() {
    for (label, url, _dir) in databases().await {
        let s = server(&url).await;
        let (a, key_a) = tenant_with_key(&s, "Acme", "team").await;
        let (b, key_b) = tenant_with_key(&s, "Beta", "team").await;

        // Missing, malformed, forged keys: 401 without detail.
        let (st, _, v) = s
            .json("POST", "/v1/completions", None, Some(&completion(2)))
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("invalid_api_key")),
            "{label}"
        );
        for bad in ["sk-bn-nope", "' OR 1=1 --", &forged(&key_a)] {
            let (st, _, v) = s
                .json("POST", "/v1/completions", Some(bad), Some(&completion(2)))
                .await;
            assert_eq!(st, 401, "{label} {bad}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                !msg.contains(&a) && !msg.contains(&b) && !msg.contains("Acme"),
                "{msg}"
            );
        }
        let (st, _, _) = s.json("GET", "/v1/models", None, None).await;
        assert_eq!(st, 401);

        // A valid key works, with the rate-limit headers.
        let (st, h, v) = s
            .json(
                "POST",
                "/v1/completions",
                Some(&key_a),
                Some(&completion(3)),
            )
            .await;
        assert_eq!(st, 200, "{label}: {v}");
        for name in [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "x-bitnet-platform-ms",
        ] {
            assert!(h.contains_key(name), "{label}: no {name}");
        }
        let used = v["usage"]["total_tokens"].as_i64().unwrap();
        let (st, _, _) = s
            .json(
                "POST",
                "/v1/completions",
                Some(&key_b),
                Some(&completion(2)),
            )
            .await;
        assert_eq!(st, 200);

        // Each sees only its own usage, invoice and summary.
        let (_, _, ua) = s.json("GET", "/v1/usage", Some(&key_a), None).await;
        assert_eq!(ua["tenant_id"], a);
        let rows = ua["data"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{ua}");
        assert_eq!(rows[0]["requests"], 1);
        assert_eq!(
            rows[0]["prompt_tokens"].as_i64().unwrap()
                + rows[0]["completion_tokens"].as_i64().unwrap(),
            used
        );
        let (_, _, ia) = s.json("GET", "/v1/invoice", Some(&key_a), None).await;
        assert_eq!(
            (ia["tenant_id"].as_str(), ia["total_tokens"].as_i64()),
            (Some(a.as_str()), Some(used))
        );
        let (_, _, sb) = s
            .json("GET", "/v1/dashboard/summary", Some(&key_b), None)
            .await;
        assert_eq!(sb["tenant"]["id"], b);
        assert!(!sb.to_string().contains(&a));
        let (st, h, csv) = s.call("GET", "/v1/usage/export", Some(&key_b), None).await;
        assert_eq!(st, 200);
        assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
        let csv = String::from_utf8_lossy(&csv).into_owned();
        assert_eq!(csv.lines().count(), 2, "{csv}");
        assert!(!csv.contains(&a));
        let (st, _, _) = s
            .call("GET", "/v1/invoice?format=csv", Some(&key_b), None)
            .await;
        assert_eq!(st, 200);
        // Query parameters cannot name another tenant.
        let (_, _, v) = s
            .json(
                "GET",
                &format!("/v1/usage?tenant_id={a}"),
                Some(&key_b),
                None,
            )
            .await;
        assert_eq!(v["tenant_id"], b);

        // A tenant key is no admin token.
        let (st, _, _) = s.json("GET", "/admin/tenants", Some(&key_a), None).await;
        assert_eq!(st, 401);

        // Revoked: refused on the very next request.
        let (_, _, keys) = s
            .json(
                "GET",
                &format!("/admin/tenants/{a}/keys"),
                Some(ADMIN),
                None,
            )
            .await;
        let key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
        let (st, _, _) = s
            .json(
                "DELETE",
                &format!("/admin/keys/{key_id}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(st, 200);
        let (st, _, _) = s
            .json(
                "POST",
                "/v1/completions",
                Some(&key_a),
                Some(&completion(2)),
            )
            .await;
        assert_eq!(st, 401, "{label}: a revoked key still works");

        // Suspended: 403; resumed: works again.
        let path = format!("/admin/tenants/{b}");
        s.json(
            "PATCH",
            &path,
            Some(ADMIN),
            Some(&json!({"status": "suspended"})),
        )
        .await;
        let (st, _, v) = s
            .json(
                "POST",
                "/v1/completions",
                Some(&key_b),
                Some(&completion(2)),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (403, Some("account_suspended"))
        );
        s.json(
            "PATCH",
            &path,
            Some(ADMIN),
            Some(&json!({"status": "active"})),
        )
        .await;
        let (st, _, _) = s
            .json(
                "POST",
                "/v1/completions",
                Some(&key_b),
                Some(&completion(2)),
            )
            .await;
        assert_eq!(st, 200);

        // Every refusal and change is in the audit log, and it verifies.
        let (_, _, log) = s
            .json("GET", "/admin/audit?limit=1000", Some(ADMIN), None)
            .await;
        let actions: Vec<&str> = log["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        for want in [
            "tenant.created",
            "key.created",
            "key.revoked",
            "tenant.suspended",
            "tenant.resumed",
            "auth.failed",
        ] {
            assert!(actions.contains(&want), "{label}: no {want} in {actions:?}");
        }
        let (_, _, v) = s
            .json("GET", "/admin/audit/verify", Some(ADMIN), None)
            .await;
        assert_eq!(v["problem"], Value::Null, "{v}");
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_429_with_retry_after_and_count_tokens() {
    for (label, url, _dir) in databases().await {
        let s = server(&url).await;
        let (_, key) = tenant_with_key(&s, "Small", "tiny").await;
        let (_, other) = tenant_with_key(&s, "Other", "tiny").await;
        // Tokens per minute: 100. One request may use its prompt plus
        // max_tokens; asking for more than a minute's worth is refused.
        let (st, _, v) = s
            .json(
                "POST",
                "/v1/completions",
                Some(&key),
                Some(&completion(100)),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (429, Some("tokens_per_minute_exceeded")),
            "{label}: {v}"
        );
        // Three requests a minute; the too-large one counted as one.
        let (st, h, _) = s
            .json("POST", "/v1/completions", Some(&key), Some(&completion(60)))
            .await;
        assert_eq!(st, 200, "{label}");
        let remaining: u64 = h["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // 60 + prompt reserved out of 100.
        assert!(remaining < 40, "{remaining}");
        // The next asks for 60 + prompt again: more than what is left.
        let (st, h, v) = s
            .json("POST", "/v1/completions", Some(&key), Some(&completion(60)))
            .await;
        assert_eq!(st, 429, "{label}: tokens per minute not counted: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tokens per min"),
            "{v}"
        );
        assert!(h.contains_key("retry-after") && h.contains_key("x-ratelimit-remaining-tokens"));
        // The fourth request of the minute is refused for requests.
        let (st, h, v) = s
            .json("POST", "/v1/completions", Some(&key), Some(&completion(1)))
            .await;
        assert_eq!(st, 429, "{label}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("requests per min"),
            "{v}"
        );
        let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry), "{retry}");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        // Another tenant on the same tier is not limited by the first.
        let (st, _, _) = s
            .json(
                "POST",
                "/v1/completions",
                Some(&other),
                Some(&completion(2)),
            )
            .await;
        assert_eq!(st, 200);
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_completed_request_has_its_usage_row_and_the_bill_matches() {
    for (label, url, _dir) in databases().await {
        let s = server(&url).await;
        let (a, key) = tenant_with_key(&s, "Load", "business").await;
        // 96 requests from 24 clients, half streamed, some cut by the
        // client mid-stream.
        let mut tasks = Vec::new();
        for c in 0..24 {
            let (client, base, key) = (s.client.clone(), s.base.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                for i in 0..4 {
                    if (c + i) % 2 == 0 {
                        let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 8, "stream": true, "temperature": 0.7, "seed": c});
                        let out = bitnet_server::loadgen::stream_chat_as(&client, &base, &body, Some(&key)).await;
                        assert!(out.malformed.is_empty(), "{:?}", out.malformed);
                        ok += usize::from(out.status == 200 && out.done);
                    } else {
                        let req = hyper::Request::post(format!("{base}/v1/completions"))
                            .header("content-type", "application/json")
                            .header("authorization", format!("Bearer {key}"))
                            .body(http_body_util::Full::new(bytes::Bytes::from(completion(6).to_string())))
                            .unwrap();
                        let res = client.request(req).await.unwrap();
                        let st = res.status().as_u16();
                        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
                        ok += usize::from(st == 200);
                    }
                }
                ok
            }));
        }
        let mut completed = 0;
        for t in tasks {
            completed += t.await.unwrap();
        }
        assert_eq!(completed, 96, "{label}");
        let (_, _, usage) = s.json("GET", "/v1/usage", Some(&key), None).await;
        let requests: i64 = usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum();
        assert_eq!(
            requests, 96,
            "{label}: usage rows differ from completed requests: {usage}"
        );
        // The invoice against a hand computation from the CSV rows.
        let (_, _, csv) = s.call("GET", "/v1/usage/export", Some(&key), None).await;
        let csv = String::from_utf8_lossy(&csv).into_owned();
        let tokens: i64 = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(8).unwrap().parse::<i64>().unwrap())
            .sum();
        let hand = 2999.0 + ((tokens - 1_000_000_000).max(0) as f64) / 1e6;
        let (_, _, inv) = s
            .json(
                "GET",
                &format!("/admin/tenants/{a}/invoice"),
                Some(ADMIN),
                None,
            )
            .await;
        let billed = inv["total_usd"].as_f64().unwrap();
        assert!((billed - hand).abs() <= hand * 0.01, "{billed} vs {hand}");
        assert_eq!(inv["total_tokens"].as_i64().unwrap(), tokens);
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_tenants_keys_exports_and_deletion() {
    for (label, url, _dir) in databases().await {
        let s = server(&url).await;
        let (st, _, _) = s.json("GET", "/admin/tenants", None, None).await;
        assert_eq!(st, 401);
        let (st, _, _) = s
            .json(
                "GET",
                "/admin/tenants",
                Some("wrong-token-wrong-token"),
                None,
            )
            .await;
        assert_eq!(st, 401);
        let (st, _, v) = s
            .json(
                "POST",
                "/admin/tenants",
                Some(ADMIN),
                Some(&json!({"name": "X", "tier": "gold"})),
            )
            .await;
        assert_eq!(st, 400, "{label}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unknown tier")
        );
        let (st, _, _) = s
            .json(
                "POST",
                "/admin/tenants",
                Some(ADMIN),
                Some(&json!({"nam": "X"})),
            )
            .await;
        assert_eq!(st, 400);
        let (id, key) = tenant_with_key(&s, "Robert'); DROP TABLE tenants;--", "developer").await;
        let (st, _, _) = s
            .json(
                "POST",
                "/admin/tenants",
                Some(ADMIN),
                Some(&json!({"name": "Robert'); DROP TABLE tenants;--"})),
            )
            .await;
        assert_eq!(st, 409);
        let (st, _, _) = s
            .json("GET", "/admin/tenants/ten_'%20OR%201=1", Some(ADMIN), None)
            .await;
        assert_eq!(st, 404);
        // Tier change (a limit change) and rotation.
        let (_, _, t) = s
            .json(
                "PATCH",
                &format!("/admin/tenants/{id}"),
                Some(ADMIN),
                Some(&json!({"tier": "business"})),
            )
            .await;
        assert_eq!(t["tier"], "business");
        let (_, _, keys) = s
            .json(
                "GET",
                &format!("/admin/tenants/{id}/keys"),
                Some(ADMIN),
                None,
            )
            .await;
        let key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
        assert!(keys["data"][0].get("hash").is_none() && keys["data"][0].get("key").is_none());
        let (st, _, rotated) = s
            .json(
                "POST",
                &format!("/admin/keys/{key_id}/rotate"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(st, 201);
        let new_key = rotated["key"].as_str().unwrap();
        assert_eq!(
            s.json("POST", "/v1/completions", Some(&key), Some(&completion(2)))
                .await
                .0,
            401
        );
        assert_eq!(
            s.json(
                "POST",
                "/v1/completions",
                Some(new_key),
                Some(&completion(2))
            )
            .await
            .0,
            200
        );
        // Export holds the tenant's data; deletion removes it all.
        let (_, _, export) = s
            .json(
                "GET",
                &format!("/admin/tenants/{id}/export"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(export["usage"].as_array().unwrap().len(), 1, "{export}");
        assert_eq!(export["keys"].as_array().unwrap().len(), 2);
        let (st, _, d) = s
            .json("DELETE", &format!("/admin/tenants/{id}"), Some(ADMIN), None)
            .await;
        assert_eq!((st, d["usage_rows"].as_i64()), (200, Some(1)));
        assert_eq!(
            s.json("GET", &format!("/admin/tenants/{id}"), Some(ADMIN), None)
                .await
                .0,
            404
        );
        assert_eq!(
            s.json(
                "POST",
                "/v1/completions",
                Some(new_key),
                Some(&completion(2))
            )
            .await
            .0,
            401
        );
        let (st, _, v) = s
            .json(
                "POST",
                "/admin/purge",
                Some(ADMIN),
                Some(&json!({"older_than_days": 30})),
            )
            .await;
        assert_eq!((st, v["purged_rows"].as_i64()), (200, Some(0)));
        let (_, _, v) = s
            .json("GET", "/admin/audit/verify", Some(ADMIN), None)
            .await;
        assert_eq!(v["problem"], Value::Null, "{v}");
        assert!(v["rows"].as_i64().unwrap() >= 8);
        s.stop().await;
    }
}

/// A TCP relay in front of PostgreSQL that can be cut and restored, to
/// take the database away from a running server.
struct Relay {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let target = target.clone();
                links2.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay { port, up, links }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_answers_503_and_recovers_without_losing_acknowledged_usage() {
    let Some(server_url) = env_url("BITNET_TEST_POSTGRES_URL") else {
        return;
    };
    let direct = fresh_postgres(&server_url).await;
    // postgres://user@host:port/db -> the host:port and the rest.
    let after_at = direct.rsplit_once('@').unwrap();
    let (hostport, db) = after_at.1.split_once('/').unwrap();
    let relay = Relay::start(hostport.to_string()).await;
    let via_relay = format!("{}@127.0.0.1:{}/{db}", after_at.0, relay.port);
    let s = server(&via_relay).await;
    let (_, key) = tenant_with_key(&s, "Resilient", "business").await;
    let mut acknowledged = 0;
    for _ in 0..3 {
        let (st, _, _) = s
            .json("POST", "/v1/completions", Some(&key), Some(&completion(4)))
            .await;
        assert_eq!(st, 200);
        acknowledged += 1;
    }
    relay.cut();
    let (st, h, v) = s
        .json("POST", "/v1/completions", Some(&key), Some(&completion(4)))
        .await;
    assert_eq!(st, 503, "{v}");
    assert!(h.contains_key("retry-after"));
    assert!(
        !v["error"]["message"].as_str().unwrap().contains("postgres"),
        "{v}"
    );
    let (st, _, _) = s.json("GET", "/health", None, None).await;
    assert_eq!(st, 200, "the process stays up");
    relay.restore();
    // Recovers: the pool reconnects on its own.
    let mut recovered = false;
    for _ in 0..50 {
        let (st, _, _) = s
            .json("POST", "/v1/completions", Some(&key), Some(&completion(4)))
            .await;
        if st == 200 {
            acknowledged += 1;
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(recovered, "no recovery after the database came back");
    for _ in 0..3 {
        let (st, _, _) = s
            .json("POST", "/v1/completions", Some(&key), Some(&completion(4)))
            .await;
        assert_eq!(st, 200);
        acknowledged += 1;
    }
    s.stop().await;
    // Every acknowledged request has its row, read straight from the database.
    let mut c = sqlx::AnyConnection::connect(&direct).await.unwrap();
    let n: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) FROM usage_records WHERE status = 200")
            .fetch_one(&mut c)
            .await
            .unwrap(),
        0,
    );
    assert_eq!(n, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_usage_limits_and_invoice_in_headless_chromium() {
    let chromium = match std::env::var("BITNET_TEST_CHROMIUM") {
        Ok(p) if !p.is_empty() => p,
        _ if std::path::Path::new("/usr/bin/chromium").exists() => "/usr/bin/chromium".into(),
        _ => {
            assert!(!required(), "BITNET_REQUIRE_SERVICES=1 but no Chromium");
            eprintln!("no Chromium: dashboard test skipped");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let s = server(&format!("sqlite://{}", dir.path().join("p.db").display())).await;
    let (_, key) = tenant_with_key(&s, "Dashboard Co", "developer").await;
    for n in [3, 5, 7] {
        let (st, _, _) = s
            .json("POST", "/v1/completions", Some(&key), Some(&completion(n)))
            .await;
        assert_eq!(st, 200);
    }
    let (_, _, summary) = s
        .json("GET", "/v1/dashboard/summary", Some(&key), None)
        .await;
    let total_cents = summary["invoice"]["total_cents"].as_i64().unwrap();
    let url = format!("{}/dashboard#key={key}", s.base);
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let run = |extra: Vec<String>| {
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = tokio::process::Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,900",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url)
        .kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(std::time::Duration::from_secs(90), cmd.output())
                .await
                .expect("chromium hung")
                .expect("chromium did not start");
            drop(profile);
            out
        }
    };
    let dom = run(vec!["--dump-dom".into()]).await;
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains("data-state=\"loaded\""),
        "the page did not load its data:\n{html}\n{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(html.contains("Dashboard Co"));
    assert_eq!(html.matches("class=\"bar\"").count(), 30, "one bar per day");
    assert!(html.contains(&format!("data-total-cents=\"{total_cents}\"")));
    assert!(html.contains("$99.00"), "the developer tier's base price");
    let out = run(vec![format!("--screenshot={}", shot.display())]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("dashboard screenshot: {}", shot.display());
    s.stop().await;
}
