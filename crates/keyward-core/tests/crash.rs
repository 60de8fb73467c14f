//! Crash consistency: a write that fails at any step, or a process killed mid-write, leaves the store
//! consistent after restart, with no key lost and every ciphertext that was handed out still decryptable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use keyward_core::*;
use keyward_hsm_soft::SoftHsm;
use keyward_store::conformance::FailingStore;
use keyward_store::Store;
use keyward_store_sqlite::SqliteStore;

fn engine_over(store: Arc<dyn Store>, clock: &ManualClock) -> Kms {
    Kms::open(
        Arc::new(SoftHsm::new()),
        store,
        Arc::new(clock.clone()),
        KmsConfig::default(),
    )
    .unwrap()
}

/// Checks every key in the store: invariants hold, and every recorded ciphertext decrypts exactly when its
/// key and version states say it should (and is otherwise refused with a state error, never lost).
fn check_store(kms: &Kms, cts: &[(Vec<u8>, Vec<u8>)]) {
    let mut keys = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let (page, n) = kms
            .list_keys(&KeyFilter::default(), next.as_deref(), 1000)
            .unwrap();
        keys.extend(page);
        next = n;
        if next.is_none() {
            break;
        }
    }
    let mut states = std::collections::HashMap::new();
    for key in &keys {
        let versions = kms.list_versions(&key.key_id).unwrap();
        for (i, v) in versions.iter().enumerate() {
            assert_eq!(v.version as usize, i + 1);
        }
        if key.state != KeyState::Destroyed && key.primary_version > 0 {
            assert_eq!(
                versions[key.primary_version as usize - 1].state,
                VersionState::Enabled
            );
            if key.state == KeyState::Enabled {
                kms.encrypt(&key.key_id, b"still works", &Context::new(), None)
                    .unwrap();
            }
        }
        states.insert(key.key_id.replace('-', ""), (key.clone(), versions));
    }
    for (ct, pt) in cts {
        let id = hex(&ct[2..18]);
        let version = u32::from_be_bytes(ct[18..22].try_into().unwrap());
        let (key, versions) = states.get(&id).expect("a ciphertext's key vanished");
        let v = &versions[version as usize - 1];
        let should = key.state == KeyState::Enabled
            && matches!(v.state, VersionState::Enabled | VersionState::Archived);
        match kms.decrypt(None, ct, &Context::new(), None) {
            Ok(got) => {
                assert!(
                    should,
                    "decrypted under a {:?} key / {:?} version",
                    key.state, v.state
                );
                assert_eq!(got.plaintext.expose(), &pt[..]);
            }
            Err(e) => {
                assert!(!should, "lost a ciphertext: {e}");
                assert!(
                    matches!(
                        e.code(),
                        ErrorCode::KeyDisabled
                            | ErrorCode::KeyPendingDeletion
                            | ErrorCode::KeyDestroyed
                    ),
                    "{e}"
                );
            }
        }
    }
}

type Setup = fn(&Kms) -> String;
type Action = fn(&Kms, &str) -> KmsResult<()>;

/// Sets up a key, records ciphertexts, runs `prepare` unarmed, then runs `action` with the k-th write
/// failing, for k = 1, 2, ... until the action makes no more writes than that.
fn fail_every_write_of(name: &str, setup: Setup, prepare: Action, action: Action) {
    fail_every_write(name, setup, prepare, action, true)
}

fn fail_every_write(name: &str, setup: Setup, prepare: Action, action: Action, changes_key: bool) {
    let mut k = 1;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.db");
        let clock = ManualClock::new(common::T0);
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let failing = Arc::new(FailingStore::new(sqlite));
        let kms = engine_over(failing.clone(), &clock);
        let shares = kms.init_shamir(1, 1).unwrap();
        kms.unseal(&shares[0]).unwrap();
        let id = setup(&kms);
        let cts: Vec<(Vec<u8>, Vec<u8>)> = (0..3u8)
            .map(|i| {
                (
                    kms.encrypt(&id, &[i; 5], &Context::new(), None)
                        .unwrap()
                        .ciphertext,
                    vec![i; 5],
                )
            })
            .collect();
        prepare(&kms, &id).unwrap();
        clock.advance(40 * DAY);
        let before = (
            kms.describe_key(&id).unwrap(),
            kms.list_versions(&id).unwrap(),
        );
        failing.fail_at(k);
        let result = action(&kms, &id);
        let fired = failing.fired();
        failing.fail_at(0);
        drop(kms);
        // Restart on the real store and check.
        let kms = engine_over(Arc::new(SqliteStore::open(&path).unwrap()), &clock);
        kms.unseal(&shares[0]).unwrap();
        check_store(&kms, &cts);
        if !fired && !changes_key {
            assert_eq!(
                kms.root_generation(),
                Some(2),
                "{name}: root generation did not advance"
            );
        }
        let after = (
            kms.describe_key(&id).unwrap(),
            kms.list_versions(&id).unwrap(),
        );
        if fired {
            assert!(
                result.is_err(),
                "{name}: write {k} failed but the operation reported success"
            );
            assert_eq!(
                after, before,
                "{name}: failing write {k} left a partial change"
            );
        } else {
            assert!(result.is_ok(), "{name}: {result:?}");
            if changes_key {
                assert_ne!(after, before, "{name}: the operation changed nothing");
            }
            assert!(k > 1, "{name}: the operation made no write at all");
            return;
        }
        k += 1;
    }
}

fn nothing(_: &Kms, _: &str) -> KmsResult<()> {
    Ok(())
}

fn sym(kms: &Kms) -> String {
    kms.create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id
}

#[test]
fn rotation_is_atomic() {
    fail_every_write_of("rotate", sym, nothing, |kms, id| {
        kms.rotate_key(id).map(drop)
    });
}

#[test]
fn automatic_rotation_is_atomic() {
    fail_every_write_of(
        "scheduled rotation",
        |kms| {
            let mut req = CreateKey::new(KeySpec::Aes256);
            req.rotation_period_days = Some(30);
            kms.create_key(req).unwrap().key_id
        },
        nothing,
        |kms, _| kms.run_due_work().map(drop),
    );
}

#[test]
fn version_destruction_is_atomic() {
    fail_every_write_of(
        "destroy version",
        sym,
        |kms, id| kms.rotate_key(id).map(drop),
        |kms, id| kms.version_action(id, 1, VersionAction::Destroy).map(drop),
    );
}

#[test]
fn scheduled_destruction_is_atomic() {
    fail_every_write_of(
        "destroy key",
        |kms| {
            let id = sym(kms);
            kms.rotate_key(&id).unwrap();
            kms.put_alias("alias/crash", &id).unwrap();
            id
        },
        |kms, id| kms.schedule_deletion(id, 7).map(drop),
        |kms, _| kms.run_due_work().map(drop),
    );
}

#[test]
fn root_rotation_is_atomic() {
    fail_every_write(
        "rotate root",
        |kms| {
            for _ in 0..3 {
                let other = sym(kms);
                kms.rotate_key(&other).unwrap();
            }
            sym(kms)
        },
        nothing,
        |kms, _| kms.rotate_root().map(drop),
        false,
    );
}

#[test]
fn key_creation_is_all_or_nothing() {
    for k in 1..=4 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.db");
        let clock = ManualClock::new(common::T0);
        let failing = Arc::new(FailingStore::new(Arc::new(
            SqliteStore::open(&path).unwrap(),
        )));
        let kms = engine_over(failing.clone(), &clock);
        let shares = kms.init_shamir(1, 1).unwrap();
        kms.unseal(&shares[0]).unwrap();
        failing.fail_at(k);
        let mut req = CreateKey::new(KeySpec::Aes256);
        req.alias = Some("alias/new".into());
        let result = kms.create_key(req);
        let fired = failing.fired();
        drop(kms);
        let kms = engine_over(Arc::new(SqliteStore::open(&path).unwrap()), &clock);
        kms.unseal(&shares[0]).unwrap();
        let (keys, _) = kms.list_keys(&KeyFilter::default(), None, 10).unwrap();
        if fired {
            assert!(result.is_err());
            assert!(keys.is_empty(), "write {k}: a half-created key survived");
            assert_eq!(
                kms.encrypt("alias/new", b"x", &Context::new(), None)
                    .unwrap_err()
                    .code(),
                ErrorCode::NotFound
            );
        } else {
            assert_eq!(keys.len(), 1);
            check_store(&kms, &[]);
        }
    }
}

// ----- a real process killed with SIGKILL in the middle of writing -----

const CHILD_ENV: &str = "KEYWARD_CRASH_CHILD_DIR";

fn unseal_key_path(dir: &Path) -> std::path::PathBuf {
    dir.join("unseal.key")
}

/// Not a test of its own: the body of the child process the kill test starts. It loops creating keys,
/// rotating, destroying versions and encrypting, and appends each ciphertext it receives to a journal.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let clock = ManualClock::new(common::T0);
    let kms = common::open_at(&dir.join("keyward.db"), &clock);
    let key = SecretBytes::new(std::fs::read(unseal_key_path(dir)).unwrap());
    kms.unseal_with_key(&key).unwrap();
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("journal"))
        .unwrap();
    let mut ids: Vec<String> = kms
        .list_keys(&KeyFilter::default(), None, 1000)
        .unwrap()
        .0
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    for i in 0u64.. {
        let pick = i as usize % (ids.len() + 1);
        if pick == ids.len() || ids.is_empty() {
            ids.push(
                kms.create_key(CreateKey::new(KeySpec::Aes256))
                    .unwrap()
                    .key_id,
            );
            continue;
        }
        let id = &ids[pick];
        match i % 4 {
            0 => drop(kms.rotate_key(id).unwrap()),
            1 => {
                let n = kms.describe_key(id).unwrap().primary_version;
                if n > 2 {
                    let _ = kms.version_action(id, n - 2, VersionAction::Archive);
                }
            }
            _ => {
                let pt = i.to_be_bytes();
                let ct = kms
                    .encrypt(id, &pt, &Context::new(), None)
                    .unwrap()
                    .ciphertext;
                writeln!(journal, "{} {}", hex(&ct), hex(&pt)).unwrap();
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn killed_mid_write_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(common::T0);
    {
        let kms = common::open_at(&dir.path().join("keyward.db"), &clock);
        let key = kms.init_with_key(RootOfTrust::Dev).unwrap();
        std::fs::write(unseal_key_path(dir.path()), key.expose()).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    for round in 0..6u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(250 + 97 * round));
        child.kill().unwrap(); // SIGKILL: no destructor, no rollback, no flush.
        child.wait().unwrap();

        let kms = common::open_at(&dir.path().join("keyward.db"), &clock);
        let key = SecretBytes::new(std::fs::read(unseal_key_path(dir.path())).unwrap());
        kms.unseal_with_key(&key).unwrap();
        let journal = std::fs::read_to_string(dir.path().join("journal")).unwrap_or_default();
        let cts: Vec<(Vec<u8>, Vec<u8>)> = journal
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(c, p)| p.len() == 16 && c.len() % 2 == 0)
            .map(|(c, p)| (unhex(c), unhex(p)))
            .collect();
        check_store(&kms, &cts);
    }
    let journal = std::fs::read_to_string(dir.path().join("journal")).unwrap();
    assert!(
        journal.lines().count() > 10,
        "the child did too little work to prove anything"
    );
}
