//! Secret byte buffers.

use core::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Bytes that must not outlive their use: key material, plaintexts, shared secrets.
///
/// Zeroized on drop; `Debug` prints only the length. Turning it into plain bytes is the explicit
/// [`SecretBytes::expose`] so every place that lets a secret out can be found with grep.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of a buffer; the caller must not keep a copy.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// Copies a slice into a new secret buffer.
    pub fn from_slice(bytes: &[u8]) -> Self {
        SecretBytes(Zeroizing::new(bytes.to_vec()))
    }

    /// A zero-filled buffer of `len` bytes, to be filled in place.
    pub fn zeroed(len: usize) -> Self {
        SecretBytes(Zeroizing::new(vec![0u8; len]))
    }

    /// The secret bytes. Callers must not log, format or persist them unprotected.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access for filling in place.
    pub fn expose_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(v: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(v)
    }
}
