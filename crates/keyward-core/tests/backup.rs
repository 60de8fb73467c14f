//! Backups: a fresh node restores one with the cluster's shares and decrypts everything; a corrupted or
//! foreign backup is refused and changes nothing; a restore into a running service never silently rolls a
//! key back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{harness, open_at, T0};
use keyward_core::audit::{AuditEvent, AuditWriter};
use keyward_core::*;

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time_ms: T0 * 1000 + n as i64,
        request_id: format!("r{n}"),
        principal: "tester".into(),
        source_ip: "127.0.0.1".into(),
        action: "kms:Encrypt".into(),
        key_id: None,
        version: None,
        source_key_ids: Vec::new(),
        resource: None,
        outcome: "allow",
        error_code: None,
    }
}

fn code<T: std::fmt::Debug>(r: KmsResult<T>) -> ErrorCode {
    r.expect_err("expected an error").code()
}

fn write_audit(kms: &std::sync::Arc<Kms>, from: u64, n: u64) {
    let mut w = AuditWriter::new(kms.clone(), Vec::new()).unwrap();
    let mut batch = Vec::new();
    for i in from..from + n {
        batch.extend(audit::Pending::new(
            event(i),
            Box::new(|r| assert!(r.is_ok())),
        ));
    }
    w.write(batch);
}

#[test]
fn a_fresh_node_restores_with_the_shares_and_decrypts_everything() {
    let h = harness();
    let kms = std::sync::Arc::new(h.restart());
    let sym = kms
        .create_key(CreateKey::new(KeySpec::SymmetricDefault))
        .unwrap()
        .key_id;
    kms.put_alias("alias/payroll", &sym).unwrap();
    let ct1 = kms
        .encrypt(&sym, b"v1 secret", &Context::new(), None)
        .unwrap();
    kms.rotate_key(&sym).unwrap();
    let ct2 = kms
        .encrypt(&sym, b"v2 secret", &Context::new(), None)
        .unwrap();
    let mut req = CreateKey::new(KeySpec::EccNistP256);
    req.usage = Some(KeyUsage::SignVerify);
    let ec = kms.create_key(req).unwrap().key_id;
    let public = kms.public_key(&ec).unwrap();
    // The root key rotates after the keys were made: the backup must still carry everything.
    kms.rotate_root().unwrap();
    write_audit(&kms, 0, 5);
    let backup = kms.backup().unwrap();
    // No plaintext of any record is visible in the backup.
    assert!(!backup.windows(9).any(|w| w == b"v1 secret"));
    assert!(!backup.windows(13).any(|w| w == b"alias/payroll"));

    // Disaster: a new machine, an empty database.
    let dir = tempfile::tempdir().unwrap();
    let fresh = std::sync::Arc::new(open_at(&dir.path().join("new.db"), &h.clock));
    assert!(!fresh.status().initialized);
    // Without shares it says what it needs; with too few it refuses; nothing changes either way.
    let err = fresh.restore(&backup, None, false, &[]).unwrap_err();
    assert!(
        err.message().contains("2 unseal shares"),
        "{}",
        err.message()
    );
    assert_eq!(
        code(fresh.restore(&backup, Some(&h.shares[..1]), false, &[])),
        ErrorCode::ValidationError
    );
    assert!(!fresh.status().initialized);

    let done = fresh
        .restore(&backup, Some(&h.shares[1..]), false, &[])
        .unwrap();
    assert_eq!(done.restored_keys, 2);
    assert!(done.initialized);
    let status = fresh.status();
    assert!(status.initialized && !status.sealed);
    for (ct, plain) in [(&ct1, &b"v1 secret"[..]), (&ct2, &b"v2 secret"[..])] {
        let d = fresh
            .decrypt(None, &ct.ciphertext, &Context::new(), None)
            .unwrap();
        assert_eq!(d.plaintext.expose(), plain);
    }
    assert_eq!(fresh.describe_key("alias/payroll").unwrap().key_id, sym);
    assert_eq!(fresh.public_key(&ec).unwrap().der, public.der);
    let sig = fresh
        .sign(&ec, SignInput::Message(b"m"), SigningAlgorithm::EcdsaSha256)
        .unwrap();
    assert!(kms
        .verify(
            &ec,
            SignInput::Message(b"m"),
            &sig.signature,
            SigningAlgorithm::EcdsaSha256,
            None
        )
        .unwrap());
    // The audit chain came along and goes on: the next record continues it, and it verifies whole.
    write_audit(&fresh, 100, 3);
    let v = fresh.verify_audit().unwrap();
    assert!(v.valid, "{v:?}");
    assert_eq!(v.records, 8);
    // After a restart the node unseals with the original shares.
    drop(fresh);
    let again = open_at(&dir.path().join("new.db"), &h.clock);
    again.unseal(&h.shares[0]).unwrap();
    assert!(!again.unseal(&h.shares[2]).unwrap().sealed);
    let d = again
        .decrypt(None, &ct2.ciphertext, &Context::new(), None)
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"v2 secret");
    // A restored node refuses to be restored over as if fresh.
    assert_eq!(
        code(again.restore(&backup, Some(&h.shares[1..]), false, &[])),
        ErrorCode::ValidationError
    );
}

#[test]
fn corrupted_truncated_and_foreign_backups_are_refused_and_change_nothing() {
    let h = harness();
    let sym = h
        .kms
        .create_key(CreateKey::new(KeySpec::SymmetricDefault))
        .unwrap()
        .key_id;
    let backup = h.kms.backup().unwrap();
    let other = harness();
    other
        .kms
        .create_key(CreateKey::new(KeySpec::SymmetricDefault))
        .unwrap();
    let foreign = other.kms.backup().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let fresh = open_at(&dir.path().join("new.db"), &h.clock);
    let shares = &h.shares[..2];
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("not a backup", b"{\"keys\": []}".to_vec()),
        ("truncated", backup[..backup.len() - 1].to_vec()),
        ("cut in the header", backup[..20].to_vec()),
        ("another cluster's", foreign.clone()),
    ];
    for i in [0, 9, 40, backup.len() / 2, backup.len() - 1] {
        let mut b = backup.clone();
        b[i] ^= 0x01;
        cases.push(("flipped", b));
    }
    for (what, bad) in &cases {
        let err = fresh.restore(bad, Some(shares), false, &[]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ValidationError, "{what}");
        assert!(
            err.message().contains("nothing was changed") || err.message().contains("shares"),
            "{what}: {}",
            err.message()
        );
        assert!(!fresh.status().initialized, "{what}");
    }
    // Into the running service, the foreign backup fails authentication under its root of trust.
    let err = h.kms.restore(&foreign, None, true, &[]).unwrap_err();
    assert!(
        err.message().contains("another cluster"),
        "{}",
        err.message()
    );
    assert_eq!(
        h.kms
            .list_keys(&KeyFilter::default(), None, 100)
            .unwrap()
            .0
            .len(),
        1
    );
    assert_eq!(h.kms.describe_key(&sym).unwrap().state, KeyState::Enabled);
}

#[test]
fn a_restore_into_a_running_service_never_silently_rolls_a_key_back() {
    let h = harness();
    let a = h
        .kms
        .create_key(CreateKey::new(KeySpec::SymmetricDefault))
        .unwrap()
        .key_id;
    let ct = h
        .kms
        .encrypt(&a, b"keep me", &Context::new(), None)
        .unwrap();
    let backup = h.kms.backup().unwrap();
    // After the backup: a disabled, a rotated root, a new key.
    h.kms.disable_key(&a).unwrap();
    h.kms.rotate_root().unwrap();
    let b = h
        .kms
        .create_key(CreateKey::new(KeySpec::SymmetricDefault))
        .unwrap()
        .key_id;
    // The store is newer for `a`: refused as a whole, nothing changed.
    let err = h.kms.restore(&backup, None, false, &[]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidState);
    assert!(err.message().contains("force"), "{}", err.message());
    assert_eq!(h.kms.describe_key(&a).unwrap().state, KeyState::Disabled);
    // Shares are for fresh nodes only.
    assert_eq!(
        code(h.kms.restore(&backup, Some(&h.shares), true, &[])),
        ErrorCode::ValidationError
    );
    // Forced: `a` is back as it was, re-wrapped under the current root; `b` is untouched.
    let done = h.kms.restore(&backup, None, true, &[]).unwrap();
    assert_eq!(done.restored_keys, 1);
    assert_eq!(h.kms.describe_key(&a).unwrap().state, KeyState::Enabled);
    let d = h
        .kms
        .decrypt(None, &ct.ciphertext, &Context::new(), None)
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"keep me");
    assert_eq!(h.kms.describe_key(&b).unwrap().state, KeyState::Enabled);
    // A restart reads the restored versions back under the current root.
    let restarted = h.restart();
    let d = restarted
        .decrypt(None, &ct.ciphertext, &Context::new(), None)
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"keep me");
    // Restoring the same backup again changes nothing.
    assert_eq!(
        h.kms
            .restore(&backup, None, false, &[])
            .unwrap()
            .restored_keys,
        0
    );
}

#[test]
fn a_pruned_log_restores_and_still_verifies_from_its_anchor() {
    let h = harness();
    let kms = std::sync::Arc::new(h.restart());
    write_audit(&kms, 0, 10);
    let pruned = kms.prune_audit(6, i64::MAX).unwrap();
    assert_eq!((pruned.pruned, pruned.pruned_through), (6, 6));
    let backup = kms.backup().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let fresh = std::sync::Arc::new(open_at(&dir.path().join("new.db"), &h.clock));
    fresh
        .restore(&backup, Some(&h.shares[1..]), false, &[])
        .unwrap();
    let v = fresh.verify_audit().unwrap();
    assert!(v.valid, "{v:?}");
    assert_eq!((v.records, v.pruned_through), (4, Some(6)));
    write_audit(&fresh, 100, 2);
    let v = fresh.verify_audit().unwrap();
    assert!(v.valid && v.records == 6, "{v:?}");
}
