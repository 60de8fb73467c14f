//! The HSM the service runs on when a PKCS#11 token is the root of trust.
//!
//! The token holds what protects everything: the root key is a persistent, non-extractable token object, and
//! every key version is sealed by the token under it (AES-GCM inside the token, with the version's binding as
//! associated data). Keys of origin `HSM` are token objects too, used only inside the token. Keys of origin
//! `KEYWARD` are unsealed by the token once, on first use, and then serve requests in the software HSM at
//! memory speed; their material exists in plaintext only in the process and only while unsealed, exactly as
//! with Shamir unsealing, and without the same token nothing in the store opens.
//!
//! Blobs carry a four-byte tag saying which path made them, so each is opened the way it was sealed.

use std::sync::Arc;

use keyward_hsm::{
    EncryptionAlgorithm, Hsm, HsmError, HsmResult, KeyAttributes, KeyHandle, KeySpec, MacAlgorithm,
    SecretBytes, SignInput, SigningAlgorithm,
};
use keyward_hsm_soft::SoftHsm;

use crate::Pkcs11Hsm;

const BACKEND: &str = "pkcs11-hybrid";
/// A software key sealed by the token under a token KEK.
const TOKEN_SEALED: &[u8; 4] = b"KWH1";
/// A reference to a persistent token key, sealed in software under a software KEK (the root key's record
/// under the unseal key).
const SOFT_SEALED_REFERENCE: &[u8; 4] = b"KWHR";
/// A software key wrapped in software.
const SOFT_WRAPPED: &[u8; 4] = b"KWS1";

enum Inner {
    Soft(KeyHandle),
    Token(KeyHandle),
}

/// Software keys for speed, token keys for everything that must never leave the token.
pub struct HybridHsm {
    token: Arc<Pkcs11Hsm>,
    soft: SoftHsm,
}

impl HybridHsm {
    /// Runs on `token`, with software keys beside it.
    pub fn new(token: Arc<Pkcs11Hsm>) -> HybridHsm {
        HybridHsm {
            token,
            soft: SoftHsm::new(),
        }
    }

    /// The token underneath (for the root-of-trust key).
    pub fn token(&self) -> &Arc<Pkcs11Hsm> {
        &self.token
    }

    fn inner<'a>(&self, key: &'a KeyHandle) -> HsmResult<&'a Inner> {
        key.object::<Inner>(BACKEND)
    }

    fn soft_handle(&self, inner: KeyHandle, extractable: bool) -> KeyHandle {
        let spec = inner.spec();
        let public_only = inner.is_public_only();
        KeyHandle::new(BACKEND, spec, extractable, public_only, Inner::Soft(inner))
    }

    fn token_handle(&self, inner: KeyHandle) -> KeyHandle {
        let spec = inner.spec();
        let extractable = inner.is_extractable();
        let public_only = inner.is_public_only();
        KeyHandle::new(BACKEND, spec, extractable, public_only, Inner::Token(inner))
    }

    /// The backend and handle a call on `key` goes to.
    fn route<'a>(&'a self, key: &'a KeyHandle) -> HsmResult<(&'a dyn Hsm, &'a KeyHandle)> {
        Ok(match self.inner(key)? {
            Inner::Soft(h) => (&self.soft as &dyn Hsm, h),
            Inner::Token(h) => (self.token.as_ref() as &dyn Hsm, h),
        })
    }

    /// Software keys are held extractable inside, so the token can seal their material; what callers may
    /// export is decided by the outer handle.
    fn internal() -> KeyAttributes {
        KeyAttributes::extractable()
    }
}

fn tagged(tag: &[u8; 4], body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(tag);
    out.extend_from_slice(&body);
    out
}

impl Hsm for HybridHsm {
    fn backend_name(&self) -> &'static str {
        "pkcs11"
    }

    /// The software module beside the token: keys that are not token-resident run there. The token's own
    /// validation is the token vendor's to state.
    fn crypto_module(&self) -> keyward_hsm::CryptoModule {
        self.soft.crypto_module()
    }

    fn supports(&self, spec: KeySpec) -> bool {
        self.soft.supports(spec)
    }

    fn encryption_algorithms(
        &self,
        spec: KeySpec,
        token_resident: bool,
    ) -> Vec<EncryptionAlgorithm> {
        if token_resident {
            self.token.encryption_algorithms(spec, true)
        } else {
            self.soft.encryption_algorithms(spec, false)
        }
    }

    fn generate(&self, spec: KeySpec, attrs: &KeyAttributes) -> HsmResult<KeyHandle> {
        if attrs.token_resident {
            if !self.token.supports(spec) {
                return Err(HsmError::UnsupportedSpec(spec));
            }
            return Ok(self.token_handle(self.token.generate(spec, attrs)?));
        }
        let inner = self.soft.generate(spec, &Self::internal())?;
        Ok(self.soft_handle(inner, attrs.extractable))
    }

    fn import_plaintext(
        &self,
        spec: KeySpec,
        material: &SecretBytes,
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        if attrs.token_resident {
            return Ok(self.token_handle(self.token.import_plaintext(spec, material, attrs)?));
        }
        let inner = self
            .soft
            .import_plaintext(spec, material, &Self::internal())?;
        Ok(self.soft_handle(inner, attrs.extractable))
    }

    fn import_public(&self, spec: KeySpec, spki_der: &[u8]) -> HsmResult<KeyHandle> {
        Ok(self.soft_handle(self.soft.import_public(spec, spki_der)?, true))
    }

    fn export_plaintext(&self, key: &KeyHandle) -> HsmResult<SecretBytes> {
        if !key.is_extractable() || key.is_public_only() {
            return Err(HsmError::NotExtractable);
        }
        let (hsm, h) = self.route(key)?;
        hsm.export_plaintext(h)
    }

    fn public_key_der(&self, key: &KeyHandle) -> HsmResult<Vec<u8>> {
        let (hsm, h) = self.route(key)?;
        hsm.public_key_der(h)
    }

    fn wrap_for_storage(&self, kek: &KeyHandle, key: &KeyHandle, aad: &[u8]) -> HsmResult<Vec<u8>> {
        match (self.inner(kek)?, self.inner(key)?) {
            (Inner::Token(k), Inner::Soft(s)) => {
                let material = self.soft.export_plaintext(s)?;
                Ok(tagged(
                    TOKEN_SEALED,
                    self.token.seal_for_storage(k, aad, material.expose())?,
                ))
            }
            (Inner::Token(k), Inner::Token(t)) => self.token.wrap_for_storage(k, t, aad),
            (Inner::Soft(k), Inner::Token(t)) => {
                let id = self.token.persistent_id(t)?;
                let mut sealed = Vec::new();
                self.soft.encrypt_symmetric(k, aad, &id, &mut sealed)?;
                Ok(tagged(SOFT_SEALED_REFERENCE, sealed))
            }
            (Inner::Soft(k), Inner::Soft(s)) => {
                Ok(tagged(SOFT_WRAPPED, self.soft.wrap_for_storage(k, s, aad)?))
            }
        }
    }

    fn unwrap_from_storage(
        &self,
        kek: &KeyHandle,
        spec: KeySpec,
        blob: &[u8],
        aad: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        let (tag, body) = blob.split_at(blob.len().min(4));
        match (self.inner(kek)?, tag) {
            (Inner::Token(k), t) if t == TOKEN_SEALED => {
                let material = self.token.open_from_storage(k, aad, body)?;
                let inner = self
                    .soft
                    .import_plaintext(spec, &material, &Self::internal())?;
                Ok(self.soft_handle(inner, attrs.extractable))
            }
            (Inner::Token(k), _) => {
                Ok(self.token_handle(self.token.unwrap_from_storage(k, spec, blob, aad, attrs)?))
            }
            (Inner::Soft(k), t) if t == SOFT_SEALED_REFERENCE => {
                let id = self.soft.decrypt_symmetric(k, aad, body)?;
                Ok(self.token_handle(self.token.find_persistent(spec, id.expose())?))
            }
            (Inner::Soft(k), t) if t == SOFT_WRAPPED => {
                let inner = self
                    .soft
                    .unwrap_from_storage(k, spec, body, aad, &Self::internal())?;
                Ok(self.soft_handle(inner, attrs.extractable))
            }
            _ => Err(HsmError::DecryptFailed),
        }
    }

    fn export_wrapped(&self, key: &KeyHandle, wrapping_spki_der: &[u8]) -> HsmResult<Vec<u8>> {
        if !key.is_extractable() {
            return Err(HsmError::NotExtractable);
        }
        match self.inner(key)? {
            Inner::Soft(h) => self.soft.export_wrapped(h, wrapping_spki_der),
            Inner::Token(_) => Err(HsmError::NotExtractable),
        }
    }

    fn import_wrapped(
        &self,
        unwrapping_key: &KeyHandle,
        spec: KeySpec,
        wrapped: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        match self.inner(unwrapping_key)? {
            Inner::Soft(h) => {
                let inner = self
                    .soft
                    .import_wrapped(h, spec, wrapped, &Self::internal())?;
                Ok(self.soft_handle(inner, attrs.extractable))
            }
            Inner::Token(_) => Err(HsmError::UnsupportedSpec(spec)),
        }
    }

    fn encrypt_symmetric(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> HsmResult<()> {
        let (hsm, h) = self.route(key)?;
        hsm.encrypt_symmetric(h, aad, plaintext, out)
    }

    fn decrypt_symmetric(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> HsmResult<SecretBytes> {
        let (hsm, h) = self.route(key)?;
        hsm.decrypt_symmetric(h, aad, sealed)
    }

    fn encrypt_asymmetric(
        &self,
        key: &KeyHandle,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> HsmResult<Vec<u8>> {
        let (hsm, h) = self.route(key)?;
        hsm.encrypt_asymmetric(h, alg, plaintext)
    }

    fn decrypt_asymmetric(
        &self,
        key: &KeyHandle,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> HsmResult<SecretBytes> {
        let (hsm, h) = self.route(key)?;
        hsm.decrypt_asymmetric(h, alg, ciphertext)
    }

    fn sign(
        &self,
        key: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
    ) -> HsmResult<Vec<u8>> {
        let (hsm, h) = self.route(key)?;
        hsm.sign(h, alg, input)
    }

    fn verify(
        &self,
        key: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> HsmResult<bool> {
        let (hsm, h) = self.route(key)?;
        hsm.verify(h, alg, input, signature)
    }

    fn mac(&self, key: &KeyHandle, alg: MacAlgorithm, message: &[u8]) -> HsmResult<Vec<u8>> {
        let (hsm, h) = self.route(key)?;
        hsm.mac(h, alg, message)
    }

    fn verify_mac(
        &self,
        key: &KeyHandle,
        alg: MacAlgorithm,
        message: &[u8],
        mac: &[u8],
    ) -> HsmResult<bool> {
        let (hsm, h) = self.route(key)?;
        hsm.verify_mac(h, alg, message, mac)
    }

    fn derive_hkdf(
        &self,
        key: &KeyHandle,
        salt: &[u8],
        info: &[u8],
        len: usize,
    ) -> HsmResult<SecretBytes> {
        let (hsm, h) = self.route(key)?;
        hsm.derive_hkdf(h, salt, info, len)
    }

    fn agree(&self, key: &KeyHandle, peer_spki_der: &[u8]) -> HsmResult<SecretBytes> {
        let (hsm, h) = self.route(key)?;
        hsm.agree(h, peer_spki_der)
    }

    fn encrypt_deterministic(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        plaintext: &[u8],
    ) -> HsmResult<Vec<u8>> {
        let (hsm, h) = self.route(key)?;
        hsm.encrypt_deterministic(h, aad, plaintext)
    }

    fn decrypt_deterministic(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> HsmResult<SecretBytes> {
        let (hsm, h) = self.route(key)?;
        hsm.decrypt_deterministic(h, aad, ciphertext)
    }

    fn derived_macs(
        &self,
        key: &KeyHandle,
        label: &[u8],
        context: &[u8],
        messages: &[&[u8]],
    ) -> HsmResult<Vec<Vec<u8>>> {
        let (hsm, h) = self.route(key)?;
        hsm.derived_macs(h, label, context, messages)
    }

    fn fpe_encrypt(
        &self,
        key: &KeyHandle,
        radix: u32,
        tweak: &[u8],
        numerals: &[u16],
        accept: &dyn Fn(&[u16]) -> bool,
    ) -> HsmResult<Vec<u16>> {
        let (hsm, h) = self.route(key)?;
        hsm.fpe_encrypt(h, radix, tweak, numerals, accept)
    }

    fn fpe_decrypt(
        &self,
        key: &KeyHandle,
        radix: u32,
        tweak: &[u8],
        numerals: &[u16],
        accept: &dyn Fn(&[u16]) -> bool,
    ) -> HsmResult<Vec<u16>> {
        let (hsm, h) = self.route(key)?;
        hsm.fpe_decrypt(h, radix, tweak, numerals, accept)
    }

    fn decapsulate(&self, key: &KeyHandle, ciphertext: &[u8]) -> HsmResult<SecretBytes> {
        let (hsm, h) = self.route(key)?;
        hsm.decapsulate(h, ciphertext)
    }

    fn fill_random(&self, out: &mut [u8]) -> HsmResult<()> {
        self.soft.fill_random(out)
    }

    fn destroy(&self, key: KeyHandle) -> HsmResult<()> {
        match self.inner(&key)? {
            Inner::Soft(h) => self.soft.destroy(h.clone()),
            Inner::Token(h) => self.token.destroy(h.clone()),
        }
    }
}
