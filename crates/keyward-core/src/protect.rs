//! Field-level protection of personal data: for each value, a ciphertext to keep, a mask to display and a
//! blind index to search by, in one audited call. The rules of each type live in [`crate::fields`]; this
//! module adds the keys.
//!
//! The blind index is HMAC-SHA-256 under a key derived (HKDF-SHA-256) from the protect key's first version for
//! this purpose only, over the type's name and the value's normal form, truncated to the key's
//! `blind_index_bits`. It carries no version, so rotation keeps indexes stable; equal values give equal
//! indexes under one key, and nothing is comparable across keys or across types.

use std::sync::Arc;

use keyward_hsm::{KeyAttributes, KeyFamily, KeyHandle, KeySpec, KeyUsage, MacAlgorithm};

use crate::cache::CachedKey;
use crate::engine::Kms;
use crate::error::{ErrorCode, KmsError, KmsResult};
use crate::fields::{self, FieldType, MaskRule};
use crate::ops::Context;

/// Items one call takes at most, like the batch forms of encrypt and decrypt.
pub const MAX_FIELD_ITEMS: usize = 1000;

/// Blind index length when a key names none.
pub const DEFAULT_BLIND_INDEX_BITS: u32 = 64;

/// The context entry that binds a field ciphertext to its type, so a ciphertext of one type cannot be
/// unprotected as another. Callers may not set it themselves.
pub const FIELD_CONTEXT_KEY: &str = "keyward:field";

const BLIND_INDEX_SALT: &[u8] = b"keyward:blind-index:v1";

/// How a field's ciphertext is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldMode {
    /// AES-GCM with a fresh nonce: equal values give unrelated ciphertexts.
    #[default]
    Encrypt,
    /// AES-SIV (RFC 5297): equal values under one key version and context give equal ciphertexts, for
    /// equality joins; that equality is all it reveals, and it reveals it by design.
    Deterministic,
}

/// What to protect. Its `Debug` names the type and mode, never the value (personal data).
#[derive(Clone)]
pub struct FieldInput<'a> {
    /// How the ciphertext is made.
    pub mode: FieldMode,
    /// The value as the application holds it; unprotect gives it back byte for byte.
    pub value: &'a str,
    /// Its type.
    pub field: FieldType,
    /// Encryption context the ciphertext is bound to.
    pub context: Context,
    /// A mask other than the type's usual one.
    pub mask: Option<MaskRule>,
}

impl std::fmt::Debug for FieldInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldInput")
            .field("mode", &self.mode)
            .field("field", &self.field)
            .field("value", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// One protected value.
#[derive(Clone, Debug)]
pub struct ProtectedField {
    /// A Keyward ciphertext of the value under the protect key's primary version.
    pub ciphertext: Vec<u8>,
    /// The display form.
    pub masked: String,
    /// The search hash, `blind_index_bits / 8` bytes.
    pub blind_index: Vec<u8>,
}

/// Whether `bits` is a blind index length a key may hold: 16 to 256, whole bytes.
pub fn valid_blind_index_bits(bits: u32) -> bool {
    (16..=256).contains(&bits) && bits.is_multiple_of(8)
}

/// The HMAC key of one protect key's blind indexes, and the length they are cut to.
struct Indexer {
    mac_key: KeyHandle,
    bytes: usize,
}

impl Kms {
    /// A protect key: Enabled, ENCRYPT_DECRYPT, AES. (SM4 keys would index with SM3-HMAC, which the HSM layer
    /// does not offer yet, so they are refused rather than indexed with another hash than users expect.)
    fn protect_key(&self, key_ref: &str) -> KmsResult<Arc<CachedKey>> {
        let key = self.usable(key_ref, KeyUsage::EncryptDecrypt)?;
        match key.spec {
            KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256 => Ok(key),
            other if other.family() == KeyFamily::Symmetric => Err(KmsError::usage(format!(
                "field protection takes AES keys; {other} keys are not offered for it"
            ))),
            other => Err(KmsError::usage(format!(
                "field protection takes a symmetric key, not {other}"
            ))),
        }
    }

    fn indexer(&self, key: &CachedKey) -> KmsResult<Indexer> {
        let first = key.version(1).ok_or_else(|| {
            KmsError::new(ErrorCode::InvalidState, "the key has no first version")
        })?;
        if first.wrapped.is_none() {
            return Err(KmsError::invalid_state(format!(
                "blind indexes of key {} are derived from its first version, which is destroyed",
                key.key_id
            )));
        }
        let handle = self.handle(key, first)?;
        let derived = self
            .hsm
            .derive_hkdf(handle, BLIND_INDEX_SALT, key.key_id.as_bytes(), 32)?;
        let mac_key =
            self.hsm
                .import_plaintext(KeySpec::Hmac256, &derived, &KeyAttributes::internal())?;
        let bits = key
            .record
            .blind_index_bits
            .unwrap_or(DEFAULT_BLIND_INDEX_BITS);
        Ok(Indexer {
            mac_key,
            bytes: bits as usize / 8,
        })
    }

    fn index(&self, indexer: &Indexer, field: FieldType, normal: &str) -> KmsResult<Vec<u8>> {
        let mut message = Vec::with_capacity(normal.len() + 16);
        message.extend_from_slice(field.as_str().as_bytes());
        message.push(0);
        message.extend_from_slice(normal.as_bytes());
        let mut mac = self
            .hsm
            .mac(&indexer.mac_key, MacAlgorithm::HmacSha256, &message)?;
        mac.truncate(indexer.bytes);
        Ok(mac)
    }

    /// Protects up to [`MAX_FIELD_ITEMS`] values: each item's ciphertext, mask and blind index, or that
    /// item's own error (an invalid value is refused by type, never echoed). The key's errors fail the call.
    pub fn protect_fields(
        &self,
        key_ref: &str,
        items: &[FieldInput<'_>],
    ) -> KmsResult<Vec<KmsResult<ProtectedField>>> {
        check_count(items.len())?;
        let key = self.protect_key(key_ref)?;
        let indexer = self.indexer(&key)?;
        let out = items
            .iter()
            .map(|i| {
                let normal = fields::normalize(i.field, i.value)?;
                let masked = match i.mask {
                    Some(rule) => fields::mask_with(&normal, rule),
                    None => fields::mask(i.field, &normal),
                };
                let context = bound(&i.context, i.field)?;
                let enc = match i.mode {
                    FieldMode::Encrypt => {
                        self.encrypt_with(&key, i.value.as_bytes(), &context, None)?
                    }
                    FieldMode::Deterministic => {
                        self.encrypt_deterministic(&key, i.value.as_bytes(), &context)?
                    }
                };
                Ok(ProtectedField {
                    ciphertext: enc.ciphertext,
                    masked,
                    blind_index: self.index(&indexer, i.field, &normal)?,
                })
            })
            .collect();
        self.hsm.destroy(indexer.mac_key)?;
        Ok(out)
    }

    /// The values of field ciphertexts made by [`Kms::protect_fields`] under this key, each with the type and
    /// context it was protected with.
    pub fn unprotect_fields(
        &self,
        key_ref: &str,
        items: &[(&[u8], FieldType, Context)],
    ) -> KmsResult<Vec<KmsResult<String>>> {
        check_count(items.len())?;
        let key = self.protect_key(key_ref)?;
        let key_id = key.key_id.to_string();
        Ok(items
            .iter()
            .map(|(ciphertext, field, context)| {
                let context = bound(context, *field)?;
                let d = self.decrypt(Some(&key_id), ciphertext, &context, None)?;
                String::from_utf8(d.plaintext.expose().to_vec())
                    .map_err(|_| KmsError::invalid_ciphertext())
            })
            .collect())
    }

    /// Blind indexes alone, to search by: the same hash [`Kms::protect_fields`] gives for an equal value.
    pub fn blind_indexes(
        &self,
        key_ref: &str,
        items: &[(&str, FieldType)],
    ) -> KmsResult<Vec<KmsResult<Vec<u8>>>> {
        check_count(items.len())?;
        let key = self.protect_key(key_ref)?;
        let indexer = self.indexer(&key)?;
        let out = items
            .iter()
            .map(|(value, field)| {
                let normal = fields::normalize(*field, value)?;
                self.index(&indexer, *field, &normal)
            })
            .collect();
        self.hsm.destroy(indexer.mac_key)?;
        Ok(out)
    }
}

fn check_count(n: usize) -> KmsResult<()> {
    if n == 0 || n > MAX_FIELD_ITEMS {
        return Err(KmsError::validation("items: 1 to 1000 values"));
    }
    Ok(())
}

/// The caller's context with the field type bound in.
fn bound(context: &Context, field: FieldType) -> KmsResult<Context> {
    if context.contains_key(FIELD_CONTEXT_KEY) {
        return Err(KmsError::validation(format!(
            "the context key {FIELD_CONTEXT_KEY} is reserved"
        )));
    }
    let mut c = context.clone();
    c.insert(FIELD_CONTEXT_KEY.to_string(), field.as_str().to_string());
    Ok(c)
}
