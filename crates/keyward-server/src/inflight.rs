//! Operations of several steps (root rotation, restore, audit pruning) end on the record.
//!
//! Every change is recorded before it is made (`allow`), and one that fails gets an `error` record under the
//! same request id. A multi-step operation also records its end: under its request id stand two records,
//! the intent and the end (`allow` when it completed, `error` when it failed or was interrupted), so that an
//! `allow` alone never passes for a completed rotation. A node killed in the middle cannot write the end, so
//! the operation leaves a marker in the store from its intent to its end; the node's next run finds the
//! markers of its earlier runs and records their end (the leading node does so too for markers another node
//! left more than an hour ago). A rotation whose root generation moved on did complete, and its end reads
//! `allow`; anything else reads `error` (`Unavailable`), since whether it ran cannot be told from outside.

use keyward_core::audit::AuditEvent;
use keyward_core::ErrorCode;
use keyward_store::{transact, Tx};
use serde::{Deserialize, Serialize};

use crate::app::{AppState, Meta};
use crate::authz::Action;
use crate::error::ApiError;

/// The store namespace of the markers (not part of what a restore brings back).
const NAMESPACE: &str = "inflight";
/// A marker of another node this old belongs to a node that stopped for good.
const ABANDONED_AFTER: i64 = crate::handlers::approvals::CLAIM_TTL;

/// Whether an action's end is recorded beside its intent.
pub fn multi_step(action: Action) -> bool {
    matches!(
        action,
        Action::RotateRoot | Action::Restore | Action::PruneAudit
    )
}

/// What the end record needs, kept from the intent to the end.
#[derive(Serialize, Deserialize)]
struct Marker {
    /// The node and the run of its process that runs the operation.
    claimed_by: String,
    started_at: i64,
    request_id: String,
    principal: String,
    source_ip: String,
    action: String,
    resource: Option<String>,
    /// For a rotation: the root generation before it.
    generation: Option<u32>,
}

/// Leaves the marker of an operation whose intent is recorded, before it runs.
pub fn begin(app: &AppState, meta: &Meta, principal: &str, action: Action) -> Result<(), ApiError> {
    let marker = Marker {
        claimed_by: crate::handlers::approvals::claim_name(app),
        started_at: app.clock.now(),
        request_id: meta.request_id.clone(),
        principal: principal.to_string(),
        source_ip: meta.source_ip.clone(),
        action: action.name().to_string(),
        resource: meta.resource.clone(),
        generation: app.kms.root_generation(),
    };
    let json = serde_json::to_vec(&marker)
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "marker encoding"))?;
    Ok(transact(
        app.kms.store_handle().as_ref(),
        |tx: &mut dyn Tx| tx.put_meta(NAMESPACE, &meta.request_id, &json),
    )?)
}

/// Removes the marker once the end is recorded. One left behind only makes the next run record the end a
/// second time.
pub fn end(app: &AppState, request_id: &str) {
    let removed = transact(app.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.delete_meta(NAMESPACE, request_id)
    });
    if let Err(e) = removed {
        tracing::warn!(request_id, error = %e, "the marker of a finished operation stays");
    }
}

/// Records the end of every operation interrupted by a stop: those of this node's earlier runs (every node,
/// once per run), and, on the leading node, those of any node older than an hour. Says how many it ended.
pub fn recover(app: &AppState, leads: bool) -> Result<usize, ApiError> {
    let ours = crate::handlers::approvals::claim_name(app);
    let node = format!("{} ", app.node_id);
    let now = app.clock.now();
    let stored = transact(app.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.list_meta(NAMESPACE)
    })?;
    let mut ended = 0;
    for (name, raw) in stored {
        let Ok(m) = serde_json::from_slice::<Marker>(&raw) else {
            continue;
        };
        let earlier_run = m.claimed_by.starts_with(&node) && m.claimed_by != ours;
        let abandoned = leads && now - m.started_at > ABANDONED_AFTER;
        if !(earlier_run || abandoned) {
            continue;
        }
        let completed = m.action == Action::RotateRoot.name()
            && m.generation
                .zip(app.kms.root_generation())
                .is_some_and(|(before, now)| now > before);
        let event = AuditEvent {
            request_id: m.request_id.clone(),
            principal: m.principal.clone(),
            source_ip: m.source_ip.clone(),
            resource: m.resource.clone(),
            outcome: if completed { "allow" } else { "error" },
            error_code: (!completed).then(|| ErrorCode::Unavailable.as_str().to_string()),
            ..crate::app::system_event(app, &m.principal, m.request_id.clone(), &m.action)
        };
        if app.config.audit {
            app.audit.append_blocking(event)?;
        }
        transact(app.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
            tx.delete_meta(NAMESPACE, &name)
        })?;
        tracing::warn!(
            request_id = %m.request_id,
            action = %m.action,
            completed,
            "an operation interrupted by a stop is recorded as ended"
        );
        ended += 1;
    }
    Ok(ended)
}
