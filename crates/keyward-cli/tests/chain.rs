//! A node reports a broken audit chain instead of looking healthy, and records probes of unknown endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{raw, sqlite, text_as_root, Server, ROOT};
use serde_json::Value;

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
    let resp = text_as_root(&s.addr, "/metrics").await;
    assert!(resp.contains("keyward_audit_chain_valid 0"), "{resp}");
    assert!(
        s.logs().contains("ERROR the audit chain is broken"),
        "{}",
        s.logs()
    );
    let report = text_as_root(&s.addr, "/v1/reports/compliance").await;
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

/// `(request id, outcome)` of every record of an action, in order.
async fn trail_of(s: &Server, action: &str) -> Vec<(String, String)> {
    common::audit_records(&s.addr, &format!("action={action}&limit=1000"))
        .await
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Each request id of a multi-step operation has its intent and exactly one end.
fn every_intent_has_one_end(trail: &[(String, String)]) {
    let mut ids: Vec<&String> = trail.iter().map(|(id, _)| id).collect();
    ids.dedup();
    for id in ids {
        let outcomes: Vec<&str> = trail
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, o)| o.as_str())
            .collect();
        assert!(
            matches!(outcomes.as_slice(), ["allow", "allow"] | ["allow", "error"]),
            "{id}: {outcomes:?} in {trail:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_step_operation_records_its_end_even_when_the_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("KEYWARD_DEV_ROOT_TOKEN", ROOT)];
    let mut s = Server::dev_with(dir.path(), "background_interval_seconds = 1\n");
    // A completed rotation: its intent and its end.
    let (st, v, rid) = raw(&s.addr, "POST", "/v1/sys/rotate-root", Some(ROOT), None).await;
    assert_eq!(st, 200, "{v}");
    let trail = trail_of(&s, "kms:RotateRoot").await;
    let rid = rid.unwrap();
    assert_eq!(
        trail,
        [(rid.clone(), "allow".into()), (rid, "allow".into())]
    );

    // Killed while rotating, at whatever step the kill lands: after the restart, every rotation that was
    // recorded has its end on the record, and the chain holds.
    let root = s.root();
    for _ in 0..200 {
        common::aes_key(&root).await;
    }
    for delay_ms in [2u64, 15, 40] {
        let addr = s.addr.clone();
        let rotation = tokio::spawn(async move {
            raw(&addr, "POST", "/v1/sys/rotate-root", Some(ROOT), None).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        let mut child = s.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = rotation.await;
        s.restart(&env);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let trail = trail_of(&s, "kms:RotateRoot").await;
            if trail.len() % 2 == 0 {
                every_intent_has_one_end(&trail);
                break;
            }
            assert!(Instant::now() < deadline, "an intent has no end: {trail:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (_, v, _) = raw(&s.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(v["valid"], true, "{v}");

    // The markers such a node finds, as a killed process leaves them: one whose rotation moved the root on
    // (it completed: its end reads allow), one that did not (error), one of another node (not this node's to
    // end: left until it is an hour old).
    let node = health(&s).await.1["node_id"].as_str().unwrap().to_string();
    let marker = |claim: &str, id: &str, generation: u32| {
        format!(
            r#"INSERT INTO meta VALUES ('inflight', '{id}', CAST('{{"claimed_by": "{claim}", "started_at": 9999999999, "request_id": "{id}", "principal": "root", "source_ip": "127.0.0.1", "action": "kms:RotateRoot", "resource": null, "generation": {generation}}}' AS BLOB));"#
        )
    };
    let db = dir.path().join("data").join("keyward.db");
    s.stop();
    sqlite(
        &db,
        &[
            marker(&format!("{node} gone-run"), "r-done", 0),
            marker(&format!("{node} gone-run"), "r-cut", 1_000_000),
            marker("another-node some-run", "r-other", 0),
        ]
        .concat(),
    );
    s.restart(&env);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ends = loop {
        let ends: Vec<(String, String)> = trail_of(&s, "kms:RotateRoot")
            .await
            .into_iter()
            .filter(|(id, _)| id.starts_with("r-"))
            .collect();
        if ends.len() >= 2 || Instant::now() > deadline {
            break ends;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Another round passes: the other node's recent marker is still not this node's to end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ends.extend(
        trail_of(&s, "kms:RotateRoot")
            .await
            .into_iter()
            .filter(|(id, _)| id == "r-other"),
    );
    ends.sort();
    assert_eq!(
        ends,
        [
            ("r-cut".to_string(), "error".to_string()),
            ("r-done".to_string(), "allow".to_string()),
        ]
    );
}
