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
        self.open("kwtest")
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed for these tests: {e}", url()))
    }
    /// A store whose sessions carry `application` as their name, so a test can terminate them.
    fn open(&self, application: &str) -> Result<PgStore, StoreError> {
        PgStore::open(
            &format!("{}?application_name={application}", url()),
            PgOptions {
                schema: Some(self.0.clone()),
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
fn one_node_leads_and_another_takes_over_when_it_goes() {
    let scratch = Scratch::new();
    let a = scratch.store();
    let b = scratch.store();
    assert!(a.leads().unwrap());
    assert!(a.leads().unwrap(), "a leader keeps leading");
    assert!(!b.leads().unwrap(), "two leaders at once");
    // Another schema (another deployment) in the same database has its own leader.
    let other = Scratch::new();
    assert!(other.store().leads().unwrap());
    drop(a);
    takes_over(&b);
}

/// Waits (up to 5 s) for `standby` to take the jobs lease of a node that was dropped: PostgreSQL frees a closed
/// session's locks once its backend has exited, a moment after the close, and a standby asks at every tick.
fn takes_over(standby: &PgStore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !standby.leads().unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby takes over"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_change_feed_reports_every_commit_of_every_node_and_nothing_uncommitted() {
    use keyward_store::Change;
    let scratch = Scratch::new();
    let a = scratch.store();
    let b = scratch.store();
    let mut feed = b.change_feed().unwrap().unwrap();
    assert!(b.shared());
    assert_eq!(
        feed.poll(std::time::Duration::from_millis(10)).unwrap(),
        vec![]
    );
    transact(&a, |t: &mut dyn Tx| {
        t.put_key(&suite::key("k1"))?;
        t.put_version(&suite::version("k1", 1))?;
        t.put_alias("alias/x", "k1")?;
        t.put_meta("token", "abc", b"1")
    })
    .unwrap();
    {
        // Rolled back: never reported.
        let mut tx = a.begin().unwrap();
        tx.put_key(&suite::key("ghost")).unwrap();
    }
    // The notification ends the wait well before the timeout.
    let started = std::time::Instant::now();
    let got = feed.poll(std::time::Duration::from_secs(5)).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(
        got,
        vec![
            Change::Key("k1".into()),
            Change::Alias("alias/x".into()),
            Change::Meta {
                ns: "token".into(),
                name: "abc".into()
            },
        ]
    );
    transact(&a, |t: &mut dyn Tx| t.delete_meta("token", "abc")).unwrap();
    assert_eq!(
        feed.poll(std::time::Duration::from_millis(10)).unwrap(),
        vec![Change::Meta {
            ns: "token".into(),
            name: "abc".into()
        }]
    );
    // Audit appends are not cache changes.
    transact(&a, |t: &mut dyn Tx| {
        t.append_audit(&[AuditRow {
            seq: 1,
            time_ms: 1,
            principal: "p".into(),
            action: "a".into(),
            key_id: None,
            outcome: "allow".into(),
            record: "{}".into(),
        }])
    })
    .unwrap();
    assert_eq!(
        feed.poll(std::time::Duration::from_millis(10)).unwrap(),
        vec![]
    );
}

/// Polls until changes arrive; a lost connection may fail a few polls (cleanly) while the feed reconnects.
fn next_changes(feed: &mut dyn keyward_store::ChangeFeed) -> Vec<keyward_store::Change> {
    let mut errors = 0;
    loop {
        match feed.poll(std::time::Duration::from_millis(50)) {
            Ok(c) if !c.is_empty() => return c,
            Ok(_) => {}
            Err(StoreError::Unavailable(_)) if errors < 3 => errors += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_feed_that_lost_its_connection_reconnects_and_misses_nothing() {
    use keyward_store::Change;
    let scratch = Scratch::new();
    let a = scratch.open("kwtest_writer").unwrap();
    let b = scratch.open("kwtest_follower").unwrap();
    let mut feed = b.change_feed().unwrap().unwrap();
    terminate_sessions_of("kwtest_follower");
    transact(&a, |t: &mut dyn Tx| t.put_key(&suite::key("while-away"))).unwrap();
    let seen = next_changes(feed.as_mut());
    assert_eq!(seen, vec![Change::Key("while-away".into())]);
    // Pruned history the feed had not read yet: it says so instead of pretending nothing happened.
    terminate_sessions_of("kwtest_follower");
    transact(&a, |t: &mut dyn Tx| t.put_key(&suite::key("pruned"))).unwrap();
    scratch.sql("DELETE FROM keyward_changes");
    transact(&a, |t: &mut dyn Tx| t.put_key(&suite::key("after"))).unwrap();
    let seen = next_changes(feed.as_mut());
    assert_eq!(seen, vec![Change::Everything, Change::Key("after".into())]);
}

/// Terminates every session a store opened under `application` (its connection pool and its lease), as a
/// PostgreSQL restart or failover would, and waits until their backends have exited (and so released their
/// locks), which `pg_terminate_backend` alone does not.
fn terminate_sessions_of(application: &str) {
    let mut c = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    c.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = $1",
        &[&application],
    )
    .unwrap();
}

#[test]
fn a_lost_connection_fails_cleanly_and_recovers() {
    let scratch = Scratch::new();
    let a = scratch.open("kwtest_node_a").unwrap();
    transact(&a, |t: &mut dyn Tx| t.put_key(&suite::key("k1"))).unwrap();
    assert!(a.leads().unwrap());

    // Every connection of node A dies (a restart of PostgreSQL, seen from A). A pooled connection that died
    // fails one transaction cleanly (Unavailable, nothing written) and is replaced.
    terminate_sessions_of("kwtest_node_a");
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
    // The jobs lock died with its session: A takes it again, unless another node got there first.
    let b = scratch.open("kwtest_node_b").unwrap();
    assert!(b.leads().unwrap());
    assert!(!a.leads().unwrap());
    drop(b);
    takes_over(&a);
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

/// A database whose collation is linguistic (most are: `en_US.UTF-8` is a common default) still lists
/// names in byte order, which the service's paging relies on.
#[test]
fn names_list_in_byte_order_under_a_linguistic_collation() {
    let scratch = Scratch::new();
    let store = scratch.store();
    scratch.sql(
        "ALTER TABLE keyward_meta ALTER COLUMN ns TYPE TEXT COLLATE \"en-US-x-icu\", \
         ALTER COLUMN name TYPE TEXT COLLATE \"en-US-x-icu\"",
    );
    suite::meta_round_trip(&store);
}
