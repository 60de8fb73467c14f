//! Wire types of the Keyward REST API v1 (`API.md`).
//!
//! Requests reject unknown fields, so a typo in a field name is a `ValidationError` rather than a silently
//! ignored option. Binary values travel as standard base64 with padding; secret ones ([`SecretB64`]) are
//! zeroized on drop and never appear in `Debug` output.

mod b64;
mod strict;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use b64::{SecretB64, B64};
pub use strict::null_as_default;

/// An encryption context.
pub type Context = BTreeMap<String, String>;

/// The body of every non-2xx response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable code from the API's table (`ValidationError`, `NotFound`, ...).
    pub code: String,
    /// Human-readable explanation; never contains secrets.
    pub message: String,
}

/// `202 Accepted` for an operation waiting on quorum approval.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalPending {
    /// The approval request to approve or reject.
    pub approval_id: String,
    /// Always `pending`.
    pub status: String,
}

// ----- system -----

/// `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok`, `degraded` (serving, but something needs an operator: `reason` says what), `sealed`,
    /// `uninitialized` or `unavailable`.
    pub status: String,
    /// Why the node is `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Server version.
    pub version: String,
    /// This node's id.
    pub node_id: String,
}

/// `GET /v1/sys/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SysStatus {
    /// Whether init has run.
    pub initialized: bool,
    /// Whether key material is unavailable.
    pub sealed: bool,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// Shares issued.
    pub shares: u8,
    /// Shares submitted so far.
    pub progress: u8,
    /// `shamir`, `pkcs11` or `dev`.
    pub root_of_trust: Option<String>,
    /// Whether the cryptographic module runs in FIPS mode (a FIPS build on AWS-LC's validated module).
    #[serde(default)]
    pub fips: bool,
    /// The cryptographic module by name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto_module: Option<CryptoModuleInfo>,
}

/// The cryptographic module a node runs, as `GET /v1/sys/status` and the compliance report name it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CryptoModuleInfo {
    /// `AWS-LC`, or `AWS-LC FIPS` for the validated module.
    pub name: String,
    /// The version it reports at run time.
    pub version: String,
}

/// `POST /v1/sys/init`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// Number of shares (1 to 255).
    pub shares: u8,
    /// Shares needed to unseal.
    pub threshold: u8,
}

/// Response of `POST /v1/sys/init`; shown once, so its secrets are wiped wherever a copy is dropped.
#[derive(Clone, Serialize, Deserialize)]
pub struct InitResponse {
    /// Base64 unseal shares, one per operator.
    pub shares: Vec<zeroize::Zeroizing<String>>,
    /// The initial root token.
    pub root_token: zeroize::Zeroizing<String>,
    /// Its id, to revoke it once an admin identity exists.
    #[serde(default)]
    pub root_token_id: String,
}

impl std::fmt::Debug for InitResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InitResponse({} shares, root token redacted)",
            self.shares.len()
        )
    }
}

/// `POST /v1/sys/unseal`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    /// One base64 share.
    pub share: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for UnsealRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsealRequest(share redacted)")
    }
}

/// Response of `POST /v1/sys/rotate-root`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotateRootResponse {
    /// The new root key generation.
    pub generation: u32,
}

/// Body of `POST /v1/audit/prune`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PruneAuditRequest {
    /// The last record to delete.
    pub through_seq: u64,
}

/// Response of `POST /v1/audit/prune`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneAuditResponse {
    /// Records deleted.
    pub pruned: u64,
    /// The log now starts after this record.
    pub pruned_through: u64,
}

/// Response of `POST /v1/sys/backup`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupResponse {
    /// The encrypted, authenticated snapshot.
    pub backup: B64,
}

/// Body of `POST /v1/sys/restore`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// A backup made by `POST /v1/sys/backup`.
    pub backup: B64,
    /// A threshold of the cluster's unseal shares: required on a fresh (uninitialised) node, refused on
    /// an initialised one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<Vec<zeroize::Zeroizing<String>>>,
    /// Let older state in the backup replace newer state in the store.
    #[serde(default, deserialize_with = "strict::null_as_default")]
    pub force: bool,
}

impl std::fmt::Debug for RestoreRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreRequest")
            .field("backup_bytes", &self.backup.0.len())
            .field("shares", &self.shares.as_ref().map(Vec::len))
            .field("force", &self.force)
            .finish()
    }
}

/// Response of `POST /v1/sys/restore`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreResponse {
    /// Keys written by the restore.
    pub restored_keys: usize,
    /// Whether the restore initialised this node (which is then unsealed).
    #[serde(default)]
    pub initialized: bool,
}

// ----- keys -----

/// Quorum settings of a key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    /// Distinct approvals needed.
    pub approvals: u32,
}

/// `POST /v1/keys`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Key spec.
    pub spec: String,
    /// Key usage; the spec's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `alias/NAME` to create with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Automatic rotation period in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_days: Option<u32>,
    /// Whether wrapped export is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exportable: Option<bool>,
    /// `KEYWARD`, `HSM` or `EXTERNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Quorum settings.
    #[serde(
        default,
        deserialize_with = "strict::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub quorum: Option<Quorum>,
    /// Needed for legacy specs (TDES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_legacy: Option<bool>,
    /// Blind index length of field protection, 16 to 256 bits (default 64); fixed for the key's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind_index_bits: Option<u32>,
}

/// A key as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyObject {
    /// UUID.
    pub key_id: String,
    /// First alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Key spec.
    pub spec: String,
    /// Usage.
    pub usage: String,
    /// `Enabled`, `Disabled`, `PendingDeletion` or `Destroyed`.
    pub state: String,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
    /// Primary version.
    pub primary_version: u32,
    /// Lowest version that decrypts.
    pub min_decryption_version: u32,
    /// Rotation period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_days: Option<u32>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<String>,
    /// `KEYWARD`, `EXTERNAL` or `HSM`.
    pub origin: String,
    /// Whether wrapped export is allowed.
    pub exportable: bool,
    /// Quorum settings.
    #[serde(
        default,
        deserialize_with = "strict::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub quorum: Option<Quorum>,
    /// The encryption algorithms the key can use where it lives (a PKCS#11 token may offer fewer than its
    /// spec has); given when a key is created or described, for keys that encrypt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encryption_algorithms: Vec<String>,
    /// True when the imported material of an EXTERNAL key was deleted: the key refuses every cryptographic
    /// call until the same material is imported again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_import: bool,
    /// Blind index length of field protection, when set at creation (64 bits otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind_index_bits: Option<u32>,
}

/// `GET /v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyList {
    /// One page of keys.
    pub keys: Vec<KeyObject>,
    /// Token of the next page; absent on the last page.
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `PATCH /v1/keys/{key}`. `rotation_period_days: null` turns automatic rotation off.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New tags, replacing all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// New rotation period; `null` to stop rotating.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub rotation_period_days: Option<Option<u32>>,
    /// New lowest decryptable version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decryption_version: Option<u32>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<u32>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
        Option::<u32>::deserialize(d).map(Some)
    }
}

/// A key version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionObject {
    /// Number.
    pub version: u32,
    /// `Enabled`, `Disabled`, `Archived` or `Destroyed`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed_at: Option<String>,
}

/// `GET /v1/keys/{key}/versions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionList {
    /// Oldest first.
    pub versions: Vec<VersionObject>,
    /// The next page's token while more remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `POST /v1/keys/{key}/primary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPrimaryRequest {
    /// The version to make primary.
    pub version: u32,
}

/// `POST /v1/keys/{key}/schedule-deletion`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDeletionRequest {
    /// Waiting period, 7 to 30 days (30 when absent).
    #[serde(default)]
    pub pending_days: Option<u32>,
}

/// `GET /v1/keys/{key}/public-key`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicKeyResponse {
    /// Key id.
    pub key_id: String,
    /// Primary version.
    pub version: u32,
    /// Key spec.
    pub spec: String,
    /// SPKI in PEM.
    pub public_key_pem: String,
    /// SPKI DER.
    pub public_key_der: B64,
}

/// `GET /v1/keys/{key}/import-parameters`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportParametersResponse {
    /// RSA-4096 SPKI DER to wrap the ephemeral AES key with (RSA-OAEP-SHA-256).
    pub wrapping_public_key_der: B64,
    /// Single-use token.
    pub import_token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/keys/{key}/import`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// From import-parameters.
    pub import_token: String,
    /// RSA-OAEP-SHA-256(ephemeral AES-256 key) || AES-KWP(material).
    pub wrapped_key_material: SecretB64,
}

/// `POST /v1/keys/{key}/export`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The recipient's RSA public key (SPKI DER).
    pub wrapping_public_key_der: B64,
    /// Version to export; the primary when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Response of export.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportResponse {
    /// Same scheme as import.
    pub wrapped_key_material: B64,
}

/// `PUT /v1/aliases/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutAliasRequest {
    /// Target key.
    pub key_id: String,
}

/// One alias.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AliasObject {
    /// `alias/NAME`.
    pub alias: String,
    /// Target key.
    pub key_id: String,
}

/// `GET /v1/aliases`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AliasList {
    /// One page.
    pub aliases: Vec<AliasObject>,
    /// Next page token.
    #[serde(default)]
    pub next_token: Option<String>,
}

// ----- cryptographic operations -----

/// One encryption request (also a batch item).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// Up to 64 KiB.
    pub plaintext: SecretB64,
    /// Encryption context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Algorithm (required for asymmetric keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

/// Body of `encrypt`: a single request, or `{"items": [...]}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptBody {
    /// Single request: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<SecretB64>,
    /// Single request: context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Single request: algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Batch.
    #[serde(
        default,
        deserialize_with = "strict::option_objects",
        skip_serializing_if = "Option::is_none"
    )]
    pub items: Option<Vec<EncryptRequest>>,
}

/// Result of one encryption.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptResponse {
    /// The ciphertext.
    pub ciphertext: B64,
    /// Key id.
    pub key_id: String,
    /// Version used.
    pub version: u32,
}

/// One decryption request (also a batch item).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    /// The ciphertext.
    pub ciphertext: B64,
    /// Encryption context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Algorithm (required for asymmetric keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

/// Body of `decrypt`: a single request, or `{"items": [...]}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptBody {
    /// Single request: ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<B64>,
    /// Single request: context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Single request: algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Batch.
    #[serde(
        default,
        deserialize_with = "strict::option_objects",
        skip_serializing_if = "Option::is_none"
    )]
    pub items: Option<Vec<DecryptRequest>>,
}

/// Result of one decryption.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecryptResponse {
    /// The plaintext.
    pub plaintext: SecretB64,
    /// Key id.
    pub key_id: String,
    /// Version used.
    pub version: u32,
}

/// One re-encryption request (also a batch item).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReencryptRequest {
    /// The source ciphertext.
    pub ciphertext: B64,
    /// Its context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// The new context; the old one is kept when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_context: Option<Context>,
}

/// Body of `reencrypt`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReencryptBody {
    /// Single request: ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<B64>,
    /// Single request: context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Single request: new context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_context: Option<Context>,
    /// Batch.
    #[serde(
        default,
        deserialize_with = "strict::option_objects",
        skip_serializing_if = "Option::is_none"
    )]
    pub items: Option<Vec<ReencryptRequest>>,
}

/// A batch answer: each item is a response or an error, in request order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchResponse<T> {
    /// Results.
    pub items: Vec<BatchItem<T>>,
}

/// One batch result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchItem<T> {
    /// Failed.
    Err(ErrorBody),
    /// Succeeded.
    Ok(T),
}

/// `POST /v1/keys/{key}/data-key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyRequest {
    /// `AES_256` or `AES_128`.
    pub spec: String,
    /// Encryption context for the encrypted copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Return the plaintext too (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_plaintext: Option<bool>,
}

/// Response of data-key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataKeyResponse {
    /// The plaintext data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<SecretB64>,
    /// The data key encrypted under the KMS key.
    pub ciphertext: B64,
    /// Key id.
    pub key_id: String,
    /// Version used.
    pub version: u32,
}

/// `POST /v1/keys/{key}/data-key-pair`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyPairRequest {
    /// Asymmetric key spec.
    pub spec: String,
    /// Encryption context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Return the private key in plaintext too (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_plaintext: Option<bool>,
}

/// Response of data-key-pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataKeyPairResponse {
    /// SPKI DER.
    pub public_key_der: B64,
    /// PKCS#8 DER encrypted under the KMS key.
    pub private_key_ciphertext: B64,
    /// PKCS#8 DER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_der: Option<SecretB64>,
    /// Key id.
    pub key_id: String,
    /// Version used.
    pub version: u32,
}

/// `POST /v1/keys/{key}/sign`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The message (or give `digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<B64>,
    /// A digest made with the algorithm's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<B64>,
    /// For `ML_DSA_SHAKE_256`: the message's 64-byte external μ (FIPS 204) instead of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_mu: Option<B64>,
    /// Signing algorithm.
    pub algorithm: String,
}

/// Response of sign.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignResponse {
    /// The signature.
    pub signature: B64,
    /// Key id.
    pub key_id: String,
    /// Version used.
    pub version: u32,
    /// Algorithm.
    pub algorithm: String,
}

/// `POST /v1/keys/{key}/verify`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The message (or `digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<B64>,
    /// The digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<B64>,
    /// For `ML_DSA_SHAKE_256`: the message's 64-byte external μ (FIPS 204) instead of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_mu: Option<B64>,
    /// The signature.
    pub signature: B64,
    /// Algorithm.
    pub algorithm: String,
    /// Version to verify with; the primary when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `{"valid": bool}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Validity {
    /// Whether the signature or MAC is valid.
    pub valid: bool,
}

/// `POST /v1/keys/{key}/mac`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacRequest {
    /// The message.
    pub message: B64,
    /// MAC algorithm.
    pub algorithm: String,
}

/// Response of mac.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MacResponse {
    /// The tag.
    pub mac: B64,
    /// Key id.
    pub key_id: String,
    /// Version used.
    pub version: u32,
}

/// `POST /v1/keys/{key}/verify-mac`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyMacRequest {
    /// The message.
    pub message: B64,
    /// The tag.
    pub mac: B64,
    /// MAC algorithm.
    pub algorithm: String,
}

/// `POST /v1/keys/{key}/derive`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveRequest {
    /// HKDF info.
    pub context: B64,
    /// 16 to 64 bytes.
    pub length: usize,
    /// Return the derived key in plaintext too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_plaintext: Option<bool>,
}

/// Response of derive.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeriveResponse {
    /// The derived key encrypted under the KMS key.
    pub ciphertext: B64,
    /// The derived key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<SecretB64>,
}

/// `POST /v1/keys/{key}/agree`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgreeRequest {
    /// The peer's SPKI DER.
    pub peer_public_key_der: B64,
}

/// Response of agree.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgreeResponse {
    /// The raw ECDH secret.
    pub shared_secret: SecretB64,
}

/// `POST /v1/keys/{key}/decapsulate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecapsulateRequest {
    /// The ML-KEM ciphertext the sender made against the key's public key.
    pub ciphertext: B64,
    /// The version whose public key the sender used (default: the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Answer with a data key derived from the secret, encrypted under `wrapping_key` (data-key's answer),
    /// instead of the secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_data_key: Option<bool>,
    /// With `as_data_key`: the symmetric key that encrypts the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapping_key: Option<String>,
    /// With `as_data_key`: the encryption context of the encrypted data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// With `as_data_key`: return the data key's plaintext too (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_plaintext: Option<bool>,
}

/// Response of decapsulate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecapsulateResponse {
    /// The 32-byte shared secret.
    pub shared_secret: SecretB64,
    /// Key id.
    pub key_id: String,
    /// The version that decapsulated.
    pub version: u32,
}

/// The items of a field-protection call (`protect`, `unprotect`, `blind-index`): 1 to 1000.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldItems<T> {
    /// The values, in order; each answer item stands at the same place.
    pub items: Vec<T>,
}

/// A mask other than the type's usual one. At least half of a value stays hidden whatever it asks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRequest {
    /// Characters shown at the start (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_first: Option<u32>,
    /// Characters shown at the end (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// The character that hides the others (default `*`).
    #[serde(default, rename = "char", skip_serializing_if = "Option::is_none")]
    pub mask_char: Option<char>,
}

/// One value to protect.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectItem {
    /// The value.
    pub value: String,
    /// `phone`, `id_card_cn`, `bank_card`, `email`, `name`, `address`, `text`, `digits` or `alnum`.
    #[serde(rename = "type")]
    pub field_type: String,
    /// `encrypt` (the default), `deterministic` or `fpe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Encryption context the ciphertext is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// A mask other than the type's usual one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskRequest>,
    /// The FF1 tweak for mode `fpe` (up to 256 bytes); derived from the type and context when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tweak: Option<B64>,
}

/// A protected value: what to store, what to show, what to search by.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProtectedItem {
    /// A Keyward ciphertext of the value, base64; in mode `fpe`, the format-preserved value itself.
    pub ciphertext: String,
    /// The key version that protected it (mode `fpe` needs it back after a rotation).
    pub version: u32,
    /// The display form.
    pub masked: String,
    /// The search hash, hex.
    pub blind_index: String,
}

/// One field ciphertext to open.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnprotectItem {
    /// What `protect` returned.
    pub ciphertext: String,
    /// The type it was protected as.
    #[serde(rename = "type")]
    pub field_type: String,
    /// `fpe` for a format-preserved value; any other mode's ciphertext names itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The context it was protected with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// The tweak it was protected with (mode `fpe`, when one was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tweak: Option<B64>,
    /// The version protect reported (mode `fpe`; the primary version when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// An opened field.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnprotectedItem {
    /// The value as it was protected.
    pub value: String,
}

/// One value to compute the search hash of.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlindIndexItem {
    /// The value.
    pub value: String,
    /// Its type.
    #[serde(rename = "type")]
    pub field_type: String,
}

/// A search hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlindIndexAnswer {
    /// Hex, as `protect` gives it.
    pub blind_index: String,
}

/// `POST /v1/random`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomRequest {
    /// 1 to 1024.
    pub length: usize,
}

/// Response of random.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RandomResponse {
    /// The bytes.
    pub random: B64,
}

/// `POST /v1/keys/{key}/csr`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// Distinguished name, e.g. `CN=api.example.com,O=Example`.
    pub subject: String,
    /// DNS names or IP addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sans: Option<Vec<String>>,
}

/// Response of csr.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CsrResponse {
    /// PKCS#10 in PEM.
    pub csr_pem: String,
}

/// `POST /v1/keys/{key}/certificate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// A CSR to issue a certificate for; self-signed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr_pem: Option<String>,
    /// Subject of a self-signed certificate (and issuer name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Validity in days.
    pub days: u32,
    /// Whether the certificate is a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
}

/// Response of certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateResponse {
    /// X.509 in PEM.
    pub certificate_pem: String,
}

// ----- policies, approvals, MFA -----

/// A policy document (`PUT /v1/policies/{name}`): default deny, an explicit deny wins over any allow.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// Statements.
    #[serde(deserialize_with = "strict::objects")]
    pub statements: Vec<StatementDoc>,
}

/// One statement.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementDoc {
    /// `allow` or `deny`.
    pub effect: String,
    /// `kms:Encrypt`, `kms:Get*`, `kms:*`.
    pub actions: Vec<String>,
    /// `key/<id>`, `alias/app-*`, `*`.
    pub resources: Vec<String>,
    /// Extra conditions, all of which must hold.
    #[serde(
        default,
        deserialize_with = "strict::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub conditions: Option<ConditionsDoc>,
}

/// Conditions of a statement.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionsDoc {
    /// The encryption context must contain these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_equals: Option<BTreeMap<String, String>>,
    /// The client address must be in one of these networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cidr: Option<Vec<String>>,
    /// The token must (true) or must not (false) come from an MFA login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa: Option<bool>,
}

/// A quorum approval request, as `GET /v1/approvals` and the approve/reject calls return it. The operation's
/// own fields (`key_id`, `version`, `pending_days`, `name` of a policy, ...) sit beside the common ones, so
/// they are kept as they came rather than dropped by a client that does not know them all.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApprovalObject {
    /// `apr_...`.
    pub approval_id: String,
    /// `pending`, `executed`, `rejected`, `expired` or `failed`.
    pub status: String,
    /// `schedule_deletion`, `destroy_version`, `export`, `rotate_root`, `put_policy`, `delete_policy`.
    pub operation: String,
    /// Who asked.
    pub requested_by: String,
    /// Distinct approvals needed.
    pub required: u32,
    /// Who approved, in order.
    pub approvals: Vec<String>,
    /// Who rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The operation's answer once executed, or its error once failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The operation's parameters.
    #[serde(flatten)]
    pub parameters: BTreeMap<String, serde_json::Value>,
}

/// `GET /v1/approvals`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApprovalList {
    /// Oldest first.
    pub approvals: Vec<ApprovalObject>,
    /// The next page's token while more remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `GET /v1/auth/self`: who the service takes the caller to be, and what its credential grants, so that a
/// script or an operator can check a token before relying on it (and find its id to revoke it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The identity's name (`root` for a root token).
    pub name: String,
    /// Built-in roles the credential carries.
    pub roles: Vec<String>,
    /// Policies attached to the identity.
    pub policies: Vec<String>,
    /// `token` or `certificate` (TLS client authentication).
    pub authenticated_by: String,
    /// The token's id (never its value); absent for a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// RFC 3339; absent when the credential does not expire (root tokens, certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether the token was issued after a TOTP check (what policies' `mfa` condition tests).
    pub mfa: bool,
}

/// `POST /v1/identities/{name}/mfa`: the `otpauth://` URI holds the TOTP seed, so it is zeroized on drop and
/// never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MfaEnrollment {
    /// `otpauth://totp/Keyward:<name>?secret=...`, for an authenticator app; shown once.
    pub totp_uri: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for MfaEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaEnrollment { totp_uri: <redacted> }")
    }
}

/// Validates a `limit` query parameter: default 100, at most 1000.
pub fn page_limit(limit: Option<usize>) -> Result<usize, &'static str> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err("limit must be 1 to 1000"),
    }
}

/// Field values are personal data: a debug print names the type and never the value.
macro_rules! redacted_field_debug {
    ($($t:ty => |$s:ident| $ty:expr),+ $(,)?) => {
        $(impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let $s = self;
                f.debug_struct(stringify!($t))
                    .field("type", &$ty)
                    .field("value", &"<redacted>")
                    .finish_non_exhaustive()
            }
        })+
    };
}

redacted_field_debug! {
    ProtectItem => |s| s.field_type.as_str(),
    BlindIndexItem => |s| s.field_type.as_str(),
    UnprotectedItem => |_s| "-",
}

#[cfg(test)]
mod field_debug_tests {
    #[test]
    fn field_items_print_their_type_and_never_their_value() {
        let p = super::ProtectItem {
            value: "4111111111111111".into(),
            field_type: "bank_card".into(),
            mode: None,
            context: None,
            mask: None,
            tweak: None,
        };
        let b = super::BlindIndexItem {
            value: "zhang@example.com".into(),
            field_type: "email".into(),
        };
        let u = super::UnprotectedItem {
            value: "13812345678".into(),
        };
        let shown = format!("{p:?} {b:?} {u:?}");
        for secret in ["4111111111111111", "zhang@example.com", "13812345678"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("bank_card") && shown.contains("email"),
            "{shown}"
        );
    }
}
