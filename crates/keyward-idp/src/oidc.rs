//! The OpenID Connect authorization-code flow with PKCE, as the console runs it for a person signing in
//! with their identity provider: the provider's endpoints from its discovery document, and the exchange of
//! the code for an ID token. The ID token itself is checked by Keyward's JWT sign-in, like any other.

use std::time::Duration;

use keyward_iam::jwt::fetchable;
use serde_json::Value;

/// The endpoints of a provider's discovery document that the flow uses.
pub struct Endpoints {
    /// Where the browser is sent to sign in.
    pub authorization: String,
    /// Where the code is exchanged.
    pub token: String,
}

/// The provider's endpoints, from `<issuer>/.well-known/openid-configuration`, whose `issuer` must be the
/// one configured (OpenID Connect Discovery, section 4.3).
pub async fn discover(issuer: &str) -> Result<Endpoints, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let resp = crate::jwks::client(Duration::from_secs(10))?
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::jwks::reason(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let doc = crate::jwks::bounded_json(resp, &url).await?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(format!("{url} names another issuer"));
    }
    let endpoint = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .filter(|u| fetchable(u))
            .map(str::to_string)
            .ok_or_else(|| format!("{url} names no usable {k}"))
    };
    Ok(Endpoints {
        authorization: endpoint("authorization_endpoint")?,
        token: endpoint("token_endpoint")?,
    })
}

/// Exchanges an authorization code (with its PKCE verifier) for the ID token.
pub async fn exchange(
    token_endpoint: &str,
    code: &str,
    verifier: &str,
    client_id: &str,
    redirect_uri: &str,
) -> Result<zeroize::Zeroizing<String>, String> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
    ];
    let resp = crate::jwks::client(Duration::from_secs(10))?
        .post(token_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("{token_endpoint}: {}", crate::jwks::reason(&e)))?;
    let status = resp.status();
    let body = crate::jwks::bounded_json(resp, token_endpoint)
        .await
        .unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(format!(
            "the identity provider refused the code ({status}: {why})"
        ));
    }
    body.get("id_token")
        .and_then(Value::as_str)
        .map(|t| zeroize::Zeroizing::new(t.to_string()))
        .ok_or_else(|| "the identity provider's answer holds no id_token".to_string())
}
