"""Vault's transit engine, driven by hvac against Keyward's Vault listener: keys of every offered type, encrypt
and decrypt with context and associated data (single and batch), rotation, rewrap, minimum decryption version,
trim, data keys, signatures checked by Python's `cryptography` (an independent implementation), HMAC, random,
hash, deletion, policies, and the REST API seeing the same keys and ciphertexts."""
import base64
import hashlib
import uuid

import hvac
import hvac.exceptions
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, utils

from conftest import ROOT


def b64(b):
    return base64.b64encode(b).decode()


@pytest.fixture
def transit(server):
    return hvac.Client(url=server["vault"], token=ROOT).secrets.transit


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_encrypt_decrypt_rotate_rewrap_trim(server, api, transit):
    key = name("orders")
    created = transit.create_key(key)
    assert created["data"]["type"] == "aes256-gcm96" and created["data"]["latest_version"] == 1
    ctx, aad = b64(b"tenant-7"), b64(b"row-42")
    c1 = transit.encrypt_data(key, plaintext=b64(b"card 4111"), context=ctx, associated_data=aad)["data"]
    assert c1["ciphertext"].startswith("vault:v1:") and c1["key_version"] == 1
    plain = transit.decrypt_data(key, ciphertext=c1["ciphertext"], context=ctx, associated_data=aad)
    assert base64.b64decode(plain["data"]["plaintext"]) == b"card 4111"
    # Bound to its context and associated data.
    for bad in [dict(context=b64(b"tenant-8"), associated_data=aad), dict(context=ctx)]:
        with pytest.raises(hvac.exceptions.InvalidRequest):
            transit.decrypt_data(key, ciphertext=c1["ciphertext"], **bad)
    # The key is an ordinary Keyward key, and the ciphertext a Keyward ciphertext.
    info = transit.read_key(key)["data"]
    rest = api.call("GET", f"/v1/keys/alias:transit%2F{key}")
    assert rest["key_id"] == info["keyward_key_id"] and rest["spec"] == "AES_256"
    direct = api.call("POST", "/v1/decrypt", {
        "ciphertext": c1["ciphertext"].split(":", 2)[2],
        "context": {"vault:context": ctx, "vault:associated_data": aad}})
    assert base64.b64decode(direct["plaintext"]) == b"card 4111"

    # Batches: each item answered on its own.
    batch = transit.encrypt_data(key, batch_input=[
        {"plaintext": b64(b"a"), "reference": "r1"}, {"plaintext": "not base64!", "reference": "r2"}])
    results = batch["data"]["batch_results"]
    assert results[0]["ciphertext"].startswith("vault:v1:") and results[0]["reference"] == "r1"
    assert "error" in results[1] and results[1]["reference"] == "r2"
    opened = transit.decrypt_data(key, batch_input=[{"ciphertext": results[0]["ciphertext"]},
                                                    {"ciphertext": "vault:v1:AAAA"}])["data"]["batch_results"]
    assert base64.b64decode(opened[0]["plaintext"]) == b"a" and "error" in opened[1]

    # Rotation: new ciphertexts under v2, old ones still open, rewrap moves them up.
    transit.rotate_key(key)
    c2 = transit.encrypt_data(key, plaintext=b64(b"x"))["data"]
    assert c2["ciphertext"].startswith("vault:v2:")
    # The associated data is bound too, so rewrap needs it (hvac's rewrap cannot send it; requests can).
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.rewrap_data(key, ciphertext=c1["ciphertext"], context=ctx)
    r = requests.post(f"{server['vault']}/v1/transit/rewrap/{key}", headers={"X-Vault-Token": ROOT},
                      json={"ciphertext": c1["ciphertext"], "context": ctx, "associated_data": aad})
    assert r.status_code == 200, r.text
    moved = r.json()["data"]["ciphertext"]
    assert moved.startswith("vault:v2:")
    # A prefix that lies about the version is refused.
    forged = "vault:v2:" + c1["ciphertext"].split(":", 2)[2]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.decrypt_data(key, ciphertext=forged, context=ctx, associated_data=aad)
    # Minimum decryption version, then trim: version 1 is gone for good.
    transit.update_key_configuration(key, min_decryption_version=2)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.decrypt_data(key, ciphertext=c1["ciphertext"], context=ctx, associated_data=aad)
    assert base64.b64decode(transit.decrypt_data(key, ciphertext=moved, context=ctx, associated_data=aad)
                            ["data"]["plaintext"]) == b"card 4111"
    transit.trim_key(key, min_version=2)
    info = transit.read_key(key)["data"]
    assert info["min_available_version"] == 2 and set(info["keys"]) == {"2"}
    assert [v["state"] for v in api.call("GET", f"/v1/keys/alias:transit%2F{key}/versions")["versions"]][0] \
        == "Destroyed"

    # Data keys: a fresh AES key, and its wrapped form opens to it.
    dk = transit.generate_data_key(key, key_type="plaintext", bits=256)["data"]
    assert len(base64.b64decode(dk["plaintext"])) == 32 and dk["ciphertext"].startswith("vault:v2:")
    wrapped = transit.generate_data_key(key, key_type="wrapped")["data"]
    assert "plaintext" not in wrapped

    # Listing, and deletion only once allowed: then the key is scheduled for deletion and its name freed.
    assert key in transit.list_keys()["data"]["keys"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.delete_key(key)
    transit.update_key_configuration(key, deletion_allowed=True)
    transit.delete_key(key)
    with pytest.raises(hvac.exceptions.InvalidPath):
        transit.read_key(key)
    assert api.call("GET", f"/v1/keys/{info['keyward_key_id']}")["state"] == "PendingDeletion"
    # A ciphertext of one transit key does not open under another.
    other = name("other")
    transit.create_key(other)
    foreign = transit.encrypt_data(other, plaintext=b64(b"x"))["data"]["ciphertext"]
    third = name("third")
    transit.create_key(third)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.decrypt_data(third, ciphertext=foreign)
    assert base64.b64decode(transit.decrypt_data(other, ciphertext=foreign)["data"]["plaintext"]) == b"x"
    # Types not offered are refused by name.
    with pytest.raises(hvac.exceptions.InvalidRequest) as e:
        transit.create_key(name("x"), key_type="chacha20-poly1305")
    assert "chacha20-poly1305" in str(e.value)


def public_key(transit, key):
    pem = transit.read_key(key)["data"]["keys"]["1"]["public_key"]
    return serialization.load_pem_public_key(pem.encode())


def test_signatures_verify_in_python_cryptography(transit):
    msg = b"release 2.4.1"
    # ECDSA P-256, ASN.1 and JWS (r||s), message and prehashed.
    k = name("sign-p256")
    transit.create_key(k, key_type="ecdsa-p256")
    pub = public_key(transit, k)
    sig = transit.sign_data(k, hash_input=b64(msg))["data"]["signature"]
    assert sig.startswith("vault:v1:")
    pub.verify(base64.b64decode(sig.split(":", 2)[2]), msg, ec.ECDSA(hashes.SHA256()))
    jws = transit.sign_data(k, hash_input=b64(msg), marshaling_algorithm="jws")["data"]["signature"]
    raw = base64.urlsafe_b64decode(jws.split(":", 2)[2] + "==")
    assert len(raw) == 64
    pub.verify(utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
               msg, ec.ECDSA(hashes.SHA256()))
    assert transit.verify_signed_data(k, hash_input=b64(msg), signature=jws,
                                      marshaling_algorithm="jws")["data"]["valid"] is True
    digest = hashlib.sha256(msg).digest()
    pre = transit.sign_data(k, hash_input=b64(digest), prehashed=True)["data"]["signature"]
    pub.verify(base64.b64decode(pre.split(":", 2)[2]), msg, ec.ECDSA(hashes.SHA256()))
    assert transit.verify_signed_data(k, hash_input=b64(msg), signature=sig)["data"]["valid"] is True
    assert transit.verify_signed_data(k, hash_input=b64(b"other"), signature=sig)["data"]["valid"] is False
    # A hash that is not the curve's is refused, naming it.
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.sign_data(k, hash_input=b64(msg), hash_algorithm="sha2-512")

    # ECDSA P-384 signs with its own hash by default.
    k = name("sign-p384")
    transit.create_key(k, key_type="ecdsa-p384")
    sig = transit.sign_data(k, hash_input=b64(msg))["data"]["signature"]
    public_key(transit, k).verify(base64.b64decode(sig.split(":", 2)[2]), msg, ec.ECDSA(hashes.SHA384()))

    # RSA: PSS (salt as long as the hash) and PKCS#1 v1.5, with SHA-256 and SHA-512.
    k = name("sign-rsa")
    transit.create_key(k, key_type="rsa-2048")
    pub = public_key(transit, k)
    for sig_alg, h, pad in [
        ("pss", "sha2-256", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)),
        ("pkcs1v15", "sha2-512", padding.PKCS1v15()),
    ]:
        sig = transit.sign_data(k, hash_input=b64(msg), hash_algorithm=h,
                                signature_algorithm=sig_alg)["data"]["signature"]
        algo = hashes.SHA256() if h == "sha2-256" else hashes.SHA512()
        pub.verify(base64.b64decode(sig.split(":", 2)[2]), msg, pad, algo)
        assert transit.verify_signed_data(k, hash_input=b64(msg), signature=sig, hash_algorithm=h,
                                          signature_algorithm=sig_alg)["data"]["valid"] is True

    # Ed25519, and a batch.
    k = name("sign-ed")
    transit.create_key(k, key_type="ed25519")
    pub = public_key(transit, k)
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    results = transit.sign_data(k, batch_input=[{"input": b64(b"one")}, {"input": b64(b"two")}])
    for m, r in zip([b"one", b"two"], results["data"]["batch_results"]):
        pub.verify(base64.b64decode(r["signature"].split(":", 2)[2]), m)
    # An encryption key does not sign.
    k = name("enc")
    transit.create_key(k)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.sign_data(k, hash_input=b64(msg))


def test_hmac_random_hash_and_policies(server, api, transit):
    k = name("mac")
    # hvac's own list of key types predates Vault's hmac keys: created with a plain request.
    r = requests.post(f"{server['vault']}/v1/transit/keys/{k}", headers={"X-Vault-Token": ROOT},
                      json={"type": "hmac"})
    assert r.status_code == 200 and r.json()["data"]["type"] == "hmac", r.text
    mac = transit.generate_hmac(k, hash_input=b64(b"payload"))["data"]["hmac"]
    assert mac.startswith("vault:v1:") and len(base64.b64decode(mac.split(":", 2)[2])) == 32
    assert transit.verify_signed_data(k, hash_input=b64(b"payload"), hmac=mac)["data"]["valid"] is True
    assert transit.verify_signed_data(k, hash_input=b64(b"tampered"), hmac=mac)["data"]["valid"] is False
    # Checking a MAC is kms:VerifyMac here as in the REST API.
    verified = api.call("GET", "/v1/audit?action=kms:VerifyMac&limit=1000")["records"]
    assert any(r.get("key_id") == transit.read_key(k)["data"]["keyward_key_id"] for r in verified)
    rnd = transit.generate_random_bytes(n_bytes=48)["data"]["random_bytes"]
    assert len(base64.b64decode(rnd)) == 48
    s = transit.hash_data(b64(b"abc"), algorithm="sha2-256")["data"]["sum"]
    assert s == hashlib.sha256(b"abc").hexdigest()
    assert transit.hash_data(b64(b"abc"), algorithm="sha2-512", output_format="base64")["data"]["sum"] \
        == b64(hashlib.sha512(b"abc").digest())
    r = requests.post(f"{server['vault']}/v1/transit/hash/sha3-256", headers={"X-Vault-Token": ROOT},
                      json={"input": b64(b"abc")})
    assert r.json()["data"]["sum"] == hashlib.sha3_256(b"abc").hexdigest()

    # A service that may encrypt with one transit key and nothing else.
    k = name("svc")
    transit.create_key(k)
    who = name("encrypter")
    api.call("PUT", f"/v1/policies/{who}", {"statements": [
        {"effect": "allow", "actions": ["kms:Encrypt"], "resources": [f"alias/transit/{k}"]}]})
    api.call("POST", "/v1/identities", {"name": who, "kind": "service", "policies": [who]}, expect=201)
    token = api.call("POST", f"/v1/identities/{who}/tokens", {}, expect=201)["token"]
    theirs = hvac.Client(url=server["vault"], token=token).secrets.transit
    c = theirs.encrypt_data(k, plaintext=b64(b"ok"))["data"]["ciphertext"]
    with pytest.raises(hvac.exceptions.Forbidden):
        theirs.decrypt_data(k, ciphertext=c)
    with pytest.raises(hvac.exceptions.Forbidden):
        theirs.create_key(name("nope"))
    # On the record as the REST API's actions, naming the key and version.
    records = api.call("GET", f"/v1/audit?action=kms:Encrypt&principal={who}")["records"]
    key_id = transit.read_key(k)["data"]["keyward_key_id"]
    assert records and records[0]["key_id"] == key_id and records[0]["version"] == 1
    denied = api.call("GET", f"/v1/audit?action=kms:Decrypt&principal={who}&outcome=deny")["records"]
    assert denied and denied[0]["key_id"] == key_id
