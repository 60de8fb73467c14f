//! Engine operations beside the raw library call they wrap, measured in the same run.
//!
//! `raw` is what a program calling aws-lc-rs (or RustCrypto) directly would pay, including a fresh random
//! nonce and an output allocation for AEADs; `engine` is `Kms` end to end: key resolution, state checks,
//! header and context handling, and the HSM trait. BENCHMARKS.md records the ratios.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keyward_core::*;
use keyward_hsm_soft::SoftHsm;
use keyward_store_sqlite::SqliteStore;

struct Bench {
    kms: Kms,
    _dir: tempfile::TempDir,
}

fn engine() -> Bench {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).expect("store"));
    let kms = Kms::open(
        Arc::new(SoftHsm::new()),
        store,
        Arc::new(SystemClock),
        KmsConfig::default(),
    )
    .expect("open");
    let key = kms.init_with_key(RootOfTrust::Dev).expect("init");
    kms.unseal_with_key(&key).expect("unseal");
    Bench { kms, _dir: dir }
}

fn key(kms: &Kms, spec: KeySpec, usage: KeyUsage) -> String {
    let mut req = CreateKey::new(spec);
    req.usage = Some(usage);
    kms.create_key(req).expect("create").key_id
}

fn aes_gcm(c: &mut Criterion) {
    let b = engine();
    let id = key(&b.kms, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt);
    let pt = vec![0x42u8; 1024];
    let raw_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
    let ctx = Context::new();

    let mut g = c.benchmark_group("aes-256-gcm-1KiB");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encrypt/raw", |bch| {
        bch.iter(|| {
            let mut nonce = [0u8; NONCE_LEN];
            aws_lc_rs::rand::fill(&mut nonce).expect("rng");
            let mut out = Vec::with_capacity(NONCE_LEN + pt.len() + 16);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&pt);
            let tag = raw_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut out[NONCE_LEN..],
                )
                .expect("seal");
            out.extend_from_slice(tag.as_ref());
            black_box(out)
        })
    });
    g.bench_function("encrypt/engine", |bch| {
        bch.iter(|| black_box(b.kms.encrypt(&id, &pt, &ctx, None).expect("enc")))
    });

    let mut sealed = Vec::new();
    {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("rng");
        sealed.extend_from_slice(&pt);
        raw_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .expect("seal");
        sealed.splice(0..0, nonce);
    }
    g.bench_function("decrypt/raw", |bch| {
        bch.iter(|| {
            let mut buf = sealed[NONCE_LEN..].to_vec();
            let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).expect("nonce");
            black_box(
                raw_key
                    .open_in_place(nonce, Aad::empty(), &mut buf)
                    .expect("open")
                    .len(),
            )
        })
    });
    let ct = b.kms.encrypt(&id, &pt, &ctx, None).expect("enc").ciphertext;
    g.bench_function("decrypt/engine", |bch| {
        bch.iter(|| black_box(b.kms.decrypt(None, &ct, &ctx, None).expect("dec")))
    });
    g.finish();
}

fn sign(c: &mut Criterion) {
    let b = engine();
    let msg = b"a message of typical size for a signing request: an order, a token, a manifest";
    let rng = SystemRandom::new();

    let mut g = c.benchmark_group("sign");
    g.throughput(Throughput::Elements(1));

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    g.bench_function("RSA_2048-PSS-SHA256/raw", |bch| {
        bch.iter(|| {
            let mut sig = vec![0u8; rsa.public_modulus_len()];
            rsa.sign(&signature::RSA_PSS_SHA256, &rng, msg, &mut sig)
                .expect("sign");
            black_box(sig)
        })
    });
    let id = key(&b.kms, KeySpec::Rsa2048, KeyUsage::SignVerify);
    g.bench_function("RSA_2048-PSS-SHA256/engine", |bch| {
        bch.iter(|| {
            black_box(
                b.kms
                    .sign(
                        &id,
                        SignInput::Message(msg),
                        SigningAlgorithm::RsassaPssSha256,
                    )
                    .expect("s"),
            )
        })
    });

    for (spec, alg, raw_alg) in [
        (
            KeySpec::EccNistP256,
            SigningAlgorithm::EcdsaSha256,
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        ),
        (
            KeySpec::EccNistP384,
            SigningAlgorithm::EcdsaSha384,
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        ),
        (
            KeySpec::EccNistP521,
            SigningAlgorithm::EcdsaSha512,
            &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        ),
    ] {
        let pair = EcdsaKeyPair::generate(raw_alg).expect("ec");
        g.bench_function(format!("{spec}/raw"), |bch| {
            bch.iter(|| black_box(pair.sign(&rng, msg).expect("sign")))
        });
        let id = key(&b.kms, spec, KeyUsage::SignVerify);
        g.bench_function(format!("{spec}/engine"), |bch| {
            bch.iter(|| black_box(b.kms.sign(&id, SignInput::Message(msg), alg).expect("s")))
        });
    }

    let ed = Ed25519KeyPair::generate().expect("ed");
    g.bench_function("ED25519/raw", |bch| bch.iter(|| black_box(ed.sign(msg))));
    let id = key(&b.kms, KeySpec::Ed25519, KeyUsage::SignVerify);
    g.bench_function("ED25519/engine", |bch| {
        bch.iter(|| {
            black_box(
                b.kms
                    .sign(&id, SignInput::Message(msg), SigningAlgorithm::Ed25519)
                    .expect("s"),
            )
        })
    });

    // secp256k1 and SM2 are outside the FIPS module: a FIPS build refuses them.
    if !keyward_hsm_soft::FIPS_BUILD {
        non_fips_signers(&b, &mut g, msg);
    }
    g.finish();
}

/// secp256k1 and SM2 signing (RustCrypto), beside the same crates called directly.
fn non_fips_signers(
    b: &Bench,
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    msg: &[u8],
) {
    {
        use k256::ecdsa::signature::Signer;
        let sk = k256::ecdsa::SigningKey::from_slice(&[0x11; 32]).expect("k256");
        g.bench_function("ECC_SECG_P256K1/raw", |bch| {
            bch.iter(|| {
                let s: k256::ecdsa::Signature = sk.sign(msg);
                black_box(s.to_der())
            })
        });
    }
    let id = key(&b.kms, KeySpec::EccSecgP256k1, KeyUsage::SignVerify);
    g.bench_function("ECC_SECG_P256K1/engine", |bch| {
        bch.iter(|| {
            black_box(
                b.kms
                    .sign(&id, SignInput::Message(msg), SigningAlgorithm::EcdsaSha256)
                    .expect("s"),
            )
        })
    });
    {
        use sm2::dsa::signature::Signer;
        let sk = sm2::SecretKey::from_slice(&[0x22; 32]).expect("sm2");
        let signing = sm2::dsa::SigningKey::new("1234567812345678", &sk).expect("sm2");
        g.bench_function("SM2/raw", |bch| {
            bch.iter(|| {
                let s: sm2::dsa::Signature = signing.sign(msg);
                black_box(s.to_der())
            })
        });
    }
    let id = key(&b.kms, KeySpec::Sm2, KeyUsage::SignVerify);
    g.bench_function("SM2/engine", |bch| {
        bch.iter(|| {
            black_box(
                b.kms
                    .sign(&id, SignInput::Message(msg), SigningAlgorithm::Sm2Dsa)
                    .expect("s"),
            )
        })
    });
}

fn mac(c: &mut Criterion) {
    let b = engine();
    let msg = vec![0x5au8; 1024];
    let mut g = c.benchmark_group("hmac-sha256-1KiB");
    g.throughput(Throughput::Elements(1));
    let raw = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[3u8; 32]);
    g.bench_function("raw", |bch| {
        bch.iter(|| black_box(aws_lc_rs::hmac::sign(&raw, &msg).as_ref().to_vec()))
    });
    let id = key(&b.kms, KeySpec::Hmac256, KeyUsage::GenerateVerifyMac);
    g.bench_function("engine", |bch| {
        bch.iter(|| black_box(b.kms.mac(&id, &msg, MacAlgorithm::HmacSha256).expect("m")))
    });
    g.finish();
}

/// ML-DSA-65 sign and verify of a 1 KiB message and ML-KEM-768 decapsulation, beside aws-lc-rs called
/// directly with a key of the same parameter set.
fn post_quantum(c: &mut Criterion) {
    use aws_lc_rs::kem::{DecapsulationKey, EncapsulationKey, ML_KEM_768};
    use aws_lc_rs::signature::{KeyPair as _, PqdsaKeyPair, UnparsedPublicKey};
    let b = engine();
    let msg = vec![0x5au8; 1024];
    let alg = SigningAlgorithm::MlDsaShake256;
    let mut g = c.benchmark_group("post-quantum");
    g.throughput(Throughput::Elements(1));

    let pair = PqdsaKeyPair::generate(&signature::ML_DSA_65_SIGNING).expect("ml-dsa");
    let mut sig = vec![0u8; signature::ML_DSA_65_SIGNING.signature_len()];
    g.bench_function("ML_DSA_65-sign/raw", |bch| {
        bch.iter(|| black_box(pair.sign(&msg, &mut sig).expect("sign")))
    });
    let id = key(&b.kms, KeySpec::MlDsa65, KeyUsage::SignVerify);
    g.bench_function("ML_DSA_65-sign/engine", |bch| {
        bch.iter(|| black_box(b.kms.sign(&id, SignInput::Message(&msg), alg).expect("s")))
    });
    let n = pair.sign(&msg, &mut sig).expect("sign");
    let public = UnparsedPublicKey::new(&signature::ML_DSA_65, pair.public_key().as_ref());
    g.bench_function("ML_DSA_65-verify/raw", |bch| {
        bch.iter(|| black_box(public.verify(&msg, &sig[..n]).is_ok()))
    });
    let signed = b
        .kms
        .sign(&id, SignInput::Message(&msg), alg)
        .expect("sign");
    g.bench_function("ML_DSA_65-verify/engine", |bch| {
        bch.iter(|| {
            black_box(
                b.kms
                    .verify(&id, SignInput::Message(&msg), &signed.signature, alg, None)
                    .expect("v"),
            )
        })
    });

    let dk = DecapsulationKey::generate(&ML_KEM_768).expect("ml-kem");
    let (ct, _) = dk
        .encapsulation_key()
        .expect("ek")
        .encapsulate()
        .expect("encapsulate");
    g.bench_function("ML_KEM_768-decapsulate/raw", |bch| {
        bch.iter(|| black_box(dk.decapsulate(ct.as_ref().into()).expect("d")))
    });
    let id = key(&b.kms, KeySpec::MlKem768, KeyUsage::KeyAgreement);
    let spki = b.kms.public_key(&id).expect("public key").der;
    let sender = EncapsulationKey::new(&ML_KEM_768, &spki[spki.len() - 1184..]).expect("ek");
    let (ct, _) = sender.encapsulate().expect("encapsulate");
    g.bench_function("ML_KEM_768-decapsulate/engine", |bch| {
        bch.iter(|| black_box(b.kms.decapsulate(&id, ct.as_ref(), None).expect("d")))
    });
    g.finish();
}

criterion_group!(benches, aes_gcm, sign, mac, post_quantum);
criterion_main!(benches);
