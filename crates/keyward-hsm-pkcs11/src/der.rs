//! The few DER structures the token boundary needs: SubjectPublicKeyInfo from a token's public attributes,
//! ECDSA signatures from PKCS#11's raw `r || s`, and the points and curve names inside them. Encoding only
//! rearranges bytes the token or the caller produced; nothing here computes on key material.

use keyward_hsm::{HsmError, HsmResult, KeySpec};

/// `id-ecPublicKey`.
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `rsaEncryption` with its NULL parameters.
const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// The curve's OID as DER: what `CKA_EC_PARAMS` holds.
pub fn curve_oid(spec: KeySpec) -> Option<&'static [u8]> {
    match spec {
        KeySpec::EccNistP256 => Some(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        KeySpec::EccNistP384 => Some(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
        KeySpec::EccNistP521 => Some(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]),
        _ => None,
    }
}

/// Size of a field element (and of `r` and `s`) of the curve.
pub fn field_len(spec: KeySpec) -> Option<usize> {
    match spec {
        KeySpec::EccNistP256 => Some(32),
        KeySpec::EccNistP384 => Some(48),
        KeySpec::EccNistP521 => Some(66),
        _ => None,
    }
}

use keyward_hsm::der::tlv;

/// A non-negative INTEGER from big-endian bytes.
fn uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        bytes.get(skip..).unwrap_or_default()
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(0x02, &content)
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

/// The private parts of a PKCS#8 `PrivateKeyInfo`: the EC scalar, or RSA's eight integers in
/// `RSAPrivateKey` order (n, e, d, p, q, dp, dq, qinv), leading zeros stripped. The caller has already had
/// the structure, curve and size checked by the software HSM; this only takes it apart, with RustCrypto's
/// DER readers.
pub fn pkcs8_private_parts(pkcs8: &[u8], rsa: bool) -> HsmResult<Vec<Vec<u8>>> {
    use der::{Decode, Reader};
    let bad = |_| HsmError::InvalidInput("malformed PKCS#8 private key");
    let info = pkcs8::PrivateKeyInfoRef::from_der(pkcs8).map_err(bad)?;
    let private = info.private_key.as_bytes();
    if !rsa {
        let ec = sec1::EcPrivateKey::from_der(private).map_err(bad)?;
        return Ok(vec![ec.private_key.to_vec()]);
    }
    let mut reader = der::SliceReader::new(private).map_err(bad)?;
    let parts = reader
        .sequence(|r| {
            let _version = der::asn1::UintRef::decode(r)?;
            (0..8)
                .map(|_| der::asn1::UintRef::decode(r).map(|u| u.as_bytes().to_vec()))
                .collect::<der::Result<Vec<_>>>()
        })
        .map_err(bad)?;
    reader.finish().map_err(bad)?;
    Ok(parts)
}

/// SPKI of an RSA public key from `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`.
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let key = seq(&[&uint(modulus), &uint(exponent)]);
    seq(&[&seq(&[RSA_ENCRYPTION]), &bit_string(&key)])
}

/// SPKI of an EC public key from `CKA_EC_POINT` (an OCTET STRING holding the uncompressed point).
pub fn ec_spki(spec: KeySpec, ec_point: &[u8]) -> HsmResult<Vec<u8>> {
    let oid = curve_oid(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
    // Tokens differ: most wrap the point in an OCTET STRING as the standard says, a few return it bare.
    let point = match <&der::asn1::OctetStringRef as der::Decode>::from_der(ec_point) {
        Ok(inner) if inner.as_bytes().first() == Some(&0x04) => inner.as_bytes(),
        _ => ec_point,
    };
    Ok(seq(&[&seq(&[EC_PUBLIC_KEY, oid]), &bit_string(point)]))
}

/// The uncompressed point inside an EC SPKI (for ECDH's peer key).
pub fn spki_point(spki: &[u8]) -> HsmResult<&[u8]> {
    use der::Decode;
    spki::SubjectPublicKeyInfoRef::from_der(spki)
        .ok()
        .and_then(|info| info.subject_public_key.as_bytes())
        .ok_or(HsmError::InvalidInput("malformed public key"))
}

/// DER `ECDSA-Sig-Value` from PKCS#11's fixed-width `r || s`.
pub fn ecdsa_der(raw: &[u8]) -> HsmResult<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(HsmError::Backend(
            "the token returned a malformed ECDSA signature".into(),
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(seq(&[&uint(r), &uint(s)]))
}

/// The `DigestInfo` prefix of PKCS#1 v1.5 signatures for a digest length (SHA-256, -384, -512).
pub fn digest_info_prefix(digest_len: usize) -> Option<&'static [u8]> {
    match digest_len {
        32 => Some(&[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ]),
        48 => Some(&[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ]),
        64 => Some(&[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn integers_keep_their_sign_and_lengths_grow_past_127() {
        assert_eq!(uint(&[0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(uint(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0, 0]), vec![0x02, 0x01, 0x00]);
        let long = tlv(0x04, &[0u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        // Read back by an independent reader.
        let body = <&der::asn1::OctetStringRef as der::Decode>::from_der(&long).unwrap();
        assert_eq!(body.as_bytes(), &[0u8; 200][..]);
    }

    #[test]
    fn an_ecdsa_signature_converts_to_der() {
        let mut raw = vec![0u8; 64];
        raw[31] = 1;
        raw[32] = 0x80;
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert!(ecdsa_der(&[1, 2, 3]).is_err());
    }
}
