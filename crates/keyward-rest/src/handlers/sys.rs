//! `/v1/health`, `/v1/sys/*`, `/metrics`, `/v1/openapi.json`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use keyward_api::{
    BackupResponse, Health, InitRequest, InitResponse, RestoreRequest, RestoreResponse,
    RotateRootResponse, SysStatus, UnsealRequest, B64,
};
use keyward_core::audit::rfc3339;
use keyward_core::{ErrorCode, SealStatus};
use serde::Serialize;

use crate::app::{call, parse, text, AppState, Meta, Mode, RawBody, Reply};
use crate::authz::{Action, Role};
use crate::error::{json_response, ApiError};

/// The OpenAPI document, kept in the repository beside the code.
pub const OPENAPI: &str = include_str!("../../openapi.json");

fn status_body(s: SealStatus, module: keyward_hsm::CryptoModule) -> SysStatus {
    SysStatus {
        fips: module.fips,
        crypto_module: Some(keyward_api::CryptoModuleInfo {
            name: module.name,
            version: module.version,
        }),
        initialized: s.initialized,
        sealed: s.sealed,
        threshold: s.threshold,
        shares: s.shares,
        progress: s.progress,
        root_of_trust: s.root_of_trust.map(|r| r.as_str().to_string()),
    }
}

/// `GET /v1/health`: 200 when ready to serve keys, 503 otherwise; for load balancers, so not audited. A node
/// of a shared store that has not heard from its database within the cache trust window answers
/// `unavailable`, so a load balancer drains a node cut off from the database.
pub async fn health(State(app): State<AppState>) -> Response {
    let s = app.kms.status();
    let status = if !s.initialized {
        "uninitialized"
    } else if s.sealed {
        "sealed"
    } else if !app.kms.caches_trusted() {
        "unavailable"
    } else {
        "ok"
    };
    // A broken audit chain does not stop the node (a load balancer keeps routing to it: 200), but it must
    // never read as healthy.
    let reason = (status == "ok")
        .then(|| app.chain.status().broken)
        .flatten();
    let status = if reason.is_some() { "degraded" } else { status };
    let body = Health {
        reason,
        status: status.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        node_id: app.node_id.clone(),
    };
    let code = if matches!(status, "ok" | "degraded") {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, serde_json::to_vec(&body).unwrap_or_default())
}

/// `GET /v1/sys/status`.
pub async fn status(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(&app, &meta, Action::Status, None, Mode::Inline, move |_| {
        Reply::ok(&status_body(a.kms.status(), a.kms.crypto_module()))
    })
    .await
}

/// `POST /v1/sys/init`: once; returns the unseal shares and the root token.
pub async fn init(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let a = app.clone();
    call(&app, &meta, Action::Init, None, Mode::Blocking, move |_| {
        if a.config.dev {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                "a dev-mode server is initialised at start",
            ));
        }
        let shares = if a.token.is_some() {
            // The token is the root of trust: no shares to hand out, and the service unseals itself.
            if !body.0.as_ref().is_ok_and(|b| b.is_empty()) {
                let _: serde_json::Value = parse(&body)?;
            }
            crate::pkcs11_init(&a)?;
            Vec::new()
        } else {
            let req: InitRequest = parse(&body)?;
            a.kms.init_shamir(req.shares, req.threshold)?
        };
        let (root_token, rec) =
            a.iam
                .auth
                .mint("root", &[Role::Admin], a.clock.now(), None, None)?;
        Reply::ok(&InitResponse {
            shares,
            root_token,
            root_token_id: rec.token_id,
        })
    })
    .await
}

/// `POST /v1/sys/unseal`.
pub async fn unseal(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Unseal,
        None,
        Mode::Blocking,
        move |_| {
            // A token-rooted node needs no share: the token opens its unseal key, as at start.
            if let Some(token) = &a.token {
                if a.kms.status().root_of_trust == Some(keyward_core::RootOfTrust::Pkcs11) {
                    crate::pkcs11_unseal(&a.kms, token)
                        .map_err(|m| ApiError::new(ErrorCode::Unavailable, m))?;
                    return Reply::ok(&status_body(a.kms.status(), a.kms.crypto_module()));
                }
            }
            let req: UnsealRequest = parse(&body)?;
            let s = a.kms.unseal(&req.share)?;
            Reply::ok(&status_body(s, a.kms.crypto_module()))
        },
    )
    .await
}

/// `POST /v1/sys/seal`: drops every key from memory.
pub async fn seal(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(&app, &meta, Action::Seal, None, Mode::Blocking, move |_| {
        a.kms.seal()?;
        a.iam.access_keys.forget_all();
        Ok(Reply::empty())
    })
    .await
}

/// `POST /v1/sys/rotate-root` (waits for quorum when the service requires approvals).
pub async fn rotate_root(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::RotateRoot,
        None,
        Mode::Blocking,
        move |caller| {
            if a.config.quorum_approvals > 0 {
                let m = a.config.quorum_approvals;
                return crate::handlers::approvals::request(
                    &a,
                    &caller,
                    crate::handlers::approvals::Operation::RotateRoot,
                    m,
                );
            }
            Reply::ok(&RotateRootResponse {
                generation: a.kms.rotate_root()?,
            })
        },
    )
    .await
}

/// Namespace records a restore into a running cluster brings back beside the keys: identities (with their
/// certificate subjects) and policies. Tokens are not among them: a token revoked since the backup stays
/// revoked.
const RESTORED_NAMESPACES: [&str; 3] = [
    crate::handlers::identities::IDENTITIES,
    crate::handlers::identities::SUBJECTS,
    crate::handlers::policies::POLICIES,
];

/// `POST /v1/sys/backup`: a consistent, encrypted and authenticated snapshot of the whole store.
pub async fn backup(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Backup,
        None,
        Mode::Blocking,
        move |_| {
            Reply::ok(&BackupResponse {
                backup: B64(a.kms.backup()?),
            })
        },
    )
    .await
}

/// `POST /v1/sys/restore`. On an uninitialised node it is the disaster-recovery form of init (public, like
/// init, and authenticated by the unseal shares it carries); on a running node it is an admin action.
pub async fn restore(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let a = app.clone();
    let action = if app.kms.status().initialized {
        Action::Restore
    } else {
        Action::Init
    };
    call(&app, &meta, action, None, Mode::Blocking, move |_| {
        if a.config.dev {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                "a dev-mode server does not restore backups; restore into a node started without --dev",
            ));
        }
        // On a fresh node this is public, like generate-root: slow down whoever guesses at it.
        if !a.kms.status().initialized && !a.limiter.allow("sys:restore") {
            return Err(ApiError::new(
                ErrorCode::Throttled,
                "too many attempts; retry shortly",
            ));
        }
        let req: RestoreRequest = parse(&body)?;
        let done = a.kms.restore(
            &req.backup.0,
            req.shares.as_deref(),
            req.force,
            &RESTORED_NAMESPACES,
        )?;
        a.iam.auth.forget_all();
        a.iam.policies.forget_all();
        Reply::ok(&RestoreResponse {
            restored_keys: done.restored_keys,
            initialized: done.initialized,
        })
    })
    .await
}

/// `POST /v1/sys/generate-root` `{"shares": [...]}`: mints a new root token for holders of a threshold of
/// unseal shares (the way back in after the root token was revoked or lost). Rate-limited and audited.
pub async fn generate_root(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        shares: Vec<zeroize::Zeroizing<String>>,
    }
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GenerateRoot,
        None,
        Mode::Blocking,
        move |_| {
            if !a.limiter.allow("sys:generate-root") {
                return Err(ApiError::new(
                    ErrorCode::Throttled,
                    "too many attempts; retry shortly",
                ));
            }
            let req: Req = parse(&body)?;
            if req.shares.len() > 255 {
                return Err(ApiError::validation("at most 255 shares"));
            }
            a.kms.check_shares(&req.shares)?;
            let (token, rec) =
                a.iam
                    .auth
                    .mint("root", &[Role::Admin], a.clock.now(), None, None)?;
            Reply::ok(&serde_json::json!({ "root_token": token, "token_id": rec.token_id }))
        },
    )
    .await
}

/// `GET /metrics` (Prometheus text). Admin only: metrics reveal key usage patterns.
pub async fn metrics(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    let resp = call(
        &app,
        &meta,
        Action::GetMetrics,
        None,
        Mode::Inline,
        move |_| Ok(Reply::empty()),
    )
    .await;
    if resp.status() != StatusCode::NO_CONTENT {
        return resp;
    }
    text(StatusCode::OK, "text/plain; version=0.0.4", {
        let mut out = a.metrics.render(a.kms.is_sealed(), a.kms.cache_stats());
        let chain = a.chain.status();
        if chain.checked_at_ms.is_some() {
            out.push_str(&format!(
                    "# HELP keyward_audit_chain_valid Whether the last check of the audit chain found it whole (0: tampered with).\n# TYPE keyward_audit_chain_valid gauge\nkeyward_audit_chain_valid {}\n",
                    u8::from(chain.broken.is_none())
                ));
        }
        out.push_str(&format!(
            "# HELP keyward_audit_sink_failures_total Batches of audit records a sink (audit_file, audit_syslog) could not take; each is delivered again from the store.
# TYPE keyward_audit_sink_failures_total counter
keyward_audit_sink_failures_total {}
",
            a.audit.sink_failures()
        ));
        out
    })
}

/// `GET /v1/openapi.json`: public, like the API contract itself.
pub async fn openapi() -> Response {
    text(StatusCode::OK, "application/json", OPENAPI)
}

#[derive(Serialize)]
struct NodeObject {
    node_id: String,
    version: String,
    started_at: String,
    last_seen: String,
    /// `serving`, or `silent` when no heartbeat came for three background rounds.
    status: &'static str,
    leader: bool,
    chain: ChainObject,
}

#[derive(Serialize)]
struct ChainObject {
    whole: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    checked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct NodeList {
    nodes: Vec<NodeObject>,
}

/// `GET /v1/sys/nodes`: every node of the store by its last heartbeat, with its view of the audit chain.
pub async fn nodes(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListNodes,
        None,
        Mode::Blocking,
        move |_| {
            let now = a.clock.now();
            let silent_after = 3 * a.config.background_interval_seconds.max(1) as i64;
            let mut nodes: Vec<NodeObject> = a
                .kms
                .nodes()?
                .into_iter()
                .map(|b| NodeObject {
                    status: if now - b.seen_at > silent_after {
                        "silent"
                    } else {
                        "serving"
                    },
                    started_at: rfc3339(b.started_at),
                    last_seen: rfc3339(b.seen_at),
                    chain: ChainObject {
                        whole: b.chain_broken.is_none(),
                        checked_at: b.chain_checked_at.map(rfc3339),
                        reason: b.chain_broken,
                    },
                    node_id: b.node_id,
                    version: b.version,
                    leader: b.leader,
                })
                .collect();
            nodes.sort_by(|x, y| x.node_id.cmp(&y.node_id));
            Reply::ok(&NodeList { nodes })
        },
    )
    .await
}

#[derive(Serialize)]
struct MinuteObject {
    start: String,
    allowed: u64,
    refused: u64,
    failed: u64,
}

#[derive(Serialize)]
struct Activity {
    node_id: String,
    minutes: Vec<MinuteObject>,
}

/// `GET /v1/sys/activity`: this node's requests per minute over the last hour, by outcome.
pub async fn activity(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GetActivity,
        None,
        Mode::Inline,
        move |_| {
            let minutes = a
                .metrics
                .last_hour(a.clock.now())
                .into_iter()
                .map(|m| MinuteObject {
                    start: rfc3339(m.start),
                    allowed: m.allowed,
                    refused: m.refused,
                    failed: m.failed,
                })
                .collect();
            Reply::ok(&Activity {
                node_id: a.node_id.clone(),
                minutes,
            })
        },
    )
    .await
}
