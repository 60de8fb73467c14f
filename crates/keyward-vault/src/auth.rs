//! Vault's login paths: `auth/<issuer>/login` (Vault's JWT auth method, one mount per trusted issuer, its
//! `role` a rule of the issuer) and `auth/ldap/login/<username>`. Each is Keyward's own sign-in
//! (`sign_in_jwt`, `sign_in_ldap`: the same checks, rules and audit record as the REST API's), answered in
//! Vault's `auth` block, so that Vault clients and agents sign in with the identities they already have.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use keyward_rest::app::{parse, Reply};
use keyward_rest::error::ApiError;
use keyward_rest::handlers::federation::{sign_in_jwt, sign_in_ldap, SignedIn};
use serde::Deserialize;

use crate::{error, render, Call};

#[derive(Deserialize)]
struct JwtBody {
    #[serde(default)]
    role: Option<String>,
    jwt: zeroize::Zeroizing<String>,
}

#[derive(Deserialize)]
struct LdapBody {
    password: zeroize::Zeroizing<String>,
    #[serde(default)]
    totp: Option<String>,
}

/// Vault's answer to a login: the token in `auth`, its grants as Vault names them (roles and policies).
fn vault_shape(s: SignedIn) -> Result<Reply, ApiError> {
    let mut policies = s.roles.clone();
    policies.extend(s.policies.iter().cloned());
    Reply::ok(&serde_json::json!({
        "request_id": "",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": s.token.as_str(),
            "accessor": s.token_id,
            "policies": policies,
            "token_policies": policies,
            "metadata": {"identity": s.identity, "mfa": s.mfa.to_string()},
            "lease_duration": s.ttl.max(0),
            "renewable": false,
            "entity_id": s.identity,
            "token_type": "service",
            "orphan": true,
        },
    }))
}

/// `POST auth/<issuer>/login` `{"role"?, "jwt"}`.
pub(crate) async fn jwt(call: Call, issuer: &str) -> Response {
    if call.method != Method::POST && call.method != Method::PUT {
        return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation");
    }
    let body: JwtBody = match parse(&call.body) {
        Ok(b) => b,
        Err(e) => return render(Err(e)),
    };
    render(
        sign_in_jwt(
            &call.app,
            call.meta,
            issuer,
            &body.jwt,
            body.role.as_deref(),
            vault_shape,
        )
        .await,
    )
}

/// `POST auth/ldap/login/<username>` `{"password", "totp"?}`.
pub(crate) async fn ldap(call: Call, username: &str) -> Response {
    if call.method != Method::POST && call.method != Method::PUT {
        return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation");
    }
    let body: LdapBody = match parse(&call.body) {
        Ok(b) => b,
        Err(e) => return render(Err(e)),
    };
    render(
        sign_in_ldap(
            &call.app,
            call.meta,
            username,
            &body.password,
            body.totp.as_deref(),
            vault_shape,
        )
        .await,
    )
}
