//! Key specs, usages and algorithms: the vocabulary of the API contract.
//!
//! Every name here is the wire name of `API.md`; `as_str`/`parse` are the only place that mapping lives, so the
//! HTTP layer, the store and the audit log cannot drift apart.

use core::fmt;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name fixed by the API contract.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// Parses a wire name; `None` for anything not in the contract.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

wire_enum!(
    /// What kind of key material a key holds.
    KeySpec {
        /// AES-256-GCM, the default for envelope encryption.
        SymmetricDefault => "SYMMETRIC_DEFAULT",
        /// AES-128-GCM.
        Aes128 => "AES_128",
        /// AES-256-GCM.
        Aes256 => "AES_256",
        /// SM4-GCM (GB/T 32907).
        Sm4 => "SM4",
        /// Triple DES, legacy only: TDES-CBC with an HMAC-SHA-256 tag (encrypt-then-MAC).
        Tdes => "TDES",
        /// RSA with a 2048-bit modulus.
        Rsa2048 => "RSA_2048",
        /// RSA with a 3072-bit modulus.
        Rsa3072 => "RSA_3072",
        /// RSA with a 4096-bit modulus.
        Rsa4096 => "RSA_4096",
        /// NIST P-256.
        EccNistP256 => "ECC_NIST_P256",
        /// NIST P-384.
        EccNistP384 => "ECC_NIST_P384",
        /// NIST P-521.
        EccNistP521 => "ECC_NIST_P521",
        /// secp256k1.
        EccSecgP256k1 => "ECC_SECG_P256K1",
        /// Ed25519 (RFC 8032).
        Ed25519 => "ED25519",
        /// SM2 (GB/T 32918).
        Sm2 => "SM2",
        /// HMAC with SHA-224.
        Hmac224 => "HMAC_224",
        /// HMAC with SHA-256.
        Hmac256 => "HMAC_256",
        /// HMAC with SHA-384.
        Hmac384 => "HMAC_384",
        /// HMAC with SHA-512.
        Hmac512 => "HMAC_512",
        /// ML-DSA-44 (FIPS 204), NIST security category 2.
        MlDsa44 => "ML_DSA_44",
        /// ML-DSA-65 (FIPS 204), category 3.
        MlDsa65 => "ML_DSA_65",
        /// ML-DSA-87 (FIPS 204), category 5.
        MlDsa87 => "ML_DSA_87",
        /// ML-KEM-768 (FIPS 203), category 3.
        MlKem768 => "ML_KEM_768",
        /// ML-KEM-1024 (FIPS 203), category 5.
        MlKem1024 => "ML_KEM_1024",
    }
);

wire_enum!(
    /// What a key may be used for; fixed at creation.
    KeyUsage {
        /// Encrypt and decrypt.
        EncryptDecrypt => "ENCRYPT_DECRYPT",
        /// Sign and verify.
        SignVerify => "SIGN_VERIFY",
        /// Compute and verify MACs.
        GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        /// Establishing a shared secret: ECDH for EC keys, decapsulation for ML-KEM keys.
        KeyAgreement => "KEY_AGREEMENT",
    }
);

wire_enum!(
    /// Encryption algorithms.
    EncryptionAlgorithm {
        /// The key's own AEAD (AES-GCM, SM4-GCM, TDES-CBC-HMAC).
        SymmetricDefault => "SYMMETRIC_DEFAULT",
        /// RSA-OAEP with SHA-1 and MGF1-SHA-1.
        RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
        /// RSA-OAEP with SHA-256 and MGF1-SHA-256.
        RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        /// SM2 public-key encryption (C1C3C2, GB/T 32918.4).
        Sm2Pke => "SM2PKE",
    }
);

wire_enum!(
    /// Signature algorithms.
    SigningAlgorithm {
        /// RSASSA-PSS, SHA-256, salt length 32.
        RsassaPssSha256 => "RSASSA_PSS_SHA_256",
        /// RSASSA-PSS, SHA-384, salt length 48.
        RsassaPssSha384 => "RSASSA_PSS_SHA_384",
        /// RSASSA-PSS, SHA-512, salt length 64.
        RsassaPssSha512 => "RSASSA_PSS_SHA_512",
        /// RSASSA-PKCS1-v1_5 with SHA-256.
        RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
        /// RSASSA-PKCS1-v1_5 with SHA-384.
        RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
        /// RSASSA-PKCS1-v1_5 with SHA-512.
        RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
        /// ECDSA with SHA-256 (P-256, secp256k1), DER signature.
        EcdsaSha256 => "ECDSA_SHA_256",
        /// ECDSA with SHA-384 (P-384), DER signature.
        EcdsaSha384 => "ECDSA_SHA_384",
        /// ECDSA with SHA-512 (P-521), DER signature.
        EcdsaSha512 => "ECDSA_SHA_512",
        /// Pure Ed25519 (messages only).
        Ed25519 => "ED25519",
        /// SM2 signature with SM3 and the default distinguishing id, DER signature.
        Sm2Dsa => "SM2DSA",
        /// ML-DSA (FIPS 204) of the message with an empty context, the name AWS KMS gives it.
        MlDsaShake256 => "ML_DSA_SHAKE_256",
    }
);

wire_enum!(
    /// MAC algorithms.
    MacAlgorithm {
        /// HMAC-SHA-224.
        HmacSha224 => "HMAC_SHA_224",
        /// HMAC-SHA-256.
        HmacSha256 => "HMAC_SHA_256",
        /// HMAC-SHA-384.
        HmacSha384 => "HMAC_SHA_384",
        /// HMAC-SHA-512.
        HmacSha512 => "HMAC_SHA_512",
    }
);

/// The broad family of a spec, which decides storage format and available operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    /// A symmetric AEAD key.
    Symmetric,
    /// An RSA key pair.
    Rsa,
    /// An elliptic-curve key pair (ECDSA/ECDH, Ed25519, SM2).
    Ec,
    /// An HMAC key.
    Hmac,
    /// A post-quantum key pair: ML-DSA signatures or ML-KEM key encapsulation.
    PostQuantum,
}

impl KeySpec {
    /// The family of this spec.
    pub const fn family(self) -> KeyFamily {
        use KeySpec::*;
        match self {
            SymmetricDefault | Aes128 | Aes256 | Sm4 | Tdes => KeyFamily::Symmetric,
            Rsa2048 | Rsa3072 | Rsa4096 => KeyFamily::Rsa,
            EccNistP256 | EccNistP384 | EccNistP521 | EccSecgP256k1 | Ed25519 | Sm2 => {
                KeyFamily::Ec
            }
            Hmac224 | Hmac256 | Hmac384 | Hmac512 => KeyFamily::Hmac,
            MlDsa44 | MlDsa65 | MlDsa87 | MlKem768 | MlKem1024 => KeyFamily::PostQuantum,
        }
    }

    /// True for specs that have a public half.
    pub const fn is_asymmetric(self) -> bool {
        matches!(
            self.family(),
            KeyFamily::Rsa | KeyFamily::Ec | KeyFamily::PostQuantum
        )
    }

    /// True for the ML-KEM specs, whose only operation is decapsulation.
    pub const fn is_kem(self) -> bool {
        matches!(self, KeySpec::MlKem768 | KeySpec::MlKem1024)
    }

    /// The usages a key of this spec may be created with.
    pub fn allowed_usages(self) -> &'static [KeyUsage] {
        use KeySpec::*;
        use KeyUsage::*;
        match self {
            SymmetricDefault | Aes128 | Aes256 | Sm4 | Tdes => &[EncryptDecrypt],
            Rsa2048 | Rsa3072 | Rsa4096 => &[EncryptDecrypt, SignVerify],
            EccNistP256 | EccNistP384 | EccNistP521 | EccSecgP256k1 => &[SignVerify, KeyAgreement],
            Ed25519 => &[SignVerify],
            Sm2 => &[SignVerify, EncryptDecrypt],
            Hmac224 | Hmac256 | Hmac384 | Hmac512 => &[GenerateVerifyMac],
            MlDsa44 | MlDsa65 | MlDsa87 => &[SignVerify],
            MlKem768 | MlKem1024 => &[KeyAgreement],
        }
    }

    /// The usage a key gets when the caller names none (as AWS KMS does).
    pub fn default_usage(self) -> KeyUsage {
        match self.family() {
            KeyFamily::Symmetric | KeyFamily::Rsa => KeyUsage::EncryptDecrypt,
            KeyFamily::Ec => KeyUsage::SignVerify,
            KeyFamily::Hmac => KeyUsage::GenerateVerifyMac,
            KeyFamily::PostQuantum if self.is_kem() => KeyUsage::KeyAgreement,
            KeyFamily::PostQuantum => KeyUsage::SignVerify,
        }
    }

    /// Whether the spec's algorithms are inside AWS-LC's FIPS 140-3 validated module. The Chinese national
    /// algorithms, secp256k1 and TDES are served by other libraries (or, for TDES, are no longer approved for
    /// encryption), so a FIPS build refuses them.
    pub const fn fips_approved(self) -> bool {
        !matches!(
            self,
            KeySpec::Sm2 | KeySpec::Sm4 | KeySpec::EccSecgP256k1 | KeySpec::Tdes
        )
    }

    /// Specs that compliance reports flag as weak and that need an explicit opt-in.
    pub const fn is_legacy(self) -> bool {
        matches!(self, KeySpec::Tdes)
    }

    /// Length in bytes of the raw secret for symmetric and HMAC specs.
    pub const fn secret_len(self) -> Option<usize> {
        use KeySpec::*;
        match self {
            SymmetricDefault | Aes256 => Some(32),
            Aes128 | Sm4 => Some(16),
            // 24 bytes of three-key TDES followed by a 32-byte HMAC-SHA-256 key.
            Tdes => Some(TDES_KEY_LEN + TDES_MAC_KEY_LEN),
            Hmac224 => Some(28),
            Hmac256 => Some(32),
            Hmac384 => Some(48),
            Hmac512 => Some(64),
            _ => None,
        }
    }

    /// Encryption algorithms this spec supports.
    pub fn encryption_algorithms(self) -> &'static [EncryptionAlgorithm] {
        use EncryptionAlgorithm::*;
        match self.family() {
            KeyFamily::Symmetric => &[SymmetricDefault],
            KeyFamily::Rsa => &[RsaesOaepSha1, RsaesOaepSha256],
            KeyFamily::Ec if self == KeySpec::Sm2 => &[Sm2Pke],
            _ => &[],
        }
    }

    /// Signature algorithms this spec supports.
    pub fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm::*;
        match self {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &[
                RsassaPssSha256,
                RsassaPssSha384,
                RsassaPssSha512,
                RsassaPkcs1V15Sha256,
                RsassaPkcs1V15Sha384,
                RsassaPkcs1V15Sha512,
            ],
            KeySpec::EccNistP256 | KeySpec::EccSecgP256k1 => &[EcdsaSha256],
            KeySpec::EccNistP384 => &[EcdsaSha384],
            KeySpec::EccNistP521 => &[EcdsaSha512],
            KeySpec::Ed25519 => &[Ed25519],
            KeySpec::Sm2 => &[Sm2Dsa],
            KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87 => &[MlDsaShake256],
            _ => &[],
        }
    }

    /// The one MAC algorithm of an HMAC spec.
    pub fn mac_algorithm(self) -> Option<MacAlgorithm> {
        match self {
            KeySpec::Hmac224 => Some(MacAlgorithm::HmacSha224),
            KeySpec::Hmac256 => Some(MacAlgorithm::HmacSha256),
            KeySpec::Hmac384 => Some(MacAlgorithm::HmacSha384),
            KeySpec::Hmac512 => Some(MacAlgorithm::HmacSha512),
            _ => None,
        }
    }

    /// Whether ECDH is available for this spec.
    pub const fn supports_agreement(self) -> bool {
        matches!(
            self,
            KeySpec::EccNistP256
                | KeySpec::EccNistP384
                | KeySpec::EccNistP521
                | KeySpec::EccSecgP256k1
        )
    }
}

/// Length of the TDES part of a TDES key.
pub const TDES_KEY_LEN: usize = 24;
/// Length of the HMAC part of a TDES key.
pub const TDES_MAC_KEY_LEN: usize = 32;

impl SigningAlgorithm {
    /// Length of the digest a pre-hashed request must carry; `None` where only messages are accepted.
    pub const fn digest_len(self) -> Option<usize> {
        use SigningAlgorithm::*;
        match self {
            RsassaPssSha256 | RsassaPkcs1V15Sha256 | EcdsaSha256 => Some(32),
            RsassaPssSha384 | RsassaPkcs1V15Sha384 | EcdsaSha384 => Some(48),
            RsassaPssSha512 | RsassaPkcs1V15Sha512 | EcdsaSha512 => Some(64),
            // SM2 signs e = SM3(Z_A || M); a digest request carries e.
            Sm2Dsa => Some(32),
            // ML-DSA's "digest" is the external μ of FIPS 204 (64 bytes, bound to the public key).
            MlDsaShake256 => Some(64),
            Ed25519 => None,
        }
    }
}

impl MacAlgorithm {
    /// Output length in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            MacAlgorithm::HmacSha224 => 28,
            MacAlgorithm::HmacSha256 => 32,
            MacAlgorithm::HmacSha384 => 48,
            MacAlgorithm::HmacSha512 => 64,
        }
    }
}

impl KeySpec {
    /// Nonce (or IV) length of the spec's AEAD, in bytes.
    pub const fn aead_nonce_len(self) -> Option<usize> {
        match self {
            KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256 | KeySpec::Sm4 => {
                Some(12)
            }
            KeySpec::Tdes => Some(8),
            _ => None,
        }
    }

    /// Tag length of the spec's AEAD, in bytes.
    pub const fn aead_tag_len(self) -> Option<usize> {
        match self {
            KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256 | KeySpec::Sm4 => {
                Some(16)
            }
            KeySpec::Tdes => Some(32),
            _ => None,
        }
    }
}
