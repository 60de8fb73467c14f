//! The real `keyward` binary on the PostgreSQL store: keys, ciphertexts, the audit chain and the sealed
//! state live in the database and survive restarts of the node.
//!
//! The server is `KEYWARD_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`); these tests
//! fail, never skip, when it cannot be reached. Each test works in a schema of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{raw, Server, ROOT};
use keyward_api::*;

fn base_url() -> String {
    std::env::var("KEYWARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own, dropped when the test ends.
struct Scratch(String);

/// The synchronous driver may not block an async worker thread.
fn sql<T>(f: impl FnOnce(&mut postgres::Client) -> T) -> T {
    let run = || {
        let mut c = postgres::Client::connect(&base_url(), postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed for these tests: {e}",
                base_url()
            )
        });
        f(&mut c)
    };
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(run),
        Err(_) => run(),
    }
}

impl Scratch {
    fn new() -> Scratch {
        let name = format!("kwcli_{}_{}", std::process::id(), free_suffix());
        sql(|c| c.batch_execute(&format!("CREATE SCHEMA {name}")).unwrap());
        Scratch(name)
    }
    /// The store URL a node is given: the schema goes in the connection's search path.
    fn url(&self) -> String {
        let sep = if base_url().contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", base_url(), self.0)
    }
    fn rows(&self, table: &str) -> i64 {
        sql(|c| {
            c.query_one(&format!("SELECT count(*) FROM {}.{table}", self.0), &[])
                .unwrap()
                .get(0)
        })
    }
}

fn free_suffix() -> u16 {
    common::free_port()
}

impl Drop for Scratch {
    fn drop(&mut self) {
        sql(|c| {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgres_keeps_keys_ciphertexts_and_audit_across_restarts() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let url = scratch.url();
    let env = [("KEYWARD_DEV_ROOT_TOKEN", ROOT)];
    let mut server = Server::start(dir.path(), &["--dev", "--store", &url], &env);
    let c = server.root();

    let sym = c
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.put_alias("alias/pg-orders", &sym.key_id).await.unwrap();
    let ct1 = c
        .encrypt("alias/pg-orders", b"order #1", None)
        .await
        .unwrap();
    c.key_action(&sym.key_id, "rotate").await.unwrap();
    let ct2 = c
        .encrypt("alias/pg-orders", b"order #2", None)
        .await
        .unwrap();
    assert_eq!((ct1.version, ct2.version), (1, 2));
    let signing = c
        .create_key(&CreateKeyRequest {
            spec: "ECC_NIST_P256".into(),
            usage: Some("SIGN_VERIFY".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // The records are in PostgreSQL, not in the data directory.
    assert_eq!(scratch.rows("keyward_keys"), 2);
    assert_eq!(scratch.rows("keyward_versions"), 3);
    assert!(scratch.rows("keyward_audit") > 5);
    assert!(!dir.path().join("keyward.db").exists());

    server.restart(&env);
    let c = server.root();
    for (ct, plain, version) in [(&ct1, b"order #1", 1), (&ct2, b"order #2", 2)] {
        let d = c.decrypt(None, &ct.ciphertext.0, None, None).await.unwrap();
        assert_eq!(d.plaintext.expose(), plain);
        assert_eq!(d.version, version);
    }
    assert_eq!(
        c.describe_key("alias/pg-orders").await.unwrap().key_id,
        sym.key_id
    );
    c.key_action(&signing.key_id, "disable").await.unwrap();
    assert_eq!(
        c.describe_key(&signing.key_id).await.unwrap().state,
        "Disabled"
    );

    // One unbroken chain over both runs of the node.
    let (status, verify, _) = raw(&server.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(status, 200, "{verify}");
    assert_eq!(verify["valid"], true, "{verify}");
    // Every stored record was verified; the verification's own record follows them.
    let verified = verify["records"].as_i64().unwrap();
    assert!(verified > 10);
    assert!((verified..=verified + 1).contains(&scratch.rows("keyward_audit")));
    assert_eq!(c.health().await.unwrap().status, "ok");

    // A second node on the same database is refused with a clear message, and the first keeps serving.
    let other = tempfile::tempdir().unwrap();
    let (ok, text) = start_and_fail(other.path(), &url);
    assert!(!ok);
    assert!(text.contains("another Keyward node"), "{text}");
    assert_eq!(c.describe_key(&sym.key_id).await.unwrap().state, "Enabled");
}

/// Runs `keyward serve` expecting it to exit at start; returns success and everything it printed.
fn start_and_fail(data_dir: &std::path::Path, store: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "serve",
            "--dev",
            "--listen",
            &format!("127.0.0.1:{}", common::free_port()),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--store", store])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_bad_store_url_is_refused_at_start_without_echoing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = start_and_fail(
        dir.path(),
        "postgres://keyward:s3cret-pw@127.0.0.1:1/none?connect_timeout=2",
    );
    assert!(!ok);
    assert!(text.contains("postgres"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}
