//! `sys/health`, `sys/seal-status`, `sys/mounts` (and a mount's `tune`), and `auth/token/lookup-self`: what
//! clients read before they use a secret engine.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::audit::rfc3339;
use keyward_rest::app::{run_noting, Mode, Reply};
use keyward_rest::authz::Action;
use keyward_rest::error::ApiError;

use crate::{envelope, error, render, Call, VAULT_VERSION};

type NoNote = fn() -> Option<String>;

pub(crate) async fn route(call: Call, rest: &str) -> Response {
    let get = call.method == Method::GET || call.method == Method::HEAD;
    match rest {
        "health" if get => health(call).await,
        "seal-status" if get => seal_status(call).await,
        "mounts" if get => mounts(call, None).await,
        _ if get && rest.starts_with("mounts/") => {
            let mount = rest
                .trim_start_matches("mounts/")
                .trim_end_matches('/')
                .trim_end_matches("/tune")
                .to_string();
            mounts(call, Some(mount)).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "this path of Vault's API is not served by Keyward",
        ),
    }
}

/// `sys/health`: 200 when unsealed and active, 503 sealed, 501 not initialised (Vault's codes; each can be
/// changed by the query parameters Vault takes, `sealedcode` and `uninitcode`).
async fn health(call: Call) -> Response {
    let app = call.app.clone();
    let query = call.query.clone();
    let result = run_noting(
        &call.app,
        &call.meta,
        Action::Health,
        None,
        None::<NoNote>,
        Mode::Inline,
        move |_| {
            let s = app.kms.status();
            let code = |name: &str, default: u16| {
                crate::query_value(&query, name)
                    .and_then(|v| v.parse::<u16>().ok())
                    .unwrap_or(default)
            };
            let status = if !s.initialized {
                code("uninitcode", 501)
            } else if s.sealed {
                code("sealedcode", 503)
            } else {
                code("activecode", 200)
            };
            let body = serde_json::json!({
                "initialized": s.initialized,
                "sealed": s.sealed,
                "standby": false,
                "performance_standby": false,
                "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled",
                "server_time_utc": app.clock.now(),
                "version": VAULT_VERSION,
                "cluster_name": "keyward",
            });
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Reply::with_status(status, &body)
        },
    )
    .await;
    match result {
        Ok(reply) => {
            let (status, body) = reply.into_parts();
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => render(Err(e)),
    }
}

/// `sys/seal-status`, public as in Vault.
async fn seal_status(call: Call) -> Response {
    let app = call.app.clone();
    render(
        run_noting(
            &call.app,
            &call.meta,
            Action::Status,
            None,
            None::<NoNote>,
            Mode::Inline,
            move |_| {
                let s = app.kms.status();
                Reply::ok(&serde_json::json!({
                    "type": "shamir",
                    "initialized": s.initialized,
                    "sealed": s.sealed,
                    "t": s.threshold,
                    "n": s.shares,
                    "progress": s.progress,
                    "nonce": "",
                    "version": VAULT_VERSION,
                    "migration": false,
                    "recovery_seal": false,
                    "storage_type": "keyward",
                }))
            },
        )
        .await,
    )
}

/// One mount as `sys/mounts` describes it.
fn mount_entry(name: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "kv",
        "description": format!("Keyward secrets of mount {name}"),
        "accessor": format!("kv_{name}"),
        "options": { "version": "2" },
        "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
        "local": false,
        "seal_wrap": false,
        "external_entropy_access": false,
    })
}

/// `sys/mounts` (every mount) or `sys/mounts/<mount>/tune` (one): names and options only, to any
/// authenticated caller, as a mount's existence is no secret of its contents.
async fn mounts(call: Call, one: Option<String>) -> Response {
    let app = call.app.clone();
    let request_id = call.meta.request_id.clone();
    render(
        run_noting(
            &call.app,
            &call.meta,
            Action::KvListMounts,
            None,
            None::<NoNote>,
            Mode::Inline,
            move |_| {
                let mounts = &app.config.kv_mounts;
                match one {
                    Some(m) => {
                        if !mounts.contains(&m) {
                            return Err(ApiError::new(
                                keyward_core::ErrorCode::ValidationError,
                                format!("cannot fetch sysview for path \"{m}/\""),
                            ));
                        }
                        let tune = serde_json::json!({
                            "description": format!("Keyward secrets of mount {m}"),
                            "default_lease_ttl": 2_764_800,
                            "max_lease_ttl": 2_764_800,
                            "force_no_cache": false,
                            "options": { "version": "2" },
                        });
                        let mut body = tune.clone();
                        body["data"] = tune;
                        body["request_id"] = request_id.into();
                        Reply::ok(&body)
                    }
                    None => {
                        let table: serde_json::Map<String, serde_json::Value> = mounts
                            .iter()
                            .map(|m| (format!("{m}/"), mount_entry(m)))
                            .collect();
                        let mut body = serde_json::Value::Object(table.clone());
                        body["data"] = serde_json::Value::Object(table);
                        body["request_id"] = request_id.into();
                        Reply::ok(&body)
                    }
                }
            },
        )
        .await,
    )
}

/// `auth/token/lookup-self`: the caller's identity, roles and policies, and when its token expires (never
/// the token itself).
pub(crate) async fn lookup_self(call: Call) -> Response {
    if call.method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation");
    }
    let app = call.app.clone();
    let request_id = call.meta.request_id.clone();
    render(
        run_noting(
            &call.app,
            &call.meta,
            Action::GetCallerIdentity,
            None,
            None::<NoNote>,
            Mode::Inline,
            move |caller| {
                let p = &caller.principal;
                let now = app.clock.now();
                let mut policies: Vec<String> =
                    p.roles.iter().map(|r| r.name().to_string()).collect();
                policies.extend(p.policies.iter().cloned());
                let data = serde_json::json!({
                    "accessor": p.token_id,
                    "display_name": p.name,
                    "entity_id": p.name,
                    "expire_time": p.expires_at.map(rfc3339),
                    "ttl": p.expires_at.map_or(0, |e| (e - now).max(0)),
                    "explicit_max_ttl": 0,
                    "num_uses": 0,
                    "orphan": true,
                    "path": "auth/token/create",
                    "policies": policies,
                    "renewable": false,
                    "type": "service",
                    "meta": null,
                });
                Reply::ok(&envelope(&request_id, data))
            },
        )
        .await,
    )
}
