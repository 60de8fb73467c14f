"""The README's command blocks, run as written against a throwaway server, so that the README cannot drift
from what the product does.

Each block runs in bash (`set -euo pipefail`) in a directory of its own, with `keyward` as the built binary.
What a reader must fill in is written in the README as `<...>` and filled in here from what the earlier
commands of the same block printed (the root token, an access key, the code of an authenticator), and the
documentation's example server address is replaced by the test server's. Blocks that need what a test
machine cannot have (three hosts, a PKCS#11 module at a production path, a fresh node with shares) are named
below with the reason, so that a new block is run unless someone decides otherwise.
"""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import BIN, REPO, ROOT

README = os.path.join(REPO, "README.md")

NOT_RUN = {
    ("## Quick start", 0): "starts the dev server, which the test starts itself",
    ("## Quick start", 1): "runs this very test suite",
    ("## Production start", 0): "a production server on 0.0.0.0 with certificate files under /etc",
    ("## FIPS mode", 0): "a release build of the whole binary (scripts/test builds and tests the FIPS crates)",
    ("## A PKCS#11 HSM as the root of trust", 0): "needs a PKCS#11 module at a production path (tests/pkcs11 runs SoftHSM2)",
    ("## Several nodes on one PostgreSQL database", 0): "needs three hosts",
    ("## Sign in with your identity provider", 0): "needs an OIDC provider and a Kubernetes cluster (test_jwt.py runs its own issuer)",
    ("## Sign in with your identity provider", 1): "needs an Active Directory (test_ldap.py runs its own slapd)",
    ("## Backup and disaster recovery", 0): "restore needs a fresh production node and its shares (covered by the backup tests)",
}


def blocks():
    """(section, index within the section, language, text) of every fenced block."""
    out, section, counts, lang, body = [], None, {}, None, None
    for line in open(README, encoding="utf-8").read().split("\n"):
        if body is None and line.startswith("## "):
            section = line
        elif line.startswith("```"):
            if body is None:
                lang, body = line[3:].strip(), []
            else:
                i = counts.get(section, 0)
                counts[section] = i + 1
                out.append((section, i, lang, "\n".join(body)))
                body = None
        elif body is not None:
            body.append(line)
    return out


TOTP = r'''
import re, sys, pyotp
uri = re.search(r"otpauth://\S+", open(sys.argv[1]).read()).group(0)
print(pyotp.parse_uri(uri).now())
'''

FIELD = r'''
import re, sys
print(re.search(r"^%s\s+(\S+)" % sys.argv[2], open(sys.argv[1]).read(), re.M).group(1))
'''


def run_block(text, server, cwd):
    """Runs one block; what it prints is recorded in `cwd`/out.N for the placeholders of later lines."""
    with open(os.path.join(cwd, "totp.py"), "w") as f:
        f.write(TOTP)
    with open(os.path.join(cwd, "field.py"), "w") as f:
        f.write(FIELD)
    fills = {
        "<root token printed at start>": ROOT,
        "<the code the authenticator shows>": '"$(python3 totp.py mfa.out)"',
        "<access_key_id>": '"$(python3 field.py access.out access_key_id)"',
        "<secret_access_key>": '"$(python3 field.py access.out secret_access_key)"',
    }
    for placeholder, value in fills.items():
        text = text.replace(placeholder, value)
    leftover = re.findall(r"<[a-z][a-z _]*>", text)
    assert not leftover, f"a placeholder the runner cannot fill: {leftover}"
    text = text.replace("http://127.0.0.1:9700", server["base"]).replace(
        "https://keyward.internal:9700", server["base"]).replace("http://127.0.0.1:8200", server["vault"])
    # The reader's shell alias for the binary; a function here, as scripts do not expand aliases.
    text = "\n".join(l for l in text.split("\n") if not l.startswith("alias keyward="))
    prelude = f'''
set -euo pipefail
export KEYWARD_ADDR={server["base"]} KEYWARD_TOKEN={ROOT}
keyward() {{
  case "$1" in
    mfa) "{BIN}" "$@" | tee mfa.out ;;
    access-key) "{BIN}" "$@" | tee access.out ;;
    *) "{BIN}" "$@" ;;
  esac
}}
'''
    env = dict(os.environ)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k, None)
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.path.join(cwd, "no-aws-config")
    r = subprocess.run(["bash", "-c", prelude + text], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n--- block\n{text}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r


RUN = [(s, i, lang, text) for (s, i, lang, text) in blocks() if lang == "sh" and (s, i) not in NOT_RUN]


def test_every_block_is_run_or_named_with_a_reason():
    sh = {(s, i) for (s, i, lang, _) in blocks() if lang == "sh"}
    assert set(NOT_RUN) <= sh, f"NOT_RUN names blocks that are gone: {set(NOT_RUN) - sh}"
    assert len(RUN) >= 5


@pytest.mark.parametrize("section,index,lang,text", RUN, ids=[f"{s[3:]}#{i}" for (s, i, _, _) in RUN])
def test_a_readme_block_runs_as_written(server, section, index, lang, text):
    cwd = tempfile.mkdtemp(prefix="keyward-readme-")
    try:
        # The quick start encrypts a file it makes from the README itself.
        shutil.copy(README, cwd)
        run_block(text, server, cwd)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def test_the_readme_haproxy_configuration_is_valid():
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is required (installed by .ci/run and scripts/test)"
    configs = [text for (s, _, lang, text) in blocks() if lang == "" and text.lstrip().startswith("defaults")]
    assert len(configs) == 1
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(configs[0] + "\n")
    try:
        r = subprocess.run([haproxy, "-c", "-f", f.name], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        os.unlink(f.name)
