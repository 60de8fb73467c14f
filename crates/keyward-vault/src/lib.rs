//! HashiCorp Vault's HTTP API, the part that real clients use, so that a Vault user moves to Keyward by
//! changing an address and a token: `hvac` and the Vault CLI for KV version 2 and health, and MariaDB's
//! `hashicorp_key_management` plugin, which reads the keys of transparent database encryption from KV.
//!
//! It is served on a listener of its own (`vault_listen`), since Vault's paths (`/v1/sys/...`) are
//! Keyward's too. The door is thin: it takes the token from `X-Vault-Token` (or `Authorization: Bearer`),
//! and runs each operation through the REST API's pipeline, so that authorization (roles, policies with
//! `kv:*` actions on `kv/<mount>/<path>` resources, rate limits), the audit record and sealing are the same
//! rules, written once; secrets are the core's (`keyward_core::secrets`). What is its own is the mapping:
//! Vault's paths and JSON in, Vault's envelopes, status codes and `{"errors": [...]}` out.

mod auth;
mod kv;
mod sys;
mod transit;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use keyward_core::ErrorCode;
use keyward_rest::app::{Bearer, Meta, RawBody, Reply};
use keyward_rest::error::ApiError;
use keyward_rest::AppState;

/// The version `sys/health` and `sys/seal-status` report: the Vault API generation this door follows.
pub const VAULT_VERSION: &str = "1.15.0+keyward";

/// The Vault API's routes, with the REST API's middleware (request id, time limit, body checks).
pub fn router(app: AppState) -> Router {
    keyward_rest::app::door(
        app,
        Router::new()
            .route("/v1/{*path}", any(dispatch))
            .fallback(unknown),
    )
}

async fn unknown() -> Response {
    error(StatusCode::NOT_FOUND, "no handler for route")
}

/// What a request asks, parsed from Vault's path.
pub(crate) struct Call {
    pub app: AppState,
    pub meta: Meta,
    pub method: Method,
    pub query: String,
    pub body: RawBody,
}

impl Call {
    /// Whether the request is a `LIST` (the method, or `GET ?list=true`).
    pub fn is_list(&self) -> bool {
        self.method.as_str() == "LIST"
            || (self.method == Method::GET && query_value(&self.query, "list") == Some("true"))
    }
}

/// One query parameter's value.
pub(crate) fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn dispatch(
    State(app): State<AppState>,
    mut meta: Meta,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    if let Some(token) = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        meta.bearer = Some(Bearer::new(token));
    }
    let path = uri.path().strip_prefix("/v1/").unwrap_or("").to_string();
    let call = Call {
        app,
        meta,
        method,
        query: uri.query().unwrap_or("").to_string(),
        body,
    };
    let (first, rest) = path.split_once('/').unwrap_or((path.as_str(), ""));
    match first {
        "sys" => sys::route(call, rest).await,
        "auth" if rest == "token/lookup-self" => sys::lookup_self(call).await,
        "auth" if rest.starts_with("ldap/login/") => {
            let user = rest["ldap/login/".len()..].to_string();
            auth::ldap(call, &user).await
        }
        "auth"
            if rest.ends_with("/login") && !rest[..rest.len() - "/login".len()].contains('/') =>
        {
            let issuer = rest[..rest.len() - "/login".len()].to_string();
            auth::jwt(call, &issuer).await
        }
        mount if !mount.is_empty() && call.app.config.transit_mount == mount => {
            let mount = mount.to_string();
            transit::route(call, mount, rest).await
        }
        mount if call.app.config.kv_mounts.iter().any(|m| m == mount) => {
            let mount = mount.to_string();
            kv::route(call, mount, rest).await
        }
        _ => error(StatusCode::NOT_FOUND, "no handler for route"),
    }
}

/// Vault's envelope around a response's `data`, serialized as it stands (no JSON tree is built for it).
#[derive(serde::Serialize)]
pub(crate) struct Envelope<'a, T: serde::Serialize> {
    request_id: &'a str,
    lease_id: &'static str,
    renewable: bool,
    lease_duration: u32,
    data: T,
    wrap_info: Option<()>,
    warnings: Option<()>,
    auth: Option<()>,
}

/// `data` in Vault's envelope.
pub(crate) fn envelope<T: serde::Serialize>(request_id: &str, data: T) -> Envelope<'_, T> {
    Envelope {
        request_id,
        lease_id: "",
        renewable: false,
        lease_duration: 0,
        data,
        wrap_info: None,
        warnings: None,
        auth: None,
    }
}

/// The status Vault answers an error with.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::ValidationError
        | ErrorCode::IncorrectKeyUsage
        | ErrorCode::InvalidCiphertext
        | ErrorCode::IncorrectKeyMaterial
        | ErrorCode::KeyDisabled
        | ErrorCode::KeyPendingDeletion
        | ErrorCode::KeyDestroyed
        | ErrorCode::AlreadyExists
        | ErrorCode::InvalidState => StatusCode::BAD_REQUEST,
        // Vault answers a missing or unknown token as it answers a denial.
        ErrorCode::Unauthenticated | ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Throttled => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Sealed => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error in Vault's shape: `{"errors": ["..."]}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [message] });
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, Body::from(body)).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The pipeline's answer in Vault's shape. Vault names a denial "permission denied" whatever its cause,
/// and so does this door; the audit record keeps the cause.
pub(crate) fn render(result: Result<Reply, ApiError>) -> Response {
    match result {
        Ok(reply) => {
            let (status, body) = reply.into_parts();
            if status == StatusCode::NO_CONTENT {
                return StatusCode::NO_CONTENT.into_response();
            }
            json(status, body)
        }
        Err(e) => {
            let status = status_of(e.code());
            let message = match e.code() {
                ErrorCode::Unauthenticated | ErrorCode::AccessDenied => "permission denied",
                ErrorCode::Sealed => "Keyward is sealed",
                _ => e.0.message(),
            };
            error(status, message)
        }
    }
}
