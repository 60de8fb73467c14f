//! The KMS core of Keyward: key hierarchy, sealing, key lifecycle, ciphertext format and the cryptographic
//! operations, over the HSM layer ([`keyward_hsm::Hsm`]) and the storage layer ([`keyward_store::Store`]).
//!
//! It knows nothing of HTTP or SQL. The server maps requests onto [`Kms`] methods and [`KmsError`] codes onto
//! HTTP statuses; stores and HSMs plug in behind their traits.

pub mod audit;
pub mod backup;
mod cache;
pub mod ciphertext;
mod clock;
pub mod cluster;
mod engine;
mod error;
pub mod fields;
mod freshness;
mod import;
mod lifecycle;
mod model;
mod ops;
mod protect;
mod records;
pub mod secrets;
mod shamir;

/// The one cache type of the service: keys here, tokens and policies in `keyward-iam`.
pub use cache::ShardedMap;
pub use clock::{Clock, ManualClock, SystemClock, DAY};
pub use engine::{CacheStats, Kms, KmsConfig, RootOfTrust, SealStatus};
pub use error::{quoted, shown, ErrorCode, KmsError, KmsResult, QUOTED_MAX};
pub use import::ImportParameters;
pub use lifecycle::{
    CreateKey, DueKind, DueWork, KeyFilter, UpdateKey, VersionAction, PENDING_DAYS, ROTATION_DAYS,
};
pub use model::{KeyInfo, KeyState, Origin, VersionInfo, VersionState};
pub use ops::{
    Context, DataKey, DataKeyPair, Decapsulated, Decrypted, Derived, Encrypted, Maced, PublicKey,
    Signed, KEM_DATA_KEY_INFO,
};
pub use protect::{
    valid_blind_index_bits, FieldInput, FieldMode, ProtectedField, SealedField,
    DEFAULT_BLIND_INDEX_BITS, FIELD_CONTEXT_KEY, MAX_FIELD_ITEMS, MAX_FPE_TWEAK,
};

pub use keyward_hsm::{
    EncryptionAlgorithm, KeySpec, KeyUsage, MacAlgorithm, SecretBytes, SignInput, SigningAlgorithm,
};
