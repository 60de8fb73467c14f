"""The AWS KMS protocol, through the real clients: boto3, the AWS CLI and the AWS Encryption SDK, pointed at
Keyward with nothing changed but the endpoint and the access key."""
import base64
import json
import os
import shutil
import subprocess
import uuid

import boto3
import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
import pytest
import requests

from conftest import ROOT

REGION = "eu-west-3"


def access_key(api, name, roles=None, policies=None):
    """A fresh identity with an access key: (id, secret)."""
    body = {"name": name, "kind": "service", "roles": roles or [], "policies": policies or []}
    api.call("POST", "/v1/identities", body, expect=201)
    k = api.call("POST", f"/v1/identities/{name}/access-keys", expect=201)
    assert k["identity"] == name and len(k["secret_access_key"]) == 40
    return k["access_key_id"], k["secret_access_key"]


def client(server, key, region=REGION):
    return boto3.client(
        "kms", endpoint_url=server["base"], region_name=region,
        aws_access_key_id=key[0], aws_secret_access_key=key[1], aws_session_token=None)


@pytest.fixture(scope="module")
def admin_key(server):
    from conftest import Api
    return access_key(Api(server["base"]), f"aws-admin-{uuid.uuid4().hex[:8]}", roles=["admin"])


@pytest.fixture
def kms(server, admin_key):
    return client(server, admin_key)


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def raises(name, fn, *args, **kwargs):
    with pytest.raises(ClientError) as e:
        fn(*args, **kwargs)
    assert code(e) == name, e.value.response
    return e.value.response


def audit(api, **query):
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return api.call("GET", f"/v1/audit?{q}&limit=1000")["records"]


def test_symmetric_keys_work_and_ciphertexts_cross_between_the_apis(kms, api):
    meta = kms.create_key(Description="orders", Tags=[{"TagKey": "team", "TagValue": "pay"}])["KeyMetadata"]
    key_id, arn = meta["KeyId"], meta["Arn"]
    # The creation is on the record, naming the key it made, as a REST creation is.
    created = audit(api, action="kms:CreateKey", key_id=key_id)
    assert [r["outcome"] for r in created] == ["allow"], created
    assert arn == f"arn:aws:kms:{REGION}:000000000000:key/{key_id}"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["KeyState"] == "Enabled" and meta["Enabled"] and meta["Origin"] == "AWS_KMS"
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"] and meta["KeyManager"] == "CUSTOMER"
    # Every way of naming the key.
    alias = f"alias/orders-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    alias_arn = f"arn:aws:kms:{REGION}:000000000000:{alias}"
    for ref in (key_id, arn, alias, alias_arn):
        assert kms.describe_key(KeyId=ref)["KeyMetadata"]["KeyId"] == key_id
    ctx = {"order": "42"}
    c = kms.encrypt(KeyId=alias, Plaintext=b"card 4111", EncryptionContext=ctx)
    assert c["KeyId"] == arn and c["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    d = kms.decrypt(CiphertextBlob=c["CiphertextBlob"], EncryptionContext=ctx)
    assert d["Plaintext"] == b"card 4111" and d["KeyId"] == arn
    # AWS API → REST API, and back.
    b64 = lambda b: base64.b64encode(b).decode()
    rest = api.call("POST", "/v1/decrypt", {"ciphertext": b64(c["CiphertextBlob"]), "context": ctx})
    assert base64.b64decode(rest["plaintext"]) == b"card 4111"
    made = api.call("POST", f"/v1/keys/{key_id}/encrypt", {"plaintext": b64(b"from rest"), "context": ctx})
    back = kms.decrypt(CiphertextBlob=base64.b64decode(made["ciphertext"]), KeyId=key_id, EncryptionContext=ctx)
    assert back["Plaintext"] == b"from rest"
    # Re-encryption under another key.
    other = kms.create_key()["KeyMetadata"]
    r = kms.re_encrypt(CiphertextBlob=c["CiphertextBlob"], SourceEncryptionContext=ctx,
                       DestinationKeyId=other["KeyId"], DestinationEncryptionContext={"v": "2"})
    assert r["SourceKeyId"] == arn and r["KeyId"] == other["Arn"]
    assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"v": "2"})["Plaintext"] == b"card 4111"
    # Data keys.
    dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 32 and dk["KeyId"] == arn
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
    dk16 = kms.generate_data_key(KeyId=key_id, NumberOfBytes=16)
    assert len(dk16["Plaintext"]) == 16
    bare = kms.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_128")
    assert "Plaintext" not in bare and len(kms.decrypt(CiphertextBlob=bare["CiphertextBlob"])["Plaintext"]) == 16
    assert len(kms.generate_random(NumberOfBytes=48)["Plaintext"]) == 48


def test_lifecycle_tags_rotation_and_policies(kms):
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.update_key_description(KeyId=key_id, Description="renamed")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "renamed"
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}])
    kms.untag_resource(KeyId=key_id, TagKeys=["a"])
    assert kms.list_resource_tags(KeyId=key_id)["Tags"] == [{"TagKey": "b", "TagValue": "2"}]
    assert not kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=180)
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] and status["RotationPeriodInDays"] == 180
    kms.disable_key_rotation(KeyId=key_id)
    kms.rotate_key_on_demand(KeyId=key_id)
    assert len(kms.list_key_rotations(KeyId=key_id)["Rotations"]) == 1
    assert kms.list_key_policies(KeyId=key_id)["PolicyNames"] == ["default"]
    assert json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])["Statement"]
    kms.disable_key(KeyId=key_id)
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "Disabled" and not meta["Enabled"]
    kms.enable_key(KeyId=key_id)
    s = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert s["KeyState"] == "PendingDeletion" and s["PendingWindowInDays"] == 7 and s["DeletionDate"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["DeletionDate"]
    kms.cancel_key_deletion(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] != "PendingDeletion"


def test_asymmetric_and_mac_keys_interoperate(kms):
    rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert "RSASSA_PSS_SHA_256" in rsa["SigningAlgorithms"]
    pub = serialization.load_der_public_key(kms.get_public_key(KeyId=rsa["KeyId"])["PublicKey"])
    sig = kms.sign(KeyId=rsa["KeyId"], Message=b"pay 10", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    pub.verify(sig, b"pay 10", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    assert kms.verify(KeyId=rsa["KeyId"], Message=b"pay 10", Signature=sig,
                      SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]
    raises("KMSInvalidSignatureException", kms.verify, KeyId=rsa["KeyId"], Message=b"pay 99", Signature=sig,
           SigningAlgorithm="RSASSA_PSS_SHA_256")
    ecc = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"digest me")
    d = digest.finalize()
    sig = kms.sign(KeyId=ecc["KeyId"], Message=d, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    epub = serialization.load_der_public_key(kms.get_public_key(KeyId=ecc["KeyId"])["PublicKey"])
    epub.verify(sig, b"digest me", ec.ECDSA(hashes.SHA256()))
    mac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert mac_key["MacAlgorithms"] == ["HMAC_SHA_256"]
    mac = kms.generate_mac(KeyId=mac_key["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert kms.verify_mac(KeyId=mac_key["KeyId"], Message=b"m", Mac=mac, MacAlgorithm="HMAC_SHA_256")["MacValid"]
    raises("KMSInvalidMacException", kms.verify_mac, KeyId=mac_key["KeyId"], Message=b"n", Mac=mac,
           MacAlgorithm="HMAC_SHA_256")
    wrap = kms.create_key(KeySpec="RSA_3072", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    pair = kms.generate_data_key_pair(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], KeyPairSpec="ECC_NIST_P256")
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    assert private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == pair["PublicKey"]
    assert "RSAES_OAEP_SHA_256" in wrap["EncryptionAlgorithms"]
    agree = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    local = ec.generate_private_key(ec.SECP256R1())
    peer = local.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    shared = kms.derive_shared_secret(KeyId=agree["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=peer)
    theirs = serialization.load_der_public_key(kms.get_public_key(KeyId=agree["KeyId"])["PublicKey"])
    assert shared["SharedSecret"] == local.exchange(ec.ECDH(), theirs)


def test_lists_page(kms):
    for _ in range(3):
        k = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=f"alias/page-{uuid.uuid4().hex[:8]}", TargetKeyId=k)
    first = kms.list_keys(Limit=2)
    assert len(first["Keys"]) == 2 and first["Truncated"] and first["NextMarker"]
    second = kms.list_keys(Limit=2, Marker=first["NextMarker"])
    assert not {k["KeyId"] for k in first["Keys"]} & {k["KeyId"] for k in second["Keys"]}
    every = [k["KeyId"] for p in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2})
             for k in p["Keys"]]
    assert len(every) == len(set(every)) >= 4
    aliases = [a["AliasName"] for p in kms.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 2})
               for a in p["Aliases"]]
    assert len(aliases) == len(set(aliases)) >= 3 and all(a.startswith("alias/") for a in aliases)
    one = kms.list_aliases(KeyId=k)["Aliases"]
    assert len(one) == 1 and one[0]["TargetKeyId"] == k


def test_each_exception_is_named_as_aws_names_it(kms, server):
    key = kms.create_key()["KeyMetadata"]
    other = kms.create_key()["KeyMetadata"]
    c = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    raises("NotFoundException", kms.describe_key, KeyId=str(uuid.uuid4()))
    raises("NotFoundException", kms.describe_key, KeyId="alias/none-such")
    raises("IncorrectKeyException", kms.decrypt, CiphertextBlob=c, KeyId=other["KeyId"])
    raises("InvalidCiphertextException", kms.decrypt, CiphertextBlob=b"\x01" * 60)
    raises("InvalidCiphertextException", kms.decrypt, CiphertextBlob=c, EncryptionContext={"wrong": "context"})
    raises("InvalidKeyUsageException", kms.sign, KeyId=key["KeyId"], Message=b"m",
           SigningAlgorithm="ECDSA_SHA_256")
    raises("ValidationException", kms.create_key, KeySpec="AES_512")
    raises("ValidationException", kms.generate_data_key, KeyId=key["KeyId"], NumberOfBytes=20)
    raises("ValidationException", kms.create_alias, AliasName="alias/aws/mine", TargetKeyId=key["KeyId"])
    alias = f"alias/dup-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    raises("AlreadyExistsException", kms.create_alias, AliasName=alias, TargetKeyId=other["KeyId"])
    kms.update_alias(AliasName=alias, TargetKeyId=other["KeyId"])
    assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == other["KeyId"]
    kms.delete_alias(AliasName=alias)
    raises("NotFoundException", kms.update_alias, AliasName=alias, TargetKeyId=key["KeyId"])
    kms.disable_key(KeyId=key["KeyId"])
    raises("DisabledException", kms.encrypt, KeyId=key["KeyId"], Plaintext=b"x")
    kms.enable_key(KeyId=key["KeyId"])
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    raises("KMSInvalidStateException", kms.encrypt, KeyId=key["KeyId"], Plaintext=b"x")
    raises("KMSInvalidStateException", kms.enable_key, KeyId=key["KeyId"])
    raises("UnsupportedOperationException", kms.create_grant, KeyId=other["KeyId"],
           GranteePrincipal="arn:aws:iam::000000000000:role/x", Operations=["Decrypt"])
    raises("UnsupportedOperationException", kms.put_key_policy, KeyId=other["KeyId"], Policy="{}")
    raises("ValidationException", kms.create_key, Policy="{}")
    # An operation AWS does not have, signed as an SDK would sign it.
    creds = Credentials(*client_keys(kms))
    req = AWSRequest(method="POST", url=server["base"] + "/", data=b"{}",
                     headers={"X-Amz-Target": "TrentService.MakeCoffee",
                              "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(creds, "kms", REGION).add_auth(req)
    r = requests.post(server["base"] + "/", data=b"{}", headers=dict(req.headers), timeout=30)
    assert r.status_code == 400 and r.json()["__type"] == "UnknownOperationException", r.text


def client_keys(kms):
    c = kms._request_signer._credentials
    return c.access_key, c.secret_key


def test_bad_signatures_change_nothing_and_are_audited(server, api, admin_key):
    before = len(api.call("GET", "/v1/keys?limit=1000")["keys"])
    unknown = client(server, ("AKKWUNKNOWNKEY000000", "x" * 40))
    raises("UnrecognizedClientException", unknown.create_key)
    wrong = client(server, (admin_key[0], "y" * 40))
    raises("InvalidSignatureException", wrong.create_key)
    token = boto3.client("kms", endpoint_url=server["base"], region_name=REGION, aws_access_key_id=admin_key[0],
                         aws_secret_access_key=admin_key[1], aws_session_token="FQoGZXIvYXdzEXAMPLE")
    r = raises("UnrecognizedClientException", token.create_key)
    assert "temporary credentials" in r["Error"]["Message"]
    # A body altered after it was signed.
    creds = Credentials(*admin_key)
    req = AWSRequest(method="POST", url=server["base"] + "/", data=b'{"Description":"signed"}',
                     headers={"X-Amz-Target": "TrentService.CreateKey",
                              "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(creds, "kms", REGION).add_auth(req)
    r = requests.post(server["base"] + "/", data=b'{"Description":"altered"}', headers=dict(req.headers),
                      timeout=30)
    assert r.status_code == 400 and r.json()["__type"] == "InvalidSignatureException", r.text
    # Signed 20 minutes ago: outside the 15-minute window.
    import datetime as dt
    import botocore.auth
    real = botocore.auth.datetime.datetime

    class Earlier(real):
        @classmethod
        def utcnow(cls):
            return real.utcnow() - dt.timedelta(minutes=20)

        @classmethod
        def now(cls, tz=None):
            return real.now(tz) - dt.timedelta(minutes=20)

    botocore.auth.datetime.datetime = Earlier
    try:
        stale = AWSRequest(method="POST", url=server["base"] + "/", data=b"{}",
                           headers={"X-Amz-Target": "TrentService.CreateKey",
                                    "Content-Type": "application/x-amz-json-1.1"})
        SigV4Auth(creds, "kms", REGION).add_auth(stale)
    finally:
        botocore.auth.datetime.datetime = real
    r = requests.post(server["base"] + "/", data=b"{}", headers=dict(stale.headers), timeout=30)
    assert r.status_code == 400 and r.json()["__type"] == "InvalidSignatureException", r.text
    assert "15 minutes" in r.json()["message"]
    # Unsigned.
    r = requests.post(server["base"] + "/", data=b"{}", timeout=30,
                      headers={"X-Amz-Target": "TrentService.ListKeys",
                               "Content-Type": "application/x-amz-json-1.1"})
    assert r.status_code == 400 and r.json()["__type"] == "MissingAuthenticationTokenException", r.text
    assert len(api.call("GET", "/v1/keys?limit=1000")["keys"]) == before
    refused = [r for r in audit(api, action="kms:CreateKey", outcome="deny")
               if r.get("error_code") == "Unauthenticated"]
    assert len(refused) >= 5, refused


def test_a_policy_limits_an_access_key_and_the_refusal_is_recorded(server, api, kms):
    allowed = kms.create_key()["KeyMetadata"]["KeyId"]
    forbidden = kms.create_key()["KeyMetadata"]["KeyId"]
    name = f"aws-app-{uuid.uuid4().hex[:8]}"
    api.call("PUT", f"/v1/policies/{name}", {"statements": [
        {"effect": "allow", "actions": ["kms:Encrypt", "kms:Decrypt"], "resources": [f"key/{allowed}"]}]})
    key = access_key(api, name, policies=[name])
    limited = client(server, key)
    # The secret is kept sealed: neither the store nor the log holds it.
    data = os.path.join(server["data"], "d")
    for f in os.listdir(data):
        if os.path.isfile(os.path.join(data, f)):
            with open(os.path.join(data, f), "rb") as fh:
                assert key[1].encode() not in fh.read(), f
    with open(server["log"], "rb") as fh:
        assert key[1].encode() not in fh.read()
    c = limited.encrypt(KeyId=allowed, Plaintext=b"ok")
    assert limited.decrypt(CiphertextBlob=c["CiphertextBlob"])["Plaintext"] == b"ok"
    raises("AccessDeniedException", limited.encrypt, KeyId=forbidden, Plaintext=b"no")
    raises("AccessDeniedException", limited.create_key)
    denied = audit(api, principal=name, outcome="deny")
    assert ("kms:Encrypt", forbidden) in {(r["action"], r.get("key_id")) for r in denied}, denied
    assert "kms:CreateKey" in {r["action"] for r in denied}, denied
    done = audit(api, principal=name, outcome="allow")
    assert {r["action"] for r in done} == {"kms:Encrypt", "kms:Decrypt"}
    # Access keys: listed without secrets, and a deleted one stops working at once.
    listed = api.call("GET", f"/v1/identities/{name}/access-keys")["access_keys"]
    assert len(listed) == 1 and "secret_access_key" not in listed[0] and listed[0]["last_used_at"]
    api.call("DELETE", f"/v1/identities/{name}/access-keys/{listed[0]['access_key_id']}", expect=204)
    raises("UnrecognizedClientException", limited.encrypt, KeyId=allowed, Plaintext=b"gone")


def test_the_aws_cli_works_against_the_endpoint(server, admin_key, tmp_path):
    aws = shutil.which("aws")
    assert aws, "the AWS CLI (pip install awscli) is required"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=admin_key[0], AWS_SECRET_ACCESS_KEY=admin_key[1],
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    env.pop("AWS_SESSION_TOKEN", None)

    def cli(*args):
        out = subprocess.run([aws, "kms", *args, "--endpoint-url", server["base"], "--output", "json"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    key = cli("create-key", "--description", "from the cli")["KeyMetadata"]["KeyId"]
    (tmp_path / "plain").write_bytes(b"cli secret")
    blob = cli("encrypt", "--key-id", key, "--plaintext", f"fileb://{tmp_path / 'plain'}")["CiphertextBlob"]
    (tmp_path / "blob").write_bytes(base64.b64decode(blob))
    plain = cli("decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob'}")["Plaintext"]
    assert base64.b64decode(plain) == b"cli secret"
    assert key in [k["KeyId"] for k in cli("list-keys")["Keys"]]
    signer = cli("create-key", "--key-spec", "ECC_NIST_P384", "--key-usage", "SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    sig = cli("sign", "--key-id", signer, "--message", f"fileb://{tmp_path / 'plain'}",
              "--signing-algorithm", "ECDSA_SHA_384")["Signature"]
    (tmp_path / "sig").write_bytes(base64.b64decode(sig))
    ok = cli("verify", "--key-id", signer, "--message", f"fileb://{tmp_path / 'plain'}",
             "--signature", f"fileb://{tmp_path / 'sig'}", "--signing-algorithm", "ECDSA_SHA_384")
    assert ok["SignatureValid"] is True


def test_the_aws_encryption_sdk_encrypts_and_decrypts_through_keyward(server, admin_key, kms, monkeypatch):
    import aws_encryption_sdk
    from aws_encryption_sdk import CommitmentPolicy
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", server["base"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", admin_key[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", admin_key[1])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    arn = kms.create_key(Description="envelope")["KeyMetadata"]["Arn"]
    sdk = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[arn], botocore_session=botocore.session.Session())
    message = os.urandom(100_000)
    ciphertext, header = sdk.encrypt(source=message, key_provider=provider, encryption_context={"tenant": "t1"})
    assert message not in ciphertext
    plaintext, decrypted = sdk.decrypt(source=ciphertext, key_provider=provider)
    assert plaintext == message and decrypted.encryption_context["tenant"] == "t1"
    assert [k.key_provider.key_info.decode() for k in decrypted.encrypted_data_keys] == [arn]


def test_quorum_throttling_and_a_sealed_node_answer_as_aws_clients_expect(monkeypatch):
    from botocore.config import Config
    from conftest import Api, running_server
    monkeypatch.setenv("KEYWARD_RATE_LIMIT_PER_SECOND", "1")
    monkeypatch.setenv("KEYWARD_RATE_LIMIT_BURST", "60")
    with running_server() as s:
        api = Api(s["base"])
        key = access_key(api, "ops", roles=["admin"])
        kms = boto3.client("kms", endpoint_url=s["base"], region_name=REGION, aws_access_key_id=key[0],
                           aws_secret_access_key=key[1], config=Config(retries={"max_attempts": 1}))
        # A key that needs a second person to delete: the request opens an approval and says which.
        held = api.create("AES_256", quorum={"approvals": 1})["key_id"]
        r = raises("AccessDeniedException", kms.schedule_key_deletion, KeyId=held, PendingWindowInDays=7)
        approval = r["Error"]["Message"].split("approval ")[1].split(" ")[0]
        assert approval.startswith("apr_")
        assert api.call("GET", f"/v1/approvals/{approval}")["status"] == "pending"
        assert kms.describe_key(KeyId=held)["KeyMetadata"]["KeyState"] == "Enabled"
        # Over the rate: ThrottlingException, which SDKs retry.
        with pytest.raises(ClientError) as e:
            for _ in range(200):
                kms.generate_random(NumberOfBytes=8)
        assert code(e) == "ThrottlingException"
        # Sealed: 503 with a message that says so.
        api.call("POST", "/v1/sys/seal", expect=204)
        r = raises("ServiceUnavailableException", kms.list_keys)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 503 and "sealed" in r["Error"]["Message"]


def test_key_material_is_imported_as_aws_documents_it(kms):
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
    meta = kms.create_key(Origin="EXTERNAL", Description="byok")["KeyMetadata"]
    assert meta["Origin"] == "EXTERNAL" and meta["KeyState"] == "PendingImport" and not meta["Enabled"]
    raises("ValidationException", kms.get_parameters_for_import, KeyId=meta["KeyId"],
           WrappingAlgorithm="RSAES_OAEP_SHA_1", WrappingKeySpec="RSA_2048")
    p = kms.get_parameters_for_import(KeyId=meta["KeyId"], WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256",
                                      WrappingKeySpec="RSA_4096")
    assert p["KeyId"] == meta["Arn"] and p["ParametersValidTo"]
    wrapping = serialization.load_der_public_key(p["PublicKey"])
    material, ephemeral = os.urandom(32), os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = wrapping.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)
    raises("ValidationException", kms.import_key_material, KeyId=meta["KeyId"], ImportToken=p["ImportToken"],
           EncryptedKeyMaterial=wrapped, ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=2_000_000_000)
    kms.import_key_material(KeyId=meta["KeyId"], ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped,
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    after = kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert after["KeyState"] == "Enabled" and after["Enabled"]
    c = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"imported")
    assert kms.decrypt(CiphertextBlob=c["CiphertextBlob"])["Plaintext"] == b"imported"
    # The token is single-use.
    raises("ValidationException", kms.import_key_material, KeyId=meta["KeyId"], ImportToken=p["ImportToken"],
           EncryptedKeyMaterial=wrapped, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")

    def wrap(public, key_material):
        eph = os.urandom(32)
        return public.encrypt(eph, oaep) + aes_key_wrap_with_padding(eph, key_material)

    # Deleting the material makes the key PendingImport: nothing encrypts or decrypts under it.
    deleted = kms.delete_imported_key_material(KeyId=meta["KeyId"])
    assert deleted["KeyId"] == meta["Arn"]
    gone = kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert gone["KeyState"] == "PendingImport" and not gone["Enabled"]
    raises("KMSInvalidStateException", kms.decrypt, CiphertextBlob=c["CiphertextBlob"])
    raises("KMSInvalidStateException", kms.encrypt, KeyId=meta["KeyId"], Plaintext=b"x")
    raises("KMSInvalidStateException", kms.delete_imported_key_material, KeyId=meta["KeyId"])
    # Only the same material brings it back; other material is refused and leaves the token unused.
    p = kms.get_parameters_for_import(KeyId=meta["KeyId"], WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256",
                                      WrappingKeySpec="RSA_4096")
    public = serialization.load_der_public_key(p["PublicKey"])
    raises("IncorrectKeyMaterialException", kms.import_key_material, KeyId=meta["KeyId"],
           ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrap(public, os.urandom(32)),
           ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    kms.import_key_material(KeyId=meta["KeyId"], ImportToken=p["ImportToken"],
                            EncryptedKeyMaterial=wrap(public, material),
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    back = kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert back["KeyState"] == "Enabled" and back["Enabled"]
    assert kms.decrypt(CiphertextBlob=c["CiphertextBlob"])["Plaintext"] == b"imported"
    # A key whose material Keyward generated has no imported material to delete.
    native = kms.create_key()["KeyMetadata"]["KeyId"]
    raises("KMSInvalidStateException", kms.delete_imported_key_material, KeyId=native)


def test_ml_dsa_keys_sign_through_boto3_and_verify_in_dilithium_py(kms):
    from dilithium_py.ml_dsa import ML_DSA_65
    from test_pq import raw_public_key
    meta = kms.create_key(KeySpec="ML_DSA_65", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert meta["KeySpec"] == "ML_DSA_65" and meta["SigningAlgorithms"] == ["ML_DSA_SHAKE_256"]
    pk = kms.get_public_key(KeyId=meta["KeyId"])
    assert pk["SigningAlgorithms"] == ["ML_DSA_SHAKE_256"]
    raw = raw_public_key(pk["PublicKey"], 0x03, 0x12)
    msg = os.urandom(100)
    sig = kms.sign(KeyId=meta["KeyId"], Message=msg, MessageType="RAW",
                   SigningAlgorithm="ML_DSA_SHAKE_256")["Signature"]
    assert ML_DSA_65.verify(raw, msg, sig)
    assert kms.verify(KeyId=meta["KeyId"], Message=msg, Signature=sig,
                      SigningAlgorithm="ML_DSA_SHAKE_256")["SignatureValid"]
    mu = ML_DSA_65.prehash_external_mu(raw, msg)
    by_mu = kms.sign(KeyId=meta["KeyId"], Message=mu, MessageType="EXTERNAL_MU",
                     SigningAlgorithm="ML_DSA_SHAKE_256")["Signature"]
    assert ML_DSA_65.verify(raw, msg, by_mu)
    assert kms.verify(KeyId=meta["KeyId"], Message=mu, MessageType="EXTERNAL_MU", Signature=sig,
                      SigningAlgorithm="ML_DSA_SHAKE_256")["SignatureValid"]
    raises("ValidationException", kms.sign, KeyId=meta["KeyId"], Message=os.urandom(32),
           MessageType="DIGEST", SigningAlgorithm="ML_DSA_SHAKE_256")
