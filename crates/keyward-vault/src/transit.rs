//! Vault's transit engine under `transit_mount`: named keys that encrypt, sign and MAC without their material
//! ever leaving. A transit key is an ordinary Keyward key with the alias `<mount>/<name>` (so it shows in the
//! REST API, rotates, is audited and destroyed like any other); each operation is the REST API's action on that
//! key (`kms:Encrypt`, `kms:Sign`, ...) run through the same pipeline and the same engine calls. Ciphertexts,
//! signatures and MACs carry Vault's `vault:v<N>:` prefix in front of base64; a ciphertext's base64 is the
//! self-describing Keyward ciphertext, so the REST API decrypts it too.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use keyward_core::{
    CreateKey, ErrorCode, KeySpec, KeyUsage, Kms, KmsError, MacAlgorithm, SignInput,
    SigningAlgorithm,
};
use keyward_rest::app::{parse, run_noting, Caller, Mode, RawBody, Reply};
use keyward_rest::authz::Action;
use keyward_rest::error::ApiError;
use keyward_rest::AppState;
use serde::Deserialize;

use crate::{envelope, error, render, Call};

type NoNote = fn() -> Option<String>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The alias of a transit key.
fn alias(mount: &str, name: &str) -> String {
    format!("alias/{mount}/{name}")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::validation(message)
}

fn usage(message: impl Into<String>) -> ApiError {
    ApiError(KmsError::new(ErrorCode::IncorrectKeyUsage, message.into()))
}

pub(crate) async fn route(call: Call, mount: String, rest: &str) -> Response {
    let parts: Vec<&str> = rest.split('/').collect();
    let m = call.method.clone();
    let post = m == Method::POST || m == Method::PUT;
    match parts.as_slice() {
        ["keys"] | ["keys", ""] if call.is_list() => list(call, mount).await,
        ["keys", name] if valid_name(name) => match m {
            _ if post => create(call, mount, name.to_string()).await,
            Method::GET => read_key(call, mount, name.to_string()).await,
            Method::DELETE => delete(call, mount, name.to_string()).await,
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation"),
        },
        ["keys", name, "config"] if post && valid_name(name) => {
            config(call, mount, name.to_string()).await
        }
        ["keys", name, "rotate"] if post && valid_name(name) => {
            rotate(call, mount, name.to_string()).await
        }
        ["keys", name, "trim"] if post && valid_name(name) => {
            trim(call, mount, name.to_string()).await
        }
        ["encrypt", name] if post && valid_name(name) => {
            crypt(call, mount, name.to_string(), Crypt::Encrypt).await
        }
        ["decrypt", name] if post && valid_name(name) => {
            crypt(call, mount, name.to_string(), Crypt::Decrypt).await
        }
        ["rewrap", name] if post && valid_name(name) => {
            crypt(call, mount, name.to_string(), Crypt::Rewrap).await
        }
        ["datakey", kind, name] if post && valid_name(name) => {
            let plaintext = match *kind {
                "plaintext" => true,
                "wrapped" => false,
                _ => return error(StatusCode::BAD_REQUEST, "data key type is plaintext or wrapped"),
            };
            datakey(call, mount, name.to_string(), plaintext).await
        }
        ["sign", name] if post && valid_name(name) => sign(call, mount, name.to_string(), None).await,
        ["sign", name, hash] if post && valid_name(name) => {
            let hash = Some(hash.to_string());
            sign(call, mount, name.to_string(), hash).await
        }
        ["verify", name] if post && valid_name(name) => {
            verify(call, mount, name.to_string(), None).await
        }
        ["verify", name, hash] if post && valid_name(name) => {
            let hash = Some(hash.to_string());
            verify(call, mount, name.to_string(), hash).await
        }
        ["hmac", name] if post && valid_name(name) => hmac(call, mount, name.to_string(), None).await,
        ["hmac", name, alg] if post && valid_name(name) => {
            let alg = Some(alg.to_string());
            hmac(call, mount, name.to_string(), alg).await
        }
        ["random"] if post => random(call, None, None).await,
        ["random", a] if post => random(call, Some(a.to_string()), None).await,
        ["random", a, b] if post => random(call, Some(a.to_string()), Some(b.to_string())).await,
        ["hash"] if post => hash(call, None).await,
        ["hash", alg] if post => hash(call, Some(alg.to_string())).await,
        [first, ..]
            if matches!(
                *first,
                "keys" | "encrypt" | "decrypt" | "rewrap" | "datakey" | "sign" | "verify" | "hmac"
            ) =>
        {
            error(
                StatusCode::BAD_REQUEST,
                "a transit key name is 1 to 128 letters, digits, - _ and .; or the method does not fit the path",
            )
        }
        _ => error(StatusCode::NOT_FOUND, "no handler for route"),
    }
}

/// Runs one transit operation through the pipeline as `action`, on the key `key_ref` when it names one.
async fn run(
    call: Call,
    action: Action,
    key_ref: Option<String>,
    mode: Mode,
    f: impl FnOnce(&AppState, &Caller, &RawBody, &str) -> Result<Reply, ApiError> + Send + 'static,
) -> Response {
    let app = call.app.clone();
    let body = call.body;
    let request_id = call.meta.request_id.clone();
    render(
        run_noting(
            &call.app,
            &call.meta,
            action,
            key_ref,
            None::<NoNote>,
            mode,
            move |caller| f(&app, &caller, &body, &request_id),
        )
        .await,
    )
}

fn ok(rid: &str, data: serde_json::Value) -> Result<Reply, ApiError> {
    Reply::ok(&envelope(rid, data))
}

/// The version an answer reports (`key_version`).
fn version_of(data: &serde_json::Value) -> Option<u32> {
    data.get("key_version")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

/// Names the version in the audit record.
fn versioned(reply: Reply, version: Option<u32>) -> Result<Reply, ApiError> {
    Ok(match version {
        Some(v) => reply.version(v),
        None => reply,
    })
}

/// `vault:v<N>:<base64>`, Vault's prefix on what a key version made.
fn prefixed(version: u32, bytes: &[u8]) -> String {
    format!("vault:v{version}:{}", B64.encode(bytes))
}

/// The version and bytes of a `vault:v<N>:<base64>` value.
fn unprefix(s: &str) -> Result<(u32, Vec<u8>), ApiError> {
    let rest = s
        .strip_prefix("vault:v")
        .ok_or_else(|| bad("invalid ciphertext: no prefix"))?;
    let (v, b) = rest
        .split_once(':')
        .ok_or_else(|| bad("invalid ciphertext: no version"))?;
    let version = v
        .parse::<u32>()
        .map_err(|_| bad("invalid ciphertext: the version is not a number"))?;
    let bytes = B64
        .decode(b)
        .map_err(|_| bad("invalid ciphertext: not base64"))?;
    Ok((version, bytes))
}

fn b64_field(v: &Option<String>, name: &str) -> Result<Option<Vec<u8>>, ApiError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            B64.decode(s)
                .map_err(|_| bad(format!("{name} is not base64")))
        })
        .transpose()
}

// ---- keys ------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct CreateRequest {
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    exportable: Option<bool>,
    #[serde(default)]
    derived: Option<bool>,
    #[serde(default)]
    convergent_encryption: Option<bool>,
    #[serde(default)]
    allow_plaintext_backup: Option<bool>,
    #[serde(default)]
    auto_rotate_period: Option<serde_json::Value>,
}

/// Transit key types and the Keyward spec and usage each becomes.
fn spec_of(t: &str) -> Result<(KeySpec, KeyUsage), ApiError> {
    Ok(match t {
        "aes256-gcm96" => (KeySpec::Aes256, KeyUsage::EncryptDecrypt),
        "aes128-gcm96" => (KeySpec::Aes128, KeyUsage::EncryptDecrypt),
        "rsa-2048" => (KeySpec::Rsa2048, KeyUsage::SignVerify),
        "rsa-3072" => (KeySpec::Rsa3072, KeyUsage::SignVerify),
        "rsa-4096" => (KeySpec::Rsa4096, KeyUsage::SignVerify),
        "ecdsa-p256" => (KeySpec::EccNistP256, KeyUsage::SignVerify),
        "ecdsa-p384" => (KeySpec::EccNistP384, KeyUsage::SignVerify),
        "ecdsa-p521" => (KeySpec::EccNistP521, KeyUsage::SignVerify),
        "ed25519" => (KeySpec::Ed25519, KeyUsage::SignVerify),
        "hmac" => (KeySpec::Hmac256, KeyUsage::GenerateVerifyMac),
        other => {
            return Err(bad(format!(
                "key type {} is not offered: aes256-gcm96, aes128-gcm96, rsa-2048, rsa-3072, rsa-4096, ecdsa-p256, ecdsa-p384, ecdsa-p521, ed25519 or hmac",
                keyward_core::quoted(other)
            )))
        }
    })
}

fn type_of(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Aes128 => "aes128-gcm96",
        KeySpec::Rsa2048 => "rsa-2048",
        KeySpec::Rsa3072 => "rsa-3072",
        KeySpec::Rsa4096 => "rsa-4096",
        KeySpec::EccNistP256 => "ecdsa-p256",
        KeySpec::EccNistP384 => "ecdsa-p384",
        KeySpec::EccNistP521 => "ecdsa-p521",
        KeySpec::Ed25519 => "ed25519",
        KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => "hmac",
        _ => "aes256-gcm96",
    }
}

/// Vault's durations: seconds as a number, or `"30d"`, `"24h"`, `"90m"`, `"3600s"`; to whole days for the
/// key's rotation period (0 turns it off).
fn rotation_days(v: &serde_json::Value) -> Result<Option<u32>, ApiError> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => {
            let (num, unit) =
                s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
            let n: Option<u64> = num.parse().ok();
            match unit {
                "" | "s" => n,
                "m" => n.map(|n| n * 60),
                "h" => n.map(|n| n * 3600),
                "d" => n.map(|n| n * 86_400),
                _ => None,
            }
        }
        _ => None,
    }
    .ok_or_else(|| bad("auto_rotate_period is a duration such as 720h or 30d"))?;
    if secs == 0 {
        return Ok(None);
    }
    if secs % 86_400 != 0 {
        return Err(bad(
            "auto_rotate_period is kept in whole days here (Keyward rotates keys on a period of days)",
        ));
    }
    u32::try_from(secs / 86_400)
        .map(Some)
        .map_err(|_| bad("auto_rotate_period is too long"))
}

/// `POST <mount>/keys/<name>`: a new Keyward key with the alias `<mount>/<name>`.
async fn create(call: Call, mount: String, name: String) -> Response {
    run(call, Action::CreateKey, None, Mode::Blocking, move |app, _, body, rid| {
        let r: CreateRequest = if body.0.as_ref().is_ok_and(|b| b.is_empty()) {
            CreateRequest {
                key_type: None,
                exportable: None,
                derived: None,
                convergent_encryption: None,
                allow_plaintext_backup: None,
                auto_rotate_period: None,
            }
        } else {
            parse(body)?
        };
        if r.derived == Some(true) || r.convergent_encryption == Some(true) {
            return Err(bad(
                "derived and convergent keys are not offered: bind data with context, which Keyward keeps in each ciphertext",
            ));
        }
        if r.allow_plaintext_backup == Some(true) {
            return Err(bad("plaintext backups are not offered: back up with keyward's encrypted backups"));
        }
        let (spec, use_) = spec_of(r.key_type.as_deref().unwrap_or("aes256-gcm96"))?;
        let mut req = CreateKey::new(spec);
        req.usage = Some(use_);
        req.alias = Some(alias(&mount, &name));
        req.exportable = r.exportable.unwrap_or(false);
        req.description = format!("transit key {name} of mount {mount}");
        if let Some(p) = &r.auto_rotate_period {
            req.rotation_period_days = rotation_days(p)?;
        }
        let key = app.kms.create_key(req)?;
        let id = key.key_id.clone();
        ok(rid, key_json(&app.kms, &key, &name)?).map(|x| x.key(id, Some(1)))
    })
    .await
}

fn key_json(
    kms: &Kms,
    k: &keyward_core::KeyInfo,
    name: &str,
) -> Result<serde_json::Value, ApiError> {
    let versions = kms.list_versions(&k.key_id)?;
    let public = if k.spec.is_asymmetric() {
        kms.public_key(&k.key_id)
            .ok()
            .map(|p| keyward_rest::convert::pem("PUBLIC KEY", &p.der))
    } else {
        None
    };
    let mut keys = serde_json::Map::new();
    for v in &versions {
        if v.state == keyward_core::VersionState::Destroyed {
            continue;
        }
        let entry = if k.spec.is_asymmetric() {
            serde_json::json!({
                "creation_time": keyward_core::audit::rfc3339(v.created_at),
                "name": type_of(k.spec),
                "public_key": if v.version == k.primary_version { public.clone() } else { None },
            })
        } else {
            serde_json::json!(v.created_at)
        };
        keys.insert(v.version.to_string(), entry);
    }
    let min_available = versions
        .iter()
        .filter(|v| v.state != keyward_core::VersionState::Destroyed)
        .map(|v| v.version)
        .min()
        .unwrap_or(0);
    let encrypts = k.usage == KeyUsage::EncryptDecrypt;
    Ok(serde_json::json!({
        "name": name,
        "type": type_of(k.spec),
        "keyward_key_id": k.key_id,
        "keyward_state": k.state.as_str(),
        "deletion_allowed": k.tags.get(DELETION_ALLOWED).is_some_and(|v| v == "true"),
        "derived": false,
        "exportable": k.exportable,
        "allow_plaintext_backup": false,
        "keys": keys,
        "latest_version": k.primary_version,
        "min_available_version": min_available,
        "min_decryption_version": k.min_decryption_version.max(1),
        "min_encryption_version": 0,
        "supports_encryption": encrypts,
        "supports_decryption": encrypts,
        "supports_derivation": false,
        "supports_signing": k.usage == KeyUsage::SignVerify,
        "auto_rotate_period": k.rotation_period_days.map_or(0, |d| u64::from(d) * 86_400),
    }))
}

/// The tag that records Vault's `deletion_allowed`: a transit key is deleted only once it says so.
const DELETION_ALLOWED: &str = "vault:deletion_allowed";

/// `GET <mount>/keys/<name>`.
async fn read_key(call: Call, mount: String, name: String) -> Response {
    let key = alias(&mount, &name);
    run(
        call,
        Action::DescribeKey,
        Some(key.clone()),
        Mode::Blocking,
        move |app, _, _, rid| {
            let k = app.kms.describe_key(&key)?;
            ok(rid, key_json(&app.kms, &k, &name)?)
        },
    )
    .await
}

/// `LIST <mount>/keys`: the names of the mount's keys.
async fn list(call: Call, mount: String) -> Response {
    run(
        call,
        Action::ListAliases,
        None,
        Mode::Blocking,
        move |app, _, _, rid| {
            let prefix = format!("alias/{mount}/");
            let mut names = Vec::new();
            let mut after = Some(prefix.clone());
            while let Some(a) = after.take() {
                let (page, next) = app.kms.list_aliases(Some(&a), 1000)?;
                let mut beyond = false;
                for (alias, _) in page {
                    match alias.strip_prefix(&prefix) {
                        Some(n) if !n.contains('/') => names.push(n.to_string()),
                        Some(_) => {}
                        None => beyond = true,
                    }
                }
                if !beyond {
                    after = next;
                }
            }
            if names.is_empty() {
                return Err(ApiError::new(ErrorCode::NotFound, "no transit keys"));
            }
            ok(rid, serde_json::json!({ "keys": names }))
        },
    )
    .await
}

#[derive(Deserialize)]
struct ConfigRequest {
    #[serde(default)]
    min_decryption_version: Option<u32>,
    #[serde(default)]
    min_encryption_version: Option<u32>,
    #[serde(default)]
    deletion_allowed: Option<bool>,
    #[serde(default)]
    exportable: Option<bool>,
    #[serde(default)]
    allow_plaintext_backup: Option<bool>,
    #[serde(default)]
    auto_rotate_period: Option<serde_json::Value>,
}

/// `POST <mount>/keys/<name>/config`.
async fn config(call: Call, mount: String, name: String) -> Response {
    let key = alias(&mount, &name);
    run(call, Action::UpdateKey, Some(key.clone()), Mode::Blocking, move |app, _, body, rid| {
        let r: ConfigRequest = parse(body)?;
        if r.min_encryption_version.is_some_and(|v| v != 0) {
            return Err(bad(
                "min_encryption_version is not offered: a key encrypts with its primary version (set it with the REST API's primary version)",
            ));
        }
        if r.exportable == Some(true) || r.allow_plaintext_backup == Some(true) {
            return Err(bad(
                "exportability is decided when a key is created (and an exported key stays exported)",
            ));
        }
        let mut patch = keyward_core::UpdateKey {
            min_decryption_version: r.min_decryption_version,
            ..keyward_core::UpdateKey::default()
        };
        if let Some(p) = &r.auto_rotate_period {
            patch.rotation_period_days = Some(rotation_days(p)?);
        }
        match r.deletion_allowed {
            Some(true) => {
                patch
                    .set_tags
                    .insert(DELETION_ALLOWED.to_string(), "true".to_string());
            }
            Some(false) => patch.remove_tags.push(DELETION_ALLOWED.to_string()),
            None => {}
        }
        let k = app.kms.update_key(&key, patch)?;
        let id = k.key_id.clone();
        ok(rid, key_json(&app.kms, &k, &name)?).map(|x| x.key(id, None))
    })
    .await
}

/// `POST <mount>/keys/<name>/rotate`.
async fn rotate(call: Call, mount: String, name: String) -> Response {
    let key = alias(&mount, &name);
    run(
        call,
        Action::RotateKey,
        Some(key.clone()),
        Mode::Blocking,
        move |app, _, _, rid| {
            let k = app.kms.rotate_key(&key)?;
            let (id, v) = (k.key_id.clone(), k.primary_version);
            ok(rid, key_json(&app.kms, &k, &name)?).map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

#[derive(Deserialize)]
struct TrimRequest {
    min_available_version: u32,
}

/// `POST <mount>/keys/<name>/trim`: destroys the versions below `min_available_version`, which may not be
/// above `min_decryption_version`. A key whose destruction needs quorum approval is trimmed through the REST
/// API, where each destruction waits for its approvals.
async fn trim(call: Call, mount: String, name: String) -> Response {
    let key = alias(&mount, &name);
    run(call, Action::DestroyKeyVersion, Some(key.clone()), Mode::Blocking, move |app, _, body, rid| {
        let r: TrimRequest = parse(body)?;
        let k = app.kms.describe_key(&key)?;
        if r.min_available_version == 0 || r.min_available_version > k.min_decryption_version.max(1) {
            return Err(bad(
                "min_available_version must be 1 to min_decryption_version (raise that first with keys/<name>/config)",
            ));
        }
        if keyward_rest::handlers::approvals::required_for_key(app, &key)? > 0 {
            return Err(ApiError(KmsError::new(
                ErrorCode::InvalidState,
                "this key's version destruction needs quorum approval: destroy the versions through the REST API (POST /v1/keys/{key}/versions/{n}/destroy)",
            )));
        }
        for v in app.kms.list_versions(&key)? {
            if v.version < r.min_available_version && v.state != keyward_core::VersionState::Destroyed {
                app.kms
                    .version_action(&key, v.version, keyward_core::VersionAction::Destroy)?;
            }
        }
        let k = app.kms.describe_key(&key)?;
        let id = k.key_id.clone();
        ok(rid, key_json(&app.kms, &k, &name)?).map(|x| x.key(id, None))
    })
    .await
}

/// `DELETE <mount>/keys/<name>`: once `deletion_allowed` is set, the key's deletion is scheduled with the
/// shortest waiting period (7 days; cancel it through the REST API) and the name is freed at once. Held for
/// approval when the key needs quorum.
async fn delete(call: Call, mount: String, name: String) -> Response {
    let key = alias(&mount, &name);
    run(call, Action::ScheduleKeyDeletion, Some(key.clone()), Mode::Blocking, move |app, caller, _, _| {
        let k = app.kms.describe_key(&key)?;
        if k.tags.get(DELETION_ALLOWED).is_none_or(|v| v != "true") {
            return Err(bad("deletion is not allowed for this key: set deletion_allowed with keys/<name>/config"));
        }
        match keyward_rest::handlers::keys::schedule_deletion_or_hold(app, caller, &key, 7)? {
            Ok(info) => {
                app.kms.delete_alias(&key)?;
                Ok(Reply::empty().key(info.key_id, None))
            }
            Err(held) => Ok(held),
        }
    })
    .await
}

// ---- encrypt, decrypt, rewrap, datakey -------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Crypt {
    Encrypt,
    Decrypt,
    Rewrap,
}

#[derive(Deserialize, Default)]
struct CryptItem {
    #[serde(default)]
    plaintext: Option<zeroize::Zeroizing<String>>,
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    associated_data: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    key_version: Option<u32>,
    #[serde(default)]
    reference: Option<String>,
}

/// A request's own item fields are spelt out rather than flattened: serde's `flatten` buffers the whole
/// body into an intermediate tree, which the hot path of encryption should not pay for.
#[derive(Deserialize)]
struct CryptRequest {
    #[serde(default)]
    plaintext: Option<zeroize::Zeroizing<String>>,
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    associated_data: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    key_version: Option<u32>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    batch_input: Option<Vec<CryptItem>>,
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    convergent_encryption: Option<bool>,
    #[serde(default)]
    partial_failure_response_code: Option<u16>,
}

/// Vault's `context` and `associated_data` as Keyward's encryption context, so the ciphertext is bound to them.
fn context_of(item: &CryptItem) -> Result<keyward_api::Context, ApiError> {
    let mut c = keyward_api::Context::new();
    if let Some(x) = b64_field(&item.context, "context")? {
        c.insert("vault:context".into(), B64.encode(x));
    }
    if let Some(x) = b64_field(&item.associated_data, "associated_data")? {
        c.insert("vault:associated_data".into(), B64.encode(x));
    }
    Ok(c)
}

fn crypt_one(
    kms: &Kms,
    caller: &Caller,
    key: &str,
    op: Crypt,
    item: CryptItem,
) -> Result<(serde_json::Value, String, u32), ApiError> {
    use keyward_rest::handlers::crypto::{decrypt_one, encrypt_one, reencrypt_one};
    if item.nonce.is_some() {
        return Err(bad("nonce is not taken: every encryption draws its own"));
    }
    let context = context_of(&item)?;
    let context = (!context.is_empty()).then_some(context);
    let (mut out, key_id, version) = match op {
        Crypt::Encrypt => {
            if item.key_version.is_some_and(|v| v != 0) {
                return Err(bad(
                    "key_version is not taken: a key encrypts with its primary version",
                ));
            }
            let plaintext = item
                .plaintext
                .as_deref()
                .ok_or_else(|| bad("missing plaintext to encrypt"))?;
            // Decoded straight into the zeroizing buffer the engine reads.
            let plaintext = keyward_api::SecretB64::new(
                B64.decode(plaintext)
                    .map_err(|_| bad("plaintext is not base64"))?,
            );
            let r = encrypt_one(
                caller,
                kms,
                key,
                keyward_api::EncryptRequest {
                    plaintext,
                    context,
                    algorithm: None,
                },
            )?;
            let data = serde_json::json!({
                "ciphertext": prefixed(r.version, &r.ciphertext.0),
                "key_version": r.version,
            });
            (data, r.key_id, r.version)
        }
        Crypt::Decrypt => {
            let (v, bytes) = unprefix(
                item.ciphertext
                    .as_deref()
                    .ok_or_else(|| bad("missing ciphertext to decrypt"))?,
            )?;
            check_version(&bytes, v)?;
            let r = decrypt_one(
                caller,
                kms,
                Some(key),
                keyward_api::DecryptRequest {
                    ciphertext: keyward_api::B64(bytes),
                    context,
                    algorithm: None,
                },
            )?;
            let data = serde_json::json!({ "plaintext": B64.encode(r.plaintext.expose()) });
            (data, r.key_id, r.version)
        }
        Crypt::Rewrap => {
            let (v, bytes) = unprefix(
                item.ciphertext
                    .as_deref()
                    .ok_or_else(|| bad("missing ciphertext to rewrap"))?,
            )?;
            check_version(&bytes, v)?;
            let r = reencrypt_one(
                caller,
                kms,
                key,
                keyward_api::ReencryptRequest {
                    ciphertext: keyward_api::B64(bytes),
                    context: context.clone(),
                    new_context: context,
                },
            )?;
            let data = serde_json::json!({
                "ciphertext": prefixed(r.version, &r.ciphertext.0),
                "key_version": r.version,
            });
            (data, r.key_id, r.version)
        }
    };
    if let Some(r) = item.reference {
        out["reference"] = r.into();
    }
    Ok((out, key_id, version))
}

/// The `vault:v<N>:` prefix must name the version the Keyward ciphertext itself names.
fn check_version(ciphertext: &[u8], v: u32) -> Result<(), ApiError> {
    match keyward_core::ciphertext::Header::parse(ciphertext) {
        Ok((h, _)) if h.version == v => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::InvalidCiphertext,
            "the ciphertext's vault:v<N> prefix does not name the version it was made with",
        )),
    }
}

async fn crypt(call: Call, mount: String, name: String, op: Crypt) -> Response {
    let key = alias(&mount, &name);
    let action = match op {
        Crypt::Encrypt => Action::Encrypt,
        Crypt::Decrypt => Action::Decrypt,
        Crypt::Rewrap => Action::ReEncrypt,
    };
    run(
        call,
        action,
        Some(key.clone()),
        Mode::Inline,
        move |app, caller, body, rid| {
            let r: CryptRequest = parse(body)?;
            if r.key_type.is_some() || r.convergent_encryption.is_some() {
                return Err(bad(
                    "keys are not made on first use here: create it with keys/<name> first",
                ));
            }
            let _ = r.partial_failure_response_code;
            match r.batch_input {
                Some(items) => {
                    if items.is_empty() || items.len() > 1000 {
                        return Err(bad("batch_input: 1 to 1000 items"));
                    }
                    app.kms.check_usable(&key, KeyUsage::EncryptDecrypt)?;
                    let results: Vec<serde_json::Value> = items
                        .into_iter()
                        .map(|i| {
                            let reference = i.reference.clone();
                            crypt_one(&app.kms, caller, &key, op, i)
                                .map(|(v, _, _)| v)
                                .unwrap_or_else(|e| {
                                    let mut v = serde_json::json!({ "error": e.0.message() });
                                    if let Some(r) = reference {
                                        v["reference"] = r.into();
                                    }
                                    v
                                })
                        })
                        .collect();
                    ok(rid, serde_json::json!({ "batch_results": results }))
                }
                None => {
                    let item = CryptItem {
                        plaintext: r.plaintext,
                        ciphertext: r.ciphertext,
                        context: r.context,
                        associated_data: r.associated_data,
                        nonce: r.nonce,
                        key_version: r.key_version,
                        reference: r.reference,
                    };
                    // The record names the key and the version made or opened.
                    let (data, key_id, version) = crypt_one(&app.kms, caller, &key, op, item)?;
                    Ok(ok(rid, data)?.key(key_id, Some(version)))
                }
            }
        },
    )
    .await
}

#[derive(Deserialize)]
struct DataKeyRequest {
    #[serde(default)]
    bits: Option<u32>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// `POST <mount>/datakey/{plaintext|wrapped}/<name>`: a fresh AES key under the transit key.
async fn datakey(call: Call, mount: String, name: String, plaintext: bool) -> Response {
    let key = alias(&mount, &name);
    run(
        call,
        Action::GenerateDataKey,
        Some(key.clone()),
        Mode::Inline,
        move |app, caller, body, rid| {
            let r: DataKeyRequest = parse(body)?;
            if r.nonce.is_some() {
                return Err(bad("nonce is not taken: every encryption draws its own"));
            }
            let spec = match r.bits.unwrap_or(256) {
                128 => KeySpec::Aes128,
                256 => KeySpec::Aes256,
                _ => return Err(bad("bits: 128 or 256")),
            };
            let context = context_of(&CryptItem {
                context: r.context,
                ..CryptItem::default()
            })?;
            caller.check_context(&context)?;
            let d = app.kms.generate_data_key(&key, spec, &context, plaintext)?;
            let mut data = serde_json::json!({
                "ciphertext": prefixed(d.version, &d.ciphertext),
                "key_version": d.version,
            });
            if let Some(p) = &d.plaintext {
                data["plaintext"] = B64.encode(p.expose()).into();
            }
            let (id, v) = (d.key_id.to_string(), d.version);
            ok(rid, data).map(|x| x.key(id, Some(v)))
        },
    )
    .await
}

// ---- sign, verify, hmac -----------------------------------------------------------------------------------

#[derive(Deserialize, Default, Clone)]
struct SignItem {
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    hmac: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Deserialize)]
struct SignRequest {
    #[serde(flatten)]
    item: SignItem,
    #[serde(default)]
    batch_input: Option<Vec<SignItem>>,
    #[serde(default)]
    hash_algorithm: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    signature_algorithm: Option<String>,
    #[serde(default)]
    marshaling_algorithm: Option<String>,
    #[serde(default)]
    prehashed: Option<bool>,
    #[serde(default)]
    key_version: Option<u32>,
    #[serde(default)]
    salt_length: Option<serde_json::Value>,
}

/// A signing context belongs to Vault's derived keys, which are not offered.
fn no_context(i: &SignItem) -> Result<(), ApiError> {
    if i.context.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(bad("context is for derived keys, which are not offered"));
    }
    Ok(())
}

/// How a sign or verify request asks to sign.
struct Scheme {
    alg: SigningAlgorithm,
    prehashed: bool,
    jws: bool,
}

/// The Keyward algorithm a transit key and Vault's parameters name: the hash from the path or
/// `hash_algorithm` (the curve's own by default for ECDSA, SHA-256 for RSA), `signature_algorithm` for RSA
/// (`pss` by default, salt as long as the hash), `marshaling_algorithm` `asn1` or `jws` for ECDSA.
fn scheme(spec: KeySpec, r: &SignRequest, path_hash: Option<&str>) -> Result<Scheme, ApiError> {
    let hash = path_hash
        .or(r.hash_algorithm.as_deref())
        .or(r.algorithm.as_deref());
    let prehashed = r.prehashed.unwrap_or(false);
    let jws = match r.marshaling_algorithm.as_deref() {
        None | Some("asn1") => false,
        Some("jws") => true,
        Some(_) => return Err(bad("marshaling_algorithm is asn1 or jws")),
    };
    if r.salt_length
        .as_ref()
        .is_some_and(|s| s != "hash" && s != "auto")
    {
        return Err(bad(
            "salt_length: the salt is as long as the hash (hash or auto)",
        ));
    }
    let bits = |default: &str| -> Result<u16, ApiError> {
        match hash.unwrap_or(default) {
            "sha2-256" => Ok(256),
            "sha2-384" => Ok(384),
            "sha2-512" => Ok(512),
            other => Err(usage(format!(
                "hash_algorithm {} is not offered for this key: sha2-256, sha2-384 or sha2-512",
                keyward_core::quoted(other)
            ))),
        }
    };
    let alg = match spec {
        KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 => {
            let (own, name) = match spec {
                KeySpec::EccNistP256 => (256, "sha2-256"),
                KeySpec::EccNistP384 => (384, "sha2-384"),
                _ => (512, "sha2-512"),
            };
            if bits(name)? != own {
                return Err(usage(format!(
                    "this ECDSA key signs with {name}, the hash of its curve"
                )));
            }
            match own {
                256 => SigningAlgorithm::EcdsaSha256,
                384 => SigningAlgorithm::EcdsaSha384,
                _ => SigningAlgorithm::EcdsaSha512,
            }
        }
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            let pss = match r.signature_algorithm.as_deref() {
                None | Some("pss") => true,
                Some("pkcs1v15") => false,
                Some(_) => return Err(bad("signature_algorithm is pss or pkcs1v15")),
            };
            match (pss, bits("sha2-256")?) {
                (true, 256) => SigningAlgorithm::RsassaPssSha256,
                (true, 384) => SigningAlgorithm::RsassaPssSha384,
                (true, _) => SigningAlgorithm::RsassaPssSha512,
                (false, 256) => SigningAlgorithm::RsassaPkcs1V15Sha256,
                (false, 384) => SigningAlgorithm::RsassaPkcs1V15Sha384,
                (false, _) => SigningAlgorithm::RsassaPkcs1V15Sha512,
            }
        }
        KeySpec::Ed25519 => {
            if prehashed {
                return Err(usage(
                    "ed25519 signs the message itself, never a prehashed input",
                ));
            }
            SigningAlgorithm::Ed25519
        }
        other => return Err(usage(format!("a {other} key does not sign"))),
    };
    if jws
        && !matches!(
            spec,
            KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521
        )
    {
        return Err(bad("marshaling_algorithm jws is for ECDSA keys"));
    }
    Ok(Scheme {
        alg,
        prehashed,
        jws,
    })
}

fn field_size(alg: SigningAlgorithm) -> usize {
    match alg {
        SigningAlgorithm::EcdsaSha256 => 32,
        SigningAlgorithm::EcdsaSha384 => 48,
        _ => 66,
    }
}

async fn sign(call: Call, mount: String, name: String, hash: Option<String>) -> Response {
    let key = alias(&mount, &name);
    run(
        call,
        Action::Sign,
        Some(key.clone()),
        Mode::Inline,
        move |app, _, body, rid| {
            let r: SignRequest = parse(body)?;
            if r.key_version.is_some_and(|v| v != 0) {
                return Err(bad(
                    "key_version is not taken: a key signs with its primary version",
                ));
            }
            let spec = app.kms.key_spec(&key)?;
            let s = scheme(spec, &r, hash.as_deref())?;
            let one = |i: &SignItem| -> Result<serde_json::Value, ApiError> {
                no_context(i)?;
                let input = b64_field(&i.input, "input")?.unwrap_or_default();
                let signed = app.kms.sign(
                    &key,
                    if s.prehashed {
                        SignInput::Digest(&input)
                    } else {
                        SignInput::Message(&input)
                    },
                    s.alg,
                )?;
                let sig = if s.jws {
                    der_to_fixed(&signed.signature, field_size(s.alg)).ok_or_else(|| {
                        ApiError::new(ErrorCode::Unavailable, "signature encoding")
                    })?
                } else {
                    signed.signature
                };
                let text = if s.jws {
                    format!(
                        "vault:v{}:{}",
                        signed.version,
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig)
                    )
                } else {
                    prefixed(signed.version, &sig)
                };
                let mut out =
                    serde_json::json!({ "signature": text, "key_version": signed.version });
                if let Some(reference) = &i.reference {
                    out["reference"] = reference.clone().into();
                }
                Ok(out)
            };
            batch_or_one(rid, &r.item, &r.batch_input, one)
        },
    )
    .await
}

fn batch_or_one(
    rid: &str,
    item: &SignItem,
    batch: &Option<Vec<SignItem>>,
    one: impl Fn(&SignItem) -> Result<serde_json::Value, ApiError>,
) -> Result<Reply, ApiError> {
    match batch {
        Some(items) => {
            if items.is_empty() || items.len() > 1000 {
                return Err(bad("batch_input: 1 to 1000 items"));
            }
            let results: Vec<serde_json::Value> = items
                .iter()
                .map(|i| {
                    one(i).unwrap_or_else(|e| {
                        let mut v = serde_json::json!({ "error": e.0.message() });
                        if let Some(r) = &i.reference {
                            v["reference"] = r.clone().into();
                        }
                        v
                    })
                })
                .collect();
            ok(rid, serde_json::json!({ "batch_results": results }))
        }
        None => {
            let data = one(item)?;
            let version = version_of(&data);
            versioned(ok(rid, data)?, version)
        }
    }
}

/// `POST <mount>/verify/<name>`: a signature, or with `hmac` a MAC.
async fn verify(call: Call, mount: String, name: String, hash: Option<String>) -> Response {
    let key = alias(&mount, &name);
    // One path verifies signatures and MACs; the action is the REST API's for what the key does, so that a
    // policy granting `kms:VerifyMac` (and not `kms:Verify`) governs MAC checks here as it does there. A key
    // that cannot be looked up falls to `kms:Verify`, and the pipeline answers for it.
    let action = match call.app.kms.key_spec(&key) {
        Ok(spec) if spec.mac_algorithm().is_some() => Action::VerifyMac,
        _ => Action::Verify,
    };
    run(
        call,
        action,
        Some(key.clone()),
        Mode::Inline,
        move |app, _, body, rid| {
            let r: SignRequest = parse(body)?;
            let spec = app.kms.key_spec(&key)?;
            let is_mac = spec.mac_algorithm().is_some();
            let s = if is_mac {
                None
            } else {
                Some(scheme(spec, &r, hash.as_deref())?)
            };
            let one = |i: &SignItem| -> Result<serde_json::Value, ApiError> {
                no_context(i)?;
                let input = b64_field(&i.input, "input")?.unwrap_or_default();
                let valid = match (&s, &i.signature, &i.hmac) {
                    (Some(s), Some(sig), None) => {
                        let (v, bytes) = if s.jws {
                            let rest = sig
                                .strip_prefix("vault:v")
                                .and_then(|x| x.split_once(':'))
                                .ok_or_else(|| bad("invalid signature"))?;
                            let v = rest
                                .0
                                .parse::<u32>()
                                .map_err(|_| bad("invalid signature"))?;
                            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                                .decode(rest.1)
                                .map_err(|_| bad("invalid signature: not base64url"))?;
                            (
                                v,
                                fixed_to_der(&raw)
                                    .ok_or_else(|| bad("invalid signature length"))?,
                            )
                        } else {
                            unprefix(sig)?
                        };
                        app.kms.verify(
                            &key,
                            if s.prehashed {
                                SignInput::Digest(&input)
                            } else {
                                SignInput::Message(&input)
                            },
                            &bytes,
                            s.alg,
                            Some(v),
                        )?
                    }
                    (None, None, Some(mac)) => {
                        let (_, bytes) = unprefix(mac)?;
                        app.kms.verify_mac(
                            &key,
                            &input,
                            &bytes,
                            mac_algorithm(hash.as_deref().or(r.algorithm.as_deref()))?,
                        )?
                    }
                    (Some(_), None, _) => return Err(bad("give the signature to verify")),
                    (None, _, None) => return Err(bad("give the hmac to verify")),
                    _ => return Err(bad("give either signature or hmac")),
                };
                let mut out = serde_json::json!({ "valid": valid });
                if let Some(reference) = &i.reference {
                    out["reference"] = reference.clone().into();
                }
                Ok(out)
            };
            batch_or_one(rid, &r.item, &r.batch_input, one)
        },
    )
    .await
}

fn mac_algorithm(name: Option<&str>) -> Result<MacAlgorithm, ApiError> {
    match name.unwrap_or("sha2-256") {
        "sha2-256" => Ok(MacAlgorithm::HmacSha256),
        other => Err(usage(format!(
            "algorithm {}: transit hmac keys compute HMAC-SHA-256 (sha2-256)",
            keyward_core::quoted(other)
        ))),
    }
}

/// `POST <mount>/hmac/<name>(/<algorithm>)`.
async fn hmac(call: Call, mount: String, name: String, path_alg: Option<String>) -> Response {
    let key = alias(&mount, &name);
    run(call, Action::GenerateMac, Some(key.clone()), Mode::Inline, move |app, _, body, rid| {
        let r: SignRequest = parse(body)?;
        if r.key_version.is_some_and(|v| v != 0) {
            return Err(bad("key_version is not taken: a key computes MACs with its primary version"));
        }
        let alg = mac_algorithm(path_alg.as_deref().or(r.algorithm.as_deref()))?;
        let one = |i: &SignItem| -> Result<serde_json::Value, ApiError> {
            let input = b64_field(&i.input, "input")?.unwrap_or_default();
            let m = app.kms.mac(&key, &input, alg)?;
            let mut out = serde_json::json!({ "hmac": prefixed(m.version, &m.mac), "key_version": m.version });
            if let Some(reference) = &i.reference {
                out["reference"] = reference.clone().into();
            }
            Ok(out)
        };
        batch_or_one(rid, &r.item, &r.batch_input, one)
    })
    .await
}

// ---- random and hash ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RandomRequest {
    #[serde(default)]
    bytes: Option<usize>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

fn encode(format: &str, bytes: &[u8]) -> Result<String, ApiError> {
    match format {
        "base64" => Ok(B64.encode(bytes)),
        "hex" => Ok(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        _ => Err(bad("format is base64 or hex")),
    }
}

/// `POST <mount>/random(/<bytes>)(/<format>)`: from the HSM's CSPRNG.
async fn random(call: Call, a: Option<String>, b: Option<String>) -> Response {
    run(
        call,
        Action::GenerateRandom,
        None,
        Mode::Inline,
        move |app, _, body, rid| {
            let r: RandomRequest = if body.0.as_ref().is_ok_and(|x| x.is_empty()) {
                RandomRequest {
                    bytes: None,
                    format: None,
                    source: None,
                }
            } else {
                parse(body)?
            };
            if r.source
                .as_deref()
                .is_some_and(|s| s != "platform" && s != "all")
            {
                return Err(bad("source: the HSM's generator (platform)"));
            }
            let (mut n, mut format) = (
                r.bytes.unwrap_or(32),
                r.format.unwrap_or_else(|| "base64".into()),
            );
            for p in [a, b].into_iter().flatten() {
                match p.parse::<usize>() {
                    Ok(x) => n = x,
                    Err(_) => format = p,
                }
            }
            let bytes = zeroize::Zeroizing::new(app.kms.random(n)?);
            ok(
                rid,
                serde_json::json!({ "random_bytes": encode(&format, &bytes)? }),
            )
        },
    )
    .await
}

#[derive(Deserialize)]
struct HashRequest {
    input: String,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

/// `POST <mount>/hash(/<algorithm>)`: a digest, with no key (any authenticated caller).
async fn hash(call: Call, path_alg: Option<String>) -> Response {
    run(call, Action::Hash, None, Mode::Inline, move |_, _, body, rid| {
        use aws_lc_rs::digest;
        let r: HashRequest = parse(body)?;
        let input = B64.decode(&r.input).map_err(|_| bad("input is not base64"))?;
        let alg = match path_alg.as_deref().or(r.algorithm.as_deref()).unwrap_or("sha2-256") {
            "sha2-224" => &digest::SHA224,
            "sha2-256" => &digest::SHA256,
            "sha2-384" => &digest::SHA384,
            "sha2-512" => &digest::SHA512,
            "sha3-256" => &digest::SHA3_256,
            "sha3-384" => &digest::SHA3_384,
            "sha3-512" => &digest::SHA3_512,
            other => {
                return Err(bad(format!(
                    "algorithm {} is not offered: sha2-224, sha2-256, sha2-384, sha2-512, sha3-256, sha3-384 or sha3-512",
                    keyward_core::quoted(other)
                )))
            }
        };
        let sum = digest::digest(alg, &input);
        ok(rid, serde_json::json!({ "sum": encode(r.format.as_deref().unwrap_or("hex"), sum.as_ref())? }))
    })
    .await
}

// ---- ECDSA signature encodings -------------------------------------------------------------------------

/// DER `SEQUENCE { INTEGER r, INTEGER s }` to `r ‖ s`, each left-padded to `size` bytes (JWS, RFC 7518).
fn der_to_fixed(der: &[u8], size: usize) -> Option<Vec<u8>> {
    let (tag, body, rest) = tlv(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (t1, r, rest) = tlv(body)?;
    let (t2, s, rest) = tlv(rest)?;
    if t1 != 0x02 || t2 != 0x02 || !rest.is_empty() {
        return None;
    }
    let mut out = vec![0u8; size * 2];
    for (i, n) in [r, s].into_iter().enumerate() {
        let n = strip_zeros(n);
        if n.len() > size {
            return None;
        }
        out[i * size + size - n.len()..(i + 1) * size].copy_from_slice(n);
    }
    Some(out)
}

/// `r ‖ s` back to DER.
fn fixed_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let int = |n: &[u8]| {
        let n = strip_zeros(n);
        let mut v = Vec::with_capacity(n.len() + 1);
        if n.is_empty() || n[0] & 0x80 != 0 {
            v.push(0);
        }
        v.extend_from_slice(n);
        der(0x02, &v)
    };
    let mut body = int(r);
    body.extend(int(s));
    Some(der(0x30, &body))
}

/// A DER element with a definite length (short or long form).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n <= 0xff => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

fn strip_zeros(n: &[u8]) -> &[u8] {
    let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    &n[first..]
}

/// One DER element: tag, content, and what follows (short and long definite lengths).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JWS form of an aws-lc-rs ASN.1 signature verifies as a fixed-size one there, and converts back.
    #[test]
    fn ecdsa_signatures_convert_between_asn1_and_jws() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        for (asn1, fixed, size) in [
            (
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &signature::ECDSA_P256_SHA256_FIXED,
                32,
            ),
            (
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                &signature::ECDSA_P384_SHA384_FIXED,
                48,
            ),
            (
                &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
                &signature::ECDSA_P521_SHA512_FIXED,
                66,
            ),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(asn1, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(asn1, pkcs8.as_ref()).unwrap();
            for i in 0..20u8 {
                let msg = [i; 33];
                let der = pair.sign(&rng, &msg).unwrap();
                let raw = der_to_fixed(der.as_ref(), size).unwrap();
                assert_eq!(raw.len(), 2 * size);
                signature::UnparsedPublicKey::new(fixed, pair.public_key().as_ref())
                    .verify(&msg, &raw)
                    .unwrap();
                assert_eq!(fixed_to_der(&raw).unwrap(), der.as_ref());
            }
        }
        assert!(der_to_fixed(&[0x30, 0x03, 0x02, 0x01], 32).is_none());
        assert!(fixed_to_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn prefixes_and_durations() {
        assert_eq!(
            unprefix(&prefixed(7, b"abc")).unwrap(),
            (7, b"abc".to_vec())
        );
        for bad in ["v1:YWJj", "vault:vx:YWJj", "vault:v1:***"] {
            assert!(unprefix(bad).is_err(), "{bad}");
        }
        assert_eq!(rotation_days(&serde_json::json!("720h")).unwrap(), Some(30));
        assert_eq!(rotation_days(&serde_json::json!("30d")).unwrap(), Some(30));
        assert_eq!(rotation_days(&serde_json::json!(0)).unwrap(), None);
        assert!(rotation_days(&serde_json::json!("90m")).is_err());
    }
}
