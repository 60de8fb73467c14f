//! The software HSM runs the shared conformance suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_hsm::conformance as suite;
use keyward_hsm_soft::SoftHsm;

macro_rules! conformance_tests {
    ($($name:ident),+ $(,)?) => {
        $(#[test] fn $name() { suite::$name(&SoftHsm::new()); })+
    };
}

conformance_tests!(
    every_spec_round_trips,
    storage_wrapping_binds_aad,
    byok_export_import,
    import_validates_material,
    wycheproof_aead,
    wycheproof_hmac,
    wycheproof_hkdf,
    wycheproof_ecdsa,
    wycheproof_ed25519,
    wycheproof_rsa_signatures,
    wycheproof_rsa_oaep,
    wycheproof_ecdh,
    wycheproof_aes_kwp,
);
