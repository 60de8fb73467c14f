//! Key management: creation, the lifecycle state machine, aliases, listing, scheduled work.
//!
//! Invariants every operation preserves (the property tests check them after every step):
//! - a key that is not Destroyed has a primary version that is Enabled and holds material (EXTERNAL keys
//!   before their first import have no primary: `primary_version == 0`);
//! - `1 <= min_decryption_version <= primary_version` once a primary exists;
//! - versions are numbered 1..=n without gaps; Destroyed versions hold no material; all others do;
//! - a Destroyed key has only Destroyed versions.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyward_hsm::{KeyAttributes, KeySpec, KeyUsage};
use keyward_store::{transact, KeyRecord, Tx, VersionRecord};

use crate::clock::DAY;
use crate::engine::{Kms, RootOfTrust};
use crate::error::{ErrorCode, KmsError, KmsResult};
use crate::model::{KeyInfo, KeyState, Origin, VersionInfo, VersionState};
use crate::records::{corrupt, parse_id};

/// Longest description accepted.
pub const MAX_DESCRIPTION: usize = 8192;
/// Most tags per key.
pub const MAX_TAGS: usize = 50;
/// Allowed range of `pending_days` for scheduled deletion.
pub const PENDING_DAYS: std::ops::RangeInclusive<u32> = 7..=30;
/// Allowed range of `rotation_period_days`.
pub const ROTATION_DAYS: std::ops::RangeInclusive<u32> = 1..=3650;

/// What `create_key` takes.
#[derive(Clone, Debug)]
pub struct CreateKey {
    /// Key spec.
    pub spec: KeySpec,
    /// Usage; the spec's default when `None`.
    pub usage: Option<KeyUsage>,
    /// Description.
    pub description: String,
    /// An alias to create with the key (`alias/NAME`).
    pub alias: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Automatic rotation period.
    pub rotation_period_days: Option<u32>,
    /// Whether wrapped export is allowed.
    pub exportable: bool,
    /// Where the material comes from.
    pub origin: Origin,
    /// Approvals needed for destructive operations.
    pub quorum_approvals: Option<u32>,
    /// Required for legacy specs (TDES).
    pub allow_legacy: bool,
    /// Blind index length of field protection (16 to 256 bits, whole bytes; AES keys only).
    pub blind_index_bits: Option<u32>,
    /// The id to give the key (a UUID the caller generated, so it can be audited before the key exists);
    /// a fresh random one when `None`.
    pub key_id: Option<String>,
}

impl CreateKey {
    /// A request with defaults for everything but the spec.
    pub fn new(spec: KeySpec) -> Self {
        CreateKey {
            spec,
            usage: None,
            description: String::new(),
            alias: None,
            tags: BTreeMap::new(),
            rotation_period_days: None,
            exportable: false,
            origin: Origin::Keyward,
            quorum_approvals: None,
            allow_legacy: false,
            blind_index_bits: None,
            key_id: None,
        }
    }
}

/// What `update_key` changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UpdateKey {
    /// New description.
    pub description: Option<String>,
    /// New tags (replacing all).
    pub tags: Option<BTreeMap<String, String>>,
    /// `Some(None)` turns automatic rotation off.
    pub rotation_period_days: Option<Option<u32>>,
    /// New lowest decryptable version.
    pub min_decryption_version: Option<u32>,
    /// Tags to add or change, leaving the others, in the same transaction (applied after `tags`): two
    /// callers tagging one key at once both keep their tags.
    pub set_tags: BTreeMap<String, String>,
    /// Tags to remove (applied after `set_tags`).
    pub remove_tags: Vec<String>,
}

/// Lifecycle actions on one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionAction {
    /// Disabled → Enabled.
    Enable,
    /// Enabled/Archived → Disabled (not the primary).
    Disable,
    /// Enabled → Archived (not the primary).
    Archive,
    /// Archived → Enabled.
    Restore,
    /// Erase the material (not the primary); irreversible.
    Destroy,
}

impl VersionAction {
    /// Parses the path segment of the API.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enable" => Some(VersionAction::Enable),
            "disable" => Some(VersionAction::Disable),
            "archive" => Some(VersionAction::Archive),
            "restore" => Some(VersionAction::Restore),
            "destroy" => Some(VersionAction::Destroy),
            _ => None,
        }
    }
}

/// Filters of `list_keys`.
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    /// Only keys in this state.
    pub state: Option<KeyState>,
    /// Only keys of this spec.
    pub spec: Option<KeySpec>,
    /// Only keys with this tag `(key, value)`.
    pub tag: Option<(String, String)>,
}

/// A page of aliases as `(alias/NAME, key id)`, and the token of the next page.
pub type AliasPage = (Vec<(String, String)>, Option<String>);

/// A key's scheduled work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueKind {
    /// Its rotation period has elapsed.
    Rotate,
    /// Its deletion date has passed.
    Destroy,
}

/// What scheduled work did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueWork {
    /// Keys rotated by their rotation period.
    pub rotated: Vec<String>,
    /// Keys destroyed on their deletion date.
    pub destroyed: Vec<String>,
}

pub(crate) fn state_error(state: KeyState, key_id: &str) -> KmsError {
    match state {
        KeyState::Disabled => {
            KmsError::new(ErrorCode::KeyDisabled, format!("key {key_id} is disabled"))
        }
        KeyState::PendingDeletion => KmsError::new(
            ErrorCode::KeyPendingDeletion,
            format!("key {key_id} is pending deletion"),
        ),
        KeyState::Destroyed => KmsError::new(
            ErrorCode::KeyDestroyed,
            format!("key {key_id} is destroyed"),
        ),
        KeyState::Enabled => KmsError::invalid_state(format!("key {key_id} is enabled")),
    }
}

/// Normalises `alias/NAME` or `alias:NAME`; `None` if `s` is not an alias reference at all.
pub(crate) fn alias_name(s: &str) -> Option<KmsResult<String>> {
    let name = s
        .strip_prefix("alias/")
        .or_else(|| s.strip_prefix("alias:"))?;
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
    Some(if ok {
        Ok(format!("alias/{name}"))
    } else {
        Err(KmsError::validation(
            "alias names are 1 to 256 characters of A-Z a-z 0-9 / _ - .",
        ))
    })
}

/// Fast path for the canonical hyphenated form every API response uses; other UUID spellings fall back to
/// the uuid crate.
fn parse_key_id(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    let mut hex = b.iter().copied().filter(|c| *c != b'-');
    for byte in out.iter_mut() {
        *byte = (nibble(hex.next()?)? << 4) | nibble(hex.next()?)?;
    }
    Some(out)
}

fn validate_tags(tags: &BTreeMap<String, String>) -> KmsResult<()> {
    if tags.len() > MAX_TAGS {
        return Err(KmsError::validation(format!("at most {MAX_TAGS} tags")));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(KmsError::validation(
                "tag keys are 1 to 128 characters, values at most 256",
            ));
        }
    }
    Ok(())
}

pub(crate) fn parse_state<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> KmsResult<T> {
    f(s).ok_or_else(|| corrupt("unknown state"))
}

pub(crate) fn key_info(rec: &KeyRecord, alias: Option<String>) -> KmsResult<KeyInfo> {
    Ok(KeyInfo {
        key_id: rec.key_id.clone(),
        alias,
        spec: parse_state(&rec.spec, KeySpec::parse)?,
        usage: parse_state(&rec.usage, KeyUsage::parse)?,
        state: parse_state(&rec.state, KeyState::parse)?,
        description: rec.description.clone(),
        tags: rec.tags.clone(),
        created_at: rec.created_at,
        primary_version: rec.primary_version,
        min_decryption_version: rec.min_decryption_version,
        rotation_period_days: rec.rotation_period_days,
        next_rotation_at: rec.next_rotation_at,
        last_rotated_at: rec.last_rotated_at,
        deletion_date: rec.deletion_date,
        origin: parse_state(&rec.origin, Origin::parse)?,
        exportable: rec.exportable,
        quorum_approvals: rec.quorum_approvals,
        pending_import: rec.pending_import,
        blind_index_bits: rec.blind_index_bits,
    })
}

fn version_info(v: &VersionRecord) -> KmsResult<VersionInfo> {
    Ok(VersionInfo {
        version: v.version,
        state: parse_state(&v.state, VersionState::parse)?,
        created_at: v.created_at,
        destroyed_at: v.destroyed_at,
    })
}

fn info_in_tx(tx: &mut dyn Tx, rec: &KeyRecord) -> KmsResult<KeyInfo> {
    let alias = tx.aliases_of(&rec.key_id)?.into_iter().next();
    key_info(rec, alias)
}

/// How a new version's material is held: `HSM` keys are persistent, non-extractable token objects labelled
/// after the key and version (so an operator can find them with the token's own tools); others are software
/// keys wrapped under the root key.
fn version_attrs(origin: Origin, exportable: bool, key_id: &str, version: u32) -> KeyAttributes {
    match origin {
        Origin::Hsm => KeyAttributes {
            extractable: false,
            token_resident: true,
            label: Some(format!("keyward:{key_id}:{version}")),
        },
        _ => KeyAttributes {
            extractable: exportable,
            ..KeyAttributes::default()
        },
    }
}

impl Kms {
    /// Resolves a key reference (UUID, `alias/NAME` or `alias:NAME`) to the key id bytes.
    pub(crate) fn resolve(&self, key_ref: &str) -> KmsResult<[u8; 16]> {
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        match alias_name(key_ref) {
            Some(name) => {
                let name = name?;
                if let Some(id) = self.aliases.get(&name) {
                    if self.freshness.trusted() {
                        return Ok(id);
                    }
                }
                let key_id = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.get_alias(&name))?
                    .ok_or_else(|| KmsError::not_found(format!("{name} does not exist")))?;
                let id = parse_id(&key_id)?;
                self.aliases.insert(name, id);
                Ok(id)
            }
            None => parse_key_id(key_ref)
                .or_else(|| uuid::Uuid::parse_str(key_ref).ok().map(|u| *u.as_bytes()))
                .ok_or_else(|| {
                    KmsError::validation("a key is named by its id (UUID) or alias/NAME")
                }),
        }
    }

    /// Every alias pointing to the key a reference stands for (`alias/NAME`, sorted), with the key's id.
    ///
    /// Policies name keys by id or by alias; a statement about an alias must hold however a request names the
    /// key (by that alias, another one, its id, or through a ciphertext), or a deny on an alias could be
    /// side-stepped by calling the key by its id. Served from memory once looked up.
    pub fn key_aliases(&self, key_ref: &str) -> KmsResult<(String, Arc<[String]>)> {
        let id = self.resolve(key_ref)?;
        let key_id = uuid::Uuid::from_bytes(id).to_string();
        if self.freshness.trusted() {
            if let Some(names) = self.alias_names.get(&id) {
                return Ok((key_id, names));
            }
        }
        let epoch = self.alias_epoch.load(Ordering::Acquire);
        let names: Arc<[String]> = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.aliases_of(&key_id)
        })?
        .into();
        self.alias_names.insert(id, names.clone());
        // An alias changed while the store was read: what was read may be stale, so it is not kept.
        if self.alias_epoch.load(Ordering::Acquire) != epoch {
            self.alias_names.remove(&id);
        }
        Ok((key_id, names))
    }

    /// Forgets every key's alias list, after an alias was created, moved or deleted (here or on another
    /// node) or the store was replaced.
    pub(crate) fn aliases_changed(&self) {
        self.alias_epoch.fetch_add(1, Ordering::AcqRel);
        self.alias_names.clear();
    }

    /// The key id a reference (id or alias) stands for, from the alias cache when possible.
    pub fn key_id_of(&self, key_ref: &str) -> KmsResult<String> {
        self.resolve_id(key_ref)
    }

    pub(crate) fn resolve_id(&self, key_ref: &str) -> KmsResult<String> {
        Ok(uuid::Uuid::from_bytes(self.resolve(key_ref)?).to_string())
    }

    /// Runs a read-modify-write of one key in a transaction, bumps its revision, and refreshes the cache.
    fn mutate<T>(
        &self,
        key_ref: &str,
        f: impl FnOnce(&mut dyn Tx, &mut KeyRecord, &mut Vec<VersionRecord>, i64) -> KmsResult<T>,
    ) -> KmsResult<T> {
        let key_id = self.resolve_id(key_ref)?;
        self.mutate_by_id(&key_id, f)
    }

    /// Runs `f` as [`Kms::mutate`] would, then rolls the transaction back: whatever the change would refuse is
    /// refused, and nothing changes. Operations that wait for approval are checked this way before their
    /// request is opened, so that approvers are never asked to approve what cannot run.
    fn try_mutate<T>(
        &self,
        key_ref: &str,
        f: impl FnOnce(&mut dyn Tx, &mut KeyRecord, &mut Vec<VersionRecord>, i64) -> KmsResult<T>,
    ) -> KmsResult<()> {
        let key_id = self.resolve_id(key_ref)?;
        let now = self.clock.now();
        let mut tx = self.store.begin()?;
        let mut rec = tx
            .get_key(&key_id)?
            .ok_or_else(|| KmsError::not_found(format!("key {key_id} does not exist")))?;
        let mut versions = tx.versions(&key_id)?;
        f(tx.as_mut(), &mut rec, &mut versions, now)?;
        // Dropped without a commit: rolled back.
        drop(tx);
        Ok(())
    }

    pub(crate) fn mutate_by_id<T>(
        &self,
        key_id: &str,
        f: impl FnOnce(&mut dyn Tx, &mut KeyRecord, &mut Vec<VersionRecord>, i64) -> KmsResult<T>,
    ) -> KmsResult<T> {
        let key_id = key_id.to_string();
        let now = self.clock.now();
        let out = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut rec = tx
                .get_key(&key_id)?
                .ok_or_else(|| KmsError::not_found(format!("key {key_id} does not exist")))?;
            let mut versions = tx.versions(&key_id)?;
            let out = f(tx, &mut rec, &mut versions, now)?;
            rec.revision += 1;
            tx.put_key(&rec)?;
            Ok::<_, KmsError>(out)
        })?;
        self.refresh(&key_id);
        Ok(out)
    }

    /// Creates a key and its first version.
    pub fn create_key(&self, req: CreateKey) -> KmsResult<KeyInfo> {
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        let usage = req.usage.unwrap_or_else(|| req.spec.default_usage());
        if !req.spec.allowed_usages().contains(&usage) {
            return Err(KmsError::usage(format!(
                "key spec {} does not support usage {usage}",
                req.spec
            )));
        }
        if let Some(bits) = req.blind_index_bits {
            if !crate::protect::valid_blind_index_bits(bits) {
                return Err(KmsError::validation(
                    "blind_index_bits must be 16 to 256, a multiple of 8",
                ));
            }
            if !matches!(
                req.spec,
                KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256
            ) {
                return Err(KmsError::usage(
                    "blind_index_bits is for the AES keys of field protection",
                ));
            }
        }
        if req.spec.is_legacy() && !req.allow_legacy {
            return Err(KmsError::validation(format!(
                "{} is a legacy algorithm; pass allow_legacy to create it",
                req.spec
            )));
        }
        if req.description.chars().count() > MAX_DESCRIPTION {
            return Err(KmsError::validation("description is too long"));
        }
        validate_tags(&req.tags)?;
        if let Some(d) = req.rotation_period_days {
            if !ROTATION_DAYS.contains(&d) {
                return Err(KmsError::validation(
                    "rotation_period_days must be 1 to 3650",
                ));
            }
            if req.origin == Origin::External {
                return Err(KmsError::validation(
                    "EXTERNAL keys cannot rotate automatically",
                ));
            }
        }
        if let Some(m) = req.quorum_approvals {
            if !(1..=16).contains(&m) {
                return Err(KmsError::validation("quorum approvals must be 1 to 16"));
            }
        }
        if req.origin == Origin::Hsm && self.status().root_of_trust != Some(RootOfTrust::Pkcs11) {
            return Err(KmsError::validation(
                "origin HSM needs a PKCS#11 HSM as the key store",
            ));
        }
        if req.exportable && req.origin == Origin::Hsm {
            return Err(KmsError::validation("HSM keys are never exportable"));
        }
        let alias = req
            .alias
            .as_deref()
            .map(|a| {
                alias_name(a).unwrap_or_else(|| {
                    alias_name(&format!("alias/{a}"))
                        .unwrap_or_else(|| Err(KmsError::validation("bad alias")))
                })
            })
            .transpose()?;
        let key_id = match &req.key_id {
            Some(id) => uuid::Uuid::parse_str(id)
                .map(|u| u.to_string())
                .map_err(|_| KmsError::validation("a key id is a UUID"))?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let now = self.clock.now();
        // Generate before the transaction: RSA-4096 takes seconds and must not hold the store's write lock.
        let material = match req.origin {
            Origin::External => None,
            _ => Some(self.hsm.generate(
                req.spec,
                &version_attrs(req.origin, req.exportable, &key_id, 1),
            )?),
        };
        let rec = KeyRecord {
            key_id: key_id.clone(),
            revision: 1,
            spec: req.spec.as_str().to_string(),
            usage: usage.as_str().to_string(),
            state: KeyState::Enabled.as_str().to_string(),
            description: req.description,
            tags: req.tags,
            created_at: now,
            primary_version: if material.is_some() { 1 } else { 0 },
            min_decryption_version: 1,
            rotation_period_days: req.rotation_period_days,
            next_rotation_at: req.rotation_period_days.map(|d| now + d as i64 * DAY),
            last_rotated_at: None,
            deletion_date: None,
            origin: req.origin.as_str().to_string(),
            exportable: req.exportable,
            quorum_approvals: req.quorum_approvals,
            allow_legacy: req.allow_legacy,
            pending_import: false,
            blind_index_bits: req.blind_index_bits,
        };
        let version = match &material {
            Some(handle) => {
                let (blob, generation) = self.wrap_new(&key_id, 1, handle)?;
                Some(VersionRecord {
                    key_id: key_id.clone(),
                    version: 1,
                    state: VersionState::Enabled.as_str().to_string(),
                    created_at: now,
                    destroyed_at: None,
                    material: Some(blob),
                    root_generation: generation,
                })
            }
            None => None,
        };
        let info = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            if tx.get_key(&key_id)?.is_some() {
                return Err(KmsError::new(
                    ErrorCode::AlreadyExists,
                    format!("key {key_id} already exists"),
                ));
            }
            if let Some(a) = &alias {
                if tx.get_alias(a)?.is_some() {
                    return Err(KmsError::new(
                        ErrorCode::AlreadyExists,
                        format!("{a} already exists"),
                    ));
                }
            }
            tx.put_key(&rec)?;
            if let Some(v) = &version {
                tx.put_version(v)?;
            }
            if let Some(a) = &alias {
                tx.put_alias(a, &key_id)?;
            }
            key_info(&rec, alias.clone())
        })?;
        if alias.is_some() {
            self.aliases_changed();
        }
        Ok(info)
    }

    /// A key's metadata.
    pub fn describe_key(&self, key_ref: &str) -> KmsResult<KeyInfo> {
        let key_id = self.resolve_id(key_ref)?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let rec = tx
                .get_key(&key_id)?
                .ok_or_else(|| KmsError::not_found(format!("key {key_id} does not exist")))?;
            info_in_tx(tx, &rec)
        })
    }

    /// Lists keys by id, filtered, one page at a time. `after` is the previous page's last key id.
    pub fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: usize,
    ) -> KmsResult<(Vec<KeyInfo>, Option<String>)> {
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        let limit = limit.clamp(1, 1000);
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut out = Vec::new();
            let mut cursor = after.map(str::to_string);
            loop {
                let batch = tx.list_keys(cursor.as_deref(), limit)?;
                let exhausted = batch.len() < limit;
                for rec in batch {
                    cursor = Some(rec.key_id.clone());
                    let matches = filter.state.is_none_or(|s| rec.state == s.as_str())
                        && filter.spec.is_none_or(|s| rec.spec == s.as_str())
                        && filter
                            .tag
                            .as_ref()
                            .is_none_or(|(k, v)| rec.tags.get(k) == Some(v));
                    if matches {
                        out.push(info_in_tx(tx, &rec)?);
                        if out.len() == limit {
                            let next = if exhausted { None } else { cursor.clone() };
                            return Ok((out, next));
                        }
                    }
                }
                if exhausted {
                    return Ok((out, None));
                }
            }
        })
    }

    /// Changes description, tags, rotation period or the lowest decryptable version.
    pub fn update_key(&self, key_ref: &str, patch: UpdateKey) -> KmsResult<KeyInfo> {
        if let Some(d) = &patch.description {
            if d.chars().count() > MAX_DESCRIPTION {
                return Err(KmsError::validation("description is too long"));
            }
        }
        if let Some(t) = &patch.tags {
            validate_tags(t)?;
        }
        if let Some(Some(d)) = patch.rotation_period_days {
            if !ROTATION_DAYS.contains(&d) {
                return Err(KmsError::validation(
                    "rotation_period_days must be 1 to 3650",
                ));
            }
        }
        self.mutate(key_ref, |tx, rec, _versions, now| {
            let state = parse_state(&rec.state, KeyState::parse)?;
            if matches!(state, KeyState::Destroyed | KeyState::PendingDeletion) {
                return Err(state_error(state, &rec.key_id));
            }
            if let Some(d) = patch.description {
                rec.description = d;
            }
            if let Some(t) = patch.tags {
                rec.tags = t;
            }
            if !patch.set_tags.is_empty() || !patch.remove_tags.is_empty() {
                rec.tags.extend(patch.set_tags);
                for k in &patch.remove_tags {
                    rec.tags.remove(k);
                }
                validate_tags(&rec.tags)?;
            }
            if let Some(period) = patch.rotation_period_days {
                if period.is_some() && rec.origin == Origin::External.as_str() {
                    return Err(KmsError::validation(
                        "EXTERNAL keys cannot rotate automatically",
                    ));
                }
                rec.rotation_period_days = period;
                rec.next_rotation_at = period.map(|d| now + d as i64 * DAY);
            }
            if let Some(m) = patch.min_decryption_version {
                if m == 0 || m > rec.primary_version {
                    return Err(KmsError::validation(format!(
                        "min_decryption_version must be between 1 and the primary version ({})",
                        rec.primary_version
                    )));
                }
                rec.min_decryption_version = m;
            }
            info_in_tx(tx, rec)
        })
    }

    /// Enables a Disabled key.
    pub fn enable_key(&self, key_ref: &str) -> KmsResult<KeyInfo> {
        self.mutate(key_ref, |tx, rec, _, _| {
            match parse_state(&rec.state, KeyState::parse)? {
                KeyState::Enabled | KeyState::Disabled => {
                    rec.state = KeyState::Enabled.as_str().into()
                }
                other => return Err(state_error(other, &rec.key_id)),
            }
            info_in_tx(tx, rec)
        })
    }

    /// Disables an Enabled key: every cryptographic call is refused until it is enabled again.
    pub fn disable_key(&self, key_ref: &str) -> KmsResult<KeyInfo> {
        self.mutate(key_ref, |tx, rec, _, _| {
            match parse_state(&rec.state, KeyState::parse)? {
                KeyState::Enabled | KeyState::Disabled => {
                    rec.state = KeyState::Disabled.as_str().into()
                }
                other => return Err(state_error(other, &rec.key_id)),
            }
            info_in_tx(tx, rec)
        })
    }

    /// Adds a new version with fresh material and makes it primary.
    pub fn rotate_key(&self, key_ref: &str) -> KmsResult<KeyInfo> {
        self.rotate(key_ref, false)?
            .ok_or_else(|| KmsError::invalid_state("the key was not rotated"))
    }

    /// Rotates only if the key is still due when the transaction reads it: another node (or an earlier
    /// run) may have rotated it since the due list was read, and a key must never be rotated twice for one
    /// period.
    fn rotate_if_due(&self, key_ref: &str) -> KmsResult<bool> {
        Ok(self.rotate(key_ref, true)?.is_some())
    }

    fn rotate(&self, key_ref: &str, only_if_due: bool) -> KmsResult<Option<KeyInfo>> {
        let key = self.load(&self.resolve(key_ref)?)?;
        if key.origin == Origin::External {
            return Err(KmsError::invalid_state(
                "EXTERNAL keys rotate by importing new material",
            ));
        }
        let attrs = version_attrs(
            key.origin,
            key.record.exportable,
            &key.key_id,
            key.versions.len() as u32 + 1,
        );
        let material = self.hsm.generate(key.spec, &attrs)?;
        self.mutate(key_ref, |tx, rec, versions, now| {
            let state = parse_state(&rec.state, KeyState::parse)?;
            if state != KeyState::Enabled {
                return Err(state_error(state, &rec.key_id));
            }
            if only_if_due && rec.next_rotation_at.is_none_or(|t| t > now) {
                return Ok(None);
            }
            self.add_primary_version(tx, rec, versions, &material, now)?;
            info_in_tx(tx, rec).map(Some)
        })
    }

    pub(crate) fn add_primary_version(
        &self,
        tx: &mut dyn Tx,
        rec: &mut KeyRecord,
        versions: &[VersionRecord],
        material: &keyward_hsm::KeyHandle,
        now: i64,
    ) -> KmsResult<u32> {
        let n = versions.len() as u32 + 1;
        let (blob, generation) = self.wrap_new(&rec.key_id, n, material)?;
        tx.put_version(&VersionRecord {
            key_id: rec.key_id.clone(),
            version: n,
            state: VersionState::Enabled.as_str().into(),
            created_at: now,
            destroyed_at: None,
            material: Some(blob),
            root_generation: generation,
        })?;
        rec.primary_version = n;
        if rec.min_decryption_version == 0 {
            rec.min_decryption_version = 1;
        }
        rec.last_rotated_at = Some(now);
        rec.next_rotation_at = rec.rotation_period_days.map(|d| now + d as i64 * DAY);
        Ok(n)
    }

    /// The versions of a key.
    pub fn list_versions(&self, key_ref: &str) -> KmsResult<Vec<VersionInfo>> {
        let key_id = self.resolve_id(key_ref)?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_key(&key_id)?
                .ok_or_else(|| KmsError::not_found(format!("key {key_id} does not exist")))?;
            tx.versions(&key_id)?.iter().map(version_info).collect()
        })
    }

    /// Applies a lifecycle action to one version.
    pub fn version_action(
        &self,
        key_ref: &str,
        version: u32,
        action: VersionAction,
    ) -> KmsResult<VersionInfo> {
        let mut erased = Vec::new();
        let info = self.mutate(key_ref, version_change(version, action, &mut erased))?;
        self.erase_token_objects(erased);
        Ok(info)
    }

    /// Whether [`Kms::version_action`] would succeed now, changing nothing.
    pub fn check_version_action(
        &self,
        key_ref: &str,
        version: u32,
        action: VersionAction,
    ) -> KmsResult<()> {
        let mut erased = Vec::new();
        self.try_mutate(key_ref, version_change(version, action, &mut erased))
    }

    /// Deletes the token objects of destroyed `HSM` versions, once the store no longer refers to them: a
    /// destroyed HSM key must be gone from the token, not merely forgotten. A deletion the token refuses
    /// leaves an object nothing refers to any more; the next start does not bring it back.
    fn erase_token_objects(&self, erased: Vec<(KeyRecord, u32, Vec<u8>)>) {
        let Ok(keyring) = self.keyring() else { return };
        for (rec, version, blob) in erased {
            let Some(spec) = KeySpec::parse(&rec.spec) else {
                continue;
            };
            let handle = self.hsm.unwrap_from_storage(
                &keyring.root,
                spec,
                &blob,
                &crate::records::version_aad(&rec.key_id, version),
                &KeyAttributes::internal(),
            );
            if let Ok(h) = handle {
                let _ = self.hsm.destroy(h);
            }
        }
    }

    /// Makes an Enabled version primary (roll back or forward).
    pub fn set_primary(&self, key_ref: &str, version: u32) -> KmsResult<KeyInfo> {
        self.mutate(key_ref, |tx, rec, versions, _| {
            let key_state = parse_state(&rec.state, KeyState::parse)?;
            if key_state != KeyState::Enabled {
                return Err(state_error(key_state, &rec.key_id));
            }
            let v = version
                .checked_sub(1)
                .and_then(|i| versions.get(i as usize))
                .ok_or_else(|| KmsError::not_found(format!("key {} has no version {version}", rec.key_id)))?;
            match parse_state(&v.state, VersionState::parse)? {
                VersionState::Enabled => {}
                VersionState::Archived => {
                    return Err(KmsError::invalid_state(format!("version {version} is Archived; restore it first")))
                }
                VersionState::Disabled => {
                    return Err(KmsError::new(ErrorCode::KeyDisabled, format!("version {version} is disabled")))
                }
                VersionState::Destroyed => {
                    return Err(KmsError::new(ErrorCode::KeyDestroyed, format!("version {version} is destroyed")))
                }
                VersionState::PendingImport => {
                    return Err(KmsError::invalid_state(format!("the imported material of version {version} was deleted: import it again first")))
                }
            }
            if version < rec.min_decryption_version {
                return Err(KmsError::invalid_state(format!(
                    "version {version} is below min_decryption_version {}: data it encrypts could not be decrypted",
                    rec.min_decryption_version
                )));
            }
            rec.primary_version = version;
            // The new primary has its material: a key whose other versions await re-import serves again.
            rec.pending_import = false;
            info_in_tx(tx, rec)
        })
    }

    /// Schedules destruction in `pending_days` (7 to 30); the key refuses all use meanwhile.
    pub fn schedule_deletion(&self, key_ref: &str, pending_days: u32) -> KmsResult<KeyInfo> {
        if !PENDING_DAYS.contains(&pending_days) {
            return Err(KmsError::validation("pending_days must be 7 to 30"));
        }
        self.mutate(key_ref, deletion_schedule(pending_days))
    }

    /// Whether [`Kms::schedule_deletion`] would succeed now, changing nothing.
    pub fn check_schedule_deletion(&self, key_ref: &str, pending_days: u32) -> KmsResult<()> {
        if !PENDING_DAYS.contains(&pending_days) {
            return Err(KmsError::validation("pending_days must be 7 to 30"));
        }
        self.try_mutate(key_ref, deletion_schedule(pending_days))
    }

    /// Cancels a scheduled deletion; the key comes back Disabled.
    pub fn cancel_deletion(&self, key_ref: &str) -> KmsResult<KeyInfo> {
        self.mutate(key_ref, |tx, rec, _, _| {
            match parse_state(&rec.state, KeyState::parse)? {
                KeyState::PendingDeletion => {}
                KeyState::Destroyed => return Err(state_error(KeyState::Destroyed, &rec.key_id)),
                _ => {
                    return Err(KmsError::invalid_state(format!(
                        "key {} is not pending deletion",
                        rec.key_id
                    )))
                }
            }
            rec.state = KeyState::Disabled.as_str().into();
            rec.deletion_date = None;
            info_in_tx(tx, rec)
        })
    }

    fn destroy_in_tx(
        tx: &mut dyn Tx,
        rec: &mut KeyRecord,
        versions: &mut [VersionRecord],
        now: i64,
    ) -> KmsResult<()> {
        for v in versions.iter_mut() {
            if v.state == VersionState::PendingImport.as_str() {
                tx.delete_meta(
                    crate::records::IMPORT_CHECK_NS,
                    &crate::records::check_name(&rec.key_id, v.version),
                )?;
            }
            if v.material.is_some() || v.state != VersionState::Destroyed.as_str() {
                v.material = None;
                v.state = VersionState::Destroyed.as_str().into();
                v.destroyed_at = Some(now);
                tx.put_version(v)?;
            }
        }
        for alias in tx.aliases_of(&rec.key_id)? {
            tx.delete_alias(&alias)?;
        }
        rec.state = KeyState::Destroyed.as_str().into();
        rec.next_rotation_at = None;
        Ok(())
    }

    /// Rotates keys whose period has elapsed and destroys keys past their deletion date, unaudited (the
    /// service goes through [`crate::audit::run_scheduled_work`], which records each action first).
    pub fn run_due_work(&self) -> KmsResult<DueWork> {
        let mut work = DueWork::default();
        for (key_id, kind) in self.due_work()? {
            if self.perform_due(&key_id, kind)? {
                match kind {
                    DueKind::Rotate => work.rotated.push(key_id),
                    DueKind::Destroy => work.destroyed.push(key_id),
                }
            }
        }
        Ok(work)
    }

    /// The keys whose scheduled work is due now, in key order.
    pub fn due_work(&self) -> KmsResult<Vec<(String, DueKind)>> {
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        let now = self.clock.now();
        let due = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.due_keys(now))?;
        let mut out = Vec::with_capacity(due.len());
        for key_id in due {
            let rec = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.get_key(&key_id))?;
            let Some(rec) = rec else { continue };
            if rec.state == KeyState::PendingDeletion.as_str()
                && rec.deletion_date.is_some_and(|d| d <= now)
            {
                out.push((key_id, DueKind::Destroy));
            } else if rec.state == KeyState::Enabled.as_str()
                && rec.next_rotation_at.is_some_and(|t| t <= now)
            {
                out.push((key_id, DueKind::Rotate));
            }
        }
        Ok(out)
    }

    /// Does one key's scheduled work if it is still due, and says whether it did: another node, or a change
    /// made since [`Kms::due_work`] (a cancelled deletion, a disabled key), may have made it moot.
    pub fn perform_due(&self, key_id: &str, kind: DueKind) -> KmsResult<bool> {
        match kind {
            DueKind::Rotate => self.rotate_if_due(key_id),
            DueKind::Destroy => {
                let aliases =
                    transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.aliases_of(key_id))?;
                let mut erased = Vec::new();
                let destroyed = self.mutate(key_id, |tx, rec, versions, now| {
                    if rec.state != KeyState::PendingDeletion.as_str()
                        || rec.deletion_date.is_none_or(|d| d > now)
                    {
                        return Ok(false);
                    }
                    if rec.origin == Origin::Hsm.as_str() {
                        erased.extend(versions.iter().filter_map(|v| {
                            v.material.clone().map(|m| (rec.clone(), v.version, m))
                        }));
                    }
                    Self::destroy_in_tx(tx, rec, versions, now).map(|()| true)
                })?;
                if destroyed {
                    self.erase_token_objects(erased);
                    for a in aliases {
                        self.aliases.remove(&a);
                    }
                    self.aliases_changed();
                }
                Ok(destroyed)
            }
        }
    }

    /// Points an alias at a key (creating or moving it). Returns the alias's full name and the id of the key
    /// it now points to, which the caller may have named by another alias.
    pub fn put_alias(&self, name: &str, key_id: &str) -> KmsResult<(String, String)> {
        let name = alias_name(name)
            .or_else(|| alias_name(&format!("alias/{name}")))
            .unwrap_or_else(|| Err(KmsError::validation("bad alias")))?;
        let id = self.resolve_id(key_id)?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let rec = tx
                .get_key(&id)?
                .ok_or_else(|| KmsError::not_found(format!("key {id} does not exist")))?;
            if rec.state == KeyState::Destroyed.as_str() {
                return Err(state_error(KeyState::Destroyed, &id));
            }
            tx.put_alias(&name, &id)?;
            Ok(())
        })?;
        self.aliases.remove(&name);
        self.aliases_changed();
        Ok((name, id))
    }

    /// Deletes an alias.
    pub fn delete_alias(&self, name: &str) -> KmsResult<()> {
        let name = alias_name(name)
            .or_else(|| alias_name(&format!("alias/{name}")))
            .unwrap_or_else(|| Err(KmsError::validation("bad alias")))?;
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        let existed = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.delete_alias(&name)
        })?;
        self.aliases.remove(&name);
        self.aliases_changed();
        if existed {
            Ok(())
        } else {
            Err(KmsError::not_found(format!("{name} does not exist")))
        }
    }

    /// Lists aliases as `(alias/NAME, key id)`, one page at a time.
    pub fn list_aliases(&self, after: Option<&str>, limit: usize) -> KmsResult<AliasPage> {
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        let limit = limit.clamp(1, 1000);
        let page = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.list_aliases(after, limit + 1)
        })?;
        let more = page.len() > limit;
        let page: Vec<_> = page.into_iter().take(limit).collect();
        let next = if more {
            page.last().map(|(n, _)| n.clone())
        } else {
            None
        };
        Ok((page, next))
    }
}

/// The change of one version's state, for [`Kms::version_action`] and its check; the material of a destroyed
/// `HSM` version is collected in `erased`, for its token object to be deleted once the change is committed.
fn version_change<'a>(
    version: u32,
    action: VersionAction,
    erased: &'a mut Vec<(KeyRecord, u32, Vec<u8>)>,
) -> impl FnOnce(&mut dyn Tx, &mut KeyRecord, &mut Vec<VersionRecord>, i64) -> KmsResult<VersionInfo> + 'a
{
    move |tx, rec, versions, now| {
        let key_state = parse_state(&rec.state, KeyState::parse)?;
        if matches!(key_state, KeyState::Destroyed | KeyState::PendingDeletion) {
            return Err(state_error(key_state, &rec.key_id));
        }
        let v = version
            .checked_sub(1)
            .and_then(|i| versions.get_mut(i as usize))
            .ok_or_else(|| {
                KmsError::not_found(format!("key {} has no version {version}", rec.key_id))
            })?;
        let state = parse_state(&v.state, VersionState::parse)?;
        let is_primary = version == rec.primary_version;
        let destroyed = || {
            KmsError::new(
                ErrorCode::KeyDestroyed,
                format!("version {version} of key {} is destroyed", rec.key_id),
            )
        };
        let new_state = match (action, state) {
            (_, VersionState::Destroyed) => return Err(destroyed()),
            (VersionAction::Destroy, VersionState::PendingImport) if !is_primary => {
                tx.delete_meta(
                    crate::records::IMPORT_CHECK_NS,
                    &crate::records::check_name(&rec.key_id, version),
                )?;
                VersionState::Destroyed
            }
            (_, VersionState::PendingImport) => {
                return Err(KmsError::invalid_state(format!(
                    "the imported material of version {version} was deleted: import it again first"
                )))
            }
            (VersionAction::Enable, VersionState::Enabled | VersionState::Disabled) => {
                VersionState::Enabled
            }
            (VersionAction::Enable, VersionState::Archived) => {
                return Err(KmsError::invalid_state(
                    "an Archived version is brought back with restore",
                ))
            }
            (VersionAction::Restore, VersionState::Archived | VersionState::Enabled) => {
                VersionState::Enabled
            }
            (VersionAction::Restore, VersionState::Disabled) => {
                return Err(KmsError::invalid_state(
                    "only Archived versions can be restored; enable a Disabled one",
                ))
            }
            (VersionAction::Disable | VersionAction::Archive | VersionAction::Destroy, _)
                if is_primary =>
            {
                return Err(KmsError::invalid_state(format!(
                    "version {version} is the primary; make another version primary first"
                )))
            }
            (VersionAction::Disable, _) => VersionState::Disabled,
            (VersionAction::Archive, VersionState::Enabled | VersionState::Archived) => {
                VersionState::Archived
            }
            (VersionAction::Archive, VersionState::Disabled) => {
                return Err(KmsError::new(
                    ErrorCode::KeyDisabled,
                    format!("version {version} is disabled; enable it first"),
                ))
            }
            (VersionAction::Destroy, _) => VersionState::Destroyed,
        };
        v.state = new_state.as_str().into();
        if new_state == VersionState::Destroyed {
            if rec.origin == Origin::Hsm.as_str() {
                erased.extend(v.material.clone().map(|m| (rec.clone(), v.version, m)));
            }
            v.material = None;
            v.destroyed_at = Some(now);
        }
        tx.put_version(v)?;
        version_info(v)
    }
}

/// The change that schedules a key's deletion, for [`Kms::schedule_deletion`] and its check.
fn deletion_schedule(
    pending_days: u32,
) -> impl FnOnce(&mut dyn Tx, &mut KeyRecord, &mut Vec<VersionRecord>, i64) -> KmsResult<KeyInfo> {
    move |tx, rec, _, now| {
        match parse_state(&rec.state, KeyState::parse)? {
            KeyState::Enabled | KeyState::Disabled => {}
            other => return Err(state_error(other, &rec.key_id)),
        }
        rec.state = KeyState::PendingDeletion.as_str().into();
        rec.deletion_date = Some(now + pending_days as i64 * DAY);
        info_in_tx(tx, rec)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_key_id;

    #[test]
    fn key_id_fast_path_matches_the_uuid_crate() {
        for s in [
            "19af7376-f302-43b0-80a5-19ab3fd789a7",
            "19AF7376-F302-43B0-80A5-19AB3FD789A7",
        ] {
            let expected = uuid::Uuid::parse_str(s).map(|u| *u.as_bytes()).ok();
            assert_eq!(parse_key_id(s), expected);
        }
        assert_eq!(parse_key_id("19af7376-f302-43b0-80a5-19ab3fd789aZ"), None);
        assert_eq!(parse_key_id("19af7376f30243b080a519ab3fd789a7"), None);
    }
}
