//! Shared state, the request pipeline, and the router.
//!
//! Every API call goes through [`call`]: authenticate → rate-limit → authorize (role) → run → append the audit
//! record and wait until it is durable → respond. Failures at any step are audited too; if the audit record
//! cannot be written, the request fails closed with `503 Unavailable`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use keyward_core::audit::{AuditEvent, AuditLog};
use keyward_core::{Clock, ErrorCode, Kms, SystemClock};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::{Auth, Principal};
use crate::authz::{Action, Class};
use crate::error::{json_response, ApiError};
use crate::limiter::Limiter;
use crate::metrics::{Metrics, Outcome};
use crate::{handlers, Config};

/// Largest request body (API: 1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Body limit of `POST /v1/sys/restore`, which carries a whole backup.
pub const MAX_BACKUP_BODY: usize = 1024 * 1024 * 1024;

/// Everything a request handler needs.
pub struct App {
    /// The engine.
    pub kms: Arc<Kms>,
    /// The audit writer.
    pub audit: AuditLog,
    /// Tokens.
    pub auth: Auth,
    /// Metrics.
    pub metrics: Metrics,
    /// Rate limiting.
    pub limiter: Limiter,
    /// This node's id.
    pub node_id: String,
    /// Effective configuration.
    pub config: Config,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Request id source.
    pub request_ids: RequestIds,
    /// Policy documents and their compiled forms.
    pub policies: keyward_iam::policies::Policies,
    /// The PKCS#11 token when it is the root of trust.
    pub token: Option<Arc<keyward_hsm_pkcs11::Pkcs11Hsm>>,
    /// What the background rounds last found of the audit chain.
    pub chain: crate::chain::ChainWatch,
}

/// Request ids: a random per-process prefix and a counter. Unique within the node, unguessable across
/// restarts, and free of a system call per request.
pub struct RequestIds {
    prefix: String,
    counter: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let u = uuid::Uuid::new_v4().simple().to_string();
        RequestIds {
            prefix: u.chars().take(16).collect(),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:012x}", self.prefix)
    }
}

/// Shared state.
pub type AppState = Arc<App>;

impl App {
    /// Assembles the state.
    pub fn new(kms: Arc<Kms>, audit: AuditLog, config: Config, node_id: String) -> Self {
        let auth = Auth::new(kms_store(&kms), kms.freshness());
        let policies = keyward_iam::policies::Policies::new(kms_store(&kms), kms.freshness());
        App {
            limiter: Limiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            kms,
            audit,
            auth,
            metrics: Metrics::default(),
            node_id,
            config,
            clock: Arc::new(SystemClock),
            request_ids: RequestIds::new(),
            policies,
            token: None,
            chain: Default::default(),
        }
    }
}

fn kms_store(kms: &Kms) -> Arc<dyn keyward_store::Store> {
    kms.store_handle()
}

/// The subject of a client certificate the TLS layer verified against `tls_client_ca`.
#[derive(Clone, Debug)]
pub struct ClientSubject(pub String);

/// Per-request facts gathered by the middleware.
#[derive(Clone, Debug)]
pub struct Meta {
    /// The `x-request-id`.
    pub request_id: String,
    /// The client address, as recorded.
    pub source_ip: String,
    /// The client address, for policy conditions.
    pub ip: Option<std::net::IpAddr>,
    /// The bearer token, if any.
    pub bearer: Option<Bearer>,
    /// The verified client certificate's subject, if any.
    pub client_subject: Option<String>,
    /// When the request arrived.
    pub start: Instant,
    /// What the request concerns other than a key (`identity/<name>`, `policy/<name>`, ...), for its records.
    pub resource: Option<String>,
    /// A refusal decided from the request's head alone (a body too large or not JSON): the request is
    /// authenticated and audited as any other, then refused with it, its body never read.
    pub refused: Option<ApiError>,
    /// When the body must have arrived (see [`RawBody`]).
    pub body_deadline: Instant,
}

/// The body limit of a path (see [`router`]).
fn body_limit(path: &str) -> usize {
    if path == "/v1/sys/restore" {
        MAX_BACKUP_BODY
    } else {
        MAX_BODY
    }
}

/// Refuses, from the head alone, a body that cannot be accepted: a declared length over the limit (413,
/// before a byte of it is read), or a body that is not declared JSON (415: every body of the API is JSON, and
/// requiring the media type keeps a browser's cross-site form post, which cannot set it, from ever being
/// read).
fn body_refusal(req: &Request) -> Option<ApiError> {
    let headers = req.headers();
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = body_limit(req.uri().path());
    if declared.is_some_and(|n| n > limit as u64) {
        return Some(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is over {} MiB", limit / (1024 * 1024)),
        ));
    }
    let has_body = declared.is_some_and(|n| n > 0)
        || headers.contains_key(axum::http::header::TRANSFER_ENCODING);
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    (has_body && !json).then(|| {
        ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "request bodies are JSON: send Content-Type: application/json",
        )
    })
}

/// `kind/name` for [`Meta::on`]; a name from the request is cut to 256 bytes, as no valid one is longer.
pub fn resource(kind: &str, name: &str) -> String {
    let mut end = name.len().min(256);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{kind}/{}", &name[..end])
}

impl Meta {
    /// Names what the request concerns in its audit records.
    pub fn on(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Meta {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let mut meta = parts
            .extensions
            .get::<Meta>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "request context missing"))?;
        meta.bearer = bearer(&parts.headers);
        meta.client_subject = parts.extensions.get::<ClientSubject>().map(|s| s.0.clone());
        Ok(meta)
    }
}

/// A bearer token as a request presented it. The request context is cloned into handlers and may be
/// printed while debugging, so the token is wiped when each copy is dropped and `Debug` never shows it.
#[derive(Clone)]
pub struct Bearer(zeroize::Zeroizing<String>);

impl Bearer {
    /// The token, for authentication only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

fn bearer(headers: &HeaderMap) -> Option<Bearer> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Bearer(zeroize::Zeroizing::new(token.trim().to_string())))
}

/// The raw body, read with the size limit; parsing happens inside [`call`] so bad input is audited too.
pub struct RawBody(pub Result<Bytes, ApiError>);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (refused, deadline) = match req.extensions().get::<Meta>() {
            Some(m) => (m.refused.clone(), Some(m.body_deadline)),
            None => (None, None),
        };
        if let Some(refused) = refused {
            return Ok(RawBody(Err(refused)));
        }
        let limit = body_limit(req.uri().path());
        let read = Bytes::from_request(req, state);
        // A body that stalls or stops short is the client's doing: 408, before the request's own time runs
        // out (which would read as the service's failure).
        let read = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), read).await {
                Ok(read) => read,
                Err(_) => {
                    return Ok(RawBody(Err(ApiError::new(
                        ErrorCode::RequestTimeout,
                        "the request body did not arrive in time",
                    ))))
                }
            },
            None => read.await,
        };
        Ok(RawBody(read.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body is over {} MiB", limit / (1024 * 1024)),
                )
            } else {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the request body was cut short or could not be read",
                )
            }
        })))
    }
}

/// Parses a JSON body. Error messages name fields and positions, never values (which may be secrets).
pub fn parse<T: DeserializeOwned>(body: &RawBody) -> Result<T, ApiError> {
    let bytes = body.0.as_ref().map_err(Clone::clone)?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    // Every request body is an object. serde would also fill a struct from an array, by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::validation("the body must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::validation(explain::<T>(bytes, &e)))
}

/// A batch body whose items did not all parse: the batch's items, each parsed on its own, so that one
/// item's bad value (base64 that does not decode, a missing field) fails that item alone and the others run.
/// `None` when the body is not a batch of objects with nothing beside `items` (the whole-body error stands).
/// Only a body that failed the strict parse pays for this.
pub fn batch_items<T: DeserializeOwned>(body: &RawBody) -> Option<Vec<Result<T, ApiError>>> {
    let bytes = body.0.as_ref().ok()?;
    let mut top: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    let items = match top.remove("items")? {
        serde_json::Value::Array(items) => items,
        _ => return None,
    };
    if !top.is_empty() || items.iter().any(|i| !i.is_object()) {
        return None;
    }
    Some(
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value::<T>(item)
                    .map_err(|e| ApiError::validation(format!("items[{i}]: {}", detail(&e))))
            })
            .collect(),
    )
}

/// What serde says of a refused value, without the value itself (which may be a secret).
fn detail(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text.split(" at line").next().unwrap_or_default();
    if text.starts_with("unknown field")
        || text.starts_with("missing field")
        || text.starts_with("invalid base64")
    {
        text.to_string()
    } else if let Some((_, expected)) = text.split_once(", expected ") {
        // "invalid type: string \"<value>\", expected u32": only the second half is safe to repeat.
        format!("expected {expected}")
    } else {
        "invalid value".to_string()
    }
}

/// Describes why a body did not parse: where (the field's path, found by parsing again, which only a
/// refused request pays for) and what was expected, without the value serde would quote.
fn explain<T: DeserializeOwned>(bytes: &[u8], e: &serde_json::Error) -> String {
    let at = format!("(line {}, column {})", e.line(), e.column());
    if e.is_syntax() || e.is_eof() {
        return format!("malformed JSON {at}");
    }
    let detail = detail(e);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut path = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => e.path().to_string(),
        Ok(_) => ".".to_string(),
    };
    if detail.starts_with("unknown field") {
        // The path ends with the unknown name itself, which the detail already quotes.
        path = path
            .rsplit_once('.')
            .map_or(".", |(parent, _)| parent)
            .to_string();
    }
    if path == "." {
        format!("{detail} {at}")
    } else {
        format!("{path}: {detail} {at}")
    }
}

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

/// Who is calling, and what the policies still require of the request's encryption context.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The authenticated principal.
    pub principal: Arc<Principal>,
    /// Conditions on the encryption context that only the handler can check.
    pub context_rule: Option<Arc<crate::policy::ContextRule>>,
    /// The client's address, for policy conditions evaluated after authorization.
    pub source_ip: Option<std::net::IpAddr>,
    /// For a re-encryption, or a decryption that names no key: the keys its ciphertexts name, gathered by
    /// the handler for the audit record (whether or not the caller may use them).
    pub source_keys: Option<Arc<parking_lot::Mutex<Vec<String>>>>,
    /// For `/v1/decrypt`, where the key is only known from the ciphertext, and for the source key of a
    /// re-encryption (which the caller must be allowed to decrypt with): the evaluation still to do.
    pub pending: Option<Arc<Pending>>,
}

/// A policy evaluation deferred until the handler knows the key.
#[derive(Debug)]
pub struct Pending {
    policies: Vec<Arc<crate::policy::Compiled>>,
    role_allows: bool,
    action: Action,
    source_ip: Option<std::net::IpAddr>,
    mfa: bool,
}

impl Caller {
    /// Whether this caller may perform `action` on a key (or, with none, on the service), by its roles and
    /// policies as [`authorize`] decides: for checks made after the request's own authorization, such as
    /// an approver's right to the operation it approves.
    pub fn may(&self, app: &App, action: Action, key_ref: Option<&str>) -> bool {
        let role_allows = self.principal.roles.iter().any(|r| r.allows(action));
        if self.principal.policies.is_empty() {
            return role_allows;
        }
        // Policies that cannot be loaded allow nothing (fail closed).
        let Ok(policies) = app.policies.load(&self.principal.policies) else {
            return false;
        };
        let Ok(resources) = resources(&app.kms, key_ref) else {
            return false;
        };
        let request = crate::policy::Request {
            action,
            resources: &resources,
            source_ip: self.source_ip,
            mfa: self.principal.mfa,
        };
        match crate::policy::evaluate(policies.iter().map(|p| p.as_ref()), role_allows, &request) {
            crate::policy::Decision::Allow => true,
            crate::policy::Decision::Context(rule) => rule.allows(&keyward_api::Context::new()),
            _ => false,
        }
    }

    /// Notes a key that a ciphertext names, for the audit record (see [`call`]).
    pub fn note_source_key(&self, key_id: &str) {
        if let Some(keys) = &self.source_keys {
            let mut keys = keys.lock();
            if !keys.iter().any(|k| k == key_id) {
                keys.push(key_id.to_string());
            }
        }
    }

    /// For a request whose key comes from the ciphertext: evaluates the policies for that key and context.
    pub fn check_key(
        &self,
        kms: &keyward_core::Kms,
        key_id: &str,
        context: &keyward_api::Context,
    ) -> Result<(), ApiError> {
        let Some(p) = &self.pending else {
            return self.check_context(context);
        };
        let resources = resources(kms, Some(key_id))?;
        let request = crate::policy::Request {
            action: p.action,
            resources: &resources,
            source_ip: p.source_ip,
            mfa: p.mfa,
        };
        let allowed = match crate::policy::evaluate(
            p.policies.iter().map(|x| x.as_ref()),
            p.role_allows,
            &request,
        ) {
            crate::policy::Decision::Allow => true,
            crate::policy::Decision::Context(rule) => rule.allows(context),
            crate::policy::Decision::Deny => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!(
                    "{} may not perform {} with key {key_id}",
                    self.principal.name,
                    p.action.name()
                ),
            ))
        }
    }

    /// Refuses the request if a policy condition on the encryption context does not hold.
    pub fn check_context(&self, context: &keyward_api::Context) -> Result<(), ApiError> {
        match &self.context_rule {
            Some(rule) if !rule.allows(context) => Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!(
                    "{}'s policies do not allow this encryption context",
                    self.principal.name
                ),
            )),
            _ => Ok(()),
        }
    }
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
            // and the keys of a decryption that names none (its record must name the key even when refused).
            if action == Action::ReEncrypt || (action == Action::Decrypt && key_ref.is_none()) {
                let keys = Arc::new(parking_lot::Mutex::new(Vec::new()));
                caller.source_keys = Some(keys.clone());
                source_keys = Some(keys);
            }
            // A change is recorded before it is made: if the record cannot be made durable, nothing
            // happens (fail closed). A failure afterwards adds an `error` record.
            if mutates(action) && app.config.audit && !app.kms.is_sealed() {
                let key_id = key_ref
                    .as_deref()
                    .map(|r| app.kms.key_id_of(r).unwrap_or_else(|_| r.to_string()))
                    .or_else(|| noted_key.clone());
                let intent = event(app, meta, &p, action, key_id, None, Outcome::Allow, None);
                if let Err(e) = append(app, intent).await {
                    app.metrics.audit_failed(e.message(), &meta.request_id);
                    app.metrics
                        .record(action, Outcome::Error, meta.start.elapsed());
                    return ApiError(e).into_response();
                }
                written_ahead = true;
            }
            // A multi-step operation leaves a marker from its intent to its end (see `inflight`).
            tracked = written_ahead && crate::inflight::multi_step(action);
            let (a, m) = (app.clone(), meta.clone());
            let f = move |caller: Caller| {
                if tracked {
                    crate::inflight::begin(&a, &m, &caller.principal.name, action)?;
                }
                f(caller)
            };
            let result = match mode {
                Mode::Inline => f(caller),
                Mode::Blocking => tokio::task::spawn_blocking(move || f(caller))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ApiError::new(
                            ErrorCode::Unavailable,
                            "request worker failed",
                        ))
                    }),
            };
            (p, result)
        }
    };
    let (outcome, error_code) = match &result {
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
    };
    // The record names the key by its id however the request named it, so that a key's trail is whole
    // (`?key_id=`) and stays true after its aliases move; a reference that names no key is kept as given.
    let named = |key_ref: Option<String>| key_ref.map(|r| app.kms.key_id_of(&r).unwrap_or(r));
    let (key_id, version) = match &result {
        Ok(r) if r.key_id.is_some() => (r.key_id.clone(), r.version),
        Ok(r) => (named(key_ref).or(noted_key), r.version),
        // An unauthenticated or throttled caller gets no lookup (which may read the store) on its behalf.
        Err(e) if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::Throttled) => {
            (key_ref, None)
        }
        Err(_) => {
            // A caller refused by authorization is known: its attempt names the key too.
            let noted_key = match noted_key {
                Some(k) => Some(k),
                None => look_up(noted.take()).await,
            };
            (named(key_ref).or(noted_key), None)
        }
    };
    // A request held for approval was recorded before the approval existed: a second record names it, so
    // that the approval's trail (`?resource=approval/<id>`) begins with the request that opened it.
    let created = match &result {
        Ok(r) => r.created.clone(),
        Err(_) => None,
    };
    // A change recorded ahead needs no second record once done, unless it is a multi-step operation, whose
    // end is recorded too.
    let durable = if !app.config.audit
        || (written_ahead && result.is_ok() && created.is_none() && !tracked)
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
            let mut keys = std::mem::take(&mut *keys.lock());
            if action == Action::ReEncrypt || keys.len() > 1 {
                record.source_key_ids = keys;
            } else if record.key_id.is_none() {
                record.key_id = keys.pop();
            }
        }
        append(app, record).await
    };
    app.metrics.record(action, outcome, meta.start.elapsed());
    match durable {
        Err(e) => {
            app.metrics.audit_failed(e.message(), &meta.request_id);
            return ApiError(e).into_response();
        }
        Ok(_) => app.metrics.audit_written(),
    }
    if tracked {
        let (a, id) = (app.clone(), meta.request_id.clone());
        let _ = tokio::task::spawn_blocking(move || crate::inflight::end(&a, &id)).await;
    }
    match result {
        Ok(reply) => json_response(reply.status, reply.body),
        Err(e) => e.into_response(),
    }
}

/// Actions whose requests carry an encryption context the handler checks against policy conditions.
fn carries_context(action: Action) -> bool {
    matches!(
        action,
        Action::Encrypt
            | Action::Decrypt
            | Action::ReEncrypt
            | Action::GenerateDataKey
            | Action::GenerateDataKeyPair
    )
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
pub(crate) fn system_event(
    app: &App,
    principal: &str,
    request_id: String,
    action: &str,
) -> AuditEvent {
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
pub(crate) async fn record(
    app: &AppState,
    event: AuditEvent,
) -> Result<u64, keyward_core::KmsError> {
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

fn authorize(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<&str>,
    now: i64,
) -> Result<Caller, (Arc<Principal>, ApiError)> {
    let anonymous = || Arc::new(Principal::anonymous());
    let source_ip = meta.ip;
    if action.class() == Class::Public {
        return Ok(Caller {
            source_keys: None,
            source_ip,
            principal: anonymous(),
            context_rule: None,
            pending: None,
        });
    }
    let principal = match (&meta.bearer, &meta.client_subject) {
        (None, Some(subject)) => crate::handlers::identities::by_certificate(app, subject)
            .map_err(|e| (anonymous(), e))?,
        (token, _) => app
            .auth
            .authenticate(token.as_ref().map_or("", Bearer::expose), now)
            .map_err(|e| (anonymous(), e))?,
    };
    if !app.limiter.allow(&principal.name) {
        return Err((
            principal,
            ApiError::new(ErrorCode::Throttled, "rate limit exceeded; retry shortly"),
        ));
    }
    if action.class() == Class::Own {
        return Ok(Caller {
            source_keys: None,
            source_ip,
            principal,
            context_rule: None,
            pending: None,
        });
    }
    let role_allows = principal.roles.iter().any(|r| r.allows(action));
    let denied = |p: &Arc<Principal>| {
        ApiError::new(
            ErrorCode::AccessDenied,
            format!("{} may not perform {}", p.name, action.name()),
        )
    };
    if principal.policies.is_empty() {
        return if role_allows {
            Ok(Caller {
                source_keys: None,
                source_ip,
                principal,
                context_rule: None,
                pending: None,
            })
        } else {
            let e = denied(&principal);
            Err((principal, e))
        };
    }
    // Authorization fails closed: a policy the caller holds that cannot be loaded could hold a deny.
    let policies = match app.policies.load(&principal.policies) {
        Ok(p) => p,
        Err(e) => return Err((principal, ApiError(e))),
    };
    if key_ref.is_none() && action == Action::Decrypt {
        let pending = Pending {
            policies,
            role_allows,
            action,
            source_ip,
            mfa: principal.mfa,
        };
        return Ok(Caller {
            source_keys: None,
            source_ip,
            principal,
            context_rule: None,
            pending: Some(Arc::new(pending)),
        });
    }
    // Re-encryption hands the source key's plaintext to whoever may use the destination key: the caller
    // must also be allowed to decrypt with the source key, which only the ciphertext names.
    let source_check = (action == Action::ReEncrypt).then(|| {
        Arc::new(Pending {
            policies: policies.clone(),
            role_allows: principal.roles.iter().any(|r| r.allows(Action::Decrypt)),
            action: Action::Decrypt,
            source_ip,
            mfa: principal.mfa,
        })
    });
    let resources = match resources(&app.kms, key_ref) {
        Ok(r) => r,
        Err(e) => return Err((principal, e)),
    };
    let request = crate::policy::Request {
        action,
        resources: &resources,
        source_ip,
        mfa: principal.mfa,
    };
    let context_rule =
        match crate::policy::evaluate(policies.iter().map(|p| p.as_ref()), role_allows, &request) {
            crate::policy::Decision::Allow => None,
            crate::policy::Decision::Context(rule) if carries_context(action) => {
                Some(Arc::new(rule))
            }
            crate::policy::Decision::Context(rule) if rule.allows(&keyward_api::Context::new()) => {
                None
            }
            _ => {
                let e = denied(&principal);
                return Err((principal, e));
            }
        };
    Ok(Caller {
        source_keys: None,
        source_ip,
        principal,
        context_rule,
        pending: source_check,
    })
}

/// The names policies may give the key a request concerns: `key/<id>` and every alias pointing to the key,
/// however the request named it (see [`keyward_core::Kms::key_aliases`]); a reference to no key stands for
/// itself (the handler then answers `NotFound`). When the aliases cannot be read, no decision is safe (a
/// deny on an alias would be missed) and the request fails closed.
fn resources(kms: &keyward_core::Kms, key_ref: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(r) = key_ref else {
        return Ok(Vec::new());
    };
    let given = match r
        .strip_prefix("alias/")
        .or_else(|| r.strip_prefix("alias:"))
    {
        Some(name) => format!("alias/{name}"),
        None => format!("key/{r}"),
    };
    let (id, aliases) = match kms.key_aliases(r) {
        Ok(found) => found,
        Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::ValidationError) => {
            return Ok(vec![given]);
        }
        Err(e) => return Err(ApiError(e)),
    };
    let mut out = Vec::with_capacity(aliases.len() + 2);
    out.push(format!("key/{id}"));
    out.extend(aliases.iter().cloned());
    if !out.contains(&given) {
        out.push(given);
    }
    Ok(out)
}

/// Assigns the request id, bounds the request time, and stamps `x-request-id` on the response.
async fn context(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_string)
        .unwrap_or_else(|| app.request_ids.next());
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let source_ip = ip.map_or_else(|| "unknown".into(), |ip| ip.to_string());
    let timeout = Duration::from_secs(app.config.request_timeout_seconds.max(1));
    let start = Instant::now();
    let refused = body_refusal(&req);
    req.extensions_mut().insert(Meta {
        request_id: request_id.clone(),
        source_ip,
        ip,
        bearer: None,
        client_subject: None,
        start,
        resource: None,
        refused,
        body_deadline: start + timeout * 3 / 4,
    });
    let mut resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(ErrorCode::Unavailable, "request timed out").into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // Answers carry plaintexts, data keys and tokens: no cache between client and service may keep one.
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

/// An unknown path or method. A caller that presents a credential is authenticated and its attempt recorded
/// (`kms:NoSuchEndpoint`, under `endpoint/<METHOD> <path>`), as a probe of the API is worth a trail; a
/// request without one is answered at once.
async fn not_found(
    State(app): State<AppState>,
    meta: Meta,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    let refusal = || ApiError::new(ErrorCode::NotFound, "no such endpoint");
    if meta.bearer.is_none() && meta.client_subject.is_none() {
        return refusal().into_response();
    }
    let meta = meta.on(resource("endpoint", &format!("{method} {}", uri.path())));
    call(
        &app,
        &meta,
        Action::NoSuchEndpoint,
        None,
        Mode::Inline,
        move |_| Err(refusal()),
    )
    .await
}

/// The API router.
pub fn router(app: AppState) -> Router {
    use handlers::{crypto, keys, sys};
    Router::new()
        .route("/v1/health", get(sys::health))
        .route("/v1/sys/status", get(sys::status))
        .route("/v1/sys/init", post(sys::init))
        .route("/v1/sys/unseal", post(sys::unseal))
        .route("/v1/sys/seal", post(sys::seal))
        .route("/v1/sys/generate-root", post(sys::generate_root))
        .route("/v1/sys/rotate-root", post(sys::rotate_root))
        .route("/v1/sys/backup", post(sys::backup))
        .route(
            "/v1/sys/restore",
            post(sys::restore).layer(DefaultBodyLimit::max(MAX_BACKUP_BODY)),
        )
        .route("/v1/openapi.json", get(sys::openapi))
        .route("/metrics", get(sys::metrics))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{key}", get(keys::describe).patch(keys::update))
        .route("/v1/keys/{key}/enable", post(keys::enable))
        .route("/v1/keys/{key}/disable", post(keys::disable))
        .route("/v1/keys/{key}/rotate", post(keys::rotate))
        .route("/v1/keys/{key}/versions", get(keys::versions))
        .route(
            "/v1/keys/{key}/versions/{n}/{action}",
            post(keys::version_action),
        )
        .route("/v1/keys/{key}/primary", post(keys::set_primary))
        .route(
            "/v1/keys/{key}/schedule-deletion",
            post(keys::schedule_deletion),
        )
        .route(
            "/v1/keys/{key}/cancel-deletion",
            post(keys::cancel_deletion),
        )
        .route("/v1/keys/{key}/public-key", get(keys::public_key))
        .route(
            "/v1/keys/{key}/import-parameters",
            get(keys::import_parameters),
        )
        .route("/v1/keys/{key}/import", post(keys::import))
        .route("/v1/keys/{key}/export", post(keys::export))
        .route("/v1/aliases", get(keys::list_aliases))
        .route(
            "/v1/aliases/{name}",
            put(keys::put_alias).delete(keys::delete_alias),
        )
        .route("/v1/keys/{key}/encrypt", post(crypto::encrypt))
        .route("/v1/decrypt", post(crypto::decrypt_any))
        .route("/v1/keys/{key}/decrypt", post(crypto::decrypt))
        .route("/v1/keys/{key}/reencrypt", post(crypto::reencrypt))
        .route("/v1/keys/{key}/data-key", post(crypto::data_key))
        .route("/v1/keys/{key}/data-key-pair", post(crypto::data_key_pair))
        .route("/v1/keys/{key}/sign", post(crypto::sign))
        .route("/v1/keys/{key}/verify", post(crypto::verify))
        .route("/v1/keys/{key}/mac", post(crypto::mac))
        .route("/v1/keys/{key}/verify-mac", post(crypto::verify_mac))
        .route("/v1/keys/{key}/derive", post(crypto::derive))
        .route("/v1/keys/{key}/agree", post(crypto::agree))
        .route("/v1/random", post(crypto::random))
        .route(
            "/v1/identities",
            post(handlers::identities::create).get(handlers::identities::list),
        )
        .route(
            "/v1/identities/{name}",
            get(handlers::identities::get)
                .patch(handlers::identities::update)
                .delete(handlers::identities::delete),
        )
        .route(
            "/v1/identities/{name}/tokens",
            post(handlers::identities::token).get(handlers::identities::tokens),
        )
        .route(
            "/v1/tokens/{token_id}",
            delete(handlers::identities::revoke),
        )
        .route(
            "/v1/identities/{name}/mfa",
            post(handlers::identities::enroll_mfa),
        )
        .route("/v1/auth/login", post(handlers::identities::login))
        .route("/v1/auth/self", get(handlers::identities::caller))
        .route("/v1/policies", get(handlers::policies::list))
        .route(
            "/v1/policies/{name}",
            put(handlers::policies::put)
                .get(handlers::policies::get)
                .delete(handlers::policies::delete),
        )
        .route("/v1/approvals", get(handlers::approvals::list))
        .route("/v1/approvals/{id}", get(handlers::approvals::get))
        .route(
            "/v1/approvals/{id}/approve",
            post(handlers::approvals::approve),
        )
        .route(
            "/v1/approvals/{id}/reject",
            post(handlers::approvals::reject),
        )
        .route("/v1/audit", get(handlers::audit::query))
        .route(
            "/v1/audit/verify",
            get(handlers::audit::verify).post(handlers::audit::verify_against),
        )
        .route("/v1/audit/checkpoint", get(handlers::audit::checkpoint))
        .route("/v1/audit/prune", post(handlers::audit::prune))
        .route(
            "/v1/audit/verify-archive",
            post(handlers::audit::verify_archive),
        )
        .route("/v1/reports/compliance", get(handlers::reports::compliance))
        .route("/v1/keys/{key}/csr", post(crate::pki::csr))
        .route("/v1/keys/{key}/certificate", post(crate::pki::certificate))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), context))
        .with_state(app)
}

/// Percent-encodes a URI component.
pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A `Body` helper for handlers that stream nothing.
pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::explain;

    #[test]
    fn a_request_context_never_shows_its_token() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderValue::from_static("Bearer kw.s3cr3t-t0ken"),
        );
        let bearer = super::bearer(&headers).unwrap();
        assert_eq!(bearer.expose(), "kw.s3cr3t-t0ken");
        let meta = super::Meta {
            request_id: "r".into(),
            source_ip: "127.0.0.1".into(),
            ip: None,
            bearer: Some(bearer),
            client_subject: None,
            start: std::time::Instant::now(),
            resource: None,
            refused: None,
            body_deadline: std::time::Instant::now(),
        };
        let shown = format!("{meta:?} {:?}", meta.clone());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        plaintext: keyward_api::B64,
        #[serde(default)]
        context: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Batch {
        items: Vec<Item>,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[test]
    fn a_body_is_an_object_or_nothing() {
        let parse = |body: &'static str| {
            super::parse::<Batch>(&super::RawBody(Ok(axum::body::Bytes::from_static(
                body.as_bytes(),
            ))))
        };
        assert!(parse(r#" {"items": []}"#).is_ok());
        // serde would read these as the struct's fields by position.
        for body in [r#"[[], 3]"#, " [[]]", "null", "\"items\"", "7"] {
            let refused = parse(body).unwrap_err();
            assert_eq!(
                refused.0.message(),
                "the body must be a JSON object",
                "{body}"
            );
        }
        assert!(parse("")
            .unwrap_err()
            .0
            .message()
            .contains("missing field `items`"));
    }

    fn refusal(body: &str) -> String {
        let e = serde_json::from_slice::<Batch>(body.as_bytes()).unwrap_err();
        explain::<Batch>(body.as_bytes(), &e)
    }

    #[test]
    fn refusals_name_the_field_and_never_repeat_its_value() {
        let cases = [
            (
                r#"{"colour": "red"}"#,
                "unknown field `colour`, expected `items` or `limit` (line 1, column 9)",
            ),
            (
                r#"{"items": [{"plaintext": "AA=="}, {"plaintext": "c2VjcmV0", "context": {"tenant": 7}}]}"#,
                "items[1].context.tenant: expected a string (line 1, column 83)",
            ),
            (
                r#"{"items": [{"plaintext": "top-secret!"}]}"#,
                "items[0].plaintext: invalid base64 (line 1, column 38)",
            ),
            (
                r#"{"items": [], "limit": "hunter2"}"#,
                "limit: expected u32 (line 1, column 32)",
            ),
            (
                r#"{"items": [{"plaintext": "AA==", "colour": "red"}]}"#,
                "items[0]: unknown field `colour`, expected `plaintext` or `context` (line 1, column 41)",
            ),
            (r#"{"limit": 3}"#, "missing field `items` (line 1, column 12)"),
            (r#"{"items": [}"#, "malformed JSON (line 1, column 12)"),
            (r#"{"items": 5}"#, "items: expected a sequence (line 1, column 11)"),
        ];
        for (body, expected) in cases {
            let message = refusal(body);
            assert_eq!(message, expected, "{body}");
            for secret in ["hunter2", "top-secret", "red", "7"] {
                assert!(
                    !message.contains(&format!("\"{secret}"))
                        && !message.contains(&format!(" {secret}")),
                    "{message} repeats a value"
                );
            }
        }
    }

    #[test]
    fn a_nested_object_given_as_an_array_is_refused_by_name() {
        let body = r#"{"spec": "AES_256", "quorum": [2]}"#;
        let refused = super::parse::<keyward_api::CreateKeyRequest>(&super::RawBody(Ok(
            axum::body::Bytes::from_static(body.as_bytes()),
        )))
        .unwrap_err();
        assert_eq!(
            refused.0.message(),
            "quorum: expected an object (line 1, column 30)"
        );
    }
}
