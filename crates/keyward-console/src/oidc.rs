//! "Sign in with <issuer>": the OpenID Connect authorization-code flow with PKCE.
//!
//! The browser is sent to the issuer with a fresh `state`, `nonce` and PKCE challenge, kept meanwhile in a
//! short-lived `HttpOnly` cookie of this console (`SameSite=Lax`, so that it comes back with the issuer's
//! redirect, which is another site's navigation). On return, `state` must match, the code is exchanged with the
//! PKCE verifier, and the ID token is signed in through `POST /v1/auth/jwt/login` as the API signs in any JWT of
//! the issuer (signature, issuer, audience, times, rules, audit). Its `nonce` must then be the one sent, or the
//! token just issued is revoked: an ID token replayed from another sign-in opens no session.

use axum::extract::{Path, Query};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::html::enc;
use crate::{redirect, same, Ctx, SESSION};

/// The cookie holding a sign-in in progress.
const FLOW: &str = "kw_oidc";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// The issuer's console client, as `GET /v1/auth/methods` offers it.
async fn method(ctx: &Ctx, issuer: &str) -> Option<Value> {
    let m = ctx
        .api(None, Method::GET, "/v1/auth/methods", None)
        .await
        .body;
    m["oidc"]
        .as_array()?
        .iter()
        .find(|o| o["issuer"].as_str() == Some(issuer))
        .cloned()
}

fn refused(ctx: &Ctx, status: StatusCode, why: &str) -> Response {
    ctx.error_page(None, status, why)
}

/// `GET /ui/oidc/{issuer}`: sends the browser to the issuer.
pub(crate) async fn start(ctx: Ctx, Path(issuer): Path<String>) -> Response {
    let Some(m) = method(&ctx, &issuer).await else {
        return refused(&ctx, StatusCode::NOT_FOUND, ctx.lang.t("No such sign-in."));
    };
    let url = m["issuer_url"].as_str().unwrap_or("");
    let endpoints = match keyward_idp::oidc::discover(url).await {
        Ok(e) => e,
        Err(why) => return refused(&ctx, StatusCode::SERVICE_UNAVAILABLE, &why),
    };
    let (state, nonce, verifier) = (
        crate::random_value(),
        crate::random_value(),
        format!("{}{}", crate::random_value(), crate::random_value()),
    );
    let challenge = b64(&crate::sha256(verifier.as_bytes()));
    let scopes: Vec<&str> = m["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let sep = if endpoints.authorization.contains('?') {
        '&'
    } else {
        '?'
    };
    let to = format!(
        "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
        endpoints.authorization,
        enc(m["client_id"].as_str().unwrap_or("")),
        enc(&ctx.callback(&issuer)),
        enc(&scopes.join(" ")),
    );
    let mut r = redirect(&to);
    let flow = format!("{}:{state}:{nonce}:{verifier}", enc(&issuer));
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.flow_cookie(FLOW, &flow, 600));
    r
}

/// `GET /ui/oidc/{issuer}/callback`: the issuer sends the browser back with a code.
pub(crate) async fn callback(
    ctx: Ctx,
    Path(issuer): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let t = |x| ctx.lang.t(x);
    let flow = ctx.cookies.get(FLOW).cloned().unwrap_or_default();
    let mut parts = flow.split(':');
    let (Some(f_issuer), Some(state), Some(nonce), Some(verifier)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refused(
            &ctx,
            StatusCode::FORBIDDEN,
            t("This sign-in was not started here, or took too long. Start again."),
        );
    };
    let got_state = q.get("state").map(String::as_str).unwrap_or("");
    if f_issuer != enc(&issuer) || !same(got_state, state) {
        return refused(
            &ctx,
            StatusCode::FORBIDDEN,
            t("This sign-in was not started here, or took too long. Start again."),
        );
    }
    if let Some(e) = q.get("error") {
        return refused(
            &ctx,
            StatusCode::UNAUTHORIZED,
            &format!("{}: {e}", t("The identity provider did not sign you in")),
        );
    }
    let Some(m) = method(&ctx, &issuer).await else {
        return refused(&ctx, StatusCode::NOT_FOUND, t("No such sign-in."));
    };
    let endpoints = match keyward_idp::oidc::discover(m["issuer_url"].as_str().unwrap_or("")).await
    {
        Ok(e) => e,
        Err(why) => return refused(&ctx, StatusCode::SERVICE_UNAVAILABLE, &why),
    };
    let id_token = match keyward_idp::oidc::exchange(
        &endpoints.token,
        q.get("code").map(String::as_str).unwrap_or(""),
        verifier,
        m["client_id"].as_str().unwrap_or(""),
        &ctx.callback(&issuer),
    )
    .await
    {
        Ok(t) => t,
        Err(why) => return refused(&ctx, StatusCode::UNAUTHORIZED, &why),
    };
    let login = ctx
        .api(
            None,
            Method::POST,
            "/v1/auth/jwt/login",
            Some(&json!({"issuer": issuer, "jwt": id_token.as_str()})),
        )
        .await;
    let token = login.body["token"].as_str().unwrap_or("").to_string();
    if !login.ok() || token.is_empty() {
        return refused(&ctx, login.status, &login.message());
    }
    // The API has verified the ID token's signature; its nonce must be this sign-in's.
    let claims: Value = id_token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if !claims["nonce"].as_str().is_some_and(|n| same(n, nonce)) {
        ctx.api(Some(&token), Method::POST, "/v1/auth/logout", None)
            .await;
        return refused(
            &ctx,
            StatusCode::FORBIDDEN,
            t("The ID token was not issued for this sign-in (nonce). Nothing was opened."),
        );
    }
    let mut r = redirect("/ui/");
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.cookie(SESSION, &token, None));
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.flow_cookie(FLOW, "", 0));
    r
}
