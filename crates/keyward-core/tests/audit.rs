//! The audit chain: appends are durable and ordered, and each of the four kinds of tampering (modify, delete,
//! insert, reorder) is found and named by the first bad sequence number.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use keyward_core::audit::{AuditEvent, AuditLog};
use keyward_store::AuditQuery;

fn event(i: u32) -> AuditEvent {
    AuditEvent {
        time_ms: 1_790_000_000_000 + i as i64,
        request_id: format!("req-{i}"),
        principal: "app".into(),
        source_ip: "127.0.0.1".into(),
        action: "kms:Encrypt".into(),
        key_id: Some("6f0c4b0e-0000-4000-8000-000000000000".into()),
        version: Some(1),
        // Every third record is a re-encryption naming its source keys, so chains mix both forms.
        source_key_ids: if i.is_multiple_of(3) {
            vec!["0b7e1a52-0000-4000-8000-000000000000".into()]
        } else {
            Vec::new()
        },
        // Every fifth names a resource other than a key.
        resource: i.is_multiple_of(5).then(|| format!("identity/app-{i}")),
        outcome: "allow",
        error_code: None,
    }
}

fn sql(db: &std::path::Path, statement: &str) {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()")
        .arg(db)
        .arg(statement)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{statement}");
}

fn fresh(n: u32) -> (common::Harness, std::path::PathBuf) {
    let h = common::harness();
    let kms = Arc::new(h.kms_clone());
    let log = AuditLog::start(kms.clone()).unwrap();
    for i in 1..=n {
        assert_eq!(log.append_blocking(event(i)).unwrap(), i as u64);
    }
    let db = h.dir.path().join("keyward.db");
    (h, db)
}

fn verify(h: &common::Harness) -> keyward_core::audit::AuditVerification {
    h.restart().verify_audit().unwrap()
}

#[test]
fn an_untouched_chain_verifies_and_survives_restart() {
    let (h, _) = fresh(20);
    let v = verify(&h);
    assert!(v.valid, "{v:?}");
    assert_eq!(v.records, 20);
    // The writer continues the chain after a restart.
    let kms = Arc::new(h.restart());
    let log = AuditLog::start(kms.clone()).unwrap();
    assert_eq!(log.append_blocking(event(21)).unwrap(), 21);
    let v = kms.verify_audit().unwrap();
    assert!(v.valid && v.records == 21, "{v:?}");
    let page = kms
        .query_audit(&AuditQuery {
            principal: Some("app".into()),
            limit: 5,
            after_seq: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert!(page
        .iter()
        .all(|r| r.hash.len() == 64 && r.prev_hash.len() == 64));
}

#[test]
fn a_modified_record_is_found() {
    let (h, db) = fresh(10);
    sql(&db, "UPDATE audit SET record = replace(record, '\"outcome\":\"allow\"', '\"outcome\":\"error\"'), outcome = 'error' WHERE seq = 6");
    let v = verify(&h);
    assert!(!v.valid);
    assert_eq!(v.first_bad_seq, Some(6));
    assert_eq!(v.records, 5);
}

#[test]
fn a_deleted_record_is_found() {
    let (h, db) = fresh(10);
    sql(&db, "DELETE FROM audit WHERE seq = 4");
    assert_eq!(verify(&h).first_bad_seq, Some(4));
}

#[test]
fn an_inserted_record_is_found() {
    let (h, db) = fresh(10);
    // Shift records 5.. up by one and insert a forged record at 5, re-using a genuine record's shape.
    sql(
        &db,
        "UPDATE audit SET seq = seq + 1000 WHERE seq >= 5; UPDATE audit SET seq = seq - 999 WHERE seq >= 1000;
         INSERT INTO audit SELECT 5, time_ms, principal, action, key_id, outcome,
           replace(record, '\"seq\":4', '\"seq\":5') FROM audit WHERE seq = 4;",
    );
    assert_eq!(verify(&h).first_bad_seq, Some(5));
}

#[test]
fn reordered_records_are_found() {
    let (h, db) = fresh(10);
    sql(&db, "UPDATE audit SET seq = 1000 WHERE seq = 7; UPDATE audit SET seq = 7 WHERE seq = 8; UPDATE audit SET seq = 8 WHERE seq = 1000;");
    assert_eq!(verify(&h).first_bad_seq, Some(7));
}

#[test]
fn an_unwritable_store_fails_appends_closed() {
    let h = common::harness();
    let kms = Arc::new(h.kms_clone());
    let log = AuditLog::start(kms).unwrap();
    assert!(log.append_blocking(event(1)).is_ok());
    // Lock the database from outside for longer than the busy timeout would wait? Simpler and sharper:
    // take the table away.
    sql(
        &h.dir.path().join("keyward.db"),
        "ALTER TABLE audit RENAME TO audit_moved;",
    );
    let err = log.append_blocking(event(2)).unwrap_err();
    assert_eq!(err.code(), keyward_core::ErrorCode::Unavailable);
    sql(
        &h.dir.path().join("keyward.db"),
        "ALTER TABLE audit_moved RENAME TO audit;",
    );
    // Nothing was lost or half-written: the next append continues the chain at 2.
    assert_eq!(log.append_blocking(event(3)).unwrap(), 2);
    assert!(h.restart().verify_audit().unwrap().valid);
}

#[test]
fn a_truncated_tail_is_found_with_a_checkpoint() {
    let (h, db) = fresh(10);
    let kms = h.restart();
    let cp = kms.audit_checkpoint(1_790_000_100_000).unwrap();
    assert_eq!(cp.seq, 10);
    assert!(kms.verify_audit_against(&cp).unwrap().valid);
    // The checkpoint verifies with any Ed25519 implementation.
    let spki = (0..cp.public_key.len() / 2)
        .map(|i| u8::from_str_radix(&cp.public_key[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let sig = (0..cp.signature.len() / 2)
        .map(|i| u8::from_str_radix(&cp.signature[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let pk = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &spki);
    pk.verify(
        &keyward_core::audit::Checkpoint::message(cp.seq, &cp.head, &cp.time),
        &sig,
    )
    .unwrap();
    // Cutting off the last records leaves a valid-looking chain...
    sql(&db, "DELETE FROM audit WHERE seq >= 9");
    let kms = h.restart();
    assert!(kms.verify_audit().unwrap().valid);
    // ...but not against the checkpoint.
    let v = kms.verify_audit_against(&cp).unwrap();
    assert!(!v.valid);
    assert_eq!(v.first_bad_seq, Some(9));
    // A forged checkpoint is refused.
    let mut forged = cp.clone();
    forged.seq = 8;
    assert_eq!(
        kms.verify_audit_against(&forged).unwrap_err().code(),
        keyward_core::ErrorCode::ValidationError
    );
}

#[test]
fn scheduled_work_is_recorded_before_it_happens_and_waits_for_a_writable_log() {
    use keyward_core::audit::{run_scheduled_work, SCHEDULER};
    use keyward_core::{CreateKey, DueKind, ErrorCode, KeySpec, KeyState, DAY};

    let h = common::harness();
    let db = h.dir.path().join("keyward.db");
    let kms = Arc::new(h.kms_clone());
    let log = AuditLog::start(kms.clone()).unwrap();
    let mut periodic = CreateKey::new(KeySpec::Aes256);
    periodic.rotation_period_days = Some(90);
    let rotating = kms.create_key(periodic).unwrap().key_id;
    let doomed = kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    kms.schedule_deletion(&doomed, 7).unwrap();
    h.clock.advance(91 * DAY);

    // While no record can be written, nothing is rotated or destroyed.
    sql(&db, "ALTER TABLE audit RENAME TO audit_moved;");
    let err = run_scheduled_work(&kms, &log, || 1_790_000_000_000).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert_eq!(kms.describe_key(&rotating).unwrap().primary_version, 1);
    assert_eq!(
        kms.describe_key(&doomed).unwrap().state,
        KeyState::PendingDeletion
    );

    // Once the log takes records again, the next round does the work, each action recorded.
    sql(&db, "ALTER TABLE audit_moved RENAME TO audit;");
    let work = run_scheduled_work(&kms, &log, || 1_790_000_000_000).unwrap();
    assert_eq!(work.rotated, std::slice::from_ref(&rotating));
    assert_eq!(work.destroyed, std::slice::from_ref(&doomed));
    assert_eq!(kms.describe_key(&rotating).unwrap().primary_version, 2);
    assert_eq!(
        kms.describe_key(&doomed).unwrap().state,
        KeyState::Destroyed
    );
    let records = kms
        .query_audit(&AuditQuery {
            principal: Some(SCHEDULER.into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let mut seen: Vec<(String, Option<String>, String)> = records
        .iter()
        .map(|r| (r.action.clone(), r.key_id.clone(), r.outcome.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "kms:DestroyKey".into(),
                Some(doomed.clone()),
                "allow".into()
            ),
            (
                "kms:RotateKey".into(),
                Some(rotating.clone()),
                "allow".into()
            ),
        ]
    );
    // Nothing is due any more: another round does and records nothing.
    let again = run_scheduled_work(&kms, &log, || 1_790_000_000_000).unwrap();
    assert!(again.rotated.is_empty() && again.destroyed.is_empty());

    // Work that became moot between listing and doing is not done, and says so.
    let late = kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    kms.schedule_deletion(&late, 7).unwrap();
    h.clock.advance(8 * DAY);
    assert!(kms
        .due_work()
        .unwrap()
        .contains(&(late.clone(), DueKind::Destroy)));
    kms.cancel_deletion(&late).unwrap();
    assert!(!kms.perform_due(&late, DueKind::Destroy).unwrap());
    assert_eq!(kms.describe_key(&late).unwrap().state, KeyState::Disabled);
    assert!(h.restart().verify_audit().unwrap().valid);
}

/// A log of `n` records appended in batches of a thousand (group-committed), for tests that need many.
fn many(n: u32) -> common::Harness {
    let h = common::harness();
    let kms = Arc::new(h.kms_clone());
    let log = AuditLog::start(kms).unwrap();
    let mut i = 1;
    while i <= n {
        let (tx, rx) = std::sync::mpsc::channel();
        let end = (i + 999).min(n);
        for j in i..=end {
            let tx = tx.clone();
            log.append(event(j), Box::new(move |r| drop(tx.send(r))));
        }
        for _ in i..=end {
            rx.recv().unwrap().unwrap();
        }
        i = end + 1;
    }
    h
}

/// `time_ms` of record `i` (see `event`): records before `kept_from(i)` may be pruned.
fn kept_from(i: u32) -> i64 {
    1_790_000_000_000 + i as i64
}

fn refusal(r: keyward_core::KmsResult<keyward_core::audit::Pruned>) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.code(), keyward_core::ErrorCode::InvalidState, "{e:?}");
    e.message().to_string()
}

#[test]
fn pruning_keeps_the_rest_verifiable_and_refuses_what_it_must() {
    let (h, _) = fresh(30);
    let kms = Arc::new(h.restart());
    assert!(refusal(kms.prune_audit(25, kept_from(21))).contains("inside the retention period"));
    assert!(refusal(kms.prune_audit(30, i64::MAX)).contains("never pruned"));
    assert_eq!(verify(&h).records, 30, "a refusal deletes nothing");

    let p = kms.prune_audit(10, kept_from(21)).unwrap();
    assert_eq!((p.pruned, p.pruned_through), (10, 10));
    let v = kms.verify_audit().unwrap();
    assert!(v.valid, "{v:?}");
    assert_eq!((v.records, v.pruned_through), (20, Some(10)));
    assert!(refusal(kms.prune_audit(5, kept_from(21))).contains("already pruned"));

    // Pruning continues from the anchor, and the writer continues the chain.
    assert_eq!(kms.prune_audit(20, kept_from(21)).unwrap().pruned, 10);
    let log = AuditLog::start(kms.clone()).unwrap();
    assert_eq!(log.append_blocking(event(31)).unwrap(), 31);
    let v = verify(&h);
    assert!(v.valid, "{v:?}");
    assert_eq!((v.records, v.pruned_through), (11, Some(20)));
    let first = kms
        .query_audit(&AuditQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(first[0].seq, 21);
}

#[test]
fn cutting_the_log_below_the_anchor_or_moving_the_anchor_is_found() {
    let (h, db) = fresh(30);
    h.restart().prune_audit(10, kept_from(21)).unwrap();
    // Deleting the oldest kept record, as if it had been pruned too.
    sql(&db, "DELETE FROM audit WHERE seq = 11");
    let v = verify(&h);
    assert!(!v.valid);
    assert_eq!(v.first_bad_seq, Some(11));
    // Moving the anchor over the gap: its MAC no longer checks out.
    sql(
        &db,
        "UPDATE meta SET value = CAST(replace(CAST(value AS TEXT), '\"seq\":10', '\"seq\":11') AS BLOB) \
         WHERE ns = 'audit' AND name = 'anchor'",
    );
    let v = verify(&h);
    assert!(!v.valid, "{v:?}");
    assert_eq!(v.first_bad_seq, Some(12));
    assert!(refusal(h.restart().prune_audit(20, kept_from(21))).contains("does not authenticate"));
}

#[test]
fn records_that_do_not_verify_are_not_pruned() {
    let (h, db) = fresh(30);
    sql(
        &db,
        "UPDATE audit SET record = replace(record, 'req-5', 'req-X') WHERE seq = 5",
    );
    assert!(refusal(h.restart().prune_audit(10, kept_from(21)))
        .contains("audit record 5 does not verify"));
    let rows = h
        .restart()
        .query_audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 30);
}

#[test]
fn pruning_more_than_a_chunk_runs_in_several_transactions() {
    let total = keyward_core::audit::PRUNE_CHUNK as u32 * 2 + 500;
    let h = many(total);
    let kms = h.restart();
    let through = total as u64 - 100;
    let p = kms.prune_audit(through, kept_from(total)).unwrap();
    assert_eq!((p.pruned, p.pruned_through), (through, through));
    let v = kms.verify_audit().unwrap();
    assert!(v.valid, "{v:?}");
    assert_eq!((v.records, v.pruned_through), (100, Some(through)));
}

#[test]
fn an_archive_verifies_against_the_audit_key_and_joins_the_kept_log() {
    let (h, _) = fresh(30);
    let kms = h.restart();
    let all = kms
        .query_audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let archive = all[..10].to_vec();
    kms.prune_audit(10, kept_from(21)).unwrap();
    let v = kms.verify_archive(&archive, None).unwrap();
    assert!(v.valid && v.continues_into_log, "{v:?}");
    assert_eq!((v.records, v.head.as_str()), (10, all[9].hash.as_str()));

    // A part in the middle, chained onto the part before it.
    let v = kms
        .verify_archive(&all[10..20], Some(&all[9].hash))
        .unwrap();
    assert!(v.valid && v.continues_into_log, "{v:?}");

    // Altered, missing, or not following what came before: named by the first bad record.
    let mut altered = archive.clone();
    altered[3].principal = "someone-else".into();
    let v = kms.verify_archive(&altered, None).unwrap();
    assert_eq!((v.valid, v.first_bad_seq, v.records), (false, Some(4), 3));
    let mut gap = archive.clone();
    gap.remove(4);
    assert_eq!(
        kms.verify_archive(&gap, None).unwrap().first_bad_seq,
        Some(5)
    );
    let v = kms
        .verify_archive(&all[10..20], Some(&all[8].hash))
        .unwrap();
    assert_eq!((v.valid, v.first_bad_seq), (false, Some(11)));
    // A complete archive that stops short of the kept log does not join it.
    let v = kms.verify_archive(&archive[..8], None).unwrap();
    assert!(v.valid && !v.continues_into_log, "{v:?}");
}

#[test]
fn no_record_younger_than_the_retention_period_is_pruned_whatever_its_place() {
    // Record 5 was stamped by a node whose clock ran ahead: later records carry earlier times.
    let h = common::harness();
    let kms = Arc::new(h.kms_clone());
    let log = AuditLog::start(kms.clone()).unwrap();
    for i in 1..=10u32 {
        let mut e = event(i);
        if i == 5 {
            e.time_ms = kept_from(100);
        }
        log.append_blocking(e).unwrap();
    }
    assert!(refusal(kms.prune_audit(8, kept_from(50))).contains("inside the retention period"));
    assert_eq!(kms.prune_audit(4, kept_from(50)).unwrap().pruned, 4);
    // The time column the filters use is checked against the authenticated record too.
    sql(
        &h.dir.path().join("keyward.db"),
        "UPDATE audit SET time_ms = 0 WHERE seq = 7",
    );
    let v = verify(&h);
    assert_eq!((v.valid, v.first_bad_seq), (false, Some(7)));
}
