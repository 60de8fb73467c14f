//! The policy repository fails closed: a policy an identity holds that cannot be had refuses the request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use keyward_core::cluster::Freshness;
use keyward_core::ErrorCode;
use keyward_iam::policies::{Policies, NAMESPACE};
use keyward_iam::policy::PolicyDoc;
use keyward_store::conformance::FailingStore;
use keyward_store::{transact, Store, Tx};
use keyward_store_sqlite::SqliteStore;

fn doc(json: &str) -> PolicyDoc {
    serde_json::from_str(json).unwrap()
}

const DENY: &str = r#"{"statements": [{"effect": "deny", "actions": ["kms:Encrypt"], "resources": ["key/D179D8A1-B7DF-4001-BBE8-6668FA101363"]}]}"#;

fn setup() -> (Arc<FailingStore>, Policies) {
    let store = Arc::new(FailingStore::new(Arc::new(
        SqliteStore::in_memory().unwrap(),
    )));
    let policies = Policies::new(store.clone(), Arc::new(Freshness::new(false)));
    (store, policies)
}

#[test]
fn a_policy_that_cannot_be_read_refuses_instead_of_granting_by_role() {
    let (store, policies) = setup();
    let stored = policies.put("deny-encrypt", &doc(DENY)).unwrap();
    assert_eq!(
        stored.statements[0].resources,
        vec!["key/d179d8a1-b7df-4001-bbe8-6668fa101363".to_string()],
        "stored canonically"
    );
    let names = vec!["deny-encrypt".to_string()];
    assert_eq!(policies.load(&names).unwrap().len(), 1);

    // A read failure once the cache no longer holds the policy (another node changed it): refused, and the
    // failure is not remembered as "no policy".
    policies.forget("deny-encrypt");
    store.fail_reads_of(Some(NAMESPACE));
    for _ in 0..2 {
        let e = policies.load(&names).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{}", e.message());
        assert!(e.message().contains("deny-encrypt"), "{}", e.message());
    }
    store.fail_reads_of(None);
    assert_eq!(policies.load(&names).unwrap().len(), 1, "readable again");
}

#[test]
fn a_missing_or_corrupt_policy_refuses() {
    let (store, policies) = setup();
    let e = policies.load(&["nowhere".to_string()]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{}", e.message());

    // A stored document that no longer parses, or no longer compiles (written by an older version).
    for (name, raw) in [
        ("garbled", &b"{not json"[..]),
        (
            "stale",
            br#"{"statements": [{"effect": "deny", "actions": ["kms:NoSuchAction"], "resources": ["*"]}]}"#,
        ),
    ] {
        transact(store.as_ref() as &dyn Store, |tx: &mut dyn Tx| {
            tx.put_meta(NAMESPACE, name, raw)
        })
        .unwrap();
        let e = policies.load(&[name.to_string()]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{name}: {}", e.message());
    }
}

#[test]
fn policy_names_are_unique_without_regard_to_case_and_dot_segments_are_refused() {
    let (_, policies) = setup();
    policies.put("Deny-Encrypt", &doc(DENY)).unwrap();
    let e = policies.put("deny-encrypt", &doc(DENY)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists, "{}", e.message());
    policies.put("Deny-Encrypt", &doc(DENY)).unwrap();
    for bad in [".", ".."] {
        let e = policies.put(bad, &doc(DENY)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ValidationError, "{bad}");
    }
    let e = policies
        .put(
            "bad-resource",
            &doc(r#"{"statements": [{"effect": "deny", "actions": ["kms:*"], "resources": ["key/not-an-id"]}]}"#),
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ValidationError, "{}", e.message());
    assert_eq!(policies.names().unwrap(), vec!["Deny-Encrypt".to_string()]);
}
