//! Quorum (M-of-N) approval of destructive operations.
//!
//! Scheduling deletion, destroying a version, exporting a key, changing a policy that touches a key, and
//! rotating the root key wait for `m` approvals when the key (its `quorum.approvals`) or the service
//! (`quorum_approvals` in the configuration) asks for them. The request answers `202` with an approval id;
//! distinct identities allowed to perform the operation approve it (the requester cannot), and the last
//! approval executes it. A rejection ends the request; so does expiry (24 hours by default).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyward_api::{ApprovalPending, ExportResponse, B64};
use keyward_core::audit::{rfc3339, AuditEvent};
use keyward_core::{ErrorCode, VersionAction};
use serde::Serialize;

use crate::app::{call, call_guarded, call_noting, AppState, Caller, Meta, Mode, Reply};
use crate::authz::Action;
use crate::convert::{key_object, version_object};
use crate::error::ApiError;

pub use keyward_iam::approvals::{Approval, Operation, CLAIM_TTL};
use keyward_iam::approvals::{Decided, CLOSED};

/// This process's run of its node: a claim naming the node with another run was left by a process that
/// stopped.
pub(crate) fn claim_name(app: &AppState) -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
    format!("{} {run}", app.node_id)
}

fn load(app: &AppState, id: &str) -> Result<Approval, ApiError> {
    Ok(app.iam.approvals.get(id)?)
}

fn save(app: &AppState, a: &Approval) -> Result<(), ApiError> {
    Ok(app.iam.approvals.put(a)?)
}

/// Approvals an operation on `key_ref` needs: the key's own setting, else the service's.
pub fn required_for_key(app: &AppState, key_ref: &str) -> Result<u32, ApiError> {
    let key = app.kms.describe_key(key_ref)?;
    Ok(key.quorum_approvals.unwrap_or(app.config.quorum_approvals))
}

/// Approvals a policy change needs: the highest of the keys it names (and the service's setting). `doc` is
/// the canonical document (see `keyward_iam::policies::prepare`), so that a key named in any spelling, or by
/// any of its aliases, is found.
pub fn required_for_policy(
    app: &AppState,
    doc: Option<&crate::policy::PolicyDoc>,
) -> Result<u32, ApiError> {
    let mut m = app.config.quorum_approvals;
    let (keys, _) = app
        .kms
        .list_keys(&keyward_core::KeyFilter::default(), None, 1000)?;
    for k in keys.iter().filter(|k| k.quorum_approvals.is_some()) {
        let touched = match doc {
            None => true,
            Some(d) => {
                let (_, aliases) = app.kms.key_aliases(&k.key_id)?;
                let id = format!("key/{}", k.key_id);
                d.statements
                    .iter()
                    .flat_map(|s| &s.resources)
                    .any(|r| r.contains('*') || *r == id || aliases.iter().any(|a| a == r))
            }
        };
        if touched {
            m = m.max(k.quorum_approvals.unwrap_or(0));
        }
    }
    Ok(m)
}

/// Records a pending request and answers `202`.
pub fn request(
    app: &AppState,
    caller: &Caller,
    operation: Operation,
    required: u32,
) -> Result<Reply, ApiError> {
    let now = app.clock.now();
    let approval = Approval {
        // Time-ordered (UUIDv7, ordered within the process), so that requests made in the same second
        // list in the order they were made.
        approval_id: format!("apr_{}", uuid::Uuid::now_v7().simple()),
        status: "pending".into(),
        operation,
        requested_by: caller.principal.name.clone(),
        required,
        approvals: Vec::new(),
        rejected_by: None,
        created_at: rfc3339(now),
        expires_at: now.saturating_add(app.config.approval_ttl_seconds as i64),
        result: None,
        claimed_by: None,
        claimed_at: None,
    };
    save(app, &approval)?;
    let key = approval.operation.key_id().map(str::to_string);
    let reply = Reply::with_status(
        StatusCode::ACCEPTED,
        &ApprovalPending {
            approval_id: approval.approval_id.clone(),
            status: "pending".into(),
        },
    )?
    .created(crate::app::resource("approval", &approval.approval_id));
    Ok(match key {
        Some(k) => reply.key(k, None),
        None => reply,
    })
}

/// Runs an approved operation.
pub fn execute(app: &AppState, op: &Operation) -> Result<serde_json::Value, ApiError> {
    let v = |x: Result<serde_json::Value, serde_json::Error>| {
        x.map_err(|_| ApiError::new(ErrorCode::Unavailable, "result encoding"))
    };
    match op {
        Operation::ScheduleDeletion {
            key_id,
            pending_days,
        } => v(serde_json::to_value(key_object(
            &app.kms.schedule_deletion(key_id, *pending_days)?,
        ))),
        Operation::DestroyVersion { key_id, version } => v(serde_json::to_value(version_object(
            &app.kms
                .version_action(key_id, *version, VersionAction::Destroy)?,
        ))),
        Operation::DeleteImportedMaterial { key_id } => v(serde_json::to_value(key_object(
            &app.kms.delete_imported_material(key_id)?,
        ))),
        Operation::Export {
            key_id,
            wrapping_public_key_der,
            version,
        } => {
            let spki = crate::convert::unhex(wrapping_public_key_der)
                .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "store corrupt: approval"))?;
            let wrapped = app.kms.export_key(key_id, &spki, *version)?;
            v(serde_json::to_value(ExportResponse {
                wrapped_key_material: B64(wrapped),
            }))
        }
        Operation::RotateRoot => Ok(serde_json::json!({ "generation": app.kms.rotate_root()? })),
        Operation::PruneAudit { through_seq } => v(serde_json::to_value(
            crate::handlers::audit::prune_now(app, *through_seq)?,
        )),
        Operation::PutPolicy { name, document } => v(serde_json::to_value(
            crate::handlers::policies::store(app, name, document)?,
        )),
        Operation::DeletePolicy { name, detach } => {
            crate::handlers::policies::remove(app, name, *detach)?;
            Ok(serde_json::json!({ "deleted": name }))
        }
    }
}

/// The record of an approved operation as it runs: the requester's action on its key, under the request id
/// of the approval that carried it out (whose own record names the approver). It names the approval, so the
/// approval's trail ends with what it did, unless it changed a policy, which it names instead (that policy's
/// trail must show every change to it).
fn executed(
    app: &AppState,
    a: &Approval,
    (request_id, source_ip): (&str, &str),
    outcome: &'static str,
    error_code: Option<String>,
) -> AuditEvent {
    let version = match &a.operation {
        Operation::DestroyVersion { version, .. } => Some(*version),
        Operation::Export { version, .. } => *version,
        _ => None,
    };
    AuditEvent {
        time_ms: app.clock.now_ms(),
        request_id: request_id.to_string(),
        principal: a.requested_by.clone(),
        source_ip: source_ip.to_string(),
        action: a.operation.action().name().to_string(),
        key_id: a.operation.key_id().map(str::to_string),
        version,
        source_key_ids: Vec::new(),
        resource: match &a.operation {
            Operation::PutPolicy { name, .. } | Operation::DeletePolicy { name, .. } => {
                Some(crate::app::resource("policy", name))
            }
            _ => Some(crate::app::resource("approval", &a.approval_id)),
        },
        outcome,
        error_code,
    }
}

/// The key an approval request concerns, for the records of decisions on it.
fn approval_key(app: &AppState, id: &str) -> Option<String> {
    load(app, id)
        .ok()
        .and_then(|a| a.operation.key_id().map(str::to_string))
}

/// Takes a decision on a request.
///
/// The decision is read, checked and written in one store transaction, and store transactions are
/// serialised across every node sharing the store (SQLite `BEGIN IMMEDIATE`, PostgreSQL's write lock). The
/// decision that completes the quorum moves the request to `executing` in that same transaction, so exactly
/// one approver, on whichever node, runs the operation; any other decision then finds the request no longer
/// pending. The operation itself runs after the commit (it takes transactions of its own).
fn decide(
    app: &AppState,
    caller: &Caller,
    meta: &Meta,
    id: &str,
    approve: bool,
) -> Result<Reply, ApiError> {
    // The approver must itself be allowed to perform the operation, by its roles and its policies (an
    // explicit deny on the key wins here as everywhere). The operation never changes once requested, and the
    // check reads policies and keys, so it is made before the transaction.
    let operation = load(app, id)?.operation;
    let allowed = caller.may(&app.iam, &app.kms, operation.action(), operation.key_id());
    let who = caller.principal.name.clone();
    let now = app.clock.now();
    let decided = app
        .iam
        .approvals
        .decide(id, &who, allowed, approve, now, &claim_name(app))?;
    let a = match decided {
        Decided::Recorded(a) => a,
        Decided::Expired => {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("approval {id} is expired"),
            ))
        }
        Decided::Claimed(a) => run(app, meta, a)?,
    };
    let key = a.operation.key_id().map(str::to_string);
    // The decider sees the request as it may (an export's material is the requester's alone).
    let shown = visible(app, caller, a).unwrap_or(serde_json::Value::Null);
    let reply = Reply::ok(&shown)?;
    Ok(match key {
        Some(k) => reply.key(k, None),
        None => reply,
    })
}

fn by(meta: &Meta) -> (&str, &str) {
    (&meta.request_id, &meta.source_ip)
}

/// Every stored request, for the background rounds; one that does not parse is left to the readers, which
/// report it.
fn stored_requests(app: &AppState) -> Result<Vec<Approval>, ApiError> {
    Ok(app.iam.approvals.readable()?)
}

/// Ends the requests whose claim will never be finished: those this node claimed in an earlier run (the
/// process stopped while running the operation), which every node checks once at start, and those of any node
/// claimed more than [`CLAIM_TTL`] ago, which the leading node checks every round. They become `failed`, after
/// an `error` record under the approval's id. Whether the operation ran before the stop is in the key's trail
/// (its `allow` record) and its state; should an abandoned claimant finish after all, it stores what really
/// happened over the `failed`. Recent claims of other nodes are theirs to end.
fn end_interrupted(app: &AppState, stored: &[Approval]) -> Result<usize, ApiError> {
    let ours = claim_name(app);
    let node = format!("{} ", app.node_id);
    let now = app.clock.now();
    let mut ended = 0;
    for a in stored {
        let Some(claim) = a.claimed_by.clone() else {
            continue;
        };
        if a.status != "executing" || claim == ours {
            continue;
        }
        // A claim stored without its time was made before the request expired.
        let claimed_at = a.claimed_at.unwrap_or(a.expires_at);
        let message = if claim.starts_with(&node) {
            "interrupted: the node running it stopped; the key's audit trail shows whether it ran"
                .to_string()
        } else if now - claimed_at > CLAIM_TTL {
            let claimant = claim.split(' ').next().unwrap_or_default();
            format!(
                "abandoned: node {claimant} did not finish it within {} minutes; the key's audit trail shows whether it ran",
                CLAIM_TTL / 60
            )
        } else {
            continue;
        };
        if app.config.audit {
            let code = Some(ErrorCode::Unavailable.as_str().to_string());
            app.audit
                .append_blocking(executed(app, a, (&a.approval_id, ""), "error", code))?;
        }
        app.iam
            .approvals
            .fail_claim(&a.approval_id, &claim, &message)?;
        ended += 1;
    }
    Ok(ended)
}

/// Stores as `expired` every request still pending past its expiry, the leading node's work each round.
///
/// Readers already see such a request as `expired`; storing it makes the end part of the trail. Each gets an
/// `error` record (`InvalidState`, as a late decision on it would) under the scheduler's name, made durable
/// before the status changes, like any change; the round's records are queued together, and a request whose
/// record failed (or beyond the round's [`PER_ROUND`]) stays pending for the next round.
fn expire_overdue(app: &AppState, stored: &[Approval]) -> Result<usize, ApiError> {
    let now = app.clock.now();
    let overdue = |a: &Approval| a.status == "pending" && a.expires_at <= now;
    // Bounded like the purge, so that a backlog never fills the audit queue that live requests share.
    let due: Vec<&Approval> = stored
        .iter()
        .filter(|a| overdue(a))
        .take(PER_ROUND)
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let request_id = crate::app::round_request_id();
    let events = due
        .iter()
        .map(|a| {
            let mut record = executed(app, a, (&request_id, "local"), "error", None);
            record.principal = keyward_core::audit::SCHEDULER.to_string();
            record.resource = Some(crate::app::resource("approval", &a.approval_id));
            record.error_code = Some(ErrorCode::InvalidState.as_str().to_string());
            record
        })
        .collect();
    let recorded = crate::app::record_all(app, events);
    // A decision taken since the list was read found it expired too, and stored it so.
    let expired = app.iam.approvals.expire(
        due.iter()
            .zip(&recorded)
            .filter(|(_, ok)| **ok)
            .map(|(a, _)| a.approval_id.as_str()),
        now,
    )?;
    if recorded.iter().any(|ok| !ok) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "some expiries could not be recorded; those requests wait for the next round",
        ));
    }
    Ok(expired)
}

/// The most requests one round expires, and the most closed ones it deletes, so that a round stays short
/// however many have accumulated.
const PER_ROUND: usize = 1000;

/// One background round over the stored requests, read once: ends interrupted claims (every node once per
/// run, `recover`, and the leading node every round), and on the leading node stores overdue requests as
/// expired and deletes closed ones past retention. Says whether the interrupted claims were dealt with.
pub fn round(app: &AppState, leads: bool, recover: bool) -> bool {
    let stored = match stored_requests(app) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = e.0.message(), "approvals not checked this round");
            return false;
        }
    };
    let mut recovered = false;
    if leads || recover {
        match end_interrupted(app, &stored) {
            Ok(_) => recovered = true,
            Err(e) => tracing::warn!(error = e.0.message(), "interrupted approvals not ended yet"),
        }
    }
    if leads {
        if let Err(e) = expire_overdue(app, &stored) {
            tracing::warn!(error = e.0.message(), "overdue approvals not expired yet");
        }
        if let Err(e) = purge_closed(app, &stored) {
            tracing::warn!(error = e.0.message(), "closed approvals not deleted yet");
        }
    }
    recovered
}

/// Deletes closed requests `approval_retention_days` after their expiry time (for one executed or rejected
/// early, that is the retention plus what was left of its time to live). Each deletion has its record
/// first (`kms:PurgeApproval` by the scheduler, under `approval/ID`), so that the request's trail in the audit
/// log ends with it; the round's records are made durable together, and only requests whose record is
/// durable are deleted.
fn purge_closed(app: &AppState, stored: &[Approval]) -> Result<usize, ApiError> {
    let now = app.clock.now();
    let keep = i64::from(app.config.approval_retention_days).saturating_mul(keyward_core::DAY);
    let past = |a: &Approval| {
        CLOSED.contains(&a.status.as_str()) && a.expires_at.saturating_add(keep) <= now
    };
    let due: Vec<&Approval> = stored.iter().filter(|a| past(a)).take(PER_ROUND).collect();
    if due.is_empty() {
        return Ok(0);
    }
    let recorded = crate::app::record_deletions(
        app,
        "kms:PurgeApproval",
        "approval",
        due.iter().map(|a| {
            (
                a.approval_id.as_str(),
                a.operation.key_id().map(str::to_string),
            )
        }),
    );
    let purged = app.iam.approvals.purge(
        due.iter()
            .zip(&recorded)
            .filter(|(_, ok)| **ok)
            .map(|(a, _)| a.approval_id.as_str()),
        past,
    )?;
    if recorded.iter().any(|ok| !ok) {
        return Err(crate::app::unrecorded_deletions());
    }
    Ok(purged)
}

/// Runs the operation of a request this node claimed, and stores how it ended.
fn run(app: &AppState, meta: &Meta, mut a: Approval) -> Result<Approval, ApiError> {
    // The operation is recorded before it runs, as a direct request's change is: if the record cannot be
    // made durable, the claim is given back (the request is pending again, without this approval) and
    // nothing happens.
    if app.config.audit {
        if let Err(e) = app
            .audit
            .append_blocking(executed(app, &a, by(meta), "allow", None))
        {
            a.status = "pending".into();
            a.approvals.pop();
            a.claimed_by = None;
            a.claimed_at = None;
            save(app, &a)?;
            return Err(e.into());
        }
    }
    match execute(app, &a.operation) {
        Ok(result) => {
            a.status = "executed".into();
            a.result = Some(result);
            save(app, &a)?;
            // A multi-step operation's end is on the record beside its intent (see `inflight`).
            if app.config.audit && crate::inflight::multi_step(a.operation.action()) {
                if let Err(e) =
                    app.audit
                        .append_blocking(executed(app, &a, by(meta), "allow", None))
                {
                    tracing::warn!(
                        approval = %a.approval_id,
                        error = e.message(),
                        "the end of an approved operation could not be recorded"
                    );
                }
            }
            Ok(a)
        }
        Err(e) => {
            a.status = "failed".into();
            a.result = Some(serde_json::to_value(e.body()).unwrap_or_default());
            save(app, &a)?;
            if app.config.audit {
                let code = Some(e.code().as_str().to_string());
                app.audit
                    .append_blocking(executed(app, &a, by(meta), "error", code))?;
            }
            Err(e)
        }
    }
}

/// `POST /v1/approvals/{id}/approve`.
pub async fn approve(State(app): State<AppState>, meta: Meta, Path(id): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("approval", &id));
    let a = app.clone();
    let m = meta.clone();
    let named = id.clone();
    let looked_up = app.clone();
    let key = move || approval_key(&looked_up, &named);
    let guard = may_decide(&app, &id);
    call_guarded(
        &app,
        &meta,
        Action::Approve,
        None,
        Some(key),
        Some(guard),
        Mode::Blocking,
        move |caller| decide(&a, &caller, &m, &id, true),
    )
    .await
}

/// `POST /v1/approvals/{id}/reject`.
pub async fn reject(State(app): State<AppState>, meta: Meta, Path(id): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("approval", &id));
    let a = app.clone();
    let m = meta.clone();
    let named = id.clone();
    let looked_up = app.clone();
    let key = move || approval_key(&looked_up, &named);
    let guard = may_decide(&app, &id);
    call_guarded(
        &app,
        &meta,
        Action::Reject,
        None,
        Some(key),
        Some(guard),
        Mode::Blocking,
        move |caller| decide(&a, &caller, &m, &id, false),
    )
    .await
}

/// Whether the caller may decide the request at all, checked before anything is recorded: the requester
/// may not decide its own request, and an approver must itself be allowed to perform the operation. A
/// refusal is then the request's one record (`deny`); the decision transaction checks both again.
fn may_decide(
    app: &AppState,
    id: &str,
) -> impl FnOnce(Caller) -> Result<(), ApiError> + Send + 'static {
    let (app, id) = (app.clone(), id.to_string());
    move |caller| {
        let Ok(a) = load(&app, &id) else {
            // An unknown request is refused by the decision itself, under its own code.
            return Ok(());
        };
        if caller.principal.name == a.requested_by {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                "the requester cannot approve or reject its own request",
            ));
        }
        if !caller.may(
            &app.iam,
            &app.kms,
            a.operation.action(),
            a.operation.key_id(),
        ) {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!(
                    "{} may not perform {}",
                    caller.principal.name,
                    a.operation.action().name()
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct ApprovalList {
    approvals: Vec<serde_json::Value>,
    next_token: Option<String>,
}

/// What a caller may see of a request. The requester sees all of it (an export's wrapped material is
/// returned to the requester only); an identity that may perform the operation, and so approve it, sees the
/// request without that material; an auditor sees what was asked, by whom and how it ended, without the
/// payload (a policy document it may not read, a recipient key, a result); anyone else sees nothing.
fn visible(app: &AppState, caller: &Caller, a: Approval) -> Option<serde_json::Value> {
    let mine = a.requested_by == caller.principal.name;
    let approver = !mine
        && caller.may(
            &app.iam,
            &app.kms,
            a.operation.action(),
            a.operation.key_id(),
        );
    let auditor = !mine && !approver && caller.may(&app.iam, &app.kms, Action::ReadAudit, None);
    if !(mine || approver || auditor) {
        return None;
    }
    let mut v = serde_json::to_value(a).ok()?;
    if let Some(fields) = v.as_object_mut() {
        if !mine && fields.get("operation").and_then(|o| o.as_str()) == Some("export") {
            fields.remove("result");
        }
        if auditor {
            for payload in ["document", "wrapping_public_key_der", "result"] {
                fields.remove(payload);
            }
        }
    }
    Some(v)
}

/// `GET /v1/approvals/{id}`: one request, as a requester follows it to its end.
pub async fn get(State(app): State<AppState>, meta: Meta, Path(id): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("approval", &id));
    let a = app.clone();
    let named = id.clone();
    let looked_up = app.clone();
    let key = move || approval_key(&looked_up, &named);
    call_noting(
        &app,
        &meta,
        Action::GetApproval,
        None,
        Some(key),
        Mode::Blocking,
        move |caller| {
            let found = load(&a, &id)?;
            let key_id = found.operation.key_id().map(str::to_string);
            let shown = visible(&a, &caller, found.as_seen(a.clock.now())).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::AccessDenied,
                    format!(
                        "{} may not read approval {}: it neither requested it nor may approve it",
                        caller.principal.name,
                        crate::convert::shown(&id)
                    ),
                )
            })?;
            let reply = Reply::ok(&shown)?;
            Ok(match key_id {
                Some(k) => reply.key(k, None),
                None => reply,
            })
        },
    )
    .await
}

/// `GET /v1/approvals?status=pending`, paged like every list. Ids are time-ordered (UUIDv7), so the
/// order of ids, which pages follow, is the order the requests were made.
pub async fn list(
    State(app): State<AppState>,
    meta: Meta,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListApprovals,
        None,
        Mode::Blocking,
        move |caller| {
            let wanted = q.remove("status");
            crate::convert::only(&q, &["limit", "next_token"])?;
            if let Some(status) = &wanted {
                const STATUSES: [&str; 6] = [
                    "pending",
                    "executing",
                    "executed",
                    "rejected",
                    "expired",
                    "failed",
                ];
                if !STATUSES.contains(&status.as_str()) {
                    return Err(ApiError::validation(
                        "status is pending, executing, executed, rejected, expired or failed",
                    ));
                }
            }
            let now = a.clock.now();
            let all = a.iam.approvals.all()?;
            let mut matching = Vec::with_capacity(all.len());
            for (id, x) in all {
                let x = x.as_seen(now);
                if wanted.as_ref().is_none_or(|s| *s == x.status) {
                    if let Some(v) = visible(&a, &caller, x) {
                        matching.push((id, v));
                    }
                }
            }
            let (page, next_token) = crate::handlers::keys::page(matching, &q)?;
            Reply::ok(&ApprovalList {
                approvals: page.into_iter().map(|(_, v)| v).collect(),
                next_token,
            })
        },
    )
    .await
}
