//! Async client of the Keyward REST API.
//!
//! Give it one or more endpoints (`KEYWARD_ADDR`, comma-separated): a request that cannot connect to one node
//! moves on to the next, and the client remembers the node that answered. A sealed node is skipped the same
//! way. A request whose connection broke after it was sent is retried on another node only when repeating it
//! is harmless (reads and cryptographic operations, which change no state); a management call is never
//! applied twice. API errors come back typed, with the contract's error code.

pub mod envelope;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyward_api::*;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

/// A failed call.
#[derive(Debug)]
pub enum Error {
    /// The service answered with an error from the API's table.
    Api {
        /// HTTP status.
        status: u16,
        /// Error code (`NotFound`, `KeyDisabled`, ...).
        code: String,
        /// Message.
        message: String,
        /// The `x-request-id` of the answer: the key to its audit records (`GET /v1/audit?request_id=`).
        request_id: Option<String>,
    },
    /// The operation waits for quorum approval.
    Pending(ApprovalPending),
    /// No endpoint could be reached.
    Transport(String),
    /// The answer did not decode, or local input was bad.
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Api {
                status,
                code,
                message,
                request_id,
            } => {
                write!(f, "{code} ({status}): {message}")?;
                match request_id {
                    Some(id) => write!(f, " [request {id}]"),
                    None => Ok(()),
                }
            }
            Error::Pending(p) => write!(f, "waiting for quorum approval {}", p.approval_id),
            Error::Transport(m) => write!(f, "cannot reach Keyward: {m}"),
            Error::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The API error code, if the service answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, Error>;

/// Percent-encodes one path segment (key ids, `alias/NAME`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Keyward client.
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
    token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Builder options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// PEM CA certificates to trust for HTTPS endpoints, instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM, concatenated) for mutual TLS.
    pub identity_pem: Option<Vec<u8>>,
    /// Per-request timeout.
    pub timeout: Option<Duration>,
    /// Keep-alive connections per host.
    pub pool_max_idle_per_host: Option<usize>,
}

impl Client {
    /// A client for `addrs` (comma-separated base URLs) with an optional bearer token.
    pub fn new(addrs: &str, token: Option<String>) -> Result<Client> {
        Self::with_options(addrs, token, Options::default())
    }

    /// A client from `KEYWARD_ADDR` (default `http://127.0.0.1:9700`) and `KEYWARD_TOKEN`.
    pub fn from_env() -> Result<Client> {
        let addr = std::env::var("KEYWARD_ADDR").unwrap_or_else(|_| "http://127.0.0.1:9700".into());
        let token = std::env::var("KEYWARD_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let mut opts = Options::default();
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| Error::Invalid(format!("cannot read {path}: {e}")))
        };
        if let Ok(path) = std::env::var("KEYWARD_CACERT") {
            opts.ca_pem = Some(read(&path)?);
        }
        // A client certificate for mutual TLS: the certificate (chain) and its key, in PEM files of their own.
        match (
            std::env::var("KEYWARD_CLIENT_CERT"),
            std::env::var("KEYWARD_CLIENT_KEY"),
        ) {
            (Ok(cert), Ok(key)) => {
                let mut pem = read(&cert)?;
                pem.push(b'\n');
                pem.extend(zeroize::Zeroizing::new(read(&key)?).iter());
                opts.identity_pem = Some(pem);
            }
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                return Err(Error::Invalid(
                    "KEYWARD_CLIENT_CERT and KEYWARD_CLIENT_KEY go together".into(),
                ))
            }
            _ => {}
        }
        Self::with_options(&addr, token, opts)
    }

    /// A client with options.
    pub fn with_options(addrs: &str, token: Option<String>, opts: Options) -> Result<Client> {
        let endpoints: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().trim_end_matches('/').to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::Invalid("no Keyward address given".into()));
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Error::Invalid(format!(
                    "address {e} must start with http:// or https://"
                )));
            }
        }
        let mut b = reqwest::Client::builder()
            .timeout(opts.timeout.unwrap_or(Duration::from_secs(60)))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(opts.pool_max_idle_per_host.unwrap_or(64))
            // Below the server's default idle timeout (75 s), so that the client, not the server, ends an
            // idle connection and a request never races the server's close.
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        if let Some(pem) = &opts.ca_pem {
            // The operator's CA bundle replaces the system roots: a Keyward endpoint is trusted because the
            // deployment's own CA issued its certificate, not because any public CA did.
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Invalid(format!("CA bundle: {e}")))?;
            b = b.tls_certs_only(certs);
        }
        if let Some(pem) = &opts.identity_pem {
            b = b.identity(
                reqwest::Identity::from_pem(pem)
                    .map_err(|e| Error::Invalid(format!("client identity: {e}")))?,
            );
        }
        let http = b.build().map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Client {
            http,
            endpoints,
            current: AtomicUsize::new(0),
            token: token.map(Zeroizing::new),
        })
    }

    /// The endpoint currently in use.
    pub fn endpoint(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        self.endpoints
            .get(i)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Sends a request and returns status and body, failing over on connection errors.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        self.answer(method, path, body)
            .await
            .map(|(status, _, bytes)| (status, bytes))
    }

    /// [`Client::raw`], with the answer's `x-request-id` (which names the request's audit records), for
    /// callers that report refusals themselves.
    pub async fn answer(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>)> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last_err = String::new();
        for attempt in 0..n {
            let i = (start + attempt) % n;
            let Some(base) = self.endpoints.get(i) else {
                continue;
            };
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t.as_str());
            }
            if let Some(b) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            let repeatable = repeatable(&method, path);
            let answer = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let id = resp
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    resp.bytes().await.map(|b| (status, id, b))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((status, id, bytes)) => {
                    if status == StatusCode::SERVICE_UNAVAILABLE
                        && attempt + 1 < n
                        && is_sealed_answer(&bytes)
                    {
                        last_err = format!("{base}: sealed");
                        continue;
                    }
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((status, id, bytes.to_vec()));
                }
                Err(e) if e.is_connect() || repeatable => {
                    last_err = format!("{base}: {}", chain(&e));
                    continue;
                }
                Err(e) => return Err(Error::Transport(chain(&e))),
            }
        }
        Err(Error::Transport(last_err))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| Error::Invalid(e.to_string()))?),
            None => None,
        };
        let (status, id, bytes) = self.answer(method, path, body).await?;
        decode(status, id, &bytes)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    /// Every item of a paged list: `path` (which may hold a query already), then each `next_token` until
    /// the last page; `split` takes a page apart into its items and its token.
    async fn all_pages<P: DeserializeOwned, T>(
        &self,
        path: &str,
        split: impl Fn(P) -> (Vec<T>, Option<String>),
    ) -> Result<Vec<T>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        let mut url = path.to_string();
        loop {
            let (items, next) = split(self.get::<P>(&url).await?);
            all.extend(items);
            match next {
                Some(t) => url = format!("{path}{sep}next_token={}", segment(&t)),
                None => return Ok(all),
            }
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>(Method::POST, path, None).await
    }

    fn key_path(key: &str, rest: &str) -> String {
        format!("/v1/keys/{}{rest}", segment(key))
    }

    // ----- system -----

    /// `GET /v1/auth/self`: who this client's credential authenticates as, and what it carries.
    pub async fn whoami(&self) -> Result<CallerIdentity> {
        self.get("/v1/auth/self").await
    }
    /// `GET /v1/health` (503 answers are returned as health, not as errors).
    pub async fn health(&self) -> Result<Health> {
        let (_, bytes) = self.raw(Method::GET, "/v1/health", None).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(e.to_string()))
    }
    /// `GET /v1/sys/status`.
    pub async fn status(&self) -> Result<SysStatus> {
        self.get("/v1/sys/status").await
    }
    /// `POST /v1/sys/init`.
    pub async fn init(&self, shares: u8, threshold: u8) -> Result<InitResponse> {
        self.post("/v1/sys/init", &InitRequest { shares, threshold })
            .await
    }
    /// `POST /v1/sys/unseal`.
    pub async fn unseal(&self, share: &str) -> Result<SysStatus> {
        self.post(
            "/v1/sys/unseal",
            &UnsealRequest {
                share: Zeroizing::new(share.to_string()),
            },
        )
        .await
    }
    /// `POST /v1/sys/seal`.
    pub async fn seal(&self) -> Result<()> {
        self.post_empty::<Empty>("/v1/sys/seal").await.map(drop)
    }
    /// `POST /v1/sys/rotate-root`.
    pub async fn rotate_root(&self) -> Result<RotateRootResponse> {
        self.post_empty("/v1/sys/rotate-root").await
    }
    /// `POST /v1/audit/prune`: deletes the audit records through `through_seq` (or [`Error::Pending`]
    /// under quorum).
    pub async fn prune_audit(&self, through_seq: u64) -> Result<PruneAuditResponse> {
        self.post("/v1/audit/prune", &PruneAuditRequest { through_seq })
            .await
    }
    /// `POST /v1/sys/backup`: the encrypted snapshot's bytes.
    pub async fn backup(&self) -> Result<Vec<u8>> {
        let r: BackupResponse = self.post_empty("/v1/sys/backup").await?;
        Ok(r.backup.0)
    }
    /// `POST /v1/sys/restore`.
    pub async fn restore(&self, req: &RestoreRequest) -> Result<RestoreResponse> {
        self.post("/v1/sys/restore", req).await
    }
    /// `GET /metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let (status, id, bytes) = self.answer(Method::GET, "/metrics", None).await?;
        if !status.is_success() {
            return decode::<Empty>(status, id, &bytes).map(|_| String::new());
        }
        String::from_utf8(bytes).map_err(|e| Error::Invalid(e.to_string()))
    }

    // ----- keys -----

    /// `POST /v1/keys`.
    pub async fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyObject> {
        self.post("/v1/keys", req).await
    }
    /// `GET /v1/keys` with a raw query string (`state=Enabled&limit=10`).
    pub async fn list_keys(&self, query: &str) -> Result<KeyList> {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        self.get(&format!("/v1/keys{q}")).await
    }
    /// `GET /v1/keys/{key}`.
    pub async fn describe_key(&self, key: &str) -> Result<KeyObject> {
        self.get(&Self::key_path(key, "")).await
    }
    /// `PATCH /v1/keys/{key}`.
    pub async fn update_key(&self, key: &str, req: &UpdateKeyRequest) -> Result<KeyObject> {
        self.call(Method::PATCH, &Self::key_path(key, ""), Some(req))
            .await
    }
    /// `POST /v1/keys/{key}/{enable|disable|rotate|cancel-deletion}`.
    pub async fn key_action(&self, key: &str, action: &str) -> Result<KeyObject> {
        self.post_empty(&Self::key_path(key, &format!("/{action}")))
            .await
    }
    /// `GET /v1/keys/{key}/versions`: every version, oldest first (all pages).
    pub async fn versions(&self, key: &str) -> Result<VersionList> {
        let versions = self
            .all_pages(&Self::key_path(key, "/versions"), |l: VersionList| {
                (l.versions, l.next_token)
            })
            .await?;
        Ok(VersionList {
            versions,
            next_token: None,
        })
    }
    /// `POST /v1/keys/{key}/versions/{n}/{action}`.
    pub async fn version_action(&self, key: &str, n: u32, action: &str) -> Result<VersionObject> {
        self.post_empty(&Self::key_path(key, &format!("/versions/{n}/{action}")))
            .await
    }
    /// `POST /v1/keys/{key}/primary`.
    pub async fn set_primary(&self, key: &str, version: u32) -> Result<KeyObject> {
        self.post(
            &Self::key_path(key, "/primary"),
            &SetPrimaryRequest { version },
        )
        .await
    }
    /// `POST /v1/keys/{key}/schedule-deletion`.
    pub async fn schedule_deletion(&self, key: &str, pending_days: u32) -> Result<KeyObject> {
        self.post(
            &Self::key_path(key, "/schedule-deletion"),
            &ScheduleDeletionRequest {
                pending_days: Some(pending_days),
            },
        )
        .await
    }
    /// `GET /v1/keys/{key}/public-key`.
    pub async fn public_key(&self, key: &str) -> Result<PublicKeyResponse> {
        self.get(&Self::key_path(key, "/public-key")).await
    }
    /// `GET /v1/keys/{key}/import-parameters`.
    pub async fn import_parameters(&self, key: &str) -> Result<ImportParametersResponse> {
        self.get(&Self::key_path(key, "/import-parameters")).await
    }
    /// `POST /v1/keys/{key}/import`.
    pub async fn import(&self, key: &str, req: &ImportRequest) -> Result<KeyObject> {
        self.post(&Self::key_path(key, "/import"), req).await
    }
    /// `POST /v1/keys/{key}/delete-imported-material`.
    pub async fn delete_imported_material(&self, key: &str) -> Result<KeyObject> {
        self.post_empty(&Self::key_path(key, "/delete-imported-material"))
            .await
    }
    /// `POST /v1/keys/{key}/export`.
    pub async fn export(&self, key: &str, req: &ExportRequest) -> Result<ExportResponse> {
        self.post(&Self::key_path(key, "/export"), req).await
    }
    /// `PUT /v1/aliases/{name}`.
    pub async fn put_alias(&self, name: &str, key_id: &str) -> Result<AliasObject> {
        self.call(
            Method::PUT,
            &format!("/v1/aliases/{}", segment(name)),
            Some(&PutAliasRequest {
                key_id: key_id.into(),
            }),
        )
        .await
    }
    /// `DELETE /v1/aliases/{name}`.
    pub async fn delete_alias(&self, name: &str) -> Result<()> {
        self.call::<(), Empty>(
            Method::DELETE,
            &format!("/v1/aliases/{}", segment(name)),
            None,
        )
        .await
        .map(drop)
    }
    /// `GET /v1/aliases`.
    pub async fn list_aliases(&self, query: &str) -> Result<AliasList> {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        self.get(&format!("/v1/aliases{q}")).await
    }

    // ----- policies, approvals, MFA -----

    /// `PUT /v1/policies/{name}`: creates or replaces a policy and answers the stored document; a policy that
    /// touches a key under quorum answers [`Error::Pending`] instead.
    pub async fn put_policy(&self, name: &str, doc: &PolicyDoc) -> Result<PolicyDoc> {
        self.call(
            Method::PUT,
            &format!("/v1/policies/{}", segment(name)),
            Some(doc),
        )
        .await
    }
    /// `GET /v1/policies/{name}`.
    pub async fn get_policy(&self, name: &str) -> Result<PolicyDoc> {
        self.get(&format!("/v1/policies/{}", segment(name))).await
    }
    /// `DELETE /v1/policies/{name}` (or [`Error::Pending`] under quorum).
    pub async fn delete_policy(&self, name: &str) -> Result<()> {
        self.call::<(), Empty>(
            Method::DELETE,
            &format!("/v1/policies/{}", segment(name)),
            None,
        )
        .await
        .map(drop)
    }
    /// `GET /v1/approvals`, optionally only those in one status (`pending`, `executed`, ...): every page,
    /// oldest request first.
    pub async fn list_approvals(&self, status: Option<&str>) -> Result<Vec<ApprovalObject>> {
        let path = match status {
            Some(s) => format!("/v1/approvals?status={}", segment(s)),
            None => "/v1/approvals".into(),
        };
        self.all_pages(&path, |l: ApprovalList| (l.approvals, l.next_token))
            .await
    }
    /// `GET /v1/approvals/{id}`: one request, with its decisions and, once run, its result.
    pub async fn get_approval(&self, id: &str) -> Result<ApprovalObject> {
        self.get(&format!("/v1/approvals/{}", segment(id))).await
    }
    /// `POST /v1/approvals/{id}/approve`: the approval that completes the quorum runs the operation, whose
    /// answer is then in `result`.
    pub async fn approve(&self, id: &str) -> Result<ApprovalObject> {
        self.post_empty(&format!("/v1/approvals/{}/approve", segment(id)))
            .await
    }
    /// `POST /v1/approvals/{id}/reject`.
    pub async fn reject(&self, id: &str) -> Result<ApprovalObject> {
        self.post_empty(&format!("/v1/approvals/{}/reject", segment(id)))
            .await
    }
    /// `POST /v1/identities/{name}/mfa`: enrols (or re-enrols) TOTP for a user identity.
    pub async fn enroll_mfa(&self, name: &str) -> Result<MfaEnrollment> {
        self.post_empty(&format!("/v1/identities/{}/mfa", segment(name)))
            .await
    }

    // ----- cryptographic operations -----

    /// `POST /v1/keys/{key}/encrypt`.
    pub async fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        context: Option<Context>,
    ) -> Result<EncryptResponse> {
        let body = EncryptBody {
            plaintext: Some(SecretB64::new(plaintext.to_vec())),
            context,
            ..EncryptBody::default()
        };
        self.post(&Self::key_path(key, "/encrypt"), &body).await
    }
    /// `POST /v1/keys/{key}/encrypt` with an explicit body (batches, algorithms).
    pub async fn encrypt_with(&self, key: &str, body: &EncryptBody) -> Result<serde_json::Value> {
        self.post(&Self::key_path(key, "/encrypt"), body).await
    }
    /// `POST /v1/decrypt` (or the key's own decrypt when `key` is given).
    pub async fn decrypt(
        &self,
        key: Option<&str>,
        ciphertext: &[u8],
        context: Option<Context>,
        algorithm: Option<&str>,
    ) -> Result<DecryptResponse> {
        let body = DecryptBody {
            ciphertext: Some(B64(ciphertext.to_vec())),
            context,
            algorithm: algorithm.map(str::to_string),
            items: None,
        };
        let path = match key {
            Some(k) => Self::key_path(k, "/decrypt"),
            None => "/v1/decrypt".into(),
        };
        self.post(&path, &body).await
    }
    /// `POST /v1/keys/{key}/reencrypt`.
    pub async fn reencrypt(&self, key: &str, body: &ReencryptBody) -> Result<EncryptResponse> {
        self.post(&Self::key_path(key, "/reencrypt"), body).await
    }
    /// `POST /v1/keys/{key}/data-key`.
    pub async fn data_key(&self, key: &str, req: &DataKeyRequest) -> Result<DataKeyResponse> {
        self.post(&Self::key_path(key, "/data-key"), req).await
    }
    /// `POST /v1/keys/{key}/data-key-pair`.
    pub async fn data_key_pair(
        &self,
        key: &str,
        req: &DataKeyPairRequest,
    ) -> Result<DataKeyPairResponse> {
        self.post(&Self::key_path(key, "/data-key-pair"), req).await
    }
    /// `POST /v1/keys/{key}/sign`.
    pub async fn sign(&self, key: &str, req: &SignRequest) -> Result<SignResponse> {
        self.post(&Self::key_path(key, "/sign"), req).await
    }
    /// `POST /v1/keys/{key}/verify`.
    pub async fn verify(&self, key: &str, req: &VerifyRequest) -> Result<bool> {
        self.post::<_, Validity>(&Self::key_path(key, "/verify"), req)
            .await
            .map(|v| v.valid)
    }
    /// `POST /v1/keys/{key}/mac`.
    pub async fn mac(&self, key: &str, req: &MacRequest) -> Result<MacResponse> {
        self.post(&Self::key_path(key, "/mac"), req).await
    }
    /// `POST /v1/keys/{key}/verify-mac`.
    pub async fn verify_mac(&self, key: &str, req: &VerifyMacRequest) -> Result<bool> {
        self.post::<_, Validity>(&Self::key_path(key, "/verify-mac"), req)
            .await
            .map(|v| v.valid)
    }
    /// `POST /v1/keys/{key}/derive`.
    pub async fn derive(&self, key: &str, req: &DeriveRequest) -> Result<DeriveResponse> {
        self.post(&Self::key_path(key, "/derive"), req).await
    }
    /// `POST /v1/keys/{key}/protect`: ciphertext, mask and blind index per value (up to 1000), or that
    /// item's error.
    pub async fn protect(
        &self,
        key: &str,
        items: Vec<ProtectItem>,
    ) -> Result<BatchResponse<ProtectedItem>> {
        self.post(&Self::key_path(key, "/protect"), &FieldItems { items })
            .await
    }
    /// `POST /v1/keys/{key}/unprotect`.
    pub async fn unprotect(
        &self,
        key: &str,
        items: Vec<UnprotectItem>,
    ) -> Result<BatchResponse<UnprotectedItem>> {
        self.post(&Self::key_path(key, "/unprotect"), &FieldItems { items })
            .await
    }
    /// `POST /v1/keys/{key}/blind-index`: the search hashes alone.
    pub async fn blind_index(
        &self,
        key: &str,
        items: Vec<BlindIndexItem>,
    ) -> Result<BatchResponse<BlindIndexAnswer>> {
        self.post(&Self::key_path(key, "/blind-index"), &FieldItems { items })
            .await
    }
    /// `POST /v1/keys/{key}/agree`.
    pub async fn agree(&self, key: &str, peer_spki_der: &[u8]) -> Result<AgreeResponse> {
        self.post(
            &Self::key_path(key, "/agree"),
            &AgreeRequest {
                peer_public_key_der: B64(peer_spki_der.to_vec()),
            },
        )
        .await
    }
    /// `POST /v1/keys/{key}/decapsulate`.
    pub async fn decapsulate(
        &self,
        key: &str,
        ciphertext: &[u8],
        version: Option<u32>,
    ) -> Result<DecapsulateResponse> {
        self.post(
            &Self::key_path(key, "/decapsulate"),
            &DecapsulateRequest {
                ciphertext: B64(ciphertext.to_vec()),
                version,
                as_data_key: None,
                wrapping_key: None,
                context: None,
                include_plaintext: None,
            },
        )
        .await
    }
    /// `POST /v1/keys/{key}/decapsulate` with `"as_data_key": true`: the data key derived from the secret,
    /// encrypted under `wrapping_key` (the secret itself never leaves the service).
    pub async fn decapsulate_data_key(
        &self,
        key: &str,
        ciphertext: &[u8],
        version: Option<u32>,
        wrapping_key: &str,
        context: Option<Context>,
        include_plaintext: bool,
    ) -> Result<DataKeyResponse> {
        self.post(
            &Self::key_path(key, "/decapsulate"),
            &DecapsulateRequest {
                ciphertext: B64(ciphertext.to_vec()),
                version,
                as_data_key: Some(true),
                wrapping_key: Some(wrapping_key.to_string()),
                context,
                include_plaintext: Some(include_plaintext),
            },
        )
        .await
    }
    /// `POST /v1/random`.
    pub async fn random(&self, length: usize) -> Result<Vec<u8>> {
        self.post::<_, RandomResponse>("/v1/random", &RandomRequest { length })
            .await
            .map(|r| r.random.0)
    }
    /// `POST /v1/keys/{key}/csr`.
    pub async fn csr(&self, key: &str, req: &CsrRequest) -> Result<CsrResponse> {
        self.post(&Self::key_path(key, "/csr"), req).await
    }
    /// `POST /v1/keys/{key}/certificate`.
    pub async fn certificate(
        &self,
        key: &str,
        req: &CertificateRequest,
    ) -> Result<CertificateResponse> {
        self.post(&Self::key_path(key, "/certificate"), req).await
    }
}

/// An error with its causes, so "error sending request" says why (refused, certificate, timeout).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether a request may be sent again after its connection broke mid-way: it either never reached the node
/// or changed nothing there. Cryptographic operations qualify; an encrypt repeated yields a second,
/// equally valid ciphertext and the first one was never delivered.
fn repeatable(method: &Method, path: &str) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    const CRYPTO: [&str; 12] = [
        "/encrypt",
        "/decrypt",
        "/reencrypt",
        "/data-key",
        "/data-key-pair",
        "/sign",
        "/verify",
        "/mac",
        "/verify-mac",
        "/derive",
        "/public-key",
        "/v1/random",
    ];
    method == Method::POST && CRYPTO.iter().any(|suffix| path.ends_with(suffix))
}

fn is_sealed_answer(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v["error"]["code"] == "Sealed")
}

/// Placeholder for endpoints that answer `204` or an object the caller ignores.
#[derive(serde::Deserialize)]
struct Empty {}

fn decode<T: DeserializeOwned>(
    status: StatusCode,
    request_id: Option<String>,
    bytes: &[u8],
) -> Result<T> {
    if status == StatusCode::ACCEPTED {
        if let Ok(p) = serde_json::from_slice::<ApprovalPending>(bytes) {
            return Err(Error::Pending(p));
        }
    }
    if status.is_success() {
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
        return serde_json::from_slice(bytes)
            .map_err(|e| Error::Invalid(format!("unexpected answer: {e}")));
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => Err(Error::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            request_id,
        }),
        Err(_) => Err(Error::Api {
            status: status.as_u16(),
            code: "Unknown".into(),
            message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
            request_id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_encode_aliases() {
        assert_eq!(segment("alias/app-1"), "alias%2Fapp-1");
        assert_eq!(segment("6f0c-4b0e"), "6f0c-4b0e");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(Client::new("", None).is_err());
        assert!(Client::new("127.0.0.1:9700", None).is_err());
        let c = Client::new("http://a:1, http://b:2/", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.endpoint(), "http://a:1");
    }

    #[tokio::test]
    async fn fails_over_to_the_next_endpoint() {
        // The first endpoint refuses connections; the second is a tiny HTTP responder.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let body = r#"{"status":"ok","version":"t","node_id":"n2"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let dead_addr = dead.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(dead);
        let c = Client::new(&format!("http://{dead_addr},http://{addr}"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let h = c.health().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.node_id, "n2");
        assert_eq!(c.endpoint(), format!("http://{addr}"));
    }
}

/// Client-side half of BYOK: wraps key material for `POST /v1/keys/{key}/import`.
pub mod byok {
    use aws_lc_rs::key_wrap::{KeyEncryptionKey, KeyWrapPadded, AES_256};
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
    use zeroize::Zeroizing;

    use crate::{Error, Result};

    /// RSA-OAEP-SHA-256(ephemeral AES-256 key) || AES-KWP(material), with the import wrapping key (SPKI DER).
    pub fn wrap(wrapping_spki_der: &[u8], material: &[u8]) -> Result<Vec<u8>> {
        let bad = |m: &str| Error::Invalid(m.to_string());
        let public = PublicEncryptingKey::from_der(wrapping_spki_der)
            .map_err(|_| bad("wrapping key is not RSA"))?;
        let oaep =
            OaepPublicEncryptingKey::new(public).map_err(|_| bad("wrapping key is not RSA"))?;
        let mut ephemeral = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(ephemeral.as_mut()).map_err(|_| bad("random generator failed"))?;
        let mut out = vec![0u8; oaep.ciphertext_size()];
        let n = oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, ephemeral.as_ref(), &mut out, None)
            .map_err(|_| bad("RSA-OAEP failed"))?
            .len();
        out.truncate(n);
        let kek = KeyEncryptionKey::new(&AES_256, ephemeral.as_ref())
            .map_err(|_| bad("AES-KWP setup failed"))?;
        let mut wrapped = vec![0u8; material.len() + 16];
        let n = kek
            .wrap_with_padding(material, &mut wrapped)
            .map_err(|_| bad("AES-KWP failed"))?
            .len();
        out.extend_from_slice(&wrapped[..n]);
        Ok(out)
    }
}
