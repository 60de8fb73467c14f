//! Sign-in with a directory's accounts (LDAP, Active Directory): what is configured and how a user's groups
//! become grants. The conversation with the directory is the server's (it knows the network); the rules are
//! here, so that every front end signs people in the same way.
//!
//! The service account's bind password is stored sealed (the caller seals it under the service-secrets key
//! before [`Directory::put`]) and never returned. Plain LDAP is refused unless the configuration says
//! `insecure`: a password sent in the clear to the directory is a password given away.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyward_core::{quoted, ErrorCode, KmsError, KmsResult};
use keyward_store::{transact, Store, Tx};
use serde::{Deserialize, Serialize};

/// The store namespace of the directory configuration.
pub const DIRECTORY: &str = "ldap_config";
const ONE: &str = "default";

/// The directory as the API takes it (`PUT /v1/auth/ldap/config`) and the configuration file gives it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host:636`, or `ldap://host:389` with `starttls` (or `insecure`).
    pub url: String,
    /// The service account that searches for users (empty: an anonymous search).
    #[serde(default)]
    pub bind_dn: String,
    /// Its password: taken in, stored sealed, never shown.
    #[serde(default, skip_serializing)]
    pub bind_password: Option<zeroize::Zeroizing<String>>,
    /// Where users are searched.
    pub user_base: String,
    /// The user search filter; `{name}` stands for the escaped login name.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Where groups are searched (absent: groups come from the user's `memberOf` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_base: Option<String>,
    /// The group search filter; `{dn}` stands for the user's escaped DN, `{name}` for the login name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_filter: Option<String>,
    /// Roles held by the members of each group (named by `cn` or by full DN).
    #[serde(default)]
    pub group_roles: BTreeMap<String, Vec<String>>,
    /// Policies held by the members of each group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_policies: BTreeMap<String, Vec<String>>,
    /// Upgrade `ldap://` with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// The CA certificates that sign the directory's certificate (PEM; absent: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Allow plain `ldap://` without TLS: passwords cross the network in the clear.
    #[serde(default)]
    pub insecure: bool,
    /// Seconds allowed for each exchange with the directory (default 5, at most 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// The identity kind created on first sign-in (`user` unless said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl std::fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .field("user_base", &self.user_base)
            .finish_non_exhaustive()
    }
}

fn default_user_filter() -> String {
    "(uid={name})".into()
}

fn invalid(msg: impl Into<String>) -> KmsError {
    KmsError::new(ErrorCode::ValidationError, msg)
}

/// The stored form: the configuration without its password, and the password sealed.
#[derive(Clone, Serialize, Deserialize)]
pub struct Stored {
    /// The configuration (its `bind_password` is never serialized).
    pub config: LdapConfig,
    /// The bind password, sealed by the caller (hex), if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_password: Option<String>,
}

impl LdapConfig {
    /// The timeout of each exchange with the directory.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(5))
    }

    /// The kind of identity a first sign-in creates.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("user")
    }

    /// Checks what needs no store: the URL and its protection, filters, bases, timeout.
    pub fn check(&self) -> KmsResult<()> {
        let tls = self.url.starts_with("ldaps://");
        let plain = self.url.starts_with("ldap://");
        if !(tls || plain) || self.url.len() > 1024 {
            return Err(invalid("url is ldaps://host[:port] or ldap://host[:port]"));
        }
        if tls && self.starttls {
            return Err(invalid(
                "starttls upgrades ldap://; an ldaps:// url is TLS already",
            ));
        }
        if plain && !self.starttls && !self.insecure {
            return Err(invalid(
                "plain ldap:// sends passwords in the clear: use ldaps://, or starttls, or say insecure: true",
            ));
        }
        if !self.user_filter.contains("{name}") {
            return Err(invalid("user_filter must contain {name}"));
        }
        for (what, f) in [
            ("user_filter", Some(&self.user_filter)),
            ("group_filter", self.group_filter.as_ref()),
        ] {
            if let Some(f) = f {
                if !f.starts_with('(') || !f.ends_with(')') || f.len() > 1024 {
                    return Err(invalid(format!(
                        "{what} is an LDAP filter in parentheses, at most 1024 characters"
                    )));
                }
            }
        }
        if self.group_filter.is_some() && self.group_base.is_none() {
            return Err(invalid("group_filter needs a group_base"));
        }
        if self.user_base.is_empty() {
            return Err(invalid(
                "user_base is the DN under which users are searched",
            ));
        }
        if self.timeout_seconds.is_some_and(|t| !(1..=60).contains(&t)) {
            return Err(invalid("timeout_seconds is 1 to 60"));
        }
        if !matches!(self.kind(), "user" | "service") {
            return Err(invalid("kind is user or service"));
        }
        if let Some(pem) = &self.ca_pem {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(invalid("ca_pem holds PEM certificates"));
            }
        }
        Ok(())
    }

    /// Every role and policy a group can grant.
    fn grants(&self) -> (Vec<String>, Vec<String>) {
        let mut roles: Vec<String> = self.group_roles.values().flatten().cloned().collect();
        let mut policies: Vec<String> = self.group_policies.values().flatten().cloned().collect();
        roles.sort();
        roles.dedup();
        policies.sort();
        policies.dedup();
        (roles, policies)
    }

    /// The user search filter for a login name, escaped (RFC 4515), so that a name cannot widen the search.
    pub fn user_search(&self, name: &str) -> String {
        self.user_filter.replace("{name}", &escape(name))
    }

    /// The group search filter for a user.
    pub fn group_search(&self, name: &str, dn: &str) -> Option<String> {
        let f = match &self.group_filter {
            Some(f) => f.clone(),
            None if self.group_base.is_some() => {
                "(|(member={dn})(uniqueMember={dn})(memberUid={name}))".to_string()
            }
            None => return None,
        };
        Some(
            f.replace("{dn}", &escape(dn))
                .replace("{name}", &escape(name)),
        )
    }

    /// The roles and policies of a user in these groups (each named by DN; matched by DN or by its first
    /// value, the `cn`, without regard to case).
    pub fn grants_for(&self, groups: &[String]) -> (Vec<String>, Vec<String>) {
        let named = |g: &str, key: &str| {
            g.eq_ignore_ascii_case(key)
                || first_value(g).is_some_and(|cn| cn.eq_ignore_ascii_case(key))
        };
        let mut roles = Vec::new();
        let mut policies = Vec::new();
        for g in groups {
            for (key, r) in &self.group_roles {
                if named(g, key) {
                    roles.extend(r.iter().cloned());
                }
            }
            for (key, p) in &self.group_policies {
                if named(g, key) {
                    policies.extend(p.iter().cloned());
                }
            }
        }
        roles.sort();
        roles.dedup();
        policies.sort();
        policies.dedup();
        (roles, policies)
    }
}

/// The value of a DN's first attribute (`cn=kms-admins,ou=groups,...` gives `kms-admins`).
fn first_value(dn: &str) -> Option<&str> {
    let first = dn.split(',').next()?;
    Some(first.split_once('=')?.1.trim())
}

/// RFC 4515 escaping of a value placed in a filter.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// The directory configuration kept in the store.
pub struct Directory {
    store: Arc<dyn Store>,
}

impl Directory {
    /// The configuration kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Directory { store }
    }

    /// The stored configuration, if any.
    pub fn get(&self) -> KmsResult<Option<Stored>> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(DIRECTORY, ONE)
        })?
        .map(|raw| {
            serde_json::from_slice(&raw)
                .map_err(|_| KmsError::new(ErrorCode::Unavailable, "store corrupt: ldap config"))
        })
        .transpose()
    }

    /// Stores the configuration with its sealed password, once checked (its roles built-in, its policies
    /// existing). A configuration without a password keeps the one stored, so that a change of filters need
    /// not repeat it.
    pub fn put(&self, config: &LdapConfig, sealed_password: Option<String>) -> KmsResult<bool> {
        config.check()?;
        let (roles, policies) = config.grants();
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            crate::jwt::check_named_grants(tx, &roles, &policies)?;
            let old: Option<Stored> = tx
                .get_meta(DIRECTORY, ONE)?
                .and_then(|raw| serde_json::from_slice(&raw).ok());
            let existed = old.is_some();
            let sealed = sealed_password
                .clone()
                .or(old.and_then(|o| o.sealed_password));
            if sealed.is_none() && !config.bind_dn.is_empty() {
                return Err(invalid(format!(
                    "bind_password is needed with bind_dn {}",
                    quoted(&config.bind_dn)
                )));
            }
            let json = serde_json::to_vec(&Stored {
                config: config.clone(),
                sealed_password: sealed,
            })
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "ldap config encoding"))?;
            tx.put_meta(DIRECTORY, ONE, &json)?;
            Ok(existed)
        })
    }

    /// Removes the configuration; false if there was none.
    pub fn delete(&self) -> KmsResult<bool> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let existed = tx.get_meta(DIRECTORY, ONE)?.is_some();
            tx.delete_meta(DIRECTORY, ONE)?;
            Ok(existed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LdapConfig {
        serde_json::from_value(serde_json::json!({
            "url": "ldaps://dir.example.com", "bind_dn": "cn=svc", "user_base": "ou=people,dc=example",
            "group_base": "ou=groups,dc=example",
            "group_roles": {"kms-admins": ["key-admin"], "cn=auditors,ou=groups,dc=example": ["auditor"]},
        }))
        .unwrap()
    }

    #[test]
    fn filters_escape_what_the_user_types() {
        let c = cfg();
        assert_eq!(c.user_search("alice"), "(uid=alice)");
        assert_eq!(c.user_search("*)(uid=*"), "(uid=\\2a\\29\\28uid=\\2a)");
        assert_eq!(
            c.group_search("a", "cn=a,dc=x").unwrap(),
            "(|(member=cn=a,dc=x)(uniqueMember=cn=a,dc=x)(memberUid=a))"
        );
    }

    #[test]
    fn groups_map_by_cn_or_dn() {
        let c = cfg();
        let (roles, _) = c.grants_for(&[
            "cn=KMS-Admins,ou=groups,dc=example".into(),
            "CN=auditors,ou=groups,dc=example".into(),
            "cn=other,dc=example".into(),
        ]);
        assert_eq!(roles, ["auditor", "key-admin"]);
        assert!(c.grants_for(&["cn=other".into()]).0.is_empty());
    }

    #[test]
    fn plain_ldap_needs_starttls_or_an_explicit_switch() {
        let mut c = cfg();
        c.check().unwrap();
        c.url = "ldap://dir.example.com".into();
        assert!(c.check().unwrap_err().message().contains("in the clear"));
        c.starttls = true;
        c.check().unwrap();
        c.starttls = false;
        c.insecure = true;
        c.check().unwrap();
        c.user_filter = "(uid=alice)".into();
        assert!(c.check().is_err());
    }

    #[test]
    fn the_password_is_never_serialized_or_shown() {
        let mut c = cfg();
        c.bind_password = Some(zeroize::Zeroizing::new("s3cret-bind".into()));
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("s3cret-bind"));
        assert!(!format!("{c:?}").contains("s3cret-bind"));
    }
}
