//! Bring your own key (BYOK) import and wrapped export.
//!
//! Import follows the scheme AWS KMS and Vault use: the caller fetches a one-time RSA-4096 wrapping public key
//! and import token, wraps an ephemeral AES-256 key with RSA-OAEP-SHA-256 and the key material with AES-KWP
//! (RFC 5649) under it, and sends the concatenation. The wrapping private key lives in the store wrapped under
//! the root key and is deleted when the token is used or re-wrapped on root rotation.

use keyward_hsm::{KeyAttributes, KeyFamily, KeyHandle, KeySpec, SecretBytes};
use keyward_store::{transact, KeyRecord, Tx, VersionRecord};

use crate::engine::Kms;
use crate::error::{ErrorCode, KmsError, KmsResult};
use crate::lifecycle::state_error;
use crate::model::{KeyInfo, KeyState, Origin, VersionState};
use crate::records::{
    b64, check_name, corrupt, token_aad, unb64, version_aad, DeletedMaterialRecord,
    ImportTokenRecord, IMPORT_CHECK_NS, IMPORT_NS,
};

/// HKDF salt of the value that recognises deleted secret material on re-import.
const CHECK_SALT: &[u8] = b"keyward:imported-material-check:v1";

/// What a caller needs to wrap key material for import.
#[derive(Clone, Debug)]
pub struct ImportParameters {
    /// RSA-4096 SPKI DER.
    pub wrapping_public_key_der: Vec<u8>,
    /// Single-use token naming the wrapping key.
    pub import_token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Kms {
    /// Issues a one-time wrapping key for importing material into an EXTERNAL key.
    pub fn import_parameters(&self, key_ref: &str) -> KmsResult<ImportParameters> {
        let key = self.load(&self.resolve(key_ref)?)?;
        if key.origin != Origin::External {
            return Err(KmsError::invalid_state(format!(
                "key {} is not an EXTERNAL key",
                key.key_id
            )));
        }
        if matches!(key.state, KeyState::PendingDeletion | KeyState::Destroyed) {
            return Err(state_error(key.state, &key.key_id));
        }
        let keyring = self.keyring()?;
        let wrapping = self
            .hsm
            .generate(KeySpec::Rsa4096, &KeyAttributes::internal())?;
        let mut raw = [0u8; 16];
        self.hsm.fill_random(&mut raw)?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let wrapped = self
            .hsm
            .wrap_for_storage(&keyring.root, &wrapping, &token_aad(&token))?;
        let expires_at = self.clock.now() + self.config.import_token_ttl;
        let rec = ImportTokenRecord {
            key_id: key.key_id.to_string(),
            expires_at,
            wrapped_private_key: b64(&wrapped),
        };
        let json = serde_json::to_vec(&rec).map_err(|_| corrupt("import token"))?;
        transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.put_meta(IMPORT_NS, &token, &json)
        })?;
        Ok(ImportParameters {
            wrapping_public_key_der: self.hsm.public_key_der(&wrapping)?,
            import_token: token,
            expires_at,
        })
    }

    /// Imports wrapped material as a new primary version of an EXTERNAL key. The token is consumed only if the
    /// import succeeds, so a corrupted upload can be retried.
    pub fn import_key_material(
        &self,
        key_ref: &str,
        import_token: &str,
        wrapped: &[u8],
    ) -> KmsResult<KeyInfo> {
        let key = self.load(&self.resolve(key_ref)?)?;
        let bad_token =
            || KmsError::validation("import token is unknown, expired, or for another key");
        if !import_token.bytes().all(|b| b.is_ascii_hexdigit()) || import_token.len() != 32 {
            return Err(bad_token());
        }
        let rec = transact(self.store.as_ref(), |tx: &mut dyn Tx| {
            tx.get_meta(IMPORT_NS, import_token)
        })?
        .ok_or_else(bad_token)?;
        let rec: ImportTokenRecord =
            serde_json::from_slice(&rec).map_err(|_| corrupt("import token"))?;
        if rec.key_id != *key.key_id || rec.expires_at < self.clock.now() {
            return Err(bad_token());
        }
        let keyring = self.keyring()?;
        let unwrapping = self.hsm.unwrap_from_storage(
            &keyring.root,
            KeySpec::Rsa4096,
            &unb64(&rec.wrapped_private_key)?,
            &token_aad(import_token),
            &KeyAttributes::internal(),
        )?;
        let attrs = KeyAttributes {
            extractable: key.record.exportable,
            ..KeyAttributes::default()
        };
        let material = self
            .hsm
            .import_wrapped(&unwrapping, key.spec, wrapped, &attrs)
            .map_err(|e| match e {
                keyward_hsm::HsmError::DecryptFailed => KmsError::new(
                    ErrorCode::InvalidCiphertext,
                    "wrapped_key_material does not unwrap with this import token",
                ),
                other => other.into(),
            })?;
        let key_id = key.key_id.to_string();
        let token = import_token.to_string();
        self.mutate_by_id(&key_id, move |tx, rec, versions, now| {
            match KeyState::parse(&rec.state) {
                Some(KeyState::Enabled | KeyState::Disabled) => {}
                Some(other) => return Err(state_error(other, &rec.key_id)),
                None => return Err(corrupt("unknown key state")),
            }
            if !tx.delete_meta(IMPORT_NS, &token)? {
                return Err(KmsError::validation("import token was already used"));
            }
            if !self.restore_deleted(tx, rec, versions, &material)? {
                if rec.pending_import {
                    return Err(KmsError::new(
                        ErrorCode::IncorrectKeyMaterial,
                        format!(
                            "this is not the material deleted from key {}: import the same material again",
                            rec.key_id
                        ),
                    ));
                }
                self.add_primary_version(tx, rec, versions, &material, now)?;
            }
            crate::lifecycle::key_info(rec, tx.aliases_of(&rec.key_id)?.into_iter().next())
        })
    }

    /// Deletes the imported material of every version of an EXTERNAL key, keeping only what recognises the
    /// same material later. The key refuses every cryptographic call until that material is imported again;
    /// its ciphertexts then decrypt as before. Unlike scheduled deletion, nothing is lost for good as long as
    /// the owner still holds the material, which is why it needs no waiting period.
    pub fn delete_imported_material(&self, key_ref: &str) -> KmsResult<KeyInfo> {
        let key_id = self.check_delete_imported_material(key_ref)?;
        self.mutate_by_id(&key_id, |tx, rec, versions, _| {
            deletable(rec)?;
            let spec = crate::lifecycle::parse_state(&rec.spec, KeySpec::parse)?;
            let keyring = self.keyring()?;
            for v in versions.iter_mut() {
                let Some(blob) = v.material.as_deref() else {
                    continue;
                };
                if v.root_generation != keyring.generation {
                    return Err(KmsError::new(
                        ErrorCode::Unavailable,
                        "the key's versions are being re-wrapped under a new root key; retry",
                    ));
                }
                let handle = self.hsm.unwrap_from_storage(
                    &keyring.root,
                    spec,
                    blob,
                    &version_aad(&rec.key_id, v.version),
                    &KeyAttributes::internal(),
                )?;
                let kept = DeletedMaterialRecord {
                    check: b64(&self.material_check(&rec.key_id, &handle)?),
                    state: v.state.clone(),
                };
                let json =
                    serde_json::to_vec(&kept).map_err(|_| corrupt("deleted material record"))?;
                tx.put_meta(IMPORT_CHECK_NS, &check_name(&rec.key_id, v.version), &json)?;
                v.state = VersionState::PendingImport.as_str().into();
                v.material = None;
                tx.put_version(v)?;
            }
            rec.pending_import = true;
            crate::lifecycle::key_info(rec, tx.aliases_of(&rec.key_id)?.into_iter().next())
        })
    }

    /// Whether [`Kms::delete_imported_material`] would succeed now, for a deletion that must wait for
    /// approval; returns the key id.
    pub fn check_delete_imported_material(&self, key_ref: &str) -> KmsResult<String> {
        let key_id = self.resolve_id(key_ref)?;
        let rec = transact(self.store.as_ref(), |tx: &mut dyn Tx| tx.get_key(&key_id))?
            .ok_or_else(|| KmsError::not_found(format!("key {key_id} does not exist")))?;
        deletable(&rec)?;
        Ok(key_id)
    }

    /// Puts `material` back into every version whose deleted material it is; true if any was restored. The
    /// key serves again once its primary version has its material.
    fn restore_deleted(
        &self,
        tx: &mut dyn Tx,
        rec: &mut KeyRecord,
        versions: &mut [VersionRecord],
        material: &KeyHandle,
    ) -> KmsResult<bool> {
        let pending = VersionState::PendingImport.as_str();
        if !versions.iter().any(|v| v.state == pending) {
            return Ok(false);
        }
        let check = self.material_check(&rec.key_id, material)?;
        let mut restored = false;
        for v in versions.iter_mut().filter(|v| v.state == pending) {
            let name = check_name(&rec.key_id, v.version);
            let kept = tx
                .get_meta(IMPORT_CHECK_NS, &name)?
                .ok_or_else(|| corrupt("deleted material record missing"))?;
            let kept: DeletedMaterialRecord =
                serde_json::from_slice(&kept).map_err(|_| corrupt("deleted material record"))?;
            if unb64(&kept.check)? != check {
                continue;
            }
            let (blob, generation) = self.wrap_new(&rec.key_id, v.version, material)?;
            v.material = Some(blob);
            v.root_generation = generation;
            v.state = kept.state;
            tx.put_version(v)?;
            tx.delete_meta(IMPORT_CHECK_NS, &name)?;
            restored = true;
        }
        rec.pending_import = versions
            .iter()
            .any(|v| v.version == rec.primary_version && v.state == pending);
        Ok(restored)
    }

    /// A value that recognises the same material again without revealing it: for a secret key, HKDF output
    /// under a salt used for nothing else, bound to the key; for a key pair, its public key.
    fn material_check(&self, key_id: &str, handle: &KeyHandle) -> KmsResult<Vec<u8>> {
        match handle.spec().family() {
            KeyFamily::Symmetric | KeyFamily::Hmac => Ok(self
                .hsm
                .derive_hkdf(handle, CHECK_SALT, key_id.as_bytes(), 32)?
                .expose()
                .to_vec()),
            KeyFamily::Rsa | KeyFamily::Ec | KeyFamily::PostQuantum => {
                Ok(self.hsm.public_key_der(handle)?)
            }
        }
    }

    /// Exports an exportable key's version wrapped for the holder of `wrapping_spki_der` (RSA, 2048 bits or more).
    pub fn export_key(
        &self,
        key_ref: &str,
        wrapping_spki_der: &[u8],
        version: Option<u32>,
    ) -> KmsResult<Vec<u8>> {
        let key = self.load(&self.resolve(key_ref)?)?;
        if !key.record.exportable || key.origin == Origin::Hsm {
            return Err(KmsError::invalid_state(format!(
                "key {} is not exportable",
                key.key_id
            )));
        }
        if key.state != KeyState::Enabled {
            return Err(state_error(key.state, &key.key_id));
        }
        let n = version.unwrap_or(key.record.primary_version);
        let v = key
            .version(n)
            .ok_or_else(|| KmsError::not_found(format!("key {} has no version {n}", key.key_id)))?;
        if v.wrapped.is_none() {
            return Err(KmsError::new(
                ErrorCode::KeyDestroyed,
                format!("version {n} of key {} is destroyed", key.key_id),
            ));
        }
        let handle = self.handle(&key, v)?;
        Ok(self.hsm.export_wrapped(handle, wrapping_spki_der)?)
    }

    /// Whether [`Kms::export_key`] would succeed now (the key exportable, the version live, the recipient
    /// key usable), for an export that must wait for approval: what it would refuse is refused before
    /// anyone is asked to approve it. The material wrapped for the recipient is discarded.
    pub fn check_export(
        &self,
        key_ref: &str,
        wrapping_spki_der: &[u8],
        version: Option<u32>,
    ) -> KmsResult<()> {
        self.export_key(key_ref, wrapping_spki_der, version)
            .map(drop)
    }

    /// Imports plaintext material directly (tests and restore tooling); the material must fit the spec.
    #[doc(hidden)]
    pub fn import_plaintext_for_tests(
        &self,
        key_ref: &str,
        material: &SecretBytes,
    ) -> KmsResult<KeyInfo> {
        let key = self.load(&self.resolve(key_ref)?)?;
        let handle = self
            .hsm
            .import_plaintext(key.spec, material, &KeyAttributes::internal())?;
        self.mutate_by_id(key.key_id.as_ref(), move |tx, rec, versions, now| {
            self.add_primary_version(tx, rec, versions, &handle, now)?;
            crate::lifecycle::key_info(rec, None)
        })
    }
}

/// The key may lose its imported material: EXTERNAL, Enabled or Disabled, with material that is not already
/// deleted.
fn deletable(rec: &KeyRecord) -> KmsResult<()> {
    if rec.origin != Origin::External.as_str() {
        return Err(KmsError::invalid_state(format!(
            "key {} is not an EXTERNAL key: only imported material can be deleted",
            rec.key_id
        )));
    }
    match crate::lifecycle::parse_state(&rec.state, KeyState::parse)? {
        KeyState::Enabled | KeyState::Disabled => {}
        other => return Err(state_error(other, &rec.key_id)),
    }
    if rec.pending_import {
        return Err(KmsError::invalid_state(format!(
            "the imported material of key {} is already deleted",
            rec.key_id
        )));
    }
    if rec.primary_version == 0 {
        return Err(KmsError::invalid_state(format!(
            "key {} has no imported material yet",
            rec.key_id
        )));
    }
    Ok(())
}
