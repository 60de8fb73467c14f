//! Who may do what: the identity and access domain of Keyward, beneath every front end.
//!
//! The REST API, and every protocol front end after it, authorize through this crate and nothing else, so
//! that a rule (which actions a role allows, how a policy matches a key, which names are reserved, that a
//! policy that cannot be read refuses the request) is written once and no door can forget it. It knows
//! nothing of HTTP; it reads and writes through the store trait. Tokens (`auth`: issued, hashed, cached and
//! revoked) and TOTP (`totp`) live here too, so that every front end authenticates the same way.

pub mod access;
pub mod access_keys;
pub mod approvals;
pub mod auth;
pub mod authz;
pub mod identities;
pub mod jwt;
pub mod ldap;
pub mod limiter;
pub mod names;
pub mod operations;
pub mod policies;
pub mod policy;
pub mod totp;

pub use keyward_core::audit::{hex, unhex};
pub use keyward_core::{quoted, shown};

/// The identity and access repositories over one engine's store, as every front end holds them: a door gets
/// its tokens, policies, identities, approvals and operation markers here, never from the store itself.
pub struct Iam {
    /// Tokens: issued, hashed, cached, revoked.
    pub auth: auth::Auth,
    /// Policy documents, compiled and cached.
    pub policies: policies::Policies,
    /// Identities and their credentials.
    pub identities: identities::Identities,
    /// Requests held for quorum approval.
    pub approvals: approvals::Approvals,
    /// Markers of multi-step operations in progress.
    pub operations: operations::Operations,
    /// Access keys, for protocols that sign requests.
    pub access_keys: access_keys::AccessKeys,
    /// Trusted JWT issuers, and the keys fetched from them.
    pub issuers: jwt::Issuers,
    /// The directory people sign in with.
    pub directory: ldap::Directory,
}

impl Iam {
    /// The repositories over `kms`'s store, with its freshness guard for the caches.
    pub fn open(kms: &keyward_core::Kms) -> Iam {
        let store = kms.store_handle();
        Iam {
            auth: auth::Auth::new(store.clone(), kms.freshness()),
            policies: policies::Policies::new(store.clone(), kms.freshness()),
            identities: identities::Identities::new(store.clone()),
            approvals: approvals::Approvals::new(store.clone()),
            operations: operations::Operations::new(store.clone()),
            access_keys: access_keys::AccessKeys::new(store.clone(), kms.freshness()),
            issuers: jwt::Issuers::new(store.clone()),
            directory: ldap::Directory::new(store),
        }
    }

    /// Drops what this node caches of an identity whose grants changed or that was deleted: its tokens'
    /// principals and its access keys'.
    pub fn forget_identity(&self, identity: &str) {
        self.auth.forget_identity(identity);
        self.access_keys.forget_identity(identity);
    }
}
