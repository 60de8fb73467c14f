//! `/v1/audit`, `/v1/audit/verify`, `/v1/audit/verify-archive`, `/v1/audit/checkpoint` and `/v1/audit/prune`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use keyward_core::audit::AuditRecord;
use keyward_store::AuditQuery;
use serde::Serialize;

use crate::app::{call, AppState, Meta, Mode, Reply};
use crate::authz::Action;
use crate::error::ApiError;

#[derive(Serialize)]
struct AuditPage {
    records: Vec<AuditRecord>,
    next_token: Option<String>,
}

#[derive(Serialize)]
struct Verification {
    valid: bool,
    records: u64,
    head: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_bad_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pruned_through: Option<u64>,
}

impl From<keyward_core::audit::AuditVerification> for Verification {
    fn from(v: keyward_core::audit::AuditVerification) -> Self {
        Verification {
            valid: v.valid,
            records: v.records,
            head: v.head,
            first_bad_seq: v.first_bad_seq,
            pruned_through: v.pruned_through,
        }
    }
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-29T08:10:16Z`, optional fraction) to unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let millis: i64 = format!("{:0<3}", frac.get(..3.min(frac.len()))?)
        .parse()
        .ok()?;
    // Days from civil date (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

/// The key id a `key_id` filter stands for. Records name keys by id, so an alias is looked up now; an alias
/// that names no key is matched as given (the records of requests refused before their alias was looked up
/// keep it).
fn key_filter(app: &AppState, key_ref: &str) -> Result<String, ApiError> {
    if !key_ref.starts_with("alias/") {
        return Ok(key_ref.to_string());
    }
    match app.kms.key_id_of(key_ref) {
        Ok(id) => Ok(id),
        Err(e) if e.code() == keyward_core::ErrorCode::NotFound => Ok(key_ref.to_string()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/audit?since=&until=&principal=&key_id=&resource=&request_id=&action=&outcome=&limit=&next_token=`.
pub async fn query(
    State(app): State<AppState>,
    meta: Meta,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ReadAudit,
        None,
        Mode::Blocking,
        move |_| {
            let (query, limit) = audit_query(&a, &q)?;
            let mut records = a.kms.query_audit(&query)?;
            let next_token = if records.len() > limit {
                records.truncate(limit);
                records.last().map(|r| r.seq.to_string())
            } else {
                None
            };
            Reply::ok(&AuditPage {
                records,
                next_token,
            })
        },
    )
    .await
}

/// The store query a `GET /v1/audit` asks for, and its page size; every filter checked (unknown parameters,
/// times, outcome, limit, page token, key reference) before anything is read.
fn audit_query(a: &AppState, q: &HashMap<String, String>) -> Result<(AuditQuery, usize), ApiError> {
    const ALLOWED: [&str; 10] = [
        "since",
        "until",
        "principal",
        "key_id",
        "resource",
        "request_id",
        "action",
        "outcome",
        "limit",
        "next_token",
    ];
    crate::convert::only(q, &ALLOWED)?;
    let time = |name: &str| {
        q.get(name)
            .map(|v| {
                parse_time(v).ok_or_else(|| {
                    ApiError::validation(format!("{name} must be an RFC 3339 UTC time"))
                })
            })
            .transpose()
    };
    let limit = keyward_api::page_limit(
        q.get("limit")
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::validation("limit must be a number"))
            })
            .transpose()?,
    )
    .map_err(ApiError::validation)?;
    let after_seq = q
        .get("next_token")
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| ApiError::validation("next_token is not one this service issued"))
        })
        .transpose()?
        .unwrap_or(0);
    if let Some(o) = q.get("outcome") {
        if !matches!(o.as_str(), "allow" | "deny" | "error") {
            return Err(ApiError::validation("outcome is allow, deny or error"));
        }
    }
    let query = AuditQuery {
        after_seq,
        since_ms: time("since")?,
        until_ms: time("until")?,
        principal: q.get("principal").cloned(),
        key_id: q.get("key_id").map(|k| key_filter(a, k)).transpose()?,
        action: q.get("action").cloned(),
        outcome: q.get("outcome").cloned(),
        resource: q.get("resource").cloned(),
        request_id: q.get("request_id").cloned(),
        limit: limit + 1,
    };
    Ok((query, limit))
}

/// `GET /v1/audit/checkpoint`: a signed statement of the chain head, to keep outside Keyward.
pub async fn checkpoint(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ExportAuditCheckpoint,
        None,
        Mode::Blocking,
        move |_| {
            let now_ms = a.clock.now_ms();
            Reply::ok(&a.kms.audit_checkpoint(now_ms)?)
        },
    )
    .await
}

/// `POST /v1/audit/verify` with `{"checkpoint": {...}}`: verifies the chain and that the checkpointed head
/// is still in it (detects a truncated tail).
pub async fn verify_against(
    State(app): State<AppState>,
    meta: Meta,
    body: crate::app::RawBody,
) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        checkpoint: keyward_core::audit::Checkpoint,
    }
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::VerifyAudit,
        None,
        Mode::Blocking,
        move |_| {
            let req: Req = crate::app::parse(&body)?;
            Reply::ok(&Verification::from(
                a.kms.verify_audit_against(&req.checkpoint)?,
            ))
        },
    )
    .await
}

/// `GET /v1/audit/verify`.
pub async fn verify(State(app): State<AppState>, meta: Meta) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::VerifyAudit,
        None,
        Mode::Blocking,
        move |_| Reply::ok(&Verification::from(a.kms.verify_audit()?)),
    )
    .await
}

/// `POST /v1/audit/verify-archive {"records", "prev_hash"?}`: checks records kept outside the service (an
/// archive written before pruning) against this deployment's audit key, part after part: each part's
/// `head` is the next part's `prev_hash`.
pub async fn verify_archive(
    State(app): State<AppState>,
    meta: Meta,
    body: crate::app::RawBody,
) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        records: Vec<serde_json::Map<String, serde_json::Value>>,
        #[serde(default)]
        prev_hash: Option<String>,
    }
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::VerifyAudit,
        None,
        Mode::Blocking,
        move |_| {
            let req: Req = crate::app::parse(&body)?;
            // A thousand records stay well within the 1 MiB body limit; larger archives go part by part.
            if req.records.len() > 1_000 {
                return Err(ApiError::validation("at most 1000 records per request"));
            }
            if let Some(p) = &req.prev_hash {
                if p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::validation(
                        "prev_hash is a record hash: 64 hex digits",
                    ));
                }
            }
            let records = archived_records(req.records)?;
            Reply::ok(&a.kms.verify_archive(&records, req.prev_hash.as_deref())?)
        },
    )
    .await
}

/// The fields a record may carry: anything else is not what the log wrote.
const FIELDS: [&str; 14] = [
    "seq",
    "time",
    "request_id",
    "principal",
    "source_ip",
    "action",
    "key_id",
    "version",
    "source_key_ids",
    "resource",
    "outcome",
    "error_code",
    "prev_hash",
    "hash",
];

/// Records kept outside the service, read back as the log wrote them: unknown fields, a missing hash, a
/// wrong type, an unknown outcome or a malformed time are refused by the record's index.
fn archived_records(
    raw: Vec<serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<AuditRecord>, ApiError> {
    let mut records = Vec::with_capacity(raw.len());
    for (i, fields) in raw.into_iter().enumerate() {
        if let Some(k) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::validation(format!(
                "records[{i}]: unknown field `{}`",
                crate::convert::shown(k)
            )));
        }
        if !fields.contains_key("hash") {
            return Err(ApiError::validation(format!(
                "records[{i}]: missing field `hash`"
            )));
        }
        let record: AuditRecord = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|_| {
                ApiError::validation(format!(
                    "records[{i}] is not an audit record as the log writes it (a field is missing or of the wrong type)"
                ))
            })?;
        if !matches!(record.outcome.as_str(), "allow" | "deny" | "error")
            || parse_time(&record.time).is_none()
        {
            return Err(ApiError::validation(format!(
                "records[{i}] is not an audit record as the log writes it (its outcome or time)"
            )));
        }
        records.push(record);
    }
    Ok(records)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneRequest {
    through_seq: u64,
}

/// `POST /v1/audit/prune {"through_seq"}`: deletes the records through `through_seq`, once they are
/// archived, if all are older than `audit_retention_days` (admin only; waits for quorum when the service
/// requires approvals). The request's own record, written before anything is deleted, names the range.
pub async fn prune(State(app): State<AppState>, meta: Meta, body: crate::app::RawBody) -> Response {
    let through = body
        .0
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<PruneRequest>(b).ok())
        .map(|r| r.through_seq);
    let meta = match through {
        Some(n) => meta.on(crate::app::resource("audit", &format!("through-{n}"))),
        None => meta,
    };
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::PruneAudit,
        None,
        Mode::Blocking,
        move |caller| {
            let req: PruneRequest = crate::app::parse(&body)?;
            if req.through_seq == 0 {
                return Err(ApiError::validation("through_seq is 1 or more"));
            }
            if a.config.quorum_approvals > 0 {
                let (retention_ms, now_ms) = (retention_ms(&a), a.clock.now_ms());
                a.kms
                    .check_prune_audit(req.through_seq, now_ms.saturating_sub(retention_ms))?;
                return crate::handlers::approvals::request(
                    &a,
                    &caller,
                    crate::handlers::approvals::Operation::PruneAudit {
                        through_seq: req.through_seq,
                    },
                    a.config.quorum_approvals,
                );
            }
            Reply::ok(&prune_now(&a, req.through_seq)?)
        },
    )
    .await
}

fn retention_ms(app: &AppState) -> i64 {
    i64::from(app.config.audit_retention_days) * 86_400_000
}

/// Prunes through `through_seq` now, keeping every record younger than the retention period.
pub fn prune_now(
    app: &AppState,
    through_seq: u64,
) -> Result<keyward_core::audit::Pruned, ApiError> {
    let keep_after_ms = app.clock.now_ms().saturating_sub(retention_ms(app));
    Ok(app.kms.prune_audit(through_seq, keep_after_ms)?)
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2000-02-29T00:00:00.123Z"),
            Some(951_782_400_123)
        );
        assert_eq!(parse_time("2026-12-31T23:59:59Z"), Some(1_798_761_599_000));
        assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
