//! Known-answer tests from the Chinese national standards, through the software HSM.
//!
//! SM2: the signature example of GB/T 32918.2 (GM/T 0003.5) on the recommended curve, with the default
//! distinguishing id "1234567812345678"; its Z_A and e = SM3(Z_A || M) pin SM3 too.
//! SM4: the SM4-GCM example of RFC 8998 (A.1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A FIPS build refuses SM2 and SM4 (keyward-core's engine tests check the refusal).
#![cfg(not(feature = "fips"))]

use keyward_hsm::conformance::ec_pkcs8;
use keyward_hsm::{Hsm, KeyAttributes, KeySpec, SecretBytes, SignInput, SigningAlgorithm};
use keyward_hsm_soft::SoftHsm;

const SM2_CURVE_OID: &[u8] = &[0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
const D: &str = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8";
const PX: &str = "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020";
const PY: &str = "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13";
const E: &str = "F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640";
const R: &str = "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3";
const S: &str = "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA";

fn der_int(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

fn der_sig(r: &[u8], s: &[u8]) -> Vec<u8> {
    let body = [der_int(r), der_int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[test]
fn sm2_signature_example_of_gbt_32918() {
    let hsm = SoftHsm::new();
    let d = hex::decode(D).unwrap();
    let key = hsm
        .import_plaintext(
            KeySpec::Sm2,
            &SecretBytes::new(ec_pkcs8(SM2_CURVE_OID, &d)),
            &KeyAttributes::internal(),
        )
        .unwrap();
    let spki = hsm.public_key_der(&key).unwrap();
    let point = [
        &[0x04][..],
        &hex::decode(PX).unwrap(),
        &hex::decode(PY).unwrap(),
    ]
    .concat();
    assert!(
        spki.ends_with(&point),
        "public key of the example does not match d"
    );

    let sig = der_sig(&hex::decode(R).unwrap(), &hex::decode(S).unwrap());
    let msg = b"message digest";
    assert!(hsm
        .verify(
            &key,
            SigningAlgorithm::Sm2Dsa,
            SignInput::Message(msg),
            &sig
        )
        .unwrap());
    let e = hex::decode(E).unwrap();
    assert!(hsm
        .verify(&key, SigningAlgorithm::Sm2Dsa, SignInput::Digest(&e), &sig)
        .unwrap());
    assert!(!hsm
        .verify(
            &key,
            SigningAlgorithm::Sm2Dsa,
            SignInput::Message(b"message digesT"),
            &sig
        )
        .unwrap());

    // Our own signatures over e verify over the message: the digest path computes the same e.
    let ours = hsm
        .sign(&key, SigningAlgorithm::Sm2Dsa, SignInput::Digest(&e))
        .unwrap();
    assert!(hsm
        .verify(
            &key,
            SigningAlgorithm::Sm2Dsa,
            SignInput::Message(msg),
            &ours
        )
        .unwrap());
    let public = hsm.import_public(KeySpec::Sm2, &spki).unwrap();
    assert!(hsm
        .verify(
            &public,
            SigningAlgorithm::Sm2Dsa,
            SignInput::Message(msg),
            &sig
        )
        .unwrap());
}

#[test]
fn sm4_gcm_example_of_rfc_8998() {
    let hsm = SoftHsm::new();
    let key = hsm
        .import_plaintext(
            KeySpec::Sm4,
            &SecretBytes::new(hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap()),
            &KeyAttributes::internal(),
        )
        .unwrap();
    let sealed = hex::decode(concat!(
        "00001234567800000000ABCD",
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735",
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D",
        "83DE3541E4C2B58177E065A9BF7B62EC"
    ))
    .unwrap();
    let aad = hex::decode("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2").unwrap();
    let pt = hsm.decrypt_symmetric(&key, &aad, &sealed).unwrap();
    let expected = hex::decode(concat!(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    ))
    .unwrap();
    assert_eq!(pt.expose(), &expected[..]);
}
