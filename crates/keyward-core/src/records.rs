//! How the engine's own records are spelled in the store: namespaces, the associated data that binds wrapped
//! material to where it belongs, the encoding of system records, and the one way a corrupt record is
//! reported. A leaf: every module of the engine may use it, and it uses none of them.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, KmsError, KmsResult};

/// Namespace of system records in the store.
pub(crate) const SYS: &str = "sys";
/// Namespace of pending BYOK import tokens.
pub(crate) const IMPORT_NS: &str = "import";

#[derive(Serialize, Deserialize)]
pub(crate) struct RootRecord {
    pub(crate) generation: u32,
    /// The root key wrapped under the unseal key, base64.
    pub(crate) wrapped: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ImportTokenRecord {
    pub key_id: String,
    pub expires_at: i64,
    pub wrapped_private_key: String,
}

/// Imported material that was deleted, kept as a value that recognises the same material when it is imported
/// again (HKDF output for secret keys, the public key for key pairs), under `IMPORT_CHECK_NS` by
/// `key_id/version`.
#[derive(Serialize, Deserialize)]
pub(crate) struct DeletedMaterialRecord {
    pub check: String,
    /// The version's state before the deletion, restored with the material.
    pub state: String,
}

pub(crate) const IMPORT_CHECK_NS: &str = "import-check";

/// The name of a version's [`DeletedMaterialRecord`].
pub(crate) fn check_name(key_id: &str, version: u32) -> String {
    format!("{key_id}/{version}")
}

pub(crate) fn token_aad(token: &str) -> Vec<u8> {
    format!("keyward:import:{token}").into_bytes()
}

/// The associated data binding a version's wrapped material to its key and version.
pub(crate) fn version_aad(key_id: &str, version: u32) -> Vec<u8> {
    format!("keyward:key:{key_id}:{version}").into_bytes()
}

pub(crate) fn root_aad(generation: u32) -> Vec<u8> {
    format!("keyward:root:{generation}").into_bytes()
}

/// Parses a stored root record into its generation and wrapped key.
pub(crate) fn parse_root(json: &[u8]) -> KmsResult<(u32, Vec<u8>)> {
    let rec: RootRecord = serde_json::from_slice(json).map_err(|_| corrupt("root record"))?;
    Ok((rec.generation, unb64(&rec.wrapped)?))
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn unb64(s: &str) -> KmsResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| {
            KmsError::new(
                ErrorCode::Unavailable,
                "store corrupt: bad base64 in a system record",
            )
        })
}

pub(crate) fn corrupt(what: &str) -> KmsError {
    KmsError::new(ErrorCode::Unavailable, format!("store corrupt: {what}"))
}

pub(crate) fn parse_id(key_id: &str) -> KmsResult<[u8; 16]> {
    uuid::Uuid::parse_str(key_id)
        .map(|u| *u.as_bytes())
        .map_err(|_| corrupt("a key id is not a UUID"))
}
