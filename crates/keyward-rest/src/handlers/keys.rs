//! Key management: `/v1/keys*` (except cryptographic operations) and `/v1/aliases*`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use base64::Engine as _;
use keyward_api::{
    page_limit, AliasList, AliasObject, CreateKeyRequest, ExportRequest, ExportResponse,
    ImportParametersResponse, ImportRequest, KeyList, PublicKeyResponse, PutAliasRequest,
    ScheduleDeletionRequest, SetPrimaryRequest, UpdateKeyRequest, VersionList, B64,
};
use keyward_core::audit::rfc3339;
use keyward_core::{CreateKey, KeyFilter, KeyState, Origin, UpdateKey, VersionAction};

use crate::app::{call, parse, AppState, Meta, Mode, RawBody, Reply};
use crate::authz::Action;
use crate::convert::{described_key, key_object, only, pem, spec, usage, version_object};
use crate::error::ApiError;
use crate::handlers::approvals;

type Q = Query<HashMap<String, String>>;

/// A list's `next_token`: the last name of the page, opaque to clients.
pub(crate) fn encode_token(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

pub(crate) fn decode_token(s: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::validation("next_token is not one this service issued"))
}

pub(crate) fn limit(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    let n = query
        .get("limit")
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| ApiError::validation("limit must be a number"))
        })
        .transpose()?;
    page_limit(n).map_err(ApiError::validation)
}

/// A page of named entries, and the token of the next page.
pub(crate) type Page<T> = (Vec<(String, T)>, Option<String>);

/// One page of a list ordered by name (`?limit=` and `?next_token=`, as every list takes): the entries after
/// the token, at most `limit` of them, and the next page's token while more remain.
pub(crate) fn page<T>(
    mut all: Vec<(String, T)>,
    query: &HashMap<String, String>,
) -> Result<Page<T>, ApiError> {
    only(query, &["limit", "next_token"])?;
    // The token is compared in byte order, so the entries must be in byte order too, whatever order the
    // store listed them in (a PostgreSQL collation may differ); a list already in order costs one pass.
    all.sort_by(|x, y| x.0.cmp(&y.0));
    let after = query
        .get("next_token")
        .map(|t| decode_token(t))
        .transpose()?;
    let limit = limit(query)?;
    let mut rest = all
        .into_iter()
        .filter(|(name, _)| after.as_deref().is_none_or(|a| name.as_str() > a));
    let page: Vec<_> = rest.by_ref().take(limit).collect();
    let next = match rest.next() {
        Some(_) => page.last().map(|(name, _)| encode_token(name)),
        None => None,
    };
    Ok((page, next))
}

/// `POST /v1/keys`. The key id is chosen here so the audit record written before the key exists names it.
pub async fn create(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let a = app.clone();
    let new_id = uuid::Uuid::new_v4().to_string();
    let audit_id = new_id.clone();
    call(
        &app,
        &meta,
        Action::CreateKey,
        Some(audit_id),
        Mode::Blocking,
        move |_| {
            let req: CreateKeyRequest = parse(&body)?;
            let mut c = CreateKey::new(spec(&req.spec)?);
            c.usage = req.usage.as_deref().map(usage).transpose()?;
            c.description = req.description.unwrap_or_default();
            c.alias = req.alias;
            c.tags = req.tags.unwrap_or_default();
            c.rotation_period_days = req.rotation_period_days;
            c.exportable = req.exportable.unwrap_or(false);
            c.origin = match req.origin.as_deref() {
                None => Origin::Keyward,
                Some(o) => Origin::parse(o).ok_or_else(|| {
                    ApiError::validation(format!("unknown origin {}", keyward_core::quoted(o)))
                })?,
            };
            c.quorum_approvals = req.quorum.map(|q| q.approvals);
            c.allow_legacy = req.allow_legacy.unwrap_or(false);
            c.blind_index_bits = req.blind_index_bits;
            c.key_id = Some(new_id);
            let info = a.kms.create_key(c)?;
            Reply::with_status(
                axum::http::StatusCode::CREATED,
                &described_key(&a.kms, &info),
            )
            .map(|r| r.key(info.key_id, Some(1)))
        },
    )
    .await
}

/// `GET /v1/keys?state=&spec=&tag=k:v&limit=&next_token=`.
pub async fn list(State(app): State<AppState>, meta: Meta, Query(q): Q) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListKeys,
        None,
        Mode::Blocking,
        move |_| {
            only(&q, &["state", "spec", "tag", "limit", "next_token"])?;
            let filter = KeyFilter {
                state: q
                    .get("state")
                    .map(|s| {
                        KeyState::parse(s)
                            .ok_or_else(|| ApiError::validation("unknown state filter"))
                    })
                    .transpose()?,
                spec: q.get("spec").map(|s| spec(s)).transpose()?,
                tag: q
                    .get("tag")
                    .map(|t| {
                        t.split_once(':')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .ok_or_else(|| ApiError::validation("tag filter is key:value"))
                    })
                    .transpose()?,
            };
            let after = q.get("next_token").map(|t| decode_token(t)).transpose()?;
            let (keys, next) = a.kms.list_keys(&filter, after.as_deref(), limit(&q)?)?;
            Reply::ok(&KeyList {
                keys: keys.iter().map(key_object).collect(),
                next_token: next.as_deref().map(encode_token),
            })
        },
    )
    .await
}

macro_rules! key_op {
    ($(#[$m:meta])* $name:ident, $action:expr, |$a:ident, $key:ident, $body:ident| $work:expr) => {
        key_op!($(#[$m])* $name, $action, |$a, $key, $body, _caller| $work);
    };
    ($(#[$m:meta])* $name:ident, $action:expr, |$a:ident, $key:ident, $body:ident, $caller:ident| $work:expr) => {
        $(#[$m])*
        pub async fn $name(State(app): State<AppState>, meta: Meta, Path($key): Path<String>, $body: RawBody) -> Response {
            let $a = app.clone();
            let key_ref = $key.clone();
            call(&app, &meta, $action, Some(key_ref), Mode::Blocking, move |$caller| {
                let _ = &$body;
                $work
            })
            .await
        }
    };
}

fn key_reply(info: keyward_core::KeyInfo) -> Result<Reply, ApiError> {
    Reply::ok(&key_object(&info)).map(|r| r.key(info.key_id, Some(info.primary_version)))
}

key_op!(
    /// `GET /v1/keys/{key}`.
    describe, Action::DescribeKey, |a, key, body| {
        let info = a.kms.describe_key(&key)?;
        Reply::ok(&described_key(&a.kms, &info)).map(|r| r.key(info.key_id, Some(info.primary_version)))
    }
);

key_op!(
    /// `PATCH /v1/keys/{key}`.
    update, Action::UpdateKey, |a, key, body| {
        let req: UpdateKeyRequest = parse(&body)?;
        let patch = UpdateKey {
            description: req.description,
            tags: req.tags,
            rotation_period_days: req.rotation_period_days,
            min_decryption_version: req.min_decryption_version,
            ..UpdateKey::default()
        };
        key_reply(a.kms.update_key(&key, patch)?)
    }
);

key_op!(
    /// `POST /v1/keys/{key}/enable`.
    enable, Action::EnableKey, |a, key, body| key_reply(a.kms.enable_key(&key)?)
);

key_op!(
    /// `POST /v1/keys/{key}/disable`.
    disable, Action::DisableKey, |a, key, body| key_reply(a.kms.disable_key(&key)?)
);

key_op!(
    /// `POST /v1/keys/{key}/rotate`.
    rotate, Action::RotateKey, |a, key, body| key_reply(a.kms.rotate_key(&key)?)
);

/// `GET /v1/keys/{key}/versions`: oldest first, paged like every list (a key rotated daily for years has
/// thousands of versions).
pub async fn versions(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListKeyVersions,
        Some(key.clone()),
        Mode::Blocking,
        move |_| {
            // Zero-padded, so that the order of names, which pages follow, is the order of versions.
            let all = a
                .kms
                .list_versions(&key)?
                .iter()
                .map(|v| (format!("{:010}", v.version), version_object(v)))
                .collect();
            let (versions, next_token) = page(all, &q)?;
            Reply::ok(&VersionList {
                versions: versions.into_iter().map(|(_, v)| v).collect(),
                next_token,
            })
        },
    )
    .await
}

key_op!(
    /// `POST /v1/keys/{key}/primary`.
    set_primary, Action::SetPrimaryVersion, |a, key, body| {
        let req: SetPrimaryRequest = parse(&body)?;
        key_reply(a.kms.set_primary(&key, req.version)?)
    }
);

key_op!(
    /// `POST /v1/keys/{key}/schedule-deletion`.
    schedule_deletion, Action::ScheduleKeyDeletion, |a, key, body, caller| {
        let req: ScheduleDeletionRequest = parse(&body)?;
        match schedule_deletion_or_hold(&a, &caller, &key, req.pending_days.unwrap_or(30))? {
            Ok(k) => key_reply(k),
            Err(held) => Ok(held),
        }
    }
);

/// Schedules a key's deletion, or, where the key (or the service) requires a quorum, validates the request
/// and opens an approval instead (`Err` with the `202` reply naming it). Every front end schedules deletions
/// through here.
#[allow(clippy::type_complexity)]
pub fn schedule_deletion_or_hold(
    a: &AppState,
    caller: &crate::app::Caller,
    key: &str,
    days: u32,
) -> Result<Result<keyward_core::KeyInfo, Reply>, ApiError> {
    if !keyward_core::PENDING_DAYS.contains(&days) {
        return Err(ApiError::validation("pending_days must be 7 to 30"));
    }
    let m = approvals::required_for_key(a, key)?;
    if m > 0 {
        a.kms.check_schedule_deletion(key, days)?;
        let key_id = a.kms.key_id_of(key)?;
        let op = approvals::Operation::ScheduleDeletion {
            key_id,
            pending_days: days,
        };
        return approvals::request(a, caller, op, m).map(Err);
    }
    Ok(Ok(a.kms.schedule_deletion(key, days)?))
}

key_op!(
    /// `POST /v1/keys/{key}/cancel-deletion`.
    cancel_deletion, Action::CancelKeyDeletion, |a, key, body| key_reply(a.kms.cancel_deletion(&key)?)
);

key_op!(
    /// `GET /v1/keys/{key}/public-key`.
    public_key, Action::GetPublicKey, |a, key, body| {
        let pk = a.kms.public_key(&key)?;
        Reply::ok(&PublicKeyResponse {
            key_id: pk.key_id.to_string(),
            version: pk.version,
            spec: pk.spec.as_str().into(),
            public_key_pem: pem("PUBLIC KEY", &pk.der),
            public_key_der: B64(pk.der),
        })
        .map(|r| r.key(pk.key_id.to_string(), Some(pk.version)))
    }
);

key_op!(
    /// `GET /v1/keys/{key}/import-parameters`.
    import_parameters, Action::GetImportParameters, |a, key, body| {
        let p = a.kms.import_parameters(&key)?;
        Reply::ok(&ImportParametersResponse {
            wrapping_public_key_der: B64(p.wrapping_public_key_der),
            import_token: p.import_token,
            expires_at: rfc3339(p.expires_at),
        })
    }
);

key_op!(
    /// `POST /v1/keys/{key}/import`.
    import, Action::ImportKeyMaterial, |a, key, body| {
        let req: ImportRequest = parse(&body)?;
        key_reply(a.kms.import_key_material(&key, &req.import_token, req.wrapped_key_material.expose())?)
    }
);

key_op!(
    /// `POST /v1/keys/{key}/delete-imported-material`.
    delete_imported_material, Action::DeleteImportedKeyMaterial, |a, key, body, caller| {
        match delete_imported_material_or_hold(&a, &caller, &key)? {
            Ok(k) => key_reply(k),
            Err(held) => Ok(held),
        }
    }
);

/// Deletes an EXTERNAL key's imported material, or, where the key (or the service) requires a quorum,
/// checks the deletion could run and opens an approval instead (`Err` with the `202` reply naming it). The
/// key is unusable until its owner imports the material again, so it is held like any destructive change.
/// Every front end deletes imported material through here.
#[allow(clippy::type_complexity)]
pub fn delete_imported_material_or_hold(
    a: &AppState,
    caller: &crate::app::Caller,
    key: &str,
) -> Result<Result<keyward_core::KeyInfo, Reply>, ApiError> {
    let m = approvals::required_for_key(a, key)?;
    if m > 0 {
        let key_id = a.kms.check_delete_imported_material(key)?;
        let op = approvals::Operation::DeleteImportedMaterial { key_id };
        return approvals::request(a, caller, op, m).map(Err);
    }
    Ok(Ok(a.kms.delete_imported_material(key)?))
}

key_op!(
    /// `POST /v1/keys/{key}/export`.
    export, Action::ExportKey, |a, key, body, caller| {
        let req: ExportRequest = parse(&body)?;
        let m = approvals::required_for_key(&a, &key)?;
        if m > 0 {
            a.kms.check_export(&key, &req.wrapping_public_key_der.0, req.version)?;
            let op = approvals::Operation::Export {
                key_id: a.kms.key_id_of(&key)?,
                wrapping_public_key_der: crate::convert::hex(&req.wrapping_public_key_der.0),
                version: req.version,
            };
            return approvals::request(&a, &caller, op, m);
        }
        let wrapped = a.kms.export_key(&key, &req.wrapping_public_key_der.0, req.version)?;
        Reply::ok(&ExportResponse { wrapped_key_material: B64(wrapped) })
    }
);

/// `POST /v1/keys/{key}/versions/{n}/{enable|disable|archive|restore|destroy}`.
pub async fn version_action(
    State(app): State<AppState>,
    meta: Meta,
    Path((key, n, action)): Path<(String, String, String)>,
) -> Response {
    let act = VersionAction::parse(&action);
    let audit_action = match act {
        Some(VersionAction::Enable) => Action::EnableKeyVersion,
        Some(VersionAction::Disable) => Action::DisableKeyVersion,
        Some(VersionAction::Archive) => Action::ArchiveKeyVersion,
        Some(VersionAction::Restore) => Action::RestoreKeyVersion,
        Some(VersionAction::Destroy) | None => Action::DestroyKeyVersion,
    };
    let a = app.clone();
    let key_ref = key.clone();
    call(
        &app,
        &meta,
        audit_action,
        Some(key_ref),
        Mode::Blocking,
        move |caller| {
            let act = act.ok_or_else(|| {
                ApiError::new(
                    keyward_core::ErrorCode::NotFound,
                    "no such version action; the actions are enable, disable, archive, restore and destroy",
                )
            })?;
            let n: u32 = n
                .parse()
                .map_err(|_| ApiError::validation("version must be a positive number"))?;
            if act == VersionAction::Destroy {
                let m = approvals::required_for_key(&a, &key)?;
                if m > 0 {
                    a.kms
                        .check_version_action(&key, n, VersionAction::Destroy)?;
                    let key_id = a.kms.key_id_of(&key)?;
                    return approvals::request(
                        &a,
                        &caller,
                        approvals::Operation::DestroyVersion { key_id, version: n },
                        m,
                    );
                }
            }
            let v = a.kms.version_action(&key, n, act)?;
            Reply::ok(&version_object(&v)).map(|r| r.key(key.clone(), Some(n)))
        },
    )
    .await
}

/// `PUT /v1/aliases/{name}`.
pub async fn put_alias(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    // The key the alias is to point to is the request's resource: policies on keys apply to it, and the
    // audit record names it. (A body that does not parse is refused inside, as for every endpoint.)
    let target = parse::<PutAliasRequest>(&body).ok().map(|r| r.key_id);
    call(
        &app,
        &meta,
        Action::PutAlias,
        target,
        Mode::Blocking,
        move |_| {
            let req: PutAliasRequest = parse(&body)?;
            // The key may be given by id or by another alias; the answer and the audit record name the key
            // the alias now points to.
            let (alias, key_id) = a.kms.put_alias(&name, &req.key_id)?;
            Reply::ok(&AliasObject {
                alias,
                key_id: key_id.clone(),
            })
            .map(|r| r.key(key_id, None))
        },
    )
    .await
}

/// `DELETE /v1/aliases/{name}`.
pub async fn delete_alias(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
) -> Response {
    let a = app.clone();
    // The alias names its key: policies on that key apply, and the record names it.
    let alias = if name.starts_with("alias/") {
        name.clone()
    } else {
        format!("alias/{name}")
    };
    call(
        &app,
        &meta,
        Action::DeleteAlias,
        Some(alias),
        Mode::Blocking,
        move |_| {
            a.kms.delete_alias(&name)?;
            Ok(Reply::empty())
        },
    )
    .await
}

/// `GET /v1/aliases`.
pub async fn list_aliases(State(app): State<AppState>, meta: Meta, Query(q): Q) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListAliases,
        None,
        Mode::Blocking,
        move |_| {
            only(&q, &["limit", "next_token"])?;
            let after = q.get("next_token").map(|t| decode_token(t)).transpose()?;
            let (page, next) = a.kms.list_aliases(after.as_deref(), limit(&q)?)?;
            Reply::ok(&AliasList {
                aliases: page
                    .into_iter()
                    .map(|(alias, key_id)| AliasObject { alias, key_id })
                    .collect(),
                next_token: next.as_deref().map(encode_token),
            })
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn pages_follow_byte_order_whatever_order_the_entries_came_in() {
        let listed: Vec<(String, u8)> = ["ab", "a_c", "B", "a-b", "a"]
            .iter()
            .map(|n| (n.to_string(), 0))
            .collect();
        let mut query = HashMap::from([("limit".to_string(), "2".to_string())]);
        let mut seen = Vec::new();
        loop {
            let (page, next) = super::page(listed.clone(), &query).unwrap();
            seen.extend(page.into_iter().map(|(n, _)| n));
            match next {
                Some(t) => query.insert("next_token".into(), t),
                None => break,
            };
        }
        assert_eq!(seen, ["B", "a", "a-b", "a_c", "ab"]);
    }
}
