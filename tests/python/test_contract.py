"""The served OpenAPI document is the contract: Schemathesis, an independent tool, generates requests from it
(valid ones and deliberately broken ones) and checks every answer.

Checks: no 5xx; every status and body is one the document declares for the operation; requests the
document forbids are refused. Path parameters are drawn from real keys and names most of the time, so that
generated bodies reach the crypto and lifecycle code instead of stopping at "no such key". Generation is
deterministic (fixed seed), so a failure here reproduces with the command it prints.

Sealing is left out: a sealed service answers 503 to everything, which would hide the rest of the run
(sealing is tested by the Rust suite).
"""
import os
import subprocess
import sys
import tempfile

import requests

from conftest import ROOT, Api, running_server

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
])

KEYS = [
    ("c-aes", "AES_256", None),
    ("c-sm4", "SM4", None),
    ("c-rsa", "RSA_2048", "ENCRYPT_DECRYPT"),
    ("c-rsa-sign", "RSA_2048", "SIGN_VERIFY"),
    ("c-ec", "ECC_NIST_P256", "SIGN_VERIFY"),
    ("c-ecdh", "ECC_NIST_P256", "KEY_AGREEMENT"),
    ("c-ed", "ED25519", "SIGN_VERIFY"),
    ("c-sm2", "SM2", "SIGN_VERIFY"),
    ("c-hmac", "HMAC_256", "GENERATE_VERIFY_MAC"),
]


def config(keys, names):
    def values(xs):
        return "[" + ", ".join(f'"{x}"' for x in xs) + "]"
    return f"""
[dictionaries.keys]
values = {values(keys)}

[dictionaries.names]
values = {values(names)}

[parameters]
"path.key" = {{ dictionary = "keys", probability = 0.8 }}
"path.name" = {{ dictionary = "names", probability = 0.5 }}
"""


def test_every_answer_matches_the_served_contract():
    with running_server() as s:
        api = Api(s["base"])
        refs = []
        for alias, spec, usage in KEYS:
            key = api.create(spec, usage, alias=f"alias/{alias}")
            refs += [f"alias/{alias}", key["key_id"]]
        api.call("POST", "/v1/identities", {"name": "c-ident", "kind": "service", "roles": ["key-user"]},
                 expect=201)
        policy = {"statements": [{"effect": "allow", "actions": ["kms:Encrypt"], "resources": ["alias/c-aes"]}]}
        api.call("PUT", "/v1/policies/c-policy", policy)

        work = tempfile.mkdtemp(prefix="keyward-contract-")
        cfg = os.path.join(work, "schemathesis.toml")
        with open(cfg, "w") as f:
            f.write(config(refs, ["c-ident", "c-policy", "alias/c-aes"]))
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", cfg, "run",
            s["base"] + "/v1/openapi.json",
            "-H", f"Authorization: Bearer {ROOT}",
            "--exclude-path", "/v1/sys/seal",
            # Signing out revokes the bearer token the run uses, as sealing stops the service it tests.
            "--exclude-path", "/v1/auth/logout",
            "--phases", "examples,coverage,fuzzing",
            "--checks", CHECKS,
            "--max-examples", "25",
            "--generation-deterministic", "--seed", "20261129",
            # One worker: with several threads, CPython 3.11's `ast.parse` (which Hypothesis calls to describe
            # its filters) can fail with "AST constructor recursion depth mismatch", ending the run in error.
            "--workers", "1",
            "--request-timeout", "30",
            "--no-color",
        ]
        run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900)
        report = run.stdout[-20000:] + run.stderr[-5000:]
        assert run.returncode == 0, report
        assert "0 failures" in report or "passed" in report, report

        # The service is still up, and every generated request left the audit chain whole.
        verify = requests.get(s["base"] + "/v1/audit/verify", headers={"Authorization": f"Bearer {ROOT}"},
                              timeout=120).json()
        assert verify["valid"], verify
        assert verify["records"] > 1000, verify
        assert s["proc"].poll() is None
