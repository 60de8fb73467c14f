//! `GET /v1/reports/compliance?format=json|html&dormant_days=N`: what an auditor asks for under PCI DSS 3.5/3.6
//! and similar regimes — the key inventory, weak algorithms, each key's rotation against its cryptoperiod,
//! pending deletions, dormant keys, who did what, what was refused, quorum settings, and an access review of
//! the identities (grants, live tokens, last activity, privileged users without MFA, dormant identities).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyward_core::audit::{rfc3339, AuditRecord};
use keyward_core::{KeyFilter, KeyInfo, KeySpec, KeyState, DAY};
use keyward_store::AuditQuery;
use serde::Serialize;

use crate::app::{call, text, AppState, Meta, Mode, Reply};
use crate::authz::{Action, Class};
use crate::error::ApiError;

#[derive(Serialize, Default)]
struct Inventory {
    total: usize,
    by_spec: BTreeMap<String, usize>,
    by_origin: BTreeMap<String, usize>,
    by_state: BTreeMap<String, usize>,
}

#[derive(Serialize)]
struct WeakKey {
    key_id: String,
    spec: String,
    reason: &'static str,
}

#[derive(Serialize)]
struct Rotation {
    key_id: String,
    alias: Option<String>,
    spec: String,
    rotation_period_days: Option<u32>,
    last_rotated_at: String,
    primary_version_age_days: i64,
    status: &'static str,
}

#[derive(Serialize)]
struct PendingDeletion {
    key_id: String,
    deletion_date: String,
}

#[derive(Serialize)]
struct Dormant {
    key_id: String,
    last_used_at: Option<String>,
}

#[derive(Serialize, Default)]
struct Access {
    allow: u64,
    deny: u64,
    error: u64,
}

#[derive(Serialize)]
struct QuorumSetting {
    key_id: String,
    approvals: u32,
}

/// What the access review points out about an identity.
const FINDINGS: [&str; 3] = [
    "privileged user without MFA",
    "no roles or policies",
    "dormant",
];

/// One identity in the access review: its grants, its live tokens, when it last acted, and what stands out.
#[derive(Serialize)]
struct IdentityReview {
    name: String,
    kind: String,
    roles: Vec<String>,
    policies: Vec<String>,
    password: bool,
    mfa: bool,
    live_tokens: usize,
    last_active_at: Option<String>,
    findings: Vec<&'static str>,
}

#[derive(Serialize)]
struct Report {
    /// First, because nothing else in the report can be trusted when it is false: whether the audit chain
    /// verifies (checked for this report), and what the node's own watch found.
    audit_chain_valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_chain_problem: Option<String>,
    generated_at: String,
    node_id: String,
    version: &'static str,
    root_of_trust: Option<&'static str>,
    /// Whether cryptography runs in a FIPS 140-3 validated module in FIPS mode, and which module.
    fips: bool,
    crypto_module: keyward_api::CryptoModuleInfo,
    dormant_after_days: i64,
    inventory: Inventory,
    weak_keys: Vec<WeakKey>,
    rotation: Vec<Rotation>,
    rotation_overdue: usize,
    pending_deletions: Vec<PendingDeletion>,
    dormant_keys: Vec<Dormant>,
    access_by_principal: BTreeMap<String, Access>,
    refused_and_failed: Vec<AuditRecord>,
    quorum: Vec<QuorumSetting>,
    identities: Vec<IdentityReview>,
    /// Unexpired tokens of the root identity: after setup the root token should be revoked (a threshold of
    /// shares can always mint a new one).
    root_tokens_live: usize,
    audit_records: u64,
    /// Records through this one were pruned under the retention period; the chain is checked from the next.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_pruned_through: Option<u64>,
    /// Records younger than this are never pruned.
    audit_retention_days: u32,
    /// Closed approval requests are deleted this long after their expiry time (their trail stays in the
    /// audit log).
    approval_retention_days: u32,
}

fn all_keys(app: &AppState) -> Result<Vec<KeyInfo>, ApiError> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, next) = app
            .kms
            .list_keys(&KeyFilter::default(), after.as_deref(), 1000)?;
        keys.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => return Ok(keys),
        }
    }
}

fn build(app: &AppState, dormant_days: i64) -> Result<Report, ApiError> {
    let now = app.clock.now();
    let keys = all_keys(app)?;
    let findings = KeyFindings::of(&keys, now);
    let trail = Trail::read(app)?;
    let tokens = app.iam.auth.live_tokens(now)?;
    let identities = review(app, &trail, &tokens, now, dormant_days)?;
    let chain = app.kms.verify_audit()?;
    let module = app.kms.crypto_module();
    Ok(Report {
        fips: module.fips,
        crypto_module: keyward_api::CryptoModuleInfo {
            name: module.name,
            version: module.version,
        },
        generated_at: rfc3339(now),
        node_id: app.node_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        root_of_trust: app.kms.status().root_of_trust.map(|r| r.as_str()),
        dormant_after_days: dormant_days,
        rotation_overdue: findings
            .rotation
            .iter()
            .filter(|r| r.status == "overdue")
            .count(),
        inventory: findings.inventory,
        weak_keys: findings.weak_keys,
        rotation: findings.rotation,
        pending_deletions: findings.pending_deletions,
        dormant_keys: dormant(&keys, &trail, now, dormant_days),
        access_by_principal: trail.access,
        refused_and_failed: trail.refused.into(),
        quorum: findings.quorum,
        identities,
        root_tokens_live: tokens.get("root").copied().unwrap_or(0),
        audit_chain_valid: chain.valid,
        audit_chain_problem: match (chain.valid, app.chain.status().broken) {
            (_, Some(reason)) => Some(reason),
            (false, None) => Some(format!(
                "audit record {} does not verify",
                chain.first_bad_seq.unwrap_or(0)
            )),
            (true, None) => None,
        },
        audit_records: chain.records,
        audit_pruned_through: chain.pruned_through,
        audit_retention_days: app.config.audit_retention_days,
        approval_retention_days: app.config.approval_retention_days,
    })
}

/// What the key inventory alone shows.
#[derive(Default)]
struct KeyFindings {
    inventory: Inventory,
    weak_keys: Vec<WeakKey>,
    rotation: Vec<Rotation>,
    pending_deletions: Vec<PendingDeletion>,
    quorum: Vec<QuorumSetting>,
}

impl KeyFindings {
    fn of(keys: &[KeyInfo], now: i64) -> KeyFindings {
        let mut f = KeyFindings {
            inventory: Inventory {
                total: keys.len(),
                ..Inventory::default()
            },
            ..KeyFindings::default()
        };
        for k in keys {
            f.count(k);
            if k.spec == KeySpec::Tdes {
                f.weak_keys.push(WeakKey {
                    key_id: k.key_id.clone(),
                    spec: k.spec.as_str().into(),
                    reason: "TDES: 112-bit security, legacy only",
                });
            }
            if let Some(d) = k
                .deletion_date
                .filter(|_| k.state == KeyState::PendingDeletion)
            {
                f.pending_deletions.push(PendingDeletion {
                    key_id: k.key_id.clone(),
                    deletion_date: rfc3339(d),
                });
            }
            if let Some(m) = k.quorum_approvals {
                f.quorum.push(QuorumSetting {
                    key_id: k.key_id.clone(),
                    approvals: m,
                });
            }
            if k.state != KeyState::Destroyed {
                f.rotation.push(rotation(k, now));
            }
        }
        f
    }

    fn count(&mut self, k: &KeyInfo) {
        let inv = &mut self.inventory;
        *inv.by_spec.entry(k.spec.as_str().into()).or_default() += 1;
        *inv.by_origin.entry(k.origin.as_str().into()).or_default() += 1;
        *inv.by_state.entry(k.state.as_str().into()).or_default() += 1;
    }
}

/// A key's primary version against its cryptoperiod.
fn rotation(k: &KeyInfo, now: i64) -> Rotation {
    let since = k.last_rotated_at.unwrap_or(k.created_at);
    let age = (now - since).max(0) / DAY;
    Rotation {
        key_id: k.key_id.clone(),
        alias: k.alias.clone(),
        spec: k.spec.as_str().into(),
        rotation_period_days: k.rotation_period_days,
        last_rotated_at: rfc3339(since),
        primary_version_age_days: age,
        status: match k.rotation_period_days {
            Some(p) if age > p as i64 => "overdue",
            Some(_) => "ok",
            None => "no cryptoperiod set",
        },
    }
}

/// How many refused or failed records the report lists: the latest.
const REFUSED_SHOWN: usize = 200;

/// What one pass over the audit log shows: last use per key, last activity and outcomes per principal, and
/// the latest refusals.
#[derive(Default)]
struct Trail {
    last_used: HashMap<String, i64>,
    last_active: HashMap<String, i64>,
    access: BTreeMap<String, Access>,
    refused: std::collections::VecDeque<AuditRecord>,
}

impl Trail {
    fn read(app: &AppState) -> Result<Trail, ApiError> {
        let mut t = Trail::default();
        let mut after_seq = 0;
        loop {
            let batch = app.kms.query_audit(&AuditQuery {
                after_seq,
                limit: 5000,
                ..AuditQuery::default()
            })?;
            let Some(last) = batch.last() else {
                return Ok(t);
            };
            after_seq = last.seq;
            batch.into_iter().for_each(|r| t.take(r));
        }
    }

    fn take(&mut self, r: AuditRecord) {
        let a = self.access.entry(r.principal.clone()).or_default();
        match r.outcome.as_str() {
            "allow" => a.allow += 1,
            "deny" => a.deny += 1,
            _ => a.error += 1,
        }
        if r.outcome != "allow" {
            if self.refused.len() == REFUSED_SHOWN {
                self.refused.pop_front();
            }
            self.refused.push_back(r);
            return;
        }
        let Some(t) = crate::handlers::audit::parse_time(&r.time).map(|ms| ms / 1000) else {
            return;
        };
        if Action::parse(&r.action).is_some_and(|a| a.class() == Class::Use) {
            if let Some(k) = &r.key_id {
                self.last_used.insert(k.clone(), t);
            }
        }
        self.last_active.insert(r.principal, t);
    }
}

/// Enabled keys unused for longer than `dormant_days`.
fn dormant(keys: &[KeyInfo], trail: &Trail, now: i64, dormant_days: i64) -> Vec<Dormant> {
    keys.iter()
        .filter(|k| k.state == KeyState::Enabled)
        .filter_map(|k| {
            let used = trail.last_used.get(&k.key_id).copied();
            let idle_since = used.unwrap_or(k.created_at);
            (now - idle_since > dormant_days * DAY).then(|| Dormant {
                key_id: k.key_id.clone(),
                last_used_at: used.map(rfc3339),
            })
        })
        .collect()
}

/// The access review: every identity's grants, live tokens, last activity, and findings.
fn review(
    app: &AppState,
    trail: &Trail,
    tokens: &BTreeMap<String, usize>,
    now: i64,
    dormant_days: i64,
) -> Result<Vec<IdentityReview>, ApiError> {
    Ok(crate::handlers::identities::summaries(app)?
        .into_iter()
        .map(|i| {
            let active = trail.last_active.get(&i.name).copied();
            let mut findings = Vec::new();
            let privileged = i.roles.iter().any(|r| r == "admin" || r == "key-admin");
            if i.kind == "user" && privileged && !i.mfa {
                findings.push(FINDINGS[0]);
            }
            if i.roles.is_empty() && i.policies.is_empty() {
                findings.push(FINDINGS[1]);
            }
            if now - active.unwrap_or(i.created_at) > dormant_days * DAY {
                findings.push(FINDINGS[2]);
            }
            IdentityReview {
                live_tokens: tokens.get(&i.name).copied().unwrap_or(0),
                last_active_at: active.map(rfc3339),
                findings,
                name: i.name,
                kind: i.kind,
                roles: i.roles,
                policies: i.policies,
                password: i.password,
                mfa: i.mfa,
            }
        })
        .collect())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    out.push_str(&format!(
        "<h2>{} <small>({})</small></h2>",
        esc(title),
        rows.len()
    ));
    if rows.is_empty() {
        out.push_str("<p class=\"none\">None.</p>");
        return;
    }
    out.push_str("<table><tr>");
    for h in headers {
        out.push_str(&format!("<th>{}</th>", esc(h)));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let flagged = c == "overdue"
                || c == "deny"
                || c.starts_with("TDES")
                || FINDINGS.iter().any(|f| c.contains(f));
            let class = if flagged { " class=\"flag\"" } else { "" };
            out.push_str(&format!("<td{class}>{}</td>", esc(&c)));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn html(r: &Report) -> String {
    let mut o = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Keyward compliance report</title><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}h1{margin-bottom:0}table{border-collapse:collapse;margin:.5em 0 1.5em}\
         th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}.flag{background:#fde2e1;font-weight:600}\
         .none{color:#777}.ok{color:#1a7f37}.bad{color:#c62828}small{color:#777;font-weight:normal}</style></head><body>",
    );
    o.push_str(&format!(
        "<h1>Keyward compliance report</h1><p>Generated {} on node {} (Keyward {}), root of trust: {}, \
         cryptographic module: {} {} ({}).</p>",
        esc(&r.generated_at),
        esc(&r.node_id),
        r.version,
        r.root_of_trust.unwrap_or("none"),
        esc(&r.crypto_module.name),
        esc(&r.crypto_module.version),
        if r.fips { "FIPS mode" } else { "not in FIPS mode" }
    ));
    let retained = match r.audit_pruned_through {
        Some(n) => format!(
            " (records through {n} pruned; none younger than {} days may be)",
            r.audit_retention_days
        ),
        None => String::new(),
    };
    o.push_str(&format!(
        "<p>Audit chain: <b class=\"{}\">{}</b> over {} records{}. Keys: {}. Rotation overdue: <b>{}</b>.</p>",
        if r.audit_chain_valid { "ok" } else { "bad" },
        if r.audit_chain_valid { "intact" } else { "BROKEN" },
        r.audit_records,
        retained,
        r.inventory.total,
        r.rotation_overdue
    ));
    key_tables(&mut o, r);
    access_tables(&mut o, r);
    o.push_str(&format!(
        "<p>Closed approval requests are deleted {} days after their expiry time; their trail stays in the audit log.</p>",
        r.approval_retention_days
    ));
    o.push_str("</body></html>\n");
    o
}

/// The inventory, weak keys, rotation, pending deletions and dormant keys.
fn key_tables(o: &mut String, r: &Report) {
    let counts = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect()
    };
    table(
        o,
        "Keys by spec",
        &["spec", "keys"],
        counts(&r.inventory.by_spec),
    );
    table(
        o,
        "Keys by origin",
        &["origin", "keys"],
        counts(&r.inventory.by_origin),
    );
    table(
        o,
        "Keys by state",
        &["state", "keys"],
        counts(&r.inventory.by_state),
    );
    table(
        o,
        "Weak keys",
        &["key", "spec", "reason"],
        r.weak_keys
            .iter()
            .map(|w| vec![w.key_id.clone(), w.spec.clone(), w.reason.into()])
            .collect(),
    );
    table(
        o,
        "Rotation against cryptoperiod (PCI DSS 3.6.4)",
        &[
            "key",
            "alias",
            "spec",
            "period (days)",
            "last rotated",
            "age (days)",
            "status",
        ],
        r.rotation
            .iter()
            .map(|x| {
                vec![
                    x.key_id.clone(),
                    x.alias.clone().unwrap_or_default(),
                    x.spec.clone(),
                    x.rotation_period_days
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    x.last_rotated_at.clone(),
                    x.primary_version_age_days.to_string(),
                    x.status.into(),
                ]
            })
            .collect(),
    );
    table(
        o,
        "Pending deletions",
        &["key", "deletion date"],
        r.pending_deletions
            .iter()
            .map(|p| vec![p.key_id.clone(), p.deletion_date.clone()])
            .collect(),
    );
    table(
        o,
        &format!("Dormant keys (unused for {} days)", r.dormant_after_days),
        &["key", "last used"],
        r.dormant_keys
            .iter()
            .map(|d| {
                vec![
                    d.key_id.clone(),
                    d.last_used_at.clone().unwrap_or_else(|| "never".into()),
                ]
            })
            .collect(),
    );
}

/// The access review, access by principal, refusals and quorum settings.
fn access_tables(o: &mut String, r: &Report) {
    table(
        o,
        &format!(
            "Identities: access review ({} live root token{})",
            r.root_tokens_live,
            if r.root_tokens_live == 1 { "" } else { "s" }
        ),
        &[
            "identity",
            "kind",
            "roles",
            "policies",
            "password",
            "MFA",
            "live tokens",
            "last active",
            "findings",
        ],
        r.identities
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.kind.clone(),
                    i.roles.join(", "),
                    i.policies.join(", "),
                    i.password.to_string(),
                    i.mfa.to_string(),
                    i.live_tokens.to_string(),
                    i.last_active_at.clone().unwrap_or_else(|| "never".into()),
                    i.findings.join("; "),
                ]
            })
            .collect(),
    );
    table(
        o,
        "Access by principal",
        &["principal", "allowed", "denied", "failed"],
        r.access_by_principal
            .iter()
            .map(|(p, a)| {
                vec![
                    p.clone(),
                    a.allow.to_string(),
                    a.deny.to_string(),
                    a.error.to_string(),
                ]
            })
            .collect(),
    );
    table(
        o,
        "Refused and failed requests (latest)",
        &[
            "time",
            "principal",
            "source",
            "action",
            "key",
            "outcome",
            "code",
        ],
        r.refused_and_failed
            .iter()
            .rev()
            .map(|a| {
                vec![
                    a.time.clone(),
                    a.principal.clone(),
                    a.source_ip.clone(),
                    a.action.clone(),
                    a.key_id.clone().unwrap_or_default(),
                    a.outcome.clone(),
                    a.error_code.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
    table(
        o,
        "Quorum settings",
        &["key", "approvals"],
        r.quorum
            .iter()
            .map(|q| vec![q.key_id.clone(), q.approvals.to_string()])
            .collect(),
    );
}

/// `GET /v1/reports/compliance`.
pub async fn compliance(
    State(app): State<AppState>,
    meta: Meta,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let a = app.clone();
    let format = q.get("format").cloned().unwrap_or_else(|| "json".into());
    let want_html = format == "html";
    let resp = call(
        &app,
        &meta,
        Action::GetComplianceReport,
        None,
        Mode::Blocking,
        move |_| {
            crate::convert::only(&q, &["format", "dormant_days"])?;
            if !matches!(format.as_str(), "json" | "html") {
                return Err(ApiError::validation("format is json or html"));
            }
            let dormant_days = q
                .get("dormant_days")
                .map(|d| {
                    d.parse::<i64>()
                        .ok()
                        .filter(|d| (1..=3650).contains(d))
                        .ok_or_else(|| ApiError::validation("dormant_days is 1 to 3650"))
                })
                .transpose()?
                .unwrap_or(90);
            let report = build(&a, dormant_days)?;
            if format == "html" {
                // Carried as a JSON string through the pipeline, unwrapped below.
                return Reply::with_status(
                    StatusCode::OK,
                    &serde_json::json!({ "html": html(&report) }),
                );
            }
            Reply::ok(&report)
        },
    )
    .await;
    if want_html {
        compliance_html(resp).await
    } else {
        resp
    }
}

/// Unwraps the HTML report carried through the pipeline as `{"html": ...}`.
async fn compliance_html(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    if parts.status != StatusCode::OK {
        return Response::from_parts(parts, body);
    }
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let html = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["html"].as_str().map(str::to_string))
        .unwrap_or_default();
    text(StatusCode::OK, "text/html; charset=utf-8", html)
}
