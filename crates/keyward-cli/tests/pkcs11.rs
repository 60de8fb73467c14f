//! The real binary with a PKCS#11 token (SoftHSM2) as its root of trust: initialised without shares, unsealed
//! by itself at every start, `HSM` keys generated and used in the token, and nothing opens without the same
//! token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine as _;
use common::{code_of, pkcs11_token, raw, Server};
use keyward_api::*;

async fn create(
    c: &keyward_client::Client,
    spec: &str,
    usage: Option<&str>,
    origin: Option<&str>,
) -> KeyObject {
    c.create_key(&CreateKeyRequest {
        spec: spec.into(),
        usage: usage.map(Into::into),
        origin: origin.map(Into::into),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn start(dir: &std::path::Path, label: &str, pin: &str) -> Server {
    let (module, _, _) = pkcs11_token();
    Server::start(
        dir,
        &["--pkcs11-module", &module, "--pkcs11-token-label", label],
        &[("KEYWARD_PKCS11_PIN", pin)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rooted_service_unseals_itself_and_keeps_hsm_keys_in_the_token() {
    let (_, label, pin) = pkcs11_token();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &label, &pin);
    let (status, s, _) = raw(&server.addr, "GET", "/v1/sys/status", None, None).await;
    assert_eq!(
        (status, s["initialized"].as_bool()),
        (200, Some(false)),
        "{s}"
    );

    // Init hands out no shares: the token holds the root of trust, and the service is unsealed at once.
    let (status, init, _) = raw(
        &server.addr,
        "POST",
        "/v1/sys/init",
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["shares"].as_array().map(Vec::len), Some(0));
    let root = init["root_token"].as_str().unwrap().to_string();
    let status = server.client(None).status().await.unwrap();
    assert_eq!(status.root_of_trust.as_deref(), Some("pkcs11"));
    assert!(!status.sealed);

    let c = server.client(Some(&root));
    let soft = create(&c, "SYMMETRIC_DEFAULT", None, None).await;
    let in_token = create(&c, "AES_256", None, Some("HSM")).await;
    assert_eq!(in_token.origin, "HSM");
    let signer = create(&c, "ECC_NIST_P256", Some("SIGN_VERIFY"), Some("HSM")).await;
    let ct_soft = c
        .encrypt(&soft.key_id, b"software key", None)
        .await
        .unwrap();
    let ct_token = c
        .encrypt(&in_token.key_id, b"token key", None)
        .await
        .unwrap();
    let sign = |key: String| {
        let c = &c;
        async move {
            c.sign(
                &key,
                &SignRequest {
                    message: Some(B64(b"signed in the token".to_vec())),
                    digest: None,
                    external_mu: None,
                    algorithm: "ECDSA_SHA_256".into(),
                },
            )
            .await
            .unwrap()
        }
    };
    let sig = sign(signer.key_id.clone()).await;
    // OpenSSL, independently, verifies what the token signed, with the public key the API hands out.
    let files = tempfile::tempdir().unwrap();
    let pem = c.public_key(&signer.key_id).await.unwrap().public_key_pem;
    std::fs::write(files.path().join("pub.pem"), pem).unwrap();
    std::fs::write(files.path().join("msg"), b"signed in the token").unwrap();
    std::fs::write(files.path().join("sig.der"), &sig.signature.0).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(files.path())
        .args([
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.der",
            "msg",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rsa_signer = create(&c, "RSA_2048", Some("SIGN_VERIFY"), Some("HSM")).await;
    let pss = c
        .sign(
            &rsa_signer.key_id,
            &SignRequest {
                message: Some(B64(b"signed in the token".to_vec())),
                digest: None,
                external_mu: None,
                algorithm: "RSASSA_PSS_SHA_256".into(),
            },
        )
        .await
        .unwrap();
    let pem = c
        .public_key(&rsa_signer.key_id)
        .await
        .unwrap()
        .public_key_pem;
    std::fs::write(files.path().join("rsa.pem"), pem).unwrap();
    std::fs::write(files.path().join("pss.sig"), &pss.signature.0).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(files.path())
        .args([
            "dgst",
            "-sha256",
            "-verify",
            "rsa.pem",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-signature",
            "pss.sig",
            "msg",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // HSM keys are never exportable, whatever is asked.
    let (status, err, _) = raw(
        &server.addr,
        "POST",
        "/v1/keys",
        Some(&root),
        Some(br#"{"spec":"AES_256","origin":"HSM","exportable":true}"#.to_vec()),
    )
    .await;
    assert_eq!((status, code_of(&err)), (400, "ValidationError"), "{err}");
    // ...nor exported later, to anyone.
    let rsa = create(&c, "RSA_2048", Some("ENCRYPT_DECRYPT"), None).await;
    let wrapping = c.public_key(&rsa.key_id).await.unwrap().public_key_der;
    let (status, err, _) = raw(
        &server.addr,
        "POST",
        &format!("/v1/keys/{}/export", in_token.key_id),
        Some(&root),
        Some(
            serde_json::to_vec(&serde_json::json!({"wrapping_public_key_der": wrapping})).unwrap(),
        ),
    )
    .await;
    assert_eq!((status, code_of(&err)), (409, "InvalidState"), "{err}");
    // A spec the token does not offer is the request's to change: 400 naming it, never a 503 (which load
    // balancers and clients read as "node down, retry elsewhere").
    for spec in ["SM4", "ED25519", "ML_DSA_65", "ML_KEM_768"] {
        let (status, err, _) = raw(
            &server.addr,
            "POST",
            "/v1/keys",
            Some(&root),
            Some(format!(r#"{{"spec":"{spec}","origin":"HSM"}}"#).into_bytes()),
        )
        .await;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(spec),
            "{err}"
        );
    }
    // An RSA key in the token encrypts only with what the token can decrypt: SoftHSM 2.6 decrypts OAEP with
    // SHA-1 only, so OAEP with SHA-256 is refused before a ciphertext nobody could decrypt is made.
    let oaep = create(&c, "RSA_2048", Some("ENCRYPT_DECRYPT"), Some("HSM")).await;
    // The key lists what the token can decrypt, on creation and on description alike.
    let offered = oaep.encryption_algorithms.clone();
    assert!(
        offered.iter().any(|a| a == "RSAES_OAEP_SHA_1"),
        "{offered:?}"
    );
    assert_eq!(
        c.describe_key(&oaep.key_id)
            .await
            .unwrap()
            .encryption_algorithms,
        offered
    );
    let encrypt = |alg: &str| {
        serde_json::to_vec(&serde_json::json!({"plaintext": "c2VjcmV0", "algorithm": alg})).unwrap()
    };
    let path = format!("/v1/keys/{}/encrypt", oaep.key_id);
    let (status, sha1, _) = raw(
        &server.addr,
        "POST",
        &path,
        Some(&root),
        Some(encrypt("RSAES_OAEP_SHA_1")),
    )
    .await;
    assert_eq!(status, 200, "{sha1}");
    let back = c
        .decrypt(
            Some(&oaep.key_id),
            &base64::engine::general_purpose::STANDARD
                .decode(sha1["ciphertext"].as_str().unwrap())
                .unwrap(),
            None,
            Some("RSAES_OAEP_SHA_1"),
        )
        .await
        .unwrap();
    assert_eq!(back.plaintext.expose(), b"secret");
    let (status, err, _) = raw(
        &server.addr,
        "POST",
        &path,
        Some(&root),
        Some(encrypt("RSAES_OAEP_SHA_256")),
    )
    .await;
    assert_eq!(
        status == 200,
        offered.iter().any(|a| a == "RSAES_OAEP_SHA_256"),
        "listed {offered:?}, encrypt answered {status}"
    );
    if status != 200 {
        assert_eq!((status, code_of(&err)), (400, "IncorrectKeyUsage"), "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot decrypt"),
            "{err}"
        );
    } else {
        // A token that does decrypt OAEP with SHA-256: what it encrypted decrypts.
        let d = c
            .decrypt(
                Some(&oaep.key_id),
                &base64::engine::general_purpose::STANDARD
                    .decode(err["ciphertext"].as_str().unwrap())
                    .unwrap(),
                None,
                Some("RSAES_OAEP_SHA_256"),
            )
            .await
            .unwrap();
        assert_eq!(d.plaintext.expose(), b"secret");
    }

    // A restart needs nobody: the service opens its unseal key with the token.
    let env = [("KEYWARD_PKCS11_PIN", pin.as_str())];
    let logged = server.logs().len();
    server.restart(&env);
    let status = server.client(None).status().await.unwrap();
    assert!(!status.sealed, "a token-rooted service must unseal itself");
    // And it says so, rather than asking for shares nobody needs to give.
    let start = &server.logs()[logged..];
    assert!(
        start.contains("unsealed itself with the PKCS#11 token"),
        "{start}"
    );
    assert!(!start.contains("is sealed"), "{start}");
    let c = server.client(Some(&root));
    for (ct, plain) in [
        (&ct_soft, &b"software key"[..]),
        (&ct_token, &b"token key"[..]),
    ] {
        let d = c.decrypt(None, &ct.ciphertext.0, None, None).await.unwrap();
        assert_eq!(d.plaintext.expose(), plain);
    }
    assert!(c
        .verify(
            &signer.key_id,
            &VerifyRequest {
                message: Some(B64(b"signed in the token".to_vec())),
                digest: None,
                external_mu: None,
                signature: sig.signature.clone(),
                algorithm: "ECDSA_SHA_256".into(),
                version: None,
            },
        )
        .await
        .unwrap());
    c.key_action(&in_token.key_id, "rotate").await.unwrap();
    let ct2 = c
        .encrypt(&in_token.key_id, b"version 2", None)
        .await
        .unwrap();
    assert_eq!(ct2.version, 2);
    assert_eq!(
        c.decrypt(None, &ct2.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"version 2"
    );
    // Destroying a version of an HSM key deletes its object from the token, not just Keyward's reference.
    let labels = || {
        let (module, label, pin) = pkcs11_token();
        let out = std::process::Command::new("pkcs11-tool")
            .args([
                "--module",
                &module,
                "--token-label",
                &label,
                "--login",
                "--pin",
                &pin,
                "--list-objects",
            ])
            .output()
            .expect("pkcs11-tool (package opensc) is needed for this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let v1 = format!("keyward:{}:1", in_token.key_id);
    let v2 = format!("keyward:{}:2", in_token.key_id);
    let before = labels();
    assert!(before.contains(&v1) && before.contains(&v2), "{before}");
    c.version_action(&in_token.key_id, 1, "destroy")
        .await
        .unwrap();
    let after = labels();
    assert!(!after.contains(&v1), "{after}");
    assert!(after.contains(&v2), "{after}");
    let (status, err, _) = raw(
        &server.addr,
        "POST",
        "/v1/decrypt",
        Some(&root),
        Some(serde_json::to_vec(&serde_json::json!({"ciphertext": ct_token.ciphertext})).unwrap()),
    )
    .await;
    assert_eq!((status, code_of(&err)), (409, "KeyDestroyed"), "{err}");
    server.stop();

    // Another token (same module, different token): the store stays shut, and the service says why.
    common::new_softhsm_token("keyward-other", "4321");
    let (module, _, _) = pkcs11_token();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", common::free_port()),
            "--data-dir",
        ])
        .arg(dir.path())
        .args([
            "--pkcs11-module",
            &module,
            "--pkcs11-token-label",
            "keyward-other",
        ])
        .env("KEYWARD_PKCS11_PIN", "4321")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("cannot open this service's unseal key"),
        "{text}"
    );
    assert!(!text.contains("4321"), "{text}");
}
