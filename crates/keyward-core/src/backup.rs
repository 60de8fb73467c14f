//! Consistent, encrypted and authenticated snapshots of the whole store, and restoring them.
//!
//! # Format
//! ```text
//! "KWBACKUP" | u32 big-endian header length | header (JSON) | body
//! header: format version, creation time, the init record and the root record (the root key wrapped under
//!         the unseal key), counts
//! body:   AES-256-GCM under a key derived from the unseal key, with magic, length and header as
//!         associated data: every key and version (material still wrapped under the root key), alias,
//!         namespace record (identities, policies, tokens as hashes) and the audit chain
//! ```
//! The backup key derives from the unseal key, the cluster's root of trust: root rotation does not orphan
//! older backups, and only holders of the same root of trust can read or restore one. A single changed byte
//! anywhere fails authentication, and nothing is written before the whole backup has been authenticated.
//!
//! # Restoring
//! - Into a fresh node over an empty database (disaster recovery): the request carries a threshold of the
//!   cluster's unseal shares, which authenticate the backup; everything is written in one transaction,
//!   audit chain included, and the node is unsealed with those shares.
//! - Into a running cluster with the same root of trust (recovering deleted or damaged keys): keys are
//!   compared by revision; a key the store holds in a newer state refuses the whole restore unless forced.
//!   Versions are re-wrapped under the current root key. The live audit chain is kept, never replaced.

use std::collections::BTreeMap;

use keyward_hsm::{KeyAttributes, KeyHandle, KeySpec, SecretBytes};
use keyward_store::{transact, AuditQuery, AuditRow, KeyRecord, Tx, VersionRecord};
use serde::{Deserialize, Serialize};

use crate::engine::Kms;
use crate::error::{KmsError, KmsResult};
use crate::records::{b64, corrupt, unb64, version_aad, SYS};
use crate::shamir;

const MAGIC: &[u8; 8] = b"KWBACKUP";
const FORMAT: u32 = 1;
/// Larger headers are not ours: a header holds two small records and counts.
const MAX_HEADER: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    created_at: i64,
    /// The stored init record, verbatim.
    init: serde_json::Value,
    /// The stored root record, verbatim.
    root: serde_json::Value,
    keys: usize,
    audit_records: usize,
}

#[derive(Serialize, Deserialize)]
struct Version {
    key_id: String,
    version: u32,
    state: String,
    created_at: i64,
    destroyed_at: Option<i64>,
    material: Option<String>,
    root_generation: u32,
}

impl Version {
    /// The stored record, with its material as given (re-wrapped or not) under root `root_generation`.
    fn into_record(self, material: Option<Vec<u8>>, root_generation: u32) -> VersionRecord {
        VersionRecord {
            key_id: self.key_id,
            version: self.version,
            state: self.state,
            created_at: self.created_at,
            destroyed_at: self.destroyed_at,
            material,
            root_generation,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    ns: String,
    name: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
struct Audit {
    seq: u64,
    time_ms: i64,
    principal: String,
    action: String,
    key_id: Option<String>,
    outcome: String,
    record: String,
}

#[derive(Serialize, Deserialize)]
struct Body {
    keys: Vec<KeyRecord>,
    versions: Vec<Version>,
    aliases: Vec<(String, String)>,
    meta: Vec<Meta>,
    audit: Vec<Audit>,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Keys written (new, or replaced by a newer or forced state).
    pub restored_keys: usize,
    /// Whether this restore initialised a fresh node (and unsealed it).
    pub initialized: bool,
}

fn refuse(why: &str) -> KmsError {
    KmsError::validation(format!("the backup is refused: {why}; nothing was changed"))
}

/// A parsed but not yet authenticated backup.
struct Parsed<'a> {
    header: Header,
    /// Magic, length and header: the associated data of the body.
    aad: &'a [u8],
    sealed: &'a [u8],
}

fn parse(bytes: &[u8]) -> KmsResult<Parsed<'_>> {
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(refuse("it is not a Keyward backup"));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[MAGIC.len()..MAGIC.len() + 4]);
    let len = u32::from_be_bytes(len) as usize;
    let start = MAGIC.len() + 4;
    if len > MAX_HEADER || bytes.len() < start + len {
        return Err(refuse("it is truncated or corrupted"));
    }
    let header: Header = serde_json::from_slice(&bytes[start..start + len])
        .map_err(|_| refuse("its header is corrupted"))?;
    if header.format != FORMAT {
        return Err(refuse(
            "it was written in a format this build does not know",
        ));
    }
    Ok(Parsed {
        header,
        aad: &bytes[..start + len],
        sealed: &bytes[start + len..],
    })
}

impl Kms {
    fn backup_key(&self, unseal_kek: &KeyHandle) -> KmsResult<KeyHandle> {
        let material = self
            .hsm
            .derive_hkdf(unseal_kek, b"keyward", b"backup-v1", 32)?;
        Ok(self
            .hsm
            .import_plaintext(KeySpec::Aes256, &material, &KeyAttributes::internal())?)
    }

    /// Writes a consistent snapshot of the whole store: one transaction reads everything, so no change
    /// lands half inside it.
    pub fn backup(&self) -> KmsResult<Vec<u8>> {
        let keyring = self.keyring()?;
        let key = self.backup_key(&keyring.unseal_kek)?;
        let (init, root, body) = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let init = tx
                .get_meta(SYS, "init")?
                .ok_or_else(|| corrupt("init record missing"))?;
            let root = tx
                .get_meta(SYS, "root")?
                .ok_or_else(|| corrupt("root record missing"))?;
            let body = dump(tx)?;
            Ok::<_, KmsError>((init, root, body))
        })?;
        let header = Header {
            format: FORMAT,
            created_at: self.clock.now(),
            init: serde_json::from_slice(&init).map_err(|_| corrupt("init record"))?,
            root: serde_json::from_slice(&root).map_err(|_| corrupt("root record"))?,
            keys: body.keys.len(),
            audit_records: body.audit.len(),
        };
        let header = serde_json::to_vec(&header).map_err(|_| corrupt("backup header"))?;
        let body = SecretBytes::new(serde_json::to_vec(&body).map_err(|_| corrupt("backup"))?);
        let mut out = Vec::with_capacity(body.expose().len() + header.len() + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        let aad = out.clone();
        let mut sealed = Vec::with_capacity(body.expose().len() + 28);
        self.hsm
            .encrypt_symmetric(&key, &aad, body.expose(), &mut sealed)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Restores a backup. On an uninitialised node `shares` (a threshold of the cluster's unseal shares)
    /// authenticate it and the node comes up unsealed; on an unsealed node the node's own root of trust
    /// does, and `live_namespaces` names the namespace records (identities, policies) to bring back beside
    /// the keys. `force` lets older state in the backup replace newer state in the store.
    pub fn restore(
        &self,
        backup: &[u8],
        shares: Option<&[zeroize::Zeroizing<String>]>,
        force: bool,
        live_namespaces: &[&str],
    ) -> KmsResult<Restored> {
        let parsed = parse(backup)?;
        if !self.status().initialized {
            return self.restore_fresh(&parsed, shares);
        }
        if shares.is_some() {
            return Err(KmsError::validation(
                "this node is initialised: a restore into it is authenticated by its own root of trust, \
                 without shares",
            ));
        }
        self.restore_live(&parsed, force, live_namespaces)
    }

    fn open_body(
        &self,
        parsed: &Parsed<'_>,
        unseal_kek: &KeyHandle,
        whose: &str,
    ) -> KmsResult<Body> {
        let key = self.backup_key(unseal_kek)?;
        let plain = self
            .hsm
            .decrypt_symmetric(&key, parsed.aad, parsed.sealed)
            .map_err(|_| {
                refuse(&format!(
                    "it does not authenticate under {whose}: it is corrupted, or it belongs to another cluster"
                ))
            })?;
        serde_json::from_slice(plain.expose()).map_err(|_| refuse("its contents do not decode"))
    }

    fn restore_fresh(
        &self,
        parsed: &Parsed<'_>,
        shares: Option<&[zeroize::Zeroizing<String>]>,
    ) -> KmsResult<Restored> {
        let init: crate::engine::InitRecord = serde_json::from_value(parsed.header.init.clone())
            .map_err(|_| refuse("its header is corrupted"))?;
        if init.root_of_trust != crate::RootOfTrust::Shamir {
            return Err(KmsError::validation(
                "only a cluster unsealed with Shamir shares restores into a fresh node",
            ));
        }
        let Some(shares) = shares else {
            return Err(KmsError::validation(format!(
                "this node is not initialised: restore the backup with {} unseal shares of the cluster that \
                 made it (\"shares\")",
                init.threshold
            )));
        };
        let unseal_key = shamir::combine_encoded(shares, init.threshold)?;
        let kek =
            self.hsm
                .import_plaintext(KeySpec::Aes256, &unseal_key, &KeyAttributes::internal())?;
        let body = self.open_body(parsed, &kek, "these shares")?;
        let init_json = serde_json::to_vec(&parsed.header.init).map_err(|_| corrupt("init"))?;
        let root_json = serde_json::to_vec(&parsed.header.root).map_err(|_| corrupt("root"))?;
        let restored_keys = body.keys.len();
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            if tx.get_meta(SYS, "init")?.is_some()
                || !tx.list_keys(None, 1)?.is_empty()
                || tx.audit_tail()?.is_some()
            {
                return Err(KmsError::invalid_state(
                    "the database is not empty: a fresh node restores only into an empty database",
                ));
            }
            tx.put_meta(SYS, "root", &root_json)?;
            tx.put_meta(SYS, "init", &init_json)?;
            load(tx, body)
        })?;
        self.aliases_changed();
        self.audit_moved
            .store(true, std::sync::atomic::Ordering::Release);
        self.reload_init()?;
        self.unseal_with_key(&unseal_key)?;
        Ok(Restored {
            restored_keys,
            initialized: true,
        })
    }

    fn restore_live(
        &self,
        parsed: &Parsed<'_>,
        force: bool,
        live_namespaces: &[&str],
    ) -> KmsResult<Restored> {
        let keyring = self.keyring()?;
        let body = self.open_body(parsed, &keyring.unseal_kek, "this cluster's root of trust")?;
        let (from_generation, wrapped_root) = crate::records::parse_root(
            &serde_json::to_vec(&parsed.header.root).map_err(|_| corrupt("root"))?,
        )?;
        let from_root = self.hsm.unwrap_from_storage(
            &keyring.unseal_kek,
            KeySpec::Aes256,
            &wrapped_root,
            &crate::records::root_aad(from_generation),
            &KeyAttributes::internal(),
        )?;
        let mut versions: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        for v in body.versions {
            versions.entry(v.key_id.clone()).or_default().push(v);
        }
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, key_id) in body.aliases {
            aliases.entry(key_id).or_default().push(name);
        }
        let restored = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut newer = Vec::new();
            let mut written = 0;
            for mut key in body.keys {
                if let Some(current) = tx.get_key(&key.key_id)? {
                    // The same state (an earlier restore bumped only the revision): nothing to do.
                    let same = KeyRecord {
                        revision: key.revision,
                        ..current.clone()
                    } == key;
                    if same {
                        continue;
                    }
                    if current.revision > key.revision && !force {
                        newer.push(key.key_id.clone());
                        continue;
                    }
                    // Caches keep the highest revision they saw: the restored state must outrank it.
                    key.revision = current.revision.max(key.revision) + 1;
                }
                let spec =
                    KeySpec::parse(&key.spec).ok_or_else(|| refuse("a key has an unknown spec"))?;
                for v in versions.remove(&key.key_id).unwrap_or_default() {
                    let material = match &v.material {
                        Some(m) => {
                            let aad = version_aad(&key.key_id, v.version);
                            let handle = self
                                .hsm
                                .unwrap_from_storage(
                                    &from_root,
                                    spec,
                                    &unb64(m)?,
                                    &aad,
                                    &KeyAttributes::internal(),
                                )
                                .map_err(|_| refuse("a key version does not unwrap"))?;
                            Some(self.hsm.wrap_for_storage(&keyring.root, &handle, &aad)?)
                        }
                        None => None,
                    };
                    tx.put_version(&v.into_record(material, keyring.generation))?;
                }
                for name in aliases.remove(&key.key_id).unwrap_or_default() {
                    match tx.get_alias(&name)? {
                        Some(target) if target != key.key_id && !force => {}
                        _ => tx.put_alias(&name, &key.key_id)?,
                    }
                }
                tx.put_key(&key)?;
                written += 1;
            }
            if let Some(first) = newer.first() {
                return Err(KmsError::invalid_state(format!(
                    "the store holds newer state of {} key(s) than the backup (first: {first}); restore with \
                     force to overwrite it (`--force` in the CLI, \"force\": true in the API)",
                    newer.len()
                )));
            }
            for m in body.meta {
                if !live_namespaces.contains(&m.ns.as_str()) {
                    continue;
                }
                if force || tx.get_meta(&m.ns, &m.name)?.is_none() {
                    tx.put_meta(&m.ns, &m.name, &unb64(&m.value)?)?;
                }
            }
            Ok::<_, KmsError>(written)
        })?;
        self.cache.clear();
        self.aliases.clear();
        self.aliases_changed();
        Ok(Restored {
            restored_keys: restored,
            initialized: false,
        })
    }
}

/// Reads the whole store inside one transaction.
fn dump(tx: &mut dyn Tx) -> KmsResult<Body> {
    let mut body = Body {
        keys: Vec::new(),
        versions: Vec::new(),
        aliases: Vec::new(),
        meta: Vec::new(),
        audit: Vec::new(),
    };
    let mut after: Option<String> = None;
    loop {
        let page = tx.list_keys(after.as_deref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key_id.clone());
        for key in page {
            for v in tx.versions(&key.key_id)? {
                body.versions.push(Version {
                    material: v.material.as_deref().map(b64),
                    key_id: v.key_id,
                    version: v.version,
                    state: v.state,
                    created_at: v.created_at,
                    destroyed_at: v.destroyed_at,
                    root_generation: v.root_generation,
                });
            }
            body.keys.push(key);
        }
    }
    let mut after: Option<String> = None;
    loop {
        let page = tx.list_aliases(after.as_deref(), 1000)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        body.aliases.extend(page);
    }
    for ns in tx.meta_namespaces()? {
        for (name, value) in tx.list_meta(&ns)? {
            if ns == SYS && (name == "init" || name == "root") {
                continue;
            }
            body.meta.push(Meta {
                ns: ns.clone(),
                name,
                value: b64(&value),
            });
        }
    }
    let mut after_seq = 0;
    loop {
        let page = tx.query_audit(&AuditQuery {
            after_seq,
            limit: 10_000,
            ..AuditQuery::default()
        })?;
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        body.audit.extend(page.into_iter().map(|r| Audit {
            seq: r.seq,
            time_ms: r.time_ms,
            principal: r.principal,
            action: r.action,
            key_id: r.key_id,
            outcome: r.outcome,
            record: r.record,
        }));
    }
    Ok(body)
}

/// Writes a whole backup body into an empty store.
fn load(tx: &mut dyn Tx, body: Body) -> KmsResult<()> {
    for key in &body.keys {
        tx.put_key(key)?;
    }
    for v in body.versions {
        let material = v.material.as_deref().map(unb64).transpose()?;
        let generation = v.root_generation;
        tx.put_version(&v.into_record(material, generation))?;
    }
    for (name, key_id) in &body.aliases {
        tx.put_alias(name, key_id)?;
    }
    for m in body.meta {
        tx.put_meta(&m.ns, &m.name, &unb64(&m.value)?)?;
    }
    let rows: Vec<AuditRow> = body
        .audit
        .into_iter()
        .map(|a| AuditRow {
            seq: a.seq,
            time_ms: a.time_ms,
            principal: a.principal,
            action: a.action,
            key_id: a.key_id,
            outcome: a.outcome,
            record: a.record,
        })
        .collect();
    for chunk in rows.chunks(5000) {
        tx.append_audit(chunk)?;
    }
    Ok(())
}
