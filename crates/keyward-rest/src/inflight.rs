//! Operations of several steps (root rotation, restore, audit pruning) end on the record.
//!
//! Every change is recorded before it is made (`allow`), and one that fails gets an `error` record under the
//! same request id. A multi-step operation also records its end: under its request id stand two records,
//! the intent and the end (`allow` when it completed, `error` when it failed or was interrupted), so that an
//! `allow` alone never passes for a completed rotation. A node killed in the middle cannot write the end, so
//! the operation leaves a marker in the store from before its intent until after its end; the node's next
//! run finds the markers of its earlier runs and records the end of each whose intent is on the record and
//! whose end is not (a marker without its intent names an operation that never ran, since a change is
//! recorded before it is made; one whose end is there was only left behind). The leading node does so too
//! for markers another node left more than an hour ago. A rotation whose root generation moved on did complete, and its end reads
//! `allow`; anything else reads `error` (`Unavailable`), since whether it ran cannot be told from outside.

use keyward_core::audit::AuditEvent;
use keyward_core::ErrorCode;

use crate::app::{AppState, Meta};
use crate::authz::Action;
use crate::error::ApiError;

/// A marker of another node this old belongs to a node that stopped for good.
const ABANDONED_AFTER: i64 = crate::handlers::approvals::CLAIM_TTL;

/// Whether an action's end is recorded beside its intent.
pub fn multi_step(action: Action) -> bool {
    matches!(
        action,
        Action::RotateRoot | Action::Restore | Action::PruneAudit
    )
}

/// Leaves the marker of an operation whose intent is recorded, before it runs.
pub fn begin(app: &AppState, meta: &Meta, principal: &str, action: Action) -> Result<(), ApiError> {
    let marker = keyward_iam::operations::Marker {
        claimed_by: crate::handlers::approvals::claim_name(app),
        started_at: app.clock.now(),
        request_id: meta.request_id.clone(),
        principal: principal.to_string(),
        source_ip: meta.source_ip.clone(),
        action: action.name().to_string(),
        resource: meta.resource.clone(),
        generation: app.kms.root_generation(),
    };
    Ok(app.iam.operations.begin(&marker)?)
}

/// Removes the marker once the end is recorded. One left behind is dropped by the next run, which finds the
/// end on the record.
pub fn end(app: &AppState, request_id: &str) {
    let removed = app.iam.operations.end(request_id);
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
    let stored = app.iam.operations.all()?;
    let mut ended = 0;
    for m in stored {
        let earlier_run = m.claimed_by.starts_with(&node) && m.claimed_by != ours;
        let abandoned = leads && now - m.started_at > ABANDONED_AFTER;
        if !(earlier_run || abandoned) {
            continue;
        }
        // The marker is stored before the intent is recorded, and removed after the end is: the records
        // under its request id tell whether the operation ever ran, and whether its end is already there.
        let records = app.kms.query_audit(&keyward_store::AuditQuery {
            request_id: Some(m.request_id.clone()),
            action: Some(m.action.clone()),
            since_ms: Some(m.started_at.saturating_mul(1000)),
            limit: 2,
            ..Default::default()
        })?;
        if records.len() != 1 {
            app.iam.operations.end(&m.request_id)?;
            if records.is_empty() {
                tracing::info!(request_id = %m.request_id, action = %m.action, "an operation stopped before its intent was recorded never ran");
            }
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
        app.iam.operations.end(&m.request_id)?;
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
