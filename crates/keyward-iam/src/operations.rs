//! Operations of several steps in flight: a marker from an operation's recorded intent to its recorded end,
//! so that a node stopped in between can record the end at its next start (the server decides what the end
//! says). One marker per request id; nothing in it is secret.

use std::sync::Arc;

use keyward_core::{ErrorCode, KmsError, KmsResult};
use keyward_store::{transact, Store, Tx};
use serde::{Deserialize, Serialize};

/// The store namespace of the markers (not part of what a restore brings back).
pub const NAMESPACE: &str = "inflight";

/// What the end record needs, kept from the intent to the end.
#[derive(Clone, Serialize, Deserialize)]
pub struct Marker {
    /// The node and the run of its process that runs the operation.
    pub claimed_by: String,
    /// Unix seconds.
    pub started_at: i64,
    /// The request whose records the end joins.
    pub request_id: String,
    /// Who asked.
    pub principal: String,
    /// From where.
    pub source_ip: String,
    /// `kms:<Action>`.
    pub action: String,
    /// What the records name beside a key.
    pub resource: Option<String>,
    /// For a rotation: the root generation before it.
    pub generation: Option<u32>,
}

/// The markers in a store.
pub struct Operations {
    store: Arc<dyn Store>,
}

impl Operations {
    /// Markers kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Operations { store }
    }

    /// Leaves the marker of an operation whose intent is recorded, before it runs.
    pub fn begin(&self, marker: &Marker) -> KmsResult<()> {
        let json = serde_json::to_vec(marker)
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "marker encoding"))?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            Ok(tx.put_meta(NAMESPACE, &marker.request_id, &json)?)
        })
    }

    /// Removes a marker (its end is recorded).
    pub fn end(&self, request_id: &str) -> KmsResult<()> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.delete_meta(NAMESPACE, request_id)?;
            Ok(())
        })
    }

    /// Every marker that parses.
    pub fn all(&self) -> KmsResult<Vec<Marker>> {
        Ok(transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.list_meta(NAMESPACE)
        })?
        .into_iter()
        .filter_map(|(_, raw)| serde_json::from_slice(&raw).ok())
        .collect())
    }
}
