//! The store for several Keyward nodes sharing one PostgreSQL database.
//!
//! PostgreSQL brings what a cluster of key servers needs and Keyward should not reinvent: streaming replicas,
//! managed failover, point-in-time recovery. This crate keeps the same [`Store`] contract as the embedded
//! SQLite store and runs the same conformance suite.
//!
//! Every transaction takes one transaction-scoped advisory lock before it reads anything, so writers are
//! serialised across all nodes exactly as `BEGIN IMMEDIATE` serialises them in SQLite: a read-modify-write
//! (rotate a key, allocate an audit sequence number) can never interleave with another node's. The hot
//! request path reads keys from the in-memory cache, so the lock is only held by management operations,
//! cache misses and audit batches.
//!
//! The driver is the synchronous `postgres` crate. Its calls block, so when one happens on an async worker
//! thread it is moved out of the way with `block_in_place`, leaving the other tasks running.

use std::collections::HashMap;
use std::time::Duration;

use keyward_store::{
    AuditQuery, AuditRow, Change, ChangeFeed, KeyRecord, Store, StoreError, StoreResult, Tx,
    VersionRecord,
};
use parking_lot::{Condvar, Mutex};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE keyward_keys (
    key_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    next_rotation_at BIGINT,
    deletion_date BIGINT,
    data TEXT NOT NULL
);
CREATE INDEX keyward_keys_due_rotation ON keyward_keys (next_rotation_at) WHERE next_rotation_at IS NOT NULL;
CREATE INDEX keyward_keys_due_deletion ON keyward_keys (deletion_date) WHERE deletion_date IS NOT NULL;
CREATE TABLE keyward_versions (
    key_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    destroyed_at BIGINT,
    material BYTEA,
    root_generation BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE keyward_aliases (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL
);
CREATE INDEX keyward_aliases_by_key ON keyward_aliases (key_id);
CREATE TABLE keyward_meta (
    ns TEXT NOT NULL,
    name TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (ns, name)
);
CREATE TABLE keyward_audit (
    seq BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE keyward_changes (
    seq BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind TEXT NOT NULL,
    a TEXT NOT NULL,
    b TEXT NOT NULL
);
"#,
];

/// With the schema's hash, the advisory lock every transaction holds ("KWWR"): one per deployment, so
/// deployments in other schemas of the same database do not wait on each other.
const WRITE_LOCK: i32 = 0x4b57_5752;
/// With the schema's hash, the lock held for the session while migrations run ("KWMG").
const MIGRATE_LOCK: i32 = 0x4b57_4d47;
/// With the schema's hash, the lock held for the session by the node that runs background jobs ("KWJB").
const JOBS_LOCK: i32 = 0x4b57_4a42;
/// How long the change log keeps a record: a node whose feed falls further behind drops all its caches.
const CHANGE_RETENTION: &str = "1 hour";

/// Tunables of the connection pool.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The most connections one node opens. Transactions are serialised by the write lock, so a handful is
    /// enough; more only queue inside PostgreSQL.
    pub max_connections: usize,
    /// How long a transaction waits for a free connection before the store reports itself unavailable.
    pub acquire_timeout: Duration,
    /// The schema that holds Keyward's tables; `None` uses the role's default search path.
    pub schema: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            schema: None,
        }
    }
}

/// One pooled connection with its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// The PostgreSQL store.
pub struct PgStore {
    config: postgres::Config,
    options: PgOptions,
    idle: Mutex<Vec<Conn>>,
    /// The connection holding the jobs lock while this node leads.
    lease: Mutex<Option<Conn>>,
    /// Connections handed out or idle; guarded with `idle`'s condition variable.
    open: Mutex<usize>,
    freed: Condvar,
}

/// A database error in words that name the operation and PostgreSQL's message, never a parameter value.
fn unavailable(op: &str, e: &postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!(
            "postgres {op}: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        None if e.is_closed() => {
            StoreError::Unavailable(format!("postgres {op}: the connection is closed"))
        }
        None => StoreError::Unavailable(format!("postgres {op}: {e}")),
    }
}

/// Runs blocking database work without stalling an async runtime's worker thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn schema_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`) and brings its schema up to date.
    ///
    /// The URL may carry a password; it never appears in an error.
    pub fn open(url: &str, options: PgOptions) -> StoreResult<PgStore> {
        let config: postgres::Config = url
            .parse()
            .map_err(|_| StoreError::Unavailable("the PostgreSQL URL does not parse".into()))?;
        if let Some(s) = &options.schema {
            if !schema_name_ok(s) {
                return Err(StoreError::Unavailable(
                    "a schema name is lowercase letters, digits and '_'".into(),
                ));
            }
        }
        let store = PgStore {
            config,
            options: PgOptions {
                max_connections: options.max_connections.max(1),
                ..options
            },
            idle: Mutex::new(Vec::new()),
            lease: Mutex::new(None),
            open: Mutex::new(0),
            freed: Condvar::new(),
        };
        blocking(|| store.migrate())?;
        Ok(store)
    }

    /// `host:port` of the server (or the socket directory), for messages.
    fn server(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    fn connect(&self) -> StoreResult<Conn> {
        let mut client = self.config.connect(NoTls).map_err(|e| {
            // Which server could not be reached (never the URL: it may hold the password).
            let op = format!("connect to {}", self.server());
            unavailable(&op, &e)
        })?;
        if let Some(schema) = &self.options.schema {
            // The name was checked to be a plain identifier when the store was opened.
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                ))
                .map_err(|e| unavailable("schema", &e))?;
        }
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A connection from the pool, or a new one while under the limit.
    fn acquire(&self) -> StoreResult<Conn> {
        if let Some(c) = self.idle.lock().pop() {
            return Ok(c);
        }
        {
            let mut open = self.open.lock();
            let deadline = std::time::Instant::now() + self.options.acquire_timeout;
            while *open >= self.options.max_connections {
                if let Some(c) = self.idle.lock().pop() {
                    return Ok(c);
                }
                if self.freed.wait_until(&mut open, deadline).timed_out() {
                    if let Some(c) = self.idle.lock().pop() {
                        return Ok(c);
                    }
                    return Err(StoreError::Unavailable(
                        "postgres: no free connection in the pool".into(),
                    ));
                }
            }
            *open += 1;
        }
        self.connect().inspect_err(|_| self.forget())
    }

    fn release(&self, conn: Conn) {
        if conn.client.is_closed() {
            self.discard(conn);
            return;
        }
        self.idle.lock().push(conn);
        // Take the lock so a waiter between its idle check and its wait cannot miss the wake-up.
        let _open = self.open.lock();
        self.freed.notify_one();
    }

    /// Closes a connection that must not be reused. Closing talks to the server, so it happens off the
    /// async worker threads like every other call.
    fn discard(&self, conn: Conn) {
        blocking(|| drop(conn));
        self.forget();
    }

    fn forget(&self) {
        let mut open = self.open.lock();
        *open = open.saturating_sub(1);
        self.freed.notify_one();
    }

    /// Holds the jobs lock on a connection of its own, for as long as that session lives: a node that dies
    /// or loses its connection releases it, and another node's next [`Store::leads`] takes it over.
    fn lead(&self) -> StoreResult<bool> {
        let mut lease = self.lease.lock();
        if let Some(conn) = lease.as_mut() {
            if conn.client.simple_query("SELECT 1").is_ok() {
                return Ok(true);
            }
            drop(lease.take());
        }
        let mut conn = self.connect()?;
        let got: bool = conn
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                &[&JOBS_LOCK],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| unavailable("jobs lock", &e))?;
        if got {
            *lease = Some(conn);
        }
        Ok(got)
    }

    fn migrate(&self) -> StoreResult<()> {
        let mut conn = self.acquire()?;
        let result = (|| {
            let c = &mut conn.client;
            c.execute(
                "SELECT pg_advisory_lock($1, hashtext(current_schema()))",
                &[&MIGRATE_LOCK],
            )
            .map_err(|e| unavailable("migrate", &e))?;
            let outcome = (|| {
                let mut tx = c.transaction().map_err(|e| unavailable("migrate", &e))?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS keyward_schema (version BIGINT NOT NULL)",
                )
                .map_err(|e| unavailable("migrate", &e))?;
                let current: i64 = match tx
                    .query_opt("SELECT version FROM keyward_schema", &[])
                    .map_err(|e| unavailable("migrate", &e))?
                {
                    Some(row) => row.get(0),
                    None => {
                        tx.execute("INSERT INTO keyward_schema (version) VALUES (0)", &[])
                            .map_err(|e| unavailable("migrate", &e))?;
                        0
                    }
                };
                let known = MIGRATIONS.len() as i64;
                if current > known || current < 0 {
                    return Err(StoreError::Corrupt(format!(
                        "database schema version {current} is newer than this build knows ({known})"
                    )));
                }
                for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                    tx.batch_execute(sql)
                        .map_err(|e| unavailable("migrate", &e))?;
                    tx.execute("UPDATE keyward_schema SET version = $1", &[&(i as i64 + 1)])
                        .map_err(|e| unavailable("migrate", &e))?;
                }
                tx.commit().map_err(|e| unavailable("migrate", &e))
            })();
            let unlock = c
                .execute(
                    "SELECT pg_advisory_unlock($1, hashtext(current_schema()))",
                    &[&MIGRATE_LOCK],
                )
                .map_err(|e| unavailable("migrate", &e));
            outcome.and(unlock.map(|_| ()))
        })();
        self.release(conn);
        result
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        let lease = self.lease.lock().take();
        // Closing the lease's session frees the jobs lock once PostgreSQL has ended its backend. No
        // `pg_advisory_unlock_all()` first: a query waits for an answer, and a node stopping while its
        // database is unreachable would hang in it; a standby takes the lock at its next tick either way.
        blocking(|| drop((idle, lease)));
    }
}

impl Store for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn shared(&self) -> bool {
        true
    }

    fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        let feed = blocking(|| PgFeed::open(self))?;
        Ok(Some(Box::new(feed)))
    }

    fn leads(&self) -> StoreResult<bool> {
        blocking(|| self.lead())
    }

    fn housekeeping(&self) -> StoreResult<()> {
        let mut conn = blocking(|| self.acquire())?;
        let sql =
            format!("DELETE FROM keyward_changes WHERE at < now() - interval '{CHANGE_RETENTION}'");
        let out = blocking(|| conn.client.batch_execute(&sql))
            .map_err(|e| unavailable("housekeeping", &e));
        self.release(conn);
        out
    }

    fn begin(&self) -> StoreResult<Box<dyn Tx + '_>> {
        blocking(|| {
            let mut conn = self.acquire()?;
            let started = conn
                .client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL READ COMMITTED; \
                     SELECT pg_advisory_xact_lock({WRITE_LOCK}, hashtext(current_schema()))"
                ))
                .map_err(|e| unavailable("begin", &e));
            match started {
                Ok(()) => Ok(Box::new(PgTx {
                    store: self,
                    conn: Some(conn),
                    failed: false,
                    changes: Vec::new(),
                }) as Box<dyn Tx + '_>),
                Err(e) => {
                    // The connection may be half-way into a transaction: never reuse it.
                    self.discard(conn);
                    Err(e)
                }
            }
        })
    }
}

struct PgTx<'a> {
    store: &'a PgStore,
    /// `None` once committed.
    conn: Option<Conn>,
    /// A statement failed: PostgreSQL has aborted the transaction, and `COMMIT` would quietly roll it back.
    failed: bool,
    /// What this transaction changed, written to the change log with the commit: (kind, a, b).
    changes: Vec<(&'static str, String, String)>,
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let rolled_back = blocking(|| conn.client.batch_execute("ROLLBACK").is_ok());
            if rolled_back {
                self.store.release(conn);
            } else {
                self.store.discard(conn);
            }
        }
    }
}

fn decode_key(json: &str) -> StoreResult<KeyRecord> {
    serde_json::from_str(json)
        .map_err(|_| StoreError::Corrupt("a key record does not decode".into()))
}

fn u32_of(v: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range")))
}

fn version_from_row(r: &Row) -> StoreResult<VersionRecord> {
    let get = |e: postgres::Error| unavailable("versions", &e);
    Ok(VersionRecord {
        key_id: r.try_get(0).map_err(get)?,
        version: u32_of(r.try_get(1).map_err(get)?, "a version number")?,
        state: r.try_get(2).map_err(get)?,
        created_at: r.try_get(3).map_err(get)?,
        destroyed_at: r.try_get(4).map_err(get)?,
        material: r.try_get(5).map_err(get)?,
        root_generation: u32_of(r.try_get(6).map_err(get)?, "a root generation")?,
    })
}

fn audit_from_row(r: &Row) -> StoreResult<AuditRow> {
    let get = |e: postgres::Error| unavailable("query_audit", &e);
    let seq: i64 = r.try_get(0).map_err(get)?;
    Ok(AuditRow {
        seq: u64::try_from(seq)
            .map_err(|_| StoreError::Corrupt("an audit sequence number is negative".into()))?,
        time_ms: r.try_get(1).map_err(get)?,
        principal: r.try_get(2).map_err(get)?,
        action: r.try_get(3).map_err(get)?,
        key_id: r.try_get(4).map_err(get)?,
        outcome: r.try_get(5).map_err(get)?,
        record: r.try_get(6).map_err(get)?,
    })
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn ended() -> StoreError {
    StoreError::Unavailable("postgres: the transaction has ended".into())
}

impl PgTx<'_> {
    fn changed(&mut self, kind: &'static str, a: &str, b: &str) {
        if !self
            .changes
            .iter()
            .any(|(k, x, y)| *k == kind && x == a && y == b)
        {
            self.changes.push((kind, a.to_string(), b.to_string()));
        }
    }

    /// Writes the change log rows and wakes the other nodes' feeds; both take effect with the commit.
    fn publish_changes(&mut self) -> StoreResult<()> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.changes);
        let kinds: Vec<&str> = changes.iter().map(|c| c.0).collect();
        let a: Vec<&str> = changes.iter().map(|c| c.1.as_str()).collect();
        let b: Vec<&str> = changes.iter().map(|c| c.2.as_str()).collect();
        self.query(
            "changes",
            "INSERT INTO keyward_changes (kind, a, b)
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[])",
            &[&kinds, &a, &b],
        )?;
        self.query(
            "notify",
            "SELECT pg_notify('keyward_' || current_schema(), '')",
            &[],
        )?;
        Ok(())
    }

    /// Runs a fixed statement, prepared once per connection.
    fn query(
        &mut self,
        op: &str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        let conn = self.conn.as_mut().ok_or_else(ended)?;
        let out = blocking(|| {
            let stmt = match conn.statements.get(sql) {
                Some(s) => s.clone(),
                None => {
                    let s = conn.client.prepare(sql).map_err(|e| unavailable(op, &e))?;
                    conn.statements.insert(sql, s.clone());
                    s
                }
            };
            conn.client
                .query(&stmt, params)
                .map_err(|e| match e.code() {
                    Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
                        StoreError::Conflict(format!("postgres {op}: the record already exists"))
                    }
                    _ => unavailable(op, &e),
                })
        });
        self.failed |= out.is_err();
        out
    }

    fn audit_rows(&mut self, q: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        let after = i64::try_from(q.after_seq).unwrap_or(i64::MAX);
        let mut sql = String::from(
            "SELECT seq, time_ms, principal, action, key_id, outcome, record FROM keyward_audit WHERE seq > $1",
        );
        let mut args: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(after)];
        let mut push = |cond: &str, v: Box<dyn ToSql + Sync>| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ${}", args.len()));
        };
        if let Some(t) = q.since_ms {
            push("time_ms >=", Box::new(t));
        }
        if let Some(t) = q.until_ms {
            push("time_ms <", Box::new(t));
        }
        if let Some(p) = &q.principal {
            push("principal =", Box::new(p.clone()));
        }
        if let Some(a) = &q.action {
            push("action =", Box::new(a.clone()));
        }
        if let Some(o) = &q.outcome {
            push("outcome =", Box::new(o.clone()));
        }
        // Fields with no column of their own: matched in the record, exactly.
        for (field, value) in [("resource", &q.resource), ("request_id", &q.request_id)] {
            if let Some(v) = value {
                args.push(Box::new(v.clone()));
                let n = args.len();
                sql.push_str(&format!(
                    " AND strpos(record, ${n}) > 0 AND (record::jsonb ->> '{field}') = ${n}"
                ));
            }
        }
        if let Some(k) = &q.key_id {
            // The substring test spares parsing the JSON of records that cannot match.
            args.push(Box::new(k.clone()));
            let n = args.len();
            sql.push_str(&format!(
                " AND (key_id = ${n} OR (strpos(record, ${n}) > 0 AND \
                 (record::jsonb -> 'source_key_ids') @> to_jsonb(${n}::text)))"
            ));
        }
        sql.push_str(" ORDER BY seq");
        sql.push_str(&format!(" LIMIT {}", q.limit.min(100_000)));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|b| b.as_ref()).collect();
        let conn = self.conn.as_mut().ok_or_else(ended)?;
        let rows = blocking(|| conn.client.query(sql.as_str(), &params)).map_err(|e| {
            self.failed = true;
            unavailable("query_audit", &e)
        })?;
        rows.iter().map(audit_from_row).collect()
    }
}

impl Tx for PgTx<'_> {
    fn get_key(&mut self, key_id: &str) -> StoreResult<Option<KeyRecord>> {
        let rows = self.query(
            "get_key",
            "SELECT data FROM keyward_keys WHERE key_id = $1",
            &[&key_id],
        )?;
        match rows.first() {
            None => Ok(None),
            Some(r) => {
                let json: String = r.try_get(0).map_err(|e| unavailable("get_key", &e))?;
                decode_key(&json).map(Some)
            }
        }
    }

    fn put_key(&mut self, key: &KeyRecord) -> StoreResult<()> {
        self.changed("key", &key.key_id, "");
        let json =
            serde_json::to_string(key).map_err(|_| StoreError::Corrupt("key encode".into()))?;
        self.query(
            "put_key",
            "INSERT INTO keyward_keys (key_id, state, next_rotation_at, deletion_date, data)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key_id) DO UPDATE SET state = EXCLUDED.state,
                next_rotation_at = EXCLUDED.next_rotation_at, deletion_date = EXCLUDED.deletion_date,
                data = EXCLUDED.data",
            &[
                &key.key_id,
                &key.state,
                &key.next_rotation_at,
                &key.deletion_date,
                &json,
            ],
        )?;
        Ok(())
    }

    fn list_keys(&mut self, after: Option<&str>, limit: usize) -> StoreResult<Vec<KeyRecord>> {
        let rows = self.query(
            "list_keys",
            "SELECT data FROM keyward_keys WHERE key_id > $1 ORDER BY key_id LIMIT $2",
            &[&after.unwrap_or(""), &limit_of(limit)],
        )?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get(0).map_err(|e| unavailable("list_keys", &e))?;
                decode_key(&json)
            })
            .collect()
    }

    fn due_keys(&mut self, now: i64) -> StoreResult<Vec<String>> {
        let rows = self.query(
            "due_keys",
            "SELECT key_id FROM keyward_keys WHERE (state = 'Enabled' AND next_rotation_at <= $1)
             OR (state = 'PendingDeletion' AND deletion_date <= $1) ORDER BY key_id",
            &[&now],
        )?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| unavailable("due_keys", &e)))
            .collect()
    }

    fn versions(&mut self, key_id: &str) -> StoreResult<Vec<VersionRecord>> {
        let rows = self.query(
            "versions",
            "SELECT key_id, version, state, created_at, destroyed_at, material, root_generation
             FROM keyward_versions WHERE key_id = $1 ORDER BY version",
            &[&key_id],
        )?;
        rows.iter().map(version_from_row).collect()
    }

    fn put_version(&mut self, v: &VersionRecord) -> StoreResult<()> {
        self.changed("key", &v.key_id, "");
        self.query(
            "put_version",
            "INSERT INTO keyward_versions (key_id, version, state, created_at, destroyed_at, material, root_generation)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (key_id, version) DO UPDATE SET state = EXCLUDED.state,
                created_at = EXCLUDED.created_at, destroyed_at = EXCLUDED.destroyed_at,
                material = EXCLUDED.material, root_generation = EXCLUDED.root_generation",
            &[
                &v.key_id,
                &i64::from(v.version),
                &v.state,
                &v.created_at,
                &v.destroyed_at,
                &v.material,
                &i64::from(v.root_generation),
            ],
        )?;
        Ok(())
    }

    fn versions_with_material(&mut self) -> StoreResult<Vec<VersionRecord>> {
        let rows = self.query(
            "versions_with_material",
            "SELECT key_id, version, state, created_at, destroyed_at, material, root_generation
             FROM keyward_versions WHERE material IS NOT NULL ORDER BY key_id, version",
            &[],
        )?;
        rows.iter().map(version_from_row).collect()
    }

    fn get_alias(&mut self, name: &str) -> StoreResult<Option<String>> {
        let rows = self.query(
            "get_alias",
            "SELECT key_id FROM keyward_aliases WHERE name = $1",
            &[&name],
        )?;
        rows.first()
            .map(|r| r.try_get(0).map_err(|e| unavailable("get_alias", &e)))
            .transpose()
    }

    fn put_alias(&mut self, name: &str, key_id: &str) -> StoreResult<()> {
        self.changed("alias", name, "");
        self.query(
            "put_alias",
            "INSERT INTO keyward_aliases (name, key_id) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET key_id = EXCLUDED.key_id",
            &[&name, &key_id],
        )?;
        Ok(())
    }

    fn delete_alias(&mut self, name: &str) -> StoreResult<bool> {
        self.changed("alias", name, "");
        let rows = self.query(
            "delete_alias",
            "DELETE FROM keyward_aliases WHERE name = $1 RETURNING name",
            &[&name],
        )?;
        Ok(!rows.is_empty())
    }

    fn list_aliases(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let rows = self.query(
            "list_aliases",
            "SELECT name, key_id FROM keyward_aliases WHERE name > $1 ORDER BY name LIMIT $2",
            &[&after.unwrap_or(""), &limit_of(limit)],
        )?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(|e| unavailable("list_aliases", &e))?,
                    r.try_get(1).map_err(|e| unavailable("list_aliases", &e))?,
                ))
            })
            .collect()
    }

    fn aliases_of(&mut self, key_id: &str) -> StoreResult<Vec<String>> {
        let rows = self.query(
            "aliases_of",
            "SELECT name FROM keyward_aliases WHERE key_id = $1 ORDER BY name",
            &[&key_id],
        )?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| unavailable("aliases_of", &e)))
            .collect()
    }

    fn get_meta(&mut self, ns: &str, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let rows = self.query(
            "get_meta",
            "SELECT value FROM keyward_meta WHERE ns = $1 AND name = $2",
            &[&ns, &name],
        )?;
        rows.first()
            .map(|r| r.try_get(0).map_err(|e| unavailable("get_meta", &e)))
            .transpose()
    }

    fn put_meta(&mut self, ns: &str, name: &str, value: &[u8]) -> StoreResult<()> {
        self.changed("meta", ns, name);
        self.query(
            "put_meta",
            "INSERT INTO keyward_meta (ns, name, value) VALUES ($1, $2, $3)
             ON CONFLICT (ns, name) DO UPDATE SET value = EXCLUDED.value",
            &[&ns, &name, &value],
        )?;
        Ok(())
    }

    fn delete_meta(&mut self, ns: &str, name: &str) -> StoreResult<bool> {
        self.changed("meta", ns, name);
        let rows = self.query(
            "delete_meta",
            "DELETE FROM keyward_meta WHERE ns = $1 AND name = $2 RETURNING name",
            &[&ns, &name],
        )?;
        Ok(!rows.is_empty())
    }

    fn list_meta(&mut self, ns: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let rows = self.query(
            "list_meta",
            // Byte order, whatever the database's collation: callers page through these lists by name
            // with Rust's string comparison, and under a linguistic collation (en_US ignores '-' and
            // '_' at first) the two orders differ, which would skip or repeat entries across pages.
            "SELECT name, value FROM keyward_meta WHERE ns = $1 ORDER BY name COLLATE \"C\"",
            &[&ns],
        )?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(|e| unavailable("list_meta", &e))?,
                    r.try_get(1).map_err(|e| unavailable("list_meta", &e))?,
                ))
            })
            .collect()
    }

    fn meta_namespaces(&mut self) -> StoreResult<Vec<String>> {
        let rows = self.query(
            "meta_namespaces",
            "SELECT ns FROM keyward_meta GROUP BY ns ORDER BY ns COLLATE \"C\"",
            &[],
        )?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| unavailable("meta_namespaces", &e)))
            .collect()
    }

    fn append_audit(&mut self, rows: &[AuditRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // One statement per batch, whatever its size: the writer's batches are what keep the audited request
        // rate up, and a round trip per record would undo them.
        let mut seq = Vec::with_capacity(rows.len());
        let mut time_ms = Vec::with_capacity(rows.len());
        let mut principal = Vec::with_capacity(rows.len());
        let mut action = Vec::with_capacity(rows.len());
        let mut key_id = Vec::with_capacity(rows.len());
        let mut outcome = Vec::with_capacity(rows.len());
        let mut record = Vec::with_capacity(rows.len());
        for r in rows {
            seq.push(
                i64::try_from(r.seq).map_err(|_| {
                    StoreError::Corrupt("audit sequence number out of range".into())
                })?,
            );
            time_ms.push(r.time_ms);
            principal.push(r.principal.as_str());
            action.push(r.action.as_str());
            key_id.push(r.key_id.as_deref());
            outcome.push(r.outcome.as_str());
            record.push(r.record.as_str());
        }
        self.query(
            "append_audit",
            "INSERT INTO keyward_audit (seq, time_ms, principal, action, key_id, outcome, record)
             SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                                  $6::TEXT[], $7::TEXT[])",
            &[
                &seq, &time_ms, &principal, &action, &key_id, &outcome, &record,
            ],
        )
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                StoreError::Conflict("audit sequence number already used".into())
            }
            other => other,
        })?;
        Ok(())
    }

    fn audit_tail(&mut self) -> StoreResult<Option<AuditRow>> {
        // Prepared once per connection: every audit batch of a cluster node reads the chain head.
        let rows = self.query(
            "audit_tail",
            "SELECT seq, time_ms, principal, action, key_id, outcome, record FROM keyward_audit
             ORDER BY seq DESC LIMIT 1",
            &[],
        )?;
        rows.first().map(audit_from_row).transpose()
    }

    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        self.audit_rows(query)
    }

    fn prune_audit(&mut self, through_seq: u64) -> StoreResult<u64> {
        let through = i64::try_from(through_seq)
            .map_err(|_| StoreError::Corrupt("audit sequence number out of range".into()))?;
        let rows = self.query(
            "prune_audit",
            "WITH gone AS (DELETE FROM keyward_audit WHERE seq <= $1 RETURNING 1) SELECT count(*) FROM gone",
            &[&through],
        )?;
        let n: i64 = rows
            .first()
            .and_then(|r| r.try_get(0).ok())
            .unwrap_or_default();
        Ok(n as u64)
    }

    fn commit(mut self: Box<Self>) -> StoreResult<()> {
        if !self.failed {
            // A failure here sets `failed` and is reported just below.
            let _ = self.publish_changes();
        }
        if self.failed {
            // Dropping `self` rolls back.
            return Err(StoreError::Unavailable(
                "postgres: a statement of the transaction failed; nothing was committed".into(),
            ));
        }
        let mut conn = self.conn.take().ok_or_else(ended)?;
        match blocking(|| conn.client.batch_execute("COMMIT")) {
            Ok(()) => {
                self.store.release(conn);
                Ok(())
            }
            Err(e) => {
                // Whether the commit reached the server is unknown; the connection is not reused.
                self.store.discard(conn);
                Err(unavailable("commit", &e))
            }
        }
    }
}

/// The change log as seen by one node: a connection of its own that listens for commit notifications and
/// reads the log from its cursor. Notifications only shorten the wait; the log is the truth, so a lost
/// notification costs at most one poll interval.
struct PgFeed {
    config: postgres::Config,
    schema: Option<String>,
    conn: Option<Client>,
    /// The last change applied.
    cursor: i64,
    /// Set after a reconnect: changes may have been pruned while away.
    check_gap: bool,
}

impl PgFeed {
    fn open(store: &PgStore) -> StoreResult<PgFeed> {
        let mut feed = PgFeed {
            config: store.config.clone(),
            schema: store.options.schema.clone(),
            conn: None,
            cursor: 0,
            check_gap: false,
        };
        let client = feed.connect()?;
        let mut client = client;
        feed.cursor = client
            .query_one("SELECT coalesce(max(seq), 0) FROM keyward_changes", &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| unavailable("change feed", &e))?;
        feed.conn = Some(client);
        Ok(feed)
    }

    fn connect(&self) -> StoreResult<Client> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| unavailable("change feed connect", &e))?;
        if let Some(schema) = &self.schema {
            client
                .batch_execute(&format!("SET search_path TO {schema}"))
                .map_err(|e| unavailable("change feed", &e))?;
        }
        // A hung query must not leave the node trusting its caches: the caller stops trusting them when a
        // poll does not come back in time, and this bounds how long one can take.
        client
            .batch_execute("SET statement_timeout = 2000")
            .map_err(|e| unavailable("change feed", &e))?;
        let channel: String = client
            .query_one("SELECT 'keyward_' || current_schema()", &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| unavailable("change feed", &e))?;
        client
            .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "")))
            .map_err(|e| unavailable("change feed listen", &e))?;
        Ok(client)
    }

    fn read(&mut self) -> StoreResult<Vec<Change>> {
        let conn = self.conn.as_mut().ok_or_else(ended)?;
        let mut out = Vec::new();
        if self.check_gap {
            let oldest: Option<i64> = conn
                .query_one("SELECT min(seq) FROM keyward_changes", &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| unavailable("change feed", &e))?;
            if oldest.is_some_and(|o| o > self.cursor + 1) {
                out.push(Change::Everything);
            }
            self.check_gap = false;
        }
        loop {
            let rows = conn
                .query(
                    "SELECT seq, kind, a, b FROM keyward_changes WHERE seq > $1 ORDER BY seq LIMIT 10000",
                    &[&self.cursor],
                )
                .map_err(|e| unavailable("change feed", &e))?;
            let full = rows.len() == 10000;
            for r in &rows {
                let get = |e: postgres::Error| unavailable("change feed", &e);
                let seq: i64 = r.try_get(0).map_err(get)?;
                let kind: &str = r.try_get(1).map_err(get)?;
                let a: String = r.try_get(2).map_err(get)?;
                let b: String = r.try_get(3).map_err(get)?;
                out.push(match kind {
                    "key" => Change::Key(a),
                    "alias" => Change::Alias(a),
                    "meta" => Change::Meta { ns: a, name: b },
                    _ => Change::Everything,
                });
                self.cursor = seq;
            }
            if !full {
                return Ok(out);
            }
        }
    }
}

impl ChangeFeed for PgFeed {
    fn poll(&mut self, wait: Duration) -> StoreResult<Vec<Change>> {
        blocking(|| {
            if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
                self.conn = None;
                self.conn = Some(self.connect()?);
                self.check_gap = true;
            }
            let Some(conn) = self.conn.as_mut() else {
                return Err(ended());
            };
            // Wait for the first notification, then drain whatever else arrived; the log read below
            // covers every change committed before it started, notified or not.
            let waited = {
                let mut notes = conn.notifications();
                let first = notes.timeout_iter(wait).next().map(|_| ());
                first.and_then(|()| notes.iter().count().map(|_| ()))
            };
            if let Err(e) = waited {
                self.conn = None;
                return Err(unavailable("change feed", &e));
            }
            let out = self.read();
            if out.is_err() {
                self.conn = None;
            }
            out
        })
    }
}
