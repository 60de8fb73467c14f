//! Request handlers, one module per area of the API.

pub mod access_keys;
pub mod approvals;
pub mod audit;
pub mod crypto;
pub mod federation;
pub mod fields;
pub mod identities;
pub mod keys;
pub mod policies;
pub mod reports;
pub mod sys;
