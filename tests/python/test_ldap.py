"""Sign-in with directory accounts: Debian's slapd, started privately (its own configuration, database, port
and TLS certificate, made here), with people and groups loaded from LDIF."""
import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pyotp
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import BIN, ROOT, free_port

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "directory-admin-password"
BIND_DN = f"cn=keyward,ou=services,{SUFFIX}"
BIND_PW = "keyward-bind-secret-7f3a9c"


def certificate_pair(directory):
    """A CA and a server certificate for 127.0.0.1, as PEM files; returns the CA's PEM text."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Directory test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(ca_pem)
    with open(os.path.join(directory, "server.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, "server.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return ca_pem.decode()


LDIF = f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {BIND_DN}
objectClass: person
cn: keyward
sn: keyward
userPassword: {BIND_PW}

dn: uid=amara,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: amara
cn: Amara
sn: Admin
userPassword: amara's directory password

dn: uid=bram,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: bram
cn: Bram
sn: Auditor
userPassword: bram's directory password

dn: uid=cleo,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: cleo
cn: Cleo
sn: Leaver
employeeType: disabled
userPassword: cleo's directory password

dn: cn=kms-admins,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: kms-admins
member: uid=amara,ou=people,{SUFFIX}

dn: cn=auditors,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: auditors
member: uid=bram,ou=people,{SUFFIX}
member: uid=cleo,ou=people,{SUFFIX}
"""


class Slapd:
    """A private slapd: its own configuration, database, port and certificate."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="keyward-slapd-")
        self.port, self.tls_port = free_port(), free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_url = f"ldaps://127.0.0.1:{self.tls_port}"
        self.ca_pem = certificate_pair(self.dir)
        os.makedirs(os.path.join(self.dir, "db"))
        d = self.dir
        with open(os.path.join(d, "slapd.conf"), "w") as f:
            f.write("\n".join([
                *(f"include /etc/ldap/schema/{s}.schema" for s in ["core", "cosine", "inetorgperson", "nis"]),
                "modulepath /usr/lib/ldap", "moduleload back_mdb", "moduleload memberof",
                f"pidfile {d}/slapd.pid",
                f"TLSCACertificateFile {d}/ca.pem", f"TLSCertificateFile {d}/server.pem",
                f"TLSCertificateKeyFile {d}/server.key",
                "database mdb", f'suffix "{SUFFIX}"', f'rootdn "{ADMIN_DN}"', f"rootpw {ADMIN_PW}",
                f"directory {d}/db",
                # Active Directory keeps memberOf on each user; the overlay does the same here.
                "overlay memberof",
                # The service account may read people and groups; people may bind, and read nothing else.
                'access to attrs=userPassword by self write by * auth',
                f'access to * by dn.exact="{BIND_DN}" read by self read by anonymous auth by * none', ""]))
        self.proc = None
        self.start()
        with open(os.path.join(d, "data.ldif"), "w") as f:
            f.write(LDIF)
        subprocess.run(["ldapadd", "-x", "-H", self.url, "-D", ADMIN_DN, "-w", ADMIN_PW, "-f",
                        os.path.join(d, "data.ldif")], check=True, capture_output=True, timeout=30)

    def start(self):
        self.log = open(os.path.join(self.dir, "slapd.log"), "ab")
        self.proc = subprocess.Popen(["slapd", "-f", os.path.join(self.dir, "slapd.conf"), "-h",
                                      f"{self.url}/ {self.ldaps_url}/", "-d", "0"], stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            r = subprocess.run(["ldapsearch", "-x", "-H", self.url, "-D", ADMIN_DN, "-w", ADMIN_PW, "-b", "",
                                "-s", "base"], capture_output=True, timeout=10)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("slapd did not start: " + open(os.path.join(self.dir, "slapd.log")).read()[-2000:])

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None

    def config(self, **extra):
        return {"url": self.url, "starttls": True, "ca_pem": self.ca_pem, "bind_dn": BIND_DN,
                "bind_password": BIND_PW, "user_base": f"ou=people,{SUFFIX}",
                "user_filter": "(&(objectClass=inetOrgPerson)(uid={name})(!(employeeType=disabled)))",
                "group_base": f"ou=groups,{SUFFIX}", "group_filter": "(member={dn})",
                "group_roles": {"kms-admins": ["key-admin"], "auditors": ["auditor"]}, "timeout_seconds": 3,
                **extra}


@pytest.fixture(scope="module")
def slapd():
    s = Slapd()
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def directory(slapd, server):
    r = requests.put(server["base"] + "/v1/auth/ldap/config", json=slapd.config(),
                     headers={"Authorization": f"Bearer {ROOT}"})
    assert r.status_code in (200, 201), r.text
    return slapd


def ldap_login(server, name, password, **extra):
    return requests.post(server["base"] + "/v1/auth/ldap/login", json={"name": name, "password": password, **extra},
                         timeout=60)


def test_people_sign_in_and_their_groups_map_to_roles(server, api, directory):
    r = ldap_login(server, "amara", "amara's directory password")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["identity"] == "amara" and out["roles"] == ["key-admin"]
    token = out["token"]
    me = requests.get(server["base"] + "/v1/auth/self", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["roles"] == ["key-admin"]
    # A key-admin manages keys and does not use them.
    h = {"Authorization": f"Bearer {token}"}
    key = requests.post(server["base"] + "/v1/keys", headers=h, json={"spec": "AES_256"})
    assert key.status_code == 201, key.text
    enc = requests.post(f"{server['base']}/v1/keys/{key.json()['key_id']}/encrypt", headers=h,
                        json={"plaintext": "aGk="})
    assert enc.status_code == 403
    assert ldap_login(server, "bram", "bram's directory password").json()["roles"] == ["auditor"]
    assert api.call("GET", "/v1/identities/amara")["source"] == "ldap"


def test_a_wrong_password_an_unknown_user_and_a_disabled_one_look_alike(server, api, directory):
    answers = [ldap_login(server, "amara", "not amara's password"),
               ldap_login(server, "nobody-" + uuid.uuid4().hex[:4], "whatever password"),
               ldap_login(server, "cleo", "cleo's directory password"),
               ldap_login(server, "amara", ""),
               ldap_login(server, "*", "amara's directory password")]
    for r in answers:
        assert r.status_code == 401, r.text
        assert r.json()["error"] == {"code": "Unauthenticated", "message": "unknown name or wrong password"} \
            or r.json()["error"]["message"] == "unknown name or wrong password"
    records = api.call("GET", "/v1/audit?action=kms:LoginLdap&limit=1000")["records"]
    assert sum(1 for x in records if x["outcome"] != "allow") >= len(answers)
    # No password, the users' nor the service account's, reaches the log or the audit trail.
    log = open(server["log"], "rb").read()
    for secret in [b"amara's directory password", b"cleo's directory password", BIND_PW.encode()]:
        assert secret not in log
        assert secret not in str(records).encode()


def test_the_bind_password_is_stored_sealed_and_never_returned(server, api, directory):
    got = api.call("GET", "/v1/auth/ldap/config")
    assert "bind_password" not in got and got["bind_password_set"] is True and got["source"] == "api"
    for root, _, files in os.walk(server["data"]):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                assert BIND_PW.encode() not in fh.read(), path
    # A change of filters keeps the sealed password.
    cfg = directory.config()
    del cfg["bind_password"]
    api.call("PUT", "/v1/auth/ldap/config", cfg)
    assert ldap_login(server, "bram", "bram's directory password").status_code == 200


def test_configuration_is_admin_only_and_refuses_plain_ldap(server, api, directory):
    api.call("POST", "/v1/identities", {"name": "ldap-ka", "kind": "service", "roles": ["key-admin"]}, expect=201)
    ka = api.call("POST", "/v1/identities/ldap-ka/tokens", {}, expect=201)["token"]
    h = {"Authorization": f"Bearer {ka}"}
    assert requests.get(server["base"] + "/v1/auth/ldap/config", headers=h).status_code == 403
    assert requests.put(server["base"] + "/v1/auth/ldap/config", headers=h,
                        json=directory.config()).status_code == 403
    r = api.session.put(server["base"] + "/v1/auth/ldap/config", json=directory.config(starttls=False))
    assert r.status_code == 400 and "in the clear" in r.json()["error"]["message"]
    r = api.session.put(server["base"] + "/v1/auth/ldap/config",
                        json=directory.config(group_roles={"x": ["superuser"]}))
    assert r.status_code == 400 and "unknown role" in r.json()["error"]["message"]
    changes = api.call("GET", "/v1/audit?action=kms:PutLdapConfig&limit=100")["records"]
    assert any(c["outcome"] == "deny" and c["principal"] == "ldap-ka" for c in changes)
    # The directory's certificate is checked: another CA's certificate is refused, and the reason is given.
    other = directory.config(ca_pem=certificate_pair(tempfile.mkdtemp()))
    api.call("PUT", "/v1/auth/ldap/config", other)
    try:
        r = ldap_login(server, "bram", "bram's directory password")
        assert r.status_code == 503 and "directory" in r.json()["error"]["message"]
    finally:
        api.call("PUT", "/v1/auth/ldap/config", directory.config())


def test_totp_still_applies_to_an_enrolled_directory_user(server, api, directory):
    assert ldap_login(server, "bram", "bram's directory password").status_code == 200
    uri = api.call("POST", "/v1/identities/bram/mfa")["totp_uri"]
    totp = pyotp.parse_uri(uri)
    r = ldap_login(server, "bram", "bram's directory password")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "AccessDenied")
    r = ldap_login(server, "bram", "bram's directory password", totp=totp.now())
    assert r.status_code == 200 and r.json()["mfa"] is True
    api.call("DELETE", "/v1/identities/bram", expect=204)


def test_a_stopped_directory_is_a_clear_503_and_recovery_follows(server, directory):
    directory.stop()
    try:
        started = time.time()
        r = ldap_login(server, "amara", "amara's directory password")
        assert r.status_code == 503, r.text
        assert "directory" in r.json()["error"]["message"]
        assert time.time() - started < 20
    finally:
        directory.start()
    assert ldap_login(server, "amara", "amara's directory password").status_code == 200


def test_ldaps_and_memberof_as_active_directory_gives_them(server, api, directory):
    # Over LDAPS, with groups read from the user's memberOf alone (no group search).
    cfg = directory.config(url=directory.ldaps_url, starttls=False)
    del cfg["group_base"], cfg["group_filter"]
    api.call("PUT", "/v1/auth/ldap/config", cfg)
    try:
        r = ldap_login(server, "amara", "amara's directory password")
        assert r.status_code == 200, r.text
        assert r.json()["roles"] == ["key-admin"]
    finally:
        api.call("PUT", "/v1/auth/ldap/config", directory.config())


def test_a_directory_that_never_answers_is_a_503_within_the_timeout(server, api, directory):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections are queued, never answered
    try:
        api.call("PUT", "/v1/auth/ldap/config",
                 directory.config(url=f"ldap://127.0.0.1:{silent.getsockname()[1]}", timeout_seconds=1))
        started = time.time()
        r = ldap_login(server, "amara", "amara's directory password")
        assert r.status_code == 503, r.text
        assert "directory" in r.json()["error"]["message"]
        assert time.time() - started < 10
    finally:
        silent.close()
        api.call("PUT", "/v1/auth/ldap/config", directory.config())


def test_the_cli_signs_in_with_a_directory_account(server, directory):
    env = dict(os.environ, KEYWARD_ADDR=server["base"])
    env.pop("KEYWARD_TOKEN", None)
    out = subprocess.run([BIN, "--json", "auth", "ldap-login", "amara"], input=b"amara's directory password\n",
                         capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    token = json.loads(out.stdout)["token"]
    env["KEYWARD_TOKEN"] = token
    me = subprocess.run([BIN, "--json", "whoami"], capture_output=True, env=env, timeout=60)
    assert json.loads(me.stdout)["roles"] == ["key-admin"]
    bad = subprocess.run([BIN, "auth", "ldap-login", "amara"], input=b"wrong\n", capture_output=True,
                         env=dict(env, KEYWARD_TOKEN=""), timeout=60)
    assert bad.returncode != 0 and b"unknown name or wrong password" in bad.stderr


def test_vault_clients_sign_in_with_a_directory_account(server, directory):
    import hvac
    client = hvac.Client(url=server["vault"])
    out = client.auth.ldap.login(username="amara", password="amara's directory password")
    assert out["auth"]["policies"] == ["key-admin"]
    assert client.auth.token.lookup_self()["data"]["display_name"] == "amara"
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=server["vault"]).auth.ldap.login(username="amara", password="wrong password")
