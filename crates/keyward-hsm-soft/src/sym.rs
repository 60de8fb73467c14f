//! Symmetric AEADs (AES-GCM, SM4-GCM, TDES-CBC + HMAC-SHA-256) and HKDF.
//!
//! Sealed layout for every AEAD: `nonce || ciphertext || tag`. Nonces are drawn from the CSPRNG per message.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::AeadInOut;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use aws_lc_rs::hmac;
use keyward_hsm::{HsmError, HsmResult, SecretBytes, TDES_KEY_LEN};

use crate::keys::{Kind, SoftKey};
use crate::material::{fill, Sm4Gcm};

const GCM_TAG_LEN: usize = 16;
const TDES_IV_LEN: usize = 8;
const TDES_TAG_LEN: usize = 32;

pub(crate) fn aes_gcm_seal(
    key: &LessSafeKey,
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> HsmResult<()> {
    let mut nonce = [0u8; NONCE_LEN];
    fill(&mut nonce)?;
    out.reserve(NONCE_LEN + plaintext.len() + GCM_TAG_LEN);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let body = out
        .get_mut(start..)
        .ok_or(HsmError::Backend("buffer".into()))?;
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
        .map_err(|_| HsmError::Backend("AES-GCM seal failed".into()))?;
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

pub(crate) fn aes_gcm_open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> HsmResult<SecretBytes> {
    let (nonce, body) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or(HsmError::DecryptFailed)?;
    if body.len() < GCM_TAG_LEN {
        return Err(HsmError::DecryptFailed);
    }
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| HsmError::DecryptFailed)?;
    let mut buf = SecretBytes::from_slice(body);
    let len = key
        .open_in_place(nonce, Aad::from(aad), buf.expose_mut())
        .map_err(|_| HsmError::DecryptFailed)?
        .len();
    buf.expose_mut().truncate(len);
    Ok(buf)
}

fn sm4_seal(cipher: &Sm4Gcm, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> HsmResult<()> {
    let mut nonce = [0u8; 12];
    fill(&mut nonce)?;
    out.reserve(12 + plaintext.len() + GCM_TAG_LEN);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let body = out
        .get_mut(start..)
        .ok_or(HsmError::Backend("buffer".into()))?;
    let tag = cipher
        .encrypt_inout_detached(&Array::from(nonce), aad, body.into())
        .map_err(|_| HsmError::Backend("SM4-GCM seal failed".into()))?;
    out.extend_from_slice(tag.as_slice());
    Ok(())
}

fn sm4_open(cipher: &Sm4Gcm, aad: &[u8], sealed: &[u8]) -> HsmResult<SecretBytes> {
    let (nonce, body) = sealed.split_at_checked(12).ok_or(HsmError::DecryptFailed)?;
    let ct_len = body
        .len()
        .checked_sub(GCM_TAG_LEN)
        .ok_or(HsmError::DecryptFailed)?;
    let (ct, tag) = body.split_at(ct_len);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| HsmError::DecryptFailed)?;
    let tag: [u8; GCM_TAG_LEN] = tag.try_into().map_err(|_| HsmError::DecryptFailed)?;
    let mut buf = SecretBytes::from_slice(ct);
    cipher
        .decrypt_inout_detached(
            &Array::from(nonce),
            aad,
            buf.expose_mut().as_mut_slice().into(),
            &Array::from(tag),
        )
        .map_err(|_| HsmError::DecryptFailed)?;
    Ok(buf)
}

type TdesCbcEnc = cbc::Encryptor<des::TdesEde3>;
type TdesCbcDec = cbc::Decryptor<des::TdesEde3>;

fn tdes_tag(mac: &hmac::Key, aad: &[u8], iv_and_ct: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(mac);
    ctx.update(&(aad.len() as u64).to_be_bytes());
    ctx.update(aad);
    ctx.update(iv_and_ct);
    ctx.sign()
}

fn tdes_seal(
    key: &SoftKey,
    mac: &hmac::Key,
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> HsmResult<()> {
    use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
    let cipher_key = key
        .material
        .expose()
        .get(..TDES_KEY_LEN)
        .ok_or(HsmError::DecryptFailed)?;
    let mut iv = [0u8; TDES_IV_LEN];
    fill(&mut iv)?;
    let enc = TdesCbcEnc::new_from_slices(cipher_key, &iv)
        .map_err(|_| HsmError::Backend("TDES setup failed".into()))?;
    let ct = enc.encrypt_padded_vec::<cbc::cipher::block_padding::Pkcs7>(plaintext);
    let start = out.len();
    out.reserve(TDES_IV_LEN + ct.len() + TDES_TAG_LEN);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&ct);
    let tag = tdes_tag(
        mac,
        aad,
        out.get(start..).ok_or(HsmError::Backend("buffer".into()))?,
    );
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

fn tdes_open(key: &SoftKey, mac: &hmac::Key, aad: &[u8], sealed: &[u8]) -> HsmResult<SecretBytes> {
    use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
    let body_len = sealed
        .len()
        .checked_sub(TDES_TAG_LEN)
        .ok_or(HsmError::DecryptFailed)?;
    let (body, tag) = sealed.split_at(body_len);
    let mut ctx = hmac::Context::with_key(mac);
    ctx.update(&(aad.len() as u64).to_be_bytes());
    ctx.update(aad);
    ctx.update(body);
    let expected = ctx.sign();
    // Verify before decrypting: no padding oracle. Constant-time comparison.
    if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), tag).is_err() {
        return Err(HsmError::DecryptFailed);
    }
    let (iv, ct) = body
        .split_at_checked(TDES_IV_LEN)
        .ok_or(HsmError::DecryptFailed)?;
    let cipher_key = key
        .material
        .expose()
        .get(..TDES_KEY_LEN)
        .ok_or(HsmError::DecryptFailed)?;
    let dec = TdesCbcDec::new_from_slices(cipher_key, iv).map_err(|_| HsmError::DecryptFailed)?;
    let pt = dec
        .decrypt_padded_vec::<cbc::cipher::block_padding::Pkcs7>(ct)
        .map_err(|_| HsmError::DecryptFailed)?;
    Ok(SecretBytes::new(pt))
}

pub(crate) fn seal(
    key: &SoftKey,
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> HsmResult<()> {
    match &key.kind {
        Kind::AesGcm(k) => aes_gcm_seal(k, aad, plaintext, out),
        Kind::Sm4Gcm(k) => sm4_seal(k, aad, plaintext, out),
        Kind::Tdes { mac } => tdes_seal(key, mac, aad, plaintext, out),
        _ => Err(HsmError::IncorrectKeyUsage(
            "symmetric encryption needs a symmetric key",
        )),
    }
}

pub(crate) fn open(key: &SoftKey, aad: &[u8], sealed: &[u8]) -> HsmResult<SecretBytes> {
    match &key.kind {
        Kind::AesGcm(k) => aes_gcm_open(k, aad, sealed),
        Kind::Sm4Gcm(k) => sm4_open(k, aad, sealed),
        Kind::Tdes { mac } => tdes_open(key, mac, aad, sealed),
        _ => Err(HsmError::IncorrectKeyUsage(
            "symmetric decryption needs a symmetric key",
        )),
    }
}

struct OkmLen(usize);

impl aws_lc_rs::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

pub(crate) fn hkdf_sha256(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    len: usize,
) -> HsmResult<SecretBytes> {
    use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
    if len == 0 || len > 255 * 32 {
        return Err(HsmError::InvalidInput("HKDF output length out of range"));
    }
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, OkmLen(len))
        .map_err(|_| HsmError::InvalidInput("HKDF output length out of range"))?;
    let mut out = SecretBytes::zeroed(len);
    okm.fill(out.expose_mut())
        .map_err(|_| HsmError::Backend("HKDF failed".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::check_tdes_key;
    use keyward_hsm::KeySpec;

    #[test]
    fn degenerate_tdes_keys_are_refused() {
        let k = [7u8; 24];
        assert!(check_tdes_key(&k).is_err());
        let mut good = [0u8; 24];
        for (i, b) in good.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        assert!(check_tdes_key(&good).is_ok());
    }

    #[test]
    fn kind_of_spec_is_symmetric() {
        assert!(KeySpec::Tdes.aead_nonce_len() == Some(TDES_IV_LEN));
    }
}

/// HKDF salt of the AES-SIV key derived from an AES key for deterministic encryption.
const SIV_SALT: &[u8] = b"keyward:aes-siv:v1";

/// AES-256-SIV (RFC 5297, CMAC) under a 512-bit key derived from the AES key for this purpose only, so that
/// the key's own AES-GCM use and its deterministic use never share a key. RustCrypto's aes-siv: outside the
/// FIPS module, so a FIPS build refuses it.
fn siv_for(key: &crate::keys::SoftKey) -> HsmResult<aes_siv::siv::Aes256Siv> {
    use aes_siv::aead::KeyInit;
    if crate::FIPS_BUILD {
        return Err(HsmError::IncorrectKeyUsage(
            "deterministic encryption (AES-SIV) is outside the FIPS 140-3 validated module: refused in FIPS mode",
        ));
    }
    if key.aes_gcm().is_none() {
        return Err(HsmError::IncorrectKeyUsage(
            "deterministic encryption needs an AES key",
        ));
    }
    let derived = hkdf_sha256(key.material.expose(), SIV_SALT, b"", 64)?;
    aes_siv::siv::Aes256Siv::new_from_slice(derived.expose())
        .map_err(|_| HsmError::Backend("AES-SIV key".into()))
}

pub(crate) fn siv_seal(
    key: &crate::keys::SoftKey,
    aad: &[u8],
    plaintext: &[u8],
) -> HsmResult<Vec<u8>> {
    siv_for(key)?
        .encrypt([aad], plaintext)
        .map_err(|_| HsmError::Backend("AES-SIV encryption failed".into()))
}

pub(crate) fn siv_open(
    key: &crate::keys::SoftKey,
    aad: &[u8],
    ciphertext: &[u8],
) -> HsmResult<SecretBytes> {
    let plain = siv_for(key)?
        .decrypt([aad], ciphertext)
        .map_err(|_| HsmError::DecryptFailed)?;
    Ok(SecretBytes::from(zeroize::Zeroizing::new(plain)))
}

#[cfg(test)]
mod siv_tests {
    use aes_siv::aead::KeyInit;

    /// RFC 5297, A.1 (deterministic authenticated encryption): the crate's CMAC-SIV construction, which the
    /// HSM runs with a 512-bit key.
    #[test]
    fn aes_siv_matches_rfc_5297_a1() {
        let key = hex::decode("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .unwrap();
        let ad = hex::decode("101112131415161718191a1b1c1d1e1f2021222324252627").unwrap();
        let pt = hex::decode("112233445566778899aabbccddee").unwrap();
        let mut siv = aes_siv::siv::Aes128Siv::new_from_slice(&key).unwrap();
        let out = siv.encrypt([&ad], &pt).unwrap();
        assert_eq!(
            hex::encode(&out),
            "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c"
        );
        assert_eq!(siv.decrypt([&ad], &out).unwrap(), pt);
    }

    #[test]
    fn deterministic_encryption_is_deterministic_bound_and_authenticated() {
        let key = crate::keys::SoftKey::generate(keyward_hsm::KeySpec::Aes256).unwrap();
        if crate::FIPS_BUILD {
            assert!(super::siv_seal(&key, b"aad", b"value").is_err());
            return;
        }
        let a = super::siv_seal(&key, b"aad", b"value").unwrap();
        assert_eq!(a, super::siv_seal(&key, b"aad", b"value").unwrap());
        assert_ne!(a, super::siv_seal(&key, b"aaD", b"value").unwrap());
        assert_eq!(
            super::siv_open(&key, b"aad", &a).unwrap().expose(),
            b"value"
        );
        let mut bad = a.clone();
        bad[20] ^= 1;
        assert!(super::siv_open(&key, b"aad", &bad).is_err());
        assert!(super::siv_open(&key, b"other", &a).is_err());
        let other = crate::keys::SoftKey::generate(keyward_hsm::KeySpec::Aes256).unwrap();
        assert_ne!(a, super::siv_seal(&other, b"aad", b"value").unwrap());
    }
}
