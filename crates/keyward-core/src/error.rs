//! The one error type of the KMS core, whose codes are the error codes of the API contract.
//!
//! Messages are written for the operator reading them: they say what was refused and why, name keys and
//! versions by id, and never contain key material, plaintext or tokens.

use core::fmt;

use keyward_hsm::HsmError;
use keyward_store::StoreError;

/// The stable error codes of `API.md`, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: malformed input.
    ValidationError,
    /// 400: the operation or algorithm does not fit the key.
    IncorrectKeyUsage,
    /// 400: ciphertext does not parse or authenticate, or the context is wrong.
    InvalidCiphertext,
    /// 400: imported material is not the material that was deleted from the key.
    IncorrectKeyMaterial,
    /// 401.
    Unauthenticated,
    /// 403.
    AccessDenied,
    /// 404.
    NotFound,
    /// 409: alias or name taken.
    AlreadyExists,
    /// 409.
    KeyDisabled,
    /// 409.
    KeyPendingDeletion,
    /// 409.
    KeyDestroyed,
    /// 409: any other forbidden lifecycle transition.
    InvalidState,
    /// 408: the request body did not arrive in time, or was cut short: the client's side, never retried as
    /// the service's fault.
    RequestTimeout,
    /// 413.
    PayloadTooLarge,
    /// 415: a JSON endpoint was sent another media type. Only `application/json` is read, so a cross-site
    /// form post (which a browser may send without asking) never reaches the API.
    UnsupportedMediaType,
    /// 429.
    Throttled,
    /// 503.
    Sealed,
    /// 503: storage, HSM or audit cannot be written. Fail closed.
    Unavailable,
}

impl ErrorCode {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "ValidationError",
            ErrorCode::IncorrectKeyUsage => "IncorrectKeyUsage",
            ErrorCode::InvalidCiphertext => "InvalidCiphertext",
            ErrorCode::IncorrectKeyMaterial => "IncorrectKeyMaterial",
            ErrorCode::Unauthenticated => "Unauthenticated",
            ErrorCode::AccessDenied => "AccessDenied",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::AlreadyExists => "AlreadyExists",
            ErrorCode::KeyDisabled => "KeyDisabled",
            ErrorCode::KeyPendingDeletion => "KeyPendingDeletion",
            ErrorCode::KeyDestroyed => "KeyDestroyed",
            ErrorCode::InvalidState => "InvalidState",
            ErrorCode::RequestTimeout => "RequestTimeout",
            ErrorCode::PayloadTooLarge => "PayloadTooLarge",
            ErrorCode::UnsupportedMediaType => "UnsupportedMediaType",
            ErrorCode::Throttled => "Throttled",
            ErrorCode::Sealed => "Sealed",
            ErrorCode::Unavailable => "Unavailable",
        }
    }

    /// The HTTP status the API answers with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::ValidationError
            | ErrorCode::IncorrectKeyUsage
            | ErrorCode::InvalidCiphertext
            | ErrorCode::IncorrectKeyMaterial => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::AccessDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists
            | ErrorCode::KeyDisabled
            | ErrorCode::KeyPendingDeletion
            | ErrorCode::KeyDestroyed
            | ErrorCode::InvalidState => 409,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Throttled => 429,
            ErrorCode::Sealed | ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most characters of any input a message repeats.
pub const QUOTED_MAX: usize = 64;

/// Input as a refusal repeats it: escaped (no control character reaches a terminal or a log) and cut to
/// [`QUOTED_MAX`] characters, so that a refusal stays one readable line whatever was sent, and a client
/// cannot make the service send back (or log) a megabyte it chose.
pub fn shown(input: &str) -> String {
    let mut out: String = input
        .chars()
        .take(QUOTED_MAX)
        .collect::<String>()
        .escape_debug()
        .collect();
    if input.chars().nth(QUOTED_MAX).is_some() {
        out.push('…');
    }
    out
}

/// [`shown`] between single quotes.
pub fn quoted(input: &str) -> String {
    format!("'{}'", shown(input))
}

/// A refused or failed KMS operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsError {
    code: ErrorCode,
    message: String,
}

impl KmsError {
    /// An error with a code and an operator-facing message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        KmsError {
            code,
            message: message.into(),
        }
    }

    /// The API error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn validation(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, m)
    }
    pub(crate) fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, m)
    }
    pub(crate) fn invalid_state(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, m)
    }
    pub(crate) fn usage(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::IncorrectKeyUsage, m)
    }
    pub(crate) fn invalid_ciphertext() -> Self {
        Self::new(
            ErrorCode::InvalidCiphertext,
            "ciphertext does not parse or authenticate, or the encryption context differs",
        )
    }
    /// Refused because no key material is available until the service is unsealed.
    pub fn sealed() -> Self {
        Self::new(ErrorCode::Sealed, "the service is sealed")
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for KmsError {}

impl From<StoreError> for KmsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => KmsError::new(ErrorCode::AlreadyExists, m),
            other => KmsError::new(ErrorCode::Unavailable, other.to_string()),
        }
    }
}

impl From<HsmError> for KmsError {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::IncorrectKeyUsage(m) => KmsError::usage(m),
            HsmError::InvalidInput(m) => KmsError::validation(m),
            HsmError::DecryptFailed => KmsError::invalid_ciphertext(),
            HsmError::NotExtractable => KmsError::invalid_state("key material is not exportable"),
            HsmError::UnsupportedSpec(s) => {
                KmsError::usage(format!("key spec {s} is not supported by the HSM"))
            }
            e @ HsmError::OutsideFipsModule(_) => KmsError::usage(e.to_string()),
            other => KmsError::new(ErrorCode::Unavailable, other.to_string()),
        }
    }
}

/// Result of a KMS operation.
pub type KmsResult<T> = Result<T, KmsError>;
