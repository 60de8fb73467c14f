"""Starts a real `keyward serve --dev` for the Python suite, which acts as an independent client."""
import contextlib
import os
import socket
import subprocess
import tempfile
import time

import pytest
import requests

ROOT = "kw.python-suite-root-token-0123456789"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("KEYWARD_BIN", os.path.join(REPO, "target", "debug", "keyward"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base):
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {ROOT}"

    def call(self, method, path, body=None, expect=200):
        r = self.session.request(method, self.base + path, json=body, timeout=60)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        assert "x-request-id" in r.headers
        return r.json() if r.content else None

    def create(self, spec, usage=None, **extra):
        body = {"spec": spec, **extra}
        if usage:
            body["usage"] = usage
        return self.call("POST", "/v1/keys", body, expect=201)


def run_measured(args, env):
    """Runs the CLI and returns the peak resident set of its own image in KiB (`VmHWM`, which `exec` resets,
    read while it runs; a forked parent's pages would hide a small peak from `wait4`'s figure)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.02)
    err = proc.stderr.read()
    assert proc.returncode == 0, f"{args[1]}: {err.decode()}"
    assert peak > 0, "the process ended before its memory could be read"
    return peak


@contextlib.contextmanager
def running_server(extra_args=()):
    """A `keyward serve --dev` of its own, with a fresh data directory, stopped on exit."""
    assert os.path.exists(BIN), f"build the binary first: {BIN}"
    data = tempfile.mkdtemp(prefix="keyward-py-")
    port, vault_port = free_port(), free_port()
    env = dict(os.environ, KEYWARD_DEV_ROOT_TOKEN=ROOT)
    env.setdefault("KEYWARD_KV_MOUNTS", '["secret", "apps", "mariadb"]')
    log = open(os.path.join(data, "server.log"), "wb")
    proc = subprocess.Popen(
        [BIN, "serve", "--dev", "--listen", f"127.0.0.1:{port}", "--vault-listen", f"127.0.0.1:{vault_port}",
         "--data-dir", os.path.join(data, "d"), *extra_args],
        stdout=log, stderr=log, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if requests.get(base + "/v1/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("keyward did not start")
    try:
        yield {"base": base, "data": data, "log": os.path.join(data, "server.log"), "port": port, "proc": proc,
               "vault": f"http://127.0.0.1:{vault_port}"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server():
    with running_server() as s:
        yield s


@pytest.fixture
def api(server):
    return Api(server["base"])
