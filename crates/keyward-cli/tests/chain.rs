//! A node reports a broken audit chain instead of looking healthy, and records probes of unknown endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{raw, Server, ROOT};
use serde_json::Value;

fn sqlite(db: &std::path::Path, statement: &str) {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=30); c.executescript(sys.argv[2]); c.commit()")
        .arg(db)
        .arg(statement)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{statement}");
}

async fn health(s: &Server) -> (u16, Value) {
    let (st, v, _) = raw(&s.addr, "GET", "/v1/health", None, None).await;
    (st, v)
}

async fn wait_for_health(s: &Server, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, v) = health(s).await;
        if v["status"] == wanted {
            assert_eq!(st, 200, "{v}");
            return v;
        }
        assert!(Instant::now() < deadline, "still {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_endpoint_is_recorded_for_a_caller_with_a_credential() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let (st, _, _) = raw(&s.addr, "GET", "/v1/no/such/thing", Some(ROOT), None).await;
    assert_eq!(st, 404);
    let (st, _, _) = raw(
        &s.addr,
        "DELETE",
        "/v1/health",
        Some("kw.not-a-token"),
        None,
    )
    .await;
    assert_eq!(st, 401, "a bad credential is refused as anywhere");
    let (st, _, _) = raw(&s.addr, "GET", "/v1/anonymous/probe", None, None).await;
    assert_eq!(st, 404);
    let (_, v, _) = raw(
        &s.addr,
        "GET",
        "/v1/audit?action=kms:NoSuchEndpoint",
        Some(ROOT),
        None,
    )
    .await;
    let records = v["records"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["principal"].as_str().unwrap(),
                r["resource"].as_str().unwrap(),
                r["error_code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("root", "endpoint/GET /v1/no/such/thing", "NotFound"),
            ("anonymous", "endpoint/DELETE /v1/health", "Unauthenticated"),
        ],
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_audit_chain_makes_the_node_degraded_on_every_channel() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::dev_with(dir.path(), "background_interval_seconds = 1\n");
    let key = common::aes_key(&s.root()).await;
    for _ in 0..3 {
        s.root().encrypt(&key, b"x", None).await.unwrap();
    }
    let v = wait_for_health(&s, "ok").await;
    assert!(v.get("reason").is_none(), "{v}");

    // Someone with access to the database rewrites one record.
    let db = dir.path().join("data").join("keyward.db");
    sqlite(
        &db,
        "UPDATE audit SET record = replace(record, '\"principal\":\"root\"', '\"principal\":\"alice\"') WHERE seq = 3;",
    );
    let v = wait_for_health(&s, "degraded").await;
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("audit record 3 does not verify"), "{v}");

    // The CLI's health check exits 2, the metric and the log say so, the compliance report leads with it.
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("health")
        .env("KEYWARD_ADDR", &s.addr)
        .env("KEYWARD_TOKEN", ROOT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("degraded"),
        "{out:?}"
    );
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", s.addr))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(resp.contains("keyward_audit_chain_valid 0"), "{resp}");
    assert!(
        s.logs().contains("error: the audit chain is broken"),
        "{}",
        s.logs()
    );
    let report = reqwest::Client::new()
        .get(format!("{}/v1/reports/compliance", s.addr))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        report.starts_with(r#"{"audit_chain_valid":false,"audit_chain_problem":"audit record 3"#),
        "{report}"
    );
    // Serving goes on.
    s.root().encrypt(&key, b"x", None).await.unwrap();

    // A restart does not forget it: the chain is checked again at start.
    s.restart(&[("KEYWARD_DEV_ROOT_TOKEN", ROOT)]);
    wait_for_health(&s, "degraded").await;
}
