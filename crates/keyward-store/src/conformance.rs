//! The conformance suite every store backend runs, and a fault-injecting wrapper for crash tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{
    transact, AuditQuery, AuditRow, KeyRecord, Store, StoreError, StoreResult, Tx, VersionRecord,
};

/// Declares one `#[test]` per conformance check. `$stores` is evaluated afresh for each test and yields the
/// stores to run it on (anything iterable over values that deref to a `Store`), so a backend cannot forget a
/// check that is added here later.
#[macro_export]
macro_rules! store_conformance_tests {
    ($stores:expr) => {
        $crate::store_conformance_tests!(@each $stores;
            keys_round_trip,
            versions_round_trip,
            aliases_round_trip,
            meta_round_trip,
            uncommitted_transactions_roll_back,
            due_keys_selects_by_time_and_state,
            audit_appends_and_queries,
        );
    };
    (@each $stores:expr; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                for store in $stores {
                    $crate::conformance::$name(&*store);
                }
            }
        )+
    };
}

pub fn key(id: &str) -> KeyRecord {
    KeyRecord {
        key_id: id.to_string(),
        revision: 1,
        spec: "SYMMETRIC_DEFAULT".into(),
        usage: "ENCRYPT_DECRYPT".into(),
        state: "Enabled".into(),
        description: "test".into(),
        tags: BTreeMap::from([("team".to_string(), "payments".to_string())]),
        created_at: 1_700_000_000,
        primary_version: 1,
        min_decryption_version: 1,
        rotation_period_days: None,
        next_rotation_at: None,
        last_rotated_at: None,
        deletion_date: None,
        origin: "KEYWARD".into(),
        exportable: false,
        quorum_approvals: None,
        allow_legacy: false,
        pending_import: false,
        blind_index_bits: None,
    }
}

pub fn version(id: &str, n: u32) -> VersionRecord {
    VersionRecord {
        key_id: id.to_string(),
        version: n,
        state: "Enabled".into(),
        created_at: 1_700_000_000 + n as i64,
        destroyed_at: None,
        material: Some(vec![n as u8; 60]),
        root_generation: 1,
    }
}

fn tx<T>(store: &dyn Store, f: impl FnOnce(&mut dyn Tx) -> StoreResult<T>) -> T {
    transact(store, f).unwrap()
}

pub fn keys_round_trip(store: &dyn Store) {
    assert_eq!(tx(store, |t| t.get_key("k-absent")), None);
    for i in 0..25 {
        tx(store, |t| t.put_key(&key(&format!("k-{i:03}"))));
    }
    let mut k = key("k-007");
    k.state = "Disabled".into();
    k.revision = 2;
    k.tags.insert("env".into(), "prod".into());
    tx(store, |t| t.put_key(&k));
    assert_eq!(tx(store, |t| t.get_key("k-007")), Some(k));
    // Paging is ordered by id and exhaustive.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = tx(store, |t| t.list_keys(after.as_deref(), 10));
        if page.is_empty() {
            break;
        }
        after = page.last().map(|k| k.key_id.clone());
        seen.extend(page.into_iter().map(|k| k.key_id));
    }
    let expected: Vec<String> = (0..25).map(|i| format!("k-{i:03}")).collect();
    assert_eq!(seen, expected);
}

pub fn versions_round_trip(store: &dyn Store) {
    tx(store, |t| t.put_key(&key("kv")));
    for n in [2, 1, 3] {
        tx(store, |t| t.put_version(&version("kv", n)));
    }
    let vs = tx(store, |t| t.versions("kv"));
    assert_eq!(
        vs.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(vs[1], version("kv", 2));
    let mut destroyed = version("kv", 2);
    destroyed.state = "Destroyed".into();
    destroyed.material = None;
    destroyed.destroyed_at = Some(1_800_000_000);
    tx(store, |t| t.put_version(&destroyed));
    assert_eq!(tx(store, |t| t.versions("kv"))[1], destroyed);
    let with: Vec<(String, u32)> = tx(store, |t| t.versions_with_material())
        .into_iter()
        .map(|v| (v.key_id, v.version))
        .collect();
    assert!(with.contains(&("kv".into(), 1)) && with.contains(&("kv".into(), 3)));
    assert!(
        !with.contains(&("kv".into(), 2)),
        "destroyed material still listed"
    );
    assert!(tx(store, |t| t.versions("nope")).is_empty());
}

pub fn aliases_round_trip(store: &dyn Store) {
    tx(store, |t| t.put_key(&key("ka")));
    tx(store, |t| t.put_alias("alias/b", "ka"));
    tx(store, |t| t.put_alias("alias/a", "ka"));
    assert_eq!(tx(store, |t| t.get_alias("alias/a")), Some("ka".into()));
    assert_eq!(
        tx(store, |t| t.aliases_of("ka")),
        vec!["alias/a".to_string(), "alias/b".to_string()]
    );
    tx(store, |t| t.put_alias("alias/a", "other"));
    assert_eq!(tx(store, |t| t.get_alias("alias/a")), Some("other".into()));
    assert_eq!(
        tx(store, |t| t.list_aliases(Some("alias/a"), 10)),
        vec![("alias/b".into(), "ka".into())]
    );
    assert!(tx(store, |t| t.delete_alias("alias/b")));
    assert!(!tx(store, |t| t.delete_alias("alias/b")));
    assert_eq!(tx(store, |t| t.get_alias("alias/b")), None);
}

pub fn meta_round_trip(store: &dyn Store) {
    tx(store, |t| t.put_meta("sys", "b", b"2"));
    tx(store, |t| t.put_meta("sys", "a", b"1"));
    tx(store, |t| t.put_meta("other", "a", b"x"));
    assert_eq!(tx(store, |t| t.get_meta("sys", "a")), Some(b"1".to_vec()));
    assert_eq!(
        tx(store, |t| t.list_meta("sys")),
        vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec())
        ]
    );
    tx(store, |t| t.put_meta("sys", "a", b"3"));
    assert_eq!(tx(store, |t| t.get_meta("sys", "a")), Some(b"3".to_vec()));
    assert!(tx(store, |t| t.delete_meta("sys", "a")));
    assert_eq!(tx(store, |t| t.get_meta("sys", "a")), None);
    assert_eq!(tx(store, |t| t.get_meta("other", "a")), Some(b"x".to_vec()));
    assert_eq!(
        tx(store, |t| t.meta_namespaces()),
        vec!["other".to_string(), "sys".to_string()]
    );
    assert!(tx(store, |t| t.delete_meta("other", "a")));
    assert_eq!(tx(store, |t| t.meta_namespaces()), vec!["sys".to_string()]);
    // Byte order, which linguistic collations do not follow (they weigh case and punctuation later).
    for name in ["ab", "a_c", "B", "a-b", "a"] {
        tx(store, |t| t.put_meta("order", name, b""));
    }
    let names: Vec<String> = tx(store, |t| t.list_meta("order"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["B", "a", "a-b", "a_c", "ab"]);
}

pub fn uncommitted_transactions_roll_back(store: &dyn Store) {
    {
        let mut t = store.begin().unwrap();
        t.put_key(&key("rolled-back")).unwrap();
        t.put_version(&version("rolled-back", 1)).unwrap();
        t.put_alias("alias/rolled-back", "rolled-back").unwrap();
        // Dropped without commit.
    }
    assert_eq!(tx(store, |t| t.get_key("rolled-back")), None);
    assert!(tx(store, |t| t.versions("rolled-back")).is_empty());
    assert_eq!(tx(store, |t| t.get_alias("alias/rolled-back")), None);
    // An error inside `transact` rolls back too.
    let r: Result<(), StoreError> = transact(store, |t| {
        t.put_key(&key("failed"))?;
        Err(StoreError::Unavailable("injected".into()))
    });
    assert!(r.is_err());
    assert_eq!(tx(store, |t| t.get_key("failed")), None);
}

pub fn due_keys_selects_by_time_and_state(store: &dyn Store) {
    let mut rot = key("due-rotate");
    rot.next_rotation_at = Some(100);
    let mut later = key("due-later");
    later.next_rotation_at = Some(300);
    let mut disabled = key("due-disabled");
    disabled.state = "Disabled".into();
    disabled.next_rotation_at = Some(100);
    let mut del = key("due-delete");
    del.state = "PendingDeletion".into();
    del.deletion_date = Some(150);
    for k in [&rot, &later, &disabled, &del] {
        tx(store, |t| t.put_key(k));
    }
    let mut due = tx(store, |t| t.due_keys(200));
    due.sort();
    assert_eq!(
        due,
        vec!["due-delete".to_string(), "due-rotate".to_string()]
    );
    assert!(tx(store, |t| t.due_keys(50)).is_empty());
}

fn audit_row(
    seq: u64,
    principal: &str,
    action: &str,
    key: Option<&str>,
    outcome: &str,
) -> AuditRow {
    AuditRow {
        seq,
        time_ms: 1_700_000_000_000 + seq as i64 * 1000,
        principal: principal.into(),
        action: action.into(),
        key_id: key.map(str::to_string),
        outcome: outcome.into(),
        record: format!("{{\"seq\":{seq}}}"),
    }
}

pub fn audit_appends_and_queries(store: &dyn Store) {
    assert_eq!(tx(store, |t| t.audit_tail()), None);
    let rows = [
        audit_row(1, "alice", "kms:Encrypt", Some("k1"), "allow"),
        audit_row(2, "bob", "kms:Decrypt", Some("k1"), "deny"),
        audit_row(3, "alice", "kms:CreateKey", None, "allow"),
        audit_row(4, "alice", "kms:Encrypt", Some("k2"), "error"),
    ];
    tx(store, |t| t.append_audit(&rows[..2]));
    tx(store, |t| t.append_audit(&rows[2..]));
    assert_eq!(tx(store, |t| t.audit_tail()), Some(rows[3].clone()));
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut query = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        f(&mut query);
        tx(store, |t| t.query_audit(&query))
            .into_iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(&|_| {}), vec![1, 2, 3, 4]);
    assert_eq!(q(&|x| x.principal = Some("alice".into())), vec![1, 3, 4]);
    assert_eq!(q(&|x| x.key_id = Some("k1".into())), vec![1, 2]);
    assert_eq!(q(&|x| x.action = Some("kms:Encrypt".into())), vec![1, 4]);
    assert_eq!(q(&|x| x.outcome = Some("deny".into())), vec![2]);
    assert_eq!(q(&|x| x.after_seq = 2), vec![3, 4]);
    assert_eq!(q(&|x| x.limit = 2), vec![1, 2]);
    assert_eq!(
        q(&|x| {
            x.since_ms = Some(1_700_000_002_000);
            x.until_ms = Some(1_700_000_004_000)
        }),
        vec![2, 3]
    );
    // Sequence numbers are unique: a duplicate append fails and changes nothing.
    let dup = transact(store, |t| {
        t.append_audit(&[audit_row(4, "mallory", "kms:Encrypt", None, "allow")])
    });
    assert!(dup.is_err());
    assert_eq!(tx(store, |t| t.audit_tail()), Some(rows[3].clone()));
    // A re-encryption concerns its source keys as well as its destination; a key id that merely appears
    // elsewhere in a record does not make the record the key's.
    let mut reencrypt = audit_row(5, "alice", "kms:ReEncrypt", Some("k3"), "allow");
    reencrypt.record = r#"{"seq":5,"key_id":"k3","source_key_ids":["k1","k2"]}"#.into();
    let mut mention = audit_row(6, "k2", "kms:Encrypt", Some("k4"), "allow");
    mention.record =
        r#"{"seq":6,"principal":"k2","key_id":"k4","source_key_ids_note":["k2"]}"#.into();
    tx(store, |t| t.append_audit(&[reencrypt, mention.clone()]));
    assert_eq!(q(&|x| x.key_id = Some("k1".into())), vec![1, 2, 5]);
    assert_eq!(q(&|x| x.key_id = Some("k2".into())), vec![4, 5]);
    assert_eq!(q(&|x| x.key_id = Some("k3".into())), vec![5]);
    assert_eq!(
        q(&|x| {
            x.key_id = Some("k1".into());
            x.action = Some("kms:ReEncrypt".into())
        }),
        vec![5]
    );
    assert_eq!(q(&|x| x.key_id = Some("k".into())), Vec::<u64>::new());
    assert_eq!(tx(store, |t| t.audit_tail()), Some(mention.clone()));
    // Records name a resource other than a key exactly; a mention elsewhere does not count.
    let mut deleted = audit_row(7, "root", "kms:DeleteIdentity", None, "allow");
    deleted.record = r#"{"seq":7,"resource":"identity/alice"}"#.into();
    let mut other = audit_row(8, "identity/alice", "kms:DeleteIdentity", None, "allow");
    other.record = r#"{"seq":8,"principal":"identity/alice","resource":"identity/alice2"}"#.into();
    tx(store, |t| t.append_audit(&[deleted, other]));
    assert_eq!(q(&|x| x.resource = Some("identity/alice".into())), vec![7]);
    assert_eq!(q(&|x| x.resource = Some("identity/alice2".into())), vec![8]);
    assert_eq!(
        q(&|x| x.resource = Some("identity".into())),
        Vec::<u64>::new()
    );
    // A request's records by its id, exactly: a request held for approval has two, and an id that
    // appears elsewhere in a record (an approval's, in its resource) does not match.
    let mut first = audit_row(9, "ops", "kms:ScheduleKeyDeletion", Some("k5"), "allow");
    first.record = r#"{"seq":9,"request_id":"req-1"}"#.into();
    let mut held = audit_row(10, "ops", "kms:ScheduleKeyDeletion", Some("k5"), "allow");
    held.record = r#"{"seq":10,"request_id":"req-1","resource":"approval/req-12"}"#.into();
    let mut other = audit_row(11, "ops", "kms:Approve", Some("k5"), "allow");
    other.record = r#"{"seq":11,"request_id":"req-12"}"#.into();
    tx(store, |t| t.append_audit(&[first, held, other]));
    assert_eq!(q(&|x| x.request_id = Some("req-1".into())), vec![9, 10]);
    assert_eq!(q(&|x| x.request_id = Some("req-12".into())), vec![11]);
    assert_eq!(
        q(&|x| {
            x.request_id = Some("req-1".into());
            x.resource = Some("approval/req-12".into())
        }),
        vec![10]
    );
    assert_eq!(q(&|x| x.request_id = Some("req".into())), Vec::<u64>::new());
    let _ = mention;

    // Retention deletes the oldest records, through a sequence number, and nothing after it; the tail and
    // later appends are untouched, and pruning again below the mark deletes nothing.
    let all = || q(&|_| {});
    assert_eq!(tx(store, |t| t.prune_audit(3)), 3);
    assert_eq!(all(), vec![4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(tx(store, |t| t.prune_audit(3)), 0);
    assert_eq!(tx(store, |t| t.audit_tail()).map(|r| r.seq), Some(11));
    tx(store, |t| {
        t.append_audit(&[audit_row(12, "alice", "kms:Encrypt", Some("k1"), "allow")])
    });
    assert_eq!(tx(store, |t| t.prune_audit(5)), 2);
    assert_eq!(all(), vec![6, 7, 8, 9, 10, 11, 12]);
}

/// Wraps a store and fails the n-th write from the moment it is armed, as a crash or a full disk would.
pub struct FailingStore {
    inner: Arc<dyn Store>,
    countdown: Arc<AtomicUsize>,
    unreadable: Arc<std::sync::Mutex<Option<String>>>,
}

impl FailingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        FailingStore {
            inner,
            countdown: Arc::new(AtomicUsize::new(0)),
            unreadable: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Fails every read of the meta namespace `ns` from now on, as a lost connection or a corrupt page
    /// would; `None` makes it readable again.
    pub fn fail_reads_of(&self, ns: Option<&str>) {
        if let Ok(mut u) = self.unreadable.lock() {
            *u = ns.map(str::to_string);
        }
    }

    /// Fails the `n`-th write (1-based) counted from now, commits included; 0 disarms.
    pub fn fail_at(&self, n: usize) {
        self.countdown.store(n, Ordering::SeqCst);
    }

    /// True once the armed failure has fired.
    pub fn fired(&self) -> bool {
        self.countdown.load(Ordering::SeqCst) == usize::MAX
    }
}

struct FailingTx<'a> {
    inner: Box<dyn Tx + 'a>,
    countdown: Arc<AtomicUsize>,
    unreadable: Arc<std::sync::Mutex<Option<String>>>,
    wrote: bool,
}

impl FailingTx<'_> {
    fn read(&self, ns: &str) -> StoreResult<()> {
        match self.unreadable.lock() {
            Ok(u) if u.as_deref() == Some(ns) => {
                Err(StoreError::Unavailable("injected read failure".into()))
            }
            _ => Ok(()),
        }
    }

    fn write(&mut self) -> StoreResult<()> {
        self.wrote = true;
        let n = self.countdown.load(Ordering::SeqCst);
        match n {
            0 | usize::MAX => Ok(()),
            1 => {
                self.countdown.store(usize::MAX, Ordering::SeqCst);
                Err(StoreError::Unavailable("injected write failure".into()))
            }
            _ => {
                self.countdown.store(n - 1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

impl Tx for FailingTx<'_> {
    fn get_key(&mut self, key_id: &str) -> StoreResult<Option<KeyRecord>> {
        self.inner.get_key(key_id)
    }
    fn put_key(&mut self, key: &KeyRecord) -> StoreResult<()> {
        self.write()?;
        self.inner.put_key(key)
    }
    fn list_keys(&mut self, after: Option<&str>, limit: usize) -> StoreResult<Vec<KeyRecord>> {
        self.inner.list_keys(after, limit)
    }
    fn due_keys(&mut self, now: i64) -> StoreResult<Vec<String>> {
        self.inner.due_keys(now)
    }
    fn versions(&mut self, key_id: &str) -> StoreResult<Vec<VersionRecord>> {
        self.inner.versions(key_id)
    }
    fn put_version(&mut self, version: &VersionRecord) -> StoreResult<()> {
        self.write()?;
        self.inner.put_version(version)
    }
    fn versions_with_material(&mut self) -> StoreResult<Vec<VersionRecord>> {
        self.inner.versions_with_material()
    }
    fn get_alias(&mut self, name: &str) -> StoreResult<Option<String>> {
        self.inner.get_alias(name)
    }
    fn put_alias(&mut self, name: &str, key_id: &str) -> StoreResult<()> {
        self.write()?;
        self.inner.put_alias(name, key_id)
    }
    fn delete_alias(&mut self, name: &str) -> StoreResult<bool> {
        self.write()?;
        self.inner.delete_alias(name)
    }
    fn list_aliases(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        self.inner.list_aliases(after, limit)
    }
    fn aliases_of(&mut self, key_id: &str) -> StoreResult<Vec<String>> {
        self.inner.aliases_of(key_id)
    }
    fn get_meta(&mut self, ns: &str, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(ns)?;
        self.inner.get_meta(ns, name)
    }
    fn put_meta(&mut self, ns: &str, name: &str, value: &[u8]) -> StoreResult<()> {
        self.write()?;
        self.inner.put_meta(ns, name, value)
    }
    fn delete_meta(&mut self, ns: &str, name: &str) -> StoreResult<bool> {
        self.write()?;
        self.inner.delete_meta(ns, name)
    }
    fn list_meta(&mut self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.read(ns)?;
        self.inner.list_meta(ns)
    }
    fn meta_namespaces(&mut self) -> StoreResult<Vec<String>> {
        self.inner.meta_namespaces()
    }
    fn append_audit(&mut self, rows: &[AuditRow]) -> StoreResult<()> {
        self.write()?;
        self.inner.append_audit(rows)
    }
    fn audit_tail(&mut self) -> StoreResult<Option<AuditRow>> {
        self.inner.audit_tail()
    }
    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        self.inner.query_audit(query)
    }
    fn prune_audit(&mut self, through_seq: u64) -> StoreResult<u64> {
        self.write()?;
        self.inner.prune_audit(through_seq)
    }
    fn commit(mut self: Box<Self>) -> StoreResult<()> {
        // Committing a read-only transaction writes nothing and cannot lose anything.
        if self.wrote {
            self.write()?;
        }
        self.inner.commit()
    }
}

impl Store for FailingStore {
    fn backend_name(&self) -> &'static str {
        "failing"
    }
    fn begin(&self) -> StoreResult<Box<dyn Tx + '_>> {
        Ok(Box::new(FailingTx {
            inner: self.inner.begin()?,
            countdown: self.countdown.clone(),
            unreadable: self.unreadable.clone(),
            wrote: false,
        }))
    }
}
