//! How the service treats a request's body and what its refusals repeat, end to end through the real
//! binary: a stalled or short body is the client's fault (408), an oversized one is refused from its declared
//! length (413), only JSON is read (415), a refusal quotes at most 64 characters of input, and a batch item
//! that does not parse fails alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{code_of, raw, Server, ROOT};
use serde_json::{json, Value};

/// Sends `head` and then `body` over a plain socket, optionally leaving the socket open without the rest of
/// the body: (status, JSON body, how long the answer took).
fn send(addr: &str, head: &str, body: &[u8], close_after: bool) -> (u16, Value, Duration) {
    let host = addr.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(host).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    if close_after {
        sock.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json, started.elapsed())
}

fn head(method: &str, path: &str, content_type: &str, length: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ROOT}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

async fn key(s: &Server) -> String {
    let (st, v, _) = raw(
        &s.addr,
        "POST",
        "/v1/keys",
        Some(ROOT),
        Some(br#"{"spec": "AES_256"}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    v["key_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_short_body_is_the_clients_fault_and_a_large_one_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev_with(dir.path(), "request_timeout_seconds = 4\n");
    let id = key(&s).await;
    let path = format!("/v1/keys/{id}/encrypt");
    let addr = s.addr.clone();
    let stalled = {
        let (addr, path) = (addr.clone(), path.clone());
        // Ten bytes of a hundred, then nothing: answered by the body deadline, not the request timeout.
        std::thread::spawn(move || {
            send(
                &addr,
                &head("POST", &path, "application/json", 100),
                b"{\"plaintex",
                false,
            )
        })
    };
    let (st, v, took) = tokio::task::spawn_blocking(move || stalled.join().unwrap())
        .await
        .unwrap();
    assert_eq!((st, code_of(&v)), (408, "RequestTimeout"), "{v}");
    assert!(took < Duration::from_secs(4), "{took:?}");

    // A body that stops short of its declared length.
    let (a, p) = (addr.clone(), path.clone());
    let (st, v, _) = tokio::task::spawn_blocking(move || {
        send(
            &a,
            &head("POST", &p, "application/json", 100),
            b"{\"plaintext\"",
            true,
        )
    })
    .await
    .unwrap();
    assert_eq!((st, code_of(&v)), (408, "RequestTimeout"), "{v}");

    // Declared over the limit: refused at once, without waiting for (or reading) a byte of it.
    let (a, p) = (addr.clone(), path.clone());
    let (st, v, took) = tokio::task::spawn_blocking(move || {
        send(
            &a,
            &head("POST", &p, "application/json", 5 * 1024 * 1024),
            b"",
            false,
        )
    })
    .await
    .unwrap();
    assert_eq!((st, code_of(&v)), (413, "PayloadTooLarge"), "{v}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Each refusal is on the record, under the caller who made it.
    let refused: Vec<String> = common::audit_records(&s.addr, &format!("key_id={id}"))
        .await
        .iter()
        .filter_map(|r| r["error_code"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        refused,
        ["RequestTimeout", "RequestTimeout", "PayloadTooLarge"],
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_json_is_read_refusals_quote_little_and_batch_items_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let id = key(&s).await;
    let path = format!("/v1/keys/{id}/encrypt");
    let body = br#"{"plaintext": "aGk="}"#;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (a, p, h) = (
            s.addr.clone(),
            path.clone(),
            head("POST", &path, content_type, body.len()),
        );
        let _ = p;
        let (st, v, _) = tokio::task::spawn_blocking(move || send(&a, &h, body, false))
            .await
            .unwrap();
        assert_eq!(
            (st, code_of(&v)),
            (415, "UnsupportedMediaType"),
            "{content_type}: {v}"
        );
    }
    // A cross-site form could also target a key-management endpoint that takes no body fields.
    let h = head("POST", &format!("/v1/keys/{id}/disable"), "text/plain", 2);
    let a = s.addr.clone();
    let (st, v, _) = tokio::task::spawn_blocking(move || send(&a, &h, b"{}", false))
        .await
        .unwrap();
    assert_eq!((st, code_of(&v)), (415, "UnsupportedMediaType"), "{v}");
    let (_, v, _) = raw(&s.addr, "GET", &format!("/v1/keys/{id}"), Some(ROOT), None).await;
    assert_eq!(v["state"], "Enabled", "nothing changed: {v}");
    let h = head("POST", &path, "Application/JSON; charset=utf-8", body.len());
    let a = s.addr.clone();
    let (st, v, _) = tokio::task::spawn_blocking(move || send(&a, &h, body, false))
        .await
        .unwrap();
    assert_eq!(st, 200, "JSON with parameters is JSON: {v}");

    // A 900 KB value comes back as 64 characters at most.
    let huge = "A".repeat(900_000);
    let (st, v, _) = raw(
        &s.addr,
        "POST",
        "/v1/keys",
        Some(ROOT),
        Some(serde_json::to_vec(&json!({"spec": huge})).unwrap()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (400, "ValidationError"));
    let message = v["error"]["message"].as_str().unwrap();
    // At most 64 characters of the input, beside the names the refusal lists.
    assert!(
        message.len() < 400 && !message.contains(&"A".repeat(65)),
        "{} bytes: {}",
        message.len(),
        &message[..400.min(message.len())]
    );
    assert!(
        message.contains(&"A".repeat(64)) && !message.contains(&"A".repeat(65)),
        "{message}"
    );

    // One item's bad base64 fails that item alone.
    let (st, v, _) = raw(
        &s.addr,
        "POST",
        &path,
        Some(ROOT),
        Some(br#"{"items": [{"plaintext": "aGk="}, {"plaintext": "not base64!"}, {"plaintext": "aGk=", "colour": 1}, {"plaintext": "b2s="}]}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert!(items[0]["ciphertext"].is_string(), "{v}");
    assert_eq!(items[1]["error"]["code"], "ValidationError", "{v}");
    assert!(
        items[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("items[1]"),
        "{v}"
    );
    assert!(
        !items[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not base64"),
        "{v}"
    );
    assert_eq!(items[2]["error"]["code"], "ValidationError", "{v}");
    assert!(items[3]["ciphertext"].is_string(), "{v}");
    let ok = items[0]["ciphertext"].as_str().unwrap();
    let (st, v, _) = raw(
        &s.addr,
        "POST",
        "/v1/decrypt",
        Some(ROOT),
        Some(
            serde_json::to_vec(&json!({"items": [{"ciphertext": ok}, {"ciphertext": "%%%"}]}))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"][0]["plaintext"], "aGk=", "{v}");
    assert_eq!(v["items"][1]["error"]["code"], "ValidationError", "{v}");
    // Still a whole-body refusal: not an object, or fields beside the items.
    let (st, _, _) = raw(
        &s.addr,
        "POST",
        &path,
        Some(ROOT),
        Some(br#"{"items": [{"plaintext": "!"}], "context": {}}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 400);
}

/// A refusal says what would have been accepted: an unknown version action lists the actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_version_action_names_the_actions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let k = key(&s).await;
    let (st, v, _) = raw(
        &s.addr,
        "POST",
        &format!("/v1/keys/{k}/versions/1/frobnicate"),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (404, "NotFound"), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    for action in ["enable", "disable", "archive", "restore", "destroy"] {
        assert!(message.contains(action), "{message}");
    }
    // A wrong spec or algorithm is refused with the ones that exist; an asymmetric encryption without an
    // algorithm is told which to give.
    let (st, v, _) = raw(
        &s.addr,
        "POST",
        "/v1/keys",
        Some(ROOT),
        Some(br#"{"spec": "AES256"}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("one of:") && message.contains("AES_256"),
        "{message}"
    );
    let (_, rsa, _) = raw(
        &s.addr,
        "POST",
        "/v1/keys",
        Some(ROOT),
        Some(br#"{"spec": "RSA_2048", "usage": "ENCRYPT_DECRYPT"}"#.to_vec()),
    )
    .await;
    let (st, v, _) = raw(
        &s.addr,
        "POST",
        &format!("/v1/keys/{}/encrypt", rsa["key_id"].as_str().unwrap()),
        Some(ROOT),
        Some(br#"{"plaintext": "aGk="}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RSAES_OAEP_SHA_256"),
        "{v}"
    );
}
