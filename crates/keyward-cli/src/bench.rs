//! The load generator (`keyward bench`) and the HTTP floor server (`keyward bench-floor`).
//!
//! `bench` keeps `--concurrency` requests in flight over keep-alive connections for `--duration` seconds
//! (bounded by `--max-requests`), then prints throughput and latency percentiles. Run it against the floor
//! server in the same session to see what share of the machine's raw HTTP capacity Keyward reaches. With
//! several comma-separated addresses the connections are spread evenly over the nodes of a cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Args;

/// Options of `keyward bench`.
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Server base URL, or several comma-separated nodes to spread the load over (defaults to KEYWARD_ADDR).
    #[arg(long, env = "KEYWARD_ADDR", default_value = "http://127.0.0.1:9700")]
    addr: String,
    /// Bearer token (defaults to KEYWARD_TOKEN).
    #[arg(long, env = "KEYWARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// encrypt | decrypt | sign | data-key | protect (1000 phone numbers per request) | protect-fpe (the same in
    /// mode fpe) | protect-fpe-card (1000 16-digit card numbers in mode fpe) | vault-encrypt (Vault's transit
    /// encrypt on `--vault-addr`, with a transit key made for the run) | aws-encrypt (the AWS KMS protocol's Encrypt, each request signed
    /// with Signature Version 4 by an access key made for the run) | floor.
    #[arg(long, default_value = "encrypt")]
    op: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Stop after this many measured requests.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Plaintext or message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Key to use (one is created when absent).
    #[arg(long)]
    key: Option<String>,
    /// With `--op floor`: send the requests this operation sends (its path, bearer token and body) rather
    /// than a bare GET, so that the floor carries the same load as the line it is compared with.
    #[arg(long, value_name = "OP")]
    like: Option<String>,
    /// With `--op vault-encrypt`: the address of the Vault API listener (`vault_listen`).
    #[arg(long)]
    vault_addr: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

struct Target {
    /// Every node's URL of the request.
    urls: Vec<String>,
    body: Option<Vec<u8>>,
    /// For the AWS protocol: the access key that signs each request.
    aws: Option<AwsSigner>,
}

/// Signs each request as an AWS SDK does: a fresh `X-Amz-Date`, every header sent signed.
struct AwsSigner {
    access_key_id: String,
    secret: zeroize::Zeroizing<String>,
    /// The body's hash: the body is the same in every request.
    payload_hash: String,
    /// The day's signing key, derived once per day as SDKs that cache it do.
    day: std::sync::Mutex<Option<(String, zeroize::Zeroizing<[u8; 32]>)>>,
}

impl AwsSigner {
    /// The headers of one signed request to `url` carrying `body`.
    fn headers(&self, url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        let host = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let date = keyward_aws::sigv4::amz_date(now);
        let key = {
            let mut day = self.day.lock().unwrap_or_else(|e| e.into_inner());
            match &*day {
                Some((d, k)) if date.starts_with(d.as_str()) => k.clone(),
                _ => {
                    let d = date.get(..8).unwrap_or_default().to_string();
                    let k = keyward_aws::sigv4::signing_key(
                        self.secret.as_bytes(),
                        &d,
                        "us-east-1",
                        "kms",
                    );
                    *day = Some((d, k.clone()));
                    k
                }
            }
        };
        keyward_aws::sigv4::kms_request_headers(
            &host,
            "Encrypt",
            body,
            &self.payload_hash,
            &self.access_key_id,
            &key,
            "us-east-1",
            now,
        )
    }
}

async fn prepare(a: &BenchArgs, http: &reqwest::Client) -> Result<Target, String> {
    let base = a
        .addr
        .split(',')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let urls = |path: &str| -> Vec<String> {
        a.addr
            .split(',')
            .map(|b| format!("{}{path}", b.trim().trim_end_matches('/')))
            .collect()
    };
    let payload = base64::engine::general_purpose::STANDARD.encode(vec![0x42u8; a.size]);
    if a.op == "floor" {
        let Some(like) = a.like.as_deref() else {
            return Ok(Target {
                urls: urls("/"),
                body: None,
                aws: None,
            });
        };
        // The floor answers every request alike: no key to create (a stand-in id as long as Keyward's),
        // and a decrypt would need a real ciphertext.
        if like == "decrypt" {
            return Err(
                "--like decrypt needs a ciphertext from Keyward; use encrypt, sign or data-key"
                    .into(),
            );
        }
        let (path, body) = request(
            like,
            "00000000-0000-4000-8000-000000000000",
            &payload,
            serde_json::Value::Null,
        )?;
        return Ok(Target {
            urls: urls(&path),
            body: Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
            aws: None,
        });
    }
    let token = a.token.clone().ok_or("a token is needed (KEYWARD_TOKEN)")?;
    let post = |path: String, body: serde_json::Value| {
        let req = http
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("setup failed: {v}"));
            }
            Ok::<_, String>(v)
        }
    };
    let spec = if a.op == "sign" {
        "ECC_NIST_P256"
    } else {
        "SYMMETRIC_DEFAULT"
    };
    let key = match &a.key {
        Some(k) => k.clone(),
        None => post(
            "/v1/keys".into(),
            serde_json::json!({"spec": spec, "description": "keyward bench"}),
        )
        .await?["key_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let key_path = keyward_client::segment(&key);
    let ciphertext = if a.op == "decrypt" {
        post(
            format!("/v1/keys/{key_path}/encrypt"),
            serde_json::json!({"plaintext": payload}),
        )
        .await?["ciphertext"]
            .clone()
    } else {
        serde_json::Value::Null
    };
    if a.op == "vault-encrypt" {
        // A transit key of the run's own: a Keyward key with the alias transit/<name>.
        let vault = a
            .vault_addr
            .as_deref()
            .ok_or("--op vault-encrypt needs --vault-addr")?
            .trim_end_matches('/');
        let name = format!("bench-{}", std::process::id());
        post(
            "/v1/keys".into(),
            serde_json::json!({"spec": "SYMMETRIC_DEFAULT", "alias": format!("alias/transit/{name}")}),
        )
        .await?;
        return Ok(Target {
            urls: vec![format!("{vault}/v1/transit/encrypt/{name}")],
            body: Some(
                serde_json::to_vec(&serde_json::json!({"plaintext": payload}))
                    .map_err(|e| e.to_string())?,
            ),
            aws: None,
        });
    }
    if a.op == "aws-encrypt" {
        // An identity of the run's own that may only use keys, and its access key.
        let name = format!("bench-aws-{}", std::process::id());
        post(
            "/v1/identities".into(),
            serde_json::json!({"name": name, "kind": "service", "roles": ["key-user"]}),
        )
        .await?;
        let k = post(
            format!("/v1/identities/{name}/access-keys"),
            serde_json::Value::Null,
        )
        .await?;
        let field = |f: &str| k[f].as_str().unwrap_or_default().to_string();
        let body = serde_json::to_vec(&serde_json::json!({"KeyId": key, "Plaintext": payload}))
            .map_err(|e| e.to_string())?;
        return Ok(Target {
            urls: urls("/"),
            aws: Some(AwsSigner {
                payload_hash: keyward_aws::sigv4::payload_hash(&body),
                access_key_id: field("access_key_id"),
                secret: zeroize::Zeroizing::new(field("secret_access_key")),
                day: std::sync::Mutex::new(None),
            }),
            body: Some(body),
        });
    }
    let (path, body) = request(&a.op, &key_path, &payload, ciphertext)?;
    Ok(Target {
        urls: urls(&path),
        body: Some(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
        aws: None,
    })
}

/// The path and body of one operation's request, as every measured request sends it.
fn request(
    op: &str,
    key_path: &str,
    payload: &str,
    ciphertext: serde_json::Value,
) -> Result<(String, serde_json::Value), String> {
    Ok(match op {
        "encrypt" => (
            format!("/v1/keys/{key_path}/encrypt"),
            serde_json::json!({"plaintext": payload}),
        ),
        "decrypt" => (
            "/v1/decrypt".to_string(),
            serde_json::json!({"ciphertext": ciphertext}),
        ),
        "sign" => (
            format!("/v1/keys/{key_path}/sign"),
            serde_json::json!({"message": payload, "algorithm": "ECDSA_SHA_256"}),
        ),
        "data-key" => (
            format!("/v1/keys/{key_path}/data-key"),
            serde_json::json!({"spec": "AES_256"}),
        ),
        // Field protection at its batch size: 1000 distinct mobile numbers per request, or card numbers (whose
        // FF1 cycle-walks to a valid Luhn digit, about ten FF1 calls per value).
        "protect" | "protect-fpe" | "protect-fpe-card" => {
            let mode = if op == "protect" { "encrypt" } else { "fpe" };
            let items: Vec<serde_json::Value> = (0..1000)
                .map(|i| {
                    if op == "protect-fpe-card" {
                        serde_json::json!({"value": luhn_complete(&format!("622202000{i:06}")),
                                           "type": "bank_card", "mode": mode})
                    } else {
                        serde_json::json!({"value": format!("1380000{i:04}"), "type": "phone",
                                           "mode": mode})
                    }
                })
                .collect();
            (
                format!("/v1/keys/{key_path}/protect"),
                serde_json::json!({ "items": items }),
            )
        }
        other => return Err(format!("unknown operation {other}")),
    })
}

/// `prefix` and the digit that makes it pass Luhn.
fn luhn_complete(prefix: &str) -> String {
    let sum: u32 = prefix
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let t = d * 2;
                if t > 9 {
                    t - 9
                } else {
                    t
                }
            } else {
                d
            }
        })
        .sum();
    format!("{prefix}{}", (10 - sum % 10) % 10)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default() as f64 / 1000.0
}

/// Runs the load and prints the result.
pub async fn run(a: BenchArgs) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let target = Arc::new(prepare(&a, &http).await?);
    let token = Arc::new(a.token.clone().unwrap_or_default());
    let start = Instant::now();
    let warm_end = start + Duration::from_secs(a.warmup);
    let end = warm_end + Duration::from_secs(a.duration);
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(a.max_requests));
    let mut tasks = Vec::new();
    for i in 0..a.concurrency.max(1) {
        let (http, target, token, budget) =
            (http.clone(), target.clone(), token.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let url = target.urls[i % target.urls.len()].as_str();
            let mut lat: Vec<u32> = Vec::with_capacity(64 * 1024);
            let mut errors = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let measured = now >= warm_end;
                if measured && budget.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                    break;
                }
                let req = match (&target.body, &target.aws) {
                    (Some(b), Some(signer)) => {
                        let mut req = http.post(url).body(b.clone());
                        for (name, value) in signer.headers(url, b) {
                            req = req.header(name, value);
                        }
                        req
                    }
                    (Some(b), None) => http
                        .post(url)
                        .bearer_auth(token.as_str())
                        .header("content-type", "application/json")
                        .body(b.clone()),
                    (None, _) => http.get(url),
                };
                let t0 = Instant::now();
                let ok = match req.send().await {
                    Ok(resp) => {
                        let good = resp.status().is_success();
                        good && resp.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                if measured {
                    if ok {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        all.extend(l);
        errors += e;
    }
    let measured_secs = (Instant::now().min(end) - warm_end).as_secs_f64().max(1e-9);
    all.sort_unstable();
    let rps = all.len() as f64 / measured_secs;
    let (p50, p99, p999) = (
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({"op": a.op, "concurrency": a.concurrency, "requests": all.len(), "errors": errors,
                "rps": rps, "p50_ms": p50, "p99_ms": p99, "p999_ms": p999})
        );
    } else {
        println!(
            "{:<10} c={:<4} requests={:<8} errors={:<5} {:>10.0} req/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms",
            a.op, a.concurrency, all.len(), errors, rps, p50, p99, p999
        );
    }
    Ok(())
}

/// A server that reads each request and answers it with a fixed 200 body: the HTTP floor of the machine.
/// `keyward bench --op floor --like encrypt` sends it the requests an encrypt line sends.
///
/// With `durable`, every request first appends a 300-byte record to that file and waits until a group
/// commit has made it durable, as an audited request must: the least any durable-audit design pays on this
/// machine (one hand-off to a flusher thread, one `pwrite` and one `fdatasync` per batch of a preallocated
/// file, no database, no MAC, no JSON), measured in the same run as everything else.
pub async fn floor(listen: SocketAddr, durable: Option<std::path::PathBuf>) -> Result<(), String> {
    const BODY: &str = r#"{"status":"ok","detail":"fixed response of the HTTP floor server used as the reference for keyward bench; about two hundred bytes long, like a small API answer"}"#;
    let app = match durable {
        None => axum::Router::new().fallback(|_request: axum::body::Bytes| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                BODY,
            )
        }),
        Some(path) => {
            let log = GroupCommit::start(&path)?;
            axum::Router::new().fallback(move |_request: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let status = if log.0.try_send(tx).is_ok() && rx.await == Ok(true) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        BODY,
                    )
                }
            })
        }
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("floor listening on http://{listen}");
    axum::serve(listener, app)
        .with_graceful_shutdown(keyward_server::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// The durable floor's flusher: one thread, batches of whatever is queued, written in one `pwrite` into a
/// zero-filled file (so a flush never changes the file's size or block map) and made durable by one
/// `fdatasync` before every request of the batch is answered.
#[derive(Clone)]
struct GroupCommit(std::sync::mpsc::SyncSender<tokio::sync::oneshot::Sender<bool>>);

impl GroupCommit {
    const RECORD: usize = 300;
    const SIZE: u64 = 64 << 20;

    fn start(path: &std::path::Path) -> Result<GroupCommit, String> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "{} (a new file is created, never an existing one overwritten): {e}",
                    path.display()
                )
            })?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(Self::SIZE >> 20) {
            file.write_all(&zeros).map_err(|e| e.to_string())?;
        }
        file.sync_all().map_err(|e| e.to_string())?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<tokio::sync::oneshot::Sender<bool>>(65_536);
        std::thread::Builder::new()
            .name("floor-flush".into())
            .spawn(move || {
                use std::os::unix::fs::FileExt as _;
                let mut offset = 0u64;
                let mut buf = Vec::new();
                let mut batch = Vec::new();
                while let Ok(first) = rx.recv() {
                    batch.push(first);
                    while let Ok(next) = rx.try_recv() {
                        batch.push(next);
                    }
                    buf.clear();
                    buf.resize(batch.len() * Self::RECORD, b'a');
                    if offset + buf.len() as u64 > Self::SIZE {
                        offset = 0;
                    }
                    let ok = file.write_all_at(&buf, offset).is_ok() && file.sync_data().is_ok();
                    offset += buf.len() as u64;
                    for done in batch.drain(..) {
                        let _ = done.send(ok);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(GroupCommit(tx))
    }
}
