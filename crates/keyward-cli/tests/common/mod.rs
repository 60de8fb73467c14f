#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_client::Client;

pub const ROOT: &str = "kw.test-root-token-0123456789abcdef";

/// A port no other test of this process has been given: a server of an earlier test may still be draining
/// on a port the kernel now reports free, and a new server there would fail to bind while the old one still
/// answers the readiness probe.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether a server listens on a loopback address. A connection whose two ends are the same address does not
/// count: with nothing listening, a connect to a port in the ephemeral range can be given that very port as
/// its own and "connect" to itself (TCP simultaneous open), which would pass for a server that is not up yet.
pub fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
}

/// A real `keyward serve` process.
pub struct Server {
    pub child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// `keyward serve --dev` on a fresh port, with the fixed root token.
    pub fn dev(data_dir: &Path) -> Server {
        Self::start(data_dir, &["--dev"], &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)])
    }

    /// `keyward serve --dev` with `config` as its configuration file, both under `dir`.
    pub fn dev_with(dir: &Path, config: &str) -> Server {
        let file = dir.join("keyward.toml");
        std::fs::write(&file, config).unwrap();
        Self::start(
            &dir.join("data"),
            &["--dev", "--config", file.to_str().unwrap()],
            &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)],
        )
    }

    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
        ];
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            child: None,
            addr: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension(format!("{port}.log")),
            args,
        };
        s.spawn(env);
        s
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
        cmd.args(&self.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        cmd.env_remove("KEYWARD_DEV_ROOT_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let logged_before = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        self.child = Some(cmd.spawn().unwrap());
        self.wait_listening(logged_before);
    }

    /// Waits until this very process says it listens (it says so once its socket is bound) and the port
    /// answers: a connect alone could reach some other process's socket on a port handed out moments ago.
    fn wait_listening(&mut self, logged_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = self.addr.rsplit(':').next().unwrap().to_string();
        let bound_here = format!("://127.0.0.1:{port}");
        while Instant::now() < deadline {
            let bound = std::fs::read(&self.log).is_ok_and(|log| {
                String::from_utf8_lossy(log.get(logged_before..).unwrap_or_default())
                    .lines()
                    .filter_map(|l| l.split_once("listening on ").map(|(_, at)| at))
                    .any(|at| at.ends_with(&bound_here))
            });
            if bound && listening(&format!("127.0.0.1:{port}")) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited with {status}: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not start: {}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.addr, token.map(str::to_string)).unwrap()
    }

    pub fn root(&self) -> Client {
        self.client(Some(ROOT))
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop on SIGTERM; its log:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops and starts again on the same port and data directory.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn(env);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failing test shows what its server said: a refused connection or an odd answer is then
        // explained by the server's own log rather than left to guess.
        if std::thread::panicking() {
            eprintln!("log of the server at {}:\n{}", self.addr, self.logs());
        }
    }
}

/// A raw HTTP call for bad-input tests: returns status, headers' request id, and the JSON body. Asserts that
/// the answer may not be cached.
pub async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, serde_json::Value, Option<String>) {
    let http = reqwest::Client::new();
    let mut req = http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{addr}{path}"),
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    // Every answer, success or refusal, forbids caching: any may carry a plaintext, a data key or a token.
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store"),
        "{method} {path}"
    );
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, rid)
}

/// A key that needs one approval to be deleted, and its deletion requested by `requester` on `addr`:
/// (key id, approval id).
pub async fn deletion_awaiting_approval(
    root: &Client,
    addr: &str,
    requester: &str,
) -> (String, String) {
    let key = root
        .create_key(&keyward_api::CreateKeyRequest {
            spec: "AES_256".into(),
            quorum: Some(keyward_api::Quorum { approvals: 1 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .key_id;
    let (st, v, _) = raw(
        addr,
        "POST",
        &format!("/v1/keys/{key}/schedule-deletion"),
        Some(requester),
        Some(br#"{"pending_days": 7}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    (key, v["approval_id"].as_str().unwrap().to_string())
}

/// Two approvals of the request `id` sent at once, each `(node address, token)`. Asserts that exactly one
/// ran the operation and the other was told the request is no longer pending (409 `InvalidState`).
pub async fn approve_at_once(id: &str, first: (&str, &str), second: (&str, &str)) {
    let path = format!("/v1/approvals/{id}/approve");
    let (x, y) = tokio::join!(
        raw(first.0, "POST", &path, Some(first.1), None),
        raw(second.0, "POST", &path, Some(second.1), None)
    );
    let mut outcomes = [
        (x.0, x.1["status"].as_str().map(str::to_string)),
        (y.0, y.1["status"].as_str().map(str::to_string)),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [(200, Some("executed".to_string())), (409, None)],
        "{x:?} {y:?}"
    );
    let loser = if x.0 == 409 { &x.1 } else { &y.1 };
    assert_eq!(code_of(loser), "InvalidState", "{loser}");
}

pub fn code_of(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The PKCS#11 token for end-to-end tests: (module, label, pin). `scripts/test` creates one and names it in
/// `KEYWARD_TEST_PKCS11_*`; otherwise a fresh SoftHSM2 token is made in a temporary directory for this
/// process (and its children, through `SOFTHSM2_CONF`). Without SoftHSM2 the tests fail, never skip.
pub fn pkcs11_token() -> (String, String, String) {
    static SETUP: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();
    SETUP
        .get_or_init(|| {
            if let Ok(module) = std::env::var("KEYWARD_TEST_PKCS11_MODULE") {
                return (
                    module,
                    std::env::var("KEYWARD_TEST_PKCS11_TOKEN")
                        .unwrap_or_else(|_| "keyward-test".into()),
                    std::env::var("KEYWARD_TEST_PKCS11_PIN").unwrap_or_else(|_| "1234".into()),
                );
            }
            let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
            let conf = dir.path().join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!("directories.tokendir = {}\n", dir.path().display()),
            )
            .unwrap();
            std::env::set_var("SOFTHSM2_CONF", &conf);
            new_softhsm_token("keyward-test", "1234");
            (
                "/usr/lib/softhsm/libsofthsm2.so".into(),
                "keyward-test".into(),
                "1234".into(),
            )
        })
        .clone()
}

/// Creates another token in the same SoftHSM2 directory.
pub fn new_softhsm_token(label: &str, pin: &str) {
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            "5678",
        ])
        .output()
        .expect("softhsm2-util (package softhsm2) is needed for these tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new AES-256 key's id.
#[allow(dead_code)]
pub async fn aes_key(c: &Client) -> String {
    c.create_key(&keyward_api::CreateKeyRequest {
        spec: "AES_256".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .key_id
}

/// The audit records a query (`/v1/audit?{query}`) returns, read as root.
#[allow(dead_code)]
pub async fn audit_records(addr: &str, query: &str) -> Vec<serde_json::Value> {
    let (st, v, _) = raw(addr, "GET", &format!("/v1/audit?{query}"), Some(ROOT), None).await;
    assert_eq!(st, 200, "{v}");
    v["records"].as_array().unwrap().clone()
}

/// A GET as root whose answer is text (metrics, a report).
#[allow(dead_code)]
pub async fn text_as_root(addr: &str, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("{addr}{path}"))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Runs SQL against a SQLite database file from outside the service (Python's sqlite3), as an operator or
/// an intruder with access to the file would.
#[allow(dead_code)]
pub fn sqlite(db: &Path, statement: &str) {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=30); c.executescript(sys.argv[2]); c.commit()")
        .arg(db)
        .arg(statement)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{statement}");
}

/// The rows a query of a service's SQLite store returns, each row's columns joined by tabs.
pub fn sqlite_rows(db: &Path, query: &str) -> Vec<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=30)\nfor r in c.execute(sys.argv[2]): print('\\t'.join(map(str, r)))")
        .arg(db)
        .arg(query)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}
