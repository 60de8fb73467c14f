//! Cryptographic operations. These run inline on the async workers: they take microseconds and touch no disk
//! (keys come from the engine's cache), except where noted.

use axum::extract::{Path, State};
use axum::response::Response;
use keyward_api::{
    AgreeRequest, AgreeResponse, BatchItem, BatchResponse, Context, DataKeyPairRequest,
    DataKeyPairResponse, DataKeyRequest, DataKeyResponse, DecapsulateRequest, DecapsulateResponse,
    DecryptBody, DecryptRequest, DecryptResponse, DeriveRequest, DeriveResponse, EncryptBody,
    EncryptRequest, EncryptResponse, MacRequest, MacResponse, RandomRequest, RandomResponse,
    ReencryptBody, ReencryptRequest, SecretB64, SignRequest, SignResponse, Validity,
    VerifyMacRequest, VerifyRequest, B64,
};
use keyward_core::{KeyUsage, Kms, SignInput};

use crate::app::{call, parse, AppState, Caller, Meta, Mode, RawBody, Reply};
use crate::authz::Action;
use crate::convert::{encryption_algorithm, mac_algorithm, signing_algorithm, spec};
use crate::error::ApiError;

/// Most items in one batch.
pub const MAX_BATCH: usize = 1000;

fn ctx(c: Option<Context>) -> Context {
    c.unwrap_or_default()
}

fn secret(s: keyward_core::SecretBytes) -> SecretB64 {
    SecretB64::new(s.expose().to_vec())
}

fn batch<T, R>(
    items: Vec<Result<T, ApiError>>,
    f: impl Fn(T) -> Result<R, ApiError>,
) -> Result<BatchResponse<R>, ApiError> {
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::validation(format!(
            "a batch has 1 to {MAX_BATCH} items"
        )));
    }
    Ok(BatchResponse {
        items: items
            .into_iter()
            .map(|i| {
                i.and_then(&f)
                    .map(BatchItem::Ok)
                    .unwrap_or_else(|e| BatchItem::Err(e.body()))
            })
            .collect(),
    })
}

/// Parses a single-or-batch body strictly, or, when only some items are at fault, as a batch whose bad
/// items fail on their own ([`crate::app::batch_items`]).
fn parse_body<B: serde::de::DeserializeOwned, T: serde::de::DeserializeOwned>(
    body: &RawBody,
) -> Result<Result<B, Vec<Result<T, ApiError>>>, ApiError> {
    match parse::<B>(body) {
        Ok(b) => Ok(Ok(b)),
        Err(e) => crate::app::batch_items::<T>(body).map(Err).ok_or(e),
    }
}

fn all_ok<T>(items: Vec<T>) -> Vec<Result<T, ApiError>> {
    items.into_iter().map(Ok).collect()
}

/// The key a batch names in its path, checked once for all items: a reference that does not parse, an
/// unknown key, a key that is not Enabled or not for encryption fails the whole request with its own status
/// (as a single request does). Items still fail one by one for what is their own (data, context,
/// algorithm, the ciphertext's key).
fn batch_key(kms: &Kms, key: &str) -> Result<(), ApiError> {
    Ok(kms.check_usable(key, KeyUsage::EncryptDecrypt)?)
}

/// One encryption, with the policies' conditions on its context checked: every front end encrypts
/// through here.
pub fn encrypt_one(
    caller: &Caller,
    kms: &Kms,
    key: &str,
    r: EncryptRequest,
) -> Result<EncryptResponse, ApiError> {
    let context = ctx(r.context);
    caller.check_context(&context)?;
    let alg = encryption_algorithm(r.algorithm.as_deref())?;
    let e = kms.encrypt(key, r.plaintext.expose(), &context, alg)?;
    Ok(EncryptResponse {
        ciphertext: B64(e.ciphertext),
        key_id: e.key_id.to_string(),
        version: e.version,
    })
}

/// `POST /v1/keys/{key}/encrypt` (single or batch).
pub async fn encrypt(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Encrypt,
        Some(key.clone()),
        Mode::Inline,
        move |caller| {
            let b: EncryptBody = match parse_body(&body)? {
                Ok(b) => b,
                Err(items) => {
                    batch_key(&a.kms, &key)?;
                    return Reply::ok(&batch(items, |i| encrypt_one(&caller, &a.kms, &key, i))?);
                }
            };
            match (b.items, b.plaintext) {
                (Some(items), None) if b.context.is_none() && b.algorithm.is_none() => {
                    batch_key(&a.kms, &key)?;
                    Reply::ok(&batch(all_ok(items), |i| {
                        encrypt_one(&caller, &a.kms, &key, i)
                    })?)
                }
                (None, Some(plaintext)) => {
                    let r = encrypt_one(
                        &caller,
                        &a.kms,
                        &key,
                        EncryptRequest {
                            plaintext,
                            context: b.context,
                            algorithm: b.algorithm,
                        },
                    )?;
                    let (id, v) = (r.key_id.clone(), r.version);
                    Reply::ok(&r).map(|x| x.key(id, Some(v)))
                }
                _ => Err(ApiError::validation("give either plaintext or items")),
            }
        },
    )
    .await
}

/// One decryption. Where the request names no key, the key its ciphertext names is authorized here, with the
/// context: every front end decrypts through here.
pub fn decrypt_one(
    caller: &Caller,
    kms: &Kms,
    key: Option<&str>,
    r: DecryptRequest,
) -> Result<DecryptResponse, ApiError> {
    let context = ctx(r.context);
    match key {
        Some(_) => caller.check_context(&context)?,
        None => {
            // The key is named by the ciphertext; a ciphertext that does not parse is refused by the engine.
            if let Ok((h, _)) = keyward_core::ciphertext::Header::parse(&r.ciphertext.0) {
                let id = uuid::Uuid::from_bytes(h.key_id).to_string();
                caller.note_source_key(&id);
                caller.check_key(kms, &id, &context)?;
            } else {
                caller.check_context(&context)?;
            }
        }
    }
    let alg = encryption_algorithm(r.algorithm.as_deref())?;
    let d = kms.decrypt(key, &r.ciphertext.0, &context, alg)?;
    Ok(DecryptResponse {
        plaintext: secret(d.plaintext),
        key_id: d.key_id.to_string(),
        version: d.version,
    })
}

async fn decrypt_with(app: AppState, meta: Meta, key: Option<String>, body: RawBody) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Decrypt,
        key.clone(),
        Mode::Inline,
        move |caller| {
            let (b, lenient): (DecryptBody, _) = match parse_body(&body)? {
                Ok(b) => (b, None),
                Err(items) => (DecryptBody::default(), Some(items)),
            };
            let items = lenient.or_else(|| b.items.map(all_ok));
            match (items, b.ciphertext) {
                (Some(items), None) if b.context.is_none() && b.algorithm.is_none() => {
                    if let Some(key) = &key {
                        batch_key(&a.kms, key)?;
                    }
                    Reply::ok(&batch(items, |i| {
                        decrypt_one(&caller, &a.kms, key.as_deref(), i)
                    })?)
                }
                (None, Some(ciphertext)) => {
                    let req = DecryptRequest {
                        ciphertext,
                        context: b.context,
                        algorithm: b.algorithm,
                    };
                    let r = decrypt_one(&caller, &a.kms, key.as_deref(), req)?;
                    let (id, v) = (r.key_id.clone(), r.version);
                    Reply::ok(&r).map(|x| x.key(id, Some(v)))
                }
                _ => Err(ApiError::validation("give either ciphertext or items")),
            }
        },
    )
    .await
}

/// `POST /v1/decrypt`: the key is read from the ciphertext.
pub async fn decrypt_any(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    decrypt_with(app, meta, None, body).await
}

/// `POST /v1/keys/{key}/decrypt`.
pub async fn decrypt(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    decrypt_with(app, meta, Some(key), body).await
}

/// One re-encryption: the caller must be allowed to decrypt with the key the ciphertext names, and both
/// contexts must satisfy its policies. Every front end re-encrypts through here.
pub fn reencrypt_one(
    caller: &Caller,
    kms: &Kms,
    key: &str,
    r: ReencryptRequest,
) -> Result<EncryptResponse, ApiError> {
    let source = ctx(r.context.clone());
    // The source key is named by the ciphertext; one that does not parse is refused by the engine.
    if let Ok((h, _)) = keyward_core::ciphertext::Header::parse(&r.ciphertext.0) {
        let source_id = uuid::Uuid::from_bytes(h.key_id).to_string();
        caller.note_source_key(&source_id);
        caller.check_key(kms, &source_id, &source)?;
    }
    caller.check_context(&source)?;
    if let Some(n) = &r.new_context {
        caller.check_context(n)?;
    }
    let e = kms.reencrypt(
        key,
        &r.ciphertext.0,
        &ctx(r.context),
        r.new_context.as_ref(),
    )?;
    Ok(EncryptResponse {
        ciphertext: B64(e.ciphertext),
        key_id: e.key_id.to_string(),
        version: e.version,
    })
}

/// `POST /v1/keys/{key}/reencrypt` (single or batch).
pub async fn reencrypt(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::ReEncrypt,
        Some(key.clone()),
        Mode::Inline,
        move |caller| {
            let b: ReencryptBody = match parse_body(&body)? {
                Ok(b) => b,
                Err(items) => {
                    batch_key(&a.kms, &key)?;
                    return Reply::ok(&batch(items, |i| reencrypt_one(&caller, &a.kms, &key, i))?);
                }
            };
            match (b.items, b.ciphertext) {
                (Some(items), None) if b.context.is_none() && b.new_context.is_none() => {
                    batch_key(&a.kms, &key)?;
                    Reply::ok(&batch(all_ok(items), |i| {
                        reencrypt_one(&caller, &a.kms, &key, i)
                    })?)
                }
                (None, Some(ciphertext)) => {
                    let req = ReencryptRequest {
                        ciphertext,
                        context: b.context,
                        new_context: b.new_context,
                    };
                    let r = reencrypt_one(&caller, &a.kms, &key, req)?;
                    let (id, v) = (r.key_id.clone(), r.version);
                    Reply::ok(&r).map(|x| x.key(id, Some(v)))
                }
                _ => Err(ApiError::validation("give either ciphertext or items")),
            }
        },
    )
    .await
}

/// `POST /v1/keys/{key}/data-key`.
pub async fn data_key(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GenerateDataKey,
        Some(key.clone()),
        Mode::Inline,
        move |caller| {
            let r: DataKeyRequest = parse(&body)?;
            let s = spec(&r.spec)?;
            let context = ctx(r.context.clone());
            caller.check_context(&context)?;
            let d =
                a.kms
                    .generate_data_key(&key, s, &context, r.include_plaintext.unwrap_or(true))?;
            let (id, v) = (d.key_id.to_string(), d.version);
            Reply::ok(&DataKeyResponse {
                plaintext: d.plaintext.map(secret),
                ciphertext: B64(d.ciphertext),
                key_id: id.clone(),
                version: v,
            })
            .map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

/// `POST /v1/keys/{key}/data-key-pair` (blocking: RSA key generation takes milliseconds to seconds).
pub async fn data_key_pair(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GenerateDataKeyPair,
        Some(key.clone()),
        Mode::Blocking,
        move |caller| {
            let r: DataKeyPairRequest = parse(&body)?;
            let s = spec(&r.spec)?;
            let context = ctx(r.context.clone());
            caller.check_context(&context)?;
            let d = a.kms.generate_data_key_pair(
                &key,
                s,
                &context,
                r.include_plaintext.unwrap_or(true),
            )?;
            let (id, v) = (d.key_id.to_string(), d.version);
            Reply::ok(&DataKeyPairResponse {
                public_key_der: B64(d.public_key_der),
                private_key_ciphertext: B64(d.private_key_ciphertext),
                private_key_der: d.private_key_der.map(secret),
                key_id: id.clone(),
                version: v,
            })
            .map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

/// What is signed: the message, its digest, or for ML-DSA its external μ (which the engine takes as the
/// algorithm's "digest", as AWS's EXTERNAL_MU and DIGEST are one input to it).
fn sign_input<'a>(
    message: &'a Option<B64>,
    digest: &'a Option<B64>,
    external_mu: &'a Option<B64>,
    alg: keyward_core::SigningAlgorithm,
) -> Result<SignInput<'a>, ApiError> {
    let ml_dsa = alg == keyward_core::SigningAlgorithm::MlDsaShake256;
    match (message, digest, external_mu) {
        (Some(m), None, None) => Ok(SignInput::Message(&m.0)),
        (None, Some(d), None) if !ml_dsa => Ok(SignInput::Digest(&d.0)),
        (None, None, Some(mu)) if ml_dsa => Ok(SignInput::Digest(&mu.0)),
        (None, Some(_), None) => Err(ApiError(keyward_core::KmsError::new(
            keyward_core::ErrorCode::IncorrectKeyUsage,
            "ML_DSA_SHAKE_256 signs a message or its external_mu, not a digest",
        ))),
        (None, None, Some(_)) => Err(ApiError(keyward_core::KmsError::new(
            keyward_core::ErrorCode::IncorrectKeyUsage,
            "external_mu is for ML_DSA_SHAKE_256 only",
        ))),
        _ => Err(ApiError::validation(
            "give exactly one of message, digest or external_mu",
        )),
    }
}

/// `POST /v1/keys/{key}/sign`.
pub async fn sign(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Sign,
        Some(key.clone()),
        Mode::Inline,
        move |_| {
            let r: SignRequest = parse(&body)?;
            let alg = signing_algorithm(&r.algorithm)?;
            let input = sign_input(&r.message, &r.digest, &r.external_mu, alg)?;
            let s = a.kms.sign(&key, input, alg)?;
            let (id, v) = (s.key_id.to_string(), s.version);
            Reply::ok(&SignResponse {
                signature: B64(s.signature),
                key_id: id.clone(),
                version: v,
                algorithm: alg.as_str().into(),
            })
            .map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

/// `POST /v1/keys/{key}/verify`.
pub async fn verify(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Verify,
        Some(key.clone()),
        Mode::Inline,
        move |_| {
            let r: VerifyRequest = parse(&body)?;
            let alg = signing_algorithm(&r.algorithm)?;
            let valid = a.kms.verify(
                &key,
                sign_input(&r.message, &r.digest, &r.external_mu, alg)?,
                &r.signature.0,
                alg,
                r.version,
            )?;
            Reply::ok(&Validity { valid })
        },
    )
    .await
}

/// `POST /v1/keys/{key}/mac`.
pub async fn mac(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GenerateMac,
        Some(key.clone()),
        Mode::Inline,
        move |_| {
            let r: MacRequest = parse(&body)?;
            let m = a
                .kms
                .mac(&key, &r.message.0, mac_algorithm(&r.algorithm)?)?;
            let (id, v) = (m.key_id.to_string(), m.version);
            Reply::ok(&MacResponse {
                mac: B64(m.mac),
                key_id: id.clone(),
                version: v,
            })
            .map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

/// `POST /v1/keys/{key}/verify-mac`.
pub async fn verify_mac(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::VerifyMac,
        Some(key.clone()),
        Mode::Inline,
        move |_| {
            let r: VerifyMacRequest = parse(&body)?;
            let valid =
                a.kms
                    .verify_mac(&key, &r.message.0, &r.mac.0, mac_algorithm(&r.algorithm)?)?;
            Reply::ok(&Validity { valid })
        },
    )
    .await
}

/// `POST /v1/keys/{key}/derive`.
pub async fn derive(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::DeriveKey,
        Some(key.clone()),
        Mode::Inline,
        move |_| {
            let r: DeriveRequest = parse(&body)?;
            let d = a.kms.derive(
                &key,
                &r.context.0,
                r.length,
                r.include_plaintext.unwrap_or(false),
            )?;
            let (id, v) = (d.key_id.to_string(), d.version);
            Reply::ok(&DeriveResponse {
                ciphertext: B64(d.ciphertext),
                plaintext: d.plaintext.map(secret),
            })
            .map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

/// `POST /v1/keys/{key}/agree`.
pub async fn agree(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::DeriveSharedSecret,
        Some(key.clone()),
        Mode::Inline,
        move |_| {
            let r: AgreeRequest = parse(&body)?;
            let s = a.kms.agree(&key, &r.peer_public_key_der.0)?;
            Reply::ok(&AgreeResponse {
                shared_secret: secret(s),
            })
        },
    )
    .await
}

/// `POST /v1/keys/{key}/decapsulate`.
pub async fn decapsulate(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::Decapsulate,
        Some(key.clone()),
        Mode::Inline,
        move |caller| {
            let r: DecapsulateRequest = parse(&body)?;
            if r.as_data_key == Some(true) {
                return decapsulate_data_key(&a, &caller, &key, r);
            }
            if r.wrapping_key.is_some() || r.context.is_some() || r.include_plaintext.is_some() {
                return Err(ApiError::validation(
                    "wrapping_key, context and include_plaintext go with \"as_data_key\": true",
                ));
            }
            let d = a.kms.decapsulate(&key, &r.ciphertext.0, r.version)?;
            let (id, v) = (d.key_id.to_string(), d.version);
            Reply::ok(&DecapsulateResponse {
                shared_secret: secret(d.shared_secret),
                key_id: id.clone(),
                version: v,
            })
            .map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

/// Decapsulation answered as a data key encrypted under `wrapping_key`: the caller must also be allowed to
/// make data keys under that key, and the key is named in the audit record beside the ML-KEM key.
fn decapsulate_data_key(
    a: &AppState,
    caller: &Caller,
    key: &str,
    r: DecapsulateRequest,
) -> Result<Reply, ApiError> {
    let wrapping = r
        .wrapping_key
        .ok_or_else(|| ApiError::validation("\"as_data_key\": true needs wrapping_key"))?;
    let wrapping_id = a.kms.key_id_of(&wrapping)?;
    caller.note_source_key(&wrapping_id);
    if !caller.may(&a.iam, &a.kms, Action::GenerateDataKey, Some(&wrapping_id)) {
        return Err(ApiError::new(
            keyward_core::ErrorCode::AccessDenied,
            format!(
                "{} may not perform kms:GenerateDataKey with key {wrapping_id}",
                caller.principal.name
            ),
        ));
    }
    let context = ctx(r.context);
    let d = a.kms.decapsulate_data_key(
        key,
        &r.ciphertext.0,
        r.version,
        &wrapping_id,
        &context,
        r.include_plaintext.unwrap_or(false),
    )?;
    let (id, v) = (d.key_id.to_string(), d.version);
    Reply::ok(&DataKeyResponse {
        plaintext: d.plaintext.map(secret),
        ciphertext: B64(d.ciphertext),
        key_id: id,
        version: v,
    })
}

/// `POST /v1/random`.
pub async fn random(State(app): State<AppState>, meta: Meta, body: RawBody) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::GenerateRandom,
        None,
        Mode::Inline,
        move |_| {
            let r: RandomRequest = parse(&body)?;
            Reply::ok(&RandomResponse {
                random: B64(a.kms.random(r.length)?),
            })
        },
    )
    .await
}
