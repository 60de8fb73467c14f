//! The stored policies, and the cache of their compiled forms that every authorization reads.
//!
//! Authorization fails closed here: a policy that an identity names but that cannot be read, does not
//! parse, does not compile or does not exist refuses the request (`Unavailable`), because deciding by the
//! role alone would drop whatever deny that policy holds. Only policies that compiled are cached; a failure
//! is never remembered as "no policy".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keyward_core::cluster::Freshness;
use keyward_core::{shown, ErrorCode, KmsError, KmsResult, ShardedMap};
use keyward_store::{transact, Store, Tx};

use crate::policy::{canonical, compile, Compiled, PolicyDoc};

/// The store namespace of policy documents.
pub const NAMESPACE: &str = "policy";

/// Policy documents over the store, with their compiled forms cached.
pub struct Policies {
    store: Arc<dyn Store>,
    freshness: Arc<Freshness>,
    compiled: ShardedMap<String, Arc<Compiled>>,
    /// Bumped by every forget: a load that read the store before a change must not cache what it read.
    generation: AtomicU64,
}

fn unavailable(m: impl Into<String>) -> KmsError {
    KmsError::new(ErrorCode::Unavailable, m)
}

fn not_found(name: &str) -> KmsError {
    KmsError::new(
        ErrorCode::NotFound,
        format!("policy {} does not exist", shown(name)),
    )
}

/// Validates a document as it will be stored: every resource canonical, every statement compiling.
pub fn prepare(doc: &PolicyDoc) -> KmsResult<PolicyDoc> {
    let doc = canonical(doc).map_err(|e| KmsError::new(ErrorCode::ValidationError, e))?;
    compile(&doc).map_err(|e| KmsError::new(ErrorCode::ValidationError, e))?;
    Ok(doc)
}

impl Policies {
    /// Policies in `store`; cached compiled forms are served while `freshness` says caches hold.
    pub fn new(store: Arc<dyn Store>, freshness: Arc<Freshness>) -> Self {
        Policies {
            store,
            freshness,
            compiled: ShardedMap::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// The compiled policies of `names`, or a refusal if any of them cannot be had (see the module docs).
    pub fn load(&self, names: &[String]) -> KmsResult<Vec<Arc<Compiled>>> {
        let mut out = Vec::with_capacity(names.len());
        let trusted = self.freshness.trusted();
        for name in names {
            if trusted {
                if let Some(p) = self.compiled.get(name) {
                    out.push(p);
                    continue;
                }
            }
            let generation = self.generation.load(Ordering::Acquire);
            let doc = self.read(name).map_err(|e| {
                unavailable(format!(
                    "policy {} could not be loaded, so no decision is safe: {}",
                    shown(name),
                    e.message()
                ))
            })?;
            let compiled = Arc::new(compile(&doc).map_err(|e| {
                unavailable(format!(
                    "policy {} no longer compiles, so no decision is safe: {e}",
                    shown(name)
                ))
            })?);
            self.compiled
                .insert_when(name.clone(), compiled.clone(), || {
                    self.generation.load(Ordering::Acquire) == generation
                });
            out.push(compiled);
        }
        Ok(out)
    }

    fn read(&self, name: &str) -> KmsResult<PolicyDoc> {
        let raw = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(NAMESPACE, name)
        })
        .map_err(KmsError::from)?
        .ok_or_else(|| not_found(name))?;
        serde_json::from_slice(&raw).map_err(|_| unavailable("store corrupt: policy"))
    }

    /// One stored document.
    pub fn get(&self, name: &str) -> KmsResult<PolicyDoc> {
        self.read(name)
    }

    /// Every stored policy's name, sorted.
    pub fn names(&self) -> KmsResult<Vec<String>> {
        Ok(transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.list_meta(NAMESPACE)
        })?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
    }

    /// The first of `names` that names no stored policy: an identity may not be given one, or a misspelt
    /// deny would silently never apply.
    pub fn missing_in(tx: &mut dyn Tx, names: &[String]) -> KmsResult<Option<String>> {
        for n in names {
            if tx.get_meta(NAMESPACE, n)?.is_none() {
                return Ok(Some(n.clone()));
            }
        }
        Ok(None)
    }

    /// Stores a document under `name` (validated with [`prepare`]; a name that differs from a stored one
    /// only by case is refused), and returns it as stored.
    pub fn put(&self, name: &str, doc: &PolicyDoc) -> KmsResult<PolicyDoc> {
        crate::names::check_policy(name)?;
        let doc = prepare(doc)?;
        let json = serde_json::to_vec(&doc).map_err(|_| unavailable("policy encoding"))?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let stored = tx.list_meta(NAMESPACE)?;
            if let Some(other) = crate::names::clash(name, stored.iter().map(|(n, _)| n.as_str())) {
                return Err(KmsError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "policy {} exists; names are unique without regard to case",
                        shown(other)
                    ),
                ));
            }
            Ok(tx.put_meta(NAMESPACE, name, &json)?)
        })?;
        self.forget(name);
        Ok(doc)
    }

    /// Deletes a policy (`NotFound` if there is none), running `before` in the same transaction first (to
    /// detach it from identities, or refuse while it is attached).
    pub fn delete(
        &self,
        name: &str,
        before: impl FnOnce(&mut dyn Tx) -> KmsResult<()>,
    ) -> KmsResult<()> {
        let result = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            if tx.get_meta(NAMESPACE, name)?.is_none() {
                return Err(not_found(name));
            }
            before(tx)?;
            tx.delete_meta(NAMESPACE, name)?;
            Ok(())
        });
        self.forget(name);
        result
    }

    /// Whether a policy of this name is stored.
    pub fn exists(&self, name: &str) -> KmsResult<bool> {
        Ok(transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(NAMESPACE, name)
        })?
        .is_some())
    }

    /// Forgets one compiled policy (changed here or on another node).
    pub fn forget(&self, name: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.compiled.remove(&name.to_string());
    }

    /// Forgets every compiled policy.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.compiled.clear();
    }
}
