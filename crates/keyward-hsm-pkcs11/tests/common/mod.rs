#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;

use keyward_hsm_pkcs11::Pkcs11Config;

/// The token the tests use: `KEYWARD_TEST_PKCS11_MODULE`, `_TOKEN` and `_PIN` when set (`scripts/test` sets
/// them), otherwise a fresh SoftHSM2 token in a temporary directory. Without SoftHSM2 the tests fail, never
/// skip: a green run must mean the PKCS#11 backend was exercised.
pub fn config() -> Pkcs11Config {
    static SETUP: OnceLock<(PathBuf, String, String)> = OnceLock::new();
    let (module, label, pin) = SETUP.get_or_init(|| {
        if let Ok(module) = std::env::var("KEYWARD_TEST_PKCS11_MODULE") {
            return (
                module.into(),
                std::env::var("KEYWARD_TEST_PKCS11_TOKEN").unwrap_or_else(|_| "keyward-test".into()),
                std::env::var("KEYWARD_TEST_PKCS11_PIN").unwrap_or_else(|_| "1234".into()),
            );
        }
        let module = PathBuf::from("/usr/lib/softhsm/libsofthsm2.so");
        assert!(
            module.exists(),
            "SoftHSM2 is needed for these tests: apt-get install softhsm2 (or set KEYWARD_TEST_PKCS11_MODULE)"
        );
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, format!("directories.tokendir = {}\n", tokens.display())).unwrap();
        // Read by the module when it is initialised, which happens after this, once per process.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let out = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "keyward-test", "--pin", "1234", "--so-pin", "5678"])
            .output()
            .expect("softhsm2-util (package softhsm2) is needed for these tests");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (module, "keyward-test".into(), "1234".into())
    });
    Pkcs11Config {
        module: module.clone(),
        token_label: label.clone(),
        pin: zeroize::Zeroizing::new(pin.clone()),
        sessions: 4,
    }
}
