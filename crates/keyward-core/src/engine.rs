//! The engine: seal state, key hierarchy, and loading keys into the cache.
//!
//! # Key hierarchy
//! ```text
//! unseal key (256-bit)      Shamir-split to operators, or in a file (dev), or an HSM-resident key (PKCS#11)
//!   └─ root key (AES-256)   stored wrapped under the unseal key, with its generation; rotatable
//!        └─ version material  every key version, wrapped under the root key, bound to "keyward:key:<id>:<n>"
//! ```
//! Sealed means: neither the unseal key nor the root key nor any version is in memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

use keyward_hsm::{Hsm, KeyAttributes, KeyHandle, KeySpec, KeyUsage, SecretBytes};
use keyward_store::{transact, KeyRecord, Store, Tx};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::cache::{CachedKey, CachedVersion, KeyIdHash, ShardedMap};
use crate::clock::Clock;
use crate::error::{ErrorCode, KmsError, KmsResult};
use crate::freshness::Freshness;
use crate::model::{KeyState, Origin, VersionState};
use crate::records::{
    b64, corrupt, parse_id, root_aad, unb64, version_aad, ImportTokenRecord, RootRecord, IMPORT_NS,
    SYS,
};
use crate::shamir;

/// How the unseal key is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootOfTrust {
    /// Split into Shamir shares held by operators.
    Shamir,
    /// Kept in a file in the data directory: development only.
    Dev,
    /// A non-extractable key inside a PKCS#11 token.
    Pkcs11,
}

impl RootOfTrust {
    /// The wire name used by `/v1/sys/status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RootOfTrust::Shamir => "shamir",
            RootOfTrust::Dev => "dev",
            RootOfTrust::Pkcs11 => "pkcs11",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct InitRecord {
    pub(crate) root_of_trust: RootOfTrust,
    pub(crate) shares: u8,
    pub(crate) threshold: u8,
    created_at: i64,
}

/// The seal status, as `/v1/sys/status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealStatus {
    /// Whether init has run.
    pub initialized: bool,
    /// Whether key material is unavailable.
    pub sealed: bool,
    /// Shares needed.
    pub threshold: u8,
    /// Shares issued.
    pub shares: u8,
    /// Shares submitted so far towards unsealing.
    pub progress: u8,
    /// How the unseal key is held; `None` before init.
    pub root_of_trust: Option<RootOfTrust>,
}

pub(crate) struct Keyring {
    pub root: KeyHandle,
    pub generation: u32,
    pub(crate) unseal_kek: KeyHandle,
    /// HMAC key of the audit chain, derived from the unseal key so root rotation does not change it.
    audit: KeyHandle,
    /// Ed25519 key that signs audit checkpoints, also derived from the unseal key.
    checkpoint: KeyHandle,
    /// AES-256 key for service secrets (TOTP seeds), derived from the unseal key.
    secrets: KeyHandle,
}

enum SealState {
    Uninitialized,
    Sealed {
        init: InitRecord,
        progress: Vec<(u8, SecretBytes)>,
    },
    Unsealed {
        init: InitRecord,
        keyring: Arc<Keyring>,
    },
}

/// Engine limits.
#[derive(Clone, Debug)]
pub struct KmsConfig {
    /// Largest plaintext `encrypt` accepts (API: 64 KiB).
    pub max_plaintext: usize,
    /// Lifetime of a BYOK import token, seconds.
    pub import_token_ttl: i64,
    /// Keys held in the cache at most. Beyond it the least recently used give way (second chance), and
    /// their unwrapped material is dropped (zeroized) until a request needs them again: memory stays bounded
    /// however many keys the store holds, and keys nobody uses do not sit unwrapped in memory.
    pub key_cache_capacity: usize,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            max_plaintext: 64 * 1024,
            import_token_ttl: 24 * 3600,
            key_cache_capacity: 100_000,
        }
    }
}

/// Figures of the key cache, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found the key.
    pub hits: u64,
    /// Lookups that loaded it from the store.
    pub misses: u64,
    /// Keys dropped to stay within `key_cache_capacity`.
    pub evictions: u64,
    /// Keys held now.
    pub keys: usize,
}

/// The KMS engine. One per process; cheap to share behind an `Arc`.
pub struct Kms {
    pub(crate) hsm: Arc<dyn Hsm>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: KmsConfig,
    seal: RwLock<SealState>,
    sealed: AtomicBool,
    pub(crate) cache: ShardedMap<[u8; 16], Arc<CachedKey>, KeyIdHash>,
    pub(crate) aliases: ShardedMap<String, [u8; 16]>,
    /// Every alias of a key, for policies that name keys by alias. Dropped whole whenever any alias changes
    /// (rare); `alias_epoch` moves with it, so a lookup that raced the change is not kept.
    pub(crate) alias_names: ShardedMap<[u8; 16], Arc<[String]>, KeyIdHash>,
    pub(crate) alias_epoch: std::sync::atomic::AtomicU64,
    cache_misses: std::sync::atomic::AtomicU64,
    pub(crate) freshness: Arc<Freshness>,
    /// Set when the stored audit chain changed under the writer (a restore): its next batch re-reads the
    /// head inside its transaction.
    pub(crate) audit_moved: AtomicBool,
}

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl Kms {
    /// Opens the engine over a store. It starts sealed (or uninitialised); nothing is decrypted yet.
    pub fn open(
        hsm: Arc<dyn Hsm>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: KmsConfig,
    ) -> KmsResult<Kms> {
        let init = transact(store.as_ref(), |tx: &mut dyn Tx| tx.get_meta(SYS, "init"))?;
        let seal = match init {
            None => SealState::Uninitialized,
            Some(bytes) => SealState::Sealed {
                init: serde_json::from_slice(&bytes).map_err(|_| corrupt("init record"))?,
                progress: Vec::new(),
            },
        };
        let key_cache_capacity = config.key_cache_capacity;
        Ok(Kms {
            hsm,
            clock,
            config,
            seal: RwLock::new(seal),
            sealed: AtomicBool::new(true),
            cache: ShardedMap::bounded(key_cache_capacity),
            aliases: ShardedMap::new(),
            alias_names: ShardedMap::new(),
            alias_epoch: Default::default(),
            cache_misses: Default::default(),
            freshness: Arc::new(Freshness::new(store.shared())),
            audit_moved: AtomicBool::new(false),
            store,
        })
    }

    /// How the key cache fares: hits, misses and evictions since start, and the keys it holds.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.cache.hits(),
            misses: self.cache_misses.load(Ordering::Relaxed),
            evictions: self.cache.evictions(),
            keys: self.cache.len(),
        }
    }

    /// The encryption algorithms a key can use, as its HSM offers them (a PKCS#11 token may offer fewer than
    /// the spec has); none for a key that does not encrypt.
    pub fn encryption_algorithms(
        &self,
        key: &crate::model::KeyInfo,
    ) -> Vec<keyward_hsm::EncryptionAlgorithm> {
        if key.usage != keyward_hsm::KeyUsage::EncryptDecrypt {
            return Vec::new();
        }
        self.hsm
            .encryption_algorithms(key.spec, key.origin == crate::model::Origin::Hsm)
    }

    /// The HSM backend's name.
    pub fn hsm_backend(&self) -> &'static str {
        self.hsm.backend_name()
    }

    /// The cryptographic module the HSM's software operations run in, and whether it is in FIPS mode.
    pub fn crypto_module(&self) -> keyward_hsm::CryptoModule {
        self.hsm.crypto_module()
    }

    /// The store, for the domain crates that keep their own records beside the keys (`keyward-iam`:
    /// tokens, identities, policies, approvals). Front ends never take it: what they store goes through a
    /// domain repository, so that every rule about it is written once.
    pub fn store_handle(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Whether this node runs the background work of a shared store (see [`Store::leads`]).
    pub fn leads(&self) -> KmsResult<bool> {
        Ok(self.store.leads()?)
    }

    /// The store's periodic upkeep, run by the leading node.
    pub fn housekeeping(&self) -> KmsResult<()> {
        Ok(self.store.housekeeping()?)
    }

    /// The feed of other nodes' changes, which a node follows to keep its caches true; `None` when only this
    /// process writes the store.
    pub fn change_feed(&self) -> KmsResult<Option<Box<dyn keyward_store::ChangeFeed>>> {
        Ok(self.store.change_feed()?)
    }

    /// The store backend's name.
    pub fn store_backend(&self) -> &'static str {
        self.store.backend_name()
    }

    /// The seal status.
    pub fn status(&self) -> SealStatus {
        match &*self.seal.read() {
            SealState::Uninitialized => SealStatus {
                initialized: false,
                sealed: true,
                threshold: 0,
                shares: 0,
                progress: 0,
                root_of_trust: None,
            },
            SealState::Sealed { init, progress } => SealStatus {
                initialized: true,
                sealed: true,
                threshold: init.threshold,
                shares: init.shares,
                progress: progress.len() as u8,
                root_of_trust: Some(init.root_of_trust),
            },
            SealState::Unsealed { init, .. } => SealStatus {
                initialized: true,
                sealed: false,
                threshold: init.threshold,
                shares: init.shares,
                progress: 0,
                root_of_trust: Some(init.root_of_trust),
            },
        }
    }

    /// The generation of the root key in use; `None` while sealed.
    pub fn root_generation(&self) -> Option<u32> {
        match &*self.seal.read() {
            SealState::Unsealed { keyring, .. } => Some(keyring.generation),
            _ => None,
        }
    }

    /// The audit chain's HMAC key; `None` while sealed.
    pub(crate) fn audit_key(&self) -> Option<KeyHandle> {
        match &*self.seal.read() {
            SealState::Unsealed { keyring, .. } => Some(keyring.audit.clone()),
            _ => None,
        }
    }

    /// Encrypts a service secret (a TOTP seed) for storage, bound to `aad`. The key is derived from the
    /// unseal key, so root rotation leaves these blobs valid; like key material they are unreadable while
    /// sealed and to anyone holding only the database.
    pub fn protect(&self, aad: &[u8], secret: &[u8]) -> KmsResult<Vec<u8>> {
        let key = match &*self.seal.read() {
            SealState::Unsealed { keyring, .. } => keyring.secrets.clone(),
            _ => return Err(KmsError::sealed()),
        };
        let mut out = Vec::with_capacity(secret.len() + 28);
        self.hsm.encrypt_symmetric(&key, aad, secret, &mut out)?;
        Ok(out)
    }

    /// Decrypts a blob made by [`Kms::protect`].
    pub fn unprotect(&self, aad: &[u8], blob: &[u8]) -> KmsResult<SecretBytes> {
        let key = match &*self.seal.read() {
            SealState::Unsealed { keyring, .. } => keyring.secrets.clone(),
            _ => return Err(KmsError::sealed()),
        };
        Ok(self.hsm.decrypt_symmetric(&key, aad, blob)?)
    }

    /// The audit checkpoint signing key; `None` while sealed.
    pub(crate) fn checkpoint_key(&self) -> Option<KeyHandle> {
        match &*self.seal.read() {
            SealState::Unsealed { keyring, .. } => Some(keyring.checkpoint.clone()),
            _ => None,
        }
    }

    /// True while no key material is available.
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn keyring(&self) -> KmsResult<Arc<Keyring>> {
        match &*self.seal.read() {
            SealState::Unsealed { keyring, .. } => Ok(keyring.clone()),
            _ => Err(KmsError::sealed()),
        }
    }

    fn new_unseal_key(&self) -> KmsResult<SecretBytes> {
        let mut key = SecretBytes::zeroed(32);
        self.hsm.fill_random(key.expose_mut())?;
        Ok(key)
    }

    /// How the root key is held: a persistent, non-extractable token object when a PKCS#11 token is the root
    /// of trust, a software key wrapped under the unseal key otherwise.
    fn root_attrs(root_of_trust: RootOfTrust, generation: u32) -> KeyAttributes {
        match root_of_trust {
            RootOfTrust::Pkcs11 => KeyAttributes {
                extractable: false,
                token_resident: true,
                label: Some(format!("keyward-root-{generation}")),
            },
            _ => KeyAttributes::internal(),
        }
    }

    fn initialize(
        &self,
        root_of_trust: RootOfTrust,
        shares: u8,
        threshold: u8,
        unseal_key: &SecretBytes,
        sealed_unseal_key: Option<Vec<u8>>,
    ) -> KmsResult<()> {
        let mut seal = self.seal.write();
        if !matches!(*seal, SealState::Uninitialized) {
            return Err(KmsError::invalid_state(
                "the service is already initialized",
            ));
        }
        let kek =
            self.hsm
                .import_plaintext(KeySpec::Aes256, unseal_key, &KeyAttributes::internal())?;
        let root = self
            .hsm
            .generate(KeySpec::Aes256, &Self::root_attrs(root_of_trust, 1))?;
        let wrapped = self.hsm.wrap_for_storage(&kek, &root, &root_aad(1))?;
        let init = InitRecord {
            root_of_trust,
            shares,
            threshold,
            created_at: self.clock.now(),
        };
        let init_json = serde_json::to_vec(&init).map_err(|_| corrupt("init record"))?;
        let root_json = serde_json::to_vec(&RootRecord {
            generation: 1,
            wrapped: b64(&wrapped),
        })
        .map_err(|_| corrupt("root record"))?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            if tx.get_meta(SYS, "init")?.is_some() {
                return Err(KmsError::invalid_state(
                    "the service is already initialized",
                ));
            }
            tx.put_meta(SYS, "root", &root_json)?;
            if let Some(sealed) = &sealed_unseal_key {
                tx.put_meta(SYS, "sealed_unseal_key", sealed)?;
            }
            tx.put_meta(SYS, "init", &init_json)?;
            Ok(())
        })?;
        *seal = SealState::Sealed {
            init,
            progress: Vec::new(),
        };
        Ok(())
    }

    /// Initialises with Shamir shares: returns the base64 shares, each to a different operator. The service
    /// stays sealed until `threshold` of them are given to [`Kms::unseal`].
    pub fn init_shamir(&self, shares: u8, threshold: u8) -> KmsResult<Vec<Zeroizing<String>>> {
        if shares == 0 || threshold == 0 || threshold > shares {
            return Err(KmsError::validation("need 1 <= threshold <= shares <= 255"));
        }
        let unseal_key = self.new_unseal_key()?;
        let split = shamir::split(&unseal_key, shares, threshold)?;
        self.initialize(RootOfTrust::Shamir, shares, threshold, &unseal_key, None)?;
        Ok(split.iter().map(shamir::encode).collect())
    }

    /// Initialises with a single unseal key the caller keeps (dev mode file, or a PKCS#11 token's wrap key).
    pub fn init_with_key(&self, root_of_trust: RootOfTrust) -> KmsResult<SecretBytes> {
        let unseal_key = self.new_unseal_key()?;
        self.initialize(root_of_trust, 1, 1, &unseal_key, None)?;
        Ok(unseal_key)
    }

    /// Initialises with an unseal key sealed by an external root of trust (a PKCS#11 token's key), stored
    /// beside the init record in the same transaction, then unseals. Nobody ever sees the unseal key: the
    /// service opens it again at every start with [`Kms::unseal_with_sealed_key`].
    pub fn init_sealed(
        &self,
        root_of_trust: RootOfTrust,
        seal: impl FnOnce(&SecretBytes) -> KmsResult<Vec<u8>>,
    ) -> KmsResult<()> {
        let unseal_key = self.new_unseal_key()?;
        let sealed = seal(&unseal_key)?;
        self.initialize(root_of_trust, 1, 1, &unseal_key, Some(sealed))?;
        self.unseal_with_key(&unseal_key)
    }

    /// Unseals with the unseal key stored sealed by the root of trust; `open` is the root of trust's side.
    pub fn unseal_with_sealed_key(
        &self,
        open: impl FnOnce(&[u8]) -> KmsResult<SecretBytes>,
    ) -> KmsResult<()> {
        let sealed = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(SYS, "sealed_unseal_key")
        })?
        .ok_or_else(|| {
            KmsError::invalid_state("this service was not initialised with a PKCS#11 root of trust")
        })?;
        let key = open(&sealed)?;
        self.unseal_with_key(&key)
    }

    /// Adds one Shamir share; unseals once enough distinct shares are in. A wrong set of shares resets the
    /// progress and is refused.
    pub fn unseal(&self, share_b64: &str) -> KmsResult<SealStatus> {
        let (x, share) = shamir::decode(share_b64)?;
        let combined = {
            let mut seal = self.seal.write();
            match &mut *seal {
                SealState::Uninitialized => {
                    return Err(KmsError::invalid_state("the service is not initialized"))
                }
                SealState::Unsealed { .. } => None,
                SealState::Sealed { init, progress } => {
                    if init.root_of_trust != RootOfTrust::Shamir {
                        return Err(KmsError::invalid_state(
                            "this service does not unseal with shares",
                        ));
                    }
                    if !progress.iter().any(|(px, _)| *px == x) {
                        progress.push((x, share));
                    }
                    if progress.len() >= init.threshold as usize {
                        let shares: Vec<SecretBytes> = progress.drain(..).map(|(_, s)| s).collect();
                        Some(shamir::combine(&shares, init.threshold)?)
                    } else {
                        None
                    }
                }
            }
        };
        if let Some(key) = combined {
            self.unseal_with_key(&key).map_err(|e| {
                if e.code() == ErrorCode::InvalidCiphertext {
                    KmsError::validation(
                        "the shares given do not reconstruct the unseal key; progress was reset",
                    )
                } else {
                    e
                }
            })?;
        }
        Ok(self.status())
    }

    /// Checks that a full set of Shamir shares reconstructs this deployment's unseal key, without changing
    /// the seal state: the proof of possession behind minting a new root token.
    pub fn check_shares(&self, shares_b64: &[Zeroizing<String>]) -> KmsResult<()> {
        let init = match &*self.seal.read() {
            SealState::Uninitialized => {
                return Err(KmsError::invalid_state("the service is not initialized"))
            }
            SealState::Sealed { init, .. } | SealState::Unsealed { init, .. } => *init,
        };
        if init.root_of_trust != RootOfTrust::Shamir {
            return Err(KmsError::invalid_state(
                "this service does not use unseal shares",
            ));
        }
        let key = shamir::combine_encoded(shares_b64, init.threshold)?;
        let kek = self
            .hsm
            .import_plaintext(KeySpec::Aes256, &key, &KeyAttributes::internal())?;
        let root_json = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(SYS, "root")
        })?
        .ok_or_else(|| corrupt("root record missing"))?;
        let rec: RootRecord =
            serde_json::from_slice(&root_json).map_err(|_| corrupt("root record"))?;
        self.hsm
            .unwrap_from_storage(
                &kek,
                KeySpec::Aes256,
                &unb64(&rec.wrapped)?,
                &root_aad(rec.generation),
                &KeyAttributes::internal(),
            )
            .map(drop)
            .map_err(|_| {
                KmsError::validation("the shares do not reconstruct this deployment's unseal key")
            })
    }

    /// Unseals with the whole unseal key.
    pub fn unseal_with_key(&self, unseal_key: &SecretBytes) -> KmsResult<()> {
        let mut seal = self.seal.write();
        let init = match &*seal {
            SealState::Uninitialized => {
                return Err(KmsError::invalid_state("the service is not initialized"))
            }
            SealState::Unsealed { .. } => return Ok(()),
            SealState::Sealed { init, .. } => *init,
        };
        let kek =
            self.hsm
                .import_plaintext(KeySpec::Aes256, unseal_key, &KeyAttributes::internal())?;
        let root_json = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(SYS, "root")
        })?
        .ok_or_else(|| corrupt("root record missing"))?;
        let rec: RootRecord =
            serde_json::from_slice(&root_json).map_err(|_| corrupt("root record"))?;
        let root = self.hsm.unwrap_from_storage(
            &kek,
            KeySpec::Aes256,
            &unb64(&rec.wrapped)?,
            &root_aad(rec.generation),
            &KeyAttributes::internal(),
        )?;
        let audit_material = self
            .hsm
            .derive_hkdf(&kek, b"keyward", b"audit-chain-v1", 32)?;
        let audit = self.hsm.import_plaintext(
            KeySpec::Hmac256,
            &audit_material,
            &KeyAttributes::internal(),
        )?;
        let seed = self
            .hsm
            .derive_hkdf(&kek, b"keyward", b"audit-checkpoint-v1", 32)?;
        let mut pkcs8 = SecretBytes::from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.expose_mut().extend_from_slice(seed.expose());
        let checkpoint =
            self.hsm
                .import_plaintext(KeySpec::Ed25519, &pkcs8, &KeyAttributes::internal())?;
        let secrets_key = self
            .hsm
            .derive_hkdf(&kek, b"keyward", b"service-secrets-v1", 32)?;
        let secrets =
            self.hsm
                .import_plaintext(KeySpec::Aes256, &secrets_key, &KeyAttributes::internal())?;
        let keyring = Arc::new(Keyring {
            root,
            generation: rec.generation,
            unseal_kek: kek,
            audit,
            checkpoint,
            secrets,
        });
        *seal = SealState::Unsealed { init, keyring };
        self.sealed.store(false, Ordering::Release);
        Ok(())
    }

    /// Seals: drops the root key and every cached key from memory. In-flight operations finish with the
    /// handles they hold; new ones are refused with `Sealed`.
    pub fn seal(&self) -> KmsResult<()> {
        let mut seal = self.seal.write();
        let init = match &*seal {
            SealState::Uninitialized => {
                return Err(KmsError::invalid_state("the service is not initialized"))
            }
            SealState::Sealed { .. } => return Ok(()),
            SealState::Unsealed { init, .. } => *init,
        };
        self.sealed.store(true, Ordering::Release);
        *seal = SealState::Sealed {
            init,
            progress: Vec::new(),
        };
        self.cache.clear();
        self.aliases.clear();
        self.aliases_changed();
        Ok(())
    }

    /// Generates a new root key and re-wraps every stored version (and pending import key) under it, in one
    /// transaction. Key ids, versions and existing ciphertexts are untouched: only the wrapping changes.
    pub fn rotate_root(&self) -> KmsResult<u32> {
        let mut seal = self.seal.write();
        let (init, old) = match &*seal {
            SealState::Unsealed { init, keyring } => (*init, keyring.clone()),
            _ => return Err(KmsError::sealed()),
        };
        let generation = old.generation + 1;
        let new_root = self.hsm.generate(
            KeySpec::Aes256,
            &Self::root_attrs(init.root_of_trust, generation),
        )?;
        let wrapped_root =
            self.hsm
                .wrap_for_storage(&old.unseal_kek, &new_root, &root_aad(generation))?;
        let root_json = serde_json::to_vec(&RootRecord {
            generation,
            wrapped: b64(&wrapped_root),
        })
        .map_err(|_| corrupt("root record"))?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut specs: BTreeMap<String, KeySpec> = BTreeMap::new();
            for mut v in tx.versions_with_material()? {
                let spec = match specs.get(&v.key_id) {
                    Some(s) => *s,
                    None => {
                        let rec = tx
                            .get_key(&v.key_id)?
                            .ok_or_else(|| corrupt("version without key"))?;
                        let s = KeySpec::parse(&rec.spec).ok_or_else(|| corrupt("unknown spec"))?;
                        specs.insert(v.key_id.clone(), s);
                        s
                    }
                };
                let aad = version_aad(&v.key_id, v.version);
                let blob = v
                    .material
                    .as_deref()
                    .ok_or_else(|| corrupt("material vanished"))?;
                if v.root_generation != old.generation {
                    return Err(corrupt(
                        "a version is wrapped under an unknown root generation",
                    ));
                }
                let handle = self.hsm.unwrap_from_storage(
                    &old.root,
                    spec,
                    blob,
                    &aad,
                    &KeyAttributes::internal(),
                )?;
                v.material = Some(self.hsm.wrap_for_storage(&new_root, &handle, &aad)?);
                v.root_generation = generation;
                tx.put_version(&v)?;
            }
            for (token, bytes) in tx.list_meta(IMPORT_NS)? {
                let mut rec: ImportTokenRecord =
                    serde_json::from_slice(&bytes).map_err(|_| corrupt("import token"))?;
                let aad = crate::records::token_aad(&token);
                let handle = self.hsm.unwrap_from_storage(
                    &old.root,
                    KeySpec::Rsa4096,
                    &unb64(&rec.wrapped_private_key)?,
                    &aad,
                    &KeyAttributes::internal(),
                )?;
                rec.wrapped_private_key =
                    b64(&self.hsm.wrap_for_storage(&new_root, &handle, &aad)?);
                let json = serde_json::to_vec(&rec).map_err(|_| corrupt("import token"))?;
                tx.put_meta(IMPORT_NS, &token, &json)?;
            }
            Ok(tx.put_meta(SYS, "root", &root_json)?)
        })?;
        let keyring = Arc::new(Keyring {
            root: new_root,
            generation,
            unseal_kek: old.unseal_kek.clone(),
            audit: old.audit.clone(),
            checkpoint: old.checkpoint.clone(),
            secrets: old.secrets.clone(),
        });
        *seal = SealState::Unsealed { init, keyring };
        // Cached snapshots hold the wrapped blobs of the old generation: reload from the store.
        self.cache.clear();
        Ok(generation)
    }

    /// Swaps in a root key another node rotated to; everything else in the keyring stays.
    pub(crate) fn replace_root(&self, root: KeyHandle, generation: u32) {
        let mut seal = self.seal.write();
        if let SealState::Unsealed { init, keyring } = &*seal {
            if keyring.generation >= generation {
                return;
            }
            let next = Arc::new(Keyring {
                root,
                generation,
                unseal_kek: keyring.unseal_kek.clone(),
                audit: keyring.audit.clone(),
                checkpoint: keyring.checkpoint.clone(),
                secrets: keyring.secrets.clone(),
            });
            *seal = SealState::Unsealed {
                init: *init,
                keyring: next,
            };
        }
    }

    /// Another node initialised the store (or a backup was restored into it): this node becomes sealed,
    /// waiting for the shares, instead of offering to initialise again.
    pub(crate) fn reload_init(&self) -> KmsResult<()> {
        let init = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(SYS, "init")
        })?;
        let mut seal = self.seal.write();
        if let (SealState::Uninitialized, Some(bytes)) = (&*seal, init) {
            *seal = SealState::Sealed {
                init: serde_json::from_slice(&bytes).map_err(|_| corrupt("init record"))?,
                progress: Vec::new(),
            };
        }
        Ok(())
    }

    /// Loads a key snapshot from the store into the cache (or returns the cached one).
    pub(crate) fn load(&self, id: &[u8; 16]) -> KmsResult<Arc<CachedKey>> {
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        if let Some(k) = self.cache.get(id) {
            if self.freshness.trusted() {
                return Ok(k);
            }
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        self.reload(id)
    }

    /// Reads the key from the store and replaces the cached snapshot if the store's revision is newer.
    pub(crate) fn reload(&self, id: &[u8; 16]) -> KmsResult<Arc<CachedKey>> {
        let key_id = uuid::Uuid::from_bytes(*id).to_string();
        let (rec, versions) = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let rec = tx.get_key(&key_id)?;
            let versions = if rec.is_some() {
                tx.versions(&key_id)?
            } else {
                Vec::new()
            };
            Ok::<_, KmsError>((rec, versions))
        })?;
        let rec = rec.ok_or_else(|| KmsError::not_found(format!("key {key_id} does not exist")))?;
        let snapshot = Arc::new(snapshot(rec, versions)?);
        let revision = snapshot.record.revision;
        self.cache.insert_unless(*id, snapshot.clone(), |existing| {
            existing.record.revision > revision
        });
        Ok(self.cache.get(id).unwrap_or(snapshot))
    }

    /// The usable handle of a cached version, unwrapping it on first use.
    pub(crate) fn handle<'a>(
        &self,
        key: &CachedKey,
        v: &'a CachedVersion,
    ) -> KmsResult<&'a KeyHandle> {
        if let Some(h) = v.handle.get() {
            return Ok(h);
        }
        let blob = v.wrapped.as_deref().ok_or_else(|| {
            KmsError::new(
                ErrorCode::KeyDestroyed,
                format!("version {} of key {} is destroyed", v.version, key.key_id),
            )
        })?;
        let mut keyring = self.keyring()?;
        if v.root_generation > keyring.generation {
            // Another node rotated the root key and the change feed has not told this node yet.
            self.reload_root()?;
            keyring = self.keyring()?;
        }
        let restored;
        let blob = if v.root_generation == keyring.generation {
            blob
        } else {
            // A snapshot loaded while the root key was being rotated holds the blob of the old generation.
            // The material is the same, only re-wrapped: unwrap the stored blob, and let the next request
            // load a fresh snapshot.
            if let Ok(id) = parse_id(&key.key_id) {
                self.cache.remove(&id);
            }
            let versions = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
                tx.versions(&key.key_id)
            })?;
            restored = versions
                .into_iter()
                .find(|s| s.version == v.version && s.root_generation == keyring.generation)
                .and_then(|s| s.material)
                .ok_or_else(|| {
                    KmsError::new(
                        ErrorCode::Unavailable,
                        "the key's versions are being re-wrapped under a new root key; retry",
                    )
                })?;
            &restored[..]
        };
        let attrs = KeyAttributes {
            extractable: key.record.exportable,
            ..KeyAttributes::default()
        };
        let h = self
            .hsm
            .unwrap_from_storage(
                &keyring.root,
                key.spec,
                blob,
                &version_aad(&key.key_id, v.version),
                &attrs,
            )
            .map_err(|e| match e {
                keyward_hsm::HsmError::DecryptFailed => {
                    corrupt("a key version does not unwrap under the root key (tampered or moved)")
                }
                other => other.into(),
            })?;
        let _ = v.handle.set(h);
        v.handle.get().ok_or_else(|| corrupt("handle"))
    }

    /// Generates fresh material for a spec and wraps it for version `version` of `key_id`.
    pub(crate) fn wrap_new(
        &self,
        key_id: &str,
        version: u32,
        handle: &KeyHandle,
    ) -> KmsResult<(Vec<u8>, u32)> {
        let keyring = self.keyring()?;
        let blob =
            self.hsm
                .wrap_for_storage(&keyring.root, handle, &version_aad(key_id, version))?;
        Ok((blob, keyring.generation))
    }

    /// Forgets cached state of a key so the next use reloads it (called after every committed change).
    pub(crate) fn refresh(&self, key_id: &str) {
        if let Ok(id) = parse_id(key_id) {
            if self.reload(&id).is_err() {
                self.cache.remove(&id);
            }
        }
    }
}

fn snapshot(
    record: KeyRecord,
    versions: Vec<keyward_store::VersionRecord>,
) -> KmsResult<CachedKey> {
    let spec = KeySpec::parse(&record.spec).ok_or_else(|| corrupt("unknown key spec"))?;
    let usage = KeyUsage::parse(&record.usage).ok_or_else(|| corrupt("unknown key usage"))?;
    let state = KeyState::parse(&record.state).ok_or_else(|| corrupt("unknown key state"))?;
    let origin = Origin::parse(&record.origin).ok_or_else(|| corrupt("unknown origin"))?;
    let id_bytes = parse_id(&record.key_id)?;
    let mut cached = Vec::with_capacity(versions.len());
    for (i, v) in versions.into_iter().enumerate() {
        if v.version as usize != i + 1 {
            return Err(corrupt("key versions are not contiguous"));
        }
        cached.push(CachedVersion {
            version: v.version,
            state: VersionState::parse(&v.state).ok_or_else(|| corrupt("unknown version state"))?,
            wrapped: v.material,
            root_generation: v.root_generation,
            handle: OnceLock::new(),
        });
    }
    Ok(CachedKey {
        key_id: Arc::from(record.key_id.as_str()),
        id_bytes,
        spec,
        usage,
        state,
        origin,
        versions: cached,
        record,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use super::parse_id;
    use crate::*;

    /// A snapshot read from the store just before a root rotation committed, and cached after it (a load
    /// in flight during the rotation), holds blobs of the old generation: its versions still serve, from
    /// the re-wrapped blobs in the store.
    #[test]
    fn a_snapshot_older_than_the_root_key_still_serves_its_versions() {
        let store: Arc<dyn keyward_store::Store> =
            Arc::new(keyward_store_sqlite::SqliteStore::in_memory().unwrap());
        let kms = Kms::open(
            Arc::new(keyward_hsm_soft::SoftHsm::new()),
            store,
            Arc::new(ManualClock::new(1_790_000_000)),
            KmsConfig::default(),
        )
        .unwrap();
        let shares = kms.init_shamir(3, 2).unwrap();
        kms.unseal(&shares[0]).unwrap();
        kms.unseal(&shares[1]).unwrap();
        let id = kms
            .create_key(CreateKey::new(KeySpec::Aes256))
            .unwrap()
            .key_id;
        let ct = kms.encrypt(&id, b"m", &Context::new(), None).unwrap();
        let stale = kms.reload(&parse_id(&id).unwrap()).unwrap();
        assert_eq!(kms.rotate_root().unwrap(), 2);
        let v = stale.version(1).unwrap();
        assert_eq!(v.root_generation, 1);
        assert!(v.handle.get().is_none());
        kms.handle(&stale, v).unwrap();
        let d = kms
            .decrypt(None, &ct.ciphertext, &Context::new(), None)
            .unwrap();
        assert_eq!(d.plaintext.expose(), b"m");
    }
}
