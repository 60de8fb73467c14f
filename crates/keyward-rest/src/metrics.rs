//! Prometheus metrics without a metrics library: fixed arrays of atomics indexed by action, so recording a
//! request is a handful of relaxed atomic adds and never takes a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::authz::Action;

/// How often the log repeats that the audit log cannot be written.
/// How often a repeated condition (a failing audit write, a balancer sending bad PROXY headers) is told.
pub const TELL_EVERY: Duration = Duration::from_secs(10);

/// A log line for a condition that may repeat with every request or connection: the first occurrence is told
/// at once, later ones at most every [`TELL_EVERY`] with the number left untold, so that a flood of failures
/// cannot flood the log (or fill the disk the audit log needs).
pub struct LogThrottle(parking_lot::Mutex<(Option<Instant>, u64)>);

impl LogThrottle {
    /// Nothing told yet.
    pub const fn new() -> LogThrottle {
        LogThrottle(parking_lot::const_mutex((None, 0)))
    }

    /// Counts one occurrence and, when it is time, prints `line(untold)`, `untold` being the occurrences
    /// since the last line that were not told.
    pub fn tell(&self, line: impl FnOnce(u64) -> String) {
        let mut told = self.0.lock();
        match told.0 {
            Some(at) if at.elapsed() < TELL_EVERY => told.1 += 1,
            _ => {
                let untold = std::mem::take(&mut told.1);
                told.0 = Some(Instant::now());
                drop(told);
                tracing::warn!("{}", line(untold));
            }
        }
    }

    /// Takes the number of occurrences not told yet (to be told another way), and starts afresh.
    pub fn take_untold(&self) -> u64 {
        let mut told = self.0.lock();
        told.0 = None;
        std::mem::take(&mut told.1)
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new()
    }
}

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

struct PerAction {
    outcomes: [AtomicU64; 3],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl PerAction {
    fn new() -> Self {
        PerAction {
            outcomes: Default::default(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// Request outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed and succeeded.
    Allow = 0,
    /// Refused by authentication, authorization or rate limiting.
    Deny = 1,
    /// Failed.
    Error = 2,
}

impl Outcome {
    /// The audit name.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }
}

/// All metrics of a node.
pub struct Metrics {
    per_action: Vec<PerAction>,
    audit_failures: AtomicU64,
    /// Whether the last audit write failed; the first success after says so in the log.
    audit_failing: AtomicBool,
    /// The log lines saying the audit log cannot be written.
    audit_told: LogThrottle,
    /// When the served TLS certificate expires, in Unix seconds; `i64::MIN` without TLS.
    tls_not_after: AtomicI64,
    /// SIGHUP reloads of the TLS configuration that took effect, and that were refused.
    tls_reloads: [AtomicU64; 2],
    /// Requests of each of the last 60 minutes, by outcome: the console's activity chart.
    minutes: [Minute; 60],
}

/// One minute's requests: which minute (Unix minutes) the slot holds, and its counts by outcome.
#[derive(Default)]
struct Minute {
    at: AtomicU64,
    outcomes: [AtomicU64; 3],
}

/// One minute of this node's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Unix seconds the minute began.
    pub start: i64,
    /// Allowed and succeeded.
    pub allowed: u64,
    /// Refused by authentication, authorization or rate limiting.
    pub refused: u64,
    /// Failed.
    pub failed: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            per_action: Action::ALL.iter().map(|_| PerAction::new()).collect(),
            audit_failures: AtomicU64::new(0),
            audit_failing: AtomicBool::new(false),
            audit_told: LogThrottle::new(),
            tls_not_after: AtomicI64::new(i64::MIN),
            tls_reloads: [AtomicU64::new(0), AtomicU64::new(0)],
            minutes: std::array::from_fn(|_| Minute::default()),
        }
    }
}

impl Metrics {
    /// The served certificate's end of validity, so that an alert can fire well before clients start
    /// refusing it.
    pub fn tls_certificate(&self, not_after_unix: Option<i64>) {
        self.tls_not_after
            .store(not_after_unix.unwrap_or(i64::MIN), Ordering::Relaxed);
    }

    /// Counts a SIGHUP reload of the TLS configuration: a refused one means the files on disk are not what
    /// is served.
    pub fn tls_reloaded(&self, took_effect: bool) {
        let i = usize::from(!took_effect);
        if let Some(c) = self.tls_reloads.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one request.
    pub fn record(&self, action: Action, outcome: Outcome, elapsed: Duration) {
        let Some(m) = self.per_action.get(action as usize) else {
            return;
        };
        m.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            m.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        m.count.fetch_add(1, Ordering::Relaxed);
        m.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.per_minute(outcome);
    }

    /// Counts a request in the current minute's slot, first emptying a slot left from an hour ago. Two
    /// requests racing at the turn of a minute may lose a count: these are figures for a chart, and the
    /// counters above stay exact.
    fn per_minute(&self, outcome: Outcome) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        let slot = &self.minutes[(now % 60) as usize];
        let held = slot.at.load(Ordering::Relaxed);
        if held != now
            && slot
                .at
                .compare_exchange(held, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            for o in &slot.outcomes {
                o.store(0, Ordering::Relaxed);
            }
        }
        slot.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// This node's requests in each of the last 60 minutes up to `now` (Unix seconds), oldest first; a
    /// minute without requests counts zero.
    pub fn last_hour(&self, now: i64) -> Vec<MinuteCounts> {
        let current = now.max(0) as u64 / 60;
        (0..60u64)
            .rev()
            .map(|back| {
                let minute = current.saturating_sub(back);
                let slot = &self.minutes[(minute % 60) as usize];
                let counts = |o: Outcome| {
                    if slot.at.load(Ordering::Relaxed) == minute {
                        slot.outcomes[o as usize].load(Ordering::Relaxed)
                    } else {
                        0
                    }
                };
                MinuteCounts {
                    start: (minute * 60) as i64,
                    allowed: counts(Outcome::Allow),
                    refused: counts(Outcome::Deny),
                    failed: counts(Outcome::Error),
                }
            })
            .collect()
    }

    /// Counts an audit write failure, and tells the operator why: at once for the first, then at most every
    /// ten seconds with the number since (a full disk fails every request, and the log must not flood).
    pub fn audit_failed(&self, why: &str, request_id: &str) {
        self.audit_failures.fetch_add(1, Ordering::Relaxed);
        self.audit_failing.store(true, Ordering::Relaxed);
        self.audit_told.tell(|since| {
            if since == 0 {
                format!("audit log cannot be written, requests fail closed: {why} (request {request_id})")
            } else {
                format!(
                    "audit log cannot be written, requests fail closed ({since} more since the last message): {why} (request {request_id})"
                )
            }
        });
    }

    /// Notes a durable audit write: the first after failures says the log is written again.
    pub fn audit_written(&self) {
        if self.audit_failing.load(Ordering::Relaxed)
            && self.audit_failing.swap(false, Ordering::Relaxed)
        {
            let since = self.audit_told.take_untold();
            tracing::info!(
                "audit log written again ({} failures in all, {since} since the last message)",
                self.audit_failures.load(Ordering::Relaxed)
            );
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, sealed: bool, cache: keyward_core::CacheStats) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP keyward_requests_total Requests by action and outcome.\n# TYPE keyward_requests_total counter\n");
        for (a, m) in Action::ALL.iter().zip(&self.per_action) {
            for o in [Outcome::Allow, Outcome::Deny, Outcome::Error] {
                let n = m.outcomes[o as usize].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "keyward_requests_total{{action=\"{}\",outcome=\"{}\"}} {n}",
                        a.name(),
                        o.name()
                    );
                }
            }
        }
        out.push_str("# HELP keyward_request_duration_seconds Request latency by action.\n# TYPE keyward_request_duration_seconds histogram\n");
        for (a, m) in Action::ALL.iter().zip(&self.per_action) {
            let count = m.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, c) in BUCKETS.iter().zip(&m.buckets) {
                cumulative += c.load(Ordering::Relaxed);
                let _ = writeln!(out, "keyward_request_duration_seconds_bucket{{action=\"{}\",le=\"{b}\"}} {cumulative}", a.name());
            }
            let _ = writeln!(
                out,
                "keyward_request_duration_seconds_bucket{{action=\"{}\",le=\"+Inf\"}} {count}",
                a.name()
            );
            let sum = m.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "keyward_request_duration_seconds_sum{{action=\"{}\"}} {sum}",
                a.name()
            );
            let _ = writeln!(
                out,
                "keyward_request_duration_seconds_count{{action=\"{}\"}} {count}",
                a.name()
            );
        }
        let _ = writeln!(out, "# HELP keyward_sealed Whether the node is sealed.\n# TYPE keyward_sealed gauge\nkeyward_sealed {}", u8::from(sealed));
        let _ = writeln!(out, "# HELP keyward_key_cache_hits_total Key cache hits.\n# TYPE keyward_key_cache_hits_total counter\nkeyward_key_cache_hits_total {}", cache.hits);
        let _ = writeln!(out, "# HELP keyward_key_cache_misses_total Key cache misses.\n# TYPE keyward_key_cache_misses_total counter\nkeyward_key_cache_misses_total {}", cache.misses);
        let _ = writeln!(out, "# HELP keyward_key_cache_evictions_total Keys dropped from the cache to stay within key_cache_capacity.\n# TYPE keyward_key_cache_evictions_total counter\nkeyward_key_cache_evictions_total {}", cache.evictions);
        let _ = writeln!(out, "# HELP keyward_key_cache_keys Keys held in the cache.\n# TYPE keyward_key_cache_keys gauge\nkeyward_key_cache_keys {}", cache.keys);
        let _ = writeln!(
            out,
            "# HELP keyward_audit_failures_total Requests failed closed because the audit log could not be written.\n# TYPE keyward_audit_failures_total counter\nkeyward_audit_failures_total {}",
            self.audit_failures.load(Ordering::Relaxed)
        );
        let not_after = self.tls_not_after.load(Ordering::Relaxed);
        if not_after != i64::MIN {
            let _ = writeln!(
                out,
                "# HELP keyward_tls_certificate_not_after_seconds When the served TLS certificate expires (Unix time).\n# TYPE keyward_tls_certificate_not_after_seconds gauge\nkeyward_tls_certificate_not_after_seconds {not_after}"
            );
        }
        let [ok, refused] = &self.tls_reloads;
        let _ = writeln!(
            out,
            "# HELP keyward_tls_reloads_total SIGHUP reloads of the TLS certificate, by result.\n# TYPE keyward_tls_reloads_total counter\nkeyward_tls_reloads_total{{result=\"ok\"}} {}\nkeyward_tls_reloads_total{{result=\"refused\"}} {}",
            ok.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        );
        out
    }
}
