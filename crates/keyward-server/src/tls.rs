//! TLS with rustls (aws-lc-rs provider), optionally asking clients for certificates.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tower::ServiceExt;

/// Builds the rustls configuration from PEM files.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read {}: {e}", ca.display()))?
            {
                roots
                    .add(c.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where the TLS material is read from, at start and again on every SIGHUP.
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted.
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration in use and the files it came from. A renewed certificate is taken up without a
/// restart, which in production would leave the service sealed until operators bring their shares again.
pub struct Tls {
    files: TlsFiles,
    config: Arc<ServerConfig>,
    /// The served certificate's end of validity (Unix seconds).
    not_after: Option<i64>,
}

/// A configuration read from the files, not yet in service.
struct Loaded {
    config: Arc<ServerConfig>,
    /// File, subject and end of validity, for the log.
    described: String,
    not_after: Option<i64>,
    /// SHA-256 of the certificate (DER), hex: what the audit record names.
    fingerprint: String,
}

impl Tls {
    /// Reads the files; any error is the operator's to fix before the service starts.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let loaded = Self::read(&files)?;
        Ok(Tls {
            files,
            config: loaded.config,
            not_after: loaded.not_after,
        })
    }

    fn read(f: &TlsFiles) -> Result<Loaded, String> {
        let config = server_config(&f.cert, &f.key, f.client_ca.as_deref())?;
        let first = CertificateDer::pem_file_iter(&f.cert)
            .ok()
            .and_then(|mut certs| certs.next())
            .and_then(Result::ok)
            .ok_or_else(|| format!("{} holds no certificate", f.cert.display()))?;
        let fingerprint = crate::convert::hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, first.as_ref()).as_ref(),
        );
        let (described, not_after) = match x509_parser::parse_x509_certificate(first.as_ref()) {
            Ok((_, c)) => {
                if c.is_ca() {
                    // rustls clients (the CLI among them) refuse a CA as a server's own certificate.
                    tracing::warn!(
                        certificate = %f.cert.display(),
                        "the served certificate is a CA certificate (basicConstraints CA:TRUE): clients will refuse it \
                         (CaUsedAsEndEntity); serve a leaf certificate issued by that CA, or one made with \
                         -addext basicConstraints=critical,CA:FALSE (see README, Production start)"
                    );
                }
                (
                    format!(
                        "{} (subject {}, valid until {})",
                        f.cert.display(),
                        c.subject(),
                        c.validity().not_after
                    ),
                    Some(c.validity().not_after.timestamp()),
                )
            }
            Err(_) => (f.cert.display().to_string(), None),
        };
        Ok(Loaded {
            config,
            described,
            not_after,
            fingerprint,
        })
    }
}

/// A SIGHUP: reads the TLS files again and, once the change is recorded in the audit log like any other
/// (`kms:ReloadTlsCertificate` under `tls-certificate/<SHA-256>`), serves new connections with it.
/// Connections already open keep theirs. A reload that fails, or cannot be recorded, changes nothing and
/// says why. Returns whether the configuration changed.
async fn reload(app: &crate::AppState, tls: &mut Option<Tls>) -> bool {
    let Some(current) = tls.as_mut() else {
        tracing::info!("SIGHUP: nothing to reload (no TLS certificate configured)");
        return false;
    };
    let loaded = Tls::read(&current.files);
    let mut event = crate::app::system_event(
        app,
        crate::SIGNAL,
        format!("sighup-{}", uuid::Uuid::new_v4().simple()),
        "kms:ReloadTlsCertificate",
    );
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            event.outcome = "error";
            event.error_code = Some(
                keyward_core::ErrorCode::ValidationError
                    .as_str()
                    .to_string(),
            );
            let _ = crate::app::record(app, event).await;
            app.metrics.tls_reloaded(false);
            tracing::error!("SIGHUP: TLS certificate not reloaded, the one in use stays: {e}");
            return false;
        }
    };
    event.resource = Some(crate::app::resource("tls-certificate", &loaded.fingerprint));
    if let Err(e) = crate::app::record(app, event).await {
        app.metrics.tls_reloaded(false);
        tracing::error!(
            "SIGHUP: TLS certificate not reloaded, the one in use stays: the change cannot be recorded: {}",
            e.message()
        );
        return false;
    }
    current.config = loaded.config;
    current.not_after = loaded.not_after;
    app.metrics.tls_certificate(loaded.not_after);
    app.metrics.tls_reloaded(true);
    tracing::info!(
        "SIGHUP: TLS certificate reloaded from {} (SHA-256 {})",
        loaded.described,
        loaded.fingerprint
    );
    true
}

/// SIGHUP, where the platform has it.
#[cfg(unix)]
pub type Hangups = Option<tokio::signal::unix::Signal>;
/// SIGHUP, where the platform has it.
#[cfg(not(unix))]
pub type Hangups = ();

/// Installs the SIGHUP handler.
#[cfg(unix)]
pub fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// Installs the SIGHUP handler.
#[cfg(not(unix))]
pub fn hangups() -> Hangups {}

/// Resolves at the next SIGHUP; never where signals cannot be received.
async fn hangup(hangups: &mut Hangups) {
    #[cfg(unix)]
    crate::next_signal(hangups).await;
    #[cfg(not(unix))]
    {
        let _ = hangups;
        std::future::pending::<()>().await
    }
}

/// The longest a connection may take to present its PROXY header and finish its TLS handshake.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The log lines for connections from a trusted balancer that did not begin with a valid PROXY header.
static BAD_PROXY_HEADERS: crate::metrics::LogThrottle = crate::metrics::LogThrottle::new();

/// How connections are served.
pub struct Options {
    /// TLS, when configured.
    pub tls: Option<Tls>,
    /// SIGHUP, which reloads the TLS configuration; installed before the service said it listens.
    pub hangups: Hangups,
    /// The service, whose audit log records each reload and whose metrics show the served certificate's
    /// validity.
    pub app: crate::AppState,
    /// How long a connection may take to deliver a request's headers once it is ready for them (and, up to
    /// ten seconds, its PROXY header and TLS handshake).
    pub idle: Duration,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
    /// Balancers whose connections begin with a PROXY header.
    pub proxies: Vec<crate::policy::Cidr>,
}

/// Accept loop for plain HTTP and TLS alike: a TLS handshake per connection when TLS is configured, then
/// HTTP/1.1. A connection must deliver each request's headers within `idle` of being ready for one, so a
/// keep-alive connection left idle, or a client trickling its headers in (slowloris), is closed rather than
/// held open for ever. A connection from a trusted balancer first gives its client's address in a PROXY
/// header. SIGHUP reloads the TLS certificate, key and client CAs from their files; a reload that fails
/// keeps the configuration in use. On shutdown the listener closes at once, idle connections end, and
/// requests in flight get `grace` to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: Options,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let Options {
        mut tls,
        hangups: mut sighup,
        app,
        idle,
        grace,
        proxies,
    } = options;
    let proxies = Arc::new(proxies);
    // A balancer sends its PROXY header at once, and a TLS handshake takes a few round trips: a connection
    // gets this long for both, however long it may then idle between requests.
    let setup = idle.min(SETUP_TIMEOUT);
    // SIGHUP is handled whether or not TLS is configured, as `systemctl reload` and Vault's operators
    // expect: it never ends the service abruptly.
    app.metrics
        .tls_certificate(tls.as_ref().and_then(|t| t.not_after));
    let mut acceptor = tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut last_said: Option<std::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: the next accept would fail at once, and retrying
                    // at once would spin a core. Connections already open are served meanwhile.
                    if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::error!("cannot accept connections: {e}; retrying every 100 ms");
                        last_said = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = hangup(&mut sighup) => {
                if reload(&app, &mut tls).await {
                    acceptor = tls
                        .as_ref()
                        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
                }
                continue;
            }
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let proxies = proxies.clone();
        tokio::spawn(async move {
            let mut tcp = tcp;
            let client = if proxies.iter().any(|c| c.contains(peer.ip())) {
                match tokio::time::timeout(setup, crate::proxy::read_header(&mut tcp)).await {
                    Ok(Ok(crate::proxy::Proxied::Client(a))) => a,
                    Ok(Ok(crate::proxy::Proxied::Local)) => peer,
                    Ok(Err(e)) => {
                        // A balancer that health-checks without a header would otherwise log every
                        // check.
                        BAD_PROXY_HEADERS.tell(|untold| match untold {
                            0 => format!("connection from {peer} closed: {e}"),
                            n => format!("connection from {peer} closed: {e} ({n} more since the last message)"),
                        });
                        return;
                    }
                    Err(_) => return,
                }
            } else {
                peer
            };
            let connect_info = ConnectInfo::<SocketAddr>(client);
            match acceptor {
                None => {
                    let svc =
                        router.map_request(move |req: hyper::Request<hyper::body::Incoming>| {
                            let mut req = req.map(axum::body::Body::new);
                            req.extensions_mut().insert(connect_info);
                            req
                        });
                    let conn =
                        builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc));
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(setup, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    // A client certificate, if one was presented, was verified against tls_client_ca by
                    // rustls.
                    let subject = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
                        .map(|(_, cert)| crate::app::ClientSubject(cert.subject().to_string()));
                    let svc =
                        router.map_request(move |req: hyper::Request<hyper::body::Incoming>| {
                            let mut req = req.map(axum::body::Body::new);
                            req.extensions_mut().insert(connect_info);
                            if let Some(s) = &subject {
                                req.extensions_mut().insert(s.clone());
                            }
                            req
                        });
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    // Closed before the drain, not after it: a connection attempted meanwhile is refused at once (a client
    // with several addresses fails over) instead of waiting in the backlog of a socket nobody accepts on.
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    Ok(())
}
