//! The databases every platform test runs against: a fresh SQLite file
//! always, and a fresh PostgreSQL database when `BITNET_TEST_POSTGRES_URL`
//! names a server (`.ci/run` starts one and sets it; with
//! `BITNET_REQUIRE_SERVICES=1` a missing server fails the test instead of
//! skipping it).

#![allow(dead_code, unreachable_pub)]

use sqlx::Connection;

/// A database for one test; the SQLite file lives as long as this.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// `sqlite` or `postgres`.
    pub label: &'static str,
    _dir: Option<tempfile::TempDir>,
}

fn required() -> bool {
    std::env::var("BITNET_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The PostgreSQL server's URL, if one is configured.
pub fn postgres_url() -> Option<String> {
    match std::env::var("BITNET_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                !required(),
                "BITNET_REQUIRE_SERVICES=1 but BITNET_TEST_POSTGRES_URL is not set"
            );
            eprintln!("BITNET_TEST_POSTGRES_URL not set: PostgreSQL part skipped");
            None
        }
    }
}

/// The Redis server's URL, if one is configured.
pub fn redis_url() -> Option<String> {
    match std::env::var("BITNET_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                !required(),
                "BITNET_REQUIRE_SERVICES=1 but BITNET_TEST_REDIS_URL is not set"
            );
            eprintln!("BITNET_TEST_REDIS_URL not set: Redis part skipped");
            None
        }
    }
}

/// A unique lower-case name.
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!("{prefix}{}", u64::from_le_bytes(b))
}

/// A new, empty PostgreSQL database on the configured server.
pub async fn fresh_postgres(server: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = unique("bitnet_test_");
    let mut conn = sqlx::AnyConnection::connect(server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A fresh SQLite file, and a fresh PostgreSQL database when configured.
pub async fn databases() -> Vec<TestDb> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![TestDb {
        url: format!("sqlite://{}", dir.path().join("platform.db").display()),
        label: "sqlite",
        _dir: Some(dir),
    }];
    if let Some(server) = postgres_url() {
        out.push(TestDb {
            url: fresh_postgres(&server).await,
            label: "postgres",
            _dir: None,
        });
    }
    out
}
