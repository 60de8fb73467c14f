//! Sign-in with a JSON Web Token from a trusted issuer: an OIDC provider's ID token, a Kubernetes service
//! account token, a CI job's OIDC token.
//!
//! The platform already says who a person or a service is; a second set of Keyward credentials for each would
//! be one nobody de-provisions. An issuer is trusted by name, with its signing keys (fetched by the caller of
//! this module, which knows the network; given here as a JWKS or PEM document), the audiences it must name,
//! and the algorithms it may use. Rules map a verified token's claims to an identity and its grants.
//!
//! What is refused, and why it matters:
//! - `none` and every HMAC algorithm, at configuration and at sign-in: with a public key for an HMAC secret,
//!   anyone holding the public key could forge tokens (algorithm confusion).
//! - A key whose type or declared `alg` does not fit the token's `alg`, and a key declared for encryption.
//! - `crit` headers (no extension is understood, so none may be relied upon).
//! - A wrong issuer, an audience not configured, a token past `exp`, before `nbf` or issued in the future
//!   (each with the configured clock skew), a token without `exp`.
//!
//! Verification is aws-lc-rs's; this module only reads the JOSE framing around it.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use keyward_core::{quoted, ErrorCode, KmsError, KmsResult};
use keyward_store::{transact, Store, Tx};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The store namespace of trusted issuers (by name).
pub const ISSUERS: &str = "jwt_issuer";

/// The algorithms an issuer may be allowed: asymmetric signatures only.
pub const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Tokens longer than this are refused before any decoding (a JWT is a few kilobytes at most).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A trusted issuer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry, exactly (an `https` URL for OIDC providers).
    pub issuer: String,
    /// Where its JWKS is; when neither this nor `jwks` is set, the issuer's discovery document
    /// (`<issuer>/.well-known/openid-configuration`) names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Signing keys given outright, for sites that cannot reach the issuer: a JWKS object, or PEM public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// A file holding those keys (JWKS or PEM), read when the configuration file is: for the configuration
    /// file only, which reads it into `jwks`.
    #[serde(default, skip_serializing)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// The audiences accepted: a token must name at least one.
    pub audiences: Vec<String>,
    /// The algorithms accepted (all of [`ALGORITHMS`] when empty).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Tolerated clock difference, in seconds (default 60, at most 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<i64>,
    /// The longest life of a token issued by a sign-in with this issuer (default and maximum: 24 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_seconds: Option<i64>,
    /// How claims map to identities, tried in order.
    pub rules: Vec<Rule>,
    /// Sign-in to the console through this issuer, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcClient>,
}

/// The console as an OpenID Connect client of an issuer: a public client using the authorization-code flow
/// with PKCE (no client secret to keep), whose ID tokens are then signed in like any JWT of the issuer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcClient {
    /// The client id registered at the issuer (also the ID token's audience, so one of `audiences`).
    pub client_id: String,
    /// The scopes asked for (`openid` always among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// What the sign-in button says (`Sign in with <display_name>`; the issuer's name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl OidcClient {
    /// The scopes to ask for, `openid` first.
    pub fn scopes(&self) -> Vec<String> {
        let mut out = vec!["openid".to_string()];
        if self.scopes.is_empty() {
            out.extend(["profile".to_string(), "email".to_string()]);
        }
        out.extend(self.scopes.iter().filter(|s| *s != "openid").cloned());
        out
    }
}

/// How a verified token's claims become an identity with grants.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The rule's name, which a sign-in may ask for.
    pub name: String,
    /// The claim that names the identity (default `sub`). A `/` path reaches into nested claims when no
    /// top-level claim has that exact name.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Claims that must hold these values (a string, or a list of which one must match) for the rule to apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bound_claims: BTreeMap<String, Value>,
    /// `service` or `user`: the kind of identity created on first sign-in.
    pub kind: String,
    /// Whether a first sign-in creates the identity (otherwise it must exist, bound to this issuer).
    #[serde(default)]
    pub create_identity: bool,
    /// Roles every token issued under the rule holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Policies every token issued under the rule holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The claim listing the caller's groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_claim: Option<String>,
    /// Roles held by members of each group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_roles: BTreeMap<String, Vec<String>>,
    /// Policies held by members of each group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_policies: BTreeMap<String, Vec<String>>,
    /// The longest life of a token issued under the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_seconds: Option<i64>,
}

fn default_name_claim() -> String {
    "sub".into()
}

/// Longest token life a federated sign-in can give (and the default).
pub const MAX_TTL: i64 = 24 * 3600;

fn invalid(msg: impl Into<String>) -> KmsError {
    KmsError::new(ErrorCode::ValidationError, msg)
}

/// A refusal of a token: 401, with what was wrong (never the token).
pub fn refused(msg: impl Into<String>) -> KmsError {
    KmsError::new(ErrorCode::Unauthenticated, msg)
}

fn corrupt() -> KmsError {
    KmsError::new(ErrorCode::Unavailable, "store corrupt: jwt issuer")
}

/// Whether `url` may be fetched: `https`, or `http` to this machine only (a test issuer, a sidecar).
pub fn fetchable(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("https://") {
        return !rest.is_empty();
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl IssuerConfig {
    /// The algorithms this issuer may use.
    pub fn allowed(&self) -> Vec<&str> {
        if self.algorithms.is_empty() {
            ALGORITHMS.to_vec()
        } else {
            self.algorithms.iter().map(String::as_str).collect()
        }
    }

    /// The clock skew tolerated, in seconds.
    pub fn skew(&self) -> i64 {
        self.clock_skew_seconds.unwrap_or(60)
    }

    /// Where the keys come from, when fetched: the JWKS URL, or the discovery document's.
    pub fn key_source(&self) -> Option<String> {
        if self.jwks.is_some() {
            return None;
        }
        Some(match &self.jwks_url {
            Some(u) => u.clone(),
            None => format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ),
        })
    }

    /// Checks everything that does not need the store: URLs, audiences, algorithms, skew, rules, claims.
    pub fn check(&self) -> KmsResult<()> {
        if self.issuer.is_empty() || self.issuer.len() > 1024 {
            return Err(invalid("issuer is 1 to 1024 characters"));
        }
        if self.jwks_file.is_some() {
            return Err(invalid(
                "jwks_file is read from the configuration file only; give the keys themselves in jwks",
            ));
        }
        if self.jwks.is_none() && !fetchable(self.jwks_url.as_deref().unwrap_or(&self.issuer)) {
            return Err(invalid(
                "the keys are fetched over https (http only to 127.0.0.1 or localhost): give an https issuer or jwks_url, or the keys in jwks",
            ));
        }
        if self.jwks.is_some() && self.jwks_url.is_some() {
            return Err(invalid("give jwks_url or jwks, not both"));
        }
        if let Some(jwks) = &self.jwks {
            let keys = KeySet::parse_static(jwks)?;
            if keys.keys.is_empty() {
                return Err(invalid("jwks holds no usable signing key"));
            }
        }
        if self.audiences.is_empty()
            || self.audiences.len() > 32
            || self.audiences.iter().any(|a| a.is_empty() || a.len() > 512)
        {
            return Err(invalid(
                "audiences: 1 to 32 values, each 1 to 512 characters (a token must name one)",
            ));
        }
        for a in &self.algorithms {
            if !ALGORITHMS.contains(&a.as_str()) {
                return Err(invalid(format!(
                    "algorithm {} is not accepted; one of {} (never none or HMAC)",
                    quoted(a),
                    ALGORITHMS.join(", ")
                )));
            }
        }
        if !(0..=300).contains(&self.skew()) {
            return Err(invalid("clock_skew_seconds is 0 to 300"));
        }
        if self
            .max_ttl_seconds
            .is_some_and(|t| !(60..=MAX_TTL).contains(&t))
        {
            return Err(invalid("max_ttl_seconds is 60 to 86400"));
        }
        if let Some(o) = &self.oidc {
            if o.client_id.is_empty() || o.client_id.len() > 256 {
                return Err(invalid("oidc.client_id is 1 to 256 characters"));
            }
            if !self.audiences.contains(&o.client_id) {
                return Err(invalid(
                    "oidc.client_id must be one of audiences: the issuer's ID tokens name the client as their audience",
                ));
            }
            if o.scopes.len() > 16
                || o.scopes.iter().any(|s| {
                    s.is_empty()
                        || s.len() > 64
                        || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
                })
            {
                return Err(invalid("oidc.scopes: at most 16 scope names"));
            }
            if o.display_name
                .as_ref()
                .is_some_and(|d| d.is_empty() || d.len() > 64)
            {
                return Err(invalid("oidc.display_name is 1 to 64 characters"));
            }
        }
        if self.rules.is_empty() || self.rules.len() > 64 {
            return Err(invalid("rules: 1 to 64"));
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.rules {
            if r.name.is_empty()
                || r.name.len() > 64
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(invalid(
                    "a rule's name is 1 to 64 characters of A-Z a-z 0-9 - _ .",
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(invalid(format!("rule {} is named twice", r.name)));
            }
            if !matches!(r.kind.as_str(), "service" | "user") {
                return Err(invalid(format!("rule {}: kind is service or user", r.name)));
            }
            if r.name_claim.is_empty() || r.name_claim.len() > 256 {
                return Err(invalid(format!(
                    "rule {}: name_claim is 1 to 256 characters",
                    r.name
                )));
            }
            for (claim, v) in &r.bound_claims {
                let ok = match v {
                    Value::String(_) | Value::Bool(_) | Value::Number(_) => true,
                    Value::Array(items) => !items.is_empty() && items.iter().all(|i| i.is_string()),
                    _ => false,
                };
                if !ok || claim.is_empty() {
                    return Err(invalid(format!(
                        "rule {}: bound claim {} takes a string, number, boolean or a list of strings",
                        r.name,
                        quoted(claim)
                    )));
                }
            }
            if r.max_ttl_seconds
                .is_some_and(|t| !(60..=MAX_TTL).contains(&t))
            {
                return Err(invalid(format!(
                    "rule {}: max_ttl_seconds is 60 to 86400",
                    r.name
                )));
            }
            if r.group_claim.is_none()
                && (!r.group_roles.is_empty() || !r.group_policies.is_empty())
            {
                return Err(invalid(format!(
                    "rule {}: group_roles and group_policies need a group_claim",
                    r.name
                )));
            }
        }
        Ok(())
    }

    /// Reads `jwks_file` into `jwks` (a JWKS document, or PEM text).
    pub fn read_jwks_file(&mut self) -> Result<(), String> {
        let Some(path) = self.jwks_file.take() else {
            return Ok(());
        };
        if self.jwks.is_some() {
            return Err("give jwks or jwks_file, not both".into());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
        self.jwks = Some(match serde_json::from_str::<Value>(&text) {
            Ok(doc @ Value::Object(_)) => doc,
            _ => Value::String(text),
        });
        Ok(())
    }

    /// Every role and policy a rule can grant, for the check that they exist.
    fn grants(&self) -> (Vec<String>, Vec<String>) {
        let mut roles = Vec::new();
        let mut policies = Vec::new();
        for r in &self.rules {
            roles.extend(r.roles.iter().cloned());
            roles.extend(r.group_roles.values().flatten().cloned());
            policies.extend(r.policies.iter().cloned());
            policies.extend(r.group_policies.values().flatten().cloned());
        }
        roles.sort();
        roles.dedup();
        policies.sort();
        policies.dedup();
        (roles, policies)
    }
}

/// Checks that the roles named are built-in and the policies exist (each list may be long here: many
/// groups, many rules).
pub fn check_named_grants(tx: &mut dyn Tx, roles: &[String], policies: &[String]) -> KmsResult<()> {
    if let Some(r) = roles
        .iter()
        .find(|r| crate::authz::Role::parse(r).is_none())
    {
        return Err(invalid(format!(
            "unknown role {}; one of: admin, key-admin, key-user, auditor",
            quoted(r)
        )));
    }
    if let Some(missing) = crate::policies::Policies::missing_in(tx, policies)? {
        return Err(invalid(format!(
            "policy {} does not exist; create it first (PUT /v1/policies/NAME)",
            quoted(&missing)
        )));
    }
    Ok(())
}

/// An issuer name: 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
pub fn check_name(name: &str) -> KmsResult<()> {
    if name.is_empty()
        || name.len() > 64
        || name == "."
        || name == ".."
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "issuer names are 1 to 64 characters of A-Z a-z 0-9 - _ . (not . or ..)",
        ));
    }
    Ok(())
}

/// Trusted issuers kept in the store (those of the configuration file are held by the server beside them).
pub struct Issuers {
    store: Arc<dyn Store>,
    /// Key sets fetched, by issuer name, with where they came from.
    keys: Mutex<BTreeMap<String, Fetched>>,
}

/// A key set fetched from an issuer, and when.
#[derive(Clone)]
pub struct Fetched {
    /// The URL the set was fetched from (a changed configuration fetches again).
    pub source: String,
    /// The keys.
    pub keys: Arc<KeySet>,
    /// Unix seconds of the last fetch attempt, successful or not (fetches are rate-limited).
    pub attempted_at: i64,
}

/// Seconds between two fetches of one issuer's keys for an unknown `kid`: a flood of tokens with made-up
/// key ids cannot make Keyward flood the issuer.
pub const REFETCH_INTERVAL: i64 = 30;

/// Seconds after which a fetched key set is fetched again before use (keys retired by the issuer go).
pub const KEYS_MAX_AGE: i64 = 3600;

impl Issuers {
    /// Issuers kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Issuers {
            store,
            keys: Mutex::new(BTreeMap::new()),
        }
    }

    /// One issuer, if configured through the API.
    pub fn get(&self, name: &str) -> KmsResult<Option<IssuerConfig>> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(ISSUERS, name)
        })?
        .map(|raw| serde_json::from_slice(&raw).map_err(|_| corrupt()))
        .transpose()
    }

    /// Every issuer configured through the API, by name.
    pub fn all(&self) -> KmsResult<Vec<(String, IssuerConfig)>> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.list_meta(ISSUERS))?
            .into_iter()
            .map(|(n, raw)| Ok((n, serde_json::from_slice(&raw).map_err(|_| corrupt())?)))
            .collect()
    }

    /// Stores an issuer, once checked (its roles built-in, its policies existing); true if it replaced one.
    pub fn put(&self, name: &str, cfg: &IssuerConfig) -> KmsResult<bool> {
        check_name(name)?;
        cfg.check()?;
        let (roles, policies) = cfg.grants();
        let json = serde_json::to_vec(cfg)
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "issuer encoding"))?;
        let replaced = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            check_named_grants(tx, &roles, &policies)?;
            let existed = tx.get_meta(ISSUERS, name)?.is_some();
            tx.put_meta(ISSUERS, name, &json)?;
            Ok::<_, KmsError>(existed)
        })?;
        self.keys.lock().remove(name);
        Ok(replaced)
    }

    /// Removes an issuer; false if there was none. Tokens it signed in stay valid until they expire or are
    /// revoked (they are Keyward tokens, listed under their identities).
    pub fn delete(&self, name: &str) -> KmsResult<bool> {
        let existed = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let existed = tx.get_meta(ISSUERS, name)?.is_some();
            tx.delete_meta(ISSUERS, name)?;
            Ok::<_, KmsError>(existed)
        })?;
        self.keys.lock().remove(name);
        Ok(existed)
    }

    /// The fetched keys of an issuer, if any were fetched from `source`.
    pub fn fetched(&self, name: &str, source: &str) -> Option<Fetched> {
        self.keys
            .lock()
            .get(name)
            .filter(|f| f.source == source)
            .cloned()
    }

    /// Whether a fetch may start now (none in the last [`REFETCH_INTERVAL`]); if so, the attempt is noted.
    pub fn may_fetch(&self, name: &str, source: &str, now: i64) -> bool {
        let mut keys = self.keys.lock();
        match keys.get_mut(name) {
            Some(f) if f.source == source => {
                if now - f.attempted_at < REFETCH_INTERVAL {
                    return false;
                }
                f.attempted_at = now;
                true
            }
            _ => {
                keys.insert(
                    name.to_string(),
                    Fetched {
                        source: source.to_string(),
                        keys: Arc::new(KeySet::default()),
                        attempted_at: now,
                    },
                );
                true
            }
        }
    }

    /// Keeps a freshly fetched key set. A failed fetch changes nothing: the keys held stay valid.
    pub fn keep(&self, name: &str, source: &str, keys: KeySet, now: i64) {
        self.keys.lock().insert(
            name.to_string(),
            Fetched {
                source: source.to_string(),
                keys: Arc::new(keys.fetched_at(now)),
                attempted_at: now,
            },
        );
    }
}

/// A public key, as the issuer published it.
#[derive(Clone)]
enum Material {
    /// An RSA public key (PKCS#1 DER, from the JWK's modulus and exponent).
    Rsa(Vec<u8>),
    /// An EC point (uncompressed, SEC1) on the named curve.
    Ec { curve: &'static str, point: Vec<u8> },
    /// An Ed25519 public key.
    Ed25519(Vec<u8>),
    /// A PEM public key (SubjectPublicKeyInfo), of a type found when verifying.
    Spki(Vec<u8>),
}

/// One signing key of an issuer.
#[derive(Clone)]
pub struct Jwk {
    kid: Option<String>,
    /// The `alg` the issuer declared for this key, if any: the token's must then be the same.
    alg: Option<String>,
    material: Material,
}

/// An issuer's signing keys.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
    /// Unix seconds when fetched (static sets: 0, and never stale).
    fetched_at: Option<i64>,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

fn field<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys of kinds not used for signatures, or not
    /// understood, are skipped, as RFC 7517 asks: an issuer may publish encryption keys beside its signing
    /// keys.
    pub fn parse_jwks(doc: &Value) -> KmsResult<KeySet> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("a JWKS is an object with a keys array"))?;
        let mut out = Vec::new();
        for k in keys {
            let Some(o) = k.as_object() else { continue };
            if field(o, "use").is_some_and(|u| u != "sig") {
                continue;
            }
            if let Some(ops) = o.get("key_ops").and_then(Value::as_array) {
                if !ops.iter().any(|op| op.as_str() == Some("verify")) {
                    continue;
                }
            }
            let material = match field(o, "kty") {
                Some("RSA") => match (field(o, "n").and_then(b64), field(o, "e").and_then(b64)) {
                    (Some(n), Some(e)) if n.len() <= 1024 && e.len() <= 8 => {
                        Material::Rsa(rsa_public_key_der(&n, &e))
                    }
                    _ => continue,
                },
                Some("EC") => {
                    let (curve, size) = match field(o, "crv") {
                        Some("P-256") => ("P-256", 32),
                        Some("P-384") => ("P-384", 48),
                        _ => continue,
                    };
                    match (field(o, "x").and_then(b64), field(o, "y").and_then(b64)) {
                        (Some(x), Some(y)) if x.len() == size && y.len() == size => {
                            let mut point = Vec::with_capacity(1 + 2 * size);
                            point.push(4);
                            point.extend_from_slice(&x);
                            point.extend_from_slice(&y);
                            Material::Ec { curve, point }
                        }
                        _ => continue,
                    }
                }
                Some("OKP") if field(o, "crv") == Some("Ed25519") => {
                    match field(o, "x").and_then(b64) {
                        Some(x) if x.len() == 32 => Material::Ed25519(x),
                        _ => continue,
                    }
                }
                _ => continue,
            };
            out.push(Jwk {
                kid: field(o, "kid").map(str::to_string),
                alg: field(o, "alg").map(str::to_string),
                material,
            });
        }
        Ok(KeySet {
            keys: out,
            fetched_at: None,
        })
    }

    /// Parses keys given in the configuration: a JWKS object, or a string of PEM public keys.
    pub fn parse_static(v: &Value) -> KmsResult<KeySet> {
        match v {
            Value::Object(_) => Self::parse_jwks(v),
            Value::String(pem) => {
                let mut keys = Vec::new();
                for der in pem_blocks(pem, "PUBLIC KEY")? {
                    keys.push(Jwk {
                        kid: None,
                        alg: None,
                        material: Material::Spki(der),
                    });
                }
                Ok(KeySet {
                    keys,
                    fetched_at: None,
                })
            }
            _ => Err(invalid(
                "jwks is a JWKS object or a string of PEM public keys",
            )),
        }
    }

    fn fetched_at(mut self, now: i64) -> KeySet {
        self.fetched_at = Some(now);
        self
    }

    /// Whether a fetched set is old enough to be fetched again before use.
    pub fn stale(&self, now: i64) -> bool {
        self.fetched_at.is_some_and(|t| now - t > KEYS_MAX_AGE)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The DER bodies of the PEM blocks labelled `label`.
fn pem_blocks(text: &str, label: &str) -> KmsResult<Vec<Vec<u8>>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let stop = after
            .find(&end)
            .ok_or_else(|| invalid(format!("a PEM block lacks its {end} line")))?;
        let body: String = after[..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| invalid("a PEM block is not base64"))?,
        );
        rest = &after[stop + end.len()..];
    }
    Ok(out)
}

/// The aws-lc-rs verification algorithm of a JOSE `alg`, with the key material it needs.
fn verifier(alg: &str, m: &Material) -> Option<&'static dyn VerificationAlgorithm> {
    use signature as s;
    let rsa = matches!(m, Material::Rsa(_) | Material::Spki(_));
    let ec = |c: &str| {
        matches!(m, Material::Ec { curve, .. } if *curve == c) || matches!(m, Material::Spki(_))
    };
    Some(match alg {
        "RS256" if rsa => &s::RSA_PKCS1_2048_8192_SHA256,
        "RS384" if rsa => &s::RSA_PKCS1_2048_8192_SHA384,
        "RS512" if rsa => &s::RSA_PKCS1_2048_8192_SHA512,
        "PS256" if rsa => &s::RSA_PSS_2048_8192_SHA256,
        "PS384" if rsa => &s::RSA_PSS_2048_8192_SHA384,
        "PS512" if rsa => &s::RSA_PSS_2048_8192_SHA512,
        "ES256" if ec("P-256") => &s::ECDSA_P256_SHA256_FIXED,
        "ES384" if ec("P-384") => &s::ECDSA_P384_SHA384_FIXED,
        "EdDSA" if matches!(m, Material::Ed25519(_) | Material::Spki(_)) => &s::ED25519,
        _ => return None,
    })
}

fn verify_with(
    alg: &'static dyn VerificationAlgorithm,
    m: &Material,
    msg: &[u8],
    sig: &[u8],
) -> bool {
    match m {
        Material::Rsa(b)
        | Material::Ec { point: b, .. }
        | Material::Ed25519(b)
        | Material::Spki(b) => UnparsedPublicKey::new(alg, b).verify(msg, sig).is_ok(),
    }
}

/// DER of an unsigned big-endian INTEGER's contents (no leading zeros but one before a high bit).
fn der_uint(out: &mut Vec<u8>, v: &[u8]) {
    let v = &v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..];
    let pad = v.first().is_none_or(|b| b & 0x80 != 0);
    out.push(0x02);
    der_len(out, v.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

fn der_len(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The PKCS#1 `RSAPublicKey` of a JWK's modulus and exponent, as aws-lc-rs reads RSA public keys.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    der_uint(&mut body, n);
    der_uint(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(0x30);
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// The parts of a token read before its signature is checked.
pub struct Unverified<'a> {
    /// The header's `alg`.
    pub alg: String,
    /// The header's `kid`.
    pub kid: Option<String>,
    signed: &'a [u8],
    signature: Vec<u8>,
    payload: Vec<u8>,
}

/// Splits a compact JWS and reads its header; nothing here is trusted yet.
pub fn split(token: &str) -> KmsResult<Unverified<'_>> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(refused("the JWT is longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused(
            "not a JWT: a signed JWT has three base64url parts separated by dots",
        ));
    };
    let not_b64 = || refused("not a JWT: a part is not base64url");
    let header: Value = serde_json::from_slice(&b64(h).ok_or_else(not_b64)?)
        .map_err(|_| refused("not a JWT: the header is not JSON"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("the JWT's header has no alg"))?
        .to_string();
    if header.get("crit").is_some() {
        return Err(refused(
            "the JWT's header has critical extensions (crit), which Keyward does not understand",
        ));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Unverified {
        alg,
        kid,
        signed: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature: b64(s).ok_or_else(not_b64)?,
        payload: b64(p).ok_or_else(not_b64)?,
    })
}

/// What checking a token's signature found.
pub enum Checked {
    /// Signed by one of the keys; the claims, not yet checked.
    Signed(serde_json::Map<String, Value>),
    /// The token names a key id the set does not hold: the issuer may have rotated its keys.
    UnknownKey,
}

impl Unverified<'_> {
    /// Checks the algorithm against the issuer's list and the signature against its keys.
    pub fn check_signature(&self, cfg: &IssuerConfig, keys: &KeySet) -> KmsResult<Checked> {
        let alg = self.alg.as_str();
        if alg.eq_ignore_ascii_case("none") || alg.starts_with("HS") {
            return Err(refused(format!(
                "the JWT's algorithm {} is never accepted (only asymmetric signatures are)",
                quoted(alg)
            )));
        }
        if !cfg.allowed().contains(&alg) {
            return Err(refused(format!(
                "the JWT's algorithm {} is not one this issuer may use",
                quoted(alg)
            )));
        }
        let candidates: Vec<&Jwk> = keys
            .keys
            .iter()
            .filter(|k| match (&self.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .collect();
        if candidates.is_empty() {
            return Ok(Checked::UnknownKey);
        }
        let mut fitting = 0;
        for k in candidates {
            if k.alg.as_deref().is_some_and(|a| a != alg) {
                continue;
            }
            let Some(v) = verifier(alg, &k.material) else {
                continue;
            };
            fitting += 1;
            if verify_with(v, &k.material, self.signed, &self.signature) {
                let claims: Value = serde_json::from_slice(&self.payload)
                    .map_err(|_| refused("the JWT's payload is not JSON"))?;
                return match claims {
                    Value::Object(m) => Ok(Checked::Signed(m)),
                    _ => Err(refused("the JWT's payload is not a JSON object")),
                };
            }
        }
        if fitting == 0 {
            return Err(refused(format!(
                "no key of the issuer fits algorithm {} (key type or declared alg differs)",
                quoted(alg)
            )));
        }
        Err(refused("the JWT's signature does not verify"))
    }
}

fn number(claims: &serde_json::Map<String, Value>, k: &str) -> KmsResult<Option<i64>> {
    match claims.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as i64))
            .ok_or_else(|| refused(format!("the JWT's {k} is not a number"))),
    }
}

/// Checks the registered claims of a signed token: issuer, audience and times. Returns `exp`.
pub fn check_claims(
    cfg: &IssuerConfig,
    claims: &serde_json::Map<String, Value>,
    now: i64,
) -> KmsResult<i64> {
    if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
        return Err(refused("the JWT's issuer (iss) is not this issuer's"));
    }
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !auds.iter().any(|a| cfg.audiences.iter().any(|c| c == a)) {
        return Err(refused(
            "the JWT's audience (aud) is not one this issuer is trusted for",
        ));
    }
    let skew = cfg.skew();
    let exp = number(claims, "exp")?.ok_or_else(|| refused("the JWT has no expiry (exp)"))?;
    if now >= exp.saturating_add(skew) {
        return Err(refused("the JWT has expired"));
    }
    if number(claims, "nbf")?.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        return Err(refused("the JWT is not valid yet (nbf)"));
    }
    if number(claims, "iat")?.is_some_and(|iat| now.saturating_add(skew) < iat) {
        return Err(refused("the JWT was issued in the future (iat)"));
    }
    Ok(exp)
}

/// A claim by name, or, when no top-level claim has that name, by a `/` path into nested objects.
pub fn claim<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.trim_start_matches('/').split('/');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn bound_holds(v: Option<&Value>, want: &Value) -> bool {
    let Some(v) = v else { return false };
    let one = |w: &Value| match (v, w) {
        (Value::Array(items), w) => items.contains(w),
        (v, w) => v == w,
    };
    match want {
        Value::Array(options) => options.iter().any(one),
        w => one(w),
    }
}

/// What a sign-in grants: the identity, its kind, the grants the token carries, and how long it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The identity's name.
    pub identity: String,
    /// `service` or `user` (for creation).
    pub kind: String,
    /// Whether the identity may be created on this sign-in.
    pub create: bool,
    /// Roles from the rule and groups.
    pub roles: Vec<String>,
    /// Policies from the rule and groups.
    pub policies: Vec<String>,
    /// The name of the rule that matched.
    pub rule: String,
    /// The token's life, in seconds.
    pub ttl: i64,
}

/// Maps verified claims through the issuer's rules (the one asked for, else the first whose bound claims
/// hold) to a grant.
pub fn map_claims(
    cfg: &IssuerConfig,
    claims: &serde_json::Map<String, Value>,
    wanted: Option<&str>,
    exp: i64,
    now: i64,
) -> KmsResult<Grant> {
    let holds = |r: &Rule| {
        r.bound_claims
            .iter()
            .all(|(c, want)| bound_holds(claim(claims, c), want))
    };
    let rule = match wanted {
        Some(w) => {
            let r = cfg
                .rules
                .iter()
                .find(|r| r.name == w)
                .ok_or_else(|| refused(format!("this issuer has no rule {}", quoted(w))))?;
            if !holds(r) {
                return Err(KmsError::new(
                    ErrorCode::AccessDenied,
                    format!(
                        "the JWT's claims do not meet the bound claims of rule {}",
                        r.name
                    ),
                ));
            }
            r
        }
        None => cfg.rules.iter().find(|r| holds(r)).ok_or_else(|| {
            KmsError::new(
                ErrorCode::AccessDenied,
                "the JWT's claims meet the bound claims of no rule of this issuer",
            )
        })?,
    };
    let identity = match claim(claims, &rule.name_claim) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(refused(format!(
                "the JWT has no {} claim to name the identity",
                quoted(&rule.name_claim)
            )))
        }
    };
    if crate::names::check_identity(&identity).is_err() {
        return Err(refused(format!(
            "the JWT's {} claim ({}) is not a valid identity name (1 to 64 of A-Z a-z 0-9 . _ - @, not reserved); choose another name_claim",
            quoted(&rule.name_claim),
            quoted(&identity)
        )));
    }
    let mut roles = rule.roles.clone();
    let mut policies = rule.policies.clone();
    if let Some(gc) = &rule.group_claim {
        let groups: Vec<&str> = match claim(claims, gc) {
            Some(Value::String(g)) => vec![g.as_str()],
            Some(Value::Array(gs)) => gs.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for g in groups {
            if let Some(r) = rule.group_roles.get(g) {
                roles.extend(r.iter().cloned());
            }
            if let Some(p) = rule.group_policies.get(g) {
                policies.extend(p.iter().cloned());
            }
        }
    }
    roles.sort();
    roles.dedup();
    policies.sort();
    policies.dedup();
    let ttl = [
        Some(exp - now),
        rule.max_ttl_seconds,
        cfg.max_ttl_seconds,
        Some(MAX_TTL),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(MAX_TTL);
    if ttl <= 0 {
        return Err(refused("the JWT has expired"));
    }
    Ok(Grant {
        identity,
        kind: rule.kind.clone(),
        create: rule.create_identity,
        roles,
        policies,
        rule: rule.name.clone(),
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> IssuerConfig {
        serde_json::from_value(json!({
            "issuer": "https://id.example.com",
            "audiences": ["keyward"],
            "rules": [
                {"name": "payments", "kind": "service", "name_claim": "kubernetes.io/serviceaccount/service-account.name",
                 "bound_claims": {"kubernetes.io/serviceaccount/namespace": "payments"}, "roles": ["key-user"]},
                {"name": "people", "kind": "user", "create_identity": true, "group_claim": "groups",
                 "group_roles": {"kms-admins": ["key-admin"], "auditors": ["auditor"]}, "max_ttl_seconds": 3600}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn rules_pick_by_bound_claims_and_map_groups() {
        let c = cfg();
        c.check().unwrap();
        let sa = json!({"kubernetes.io/serviceaccount/namespace": "payments",
                        "kubernetes.io/serviceaccount/service-account.name": "app"});
        let g = map_claims(&c, sa.as_object().unwrap(), None, 1000, 100).unwrap();
        assert_eq!((g.identity.as_str(), g.rule.as_str()), ("app", "payments"));
        assert_eq!(g.roles, ["key-user"]);
        assert_eq!(g.ttl, 900);
        let other_ns = json!({"kubernetes.io/serviceaccount/namespace": "web",
                              "kubernetes.io/serviceaccount/service-account.name": "app", "sub": "x"});
        let e = map_claims(
            &c,
            other_ns.as_object().unwrap(),
            Some("payments"),
            1000,
            100,
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::AccessDenied);
        // Falls through to the next rule, whose groups map to roles, capped by its max TTL.
        let person = json!({"sub": "alice", "groups": ["auditors", "kms-admins", "other"]});
        let g = map_claims(&c, person.as_object().unwrap(), None, 100_000, 100).unwrap();
        assert_eq!(g.identity, "alice");
        assert_eq!(g.roles, ["auditor", "key-admin"]);
        assert_eq!(g.ttl, 3600);
        assert!(g.create);
        // A reserved or malformed name is refused, whatever the issuer says.
        for bad in ["root", "a:b", ""] {
            let c2 = json!({"sub": bad});
            assert!(map_claims(&c, c2.as_object().unwrap(), Some("people"), 1000, 100).is_err());
        }
    }

    #[test]
    fn nested_claims_are_reached_by_path() {
        let c =
            json!({"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "app"}}});
        let m = c.as_object().unwrap();
        assert_eq!(
            claim(m, "kubernetes.io/serviceaccount/name"),
            Some(&json!("app"))
        );
        assert_eq!(
            claim(m, "/kubernetes.io/namespace"),
            Some(&json!("payments"))
        );
        assert_eq!(claim(m, "kubernetes.io/nothing"), None);
    }

    #[test]
    fn configuration_refuses_what_would_weaken_checks() {
        let mut c = cfg();
        c.algorithms = vec!["HS256".into()];
        assert!(c.check().is_err());
        c.algorithms = vec!["none".into()];
        assert!(c.check().is_err());
        let mut c = cfg();
        c.issuer = "http://id.example.com".into();
        assert!(c.check().is_err(), "plain http to another host");
        c.issuer = "http://127.0.0.1:8080".into();
        c.check().unwrap();
        let mut c = cfg();
        c.audiences.clear();
        assert!(c.check().is_err());
        let mut c = cfg();
        c.rules[0].kind = "robot".into();
        assert!(c.check().is_err());
        assert!(fetchable("https://accounts.example.com"));
        assert!(!fetchable("http://127.0.0.1.evil.com/"));
        assert!(!fetchable("http://localhost@evil.com/"));
        assert!(!fetchable("file:///etc/passwd"));
    }

    fn ed25519_token(claims: &Value, kid: &str) -> (String, Value) {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pair = Ed25519KeyPair::generate().unwrap();
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = e.encode(serde_json::to_vec(&json!({"alg": "EdDSA", "kid": kid})).unwrap());
        let payload = e.encode(serde_json::to_vec(claims).unwrap());
        let signed = format!("{header}.{payload}");
        let sig = e.encode(pair.sign(signed.as_bytes()).as_ref());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid,
                                    "x": e.encode(pair.public_key().as_ref())}]});
        (format!("{signed}.{sig}"), jwks)
    }

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let c = cfg();
        let claims = json!({"iss": "https://id.example.com", "aud": ["x", "keyward"], "sub": "alice",
                            "exp": 2000, "iat": 100});
        let (token, jwks) = ed25519_token(&claims, "k1");
        let keys = KeySet::parse_jwks(&jwks).unwrap();
        let u = split(&token).unwrap();
        let Checked::Signed(m) = u.check_signature(&c, &keys).unwrap() else {
            panic!("unknown key")
        };
        assert_eq!(check_claims(&c, &m, 1000).unwrap(), 2000);
        assert_eq!(
            check_claims(&c, &m, 2100).unwrap_err().message(),
            "the JWT has expired"
        );
        // Within the skew it still holds; issued in the future it does not.
        check_claims(&c, &m, 2030).unwrap();
        assert!(check_claims(&c, &m, 0).is_err());
        // Another kid is unknown (a rotation to fetch for); a changed payload fails.
        let (other, _) = ed25519_token(&claims, "k2");
        assert!(matches!(
            split(&other).unwrap().check_signature(&c, &keys).unwrap(),
            Checked::UnknownKey
        ));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&json!({"iss": "https://id.example.com", "aud": "keyward", "sub": "root", "exp": 2000}))
                .unwrap(),
        );
        parts[1] = &forged;
        let forged = parts.join(".");
        assert!(split(&forged).unwrap().check_signature(&c, &keys).is_err());
        // An issuer that allows only RS256 refuses the EdDSA token by name.
        let mut rs_only = cfg();
        rs_only.algorithms = vec!["RS256".into()];
        let e = split(&token)
            .unwrap()
            .check_signature(&rs_only, &keys)
            .err()
            .unwrap();
        assert!(
            e.message().contains("not one this issuer may use"),
            "{}",
            e.message()
        );
    }

    /// RFC 7515 appendix A.2: RS256 over the example payload with the example key.
    #[test]
    fn rfc7515_rs256_example_verifies() {
        let jwks = json!({"keys": [{"kty": "RSA",
            "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
            "e": "AQAB"}]});
        let keys = KeySet::parse_jwks(&jwks).unwrap();
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        let mut c = cfg();
        c.issuer = "joe".into();
        match split(token).unwrap().check_signature(&c, &keys).unwrap() {
            Checked::Signed(m) => assert_eq!(m.get("iss"), Some(&json!("joe"))),
            Checked::UnknownKey => panic!("the key has no kid and fits"),
        }
    }

    #[test]
    fn none_and_hmac_are_refused_even_when_listed_nowhere() {
        let c = cfg();
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for alg in ["none", "HS256", "NONE"] {
            let h = e.encode(serde_json::to_vec(&json!({"alg": alg})).unwrap());
            let token = format!("{h}.{}.", e.encode(b"{}"));
            let u = split(&token).unwrap();
            let err = u.check_signature(&c, &KeySet::default()).err().unwrap();
            assert_eq!(err.code(), ErrorCode::Unauthenticated);
        }
        let h = e.encode(serde_json::to_vec(&json!({"alg": "RS256", "crit": ["exp"]})).unwrap());
        assert!(split(&format!("{h}.e30.AA")).is_err());
        assert!(split("a.b").is_err());
    }
}
