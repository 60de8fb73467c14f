//! `PUT/GET/DELETE /v1/policies/{name}` and `GET /v1/policies`: HTTP over the policy repository of
//! `keyward-iam`, which validates, canonicalises and caches the documents.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use keyward_core::{ErrorCode, KmsError};

use crate::app::{call, parse, App, AppState, Meta, Mode, RawBody, Reply};
use crate::authz::Action;
use crate::error::ApiError;
use crate::handlers::approvals;
use crate::policy::PolicyDoc;

/// The store namespace of policies, for the change feed.
pub const POLICIES: &str = keyward_iam::policies::NAMESPACE;

/// Stores a validated policy (used directly and by approved quorum requests); returns it as stored.
pub fn store(app: &App, name: &str, doc: &PolicyDoc) -> Result<PolicyDoc, ApiError> {
    Ok(app.iam.policies.put(name, doc)?)
}

/// Deletes a policy; `NotFound` if there was none. Identities that hold it lose it in the same transaction
/// when `detach` says so; otherwise the deletion is refused while any holds it (`InvalidState`, naming them),
/// since tokens that name a missing policy are refused on every request.
pub fn remove(app: &App, name: &str, detach: bool) -> Result<(), ApiError> {
    let mut detached = Vec::new();
    app.iam.policies.delete(name, |tx| {
        let holders = keyward_iam::identities::holders_in(tx, name)?;
        if holders.is_empty() {
            return Ok(());
        }
        if !detach {
            return Err(attached(name, &holders));
        }
        for holder in &holders {
            keyward_iam::identities::detach_in(tx, holder, name)?;
        }
        detached = holders;
        Ok(())
    })?;
    for identity in &detached {
        app.iam.forget_identity(identity);
    }
    Ok(())
}

fn attached(name: &str, holders: &[String]) -> KmsError {
    const SHOWN: usize = 10;
    let mut names = holders
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if holders.len() > SHOWN {
        names.push_str(&format!(" and {} more", holders.len() - SHOWN));
    }
    KmsError::new(
        ErrorCode::InvalidState,
        format!(
            "policy {} is attached to {names}; detach it first, or delete with ?detach=true",
            keyward_core::shown(name)
        ),
    )
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
            keyward_iam::names::check_policy(&name)?;
            let doc: PolicyDoc = parse(&body)?;
            let doc = keyward_iam::policies::prepare(&doc)?;
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
            Reply::ok(&store(&a, &name, &doc)?)
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
            let all: Vec<(String, ())> = a
                .iam
                .policies
                .names()?
                .into_iter()
                .map(|n| (n, ()))
                .collect();
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
        move |_| Reply::ok(&a.iam.policies.get(&name)?),
    )
    .await
}

/// `DELETE /v1/policies/{name}[?detach=true]`. Everything that would refuse the deletion is checked before
/// a quorum request is opened, so that approvers are never asked to approve what cannot run.
pub async fn delete(
    State(app): State<AppState>,
    meta: Meta,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let meta = meta.on(crate::app::resource("policy", &name));
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::DeletePolicy,
        None,
        Mode::Blocking,
        move |caller| {
            crate::convert::only(&q, &["detach"])?;
            let detach = match q.get("detach").map(String::as_str) {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(ApiError::validation("detach is true or false")),
            };
            a.iam.policies.get(&name)?;
            if !detach {
                let holders = a.iam.identities.holders(&name)?;
                if !holders.is_empty() {
                    return Err(ApiError(attached(&name, &holders)));
                }
            }
            let m = approvals::required_for_policy(&a, None)?;
            if m > 0 {
                return approvals::request(
                    &a,
                    &caller,
                    approvals::Operation::DeletePolicy { name, detach },
                    m,
                );
            }
            remove(&a, &name, detach)?;
            Ok(Reply::empty())
        },
    )
    .await
}
