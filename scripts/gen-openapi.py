#!/usr/bin/env python3
"""Writes crates/keyward-rest/openapi.json, the OpenAPI 3 description of Keyward's REST API v1.

The document is generated from the tables below so that every path, its action name and its schemas stay in
one place; CI checks that the server's routes and this document agree (keyward-server's openapi test).
"""
import json
import os

S = {"type": "string"}
B64 = {"type": "string", "format": "byte"}
INT = {"type": "integer", "minimum": 0}
BOOL = {"type": "boolean"}
DAYS = {"type": "integer", "minimum": 1, "maximum": 3650}
def BATCH(item):
    # Each item is an object validated on its own: one that does not fit the item schema (named in the
    # description) fails alone, with its error in its place of the answer, so the schema only says "object".
    return {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "object"},
            "description": f"Items as {item}, answered in order, each with its answer or its error (an item that does "
                           "not parse fails alone); the key in the path is checked once, and one that no item could "
                           "use fails the whole request"}


# An identity's grants: built-in roles, and names of policies (one that does not exist grants nothing).
ROLES = {"type": "array", "maxItems": 4, "items": {"type": "string", "enum": ["admin", "key-admin", "key-user", "auditor"]}}
POLICY_NAMES = {"type": "array", "maxItems": 100, "items": {"type": "string", "minLength": 1, "maxLength": 128}}

# A version number (u32; versions start at 1).
VERSION = {"type": "integer", "minimum": 1, "maximum": 4294967295}
# A key's id (UUID) or one of its aliases.
KEY_REF = {"type": "string", "pattern": "^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
                                        "|[0-9A-Fa-f]{32}|alias[/:][A-Za-z0-9/_.-]{1,256})$"}
# A certificate subject: TYPE=value pairs in certificate order, values escaped as RFC 4514 says.
SUBJECT = {"type": "string", "minLength": 1,
           "description": "TYPE=value pairs (CN, O, OU, C, ST, L, STREET, SERIALNUMBER; each once) separated by commas, "
                          "in the order the certificate holds them; a comma, plus, semicolon, quote, backslash, angle bracket "
                          "or equals sign in a value, or a space at its ends, is escaped with a backslash, and \\XX is a UTF-8 "
                          "byte in hex (RFC 4514). Example: CN=api.example.com, O=Example\\, Inc., C=DE"}
ALIAS = {"type": "string", "pattern": "^(alias[/:])?[A-Za-z0-9/_.-]{1,256}$"}
SPEC = {"type": "string", "enum": ["SYMMETRIC_DEFAULT", "AES_128", "AES_256", "SM4", "TDES", "RSA_2048", "RSA_3072",
                                   "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1",
                                   "ED25519", "SM2", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512",
                                   "ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ML_KEM_768", "ML_KEM_1024"]}
SIGNING = {"type": "string", "enum": [
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512", "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512", "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512", "ED25519", "SM2DSA", "ML_DSA_SHAKE_256"]}
MACS = {"type": "string", "enum": ["HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512"]}
CTX = {"type": "object", "additionalProperties": {"type": "string"}, "description": "Encryption context"}


def obj(props, required=(), extra=False):
    o = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        o["required"] = list(required)
    return o


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


schemas = {
    "Error": obj({"error": obj({"code": S, "message": S}, ["code", "message"])}, ["error"]),
    "ApprovalPending": obj({"approval_id": S, "status": {"type": "string", "enum": ["pending"]}}),
    "Health": obj({"status": {"type": "string", "enum": ["ok", "degraded", "sealed", "uninitialized", "unavailable"]}, "reason": S, "version": S, "node_id": S}),
    "SysStatus": obj({"initialized": BOOL, "sealed": BOOL, "threshold": INT, "shares": INT, "progress": INT,
                      "root_of_trust": {"type": "string", "enum": ["shamir", "pkcs11", "dev"]},
                      "fips": {"type": "boolean", "description": "the FIPS build, on AWS-LC's validated module in FIPS mode"},
                      "crypto_module": obj({"name": S, "version": S})}),
    "InitRequest": obj({"shares": INT, "threshold": INT}, ["shares", "threshold"]),
    "InitResponse": obj({"shares": {"type": "array", "items": S}, "root_token": S, "root_token_id": S}),
    "GenerateRootRequest": obj({"shares": {"type": "array", "items": S}}, ["shares"]),
    "GenerateRootResponse": obj({"root_token": S, "token_id": S}),
    "UnsealRequest": obj({"share": S}, ["share"]),
    "RotateRootResponse": obj({"generation": INT}),
    "BackupResponse": obj({"backup": B64}),
    "RestoreRequest": obj({"backup": B64, "shares": {"type": "array", "items": S,
                           "description": "A threshold of unseal shares: required on a fresh node, refused otherwise"},
                           "force": BOOL}, ["backup"]),
    "RestoreResponse": obj({"restored_keys": INT, "initialized": BOOL}),
    "Quorum": obj({"approvals": {"type": "integer", "minimum": 1, "maximum": 16}}, ["approvals"]),
    "CreateKeyRequest": obj({
        "spec": SPEC,
        "usage": {"type": "string", "enum": ["ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"]},
        "description": S, "alias": ALIAS, "tags": {"type": "object", "additionalProperties": S},
        "rotation_period_days": DAYS, "exportable": BOOL,
        "origin": {"type": "string", "enum": ["KEYWARD", "HSM", "EXTERNAL"]}, "quorum": ref("Quorum"), "allow_legacy": BOOL,
        "blind_index_bits": {"type": "integer", "minimum": 16, "maximum": 256, "multipleOf": 8},
    }, ["spec"]),
    "Key": obj({"key_id": S, "alias": S, "spec": S, "usage": S,
                "state": {"type": "string", "enum": ["Enabled", "Disabled", "PendingDeletion", "Destroyed"]},
                "description": S, "tags": {"type": "object", "additionalProperties": S}, "created_at": {"type": "string", "format": "date-time"},
                "primary_version": INT, "min_decryption_version": INT, "rotation_period_days": INT,
                "next_rotation_at": {"type": "string", "format": "date-time"}, "last_rotated_at": {"type": "string", "format": "date-time"},
                "deletion_date": {"type": "string", "format": "date-time"}, "origin": S, "exportable": BOOL, "quorum": ref("Quorum"),
                "blind_index_bits": INT,
                "pending_import": {"type": "boolean", "description": "the imported material of this EXTERNAL key was deleted: it refuses every cryptographic call until the same material is imported again"},
                "encryption_algorithms": {"type": "array", "items": S,
                                          "description": "what the key can encrypt with where it lives (a PKCS#11 token may offer fewer than the spec); on creation and description"}}),
    "KeyList": obj({"keys": {"type": "array", "items": ref("Key")}, "next_token": {"type": "string", "nullable": True}}),
    "UpdateKeyRequest": obj({"description": S, "tags": {"type": "object", "additionalProperties": S},
                             "rotation_period_days": {**DAYS, "nullable": True}, "min_decryption_version": VERSION}),
    "Version": obj({"version": INT, "state": {"type": "string", "enum": ["Enabled", "Disabled", "Archived", "PendingImport", "Destroyed"]},
                    "created_at": {"type": "string", "format": "date-time"}, "destroyed_at": {"type": "string", "format": "date-time"}}),
    "VersionList": obj({"versions": {"type": "array", "items": ref("Version")}, "next_token": {"type": "string", "nullable": True}}),
    "SetPrimaryRequest": obj({"version": VERSION}, ["version"]),
    "ScheduleDeletionRequest": obj({"pending_days": {"type": "integer", "minimum": 7, "maximum": 30}}),
    "PublicKey": obj({"key_id": S, "version": INT, "spec": S, "public_key_pem": S, "public_key_der": B64}),
    "ImportParameters": obj({"wrapping_public_key_der": B64, "import_token": S, "expires_at": {"type": "string", "format": "date-time"}}),
    "ImportRequest": obj({"import_token": S, "wrapped_key_material": B64}, ["import_token", "wrapped_key_material"]),
    "ExportRequest": obj({"wrapping_public_key_der": B64, "version": VERSION}, ["wrapping_public_key_der"]),
    "ExportResponse": obj({"wrapped_key_material": B64}),
    "PutAliasRequest": obj({"key_id": KEY_REF}, ["key_id"]),
    "Alias": obj({"alias": S, "key_id": S}),
    "AliasList": obj({"aliases": {"type": "array", "items": ref("Alias")}, "next_token": {"type": "string", "nullable": True}}),
    "EncryptItem": obj({"plaintext": B64, "context": CTX, "algorithm": {"type": "string", "enum": ["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"]}}, ["plaintext"]),
    # In a batch, a value the service checks per item (an unknown algorithm, the key a ciphertext names) fails
    # only its item: the answer is 200 with that item's error in its place. The key in the path is checked once:
    # one that no item could use (unknown, not Enabled, not for encryption) fails the whole request.
    "EncryptBatchItem": obj({"plaintext": B64, "context": CTX, "algorithm": {"type": "string", "description": "as in a single request"}}, ["plaintext"]),
    "EncryptRequest": {"oneOf": [ref("EncryptItem"), obj({"items": BATCH("EncryptBatchItem")}, ["items"])]},
    "EncryptResponse": obj({"ciphertext": B64, "key_id": S, "version": INT}),
    "DecryptItem": obj({"ciphertext": B64, "context": CTX, "algorithm": S}, ["ciphertext"]),
    "DecryptRequest": {"oneOf": [ref("DecryptItem"), obj({"items": BATCH("DecryptItem")}, ["items"])]},
    "DecryptResponse": obj({"plaintext": B64, "key_id": S, "version": INT}),
    "ReencryptItem": obj({"ciphertext": B64, "context": CTX, "new_context": CTX}, ["ciphertext"]),
    "ReencryptRequest": {"oneOf": [ref("ReencryptItem"), obj({"items": BATCH("ReencryptItem")}, ["items"])]},
    "DataKeyRequest": obj({"spec": {"type": "string", "enum": ["AES_256", "AES_128"]}, "context": CTX, "include_plaintext": BOOL}, ["spec"]),
    "DataKeyResponse": obj({"plaintext": B64, "ciphertext": B64, "key_id": S, "version": INT}),
    "DataKeyPairRequest": obj({"spec": {"type": "string", "enum": ["RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
                                                                   "ECC_NIST_P521", "ECC_SECG_P256K1", "ED25519", "SM2"]}, "context": CTX, "include_plaintext": BOOL}, ["spec"]),
    "DataKeyPairResponse": obj({"public_key_der": B64, "private_key_ciphertext": B64, "private_key_der": B64, "key_id": S, "version": INT}),
    "SignRequest": obj({"message": B64, "digest": B64, "external_mu": B64, "algorithm": SIGNING}, ["algorithm"]),
    "SignResponse": obj({"signature": B64, "key_id": S, "version": INT, "algorithm": S}),
    "VerifyRequest": obj({"message": B64, "digest": B64, "external_mu": B64, "signature": B64, "algorithm": SIGNING, "version": VERSION}, ["signature", "algorithm"]),
    "Validity": obj({"valid": BOOL}),
    "MacRequest": obj({"message": B64, "algorithm": MACS}, ["message", "algorithm"]),
    "MacResponse": obj({"mac": B64, "key_id": S, "version": INT}),
    "VerifyMacRequest": obj({"message": B64, "mac": B64, "algorithm": MACS}, ["message", "mac", "algorithm"]),
    "DeriveRequest": obj({"context": B64, "length": {"type": "integer", "minimum": 16, "maximum": 64}, "include_plaintext": BOOL}, ["context", "length"]),
    "DeriveResponse": obj({"ciphertext": B64, "plaintext": B64}),
    "AgreeRequest": obj({"peer_public_key_der": B64}, ["peer_public_key_der"]),
    "AgreeResponse": obj({"shared_secret": B64}),
    "ProtectItem": obj({"value": S, "type": ref("FieldType"),
                        "mode": {"type": "string", "enum": ["encrypt", "deterministic", "fpe"]}, "context": CTX,
                        "mask": obj({"keep_first": INT, "keep_last": INT, "char": {"type": "string", "minLength": 1, "maxLength": 1}})},
                       ["value", "type"]),
    "ProtectRequest": obj({"items": BATCH("ProtectItem")}, ["items"]),
    "ProtectedItem": obj({"ciphertext": B64, "masked": S, "blind_index": S}),
    "UnprotectItem": obj({"ciphertext": B64, "type": ref("FieldType"), "context": CTX}, ["ciphertext", "type"]),
    "UnprotectRequest": obj({"items": BATCH("UnprotectItem")}, ["items"]),
    "UnprotectedItem": obj({"value": S}),
    "BlindIndexRequestItem": obj({"value": S, "type": ref("FieldType")}, ["value", "type"]),
    "BlindIndexRequest": obj({"items": BATCH("BlindIndexRequestItem")}, ["items"]),
    "BlindIndexItem": obj({"blind_index": S}),
    "FieldType": {"type": "string", "enum": ["phone", "id_card_cn", "bank_card", "email", "name", "address", "text", "digits", "alnum"]},
    "DecapsulateRequest": obj({"ciphertext": B64, "version": VERSION, "as_data_key": BOOL, "wrapping_key": S,
                               "context": CTX, "include_plaintext": BOOL}, ["ciphertext"]),
    "DecapsulateResponse": obj({"shared_secret": B64, "key_id": S, "version": INT}),
    "RandomRequest": obj({"length": {"type": "integer", "minimum": 1, "maximum": 1024}}, ["length"]),
    "RandomResponse": obj({"random": B64}),
    "CsrRequest": obj({"subject": SUBJECT, "sans": {"type": "array", "items": S}}, ["subject"]),
    "CsrResponse": obj({"csr_pem": S}),
    "CertificateRequest": obj({"csr_pem": S, "subject": SUBJECT, "days": {"type": "integer", "minimum": 1, "maximum": 36500}, "is_ca": BOOL}, ["days"]),
    "CertificateResponse": obj({"certificate_pem": S}),
    "CreateIdentityRequest": obj({"name": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$", "description": "not root"}, "kind": {"type": "string", "enum": ["service", "user"]},
                                  "roles": ROLES, "policies": POLICY_NAMES, "password": {"type": "string", "minLength": 12, "maxLength": 1024},
                                  "certificate_subject": {"type": "string", "minLength": 1, "maxLength": 1024,
                                                          "description": "a client certificate subject (mutual TLS) that authenticates as this identity"}},
                                 ["name", "kind"]),
    "UpdateIdentityRequest": obj({"roles": ROLES, "policies": POLICY_NAMES}),
    "Identity": obj({"name": S, "kind": S, "roles": {"type": "array", "items": S}, "policies": {"type": "array", "items": S},
                     "created_at": {"type": "string", "format": "date-time"}, "password": BOOL, "mfa": BOOL,
                     "certificate_subject": S}),
    "CallerIdentity": obj({"name": S, "roles": {"type": "array", "items": {"type": "string", "enum": ["admin", "key-admin", "key-user", "auditor"]}},
                           "policies": {"type": "array", "items": S}, "authenticated_by": {"type": "string", "enum": ["token", "certificate"]},
                           "token_id": S, "expires_at": S, "mfa": BOOL},
                          ["name", "roles", "policies", "authenticated_by", "mfa"]),
    "IdentityList": obj({"identities": {"type": "array", "items": ref("Identity")}, "next_token": {"type": "string", "nullable": True}}),
    "PolicyNames": obj({"policies": {"type": "array", "items": S}, "next_token": {"type": "string", "nullable": True}}),
    "TokenRequest": obj({"ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 31622400}}),
    "TokenResponse": obj({"token": S, "token_id": S, "expires_at": {"type": "string", "format": "date-time"}}),
    "MfaResponse": obj({"totp_uri": S}),
    "AccessKey": obj({"access_key_id": S, "secret_access_key": {"type": "string", "description": "shown once"},
                      "identity": S, "created_at": {"type": "string", "format": "date-time"}}),
    "AccessKeyList": obj({"access_keys": {"type": "array", "items": obj({
        "access_key_id": S, "created_at": {"type": "string", "format": "date-time"},
        "last_used_at": {"type": "string", "format": "date-time", "nullable": True}})}}),
    "TokenList": obj({"tokens": {"type": "array", "items": obj({
        "token_id": S, "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"}, "mfa": BOOL})}, "next_token": {"type": "string", "nullable": True}}),
    "Approval": {"type": "object", "properties": {"approval_id": S, "status": {"type": "string", "enum": ["pending", "executing", "executed", "rejected", "expired", "failed"]},
                 "operation": {"type": "string", "enum": ["schedule_deletion", "destroy_version", "export", "rotate_root", "put_policy", "delete_policy"]},
                 "requested_by": S, "required": INT, "approvals": {"type": "array", "items": S}, "rejected_by": S,
                 "created_at": {"type": "string", "format": "date-time"}, "expires_at": INT, "result": {"type": "object"},
                 "claimed_by": {"type": "string", "description": "node id and process run that ran the operation"},
                 "claimed_at": {"type": "integer", "description": "Unix seconds of the claim; a claim older than an hour is ended as abandoned"}}},
    "ApprovalList": obj({"approvals": {"type": "array", "items": ref("Approval")}, "next_token": {"type": "string", "nullable": True}}),
    "Policy": obj({"statements": {"type": "array", "minItems": 1, "maxItems": 100, "items": obj({
        "effect": {"type": "string", "enum": ["allow", "deny"]},
        "actions": {"type": "array", "minItems": 1, "items": S, "description": "kms:<Action>, * wildcards"},
        "resources": {"type": "array", "minItems": 1, "items": S, "description": "key/<id>, alias/<name>, *; * wildcards"},
        "conditions": obj({"context_equals": {"type": "object", "additionalProperties": S},
                           "source_cidr": {"type": "array", "items": S}, "mfa": BOOL}),
    }, ["effect", "actions", "resources"])}}, ["statements"]),
    "LoginRequest": obj({"name": S, "password": S, "totp": S}, ["name", "password"]),
    "LoginResponse": obj({"token": S, "token_id": S, "expires_at": {"type": "string", "format": "date-time"}, "mfa": BOOL}),
    "AuditRecord": obj({"seq": INT, "time": {"type": "string", "format": "date-time"}, "request_id": S, "principal": S, "source_ip": S,
                        "action": S, "key_id": S, "version": INT, "source_key_ids": {"type": "array", "items": S},
                        "resource": {"type": "string", "description": "what the action concerns other than a key: identity/<name>, policy/<name>, token/<id>, approval/<id>"},
                        "outcome": {"type": "string", "enum": ["allow", "deny", "error"]},
                        "error_code": S, "prev_hash": S, "hash": S}),
    "AuditPage": obj({"records": {"type": "array", "items": ref("AuditRecord")}, "next_token": {"type": "string", "nullable": True}}),
    "Checkpoint": obj({"seq": INT, "head": S, "time": {"type": "string", "format": "date-time"}, "public_key": S, "signature": S},
                       ["seq", "head", "time", "public_key", "signature"]),
    "VerifyAgainstCheckpoint": obj({"checkpoint": ref("Checkpoint")}, ["checkpoint"]),
    "AuditVerification": obj({"valid": BOOL, "records": INT, "head": S, "first_bad_seq": INT,
                              "pruned_through": {**INT, "description": "records through this one were pruned; the chain is checked from the next"}}),
    "PruneAuditRequest": obj({"through_seq": {"type": "integer", "minimum": 1,
                                              "description": "the last record to delete; all through it must be older than audit_retention_days, verify, and not be the newest"}},
                             ["through_seq"]),
    "PruneAuditResponse": obj({"pruned": INT, "pruned_through": INT}),
    "VerifyArchiveRequest": obj({"records": {"type": "array", "minItems": 1, "maxItems": 1000, "items": ref("ArchivedRecord")},
                                 "prev_hash": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
                                               "description": "hash of the record before the first (the previous part's head); omitted when the archive starts the log"}},
                                ["records"]),
    "ArchivedRecord": {**obj({}), "description": "an audit record as GET /v1/audit returned it"},
    "ArchiveVerification": obj({"valid": BOOL, "records": INT, "head": S, "first_bad_seq": INT, "continues_into_log": BOOL}),
}
# An archived record is a record as the log returned it: every field it always carries is required.
# The fields a record leaves out when empty may also be sent as null.
schemas["ArchivedRecord"] = obj({name: ({**prop, "nullable": True} if name in ("key_id", "version", "resource", "error_code") else prop)
                                 for name, prop in schemas["AuditRecord"]["properties"].items()},
                                ["seq", "time", "request_id", "principal", "source_ip", "action", "outcome", "prev_hash", "hash"])


def answer(single):
    """A crypto call's answer: the single form, or a batch whose items are answers or errors, in order."""
    items = {"type": "array", "items": {"oneOf": [ref(single), ref("Error")]}}
    return {"oneOf": [ref(single), obj({"items": items}, ["items"])]}


for name in ["EncryptResponse", "DecryptResponse"]:
    schemas[name.replace("Response", "Answer")] = answer(name)
# Field protection answers item by item, each an answer or that item's error.
for name in ["ProtectedItem", "UnprotectedItem", "BlindIndexItem"]:
    schemas[name + "s"] = obj({"items": {"type": "array", "items": {"oneOf": [ref(name), ref("Error")]}}}, ["items"])
# Decapsulation answers the secret, or with "as_data_key": true the data key derived from it (data-key's answer).
schemas["DecapsulateAnswer"] = {"oneOf": [ref("DecapsulateResponse"), ref("DataKeyResponse")]}

KEY = {"name": "key", "in": "path", "required": True, "description": "Key id (UUID), alias%2FNAME or alias:NAME",
       "schema": KEY_REF}
LIMIT = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
         {"name": "next_token", "in": "query", "schema": S}]

# (method, path, action, request schema or None, (status, response schema or None), parameters, public)
ops = [
    ("get", "/v1/health", "kms:Health", None, (200, "Health"), [], True),
    ("get", "/v1/sys/status", "kms:Status", None, (200, "SysStatus"), [], True),
    ("post", "/v1/sys/init", "kms:Init", "InitRequest", (200, "InitResponse"), [], True),
    ("post", "/v1/sys/unseal", "kms:Unseal", "UnsealRequest", (200, "SysStatus"), [], True),
    ("post", "/v1/sys/seal", "kms:Seal", None, (204, None), [], False),
    ("post", "/v1/sys/generate-root", "kms:GenerateRoot", "GenerateRootRequest", (200, "GenerateRootResponse"), [], True),
    ("post", "/v1/sys/rotate-root", "kms:RotateRoot", None, (200, "RotateRootResponse"), [], False),
    ("post", "/v1/sys/backup", "kms:Backup", None, (200, "BackupResponse"), [], False),
    # Public on an uninitialised node (audited as kms:Init, authenticated by the shares); admin otherwise.
    ("post", "/v1/sys/restore", "kms:Restore", "RestoreRequest", (200, "RestoreResponse"), [], False),
    ("get", "/metrics", "kms:GetMetrics", None, (200, None), [], False),
    ("get", "/v1/openapi.json", "kms:OpenApi", None, (200, None), [], True),
    ("post", "/v1/keys", "kms:CreateKey", "CreateKeyRequest", (201, "Key"), [], False),
    ("get", "/v1/keys", "kms:ListKeys", None, (200, "KeyList"), LIMIT + [
        {"name": "state", "in": "query", "schema": {"type": "string", "enum": ["Enabled", "Disabled", "PendingDeletion", "Destroyed"]}},
        {"name": "spec", "in": "query", "schema": SPEC},
        {"name": "tag", "in": "query", "schema": {"type": "string", "pattern": "^[^:]*:"}, "description": "key:value"}], False),
    ("get", "/v1/keys/{key}", "kms:DescribeKey", None, (200, "Key"), [KEY], False),
    ("patch", "/v1/keys/{key}", "kms:UpdateKey", "UpdateKeyRequest", (200, "Key"), [KEY], False),
    ("post", "/v1/keys/{key}/enable", "kms:EnableKey", None, (200, "Key"), [KEY], False),
    ("post", "/v1/keys/{key}/disable", "kms:DisableKey", None, (200, "Key"), [KEY], False),
    ("post", "/v1/keys/{key}/rotate", "kms:RotateKey", None, (200, "Key"), [KEY], False),
    ("get", "/v1/keys/{key}/versions", "kms:ListKeyVersions", None, (200, "VersionList"), [KEY] + LIMIT, False),
    ("post", "/v1/keys/{key}/versions/{n}/{action}", "kms:EnableKeyVersion | kms:DisableKeyVersion | kms:ArchiveKeyVersion | kms:RestoreKeyVersion | kms:DestroyKeyVersion",
     None, (200, "Version"), [KEY, {"name": "n", "in": "path", "required": True, "schema": VERSION},
                              {"name": "action", "in": "path", "required": True, "schema": {"type": "string", "enum": ["enable", "disable", "archive", "restore", "destroy"]}}], False),
    ("post", "/v1/keys/{key}/primary", "kms:SetPrimaryVersion", "SetPrimaryRequest", (200, "Key"), [KEY], False),
    ("post", "/v1/keys/{key}/schedule-deletion", "kms:ScheduleKeyDeletion", "ScheduleDeletionRequest", (200, "Key"), [KEY], False),
    ("post", "/v1/keys/{key}/cancel-deletion", "kms:CancelKeyDeletion", None, (200, "Key"), [KEY], False),
    ("get", "/v1/keys/{key}/public-key", "kms:GetPublicKey", None, (200, "PublicKey"), [KEY], False),
    ("get", "/v1/keys/{key}/import-parameters", "kms:GetImportParameters", None, (200, "ImportParameters"), [KEY], False),
    ("post", "/v1/keys/{key}/import", "kms:ImportKeyMaterial", "ImportRequest", (200, "Key"), [KEY], False),
    ("post", "/v1/keys/{key}/delete-imported-material", "kms:DeleteImportedKeyMaterial", None, (200, "Key"), [KEY], False),
    ("post", "/v1/keys/{key}/export", "kms:ExportKey", "ExportRequest", (200, "ExportResponse"), [KEY], False),
    ("get", "/v1/aliases", "kms:ListAliases", None, (200, "AliasList"), LIMIT, False),
    ("put", "/v1/aliases/{name}", "kms:PutAlias", "PutAliasRequest", (200, "Alias"), [{"name": "name", "in": "path", "required": True, "schema": ALIAS}], False),
    ("delete", "/v1/aliases/{name}", "kms:DeleteAlias", None, (204, None), [{"name": "name", "in": "path", "required": True, "schema": ALIAS}], False),
    ("post", "/v1/keys/{key}/encrypt", "kms:Encrypt", "EncryptRequest", (200, "EncryptAnswer"), [KEY], False),
    ("post", "/v1/decrypt", "kms:Decrypt", "DecryptRequest", (200, "DecryptAnswer"), [], False),
    ("post", "/v1/keys/{key}/decrypt", "kms:Decrypt", "DecryptRequest", (200, "DecryptAnswer"), [KEY], False),
    ("post", "/v1/keys/{key}/reencrypt", "kms:ReEncrypt", "ReencryptRequest", (200, "EncryptAnswer"), [KEY], False),
    ("post", "/v1/keys/{key}/data-key", "kms:GenerateDataKey", "DataKeyRequest", (200, "DataKeyResponse"), [KEY], False),
    ("post", "/v1/keys/{key}/data-key-pair", "kms:GenerateDataKeyPair", "DataKeyPairRequest", (200, "DataKeyPairResponse"), [KEY], False),
    ("post", "/v1/keys/{key}/sign", "kms:Sign", "SignRequest", (200, "SignResponse"), [KEY], False),
    ("post", "/v1/keys/{key}/verify", "kms:Verify", "VerifyRequest", (200, "Validity"), [KEY], False),
    ("post", "/v1/keys/{key}/mac", "kms:GenerateMac", "MacRequest", (200, "MacResponse"), [KEY], False),
    ("post", "/v1/keys/{key}/verify-mac", "kms:VerifyMac", "VerifyMacRequest", (200, "Validity"), [KEY], False),
    ("post", "/v1/keys/{key}/derive", "kms:DeriveKey", "DeriveRequest", (200, "DeriveResponse"), [KEY], False),
    ("post", "/v1/keys/{key}/agree", "kms:DeriveSharedSecret", "AgreeRequest", (200, "AgreeResponse"), [KEY], False),
    ("post", "/v1/keys/{key}/protect", "kms:Protect", "ProtectRequest", (200, "ProtectedItems"), [KEY], False),
    ("post", "/v1/keys/{key}/unprotect", "kms:Unprotect", "UnprotectRequest", (200, "UnprotectedItems"), [KEY], False),
    ("post", "/v1/keys/{key}/blind-index", "kms:BlindIndex", "BlindIndexRequest", (200, "BlindIndexItems"), [KEY], False),
    ("post", "/v1/keys/{key}/decapsulate", "kms:Decapsulate", "DecapsulateRequest", (200, "DecapsulateAnswer"), [KEY], False),
    ("post", "/v1/random", "kms:GenerateRandom", "RandomRequest", (200, "RandomResponse"), [], False),
    ("post", "/v1/keys/{key}/csr", "kms:CreateCsr", "CsrRequest", (200, "CsrResponse"), [KEY], False),
    ("post", "/v1/keys/{key}/certificate", "kms:IssueCertificate", "CertificateRequest", (200, "CertificateResponse"), [KEY], False),
    ("post", "/v1/identities", "kms:CreateIdentity", "CreateIdentityRequest", (201, "Identity"), [], False),
    ("get", "/v1/identities", "kms:ListIdentities", None, (200, "IdentityList"), LIMIT, False),
    ("get", "/v1/identities/{name}", "kms:GetIdentity", None, (200, "Identity"), [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    # Roles and policies changed here apply at once to the tokens the identity holds.
    ("patch", "/v1/identities/{name}", "kms:UpdateIdentity", "UpdateIdentityRequest", (200, "Identity"),
     [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    # Revokes every token of the identity and frees its certificate subject.
    ("delete", "/v1/identities/{name}", "kms:DeleteIdentity", None, (204, None), [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    ("post", "/v1/identities/{name}/tokens", "kms:CreateToken", "TokenRequest", (201, "TokenResponse"),
     [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    # Live tokens by id, never their values (`root` lists the root tokens).
    ("get", "/v1/identities/{name}/tokens", "kms:ListTokens", None, (200, "TokenList"),
     [{"name": "name", "in": "path", "required": True, "schema": S}] + LIMIT, False),
    # Access keys sign requests of the AWS KMS protocol (Signature Version 4) as their identity; at most two each.
    ("post", "/v1/identities/{name}/access-keys", "kms:CreateAccessKey", None, (201, "AccessKey"),
     [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    ("get", "/v1/identities/{name}/access-keys", "kms:ListAccessKeys", None, (200, "AccessKeyList"),
     [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    ("delete", "/v1/identities/{name}/access-keys/{access_key_id}", "kms:DeleteAccessKey", None, (204, None),
     [{"name": "name", "in": "path", "required": True, "schema": S},
      {"name": "access_key_id", "in": "path", "required": True, "schema": S}], False),
    ("delete", "/v1/tokens/{token_id}", "kms:RevokeToken", None, (204, None), [{"name": "token_id", "in": "path", "required": True, "schema": S}], False),
    ("post", "/v1/identities/{name}/mfa", "kms:EnrollMfa", None, (200, "MfaResponse"),
     [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    ("post", "/v1/auth/login", "kms:Login", "LoginRequest", (200, "LoginResponse"), [], True),
    ("get", "/v1/auth/self", "kms:GetCallerIdentity", None, (200, "CallerIdentity"), [], False),
    ("get", "/v1/policies", "kms:ListPolicies", None, (200, "PolicyNames"), LIMIT, False),
    ("put", "/v1/policies/{name}", "kms:PutPolicy", "Policy", (200, "Policy"), [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    ("get", "/v1/policies/{name}", "kms:GetPolicy", None, (200, "Policy"), [{"name": "name", "in": "path", "required": True, "schema": S}], False),
    ("delete", "/v1/policies/{name}", "kms:DeletePolicy", None, (204, None), [{"name": "name", "in": "path", "required": True, "schema": S},
      {"name": "detach", "in": "query", "schema": {"type": "boolean"}, "description": "take the policy from every identity holding it (otherwise refused while attached)"}], False),
    ("get", "/v1/approvals", "kms:ListApprovals", None, (200, "ApprovalList"), [{"name": "status", "in": "query", "schema": {"type": "string", "enum": [
         "pending", "executing", "executed", "rejected", "expired", "failed"]}}] + LIMIT, False),
    ("get", "/v1/approvals/{id}", "kms:GetApproval", None, (200, "Approval"), [{"name": "id", "in": "path", "required": True, "schema": S}], False),
    ("post", "/v1/approvals/{id}/approve", "kms:Approve", None, (200, "Approval"), [{"name": "id", "in": "path", "required": True, "schema": S}], False),
    ("post", "/v1/approvals/{id}/reject", "kms:Reject", None, (200, "Approval"), [{"name": "id", "in": "path", "required": True, "schema": S}], False),
    ("get", "/v1/audit", "kms:ReadAudit", None, (200, "AuditPage"), LIMIT + [
        {"name": n, "in": "query", "schema": S} for n in ["since", "until", "principal", "key_id", "resource", "request_id", "action", "outcome"]], False),
    ("get", "/v1/audit/verify", "kms:VerifyAudit", None, (200, "AuditVerification"), [], False),
    ("post", "/v1/audit/verify", "kms:VerifyAudit", "VerifyAgainstCheckpoint", (200, "AuditVerification"), [], False),
    ("get", "/v1/reports/compliance", "kms:GetComplianceReport", None, (200, None),
     [{"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "html"]}},
      {"name": "dormant_days", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 3650}}], False),
    ("get", "/v1/audit/checkpoint", "kms:ExportAuditCheckpoint", None, (200, "Checkpoint"), [], False),
    ("post", "/v1/audit/prune", "kms:PruneAudit", "PruneAuditRequest", (200, "PruneAuditResponse"), [], False),
    ("post", "/v1/audit/verify-archive", "kms:VerifyAudit", "VerifyArchiveRequest", (200, "ArchiveVerification"), [], False),
]

ERRORS = {
    "400": "ValidationError, IncorrectKeyUsage, InvalidCiphertext or IncorrectKeyMaterial",
    "401": "Unauthenticated", "403": "AccessDenied", "404": "NotFound",
    "409": "AlreadyExists, KeyDisabled, KeyPendingDeletion, KeyDestroyed or InvalidState",
    "408": "RequestTimeout: the body did not arrive in time or stopped short",
    "413": "PayloadTooLarge", "415": "UnsupportedMediaType: a body not sent as application/json",
    "429": "Throttled", "503": "Sealed or Unavailable",
}

# An optional field of a request may be sent as null, which means the same as leaving it out.
for name in {op[3] for op in ops if op[3]} | {"EncryptItem", "EncryptBatchItem", "DecryptItem", "ReencryptItem",
                                                 "ProtectItem", "UnprotectItem", "BlindIndexRequestItem"}:
    schema = schemas[name]
    for field, prop in schema.get("properties", {}).items():
        if field in schema.get("required", []):
            continue
        if "$ref" in prop:
            # `nullable` beside a `$ref` is ignored: the referenced object is written out in place.
            prop = schemas[prop["$ref"].rsplit("/", 1)[1]]
        prop = {**prop, "nullable": True}
        if "enum" in prop:
            # In OpenAPI 3.0 an enum limits a nullable value too: null must be one of its values.
            prop["enum"] = prop["enum"] + [None]
        schema["properties"][field] = prop

# Destructive operations wait for approvals when the key (or the service) asks for a quorum.
HELD_FOR_APPROVAL = {
    ("post", "/v1/keys/{key}/schedule-deletion"), ("post", "/v1/keys/{key}/versions/{n}/{action}"),
    ("post", "/v1/keys/{key}/export"), ("post", "/v1/sys/rotate-root"), ("post", "/v1/audit/prune"),
    ("put", "/v1/policies/{name}"), ("delete", "/v1/policies/{name}"),
}

paths = {}
for method, path, action, req, (status, resp), params, public in ops:
    op = {"operationId": f"{method}{path.replace('/', '_').replace('{', '').replace('}', '').replace('-', '_')}",
          "summary": action, "x-keyward-action": action, "parameters": params, "responses": {}}
    if public:
        op["security"] = []
    if req:
        # A request with no body is read as `{}`: the body may be left out where no field is required.
        body_required = "oneOf" in schemas[req] or bool(schemas[req].get("required"))
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": ref(req)}}}
    if resp:
        op["responses"][str(status)] = {"description": "Success", "content": {"application/json": {"schema": ref(resp)}}}
    else:
        op["responses"][str(status)] = {"description": "Success"}
    for code, text in ERRORS.items():
        op["responses"][code] = {"description": text, "content": {"application/json": {"schema": ref("Error")}}}
    if (method, path) in HELD_FOR_APPROVAL:
        op["responses"]["202"] = {"description": "Held until a quorum approves it (the key's or the service's)",
                                  "content": {"application/json": {"schema": ref("ApprovalPending")}}}
    if path == "/v1/health":
        op["responses"]["503"] = {"description": "Not serving: sealed, uninitialised or the store unavailable",
                                  "content": {"application/json": {"schema": ref("Health")}}}
    paths.setdefault(path, {})[method] = op

# Links say where a response's values go next: a new key's id into every call on a key, and a held operation's
# approval id into the decisions on it (clients and stateful test tools follow them).
key_ops = [op for methods in paths.values() for op in methods.values() if KEY in op["parameters"]]
paths["/v1/keys"]["post"]["responses"]["201"]["links"] = {
    op["operationId"]: {"operationId": op["operationId"], "parameters": {
        "key": "$response.body#/key_id",
        **({"n": "$response.body#/primary_version"} if any(p["name"] == "n" for p in op["parameters"]) else {})}}
    for op in key_ops}
for methods in paths.values():
    for op in methods.values():
        if "202" in op["responses"]:
            op["responses"]["202"]["links"] = {
                decision: {"operationId": f"post_v1_approvals_id_{decision}", "parameters": {"id": "$response.body#/approval_id"}}
                for decision in ["approve", "reject"]}
            op["responses"]["202"]["links"]["show"] = {
                "operationId": "get_v1_approvals_id", "parameters": {"id": "$response.body#/approval_id"}}

doc = {
    "openapi": "3.0.3",
    "info": {"title": "Keyward REST API", "version": "1.0.0",
             "description": "Key management service. Binary values are standard base64 with padding. Every response carries x-request-id."},
    "servers": [{"url": "http://127.0.0.1:9700"}],
    "security": [{"bearer": []}],
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": schemas},
    "paths": paths,
}

out = os.path.join(os.path.dirname(__file__), "..", "crates", "keyward-rest", "openapi.json")
with open(out, "w") as f:
    json.dump(doc, f, indent=1, sort_keys=False)
    f.write("\n")
print(f"wrote {len(paths)} paths")
