//! Errors of the HSM layer.
//!
//! They are deliberately coarse: a failed decryption or unwrap says only that it failed, never why, so an
//! attacker probing with crafted ciphertexts learns nothing (no padding or tag oracle). No variant carries key
//! material or plaintext.

use core::fmt;

/// An HSM operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HsmError {
    /// The backend does not implement this key spec.
    UnsupportedSpec(crate::KeySpec),
    /// The backend runs a FIPS 140-3 validated module, and this spec's algorithms are not in it.
    OutsideFipsModule(crate::KeySpec),
    /// The algorithm does not fit the key (e.g. signing with an AES key, ECDSA_SHA_384 on P-256).
    IncorrectKeyUsage(&'static str),
    /// The input is malformed: wrong digest length, bad public key, key material of the wrong size.
    InvalidInput(&'static str),
    /// Authentication or decryption failed. Opaque on purpose.
    DecryptFailed,
    /// The key may not leave the HSM.
    NotExtractable,
    /// The handle belongs to another backend.
    WrongBackend,
    /// The backend failed (token removed, mechanism refused, library error). The text names no secret.
    Backend(String),
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HsmError::UnsupportedSpec(s) => write!(f, "key spec {s} is not supported by this HSM"),
            HsmError::OutsideFipsModule(s) => write!(
                f,
                "key spec {s} is outside the FIPS 140-3 validated module: refused in FIPS mode"
            ),
            HsmError::IncorrectKeyUsage(why) => write!(f, "incorrect key usage: {why}"),
            HsmError::InvalidInput(why) => write!(f, "invalid input: {why}"),
            HsmError::DecryptFailed => f.write_str("decryption failed"),
            HsmError::NotExtractable => f.write_str("key material is not extractable"),
            HsmError::WrongBackend => f.write_str("key handle belongs to another HSM backend"),
            HsmError::Backend(why) => write!(f, "HSM backend error: {why}"),
        }
    }
}

impl std::error::Error for HsmError {}

/// Result of an HSM operation.
pub type HsmResult<T> = Result<T, HsmError>;
