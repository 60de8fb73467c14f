//! Who is calling and what it may do: authentication, rate limiting, roles and policies, decided once per
//! request (and, for a key named only by a ciphertext, once the key is known).

use super::*;
use crate::auth::Principal;
use crate::authz::{Action, Class};
use crate::error::ApiError;
use keyward_core::ErrorCode;
use std::sync::Arc;

/// Who is calling, and what the policies still require of the request's encryption context.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The authenticated principal.
    pub principal: Arc<Principal>,
    /// Conditions on the encryption context that only the handler can check.
    pub context_rule: Option<Arc<crate::policy::ContextRule>>,
    /// The client's address, for policy conditions evaluated after authorization.
    pub source_ip: Option<std::net::IpAddr>,
    /// For a re-encryption, or a decryption that names no key: the keys its ciphertexts name, gathered by
    /// the handler for the audit record (whether or not the caller may use them).
    pub source_keys: Option<Arc<parking_lot::Mutex<Vec<String>>>>,
    /// For `/v1/decrypt`, where the key is only known from the ciphertext, and for the source key of a
    /// re-encryption (which the caller must be allowed to decrypt with): the evaluation still to do.
    pub pending: Option<Arc<Pending>>,
}

/// A policy evaluation deferred until the handler knows the key.
#[derive(Debug)]
pub struct Pending {
    policies: Vec<Arc<crate::policy::Compiled>>,
    role_allows: bool,
    action: Action,
    source_ip: Option<std::net::IpAddr>,
    mfa: bool,
}

impl Caller {
    /// Whether this caller may perform `action` on a key (or, with none, on the service), by its roles and
    /// policies as `authorize` decides: for checks made after the request's own authorization, such as
    /// an approver's right to the operation it approves.
    pub fn may(&self, app: &App, action: Action, key_ref: Option<&str>) -> bool {
        let role_allows = self.principal.roles.iter().any(|r| r.allows(action));
        if self.principal.policies.is_empty() {
            return role_allows;
        }
        // Policies that cannot be loaded allow nothing (fail closed).
        let Ok(policies) = app.policies.load(&self.principal.policies) else {
            return false;
        };
        let Ok(resources) = resources(&app.kms, key_ref) else {
            return false;
        };
        let request = crate::policy::Request {
            action,
            resources: &resources,
            source_ip: self.source_ip,
            mfa: self.principal.mfa,
        };
        match crate::policy::evaluate(policies.iter().map(|p| p.as_ref()), role_allows, &request) {
            crate::policy::Decision::Allow => true,
            crate::policy::Decision::Context(rule) => rule.allows(&keyward_api::Context::new()),
            _ => false,
        }
    }

    /// Notes a key that a ciphertext names, for the audit record (see [`call`]).
    pub fn note_source_key(&self, key_id: &str) {
        if let Some(keys) = &self.source_keys {
            let mut keys = keys.lock();
            if !keys.iter().any(|k| k == key_id) {
                keys.push(key_id.to_string());
            }
        }
    }

    /// For a request whose key comes from the ciphertext: evaluates the policies for that key and context.
    pub fn check_key(
        &self,
        kms: &keyward_core::Kms,
        key_id: &str,
        context: &keyward_api::Context,
    ) -> Result<(), ApiError> {
        let Some(p) = &self.pending else {
            return self.check_context(context);
        };
        let resources = resources(kms, Some(key_id))?;
        let request = crate::policy::Request {
            action: p.action,
            resources: &resources,
            source_ip: p.source_ip,
            mfa: p.mfa,
        };
        let allowed = match crate::policy::evaluate(
            p.policies.iter().map(|x| x.as_ref()),
            p.role_allows,
            &request,
        ) {
            crate::policy::Decision::Allow => true,
            crate::policy::Decision::Context(rule) => rule.allows(context),
            crate::policy::Decision::Deny => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!(
                    "{} may not perform {} with key {key_id}",
                    self.principal.name,
                    p.action.name()
                ),
            ))
        }
    }

    /// Refuses the request if a policy condition on the encryption context does not hold.
    pub fn check_context(&self, context: &keyward_api::Context) -> Result<(), ApiError> {
        match &self.context_rule {
            Some(rule) if !rule.allows(context) => Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!(
                    "{}'s policies do not allow this encryption context",
                    self.principal.name
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Actions whose requests carry an encryption context the handler checks against policy conditions.
fn carries_context(action: Action) -> bool {
    matches!(
        action,
        Action::Encrypt
            | Action::Decrypt
            | Action::ReEncrypt
            | Action::GenerateDataKey
            | Action::GenerateDataKeyPair
    )
}

pub(super) fn authorize(
    app: &AppState,
    meta: &Meta,
    action: Action,
    key_ref: Option<&str>,
    now: i64,
) -> Result<Caller, (Arc<Principal>, ApiError)> {
    let anonymous = || Arc::new(Principal::anonymous());
    let source_ip = meta.ip;
    if action.class() == Class::Public {
        return Ok(Caller {
            source_keys: None,
            source_ip,
            principal: anonymous(),
            context_rule: None,
            pending: None,
        });
    }
    let principal = match (&meta.bearer, &meta.client_subject) {
        (None, Some(subject)) => crate::handlers::identities::by_certificate(app, subject)
            .map_err(|e| (anonymous(), e))?,
        (token, _) => app
            .auth
            .authenticate(token.as_ref().map_or("", Bearer::expose), now)
            .map_err(|e| (anonymous(), ApiError(e)))?,
    };
    if !app.limiter.allow(&principal.name) {
        return Err((
            principal,
            ApiError::new(ErrorCode::Throttled, "rate limit exceeded; retry shortly"),
        ));
    }
    if action.class() == Class::Own {
        return Ok(Caller {
            source_keys: None,
            source_ip,
            principal,
            context_rule: None,
            pending: None,
        });
    }
    let role_allows = principal.roles.iter().any(|r| r.allows(action));
    let denied = |p: &Arc<Principal>| {
        ApiError::new(
            ErrorCode::AccessDenied,
            format!("{} may not perform {}", p.name, action.name()),
        )
    };
    if principal.policies.is_empty() {
        return if role_allows {
            Ok(Caller {
                source_keys: None,
                source_ip,
                principal,
                context_rule: None,
                pending: None,
            })
        } else {
            let e = denied(&principal);
            Err((principal, e))
        };
    }
    // Authorization fails closed: a policy the caller holds that cannot be loaded could hold a deny.
    let policies = match app.policies.load(&principal.policies) {
        Ok(p) => p,
        Err(e) => return Err((principal, ApiError(e))),
    };
    if key_ref.is_none() && action == Action::Decrypt {
        let pending = Pending {
            policies,
            role_allows,
            action,
            source_ip,
            mfa: principal.mfa,
        };
        return Ok(Caller {
            source_keys: None,
            source_ip,
            principal,
            context_rule: None,
            pending: Some(Arc::new(pending)),
        });
    }
    // Re-encryption hands the source key's plaintext to whoever may use the destination key: the caller
    // must also be allowed to decrypt with the source key, which only the ciphertext names.
    let source_check = (action == Action::ReEncrypt).then(|| {
        Arc::new(Pending {
            policies: policies.clone(),
            role_allows: principal.roles.iter().any(|r| r.allows(Action::Decrypt)),
            action: Action::Decrypt,
            source_ip,
            mfa: principal.mfa,
        })
    });
    let resources = match resources(&app.kms, key_ref) {
        Ok(r) => r,
        Err(e) => return Err((principal, e)),
    };
    let request = crate::policy::Request {
        action,
        resources: &resources,
        source_ip,
        mfa: principal.mfa,
    };
    let context_rule =
        match crate::policy::evaluate(policies.iter().map(|p| p.as_ref()), role_allows, &request) {
            crate::policy::Decision::Allow => None,
            crate::policy::Decision::Context(rule) if carries_context(action) => {
                Some(Arc::new(rule))
            }
            crate::policy::Decision::Context(rule) if rule.allows(&keyward_api::Context::new()) => {
                None
            }
            _ => {
                let e = denied(&principal);
                return Err((principal, e));
            }
        };
    Ok(Caller {
        source_keys: None,
        source_ip,
        principal,
        context_rule,
        pending: source_check,
    })
}

/// The names policies may give the key a request concerns: `key/<id>` and every alias pointing to the key,
/// however the request named it (see [`keyward_core::Kms::key_aliases`]); a reference to no key stands for
/// itself (the handler then answers `NotFound`). When the aliases cannot be read, no decision is safe (a
/// deny on an alias would be missed) and the request fails closed.
fn resources(kms: &keyward_core::Kms, key_ref: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(r) = key_ref else {
        return Ok(Vec::new());
    };
    let given = match r
        .strip_prefix("alias/")
        .or_else(|| r.strip_prefix("alias:"))
    {
        Some(name) => format!("alias/{name}"),
        None => format!("key/{r}"),
    };
    let (id, aliases) = match kms.key_aliases(r) {
        Ok(found) => found,
        Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::ValidationError) => {
            return Ok(vec![given]);
        }
        Err(e) => return Err(ApiError(e)),
    };
    let mut out = Vec::with_capacity(aliases.len() + 2);
    out.push(format!("key/{id}"));
    out.extend(aliases.iter().cloned());
    if !out.contains(&given) {
        out.push(given);
    }
    Ok(out)
}
