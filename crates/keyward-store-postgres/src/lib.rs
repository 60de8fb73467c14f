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
    AuditQuery, AuditRow, KeyRecord, Store, StoreError, StoreResult, Tx, VersionRecord,
};
use parking_lot::{Condvar, Mutex};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// With the schema's hash, the advisory lock every transaction holds ("KWWR"): one per deployment, so
/// deployments in other schemas of the same database do not wait on each other.
const WRITE_LOCK: i32 = 0x4b57_5752;
/// With the schema's hash, the lock held for the session while migrations run ("KWMG").
const MIGRATE_LOCK: i32 = 0x4b57_4d47;
/// How often a node confirms, on its way into a transaction, that it still holds its database.
const LEASE_CHECK: Duration = Duration::from_secs(1);
/// With the schema's hash, the lock held for its whole life by the node that serves the schema alone (see
/// [`PgOptions::exclusive`]).
const NODE_LOCK: i32 = 0x4b57_4e4c;

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
    /// Refuse to open while another process holds the database this way. A node caches keys and chains
    /// audit records in memory, so two nodes on one database would each serve their own view of a key's
    /// state; until the nodes share cache invalidation and audit sequencing, a second node is refused.
    pub exclusive: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            schema: None,
            exclusive: true,
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
    /// The connection holding the node lock, for an exclusive store.
    lease: Mutex<Option<Conn>>,
    /// When the lease was last confirmed.
    lease_checked: Mutex<Option<std::time::Instant>>,
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
            lease_checked: Mutex::new(None),
            open: Mutex::new(0),
            freed: Condvar::new(),
        };
        blocking(|| store.migrate())?;
        if store.options.exclusive {
            let conn = blocking(|| store.take_lease())?;
            *store.lease.lock() = Some(conn);
            *store.lease_checked.lock() = Some(std::time::Instant::now());
        }
        Ok(store)
    }

    fn connect(&self) -> StoreResult<Conn> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| unavailable("connect", &e))?;
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

    fn take_lease(&self) -> StoreResult<Conn> {
        let mut conn = self.connect()?;
        let got: bool = conn
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                &[&NODE_LOCK],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| unavailable("node lock", &e))?;
        if !got {
            return Err(StoreError::Conflict(
                "another Keyward node is serving this PostgreSQL database (schema); one node per database"
                    .into(),
            ));
        }
        Ok(conn)
    }

    /// Confirms, at most once per [`LEASE_CHECK`], that this node still holds its database. A lease lost
    /// with its connection (PostgreSQL restarted, a failover, a terminated backend) is taken again; if
    /// another node took it meanwhile, this node refuses to work on the database rather than serve a view of
    /// it that the other node is changing.
    fn check_lease(&self) -> StoreResult<()> {
        if !self.options.exclusive {
            return Ok(());
        }
        if self
            .lease_checked
            .lock()
            .is_some_and(|t| t.elapsed() < LEASE_CHECK)
        {
            return Ok(());
        }
        let mut lease = self.lease.lock();
        let alive = match lease.as_mut() {
            Some(c) => c.client.simple_query("SELECT 1").is_ok(),
            None => false,
        };
        if !alive {
            drop(lease.take());
            *lease = Some(self.take_lease().map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Unavailable(
                    "this node lost its hold on the PostgreSQL database to another node".into(),
                ),
                other => other,
            })?);
        }
        *self.lease_checked.lock() = Some(std::time::Instant::now());
        Ok(())
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
        blocking(|| drop((idle, lease)));
    }
}

impl Store for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn begin(&self) -> StoreResult<Box<dyn Tx + '_>> {
        blocking(|| {
            self.check_lease()?;
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

    fn audit_rows(&mut self, q: &AuditQuery, last: bool) -> StoreResult<Vec<AuditRow>> {
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
        if let Some(k) = &q.key_id {
            push("key_id =", Box::new(k.clone()));
        }
        if let Some(a) = &q.action {
            push("action =", Box::new(a.clone()));
        }
        if let Some(o) = &q.outcome {
            push("outcome =", Box::new(o.clone()));
        }
        sql.push_str(if last {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq"
        });
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
        self.query(
            "put_alias",
            "INSERT INTO keyward_aliases (name, key_id) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET key_id = EXCLUDED.key_id",
            &[&name, &key_id],
        )?;
        Ok(())
    }

    fn delete_alias(&mut self, name: &str) -> StoreResult<bool> {
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
        self.query(
            "put_meta",
            "INSERT INTO keyward_meta (ns, name, value) VALUES ($1, $2, $3)
             ON CONFLICT (ns, name) DO UPDATE SET value = EXCLUDED.value",
            &[&ns, &name, &value],
        )?;
        Ok(())
    }

    fn delete_meta(&mut self, ns: &str, name: &str) -> StoreResult<bool> {
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
            "SELECT name, value FROM keyward_meta WHERE ns = $1 ORDER BY name",
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
        let q = AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        };
        self.audit_rows(&q, true).map(|mut v| v.pop())
    }

    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        self.audit_rows(query, false)
    }

    fn commit(mut self: Box<Self>) -> StoreResult<()> {
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
