//! Identities, tokens and password login.
//!
//! Passwords are stored as Argon2id PHC strings; a login for an unknown name still runs Argon2 against a
//! fixed hash so the answer takes the same time either way. Failed logins are rate-limited per name and
//! audited like every request.

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyward_core::audit::rfc3339;
use keyward_core::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::app::{call, parse, AppState, Meta, Mode, RawBody, Reply};
use crate::authz::{Action, Role};
use crate::convert::hex;
use crate::error::ApiError;

use keyward_iam::identities::{not_found, IdentityRecord};
pub(crate) use keyward_iam::identities::{IDENTITIES, SUBJECTS};

/// The principal a verified client certificate stands for.
pub fn by_certificate(
    app: &AppState,
    subject: &str,
) -> Result<std::sync::Arc<crate::auth::Principal>, ApiError> {
    Ok(std::sync::Arc::new(
        app.iam.identities.by_certificate(subject)?,
    ))
}

/// Token lifetime when the request names none.
pub const DEFAULT_TTL: i64 = 24 * 3600;
/// Longest token lifetime.
pub const MAX_TTL: i64 = 366 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateIdentity {
    name: String,
    kind: String,
    #[serde(default, deserialize_with = "keyward_api::null_as_default")]
    roles: Vec<String>,
    #[serde(default, deserialize_with = "keyward_api::null_as_default")]
    policies: Vec<String>,
    #[serde(default)]
    password: Option<zeroize::Zeroizing<String>>,
    #[serde(default)]
    certificate_subject: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Serialize)]
struct IdentityObject {
    name: String,
    kind: String,
    roles: Vec<String>,
    policies: Vec<String>,
    created_at: String,
    password: bool,
    mfa: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// `PATCH /v1/identities/{name}`: what is not given stays as it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateIdentity {
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    policies: Option<Vec<String>>,
}

#[derive(Serialize)]
struct IdentityList {
    identities: Vec<IdentityObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

#[derive(Serialize)]
struct TokenResponse {
    token: zeroize::Zeroizing<String>,
    token_id: String,
    expires_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    name: String,
    password: zeroize::Zeroizing<String>,
    #[serde(default)]
    totp: Option<String>,
}

#[derive(Serialize)]
struct LoginResponse {
    token: zeroize::Zeroizing<String>,
    token_id: String,
    expires_at: String,
    mfa: bool,
}

fn object(r: &IdentityRecord) -> IdentityObject {
    IdentityObject {
        name: r.name.clone(),
        kind: r.kind.clone(),
        roles: r.roles.clone(),
        policies: r.policies.clone(),
        created_at: rfc3339(r.created_at),
        password: r.password_hash.is_some(),
        mfa: r.totp_seed.is_some(),
        certificate_subject: r.certificate_subject.clone(),
        source: r.source.clone(),
    }
}

fn valid_name(n: &str) -> bool {
    keyward_iam::names::valid_identity(n)
}

fn load(app: &AppState, name: &str) -> Result<Option<IdentityRecord>, ApiError> {
    Ok(app.iam.identities.get(name)?)
}

fn missing(name: &str) -> ApiError {
    ApiError(not_found(name))
}

/// The `name` a create or login body gives, read leniently ahead of the real parse, for the records: an
/// attempt on an account is recorded under that account even when the body is refused. Only a well-formed
/// identity name is taken.
fn body_name(body: &RawBody) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    let bytes = body.0.as_ref().ok()?;
    let name = serde_json::from_slice::<Named>(bytes).ok()?.name;
    valid_name(&name).then_some(name)
}

fn roles_of(rec: &IdentityRecord) -> Vec<Role> {
    rec.roles()
}

fn unauthenticated() -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, "unknown name or wrong password")
}

/// A PHC string for a password nobody has, so unknown names cost a full Argon2 verification too.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"keyward decoy password")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// `POST /v1/identities`.
pub async fn create(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let meta = match body_name(&body) {
        Some(name) => meta.on(crate::app::resource("identity", &name)),
        None => meta,
    };
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::CreateIdentity,
        None,
        Mode::Blocking,
        move |_| {
            let req: CreateIdentity = parse(&body)?;
            keyward_iam::names::check_identity(&req.name)?;
            if !matches!(req.kind.as_str(), "service" | "user") {
                return Err(ApiError::validation("kind is service or user"));
            }
            if let Some(source) = &req.source {
                let known = source == "ldap"
                    || source
                        .strip_prefix("jwt:")
                        .is_some_and(|n| keyward_iam::jwt::check_name(n).is_ok());
                if !known || req.password.is_some() {
                    return Err(ApiError::validation(
                        "source is ldap or jwt:<issuer>, for an identity that signs in only through that provider (no password)",
                    ));
                }
            }
            let password_hash = match &req.password {
                None => None,
                Some(_) if req.kind != "user" => {
                    return Err(ApiError::validation(
                        "only user identities log in with a password",
                    ))
                }
                Some(p) if !(12..=1024).contains(&p.chars().count()) => {
                    return Err(ApiError::validation("passwords are 12 to 1024 characters"))
                }
                Some(p) => Some(
                    Argon2::default()
                        .hash_password(p.as_bytes())
                        .map_err(|_| {
                            ApiError::new(ErrorCode::Unavailable, "password hashing failed")
                        })?
                        .to_string(),
                ),
            };
            let rec = IdentityRecord {
                name: req.name.clone(),
                kind: req.kind,
                roles: req.roles,
                policies: req.policies,
                created_at: a.clock.now(),
                password_hash,
                totp_seed: None,
                totp_last_step: None,
                certificate_subject: req.certificate_subject.clone(),
                source: req.source.clone(),
            };
            a.iam.identities.create(&rec)?;
            Reply::with_status(StatusCode::CREATED, &object(&rec))
        },
    )
    .await
}

/// `POST /v1/identities/{name}/tokens`.
pub async fn token(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
    body: RawBody,
) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::CreateToken,
        None,
        Mode::Blocking,
        move |_| {
            let req: TokenRequest = parse(&body)?;
            let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TTL);
            if !(1..=MAX_TTL).contains(&ttl) {
                return Err(ApiError::validation(
                    "ttl_seconds must be 1 to 31622400 (366 days)",
                ));
            }
            let rec = load(&a, &name)?.ok_or_else(|| missing(&name))?;
            let (token, t) = a.iam.auth.mint_with_mfa(
                &rec.name,
                &roles_of(&rec),
                &rec.policies,
                a.clock.now(),
                Some(ttl),
                false,
            )?;
            Reply::with_status(
                StatusCode::CREATED,
                &TokenResponse {
                    token,
                    token_id: t.token_id,
                    expires_at: rfc3339(t.expires_at.unwrap_or_default()),
                },
            )
        },
    )
    .await
}

#[derive(Serialize)]
struct TokenInfo {
    token_id: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    mfa: bool,
}

/// `GET /v1/identities/{name}/tokens`: the identity's live tokens by id (to revoke one), never their values;
/// oldest first, paged like every list (a service may hold many).
pub async fn tokens(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListTokens,
        None,
        Mode::Blocking,
        move |_| {
            if name != "root" && load(&a, &name)?.is_none() {
                return Err(missing(&name));
            }
            // Named by creation time (zero-padded) and id: the order of names, which pages follow, is
            // the order the tokens were issued in.
            let all = a
                .iam
                .auth
                .tokens_of(&name, a.clock.now())?
                .into_iter()
                .map(|t| {
                    let order = format!("{:020}{}", t.created_at.max(0), t.token_id);
                    let info = TokenInfo {
                        token_id: t.token_id,
                        created_at: rfc3339(t.created_at),
                        expires_at: t.expires_at.map(rfc3339),
                        mfa: t.mfa,
                    };
                    (order, info)
                })
                .collect();
            let (page, next_token) = crate::handlers::keys::page(all, &q)?;
            let tokens: Vec<TokenInfo> = page.into_iter().map(|(_, t)| t).collect();
            Reply::ok(&serde_json::json!({ "tokens": tokens, "next_token": next_token }))
        },
    )
    .await
}

/// `GET /v1/auth/self`: the caller as the service sees it. Only what the credential itself carries, so
/// it answers from the token cache without touching the store.
pub async fn caller(State(app): State<AppState>, meta: Meta) -> Response {
    let by_certificate = meta.bearer.is_none() && meta.client_subject.is_some();
    call(
        &app,
        &meta,
        Action::GetCallerIdentity,
        None,
        Mode::Inline,
        move |caller| {
            let p = &caller.principal;
            Reply::ok(&keyward_api::CallerIdentity {
                name: p.name.clone(),
                roles: p.roles.iter().map(|r| r.name().to_string()).collect(),
                policies: p.policies.clone(),
                authenticated_by: if by_certificate {
                    "certificate"
                } else {
                    "token"
                }
                .into(),
                token_id: (!by_certificate).then(|| p.token_id.clone()),
                expires_at: p.expires_at.map(rfc3339),
                mfa: p.mfa,
            })
        },
    )
    .await
}

/// `DELETE /v1/tokens/{token_id}`.
pub async fn revoke(
    State(app): State<AppState>,
    meta: Meta,
    Path(token_id): Path<String>,
) -> Response {
    let meta = meta.on(crate::app::resource("token", &token_id));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::RevokeToken,
        None,
        Mode::Blocking,
        move |_| {
            if a.iam.auth.revoke(&token_id)? {
                Ok(Reply::empty())
            } else {
                Err(ApiError::new(ErrorCode::NotFound, "no such token"))
            }
        },
    )
    .await
}

/// `POST /v1/auth/login`: password, and the TOTP code when MFA is enrolled.
pub async fn login(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    // A login names its account in the records only if that identity exists: a password typed into the
    // name field must not reach the audit log (the answer is the same either way, after Argon2).
    let meta = match body_name(&body) {
        Some(name) => {
            let (a, n) = (app.clone(), name.clone());
            let known = tokio::task::spawn_blocking(move || matches!(load(&a, &n), Ok(Some(_))))
                .await
                .unwrap_or(false);
            if known {
                meta.on(crate::app::resource("identity", &name))
            } else {
                meta
            }
        }
        None => meta,
    };
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Login,
        None,
        Mode::Blocking,
        move |_| {
            let req: LoginRequest = parse(&body)?;
            if req.name.len() > 64 || req.password.chars().count() > 1024 {
                return Err(unauthenticated());
            }
            if !a.limiter.allow(&format!("login:{}", req.name)) {
                return Err(ApiError::new(
                    ErrorCode::Throttled,
                    "too many login attempts; retry shortly",
                ));
            }
            let mut rec = check_password(&a, &req)?;
            let mfa = check_second_factor(&a, &mut rec, req.totp.as_deref())?;
            let (token, t) = a.iam.auth.mint_with_mfa(
                &rec.name,
                &roles_of(&rec),
                &rec.policies,
                a.clock.now(),
                Some(DEFAULT_TTL),
                mfa,
            )?;
            Reply::ok(&LoginResponse {
                token,
                token_id: t.token_id,
                expires_at: rfc3339(t.expires_at.unwrap_or_default()),
                mfa,
            })
        },
    )
    .await
}

/// The identity whose password this is; an unknown name costs a full Argon2 verification too, against a
/// decoy, so that the answer's timing does not tell which names exist.
fn check_password(a: &AppState, req: &LoginRequest) -> Result<IdentityRecord, ApiError> {
    let rec = load(a, &req.name)?;
    let stored = rec
        .as_ref()
        .and_then(|r| r.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_string());
    let ok = Argon2::default()
        .verify_password(req.password.as_bytes(), stored.as_str())
        .is_ok();
    match rec {
        Some(r) if ok && r.password_hash.is_some() => Ok(r),
        _ => Err(unauthenticated()),
    }
}

/// Checks the TOTP code when the identity has MFA enrolled (each code works once); says whether the login
/// is MFA-backed.
pub(crate) fn check_second_factor(
    a: &AppState,
    rec: &mut IdentityRecord,
    totp: Option<&str>,
) -> Result<bool, ApiError> {
    let Some(blob) = rec.totp_seed.clone() else {
        if totp.is_some() {
            return Err(ApiError::validation("this identity has no TOTP enrolled"));
        }
        return Ok(false);
    };
    let code = totp.ok_or_else(|| {
        ApiError::new(
            ErrorCode::AccessDenied,
            "MFA is required: give the current TOTP code",
        )
    })?;
    let seed = a.kms.unprotect(
        &totp_aad(&rec.name),
        &crate::convert::unhex(&blob).unwrap_or_default(),
    )?;
    let step = crate::totp::verify(seed.expose(), code, a.clock.now(), rec.totp_last_step)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "wrong or already used TOTP code",
            )
        })?;
    rec.totp_last_step = Some(step);
    a.iam.identities.use_totp_step(rec, step)?;
    Ok(true)
}

fn totp_aad(name: &str) -> Vec<u8> {
    format!("keyward:totp:{name}").into_bytes()
}

#[derive(Serialize)]
struct MfaResponse {
    totp_uri: String,
}

/// The longest life of a session token (`POST /v1/auth/session`).
pub const SESSION_TTL: i64 = 12 * 3600;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    #[serde(default)]
    ttl_seconds: Option<i64>,
    #[serde(default)]
    totp: Option<String>,
}

/// `POST /v1/auth/session`: a token for a session of the caller's own (a console sign-in), so that ending
/// the session revokes that token and not the one that opened it.
pub async fn session(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let parent = meta.bearer.clone();
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::CreateSession,
        None,
        Mode::Blocking,
        move |caller| {
            let req: SessionRequest = if body.0.as_ref().is_ok_and(|b| b.is_empty()) {
                SessionRequest::default()
            } else {
                parse(&body)?
            };
            let ttl = req.ttl_seconds.unwrap_or(SESSION_TTL);
            if !(60..=SESSION_TTL).contains(&ttl) {
                return Err(ApiError::validation("ttl_seconds is 60 to 43200"));
            }
            let parent = parent.ok_or_else(|| {
                ApiError::validation("a session is opened with a token (not a client certificate)")
            })?;
            // A TOTP code steps the session up to MFA (each code works once, as at login).
            let stepped_up = match req.totp.as_deref() {
                Some(code) => {
                    let mut rec = load(&a, &caller.principal.name)?.ok_or_else(|| {
                        ApiError::validation("this identity has no TOTP enrolled")
                    })?;
                    if rec.totp_seed.is_none() {
                        return Err(ApiError::validation("this identity has no TOTP enrolled"));
                    }
                    check_second_factor(&a, &mut rec, Some(code))?
                }
                None => false,
            };
            let (token, t) = a
                .iam
                .auth
                .derive(parent.expose(), a.clock.now(), ttl, stepped_up)?;
            Reply::ok(&LoginResponse {
                token,
                token_id: t.token_id,
                expires_at: rfc3339(t.expires_at.unwrap_or_default()),
                mfa: t.mfa,
            })
        },
    )
    .await
}

/// `POST /v1/auth/logout`: revokes the token the request carries: anyone may end their own session.
pub async fn logout(State(app): State<AppState>, meta: Meta) -> Response {
    let by_token = meta.bearer.is_some();
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Logout,
        None,
        Mode::Blocking,
        move |caller| {
            if !by_token {
                return Err(ApiError::validation(
                    "only a token can be revoked (a client certificate is not)",
                ));
            }
            a.iam.auth.revoke(&caller.principal.token_id)?;
            Ok(Reply::empty())
        },
    )
    .await
}

/// `POST /v1/identities/{name}/mfa`: enrols TOTP and returns the `otpauth://` URI, once.
pub async fn enroll_mfa(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::EnrollMfa,
        None,
        Mode::Blocking,
        move |_| {
            let mut rec = load(&a, &name)?.ok_or_else(|| missing(&name))?;
            if rec.kind != "user" {
                return Err(ApiError::validation("TOTP is for user identities"));
            }
            let seed = zeroize::Zeroizing::new(a.kms.random(20)?);
            rec.totp_seed = Some(hex(&a.kms.protect(&totp_aad(&rec.name), &seed)?));
            rec.totp_last_step = None;
            a.iam.identities.save(&rec)?;
            let secret = zeroize::Zeroizing::new(crate::totp::base32(&seed));
            let uri = format!(
            "otpauth://totp/Keyward:{}?secret={}&issuer=Keyward&algorithm=SHA1&digits={}&period={}",
            crate::app::percent(&rec.name),
            secret.as_str(),
            crate::totp::DIGITS,
            crate::totp::STEP
        );
            Reply::ok(&MfaResponse { totp_uri: uri })
        },
    )
    .await
}

/// An identity as the compliance report's access review sees it.
pub(crate) struct Summary {
    pub name: String,
    pub kind: String,
    pub roles: Vec<String>,
    pub policies: Vec<String>,
    pub password: bool,
    pub mfa: bool,
    pub created_at: i64,
}

/// Every identity, by name.
pub(crate) fn summaries(app: &AppState) -> Result<Vec<Summary>, ApiError> {
    Ok(app
        .iam
        .identities
        .all()?
        .into_iter()
        .map(|r| Summary {
            password: r.password_hash.is_some(),
            mfa: r.totp_seed.is_some(),
            name: r.name,
            kind: r.kind,
            roles: r.roles,
            policies: r.policies,
            created_at: r.created_at,
        })
        .collect())
}

/// `GET /v1/identities`: every identity, by name, without secrets (`password` and `mfa` say only whether
/// they are set).
pub async fn list(
    State(app): State<AppState>,
    meta: Meta,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListIdentities,
        None,
        Mode::Blocking,
        move |_| {
            let all: Vec<(String, IdentityRecord)> = a
                .iam
                .identities
                .all()?
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect();
            let (page, next_token) = crate::handlers::keys::page(all, &q)?;
            let identities = page.iter().map(|(_, r)| object(r)).collect();
            Reply::ok(&IdentityList {
                identities,
                next_token,
            })
        },
    )
    .await
}

/// `GET /v1/identities/{name}`.
pub async fn get(State(app): State<AppState>, meta: Meta, Path(name): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GetIdentity,
        None,
        Mode::Blocking,
        move |_| {
            let rec = load(&a, &name)?.ok_or_else(|| missing(&name))?;
            Reply::ok(&object(&rec))
        },
    )
    .await
}

/// `PATCH /v1/identities/{name}` `{"roles"?, "policies"?}`: changes what the identity may do. The tokens it
/// already holds change with it, in the same transaction, so that a role taken away is gone at once.
pub async fn update(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
    body: RawBody,
) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::UpdateIdentity,
        None,
        Mode::Blocking,
        move |_| {
            let req: UpdateIdentity = parse(&body)?;
            let rec =
                a.iam
                    .identities
                    .regrant(&name, req.roles.as_deref(), req.policies.as_deref())?;
            a.iam.forget_identity(&rec.name);
            Reply::ok(&object(&rec))
        },
    )
    .await
}

/// `DELETE /v1/identities/{name}`: the identity goes, with every token it holds and its certificate
/// subject, in one transaction (a leaver loses access at once, on every node).
pub async fn delete(State(app): State<AppState>, meta: Meta, Path(name): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::DeleteIdentity,
        None,
        Mode::Blocking,
        move |_| {
            a.iam.identities.delete(&name)?;
            a.iam.forget_identity(&name);
            Ok(Reply::empty())
        },
    )
    .await
}

/// The most expired tokens one round deletes.
const PURGE_PER_ROUND: usize = 1000;

/// Deletes expired tokens, the leading node's work each round: each after a `kms:PurgeToken` record (under
/// `token/ID`, as its revocation would be), the round's records made durable together; a token whose record
/// failed stays for the next round. An expired token authenticates nothing and is listed nowhere, so only
/// the store's size changes.
pub fn purge_expired_tokens(app: &AppState) -> Result<usize, ApiError> {
    let now = app.clock.now();
    let expired = app.iam.auth.expired(now, PURGE_PER_ROUND)?;
    if expired.is_empty() {
        return Ok(0);
    }
    let recorded = crate::app::record_deletions(
        app,
        "kms:PurgeToken",
        "token",
        expired.iter().map(|t| (t.token_id.as_str(), None)),
    );
    let ids: Vec<&str> = expired
        .iter()
        .zip(&recorded)
        .filter(|(_, ok)| **ok)
        .map(|(t, _)| t.token_id.as_str())
        .collect();
    let deleted = app.iam.auth.delete_expired(&ids, now)?;
    if ids.len() < expired.len() {
        return Err(crate::app::unrecorded_deletions());
    }
    Ok(deleted)
}
