//! The pages and the actions behind their forms. Each reads and acts through the API as the signed-in user
//! ([`Ctx::call`]); a refusal is shown with the API's own status and message.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde_json::{json, Value};

use crate::html::{bars, button, csrf, enc, esc, notice, respond, select, timeline};
use crate::{redirect, same, Answer, Ctx, Lang, Session, LANG, PRE, SESSION};

/// The signed-in session, or the answer that sends the browser to sign in.
macro_rules! signed_in {
    ($ctx:expr) => {
        match $ctx.session().await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

/// The session of a state-changing form (its CSRF value and origin checked), or the refusal.
macro_rules! acting {
    ($ctx:expr, $form:expr) => {
        match $ctx.acting(field(&$form, "csrf")).await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

/// What the API answered to the session, or (returned at once) the page showing its refusal.
macro_rules! answered {
    ($ctx:expr, $s:expr, $method:expr, $path:expr, $body:expr) => {{
        let a = $ctx.call(&$s, $method, $path, $body).await;
        if !a.ok() {
            return refused(&$ctx, &$s, &a);
        }
        a
    }};
}

type Params = Query<HashMap<String, String>>;
type Fields = Form<HashMap<String, String>>;

const SPECS: [&str; 23] = [
    "SYMMETRIC_DEFAULT",
    "AES_128",
    "AES_256",
    "SM4",
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "ED25519",
    "SM2",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
    "ML_KEM_768",
    "ML_KEM_1024",
    "TDES",
];
const USAGES: [&str; 4] = [
    "ENCRYPT_DECRYPT",
    "SIGN_VERIFY",
    "GENERATE_VERIFY_MAC",
    "KEY_AGREEMENT",
];
const STATES: [&str; 4] = ["Enabled", "Disabled", "PendingDeletion", "Destroyed"];
const PAGE: usize = 25;

fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> &'a str {
    f.get(k).map(|s| s.trim()).unwrap_or("")
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Every item of a paged list (`next_token`), at most `cap`.
async fn all(
    ctx: &Ctx,
    s: &Session,
    path: &str,
    key: &str,
    cap: usize,
) -> Result<Vec<Value>, Answer> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &next {
            Some(t) => format!("{path}{sep}limit=1000&next_token={}", enc(t)),
            None => format!("{path}{sep}limit=1000"),
        };
        let a = ctx.call(s, Method::GET, &url, None).await;
        if !a.ok() {
            return Err(a);
        }
        if let Some(items) = a.body[key].as_array() {
            out.extend(items.iter().cloned());
        }
        next = a.body["next_token"].as_str().map(str::to_string);
        if next.is_none() || out.len() >= cap {
            return Ok(out);
        }
    }
}

/// Unix seconds of an RFC 3339 time.
fn unix(t: &str) -> Option<i64> {
    keyward_rest::handlers::audit::parse_time(t).map(|ms| ms / 1000)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the API refused, as a page with its status.
fn refused(ctx: &Ctx, s: &Session, a: &Answer) -> Response {
    ctx.error_page(Some(s), a.status, &a.message())
}

/// After an action: back to `to` with a notice, a held approval, or the refusal.
fn after(ctx: &Ctx, s: &Session, a: &Answer, to: &str, done: &str) -> Response {
    if a.status == StatusCode::ACCEPTED {
        let id = text(&a.body, "approval_id");
        return redirect(&format!("/ui/approvals?done=pending&id={}", enc(id)));
    }
    if !a.ok() {
        return refused(ctx, s, a);
    }
    let sep = if to.contains('?') { '&' } else { '?' };
    redirect(&format!("{to}{sep}done={done}"))
}

pub(crate) async fn stylesheet() -> Response {
    let mut r = include_str!("../assets/console.css").into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

pub(crate) async fn favicon() -> Response {
    let mut r = include_str!("../assets/favicon.svg").into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    r
}

/// `GET /ui/lang/{lang}?back=`: remembers the language and goes back (only to a console page).
pub(crate) async fn language(ctx: Ctx, Path(lang): Path<String>, q: Params) -> Response {
    let code = if lang == "zh" { "zh" } else { "en" };
    let back = q
        .get("back")
        .filter(|b| b.starts_with("/ui/") && !b.starts_with("/ui//") && !b.contains('\\'))
        .cloned()
        .unwrap_or_else(|| "/ui/".into());
    let mut r = redirect(&back);
    r.headers_mut().append(
        header::SET_COOKIE,
        ctx.cookie(LANG, code, Some(365 * 86_400)),
    );
    r
}

// ---- Signing in and out ----

pub(crate) async fn login_form(ctx: Ctx, q: Params) -> Response {
    let pre = crate::random_value();
    let methods = ctx
        .api(None, Method::GET, "/v1/auth/methods", None)
        .await
        .body;
    let mut r = sign_in_page(
        &ctx,
        &methods,
        &pre,
        q.get("expired").is_some(),
        None,
        StatusCode::OK,
    );
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.cookie(PRE, &pre, None));
    r
}

fn sign_in_page(
    ctx: &Ctx,
    methods: &Value,
    pre: &str,
    expired: bool,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let t = |x| ctx.lang.t(x);
    let mut body = String::new();
    if expired {
        body.push_str(&format!(
            "<div class=\"notice\" id=\"notice\">{}</div>",
            t("Your session ended. Sign in again.")
        ));
    }
    if let Some(e) = error {
        body.push_str(&format!(
            "<div class=\"error\" id=\"error\">{}</div>",
            esc(e)
        ));
    }
    let pre = esc(pre);
    let providers: Vec<&Value> = methods["oidc"].as_array().into_iter().flatten().collect();
    if !providers.is_empty() {
        body.push_str(&format!(
            "<div class=\"card\" id=\"providers\"><h2>{}</h2>",
            t("Sign in with")
        ));
        for p in providers {
            let name = text(p, "issuer");
            body.push_str(&format!(
                "<a class=\"provider\" href=\"/ui/oidc/{}\" id=\"oidc-{}\">{}</a> ",
                enc(name),
                esc(name),
                esc(text(p, "display_name"))
            ));
        }
        body.push_str("</div>");
    }
    let ldap = if methods["ldap"].as_bool().unwrap_or(false) {
        format!(
            "<label><input type=\"checkbox\" name=\"ldap\" id=\"ldap\" value=\"1\"> {}</label>",
            t("Directory account (LDAP)")
        )
    } else {
        String::new()
    };
    body.push_str(&format!(
        "<div class=\"cards\"><form method=\"post\" action=\"/ui/login\" class=\"card\" id=\"password-form\"><h2>{}</h2><input type=\"hidden\" name=\"pre\" value=\"{pre}\"><input type=\"hidden\" name=\"with\" value=\"password\"><label>{}<input name=\"name\" id=\"name\" autocomplete=\"username\" required></label><label>{}<input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label><label>{}<input name=\"totp\" id=\"totp\" inputmode=\"numeric\" autocomplete=\"one-time-code\"></label>{ldap}<button type=\"submit\" id=\"sign-in\">{}</button></form>",
        t("Sign in with a password"),
        t("Name"),
        t("Password"),
        t("TOTP code (when enrolled)"),
        t("Sign in")
    ));
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/login\" class=\"card\" id=\"token-form\"><h2>{}</h2><input type=\"hidden\" name=\"pre\" value=\"{pre}\"><input type=\"hidden\" name=\"with\" value=\"token\"><label>{}<input name=\"token\" id=\"token\" type=\"password\" autocomplete=\"off\" required></label><p class=\"muted\">{}</p><button type=\"submit\" id=\"sign-in-token\">{}</button></form></div>",
        t("Sign in with a token"),
        t("Token"),
        t("The console opens a session of its own; signing out revokes the session, not this token."),
        t("Sign in")
    ));
    respond(
        status,
        crate::html::layout(ctx.lang, None, "", t("Sign in"), &body, &ctx.here),
    )
}

/// `POST /ui/login`: a password (with TOTP when enrolled, or a directory account), or a token, exchanged
/// for a session token in the cookie.
pub(crate) async fn login(ctx: Ctx, Form(f): Fields) -> Response {
    let t = |x| ctx.lang.t(x);
    let expected = ctx.cookies.get(PRE).cloned().unwrap_or_default();
    let methods = ctx
        .api(None, Method::GET, "/v1/auth/methods", None)
        .await
        .body;
    if !ctx.same_origin || expected.is_empty() || !same(field(&f, "pre"), &expected) {
        return sign_in_page(
            &ctx,
            &methods,
            &expected,
            false,
            Some(t("This form did not come from this console, or its page is too old. Nothing was changed.")),
            StatusCode::FORBIDDEN,
        );
    }
    let answer = if field(&f, "with") == "token" {
        ctx.api(
            Some(field(&f, "token")),
            Method::POST,
            "/v1/auth/session",
            None,
        )
        .await
    } else {
        let mut body = json!({"name": field(&f, "name"), "password": f.get("password").map(String::as_str).unwrap_or("")});
        if !field(&f, "totp").is_empty() {
            body["totp"] = json!(field(&f, "totp"));
        }
        let path = if f.contains_key("ldap") {
            "/v1/auth/ldap/login"
        } else {
            "/v1/auth/login"
        };
        ctx.api(None, Method::POST, path, Some(&body)).await
    };
    let token = text(&answer.body, "token");
    if !answer.ok() || token.is_empty() {
        return sign_in_page(
            &ctx,
            &methods,
            &expected,
            false,
            Some(&answer.message()),
            answer.status,
        );
    }
    let mut r = redirect("/ui/");
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.cookie(SESSION, token, None));
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.cookie(PRE, "", Some(0)));
    r
}

/// `POST /ui/logout`: revokes the session's token and clears the cookie.
pub(crate) async fn logout(ctx: Ctx, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    ctx.call(&s, Method::POST, "/v1/auth/logout", None).await;
    ctx.signed_out("/ui/login")
}

// ---- Overview ----

pub(crate) async fn overview(ctx: Ctx) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let mut body = String::new();
    let status = ctx.call(&s, Method::GET, "/v1/sys/status", None).await;
    let sealed = status.body["sealed"].as_bool().unwrap_or(true);
    body.push_str("<div class=\"cards\">");
    body.push_str(&format!(
        "<section class=\"card\" id=\"seal\"><h2>{}</h2><p class=\"big {}\">{}</p><p class=\"muted\">{} {} · FIPS {}</p></section>",
        t("Seal state"),
        if sealed { "bad" } else { "good" },
        if sealed { t("Sealed") } else { t("Unsealed") },
        t("Root of trust"),
        esc(text(&status.body, "root_of_trust")),
        if status.body["fips"].as_bool().unwrap_or(false) { t("on") } else { t("off") }
    ));
    // Nodes and the audit chain, as each node last saw it.
    let nodes = ctx.call(&s, Method::GET, "/v1/sys/nodes", None).await;
    body.push_str(&format!(
        "<section class=\"card\" id=\"nodes\"><h2>{}</h2>",
        t("Nodes")
    ));
    if nodes.ok() {
        body.push_str(&format!(
            "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            t("Node"),
            t("Status"),
            t("Last seen"),
            t("Audit chain")
        ));
        for n in nodes.body["nodes"].as_array().into_iter().flatten() {
            let whole = n["chain"]["whole"].as_bool().unwrap_or(false);
            body.push_str(&format!(
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                esc(text(n, "node_id").get(..8).unwrap_or("")),
                if n["leader"].as_bool().unwrap_or(false) {
                    format!(" <span class=\"tag\">{}</span>", t("leader"))
                } else {
                    String::new()
                },
                esc(ctx.lang.t(text(n, "status"))),
                esc(text(n, "last_seen")),
                if whole { "good" } else { "bad" },
                if whole { t("whole") } else { t("broken") }
            ));
        }
        body.push_str("</table>");
    } else {
        body.push_str(&format!("<p class=\"muted\">{}</p>", esc(&nodes.message())));
    }
    body.push_str("</section>");
    // The audit chain: every node checks it each round; a full verification is asked for here or on the
    // audit page.
    body.push_str(&format!(
        "<section class=\"card\" id=\"chain\"><h2>{}</h2>",
        t("Audit chain")
    ));
    let beats: Vec<&Value> = nodes.body["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !beats.is_empty() {
        let whole = beats
            .iter()
            .all(|n| n["chain"]["whole"].as_bool().unwrap_or(false));
        let checked = beats
            .iter()
            .filter_map(|n| n["chain"]["checked_at"].as_str())
            .max()
            .unwrap_or("—");
        body.push_str(&format!(
            "<p class=\"big {}\" id=\"chain-state\">{}</p><p class=\"muted\">{} {}</p>",
            if whole { "good" } else { "bad" },
            if whole { t("whole") } else { t("broken") },
            t("Checked by the nodes at"),
            esc(checked)
        ));
    }
    let last = *ctx.console.last_verify.lock();
    body.push_str(&match last {
        Some((at, valid, records)) => format!(
            "<p id=\"last-verify\">{}: <span class=\"{}\">{}</span> · {records} {} · {}</p>",
            t("Last full verification"),
            if valid { "good" } else { "bad" },
            if valid {
                t("Verified whole")
            } else {
                t("Broken")
            },
            t("records"),
            esc(&keyward_core::audit::rfc3339(at))
        ),
        None => format!(
            "<p class=\"muted\" id=\"last-verify\">{}</p>",
            t("No full verification from the console yet.")
        ),
    });
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/audit/verify\" class=\"inline\">{}<button type=\"submit\" id=\"verify-now\">{}</button></form>",
        csrf(&s),
        t("Verify the chain")
    ));
    body.push_str("</section></div>");
    // Keys by state and spec; rotations and deletions due within 30 days.
    match all(&ctx, &s, "/v1/keys", "keys", 100_000).await {
        Ok(keys) => {
            let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
            let mut by_spec: BTreeMap<String, u64> = BTreeMap::new();
            let mut due = Vec::new();
            let horizon = now() + 30 * 86_400;
            for k in &keys {
                *by_state.entry(text(k, "state").to_string()).or_default() += 1;
                *by_spec.entry(text(k, "spec").to_string()).or_default() += 1;
                for (field, what) in [
                    ("next_rotation_at", "rotation"),
                    ("deletion_date", "deletion"),
                ] {
                    if let Some(at) = k.get(field).and_then(Value::as_str) {
                        if unix(at).is_some_and(|u| u <= horizon) {
                            due.push((at.to_string(), what, k.clone()));
                        }
                    }
                }
            }
            due.sort_by(|a, b| a.0.cmp(&b.0));
            body.push_str("<div class=\"cards\">");
            for (id, title, counts) in [
                ("by-state", "Keys by state", &by_state),
                ("by-spec", "Keys by spec", &by_spec),
            ] {
                body.push_str(&format!(
                    "<section class=\"card\" id=\"{id}\"><h2>{}</h2><table>",
                    ctx.lang.t(title)
                ));
                for (k, n) in counts {
                    body.push_str(&format!(
                        "<tr><td>{}</td><td class=\"num\">{n}</td></tr>",
                        esc(ctx.lang.t(k))
                    ));
                }
                if counts.is_empty() {
                    body.push_str(&format!(
                        "<tr><td class=\"muted\">{}</td></tr>",
                        t("No keys yet.")
                    ));
                }
                body.push_str("</table></section>");
            }
            body.push_str(&format!(
                "<section class=\"card wide\" id=\"due\"><h2>{}</h2><table><tr><th>{}</th><th>{}</th><th>{}</th></tr>",
                t("Due in the next 30 days"),
                t("When"),
                t("What"),
                t("Key")
            ));
            for (at, what, k) in due.iter().take(50) {
                let id = text(k, "key_id");
                let name = k.get("alias").and_then(Value::as_str).unwrap_or(id);
                body.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td><a href=\"/ui/keys/{}\">{}</a></td></tr>",
                    esc(at),
                    ctx.lang.t(what),
                    enc(id),
                    esc(name)
                ));
            }
            if due.is_empty() {
                body.push_str(&format!(
                    "<tr><td colspan=\"3\" class=\"muted\">{}</td></tr>",
                    t("Nothing due.")
                ));
            }
            body.push_str("</table></section></div>");
        }
        Err(a) => body.push_str(&format!("<p class=\"muted\">{}</p>", esc(&a.message()))),
    }
    // Requests and errors per minute over the last hour, from this node's counters.
    let activity = ctx.call(&s, Method::GET, "/v1/sys/activity", None).await;
    body.push_str(&format!(
        "<section class=\"card wide\" id=\"activity\"><h2>{}</h2>",
        t("Requests per minute, last hour")
    ));
    if activity.ok() {
        let series: Vec<(u64, u64)> = activity.body["minutes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let n = |k: &str| m[k].as_u64().unwrap_or(0);
                (n("allowed"), n("refused") + n("failed"))
            })
            .collect();
        let total: u64 = series.iter().map(|(a, b)| a + b).sum();
        let errors: u64 = series.iter().map(|(_, b)| b).sum();
        body.push_str(&bars(
            "activity-chart",
            &series,
            (t("requests"), t("refused or failed")),
        ));
        body.push_str(&format!(
            "<p class=\"muted\"><span class=\"swatch ok\"></span>{} {total} · <span class=\"swatch bad\"></span>{} {errors}</p>",
            t("requests"),
            t("refused or failed")
        ));
    } else {
        body.push_str(&format!(
            "<p class=\"muted\">{}</p>",
            esc(&activity.message())
        ));
    }
    body.push_str("</section>");
    // Approvals waiting for this user.
    let pending = ctx
        .call(&s, Method::GET, "/v1/approvals?status=pending", None)
        .await;
    let mine: Vec<&Value> = pending.body["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| {
            text(a, "requested_by") != s.name
                && !a["approvals"]
                    .as_array()
                    .is_some_and(|x| x.iter().any(|d| d.as_str() == Some(&s.name)))
        })
        .collect();
    body.push_str(&format!(
        "<section class=\"card wide\" id=\"waiting\"><h2>{}</h2>",
        t("Approvals waiting for you")
    ));
    if mine.is_empty() {
        body.push_str(&format!(
            "<p class=\"muted\">{}</p>",
            t("Nothing waits for you.")
        ));
    } else {
        body.push_str("<ul>");
        for a in mine {
            body.push_str(&format!(
                "<li><a href=\"/ui/approvals#a-{}\">{}</a> · {} · {}</li>",
                enc(text(a, "approval_id")),
                esc(text(a, "operation")),
                esc(text(a, "requested_by")),
                esc(a.get("key_id").and_then(Value::as_str).unwrap_or(""))
            ));
        }
        body.push_str("</ul>");
    }
    body.push_str("</section>");
    ctx.page(&s, "overview", t("Overview"), &body)
}

// ---- Keys ----

pub(crate) async fn keys(ctx: Ctx, q: Params) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let keys = match all(&ctx, &s, "/v1/keys", "keys", 100_000).await {
        Ok(k) => k,
        Err(a) => return refused(&ctx, &s, &a),
    };
    let want = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let needle = want("q").map(str::to_lowercase);
    let filtered: Vec<&Value> = keys
        .iter()
        .filter(|k| want("state").is_none_or(|v| text(k, "state") == v))
        .filter(|k| want("spec").is_none_or(|v| text(k, "spec") == v))
        .filter(|k| want("usage").is_none_or(|v| text(k, "usage") == v))
        .filter(|k| {
            needle.as_deref().is_none_or(|n| {
                text(k, "key_id").contains(n)
                    || k.get("alias")
                        .and_then(Value::as_str)
                        .is_some_and(|a| a.to_lowercase().contains(n))
                    || text(k, "description").to_lowercase().contains(n)
            })
        })
        .collect();
    let page: usize = want("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let pages = filtered.len().div_ceil(PAGE).max(1);
    let mut body = notice(ctx.lang, q.get("done").map(String::as_str));
    body.push_str(&format!(
        "<form method=\"get\" action=\"/ui/keys\" class=\"filters\" id=\"key-filters\"><input name=\"q\" id=\"q\" placeholder=\"{}\" value=\"{}\">{}{}{}<button type=\"submit\" id=\"filter\">{}</button></form>",
        t("alias, id or description"),
        esc(want("q").unwrap_or("")),
        select("state", &STATES, want("state").unwrap_or(""), Some(t("any state"))),
        select("spec", &SPECS, want("spec").unwrap_or(""), Some(t("any spec"))),
        select("usage", &USAGES, want("usage").unwrap_or(""), Some(t("any usage"))),
        t("Filter")
    ));
    body.push_str(&format!(
        "<table id=\"keys\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t("Alias"),
        t("Spec"),
        t("Usage"),
        t("State"),
        t("Primary version"),
        t("Next rotation")
    ));
    for k in filtered.iter().skip((page - 1) * PAGE).take(PAGE) {
        let id = text(k, "key_id");
        body.push_str(&format!(
            "<tr><td><a href=\"/ui/keys/{}\">{}</a><div class=\"muted small\">{}</div></td><td>{}</td><td>{}</td><td class=\"state {}\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            enc(id),
            esc(k.get("alias").and_then(Value::as_str).unwrap_or(t("(no alias)"))),
            esc(id),
            esc(text(k, "spec")),
            esc(text(k, "usage")),
            esc(text(k, "state")),
            esc(ctx.lang.t(text(k, "state"))),
            k["primary_version"].as_u64().unwrap_or(0),
            esc(k.get("next_rotation_at").and_then(Value::as_str).unwrap_or("—"))
        ));
    }
    body.push_str("</table>");
    let link = |p: usize| {
        let mut qs: Vec<String> = ["q", "state", "spec", "usage"]
            .iter()
            .filter_map(|k| want(k).map(|v| format!("{k}={}", enc(v))))
            .collect();
        qs.push(format!("page={p}"));
        format!("/ui/keys?{}", qs.join("&"))
    };
    body.push_str(&format!(
        "<p class=\"pager\">{} · {} {page} / {pages}",
        filtered.len(),
        t("page")
    ));
    if page > 1 {
        body.push_str(&format!(
            " <a href=\"{}\" id=\"prev\">{}</a>",
            esc(&link(page - 1)),
            t("Previous")
        ));
    }
    if page < pages {
        body.push_str(&format!(
            " <a href=\"{}\" id=\"next\">{}</a>",
            esc(&link(page + 1)),
            t("Next")
        ));
    }
    body.push_str("</p>");
    if s.has(&["admin", "key-admin"]) {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/ui/keys\" class=\"card\" id=\"create-key\"><h2>{}</h2>{}<label>{}<input name=\"alias\" id=\"alias\" placeholder=\"alias/payments\"></label><label>{}{}</label><label>{}{}</label><label>{}{}</label><label>{}<input name=\"rotation_period_days\" id=\"rotation_period_days\" inputmode=\"numeric\"></label><label>{}<input name=\"quorum\" id=\"quorum\" inputmode=\"numeric\"></label><label>{}<input name=\"description\" id=\"description\"></label><button type=\"submit\" id=\"create\">{}</button></form>",
            t("Create a key"),
            csrf(&s),
            t("Alias"),
            t("Spec"),
            select("spec", &SPECS, "AES_256", None).replace("id=\"spec\"", "id=\"new-spec\""),
            t("Usage"),
            select("usage", &USAGES, "ENCRYPT_DECRYPT", None).replace("id=\"usage\"", "id=\"new-usage\""),
            t("Origin"),
            select("origin", &["KEYWARD", "HSM", "EXTERNAL"], "KEYWARD", None),
            t("Rotate every (days)"),
            t("Approvals needed to destroy or export (quorum)"),
            t("Description"),
            t("Create")
        ));
    }
    ctx.page(&s, "keys", t("Keys"), &body)
}

pub(crate) async fn create_key(ctx: Ctx, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    let mut body = json!({"spec": field(&f, "spec"), "usage": field(&f, "usage")});
    for k in ["alias", "description", "origin"] {
        if !field(&f, k).is_empty() {
            body[k] = json!(field(&f, k));
        }
    }
    if let Ok(days) = field(&f, "rotation_period_days").parse::<u64>() {
        body["rotation_period_days"] = json!(days);
    }
    if let Ok(m) = field(&f, "quorum").parse::<u64>() {
        if m > 0 {
            body["quorum"] = json!({"approvals": m});
        }
    }
    let a = answered!(ctx, s, Method::POST, "/v1/keys", Some(&body));
    redirect(&format!(
        "/ui/keys/{}?done=created",
        enc(text(&a.body, "key_id"))
    ))
}

pub(crate) async fn key(ctx: Ctx, Path(id): Path<String>, q: Params) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let path = format!("/v1/keys/{}", enc(&id));
    let k = answered!(ctx, s, Method::GET, &path, None);
    let k = k.body;
    let id = text(&k, "key_id").to_string();
    let versions = ctx
        .call(&s, Method::GET, &format!("{path}/versions"), None)
        .await;
    let aliases = all(&ctx, &s, "/v1/aliases", "aliases", 100_000)
        .await
        .unwrap_or_default();
    let manage = s.has(&["admin", "key-admin"]);
    let primary = k["primary_version"].as_u64().unwrap_or(0);
    let state = text(&k, "state");
    let act = |a: &str| format!("/ui/keys/{}/do/{a}", enc(&id));
    let mut body = notice(ctx.lang, q.get("done").map(String::as_str));
    body.push_str(&format!(
        "<dl class=\"facts\" id=\"facts\"><dt>{}</dt><dd><code>{}</code></dd><dt>{}</dt><dd id=\"key-state\" class=\"state {}\">{}</dd><dt>{}</dt><dd>{} · {}</dd><dt>{}</dt><dd>{}</dd><dt>{}</dt><dd id=\"primary\">v{primary}</dd><dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd></dl>",
        t("Key id"),
        esc(&id),
        t("State"),
        esc(state),
        esc(ctx.lang.t(state)),
        t("Spec"),
        esc(text(&k, "spec")),
        esc(text(&k, "usage")),
        t("Origin"),
        esc(text(&k, "origin")),
        t("Primary version"),
        t("Next rotation"),
        esc(k.get("next_rotation_at").and_then(Value::as_str).unwrap_or("—")),
        t("Deletion date"),
        esc(k.get("deletion_date").and_then(Value::as_str).unwrap_or("—")),
        t("Description"),
        esc(text(&k, "description"))
    ));
    // Versions: the timeline, then a row of actions per version.
    let list: Vec<(u64, String, String)> = versions.body["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["version"].as_u64().unwrap_or(0),
                text(v, "state").to_string(),
                text(v, "created_at").to_string(),
            )
        })
        .collect();
    body.push_str(&format!(
        "<section class=\"card wide\"><h2>{}</h2>",
        t("Versions")
    ));
    body.push_str(&timeline(&list, primary));
    body.push_str(&format!(
        "<table id=\"versions\"><tr><th>{}</th><th>{}</th><th>{}</th><th></th></tr>",
        t("Version"),
        t("State"),
        t("Created")
    ));
    for (v, vstate, created) in &list {
        let mut actions = String::new();
        if manage && state != "Destroyed" {
            let vact = |a: &str| format!("/ui/keys/{}/do/version?n={v}&what={a}", enc(&id));
            if *v != primary && vstate == "Enabled" {
                actions.push_str(&button(
                    &s,
                    &format!("{}?version={v}", act("primary")),
                    t("Make primary"),
                    &format!("primary-v{v}"),
                    "",
                ));
            }
            match vstate.as_str() {
                "Enabled" if *v != primary => {
                    actions.push_str(&button(
                        &s,
                        &vact("archive"),
                        t("Archive"),
                        &format!("archive-v{v}"),
                        "",
                    ));
                    actions.push_str(&button(
                        &s,
                        &vact("disable"),
                        t("Disable"),
                        &format!("disable-v{v}"),
                        "",
                    ));
                }
                "Archived" => actions.push_str(&button(
                    &s,
                    &vact("restore"),
                    t("Restore"),
                    &format!("restore-v{v}"),
                    "",
                )),
                "Disabled" => actions.push_str(&button(
                    &s,
                    &vact("enable"),
                    t("Enable"),
                    &format!("enable-v{v}"),
                    "",
                )),
                _ => {}
            }
        }
        body.push_str(&format!(
            "<tr id=\"version-{v}\"><td>v{v}{}</td><td>{}</td><td>{}</td><td>{actions}</td></tr>",
            if *v == primary {
                format!(" <span class=\"tag\">{}</span>", t("primary"))
            } else {
                String::new()
            },
            esc(ctx.lang.t(vstate)),
            esc(created)
        ));
    }
    body.push_str("</table></section>");
    // The key's actions, as its state allows.
    if manage {
        body.push_str(&format!(
            "<section class=\"card wide\" id=\"actions\"><h2>{}</h2>",
            t("Actions")
        ));
        match state {
            "Enabled" => {
                body.push_str(&button(&s, &act("rotate"), t("Rotate"), "rotate", ""));
                body.push_str(&button(
                    &s,
                    &act("disable"),
                    t("Disable"),
                    "disable",
                    "warn",
                ));
            }
            "Disabled" => body.push_str(&button(&s, &act("enable"), t("Enable"), "enable", "")),
            _ => {}
        }
        match state {
            "Enabled" | "Disabled" => body.push_str(&format!(
                "<form method=\"post\" action=\"{}\" class=\"inline\" id=\"schedule-form\">{}<label>{}<input name=\"pending_days\" id=\"pending_days\" value=\"30\" size=\"3\"></label><button type=\"submit\" id=\"schedule-deletion\" class=\"danger\">{}</button></form>",
                esc(&act("schedule-deletion")),
                csrf(&s),
                t("Days before deletion (7–30)"),
                t("Schedule deletion")
            )),
            "PendingDeletion" => body.push_str(&button(&s, &act("cancel-deletion"), t("Cancel deletion"), "cancel-deletion", "")),
            _ => {}
        }
        body.push_str("</section>");
    }
    // Aliases and tags.
    let mine: Vec<&str> = aliases
        .iter()
        .filter(|a| text(a, "key_id") == id)
        .map(|a| text(a, "alias"))
        .collect();
    body.push_str(&format!(
        "<div class=\"cards\"><section class=\"card\" id=\"aliases\"><h2>{}</h2><ul>",
        t("Aliases")
    ));
    for a in &mine {
        body.push_str(&format!("<li><code>{}</code> ", esc(a)));
        if manage {
            body.push_str(&button(
                &s,
                &format!("{}?alias={}", act("alias-delete"), enc(a)),
                t("Remove"),
                "",
                "link",
            ));
        }
        body.push_str("</li>");
    }
    body.push_str("</ul>");
    if manage {
        body.push_str(&format!(
            "<form method=\"post\" action=\"{}\">{}<input name=\"alias\" id=\"new-alias\" placeholder=\"alias/name\"><button type=\"submit\" id=\"add-alias\">{}</button></form>",
            esc(&act("alias-add")),
            csrf(&s),
            t("Add alias")
        ));
    }
    body.push_str(&format!(
        "</section><section class=\"card\" id=\"tags\"><h2>{}</h2>",
        t("Tags")
    ));
    let tags: Vec<String> = k["tags"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if manage {
        body.push_str(&format!(
            "<form method=\"post\" action=\"{}\">{}<textarea name=\"tags\" id=\"tag-text\" rows=\"4\" placeholder=\"team=payments\">{}</textarea><button type=\"submit\" id=\"save-tags\">{}</button></form>",
            esc(&act("tags")),
            csrf(&s),
            esc(&tags.join("\n")),
            t("Save tags")
        ));
    } else {
        body.push_str(&format!("<pre>{}</pre>", esc(&tags.join("\n"))));
    }
    body.push_str("</section>");
    // The public key and a CSR, for asymmetric keys.
    if matches!(text(&k, "usage"), "SIGN_VERIFY" | "KEY_AGREEMENT")
        || text(&k, "spec").starts_with("RSA")
    {
        body.push_str(&format!(
            "<section class=\"card\" id=\"public\"><h2>{}</h2><p><a href=\"/ui/keys/{}/public-key.pem\" id=\"download-public-key\" download>{}</a></p>",
            t("Public key"),
            enc(&id),
            t("Download the public key (PEM)")
        ));
        if text(&k, "usage") == "SIGN_VERIFY" {
            body.push_str(&format!(
                "<form method=\"post\" action=\"/ui/keys/{}/csr\">{}<label>{}<input name=\"subject\" id=\"csr-subject\" placeholder=\"CN=api.example.com,O=Example\"></label><button type=\"submit\" id=\"download-csr\">{}</button></form>",
                enc(&id),
                csrf(&s),
                t("Subject"),
                t("Download a CSR")
            ));
        }
        body.push_str("</section>");
    }
    body.push_str("</div>");
    body.push_str(&format!(
        "<p><a href=\"/ui/audit?key_id={}\" id=\"key-audit\">{}</a></p>",
        enc(&id),
        t("Who used this key: its audit trail")
    ));
    let title = k
        .get("alias")
        .and_then(Value::as_str)
        .unwrap_or(&id)
        .to_string();
    ctx.page(&s, "keys", &title, &body)
}

pub(crate) async fn key_action(
    ctx: Ctx,
    Path((id, action)): Path<(String, String)>,
    q: Params,
    Form(f): Fields,
) -> Response {
    let s = acting!(ctx, f);
    let base = format!("/v1/keys/{}", enc(&id));
    let back = format!("/ui/keys/{}", enc(&id));
    let (method, path, body, done) = match action.as_str() {
        "rotate" | "enable" | "disable" | "cancel-deletion" => (
            Method::POST,
            format!("{base}/{action}"),
            None,
            match action.as_str() {
                "rotate" => "rotated",
                "enable" => "enabled",
                "disable" => "disabled",
                _ => "cancelled",
            },
        ),
        "schedule-deletion" => (
            Method::POST,
            format!("{base}/schedule-deletion"),
            Some(json!({"pending_days": field(&f, "pending_days").parse::<u64>().unwrap_or(30)})),
            "scheduled",
        ),
        "primary" => (
            Method::POST,
            format!("{base}/primary"),
            Some(
                json!({"version": q.get("version").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)}),
            ),
            "primary",
        ),
        "version" => {
            let what = q.get("what").map(String::as_str).unwrap_or("");
            if !matches!(what, "enable" | "disable" | "archive" | "restore") {
                return ctx.error_page(Some(&s), StatusCode::BAD_REQUEST, "unknown version action");
            }
            (
                Method::POST,
                format!(
                    "{base}/versions/{}/{what}",
                    q.get("n").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                ),
                None,
                "version",
            )
        }
        "alias-add" => (
            Method::PUT,
            format!("/v1/aliases/{}", enc(field(&f, "alias"))),
            Some(json!({"key_id": id})),
            "alias",
        ),
        "alias-delete" => (
            Method::DELETE,
            format!(
                "/v1/aliases/{}",
                enc(q.get("alias").map(String::as_str).unwrap_or(""))
            ),
            None,
            "alias",
        ),
        "tags" => {
            let mut tags = serde_json::Map::new();
            for line in field(&f, "tags").lines() {
                if let Some((k, v)) = line.split_once('=') {
                    tags.insert(k.trim().to_string(), json!(v.trim()));
                } else if !line.trim().is_empty() {
                    return ctx.error_page(
                        Some(&s),
                        StatusCode::BAD_REQUEST,
                        ctx.lang.t("Tags are lines of name=value."),
                    );
                }
            }
            (
                Method::PATCH,
                base.clone(),
                Some(json!({"tags": tags})),
                "tags",
            )
        }
        _ => return ctx.error_page(Some(&s), StatusCode::NOT_FOUND, "no such action"),
    };
    let a = ctx.call(&s, method, &path, body.as_ref()).await;
    after(&ctx, &s, &a, &back, done)
}

fn download(name: &str, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

fn file_name(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

pub(crate) async fn public_key(ctx: Ctx, Path(id): Path<String>) -> Response {
    let s = signed_in!(ctx);
    let a = answered!(
        ctx,
        s,
        Method::GET,
        &format!("/v1/keys/{}/public-key", enc(&id)),
        None
    );
    download(
        &format!("{}.pub.pem", file_name(&id)),
        "application/x-pem-file",
        text(&a.body, "public_key_pem").as_bytes().to_vec(),
    )
}

pub(crate) async fn csr(ctx: Ctx, Path(id): Path<String>, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    let a = answered!(
        ctx,
        s,
        Method::POST,
        &format!("/v1/keys/{}/csr", enc(&id)),
        Some(&json!({"subject": field(&f, "subject")}))
    );
    download(
        &format!("{}.csr.pem", file_name(&id)),
        "application/x-pem-file",
        text(&a.body, "csr_pem").as_bytes().to_vec(),
    )
}

// ---- Audit ----

const AUDIT_FILTERS: [&str; 6] = ["since", "until", "principal", "key_id", "action", "outcome"];

fn audit_query(q: &HashMap<String, String>) -> String {
    AUDIT_FILTERS
        .iter()
        .filter_map(|k| {
            q.get(*k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", enc(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) async fn audit(ctx: Ctx, q: Params) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let filters = audit_query(&q);
    let mut path = format!("/v1/audit?limit=50&{filters}");
    if let Some(next) = q.get("next_token").filter(|n| !n.is_empty()) {
        path.push_str(&format!("&next_token={}", enc(next)));
    }
    let a = answered!(ctx, s, Method::GET, &path, None);
    let v = |k: &str| esc(q.get(k).map(String::as_str).unwrap_or(""));
    let mut body = String::new();
    if let Some(r) = q.get("verified") {
        let (class, msg) = if r == "1" {
            (
                "notice",
                t("The audit chain verifies: every record is in place and unaltered."),
            )
        } else {
            ("error", t("The audit chain does NOT verify."))
        };
        body.push_str(&format!(
            "<div class=\"{class}\" id=\"verify-result\">{} {}</div>",
            msg,
            esc(q.get("detail").map(String::as_str).unwrap_or(""))
        ));
    }
    body.push_str(&format!(
        "<form method=\"get\" action=\"/ui/audit\" class=\"filters\" id=\"audit-filters\"><input name=\"since\" id=\"since\" placeholder=\"{} (RFC 3339)\" value=\"{}\"><input name=\"until\" id=\"until\" placeholder=\"{}\" value=\"{}\"><input name=\"principal\" id=\"principal\" placeholder=\"{}\" value=\"{}\"><input name=\"key_id\" id=\"key_id\" placeholder=\"{}\" value=\"{}\"><input name=\"action\" id=\"action\" placeholder=\"kms:Encrypt\" value=\"{}\">{}<button type=\"submit\" id=\"filter\">{}</button></form>",
        t("since"), v("since"), t("until"), v("until"), t("principal"), v("principal"), t("key id"), v("key_id"), v("action"),
        select("outcome", &["allow", "deny", "error"], q.get("outcome").map(String::as_str).unwrap_or(""), Some(t("any outcome"))),
        t("Filter")
    ));
    body.push_str(&format!(
        "<div class=\"bar\"><form method=\"post\" action=\"/ui/audit/verify\" class=\"inline\">{}<button type=\"submit\" id=\"verify\">{}</button></form> <a href=\"/ui/audit/export.jsonl?{}\" id=\"export\" download>{}</a></div>",
        csrf(&s),
        t("Verify the chain"),
        esc(&filters),
        t("Export these records (JSON lines)")
    ));
    body.push_str(&format!(
        "<table id=\"records\"><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t("Time"), t("Principal"), t("Action"), t("Key or resource"), t("Outcome"), t("Source")
    ));
    for r in a.body["records"].as_array().into_iter().flatten() {
        let subject = r
            .get("key_id")
            .and_then(Value::as_str)
            .or_else(|| r.get("resource").and_then(Value::as_str))
            .unwrap_or("");
        body.push_str(&format!(
            "<tr class=\"record\"><td class=\"num\">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"small\">{}</td><td class=\"outcome {}\">{}{}</td><td>{}</td></tr>",
            r["seq"].as_u64().unwrap_or(0),
            esc(text(r, "time")),
            esc(text(r, "principal")),
            esc(text(r, "action")),
            esc(subject),
            esc(text(r, "outcome")),
            esc(ctx.lang.t(text(r, "outcome"))),
            r.get("error_code").and_then(Value::as_str).map(|c| format!(" ({})", esc(c))).unwrap_or_default(),
            esc(text(r, "source_ip"))
        ));
    }
    body.push_str("</table>");
    if let Some(next) = a.body["next_token"].as_str() {
        body.push_str(&format!(
            "<p class=\"pager\"><a href=\"/ui/audit?{}&next_token={}\" id=\"next\">{}</a></p>",
            esc(&filters),
            enc(next),
            t("Next")
        ));
    }
    ctx.page(&s, "audit", t("Audit"), &body)
}

pub(crate) async fn verify_audit(ctx: Ctx, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    let a = answered!(ctx, s, Method::GET, "/v1/audit/verify", None);
    let valid = a.body["valid"].as_bool().unwrap_or(false);
    *ctx.console.last_verify.lock() = Some((now(), valid, a.body["records"].as_u64().unwrap_or(0)));
    let detail = format!(
        "{} {} · head {}",
        a.body["records"].as_u64().unwrap_or(0),
        ctx.lang.t("records"),
        text(&a.body, "head").get(..16).unwrap_or("")
    );
    redirect(&format!(
        "/ui/audit?verified={}&detail={}",
        u8::from(valid),
        enc(&detail)
    ))
}

pub(crate) async fn export_audit(ctx: Ctx, q: Params) -> Response {
    let s = signed_in!(ctx);
    let records = match all(
        &ctx,
        &s,
        &format!("/v1/audit?{}", audit_query(&q)),
        "records",
        1_000_000,
    )
    .await
    {
        Ok(r) => r,
        Err(a) => return refused(&ctx, &s, &a),
    };
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&serde_json::to_vec(&r).unwrap_or_default());
        out.push(b'\n');
    }
    download("keyward-audit.jsonl", "application/x-ndjson", out)
}

// ---- Approvals ----

pub(crate) async fn approvals(ctx: Ctx, q: Params) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let list = match all(&ctx, &s, "/v1/approvals", "approvals", 10_000).await {
        Ok(l) => l,
        Err(a) => return refused(&ctx, &s, &a),
    };
    let mut body = notice(ctx.lang, q.get("done").map(String::as_str));
    if !s.mfa {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/ui/session/step-up\" class=\"inline-form\" id=\"step-up-form\"><span class=\"muted\">{}</span>{}<input name=\"totp\" id=\"step-up-totp\" size=\"9\" inputmode=\"numeric\" autocomplete=\"one-time-code\" placeholder=\"TOTP\"><button type=\"submit\" id=\"step-up\">{}</button></form>",
            t("A policy may ask for MFA to see or approve a request: confirm this session with your current TOTP code."),
            csrf(&s),
            t("Confirm with TOTP")
        ));
    }
    if let Some(id) = q.get("id") {
        body.push_str(&format!(
            "<p class=\"muted\">{} <code id=\"approval-id\">{}</code></p>",
            t("Approval"),
            esc(id)
        ));
    }
    for (title, open) in [("Pending", true), ("Closed", false)] {
        body.push_str(&format!(
            "<section class=\"card wide\" id=\"{}\"><h2>{}</h2><table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr>",
            if open { "pending" } else { "closed" },
            ctx.lang.t(title), t("Operation"), t("Key or policy"), t("Requested by"), t("Approvals"), t("Status")
        ));
        for a in list
            .iter()
            .filter(|a| (text(a, "status") == "pending") == open)
        {
            let id = text(a, "approval_id");
            let approvers: Vec<&str> = a["approvals"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut actions = String::new();
            if open && text(a, "requested_by") != s.name {
                actions.push_str(&button(
                    &s,
                    &format!("/ui/approvals/{}/approve", enc(id)),
                    t("Approve"),
                    &format!("approve-{id}"),
                    "",
                ));
                actions.push_str(&button(
                    &s,
                    &format!("/ui/approvals/{}/reject", enc(id)),
                    t("Reject"),
                    &format!("reject-{id}"),
                    "warn",
                ));
            }
            body.push_str(&format!(
                "<tr id=\"a-{}\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{} / {}: {}</td><td>{}</td><td>{actions}</td></tr>",
                esc(id),
                esc(text(a, "operation")),
                esc(a.get("key_id").and_then(Value::as_str).or_else(|| a.get("name").and_then(Value::as_str)).unwrap_or("")),
                esc(text(a, "requested_by")),
                approvers.len(),
                a["required"].as_u64().unwrap_or(0),
                esc(&approvers.join(", ")),
                esc(ctx.lang.t(text(a, "status")))
            ));
        }
        body.push_str("</table></section>");
    }
    ctx.page(&s, "approvals", t("Approvals"), &body)
}

pub(crate) async fn decide(
    ctx: Ctx,
    Path((id, decision)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let s = acting!(ctx, f);
    if !matches!(decision.as_str(), "approve" | "reject") {
        return ctx.error_page(Some(&s), StatusCode::NOT_FOUND, "no such decision");
    }
    let path = format!("/v1/approvals/{}/{decision}", enc(&id));
    let a = ctx.call(&s, Method::POST, &path, None).await;
    let done = if decision == "approve" {
        "approved"
    } else {
        "rejected"
    };
    if !a.ok() {
        return refused(&ctx, &s, &a);
    }
    redirect(&format!("/ui/approvals?done={done}"))
}

/// `POST /ui/session/step-up`: the session is replaced by one opened with a TOTP code, which counts as MFA;
/// the old session's token is revoked.
pub(crate) async fn step_up(ctx: Ctx, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    let up = answered!(
        ctx,
        s,
        Method::POST,
        "/v1/auth/session",
        Some(&json!({"totp": field(&f, "totp")}))
    );
    ctx.call(&s, Method::POST, "/v1/auth/logout", None).await;
    let mut r = redirect("/ui/approvals?done=mfa");
    r.headers_mut().append(
        header::SET_COOKIE,
        ctx.cookie(SESSION, text(&up.body, "token"), None),
    );
    r
}

// ---- Access ----

pub(crate) async fn access(ctx: Ctx, q: Params) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let ids = match all(&ctx, &s, "/v1/identities", "identities", 100_000).await {
        Ok(l) => l,
        Err(a) => return refused(&ctx, &s, &a),
    };
    let policies = all(&ctx, &s, "/v1/policies", "policies", 100_000)
        .await
        .unwrap_or_default();
    let mut body = notice(ctx.lang, q.get("done").map(String::as_str));
    body.push_str(&format!(
        "<section class=\"card wide\"><h2>{}</h2><table id=\"identities\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t("Identities"), t("Name"), t("Kind"), t("Roles"), t("Policies"), t("Signs in with")
    ));
    for i in &ids {
        let list = |k: &str| {
            i[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let mut how = Vec::new();
        if i["password"].as_bool().unwrap_or(false) {
            how.push(t("password").to_string());
        }
        if i["mfa"].as_bool().unwrap_or(false) {
            how.push("TOTP".into());
        }
        if let Some(src) = i.get("source").and_then(Value::as_str) {
            how.push(src.to_string());
        }
        if i.get("certificate_subject")
            .and_then(Value::as_str)
            .is_some()
        {
            how.push(t("certificate").to_string());
        }
        body.push_str(&format!(
            "<tr><td><a href=\"/ui/access/identities/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            enc(text(i, "name")), esc(text(i, "name")), esc(ctx.lang.t(text(i, "kind"))), esc(&list("roles")), esc(&list("policies")), esc(&how.join(", "))
        ));
    }
    body.push_str("</table>");
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/access/identities\" class=\"inline-form\" id=\"create-identity\">{}<input name=\"name\" id=\"identity-name\" placeholder=\"{}\"> {} {} <input name=\"policies\" id=\"identity-policies\" placeholder=\"{}\"><button type=\"submit\" id=\"create-identity-button\">{}</button></form></section>",
        csrf(&s),
        t("name"),
        select("kind", &["service", "user"], "service", None),
        select("role", &["key-user", "key-admin", "auditor", "admin"], "key-user", Some(t("no role"))),
        t("policies, comma-separated"),
        t("Create identity")
    ));
    body.push_str(&format!(
        "<section class=\"card wide\" id=\"policies\"><h2>{}</h2><ul>",
        t("Policies")
    ));
    for p in &policies {
        let name = p.as_str().unwrap_or_else(|| text(p, "name"));
        body.push_str(&format!(
            "<li><a href=\"/ui/access/policies/{}\">{}</a></li>",
            enc(name),
            esc(name)
        ));
    }
    body.push_str(&format!(
        "</ul><form method=\"get\" action=\"/ui/access/policies/new\" class=\"inline-form\"><button type=\"submit\" id=\"new-policy\">{}</button></form></section>",
        t("New policy")
    ));
    ctx.page(&s, "access", t("Access"), &body)
}

pub(crate) async fn create_identity(ctx: Ctx, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    let roles: Vec<&str> = Some(field(&f, "role"))
        .filter(|r| !r.is_empty())
        .into_iter()
        .collect();
    let policies: Vec<&str> = field(&f, "policies")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let body = json!({"name": field(&f, "name"), "kind": field(&f, "kind"), "roles": roles, "policies": policies});
    let a = ctx
        .call(&s, Method::POST, "/v1/identities", Some(&body))
        .await;
    after(
        &ctx,
        &s,
        &a,
        &format!("/ui/access/identities/{}", enc(field(&f, "name"))),
        "created",
    )
}

pub(crate) async fn identity(ctx: Ctx, Path(name): Path<String>, q: Params) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let i = ctx
        .call(
            &s,
            Method::GET,
            &format!("/v1/identities/{}", enc(&name)),
            None,
        )
        .await;
    if !i.ok() && name != "root" {
        return refused(&ctx, &s, &i);
    }
    let tokens = all(
        &ctx,
        &s,
        &format!("/v1/identities/{}/tokens", enc(&name)),
        "tokens",
        10_000,
    )
    .await;
    let mut body = notice(ctx.lang, q.get("done").map(String::as_str));
    if let Some(tok) = q.get("token") {
        body.push_str(&format!(
            "<div class=\"notice\" id=\"new-token\">{} <code>{}</code></div>",
            t("The new token, shown this once:"),
            esc(tok)
        ));
    }
    if i.ok() {
        body.push_str(&format!(
            "<dl class=\"facts\"><dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd></dl>",
            t("Kind"), esc(ctx.lang.t(text(&i.body, "kind"))),
            t("Roles"), esc(&i.body["roles"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
            t("Policies"), esc(&i.body["policies"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default())
        ));
    }
    body.push_str(&format!(
        "<section class=\"card wide\"><h2>{}</h2><table id=\"tokens\"><tr><th>{}</th><th>{}</th><th>{}</th><th>MFA</th><th></th></tr>",
        t("Tokens"), t("Token id"), t("Created"), t("Expires")
    ));
    for tk in tokens.unwrap_or_default() {
        let id = text(&tk, "token_id");
        body.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(id),
            esc(text(&tk, "created_at")),
            esc(tk.get("expires_at").and_then(Value::as_str).unwrap_or("—")),
            if tk["mfa"].as_bool().unwrap_or(false) {
                "✓"
            } else {
                ""
            },
            button(
                &s,
                &format!(
                    "/ui/access/tokens/{}/revoke?identity={}",
                    enc(id),
                    enc(&name)
                ),
                t("Revoke"),
                &format!("revoke-{id}"),
                "warn"
            )
        ));
    }
    body.push_str("</table>");
    if name != "root" {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/ui/access/identities/{}/tokens\" class=\"inline-form\">{}<label>{}<input name=\"ttl_seconds\" id=\"ttl\" value=\"86400\"></label><button type=\"submit\" id=\"create-token\">{}</button></form>",
            enc(&name), csrf(&s), t("Lifetime (seconds)"), t("Create token")
        ));
    }
    body.push_str("</section>");
    ctx.page(&s, "access", &name, &body)
}

pub(crate) async fn create_token(ctx: Ctx, Path(name): Path<String>, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    let ttl = field(&f, "ttl_seconds").parse::<i64>().unwrap_or(86_400);
    let a = answered!(
        ctx,
        s,
        Method::POST,
        &format!("/v1/identities/{}/tokens", enc(&name)),
        Some(&json!({"ttl_seconds": ttl}))
    );
    // The token is shown once, on the page this answer renders, and never put in a URL or a log.
    let mut q = HashMap::new();
    q.insert("token".to_string(), text(&a.body, "token").to_string());
    q.insert("done".to_string(), "created".to_string());
    identity(ctx, Path(name), Query(q)).await
}

/// `GET` of the token form's address (a reload after a token was shown): back to the identity, where the
/// token is not shown again.
pub(crate) async fn to_identity(Path(name): Path<String>) -> Response {
    redirect(&format!("/ui/access/identities/{}", enc(&name)))
}

/// Any other address under `/ui/`.
pub(crate) async fn no_such_page(ctx: Ctx) -> Response {
    ctx.error_page(None, StatusCode::NOT_FOUND, ctx.lang.t("No such page."))
}

pub(crate) async fn revoke_token(
    ctx: Ctx,
    Path(id): Path<String>,
    q: Params,
    Form(f): Fields,
) -> Response {
    let s = acting!(ctx, f);
    let a = ctx
        .call(
            &s,
            Method::DELETE,
            &format!("/v1/tokens/{}", enc(&id)),
            None,
        )
        .await;
    let back = format!(
        "/ui/access/identities/{}",
        enc(q.get("identity").map(String::as_str).unwrap_or(""))
    );
    after(&ctx, &s, &a, &back, "revoked")
}

pub(crate) async fn policy(ctx: Ctx, Path(name): Path<String>, q: Params) -> Response {
    let s = signed_in!(ctx);
    let (text_now, new) = if name == "new" {
        (
            "{\n  \"statements\": [\n    {\"effect\": \"allow\", \"actions\": [\"kms:Encrypt\", \"kms:Decrypt\"], \"resources\": [\"alias/app-*\"]}\n  ]\n}".to_string(),
            true,
        )
    } else {
        let a = answered!(
            ctx,
            s,
            Method::GET,
            &format!("/v1/policies/{}", enc(&name)),
            None
        );
        let mut doc = a.body.clone();
        if let Some(o) = doc.as_object_mut() {
            o.remove("name");
        }
        (
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
            false,
        )
    };
    policy_editor(
        &ctx,
        &s,
        &name,
        "",
        new,
        &text_now,
        None,
        q.get("done").map(String::as_str),
        StatusCode::OK,
    )
}

#[allow(clippy::too_many_arguments)]
fn policy_editor(
    ctx: &Ctx,
    s: &Session,
    name: &str,
    typed_name: &str,
    new: bool,
    doc: &str,
    error: Option<&str>,
    done: Option<&str>,
    status: StatusCode,
) -> Response {
    let t = |x| ctx.lang.t(x);
    let mut body = notice(ctx.lang, done);
    if let Some(e) = error {
        body.push_str(&format!(
            "<div class=\"error\" id=\"policy-error\">{}</div>",
            esc(e)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/access/policies/{}\" id=\"policy-form\">{}{}<textarea name=\"document\" id=\"document\" rows=\"18\" class=\"code{}\">{}</textarea><button type=\"submit\" id=\"save-policy\">{}</button></form>",
        enc(name),
        csrf(s),
        if new {
            format!(
                "<label>{}<input name=\"name\" id=\"policy-name\" value=\"{}\" required></label>",
                t("Policy name"),
                esc(typed_name)
            )
        } else {
            String::new()
        },
        if error.is_some() { " invalid" } else { "" },
        esc(doc),
        t("Save policy")
    ));
    let mut r = ctx.page(
        s,
        "access",
        &if new {
            t("New policy").to_string()
        } else {
            name.to_string()
        },
        &body,
    );
    *r.status_mut() = status;
    r
}

pub(crate) async fn save_policy(ctx: Ctx, Path(name): Path<String>, Form(f): Fields) -> Response {
    let s = acting!(ctx, f);
    let new = name == "new";
    let target = if new {
        field(&f, "name").to_string()
    } else {
        name.clone()
    };
    let doc_text = f.get("document").cloned().unwrap_or_default();
    let doc: Value = match serde_json::from_str(&doc_text) {
        Ok(d) => d,
        Err(e) => {
            let msg = format!("{} {e}", ctx.lang.t("The document is not JSON:"));
            return policy_editor(
                &ctx,
                &s,
                &name,
                &target,
                new,
                &doc_text,
                Some(&msg),
                None,
                StatusCode::BAD_REQUEST,
            );
        }
    };
    let a = ctx
        .call(
            &s,
            Method::PUT,
            &format!("/v1/policies/{}", enc(&target)),
            Some(&doc),
        )
        .await;
    if a.status == StatusCode::BAD_REQUEST {
        return policy_editor(
            &ctx,
            &s,
            &name,
            &target,
            new,
            &doc_text,
            Some(&a.message()),
            None,
            StatusCode::BAD_REQUEST,
        );
    }
    after(
        &ctx,
        &s,
        &a,
        &format!("/ui/access/policies/{}", enc(&target)),
        "saved",
    )
}

// ---- Compliance ----

pub(crate) async fn compliance(ctx: Ctx) -> Response {
    let s = signed_in!(ctx);
    let t = |x| ctx.lang.t(x);
    let a = ctx
        .call(&s, Method::GET, "/v1/reports/compliance?format=json", None)
        .await;
    if !a.ok() {
        return refused(&ctx, &s, &a);
    }
    let r = &a.body;
    let mut body = format!(
        "<p class=\"bar\"><a href=\"/ui/compliance/report.json\" id=\"report-json\" download>{}</a> · <a href=\"/ui/compliance/report.html\" id=\"report-html\" download>{}</a></p>",
        t("Download as JSON"),
        t("Download as HTML")
    );
    let valid = r["audit_chain_valid"].as_bool().unwrap_or(false);
    body.push_str(&format!(
        "<div class=\"cards\"><section class=\"card\"><h2>{}</h2><p class=\"big {}\" id=\"report-chain\">{}</p><p class=\"muted\">{} {} · {}</p></section>",
        t("Audit chain"),
        if valid { "good" } else { "bad" },
        if valid { t("Verified whole") } else { t("Broken") },
        r["audit_records"].as_u64().unwrap_or(0),
        t("records"),
        esc(text(r, "generated_at"))
    ));
    body.push_str(&format!(
        "<section class=\"card\"><h2>{}</h2><table><tr><td>{}</td><td class=\"num\" id=\"inventory-total\">{}</td></tr><tr><td>{}</td><td class=\"num\">{}</td></tr><tr><td>{}</td><td class=\"num\">{}</td></tr><tr><td>{}</td><td class=\"num\">{}</td></tr></table></section></div>",
        t("Inventory"),
        t("Keys"),
        r["inventory"]["total"].as_u64().unwrap_or(0),
        t("Rotation overdue"),
        r["rotation_overdue"].as_u64().unwrap_or(0),
        t("Pending deletions"),
        r["pending_deletions"].as_array().map_or(0, Vec::len),
        t("Weak keys"),
        r["weak_keys"].as_array().map_or(0, Vec::len)
    ));
    body.push_str(&format!(
        "<section class=\"card wide\"><h2>{}</h2><table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t("Access by principal"), t("Principal"), t("allow"), t("deny"), t("error")
    ));
    if let Some(m) = r["access_by_principal"].as_object() {
        for (p, c) in m {
            body.push_str(&format!(
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(p), c["allow"].as_u64().unwrap_or(0), c["deny"].as_u64().unwrap_or(0), c["error"].as_u64().unwrap_or(0)
            ));
        }
    }
    body.push_str("</table></section>");
    ctx.page(&s, "compliance", t("Compliance"), &body)
}

pub(crate) async fn report(ctx: Ctx, Path(format): Path<String>) -> Response {
    let s = signed_in!(ctx);
    let (fmt, ctype) = match format.as_str() {
        "json" => ("json", "application/json"),
        "html" => ("html", "text/html; charset=utf-8"),
        _ => return ctx.error_page(Some(&s), StatusCode::NOT_FOUND, "no such format"),
    };
    let a = answered!(
        ctx,
        s,
        Method::GET,
        &format!("/v1/reports/compliance?format={fmt}"),
        None
    );
    let _ = &a.content_type;
    download(&format!("keyward-compliance.{fmt}"), ctype, a.raw)
}

impl Lang {
    /// The `lang` attribute of a page.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_the_api_writes_them() {
        for t in [0, 951_782_400, 1_796_646_354, 4_102_444_800] {
            assert_eq!(unix(&keyward_core::audit::rfc3339(t)), Some(t));
        }
        assert_eq!(unix("2026-12-07T12:45:54.429Z"), Some(1_796_647_554));
    }
}
