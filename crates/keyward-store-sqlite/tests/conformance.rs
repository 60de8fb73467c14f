//! The SQLite store runs the shared store conformance suite, on disk and in memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_store::conformance as suite;
use keyward_store::{transact, Store, StoreError, Tx};
use keyward_store_sqlite::SqliteStore;

macro_rules! conformance_tests {
    ($($name:ident),+ $(,)?) => {
        $(#[test] fn $name() {
            let dir = tempfile::tempdir().unwrap();
            suite::$name(&SqliteStore::open(&dir.path().join("k.db")).unwrap());
            suite::$name(&SqliteStore::in_memory().unwrap());
        })+
    };
}

conformance_tests!(
    keys_round_trip,
    versions_round_trip,
    aliases_round_trip,
    meta_round_trip,
    uncommitted_transactions_roll_back,
    due_keys_selects_by_time_and_state,
    audit_appends_and_queries,
);

#[test]
fn committed_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        transact(&store, |t: &mut dyn Tx| {
            t.put_key(&suite::key("persisted"))?;
            t.put_version(&suite::version("persisted", 1))
        })
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let got = transact(&store, |t: &mut dyn Tx| t.get_key("persisted")).unwrap();
    assert_eq!(got, Some(suite::key("persisted")));
    assert_eq!(store.backend_name(), "sqlite");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn a_tampered_key_record_is_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = SqliteStore::open(&path).unwrap();
    transact(&store, |t: &mut dyn Tx| t.put_key(&suite::key("victim"))).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE keys SET data = '{not json' WHERE key_id = 'victim'",
        [],
    )
    .unwrap();
    drop(conn);
    let r = transact(&store, |t: &mut dyn Tx| t.get_key("victim"));
    assert!(matches!(r, Err(StoreError::Corrupt(_))));
}
