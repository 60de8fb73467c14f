//! The KMS engine end to end on the software HSM and SQLite: lifecycle rules, every operation, sealing,
//! restarts, root rotation and BYOK.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::harness;
use keyward_core::*;

fn ctx(pairs: &[(&str, &str)]) -> Context {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether this build offers the spec: a FIPS build refuses those outside the validated module (their
/// refusal is tested in `specs_outside_the_fips_module_are_refused_in_a_fips_build`).
fn in_this_build(spec: KeySpec) -> bool {
    !keyward_hsm_soft::FIPS_BUILD || spec.fips_approved()
}

fn code<T: std::fmt::Debug>(r: KmsResult<T>) -> ErrorCode {
    r.expect_err("expected an error").code()
}

fn sym(kms: &Kms) -> String {
    kms.create_key(CreateKey::new(KeySpec::SymmetricDefault))
        .unwrap()
        .key_id
}

#[test]
fn symmetric_round_trip_binds_context_and_header() {
    let h = harness();
    let kms = &h.kms;
    let id = sym(kms);
    let c = ctx(&[("tenant", "acme"), ("purpose", "invoices")]);
    let enc = kms.encrypt(&id, b"card 4111", &c, None).unwrap();
    assert_eq!(enc.version, 1);
    let dec = kms.decrypt(None, &enc.ciphertext, &c, None).unwrap();
    assert_eq!(dec.plaintext.expose(), b"card 4111");
    assert_eq!(&*dec.key_id, id.as_str());
    // Named key works too; another key does not.
    assert!(kms.decrypt(Some(&id), &enc.ciphertext, &c, None).is_ok());
    let other = sym(kms);
    assert_eq!(
        code(kms.decrypt(Some(&other), &enc.ciphertext, &c, None)),
        ErrorCode::IncorrectKeyUsage
    );
    // Wrong, missing or extra context.
    for bad in [
        ctx(&[("tenant", "acme")]),
        Context::new(),
        ctx(&[("tenant", "acme"), ("purpose", "invoiceS")]),
    ] {
        assert_eq!(
            code(kms.decrypt(None, &enc.ciphertext, &bad, None)),
            ErrorCode::InvalidCiphertext
        );
    }
    // Any flipped byte, truncation or extension fails.
    for i in 0..enc.ciphertext.len() {
        let mut bad = enc.ciphertext.clone();
        bad[i] ^= 0x01;
        let r = kms.decrypt(None, &bad, &c, None);
        assert!(r.is_err(), "flip at {i} accepted");
    }
    assert_eq!(
        code(kms.decrypt(None, &enc.ciphertext[..30], &c, None)),
        ErrorCode::InvalidCiphertext
    );
    assert_eq!(
        code(kms.decrypt(None, &[], &c, None)),
        ErrorCode::InvalidCiphertext
    );
    let mut longer = enc.ciphertext.clone();
    longer.push(0);
    assert_eq!(
        code(kms.decrypt(None, &longer, &c, None)),
        ErrorCode::InvalidCiphertext
    );
    // Header fields are authenticated: moving the ciphertext to another key id is caught.
    let mut moved = enc.ciphertext.clone();
    moved[2..18].copy_from_slice(uuid_bytes(&other).as_slice());
    assert_eq!(
        code(kms.decrypt(None, &moved, &c, None)),
        ErrorCode::InvalidCiphertext
    );
}

fn uuid_bytes(id: &str) -> Vec<u8> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_symmetric_spec_encrypts() {
    let h = harness();
    for spec in [
        KeySpec::SymmetricDefault,
        KeySpec::Aes128,
        KeySpec::Aes256,
        KeySpec::Sm4,
        KeySpec::Tdes,
    ]
    .into_iter()
    .filter(|s| in_this_build(*s))
    {
        let mut req = CreateKey::new(spec);
        req.allow_legacy = spec == KeySpec::Tdes;
        let id = h.kms.create_key(req).unwrap().key_id;
        let enc = h.kms.encrypt(&id, b"x", &Context::new(), None).unwrap();
        assert_eq!(
            h.kms
                .decrypt(None, &enc.ciphertext, &Context::new(), None)
                .unwrap()
                .plaintext
                .expose(),
            b"x"
        );
    }
    assert_eq!(
        code(h.kms.create_key(CreateKey::new(KeySpec::Tdes))),
        ErrorCode::ValidationError
    );
}

#[test]
fn payload_limits_and_bad_input() {
    let h = harness();
    let id = sym(&h.kms);
    assert_eq!(
        code(
            h.kms
                .encrypt(&id, &vec![0u8; 64 * 1024 + 1], &Context::new(), None)
        ),
        ErrorCode::PayloadTooLarge
    );
    assert!(h
        .kms
        .encrypt(&id, &vec![0u8; 64 * 1024], &Context::new(), None)
        .is_ok());
    assert_eq!(
        code(h.kms.encrypt("not-a-key", b"x", &Context::new(), None)),
        ErrorCode::ValidationError
    );
    assert_eq!(
        code(h.kms.encrypt(
            "6f0c4b0e-0000-4000-8000-000000000000",
            b"x",
            &Context::new(),
            None
        )),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(h.kms.encrypt("alias/none", b"x", &Context::new(), None)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(h.kms.encrypt(
            &id,
            b"x",
            &Context::new(),
            Some(EncryptionAlgorithm::RsaesOaepSha256)
        )),
        ErrorCode::IncorrectKeyUsage
    );
    assert_eq!(
        code(
            h.kms
                .sign(&id, SignInput::Message(b"x"), SigningAlgorithm::EcdsaSha256)
        ),
        ErrorCode::IncorrectKeyUsage
    );
    let mut req = CreateKey::new(KeySpec::Hmac256);
    req.usage = Some(KeyUsage::EncryptDecrypt);
    assert_eq!(code(h.kms.create_key(req)), ErrorCode::IncorrectKeyUsage);
    assert_eq!(code(h.kms.random(0)), ErrorCode::ValidationError);
    assert_eq!(code(h.kms.random(1025)), ErrorCode::ValidationError);
    assert_eq!(h.kms.random(1024).unwrap().len(), 1024);
}

#[test]
fn rotation_keeps_old_ciphertexts_and_versions_follow_the_rules() {
    let h = harness();
    let kms = &h.kms;
    let id = sym(kms);
    let c1 = kms.encrypt(&id, b"one", &Context::new(), None).unwrap();
    let info = kms.rotate_key(&id).unwrap();
    assert_eq!(info.primary_version, 2);
    let c2 = kms.encrypt(&id, b"two", &Context::new(), None).unwrap();
    assert_eq!(c2.version, 2);
    assert_eq!(
        kms.decrypt(None, &c1.ciphertext, &Context::new(), None)
            .unwrap()
            .plaintext
            .expose(),
        b"one"
    );

    // The primary cannot be disabled, archived or destroyed.
    for a in [
        VersionAction::Disable,
        VersionAction::Archive,
        VersionAction::Destroy,
    ] {
        assert_eq!(code(kms.version_action(&id, 2, a)), ErrorCode::InvalidState);
    }
    // Archived still decrypts but cannot be primary until restored.
    assert_eq!(
        kms.version_action(&id, 1, VersionAction::Archive)
            .unwrap()
            .state,
        VersionState::Archived
    );
    assert!(kms
        .decrypt(None, &c1.ciphertext, &Context::new(), None)
        .is_ok());
    assert_eq!(code(kms.set_primary(&id, 1)), ErrorCode::InvalidState);
    assert_eq!(
        code(kms.version_action(&id, 1, VersionAction::Enable)),
        ErrorCode::InvalidState
    );
    kms.version_action(&id, 1, VersionAction::Restore).unwrap();
    // Roll back, encrypt with v1, roll forward.
    assert_eq!(kms.set_primary(&id, 1).unwrap().primary_version, 1);
    assert_eq!(
        kms.encrypt(&id, b"x", &Context::new(), None)
            .unwrap()
            .version,
        1
    );
    kms.set_primary(&id, 2).unwrap();
    // Disabled version refuses decryption with KeyDisabled; enabling brings it back.
    kms.version_action(&id, 1, VersionAction::Disable).unwrap();
    assert_eq!(
        code(kms.decrypt(None, &c1.ciphertext, &Context::new(), None)),
        ErrorCode::KeyDisabled
    );
    assert_eq!(code(kms.set_primary(&id, 1)), ErrorCode::KeyDisabled);
    kms.version_action(&id, 1, VersionAction::Enable).unwrap();
    // min_decryption_version cuts off old versions, and bounds the primary.
    kms.update_key(
        &id,
        UpdateKey {
            min_decryption_version: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        code(kms.decrypt(None, &c1.ciphertext, &Context::new(), None)),
        ErrorCode::InvalidState
    );
    assert_eq!(code(kms.set_primary(&id, 1)), ErrorCode::InvalidState);
    assert_eq!(
        code(kms.update_key(
            &id,
            UpdateKey {
                min_decryption_version: Some(3),
                ..Default::default()
            }
        )),
        ErrorCode::ValidationError
    );
    kms.update_key(
        &id,
        UpdateKey {
            min_decryption_version: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    // Destroy erases v1 for good.
    let v = kms.version_action(&id, 1, VersionAction::Destroy).unwrap();
    assert_eq!(v.state, VersionState::Destroyed);
    assert!(v.destroyed_at.is_some());
    assert_eq!(
        code(kms.decrypt(None, &c1.ciphertext, &Context::new(), None)),
        ErrorCode::KeyDestroyed
    );
    assert_eq!(
        code(kms.version_action(&id, 1, VersionAction::Restore)),
        ErrorCode::KeyDestroyed
    );
    assert_eq!(
        code(kms.version_action(&id, 9, VersionAction::Enable)),
        ErrorCode::NotFound
    );
    assert_eq!(
        kms.decrypt(None, &c2.ciphertext, &Context::new(), None)
            .unwrap()
            .plaintext
            .expose(),
        b"two"
    );
    let versions = kms.list_versions(&id).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.state).collect::<Vec<_>>(),
        vec![VersionState::Destroyed, VersionState::Enabled]
    );
}

#[test]
fn key_states_refuse_use_with_the_right_code() {
    let h = harness();
    let kms = &h.kms;
    let id = sym(kms);
    let c = kms.encrypt(&id, b"p", &Context::new(), None).unwrap();
    kms.disable_key(&id).unwrap();
    assert_eq!(
        code(kms.encrypt(&id, b"p", &Context::new(), None)),
        ErrorCode::KeyDisabled
    );
    assert_eq!(
        code(kms.decrypt(None, &c.ciphertext, &Context::new(), None)),
        ErrorCode::KeyDisabled
    );
    assert_eq!(code(kms.rotate_key(&id)), ErrorCode::KeyDisabled);
    kms.enable_key(&id).unwrap();
    assert!(kms
        .decrypt(None, &c.ciphertext, &Context::new(), None)
        .is_ok());

    assert_eq!(
        code(kms.schedule_deletion(&id, 6)),
        ErrorCode::ValidationError
    );
    assert_eq!(
        code(kms.schedule_deletion(&id, 31)),
        ErrorCode::ValidationError
    );
    let info = kms.schedule_deletion(&id, 7).unwrap();
    assert_eq!(info.state, KeyState::PendingDeletion);
    assert_eq!(info.deletion_date, Some(common::T0 + 7 * DAY));
    assert_eq!(
        code(kms.encrypt(&id, b"p", &Context::new(), None)),
        ErrorCode::KeyPendingDeletion
    );
    assert_eq!(
        code(kms.decrypt(None, &c.ciphertext, &Context::new(), None)),
        ErrorCode::KeyPendingDeletion
    );
    assert_eq!(code(kms.enable_key(&id)), ErrorCode::KeyPendingDeletion);
    assert_eq!(
        code(kms.schedule_deletion(&id, 7)),
        ErrorCode::KeyPendingDeletion
    );
    let info = kms.cancel_deletion(&id).unwrap();
    assert_eq!((info.state, info.deletion_date), (KeyState::Disabled, None));
    assert_eq!(code(kms.cancel_deletion(&id)), ErrorCode::InvalidState);

    // Past the deletion date the service destroys the key and keeps a tombstone.
    kms.put_alias("alias/doomed", &id).unwrap();
    kms.schedule_deletion(&id, 30).unwrap();
    h.clock.advance(30 * DAY - 1);
    assert!(kms.run_due_work().unwrap().destroyed.is_empty());
    h.clock.advance(1);
    assert_eq!(kms.run_due_work().unwrap().destroyed, vec![id.clone()]);
    let info = kms.describe_key(&id).unwrap();
    assert_eq!(info.state, KeyState::Destroyed);
    assert_eq!(
        code(kms.decrypt(None, &c.ciphertext, &Context::new(), None)),
        ErrorCode::KeyDestroyed
    );
    assert_eq!(code(kms.enable_key(&id)), ErrorCode::KeyDestroyed);
    assert_eq!(code(kms.cancel_deletion(&id)), ErrorCode::KeyDestroyed);
    assert!(kms
        .list_versions(&id)
        .unwrap()
        .iter()
        .all(|v| v.state == VersionState::Destroyed));
    assert_eq!(code(kms.describe_key("alias/doomed")), ErrorCode::NotFound);
}

#[test]
fn automatic_rotation_follows_the_period() {
    let h = harness();
    let mut req = CreateKey::new(KeySpec::Aes256);
    req.rotation_period_days = Some(90);
    let info = h.kms.create_key(req).unwrap();
    assert_eq!(info.next_rotation_at, Some(common::T0 + 90 * DAY));
    h.clock.advance(89 * DAY);
    assert!(h.kms.run_due_work().unwrap().rotated.is_empty());
    h.clock.advance(DAY);
    assert_eq!(
        h.kms.run_due_work().unwrap().rotated,
        vec![info.key_id.clone()]
    );
    let after = h.kms.describe_key(&info.key_id).unwrap();
    assert_eq!(after.primary_version, 2);
    assert_eq!(after.last_rotated_at, Some(common::T0 + 90 * DAY));
    assert_eq!(after.next_rotation_at, Some(common::T0 + 180 * DAY));
    // A second run in the same instant does nothing.
    assert!(h.kms.run_due_work().unwrap().rotated.is_empty());
    // Disabled keys are not rotated.
    h.kms.disable_key(&info.key_id).unwrap();
    h.clock.advance(365 * DAY);
    assert!(h.kms.run_due_work().unwrap().rotated.is_empty());
    let mut bad = CreateKey::new(KeySpec::Aes256);
    bad.rotation_period_days = Some(0);
    assert_eq!(code(h.kms.create_key(bad)), ErrorCode::ValidationError);
}

#[test]
fn aliases_resolve_move_and_collide() {
    let h = harness();
    let kms = &h.kms;
    let mut req = CreateKey::new(KeySpec::SymmetricDefault);
    req.alias = Some("alias/payments".into());
    let a = kms.create_key(req).unwrap();
    assert_eq!(a.alias.as_deref(), Some("alias/payments"));
    let mut dup = CreateKey::new(KeySpec::SymmetricDefault);
    dup.alias = Some("alias/payments".into());
    assert_eq!(code(kms.create_key(dup)), ErrorCode::AlreadyExists);
    let c = kms
        .encrypt("alias/payments", b"x", &Context::new(), None)
        .unwrap();
    assert_eq!(&*c.key_id, a.key_id.as_str());
    assert!(kms
        .encrypt("alias:payments", b"x", &Context::new(), None)
        .is_ok());
    let b = sym(kms);
    kms.put_alias("alias/payments", &b).unwrap();
    assert_eq!(
        &*kms
            .encrypt("alias/payments", b"x", &Context::new(), None)
            .unwrap()
            .key_id,
        b.as_str()
    );
    kms.delete_alias("alias/payments").unwrap();
    assert_eq!(
        code(kms.delete_alias("alias/payments")),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(kms.encrypt("alias/payments", b"x", &Context::new(), None)),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(kms.put_alias("alias/bad name", &b)),
        ErrorCode::ValidationError
    );
    assert_eq!(
        code(kms.put_alias("alias/x", "6f0c4b0e-0000-4000-8000-000000000000")),
        ErrorCode::NotFound
    );
}

#[test]
fn listing_pages_and_filters() {
    let h = harness();
    let kms = &h.kms;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut req = CreateKey::new(if i % 2 == 0 {
            KeySpec::Aes256
        } else {
            KeySpec::Hmac256
        });
        req.tags = BTreeMap::from([("team".into(), if i < 3 { "a".into() } else { "b".into() })]);
        ids.push(kms.create_key(req).unwrap().key_id);
    }
    kms.disable_key(&ids[0]).unwrap();
    let mut all = Vec::new();
    let mut next = None;
    loop {
        let (page, n) = kms
            .list_keys(&KeyFilter::default(), next.as_deref(), 3)
            .unwrap();
        all.extend(page.into_iter().map(|k| k.key_id));
        next = n;
        if next.is_none() {
            break;
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    let f = KeyFilter {
        spec: Some(KeySpec::Hmac256),
        ..Default::default()
    };
    assert_eq!(kms.list_keys(&f, None, 100).unwrap().0.len(), 3);
    let f = KeyFilter {
        state: Some(KeyState::Disabled),
        ..Default::default()
    };
    assert_eq!(kms.list_keys(&f, None, 100).unwrap().0.len(), 1);
    let f = KeyFilter {
        tag: Some(("team".into(), "a".into())),
        ..Default::default()
    };
    assert_eq!(kms.list_keys(&f, None, 100).unwrap().0.len(), 3);
}

#[test]
fn sealing_drops_everything_and_shares_bring_it_back() {
    let h = harness();
    let id = sym(&h.kms);
    let c = h
        .kms
        .encrypt(&id, b"sealed away", &Context::new(), None)
        .unwrap();
    h.kms.seal().unwrap();
    assert!(h.kms.status().sealed);
    assert_eq!(
        code(h.kms.encrypt(&id, b"x", &Context::new(), None)),
        ErrorCode::Sealed
    );
    assert_eq!(
        code(h.kms.decrypt(None, &c.ciphertext, &Context::new(), None)),
        ErrorCode::Sealed
    );
    assert_eq!(
        code(h.kms.create_key(CreateKey::new(KeySpec::Aes256))),
        ErrorCode::Sealed
    );
    // One share is progress, the same share twice is still one.
    assert_eq!(h.kms.unseal(&h.shares[1]).unwrap().progress, 1);
    assert_eq!(h.kms.unseal(&h.shares[1]).unwrap().progress, 1);
    assert!(!h.kms.unseal(&h.shares[2]).unwrap().sealed);
    assert_eq!(
        h.kms
            .decrypt(None, &c.ciphertext, &Context::new(), None)
            .unwrap()
            .plaintext
            .expose(),
        b"sealed away"
    );
    // Init happens once.
    assert_eq!(code(h.kms.init_shamir(3, 2)), ErrorCode::InvalidState);
    // Shares of another deployment do not unseal this one, and reset the progress.
    let other = common::harness();
    h.kms.seal().unwrap();
    h.kms.unseal(&other.shares[0]).unwrap();
    assert_eq!(
        code(h.kms.unseal(&other.shares[1])),
        ErrorCode::ValidationError
    );
    assert_eq!(h.kms.status().progress, 0);
    assert!(h.kms.status().sealed);
    assert_eq!(
        code(h.kms.unseal("not base64!")),
        ErrorCode::ValidationError
    );
}

#[test]
fn restart_keeps_every_key_and_ciphertext() {
    let h = harness();
    let id = sym(&h.kms);
    let c1 = h
        .kms
        .encrypt(&id, b"before restart", &Context::new(), None)
        .unwrap();
    h.kms.rotate_key(&id).unwrap();
    let signer = h
        .kms
        .create_key(CreateKey::new(KeySpec::EccNistP256))
        .unwrap()
        .key_id;
    let sig = h
        .kms
        .sign(
            &signer,
            SignInput::Message(b"m"),
            SigningAlgorithm::EcdsaSha256,
        )
        .unwrap();
    let restarted = h.restart();
    assert_eq!(
        restarted
            .decrypt(None, &c1.ciphertext, &Context::new(), None)
            .unwrap()
            .plaintext
            .expose(),
        b"before restart"
    );
    assert_eq!(restarted.describe_key(&id).unwrap().primary_version, 2);
    assert!(restarted
        .verify(
            &signer,
            SignInput::Message(b"m"),
            &sig.signature,
            SigningAlgorithm::EcdsaSha256,
            None
        )
        .unwrap());
}

#[test]
fn root_rotation_rewraps_and_keeps_ciphertexts() {
    let h = harness();
    let ids: Vec<String> = (0..3).map(|_| sym(&h.kms)).collect();
    let mut req = CreateKey::new(KeySpec::Rsa2048);
    req.usage = Some(KeyUsage::SignVerify);
    let rsa = h.kms.create_key(req).unwrap().key_id;
    let cts: Vec<_> = ids
        .iter()
        .map(|id| {
            h.kms
                .encrypt(id, id.as_bytes(), &Context::new(), None)
                .unwrap()
        })
        .collect();
    assert_eq!(h.kms.rotate_root().unwrap(), 2);
    for (id, c) in ids.iter().zip(&cts) {
        assert_eq!(
            h.kms
                .decrypt(None, &c.ciphertext, &Context::new(), None)
                .unwrap()
                .plaintext
                .expose(),
            id.as_bytes()
        );
    }
    let restarted = h.restart();
    for (id, c) in ids.iter().zip(&cts) {
        assert_eq!(
            restarted
                .decrypt(None, &c.ciphertext, &Context::new(), None)
                .unwrap()
                .plaintext
                .expose(),
            id.as_bytes()
        );
    }
    assert!(restarted
        .sign(
            &rsa,
            SignInput::Message(b"m"),
            SigningAlgorithm::RsassaPssSha256
        )
        .is_ok());
}

#[test]
fn asymmetric_operations_through_the_engine() {
    let h = harness();
    let kms = &h.kms;
    for spec in [
        KeySpec::Rsa2048,
        KeySpec::EccNistP256,
        KeySpec::EccNistP384,
        KeySpec::EccNistP521,
        KeySpec::EccSecgP256k1,
        KeySpec::Ed25519,
        KeySpec::Sm2,
    ]
    .into_iter()
    .filter(|s| in_this_build(*s))
    {
        let mut req = CreateKey::new(spec);
        req.usage = Some(KeyUsage::SignVerify);
        let id = kms.create_key(req).unwrap().key_id;
        for &alg in spec.signing_algorithms() {
            let s = kms.sign(&id, SignInput::Message(b"hello"), alg).unwrap();
            assert!(
                kms.verify(&id, SignInput::Message(b"hello"), &s.signature, alg, None)
                    .unwrap(),
                "{spec} {alg}"
            );
            assert!(!kms
                .verify(&id, SignInput::Message(b"hellO"), &s.signature, alg, None)
                .unwrap());
        }
        let pk = kms.public_key(&id).unwrap();
        assert_eq!(pk.spec, spec);
        assert!(!pk.der.is_empty());
    }
    // RSA and SM2 encryption; old versions still decrypt after rotation.
    for (spec, alg) in [
        (KeySpec::Rsa2048, EncryptionAlgorithm::RsaesOaepSha256),
        (KeySpec::Sm2, EncryptionAlgorithm::Sm2Pke),
    ]
    .into_iter()
    .filter(|(s, _)| in_this_build(*s))
    {
        let mut req = CreateKey::new(spec);
        req.usage = Some(KeyUsage::EncryptDecrypt);
        let id = kms.create_key(req).unwrap().key_id;
        let c = kms
            .encrypt(&id, b"asym", &Context::new(), Some(alg))
            .unwrap();
        assert_eq!(
            code(kms.encrypt(&id, b"asym", &Context::new(), None)),
            ErrorCode::ValidationError
        );
        assert_eq!(
            code(kms.encrypt(&id, b"asym", &ctx(&[("a", "b")]), Some(alg))),
            ErrorCode::ValidationError
        );
        assert_eq!(
            code(kms.decrypt(None, &c.ciphertext, &Context::new(), None)),
            ErrorCode::InvalidCiphertext
        );
        kms.rotate_key(&id).unwrap();
        let d = kms
            .decrypt(Some(&id), &c.ciphertext, &Context::new(), Some(alg))
            .unwrap();
        assert_eq!((d.plaintext.expose(), d.version), (&b"asym"[..], 1));
    }
    // Verify with an explicit version after rotation.
    let id = kms
        .create_key(CreateKey::new(KeySpec::Ed25519))
        .unwrap()
        .key_id;
    let s1 = kms
        .sign(&id, SignInput::Message(b"m"), SigningAlgorithm::Ed25519)
        .unwrap();
    kms.rotate_key(&id).unwrap();
    assert!(!kms
        .verify(
            &id,
            SignInput::Message(b"m"),
            &s1.signature,
            SigningAlgorithm::Ed25519,
            None
        )
        .unwrap());
    assert!(kms
        .verify(
            &id,
            SignInput::Message(b"m"),
            &s1.signature,
            SigningAlgorithm::Ed25519,
            Some(1)
        )
        .unwrap());
    assert_eq!(
        code(kms.verify(
            &id,
            SignInput::Message(b"m"),
            &s1.signature,
            SigningAlgorithm::Ed25519,
            Some(7)
        )),
        ErrorCode::NotFound
    );
    // ECDH.
    let mut req = CreateKey::new(KeySpec::EccNistP256);
    req.usage = Some(KeyUsage::KeyAgreement);
    let a = kms.create_key(req.clone()).unwrap().key_id;
    let b = kms.create_key(req).unwrap().key_id;
    let ab = kms.agree(&a, &kms.public_key(&b).unwrap().der).unwrap();
    let ba = kms.agree(&b, &kms.public_key(&a).unwrap().der).unwrap();
    assert_eq!(ab, ba);
    assert_eq!(code(kms.agree(&a, b"junk")), ErrorCode::ValidationError);
    assert_eq!(
        code(kms.sign(&a, SignInput::Message(b"x"), SigningAlgorithm::EcdsaSha256)),
        ErrorCode::IncorrectKeyUsage
    );
}

#[test]
fn mac_derive_data_keys_and_reencrypt() {
    let h = harness();
    let kms = &h.kms;
    let hm = kms
        .create_key(CreateKey::new(KeySpec::Hmac384))
        .unwrap()
        .key_id;
    let m = kms.mac(&hm, b"msg", MacAlgorithm::HmacSha384).unwrap();
    assert_eq!(m.mac.len(), 48);
    assert!(kms
        .verify_mac(&hm, b"msg", &m.mac, MacAlgorithm::HmacSha384)
        .unwrap());
    kms.rotate_key(&hm).unwrap();
    assert!(
        kms.verify_mac(&hm, b"msg", &m.mac, MacAlgorithm::HmacSha384)
            .unwrap(),
        "old MAC after rotation"
    );
    assert!(!kms
        .verify_mac(&hm, b"msG", &m.mac, MacAlgorithm::HmacSha384)
        .unwrap());
    assert_eq!(
        code(kms.mac(&hm, b"msg", MacAlgorithm::HmacSha256)),
        ErrorCode::IncorrectKeyUsage
    );

    let k = sym(kms);
    let d1 = kms.derive(&k, b"session-1", 32, true).unwrap();
    let d2 = kms.derive(&k, b"session-1", 32, true).unwrap();
    assert_eq!(d1.plaintext, d2.plaintext, "derivation is deterministic");
    let d3 = kms.derive(&k, b"session-2", 32, true).unwrap();
    assert_ne!(d1.plaintext, d3.plaintext);
    let opened = kms
        .decrypt(None, &d1.ciphertext, &Context::new(), None)
        .unwrap();
    assert_eq!(Some(opened.plaintext), d1.plaintext);
    assert_eq!(
        code(kms.derive(&k, b"x", 15, false)),
        ErrorCode::ValidationError
    );
    assert!(kms.derive(&k, b"x", 64, false).unwrap().plaintext.is_none());

    let c = ctx(&[("bucket", "logs")]);
    let dk = kms
        .generate_data_key(&k, KeySpec::Aes256, &c, true)
        .unwrap();
    let plain = dk.plaintext.clone().unwrap();
    assert_eq!(plain.len(), 32);
    assert_eq!(
        kms.decrypt(None, &dk.ciphertext, &c, None)
            .unwrap()
            .plaintext,
        plain
    );
    assert!(kms
        .generate_data_key(&k, KeySpec::Aes128, &c, false)
        .unwrap()
        .plaintext
        .is_none());
    assert_eq!(
        code(kms.generate_data_key(&k, KeySpec::Rsa2048, &c, false)),
        ErrorCode::ValidationError
    );

    let pair = kms
        .generate_data_key_pair(&k, KeySpec::EccNistP256, &c, true)
        .unwrap();
    let der = kms
        .decrypt(None, &pair.private_key_ciphertext, &c, None)
        .unwrap()
        .plaintext;
    assert_eq!(Some(der), pair.private_key_der);

    let k2 = sym(kms);
    let enc = kms.encrypt(&k, b"move me", &c, None).unwrap();
    let moved = kms
        .reencrypt(
            &k2,
            &enc.ciphertext,
            &c,
            Some(&ctx(&[("bucket", "archive")])),
        )
        .unwrap();
    assert_eq!(&*moved.key_id, k2.as_str());
    assert_eq!(
        kms.decrypt(
            None,
            &moved.ciphertext,
            &ctx(&[("bucket", "archive")]),
            None
        )
        .unwrap()
        .plaintext
        .expose(),
        b"move me"
    );
    assert_eq!(
        code(kms.reencrypt(&k2, &enc.ciphertext, &Context::new(), None)),
        ErrorCode::InvalidCiphertext
    );
}

#[test]
fn byok_import_and_wrapped_export() {
    let h = harness();
    let kms = &h.kms;
    // An exportable key exported to the import wrapping key of an EXTERNAL key: the full BYOK round trip.
    let mut src = CreateKey::new(KeySpec::Aes256);
    src.exportable = true;
    let src = kms.create_key(src).unwrap().key_id;
    let c = kms
        .encrypt(&src, b"portable", &Context::new(), None)
        .unwrap();

    let mut ext = CreateKey::new(KeySpec::Aes256);
    ext.origin = Origin::External;
    let ext = kms.create_key(ext).unwrap();
    assert_eq!(ext.primary_version, 0);
    assert_eq!(
        code(kms.encrypt(&ext.key_id, b"x", &Context::new(), None)),
        ErrorCode::InvalidState
    );
    assert_eq!(code(kms.rotate_key(&ext.key_id)), ErrorCode::InvalidState);
    let params = kms.import_parameters(&ext.key_id).unwrap();
    let wrapped = kms
        .export_key(&src, &params.wrapping_public_key_der, None)
        .unwrap();
    assert_eq!(
        code(kms.import_key_material(&ext.key_id, "00", &wrapped)),
        ErrorCode::ValidationError
    );
    let mut corrupted = wrapped.clone();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 1;
    assert_eq!(
        code(kms.import_key_material(&ext.key_id, &params.import_token, &corrupted)),
        ErrorCode::InvalidCiphertext
    );
    let info = kms
        .import_key_material(&ext.key_id, &params.import_token, &wrapped)
        .unwrap();
    assert_eq!(info.primary_version, 1);
    // Tokens are single use.
    assert_eq!(
        code(kms.import_key_material(&ext.key_id, &params.import_token, &wrapped)),
        ErrorCode::ValidationError
    );
    // Same material: a ciphertext of the source decrypts after copying its body under the new key's header
    // is not possible (header binds the key id), so compare through a data key instead.
    let probe = kms
        .encrypt(&ext.key_id, b"probe", &Context::new(), None)
        .unwrap();
    assert_eq!(
        kms.decrypt(None, &probe.ciphertext, &Context::new(), None)
            .unwrap()
            .plaintext
            .expose(),
        b"probe"
    );
    assert!(kms
        .decrypt(None, &c.ciphertext, &Context::new(), None)
        .is_ok());

    // Expired tokens are refused.
    let params = kms.import_parameters(&ext.key_id).unwrap();
    h.clock.advance(25 * 3600);
    assert_eq!(
        code(kms.import_key_material(&ext.key_id, &params.import_token, &wrapped)),
        ErrorCode::ValidationError
    );
    // Non-exportable keys do not export; non-EXTERNAL keys do not import.
    let plain = sym(kms);
    assert_eq!(
        code(kms.export_key(&plain, &params.wrapping_public_key_der, None)),
        ErrorCode::InvalidState
    );
    assert_eq!(code(kms.import_parameters(&plain)), ErrorCode::InvalidState);
}

/// Imports the material of the exportable key `src` into the EXTERNAL key `ext`.
fn import_from(kms: &Kms, src: &str, ext: &str) -> KmsResult<KeyInfo> {
    let params = kms.import_parameters(ext)?;
    let wrapped = kms.export_key(src, &params.wrapping_public_key_der, None)?;
    kms.import_key_material(ext, &params.import_token, &wrapped)
}

fn exportable(kms: &Kms, spec: KeySpec) -> String {
    let mut req = CreateKey::new(spec);
    req.exportable = true;
    kms.create_key(req).unwrap().key_id
}

#[test]
fn deleted_imported_material_comes_back_only_as_the_same_material() {
    let h = harness();
    let kms = &h.kms;
    let (a, b, wrong) = (
        exportable(kms, KeySpec::Aes256),
        exportable(kms, KeySpec::Aes256),
        exportable(kms, KeySpec::Aes256),
    );
    let mut req = CreateKey::new(KeySpec::Aes256);
    req.origin = Origin::External;
    let ext = kms.create_key(req).unwrap().key_id;
    assert_eq!(
        code(kms.delete_imported_material(&ext)),
        ErrorCode::InvalidState,
        "nothing imported yet"
    );
    assert_eq!(
        code(kms.delete_imported_material(&a)),
        ErrorCode::InvalidState,
        "only EXTERNAL keys"
    );
    import_from(kms, &a, &ext).unwrap();
    let under_a = kms.encrypt(&ext, b"one", &Context::new(), None).unwrap();
    assert_eq!(import_from(kms, &b, &ext).unwrap().primary_version, 2);
    let under_b = kms.encrypt(&ext, b"two", &Context::new(), None).unwrap();

    let info = kms.delete_imported_material(&ext).unwrap();
    assert!(info.pending_import);
    assert_eq!(info.state, KeyState::Enabled);
    assert!(kms
        .list_versions(&ext)
        .unwrap()
        .iter()
        .all(|v| v.state == VersionState::PendingImport));
    let refused = kms.decrypt(None, &under_a.ciphertext, &Context::new(), None);
    assert_eq!(code(refused), ErrorCode::InvalidState);
    assert_eq!(
        code(kms.encrypt(&ext, b"x", &Context::new(), None)),
        ErrorCode::InvalidState
    );
    assert_eq!(
        code(kms.delete_imported_material(&ext)),
        ErrorCode::InvalidState,
        "already deleted"
    );

    // Other material is refused, and the refusal leaves the token usable for the right material.
    let params = kms.import_parameters(&ext).unwrap();
    let other = kms
        .export_key(&wrong, &params.wrapping_public_key_der, None)
        .unwrap();
    assert_eq!(
        code(kms.import_key_material(&ext, &params.import_token, &other)),
        ErrorCode::IncorrectKeyMaterial
    );
    let first = kms
        .export_key(&a, &params.wrapping_public_key_der, None)
        .unwrap();
    let info = kms
        .import_key_material(&ext, &params.import_token, &first)
        .unwrap();
    // Version 1 is back, but the primary still waits for its own material.
    assert!(info.pending_import);
    assert_eq!(info.primary_version, 2);
    let states: Vec<_> = kms
        .list_versions(&ext)
        .unwrap()
        .iter()
        .map(|v| v.state)
        .collect();
    assert_eq!(states, [VersionState::Enabled, VersionState::PendingImport]);
    assert_eq!(
        code(kms.encrypt(&ext, b"x", &Context::new(), None)),
        ErrorCode::InvalidState
    );

    let info = import_from(kms, &b, &ext).unwrap();
    assert!(!info.pending_import);
    assert_eq!(info.primary_version, 2, "restored, not a new version");
    for (c, want) in [(&under_a, b"one"), (&under_b, b"two")] {
        let p = kms
            .decrypt(None, &c.ciphertext, &Context::new(), None)
            .unwrap();
        assert_eq!(p.plaintext.expose(), want);
    }
    // Once the key serves again, other material is a new primary version, as before the deletion.
    assert_eq!(import_from(kms, &wrong, &ext).unwrap().primary_version, 3);
}

#[test]
fn deleted_imported_key_pair_is_recognised_by_its_public_key() {
    let h = harness();
    let kms = &h.kms;
    let src = exportable(kms, KeySpec::EccNistP256);
    let other = exportable(kms, KeySpec::EccNistP256);
    let mut req = CreateKey::new(KeySpec::EccNistP256);
    req.origin = Origin::External;
    let ext = kms.create_key(req).unwrap().key_id;
    import_from(kms, &src, &ext).unwrap();
    let alg = SigningAlgorithm::EcdsaSha256;
    let sig = kms.sign(&ext, SignInput::Message(b"m"), alg).unwrap();
    // A Disabled key can lose its material, and stays Disabled when it comes back.
    kms.disable_key(&ext).unwrap();
    kms.delete_imported_material(&ext).unwrap();
    assert_eq!(
        code(import_from(kms, &other, &ext)),
        ErrorCode::IncorrectKeyMaterial
    );
    let info = import_from(kms, &src, &ext).unwrap();
    assert_eq!(
        (info.state, info.pending_import),
        (KeyState::Disabled, false)
    );
    kms.enable_key(&ext).unwrap();
    let ok = kms
        .verify(&ext, SignInput::Message(b"m"), &sig.signature, alg, None)
        .unwrap();
    assert!(ok);
}

#[test]
fn post_quantum_keys_sign_and_decapsulate_through_the_engine() {
    let h = harness();
    let kms = &h.kms;
    let dsa = kms.create_key(CreateKey::new(KeySpec::MlDsa65)).unwrap();
    assert_eq!(dsa.usage, KeyUsage::SignVerify);
    let alg = SigningAlgorithm::MlDsaShake256;
    let sig = kms
        .sign(&dsa.key_id, SignInput::Message(b"pq"), alg)
        .unwrap();
    kms.rotate_key(&dsa.key_id).unwrap();
    let verify = |sig: &[u8], version| {
        kms.verify(&dsa.key_id, SignInput::Message(b"pq"), sig, alg, version)
            .unwrap()
    };
    assert!(verify(&sig.signature, Some(1)));
    assert!(!verify(&sig.signature, None), "signed by version 1, not 2");
    // An external μ (64 bytes) signs through RustCrypto's ml-dsa, outside the FIPS module.
    let mu = [0x6d; 64];
    let by_mu = kms.sign(&dsa.key_id, SignInput::Digest(&mu), alg);
    if keyward_hsm_soft::FIPS_BUILD {
        assert_eq!(code(by_mu), ErrorCode::IncorrectKeyUsage);
    } else {
        let by_mu = by_mu.unwrap();
        let check = |mu: &[u8]| {
            kms.verify(
                &dsa.key_id,
                SignInput::Digest(mu),
                &by_mu.signature,
                alg,
                None,
            )
            .unwrap()
        };
        assert!(check(&mu));
        assert!(!check(&[0x6e; 64]));
    }
    assert_eq!(
        code(kms.sign(&dsa.key_id, SignInput::Digest(&[0; 32]), alg)),
        ErrorCode::ValidationError
    );

    let kem = kms.create_key(CreateKey::new(KeySpec::MlKem768)).unwrap();
    assert_eq!(kem.usage, KeyUsage::KeyAgreement);
    let spki = kms.public_key(&kem.key_id).unwrap().der;
    let ek = &spki[spki.len() - 1184..];
    let sender = aws_lc_rs::kem::EncapsulationKey::new(&aws_lc_rs::kem::ML_KEM_768, ek).unwrap();
    let (ct, secret) = sender.encapsulate().unwrap();
    let got = kms.decapsulate(&kem.key_id, ct.as_ref(), None).unwrap();
    assert_eq!(got.shared_secret.expose(), secret.as_ref());
    assert_eq!(got.version, 1);
    assert_eq!(
        code(kms.decapsulate(&dsa.key_id, ct.as_ref(), None)),
        ErrorCode::IncorrectKeyUsage
    );
    assert_eq!(
        code(kms.agree(&kem.key_id, &spki)),
        ErrorCode::IncorrectKeyUsage
    );
    kms.disable_key(&kem.key_id).unwrap();
    assert_eq!(
        code(kms.decapsulate(&kem.key_id, ct.as_ref(), None)),
        ErrorCode::KeyDisabled
    );
}

/// The module is named as it runs. In a FIPS build every spec outside the validated module is refused where
/// a key is made, with a message naming FIPS mode; a key of such a spec that an earlier, non-FIPS build left
/// in the store still shows its metadata and can be deleted, but is never used.
#[test]
fn specs_outside_the_fips_module_are_refused_in_a_fips_build() {
    let h = harness();
    let module = h.kms.crypto_module();
    assert_eq!(module.fips, keyward_hsm_soft::FIPS_BUILD, "{module:?}");
    assert!(module.name.starts_with("AWS-LC") && !module.version.is_empty());
    let outside = [
        KeySpec::Sm2,
        KeySpec::Sm4,
        KeySpec::EccSecgP256k1,
        KeySpec::Tdes,
    ];
    for spec in outside {
        let mut req = CreateKey::new(spec);
        req.allow_legacy = true;
        let made = h.kms.create_key(req);
        if !keyward_hsm_soft::FIPS_BUILD {
            assert!(made.is_ok(), "{spec}");
            continue;
        }
        let e = made.unwrap_err();
        assert_eq!(e.code(), ErrorCode::IncorrectKeyUsage, "{spec}");
        assert!(e.message().contains("FIPS"), "{spec}: {}", e.message());
    }
    // An AES-128 key's record rewritten to SM4 (same material length): what a FIPS node finds when it takes
    // over a store a non-FIPS node wrote.
    let id = h
        .kms
        .create_key(CreateKey::new(KeySpec::Aes128))
        .unwrap()
        .key_id;
    let db = h.dir.path().join("keyward.db");
    let conn = rusqlite_like::open(&db);
    conn(&format!(
        "UPDATE keys SET data = json_set(data, '$.spec', 'SM4') WHERE key_id = '{id}'"
    ));
    let kms = h.restart();
    assert_eq!(kms.describe_key(&id).unwrap().spec, KeySpec::Sm4);
    let used = kms.encrypt(&id, b"x", &Context::new(), None);
    if keyward_hsm_soft::FIPS_BUILD {
        let e = used.unwrap_err();
        assert_eq!(e.code(), ErrorCode::IncorrectKeyUsage);
        assert!(e.message().contains("FIPS"), "{}", e.message());
    }
    kms.schedule_deletion(&id, 7).unwrap();
    h.clock.advance(8 * 86_400);
    assert_eq!(
        kms.run_due_work().unwrap().destroyed,
        std::slice::from_ref(&id)
    );
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::Destroyed);
}

#[test]
fn tampered_stored_material_is_refused_not_used() {
    let h = harness();
    let id = sym(&h.kms);
    let c = h.kms.encrypt(&id, b"x", &Context::new(), None).unwrap();
    let db = h.dir.path().join("keyward.db");
    let conn = rusqlite_like::open(&db);
    // Swap version 1's material with another key's: the AAD binding must catch it.
    let other = sym(&h.kms);
    conn(&format!(
        "UPDATE versions SET material = (SELECT material FROM versions WHERE key_id = '{other}') WHERE key_id = '{id}'"
    ));
    let restarted = h.restart();
    let err = restarted
        .decrypt(None, &c.ciphertext, &Context::new(), None)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(
        err.message().contains("does not unwrap"),
        "{}",
        err.message()
    );
}

mod rusqlite_like {
    use std::path::Path;
    use std::process::Command;

    /// Runs SQL against the database with the sqlite3 shell if present, else through a tiny Python helper.
    pub fn open(path: &Path) -> impl Fn(&str) + '_ {
        move |sql: &str| {
            let ok = Command::new("python3")
                .arg("-c")
                .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()")
                .arg(path)
                .arg(sql)
                .status()
                .unwrap()
                .success();
            assert!(ok, "sql failed: {sql}");
        }
    }
}

/// Another engine on the same database (a node of a cluster) that has not heard of a root rotation yet and
/// then loads a key re-wrapped under the new root follows the rotation itself, instead of reporting the
/// version as corrupt.
#[test]
fn an_engine_that_missed_a_root_rotation_follows_it_when_a_key_needs_it() {
    let h = harness();
    let id = h
        .kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    let before = h
        .kms
        .encrypt(&id, b"before", &Context::new(), None)
        .unwrap();
    let other = h.kms_clone();
    assert_eq!(other.root_generation(), Some(1));
    assert_eq!(h.kms.rotate_root().unwrap(), 2);
    // `other` never saw the change feed: its first use of the key loads versions wrapped at generation 2.
    let d = other
        .decrypt(None, &before.ciphertext, &Context::new(), None)
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"before");
    assert_eq!(other.root_generation(), Some(2));
    let after = other.encrypt(&id, b"after", &Context::new(), None).unwrap();
    let d = h
        .kms
        .decrypt(None, &after.ciphertext, &Context::new(), None)
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"after");
}

#[test]
fn key_aliases_follow_every_alias_change() {
    let h = harness();
    let kms = &h.kms;
    let names = |r: &str| kms.key_aliases(r).unwrap().1.to_vec();
    let mut req = CreateKey::new(KeySpec::SymmetricDefault);
    req.alias = Some("alias/orders".into());
    let a = kms.create_key(req).unwrap().key_id;
    let b = sym(kms);
    assert_eq!(names(&a), ["alias/orders"]);
    assert_eq!(kms.key_aliases("alias:orders").unwrap().0, a);
    assert!(names(&b).is_empty());

    // Each change is seen at once, whichever key's list was cached before it.
    kms.put_alias("alias/billing", &a).unwrap();
    assert_eq!(names(&a), ["alias/billing", "alias/orders"]);
    kms.put_alias("alias/orders", &b).unwrap();
    assert_eq!(
        (names(&a), names(&b)),
        (
            vec!["alias/billing".to_string()],
            vec!["alias/orders".to_string()]
        )
    );
    kms.delete_alias("alias/billing").unwrap();
    assert!(names(&a).is_empty());

    // Another engine on the same database (a restart) reads the same lists; so does this one after a seal.
    assert_eq!(
        h.restart().key_aliases(&b).unwrap().1.to_vec(),
        ["alias/orders"]
    );
    kms.seal().unwrap();
    assert_eq!(code(kms.key_aliases(&b)), ErrorCode::Sealed);
    kms.unseal(&h.shares[0]).unwrap();
    kms.unseal(&h.shares[1]).unwrap();
    assert_eq!(names(&b), ["alias/orders"]);

    // A destroyed key loses its aliases; unknown and malformed references are refused, not empty.
    kms.schedule_deletion(&b, 7).unwrap();
    h.clock.advance(7 * DAY);
    kms.run_due_work().unwrap();
    assert!(names(&b).is_empty());
    assert_eq!(code(kms.key_aliases("alias/orders")), ErrorCode::NotFound);
    assert_eq!(
        code(kms.key_aliases("not a key")),
        ErrorCode::ValidationError
    );
}
