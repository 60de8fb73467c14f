//! Public-key operations: RSA, ECDSA/ECDH, Ed25519, secp256k1, SM2, and the RSA + AES-KWP key wrapping scheme.

use aws_lc_rs::agreement;
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::key_wrap::{KeyEncryptionKey, KeyWrapPadded, AES_256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    OaepAlgorithm, OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1,
    OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::{self, RsaEncoding, UnparsedPublicKey, VerificationAlgorithm};
use keyward_hsm::{
    EncryptionAlgorithm, HsmError, HsmResult, KeySpec, SecretBytes, SignInput, SigningAlgorithm,
};

use crate::keys::{ecdh_alg, Kind, PublicKind, SoftKey};
use crate::material::{ec_spki_has_named_curve, fill};

fn check_alg(key: &SoftKey, alg: SigningAlgorithm, input: &SignInput<'_>) -> HsmResult<()> {
    if !key.spec.signing_algorithms().contains(&alg) {
        return Err(HsmError::IncorrectKeyUsage(
            "signing algorithm does not fit the key spec",
        ));
    }
    if let SignInput::Digest(d) = input {
        match alg.digest_len() {
            None => {
                return Err(HsmError::IncorrectKeyUsage(
                    "this algorithm signs messages only",
                ))
            }
            Some(n) if n != d.len() => {
                return Err(HsmError::InvalidInput(
                    "digest length does not match the algorithm",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn digest_alg(alg: SigningAlgorithm) -> &'static digest::Algorithm {
    use SigningAlgorithm::*;
    match alg {
        RsassaPssSha384 | RsassaPkcs1V15Sha384 | EcdsaSha384 => &digest::SHA384,
        RsassaPssSha512 | RsassaPkcs1V15Sha512 | EcdsaSha512 => &digest::SHA512,
        _ => &digest::SHA256,
    }
}

fn rsa_padding(alg: SigningAlgorithm) -> Option<&'static dyn RsaEncoding> {
    use SigningAlgorithm::*;
    Some(match alg {
        RsassaPssSha256 => &signature::RSA_PSS_SHA256,
        RsassaPssSha384 => &signature::RSA_PSS_SHA384,
        RsassaPssSha512 => &signature::RSA_PSS_SHA512,
        RsassaPkcs1V15Sha256 => &signature::RSA_PKCS1_SHA256,
        RsassaPkcs1V15Sha384 => &signature::RSA_PKCS1_SHA384,
        RsassaPkcs1V15Sha512 => &signature::RSA_PKCS1_SHA512,
        _ => return None,
    })
}

/// The aws-lc-rs verification algorithm for RSA, NIST ECDSA and Ed25519.
fn verification_alg(
    alg: SigningAlgorithm,
    spec: KeySpec,
) -> Option<&'static dyn VerificationAlgorithm> {
    use SigningAlgorithm::*;
    Some(match (alg, spec) {
        (RsassaPssSha256, _) => &signature::RSA_PSS_2048_8192_SHA256,
        (RsassaPssSha384, _) => &signature::RSA_PSS_2048_8192_SHA384,
        (RsassaPssSha512, _) => &signature::RSA_PSS_2048_8192_SHA512,
        (RsassaPkcs1V15Sha256, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (RsassaPkcs1V15Sha384, _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (RsassaPkcs1V15Sha512, _) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (EcdsaSha256, KeySpec::EccNistP256) => &signature::ECDSA_P256_SHA256_ASN1,
        (EcdsaSha384, KeySpec::EccNistP384) => &signature::ECDSA_P384_SHA384_ASN1,
        (EcdsaSha512, KeySpec::EccNistP521) => &signature::ECDSA_P521_SHA512_ASN1,
        (Ed25519, KeySpec::Ed25519) => &signature::ED25519,
        (MlDsaShake256, _) => crate::pq::ml_dsa_verification(spec)?,
        _ => return None,
    })
}

fn import_digest(alg: SigningAlgorithm, d: &[u8]) -> HsmResult<Digest> {
    Digest::import_less_safe(d, digest_alg(alg))
        .map_err(|_| HsmError::InvalidInput("digest length does not match the algorithm"))
}

fn sign_failed() -> HsmError {
    HsmError::Backend("signing failed".into())
}

pub(crate) fn sign(
    key: &SoftKey,
    alg: SigningAlgorithm,
    input: SignInput<'_>,
) -> HsmResult<Vec<u8>> {
    check_alg(key, alg, &input)?;
    match &key.kind {
        Kind::Rsa(k) => {
            let padding =
                rsa_padding(alg).ok_or(HsmError::IncorrectKeyUsage("not an RSA algorithm"))?;
            let mut sig = vec![0u8; k.sign.public_modulus_len()];
            match input {
                SignInput::Message(m) => k.sign.sign(padding, &SystemRandom::new(), m, &mut sig),
                SignInput::Digest(d) => {
                    k.sign
                        .sign_digest(padding, &import_digest(alg, d)?, &mut sig)
                }
            }
            .map_err(|_| sign_failed())?;
            Ok(sig)
        }
        Kind::EcNist(k) => {
            let sig = match input {
                SignInput::Message(m) => k.sign.sign(&SystemRandom::new(), m),
                SignInput::Digest(d) => k.sign.sign_digest(&import_digest(alg, d)?),
            }
            .map_err(|_| sign_failed())?;
            Ok(sig.as_ref().to_vec())
        }
        Kind::Ed25519(k) => match input {
            SignInput::Message(m) => Ok(k.pair.sign(m).as_ref().to_vec()),
            SignInput::Digest(_) => Err(HsmError::IncorrectKeyUsage("ED25519 signs messages only")),
        },
        Kind::K256(k) => {
            use k256::ecdsa::signature::{hazmat::PrehashSigner, Signer};
            let sig: k256::ecdsa::Signature = match input {
                SignInput::Message(m) => k.signing.try_sign(m),
                SignInput::Digest(d) => k.signing.sign_prehash(d),
            }
            .map_err(|_| sign_failed())?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
        Kind::Sm2(k) => {
            use sm2::dsa::signature::{hazmat::PrehashSigner, Signer};
            let sig: sm2::dsa::Signature = match input {
                SignInput::Message(m) => k.signing.try_sign(m),
                SignInput::Digest(d) => k.signing.sign_prehash(d),
            }
            .map_err(|_| sign_failed())?;
            Ok(sig.to_der().to_vec())
        }
        Kind::MlDsa(k) => match input {
            SignInput::Message(m) => crate::pq::sign(k, m),
            SignInput::Digest(mu) => crate::pq::sign_mu(key.spec, key.material.expose(), mu),
        },
        Kind::Public(_) => Err(HsmError::IncorrectKeyUsage("a public key cannot sign")),
        _ => Err(HsmError::IncorrectKeyUsage(
            "signing needs an asymmetric signing key",
        )),
    }
}

fn verify_awslc(
    alg: SigningAlgorithm,
    spec: KeySpec,
    spki: &[u8],
    input: SignInput<'_>,
    sig: &[u8],
) -> HsmResult<bool> {
    let valg = verification_alg(alg, spec).ok_or(HsmError::IncorrectKeyUsage(
        "signing algorithm does not fit the key spec",
    ))?;
    let pk = UnparsedPublicKey::new(valg, spki);
    Ok(match input {
        SignInput::Message(m) => pk.verify(m, sig).is_ok(),
        SignInput::Digest(d) => pk.verify_digest(&import_digest(alg, d)?, sig).is_ok(),
    })
}

fn verify_k256(vk: &k256::ecdsa::VerifyingKey, input: SignInput<'_>, sig: &[u8]) -> bool {
    use k256::ecdsa::signature::{hazmat::PrehashVerifier, Verifier};
    let Ok(sig) = k256::ecdsa::Signature::from_der(sig) else {
        return false;
    };
    // Accept both s and n - s, as OpenSSL and the Wycheproof suite do; k256 itself only accepts low-s.
    let sig = sig.normalize_s();
    match input {
        SignInput::Message(m) => vk.verify(m, &sig).is_ok(),
        SignInput::Digest(d) => vk.verify_prehash(d, &sig).is_ok(),
    }
}

fn verify_sm2(vk: &sm2::dsa::VerifyingKey, input: SignInput<'_>, sig: &[u8]) -> bool {
    use sm2::dsa::signature::{hazmat::PrehashVerifier, Verifier};
    let Ok(sig) = sm2::dsa::Signature::from_der(sig) else {
        return false;
    };
    match input {
        SignInput::Message(m) => vk.verify(m, &sig).is_ok(),
        SignInput::Digest(d) => vk.verify_prehash(d, &sig).is_ok(),
    }
}

pub(crate) fn verify(
    key: &SoftKey,
    alg: SigningAlgorithm,
    input: SignInput<'_>,
    sig: &[u8],
) -> HsmResult<bool> {
    check_alg(key, alg, &input)?;
    if let (SigningAlgorithm::MlDsaShake256, SignInput::Digest(mu)) = (alg, &input) {
        let spki = key.public_der().ok_or(HsmError::IncorrectKeyUsage(
            "verification needs an ML-DSA key",
        ))?;
        return crate::pq::verify_mu(key.spec, spki, mu, sig);
    }
    match &key.kind {
        Kind::Rsa(k) => verify_awslc(alg, key.spec, &k.public_der, input, sig),
        Kind::EcNist(k) => verify_awslc(alg, key.spec, &k.public_der, input, sig),
        Kind::Ed25519(k) => verify_awslc(alg, key.spec, &k.public_der, input, sig),
        Kind::K256(k) => Ok(verify_k256(k.signing.verifying_key(), input, sig)),
        Kind::Sm2(k) => Ok(verify_sm2(k.signing.verifying_key(), input, sig)),
        Kind::MlDsa(k) => verify_awslc(alg, key.spec, &k.public_der, input, sig),
        Kind::Public(p) => match &p.kind {
            PublicKind::K256(vk) => Ok(verify_k256(vk, input, sig)),
            PublicKind::Sm2 { verifying, .. } => Ok(verify_sm2(verifying, input, sig)),
            PublicKind::Rsa(_) | PublicKind::AwsLc => {
                verify_awslc(alg, key.spec, &p.spki, input, sig)
            }
        },
        _ => Err(HsmError::IncorrectKeyUsage(
            "verification needs an asymmetric signing key",
        )),
    }
}

fn oaep(alg: EncryptionAlgorithm) -> HsmResult<&'static OaepAlgorithm> {
    match alg {
        EncryptionAlgorithm::RsaesOaepSha1 => Ok(&OAEP_SHA1_MGF1SHA1),
        EncryptionAlgorithm::RsaesOaepSha256 => Ok(&OAEP_SHA256_MGF1SHA256),
        _ => Err(HsmError::IncorrectKeyUsage(
            "RSA keys encrypt with RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256",
        )),
    }
}

fn rsa_encrypt(
    k: &OaepPublicEncryptingKey,
    alg: EncryptionAlgorithm,
    pt: &[u8],
) -> HsmResult<Vec<u8>> {
    let alg = oaep(alg)?;
    if pt.len() > k.max_plaintext_size(alg) {
        return Err(HsmError::InvalidInput(
            "plaintext too long for this RSA key and padding",
        ));
    }
    let mut out = vec![0u8; k.ciphertext_size()];
    let len = k
        .encrypt(alg, pt, &mut out, None)
        .map_err(|_| HsmError::Backend("RSA-OAEP encryption failed".into()))?
        .len();
    out.truncate(len);
    Ok(out)
}

fn sm2_encrypt(
    k: &sm2::pke::EncryptingKey,
    alg: EncryptionAlgorithm,
    pt: &[u8],
) -> HsmResult<Vec<u8>> {
    if alg != EncryptionAlgorithm::Sm2Pke {
        return Err(HsmError::IncorrectKeyUsage("SM2 keys encrypt with SM2PKE"));
    }
    if pt.is_empty() {
        return Err(HsmError::InvalidInput(
            "SM2 cannot encrypt an empty message",
        ));
    }
    k.encrypt_der(&mut getrandom::SysRng, pt)
        .map_err(|_| HsmError::Backend("SM2 encryption failed".into()))
}

pub(crate) fn encrypt(key: &SoftKey, alg: EncryptionAlgorithm, pt: &[u8]) -> HsmResult<Vec<u8>> {
    match &key.kind {
        Kind::Rsa(k) => rsa_encrypt(&k.encrypt, alg, pt),
        Kind::Sm2(k) => sm2_encrypt(&k.encrypting, alg, pt),
        Kind::Public(p) => match &p.kind {
            PublicKind::Rsa(k) => rsa_encrypt(k, alg, pt),
            PublicKind::Sm2 { encrypting, .. } => sm2_encrypt(encrypting, alg, pt),
            _ => Err(HsmError::IncorrectKeyUsage("this key spec cannot encrypt")),
        },
        _ => Err(HsmError::IncorrectKeyUsage(
            "this key spec cannot encrypt asymmetrically",
        )),
    }
}

pub(crate) fn decrypt(
    key: &SoftKey,
    alg: EncryptionAlgorithm,
    ct: &[u8],
) -> HsmResult<SecretBytes> {
    match &key.kind {
        Kind::Rsa(k) => {
            let alg = oaep(alg)?;
            let mut out = SecretBytes::zeroed(k.decrypt.min_output_size());
            let len = k
                .decrypt
                .decrypt(alg, ct, out.expose_mut(), None)
                .map_err(|_| HsmError::DecryptFailed)?
                .len();
            out.expose_mut().truncate(len);
            Ok(out)
        }
        Kind::Sm2(k) => {
            if alg != EncryptionAlgorithm::Sm2Pke {
                return Err(HsmError::IncorrectKeyUsage("SM2 keys decrypt with SM2PKE"));
            }
            k.decrypting
                .decrypt_der(ct)
                .map(SecretBytes::new)
                .map_err(|_| HsmError::DecryptFailed)
        }
        _ => Err(HsmError::IncorrectKeyUsage(
            "this key cannot decrypt asymmetrically",
        )),
    }
}

pub(crate) fn agree(key: &SoftKey, peer_spki: &[u8]) -> HsmResult<SecretBytes> {
    let bad_peer =
        || HsmError::InvalidInput("peer public key is not a valid point on the key's curve");
    if !key.spec.supports_agreement() {
        return Err(HsmError::IncorrectKeyUsage(
            "ECDH needs an ECC key; an ML-KEM key decapsulates instead",
        ));
    }
    if !ec_spki_has_named_curve(peer_spki) {
        return Err(bad_peer());
    }
    match &key.kind {
        Kind::EcNist(k) => {
            let alg =
                ecdh_alg(key.spec).ok_or(HsmError::IncorrectKeyUsage("no ECDH for this spec"))?;
            let peer = agreement::UnparsedPublicKey::new(alg, peer_spki);
            agreement::agree(&k.agree, peer, bad_peer(), |s| {
                Ok(SecretBytes::from_slice(s))
            })
        }
        Kind::K256(k) => {
            use k256::pkcs8::DecodePublicKey;
            let peer = k256::PublicKey::from_public_key_der(peer_spki).map_err(|_| bad_peer())?;
            let shared = k256::ecdh::diffie_hellman(k.secret.to_nonzero_scalar(), peer.as_affine());
            Ok(SecretBytes::from_slice(
                shared.raw_secret_bytes().as_slice(),
            ))
        }
        _ => Err(HsmError::IncorrectKeyUsage(
            "key agreement needs an ECC key",
        )),
    }
}

/// RSA-OAEP-SHA-256 of an ephemeral AES-256 key, followed by AES-KWP (RFC 5649) of the material.
pub(crate) fn rsa_aes_kwp_wrap(wrapping_spki: &[u8], material: &[u8]) -> HsmResult<Vec<u8>> {
    let public = PublicEncryptingKey::from_der(wrapping_spki)
        .map_err(|_| HsmError::InvalidInput("wrapping key is not an RSA public key"))?;
    if public.key_size_bits() < 2048 {
        return Err(HsmError::InvalidInput(
            "wrapping key must be RSA 2048 bits or more",
        ));
    }
    let oaep_key = OaepPublicEncryptingKey::new(public)
        .map_err(|_| HsmError::InvalidInput("wrapping key is not an RSA public key"))?;
    let mut ephemeral = SecretBytes::zeroed(32);
    fill(ephemeral.expose_mut())?;
    let mut out = rsa_encrypt(
        &oaep_key,
        EncryptionAlgorithm::RsaesOaepSha256,
        ephemeral.expose(),
    )?;
    let kek = KeyEncryptionKey::new(&AES_256, ephemeral.expose())
        .map_err(|_| HsmError::Backend("AES-KWP setup failed".into()))?;
    let mut wrapped = vec![0u8; material.len() + 16];
    let len = kek
        .wrap_with_padding(material, &mut wrapped)
        .map_err(|_| HsmError::Backend("AES-KWP wrap failed".into()))?
        .len();
    out.extend_from_slice(
        wrapped
            .get(..len)
            .ok_or(HsmError::Backend("AES-KWP".into()))?,
    );
    Ok(out)
}

pub(crate) fn rsa_aes_kwp_unwrap(key: &SoftKey, wrapped: &[u8]) -> HsmResult<SecretBytes> {
    let Kind::Rsa(k) = &key.kind else {
        return Err(HsmError::IncorrectKeyUsage(
            "unwrapping needs an RSA private key",
        ));
    };
    let modulus_len = k.sign.public_modulus_len();
    let (rsa_part, kwp_part) = wrapped
        .split_at_checked(modulus_len)
        .ok_or(HsmError::DecryptFailed)?;
    let ephemeral = decrypt(key, EncryptionAlgorithm::RsaesOaepSha256, rsa_part)?;
    if ephemeral.len() != 32 {
        return Err(HsmError::DecryptFailed);
    }
    let kek =
        KeyEncryptionKey::new(&AES_256, ephemeral.expose()).map_err(|_| HsmError::DecryptFailed)?;
    let mut out = SecretBytes::zeroed(kwp_part.len());
    let len = kek
        .unwrap_with_padding(kwp_part, out.expose_mut())
        .map_err(|_| HsmError::DecryptFailed)?
        .len();
    out.expose_mut().truncate(len);
    Ok(out)
}
