//! The in-memory caches: keys (here), and tokens and compiled policies (in `keyward-iam`), all one sharded,
//! optionally bounded map; the key cache is the hot path's only shared state.
//!
//! A sharded map from key id to an immutable snapshot of the key. Requests take a shard's read lock just long
//! enough to clone an `Arc`; management operations replace whole snapshots after their transaction commits,
//! and a snapshot only replaces one with a lower store revision, so a slow loader can never resurrect stale
//! state. Version material stays wrapped in the snapshot until first use, then is unwrapped once.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    map: RwLock<HashMap<K, Entry<V>, S>>,
    hits: AtomicU64,
    evictions: AtomicU64,
}

/// A cached value and whether it was read since the last eviction sweep of its shard.
struct Entry<V> {
    value: V,
    used: AtomicBool,
}

impl<V> Entry<V> {
    /// A new entry counts as unused until a lookup finds it: one read once (a scan over many keys) is the
    /// first to give way.
    fn new(value: V) -> Self {
        Entry {
            value,
            used: AtomicBool::new(false),
        }
    }
}

/// A sharded concurrent map, optionally bounded. Each shard keeps its own hit counter next to its lock, so
/// counting costs no extra shared cache line.
///
/// A bounded map evicts by second chance: a lookup marks its entry used (a store only when the mark is
/// clear, so a hot entry's cache line is not written on every read), and a shard that outgrows its share
/// drops the entries not used since its last sweep and clears the marks of the rest; should every entry have
/// been used, it drops arbitrary ones down to its share. Sweeps happen only on insertion, never on a lookup.
pub struct ShardedMap<K, V, S = RandomState> {
    shards: Vec<Shard<K, V, S>>,
    hasher: S,
    per_shard: usize,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Clone + Default> Default
    for ShardedMap<K, V, S>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Clone + Default> ShardedMap<K, V, S> {
    /// A map without bound.
    pub fn new() -> Self {
        Self::bounded(usize::MAX)
    }

    /// A map holding about `capacity` entries at most (each shard its share, at least one).
    pub fn bounded(capacity: usize) -> Self {
        let hasher = S::default();
        ShardedMap {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: RwLock::new(HashMap::with_hasher(hasher.clone())),
                    hits: AtomicU64::new(0),
                    evictions: AtomicU64::new(0),
                })
                .collect(),
            hasher,
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, k: &K) -> &Shard<K, V, S> {
        // Middle bits: the map itself uses the low bits for buckets and the top bits for tags.
        let i = ((self.hasher.hash_one(k) >> 32) as usize) % SHARDS;
        &self.shards[i]
    }

    /// The value of `k`, marked used.
    pub fn get(&self, k: &K) -> Option<V> {
        let shard = self.shard(k);
        let v = shard.map.read().get(k).map(|e| {
            if !e.used.load(Ordering::Relaxed) {
                e.used.store(true, Ordering::Relaxed);
            }
            e.value.clone()
        });
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

    /// Entries dropped to keep the map within its bound, since start.
    pub fn evictions(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.evictions.load(Ordering::Relaxed))
            .sum()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.read().len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.map.read().is_empty())
    }

    /// Inserts or replaces.
    pub fn insert(&self, k: K, v: V) {
        self.insert_unless(k, v, |_| false);
    }

    /// Inserts only if `allowed` says so, asked under the shard's write lock: a caller that read `v` from
    /// the store before an invalidation (which takes the same lock to drop entries) can thus never cache it
    /// after the invalidation has passed.
    pub fn insert_when(&self, k: K, v: V, allowed: impl FnOnce() -> bool) {
        let shard = self.shard(&k);
        let mut map = shard.map.write();
        if allowed() {
            map.insert(k.clone(), Entry::new(v));
            if map.len() > self.per_shard {
                let evicted = sweep(&mut map, &k, self.per_shard);
                shard.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
            }
        }
    }

    /// Keeps only the entries `keep` picks.
    pub fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        for s in &self.shards {
            s.map.write().retain(|k, e| keep(k, &e.value));
        }
    }

    /// Whether `k` is held (without marking it used).
    pub fn contains(&self, k: &K) -> bool {
        self.shard(k).map.read().contains_key(k)
    }

    /// Inserts unless `keep_existing` says the present value should win.
    pub fn insert_unless(&self, k: K, v: V, keep_existing: impl Fn(&V) -> bool) {
        let shard = self.shard(&k);
        let mut map = shard.map.write();
        match map.get(&k) {
            Some(existing) if keep_existing(&existing.value) => {}
            _ => {
                map.insert(k.clone(), Entry::new(v));
                if map.len() > self.per_shard {
                    let evicted = sweep(&mut map, &k, self.per_shard);
                    shard.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Drops `k`.
    pub fn remove(&self, k: &K) {
        self.shard(k).map.write().remove(k);
    }

    /// Drops everything.
    pub fn clear(&self) {
        for s in &self.shards {
            s.map.write().clear();
        }
    }
}

/// Brings an over-full shard back within `limit`, keeping `fresh` (the entry just inserted); returns how
/// many entries were dropped. When the unused entries alone do not make room, it drops others down to
/// seven eighths of the limit, so that a working set larger than the cache pays for a sweep (a walk of the
/// shard under its write lock) once per eighth of the shard's insertions rather than on every one.
fn sweep<K: Hash + Eq, V, S: BuildHasher>(
    map: &mut HashMap<K, Entry<V>, S>,
    fresh: &K,
    limit: usize,
) -> usize {
    let before = map.len();
    map.retain(|k, e| k == fresh || e.used.swap(false, Ordering::Relaxed));
    if map.len() > limit {
        let low_water = (limit - limit / 8).max(1);
        let excess = map.len() - low_water;
        let mut dropped = 0;
        map.retain(|k, _| {
            if dropped < excess && k != fresh {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }
    before - map.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_map_keeps_what_is_used_and_stays_within_its_bound() {
        // Sixteen entries per shard; the sixteen hot keys cannot all hash to one shard in practice.
        let map: ShardedMap<u32, u32> = ShardedMap::bounded(256);
        let hot: Vec<u32> = (0..16).collect();
        for k in &hot {
            map.insert(*k, *k);
        }
        for k in 16..10_000u32 {
            map.insert(k, k);
            for h in &hot {
                assert_eq!(
                    map.get(h),
                    Some(*h),
                    "hot key {h} evicted by the insertion of {k}"
                );
            }
            // Each shard holds its share (256 / 16 = 16) at most.
            assert!(map.len() <= 256, "{} entries after {k}", map.len());
        }
        assert_eq!(map.evictions() as usize + map.len(), 10_000);
        // The last inserted is always kept, even when everything else was used.
        assert_eq!(map.get(&9_999), Some(9_999));
    }

    #[test]
    fn a_shard_full_of_used_entries_still_makes_room() {
        let map: ShardedMap<u32, u32> = ShardedMap::bounded(16);
        for k in 0..1_000u32 {
            map.insert(k, k);
            for j in 0..=k {
                let _ = map.get(&j);
            }
            assert!(map.len() <= 16);
            assert_eq!(map.get(&k), Some(k));
        }
        let unbounded: ShardedMap<u32, u32> = ShardedMap::new();
        for k in 0..1_000u32 {
            unbounded.insert(k, k);
        }
        assert_eq!((unbounded.len(), unbounded.evictions()), (1_000, 0));
    }
}
