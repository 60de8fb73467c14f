//! Raw key material: the checks and constructors the key table and the operations share, and the random
//! source. A leaf: `keys`, `sym` and `asym` use it, and it uses none of them.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::KeyInit;
use keyward_hsm::{HsmError, HsmResult};
use zeroize::Zeroize;

/// Fills `out` from the CSPRNG.
pub(crate) fn fill(out: &mut [u8]) -> HsmResult<()> {
    aws_lc_rs::rand::fill(out).map_err(|_| HsmError::Backend("random generator failed".into()))
}

/// SM4 in GCM mode with a 96-bit nonce and a 128-bit tag.
pub(crate) type Sm4Gcm = aes_gcm::AesGcm<sm4::Sm4, U12>;

pub(crate) fn sm4_gcm(key: &[u8]) -> HsmResult<Sm4Gcm> {
    Sm4Gcm::new_from_slice(key).map_err(|_| HsmError::InvalidInput("SM4 keys are 16 bytes"))
}

/// Rejects TDES keys that collapse to single DES (K1 = K2 or K2 = K3).
pub(crate) fn check_tdes_key(key: &[u8]) -> HsmResult<()> {
    let strip = |b: &[u8]| b.iter().map(|x| x & 0xfe).collect::<Vec<u8>>();
    let (k1, rest) = key
        .split_at_checked(8)
        .ok_or(HsmError::InvalidInput("TDES keys are 24 bytes"))?;
    let (k2, k3) = rest
        .split_at_checked(8)
        .ok_or(HsmError::InvalidInput("TDES keys are 24 bytes"))?;
    if k3.len() != 8 {
        return Err(HsmError::InvalidInput("TDES keys are 24 bytes"));
    }
    let (mut a, mut b, mut c) = (strip(k1), strip(k2), strip(k3));
    let degenerate = a == b || b == c;
    a.zeroize();
    b.zeroize();
    c.zeroize();
    if degenerate {
        return Err(HsmError::InvalidInput("TDES key degenerates to single DES"));
    }
    Ok(())
}

/// True when an EC SPKI names its curve by OID. Explicit curve parameters are refused: they are how
/// invalid-curve and cofactor attacks get a foreign group past a parser (Wycheproof ECDH, "UnnamedCurve").
pub(crate) fn ec_spki_has_named_curve(spki: &[u8]) -> bool {
    use k256::pkcs8::der::{Decode, Tag, Tagged};
    use k256::pkcs8::spki::SubjectPublicKeyInfoRef;
    match SubjectPublicKeyInfoRef::from_der(spki) {
        Ok(info) => info
            .algorithm
            .parameters
            .is_some_and(|p| p.tag() == Tag::ObjectIdentifier),
        Err(_) => false,
    }
}
