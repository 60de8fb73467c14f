//! Cross-implementation checks: what the software HSM signs, encrypts, agrees and wraps is checked by an
//! independent implementation (Python `cryptography`, and the OpenSSL CLI for SM2), and the other way round.
//! These tests fail, never skip, when the tools are missing: CI installs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use keyward_hsm::{
    EncryptionAlgorithm, Hsm, KeyAttributes, KeySpec, SecretBytes, SignInput, SigningAlgorithm,
};
use keyward_hsm_soft::SoftHsm;

/// Whether this build offers the spec: a FIPS build leaves out secp256k1 and SM2.
fn offered(spec: KeySpec) -> bool {
    Hsm::supports(&SoftHsm::new(), spec)
}

fn python(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "interop.py {:?} failed: {}",
        args.first(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed")
}

fn digest(alg: SigningAlgorithm, msg: &[u8]) -> Vec<u8> {
    use aws_lc_rs::digest;
    let d = match alg.digest_len() {
        Some(48) => &digest::SHA384,
        Some(64) => &digest::SHA512,
        _ => &digest::SHA256,
    };
    digest::digest(d, msg).as_ref().to_vec()
}

#[test]
fn our_signatures_verify_in_python_cryptography() {
    let hsm = SoftHsm::new();
    let msg = b"interoperability matters";
    for spec in [
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::EccNistP256,
        KeySpec::EccNistP384,
        KeySpec::EccNistP521,
        KeySpec::EccSecgP256k1,
        KeySpec::Ed25519,
    ]
    .into_iter()
    .filter(|spec| offered(*spec))
    {
        let key = hsm.generate(spec, &KeyAttributes::internal()).unwrap();
        let spki = hex::encode(hsm.public_key_der(&key).unwrap());
        for &alg in spec.signing_algorithms() {
            let sig = hsm.sign(&key, alg, SignInput::Message(msg)).unwrap();
            let verdict = python(&[
                "verify",
                &spki,
                alg.as_str(),
                &hex::encode(msg),
                &hex::encode(&sig),
            ]);
            assert_eq!(verdict, "ok", "{spec} {alg}: python rejected our signature");
            let mut bad = sig.clone();
            bad[4] ^= 0x10;
            let verdict = python(&[
                "verify",
                &spki,
                alg.as_str(),
                &hex::encode(msg),
                &hex::encode(&bad),
            ]);
            assert_eq!(
                verdict, "bad",
                "{spec} {alg}: python accepted a corrupted signature"
            );
            if alg.digest_len().is_some() {
                let d = digest(alg, msg);
                let sig = hsm.sign(&key, alg, SignInput::Digest(&d)).unwrap();
                let verdict = python(&[
                    "verify",
                    &spki,
                    alg.as_str(),
                    &hex::encode(&d),
                    &hex::encode(&sig),
                    "prehashed",
                ]);
                assert_eq!(
                    verdict, "ok",
                    "{spec} {alg}: python rejected our digest signature"
                );
            }
        }
    }
}

#[test]
fn python_signatures_verify_here() {
    let hsm = SoftHsm::new();
    let msg = b"signed elsewhere";
    for (spec, alg) in [
        (KeySpec::Rsa2048, SigningAlgorithm::RsassaPssSha256),
        (KeySpec::Rsa2048, SigningAlgorithm::RsassaPkcs1V15Sha512),
        (KeySpec::EccNistP256, SigningAlgorithm::EcdsaSha256),
        (KeySpec::EccNistP521, SigningAlgorithm::EcdsaSha512),
        (KeySpec::EccSecgP256k1, SigningAlgorithm::EcdsaSha256),
        (KeySpec::Ed25519, SigningAlgorithm::Ed25519),
    ]
    .into_iter()
    .filter(|(spec, _)| offered(*spec))
    {
        let out = python(&["sign", spec.as_str(), alg.as_str(), &hex::encode(msg)]);
        let (spki, sig) = out.split_once(' ').unwrap();
        let key = hsm
            .import_public(spec, &hex::decode(spki).unwrap())
            .unwrap();
        let sig = hex::decode(sig).unwrap();
        assert!(
            hsm.verify(&key, alg, SignInput::Message(msg), &sig)
                .unwrap(),
            "{spec} {alg}"
        );
        assert!(!hsm
            .verify(&key, alg, SignInput::Message(b"other"), &sig)
            .unwrap());
    }
}

#[test]
fn rsa_oaep_both_directions() {
    let hsm = SoftHsm::new();
    let key = hsm
        .generate(KeySpec::Rsa2048, &KeyAttributes::extractable())
        .unwrap();
    let spki = hex::encode(hsm.public_key_der(&key).unwrap());
    let pkcs8 = hex::encode(hsm.export_plaintext(&key).unwrap().expose());
    for (alg, h) in [
        (EncryptionAlgorithm::RsaesOaepSha1, "1"),
        (EncryptionAlgorithm::RsaesOaepSha256, "256"),
    ] {
        let ct = python(&["oaep-encrypt", &spki, h, &hex::encode(b"from python")]);
        let pt = hsm
            .decrypt_asymmetric(&key, alg, &hex::decode(ct).unwrap())
            .unwrap();
        assert_eq!(pt.expose(), b"from python", "{alg}");
        let ct = hsm.encrypt_asymmetric(&key, alg, b"from keyward").unwrap();
        let pt = python(&["oaep-decrypt", &pkcs8, h, &hex::encode(ct)]);
        assert_eq!(hex::decode(pt).unwrap(), b"from keyward", "{alg}");
    }
}

#[test]
fn ecdh_agrees_with_python() {
    let hsm = SoftHsm::new();
    for spec in [
        KeySpec::EccNistP256,
        KeySpec::EccNistP384,
        KeySpec::EccNistP521,
        KeySpec::EccSecgP256k1,
    ]
    .into_iter()
    .filter(|spec| offered(*spec))
    {
        let key = hsm.generate(spec, &KeyAttributes::internal()).unwrap();
        let out = python(&[
            "ecdh",
            spec.as_str(),
            &hex::encode(hsm.public_key_der(&key).unwrap()),
        ]);
        let (peer, shared) = out.split_once(' ').unwrap();
        let ours = hsm.agree(&key, &hex::decode(peer).unwrap()).unwrap();
        assert_eq!(hex::encode(ours.expose()), shared, "{spec}");
    }
}

#[test]
fn byok_material_wrapped_by_python_imports() {
    let hsm = SoftHsm::new();
    let unwrapping = hsm
        .generate(KeySpec::Rsa4096, &KeyAttributes::internal())
        .unwrap();
    let spki = hex::encode(hsm.public_key_der(&unwrapping).unwrap());
    let material = [0x3cu8; 32];
    let wrapped = python(&["byok-wrap", &spki, &hex::encode(material)]);
    let key = hsm
        .import_wrapped(
            &unwrapping,
            KeySpec::Hmac256,
            &hex::decode(wrapped).unwrap(),
            &KeyAttributes::internal(),
        )
        .unwrap();
    let expected = {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &material);
        aws_lc_rs::hmac::sign(&k, b"msg").as_ref().to_vec()
    };
    assert_eq!(
        hsm.mac(&key, keyward_hsm::MacAlgorithm::HmacSha256, b"msg")
            .unwrap(),
        expected
    );
}

// A FIPS build refuses SM2 (keyward-core's engine tests check the refusal).
#[cfg(not(feature = "fips"))]
#[test]
fn sm2_interoperates_with_openssl() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let key = hsm
        .generate(KeySpec::Sm2, &KeyAttributes::extractable())
        .unwrap();
    std::fs::write(path("pub.der"), hsm.public_key_der(&key).unwrap()).unwrap();
    std::fs::write(
        path("priv.der"),
        hsm.export_plaintext(&key).unwrap().expose(),
    )
    .unwrap();
    std::fs::write(path("msg"), b"SM2 across implementations").unwrap();

    // Our signature verifies in OpenSSL with the default distinguishing id and SM3.
    let sig = hsm
        .sign(
            &key,
            SigningAlgorithm::Sm2Dsa,
            SignInput::Message(b"SM2 across implementations"),
        )
        .unwrap();
    std::fs::write(path("sig"), &sig).unwrap();
    let out = openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        &path("pub.der"),
        "-rawin",
        "-in",
        &path("msg"),
        "-sigfile",
        &path("sig"),
        "-digest",
        "sm3",
        "-pkeyopt",
        "distid:1234567812345678",
    ]);
    assert!(
        out.status.success(),
        "openssl rejected our SM2 signature: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // OpenSSL's signature verifies here.
    let out = openssl(&[
        "pkeyutl",
        "-sign",
        "-inkey",
        &path("priv.der"),
        "-keyform",
        "DER",
        "-rawin",
        "-in",
        &path("msg"),
        "-digest",
        "sm3",
        "-pkeyopt",
        "distid:1234567812345678",
        "-out",
        &path("osig"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let osig = std::fs::read(path("osig")).unwrap();
    assert!(hsm
        .verify(
            &key,
            SigningAlgorithm::Sm2Dsa,
            SignInput::Message(b"SM2 across implementations"),
            &osig
        )
        .unwrap());

    // OpenSSL encrypts to our key (GM/T 0009 ASN.1 ciphertext); we decrypt. And the reverse.
    let out = openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        &path("pub.der"),
        "-in",
        &path("msg"),
        "-out",
        &path("ct"),
    ]);
    assert!(out.status.success());
    let ct = std::fs::read(path("ct")).unwrap();
    let pt = hsm
        .decrypt_asymmetric(&key, EncryptionAlgorithm::Sm2Pke, &ct)
        .unwrap();
    assert_eq!(pt.expose(), b"SM2 across implementations");
    let ours = hsm
        .encrypt_asymmetric(&key, EncryptionAlgorithm::Sm2Pke, b"back to openssl")
        .unwrap();
    std::fs::write(path("ct2"), ours).unwrap();
    let out = openssl(&[
        "pkeyutl",
        "-decrypt",
        "-inkey",
        &path("priv.der"),
        "-keyform",
        "DER",
        "-in",
        &path("ct2"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"back to openssl");
}

#[test]
fn pkcs8_export_is_standard() {
    // OpenSSL reads the PKCS#8 we export for every private-key spec.
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        KeySpec::Rsa2048,
        KeySpec::EccNistP384,
        KeySpec::EccSecgP256k1,
        KeySpec::Ed25519,
        KeySpec::Sm2,
    ]
    .into_iter()
    .filter(|spec| offered(*spec))
    {
        let key = hsm.generate(spec, &KeyAttributes::extractable()).unwrap();
        let der: SecretBytes = hsm.export_plaintext(&key).unwrap();
        let p = dir.path().join("k.der");
        std::fs::write(&p, der.expose()).unwrap();
        let out = openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            p.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
        ]);
        assert!(
            out.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout,
            hsm.public_key_der(&key).unwrap(),
            "{spec}: public keys differ"
        );
    }
}
