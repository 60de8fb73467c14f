//! KV version 2 under each configured mount: `data/`, `metadata/`, `delete/`, `undelete/`, `destroy/` and
//! `config`, as Vault serves them. Each request is one `kv:<Action>` on `kv/<mount>/<path>`, audited with
//! mount, path and version (never the value).

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use keyward_core::audit::rfc3339_ms;
use keyward_core::secrets::{MetadataUpdate, SecretMetadata, VersionInfo};
use keyward_core::{ErrorCode, Kms};
use keyward_rest::app::{parse, run_noting, Mode, Reply};
use keyward_rest::authz::Action;
use keyward_rest::error::ApiError;
use serde::Deserialize;

use crate::{envelope, error, render, Call};

type NoNote = fn() -> Option<String>;

pub(crate) async fn route(call: Call, mount: String, rest: &str) -> Response {
    let (op, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/').to_string();
    let m = call.method.clone();
    let write = m == Method::POST || m == Method::PUT;
    match op {
        "config" if m == Method::GET => config(call, mount).await,
        "data" if m == Method::GET => read(call, mount, path).await,
        "data" if write => write_data(call, mount, path).await,
        "data" if m == Method::DELETE => change(call, mount, path, Change::DeleteLatest).await,
        "metadata" if call.is_list() => list(call, mount, path).await,
        "metadata" if m == Method::GET => metadata(call, mount, path).await,
        "metadata" if write => update_metadata(call, mount, path).await,
        "metadata" if m == Method::DELETE => change(call, mount, path, Change::DeleteAll).await,
        "delete" if write => change(call, mount, path, Change::Delete).await,
        "undelete" if write => change(call, mount, path, Change::Undelete).await,
        "destroy" if write => change(call, mount, path, Change::Destroy).await,
        "data" | "metadata" | "delete" | "undelete" | "destroy" | "config" => {
            error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation")
        }
        _ => error(StatusCode::NOT_FOUND, "no handler for route"),
    }
}

/// Runs one KV operation through the pipeline as `action` on `kv/<mount>/<path>`.
async fn run(
    call: Call,
    action: Action,
    mount: &str,
    path: &str,
    f: impl FnOnce(&Kms, &keyward_rest::app::RawBody, &str) -> Result<Reply, ApiError> + Send + 'static,
) -> Response {
    let resource = format!("kv/{mount}/{path}");
    let meta = call.meta.on(resource.clone());
    let app = call.app.clone();
    let body = call.body;
    let request_id = meta.request_id.clone();
    render(
        run_noting(
            &call.app,
            &meta,
            action,
            Some(resource),
            None::<NoNote>,
            Mode::Blocking,
            move |_| f(&app.kms, &body, &request_id),
        )
        .await,
    )
}

fn time(ms: i64) -> String {
    rfc3339_ms(ms)
}

fn version_json(v: &VersionInfo, custom: Option<&BTreeMap<String, String>>) -> serde_json::Value {
    serde_json::json!({
        "created_time": time(v.created_ms),
        "custom_metadata": custom,
        "deletion_time": v.deleted_ms.map(time).unwrap_or_default(),
        "destroyed": v.destroyed,
        "version": v.version,
    })
}

/// `GET <mount>/data/<path>?version=N`. A deleted or destroyed version is a 404 that still says which,
/// as Vault's is; MariaDB and `hvac` read any 404 as "no such key".
async fn read(call: Call, mount: String, path: String) -> Response {
    let version = match crate::query_value(&call.query, "version") {
        None | Some("") => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => return error(StatusCode::BAD_REQUEST, "version is a number"),
        },
    };
    let m = mount.clone();
    let p = path.clone();
    run(call, Action::KvRead, &mount, &path, move |kms, _, rid| {
        let labels = |c: &BTreeMap<String, String>| (!c.is_empty()).then_some(c.clone());
        match kms.kv_read(&m, &p, version)? {
            Ok(read) => {
                let custom = labels(&read.custom_metadata);
                let custom = custom.as_ref();
                let head = serde_json::to_string(&serde_json::json!({
                    "request_id": rid, "lease_id": "", "renewable": false, "lease_duration": 0,
                    "wrap_info": null, "warnings": null, "auth": null,
                }))
                .map_err(|_| encoding())?;
                let metadata = serde_json::to_string(&version_json(&read.info, custom))
                    .map_err(|_| encoding())?;
                // The value is spliced in as it was stored (a JSON object checked when written), so it is
                // copied once into the answer and never parsed into a tree.
                let value = read.data.expose();
                let mut body = Vec::with_capacity(head.len() + value.len() + metadata.len() + 32);
                body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
                body.extend_from_slice(br#","data":{"data":"#);
                body.extend_from_slice(value);
                body.extend_from_slice(br#","metadata":"#);
                body.extend_from_slice(metadata.as_bytes());
                body.extend_from_slice(b"}}");
                Ok(Reply::raw(StatusCode::OK, body).version(read.info.version))
            }
            Err(info) => {
                // A deleted or destroyed version: rare, so its labels take a second lookup.
                let meta = kms.kv_metadata(&m, &p).ok();
                let custom = meta.as_ref().and_then(|x| labels(&x.custom_metadata));
                let custom = custom.as_ref();
                let data =
                    serde_json::json!({ "data": null, "metadata": version_json(&info, custom) });
                Ok(
                    Reply::with_status(StatusCode::NOT_FOUND, &envelope(rid, data))?
                        .version(info.version),
                )
            }
        }
    })
    .await
}

fn encoding() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "response encoding failed")
}

#[derive(Deserialize)]
struct WriteRequest {
    data: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    options: Option<WriteOptions>,
}

#[derive(Deserialize)]
struct WriteOptions {
    #[serde(default)]
    cas: Option<u32>,
}

/// `POST|PUT <mount>/data/<path>` `{"data": {...}, "options"?: {"cas"?: N}}`.
async fn write_data(call: Call, mount: String, path: String) -> Response {
    let (m, p) = (mount.clone(), path.clone());
    run(
        call,
        Action::KvWrite,
        &mount,
        &path,
        move |kms, body, rid| {
            let req: WriteRequest = parse(body)?;
            let value =
                zeroize::Zeroizing::new(serde_json::to_vec(&req.data).map_err(|_| encoding())?);
            let cas = req.options.and_then(|o| o.cas);
            let (v, made) = kms.kv_write(&m, &p, &value, cas)?;
            let reply = Reply::ok(&envelope(rid, version_json(&v, None)))?.version(v.version);
            // The mount's first write makes its key: that write's record names it, so the key's own trail
            // (`?key_id=`) begins with the request that brought it into being.
            Ok(match made {
                Some(key_id) => reply.key(key_id, Some(v.version)),
                None => reply,
            })
        },
    )
    .await
}

/// `GET <mount>/metadata/<path>`.
async fn metadata(call: Call, mount: String, path: String) -> Response {
    let (m, p) = (mount.clone(), path.clone());
    run(call, Action::KvRead, &mount, &path, move |kms, _, rid| {
        let md = kms.kv_metadata(&m, &p)?;
        Reply::ok(&envelope(rid, metadata_json(&md)))
    })
    .await
}

fn metadata_json(md: &SecretMetadata) -> serde_json::Value {
    let versions: serde_json::Map<String, serde_json::Value> = md
        .versions
        .iter()
        .map(|v| {
            (
                v.version.to_string(),
                serde_json::json!({
                    "created_time": time(v.created_ms),
                    "deletion_time": v.deleted_ms.map(time).unwrap_or_default(),
                    "destroyed": v.destroyed,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "cas_required": md.cas_required,
        "created_time": time(md.created_ms),
        "current_version": md.current_version,
        "custom_metadata": if md.custom_metadata.is_empty() { None } else { Some(&md.custom_metadata) },
        "delete_version_after": "0s",
        "max_versions": md.max_versions,
        "oldest_version": md.oldest_version,
        "updated_time": time(md.updated_ms),
        "versions": versions,
    })
}

/// `LIST <mount>/metadata/<prefix>`.
async fn list(call: Call, mount: String, path: String) -> Response {
    let (m, p) = (mount.clone(), path.clone());
    run(call, Action::KvList, &mount, &path, move |kms, _, rid| {
        let keys = kms.kv_list(&m, &p)?;
        Reply::ok(&envelope(rid, serde_json::json!({ "keys": keys })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataRequest {
    #[serde(default)]
    max_versions: Option<u32>,
    #[serde(default)]
    cas_required: Option<bool>,
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    delete_version_after: Option<String>,
}

/// `POST <mount>/metadata/<path>`: `max_versions`, `cas_required`, `custom_metadata`.
async fn update_metadata(call: Call, mount: String, path: String) -> Response {
    let (m, p) = (mount.clone(), path.clone());
    run(call, Action::KvWrite, &mount, &path, move |kms, body, _| {
        let req: MetadataRequest = parse(body)?;
        if req
            .delete_version_after
            .as_deref()
            .is_some_and(|d| !matches!(d, "0" | "0s" | ""))
        {
            return Err(ApiError::validation(
                "delete_version_after is not offered: versions are kept until deleted or outnumbered",
            ));
        }
        kms.kv_update_metadata(
            &m,
            &p,
            &MetadataUpdate {
                max_versions: req.max_versions,
                cas_required: req.cas_required,
                custom_metadata: req.custom_metadata,
            },
        )?;
        Ok(Reply::empty())
    })
    .await
}

#[derive(Clone, Copy)]
enum Change {
    DeleteLatest,
    Delete,
    Undelete,
    Destroy,
    DeleteAll,
}

#[derive(Deserialize)]
struct Versions {
    versions: Vec<u32>,
}

/// The deletions, undeletion and destruction, all `kv:Delete` but undeletion (`kv:Write`).
async fn change(call: Call, mount: String, path: String, change: Change) -> Response {
    let action = match change {
        Change::Undelete => Action::KvWrite,
        _ => Action::KvDelete,
    };
    let (m, p) = (mount.clone(), path.clone());
    run(call, action, &mount, &path, move |kms, body, _| {
        let versions = || -> Result<Vec<u32>, ApiError> {
            let v: Versions = parse(body)?;
            if v.versions.is_empty() {
                return Err(ApiError::validation("no versions provided"));
            }
            Ok(v.versions)
        };
        match change {
            Change::DeleteLatest => kms.kv_delete(&m, &p, &[])?,
            Change::Delete => kms.kv_delete(&m, &p, &versions()?)?,
            Change::Undelete => kms.kv_undelete(&m, &p, &versions()?)?,
            Change::Destroy => kms.kv_destroy(&m, &p, &versions()?)?,
            Change::DeleteAll => kms.kv_delete_all(&m, &p)?,
        }
        Ok(Reply::empty())
    })
    .await
}

/// `GET <mount>/config`: the mount's defaults (fixed: ten versions, no check-and-set requirement).
async fn config(call: Call, mount: String) -> Response {
    run(call, Action::KvRead, &mount, "", move |_, _, rid| {
        Reply::ok(&envelope(
            rid,
            serde_json::json!({
                "cas_required": false,
                "delete_version_after": "0s",
                "max_versions": keyward_core::secrets::DEFAULT_MAX_VERSIONS,
            }),
        ))
    })
    .await
}
