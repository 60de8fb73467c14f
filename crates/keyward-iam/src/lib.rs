//! Who may do what: the identity and access domain of Keyward, beneath every front end.
//!
//! The REST API, and every protocol front end after it, authorize through this crate and nothing else, so
//! that a rule (which actions a role allows, how a policy matches a key, which names are reserved, that a
//! policy that cannot be read refuses the request) is written once and no door can forget it. It knows
//! nothing of HTTP; it reads and writes through the store trait.

pub mod authz;
pub mod names;
pub mod policies;
pub mod policy;

pub use keyward_core::{quoted, shown};
