//! The real `keyward` binary on the PostgreSQL store: keys, ciphertexts, the audit chain and the sealed
//! state live in the database and survive restarts of the node.
//!
//! The server is `KEYWARD_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`); these tests
//! fail, never skip, when it cannot be reached. Each test works in a schema of its own; the one that restarts
//! PostgreSQL starts a private server for it (`scripts/throwaway-postgres`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{code_of, raw, Server, ROOT};
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
    let verify = chain_verifies(&server.addr, ROOT).await;
    // Every stored record was verified; the verification's own record follows them.
    let verified = verify["records"].as_i64().unwrap();
    assert!(verified > 10);
    assert!((verified..=verified + 1).contains(&scratch.rows("keyward_audit")));
    assert_eq!(c.health().await.unwrap().status, "ok");
}

/// Runs `keyward serve` expecting it to exit at start; returns success and everything it printed.
/// The node's `GET /v1/audit/verify` finds the chain intact; returns the verification.
async fn chain_verifies(addr: &str, token: &str) -> serde_json::Value {
    let (status, verify, _) = raw(addr, "GET", "/v1/audit/verify", Some(token), None).await;
    assert_eq!(status, 200, "{verify}");
    assert_eq!(verify["valid"], true, "{verify}");
    verify
}

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
    // It names the server it could not reach, never the password.
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

/// Three nodes on one database, initialised once and each unsealed with the shares.
struct Cluster {
    nodes: Vec<Server>,
    _dirs: Vec<tempfile::TempDir>,
    root: String,
    shares: Vec<String>,
}

impl Cluster {
    async fn start(url: &str) -> Cluster {
        Self::configured(url, "").await
    }

    /// Three nodes, each with `config` as its configuration file.
    async fn configured(url: &str, config: &str) -> Cluster {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Server> = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let store = format!("{url}&application_name=kwcli_node_{i}");
                let file = d.path().join("keyward.toml");
                std::fs::write(&file, config).unwrap();
                let file = file.to_str().unwrap();
                Server::start(
                    &d.path().join("data"),
                    &["--store", &store, "--config", file],
                    &[],
                )
            })
            .collect();
        let init = nodes[0].client(None).init(3, 2).await.unwrap();
        for n in &nodes {
            // The other nodes learn of the init through the database, then take the shares like the first.
            wait_for(|| async { n.client(None).status().await.unwrap().initialized }).await;
            let c = n.client(None);
            c.unseal(&init.shares[0]).await.unwrap();
            assert!(!c.unseal(&init.shares[2]).await.unwrap().sealed);
        }
        Cluster {
            nodes,
            _dirs: dirs,
            root: init.root_token.to_string(),
            shares: init.shares.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn client(&self, i: usize) -> keyward_client::Client {
        self.nodes[i].client(Some(&self.root))
    }
    fn all(&self) -> keyward_client::Client {
        let addrs: Vec<&str> = self.nodes.iter().map(|n| n.addr.as_str()).collect();
        keyward_client::Client::new(&addrs.join(","), Some(self.root.clone())).unwrap()
    }
}

/// Polls until `f` holds, for at most ten seconds.
async fn wait_for<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long after a change committed on one node the others still answered as before it. The bound the
/// cluster guarantees is one second (the trust window of the change feed); this measures it.
async fn seen_within<F, Fut>(f: F) -> std::time::Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    wait_for(f).await;
    started.elapsed()
}

fn code(e: &keyward_client::Error) -> &str {
    match e {
        keyward_client::Error::Api { code, .. } => code,
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_database_and_see_each_others_changes_within_a_second() {
    let scratch = Scratch::new();
    let cluster = Cluster::start(&scratch.url()).await;
    let (a, b, c) = (cluster.client(0), cluster.client(1), cluster.client(2));
    let key = a
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    a.put_alias("alias/shared", &key.key_id).await.unwrap();
    // Every node serves the key (and now holds it in its cache).
    let ct = b.encrypt("alias/shared", b"from b", None).await.unwrap();
    assert_eq!(
        c.decrypt(None, &ct.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"from b"
    );
    c.encrypt(&key.key_id, b"warm", None).await.unwrap();

    // Disabled on A: refused by B and C within a second.
    a.key_action(&key.key_id, "disable").await.unwrap();
    for node in [&b, &c] {
        let took = seen_within(|| async {
            matches!(node.encrypt(&key.key_id, b"x", None).await, Err(ref e) if code(e) == "KeyDisabled")
        })
        .await;
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }
    // Enabled and rotated on B: A and C encrypt under the new primary version.
    b.key_action(&key.key_id, "enable").await.unwrap();
    b.key_action(&key.key_id, "rotate").await.unwrap();
    for node in [&a, &c] {
        let took = seen_within(|| async {
            node.encrypt(&key.key_id, b"x", None)
                .await
                .is_ok_and(|e| e.version == 2)
        })
        .await;
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }
    // The alias moved on C: A and B follow it.
    let other = c
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.put_alias("alias/shared", &other.key_id).await.unwrap();
    for node in [&a, &b] {
        let took = seen_within(|| async {
            node.encrypt("alias/shared", b"x", None)
                .await
                .is_ok_and(|e| e.key_id == other.key_id)
        })
        .await;
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }

    // A token minted on A, used (and cached) on C, revoked on B: C refuses it within a second.
    let (status, _, _) = raw(
        &cluster.nodes[0].addr,
        "POST",
        "/v1/identities",
        Some(&cluster.root),
        Some(br#"{"name":"app","kind":"service","roles":["key-user"]}"#.to_vec()),
    )
    .await;
    assert_eq!(status, 201);
    let (status, minted, _) = raw(
        &cluster.nodes[0].addr,
        "POST",
        "/v1/identities/app/tokens",
        Some(&cluster.root),
        Some(b"{}".to_vec()),
    )
    .await;
    assert!(status == 200 || status == 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    let token_id = minted["token_id"].as_str().unwrap().to_string();
    let app_on_c = cluster.nodes[2].client(Some(&token));
    app_on_c.encrypt(&key.key_id, b"ok", None).await.unwrap();
    let (status, _, _) = raw(
        &cluster.nodes[1].addr,
        "DELETE",
        &format!("/v1/tokens/{token_id}"),
        Some(&cluster.root),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let took = seen_within(|| async {
        matches!(app_on_c.encrypt(&key.key_id, b"x", None).await, Err(ref e) if code(e) == "Unauthenticated")
    })
    .await;
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");

    // The identity's role taken away on B: its other token, cached on C, loses it within a second; deleted
    // on A, the identity's token is refused on C within a second.
    let (_, minted, _) = raw(
        &cluster.nodes[0].addr,
        "POST",
        "/v1/identities/app/tokens",
        Some(&cluster.root),
        Some(b"{}".to_vec()),
    )
    .await;
    let app_on_c = cluster.nodes[2].client(Some(minted["token"].as_str().unwrap()));
    app_on_c.encrypt(&key.key_id, b"ok", None).await.unwrap();
    let (status, v, _) = raw(
        &cluster.nodes[1].addr,
        "PATCH",
        "/v1/identities/app",
        Some(&cluster.root),
        Some(br#"{"roles": ["auditor"]}"#.to_vec()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let took = seen_within(|| async {
        matches!(app_on_c.encrypt(&key.key_id, b"x", None).await, Err(ref e) if code(e) == "AccessDenied")
    })
    .await;
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    let (status, _, _) = raw(
        &cluster.nodes[0].addr,
        "DELETE",
        "/v1/identities/app",
        Some(&cluster.root),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let took = seen_within(|| async {
        matches!(app_on_c.list_keys("").await, Err(ref e) if code(e) == "Unauthenticated")
    })
    .await;
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");

    // A root rotation on C: A and B keep decrypting old ciphertexts and encrypting new ones.
    c.rotate_root().await.unwrap();
    let fresh = b
        .encrypt(&key.key_id, b"after root rotation", None)
        .await
        .unwrap();
    for node in [&a, &b, &c] {
        for (ct, plain) in [
            (&ct.ciphertext.0, &b"from b"[..]),
            (&fresh.ciphertext.0, &b"after root rotation"[..]),
        ] {
            let d = node.decrypt(None, ct, None, None).await.unwrap();
            assert_eq!(d.plaintext.expose(), plain);
        }
    }
    let created_on_a = a
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ct = a
        .encrypt(&created_on_a.key_id, b"new key", None)
        .await
        .unwrap();
    assert_eq!(
        c.decrypt(None, &ct.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"new key"
    );

    // All three nodes wrote one audit chain: no gap, no fork.
    chain_verifies(&cluster.nodes[1].addr, &cluster.root).await;
    let max: i64 = sql(|cl| {
        cl.query_one(
            &format!(
                "SELECT max(seq) - count(*) FROM {}.keyward_audit",
                scratch.0
            ),
            &[],
        )
        .unwrap()
        .get(0)
    });
    assert_eq!(max, 0, "the sequence has a gap");
}

/// A token for a new identity with `roles`, minted on `addr`.
async fn token_on(addr: &str, root: &str, name: &str, roles: &[&str]) -> String {
    let body = serde_json::json!({"name": name, "kind": "service", "roles": roles});
    let (st, v, _) = raw(
        addr,
        "POST",
        "/v1/identities",
        Some(root),
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let path = format!("/v1/identities/{name}/tokens");
    let (st, v, _) = raw(addr, "POST", &path, Some(root), Some(b"{}".to_vec())).await;
    assert!(st == 200 || st == 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_approving_at_once_run_the_operation_once() {
    let scratch = Scratch::new();
    let cluster = Cluster::start(&scratch.url()).await;
    let addr = |i: usize| cluster.nodes[i].addr.clone();
    let mut ops = Vec::new();
    for name in ["ops1", "ops2", "ops3"] {
        ops.push(token_on(&addr(0), &cluster.root, name, &["key-admin"]).await);
    }
    for round in 0..6 {
        let (key, id) =
            common::deletion_awaiting_approval(&cluster.client(0), &addr(0), &ops[0]).await;
        // The other nodes learn of the request through the database; the two approvals leave at once, and
        // the request ends executed, with one approver.
        let (one, two) = (addr(1 + round % 2), addr(2 - round % 2));
        common::approve_at_once(&id, (&one, &ops[1]), (&two, &ops[2])).await;
        let (_, list, _) = raw(&addr(0), "GET", "/v1/approvals", Some(&ops[0]), None).await;
        let ours = list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["approval_id"] == id.as_str())
            .unwrap()
            .clone();
        assert_eq!(ours["status"], "executed", "{ours}");
        assert_eq!(ours["approvals"].as_array().unwrap().len(), 1, "{ours}");
        // The operation ran once: the key's trail holds the request (recorded when made, and again
        // naming its approval once held) and one execution, no failure.
        let (allowed, errors): (i64, i64) = sql(|c| {
            let row = c
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE outcome = 'allow'), \
                                count(*) FILTER (WHERE outcome = 'error') \
                         FROM {}.keyward_audit \
                         WHERE key_id = $1 AND action = 'kms:ScheduleKeyDeletion'",
                        scratch.0
                    ),
                    &[&key],
                )
                .unwrap();
            (row.get(0), row.get(1))
        });
        assert_eq!((allowed, errors), (3, 0), "round {round}");
        let shown = cluster.client(0).describe_key(&key).await.unwrap();
        assert_eq!(shown.state, "PendingDeletion");
    }
    chain_verifies(&addr(2), &cluster.root).await;
}

/// Every node sees an unanswered request expire, and one of them, the leading one, records and stores it:
/// one record, whichever nodes run their rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_expires_once_across_the_cluster() {
    let scratch = Scratch::new();
    let cluster = Cluster::configured(
        &scratch.url(),
        "approval_ttl_seconds = 2\nbackground_interval_seconds = 1\n",
    )
    .await;
    let addr = |i: usize| cluster.nodes[i].addr.clone();
    let ops = token_on(&addr(0), &cluster.root, "ops1", &["key-admin"]).await;
    let (key, id) = common::deletion_awaiting_approval(&cluster.client(0), &addr(0), &ops).await;
    let stored = |id: String, schema: String| {
        sql(move |c| {
            let row = c
                .query_one(
                    &format!(
                        "SELECT convert_from(value, 'UTF8')::jsonb ->> 'status' FROM {schema}.keyward_meta \
                         WHERE ns = 'approval' AND name = $1"
                    ),
                    &[&id],
                )
                .unwrap();
            row.get::<_, String>(0)
        })
    };
    let records = |schema: String| {
        let id = id.clone();
        sql(move |c| {
            let row = c
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {schema}.keyward_audit \
                         WHERE principal = 'system:scheduler' AND record LIKE $1"
                    ),
                    &[&format!("%approval/{id}%")],
                )
                .unwrap();
            row.get::<_, i64>(0)
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stored(id.clone(), scratch.0.clone()) != "expired" {
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never stored as expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Three more rounds on every node.
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    assert_eq!(records(scratch.0.clone()), 1);
    for i in 0..3 {
        let (_, v, _) = raw(
            &addr(i),
            "GET",
            &format!("/v1/approvals/{id}"),
            Some(&ops),
            None,
        )
        .await;
        assert_eq!(v["status"], "expired", "node {i}: {v}");
    }
    assert_eq!(
        cluster.client(1).describe_key(&key).await.unwrap().state,
        "Enabled"
    );
    chain_verifies(&addr(2), &cluster.root).await;
}

/// Pruning on one node while the others append: the chain stays one and whole, every answered request
/// keeps its record, and every node verifies from the same anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_while_other_nodes_append_keeps_the_chain_whole() {
    let scratch = Scratch::new();
    let cluster = Cluster::configured(&scratch.url(), "audit_retention_days = 0\n").await;
    let key = common::aes_key(&cluster.client(0)).await;
    for i in 0..60 {
        cluster
            .client(i % 3)
            .encrypt(&key, b"before", None)
            .await
            .unwrap();
    }
    let verify = |i: usize| {
        let c = cluster.client(i);
        async move {
            let (_, _, body) = c
                .answer(reqwest::Method::GET, "/v1/audit/verify", None)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }
    };
    let before = verify(0).await;
    let through = before["records"].as_u64().unwrap() - 10;
    let load = |node: usize| {
        let (c, key) = (cluster.client(node), key.clone());
        tokio::spawn(async move {
            for _ in 0..80 {
                c.encrypt(&key, b"during", None).await.unwrap();
            }
        })
    };
    let (one, two) = (load(1), load(2));
    let pruned = cluster.client(0).prune_audit(through).await.unwrap();
    one.await.unwrap();
    two.await.unwrap();
    assert_eq!((pruned.pruned, pruned.pruned_through), (through, through));
    let total: i64 = sql(|c| {
        c.query_one(
            &format!("SELECT max(seq) FROM {}.keyward_audit", scratch.0),
            &[],
        )
        .unwrap()
        .get(0)
    });
    for node in 0..3 {
        let v = verify(node).await;
        assert_eq!(
            (&v["valid"], &v["pruned_through"]),
            (&serde_json::json!(true), &serde_json::json!(through)),
            "node {node}: {v}"
        );
        // Every record after the anchor is there (verify checks them in unbroken order; each verification
        // adds its own record after it ran).
        assert!(
            v["records"].as_u64().unwrap() >= total as u64 - through,
            "{v}"
        );
    }
    let during: i64 = sql(|c| {
        c.query_one(
            &format!(
                "SELECT count(*) FROM {}.keyward_audit WHERE action = 'kms:Encrypt' AND seq > $1",
                scratch.0
            ),
            &[&(through as i64)],
        )
        .unwrap()
        .get(0)
    });
    assert!(during >= 160, "{during}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_ends_its_interrupted_claims_and_abandoned_ones() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let url = scratch.url();
    let env = [("KEYWARD_DEV_ROOT_TOKEN", ROOT)];
    let mut server = Server::start(dir.path(), &["--dev", "--store", &url], &env);
    let addr = server.addr.clone();
    let (_, health, _) = raw(&addr, "GET", "/v1/health", None, None).await;
    let node = health["node_id"].as_str().unwrap().to_string();
    let ops = token_on(&addr, ROOT, "ops1", &["key-admin"]).await;
    // Three requests, left as stopped processes would leave them: one claimed by this node in an earlier
    // run, one claimed by another node a minute ago, and one claimed by a third node two hours ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut requests = Vec::new();
    for (claim, at) in [
        (format!("{node} earlier-run"), now - 60),
        ("other-node some-run".to_string(), now - 60),
        ("gone-node last-run".to_string(), now - 7200),
    ] {
        let (key, id) = common::deletion_awaiting_approval(&server.root(), &addr, &ops).await;
        requests.push((id, key, claim, at));
    }
    server.stop();
    for (id, _, claim, at) in &requests {
        sql(|c| {
            let table = format!("{}.keyward_meta", scratch.0);
            let row = c
                .query_one(
                    &format!("SELECT value FROM {table} WHERE ns = 'approval' AND name = $1"),
                    &[id],
                )
                .unwrap();
            let mut a: serde_json::Value = serde_json::from_slice(row.get(0)).unwrap();
            a["status"] = "executing".into();
            a["approvals"] = serde_json::json!(["ops2"]);
            a["claimed_by"] = claim.as_str().into();
            a["claimed_at"] = (*at).into();
            let value = serde_json::to_vec(&a).unwrap();
            c.execute(
                &format!("UPDATE {table} SET value = $1 WHERE ns = 'approval' AND name = $2"),
                &[&value, id],
            )
            .unwrap();
        });
    }
    server.restart(&env);
    // The node's first background round, at start, ends its own claim and the abandoned one, and leaves the
    // other node's recent claim alone.
    let status = |list: &serde_json::Value, id: &str| {
        list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["approval_id"] == id)
            .unwrap()
            .clone()
    };
    let mut ours = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, list, _) = raw(&addr, "GET", "/v1/approvals", Some(ROOT), None).await;
        ours = status(&list, &requests[0].0);
        let abandoned = status(&list, &requests[2].0);
        if ours["status"] == "failed" && abandoned["status"] == "failed" {
            assert_eq!(status(&list, &requests[1].0)["status"], "executing");
            let message = abandoned["result"]["error"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("abandoned: node gone-node did not finish it"),
                "{abandoned}"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ours["status"], "failed", "{ours}");
    assert_eq!(ours["result"]["error"]["code"], "Unavailable", "{ours}");
    // Nothing ran: each key is as it was, and its trail shows the request (when made, then held) and the
    // interruption.
    for ended in [&requests[0], &requests[2]] {
        let key = server.root().describe_key(&ended.1).await.unwrap();
        assert_eq!(key.state, "Enabled");
        let (_, trail, _) = raw(
            &addr,
            "GET",
            &format!(
                "/v1/audit?key_id={}&action=kms:ScheduleKeyDeletion",
                ended.1
            ),
            Some(ROOT),
            None,
        )
        .await;
        let outcomes: Vec<(&str, &str)> = trail["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["outcome"].as_str().unwrap(),
                    r["request_id"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(outcomes.len(), 3, "{trail}");
        assert_eq!((outcomes[0].0, outcomes[1].0), ("allow", "allow"));
        assert_eq!(outcomes[0].1, outcomes[1].1, "{trail}");
        assert_eq!(outcomes[2], ("error", ended.0.as_str()));
    }
    // A decision on it is refused as on any ended request.
    let (st, v, _) = raw(
        &addr,
        "POST",
        &format!("/v1/approvals/{}/approve", requests[0].0),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");
    chain_verifies(&addr, ROOT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_request_and_no_data() {
    let scratch = Scratch::new();
    let mut cluster = Cluster::start(&scratch.url()).await;
    let key = cluster
        .client(0)
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let client = std::sync::Arc::new(cluster.all());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, stop, key_id) = (client.clone(), stop.clone(), key.key_id.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let plain = format!("worker {w} message {i}");
                // Every request must succeed: the client moves to a live node when its node dies.
                let ct = client
                    .encrypt(&key_id, plain.as_bytes(), None)
                    .await
                    .unwrap_or_else(|e| panic!("encrypt {i} failed: {e}"));
                let d = client
                    .decrypt(None, &ct.ciphertext.0, None, None)
                    .await
                    .unwrap_or_else(|e| panic!("decrypt {i} failed: {e}"));
                assert_eq!(d.plaintext.expose(), plain.as_bytes());
                done.push((plain, ct.ciphertext.0));
                i += 1;
            }
            done
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    // The node the client is talking to dies without warning.
    let victim = cluster.nodes[0].child.as_mut().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert!(all.len() > 50, "too little load: {}", all.len());
    // Every ciphertext handed out decrypts on the surviving nodes.
    let survivor = cluster.client(2);
    for (plain, ct) in all.iter().step_by(7) {
        let d = survivor.decrypt(None, ct, None, None).await.unwrap();
        assert_eq!(d.plaintext.expose(), plain.as_bytes());
    }
    chain_verifies(&cluster.nodes[1].addr, &cluster.root).await;
}

/// Runs the `keyward` CLI against a node; returns success, stdout and stderr.
fn keyward_cli(addr: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.args(args)
        .env("KEYWARD_ADDR", addr)
        .env_remove("KEYWARD_TOKEN");
    if let Some(t) = token {
        cmd.env("KEYWARD_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_into_a_new_database_then_every_ciphertext_decrypts() {
    let source = Scratch::new();
    let cluster = Cluster::start(&source.url()).await;
    let c = cluster.client(0);
    let key = c
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            alias: Some("alias/dr".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ct1 = c
        .encrypt("alias/dr", b"before rotation", None)
        .await
        .unwrap();
    c.key_action(&key.key_id, "rotate").await.unwrap();
    let ct2 = cluster
        .client(1)
        .encrypt("alias/dr", b"after rotation", None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyward.backup");
    let (ok, _, err) = keyward_cli(
        &cluster.nodes[2].addr,
        Some(&cluster.root),
        &["operator", "backup", "--output", file.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let backup = std::fs::read(&file).unwrap();
    assert!(!backup.windows(8).any(|w| w == b"alias/dr"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a backup is its owner's only");
    }
    let shares_file = dir.path().join("shares");
    std::fs::write(&shares_file, cluster.shares[1..].join("\n")).unwrap();
    let (root, shares) = (cluster.root.clone(), cluster.shares.clone());
    drop(cluster);

    // The region is lost. A new database, a new node, started uninitialised.
    let target = Scratch::new();
    let node_dir = tempfile::tempdir().unwrap();
    let node = Server::start(node_dir.path(), &["--store", &target.url()], &[]);
    let restore = |input: &std::path::Path, with_shares: bool| {
        let mut args = vec![
            "--json",
            "operator",
            "restore",
            "--input",
            input.to_str().unwrap(),
        ];
        if with_shares {
            args.extend(["--shares-file", shares_file.to_str().unwrap()]);
        }
        keyward_cli(&node.addr, None, &args)
    };

    // Without shares, corrupted, or another cluster's: refused with a clear error, and nothing is written.
    let (ok, _, err) = restore(&file, false);
    assert!(!ok);
    assert!(err.contains("2 unseal shares"), "{err}");
    let mut bad = backup.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x40;
    let corrupt = dir.path().join("corrupt.backup");
    std::fs::write(&corrupt, &bad).unwrap();
    let (ok, _, err) = restore(&corrupt, true);
    assert!(!ok);
    assert!(
        err.contains("corrupted") && err.contains("nothing was changed"),
        "{err}"
    );
    let foreign_source = Scratch::new();
    let foreign = Cluster::start(&foreign_source.url()).await;
    let foreign_file = dir.path().join("foreign.backup");
    std::fs::write(&foreign_file, foreign.client(0).backup().await.unwrap()).unwrap();
    let (ok, _, err) = restore(&foreign_file, true);
    assert!(!ok);
    assert!(err.contains("another cluster"), "{err}");
    assert_eq!(target.rows("keyward_keys"), 0);
    assert_eq!(target.rows("keyward_meta"), 0);
    assert_eq!(target.rows("keyward_audit"), 0);
    assert!(!node.client(None).status().await.unwrap().initialized);

    // With the original shares: restored and unsealed; every ciphertext decrypts, the old root token works.
    let (ok, out, err) = restore(&file, true);
    assert!(ok, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["restored_keys"], 1, "{out}");
    assert_eq!(answer["initialized"], true, "{out}");
    let c = node.client(Some(&root));
    for (ct, plain) in [
        (&ct1, &b"before rotation"[..]),
        (&ct2, &b"after rotation"[..]),
    ] {
        let d = c.decrypt(None, &ct.ciphertext.0, None, None).await.unwrap();
        assert_eq!(d.plaintext.expose(), plain);
    }
    assert_eq!(c.describe_key("alias/dr").await.unwrap().key_id, key.key_id);
    // The audit chain came along and continues unbroken on the new node.
    chain_verifies(&node.addr, &root).await;
    // A second node joining the restored database unseals with the same original shares.
    let second_dir = tempfile::tempdir().unwrap();
    let second = Server::start(second_dir.path(), &["--store", &target.url()], &[]);
    let s = second.client(None);
    s.unseal(&shares[0]).await.unwrap();
    assert!(!s.unseal(&shares[2]).await.unwrap().sealed);
    let d = second
        .client(Some(&root))
        .decrypt(None, &ct2.ciphertext.0, None, None)
        .await
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"after rotation");
}

/// A database of its own, which a test can cut off from its nodes as a PostgreSQL restart would.
struct ScratchDb(String);

impl ScratchDb {
    fn new() -> ScratchDb {
        let name = format!("kwcli_db_{}_{}", std::process::id(), free_suffix());
        sql(|c| c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap());
        ScratchDb(name)
    }
    fn url(&self) -> String {
        let base = base_url();
        let (head, query) = match base.split_once('?') {
            Some((h, q)) => (h.to_string(), format!("?{q}")),
            None => (base.clone(), String::new()),
        };
        let (server, _) = head.rsplit_once('/').unwrap();
        format!("{server}/{}{query}", self.0)
    }
    /// Refuses new connections and ends the open ones: the database is gone until `up`.
    fn down(&self) {
        sql(|c| {
            c.batch_execute(&format!(
                "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
                self.0
            ))
            .unwrap()
        });
    }
    fn up(&self) {
        sql(|c| {
            c.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.0))
                .unwrap()
        });
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        sql(|c| {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
        });
    }
}

/// What four clients encrypting in a loop saw.
#[derive(Default)]
struct Seen {
    ok: Vec<(String, Vec<u8>)>,
    unavailable: usize,
    /// Whether the last request of the run succeeded.
    last_ok: bool,
}

/// Four clients encrypt in a loop on `server` while `during` runs, and two seconds after it; the only failure
/// accepted is a clean `503 Unavailable`. Returns what they were handed and how many 503s they saw, after
/// checking that every client was served again by the end.
async fn under_load<F: std::future::Future<Output = ()>>(
    server: &Server,
    during: F,
) -> (Vec<(String, Vec<u8>)>, usize) {
    let key = server
        .root()
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, stop, key_id) = (server.root(), stop.clone(), key.key_id.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let plain = format!("w{w} #{i}");
                i += 1;
                match client.encrypt(&key_id, plain.as_bytes(), None).await {
                    Ok(ct) => {
                        seen.ok.push((plain, ct.ciphertext.0));
                        seen.last_ok = true;
                    }
                    // The only acceptable failure: a clean 503 while the database is away.
                    Err(keyward_client::Error::Api {
                        status: 503, code, ..
                    }) => {
                        assert_eq!(code, "Unavailable");
                        seen.unavailable += 1;
                        seen.last_ok = false;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("request {i} of worker {w}: {e}"),
                }
            }
            seen
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    during.await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    let mut unavailable = 0;
    for w in workers {
        let seen = w.await.unwrap();
        assert!(
            seen.last_ok,
            "a worker was still failing after the database came back"
        );
        unavailable += seen.unavailable;
        all.extend(seen.ok);
    }
    (all, unavailable)
}

/// Every ciphertext the node handed out decrypts, and the audit chain has no half-written batch.
async fn all_decrypt_and_the_chain_holds(server: &Server, handed_out: &[(String, Vec<u8>)]) {
    let c = server.root();
    for (plain, ct) in handed_out {
        let d = c.decrypt(None, ct, None, None).await.unwrap();
        assert_eq!(d.plaintext.expose(), plain.as_bytes());
    }
    chain_verifies(&server.addr, ROOT).await;
}

async fn health(server: &Server) -> (u16, String) {
    let (status, body, _) = raw(&server.addr, "GET", "/v1/health", None, None).await;
    (
        status,
        body["status"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_fails_cleanly_and_recovers_by_itself() {
    let db = ScratchDb::new();
    let dir = tempfile::tempdir().unwrap();
    let env = [("KEYWARD_DEV_ROOT_TOKEN", ROOT)];
    let server = Server::start(dir.path(), &["--dev", "--store", &db.url()], &env);
    let (handed_out, unavailable) = under_load(&server, async {
        assert_eq!(health(&server).await, (200, "ok".to_string()));
        db.down();
        // A load balancer sees the node drop out while its database is away...
        wait_for(|| async { health(&server).await == (503, "unavailable".to_string()) }).await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        db.up();
        // ...and come back by itself: nobody restarts anything.
        wait_for(|| async { health(&server).await == (200, "ok".to_string()) }).await;
    })
    .await;
    assert!(unavailable > 0, "the outage was not noticed");
    all_decrypt_and_the_chain_holds(&server, &handed_out).await;
}

/// A PostgreSQL server of this test's own (`scripts/throwaway-postgres`), stopped and removed when dropped.
struct PrivatePostgres {
    url: String,
    data: std::path::PathBuf,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/throwaway-postgres");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(common::free_port().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "throwaway-postgres: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let url = lines.next().unwrap().to_string();
        let data = std::path::PathBuf::from(lines.next().unwrap());
        PrivatePostgres { url, data }
    }

    /// `pg_ctl` on this cluster, as the account that owns it.
    fn pg_ctl(&self, args: &[&str]) {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin/pg_ctl")))
            .filter(|p| p.exists())
            .max()
            .unwrap();
        let log = self.data.with_file_name("server.log");
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        cmd.arg("-D").arg(&self.data).arg("-l").arg(&log).args(args);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success() || std::thread::panicking(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn started_at(&self) -> String {
        let url = self.url.clone();
        tokio::task::block_in_place(|| {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query_one("SELECT pg_postmaster_start_time()::text", &[])
                .unwrap()
                .get(0)
        })
    }
}

/// Whether this process runs as root (PostgreSQL's tools then run as the `postgres` account).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.pg_ctl(&["stop", "-m", "immediate"]);
        if let Some(dir) = self.data.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The whole PostgreSQL server restarts (`pg_ctl restart -m fast`: every backend ends, connections are
/// refused until it is back) while a node is under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_under_load_fails_cleanly_and_recovers_by_itself() {
    let pg = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let env = [("KEYWARD_DEV_ROOT_TOKEN", ROOT)];
    let server = Server::start(dir.path(), &["--dev", "--store", &pg.url], &env);
    let before = pg.started_at();
    let (handed_out, unavailable) = under_load(&server, async {
        assert_eq!(health(&server).await, (200, "ok".to_string()));
        tokio::task::block_in_place(|| pg.pg_ctl(&["restart", "-m", "fast", "-w"]));
        // Nobody restarts the node: it serves again by itself.
        wait_for(|| async { health(&server).await == (200, "ok".to_string()) }).await;
    })
    .await;
    assert_ne!(pg.started_at(), before, "the server did not restart");
    // Requests in flight when the backends ended were refused cleanly, not lost or half-done.
    assert!(unavailable > 0, "the restart was not noticed");
    assert!(!handed_out.is_empty());
    all_decrypt_and_the_chain_holds(&server, &handed_out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_pkcs11_token_unseal_themselves_when_another_node_initialises() {
    let scratch = Scratch::new();
    let (module, label, pin) = common::pkcs11_token();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|d| {
            Server::start(
                d.path(),
                &[
                    "--store",
                    &scratch.url(),
                    "--pkcs11-module",
                    &module,
                    "--pkcs11-token-label",
                    &label,
                ],
                &[("KEYWARD_PKCS11_PIN", pin.as_str())],
            )
        })
        .collect();
    let (status, init, _) = raw(
        &nodes[0].addr,
        "POST",
        "/v1/sys/init",
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    let root = init["root_token"].as_str().unwrap().to_string();
    // The second node learns of the init through the database and opens the unseal key with the token.
    wait_for(|| async { !nodes[1].client(None).status().await.unwrap().sealed }).await;
    let key = nodes[0]
        .client(Some(&root))
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            origin: Some("HSM".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ct = nodes[0]
        .client(Some(&root))
        .encrypt(&key.key_id, b"token key", None)
        .await
        .unwrap();
    let d = nodes[1]
        .client(Some(&root))
        .decrypt(None, &ct.ciphertext.0, None, None)
        .await
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"token key");
    // An operator's seal holds: the node does not unseal itself behind the operator's back.
    let (status, _, _) = raw(&nodes[1].addr, "POST", "/v1/sys/seal", Some(&root), None).await;
    assert_eq!(status, 204);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(nodes[1].client(None).status().await.unwrap().sealed);
    // Unsealing it again takes no share: the token opens the unseal key.
    let (status, s, _) = raw(
        &nodes[1].addr,
        "POST",
        "/v1/sys/unseal",
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!((status, s["sealed"].as_bool()), (200, Some(false)), "{s}");
    let d = nodes[1]
        .client(Some(&root))
        .decrypt(None, &ct.ciphertext.0, None, None)
        .await
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"token key");
}

/// An AWS KMS request, signed as an SDK signs it: the status and the body.
async fn aws_call(
    addr: &str,
    key: &(String, String),
    target: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = serde_json::to_vec(&body).unwrap();
    let host = addr.trim_start_matches("http://").to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = keyward_aws::sigv4::amz_date(now);
    let signing = keyward_aws::sigv4::signing_key(key.1.as_bytes(), &day[..8], "us-east-1", "kms");
    let headers = keyward_aws::sigv4::kms_request_headers(
        &host,
        target,
        &body,
        &keyward_aws::sigv4::payload_hash(&body),
        &key.0,
        &signing,
        "us-east-1",
        now,
    );
    let mut http = reqwest::Client::new().post(format!("{addr}/")).body(body);
    for (n, v) in headers {
        http = http.header(n, v);
    }
    let resp = http.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// A store that fails under an AWS request answers `KMSInternalException` (500, which SDKs retry), and the
/// request changed nothing: once the store is back, the same request succeeds and the chain is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_aws_clients_with_an_internal_error_and_loses_nothing() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let url = scratch.url();
    let server = Server::start(
        dir.path(),
        &["--dev", "--store", &url],
        &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)],
    );
    let (st, _, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities",
        Some(ROOT),
        Some(br#"{"name": "app", "kind": "service", "roles": ["admin"]}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 201);
    let (st, k, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities/app/access-keys",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 201, "{k}");
    let key = (
        k["access_key_id"].as_str().unwrap().to_string(),
        k["secret_access_key"].as_str().unwrap().to_string(),
    );
    let (st, created) = aws_call(&server.addr, &key, "CreateKey", serde_json::json!({})).await;
    assert_eq!(st, 200, "{created}");
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let encrypt = serde_json::json!({"KeyId": key_id, "Plaintext": "aGVsbG8="});
    let (st, _) = aws_call(&server.addr, &key, "Encrypt", encrypt.clone()).await;
    assert_eq!(st, 200);
    let records = scratch.rows("keyward_audit");
    sql(|c| {
        c.batch_execute(&format!(
            "ALTER TABLE {}.keyward_audit RENAME TO keyward_audit_away",
            scratch.0
        ))
        .unwrap()
    });
    let (st, v) = aws_call(&server.addr, &key, "Encrypt", encrypt.clone()).await;
    assert_eq!(
        (st, v["__type"].as_str()),
        (500, Some("KMSInternalException")),
        "{v}"
    );
    sql(|c| {
        c.batch_execute(&format!(
            "ALTER TABLE {}.keyward_audit_away RENAME TO keyward_audit",
            scratch.0
        ))
        .unwrap()
    });
    assert_eq!(scratch.rows("keyward_audit"), records);
    let mut ok = false;
    for _ in 0..50 {
        let (st, _) = aws_call(&server.addr, &key, "Encrypt", encrypt.clone()).await;
        if st == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the node did not recover once the store was back");
    assert_eq!(chain_verifies(&server.addr, ROOT).await["valid"], true);
}
