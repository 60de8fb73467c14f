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
    let db = dir.path().join("data").join("keyward.db");
    for (n, delay_ms) in [2u64, 15, 40].into_iter().enumerate() {
        kill_rotating(&mut s, &format!("k-{n}"), delay_ms).await;
        s.restart(&env);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let trail = trail_of(&s, "kms:RotateRoot").await;
            if trail.len() % 2 == 0 && markers(&db).is_empty() {
                every_intent_has_one_end(&trail);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "an intent has no end: {trail:?}, markers {:?}",
                markers(&db)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (_, v, _) = raw(&s.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(v["valid"], true, "{v}");

    // The markers a killed process leaves, set aside and steered: one whose rotation moved the root on (it
    // completed: its end reads allow), one that did not (error), one of another node (not this node's to
    // end: left until it is an hour old), and one whose intent never reached the log (it never ran: dropped
    // without a record).
    let node = health(&s).await.1["node_id"].as_str().unwrap().to_string();
    let done = interrupted(&mut s, &db, "r-done", &env).await;
    let cut = interrupted(&mut s, &db, "r-cut", &env).await;
    let other = interrupted(&mut s, &db, "r-other", &env).await;
    s.stop();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let put = |(id, marker): &(String, Value), changes: Value| {
        let mut m = marker.clone();
        for (k, v) in changes.as_object().unwrap() {
            m[k] = v.clone();
        }
        format!("INSERT INTO meta VALUES ('inflight', '{id}', CAST('{m}' AS BLOB));")
    };
    let never = (
        "r-never".to_string(),
        serde_json::json!({"claimed_by": format!("{node} gone-run"), "started_at": now,
            "request_id": "r-never", "principal": "root", "source_ip": "127.0.0.1",
            "action": "kms:RotateRoot", "resource": null, "generation": 0}),
    );
    sqlite(
        &db,
        &[
            put(&done, serde_json::json!({"generation": 0})),
            put(&cut, serde_json::json!({"generation": 1_000_000})),
            put(
                &other,
                serde_json::json!({"claimed_by": "another-node some-run", "started_at": now}),
            ),
            put(&never, serde_json::json!({})),
        ]
        .concat(),
    );
    s.restart(&env);
    let ours = [&done.0, &cut.0, &other.0, &never.0];
    let ended = |trail: Vec<(String, String)>| -> Vec<(String, String)> {
        trail
            .into_iter()
            .filter(|(id, _)| ours.contains(&id))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while markers(&db).len() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another round passes: the other node's recent marker is still not this node's to end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut trail = ended(trail_of(&s, "kms:RotateRoot").await);
    trail.sort();
    let mut expected = vec![
        (cut.0.clone(), "allow".to_string()),
        (cut.0.clone(), "error".to_string()),
        (done.0.clone(), "allow".to_string()),
        (done.0.clone(), "allow".to_string()),
        (other.0.clone(), "allow".to_string()),
    ];
    expected.sort();
    assert_eq!(trail, expected);
    assert_eq!(markers(&db), std::slice::from_ref(&other.0));
}

/// The request ids of the markers in the store.
fn markers(db: &std::path::Path) -> Vec<String> {
    common::sqlite_rows(
        db,
        "SELECT name FROM meta WHERE ns = 'inflight' ORDER BY name",
    )
}

/// Starts a root rotation under `request_id` and kills the node `delay_ms` later.
async fn kill_rotating(s: &mut Server, request_id: &str, delay_ms: u64) {
    let url = format!("{}/v1/sys/rotate-root", s.addr);
    let id = request_id.to_string();
    let rotation = tokio::spawn(async move {
        // Refused or cut off by the kill, as the case may be.
        reqwest::Client::new()
            .post(url)
            .bearer_auth(ROOT)
            .header("x-request-id", id)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let mut child = s.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = rotation.await;
}

/// Kills rotations until one is cut off after its intent is on the record and before its end, and sets its
/// marker aside (out of the store, so that the restarted node does not end it). Says its request id and
/// marker. The node runs again when it returns.
async fn interrupted(
    s: &mut Server,
    db: &std::path::Path,
    prefix: &str,
    env: &[(&str, &str)],
) -> (String, Value) {
    for attempt in 0..40u64 {
        let id = format!("{prefix}-{attempt}");
        kill_rotating(s, &id, 2 + (attempt * 7) % 60).await;
        let marker = common::sqlite_rows(
            db,
            &format!(
                "SELECT CAST(value AS TEXT) FROM meta WHERE ns = 'inflight' AND name = '{id}'"
            ),
        );
        let intents = common::sqlite_rows(
            db,
            &format!("SELECT seq FROM audit WHERE json_extract(record, '$.request_id') = '{id}'"),
        );
        if let ([marker], [_]) = (marker.as_slice(), intents.as_slice()) {
            sqlite(
                db,
                &format!("DELETE FROM meta WHERE ns = 'inflight' AND name = '{id}';"),
            );
            s.restart(env);
            return (id, serde_json::from_str(marker).unwrap());
        }
        s.restart(env);
    }
    panic!("no kill landed between a rotation's intent and its end");
}
