//! Keyward's self-describing symmetric ciphertext format.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (0x01)
//! 1       1     algorithm (1 AES-256-GCM, 2 AES-128-GCM, 3 SM4-GCM, 4 TDES-CBC-HMAC-SHA-256,
//!               5 AES-256-SIV: deterministic, under a key derived from an AES key; no nonce)
//! 2       16    key id (UUID, binary)
//! 18      4     key version (big-endian u32)
//! 22      n     nonce (12 bytes for GCM, 8-byte IV for TDES)
//! 22+n    ...   ciphertext
//! end-t   t     tag (16 bytes for GCM, 32 for TDES)
//! ```
//!
//! The 22-byte header followed by the canonical encoding of the encryption context is the AEAD's associated
//! data, so changing the format version, algorithm, key id, version or context makes authentication fail; the
//! nonce is authenticated by GCM itself. The canonical context is the pairs sorted by key (bytewise), each
//! as `u32be(len(k)) || k || u32be(len(v)) || v`.

use std::collections::BTreeMap;

use keyward_hsm::KeySpec;

use crate::error::{KmsError, KmsResult};

/// The current format version.
pub const FORMAT_V1: u8 = 1;
/// Length of the authenticated header.
pub const HEADER_LEN: usize = 22;

/// The algorithm byte of a deterministic (AES-SIV) ciphertext of an AES key: `header ‖ synthetic IV (16) ‖
/// ciphertext`, the same header and associated data as the key's other ciphertexts.
pub const DETERMINISTIC: u8 = 5;

/// The algorithm byte of the header.
pub fn algorithm_id(spec: KeySpec) -> Option<u8> {
    match spec {
        KeySpec::SymmetricDefault | KeySpec::Aes256 => Some(1),
        KeySpec::Aes128 => Some(2),
        KeySpec::Sm4 => Some(3),
        KeySpec::Tdes => Some(4),
        _ => None,
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Algorithm byte.
    pub algorithm: u8,
    /// Key id bytes.
    pub key_id: [u8; 16],
    /// Key version.
    pub version: u32,
}

impl Header {
    /// Writes the header into `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_V1);
        out.push(self.algorithm);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.version.to_be_bytes());
    }

    /// Writes the header into a fixed buffer (no allocation on the hot path).
    pub fn write_into(&self, out: &mut [u8; HEADER_LEN]) {
        let (head, version) = out.split_at_mut(18);
        let (fixed, id) = head.split_at_mut(2);
        fixed.copy_from_slice(&[FORMAT_V1, self.algorithm]);
        id.copy_from_slice(&self.key_id);
        version.copy_from_slice(&self.version.to_be_bytes());
    }

    /// Parses the header of a ciphertext; returns it with the rest (`nonce || ciphertext || tag`).
    pub fn parse(ciphertext: &[u8]) -> KmsResult<(Header, &[u8])> {
        let (head, rest) = ciphertext
            .split_at_checked(HEADER_LEN)
            .ok_or_else(KmsError::invalid_ciphertext)?;
        let [format, algorithm, id @ .., v0, v1, v2, v3] = head else {
            return Err(KmsError::invalid_ciphertext());
        };
        if *format != FORMAT_V1 {
            return Err(KmsError::invalid_ciphertext());
        }
        let key_id: [u8; 16] = id.try_into().map_err(|_| KmsError::invalid_ciphertext())?;
        Ok((
            Header {
                algorithm: *algorithm,
                key_id,
                version: u32::from_be_bytes([*v0, *v1, *v2, *v3]),
            },
            rest,
        ))
    }
}

/// Appends the canonical encoding of an encryption context.
pub fn encode_context(context: &BTreeMap<String, String>, out: &mut Vec<u8>) {
    // BTreeMap iterates in bytewise key order, which is the canonical order.
    for (k, v) in context {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
}

/// The associated data for a ciphertext: header followed by the canonical context.
pub fn associated_data<'a>(
    header: &'a [u8],
    context: &BTreeMap<String, String>,
    buf: &'a mut Vec<u8>,
) -> &'a [u8] {
    if context.is_empty() {
        return header;
    }
    buf.clear();
    buf.extend_from_slice(header);
    encode_context(context, buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = Header {
            algorithm: 1,
            key_id: [7; 16],
            version: 0x0102_0304,
        };
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(out.len(), HEADER_LEN);
        let mut fixed = [0u8; HEADER_LEN];
        h.write_into(&mut fixed);
        assert_eq!(&out[..], &fixed[..]);
        out.extend_from_slice(b"body");
        let (parsed, rest) = Header::parse(&out).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(rest, b"body");
        assert!(Header::parse(&out[..21]).is_err());
        let mut bad = out.clone();
        bad[0] = 2;
        assert!(Header::parse(&bad).is_err());
    }

    #[test]
    fn context_encoding_is_canonical_and_unambiguous() {
        let a = BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]);
        let mut x = Vec::new();
        encode_context(&a, &mut x);
        assert_eq!(x, b"\0\0\0\x01a\0\0\0\x011\0\0\0\x01b\0\0\0\x012");
        // Moving a byte between key and value changes the encoding.
        let b = BTreeMap::from([("ab".to_string(), "".to_string())]);
        let c = BTreeMap::from([("a".to_string(), "b".to_string())]);
        let (mut eb, mut ec) = (Vec::new(), Vec::new());
        encode_context(&b, &mut eb);
        encode_context(&c, &mut ec);
        assert_ne!(eb, ec);
    }
}
