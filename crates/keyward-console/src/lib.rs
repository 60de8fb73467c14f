//! The web console: what security teams look at (what is about to expire, who used which key, what waits
//! for their approval, whether the audit chain holds) and the actions they take, in a browser.
//!
//! It has no powers of its own. Every page is built from the REST API, called in-process through the REST
//! router itself with the signed-in user's session token, so that authentication, authorization, rate
//! limits and the audit log are exactly the API's: a user who may not do something through the CLI may not
//! do it here, and every action is recorded under that user. The console keeps only what a browser session
//! needs: the session token in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` under TLS), a CSRF token
//! derived from it, and the time of the session's last request, for the idle timeout.
//!
//! Pages are rendered on the server, with no script at all: the content security policy is
//! `default-src 'self'` with nothing inline, pages cannot be framed, and no request leaves for another host.
//! Everything served is embedded in the binary.

mod html;
mod i18n;
mod oidc;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use keyward_rest::app::AppState;
use serde_json::Value;
use tower::ServiceExt as _;
use zeroize::Zeroizing;

pub(crate) use i18n::Lang;

/// The cookie holding the session token.
const SESSION: &str = "kw_session";
/// The cookie holding the sign-in form's CSRF value (before a session exists).
const PRE: &str = "kw_pre";
/// The cookie holding the chosen language.
const LANG: &str = "kw_lang";

/// The console's state beside the service's.
pub(crate) struct Console {
    /// The REST API, called in-process.
    rest: Router,
    /// Sessions idle longer than this are ended (their token revoked).
    idle: Duration,
    /// The last request of each session on this node, by the hash of its token.
    seen: parking_lot::Mutex<HashMap<[u8; 32], Instant>>,
    /// Whether the service is served over TLS (cookies are then `Secure`).
    tls: bool,
    /// The last full verification of the audit chain asked for from this console: when (Unix seconds),
    /// whether it held, and over how many records.
    pub(crate) last_verify: parking_lot::Mutex<Option<(i64, bool, u64)>>,
}

/// The console's routes, to be merged beside the API's, or none when `ui = false`. `rest` is the API router
/// the console calls for everything it shows and does.
pub fn routes(app: &AppState, rest: Router) -> Router<AppState> {
    if !app.config.ui {
        return Router::new();
    }
    let console = Arc::new(Console {
        rest,
        idle: Duration::from_secs(app.config.ui_idle_timeout_seconds.max(60)),
        seen: parking_lot::Mutex::new(HashMap::new()),
        tls: app.config.tls_cert.is_some(),
        last_verify: parking_lot::Mutex::new(None),
    });
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/static/console.css", get(pages::stylesheet))
        .route("/ui/static/favicon.svg", get(pages::favicon))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/session/step-up", post(pages::step_up))
        .route("/ui/oidc/{issuer}", get(oidc::start))
        .route("/ui/oidc/{issuer}/callback", get(oidc::callback))
        .route("/ui/lang/{lang}", get(pages::language))
        .route("/ui/keys", get(pages::keys).post(pages::create_key))
        .route("/ui/keys/{id}", get(pages::key))
        .route("/ui/keys/{id}/public-key.pem", get(pages::public_key))
        .route("/ui/keys/{id}/csr", post(pages::csr))
        .route("/ui/keys/{id}/do/{action}", post(pages::key_action))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/audit/verify", post(pages::verify_audit))
        .route("/ui/audit/export.jsonl", get(pages::export_audit))
        .route("/ui/approvals", get(pages::approvals))
        .route("/ui/approvals/{id}/{decision}", post(pages::decide))
        .route("/ui/access", get(pages::access))
        .route("/ui/access/identities", post(pages::create_identity))
        .route("/ui/access/identities/{name}", get(pages::identity))
        .route(
            "/ui/access/identities/{name}/tokens",
            post(pages::create_token).get(pages::to_identity),
        )
        .route("/ui/access/tokens/{id}/revoke", post(pages::revoke_token))
        .route(
            "/ui/access/policies/{name}",
            get(pages::policy).post(pages::save_policy),
        )
        .route("/ui/compliance", get(pages::compliance))
        .route("/ui/compliance/report.{format}", get(pages::report))
        .route("/ui/{*rest}", axum::routing::any(pages::no_such_page))
        .layer(axum::middleware::from_fn(headers))
        .layer(Extension(console))
}

/// The headers every console answer carries: a strict content security policy, no framing, no referrer, no
/// sniffing, no caching.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `303 See Other` to `to`.
pub(crate) fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn random_value() -> String {
    let mut raw = [0u8; 24];
    let _ = aws_lc_rs::rand::fill(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// One request to the console: who asks, in which language, from where.
pub(crate) struct Ctx {
    pub(crate) console: Arc<Console>,
    /// The language of the answer.
    pub(crate) lang: Lang,
    pub(crate) cookies: HashMap<String, String>,
    peer: Option<ConnectInfo<SocketAddr>>,
    /// The request's path and query, to come back to after a language switch.
    pub(crate) here: String,
    /// Whether a state-changing request came from this console's own pages (no other origin, no other site).
    same_origin: bool,
    /// This console's origin (`http://host:port`), for the address an identity provider sends browsers back to.
    origin: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Response> {
        let console = parts
            .extensions
            .get::<Arc<Console>>()
            .cloned()
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let cookies = cookies(&parts.headers);
        let lang = match cookies.get(LANG).map(String::as_str) {
            Some("zh") => Lang::Zh,
            Some("en") => Lang::En,
            _ => Lang::from_accept(
                parts
                    .headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            ),
        };
        let same_origin = parts.method == Method::GET || same_origin(&parts.headers, console.tls);
        let origin = expected_origin(&parts.headers, console.tls).unwrap_or_default();
        Ok(Ctx {
            lang,
            peer: parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
            here: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/ui/".to_string(), |p| p.as_str().to_string()),
            cookies,
            console,
            same_origin,
            origin,
        })
    }
}

/// A state-changing request is accepted only from the console's own origin. A browser says whether a
/// request comes from another site (`Sec-Fetch-Site`) and, without it, names the origin of the form's page
/// (`Origin`; under `Referrer-Policy: no-referrer` a browser sends `null` there, so `Sec-Fetch-Site` decides).
/// Either pointing elsewhere refuses the request, whatever cookie came with it; the CSRF value is checked
/// besides.
fn same_origin(h: &HeaderMap, tls: bool) -> bool {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return matches!(site, "same-origin" | "none")
            && get("origin")
                .is_none_or(|o| o == "null" || Some(o) == expected_origin(h, tls).as_deref());
    }
    match get("origin") {
        Some(origin) => Some(origin) == expected_origin(h, tls).as_deref(),
        None => true,
    }
}

fn expected_origin(h: &HeaderMap, tls: bool) -> Option<String> {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok())?;
    Some(format!("{}://{host}", if tls { "https" } else { "http" }))
}

fn cookies(h: &HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in h.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                out.insert(k.trim().to_string(), val.trim().to_string());
            }
        }
    }
    out
}

/// What the API answered.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    pub(crate) raw: Vec<u8>,
    pub(crate) content_type: Option<String>,
}

impl Answer {
    /// The API's error message, or the status's reason.
    pub(crate) fn message(&self) -> String {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| self.status.to_string())
    }

    pub(crate) fn ok(&self) -> bool {
        self.status.is_success()
    }
}

/// The signed-in user, as the API knows them.
pub(crate) struct Session {
    token: Zeroizing<String>,
    /// The form value that proves a request came from a page of this session.
    pub(crate) csrf: String,
    /// The identity's name.
    pub(crate) name: String,
    /// Its built-in roles.
    pub(crate) roles: Vec<String>,
    /// Its policies.
    pub(crate) policies: Vec<String>,
    /// Whether the session was opened with a TOTP code.
    pub(crate) mfa: bool,
}

impl Session {
    /// Whether a role allows `any` of these roles' powers (the pages show actions by role; a policy may
    /// allow more, which the API decides when the action is taken).
    pub(crate) fn has(&self, roles: &[&str]) -> bool {
        self.roles.iter().any(|r| roles.contains(&r.as_str())) || !self.policies.is_empty()
    }
}

fn csrf_for(token: &str) -> String {
    let mut input = b"keyward:console:csrf:".to_vec();
    input.extend_from_slice(token.as_bytes());
    let d = sha256(&input);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d[..24])
}

impl Ctx {
    /// Calls the API as `token` (or anonymously), from the client's own address.
    pub(crate) async fn api(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut b = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Body::empty(),
        };
        let failed = |msg: &str| Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: serde_json::json!({"error": {"code": "Unavailable", "message": msg}}),
            raw: Vec::new(),
            content_type: None,
        };
        let Ok(mut req) = b.body(payload) else {
            return failed("the request could not be built");
        };
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(*peer);
        }
        let Ok(resp) = self.console.rest.clone().oneshot(req).await;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let raw = match axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024).await {
            Ok(b) => b.to_vec(),
            Err(_) => return failed("the answer could not be read"),
        };
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            raw,
            content_type,
        }
    }

    /// The signed-in session, or the answer that sends the browser to sign in: no cookie, a token the API
    /// no longer takes, or a session idle past the timeout (whose token is then revoked).
    pub(crate) async fn session(&self) -> Result<Session, Response> {
        let Some(token) = self.cookies.get(SESSION).filter(|t| !t.is_empty()) else {
            return Err(redirect("/ui/login"));
        };
        let token = Zeroizing::new(token.clone());
        let key = sha256(token.as_bytes());
        let idle = {
            let mut seen = self.console.seen.lock();
            let now = Instant::now();
            let idle = seen
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) > self.console.idle);
            if idle {
                seen.remove(&key);
            } else {
                seen.insert(key, now);
            }
            if seen.len() > 100_000 {
                let limit = self.console.idle;
                seen.retain(|_, t| now.duration_since(*t) <= limit);
            }
            idle
        };
        if idle {
            self.api(Some(&token), Method::POST, "/v1/auth/logout", None)
                .await;
            return Err(self.signed_out("/ui/login?expired=1"));
        }
        let me = self
            .api(Some(&token), Method::GET, "/v1/auth/self", None)
            .await;
        if me.status == StatusCode::UNAUTHORIZED {
            return Err(self.signed_out("/ui/login?expired=1"));
        }
        if !me.ok() {
            return Err(self.error_page(None, me.status, &me.message()));
        }
        let strings = |k: &str| -> Vec<String> {
            me.body[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Session {
            csrf: csrf_for(&token),
            name: me.body["name"].as_str().unwrap_or("").to_string(),
            roles: strings("roles"),
            policies: strings("policies"),
            mfa: me.body["mfa"].as_bool().unwrap_or(false),
            token,
        })
    }

    /// The session, checked for a state-changing request: the form's CSRF value must be this session's, and
    /// the request must come from the console's own origin.
    pub(crate) async fn acting(&self, form_csrf: &str) -> Result<Session, Response> {
        let s = self.session().await?;
        if !self.same_origin || !same(form_csrf, &s.csrf) {
            return Err(self.error_page(
                Some(&s),
                StatusCode::FORBIDDEN,
                self.lang.t("This form did not come from this console, or its page is too old. Nothing was changed."),
            ));
        }
        Ok(s)
    }

    /// Calls the API as the session.
    pub(crate) async fn call(
        &self,
        s: &Session,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        self.api(Some(&s.token), method, path, body).await
    }

    /// Clears the session cookie and sends the browser to `to`.
    fn signed_out(&self, to: &str) -> Response {
        let mut r = redirect(to);
        r.headers_mut()
            .append(header::SET_COOKIE, self.cookie(SESSION, "", Some(0)));
        r
    }

    /// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Secure` under TLS, for the console's paths.
    pub(crate) fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
        if self.console.tls {
            c.push_str("; Secure");
        }
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Where an issuer sends the browser back after signing in.
    pub(crate) fn callback(&self, issuer: &str) -> String {
        format!("{}/ui/oidc/{}/callback", self.origin, html::enc(issuer))
    }

    /// The cookie of a sign-in in progress at an identity provider: `SameSite=Lax`, so that it comes back
    /// with the provider's redirect (another site's navigation), for this console's sign-in paths only.
    fn flow_cookie(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let mut c =
            format!("{name}={value}; Path=/ui/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}");
        if self.console.tls {
            c.push_str("; Secure");
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// A page of the signed-in console.
    pub(crate) fn page(&self, s: &Session, nav: &str, title: &str, body: &str) -> Response {
        html::respond(
            StatusCode::OK,
            html::layout(self.lang, Some(s), nav, title, body, &self.here),
        )
    }

    /// A refusal or failure, as a page with the API's status and message.
    pub(crate) fn error_page(
        &self,
        s: Option<&Session>,
        status: StatusCode,
        message: &str,
    ) -> Response {
        let t = |x| self.lang.t(x);
        let body = format!(
            "<div class=\"error\" id=\"error\"><strong>{}</strong> {}</div><p><a href=\"/ui/\">{}</a></p>",
            status.as_u16(),
            html::esc(message),
            t("Back to the overview")
        );
        html::respond(
            status,
            html::layout(self.lang, s, "", t("Refused"), &body, &self.here),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_the_console_s_own_origin_may_change_anything() {
        let host = ("host", "kms.example.com:9700");
        // A browser that says where the request comes from is believed, and must say this origin.
        assert!(same_origin(
            &headers(&[host, ("sec-fetch-site", "same-origin"), ("origin", "null")]),
            false
        ));
        assert!(same_origin(
            &headers(&[
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://kms.example.com:9700")
            ]),
            false
        ));
        for site in ["same-site", "cross-site"] {
            let h = HeaderMap::from_iter([
                (
                    header::HOST,
                    HeaderValue::from_static("kms.example.com:9700"),
                ),
                (
                    axum::http::HeaderName::from_static("sec-fetch-site"),
                    HeaderValue::from_static(site),
                ),
            ]);
            assert!(!same_origin(&h, false), "{site}");
        }
        // Without Sec-Fetch-Site, Origin decides: another port, scheme or host is another origin.
        assert!(same_origin(
            &headers(&[host, ("origin", "http://kms.example.com:9700")]),
            false
        ));
        for other in [
            "http://kms.example.com:9701",
            "https://evil.example",
            "null",
        ] {
            let h = HeaderMap::from_iter([
                (
                    header::HOST,
                    HeaderValue::from_static("kms.example.com:9700"),
                ),
                (
                    header::ORIGIN,
                    HeaderValue::from_str(other).unwrap_or(HeaderValue::from_static("x")),
                ),
            ]);
            assert!(!same_origin(&h, false), "{other}");
        }
        assert!(!same_origin(
            &headers(&[host, ("origin", "http://kms.example.com:9700")]),
            true
        ));
        // A same-origin claim with a foreign Origin is refused.
        assert!(!same_origin(
            &headers(&[
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "https://evil.example")
            ]),
            false
        ));
    }

    #[test]
    fn the_csrf_value_is_bound_to_the_session_and_reveals_nothing_of_it() {
        let a = csrf_for("kw.session-one");
        assert_eq!(a, csrf_for("kw.session-one"));
        assert_ne!(a, csrf_for("kw.session-two"));
        assert!(!a.contains("session"));
        assert!(same(&a, &a.clone()) && !same(&a, &a[1..]) && !same(&a, &csrf_for("x")));
    }

    #[test]
    fn cookies_are_read_whatever_their_order_and_spacing() {
        let h = headers(&[("cookie", "kw_lang=zh;kw_session=kw.abc ; other=1")]);
        let c = cookies(&h);
        assert_eq!(c.get(SESSION).map(String::as_str), Some("kw.abc"));
        assert_eq!(c.get(LANG).map(String::as_str), Some("zh"));
    }

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            html::esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(html::enc("alias/a b"), "alias%2Fa%20b");
    }
}
