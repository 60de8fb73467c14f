//! Bring your own key (BYOK) import and wrapped export.
//!
//! Import follows the scheme AWS KMS and Vault use: the caller fetches a one-time RSA-4096 wrapping public key
//! and import token, wraps an ephemeral AES-256 key with RSA-OAEP-SHA-256 and the key material with AES-KWP
//! (RFC 5649) under it, and sends the concatenation. The wrapping private key lives in the store wrapped under
//! the root key and is deleted when the token is used or re-wrapped on root rotation.

use keyward_hsm::{KeyAttributes, KeySpec, SecretBytes};
use keyward_store::{transact, Tx};

use crate::engine::Kms;
use crate::error::{ErrorCode, KmsError, KmsResult};
use crate::lifecycle::state_error;
use crate::model::{KeyInfo, KeyState, Origin};
use crate::records::{b64, corrupt, token_aad, unb64, ImportTokenRecord, IMPORT_NS};

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
            self.add_primary_version(tx, rec, versions, &material, now)?;
            crate::lifecycle::key_info(rec, tx.aliases_of(&rec.key_id)?.into_iter().next())
        })
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
