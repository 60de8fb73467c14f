//! Quorum (M-of-N) approval requests over the store: what was asked, who decided, and how it ended.
//!
//! A decision is read, checked and written in one store transaction, and store transactions are serialised
//! across every node sharing the store, so exactly one approver, on whichever node, completes the quorum and
//! claims the request (`executing`); running the operation, and recording it, is the caller's part.

use std::sync::Arc;

use keyward_core::{shown, ErrorCode, KmsError, KmsResult};
use keyward_store::{transact, Store, Tx};
use serde::{Deserialize, Serialize};

use crate::authz::Action;

/// The store namespace of approval requests.
pub const APPROVALS: &str = "approval";
/// The states a request never leaves (a `failed` one may still be overwritten by its claimant with what
/// really happened, which is closed too).
pub const CLOSED: [&str; 4] = ["executed", "rejected", "expired", "failed"];

/// How long a node may hold a request `executing`. Every operation is a few store writes (rotating the root
/// key re-wraps each version, still far under this); a claim this old belongs to a node that stopped and
/// never came back, or hangs, and the leading node ends it so that the request does not stay open forever.
pub const CLAIM_TTL: i64 = 3600;

/// The operation an approval will run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum Operation {
    /// Schedule a key's deletion.
    ScheduleDeletion {
        /// Key id.
        key_id: String,
        /// Waiting period.
        pending_days: u32,
    },
    /// Destroy one version.
    DestroyVersion {
        /// Key id.
        key_id: String,
        /// Version.
        version: u32,
    },
    /// Delete an EXTERNAL key's imported material.
    DeleteImportedMaterial {
        /// Key id.
        key_id: String,
    },
    /// Export a key wrapped for a recipient.
    Export {
        /// Key id.
        key_id: String,
        /// Recipient's SPKI DER, hex.
        wrapping_public_key_der: String,
        /// Version.
        version: Option<u32>,
    },
    /// Rotate the root key.
    RotateRoot,
    /// Delete the audit records through a sequence number (retention).
    PruneAudit {
        /// The last record to delete.
        through_seq: u64,
    },
    /// Store a policy document.
    PutPolicy {
        /// Name.
        name: String,
        /// The document.
        document: crate::policy::PolicyDoc,
    },
    /// Delete a policy.
    DeletePolicy {
        /// Name.
        name: String,
        /// Whether identities holding the policy lose it (otherwise the deletion fails while any holds it).
        #[serde(default)]
        detach: bool,
    },
}

impl Operation {
    /// The action an approver must be allowed to perform.
    pub fn action(&self) -> Action {
        match self {
            Operation::ScheduleDeletion { .. } => Action::ScheduleKeyDeletion,
            Operation::DestroyVersion { .. } => Action::DestroyKeyVersion,
            Operation::DeleteImportedMaterial { .. } => Action::DeleteImportedKeyMaterial,
            Operation::Export { .. } => Action::ExportKey,
            Operation::RotateRoot => Action::RotateRoot,
            Operation::PruneAudit { .. } => Action::PruneAudit,
            Operation::PutPolicy { .. } => Action::PutPolicy,
            Operation::DeletePolicy { .. } => Action::DeletePolicy,
        }
    }

    /// The key the operation concerns, if any.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Operation::ScheduleDeletion { key_id, .. }
            | Operation::DestroyVersion { key_id, .. }
            | Operation::DeleteImportedMaterial { key_id }
            | Operation::Export { key_id, .. } => Some(key_id),
            _ => None,
        }
    }
}

/// A stored approval request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Approval {
    /// Id.
    pub approval_id: String,
    /// `pending`, `executing` (claimed by the approval that completed the quorum, whose node is running the
    /// operation), `executed`, `rejected`, `expired` or `failed`.
    pub status: String,
    /// What runs when approved.
    #[serde(flatten)]
    pub operation: Operation,
    /// Who asked.
    pub requested_by: String,
    /// Approvals needed.
    pub required: u32,
    /// Who approved, in order.
    pub approvals: Vec<String>,
    /// Who rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The operation's result once executed (never key material in plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// From `executing` on: the node, and the run of its process, that claimed the request and ran it; a
    /// node restarted with a claim of an earlier run in `executing` knows that run stopped mid-operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Unix seconds of the claim: a claim older than [`CLAIM_TTL`] is taken to be abandoned by its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<i64>,
}

impl Approval {
    /// The request as its readers see it: one still pending past its expiry is `expired` (it can no longer
    /// be approved), though no round or decision has stored it so yet.
    pub fn as_seen(mut self, now: i64) -> Approval {
        if self.status == "pending" && self.expires_at <= now {
            self.status = "expired".into();
        }
        self
    }
}

/// What a decision did, once its transaction committed.
pub enum Decided {
    /// Nothing more: the request was rejected, or still waits for approvals.
    Recorded(Approval),
    /// The request had expired (and is now stored so); the decision is refused.
    Expired,
    /// This decision completed the quorum and claimed the request (`executing`): the caller runs it.
    Claimed(Approval),
}

fn corrupt() -> KmsError {
    KmsError::new(ErrorCode::Unavailable, "store corrupt: approval")
}

fn read(tx: &mut dyn Tx, id: &str) -> KmsResult<Approval> {
    let raw = tx.get_meta(APPROVALS, id)?.ok_or_else(|| {
        KmsError::new(
            ErrorCode::NotFound,
            format!("approval {} does not exist", shown(id)),
        )
    })?;
    serde_json::from_slice(&raw).map_err(|_| corrupt())
}

fn write(tx: &mut dyn Tx, a: &Approval) -> KmsResult<()> {
    let json = serde_json::to_vec(a)
        .map_err(|_| KmsError::new(ErrorCode::Unavailable, "approval encoding"))?;
    Ok(tx.put_meta(APPROVALS, &a.approval_id, &json)?)
}

/// Approval requests in a store.
pub struct Approvals {
    store: Arc<dyn Store>,
}

impl Approvals {
    /// Requests kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Approvals { store }
    }

    /// One request (`NotFound` if none).
    pub fn get(&self, id: &str) -> KmsResult<Approval> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| read(tx, id))
    }

    /// Stores a request as it is.
    pub fn put(&self, a: &Approval) -> KmsResult<()> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| write(tx, a))
    }

    /// Every stored request by id; one that does not parse is reported, never silently left out.
    pub fn all(&self) -> KmsResult<Vec<(String, Approval)>> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.list_meta(APPROVALS)
        })?
        .into_iter()
        .map(|(id, raw)| Ok((id, serde_json::from_slice(&raw).map_err(|_| corrupt())?)))
        .collect()
    }

    /// Every stored request that parses, for the background rounds (the readers report the others).
    pub fn readable(&self) -> KmsResult<Vec<Approval>> {
        Ok(transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.list_meta(APPROVALS)
        })?
        .into_iter()
        .filter_map(|(_, raw)| serde_json::from_slice::<Approval>(&raw).ok())
        .collect())
    }

    /// Takes `who`'s decision on a request, in one transaction: an expired request is stored so and refused,
    /// a closed one refused, the requester and a decider not `allowed` to perform the operation refused, a
    /// second approval by the same identity refused; the approval that completes the quorum claims the
    /// request for `claim` (this node's run).
    pub fn decide(
        &self,
        id: &str,
        who: &str,
        allowed: bool,
        approve: bool,
        now: i64,
        claim: &str,
    ) -> KmsResult<Decided> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut a = read(tx, id)?;
            if a.status == "pending" && a.expires_at <= now {
                a.status = "expired".into();
                write(tx, &a)?;
                return Ok(Decided::Expired);
            }
            if a.status != "pending" {
                return Err(KmsError::new(
                    ErrorCode::InvalidState,
                    format!("approval {id} is {}", a.status),
                ));
            }
            if who == a.requested_by {
                return Err(KmsError::new(
                    ErrorCode::AccessDenied,
                    "the requester cannot approve or reject its own request",
                ));
            }
            if !allowed {
                return Err(KmsError::new(
                    ErrorCode::AccessDenied,
                    format!("{who} may not perform {}", a.operation.action().name()),
                ));
            }
            if !approve {
                a.status = "rejected".into();
                a.rejected_by = Some(who.to_string());
                write(tx, &a)?;
                return Ok(Decided::Recorded(a));
            }
            if a.approvals.iter().any(|x| x == who) {
                return Err(KmsError::new(
                    ErrorCode::AlreadyExists,
                    format!("{who} already approved {id}"),
                ));
            }
            a.approvals.push(who.to_string());
            if (a.approvals.len() as u32) < a.required {
                write(tx, &a)?;
                return Ok(Decided::Recorded(a));
            }
            a.status = "executing".into();
            a.claimed_by = Some(claim.to_string());
            a.claimed_at = Some(now);
            write(tx, &a)?;
            Ok(Decided::Claimed(a))
        })
    }

    /// Ends a claimed request as `failed` with `message`, if it is still `executing` under `claim`.
    pub fn fail_claim(&self, id: &str, claim: &str, message: &str) -> KmsResult<()> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut x = read(tx, id)?;
            if x.status == "executing" && x.claimed_by.as_deref() == Some(claim) {
                x.status = "failed".into();
                x.result = Some(serde_json::json!({"error": {
                    "code": "Unavailable",
                    "message": message,
                }}));
                write(tx, &x)?;
            }
            Ok(())
        })
    }

    /// Stores as `expired` those of `ids` still pending past their expiry; says how many.
    pub fn expire<'a>(&self, ids: impl Iterator<Item = &'a str>, now: i64) -> KmsResult<usize> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut expired = 0;
            for id in ids {
                let Some(mut x) = tx
                    .get_meta(APPROVALS, id)?
                    .and_then(|raw| serde_json::from_slice::<Approval>(&raw).ok())
                else {
                    continue;
                };
                if x.status == "pending" && x.expires_at <= now {
                    x.status = "expired".into();
                    write(tx, &x)?;
                    expired += 1;
                }
            }
            Ok(expired)
        })
    }

    /// Deletes those of `ids` still closed and past `past` (read again in the transaction); says how many.
    pub fn purge<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        past: impl Fn(&Approval) -> bool,
    ) -> KmsResult<usize> {
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut purged = 0;
            for id in ids {
                let still = match tx.get_meta(APPROVALS, id)? {
                    Some(raw) => serde_json::from_slice::<Approval>(&raw).is_ok_and(|x| past(&x)),
                    None => false,
                };
                if still && tx.delete_meta(APPROVALS, id)? {
                    purged += 1;
                }
            }
            Ok(purged)
        })
    }
}
