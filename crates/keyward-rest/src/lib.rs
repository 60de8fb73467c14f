//! Keyward's REST API v1 (`docs/API.md`), one front end over the KMS core and the identity and access
//! domain: [`app`] the state, request pipeline and router, [`handlers`] one module per area of the API,
//! [`pki`] CSRs and certificates, [`metrics`] and [`limiter`] the operational side, [`config`] the settings,
//! [`chain`] the node's watch over its audit chain. The process around it (listeners, TLS, signals, the
//! background rounds) is `keyward-server`'s.

pub mod app;
pub mod chain;
pub mod config;
pub mod convert;
pub mod error;
pub mod handlers;
pub mod inflight;
pub mod log;
pub mod metrics;
pub mod pki;
pub mod root_of_trust;

pub use app::{router, App, AppState};
pub use config::{Config, Overrides};
/// Actions, roles and policies live beneath the HTTP layer, shared by every front end.
pub use keyward_iam::{auth, authz, limiter, policy, totp};
pub use root_of_trust::{pkcs11_init, pkcs11_unseal, PKCS11_ROOT_OF_TRUST};
