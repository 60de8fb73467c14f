"""The web console in a real browser: Debian's Chromium driven by Selenium, against a real server. Every page a
test visits is checked for the console's security headers and for errors in the browser's log, and saved as a
screenshot (under target/console-screenshots)."""
import base64
import http.server
import json
import os
import re
import threading
import time
import uuid

import pyotp
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By

from conftest import REPO, ROOT, free_port

SHOTS = os.environ.get("KEYWARD_SCREENSHOTS", os.path.join(REPO, "target", "console-screenshots"))


class Browser:
    """A headless Chromium with its own profile: one browser, one person's session."""

    def __init__(self, base, name):
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                    "--disable-gpu", "--lang=en-US"]:
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
        self.d = webdriver.Chrome(options=opts, service=service)
        self.base = base
        self.name = name
        self.shots = 0
        os.makedirs(SHOTS, exist_ok=True)

    def visit(self, path, refused=False):
        self.d.get(self.base + path)
        return self.checked(refused)

    def checked(self, refused=False):
        """The page now shown: its headers carry the policy, the browser logged no error, and it is saved. A
        page expected to be a refusal may log its own status, and nothing else."""
        path = self.d.current_url[len(self.base):]
        errors = [e for e in self.d.get_log("browser") if e["level"] == "SEVERE"
                  and not (refused and re.search(r"status of 40[0-4]", e["message"]))]
        assert not errors, errors
        r = requests.get(self.d.current_url, cookies=self.cookies(), allow_redirects=False, timeout=30)
        csp = r.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, (path, csp)
        assert r.headers.get("x-frame-options") == "DENY" and r.headers.get("referrer-policy") == "no-referrer"
        self.shots += 1
        slug = re.sub(r"[^a-z0-9]+", "-", path.split("?")[0].lower()).strip("-") or "root"
        self.d.save_screenshot(os.path.join(SHOTS, f"{self.name}-{self.shots:02d}-{slug}.png"))
        return self

    def cookies(self):
        return {c["name"]: c["value"] for c in self.d.get_cookies()}

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def all(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def click(self, css, refused=False):
        self.find(css).click()
        return self.checked(refused)

    def fill(self, css, value):
        e = self.find(css)
        e.clear()
        e.send_keys(value)

    def text(self, css):
        return self.find(css).text

    def sign_in_token(self, token):
        self.visit("/ui/")
        assert "/ui/login" in self.d.current_url
        self.fill("#token", token)
        return self.click("#sign-in-token")

    def sign_in_password(self, name, password, totp=None, refused=False):
        self.visit("/ui/login")
        self.fill("#name", name)
        self.fill("#password", password)
        if totp:
            self.fill("#totp", totp)
        return self.click("#sign-in", refused)

    def csrf(self):
        return self.find("input[name=csrf]").get_attribute("value")

    def quit(self):
        self.d.quit()


@pytest.fixture
def browser(server, request):
    b = Browser(server["base"], request.node.name.replace("test_", "")[:40])
    yield b
    b.quit()


def person(api, role, password=True):
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "kind": "user", "roles": [role]}
    if password:
        body["password"] = f"{name} has a long password"
    api.call("POST", "/v1/identities", body, expect=201)
    return name, body.get("password")


def api_as(server, token):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    s.base = server["base"]
    return s


def test_sign_in_with_a_token_and_sign_out_revokes_the_session(server, browser):
    browser.sign_in_token(ROOT)
    assert browser.text("#title") == "Overview"
    assert browser.text("#who") == "root"
    assert browser.find("#seal .big").text == "Unsealed"
    assert browser.all("#activity-chart") and browser.all("#nodes table")
    session = browser.cookies()["kw_session"]
    assert session != ROOT
    # The cookie is out of reach of scripts and of other sites.
    cookie = next(c for c in browser.d.get_cookies() if c["name"] == "kw_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    me = requests.get(server["base"] + "/v1/auth/self", headers={"Authorization": f"Bearer {session}"})
    assert me.status_code == 200 and me.json()["name"] == "root"
    for page in ["/ui/keys", "/ui/audit", "/ui/approvals", "/ui/access", "/ui/compliance"]:
        browser.visit(page)
        assert not browser.all("#error"), page
    browser.visit("/ui/")
    browser.click("#sign-out")
    assert "/ui/login" in browser.d.current_url
    # The session's token is revoked; the token that opened it is not.
    r = requests.get(server["base"] + "/v1/auth/self", headers={"Authorization": f"Bearer {session}"})
    assert r.status_code == 401
    assert requests.get(server["base"] + "/v1/auth/self", headers={"Authorization": f"Bearer {ROOT}"}).status_code == 200
    browser.visit("/ui/keys")
    assert "/ui/login" in browser.d.current_url


def test_sign_in_with_a_password_and_totp(server, api, browser):
    name, password = person(api, "auditor")
    totp = pyotp.parse_uri(api.call("POST", f"/v1/identities/{name}/mfa")["totp_uri"])
    browser.sign_in_password(name, password, refused=True)
    assert "TOTP" in browser.text("#error")  # MFA is required
    browser.sign_in_password(name, "not the password at all", totp.now(), refused=True)
    assert "wrong password" in browser.text("#error")
    browser.sign_in_password(name, password, totp.now())
    assert browser.text("#who") == name
    assert "MFA" in browser.text("header")


def test_a_key_is_created_rotated_disabled_and_its_deletion_scheduled_and_cancelled(server, api, browser):
    browser.sign_in_token(ROOT)
    browser.visit("/ui/keys")
    alias = f"alias/console-{uuid.uuid4().hex[:6]}"
    browser.fill("#alias", alias)
    browser.fill("#rotation_period_days", "20")
    browser.click("#create")
    assert browser.text("#title") == alias and browser.all("#notice")
    key_page = browser.d.current_url[len(server["base"]):].split("?")[0]
    key_id = key_page.rsplit("/", 1)[1]
    assert browser.all("#timeline-v1") and not browser.all("#timeline-v2")
    browser.click("#rotate")
    assert browser.all("#timeline-v2") and browser.text("#primary") == "v2"
    # A rotation due within 30 days shows on the overview.
    browser.visit("/ui/")
    assert alias in browser.text("#due")
    browser.visit(key_page)
    browser.d.save_screenshot(os.path.join(SHOTS, "key-page.png"))
    browser.click("#primary-v1")
    assert browser.text("#primary") == "v1"
    browser.click("#disable")
    assert browser.text("#key-state") == "Disabled"
    assert api.call("GET", f"/v1/keys/{key_id}")["state"] == "Disabled"
    browser.fill("#pending_days", "7")
    browser.click("#schedule-deletion")
    assert browser.text("#key-state") == "PendingDeletion"
    browser.click("#cancel-deletion")
    assert browser.text("#key-state") == "Disabled"
    browser.click("#enable")
    assert browser.text("#key-state") == "Enabled"
    # Tags, an alias, the filtered table.
    browser.fill("#tag-text", "team=payments\nenv=prod")
    browser.click("#save-tags")
    assert api.call("GET", f"/v1/keys/{key_id}")["tags"] == {"team": "payments", "env": "prod"}
    browser.visit("/ui/keys?q=" + alias.split("/")[1])
    assert len(browser.all("#keys tr")) == 2
    # Every change was made by root through the API, and audited.
    records = api.call("GET", f"/v1/audit?key_id={key_id}&limit=100")["records"]
    actions = {r["action"] for r in records if r["principal"] == "root"}
    assert {"kms:CreateKey", "kms:RotateKey", "kms:DisableKey", "kms:ScheduleKeyDeletion",
            "kms:CancelKeyDeletion", "kms:SetPrimaryVersion"} <= actions


def test_an_overview_screenshot_for_the_readme(server, api, browser):
    for spec, usage, days in [("AES_256", None, 14), ("ECC_NIST_P256", "SIGN_VERIFY", 25), ("SM4", None, None)]:
        extra = {"rotation_period_days": days} if days else {}
        api.create(spec, usage, **extra)
    browser.sign_in_token(ROOT)
    browser.visit("/ui/")
    browser.d.save_screenshot(os.path.join(SHOTS, "overview.png"))


def test_a_second_identity_approves_a_quorum_request():
    # A server of its own: a key under quorum makes every later policy change wait for approval.
    from conftest import Api, running_server
    with running_server() as srv:
        api = Api(srv["base"])
        alice, alice_pw = person(api, "key-admin")
        bob, bob_pw = person(api, "key-admin")
        key = api.call("POST", "/v1/keys", {"spec": "AES_256", "quorum": {"approvals": 1}}, expect=201)
        browser = Browser(srv["base"], "quorum")
        try:
            browser.sign_in_password(alice, alice_pw)
            browser.visit(f"/ui/keys/{key['key_id']}")
            browser.click("#schedule-deletion")
            assert "/ui/approvals" in browser.d.current_url and browser.all("#notice")
            approval = browser.text("#approval-id")
            # The requester is offered no approval of its own request.
            assert not browser.all(f"#approve-{approval}")
            browser.click("#sign-out")
            browser.sign_in_password(bob, bob_pw)
            browser.visit("/ui/")
            assert approval in browser.find("#waiting").get_attribute("innerHTML")
            browser.visit("/ui/approvals")
            browser.click(f"#approve-{approval}")
            assert browser.all("#notice")
        finally:
            browser.quit()
        assert api.call("GET", f"/v1/keys/{key['key_id']}")["state"] == "PendingDeletion"
        got = api.call("GET", f"/v1/approvals/{approval}")
        assert got["status"] == "executed" and got["approvals"] == [bob]


def test_the_audit_log_is_filtered_verified_and_exported(server, api, browser):
    browser.sign_in_token(ROOT)
    browser.visit("/ui/audit")
    browser.fill("#action", "kms:CreateKey")
    browser.click("#filter")
    rows = browser.all("#records tr.record")
    assert rows and all("kms:CreateKey" in r.text for r in rows)
    browser.click("#verify")
    assert "verifies" in browser.text("#verify-result")
    browser.visit("/ui/")
    assert "Verified whole" in browser.text("#last-verify")
    browser.visit("/ui/audit?action=kms%3ACreateKey")
    href = browser.find("#export").get_attribute("href")
    export = requests.get(href, cookies=browser.cookies(), timeout=60)
    assert export.status_code == 200
    lines = [json.loads(x) for x in export.text.splitlines()]
    assert lines and all(x["action"] == "kms:CreateKey" for x in lines)


def test_the_console_speaks_chinese(server, browser):
    browser.sign_in_token(ROOT)
    browser.click("#lang-zh")
    assert browser.text("#title") == "概览"
    assert browser.text("#nav-keys") == "密钥" and browser.text("#nav-audit") == "审计"
    browser.visit("/ui/keys")
    assert browser.text("#create") == "创建"
    browser.click("#lang-en")
    assert browser.text("#title") == "Keys"


def test_a_key_user_sees_no_admin_actions_and_a_forged_one_is_refused(server, api, browser):
    name, pw = person(api, "key-user")
    key = api.call("POST", "/v1/keys", {"spec": "AES_256"}, expect=201)
    browser.sign_in_password(name, pw)
    browser.visit("/ui/keys")
    assert not browser.all("#create-key")
    browser.visit(f"/ui/keys/{key['key_id']}")
    assert not browser.all("#actions") and not browser.all("#rotate") and not browser.all("#add-alias")
    # The same form, forged with the session's own cookie and CSRF value: the API refuses it.
    r = requests.post(f"{server['base']}/ui/keys/{key['key_id']}/do/rotate", data={"csrf": browser.csrf()},
                      cookies=browser.cookies(), headers={"Origin": server["base"]}, allow_redirects=False)
    assert r.status_code == 403 and "kms:RotateKey" in r.text
    assert api.call("GET", f"/v1/keys/{key['key_id']}")["primary_version"] == 1
    browser.visit("/ui/access", refused=True)
    assert browser.all("#error")


def test_a_form_posted_from_another_origin_changes_nothing(server, api, browser):
    key = api.call("POST", "/v1/keys", {"spec": "AES_256"}, expect=201)
    evil_port = free_port()
    page = (f"<html><body><form id=f method=post action=\"{server['base']}/ui/keys/{key['key_id']}/do/disable\">"
            "<input name=csrf value=guessed></form><script>document.getElementById('f').submit()</script>"
            "</body></html>").encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(page)

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", evil_port), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.sign_in_token(ROOT)
        browser.d.get(f"http://127.0.0.1:{evil_port}/")
        deadline = time.time() + 10
        while time.time() < deadline and "/ui/" not in browser.d.current_url:
            time.sleep(0.1)
        assert "/ui/" in browser.d.current_url
        assert "did not come from this console" in browser.d.page_source
        assert api.call("GET", f"/v1/keys/{key['key_id']}")["state"] == "Enabled"
        logged = browser.d.get_log("browser")  # the refusal's own 403, expected
        assert all("status of 403" in e["message"] for e in logged if e["level"] == "SEVERE"), logged
        # With the session's real CSRF value but from the other origin, still nothing changes.
        browser.visit("/ui/keys")
        r = requests.post(f"{server['base']}/ui/keys/{key['key_id']}/do/disable", data={"csrf": browser.csrf()},
                          cookies=browser.cookies(), headers={"Origin": f"http://127.0.0.1:{evil_port}"},
                          allow_redirects=False)
        assert r.status_code == 403
        assert api.call("GET", f"/v1/keys/{key['key_id']}")["state"] == "Enabled"
    finally:
        evil.shutdown()


def test_access_identities_tokens_and_the_policy_editor(server, api, browser):
    browser.sign_in_token(ROOT)
    browser.visit("/ui/access")
    name = f"svc-{uuid.uuid4().hex[:6]}"
    browser.fill("#identity-name", name)
    browser.click("#create-identity-button")
    assert browser.text("#title") == name
    browser.click("#create-token")
    token = browser.find("#new-token code").text
    assert token.startswith("kw.")
    me = requests.get(server["base"] + "/v1/auth/self", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["name"] == name and me["roles"] == ["key-user"]
    token_id = me["token_id"]
    browser.click(f"#revoke-{token_id}")
    assert requests.get(server["base"] + "/v1/auth/self",
                        headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # The policy editor shows the API's validation error in place, and keeps what was typed.
    browser.visit("/ui/access/policies/new")
    policy = f"p-{uuid.uuid4().hex[:6]}"
    browser.fill("#policy-name", policy)
    browser.fill("#document", '{"statements": [{"effect": "maybe", "actions": ["kms:Encrypt"], '
                              '"resources": ["alias/console-app-*"]}]}')
    browser.click("#save-policy", refused=True)
    assert browser.all("#policy-error") and "maybe" in browser.find("#document").get_attribute("value")
    browser.fill("#document", '{"statements": [{"effect": "allow", "actions": ["kms:Encrypt"], '
                              '"resources": ["alias/console-app-*"]}]}')
    browser.click("#save-policy")
    assert browser.text("#notice") == "Saved."
    assert api.call("GET", f"/v1/policies/{policy}")["statements"][0]["effect"] == "allow"


def test_the_compliance_report_and_its_downloads(server, browser):
    browser.sign_in_token(ROOT)
    browser.visit("/ui/compliance")
    assert int(browser.text("#inventory-total")) >= 1
    j = requests.get(browser.find("#report-json").get_attribute("href"), cookies=browser.cookies(), timeout=60)
    assert j.status_code == 200 and "inventory" in j.json()
    assert "attachment" in j.headers["content-disposition"]
    h = requests.get(browser.find("#report-html").get_attribute("href"), cookies=browser.cookies(), timeout=60)
    assert h.status_code == 200 and "<html" in h.text.lower()


def test_an_idle_session_ends_and_its_token_is_revoked(tmp_path):
    from conftest import running_server
    with running_server(extra_args=["--set", "ui_idle_timeout_seconds=60"]) as s:
        b = Browser(s["base"], "idle")
        try:
            b.sign_in_token(ROOT)
            session = b.cookies()["kw_session"]
            # Sixty idle seconds pass: the next page asks to sign in again, and the token is gone.
            time.sleep(61)
            b.visit("/ui/keys")
            assert "/ui/login" in b.d.current_url and b.all("#notice")
            r = requests.get(s["base"] + "/v1/auth/self", headers={"Authorization": f"Bearer {session}"})
            assert r.status_code == 401
        finally:
            b.quit()


class Provider:
    """An OpenID provider: discovery, an authorization endpoint that signs its one user in at once, a token
    endpoint that checks the PKCE verifier, and its JWKS."""

    def __init__(self):
        import jwt as pyjwt
        from cryptography.hazmat.primitives.asymmetric import rsa
        self.jwt = pyjwt
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.codes = {}
        self.user = "oidc-person"
        self.groups = ["kms-auditors"]
        self.wrong_nonce = False
        self.refused_verifiers = 0
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                from urllib.parse import parse_qs, urlencode, urlparse
                u = urlparse(self.path)
                if u.path == "/.well-known/openid-configuration":
                    return self.answer(200, {"issuer": provider.url, "jwks_uri": provider.url + "/jwks",
                                             "authorization_endpoint": provider.url + "/authorize",
                                             "token_endpoint": provider.url + "/token"})
                if u.path == "/jwks":
                    j = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(provider.key.public_key()))
                    j.update({"kid": "p1", "use": "sig", "alg": "RS256"})
                    return self.answer(200, {"keys": [j]})
                if u.path == "/authorize":
                    q = {k: v[0] for k, v in parse_qs(u.query).items()}
                    assert q["response_type"] == "code" and q["code_challenge_method"] == "S256"
                    assert "openid" in q["scope"].split()
                    code = uuid.uuid4().hex
                    provider.codes[code] = q
                    to = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
                    self.send_response(302)
                    self.send_header("location", to)
                    self.end_headers()
                    return None
                return self.answer(404, {})

            def do_POST(self):
                import hashlib
                from urllib.parse import parse_qs
                n = int(self.headers.get("content-length", "0"))
                f = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
                asked = provider.codes.pop(f.get("code"), None)
                challenge = base64.urlsafe_b64encode(
                    hashlib.sha256(f.get("code_verifier", "").encode()).digest()).rstrip(b"=").decode()
                if (asked is None or f.get("grant_type") != "authorization_code"
                        or f.get("redirect_uri") != asked["redirect_uri"] or f.get("client_id") != asked["client_id"]
                        or challenge != asked["code_challenge"]):
                    provider.refused_verifiers += 1
                    return self.answer(400, {"error": "invalid_grant"})
                now = int(time.time())
                claims = {"iss": provider.url, "aud": asked["client_id"], "sub": uuid.uuid4().hex,
                          "preferred_username": provider.user, "email_verified": True, "groups": provider.groups,
                          "nonce": "not-this-one" if provider.wrong_nonce else asked["nonce"],
                          "iat": now, "exp": now + 300}
                token = provider.jwt.encode(claims, provider.key, algorithm="RS256", headers={"kid": "p1"})
                return self.answer(200, {"id_token": token, "token_type": "Bearer", "access_token": "unused"})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def test_sign_in_with_an_identity_provider_by_oidc_and_pkce(server, api, browser):
    provider = Provider()
    try:
        name = "sso-" + uuid.uuid4().hex[:4]
        api.call("PUT", f"/v1/auth/jwt/issuers/{name}", {
            "issuer": provider.url, "audiences": ["keyward-console"],
            "oidc": {"client_id": "keyward-console", "display_name": "Example SSO"},
            "rules": [{"name": "people", "kind": "user", "create_identity": True,
                       "name_claim": "preferred_username", "bound_claims": {"email_verified": True},
                       "group_claim": "groups", "group_roles": {"kms-auditors": ["auditor"]}}]}, expect=201)
        provider.user = "oidc-" + uuid.uuid4().hex[:6]
        browser.visit("/ui/login")
        assert browser.text(f"#oidc-{name}") == "Example SSO"
        browser.click(f"#oidc-{name}")
        assert browser.text("#title") == "Overview"
        assert browser.text("#who") == provider.user and "auditor" in browser.text("header")
        ident = api.call("GET", f"/v1/identities/{provider.user}")
        assert ident["source"] == f"jwt:{name}"
        browser.click("#sign-out")
        # An ID token carrying another sign-in's nonce opens nothing, and the token it was exchanged for is revoked.
        provider.wrong_nonce = True
        provider.user = "oidc-" + uuid.uuid4().hex[:6]
        browser.visit("/ui/login")
        browser.click(f"#oidc-{name}", refused=True)
        assert "nonce" in browser.text("#error")
        assert "kw_session" not in browser.cookies()
        assert api.call("GET", f"/v1/identities/{provider.user}/tokens")["tokens"] == []
        # A callback this browser did not start (a forged state) is refused before any code is exchanged.
        provider.wrong_nonce = False
        before = provider.refused_verifiers
        browser.visit(f"/ui/oidc/{name}/callback?code=stolen&state=forged", refused=True)
        assert "not started here" in browser.text("#error")
        assert provider.refused_verifiers == before and "stolen" not in provider.codes
        records = api.call("GET", "/v1/audit?action=kms:LoginJwt&limit=1000")["records"]
        assert any(r["outcome"] == "allow" for r in records)
    finally:
        provider.stop()


def test_the_console_can_be_turned_off():
    from conftest import running_server
    with running_server(extra_args=["--set", "ui=false"]) as s:
        assert requests.get(s["base"] + "/ui/login", allow_redirects=False).status_code == 404
        assert requests.get(s["base"] + "/v1/health").status_code == 200


def test_an_approval_held_to_mfa_by_policy_takes_a_totp_step_up():
    from conftest import Api, running_server
    with running_server() as srv:
        api = Api(srv["base"])
        base = srv["base"]
        # Everything a quorum would hold is set up before the key under quorum exists.
        api.call("PUT", "/v1/policies/approve-with-mfa", {"statements": [
            {"effect": "allow", "actions": ["kms:ListApprovals", "kms:GetApproval", "kms:ListKeys", "kms:DescribeKey"],
             "resources": ["*"]},
            {"effect": "allow", "actions": ["kms:Approve", "kms:ScheduleKeyDeletion"], "resources": ["*"],
             "conditions": {"mfa": True}}]})
        alice, _ = person(api, "key-admin")
        bob = "bob-" + uuid.uuid4().hex[:6]
        api.call("POST", "/v1/identities", {"name": bob, "kind": "user", "policies": ["approve-with-mfa"],
                                             "password": f"{bob} has a long password"}, expect=201)
        totp = pyotp.parse_uri(api.call("POST", f"/v1/identities/{bob}/mfa")["totp_uri"])
        bob_token = api.call("POST", f"/v1/identities/{bob}/tokens", {}, expect=201)["token"]
        alice_token = api.call("POST", f"/v1/identities/{alice}/tokens", {}, expect=201)["token"]
        key = api.call("POST", "/v1/keys", {"spec": "AES_256", "quorum": {"approvals": 1}}, expect=201)
        held = requests.post(f"{base}/v1/keys/{key['key_id']}/schedule-deletion", json={"pending_days": 7},
                             headers={"Authorization": f"Bearer {alice_token}"})
        assert held.status_code == 202
        approval = held.json()["approval_id"]
        browser = Browser(base, "mfa-approval")
        try:
            browser.sign_in_token(bob_token)
            browser.visit("/ui/approvals")
            # Without MFA the policy does not let bob see, or approve, the request.
            assert not browser.all(f"#approve-{approval}")
            old_session = browser.cookies()["kw_session"]
            browser.fill("#step-up-totp", totp.now())
            browser.click("#step-up")
            assert browser.text("#notice") == "This session now counts as MFA."
            assert "MFA" in browser.text("header")
            assert requests.get(f"{base}/v1/auth/self",
                                headers={"Authorization": f"Bearer {old_session}"}).status_code == 401
            browser.click(f"#approve-{approval}")
            assert browser.all("#notice")
        finally:
            browser.quit()
        got = api.call("GET", f"/v1/approvals/{approval}")
        assert got["status"] == "executed" and got["approvals"] == [bob]
        assert api.call("GET", f"/v1/keys/{key['key_id']}")["state"] == "PendingDeletion"
