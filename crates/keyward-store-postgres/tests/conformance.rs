//! The PostgreSQL store runs the shared store conformance suite against a real server.
//!
//! The server is `KEYWARD_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`). These tests
//! fail, never skip, when it cannot be reached: a green run must mean the PostgreSQL store was tested.
//! Each test works in its own schema, so tests run in parallel and leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_store::conformance as suite;
use keyward_store::{transact, AuditRow, Store, StoreError, Tx};
use keyward_store_postgres::{PgOptions, PgStore};

fn url() -> String {
    std::env::var("KEYWARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own, dropped when the test ends.
struct Scratch(String);

impl Scratch {
    fn new() -> Scratch {
        Scratch(format!("kwtest_{}", uuid::Uuid::new_v4().simple()))
    }
    fn store(&self) -> PgStore {
        self.open(false)
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed for these tests: {e}", url()))
    }
    fn open(&self, exclusive: bool) -> Result<PgStore, StoreError> {
        PgStore::open(
            &url(),
            PgOptions {
                schema: Some(self.0.clone()),
                exclusive,
                ..PgOptions::default()
            },
        )
    }
    fn sql(&self, sql: &str) {
        let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
        c.batch_execute(&format!("SET search_path TO {}; {sql}", self.0))
            .unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&url(), postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
        }
    }
}

/// A store in a scratch schema that is dropped with it.
struct Scoped {
    store: PgStore,
    _scratch: Scratch,
}

impl std::ops::Deref for Scoped {
    type Target = PgStore;
    fn deref(&self) -> &PgStore {
        &self.store
    }
}

keyward_store::store_conformance_tests!({
    let scratch = Scratch::new();
    [Scoped {
        store: scratch.store(),
        _scratch: scratch,
    }]
});

#[test]
fn committed_data_survives_reopen_and_migrations_run_once() {
    let scratch = Scratch::new();
    {
        let store = scratch.store();
        transact(&store, |t: &mut dyn Tx| {
            t.put_key(&suite::key("persisted"))?;
            t.put_version(&suite::version("persisted", 1))
        })
        .unwrap();
    }
    let store = scratch.store();
    let got = transact(&store, |t: &mut dyn Tx| t.get_key("persisted")).unwrap();
    assert_eq!(got, Some(suite::key("persisted")));
    let versions = transact(&store, |t: &mut dyn Tx| t.versions("persisted")).unwrap();
    assert_eq!(versions, vec![suite::version("persisted", 1)]);
    assert_eq!(store.backend_name(), "postgres");
}

#[test]
fn a_newer_schema_is_refused() {
    let scratch = Scratch::new();
    drop(scratch.store());
    scratch.sql("UPDATE keyward_schema SET version = 99");
    let err = PgStore::open(
        &url(),
        PgOptions {
            schema: Some(scratch.0.clone()),
            ..PgOptions::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[test]
fn a_failed_statement_makes_the_commit_fail_and_nothing_lands() {
    let scratch = Scratch::new();
    let store = scratch.store();
    let row = |seq| AuditRow {
        seq,
        time_ms: 1,
        principal: "p".into(),
        action: "kms:Encrypt".into(),
        key_id: None,
        outcome: "allow".into(),
        record: "{}".into(),
    };
    transact(&store, |t: &mut dyn Tx| t.append_audit(&[row(1)])).unwrap();
    // The caller ignores the conflict and commits anyway: the key written before it must not land.
    let mut tx = store.begin().unwrap();
    tx.put_key(&suite::key("half")).unwrap();
    assert!(matches!(
        tx.append_audit(&[row(1)]),
        Err(StoreError::Conflict(_))
    ));
    assert!(tx.commit().is_err());
    assert_eq!(
        transact(&store, |t: &mut dyn Tx| t.get_key("half")).unwrap(),
        None
    );
    // The pool still works after the failure.
    transact(&store, |t: &mut dyn Tx| t.append_audit(&[row(2)])).unwrap();
}

#[test]
fn writers_on_two_nodes_are_serialised() {
    // Two stores on one database behave as two nodes: concurrent read-modify-write never loses an update.
    let scratch = Scratch::new();
    let a = std::sync::Arc::new(scratch.store());
    let b = std::sync::Arc::new(scratch.store());
    transact(a.as_ref(), |t: &mut dyn Tx| {
        t.put_meta("counter", "n", b"0")
    })
    .unwrap();
    let bump = |s: std::sync::Arc<PgStore>| {
        std::thread::spawn(move || {
            for _ in 0..50 {
                transact(s.as_ref(), |t: &mut dyn Tx| {
                    let v = t.get_meta("counter", "n")?.unwrap();
                    let n: u64 = std::str::from_utf8(&v).unwrap().parse().unwrap();
                    t.put_meta("counter", "n", (n + 1).to_string().as_bytes())
                })
                .unwrap();
            }
        })
    };
    let (h1, h2) = (bump(a.clone()), bump(b.clone()));
    h1.join().unwrap();
    h2.join().unwrap();
    let v = transact(a.as_ref(), |t: &mut dyn Tx| t.get_meta("counter", "n")).unwrap();
    assert_eq!(v.as_deref(), Some(&b"100"[..]));
}

#[test]
fn a_second_exclusive_node_is_refused_until_the_first_closes() {
    let scratch = Scratch::new();
    let first = scratch.open(true).unwrap();
    let err = scratch.open(true).err().unwrap();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("another Keyward node"), "{err}");
    // Another schema (another deployment) in the same database is independent.
    let other = Scratch::new();
    let _elsewhere = other.open(true).unwrap();
    drop(first);
    scratch.open(true).unwrap();
}

/// Terminates every session a store opened under `application` (its connection pool and its lease), as a
/// PostgreSQL restart or failover would.
fn terminate_sessions_of(application: &str) {
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&application],
    )
    .unwrap();
}

#[test]
fn a_lost_connection_fails_cleanly_and_recovers_and_a_lost_lease_is_not_served() {
    let scratch = Scratch::new();
    let open = |app: &str| {
        PgStore::open(
            &format!("{}?application_name={app}", url()),
            PgOptions {
                schema: Some(scratch.0.clone()),
                exclusive: true,
                ..PgOptions::default()
            },
        )
    };
    let a = open("kwtest_node_a").unwrap();
    transact(&a, |t: &mut dyn Tx| t.put_key(&suite::key("k1"))).unwrap();

    // Every connection of node A dies (a restart of PostgreSQL, seen from A).
    terminate_sessions_of("kwtest_node_a");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A notices, takes its lease again, and serves; a pooled connection that died fails one transaction
    // cleanly (Unavailable, nothing written) and is replaced.
    let recovered = |id: &str| {
        let mut failures = 0;
        loop {
            match transact(&a, |t: &mut dyn Tx| t.get_key(id)) {
                Ok(k) => return k,
                Err(StoreError::Unavailable(_)) if failures < 2 => failures += 1,
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(recovered("k1"), Some(suite::key("k1")));

    // A loses its connections again, and node B starts meanwhile: B now holds the database, and A refuses.
    terminate_sessions_of("kwtest_node_a");
    let b = open("kwtest_node_b").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let err = transact(&a, |t: &mut dyn Tx| t.get_key("k1"))
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("another node"), "{err}");
    transact(&b, |t: &mut dyn Tx| t.put_key(&suite::key("k2"))).unwrap();
    // Once B is gone, A takes over again.
    drop(b);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(recovered("k2"), Some(suite::key("k2")));
}

#[test]
fn an_unreachable_server_is_unavailable_and_the_url_is_not_echoed() {
    let err = PgStore::open(
        "postgres://keyward:s3cret-pw@127.0.0.1:1/none?connect_timeout=2",
        PgOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
}

#[test]
fn store_calls_work_from_async_tasks() {
    let scratch = Scratch::new();
    let store = std::sync::Arc::new(scratch.store());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let s = store.clone();
        // Straight on a worker thread, as the request path does on a cache miss.
        transact(s.as_ref(), |t: &mut dyn Tx| t.put_key(&suite::key("async"))).unwrap();
        let s2 = store.clone();
        let got = tokio::task::spawn_blocking(move || {
            transact(s2.as_ref(), |t: &mut dyn Tx| t.get_key("async")).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(got, Some(suite::key("async")));
    });
}
