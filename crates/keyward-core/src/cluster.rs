//! Keeping a node's caches true when other nodes write the same store.
//!
//! A node caches key snapshots, alias targets, token principals and compiled policies. With one node those
//! caches are refreshed by the node's own writes. With several nodes on one database, every commit is also
//! written to the store's change log, and each node follows that log ([`keyward_store::ChangeFeed`]). The
//! caches are trusted only while the feed keeps confirming that nothing was missed: each successful poll
//! extends a short trust window measured from the moment the poll began; if polls stop succeeding (the
//! database or the network failed), the window closes and every lookup goes to the store, so a node never
//! answers from a snapshot older than the window, even while cut off.

use std::sync::Arc;

use keyward_hsm::{KeyAttributes, KeySpec};
use keyward_store::{transact, Change, Tx};

use crate::engine::Kms;
use crate::error::KmsResult;
use crate::records::{corrupt, parse_id, SYS};

pub use crate::freshness::{Freshness, TRUST_WINDOW};

impl Kms {
    /// The trust state of this node's caches, shared with the server's own caches.
    pub fn freshness(&self) -> Arc<Freshness> {
        self.freshness.clone()
    }

    /// Whether cached records may be served right now (always, unless other nodes share the store and the
    /// change feed has not confirmed recently).
    #[inline]
    pub fn caches_trusted(&self) -> bool {
        self.freshness.trusted()
    }

    /// Applies changes other nodes committed: reloads changed keys (so a stale load in flight cannot win, the
    /// fresh snapshot replaces it by revision), forgets changed aliases, and follows root rotation and
    /// initialisation done elsewhere. Meta records of other namespaces belong to the server's caches.
    pub fn apply_changes(&self, changes: &[Change]) -> KmsResult<()> {
        let everything = changes.contains(&Change::Everything);
        let sys = |name: &str| {
            changes
                .iter()
                .any(|c| matches!(c, Change::Meta { ns, name: n } if ns == SYS && n == name))
        };
        if everything || sys("init") {
            self.reload_init()?;
        }
        if everything || sys("root") {
            self.reload_root()?;
        }
        if everything {
            self.cache.clear();
            self.aliases.clear();
            self.aliases_changed();
            return Ok(());
        }
        for c in changes {
            match c {
                Change::Key(key_id) => {
                    let Ok(id) = parse_id(key_id) else { continue };
                    if self.is_sealed() || self.reload(&id).is_err() {
                        self.cache.remove(&id);
                    }
                }
                Change::Alias(name) => {
                    self.aliases.remove(name);
                    self.aliases_changed();
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Another node rotated the root key: unwrap the new generation with the unseal key this node holds.
    pub(crate) fn reload_root(&self) -> KmsResult<()> {
        let Ok(keyring) = self.keyring() else {
            return Ok(());
        };
        let Some((generation, wrapped)) = self.stored_root()? else {
            return Err(corrupt("root record missing"));
        };
        if generation == keyring.generation {
            return Ok(());
        }
        let root = self.hsm.unwrap_from_storage(
            &keyring.unseal_kek,
            KeySpec::Aes256,
            &wrapped,
            &crate::records::root_aad(generation),
            &KeyAttributes::internal(),
        )?;
        self.replace_root(root, generation);
        self.cache.clear();
        Ok(())
    }

    pub(crate) fn stored_root(&self) -> KmsResult<Option<(u32, Vec<u8>)>> {
        let json = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(SYS, "root")
        })?;
        json.map(|j| crate::records::parse_root(&j)).transpose()
    }
}

/// The store namespace of node heartbeats.
pub const NODES: &str = "node";

/// What a node says of itself each background round, so that any node can show the cluster: who serves,
/// since when, which leads, and whether each one's view of the audit chain holds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NodeBeat {
    /// The node's id.
    pub node_id: String,
    /// Keyward's version on that node.
    pub version: String,
    /// Unix seconds the node's process started.
    pub started_at: i64,
    /// Unix seconds of this heartbeat.
    pub seen_at: i64,
    /// Whether it ran the shared background work this round.
    pub leader: bool,
    /// Why its view of the audit chain is not whole, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_broken: Option<String>,
    /// Unix seconds of its last check of the audit chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_checked_at: Option<i64>,
}

impl Kms {
    /// Records this node's heartbeat, and (when `forget_before` is given, by the leading node) deletes the
    /// heartbeats of nodes gone since then.
    pub fn heartbeat(&self, beat: &NodeBeat, forget_before: Option<i64>) -> KmsResult<()> {
        let json = serde_json::to_vec(beat).map_err(|_| corrupt("node heartbeat"))?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.put_meta(NODES, &beat.node_id, &json)?;
            if let Some(before) = forget_before {
                for (id, raw) in tx.list_meta(NODES)? {
                    let gone = serde_json::from_slice::<NodeBeat>(&raw)
                        .map_or(true, |b| b.seen_at < before);
                    if gone && id != beat.node_id {
                        tx.delete_meta(NODES, &id)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Every node's last heartbeat, by node id.
    pub fn nodes(&self) -> KmsResult<Vec<NodeBeat>> {
        let rows = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.list_meta(NODES))?;
        Ok(rows
            .into_iter()
            .filter_map(|(_, raw)| serde_json::from_slice(&raw).ok())
            .collect())
    }
}
