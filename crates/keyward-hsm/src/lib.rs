//! The HSM layer of Keyward.
//!
//! The KMS core talks to key material only through [`Hsm`]. A backend may keep material in process memory (the
//! software HSM) or inside a token it cannot leave (PKCS#11); the core never needs to know which. Keys are named
//! by [`KeyHandle`]s; what a handle points at is the backend's business.
//!
//! # Storage of key material
//! The core persists keys as opaque blobs that [`Hsm::wrap_for_storage`] produces under a key-encryption key
//! (the root key) and [`Hsm::unwrap_from_storage`] turns back into handles. A software backend returns real
//! ciphertexts; a token backend may return a wrapped object or, for token-resident keys, a reference to it.
//!
//! # Material formats
//! Where material crosses the boundary (import, export, BYOK) it is: raw bytes for symmetric and HMAC keys, and
//! PKCS#8 `PrivateKeyInfo` DER for private keys. Public keys are X.509 `SubjectPublicKeyInfo` DER.

#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

pub mod der;
mod error;
mod secret;
mod spec;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

pub use error::{HsmError, HsmResult};
pub use secret::SecretBytes;
pub use spec::{
    EncryptionAlgorithm, KeyFamily, KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm,
    TDES_KEY_LEN, TDES_MAC_KEY_LEN,
};

/// The cryptographic module a backend's software operations run in, as status and compliance reports name
/// it: an auditor asks which library, which version, and whether it runs as a FIPS 140-3 validated module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoModule {
    /// The library ("AWS-LC", or "AWS-LC FIPS" for the validated build).
    pub name: String,
    /// Its version as it reports itself at run time.
    pub version: String,
    /// Whether it runs in FIPS mode (its self-tests passed and only its approved services are used).
    pub fips: bool,
}

/// How a key is to be held by the backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyAttributes {
    /// Whether [`Hsm::export_plaintext`] and [`Hsm::export_wrapped`] may release the material.
    pub extractable: bool,
    /// Token backends: keep the key as a persistent, non-extractable token object rather than a wrapped blob.
    pub token_resident: bool,
    /// Token backends: a label for the object (never secret).
    pub label: Option<String>,
}

impl KeyAttributes {
    /// A key that may be wrapped for storage but never exported in plaintext.
    pub fn internal() -> Self {
        KeyAttributes::default()
    }

    /// A key whose material may leave the HSM (data keys, exportable keys).
    pub fn extractable() -> Self {
        KeyAttributes {
            extractable: true,
            ..KeyAttributes::default()
        }
    }
}

/// A reference to a key held by a backend.
///
/// Cloning is cheap (reference counted). Dropping the last clone lets a software backend zeroize the material.
#[derive(Clone)]
pub struct KeyHandle {
    spec: KeySpec,
    extractable: bool,
    public_only: bool,
    backend: &'static str,
    object: Arc<dyn Any + Send + Sync>,
}

impl KeyHandle {
    /// Builds a handle. Backends call this; the core never does.
    pub fn new<T: Any + Send + Sync>(
        backend: &'static str,
        spec: KeySpec,
        extractable: bool,
        public_only: bool,
        object: T,
    ) -> Self {
        KeyHandle {
            spec,
            extractable,
            public_only,
            backend,
            object: Arc::new(object),
        }
    }

    /// The key spec.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// Whether the material may leave the backend.
    pub fn is_extractable(&self) -> bool {
        self.extractable
    }

    /// True for handles made by [`Hsm::import_public`], which can only verify and encrypt.
    pub fn is_public_only(&self) -> bool {
        self.public_only
    }

    /// The backend's object behind the handle; `WrongBackend` when the handle is another backend's.
    pub fn object<T: Any + Send + Sync>(&self, backend: &'static str) -> HsmResult<&T> {
        if self.backend != backend {
            return Err(HsmError::WrongBackend);
        }
        self.object
            .downcast_ref::<T>()
            .ok_or(HsmError::WrongBackend)
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHandle")
            .field("backend", &self.backend)
            .field("spec", &self.spec)
            .field("extractable", &self.extractable)
            .field("public_only", &self.public_only)
            .finish_non_exhaustive()
    }
}

/// What a signature covers.
#[derive(Clone, Copy, Debug)]
pub enum SignInput<'a> {
    /// The whole message; the backend hashes it.
    Message(&'a [u8]),
    /// A digest the caller computed with the algorithm's hash.
    Digest(&'a [u8]),
}

/// A hardware security module, real or in software.
///
/// Implementations must be safe to call from many threads at once. Every method that takes a handle fails with
/// [`HsmError::WrongBackend`] for another backend's handle and [`HsmError::IncorrectKeyUsage`] when the
/// operation does not fit the key's spec.
pub trait Hsm: Send + Sync + 'static {
    /// A short, stable name of the backend ("software", "pkcs11").
    fn backend_name(&self) -> &'static str;

    /// Whether the backend can generate and use keys of this spec.
    fn supports(&self, spec: KeySpec) -> bool;

    /// The module the backend's cryptography runs in. A backend that names none reports its own name, no
    /// version, and no FIPS mode.
    fn crypto_module(&self) -> CryptoModule {
        CryptoModule {
            name: self.backend_name().to_string(),
            version: String::new(),
            fips: false,
        }
    }

    /// Whether the backend offers this encryption algorithm for a spec it supports. Tokens differ here
    /// (SoftHSM2 offers RSA-OAEP with SHA-1 only), and the service refuses an algorithm its HSM lacks with
    /// a clear error instead of failing at the first decryption.
    fn supports_encryption(&self, spec: KeySpec, alg: EncryptionAlgorithm) -> bool {
        self.supports(spec) && spec.encryption_algorithms().contains(&alg)
    }

    /// The encryption algorithms a key of `spec` can use here, where it would live (in a token, for a backend
    /// that holds some keys in one): what a key's description lists, so that nobody picks an algorithm whose
    /// ciphertexts could not be decrypted.
    fn encryption_algorithms(
        &self,
        spec: KeySpec,
        token_resident: bool,
    ) -> Vec<EncryptionAlgorithm> {
        let _ = token_resident;
        spec.encryption_algorithms()
            .iter()
            .copied()
            .filter(|a| self.supports_encryption(spec, *a))
            .collect()
    }

    /// Generates a fresh key from the backend's CSPRNG.
    fn generate(&self, spec: KeySpec, attrs: &KeyAttributes) -> HsmResult<KeyHandle>;

    /// Imports plaintext material (raw bytes, or PKCS#8 for private keys).
    fn import_plaintext(
        &self,
        spec: KeySpec,
        material: &SecretBytes,
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle>;

    /// Imports a public key (SPKI DER) to verify signatures and encrypt with it.
    fn import_public(&self, spec: KeySpec, spki_der: &[u8]) -> HsmResult<KeyHandle>;

    /// Releases plaintext material of an extractable key (raw bytes, or PKCS#8 for private keys).
    fn export_plaintext(&self, key: &KeyHandle) -> HsmResult<SecretBytes>;

    /// The public key as SPKI DER.
    fn public_key_der(&self, key: &KeyHandle) -> HsmResult<Vec<u8>>;

    /// Wraps `key` under the key-encryption key `kek` (an AES-256 key), binding `aad`, for storage at rest.
    fn wrap_for_storage(&self, kek: &KeyHandle, key: &KeyHandle, aad: &[u8]) -> HsmResult<Vec<u8>>;

    /// Inverse of [`Hsm::wrap_for_storage`]; fails with `DecryptFailed` if the blob or `aad` was altered.
    fn unwrap_from_storage(
        &self,
        kek: &KeyHandle,
        spec: KeySpec,
        blob: &[u8],
        aad: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle>;

    /// Exports an extractable key for another system: RSA-OAEP-SHA-256 of a fresh AES-256 key, followed by
    /// AES-KWP (RFC 5649) of the material under that key, with the recipient's RSA public key (SPKI DER).
    fn export_wrapped(&self, key: &KeyHandle, wrapping_spki_der: &[u8]) -> HsmResult<Vec<u8>>;

    /// Imports material wrapped as in [`Hsm::export_wrapped`], with the RSA private key `unwrapping_key`.
    fn import_wrapped(
        &self,
        unwrapping_key: &KeyHandle,
        spec: KeySpec,
        wrapped: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle>;

    /// Seals `plaintext` with the key's AEAD under `aad`, appending `nonce || ciphertext || tag` to `out`.
    /// The nonce comes from the backend's CSPRNG; callers cannot choose it.
    fn encrypt_symmetric(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> HsmResult<()>;

    /// Opens `nonce || ciphertext || tag` made by [`Hsm::encrypt_symmetric`].
    fn decrypt_symmetric(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> HsmResult<SecretBytes>;

    /// Public-key encryption (RSA-OAEP, SM2).
    fn encrypt_asymmetric(
        &self,
        key: &KeyHandle,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> HsmResult<Vec<u8>>;

    /// Private-key decryption (RSA-OAEP, SM2).
    fn decrypt_asymmetric(
        &self,
        key: &KeyHandle,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> HsmResult<SecretBytes>;

    /// Signs a message or a digest.
    fn sign(
        &self,
        key: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
    ) -> HsmResult<Vec<u8>>;

    /// Verifies a signature; a wrong signature is `Ok(false)`, not an error.
    fn verify(
        &self,
        key: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> HsmResult<bool>;

    /// Computes a MAC.
    fn mac(&self, key: &KeyHandle, alg: MacAlgorithm, message: &[u8]) -> HsmResult<Vec<u8>>;

    /// Verifies a MAC in constant time.
    fn verify_mac(
        &self,
        key: &KeyHandle,
        alg: MacAlgorithm,
        message: &[u8],
        mac: &[u8],
    ) -> HsmResult<bool>;

    /// HKDF-SHA-256 (RFC 5869) with the key's material as input keying material.
    fn derive_hkdf(
        &self,
        key: &KeyHandle,
        salt: &[u8],
        info: &[u8],
        len: usize,
    ) -> HsmResult<SecretBytes>;

    /// ECDH with a peer public key (SPKI DER); returns the raw shared secret (the x coordinate).
    fn agree(&self, key: &KeyHandle, peer_spki_der: &[u8]) -> HsmResult<SecretBytes>;

    /// Deterministic authenticated encryption (AES-SIV, RFC 5297) under a key the backend derives from this
    /// AES key for that purpose only: equal plaintexts under equal associated data give equal ciphertexts
    /// (`synthetic IV ‖ ciphertext`), which is what equality joins on encrypted columns need and all they
    /// reveal. A backend without it refuses, naming the spec.
    fn encrypt_deterministic(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        plaintext: &[u8],
    ) -> HsmResult<Vec<u8>> {
        let _ = (aad, plaintext);
        Err(HsmError::UnsupportedSpec(key.spec()))
    }

    /// Opens what [`Hsm::encrypt_deterministic`] made; any change to it or to the associated data is
    /// [`HsmError::DecryptFailed`].
    fn decrypt_deterministic(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> HsmResult<SecretBytes> {
        let _ = (aad, ciphertext);
        Err(HsmError::UnsupportedSpec(key.spec()))
    }

    /// MACs of `messages` under a key derived from this symmetric key for one purpose only (`label` names
    /// the purpose, `context` binds the derived key to its owner), so that keyed search hashes never share a
    /// key with the key's own encryption. AES keys: HMAC-SHA-256 under HKDF-SHA-256 (salt `label`, info
    /// `context`); SM4 keys: HMAC-SM3 under HKDF-SM3, for users whose compliance rules ask for the national
    /// algorithms end to end. The derived key is made once per call, never leaves the backend in a backend
    /// that overrides this; the default goes through [`Hsm::derive_hkdf`] and an internal HMAC key.
    fn derived_macs(
        &self,
        key: &KeyHandle,
        label: &[u8],
        context: &[u8],
        messages: &[&[u8]],
    ) -> HsmResult<Vec<Vec<u8>>> {
        if !matches!(
            key.spec(),
            KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256
        ) {
            return Err(HsmError::UnsupportedSpec(key.spec()));
        }
        let derived = self.derive_hkdf(key, label, context, 32)?;
        let mac_key =
            self.import_plaintext(KeySpec::Hmac256, &derived, &KeyAttributes::internal())?;
        let macs = messages
            .iter()
            .map(|m| self.mac(&mac_key, MacAlgorithm::HmacSha256, m))
            .collect();
        self.destroy(mac_key)?;
        macs
    }

    /// Format-preserving encryption (NIST SP 800-38G FF1) of `numerals` (each below `radix`) under a key
    /// derived from this AES key for that purpose only: the result has as many numerals in the same radix,
    /// so a value keeps its length and alphabet where a schema cannot change. While `accept` refuses the
    /// result it is encrypted again (cycle walking), so the output stays in the subset `accept` defines (a
    /// card number that passes Luhn); [`Hsm::fpe_decrypt`] with the same `accept` inverts it. FF1 carries no
    /// integrity: a changed input decrypts to another value of the domain. A backend without it refuses,
    /// naming the spec.
    fn fpe_encrypt(
        &self,
        key: &KeyHandle,
        radix: u32,
        tweak: &[u8],
        numerals: &[u16],
        accept: &dyn Fn(&[u16]) -> bool,
    ) -> HsmResult<Vec<u16>> {
        let _ = (radix, tweak, numerals, accept);
        Err(HsmError::UnsupportedSpec(key.spec()))
    }

    /// The inverse of [`Hsm::fpe_encrypt`] under the same key, radix, tweak and `accept`.
    fn fpe_decrypt(
        &self,
        key: &KeyHandle,
        radix: u32,
        tweak: &[u8],
        numerals: &[u16],
        accept: &dyn Fn(&[u16]) -> bool,
    ) -> HsmResult<Vec<u16>> {
        let _ = (radix, tweak, numerals, accept);
        Err(HsmError::UnsupportedSpec(key.spec()))
    }

    /// ML-KEM decapsulation (FIPS 203): the shared secret a ciphertext made against the key's public key
    /// carries. A backend without ML-KEM refuses, naming the spec.
    fn decapsulate(&self, key: &KeyHandle, ciphertext: &[u8]) -> HsmResult<SecretBytes> {
        let _ = ciphertext;
        Err(HsmError::UnsupportedSpec(key.spec()))
    }

    /// Fills `out` from the backend's CSPRNG.
    fn fill_random(&self, out: &mut [u8]) -> HsmResult<()>;

    /// Destroys the key. Software keys are zeroized once the last handle is dropped; token objects are deleted.
    fn destroy(&self, key: KeyHandle) -> HsmResult<()>;
}
