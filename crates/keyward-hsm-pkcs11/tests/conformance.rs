//! The PKCS#11 backend against a real token (SoftHSM2): the same conformance suite as the software HSM, for
//! every spec and mechanism the token offers, plus what only a token has: persistent objects found again,
//! a root-of-trust key that never leaves, and blobs that only that token opens.
//!
//! Not run here, because they need what a token deliberately never does: reading a private key back out
//! (`import_validates_material` and the BYOK round trip export the keys they made, and the KWP vectors go
//! through BYOK), and HKDF, for which SoftHSM2 offers no mechanism. Private keys do go in (PKCS#8 import,
//! which the ECDH and RSA-OAEP vectors use), and RSA-OAEP runs for each hash the token accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use keyward_hsm::conformance as suite;
use keyward_hsm::{Hsm, HsmError, KeyAttributes, KeySpec, SecretBytes};
use keyward_hsm_pkcs11::Pkcs11Hsm;

fn hsm() -> &'static Pkcs11Hsm {
    static HSM: OnceLock<Pkcs11Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        Pkcs11Hsm::open(&common::config()).unwrap_or_else(|e| panic!("PKCS#11 token: {e}"))
    })
}

#[test]
fn every_spec_the_token_offers_round_trips() {
    suite::every_spec_round_trips(hsm());
}

#[test]
fn storage_wrapping_binds_aad() {
    suite::storage_wrapping_binds_aad(hsm());
}

#[test]
fn wycheproof_aead_in_the_token() {
    suite::wycheproof_aead(hsm());
}

#[test]
fn wycheproof_hmac_in_the_token() {
    suite::wycheproof_hmac(hsm());
}

#[test]
fn wycheproof_ecdsa_verification() {
    suite::wycheproof_ecdsa(hsm());
}

#[test]
fn wycheproof_rsa_signature_verification() {
    suite::wycheproof_rsa_signatures(hsm());
}

#[test]
fn wycheproof_ecdh_in_the_token() {
    suite::wycheproof_ecdh(hsm());
}

#[test]
fn wycheproof_rsa_oaep_in_the_token() {
    suite::wycheproof_rsa_oaep(hsm());
}

#[test]
fn the_token_supports_what_it_offers_and_refuses_the_rest() {
    let h = hsm();
    for spec in [
        KeySpec::Sm2,
        KeySpec::Sm4,
        KeySpec::Ed25519,
        KeySpec::EccSecgP256k1,
        KeySpec::Tdes,
    ] {
        assert!(!h.supports(spec));
        assert_eq!(
            h.generate(spec, &KeyAttributes::internal()).err(),
            Some(HsmError::UnsupportedSpec(spec))
        );
    }
    // Private keys never leave the token, whatever the caller asks.
    let ec = h
        .generate(KeySpec::EccNistP256, &KeyAttributes::extractable())
        .unwrap();
    assert_eq!(
        h.export_plaintext(&ec).err(),
        Some(HsmError::NotExtractable)
    );
    // Extractable secret keys can be read back; internal ones cannot.
    let material = SecretBytes::from_slice(&[7u8; 32]);
    let k = h
        .import_plaintext(KeySpec::Aes256, &material, &KeyAttributes::extractable())
        .unwrap();
    assert_eq!(h.export_plaintext(&k).unwrap().expose(), material.expose());
    let internal = h
        .import_plaintext(KeySpec::Aes256, &material, &KeyAttributes::internal())
        .unwrap();
    assert_eq!(
        h.export_plaintext(&internal).err(),
        Some(HsmError::NotExtractable)
    );
    // Same material, same key: what one seals the other opens.
    let mut sealed = Vec::new();
    h.encrypt_symmetric(&k, b"a", b"p", &mut sealed).unwrap();
    assert_eq!(
        h.decrypt_symmetric(&internal, b"a", &sealed)
            .unwrap()
            .expose(),
        b"p"
    );
}

#[test]
fn a_persistent_key_is_stored_as_a_reference_and_found_again() {
    let h = hsm();
    let kek = h.root_of_trust_key("keyward-test-kek").unwrap();
    // Found by label the second time, not created again.
    let again = h.root_of_trust_key("keyward-test-kek").unwrap();
    let blob = h.seal_for_storage(&kek, b"aad", b"secret bytes").unwrap();
    assert_eq!(
        h.open_from_storage(&again, b"aad", &blob).unwrap().expose(),
        b"secret bytes"
    );
    assert_eq!(
        h.open_from_storage(&again, b"aaD", &blob).err(),
        Some(HsmError::DecryptFailed)
    );
    assert!(!kek.is_extractable());
    assert_eq!(
        h.export_plaintext(&kek).err(),
        Some(HsmError::NotExtractable)
    );

    let resident = KeyAttributes {
        token_resident: true,
        label: Some("keyward-test-hsm-key".into()),
        ..KeyAttributes::internal()
    };
    for spec in [
        KeySpec::Aes256,
        KeySpec::EccNistP256,
        KeySpec::Rsa2048,
        KeySpec::Hmac256,
    ] {
        let key = h.generate(spec, &resident).unwrap();
        let blob = h.wrap_for_storage(&kek, &key, b"key-9/v1").unwrap();
        // The blob names the object; it carries no material. A token without the object cannot use it.
        assert!(blob.starts_with(b"KWR1"));
        assert!(blob.len() < 64, "{spec}: {} bytes", blob.len());
        let back = h
            .unwrap_from_storage(&kek, spec, &blob, b"key-9/v1", &KeyAttributes::internal())
            .unwrap();
        match spec {
            KeySpec::Aes256 => {
                let mut sealed = Vec::new();
                h.encrypt_symmetric(&key, b"", b"m", &mut sealed).unwrap();
                assert_eq!(
                    h.decrypt_symmetric(&back, b"", &sealed).unwrap().expose(),
                    b"m"
                );
            }
            KeySpec::Hmac256 => assert_eq!(
                h.mac(&key, keyward_hsm::MacAlgorithm::HmacSha256, b"m")
                    .unwrap(),
                h.mac(&back, keyward_hsm::MacAlgorithm::HmacSha256, b"m")
                    .unwrap()
            ),
            _ => {
                assert_eq!(
                    h.public_key_der(&key).unwrap(),
                    h.public_key_der(&back).unwrap()
                );
                let alg = spec.signing_algorithms()[0];
                let sig = h
                    .sign(&back, alg, keyward_hsm::SignInput::Message(b"m"))
                    .unwrap();
                assert!(h
                    .verify(&key, alg, keyward_hsm::SignInput::Message(b"m"), &sig)
                    .unwrap());
            }
        }
        assert_eq!(
            h.unwrap_from_storage(&kek, spec, &blob, b"key-9/v2", &KeyAttributes::internal())
                .err(),
            Some(HsmError::DecryptFailed)
        );
        h.destroy(back).unwrap();
        // Once destroyed in the token, the reference leads nowhere, with a clear error.
        let gone =
            h.unwrap_from_storage(&kek, spec, &blob, b"key-9/v1", &KeyAttributes::internal());
        assert!(matches!(gone, Err(HsmError::Backend(m)) if m.contains("gone")));
    }
}

#[test]
fn concurrent_calls_share_the_session_pool() {
    let h = hsm();
    let key = h
        .generate(KeySpec::Aes256, &KeyAttributes::internal())
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let key = &key;
            s.spawn(move || {
                for i in 0..50 {
                    let msg = format!("{t}/{i}");
                    let mut sealed = Vec::new();
                    h.encrypt_symmetric(key, b"", msg.as_bytes(), &mut sealed)
                        .unwrap();
                    assert_eq!(
                        h.decrypt_symmetric(key, b"", &sealed).unwrap().expose(),
                        msg.as_bytes()
                    );
                }
            });
        }
    });
}

#[test]
fn the_hybrid_backend_seals_everything_under_the_token_and_keeps_token_keys_inside() {
    use keyward_hsm_pkcs11::HybridHsm;
    let token = std::sync::Arc::new(Pkcs11Hsm::open(&common::config()).unwrap());
    let hy = HybridHsm::new(token);
    // Software keys of every spec pass the suite through the hybrid.
    suite::every_spec_round_trips(&hy);
    suite::storage_wrapping_binds_aad(&hy);

    // The chain of a PKCS#11 deployment: unseal key (software) -> root (token object) -> versions.
    let unseal = hy
        .import_plaintext(
            KeySpec::Aes256,
            &SecretBytes::from_slice(&[9u8; 32]),
            &KeyAttributes::internal(),
        )
        .unwrap();
    let root = hy
        .generate(
            KeySpec::Aes256,
            &KeyAttributes {
                token_resident: true,
                label: Some("keyward-test-root".into()),
                ..KeyAttributes::internal()
            },
        )
        .unwrap();
    assert_eq!(
        hy.export_plaintext(&root).err(),
        Some(HsmError::NotExtractable)
    );
    let root_blob = hy
        .wrap_for_storage(&unseal, &root, b"keyward:root:1")
        .unwrap();
    let root_again = hy
        .unwrap_from_storage(
            &unseal,
            KeySpec::Aes256,
            &root_blob,
            b"keyward:root:1",
            &KeyAttributes::internal(),
        )
        .unwrap();
    // A software version sealed by the token root; opened by the root found again.
    let version = hy
        .generate(KeySpec::SymmetricDefault, &KeyAttributes::internal())
        .unwrap();
    let blob = hy
        .wrap_for_storage(&root, &version, b"keyward:key:k:1")
        .unwrap();
    assert!(blob.starts_with(b"KWH1"));
    let back = hy
        .unwrap_from_storage(
            &root_again,
            KeySpec::SymmetricDefault,
            &blob,
            b"keyward:key:k:1",
            &KeyAttributes::internal(),
        )
        .unwrap();
    let mut sealed = Vec::new();
    hy.encrypt_symmetric(&version, b"", b"data", &mut sealed)
        .unwrap();
    assert_eq!(
        hy.decrypt_symmetric(&back, b"", &sealed).unwrap().expose(),
        b"data"
    );
    assert_eq!(
        hy.unwrap_from_storage(
            &root_again,
            KeySpec::SymmetricDefault,
            &blob,
            b"keyward:key:k:2",
            &KeyAttributes::internal()
        )
        .err(),
        Some(HsmError::DecryptFailed)
    );
    // Internal software keys stay unexportable through the hybrid, whatever they are inside.
    assert_eq!(
        hy.export_plaintext(&back).err(),
        Some(HsmError::NotExtractable)
    );
    // An HSM-origin key: generated in the token, stored as a reference, never exported.
    let hsm_key = hy
        .generate(
            KeySpec::EccNistP256,
            &KeyAttributes {
                token_resident: true,
                ..KeyAttributes::internal()
            },
        )
        .unwrap();
    let spki = hy.public_key_der(&hsm_key).unwrap();
    assert_eq!(
        hy.export_wrapped(&hsm_key, &spki).err(),
        Some(HsmError::NotExtractable)
    );
    let blob = hy
        .wrap_for_storage(&root, &hsm_key, b"keyward:key:h:1")
        .unwrap();
    let back = hy
        .unwrap_from_storage(
            &root_again,
            KeySpec::EccNistP256,
            &blob,
            b"keyward:key:h:1",
            &KeyAttributes::internal(),
        )
        .unwrap();
    let sig = hy
        .sign(
            &back,
            keyward_hsm::SigningAlgorithm::EcdsaSha256,
            keyward_hsm::SignInput::Message(b"m"),
        )
        .unwrap();
    assert!(hy
        .verify(
            &hsm_key,
            keyward_hsm::SigningAlgorithm::EcdsaSha256,
            keyward_hsm::SignInput::Message(b"m"),
            &sig
        )
        .unwrap());
    // Another token's root (a different object) opens nothing.
    let other_root = hy
        .generate(
            KeySpec::Aes256,
            &KeyAttributes {
                token_resident: true,
                ..KeyAttributes::internal()
            },
        )
        .unwrap();
    assert!(hy
        .unwrap_from_storage(
            &other_root,
            KeySpec::SymmetricDefault,
            &hy.wrap_for_storage(&root, &version, b"a").unwrap(),
            b"a",
            &KeyAttributes::internal()
        )
        .is_err());
}
