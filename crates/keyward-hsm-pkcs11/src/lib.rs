//! Keyward's HSM provider over PKCS#11: keys are generated and used inside a token (a Thales, Utimaco or
//! Entrust box, a cloud HSM, or SoftHSM2 in tests), and a key marked sensitive never leaves it in plaintext.
//!
//! # What runs where
//! Private-key and secret-key operations (AES-GCM, HMAC, RSA and ECDSA signing, RSA-OAEP decryption, ECDH)
//! run in the token. Public-key operations (verification, RSA-OAEP encryption) need no secret, so they run in
//! the software HSM on the public key the token exported: the same code that passes the Wycheproof suite.
//! Messages are hashed in software and the token signs the digest, which every token offers
//! (`CKM_ECDSA`, `CKM_RSA_PKCS` over a `DigestInfo`, `CKM_RSA_PKCS_PSS`).
//!
//! # Storage wrapping
//! A key that lives in a token session is wrapped for storage with `CKM_AES_KEY_WRAP_PAD` (RFC 5649), and
//! the wrapped bytes are sealed with AES-GCM binding the caller's associated data, so a blob moved to another
//! key or version fails to open. The two layers use two keys the token derives from the KEK
//! (`CKM_AES_CBC_ENCRYPT_DATA` over fixed labels), never the KEK itself for both. A key kept as a persistent
//! token object is not wrapped at all: its blob is a GCM-sealed reference (`CKA_ID`) to the object.
//!
//! # Sessions
//! A pool of read-write sessions, logged in once. A session the token reports as gone (closed, device
//! removed, token not present) is dropped instead of returned, and the call is tried once more on a fresh
//! session, so a token that went away and came back is used again without a restart. The PIN lives in a
//! zeroizing buffer and appears in no message.

mod der;
mod hybrid;

pub use hybrid::HybridHsm;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyward_hsm::{
    EncryptionAlgorithm, Hsm, HsmError, HsmResult, KeyAttributes, KeyFamily, KeyHandle, KeySpec,
    MacAlgorithm, SecretBytes, SignInput, SigningAlgorithm,
};
use keyward_hsm_soft::SoftHsm;
use parking_lot::Mutex;
use zeroize::Zeroizing;

const BACKEND: &str = "pkcs11";
/// Marks a blob that refers to a persistent token object instead of carrying wrapped material.
const REFERENCE: &[u8; 4] = b"KWR1";
/// Marks a blob of wrapped material.
const WRAPPED: &[u8; 4] = b"KWW1";
const GCM_NONCE: usize = 12;
/// How a call reports a handle the token no longer knows (after a logout, a token reset, a new session).
const STALE: &str = "the token no longer knows this key's handle";
const GCM_TAG: usize = 16;

/// Where the token is and how to log in to it.
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// Label of the token to use.
    pub token_label: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// Sessions kept open for concurrent calls.
    pub sessions: usize,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("sessions", &self.sessions)
            .finish()
    }
}

/// A key inside the token, or a public key held in software.
enum P11Key {
    Token {
        /// The object (for a key pair, the private key); replaced when the token forgot the handle.
        object: Mutex<ObjectHandle>,
        /// `CKA_ID` of a persistent object: how it is found again after the token came back.
        id: Option<Vec<u8>>,
        /// The public half in the software HSM, for verification and encryption.
        public: Option<KeyHandle>,
        /// Subkeys of a KEK for storage wrapping, derived on first use.
        storage: Mutex<Option<(ObjectHandle, ObjectHandle)>>,
        /// Whether `destroy` should delete a persistent object.
        persistent: bool,
    },
    Public(KeyHandle),
}

/// The PKCS#11 backend.
pub struct Pkcs11Hsm {
    ctx: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    idle: Mutex<Vec<Session>>,
    /// Sessions that own session objects: never closed while the backend lives, or the objects would go.
    owners: Mutex<Vec<Session>>,
    max_sessions: usize,
    soft: SoftHsm,
    /// Whether the token decrypts RSA-OAEP with SHA-1 and with SHA-256, found out on first use.
    oaep: [OnceLock<bool>; 2],
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// An RSA algorithm the token cannot decrypt with (SoftHSM 2.6 offers OAEP with SHA-1 only): refused on
/// both sides, as the caller's choice to change.
const UNDECRYPTABLE: HsmError = HsmError::IncorrectKeyUsage(
    "the PKCS#11 token cannot decrypt with this algorithm, so nothing may be encrypted with it; choose another of the key's encryption algorithms (RSAES_OAEP_SHA_1)",
);

/// A token error in words, never with key material or the PIN.
fn token_error(op: &str, e: CkError) -> HsmError {
    match rv(&e) {
        Some(RvError::EncryptedDataInvalid)
        | Some(RvError::EncryptedDataLenRange)
        | Some(RvError::WrappedKeyInvalid)
        | Some(RvError::WrappedKeyLenRange) => HsmError::DecryptFailed,
        // What the token does not offer is the request's to change, not a failure of the service.
        Some(RvError::MechanismInvalid) => HsmError::IncorrectKeyUsage(
            "the PKCS#11 token does not offer the mechanism this operation needs",
        ),
        Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid) => {
            HsmError::Backend(format!("token {op}: {STALE}"))
        }
        Some(r) => HsmError::Backend(format!("token {op}: {r:?}")),
        None => HsmError::Backend(format!("token {op}: {e}")),
    }
}

/// Errors after which the session must not be used again.
fn session_lost(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
        )
    )
}

fn hash_mechanism(len: usize) -> HsmResult<(MechanismType, PkcsMgfType)> {
    match len {
        32 => Ok((MechanismType::SHA256, PkcsMgfType::MGF1_SHA256)),
        48 => Ok((MechanismType::SHA384, PkcsMgfType::MGF1_SHA384)),
        64 => Ok((MechanismType::SHA512, PkcsMgfType::MGF1_SHA512)),
        _ => Err(HsmError::InvalidInput(
            "digest length does not match the algorithm",
        )),
    }
}

fn digest(alg: SigningAlgorithm, input: SignInput<'_>) -> HsmResult<Vec<u8>> {
    let want = alg
        .digest_len()
        .ok_or(HsmError::IncorrectKeyUsage("algorithm signs messages only"))?;
    match input {
        SignInput::Digest(d) if d.len() == want => Ok(d.to_vec()),
        SignInput::Digest(_) => Err(HsmError::InvalidInput(
            "digest length does not match the algorithm",
        )),
        SignInput::Message(m) => {
            let algo = match want {
                32 => &aws_lc_rs::digest::SHA256,
                48 => &aws_lc_rs::digest::SHA384,
                _ => &aws_lc_rs::digest::SHA512,
            };
            Ok(aws_lc_rs::digest::digest(algo, m).as_ref().to_vec())
        }
    }
}

fn mac_mechanism(alg: MacAlgorithm) -> Mechanism<'static> {
    match alg {
        MacAlgorithm::HmacSha224 => Mechanism::Sha224Hmac,
        MacAlgorithm::HmacSha256 => Mechanism::Sha256Hmac,
        MacAlgorithm::HmacSha384 => Mechanism::Sha384Hmac,
        MacAlgorithm::HmacSha512 => Mechanism::Sha512Hmac,
    }
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token by label and logs in.
    pub fn open(config: &Pkcs11Config) -> HsmResult<Pkcs11Hsm> {
        let ctx = load(&config.module)?;
        let mut slot = None;
        for s in ctx
            .get_slots_with_token()
            .map_err(|e| token_error("slot list", e))?
        {
            let info = ctx
                .get_token_info(s)
                .map_err(|e| token_error("token info", e))?;
            if info.label().trim_end() == config.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            HsmError::Backend(format!(
                "no PKCS#11 token is labelled {:?}",
                config.token_label
            ))
        })?;
        let hsm = Pkcs11Hsm {
            ctx,
            slot,
            pin: AuthPin::new(config.pin.as_str().into()),
            idle: Mutex::new(Vec::new()),
            owners: Mutex::new(Vec::new()),
            max_sessions: config.sessions.max(1),
            soft: SoftHsm::new(),
            oaep: [OnceLock::new(), OnceLock::new()],
        };
        // Log in now so a wrong PIN is reported at start, not at the first request.
        let session = hsm.open_session()?;
        hsm.owners.lock().push(session);
        Ok(hsm)
    }

    fn open_session(&self) -> HsmResult<Session> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| token_error("open session", e))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) => Ok(session),
            Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => Ok(session),
            Err(e) if rv(&e) == Some(RvError::PinIncorrect) => Err(HsmError::Backend(
                "the PKCS#11 token refused the PIN".into(),
            )),
            Err(e) if rv(&e) == Some(RvError::PinLocked) => Err(HsmError::Backend(
                "the PKCS#11 token's user PIN is locked".into(),
            )),
            Err(e) => Err(token_error("login", e)),
        }
    }

    /// Runs `f` on a pooled session; a session the token lost is dropped and the call retried once.
    fn with_session<T>(
        &self,
        op: &str,
        mut f: impl FnMut(&Session) -> Result<T, CkError>,
    ) -> HsmResult<T> {
        for attempt in 0..2 {
            let session = match self.idle.lock().pop() {
                Some(s) => s,
                None => self.open_session()?,
            };
            match f(&session) {
                Ok(v) => {
                    let mut idle = self.idle.lock();
                    if idle.len() < self.max_sessions {
                        idle.push(session);
                    }
                    return Ok(v);
                }
                Err(e) if session_lost(&e) && attempt == 0 => {
                    drop(session);
                    self.idle.lock().clear();
                    continue;
                }
                Err(e) => {
                    if !session_lost(&e) {
                        let mut idle = self.idle.lock();
                        if idle.len() < self.max_sessions {
                            idle.push(session);
                        }
                    }
                    return Err(token_error(op, e));
                }
            }
        }
        Err(HsmError::Backend(format!(
            "token {op}: the session was lost twice"
        )))
    }

    /// Creates objects on the owning session, which stays open for the backend's life.
    fn with_owner<T>(
        &self,
        op: &str,
        mut f: impl FnMut(&Session) -> Result<T, CkError>,
    ) -> HsmResult<T> {
        let mut owners = self.owners.lock();
        if owners.is_empty() {
            owners.push(self.open_session()?);
        }
        let result = match owners.first() {
            Some(s) => f(s),
            None => return Err(HsmError::Backend("no token session".into())),
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) if session_lost(&e) => {
                // The token went away with every session object; persistent objects remain.
                owners.clear();
                let fresh = self.open_session()?;
                let retried = f(&fresh).map_err(|e| token_error(op, e));
                owners.push(fresh);
                retried
            }
            Err(e) => Err(token_error(op, e)),
        }
    }

    fn token_key<'a>(&self, handle: &'a KeyHandle) -> HsmResult<&'a P11Key> {
        handle.object::<P11Key>(BACKEND)
    }

    /// The token object of a key, found again by `CKA_ID` if the token lost its handles.
    fn object(&self, handle: &KeyHandle) -> HsmResult<ObjectHandle> {
        match self.token_key(handle)? {
            P11Key::Token { object, .. } => Ok(*object.lock()),
            P11Key::Public(_) => Err(HsmError::IncorrectKeyUsage(
                "a public key cannot do this operation",
            )),
        }
    }

    fn new_id(&self) -> HsmResult<Vec<u8>> {
        let mut id = vec![0u8; 16];
        self.fill_random(&mut id)?;
        Ok(id)
    }

    fn wrap_handle(
        &self,
        spec: KeySpec,
        object: ObjectHandle,
        public: Option<KeyHandle>,
        attrs: &KeyAttributes,
        id: Option<Vec<u8>>,
    ) -> KeyHandle {
        KeyHandle::new(
            BACKEND,
            spec,
            attrs.extractable && !attrs.token_resident,
            false,
            P11Key::Token {
                object: Mutex::new(object),
                persistent: id.is_some(),
                id,
                public,
                storage: Mutex::new(None),
            },
        )
    }

    fn secret_template(
        &self,
        spec: KeySpec,
        attrs: &KeyAttributes,
        id: &Option<Vec<u8>>,
    ) -> HsmResult<Vec<Attribute>> {
        let len = spec.secret_len().ok_or(HsmError::UnsupportedSpec(spec))?;
        let (key_type, usage) = match spec.family() {
            KeyFamily::Symmetric => (KeyType::AES, true),
            KeyFamily::Hmac => (KeyType::GENERIC_SECRET, false),
            _ => return Err(HsmError::UnsupportedSpec(spec)),
        };
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::ValueLen((len as u64).into()),
            Attribute::Token(attrs.token_resident),
            Attribute::Private(true),
            Attribute::Sensitive(!attrs.extractable || attrs.token_resident),
            // Wrappable for storage unless it is a token object, which is referenced instead.
            Attribute::Extractable(!attrs.token_resident),
            Attribute::Encrypt(usage),
            Attribute::Decrypt(usage),
            Attribute::Wrap(usage),
            Attribute::Unwrap(usage),
            Attribute::Derive(usage),
            Attribute::Sign(!usage),
            Attribute::Verify(!usage),
        ];
        if let Some(label) = &attrs.label {
            t.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = id {
            t.push(Attribute::Id(id.clone()));
        }
        Ok(t)
    }

    /// Runs `f`; if the token no longer knows a handle of `key`, finds the key again (persistent keys, by
    /// `CKA_ID`; storage subkeys are derived again) and runs `f` once more. Session keys the token dropped
    /// are gone with it, and the error says so.
    fn retrying<T>(&self, key: &KeyHandle, mut f: impl FnMut() -> HsmResult<T>) -> HsmResult<T> {
        match f() {
            Err(HsmError::Backend(m)) if m.ends_with(STALE) && self.refresh(key)? => f(),
            other => other,
        }
    }

    fn refresh(&self, key: &KeyHandle) -> HsmResult<bool> {
        let P11Key::Token {
            object,
            id,
            persistent,
            storage,
            ..
        } = self.token_key(key)?
        else {
            return Ok(false);
        };
        let had_subkeys = storage.lock().take().is_some();
        // Handles die with the login (a logout, a token reset): log in again first, or private objects
        // stay invisible to the search. The login holds for every session of the process.
        let session = self.open_session()?;
        {
            let mut idle = self.idle.lock();
            if idle.len() < self.max_sessions {
                idle.push(session);
            }
        }
        match (persistent, id) {
            (true, Some(id)) => {
                *object.lock() = self.find_by_id(key.spec(), id)?;
                Ok(true)
            }
            _ => Ok(had_subkeys),
        }
    }

    /// A persistent AES-256 key found by label, created non-extractable on first use: the root of trust.
    pub fn root_of_trust_key(&self, label: &str) -> HsmResult<KeyHandle> {
        let found = self.with_session("find root of trust", |s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
        })?;
        let attrs = KeyAttributes {
            extractable: false,
            token_resident: true,
            label: Some(label.to_string()),
        };
        match found.as_slice() {
            [object] => {
                let id = self
                    .with_session("read root of trust", |s| {
                        s.get_attributes(*object, &[AttributeType::Id])
                    })?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::Id(id) => Some(id),
                        _ => None,
                    });
                Ok(self.wrap_handle(
                    KeySpec::Aes256,
                    *object,
                    None,
                    &attrs,
                    id.or(Some(Vec::new())),
                ))
            }
            [] => self.generate(KeySpec::Aes256, &attrs),
            _ => Err(HsmError::Backend(format!(
                "several keys in the token are labelled {label:?}; keep one"
            ))),
        }
    }

    fn storage_keys(&self, kek: &KeyHandle) -> HsmResult<(ObjectHandle, ObjectHandle)> {
        let P11Key::Token {
            object, storage, ..
        } = self.token_key(kek)?
        else {
            return Err(HsmError::IncorrectKeyUsage("a public key cannot wrap"));
        };
        if kek.spec().family() != KeyFamily::Symmetric {
            return Err(HsmError::IncorrectKeyUsage("the KEK must be an AES key"));
        }
        let mut storage = storage.lock();
        if let Some(keys) = *storage {
            return Ok(keys);
        }
        let object = *object.lock();
        let derive = |label: &'static [u8; 32]| {
            self.with_owner("derive storage key", |s| {
                let params = AesCbcDeriveParams::new([0u8; 16], label);
                s.derive_key(
                    &Mechanism::AesCbcEncryptData(params),
                    object,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32u64.into()),
                        Attribute::Token(false),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Wrap(true),
                        Attribute::Unwrap(true),
                    ],
                )
            })
        };
        let wrap = derive(b"keyward storage wrap key v1.....")?;
        let seal = derive(b"keyward storage seal key v1.....")?;
        *storage = Some((wrap, seal));
        Ok((wrap, seal))
    }

    /// AES-GCM in the token: `nonce || ciphertext || tag`.
    fn gcm_seal(&self, key: ObjectHandle, aad: &[u8], plaintext: &[u8]) -> HsmResult<Vec<u8>> {
        let mut nonce = [0u8; GCM_NONCE];
        self.fill_random(&mut nonce)?;
        let sealed = self.with_session("encrypt", |s| {
            let mut iv = nonce;
            let params = GcmParams::new(&mut iv, aad, ((GCM_TAG * 8) as u64).into())?;
            s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
        })?;
        let mut out = Vec::with_capacity(GCM_NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn gcm_open(&self, key: ObjectHandle, aad: &[u8], sealed: &[u8]) -> HsmResult<SecretBytes> {
        if sealed.len() < GCM_NONCE + GCM_TAG {
            return Err(HsmError::DecryptFailed);
        }
        let (nonce, body) = sealed.split_at(GCM_NONCE);
        let plain = self.with_session("decrypt", |s| {
            let mut iv = [0u8; GCM_NONCE];
            iv.copy_from_slice(nonce);
            let params = GcmParams::new(&mut iv, aad, ((GCM_TAG * 8) as u64).into())?;
            s.decrypt(&Mechanism::AesGcm(params), key, body)
        });
        match plain {
            Ok(p) => Ok(SecretBytes::new(p)),
            // A forgotten handle is retried by the caller; a lost session was already retried.
            Err(HsmError::Backend(m)) if m.ends_with(STALE) => Err(HsmError::Backend(m)),
            // Tokens report a failed tag check in several ways; none of them is more than "does not open".
            Err(HsmError::Backend(_)) | Err(HsmError::DecryptFailed) => {
                Err(HsmError::DecryptFailed)
            }
            Err(e) => Err(e),
        }
    }

    /// Seals bytes under a token KEK with the storage sealing subkey: how the hybrid backend stores software
    /// keys under a root key that never leaves the token.
    pub fn seal_for_storage(
        &self,
        kek: &KeyHandle,
        aad: &[u8],
        bytes: &[u8],
    ) -> HsmResult<Vec<u8>> {
        self.retrying(kek, || {
            let (_, seal) = self.storage_keys(kek)?;
            self.gcm_seal(seal, aad, bytes)
        })
    }

    /// Inverse of [`Pkcs11Hsm::seal_for_storage`].
    pub fn open_from_storage(
        &self,
        kek: &KeyHandle,
        aad: &[u8],
        blob: &[u8],
    ) -> HsmResult<SecretBytes> {
        self.retrying(kek, || {
            let (_, seal) = self.storage_keys(kek)?;
            self.gcm_open(seal, aad, blob)
        })
    }

    fn public_of(&self, spec: KeySpec, public: ObjectHandle) -> HsmResult<KeyHandle> {
        let spki = match spec.family() {
            KeyFamily::Rsa => {
                let attrs = self.with_session("read public key", |s| {
                    s.get_attributes(
                        public,
                        &[AttributeType::Modulus, AttributeType::PublicExponent],
                    )
                })?;
                let (mut n, mut e) = (None, None);
                for a in attrs {
                    match a {
                        Attribute::Modulus(v) => n = Some(v),
                        Attribute::PublicExponent(v) => e = Some(v),
                        _ => {}
                    }
                }
                match (n, e) {
                    (Some(n), Some(e)) => der::rsa_spki(&n, &e),
                    _ => return Err(HsmError::Backend("the token hid the RSA public key".into())),
                }
            }
            KeyFamily::Ec => {
                let attrs = self.with_session("read public key", |s| {
                    s.get_attributes(public, &[AttributeType::EcPoint])
                })?;
                let point = attrs
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(p) => Some(p),
                        _ => None,
                    })
                    .ok_or_else(|| HsmError::Backend("the token hid the EC public key".into()))?;
                der::ec_spki(spec, &point)?
            }
            _ => return Err(HsmError::UnsupportedSpec(spec)),
        };
        self.soft.import_public(spec, &spki)
    }

    fn generate_pair(&self, spec: KeySpec, attrs: &KeyAttributes) -> HsmResult<KeyHandle> {
        let id = attrs.token_resident.then(|| self.new_id()).transpose()?;
        let mut public = vec![
            // A persistent pair keeps its public half beside it, found by the same id.
            Attribute::Token(attrs.token_resident),
            Attribute::Verify(true),
            Attribute::Encrypt(spec.family() == KeyFamily::Rsa),
        ];
        let mut private = vec![
            Attribute::Token(attrs.token_resident),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            // Never readable; a session key may be wrapped for storage, a token object not even that.
            Attribute::Extractable(!attrs.token_resident),
            Attribute::Sign(true),
            Attribute::Decrypt(spec.family() == KeyFamily::Rsa),
            Attribute::Derive(spec.family() == KeyFamily::Ec),
        ];
        if let Some(label) = &attrs.label {
            private.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &id {
            private.push(Attribute::Id(id.clone()));
            public.push(Attribute::Id(id.clone()));
        }
        let mechanism = match spec {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                let bits: u64 = match spec {
                    KeySpec::Rsa2048 => 2048,
                    KeySpec::Rsa3072 => 3072,
                    _ => 4096,
                };
                public.push(Attribute::ModulusBits(bits.into()));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
            _ => {
                let oid = der::curve_oid(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
                public.push(Attribute::EcParams(oid.to_vec()));
                Mechanism::EccKeyPairGen
            }
        };
        let (pub_obj, priv_obj) = self.with_owner("generate key pair", |s| {
            s.generate_key_pair(&mechanism, &public, &private)
        })?;
        let public_key = self.public_of(spec, pub_obj)?;
        if !attrs.token_resident {
            // Only needed to read the key out; the software copy serves from now on.
            let _ = self.with_owner("destroy public object", |s| s.destroy_object(pub_obj));
        }
        let attrs = KeyAttributes {
            extractable: false,
            ..attrs.clone()
        };
        Ok(self.wrap_handle(spec, priv_obj, Some(public_key), &attrs, id))
    }

    fn soft_public<'a>(&self, key: &'a KeyHandle) -> HsmResult<&'a KeyHandle> {
        match self.token_key(key)? {
            P11Key::Token {
                public: Some(p), ..
            } => Ok(p),
            P11Key::Public(p) => Ok(p),
            P11Key::Token { public: None, .. } => Err(HsmError::IncorrectKeyUsage(
                "symmetric keys have no public key",
            )),
        }
    }

    /// Imports a PKCS#8 private key into the token. The software HSM parses it first (structure, curve, key
    /// size, and the public half, which an EC `PrivateKeyInfo` need not carry); then the token gets the
    /// private parts as a sensitive object. Every copy of the parts outside the token is zeroized.
    fn import_private(
        &self,
        spec: KeySpec,
        pkcs8: &SecretBytes,
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        let checked = self
            .soft
            .import_plaintext(spec, pkcs8, &KeyAttributes::internal())?;
        let public = self
            .soft
            .import_public(spec, &self.soft.public_key_der(&checked)?)?;
        drop(checked);
        let rsa = spec.family() == KeyFamily::Rsa;
        let mut parts = der::pkcs8_private_parts(pkcs8.expose(), rsa)?;
        let id = attrs.token_resident.then(|| self.new_id()).transpose()?;
        let mut template = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(if rsa { KeyType::RSA } else { KeyType::EC }),
            Attribute::Token(attrs.token_resident),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(!attrs.token_resident),
            Attribute::Sign(true),
            Attribute::Decrypt(rsa),
            Attribute::Derive(!rsa),
        ];
        if rsa {
            let mut it = parts.drain(..);
            let mut next = || it.next().unwrap_or_default();
            template.extend([
                Attribute::Modulus(next()),
                Attribute::PublicExponent(next()),
                Attribute::PrivateExponent(next()),
                Attribute::Prime1(next()),
                Attribute::Prime2(next()),
                Attribute::Exponent1(next()),
                Attribute::Exponent2(next()),
                Attribute::Coefficient(next()),
            ]);
        } else {
            let oid = der::curve_oid(spec).ok_or(HsmError::UnsupportedSpec(spec))?;
            template.push(Attribute::EcParams(oid.to_vec()));
            template.push(Attribute::Value(parts.pop().unwrap_or_default()));
        }
        for p in parts.iter_mut() {
            zeroize::Zeroize::zeroize(p);
        }
        if let Some(label) = &attrs.label {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &id {
            template.push(Attribute::Id(id.clone()));
        }
        let object = self.with_owner("import private key", |s| s.create_object(&template));
        for a in template.iter_mut() {
            match a {
                Attribute::Value(v)
                | Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v) => zeroize::Zeroize::zeroize(v),
                _ => {}
            }
        }
        let attrs = KeyAttributes {
            extractable: false,
            ..attrs.clone()
        };
        Ok(self.wrap_handle(spec, object?, Some(public), &attrs, id))
    }

    /// Tokens do not say which OAEP hashes they accept; a throwaway key pair answers once.
    fn probe_oaep(&self, alg: EncryptionAlgorithm) -> bool {
        let (hash, mgf) = match alg {
            EncryptionAlgorithm::RsaesOaepSha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            _ => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        };
        let probe = self.with_owner("probe OAEP", |s| {
            let (public, private) = s.generate_key_pair(
                &Mechanism::RsaPkcsKeyPairGen,
                &[
                    Attribute::Token(false),
                    Attribute::Encrypt(true),
                    Attribute::ModulusBits(2048u64.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ],
                &[
                    Attribute::Token(false),
                    Attribute::Sensitive(true),
                    Attribute::Decrypt(true),
                ],
            )?;
            let params = || PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty());
            let works = s
                .encrypt(&Mechanism::RsaPkcsOaep(params()), public, b"probe")
                .and_then(|ct| s.decrypt(&Mechanism::RsaPkcsOaep(params()), private, &ct))
                .is_ok_and(|pt| pt == b"probe");
            let _ = s.destroy_object(public);
            let _ = s.destroy_object(private);
            Ok(works)
        });
        probe.unwrap_or(false)
    }

    /// The `CKA_ID` of a persistent token key: what a stored reference to it holds.
    pub fn persistent_id(&self, key: &KeyHandle) -> HsmResult<Vec<u8>> {
        match self.token_key(key)? {
            P11Key::Token {
                id: Some(id),
                persistent: true,
                ..
            } => Ok(id.clone()),
            _ => Err(HsmError::IncorrectKeyUsage("not a persistent token key")),
        }
    }

    /// A persistent token key by its `CKA_ID`, with its public half for a key pair.
    pub fn find_persistent(&self, spec: KeySpec, id: &[u8]) -> HsmResult<KeyHandle> {
        let object = self.find_by_id(spec, id)?;
        let public = match spec.family() {
            KeyFamily::Rsa | KeyFamily::Ec => {
                let pair = self.with_session("find public key", |s| {
                    s.find_objects(&[
                        Attribute::Class(ObjectClass::PUBLIC_KEY),
                        Attribute::Id(id.to_vec()),
                    ])
                })?;
                match pair.first() {
                    Some(p) => Some(self.public_of(spec, *p)?),
                    None => None,
                }
            }
            _ => None,
        };
        let attrs = KeyAttributes {
            token_resident: true,
            ..KeyAttributes::internal()
        };
        Ok(self.wrap_handle(spec, object, public, &attrs, Some(id.to_vec())))
    }

    fn find_by_id(&self, spec: KeySpec, id: &[u8]) -> HsmResult<ObjectHandle> {
        let class = match spec.family() {
            KeyFamily::Symmetric | KeyFamily::Hmac => ObjectClass::SECRET_KEY,
            _ => ObjectClass::PRIVATE_KEY,
        };
        let found = self.with_session("find key", |s| {
            s.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        })?;
        match found.as_slice() {
            [object] => Ok(*object),
            [] => Err(HsmError::Backend(
                "the token object this key refers to is gone (another token, or deleted)".into(),
            )),
            _ => Err(HsmError::Backend(
                "several token objects share one id".into(),
            )),
        }
    }
}

impl Pkcs11Hsm {
    fn wrap_once(&self, kek: &KeyHandle, key: &KeyHandle, aad: &[u8]) -> HsmResult<Vec<u8>> {
        let (wrap, seal) = self.storage_keys(kek)?;
        let P11Key::Token {
            object,
            id,
            persistent,
            ..
        } = self.token_key(key)?
        else {
            return Err(HsmError::IncorrectKeyUsage("a public key is not stored"));
        };
        let object = *object.lock();
        let (tag, inner) = if *persistent {
            (REFERENCE, id.clone().unwrap_or_default())
        } else {
            let wrapped = self.with_session("wrap key", |s| {
                s.wrap_key(&Mechanism::AesKeyWrapPad, wrap, object)
            })?;
            // A private key travels with its public half, which the token cannot recompute for EC keys.
            let spki = match key.spec().family() {
                KeyFamily::Rsa | KeyFamily::Ec => self.public_key_der(key)?,
                _ => Vec::new(),
            };
            let len = u16::try_from(spki.len())
                .map_err(|_| HsmError::InvalidInput("public key too large"))?;
            let mut inner = len.to_be_bytes().to_vec();
            inner.extend_from_slice(&spki);
            inner.extend_from_slice(&wrapped);
            (WRAPPED, inner)
        };
        let mut out = tag.to_vec();
        out.extend_from_slice(&self.gcm_seal(seal, aad, &inner)?);
        Ok(out)
    }

    fn unwrap_once(
        &self,
        kek: &KeyHandle,
        spec: KeySpec,
        blob: &[u8],
        aad: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        let (wrap, seal) = self.storage_keys(kek)?;
        let (tag, sealed) = blob.split_at(blob.len().min(4));
        let inner = self.gcm_open(seal, aad, sealed)?;
        if tag == REFERENCE {
            return self.find_persistent(spec, inner.expose());
        }
        if tag != WRAPPED || !self.supports(spec) {
            return Err(HsmError::DecryptFailed);
        }
        let (len, rest) = inner.expose().split_at(inner.expose().len().min(2));
        let len = match len {
            [a, b] => u16::from_be_bytes([*a, *b]) as usize,
            _ => return Err(HsmError::DecryptFailed),
        };
        if rest.len() < len {
            return Err(HsmError::DecryptFailed);
        }
        let (spki, wrapped) = rest.split_at(len);
        let (template, public) = match spec.family() {
            KeyFamily::Symmetric | KeyFamily::Hmac => {
                let t = self.secret_template(spec, attrs, &None)?;
                let t: Vec<Attribute> = t
                    .into_iter()
                    .filter(|a| !matches!(a, Attribute::ValueLen(_)))
                    .collect();
                (t, None)
            }
            family => {
                let rsa = family == KeyFamily::Rsa;
                let t = vec![
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(if rsa { KeyType::RSA } else { KeyType::EC }),
                    Attribute::Token(false),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                    Attribute::Sign(true),
                    Attribute::Decrypt(rsa),
                    Attribute::Derive(!rsa),
                ];
                (t, Some(self.soft.import_public(spec, spki)?))
            }
        };
        let object = self.with_owner("unwrap key", |s| {
            s.unwrap_key(&Mechanism::AesKeyWrapPad, wrap, wrapped, &template)
        })?;
        let attrs = KeyAttributes {
            extractable: attrs.extractable && public.is_none(),
            ..attrs.clone()
        };
        Ok(self.wrap_handle(spec, object, public, &attrs, None))
    }
}

fn load(module: &Path) -> HsmResult<Pkcs11> {
    let ctx = Pkcs11::new(module).map_err(|e| {
        HsmError::Backend(format!(
            "cannot load the PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => Ok(ctx),
        // Another backend of this process initialised the same module: it is shared.
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => Ok(ctx),
        Err(e) => Err(token_error("initialize", e)),
    }
}

impl Hsm for Pkcs11Hsm {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn supports(&self, spec: KeySpec) -> bool {
        matches!(
            spec,
            KeySpec::SymmetricDefault
                | KeySpec::Aes128
                | KeySpec::Aes256
                | KeySpec::Hmac224
                | KeySpec::Hmac256
                | KeySpec::Hmac384
                | KeySpec::Hmac512
                | KeySpec::Rsa2048
                | KeySpec::Rsa3072
                | KeySpec::Rsa4096
                | KeySpec::EccNistP256
                | KeySpec::EccNistP384
                | KeySpec::EccNistP521
        )
    }

    fn supports_encryption(&self, spec: KeySpec, alg: EncryptionAlgorithm) -> bool {
        if !self.supports(spec) || !spec.encryption_algorithms().contains(&alg) {
            return false;
        }
        let i = match alg {
            EncryptionAlgorithm::RsaesOaepSha1 => 0,
            _ => 1,
        };
        *self.oaep[i].get_or_init(|| self.probe_oaep(alg))
    }

    fn generate(&self, spec: KeySpec, attrs: &KeyAttributes) -> HsmResult<KeyHandle> {
        if !self.supports(spec) {
            return Err(HsmError::UnsupportedSpec(spec));
        }
        match spec.family() {
            KeyFamily::Symmetric | KeyFamily::Hmac => {
                let id = attrs.token_resident.then(|| self.new_id()).transpose()?;
                let mut template = self.secret_template(spec, attrs, &id)?;
                template.retain(|a| !matches!(a, Attribute::Class(_)));
                let mechanism = if spec.family() == KeyFamily::Symmetric {
                    template.retain(|a| !matches!(a, Attribute::KeyType(_)));
                    Mechanism::AesKeyGen
                } else {
                    Mechanism::GenericSecretKeyGen
                };
                let object =
                    self.with_owner("generate key", |s| s.generate_key(&mechanism, &template))?;
                Ok(self.wrap_handle(spec, object, None, attrs, id))
            }
            _ => self.generate_pair(spec, attrs),
        }
    }

    fn import_plaintext(
        &self,
        spec: KeySpec,
        material: &SecretBytes,
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        if !self.supports(spec) {
            return Err(HsmError::UnsupportedSpec(spec));
        }
        if matches!(spec.family(), KeyFamily::Rsa | KeyFamily::Ec) {
            return self.import_private(spec, material, attrs);
        }
        let len = material.expose().len();
        let fits = match spec.family() {
            // Tokens refuse HMAC keys shorter than the digest (SP 800-107's floor); say so now, not at first use.
            KeyFamily::Hmac => spec
                .mac_algorithm()
                .is_some_and(|a| (a.output_len()..=512).contains(&len)),
            _ => Some(len) == spec.secret_len(),
        };
        if !fits {
            return Err(HsmError::InvalidInput("key material has the wrong length"));
        }
        let id = attrs.token_resident.then(|| self.new_id()).transpose()?;
        let mut template = self.secret_template(spec, attrs, &id)?;
        template.retain(|a| !matches!(a, Attribute::ValueLen(_)));
        template.push(Attribute::Value(material.expose().to_vec()));
        let object = self.with_owner("import key", |s| s.create_object(&template));
        // The template's copy of the material is dropped here; cryptoki does not keep it.
        drop(template);
        Ok(self.wrap_handle(spec, object?, None, attrs, id))
    }

    fn import_public(&self, spec: KeySpec, spki_der: &[u8]) -> HsmResult<KeyHandle> {
        let soft = self.soft.import_public(spec, spki_der)?;
        Ok(KeyHandle::new(
            BACKEND,
            spec,
            true,
            true,
            P11Key::Public(soft),
        ))
    }

    fn export_plaintext(&self, key: &KeyHandle) -> HsmResult<SecretBytes> {
        if !key.is_extractable() || key.is_public_only() {
            return Err(HsmError::NotExtractable);
        }
        self.retrying(key, || {
            let object = self.object(key)?;
            let value = self.with_session("export key", |s| {
                s.get_attributes(object, &[AttributeType::Value])
            })?;
            value
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(SecretBytes::new(v)),
                    _ => None,
                })
                .ok_or(HsmError::NotExtractable)
        })
    }

    fn public_key_der(&self, key: &KeyHandle) -> HsmResult<Vec<u8>> {
        self.soft.public_key_der(self.soft_public(key)?)
    }

    fn wrap_for_storage(&self, kek: &KeyHandle, key: &KeyHandle, aad: &[u8]) -> HsmResult<Vec<u8>> {
        self.retrying(kek, || self.retrying(key, || self.wrap_once(kek, key, aad)))
    }

    fn unwrap_from_storage(
        &self,
        kek: &KeyHandle,
        spec: KeySpec,
        blob: &[u8],
        aad: &[u8],
        attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        self.retrying(kek, || self.unwrap_once(kek, spec, blob, aad, attrs))
    }

    fn export_wrapped(&self, _key: &KeyHandle, _wrapping_spki_der: &[u8]) -> HsmResult<Vec<u8>> {
        Err(HsmError::NotExtractable)
    }

    fn import_wrapped(
        &self,
        _unwrapping_key: &KeyHandle,
        spec: KeySpec,
        _wrapped: &[u8],
        _attrs: &KeyAttributes,
    ) -> HsmResult<KeyHandle> {
        Err(HsmError::UnsupportedSpec(spec))
    }

    fn encrypt_symmetric(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> HsmResult<()> {
        if key.spec().family() != KeyFamily::Symmetric {
            return Err(HsmError::IncorrectKeyUsage("not a symmetric key"));
        }
        self.retrying(key, || {
            let object = self.object(key)?;
            out.extend_from_slice(&self.gcm_seal(object, aad, plaintext)?);
            Ok(())
        })
    }

    fn decrypt_symmetric(
        &self,
        key: &KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> HsmResult<SecretBytes> {
        if key.spec().family() != KeyFamily::Symmetric {
            return Err(HsmError::IncorrectKeyUsage("not a symmetric key"));
        }
        self.retrying(key, || {
            let object = self.object(key)?;
            self.gcm_open(object, aad, sealed)
        })
    }

    fn encrypt_asymmetric(
        &self,
        key: &KeyHandle,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> HsmResult<Vec<u8>> {
        // The public half encrypts in software, but only the token can decrypt: what it cannot decrypt is
        // never produced, or the data would be lost.
        if key.spec().family() == KeyFamily::Rsa && !self.supports_encryption(key.spec(), alg) {
            return Err(UNDECRYPTABLE);
        }
        self.soft
            .encrypt_asymmetric(self.soft_public(key)?, alg, plaintext)
    }

    fn decrypt_asymmetric(
        &self,
        key: &KeyHandle,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> HsmResult<SecretBytes> {
        if key.spec().family() != KeyFamily::Rsa {
            return Err(HsmError::IncorrectKeyUsage("not an RSA key"));
        }
        if !self.supports_encryption(key.spec(), alg) {
            return Err(UNDECRYPTABLE);
        }
        let (hash, mgf) = match alg {
            EncryptionAlgorithm::RsaesOaepSha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            EncryptionAlgorithm::RsaesOaepSha256 => {
                (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256)
            }
            _ => return Err(HsmError::IncorrectKeyUsage("not an RSA algorithm")),
        };
        self.retrying(key, || {
            let object = self.object(key)?;
            let plain = self.with_session("decrypt", |s| {
                let params = PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty());
                s.decrypt(&Mechanism::RsaPkcsOaep(params), object, ciphertext)
            });
            match plain {
                Ok(p) => Ok(SecretBytes::new(p)),
                Err(HsmError::Backend(m)) if m.ends_with(STALE) => Err(HsmError::Backend(m)),
                // A token reports a bad ciphertext as a general failure; the mechanism was checked to exist.
                Err(_) => Err(HsmError::DecryptFailed),
            }
        })
    }

    fn sign(
        &self,
        key: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
    ) -> HsmResult<Vec<u8>> {
        if !key.spec().signing_algorithms().contains(&alg) {
            return Err(HsmError::IncorrectKeyUsage(
                "algorithm does not fit the key",
            ));
        }
        self.retrying(key, || {
            let object = self.object(key)?;
            let digest = digest(alg, input)?;
            use SigningAlgorithm::*;
            match alg {
                EcdsaSha256 | EcdsaSha384 | EcdsaSha512 => {
                    let raw =
                        self.with_session("sign", |s| s.sign(&Mechanism::Ecdsa, object, &digest))?;
                    der::ecdsa_der(&raw)
                }
                RsassaPkcs1V15Sha256 | RsassaPkcs1V15Sha384 | RsassaPkcs1V15Sha512 => {
                    let prefix = der::digest_info_prefix(digest.len()).ok_or(
                        HsmError::InvalidInput("digest length does not match the algorithm"),
                    )?;
                    let info = [prefix, digest.as_slice()].concat();
                    self.with_session("sign", |s| s.sign(&Mechanism::RsaPkcs, object, &info))
                }
                RsassaPssSha256 | RsassaPssSha384 | RsassaPssSha512 => {
                    let (hash_alg, mgf) = hash_mechanism(digest.len())?;
                    let params = PkcsPssParams {
                        hash_alg,
                        mgf,
                        s_len: (digest.len() as u64).into(),
                    };
                    self.with_session("sign", |s| {
                        s.sign(&Mechanism::RsaPkcsPss(params), object, &digest)
                    })
                }
                Ed25519 | Sm2Dsa | MlDsaShake256 => Err(HsmError::UnsupportedSpec(key.spec())),
            }
        })
    }

    fn verify(
        &self,
        key: &KeyHandle,
        alg: SigningAlgorithm,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> HsmResult<bool> {
        self.soft
            .verify(self.soft_public(key)?, alg, input, signature)
    }

    fn mac(&self, key: &KeyHandle, alg: MacAlgorithm, message: &[u8]) -> HsmResult<Vec<u8>> {
        if key.spec().mac_algorithm() != Some(alg) {
            return Err(HsmError::IncorrectKeyUsage(
                "MAC algorithm does not fit the key",
            ));
        }
        self.retrying(key, || {
            let object = self.object(key)?;
            self.with_session("mac", |s| s.sign(&mac_mechanism(alg), object, message))
        })
    }

    fn verify_mac(
        &self,
        key: &KeyHandle,
        alg: MacAlgorithm,
        message: &[u8],
        mac: &[u8],
    ) -> HsmResult<bool> {
        if key.spec().mac_algorithm() != Some(alg) {
            return Err(HsmError::IncorrectKeyUsage(
                "MAC algorithm does not fit the key",
            ));
        }
        if mac.len() != alg.output_len() {
            return Ok(false);
        }
        self.retrying(key, || {
            let object = self.object(key)?;
            // The token compares in its own code; a mismatch is an answer, not an error.
            let checked = self.with_session("verify mac", |s| {
                match s.verify(&mac_mechanism(alg), object, message, mac) {
                    Ok(()) => Ok(true),
                    Err(e) if rv(&e) == Some(RvError::SignatureInvalid) => Ok(false),
                    Err(e) if rv(&e) == Some(RvError::SignatureLenRange) => Ok(false),
                    Err(e) => Err(e),
                }
            })?;
            Ok(checked)
        })
    }

    fn derive_hkdf(
        &self,
        key: &KeyHandle,
        _salt: &[u8],
        _info: &[u8],
        _len: usize,
    ) -> HsmResult<SecretBytes> {
        Err(HsmError::UnsupportedSpec(key.spec()))
    }

    fn agree(&self, key: &KeyHandle, peer_spki_der: &[u8]) -> HsmResult<SecretBytes> {
        let spec = key.spec();
        let len = der::field_len(spec).ok_or(HsmError::IncorrectKeyUsage("not an EC key"))?;
        // The software HSM checks the peer key is a valid point of this curve before the token sees it.
        self.soft.import_public(spec, peer_spki_der)?;
        let point = der::spki_point(peer_spki_der)?;
        self.retrying(key, || {
            let object = self.object(key)?;
            let secret = self.with_owner("derive shared secret", |s| {
                let params = Ecdh1DeriveParams::new(EcKdf::null(), point);
                s.derive_key(
                    &Mechanism::Ecdh1Derive(params),
                    object,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                        Attribute::ValueLen((len as u64).into()),
                        Attribute::Token(false),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                    ],
                )
            })?;
            let value = self.with_session("read shared secret", |s| {
                s.get_attributes(secret, &[AttributeType::Value])
            });
            let _ = self.with_owner("destroy shared secret", |s| s.destroy_object(secret));
            value?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(SecretBytes::new(v)),
                    _ => None,
                })
                .ok_or_else(|| HsmError::Backend("the token hid the shared secret".into()))
        })
    }

    fn fill_random(&self, out: &mut [u8]) -> HsmResult<()> {
        self.with_session("random", |s| s.generate_random_slice(out))
    }

    fn destroy(&self, key: KeyHandle) -> HsmResult<()> {
        if let Ok(P11Key::Token {
            object, storage, ..
        }) = self.token_key(&key)
        {
            if let Some((wrap, seal)) = storage.lock().take() {
                let _ = self.with_owner("destroy", |s| s.destroy_object(wrap));
                let _ = self.with_owner("destroy", |s| s.destroy_object(seal));
            }
            self.retrying(&key, || {
                let object = *object.lock();
                self.with_owner("destroy", |s| s.destroy_object(object))
            })?;
        }
        Ok(())
    }
}

impl Drop for Pkcs11Hsm {
    fn drop(&mut self) {
        // Sessions close with their drop; the module stays initialised for other backends of the process.
        self.idle.lock().clear();
        self.owners.lock().clear();
    }
}

/// Shares one backend between the engine and tools that need the token directly (the root of trust).
pub type SharedPkcs11 = Arc<Pkcs11Hsm>;
