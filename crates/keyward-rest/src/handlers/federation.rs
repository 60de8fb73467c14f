//! Sign-in with the enterprise's identities: JWTs from trusted issuers (OIDC, Kubernetes, CI) and an LDAP or
//! Active Directory directory, and their configuration.
//!
//! The rules are `keyward-iam`'s (`jwt`, `ldap`), the network exchanges `keyward-idp`'s; this module joins
//! them to the request pipeline so that every attempt is authorized, rate-limited and audited like any other
//! request. The provider is asked before the pipeline runs (it is I/O the pipeline must not hold a worker
//! for), and its verdict is the request's outcome: a refused token or password is the request's one record,
//! `deny` or `error`, naming the identity only once the provider has vouched for it.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::audit::rfc3339;
use keyward_core::{quoted, ErrorCode};
use keyward_iam::auth::Federated;
use keyward_iam::jwt::{self, Checked, Grant, IssuerConfig, KeySet};
use keyward_iam::ldap::LdapConfig;
use keyward_idp::directory::Outcome;
use serde::{Deserialize, Serialize};

use crate::app::{call, parse, resource, run_noting, AppState, Meta, Mode, RawBody, Reply};
use crate::authz::Action;
use crate::convert::{hex, unhex};
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtLogin {
    issuer: String,
    jwt: zeroize::Zeroizing<String>,
    #[serde(default)]
    rule: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LdapLogin {
    name: String,
    password: zeroize::Zeroizing<String>,
    #[serde(default)]
    totp: Option<String>,
}

/// A sign-in's outcome, as every door renders it in its own protocol's shape.
#[derive(Serialize)]
pub struct SignedIn {
    /// The Keyward token (shown once).
    pub token: zeroize::Zeroizing<String>,
    /// Its id, for revocation.
    pub token_id: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Seconds it lives.
    #[serde(skip)]
    pub ttl: i64,
    /// Whether a TOTP code was checked.
    pub mfa: bool,
    /// The identity signed in.
    pub identity: String,
    /// Its roles, its own and the sign-in's.
    pub roles: Vec<String>,
    /// Its policies, its own and the sign-in's.
    pub policies: Vec<String>,
}

/// How a door renders a sign-in.
pub type Render = fn(SignedIn) -> Result<Reply, ApiError>;

fn rest_shape(s: SignedIn) -> Result<Reply, ApiError> {
    Reply::ok(&s)
}

fn answer(result: Result<Reply, ApiError>) -> Response {
    match result {
        Ok(reply) => {
            let (status, body) = reply.into_parts();
            crate::error::json_response(status, body)
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct IssuerObject<'a> {
    name: &'a str,
    /// `api` or `config` (the configuration file's issuers are changed there).
    source: &'static str,
    #[serde(flatten)]
    config: &'a IssuerConfig,
}

#[derive(Serialize)]
struct IssuerList<'a> {
    issuers: Vec<IssuerObject<'a>>,
}

#[derive(Serialize)]
struct LdapObject<'a> {
    source: &'static str,
    #[serde(flatten)]
    config: &'a LdapConfig,
    bind_password_set: bool,
}

/// The pipeline around `f`, run on the blocking pool with the service's state.
async fn blocking_call(
    app: &AppState,
    meta: &Meta,
    action: Action,
    f: impl FnOnce(&AppState) -> Result<Reply, ApiError> + Send + 'static,
) -> Response {
    let a = app.clone();
    call(app, meta, action, None, Mode::Blocking, move |_| f(&a)).await
}

/// One fetcher per process: connections to issuers are reused.
fn fetcher() -> Result<&'static keyward_idp::jwks::Fetcher, ApiError> {
    static FETCHER: OnceLock<Result<keyward_idp::jwks::Fetcher, String>> = OnceLock::new();
    FETCHER
        .get_or_init(keyward_idp::jwks::Fetcher::new)
        .as_ref()
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.clone()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(ApiError::new(ErrorCode::Unavailable, "worker failed")))
}

/// An issuer by name: the configuration file's first, then the API's.
async fn issuer(app: &AppState, name: &str) -> Result<IssuerConfig, ApiError> {
    if let Some(c) = app.config.jwt_issuers.get(name) {
        return Ok(c.clone());
    }
    let (a, n) = (app.clone(), name.to_string());
    blocking(move || Ok(a.iam.issuers.get(&n)?))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                format!("no trusted issuer is named {}", quoted(name)),
            )
        })
}

fn unreachable_issuer(reason: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the issuer's signing keys could not be fetched: {reason}"),
    )
}

/// The issuer's keys: given outright, or fetched (again when old, or when asked for an unknown key id; at
/// most once per interval). A failed fetch keeps the keys held: an unreachable issuer never makes a valid
/// cached key invalid.
async fn keys(
    app: &AppState,
    name: &str,
    cfg: &IssuerConfig,
    refetch: bool,
) -> Result<Arc<KeySet>, ApiError> {
    if let Some(v) = &cfg.jwks {
        return Ok(Arc::new(KeySet::parse_static(v)?));
    }
    let source = cfg.key_source().unwrap_or_default();
    let now = app.clock.now();
    let held = app.iam.issuers.fetched(name, &source);
    let want = match &held {
        None => true,
        Some(f) => refetch || f.keys.is_empty() || f.keys.stale(now),
    };
    if want && app.iam.issuers.may_fetch(name, &source, now) {
        match fetcher()?.keys(&source).await {
            Ok(set) => {
                app.iam.issuers.keep(name, &source, set, now);
            }
            Err(reason) => {
                tracing::warn!(issuer = name, "fetching signing keys failed: {reason}");
                match held {
                    Some(f) if !f.keys.is_empty() => return Ok(f.keys),
                    _ => return Err(unreachable_issuer(&reason)),
                }
            }
        }
    }
    match app.iam.issuers.fetched(name, &source) {
        Some(f) if !f.keys.is_empty() => Ok(f.keys),
        _ => Err(unreachable_issuer(
            "none are held, and the last attempt failed less than 30 s ago",
        )),
    }
}

/// Verifies a sign-in JWT and maps it through the issuer's rules.
async fn verify(app: &AppState, req: &JwtLogin) -> Result<Grant, ApiError> {
    jwt::check_name(&req.issuer).map_err(|_| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "no trusted issuer has that name",
        )
    })?;
    let cfg = issuer(app, &req.issuer).await?;
    let token = jwt::split(&req.jwt)?;
    let mut checked = token.check_signature(&cfg, &*keys(app, &req.issuer, &cfg, false).await?)?;
    if matches!(checked, Checked::UnknownKey) {
        // The issuer may have rotated its keys since they were fetched.
        checked = token.check_signature(&cfg, &*keys(app, &req.issuer, &cfg, true).await?)?;
    }
    let Checked::Signed(claims) = checked else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "the JWT names a key id (kid) the issuer does not publish",
        ));
    };
    let now = app.clock.now();
    let exp = jwt::check_claims(&cfg, &claims, now)?;
    Ok(jwt::map_claims(
        &cfg,
        &claims,
        req.rule.as_deref(),
        exp,
        now,
    )?)
}

fn signed_in(
    token: zeroize::Zeroizing<String>,
    rec: keyward_iam::auth::TokenRecord,
    render: Render,
) -> Result<Reply, ApiError> {
    let mut roles = rec.roles.clone();
    roles.extend(rec.login_roles.iter().cloned());
    roles.sort();
    roles.dedup();
    let mut policies = rec.policies.clone();
    policies.extend(rec.login_policies.iter().cloned());
    policies.sort();
    policies.dedup();
    render(SignedIn {
        token,
        token_id: rec.token_id,
        expires_at: rfc3339(rec.expires_at.unwrap_or_default()),
        ttl: rec.expires_at.unwrap_or_default() - rec.created_at,
        mfa: rec.mfa,
        identity: rec.identity,
        roles,
        policies,
    })
}

/// `POST /v1/auth/jwt/login`: a Keyward token for a JWT from a trusted issuer.
pub async fn jwt_login(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let req = parse::<JwtLogin>(&body);
    answer(match req {
        Ok(r) => sign_in_jwt(&app, meta, &r.issuer, &r.jwt, r.rule.as_deref(), rest_shape).await,
        Err(e) => {
            run_noting(
                &app,
                &meta,
                Action::LoginJwt,
                None,
                None::<fn() -> Option<String>>,
                Mode::Inline,
                move |_| Err(e),
            )
            .await
        }
    })
}

/// A JWT sign-in through the pipeline, for every door: the issuer is asked for its keys first, and its
/// verdict is the request's outcome (one audit record, naming the identity once the token is verified).
pub async fn sign_in_jwt(
    app: &AppState,
    meta: Meta,
    issuer: &str,
    jwt: &str,
    rule: Option<&str>,
    render: Render,
) -> Result<Reply, ApiError> {
    let req = JwtLogin {
        issuer: issuer.to_string(),
        jwt: zeroize::Zeroizing::new(jwt.to_string()),
        rule: rule.map(str::to_string),
    };
    let verified = verify(app, &req).await.map(|g| (req.issuer.clone(), g));
    let meta = match &verified {
        Ok((_, g)) => meta.on(resource("identity", &g.identity)),
        Err(_) => meta,
    };
    let a = app.clone();
    run_noting(
        app,
        &meta,
        Action::LoginJwt,
        None,
        None::<fn() -> Option<String>>,
        Mode::Blocking,
        move |_| {
            let (issuer, g) = verified?;
            let via = format!("jwt:{issuer}");
            let now = a.clock.now();
            let rec = a.iam.identities.federated(
                &g.identity,
                &g.kind,
                &via,
                g.create,
                (&g.roles, &g.policies),
                now,
            )?;
            let (token, t) = a.iam.auth.mint_federated(&Federated {
                identity: &rec,
                roles: &g.roles,
                policies: &g.policies,
                now,
                ttl: g.ttl,
                mfa: false,
                via: &via,
            })?;
            signed_in(token, t, render)
        },
    )
    .await
}

fn wrong_password() -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, "unknown name or wrong password")
}

fn bind_password_aad() -> &'static [u8] {
    b"keyward:ldap:bind_password"
}

/// The directory in force, with its bind password: the configuration file's, else the API's.
async fn directory(app: &AppState) -> Result<(LdapConfig, zeroize::Zeroizing<String>), ApiError> {
    if let Some(c) = &app.config.ldap {
        let pw = c.bind_password.clone().unwrap_or_default();
        return Ok((c.clone(), pw));
    }
    let a = app.clone();
    blocking(move || {
        let stored = a.iam.directory.get()?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                "LDAP sign-in is not configured (PUT /v1/auth/ldap/config)",
            )
        })?;
        let pw = match &stored.sealed_password {
            Some(blob) => {
                let secret = a
                    .kms
                    .unprotect(bind_password_aad(), &unhex(blob).unwrap_or_default())?;
                zeroize::Zeroizing::new(String::from_utf8_lossy(secret.expose()).into_owned())
            }
            None => zeroize::Zeroizing::new(String::new()),
        };
        Ok((stored.config, pw))
    })
    .await
}

/// Asks the directory; a 401 for a wrong name or password alike, a 503 when it cannot answer.
async fn ask_directory(
    app: &AppState,
    req: &LdapLogin,
) -> Result<(LdapConfig, Vec<String>), ApiError> {
    if req.name.is_empty()
        || req.name.len() > 256
        || req.password.is_empty()
        || req.password.chars().count() > 1024
    {
        // An empty password would be an anonymous bind, which many directories accept.
        return Err(wrong_password());
    }
    if !app.limiter.allow(&format!("ldap:{}", req.name)) {
        return Err(ApiError::new(
            ErrorCode::Throttled,
            "too many login attempts; retry shortly",
        ));
    }
    let (cfg, bind_password) = directory(app).await?;
    match keyward_idp::directory::sign_in(&cfg, &bind_password, &req.name, &req.password).await {
        Ok(Outcome::Member { groups, .. }) => Ok((cfg, groups)),
        Ok(Outcome::Refused) => Err(wrong_password()),
        Err(reason) => {
            tracing::warn!("LDAP sign-in could not be checked: {reason}");
            Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("the directory cannot be reached: {reason}"),
            ))
        }
    }
}

/// `POST /v1/auth/ldap/login`: a Keyward token for a directory account, with TOTP when enrolled.
pub async fn ldap_login(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    answer(match parse::<LdapLogin>(&body) {
        Ok(r) => {
            sign_in_ldap(
                &app,
                meta,
                &r.name,
                &r.password,
                r.totp.as_deref(),
                rest_shape,
            )
            .await
        }
        Err(e) => {
            run_noting(
                &app,
                &meta,
                Action::LoginLdap,
                None,
                None::<fn() -> Option<String>>,
                Mode::Inline,
                move |_| Err(e),
            )
            .await
        }
    })
}

/// A directory sign-in through the pipeline, for every door (see [`sign_in_jwt`]).
pub async fn sign_in_ldap(
    app: &AppState,
    meta: Meta,
    name: &str,
    password: &str,
    totp: Option<&str>,
    render: Render,
) -> Result<Reply, ApiError> {
    let req = LdapLogin {
        name: name.to_string(),
        password: zeroize::Zeroizing::new(password.to_string()),
        totp: totp.map(str::to_string),
    };
    let asked = ask_directory(app, &req).await;
    let meta = match &asked {
        Ok(_) if keyward_iam::names::valid_identity(&req.name) => {
            meta.on(resource("identity", &req.name))
        }
        _ => meta,
    };
    let a = app.clone();
    run_noting(
        app,
        &meta,
        Action::LoginLdap,
        None,
        None::<fn() -> Option<String>>,
        Mode::Blocking,
        move |_| {
            let (cfg, groups) = asked?;
            let (roles, policies) = cfg.grants_for(&groups);
            let now = a.clock.now();
            let mut rec = a.iam.identities.federated(
                &req.name,
                cfg.kind(),
                "ldap",
                true,
                (&roles, &policies),
                now,
            )?;
            let mfa = super::identities::check_second_factor(&a, &mut rec, req.totp.as_deref())?;
            let (token, t) = a.iam.auth.mint_federated(&Federated {
                identity: &rec,
                roles: &roles,
                policies: &policies,
                now,
                ttl: super::identities::DEFAULT_TTL,
                mfa,
                via: "ldap",
            })?;
            signed_in(token, t, render)
        },
    )
    .await
}

fn in_config_file() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        "defined in the configuration file; change it there",
    )
}

/// `PUT /v1/auth/jwt/issuers/{name}`.
pub async fn put_issuer(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
    body: RawBody,
) -> Response {
    let meta = meta.on(resource("jwt_issuer", &name));
    blocking_call(&app, &meta, Action::PutJwtIssuer, move |a| {
        if a.config.jwt_issuers.contains_key(&name) {
            return Err(in_config_file());
        }
        let cfg: IssuerConfig = parse(&body)?;
        let replaced = a.iam.issuers.put(&name, &cfg)?;
        let status = if replaced {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Reply::with_status(
            status,
            &IssuerObject {
                name: &name,
                source: "api",
                config: &cfg,
            },
        )
    })
    .await
}

/// `GET /v1/auth/jwt/issuers/{name}`.
pub async fn get_issuer(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
) -> Response {
    let meta = meta.on(resource("jwt_issuer", &name));
    blocking_call(&app, &meta, Action::GetJwtIssuer, move |a| {
        if let Some(c) = a.config.jwt_issuers.get(&name) {
            return Reply::ok(&IssuerObject {
                name: &name,
                source: "config",
                config: c,
            });
        }
        let c = a.iam.issuers.get(&name)?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("issuer {} does not exist", quoted(&name)),
            )
        })?;
        Reply::ok(&IssuerObject {
            name: &name,
            source: "api",
            config: &c,
        })
    })
    .await
}

/// `GET /v1/auth/jwt/issuers`.
pub async fn list_issuers(State(app): State<AppState>, meta: Meta) -> Response {
    blocking_call(&app, &meta, Action::ListJwtIssuers, move |a| {
        let stored = a.iam.issuers.all()?;
        let mut issuers: Vec<IssuerObject> = a
            .config
            .jwt_issuers
            .iter()
            .map(|(n, c)| IssuerObject {
                name: n,
                source: "config",
                config: c,
            })
            .collect();
        issuers.extend(
            stored
                .iter()
                .filter(|(n, _)| !a.config.jwt_issuers.contains_key(n))
                .map(|(n, c)| IssuerObject {
                    name: n,
                    source: "api",
                    config: c,
                }),
        );
        Reply::ok(&IssuerList { issuers })
    })
    .await
}

/// `DELETE /v1/auth/jwt/issuers/{name}`.
pub async fn delete_issuer(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
) -> Response {
    let meta = meta.on(resource("jwt_issuer", &name));
    blocking_call(&app, &meta, Action::DeleteJwtIssuer, move |a| {
        if a.config.jwt_issuers.contains_key(&name) {
            return Err(in_config_file());
        }
        if !a.iam.issuers.delete(&name)? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("issuer {} does not exist", quoted(&name)),
            ));
        }
        Ok(Reply::empty())
    })
    .await
}

/// `PUT /v1/auth/ldap/config`: the bind password is sealed under the service-secrets key before it is
/// stored, and never returned.
pub async fn put_ldap(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let meta = meta.on("ldap/config".to_string());
    blocking_call(&app, &meta, Action::PutLdapConfig, move |a| {
        if a.config.ldap.is_some() {
            return Err(in_config_file());
        }
        let cfg: LdapConfig = parse(&body)?;
        cfg.check()?;
        let sealed = match &cfg.bind_password {
            Some(pw) if !pw.is_empty() => {
                Some(hex(&a.kms.protect(bind_password_aad(), pw.as_bytes())?))
            }
            _ => None,
        };
        let replaced = a.iam.directory.put(&cfg, sealed)?;
        let stored = a.iam.directory.get()?;
        Reply::with_status(
            if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            &LdapObject {
                source: "api",
                config: &cfg,
                bind_password_set: stored.is_some_and(|s| s.sealed_password.is_some()),
            },
        )
    })
    .await
}

/// `GET /v1/auth/ldap/config`: never the bind password, only whether one is set.
pub async fn get_ldap(State(app): State<AppState>, meta: Meta) -> Response {
    let meta = meta.on("ldap/config".to_string());
    blocking_call(&app, &meta, Action::GetLdapConfig, move |a| {
        if let Some(c) = &a.config.ldap {
            return Reply::ok(&LdapObject {
                source: "config",
                config: c,
                bind_password_set: c.bind_password.is_some(),
            });
        }
        let s =
            a.iam.directory.get()?.ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, "LDAP sign-in is not configured")
            })?;
        Reply::ok(&LdapObject {
            source: "api",
            config: &s.config,
            bind_password_set: s.sealed_password.is_some(),
        })
    })
    .await
}

/// `DELETE /v1/auth/ldap/config`: LDAP sign-in stops; tokens already issued live on until revoked or expired.
pub async fn delete_ldap(State(app): State<AppState>, meta: Meta) -> Response {
    let meta = meta.on("ldap/config".to_string());
    blocking_call(&app, &meta, Action::DeleteLdapConfig, move |a| {
        if a.config.ldap.is_some() {
            return Err(in_config_file());
        }
        if !a.iam.directory.delete()? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "LDAP sign-in is not configured",
            ));
        }
        Ok(Reply::empty())
    })
    .await
}

#[derive(Serialize)]
struct OidcMethod<'a> {
    issuer: &'a str,
    display_name: &'a str,
    issuer_url: &'a str,
    client_id: &'a str,
    scopes: Vec<String>,
}

#[derive(Serialize)]
struct Methods<'a> {
    password: bool,
    ldap: bool,
    oidc: Vec<OidcMethod<'a>>,
}

/// `GET /v1/auth/methods`: how one may sign in, for a sign-in page (public: an identity provider's address
/// and client id are shown to every browser that signs in through it anyway).
pub async fn methods(State(app): State<AppState>, meta: Meta) -> Response {
    blocking_call(&app, &meta, Action::ListAuthMethods, move |a| {
        let stored = a.iam.issuers.all()?;
        let ldap = a.config.ldap.is_some() || a.iam.directory.get()?.is_some();
        let mut oidc = Vec::new();
        let config = a.config.jwt_issuers.iter().map(|(n, c)| (n.as_str(), c));
        let api = stored
            .iter()
            .filter(|(n, _)| !a.config.jwt_issuers.contains_key(n))
            .map(|(n, c)| (n.as_str(), c));
        for (name, c) in config.chain(api) {
            if let Some(o) = &c.oidc {
                oidc.push(OidcMethod {
                    issuer: name,
                    display_name: o.display_name.as_deref().unwrap_or(name),
                    issuer_url: &c.issuer,
                    client_id: &o.client_id,
                    scopes: o.scopes(),
                });
            }
        }
        Reply::ok(&Methods {
            password: true,
            ldap,
            oidc,
        })
    })
    .await
}
