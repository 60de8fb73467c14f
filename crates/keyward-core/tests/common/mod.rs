#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use keyward_core::{Kms, KmsConfig, ManualClock};
use keyward_hsm_soft::SoftHsm;
use keyward_store::Store;
use keyward_store_sqlite::SqliteStore;

pub const T0: i64 = 1_790_000_000;

pub struct Harness {
    pub kms: Kms,
    pub clock: ManualClock,
    pub shares: Vec<zeroize::Zeroizing<String>>,
    pub dir: tempfile::TempDir,
}

pub fn open_at(path: &Path, clock: &ManualClock) -> Kms {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path).unwrap());
    Kms::open(
        Arc::new(SoftHsm::new()),
        store,
        Arc::new(clock.clone()),
        KmsConfig::default(),
    )
    .unwrap()
}

/// A fresh engine on a SQLite file, initialised with 3 shares (threshold 2) and unsealed.
pub fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let kms = open_at(&dir.path().join("keyward.db"), &clock);
    let shares = kms.init_shamir(3, 2).unwrap();
    kms.unseal(&shares[0]).unwrap();
    let status = kms.unseal(&shares[2]).unwrap();
    assert!(!status.sealed);
    Harness {
        kms,
        clock,
        shares,
        dir,
    }
}

impl Harness {
    /// Another engine over the same database, already unsealed: stands in for `kms` where a test wants to
    /// replace its engine later (restarts).
    pub fn kms_clone(&self) -> Kms {
        self.restart()
    }

    /// Opens a second engine on the same database, as a restart would, and unseals it.
    pub fn restart(&self) -> Kms {
        let kms = open_at(&self.dir.path().join("keyward.db"), &self.clock);
        assert!(kms.status().sealed);
        kms.unseal(&self.shares[1]).unwrap();
        kms.unseal(&self.shares[0]).unwrap();
        assert!(!kms.is_sealed());
        kms
    }
}
