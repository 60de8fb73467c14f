//! NIST ACVP known answers for ML-KEM decapsulation (FIPS 203), through the software HSM: a test of the
//! ACVP-Server's ML-KEM-768 validation group with an unmodified ciphertext, and one with a modified ciphertext,
//! whose answer is the implicit-rejection secret. The vectors are data copied from the NIST repository, as the
//! file names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_hsm::{Hsm, KeyAttributes, KeySpec, SecretBytes};
use keyward_hsm_soft::SoftHsm;

#[test]
fn ml_kem_768_decapsulation_matches_the_acvp_answers() {
    let text = include_str!("vectors/acvp-ml-kem-768-decapsulation.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let unhex = |s: &serde_json::Value| hex::decode(s.as_str().unwrap()).unwrap();
    let hsm = SoftHsm::new();
    let dk = SecretBytes::from_slice(&unhex(&v["dk"]));
    let key = hsm
        .import_plaintext(KeySpec::MlKem768, &dk, &KeyAttributes::internal())
        .unwrap();
    let tests = v["tests"].as_array().unwrap();
    let reasons: Vec<&str> = tests
        .iter()
        .map(|t| t["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["no modification", "modify ciphertext"]);
    for t in tests {
        let k = hsm.decapsulate(&key, &unhex(&t["c"])).unwrap();
        assert_eq!(k.expose(), unhex(&t["k"]), "tcId {}", t["tcId"]);
    }
}
