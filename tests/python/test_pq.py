"""Post-quantum keys against independent implementations of the standards: dilithium-py (ML-DSA, FIPS 204) and
kyber-py (ML-KEM, FIPS 203). What Keyward signs verifies there, a key made there and imported signs for
Keyward's verification, and what is encapsulated there decapsulates in Keyward to the same secret."""
import base64
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024
import pytest

b64 = lambda b: base64.b64encode(b).decode()
unb64 = base64.b64decode

ML_DSA = {"ML_DSA_44": (ML_DSA_44, 0x11), "ML_DSA_65": (ML_DSA_65, 0x12), "ML_DSA_87": (ML_DSA_87, 0x13)}
ML_KEM = {"ML_KEM_768": (ML_KEM_768, 2), "ML_KEM_1024": (ML_KEM_1024, 3)}


def der_len(n):
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def raw_public_key(spki, oid_arc, oid_last):
    """The raw key of a LAMPS SPKI, checking every byte around it: SEQUENCE { SEQUENCE { OID }, BIT STRING }."""
    oid = bytes([0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, oid_arc, oid_last])
    algorithm = b"\x30" + der_len(len(oid)) + oid
    for n in range(len(spki)):
        key = spki[-n:] if n else b""
        bits = b"\x03" + der_len(len(key) + 1) + b"\x00" + key
        body = algorithm + bits
        if b"\x30" + der_len(len(body)) + body == spki:
            return key
    raise AssertionError("not a LAMPS SubjectPublicKeyInfo")


def public_key(api, key, oid_arc, oid_last):
    pk = api.call("GET", f"/v1/keys/{key}/public-key")
    der = unb64(pk["public_key_der"])
    assert pk["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    return raw_public_key(der, oid_arc, oid_last)


@pytest.mark.parametrize("spec", sorted(ML_DSA))
def test_ml_dsa_signatures_verify_in_dilithium_py(api, spec):
    impl, oid = ML_DSA[spec]
    key = api.create(spec)
    assert key["usage"] == "SIGN_VERIFY"
    pk = public_key(api, key["key_id"], 0x03, oid)
    msg = os.urandom(200)
    signed = api.call("POST", f"/v1/keys/{key['key_id']}/sign", {"message": b64(msg), "algorithm": "ML_DSA_SHAKE_256"})
    sig = unb64(signed["signature"])
    assert impl.verify(pk, msg, sig)
    assert not impl.verify(pk, msg + b"!", sig)
    ok = api.call("POST", f"/v1/keys/{key['key_id']}/verify",
                  {"message": b64(msg), "signature": b64(sig), "algorithm": "ML_DSA_SHAKE_256"})
    assert ok["valid"] is True
    # External μ: the signer hashes the message with the public key itself and sends the 64-byte μ; the
    # signature is the message's own signature.
    mu = impl.prehash_external_mu(pk, msg)
    by_mu = api.call("POST", f"/v1/keys/{key['key_id']}/sign", {"external_mu": b64(mu), "algorithm": "ML_DSA_SHAKE_256"})
    assert impl.verify(pk, msg, unb64(by_mu["signature"]))
    check = lambda body: api.call("POST", f"/v1/keys/{key['key_id']}/verify",
                                  {**body, "signature": b64(sig), "algorithm": "ML_DSA_SHAKE_256"})["valid"]
    assert check({"external_mu": b64(mu)}) is True
    assert check({"external_mu": b64(impl.prehash_external_mu(pk, msg + b"!"))}) is False
    for body, code in [({"external_mu": b64(mu[:32])}, "ValidationError"),
                       ({"digest": b64(mu)}, "IncorrectKeyUsage"),
                       ({"message": b64(msg), "external_mu": b64(mu)}, "ValidationError")]:
        r = api.session.post(api.base + f"/v1/keys/{key['key_id']}/sign",
                             json={**body, "algorithm": "ML_DSA_SHAKE_256"}, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (400, code), r.text


def wrap_for_import(api, key, material):
    params = api.call("GET", f"/v1/keys/{key}/import-parameters")
    wrapping = serialization.load_der_public_key(unb64(params["wrapping_public_key_der"]))
    ephemeral = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = wrapping.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)
    return {"import_token": params["import_token"], "wrapped_key_material": b64(wrapped)}


@pytest.mark.parametrize("spec", sorted(ML_DSA))
def test_an_ml_dsa_key_made_in_dilithium_py_is_imported_and_verified(api, spec):
    impl, oid = ML_DSA[spec]
    seed = os.urandom(32)
    pk, sk = impl.key_derive(seed)
    # PKCS#8 of the seed as the LAMPS profile writes it: [0] IMPLICIT OCTET STRING inside the privateKey.
    algorithm = bytes([0x30, 0x0B, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, oid])
    private = b"\x04\x22\x80\x20" + seed
    body = b"\x02\x01\x00" + algorithm + private
    pkcs8 = b"\x30" + der_len(len(body)) + body
    key = api.create(spec, origin="EXTERNAL")["key_id"]
    api.call("POST", f"/v1/keys/{key}/import", wrap_for_import(api, key, pkcs8))
    # The same seed gives the same key in both implementations.
    assert public_key(api, key, 0x03, oid) == pk
    msg = b"signed outside Keyward"
    sig = impl.sign(sk, msg)
    check = lambda m, s: api.call("POST", f"/v1/keys/{key}/verify",
                                  {"message": b64(m), "signature": b64(s), "algorithm": "ML_DSA_SHAKE_256"})["valid"]
    assert check(msg, sig) is True
    assert check(b"another message", sig) is False
    # Signed here over an external μ, verified there as a message signature; and the other way round.
    mu = impl.prehash_external_mu(pk, msg)
    assert check(msg, impl.sign_external_mu(sk, mu)) is True
    by_mu = api.call("POST", f"/v1/keys/{key}/sign", {"external_mu": b64(mu), "algorithm": "ML_DSA_SHAKE_256"})
    assert impl.verify(pk, msg, unb64(by_mu["signature"]))
    # A signature under another context string is another signature: Keyward signs with the empty context.
    assert check(msg, impl.sign(sk, msg, ctx=b"ctx")) is False


@pytest.mark.parametrize("spec", sorted(ML_KEM))
def test_ml_kem_encapsulated_in_kyber_py_decapsulates_to_the_same_secret(api, spec):
    impl, oid = ML_KEM[spec]
    key = api.create(spec)
    assert key["usage"] == "KEY_AGREEMENT"
    ek = public_key(api, key["key_id"], 0x04, oid)
    secret, ct = impl.encaps(ek)
    got = api.call("POST", f"/v1/keys/{key['key_id']}/decapsulate", {"ciphertext": b64(ct)})
    assert unb64(got["shared_secret"]) == secret
    assert got["version"] == 1 and got["key_id"] == key["key_id"]
    # Implicit rejection: another ciphertext of the right length yields another secret, without an error.
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    other = api.call("POST", f"/v1/keys/{key['key_id']}/decapsulate", {"ciphertext": b64(bad)})
    assert unb64(other["shared_secret"]) != secret
    r = api.session.post(api.base + f"/v1/keys/{key['key_id']}/decapsulate", json={"ciphertext": b64(ct[:-1])},
                         timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationError", r.text
    # After a rotation the sender may still hold the old public key: naming its version decapsulates.
    api.call("POST", f"/v1/keys/{key['key_id']}/rotate")
    again = api.call("POST", f"/v1/keys/{key['key_id']}/decapsulate", {"ciphertext": b64(ct), "version": 1})
    assert unb64(again["shared_secret"]) == secret
    assert public_key(api, key["key_id"], 0x04, oid) != ek


def test_pq_keys_refuse_what_they_cannot_do(api):
    kem = api.create("ML_KEM_768")["key_id"]
    dsa = api.create("ML_DSA_65")["key_id"]
    ecdh = api.create("ECC_NIST_P256", "KEY_AGREEMENT")["key_id"]
    ecdsa = api.create("ECC_NIST_P256", "SIGN_VERIFY")["key_id"]
    refusals = [
        ("POST", f"/v1/keys/{ecdsa}/sign", {"external_mu": b64(bytes(64)), "algorithm": "ECDSA_SHA_256"}, 400,
         "IncorrectKeyUsage"),
        ("POST", f"/v1/keys/{dsa}/decapsulate", {"ciphertext": b64(b"x" * 1088)}, 400, "IncorrectKeyUsage"),
        ("POST", f"/v1/keys/{ecdh}/decapsulate", {"ciphertext": b64(b"x" * 1088)}, 400, "IncorrectKeyUsage"),
        ("POST", f"/v1/keys/{kem}/sign", {"message": b64(b"m"), "algorithm": "ML_DSA_SHAKE_256"}, 400,
         "IncorrectKeyUsage"),
        ("POST", f"/v1/keys/{dsa}/sign", {"message": b64(b"m"), "algorithm": "ECDSA_SHA_256"}, 400,
         "IncorrectKeyUsage"),
        ("POST", "/v1/keys", {"spec": "ML_KEM_768", "usage": "ENCRYPT_DECRYPT"}, 400, "IncorrectKeyUsage"),
        ("POST", f"/v1/keys/{ecdh}/data-key-pair", {"spec": "ML_DSA_65"}, 400, "ValidationError"),
    ]
    for method, path, body, status, code in refusals:
        r = api.session.request(method, api.base + path, json=body, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, r.text)


def test_a_decapsulated_data_key_leaves_only_encrypted(api):
    """The receiver never sees the secret: Keyward derives the data key the sender derives (HKDF-SHA-256 with
    the documented info) and returns it encrypted under a symmetric key, as data-key does."""
    import requests
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    kem = api.create("ML_KEM_1024")["key_id"]
    wrap = api.create("AES_256")["key_id"]
    ek = public_key(api, kem, 0x04, 3)
    secret, ct = ML_KEM_1024.encaps(ek)
    sender_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyward:ml-kem:data-key:v1").derive(secret)
    body = {"ciphertext": b64(ct), "as_data_key": True, "wrapping_key": wrap, "context": {"inbox": "a"}}
    got = api.call("POST", f"/v1/keys/{kem}/decapsulate", body)
    assert set(got) == {"ciphertext", "key_id", "version"} and got["key_id"] == wrap
    opened = api.call("POST", "/v1/decrypt", {"ciphertext": got["ciphertext"], "context": {"inbox": "a"}})
    assert unb64(opened["plaintext"]) == sender_key
    both = api.call("POST", f"/v1/keys/{kem}/decapsulate", {**body, "include_plaintext": True})
    assert unb64(both["plaintext"]) == sender_key
    # The wrapping key is in the record, beside the ML-KEM key.
    records = api.call("GET", f"/v1/audit?key_id={kem}&action=kms:Decapsulate")["records"]
    assert wrap in records[-1]["source_key_ids"], records[-1]
    for bad, code in [({"ciphertext": b64(ct), "as_data_key": True}, "ValidationError"),
                      ({"ciphertext": b64(ct), "wrapping_key": wrap}, "ValidationError"),
                      ({**body, "wrapping_key": kem}, "IncorrectKeyUsage")]:
        r = api.session.post(api.base + f"/v1/keys/{kem}/decapsulate", json=bad, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (400, code), r.text
    # A service allowed to decapsulate but not to make data keys under the wrapping key is refused.
    policy = {"statements": [{"effect": "allow", "actions": ["kms:Decapsulate"], "resources": [f"key/{kem}"]}]}
    api.call("PUT", "/v1/policies/pq-inbox", policy)
    api.call("POST", "/v1/identities", {"name": "pq-inbox", "kind": "service", "roles": [], "policies": ["pq-inbox"]},
             expect=201)
    token = api.call("POST", "/v1/identities/pq-inbox/tokens", {}, expect=201)["token"]
    as_inbox = lambda b: requests.post(api.base + f"/v1/keys/{kem}/decapsulate", json=b, timeout=30,
                                       headers={"Authorization": f"Bearer {token}"})
    assert unb64(as_inbox({"ciphertext": b64(ct)}).json()["shared_secret"]) == secret
    r = as_inbox(body)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "AccessDenied"), r.text


def test_the_cli_signs_a_message_and_an_external_mu(server, api, tmp_path):
    import subprocess
    from conftest import BIN, ROOT
    env = dict(os.environ, KEYWARD_ADDR=server["base"], KEYWARD_TOKEN=ROOT)
    key = api.create("ML_DSA_44")["key_id"]
    pk = public_key(api, key, 0x03, 0x11)
    msg = b"a large message, hashed where it lies"
    mu = ML_DSA_44.prehash_external_mu(pk, msg)
    (tmp_path / "mu.bin").write_bytes(mu)
    run = lambda *args, stdin=b"": subprocess.run([BIN, *args], env=env, input=stdin, capture_output=True)
    # No --algorithm: the spec's usual one (ML_DSA_SHAKE_256).
    by_message = unb64(run("sign", key, stdin=msg).stdout.strip())
    by_mu = unb64(run("sign", key, "--external-mu", "--in", str(tmp_path / "mu.bin")).stdout.strip())
    assert ML_DSA_44.verify(pk, msg, by_message) and ML_DSA_44.verify(pk, msg, by_mu)
    checked = run("verify", key, "--external-mu", "--in", str(tmp_path / "mu.bin"), "--signature", b64(by_message))
    assert checked.returncode == 0 and checked.stdout.strip() == b"valid", checked.stderr
    refused = run("sign", key, "--digest", "--in", str(tmp_path / "mu.bin"))
    assert refused.returncode != 0 and b"IncorrectKeyUsage" in refused.stderr, refused.stderr
