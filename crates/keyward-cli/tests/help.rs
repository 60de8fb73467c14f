//! The help a newcomer reads lists the values an option takes, every one the service knows (read from the
//! vocabulary crate itself, so a new spec or algorithm cannot be left out of the help), and a wrong value is
//! refused with the list.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_hsm::{KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm};

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn option_help_lists_every_value_the_service_knows() {
    let create = help(&["key", "create"]);
    for s in KeySpec::ALL {
        assert!(create.contains(s.as_str()), "key create --help lacks {s}");
    }
    for u in KeyUsage::ALL {
        assert!(create.contains(u.as_str()), "key create --help lacks {u}");
    }
    let sign = help(&["sign"]);
    for a in SigningAlgorithm::ALL {
        let name = a.as_str();
        // RSASSA_PSS_SHA_256|384|512 names three at once.
        let family = name.rsplit_once('_').map_or(name, |(f, _)| f);
        assert!(
            sign.contains(name) || sign.contains(family),
            "sign --help lacks {name}"
        );
    }
    let mac = help(&["mac"]);
    for m in MacAlgorithm::ALL {
        assert!(mac.contains(m.as_str()), "mac --help lacks {m}");
    }
    let identity = help(&["identity", "create"]);
    for role in ["admin", "key-admin", "key-user", "auditor"] {
        assert!(
            identity.contains(role),
            "identity create --help lacks {role}"
        );
    }
    let global = help(&[]);
    for var in [
        "KEYWARD_ADDR",
        "KEYWARD_TOKEN",
        "KEYWARD_CACERT",
        "KEYWARD_CLIENT_CERT",
    ] {
        assert!(global.contains(var), "keyward --help lacks {var}");
    }
}
