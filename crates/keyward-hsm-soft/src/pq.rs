//! Post-quantum keys: ML-DSA (FIPS 204) signatures and ML-KEM (FIPS 203) decapsulation, on aws-lc-rs.
//!
//! ML-DSA private keys are kept as PKCS#8 in the seed form (the 32-byte seed FIPS 204 expands into the key),
//! public keys as SPKI in the IETF LAMPS encoding. aws-lc-rs has no SPKI encoding for ML-KEM, so its SPKI is
//! built here: an AlgorithmIdentifier with the NIST OID and no parameters, and the raw encapsulation key as
//! the BIT STRING.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::kem::{self, DecapsulationKey};
use aws_lc_rs::signature::{self, KeyPair as _, PqdsaKeyPair, PqdsaSigningAlgorithm};
use keyward_hsm::der::tlv as der;
use keyward_hsm::{HsmError, HsmResult, KeySpec, SecretBytes};

/// A parsed ML-DSA key pair.
pub(crate) struct MlDsaKey {
    pub pair: PqdsaKeyPair,
    pub public_der: Vec<u8>,
}

/// A parsed ML-KEM decapsulation key.
pub(crate) struct MlKemKey {
    pub key: DecapsulationKey,
    pub public_der: Vec<u8>,
}

fn backend(what: &'static str) -> HsmError {
    HsmError::Backend(what.to_string())
}

pub(crate) fn ml_dsa_alg(spec: KeySpec) -> Option<&'static PqdsaSigningAlgorithm> {
    match spec {
        KeySpec::MlDsa44 => Some(&signature::ML_DSA_44_SIGNING),
        KeySpec::MlDsa65 => Some(&signature::ML_DSA_65_SIGNING),
        KeySpec::MlDsa87 => Some(&signature::ML_DSA_87_SIGNING),
        _ => None,
    }
}

pub(crate) fn ml_dsa_verification(
    spec: KeySpec,
) -> Option<&'static signature::PqdsaVerificationAlgorithm> {
    match spec {
        KeySpec::MlDsa44 => Some(&signature::ML_DSA_44),
        KeySpec::MlDsa65 => Some(&signature::ML_DSA_65),
        KeySpec::MlDsa87 => Some(&signature::ML_DSA_87),
        _ => None,
    }
}

fn ml_kem_alg(spec: KeySpec) -> Option<&'static kem::Algorithm> {
    match spec {
        KeySpec::MlKem768 => Some(&kem::ML_KEM_768),
        KeySpec::MlKem1024 => Some(&kem::ML_KEM_1024),
        _ => None,
    }
}

/// The DER of id-alg-ml-kem-768 (2.16.840.1.101.3.4.4.2) or -1024 (…4.4.3).
fn ml_kem_oid(spec: KeySpec) -> Option<[u8; 11]> {
    let last = match spec {
        KeySpec::MlKem768 => 2,
        KeySpec::MlKem1024 => 3,
        _ => return None,
    };
    Some([
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x04, last,
    ])
}

/// SubjectPublicKeyInfo of an ML-KEM encapsulation key.
pub(crate) fn ml_kem_spki(spec: KeySpec, encapsulation_key: &[u8]) -> HsmResult<Vec<u8>> {
    let oid = ml_kem_oid(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
    let algorithm = der(0x30, &oid);
    let mut bits = Vec::with_capacity(encapsulation_key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(encapsulation_key);
    let mut body = algorithm;
    body.extend_from_slice(&der(0x03, &bits));
    Ok(der(0x30, &body))
}

/// Fresh material: PKCS#8 (seed form) for ML-DSA, the raw decapsulation key for ML-KEM.
pub(crate) fn generate(spec: KeySpec) -> HsmResult<SecretBytes> {
    if let Some(alg) = ml_dsa_alg(spec) {
        let pair = PqdsaKeyPair::generate(alg).map_err(|_| backend("ML-DSA key generation"))?;
        let doc = pair
            .to_pkcs8v1()
            .map_err(|_| backend("ML-DSA key encoding"))?;
        return Ok(SecretBytes::from_slice(doc.as_ref()));
    }
    let alg = ml_kem_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
    let key = DecapsulationKey::generate(alg).map_err(|_| backend("ML-KEM key generation"))?;
    let bytes = key
        .key_bytes()
        .map_err(|_| backend("ML-KEM key encoding"))?;
    Ok(SecretBytes::from_slice(bytes.as_ref()))
}

pub(crate) fn ml_dsa_key(spec: KeySpec, pkcs8: &[u8]) -> HsmResult<MlDsaKey> {
    let alg = ml_dsa_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
    let pair = PqdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| {
        HsmError::InvalidInput("not an ML-DSA PKCS#8 key of the key spec's parameter set")
    })?;
    let public_der = pair
        .public_key()
        .as_der()
        .map_err(|_| backend("ML-DSA public key"))?
        .as_ref()
        .to_vec();
    Ok(MlDsaKey { pair, public_der })
}

pub(crate) fn ml_kem_key(spec: KeySpec, raw: &[u8]) -> HsmResult<MlKemKey> {
    let alg = ml_kem_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
    let key = DecapsulationKey::new(alg, raw).map_err(|_| {
        HsmError::InvalidInput("not an ML-KEM decapsulation key of the key spec's parameter set")
    })?;
    // A key parsed from its raw bytes carries no separate public half, but FIPS 203 (7.3) lays the
    // decapsulation key out as dk_PKE ‖ ek ‖ H(ek) ‖ z, with dk_PKE and ek 384·k and 384·k + 32 bytes long.
    let k = if spec == KeySpec::MlKem768 { 3 } else { 4 };
    let public = raw
        .get(384 * k..384 * k + 384 * k + 32)
        .ok_or(HsmError::InvalidInput("ML-KEM decapsulation key too short"))?;
    // Parsing the encapsulation key checks it is well formed (every coefficient reduced).
    kem::EncapsulationKey::new(alg, public).map_err(|_| {
        HsmError::InvalidInput("the decapsulation key holds no valid encapsulation key")
    })?;
    Ok(MlKemKey {
        public_der: ml_kem_spki(spec, public)?,
        key,
    })
}

/// Signs a message; ML-DSA signs with fresh randomness (the hedged variant of FIPS 204).
pub(crate) fn sign(key: &MlDsaKey, message: &[u8]) -> HsmResult<Vec<u8>> {
    let mut sig = vec![0u8; key.pair.algorithm().signature_len()];
    let n = key
        .pair
        .sign(message, &mut sig)
        .map_err(|_| backend("ML-DSA signing failed"))?;
    sig.truncate(n);
    Ok(sig)
}

/// μ as ml-dsa takes it: the 64 bytes SHAKE256(SHAKE256(public key, 64) ‖ 0 ‖ len(ctx) ‖ ctx ‖ message) of
/// FIPS 204, which a signer of a large message computes itself ("external μ") and sends instead.
type Mu = ml_dsa::common::array::Array<u8, ml_dsa::common::typenum::U64>;

/// The seed of a PKCS#8 ML-DSA key in the seed form this HSM writes: a 22-byte header, then the seed.
fn seed_of(pkcs8: &[u8]) -> HsmResult<ml_dsa::Seed> {
    match pkcs8 {
        [0x30, 0x34, 0x02, 0x01, 0x00, 0x30, 0x0b, 0x06, 0x09, _, _, _, _, _, _, _, _, _, 0x04, 0x22, 0x80, 0x20, seed @ ..]
            if seed.len() == 32 =>
        {
            ml_dsa::Seed::try_from(seed).map_err(|_| backend("ML-DSA seed"))
        }
        _ => Err(HsmError::IncorrectKeyUsage(
            "this ML-DSA key was imported without its seed: signing an external μ needs the seed form",
        )),
    }
}

fn mu_array(mu: &[u8]) -> HsmResult<Mu> {
    Mu::try_from(mu).map_err(|_| HsmError::InvalidInput("an external μ is 64 bytes"))
}

fn sign_mu_with<P: ml_dsa::MlDsaParams>(seed: &ml_dsa::Seed, mu: &Mu) -> HsmResult<Vec<u8>> {
    let key = ml_dsa::ExpandedSigningKey::<P>::from_seed(seed);
    let sig = key
        .sign_mu_randomized(mu, &mut getrandom::SysRng)
        .map_err(|_| backend("ML-DSA signing failed"))?;
    Ok(sig.encode().to_vec())
}

/// Signs an externally computed μ (hedged, like message signing). aws-lc-rs signs only whole messages, so
/// this runs on RustCrypto's ml-dsa from the key's seed, and a FIPS build refuses it.
pub(crate) fn sign_mu(spec: KeySpec, pkcs8: &[u8], mu: &[u8]) -> HsmResult<Vec<u8>> {
    if crate::FIPS_BUILD {
        return Err(HsmError::IncorrectKeyUsage(
            "signing an external μ is outside the FIPS 140-3 validated module: refused in FIPS mode",
        ));
    }
    let (seed, mu) = (seed_of(pkcs8)?, mu_array(mu)?);
    match spec {
        KeySpec::MlDsa44 => sign_mu_with::<ml_dsa::MlDsa44>(&seed, &mu),
        KeySpec::MlDsa65 => sign_mu_with::<ml_dsa::MlDsa65>(&seed, &mu),
        KeySpec::MlDsa87 => sign_mu_with::<ml_dsa::MlDsa87>(&seed, &mu),
        _ => Err(HsmError::UnsupportedSpec(spec)),
    }
}

fn verify_mu_with<P: ml_dsa::MlDsaParams>(public: &[u8], mu: &Mu, sig: &[u8]) -> bool {
    let (Ok(public), Ok(sig)) = (
        ml_dsa::EncodedVerifyingKey::<P>::try_from(public),
        ml_dsa::EncodedSignature::<P>::try_from(sig),
    ) else {
        return false;
    };
    match ml_dsa::Signature::<P>::decode(&sig) {
        Some(sig) => ml_dsa::VerifyingKey::<P>::decode(&public).verify_mu(mu, &sig),
        None => false,
    }
}

/// Verifies a signature over an external μ with a raw public key (the BIT STRING of its SPKI).
pub(crate) fn verify_mu(spec: KeySpec, spki: &[u8], mu: &[u8], sig: &[u8]) -> HsmResult<bool> {
    if crate::FIPS_BUILD {
        return Err(HsmError::IncorrectKeyUsage(
            "verifying over an external μ is outside the FIPS 140-3 validated module: refused in FIPS mode",
        ));
    }
    let mu = mu_array(mu)?;
    let public_len = match spec {
        KeySpec::MlDsa44 => 1312,
        KeySpec::MlDsa65 => 1952,
        KeySpec::MlDsa87 => 2592,
        _ => return Err(HsmError::UnsupportedSpec(spec)),
    };
    let public = spki
        .len()
        .checked_sub(public_len)
        .and_then(|at| spki.get(at..))
        .ok_or(HsmError::InvalidInput("ML-DSA public key too short"))?;
    Ok(match spec {
        KeySpec::MlDsa44 => verify_mu_with::<ml_dsa::MlDsa44>(public, &mu, sig),
        KeySpec::MlDsa65 => verify_mu_with::<ml_dsa::MlDsa65>(public, &mu, sig),
        _ => verify_mu_with::<ml_dsa::MlDsa87>(public, &mu, sig),
    })
}

/// Recovers the shared secret of a ciphertext. ML-KEM rejects implicitly: a tampered ciphertext gives an
/// unrelated secret, never an error, so only a ciphertext of the wrong length is refused here.
pub(crate) fn decapsulate(key: &MlKemKey, ciphertext: &[u8]) -> HsmResult<SecretBytes> {
    let secret = key
        .key
        .decapsulate(ciphertext.into())
        .map_err(|_| HsmError::InvalidInput("ciphertext length does not match the ML-KEM key"))?;
    Ok(SecretBytes::from_slice(secret.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, VerificationAlgorithm};

    /// PKCS#8 of an ML-DSA seed as the IETF LAMPS profile writes it: the seed as `[0] IMPLICIT OCTET STRING`.
    fn seed_pkcs8(last_oid_byte: u8, seed: &[u8; 32]) -> Vec<u8> {
        let mut der = vec![
            0x30,
            0x34,
            0x02,
            0x01,
            0x00,
            0x30,
            0x0b,
            0x06,
            0x09,
            0x60,
            0x86,
            0x48,
            0x01,
            0x65,
            0x03,
            0x04,
            0x03,
            last_oid_byte,
            0x04,
            0x22,
            0x80,
            0x20,
        ];
        der.extend_from_slice(seed);
        der
    }

    #[test]
    fn ml_dsa_keys_are_seed_form_pkcs8_and_sign_verifiably() {
        for (spec, oid) in [
            (KeySpec::MlDsa44, 0x11),
            (KeySpec::MlDsa65, 0x12),
            (KeySpec::MlDsa87, 0x13),
        ] {
            let seed = [7u8; 32];
            let alg = ml_dsa_alg(spec).unwrap();
            let from_seed = PqdsaKeyPair::from_seed(alg, &seed).unwrap();
            let written = from_seed.to_pkcs8v1().unwrap();
            assert_eq!(written.as_ref(), seed_pkcs8(oid, &seed), "{spec}");
            // The same seed, written by hand, is the same key.
            let key = ml_dsa_key(spec, &seed_pkcs8(oid, &seed)).unwrap();
            assert_eq!(
                key.pair.public_key().as_ref(),
                from_seed.public_key().as_ref()
            );
            let sig = sign(&key, b"message").unwrap();
            assert_eq!(sig.len(), alg.signature_len());
            let verify = |msg: &[u8], sig: &[u8]| {
                let valg: &dyn VerificationAlgorithm = ml_dsa_verification(spec).unwrap();
                UnparsedPublicKey::new(valg, &key.public_der)
                    .verify(msg, sig)
                    .is_ok()
            };
            assert!(verify(b"message", &sig));
            assert!(!verify(b"messagf", &sig));
            // Hedged signing: two signatures of one message differ, and both verify.
            let again = sign(&key, b"message").unwrap();
            assert_ne!(sig, again);
            assert!(verify(b"message", &again));
            // A key of another parameter set is refused, not misread.
            let other = if spec == KeySpec::MlDsa44 {
                KeySpec::MlDsa65
            } else {
                KeySpec::MlDsa44
            };
            assert!(ml_dsa_key(other, &seed_pkcs8(oid, &seed)).is_err());
        }
    }

    #[test]
    fn an_external_mu_signs_from_the_seed_and_an_expanded_only_key_says_why_it_cannot() {
        let spec = KeySpec::MlDsa65;
        let pkcs8 = seed_pkcs8(0x12, &[9u8; 32]);
        let key = ml_dsa_key(spec, &pkcs8).unwrap();
        let mu = [0x4du8; 64];
        if crate::FIPS_BUILD {
            assert!(sign_mu(spec, &pkcs8, &mu).is_err());
            return;
        }
        let sig = sign_mu(spec, &pkcs8, &mu).unwrap();
        assert_eq!(sig.len(), 3309);
        assert!(verify_mu(spec, &key.public_der, &mu, &sig).unwrap());
        assert!(!verify_mu(spec, &key.public_der, &[0x4e; 64], &sig).unwrap());
        assert!(!verify_mu(spec, &key.public_der, &mu, &sig[1..]).unwrap());
        assert!(matches!(
            sign_mu(spec, &pkcs8, &mu[1..]),
            Err(HsmError::InvalidInput(_))
        ));
        // The same key in the expanded form only (privateKey holding `expandedKey OCTET STRING`): aws-lc
        // signs messages with it, but there is no seed to sign a μ from.
        use aws_lc_rs::encoding::{AsRawBytes, PqdsaPrivateKeyRaw};
        let pair = PqdsaKeyPair::from_seed(ml_dsa_alg(spec).unwrap(), &[9u8; 32]).unwrap();
        let raw: PqdsaPrivateKeyRaw<'_> = pair.private_key().as_raw_bytes().unwrap();
        let algorithm = der(0x30, &pkcs8[7..18]);
        let private = der(0x04, &der(0x04, raw.as_ref()));
        let expanded = der(
            0x30,
            &[&[0x02, 0x01, 0x00][..], &algorithm, &private].concat(),
        );
        let from_expanded = ml_dsa_key(spec, &expanded).unwrap();
        assert_eq!(from_expanded.public_der, key.public_der);
        assert!(matches!(
            sign_mu(spec, &expanded, &mu),
            Err(HsmError::IncorrectKeyUsage(m)) if m.contains("seed")
        ));
    }

    #[test]
    fn ml_kem_decapsulates_what_its_public_key_encapsulated() {
        for (spec, alg, ek_len) in [
            (KeySpec::MlKem768, &kem::ML_KEM_768, 1184),
            (KeySpec::MlKem1024, &kem::ML_KEM_1024, 1568),
        ] {
            let raw = generate(spec).unwrap();
            let key = ml_kem_key(spec, raw.expose()).unwrap();
            // The SPKI is the LAMPS encoding: its BIT STRING is the raw encapsulation key.
            let spki = &key.public_der;
            let ek = &spki[spki.len() - ek_len..];
            assert_eq!(spki[spki.len() - ek_len - 1], 0, "unused-bits byte");
            assert_eq!(ml_kem_spki(spec, ek).unwrap(), *spki);
            let sender = kem::EncapsulationKey::new(alg, ek).unwrap();
            let (ct, secret) = sender.encapsulate().unwrap();
            let got = decapsulate(&key, ct.as_ref()).unwrap();
            assert_eq!(got.expose(), secret.as_ref());
            // Implicit rejection: a flipped bit gives another secret, not an error.
            let mut bad = ct.as_ref().to_vec();
            bad[0] ^= 1;
            assert_ne!(decapsulate(&key, &bad).unwrap().expose(), secret.as_ref());
            assert!(decapsulate(&key, &bad[1..]).is_err(), "wrong length");
            assert!(ml_kem_key(spec, &raw.expose()[1..]).is_err());
        }
    }
}
