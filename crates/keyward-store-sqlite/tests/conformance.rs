//! The SQLite store runs the shared store conformance suite, on disk and in memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_store::conformance as suite;
use keyward_store::{transact, Store, StoreError, Tx};
use keyward_store_sqlite::SqliteStore;

/// A store with the directory it lives in, removed after the store is closed.
struct Scoped {
    store: SqliteStore,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Scoped {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        &self.store
    }
}

// Every check runs on disk and in memory.
keyward_store::store_conformance_tests!({
    let dir = tempfile::tempdir().unwrap();
    [
        Scoped {
            store: SqliteStore::open(&dir.path().join("k.db")).unwrap(),
            _dir: Some(dir),
        },
        Scoped {
            store: SqliteStore::in_memory().unwrap(),
            _dir: None,
        },
    ]
});

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
