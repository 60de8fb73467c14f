//! AWS KMS shapes: blobs, tags, key references and ARNs, and `KeyMetadata`.

use base64::Engine as _;
use keyward_core::{KeyInfo, KeySpec, KeyState, KeyUsage, Origin};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use zeroize::Zeroizing;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Base64 text as a JSON value.
pub fn blob(bytes: &[u8]) -> Value {
    Value::String(b64().encode(bytes))
}

/// A blob field (base64 in JSON).
pub struct Blob(pub Vec<u8>);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        b64()
            .decode(text.as_bytes())
            .map(Blob)
            .map_err(|_| serde::de::Error::custom("not base64"))
    }
}

/// A blob field that carries a secret (a plaintext): wiped when dropped.
pub struct SecretBlob(pub Zeroizing<Vec<u8>>);

impl<'de> Deserialize<'de> for SecretBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        b64()
            .decode(text.as_bytes())
            .map(|b| SecretBlob(Zeroizing::new(b)))
            .map_err(|_| serde::de::Error::custom("not base64"))
    }
}

/// One tag as AWS spells it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    /// The name.
    pub tag_key: String,
    /// The value.
    pub tag_value: String,
}

/// Where ARNs point: the request's region and the configured account.
pub struct Place<'a> {
    /// From the request's credential scope.
    pub region: &'a str,
    /// `aws_account_id`.
    pub account: &'a str,
}

impl Place<'_> {
    /// `arn:aws:kms:REGION:ACCOUNT:key/ID`.
    pub fn key_arn(&self, key_id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{key_id}", self.region, self.account)
    }

    /// `arn:aws:kms:REGION:ACCOUNT:alias/NAME` for `alias/NAME`.
    pub fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{alias}", self.region, self.account)
    }
}

/// A key reference as Keyward's engine reads it: a key ARN becomes its id, an alias ARN `alias/NAME`; an
/// id or `alias/NAME` stays as it is. An ARN of another account is kept whole, so that it names nothing.
pub fn key_ref(given: &str, account: &str) -> String {
    let Some(rest) = given.strip_prefix("arn:") else {
        return given.to_string();
    };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    match parts.as_slice() {
        [_partition, "kms", _region, acct, resource] if *acct == account => {
            match resource.strip_prefix("key/") {
                Some(id) => id.to_string(),
                None if resource.starts_with("alias/") => resource.to_string(),
                None => given.to_string(),
            }
        }
        _ => given.to_string(),
    }
}

/// The AWS name of a key's state.
pub fn state(s: KeyState) -> &'static str {
    match s {
        KeyState::Enabled => "Enabled",
        KeyState::Disabled => "Disabled",
        KeyState::PendingDeletion => "PendingDeletion",
        KeyState::Destroyed => "Unavailable",
    }
}

/// The AWS name of a key's origin.
pub fn origin(o: Origin) -> &'static str {
    match o {
        Origin::Keyward => "AWS_KMS",
        Origin::External => "EXTERNAL",
        Origin::Hsm => "AWS_CLOUDHSM",
    }
}

/// The algorithm lists of `KeyMetadata` and `GetPublicKey`, each present only where the usage has it; the
/// encryption algorithms are those the key's HSM offers (`Kms::encryption_algorithms`).
pub fn algorithms(
    spec: KeySpec,
    usage: KeyUsage,
    encryption: &[keyward_core::EncryptionAlgorithm],
    out: &mut serde_json::Map<String, Value>,
) {
    let names = |v: Vec<&'static str>| Value::from(v);
    match usage {
        KeyUsage::EncryptDecrypt => {
            out.insert(
                "EncryptionAlgorithms".into(),
                names(encryption.iter().map(|a| a.as_str()).collect()),
            );
        }
        KeyUsage::SignVerify => {
            out.insert(
                "SigningAlgorithms".into(),
                names(
                    spec.signing_algorithms()
                        .iter()
                        .map(|a| a.as_str())
                        .collect(),
                ),
            );
        }
        KeyUsage::GenerateVerifyMac => {
            out.insert(
                "MacAlgorithms".into(),
                names(
                    spec.mac_algorithm()
                        .map(|a| a.as_str())
                        .into_iter()
                        .collect(),
                ),
            );
        }
        KeyUsage::KeyAgreement => {
            out.insert("KeyAgreementAlgorithms".into(), json!(["ECDH"]));
        }
    }
}

/// `KeyMetadata` for a key.
pub fn key_metadata(k: &KeyInfo, place: &Place<'_>, kms: &keyward_core::Kms) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("AWSAccountId".into(), json!(place.account));
    m.insert("KeyId".into(), json!(k.key_id));
    m.insert("Arn".into(), json!(place.key_arn(&k.key_id)));
    m.insert("CreationDate".into(), json!(k.created_at));
    // An EXTERNAL key before its first import, or after its material was deleted: AWS calls it PendingImport.
    let pending_import =
        k.pending_import || (k.origin == Origin::External && k.primary_version == 0);
    let enabled = k.state == KeyState::Enabled && !pending_import;
    m.insert("Enabled".into(), json!(enabled));
    m.insert("Description".into(), json!(k.description));
    m.insert("KeyUsage".into(), json!(k.usage.as_str()));
    let shown = if pending_import && matches!(k.state, KeyState::Enabled | KeyState::Disabled) {
        "PendingImport"
    } else {
        state(k.state)
    };
    m.insert("KeyState".into(), json!(shown));
    if let Some(d) = k
        .deletion_date
        .filter(|_| k.state == KeyState::PendingDeletion)
    {
        m.insert("DeletionDate".into(), json!(d));
    }
    m.insert("Origin".into(), json!(origin(k.origin)));
    m.insert("KeyManager".into(), json!("CUSTOMER"));
    m.insert("CustomerMasterKeySpec".into(), json!(k.spec.as_str()));
    m.insert("KeySpec".into(), json!(k.spec.as_str()));
    algorithms(k.spec, k.usage, &kms.encryption_algorithms(k), &mut m);
    m.insert("MultiRegion".into(), json!(false));
    Value::Object(m)
}
