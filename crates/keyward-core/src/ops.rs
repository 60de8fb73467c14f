//! Cryptographic operations: the hot path.
//!
//! Each call resolves the key (alias cache → key cache; the store only on a miss), checks state and usage on
//! the immutable snapshot, and calls the HSM with the cached handle. No store access, no global lock and one
//! output allocation per symmetric encryption.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyward_hsm::{
    EncryptionAlgorithm, KeyAttributes, KeyFamily, KeyHandle, KeySpec, KeyUsage, MacAlgorithm,
    SecretBytes, SignInput, SigningAlgorithm,
};

use crate::cache::{CachedKey, CachedVersion};
use crate::ciphertext::{algorithm_id, associated_data, Header, HEADER_LEN};
use crate::engine::Kms;
use crate::error::{ErrorCode, KmsError, KmsResult};
use crate::lifecycle::state_error;
use crate::model::{KeyState, VersionState};

/// An encryption context: string pairs bound to a ciphertext as associated data.
pub type Context = BTreeMap<String, String>;

/// A ciphertext and what made it.
#[derive(Clone, Debug)]
pub struct Encrypted {
    /// Keyward's format for symmetric keys; standard RSA-OAEP / SM2 output for asymmetric keys.
    pub ciphertext: Vec<u8>,
    /// The key.
    pub key_id: Arc<str>,
    /// The version used.
    pub version: u32,
}

/// A plaintext and what opened it.
#[derive(Clone, Debug)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: SecretBytes,
    /// The key.
    pub key_id: Arc<str>,
    /// The version used.
    pub version: u32,
}

/// A data key for envelope encryption.
#[derive(Clone, Debug)]
pub struct DataKey {
    /// The plaintext key, when asked for.
    pub plaintext: Option<SecretBytes>,
    /// The key encrypted under the KMS key.
    pub ciphertext: Vec<u8>,
    /// The KMS key.
    pub key_id: Arc<str>,
    /// Its version.
    pub version: u32,
}

/// An asymmetric data key pair.
#[derive(Clone, Debug)]
pub struct DataKeyPair {
    /// SPKI DER.
    pub public_key_der: Vec<u8>,
    /// PKCS#8 DER encrypted under the KMS key.
    pub private_key_ciphertext: Vec<u8>,
    /// PKCS#8 DER, when asked for.
    pub private_key_der: Option<SecretBytes>,
    /// The KMS key.
    pub key_id: Arc<str>,
    /// Its version.
    pub version: u32,
}

/// HKDF `info` of the data key [`Kms::decapsulate_data_key`] derives from an ML-KEM shared secret.
pub const KEM_DATA_KEY_INFO: &[u8] = b"keyward:ml-kem:data-key:v1";

/// The shared secret an ML-KEM ciphertext carries.
#[derive(Debug)]
pub struct Decapsulated {
    /// 32 bytes.
    pub shared_secret: SecretBytes,
    /// The key.
    pub key_id: Arc<str>,
    /// The version whose private key decapsulated.
    pub version: u32,
}

/// A signature.
#[derive(Clone, Debug)]
pub struct Signed {
    /// DER for ECDSA and SM2, raw for RSA and Ed25519.
    pub signature: Vec<u8>,
    /// The key.
    pub key_id: Arc<str>,
    /// The version used.
    pub version: u32,
    /// The algorithm.
    pub algorithm: SigningAlgorithm,
}

/// A MAC.
#[derive(Clone, Debug)]
pub struct Maced {
    /// The tag.
    pub mac: Vec<u8>,
    /// The key.
    pub key_id: Arc<str>,
    /// The version used.
    pub version: u32,
}

/// A derived key.
#[derive(Clone, Debug)]
pub struct Derived {
    /// The derived key encrypted under the KMS key.
    pub ciphertext: Vec<u8>,
    /// The derived key, when asked for.
    pub plaintext: Option<SecretBytes>,
    /// The key.
    pub key_id: Arc<str>,
    /// The version used.
    pub version: u32,
}

/// A public key.
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// The key.
    pub key_id: Arc<str>,
    /// The primary version.
    pub version: u32,
    /// The spec.
    pub spec: KeySpec,
    /// SPKI DER.
    pub der: Vec<u8>,
}

impl Kms {
    /// Whether the key can serve calls of `usage` at all: it exists, is Enabled and has that usage. A batch
    /// that names one key for every item asks this first, so that a key no item could use fails the request
    /// with the key's own error instead of every item alike. Served from the key cache.
    pub fn check_usable(&self, key_ref: &str, usage: KeyUsage) -> KmsResult<()> {
        self.usable(key_ref, usage).map(drop)
    }

    /// A loaded key that is Enabled and of the given usage.
    pub(crate) fn usable(&self, key_ref: &str, usage: KeyUsage) -> KmsResult<Arc<CachedKey>> {
        let key = self.load(&self.resolve(key_ref)?)?;
        if key.state != KeyState::Enabled {
            return Err(state_error(key.state, &key.key_id));
        }
        if key.record.pending_import {
            return Err(material_deleted(&key.key_id));
        }
        if key.usage != usage {
            return Err(KmsError::usage(format!(
                "key {} has usage {}, not {usage}",
                key.key_id, key.usage
            )));
        }
        Ok(key)
    }

    pub(crate) fn primary<'a>(
        &self,
        key: &'a CachedKey,
    ) -> KmsResult<(&'a CachedVersion, &'a KeyHandle)> {
        let n = key.record.primary_version;
        if n == 0 {
            return Err(KmsError::invalid_state(format!(
                "key {} has no material yet: import it first",
                key.key_id
            )));
        }
        let v = key
            .version(n)
            .ok_or_else(|| crate::records::corrupt("primary version missing"))?;
        if v.state != VersionState::Enabled {
            return Err(crate::records::corrupt("primary version is not Enabled"));
        }
        Ok((v, self.handle(key, v)?))
    }

    /// A version that may decrypt or verify: Enabled or Archived, at or above min_decryption_version.
    pub(crate) fn decryptable<'a>(
        &self,
        key: &'a CachedKey,
        n: u32,
        missing: ErrorCode,
    ) -> KmsResult<(&'a CachedVersion, &'a KeyHandle)> {
        let v = key.version(n).ok_or_else(|| {
            KmsError::new(missing, format!("key {} has no version {n}", key.key_id))
        })?;
        match v.state {
            VersionState::Enabled | VersionState::Archived => {}
            VersionState::Disabled => {
                return Err(KmsError::new(
                    ErrorCode::KeyDisabled,
                    format!("version {n} of key {} is disabled", key.key_id),
                ))
            }
            VersionState::Destroyed => {
                return Err(KmsError::new(
                    ErrorCode::KeyDestroyed,
                    format!("version {n} of key {} is destroyed", key.key_id),
                ))
            }
            VersionState::PendingImport => {
                return Err(KmsError::invalid_state(format!(
                    "the imported material of version {n} of key {} was deleted: import it again",
                    key.key_id
                )))
            }
        }
        if n < key.record.min_decryption_version {
            return Err(KmsError::invalid_state(format!(
                "version {n} of key {} is below min_decryption_version {}",
                key.key_id, key.record.min_decryption_version
            )));
        }
        Ok((v, self.handle(key, v)?))
    }

    /// Versions that may verify or decrypt, primary first, then newest to oldest.
    fn decryptable_versions<'a>(
        &self,
        key: &'a CachedKey,
    ) -> Vec<(&'a CachedVersion, &'a KeyHandle)> {
        let primary = key.record.primary_version;
        let mut order: Vec<u32> = vec![primary];
        order.extend(
            (key.record.min_decryption_version..=key.versions.len() as u32)
                .rev()
                .filter(|n| *n != primary),
        );
        order
            .into_iter()
            .filter_map(|n| self.decryptable(key, n, ErrorCode::NotFound).ok())
            .collect()
    }

    fn check_size(&self, len: usize) -> KmsResult<()> {
        if len > self.config.max_plaintext {
            return Err(KmsError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "plaintext is {len} bytes; the limit is {}",
                    self.config.max_plaintext
                ),
            ));
        }
        Ok(())
    }

    fn seal_symmetric(
        &self,
        key: &CachedKey,
        version: u32,
        handle: &KeyHandle,
        pt: &[u8],
        ctx: &Context,
    ) -> KmsResult<Vec<u8>> {
        let algorithm =
            algorithm_id(key.spec).ok_or_else(|| KmsError::usage("not a symmetric key"))?;
        let mut header = [0u8; HEADER_LEN];
        Header {
            algorithm,
            key_id: key.id_bytes,
            version,
        }
        .write_into(&mut header);
        let overhead =
            key.spec.aead_nonce_len().unwrap_or(0) + key.spec.aead_tag_len().unwrap_or(0) + 16;
        let mut out = Vec::with_capacity(HEADER_LEN + pt.len() + overhead);
        out.extend_from_slice(&header);
        let mut buf = Vec::new();
        let aad = associated_data(&header, ctx, &mut buf);
        self.hsm.encrypt_symmetric(handle, aad, pt, &mut out)?;
        Ok(out)
    }

    /// Encrypts up to 64 KiB under the key's primary version.
    pub fn encrypt(
        &self,
        key_ref: &str,
        plaintext: &[u8],
        context: &Context,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> KmsResult<Encrypted> {
        self.check_size(plaintext.len())?;
        let key = self.usable(key_ref, KeyUsage::EncryptDecrypt)?;
        self.encrypt_with(&key, plaintext, context, algorithm)
    }

    /// A deterministic ciphertext under the primary version of an AES key: equal plaintexts under one
    /// version and context give equal ciphertexts (for equality joins), in the self-describing format, so it
    /// decrypts like any other.
    pub(crate) fn encrypt_deterministic(
        &self,
        key: &CachedKey,
        plaintext: &[u8],
        context: &Context,
    ) -> KmsResult<Encrypted> {
        let (v, handle) = self.primary(key)?;
        let mut header = [0u8; HEADER_LEN];
        Header {
            algorithm: crate::ciphertext::DETERMINISTIC,
            key_id: key.id_bytes,
            version: v.version,
        }
        .write_into(&mut header);
        let mut buf = Vec::new();
        let aad = associated_data(&header, context, &mut buf);
        let sealed = self.hsm.encrypt_deterministic(handle, aad, plaintext)?;
        let mut ciphertext = Vec::with_capacity(HEADER_LEN + sealed.len());
        ciphertext.extend_from_slice(&header);
        ciphertext.extend_from_slice(&sealed);
        Ok(Encrypted {
            ciphertext,
            key_id: key.key_id.clone(),
            version: v.version,
        })
    }

    pub(crate) fn encrypt_with(
        &self,
        key: &CachedKey,
        plaintext: &[u8],
        context: &Context,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> KmsResult<Encrypted> {
        let (v, handle) = self.primary(key)?;
        let ciphertext = if key.spec.family() == KeyFamily::Symmetric {
            if !matches!(
                algorithm,
                None | Some(EncryptionAlgorithm::SymmetricDefault)
            ) {
                return Err(KmsError::usage(
                    "symmetric keys encrypt with SYMMETRIC_DEFAULT",
                ));
            }
            self.seal_symmetric(key, v.version, handle, plaintext, context)?
        } else {
            let alg = asymmetric_algorithm(key, algorithm, context)?;
            self.hsm.encrypt_asymmetric(handle, alg, plaintext)?
        };
        Ok(Encrypted {
            ciphertext,
            key_id: key.key_id.clone(),
            version: v.version,
        })
    }

    /// Decrypts. Symmetric ciphertexts name their key; asymmetric ones need `key_ref` and the algorithm.
    pub fn decrypt(
        &self,
        key_ref: Option<&str>,
        ciphertext: &[u8],
        context: &Context,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> KmsResult<Decrypted> {
        let named = match key_ref {
            Some(r) => Some(self.usable(r, KeyUsage::EncryptDecrypt)?),
            None => None,
        };
        if let Some(key) = named
            .as_ref()
            .filter(|k| k.spec.family() != KeyFamily::Symmetric)
        {
            let alg = asymmetric_algorithm(key, algorithm, context)?;
            for (v, handle) in self.decryptable_versions(key) {
                if let Ok(plaintext) = self.hsm.decrypt_asymmetric(handle, alg, ciphertext) {
                    return Ok(Decrypted {
                        plaintext,
                        key_id: key.key_id.clone(),
                        version: v.version,
                    });
                }
            }
            return Err(KmsError::invalid_ciphertext());
        }
        if !matches!(
            algorithm,
            None | Some(EncryptionAlgorithm::SymmetricDefault)
        ) {
            return Err(KmsError::usage(
                "symmetric ciphertexts decrypt with SYMMETRIC_DEFAULT",
            ));
        }
        let (header, sealed) = Header::parse(ciphertext)?;
        let key = match named {
            Some(k) => {
                if k.id_bytes != header.key_id {
                    return Err(KmsError::usage(format!(
                        "the ciphertext was not made by key {}",
                        k.key_id
                    )));
                }
                k
            }
            None => {
                let k = self.load(&header.key_id).map_err(|e| match e.code() {
                    ErrorCode::NotFound => KmsError::invalid_ciphertext(),
                    _ => e,
                })?;
                if k.state != KeyState::Enabled {
                    return Err(state_error(k.state, &k.key_id));
                }
                if k.usage != KeyUsage::EncryptDecrypt {
                    return Err(KmsError::invalid_ciphertext());
                }
                k
            }
        };
        let deterministic = header.algorithm == crate::ciphertext::DETERMINISTIC
            && matches!(
                key.spec,
                KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256
            );
        if algorithm_id(key.spec) != Some(header.algorithm) && !deterministic {
            return Err(KmsError::invalid_ciphertext());
        }
        let (v, handle) = self.decryptable(&key, header.version, ErrorCode::InvalidCiphertext)?;
        let header_bytes = ciphertext
            .get(..HEADER_LEN)
            .ok_or_else(KmsError::invalid_ciphertext)?;
        let mut buf = Vec::new();
        let aad = associated_data(header_bytes, context, &mut buf);
        let plaintext = if deterministic {
            self.hsm.decrypt_deterministic(handle, aad, sealed)?
        } else {
            self.hsm.decrypt_symmetric(handle, aad, sealed)?
        };
        Ok(Decrypted {
            plaintext,
            key_id: key.key_id.clone(),
            version: v.version,
        })
    }

    /// Decrypts and re-encrypts under the primary version of `dest_ref`; the plaintext stays inside.
    pub fn reencrypt(
        &self,
        dest_ref: &str,
        ciphertext: &[u8],
        context: &Context,
        new_context: Option<&Context>,
    ) -> KmsResult<Encrypted> {
        let dest = self.usable(dest_ref, KeyUsage::EncryptDecrypt)?;
        if dest.spec.family() != KeyFamily::Symmetric {
            return Err(KmsError::usage("re-encryption targets a symmetric key"));
        }
        let plain = self.decrypt(None, ciphertext, context, None)?;
        self.encrypt_with(
            &dest,
            plain.plaintext.expose(),
            new_context.unwrap_or(context),
            None,
        )
    }

    /// A fresh data key (AES-128 or AES-256), encrypted under the KMS key.
    pub fn generate_data_key(
        &self,
        key_ref: &str,
        spec: KeySpec,
        context: &Context,
        include_plaintext: bool,
    ) -> KmsResult<DataKey> {
        let len = match spec {
            KeySpec::Aes256 | KeySpec::SymmetricDefault => 32,
            KeySpec::Aes128 => 16,
            _ => return Err(KmsError::validation("data keys are AES_256 or AES_128")),
        };
        let key = self.usable(key_ref, KeyUsage::EncryptDecrypt)?;
        if key.spec.family() != KeyFamily::Symmetric {
            return Err(KmsError::usage(
                "data keys are encrypted under a symmetric key",
            ));
        }
        let mut plaintext = SecretBytes::zeroed(len);
        self.hsm.fill_random(plaintext.expose_mut())?;
        let enc = self.encrypt_with(&key, plaintext.expose(), context, None)?;
        Ok(DataKey {
            plaintext: include_plaintext.then_some(plaintext),
            ciphertext: enc.ciphertext,
            key_id: enc.key_id,
            version: enc.version,
        })
    }

    /// A fresh asymmetric key pair whose private half is returned encrypted under the KMS key.
    pub fn generate_data_key_pair(
        &self,
        key_ref: &str,
        spec: KeySpec,
        context: &Context,
        include_plaintext: bool,
    ) -> KmsResult<DataKeyPair> {
        if !matches!(spec.family(), KeyFamily::Rsa | KeyFamily::Ec) {
            return Err(KmsError::validation("data key pairs are RSA or ECC specs"));
        }
        let key = self.usable(key_ref, KeyUsage::EncryptDecrypt)?;
        if key.spec.family() != KeyFamily::Symmetric {
            return Err(KmsError::usage(
                "data key pairs are encrypted under a symmetric key",
            ));
        }
        let pair = self.hsm.generate(spec, &KeyAttributes::extractable())?;
        let public_key_der = self.hsm.public_key_der(&pair)?;
        let private = self.hsm.export_plaintext(&pair)?;
        let enc = self.encrypt_with(&key, private.expose(), context, None)?;
        Ok(DataKeyPair {
            public_key_der,
            private_key_ciphertext: enc.ciphertext,
            private_key_der: include_plaintext.then_some(private),
            key_id: enc.key_id,
            version: enc.version,
        })
    }

    /// Signs a message or a digest with the primary version.
    pub fn sign(
        &self,
        key_ref: &str,
        input: SignInput<'_>,
        algorithm: SigningAlgorithm,
    ) -> KmsResult<Signed> {
        if let SignInput::Message(m) = input {
            self.check_size(m.len())?;
        }
        let key = self.usable(key_ref, KeyUsage::SignVerify)?;
        let (v, handle) = self.primary(&key)?;
        let signature = self.hsm.sign(handle, algorithm, input)?;
        Ok(Signed {
            signature,
            key_id: key.key_id.clone(),
            version: v.version,
            algorithm,
        })
    }

    /// Verifies with one version (the primary by default). A wrong signature is `Ok(false)`.
    pub fn verify(
        &self,
        key_ref: &str,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: SigningAlgorithm,
        version: Option<u32>,
    ) -> KmsResult<bool> {
        let key = self.usable(key_ref, KeyUsage::SignVerify)?;
        let n = version.unwrap_or(key.record.primary_version);
        let (_, handle) = self.decryptable(&key, n, ErrorCode::NotFound)?;
        Ok(self.hsm.verify(handle, algorithm, input, signature)?)
    }

    /// Computes a MAC with the primary version.
    pub fn mac(&self, key_ref: &str, message: &[u8], algorithm: MacAlgorithm) -> KmsResult<Maced> {
        self.check_size(message.len())?;
        let key = self.usable(key_ref, KeyUsage::GenerateVerifyMac)?;
        let (v, handle) = self.primary(&key)?;
        let mac = self.hsm.mac(handle, algorithm, message)?;
        Ok(Maced {
            mac,
            key_id: key.key_id.clone(),
            version: v.version,
        })
    }

    /// Verifies a MAC against every decryptable version, primary first, each in constant time.
    pub fn verify_mac(
        &self,
        key_ref: &str,
        message: &[u8],
        mac: &[u8],
        algorithm: MacAlgorithm,
    ) -> KmsResult<bool> {
        self.check_size(message.len())?;
        let key = self.usable(key_ref, KeyUsage::GenerateVerifyMac)?;
        if key.spec.mac_algorithm() != Some(algorithm) {
            return Err(KmsError::usage(format!(
                "key spec {} does not compute {algorithm}",
                key.spec
            )));
        }
        for (_, handle) in self.decryptable_versions(&key) {
            if self.hsm.verify_mac(handle, algorithm, message, mac)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// HKDF-SHA-256 of the primary version's material with `context` as info; the result is returned
    /// encrypted under the same key, and in plaintext when asked for.
    pub fn derive(
        &self,
        key_ref: &str,
        context: &[u8],
        length: usize,
        include_plaintext: bool,
    ) -> KmsResult<Derived> {
        if !(16..=64).contains(&length) {
            return Err(KmsError::validation("length must be 16 to 64 bytes"));
        }
        if context.len() > 1024 {
            return Err(KmsError::validation(
                "derivation context is at most 1024 bytes",
            ));
        }
        let key = self.usable(key_ref, KeyUsage::EncryptDecrypt)?;
        if key.spec.family() != KeyFamily::Symmetric {
            return Err(KmsError::usage("derivation needs a symmetric key"));
        }
        let (v, handle) = self.primary(&key)?;
        let derived = self.hsm.derive_hkdf(handle, b"", context, length)?;
        let ciphertext =
            self.seal_symmetric(&key, v.version, handle, derived.expose(), &Context::new())?;
        Ok(Derived {
            ciphertext,
            plaintext: include_plaintext.then_some(derived),
            key_id: key.key_id.clone(),
            version: v.version,
        })
    }

    /// ECDH with the primary version and a peer's SPKI.
    pub fn agree(&self, key_ref: &str, peer_spki_der: &[u8]) -> KmsResult<SecretBytes> {
        let key = self.usable(key_ref, KeyUsage::KeyAgreement)?;
        let (_, handle) = self.primary(&key)?;
        Ok(self.hsm.agree(handle, peer_spki_der)?)
    }

    /// ML-KEM decapsulation with a version of the key (the primary unless named: a sender may have
    /// encapsulated against the public key of a version since rotated). ML-KEM rejects implicitly, so a
    /// tampered ciphertext yields an unrelated secret, which the protocol built on it must catch.
    pub fn decapsulate(
        &self,
        key_ref: &str,
        ciphertext: &[u8],
        version: Option<u32>,
    ) -> KmsResult<Decapsulated> {
        let key = self.usable(key_ref, KeyUsage::KeyAgreement)?;
        if !key.spec.is_kem() {
            return Err(KmsError::usage(format!(
                "key {} is {}, not an ML-KEM key: use derive-shared-secret for ECDH",
                key.key_id, key.spec
            )));
        }
        let n = version.unwrap_or(key.record.primary_version);
        let (v, handle) = self.decryptable(&key, n, ErrorCode::NotFound)?;
        Ok(Decapsulated {
            shared_secret: self.hsm.decapsulate(handle, ciphertext)?,
            key_id: key.key_id.clone(),
            version: v.version,
        })
    }

    /// ML-KEM decapsulation whose secret never leaves: a 32-byte data key is derived from it (HKDF-SHA-256,
    /// empty salt, info [`KEM_DATA_KEY_INFO`], which the sender computes from its copy of the secret), and
    /// returned encrypted under the symmetric `wrapping_key` like [`Kms::generate_data_key`]'s output, with
    /// its plaintext only when asked for.
    pub fn decapsulate_data_key(
        &self,
        key_ref: &str,
        ciphertext: &[u8],
        version: Option<u32>,
        wrapping_key: &str,
        context: &Context,
        include_plaintext: bool,
    ) -> KmsResult<DataKey> {
        let wrapping = self.usable(wrapping_key, KeyUsage::EncryptDecrypt)?;
        if wrapping.spec.family() != KeyFamily::Symmetric {
            return Err(KmsError::usage(
                "a decapsulated data key is encrypted under a symmetric key",
            ));
        }
        let secret = self
            .decapsulate(key_ref, ciphertext, version)?
            .shared_secret;
        // The secret becomes HKDF input keying material inside the HSM layer, never a key of its own.
        let ikm =
            self.hsm
                .import_plaintext(KeySpec::Aes256, &secret, &KeyAttributes::internal())?;
        let data_key = self.hsm.derive_hkdf(&ikm, &[], KEM_DATA_KEY_INFO, 32)?;
        self.hsm.destroy(ikm)?;
        let enc = self.encrypt_with(&wrapping, data_key.expose(), context, None)?;
        Ok(DataKey {
            plaintext: include_plaintext.then_some(data_key),
            ciphertext: enc.ciphertext,
            key_id: enc.key_id,
            version: enc.version,
        })
    }

    /// Random bytes from the HSM, 1 to 1024.
    pub fn random(&self, length: usize) -> KmsResult<Vec<u8>> {
        if !(1..=1024).contains(&length) {
            return Err(KmsError::validation("length must be 1 to 1024"));
        }
        if self.is_sealed() {
            return Err(KmsError::sealed());
        }
        let mut out = vec![0u8; length];
        self.hsm.fill_random(&mut out)?;
        Ok(out)
    }

    /// A key's spec from the key cache, for a front end that picks an algorithm by it (Vault's transit
    /// signs with the hash of an ECDSA key's curve) without reading the store on every request.
    pub fn key_spec(&self, key_ref: &str) -> KmsResult<KeySpec> {
        Ok(self.load(&self.resolve(key_ref)?)?.spec)
    }

    /// The public key of the primary version.
    pub fn public_key(&self, key_ref: &str) -> KmsResult<PublicKey> {
        let key = self.load(&self.resolve(key_ref)?)?;
        if matches!(key.state, KeyState::PendingDeletion | KeyState::Destroyed) {
            return Err(state_error(key.state, &key.key_id));
        }
        if !key.spec.is_asymmetric() {
            return Err(KmsError::usage(format!(
                "key {} is symmetric and has no public key",
                key.key_id
            )));
        }
        let (v, handle) = self.primary(&key)?;
        Ok(PublicKey {
            key_id: key.key_id.clone(),
            version: v.version,
            spec: key.spec,
            der: self.hsm.public_key_der(handle)?,
        })
    }
}

fn asymmetric_algorithm(
    key: &CachedKey,
    algorithm: Option<EncryptionAlgorithm>,
    context: &Context,
) -> KmsResult<EncryptionAlgorithm> {
    if !context.is_empty() {
        return Err(KmsError::validation(
            "an encryption context is only bound by symmetric keys",
        ));
    }
    let alg = algorithm.ok_or_else(|| {
        let names: Vec<&str> = key
            .spec
            .encryption_algorithms()
            .iter()
            .map(|a| a.as_str())
            .collect();
        KmsError::validation(format!(
            "an algorithm is required for {} keys (decryption needs the same one): one of {}",
            key.spec,
            names.join(", ")
        ))
    })?;
    if !key.spec.encryption_algorithms().contains(&alg) {
        return Err(KmsError::usage(format!(
            "key spec {} does not encrypt with {alg}",
            key.spec
        )));
    }
    Ok(alg)
}

/// The refusal of a key whose imported material was deleted.
pub(crate) fn material_deleted(key_id: &str) -> KmsError {
    KmsError::invalid_state(format!(
        "the imported material of key {key_id} was deleted: import the same material again to use it"
    ))
}
