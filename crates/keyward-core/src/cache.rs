//! The in-memory key cache: the hot path's only shared state.
//!
//! A sharded map from key id to an immutable snapshot of the key. Requests take a shard's read lock just long
//! enough to clone an `Arc`; management operations replace whole snapshots after their transaction commits,
//! and a snapshot only replaces one with a lower store revision, so a slow loader can never resurrect stale
//! state. Version material stays wrapped in the snapshot until first use, then is unwrapped once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use keyward_hsm::{KeyHandle, KeySpec, KeyUsage};
use keyward_store::KeyRecord;
use parking_lot::RwLock;

use crate::model::{KeyState, Origin, VersionState};

const SHARDS: usize = 16;

/// A sharded concurrent map.
pub(crate) struct ShardedMap<K, V> {
    shards: Vec<RwLock<HashMap<K, V>>>,
}

impl<K: Hash + Eq, V: Clone> ShardedMap<K, V> {
    pub fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, k: &K) -> &RwLock<HashMap<K, V>> {
        use std::hash::Hasher;
        // SipHash with fixed keys only picks the shard; each shard's map keeps its own random seed.
        let mut h = std::hash::DefaultHasher::new();
        k.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.shard(k).read().get(k).cloned()
    }

    pub fn insert(&self, k: K, v: V) {
        self.shard(&k).write().insert(k, v);
    }

    /// Inserts unless `keep_existing` says the present value should win.
    pub fn insert_unless(&self, k: K, v: V, keep_existing: impl Fn(&V) -> bool) {
        let mut shard = self.shard(&k).write();
        match shard.get(&k) {
            Some(existing) if keep_existing(existing) => {}
            _ => {
                shard.insert(k, v);
            }
        }
    }

    pub fn remove(&self, k: &K) {
        self.shard(k).write().remove(k);
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.write().clear();
        }
    }
}

/// One version in a snapshot.
pub(crate) struct CachedVersion {
    pub version: u32,
    pub state: VersionState,
    /// The wrapped material, unwrapped on first use into `handle`.
    pub wrapped: Option<Vec<u8>>,
    pub handle: OnceLock<KeyHandle>,
}

/// An immutable snapshot of a key and its versions.
pub(crate) struct CachedKey {
    pub key_id: Arc<str>,
    pub id_bytes: [u8; 16],
    pub record: KeyRecord,
    pub spec: KeySpec,
    pub usage: KeyUsage,
    pub state: KeyState,
    pub origin: Origin,
    /// Indexed by `version - 1`.
    pub versions: Vec<CachedVersion>,
}

impl CachedKey {
    pub fn version(&self, n: u32) -> Option<&CachedVersion> {
        n.checked_sub(1)
            .and_then(|i| self.versions.get(i as usize))
            .filter(|v| v.version == n)
    }
}
