//! The records the store keeps. Wire names of states and specs are plain strings here: the store does not
//! interpret them, the core does.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A key's metadata. No material: that lives, wrapped, in its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// UUID in its hyphenated lowercase form.
    pub key_id: String,
    /// Incremented on every change; caches keep the highest revision they have seen.
    pub revision: u64,
    /// Key spec wire name (`SYMMETRIC_DEFAULT`, `RSA_2048`, ...).
    pub spec: String,
    /// Usage wire name.
    pub usage: String,
    /// `Enabled`, `Disabled`, `PendingDeletion` or `Destroyed`.
    pub state: String,
    /// Free text.
    pub description: String,
    /// User tags.
    pub tags: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: i64,
    /// The version that encrypts, signs and MACs; 0 for an EXTERNAL key awaiting its first import.
    pub primary_version: u32,
    /// Versions below this neither decrypt nor verify.
    pub min_decryption_version: u32,
    /// Automatic rotation period.
    pub rotation_period_days: Option<u32>,
    /// When the service rotates the key next (unix seconds).
    pub next_rotation_at: Option<i64>,
    /// When the key was last rotated (unix seconds).
    pub last_rotated_at: Option<i64>,
    /// When a PendingDeletion key is destroyed (unix seconds).
    pub deletion_date: Option<i64>,
    /// `KEYWARD`, `EXTERNAL` or `HSM`.
    pub origin: String,
    /// Whether wrapped export is allowed.
    pub exportable: bool,
    /// Approvals needed for destructive operations on this key.
    pub quorum_approvals: Option<u32>,
    /// Whether legacy specs were explicitly allowed at creation.
    #[serde(default)]
    pub allow_legacy: bool,
    /// An EXTERNAL key whose imported material was deleted: it refuses every cryptographic call until the
    /// same material is imported again.
    #[serde(default)]
    pub pending_import: bool,
    /// Length of the blind indexes of field protection under this key; fixed at creation, since indexes
    /// already stored must keep matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind_index_bits: Option<u32>,
}

/// One version of a key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The key.
    pub key_id: String,
    /// 1-based version number.
    pub version: u32,
    /// `Enabled`, `Disabled`, `Archived`, `PendingImport` (imported material deleted, awaiting the same
    /// material again) or `Destroyed`.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once destroyed.
    pub destroyed_at: Option<i64>,
    /// Material wrapped by the HSM under the root key of `root_generation`; `None` once destroyed.
    pub material: Option<Vec<u8>>,
    /// Which root key wraps the material.
    pub root_generation: u32,
}

impl std::fmt::Debug for VersionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRecord")
            .field("key_id", &self.key_id)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("has_material", &self.material.is_some())
            .field("root_generation", &self.root_generation)
            .finish()
    }
}

/// One audit record as stored: the indexed columns and the full record as JSON (hashes included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Who made the request.
    pub principal: String,
    /// `kms:<Action>`.
    pub action: String,
    /// The key concerned.
    pub key_id: Option<String>,
    /// `allow`, `deny` or `error`.
    pub outcome: String,
    /// The whole record as JSON.
    pub record: String,
}

/// A filter over the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records strictly after this sequence number.
    pub after_seq: u64,
    /// Only records at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Only records before (unix ms).
    pub until_ms: Option<i64>,
    /// Only this principal.
    pub principal: Option<String>,
    /// Only records concerning this key: as the record's `key_id`, or named in its `source_key_ids` (the
    /// keys a re-encryption decrypted from), so that a key's trail shows every use of its material.
    pub key_id: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only records naming this resource (`identity/<name>`, `policy/<name>`, ...) as their `resource`.
    pub resource: Option<String>,
    /// Only the records of this request (its `x-request-id`; an approved operation's run carries its
    /// approval's request id): what an incident responder holding one response looks up first.
    pub request_id: Option<String>,
    /// At most this many.
    pub limit: usize,
}
