"""Keyward through an independent implementation (Python `cryptography`): what Keyward signs, issues and
encrypts must check out here, and what is made here must work in Keyward."""
import base64
import hashlib
import hmac
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
import pytest
import requests

from conftest import BIN, ROOT, run_measured

b64 = lambda b: base64.b64encode(b).decode()
unb64 = base64.b64decode

SIGNERS = [
    ("RSA_2048", "RSASSA_PSS_SHA_256"), ("RSA_2048", "RSASSA_PSS_SHA_512"),
    ("RSA_3072", "RSASSA_PKCS1_V1_5_SHA_256"), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_384"),
    ("ECC_NIST_P256", "ECDSA_SHA_256"), ("ECC_NIST_P384", "ECDSA_SHA_384"), ("ECC_NIST_P521", "ECDSA_SHA_512"),
    ("ECC_SECG_P256K1", "ECDSA_SHA_256"), ("ED25519", "ED25519"),
]
HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def public_key(api, key_id):
    pk = api.call("GET", f"/v1/keys/{key_id}/public-key")
    der = serialization.load_der_public_key(unb64(pk["public_key_der"]))
    pem = serialization.load_pem_public_key(pk["public_key_pem"].encode())
    assert der.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        pem.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def check(pub, alg, data, sig, prehashed=False):
    if alg == "ED25519":
        pub.verify(sig, data)
        return
    h = HASH[alg.rsplit("_", 1)[1]]()
    algo = utils.Prehashed(h) if prehashed else h
    if alg.startswith("RSASSA_PSS"):
        pub.verify(sig, data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), algo)
    elif alg.startswith("RSASSA_PKCS1"):
        pub.verify(sig, data, padding.PKCS1v15(), algo)
    else:
        pub.verify(sig, data, ec.ECDSA(algo))


@pytest.mark.parametrize("spec,alg", SIGNERS)
def test_signatures_verify_with_the_fetched_public_key(api, spec, alg):
    key = api.create(spec, "SIGN_VERIFY")["key_id"]
    pub = public_key(api, key)
    msg = os.urandom(300)
    sig = unb64(api.call("POST", f"/v1/keys/{key}/sign", {"message": b64(msg), "algorithm": alg})["signature"])
    check(pub, alg, msg, sig)
    if alg != "ED25519":
        digest = hashlib.new("sha" + alg.rsplit("_", 1)[1], msg).digest()
        sig = unb64(api.call("POST", f"/v1/keys/{key}/sign", {"digest": b64(digest), "algorithm": alg})["signature"])
        check(pub, alg, digest, sig, prehashed=True)
    # And Keyward rejects what does not verify.
    assert api.call("POST", f"/v1/keys/{key}/verify", {"message": b64(msg + b"!"), "signature": b64(sig), "algorithm": alg}) == {"valid": False}


@pytest.mark.parametrize("oaep_hash,alg", [(hashes.SHA1, "RSAES_OAEP_SHA_1"), (hashes.SHA256, "RSAES_OAEP_SHA_256")])
def test_rsa_oaep_encrypted_here_decrypts_there(api, oaep_hash, alg):
    key = api.create("RSA_3072", "ENCRYPT_DECRYPT")["key_id"]
    pub = public_key(api, key)
    secret = os.urandom(64)
    ct = pub.encrypt(secret, padding.OAEP(mgf=padding.MGF1(oaep_hash()), algorithm=oaep_hash(), label=None))
    out = api.call("POST", f"/v1/keys/{key}/decrypt", {"ciphertext": b64(ct), "algorithm": alg})
    assert unb64(out["plaintext"]) == secret


@pytest.mark.parametrize("spec,curve", [("ECC_NIST_P256", ec.SECP256R1), ("ECC_NIST_P384", ec.SECP384R1),
                                        ("ECC_NIST_P521", ec.SECP521R1), ("ECC_SECG_P256K1", ec.SECP256K1)])
def test_ecdh_agrees_with_a_local_key(api, spec, curve):
    key = api.create(spec, "KEY_AGREEMENT")["key_id"]
    mine = ec.generate_private_key(curve())
    peer = mine.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = unb64(api.call("POST", f"/v1/keys/{key}/agree", {"peer_public_key_der": b64(peer)})["shared_secret"])
    assert theirs == mine.exchange(ec.ECDH(), public_key(api, key))


def test_csr_and_certificates_verify(api):
    ca = api.create("ECC_NIST_P384", "SIGN_VERIFY")["key_id"]
    cert = api.call("POST", f"/v1/keys/{ca}/certificate", {"subject": "CN=Keyward Root,O=Keyward", "days": 365, "is_ca": True})
    ca_cert = x509.load_pem_x509_certificate(cert["certificate_pem"].encode())
    ca_cert.verify_directly_issued_by(ca_cert)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.public_key().public_numbers() == public_key(api, ca).public_numbers()
    for spec in ["RSA_2048", "ED25519", "ECC_NIST_P256"]:
        leaf = api.create(spec, "SIGN_VERIFY")["key_id"]
        csr = x509.load_pem_x509_csr(api.call("POST", f"/v1/keys/{leaf}/csr", {
            "subject": "CN=svc.example.com,O=Example", "sans": ["svc.example.com", "10.0.0.7"]})["csr_pem"].encode())
        assert csr.is_signature_valid
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "svc.example.com" in sans.get_values_for_type(x509.DNSName)
        issued = api.call("POST", f"/v1/keys/{ca}/certificate", {
            "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(), "subject": "CN=Keyward Root,O=Keyward", "days": 30})
        leaf_cert = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
        leaf_cert.verify_directly_issued_by(ca_cert)
        assert leaf_cert.subject.rfc4514_string() == "O=Example,CN=svc.example.com"


def test_a_ca_renews_with_fresh_serials_and_says_it_signs_certificates(api):
    ca = api.create("ECC_NIST_P256", "SIGN_VERIFY")["key_id"]
    issue = lambda body: x509.load_pem_x509_certificate(
        api.call("POST", f"/v1/keys/{ca}/certificate", body)["certificate_pem"].encode())
    roots = [issue({"subject": "CN=Renewed Root", "days": 30, "is_ca": True}) for _ in range(2)]
    # RFC 5280 4.2.1.3: a CA certificate carries keyUsage with keyCertSign and cRLSign, marked critical.
    usage = roots[0].extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign, usage
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "renewed.example.com")]))
           .sign(leaf_key, hashes.SHA256()))
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    leaves = [issue({"csr_pem": pem, "subject": "CN=Renewed Root", "days": 7}) for _ in range(2)]
    # Renewing for the same key gives a new serial (issuer and serial name one certificate): positive,
    # at most 20 bytes, with 64 bits of randomness or more.
    serials = [c.serial_number for c in roots + leaves]
    assert len(set(serials)) == 4, serials
    assert all(0 < s < 2 ** 159 and s.bit_length() > 150 for s in serials), serials
    for leaf in leaves:
        leaf.verify_directly_issued_by(roots[0])
    # A subject the certificate could not carry whole is refused, not silently shortened.
    two_units = (x509.CertificateSigningRequestBuilder()
                 .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "Cards"),
                                          x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "Payments"),
                                          x509.NameAttribute(x509.NameOID.COMMON_NAME, "two.example.com")]))
                 .sign(leaf_key, hashes.SHA256()))
    r = api.session.post(api.base + f"/v1/keys/{ca}/certificate", timeout=30, json={
        "csr_pem": two_units.public_bytes(serialization.Encoding.PEM).decode(), "subject": "CN=Renewed Root",
        "days": 7})
    assert r.status_code == 400 and "names an attribute type twice" in r.json()["error"]["message"], r.text


def test_subjects_with_escaped_characters_reach_the_certificate_intact(api):
    key = api.create("ECC_NIST_P256", "SIGN_VERIFY")["key_id"]
    subject = r"CN=Zahlungen M\C3\BCnchen,O=Example\, Inc.,OU=Cards \+ Payments,C=DE,SERIALNUMBER=HRB 12345"
    pem = api.call("POST", f"/v1/keys/{key}/certificate", {"subject": subject, "days": 1})["certificate_pem"]
    cert = x509.load_pem_x509_certificate(pem.encode())
    values = [(a.oid, a.value) for a in cert.subject]
    assert values == [
        (x509.NameOID.COMMON_NAME, "Zahlungen München"),
        (x509.NameOID.ORGANIZATION_NAME, "Example, Inc."),
        (x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "Cards + Payments"),
        (x509.NameOID.COUNTRY_NAME, "DE"),
        (x509.NameOID.SERIAL_NUMBER, "HRB 12345"),
    ]
    # RFC 5280: the country and the serial number are PrintableStrings, the rest UTF8String.
    kinds = {a.oid: a._type for a in cert.subject}
    assert kinds[x509.NameOID.COUNTRY_NAME] == x509.name._ASN1Type.PrintableString
    assert kinds[x509.NameOID.SERIAL_NUMBER] == x509.name._ASN1Type.PrintableString
    assert kinds[x509.NameOID.ORGANIZATION_NAME] == x509.name._ASN1Type.UTF8String
    # OpenSSL reads the same names.
    shown = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253,-esc_msb"],
                           input=pem.encode(), capture_output=True, check=True).stdout.decode()
    assert r"O=Example\, Inc." in shown and r"OU=Cards \+ Payments" in shown and "München" in shown, shown
    for bad, said in [("CN=a,CN=b", "names CN twice"), ("C=Germany", "two letters"), ("CN=a+O=b", "multi-valued")]:
        r = api.session.post(api.base + f"/v1/keys/{key}/certificate", json={"subject": bad, "days": 1}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationError", r.text
        assert said in r.json()["error"]["message"], r.text


def test_byok_import_of_locally_wrapped_material(api):
    key = api.create("HMAC_384", origin="EXTERNAL")["key_id"]
    params = api.call("GET", f"/v1/keys/{key}/import-parameters")
    wrapping = serialization.load_der_public_key(unb64(params["wrapping_public_key_der"]))
    assert wrapping.key_size == 4096
    material = os.urandom(48)
    ephemeral = os.urandom(32)
    rsa_part = wrapping.encrypt(ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    wrapped = rsa_part + aes_key_wrap_with_padding(ephemeral, material)
    api.call("POST", f"/v1/keys/{key}/import", {"import_token": params["import_token"], "wrapped_key_material": b64(wrapped)})
    mac = api.call("POST", f"/v1/keys/{key}/mac", {"message": b64(b"imported"), "algorithm": "HMAC_SHA_384"})
    assert unb64(mac["mac"]) == hmac.new(material, b"imported", hashlib.sha384).digest()


def test_export_unwraps_here(api):
    key = api.create("AES_256", exportable=True)["key_id"]
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = recipient.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    wrapped = unb64(api.call("POST", f"/v1/keys/{key}/export", {"wrapping_public_key_der": b64(spki)})["wrapped_key_material"])
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
    ephemeral = recipient.decrypt(wrapped[:256], padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    material = aes_key_unwrap_with_padding(ephemeral, wrapped[256:])
    assert len(material) == 32


def test_data_key_pair_is_a_real_key_pair(api):
    kek = api.create("SYMMETRIC_DEFAULT")["key_id"]
    pair = api.call("POST", f"/v1/keys/{kek}/data-key-pair", {"spec": "ECC_NIST_P256", "context": {"app": "py"}})
    private = serialization.load_der_private_key(unb64(pair["private_key_der"]), password=None)
    public = serialization.load_der_public_key(unb64(pair["public_key_der"]))
    sig = private.sign(b"x", ec.ECDSA(hashes.SHA256()))
    public.verify(sig, b"x", ec.ECDSA(hashes.SHA256()))
    plain = api.call("POST", "/v1/decrypt", {"ciphertext": pair["private_key_ciphertext"], "context": {"app": "py"}})
    assert unb64(plain["plaintext"]) == unb64(pair["private_key_der"])


def test_bad_input_is_refused_with_contract_codes(api, server):
    key = api.create("AES_256")["key_id"]
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {ROOT}"
    base = server["base"]
    for body, code in [(b"{", "ValidationError"), (b'{"plaintext": "!!"}', "ValidationError"),
                       (b'{"plaintext": "QQ==", "extra": 1}', "ValidationError")]:
        r = s.post(f"{base}/v1/keys/{key}/encrypt", data=body, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, code)
    r = s.post(f"{base}/v1/keys/{key}/encrypt", json={"plaintext": b64(b"\0" * (64 * 1024 + 1))})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "PayloadTooLarge")
    r = requests.get(f"{base}/v1/keys")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "Unauthenticated")


def test_streaming_file_encryption_runs_in_constant_memory(server, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(256):
            f.write(chunk)
    env = dict(os.environ, KEYWARD_ADDR=server["base"], KEYWARD_TOKEN=ROOT)
    key = subprocess.run([BIN, "--json", "key", "create"], env=env, check=True, capture_output=True).stdout
    import json
    key_id = json.loads(key)["key_id"]
    peak_kib = max(
        run_measured([BIN, "encrypt", key_id, "--file", str(big)], env),
        run_measured([BIN, "decrypt", "--file", str(big) + ".kws", "--out", str(tmp_path / "out.bin")], env),
    )
    assert peak_kib < 64 * 1024, f"the CLI used {peak_kib} KiB for a 256 MiB file"
    with open(big, "rb") as a, open(tmp_path / "out.bin", "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            assert x == y
            if not x:
                break
    assert os.path.getsize(str(big) + ".kws") > 256 << 20


def test_no_secret_reaches_the_server_log(api, server):
    key = api.create("AES_256")["key_id"]
    marker = b"python-suite-plaintext-marker-7f3a"
    api.call("POST", f"/v1/keys/{key}/encrypt", {"plaintext": b64(marker)})
    log = open(server["log"], "rb").read()
    assert marker not in log and b64(marker).encode() not in log
    assert ROOT.encode() not in log.replace(b"Root token: " + ROOT.encode(), b"")
