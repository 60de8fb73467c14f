//! Who is calling and what it may do, decided by the one authorization every front end shares
//! (`keyward_iam::access`): this module only says which credential a REST request carries.

use super::*;
use crate::auth::Principal;
use crate::authz::Action;
use crate::error::ApiError;
use keyward_iam::access::{Credential, Request};
use std::sync::Arc;

pub use keyward_iam::access::{Caller, Pending};

/// Authorizes a REST request: a bearer token if it carries one, else the verified client certificate's
/// subject, else nothing (refused unless the action is public).
pub(super) fn authorize(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<&str>,
    now: i64,
) -> Result<Caller, (Arc<Principal>, ApiError)> {
    let credential = match (&meta.verified, &meta.bearer, &meta.client_subject) {
        (Some(Ok(principal)), _, _) => Credential::Verified(principal),
        (Some(Err(refused)), _, _) => {
            return Err((Arc::new(Principal::anonymous()), refused.clone()))
        }
        (None, Some(token), _) => Credential::Bearer(token.expose()),
        (None, None, Some(subject)) => Credential::Certificate(subject),
        (None, None, None) => Credential::None,
    };
    let request = Request {
        credential,
        action,
        key_ref,
        source_ip: meta.ip,
        now,
    };
    app.iam
        .authorize(&app.kms, &app.limiter, &request)
        .map_err(|(p, e)| (p, ApiError(e)))
}
