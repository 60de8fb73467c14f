//! The operations: each maps an AWS request onto the engine (through the same functions the REST API's
//! handlers use where a rule lives there) and the answer back onto AWS's shape.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::StatusCode;
use keyward_api::{Context, DecryptRequest, EncryptRequest, ReencryptRequest, SecretB64, B64};
use keyward_core::{CreateKey, ErrorCode, KeyFilter, KeySpec, Origin, SignInput, UpdateKey};
use keyward_iam::authz::Action;
use keyward_rest::app::{parse, resource, run_noting, Caller, Meta, Mode, RawBody, Reply};
use keyward_rest::convert;
use keyward_rest::error::ApiError;
use keyward_rest::handlers::crypto::{decrypt_one, encrypt_one, reencrypt_one};
use keyward_rest::AppState;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::wire::{blob, key_metadata, key_ref, Blob, Place, SecretBlob, Tag};
use crate::{invalid, Exception};

macro_rules! ops {
    ($($variant:ident => $action:ident, $mode:ident, $key:expr;)+) => {
        /// An operation this door performs.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op { $($variant),+ }

        impl Op {
            /// The operation an `X-Amz-Target` names.
            pub fn parse(name: &str) -> Option<Op> {
                match name { $(stringify!($variant) => Some(Op::$variant),)+ _ => None }
            }
            /// The action authorization and the audit log know it as.
            fn action(self) -> Action { match self { $(Op::$variant => Action::$action),+ } }
            /// Whether it may block (store writes, key generation).
            fn mode(self) -> Mode { match self { $(Op::$variant => Mode::$mode),+ } }
            /// The request field naming the key it acts on, if any.
            fn key_field(self) -> Option<&'static str> { match self { $(Op::$variant => $key),+ } }
        }
    };
}

ops! {
    CreateKey => CreateKey, Blocking, None;
    DescribeKey => DescribeKey, Blocking, Some("KeyId");
    ListKeys => ListKeys, Blocking, None;
    UpdateKeyDescription => UpdateKey, Blocking, Some("KeyId");
    EnableKey => EnableKey, Blocking, Some("KeyId");
    DisableKey => DisableKey, Blocking, Some("KeyId");
    ScheduleKeyDeletion => ScheduleKeyDeletion, Blocking, Some("KeyId");
    CancelKeyDeletion => CancelKeyDeletion, Blocking, Some("KeyId");
    Encrypt => Encrypt, Inline, Some("KeyId");
    Decrypt => Decrypt, Inline, Some("KeyId");
    ReEncrypt => ReEncrypt, Inline, Some("DestinationKeyId");
    GenerateDataKey => GenerateDataKey, Inline, Some("KeyId");
    GenerateDataKeyWithoutPlaintext => GenerateDataKey, Inline, Some("KeyId");
    GenerateDataKeyPair => GenerateDataKeyPair, Blocking, Some("KeyId");
    GenerateDataKeyPairWithoutPlaintext => GenerateDataKeyPair, Blocking, Some("KeyId");
    GenerateRandom => GenerateRandom, Inline, None;
    Sign => Sign, Inline, Some("KeyId");
    Verify => Verify, Inline, Some("KeyId");
    GenerateMac => GenerateMac, Inline, Some("KeyId");
    VerifyMac => VerifyMac, Inline, Some("KeyId");
    GetPublicKey => GetPublicKey, Inline, Some("KeyId");
    DeriveSharedSecret => DeriveSharedSecret, Inline, Some("KeyId");
    CreateAlias => PutAlias, Blocking, Some("TargetKeyId");
    UpdateAlias => PutAlias, Blocking, Some("TargetKeyId");
    DeleteAlias => DeleteAlias, Blocking, None;
    ListAliases => ListAliases, Blocking, Some("KeyId");
    EnableKeyRotation => UpdateKey, Blocking, Some("KeyId");
    DisableKeyRotation => UpdateKey, Blocking, Some("KeyId");
    GetKeyRotationStatus => DescribeKey, Blocking, Some("KeyId");
    RotateKeyOnDemand => RotateKey, Blocking, Some("KeyId");
    ListKeyRotations => ListKeyVersions, Blocking, Some("KeyId");
    TagResource => UpdateKey, Blocking, Some("KeyId");
    UntagResource => UpdateKey, Blocking, Some("KeyId");
    ListResourceTags => DescribeKey, Blocking, Some("KeyId");
    GetKeyPolicy => DescribeKey, Blocking, Some("KeyId");
    ListKeyPolicies => DescribeKey, Blocking, Some("KeyId");
    GetParametersForImport => GetImportParameters, Blocking, Some("KeyId");
    ImportKeyMaterial => ImportKeyMaterial, Blocking, Some("KeyId");
    DeleteImportedKeyMaterial => DeleteImportedKeyMaterial, Blocking, Some("KeyId");
}

/// Operations of AWS KMS this service does not offer, and what to use instead.
fn unsupported(name: &str) -> Option<&'static str> {
    Some(match name {
        "CreateGrant" | "ListGrants" | "RevokeGrant" | "RetireGrant" | "ListRetirableGrants" => {
            "grants are not offered: give the grantee an identity of its own with a policy (PUT /v1/policies/NAME) and an access key"
        }
        "PutKeyPolicy" => {
            "key policies are not offered: access is decided by roles and identity policies (PUT /v1/policies/NAME)"
        }
        "CreateCustomKeyStore" | "ConnectCustomKeyStore" | "DeleteCustomKeyStore"
        | "DescribeCustomKeyStores" | "DisconnectCustomKeyStore" | "UpdateCustomKeyStore" => {
            "custom key stores are not offered: the service itself can be rooted in an HSM (pkcs11_module)"
        }
        "ReplicateKey" | "UpdatePrimaryRegion" => {
            "multi-Region keys are not offered: every node of a cluster serves every key"
        }
        _ => return None,
    })
}

/// Runs one operation through the pipeline and returns the JSON body of its answer.
pub(crate) async fn run(
    app: &AppState,
    meta: Meta,
    op: Option<Op>,
    name: &str,
    region: String,
    body: Result<Bytes, ApiError>,
    exception: Exception,
) -> Result<(StatusCode, Vec<u8>), ApiError> {
    let a = app.clone();
    let Some(op) = op else {
        // Recorded as a request for something that does not exist, once the caller is known.
        let message = match unsupported(name) {
            Some(why) => {
                exception.set("UnsupportedOperationException");
                format!("{} is not supported: {why}", keyward_core::shown(name))
            }
            None => {
                exception.set("UnknownOperationException");
                format!("unknown operation {}", keyward_core::quoted(name))
            }
        };
        let meta = meta.on(resource("endpoint", &format!("TrentService.{name}")));
        let refused = move |_| Err(ApiError::new(ErrorCode::NotFound, message));
        return run_noting(
            &a,
            &meta,
            Action::NoSuchEndpoint,
            None,
            None::<fn() -> Option<String>>,
            Mode::Inline,
            refused,
        )
        .await
        .map(Reply::into_parts);
    };
    let account = app.config.aws_account_id.clone();
    // The key a request names is read before it runs, for authorization and the record; a body that does
    // not parse is refused inside the pipeline, where the refusal is recorded. Only the naming fields are
    // read here: the rest (a plaintext) is skipped, not copied.
    let names: Names<'_> = body
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    // A new key's id is chosen before the request runs, as the REST API chooses it, so that the record
    // written ahead names the key it creates.
    let key = match op {
        Op::CreateKey => Some(uuid::Uuid::new_v4().to_string()),
        _ => op
            .key_field()
            .and_then(|f| names.get(f))
            .map(|s| key_ref(s, &account)),
    };
    let meta = match &names.alias_name {
        Some(alias) => meta.on(resource("alias", alias.trim_start_matches("alias/"))),
        None => meta,
    };
    let raw = RawBody(body);
    let k = key.clone();
    let work = move |caller: Caller| {
        let call = Call {
            app: &a,
            caller: &caller,
            key: k,
            place: Place {
                region: &region,
                account: &account,
            },
            exception: &exception,
        };
        call.perform(op, &raw)
    };
    run_noting(
        app,
        &meta,
        op.action(),
        key,
        None::<fn() -> Option<String>>,
        op.mode(),
        work,
    )
    .await
    .map(Reply::into_parts)
}

/// The fields of a request that name what it acts on.
#[derive(Deserialize, Default)]
struct Names<'a> {
    #[serde(rename = "KeyId", borrow, default)]
    key_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "TargetKeyId", borrow, default)]
    target_key_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "DestinationKeyId", borrow, default)]
    destination_key_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "AliasName", borrow, default)]
    alias_name: Option<std::borrow::Cow<'a, str>>,
}

impl Names<'_> {
    fn get(&self, field: &str) -> Option<&str> {
        match field {
            "KeyId" => self.key_id.as_deref(),
            "TargetKeyId" => self.target_key_id.as_deref(),
            "DestinationKeyId" => self.destination_key_id.as_deref(),
            _ => None,
        }
    }
}

/// One operation's context.
struct Call<'a> {
    app: &'a AppState,
    caller: &'a Caller,
    /// The key the request names (id or `alias/NAME`), when it names one.
    key: Option<String>,
    place: Place<'a>,
    exception: &'a Exception,
}

fn context(c: Option<Context>) -> Option<Context> {
    c.filter(|c| !c.is_empty())
}

fn reply(v: Value) -> Result<Reply, ApiError> {
    Reply::ok(&v)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyOnly {
    #[allow(dead_code)]
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateKeyInput {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    key_usage: Option<String>,
    #[serde(default)]
    key_spec: Option<String>,
    #[serde(default)]
    customer_master_key_spec: Option<String>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    multi_region: Option<bool>,
    #[serde(default)]
    custom_key_store_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    bypass_policy_lockout_safety_check: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListInput {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    marker: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptInput {
    plaintext: SecretBlob,
    #[serde(default)]
    encryption_context: Option<Context>,
    #[serde(default)]
    encryption_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptInput {
    ciphertext_blob: Blob,
    #[serde(default)]
    encryption_context: Option<Context>,
    #[serde(default)]
    encryption_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptInput {
    ciphertext_blob: Blob,
    #[serde(default)]
    source_encryption_context: Option<Context>,
    #[serde(default)]
    source_key_id: Option<String>,
    #[serde(default)]
    destination_encryption_context: Option<Context>,
    #[serde(default)]
    source_encryption_algorithm: Option<String>,
    #[serde(default)]
    destination_encryption_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyInput {
    #[serde(default)]
    encryption_context: Option<Context>,
    #[serde(default)]
    number_of_bytes: Option<usize>,
    #[serde(default)]
    key_spec: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyPairInput {
    #[serde(default)]
    encryption_context: Option<Context>,
    key_pair_spec: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RandomInput {
    #[serde(default)]
    number_of_bytes: Option<usize>,
    #[serde(default)]
    custom_key_store_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SignInputAws {
    message: SecretBlob,
    #[serde(default)]
    message_type: Option<String>,
    signing_algorithm: String,
    #[serde(default)]
    signature: Option<Blob>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MacInput {
    message: SecretBlob,
    mac_algorithm: String,
    #[serde(default)]
    mac: Option<Blob>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgreeInput {
    key_agreement_algorithm: String,
    public_key: Blob,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AliasInput {
    alias_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescriptionInput {
    description: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeletionInput {
    #[serde(default)]
    pending_window_in_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RotationInput {
    #[serde(default)]
    rotation_period_in_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagInput {
    tags: Vec<Tag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagInput {
    tag_keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImportParametersInput {
    wrapping_algorithm: String,
    wrapping_key_spec: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImportInput {
    import_token: Blob,
    encrypted_key_material: SecretBlob,
    #[serde(default)]
    valid_to: Option<f64>,
    #[serde(default)]
    expiration_model: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteMaterialInput {
    #[serde(default)]
    key_material_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyInput {
    #[serde(default)]
    policy_name: Option<String>,
}

/// The key policy every key reports: Keyward decides access by roles and identity policies, and this is
/// the document that says so in AWS's terms (the account may do what its identities' grants allow).
fn default_policy(account: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
            "Action": "kms:*",
            "Resource": "*"
        }]
    })
    .to_string()
}

impl Call<'_> {
    fn key(&self) -> Result<&str, ApiError> {
        self.key
            .as_deref()
            .ok_or_else(|| invalid("KeyId is required"))
    }

    fn arn_of(&self, key_id: &str) -> Value {
        json!(self.place.key_arn(key_id))
    }

    fn perform(&self, op: Op, body: &RawBody) -> Result<Reply, ApiError> {
        match op {
            Op::CreateKey => self.create_key(parse(body)?),
            Op::DescribeKey => {
                parse::<KeyOnly>(body)?;
                let k = self.app.kms.describe_key(self.key()?)?;
                reply(json!({"KeyMetadata": key_metadata(&k, &self.place, &self.app.kms)}))
            }
            Op::ListKeys => self.list_keys(parse(body)?),
            Op::UpdateKeyDescription => {
                let i: DescriptionInput = parse(body)?;
                let patch = UpdateKey {
                    description: Some(i.description),
                    ..UpdateKey::default()
                };
                self.app.kms.update_key(self.key()?, patch)?;
                reply(json!({}))
            }
            Op::EnableKey => {
                self.app.kms.enable_key(self.key()?)?;
                reply(json!({}))
            }
            Op::DisableKey => {
                self.app.kms.disable_key(self.key()?)?;
                reply(json!({}))
            }
            Op::ScheduleKeyDeletion => self.schedule_deletion(parse(body)?),
            Op::CancelKeyDeletion => {
                let k = self.app.kms.cancel_deletion(self.key()?)?;
                reply(json!({"KeyId": self.arn_of(&k.key_id)}))
            }
            Op::Encrypt => self.encrypt(parse(body)?),
            Op::Decrypt => self.decrypt(parse(body)?),
            Op::ReEncrypt => self.reencrypt(parse(body)?),
            Op::GenerateDataKey => self.data_key(parse(body)?, true),
            Op::GenerateDataKeyWithoutPlaintext => self.data_key(parse(body)?, false),
            Op::GenerateDataKeyPair => self.data_key_pair(parse(body)?, true),
            Op::GenerateDataKeyPairWithoutPlaintext => self.data_key_pair(parse(body)?, false),
            Op::GenerateRandom => self.random(parse(body)?),
            Op::Sign => self.sign(parse(body)?),
            Op::Verify => self.verify(parse(body)?),
            Op::GenerateMac => self.mac(parse(body)?),
            Op::VerifyMac => self.verify_mac(parse(body)?),
            Op::GetPublicKey => self.public_key(),
            Op::DeriveSharedSecret => self.agree(parse(body)?),
            Op::CreateAlias => self.put_alias(parse(body)?, true),
            Op::UpdateAlias => self.put_alias(parse(body)?, false),
            Op::DeleteAlias => {
                let i: AliasInput = parse(body)?;
                self.app.kms.delete_alias(alias_name(&i.alias_name)?)?;
                reply(json!({}))
            }
            Op::ListAliases => self.list_aliases(parse(body)?),
            Op::EnableKeyRotation => {
                let i: RotationInput = parse(body)?;
                let days = i.rotation_period_in_days.unwrap_or(365);
                if !(90..=2560).contains(&days) {
                    return Err(invalid("RotationPeriodInDays must be 90 to 2560"));
                }
                self.rotation(Some(days))
            }
            Op::DisableKeyRotation => self.rotation(None),
            Op::GetKeyRotationStatus => self.rotation_status(),
            Op::RotateKeyOnDemand => {
                let k = self.app.kms.rotate_key(self.key()?)?;
                reply(json!({"KeyId": k.key_id}))
            }
            Op::ListKeyRotations => self.list_rotations(),
            Op::TagResource => {
                let i: TagInput = parse(body)?;
                let patch = UpdateKey {
                    set_tags: i
                        .tags
                        .into_iter()
                        .map(|t| (t.tag_key, t.tag_value))
                        .collect(),
                    ..UpdateKey::default()
                };
                self.app.kms.update_key(self.key()?, patch)?;
                reply(json!({}))
            }
            Op::UntagResource => {
                let i: UntagInput = parse(body)?;
                let patch = UpdateKey {
                    remove_tags: i.tag_keys,
                    ..UpdateKey::default()
                };
                self.app.kms.update_key(self.key()?, patch)?;
                reply(json!({}))
            }
            Op::ListResourceTags => {
                let k = self.app.kms.describe_key(self.key()?)?;
                let tags: Vec<Value> = k
                    .tags
                    .iter()
                    .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
                    .collect();
                reply(json!({"Tags": tags, "Truncated": false}))
            }
            Op::GetKeyPolicy => {
                let i: PolicyInput = parse(body)?;
                if i.policy_name.as_deref().is_some_and(|n| n != "default") {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        "the only key policy is named default",
                    ));
                }
                self.app.kms.describe_key(self.key()?)?;
                reply(
                    json!({"Policy": default_policy(self.place.account), "PolicyName": "default"}),
                )
            }
            Op::GetParametersForImport => self.import_parameters(parse(body)?),
            Op::ImportKeyMaterial => self.import(parse(body)?),
            Op::DeleteImportedKeyMaterial => self.delete_material(parse(body)?),
            Op::ListKeyPolicies => {
                self.app.kms.describe_key(self.key()?)?;
                reply(json!({"PolicyNames": ["default"], "Truncated": false}))
            }
        }
    }

    fn create_key(&self, i: CreateKeyInput) -> Result<Reply, ApiError> {
        if i.policy.is_some() {
            return Err(invalid(
                "key policies are not offered: leave Policy out, and grant access with identity policies (PUT /v1/policies/NAME)",
            ));
        }
        if i.multi_region == Some(true) {
            return Err(invalid("multi-Region keys are not offered"));
        }
        if i.custom_key_store_id.is_some() {
            return Err(invalid("custom key stores are not offered"));
        }
        let spec_name = i
            .key_spec
            .or(i.customer_master_key_spec)
            .unwrap_or_else(|| "SYMMETRIC_DEFAULT".into());
        let spec = convert::spec(&spec_name)?;
        let mut req = CreateKey::new(spec);
        req.usage = i.key_usage.as_deref().map(convert::usage).transpose()?;
        req.description = i.description.unwrap_or_default();
        req.origin = match i.origin.as_deref() {
            None | Some("AWS_KMS") => Origin::Keyward,
            Some("EXTERNAL") => Origin::External,
            Some(other) => {
                return Err(invalid(format!(
                    "origin {} is not offered: use AWS_KMS or EXTERNAL",
                    keyward_core::quoted(other)
                )))
            }
        };
        req.tags = i
            .tags
            .into_iter()
            .map(|t| (t.tag_key, t.tag_value))
            .collect::<BTreeMap<_, _>>();
        req.key_id = self.key.clone();
        let k = self.app.kms.create_key(req)?;
        let (id, v) = (k.key_id.clone(), k.primary_version);
        reply(json!({"KeyMetadata": key_metadata(&k, &self.place, &self.app.kms)}))
            .map(|r| r.key(id, Some(v)))
    }

    fn list_keys(&self, i: ListInput) -> Result<Reply, ApiError> {
        let limit = i.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(invalid("Limit must be 1 to 1000"));
        }
        let (keys, next) =
            self.app
                .kms
                .list_keys(&KeyFilter::default(), i.marker.as_deref(), limit)?;
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| json!({"KeyId": k.key_id, "KeyArn": self.place.key_arn(&k.key_id)}))
            .collect();
        let mut out = json!({"Keys": keys, "Truncated": next.is_some()});
        if let Some(n) = next {
            out["NextMarker"] = json!(n);
        }
        reply(out)
    }

    fn schedule_deletion(&self, i: DeletionInput) -> Result<Reply, ApiError> {
        let days = i.pending_window_in_days.unwrap_or(30);
        let outcome = keyward_rest::handlers::keys::schedule_deletion_or_hold(
            self.app,
            self.caller,
            self.key()?,
            days,
        )?;
        match outcome {
            Ok(k) => reply(json!({
                "KeyId": self.arn_of(&k.key_id),
                "DeletionDate": k.deletion_date,
                "KeyState": crate::wire::state(k.state),
                "PendingWindowInDays": days,
            })),
            Err(held) => Err(self.held(held)),
        }
    }

    /// A request held for quorum approval is refused here, naming the approval it opened: AWS KMS has no
    /// answer for "accepted, runs later".
    fn held(&self, held: Reply) -> ApiError {
        let (_, body) = held.into_parts();
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["approval_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        self.exception.set("AccessDeniedException");
        ApiError::new(
            ErrorCode::AccessDenied,
            format!("this operation needs quorum approval: approval {id} was opened, and the operation runs once enough approvers approve it (keyward approval approve {id})"),
        )
    }

    fn encrypt(&self, i: EncryptInput) -> Result<Reply, ApiError> {
        let algorithm = i.encryption_algorithm;
        let r = encrypt_one(
            self.caller,
            &self.app.kms,
            self.key()?,
            EncryptRequest {
                plaintext: SecretB64(i.plaintext.0),
                context: context(i.encryption_context),
                algorithm: algorithm.clone(),
            },
        )?;
        let (id, v) = (r.key_id.clone(), r.version);
        reply(json!({
            "CiphertextBlob": blob(&r.ciphertext.0),
            "KeyId": self.arn_of(&r.key_id),
            "EncryptionAlgorithm": algorithm.unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
        }))
        .map(|x| x.key(id, Some(v)))
    }

    fn decrypt(&self, i: DecryptInput) -> Result<Reply, ApiError> {
        let named = self.key.clone();
        if let Some(k) = &named {
            self.check_ciphertext_key(k, &i.ciphertext_blob.0)?;
        }
        let algorithm = i.encryption_algorithm;
        let r = decrypt_one(
            self.caller,
            &self.app.kms,
            named.as_deref(),
            DecryptRequest {
                ciphertext: B64(i.ciphertext_blob.0),
                context: context(i.encryption_context),
                algorithm: algorithm.clone(),
            },
        )?;
        let (id, v) = (r.key_id.clone(), r.version);
        reply(json!({
            "KeyId": self.arn_of(&r.key_id),
            "Plaintext": blob(r.plaintext.expose()),
            "EncryptionAlgorithm": algorithm.unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
        }))
        .map(|x| x.key(id, Some(v)))
    }

    /// A request that names a key and a ciphertext of another key gets `IncorrectKeyException`, as AWS
    /// answers it.
    fn check_ciphertext_key(&self, named: &str, ciphertext: &[u8]) -> Result<(), ApiError> {
        let Ok((h, _)) = keyward_core::ciphertext::Header::parse(ciphertext) else {
            return Ok(());
        };
        let in_ciphertext = uuid_text(h.key_id);
        let named_id = self.app.kms.key_id_of(named)?;
        if named_id != in_ciphertext {
            self.exception.set("IncorrectKeyException");
            return Err(ApiError::new(
                ErrorCode::InvalidCiphertext,
                "the ciphertext was made under another key than the one named",
            ));
        }
        Ok(())
    }

    fn reencrypt(&self, i: ReEncryptInput) -> Result<Reply, ApiError> {
        if let Some(s) = &i.source_key_id {
            self.check_ciphertext_key(&key_ref(s, self.place.account), &i.ciphertext_blob.0)?;
        }
        let source_id = keyward_core::ciphertext::Header::parse(&i.ciphertext_blob.0)
            .map(|(h, _)| uuid_text(h.key_id))
            .ok();
        let r = reencrypt_one(
            self.caller,
            &self.app.kms,
            self.key()?,
            ReencryptRequest {
                ciphertext: B64(i.ciphertext_blob.0),
                context: context(i.source_encryption_context),
                new_context: i.destination_encryption_context,
            },
        )?;
        let (id, v) = (r.key_id.clone(), r.version);
        reply(json!({
            "CiphertextBlob": blob(&r.ciphertext.0),
            "SourceKeyId": source_id.map(|s| self.place.key_arn(&s)),
            "KeyId": self.arn_of(&r.key_id),
            "SourceEncryptionAlgorithm": i.source_encryption_algorithm.unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
            "DestinationEncryptionAlgorithm": i.destination_encryption_algorithm.unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
        }))
        .map(|x| x.key(id, Some(v)))
    }

    fn data_key(&self, i: DataKeyInput, plaintext: bool) -> Result<Reply, ApiError> {
        let spec = match (i.key_spec.as_deref(), i.number_of_bytes) {
            (Some(_), Some(_)) => {
                return Err(invalid("give KeySpec or NumberOfBytes, not both"));
            }
            (Some("AES_256"), None) | (None, Some(32)) => KeySpec::Aes256,
            (Some("AES_128"), None) | (None, Some(16)) => KeySpec::Aes128,
            (None, None) => {
                return Err(invalid("KeySpec or NumberOfBytes is required"));
            }
            (Some(other), None) => {
                return Err(invalid(format!(
                    "KeySpec {} is not one of AES_256, AES_128",
                    keyward_core::quoted(other)
                )))
            }
            (None, Some(_)) => {
                return Err(invalid("NumberOfBytes must be 16 or 32"));
            }
        };
        let ctx = i.encryption_context.unwrap_or_default();
        self.caller.check_context(&ctx)?;
        let d = self
            .app
            .kms
            .generate_data_key(self.key()?, spec, &ctx, plaintext)?;
        let (id, v) = (d.key_id.to_string(), d.version);
        let mut out = json!({"CiphertextBlob": blob(&d.ciphertext), "KeyId": self.arn_of(&id)});
        if let Some(p) = &d.plaintext {
            out["Plaintext"] = blob(p.expose());
        }
        reply(out).map(|x| x.key(id, Some(v)))
    }

    fn data_key_pair(&self, i: DataKeyPairInput, plaintext: bool) -> Result<Reply, ApiError> {
        let spec = convert::spec(&i.key_pair_spec)?;
        let ctx = i.encryption_context.unwrap_or_default();
        self.caller.check_context(&ctx)?;
        let d = self
            .app
            .kms
            .generate_data_key_pair(self.key()?, spec, &ctx, plaintext)?;
        let (id, v) = (d.key_id.to_string(), d.version);
        let mut out = json!({
            "PrivateKeyCiphertextBlob": blob(&d.private_key_ciphertext),
            "PublicKey": blob(&d.public_key_der),
            "KeyId": self.arn_of(&id),
            "KeyPairSpec": spec.as_str(),
        });
        if let Some(p) = &d.private_key_der {
            out["PrivateKeyPlaintext"] = blob(p.expose());
        }
        reply(out).map(|x| x.key(id, Some(v)))
    }

    fn random(&self, i: RandomInput) -> Result<Reply, ApiError> {
        if i.custom_key_store_id.is_some() {
            return Err(invalid("custom key stores are not offered"));
        }
        let n = i
            .number_of_bytes
            .ok_or_else(|| invalid("NumberOfBytes is required"))?;
        let bytes = zeroize::Zeroizing::new(self.app.kms.random(n)?);
        reply(json!({"Plaintext": blob(&bytes)}))
    }

    /// AWS's message types: ML-DSA takes a message or its external μ (FIPS 204), the other algorithms a
    /// message or its digest; the engine reads both of the latter as its "digest" input.
    fn sign_input<'m>(
        message: &'m [u8],
        kind: Option<&str>,
        alg: keyward_core::SigningAlgorithm,
    ) -> Result<SignInput<'m>, ApiError> {
        let ml_dsa = alg == keyward_core::SigningAlgorithm::MlDsaShake256;
        match kind {
            None | Some("RAW") => Ok(SignInput::Message(message)),
            Some("DIGEST") if !ml_dsa => Ok(SignInput::Digest(message)),
            Some("EXTERNAL_MU") if ml_dsa => Ok(SignInput::Digest(message)),
            Some("DIGEST") => Err(invalid(
                "ML_DSA_SHAKE_256 signs a RAW message or its EXTERNAL_MU, not a DIGEST",
            )),
            Some("EXTERNAL_MU") => Err(invalid("EXTERNAL_MU is for ML_DSA_SHAKE_256 only")),
            Some(other) => Err(invalid(format!(
                "MessageType {} is not RAW, DIGEST or EXTERNAL_MU",
                keyward_core::quoted(other)
            ))),
        }
    }

    fn sign(&self, i: SignInputAws) -> Result<Reply, ApiError> {
        let alg = convert::signing_algorithm(&i.signing_algorithm)?;
        let input = Self::sign_input(&i.message.0, i.message_type.as_deref(), alg)?;
        let s = self.app.kms.sign(self.key()?, input, alg)?;
        let (id, v) = (s.key_id.to_string(), s.version);
        reply(json!({
            "KeyId": self.arn_of(&id),
            "Signature": blob(&s.signature),
            "SigningAlgorithm": alg.as_str(),
        }))
        .map(|x| x.key(id, Some(v)))
    }

    fn verify(&self, i: SignInputAws) -> Result<Reply, ApiError> {
        let alg = convert::signing_algorithm(&i.signing_algorithm)?;
        let signature = i
            .signature
            .ok_or_else(|| invalid("Signature is required"))?;
        let input = Self::sign_input(&i.message.0, i.message_type.as_deref(), alg)?;
        let key = self.key()?;
        let valid = self.app.kms.verify(key, input, &signature.0, alg, None)?;
        let id = self.app.kms.key_id_of(key)?;
        if !valid {
            self.exception.set("KMSInvalidSignatureException");
            return Err(ApiError::new(
                ErrorCode::InvalidCiphertext,
                "the signature does not verify",
            ));
        }
        reply(json!({
            "KeyId": self.arn_of(&id),
            "SignatureValid": true,
            "SigningAlgorithm": alg.as_str(),
        }))
        .map(|x| x.key(id, None))
    }

    fn mac(&self, i: MacInput) -> Result<Reply, ApiError> {
        let alg = convert::mac_algorithm(&i.mac_algorithm)?;
        let m = self.app.kms.mac(self.key()?, &i.message.0, alg)?;
        let (id, v) = (m.key_id.to_string(), m.version);
        reply(json!({"Mac": blob(&m.mac), "MacAlgorithm": alg.as_str(), "KeyId": self.arn_of(&id)}))
            .map(|x| x.key(id, Some(v)))
    }

    fn verify_mac(&self, i: MacInput) -> Result<Reply, ApiError> {
        let alg = convert::mac_algorithm(&i.mac_algorithm)?;
        let mac = i.mac.ok_or_else(|| invalid("Mac is required"))?;
        let key = self.key()?;
        let valid = self.app.kms.verify_mac(key, &i.message.0, &mac.0, alg)?;
        let id = self.app.kms.key_id_of(key)?;
        if !valid {
            self.exception.set("KMSInvalidMacException");
            return Err(ApiError::new(
                ErrorCode::InvalidCiphertext,
                "the MAC does not verify",
            ));
        }
        reply(json!({"KeyId": self.arn_of(&id), "MacValid": true, "MacAlgorithm": alg.as_str()}))
            .map(|x| x.key(id, None))
    }

    fn public_key(&self) -> Result<Reply, ApiError> {
        let key = self.key()?;
        let p = self.app.kms.public_key(key)?;
        let info = self.app.kms.describe_key(key)?;
        let mut out = serde_json::Map::new();
        out.insert("KeyId".into(), self.arn_of(&p.key_id));
        out.insert("PublicKey".into(), blob(&p.der));
        out.insert("CustomerMasterKeySpec".into(), json!(p.spec.as_str()));
        out.insert("KeySpec".into(), json!(p.spec.as_str()));
        out.insert("KeyUsage".into(), json!(info.usage.as_str()));
        let encryption = self.app.kms.encryption_algorithms(&info);
        crate::wire::algorithms(p.spec, info.usage, &encryption, &mut out);
        let (id, v) = (p.key_id.to_string(), p.version);
        reply(Value::Object(out)).map(|x| x.key(id, Some(v)))
    }

    fn agree(&self, i: AgreeInput) -> Result<Reply, ApiError> {
        if i.key_agreement_algorithm != "ECDH" {
            return Err(invalid("KeyAgreementAlgorithm must be ECDH"));
        }
        let key = self.key()?;
        let secret = self.app.kms.agree(key, &i.public_key.0)?;
        let id = self.app.kms.key_id_of(key)?;
        reply(json!({
            "KeyId": self.arn_of(&id),
            "SharedSecret": blob(secret.expose()),
            "KeyAgreementAlgorithm": "ECDH",
            "KeyOrigin": "AWS_KMS",
        }))
        .map(|x| x.key(id, None))
    }

    fn put_alias(&self, i: AliasInput, create: bool) -> Result<Reply, ApiError> {
        let name = alias_name(&i.alias_name)?;
        let exists = self.app.kms.key_id_of(&i.alias_name).is_ok();
        if create && exists {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "alias {} already exists",
                    keyward_core::shown(&i.alias_name)
                ),
            ));
        }
        if !create && !exists {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "alias {} does not exist",
                    keyward_core::shown(&i.alias_name)
                ),
            ));
        }
        self.app.kms.put_alias(name, self.key()?)?;
        reply(json!({}))
    }

    fn list_aliases(&self, i: ListInput) -> Result<Reply, ApiError> {
        let limit = i.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(invalid("Limit must be 1 to 1000"));
        }
        let only = match &self.key {
            Some(k) => Some(self.app.kms.key_id_of(k)?),
            None => None,
        };
        let (aliases, next) = self.app.kms.list_aliases(i.marker.as_deref(), limit)?;
        let aliases: Vec<Value> = aliases
            .iter()
            .filter(|(_, target)| only.as_ref().is_none_or(|k| k == target))
            .map(|(name, target)| {
                let name = if name.starts_with("alias/") {
                    name.clone()
                } else {
                    format!("alias/{name}")
                };
                json!({"AliasName": name, "AliasArn": self.place.alias_arn(&name), "TargetKeyId": target})
            })
            .collect();
        let mut out = json!({"Aliases": aliases, "Truncated": next.is_some()});
        if let Some(n) = next {
            out["NextMarker"] = json!(n);
        }
        reply(out)
    }

    fn rotation(&self, days: Option<u32>) -> Result<Reply, ApiError> {
        let patch = UpdateKey {
            rotation_period_days: Some(days),
            ..UpdateKey::default()
        };
        self.app.kms.update_key(self.key()?, patch)?;
        reply(json!({}))
    }

    fn rotation_status(&self) -> Result<Reply, ApiError> {
        let k = self.app.kms.describe_key(self.key()?)?;
        let mut out = json!({
            "KeyRotationEnabled": k.rotation_period_days.is_some(),
            "KeyId": self.arn_of(&k.key_id),
        });
        if let Some(d) = k.rotation_period_days {
            out["RotationPeriodInDays"] = json!(d);
        }
        if let Some(n) = k.next_rotation_at {
            out["NextRotationDate"] = json!(n);
        }
        reply(out)
    }

    /// The engine's import scheme is AWS's `RSA_AES_KEY_WRAP_SHA_256` with an `RSA_4096` wrapping key: an
    /// ephemeral AES-256 key under RSA-OAEP-SHA-256, the material under it with AES-KWP.
    fn import_parameters(&self, i: ImportParametersInput) -> Result<Reply, ApiError> {
        if (i.wrapping_algorithm.as_str(), i.wrapping_key_spec.as_str())
            != ("RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
        {
            return Err(invalid(
                "the import scheme offered is WrappingAlgorithm RSA_AES_KEY_WRAP_SHA_256 with WrappingKeySpec RSA_4096",
            ));
        }
        let key = self.key()?;
        let p = self.app.kms.import_parameters(key)?;
        let id = self.app.kms.key_id_of(key)?;
        reply(json!({
            "KeyId": self.arn_of(&id),
            "ImportToken": blob(p.import_token.as_bytes()),
            "PublicKey": blob(&p.wrapping_public_key_der),
            "ParametersValidTo": p.expires_at,
        }))
        .map(|x| x.key(id, None))
    }

    fn import(&self, i: ImportInput) -> Result<Reply, ApiError> {
        if i.valid_to.is_some() || i.expiration_model.as_deref() == Some("KEY_MATERIAL_EXPIRES") {
            return Err(invalid(
                "expiring key material is not offered: leave ValidTo out (KEY_MATERIAL_DOES_NOT_EXPIRE)",
            ));
        }
        let token = String::from_utf8(i.import_token.0)
            .map_err(|_| invalid("ImportToken is not one this service issued"))?;
        let k =
            self.app
                .kms
                .import_key_material(self.key()?, &token, &i.encrypted_key_material.0)?;
        reply(json!({})).map(|x| x.key(k.key_id, Some(k.primary_version)))
    }

    /// Deletes all of the key's imported material; the key reports PendingImport until the same material
    /// is imported again. Held for approval where the key requires a quorum, as through the REST API.
    fn delete_material(&self, i: DeleteMaterialInput) -> Result<Reply, ApiError> {
        if i.key_material_id.is_some() {
            return Err(invalid(
                "KeyMaterialId is not offered: the deletion covers all of the key's imported material",
            ));
        }
        let outcome = keyward_rest::handlers::keys::delete_imported_material_or_hold(
            self.app,
            self.caller,
            self.key()?,
        )?;
        match outcome {
            Ok(k) => reply(json!({"KeyId": self.arn_of(&k.key_id)})).map(|x| x.key(k.key_id, None)),
            Err(held) => Err(self.held(held)),
        }
    }

    fn list_rotations(&self) -> Result<Reply, ApiError> {
        let key = self.key()?;
        let id = self.app.kms.key_id_of(key)?;
        let rotations: Vec<Value> = self
            .app
            .kms
            .list_versions(key)?
            .iter()
            .filter(|v| v.version > 1)
            .map(|v| json!({"KeyId": id, "RotationDate": v.created_at}))
            .collect();
        reply(json!({"Rotations": rotations, "Truncated": false}))
    }
}

/// `alias/NAME` as AWS requires it, with `alias/aws/` reserved.
fn alias_name(given: &str) -> Result<&str, ApiError> {
    match given.strip_prefix("alias/") {
        Some(n) if n.starts_with("aws/") => Err(invalid("alias/aws/ names are reserved for AWS")),
        Some(n) if !n.is_empty() => Ok(given),
        _ => Err(invalid("AliasName must begin with alias/")),
    }
}

fn uuid_text(bytes: [u8; 16]) -> String {
    let h = keyward_core::audit::hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
