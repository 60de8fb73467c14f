//! The WAL stays bounded under a steady stream of commits, and what was written survives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_store::{transact, AuditQuery, AuditRow, Tx};
use keyward_store_sqlite::SqliteStore;

fn append(store: &SqliteStore, seq: &mut u64, bytes: u64) {
    let per_commit = 16u64;
    for _ in 0..bytes / (per_commit * 1000) {
        let rows: Vec<AuditRow> = (0..per_commit).map(|i| row(*seq + 1 + i)).collect();
        transact(store, |tx: &mut dyn Tx| tx.append_audit(&rows)).unwrap();
        *seq += per_commit;
    }
}

fn all_rows_in_order(store: &SqliteStore) -> u64 {
    let mut after = 0u64;
    loop {
        let q = AuditQuery {
            after_seq: after,
            limit: 10_000,
            ..AuditQuery::default()
        };
        let rows = transact(store, |tx: &mut dyn Tx| tx.query_audit(&q)).unwrap();
        let Some(last) = rows.last() else { break };
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.seq, after + 1 + i as u64);
        }
        after = last.seq;
    }
    after
}

fn row(seq: u64) -> AuditRow {
    AuditRow {
        seq,
        time_ms: seq as i64,
        principal: "svc".into(),
        action: "kms:Encrypt".into(),
        key_id: Some("k".into()),
        outcome: "allow".into(),
        record: format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(900)),
    }
}

/// Commits back to back, as the audit writer does under load, with no pause in which a PASSIVE checkpoint
/// could catch up with the last frame. Without the RESTART step the WAL grows by every frame written.
#[test]
fn wal_stays_bounded_under_continuous_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let wal = dir.path().join("k.db-wal");
    let store = SqliteStore::open(&path).unwrap();
    let per_commit = 16u64;
    let total_bytes: u64 = 120 << 20;
    let commits = total_bytes / (per_commit * 1000);
    let mut seq = 0u64;
    let mut largest = 0u64;
    for _ in 0..commits {
        let rows: Vec<AuditRow> = (0..per_commit).map(|i| row(seq + 1 + i)).collect();
        transact(&store, |tx: &mut dyn Tx| tx.append_audit(&rows)).unwrap();
        seq += per_commit;
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    // About 120 MB of rows went through the WAL (more in frames); it restarts at 16 MiB of frames, plus
    // what one checkpoint interval adds.
    assert!(
        largest < 64 << 20,
        "WAL reached {} MiB for {} MiB of rows",
        largest >> 20,
        total_bytes >> 20
    );
    let tail = transact(&store, |tx: &mut dyn Tx| tx.audit_tail()).unwrap();
    assert_eq!(tail.map(|r| r.seq), Some(seq));
    drop(store);

    // Reopened: every row is there, in order.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(all_rows_in_order(&store), seq);
}

/// Another process holding a read snapshot keeps SQLite from restarting the WAL (the snapshot needs its
/// frames). Commits go on meanwhile, and once the reader is gone the WAL restarts again instead of growing.
#[test]
fn a_reader_holding_a_snapshot_delays_the_restart_but_not_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let wal = dir.path().join("k.db-wal");
    let store = SqliteStore::open(&path).unwrap();
    let mut seq = 0u64;
    append(&store, &mut seq, 1 << 20);
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    append(&store, &mut seq, 48 << 20);
    // The snapshot still sees what it saw; the writer was not held up by it.
    let still: i64 = reader
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(still, seen);
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    // The WAL had to hold everything written under the snapshot, and grows on while the checkpointer copies
    // that backlog and waits out its back-off; its file never shrinks. Once the file stops growing, the log
    // is restarting again, and from then on it stays put.
    let size = || std::fs::metadata(&wal).unwrap().len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut steady = 0;
    while steady < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never restarted after the reader left"
        );
        let before = size();
        append(&store, &mut seq, 8 << 20);
        steady = if size() == before { steady + 1 } else { 0 };
    }
    let held = size();
    append(&store, &mut seq, 96 << 20);
    let after = std::fs::metadata(&wal).unwrap().len();
    assert!(
        after <= held + (24 << 20),
        "WAL grew from {} MiB to {} MiB after the reader left",
        held >> 20,
        after >> 20
    );
    assert_eq!(all_rows_in_order(&store), seq);
}
