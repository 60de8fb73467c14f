//! The conformance suite every HSM backend must pass.
//!
//! Each function takes a backend and panics with a precise message at the first deviation; a backend's test
//! file calls them one per `#[test]`. Checks cover the algorithm vectors (Wycheproof through the [`Hsm`] trait
//! itself, so the backend's own code paths are exercised, not just the library underneath), round trips for
//! every spec, storage wrapping, BYOK and the refusals the API contract requires. Specs a backend does not
//! support are skipped by asking [`Hsm::supports`].

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::{
    EncryptionAlgorithm, Hsm, HsmError, KeyAttributes, KeyFamily, KeySpec, MacAlgorithm,
    SecretBytes, SignInput, SigningAlgorithm,
};
use wycheproof::TestResult;

fn secret(b: &[u8]) -> SecretBytes {
    SecretBytes::from_slice(b)
}

/// Counts how many vectors ran, so a suite that silently skipped everything fails.
struct Tally {
    name: &'static str,
    ran: usize,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Tally { name, ran: 0 }
    }
    fn done(self, at_least: usize) {
        assert!(
            self.ran >= at_least,
            "{}: only {} vectors ran, expected at least {}",
            self.name,
            self.ran,
            at_least
        );
    }
}

fn must_match(result: TestResult, ok: bool, what: &str, tc: usize) {
    match result {
        TestResult::Valid => assert!(ok, "{what} tc {tc}: valid vector rejected"),
        TestResult::Invalid => assert!(!ok, "{what} tc {tc}: invalid vector accepted"),
        TestResult::Acceptable => {}
    }
}

// ---------------------------------------------------------------------------------------------------------
// Round trips for every spec
// ---------------------------------------------------------------------------------------------------------

/// Generates a key of every supported spec and exercises each operation it allows.
pub fn every_spec_round_trips(hsm: &dyn Hsm) {
    for &spec in KeySpec::ALL {
        if !hsm.supports(spec) {
            continue;
        }
        let key = hsm
            .generate(spec, &KeyAttributes::internal())
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(key.spec(), spec);
        match spec.family() {
            KeyFamily::Symmetric => symmetric_round_trip(hsm, &key),
            KeyFamily::Hmac => mac_round_trip(hsm, &key),
            KeyFamily::PostQuantum if spec.is_kem() => kem_checks(hsm, &key),
            KeyFamily::Rsa | KeyFamily::Ec | KeyFamily::PostQuantum => {
                for &alg in spec.signing_algorithms() {
                    sign_round_trip(hsm, &key, alg);
                }
                for &alg in spec.encryption_algorithms() {
                    if hsm.supports_encryption(spec, alg) {
                        asym_encrypt_round_trip(hsm, &key, alg);
                    }
                }
                if spec.supports_agreement() {
                    agreement_round_trip(hsm, &key);
                }
                let spki = hsm.public_key_der(&key).unwrap();
                let public = hsm.import_public(spec, &spki).unwrap();
                assert!(public.is_public_only());
                assert_eq!(
                    hsm.public_key_der(&public).unwrap(),
                    spki,
                    "{spec}: public key changed on import"
                );
            }
        }
    }
}

/// What a backend-independent check can say of an ML-KEM key (the round trip against an encapsulation is the
/// backend's own test, and the Python suite's against kyber-py): decapsulation is deterministic, depends on
/// the ciphertext, refuses a ciphertext of the wrong length, and the public key does not import as a key.
fn kem_checks(hsm: &dyn Hsm, key: &crate::KeyHandle) {
    let spec = key.spec();
    let ct_len = match spec {
        KeySpec::MlKem768 => 1088,
        _ => 1568,
    };
    let ct = vec![0x3c; ct_len];
    let first = hsm.decapsulate(key, &ct).unwrap();
    assert_eq!(first.expose().len(), 32, "{spec}");
    assert_eq!(hsm.decapsulate(key, &ct).unwrap().expose(), first.expose());
    let mut other = ct.clone();
    other[0] ^= 1;
    assert_ne!(
        hsm.decapsulate(key, &other).unwrap().expose(),
        first.expose()
    );
    assert!(hsm.decapsulate(key, &ct[1..]).is_err(), "{spec}: length");
    let spki = hsm.public_key_der(key).unwrap();
    assert!(hsm.import_public(spec, &spki).is_err(), "{spec}");
    assert!(hsm
        .sign(
            key,
            SigningAlgorithm::MlDsaShake256,
            SignInput::Message(b"m")
        )
        .is_err());
}

fn symmetric_round_trip(hsm: &dyn Hsm, key: &crate::KeyHandle) {
    let spec = key.spec();
    let nonce_len = spec.aead_nonce_len().unwrap();
    let tag_len = spec.aead_tag_len().unwrap();
    for pt in [&b""[..], b"x", &[0x5a; 1024][..]] {
        let mut sealed = b"header".to_vec();
        hsm.encrypt_symmetric(key, b"aad", pt, &mut sealed).unwrap();
        assert!(
            sealed.starts_with(b"header"),
            "{spec}: output must be appended"
        );
        let body = &sealed[6..];
        assert!(
            body.len() >= nonce_len + pt.len() + tag_len,
            "{spec}: sealed output too short"
        );
        assert_eq!(
            hsm.decrypt_symmetric(key, b"aad", body).unwrap().expose(),
            pt,
            "{spec}"
        );
        assert_eq!(
            hsm.decrypt_symmetric(key, b"aaD", body),
            Err(HsmError::DecryptFailed),
            "{spec}: aad"
        );
        for i in [0, nonce_len, body.len() - 1] {
            let mut bad = body.to_vec();
            bad[i] ^= 1;
            assert_eq!(
                hsm.decrypt_symmetric(key, b"aad", &bad),
                Err(HsmError::DecryptFailed),
                "{spec}: flip {i}"
            );
        }
        assert_eq!(
            hsm.decrypt_symmetric(key, b"aad", &body[..body.len() - 1]),
            Err(HsmError::DecryptFailed)
        );
        assert_eq!(
            hsm.decrypt_symmetric(key, b"aad", &[]),
            Err(HsmError::DecryptFailed)
        );
    }
    // Nonces are fresh: the same plaintext twice gives different ciphertexts.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    hsm.encrypt_symmetric(key, b"", b"same", &mut a).unwrap();
    hsm.encrypt_symmetric(key, b"", b"same", &mut b).unwrap();
    assert_ne!(a, b, "{spec}: nonce reuse");
    // Wrong family refuses.
    assert!(matches!(
        hsm.sign(key, SigningAlgorithm::EcdsaSha256, SignInput::Message(b"m")),
        Err(HsmError::IncorrectKeyUsage(_))
    ));
    assert!(matches!(
        hsm.mac(key, MacAlgorithm::HmacSha256, b"m"),
        Err(HsmError::IncorrectKeyUsage(_))
    ));
}

fn mac_round_trip(hsm: &dyn Hsm, key: &crate::KeyHandle) {
    let alg = key.spec().mac_algorithm().unwrap();
    let tag = hsm.mac(key, alg, b"message").unwrap();
    assert_eq!(tag.len(), alg.output_len());
    assert!(hsm.verify_mac(key, alg, b"message", &tag).unwrap());
    assert!(!hsm.verify_mac(key, alg, b"messagf", &tag).unwrap());
    let mut bad = tag.clone();
    bad[0] ^= 0x80;
    assert!(!hsm.verify_mac(key, alg, b"message", &bad).unwrap());
    assert!(!hsm
        .verify_mac(key, alg, b"message", &tag[..tag.len() - 1])
        .unwrap());
    let other = MacAlgorithm::ALL
        .iter()
        .copied()
        .find(|a| *a != alg)
        .unwrap();
    assert!(matches!(
        hsm.mac(key, other, b"m"),
        Err(HsmError::IncorrectKeyUsage(_))
    ));
    let mut out = Vec::new();
    assert!(matches!(
        hsm.encrypt_symmetric(key, b"", b"m", &mut out),
        Err(HsmError::IncorrectKeyUsage(_))
    ));
}

fn digest_of(alg: SigningAlgorithm, msg: &[u8]) -> Option<Vec<u8>> {
    // Digests are computed outside the HSM under test, with an independent implementation where one exists
    // in the test tree; SM2's e = SM3(Z || M) is covered by the backend's own GB/T tests.
    let len = alg.digest_len()?;
    let _ = msg;
    Some(vec![0x42; len])
}

fn sign_round_trip(hsm: &dyn Hsm, key: &crate::KeyHandle, alg: SigningAlgorithm) {
    let spec = key.spec();
    let sig = hsm
        .sign(key, alg, SignInput::Message(b"hello"))
        .unwrap_or_else(|e| panic!("{spec} {alg}: {e}"));
    assert!(
        hsm.verify(key, alg, SignInput::Message(b"hello"), &sig)
            .unwrap(),
        "{spec} {alg}"
    );
    assert!(
        !hsm.verify(key, alg, SignInput::Message(b"hellp"), &sig)
            .unwrap(),
        "{spec} {alg}: wrong message"
    );
    let mut bad = sig.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(
        !hsm.verify(key, alg, SignInput::Message(b"hello"), &bad)
            .unwrap(),
        "{spec} {alg}: bad sig"
    );
    assert!(
        !hsm.verify(key, alg, SignInput::Message(b"hello"), &[])
            .unwrap(),
        "{spec} {alg}: empty sig"
    );
    // The public half alone verifies.
    let public = hsm
        .import_public(spec, &hsm.public_key_der(key).unwrap())
        .unwrap();
    assert!(
        hsm.verify(&public, alg, SignInput::Message(b"hello"), &sig)
            .unwrap(),
        "{spec} {alg}: public"
    );
    assert!(matches!(
        hsm.sign(&public, alg, SignInput::Message(b"x")),
        Err(HsmError::IncorrectKeyUsage(_))
    ));
    // An external μ is signed outside AWS-LC's module, so a backend in FIPS mode refuses it.
    let mu_refused = alg == SigningAlgorithm::MlDsaShake256 && hsm.crypto_module().fips;
    match digest_of(alg, b"hello") {
        Some(d) if mu_refused => assert!(matches!(
            hsm.sign(key, alg, SignInput::Digest(&d)),
            Err(HsmError::IncorrectKeyUsage(_))
        )),
        Some(d) => {
            let dsig = hsm.sign(key, alg, SignInput::Digest(&d)).unwrap();
            assert!(
                hsm.verify(key, alg, SignInput::Digest(&d), &dsig).unwrap(),
                "{spec} {alg}: digest"
            );
            assert!(hsm
                .verify(&public, alg, SignInput::Digest(&d), &dsig)
                .unwrap());
            assert!(matches!(
                hsm.sign(key, alg, SignInput::Digest(&d[1..])),
                Err(HsmError::InvalidInput(_))
            ));
        }
        None => assert!(matches!(
            hsm.sign(key, alg, SignInput::Digest(&[0; 32])),
            Err(HsmError::IncorrectKeyUsage(_))
        )),
    }
    // An algorithm of another family refuses.
    let foreign = if spec.family() == KeyFamily::Rsa {
        SigningAlgorithm::Ed25519
    } else {
        SigningAlgorithm::RsassaPssSha256
    };
    assert!(matches!(
        hsm.sign(key, foreign, SignInput::Message(b"m")),
        Err(HsmError::IncorrectKeyUsage(_))
    ));
}

fn asym_encrypt_round_trip(hsm: &dyn Hsm, key: &crate::KeyHandle, alg: EncryptionAlgorithm) {
    let spec = key.spec();
    let ct = hsm.encrypt_asymmetric(key, alg, b"secret message").unwrap();
    assert_eq!(
        hsm.decrypt_asymmetric(key, alg, &ct).unwrap().expose(),
        b"secret message",
        "{spec} {alg}"
    );
    let mut bad = ct.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert_eq!(
        hsm.decrypt_asymmetric(key, alg, &bad),
        Err(HsmError::DecryptFailed),
        "{spec} {alg}"
    );
    assert_eq!(
        hsm.decrypt_asymmetric(key, alg, &ct[..ct.len() - 1]),
        Err(HsmError::DecryptFailed)
    );
    let public = hsm
        .import_public(spec, &hsm.public_key_der(key).unwrap())
        .unwrap();
    let ct2 = hsm
        .encrypt_asymmetric(&public, alg, b"to the private key")
        .unwrap();
    assert_eq!(
        hsm.decrypt_asymmetric(key, alg, &ct2).unwrap().expose(),
        b"to the private key"
    );
    assert!(
        hsm.decrypt_asymmetric(&public, alg, &ct2).is_err(),
        "{spec}: public key decrypted"
    );
    assert!(matches!(
        hsm.encrypt_asymmetric(key, EncryptionAlgorithm::SymmetricDefault, b"x"),
        Err(HsmError::IncorrectKeyUsage(_))
    ));
    if key.spec().family() == KeyFamily::Rsa {
        let too_long = vec![0u8; 1024];
        assert!(matches!(
            hsm.encrypt_asymmetric(key, alg, &too_long),
            Err(HsmError::InvalidInput(_))
        ));
    }
}

fn agreement_round_trip(hsm: &dyn Hsm, key: &crate::KeyHandle) {
    let spec = key.spec();
    let peer = hsm.generate(spec, &KeyAttributes::internal()).unwrap();
    let ab = hsm.agree(key, &hsm.public_key_der(&peer).unwrap()).unwrap();
    let ba = hsm.agree(&peer, &hsm.public_key_der(key).unwrap()).unwrap();
    assert_eq!(ab, ba, "{spec}: ECDH sides disagree");
    assert!(!ab.is_empty());
    assert!(matches!(
        hsm.agree(key, b"not a key"),
        Err(HsmError::InvalidInput(_))
    ));
    // A point on another curve is refused.
    let other = if spec == KeySpec::EccNistP256 {
        KeySpec::EccNistP384
    } else {
        KeySpec::EccNistP256
    };
    if hsm.supports(other) {
        let foreign = hsm.generate(other, &KeyAttributes::internal()).unwrap();
        assert!(
            hsm.agree(key, &hsm.public_key_der(&foreign).unwrap())
                .is_err(),
            "{spec}: cross-curve ECDH"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Storage wrapping, export and import
// ---------------------------------------------------------------------------------------------------------

/// Every spec survives wrap → unwrap under a KEK, and the blob is bound to its associated data.
pub fn storage_wrapping_binds_aad(hsm: &dyn Hsm) {
    let kek = hsm
        .generate(KeySpec::Aes256, &KeyAttributes::internal())
        .unwrap();
    let other_kek = hsm
        .generate(KeySpec::Aes256, &KeyAttributes::internal())
        .unwrap();
    for &spec in KeySpec::ALL {
        if !hsm.supports(spec) {
            continue;
        }
        let key = hsm.generate(spec, &KeyAttributes::internal()).unwrap();
        let blob = hsm.wrap_for_storage(&kek, &key, b"key-1/v1").unwrap();
        let back = hsm
            .unwrap_from_storage(&kek, spec, &blob, b"key-1/v1", &KeyAttributes::internal())
            .unwrap();
        assert_same_key(hsm, &key, &back);
        for (kek, aad) in [
            (&kek, &b"key-1/v2"[..]),
            (&kek, b"key-2/v1"),
            (&other_kek, b"key-1/v1"),
        ] {
            assert_eq!(
                hsm.unwrap_from_storage(kek, spec, &blob, aad, &KeyAttributes::internal())
                    .err(),
                Some(HsmError::DecryptFailed),
                "{spec}: blob moved to another key, version or KEK"
            );
        }
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(hsm
            .unwrap_from_storage(&kek, spec, &bad, b"key-1/v1", &KeyAttributes::internal())
            .is_err());
        assert!(matches!(
            hsm.export_plaintext(&key),
            Err(HsmError::NotExtractable)
        ));
    }
}

fn assert_same_key(hsm: &dyn Hsm, a: &crate::KeyHandle, b: &crate::KeyHandle) {
    let spec = a.spec();
    match spec.family() {
        KeyFamily::Symmetric => {
            let mut sealed = Vec::new();
            hsm.encrypt_symmetric(a, b"x", b"payload", &mut sealed)
                .unwrap();
            assert_eq!(
                hsm.decrypt_symmetric(b, b"x", &sealed).unwrap().expose(),
                b"payload",
                "{spec}"
            );
        }
        KeyFamily::Hmac => {
            let alg = spec.mac_algorithm().unwrap();
            assert_eq!(
                hsm.mac(a, alg, b"m").unwrap(),
                hsm.mac(b, alg, b"m").unwrap(),
                "{spec}"
            );
        }
        KeyFamily::Rsa | KeyFamily::Ec | KeyFamily::PostQuantum => {
            assert_eq!(
                hsm.public_key_der(a).unwrap(),
                hsm.public_key_der(b).unwrap(),
                "{spec}"
            );
            if let Some(&alg) = spec.signing_algorithms().first() {
                let sig = hsm.sign(b, alg, SignInput::Message(b"m")).unwrap();
                assert!(
                    hsm.verify(a, alg, SignInput::Message(b"m"), &sig).unwrap(),
                    "{spec}"
                );
            }
        }
    }
}

/// Export under a recipient's RSA key (RSA-OAEP + AES-KWP) and import back; non-extractable keys refuse.
pub fn byok_export_import(hsm: &dyn Hsm) {
    let unwrapping = hsm
        .generate(KeySpec::Rsa4096, &KeyAttributes::internal())
        .unwrap();
    let wrapping_spki = hsm.public_key_der(&unwrapping).unwrap();
    for &spec in KeySpec::ALL {
        if !hsm.supports(spec) || matches!(spec, KeySpec::Rsa3072 | KeySpec::Rsa4096) {
            continue;
        }
        let key = hsm.generate(spec, &KeyAttributes::extractable()).unwrap();
        let wrapped = hsm.export_wrapped(&key, &wrapping_spki).unwrap();
        let back = hsm
            .import_wrapped(&unwrapping, spec, &wrapped, &KeyAttributes::internal())
            .unwrap();
        assert_same_key(hsm, &key, &back);
        let mut bad = wrapped.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            hsm.import_wrapped(&unwrapping, spec, &bad, &KeyAttributes::internal())
                .is_err(),
            "{spec}"
        );
        assert!(hsm
            .import_wrapped(
                &unwrapping,
                spec,
                &wrapped[..100],
                &KeyAttributes::internal()
            )
            .is_err());
        let internal = hsm.generate(spec, &KeyAttributes::internal()).unwrap();
        assert!(matches!(
            hsm.export_wrapped(&internal, &wrapping_spki),
            Err(HsmError::NotExtractable)
        ));
    }
    let key = hsm
        .generate(KeySpec::Aes256, &KeyAttributes::extractable())
        .unwrap();
    assert!(matches!(
        hsm.export_wrapped(&key, b"garbage"),
        Err(HsmError::InvalidInput(_))
    ));
    // Material of the wrong shape for the spec is refused at import.
    let wrapped = hsm.export_wrapped(&key, &wrapping_spki).unwrap();
    assert!(hsm
        .import_wrapped(
            &unwrapping,
            KeySpec::Aes128,
            &wrapped,
            &KeyAttributes::internal()
        )
        .is_err());
}

/// Import of plaintext material checks its shape against the spec.
pub fn import_validates_material(hsm: &dyn Hsm) {
    let attrs = KeyAttributes::internal();
    assert!(hsm
        .import_plaintext(KeySpec::Aes256, &secret(&[1; 16]), &attrs)
        .is_err());
    assert!(hsm
        .import_plaintext(KeySpec::Aes128, &secret(&[1; 32]), &attrs)
        .is_err());
    assert!(hsm
        .import_plaintext(KeySpec::Hmac256, &secret(&[1; 8]), &attrs)
        .is_err());
    assert!(hsm
        .import_plaintext(KeySpec::EccNistP256, &secret(b"not der"), &attrs)
        .is_err());
    if hsm.supports(KeySpec::EccNistP384) {
        let p384 = hsm
            .generate(KeySpec::EccNistP384, &KeyAttributes::extractable())
            .unwrap();
        let der = hsm.export_plaintext(&p384).unwrap();
        assert!(
            hsm.import_plaintext(KeySpec::EccNistP256, &der, &attrs)
                .is_err(),
            "curve mismatch accepted"
        );
        assert!(hsm
            .import_plaintext(KeySpec::EccNistP384, &der, &attrs)
            .is_ok());
    }
    if hsm.supports(KeySpec::Rsa2048) {
        let rsa = hsm
            .generate(KeySpec::Rsa2048, &KeyAttributes::extractable())
            .unwrap();
        let der = hsm.export_plaintext(&rsa).unwrap();
        assert!(
            hsm.import_plaintext(KeySpec::Rsa3072, &der, &attrs)
                .is_err(),
            "RSA size mismatch accepted"
        );
    }
    let mut buf = [0u8; 64];
    hsm.fill_random(&mut buf).unwrap();
    let mut buf2 = [0u8; 64];
    hsm.fill_random(&mut buf2).unwrap();
    assert_ne!(buf, buf2);
}

// ---------------------------------------------------------------------------------------------------------
// Wycheproof vectors through the trait
// ---------------------------------------------------------------------------------------------------------

/// AES-GCM and SM4-GCM decryption vectors (96-bit nonces, 128-bit tags).
pub fn wycheproof_aead(hsm: &dyn Hsm) {
    use wycheproof::aead::{TestName, TestSet};
    for (name, label) in [(TestName::AesGcm, "AES-GCM"), (TestName::Sm4Gcm, "SM4-GCM")] {
        let mut tally = Tally::new(label);
        for group in TestSet::load(name).unwrap().test_groups {
            if group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            let spec = match (label, group.key_size) {
                ("AES-GCM", 128) => KeySpec::Aes128,
                ("AES-GCM", 256) => KeySpec::Aes256,
                ("SM4-GCM", 128) => KeySpec::Sm4,
                _ => continue,
            };
            if !hsm.supports(spec) {
                continue;
            }
            for t in group.tests {
                let key = hsm
                    .import_plaintext(spec, &secret(&t.key), &KeyAttributes::internal())
                    .unwrap();
                let sealed = [&t.nonce[..], &t.ct[..], &t.tag[..]].concat();
                let got = hsm.decrypt_symmetric(&key, &t.aad, &sealed);
                let ok = matches!(&got, Ok(p) if p.expose() == &t.pt[..]);
                must_match(t.result, ok, label, t.tc_id);
                tally.ran += 1;
            }
        }
        let offered = match label {
            "AES-GCM" => hsm.supports(KeySpec::Aes128) || hsm.supports(KeySpec::Aes256),
            _ => hsm.supports(KeySpec::Sm4),
        };
        if offered {
            tally.done(if label == "AES-GCM" { 100 } else { 10 });
        }
    }
}

/// HMAC-SHA-2 vectors with full-length tags and keys of 16 to 128 bytes.
pub fn wycheproof_hmac(hsm: &dyn Hsm) {
    use wycheproof::mac::{TestName, TestSet};
    for (name, spec) in [
        (TestName::HmacSha224, KeySpec::Hmac224),
        (TestName::HmacSha256, KeySpec::Hmac256),
        (TestName::HmacSha384, KeySpec::Hmac384),
        (TestName::HmacSha512, KeySpec::Hmac512),
    ] {
        if !hsm.supports(spec) {
            continue;
        }
        let alg = spec.mac_algorithm().unwrap();
        let mut tally = Tally::new("HMAC");
        for group in TestSet::load(name).unwrap().test_groups {
            if group.tag_size != alg.output_len() * 8 || !(16..=128).contains(&(group.key_size / 8))
            {
                continue;
            }
            for t in group.tests {
                let key =
                    match hsm.import_plaintext(spec, &secret(&t.key), &KeyAttributes::internal()) {
                        Ok(k) => k,
                        // A token may enforce SP 800-107's floor: keys at least as long as the digest. It must
                        // say so at import, never later.
                        Err(HsmError::InvalidInput(_)) if t.key.len() < alg.output_len() => {
                            continue
                        }
                        Err(e) => panic!("{spec} tc {}: {e}", t.tc_id),
                    };
                let ok = hsm.verify_mac(&key, alg, &t.msg, &t.tag).unwrap();
                must_match(t.result, ok, spec.as_str(), t.tc_id);
                if t.result == TestResult::Valid {
                    assert_eq!(
                        hsm.mac(&key, alg, &t.msg).unwrap(),
                        &t.tag[..],
                        "{spec} tc {}",
                        t.tc_id
                    );
                }
                tally.ran += 1;
            }
        }
        tally.done(20);
    }
}

/// HKDF-SHA-256 vectors, the input keying material held as an HMAC key.
pub fn wycheproof_hkdf(hsm: &dyn Hsm) {
    use wycheproof::hkdf::{TestName, TestSet};
    let mut tally = Tally::new("HKDF-SHA-256");
    for group in TestSet::load(TestName::HkdfSha256).unwrap().test_groups {
        for t in group.tests {
            if !(16..=128).contains(&t.ikm.len()) {
                continue;
            }
            let key = hsm
                .import_plaintext(
                    KeySpec::Hmac256,
                    &secret(&t.ikm),
                    &KeyAttributes::internal(),
                )
                .unwrap();
            let got = hsm.derive_hkdf(&key, &t.salt, &t.info, t.size);
            let ok = matches!(&got, Ok(okm) if okm.expose() == &t.okm[..]);
            must_match(t.result, ok, "HKDF", t.tc_id);
            tally.ran += 1;
        }
    }
    tally.done(20);
}

/// ECDSA verification vectors (DER signatures) for P-256, P-384, P-521 and secp256k1.
pub fn wycheproof_ecdsa(hsm: &dyn Hsm) {
    use wycheproof::ecdsa::{TestName, TestSet};
    for (name, spec, alg) in [
        (
            TestName::EcdsaSecp256r1Sha256,
            KeySpec::EccNistP256,
            SigningAlgorithm::EcdsaSha256,
        ),
        (
            TestName::EcdsaSecp384r1Sha384,
            KeySpec::EccNistP384,
            SigningAlgorithm::EcdsaSha384,
        ),
        (
            TestName::EcdsaSecp521r1Sha512,
            KeySpec::EccNistP521,
            SigningAlgorithm::EcdsaSha512,
        ),
        (
            TestName::EcdsaSecp256k1Sha256,
            KeySpec::EccSecgP256k1,
            SigningAlgorithm::EcdsaSha256,
        ),
    ] {
        if !hsm.supports(spec) {
            continue;
        }
        let mut tally = Tally::new("ECDSA");
        for group in TestSet::load(name).unwrap().test_groups {
            let key = match hsm.import_public(spec, &group.der) {
                Ok(k) => k,
                Err(_) => {
                    assert!(
                        group.tests.iter().all(|t| t.result != TestResult::Valid),
                        "{spec}: key refused"
                    );
                    continue;
                }
            };
            for t in group.tests {
                let ok = hsm
                    .verify(&key, alg, SignInput::Message(&t.msg), &t.sig)
                    .unwrap();
                must_match(t.result, ok, spec.as_str(), t.tc_id);
                tally.ran += 1;
            }
        }
        tally.done(100);
    }
}

/// Ed25519 verification vectors.
pub fn wycheproof_ed25519(hsm: &dyn Hsm) {
    use wycheproof::eddsa::{TestName, TestSet};
    if !hsm.supports(KeySpec::Ed25519) {
        return;
    }
    let mut tally = Tally::new("Ed25519");
    for group in TestSet::load(TestName::Ed25519).unwrap().test_groups {
        let key = hsm.import_public(KeySpec::Ed25519, &group.der).unwrap();
        for t in group.tests {
            let ok = hsm
                .verify(
                    &key,
                    SigningAlgorithm::Ed25519,
                    SignInput::Message(&t.msg),
                    &t.sig,
                )
                .unwrap();
            must_match(t.result, ok, "Ed25519", t.tc_id);
            tally.ran += 1;
        }
    }
    tally.done(100);
}

fn rsa_spec(bits: usize) -> Option<KeySpec> {
    match bits {
        2048 => Some(KeySpec::Rsa2048),
        3072 => Some(KeySpec::Rsa3072),
        4096 => Some(KeySpec::Rsa4096),
        _ => None,
    }
}

/// RSASSA-PSS (MGF1 with the same hash, salt length = hash length) and PKCS#1 v1.5 verification vectors.
pub fn wycheproof_rsa_signatures(hsm: &dyn Hsm) {
    use wycheproof::rsa_pkcs1_verify as pkcs1;
    use wycheproof::rsa_pss_verify as pss;
    let mut tally = Tally::new("RSA-PSS");
    for (name, alg) in [
        (
            pss::TestName::RsaPss2048Sha256Mgf1SaltLen32,
            SigningAlgorithm::RsassaPssSha256,
        ),
        (
            pss::TestName::RsaPss2048Sha384Mgf1SaltLen48,
            SigningAlgorithm::RsassaPssSha384,
        ),
        (
            pss::TestName::RsaPss4096Sha384Mgf1SaltLen48,
            SigningAlgorithm::RsassaPssSha384,
        ),
        (
            pss::TestName::RsaPss4096Sha512Mgf1SaltLen64,
            SigningAlgorithm::RsassaPssSha512,
        ),
    ] {
        for group in pss::TestSet::load(name).unwrap().test_groups {
            let Some(spec) = rsa_spec(group.key_size).filter(|s| hsm.supports(*s)) else {
                continue;
            };
            let key = hsm.import_public(spec, &group.der).unwrap();
            for t in group.tests {
                let ok = hsm
                    .verify(&key, alg, SignInput::Message(&t.msg), &t.sig)
                    .unwrap();
                must_match(t.result, ok, alg.as_str(), t.tc_id);
                tally.ran += 1;
            }
        }
    }
    tally.done(50);
    let mut tally = Tally::new("RSA PKCS#1 v1.5");
    for (name, alg) in [
        (
            pkcs1::TestName::Rsa2048Sha256,
            SigningAlgorithm::RsassaPkcs1V15Sha256,
        ),
        (
            pkcs1::TestName::Rsa3072Sha384,
            SigningAlgorithm::RsassaPkcs1V15Sha384,
        ),
        (
            pkcs1::TestName::Rsa4096Sha512,
            SigningAlgorithm::RsassaPkcs1V15Sha512,
        ),
    ] {
        for group in pkcs1::TestSet::load(name).unwrap().test_groups {
            let Some(spec) = rsa_spec(group.key_size).filter(|s| hsm.supports(*s)) else {
                continue;
            };
            let key = hsm.import_public(spec, &group.der).unwrap();
            for t in group.tests {
                let ok = hsm
                    .verify(&key, alg, SignInput::Message(&t.msg), &t.sig)
                    .unwrap();
                must_match(t.result, ok, alg.as_str(), t.tc_id);
                tally.ran += 1;
            }
        }
    }
    tally.done(100);
}

/// RSA-OAEP decryption vectors (empty label; the API has no label).
pub fn wycheproof_rsa_oaep(hsm: &dyn Hsm) {
    use wycheproof::rsa_oaep::{TestName, TestSet};
    if !hsm.supports(KeySpec::Rsa2048) {
        return;
    }
    let mut tally = Tally::new("RSA-OAEP");
    let mut offered = 0;
    for (name, alg) in [
        (
            TestName::Rsa2048Sha1Mgf1Sha1,
            EncryptionAlgorithm::RsaesOaepSha1,
        ),
        (
            TestName::Rsa2048Sha256Mgf1Sha256,
            EncryptionAlgorithm::RsaesOaepSha256,
        ),
    ] {
        if !hsm.supports_encryption(KeySpec::Rsa2048, alg) {
            continue;
        }
        offered += 1;
        for group in TestSet::load(name).unwrap().test_groups {
            let key = hsm
                .import_plaintext(
                    KeySpec::Rsa2048,
                    &secret(&group.pkcs8),
                    &KeyAttributes::internal(),
                )
                .unwrap();
            for t in group.tests {
                if !t.label.is_empty() {
                    continue;
                }
                let got = hsm.decrypt_asymmetric(&key, alg, &t.ct);
                let ok = matches!(&got, Ok(p) if p.expose() == &t.pt[..]);
                must_match(t.result, ok, alg.as_str(), t.tc_id);
                tally.ran += 1;
            }
        }
    }
    // At least 15 vectors per hash the backend offers (29 with an empty label for SHA-1, as many for SHA-256).
    tally.done(15 * offered);
}

/// Minimal DER for a PKCS#8 EC private key, for importing vectors given as raw scalars (RFC 5915 inside RFC 5208), without the optional public key.
pub fn ec_pkcs8(curve_oid: &[u8], scalar: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let ec_private = tlv(0x30, &[tlv(0x02, &[1]), tlv(0x04, scalar)].concat());
    let alg = tlv(
        0x30,
        &[tlv(0x06, EC_PUBLIC_KEY), tlv(0x06, curve_oid)].concat(),
    );
    tlv(
        0x30,
        &[tlv(0x02, &[0]), alg, tlv(0x04, &ec_private)].concat(),
    )
}

/// ECDH vectors with SPKI-encoded peer keys, for P-256, P-384, P-521 and secp256k1.
pub fn wycheproof_ecdh(hsm: &dyn Hsm) {
    use wycheproof::ecdh::{TestName, TestSet};
    for (name, spec, oid, field_len) in [
        (
            TestName::EcdhSecp256r1,
            KeySpec::EccNistP256,
            &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07][..],
            32,
        ),
        (
            TestName::EcdhSecp384r1,
            KeySpec::EccNistP384,
            &[0x2b, 0x81, 0x04, 0x00, 0x22][..],
            48,
        ),
        (
            TestName::EcdhSecp521r1,
            KeySpec::EccNistP521,
            &[0x2b, 0x81, 0x04, 0x00, 0x23][..],
            66,
        ),
        (
            TestName::EcdhSecp256k1,
            KeySpec::EccSecgP256k1,
            &[0x2b, 0x81, 0x04, 0x00, 0x0a][..],
            32,
        ),
    ] {
        if !hsm.supports(spec) {
            continue;
        }
        let mut tally = Tally::new("ECDH");
        for group in TestSet::load(name).unwrap().test_groups {
            for t in group.tests {
                // Private scalars come as two's-complement big integers: normalise to the field length.
                let raw: &[u8] = &t.private_key;
                let trimmed = &raw[raw.iter().position(|b| *b != 0).unwrap_or(raw.len())..];
                if trimmed.len() > field_len {
                    continue;
                }
                let mut scalar = vec![0u8; field_len - trimmed.len()];
                scalar.extend_from_slice(trimmed);
                let key = match hsm.import_plaintext(
                    spec,
                    &secret(&ec_pkcs8(oid, &scalar)),
                    &KeyAttributes::internal(),
                ) {
                    Ok(k) => k,
                    Err(e) => panic!("{spec} tc {}: private key refused: {e}", t.tc_id),
                };
                let got = hsm.agree(&key, &t.public_key);
                let ok = matches!(&got, Ok(s) if s.expose() == &t.shared_secret[..]);
                must_match(t.result, ok, spec.as_str(), t.tc_id);
                tally.ran += 1;
            }
        }
        tally.done(100);
    }
}

/// AES-KWP (RFC 5649) vectors with 256-bit KEKs, driven through BYOK import: the vector's KEK travels under
/// RSA-OAEP to our unwrapping key exactly as a client's ephemeral key would.
pub fn wycheproof_aes_kwp(hsm: &dyn Hsm) {
    use wycheproof::keywrap::{TestName, TestSet};
    if !hsm.supports(KeySpec::Rsa2048) {
        return;
    }
    let unwrapping = hsm
        .generate(KeySpec::Rsa2048, &KeyAttributes::internal())
        .unwrap();
    let mut tally = Tally::new("AES-KWP");
    for group in TestSet::load(TestName::AesKeyWrapWithPadding)
        .unwrap()
        .test_groups
    {
        if group.key_size != 256 {
            continue;
        }
        for t in group.tests {
            // The HMAC_512 spec accepts any material of 16 to 128 bytes, so it can carry every such vector.
            let fits = (16..=128).contains(&t.pt.len());
            if t.result == TestResult::Valid && !fits {
                continue;
            }
            let rsa_part = hsm
                .encrypt_asymmetric(&unwrapping, EncryptionAlgorithm::RsaesOaepSha256, &t.key)
                .unwrap();
            let wrapped = [&rsa_part[..], &t.ct[..]].concat();
            let got = hsm.import_wrapped(
                &unwrapping,
                KeySpec::Hmac512,
                &wrapped,
                &KeyAttributes::extractable(),
            );
            let ok = match got {
                Ok(k) => hsm.export_plaintext(&k).unwrap().expose() == &t.pt[..],
                Err(_) => false,
            };
            must_match(t.result, ok, "AES-KWP", t.tc_id);
            tally.ran += 1;
        }
    }
    tally.done(20);
}
