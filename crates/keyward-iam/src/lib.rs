//! Who may do what: the identity and access domain of Keyward, beneath every front end.
//!
//! The REST API, and every protocol front end after it, authorize through this crate and nothing else, so
//! that a rule (which actions a role allows, how a policy matches a key, which names are reserved, that a
//! policy that cannot be read refuses the request) is written once and no door can forget it. It knows
//! nothing of HTTP; it reads and writes through the store trait. Tokens (`auth`: issued, hashed, cached and
//! revoked) and TOTP (`totp`) live here too, so that every front end authenticates the same way.

pub mod approvals;
pub mod auth;
pub mod authz;
pub mod identities;
pub mod names;
pub mod operations;
pub mod policies;
pub mod policy;
pub mod totp;

pub use keyward_core::audit::{hex, unhex};
pub use keyward_core::{quoted, shown};
