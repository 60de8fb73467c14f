//! The request pipeline: authorize, record a change before it is made, run, record the outcome, answer;
//! and the records the service makes on its own behalf.

use super::*;
use crate::auth::Principal;
use crate::authz::{Action, Class};
use crate::error::{json_response, ApiError};
use crate::metrics::Outcome;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::audit::AuditEvent;
use keyward_core::ErrorCode;
use serde::Serialize;
use std::sync::Arc;

/// What a handler produced.
pub struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    key_id: Option<String>,
    version: Option<u32>,
    /// Something the request brought into being that its records must name (the approval a held request
    /// waits for), beyond what [`Meta::on`] named before it ran.
    created: Option<String>,
}

impl Reply {
    /// `200` with a JSON body.
    pub fn ok<T: Serialize>(v: &T) -> Result<Reply, ApiError> {
        Self::with_status(StatusCode::OK, v)
    }

    /// A JSON body with a status.
    pub fn with_status<T: Serialize>(status: StatusCode, v: &T) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(v)
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "response encoding failed"))?;
        Ok(Reply {
            status,
            body,
            key_id: None,
            version: None,
            created: None,
        })
    }

    /// A body already encoded as JSON, for a door that builds its answer without a tree (a secret's value
    /// spliced in as stored).
    pub fn raw(status: StatusCode, body: Vec<u8>) -> Reply {
        Reply {
            status,
            body,
            key_id: None,
            version: None,
            created: None,
        }
    }

    /// Names the version of what the request concerns (a secret's) for the audit record.
    pub fn version(mut self, version: u32) -> Reply {
        self.version = Some(version);
        self
    }

    /// `204 No Content`.
    pub fn empty() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: Vec::new(),
            key_id: None,
            version: None,
            created: None,
        }
    }

    /// Names the key and version for the audit record.
    pub fn key(mut self, key_id: impl Into<String>, version: Option<u32>) -> Reply {
        self.key_id = Some(key_id.into());
        self.version = version;
        self
    }

    /// The status and the JSON body, for a door that renders them its own way.
    pub fn into_parts(self) -> (StatusCode, Vec<u8>) {
        (self.status, self.body)
    }

    /// Names what the request created (a `kind/name` from [`resource`]) in a record of its own: the
    /// request's first record was written before it existed.
    pub fn created(mut self, resource: String) -> Reply {
        self.created = Some(resource);
        self
    }
}

/// Whether the work may block (store writes, key generation) and must leave the async workers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Microseconds of CPU: run on the async worker.
    Inline,
    /// Disk or long CPU: run on the blocking pool.
    Blocking,
}

/// The request pipeline (see the module docs).
pub async fn call<F>(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<String>,
    mode: Mode,
    f: F,
) -> Response
where
    F: FnOnce(Caller) -> Result<Reply, ApiError> + Send + 'static,
{
    call_noting(
        app,
        meta,
        action,
        key_ref,
        None::<fn() -> Option<String>>,
        mode,
        f,
    )
    .await
}

/// Runs a `noted` lookup, which reads the store, off the runtime's workers.
async fn look_up<N>(noted: Option<N>) -> Option<String>
where
    N: FnOnce() -> Option<String> + Send + 'static,
{
    match noted {
        Some(n) => tokio::task::spawn_blocking(n).await.ok().flatten(),
        None => None,
    }
}

/// [`call`] for a request that names no key in its path but concerns one (an approval of a key's
/// deletion): `noted` finds that key once the caller is authenticated, and the records name it, so the
/// key's trail shows who approved what. Authorization is unchanged: it sees no key. The lookup reads the
/// store, so it runs on a blocking thread, as the request's own work does.
pub async fn call_noting<F, N>(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<String>,
    noted: Option<N>,
    mode: Mode,
    f: F,
) -> Response
where
    F: FnOnce(Caller) -> Result<Reply, ApiError> + Send + 'static,
    N: FnOnce() -> Option<String> + Send + 'static,
{
    call_guarded(app, meta, action, key_ref, noted, None::<Guard>, mode, f).await
}

/// A check of the caller that only the handler knows to make (an approver deciding its own request), run
/// once the caller is authorized and before anything is recorded ahead: a refusal is then the request's one
/// record, `deny`, as any authorization refusal is.
pub type Guard = fn(Caller) -> Result<(), ApiError>;

/// [`call_noting`] with a `guard` (see [`Guard`]) run on a blocking thread, as it may read the store.
#[allow(clippy::too_many_arguments)]
pub async fn call_guarded<F, N, G>(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<String>,
    noted: Option<N>,
    guard: Option<G>,
    mode: Mode,
    f: F,
) -> Response
where
    F: FnOnce(Caller) -> Result<Reply, ApiError> + Send + 'static,
    N: FnOnce() -> Option<String> + Send + 'static,
    G: FnOnce(Caller) -> Result<(), ApiError> + Send + 'static,
{
    match run_guarded(app, meta, action, key_ref, noted, guard, mode, f).await {
        Ok(reply) => json_response(reply.status, reply.body),
        Err(e) => e.into_response(),
    }
}

/// The pipeline without the answer: what every front end runs (authorize, record ahead, run, record the
/// outcome), leaving the protocol's own rendering of the reply or the refusal to the door.
pub async fn run_noting<F, N>(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<String>,
    noted: Option<N>,
    mode: Mode,
    f: F,
) -> Result<Reply, ApiError>
where
    F: FnOnce(Caller) -> Result<Reply, ApiError> + Send + 'static,
    N: FnOnce() -> Option<String> + Send + 'static,
{
    run_guarded(app, meta, action, key_ref, noted, None::<Guard>, mode, f).await
}

#[allow(clippy::too_many_arguments)]
async fn run_guarded<F, N, G>(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<String>,
    noted: Option<N>,
    guard: Option<G>,
    mode: Mode,
    f: F,
) -> Result<Reply, ApiError>
where
    F: FnOnce(Caller) -> Result<Reply, ApiError> + Send + 'static,
    N: FnOnce() -> Option<String> + Send + 'static,
    G: FnOnce(Caller) -> Result<(), ApiError> + Send + 'static,
{
    let now = app.clock.now();
    let mut written_ahead = false;
    let mut tracked = false;
    let mut source_keys = None;
    let mut noted = noted;
    let mut noted_key = None;
    let authorized = authorize(app, meta, action, key_ref.as_deref(), now).and_then(|caller| {
        match &meta.refused {
            Some(e) => Err((caller.principal, e.clone())),
            None => Ok(caller),
        }
    });
    let (principal, result) = match authorized {
        Err((p, e)) => (p, Err(e)),
        Ok(mut caller) => {
            let p = caller.principal.clone();
            if key_ref.is_none() {
                noted_key = look_up(noted.take()).await;
            }
            // The keys named only by ciphertexts are collected for the record: a re-encryption's sources,
            // the keys of a decryption that names none (its record must name the key even when refused),
            // and the key a decapsulated data key is encrypted under.
            if matches!(action, Action::ReEncrypt | Action::Decapsulate)
                || (action == Action::Decrypt && key_ref.is_none())
            {
                let keys = Arc::new(parking_lot::Mutex::new(Vec::new()));
                caller.source_keys = Some(keys.clone());
                source_keys = Some(keys);
            }
            let guarded = match guard {
                Some(g) => {
                    let c = caller.clone();
                    tokio::task::spawn_blocking(move || g(c))
                        .await
                        .unwrap_or_else(|_| Err(worker_failed()))
                }
                None => Ok(()),
            };
            if let Err(refused) = guarded {
                (p, Err(refused))
            } else {
                let ahead = match write_ahead(app, meta, &p, action, key_ref.as_deref(), &noted_key)
                    .await
                {
                    Ok(ahead) => ahead,
                    Err(refusal) => return Err(refusal),
                };
                written_ahead = ahead.written;
                tracked = ahead.tracked;
                let result = match ahead.refused {
                    Some(e) => Err(e),
                    None => match mode {
                        Mode::Inline => f(caller),
                        Mode::Blocking => tokio::task::spawn_blocking(move || f(caller))
                            .await
                            .unwrap_or_else(|_| Err(worker_failed())),
                    },
                };
                (p, result)
            }
        }
    };
    let (outcome, error_code) = verdict(&result);
    let (key_id, version) = recorded_key(app, &result, key_ref, noted_key, noted).await;
    // A request held for approval was recorded before the approval existed: a second record names it, so
    // that the approval's trail (`?resource=approval/<id>`) begins with the request that opened it.
    let created = match &result {
        Ok(r) => r.created.clone(),
        Err(_) => None,
    };
    // A change recorded ahead needs no second record once done, unless it is a multi-step operation, whose
    // end is recorded too, or a secret's write, whose version is known only once it is made.
    let versioned = action.class() == Class::Secrets && version.is_some();
    let durable = if !app.config.audit
        || (written_ahead && result.is_ok() && created.is_none() && !tracked && !versioned)
    {
        Ok(0)
    } else {
        let mut record = event(
            app, meta, &principal, action, key_id, version, outcome, error_code,
        );
        if created.is_some() {
            record.resource = created;
        }
        if let Some(keys) = source_keys {
            name_sources(&mut record, action, std::mem::take(&mut *keys.lock()));
        }
        append(app, record).await
    };
    app.metrics.record(action, outcome, meta.start.elapsed());
    match durable {
        Err(e) => {
            app.metrics.audit_failed(e.message(), &meta.request_id);
            return Err(ApiError(e));
        }
        Ok(_) => app.metrics.audit_written(),
    }
    if tracked {
        let (a, id) = (app.clone(), meta.request_id.clone());
        let _ = tokio::task::spawn_blocking(move || crate::inflight::end(&a, &id)).await;
    }
    result
}

/// How a request ended, for its record and its metric: refused (`deny`), failed (`error`) or done.
fn verdict(result: &Result<Reply, ApiError>) -> (Outcome, Option<String>) {
    match result {
        Ok(_) => (Outcome::Allow, None),
        Err(e)
            if matches!(
                e.code(),
                ErrorCode::Unauthenticated | ErrorCode::AccessDenied | ErrorCode::Throttled
            ) =>
        {
            (Outcome::Deny, Some(e.code().as_str().to_string()))
        }
        Err(e) => (Outcome::Error, Some(e.code().as_str().to_string())),
    }
}

/// The key (and version) a request's record names: by its id however the request named it, so that a
/// key's trail is whole (`?key_id=`) and stays true after its aliases move; a reference that names no key is
/// kept as given.
async fn recorded_key<N>(
    app: &AppState,
    result: &Result<Reply, ApiError>,
    key_ref: Option<String>,
    noted_key: Option<String>,
    noted: Option<N>,
) -> (Option<String>, Option<u32>)
where
    N: FnOnce() -> Option<String> + Send + 'static,
{
    let named = |key_ref: Option<String>| {
        key_ref
            .filter(|r| names_key(r))
            .map(|r| app.kms.key_id_of(&r).unwrap_or(r))
    };
    match result {
        Ok(r) if r.key_id.is_some() => (r.key_id.clone(), r.version),
        Ok(r) => (named(key_ref).or(noted_key), r.version),
        // An unauthenticated or throttled caller gets no lookup (which may read the store) on its behalf.
        Err(e) if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::Throttled) => {
            (key_ref.filter(|r| names_key(r)), None)
        }
        Err(_) => {
            // A caller refused by authorization is known: its attempt names the key too.
            let noted_key = match noted_key {
                Some(k) => Some(k),
                None => look_up(noted).await,
            };
            (named(key_ref).or(noted_key), None)
        }
    }
}

/// Whether a reference authorization matched is a key's: a secret's (`kv/<mount>/<path>`) is a resource
/// of its own, which its records name as their resource, never as a key.
fn names_key(r: &str) -> bool {
    !r.starts_with("kv/")
}

/// Names the keys a request reached beside its own: a re-encryption's sources, the key a decapsulated data key
/// is encrypted under, or the one key of a decryption that named none.
fn name_sources(record: &mut AuditEvent, action: Action, mut keys: Vec<String>) {
    if matches!(action, Action::ReEncrypt | Action::Decapsulate) || keys.len() > 1 {
        record.source_key_ids = keys;
    } else if record.key_id.is_none() {
        record.key_id = keys.pop();
    }
}

fn worker_failed() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "request worker failed")
}

/// What happened before a change ran.
#[derive(Default)]
struct Ahead {
    /// Its intent is on the record.
    written: bool,
    /// It is a multi-step operation whose marker is in the store (see `inflight`).
    tracked: bool,
    /// It may not run: its marker could not be stored. Nothing is on the record yet.
    refused: Option<ApiError>,
}

/// Records a change before it is made: if the record cannot be made durable, nothing happens (fail closed),
/// and the refusal is the answer. A failure afterwards adds an `error` record.
///
/// A multi-step operation stores its marker before its intent, so that a node killed at any point after
/// the intent leaves the marker its next run ends the operation by; a marker whose intent never reached the
/// log names an operation that never ran, and is dropped.
async fn write_ahead(
    app: &AppState,
    meta: &Meta,
    principal: &Principal,
    action: Action,
    key_ref: Option<&str>,
    noted_key: &Option<String>,
) -> Result<Ahead, ApiError> {
    if !(mutates(action) && app.config.audit && !app.kms.is_sealed()) {
        return Ok(Ahead::default());
    }
    let tracked = crate::inflight::multi_step(action);
    if tracked {
        let (a, m, name) = (app.clone(), meta.clone(), principal.name.clone());
        let begun =
            tokio::task::spawn_blocking(move || crate::inflight::begin(&a, &m, &name, action))
                .await
                .unwrap_or_else(|_| Err(worker_failed()));
        if let Err(e) = begun {
            return Ok(Ahead {
                refused: Some(e),
                ..Ahead::default()
            });
        }
    }
    let key_id = key_ref
        .filter(|r| names_key(r))
        .map(|r| app.kms.key_id_of(r).unwrap_or_else(|_| r.to_string()))
        .or_else(|| noted_key.clone());
    let intent = event(
        app,
        meta,
        principal,
        action,
        key_id,
        None,
        Outcome::Allow,
        None,
    );
    if let Err(e) = append(app, intent).await {
        if tracked {
            let (a, id) = (app.clone(), meta.request_id.clone());
            let _ = tokio::task::spawn_blocking(move || crate::inflight::end(&a, &id)).await;
        }
        app.metrics.audit_failed(e.message(), &meta.request_id);
        app.metrics
            .record(action, Outcome::Error, meta.start.elapsed());
        return Err(ApiError(e));
    }
    Ok(Ahead {
        written: true,
        tracked,
        refused: None,
    })
}

/// Actions that change state, whose records are written before the change.
fn mutates(action: Action) -> bool {
    match action.class() {
        Class::Manage | Class::System | Class::Access => !matches!(
            action,
            Action::GetPolicy
                | Action::ListPolicies
                | Action::GetIdentity
                | Action::ListIdentities
                | Action::ListTokens
                | Action::GetMetrics
        ),
        Class::Secrets => matches!(action, Action::KvWrite | Action::KvDelete),
        Class::Public | Class::Read | Class::Use | Class::Audit | Class::Own => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn event(
    app: &App,
    meta: &Meta,
    principal: &Principal,
    action: Action,
    key_id: Option<String>,
    version: Option<u32>,
    outcome: Outcome,
    error_code: Option<String>,
) -> AuditEvent {
    AuditEvent {
        time_ms: app.clock.now_ms(),
        request_id: meta.request_id.clone(),
        principal: principal.name.clone(),
        source_ip: meta.source_ip.clone(),
        action: action.name().to_string(),
        key_id,
        version,
        source_key_ids: Vec::new(),
        resource: meta.resource.clone(),
        outcome: outcome.name(),
        error_code,
    }
}

/// A request id for the records of one background round, so that `keyward audit --request` finds them
/// together.
pub fn round_request_id() -> String {
    format!("sched-{}", uuid::Uuid::new_v4().simple())
}

/// Queues `events` at once, so that they share the writer's batches instead of waiting for one flush each,
/// and blocks until each is durable or has failed. Says for each whether it is durable (all are when the
/// audit log is off); only what is recorded may then be changed.
pub fn record_all(app: &AppState, events: Vec<AuditEvent>) -> Vec<bool> {
    let mut durable = vec![!app.config.audit; events.len()];
    if !app.config.audit {
        return durable;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, event) in events.into_iter().enumerate() {
        let tx = tx.clone();
        app.audit.append(
            event,
            Box::new(move |r| {
                let _ = tx.send((i, r.is_ok()));
            }),
        );
    }
    drop(tx);
    for (i, ok) in rx {
        if let Some(slot) = durable.get_mut(i) {
            *slot = ok;
        }
    }
    durable
}

/// Records the scheduler's deletion of each `kind` object (`{kind}/{id}`, with the key it concerns), a
/// round's records under one request id ([`record_all`]).
pub fn record_deletions<'a>(
    app: &AppState,
    action: &str,
    kind: &str,
    items: impl Iterator<Item = (&'a str, Option<String>)>,
) -> Vec<bool> {
    let request_id = round_request_id();
    let events = items
        .map(|(id, key_id)| AuditEvent {
            key_id,
            resource: Some(resource(kind, id)),
            ..system_event(
                app,
                keyward_core::audit::SCHEDULER,
                request_id.clone(),
                action,
            )
        })
        .collect();
    record_all(app, events)
}

/// The record of something the service does on its own (the scheduler's work, a signal's effect): no client
/// address, no key or resource until the caller names one, `allow` until it says otherwise.
pub fn system_event(app: &App, principal: &str, request_id: String, action: &str) -> AuditEvent {
    AuditEvent {
        time_ms: app.clock.now_ms(),
        request_id,
        principal: principal.to_string(),
        source_ip: "local".to_string(),
        action: action.to_string(),
        key_id: None,
        version: None,
        source_key_ids: Vec::new(),
        resource: None,
        outcome: "allow",
        error_code: None,
    }
}

/// A round that could not record every deletion: the rest wait for the next round.
pub fn unrecorded_deletions() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "some deletions could not be recorded; they wait for the next round",
    )
}

/// Records an event that is not a request (a signal's effect): durable before the change it describes is
/// made, as a request's would be; nothing to wait for when the audit log is off.
pub async fn record(app: &AppState, event: AuditEvent) -> Result<u64, keyward_core::KmsError> {
    if !app.config.audit {
        return Ok(0);
    }
    append(app, event).await
}

async fn append(app: &AppState, event: AuditEvent) -> Result<u64, keyward_core::KmsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.audit.append(event, Box::new(move |r| drop(tx.send(r))));
    rx.await.unwrap_or_else(|_| {
        Err(keyward_core::KmsError::new(
            ErrorCode::Unavailable,
            "audit writer stopped",
        ))
    })
}
