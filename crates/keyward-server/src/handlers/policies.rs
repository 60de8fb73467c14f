//! `PUT/GET/DELETE /v1/policies/{name}`, `GET /v1/policies`, and the cache of compiled policies.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use keyward_core::{ErrorCode, KmsError};
use keyward_store::{transact, Tx};
use parking_lot::RwLock;

use crate::app::{call, parse, App, AppState, Meta, Mode, RawBody, Reply};
use crate::authz::Action;
use crate::error::ApiError;
use crate::handlers::approvals;
use crate::policy::{compile, Compiled, PolicyDoc};

pub(crate) const POLICIES: &str = "policy";

/// Compiled policies by name; a name that does not exist compiles to nothing (default deny).
#[derive(Default)]
pub struct PolicyCache {
    compiled: RwLock<HashMap<String, Option<Arc<Compiled>>>>,
}

impl PolicyCache {
    /// The compiled policies of these names (missing ones are skipped).
    pub fn load(&self, app: &App, names: &[String]) -> Vec<Arc<Compiled>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if app.kms.caches_trusted() {
                if let Some(entry) = self.compiled.read().get(name) {
                    out.extend(entry.clone());
                    continue;
                }
            }
            let stored = transact(app.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
                tx.get_meta(POLICIES, name)
            })
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<PolicyDoc>(&b).ok())
            .and_then(|d| compile(&d).ok())
            .map(Arc::new);
            self.compiled.write().insert(name.clone(), stored.clone());
            out.extend(stored);
        }
        out
    }

    /// Forgets one compiled policy (changed here or on another node).
    pub fn forget(&self, name: &str) {
        self.compiled.write().remove(name);
    }

    /// Forgets every compiled policy.
    pub fn forget_all(&self) {
        self.compiled.write().clear();
    }
}

/// Stores a validated policy (used directly and by approved quorum requests).
pub fn store(app: &App, name: &str, doc: &PolicyDoc) -> Result<(), ApiError> {
    compile(doc).map_err(ApiError::validation)?;
    let json = serde_json::to_vec(doc)
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "policy encoding"))?;
    transact(app.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.put_meta(POLICIES, name, &json)
    })?;
    app.policies.forget(name);
    Ok(())
}

/// Deletes a policy; `NotFound` if there was none.
pub fn remove(app: &App, name: &str) -> Result<(), ApiError> {
    let existed = transact(app.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.delete_meta(POLICIES, name)
    })?;
    app.policies.forget(name);
    if existed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("policy {} does not exist", crate::convert::shown(name)),
        ))
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `PUT /v1/policies/{name}`: creates or replaces a policy; the document is validated by compiling it.
pub async fn put(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
    body: RawBody,
) -> Response {
    let meta = meta.on(crate::app::resource("policy", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::PutPolicy,
        None,
        Mode::Blocking,
        move |caller| {
            if !valid_name(&name) {
                return Err(ApiError::validation(
                    "policy names are 1 to 128 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            let doc: PolicyDoc = parse(&body)?;
            compile(&doc).map_err(ApiError::validation)?;
            let m = approvals::required_for_policy(&a, Some(&doc))?;
            if m > 0 {
                return approvals::request(
                    &a,
                    &caller,
                    approvals::Operation::PutPolicy {
                        name,
                        document: doc,
                    },
                    m,
                );
            }
            store(&a, &name, &doc)?;
            Reply::ok(&doc)
        },
    )
    .await
}

/// `GET /v1/policies`: the names of every stored policy (`{"policies": [...]}`), for access reviews.
pub async fn list(
    State(app): State<AppState>,
    meta: Meta,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ListPolicies,
        None,
        Mode::Blocking,
        move |_| {
            let all = transact(a.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
                tx.list_meta(POLICIES)
            })?;
            let (page, next) = crate::handlers::keys::page(all, &q)?;
            let names: Vec<&str> = page.iter().map(|(name, _)| name.as_str()).collect();
            Reply::ok(&serde_json::json!({ "policies": names, "next_token": next }))
        },
    )
    .await
}

/// `GET /v1/policies/{name}`.
pub async fn get(State(app): State<AppState>, meta: Meta, Path(name): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("policy", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GetPolicy,
        None,
        Mode::Blocking,
        move |_| {
            let raw = transact(a.kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
                tx.get_meta(POLICIES, &name)
            })
            .map_err(|e| ApiError(KmsError::from(e)))?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("policy {} does not exist", crate::convert::shown(&name)),
                )
            })?;
            let doc: PolicyDoc = serde_json::from_slice(&raw)
                .map_err(|_| ApiError::new(ErrorCode::Unavailable, "store corrupt: policy"))?;
            Reply::ok(&doc)
        },
    )
    .await
}

/// `DELETE /v1/policies/{name}`.
pub async fn delete(State(app): State<AppState>, meta: Meta, Path(name): Path<String>) -> Response {
    let meta = meta.on(crate::app::resource("policy", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::DeletePolicy,
        None,
        Mode::Blocking,
        move |caller| {
            let m = approvals::required_for_policy(&a, None)?;
            if m > 0 {
                return approvals::request(
                    &a,
                    &caller,
                    approvals::Operation::DeletePolicy { name },
                    m,
                );
            }
            remove(&a, &name)?;
            Ok(Reply::empty())
        },
    )
    .await
}
