//! The network side of signing in with the enterprise's identities.
//!
//! The rules (which issuer is trusted, which claims map to which grants, how a directory's groups become
//! roles) live in `keyward-iam`, beside every other access rule; this crate only talks to the providers:
//! it fetches an issuer's signing keys over HTTPS and binds to and searches a directory. Every exchange has
//! a timeout, and every failure is a sentence an operator can act on.

pub mod directory;
pub mod jwks;
pub mod oidc;
