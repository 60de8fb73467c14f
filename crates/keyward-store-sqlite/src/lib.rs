//! The embedded default store: one SQLite file in the data directory.
//!
//! Durability settings favour never losing a key over speed: WAL journal with `synchronous=FULL`, so a
//! committed transaction survives power loss. Writers are serialised by `BEGIN IMMEDIATE`; the hot path of the
//! service never reads the store (keys are cached in memory), so one connection behind a mutex is enough.

use std::path::Path;
use std::sync::{Arc, Weak};

use keyward_store::{
    AuditQuery, AuditRow, KeyRecord, Store, StoreError, StoreResult, Tx, VersionRecord,
};
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{params, Connection, OptionalExtension};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE keys (
    key_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    next_rotation_at INTEGER,
    deletion_date INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX keys_due_rotation ON keys (next_rotation_at) WHERE next_rotation_at IS NOT NULL;
CREATE INDEX keys_due_deletion ON keys (deletion_date) WHERE deletion_date IS NOT NULL;
CREATE TABLE versions (
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    destroyed_at INTEGER,
    material BLOB,
    root_generation INTEGER NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE aliases (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL
);
CREATE INDEX aliases_by_key ON aliases (key_id);
CREATE TABLE meta (
    ns TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ns, name)
);
CREATE TABLE audit (
    -- No secondary indexes: every index is a random write on each append, which halves the
    -- audited request rate. Filtered queries scan in sequence order.
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
);
"#];

/// How often the background connection copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// WAL size (in frames, 4 KiB each by default) above which the log is restarted from the top.
const WAL_RESTART_FRAMES: i64 = 4096;

/// How long to leave the WAL alone after a RESTART found another process's reader on it: each attempt holds
/// up the writer for up to 10 ms, and the WAL grows meanwhile.
const RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// Frames left to copy below which the RESTART (which holds up the writer) may run.
const RESTART_REMAINDER_FRAMES: i64 = 256;

/// The background checkpointer: its own connection, and a weak handle on the store's.
struct Checkpointer {
    conn: Connection,
    writer: Weak<Mutex<Connection>>,
    /// After a RESTART found a reader still using the log (another process holding a snapshot), further
    /// attempts wait until then instead of holding up the writer every pass.
    restart_after: Option<std::time::Instant>,
}

impl Checkpointer {
    /// One checkpoint pass; `None` once the store is dropped.
    ///
    /// PASSIVE never blocks the writer, but under a steady stream of commits it never catches up with the
    /// last frame, so the WAL would never restart and would grow without bound (tens of MB per second of
    /// audited load), each commit then also extending the file and syncing its block map. Once the log is
    /// large, more PASSIVE passes shrink what is left to copy (each covers what arrived during the one
    /// before), then a RESTART runs while the store's connection is held (no transaction open, none can
    /// start): it copies only that small remainder, and the next commit writes from the top of the log
    /// again, into blocks that already exist. The writer waits for the remainder's copy and one database
    /// flush, not for the whole log, and at most 10 ms for readers of other processes.
    fn pass(&mut self) -> Option<()> {
        let (frames, mut copied) = self.checkpoint("PASSIVE").1;
        let due = self
            .restart_after
            .is_none_or(|t| std::time::Instant::now() >= t);
        if frames < WAL_RESTART_FRAMES || !due {
            return self.writer.upgrade().map(|_| ());
        }
        for _ in 0..3 {
            let (frames, now_copied) = self.checkpoint("PASSIVE").1;
            // What this pass had to copy: the frames committed during the previous one.
            let arrived = frames - copied;
            copied = now_copied;
            if arrived <= RESTART_REMAINDER_FRAMES {
                break;
            }
        }
        let writer = self.writer.upgrade()?;
        let _idle = writer.lock();
        let _ = self.conn.busy_timeout(std::time::Duration::from_millis(10));
        let (blocked, _) = self.checkpoint("RESTART");
        let _ = self
            .conn
            .busy_timeout(std::time::Duration::from_millis(100));
        self.restart_after = blocked.then(|| std::time::Instant::now() + RESTART_BACKOFF);
        Some(())
    }

    /// Runs a checkpoint: (whether it was blocked, (frames in the log, frames copied into the database)).
    fn checkpoint(&self, mode: &str) -> (bool, (i64, i64)) {
        self.conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((
                    r.get::<_, i64>(0)? != 0,
                    (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?),
                ))
            })
            .unwrap_or((true, (0, 0)))
    }
}

/// The SQLite store.
pub struct SqliteStore {
    /// Shared with the checkpoint thread (as a weak reference, so dropping the store stops it), which
    /// takes it to restart the WAL while no transaction is open.
    conn: Arc<Mutex<Connection>>,
}

fn unavailable(op: &str, e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite {op}: {e}"))
}

/// Creates a missing database file readable by its owner only, before SQLite would create it with `0644`:
/// it holds the audit log and every key's wrapped material and metadata, and may live outside the data
/// directory (whose `0700` would otherwise be all that protects it). SQLite gives its `-wal` and `-shm`
/// files the database file's permissions. An existing file is left as its owner set it.
fn create_private(path: &Path) -> StoreResult<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "sqlite open: cannot create {}: {e}",
            path.display()
        ))),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// Checkpoints run on a background connection: the writer never stalls copying the WAL into the
    /// database (a 40 MB checkpoint inside a commit is a 30 ms pause for every waiting request).
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        create_private(path)?;
        let conn = Connection::open(path).map_err(|e| unavailable("open", e))?;
        let store = Self::setup(conn)?;
        store
            .conn
            .lock()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| unavailable("wal_autocheckpoint", e))?;
        let conn = Connection::open(path).map_err(|e| unavailable("open", e))?;
        let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
        let mut checkpointer = Checkpointer {
            conn,
            writer: Arc::downgrade(&store.conn),
            restart_after: None,
        };
        std::thread::Builder::new()
            .name("keyward-sqlite-checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(CHECKPOINT_EVERY);
                if checkpointer.pass().is_none() {
                    break;
                }
            })
            .map_err(|_| StoreError::Unavailable("cannot start the checkpoint thread".into()))?;
        Ok(store)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> StoreResult<SqliteStore> {
        let conn = Connection::open_in_memory().map_err(|e| unavailable("open", e))?;
        Self::setup(conn)
    }

    fn setup(mut conn: Connection) -> StoreResult<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| unavailable("busy_timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| unavailable("journal_mode", e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| unavailable("synchronous", e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| unavailable("foreign_keys", e))?;

        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| unavailable("migrate", e))?;
        let current: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| unavailable("migrate", e))?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::Corrupt(format!(
                "database schema version {current} is newer than this build knows ({known})"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)
                .map_err(|e| unavailable("migrate", e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| unavailable("migrate", e))?;
        }
        tx.commit().map_err(|e| unavailable("migrate", e))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn begin(&self) -> StoreResult<Box<dyn Tx + '_>> {
        let conn = self.conn.lock();
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| unavailable("begin", e))?;
        Ok(Box::new(SqliteTx { conn, open: true }))
    }
}

struct SqliteTx<'a> {
    conn: MutexGuard<'a, Connection>,
    open: bool,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Nothing useful to do with a failed rollback: SQLite rolls back on its own when the
            // connection next begins or closes.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn decode_key(json: &str) -> StoreResult<KeyRecord> {
    serde_json::from_str(json)
        .map_err(|_| StoreError::Corrupt("a key record does not decode".into()))
}

fn version_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        key_id: r.get(0)?,
        version: r.get(1)?,
        state: r.get(2)?,
        created_at: r.get(3)?,
        destroyed_at: r.get(4)?,
        material: r.get(5)?,
        root_generation: r.get(6)?,
    })
}

const VERSION_COLUMNS: &str =
    "key_id, version, state, created_at, destroyed_at, material, root_generation";

impl SqliteTx<'_> {
    fn audit_rows(&mut self, q: &AuditQuery, last: bool) -> StoreResult<Vec<AuditRow>> {
        let mut sql = String::from(
            "SELECT seq, time_ms, principal, action, key_id, outcome, record FROM audit WHERE seq > ?1",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![(q.after_seq as i64).into()];
        let mut push = |cond: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        };
        if let Some(t) = q.since_ms {
            push("time_ms >=", t.into());
        }
        if let Some(t) = q.until_ms {
            push("time_ms <", t.into());
        }
        if let Some(p) = &q.principal {
            push("principal =", p.clone().into());
        }
        if let Some(a) = &q.action {
            push("action =", a.clone().into());
        }
        if let Some(o) = &q.outcome {
            push("outcome =", o.clone().into());
        }
        // Fields with no column of their own: matched in the record, exactly.
        for (field, value) in [("resource", &q.resource), ("request_id", &q.request_id)] {
            if let Some(v) = value {
                args.push(v.clone().into());
                let n = args.len();
                sql.push_str(&format!(
                    " AND instr(record, ?{n}) > 0 AND json_extract(record, '$.{field}') = ?{n}"
                ));
            }
        }
        if let Some(k) = &q.key_id {
            // The substring test spares parsing the JSON of records that cannot match.
            args.push(k.clone().into());
            let n = args.len();
            sql.push_str(&format!(
                " AND (key_id = ?{n} OR (instr(record, ?{n}) > 0 AND EXISTS \
                 (SELECT 1 FROM json_each(record, '$.source_key_ids') WHERE value = ?{n})))"
            ));
        }
        sql.push_str(if last {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq"
        });
        sql.push_str(&format!(" LIMIT {}", q.limit.min(100_000)));
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| unavailable("query_audit", e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(AuditRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    time_ms: r.get(1)?,
                    principal: r.get(2)?,
                    action: r.get(3)?,
                    key_id: r.get(4)?,
                    outcome: r.get(5)?,
                    record: r.get(6)?,
                })
            })
            .map_err(|e| unavailable("query_audit", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("query_audit", e))
    }
}

impl Tx for SqliteTx<'_> {
    fn get_key(&mut self, key_id: &str) -> StoreResult<Option<KeyRecord>> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT data FROM keys WHERE key_id = ?1", [key_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| unavailable("get_key", e))?;
        json.map(|j| decode_key(&j)).transpose()
    }

    fn put_key(&mut self, key: &KeyRecord) -> StoreResult<()> {
        let json =
            serde_json::to_string(key).map_err(|_| StoreError::Corrupt("key encode".into()))?;
        self.conn
            .execute(
                "INSERT INTO keys (key_id, state, next_rotation_at, deletion_date, data) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key_id) DO UPDATE SET state = ?2, next_rotation_at = ?3, deletion_date = ?4, data = ?5",
                params![key.key_id, key.state, key.next_rotation_at, key.deletion_date, json],
            )
            .map_err(|e| unavailable("put_key", e))?;
        Ok(())
    }

    fn list_keys(&mut self, after: Option<&str>, limit: usize) -> StoreResult<Vec<KeyRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM keys WHERE key_id > ?1 ORDER BY key_id LIMIT ?2")
            .map_err(|e| unavailable("list_keys", e))?;
        let rows = stmt
            .query_map(params![after.unwrap_or(""), limit as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| unavailable("list_keys", e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode_key(&row.map_err(|e| unavailable("list_keys", e))?)?);
        }
        Ok(out)
    }

    fn due_keys(&mut self, now: i64) -> StoreResult<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key_id FROM keys WHERE (state = 'Enabled' AND next_rotation_at <= ?1)
                 OR (state = 'PendingDeletion' AND deletion_date <= ?1) ORDER BY key_id",
            )
            .map_err(|e| unavailable("due_keys", e))?;
        let rows = stmt
            .query_map([now], |r| r.get(0))
            .map_err(|e| unavailable("due_keys", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("due_keys", e))
    }

    fn versions(&mut self, key_id: &str) -> StoreResult<Vec<VersionRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE key_id = ?1 ORDER BY version"
            ))
            .map_err(|e| unavailable("versions", e))?;
        let rows = stmt
            .query_map([key_id], version_from_row)
            .map_err(|e| unavailable("versions", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("versions", e))
    }

    fn put_version(&mut self, v: &VersionRecord) -> StoreResult<()> {
        self.conn
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![v.key_id, v.version, v.state, v.created_at, v.destroyed_at, v.material, v.root_generation],
            )
            .map_err(|e| unavailable("put_version", e))?;
        Ok(())
    }

    fn versions_with_material(&mut self) -> StoreResult<Vec<VersionRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE material IS NOT NULL ORDER BY key_id, version"
            ))
            .map_err(|e| unavailable("versions_with_material", e))?;
        let rows = stmt
            .query_map([], version_from_row)
            .map_err(|e| unavailable("versions_with_material", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("versions_with_material", e))
    }

    fn get_alias(&mut self, name: &str) -> StoreResult<Option<String>> {
        self.conn
            .query_row("SELECT key_id FROM aliases WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| unavailable("get_alias", e))
    }

    fn put_alias(&mut self, name: &str, key_id: &str) -> StoreResult<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO aliases (name, key_id) VALUES (?1, ?2)",
                [name, key_id],
            )
            .map_err(|e| unavailable("put_alias", e))?;
        Ok(())
    }

    fn delete_alias(&mut self, name: &str) -> StoreResult<bool> {
        let n = self
            .conn
            .execute("DELETE FROM aliases WHERE name = ?1", [name])
            .map_err(|e| unavailable("delete_alias", e))?;
        Ok(n > 0)
    }

    fn list_aliases(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, key_id FROM aliases WHERE name > ?1 ORDER BY name LIMIT ?2",
            )
            .map_err(|e| unavailable("list_aliases", e))?;
        let rows = stmt
            .query_map(params![after.unwrap_or(""), limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| unavailable("list_aliases", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("list_aliases", e))
    }

    fn aliases_of(&mut self, key_id: &str) -> StoreResult<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM aliases WHERE key_id = ?1 ORDER BY name")
            .map_err(|e| unavailable("aliases_of", e))?;
        let rows = stmt
            .query_map([key_id], |r| r.get(0))
            .map_err(|e| unavailable("aliases_of", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("aliases_of", e))
    }

    fn get_meta(&mut self, ns: &str, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE ns = ?1 AND name = ?2",
                [ns, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| unavailable("get_meta", e))
    }

    fn put_meta(&mut self, ns: &str, name: &str, value: &[u8]) -> StoreResult<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (ns, name, value) VALUES (?1, ?2, ?3)",
                params![ns, name, value],
            )
            .map_err(|e| unavailable("put_meta", e))?;
        Ok(())
    }

    fn delete_meta(&mut self, ns: &str, name: &str) -> StoreResult<bool> {
        let n = self
            .conn
            .execute("DELETE FROM meta WHERE ns = ?1 AND name = ?2", [ns, name])
            .map_err(|e| unavailable("delete_meta", e))?;
        Ok(n > 0)
    }

    fn list_meta(&mut self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, value FROM meta WHERE ns = ?1 ORDER BY name")
            .map_err(|e| unavailable("list_meta", e))?;
        let rows = stmt
            .query_map([ns], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| unavailable("list_meta", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("list_meta", e))
    }

    fn meta_namespaces(&mut self) -> StoreResult<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT ns FROM meta ORDER BY ns")
            .map_err(|e| unavailable("meta_namespaces", e))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| unavailable("meta_namespaces", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| unavailable("meta_namespaces", e))
    }

    fn append_audit(&mut self, rows: &[AuditRow]) -> StoreResult<()> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO audit (seq, time_ms, principal, action, key_id, outcome, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(|e| unavailable("append_audit", e))?;
        for r in rows {
            stmt.execute(params![
                r.seq as i64,
                r.time_ms,
                r.principal,
                r.action,
                r.key_id,
                r.outcome,
                r.record
            ])
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict("audit sequence number already used".into())
                }
                other => unavailable("append_audit", other),
            })?;
        }
        Ok(())
    }

    fn audit_tail(&mut self) -> StoreResult<Option<AuditRow>> {
        let q = AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        };
        self.audit_rows(&q, true).map(|mut v| v.pop())
    }

    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        self.audit_rows(query, false)
    }

    fn prune_audit(&mut self, through_seq: u64) -> StoreResult<u64> {
        let through = i64::try_from(through_seq)
            .map_err(|_| StoreError::Corrupt("audit sequence number out of range".into()))?;
        let n = self
            .conn
            .execute("DELETE FROM audit WHERE seq <= ?1", params![through])
            .map_err(|e| unavailable("prune_audit", e))?;
        Ok(n as u64)
    }

    fn commit(mut self: Box<Self>) -> StoreResult<()> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| unavailable("commit", e))?;
        self.open = false;
        Ok(())
    }
}
