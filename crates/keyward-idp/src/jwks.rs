//! Fetching an issuer's signing keys: its JWKS, found directly or through its OIDC discovery document.

use std::time::Duration;

use keyward_iam::jwt::{fetchable, KeySet};
use serde_json::Value;

/// The largest discovery document or JWKS read (real ones are a few kilobytes).
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Fetches key sets; one per service, so connections to an issuer are reused.
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    /// A fetcher with short timeouts and no redirects.
    pub fn new() -> Result<Fetcher, String> {
        Ok(Fetcher {
            client: client(Duration::from_secs(5))?,
        })
    }

    /// The keys at `source`: a JWKS URL, or a discovery document naming one (`jwks_uri`).
    pub async fn keys(&self, source: &str) -> Result<KeySet, String> {
        let jwks_url = if source.ends_with("/.well-known/openid-configuration") {
            let doc = self.json(source).await?;
            let url = doc
                .get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{source} names no jwks_uri"))?
                .to_string();
            if !fetchable(&url) {
                return Err(format!(
                    "{source} names a jwks_uri that is not https: {url}"
                ));
            }
            url
        } else {
            source.to_string()
        };
        let doc = self.json(&jwks_url).await?;
        KeySet::parse_jwks(&doc).map_err(|e| format!("{jwks_url}: {}", e.message()))
    }

    async fn json(&self, url: &str) -> Result<Value, String> {
        let resp = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {}", reason(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        bounded_json(resp, url).await
    }
}

/// An HTTP client for identity providers: short timeouts, and no redirects (a redirect could lead to a host
/// not trusted).
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// A response's JSON body, read up to 1 MiB: a provider cannot make Keyward hold more.
pub(crate) async fn bounded_json(mut resp: reqwest::Response, url: &str) -> Result<Value, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("{url}: {}", reason(&e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!("{url} sent more than 1 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|_| format!("{url} did not send JSON"))
}

/// What went wrong with a request, in a few words (never the URL's query or a body).
pub(crate) fn reason(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    }
}
