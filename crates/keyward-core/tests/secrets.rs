//! Versioned secrets (the Vault API's KV version 2): versions and check-and-set, deletion that can be undone
//! and destruction that cannot, the versions kept, listing, values sealed under the mount's key and bound to
//! their place, and reads that stop when that key is disabled or the service sealed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::harness;
use keyward_core::secrets::{mount_key_alias, MetadataUpdate};
use keyward_core::*;
use keyward_store::{transact, Tx};

fn value(
    read: &Result<keyward_core::secrets::SecretRead, keyward_core::secrets::VersionInfo>,
) -> String {
    String::from_utf8(read.as_ref().unwrap().data.expose().to_vec()).unwrap()
}

#[test]
fn versions_cas_delete_undelete_destroy() {
    let h = harness();
    let kms = &h.kms;
    let (v1, made) = kms
        .kv_write("app", "db/creds", br#"{"password":"one"}"#, None)
        .unwrap();
    assert_eq!(v1.version, 1);
    // The mount's first write made its key, and says so once.
    assert_eq!(
        made.unwrap(),
        kms.describe_key(&mount_key_alias("app")).unwrap().key_id
    );
    // Check-and-set: 0 only for a new secret, otherwise the current version.
    let code =
        |r: KmsResult<(keyward_core::secrets::VersionInfo, Option<String>)>| r.unwrap_err().code();
    assert_eq!(
        code(kms.kv_write("app", "db/creds", b"{}", Some(0))),
        ErrorCode::ValidationError
    );
    assert_eq!(
        code(kms.kv_write("app", "db/creds", b"{}", Some(2))),
        ErrorCode::ValidationError
    );
    let (v2, made) = kms
        .kv_write("app", "db/creds", br#"{"password":"two"}"#, Some(1))
        .unwrap();
    assert_eq!(v2.version, 2);
    assert!(made.is_none());
    assert_eq!(
        value(&kms.kv_read("app", "db/creds", None).unwrap()),
        r#"{"password":"two"}"#
    );
    assert_eq!(
        value(&kms.kv_read("app", "db/creds", Some(1)).unwrap()),
        r#"{"password":"one"}"#
    );

    // Deleted: a read names the version and its deletion; undeleted, it reads again.
    kms.kv_delete("app", "db/creds", &[]).unwrap();
    let gone = kms.kv_read("app", "db/creds", None).unwrap().unwrap_err();
    assert_eq!(gone.version, 2);
    assert!(gone.deleted_ms.is_some() && !gone.destroyed);
    kms.kv_undelete("app", "db/creds", &[2]).unwrap();
    assert!(kms.kv_read("app", "db/creds", None).unwrap().is_ok());
    // Destroyed: for good, and undelete does not bring it back.
    kms.kv_destroy("app", "db/creds", &[1]).unwrap();
    kms.kv_undelete("app", "db/creds", &[1]).unwrap();
    assert!(
        kms.kv_read("app", "db/creds", Some(1))
            .unwrap()
            .unwrap_err()
            .destroyed
    );
    let md = kms.kv_metadata("app", "db/creds").unwrap();
    assert_eq!((md.current_version, md.oldest_version), (2, 1));

    // Versions kept: the oldest go first.
    kms.kv_update_metadata(
        "app",
        "db/creds",
        &MetadataUpdate {
            max_versions: Some(2),
            cas_required: Some(true),
            ..MetadataUpdate::default()
        },
    )
    .unwrap();
    assert_eq!(
        code(kms.kv_write("app", "db/creds", b"{}", None)),
        ErrorCode::ValidationError
    );
    kms.kv_write("app", "db/creds", br#"{"password":"three"}"#, Some(2))
        .unwrap();
    let md = kms.kv_metadata("app", "db/creds").unwrap();
    assert_eq!(
        md.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(
        kms.kv_read("app", "db/creds", Some(1)).unwrap_err().code(),
        ErrorCode::NotFound
    );

    // Listing: names under a prefix, folders once with a slash; nothing there is NotFound.
    kms.kv_write("app", "db/other", b"{}", None).unwrap();
    kms.kv_write("app", "db/deep/x", b"{}", None).unwrap();
    kms.kv_write("app", "top", b"{}", None).unwrap();
    assert_eq!(
        kms.kv_list("app", "db").unwrap(),
        ["creds", "deep/", "other"]
    );
    assert_eq!(kms.kv_list("app", "").unwrap(), ["db/", "top"]);
    assert_eq!(
        kms.kv_list("app", "nothing").unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        kms.kv_list("other-mount", "").unwrap_err().code(),
        ErrorCode::NotFound
    );

    // Deleting everything leaves nothing.
    kms.kv_delete_all("app", "db/creds").unwrap();
    assert_eq!(
        kms.kv_read("app", "db/creds", None).unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        kms.kv_delete_all("app", "db/creds").unwrap_err().code(),
        ErrorCode::NotFound
    );
    for bad in ["", "/a", "a/", "a//b", "a/../b", "a/./b", "a*", "a\nb"] {
        assert_eq!(
            code(kms.kv_write("app", bad, b"{}", None)),
            ErrorCode::ValidationError,
            "{bad:?}"
        );
    }
}

#[test]
fn values_are_sealed_bound_to_their_place_and_stop_with_the_key() {
    let h = harness();
    let kms = &h.kms;
    kms.kv_write("mariadb", "1", br#"{"data":"00112233"}"#, None)
        .unwrap();
    kms.kv_write("mariadb", "2", br#"{"data":"44556677"}"#, None)
        .unwrap();
    // The store holds ciphertexts only.
    let raw = transact(kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.get_meta("kv:mariadb", "1")
    })
    .unwrap()
    .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("00112233"));
    // A value moved to another path (or version) does not open there.
    let other = transact(kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.get_meta("kv:mariadb", "2")
    })
    .unwrap()
    .unwrap();
    transact(kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.put_meta("kv:mariadb", "1", &other)
    })
    .unwrap();
    assert_eq!(
        kms.kv_read("mariadb", "1", None).unwrap_err().code(),
        ErrorCode::InvalidCiphertext
    );
    transact(kms.store_handle().as_ref(), |tx: &mut dyn Tx| {
        tx.put_meta("kv:mariadb", "1", &raw)
    })
    .unwrap();
    assert!(kms.kv_read("mariadb", "1", None).unwrap().is_ok());
    // The mount's key is an ordinary key: disabling it stops every read, enabling it restores them.
    let key = kms.describe_key(&mount_key_alias("mariadb")).unwrap();
    assert_eq!(key.spec, KeySpec::Aes256);
    kms.disable_key(&key.key_id).unwrap();
    assert_eq!(
        kms.kv_read("mariadb", "1", None).unwrap_err().code(),
        ErrorCode::KeyDisabled
    );
    kms.enable_key(&key.key_id).unwrap();
    assert!(kms.kv_read("mariadb", "1", None).unwrap().is_ok());
    // Sealed: nothing reads, nothing writes.
    kms.seal().unwrap();
    assert_eq!(
        kms.kv_read("mariadb", "1", None).unwrap_err().code(),
        ErrorCode::Sealed
    );
    assert_eq!(
        kms.kv_write("mariadb", "1", b"{}", None)
            .unwrap_err()
            .code(),
        ErrorCode::Sealed
    );
    // After a restart the values are there, as written.
    let again = h.restart();
    assert_eq!(
        value(&again.kv_read("mariadb", "2", None).unwrap()),
        r#"{"data":"44556677"}"#
    );
}

#[test]
fn secrets_travel_in_backups_and_open_after_a_restore() {
    let h = harness();
    let kms = &h.kms;
    kms.kv_write("mariadb", "1", br#"{"data":"8899aabb"}"#, None)
        .unwrap();
    kms.kv_write("mariadb", "1", br#"{"data":"ccddeeff"}"#, Some(1))
        .unwrap();
    let backup = kms.backup().unwrap();
    assert!(
        !backup.windows(8).any(|w| w == b"ccddeeff"),
        "sealed in the backup"
    );
    // Disaster: a new machine, an empty database, the shares.
    let dir = tempfile::tempdir().unwrap();
    let fresh = common::open_at(&dir.path().join("new.db"), &h.clock);
    fresh
        .restore(&backup, Some(&h.shares[1..]), false, &[])
        .unwrap();
    assert_eq!(
        value(&fresh.kv_read("mariadb", "1", None).unwrap()),
        r#"{"data":"ccddeeff"}"#
    );
    assert_eq!(
        value(&fresh.kv_read("mariadb", "1", Some(1)).unwrap()),
        r#"{"data":"8899aabb"}"#
    );
    assert_eq!(
        fresh.kv_metadata("mariadb", "1").unwrap().current_version,
        2
    );
}
