//! Secret byte buffers.

use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Bytes that must not outlive their use: key material, plaintexts, shared secrets.
///
/// Zeroized on drop; `Debug` prints only the length. Turning it into plain bytes is the explicit
/// [`SecretBytes::expose`] so every place that lets a secret out can be found with grep. Comparison takes
/// the same time wherever two buffers of one length first differ, so that comparing a secret with a guess
/// tells nothing of how close the guess came (the length is not secret).
#[derive(Clone, Default)]
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

impl ConstantTimeEq for SecretBytes {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // `subtle` answers "unequal" at once for slices of different lengths, which are not secret.
        self.0.as_slice().ct_eq(other.0.as_slice())
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for SecretBytes {}

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

#[cfg(test)]
mod tests {
    use super::SecretBytes;

    fn constant_time<T: subtle::ConstantTimeEq + Eq>() {}

    #[test]
    fn secrets_compare_in_constant_time() {
        constant_time::<SecretBytes>();
        let a = SecretBytes::from_slice(b"0123456789abcdef");
        assert_eq!(a, SecretBytes::from_slice(b"0123456789abcdef"));
        assert_ne!(a, SecretBytes::from_slice(b"0123456789abcdeX"));
        assert_ne!(a, SecretBytes::from_slice(b"X123456789abcdef"));
        assert_ne!(a, SecretBytes::from_slice(b"0123456789abcde"));
        assert_eq!(SecretBytes::default(), SecretBytes::zeroed(0));
    }
}
