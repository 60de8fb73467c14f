//! HTML: escaping, the page layout, forms, charts. Every value that came from the API or the request passes
//! through [`esc`] before it reaches a page.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{Lang, Session};

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    keyward_rest::app::percent(s)
}

/// An HTML answer.
pub(crate) fn respond(status: StatusCode, page: String) -> Response {
    let mut r = (status, page).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The hidden CSRF field of a session's forms.
pub(crate) fn csrf(s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&s.csrf)
    )
}

/// A one-button form posting to `action`.
pub(crate) fn button(s: &Session, action: &str, label: &str, id: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}<button type=\"submit\" id=\"{}\" class=\"{}\">{}</button></form>",
        esc(action),
        csrf(s),
        esc(id),
        class,
        esc(label)
    )
}

const NAV: [(&str, &str, &str); 6] = [
    ("overview", "/ui/", "Overview"),
    ("keys", "/ui/keys", "Keys"),
    ("audit", "/ui/audit", "Audit"),
    ("approvals", "/ui/approvals", "Approvals"),
    ("access", "/ui/access", "Access"),
    ("compliance", "/ui/compliance", "Compliance"),
];

/// A whole page: the header with navigation, who is signed in, the language switch and sign-out.
pub(crate) fn layout(
    lang: Lang,
    s: Option<&Session>,
    nav: &str,
    title: &str,
    body: &str,
    here: &str,
) -> String {
    let t = |x| lang.t(x);
    let mut out = String::with_capacity(body.len() + 2048);
    out.push_str(&format!(
        "<!doctype html><html lang=\"{}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Keyward</title><link rel=\"stylesheet\" href=\"/ui/static/console.css\"><link rel=\"icon\" href=\"/ui/static/favicon.svg\" type=\"image/svg+xml\"></head><body><header><a class=\"brand\" href=\"/ui/\">Keyward</a>",
        lang.code(),
        esc(title)
    ));
    if let Some(s) = s {
        out.push_str("<nav>");
        for (id, href, label) in NAV {
            out.push_str(&format!(
                "<a href=\"{href}\" id=\"nav-{id}\"{}>{}</a>",
                if id == nav { " class=\"on\"" } else { "" },
                t(label)
            ));
        }
        out.push_str("</nav>");
        out.push_str(&format!(
            "<div class=\"who\"><span id=\"who\">{}</span> <span class=\"muted\">{}</span>{}",
            esc(&s.name),
            esc(&s.roles.join(", ")),
            if s.mfa {
                " <span class=\"tag\">MFA</span>"
            } else {
                ""
            }
        ));
    } else {
        out.push_str("<nav></nav><div class=\"who\">");
    }
    let back = enc(here);
    out.push_str(&format!(
        " <a href=\"/ui/lang/en?back={back}\" id=\"lang-en\" lang=\"en\">English</a> · <a href=\"/ui/lang/zh?back={back}\" id=\"lang-zh\" lang=\"zh-CN\">中文</a>"
    ));
    if let Some(s) = s {
        out.push(' ');
        out.push_str(&button(s, "/ui/logout", t("Sign out"), "sign-out", "link"));
    }
    out.push_str("</div></header><main>");
    out.push_str(&format!("<h1 id=\"title\">{}</h1>", esc(title)));
    out.push_str(body);
    out.push_str("</main></body></html>");
    out
}

/// A notice at the top of a page after an action (`?done=` of a redirect).
pub(crate) fn notice(lang: Lang, done: Option<&str>) -> String {
    match done {
        Some(d) if !d.is_empty() => format!(
            "<div class=\"notice\" id=\"notice\">{}</div>",
            esc(lang.t(done_text(d)))
        ),
        _ => String::new(),
    }
}

fn done_text(d: &str) -> &'static str {
    match d {
        "created" => "Created.",
        "rotated" => "Rotated: a new primary version.",
        "enabled" => "Enabled.",
        "disabled" => "Disabled.",
        "scheduled" => "Deletion scheduled.",
        "cancelled" => "Deletion cancelled; the key is disabled.",
        "primary" => "Primary version set.",
        "version" => "Version changed.",
        "alias" => "Aliases changed.",
        "tags" => "Tags saved.",
        "pending" => "Held for approval: others must approve it.",
        "approved" => "Approved.",
        "rejected" => "Rejected.",
        "revoked" => "Token revoked.",
        "saved" => "Saved.",
        "mfa" => "This session now counts as MFA.",
        _ => "Done.",
    }
}

/// A bar chart of counts over time as SVG: one bar per value, the second series drawn over the first.
pub(crate) fn bars(id: &str, series: &[(u64, u64)], labels: (&str, &str)) -> String {
    let w = 600.0_f64;
    let h = 120.0_f64;
    let max = series.iter().map(|(a, b)| a + b).max().unwrap_or(0).max(1) as f64;
    let bw = w / series.len().max(1) as f64;
    let mut out = format!(
        "<svg id=\"{}\" class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"100%\" height=\"140\" preserveAspectRatio=\"none\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        esc(id),
        esc(labels.0)
    );
    out.push_str(&format!(
        "<line x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#999\" stroke-width=\"1\"/>"
    ));
    let width = (bw - 2.0).max(1.0);
    for (i, (ok, bad)) in series.iter().enumerate() {
        let x = i as f64 * bw + 1.0;
        // All requests of the minute, then the refused or failed ones over them.
        for (count, fill, label) in [(ok + bad, "#3b7dd8", labels.0), (*bad, "#d8463b", labels.1)] {
            let height = count as f64 / max * h;
            if height > 0.0 {
                out.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" fill=\"{fill}\"><title>{count} {}</title></rect>",
                    h - height,
                    esc(label)
                ));
            }
        }
    }
    out.push_str(&format!(
        "</svg><div class=\"axis muted small\"><span>−60 min</span><span>max {} / min</span><span>now</span></div>",
        max as u64
    ));
    out
}

/// A key's versions on a line, oldest first: each a dot labelled `vN`, the primary filled, destroyed ones
/// crossed.
pub(crate) fn timeline(versions: &[(u64, String, String)], primary: u64) -> String {
    let step = 90.0_f64;
    let w = (versions.len() as f64 * step + 40.0).max(200.0);
    let mut out = format!(
        "<svg id=\"timeline\" class=\"timeline\" viewBox=\"0 0 {w} 70\" width=\"{w}\" xmlns=\"http://www.w3.org/2000/svg\"><line x1=\"20\" y1=\"30\" x2=\"{}\" y2=\"30\" stroke=\"#999\" stroke-width=\"2\"/>",
        w - 20.0
    );
    for (i, (v, state, created)) in versions.iter().enumerate() {
        let x = 40.0 + i as f64 * step;
        let fill = match (state.as_str(), *v == primary) {
            (_, true) => "#3b7dd8",
            ("Destroyed", _) => "#bbb",
            ("Disabled", _) => "#d8a03b",
            ("Archived", _) => "#8a8a8a",
            _ => "#ffffff",
        };
        out.push_str(&format!(
            "<g class=\"version\" id=\"timeline-v{v}\"><circle cx=\"{x}\" cy=\"30\" r=\"9\" fill=\"{fill}\" stroke=\"#3b7dd8\" stroke-width=\"2\"><title>{} · {}</title></circle><text x=\"{x}\" y=\"14\" font-size=\"12\" text-anchor=\"middle\">v{v}</text><text x=\"{x}\" y=\"56\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{}</text></g>",
            esc(state),
            esc(created),
            esc(created.get(..10).unwrap_or(created))
        ));
    }
    out.push_str("</svg>");
    out
}

/// A `<select>` of `options`, `selected` chosen.
pub(crate) fn select(name: &str, options: &[&str], selected: &str, any: Option<&str>) -> String {
    let mut out = format!("<select name=\"{}\" id=\"{}\">", esc(name), esc(name));
    if let Some(label) = any {
        out.push_str(&format!("<option value=\"\">{}</option>", esc(label)));
    }
    for o in options {
        out.push_str(&format!(
            "<option value=\"{}\"{}>{}</option>",
            esc(o),
            if *o == selected { " selected" } else { "" },
            esc(o)
        ));
    }
    out.push_str("</select>");
    out
}
