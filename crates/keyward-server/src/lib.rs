//! Keyward's server process: configuration, listeners and TLS, PROXY protocol, signals, the audit sinks and
//! the background rounds, around the REST API of `keyward-rest` (re-exported here under the same paths).

mod proxy;
pub mod sink;
mod tls;

pub use keyward_rest::{
    app, chain, config, convert, error, handlers, inflight, limiter, log, metrics, pki,
    root_of_trust,
};
pub use keyward_rest::{pkcs11_init, pkcs11_unseal, PKCS11_ROOT_OF_TRUST};

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use config::StoreLocation;
use keyward_core::audit::AuditLog;
use keyward_core::{Kms, KmsConfig, RootOfTrust, SecretBytes, SystemClock};
use keyward_hsm_soft::SoftHsm;
use keyward_store::Change;
use keyward_store_postgres::{PgOptions, PgStore};
use keyward_store_sqlite::SqliteStore;

pub use app::{router, App, AppState};
pub use config::{Config, Overrides};
/// Actions, roles and policies live beneath the HTTP layer, shared by every front end.
pub use keyward_iam::{auth, authz, policy, totp};

use authz::Role;
use convert::{hex, unhex};

/// File in the data directory holding the dev-mode unseal key.
pub const DEV_UNSEAL_FILE: &str = "dev-unseal-key.UNSAFE";

/// What `build` prints for the operator.
#[derive(Default)]
pub struct Startup {
    /// Lines for the operator (warnings, next steps). Printed to stderr.
    pub notes: Vec<String>,
    /// The root token, when one was created at this start (dev mode). Printed to stdout, and only there.
    pub root_token: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("notes", &self.notes)
            .field(
                "root_token",
                &self.root_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict data directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn node_id(config: &Config) -> Result<String, String> {
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            let _ = std::fs::remove_file(&path);
            write_private_file(&path, id.as_bytes())?;
            Ok(id)
        }
    }
}

fn dev_bootstrap(
    kms: &Kms,
    app_auth: &auth::Auth,
    config: &Config,
    out: &mut Startup,
) -> Result<(), String> {
    let key_path = config.data_dir.join(DEV_UNSEAL_FILE);
    let fixed = std::env::var("KEYWARD_DEV_ROOT_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    out.notes.push("WARNING: dev mode. The unseal key is stored in plain text in the data directory; never use this in production.".into());
    if !kms.status().initialized {
        let key = kms
            .init_with_key(RootOfTrust::Dev)
            .map_err(|e| e.to_string())?;
        let text = format!(
            "# Keyward DEV MODE unseal key. UNSAFE: anyone who can read this file can decrypt every key.\n{}\n",
            hex(key.expose())
        );
        write_private_file(&key_path, text.as_bytes())?;
        kms.unseal_with_key(&key).map_err(|e| e.to_string())?;
        let (token, _) = app_auth
            .mint(
                "root",
                &[Role::Admin],
                SystemClock.now_secs(),
                None,
                fixed.as_deref(),
            )
            .map_err(|e| e.to_string())?;
        out.root_token = Some(token);
        return Ok(());
    }
    if kms.status().root_of_trust != Some(RootOfTrust::Dev) {
        return Err(
            "this data directory belongs to a production (Shamir) deployment; start without --dev"
                .into(),
        );
    }
    let text = std::fs::read_to_string(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let key = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .and_then(|l| unhex(l.trim()))
        .ok_or_else(|| format!("{} is not a Keyward dev unseal key", key_path.display()))?;
    kms.unseal_with_key(&SecretBytes::new(key))
        .map_err(|e| e.to_string())?;
    if let Some(token) = fixed {
        if app_auth
            .authenticate(&token, SystemClock.now_secs())
            .is_err()
        {
            app_auth
                .mint(
                    "root",
                    &[Role::Admin],
                    SystemClock.now_secs(),
                    None,
                    Some(&token),
                )
                .map_err(|e| e.to_string())?;
        }
        out.root_token = Some(zeroize::Zeroizing::new(token));
    } else {
        out.notes.push(
            "The root token printed at the first start of this data directory is still valid. Lost it? \
             Restart with KEYWARD_DEV_ROOT_TOKEN=<a value of your choice> and use that value as the token."
                .into(),
        );
    }
    Ok(())
}

trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl NowSecs for SystemClock {
    fn now_secs(&self) -> i64 {
        keyward_core::Clock::now(self)
    }
}

/// Opens the store and the engine, bootstraps dev mode, and starts the audit writer.
pub fn build(config: Config) -> Result<(AppState, Startup), String> {
    config.validate()?;
    create_private_dir(&config.data_dir)?;
    let store: Arc<dyn keyward_store::Store> = match config.store_location()? {
        StoreLocation::Sqlite(db) => Arc::new(SqliteStore::open(&db).map_err(|e| e.to_string())?),
        StoreLocation::Postgres(url) => {
            Arc::new(PgStore::open(&url, PgOptions::default()).map_err(|e| e.to_string())?)
        }
    };
    let token = match config.pkcs11()? {
        Some(p11) => Some(Arc::new(
            keyward_hsm_pkcs11::Pkcs11Hsm::open(&p11).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let hsm: Arc<dyn keyward_hsm::Hsm> = match &token {
        Some(t) => Arc::new(keyward_hsm_pkcs11::HybridHsm::new(t.clone())),
        None => Arc::new(SoftHsm::new()),
    };
    // A FIPS build whose module is not in FIPS mode (its power-on self-tests failed, or it was linked
    // against another build) must not serve: its operators rely on every operation being FIPS-approved.
    let module = hsm.crypto_module();
    if keyward_hsm_soft::FIPS_BUILD && !module.fips {
        return Err(format!(
            "this is a FIPS build, but its cryptographic module ({} {}) is not in FIPS mode: refusing to start",
            module.name, module.version
        ));
    }
    let kms = Arc::new(
        Kms::open(
            hsm,
            store,
            Arc::new(SystemClock),
            KmsConfig {
                key_cache_capacity: config.key_cache_capacity,
                ..KmsConfig::default()
            },
        )
        .map_err(|e| e.to_string())?,
    );
    if let Some(t) = &token {
        pkcs11_unseal(&kms, t)?;
    }
    let mut startup = Startup::default();
    startup.notes.push(format!(
        "cryptographic module: {} {}{}",
        module.name,
        module.version,
        if module.fips { " in FIPS mode" } else { "" }
    ));
    startup.notes.push(format!(
        "data directory: {}",
        std::fs::canonicalize(&config.data_dir)
            .unwrap_or_else(|_| config.data_dir.clone())
            .display()
    ));
    let node = node_id(&config)?;
    let mut sinks: Vec<Box<dyn keyward_core::audit::AuditSink>> = Vec::new();
    if let Some(path) = &config.audit_file {
        let sink = sink::FileSink::open(path)
            .map_err(|e| format!("cannot open audit file {}: {e}", path.display()))?;
        sinks.push(Box::new(sink));
    }
    #[cfg(unix)]
    if let Some(target) = &config.audit_syslog {
        let state = config.data_dir.join("audit-syslog.seq");
        let sink = sink::SyslogSink::open(target, &state).map_err(|e| {
            format!(
                "audit_syslog: cannot send to the syslog socket {}: {e} (is the syslog daemon running?)",
                target.display()
            )
        })?;
        sinks.push(Box::new(sink));
    }
    let audit = AuditLog::start_with_sinks(kms.clone(), sinks).map_err(|e| e.to_string())?;
    let dev = config.dev;
    let feed = kms
        .change_feed()
        .map_err(|e| format!("cannot follow the store's changes: {e}"))?;
    let mut app = App::new(kms.clone(), audit, config, node);
    app.token = token;
    let app = Arc::new(app);
    if let Some(feed) = feed {
        follow_changes(Arc::downgrade(&app), feed)?;
    }
    if dev {
        dev_bootstrap(&kms, &app.iam.auth, &app.config, &mut startup)?;
    } else {
        let s = kms.status();
        if !s.initialized {
            startup.notes.push(
                "Keyward is not initialised: POST /v1/sys/init (or `keyward operator init`)."
                    .into(),
            );
        } else if s.root_of_trust == Some(RootOfTrust::Dev) {
            return Err("this data directory was created in dev mode; start it with --dev".into());
        } else if !s.sealed {
            // A token-rooted node unseals itself at start.
            startup
                .notes
                .push("Keyward unsealed itself with the PKCS#11 token.".into());
        } else {
            let share = if s.threshold == 1 { "share" } else { "shares" };
            startup.notes.push(format!(
                "Keyward is sealed: give {} unseal {share} (`keyward operator unseal`).",
                s.threshold
            ));
        }
    }
    Ok((app, startup))
}

/// How long a poll of the change feed waits for a notification before reading the log anyway.
const FEED_WAIT: Duration = Duration::from_millis(250);

/// Follows other nodes' changes on a thread of its own for as long as the app lives: each poll's changes are
/// applied to the engine's and the server's caches, then the caches are confirmed fresh as of the poll's
/// start. A failed poll stops trusting the caches at once, so while the database is unreachable every
/// lookup asks the store (and fails cleanly) instead of serving what may have changed.
fn follow_changes(
    app: std::sync::Weak<App>,
    mut feed: Box<dyn keyward_store::ChangeFeed>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("keyward-changes".into())
        .spawn(move || loop {
            let started = std::time::Instant::now();
            let polled = feed.poll(FEED_WAIT);
            let Some(app) = app.upgrade() else { return };
            let freshness = app.kms.freshness();
            match polled {
                Ok(changes) => {
                    let was_initialized = app.kms.status().initialized;
                    let applied = app.kms.apply_changes(&changes);
                    for c in &changes {
                        match c {
                            Change::Meta { ns, name } if ns == auth::TOKENS => {
                                app.iam.auth.forget(name)
                            }
                            Change::Meta { ns, name } if ns == handlers::policies::POLICIES => {
                                app.iam.policies.forget(name)
                            }
                            Change::Meta { ns, name }
                                if ns == keyward_iam::access_keys::ACCESS_KEYS =>
                            {
                                app.iam.access_keys.forget(name)
                            }
                            Change::Meta { ns, name }
                                if ns == keyward_iam::identities::IDENTITIES =>
                            {
                                app.iam.access_keys.forget_identity(name)
                            }
                            Change::Everything => {
                                app.iam.auth.forget_all();
                                app.iam.policies.forget_all();
                                app.iam.access_keys.forget_all();
                            }
                            _ => {}
                        }
                    }
                    if applied.is_ok() {
                        freshness.confirm(started);
                    } else {
                        freshness.revoke();
                    }
                    // Another node initialised the cluster on the token: this node unseals itself too, as
                    // it would at start. (A node an operator sealed stays sealed.)
                    if let Some(token) = &app.token {
                        if !was_initialized && app.kms.status().initialized {
                            let _ = pkcs11_unseal(&app.kms, token);
                        }
                    }
                }
                Err(_) => {
                    freshness.revoke();
                    drop(app);
                    std::thread::sleep(FEED_WAIT);
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the change feed thread: {e}"))
}

async fn background(app: AppState) {
    let started_at = app.clock.now();
    let mut tick = tokio::time::interval(Duration::from_secs(
        app.config.background_interval_seconds.max(1),
    ));
    loop {
        tick.tick().await;
        if app.kms.is_sealed() {
            continue;
        }
        let a = app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // A sink that falls behind is caught up from the store; say so while it does.
            static SINK_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let failures = a.audit.sink_failures();
            let seen = SINK_FAILURES.swap(failures, std::sync::atomic::Ordering::Relaxed);
            if failures > seen {
                tracing::warn!(
                    failures = failures - seen,
                    "audit records could not be delivered to a sink (audit_file, audit_syslog); they are sent again from the store"
                );
            }
            // Every node watches its own view of the audit chain, whoever leads.
            if a.config.audit {
                match a.chain.check(&a.kms, a.clock.now_ms()) {
                    Ok(true) => {
                        let reason = a.chain.status().broken.unwrap_or_default();
                        tracing::error!(%reason, "the audit chain is broken; the node serves on as degraded");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "the audit chain was not checked this round"),
                }
            }
            // Once per run, each node ends the approvals it claimed in an earlier run and never finished;
            // on a shared store one node leads, and it also ends, every round, claims abandoned by any node.
            // The others stand by until it goes away.
            static RECOVERED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            let leads = a.kms.leads().unwrap_or(false);
            // Every node says it serves, and what it saw of the audit chain; the leader forgets nodes
            // silent for a day.
            let chain = a.chain.status();
            let now = a.clock.now();
            let beat = keyward_core::cluster::NodeBeat {
                node_id: a.node_id.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at,
                seen_at: now,
                leader: leads,
                chain_broken: chain.broken,
                chain_checked_at: chain.checked_at_ms.map(|ms| ms / 1000),
            };
            if let Err(e) = a.kms.heartbeat(&beat, leads.then(|| now - 24 * 3600)) {
                tracing::warn!(error = e.message(), "this node's heartbeat was not recorded");
            }
            let recover = !RECOVERED.load(std::sync::atomic::Ordering::Acquire);
            if leads || recover {
                let operations = match inflight::recover(&a, leads) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(
                            error = e.0.message(),
                            "interrupted operations not recorded yet"
                        );
                        false
                    }
                };
                if handlers::approvals::round(&a, leads, recover) && operations {
                    RECOVERED.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            if !leads {
                return;
            }
            if let Err(e) = handlers::identities::purge_expired_tokens(&a) {
                tracing::warn!(error = e.0.message(), "expired tokens not deleted yet");
            }
            let _ = a.kms.housekeeping();
            // Each rotation or destruction is recorded before it happens; a round that cannot write its
            // records stops and is retried at the next tick.
            if let Err(e) = keyward_core::audit::run_scheduled_work(&a.kms, &a.audit, || a.clock.now_ms()) {
                tracing::warn!(
                    error = e.message(),
                    "scheduled work stopped until the next round"
                );
            }
        })
        .await;
    }
}

/// The listening sockets and the TLS configuration, all ready before the service says it listens.
pub struct Bound {
    listener: tokio::net::TcpListener,
    tls: Option<tls::Tls>,
    hangups: tls::Hangups,
    /// The Vault API's listener (`vault_listen`), with TLS of its own loaded from the same files.
    vault: Option<(tokio::net::TcpListener, Option<tls::Tls>, tls::Hangups)>,
}

impl Bound {
    /// The address actually bound (the configured port may be 0).
    pub fn local_addr(&self) -> Result<SocketAddr, String> {
        self.listener.local_addr().map_err(|e| e.to_string())
    }

    /// The Vault API's address, when it is served.
    pub fn vault_addr(&self) -> Option<SocketAddr> {
        self.vault
            .as_ref()
            .and_then(|(l, _, _)| l.local_addr().ok())
    }
}

fn load_tls(app: &AppState) -> Result<Option<tls::Tls>, String> {
    Ok(match (&app.config.tls_cert, &app.config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::Tls::load(tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: app.config.tls_client_ca.clone(),
        })?),
        _ => None,
    })
}

/// Loads the TLS certificate and takes the configured address before anything says the service is
/// listening, so that the announcement is true: an unreadable certificate or a port already in use is
/// reported instead, and the process ends.
pub async fn bind(app: &AppState) -> Result<Bound, String> {
    let tls = load_tls(app)?;
    // Installed before the port is taken, so that no SIGHUP from then on ends the service.
    let hangups = tls::hangups();
    let listener = tokio::net::TcpListener::bind(app.config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", app.config.listen))?;
    let vault = match app.config.vault_listen {
        Some(addr) => {
            let tls = load_tls(app)?;
            let hangups = tls::hangups();
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (vault_listen): {e}"))?;
            Some((l, tls, hangups))
        }
        None => None,
    };
    Ok(Bound {
        listener,
        tls,
        hangups,
        vault,
    })
}

/// Serves on what [`bind`] prepared until `shutdown` resolves; then stops accepting, lets in-flight
/// requests finish and seals (dropping every key). SIGHUP reloads the TLS certificate meanwhile.
pub async fn serve(
    app: AppState,
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, String> {
    let Bound {
        listener,
        tls,
        hangups,
        vault,
    } = bound;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let bg = tokio::spawn(background(app.clone()));
    let options = |tls, hangups| -> Result<tls::Options, String> {
        Ok(tls::Options {
            tls,
            hangups,
            app: app.clone(),
            idle: Duration::from_secs(app.config.idle_timeout_seconds),
            // Requests in flight finish within their own timeout; shutdown waits that long and a little more.
            grace: Duration::from_secs(app.config.request_timeout_seconds.saturating_add(5)),
            proxies: app.config.proxies()?,
        })
    };
    // One shutdown for every listener: each stops accepting when it resolves.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let vault_served = match vault {
        Some((l, tls, hangups)) => Some(tokio::spawn(tls::serve(
            l,
            options(tls, hangups)?,
            keyward_vault::router(app.clone()),
            until(stopped.clone()),
        ))),
        None => None,
    };
    let doors =
        keyward_aws::routes().merge(keyward_console::routes(&app, app::router(app.clone())));
    let mut result = tls::serve(
        listener,
        options(tls, hangups)?,
        app::router_with(app.clone(), doors),
        until(stopped),
    )
    .await;
    if let Some(v) = vault_served {
        let v = v
            .await
            .unwrap_or_else(|_| Err("the Vault listener failed".into()));
        result = result.and(v);
    }
    bg.abort();
    seal_on_shutdown(&app).await;
    result.map(|_| addr)
}

/// Who the records of a signal's effects name as the principal: whoever could send it on the host.
pub(crate) const SIGNAL: &str = "system:signal";

/// Seals a node that is stopping, after recording it (`kms:Seal` by [`SIGNAL`]) as an operator's seal is
/// recorded: the audit log then shows when the node stopped holding keys, not only when it last answered.
/// A record that cannot be written does not keep the keys in memory: sealing is the safe side.
async fn seal_on_shutdown(app: &AppState) {
    if app.kms.is_sealed() {
        return;
    }
    let event = app::system_event(
        app,
        SIGNAL,
        format!("shutdown-{}", uuid::Uuid::new_v4().simple()),
        authz::Action::Seal.name(),
    );
    if let Err(e) = app::record(app, event).await {
        tracing::error!(
            error = e.message(),
            "the seal at shutdown could not be recorded"
        );
    }
    let _ = app.kms.seal();
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed by this call, not when the future is first
/// polled: call it before the service says it listens, so that a signal arriving from then on always means
/// a graceful stop rather than the default action, an abrupt exit.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                _ = next_signal(&mut term) => {},
                _ = next_signal(&mut interrupt) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves at the next delivery of a signal whose handler could be installed; never otherwise (a handler
/// that could not be installed must not read as a signal received).
#[cfg(unix)]
pub(crate) async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(s) = signal {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_startup_summary_never_shows_the_root_token() {
        let startup = super::Startup {
            notes: vec!["dev mode".into()],
            root_token: Some(zeroize::Zeroizing::new("kw.r00t-s3cret".into())),
        };
        let shown = format!("{startup:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("dev mode") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
