//! Between wire types and engine types.

use keyward_api::{KeyObject, Quorum, VersionObject};
use keyward_core::audit::rfc3339;
use keyward_core::{
    EncryptionAlgorithm, KeyInfo, KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm, VersionInfo,
};

use crate::error::ApiError;

/// A key for the API.
pub fn key_object(k: &KeyInfo) -> KeyObject {
    KeyObject {
        key_id: k.key_id.clone(),
        alias: k.alias.clone(),
        spec: k.spec.as_str().into(),
        usage: k.usage.as_str().into(),
        state: k.state.as_str().into(),
        description: k.description.clone(),
        tags: k.tags.clone(),
        created_at: rfc3339(k.created_at),
        primary_version: k.primary_version,
        min_decryption_version: k.min_decryption_version,
        rotation_period_days: k.rotation_period_days,
        next_rotation_at: k.next_rotation_at.map(rfc3339),
        last_rotated_at: k.last_rotated_at.map(rfc3339),
        deletion_date: k.deletion_date.map(rfc3339),
        origin: k.origin.as_str().into(),
        exportable: k.exportable,
        quorum: k.quorum_approvals.map(|approvals| Quorum { approvals }),
        encryption_algorithms: Vec::new(),
        pending_import: k.pending_import,
        blind_index_bits: k.blind_index_bits,
    }
}

/// A key for the API with the encryption algorithms it can use where it lives: what a key's creation and
/// description show.
pub fn described_key(kms: &keyward_core::Kms, k: &KeyInfo) -> KeyObject {
    KeyObject {
        encryption_algorithms: kms
            .encryption_algorithms(k)
            .iter()
            .map(|a| a.as_str().to_string())
            .collect(),
        ..key_object(k)
    }
}

/// A version for the API.
pub fn version_object(v: &VersionInfo) -> VersionObject {
    VersionObject {
        version: v.version,
        state: v.state.as_str().into(),
        created_at: rfc3339(v.created_at),
        destroyed_at: v.destroyed_at.map(rfc3339),
    }
}

/// Parses a wire name, or refuses it naming every accepted one: a refusal says what would have worked.
fn named<T: Copy>(
    what: &str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, ApiError> {
    parse(value).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|t| name(*t)).collect();
        ApiError::validation(format!(
            "unknown {what} {}; one of: {}",
            keyward_core::quoted(value),
            names.join(", ")
        ))
    })
}

/// Parses a key spec.
pub fn spec(s: &str) -> Result<KeySpec, ApiError> {
    named("key spec", s, KeySpec::parse, KeySpec::ALL, KeySpec::as_str)
}

/// Parses a usage.
pub fn usage(s: &str) -> Result<KeyUsage, ApiError> {
    named(
        "key usage",
        s,
        KeyUsage::parse,
        KeyUsage::ALL,
        KeyUsage::as_str,
    )
}

/// Parses an encryption algorithm.
pub fn encryption_algorithm(s: Option<&str>) -> Result<Option<EncryptionAlgorithm>, ApiError> {
    s.map(|s| {
        named(
            "encryption algorithm",
            s,
            EncryptionAlgorithm::parse,
            EncryptionAlgorithm::ALL,
            EncryptionAlgorithm::as_str,
        )
    })
    .transpose()
}

/// Parses a signing algorithm.
pub fn signing_algorithm(s: &str) -> Result<SigningAlgorithm, ApiError> {
    named(
        "signing algorithm",
        s,
        SigningAlgorithm::parse,
        SigningAlgorithm::ALL,
        SigningAlgorithm::as_str,
    )
}

/// Parses a MAC algorithm.
pub fn mac_algorithm(s: &str) -> Result<MacAlgorithm, ApiError> {
    named(
        "MAC algorithm",
        s,
        MacAlgorithm::parse,
        MacAlgorithm::ALL,
        MacAlgorithm::as_str,
    )
}

/// PEM armour of a DER blob.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub use keyward_core::shown;

pub use keyward_iam::{hex, unhex};

/// Refuses query parameters an endpoint does not know (a misspelt filter must not silently match all).
pub fn only(
    query: &std::collections::HashMap<String, String>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::validation(format!(
            "unknown query parameter {}",
            keyward_core::quoted(k)
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refusal_repeats_a_name_short_and_escaped() {
        assert_eq!(super::shown("alice"), "alice");
        assert_eq!(super::shown("bad\nname\u{1b}[31m"), "bad\\nname\\u{1b}[31m");
        let long = "é".repeat(5000);
        let shown = super::shown(&long);
        assert_eq!(shown, format!("{}…", "é".repeat(64)));
    }
}
