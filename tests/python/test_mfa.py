"""TOTP MFA checked with an independent authenticator implementation (pyotp)."""
import time
import urllib.parse

import pyotp
import requests


def test_totp_login_with_and_without_a_code(api, server):
    api.call("POST", "/v1/identities", {"name": "carol", "kind": "user", "roles": ["auditor"],
                                         "password": "carol's long password"}, expect=201)
    # Before enrolment, a password alone logs in.
    r = requests.post(server["base"] + "/v1/auth/login", json={"name": "carol", "password": "carol's long password"})
    assert r.status_code == 200 and r.json()["mfa"] is False
    uri = api.call("POST", "/v1/identities/carol/mfa")["totp_uri"]
    parsed = urllib.parse.urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    totp = pyotp.parse_uri(uri)
    base = server["base"]
    # Now the password alone is refused (403: MFA required), a wrong code is 401, the right code works once.
    r = requests.post(base + "/v1/auth/login", json={"name": "carol", "password": "carol's long password"})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "AccessDenied")
    wrong = "%06d" % ((int(totp.now()) + 1) % 1000000)
    r = requests.post(base + "/v1/auth/login", json={"name": "carol", "password": "carol's long password", "totp": wrong})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "Unauthenticated")
    code = totp.now()
    r = requests.post(base + "/v1/auth/login", json={"name": "carol", "password": "carol's long password", "totp": code})
    assert r.status_code == 200, r.text
    assert r.json()["mfa"] is True
    token = r.json()["token"]
    assert requests.get(base + "/v1/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # The same code cannot be used twice.
    r = requests.post(base + "/v1/auth/login", json={"name": "carol", "password": "carol's long password", "totp": code})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "Unauthenticated")
    # Wrong password with a right code is still refused.
    r = requests.post(base + "/v1/auth/login", json={"name": "carol", "password": "not the password!", "totp": totp.now()})
    assert r.status_code == 401
    # The seed never reaches the log or the audit log.
    secret = totp.secret
    assert secret.encode() not in open(server["log"], "rb").read()
    records = api.call("GET", "/v1/audit?principal=carol&limit=1000")["records"]
    assert records and all(secret not in str(r) for r in records)


def test_a_session_steps_up_to_mfa_with_a_totp_code(api, server):
    api.call("POST", "/v1/identities", {"name": "dave", "kind": "user", "roles": ["auditor"],
                                         "password": "dave's long password"}, expect=201)
    totp = pyotp.parse_uri(api.call("POST", "/v1/identities/dave/mfa")["totp_uri"])
    token = api.call("POST", "/v1/identities/dave/tokens", {}, expect=201)["token"]
    h = {"Authorization": f"Bearer {token}"}
    base = server["base"]
    plain = requests.post(base + "/v1/auth/session", headers=h, json={})
    assert plain.status_code == 200 and plain.json()["mfa"] is False
    wrong = "%06d" % ((int(totp.now()) + 1) % 1000000)
    r = requests.post(base + "/v1/auth/session", headers=h, json={"totp": wrong})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "Unauthenticated")
    code = totp.now()
    r = requests.post(base + "/v1/auth/session", headers=h, json={"totp": code, "ttl_seconds": 120})
    assert r.status_code == 200 and r.json()["mfa"] is True
    session = r.json()["token"]
    assert requests.get(base + "/v1/auth/self", headers={"Authorization": f"Bearer {session}"}).json()["mfa"] is True
    # Each code works once; an identity without TOTP cannot step up; signing out ends only the session.
    r = requests.post(base + "/v1/auth/session", headers=h, json={"totp": code})
    assert r.status_code == 401
    r = api.session.post(base + "/v1/auth/session", json={"totp": "123456"})
    assert r.status_code == 400 and "no TOTP" in r.json()["error"]["message"]
    assert requests.post(base + "/v1/auth/logout", headers={"Authorization": f"Bearer {session}"}).status_code == 204
    assert requests.get(base + "/v1/auth/self", headers={"Authorization": f"Bearer {session}"}).status_code == 401
    assert requests.get(base + "/v1/auth/self", headers=h).status_code == 200
    # Revoking the token a session came from revokes the session too: a stolen token cannot be laundered.
    other = requests.post(base + "/v1/auth/session", headers=h, json={}).json()["token"]
    parent_id = requests.get(base + "/v1/auth/self", headers=h).json()["token_id"]
    api.call("DELETE", f"/v1/tokens/{parent_id}", expect=204)
    assert requests.get(base + "/v1/auth/self", headers={"Authorization": f"Bearer {other}"}).status_code == 401
