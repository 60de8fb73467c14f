//! Property tests of the lifecycle: random sequences of operations never reach an illegal state, never lose
//! a decryptable version, and a refused operation changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use keyward_core::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Encrypt,
    Rotate,
    DisableKey,
    EnableKey,
    Version(u32, VersionAction),
    SetPrimary(u32),
    MinDecryption(u32),
    ScheduleDeletion(u32),
    CancelDeletion,
    AdvanceDays(i64),
    RunDue,
    Restart,
    RotateRoot,
    SealUnseal,
}

fn action() -> impl Strategy<Value = VersionAction> {
    prop_oneof![
        Just(VersionAction::Enable),
        Just(VersionAction::Disable),
        Just(VersionAction::Archive),
        Just(VersionAction::Restore),
        Just(VersionAction::Destroy),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Encrypt),
        3 => Just(Op::Rotate),
        1 => Just(Op::DisableKey),
        1 => Just(Op::EnableKey),
        6 => (1u32..6, action()).prop_map(|(v, a)| Op::Version(v, a)),
        2 => (1u32..6).prop_map(Op::SetPrimary),
        1 => (0u32..6).prop_map(Op::MinDecryption),
        1 => (5u32..32).prop_map(Op::ScheduleDeletion),
        1 => Just(Op::CancelDeletion),
        1 => (1i64..40).prop_map(Op::AdvanceDays),
        1 => Just(Op::RunDue),
        1 => Just(Op::Restart),
        1 => Just(Op::RotateRoot),
        1 => Just(Op::SealUnseal),
    ]
}

type Snapshot = (KeyInfo, Vec<VersionInfo>);

fn snapshot(kms: &Kms, id: &str) -> Snapshot {
    (
        kms.describe_key(id).unwrap(),
        kms.list_versions(id).unwrap(),
    )
}

fn check_invariants(kms: &Kms, id: &str, cts: &[(Vec<u8>, u32, Vec<u8>)]) {
    let (key, versions) = snapshot(kms, id);
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v.version as usize, i + 1, "versions are contiguous");
        assert_eq!(v.state == VersionState::Destroyed, v.destroyed_at.is_some());
    }
    if key.state == KeyState::Destroyed {
        assert!(
            versions.iter().all(|v| v.state == VersionState::Destroyed),
            "destroyed key kept a version"
        );
    } else {
        let primary = &versions[key.primary_version as usize - 1];
        assert_eq!(
            primary.state,
            VersionState::Enabled,
            "primary must be Enabled"
        );
        assert!(
            1 <= key.min_decryption_version && key.min_decryption_version <= key.primary_version
        );
    }
    for (ct, version, pt) in cts {
        let v = &versions[*version as usize - 1];
        let expect_ok = key.state == KeyState::Enabled
            && matches!(v.state, VersionState::Enabled | VersionState::Archived)
            && *version >= key.min_decryption_version;
        let got = kms.decrypt(None, ct, &Context::new(), None);
        if expect_ok {
            let got = got.unwrap_or_else(|e| panic!("version {version} should decrypt: {e}"));
            assert_eq!(got.plaintext.expose(), &pt[..]);
        } else {
            let code = got.expect_err("should be refused").code();
            let expected = match (key.state, v.state) {
                (KeyState::Disabled, _) => ErrorCode::KeyDisabled,
                (KeyState::PendingDeletion, _) => ErrorCode::KeyPendingDeletion,
                (KeyState::Destroyed, _) => ErrorCode::KeyDestroyed,
                (_, VersionState::Disabled) => ErrorCode::KeyDisabled,
                (_, VersionState::Destroyed) => ErrorCode::KeyDestroyed,
                _ => ErrorCode::InvalidState,
            };
            assert_eq!(
                code, expected,
                "refusal code for version {version} ({:?}, {:?})",
                key.state, v.state
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_breaks_the_lifecycle(ops in prop::collection::vec(op(), 1..40)) {
        let h = common::harness();
        let mut kms = h.kms_clone();
        let mut req = CreateKey::new(KeySpec::Aes256);
        req.rotation_period_days = Some(30);
        let id = kms.create_key(req).unwrap().key_id;
        let mut cts: Vec<(Vec<u8>, u32, Vec<u8>)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let before = snapshot(&kms, &id);
            let result: Result<(), KmsError> = match &op {
                Op::Encrypt => kms.encrypt(&id, &[step as u8; 9], &Context::new(), None).map(|e| {
                    cts.push((e.ciphertext, e.version, vec![step as u8; 9]));
                }),
                Op::Rotate => kms.rotate_key(&id).map(drop),
                Op::DisableKey => kms.disable_key(&id).map(drop),
                Op::EnableKey => kms.enable_key(&id).map(drop),
                Op::Version(v, a) => kms.version_action(&id, *v, *a).map(drop),
                Op::SetPrimary(v) => kms.set_primary(&id, *v).map(drop),
                Op::MinDecryption(v) => kms
                    .update_key(&id, UpdateKey { min_decryption_version: Some(*v), ..Default::default() })
                    .map(drop),
                Op::ScheduleDeletion(d) => kms.schedule_deletion(&id, *d).map(drop),
                Op::CancelDeletion => kms.cancel_deletion(&id).map(drop),
                Op::AdvanceDays(d) => { h.clock.advance(d * DAY); Ok(()) }
                Op::RunDue => kms.run_due_work().map(drop),
                Op::Restart => { kms = h.restart(); Ok(()) }
                Op::RotateRoot => kms.rotate_root().map(drop),
                Op::SealUnseal => {
                    kms.seal().unwrap();
                    prop_assert_eq!(kms.encrypt(&id, b"x", &Context::new(), None).unwrap_err().code(), ErrorCode::Sealed);
                    kms.unseal(&h.shares[0]).unwrap();
                    kms.unseal(&h.shares[1]).map(drop)
                }
            };
            if result.is_err() && !matches!(op, Op::AdvanceDays(_) | Op::RunDue) {
                prop_assert_eq!(&snapshot(&kms, &id), &before, "refused {:?} changed the key", op);
            }
            check_invariants(&kms, &id, &cts);
        }
    }
}
