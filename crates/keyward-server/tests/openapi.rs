//! The OpenAPI document served at /v1/openapi.json covers every route of the server, and names each action.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_server::authz::Action;
use keyward_server::handlers::sys::OPENAPI;

const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/sys/status"),
    ("post", "/v1/sys/init"),
    ("post", "/v1/sys/unseal"),
    ("post", "/v1/sys/seal"),
    ("post", "/v1/sys/generate-root"),
    ("post", "/v1/sys/rotate-root"),
    ("post", "/v1/sys/backup"),
    ("post", "/v1/sys/restore"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("get", "/v1/keys/{key}"),
    ("patch", "/v1/keys/{key}"),
    ("post", "/v1/keys/{key}/enable"),
    ("post", "/v1/keys/{key}/disable"),
    ("post", "/v1/keys/{key}/rotate"),
    ("get", "/v1/keys/{key}/versions"),
    ("post", "/v1/keys/{key}/versions/{n}/{action}"),
    ("post", "/v1/keys/{key}/primary"),
    ("post", "/v1/keys/{key}/schedule-deletion"),
    ("post", "/v1/keys/{key}/cancel-deletion"),
    ("get", "/v1/keys/{key}/public-key"),
    ("get", "/v1/keys/{key}/import-parameters"),
    ("post", "/v1/keys/{key}/import"),
    ("post", "/v1/keys/{key}/delete-imported-material"),
    ("post", "/v1/keys/{key}/export"),
    ("get", "/v1/aliases"),
    ("put", "/v1/aliases/{name}"),
    ("delete", "/v1/aliases/{name}"),
    ("post", "/v1/keys/{key}/encrypt"),
    ("post", "/v1/decrypt"),
    ("post", "/v1/keys/{key}/decrypt"),
    ("post", "/v1/keys/{key}/reencrypt"),
    ("post", "/v1/keys/{key}/data-key"),
    ("post", "/v1/keys/{key}/data-key-pair"),
    ("post", "/v1/keys/{key}/sign"),
    ("post", "/v1/keys/{key}/verify"),
    ("post", "/v1/keys/{key}/mac"),
    ("post", "/v1/keys/{key}/verify-mac"),
    ("post", "/v1/keys/{key}/derive"),
    ("post", "/v1/keys/{key}/agree"),
    ("post", "/v1/keys/{key}/decapsulate"),
    ("post", "/v1/keys/{key}/protect"),
    ("post", "/v1/keys/{key}/unprotect"),
    ("post", "/v1/keys/{key}/blind-index"),
    ("post", "/v1/random"),
    ("post", "/v1/keys/{key}/csr"),
    ("post", "/v1/keys/{key}/certificate"),
    ("post", "/v1/identities"),
    ("get", "/v1/identities"),
    ("get", "/v1/identities/{name}"),
    ("patch", "/v1/identities/{name}"),
    ("delete", "/v1/identities/{name}"),
    ("post", "/v1/identities/{name}/tokens"),
    ("get", "/v1/identities/{name}/tokens"),
    ("post", "/v1/identities/{name}/access-keys"),
    ("get", "/v1/identities/{name}/access-keys"),
    (
        "delete",
        "/v1/identities/{name}/access-keys/{access_key_id}",
    ),
    ("delete", "/v1/tokens/{token_id}"),
    ("post", "/v1/identities/{name}/mfa"),
    ("post", "/v1/auth/login"),
    ("get", "/v1/auth/self"),
    ("post", "/v1/auth/session"),
    ("post", "/v1/auth/logout"),
    ("get", "/v1/sys/nodes"),
    ("get", "/v1/sys/activity"),
    ("post", "/v1/auth/jwt/login"),
    ("get", "/v1/auth/methods"),
    ("get", "/v1/auth/jwt/issuers"),
    ("put", "/v1/auth/jwt/issuers/{name}"),
    ("get", "/v1/auth/jwt/issuers/{name}"),
    ("delete", "/v1/auth/jwt/issuers/{name}"),
    ("post", "/v1/auth/ldap/login"),
    ("put", "/v1/auth/ldap/config"),
    ("get", "/v1/auth/ldap/config"),
    ("delete", "/v1/auth/ldap/config"),
    ("get", "/v1/policies"),
    ("put", "/v1/policies/{name}"),
    ("get", "/v1/policies/{name}"),
    ("delete", "/v1/policies/{name}"),
    ("get", "/v1/approvals"),
    ("get", "/v1/approvals/{id}"),
    ("post", "/v1/approvals/{id}/approve"),
    ("post", "/v1/approvals/{id}/reject"),
    ("get", "/v1/audit"),
    ("get", "/v1/audit/verify"),
    ("post", "/v1/audit/verify"),
    ("get", "/v1/audit/checkpoint"),
    ("post", "/v1/audit/prune"),
    ("post", "/v1/audit/verify-archive"),
    ("get", "/v1/reports/compliance"),
];

#[test]
fn every_route_is_documented_with_a_known_action() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in openapi.json");
        for action in op["x-keyward-action"].as_str().unwrap().split(" | ") {
            assert!(
                action == "kms:OpenApi" || Action::parse(action).is_some(),
                "{path}: unknown action {action}"
            );
        }
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "openapi.json documents routes the server does not have"
    );
}

/// `(METHOD, path)` for every endpoint a Markdown text names (`GET /v1/keys/{key}`), path parameters blanked.
fn endpoints_named_in(text: &str) -> std::collections::BTreeSet<(String, Vec<String>)> {
    let mut out = std::collections::BTreeSet::new();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let needle = format!("{method} /");
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            let before = rest[..at].chars().last();
            let tail = &rest[at + method.len() + 1..];
            rest = &rest[at + needle.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric()) {
                continue;
            }
            let path: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/_{}|.-".contains(*c))
                .collect();
            out.insert((method.to_string(), segments(&path)));
        }
    }
    out
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                "{}".to_string()
            } else {
                s.to_string()
            }
        })
        .collect()
}

/// The repository's API reference and the served OpenAPI document name the same endpoints: a route added to
/// one and not the other fails here.
#[test]
fn docs_api_md_and_the_openapi_document_name_the_same_endpoints() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md"))
        .expect("docs/API.md");
    let documented = endpoints_named_in(&text);
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let mut served = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            served.insert((method.to_uppercase(), segments(path)));
        }
    }
    // A literal segment in the text (`.../versions/{n}/destroy`) is an instance of a parameter in the document.
    let covers = |(m, p): &(String, Vec<String>), (dm, dp): &(String, Vec<String>)| {
        m == dm && p.len() == dp.len() && p.iter().zip(dp).all(|(a, b)| a == b || a == "{}")
    };
    for d in &documented {
        assert!(
            served.iter().any(|s| covers(s, d)),
            "docs/API.md names {d:?}, which openapi.json lacks"
        );
    }
    for s in &served {
        assert!(
            documented.iter().any(|d| covers(s, d)),
            "openapi.json has {s:?}, which docs/API.md does not name"
        );
    }
}
