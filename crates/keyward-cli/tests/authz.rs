//! Authorization fails closed, end to end through the real binary: policies name keys in any spelling,
//! grants name only policies that exist, names cannot pass for reserved ones, approvals show each caller
//! only what it may see, and a request held for approval is valid before anyone is asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{code_of, raw, Server, ROOT};
use serde_json::{json, Value};

async fn call(s: &Server, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let body = (!body.is_null()).then(|| serde_json::to_vec(&body).unwrap());
    let (st, v, _) = raw(&s.addr, method, path, Some(token), body).await;
    (st, v)
}

async fn identity(s: &Server, name: &str, roles: &[&str], policies: &[&str]) -> String {
    let (st, v) = call(
        s,
        "POST",
        "/v1/identities",
        ROOT,
        json!({"name": name, "kind": "service", "roles": roles, "policies": policies}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = call(
        s,
        "POST",
        &format!("/v1/identities/{name}/tokens"),
        ROOT,
        json!({}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// One request over a plain socket, its path sent byte for byte: (status, body).
fn http_as_written(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let host = addr.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(host).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ROOT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

async fn key(s: &Server, body: Value) -> String {
    let (st, v) = call(s, "POST", "/v1/keys", ROOT, body).await;
    assert_eq!(st, 201, "{v}");
    v["key_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_naming_a_key_in_any_spelling_holds() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let id = key(&s, json!({"spec": "AES_256"})).await;
    let upper = id.to_uppercase();
    let simple = id.replace('-', "");
    let spellings = [
        upper.clone(),
        simple.clone(),
        simple.to_uppercase(),
        format!("{{{id}}}"),
        format!("urn:uuid:{upper}"),
    ];
    for (i, spelling) in spellings.iter().enumerate() {
        let name = format!("deny-{i}");
        let (st, v) = call(
            &s,
            "PUT",
            &format!("/v1/policies/{name}"),
            ROOT,
            json!({"statements": [{"effect": "deny", "actions": ["kms:Encrypt"], "resources": [format!("key/{spelling}")]}]}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        // Stored, and shown, as the id every response uses.
        assert_eq!(
            v["statements"][0]["resources"][0],
            format!("key/{id}"),
            "{spelling}"
        );
        let (_, v) = call(
            &s,
            "GET",
            &format!("/v1/policies/{name}"),
            ROOT,
            Value::Null,
        )
        .await;
        assert_eq!(v["statements"][0]["resources"][0], format!("key/{id}"));
        let user = identity(&s, &format!("user-{i}"), &["key-user"], &[&name]).await;
        for named in [id.as_str(), upper.as_str()] {
            let (st, v) = call(
                &s,
                "POST",
                &format!("/v1/keys/{named}/encrypt"),
                &user,
                json!({"plaintext": "aGk="}),
            )
            .await;
            assert_eq!(
                (st, code_of(&v)),
                (403, "AccessDenied"),
                "{spelling} via {named}: {v}"
            );
        }
    }
    // What names no key is refused when stored, not ignored when matched.
    for bad in [
        "key/D179-nonsense",
        "key/D179*",
        "alias/has space",
        "keys/x",
    ] {
        let (st, v) = call(
            &s,
            "PUT",
            "/v1/policies/bad",
            ROOT,
            json!({"statements": [{"effect": "deny", "actions": ["kms:*"], "resources": [bad]}]}),
        )
        .await;
        assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{bad}: {v}");
    }
    let (st, _) = call(&s, "GET", "/v1/policies/bad", ROOT, Value::Null).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_naming_a_quorum_key_in_another_spelling_needs_its_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let id = key(&s, json!({"spec": "AES_256", "quorum": {"approvals": 1}})).await;
    let (st, v) = call(&s, "PUT", "/v1/aliases/second", ROOT, json!({"key_id": id})).await;
    assert!(st == 200 || st == 201, "{v}");
    for resource in [
        format!("key/{}", id.to_uppercase()),
        "alias/second".to_string(),
    ] {
        let (st, v) = call(
            &s,
            "PUT",
            "/v1/policies/grant",
            ROOT,
            json!({"statements": [{"effect": "allow", "actions": ["kms:Encrypt"], "resources": [resource]}]}),
        )
        .await;
        assert_eq!(st, 202, "{resource} must wait for approval: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_name_existing_policies_and_attached_policies_are_not_deleted_silently() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let doc =
        json!({"statements": [{"effect": "deny", "actions": ["kms:Decrypt"], "resources": ["*"]}]});
    let (st, _) = call(&s, "PUT", "/v1/policies/no-decrypt", ROOT, doc.clone()).await;
    assert_eq!(st, 200);

    // A misspelt policy is refused by name, at creation and at update, and nothing is stored.
    let (st, v) = call(
        &s,
        "POST",
        "/v1/identities",
        ROOT,
        json!({"name": "app", "kind": "service", "roles": ["key-user"], "policies": ["no-decrpyt"]}),
    )
    .await;
    assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-decrpyt"),
        "{v}"
    );
    let (st, _) = call(&s, "GET", "/v1/identities/app", ROOT, Value::Null).await;
    assert_eq!(st, 404);
    let token = identity(&s, "app", &["key-user"], &["no-decrypt"]).await;
    let (st, v) = call(
        &s,
        "PATCH",
        "/v1/identities/app",
        ROOT,
        json!({"policies": ["no-decrypt", "typo"]}),
    )
    .await;
    assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{v}");
    let (_, v) = call(&s, "GET", "/v1/identities/app", ROOT, Value::Null).await;
    assert_eq!(v["policies"], json!(["no-decrypt"]));

    // Deleting it while attached is refused, naming the holder; a missing policy is 404.
    let (st, v) = call(&s, "DELETE", "/v1/policies/no-decrypt", ROOT, Value::Null).await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("app"),
        "{v}"
    );
    let (st, v) = call(&s, "DELETE", "/v1/policies/never-was", ROOT, Value::Null).await;
    assert_eq!((st, code_of(&v)), (404, "NotFound"), "{v}");

    // With ?detach=true the identity and its live token lose it in the same change.
    let (st, v) = call(
        &s,
        "DELETE",
        "/v1/policies/no-decrypt?detach=true",
        ROOT,
        Value::Null,
    )
    .await;
    assert_eq!(st, 204, "{v}");
    let (_, v) = call(&s, "GET", "/v1/identities/app", ROOT, Value::Null).await;
    assert_eq!(v["policies"], json!([]));
    let (st, v) = call(&s, "GET", "/v1/auth/self", &token, Value::Null).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["policies"], json!([]), "{v}");
    let id = key(&s, json!({"spec": "AES_256"})).await;
    let (st, v) = call(
        &s,
        "POST",
        &format!("/v1/keys/{id}/encrypt"),
        &token,
        json!({"plaintext": "aGk="}),
    )
    .await;
    assert_eq!(st, 200, "the token still works, by its role: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_cannot_be_reached_or_pass_for_reserved_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    for name in [".", "..", "ROOT", "Root", "anonymous", "System"] {
        let (st, v) = call(
            &s,
            "POST",
            "/v1/identities",
            ROOT,
            json!({"name": name, "kind": "service"}),
        )
        .await;
        assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{name}: {v}");
    }
    let doc = json!({"statements": [{"effect": "allow", "actions": ["kms:Encrypt"], "resources": ["*"]}]});
    for name in ["%2E%2E", "%2E", "..", "."] {
        // Sent as written (an HTTP library would resolve the dot segments away before sending).
        let body = serde_json::to_vec(&doc).unwrap();
        let (status, answer) =
            http_as_written(&s.addr, "PUT", &format!("/v1/policies/{name}"), &body);
        assert!(
            status == 400 && answer.contains("ValidationError"),
            "{name}: {status} {answer}"
        );
    }
    identity(&s, "Alice", &["key-user"], &[]).await;
    let (st, v) = call(
        &s,
        "POST",
        "/v1/identities",
        ROOT,
        json!({"name": "alice", "kind": "service"}),
    )
    .await;
    assert_eq!((st, code_of(&v)), (409, "AlreadyExists"), "{v}");
    let (st, _) = call(&s, "PUT", "/v1/policies/Ops", ROOT, doc.clone()).await;
    assert_eq!(st, 200);
    let (st, v) = call(&s, "PUT", "/v1/policies/OPS", ROOT, doc).await;
    assert_eq!((st, code_of(&v)), (409, "AlreadyExists"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_show_each_caller_only_what_it_may_see() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let requester = identity(&s, "requester", &["key-admin"], &[]).await;
    let approver = identity(&s, "approver", &["key-admin"], &[]).await;
    let user = identity(&s, "user", &["key-user"], &[]).await;
    let auditor = identity(&s, "auditor", &["auditor"], &[]).await;
    let id = key(
        &s,
        json!({"spec": "AES_256", "exportable": true, "quorum": {"approvals": 1}}),
    )
    .await;
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .unwrap();
    let pem = String::from_utf8(out.stdout).unwrap();
    let key_file = dir.path().join("recipient.pem");
    std::fs::write(&key_file, pem).unwrap();
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key_file)
        .output()
        .unwrap()
        .stdout;
    use base64::Engine as _;
    let spki = base64::engine::general_purpose::STANDARD.encode(der);
    let (st, v) = call(
        &s,
        "POST",
        &format!("/v1/keys/{id}/export"),
        &requester,
        json!({"wrapping_public_key_der": spki}),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let apr = v["approval_id"].as_str().unwrap().to_string();
    let (st, v) = call(
        &s,
        "POST",
        &format!("/v1/approvals/{apr}/approve"),
        &approver,
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v.get("result").is_none(),
        "the approver never receives the wrapped material: {v}"
    );

    let listed = |v: &Value| v["approvals"].as_array().unwrap().clone();
    // The requester sees the wrapped material; the approver the request without it.
    let (_, v) = call(
        &s,
        "GET",
        &format!("/v1/approvals/{apr}"),
        &requester,
        Value::Null,
    )
    .await;
    assert!(v["result"]["wrapped_key_material"].is_string(), "{v}");
    let (_, v) = call(&s, "GET", "/v1/approvals", &approver, Value::Null).await;
    assert_eq!(listed(&v).len(), 1);
    assert!(listed(&v)[0].get("result").is_none(), "{v}");
    // An auditor sees who asked what and how it ended, without payloads.
    let (st, v) = call(
        &s,
        "GET",
        &format!("/v1/approvals/{apr}"),
        &auditor,
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "executed");
    assert_eq!(v["requested_by"], "requester");
    for payload in ["result", "wrapping_public_key_der", "document"] {
        assert!(v.get(payload).is_none(), "{payload}: {v}");
    }
    // A key-user neither requested it nor may export: nothing.
    let (_, v) = call(&s, "GET", "/v1/approvals", &user, Value::Null).await;
    assert_eq!(listed(&v).len(), 0, "{v}");
    let (st, v) = call(
        &s,
        "GET",
        &format!("/v1/approvals/{apr}"),
        &user,
        Value::Null,
    )
    .await;
    assert_eq!((st, code_of(&v)), (403, "AccessDenied"), "{v}");

    // A policy change held for approval: its document is the admins' to read, not the auditor's.
    let admin2 = identity(&s, "admin2", &["admin"], &[]).await;
    let (st, v) = call(
        &s,
        "PUT",
        "/v1/policies/p",
        &admin2,
        json!({"statements": [{"effect": "allow", "actions": ["kms:Encrypt"], "resources": [format!("key/{id}")]}]}),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let (_, v) = call(
        &s,
        "GET",
        "/v1/approvals?status=pending",
        &auditor,
        Value::Null,
    )
    .await;
    assert_eq!(listed(&v).len(), 1, "{v}");
    assert!(listed(&v)[0].get("document").is_none(), "{v}");
    let (_, v) = call(&s, "GET", "/v1/approvals?status=pending", ROOT, Value::Null).await;
    assert!(listed(&v)[0]["document"].is_object(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_for_approval_is_validated_before_approval_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path());
    let id = key(
        &s,
        json!({"spec": "AES_256", "exportable": true, "quorum": {"approvals": 1}}),
    )
    .await;
    let cases = [
        (
            format!("/v1/keys/{id}/export"),
            json!({"wrapping_public_key_der": "bm90IGEga2V5"}),
            400,
        ),
        (
            format!("/v1/keys/{id}/versions/7/destroy"),
            Value::Null,
            404,
        ),
        (
            format!("/v1/keys/{id}/versions/1/destroy"),
            Value::Null,
            409,
        ),
        (
            format!("/v1/keys/{id}/schedule-deletion"),
            json!({"pending_days": 3}),
            400,
        ),
    ];
    for (path, body, status) in cases {
        let (st, v) = call(&s, "POST", &path, ROOT, body).await;
        assert_eq!(st, status, "{path}: {v}");
    }
    let (st, v) = call(
        &s,
        "POST",
        &format!("/v1/keys/{id}/disable"),
        ROOT,
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(
        &s,
        "POST",
        &format!("/v1/keys/{id}/export"),
        ROOT,
        json!({"wrapping_public_key_der": "bm90IGEga2V5"}),
    )
    .await;
    assert_eq!((st, code_of(&v)), (409, "KeyDisabled"), "{v}");
    let (_, v) = call(&s, "GET", "/v1/approvals", ROOT, Value::Null).await;
    assert_eq!(v["approvals"], json!([]), "no approval was opened: {v}");
}
