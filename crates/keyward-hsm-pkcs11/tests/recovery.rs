//! The token forgets this process (a logout from elsewhere in it, as a token reset or an HSM failover does):
//! the backend logs in again and finds its persistent keys by id; keys that lived only in the lost sessions
//! fail with a clear error. Its own test binary, because the logout reaches every session of the process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward_hsm::{Hsm, HsmError, KeyAttributes, KeySpec, MacAlgorithm};
use keyward_hsm_pkcs11::Pkcs11Hsm;

#[test]
fn after_the_token_forgets_the_process_persistent_keys_work_again() {
    let config = common::config();
    let hsm = Pkcs11Hsm::open(&config).unwrap();
    let resident = KeyAttributes {
        token_resident: true,
        ..KeyAttributes::internal()
    };
    let key = hsm.generate(KeySpec::Aes256, &resident).unwrap();
    let kek = hsm.root_of_trust_key("keyward-recovery-kek").unwrap();
    let session_only = hsm
        .generate(KeySpec::Hmac256, &KeyAttributes::internal())
        .unwrap();
    let mut sealed = Vec::new();
    hsm.encrypt_symmetric(&key, b"", b"before", &mut sealed)
        .unwrap();
    let blob = hsm.seal_for_storage(&kek, b"aad", b"stored").unwrap();
    hsm.mac(&session_only, MacAlgorithm::HmacSha256, b"m")
        .unwrap();

    // Elsewhere in the process, the token session is logged out: every handle to a private object dies.
    let ctx = Pkcs11::new(&config.module).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == config.token_label)
        .unwrap();
    let other = ctx.open_rw_session(slot).unwrap();
    let _ = other.login(
        UserType::User,
        Some(&AuthPin::new(config.pin.as_str().into())),
    );
    other.logout().unwrap();

    assert_eq!(
        hsm.decrypt_symmetric(&key, b"", &sealed).unwrap().expose(),
        b"before"
    );
    assert_eq!(
        hsm.open_from_storage(&kek, b"aad", &blob).unwrap().expose(),
        b"stored"
    );
    let mut again = Vec::new();
    hsm.encrypt_symmetric(&key, b"", b"after", &mut again)
        .unwrap();
    assert_eq!(
        hsm.decrypt_symmetric(&key, b"", &again).unwrap().expose(),
        b"after"
    );
    // A key that lived only in the lost session is gone, and the error says what happened.
    match hsm.mac(&session_only, MacAlgorithm::HmacSha256, b"m") {
        Err(HsmError::Backend(m)) => assert!(m.contains("no longer knows"), "{m}"),
        other => panic!("expected a clear error, got {other:?}"),
    }
}
