//! A PKCS#11 token as the root of trust: the unseal key is kept sealed by a non-extractable key inside the
//! token, opened at every start, so the service unseals itself.

use keyward_core::{Kms, RootOfTrust};

use crate::error::ApiError;
use crate::App;

/// Label of the token key that seals the unseal key: the PKCS#11 root of trust.
pub const PKCS11_ROOT_OF_TRUST: &str = "keyward-root-of-trust";
/// Binds the sealed unseal key to its purpose.
const PKCS11_SEAL_AAD: &[u8] = b"keyward:pkcs11:unseal-key";

/// With a PKCS#11 root of trust the service unseals itself: the unseal key is stored sealed by the token's
/// root-of-trust key (AES-GCM inside the token) and opened at every start. An uninitialised service waits
/// for `POST /v1/sys/init`, which seals a fresh unseal key the same way.
pub fn pkcs11_unseal(kms: &Kms, token: &keyward_hsm_pkcs11::Pkcs11Hsm) -> Result<(), String> {
    let s = kms.status();
    if !s.initialized {
        return Ok(());
    }
    if s.root_of_trust != Some(RootOfTrust::Pkcs11) {
        return Err(format!(
            "this store was initialised with root of trust {}; it cannot be opened with a PKCS#11 token",
            s.root_of_trust.map(RootOfTrust::as_str).unwrap_or("none")
        ));
    }
    let rot = token
        .root_of_trust_key(PKCS11_ROOT_OF_TRUST)
        .map_err(|e| e.to_string())?;
    kms.unseal_with_sealed_key(|sealed| {
        token
            .open_from_storage(&rot, PKCS11_SEAL_AAD, sealed)
            .map_err(|_| {
                keyward_core::KmsError::new(
                    keyward_core::ErrorCode::Unavailable,
                    "the PKCS#11 token cannot open this service's unseal key: it is another token, or its root-of-trust key was replaced",
                )
            })
    })
    .map_err(|e| e.message().to_string())
}

/// Initialises a service whose root of trust is the token: no shares, the service unseals itself.
pub fn pkcs11_init(app: &App) -> Result<(), ApiError> {
    let Some(token) = &app.token else {
        return Err(ApiError::new(
            keyward_core::ErrorCode::InvalidState,
            "no PKCS#11 token is configured",
        ));
    };
    let rot = token
        .root_of_trust_key(PKCS11_ROOT_OF_TRUST)
        .map_err(keyward_core::KmsError::from)?;
    app.kms.init_sealed(RootOfTrust::Pkcs11, |unseal_key| {
        Ok(token.seal_for_storage(&rot, PKCS11_SEAL_AAD, unseal_key.expose())?)
    })?;
    Ok(())
}
