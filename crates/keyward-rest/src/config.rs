//! Configuration: a TOML file, then environment variables, then flags (flags win). Unknown keys in the file
//! are an error, not silently ignored: a misspelt `tls_cert` must not start a plain-HTTP server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The longest a quorum request may stay open: a request is a standing authorisation to destroy or export,
/// and one forgotten for longer is better made again.
pub const MAX_APPROVAL_TTL: u64 = 30 * 24 * 3600;

/// The server's configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address (`KEYWARD_LISTEN`).
    pub listen: SocketAddr,
    /// Data directory (`KEYWARD_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Store URL (`KEYWARD_STORE`): `sqlite://PATH` or `postgres://...`.
    pub store: Option<String>,
    /// PEM certificate chain (`KEYWARD_TLS_CERT`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (`KEYWARD_TLS_KEY`).
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients may authenticate with certificates it issued.
    pub tls_client_ca: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address.
    pub insecure_http: bool,
    /// Load balancers (addresses or CIDR blocks) whose connections begin with a PROXY protocol header (v1 or
    /// v2) naming the client; every connection from them must. The client's address is then the one the
    /// audit log records and policies' `source_cidr` judge.
    pub proxy_protocol_from: Vec<String>,
    /// Development mode: embedded store, initialised and unsealed at start. Never for production.
    pub dev: bool,
    /// Requests per second allowed per principal (0 turns limiting off).
    pub rate_limit_per_second: u32,
    /// Burst size per principal.
    pub rate_limit_burst: u32,
    /// Longest time a request may take.
    pub request_timeout_seconds: u64,
    /// How long a connection may go without delivering a complete request header: a keep-alive connection
    /// between requests, or a client sending its headers slowly. Keep it longer than the idle timeout of
    /// any load balancer in front (which then always closes first, never racing a request).
    pub idle_timeout_seconds: u64,
    /// How often scheduled rotation and destruction run.
    pub background_interval_seconds: u64,
    /// Keys held unwrapped in memory at most; the least recently used beyond it are dropped until needed.
    pub key_cache_capacity: usize,
    /// How long a request waiting for quorum approval stays open; past it, the leading node's next round
    /// stores it as `expired` under an audit record of its own.
    pub approval_ttl_seconds: u64,
    /// Closed approval requests (executed, rejected, expired, failed) are deleted by the leading node this
    /// many days after their expiry time, each after an audit record; the audit log keeps their whole trail.
    /// Without it the requests would pile up for ever, and every round and listing reads them all.
    pub approval_retention_days: u32,
    /// This node's id (defaults to a value kept in the data directory).
    pub node_id: Option<String>,
    /// The audit log. Only a dev-mode server accepts `false`, to measure what auditing costs.
    pub audit: bool,
    /// Audit records younger than this many days are never pruned (`POST /v1/audit/prune`). PCI DSS asks
    /// for a year.
    pub audit_retention_days: u32,
    /// Approvals every destructive operation needs unless its key says otherwise (0: none). Root rotation
    /// and audit pruning follow this setting.
    pub quorum_approvals: u32,
    /// A JSON-lines copy of the audit log (each record once, in order).
    pub audit_file: Option<PathBuf>,
    /// The syslog datagram socket to copy audit records to (usually `/dev/log`).
    pub audit_syslog: Option<PathBuf>,
    /// PKCS#11 module (`KEYWARD_PKCS11_MODULE`): when set, the token is the root of trust.
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token (`KEYWARD_PKCS11_TOKEN_LABEL`).
    pub pkcs11_token_label: Option<String>,
    /// The token's user PIN (`KEYWARD_PKCS11_PIN`); prefer `pkcs11_pin_file`.
    pub pkcs11_pin: Option<zeroize::Zeroizing<String>>,
    /// A file holding the PIN (`KEYWARD_PKCS11_PIN_FILE`), readable by the service only.
    pub pkcs11_pin_file: Option<PathBuf>,
    /// How log lines are written (`KEYWARD_LOG_FORMAT`, `--log-format`): `human` or `json`.
    pub log_format: crate::log::LogFormat,
    /// The account id in the ARNs the AWS KMS protocol answers with (`arn:aws:kms:REGION:ACCOUNT:key/ID`):
    /// twelve digits, as AWS SDKs expect.
    pub aws_account_id: String,
    /// A second listener serving the Vault API (`KEYWARD_VAULT_LISTEN`, `--vault-listen`), whose paths
    /// (`/v1/sys/...`) collide with Keyward's own; off when unset. It takes the same TLS settings.
    pub vault_listen: Option<SocketAddr>,
    /// The KV version 2 mounts the Vault API serves (`kv_mounts = ["secret", "mariadb"]`).
    pub kv_mounts: Vec<String>,
    /// The mount of the Vault API's transit engine (`""` turns it off). Its keys are Keyward keys with the
    /// alias `<transit_mount>/<name>`.
    pub transit_mount: String,
    /// Trusted JWT issuers by name (`[jwt_issuers.<name>]`, as `PUT /v1/auth/jwt/issuers/{name}` takes
    /// them), beside those configured through the API; these can be changed only here.
    pub jwt_issuers: std::collections::BTreeMap<String, keyward_iam::jwt::IssuerConfig>,
    /// The directory people sign in with (`[ldap]`, as `PUT /v1/auth/ldap/config` takes it); when set, the
    /// API cannot replace it.
    pub ldap: Option<keyward_iam::ldap::LdapConfig>,
    /// Serve the web console at `/ui/` (`KEYWARD_UI`).
    pub ui: bool,
    /// A console session without a request for this long is ended and its token revoked.
    pub ui_idle_timeout_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9700)),
            data_dir: PathBuf::from("./keyward-data"),
            store: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            insecure_http: false,
            proxy_protocol_from: Vec::new(),
            dev: false,
            rate_limit_per_second: 20_000,
            rate_limit_burst: 40_000,
            request_timeout_seconds: 30,
            idle_timeout_seconds: 75,
            background_interval_seconds: 60,
            key_cache_capacity: 100_000,
            approval_ttl_seconds: 24 * 3600,
            approval_retention_days: 90,
            node_id: None,
            audit: true,
            audit_retention_days: 365,
            quorum_approvals: 0,
            audit_file: None,
            audit_syslog: None,
            pkcs11_module: None,
            pkcs11_token_label: None,
            pkcs11_pin: None,
            pkcs11_pin_file: None,
            log_format: crate::log::LogFormat::Human,
            aws_account_id: "000000000000".into(),
            vault_listen: None,
            kv_mounts: vec!["secret".into()],
            transit_mount: "transit".into(),
            jwt_issuers: std::collections::BTreeMap::new(),
            ldap: None,
            ui: true,
            ui_idle_timeout_seconds: 900,
        }
    }
}

/// Values given on the command line or in the environment; `None` leaves the file's (or default) value.
#[derive(Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--store`.
    pub store: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--insecure-http`.
    pub insecure_http: bool,
    /// `--dev`.
    pub dev: bool,
    /// `--pkcs11-module`.
    pub pkcs11_module: Option<PathBuf>,
    /// `--pkcs11-token-label`.
    pub pkcs11_token_label: Option<String>,
    /// `KEYWARD_PKCS11_PIN`.
    pub pkcs11_pin: Option<zeroize::Zeroizing<String>>,
    /// `--pkcs11-pin-file`.
    pub pkcs11_pin_file: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<crate::log::LogFormat>,
    /// `--vault-listen`.
    pub vault_listen: Option<SocketAddr>,
}

/// Every setting's name as the file spells it, read from the struct's own definition (what serde's derive
/// hands a deserializer), so that the names the environment and `--set` accept cannot drift from it.
pub fn setting_names() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    #[derive(Debug)]
    struct Done;
    impl std::fmt::Display for Done {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("names read")
        }
    }
    impl std::error::Error for Done {}
    impl serde::de::Error for Done {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Done
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = Done;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Done> {
            Err(Done)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Done> {
            self.0 = fields;
            Err(Done)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    static NAMES: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = Names(&[]);
        let _ = Config::deserialize(&mut names);
        names.0
    })
}

/// A value as the environment or `--set` gives it: TOML when it reads as TOML (`0`, `true`, `["10.0.0.0/8"]`,
/// `"text"`), else the text itself (`/var/lib/keyward`, `0.0.0.0:9700`).
fn setting_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Sets `name` to `text` read as TOML, or as the text itself where the setting is a string that happens to
/// read as a number or a boolean (a PIN `1234`, a label `7`): the typed reading is kept only if the
/// configuration accepts it.
fn insert_setting(table: &mut toml::Table, name: &str, text: &str) {
    let typed = setting_value(text);
    let is_text = typed.is_str();
    table.insert(name.to_string(), typed);
    if !is_text
        && toml::Value::Table(table.clone())
            .try_into::<Config>()
            .is_err()
    {
        let as_text = toml::Value::String(text.to_string());
        let mut trial = table.clone();
        trial.insert(name.to_string(), as_text.clone());
        if toml::Value::Table(trial).try_into::<Config>().is_ok() {
            table.insert(name.to_string(), as_text);
        }
    }
}

impl Config {
    /// Reads the TOML file (if any), then `KEYWARD_<SETTING>` from the environment for every setting, then
    /// the `--set SETTING=VALUE` pairs, then the overrides of the dedicated flags (flags win).
    pub fn load(file: Option<&Path>, o: Overrides) -> Result<Config, String> {
        Self::load_from(file, |name| std::env::var(name).ok(), &[], o)
    }

    /// [`Config::load`] with the environment and `--set` pairs given.
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        sets: &[String],
        o: Overrides,
    ) -> Result<Config, String> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| format!("config file {}: {}", path.display(), e.message()))?
            }
            None => toml::Table::new(),
        };
        for name in setting_names() {
            if let Some(v) = env(&format!("KEYWARD_{}", name.to_ascii_uppercase())) {
                insert_setting(&mut table, name, &v);
            }
        }
        for pair in sets {
            let (name, v) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "--set takes SETTING=VALUE, not {}",
                    keyward_core::quoted(pair)
                )
            })?;
            let name = name.trim();
            if !setting_names().contains(&name) {
                return Err(format!(
                    "--set: unknown setting {}",
                    keyward_core::quoted(name)
                ));
            }
            insert_setting(&mut table, name, v.trim());
        }
        let origin = match file {
            Some(path) => format!("config file {} or the environment", path.display()),
            None => "the environment".to_string(),
        };
        let mut c: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("{origin}: {}", e.message()))?;
        for (name, issuer) in c.jwt_issuers.iter_mut() {
            issuer
                .read_jwks_file()
                .map_err(|e| format!("jwt_issuers.{name}: {e}"))?;
        }
        if let Some(v) = o.listen {
            c.listen = v;
        }
        if let Some(v) = o.data_dir {
            c.data_dir = v;
        }
        if o.store.is_some() {
            c.store = o.store;
        }
        if o.tls_cert.is_some() {
            c.tls_cert = o.tls_cert;
        }
        if o.tls_key.is_some() {
            c.tls_key = o.tls_key;
        }
        if o.tls_client_ca.is_some() {
            c.tls_client_ca = o.tls_client_ca;
        }
        c.insecure_http |= o.insecure_http;
        c.dev |= o.dev;
        if o.pkcs11_module.is_some() {
            c.pkcs11_module = o.pkcs11_module;
        }
        if o.pkcs11_token_label.is_some() {
            c.pkcs11_token_label = o.pkcs11_token_label;
        }
        if o.pkcs11_pin.is_some() {
            c.pkcs11_pin = o.pkcs11_pin;
        }
        if o.pkcs11_pin_file.is_some() {
            c.pkcs11_pin_file = o.pkcs11_pin_file;
        }
        if let Some(f) = o.log_format {
            c.log_format = f;
        }
        if o.vault_listen.is_some() {
            c.vault_listen = o.vault_listen;
        }
        c.validate()?;
        Ok(c)
    }

    /// Refuses combinations that would be unsafe or cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        if self.aws_account_id.len() != 12
            || !self.aws_account_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("aws_account_id is twelve digits".into());
        }
        if !self.audit && !self.dev {
            return Err("the audit log can only be turned off in dev mode (for benchmarks)".into());
        }
        if self.pkcs11_module.is_some() {
            if self.pkcs11_token_label.is_none() {
                return Err("pkcs11_module needs pkcs11_token_label".into());
            }
            if self.pkcs11_pin.is_none() == self.pkcs11_pin_file.is_none() {
                return Err(
                    "pkcs11_module needs exactly one of pkcs11_pin and pkcs11_pin_file".into(),
                );
            }
            if self.dev {
                return Err("dev mode keeps its unseal key in the data directory; it does not use a PKCS#11 token".into());
            }
        }
        self.proxies()?;
        if self.audit_retention_days > 36_500 {
            return Err("audit_retention_days is 0 to 36500".into());
        }
        if !(16..=100_000_000).contains(&self.key_cache_capacity) {
            return Err("key_cache_capacity is 16 to 100000000".into());
        }
        if !(1..=3600).contains(&self.idle_timeout_seconds) {
            return Err("idle_timeout_seconds is 1 to 3600".into());
        }
        if !(1..=36_500).contains(&self.approval_retention_days) {
            return Err("approval_retention_days is 1 to 36500".into());
        }
        if !(1..=MAX_APPROVAL_TTL).contains(&self.approval_ttl_seconds) {
            return Err(format!(
                "approval_ttl_seconds is 1 to {MAX_APPROVAL_TTL} (30 days)"
            ));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("tls_client_ca needs tls_cert and tls_key".into());
        }
        for m in &self.kv_mounts {
            if !keyward_core::secrets::valid_mount(m) || matches!(m.as_str(), "sys" | "auth") {
                return Err(format!(
                    "kv_mounts: {} is not a mount name (letters, digits, - _ ., at most 64; not sys or auth)",
                    keyward_core::quoted(m)
                ));
            }
        }
        if !self.transit_mount.is_empty()
            && (!keyward_core::secrets::valid_mount(&self.transit_mount)
                || self.kv_mounts.contains(&self.transit_mount)
                || matches!(self.transit_mount.as_str(), "sys" | "auth"))
        {
            return Err(format!(
                "transit_mount: {} is not a mount name, or is one of kv_mounts",
                keyward_core::quoted(&self.transit_mount)
            ));
        }
        if !(60..=86_400).contains(&self.ui_idle_timeout_seconds) {
            return Err("ui_idle_timeout_seconds is 60 to 86400".into());
        }
        for (name, issuer) in &self.jwt_issuers {
            keyward_iam::jwt::check_name(name)
                .and_then(|_| issuer.check())
                .map_err(|e| format!("jwt_issuers.{name}: {}", e.message()))?;
            let roles = issuer_roles(issuer);
            if let Some(r) = roles
                .iter()
                .find(|r| keyward_iam::authz::Role::parse(r).is_none())
            {
                return Err(format!("jwt_issuers.{name}: unknown role {r}"));
            }
        }
        if let Some(l) = &self.ldap {
            l.check().map_err(|e| format!("ldap: {}", e.message()))?;
            if !l.bind_dn.is_empty() && l.bind_password.is_none() {
                return Err("ldap: bind_password is needed with bind_dn".into());
            }
            if let Some(r) = l
                .group_roles
                .values()
                .flatten()
                .find(|r| keyward_iam::authz::Role::parse(r).is_none())
            {
                return Err(format!("ldap: unknown role {r}"));
            }
        }
        if let Some(v) = self.vault_listen {
            if v == self.listen && v.port() != 0 {
                return Err("vault_listen must differ from listen".into());
            }
            if self.tls_cert.is_none() && !v.ip().is_loopback() && !self.insecure_http {
                return Err(format!(
                    "refusing plain HTTP for the Vault API on {v}: configure tls_cert/tls_key, or pass --insecure-http"
                ));
            }
        }
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() && !self.insecure_http {
            return Err(format!(
                "refusing plain HTTP on {}: configure tls_cert/tls_key, or pass --insecure-http",
                self.listen
            ));
        }
        Ok(())
    }

    /// The parsed `proxy_protocol_from`.
    pub fn proxies(&self) -> Result<Vec<crate::policy::Cidr>, String> {
        self.proxy_protocol_from
            .iter()
            .map(|c| {
                crate::policy::Cidr::parse(c).ok_or_else(|| {
                    format!(
                        "proxy_protocol_from: '{}' is not an address or CIDR block",
                        c.escape_debug()
                    )
                })
            })
            .collect()
    }

    /// Which store to open: the embedded SQLite file (default: in the data directory) or a PostgreSQL
    /// database shared by several nodes.
    pub fn store_location(&self) -> Result<StoreLocation, String> {
        match self.store.as_deref() {
            None => Ok(StoreLocation::Sqlite(self.data_dir.join("keyward.db"))),
            Some(url) => match url.strip_prefix("sqlite://") {
                Some(path) if !path.is_empty() => Ok(StoreLocation::Sqlite(PathBuf::from(path))),
                _ if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    Ok(StoreLocation::Postgres(url.to_string()))
                }
                _ => Err(format!(
                    "unsupported store URL scheme in '{}': use sqlite://PATH or postgres://USER@HOST/DB",
                    url.split("://").next().unwrap_or("")
                )),
            },
        }
    }
}

impl Config {
    /// The token to use as the root of trust, if one is configured. The PIN is read from its file here, once.
    pub fn pkcs11(&self) -> Result<Option<keyward_hsm_pkcs11::Pkcs11Config>, String> {
        let Some(module) = &self.pkcs11_module else {
            return Ok(None);
        };
        let pin = match (&self.pkcs11_pin, &self.pkcs11_pin_file) {
            (Some(pin), _) => pin.clone(),
            (None, Some(path)) => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the PKCS#11 PIN file {}: {e}", path.display())
                })?);
                zeroize::Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, None) => return Err("pkcs11_module needs a PIN".into()),
        };
        Ok(Some(keyward_hsm_pkcs11::Pkcs11Config {
            module: module.clone(),
            token_label: self.pkcs11_token_label.clone().unwrap_or_default(),
            pin,
            sessions: 8,
        }))
    }
}

/// A store the configuration selects.
pub enum StoreLocation {
    /// The SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (it may hold a password: never print it).
    Postgres(String),
}

/// The roles an issuer's rules name (checked at start; policies are checked when a token is used).
fn issuer_roles(issuer: &keyward_iam::jwt::IssuerConfig) -> Vec<String> {
    issuer
        .rules
        .iter()
        .flat_map(|r| r.roles.iter().chain(r.group_roles.values().flatten()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_and_flags_win() {
        let dir = tempfile_dir();
        let path = dir.join("k.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9800\"\ntls_crt = \"x\"\n").unwrap_or_default();
        assert!(Config::load(Some(&path), Overrides::default())
            .err()
            .unwrap_or_default()
            .contains("tls_crt"));
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9800\"\nrate_limit_per_second = 5\n",
        )
        .unwrap_or_default();
        let c = Config::load(Some(&path), Overrides::default()).unwrap_or_default();
        assert_eq!((c.listen.port(), c.rate_limit_per_second), (9800, 5));
        let o = Overrides {
            listen: Some("127.0.0.1:9900".parse().unwrap_or(c.listen)),
            ..Overrides::default()
        };
        assert_eq!(
            Config::load(Some(&path), o)
                .unwrap_or_default()
                .listen
                .port(),
            9900
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn plain_http_off_loopback_needs_the_flag() {
        let mut c = Config {
            listen: "0.0.0.0:9700".parse().unwrap_or(Config::default().listen),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        c.insecure_http = true;
        assert!(c.validate().is_ok());
        assert!(Config {
            store: Some("mysql://x".into()),
            ..Config::default()
        }
        .store_location()
        .is_err());
        assert!(matches!(
            Config {
                store: Some("postgres://kw@db.internal/keyward".into()),
                ..Config::default()
            }
            .store_location(),
            Ok(StoreLocation::Postgres(_))
        ));
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("keyward-config-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }
}
