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
pub mod policies;
pub mod policy;
pub mod totp;

pub use keyward_core::{quoted, shown};

/// Lower-case hex, as token hashes and ids are stored.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
