//! Versioned secrets: small JSON documents kept by path under a mount, each write a new version, the way
//! Vault's KV version 2 engine keeps them (the Vault front end serves them in that shape; MariaDB's key
//! management plugin reads its encryption keys from it).
//!
//! A secret is one record in the store's metadata (namespace `kv:<mount>`, name the path), so it is written in
//! one transaction, replicated, and carried by backups like every other record. Each version's value is a
//! Keyward ciphertext under the mount's key (alias `kv-<mount>`, made on the mount's first write), bound to
//! the mount, path and version through its context: the store never holds a value in plaintext, a value
//! cannot be moved to another path or version unnoticed, and disabling the mount's key stops every read. Read
//! and write go through the engine's encrypt and decrypt, so sealing the service stops them too.

use std::collections::BTreeMap;

use keyward_store::{transact, Tx};
use serde::{Deserialize, Serialize};

use crate::engine::Kms;
use crate::error::{ErrorCode, KmsError, KmsResult};
use crate::lifecycle::CreateKey;
use crate::ops::Context;
use crate::SecretBytes;

/// Versions kept when a secret's metadata names no other number (Vault's default).
pub const DEFAULT_MAX_VERSIONS: u32 = 10;

/// The context entry binding a value to its place.
const KV_CONTEXT_KEY: &str = "keyward:kv";

/// The longest path, in bytes.
const MAX_PATH: usize = 512;

/// A mount name: what a policy resource `kv/<mount>/...` and the Vault API's first path segment name.
pub fn valid_mount(mount: &str) -> bool {
    !mount.is_empty()
        && mount.len() <= 64
        && mount
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && mount != "."
        && mount != ".."
}

/// Checks a secret's path: segments of printable characters separated by single slashes, no `.` or `..`.
pub fn check_path(path: &str) -> KmsResult<()> {
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.starts_with('/')
        && !path.ends_with('/')
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && !path.chars().any(|c| c.is_control() || c == '*');
    if ok {
        Ok(())
    } else {
        Err(KmsError::validation(
            "a secret path is segments separated by single slashes: no leading or trailing slash, no . or .., no * or control characters, at most 512 bytes",
        ))
    }
}

/// One version of a secret as it is stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredVersion {
    created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_ms: Option<i64>,
    #[serde(default)]
    destroyed: bool,
    /// The Keyward ciphertext of the value; gone once destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    ciphertext: Option<Vec<u8>>,
}

/// A secret as it is stored: its settings and its versions.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSecret {
    created_ms: i64,
    updated_ms: i64,
    current_version: u32,
    #[serde(default)]
    max_versions: u32,
    #[serde(default)]
    cas_required: bool,
    #[serde(default)]
    custom_metadata: BTreeMap<String, String>,
    versions: BTreeMap<u32, StoredVersion>,
}

mod opt_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// What is known of one version, without its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// Its number, from 1.
    pub version: u32,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// When it was deleted (it can be undeleted), if it was.
    pub deleted_ms: Option<i64>,
    /// Whether its value is destroyed for good.
    pub destroyed: bool,
}

/// A secret's settings and versions, without any value.
#[derive(Clone, Debug)]
pub struct SecretMetadata {
    /// Unix milliseconds of the first write.
    pub created_ms: i64,
    /// Unix milliseconds of the last write.
    pub updated_ms: i64,
    /// The newest version.
    pub current_version: u32,
    /// The oldest version still kept.
    pub oldest_version: u32,
    /// Versions kept (0: [`DEFAULT_MAX_VERSIONS`]).
    pub max_versions: u32,
    /// Whether every write must carry `cas`.
    pub cas_required: bool,
    /// Free-form labels (never secret).
    pub custom_metadata: BTreeMap<String, String>,
    /// Every kept version.
    pub versions: Vec<VersionInfo>,
}

/// A version's value and what is known of it.
pub struct SecretRead {
    /// The JSON object written, in the service's memory only for the request.
    pub data: SecretBytes,
    /// The version read.
    pub info: VersionInfo,
    /// The secret's labels (never secret), read in the same lookup.
    pub custom_metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SecretRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRead")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What a metadata update changes.
#[derive(Clone, Debug, Default)]
pub struct MetadataUpdate {
    /// Versions to keep.
    pub max_versions: Option<u32>,
    /// Whether writes must carry `cas`.
    pub cas_required: Option<bool>,
    /// Replaces the labels.
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

fn ns(mount: &str) -> String {
    format!("kv:{mount}")
}

/// The alias of a mount's key.
pub fn mount_key_alias(mount: &str) -> String {
    format!("alias/kv-{mount}")
}

fn not_found(mount: &str, path: &str) -> KmsError {
    KmsError::new(
        ErrorCode::NotFound,
        format!(
            "no secret at {}/{}",
            crate::quoted(mount),
            crate::quoted(path)
        ),
    )
}

fn decode(raw: &[u8]) -> KmsResult<StoredSecret> {
    serde_json::from_slice(raw).map_err(|_| crate::records::corrupt("secret record"))
}

fn encode(s: &StoredSecret) -> KmsResult<Vec<u8>> {
    serde_json::to_vec(s).map_err(|_| crate::records::corrupt("secret record"))
}

impl StoredSecret {
    /// A secret with no version yet.
    fn new(now: i64) -> StoredSecret {
        StoredSecret {
            created_ms: now,
            updated_ms: now,
            current_version: 0,
            max_versions: 0,
            cas_required: false,
            custom_metadata: BTreeMap::new(),
            versions: BTreeMap::new(),
        }
    }

    fn info(&self, v: u32) -> Option<VersionInfo> {
        self.versions.get(&v).map(|s| VersionInfo {
            version: v,
            created_ms: s.created_ms,
            deleted_ms: s.deleted_ms,
            destroyed: s.destroyed,
        })
    }

    fn metadata(&self) -> SecretMetadata {
        SecretMetadata {
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            current_version: self.current_version,
            oldest_version: self.versions.keys().next().copied().unwrap_or(0),
            max_versions: self.max_versions,
            cas_required: self.cas_required,
            custom_metadata: self.custom_metadata.clone(),
            versions: self.versions.keys().filter_map(|v| self.info(*v)).collect(),
        }
    }

    fn keep(&self) -> u32 {
        if self.max_versions == 0 {
            DEFAULT_MAX_VERSIONS
        } else {
            self.max_versions
        }
    }
}

fn context(mount: &str, path: &str, version: u32) -> Context {
    let mut c = Context::new();
    c.insert(KV_CONTEXT_KEY.into(), format!("{mount}/{path}#{version}"));
    c
}

impl Kms {
    fn load_secret(&self, mount: &str, path: &str) -> KmsResult<Option<StoredSecret>> {
        let raw = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(&ns(mount), path)
        })?;
        raw.map(|r| decode(&r)).transpose()
    }

    /// The mount's key, made (AES-256, alias `kv-<mount>`) on the mount's first write, and whether this call
    /// made it (the caller's audit record then names it). Two nodes making it at once: the second finds the
    /// alias taken and uses the first's key.
    fn mount_key(&self, mount: &str) -> KmsResult<(String, bool)> {
        let alias = mount_key_alias(mount);
        match self.key_id_of(&alias) {
            Ok(id) => return Ok((id, false)),
            Err(e) if e.code() != ErrorCode::NotFound => return Err(e),
            Err(_) => {}
        }
        let mut req = CreateKey::new(crate::KeySpec::Aes256);
        req.alias = Some(alias.clone());
        req.description = format!("values of the secrets of mount {mount}");
        match self.create_key(req) {
            Ok(k) => Ok((k.key_id, true)),
            Err(e) if e.code() == ErrorCode::AlreadyExists => Ok((self.key_id_of(&alias)?, false)),
            Err(e) => Err(e),
        }
    }

    /// Writes a new version of a secret: `data` is its JSON object, `cas` the version the caller believes
    /// current (0: the secret must not exist yet). Returns the new version, and the id of the mount's key
    /// when this write made it.
    pub fn kv_write(
        &self,
        mount: &str,
        path: &str,
        data: &[u8],
        cas: Option<u32>,
    ) -> KmsResult<(VersionInfo, Option<String>)> {
        check_path(path)?;
        let (key, made) = self.mount_key(mount)?;
        let now = self.clock.now_ms();
        // The version is chosen, then sealed under it, then written only if nobody wrote meanwhile: the
        // transaction re-reads the record and refuses a stale version rather than overwrite.
        let before = self.load_secret(mount, path)?;
        let current = before.as_ref().map_or(0, |s| s.current_version);
        let cas_required = before.as_ref().is_some_and(|s| s.cas_required);
        match cas {
            Some(c) if c != current => {
                return Err(KmsError::validation(format!(
                    "check-and-set parameter did not match the current version ({current})"
                )))
            }
            None if cas_required => {
                return Err(KmsError::validation(
                    "check-and-set parameter required for this call",
                ))
            }
            _ => {}
        }
        let version = current
            .checked_add(1)
            .ok_or_else(|| KmsError::invalid_state("the secret has no more version numbers"))?;
        let sealed = self.encrypt(&key, data, &context(mount, path, version), None)?;
        let ns = ns(mount);
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut s = match tx.get_meta(&ns, path)? {
                Some(raw) => decode(&raw)?,
                None => StoredSecret::new(now),
            };
            if s.current_version != current {
                return Err(KmsError::new(
                    ErrorCode::InvalidState,
                    "the secret was written meanwhile: retry",
                ));
            }
            s.current_version = version;
            s.updated_ms = now;
            s.versions.insert(
                version,
                StoredVersion {
                    created_ms: now,
                    deleted_ms: None,
                    destroyed: false,
                    ciphertext: Some(sealed.ciphertext.clone()),
                },
            );
            while s.versions.len() > s.keep() as usize {
                s.versions.pop_first();
            }
            tx.put_meta(&ns, path, &encode(&s)?)?;
            Ok::<_, KmsError>(())
        })?;
        let info = VersionInfo {
            version,
            created_ms: now,
            deleted_ms: None,
            destroyed: false,
        };
        Ok((info, made.then_some(key)))
    }

    /// Reads a version (the current one when `version` is `None`). A deleted or destroyed version is
    /// `NotFound` with what is known of it, so the caller can say which.
    pub fn kv_read(
        &self,
        mount: &str,
        path: &str,
        version: Option<u32>,
    ) -> KmsResult<Result<SecretRead, VersionInfo>> {
        check_path(path)?;
        let s = self
            .load_secret(mount, path)?
            .ok_or_else(|| not_found(mount, path))?;
        let v = match version {
            Some(0) | None => s.current_version,
            Some(v) => v,
        };
        let stored = s.versions.get(&v).ok_or_else(|| not_found(mount, path))?;
        let info = s.info(v).ok_or_else(|| not_found(mount, path))?;
        let ciphertext = match (&stored.ciphertext, stored.deleted_ms, stored.destroyed) {
            (Some(c), None, false) => c,
            _ => return Ok(Err(info)),
        };
        let opened = self.decrypt(None, ciphertext, &context(mount, path, v), None)?;
        Ok(Ok(SecretRead {
            data: opened.plaintext,
            info,
            custom_metadata: s.custom_metadata,
        }))
    }

    /// A secret's settings and versions.
    pub fn kv_metadata(&self, mount: &str, path: &str) -> KmsResult<SecretMetadata> {
        check_path(path)?;
        Ok(self
            .load_secret(mount, path)?
            .ok_or_else(|| not_found(mount, path))?
            .metadata())
    }

    /// The names directly under `prefix` (`""` for the mount's top): secrets by name, folders with a
    /// trailing slash, sorted. None at all is `NotFound`.
    pub fn kv_list(&self, mount: &str, prefix: &str) -> KmsResult<Vec<String>> {
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            check_path(prefix)?;
        }
        let all = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.list_meta(&ns(mount))
        })?;
        let start = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let mut names: Vec<String> = all
            .into_iter()
            .filter_map(|(name, _)| {
                let rest = name.strip_prefix(&start)?;
                Some(match rest.split_once('/') {
                    Some((dir, _)) => format!("{dir}/"),
                    None => rest.to_string(),
                })
            })
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(not_found(mount, prefix));
        }
        Ok(names)
    }

    /// Changes versions in one transaction: `f` gets the record and the versions named (the current one
    /// when none are), and the record is written back.
    fn kv_change(
        &self,
        mount: &str,
        path: &str,
        versions: &[u32],
        f: impl Fn(&mut StoredVersion, i64),
    ) -> KmsResult<()> {
        check_path(path)?;
        let now = self.clock.now_ms();
        let ns = ns(mount);
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let raw = tx
                .get_meta(&ns, path)?
                .ok_or_else(|| not_found(mount, path))?;
            let mut s = decode(&raw)?;
            let current = [s.current_version];
            let named = if versions.is_empty() {
                &current[..]
            } else {
                versions
            };
            for v in named {
                if let Some(stored) = s.versions.get_mut(v) {
                    f(stored, now);
                }
            }
            s.updated_ms = now;
            tx.put_meta(&ns, path, &encode(&s)?)?;
            Ok::<_, KmsError>(())
        })
    }

    /// Marks versions deleted (the current one when `versions` is empty); they can be undeleted.
    pub fn kv_delete(&self, mount: &str, path: &str, versions: &[u32]) -> KmsResult<()> {
        self.kv_change(mount, path, versions, |v, now| {
            if v.deleted_ms.is_none() && !v.destroyed {
                v.deleted_ms = Some(now);
            }
        })
    }

    /// Undoes deletions of versions not destroyed.
    pub fn kv_undelete(&self, mount: &str, path: &str, versions: &[u32]) -> KmsResult<()> {
        if versions.is_empty() {
            return Err(KmsError::validation("versions: name at least one"));
        }
        self.kv_change(mount, path, versions, |v, _| {
            if !v.destroyed {
                v.deleted_ms = None;
            }
        })
    }

    /// Destroys versions' values for good (their metadata stays).
    pub fn kv_destroy(&self, mount: &str, path: &str, versions: &[u32]) -> KmsResult<()> {
        if versions.is_empty() {
            return Err(KmsError::validation("versions: name at least one"));
        }
        self.kv_change(mount, path, versions, |v, _| {
            v.destroyed = true;
            v.ciphertext = None;
        })
    }

    /// Changes a secret's settings (making an empty record when there is none yet, as Vault does).
    pub fn kv_update_metadata(
        &self,
        mount: &str,
        path: &str,
        update: &MetadataUpdate,
    ) -> KmsResult<()> {
        check_path(path)?;
        let now = self.clock.now_ms();
        let ns = ns(mount);
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut s = match tx.get_meta(&ns, path)? {
                Some(raw) => decode(&raw)?,
                None => StoredSecret::new(now),
            };
            if let Some(m) = update.max_versions {
                s.max_versions = m;
            }
            if let Some(c) = update.cas_required {
                s.cas_required = c;
            }
            if let Some(c) = &update.custom_metadata {
                s.custom_metadata = c.clone();
            }
            while s.versions.len() > s.keep() as usize {
                s.versions.pop_first();
            }
            s.updated_ms = now;
            tx.put_meta(&ns, path, &encode(&s)?)?;
            Ok::<_, KmsError>(())
        })
    }

    /// Removes a secret with every version and its settings.
    pub fn kv_delete_all(&self, mount: &str, path: &str) -> KmsResult<()> {
        check_path(path)?;
        let ns = ns(mount);
        let gone = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.delete_meta(&ns, path)
        })?;
        if gone {
            Ok(())
        } else {
            Err(not_found(mount, path))
        }
    }
}
