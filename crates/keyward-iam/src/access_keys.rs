//! Access keys: the credential of protocols that sign requests instead of presenting a token (the AWS
//! KMS protocol's Signature Version 4). An access key belongs to an identity and acts with its grants.
//!
//! A signature can only be checked with the secret itself, so the secret is kept, unlike a token's: it is
//! sealed with the service-secrets key (derived from the unseal key; see `Kms::protect`), bound to the
//! key's id, and readable only while the service is unsealed. It is shown once, at creation. The secrets
//! and the principals they stand for are cached in memory, so that a signed request costs no store read;
//! a change to the identity (grants, deletion) or to the key drops the entry at once on this node, and on
//! the others through the change feed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use keyward_core::cluster::Freshness;
use keyward_core::{shown, ErrorCode, Kms, KmsError, KmsResult, SecretBytes, ShardedMap};
use keyward_store::{transact, Store, Tx};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::auth::Principal;
use crate::identities::{IdentityRecord, IDENTITIES};

/// The store namespace of access keys, by id.
pub const ACCESS_KEYS: &str = "access_key";

/// Most access keys one identity may hold: enough to rotate one while the other is in use, as AWS allows.
pub const MAX_PER_IDENTITY: usize = 2;

/// How many principals the cache holds.
const CACHED: usize = 100_000;

/// A stored access key. The secret is sealed; the record is never shown as is.
#[derive(Clone, Serialize, Deserialize)]
struct AccessKeyRecord {
    access_key_id: String,
    identity: String,
    created_at: i64,
    /// The secret, sealed with the service-secrets key and bound to the id (base64).
    sealed_secret: String,
}

/// What may be shown of an access key: never its secret.
#[derive(Clone, Debug, Serialize)]
pub struct AccessKeyInfo {
    /// The id, which requests name in their credential scope.
    pub access_key_id: String,
    /// The identity it acts as.
    pub identity: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last request it signed that this node saw, if any since the node started.
    pub last_used_at: Option<i64>,
}

/// A new access key: the only time its secret is shown.
pub struct NewAccessKey {
    /// Its id.
    pub access_key_id: String,
    /// The secret, for the client's configuration.
    pub secret_access_key: Zeroizing<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A verified key's owner and secret, as cached.
pub struct Resolved {
    /// Who the key acts as, with the identity's current grants.
    pub principal: Arc<Principal>,
    /// The secret, for checking signatures.
    pub secret: SecretBytes,
    last_used: AtomicU64,
    /// One key derived from the secret for a scope (a signing key for a day and region), kept so that the
    /// derivation runs once per scope rather than once per request.
    derived: parking_lot::Mutex<Option<(String, Zeroizing<[u8; 32]>)>>,
}

impl Resolved {
    /// The key derived from the secret for `scope`, derived by `derive` unless it was for the same scope
    /// last time.
    pub fn derived(
        &self,
        scope: &str,
        derive: impl FnOnce(&[u8]) -> Zeroizing<[u8; 32]>,
    ) -> Zeroizing<[u8; 32]> {
        let mut slot = self.derived.lock();
        match &*slot {
            Some((s, key)) if s == scope => key.clone(),
            _ => {
                let key = derive(self.secret.expose());
                *slot = Some((scope.to_string(), key.clone()));
                key
            }
        }
    }

    /// Notes a use (unix seconds): shown by `list`, kept in memory only, so that a signed request costs
    /// no store write.
    pub fn used(&self, now: i64) {
        self.last_used.store(now.max(0) as u64, Ordering::Relaxed);
    }
}

/// The access-key repository.
pub struct AccessKeys {
    store: Arc<dyn Store>,
    freshness: Arc<Freshness>,
    cache: ShardedMap<String, Arc<Resolved>>,
    epoch: AtomicU64,
}

fn corrupt() -> KmsError {
    KmsError::new(ErrorCode::Unavailable, "store corrupt: access key")
}

fn unknown() -> KmsError {
    KmsError::new(
        ErrorCode::Unauthenticated,
        "the access key is not known to this service",
    )
}

fn aad(id: &str) -> Vec<u8> {
    format!("keyward access key {id}").into_bytes()
}

/// Random characters from `alphabet`.
fn random_text(kms: &Kms, alphabet: &[u8], len: usize) -> KmsResult<Zeroizing<String>> {
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % alphabet.len();
    let mut out = Zeroizing::new(String::with_capacity(len));
    while out.len() < len {
        let bytes = Zeroizing::new(kms.random(64)?);
        for &b in bytes.iter().filter(|&&b| (b as usize) < limit) {
            if out.len() == len {
                break;
            }
            out.push(alphabet[b as usize % alphabet.len()] as char);
        }
    }
    Ok(out)
}

impl AccessKeys {
    /// The repository over a store.
    pub fn new(store: Arc<dyn Store>, freshness: Arc<Freshness>) -> Self {
        AccessKeys {
            store,
            freshness,
            cache: ShardedMap::bounded(CACHED),
            epoch: AtomicU64::new(0),
        }
    }

    /// Creates an access key for an identity that exists and holds fewer than [`MAX_PER_IDENTITY`].
    pub fn create(&self, kms: &Kms, identity: &str, now: i64) -> KmsResult<NewAccessKey> {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let access_key_id = format!("AKKW{}", &*random_text(kms, UPPER, 16)?);
        let secret = random_text(kms, SECRET, 40)?;
        let sealed = kms.protect(&aad(&access_key_id), secret.as_bytes())?;
        let rec = AccessKeyRecord {
            access_key_id: access_key_id.clone(),
            identity: identity.to_string(),
            created_at: now,
            sealed_secret: base64::engine::general_purpose::STANDARD.encode(sealed),
        };
        let json = serde_json::to_vec(&rec).map_err(|_| corrupt())?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            if tx.get_meta(IDENTITIES, identity)?.is_none() {
                return Err(crate::identities::not_found(identity));
            }
            let held = owned_in(tx, identity)?.len();
            if held >= MAX_PER_IDENTITY {
                return Err(KmsError::new(
                    ErrorCode::InvalidState,
                    format!(
                        "identity {} already holds {MAX_PER_IDENTITY} access keys; delete one first",
                        shown(identity)
                    ),
                ));
            }
            Ok(tx.put_meta(ACCESS_KEYS, &access_key_id, &json)?)
        })?;
        Ok(NewAccessKey {
            access_key_id,
            secret_access_key: secret,
            created_at: now,
        })
    }

    /// The access keys of an identity, oldest first.
    pub fn list(&self, identity: &str) -> KmsResult<Vec<AccessKeyInfo>> {
        let mut keys = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            if tx.get_meta(IDENTITIES, identity)?.is_none() {
                return Err(crate::identities::not_found(identity));
            }
            owned_in(tx, identity)
        })?;
        keys.sort_by(|a, b| {
            (a.created_at, &a.access_key_id).cmp(&(b.created_at, &b.access_key_id))
        });
        Ok(keys
            .into_iter()
            .map(|r| AccessKeyInfo {
                last_used_at: self
                    .cache
                    .get(&r.access_key_id)
                    .map(|c| c.last_used.load(Ordering::Relaxed) as i64)
                    .filter(|t| *t > 0),
                access_key_id: r.access_key_id,
                identity: r.identity,
                created_at: r.created_at,
            })
            .collect())
    }

    /// Deletes an identity's access key; `NotFound` if the identity holds no such key.
    pub fn delete(&self, identity: &str, access_key_id: &str) -> KmsResult<()> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let held = read_in(tx, access_key_id)?.filter(|r| r.identity == identity);
            if held.is_none() {
                return Err(KmsError::new(
                    ErrorCode::NotFound,
                    format!(
                        "identity {} holds no access key {}",
                        shown(identity),
                        shown(access_key_id)
                    ),
                ));
            }
            Ok(tx.delete_meta(ACCESS_KEYS, access_key_id)?)
        })?;
        self.forget(access_key_id);
        Ok(())
    }

    /// Deletes every access key of an identity, inside the transaction that deletes the identity.
    pub fn delete_all_in(tx: &mut dyn Tx, identity: &str) -> KmsResult<()> {
        for rec in owned_in(tx, identity)? {
            tx.delete_meta(ACCESS_KEYS, &rec.access_key_id)?;
        }
        Ok(())
    }

    /// The owner and secret of an access key, from the cache or the store. An unknown key, or one whose
    /// identity is gone, is `Unauthenticated`.
    pub fn resolve(&self, kms: &Kms, access_key_id: &str) -> KmsResult<Arc<Resolved>> {
        if access_key_id.is_empty() || access_key_id.len() > 128 {
            return Err(unknown());
        }
        // Secrets stay in memory only while key material does.
        if kms.is_sealed() {
            self.forget_all();
            return Err(KmsError::sealed());
        }
        if self.freshness.trusted() {
            if let Some(hit) = self.cache.get(&access_key_id.to_string()) {
                return Ok(hit);
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let (rec, identity) = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let Some(rec) = read_in(tx, access_key_id)? else {
                return Ok(None);
            };
            let identity = tx.get_meta(IDENTITIES, &rec.identity)?;
            Ok::<_, KmsError>(identity.map(|i| (rec, i)))
        })?
        .ok_or_else(unknown)?;
        let identity: IdentityRecord = serde_json::from_slice(&identity).map_err(|_| corrupt())?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&rec.sealed_secret)
            .map_err(|_| corrupt())?;
        let secret = kms.unprotect(&aad(&rec.access_key_id), &sealed)?;
        let resolved = Arc::new(Resolved {
            principal: Arc::new(Principal {
                name: identity.name.clone(),
                roles: identity.roles(),
                token_id: rec.access_key_id.clone(),
                expires_at: None,
                mfa: false,
                policies: identity.policies.clone(),
            }),
            secret,
            last_used: AtomicU64::new(0),
            derived: parking_lot::Mutex::new(None),
        });
        self.cache
            .insert_when(rec.access_key_id, resolved.clone(), || {
                self.epoch.load(Ordering::SeqCst) == epoch
            });
        Ok(resolved)
    }

    /// Drops the cached entry of a key that changed or went away.
    pub fn forget(&self, access_key_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(&access_key_id.to_string());
    }

    /// Drops the cached entries of an identity whose grants changed or that was deleted.
    pub fn forget_identity(&self, identity: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.retain(|_, r| r.principal.name != identity);
    }

    /// Drops every cached entry (the change feed lost track, or the service was sealed).
    pub fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
    }
}

fn read_in(tx: &mut dyn Tx, access_key_id: &str) -> KmsResult<Option<AccessKeyRecord>> {
    tx.get_meta(ACCESS_KEYS, access_key_id)?
        .map(|raw| serde_json::from_slice(&raw).map_err(|_| corrupt()))
        .transpose()
}

fn owned_in(tx: &mut dyn Tx, identity: &str) -> KmsResult<Vec<AccessKeyRecord>> {
    Ok(tx
        .list_meta(ACCESS_KEYS)?
        .into_iter()
        .filter_map(|(_, raw)| serde_json::from_slice::<AccessKeyRecord>(&raw).ok())
        .filter(|r| r.identity == identity)
        .collect())
}
