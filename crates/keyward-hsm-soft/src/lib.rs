//! The software HSM: Keyward's default backend.
//!
//! Key material lives in process memory in zeroizing buffers, parsed once into the library's key objects when a
//! handle is made, so the hot path never re-parses a key. aws-lc-rs does AES-GCM, RSA, ECDSA/ECDH on the NIST
//! curves, Ed25519, HMAC, HKDF and AES-KWP; RustCrypto crates do what aws-lc-rs does not offer: secp256k1, SM2,
//! SM4 and TDES.

mod asym;
mod derived;
mod keys;
mod material;
mod pq;
mod sym;

use keyward_hsm::{
    EncryptionAlgorithm, Hsm, HsmError, HsmResult, KeyAttributes, KeyFamily, KeyHandle, KeySpec,
    MacAlgorithm, SecretBytes, SignInput, SigningAlgorithm,
};

use keys::SoftKey;
use material::fill;

pub(crate) const BACKEND: &str = "software";

/// Whether this is a FIPS build (the `fips` feature: aws-lc-rs on AWS-LC's FIPS 140-3 validated module). A
/// FIPS build refuses every spec outside the module ([`KeySpec::fips_approved`]) wherever a key is made,
/// imported or loaded, so such a key can be listed and destroyed but never used.
pub const FIPS_BUILD: bool = cfg!(feature = "fips");

/// The in-process software HSM.
#[derive(Debug, Default)]
pub struct SoftHsm {
    _private: (),
}

impl SoftHsm {
    /// A new software HSM. It holds no state of its own: every key lives in its handles.
    pub fn new() -> Self {
        SoftHsm { _private: () }
    }
}

fn key(handle: &KeyHandle) -> HsmResult<&SoftKey> {
    handle.object::<SoftKey>(BACKEND)
}

fn handle(key: SoftKey, extractable: bool) -> KeyHandle {
    let spec = key.spec;
    let public_only = key.is_public_only();
    KeyHandle::new(BACKEND, spec, extractable, public_only, key)
}

impl Hsm for SoftHsm {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn supports(&self, spec: KeySpec) -> bool {
        !FIPS_BUILD || spec.fips_approved()
    }

    fn crypto_module(&self) -> keyward_hsm::CryptoModule {
        keyward_hsm::CryptoModule {
            name: if FIPS_BUILD { "AWS-LC FIPS" } else { "AWS-LC" }.to_string(),
            version: aws_lc_rs::awslc_version().to_string(),
            fips: aws_lc_rs::try_fips_mode().is_ok(),
        }
    }

    fn generate(&self, spec: KeySpec, attrs: &KeyAttributes) -> HsmResult<KeyHandle> {
        Ok(handle(SoftKey::generate(spec)?, attrs.extractable))
    }

    fn import_plaintext(
        &self,
        spec: KeySpec,
        material: &SecretBytes,
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        Ok(handle(
            SoftKey::from_material(spec, material.clone())?,
            attrs.extractable,
        ))
    }

    fn import_public(&self, spec: KeySpec, spki_der: &[u8]) -> HsmResult<KeyHandle> {
        Ok(handle(SoftKey::from_public(spec, spki_der)?, true))
    }

    fn export_plaintext(&self, handle: &KeyHandle) -> HsmResult<SecretBytes> {
        if !handle.is_extractable() || handle.is_public_only() {
            return Err(HsmError::NotExtractable);
        }
        Ok(key(handle)?.material.clone())
    }

    fn public_key_der(&self, handle: &KeyHandle) -> HsmResult<Vec<u8>> {
        key(handle)?
            .public_der()
            .map(<[u8]>::to_vec)
            .ok_or(HsmError::IncorrectKeyUsage(
                "symmetric keys have no public key",
            ))
    }

    fn wrap_for_storage(
        &self,
        kek: &KeyHandle,
        handle: &KeyHandle,
        aad: &[u8],
    ) -> HsmResult<Vec<u8>> {
        let kek_key = key(kek)?;
        let inner = key(handle)?;
        if inner.is_public_only() {
            return Err(HsmError::IncorrectKeyUsage(
                "a public key has no material to wrap",
            ));
        }
        let aead = kek_key
            .aes_gcm()
            .ok_or(HsmError::IncorrectKeyUsage("the KEK must be an AES key"))?;
        let mut out = Vec::with_capacity(inner.material.len() + 28);
        sym::aes_gcm_seal(aead, aad, inner.material.expose(), &mut out)?;
        Ok(out)
    }

    fn unwrap_from_storage(
        &self,
        kek: &KeyHandle,
        spec: KeySpec,
        blob: &[u8],
        aad: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        // Before the blob is opened: a key outside the FIPS module is refused for that, not as corrupt.
        keys::fips_check(spec)?;
        let kek_key = key(kek)?;
        let aead = kek_key
            .aes_gcm()
            .ok_or(HsmError::IncorrectKeyUsage("the KEK must be an AES key"))?;
        let material = sym::aes_gcm_open(aead, aad, blob)?;
        Ok(handle(
            SoftKey::from_material(spec, material)?,
            attrs.extractable,
        ))
    }

    fn export_wrapped(&self, handle: &KeyHandle, wrapping_spki_der: &[u8]) -> HsmResult<Vec<u8>> {
        if !handle.is_extractable() || handle.is_public_only() {
            return Err(HsmError::NotExtractable);
        }
        asym::rsa_aes_kwp_wrap(wrapping_spki_der, key(handle)?.material.expose())
    }

    fn import_wrapped(
        &self,
        unwrapping_key: &KeyHandle,
        spec: KeySpec,
        wrapped: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        keys::fips_check(spec)?;
        let material = asym::rsa_aes_kwp_unwrap(key(unwrapping_key)?, wrapped)?;
        Ok(handle(
            SoftKey::from_material(spec, material)?,
            attrs.extractable,
        ))
    }

    fn encrypt_symmetric(
        &self,
        handle: &KeyHandle,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> HsmResult<()> {
        sym::seal(key(handle)?, aad, plaintext, out)
    }

    fn decrypt_symmetric(
        &self,
        handle: &KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> HsmResult<SecretBytes> {
        sym::open(key(handle)?, aad, sealed)
    }

    fn encrypt_asymmetric(
        &self,
        handle: &KeyHandle,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> HsmResult<Vec<u8>> {
        asym::encrypt(key(handle)?, alg, plaintext)
    }

    fn decrypt_asymmetric(
        &self,
        handle: &KeyHandle,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> HsmResult<SecretBytes> {
        asym::decrypt(key(handle)?, alg, ciphertext)
    }

    fn sign(
        &self,
        handle: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
    ) -> HsmResult<Vec<u8>> {
        asym::sign(key(handle)?, alg, input)
    }

    fn verify(
        &self,
        handle: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> HsmResult<bool> {
        asym::verify(key(handle)?, alg, input, signature)
    }

    fn mac(&self, handle: &KeyHandle, alg: MacAlgorithm, message: &[u8]) -> HsmResult<Vec<u8>> {
        let hmac = key(handle)?.hmac_for(alg)?;
        Ok(aws_lc_rs::hmac::sign(hmac, message).as_ref().to_vec())
    }

    fn verify_mac(
        &self,
        handle: &KeyHandle,
        alg: MacAlgorithm,
        message: &[u8],
        mac: &[u8],
    ) -> HsmResult<bool> {
        let hmac = key(handle)?.hmac_for(alg)?;
        // aws-lc-rs compares in constant time.
        Ok(aws_lc_rs::hmac::verify(hmac, message, mac).is_ok())
    }

    fn derive_hkdf(
        &self,
        handle: &KeyHandle,
        salt: &[u8],
        info: &[u8],
        len: usize,
    ) -> HsmResult<SecretBytes> {
        let k = key(handle)?;
        if !matches!(k.spec.family(), KeyFamily::Symmetric | KeyFamily::Hmac) {
            return Err(HsmError::IncorrectKeyUsage(
                "HKDF needs a symmetric or HMAC key",
            ));
        }
        sym::hkdf_sha256(k.material.expose(), salt, info, len)
    }

    fn agree(&self, handle: &KeyHandle, peer_spki_der: &[u8]) -> HsmResult<SecretBytes> {
        asym::agree(key(handle)?, peer_spki_der)
    }

    fn encrypt_deterministic(
        &self,
        handle: &KeyHandle,
        aad: &[u8],
        plaintext: &[u8],
    ) -> HsmResult<Vec<u8>> {
        sym::siv_seal(key(handle)?, aad, plaintext)
    }

    fn decrypt_deterministic(
        &self,
        handle: &KeyHandle,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> HsmResult<SecretBytes> {
        sym::siv_open(key(handle)?, aad, ciphertext)
    }

    fn derived_macs(
        &self,
        handle: &KeyHandle,
        label: &[u8],
        context: &[u8],
        messages: &[&[u8]],
    ) -> HsmResult<Vec<Vec<u8>>> {
        derived::derived_macs(key(handle)?, label, context, messages)
    }

    fn fpe_encrypt(
        &self,
        handle: &KeyHandle,
        radix: u32,
        tweak: &[u8],
        numerals: &[u16],
        accept: &dyn Fn(&[u16]) -> bool,
    ) -> HsmResult<Vec<u16>> {
        derived::ff1(key(handle)?, true, radix, tweak, numerals, accept)
    }

    fn fpe_decrypt(
        &self,
        handle: &KeyHandle,
        radix: u32,
        tweak: &[u8],
        numerals: &[u16],
        accept: &dyn Fn(&[u16]) -> bool,
    ) -> HsmResult<Vec<u16>> {
        derived::ff1(key(handle)?, false, radix, tweak, numerals, accept)
    }

    fn decapsulate(&self, handle: &KeyHandle, ciphertext: &[u8]) -> HsmResult<SecretBytes> {
        match &key(handle)?.kind {
            keys::Kind::MlKem(k) => pq::decapsulate(k, ciphertext),
            _ => Err(HsmError::IncorrectKeyUsage(
                "decapsulation needs an ML-KEM key",
            )),
        }
    }

    fn fill_random(&self, out: &mut [u8]) -> HsmResult<()> {
        fill(out)
    }

    fn destroy(&self, handle: KeyHandle) -> HsmResult<()> {
        // Material is zeroized when the last clone of the handle drops.
        key(&handle)?;
        drop(handle);
        Ok(())
    }
}
