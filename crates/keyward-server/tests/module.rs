//! A node names the cryptographic module it runs, on its status endpoint and at start; a FIPS build
//! (`--features fips`) runs in FIPS mode or does not start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_server::{Config, Overrides};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_names_its_crypto_module_and_a_fips_build_runs_in_fips_mode() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.path().join("data")),
        dev: true,
        ..Overrides::default()
    };
    let config = Config::load_from(None, |_| None, &[], overrides).unwrap();
    let (app, startup) = keyward_server::build(config).unwrap();
    let fips = keyward_hsm_soft::FIPS_BUILD;
    let note = startup
        .notes
        .iter()
        .find(|n| n.starts_with("cryptographic module: AWS-LC"))
        .unwrap_or_else(|| panic!("{:?}", startup.notes));
    assert_eq!(note.ends_with("in FIPS mode"), fips, "{note}");

    let bound = keyward_server::bind(&app).await.unwrap();
    let addr = bound.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keyward_server::serve(app, bound, async {
        let _ = stopped.await;
    }));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /v1/sys/status HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let status: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(status["fips"], serde_json::json!(fips), "{status}");
    let module = &status["crypto_module"];
    let name = if fips { "AWS-LC FIPS" } else { "AWS-LC" };
    assert_eq!(module["name"], name, "{status}");
    assert!(!module["version"].as_str().unwrap().is_empty(), "{status}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
