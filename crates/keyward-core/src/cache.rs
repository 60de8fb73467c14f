//! The in-memory key cache: the hot path's only shared state.
//!
//! A sharded map from key id to an immutable snapshot of the key. Requests take a shard's read lock just long
//! enough to clone an `Arc`; management operations replace whole snapshots after their transaction commits,
//! and a snapshot only replaces one with a lower store revision, so a slow loader can never resurrect stale
//! state. Version material stays wrapped in the snapshot until first use, then is unwrapped once.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use keyward_hsm::{KeyHandle, KeySpec, KeyUsage};
use keyward_store::KeyRecord;
use parking_lot::RwLock;

use crate::model::{KeyState, Origin, VersionState};

const SHARDS: usize = 16;

/// Hashes key ids: they are random UUIDs the service generated itself, so their first eight bytes already
/// are a uniform hash and no attacker chooses them. Saves two SipHash rounds per request.
#[derive(Clone, Copy, Default)]
pub(crate) struct KeyIdHash;

/// The hasher of [`KeyIdHash`].
#[derive(Default)]
pub(crate) struct KeyIdHasher(u64);

impl Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {
        // Length prefixes of fixed-size arrays carry no information.
    }
}

impl BuildHasher for KeyIdHash {
    type Hasher = KeyIdHasher;
    fn build_hasher(&self) -> KeyIdHasher {
        KeyIdHasher(0)
    }
}

struct Shard<K, V, S> {
    map: RwLock<HashMap<K, V, S>>,
    hits: AtomicU64,
}

/// A sharded concurrent map. Each shard keeps its own hit counter next to its lock, so counting costs no
/// extra shared cache line.
pub(crate) struct ShardedMap<K, V, S = RandomState> {
    shards: Vec<Shard<K, V, S>>,
    hasher: S,
}

impl<K: Hash + Eq, V: Clone, S: BuildHasher + Clone + Default> ShardedMap<K, V, S> {
    pub fn new() -> Self {
        let hasher = S::default();
        ShardedMap {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: RwLock::new(HashMap::with_hasher(hasher.clone())),
                    hits: AtomicU64::new(0),
                })
                .collect(),
            hasher,
        }
    }

    fn shard(&self, k: &K) -> &Shard<K, V, S> {
        // Middle bits: the map itself uses the low bits for buckets and the top bits for tags.
        let i = ((self.hasher.hash_one(k) >> 32) as usize) % SHARDS;
        &self.shards[i]
    }

    pub fn get(&self, k: &K) -> Option<V> {
        let shard = self.shard(k);
        let v = shard.map.read().get(k).cloned();
        if v.is_some() {
            shard.hits.fetch_add(1, Ordering::Relaxed);
        }
        v
    }

    /// Lookups that found an entry, since start.
    pub fn hits(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.hits.load(Ordering::Relaxed))
            .sum()
    }

    pub fn insert(&self, k: K, v: V) {
        self.shard(&k).map.write().insert(k, v);
    }

    /// Inserts unless `keep_existing` says the present value should win.
    pub fn insert_unless(&self, k: K, v: V, keep_existing: impl Fn(&V) -> bool) {
        let mut shard = self.shard(&k).map.write();
        match shard.get(&k) {
            Some(existing) if keep_existing(existing) => {}
            _ => {
                shard.insert(k, v);
            }
        }
    }

    pub fn remove(&self, k: &K) {
        self.shard(k).map.write().remove(k);
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.map.write().clear();
        }
    }
}

/// One version in a snapshot.
pub(crate) struct CachedVersion {
    pub version: u32,
    pub state: VersionState,
    /// The wrapped material, unwrapped on first use into `handle`.
    pub wrapped: Option<Vec<u8>>,
    /// The root key generation `wrapped` is sealed under.
    pub root_generation: u32,
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
