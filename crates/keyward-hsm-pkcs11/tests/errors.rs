//! Clear errors, not panics, for a missing module, a wrong PIN and a missing token; and the PIN never appears
//! in one. Its own test binary: login state is shared by a whole process, so the wrong PIN must come first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use keyward_hsm::{Hsm, HsmError};
use keyward_hsm_pkcs11::Pkcs11Hsm;

fn message(e: HsmError) -> String {
    match e {
        HsmError::Backend(m) => m,
        other => panic!("expected a backend error, got {other}"),
    }
}

#[test]
fn missing_module_wrong_pin_and_missing_token_are_refused_clearly() {
    let mut config = common::config();
    let good_pin = config.pin.clone();

    config.pin = zeroize::Zeroizing::new("9999-wrong-pin".into());
    let err = message(Pkcs11Hsm::open(&config).err().unwrap());
    assert!(err.contains("refused the PIN"), "{err}");
    assert!(!err.contains("9999"), "{err}");
    assert!(!format!("{config:?}").contains("9999"));

    config.pin = good_pin.clone();
    config.token_label = "no-such-token".into();
    let err = message(Pkcs11Hsm::open(&config).err().unwrap());
    assert!(
        err.contains("no PKCS#11 token is labelled \"no-such-token\""),
        "{err}"
    );

    let mut missing = common::config();
    missing.module = "/nonexistent/libpkcs11.so".into();
    let err = message(Pkcs11Hsm::open(&missing).err().unwrap());
    assert!(
        err.contains("cannot load the PKCS#11 module /nonexistent/libpkcs11.so"),
        "{err}"
    );

    // And with everything right it opens and works.
    let hsm = Pkcs11Hsm::open(&common::config()).unwrap();
    let mut r = [0u8; 32];
    hsm.fill_random(&mut r).unwrap();
    assert_ne!(r, [0u8; 32]);
}
