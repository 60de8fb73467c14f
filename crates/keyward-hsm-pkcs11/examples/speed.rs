//! Operations per second of the software HSM and of a PKCS#11 token through Keyward's backend, measured in one
//! run on one thread: AES-256-GCM of 1 KiB, RSA-2048 PSS signing, P-256 ECDSA signing, HMAC-SHA-256 of
//! 1 KiB. `benches/hsm.sh` creates a SoftHSM2 token, runs this, and runs `openssl speed` beside it.
//!
//! The token is named by `KEYWARD_PKCS11_MODULE`, `KEYWARD_PKCS11_TOKEN_LABEL` and `KEYWARD_PKCS11_PIN`.

use std::time::{Duration, Instant};

use keyward_hsm::{Hsm, KeyAttributes, KeySpec, MacAlgorithm, SignInput, SigningAlgorithm};
use keyward_hsm_pkcs11::{Pkcs11Config, Pkcs11Hsm};
use keyward_hsm_soft::SoftHsm;

fn rate(seconds: f64, mut op: impl FnMut() -> bool) -> f64 {
    // Warm up, then count whole operations for the measuring time.
    for _ in 0..10 {
        op();
    }
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while start.elapsed() < budget {
        if !op() {
            return 0.0;
        }
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn measure(hsm: &dyn Hsm, seconds: f64) -> Result<[f64; 4], String> {
    let e = |x: keyward_hsm::HsmError| x.to_string();
    let aes = hsm
        .generate(KeySpec::Aes256, &KeyAttributes::internal())
        .map_err(e)?;
    let rsa = hsm
        .generate(KeySpec::Rsa2048, &KeyAttributes::internal())
        .map_err(e)?;
    let ec = hsm
        .generate(KeySpec::EccNistP256, &KeyAttributes::internal())
        .map_err(e)?;
    let hmac = hsm
        .generate(KeySpec::Hmac256, &KeyAttributes::internal())
        .map_err(e)?;
    let data = vec![0x42u8; 1024];
    let mut out = Vec::with_capacity(2048);
    Ok([
        rate(seconds, || {
            out.clear();
            hsm.encrypt_symmetric(&aes, b"", &data, &mut out).is_ok()
        }),
        rate(seconds, || {
            hsm.sign(
                &rsa,
                SigningAlgorithm::RsassaPssSha256,
                SignInput::Message(&data),
            )
            .is_ok()
        }),
        rate(seconds, || {
            hsm.sign(
                &ec,
                SigningAlgorithm::EcdsaSha256,
                SignInput::Message(&data),
            )
            .is_ok()
        }),
        rate(seconds, || {
            hsm.mac(&hmac, MacAlgorithm::HmacSha256, &data).is_ok()
        }),
    ])
}

fn main() -> Result<(), String> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let config = Pkcs11Config {
        module: var("KEYWARD_PKCS11_MODULE")?.into(),
        token_label: var("KEYWARD_PKCS11_TOKEN_LABEL")?,
        pin: zeroize::Zeroizing::new(var("KEYWARD_PKCS11_PIN")?),
        sessions: 2,
    };
    let seconds: f64 = std::env::var("SECONDS_PER_OP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let token = Pkcs11Hsm::open(&config).map_err(|e| e.to_string())?;
    let soft = measure(&SoftHsm::new(), seconds)?;
    let p11 = measure(&token, seconds)?;
    println!("| operation | software HSM ops/s | PKCS#11 token ops/s | token / software |");
    println!("|---|---|---|---|");
    for (i, name) in [
        "AES-256-GCM encrypt 1 KiB",
        "RSA-2048 PSS sign",
        "ECDSA P-256 sign",
        "HMAC-SHA-256 1 KiB",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}× |",
            soft[i],
            p11[i],
            p11[i] / soft[i].max(1e-9)
        );
    }
    Ok(())
}
