//! Field-level protection of personal data: for each value, a ciphertext to keep, a mask to display and a
//! blind index to search by, in one audited call. The rules of each type live in [`crate::fields`]; this
//! module adds the keys.
//!
//! The blind index is HMAC-SHA-256 (HMAC-SM3 for SM4 keys) under a key the HSM derives from the protect
//! key's first version for this purpose only, over the type's name and the value's normal form, truncated to
//! the key's `blind_index_bits`. It carries no version, so rotation keeps indexes stable; equal values give
//! equal indexes under one key, and nothing is comparable across keys or across types.
//!
//! Format-preserving ciphertexts (FF1) have no room for a version: protect reports the version it used, and
//! unprotect takes it back (the primary version when it is not given).

use std::sync::Arc;

use keyward_hsm::{KeyFamily, KeyHandle, KeySpec, KeyUsage};

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

/// The domain of tweaks derived from a context, apart from tweaks a caller gives.
const FPE_TWEAK_LABEL: &[u8] = b"keyward:fpe:v1";

/// The longest tweak a caller may give, in bytes.
pub const MAX_FPE_TWEAK: usize = 256;

/// How a field's ciphertext is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldMode {
    /// AES-GCM with a fresh nonce: equal values give unrelated ciphertexts.
    #[default]
    Encrypt,
    /// AES-SIV (RFC 5297): equal values under one key version and context give equal ciphertexts, for
    /// equality joins; that equality is all it reveals, and it reveals it by design.
    Deterministic,
    /// FF1 (NIST SP 800-38G) on the type's alphabet: the ciphertext is a value of the same type and length,
    /// for columns whose schema cannot change. Deterministic per key version and tweak, and without
    /// integrity: a changed ciphertext opens to another value.
    Fpe,
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
    /// The FF1 tweak (mode `fpe`); derived from the type and context when absent.
    pub tweak: Option<&'a [u8]>,
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
    /// A Keyward ciphertext of the value under the protect key's primary version; in mode `fpe`, the UTF-8
    /// text of the format-preserved value.
    pub ciphertext: Vec<u8>,
    /// The key version that protected it.
    pub version: u32,
    /// The display form.
    pub masked: String,
    /// The search hash, `blind_index_bits / 8` bytes.
    pub blind_index: Vec<u8>,
}

/// A field ciphertext to open.
#[derive(Clone)]
pub struct SealedField<'a> {
    /// `Fpe` when the ciphertext is a format-preserved value; the other modes are told apart by the
    /// ciphertext's own header.
    pub mode: FieldMode,
    /// What protect returned (for `Fpe`, the value's UTF-8 text).
    pub ciphertext: &'a [u8],
    /// The type it was protected as.
    pub field: FieldType,
    /// The context it was protected with.
    pub context: Context,
    /// The tweak it was protected with (mode `fpe`, when one was given).
    pub tweak: Option<&'a [u8]>,
    /// The version that protected it (mode `fpe`; the primary version when absent).
    pub version: Option<u32>,
}

impl std::fmt::Debug for SealedField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedField")
            .field("mode", &self.mode)
            .field("field", &self.field)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Whether `bits` is a blind index length a key may hold: 16 to 256, whole bytes.
pub fn valid_blind_index_bits(bits: u32) -> bool {
    (16..=256).contains(&bits) && bits.is_multiple_of(8)
}

impl Kms {
    /// A protect key: Enabled, ENCRYPT_DECRYPT, AES or SM4 (SM4-GCM ciphertexts and HMAC-SM3 indexes; the
    /// AES-only modes, deterministic and fpe, are refused by the HSM for SM4 keys, naming the mode).
    fn protect_key(&self, key_ref: &str) -> KmsResult<Arc<CachedKey>> {
        let key = self.usable(key_ref, KeyUsage::EncryptDecrypt)?;
        match key.spec {
            KeySpec::SymmetricDefault | KeySpec::Aes128 | KeySpec::Aes256 | KeySpec::Sm4 => Ok(key),
            other if other.family() == KeyFamily::Symmetric => Err(KmsError::usage(format!(
                "field protection takes AES or SM4 keys; {other} keys are not offered for it"
            ))),
            other => Err(KmsError::usage(format!(
                "field protection takes a symmetric key, not {other}"
            ))),
        }
    }

    /// Blind indexes of normal forms (`None` where an item already failed), in one HSM call.
    fn indexes(
        &self,
        key: &CachedKey,
        normals: &[KmsResult<(FieldType, String)>],
    ) -> KmsResult<Vec<Option<Vec<u8>>>> {
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
        let messages: Vec<Vec<u8>> = normals
            .iter()
            .filter_map(|n| n.as_ref().ok())
            .map(|(field, normal)| {
                let mut m = Vec::with_capacity(normal.len() + 16);
                m.extend_from_slice(field.as_str().as_bytes());
                m.push(0);
                m.extend_from_slice(normal.as_bytes());
                m
            })
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let mut macs = if refs.is_empty() {
            Vec::new().into_iter()
        } else {
            self.hsm
                .derived_macs(handle, BLIND_INDEX_SALT, key.key_id.as_bytes(), &refs)?
                .into_iter()
        };
        let bytes = key
            .record
            .blind_index_bits
            .unwrap_or(DEFAULT_BLIND_INDEX_BITS) as usize
            / 8;
        Ok(normals
            .iter()
            .map(|n| {
                n.as_ref().ok()?;
                let mut mac = macs.next()?;
                mac.truncate(bytes);
                Some(mac)
            })
            .collect())
    }

    /// FF1 of a normal form under one version's handle, in either direction.
    fn fpe(
        &self,
        handle: &KeyHandle,
        field: FieldType,
        normal: &str,
        tweak: &[u8],
        encrypt: bool,
    ) -> KmsResult<String> {
        fields::format_preserving(field, normal, |radix, numerals, accept| {
            let out = if encrypt {
                self.hsm.fpe_encrypt(handle, radix, tweak, numerals, accept)
            } else {
                self.hsm.fpe_decrypt(handle, radix, tweak, numerals, accept)
            };
            Ok(out?)
        })
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
        let normals: Vec<KmsResult<(FieldType, String)>> = items
            .iter()
            .map(|i| Ok((i.field, fields::normalize(i.field, i.value)?)))
            .collect();
        let indexes = self.indexes(&key, &normals)?;
        Ok(items
            .iter()
            .zip(normals)
            .zip(indexes)
            .map(|((i, normal), index)| {
                let (_, normal) = normal?;
                let masked = match i.mask {
                    Some(rule) => fields::mask_with(&normal, rule),
                    None => fields::mask(i.field, &normal),
                };
                let context = bound(&i.context, i.field)?;
                let (ciphertext, version) = match i.mode {
                    FieldMode::Encrypt => {
                        let e = self.encrypt_with(&key, i.value.as_bytes(), &context, None)?;
                        (e.ciphertext, e.version)
                    }
                    FieldMode::Deterministic => {
                        let e = self.encrypt_deterministic(&key, i.value.as_bytes(), &context)?;
                        (e.ciphertext, e.version)
                    }
                    FieldMode::Fpe => {
                        let (v, handle) = self.primary(&key)?;
                        let tweak = fpe_tweak(i.tweak, &context)?;
                        let out = self.fpe(handle, i.field, &normal, &tweak, true)?;
                        (out.into_bytes(), v.version)
                    }
                };
                Ok(ProtectedField {
                    ciphertext,
                    version,
                    masked,
                    blind_index: index.ok_or_else(|| {
                        KmsError::new(ErrorCode::Unavailable, "blind index missing")
                    })?,
                })
            })
            .collect())
    }

    /// The values of field ciphertexts made by [`Kms::protect_fields`] under this key, each with the type and
    /// context it was protected with. Format-preserved values come back in their type's normal form.
    pub fn unprotect_fields(
        &self,
        key_ref: &str,
        items: &[SealedField<'_>],
    ) -> KmsResult<Vec<KmsResult<String>>> {
        check_count(items.len())?;
        let key = self.protect_key(key_ref)?;
        let key_id = key.key_id.to_string();
        Ok(items
            .iter()
            .map(|i| {
                let context = bound(&i.context, i.field)?;
                if i.mode == FieldMode::Fpe {
                    let text = std::str::from_utf8(i.ciphertext)
                        .map_err(|_| KmsError::invalid_ciphertext())?;
                    let normal = fields::normalize(i.field, text)
                        .map_err(|_| KmsError::invalid_ciphertext())?;
                    let handle = match i.version {
                        Some(n) => self.decryptable(&key, n, ErrorCode::InvalidCiphertext)?.1,
                        None => self.primary(&key)?.1,
                    };
                    let tweak = fpe_tweak(i.tweak, &context)?;
                    return self.fpe(handle, i.field, &normal, &tweak, false);
                }
                let d = self.decrypt(Some(&key_id), i.ciphertext, &context, None)?;
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
        let normals: Vec<KmsResult<(FieldType, String)>> = items
            .iter()
            .map(|(value, field)| Ok((*field, fields::normalize(*field, value)?)))
            .collect();
        let indexes = self.indexes(&key, &normals)?;
        Ok(normals
            .into_iter()
            .zip(indexes)
            .map(|(n, index)| {
                n?;
                index.ok_or_else(|| KmsError::new(ErrorCode::Unavailable, "blind index missing"))
            })
            .collect())
    }
}

/// The FF1 tweak: the caller's, or one derived from the bound context (which names the type), so that a
/// value protected under one context or type does not open under another.
fn fpe_tweak(given: Option<&[u8]>, context: &Context) -> KmsResult<Vec<u8>> {
    if let Some(t) = given {
        if t.len() > MAX_FPE_TWEAK {
            return Err(KmsError::validation(format!(
                "tweak: at most {MAX_FPE_TWEAK} bytes"
            )));
        }
        return Ok(t.to_vec());
    }
    let mut t = Vec::with_capacity(64);
    t.extend_from_slice(FPE_TWEAK_LABEL);
    for (k, v) in context {
        for part in [k, v] {
            t.extend_from_slice(&(part.len() as u32).to_be_bytes());
            t.extend_from_slice(part.as_bytes());
        }
    }
    Ok(t)
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
