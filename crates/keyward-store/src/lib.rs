//! The storage layer of Keyward: records and the transactional [`Store`] trait.
//!
//! The store holds only ciphertext of key material: every version's material arrives here already wrapped by
//! the HSM under the root key. A store can therefore be backed up, replicated or stolen without exposing keys.
//! The KMS core knows the trait, never SQL; SQLite and PostgreSQL live in their own crates and run the same
//! [`conformance`] suite.
//!
//! All writes happen inside a [`Tx`]: dropping a transaction without [`Tx::commit`] rolls it back, so an error
//! (or a panic) half-way through an operation can never leave a half-written key behind.

mod records;

#[cfg(feature = "conformance")]
pub mod conformance;

use core::fmt;
use std::time::Duration;

pub use records::{AuditQuery, AuditRow, KeyRecord, VersionRecord};

/// A storage failure. Messages name tables and operations, never record contents.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot be reached or written (disk full, database down). Callers fail closed.
    Unavailable(String),
    /// A stored record does not decode: the store was altered outside Keyward.
    Corrupt(String),
    /// A uniqueness constraint failed (e.g. an alias already taken).
    Conflict(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
            StoreError::Corrupt(m) => write!(f, "store corrupt: {m}"),
            StoreError::Conflict(m) => write!(f, "store conflict: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A transactional key-value view of the store.
///
/// A backend runs each transaction serialisably with respect to other writers (SQLite `BEGIN IMMEDIATE`,
/// PostgreSQL `SERIALIZABLE` or row locks), so read-modify-write inside one transaction is safe.
pub trait Tx {
    /// A key's metadata.
    fn get_key(&mut self, key_id: &str) -> StoreResult<Option<KeyRecord>>;
    /// Inserts or replaces a key's metadata.
    fn put_key(&mut self, key: &KeyRecord) -> StoreResult<()>;
    /// Keys ordered by id, strictly after `after`, at most `limit`.
    fn list_keys(&mut self, after: Option<&str>, limit: usize) -> StoreResult<Vec<KeyRecord>>;
    /// Ids of keys with a rotation or deletion due at or before `now` (unix seconds).
    fn due_keys(&mut self, now: i64) -> StoreResult<Vec<String>>;

    /// All versions of a key, ordered by version number.
    fn versions(&mut self, key_id: &str) -> StoreResult<Vec<VersionRecord>>;
    /// Inserts or replaces one version.
    fn put_version(&mut self, version: &VersionRecord) -> StoreResult<()>;
    /// Every version of every key that still holds material (for root rotation and backup).
    fn versions_with_material(&mut self) -> StoreResult<Vec<VersionRecord>>;

    /// The key id an alias points to.
    fn get_alias(&mut self, name: &str) -> StoreResult<Option<String>>;
    /// Creates or repoints an alias.
    fn put_alias(&mut self, name: &str, key_id: &str) -> StoreResult<()>;
    /// Removes an alias; true if it existed.
    fn delete_alias(&mut self, name: &str) -> StoreResult<bool>;
    /// Aliases ordered by name, strictly after `after`, at most `limit`, as (name, key id).
    fn list_aliases(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>>;
    /// The aliases of one key, ordered by name.
    fn aliases_of(&mut self, key_id: &str) -> StoreResult<Vec<String>>;

    /// A value in a namespace (system settings, import tokens, later identities and policies).
    fn get_meta(&mut self, ns: &str, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Stores a value in a namespace.
    fn put_meta(&mut self, ns: &str, name: &str, value: &[u8]) -> StoreResult<()>;
    /// Deletes a value; true if it existed.
    fn delete_meta(&mut self, ns: &str, name: &str) -> StoreResult<bool>;
    /// Names and values in a namespace, ordered by name in byte order (whatever the database collation).
    fn list_meta(&mut self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Every namespace that holds a value, ordered: what a backup walks.
    fn meta_namespaces(&mut self) -> StoreResult<Vec<String>>;

    /// Appends audit records (already chained by the caller), in order.
    fn append_audit(&mut self, rows: &[AuditRow]) -> StoreResult<()>;
    /// The last audit record.
    fn audit_tail(&mut self) -> StoreResult<Option<AuditRow>>;
    /// Audit records matching a query, by ascending sequence number.
    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>>;
    /// Deletes the audit records up to and including `through_seq` (retention); returns how many.
    fn prune_audit(&mut self, through_seq: u64) -> StoreResult<u64>;

    /// Makes every write of the transaction durable at once.
    fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// A record another node changed, so that a node caching it must read it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key's metadata or one of its versions.
    Key(String),
    /// An alias, by name.
    Alias(String),
    /// A value in a namespace.
    Meta {
        /// The namespace.
        ns: String,
        /// The name in it.
        name: String,
    },
    /// Changes may have been missed (the feed fell too far behind): drop every cache.
    Everything,
}

/// Changes committed by any node of a shared store, in commit order.
pub trait ChangeFeed: Send {
    /// Waits up to `wait` for a notification, then returns every change committed since the previous call
    /// (possibly none). A change committed before this call started is always in its answer or an earlier
    /// one: callers rely on that to bound how stale their caches can be. An error means the feed could not
    /// confirm anything; the next call reconnects and catches up.
    fn poll(&mut self, wait: Duration) -> StoreResult<Vec<Change>>;
}

/// A store backend.
pub trait Store: Send + Sync + 'static {
    /// A short name for diagnostics ("sqlite", "postgres").
    fn backend_name(&self) -> &'static str;
    /// Starts a transaction. Dropping it uncommitted rolls back.
    fn begin(&self) -> StoreResult<Box<dyn Tx + '_>>;

    /// Whether other nodes may write this store concurrently. A node of a shared store must not trust its
    /// caches beyond what [`Store::change_feed`] confirms, and must re-read the audit chain head inside the
    /// transaction that extends it.
    fn shared(&self) -> bool {
        false
    }

    /// The feed of other nodes' changes; `None` for a store only this process writes.
    fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        Ok(None)
    }

    /// Whether this node is the one that runs background jobs (scheduled rotation and destruction,
    /// housekeeping). Exactly one node of a shared store leads at a time; when it dies another takes over.
    fn leads(&self) -> StoreResult<bool> {
        Ok(true)
    }

    /// Periodic upkeep run by the leading node (pruning the change log).
    fn housekeeping(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// Runs `f` in a transaction and commits when it returns `Ok`.
///
/// Generic over the error so the core can use its own error type; store errors convert into it.
pub fn transact<T, E>(
    store: &dyn Store,
    f: impl FnOnce(&mut dyn Tx) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    let mut tx = store.begin()?;
    let out = f(tx.as_mut())?;
    tx.commit()?;
    Ok(out)
}
