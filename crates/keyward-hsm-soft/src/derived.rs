//! Keys the software HSM derives from a symmetric key for one purpose only, so that a key's own AEAD use
//! and its field-protection uses (format-preserving encryption, keyed search hashes) never share key
//! material. The derived keys live only for the call that needs them.

use aes::Aes256;
use fpe::ff1::{FlexibleNumeralString, FF1};
use hmac::{KeyInit, Mac};
use keyward_hsm::{HsmError, HsmResult, KeySpec};
use zeroize::Zeroizing;

use crate::keys::SoftKey;
use crate::sym::hkdf_sha256;

/// HKDF salt of the FF1 key derived from an AES key.
const FF1_SALT: &[u8] = b"keyward:ff1:v1";

/// FF1 over AES-256 under a key derived from the AES key. RustCrypto's fpe and aes: outside the FIPS
/// module, so a FIPS build refuses it.
fn ff1_for(key: &SoftKey, radix: u32) -> HsmResult<FF1<Aes256>> {
    if crate::FIPS_BUILD {
        return Err(HsmError::IncorrectKeyUsage(
            "format-preserving encryption (FF1) runs outside the FIPS 140-3 validated module: refused in FIPS mode",
        ));
    }
    if key.aes_gcm().is_none() {
        return Err(HsmError::IncorrectKeyUsage(
            "format-preserving encryption needs an AES key",
        ));
    }
    let derived = hkdf_sha256(key.material.expose(), FF1_SALT, b"", 32)?;
    FF1::<Aes256>::new(derived.expose(), radix)
        .map_err(|_| HsmError::InvalidInput("FF1 takes a radix from 2 to 65536"))
}

/// Cycle walking gives up after this many rounds; with one value in ten accepted (a Luhn digit), the chance
/// of reaching it is below 10^-45.
const MAX_CYCLE_WALK: usize = 1000;

/// FF1 encryption (`encrypt`) or decryption of a numeral string, repeated while `accept` refuses the
/// result. The FF1 key is derived once per call, however many rounds the walk takes.
pub(crate) fn ff1(
    key: &SoftKey,
    encrypt: bool,
    radix: u32,
    tweak: &[u8],
    numerals: &[u16],
    accept: &dyn Fn(&[u16]) -> bool,
) -> HsmResult<Vec<u16>> {
    let ff1 = ff1_for(key, radix)?;
    let mut x = FlexibleNumeralString::from(numerals.to_vec());
    for _ in 0..MAX_CYCLE_WALK {
        let out = if encrypt {
            ff1.encrypt(tweak, &x)
        } else {
            ff1.decrypt(tweak, &x)
        };
        let y: Vec<u16> = out.map(Vec::from).map_err(|_| {
            HsmError::InvalidInput(
                "FF1 input: numerals below the radix, and a domain of at least 1,000,000 values",
            )
        })?;
        if accept(&y) {
            return Ok(y);
        }
        x = FlexibleNumeralString::from(y);
    }
    Err(HsmError::Backend(
        "format-preserving encryption did not reach an accepted value".into(),
    ))
}

/// HMACs of `messages` under a key derived for one purpose: HMAC-SHA-256 under HKDF-SHA-256 for AES keys
/// (the same values the trait's default gives), HMAC-SM3 under HKDF-SM3 for SM4 keys.
pub(crate) fn derived_macs(
    key: &SoftKey,
    label: &[u8],
    context: &[u8],
    messages: &[&[u8]],
) -> HsmResult<Vec<Vec<u8>>> {
    match key.spec {
        KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256 => {
            use aws_lc_rs::hmac;
            let derived = hkdf_sha256(key.material.expose(), label, context, 32)?;
            let mac_key = hmac::Key::new(hmac::HMAC_SHA256, derived.expose());
            Ok(messages
                .iter()
                .map(|m| hmac::sign(&mac_key, m).as_ref().to_vec())
                .collect())
        }
        KeySpec::Sm4 => {
            let mut derived = Zeroizing::new([0u8; 32]);
            hkdf::Hkdf::<sm3::Sm3>::new(Some(label), key.material.expose())
                .expand(context, derived.as_mut())
                .map_err(|_| HsmError::Backend("HKDF-SM3 output length".into()))?;
            let mac = hmac::Hmac::<sm3::Sm3>::new_from_slice(derived.as_ref())
                .map_err(|_| HsmError::Backend("HMAC-SM3 key".into()))?;
            Ok(messages
                .iter()
                .map(|m| mac.clone().chain_update(m).finalize().into_bytes().to_vec())
                .collect())
        }
        _ => Err(HsmError::IncorrectKeyUsage(
            "keyed search hashes need an AES or SM4 key",
        )),
    }
}

#[cfg(test)]
mod tests {
    use aes::{Aes128, Aes192, Aes256};
    use fpe::ff1::{FlexibleNumeralString, FF1};
    use hmac::{KeyInit, Mac};

    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    fn numerals(s: &str) -> Vec<u16> {
        s.bytes()
            .map(|b| ALPHABET.iter().position(|a| *a == b).unwrap() as u16)
            .collect()
    }

    fn text(n: &[u16]) -> String {
        n.iter().map(|d| ALPHABET[*d as usize] as char).collect()
    }

    fn run<C>(key: &[u8], radix: u32, tweak: &[u8], pt: &str, ct: &str)
    where
        C: aes::cipher::BlockCipherEncrypt + Clone + aes::cipher::KeyInit,
    {
        let ff1 = FF1::<C>::new(key, radix).unwrap();
        let x = FlexibleNumeralString::from(numerals(pt));
        let y = ff1.encrypt(tweak, &x).unwrap();
        let y: Vec<u16> = y.into();
        assert_eq!(text(&y), ct, "radix {radix} tweak {tweak:02x?}");
        let back: Vec<u16> = ff1
            .decrypt(tweak, &FlexibleNumeralString::from(y))
            .unwrap()
            .into();
        assert_eq!(text(&back), pt);
    }

    /// The nine samples of NIST's FF1 examples (FF1samples.pdf, SP 800-38G): AES-128, -192 and -256, each
    /// with radix 10 and no tweak, radix 10 with a tweak, and radix 36 with a tweak.
    #[test]
    fn ff1_matches_the_nine_nist_samples() {
        let k128 = hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let k192 = hex::decode("2b7e151628aed2a6abf7158809cf4f3cef4359d8d580aa4f").unwrap();
        let k256 = hex::decode("2b7e151628aed2a6abf7158809cf4f3cef4359d8d580aa4f7f036d6f04fc6a94")
            .unwrap();
        let t10 = hex::decode("39383736353433323130").unwrap();
        let t36 = hex::decode("3737373770717273373737").unwrap();
        let (d, a) = ("0123456789", "0123456789abcdefghi");
        run::<Aes128>(&k128, 10, &[], d, "2433477484");
        run::<Aes128>(&k128, 10, &t10, d, "6124200773");
        run::<Aes128>(&k128, 36, &t36, a, "a9tv40mll9kdu509eum");
        run::<Aes192>(&k192, 10, &[], d, "2830668132");
        run::<Aes192>(&k192, 10, &t10, d, "2496655549");
        run::<Aes192>(&k192, 36, &t36, a, "xbj3kv35jrawxv32ysr");
        run::<Aes256>(&k256, 10, &[], d, "6657667009");
        run::<Aes256>(&k256, 10, &t10, d, "1001623463");
        run::<Aes256>(&k256, 36, &t36, a, "xs8a0azh2avyalyzuwd");
    }

    /// SM3 (GB/T 32905-2016, example 1) and HMAC-SM3 against OpenSSL's (`openssl dgst -sm3 -mac HMAC
    /// -macopt hexkey:000102…0f` over "abc").
    #[test]
    fn sm3_and_hmac_sm3_match_independent_values() {
        use sm3::Digest;
        assert_eq!(
            hex::encode(sm3::Sm3::digest(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        let key = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let mac = hmac::Hmac::<sm3::Sm3>::new_from_slice(&key)
            .unwrap()
            .chain_update(b"abc")
            .finalize()
            .into_bytes();
        assert_eq!(
            hex::encode(mac),
            "83fd35b3ff6211428a38c070431ad42c23a86eaca25a5ea81a1ded4704a12c7c"
        );
    }
}
