//! Parsed key objects of the software HSM.

use core::fmt;

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::agreement;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rsa::{
    KeyPair as RsaKeyPair, KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _,
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
};
use k256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use keyward_hsm::{HsmError, HsmResult, KeySpec, MacAlgorithm, SecretBytes, TDES_KEY_LEN};

use crate::material::{check_tdes_key, ec_spki_has_named_curve, fill, sm4_gcm, Sm4Gcm};

/// A key as the software HSM holds it: the material (raw, or PKCS#8) plus its parsed form.
pub(crate) struct SoftKey {
    pub spec: KeySpec,
    pub material: SecretBytes,
    pub kind: Kind,
}

pub(crate) enum Kind {
    AesGcm(LessSafeKey),
    Sm4Gcm(Box<Sm4Gcm>),
    Tdes { mac: hmac::Key },
    Hmac(hmac::Key),
    Rsa(Box<RsaKey>),
    EcNist(Box<EcNistKey>),
    K256(Box<K256Key>),
    Ed25519(Box<Ed25519Key>),
    Sm2(Box<Sm2Key>),
    MlDsa(Box<crate::pq::MlDsaKey>),
    MlKem(Box<crate::pq::MlKemKey>),
    Public(Box<PublicOnly>),
}

pub(crate) struct RsaKey {
    pub sign: RsaKeyPair,
    pub decrypt: OaepPrivateDecryptingKey,
    pub encrypt: OaepPublicEncryptingKey,
    pub public_der: Vec<u8>,
}

pub(crate) struct EcNistKey {
    pub sign: EcdsaKeyPair,
    pub agree: agreement::PrivateKey,
    pub public_der: Vec<u8>,
}

pub(crate) struct K256Key {
    pub secret: k256::SecretKey,
    pub signing: k256::ecdsa::SigningKey,
    pub public_der: Vec<u8>,
}

pub(crate) struct Ed25519Key {
    pub pair: Ed25519KeyPair,
    pub public_der: Vec<u8>,
}

pub(crate) struct Sm2Key {
    pub signing: sm2::dsa::SigningKey,
    pub decrypting: sm2::pke::DecryptingKey,
    pub encrypting: sm2::pke::EncryptingKey,
    pub public_der: Vec<u8>,
}

pub(crate) struct PublicOnly {
    pub spki: Vec<u8>,
    pub kind: PublicKind,
}

pub(crate) enum PublicKind {
    Rsa(OaepPublicEncryptingKey),
    /// NIST curves and Ed25519 verify straight from the SPKI with aws-lc-rs.
    AwsLc,
    K256(k256::ecdsa::VerifyingKey),
    Sm2 {
        verifying: sm2::dsa::VerifyingKey,
        encrypting: sm2::pke::EncryptingKey,
    },
}

/// The distinguishing identifier of GB/T 32918 used when none is agreed otherwise.
pub(crate) const SM2_DEFAULT_DISTID: &str = "1234567812345678";

impl fmt::Debug for SoftKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftKey")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// In a FIPS build, the refusal of a spec outside the validated module.
pub(crate) fn fips_check(spec: KeySpec) -> HsmResult<()> {
    if crate::FIPS_BUILD && !spec.fips_approved() {
        return Err(HsmError::OutsideFipsModule(spec));
    }
    Ok(())
}

fn rejected(what: &'static str) -> HsmError {
    HsmError::InvalidInput(what)
}

fn backend(what: &'static str) -> HsmError {
    HsmError::Backend(what.to_string())
}

pub(crate) fn ecdsa_alg(spec: KeySpec) -> Option<&'static EcdsaSigningAlgorithm> {
    match spec {
        KeySpec::EccNistP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
        KeySpec::EccNistP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
        KeySpec::EccNistP521 => Some(&ECDSA_P521_SHA512_ASN1_SIGNING),
        _ => None,
    }
}

pub(crate) fn ecdh_alg(spec: KeySpec) -> Option<&'static agreement::Algorithm> {
    match spec {
        KeySpec::EccNistP256 => Some(&agreement::ECDH_P256),
        KeySpec::EccNistP384 => Some(&agreement::ECDH_P384),
        KeySpec::EccNistP521 => Some(&agreement::ECDH_P521),
        _ => None,
    }
}

fn hmac_alg(spec: KeySpec) -> Option<hmac::Algorithm> {
    match spec {
        KeySpec::Hmac224 => Some(hmac::HMAC_SHA224),
        KeySpec::Hmac256 => Some(hmac::HMAC_SHA256),
        KeySpec::Hmac384 => Some(hmac::HMAC_SHA384),
        KeySpec::Hmac512 => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

fn rsa_bits(spec: KeySpec) -> Option<usize> {
    match spec {
        KeySpec::Rsa2048 => Some(2048),
        KeySpec::Rsa3072 => Some(3072),
        KeySpec::Rsa4096 => Some(4096),
        _ => None,
    }
}

fn random_secret(len: usize) -> HsmResult<SecretBytes> {
    let mut out = SecretBytes::zeroed(len);
    fill(out.expose_mut())?;
    Ok(out)
}

/// Draws a scalar for the RustCrypto curves from aws-lc-rs's DRBG, retrying on the (negligible) out-of-range case.
fn random_scalar_bytes<T>(parse: impl Fn(&[u8]) -> Option<T>) -> HsmResult<T> {
    for _ in 0..64 {
        let candidate = random_secret(32)?;
        if let Some(k) = parse(candidate.expose()) {
            return Ok(k);
        }
    }
    Err(backend("could not draw a valid scalar"))
}

impl SoftKey {
    pub fn is_public_only(&self) -> bool {
        matches!(self.kind, Kind::Public(_))
    }

    pub fn public_der(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Rsa(k) => Some(&k.public_der),
            Kind::EcNist(k) => Some(&k.public_der),
            Kind::K256(k) => Some(&k.public_der),
            Kind::Ed25519(k) => Some(&k.public_der),
            Kind::Sm2(k) => Some(&k.public_der),
            Kind::MlDsa(k) => Some(&k.public_der),
            Kind::MlKem(k) => Some(&k.public_der),
            Kind::Public(p) => Some(&p.spki),
            _ => None,
        }
    }

    pub fn aes_gcm(&self) -> Option<&LessSafeKey> {
        match &self.kind {
            Kind::AesGcm(k) => Some(k),
            _ => None,
        }
    }

    pub fn hmac_for(&self, alg: MacAlgorithm) -> HsmResult<&hmac::Key> {
        match &self.kind {
            Kind::Hmac(k) if self.spec.mac_algorithm() == Some(alg) => Ok(k),
            Kind::Hmac(_) => Err(HsmError::IncorrectKeyUsage(
                "MAC algorithm does not match the key spec",
            )),
            _ => Err(HsmError::IncorrectKeyUsage("MAC needs an HMAC key")),
        }
    }

    /// Fresh key material from the CSPRNG.
    pub fn generate(spec: KeySpec) -> HsmResult<SoftKey> {
        fips_check(spec)?;
        if let Some(len) = spec.secret_len() {
            return SoftKey::from_material(spec, random_secret(len)?);
        }
        let pkcs8 = match spec {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                let size = match spec {
                    KeySpec::Rsa2048 => KeySize::Rsa2048,
                    KeySpec::Rsa3072 => KeySize::Rsa3072,
                    _ => KeySize::Rsa4096,
                };
                let pair =
                    RsaKeyPair::generate(size).map_err(|_| backend("RSA key generation failed"))?;
                let der = pair
                    .as_der()
                    .map_err(|_| backend("RSA key encoding failed"))?;
                SecretBytes::from_slice(der.as_ref())
            }
            KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 => {
                let alg = ecdsa_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                let pair =
                    EcdsaKeyPair::generate(alg).map_err(|_| backend("EC key generation failed"))?;
                let doc = pair
                    .to_pkcs8v1()
                    .map_err(|_| backend("EC key encoding failed"))?;
                SecretBytes::from_slice(doc.as_ref())
            }
            KeySpec::Ed25519 => {
                let pair = Ed25519KeyPair::generate()
                    .map_err(|_| backend("Ed25519 key generation failed"))?;
                let doc = pair
                    .to_pkcs8v1()
                    .map_err(|_| backend("Ed25519 key encoding failed"))?;
                SecretBytes::from_slice(doc.as_ref())
            }
            KeySpec::EccSecgP256k1 => {
                let sk = random_scalar_bytes(|b| k256::SecretKey::from_slice(b).ok())?;
                let doc = sk
                    .to_pkcs8_der()
                    .map_err(|_| backend("secp256k1 key encoding failed"))?;
                SecretBytes::from_slice(doc.as_bytes())
            }
            KeySpec::Sm2 => {
                let sk = random_scalar_bytes(|b| sm2::SecretKey::from_slice(b).ok())?;
                let doc = sk
                    .to_pkcs8_der()
                    .map_err(|_| backend("SM2 key encoding failed"))?;
                SecretBytes::from_slice(doc.as_bytes())
            }
            KeySpec::MlDsa44
            | KeySpec::MlDsa65
            | KeySpec::MlDsa87
            | KeySpec::MlKem768
            | KeySpec::MlKem1024 => crate::pq::generate(spec)?,
            _ => return Err(HsmError::UnsupportedSpec(spec)),
        };
        SoftKey::from_material(spec, pkcs8)
    }

    /// Parses material (raw secret, or PKCS#8 for private keys), checking it fits the spec.
    pub fn from_material(spec: KeySpec, material: SecretBytes) -> HsmResult<SoftKey> {
        fips_check(spec)?;
        let bytes = material.expose();
        let kind = match spec {
            KeySpec::SymmetricDefault | KeySpec::Aes256 | KeySpec::Aes128 => {
                let alg = if spec == KeySpec::Aes128 {
                    &AES_128_GCM
                } else {
                    &AES_256_GCM
                };
                let unbound =
                    UnboundKey::new(alg, bytes).map_err(|_| rejected("wrong AES key length"))?;
                Kind::AesGcm(LessSafeKey::new(unbound))
            }
            KeySpec::Sm4 => Kind::Sm4Gcm(Box::new(sm4_gcm(bytes)?)),
            KeySpec::Tdes => {
                let (cipher_key, mac_key) = bytes
                    .split_at_checked(TDES_KEY_LEN)
                    .filter(|(_, m)| m.len() == keyward_hsm::TDES_MAC_KEY_LEN)
                    .ok_or(rejected(
                        "TDES material must be 24 key bytes and 32 MAC key bytes",
                    ))?;
                check_tdes_key(cipher_key)?;
                Kind::Tdes {
                    mac: hmac::Key::new(hmac::HMAC_SHA256, mac_key),
                }
            }
            KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => {
                let alg = hmac_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                // At least 16 bytes (NIST SP 800-107: a MAC key shorter than the security level is weak).
                if bytes.len() < 16 || bytes.len() > 128 {
                    return Err(rejected("HMAC key must be 16 to 128 bytes"));
                }
                Kind::Hmac(hmac::Key::new(alg, bytes))
            }
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                let bits = rsa_bits(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                let sign =
                    RsaKeyPair::from_pkcs8(bytes).map_err(|_| rejected("not an RSA PKCS#8 key"))?;
                if sign.public_modulus_len() * 8 != bits {
                    return Err(rejected("RSA modulus size does not match the key spec"));
                }
                let decrypt = PrivateDecryptingKey::from_pkcs8(bytes)
                    .map_err(|_| rejected("not an RSA PKCS#8 key"))?;
                let public = decrypt.public_key();
                let public_der = public
                    .as_der()
                    .map_err(|_| backend("RSA public key encoding"))?;
                let public_der = public_der.as_ref().to_vec();
                let encrypt = OaepPublicEncryptingKey::new(public)
                    .map_err(|_| backend("RSA public key setup"))?;
                let decrypt = OaepPrivateDecryptingKey::new(decrypt)
                    .map_err(|_| backend("RSA private key setup"))?;
                Kind::Rsa(Box::new(RsaKey {
                    sign,
                    decrypt,
                    encrypt,
                    public_der,
                }))
            }
            KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 => {
                let alg = ecdsa_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                let sign = EcdsaKeyPair::from_pkcs8(alg, bytes)
                    .map_err(|_| rejected("not a PKCS#8 key on the spec's curve"))?;
                let agree_alg = ecdh_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                let agree = agreement::PrivateKey::from_private_key_der(agree_alg, bytes)
                    .map_err(|_| rejected("not a PKCS#8 key on the spec's curve"))?;
                let public_der = sign
                    .public_key()
                    .as_der()
                    .map_err(|_| backend("EC public key"))?;
                let public_der = public_der.as_ref().to_vec();
                Kind::EcNist(Box::new(EcNistKey {
                    sign,
                    agree,
                    public_der,
                }))
            }
            KeySpec::Ed25519 => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                    .map_err(|_| rejected("not an Ed25519 PKCS#8 key"))?;
                let public_der = pair
                    .public_key()
                    .as_der()
                    .map_err(|_| backend("Ed25519 public key"))?;
                let public_der = public_der.as_ref().to_vec();
                Kind::Ed25519(Box::new(Ed25519Key { pair, public_der }))
            }
            KeySpec::EccSecgP256k1 => {
                let secret = k256::SecretKey::from_pkcs8_der(bytes)
                    .map_err(|_| rejected("not a secp256k1 PKCS#8 key"))?;
                let signing = k256::ecdsa::SigningKey::from(&secret);
                let public_der = secret
                    .public_key()
                    .to_public_key_der()
                    .map_err(|_| backend("secp256k1 public key"))?
                    .into_vec();
                Kind::K256(Box::new(K256Key {
                    secret,
                    signing,
                    public_der,
                }))
            }
            KeySpec::Sm2 => {
                let secret = sm2::SecretKey::from_pkcs8_der(bytes)
                    .map_err(|_| rejected("not an SM2 PKCS#8 key"))?;
                let signing = sm2::dsa::SigningKey::new(SM2_DEFAULT_DISTID, &secret)
                    .map_err(|_| rejected("invalid SM2 key"))?;
                let public = secret.public_key();
                let public_der = public
                    .to_public_key_der()
                    .map_err(|_| backend("SM2 public key"))?
                    .into_vec();
                let decrypting = sm2::pke::DecryptingKey::new(secret);
                let encrypting = sm2::pke::EncryptingKey::new(public);
                Kind::Sm2(Box::new(Sm2Key {
                    signing,
                    decrypting,
                    encrypting,
                    public_der,
                }))
            }
            KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87 => {
                Kind::MlDsa(Box::new(crate::pq::ml_dsa_key(spec, bytes)?))
            }
            KeySpec::MlKem768 | KeySpec::MlKem1024 => {
                Kind::MlKem(Box::new(crate::pq::ml_kem_key(spec, bytes)?))
            }
        };
        Ok(SoftKey {
            spec,
            material,
            kind,
        })
    }

    /// A public-only key from an SPKI, for verifying and encrypting.
    pub fn from_public(spec: KeySpec, spki: &[u8]) -> HsmResult<SoftKey> {
        fips_check(spec)?;
        let bad = || rejected("public key does not parse for the key spec");
        let kind = match spec {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                let bits = rsa_bits(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                let public = PublicEncryptingKey::from_der(spki).map_err(|_| bad())?;
                if public.key_size_bits() != bits {
                    return Err(rejected("RSA modulus size does not match the key spec"));
                }
                PublicKind::Rsa(OaepPublicEncryptingKey::new(public).map_err(|_| bad())?)
            }
            KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 => {
                let alg = ecdh_alg(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                if !ec_spki_has_named_curve(spki) {
                    return Err(bad());
                }
                // Parse once to reject points off the curve or on another curve.
                agreement::ParsedPublicKey::try_from(&agreement::UnparsedPublicKey::new(alg, spki))
                    .map_err(|_| bad())?;
                PublicKind::AwsLc
            }
            KeySpec::Ed25519 => {
                aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, spki)
                    .map_err(|_| bad())?;
                PublicKind::AwsLc
            }
            KeySpec::EccSecgP256k1 => {
                if !ec_spki_has_named_curve(spki) {
                    return Err(bad());
                }
                let pk = k256::PublicKey::from_public_key_der(spki).map_err(|_| bad())?;
                PublicKind::K256(k256::ecdsa::VerifyingKey::from(pk))
            }
            KeySpec::Sm2 => {
                let pk = sm2::PublicKey::from_public_key_der(spki).map_err(|_| bad())?;
                let verifying =
                    sm2::dsa::VerifyingKey::new(SM2_DEFAULT_DISTID, pk).map_err(|_| bad())?;
                PublicKind::Sm2 {
                    verifying,
                    encrypting: sm2::pke::EncryptingKey::new(pk),
                }
            }
            KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87 => {
                let alg =
                    crate::pq::ml_dsa_verification(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                aws_lc_rs::signature::ParsedPublicKey::new(alg, spki).map_err(|_| bad())?;
                PublicKind::AwsLc
            }
            KeySpec::MlKem768 | KeySpec::MlKem1024 => {
                return Err(HsmError::IncorrectKeyUsage(
                    "an ML-KEM public key is used by the encapsulating party, not imported",
                ))
            }
            _ => {
                return Err(HsmError::IncorrectKeyUsage(
                    "symmetric specs have no public key",
                ))
            }
        };
        Ok(SoftKey {
            spec,
            material: SecretBytes::default(),
            kind: Kind::Public(Box::new(PublicOnly {
                spki: spki.to_vec(),
                kind,
            })),
        })
    }
}
