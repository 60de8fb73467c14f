//! The one authorization every front end calls: who is calling (by whatever credential its protocol
//! carries), whether it is over its rate, and whether its roles and policies allow the action on the key.
//!
//! A door authenticates the protocol's own way as far as it must (a REST bearer token or client certificate
//! is looked up here; an AWS Signature Version 4 is verified by its door, which then names the identity the
//! access key belongs to), and then every decision is made here: the same roles, the same policy
//! evaluation, the same fail-closed loading, the same rate limit. What only the handler can decide (the
//! key a ciphertext names, the encryption context) is carried in the [`Caller`] for it to check.

use std::net::IpAddr;
use std::sync::Arc;

use keyward_core::{ErrorCode, Kms, KmsError};

use crate::auth::Principal;
use crate::authz::{Action, Class};
use crate::limiter::Limiter;
use crate::policy::{self, Compiled, ContextRule, Decision};
use crate::Iam;

/// What a request presented to say who it is.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// Nothing: refused, unless the action is public.
    None,
    /// A bearer token, looked up (hashed) among the live tokens.
    Bearer(&'a str),
    /// The subject of a verified client certificate, mapped to the identity bound to it.
    Certificate(&'a str),
    /// An identity its door has already authenticated with a credential of the door's own protocol (the
    /// owner of an access key whose signature verified).
    Verified(&'a Arc<Principal>),
}

/// One request, as authorization sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Who the request says it is.
    pub credential: Credential<'a>,
    /// What it asks to do.
    pub action: Action,
    /// The key it names, in whatever form (id, ARN-free alias, `alias/...`); `None` for the service itself
    /// or a key only a ciphertext names.
    pub key_ref: Option<&'a str>,
    /// The client's address, for policy conditions.
    pub source_ip: Option<IpAddr>,
    /// Unix seconds.
    pub now: i64,
}

/// Who is calling, and what the policies still require of the request's encryption context.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The authenticated principal.
    pub principal: Arc<Principal>,
    /// Conditions on the encryption context that only the handler can check.
    pub context_rule: Option<Arc<ContextRule>>,
    /// The client's address, for policy conditions evaluated after authorization.
    pub source_ip: Option<IpAddr>,
    /// For a re-encryption, or a decryption that names no key: the keys its ciphertexts name, gathered by
    /// the handler for the audit record (whether or not the caller may use them).
    pub source_keys: Option<Arc<parking_lot::Mutex<Vec<String>>>>,
    /// For a decryption where the key is only known from the ciphertext, and for the source key of a
    /// re-encryption (which the caller must be allowed to decrypt with): the evaluation still to do.
    pub pending: Option<Arc<Pending>>,
}

/// A policy evaluation deferred until the handler knows the key.
#[derive(Debug)]
pub struct Pending {
    policies: Vec<Arc<Compiled>>,
    role_allows: bool,
    action: Action,
    source_ip: Option<IpAddr>,
    mfa: bool,
}

/// A refusal, with whoever was identified before it (the anonymous principal when nobody was): the record
/// of the refused attempt names them.
pub type Refusal = (Arc<Principal>, KmsError);

impl Caller {
    fn new(principal: Arc<Principal>, source_ip: Option<IpAddr>) -> Caller {
        Caller {
            principal,
            context_rule: None,
            source_ip,
            source_keys: None,
            pending: None,
        }
    }

    /// Whether this caller may perform `action` on a key (or, with none, on the service), by its roles and
    /// policies as [`Iam::authorize`] decides: for checks made after the request's own authorization, such
    /// as an approver's right to the operation it approves.
    pub fn may(&self, iam: &Iam, kms: &Kms, action: Action, key_ref: Option<&str>) -> bool {
        let role_allows = self.principal.roles.iter().any(|r| r.allows(action));
        if self.principal.policies.is_empty() {
            return role_allows;
        }
        // Policies that cannot be loaded allow nothing (fail closed).
        let Ok(policies) = iam.policies.load(&self.principal.policies) else {
            return false;
        };
        let Ok(resources) = resources(kms, key_ref) else {
            return false;
        };
        let request = policy::Request {
            action,
            resources: &resources,
            source_ip: self.source_ip,
            mfa: self.principal.mfa,
        };
        match policy::evaluate(policies.iter().map(|p| p.as_ref()), role_allows, &request) {
            Decision::Allow => true,
            Decision::Context(rule) => rule.allows(&keyward_api::Context::new()),
            Decision::Deny => false,
        }
    }

    /// Notes a key that a ciphertext names, for the audit record.
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
        kms: &Kms,
        key_id: &str,
        context: &keyward_api::Context,
    ) -> Result<(), KmsError> {
        let Some(p) = &self.pending else {
            return self.check_context(context);
        };
        let resources = resources(kms, Some(key_id))?;
        let request = policy::Request {
            action: p.action,
            resources: &resources,
            source_ip: p.source_ip,
            mfa: p.mfa,
        };
        let allowed = match policy::evaluate(
            p.policies.iter().map(|x| x.as_ref()),
            p.role_allows,
            &request,
        ) {
            Decision::Allow => true,
            Decision::Context(rule) => rule.allows(context),
            Decision::Deny => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(KmsError::new(
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
    pub fn check_context(&self, context: &keyward_api::Context) -> Result<(), KmsError> {
        match &self.context_rule {
            Some(rule) if !rule.allows(context) => Err(KmsError::new(
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
            | Action::Protect
            | Action::Unprotect
    )
}

impl Iam {
    /// Who the request's credential names.
    fn authenticate(
        &self,
        credential: Credential<'_>,
        now: i64,
    ) -> Result<Arc<Principal>, KmsError> {
        match credential {
            Credential::Verified(p) => Ok(p.clone()),
            Credential::Certificate(subject) => {
                Ok(Arc::new(self.identities.by_certificate(subject)?))
            }
            Credential::Bearer(token) => self.auth.authenticate(token, now),
            Credential::None => self.auth.authenticate("", now),
        }
    }

    /// Decides a request: authenticates it, applies the caller's rate, and evaluates its roles and policies
    /// against the action and every name of the key. Fails closed: a policy that cannot be loaded, or a key
    /// whose aliases cannot be read, refuses the request.
    pub fn authorize(
        &self,
        kms: &Kms,
        limiter: &Limiter,
        req: &Request<'_>,
    ) -> Result<Caller, Refusal> {
        let anonymous = || Arc::new(Principal::anonymous());
        let (action, source_ip) = (req.action, req.source_ip);
        if action.class() == Class::Public {
            return Ok(Caller::new(anonymous(), source_ip));
        }
        let principal = self
            .authenticate(req.credential, req.now)
            .map_err(|e| (anonymous(), e))?;
        if !limiter.allow(&principal.name) {
            let e = KmsError::new(ErrorCode::Throttled, "rate limit exceeded; retry shortly");
            return Err((principal, e));
        }
        if action.class() == Class::Own {
            return Ok(Caller::new(principal, source_ip));
        }
        let role_allows = principal.roles.iter().any(|r| r.allows(action));
        let denied = |p: &Arc<Principal>| {
            KmsError::new(
                ErrorCode::AccessDenied,
                format!("{} may not perform {}", p.name, action.name()),
            )
        };
        if principal.policies.is_empty() {
            return if role_allows {
                Ok(Caller::new(principal, source_ip))
            } else {
                let e = denied(&principal);
                Err((principal, e))
            };
        }
        // A policy the caller holds that cannot be loaded could hold a deny.
        let policies = match self.policies.load(&principal.policies) {
            Ok(p) => p,
            Err(e) => return Err((principal, e)),
        };
        let pending = |action: Action, role_allows: bool| {
            Arc::new(Pending {
                policies: policies.clone(),
                role_allows,
                action,
                source_ip,
                mfa: principal.mfa,
            })
        };
        if req.key_ref.is_none() && action == Action::Decrypt {
            let pending = pending(action, role_allows);
            return Ok(Caller {
                pending: Some(pending),
                ..Caller::new(principal, source_ip)
            });
        }
        // Re-encryption hands the source key's plaintext to whoever may use the destination key: the caller
        // must also be allowed to decrypt with the source key, which only the ciphertext names.
        let source_check = (action == Action::ReEncrypt).then(|| {
            let decrypts = principal.roles.iter().any(|r| r.allows(Action::Decrypt));
            pending(Action::Decrypt, decrypts)
        });
        let resources = match resources(kms, req.key_ref) {
            Ok(r) => r,
            Err(e) => return Err((principal, e)),
        };
        let request = policy::Request {
            action,
            resources: &resources,
            source_ip,
            mfa: principal.mfa,
        };
        let context_rule =
            match policy::evaluate(policies.iter().map(|p| p.as_ref()), role_allows, &request) {
                Decision::Allow => None,
                Decision::Context(rule) if carries_context(action) => Some(Arc::new(rule)),
                Decision::Context(rule) if rule.allows(&keyward_api::Context::new()) => None,
                _ => {
                    let e = denied(&principal);
                    return Err((principal, e));
                }
            };
        Ok(Caller {
            context_rule,
            pending: source_check,
            ..Caller::new(principal, source_ip)
        })
    }
}

/// The names policies may give the key a request concerns: `key/<id>` and every alias pointing to the key,
/// however the request named it (see [`Kms::key_aliases`]); a reference to no key stands for itself (the
/// handler then answers `NotFound`). When the aliases cannot be read, no decision is safe (a deny on an
/// alias would be missed) and the request fails closed.
fn resources(kms: &Kms, key_ref: Option<&str>) -> Result<Vec<String>, KmsError> {
    let Some(r) = key_ref else {
        return Ok(Vec::new());
    };
    if r.starts_with("kv/") {
        // A secret's resource names itself: there is no key, and no alias, to look up.
        return Ok(vec![r.to_string()]);
    }
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
        Err(e) => return Err(e),
    };
    let mut out = Vec::with_capacity(aliases.len() + 2);
    out.push(format!("key/{id}"));
    out.extend(aliases.iter().cloned());
    if !out.contains(&given) {
        out.push(given);
    }
    Ok(out)
}
