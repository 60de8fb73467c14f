//! Policy documents: default deny, explicit deny wins, wildcards in actions and resources, conditions on the
//! encryption context, the source address and MFA.
//!
//! Documents are compiled once when stored (patterns split at `*`, CIDRs parsed) and cached; evaluating a
//! request is a few string comparisons. Conditions on the encryption context can only be checked once the
//! body is parsed, so evaluation may return a [`ContextRule`] the handler applies to each context it sees.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::authz::Action;

/// Policy documents are wire types, shared with the client library and the CLI.
pub use keyward_api::{ConditionsDoc, PolicyDoc, StatementDoc};

/// A `*` pattern, split once.
#[derive(Clone, Debug)]
struct Glob(Vec<String>);

impl Glob {
    fn new(p: &str) -> Self {
        Glob(p.split('*').map(str::to_string).collect())
    }

    fn matches(&self, s: &str) -> bool {
        let parts = &self.0;
        match parts.as_slice() {
            [only] => only == s,
            [first, middle @ .., last] => {
                if s.len() < first.len() + last.len()
                    || !s.starts_with(first.as_str())
                    || !s.ends_with(last.as_str())
                {
                    return false;
                }
                let mut rest = &s[first.len()..s.len() - last.len()];
                for m in middle {
                    match rest.find(m.as_str()) {
                        Some(i) => rest = &rest[i + m.len()..],
                        None => return false,
                    }
                }
                true
            }
            [] => false,
        }
    }
}

/// An address block, as policies' `source_cidr` and `proxy_protocol_from` give them.
#[derive(Clone, Debug)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix.parse().ok()?
        };
        (prefix <= max).then_some(Cidr { net, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct Statement {
    allow: bool,
    actions: Vec<Glob>,
    resources: Vec<Glob>,
    context: Option<BTreeMap<String, String>>,
    cidrs: Option<Vec<Cidr>>,
    mfa: Option<bool>,
}

/// A compiled policy.
#[derive(Clone, Debug)]
pub struct Compiled {
    statements: Vec<Statement>,
}

/// Compiles a document, refusing anything that could not match as written.
pub fn compile(doc: &PolicyDoc) -> Result<Compiled, String> {
    if doc.statements.is_empty() || doc.statements.len() > 100 {
        return Err("a policy has 1 to 100 statements".into());
    }
    let mut statements = Vec::with_capacity(doc.statements.len());
    for (i, s) in doc.statements.iter().enumerate() {
        let allow = match s.effect.as_str() {
            "allow" => true,
            "deny" => false,
            _ => return Err(format!("statement {i}: effect is allow or deny")),
        };
        if s.actions.is_empty() || s.resources.is_empty() {
            return Err(format!("statement {i}: actions and resources are required"));
        }
        for a in &s.actions {
            let known = Action::ALL.iter().any(|x| Glob::new(a).matches(x.name()));
            if !(a.starts_with("kms:") || a.starts_with("kv:")) || !known {
                return Err(format!(
                    "statement {i}: action {} matches no kms: or kv: action",
                    crate::quoted(a)
                ));
            }
        }
        let resources = s
            .resources
            .iter()
            .map(|r| canonical_resource(r).map_err(|e| format!("statement {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let c = s.conditions.clone().unwrap_or_default();
        let cidrs = match &c.source_cidr {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|x| {
                        Cidr::parse(x).ok_or_else(|| {
                            format!("statement {i}: {} is not a CIDR", crate::quoted(x))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        statements.push(Statement {
            allow,
            actions: s.actions.iter().map(|a| Glob::new(a)).collect(),
            resources: resources.iter().map(|r| Glob::new(r)).collect(),
            context: c.context_equals,
            cidrs,
            mfa: c.mfa,
        });
    }
    Ok(Compiled { statements })
}

/// The one spelling of a resource that matching knows.
///
/// A key has one id but many spellings (`D179D8A1-...`, 32 hex digits, `{...}`, `urn:uuid:...`), all of which
/// the API accepts when naming a key; requests are matched by the canonical lowercase hyphenated id. A
/// statement naming a key in any other spelling would never match, and a deny that never matches is a
/// fail-open: so every spelling is turned into the canonical one, and what names no key is refused. A
/// pattern (`key/d179*`) can only match canonical ids, so it may hold lowercase hex digits, `-` and `*` only.
/// Alias names are case-sensitive everywhere, so an alias pattern is kept as written once its characters
/// are checked.
pub fn canonical_resource(r: &str) -> Result<String, String> {
    if r == "*" {
        return Ok(r.to_string());
    }
    if let Some(id) = r.strip_prefix("key/") {
        if id.contains('*') {
            let ok = id.len() <= 64
                && id
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-' | b'*'));
            return if ok {
                Ok(r.to_string())
            } else {
                Err(format!(
                    "{} is not a key id pattern (lowercase hex digits, - and * only)",
                    crate::quoted(r)
                ))
            };
        }
        return uuid::Uuid::parse_str(id)
            .map(|u| format!("key/{}", u.hyphenated()))
            .map_err(|_| format!("{} does not name a key by its id (UUID)", crate::quoted(r)));
    }
    if let Some(name) = r.strip_prefix("alias/") {
        let ok = !name.is_empty()
            && name.len() <= 256
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.' | b'*')
            });
        return if ok {
            Ok(r.to_string())
        } else {
            Err(format!(
                "{} is not an alias name or pattern (A-Z a-z 0-9 / _ - . *)",
                crate::quoted(r)
            ))
        };
    }
    if let Some(rest) = r.strip_prefix("kv/") {
        // kv/<mount>/<path>: a mount name, then a path or pattern of printable characters.
        let (mount, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mount_ok = mount == "*"
            || (!mount.is_empty()
                && mount.len() <= 64
                && mount
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*')));
        let path_ok = path.len() <= 512 && !path.chars().any(char::is_control);
        return if mount_ok && path_ok {
            Ok(r.to_string())
        } else {
            Err(format!(
                "{} is not a secret resource (kv/<mount>/<path>, * allowed)",
                crate::quoted(r)
            ))
        };
    }
    Err(format!(
        "resources are key/<id>, alias/<name>, kv/<mount>/<path> or *, not {}",
        crate::quoted(r)
    ))
}

/// The document as it is stored: every resource in its canonical spelling ([`canonical_resource`]), so
/// that what an administrator reads back is what is matched.
pub fn canonical(doc: &PolicyDoc) -> Result<PolicyDoc, String> {
    let mut out = doc.clone();
    for (i, s) in out.statements.iter_mut().enumerate() {
        for r in s.resources.iter_mut() {
            *r = canonical_resource(r).map_err(|e| format!("statement {i}: {e}"))?;
        }
    }
    Ok(out)
}

/// What a request looks like to the policy engine.
pub struct Request<'a> {
    /// The action.
    pub action: Action,
    /// Resource names the request touches (`key/<id>`, `alias/<name>`); empty for key-less actions.
    pub resources: &'a [String],
    /// Client address.
    pub source_ip: Option<IpAddr>,
    /// Whether the token came from an MFA login.
    pub mfa: bool,
}

/// Conditions on the encryption context left to check once the body is parsed.
#[derive(Clone, Debug, Default)]
pub struct ContextRule {
    base_allow: bool,
    allow_if: Vec<BTreeMap<String, String>>,
    deny_if: Vec<BTreeMap<String, String>>,
}

impl ContextRule {
    /// Whether a request with this encryption context is allowed.
    pub fn allows(&self, context: &BTreeMap<String, String>) -> bool {
        let holds =
            |req: &BTreeMap<String, String>| req.iter().all(|(k, v)| context.get(k) == Some(v));
        if self.deny_if.iter().any(holds) {
            return false;
        }
        self.base_allow || self.allow_if.iter().any(holds)
    }
}

/// The decision before the body is read.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Refused.
    Deny,
    /// Allowed whatever the context.
    Allow,
    /// Depends on the encryption context.
    Context(ContextRule),
}

/// Evaluates `policies` (with `role_allows` from the built-in roles) for a request.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Compiled>,
    role_allows: bool,
    req: &Request<'_>,
) -> Decision {
    let mut rule = ContextRule {
        base_allow: role_allows,
        ..ContextRule::default()
    };
    for p in policies {
        for s in &p.statements {
            if !s.actions.iter().any(|g| g.matches(req.action.name())) {
                continue;
            }
            let resource_matches = if req.resources.is_empty() {
                s.resources.iter().any(|g| g.matches("*"))
            } else {
                req.resources
                    .iter()
                    .any(|r| s.resources.iter().any(|g| g.matches(r)))
            };
            if !resource_matches {
                continue;
            }
            if let Some(cidrs) = &s.cidrs {
                if !req
                    .source_ip
                    .is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip)))
                {
                    continue;
                }
            }
            if s.mfa.is_some_and(|m| m != req.mfa) {
                continue;
            }
            match (&s.context, s.allow) {
                (None, false) => return Decision::Deny,
                (None, true) => rule.base_allow = true,
                (Some(c), true) => rule.allow_if.push(c.clone()),
                (Some(c), false) => rule.deny_if.push(c.clone()),
            }
        }
    }
    if rule.allow_if.is_empty() && rule.deny_if.is_empty() {
        if rule.base_allow {
            Decision::Allow
        } else {
            Decision::Deny
        }
    } else if !rule.base_allow && rule.allow_if.is_empty() {
        Decision::Deny
    } else {
        Decision::Context(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: &str) -> Compiled {
        compile(&serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn req<'a>(action: Action, resources: &'a [String], ip: &str, mfa: bool) -> Request<'a> {
        Request {
            action,
            resources,
            source_ip: ip.parse().ok(),
            mfa,
        }
    }

    #[test]
    fn globs_and_cidrs() {
        assert!(Glob::new("alias/app-*").matches("alias/app-payments"));
        assert!(!Glob::new("alias/app-*").matches("alias/other"));
        assert!(Glob::new("kms:*").matches("kms:Encrypt"));
        assert!(Glob::new("kms:Get*Key*").matches("kms:GetPublicKey"));
        assert!(Glob::new("*").matches("anything"));
        let c = Cidr::parse("10.1.0.0/16").unwrap_or_else(|| panic!());
        assert!(c.contains("10.1.200.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!c.contains("10.2.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(Cidr::parse("::1/128").is_some() && Cidr::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn default_deny_explicit_deny_wins_and_conditions_apply() {
        let p = doc(r#"{"statements": [
            {"effect": "allow", "actions": ["kms:Encrypt", "kms:Decrypt"], "resources": ["alias/app-*"]},
            {"effect": "deny", "actions": ["kms:*"], "resources": ["alias/app-secret"]},
            {"effect": "allow", "actions": ["kms:Sign"], "resources": ["*"], "conditions": {"source_cidr": ["10.0.0.0/8"], "mfa": true}},
            {"effect": "allow", "actions": ["kms:GenerateDataKey"], "resources": ["*"], "conditions": {"context_equals": {"tenant": "acme"}}}
        ]}"#);
        let app = vec!["alias/app-1".to_string()];
        let secret = vec!["alias/app-secret".to_string()];
        let other = vec!["alias/other".to_string()];
        assert!(matches!(
            evaluate([&p], false, &req(Action::Encrypt, &app, "127.0.0.1", false)),
            Decision::Allow
        ));
        assert!(matches!(
            evaluate(
                [&p],
                false,
                &req(Action::Encrypt, &other, "127.0.0.1", false)
            ),
            Decision::Deny
        ));
        assert!(
            matches!(
                evaluate(
                    [&p],
                    true,
                    &req(Action::Encrypt, &secret, "127.0.0.1", false)
                ),
                Decision::Deny
            ),
            "deny must beat the role"
        );
        assert!(matches!(
            evaluate([&p], false, &req(Action::Sign, &app, "10.3.4.5", true)),
            Decision::Allow
        ));
        assert!(matches!(
            evaluate([&p], false, &req(Action::Sign, &app, "10.3.4.5", false)),
            Decision::Deny
        ));
        assert!(matches!(
            evaluate([&p], false, &req(Action::Sign, &app, "192.168.1.1", true)),
            Decision::Deny
        ));
        match evaluate(
            [&p],
            false,
            &req(Action::GenerateDataKey, &app, "127.0.0.1", false),
        ) {
            Decision::Context(rule) => {
                let acme = BTreeMap::from([("tenant".to_string(), "acme".to_string())]);
                let evil = BTreeMap::from([("tenant".to_string(), "evil".to_string())]);
                assert!(
                    rule.allows(&acme) && !rule.allows(&evil) && !rule.allows(&BTreeMap::new())
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_spelling_of_a_key_id_is_stored_and_matched_canonically() {
        let id = "d179d8a1-b7df-4001-bbe8-6668fa101363";
        for spelling in [
            "D179D8A1-B7DF-4001-BBE8-6668FA101363",
            "d179d8a1b7df4001bbe86668fa101363",
            "D179D8A1B7DF4001BBE86668FA101363",
            "{d179d8a1-b7df-4001-bbe8-6668fa101363}",
            "urn:uuid:D179D8A1-B7DF-4001-BBE8-6668FA101363",
            id,
        ] {
            let json = format!(
                r#"{{"statements": [{{"effect": "deny", "actions": ["kms:Encrypt"], "resources": ["key/{spelling}"]}}]}}"#
            );
            let d: PolicyDoc = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
            let stored = canonical(&d).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(stored.statements[0].resources, vec![format!("key/{id}")]);
            let resources = vec![format!("key/{id}")];
            // The deny holds against a role that would allow, whichever spelling the document used.
            for p in [
                doc(&json),
                compile(&stored).unwrap_or_else(|e| panic!("{e}")),
            ] {
                assert!(
                    matches!(
                        evaluate(
                            [&p],
                            true,
                            &req(Action::Encrypt, &resources, "127.0.0.1", false)
                        ),
                        Decision::Deny
                    ),
                    "{spelling}"
                );
            }
        }
        for bad in [
            "key/not-a-uuid",
            "key/D179*",
            "key/d179d8a1-b7df-4001-bbe8-6668fa10136",
            "alias/UPPER case",
            "alias/",
            "bucket/x",
        ] {
            assert!(canonical_resource(bad).is_err(), "{bad}");
        }
        assert_eq!(canonical_resource("key/d179*").as_deref(), Ok("key/d179*"));
        assert_eq!(
            canonical_resource("alias/App-*").as_deref(),
            Ok("alias/App-*")
        );
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            r#"{"statements": []}"#,
            r#"{"statements": [{"effect": "maybe", "actions": ["kms:*"], "resources": ["*"]}]}"#,
            r#"{"statements": [{"effect": "allow", "actions": ["kms:Nope"], "resources": ["*"]}]}"#,
            r#"{"statements": [{"effect": "allow", "actions": ["kms:*"], "resources": ["bucket/x"]}]}"#,
            r#"{"statements": [{"effect": "allow", "actions": ["kms:*"], "resources": ["*"], "conditions": {"source_cidr": ["nope"]}}]}"#,
        ] {
            let doc: PolicyDoc = serde_json::from_str(bad).unwrap_or_else(|e| panic!("{e}"));
            assert!(compile(&doc).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<PolicyDoc>(r#"{"statements": [], "extra": 1}"#).is_err());
    }

    /// Secrets are resources of their own: `kv:` actions on `kv/<mount>/<path>`, which `kms:*` never
    /// reaches and which match across slashes.
    #[test]
    fn secret_resources_and_actions() {
        for bad in [
            r#"{"statements": [{"effect": "allow", "actions": ["kv:Read"], "resources": ["kv/bad mount/x"]}]}"#,
            r#"{"statements": [{"effect": "allow", "actions": ["kv:Nope"], "resources": ["kv/m/*"]}]}"#,
            r#"{"statements": [{"effect": "allow", "actions": ["Read"], "resources": ["kv/m/*"]}]}"#,
        ] {
            let doc: PolicyDoc = serde_json::from_str(bad).unwrap_or_else(|e| panic!("{e}"));
            assert!(compile(&doc).is_err(), "{bad}");
        }
        let doc: PolicyDoc = serde_json::from_str(
            r#"{"statements": [
                {"effect": "allow", "actions": ["kv:Read"], "resources": ["kv/mariadb/*"]},
                {"effect": "allow", "actions": ["kms:*"], "resources": ["*"]}]}"#,
        )
        .unwrap();
        let p = compile(&doc).unwrap();
        let ask = |action, r: &str| {
            let resources = vec![r.to_string()];
            let req = Request {
                action,
                resources: &resources,
                source_ip: None,
                mfa: false,
            };
            matches!(evaluate([&p], false, &req), Decision::Allow)
        };
        assert!(ask(Action::KvRead, "kv/mariadb/keys/1"));
        assert!(!ask(Action::KvWrite, "kv/mariadb/keys/1"));
        assert!(!ask(Action::KvRead, "kv/other/1"));
    }
}
