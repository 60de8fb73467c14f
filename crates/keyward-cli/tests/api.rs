//! End-to-end tests of the real `keyward` binary: every endpoint, every error code of the contract, on a
//! fresh server and again after a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use common::{code_of, raw, Server, ROOT};
use keyward_api::*;
use keyward_client::{Client, Error};
use serde_json::json;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn ctx(pairs: &[(&str, &str)]) -> Option<Context> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn api_code<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The audit records a query returns, as (principal, outcome, source keys).
async fn audited(addr: &str, query: &str) -> Vec<(String, String, Vec<String>)> {
    let (st, page, _) = raw(addr, "GET", &format!("/v1/audit?{query}"), Some(ROOT), None).await;
    assert_eq!(st, 200, "{page}");
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let sources = r["source_key_ids"].as_array();
            (
                text(&r["principal"]),
                text(&r["outcome"]),
                sources
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

async fn create(c: &Client, spec: &str, usage: Option<&str>) -> KeyObject {
    c.create_key(&CreateKeyRequest {
        spec: spec.into(),
        usage: usage.map(str::to_string),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_a_fresh_server_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::dev(&dir.path().join("data"));
    let c = server.root();

    // System.
    let h = c.health().await.unwrap();
    assert_eq!(h.status, "ok");
    let s = c.status().await.unwrap();
    assert!(s.initialized && !s.sealed);
    assert_eq!(s.root_of_trust.as_deref(), Some("dev"));
    let (st, openapi, _) = raw(&server.addr, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        openapi["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );

    // Symmetric key life: create with alias and tags, use, rotate, version rules.
    let k = c
        .create_key(&CreateKeyRequest {
            spec: "SYMMETRIC_DEFAULT".into(),
            alias: Some("alias/orders".into()),
            description: Some("order records".into()),
            tags: Some(BTreeMap::from([("team".into(), "payments".into())])),
            rotation_period_days: Some(90),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (k.state.as_str(), k.primary_version, k.alias.as_deref()),
        ("Enabled", 1, Some("alias/orders"))
    );
    assert!(k.next_rotation_at.is_some());
    for r in [k.key_id.as_str(), "alias/orders", "alias:orders"] {
        assert_eq!(c.describe_key(r).await.unwrap().key_id, k.key_id);
    }
    let e1 = c
        .encrypt("alias/orders", b"order #1", ctx(&[("tenant", "acme")]))
        .await
        .unwrap();
    assert_eq!(e1.key_id, k.key_id);
    let d = c
        .decrypt(None, &e1.ciphertext.0, ctx(&[("tenant", "acme")]), None)
        .await
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"order #1");
    let d = c
        .decrypt(
            Some(&k.key_id),
            &e1.ciphertext.0,
            ctx(&[("tenant", "acme")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(d.version, 1);
    let k2 = c.key_action(&k.key_id, "rotate").await.unwrap();
    assert_eq!(k2.primary_version, 2);
    assert_eq!(c.versions(&k.key_id).await.unwrap().versions.len(), 2);
    // Versions are paged like every list, oldest first; the client follows the pages.
    for n in 3..=5 {
        assert_eq!(
            c.key_action(&k.key_id, "rotate")
                .await
                .unwrap()
                .primary_version,
            n
        );
    }
    let mut walked = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let path = format!("/v1/keys/{}/versions?{query}", k.key_id);
        let (st, v, _) = raw(&server.addr, "GET", &path, Some(ROOT), None).await;
        assert_eq!(st, 200, "{v}");
        walked.extend(
            v["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["version"].as_u64().unwrap()),
        );
        match v["next_token"].as_str() {
            Some(t) => query = format!("limit=2&next_token={t}"),
            None => break,
        }
    }
    assert_eq!(walked, [1, 2, 3, 4, 5]);
    let all = c.versions(&k.key_id).await.unwrap().versions;
    assert_eq!(
        all.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    for bad in ["limit=0", "next_token=%25", "state=Enabled"] {
        let path = format!("/v1/keys/{}/versions?{bad}", k.key_id);
        let (st, v, _) = raw(&server.addr, "GET", &path, Some(ROOT), None).await;
        assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{bad}: {v}");
    }
    assert_eq!(
        c.version_action(&k.key_id, 1, "archive")
            .await
            .unwrap()
            .state,
        "Archived"
    );
    assert_eq!(
        c.version_action(&k.key_id, 1, "restore")
            .await
            .unwrap()
            .state,
        "Enabled"
    );
    assert_eq!(
        c.set_primary(&k.key_id, 1).await.unwrap().primary_version,
        1
    );
    assert_eq!(
        c.set_primary(&k.key_id, 2).await.unwrap().primary_version,
        2
    );
    assert_eq!(
        c.version_action(&k.key_id, 1, "disable")
            .await
            .unwrap()
            .state,
        "Disabled"
    );
    assert_eq!(
        c.version_action(&k.key_id, 1, "enable")
            .await
            .unwrap()
            .state,
        "Enabled"
    );
    let patched = c
        .update_key(
            &k.key_id,
            &UpdateKeyRequest {
                description: Some("renamed".into()),
                rotation_period_days: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (patched.description.as_str(), patched.rotation_period_days),
        ("renamed", None)
    );
    assert_eq!(
        c.key_action(&k.key_id, "disable").await.unwrap().state,
        "Disabled"
    );
    assert_eq!(
        c.key_action(&k.key_id, "enable").await.unwrap().state,
        "Enabled"
    );
    let pending = c.schedule_deletion(&k.key_id, 7).await.unwrap();
    assert_eq!(pending.state, "PendingDeletion");
    assert!(pending.deletion_date.is_some());
    assert_eq!(
        c.key_action(&k.key_id, "cancel-deletion")
            .await
            .unwrap()
            .state,
        "Disabled"
    );
    c.key_action(&k.key_id, "enable").await.unwrap();

    // Batch encrypt / decrypt / reencrypt; one bad item does not fail the others.
    let batch = c
        .encrypt_with(
            &k.key_id,
            &EncryptBody {
                items: Some(vec![
                    EncryptRequest {
                        plaintext: SecretB64::new(b"a".to_vec()),
                        context: None,
                        algorithm: None,
                    },
                    EncryptRequest {
                        plaintext: SecretB64::new(b"b".to_vec()),
                        context: None,
                        algorithm: Some("RSAES_OAEP_SHA_1".into()),
                    },
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(batch["items"][0]["ciphertext"].is_string());
    assert_eq!(batch["items"][1]["error"]["code"], "IncorrectKeyUsage");
    let (st, body, _) = raw(
        &server.addr,
        "POST",
        "/v1/decrypt",
        Some(ROOT),
        Some(serde_json::to_vec(&json!({"items": [{"ciphertext": batch["items"][0]["ciphertext"]}, {"ciphertext": "AAAA"}]})).unwrap()),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body["items"][0]["plaintext"], b64(b"a"));
    assert_eq!(body["items"][1]["error"]["code"], "InvalidCiphertext");
    // A key that no item could use fails the whole batch with the key's own status, as a single call does.
    let signer = create(&c, "ECC_NIST_P384", Some("SIGN_VERIFY")).await;
    c.key_action(&k.key_id, "disable").await.unwrap();
    let sealed = batch["items"][0]["ciphertext"].clone();
    for (key, expected) in [
        (k.key_id.as_str(), (409, "KeyDisabled")),
        (signer.key_id.as_str(), (400, "IncorrectKeyUsage")),
        ("00000000-0000-0000-0000-000000000000", (404, "NotFound")),
        ("not-a-key", (400, "ValidationError")),
    ] {
        for (op, item) in [
            ("encrypt", json!({"plaintext": "AA=="})),
            ("decrypt", json!({"ciphertext": sealed})),
            ("reencrypt", json!({"ciphertext": sealed})),
        ] {
            let (st, v, _) = raw(
                &server.addr,
                "POST",
                &format!("/v1/keys/{key}/{op}"),
                Some(ROOT),
                Some(serde_json::to_vec(&json!({ "items": [item.clone(), item] })).unwrap()),
            )
            .await;
            assert_eq!((st, code_of(&v)), expected, "{op} on {key}: {v}");
        }
    }
    c.key_action(&k.key_id, "enable").await.unwrap();
    let other = create(&c, "AES_256", None).await;
    let moved = c
        .reencrypt(
            &other.key_id,
            &ReencryptBody {
                ciphertext: Some(e1.ciphertext.clone()),
                context: ctx(&[("tenant", "acme")]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(moved.key_id, other.key_id);
    assert_eq!(
        c.decrypt(None, &moved.ciphertext.0, ctx(&[("tenant", "acme")]), None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"order #1"
    );

    // Data keys.
    let dk = c
        .data_key(
            &k.key_id,
            &DataKeyRequest {
                spec: "AES_256".into(),
                context: None,
                include_plaintext: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(dk.plaintext.as_ref().unwrap().expose().len(), 32);
    assert_eq!(
        c.decrypt(None, &dk.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext,
        dk.plaintext.clone().unwrap()
    );
    let dkp = c
        .data_key_pair(
            &k.key_id,
            &DataKeyPairRequest {
                spec: "ECC_NIST_P256".into(),
                context: None,
                include_plaintext: Some(false),
            },
        )
        .await
        .unwrap();
    assert!(dkp.private_key_der.is_none() && !dkp.public_key_der.0.is_empty());

    // Signing, digest signing, MACs, derivation, agreement, random.
    let signer = create(&c, "ECC_NIST_P256", Some("SIGN_VERIFY")).await;
    let sig = c
        .sign(
            &signer.key_id,
            &SignRequest {
                message: Some(B64(b"m".to_vec())),
                digest: None,
                external_mu: None,
                algorithm: "ECDSA_SHA_256".into(),
            },
        )
        .await
        .unwrap();
    assert!(c
        .verify(
            &signer.key_id,
            &VerifyRequest {
                message: Some(B64(b"m".to_vec())),
                digest: None,
                external_mu: None,
                signature: sig.signature.clone(),
                algorithm: "ECDSA_SHA_256".into(),
                version: None
            }
        )
        .await
        .unwrap());
    assert!(!c
        .verify(
            &signer.key_id,
            &VerifyRequest {
                message: Some(B64(b"n".to_vec())),
                digest: None,
                external_mu: None,
                signature: sig.signature.clone(),
                algorithm: "ECDSA_SHA_256".into(),
                version: None
            }
        )
        .await
        .unwrap());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"m");
    assert!(c
        .verify(
            &signer.key_id,
            &VerifyRequest {
                message: None,
                digest: Some(B64(digest.as_ref().to_vec())),
                external_mu: None,
                signature: sig.signature.clone(),
                algorithm: "ECDSA_SHA_256".into(),
                version: Some(1)
            }
        )
        .await
        .unwrap());
    let pk = c.public_key(&signer.key_id).await.unwrap();
    assert!(pk.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let hm = create(&c, "HMAC_256", None).await;
    let m = c
        .mac(
            &hm.key_id,
            &MacRequest {
                message: B64(b"x".to_vec()),
                algorithm: "HMAC_SHA_256".into(),
            },
        )
        .await
        .unwrap();
    assert!(c
        .verify_mac(
            &hm.key_id,
            &VerifyMacRequest {
                message: B64(b"x".to_vec()),
                mac: m.mac.clone(),
                algorithm: "HMAC_SHA_256".into()
            }
        )
        .await
        .unwrap());
    let dv = c
        .derive(
            &k.key_id,
            &DeriveRequest {
                context: B64(b"session".to_vec()),
                length: 32,
                include_plaintext: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(dv.plaintext.unwrap().expose().len(), 32);
    let agree_a = create(&c, "ECC_NIST_P384", Some("KEY_AGREEMENT")).await;
    let agree_b = create(&c, "ECC_NIST_P384", Some("KEY_AGREEMENT")).await;
    let ab = c
        .agree(
            &agree_a.key_id,
            &c.public_key(&agree_b.key_id)
                .await
                .unwrap()
                .public_key_der
                .0,
        )
        .await
        .unwrap();
    let ba = c
        .agree(
            &agree_b.key_id,
            &c.public_key(&agree_a.key_id)
                .await
                .unwrap()
                .public_key_der
                .0,
        )
        .await
        .unwrap();
    assert_eq!(ab.shared_secret, ba.shared_secret);
    assert_eq!(c.random(64).await.unwrap().len(), 64);

    // RSA encryption and certificates.
    let rsa = create(&c, "RSA_2048", Some("ENCRYPT_DECRYPT")).await;
    let enc = c
        .encrypt_with(
            &rsa.key_id,
            &EncryptBody {
                plaintext: Some(SecretB64::new(b"rsa".to_vec())),
                algorithm: Some("RSAES_OAEP_SHA_256".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ct = base64::engine::general_purpose::STANDARD
        .decode(enc["ciphertext"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        c.decrypt(Some(&rsa.key_id), &ct, None, Some("RSAES_OAEP_SHA_256"))
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"rsa"
    );
    let ca = create(&c, "ECC_NIST_P256", Some("SIGN_VERIFY")).await;
    let cert = c
        .certificate(
            &ca.key_id,
            &CertificateRequest {
                csr_pem: None,
                subject: Some("CN=Keyward Test CA,O=Keyward".into()),
                days: 30,
                is_ca: Some(true),
            },
        )
        .await
        .unwrap();
    assert!(cert
        .certificate_pem
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let leaf = create(&c, "ED25519", Some("SIGN_VERIFY")).await;
    let csr = c
        .csr(
            &leaf.key_id,
            &CsrRequest {
                subject: "CN=api.example.com".into(),
                sans: Some(vec!["api.example.com".into()]),
            },
        )
        .await
        .unwrap();
    let issued = c
        .certificate(
            &ca.key_id,
            &CertificateRequest {
                csr_pem: Some(csr.csr_pem),
                subject: Some("CN=Keyward Test CA,O=Keyward".into()),
                days: 7,
                is_ca: None,
            },
        )
        .await
        .unwrap();
    assert!(issued.certificate_pem.contains("BEGIN CERTIFICATE"));

    // BYOK import into an EXTERNAL key and wrapped export.
    let ext = c
        .create_key(&CreateKeyRequest {
            spec: "HMAC_256".into(),
            origin: Some("EXTERNAL".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ext.primary_version, 0);
    let params = c.import_parameters(&ext.key_id).await.unwrap();
    let material = [0x5au8; 32];
    let wrapped = keyward_client::byok::wrap(&params.wrapping_public_key_der.0, &material).unwrap();
    let imported = c
        .import(
            &ext.key_id,
            &ImportRequest {
                import_token: params.import_token,
                wrapped_key_material: SecretB64::new(wrapped),
            },
        )
        .await
        .unwrap();
    assert_eq!(imported.primary_version, 1);
    let mac = c
        .mac(
            &ext.key_id,
            &MacRequest {
                message: B64(b"byok".to_vec()),
                algorithm: "HMAC_SHA_256".into(),
            },
        )
        .await
        .unwrap();
    let expected = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &material),
        b"byok",
    );
    assert_eq!(mac.mac.0, expected.as_ref());
    let exp = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            exportable: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let recipient =
        aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let recipient_spki = aws_lc_rs::encoding::AsDer::as_der(&recipient.public_key()).unwrap();
    let out = c
        .export(
            &exp.key_id,
            &ExportRequest {
                wrapping_public_key_der: B64(recipient_spki.as_ref().to_vec()),
                version: None,
            },
        )
        .await
        .unwrap();
    assert!(out.wrapped_key_material.0.len() > 256 + 32);

    // Aliases. A key named by another alias: the answer names the key itself.
    let set = c.put_alias("alias/ledger", &other.key_id).await.unwrap();
    assert_eq!(
        (set.alias.as_str(), set.key_id.as_str()),
        ("alias/ledger", other.key_id.as_str())
    );
    let set = c.put_alias("ledger-too", "alias/ledger").await.unwrap();
    assert_eq!(
        (set.alias.as_str(), set.key_id.as_str()),
        ("alias/ledger-too", other.key_id.as_str())
    );
    let aliases = c.list_aliases("").await.unwrap();
    assert!(aliases
        .aliases
        .iter()
        .any(|a| a.alias == "alias/ledger" && a.key_id == other.key_id));
    assert!(aliases
        .aliases
        .iter()
        .any(|a| a.alias == "alias/ledger-too" && a.key_id == other.key_id));
    // Their audit records name the key.
    let keys_of = |action: &'static str| {
        let addr = server.addr.clone();
        async move {
            let path = format!("/v1/audit?action={action}&limit=1000");
            let (_, audit, _) = raw(&addr, "GET", &path, Some(ROOT), None).await;
            audit["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["key_id"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        }
    };
    let puts = keys_of("kms:PutAlias").await;
    assert!(puts.len() >= 2 && puts.iter().all(|k| *k == other.key_id));
    c.delete_alias("alias/ledger-too").await.unwrap();
    assert_eq!(keys_of("kms:DeleteAlias").await.last(), Some(&other.key_id));
    c.delete_alias("alias/ledger").await.unwrap();
    assert_eq!(api_code(c.describe_key("alias/ledger").await), "NotFound");

    // Listing, filters, paging.
    let page = c.list_keys("limit=2").await.unwrap();
    assert_eq!(page.keys.len(), 2);
    let next = page.next_token.clone().unwrap();
    let page2 = c
        .list_keys(&format!("limit=2&next_token={next}"))
        .await
        .unwrap();
    assert!(page2
        .keys
        .iter()
        .all(|k| !page.keys.iter().any(|p| p.key_id == k.key_id)));
    let hmacs = c.list_keys("spec=HMAC_256").await.unwrap();
    assert_eq!(hmacs.keys.len(), 2);
    let tagged = c.list_keys("tag=team:payments").await.unwrap();
    assert_eq!(tagged.keys.len(), 1);

    // Every request was audited with its request id; the chain verifies.
    let (_, _, rid) = raw(
        &server.addr,
        "GET",
        &format!("/v1/keys/{}", k.key_id),
        Some(ROOT),
        None,
    )
    .await;
    let (st, audit, _) = raw(
        &server.addr,
        "GET",
        &format!("/v1/audit?key_id={}&limit=1000", k.key_id),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let records = audit["records"].as_array().unwrap();
    assert!(records
        .iter()
        .any(|r| r["request_id"] == rid.clone().unwrap() && r["action"] == "kms:DescribeKey"));
    let (_, verify, _) = raw(&server.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(verify["valid"], true);
    assert!(verify["records"].as_u64().unwrap() > 50);
    let metrics = c.metrics().await.unwrap();
    assert!(metrics.contains("keyward_requests_total{action=\"kms:Encrypt\",outcome=\"allow\"}"));
    assert!(metrics.contains("keyward_sealed 0"));

    // Sealing: everything refuses with 503 Sealed until unsealed (dev mode unseals again on restart).
    c.seal().await.unwrap();
    assert_eq!(api_code(c.encrypt(&k.key_id, b"x", None).await), "Sealed");
    assert_eq!(c.health().await.unwrap().status, "sealed");

    // Restart: every key and ciphertext is still there.
    server.restart(&[("KEYWARD_DEV_ROOT_TOKEN", ROOT)]);
    let c = server.root();
    assert_eq!(c.health().await.unwrap().status, "ok");
    assert_eq!(
        c.decrypt(None, &e1.ciphertext.0, ctx(&[("tenant", "acme")]), None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"order #1"
    );
    assert_eq!(
        c.describe_key("alias/orders")
            .await
            .unwrap()
            .primary_version,
        2
    );
    assert!(c
        .verify(
            &signer.key_id,
            &VerifyRequest {
                message: Some(B64(b"m".to_vec())),
                digest: None,
                external_mu: None,
                signature: sig.signature,
                algorithm: "ECDSA_SHA_256".into(),
                version: None
            }
        )
        .await
        .unwrap());
    assert_eq!(
        c.mac(
            &ext.key_id,
            &MacRequest {
                message: B64(b"byok".to_vec()),
                algorithm: "HMAC_SHA_256".into()
            }
        )
        .await
        .unwrap()
        .mac,
        mac.mac
    );
    let (_, verify, _) = raw(&server.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(verify["valid"], true, "{verify}");

    // Nothing secret reached the logs.
    let logs = server.logs();
    for secret in ["order #1", &b64(b"order #1"), &b64(&material)] {
        assert!(!logs.contains(secret), "a secret reached the server log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let c = server.root();
    let a = &server.addr;
    let k = create(&c, "AES_256", None).await;
    let ct = c
        .encrypt(&k.key_id, b"secret", ctx(&[("x", "1")]))
        .await
        .unwrap()
        .ciphertext
        .0;
    let enc_path = format!("/v1/keys/{}/encrypt", k.key_id);
    let snapshot = |c: Client, id: String| async move {
        (
            c.describe_key(&id).await.unwrap(),
            c.versions(&id).await.unwrap(),
        )
    };
    let before = snapshot(server.root(), k.key_id.clone()).await;
    // Asymmetric keys that may not sign: X.509 structures they would sign are refused as such.
    let agreement = create(&c, "ECC_NIST_P256", Some("KEY_AGREEMENT")).await;
    let rsa_encryption = create(&c, "RSA_2048", Some("ENCRYPT_DECRYPT")).await;

    let cases: Vec<(&str, String, Option<Vec<u8>>, u16, &str)> = vec![
        (
            "POST",
            format!("/v1/keys/{}/certificate", agreement.key_id),
            Some(br#"{"days": 30}"#.to_vec()),
            400,
            "IncorrectKeyUsage",
        ),
        (
            "POST",
            format!("/v1/keys/{}/csr", rsa_encryption.key_id),
            Some(br#"{"subject": "CN=x"}"#.to_vec()),
            400,
            "IncorrectKeyUsage",
        ),
        (
            "POST",
            enc_path.clone(),
            Some(b"{not json".to_vec()),
            400,
            "ValidationError",
        ),
        (
            "POST",
            enc_path.clone(),
            Some(br#"{"plaintext": "***"}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "POST",
            enc_path.clone(),
            Some(br#"{"plaintext": 42}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "POST",
            enc_path.clone(),
            Some(br#"{"plaintext": "AA==", "colour": "red"}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "POST",
            enc_path.clone(),
            Some(br#"{}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "POST",
            enc_path.clone(),
            Some(format!(r#"{{"plaintext": "{}"}}"#, b64(&vec![0u8; 64 * 1024 + 1])).into_bytes()),
            413,
            "PayloadTooLarge",
        ),
        (
            "POST",
            enc_path.clone(),
            Some(vec![b' '; 1024 * 1024 + 10]),
            413,
            "PayloadTooLarge",
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(br#"{"spec": "AES_512"}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(br#"{"spec": "AES_256", "usage": "SIGN_VERIFY"}"#.to_vec()),
            400,
            "IncorrectKeyUsage",
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(br#"{"spec": "TDES"}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "GET",
            "/v1/keys/6f0c4b0e-0000-4000-8000-000000000000".into(),
            None,
            404,
            "NotFound",
        ),
        (
            "GET",
            "/v1/keys/not-a-key".into(),
            None,
            400,
            "ValidationError",
        ),
        (
            "GET",
            "/v1/keys?colour=red".into(),
            None,
            400,
            "ValidationError",
        ),
        (
            "GET",
            "/v1/keys?limit=5000".into(),
            None,
            400,
            "ValidationError",
        ),
        (
            "POST",
            format!("/v1/keys/{}/versions/9/enable", k.key_id),
            None,
            404,
            "NotFound",
        ),
        (
            "POST",
            format!("/v1/keys/{}/versions/x/enable", k.key_id),
            None,
            400,
            "ValidationError",
        ),
        (
            "POST",
            format!("/v1/keys/{}/versions/1/explode", k.key_id),
            None,
            404,
            "NotFound",
        ),
        (
            "POST",
            format!("/v1/keys/{}/versions/1/destroy", k.key_id),
            None,
            409,
            "InvalidState",
        ),
        (
            "POST",
            format!("/v1/keys/{}/cancel-deletion", k.key_id),
            None,
            409,
            "InvalidState",
        ),
        (
            "POST",
            format!("/v1/keys/{}/schedule-deletion", k.key_id),
            Some(br#"{"pending_days": 3}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "POST",
            format!("/v1/keys/{}/sign", k.key_id),
            Some(br#"{"message": "AA==", "algorithm": "ECDSA_SHA_256"}"#.to_vec()),
            400,
            "IncorrectKeyUsage",
        ),
        (
            "POST",
            format!("/v1/keys/{}/public-key", k.key_id),
            None,
            404,
            "NotFound",
        ),
        (
            "GET",
            format!("/v1/keys/{}/public-key", k.key_id),
            None,
            400,
            "IncorrectKeyUsage",
        ),
        (
            "POST",
            "/v1/decrypt".into(),
            Some(
                serde_json::to_vec(
                    &json!({"ciphertext": b64(&ct[..ct.len() - 1]), "context": {"x": "1"}}),
                )
                .unwrap(),
            ),
            400,
            "InvalidCiphertext",
        ),
        (
            "POST",
            "/v1/decrypt".into(),
            Some(
                serde_json::to_vec(&json!({"ciphertext": b64(&ct), "context": {"x": "2"}}))
                    .unwrap(),
            ),
            400,
            "InvalidCiphertext",
        ),
        (
            "POST",
            "/v1/decrypt".into(),
            Some(serde_json::to_vec(&json!({"ciphertext": b64(&ct)})).unwrap()),
            400,
            "InvalidCiphertext",
        ),
        (
            "POST",
            "/v1/random".into(),
            Some(br#"{"length": 0}"#.to_vec()),
            400,
            "ValidationError",
        ),
        (
            "PUT",
            "/v1/aliases/alias%2Fbad%20name".into(),
            Some(serde_json::to_vec(&json!({"key_id": k.key_id})).unwrap()),
            400,
            "ValidationError",
        ),
        ("GET", "/v1/no-such-endpoint".into(), None, 404, "NotFound"),
    ];
    for (method, path, body, status, code) in cases {
        let (st, v, rid) = raw(a, method, &path, Some(ROOT), body).await;
        assert_eq!((st, code_of(&v)), (status, code), "{method} {path}: {v}");
        assert!(rid.is_some(), "no x-request-id on {path}");
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    // Tampered ciphertext, every byte.
    for i in [0, 1, 5, 20, 25, ct.len() - 1] {
        let mut bad = ct.clone();
        bad[i] ^= 0x40;
        let (st, v, _) = raw(
            a,
            "POST",
            "/v1/decrypt",
            Some(ROOT),
            Some(
                serde_json::to_vec(&json!({"ciphertext": b64(&bad), "context": {"x": "1"}}))
                    .unwrap(),
            ),
        )
        .await;
        assert_eq!(st, 400, "flip {i}: {v}");
    }
    // Authentication.
    assert_eq!(raw(a, "GET", "/v1/keys", None, None).await.0, 401);
    assert_eq!(
        code_of(&raw(a, "GET", "/v1/keys", Some("kw.wrong"), None).await.1),
        "Unauthenticated"
    );
    // Conflicts.
    c.put_alias("alias/taken", &k.key_id).await.unwrap();
    let dup = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            alias: Some("alias/taken".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(api_code(dup), "AlreadyExists");
    c.delete_alias("alias/taken").await.unwrap();

    assert_eq!(
        snapshot(server.root(), k.key_id.clone()).await,
        before,
        "refused requests changed the key"
    );

    // State errors.
    let signing = create(&c, "ECC_NIST_P256", Some("SIGN_VERIFY")).await;
    c.key_action(&signing.key_id, "disable").await.unwrap();
    let (st, v, _) = raw(
        a,
        "POST",
        &format!("/v1/keys/{}/certificate", signing.key_id),
        Some(ROOT),
        Some(br#"{"days": 30}"#.to_vec()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (409, "KeyDisabled"), "{v}");
    c.key_action(&k.key_id, "disable").await.unwrap();
    assert_eq!(
        api_code(c.encrypt(&k.key_id, b"x", None).await),
        "KeyDisabled"
    );
    assert_eq!(
        api_code(c.decrypt(None, &ct, ctx(&[("x", "1")]), None).await),
        "KeyDisabled"
    );
    c.key_action(&k.key_id, "enable").await.unwrap();
    c.schedule_deletion(&k.key_id, 7).await.unwrap();
    assert_eq!(
        api_code(c.encrypt(&k.key_id, b"x", None).await),
        "KeyPendingDeletion"
    );
    assert_eq!(
        api_code(c.key_action(&k.key_id, "rotate").await),
        "KeyPendingDeletion"
    );
    let rotated = create(&c, "AES_256", None).await;
    c.key_action(&rotated.key_id, "rotate").await.unwrap();
    c.version_action(&rotated.key_id, 1, "destroy")
        .await
        .unwrap();
    assert_eq!(
        api_code(c.set_primary(&rotated.key_id, 1).await),
        "KeyDestroyed"
    );
    c.version_action(&rotated.key_id, 2, "enable")
        .await
        .unwrap();
    assert_eq!(
        api_code(c.version_action(&rotated.key_id, 1, "enable").await),
        "KeyDestroyed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_init_unseal_seal_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[], &[]);
    let anon = server.client(None);
    assert_eq!(anon.health().await.unwrap().status, "uninitialized");
    assert_eq!(api_code(anon.init(3, 5).await), "ValidationError");
    let init = anon.init(5, 3).await.unwrap();
    assert_eq!(init.shares.len(), 5);
    assert_eq!(api_code(anon.init(5, 3).await), "InvalidState");
    let c = server.client(Some(&init.root_token));
    assert_eq!(
        api_code(
            c.create_key(&CreateKeyRequest {
                spec: "AES_256".into(),
                ..Default::default()
            })
            .await
        ),
        "Sealed"
    );
    assert_eq!(anon.unseal(&init.shares[0]).await.unwrap().progress, 1);
    assert_eq!(anon.unseal(&init.shares[3]).await.unwrap().progress, 2);
    assert!(!anon.unseal(&init.shares[4]).await.unwrap().sealed);
    let k = create(&c, "AES_256", None).await;
    let ct = c
        .encrypt(&k.key_id, b"prod", None)
        .await
        .unwrap()
        .ciphertext
        .0;
    // Only admins seal.
    assert_eq!(api_code(anon.seal().await), "Unauthenticated");
    server.restart(&[]);
    let anon = server.client(None);
    let c = server.client(Some(&init.root_token));
    assert!(anon.status().await.unwrap().sealed);
    assert_eq!(api_code(c.decrypt(None, &ct, None, None).await), "Sealed");
    for s in &init.shares[2..5] {
        anon.unseal(s).await.unwrap();
    }
    assert_eq!(
        c.decrypt(None, &ct, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"prod"
    );
    assert_eq!(c.rotate_root().await.unwrap().generation, 2);
    assert_eq!(
        c.decrypt(None, &ct, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"prod"
    );
    // The root token can be revoked once an admin exists, and a new one minted from the shares.
    let admin = {
        let body =
            serde_json::to_vec(&json!({"name": "admin1", "kind": "service", "roles": ["admin"]}))
                .unwrap();
        let (st, _, _) = raw(
            &server.addr,
            "POST",
            "/v1/identities",
            Some(&init.root_token),
            Some(body),
        )
        .await;
        assert_eq!(st, 201);
        let (_, t, _) = raw(
            &server.addr,
            "POST",
            "/v1/identities/admin1/tokens",
            Some(&init.root_token),
            Some(b"{}".to_vec()),
        )
        .await;
        t["token"].as_str().unwrap().to_string()
    };
    let (st, _, _) = raw(
        &server.addr,
        "DELETE",
        &format!("/v1/tokens/{}", init.root_token_id),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        api_code(c.status().await.map(drop).and(c.list_keys("").await)),
        "Unauthenticated"
    );
    let wrong = json!({"shares": [init.shares[0], init.shares[1]]});
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/sys/generate-root",
        None,
        Some(serde_json::to_vec(&wrong).unwrap()),
    )
    .await;
    assert_eq!(
        (st, code_of(&v)),
        (400, "ValidationError"),
        "two shares of three"
    );
    let good = json!({"shares": [init.shares[4], init.shares[1], init.shares[2]]});
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/sys/generate-root",
        None,
        Some(serde_json::to_vec(&good).unwrap()),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let new_root = server.client(Some(v["root_token"].as_str().unwrap()));
    assert!(new_root.list_keys("").await.is_ok());
    let status = server.stop();
    assert!(status.success(), "graceful shutdown failed: {status}");
    assert!(server.logs().contains("keys dropped from memory"));
    for share in &init.shares {
        assert!(
            !server.logs().contains(share.as_str()),
            "a share reached the log"
        );
    }
    assert!(
        !server.logs().contains(init.root_token.as_str()),
        "the root token reached the log"
    );
}

#[test]
fn unsafe_or_wrong_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(args)
            .env_remove("KEYWARD_LISTEN")
            .output()
            .unwrap()
    };
    let data = dir.path().join("d");
    let d = data.to_str().unwrap();
    let out = run(&["serve", "--dev", "--data-dir", d, "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-http"));
    let cfg = dir.path().join("k.toml");
    let cfg_path = cfg.to_str().unwrap();
    for (file, refusal) in [
        ("tls_crt = \"/x\"\n", "tls_crt"),
        ("approval_ttl_seconds = 0\n", "approval_ttl_seconds is 1 to"),
        (
            "approval_retention_days = 0\n",
            "approval_retention_days is 1 to 36500",
        ),
        (
            "approval_ttl_seconds = 2592001\n",
            "approval_ttl_seconds is 1 to",
        ),
        (
            "idle_timeout_seconds = 0\n",
            "idle_timeout_seconds is 1 to 3600",
        ),
        ("key_cache_capacity = 0\n", "key_cache_capacity is 16 to"),
        (
            "proxy_protocol_from = [\"10.0.0.0/33\"]\n",
            "proxy_protocol_from: '10.0.0.0/33' is not an address or CIDR block",
        ),
    ] {
        std::fs::write(&cfg, file).unwrap();
        let out = run(&["serve", "--dev", "--data-dir", d, "--config", cfg_path]);
        assert!(!out.status.success(), "{file}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(refusal),
            "{file}"
        );
    }
    let out = run(&[
        "serve",
        "--dev",
        "--data-dir",
        d,
        "--tls-cert",
        "/nonexistent.pem",
    ]);
    assert!(!out.status.success());
}

async fn token_for(server: &Server, name: &str, roles: &[&str]) -> String {
    token_with_policies(server, name, roles, &[]).await
}

async fn token_with_policies(
    server: &Server,
    name: &str,
    roles: &[&str],
    policies: &[&str],
) -> String {
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities",
        Some(ROOT),
        Some(
            serde_json::to_vec(
                &json!({"name": name, "kind": "service", "roles": roles, "policies": policies}),
            )
            .unwrap(),
        ),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        &format!("/v1/identities/{name}/tokens"),
        Some(ROOT),
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_separate_duties_and_tokens_expire_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let root = server.root();
    let key = create(&root, "AES_256", None).await.key_id;
    let ct = root.encrypt(&key, b"x", None).await.unwrap().ciphertext.0;
    let key_admin = server.client(Some(&token_for(&server, "ops", &["key-admin"]).await));
    let key_user = server.client(Some(&token_for(&server, "app", &["key-user"]).await));
    let auditor = server.client(Some(&token_for(&server, "audit", &["auditor"]).await));
    let nobody = server.client(Some(&token_for(&server, "nobody", &[]).await));

    // key-admin manages, never uses.
    let made = create(&key_admin, "AES_256", None).await.key_id;
    key_admin.key_action(&made, "rotate").await.unwrap();
    assert_eq!(
        api_code(key_admin.encrypt(&key, b"x", None).await),
        "AccessDenied"
    );
    assert_eq!(
        api_code(key_admin.decrypt(None, &ct, None, None).await),
        "AccessDenied"
    );
    assert_eq!(api_code(key_admin.seal().await), "AccessDenied");
    // key-user uses, never manages.
    assert!(key_user.encrypt(&key, b"x", None).await.is_ok());
    assert!(key_user.decrypt(None, &ct, None, None).await.is_ok());
    assert!(key_user.describe_key(&key).await.is_ok());
    assert_eq!(
        api_code(
            key_user
                .create_key(&CreateKeyRequest {
                    spec: "AES_256".into(),
                    ..Default::default()
                })
                .await
        ),
        "AccessDenied"
    );
    assert_eq!(
        api_code(key_user.schedule_deletion(&key, 7).await),
        "AccessDenied"
    );
    // auditor reads audit and metadata only.
    let (st, _, _) = raw(&server.addr, "GET", "/v1/audit/verify", None, None).await;
    assert_eq!(st, 401);
    assert!(auditor.list_keys("").await.is_ok());
    assert_eq!(
        api_code(auditor.encrypt(&key, b"x", None).await),
        "AccessDenied"
    );
    assert_eq!(
        api_code(auditor.key_action(&key, "disable").await),
        "AccessDenied"
    );
    // No role, no access.
    assert_eq!(api_code(nobody.list_keys("").await), "AccessDenied");
    // Only admins create identities.
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities",
        Some(&token_for(&server, "ops2", &["key-admin"]).await),
        Some(serde_json::to_vec(&json!({"name": "x", "kind": "service"})).unwrap()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (403, "AccessDenied"));
    // Denials are audited with the principal.
    let (_, denied, _) = raw(
        &server.addr,
        "GET",
        "/v1/audit?outcome=deny&principal=ops",
        Some(ROOT),
        None,
    )
    .await;
    assert!(denied["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "kms:Encrypt" && r["error_code"] == "AccessDenied"));

    // Short-lived tokens expire; revoked tokens stop working at once.
    let (_, t, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities/app/tokens",
        Some(ROOT),
        Some(br#"{"ttl_seconds": 2}"#.to_vec()),
    )
    .await;
    let short = server.client(Some(t["token"].as_str().unwrap()));
    // Expiry is checked in whole seconds: a 2-second token is valid for at least one full second.
    assert!(short.describe_key(&key).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(api_code(short.describe_key(&key).await), "Unauthenticated");
    let (_, t, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities/app/tokens",
        Some(ROOT),
        Some(b"{}".to_vec()),
    )
    .await;
    let revocable = server.client(Some(t["token"].as_str().unwrap()));
    assert!(revocable.describe_key(&key).await.is_ok());
    // A token tells its holder what it is: the identity, grants, id and expiry it was issued with.
    let me = revocable.whoami().await.unwrap();
    assert_eq!(
        me,
        keyward_api::CallerIdentity {
            name: "app".into(),
            roles: vec!["key-user".into()],
            policies: vec![],
            authenticated_by: "token".into(),
            token_id: t["token_id"].as_str().map(str::to_string),
            expires_at: t["expires_at"].as_str().map(str::to_string),
            mfa: false,
        }
    );
    let root_self = root.whoami().await.unwrap();
    assert_eq!(
        (
            root_self.name.as_str(),
            root_self.roles,
            root_self.expires_at
        ),
        ("root", vec!["admin".to_string()], None)
    );
    // Anyone authenticated may ask, with no role at all; nobody unauthenticated may.
    assert_eq!(nobody.whoami().await.unwrap().name, "nobody");
    assert_eq!(
        api_code(server.client(None).whoami().await),
        "Unauthenticated"
    );
    let (st, _, _) = raw(
        &server.addr,
        "DELETE",
        &format!("/v1/tokens/{}", t["token_id"].as_str().unwrap()),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        api_code(revocable.describe_key(&key).await),
        "Unauthenticated"
    );
    assert_eq!(api_code(revocable.whoami().await), "Unauthenticated");
    let (st, _, _) = raw(
        &server.addr,
        "DELETE",
        "/v1/tokens/tok_unknown",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 404);

    // Password login (Argon2id).
    let (st, _, _) = raw(&server.addr, "POST", "/v1/identities", Some(ROOT),
        Some(serde_json::to_vec(&json!({"name": "alice", "kind": "user", "roles": ["auditor"], "password": "correct horse battery"})).unwrap())).await;
    assert_eq!(st, 201);
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(br#"{"name": "alice", "password": "wrong password!!"}"#.to_vec()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (401, "Unauthenticated"));
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(br#"{"name": "mallory", "password": "whatever at all"}"#.to_vec()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (401, "Unauthenticated"));
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(br#"{"name": "alice", "password": "correct horse battery"}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let alice_token = v["token"].as_str().unwrap().to_string();
    let alice = server.client(Some(&alice_token));
    assert!(alice.list_keys("").await.is_ok());
    assert_eq!(
        api_code(alice.encrypt(&key, b"x", None).await),
        "AccessDenied"
    );
    identity_lifecycle(&server, &alice, &alice_token, &key).await;

    // Length is counted in characters on set and on login alike: the longest password of four-byte
    // characters logs in, one character more is refused.
    let longest = "🔑".repeat(1024);
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities",
        Some(ROOT),
        Some(
            serde_json::to_vec(
                &json!({"name": "bob", "kind": "user", "roles": ["auditor"], "password": longest}),
            )
            .unwrap(),
        ),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(serde_json::to_vec(&json!({"name": "bob", "password": longest})).unwrap()),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for short in ["🔑".repeat(11), "🔑".repeat(1025)] {
        let (st, v, _) = raw(&server.addr, "POST", "/v1/identities", Some(ROOT),
            Some(serde_json::to_vec(&json!({"name": "carol", "kind": "user", "roles": ["auditor"], "password": short})).unwrap())).await;
        assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{v}");
    }
    let logs = server.logs();
    assert!(
        !logs.contains("correct horse battery"),
        "a password reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_report_and_audit_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let c = server.root();
    let tdes = c
        .create_key(&CreateKeyRequest {
            spec: "TDES".into(),
            allow_legacy: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let rotating = c
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            rotation_period_days: Some(30),
            quorum: Some(Quorum { approvals: 2 }),
            ..Default::default()
        })
        .await
        .unwrap();
    let doomed = create(&c, "AES_256", None).await;
    c.schedule_deletion(&doomed.key_id, 10).await.unwrap();
    c.encrypt(&rotating.key_id, b"x", None).await.unwrap();
    let _ = raw(&server.addr, "GET", "/v1/keys", Some("kw.bogus"), None).await;
    // For the access review: a privileged user without MFA, an identity with no grants, and a worker
    // that has acted with its token.
    for body in [
        json!({"name": "ops-user", "kind": "user", "roles": ["key-admin"], "password": "a long enough password"}),
        json!({"name": "idle", "kind": "service"}),
    ] {
        let (st, v, _) = raw(
            &server.addr,
            "POST",
            "/v1/identities",
            Some(ROOT),
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await;
        assert_eq!(st, 201, "{v}");
    }
    let worker = server.client(Some(&token_for(&server, "worker", &["key-user"]).await));
    worker.encrypt(&rotating.key_id, b"y", None).await.unwrap();

    let (st, r, _) = raw(
        &server.addr,
        "GET",
        "/v1/reports/compliance?dormant_days=1",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["inventory"]["total"], 3);
    assert_eq!(r["inventory"]["by_spec"]["TDES"], 1);
    assert_eq!(r["weak_keys"][0]["key_id"], tdes.key_id.as_str());
    assert_eq!(r["pending_deletions"][0]["key_id"], doomed.key_id.as_str());
    assert_eq!(r["quorum"][0]["approvals"], 2);
    assert_eq!(r["audit_chain_valid"], true);
    let rot = r["rotation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["key_id"] == rotating.key_id.as_str())
        .unwrap();
    assert_eq!(rot["status"], "ok");
    assert!(
        r["access_by_principal"]["anonymous"]["deny"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(r["refused_and_failed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["error_code"] == "Unauthenticated"));
    let review = |name: &str| {
        r["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {r}"))
            .clone()
    };
    let ops = review("ops-user");
    assert_eq!(
        ops["findings"],
        json!(["privileged user without MFA"]),
        "{ops}"
    );
    assert_eq!(
        (ops["live_tokens"].as_u64(), ops["last_active_at"].is_null()),
        (Some(0), true)
    );
    assert_eq!(review("idle")["findings"], json!(["no roles or policies"]));
    let w = review("worker");
    assert_eq!(
        (w["live_tokens"].as_u64(), w["findings"].clone()),
        (Some(1), json!([])),
        "{w}"
    );
    assert!(w["last_active_at"].is_string(), "{w}");
    assert_eq!(r["root_tokens_live"], 1, "the dev root token");

    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/v1/reports/compliance?format=html", server.addr))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("Keyward compliance report")
            && page.contains(&tdes.key_id)
            && page.contains("</html>")
    );
    assert!(
        page.contains("access review (1 live root token)")
            && page.contains("<td class=\"flag\">privileged user without MFA</td>")
            && page
                .contains("Closed approval requests are deleted 90 days after their expiry time"),
        "{page}"
    );
    let (st, v, _) = raw(
        &server.addr,
        "GET",
        "/v1/reports/compliance?format=pdf",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (400, "ValidationError"));

    // Checkpoints: signed, and verified against the chain.
    let (st, cp, _) = raw(
        &server.addr,
        "GET",
        "/v1/audit/checkpoint",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 200, "{cp}");
    assert!(cp["seq"].as_u64().unwrap() > 5);
    let body = serde_json::to_vec(&json!({ "checkpoint": cp })).unwrap();
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/audit/verify",
        Some(ROOT),
        Some(body),
    )
    .await;
    assert_eq!((st, v["valid"].as_bool()), (200, Some(true)), "{v}");
    let mut forged = cp.clone();
    forged["head"] = json!("00");
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        "/v1/audit/verify",
        Some(ROOT),
        Some(serde_json::to_vec(&json!({ "checkpoint": forged })).unwrap()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (400, "ValidationError"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_grant_scope_condition_and_deny() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let root = server.root();
    let main = root
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            alias: Some("alias/app-main".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = root
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            alias: Some("alias/app-secret".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let signer = root
        .create_key(&CreateKeyRequest {
            spec: "ED25519".into(),
            usage: Some("SIGN_VERIFY".into()),
            alias: Some("alias/app-signer".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let policy = json!({"statements": [
        {"effect": "allow", "actions": ["kms:Encrypt", "kms:Decrypt"], "resources": ["alias/app-*", format!("key/{}", main.key_id)],
         "conditions": {"context_equals": {"tenant": "acme"}}},
        {"effect": "deny", "actions": ["kms:*"], "resources": ["alias/app-secret", format!("key/{}", secret.key_id)]},
        {"effect": "allow", "actions": ["kms:Sign"], "resources": ["alias/app-signer"], "conditions": {"mfa": true}},
        {"effect": "allow", "actions": ["kms:GenerateRandom"], "resources": ["*"], "conditions": {"source_cidr": ["10.0.0.0/8"]}},
        {"effect": "allow", "actions": ["kms:DescribeKey"], "resources": ["alias/app-*"], "conditions": {"source_cidr": ["127.0.0.0/8", "::1/128"]}},
        {"effect": "allow", "actions": ["kms:PutAlias", "kms:DeleteAlias"], "resources": [format!("key/{}", main.key_id)]}
    ]});
    let (st, v, _) = raw(
        &server.addr,
        "PUT",
        "/v1/policies/app",
        Some(ROOT),
        Some(serde_json::to_vec(&policy).unwrap()),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v, _) = raw(&server.addr, "GET", "/v1/policies/app", Some(ROOT), None).await;
    assert_eq!(
        (st, v["statements"].as_array().map(|a| a.len())),
        (200, Some(6))
    );
    let bad = json!({"statements": [{"effect": "allow", "actions": ["kms:Teleport"], "resources": ["*"]}]});
    let (st, v, _) = raw(
        &server.addr,
        "PUT",
        "/v1/policies/bad",
        Some(ROOT),
        Some(serde_json::to_vec(&bad).unwrap()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (400, "ValidationError"));

    let (st, _, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities",
        Some(ROOT),
        Some(
            serde_json::to_vec(&json!({"name": "svc", "kind": "service", "policies": ["app"]}))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(st, 201);
    let (_, t, _) = raw(
        &server.addr,
        "POST",
        "/v1/identities/svc/tokens",
        Some(ROOT),
        Some(b"{}".to_vec()),
    )
    .await;
    let svc = server.client(Some(t["token"].as_str().unwrap()));

    // Scoped by alias and context.
    let acme = ctx(&[("tenant", "acme")]);
    let ct = svc
        .encrypt("alias/app-main", b"p", acme.clone())
        .await
        .unwrap();
    assert_eq!(
        api_code(svc.encrypt("alias/app-main", b"p", None).await),
        "AccessDenied"
    );
    assert_eq!(
        api_code(
            svc.encrypt("alias/app-main", b"p", ctx(&[("tenant", "evil")]))
                .await
        ),
        "AccessDenied"
    );
    // The ciphertext names its key: /v1/decrypt is checked against key/<id>.
    assert_eq!(
        svc.decrypt(None, &ct.ciphertext.0, acme.clone(), None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"p"
    );
    assert_eq!(
        api_code(
            svc.decrypt(None, &ct.ciphertext.0, ctx(&[("tenant", "evil")]), None)
                .await
        ),
        "InvalidCiphertext"
            .to_string()
            .replace("InvalidCiphertext", "AccessDenied")
    );
    // Explicit deny wins over the alias wildcard.
    assert_eq!(
        api_code(svc.encrypt("alias/app-secret", b"p", acme.clone()).await),
        "AccessDenied"
    );
    let secret_ct = root
        .encrypt(&secret.key_id, b"s", acme.clone())
        .await
        .unwrap();
    assert_eq!(
        api_code(
            svc.decrypt(None, &secret_ct.ciphertext.0, acme.clone(), None)
                .await
        ),
        "AccessDenied"
    );
    // Not in the policy at all: default deny.
    assert_eq!(
        api_code(
            svc.create_key(&CreateKeyRequest {
                spec: "AES_256".into(),
                ..Default::default()
            })
            .await
        ),
        "AccessDenied"
    );
    // MFA condition: a service token has no MFA.
    assert_eq!(
        api_code(
            svc.sign(
                "alias/app-signer",
                &SignRequest {
                    message: Some(B64(b"m".to_vec())),
                    digest: None,
                    external_mu: None,
                    algorithm: "ED25519".into()
                }
            )
            .await
        ),
        "AccessDenied"
    );
    let _ = signer;
    // An alias is managed under the policies of the key it points to (or is to point to).
    svc.put_alias("alias/svc-main", &main.key_id).await.unwrap();
    svc.put_alias("alias/svc-main-2", "alias/svc-main")
        .await
        .unwrap();
    assert_eq!(
        api_code(svc.put_alias("alias/svc-main", &secret.key_id).await),
        "AccessDenied"
    );
    assert_eq!(
        api_code(svc.put_alias("alias/svc-signer", "alias/app-signer").await),
        "AccessDenied"
    );
    svc.delete_alias("alias/svc-main-2").await.unwrap();
    assert_eq!(
        api_code(svc.delete_alias("alias/app-secret").await),
        "AccessDenied"
    );
    assert_eq!(
        root.describe_key("alias/svc-main").await.unwrap().key_id,
        main.key_id
    );
    // Source address condition.
    assert_eq!(api_code(svc.random(8).await), "AccessDenied");
    assert!(svc.describe_key("alias/app-main").await.is_ok());
    // Who the caller is stays answerable under any policy: it shows only what its token carries.
    let (st, v, _) = raw(
        &server.addr,
        "PUT",
        "/v1/policies/deny-all",
        Some(ROOT),
        Some(
            br#"{"statements": [{"effect": "deny", "actions": ["kms:*"], "resources": ["*"]}]}"#
                .to_vec(),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let walled = server.client(Some(
        &token_with_policies(&server, "walled", &["auditor"], &["deny-all"]).await,
    ));
    assert_eq!(api_code(walled.list_keys("").await), "AccessDenied");
    let me = walled.whoami().await.unwrap();
    assert_eq!(
        (me.roles, me.policies),
        (vec!["auditor".to_string()], vec!["deny-all".to_string()])
    );
    // Deleting the policy takes effect at once: refused while attached, detached from its holders when
    // asked.
    let (st, v, _) = raw(&server.addr, "DELETE", "/v1/policies/app", Some(ROOT), None).await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");
    let (st, _, _) = raw(
        &server.addr,
        "DELETE",
        "/v1/policies/app?detach=true",
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        api_code(svc.encrypt("alias/app-main", b"p", acme).await),
        "AccessDenied"
    );
    let (st, _, _) = raw(&server.addr, "GET", "/v1/policies/app", Some(ROOT), None).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_on_aliases_hold_however_the_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let root = server.root();
    let aes = |alias: Option<&str>| CreateKeyRequest {
        spec: "AES_256".into(),
        alias: alias.map(str::to_string),
        ..Default::default()
    };
    let legacy = root
        .create_key(&aes(Some("alias/legacy")))
        .await
        .unwrap()
        .key_id;
    root.put_alias("alias/legacy-2", &legacy).await.unwrap();
    let app_a = root
        .create_key(&aes(Some("alias/app-a")))
        .await
        .unwrap()
        .key_id;
    let app_b = root
        .create_key(&aes(Some("alias/app-b")))
        .await
        .unwrap()
        .key_id;
    let other = root.create_key(&aes(None)).await.unwrap().key_id;
    let doc =
        |v: serde_json::Value| -> keyward_api::PolicyDoc { serde_json::from_value(v).unwrap() };
    root.put_policy(
        "no-legacy",
        &doc(json!({"statements": [{"effect": "deny", "actions": ["kms:*"], "resources": ["alias/legacy"]}]})),
    )
    .await
    .unwrap();
    let stored = root
        .put_policy(
            "apps",
            &doc(json!({"statements": [{"effect": "allow",
                "actions": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt"], "resources": ["alias/app-*"]}]})),
        )
        .await
        .unwrap();
    assert_eq!(
        root.get_policy("apps").await.unwrap().statements.len(),
        stored.statements.len()
    );

    // A deny on an alias holds when the key is called by its id, by another alias, or through a ciphertext.
    let user = server.client(Some(
        &token_with_policies(&server, "user", &["key-user"], &["no-legacy"]).await,
    ));
    let legacy_ct = root
        .encrypt(&legacy, b"old secret", None)
        .await
        .unwrap()
        .ciphertext
        .0;
    for key in [legacy.as_str(), "alias/legacy", "alias/legacy-2"] {
        assert_eq!(
            api_code(user.encrypt(key, b"p", None).await),
            "AccessDenied",
            "{key}"
        );
    }
    assert_eq!(
        api_code(user.decrypt(None, &legacy_ct, None, None).await),
        "AccessDenied"
    );
    assert!(user.encrypt(&other, b"p", None).await.is_ok());

    // An allow on an alias pattern covers the key it points to, however named, until the alias moves.
    let apps = server.client(Some(
        &token_with_policies(&server, "apps", &[], &["apps"]).await,
    ));
    let ct = apps
        .encrypt(&app_a, b"order", None)
        .await
        .unwrap()
        .ciphertext
        .0;
    assert_eq!(
        apps.decrypt(None, &ct, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"order"
    );
    assert_eq!(
        api_code(apps.encrypt(&other, b"p", None).await),
        "AccessDenied"
    );
    root.put_alias("alias/app-a", &other).await.unwrap();
    assert!(
        apps.encrypt(&other, b"p", None).await.is_ok(),
        "the moved alias now names it"
    );
    assert_eq!(
        api_code(apps.encrypt(&app_a, b"p", None).await),
        "AccessDenied",
        "a key is no longer covered once its only matching alias moved away"
    );
    root.delete_alias("alias/app-a").await.unwrap();
    assert_eq!(
        api_code(apps.encrypt(&other, b"p", None).await),
        "AccessDenied"
    );

    // Re-encryption needs the right to decrypt with the source key: a ciphertext of a key the caller may not
    // use is not moved under one it may (and then decrypted).
    let foreign = root
        .encrypt(&legacy, b"not yours", None)
        .await
        .unwrap()
        .ciphertext
        .0;
    let body = |ct: &[u8]| ReencryptBody {
        ciphertext: Some(B64(ct.to_vec())),
        ..Default::default()
    };
    assert_eq!(
        api_code(apps.reencrypt(&app_b, &body(&foreign)).await),
        "AccessDenied"
    );
    let own = apps
        .encrypt(&app_b, b"mine", None)
        .await
        .unwrap()
        .ciphertext
        .0;
    let moved = apps.reencrypt("alias/app-b", &body(&own)).await.unwrap();
    assert_eq!(
        apps.decrypt(None, &moved.ciphertext.0, None, None)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"mine"
    );
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        &format!("/v1/keys/{app_b}/reencrypt"),
        Some(&token_with_policies(&server, "apps-2", &[], &["apps"]).await),
        Some(
            serde_json::to_vec(
                &json!({"items": [{"ciphertext": b64(&own)}, {"ciphertext": b64(&foreign)}]}),
            )
            .unwrap(),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["items"][0]["ciphertext"].is_string(), "{v}");
    assert_eq!(v["items"][1]["error"]["code"], "AccessDenied", "{v}");
    // The audit records of re-encryptions name their source keys, refused or not.
    let records = audited(&server.addr, "action=kms:ReEncrypt").await;
    let expected = [
        ("apps", "deny", vec![legacy.clone()]),
        ("apps", "allow", vec![app_b.clone()]),
        ("apps-2", "allow", vec![app_b.clone(), legacy.clone()]),
    ];
    assert_eq!(records.len(), expected.len(), "{records:?}");
    for ((p, o, keys), (ep, eo, ekeys)) in records.iter().zip(&expected) {
        assert_eq!((p.as_str(), o.as_str(), keys), (*ep, *eo, ekeys));
    }
    // A key's trail includes the re-encryptions that read its ciphertexts, allowed or refused.
    let trail = audited(
        &server.addr,
        &format!("action=kms:ReEncrypt&key_id={legacy}"),
    )
    .await;
    let trail: Vec<(&str, &str)> = trail
        .iter()
        .map(|(p, o, _)| (p.as_str(), o.as_str()))
        .collect();
    assert_eq!(trail, [("apps", "deny"), ("apps-2", "allow")]);
    let (_, verified, _) = raw(&server.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(verified["valid"], true, "{verified}");

    // An approver's policies count too: an admin denied a key cannot approve its deletion.
    let quorum = root
        .create_key(&CreateKeyRequest {
            quorum: Some(Quorum { approvals: 1 }),
            ..aes(None)
        })
        .await
        .unwrap()
        .key_id;
    // Naming a key under quorum, the policy itself waits for an approval.
    let other_admin = token_for(&server, "other-admin", &["admin"]).await;
    let hands_off = doc(
        json!({"statements": [{"effect": "deny", "actions": ["kms:ScheduleKeyDeletion"],
        "resources": [format!("key/{quorum}")]}]}),
    );
    let Err(Error::Pending(p)) = root.put_policy("hands-off", &hands_off).await else {
        panic!("a policy on a quorum key was stored without approval");
    };
    let executed = server
        .client(Some(&other_admin))
        .approve(&p.approval_id)
        .await
        .unwrap();
    assert_eq!(
        (executed.status.as_str(), executed.operation.as_str()),
        ("executed", "put_policy")
    );
    assert_eq!(executed.parameters["name"], "hands-off");
    let barred = token_with_policies(&server, "barred-admin", &["admin"], &["hands-off"]).await;
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        &format!("/v1/keys/{quorum}/schedule-deletion"),
        Some(ROOT),
        Some(br#"{"pending_days": 7}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id = v["approval_id"].as_str().unwrap().to_string();
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(&barred),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (403, "AccessDenied"), "{v}");
    assert_eq!(root.describe_key(&quorum).await.unwrap().state, "Enabled");
    let (st, v, _) = raw(
        &server.addr,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(&other_admin),
        None,
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("executed")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_deletion_waits_for_two_other_approvers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let root = server.root();
    let key = root
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            quorum: Some(Quorum { approvals: 2 }),
            exportable: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .key_id;
    root.key_action(&key, "rotate").await.unwrap();
    let ops1 = token_for(&server, "ops1", &["key-admin"]).await;
    let ops2 = token_for(&server, "ops2", &["key-admin"]).await;
    let ops3 = token_for(&server, "ops3", &["key-admin"]).await;
    let user = token_for(&server, "user", &["key-user"]).await;
    let a = &server.addr;

    let (st, v, requested_by) = raw(
        a,
        "POST",
        &format!("/v1/keys/{key}/schedule-deletion"),
        Some(&ops1),
        Some(br#"{"pending_days": 7}"#.to_vec()),
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (202, Some("pending")), "{v}");
    let id = v["approval_id"].as_str().unwrap().to_string();
    assert_eq!(
        root.describe_key(&key).await.unwrap().state,
        "Enabled",
        "ran before approval"
    );
    let approve = |tok: String| {
        let path = format!("/v1/approvals/{id}/approve");
        async move { raw(a, "POST", &path, Some(&tok), None).await }
    };
    let (st, v, _) = approve(ops1.clone()).await;
    assert_eq!((st, code_of(&v)), (403, "AccessDenied"), "self-approval");
    let (st, v, _) = approve(user.clone()).await;
    assert_eq!(
        (st, code_of(&v)),
        (403, "AccessDenied"),
        "key-user approval"
    );
    let (st, v, _) = approve(ops2.clone()).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("pending")), "{v}");
    let (st, v, _) = approve(ops2.clone()).await;
    assert_eq!((st, code_of(&v)), (409, "AlreadyExists"));
    assert_eq!(root.describe_key(&key).await.unwrap().state, "Enabled");
    let (st, v, executed_by) = approve(ops3.clone()).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("executed")), "{v}");
    assert_eq!(
        root.describe_key(&key).await.unwrap().state,
        "PendingDeletion"
    );
    // The key's trail shows the deletion being scheduled when it happened: the requester's action, under
    // the request id of the approval that carried it out (whose own record names the approver).
    let (_, trail, _) = raw(
        a,
        "GET",
        &format!("/v1/audit?key_id={key}&action=kms:ScheduleKeyDeletion"),
        Some(ROOT),
        None,
    )
    .await;
    let last = trail["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["principal"], &last["outcome"], &last["request_id"]),
        (
            &json!("ops1"),
            &json!("allow"),
            &json!(executed_by.as_deref().unwrap())
        ),
        "{trail}"
    );
    // Every decision on the request, refused or not, is in the key's trail with its approver.
    let (_, decisions, _) = raw(
        a,
        "GET",
        &format!("/v1/audit?key_id={key}&action=kms:Approve"),
        Some(ROOT),
        None,
    )
    .await;
    let decisions: Vec<(&str, &str)> = decisions["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["principal"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    // (A decision is recorded before it is made, and a failure found then adds its own record; a caller who
    // may not decide at all is refused first, in one record.)
    assert_eq!(
        decisions,
        [
            ("ops1", "deny"),
            ("user", "deny"),
            ("ops2", "allow"),
            ("ops2", "allow"),
            ("ops2", "error"),
            ("ops3", "allow")
        ]
    );
    // The approval's own trail is the request's whole story: the request that opened it (under the
    // request's id), every decision, and the operation it ran (the requester's action under the deciding
    // approval's request id).
    let (_, story, _) = raw(
        a,
        "GET",
        &format!("/v1/audit?resource=approval/{id}"),
        Some(ROOT),
        None,
    )
    .await;
    let story: Vec<(&str, &str, &str, &str)> = story["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["key_id"], key.as_str(), "{r}");
            (
                r["principal"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["request_id"].as_str().unwrap(),
            )
        })
        .collect();
    let requested_by = requested_by.unwrap();
    let executed_by = executed_by.unwrap();
    let asked = (
        "ops1",
        "kms:ScheduleKeyDeletion",
        "allow",
        requested_by.as_str(),
    );
    let ran = (
        "ops1",
        "kms:ScheduleKeyDeletion",
        "allow",
        executed_by.as_str(),
    );
    assert_eq!(story.len(), 8, "{story:?}");
    assert_eq!(story[0], asked, "{story:?}");
    let decided: Vec<(&str, &str)> = story[1..7]
        .iter()
        .map(|r| {
            assert_eq!(r.1, "kms:Approve", "{story:?}");
            (r.0, r.2)
        })
        .collect();
    assert_eq!(decided, decisions);
    assert_eq!(story[6].3, executed_by, "the last approval");
    assert_eq!(story[7], ran, "{story:?}");
    // The request's own id shows it held: recorded when made, then again naming the approval.
    let (_, held, _) = raw(
        a,
        "GET",
        &format!("/v1/audit?request_id={requested_by}"),
        Some(ROOT),
        None,
    )
    .await;
    let held: Vec<(&str, Option<&str>)> = held["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["action"], "kms:ScheduleKeyDeletion", "{r}");
            (r["outcome"].as_str().unwrap(), r["resource"].as_str())
        })
        .collect();
    let named = format!("approval/{id}");
    assert_eq!(held, [("allow", None), ("allow", Some(named.as_str()))]);
    let (st, v, _) = approve(root_token()).await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"));
    root.key_action(&key, "cancel-deletion").await.unwrap();
    root.key_action(&key, "enable").await.unwrap();

    // A rejection ends a request.
    let (st, v, _) = raw(
        a,
        "POST",
        &format!("/v1/keys/{key}/versions/1/destroy"),
        Some(&ops1),
        None,
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id2 = v["approval_id"].as_str().unwrap().to_string();
    let (st, v, _) = raw(
        a,
        "POST",
        &format!("/v1/approvals/{id2}/reject"),
        Some(&ops2),
        None,
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("rejected")));
    let (st, _, _) = raw(
        a,
        "POST",
        &format!("/v1/approvals/{id2}/approve"),
        Some(&ops3),
        None,
    )
    .await;
    assert_eq!(st, 409);
    assert_eq!(
        root.versions(&key).await.unwrap().versions[0].state,
        "Enabled"
    );

    // Export waits too, and the approvers' final call carries the wrapped key.
    let recipient =
        aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let spki = aws_lc_rs::encoding::AsDer::as_der(&recipient.public_key()).unwrap();
    let body = serde_json::to_vec(&json!({"wrapping_public_key_der": b64(spki.as_ref())})).unwrap();
    let (st, v, _) = raw(
        a,
        "POST",
        &format!("/v1/keys/{key}/export"),
        Some(ROOT),
        Some(body),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id3 = v["approval_id"].as_str().unwrap().to_string();
    raw(
        a,
        "POST",
        &format!("/v1/approvals/{id3}/approve"),
        Some(&ops1),
        None,
    )
    .await;
    let (st, v, _) = raw(
        a,
        "POST",
        &format!("/v1/approvals/{id3}/approve"),
        Some(&ops2),
        None,
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("executed")), "{v}");
    // The wrapped key is the requester's alone.
    assert!(v.get("result").is_none(), "{v}");
    let (_, v, _) = raw(a, "GET", &format!("/v1/approvals/{id3}"), Some(ROOT), None).await;
    assert!(v["result"]["wrapped_key_material"].as_str().unwrap().len() > 300);

    // A policy naming the key needs the quorum as well.
    let policy = json!({"statements": [{"effect": "allow", "actions": ["kms:Encrypt"], "resources": [format!("key/{key}")]}]});
    let (st, v, _) = raw(
        a,
        "PUT",
        "/v1/policies/touching",
        Some(ROOT),
        Some(serde_json::to_vec(&policy).unwrap()),
    )
    .await;
    assert_eq!(st, 202);
    let id4 = v["approval_id"].as_str().unwrap().to_string();
    // The policy's trail has the request; the approval's names it once held.
    let trail = |q: String| async move {
        let (_, v, _) = raw(a, "GET", &format!("/v1/audit?{q}"), Some(ROOT), None).await;
        let records = v["records"].as_array().unwrap().clone();
        records
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_string(),
                    r["key_id"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let put = "kms:PutPolicy".to_string();
    assert_eq!(
        trail(format!("resource=approval/{id4}")).await,
        [(put.clone(), serde_json::Value::Null)]
    );
    assert_eq!(
        trail("resource=policy/touching".into()).await,
        [(put, serde_json::Value::Null)]
    );
    // A policy change is an admin's to approve: a key-admin does not see it, an admin does.
    let (st, list, _) = raw(a, "GET", "/v1/approvals?status=pending", Some(&ops1), None).await;
    assert_eq!(st, 200);
    assert_eq!(list["approvals"].as_array().unwrap().len(), 0, "{list}");
    let (st, list, _) = raw(a, "GET", "/v1/approvals?status=pending", Some(ROOT), None).await;
    assert_eq!(st, 200);
    assert_eq!(list["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(list["approvals"][0]["operation"], "put_policy");
    // The list is in the order the requests were made, even within one second.
    let (_, list, _) = raw(a, "GET", "/v1/approvals", Some(ROOT), None).await;
    let ids: Vec<&str> = list["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["approval_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [&id, &id2, &id3, &id4]);
    // Pages of one walk the same list in the same order, with or without a status filter.
    let reader = ROOT;
    let walk = move |filter: &'static str| async move {
        let mut walked = Vec::new();
        let mut query = format!("{filter}limit=1");
        loop {
            let path = format!("/v1/approvals?{query}");
            let (st, page, _) = raw(a, "GET", &path, Some(reader), None).await;
            assert_eq!(st, 200, "{page}");
            assert_eq!(page["approvals"].as_array().unwrap().len(), 1, "{page}");
            walked.push(
                page["approvals"][0]["approval_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            match page["next_token"].as_str() {
                Some(t) => query = format!("{filter}limit=1&next_token={t}"),
                None => return walked,
            }
        }
    };
    assert_eq!(walk("").await, [&*id, &*id2, &*id3, &*id4]);
    assert_eq!(walk("status=executed&").await, [&*id, &*id3]);
    // One request, read by id: its decisions and result; an unknown id or a bad page is refused.
    // Read by its requester; a key-user, who neither asked nor may approve, is refused.
    let (st, one, _) = raw(a, "GET", &format!("/v1/approvals/{id2}"), Some(&user), None).await;
    assert_eq!((st, code_of(&one)), (403, "AccessDenied"), "{one}");
    let (st, one, _) = raw(a, "GET", &format!("/v1/approvals/{id2}"), Some(&ops1), None).await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(
        (&one["status"], &one["rejected_by"], &one["requested_by"]),
        (&json!("rejected"), &json!("ops2"), &json!("ops1"))
    );
    for (path, code) in [
        ("/v1/approvals/apr_0000".to_string(), (404, "NotFound")),
        ("/v1/approvals?limit=0".into(), (400, "ValidationError")),
        (
            "/v1/approvals?next_token=%25".into(),
            (400, "ValidationError"),
        ),
        ("/v1/approvals?order=asc".into(), (400, "ValidationError")),
    ] {
        let (st, v, _) = raw(a, "GET", &path, Some(&ops1), None).await;
        assert_eq!((st, code_of(&v)), code, "{path}: {v}");
    }
    // A refusal repeats what it was given only in part: one line, whatever the length of the path.
    let (st, v, _) = raw(
        a,
        "GET",
        &format!("/v1/approvals/apr_{}", "9".repeat(4000)),
        Some(&ops1),
        None,
    )
    .await;
    let message = v["error"]["message"].as_str().unwrap();
    assert_eq!(st, 404, "{v}");
    assert!(
        message.len() < 120 && message.ends_with("… does not exist"),
        "{message}"
    );

    // Two approvers at once on a request one approval completes: the operation runs once, the other
    // approver is told the request is no longer pending, and the request stays executed.
    for _ in 0..5 {
        let (_, id) = common::deletion_awaiting_approval(&root, a, &ops1).await;
        common::approve_at_once(&id, (a, &ops2), (a, &ops3)).await;
        let (_, list, _) = raw(a, "GET", "/v1/approvals?status=executed", Some(&ops1), None).await;
        assert!(list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["approval_id"] == id.as_str()));
    }
}

fn root_token() -> String {
    ROOT.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_name_the_key_by_id_however_the_request_named_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let root = server.root();
    let a = &server.addr;
    let make = |spec: &str, usage: Option<&str>, alias: &str| CreateKeyRequest {
        spec: spec.into(),
        usage: usage.map(str::to_string),
        alias: Some(alias.into()),
        ..Default::default()
    };
    let aes = root
        .create_key(&make("AES_256", None, "alias/a"))
        .await
        .unwrap()
        .key_id;
    let mac = root
        .create_key(&make("HMAC_256", Some("GENERATE_VERIFY_MAC"), "alias/h"))
        .await
        .unwrap()
        .key_id;
    let ec = root
        .create_key(&make("ECC_NIST_P256", Some("SIGN_VERIFY"), "alias/s"))
        .await
        .unwrap()
        .key_id;
    let user = token_for(&server, "user", &["key-user"]).await;
    let call = |method: &'static str,
                path: &'static str,
                token: String,
                body: serde_json::Value| async move {
        let body = (method == "POST").then(|| serde_json::to_vec(&body).unwrap());
        let (st, v, rid) = raw(a, method, path, Some(&token), body).await;
        (st, v, rid.unwrap())
    };
    let (st, signed, _) = call(
        "POST",
        "/v1/keys/alias%2Fs/sign",
        ROOT.into(),
        json!({"message": "bQ==", "algorithm": "ECDSA_SHA_256"}),
    )
    .await;
    assert_eq!(st, 200, "{signed}");
    // Each request names its key by an alias; some are refused. (status, request id, the key expected in
    // its record)
    let mut expected = Vec::new();
    let mut expect = |r: (u16, serde_json::Value, String), status: u16, key: &str| {
        assert_eq!(r.0, status, "{}", r.1);
        expected.push((r.2, key.to_string()));
    };
    expect(
        call(
            "POST",
            "/v1/keys/alias%2Fa/encrypt",
            ROOT.into(),
            json!({"items": [{"plaintext": "AA=="}]}),
        )
        .await,
        200,
        &aes,
    );
    expect(
        call(
            "POST",
            "/v1/keys/alias%2Fs/verify",
            ROOT.into(),
            json!({"message": "bQ==", "signature": signed["signature"], "algorithm": "ECDSA_SHA_256"}),
        )
        .await,
        200,
        &ec,
    );
    expect(
        call(
            "POST",
            "/v1/keys/alias%2Fh/verify-mac",
            ROOT.into(),
            json!({"message": "bQ==", "mac": b64(&[0; 32]), "algorithm": "HMAC_SHA_256"}),
        )
        .await,
        200,
        &mac,
    );
    expect(
        call(
            "GET",
            "/v1/keys/alias%2Fa/versions",
            ROOT.into(),
            json!(null),
        )
        .await,
        200,
        &aes,
    );
    // Refused: a key-user may not rotate; the record still names the key, not the alias.
    expect(
        call("POST", "/v1/keys/alias%2Fa/rotate", user.clone(), json!({})).await,
        403,
        &aes,
    );
    // Wrong usage, by alias.
    expect(
        call(
            "POST",
            "/v1/keys/alias%2Fa/sign",
            ROOT.into(),
            json!({"message": "bQ==", "algorithm": "ECDSA_SHA_256"}),
        )
        .await,
        400,
        &aes,
    );
    // A reference that names no key, and a caller who is not authenticated, are recorded as given.
    expect(
        call(
            "POST",
            "/v1/keys/alias%2Fnope/encrypt",
            ROOT.into(),
            json!({"plaintext": "AA=="}),
        )
        .await,
        404,
        "alias/nope",
    );
    expect(
        call(
            "POST",
            "/v1/keys/alias%2Fa/encrypt",
            "kw.not-a-token".into(),
            json!({"plaintext": "AA=="}),
        )
        .await,
        401,
        "alias/a",
    );

    // Decryption through /v1/decrypt names its key only in the ciphertext: a refusal still names it, and
    // a batch over several keys names them all.
    let other = root
        .create_key(&make("AES_256", None, "alias/b"))
        .await
        .unwrap()
        .key_id;
    let ct_a = root
        .encrypt(&aes, b"one", ctx(&[("t", "1")]))
        .await
        .unwrap()
        .ciphertext;
    let ct_b = root.encrypt(&other, b"two", None).await.unwrap().ciphertext;
    expect(
        call(
            "POST",
            "/v1/decrypt",
            ROOT.into(),
            json!({"ciphertext": ct_a, "context": {"t": "2"}}),
        )
        .await,
        400,
        &aes,
    );
    let (st, v, batch_rid) = call(
        "POST",
        "/v1/decrypt",
        ROOT.into(),
        json!({"items": [{"ciphertext": ct_a, "context": {"t": "1"}}, {"ciphertext": ct_b}]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    let (_, page, _) = raw(a, "GET", "/v1/audit?limit=1000", Some(ROOT), None).await;
    let records = page["records"].as_array().unwrap();
    let batch = records
        .iter()
        .find(|r| r["request_id"] == batch_rid.as_str())
        .unwrap();
    assert_eq!(batch["source_key_ids"], json!([aes, other]), "{batch}");
    for (rid, key) in &expected {
        let record = records
            .iter()
            .find(|r| r["request_id"] == rid.as_str())
            .unwrap_or_else(|| panic!("no record of {rid}"));
        assert_eq!(record["key_id"], key.as_str(), "{record}");
    }
    // The key's trail holds every use, whichever name the caller used.
    let (_, trail, _) = raw(
        a,
        "GET",
        &format!("/v1/audit?key_id={aes}&limit=1000"),
        Some(ROOT),
        None,
    )
    .await;
    let actions: Vec<&str> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "kms:CreateKey",
            "kms:Encrypt",
            "kms:ListKeyVersions",
            "kms:RotateKey",
            "kms:Sign",
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:Decrypt"
        ],
        "{trail}"
    );
    // The service looks an alias up for the filter, so an auditor gets the same trail by the alias.
    let auditor = token_for(&server, "auditor", &["auditor"]).await;
    let (st, by_alias, _) = raw(
        a,
        "GET",
        "/v1/audit?key_id=alias%2Fa&limit=1000",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(st, 200, "{by_alias}");
    assert_eq!(by_alias["records"], trail["records"]);
    // An alias that names no key is matched as given: the records of requests refused before any lookup.
    let (st, _, _) = raw(
        a,
        "POST",
        "/v1/keys/alias%2Fnowhere/encrypt",
        None,
        Some(br#"{"plaintext": "bQ=="}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 401);
    let (st, literal, _) = raw(
        a,
        "GET",
        "/v1/audit?key_id=alias%2Fnowhere",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(st, 200, "{literal}");
    let literal = literal["records"].as_array().unwrap();
    assert_eq!(literal.len(), 1, "{literal:?}");
    assert_eq!(literal[0]["outcome"], "deny");
}

/// Listing, reading, changing and deleting an identity; a change holds at once for the tokens it already has.
async fn identity_lifecycle(server: &Server, alice: &Client, alice_token: &str, key: &str) {
    let call = |method: &'static str,
                path: String,
                token: Option<&'static str>,
                body: Option<serde_json::Value>| {
        let addr = server.addr.clone();
        async move {
            let body = body.map(|b| serde_json::to_vec(&b).unwrap());
            let (st, v, _) = raw(&addr, method, &path, token, body).await;
            (st, v)
        }
    };
    // Listed by name, in pages, without secrets.
    let (st, v) = call("GET", "/v1/identities?limit=1".into(), Some(ROOT), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["identities"].as_array().unwrap().len(), 1, "{v}");
    let first = v["identities"][0]["name"].as_str().unwrap().to_string();
    let next = v["next_token"].as_str().unwrap().to_string();
    let (_, v) = call(
        "GET",
        format!("/v1/identities?next_token={next}"),
        Some(ROOT),
        None,
    )
    .await;
    let rest: Vec<&str> = v["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(first, "alice");
    assert!(!rest.contains(&"alice") && rest.contains(&"app"), "{v}");
    assert!(v["next_token"].is_null(), "{v}");
    assert!(
        !v.to_string().contains("argon2") && !v.to_string().contains("totp_seed"),
        "{v}"
    );
    let (st, v) = call("GET", "/v1/identities/alice".into(), Some(ROOT), None).await;
    assert_eq!(
        (st, v["roles"].clone(), v["password"].clone()),
        (200, json!(["auditor"]), json!(true)),
        "{v}"
    );
    let (st, v) = call(
        "GET",
        "/v1/identities/no-such-identity".into(),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (404, "NotFound"));
    // Only an admin manages identities.
    let (st, _, _) = raw(
        &server.addr,
        "GET",
        "/v1/identities",
        Some(alice_token),
        None,
    )
    .await;
    assert_eq!(st, 403);

    // Bad changes are refused and change nothing.
    for bad in [
        json!({"roles": ["superuser"]}),
        json!({"role": ["key-user"]}),
        json!({"roles": "key-user"}),
        json!(["key-user"]),
    ] {
        let (st, v) = call(
            "PATCH",
            "/v1/identities/alice".into(),
            Some(ROOT),
            Some(bad.clone()),
        )
        .await;
        assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{bad}: {v}");
    }
    let (_, v) = call(
        "PATCH",
        "/v1/identities/no-such-identity".into(),
        Some(ROOT),
        Some(json!({"roles": []})),
    )
    .await;
    assert_eq!(code_of(&v), "NotFound");
    assert_eq!(
        call("GET", "/v1/identities/alice".into(), Some(ROOT), None)
            .await
            .1["roles"],
        json!(["auditor"])
    );

    // A role given or taken away holds at once for the token alice already has.
    assert_eq!(
        api_code(alice.encrypt(key, b"x", None).await),
        "AccessDenied"
    );
    let (st, v) = call(
        "PATCH",
        "/v1/identities/alice".into(),
        Some(ROOT),
        Some(json!({"roles": ["key-user"]})),
    )
    .await;
    assert_eq!(
        (st, v["roles"].clone(), v["policies"].clone()),
        (200, json!(["key-user"]), json!([])),
        "{v}"
    );
    assert!(alice.encrypt(key, b"x", None).await.is_ok());
    let (st, _) = call(
        "PATCH",
        "/v1/identities/alice".into(),
        Some(ROOT),
        Some(json!({"roles": null, "policies": ["nothing-yet"]})),
    )
    .await;
    assert_eq!(st, 400, "a policy that does not exist is never granted");
    let (st, _) = call(
        "PUT",
        "/v1/policies/nothing-yet".into(),
        Some(ROOT),
        Some(json!({"statements": [{"effect": "allow", "actions": ["kms:DescribeKey"], "resources": ["*"]}]})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = call(
        "PATCH",
        "/v1/identities/alice".into(),
        Some(ROOT),
        Some(json!({"roles": null, "policies": ["nothing-yet"]})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        call("GET", "/v1/identities/alice".into(), Some(ROOT), None)
            .await
            .1["roles"],
        json!(["key-user"])
    );
    let (st, _) = call(
        "PATCH",
        "/v1/identities/alice".into(),
        Some(ROOT),
        Some(json!({"roles": []})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        api_code(alice.encrypt(key, b"x", None).await),
        "AccessDenied"
    );

    // Her live tokens are listed by id, never by value; the dev root token is listed under root.
    let (st, v) = call(
        "GET",
        "/v1/identities/alice/tokens".into(),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let tokens = v["tokens"].as_array().unwrap();
    assert!(
        !tokens.is_empty()
            && tokens
                .iter()
                .all(|t| t["token_id"].as_str().unwrap().starts_with("tok_")),
        "{v}"
    );
    assert!(!v.to_string().contains(alice_token), "{v}");
    let (_, v) = call("GET", "/v1/identities/root/tokens".into(), Some(ROOT), None).await;
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1, "{v}");
    // Paged like every list, oldest first: two more tokens, walked one page at a time.
    let mut issued = vec![tokens[0]["token_id"].as_str().unwrap().to_string()];
    for _ in 0..2 {
        let (st, t) = call(
            "POST",
            "/v1/identities/alice/tokens".into(),
            Some(ROOT),
            Some(json!({})),
        )
        .await;
        assert_eq!(st, 201, "{t}");
        issued.push(t["token_id"].as_str().unwrap().to_string());
    }
    let mut walked = Vec::new();
    let mut path = "/v1/identities/alice/tokens?limit=1".to_string();
    loop {
        let (st, v) = call("GET", path.clone(), Some(ROOT), None).await;
        assert_eq!(
            (st, v["tokens"].as_array().map(Vec::len)),
            (200, Some(1)),
            "{v}"
        );
        walked.push(v["tokens"][0]["token_id"].as_str().unwrap().to_string());
        match v["next_token"].as_str() {
            Some(t) => path = format!("/v1/identities/alice/tokens?limit=1&next_token={t}"),
            None => break,
        }
    }
    // Issued within one second, tokens keep no order among themselves but every one is listed once.
    walked.sort();
    issued.sort();
    assert_eq!(walked, issued);
    let (st, v) = call(
        "GET",
        "/v1/identities/alice/tokens?limit=1001".into(),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (400, "ValidationError"));

    // Deleting alice revokes her token and her password; the name is free again.
    let (st, _) = call("DELETE", "/v1/identities/alice".into(), Some(ROOT), None).await;
    assert_eq!(st, 204);
    assert_eq!(api_code(alice.list_keys("").await), "Unauthenticated");
    let (st, v) = call(
        "POST",
        "/v1/auth/login".into(),
        None,
        Some(json!({"name": "alice", "password": "correct horse battery"})),
    )
    .await;
    assert_eq!((st, code_of(&v)), (401, "Unauthenticated"));
    let (st, v) = call("DELETE", "/v1/identities/alice".into(), Some(ROOT), None).await;
    assert_eq!((st, code_of(&v)), (404, "NotFound"));
    let (st, v) = call(
        "GET",
        "/v1/identities/alice/tokens".into(),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (404, "NotFound"));
    let (_, v) = call("GET", "/v1/identities".into(), Some(ROOT), None).await;
    assert!(!v.to_string().contains("\"alice\""), "{v}");

    // Policies are listed by name.
    let policy = json!({"statements": [{"effect": "allow", "actions": ["kms:Encrypt"], "resources": ["*"]}]});
    assert_eq!(
        call(
            "PUT",
            "/v1/policies/zz-listed".into(),
            Some(ROOT),
            Some(policy)
        )
        .await
        .0,
        200
    );
    let (st, v) = call("GET", "/v1/policies".into(), Some(ROOT), None).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("zz-listed")),
        "{v}"
    );

    // Each change is in the trail: recorded before it is made, and followed by an error record where it
    // was refused.
    for (action, requests, errors) in [
        (
            "kms:UpdateIdentity",
            9,
            vec![
                "ValidationError",
                "ValidationError",
                "ValidationError",
                "ValidationError",
                "NotFound",
                "ValidationError",
            ],
        ),
        ("kms:DeleteIdentity", 2, vec!["NotFound"]),
    ] {
        let (_, v) = call(
            "GET",
            format!("/v1/audit?action={action}&limit=1000"),
            Some(ROOT),
            None,
        )
        .await;
        let records = v["records"].as_array().unwrap();
        let allowed = records.iter().filter(|r| r["outcome"] == "allow").count();
        let refused: Vec<&str> = records
            .iter()
            .filter(|r| r["outcome"] == "error")
            .map(|r| r["error_code"].as_str().unwrap())
            .collect();
        assert_eq!((allowed, refused), (requests, errors), "{v}");
    }
    // The records name the identity concerned, and alice's whole history is one query: her creation, her
    // logins (the failed one too), the changes and the deletion.
    let (_, v) = call(
        "GET",
        "/v1/audit?resource=identity/alice&limit=1000".into(),
        Some(ROOT),
        None,
    )
    .await;
    let records = v["records"].as_array().unwrap();
    assert!(
        records.iter().all(|r| r["resource"] == "identity/alice"),
        "{v}"
    );
    for action in [
        "kms:CreateIdentity",
        "kms:Login",
        "kms:GetIdentity",
        "kms:UpdateIdentity",
        "kms:DeleteIdentity",
    ] {
        assert!(
            records.iter().any(|r| r["action"] == action),
            "{action}: {v}"
        );
    }
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "kms:Login" && r["outcome"] == "deny"),
        "{v}"
    );
    // A login for a name that is no identity does not record the name: it may be a mistyped password.
    let (_, v) = call(
        "GET",
        "/v1/audit?action=kms:Login&outcome=deny".into(),
        Some(ROOT),
        None,
    )
    .await;
    let denied = v["records"].as_array().unwrap();
    assert!(denied.len() >= 2, "{v}");
    assert!(!v.to_string().contains("mallory"), "{v}");
    let (_, v) = call(
        "GET",
        "/v1/audit?resource=policy/zz-listed".into(),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(v["records"][0]["action"], "kms:PutPolicy", "{v}");
}

/// Deleting imported material makes the key unusable, so a key under quorum holds it for approval; once
/// approved it runs as the requester's action on the key's trail, and only the same material undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_imported_material_waits_for_approval_and_is_undone_by_the_same_material() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let root = server.root();
    let key = root
        .create_key(&CreateKeyRequest {
            spec: "HMAC_256".into(),
            origin: Some("EXTERNAL".into()),
            quorum: Some(Quorum { approvals: 1 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .key_id;
    let import = |material: [u8; 32]| {
        let root = &root;
        let key = &key;
        async move {
            let params = root.import_parameters(key).await.unwrap();
            let wrapped =
                keyward_client::byok::wrap(&params.wrapping_public_key_der.0, &material).unwrap();
            let req = ImportRequest {
                import_token: params.import_token,
                wrapped_key_material: SecretB64::new(wrapped),
            };
            root.import(key, &req).await
        }
    };
    import([7u8; 32]).await.unwrap();
    let mac = |k: String| {
        let root = &root;
        async move {
            let req = MacRequest {
                message: B64(b"m".to_vec()),
                algorithm: "HMAC_SHA_256".into(),
            };
            root.mac(&k, &req).await
        }
    };
    let before = mac(key.clone()).await.unwrap().mac.0;
    let ops1 = token_for(&server, "ops1", &["key-admin"]).await;
    let ops2 = token_for(&server, "ops2", &["key-admin"]).await;
    let a = &server.addr;
    let path = format!("/v1/keys/{key}/delete-imported-material");
    let (st, v, _) = raw(a, "POST", &path, Some(&ops1), None).await;
    assert_eq!((st, v["status"].as_str()), (202, Some("pending")), "{v}");
    assert!(mac(key.clone()).await.is_ok(), "ran before approval");
    let id = v["approval_id"].as_str().unwrap();
    let (st, v, executed_by) = raw(
        a,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(&ops2),
        None,
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("executed")), "{v}");
    assert!(root.describe_key(&key).await.unwrap().pending_import);
    match mac(key.clone()).await {
        Err(Error::Api { code, .. }) => assert_eq!(code, "InvalidState"),
        other => panic!("{other:?}"),
    }
    let trail = common::audit_records(
        a,
        &format!("key_id={key}&action=kms:DeleteImportedKeyMaterial"),
    )
    .await;
    let last = trail.last().unwrap();
    assert_eq!(
        (&last["principal"], &last["outcome"], &last["request_id"]),
        (
            &json!("ops1"),
            &json!("allow"),
            &json!(executed_by.as_deref().unwrap())
        ),
        "{trail:?}"
    );
    // A second deletion is refused before anyone is asked to approve it.
    let (st, v, _) = raw(a, "POST", &path, Some(&ops1), None).await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");

    match import([8u8; 32]).await {
        Err(Error::Api { code, .. }) => assert_eq!(code, "IncorrectKeyMaterial"),
        other => panic!("{other:?}"),
    }
    let back = import([7u8; 32]).await.unwrap();
    assert!(!back.pending_import);
    assert_eq!(mac(key.clone()).await.unwrap().mac.0, before);
}

/// A key whose destructive operations need one approval, and two key administrators (`ops1`, `ops2`) to
/// request and decide them; with the root client.
async fn quorum_key_and_two_admins(server: &Server) -> (Client, String, String, String) {
    let root = server.root();
    let key = root
        .create_key(&CreateKeyRequest {
            spec: "AES_256".into(),
            quorum: Some(Quorum { approvals: 1 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .key_id;
    let ops1 = token_for(server, "ops1", &["key-admin"]).await;
    let ops2 = token_for(server, "ops2", &["key-admin"]).await;
    (root, key, ops1, ops2)
}

/// Asks for `key`'s deletion as `token`, which waits for approval; the approval id.
async fn request_deletion(addr: &str, key: &str, token: &str) -> String {
    let (st, v, _) = raw(
        addr,
        "POST",
        &format!("/v1/keys/{key}/schedule-deletion"),
        Some(token),
        Some(br#"{"pending_days": 7}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    v["approval_id"].as_str().unwrap().to_string()
}

/// The audit records the scheduler made under `approval/{id}`.
async fn scheduler_records(addr: &str, id: &str) -> Vec<serde_json::Value> {
    common::audit_records(
        addr,
        &format!("resource=approval/{id}&principal=system:scheduler"),
    )
    .await
}

/// A request nobody answers ends on the record: the leading node stores it as `expired` under an audit
/// record of the scheduler's, a late approval is refused and runs nothing, and a restart changes neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_expires_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::dev_with(
        dir.path(),
        "approval_ttl_seconds = 2\nbackground_interval_seconds = 1\n",
    );
    let (root, key, ops1, ops2) = quorum_key_and_two_admins(&server).await;
    let a = server.addr.clone();
    let id = request_deletion(&a, &key, &ops1).await;
    // A second one, which expires in the same round or the next: each gets its own record.
    let other = request_deletion(&a, &key, &ops2).await;

    let expiry_records = |a: String, id: String| async move { scheduler_records(&a, &id).await };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let records = loop {
        let records = expiry_records(a.clone(), id.clone()).await;
        let others = expiry_records(a.clone(), other.clone()).await;
        if !records.is_empty() && !others.is_empty() {
            assert_eq!(others.len(), 1, "{others:?}");
            assert_eq!(others[0]["error_code"], "InvalidState", "{others:?}");
            break records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no expiry record for {id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (
            &r["action"],
            &r["outcome"],
            &r["error_code"],
            &r["key_id"],
            &r["source_ip"]
        ),
        (
            &json!("kms:ScheduleKeyDeletion"),
            &json!("error"),
            &json!("InvalidState"),
            &json!(key),
            &json!("local")
        ),
        "{r}"
    );
    assert!(
        r["request_id"].as_str().unwrap().starts_with("sched-"),
        "{r}"
    );

    let (st, v, _) = raw(
        &a,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(&ops2),
        None,
    )
    .await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    assert_eq!(root.describe_key(&key).await.unwrap().state, "Enabled");

    server.restart(&[("KEYWARD_DEV_ROOT_TOKEN", ROOT)]);
    let (st, v, _) = raw(&a, "GET", &format!("/v1/approvals/{id}"), Some(ROOT), None).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("expired")), "{v}");
    let (_, listed, _) = raw(&a, "GET", "/v1/approvals?status=expired", Some(ROOT), None).await;
    assert_eq!(
        listed["approvals"][0]["approval_id"],
        id.as_str(),
        "{listed}"
    );
    // Rounds after the restart find it stored as expired and record nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(expiry_records(a.clone(), id.clone()).await.len(), 1);
    assert_eq!(expiry_records(a.clone(), other.clone()).await.len(), 1);
    let (_, v, _) = raw(
        &a,
        "GET",
        &format!("/v1/approvals/{other}"),
        Some(ROOT),
        None,
    )
    .await;
    assert_eq!(v["status"], "expired", "{v}");
    assert_eq!(root.describe_key(&key).await.unwrap().state, "Enabled");
}

/// Closed requests do not pile up: `approval_retention_days` after its expiry time the leading node deletes
/// a closed request, after a `kms:PurgeApproval` record that ends its trail. A pending one is first stored as
/// expired, and goes a round later; one still within retention stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_approvals_are_purged_after_retention_on_the_record() {
    use keyward_store::{transact, Tx};
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::dev_with(dir.path(), "background_interval_seconds = 1\n");
    let (_, key, ops1, ops2) = quorum_key_and_two_admins(&server).await;
    let a = server.addr.clone();
    let request = || request_deletion(&a, &key, &ops1);
    let reject = |id: String| {
        let (a, ops2) = (a.clone(), ops2.clone());
        async move {
            let (st, v, _) = raw(
                &a,
                "POST",
                &format!("/v1/approvals/{id}/reject"),
                Some(&ops2),
                None,
            )
            .await;
            assert_eq!((st, v["status"].as_str()), (200, Some("rejected")), "{v}");
        }
    };
    let (old_rejected, old_pending, recent_rejected) =
        (request().await, request().await, request().await);
    reject(old_rejected.clone()).await;
    reject(recent_rejected.clone()).await;

    // Ninety-one days pass for two of them: their expiry time is moved back in the store.
    server.stop();
    {
        let store =
            keyward_store_sqlite::SqliteStore::open(&dir.path().join("data").join("keyward.db"))
                .unwrap();
        let long_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 91 * 86_400;
        transact(&store as &dyn keyward_store::Store, |tx: &mut dyn Tx| {
            for id in [&old_rejected, &old_pending] {
                let mut v: serde_json::Value =
                    serde_json::from_slice(&tx.get_meta("approval", id)?.unwrap()).unwrap();
                v["expires_at"] = json!(long_ago);
                tx.put_meta("approval", id, &serde_json::to_vec(&v).unwrap())?;
            }
            Ok::<_, keyward_store::StoreError>(())
        })
        .unwrap();
    }
    server.restart(&[("KEYWARD_DEV_ROOT_TOKEN", ROOT)]);

    let status = |id: String| {
        let a = a.clone();
        async move {
            raw(&a, "GET", &format!("/v1/approvals/{id}"), Some(ROOT), None)
                .await
                .0
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status(old_rejected.clone()).await != 404 || status(old_pending.clone()).await != 404 {
        assert!(std::time::Instant::now() < deadline, "not purged");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Each trail ends with the deletion, by the scheduler; the pending one was stored as expired first.
    let trail = |id: String| {
        let (a, key) = (a.clone(), key.clone());
        async move {
            scheduler_records(&a, &id)
                .await
                .iter()
                .map(|r| {
                    assert_eq!(r["key_id"], key.as_str(), "{r}");
                    format!(
                        "{} {}",
                        r["action"].as_str().unwrap(),
                        r["outcome"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        trail(old_rejected.clone()).await,
        ["kms:PurgeApproval allow"]
    );
    assert_eq!(
        trail(old_pending.clone()).await,
        ["kms:ScheduleKeyDeletion error", "kms:PurgeApproval allow"]
    );
    // Within retention: kept, listed, and not recorded as deleted, however many rounds pass.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(status(recent_rejected.clone()).await, 200);
    assert!(trail(recent_rejected.clone()).await.is_empty());
    let (_, listed, _) = raw(&a, "GET", "/v1/approvals", Some(ROOT), None).await;
    let ids: Vec<&str> = listed["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["approval_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [recent_rejected.as_str()], "{listed}");
    let (_, verify, _) = raw(&a, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(verify["valid"], true, "{verify}");
}

/// Expired tokens do not pile up either: the leading node deletes each after a `kms:PurgeToken` record under
/// `token/ID`; a live token of the same identity stays, listed and working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_deleted_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::dev_with(dir.path(), "background_interval_seconds = 1\n");
    let a = server.addr.clone();
    let (st, v, _) = raw(
        &a,
        "POST",
        "/v1/identities",
        Some(ROOT),
        Some(br#"{"name": "ci-job", "kind": "service", "roles": ["key-user"]}"#.to_vec()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let mint = |body: &'static [u8]| {
        let a = a.clone();
        async move {
            let (st, v, _) = raw(
                &a,
                "POST",
                "/v1/identities/ci-job/tokens",
                Some(ROOT),
                Some(body.to_vec()),
            )
            .await;
            assert_eq!(st, 201, "{v}");
            (
                v["token"].as_str().unwrap().to_string(),
                v["token_id"].as_str().unwrap().to_string(),
            )
        }
    };
    let (short, short_id) = mint(br#"{"ttl_seconds": 1}"#).await;
    let (long, long_id) = mint(b"{}").await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let records = loop {
        let (st, v, _) = raw(
            &a,
            "GET",
            &format!("/v1/audit?resource=token/{short_id}&principal=system:scheduler"),
            Some(ROOT),
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let records = v["records"].as_array().unwrap().clone();
        if !records.is_empty() {
            break records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{short_id} was not deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (&records[0]["action"], &records[0]["outcome"]),
        (&json!("kms:PurgeToken"), &json!("allow"))
    );
    let (st, _, _) = raw(&a, "GET", "/v1/auth/self", Some(&short), None).await;
    assert_eq!(st, 401);
    let (st, _, _) = raw(&a, "GET", "/v1/auth/self", Some(&long), None).await;
    assert_eq!(st, 200);
    let (_, listed, _) = raw(&a, "GET", "/v1/identities/ci-job/tokens", Some(ROOT), None).await;
    assert_eq!(
        listed["tokens"][0]["token_id"],
        long_id.as_str(),
        "{listed}"
    );
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1, "{listed}");
    let (_, live_root, _) = raw(&a, "GET", "/v1/auth/self", Some(ROOT), None).await;
    assert_eq!(live_root["name"], "root", "{live_root}");

    // Gone from the store, the live one kept.
    server.stop();
    let store =
        keyward_store_sqlite::SqliteStore::open(&dir.path().join("data").join("keyward.db"))
            .unwrap();
    let ids = keyward_store::transact(&store as &dyn keyward_store::Store, |tx| {
        tx.list_meta("token_id")
    })
    .unwrap();
    let ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    assert!(!ids.contains(&short_id.as_str()), "{ids:?}");
    assert!(ids.contains(&long_id.as_str()), "{ids:?}");
}

/// A connection must deliver a complete request header within `idle_timeout_seconds` of being ready for
/// one: a client trickling its headers in (slowloris) and a keep-alive connection left idle are both
/// closed, while one in steady use stays open.
#[test]
fn slow_and_idle_connections_are_closed_busy_ones_kept() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev_with(dir.path(), "idle_timeout_seconds = 2\n");
    let host = server.addr.trim_start_matches("http://").to_string();
    let connect = || {
        let s = TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    };
    // Reads until the server closes the connection; returns what arrived and when the close came.
    let until_closed = |mut s: TcpStream| {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, start.elapsed()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (got, start.elapsed())
                }
                Err(e) => panic!("the server kept the connection open: {e}"),
            }
        }
    };
    const HEALTH: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: k\r\n\r\n";

    // Headers that never end: closed after the timeout, without an answer to a request never made.
    let mut slow = connect();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: k\r\n")
        .unwrap();
    let (got, after) = until_closed(slow);
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    // Idle after one answered request: closed once the timeout passes.
    let mut idle = connect();
    idle.write_all(HEALTH).unwrap();
    let (got, after) = until_closed(idle);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(after >= Duration::from_millis(1500), "{after:?}");

    // A request every 500 ms for four seconds, twice the timeout: one connection answers them all.
    let mut busy = connect();
    let mut buf = [0u8; 4096];
    for i in 0..8 {
        busy.write_all(HEALTH).unwrap();
        let n = busy.read(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "request {i}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(std::net::TcpStream::connect(&host).is_ok());
}

/// Out of file descriptors, accepting fails until a connection closes: the server retries at a measured
/// pace instead of spinning a core, says why once, keeps serving the connections it has, and accepts again
/// once descriptors are free.
#[test]
fn out_of_file_descriptors_the_server_waits_instead_of_spinning() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let host = server.addr.trim_start_matches("http://").to_string();
    let pid = server.child.as_ref().unwrap().id();
    let health = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: k\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
    };
    let mut kept = TcpStream::connect(&host).unwrap();
    assert!(health(&mut kept));
    // A few descriptors to spare, then none.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", open + 4, open + 4);
    let set = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .unwrap();
    assert!(set.success());
    let flood: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(&host).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let (before, start) = (cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu() - before;
    let elapsed = start.elapsed();
    // A spinning accept loop takes a whole core: 200 ticks in two seconds.
    assert!(ticks < 50, "{ticks} ticks of CPU in {elapsed:?}");
    assert!(server.logs().contains("cannot accept connections"));
    assert!(health(&mut kept), "an open connection is still served");
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut fresh = TcpStream::connect(&host).unwrap();
        if health(&mut fresh) {
            break;
        }
        assert!(Instant::now() < deadline, "no new connection accepted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Behind a balancer that passes TCP through, the PROXY header names the client: the audit log records that
/// address and `source_cidr` judges it. Only the configured balancer may send one, and it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_balancer_names_its_clients_and_nobody_else_can() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev_with(dir.path(), "proxy_protocol_from = [\"127.0.0.2\"]\n");
    let key = create(&server.root(), "AES_256", None).await.key_id;
    let policy = json!({"statements": [{"effect": "allow", "actions": ["kms:Encrypt"],
        "resources": [format!("key/{key}")], "conditions": {"source_cidr": ["203.0.113.0/24"]}}]});
    let (st, v, _) = raw(
        &server.addr,
        "PUT",
        "/v1/policies/branch-only",
        Some(ROOT),
        Some(serde_json::to_vec(&policy).unwrap()),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let token = token_with_policies(&server, "branch-app", &[], &["branch-only"]).await;
    let port: u16 = server.addr.rsplit(':').next().unwrap().parse().unwrap();

    // One request on a fresh connection from `from`, after `header`; the answer, or nothing if the
    // connection was closed unanswered.
    let send = |from: &'static str, header: Vec<u8>, request_id: &'static str| {
        let token = token.clone();
        let key = key.clone();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let mut s = socket
                .connect(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap();
            let body = r#"{"plaintext": "aGk="}"#;
            let request = format!(
                "POST /v1/keys/{key}/encrypt HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
                 x-request-id: {request_id}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(&header).await.unwrap();
            let _ = s.write_all(request.as_bytes()).await;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).to_string()
        }
    };
    let recorded = |request_id: &'static str| {
        let addr = server.addr.clone();
        async move {
            let (_, v, _) = raw(
                &addr,
                "GET",
                &format!("/v1/audit?request_id={request_id}"),
                Some(ROOT),
                None,
            )
            .await;
            v["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["source_ip"].as_str().unwrap().to_string(),
                        r["outcome"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let pair = |ip: &str, outcome: &str| vec![(ip.to_string(), outcome.to_string())];

    // Version 1 from the balancer, for a client in the policy's block: allowed, and recorded as that client.
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 9700\r\n".to_vec();
    let answer = send("127.0.0.2", v1.clone(), "pp-v1-branch").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(recorded("pp-v1-branch").await, pair("203.0.113.7", "allow"));

    // Version 2, for a client outside it: refused by the condition, and recorded as that client.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0xc8, 0x3c, 0x25, 0xe4]);
    let answer = send("127.0.0.2", v2, "pp-v2-elsewhere").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(
        recorded("pp-v2-elsewhere").await,
        pair("198.51.100.9", "deny")
    );

    // The balancer's connection without a header: closed unanswered, nothing recorded.
    let answer = send("127.0.0.2", Vec::new(), "pp-missing").await;
    assert_eq!(answer, "");
    assert!(recorded("pp-missing").await.is_empty());
    // A balancer health-checking without a header fails every check; the log tells of the first, and of
    // the rest at most every ten seconds with their number, rather than once per connection.
    for _ in 0..5 {
        assert_eq!(send("127.0.0.2", Vec::new(), "pp-check").await, "");
    }
    let logs = server.logs();
    assert_eq!(
        logs.matches("connection from 127.0.0.2").count(),
        1,
        "{logs}"
    );

    // Anyone else claiming to be a client of the branch: the header is not read as one, so the request
    // does not parse, and nothing runs.
    let answer = send("127.0.0.1", v1, "pp-spoofed").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(recorded("pp-spoofed").await.is_empty());
    // Directly, from its own address: judged by that address.
    let answer = send("127.0.0.1", Vec::new(), "pp-direct").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(recorded("pp-direct").await, pair("127.0.0.1", "deny"));
}

/// With more keys in use than the cache may hold, the least used give way and come back from the store
/// when needed: every key still works, and the metrics show the bound holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_key_cache_evicts_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev_with(dir.path(), "key_cache_capacity = 16\n");
    let root = server.root();
    let mut sealed = Vec::new();
    for i in 0..64u32 {
        let key = create(&root, "AES_256", None).await.key_id;
        let plaintext = format!("message {i}");
        let ct = root
            .encrypt(&key, plaintext.as_bytes(), None)
            .await
            .unwrap();
        sealed.push((ct, plaintext));
    }
    for (ct, plaintext) in &sealed {
        let opened = root
            .decrypt(None, &ct.ciphertext.0, None, None)
            .await
            .unwrap();
        assert_eq!(opened.plaintext.expose(), plaintext.as_bytes());
    }
    let metrics = root.metrics().await.unwrap();
    let figure = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(figure("keyward_key_cache_keys") <= 16, "{metrics}");
    assert!(
        figure("keyward_key_cache_evictions_total") >= 48,
        "{metrics}"
    );
    assert!(figure("keyward_key_cache_misses_total") >= 48, "{metrics}");
}

/// Retention: an administrator deletes the oldest audit records once they are archived; the rest still
/// verifies from the anchor the pruning leaves, the pruning is itself recorded, and what is young, unverified
/// or the newest is never deleted. Under a service-wide quorum it waits for an approval like root rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_audit_records_are_pruned_on_the_record_and_the_rest_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::dev_with(dir.path(), "audit_retention_days = 0\n");
    let a = server.addr.clone();
    let root = server.root();
    let key = create(&root, "AES_256", None).await.key_id;
    for _ in 0..5 {
        root.encrypt(&key, b"x", None).await.unwrap();
    }
    let auditor = token_for(&server, "reviewer", &["auditor"]).await;
    let prune = |token: String, body: &'static str| {
        let a = a.clone();
        async move {
            raw(
                &a,
                "POST",
                "/v1/audit/prune",
                Some(&token),
                Some(body.as_bytes().to_vec()),
            )
            .await
        }
    };
    let (st, v, _) = prune(auditor, r#"{"through_seq": 3}"#).await;
    assert_eq!((st, code_of(&v)), (403, "AccessDenied"), "{v}");
    for body in [
        "{}",
        r#"{"through_seq": 0}"#,
        r#"{"through_seq": "3"}"#,
        r#"{"through_seq": 3, "all": true}"#,
    ] {
        let (st, v, _) = prune(ROOT.into(), body).await;
        assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{body}: {v}");
    }
    let (st, v, _) = prune(ROOT.into(), r#"{"through_seq": 100000}"#).await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("never pruned"));

    let (st, v, _) = prune(ROOT.into(), r#"{"through_seq": 5}"#).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"pruned": 5, "pruned_through": 5}));
    let (st, v, _) = prune(ROOT.into(), r#"{"through_seq": 4}"#).await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already pruned"));
    let check = |a: String| async move {
        let (_, v, _) = raw(&a, "GET", "/v1/audit/verify", Some(ROOT), None).await;
        assert_eq!(
            (&v["valid"], &v["pruned_through"]),
            (&json!(true), &json!(5)),
            "{v}"
        );
        let (_, page, _) = raw(&a, "GET", "/v1/audit?limit=1", Some(ROOT), None).await;
        assert_eq!(page["records"][0]["seq"], 6, "{page}");
        let (_, pruning, _) = raw(
            &a,
            "GET",
            "/v1/audit?action=kms:PruneAudit&outcome=allow",
            Some(ROOT),
            None,
        )
        .await;
        let resources: Vec<&str> = pruning["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["resource"].as_str())
            .collect();
        assert!(resources.contains(&"audit/through-5"), "{pruning}");
        let (_, report, _) = raw(&a, "GET", "/v1/reports/compliance", Some(ROOT), None).await;
        assert_eq!(
            (
                &report["audit_chain_valid"],
                &report["audit_pruned_through"],
                &report["audit_retention_days"],
                &report["approval_retention_days"]
            ),
            (&json!(true), &json!(5), &json!(0), &json!(90)),
        );
    };
    check(a.clone()).await;
    server.restart(&[("KEYWARD_DEV_ROOT_TOKEN", ROOT)]);
    check(a.clone()).await;

    // The default retention (a year) keeps everything this young.
    let young = tempfile::tempdir().unwrap();
    let fresh = Server::dev(&young.path().join("data"));
    create(&fresh.root(), "AES_256", None).await;
    let (st, v, _) = raw(
        &fresh.addr,
        "POST",
        "/v1/audit/prune",
        Some(ROOT),
        Some(br#"{"through_seq": 1}"#.to_vec()),
    )
    .await;
    assert_eq!((st, code_of(&v)), (409, "InvalidState"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inside the retention period"),
        "{v}"
    );

    // Under a service-wide quorum, pruning waits for another administrator.
    let held = tempfile::tempdir().unwrap();
    let quorum = Server::dev_with(
        held.path(),
        "audit_retention_days = 0\nquorum_approvals = 1\n",
    );
    for _ in 0..3 {
        create(&quorum.root(), "AES_256", None).await;
    }
    let (st, v, _) = raw(
        &quorum.addr,
        "POST",
        "/v1/audit/prune",
        Some(ROOT),
        Some(br#"{"through_seq": 2}"#.to_vec()),
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (202, Some("pending")), "{v}");
    let id = v["approval_id"].as_str().unwrap().to_string();
    let (_, before, _) = raw(&quorum.addr, "GET", "/v1/audit?limit=1", Some(ROOT), None).await;
    assert_eq!(
        before["records"][0]["seq"], 1,
        "nothing is deleted before the approval"
    );
    let second = token_for(&quorum, "second-admin", &["admin"]).await;
    let (st, v, _) = raw(
        &quorum.addr,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(&second),
        None,
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("executed")), "{v}");
    assert_eq!(
        v["result"],
        json!({"pruned": 2, "pruned_through": 2}),
        "{v}"
    );
    let (_, verified, _) = raw(&quorum.addr, "GET", "/v1/audit/verify", Some(ROOT), None).await;
    assert_eq!(
        (&verified["valid"], &verified["pruned_through"]),
        (&json!(true), &json!(2))
    );
}

/// `POST /v1/audit/verify-archive`: an auditor checks records kept outside the service; bad input is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_verifies_an_archive_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev(&dir.path().join("data"));
    let a = server.addr.clone();
    for _ in 0..3 {
        create(&server.root(), "AES_256", None).await;
    }
    let auditor = token_for(&server, "reviewer", &["auditor"]).await;
    let (_, page, _) = raw(&a, "GET", "/v1/audit?limit=3", Some(&auditor), None).await;
    let records = page["records"].clone();
    let check = |body: serde_json::Value| {
        let (a, auditor) = (a.clone(), auditor.clone());
        async move {
            raw(
                &a,
                "POST",
                "/v1/audit/verify-archive",
                Some(&auditor),
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
        }
    };
    let (st, v, _) = check(json!({ "records": records })).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (&v["valid"], &v["records"], &v["continues_into_log"]),
        (&json!(true), &json!(3), &json!(true)),
        "{v}"
    );
    let mut extra = records.clone();
    extra[1]["note"] = json!("added later");
    let mut short = records.clone();
    short[2].as_object_mut().unwrap().remove("hash");
    for (body, said) in [
        (json!({"records": []}), "records is empty"),
        (
            json!({"records": extra}),
            "records[1]: unknown field `note`",
        ),
        (
            json!({"records": short}),
            "records[2]: missing field `hash`",
        ),
        (
            json!({"records": [{"seq": "one", "hash": "00"}]}),
            "records[0] is not an audit record",
        ),
        (
            json!({"records": records, "prev_hash": "xyz"}),
            "prev_hash is a record hash",
        ),
    ] {
        let (st, v, _) = check(body).await;
        assert_eq!((st, code_of(&v)), (400, "ValidationError"), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(said),
            "{v}"
        );
    }
}

/// A connection gets ten seconds to present its PROXY header (and TLS handshake), however long the idle
/// timeout: a client that connects and says nothing cannot hold it for the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_from_the_balancer_is_closed_after_ten_seconds() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::dev_with(
        dir.path(),
        "idle_timeout_seconds = 120\nproxy_protocol_from = [\"127.0.0.2\"]\n",
    );
    let port: u16 = server.addr.rsplit(':').next().unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), s.read(&mut buf))
        .await
        .expect("the connection was held open")
        .unwrap_or(0);
    let after = start.elapsed();
    assert_eq!(n, 0);
    assert!(
        after >= std::time::Duration::from_secs(9) && after < std::time::Duration::from_secs(30),
        "{after:?}"
    );
}
