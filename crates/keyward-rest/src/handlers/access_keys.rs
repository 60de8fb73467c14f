//! `/v1/identities/{name}/access-keys`: the credentials of the AWS KMS protocol (Signature Version 4). An
//! access key acts as its identity, with the identity's current grants; its secret is shown once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyward_core::audit::rfc3339;
use serde::Serialize;

use crate::app::{call, AppState, Meta, Mode, Reply};
use crate::authz::Action;

#[derive(Serialize)]
struct Created<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    identity: &'a str,
    created_at: String,
}

#[derive(Serialize)]
struct Listed {
    access_key_id: String,
    created_at: String,
    last_used_at: Option<String>,
}

#[derive(Serialize)]
struct List {
    access_keys: Vec<Listed>,
}

/// `POST /v1/identities/{name}/access-keys`.
pub async fn create(State(app): State<AppState>, meta: Meta, Path(name): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::CreateAccessKey,
        None,
        Mode::Blocking,
        move |_| {
            let k = a.iam.access_keys.create(&a.kms, &name, a.clock.now())?;
            let created = Created {
                access_key_id: &k.access_key_id,
                secret_access_key: &k.secret_access_key,
                identity: &name,
                created_at: rfc3339(k.created_at),
            };
            Reply::with_status(StatusCode::CREATED, &created)
        },
    )
    .await
}

/// `GET /v1/identities/{name}/access-keys`: ids, creation and last use; never a secret.
pub async fn list(State(app): State<AppState>, meta: Meta, Path(name): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("identity", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListAccessKeys,
        None,
        Mode::Blocking,
        move |_| {
            let access_keys = a
                .iam
                .access_keys
                .list(&name)?
                .into_iter()
                .map(|k| Listed {
                    access_key_id: k.access_key_id,
                    created_at: rfc3339(k.created_at),
                    last_used_at: k.last_used_at.map(rfc3339),
                })
                .collect();
            Reply::ok(&List { access_keys })
        },
    )
    .await
}

/// `DELETE /v1/identities/{name}/access-keys/{id}`: requests it signs are refused from then on.
pub async fn delete(
    State(app): State<AppState>,
    meta: Meta,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let meta = meta.on(crate::app::resource("access-key", &id));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::DeleteAccessKey,
        None,
        Mode::Blocking,
        move |_| {
            a.iam.access_keys.delete(&name, &id)?;
            Ok(Reply::empty())
        },
    )
    .await
}
