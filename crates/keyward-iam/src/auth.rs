//! Tokens: 256 random bits, shown once, stored only as a SHA-256 hash.
//!
//! A token is looked up by its hash, so the comparison never touches the token itself; a token has far more
//! entropy than any guessing attack can cover, which is what makes a fast hash sufficient (passwords, which
//! do not, use Argon2id). Successful lookups are cached; revocation drops the cache entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use keyward_core::cluster::Freshness;
use keyward_core::ShardedMap;
use keyward_core::{ErrorCode, KmsError, KmsResult};
use keyward_store::{transact, Store, Tx};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::authz::Role;
use crate::{hex, unhex};

/// The store namespace of token records (by the hash of the token).
pub const TOKENS: &str = "token";
const TOKEN_IDS: &str = "token_id";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Identity name.
    pub name: String,
    /// Built-in roles.
    pub roles: Vec<Role>,
    /// The token's id (not the token).
    pub token_id: String,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Whether the token was issued after a TOTP check.
    pub mfa: bool,
    /// Names of the policies attached to the identity.
    pub policies: Vec<String>,
}

impl Principal {
    /// The caller of an unauthenticated endpoint.
    pub fn anonymous() -> Self {
        Principal {
            name: "anonymous".into(),
            roles: Vec::new(),
            token_id: String::new(),
            expires_at: None,
            mfa: false,
            policies: Vec::new(),
        }
    }
}

/// A stored token (by hash).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id used for revocation.
    pub token_id: String,
    /// Identity name.
    pub identity: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Issued after a TOTP check.
    #[serde(default)]
    pub mfa: bool,
    /// Policies of the identity when the token was issued.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Roles the sign-in itself granted (an identity provider's groups), held beside the identity's own for
    /// the token's life: a change of the identity's grants leaves them, the next sign-in maps them afresh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub login_roles: Vec<String>,
    /// Policies the sign-in itself granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub login_policies: Vec<String>,
    /// How the token was obtained, when not issued by an administrator or a password: `jwt:<issuer>`, `ldap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// For a session's token (`POST /v1/auth/session`): the id of the token the chain of sessions began with,
    /// whose revocation revokes it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The ids of the session tokens opened from this token (directly or from one another).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<String>,
}

/// Session tokens opened from one token at most at a time: a token cannot be laundered into an unbounded
/// number of others.
const MAX_SESSIONS: usize = 1000;

/// A sign-in through an identity provider, as [`Auth::mint_federated`] turns it into a token.
pub struct Federated<'a> {
    /// The identity signed in (its own grants are the token's too).
    pub identity: &'a crate::identities::IdentityRecord,
    /// Roles the provider's claims or groups map to.
    pub roles: &'a [String],
    /// Policies the provider's claims or groups map to.
    pub policies: &'a [String],
    /// Unix seconds.
    pub now: i64,
    /// The token's life in seconds.
    pub ttl: i64,
    /// Whether a TOTP code was checked too.
    pub mfa: bool,
    /// `jwt:<issuer>` or `ldap`.
    pub via: &'a str,
}

/// Token issuing and checking.
pub struct Auth {
    store: Arc<dyn Store>,
    /// Whether cached principals are known to be current (other nodes may revoke tokens).
    freshness: Arc<Freshness>,
    /// Principals by token hash, bounded (the least used give way), in the service's one cache type.
    cache: ShardedMap<[u8; 32], Arc<Principal>>,
    /// Moves before every invalidation: a principal read from the store while a token was revoked or
    /// regranted may be the old one, and is not cached (else it would outlive the change indefinitely).
    epoch: AtomicU64,
}

/// Principals held in memory at most: a flood of distinct valid tokens cannot grow the cache without bound.
const CACHED_PRINCIPALS: usize = 100_000;

fn token_hash(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn unauthenticated() -> KmsError {
    KmsError::new(
        ErrorCode::Unauthenticated,
        "missing, unknown, expired or revoked token",
    )
}

impl Auth {
    /// Token checks over a store.
    pub fn new(store: Arc<dyn Store>, freshness: Arc<Freshness>) -> Self {
        Auth {
            store,
            freshness,
            cache: ShardedMap::bounded(CACHED_PRINCIPALS),
            epoch: AtomicU64::new(0),
        }
    }

    /// Issues a token. `fixed` sets the value (dev mode's `KEYWARD_DEV_ROOT_TOKEN`); otherwise 256 random bits.
    pub fn mint(
        &self,
        identity: &str,
        roles: &[Role],
        now: i64,
        ttl_seconds: Option<i64>,
        fixed: Option<&str>,
    ) -> KmsResult<(Zeroizing<String>, TokenRecord)> {
        self.mint_inner(identity, roles, &[], now, ttl_seconds, fixed, false)
    }

    /// Issues a token for an identity with policies, recording whether MFA was used.
    #[allow(clippy::too_many_arguments)]
    pub fn mint_with_mfa(
        &self,
        identity: &str,
        roles: &[Role],
        policies: &[String],
        now: i64,
        ttl_seconds: Option<i64>,
        mfa: bool,
    ) -> KmsResult<(Zeroizing<String>, TokenRecord)> {
        self.mint_inner(identity, roles, policies, now, ttl_seconds, None, mfa)
    }

    /// Issues a token for a sign-in through an identity provider: the identity's own grants, and those the
    /// provider's claims or groups map to for this sign-in.
    pub fn mint_federated(&self, f: &Federated<'_>) -> KmsResult<(Zeroizing<String>, TokenRecord)> {
        let (token, mut rec) = self.fresh(f.identity.name.as_str())?;
        rec.roles = f.identity.roles.clone();
        rec.policies = f.identity.policies.clone();
        rec.created_at = f.now;
        rec.expires_at = Some(f.now + f.ttl);
        rec.mfa = f.mfa;
        rec.login_roles = f.roles.to_vec();
        rec.login_policies = f.policies.to_vec();
        rec.via = Some(f.via.to_string());
        self.store_token(&token, &rec)?;
        Ok((token, rec))
    }

    /// Issues a token for a session (the console's) from the token that opened it: the same identity and
    /// grants, MFA only if that token had it, living at most `max_ttl` seconds and never past its parent, so
    /// that signing out (revoking the session's token) leaves the parent, and a session cannot outlive it.
    ///
    /// `stepped_up` says a TOTP code was checked when the session was opened: the session then counts as MFA
    /// even if its parent does not (a policy that asks for MFA is met by the session, not the parent).
    pub fn derive(
        &self,
        parent: &str,
        now: i64,
        max_ttl: i64,
        stepped_up: bool,
    ) -> KmsResult<(Zeroizing<String>, TokenRecord)> {
        let parent_hash = hex(&token_hash(parent));
        let corrupt = || KmsError::new(ErrorCode::Unavailable, "store corrupt: token record");
        let read = |tx: &mut dyn Tx, hash: &str| -> KmsResult<Option<TokenRecord>> {
            tx.get_meta(TOKENS, hash)?
                .map(|raw| serde_json::from_slice::<TokenRecord>(&raw).map_err(|_| corrupt()))
                .transpose()
        };
        // Generated outside the transaction (it may be retried); the chain's root names it in the same one.
        let (token, mut rec) = self.fresh("")?;
        let hash = hex(&token_hash(&token));
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let parent = read(tx, &parent_hash)?.ok_or_else(unauthenticated)?;
            let expires = match parent.expires_at {
                Some(t) if t <= now => return Err(unauthenticated()),
                Some(t) => t.min(now + max_ttl),
                None => now + max_ttl,
            };
            // Sessions hang from the chain's first token, so that revoking it revokes them all, and ending one
            // session (a sign-out, a step-up that replaces it) leaves its siblings.
            let (root_hash, mut root) = match &parent.parent {
                None => (parent_hash.clone(), parent.clone()),
                Some(root_id) => {
                    let root_hash = tx
                        .get_meta(TOKEN_IDS, root_id)?
                        .map(|h| String::from_utf8(h).unwrap_or_default())
                        .ok_or_else(unauthenticated)?;
                    let root = read(tx, &root_hash)?.ok_or_else(unauthenticated)?;
                    (root_hash, root)
                }
            };
            let mut live = Vec::with_capacity(root.sessions.len() + 1);
            for id in std::mem::take(&mut root.sessions) {
                if tx.get_meta(TOKEN_IDS, &id)?.is_some() {
                    live.push(id);
                }
            }
            if live.len() >= MAX_SESSIONS {
                return Err(KmsError::new(
                    ErrorCode::Throttled,
                    "this token has opened 1000 sessions that are still live; sign some out first",
                ));
            }
            rec.identity = parent.identity.clone();
            rec.roles = parent.roles.clone();
            rec.policies = parent.policies.clone();
            rec.login_roles = parent.login_roles.clone();
            rec.login_policies = parent.login_policies.clone();
            rec.mfa = parent.mfa || stepped_up;
            rec.created_at = now;
            rec.expires_at = Some(expires);
            rec.via = Some("session".into());
            rec.parent = Some(root.token_id.clone());
            live.push(rec.token_id.clone());
            root.sessions = live;
            let encode = |r: &TokenRecord| {
                serde_json::to_vec(r)
                    .map_err(|_| KmsError::new(ErrorCode::Unavailable, "token encoding"))
            };
            tx.put_meta(TOKENS, &root_hash, &encode(&root)?)?;
            tx.put_meta(TOKENS, &hash, &encode(&rec)?)?;
            tx.put_meta(TOKEN_IDS, &rec.token_id, hash.as_bytes())?;
            Ok(())
        })?;
        // The root's record changed (its list of sessions), not its grants: no cache entry is stale.
        Ok((token, rec))
    }

    /// A new random token and a record naming `identity`, with nothing granted yet.
    fn fresh(&self, identity: &str) -> KmsResult<(Zeroizing<String>, TokenRecord)> {
        let mut raw = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(raw.as_mut())
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "random generator failed"))?;
        let mut token = Zeroizing::new(String::with_capacity(46));
        token.push_str("kw.");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(raw.as_ref(), &mut token);
        let mut id_raw = [0u8; 12];
        aws_lc_rs::rand::fill(&mut id_raw)
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "random generator failed"))?;
        Ok((
            token,
            TokenRecord {
                token_id: format!("tok_{}", hex(&id_raw)),
                identity: identity.to_string(),
                roles: Vec::new(),
                created_at: 0,
                expires_at: None,
                mfa: false,
                policies: Vec::new(),
                login_roles: Vec::new(),
                login_policies: Vec::new(),
                via: None,
                parent: None,
                sessions: Vec::new(),
            },
        ))
    }

    fn store_token(&self, token: &str, rec: &TokenRecord) -> KmsResult<()> {
        let hash = hex(&token_hash(token));
        let json = serde_json::to_vec(rec)
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "token encoding"))?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.put_meta(TOKENS, &hash, &json)?;
            tx.put_meta(TOKEN_IDS, &rec.token_id, hash.as_bytes())
        })?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn mint_inner(
        &self,
        identity: &str,
        roles: &[Role],
        policies: &[String],
        now: i64,
        ttl_seconds: Option<i64>,
        fixed: Option<&str>,
        mfa: bool,
    ) -> KmsResult<(Zeroizing<String>, TokenRecord)> {
        let (generated, mut rec) = self.fresh(identity)?;
        let token = match fixed {
            Some(t) => Zeroizing::new(t.to_string()),
            None => generated,
        };
        rec.roles = roles.iter().map(|r| r.name().to_string()).collect();
        rec.created_at = now;
        rec.expires_at = ttl_seconds.map(|t| now + t);
        rec.mfa = mfa;
        rec.policies = policies.to_vec();
        self.store_token(&token, &rec)?;
        Ok((token, rec))
    }

    /// Checks a bearer token.
    pub fn authenticate(&self, token: &str, now: i64) -> KmsResult<Arc<Principal>> {
        if token.is_empty() || token.len() > 256 {
            return Err(unauthenticated());
        }
        let hash = token_hash(token);
        let cached = if self.freshness.trusted() {
            self.cache.get(&hash)
        } else {
            None
        };
        let principal = match cached {
            Some(p) => p,
            None => {
                let (epoch, p) = self.read_principal(&hash)?;
                self.keep(hash, p.clone(), epoch);
                p
            }
        };
        if principal.expires_at.is_some_and(|t| t <= now) {
            return Err(unauthenticated());
        }
        Ok(principal)
    }

    /// A token's principal from the store, with the invalidation epoch seen before the read.
    fn read_principal(&self, hash: &[u8; 32]) -> KmsResult<(u64, Arc<Principal>)> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let rec = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(TOKENS, &hex(hash))
        })?
        .ok_or_else(unauthenticated)?;
        let rec: TokenRecord = serde_json::from_slice(&rec)
            .map_err(|_| KmsError::new(ErrorCode::Unavailable, "store corrupt: token record"))?;
        let mut roles: Vec<Role> = rec
            .roles
            .iter()
            .chain(&rec.login_roles)
            .filter_map(|r| Role::parse(r))
            .collect();
        roles.sort_by_key(|r| r.name());
        roles.dedup();
        let mut policies = rec.policies;
        for p in rec.login_policies {
            if !policies.contains(&p) {
                policies.push(p);
            }
        }
        Ok((
            epoch,
            Arc::new(Principal {
                name: rec.identity,
                roles,
                token_id: rec.token_id,
                expires_at: rec.expires_at,
                mfa: rec.mfa,
                policies,
            }),
        ))
    }

    /// Caches a principal read at `epoch`, unless an invalidation has happened since. The check and the
    /// insert hold the shard's lock, and an invalidation moves the epoch before it takes that lock to drop
    /// entries, so an entry is either refused here or dropped there.
    fn keep(&self, hash: [u8; 32], p: Arc<Principal>, epoch: u64) {
        self.cache
            .insert_when(hash, p, || self.epoch.load(Ordering::SeqCst) == epoch);
    }

    /// Drops cached principals that `stale` picks, after moving the epoch.
    fn invalidate(&self, stale: impl Fn(&Principal) -> bool) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.retain(|_, p| !stale(p));
    }

    /// Revokes a token by id; false if there was none.
    /// Revokes a token by id, with every session opened from it; false if there was none.
    pub fn revoke(&self, token_id: &str) -> KmsResult<bool> {
        let gone = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let Some(hash) = tx.get_meta(TOKEN_IDS, token_id)? else {
                return Ok(Vec::new());
            };
            let hash = String::from_utf8(hash).unwrap_or_default();
            let sessions = tx
                .get_meta(TOKENS, &hash)?
                .and_then(|raw| serde_json::from_slice::<TokenRecord>(&raw).ok())
                .map(|r| r.sessions)
                .unwrap_or_default();
            tx.delete_meta(TOKENS, &hash)?;
            tx.delete_meta(TOKEN_IDS, token_id)?;
            let mut gone = vec![token_id.to_string()];
            for id in sessions {
                if let Some(h) = tx.get_meta(TOKEN_IDS, &id)? {
                    tx.delete_meta(TOKENS, &String::from_utf8(h).unwrap_or_default())?;
                    tx.delete_meta(TOKEN_IDS, &id)?;
                    gone.push(id);
                }
            }
            Ok::<_, KmsError>(gone)
        })?;
        // Drop every cached principal of those tokens (the cache is keyed by hash).
        self.invalidate(|p| gone.contains(&p.token_id));
        Ok(!gone.is_empty())
    }

    /// Tokens past their expiry, at most `limit`: dead credentials, which the leading node deletes so that
    /// they do not pile up (every listing of an identity's tokens reads them all).
    pub fn expired(&self, now: i64, limit: usize) -> KmsResult<Vec<TokenRecord>> {
        Ok(
            transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.list_meta(TOKENS))?
                .into_iter()
                .filter_map(|(_, raw)| serde_json::from_slice::<TokenRecord>(&raw).ok())
                .filter(|r| r.expires_at.is_some_and(|t| t <= now))
                .take(limit)
                .collect(),
        )
    }

    /// Deletes the tokens named that are still expired at `now`; how many went.
    pub fn delete_expired(&self, token_ids: &[&str], now: i64) -> KmsResult<usize> {
        let deleted = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            let mut deleted = 0;
            for id in token_ids {
                let Some(hash) = tx.get_meta(TOKEN_IDS, id)? else {
                    continue;
                };
                let hash = String::from_utf8(hash).unwrap_or_default();
                let expired = tx
                    .get_meta(TOKENS, &hash)?
                    .and_then(|raw| serde_json::from_slice::<TokenRecord>(&raw).ok())
                    .is_some_and(|r| r.expires_at.is_some_and(|t| t <= now));
                if expired {
                    tx.delete_meta(TOKENS, &hash)?;
                    tx.delete_meta(TOKEN_IDS, id)?;
                    deleted += 1;
                }
            }
            Ok::<_, KmsError>(deleted)
        })?;
        self.invalidate(|p| token_ids.contains(&p.token_id.as_str()));
        Ok(deleted)
    }

    /// Inside an identity's change: rewrites the grants of each of its tokens (`Some`), or revokes them all
    /// (`None`, when the identity is deleted), so that the change holds for tokens already issued. Tokens
    /// carry their grants so that a request needs one lookup; other nodes forget the changed tokens through
    /// the store's change feed, and [`Auth::forget_identity`] does so here once the change is committed.
    /// Returns how many tokens were changed.
    pub fn regrant_in(
        tx: &mut dyn Tx,
        identity: &str,
        grants: Option<(&[String], &[String])>,
    ) -> KmsResult<usize> {
        let mut changed = 0;
        for (hash, raw) in tx.list_meta(TOKENS)? {
            let Ok(mut rec) = serde_json::from_slice::<TokenRecord>(&raw) else {
                continue;
            };
            if rec.identity != identity {
                continue;
            }
            match grants {
                Some((roles, policies)) => {
                    rec.roles = roles.to_vec();
                    rec.policies = policies.to_vec();
                    let json = serde_json::to_vec(&rec)
                        .map_err(|_| KmsError::new(ErrorCode::Unavailable, "token encoding"))?;
                    tx.put_meta(TOKENS, &hash, &json)?;
                }
                None => {
                    tx.delete_meta(TOKENS, &hash)?;
                    tx.delete_meta(TOKEN_IDS, &rec.token_id)?;
                }
            }
            changed += 1;
        }
        Ok(changed)
    }

    /// The records of an identity's tokens not yet expired, oldest first: ids and times, never the tokens
    /// (only their hashes are stored).
    pub fn tokens_of(&self, identity: &str, now: i64) -> KmsResult<Vec<TokenRecord>> {
        let mut out: Vec<TokenRecord> =
            transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.list_meta(TOKENS))?
                .into_iter()
                .filter_map(|(_, raw)| serde_json::from_slice::<TokenRecord>(&raw).ok())
                .filter(|r| r.identity == identity && r.expires_at.is_none_or(|t| t > now))
                .collect();
        out.sort_by(|a, b| (a.created_at, &a.token_id).cmp(&(b.created_at, &b.token_id)));
        Ok(out)
    }

    /// Tokens not yet expired, per identity (`root` included): what the access review counts.
    pub fn live_tokens(&self, now: i64) -> KmsResult<std::collections::BTreeMap<String, usize>> {
        let mut live = std::collections::BTreeMap::new();
        for (_, raw) in transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.list_meta(TOKENS))? {
            let Ok(rec) = serde_json::from_slice::<TokenRecord>(&raw) else {
                continue;
            };
            if rec.expires_at.is_none_or(|t| t > now) {
                *live.entry(rec.identity).or_insert(0) += 1;
            }
        }
        Ok(live)
    }

    /// Drops the cached principals of every token of an identity whose grants changed.
    pub fn forget_identity(&self, identity: &str) {
        self.invalidate(|p| p.name == identity);
    }

    /// Forgets the cached principal of a token whose stored record changed on another node; `hash_hex` is
    /// the record's name.
    pub fn forget(&self, hash_hex: &str) {
        let Some(bytes) = unhex(hash_hex) else { return };
        let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            return;
        };
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(&hash);
    }

    /// Drops every cached principal.
    pub fn forget_all(&self) {
        self.invalidate(|_| true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &std::path::Path) -> Auth {
        let store: Arc<dyn Store> =
            Arc::new(keyward_store_sqlite::SqliteStore::open(&dir.join("k.db")).unwrap());
        Auth::new(store, Arc::new(Freshness::new(false)))
    }

    #[test]
    fn a_principal_read_while_its_token_is_revoked_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let (token, rec) = auth.mint("app", &[Role::KeyUser], 0, None, None).unwrap();
        let hash = token_hash(&token);
        // A request reads the token's record; the revocation lands before it caches what it read.
        let (epoch, stale) = auth.read_principal(&hash).unwrap();
        assert!(auth.revoke(&rec.token_id).unwrap());
        auth.keep(hash, stale, epoch);
        assert_eq!(
            auth.authenticate(&token, 1).unwrap_err().code(),
            ErrorCode::Unauthenticated
        );
    }

    #[test]
    fn a_principal_read_while_its_identity_changes_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let (token, _) = auth
            .mint_with_mfa("app", &[Role::KeyUser], &[], 0, None, false)
            .unwrap();
        let hash = token_hash(&token);
        let (epoch, stale) = auth.read_principal(&hash).unwrap();
        let auditor = ["auditor".to_string()];
        transact(auth.store.as_ref(), |tx: &mut dyn Tx| {
            Auth::regrant_in(tx, "app", Some((&auditor, &[])))
        })
        .unwrap();
        auth.forget_identity("app");
        auth.keep(hash, stale, epoch);
        assert_eq!(auth.authenticate(&token, 1).unwrap().roles, [Role::Auditor]);
        // Without a change in between, what was read is kept.
        let (epoch, p) = auth.read_principal(&hash).unwrap();
        auth.keep(hash, p, epoch);
        assert!(auth.cache.contains(&hash));
    }

    #[test]
    fn a_sign_in_grants_beside_the_identitys_own_grants_and_reaches_only_its_own_identity() {
        use crate::identities::Identities;
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let ids = Identities::new(auth.store.clone());
        let rec = ids
            .federated("alice", "user", "jwt:corp", true, (&[], &[]), 0)
            .unwrap();
        assert_eq!(rec.source.as_deref(), Some("jwt:corp"));
        // Another provider, or the same name in another case, does not reach it; nothing is created unasked.
        for (name, via, create) in [
            ("alice", "ldap", true),
            ("ALICE", "jwt:corp", true),
            ("bob", "jwt:corp", false),
        ] {
            let e = ids
                .federated(name, "user", via, create, (&[], &[]), 0)
                .err()
                .unwrap();
            assert_eq!(e.code(), ErrorCode::Unauthenticated, "{name} {via}");
        }
        assert!(ids.get("bob").unwrap().is_none());
        let key_user = ["key-user".to_string()];
        let (token, _) = auth
            .mint_federated(&Federated {
                identity: &rec,
                roles: &key_user,
                policies: &[],
                now: 0,
                ttl: 60,
                mfa: false,
                via: "jwt:corp",
            })
            .unwrap();
        assert_eq!(auth.authenticate(&token, 1).unwrap().roles, [Role::KeyUser]);
        // A grant to the identity adds to the sign-in's; the sign-in's stay for the token's life.
        ids.regrant("alice", Some(&["auditor".to_string()]), None)
            .unwrap();
        auth.forget_identity("alice");
        let p = auth.authenticate(&token, 1).unwrap();
        assert!(p.roles.contains(&Role::Auditor) && p.roles.contains(&Role::KeyUser));
        assert_eq!(
            auth.authenticate(&token, 60).unwrap_err().code(),
            ErrorCode::Unauthenticated
        );
        // Deleting the identity revokes what it signed in with.
        ids.delete("alice").unwrap();
        auth.forget_identity("alice");
        assert!(auth.authenticate(&token, 1).is_err());
    }

    #[test]
    fn sessions_die_with_the_token_they_came_from_and_not_with_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let (parent, prec) = auth
            .mint("app", &[Role::KeyUser], 0, Some(3600), None)
            .unwrap();
        let (s1, r1) = auth.derive(&parent, 10, 600, false).unwrap();
        let (s2, r2) = auth.derive(&s1, 20, 7200, true).unwrap();
        // A session lives no longer than what opened it, and hangs from the chain's first token.
        assert_eq!((r1.expires_at, r2.expires_at), (Some(610), Some(610)));
        assert_eq!(r2.parent.as_deref(), Some(prec.token_id.as_str()));
        assert!(!r1.mfa && r2.mfa);
        assert_eq!(auth.authenticate(&s2, 30).unwrap().roles, [Role::KeyUser]);
        // Ending one session leaves its sibling.
        assert!(auth.revoke(&r1.token_id).unwrap());
        assert!(auth.authenticate(&s1, 30).is_err());
        assert!(auth.authenticate(&s2, 30).is_ok());
        // Revoking the first token revokes every session opened from it, cached or not.
        let (s3, _) = auth.derive(&parent, 40, 600, false).unwrap();
        assert!(auth.authenticate(&s3, 41).is_ok());
        assert!(auth.revoke(&prec.token_id).unwrap());
        for t in [&parent, &s2, &s3] {
            assert_eq!(
                auth.authenticate(t, 50).unwrap_err().code(),
                ErrorCode::Unauthenticated
            );
        }
        // A revoked or expired token opens nothing.
        assert!(auth.derive(&parent, 60, 600, false).is_err());
        let (short, _) = auth
            .mint("app", &[Role::KeyUser], 0, Some(10), None)
            .unwrap();
        assert!(auth.derive(&short, 10, 600, false).is_err());
    }
}
