//! Base64 fields.

use core::fmt;

use base64::Engine as _;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

const STD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a base64 string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<u8>, E> {
            // The message names no input: the value may be a secret.
            STD.decode(s).map_err(|_| E::custom("invalid base64"))
        }
    }
    d.deserialize_str(V)
}

/// Public binary data (ciphertexts, signatures, public keys).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl fmt::Debug for B64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decode(d).map(B64)
    }
}

/// Secret binary data (plaintexts, data keys, shared secrets): zeroized on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretB64(pub Zeroizing<Vec<u8>>);

impl SecretB64 {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretB64(Zeroizing::new(bytes))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretB64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretB64({} bytes, redacted)", self.0.len())
    }
}

impl Serialize for SecretB64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(STD.encode(self.0.as_slice()));
        s.serialize_str(&encoded)
    }
}

impl<'de> Deserialize<'de> for SecretB64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decode(d).map(SecretB64::new)
    }
}
