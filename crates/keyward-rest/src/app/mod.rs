//! Shared state, the router and the middleware every request passes. The rest is split by responsibility:
//! `request.rs` what a request brings (context, body, parsing), `caller.rs` who calls and what it may do,
//! `pipeline.rs` the pipeline itself and the records the service makes.
//!
//! Every API call goes through [`call`]: authenticate → rate-limit → authorize (role) → run → append the audit
//! record and wait until it is durable → respond. Failures at any step are audited too; if the audit record
//! cannot be written, the request fails closed with `503 Unavailable`.

mod caller;
mod pipeline;
mod request;

pub use caller::*;
pub use pipeline::*;
pub use request::*;

use crate::authz::Action;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::{handlers, Config};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use keyward_core::audit::AuditLog;
use keyward_core::{Clock, ErrorCode, Kms, SystemClock};
use keyward_iam::limiter::Limiter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// The identity and access domain: tokens, policies, identities, approvals, operation markers.
    pub iam: keyward_iam::Iam,
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
        let iam = keyward_iam::Iam::open(&kms);
        App {
            limiter: Limiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            kms,
            audit,
            iam,
            metrics: Metrics::default(),
            node_id,
            config,
            clock: Arc::new(SystemClock),
            request_ids: RequestIds::new(),
            token: None,
            chain: Default::default(),
        }
    }
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
        verified: None,
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
    router_with(app, Router::new())
}

/// The API router with other front ends' routes beside it (the AWS KMS protocol's `POST /`): their
/// requests pass the same middleware (request id, time limit, body checks) into the same pipeline.
pub fn router_with(app: AppState, doors: Router<AppState>) -> Router {
    use handlers::{crypto, fields, keys, sys};
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
        .route(
            "/v1/keys/{key}/delete-imported-material",
            post(keys::delete_imported_material),
        )
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
        .route("/v1/keys/{key}/decapsulate", post(crypto::decapsulate))
        .route("/v1/keys/{key}/protect", post(fields::protect))
        .route("/v1/keys/{key}/unprotect", post(fields::unprotect))
        .route("/v1/keys/{key}/blind-index", post(fields::blind_index))
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
            "/v1/identities/{name}/access-keys",
            post(handlers::access_keys::create).get(handlers::access_keys::list),
        )
        .route(
            "/v1/identities/{name}/access-keys/{access_key_id}",
            delete(handlers::access_keys::delete),
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
        .route("/v1/auth/session", post(handlers::identities::session))
        .route("/v1/auth/logout", post(handlers::identities::logout))
        .route("/v1/sys/nodes", get(sys::nodes))
        .route("/v1/sys/activity", get(sys::activity))
        .route("/v1/auth/jwt/login", post(handlers::federation::jwt_login))
        .route("/v1/auth/methods", get(handlers::federation::methods))
        .route(
            "/v1/auth/jwt/issuers",
            get(handlers::federation::list_issuers),
        )
        .route(
            "/v1/auth/jwt/issuers/{name}",
            put(handlers::federation::put_issuer)
                .get(handlers::federation::get_issuer)
                .delete(handlers::federation::delete_issuer),
        )
        .route(
            "/v1/auth/ldap/login",
            post(handlers::federation::ldap_login),
        )
        .route(
            "/v1/auth/ldap/config",
            put(handlers::federation::put_ldap)
                .get(handlers::federation::get_ldap)
                .delete(handlers::federation::delete_ldap),
        )
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
        .merge(doors)
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), context))
        .with_state(app)
}

/// A front end served on a listener of its own (the Vault API), with the API's middleware (request id,
/// time limit, body checks) and state.
pub fn door(app: AppState, routes: Router<AppState>) -> Router {
    routes
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
