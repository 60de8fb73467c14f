//! The tamper-evident audit log.
//!
//! Every record carries `prev_hash` (the previous record's `hash`) and `hash = HMAC-SHA-256(audit key, record
//! without its hash)`, the record serialised as canonical JSON (fixed field order). The audit key is derived
//! with HKDF from the unseal key, so someone who can write the database but does not hold the unseal key
//! cannot forge, reorder, insert or delete records without [`Kms::verify_audit`] naming the first bad one.
//!
//! Appends are group-committed: one writer thread takes every record waiting in its queue and makes them
//! durable in a single store transaction, then completes each request. A request's response waits for its
//! record; if the batch cannot be written the request fails closed with `Unavailable`.
//!
//! While the service is sealed there is no audit key: records of that time (status, init, unseal calls) are
//! held in memory, in order, and chained and written at the next unseal.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use keyward_hsm::{KeyHandle, MacAlgorithm};
use keyward_store::{transact, AuditQuery, AuditRow, Tx};
use serde::{Deserialize, Serialize};

use crate::engine::Kms;
use crate::error::{ErrorCode, KmsError, KmsResult};

/// Hash of "no previous record".
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the caller knows about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The request id (also in the `x-request-id` header).
    pub request_id: String,
    /// Identity name, or `anonymous`.
    pub principal: String,
    /// Client address.
    pub source_ip: String,
    /// `kms:<Action>`.
    pub action: String,
    /// The key concerned.
    pub key_id: Option<String>,
    /// The version concerned.
    pub version: Option<u32>,
    /// For a re-encryption: the keys the ciphertexts were under (the destination is `key_id`), distinct,
    /// in request order, whether or not the caller could use them. For a decryption whose ciphertexts name
    /// several keys (a batch through `/v1/decrypt`), those keys.
    pub source_key_ids: Vec<String>,
    /// What else than a key the action concerns: `identity/<name>`, `policy/<name>`, `token/<id>`,
    /// `approval/<id>`. Never a secret: names and ids only.
    pub resource: Option<String>,
    /// `allow`, `deny` or `error`.
    pub outcome: &'static str,
    /// Error code when not allowed.
    pub error_code: Option<String>,
}

/// A stored audit record, as `GET /v1/audit` returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 with milliseconds.
    pub time: String,
    /// Request id.
    pub request_id: String,
    /// Principal.
    pub principal: String,
    /// Client address.
    pub source_ip: String,
    /// Action.
    pub action: String,
    /// Key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Source keys of a re-encryption.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_key_ids: Vec<String>,
    /// The identity, policy, token or approval concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Outcome.
    pub outcome: String,
    /// Error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// This record's keyed hash.
    #[serde(default)]
    pub hash: String,
}

/// Result of a chain verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerification {
    /// Whether every record checked out.
    pub valid: bool,
    /// Records checked.
    pub records: u64,
    /// Hash of the last good record.
    pub head: String,
    /// The first record that is missing, altered, inserted or out of order.
    pub first_bad_seq: Option<u64>,
    /// The records up to and including this one were pruned (retention); the chain is checked from the
    /// next, against the authenticated anchor the pruning left.
    pub pruned_through: Option<u64>,
}

/// A copy of the log beside the store (a JSON-lines file, syslog). The store stays the source of truth: a
/// sink that falls behind (a crash between the store's commit and the sink's write, a full disk) is caught up
/// from the store, so every record reaches the sink exactly once and in order.
pub trait AuditSink: Send {
    /// The last sequence number the sink holds (0 when empty).
    fn last_seq(&mut self) -> std::io::Result<u64>;
    /// Appends stored records (JSON, one per record) in sequence order.
    fn write(&mut self, records: &[&str]) -> std::io::Result<()>;
}

/// Called once the record is durable (with its sequence number) or could not be written.
pub type Completion = Box<dyn FnOnce(KmsResult<u64>) + Send>;

/// The event fields in the canonical order of a stored record, serialised by the request's own thread so
/// the single writer only chains, MACs and writes.
#[derive(Serialize)]
struct Body<'a> {
    time: &'a str,
    request_id: &'a str,
    principal: &'a str,
    source_ip: &'a str,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    source_key_ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
}

impl<'a> Body<'a> {
    fn of_record(r: &'a AuditRecord) -> Self {
        Body {
            time: &r.time,
            request_id: &r.request_id,
            principal: &r.principal,
            source_ip: &r.source_ip,
            action: &r.action,
            key_id: r.key_id.as_deref(),
            version: r.version,
            source_key_ids: &r.source_key_ids,
            resource: r.resource.as_deref(),
            outcome: &r.outcome,
            error_code: r.error_code.as_deref(),
        }
    }

    fn encode(&self) -> KmsResult<String> {
        serde_json::to_string(self)
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "audit record encoding"))
    }
}

/// What the MAC covers: sequence number, previous hash and the canonical body.
fn mac_input(m: &mut Vec<u8>, seq: u64, prev: &str, body: &[u8]) {
    m.reserve(body.len() + 90);
    m.extend_from_slice(seq.to_string().as_bytes());
    m.push(b'|');
    m.extend_from_slice(prev.as_bytes());
    m.push(b'|');
    m.extend_from_slice(body);
}

/// A record waiting to be chained and written, with what to call once it is durable.
pub struct Pending {
    time_ms: i64,
    principal: String,
    action: String,
    key_id: Option<String>,
    outcome: &'static str,
    /// The canonical JSON of the event fields (an object).
    body: String,
    done: Completion,
}

/// Handle to the audit writer. Cloning is cheap.
#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<Pending>,
    sink_failures: Arc<std::sync::atomic::AtomicU64>,
}

/// Formats unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Formats unix seconds as RFC 3339 UTC (`2026-11-29T08:10:16Z`).
pub fn rfc3339(secs: i64) -> String {
    let mut s = rfc3339_ms(secs.saturating_mul(1000));
    s.replace_range(s.len() - 5..s.len() - 1, "");
    s
}

/// Lower-case hex, as hashes and ids are written in records and the store.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Decodes hex; `None` for anything that is not an even run of hex digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| {
            s.get(2 * i..2 * i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

/// The chain writer: assigns sequence numbers, chains and MACs records, writes each batch in one store
/// transaction, feeds the sinks and completes the requests. One per deployment's node; callers serialise
/// access (the writer thread of [`AuditLog`], or a server's own group-commit leader).
pub struct AuditWriter {
    kms: Arc<Kms>,
    next_seq: u64,
    last_hash: String,
    held: Vec<Pending>,
    sinks: Vec<Box<dyn AuditSink>>,
    /// Sinks that failed and must be caught up from the store before the next write.
    behind: bool,
    /// Failed deliveries to the sinks (each retried from the store), for operators to see.
    sink_failures: Arc<std::sync::atomic::AtomicU64>,
}

impl Pending {
    /// Serialises the record's body on the caller's thread; `None` (with `done` called) if that fails.
    pub fn new(event: AuditEvent, done: Completion) -> Option<Pending> {
        let time = rfc3339_ms(event.time_ms);
        let body = Body {
            time: &time,
            request_id: &event.request_id,
            principal: &event.principal,
            source_ip: &event.source_ip,
            action: &event.action,
            key_id: event.key_id.as_deref(),
            version: event.version,
            source_key_ids: &event.source_key_ids,
            resource: event.resource.as_deref(),
            outcome: event.outcome,
            error_code: event.error_code.as_deref(),
        }
        .encode();
        match body {
            Ok(body) => Some(Pending {
                time_ms: event.time_ms,
                principal: event.principal,
                action: event.action,
                key_id: event.key_id,
                outcome: event.outcome,
                body,
                done,
            }),
            Err(e) => {
                done(Err(e));
                None
            }
        }
    }
}

impl AuditWriter {
    /// A writer continuing the stored chain, with its sinks caught up.
    pub fn new(kms: Arc<Kms>, sinks: Vec<Box<dyn AuditSink>>) -> KmsResult<AuditWriter> {
        let mut w = AuditWriter {
            kms,
            next_seq: 1,
            last_hash: GENESIS.to_string(),
            held: Vec::new(),
            sinks,
            behind: false,
            sink_failures: Arc::default(),
        };
        w.reload_tail()?;
        w.catch_up()?;
        Ok(w)
    }

    /// Writes records held while sealed, once the service is unsealed.
    pub fn flush_held(&mut self) {
        if !self.held.is_empty() && self.kms.audit_key().is_some() {
            self.write(Vec::new());
        }
    }

    /// Chains a batch onto the current head: the rows to store and the hash of the last one.
    fn chain(&self, key: &KeyHandle, batch: &[Pending]) -> KmsResult<(Vec<AuditRow>, String)> {
        let mut prev = self.last_hash.clone();
        let mut rows = Vec::with_capacity(batch.len());
        let mut input = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let seq = self.next_seq + i as u64;
            input.clear();
            mac_input(&mut input, seq, &prev, p.body.as_bytes());
            let mac = self.kms.hsm.mac(key, MacAlgorithm::HmacSha256, &input)?;
            let hash = hex(&mac);
            // {"seq":N, <body fields>, "prev_hash":"..", "hash":".."}
            let inner = p.body.get(1..p.body.len().saturating_sub(1)).unwrap_or("");
            let mut record = String::with_capacity(p.body.len() + 170);
            record.push_str("{\"seq\":");
            record.push_str(&seq.to_string());
            record.push(',');
            record.push_str(inner);
            record.push_str(",\"prev_hash\":\"");
            record.push_str(&prev);
            record.push_str("\",\"hash\":\"");
            record.push_str(&hash);
            record.push_str("\"}");
            rows.push(AuditRow {
                seq,
                time_ms: p.time_ms,
                principal: p.principal.clone(),
                action: p.action.clone(),
                key_id: p.key_id.clone(),
                outcome: p.outcome.to_string(),
                record,
            });
            prev = hash;
        }
        Ok((rows, prev))
    }

    /// Chains and durably writes a batch, then completes every record's request.
    pub fn write(&mut self, batch: Vec<Pending>) {
        let Some(key) = self.kms.audit_key() else {
            // Sealed: hold the records (in order) and let the requests proceed.
            for mut p in batch {
                let done = std::mem::replace(&mut p.done, Box::new(|_| {}));
                done(Ok(0));
                self.held.push(p);
            }
            return;
        };
        let mut all = std::mem::take(&mut self.held);
        all.extend(batch);
        let moved = self
            .kms
            .audit_moved
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let result = if moved || self.kms.store.shared() {
            self.write_shared(&key, &all)
        } else {
            self.chain(&key, &all).and_then(|chained| {
                transact(self.kms.store.as_ref(), |tx: &mut dyn Tx| {
                    tx.append_audit(&chained.0)
                })?;
                Ok(chained)
            })
        };
        match result {
            Ok((rows, head)) => {
                if let Some(last) = rows.last() {
                    self.next_seq = last.seq + 1;
                    self.last_hash = head;
                }
                if !self.sinks.is_empty() {
                    if self.behind {
                        self.behind = self.catch_up().is_err();
                    } else {
                        let lines: Vec<&str> = rows.iter().map(|r| r.record.as_str()).collect();
                        self.behind = self.sinks.iter_mut().any(|s| s.write(&lines).is_err());
                    }
                    if self.behind {
                        self.sink_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                for (p, row) in all.into_iter().zip(rows) {
                    (p.done)(Ok(row.seq));
                }
            }
            Err(e) => {
                let err = KmsError::new(
                    ErrorCode::Unavailable,
                    format!("audit log cannot be written: {}", e.message()),
                );
                for p in all {
                    (p.done)(Err(err.clone()));
                }
                // The chain head may have moved if another node or a retry committed; reload it.
                let _ = self.reload_tail();
            }
        }
    }

    /// Several nodes append to one chain: inside the transaction (which holds the store's writer lock) the
    /// head is read again and the batch chained onto it, so sequence numbers come from the database and the
    /// chain can neither fork nor leave a gap.
    fn write_shared(
        &mut self,
        key: &KeyHandle,
        batch: &[Pending],
    ) -> KmsResult<(Vec<AuditRow>, String)> {
        let store = self.kms.store.clone();
        transact(store.as_ref(), |tx: &mut dyn Tx| {
            match tx.audit_tail()? {
                Some(row) if row.seq + 1 != self.next_seq => {
                    let rec: AuditRecord = serde_json::from_str(&row.record)
                        .map_err(|_| crate::records::corrupt("audit record"))?;
                    self.next_seq = row.seq + 1;
                    self.last_hash = rec.hash;
                }
                Some(_) => {}
                None => {
                    self.next_seq = 1;
                    self.last_hash = GENESIS.to_string();
                }
            }
            let chained = self.chain(key, batch)?;
            tx.append_audit(&chained.0)?;
            Ok(chained)
        })
    }

    /// Brings every sink up to the store's last record.
    fn catch_up(&mut self) -> KmsResult<()> {
        let io = |_| KmsError::new(ErrorCode::Unavailable, "audit sink cannot be written");
        for sink in self.sinks.iter_mut() {
            let mut after = sink.last_seq().map_err(io)?;
            loop {
                let query = AuditQuery {
                    after_seq: after,
                    limit: 1000,
                    ..AuditQuery::default()
                };
                let rows = transact(self.kms.store.as_ref(), |tx: &mut dyn Tx| {
                    tx.query_audit(&query)
                })?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                let lines: Vec<&str> = rows.iter().map(|r| r.record.as_str()).collect();
                sink.write(&lines).map_err(io)?;
            }
        }
        Ok(())
    }

    fn reload_tail(&mut self) -> KmsResult<()> {
        let tail = transact(self.kms.store.as_ref(), |tx: &mut dyn Tx| tx.audit_tail())?;
        match tail {
            Some(row) => {
                let rec: AuditRecord = serde_json::from_str(&row.record)
                    .map_err(|_| crate::records::corrupt("audit record"))?;
                self.next_seq = row.seq + 1;
                self.last_hash = rec.hash;
            }
            None => {
                self.next_seq = 1;
                self.last_hash = GENESIS.to_string();
            }
        }
        Ok(())
    }

    fn run(mut self, queue: Receiver<Pending>) {
        loop {
            let first = match queue.recv_timeout(Duration::from_millis(200)) {
                Ok(p) => p,
                Err(RecvTimeoutError::Timeout) => {
                    self.flush_held();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < 4096 {
                match queue.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.write(batch);
        }
    }
}

impl AuditLog {
    /// Starts the writer thread for an engine.
    pub fn start(kms: Arc<Kms>) -> KmsResult<AuditLog> {
        Self::start_with_sinks(kms, Vec::new())
    }

    /// Starts the writer with sinks beside the store; they are caught up first.
    pub fn start_with_sinks(kms: Arc<Kms>, sinks: Vec<Box<dyn AuditSink>>) -> KmsResult<AuditLog> {
        let (tx, rx) = sync_channel(65_536);
        let writer = AuditWriter::new(kms, sinks)?;
        let sink_failures = writer.sink_failures.clone();
        std::thread::Builder::new()
            .name("keyward-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "cannot start the audit writer"))?;
        Ok(AuditLog {
            queue: tx,
            sink_failures,
        })
    }

    /// How many batches could not be delivered to a sink (a file, syslog) since start. Each is delivered
    /// again from the store once the sink takes writes, so a count that grows means a sink is behind.
    pub fn sink_failures(&self) -> u64 {
        self.sink_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a record; `done` runs once it is durable or has failed.
    pub fn append(&self, event: AuditEvent, done: Completion) {
        let Some(pending) = Pending::new(event, done) else {
            return;
        };
        match self.queue.try_send(pending) {
            Ok(()) => {}
            Err(TrySendError::Full(p)) | Err(TrySendError::Disconnected(p)) => (p.done)(Err(
                KmsError::new(ErrorCode::Unavailable, "audit queue is full"),
            )),
        }
    }

    /// Appends and blocks until durable.
    pub fn append_blocking(&self, event: AuditEvent) -> KmsResult<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.append(event, Box::new(move |r| drop(tx.send(r))));
        rx.recv()
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "audit writer stopped"))?
    }
}

/// Who the scheduler's records name as the principal.
pub const SCHEDULER: &str = "system:scheduler";

/// Runs the scheduled work that is due (rotations by period, destructions on the deletion date) the way a
/// request runs a change: each action's record is made durable first, and the action happens only then;
/// one that fails, or that another node or a change since made moot, gets an `error` record after it.
/// The round stops at the first record that cannot be written, leaving the rest for the next round, so no
/// key is rotated or destroyed without its record. `time_ms` stamps the records.
pub fn run_scheduled_work(
    kms: &Kms,
    log: &AuditLog,
    time_ms: impl Fn() -> i64,
) -> KmsResult<crate::DueWork> {
    let mut work = crate::DueWork::default();
    for (key_id, kind) in kms.due_work()? {
        let action = match kind {
            crate::DueKind::Rotate => "kms:RotateKey",
            crate::DueKind::Destroy => "kms:DestroyKey",
        };
        let request_id = format!("sched-{}", uuid::Uuid::new_v4().simple());
        let record = |outcome: &'static str, error_code: Option<String>| AuditEvent {
            time_ms: time_ms(),
            request_id: request_id.clone(),
            principal: SCHEDULER.to_string(),
            source_ip: "local".to_string(),
            action: action.to_string(),
            key_id: Some(key_id.clone()),
            version: None,
            source_key_ids: Vec::new(),
            resource: None,
            outcome,
            error_code,
        };
        log.append_blocking(record("allow", None))?;
        let (failure, fatal) = match kms.perform_due(&key_id, kind) {
            Ok(true) => (None, None),
            Ok(false) => (Some(ErrorCode::InvalidState), None),
            // A store that cannot be written, or a seal, ends the round: the other keys would fail alike.
            Err(e) if matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Sealed) => {
                (Some(e.code()), Some(e))
            }
            Err(e) => (Some(e.code()), None),
        };
        match failure {
            None => match kind {
                crate::DueKind::Rotate => work.rotated.push(key_id.clone()),
                crate::DueKind::Destroy => work.destroyed.push(key_id.clone()),
            },
            Some(code) => {
                log.append_blocking(record("error", Some(code.as_str().to_string())))?;
            }
        }
        if let Some(e) = fatal {
            return Err(e);
        }
    }
    Ok(work)
}

/// A signed statement of the chain head: keep it outside Keyward, and a later truncation of the log (which
/// the chain alone cannot reveal) shows as a missing or different record at `seq`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// Sequence number of the head.
    pub seq: u64,
    /// Hash of the head record.
    pub head: String,
    /// When the checkpoint was made (RFC 3339).
    pub time: String,
    /// Ed25519 public key (SPKI DER, hex) that verifies `signature`.
    pub public_key: String,
    /// Ed25519 signature (hex) over `keyward-audit-checkpoint-v1|seq|head|time`.
    pub signature: String,
}

impl Checkpoint {
    /// The signed message.
    pub fn message(seq: u64, head: &str, time: &str) -> Vec<u8> {
        format!("keyward-audit-checkpoint-v1|{seq}|{head}|{time}").into_bytes()
    }
}

impl Kms {
    /// Signs the current head of the chain.
    pub fn audit_checkpoint(&self, now_ms: i64) -> KmsResult<Checkpoint> {
        let key = self.checkpoint_key().ok_or_else(KmsError::sealed)?;
        let tail = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.audit_tail())?;
        let (seq, head) = match tail {
            Some(row) => {
                let rec: AuditRecord = serde_json::from_str(&row.record)
                    .map_err(|_| crate::records::corrupt("audit record"))?;
                (row.seq, rec.hash)
            }
            None => (0, GENESIS.to_string()),
        };
        let time = rfc3339_ms(now_ms);
        let sig = self.hsm.sign(
            &key,
            keyward_hsm::SigningAlgorithm::Ed25519,
            keyward_hsm::SignInput::Message(&Checkpoint::message(seq, &head, &time)),
        )?;
        Ok(Checkpoint {
            seq,
            head,
            time,
            public_key: hex(&self.hsm.public_key_der(&key)?),
            signature: hex(&sig),
        })
    }

    /// Verifies the chain and that it still contains a checkpointed head (so the tail was not cut off).
    pub fn verify_audit_against(&self, checkpoint: &Checkpoint) -> KmsResult<AuditVerification> {
        let key = self.checkpoint_key().ok_or_else(KmsError::sealed)?;
        let sig = unhex(&checkpoint.signature).unwrap_or_default();
        let msg = Checkpoint::message(checkpoint.seq, &checkpoint.head, &checkpoint.time);
        let genuine = self.hsm.verify(
            &key,
            keyward_hsm::SigningAlgorithm::Ed25519,
            keyward_hsm::SignInput::Message(&msg),
            &sig,
        )?;
        if !genuine {
            return Err(KmsError::validation(
                "the checkpoint's signature is not this deployment's",
            ));
        }
        let v = self.verify_audit()?;
        if !v.valid || checkpoint.seq == 0 {
            return Ok(v);
        }
        if let Some(pruned) = v.pruned_through.filter(|p| checkpoint.seq <= *p) {
            return Err(KmsError::invalid_state(format!(
                "the checkpoint's record ({}) was pruned: the log is kept from record {}; check a newer checkpoint",
                checkpoint.seq,
                pruned + 1
            )));
        }
        let row = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            row_at(tx, checkpoint.seq)
        })?;
        let matches = row.is_some_and(|r| {
            serde_json::from_str::<AuditRecord>(&r.record)
                .is_ok_and(|rec| rec.hash == checkpoint.head)
        });
        if matches {
            Ok(v)
        } else {
            Ok(AuditVerification {
                valid: false,
                records: v.records,
                head: v.head,
                first_bad_seq: Some(v.pruned_through.unwrap_or(0) + v.records + 1),
                pruned_through: v.pruned_through,
            })
        }
    }

    /// Audit records matching a query.
    pub fn query_audit(&self, query: &AuditQuery) -> KmsResult<Vec<AuditRecord>> {
        let rows = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.query_audit(query))?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(&r.record).map_err(|_| crate::records::corrupt("audit record"))
            })
            .collect()
    }

    /// Walks the whole retained chain, from the retention anchor if records were pruned, and names the
    /// first record that does not check out.
    pub fn verify_audit(&self) -> KmsResult<AuditVerification> {
        let key = self.audit_key().ok_or_else(KmsError::sealed)?;
        let (start, prev) = match self.audit_anchor(&key)? {
            Ok(Some(a)) => (a.seq, a.hash),
            Ok(None) => (0, GENESIS.to_string()),
            // An anchor that does not authenticate: the start of the log was moved by someone without
            // the audit key. Nothing after it can be trusted to be the whole log.
            Err(claimed) => {
                return Ok(AuditVerification {
                    valid: false,
                    records: 0,
                    head: GENESIS.to_string(),
                    first_bad_seq: Some(claimed.saturating_add(1)),
                    pruned_through: Some(claimed),
                })
            }
        };
        let mut v = self.verify_range(&key, start, prev, u64::MAX, &mut 0)?;
        v.pruned_through = (start > 0).then_some(start);
        Ok(v)
    }

    /// Checks only the records after `after_seq`, whose hash `head` a verification already accepted: a
    /// node re-checks its chain every round at the cost of what was appended since. The answer's `records`
    /// counts those checked.
    pub fn verify_audit_after(&self, after_seq: u64, head: &str) -> KmsResult<AuditVerification> {
        let key = self.audit_key().ok_or_else(KmsError::sealed)?;
        self.verify_range(&key, after_seq, head.to_string(), u64::MAX, &mut 0)
    }

    /// Checks the records after `after_seq` (whose hash is `prev`) through `through_seq`, or to the end.
    /// `newest_ms` ends as the latest `time_ms` among the records checked.
    fn verify_range(
        &self,
        key: &KeyHandle,
        after_seq: u64,
        mut prev: String,
        through_seq: u64,
        newest_ms: &mut i64,
    ) -> KmsResult<AuditVerification> {
        let mut expected_seq = after_seq + 1;
        let mut checked = 0u64;
        let mut input = Vec::new();
        let bad = |seq: u64, checked: u64, head: String| {
            Ok(AuditVerification {
                valid: false,
                records: checked,
                head,
                first_bad_seq: Some(seq),
                pruned_through: None,
            })
        };
        loop {
            let query = AuditQuery {
                after_seq: expected_seq - 1,
                limit: 1000,
                ..AuditQuery::default()
            };
            let rows = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
                tx.query_audit(&query)
            })?;
            let done = |prev: String, checked: u64| {
                Ok(AuditVerification {
                    valid: true,
                    records: checked,
                    head: prev,
                    first_bad_seq: None,
                    pruned_through: None,
                })
            };
            if rows.is_empty() {
                if through_seq != u64::MAX && expected_seq <= through_seq {
                    return bad(expected_seq, checked, prev);
                }
                return done(prev, checked);
            }
            for row in rows {
                if expected_seq > through_seq {
                    return done(prev, checked);
                }
                if row.seq != expected_seq {
                    return bad(expected_seq, checked, prev);
                }
                let Ok(rec) = serde_json::from_str::<AuditRecord>(&row.record) else {
                    return bad(row.seq, checked, prev);
                };
                // The columns the store filters on must say what the authenticated record says.
                let columns = rec.principal == row.principal
                    && rec.time == rfc3339_ms(row.time_ms)
                    && rec.action == row.action
                    && rec.key_id == row.key_id
                    && rec.outcome == row.outcome;
                if !columns || !self.chains_onto(key, &rec, row.seq, &prev, &mut input)? {
                    return bad(row.seq, checked, prev);
                }
                prev = rec.hash;
                *newest_ms = (*newest_ms).max(row.time_ms);
                checked += 1;
                expected_seq += 1;
            }
        }
    }

    /// Whether `rec` is record `seq`, follows the record whose hash is `prev`, and carries its own MAC.
    fn chains_onto(
        &self,
        key: &KeyHandle,
        rec: &AuditRecord,
        seq: u64,
        prev: &str,
        input: &mut Vec<u8>,
    ) -> KmsResult<bool> {
        if rec.seq != seq || rec.prev_hash != prev {
            return Ok(false);
        }
        let Some(mac) = unhex(&rec.hash) else {
            return Ok(false);
        };
        let body = Body::of_record(rec).encode()?;
        input.clear();
        mac_input(input, rec.seq, &rec.prev_hash, body.as_bytes());
        Ok(self
            .hsm
            .verify_mac(key, MacAlgorithm::HmacSha256, input, &mac)?)
    }

    /// Verifies records kept outside the store (an archive written before pruning): each must carry this
    /// deployment's MAC and chain onto the one before, the first onto `prev_hash` (the genesis hash when
    /// the archive starts the log). `continues_into_log` says whether the last one is the record the kept
    /// log chains onto (the retention anchor, or a stored record's predecessor), which shows nothing is
    /// missing between the archive and the log.
    pub fn verify_archive(
        &self,
        records: &[AuditRecord],
        prev_hash: Option<&str>,
    ) -> KmsResult<ArchiveVerification> {
        let key = self.audit_key().ok_or_else(KmsError::sealed)?;
        let Some(first) = records.first() else {
            return Err(KmsError::validation("records is empty"));
        };
        let mut prev = match prev_hash {
            Some(p) => p.to_string(),
            None if first.seq == 1 => GENESIS.to_string(),
            None => first.prev_hash.clone(),
        };
        let mut input = Vec::new();
        let mut checked = 0u64;
        for (i, rec) in records.iter().enumerate() {
            let seq = first.seq.saturating_add(i as u64);
            if !self.chains_onto(&key, rec, seq, &prev, &mut input)? {
                return Ok(ArchiveVerification {
                    valid: false,
                    records: checked,
                    head: prev,
                    first_bad_seq: Some(seq),
                    continues_into_log: false,
                });
            }
            prev = rec.hash.clone();
            checked += 1;
        }
        let last_seq = first.seq + checked - 1;
        let continues_into_log = match self.audit_anchor(&key)? {
            Ok(Some(a)) if a.seq == last_seq => a.hash == prev,
            _ => transact(self.store.as_ref(), |tx: &mut dyn Tx| {
                row_at(tx, last_seq + 1)
            })?
            .and_then(|r| serde_json::from_str::<AuditRecord>(&r.record).ok())
            .is_some_and(|next| next.prev_hash == prev),
        };
        Ok(ArchiveVerification {
            valid: true,
            records: checked,
            head: prev,
            first_bad_seq: None,
            continues_into_log,
        })
    }

    /// The retention anchor, if records were pruned: `Err` with the sequence number it claims when its MAC
    /// does not check out.
    fn audit_anchor(&self, key: &KeyHandle) -> KmsResult<Result<Option<Anchor>, u64>> {
        let raw = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(ANCHOR.0, ANCHOR.1)
        })?;
        let Some(raw) = raw else {
            return Ok(Ok(None));
        };
        let anchor: Anchor =
            serde_json::from_slice(&raw).map_err(|_| crate::records::corrupt("audit anchor"))?;
        let genuine = match unhex(&anchor.mac) {
            Some(mac) => self.hsm.verify_mac(
                key,
                MacAlgorithm::HmacSha256,
                &Anchor::mac_input(anchor.seq, &anchor.hash),
                &mac,
            )?,
            None => false,
        };
        Ok(if genuine {
            Ok(Some(anchor))
        } else {
            Err(anchor.seq)
        })
    }

    /// Deletes the audit records through `through_seq`, for retention, once they are archived elsewhere.
    ///
    /// Refused unless the records to delete verify (tampering is evidence, never pruned away), the newest
    /// of them is older than `keep_after_ms`, and at least one record stays (the chain continues from the
    /// newest). The chain stays verifiable: an anchor, MACed under the audit key, names the last deleted
    /// record's hash, which the first kept record chains onto. Deletion runs in transactions of at most
    /// [`PRUNE_CHUNK`] records, each moving the anchor with it, so appends wait on none for long and a crash
    /// leaves the log consistent.
    pub fn prune_audit(&self, through_seq: u64, keep_after_ms: i64) -> KmsResult<Pruned> {
        self.prune_audit_inner(through_seq, keep_after_ms, true)
    }

    /// Whether [`Kms::prune_audit`] would succeed now (every check, the chain verified), deleting nothing:
    /// for a pruning that must wait for approval.
    pub fn check_prune_audit(&self, through_seq: u64, keep_after_ms: i64) -> KmsResult<()> {
        self.prune_audit_inner(through_seq, keep_after_ms, false)
            .map(drop)
    }

    fn prune_audit_inner(
        &self,
        through_seq: u64,
        keep_after_ms: i64,
        apply: bool,
    ) -> KmsResult<Pruned> {
        let key = self.audit_key().ok_or_else(KmsError::sealed)?;
        let (start, prev) = match self.audit_anchor(&key)? {
            Ok(Some(a)) => (a.seq, a.hash),
            Ok(None) => (0, GENESIS.to_string()),
            Err(claimed) => {
                return Err(KmsError::invalid_state(format!(
                    "the audit log's retention anchor (through {claimed}) does not authenticate; nothing is pruned"
                )))
            }
        };
        if through_seq <= start {
            return Err(KmsError::invalid_state(format!(
                "records through {start} are already pruned"
            )));
        }
        let tail = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.audit_tail())?
            .map(|r| r.seq)
            .unwrap_or(0);
        if through_seq >= tail {
            return Err(KmsError::invalid_state(format!(
                "the newest record ({tail}) is never pruned: the chain continues from it"
            )));
        }
        let last = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            row_at(tx, through_seq)
        })?
        .ok_or_else(|| KmsError::not_found(format!("no audit record {through_seq}")))?;
        if last.time_ms >= keep_after_ms {
            return Err(KmsError::invalid_state(format!(
                "record {through_seq} is from {}, inside the retention period (records before {} may be pruned)",
                rfc3339_ms(last.time_ms),
                rfc3339_ms(keep_after_ms)
            )));
        }
        let mut newest_ms = i64::MIN;
        let v = self.verify_range(&key, start, prev, through_seq, &mut newest_ms)?;
        if !v.valid {
            return Err(KmsError::invalid_state(format!(
                "audit record {} does not verify; records that show tampering are evidence and are not pruned",
                v.first_bad_seq.unwrap_or(start + 1)
            )));
        }
        // Records are stamped by the node that made them, so an earlier one may carry a later time (a node's
        // clock ahead of the others): none in the range may be younger than the retention period.
        if newest_ms >= keep_after_ms {
            return Err(KmsError::invalid_state(format!(
                "a record through {through_seq} is from {}, inside the retention period (records before {} may be pruned)",
                rfc3339_ms(newest_ms),
                rfc3339_ms(keep_after_ms)
            )));
        }
        let mut anchor_seq = start;
        let mut pruned = 0;
        while apply && anchor_seq < through_seq {
            let chunk_end = through_seq.min(anchor_seq.saturating_add(PRUNE_CHUNK));
            let from = anchor_seq;
            pruned += transact(self.store.as_ref(), |tx: &mut dyn Tx| {
                // The anchor must still be the one this pruning started from (another node may prune too).
                let current = match tx.get_meta(ANCHOR.0, ANCHOR.1)? {
                    Some(raw) => serde_json::from_slice::<Anchor>(&raw)
                        .map(|a| a.seq)
                        .map_err(|_| crate::records::corrupt("audit anchor"))?,
                    None => 0,
                };
                if current != from {
                    return Err(KmsError::invalid_state(
                        "the audit log was pruned by another request meanwhile",
                    ));
                }
                let row = row_at(tx, chunk_end)?
                    .ok_or_else(|| crate::records::corrupt("audit record to prune"))?;
                let rec: AuditRecord = serde_json::from_str(&row.record)
                    .map_err(|_| crate::records::corrupt("audit record"))?;
                let mac = self.hsm.mac(
                    &key,
                    MacAlgorithm::HmacSha256,
                    &Anchor::mac_input(chunk_end, &rec.hash),
                )?;
                let anchor = Anchor {
                    seq: chunk_end,
                    hash: rec.hash,
                    mac: hex(&mac),
                };
                let json = serde_json::to_vec(&anchor)
                    .map_err(|_| KmsError::new(ErrorCode::Unavailable, "anchor encoding"))?;
                tx.put_meta(ANCHOR.0, ANCHOR.1, &json)?;
                Ok::<_, KmsError>(tx.prune_audit(chunk_end)?)
            })?;
            anchor_seq = chunk_end;
        }
        Ok(Pruned {
            pruned,
            pruned_through: through_seq,
        })
    }
}

/// The stored row of record `seq` (from 1), if the store holds it.
fn row_at(tx: &mut dyn Tx, seq: u64) -> keyward_store::StoreResult<Option<AuditRow>> {
    let rows = tx.query_audit(&AuditQuery {
        after_seq: seq.saturating_sub(1),
        limit: 1,
        ..AuditQuery::default()
    })?;
    Ok(rows.into_iter().find(|r| r.seq == seq))
}

/// Result of an archive's verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArchiveVerification {
    /// Whether every record checked out.
    pub valid: bool,
    /// Records checked.
    pub records: u64,
    /// Hash of the last good record: the `prev_hash` for the next part of the archive.
    pub head: String,
    /// The first record that is altered, missing or out of order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// Whether the kept log continues from the archive's last record.
    pub continues_into_log: bool,
}

/// Records deleted per transaction when pruning.
pub const PRUNE_CHUNK: u64 = 10_000;

/// Where the store keeps the retention anchor.
const ANCHOR: (&str, &str) = ("audit", "anchor");

/// The last pruned record's sequence number and hash, MACed under the audit key: the retained chain starts
/// from it, and nobody who can only write the database can move it.
#[derive(Serialize, Deserialize)]
struct Anchor {
    seq: u64,
    hash: String,
    mac: String,
}

impl Anchor {
    fn mac_input(seq: u64, hash: &str) -> Vec<u8> {
        format!("keyward-audit-anchor-v1|{seq}|{hash}").into_bytes()
    }
}

/// What a pruning did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Records deleted.
    pub pruned: u64,
    /// The log now starts after this record.
    pub pruned_through: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn stored_record_parses_and_rebuilds_the_mac_input() {
        let sources = ["a".to_string(), "b".to_string()];
        for (source_key_ids, resource) in [
            (&[][..], None),
            (&sources[..], None),
            (&[][..], Some("identity/alice")),
        ] {
            let body = Body {
                time: "1970-01-01T00:00:00.000Z",
                request_id: "r",
                principal: "p",
                source_ip: "127.0.0.1",
                action: "kms:Encrypt",
                key_id: Some("k"),
                version: Some(2),
                source_key_ids,
                resource,
                outcome: "allow",
                error_code: None,
            }
            .encode()
            .unwrap_or_default();
            // Records without source keys keep the form (and so the MACs) they had before the field existed.
            assert_eq!(body.contains("source_key_ids"), !source_key_ids.is_empty());
            assert_eq!(body.contains("resource"), resource.is_some());
            let inner = &body[1..body.len() - 1];
            let stored =
                format!("{{\"seq\":7,{inner},\"prev_hash\":\"{GENESIS}\",\"hash\":\"ab\"}}");
            let rec: AuditRecord = serde_json::from_str(&stored).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (rec.seq, rec.version, rec.key_id.as_deref()),
                (7, Some(2), Some("k"))
            );
            assert_eq!(rec.source_key_ids, source_key_ids);
            assert_eq!(rec.resource.as_deref(), resource);
            assert_eq!(Body::of_record(&rec).encode().unwrap_or_default(), body);
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
