//! The node's watch over its audit chain.
//!
//! A node whose audit log has been tampered with still serves (refusing every request would let whoever
//! altered the log take the service down), but it must not look healthy: each background round checks the
//! records appended since the last check (the whole retained chain at the first round after start), and a
//! break is reported by `/v1/health` (`degraded`, with the reason), `keyward health` (exit 2), the
//! `keyward_audit_chain_valid` metric, an error line in the log and the compliance report.

use parking_lot::Mutex;

/// What the node last found of its chain.
#[derive(Default)]
pub struct ChainWatch {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last record accepted, and its hash: the next round starts after it.
    head: Option<(u64, String)>,
    /// Why the chain is not whole, once a check found it so.
    broken: Option<String>,
    /// When the last check ended (milliseconds).
    checked_at_ms: Option<i64>,
}

/// The watch as the health endpoint, the metrics and the compliance report show it.
pub struct ChainStatus {
    /// Why the chain is not whole; `None` while every check held (or none ran yet).
    pub broken: Option<String>,
    /// When the last check ended (milliseconds), if one ran.
    pub checked_at_ms: Option<i64>,
}

impl ChainWatch {
    /// The last finding.
    pub fn status(&self) -> ChainStatus {
        let s = self.state.lock();
        ChainStatus {
            broken: s.broken.clone(),
            checked_at_ms: s.checked_at_ms,
        }
    }

    /// One check, from the last accepted record on (or the whole chain the first time, or after a
    /// failure, so that a pruning since the last round is not mistaken for a gap). Says whether it found
    /// the chain newly broken. A check that cannot run (sealed, store unreachable) changes nothing.
    pub fn check(&self, kms: &keyward_core::Kms, now_ms: i64) -> Result<bool, String> {
        let head = self.state.lock().head.clone();
        let incremental = match &head {
            Some((seq, hash)) => {
                let v = kms
                    .verify_audit_after(*seq, hash)
                    .map_err(|e| e.message().to_string())?;
                v.valid.then(|| (seq + v.records, v.head))
            }
            None => None,
        };
        let (found, broken) = match incremental {
            Some(next) => (Some(next), None),
            None => {
                let v = kms.verify_audit().map_err(|e| e.message().to_string())?;
                if v.valid {
                    let seq = v.pruned_through.unwrap_or(0) + v.records;
                    (Some((seq, v.head)), None)
                } else {
                    let at = v.first_bad_seq.unwrap_or(0);
                    (
                        None,
                        Some(format!(
                            "audit record {at} does not verify: the log was altered, or records were removed or inserted (GET /v1/audit/verify)"
                        )),
                    )
                }
            }
        };
        let mut s = self.state.lock();
        let newly = broken.is_some() && s.broken.is_none();
        s.checked_at_ms = Some(now_ms);
        match broken {
            Some(reason) => {
                s.broken = Some(reason);
                s.head = None;
            }
            None => {
                s.broken = None;
                s.head = found;
            }
        }
        Ok(newly)
    }
}
