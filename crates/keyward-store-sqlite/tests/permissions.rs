//! A database the store creates is readable by its owner only, and so are the files SQLite adds beside it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;

use keyward_store::{transact, AuditRow, Tx};
use keyward_store_sqlite::SqliteStore;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_new_database_and_its_wal_are_the_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("keyward.db");
    let store = SqliteStore::open(&path).unwrap();
    let row = AuditRow {
        seq: 1,
        time_ms: 1,
        principal: "svc".into(),
        action: "kms:Encrypt".into(),
        key_id: None,
        outcome: "allow".into(),
        record: "{}".into(),
    };
    transact(&store, |tx: &mut dyn Tx| {
        tx.append_audit(std::slice::from_ref(&row))
    })
    .unwrap();
    for name in ["keyward.db", "keyward.db-wal", "keyward.db-shm"] {
        let p = dir.path().join(name);
        assert!(p.exists(), "{name} was not created");
        assert_eq!(mode(&p), 0o600, "{name}");
    }
    drop(store);
    // The store opens again what it created; an existing file keeps the mode its owner chose.
    SqliteStore::open(&path).unwrap();
    let other = dir.path().join("shared.db");
    std::fs::write(&other, b"").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o640)).unwrap();
    SqliteStore::open(&other).unwrap();
    assert_eq!(mode(&other), 0o640);
}

#[test]
fn a_database_in_a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let Err(e) = SqliteStore::open(&dir.path().join("no/such/dir/keyward.db")) else {
        panic!("opened a database in a directory that does not exist");
    };
    assert!(e.to_string().contains("no/such/dir/keyward.db"), "{e}");
}
