//! Operational behaviour of the real binary: TLS, rate limiting, streaming envelope encryption, the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Cursor;
use std::process::Command;

use base64::Engine as _;
use common::{sqlite, Server, ROOT};
use keyward_api::CreateKeyRequest;
use keyward_client::{envelope, Client, Error, Options};

/// Runs `openssl` and insists that it succeeded.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`, `ca.key` in `dir`) for the server certificates of a test; returns the CA's path.
fn test_ca(dir: &std::path::Path) -> String {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    p("ca.pem")
}

/// A certificate with subject `subject` and the extensions `ext` (an OpenSSL extension file), valid for
/// `days`, issued by [`test_ca`] of the same `dir`: returns the paths of `<name>.pem` and `<name>.key`.
fn issue_certificate(
    dir: &std::path::Path,
    name: &str,
    subject: &str,
    ext: &str,
    days: u32,
) -> (String, String) {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (cert, key, csr, cnf) = (
        p(&format!("{name}.pem")),
        p(&format!("{name}.key")),
        p(&format!("{name}.csr")),
        p(&format!("{name}.cnf")),
    );
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(&cnf, ext).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        &days.to_string(),
        "-extfile",
        &cnf,
        "-out",
        &cert,
    ]);
    (cert, key)
}

/// A server certificate for 127.0.0.1 and localhost with subject `CN=<name>`, valid for `days`.
fn issue_server_certificate(dir: &std::path::Path, name: &str, days: u32) -> (String, String) {
    issue_certificate(
        dir,
        name,
        &format!("/CN={name}"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        days,
    )
}

/// A certificate's end of validity in Unix seconds, as OpenSSL reads it.
fn not_after(cert: &str) -> i64 {
    let out = Command::new("sh")
        .args([
            "-c",
            "date -u -d \"$(openssl x509 -noout -enddate -in \"$1\" | cut -d= -f2)\" +%s",
            "sh",
            cert,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A TLS connector that trusts the CAs of the PEM file `ca` only.
fn trusting(ca: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A root client of a TLS `server` that trusts the CAs of the PEM file `ca` only.
fn https_client(server: &Server, ca: &str) -> Client {
    let opts = Options {
        ca_pem: Some(std::fs::read(ca).unwrap()),
        ..Options::default()
    };
    Client::with_options(
        &server.addr.replace("http://", "https://"),
        Some(ROOT.into()),
        opts,
    )
    .unwrap()
}

/// The certificate a TLS server at `addr` presents to a new connection (DER), trusting `ca`.
async fn served_certificate(addr: &str, ca: &str) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = trusting(ca).connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The first certificate of a PEM file, as DER.
fn pem_certificate(path: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

/// What a TLS node serves after a reload attempt: `cert` to new connections, a working encryption under
/// `key` on the client's connection, and metrics giving `cert`'s expiry and `ok`/`refused` reloads so far.
async fn serving(c: &Client, addr: &str, ca: &str, cert: &str, key: &str, reloads: (u32, u32)) {
    assert_eq!(served_certificate(addr, ca).await, pem_certificate(cert));
    c.encrypt(key, b"still served", None).await.unwrap();
    let metrics = c.metrics().await.unwrap();
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keyward_tls_certificate_not_after_seconds "))
        .unwrap_or_else(|| panic!("no certificate expiry in the metrics:\n{metrics}"))
        .parse()
        .unwrap();
    assert_eq!(expiry, not_after(cert));
    for (result, n) in [("ok", reloads.0), ("refused", reloads.1)] {
        let line = format!("keyward_tls_reloads_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

/// A renewed certificate is taken up on SIGHUP without a restart (which in production would leave the
/// service sealed): new connections get it, a connection already open goes on working, and a reload from
/// broken files keeps the certificate in use. Without TLS, SIGHUP changes nothing and ends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca(dir.path());
    let (first, first_key) = issue_server_certificate(dir.path(), "localhost", 1);
    let (renewed, renewed_key) = issue_server_certificate(dir.path(), "renewed", 90);
    let (cert, key) = (
        dir.path().join("server.pem").to_str().unwrap().to_string(),
        dir.path().join("server.key").to_str().unwrap().to_string(),
    );
    std::fs::copy(&first, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--tls-cert", &cert, "--tls-key", &key],
        &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)],
    );
    let addr = server.addr.trim_start_matches("http://").to_string();
    let c = https_client(&server, &ca);
    let key_id = common::aes_key(&c).await;
    // Before any reload: the first certificate, its expiry in the metrics, no reloads counted.
    serving(&c, &addr, &ca, &first, &key_id, (0, 0)).await;
    let hangup = || {
        let pid = server.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    let said = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !server.logs().contains(what) {
            assert!(
                std::time::Instant::now() < deadline,
                "the server never said {what:?}:\n{}",
                server.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };

    // Renewed in place, then SIGHUP.
    std::fs::copy(&renewed, &cert).unwrap();
    std::fs::copy(&renewed_key, &key).unwrap();
    hangup();
    said("TLS certificate reloaded");
    assert!(
        server.logs().contains("subject CN=renewed"),
        "{}",
        server.logs()
    );
    serving(&c, &addr, &ca, &renewed, &key_id, (1, 0)).await;
    assert!(not_after(&renewed) > not_after(&first) + 80 * 86_400);

    // A key that does not belong to the certificate: refused, the renewed certificate stays in use.
    std::fs::copy(&first_key, &key).unwrap();
    hangup();
    said("TLS certificate not reloaded");
    assert!(server.logs().contains("do not match"), "{}", server.logs());
    serving(&c, &addr, &ca, &renewed, &key_id, (1, 1)).await;
    // Both reloads are in the audit log: the one that took effect names the certificate put in service by
    // its SHA-256, the refused one is an error.
    let (_, _, trail) = c
        .answer(
            reqwest::Method::GET,
            "/v1/audit?action=kms:ReloadTlsCertificate",
            None,
        )
        .await
        .unwrap();
    let trail: serde_json::Value = serde_json::from_slice(&trail).unwrap();
    let records = trail["records"].as_array().unwrap();
    let fingerprint: String =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &pem_certificate(&renewed))
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    assert_eq!(records.len(), 2, "{trail}");
    assert_eq!(records[0]["principal"], "system:signal");
    assert_eq!(records[0]["outcome"], "allow");
    assert_eq!(
        records[0]["resource"],
        format!("tls-certificate/{fingerprint}")
    );
    assert_eq!(records[1]["outcome"], "error");
    assert_eq!(records[1]["error_code"], "ValidationError");
    assert!(server.logs().contains(&fingerprint));

    // No reload without its record: with the audit log unwritable, a valid pair is refused too.
    let db = dir.path().join("data").join("keyward.db");
    sqlite(&db, "ALTER TABLE audit RENAME TO audit_away;");
    std::fs::copy(&first, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    hangup();
    said("the change cannot be recorded");
    assert_eq!(
        served_certificate(&addr, &ca).await,
        pem_certificate(&renewed)
    );
    sqlite(&db, "ALTER TABLE audit_away RENAME TO audit;");
    hangup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while served_certificate(&addr, &ca).await != pem_certificate(&first) {
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    serving(&c, &addr, &ca, &first, &key_id, (2, 2)).await;
    let (_, _, verify) = c
        .answer(reqwest::Method::GET, "/v1/audit/verify", None)
        .await
        .unwrap();
    let verify: serde_json::Value = serde_json::from_slice(&verify).unwrap();
    assert_eq!(verify["valid"], true, "{verify}");

    // Without TLS there is nothing to reload, and the service goes on.
    let mut plain = Server::dev(&dir.path().join("plain"));
    let pid = plain.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !plain.logs().contains("nothing to reload") {
        assert!(std::time::Instant::now() < deadline, "{}", plain.logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(plain.root().health().await.unwrap().status, "ok");
    assert!(!plain
        .root()
        .metrics()
        .await
        .unwrap()
        .contains("keyward_tls_certificate_not_after_seconds"));
    assert!(plain.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_only() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate it issued, as an operator would set up.
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let ca = test_ca(dir.path());
    let (cert, key) = issue_server_certificate(dir.path(), "localhost", 1);
    // 127.0.0.2 stands for a load balancer passing TLS through with a PROXY header.
    std::fs::write(p("keyward.toml"), "proxy_protocol_from = [\"127.0.0.2\"]\n").unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--config",
            &p("keyward.toml"),
        ],
        &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)],
    );
    let https = server.addr.replace("http://", "https://");
    let c = https_client(&server, &ca);
    assert_eq!(c.health().await.unwrap().status, "ok");
    let k = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = c.encrypt(&k.key_id, b"over tls", None).await.unwrap();
    assert_eq!(
        c.decrypt(None, &e.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"over tls"
    );
    // Through the balancer: the PROXY header, then the TLS handshake, then HTTP, recorded as the client.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = server.addr.rsplit(':').next().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut tcp = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        tcp.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 40000 9700\r\n")
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = trusting(&ca).connect(name, tcp).await.unwrap();
        tls.write_all(
            format!(
                "GET /v1/auth/self HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ROOT}\r\n\
                 x-request-id: through-the-balancer\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let records = c
            .answer(
                reqwest::Method::GET,
                "/v1/audit?request_id=through-the-balancer",
                None,
            )
            .await
            .unwrap();
        assert!(
            String::from_utf8_lossy(&records.2).contains("\"source_ip\":\"192.0.2.44\""),
            "{}",
            String::from_utf8_lossy(&records.2)
        );
    }
    // A client that does not trust the certificate is refused, and plain HTTP gets nothing.
    let untrusting = Client::new(&https, Some(ROOT.into())).unwrap();
    assert!(matches!(
        untrusting.health().await,
        Err(Error::Transport(_))
    ));
    assert!(server.client(None).health().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev_with(
        dir.path(),
        "rate_limit_per_second = 2\nrate_limit_burst = 3\n",
    );
    let mut throttled = 0;
    for _ in 0..10 {
        let (status, body, _) = common::raw(
            &server.addr,
            "POST",
            "/v1/random",
            Some(ROOT),
            Some(br#"{"length": 8}"#.to_vec()),
        )
        .await;
        if status == 429 {
            assert_eq!(common::code_of(&body), "Throttled");
            throttled += 1;
        }
    }
    assert!(throttled >= 5, "only {throttled} of 10 requests throttled");
    let (_, audit, _) = common::raw(
        &server.addr,
        "GET",
        "/v1/audit?outcome=deny",
        Some(ROOT),
        None,
    )
    .await;
    let _ = audit; // the audit read itself may be throttled; the denial records are checked below once the bucket refills
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let (status, audit, _) = common::raw(
        &server.addr,
        "GET",
        "/v1/audit?outcome=deny&action=kms:GenerateRandom",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["error_code"] == "Throttled"));
    assert!(audit["records"].as_array().unwrap().len() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_files_detect_truncation_reordering_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let c = server.root();
    let k = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut plain = vec![0u8; 3 * 1024 * 1024 + 777];
    aws_lc_rs::rand::fill(&mut plain).unwrap();
    let context = Some(
        [("file".to_string(), "backup.tar".to_string())]
            .into_iter()
            .collect(),
    );
    let mut sealed = Vec::new();
    let seg = 64 * 1024;
    envelope::encrypt(
        &c,
        &k.key_id,
        context.clone(),
        seg,
        Cursor::new(plain.clone()),
        &mut sealed,
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        envelope::decrypt(&c, context.clone(), Cursor::new(sealed.clone()), &mut out)
            .await
            .unwrap(),
        plain.len() as u64
    );
    assert_eq!(out, plain);

    let header_len = 50 + u16::from_be_bytes([sealed[48], sealed[49]]) as usize;
    let seg_ct = seg as usize + 16;
    let attempt = |bytes: Vec<u8>, ctx: Option<keyward_api::Context>| {
        let c = &c;
        async move { envelope::decrypt(c, ctx, Cursor::new(bytes), Vec::new()).await }
    };
    // Truncated at a segment boundary, mid-segment, and by one byte.
    for cut in [
        header_len + 10 * seg_ct,
        header_len + 10 * seg_ct + 100,
        sealed.len() - 1,
    ] {
        assert!(
            attempt(sealed[..cut].to_vec(), context.clone())
                .await
                .is_err(),
            "truncation at {cut} accepted"
        );
    }
    // Two segments swapped.
    let mut swapped = sealed.clone();
    let (a, b) = (header_len + seg_ct, header_len + 2 * seg_ct);
    let first: Vec<u8> = swapped[a..a + seg_ct].to_vec();
    swapped.copy_within(b..b + seg_ct, a);
    swapped[b..b + seg_ct].copy_from_slice(&first);
    assert!(
        attempt(swapped, context.clone()).await.is_err(),
        "reordering accepted"
    );
    // A flipped bit in the body, in the header, and the wrong context.
    let mut flipped = sealed.clone();
    flipped[header_len + 5 * seg_ct + 9] ^= 1;
    assert!(attempt(flipped, context.clone()).await.is_err());
    let mut header = sealed.clone();
    header[12] ^= 1;
    assert!(attempt(header, context.clone()).await.is_err());
    assert!(attempt(sealed.clone(), None).await.is_err());
    // An empty file round-trips.
    let mut empty = Vec::new();
    envelope::encrypt(
        &c,
        &k.key_id,
        None,
        seg,
        Cursor::new(Vec::new()),
        &mut empty,
    )
    .await
    .unwrap();
    assert_eq!(
        envelope::decrypt(&c, None, Cursor::new(empty), Vec::new())
            .await
            .unwrap(),
        0
    );
}

/// Runs the `keyward` binary against `addr` as the holder of `token`, feeding it `stdin`.
fn run_keyward(addr: &str, token: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(args)
        .env("KEYWARD_ADDR", addr)
        .env("KEYWARD_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// The standard output of a run that must have succeeded.
fn succeeded(args: &[&str], out: std::process::Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "keyward {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The operator's commands as scripts drive them, shares given on stdin: init, unseal share by share, seal,
/// and minting a new root token from a threshold of shares (one per line).
#[test]
fn the_operator_commands_take_shares_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[], &[]);
    let run =
        |token: &str, args: &[&str], stdin: &[u8]| run_keyward(&server.addr, token, args, stdin);
    let init: serde_json::Value = serde_json::from_slice(&succeeded(
        &["operator", "init"],
        run(
            "",
            &[
                "--json",
                "operator",
                "init",
                "--shares",
                "3",
                "--threshold",
                "2",
            ],
            b"",
        ),
    ))
    .unwrap();
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let root = init["root_token"].as_str().unwrap().to_string();
    let status = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&succeeded(&["operator", "unseal"], out)).unwrap()
    };
    // A share piped with its newline; the same share twice counts once; a second one unseals.
    let first = format!("{}\n", shares[0]);
    let v = status(run("", &["--json", "operator", "unseal"], first.as_bytes()));
    assert_eq!(
        (v["sealed"].as_bool(), v["progress"].as_u64()),
        (Some(true), Some(1))
    );
    // The same share again counts once, and says so (exit status 1).
    let again = run("", &["--json", "operator", "unseal"], first.as_bytes());
    assert!(!again.status.success());
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["progress"].as_u64(), Some(1), "{v}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("given already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Nothing on stdin: said so, nothing sent.
    let empty = run("", &["operator", "unseal"], b"");
    assert!(!empty.status.success());
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("nothing on standard input for the share"),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    let v = status(run("", &["--json", "operator", "unseal", &shares[2]], b""));
    assert_eq!(v["sealed"].as_bool(), Some(false), "{v}");
    // Not a share: refused by name, nothing changes.
    let bad = run("", &["operator", "unseal"], b"not a share\n");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("ValidationError"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    succeeded(
        &["operator", "seal"],
        run(&root, &["operator", "seal"], b""),
    );
    let v = status(run("", &["--json", "operator", "status"], b""));
    assert_eq!(v["sealed"].as_bool(), Some(true), "{v}");
    for s in &shares[1..] {
        run("", &["operator", "unseal"], s.as_bytes());
    }
    // Two shares, one per line, mint a root token that works.
    let lines = format!("{}\n\n{}\n", shares[0], shares[1]);
    let minted: serde_json::Value = serde_json::from_slice(&succeeded(
        &["operator", "generate-root"],
        run(
            &root,
            &["--json", "operator", "generate-root"],
            lines.as_bytes(),
        ),
    ))
    .unwrap();
    let token = minted["root_token"].as_str().unwrap();
    assert_ne!(token, root);
    let who = String::from_utf8(succeeded(&["whoami"], run(token, &["whoami"], b""))).unwrap();
    assert!(who.contains("admin"), "{who}");
}

/// CLI arguments creating an ECDSA P-256 signing key, answered in JSON.
const CREATE_P256_SIGNER: &[&str] = &[
    "--json",
    "key",
    "create",
    "--spec",
    "ECC_NIST_P256",
    "--usage",
    "SIGN_VERIFY",
];

#[test]
fn the_cli_drives_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    // The first address refuses connections: the CLI fails over to the second.
    let addrs = format!("http://127.0.0.1:1,{}", server.addr);
    let run_cli = |args: &[&str], stdin: &[u8]| run_keyward(&addrs, ROOT, args, stdin);
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        succeeded(args, run_cli(args, stdin.unwrap_or_default()))
    };
    let created: serde_json::Value = serde_json::from_slice(&cli(
        &[
            "--json",
            "key",
            "create",
            "--alias",
            "alias/cli",
            "--tag",
            "env=test",
        ],
        None,
    ))
    .unwrap();
    let key_id = created["key_id"].as_str().unwrap().to_string();
    let ct = cli(
        &["encrypt", "alias/cli", "--context", "app=cli"],
        Some(b"from the command line"),
    );
    let ct_path = dir.path().join("ct.b64");
    std::fs::write(&ct_path, &ct).unwrap();
    let pt = cli(
        &[
            "decrypt",
            "--context",
            "app=cli",
            "--in",
            ct_path.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(pt, b"from the command line");
    let table = String::from_utf8(cli(&["key", "list"], None)).unwrap();
    assert!(table.contains(&key_id) && table.contains("alias/cli"));
    cli(&["key", "rotate", "alias/cli"], None);
    let versions: serde_json::Value =
        serde_json::from_slice(&cli(&["--json", "key", "versions", &key_id], None)).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    // Large file, streaming.
    let big = dir.path().join("big.bin");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    cli(
        &["encrypt", "alias/cli", "--file", big.to_str().unwrap()],
        None,
    );
    let restored = dir.path().join("restored.bin");
    cli(
        &[
            "decrypt",
            "--file",
            &format!("{}.kws", big.display()),
            "--out",
            restored.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(std::fs::read(&restored).unwrap(), data);
    // Plaintext written to a file is its owner's only; a failed decryption leaves nothing, not even
    // the verified part, and no temporary file remains either way.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&restored), 0o600);
    let sealed = std::fs::read(format!("{}.kws", big.display())).unwrap();
    let cut = dir.path().join("cut.kws");
    std::fs::write(&cut, &sealed[..sealed.len() - 1000]).unwrap();
    let partial = dir.path().join("partial.bin");
    let failed = run_cli(
        &[
            "decrypt",
            "--file",
            cut.to_str().unwrap(),
            "--out",
            partial.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("truncated"));
    assert!(!partial.exists());
    let small = dir.path().join("small.txt");
    cli(
        &[
            "decrypt",
            "--context",
            "app=cli",
            "--in",
            ct_path.to_str().unwrap(),
            "--out",
            small.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(std::fs::read(&small).unwrap(), b"from the command line");
    assert_eq!(mode(&small), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let signer: serde_json::Value = serde_json::from_slice(&cli(
        &[
            "--json",
            "key",
            "create",
            "--spec",
            "ED25519",
            "--usage",
            "SIGN_VERIFY",
        ],
        None,
    ))
    .unwrap();
    let sid = signer["key_id"].as_str().unwrap();
    let sig =
        String::from_utf8(cli(&["sign", sid, "--algorithm", "ED25519"], Some(b"doc"))).unwrap();
    let verdict = cli(
        &[
            "verify",
            sid,
            "--algorithm",
            "ED25519",
            "--signature",
            sig.trim(),
        ],
        Some(b"doc"),
    );
    assert_eq!(verdict, b"valid\n");
    // Without --algorithm: the key spec's usual one, here ECDSA with SHA-256 (a DER signature that
    // OpenSSL verifies with the public key).
    let p256: serde_json::Value = serde_json::from_slice(&cli(CREATE_P256_SIGNER, None)).unwrap();
    let pid = p256["key_id"].as_str().unwrap();
    let sig = String::from_utf8(cli(&["sign", pid], Some(b"doc"))).unwrap();
    let verdict = cli(&["verify", pid, "--signature", sig.trim()], Some(b"doc"));
    assert_eq!(verdict, b"valid\n");
    let pem = dir.path().join("p256.pem");
    std::fs::write(&pem, cli(&["key", "public-key", pid], None)).unwrap();
    let der_sig = dir.path().join("p256.sig");
    std::fs::write(
        &der_sig,
        base64::engine::general_purpose::STANDARD
            .decode(sig.trim())
            .unwrap(),
    )
    .unwrap();
    let doc = dir.path().join("doc");
    std::fs::write(&doc, b"doc").unwrap();
    let openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(&der_sig)
        .arg(&doc)
        .output()
        .unwrap();
    assert!(openssl.status.success(), "{openssl:?}");
    // Too much for one request: the refusal says what to use instead.
    let big = run_cli(&["encrypt", &key_id], &vec![7u8; 100_000]);
    assert!(!big.status.success());
    let said = String::from_utf8_lossy(&big.stderr);
    assert!(
        said.contains("PayloadTooLarge (413)") && said.contains("use --file"),
        "{said}"
    );
    // A key that does not sign: a clear refusal before any request is made.
    let refused = run_cli(&["sign", &key_id], b"doc");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("(spec SYMMETRIC_DEFAULT) has no signing algorithm"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let status = String::from_utf8(cli(&["operator", "status"], None)).unwrap();
    assert!(status.contains("sealed") && status.contains("false"));
}

#[test]
fn the_cli_covers_identities_pki_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let run = |args: &[&str], stdin: &[u8]| run_keyward(&server.addr, ROOT, args, stdin);
    let ok =
        |args: &[&str], stdin: &[u8]| String::from_utf8(succeeded(args, run(args, stdin))).unwrap();
    ok(
        &[
            "identity",
            "create",
            "bob",
            "--kind",
            "user",
            "--role",
            "key-user",
            "--password-stdin",
        ],
        b"a long enough password\n",
    );
    let login: serde_json::Value = serde_json::from_str(&ok(
        &["--json", "login", "bob"],
        b"a long enough password\n",
    ))
    .unwrap();
    assert!(login["token"].as_str().unwrap().starts_with("kw."));
    let bad = run(&["login", "bob"], b"wrong password here\n");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Unauthenticated"));
    // People get tables, scripts ask for JSON.
    let table = ok(&["token", "bob", "--ttl", "600"], b"");
    assert!(
        table.starts_with("FIELD") && table.contains("token_id"),
        "{table}"
    );
    let token: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "token", "bob", "--ttl", "600"], b"")).unwrap();
    ok(&["revoke", token["token_id"].as_str().unwrap()], b"");
    let missing = run(&["token", "nobody"], b"");
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        said.trim()
            .strip_prefix("keyward: NotFound (404): identity nobody does not exist [request ")
            .is_some_and(|rest| rest.ends_with(']')),
        "{said}"
    );

    let key: serde_json::Value = serde_json::from_str(&ok(CREATE_P256_SIGNER, b"")).unwrap();
    let id = key["key_id"].as_str().unwrap();
    let cert = ok(
        &[
            "certificate",
            id,
            "--subject",
            "CN=cli test",
            "--days",
            "2",
            "--ca",
        ],
        b"",
    );
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let csr = ok(
        &["csr", id, "--subject", "CN=svc", "--san", "svc.local"],
        b"",
    );
    assert!(csr.contains("CERTIFICATE REQUEST"));
    let verify: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "audit", "--verify"], b"")).unwrap();
    assert_eq!(verify["valid"], true);
    assert!(ok(&["audit", "--verify"], b"")
        .lines()
        .any(|l| l.split_whitespace().eq(["valid", "true"])));
    let denied: serde_json::Value = serde_json::from_str(&ok(
        &[
            "--json",
            "audit",
            "--filter",
            "action=kms:Login&outcome=deny",
        ],
        b"",
    ))
    .unwrap();
    assert!(
        !denied["records"].as_array().unwrap().is_empty(),
        "the failed login was not audited"
    );
    let listed = ok(&["audit", "--filter", "action=kms:Login&outcome=deny"], b"");
    let mut lines = listed.lines();
    assert!(lines.next().unwrap().starts_with("SEQ  TIME"), "{listed}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    // The failed login names the account it tried.
    assert_eq!(
        (row[2], row[4], row[5], row[6], row[7]),
        (
            "anonymous",
            "kms:Login",
            "identity/bob",
            "deny",
            "Unauthenticated"
        ),
        "{listed}"
    );
    // Typed filters: a key named by an alias (looked up, so the records found are its id's), every page
    // followed (--all), JSON lines for export.
    let trail: serde_json::Value = serde_json::from_str(&ok(
        &[
            "--json",
            "key",
            "create",
            "--spec",
            "AES_256",
            "--alias",
            "alias/trail",
        ],
        b"",
    ))
    .unwrap();
    let trail_id = trail["key_id"].as_str().unwrap();
    for _ in 0..4 {
        ok(&["encrypt", "alias/trail"], b"x");
    }
    let lines = ok(
        &[
            "--json",
            "audit",
            "--key",
            "alias/trail",
            "--limit",
            "2",
            "--all",
        ],
        b"",
    );
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    // The service looks the alias up for the filter: the CLI makes no request of its own for it.
    assert_eq!(
        actions,
        [
            "kms:CreateKey",
            "kms:Encrypt",
            "kms:Encrypt",
            "kms:Encrypt",
            "kms:Encrypt"
        ],
        "{lines}"
    );
    assert!(records.iter().all(|r| r["key_id"] == trail_id), "{lines}");
    assert!(records
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    let table = ok(
        &[
            "audit",
            "--key",
            trail_id,
            "--action",
            "kms:Encrypt",
            "--limit",
            "1",
            "--all",
        ],
        b"",
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("SEQ")).count(),
        1,
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains("kms:Encrypt")).count(),
        4,
        "{table}"
    );
    // Page by page, following the token each page prints, the same four records.
    let mut seen = 0;
    let mut next: Option<String> = None;
    loop {
        let mut args = vec![
            "audit",
            "--key",
            trail_id,
            "--action",
            "kms:Encrypt",
            "--limit",
            "3",
        ];
        if let Some(t) = &next {
            args.extend(["--next-token", t.as_str()]);
        }
        let page = ok(&args, b"");
        seen += page.lines().filter(|l| l.contains("kms:Encrypt")).count();
        next = page
            .split("--next-token ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_string);
        if next.is_none() {
            break;
        }
        assert!(page.contains("--all for every one"), "{page}");
    }
    assert_eq!(seen, 4);
    let denied = ok(
        &[
            "--json",
            "audit",
            "--outcome",
            "deny",
            "--principal",
            "anonymous",
        ],
        b"",
    );
    let denied: serde_json::Value = serde_json::from_str(&denied).unwrap();
    assert!(denied["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "kms:Login"));
    let wrong = run(&["audit", "--since", "yesterday"], b"");
    let said = String::from_utf8_lossy(&wrong.stderr).to_string();
    assert!(
        said.contains("since must be an RFC 3339 UTC time"),
        "{said}"
    );
    // A refusal names its request, and that id finds the refusal's record (and only it).
    let request = said
        .split("[request ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no request id in {said}"));
    let found = ok(&["--json", "audit", "--request-id", request, "--all"], b"");
    let found: Vec<serde_json::Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (
            &found[0]["action"],
            &found[0]["outcome"],
            &found[0]["error_code"]
        ),
        (
            &serde_json::json!("kms:ReadAudit"),
            &serde_json::json!("error"),
            &serde_json::json!("ValidationError")
        )
    );
    // The signed checkpoint is a document to keep: JSON without being asked.
    let cp: serde_json::Value = serde_json::from_str(&ok(&["checkpoint"], b"")).unwrap();
    assert!(cp["signature"].is_string());
    assert!(ok(&["metrics"], b"").contains("keyward_requests_total"));
    // With --json, metrics are JSON; the report is a summary table by default and whole with --json.
    let metrics: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "metrics"], b"")).unwrap();
    assert!(metrics["keyward_sealed"].is_number(), "{metrics}");
    let summary = ok(&["report"], b"");
    assert!(summary.starts_with("FIELD"), "{summary}");
    assert!(
        summary.contains("audit_chain_valid") && summary.lines().count() < 30,
        "{summary}"
    );
    let whole: serde_json::Value = serde_json::from_str(&ok(&["--json", "report"], b"")).unwrap();
    assert!(whole["inventory"]["by_spec"].is_object(), "{whole}");
}

/// The current code of an `otpauth://totp/...?secret=BASE32&...` URI (RFC 6238: HMAC-SHA-1, 6 digits, 30 s).
fn totp_code(uri: &str) -> String {
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let mut key = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in secret.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {secret}"),
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            key.push((acc >> bits) as u8);
        }
    }
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30;
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key),
        &step.to_be_bytes(),
    );
    let t = tag.as_ref();
    let at = usize::from(t[19] & 15);
    let n = u32::from_be_bytes([t[at] & 0x7f, t[at + 1], t[at + 2], t[at + 3]]);
    format!("{:06}", n % 1_000_000)
}

#[test]
fn the_cli_manages_policies_approvals_mfa_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let run =
        |token: &str, args: &[&str], stdin: &[u8]| run_keyward(&server.addr, token, args, stdin);
    let ok = |token: &str, args: &[&str]| {
        String::from_utf8(succeeded(args, run(token, args, b""))).unwrap()
    };
    let json = |token: &str, args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(token, &all)).unwrap()
    };
    let refused = |token: &str, args: &[&str], stdin: &[u8]| {
        let out = run(token, args, stdin);
        assert!(!out.status.success(), "keyward {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    };

    let health = ok(ROOT, &["health"]);
    assert!(
        health
            .lines()
            .any(|l| l.split_whitespace().eq(["status", "ok"])),
        "{health}"
    );

    // Policies: checked locally (a misspelt field is named before anything is sent), validated by the service.
    let doc = serde_json::json!({"statements": [
        {"effect": "allow", "actions": ["kms:Encrypt", "kms:Decrypt"], "resources": ["alias/app-*"]}
    ]});
    let file = dir.path().join("policy.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let file = file.to_str().unwrap();
    let table = ok(ROOT, &["policy", "put", "app-crypto", "--in", file]);
    assert!(
        table.starts_with("EFFECT") && table.contains("kms:Encrypt,kms:Decrypt"),
        "{table}"
    );
    assert_eq!(json(ROOT, &["policy", "show", "app-crypto"]), doc);
    let typo = refused(
        ROOT,
        &["policy", "put", "typo"],
        br#"{"statements": [{"effect": "allow", "action": []}]}"#,
    );
    assert!(
        typo.contains("not a policy document") && typo.contains("action"),
        "{typo}"
    );
    let invalid = refused(
        ROOT,
        &["policy", "put", "bad"],
        br#"{"statements": [{"effect": "permit", "actions": ["kms:*"], "resources": ["*"]}]}"#,
    );
    assert!(
        invalid.starts_with("keyward: ValidationError (400)"),
        "{invalid}"
    );
    assert!(refused(ROOT, &["policy", "show", "bad"], b"").contains("NotFound (404)"));

    // An identity bound to the policy by `--policy` may use the app's keys and no others.
    json(ROOT, &["key", "create", "--alias", "alias/app-orders"]);
    let other = json(ROOT, &["key", "create"]);
    ok(
        ROOT,
        &["identity", "create", "orders-svc", "--policy", "app-crypto"],
    );
    let svc = json(ROOT, &["token", "orders-svc"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let ct = succeeded(&[], run(&svc, &["encrypt", "alias/app-orders"], b"order 1"));
    let plain = succeeded(&[], run(&svc, &["decrypt"], &ct));
    assert_eq!(plain, b"order 1");
    let denied = refused(
        &svc,
        &["encrypt", other["key_id"].as_str().unwrap()],
        b"order 2",
    );
    assert!(denied.contains("AccessDenied (403)"), "{denied}");

    // Quorum: a destructive operation is accepted (202, exit status 0) and waits; the requester cannot
    // approve it; another admin approves one request and rejects another.
    let q = json(ROOT, &["key", "create", "--quorum", "1"]);
    let q_id = q["key_id"].as_str().unwrap();
    ok(ROOT, &["key", "rotate", q_id]);
    let destroy = run(ROOT, &["key", "version", q_id, "1", "destroy"], b"");
    assert!(
        destroy.status.success(),
        "{}",
        String::from_utf8_lossy(&destroy.stderr)
    );
    let stdout = String::from_utf8(destroy.stdout).unwrap();
    let hint = String::from_utf8(destroy.stderr).unwrap();
    let destroy_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("approval_id"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        hint.contains(&format!("keyward approval approve {destroy_id}")),
        "{hint}"
    );
    let deletion = json(ROOT, &["key", "schedule-deletion", q_id, "--days", "7"]);
    assert_eq!(deletion["status"], "pending");
    let deletion_id = deletion["approval_id"].as_str().unwrap();
    assert_eq!(json(ROOT, &["key", "show", q_id])["state"], "Enabled");

    let listed = ok(ROOT, &["approval", "list", "--status", "pending"]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{listed}");
    // Oldest first, even within one second (ids are time-ordered).
    assert_eq!([rows[0][0], rows[1][0]], [destroy_id.as_str(), deletion_id]);
    let row = |id: &str| rows.iter().find(|r| r[0] == id).unwrap()[1..6].to_vec();
    assert_eq!(
        row(&destroy_id),
        ["pending", "destroy_version", q_id, "root", "0/1"]
    );
    assert_eq!(
        row(deletion_id),
        ["pending", "schedule_deletion", q_id, "root", "0/1"]
    );

    let own = refused(ROOT, &["approval", "approve", deletion_id], b"");
    assert!(
        own.contains("AccessDenied (403)") && own.contains("its own request"),
        "{own}"
    );
    // Refused before anything was recorded ahead: one record, deny.
    let request = own
        .rsplit("[request ")
        .next()
        .and_then(|r| r.split(']').next())
        .unwrap();
    let trail: serde_json::Value =
        serde_json::from_str(&ok(ROOT, &["--json", "audit", "--request-id", request])).unwrap();
    let outcomes: Vec<&str> = trail
        .as_array()
        .or_else(|| trail["records"].as_array())
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["deny"], "{trail}");
    ok(
        ROOT,
        &["identity", "create", "second-admin", "--role", "admin"],
    );
    let second = json(ROOT, &["token", "second-admin"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let me = json(&second, &["whoami"]);
    assert_eq!(
        (&me["name"], &me["roles"], &me["authenticated_by"]),
        (
            &serde_json::json!("second-admin"),
            &serde_json::json!(["admin"]),
            &serde_json::json!("token")
        )
    );
    let table = ok(ROOT, &["whoami"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().eq(["name", "root"])),
        "{table}"
    );
    let rejected = json(&second, &["approval", "reject", &destroy_id]);
    assert_eq!(
        (
            rejected["status"].as_str(),
            rejected["rejected_by"].as_str()
        ),
        (Some("rejected"), Some("second-admin"))
    );
    let executed = json(&second, &["approval", "approve", deletion_id]);
    assert_eq!(executed["status"], "executed");
    assert_eq!(executed["result"]["state"], "PendingDeletion");
    // The requester follows its request by id.
    assert_eq!(json(ROOT, &["approval", "show", deletion_id]), executed);
    let unknown = refused(ROOT, &["approval", "show", "apr_0"], b"");
    assert!(unknown.contains("NotFound (404)"), "{unknown}");
    // Every refusal names its request, however the CLI made it, for `keyward audit --request-id`.
    let nobody = refused(ROOT, &["identity", "show", "no-such-identity"], b"");
    for said in [&unknown, &nobody] {
        assert!(said.contains("[request "), "{said}");
    }
    assert_eq!(
        json(ROOT, &["key", "show", q_id])["state"],
        "PendingDeletion"
    );
    let versions = json(ROOT, &["key", "versions", q_id]);
    assert_ne!(
        versions[0]["state"], "Destroyed",
        "the rejected destruction ran: {versions}"
    );
    let again = refused(&second, &["approval", "approve", &destroy_id], b"");
    assert!(
        again.contains("InvalidState (409)") && again.contains("rejected"),
        "{again}"
    );
    let bogus = refused(ROOT, &["approval", "list", "--status", "waiting"], b"");
    assert!(bogus.contains("ValidationError (400)"), "{bogus}");
    assert_eq!(
        ok(ROOT, &["approval", "list", "--status", "pending"])
            .lines()
            .count(),
        1
    );

    // Identities: listed, changed (its token follows at once), deleted (its token with it).
    let table = ok(ROOT, &["identity", "list"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("second-admin "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(" admin "), "{table}");
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    let changed = json(
        ROOT,
        &["identity", "update", "second-admin", "--role", "auditor"],
    );
    assert_eq!(changed["roles"], serde_json::json!(["auditor"]));
    let denied = refused(&second, &["policy", "list"], b"");
    assert!(denied.contains("AccessDenied (403)"), "{denied}");
    let none = refused(ROOT, &["identity", "update", "second-admin"], b"");
    assert!(none.contains("--role"), "{none}");
    let tokens = ok(ROOT, &["identity", "tokens", "second-admin"]);
    assert_eq!(
        tokens.lines().filter(|l| l.starts_with("tok_")).count(),
        1,
        "{tokens}"
    );
    ok(ROOT, &["identity", "delete", "second-admin"]);
    let none = ok(ROOT, &["identity", "tokens", "root"]);
    assert!(none.lines().any(|l| l.starts_with("tok_")), "{none}");
    let gone = refused(&second, &["key", "list"], b"");
    assert!(gone.contains("Unauthenticated (401)"), "{gone}");
    let shown = refused(ROOT, &["identity", "show", "second-admin"], b"");
    assert!(shown.contains("NotFound (404)"), "{shown}");
    assert!(json(ROOT, &["policy", "list"]).is_array());

    // MFA: the URI is printed once; the login needs the authenticator's code.
    succeeded(
        &[],
        run(
            ROOT,
            &[
                "identity",
                "create",
                "carol",
                "--kind",
                "user",
                "--role",
                "key-user",
                "--password-stdin",
            ],
            b"carol's long password\n",
        ),
    );
    let uri = ok(ROOT, &["mfa", "carol"]);
    assert!(
        uri.starts_with("otpauth://totp/Keyward:carol?secret="),
        "{uri}"
    );
    let without = refused(ROOT, &["login", "carol"], b"carol's long password\n");
    assert!(
        without.contains("(401)") || without.contains("(403)"),
        "{without}"
    );
    let code = totp_code(uri.trim());
    let login: serde_json::Value = serde_json::from_slice(&succeeded(
        &[],
        run(
            ROOT,
            &["--json", "login", "carol", "--totp", &code],
            b"carol's long password\n",
        ),
    ))
    .unwrap();
    assert_eq!(login["mfa"], true);
    assert!(login["token"].as_str().unwrap().starts_with("kw."));
}

fn file_seqs(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_gets_every_record_once_and_no_secret_is_written_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("keyward.toml");
    std::fs::write(
        &cfg,
        format!("audit_file = {:?}\n", audit_file.display().to_string()),
    )
    .unwrap();
    let data = dir.path().join("data");
    let env = [("KEYWARD_DEV_ROOT_TOKEN", ROOT)];
    let mut server = Server::start(&data, &["--dev", "--config", cfg.to_str().unwrap()], &env);
    let c = server.root();
    let marker = b"PLAINTEXT-MARKER-5d1c9f0e";
    let password = "PASSWORD-MARKER-8e7f6a5b";
    let k = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ct = c.encrypt(&k.key_id, marker, None).await.unwrap();
    assert_eq!(
        c.decrypt(None, &ct.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        marker
    );
    let dk = c
        .data_key(
            &k.key_id,
            &keyward_api::DataKeyRequest {
                spec: "AES_256".into(),
                context: None,
                include_plaintext: Some(true),
            },
        )
        .await
        .unwrap();
    let (st, _, _) = common::raw(&server.addr, "POST", "/v1/identities", Some(ROOT),
        Some(serde_json::to_vec(&serde_json::json!({"name": "u", "kind": "user", "roles": ["auditor"], "password": password})).unwrap())).await;
    assert_eq!(st, 201);
    let (_, login, _) = common::raw(
        &server.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(serde_json::to_vec(&serde_json::json!({"name": "u", "password": password})).unwrap()),
    )
    .await;
    let user_token = login["token"].as_str().unwrap().to_string();
    let (_, shares, _) = common::raw(
        &server.addr,
        "POST",
        "/v1/keys",
        Some(&user_token),
        Some(br#"{"spec":"AES_256"}"#.to_vec()),
    )
    .await;
    let _ = shares;

    // Every stored record is in the file, once, in order.
    let (_, audit, _) = common::raw(
        &server.addr,
        "GET",
        "/v1/audit?limit=1000",
        Some(ROOT),
        None,
    )
    .await;
    let stored: Vec<u64> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let in_file = file_seqs(&audit_file);
    assert!(
        in_file.len() + 1 >= stored.len(),
        "file {in_file:?} vs store {stored:?}"
    );
    assert_eq!(in_file, (1..=in_file.len() as u64).collect::<Vec<_>>());

    // A torn last line and a lost tail are repaired from the store at the next start.
    server.stop();
    let text = std::fs::read_to_string(&audit_file).unwrap();
    let keep: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(
        &audit_file,
        format!("{}\n{{\"seq\":4,\"ti", keep.join("\n")),
    )
    .unwrap();
    server.restart(&env);
    let (_, audit, _) = common::raw(
        &server.addr,
        "GET",
        "/v1/audit?limit=1000",
        Some(ROOT),
        None,
    )
    .await;
    let stored: Vec<u64> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let in_file = file_seqs(&audit_file);
    assert_eq!(
        in_file,
        (1..=in_file.len() as u64).collect::<Vec<_>>(),
        "duplicates or gaps after repair"
    );
    assert!(in_file.len() + 1 >= stored.len());
    server.stop();

    // Nothing secret anywhere: logs, database, WAL, audit file, every file of the data directory.
    let mut needles: Vec<Vec<u8>> = vec![
        marker.to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(marker)
            .into_bytes(),
        password.as_bytes().to_vec(),
        user_token.as_bytes().to_vec(),
        dk.plaintext.unwrap().expose().to_vec(),
    ];
    needles.push(
        base64::engine::general_purpose::STANDARD
            .encode(&needles[4])
            .into_bytes(),
    );
    let mut files = vec![server.log.clone(), audit_file.clone()];
    for entry in std::fs::read_dir(&data).unwrap() {
        files.push(entry.unwrap().path());
    }
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == &n[..]),
                "a secret was found in {}",
                f.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_as_identities() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    test_ca(dir.path());
    let issue = |name: &str, subj: &str, ext: &str| {
        issue_certificate(dir.path(), name, subj, ext, 1);
    };
    issue(
        "server",
        "/CN=localhost",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    issue(
        "app1",
        "/CN=app1/O=Payments",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    issue(
        "stranger",
        "/CN=stranger",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.pem"),
        ],
        &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)],
    );
    let https = server.addr.replace("http://", "https://");
    let ca = std::fs::read(p("ca.pem")).unwrap();
    let root = Client::with_options(
        &https,
        Some(ROOT.into()),
        Options {
            ca_pem: Some(ca.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    let key = common::aes_key(&root).await;
    let (st, v, _) = {
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .build()
            .unwrap();
        let body = serde_json::json!({"name": "app1", "kind": "service", "roles": ["key-user"], "certificate_subject": "O=Payments, CN=app1"});
        let r = http
            .post(format!("{https}/v1/identities"))
            .bearer_auth(ROOT)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json::<serde_json::Value>().await.unwrap(), ())
    };
    assert_eq!(st, 201, "{v}");
    let with_cert = |name: &str| {
        let identity = [
            std::fs::read(p(&format!("{name}.pem"))).unwrap(),
            std::fs::read(p(&format!("{name}.key"))).unwrap(),
        ]
        .concat();
        Client::with_options(
            &https,
            None,
            Options {
                ca_pem: Some(ca.clone()),
                identity_pem: Some(identity),
                ..Options::default()
            },
        )
        .unwrap()
    };
    let app1 = with_cert("app1");
    let ct = app1.encrypt(&key, b"mtls", None).await.unwrap();
    assert_eq!(
        app1.decrypt(None, &ct.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"mtls"
    );
    assert_eq!(
        app1.create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Some("AccessDenied")
    );
    // The certificate's identity, as the service sees it: no token, nothing that expires.
    assert_eq!(
        app1.whoami().await.unwrap(),
        keyward_api::CallerIdentity {
            name: "app1".into(),
            roles: vec!["key-user".into()],
            policies: vec![],
            authenticated_by: "certificate".into(),
            token_id: None,
            expires_at: None,
            mfa: false,
        }
    );
    let stranger = with_cert("stranger");
    assert_eq!(
        stranger.encrypt(&key, b"x", None).await.unwrap_err().code(),
        Some("Unauthenticated")
    );
    assert_eq!(
        stranger.whoami().await.unwrap_err().code(),
        Some("Unauthenticated")
    );
    // No certificate and no token: refused; a token still works without a certificate.
    let anonymous = Client::with_options(
        &https,
        None,
        Options {
            ca_pem: Some(ca.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(
        anonymous
            .encrypt(&key, b"x", None)
            .await
            .unwrap_err()
            .code(),
        Some("Unauthenticated")
    );
    assert!(root.encrypt(&key, b"x", None).await.is_ok());

    // The same from the CLI: an identity bound to a certificate subject, and the certificate given in
    // KEYWARD_CLIENT_CERT and KEYWARD_CLIENT_KEY.
    let cli = |env: &[(&str, String)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
        cmd.args(args)
            .env("KEYWARD_ADDR", &https)
            .env("KEYWARD_CACERT", p("ca.pem"))
            .env_remove("KEYWARD_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::task::block_in_place(|| cmd.output().unwrap())
    };
    let created = cli(
        &[("KEYWARD_TOKEN", ROOT.to_string())],
        &[
            "identity",
            "create",
            "app2",
            "--role",
            "key-user",
            "--certificate-subject",
            "CN=app2, O=Payments",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    issue(
        "app2",
        "/O=Payments/CN=app2",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let me = cli(
        &[
            ("KEYWARD_CLIENT_CERT", p("app2.pem")),
            ("KEYWARD_CLIENT_KEY", p("app2.key")),
        ],
        &["--json", "whoami"],
    );
    assert!(
        me.status.success(),
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!(
        (&me["name"], &me["authenticated_by"]),
        (
            &serde_json::json!("app2"),
            &serde_json::json!("certificate")
        )
    );
    let half = cli(&[("KEYWARD_CLIENT_CERT", p("app2.pem"))], &["whoami"]);
    assert!(String::from_utf8_lossy(&half.stderr).contains("go together"));
}

/// Runs SQL on a live node's database from another process, as someone with write access to the file could.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_closed_when_the_audit_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::dev(&data);
    let c = server.root();
    let k = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ct = c.encrypt(&k.key_id, b"before", None).await.unwrap();
    let db = data.join("keyward.db");
    let sql = |statement: &str| sqlite(&db, statement);
    // Take the audit table away: every cryptographic request must now fail with 503 Unavailable.
    sql("ALTER TABLE audit RENAME TO audit_away;");
    let refused = c.encrypt(&k.key_id, b"during", None).await.unwrap_err();
    assert_eq!(refused.code(), Some("Unavailable"));
    let refused = c
        .decrypt(None, &ct.ciphertext.0, None, None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("Unavailable"));
    // A change is recorded before it is made: with no record possible, nothing is changed.
    let refused = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("Unavailable"));
    let refused = c.key_action(&k.key_id, "disable").await.unwrap_err();
    assert_eq!(refused.code(), Some("Unavailable"));
    sql("ALTER TABLE audit_away RENAME TO audit;");
    // Back: requests succeed, the chain is intact, and no record of the refused requests was half-written.
    assert_eq!(
        c.decrypt(None, &ct.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"before"
    );
    let (st, v, _) = common::raw(&server.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!((st, v["valid"].as_bool()), (200, Some(true)), "{v}");
    let metrics = c.metrics().await.unwrap();
    assert!(
        metrics.contains("keyward_audit_failures_total 4"),
        "{metrics}"
    );
    assert_eq!(
        c.list_keys("").await.unwrap().keys.len(),
        1,
        "a key was created without its audit record"
    );
    assert_eq!(
        c.describe_key(&k.key_id).await.unwrap().state,
        "Enabled",
        "a change was made without its audit record"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_reach_syslog() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("log.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    syslog
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let cfg = dir.path().join("keyward.toml");
    std::fs::write(
        &cfg,
        format!("audit_syslog = {:?}\n", socket_path.display().to_string()),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--dev", "--config", cfg.to_str().unwrap()],
        &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)],
    );
    let c = server.root();
    let k = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.encrypt(&k.key_id, b"to syslog", None).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    while seen.len() < 2 {
        let n = syslog.recv(&mut buf).expect("a syslog datagram");
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(line.starts_with("<110>keyward["), "{line}");
        let json = &line[line.find(": ").unwrap() + 2..];
        let rec: serde_json::Value = serde_json::from_str(json).unwrap();
        assert!(!line.contains("to syslog"));
        seen.push((
            rec["seq"].as_u64().unwrap(),
            rec["action"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (1, "kms:CreateKey".to_string()),
            (2, "kms:Encrypt".to_string())
        ]
    );
}

/// SIGTERM while requests are in flight: they are carried out and answered before the node exits, and what
/// they did is there after a restart. New connections are refused from the signal on (a client with several
/// addresses fails over at once), while the requests in flight are still being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::dev(&dir.path().join("data"));
    // RSA-4096 generation takes long enough (most of a second each, here) to be under way at the signal.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let c = server.root();
        calls.push(tokio::spawn(async move {
            let r = c
                .create_key(&CreateKeyRequest {
                    spec: "RSA_4096".into(),
                    usage: Some("SIGN_VERIFY".into()),
                    ..Default::default()
                })
                .await;
            (r, std::time::Instant::now())
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let signalled = std::time::Instant::now();
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let stopping = tokio::task::spawn_blocking(move || {
        let status = server.stop();
        (server, status)
    });
    let refused = tokio::spawn(async move {
        let deadline = signalled + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Err(e) = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                return Some(std::time::Instant::now());
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        None
    });
    let mut answered_after_signal = 0;
    let mut last_answer = signalled;
    let mut created = Vec::new();
    for call in calls {
        let (r, at) = call.await.unwrap();
        created.push(r.unwrap().key_id);
        answered_after_signal += usize::from(at > signalled);
        last_answer = last_answer.max(at);
    }
    let (mut server, status) = stopping.await.unwrap();
    assert!(status.success(), "{status}");
    assert!(
        answered_after_signal > 0,
        "every request had finished before the signal; nothing was in flight"
    );
    let refused_at = refused
        .await
        .unwrap()
        .expect("new connections were still accepted 10 s after SIGTERM");
    assert!(
        refused_at < last_answer,
        "new connections were refused only once every request had been answered"
    );
    server.restart(&[]);
    let c = server.root();
    for id in &created {
        assert_eq!(c.describe_key(id).await.unwrap().spec, "RSA_4096");
    }
    // The stop is in the audit log, after every request it let finish: the node sealed itself.
    let (_, trail, _) = common::raw(&server.addr, "GET", "/v1/audit", Some(ROOT), None).await;
    let records = trail["records"].as_array().unwrap();
    let seals: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "kms:Seal")
        .collect();
    assert_eq!(seals.len(), 1, "{trail}");
    assert_eq!(seals[0]["principal"], "system:signal");
    assert_eq!(seals[0]["outcome"], "allow");
    let last_creation = records
        .iter()
        .filter(|r| r["action"] == "kms:CreateKey")
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap();
    assert!(seals[0]["seq"].as_u64().unwrap() > last_creation, "{trail}");
}

/// The two reference servers of `benches/load.sh`: the plain floor, and the durable floor that makes a
/// record durable in its file before each answer. Both serve the load generator without an error, and the
/// durable one has written its records (a preallocated file, so only its contents change).
#[test]
fn the_floor_servers_serve_the_load_generator() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("floor.log");
    for durable in [false, true] {
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
        cmd.args(["bench-floor", "--listen", &addr]);
        if durable {
            cmd.arg("--durable").arg(&log);
        }
        let mut floor = cmd
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the floor server");
        let mut up = false;
        for _ in 0..200 {
            if common::listening(&addr) {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(up, "the floor server did not listen");
        // A bare GET, then the requests of an encrypt line (POST, token, 1 KiB payload), which the floor
        // reads and answers alike.
        let bench = |extra: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_keyward"))
                .args(["bench", "--op", "floor", "--json", "--duration", "1"])
                .args(["--warmup", "0", "--concurrency", "8", "--token", "kw.x"])
                .args(["--addr", &format!("http://{addr}")])
                .args(extra)
                .output()
                .unwrap()
        };
        let outs = [bench(&[]), bench(&["--like", "encrypt"])];
        let refused = bench(&["--like", "decrypt"]);
        floor.kill().unwrap();
        floor.wait().unwrap();
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("use encrypt, sign or data-key"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        let mut requests = 0;
        for out in outs {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["errors"], 0, "{report}");
            let n = report["requests"].as_u64().unwrap();
            assert!(n > 0, "{report}");
            requests += n;
        }
        if durable {
            let bytes = std::fs::read(&log).unwrap();
            assert_eq!(
                bytes.len(),
                64 << 20,
                "the file keeps its preallocated size"
            );
            let written = bytes.iter().filter(|b| **b != 0).count() as u64;
            // Every answered request's record is in the file (the file wraps after 64 MiB, which two
            // one-second runs with eight connections do not reach).
            assert!(
                written >= requests * 300,
                "{written} bytes for {requests} requests"
            );
        }
    }
    // An existing file is never overwritten: the durable floor refuses to start on one.
    let before = std::fs::metadata(&log).unwrap().modified().unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "bench-floor",
            "--listen",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .arg("--durable")
        .arg(&log)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("never an existing one overwritten"));
    assert_eq!(std::fs::metadata(&log).unwrap().modified().unwrap(), before);
}

/// A small file system of its own for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` where this machine does not let the test mount one (not root, or no CAP_SYS_ADMIN).
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: requests fail closed with a clear 503 (nothing is answered without its durable record), the
/// log says why without flooding, the service needs no restart once space is freed, and nothing written
/// before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_requests_closed_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("disk"), "16m") else {
        return;
    };
    let mut server = Server::dev(&fs.0.join("data"));
    let root = server.root();
    let key = common::aes_key(&root).await;
    let before = root.encrypt(&key, b"written before", None).await.unwrap();

    // Fill the disk to the last byte.
    {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while filler.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
    }
    let body = serde_json::to_vec(&serde_json::json!({"plaintext": "aGVsbG8="})).unwrap();
    let path = format!("/v1/keys/{key}/encrypt");
    let (mut answered, mut refused) = (0u32, 0u32);
    for _ in 0..20_000 {
        let (status, v, _) =
            common::raw(&server.addr, "POST", &path, Some(ROOT), Some(body.clone())).await;
        match status {
            200 => answered += 1,
            503 => {
                assert_eq!(common::code_of(&v), "Unavailable", "{v}");
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("disk is full"),
                    "{v}"
                );
                refused += 1;
                if refused == 50 {
                    break;
                }
            }
            _ => panic!("{status}: {v}"),
        }
    }
    assert_eq!(refused, 50, "the full disk never refused a request");
    let logs = server.logs();
    assert_eq!(
        logs.matches("audit log cannot be written, requests fail closed")
            .count(),
        1,
        "{logs}"
    );

    // Space again: the next request is served, and the log says so.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    let after = root.encrypt(&key, b"written after", None).await.unwrap();
    assert!(server.logs().contains("audit log written again"));
    // Every answered request has its record; the refused ones none, and the chain holds.
    let (_, trail, _) = common::raw(
        &server.addr,
        "GET",
        &format!("/v1/audit?key_id={key}&action=kms:Encrypt&outcome=allow&limit=1000"),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(
        trail["records"].as_array().unwrap().len() as u32,
        answered + 2,
        "{trail}"
    );
    let (_, verify, _) =
        common::raw(&server.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(verify["valid"], true, "{verify}");

    // And a restart finds everything written before, during and after.
    server.restart(&[("KEYWARD_DEV_ROOT_TOKEN", ROOT)]);
    for (ct, plaintext) in [
        (&before, &b"written before"[..]),
        (&after, b"written after"),
    ] {
        let opened = root
            .decrypt(None, &ct.ciphertext.0, None, None)
            .await
            .unwrap();
        assert_eq!(opened.plaintext.expose(), plaintext);
    }
    drop(server);
}

/// `keyward audit --follow` prints matching records as they are written, one line each (JSON lines with
/// `--json`), starting from now: earlier records are not repeated.
#[test]
fn audit_follow_prints_new_records_as_they_come() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let ok = |args: &[&str]| succeeded(args, run_keyward(&server.addr, ROOT, args, b""));
    let key: serde_json::Value =
        serde_json::from_slice(&ok(&["--json", "key", "create", "--spec", "AES_256"])).unwrap();
    let key = key["key_id"].as_str().unwrap().to_string();
    ok(&["encrypt", &key, "--in", "/dev/null"]);
    // Records written in the second the follower starts are its to print; start on a fresh second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let spawn = |json: bool| {
        let mut args = vec![
            "audit",
            "--follow",
            "--key",
            &key,
            "--action",
            "kms:Encrypt",
        ];
        if json {
            args.insert(0, "--json");
        }
        Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(&args)
            .env("KEYWARD_ADDR", &server.addr)
            .env("KEYWARD_TOKEN", ROOT)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut as_json, mut as_lines) = (spawn(true), spawn(false));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for i in 0..3 {
        let plaintext = dir.path().join(format!("p{i}"));
        std::fs::write(&plaintext, b"followed").unwrap();
        ok(&["encrypt", &key, "--in", plaintext.to_str().unwrap()]);
    }
    let first_three = |child: &mut std::process::Child| {
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let lines: Vec<String> = (0..3)
            .map(|_| {
                rx.recv_timeout(std::time::Duration::from_secs(15))
                    .expect("a followed record did not appear")
            })
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        // Nothing more arrived: the record written before the follower started was not repeated.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        lines
    };
    let records: Vec<serde_json::Value> = first_three(&mut as_json)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records
        .iter()
        .all(|r| r["action"] == "kms:Encrypt" && r["key_id"] == key.as_str()));
    assert!(records
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    for line in first_three(&mut as_lines) {
        assert!(
            line.contains("kms:Encrypt") && line.contains(&key) && line.contains("  allow  "),
            "{line}"
        );
    }
}

/// `keyward audit --prune-through N --archive FILE` writes the records it is about to delete to a new file
/// first (flushed), then prunes; an archive that cannot be written prunes nothing.
#[test]
fn audit_pruning_archives_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev_with(dir.path(), "audit_retention_days = 0\n");
    let run = |args: &[&str]| run_keyward(&server.addr, ROOT, args, b"");
    let ok = |args: &[&str]| String::from_utf8(succeeded(args, run(args))).unwrap();
    for _ in 0..6 {
        ok(&["key", "create", "--spec", "AES_256"]);
    }
    let archive = dir.path().join("audit-2026.jsonl");
    let archive_arg = archive.to_str().unwrap();
    let said = ok(&[
        "--json",
        "audit",
        "--prune-through",
        "4",
        "--archive",
        archive_arg,
    ]);
    let said: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(said, serde_json::json!({"pruned": 4, "pruned_through": 4}));
    let archived: Vec<serde_json::Value> = std::fs::read_to_string(&archive)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = archived
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert!(archived
        .iter()
        .all(|r| r["hash"].as_str().is_some_and(|h| h.len() == 64)));
    let verified: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "audit", "--verify"])).unwrap();
    assert_eq!(
        (&verified["valid"], &verified["pruned_through"]),
        (&serde_json::json!(true), &serde_json::json!(4))
    );
    // The archive proves itself against the service's audit key, and joins the kept log.
    let checked: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "audit", "--verify-archive", archive_arg])).unwrap();
    assert_eq!(
        (
            &checked["valid"],
            &checked["records"],
            &checked["continues_into_log"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(4),
            &serde_json::json!(true)
        ),
        "{checked}"
    );
    let altered = dir.path().join("altered.jsonl");
    std::fs::write(
        &altered,
        std::fs::read_to_string(&archive).unwrap().replacen(
            "\"principal\":\"root\"",
            "\"principal\":\"nobody\"",
            1,
        ),
    )
    .unwrap();
    let refused = run(&["audit", "--verify-archive", altered.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not verify"));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("first_bad_seq"));
    // The archive file exists already: refused before anything is deleted.
    let refused = run(&["audit", "--prune-through", "6", "--archive", archive_arg]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("audit-2026.jsonl"));
    let verified: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "audit", "--verify"])).unwrap();
    assert_eq!(verified["pruned_through"], 4);
}

/// Access keys from the CLI: created with the secret shown once, listed without it, at most two per
/// identity, deleted by id, and gone with their identity.
#[test]
fn access_keys_are_managed_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(dir.path());
    let run = |args: &[&str]| run_keyward(&server.addr, ROOT, args, b"");
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_slice(&succeeded(args, run(&all))).unwrap()
    };
    succeeded(
        &["identity"],
        run(&["identity", "create", "app", "--role", "key-user"]),
    );
    let first = json(&["access-key", "create", "app"]);
    let id = first["access_key_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("AKKW") && id.len() == 20, "{first}");
    assert_eq!(first["secret_access_key"].as_str().unwrap().len(), 40);
    json(&["access-key", "create", "app"]);
    let third = run(&["access-key", "create", "app"]);
    assert!(!third.status.success());
    assert!(
        String::from_utf8_lossy(&third.stderr).contains("already holds 2 access keys"),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let listed = json(&["access-key", "list", "app"]);
    let keys = listed["access_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.get("secret_access_key").is_none()));
    succeeded(&["delete"], run(&["access-key", "delete", "app", &id]));
    let gone = run(&["access-key", "delete", "app", &id]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
    assert_eq!(
        json(&["access-key", "list", "app"])["access_keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    succeeded(&["identity"], run(&["identity", "delete", "app"]));
    succeeded(
        &["identity"],
        run(&["identity", "create", "app", "--role", "key-user"]),
    );
    assert_eq!(
        json(&["access-key", "list", "app"])["access_keys"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// What a newcomer runs first reads as documented: `init` names the root token's id (and how to revoke it),
/// `key list` honours `--limit` and takes `--tag` as `key create` does, a refused pruning leaves no archive
/// behind, a restore into a running service says so, and a reader that stops early ends the CLI quietly.
#[test]
fn the_cli_reads_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = Server::start(&dir.path().join("fresh"), &[], &[]);
    let init = run_keyward(
        &fresh.addr,
        "",
        &["operator", "init", "--shares", "1", "--threshold", "1"],
        b"",
    );
    let text = String::from_utf8(succeeded(&["operator", "init"], init.clone())).unwrap();
    let id_line = text
        .lines()
        .find(|l| l.starts_with("Root token id: tok_"))
        .unwrap_or_else(|| panic!("{text}"));
    let id = id_line.trim_start_matches("Root token id: ");
    assert!(
        String::from_utf8_lossy(&init.stderr).contains(&format!("keyward revoke {id}")),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap()
            .to_string()
    };
    let (share, root) = (after("Unseal share 1: "), after("Root token: "));
    succeeded(
        &["unseal"],
        run_keyward(&fresh.addr, "", &["operator", "unseal"], share.as_bytes()),
    );
    // A restore into the running service says so.
    let backup = dir.path().join("backup.kw");
    let on_fresh = |args: &[&str]| run_keyward(&fresh.addr, &root, args, b"");
    succeeded(&["key"], on_fresh(&["key", "create", "--spec", "AES_256"]));
    succeeded(
        &["backup"],
        on_fresh(&["operator", "backup", "--output", backup.to_str().unwrap()]),
    );
    let restored = String::from_utf8(succeeded(
        &["restore"],
        on_fresh(&["operator", "restore", "--input", backup.to_str().unwrap()]),
    ))
    .unwrap();
    assert!(restored.contains("into the running service"), "{restored}");
    drop(fresh);

    let server = Server::dev(&dir.path().join("dev"));
    let run = |args: &[&str]| run_keyward(&server.addr, ROOT, args, b"");
    for i in 0..5 {
        let team = if i % 2 == 0 { "team=pay" } else { "team=ops" };
        succeeded(
            &["key", "create"],
            run(&["key", "create", "--spec", "AES_256", "--tag", team]),
        );
    }
    let listed = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["--json", "key", "list"];
        all.extend_from_slice(args);
        serde_json::from_slice(&succeeded(&all, run(&all))).unwrap()
    };
    assert_eq!(listed(&["--limit", "2"]).len(), 2);
    assert_eq!(listed(&["--limit", "20"]).len(), 5);
    let pay = listed(&["--tag", "team=pay"]);
    assert_eq!(pay.len(), 3);
    assert!(pay.iter().all(|k| k["tags"]["team"] == "pay"));
    // No token: the CLI says which variable is missing.
    let anonymous = run_keyward(&server.addr, "", &["key", "list"], b"");
    assert!(!anonymous.status.success());
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("KEYWARD_TOKEN is not set"),
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    let colon = run(&["key", "list", "--tag", "team:pay"]);
    assert!(!colon.status.success());
    assert!(String::from_utf8_lossy(&colon.stderr).contains("k=v"));

    // A key's quorum shows in its table; an approval's times read as every other time does (RFC 3339).
    let held = String::from_utf8(succeeded(
        &["key", "create"],
        run(&["key", "create", "--spec", "AES_256", "--quorum", "2"]),
    ))
    .unwrap();
    assert!(
        held.lines()
            .any(|l| l.starts_with("quorum") && l.ends_with("2 approvals")),
        "{held}"
    );
    let held_id = held
        .lines()
        .find_map(|l| l.strip_prefix("key_id"))
        .unwrap()
        .trim()
        .to_string();
    let pending = run(&["--json", "key", "schedule-deletion", &held_id]);
    let pending: serde_json::Value = serde_json::from_slice(&pending.stdout).unwrap();
    let approval = pending["approval_id"].as_str().unwrap().to_string();
    let shown = String::from_utf8(succeeded(
        &["approval"],
        run(&["approval", "show", &approval]),
    ))
    .unwrap();
    let expires = shown
        .lines()
        .find_map(|l| l.strip_prefix("expires_at"))
        .unwrap()
        .trim();
    assert!(
        expires.len() == 20 && expires.ends_with('Z') && expires.contains('T'),
        "{shown}"
    );

    // Records younger than the retention period are never pruned: refused, and no archive is left.
    let archive = dir.path().join("archive.jsonl");
    let archive_arg = archive.to_str().unwrap();
    for _ in 0..2 {
        let out = run(&["audit", "--prune-through", "3", "--archive", archive_arg]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("File exists"), "{err}");
        assert!(!archive.exists(), "a refused pruning left {err}");
    }

    // A closed pipe: no panic, no backtrace, the status of a program ended by SIGPIPE.
    let piped = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 30); do '{bin}' --json audit --all; '{bin}' key list; '{bin}' whoami; done | head -c 10 >/dev/null",
            bin = env!("CARGO_BIN_EXE_keyward")
        ))
        .env("KEYWARD_ADDR", &server.addr)
        .env("KEYWARD_TOKEN", ROOT)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

/// An audit copy that cannot be delivered is not silent: a syslog socket nobody listens on stops the start
/// with a message naming it, and the metrics count deliveries a sink could not take.
#[test]
fn an_audit_sink_that_cannot_be_reached_is_refused_at_start_and_counted_after() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-syslog-here");
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--set")
        .arg(format!("audit_syslog={}", missing.display()))
        .env("KEYWARD_DEV_ROOT_TOKEN", ROOT)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit_syslog") && err.contains("no-syslog-here"),
        "{err}"
    );
    let server = Server::dev(&dir.path().join("ok"));
    let metrics = succeeded(
        &["metrics"],
        run_keyward(&server.addr, ROOT, &["metrics"], b""),
    );
    assert!(String::from_utf8_lossy(&metrics).contains("keyward_audit_sink_failures_total 0"));
}

/// The usual `openssl req -x509` certificate is a CA: served as the server's own, every client refuses it.
/// The server warns at start, and the CLI turns the TLS library's refusal into what to do.
#[test]
fn a_ca_certificate_served_as_the_servers_own_is_named_at_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca(dir.path());
    let key = dir.path().join("ca.key");
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--dev",
            "--tls-cert",
            &ca,
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("KEYWARD_DEV_ROOT_TOKEN", ROOT)],
    );
    assert!(
        server
            .logs()
            .contains("the served certificate is a CA certificate"),
        "{}",
        server.logs()
    );
    let addr = server.addr.replace("http://", "https://");
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("health")
        .env("KEYWARD_ADDR", &addr)
        .env("KEYWARD_CACERT", &ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("presents a CA certificate as its own"),
        "{err}"
    );
}

/// A server says where it keeps its data, and a restarted dev server says how to get a token again.
#[test]
fn a_server_names_its_data_directory_and_a_dev_restart_how_to_get_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::dev(&data);
    let first = server.logs();
    let canonical = std::fs::canonicalize(&data).unwrap();
    assert!(
        first.contains(&format!("data directory: {}", canonical.display())),
        "{first}"
    );
    server.restart(&[]);
    let again = &server.logs()[first.len()..];
    assert!(again.contains("KEYWARD_DEV_ROOT_TOKEN"), "{again}");
}

/// Bring your own key from the command line, and take it back: the material is imported from a file, deleted,
/// refused while deleted, and the same file brings the key and its ciphertexts back.
#[test]
fn the_cli_deletes_and_reimports_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let run = |args: &[&str], stdin: &[u8]| run_keyward(&server.addr, ROOT, args, stdin);
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_slice(&succeeded(args, run(&all, b""))).unwrap()
    };
    let created = json(&["key", "create", "--spec", "AES_256", "--origin", "EXTERNAL"]);
    let key = created["key_id"].as_str().unwrap().to_string();
    let material = dir.path().join("material.bin");
    std::fs::write(&material, [0x42u8; 32]).unwrap();
    let material = material.to_str().unwrap();
    json(&["key", "import", &key, "--material", material]);
    let ct = succeeded(&["encrypt"], run(&["encrypt", &key], b"kept"));
    let ct_path = dir.path().join("ct.b64");
    std::fs::write(&ct_path, &ct).unwrap();
    let decrypt = || run(&["decrypt", "--in", ct_path.to_str().unwrap()], b"");

    let deleted = json(&["key", "delete-imported-material", &key]);
    assert_eq!(
        deleted["pending_import"],
        serde_json::json!(true),
        "{deleted}"
    );
    let refused = decrypt();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("InvalidState") && message.contains("deleted"),
        "{message}"
    );
    let versions = json(&["key", "versions", &key]);
    assert_eq!(versions[0]["state"], "PendingImport", "{versions}");

    let other = dir.path().join("other.bin");
    std::fs::write(&other, [0x17u8; 32]).unwrap();
    let wrong = run(
        &["key", "import", &key, "--material", other.to_str().unwrap()],
        b"",
    );
    let message = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && message.contains("IncorrectKeyMaterial"),
        "{message}"
    );
    let back = json(&["key", "import", &key, "--material", material]);
    assert_eq!(
        (
            back["pending_import"].as_bool(),
            back["primary_version"].as_u64()
        ),
        (None, Some(1))
    );
    assert_eq!(succeeded(&["decrypt"], decrypt()), b"kept");
}
