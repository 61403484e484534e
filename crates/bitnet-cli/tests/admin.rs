//! `bitnet admin` end to end on a SQLite file: tenants, keys, invoice,
//! export, audit verification, erasure,
//! and clear errors for bad input.

use serde_json::Value;
use std::process::{Command, Output};

fn admin(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .arg("admin")
        .arg("--database-url")
        .arg(db)
        .args(args)
        .env_remove("BITNET_CONFIG")
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tenants_keys_invoices_audit_and_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("platform.db");
    let db = format!("sqlite://{}", file.display());
    let t = json(&admin(&db, &["tenant", "create", "Acme", "--tier", "team"]));
    let id = t["id"].as_str().unwrap();
    assert_eq!(t["tier"], "team");
    let k = json(&admin(&db, &["key", "create", id, "--name", "prod"]));
    assert!(k["key"].as_str().unwrap().starts_with("sk-bn-"));
    let keys = json(&admin(&db, &["key", "list", id]));
    assert!(
        keys[0].get("key").is_none(),
        "a listed key shows its secret"
    );
    let rotated = json(&admin(&db, &["key", "rotate", k["id"].as_str().unwrap()]));
    assert_ne!(rotated["key"], k["key"]);
    let inv = json(&admin(&db, &["invoice", id, "--month", "2026-01"]));
    assert_eq!(inv["total_cents"], 49_900);
    let out = admin(&db, &["invoice", id, "--csv"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("total,,,499.00"));
    json(&admin(&db, &["tenant", "suspend", id]));
    let export = json(&admin(&db, &["tenant", "export", id]));
    assert_eq!(export["tenant"]["status"], "suspended");
    let v = json(&admin(&db, &["audit", "verify"]));
    assert_eq!(v["problem"], Value::Null);
    // Bad input: clear errors, no panics.
    let out = admin(&db, &["tenant", "create", "X", "--tier", "gold"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown tier `gold`"));
    let out = admin(&db, &["tenant", "delete", id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = admin(&db, &["usage", id, "--from", "2026-02-30"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM-DD"));
    let out = admin("mysql://x", &["tenant", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite:// or postgres://"));
    let d = json(&admin(&db, &["tenant", "delete", id, "--yes"]));
    assert_eq!(d["keys"], 2);
    assert_eq!(json(&admin(&db, &["tenant", "list"])), Value::Array(vec![]));
    assert!(json(&admin(&db, &["audit", "verify"]))["problem"].is_null());
}
