"""Sign-in with JWTs from a trusted issuer: a small OIDC issuer of the suite's own (discovery document and
JWKS over HTTP, tokens signed with PyJWT and `cryptography`), rotating its keys, going down, and minting every
kind of bad token Keyward must refuse."""
import base64
import hashlib
import hmac
import http.server
import os
import json
import subprocess
import tempfile
import threading
import time
import uuid

import hvac
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import BIN, ROOT, free_port, running_server


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An OIDC issuer: /.well-known/openid-configuration names /jwks, which publishes the current keys."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.keys = {}
        self.published = []
        self.jwks_fetches = 0
        self.down = False
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if issuer.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path == "/jwks":
                    issuer.jwks_fetches += 1
                    body = {"keys": [issuer.jwk(k) for k in issuer.published]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add_key(self, kid, alg, publish=True):
        if alg.startswith(("RS", "PS")):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            key = ec.generate_private_key(ec.SECP384R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        self.keys[kid] = (alg, key)
        if publish:
            self.published.append(kid)
        return key

    def jwk(self, kid):
        alg, key = self.keys[kid]
        algo = jwt.get_algorithm_by_name(alg)
        j = json.loads(algo.to_jwk(key.public_key()))
        j.update({"kid": kid, "use": "sig", "alg": alg})
        return j

    def token(self, kid="k1", iss=None, aud="keyward", lifetime=600, **claims):
        alg, key = self.keys[kid]
        now = int(time.time())
        body = {"iss": iss or self.url, "aud": aud, "iat": now, "exp": now + lifetime, **claims}
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})

    def stop(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def issuer():
    i = Issuer()
    i.add_key("k1", "RS256")
    yield i
    i.stop()


def corp_config(issuer, **extra):
    return {
        "issuer": issuer.url,
        "audiences": ["keyward"],
        "rules": [
            {"name": "payments-sa", "kind": "service", "create_identity": True,
             "name_claim": "kubernetes.io/serviceaccount/service-account.name",
             "bound_claims": {"kubernetes.io/serviceaccount/namespace": "payments"},
             "roles": ["key-user"], "max_ttl_seconds": 900},
            {"name": "people", "kind": "user", "create_identity": True, "name_claim": "preferred_username",
             "bound_claims": {"email_verified": True}, "group_claim": "groups",
             "group_roles": {"kms-admins": ["key-admin"], "kms-users": ["key-user"], "audit": ["auditor"]}},
        ],
        **extra,
    }


@pytest.fixture
def corp(issuer, server):
    """A newly configured issuer for each test: it fetches the keys the issuer publishes at its first sign-in."""
    name = "corp-" + uuid.uuid4().hex[:6]
    r = requests.put(f"{server['base']}/v1/auth/jwt/issuers/{name}", json=corp_config(issuer),
                     headers={"Authorization": f"Bearer {ROOT}"})
    assert r.status_code == 201, r.text
    return name


def login(server, issuer_name, token, rule=None):
    body = {"issuer": issuer_name, "jwt": token}
    if rule:
        body["rule"] = rule
    return requests.post(server["base"] + "/v1/auth/jwt/login", json=body, timeout=30)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_a_person_signs_in_and_groups_map_to_roles(server, api, issuer, corp):
    name = "alice-" + uuid.uuid4().hex[:6]
    jwt_text = issuer.token(preferred_username=name, email_verified=True, groups=["kms-users", "other"],
                            lifetime=300)
    r = login(server, corp, jwt_text)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["identity"] == name and out["roles"] == ["key-user"] and out["mfa"] is False
    # The token lives no longer than the JWT.
    expires = time.mktime(time.strptime(out["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert expires <= time.time() + 301
    token = out["token"]
    me = requests.get(server["base"] + "/v1/auth/self", headers=bearer(token)).json()
    assert me["name"] == name and me["roles"] == ["key-user"]
    # It uses keys as a key-user, and may not manage them.
    key = api.create("AES_256")
    enc = requests.post(f"{server['base']}/v1/keys/{key['key_id']}/encrypt", headers=bearer(token),
                        json={"plaintext": base64.b64encode(b"hi").decode()})
    assert enc.status_code == 200, enc.text
    r = requests.post(server["base"] + "/v1/keys", headers=bearer(token), json={"spec": "AES_256"})
    assert r.status_code == 403
    # The same token is a Vault token at the Vault door (hvac).
    vault = hvac.Client(url=server["vault"], token=token)
    assert vault.auth.token.lookup_self()["data"]["display_name"] == name
    # The identity was created on first sign-in, bound to this issuer, with no grants of its own.
    ident = api.call("GET", f"/v1/identities/{name}")
    assert ident["source"] == f"jwt:{corp}" and ident["roles"] == [] and ident["kind"] == "user"
    # A second sign-in with other groups gets other roles: the groups are read afresh every time.
    r = login(server, corp, issuer.token(preferred_username=name, email_verified=True, groups=["audit"]))
    assert r.json()["roles"] == ["auditor"]
    # The sign-in is audited and names the identity; the JWT is in no log.
    records = api.call("GET", f"/v1/audit?action=kms:LoginJwt&resource=identity/{name}")["records"]
    assert len(records) == 2 and all(x["outcome"] == "allow" for x in records)
    assert jwt_text.encode() not in open(server["log"], "rb").read()


def test_every_issuer_algorithm_verifies(server, api, issuer):
    for kid, alg in [("ps", "PS256"), ("es256", "ES256"), ("es384", "ES384"), ("ed", "EdDSA"), ("rs512", "RS512")]:
        issuer.add_key(kid, alg)
    # A newly configured issuer fetches its keys at the first sign-in.
    name = "algs-" + uuid.uuid4().hex[:6]
    api.call("PUT", f"/v1/auth/jwt/issuers/{name}", corp_config(issuer), expect=201)
    for kid in ["ps", "es256", "es384", "ed", "rs512"]:
        r = login(server, name, issuer.token(kid, preferred_username=f"algo-{kid}", email_verified=True))
        assert r.status_code == 200, (kid, r.text)


def test_a_kubernetes_service_account_is_bound_to_its_namespace(server, issuer, corp):
    sa = {"sub": "system:serviceaccount:payments:checkout",
          "kubernetes.io/serviceaccount/namespace": "payments",
          "kubernetes.io/serviceaccount/service-account.name": "checkout-" + uuid.uuid4().hex[:4]}
    r = login(server, corp, issuer.token(lifetime=3600, **sa))
    assert r.status_code == 200, r.text
    assert r.json()["roles"] == ["key-user"]
    # The rule caps the token's life at 15 minutes, though the JWT lives an hour.
    expires = time.mktime(time.strptime(r.json()["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert expires <= time.time() + 901
    # Another namespace does not meet the rule's bound claims.
    other = dict(sa, **{"kubernetes.io/serviceaccount/namespace": "web"})
    r = login(server, corp, issuer.token(**other), rule="payments-sa")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "AccessDenied")
    assert "bound claims" in r.json()["error"]["message"]
    # Without naming a rule, no rule fits the web namespace (the people rule wants a verified email).
    r = login(server, corp, issuer.token(**other))
    assert r.status_code == 403


def test_rotation_is_followed_and_an_unreachable_issuer_keeps_cached_keys(server, issuer, corp):
    who = {"preferred_username": "rot-" + uuid.uuid4().hex[:4], "email_verified": True}
    assert login(server, corp, issuer.token("k1", **who)).status_code == 200
    time.sleep(31)  # the refetch interval, so that the rotation below is fetched
    issuer.add_key("k2", "ES256")
    published = issuer.published
    issuer.published = ["k2"]
    try:
        rotated_and_down(server, issuer, corp, who)
    finally:
        issuer.published = published + ["k2"]


def rotated_and_down(server, issuer, corp, who):
    before = issuer.jwks_fetches
    r = login(server, corp, issuer.token("k2", **who))
    assert r.status_code == 200, r.text
    assert issuer.jwks_fetches == before + 1
    # A flood of tokens with made-up key ids makes no second fetch within the interval.
    for i in range(10):
        issuer.add_key(f"junk{i}", "ES256", publish=False)
        r = login(server, corp, issuer.token(f"junk{i}", **who))
        assert r.status_code == 401 and "kid" in r.json()["error"]["message"]
    assert issuer.jwks_fetches == before + 1
    # The issuer goes down: the keys held stay valid.
    issuer.down = True
    try:
        assert login(server, corp, issuer.token("k2", **who)).status_code == 200
    finally:
        issuer.down = False


def test_bad_tokens_are_refused_with_a_clear_401_and_audited(server, api, issuer, corp):
    who = {"preferred_username": "bad-" + uuid.uuid4().hex[:4], "email_verified": True}
    now = int(time.time())
    _, rsa_key = issuer.keys["k1"]
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    good = issuer.token("k1", **who)
    h, p, s = good.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    tampered_claims["groups"] = ["kms-admins"]
    tampered = f"{h}.{b64url(json.dumps(tampered_claims).encode())}.{s}"
    # HS256 "signed" with the issuer's public key: the classic algorithm confusion.
    hs_header = b64url(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    hs_body = b64url(json.dumps({"iss": issuer.url, "aud": "keyward", "exp": now + 600, **who}).encode())
    hs_sig = b64url(hmac.new(pem, f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest())
    none_token = b64url(b'{"alg":"none"}') + "." + hs_body + "."
    cases = {
        "expired": (issuer.token("k1", lifetime=-120, **who), "expired"),
        "not yet valid": (issuer.token("k1", nbf=now + 600, **who), "not valid yet"),
        "wrong audience": (issuer.token("k1", aud="someone-else", **who), "audience"),
        "wrong issuer": (issuer.token("k1", iss="https://evil.example.com", **who), "issuer"),
        "tampered": (tampered, "signature"),
        "alg none": (none_token, "never accepted"),
        "hmac with the public key": (f"{hs_header}.{hs_body}.{hs_sig}", "never accepted"),
        "garbage": ("not-a-jwt", "not a JWT"),
    }
    for what, (token, says) in cases.items():
        r = login(server, corp, token)
        assert r.status_code == 401, (what, r.text)
        err = r.json()["error"]
        assert err["code"] == "Unauthenticated" and says in err["message"], (what, err)
    r = login(server, "no-such-issuer", good)
    assert r.status_code == 401 and "no trusted issuer" in r.json()["error"]["message"]
    refused = api.call("GET", "/v1/audit?action=kms:LoginJwt&outcome=deny&limit=1000")["records"]
    refused += api.call("GET", "/v1/audit?action=kms:LoginJwt&outcome=error&limit=1000")["records"]
    assert len(refused) >= len(cases) + 1
    # No token, good or bad, reaches a log.
    log = open(server["log"], "rb").read()
    audit = json.dumps(api.call("GET", "/v1/audit?action=kms:LoginJwt&limit=1000")).encode()
    for token, _ in cases.values():
        if len(token) > 20:
            assert token.encode() not in log and token.encode() not in audit


def test_a_local_identity_is_not_reached_through_an_issuer(server, api, issuer, corp):
    name = "local-" + uuid.uuid4().hex[:4]
    api.call("POST", "/v1/identities", {"name": name, "kind": "user", "roles": ["admin"],
                                         "password": "a long local password"}, expect=201)
    r = login(server, corp, issuer.token(preferred_username=name, email_verified=True))
    assert r.status_code == 401
    assert "does not sign in through" in r.json()["error"]["message"]
    # Nor is a reserved name, whatever the issuer asserts.
    r = login(server, corp, issuer.token(preferred_username="root", email_verified=True))
    assert r.status_code == 401


def test_issuers_are_configured_by_admins_only_and_audited(server, api, issuer):
    name = "cfg-" + uuid.uuid4().hex[:4]
    key_admin = api.call("POST", "/v1/identities", {"name": name + "-ka", "kind": "service",
                                                     "roles": ["key-admin"]}, expect=201)
    del key_admin
    ka = api.call("POST", f"/v1/identities/{name}-ka/tokens", {}, expect=201)["token"]
    r = requests.put(f"{server['base']}/v1/auth/jwt/issuers/{name}", json=corp_config(issuer), headers=bearer(ka))
    assert r.status_code == 403
    for bad, says in [({"algorithms": ["HS256"]}, "never none or HMAC"),
                      ({"algorithms": ["none"]}, "never none or HMAC"),
                      ({"issuer": "http://id.example.com"}, "https"),
                      ({"audiences": []}, "audiences")]:
        cfg = dict(corp_config(issuer), **bad)
        r = api.session.put(f"{server['base']}/v1/auth/jwt/issuers/{name}", json=cfg)
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    cfg = corp_config(issuer)
    cfg["rules"][0]["policies"] = ["no-such-policy"]
    r = api.session.put(f"{server['base']}/v1/auth/jwt/issuers/{name}", json=cfg)
    assert r.status_code == 400 and "does not exist" in r.text
    api.call("PUT", f"/v1/auth/jwt/issuers/{name}", corp_config(issuer), expect=201)
    got = api.call("GET", f"/v1/auth/jwt/issuers/{name}")
    assert got["source"] == "api" and got["issuer"] == issuer.url
    assert name in [i["name"] for i in api.call("GET", "/v1/auth/jwt/issuers")["issuers"]]
    who = {"preferred_username": "gone-" + uuid.uuid4().hex[:4], "email_verified": True}
    assert login(server, name, issuer.token(**who)).status_code == 200
    api.call("DELETE", f"/v1/auth/jwt/issuers/{name}", expect=204)
    assert login(server, name, issuer.token(**who)).status_code == 401
    changes = api.call("GET", f"/v1/audit?resource=jwt_issuer/{name}&limit=100")["records"]
    assert {"kms:PutJwtIssuer", "kms:DeleteJwtIssuer"} <= {c["action"] for c in changes}
    assert any(c["outcome"] == "deny" and c["principal"] == f"{name}-ka" for c in changes)


def test_an_air_gapped_issuer_from_the_configuration_file(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "ci-keys.pem").write_text(pem)
    conf = tmp_path / "keyward.toml"
    conf.write_text(
        '[jwt_issuers.ci]\n'
        'issuer = "https://ci.example.com"\n'
        'audiences = ["keyward"]\n'
        'algorithms = ["ES256"]\n'
        f'jwks_file = "{tmp_path / "ci-keys.pem"}"\n'
        '[[jwt_issuers.ci.rules]]\n'
        'name = "deploy"\n'
        'kind = "service"\n'
        'create_identity = true\n'
        'name_claim = "job"\n'
        'bound_claims = { ref = ["refs/heads/main", "refs/heads/release"] }\n'
        'roles = ["key-user"]\n')
    with running_server(extra_args=["--config", str(conf)]) as s:
        now = int(time.time())
        claims = {"iss": "https://ci.example.com", "aud": "keyward", "exp": now + 300, "job": "deployer",
                  "ref": "refs/heads/main"}
        r = requests.post(s["base"] + "/v1/auth/jwt/login",
                          json={"issuer": "ci", "jwt": jwt.encode(claims, key, algorithm="ES256")})
        assert r.status_code == 200, r.text
        claims["ref"] = "refs/heads/feature"
        r = requests.post(s["base"] + "/v1/auth/jwt/login",
                          json={"issuer": "ci", "jwt": jwt.encode(claims, key, algorithm="ES256")})
        assert r.status_code == 403
        root = {"Authorization": f"Bearer {ROOT}"}
        got = requests.get(s["base"] + "/v1/auth/jwt/issuers/ci", headers=root).json()
        assert got["source"] == "config" and got["jwks"] == pem
        r = requests.delete(s["base"] + "/v1/auth/jwt/issuers/ci", headers=root)
        assert r.status_code == 409 and "configuration file" in r.text


def test_a_bad_issuer_in_the_configuration_file_stops_the_start(tmp_path):
    conf = tmp_path / "keyward.toml"
    conf.write_text('[jwt_issuers.ci]\nissuer = "https://ci.example.com"\naudiences = ["k"]\n'
                    'algorithms = ["HS256"]\nrules = []\n')
    out = subprocess.run([BIN, "serve", "--dev", "--config", str(conf), "--listen", f"127.0.0.1:{free_port()}",
                          "--data-dir", tempfile.mkdtemp()], capture_output=True, timeout=60)
    assert out.returncode != 0
    assert b"jwt_issuers.ci" in out.stderr and b"HMAC" in out.stderr


def test_the_cli_exchanges_a_jwt_and_configures_issuers(server, issuer, tmp_path):
    env = dict(os.environ, KEYWARD_ADDR=server["base"], KEYWARD_TOKEN=ROOT)
    name = "cli-" + uuid.uuid4().hex[:4]
    doc = tmp_path / "issuer.json"
    doc.write_text(json.dumps(corp_config(issuer)))
    put = subprocess.run([BIN, "--json", "auth", "issuer-put", name, "--in", str(doc)], capture_output=True,
                         env=env, timeout=60)
    assert put.returncode == 0, put.stderr
    listed = subprocess.run([BIN, "--json", "auth", "issuer-list"], capture_output=True, env=env, timeout=60)
    assert name in [i["name"] for i in json.loads(listed.stdout)["issuers"]]
    token = issuer.token(preferred_username="cli-user-" + name[-4:], email_verified=True, groups=["kms-users"])
    login_env = dict(env)
    login_env.pop("KEYWARD_TOKEN")
    out = subprocess.run([BIN, "--json", "auth", "jwt-login", name], input=token.encode(), capture_output=True,
                         env=login_env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["roles"] == ["key-user"]
    gone = subprocess.run([BIN, "auth", "issuer-delete", name], capture_output=True, env=env, timeout=60)
    assert gone.returncode == 0 and gone.stdout == b"", gone.stderr


def test_vault_clients_sign_in_with_the_same_jwt(server, issuer, corp):
    """hvac's JWT login at the Vault door: the issuer is the mount, the rule is the role."""
    who = "vault-" + uuid.uuid4().hex[:6]
    client = hvac.Client(url=server["vault"])
    out = client.auth.jwt.jwt_login(role="people", jwt=issuer.token(preferred_username=who, email_verified=True,
                                                                     groups=["kms-users"]), path=corp)
    assert out["auth"]["policies"] == ["key-user"] and out["auth"]["lease_duration"] > 0
    assert client.auth.token.lookup_self()["data"]["display_name"] == who
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=server["vault"]).auth.jwt.jwt_login(
            role="people", jwt=issuer.token(preferred_username=who, email_verified=True, lifetime=-100), path=corp)
