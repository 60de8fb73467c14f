//! Identity records over the store: who exists, what each may do (roles and policies), how it signs in
//! (password hash, TOTP seed, client certificate subject). Every write keeps the records, the certificate
//! index and the identity's live tokens consistent in one transaction, so that a grant taken away or an
//! identity deleted is gone at once, on every node.

use std::sync::Arc;

use keyward_core::{shown, ErrorCode, KmsError, KmsResult};
use keyward_store::{transact, Store, Tx};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, Principal};
use crate::authz::Role;

/// The store namespace of identity records.
pub const IDENTITIES: &str = "identity";
/// The store namespace of the certificate-subject index.
pub const SUBJECTS: &str = "identity_subject";

/// A stored identity. Never shown as is: the password hash and TOTP seed stay inside the service.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// Unique name (see [`crate::names`]).
    pub name: String,
    /// `service` or `user`.
    pub kind: String,
    /// Built-in roles.
    pub roles: Vec<String>,
    /// Policy names.
    pub policies: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Argon2id PHC string, for users that sign in with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// The TOTP seed, encrypted under the service-secrets key (hex), when MFA is enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_seed: Option<String>,
    /// The last TOTP step used: codes are single-use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_last_step: Option<u64>,
    /// A client certificate subject that authenticates as this identity (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_subject: Option<String>,
    /// The identity provider this identity signs in through (`jwt:<issuer>`, `ldap`): only that provider's
    /// sign-ins reach it, so that another issuer, or the directory, naming the same account cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl IdentityRecord {
    /// The built-in roles it holds.
    pub fn roles(&self) -> Vec<Role> {
        self.roles.iter().filter_map(|r| Role::parse(r)).collect()
    }
}

/// Subjects compare without spaces around separators, with upper-case attribute types, and in any
/// attribute order (`O=Payments, CN=app1` matches a certificate issued to `CN=app1, O=Payments`).
pub fn normalize_subject(subject: &str) -> String {
    let mut parts: Vec<String> = subject
        .split(',')
        .map(|part| {
            let part = part.trim();
            match part.split_once('=') {
                Some((t, v)) => format!("{}={}", t.trim().to_ascii_uppercase(), v.trim()),
                None => part.to_string(),
            }
        })
        .collect();
    parts.sort();
    parts.join(",")
}

fn corrupt() -> KmsError {
    KmsError::new(ErrorCode::Unavailable, "store corrupt: identity")
}

fn encode(rec: &IdentityRecord) -> KmsResult<Vec<u8>> {
    serde_json::to_vec(rec).map_err(|_| KmsError::new(ErrorCode::Unavailable, "identity encoding"))
}

/// `identity NAME does not exist`.
pub fn not_found(name: &str) -> KmsError {
    KmsError::new(
        ErrorCode::NotFound,
        format!("identity {} does not exist", shown(name)),
    )
}

/// Roles must be built-in ones; policies must exist (a misspelt deny would silently never apply), checked in
/// the transaction that stores the grant.
pub fn check_grants(tx: &mut dyn Tx, roles: &[String], policies: &[String]) -> KmsResult<()> {
    if let Some(r) = roles.iter().find(|r| Role::parse(r).is_none()) {
        return Err(KmsError::new(
            ErrorCode::ValidationError,
            format!(
                "unknown role {}; one of: admin, key-admin, key-user, auditor",
                keyward_core::quoted(r)
            ),
        ));
    }
    if roles.len() > 4 || policies.len() > 100 {
        return Err(KmsError::new(
            ErrorCode::ValidationError,
            "an identity has at most 4 roles and 100 policies",
        ));
    }
    if let Some(p) = policies
        .iter()
        .find(|p| crate::names::check_policy(p).is_err())
    {
        return Err(KmsError::new(
            ErrorCode::ValidationError,
            format!("{} is not a policy name", keyward_core::quoted(p)),
        ));
    }
    if let Some(missing) = crate::policies::Policies::missing_in(tx, policies)? {
        return Err(KmsError::new(
            ErrorCode::ValidationError,
            format!(
                "policy {} does not exist; create it first (PUT /v1/policies/NAME)",
                keyward_core::quoted(&missing)
            ),
        ));
    }
    Ok(())
}

/// Reads one identity in `tx` (`NotFound` if none).
pub fn read_in(tx: &mut dyn Tx, name: &str) -> KmsResult<IdentityRecord> {
    let raw = tx
        .get_meta(IDENTITIES, name)?
        .ok_or_else(|| not_found(name))?;
    serde_json::from_slice(&raw).map_err(|_| corrupt())
}

/// The names of the identities holding `policy`, read in `tx`.
pub fn holders_in(tx: &mut dyn Tx, policy: &str) -> KmsResult<Vec<String>> {
    let mut out = Vec::new();
    for (_, raw) in tx.list_meta(IDENTITIES)? {
        let rec: IdentityRecord = serde_json::from_slice(&raw).map_err(|_| corrupt())?;
        if rec.policies.iter().any(|p| p == policy) {
            out.push(rec.name);
        }
    }
    Ok(out)
}

/// Takes `policy` from an identity and from the tokens it holds, in `tx`.
pub fn detach_in(tx: &mut dyn Tx, identity: &str, policy: &str) -> KmsResult<()> {
    let mut rec = read_in(tx, identity)?;
    rec.policies.retain(|p| p != policy);
    tx.put_meta(IDENTITIES, &rec.name, &encode(&rec)?)?;
    Auth::regrant_in(tx, &rec.name, Some((&rec.roles, &rec.policies)))?;
    Ok(())
}

/// Identity records in a store.
pub struct Identities {
    store: Arc<dyn Store>,
}

impl Identities {
    /// Identities kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Identities { store }
    }

    /// One identity, if it exists.
    pub fn get(&self, name: &str) -> KmsResult<Option<IdentityRecord>> {
        let raw = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(IDENTITIES, name)
        })?;
        raw.map(|b| serde_json::from_slice(&b).map_err(|_| corrupt()))
            .transpose()
    }

    /// Every identity, by name.
    pub fn all(&self) -> KmsResult<Vec<IdentityRecord>> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.list_meta(IDENTITIES)
        })?
        .into_iter()
        .map(|(_, raw)| serde_json::from_slice(&raw).map_err(|_| corrupt()))
        .collect()
    }

    /// The names of the identities holding `policy`.
    pub fn holders(&self, policy: &str) -> KmsResult<Vec<String>> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            holders_in(tx, policy)
        })
    }

    /// Stores a new identity: its name well-formed and unique without regard to case, its kind known, its
    /// grants valid (existing policies only), its certificate subject (if any) unused.
    pub fn create(&self, rec: &IdentityRecord) -> KmsResult<()> {
        crate::names::check_identity(&rec.name)?;
        if !matches!(rec.kind.as_str(), "service" | "user") {
            return Err(KmsError::new(
                ErrorCode::ValidationError,
                "kind is service or user",
            ));
        }
        if let Some(subject) = &rec.certificate_subject {
            if subject.is_empty() || subject.len() > 1024 {
                return Err(KmsError::new(
                    ErrorCode::ValidationError,
                    "certificate_subject is 1 to 1024 characters",
                ));
            }
        }
        let json = encode(rec)?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            check_grants(tx, &rec.roles, &rec.policies)?;
            if tx.get_meta(IDENTITIES, &rec.name)?.is_some() {
                return Err(KmsError::new(
                    ErrorCode::AlreadyExists,
                    format!("identity {} already exists", rec.name),
                ));
            }
            let stored = tx.list_meta(IDENTITIES)?;
            if let Some(other) =
                crate::names::clash(&rec.name, stored.iter().map(|(n, _)| n.as_str()))
            {
                return Err(KmsError::new(
                    ErrorCode::AlreadyExists,
                    format!("identity {other} exists; names are unique without regard to case"),
                ));
            }
            if let Some(subject) = &rec.certificate_subject {
                let key = normalize_subject(subject);
                if tx.get_meta(SUBJECTS, &key)?.is_some() {
                    return Err(KmsError::new(
                        ErrorCode::AlreadyExists,
                        "another identity has this certificate subject",
                    ));
                }
                tx.put_meta(SUBJECTS, &key, rec.name.as_bytes())?;
            }
            Ok(tx.put_meta(IDENTITIES, &rec.name, &json)?)
        })
    }

    /// Changes what an identity may do; the tokens it holds change with it in the same transaction.
    pub fn regrant(
        &self,
        name: &str,
        roles: Option<&[String]>,
        policies: Option<&[String]>,
    ) -> KmsResult<IdentityRecord> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut rec = read_in(tx, name)?;
            if let Some(roles) = roles {
                rec.roles = roles.to_vec();
            }
            if let Some(policies) = policies {
                rec.policies = policies.to_vec();
            }
            check_grants(tx, &rec.roles, &rec.policies)?;
            tx.put_meta(IDENTITIES, &rec.name, &encode(&rec)?)?;
            Auth::regrant_in(tx, &rec.name, Some((&rec.roles, &rec.policies)))?;
            Ok(rec)
        })
    }

    /// The identity a sign-in through `source` names: the one bound to that provider, or a new one when
    /// `create` allows. An identity of another provider, or a local one, is never reached this way. The
    /// grants the sign-in maps to are checked in the same transaction (a policy deleted since the provider
    /// was configured refuses the sign-in with 503, rather than issue a token that every request refuses).
    #[allow(clippy::too_many_arguments)]
    pub fn federated(
        &self,
        name: &str,
        kind: &str,
        source: &str,
        create: bool,
        grants: (&[String], &[String]),
        now: i64,
    ) -> KmsResult<IdentityRecord> {
        crate::names::check_identity(name)?;
        let not_bound = || {
            KmsError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "identity {} exists and does not sign in through {source}",
                    shown(name)
                ),
            )
        };
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            crate::jwt::check_named_grants(tx, grants.0, grants.1).map_err(|e| {
                KmsError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the sign-in's configuration is out of date: {}",
                        e.message()
                    ),
                )
            })?;
            if let Some(raw) = tx.get_meta(IDENTITIES, name)? {
                let rec: IdentityRecord = serde_json::from_slice(&raw).map_err(|_| corrupt())?;
                return match rec.source.as_deref() {
                    Some(s) if s == source => Ok(rec),
                    _ => Err(not_bound()),
                };
            }
            let stored = tx.list_meta(IDENTITIES)?;
            if crate::names::clash(name, stored.iter().map(|(n, _)| n.as_str())).is_some() {
                return Err(not_bound());
            }
            if !create {
                return Err(KmsError::new(
                    ErrorCode::Unauthenticated,
                    format!(
                        "no identity {} signs in through {source}, and the rule does not create identities",
                        shown(name)
                    ),
                ));
            }
            let rec = IdentityRecord {
                name: name.to_string(),
                kind: kind.to_string(),
                roles: Vec::new(),
                policies: Vec::new(),
                created_at: now,
                password_hash: None,
                totp_seed: None,
                totp_last_step: None,
                certificate_subject: None,
                source: Some(source.to_string()),
            };
            tx.put_meta(IDENTITIES, name, &encode(&rec)?)?;
            Ok(rec)
        })
    }

    /// Deletes an identity with every token it holds and its certificate subject.
    pub fn delete(&self, name: &str) -> KmsResult<()> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let rec = read_in(tx, name)?;
            if let Some(subject) = &rec.certificate_subject {
                tx.delete_meta(SUBJECTS, &normalize_subject(subject))?;
            }
            Auth::regrant_in(tx, &rec.name, None)?;
            crate::access_keys::AccessKeys::delete_all_in(tx, &rec.name)?;
            tx.delete_meta(IDENTITIES, &rec.name)?;
            Ok(())
        })
    }

    /// Replaces a stored record (its sign-in material changed: a TOTP seed enrolled).
    pub fn save(&self, rec: &IdentityRecord) -> KmsResult<()> {
        let json = encode(rec)?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            read_in(tx, &rec.name)?;
            Ok(tx.put_meta(IDENTITIES, &rec.name, &json)?)
        })
    }

    /// Records a TOTP step as used, refusing if a concurrent sign-in already used it or a later one: a code
    /// works once.
    pub fn use_totp_step(&self, rec: &IdentityRecord, step: u64) -> KmsResult<()> {
        let json = encode(rec)?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let current: Option<IdentityRecord> = tx
                .get_meta(IDENTITIES, &rec.name)?
                .and_then(|b| serde_json::from_slice(&b).ok());
            if current
                .and_then(|c| c.totp_last_step)
                .is_some_and(|last| last >= step)
            {
                return Err(KmsError::new(
                    ErrorCode::Unauthenticated,
                    "wrong or already used TOTP code",
                ));
            }
            Ok(tx.put_meta(IDENTITIES, &rec.name, &json)?)
        })
    }

    /// The principal a verified client certificate stands for.
    pub fn by_certificate(&self, subject: &str) -> KmsResult<Principal> {
        let unknown = || {
            KmsError::new(
                ErrorCode::Unauthenticated,
                "the client certificate maps to no identity",
            )
        };
        let key = normalize_subject(subject);
        let name = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(SUBJECTS, &key)
        })?
        .ok_or_else(unknown)?;
        let name = String::from_utf8(name).map_err(|_| unknown())?;
        let rec = self.get(&name)?.ok_or_else(unknown)?;
        Ok(Principal {
            name: rec.name.clone(),
            roles: rec.roles(),
            token_id: "mtls".into(),
            expires_at: None,
            mfa: false,
            policies: rec.policies.clone(),
        })
    }
}
