"""Transparent database encryption end to end: a private MariaDB whose `hashicorp_key_management` plugin reads
its keys from Keyward's Vault listener, with the token of an identity that may only `kv:Read` its mount.

Tables, redo log, binlog and temporary files are encrypted; the marker written through SQL is absent from every
file of the data directory; a new version of key 1 written through KV is taken up and pages are re-encrypted;
MariaDB restarted while Keyward is sealed refuses to start rather than serve anything, and recovers once
Keyward is unsealed; the plugin's reads are in Keyward's audit log; a token without `kv:Read` gets MariaDB's
error, not keys. Needs Debian's mariadb-server and mariadb-plugin-hashicorp-key-management (`.ci/run`
installs them)."""
import os
import secrets
import subprocess
import time

import requests

from conftest import BIN, free_port

PLUGIN = "/usr/lib/mysql/plugin/hashicorp_key_management.so"
MARKER = "MARKER-card-4111-secret-7e1f"

class Keyward:
    """A non-dev Keyward, initialised with one unseal share, serving the Vault API with a `mariadb` mount."""

    def __init__(self, tmp):
        self.port, self.vault_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.vault = f"http://127.0.0.1:{self.vault_port}"
        env = dict(os.environ, KEYWARD_KV_MOUNTS='["mariadb"]')
        self.log = open(tmp / "keyward.log", "wb")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--vault-listen", f"127.0.0.1:{self.vault_port}",
             "--data-dir", str(tmp / "keyward")], stdout=self.log, stderr=self.log, env=env)
        for _ in range(300):
            try:
                requests.get(self.base + "/v1/sys/status", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        init = requests.post(self.base + "/v1/sys/init", json={"shares": 1, "threshold": 1}, timeout=30).json()
        self.share, self.root = init["shares"][0], init["root_token"]
        self.unseal()

    def unseal(self):
        r = requests.post(self.base + "/v1/sys/unseal", json={"share": self.share}, timeout=30)
        assert r.status_code == 200 and r.json()["sealed"] is False, r.text

    def call(self, method, path, body=None, expect=200, token=None):
        r = requests.request(method, self.base + path, json=body, timeout=30,
                             headers={"Authorization": f"Bearer {token or self.root}"})
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def put_key(self, key_id):
        """A MariaDB key as the plugin reads it: hex in the field `data` of secret `<mount>/<id>`."""
        r = requests.post(f"{self.vault}/v1/mariadb/data/{key_id}", headers={"X-Vault-Token": self.root},
                          json={"data": {"data": secrets.token_hex(32)}}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["data"]["version"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


class MariaDB:
    """A private mariadbd: its own data directory, socket and port, started and stopped by the test."""

    def __init__(self, tmp, vault_url):
        self.dir = tmp / "mariadb"
        self.data, self.sock, self.err = self.dir / "data", self.dir / "mysqld.sock", self.dir / "error.log"
        self.port = free_port()
        self.vault_url = vault_url
        self.proc = None
        self.dir.mkdir()
        r = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=root",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    def start(self, token):
        """Starts the server; True when it accepts connections, False when it ended first."""
        self.err.write_text("")
        self.proc = subprocess.Popen([
            "mariadbd", "--no-defaults", f"--datadir={self.data}", f"--socket={self.sock}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", f"--log-error={self.err}",
            f"--pid-file={self.dir / 'mysqld.pid'}", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
            "--plugin-load-add=hashicorp_key_management.so", "--hashicorp-key-management=FORCE",
            f"--hashicorp-key-management-vault-url={self.vault_url}/v1/mariadb",
            f"--hashicorp-key-management-token={token}",
            "--hashicorp-key-management-cache-version-timeout=0", "--hashicorp-key-management-timeout=5",
            "--hashicorp-key-management-max-retries=0",
            "--innodb-encrypt-tables=ON", "--innodb-encrypt-log=ON", "--innodb-encryption-threads=2",
            "--innodb-encryption-rotate-key-age=1", "--log-bin=binlog", "--encrypt-binlog=ON",
            "--encrypt-tmp-files=ON", "--server-id=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.sql("SELECT 1", check=False).returncode == 0:
                return True
            time.sleep(0.2)
        raise AssertionError("mariadbd neither started nor ended: " + self.err.read_text()[-2000:])

    def sql(self, query, check=True):
        r = subprocess.run(["mariadb", "--no-defaults", f"--socket={self.sock}", "-uroot", "-N", "-B", "-e", query],
                           capture_output=True, text=True)
        if check:
            assert r.returncode == 0, f"{query}: {r.stderr}"
        return r

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.sql("SHUTDOWN", check=False)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def key_versions(self, table):
        out = self.sql("SELECT MIN_KEY_VERSION, CURRENT_KEY_VERSION FROM "
                       f"information_schema.innodb_tablespaces_encryption WHERE NAME = '{table}'").stdout.split()
        return tuple(int(x) for x in out) if out else None


def test_mariadb_encrypts_with_keys_from_keyward(tmp_path):
    kw = Keyward(tmp_path)
    db = None
    try:
        # An identity that may only read its mount's keys, and one that may not.
        kw.call("PUT", "/v1/policies/mariadb-tde", {"statements": [
            {"effect": "allow", "actions": ["kv:Read"], "resources": ["kv/mariadb/*"]}]})
        kw.call("POST", "/v1/identities", {"name": "mariadb", "kind": "service", "policies": ["mariadb-tde"]},
                expect=201)
        token = kw.call("POST", "/v1/identities/mariadb/tokens", {}, expect=201)["token"]
        kw.call("POST", "/v1/identities", {"name": "stranger", "kind": "service", "roles": ["key-user"]}, expect=201)
        stranger = kw.call("POST", "/v1/identities/stranger/tokens", {}, expect=201)["token"]
        assert kw.put_key(1) == 1 and kw.put_key(2) == 1

        db = MariaDB(tmp_path, kw.vault)
        assert db.start(token), db.err.read_text()[-3000:]
        db.sql("CREATE DATABASE tde; CREATE TABLE tde.customers (id INT PRIMARY KEY, card VARCHAR(64)) "
               "ENGINE=InnoDB ENCRYPTED=YES ENCRYPTION_KEY_ID=1; "
               f"INSERT INTO tde.customers VALUES (1, '{MARKER}'); "
               "CREATE TABLE tde.other (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB ENCRYPTED=YES ENCRYPTION_KEY_ID=2; "
               f"INSERT INTO tde.other VALUES (1, REPEAT('{MARKER}', 10))")
        assert db.sql("SELECT card FROM tde.customers WHERE id = 1").stdout.strip() == MARKER
        assert db.key_versions("tde/customers") == (1, 1)
        # A query whose sort spills to a temporary file, which is encrypted too.
        db.sql("SET SESSION sort_buffer_size = 32768; SELECT SQL_NO_CACHE v FROM tde.other, "
               "(SELECT seq FROM tde.seq_1_to_2000) s ORDER BY CONCAT(v, s.seq) LIMIT 1")

        # Rotation: a new version of key 1 through KV is taken up for new writes, and once it is older than
        # innodb_encryption_rotate_key_age the background threads re-encrypt every page of version 1.
        assert kw.put_key(1) == 2
        assert kw.put_key(1) == 3
        deadline = time.time() + 90
        while time.time() < deadline and db.key_versions("tde/customers")[0] < 2:
            time.sleep(1)
        low, current = db.key_versions("tde/customers")
        assert current == 3 and low >= 2, (low, current)
        assert db.sql("SELECT card FROM tde.customers WHERE id = 1").stdout.strip() == MARKER

        # Stopped cleanly, nothing of the marker in any file: tablespaces, redo log, binlog, system files.
        db.stop()
        for root, _, files in os.walk(db.data):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    assert MARKER.encode() not in fh.read(), os.path.join(root, f)
        assert any(f.startswith("binlog.") for f in os.listdir(db.data))

        # Restarted while Keyward is up: it reads its data.
        assert db.start(token), db.err.read_text()[-3000:]
        assert db.sql("SELECT card FROM tde.customers WHERE id = 1").stdout.strip() == MARKER
        db.stop()

        # Restarted while Keyward is sealed: it refuses to start, says why, and serves no plaintext.
        kw.call("POST", "/v1/sys/seal", expect=204)
        assert not db.start(token)
        log = db.err.read_text()
        assert "503" in log and "sealed" in log and "encryption" in log, log[-3000:]
        assert MARKER not in log
        # Unsealed again, it recovers.
        kw.unseal()
        assert db.start(token), db.err.read_text()[-3000:]
        assert db.sql("SELECT card FROM tde.customers WHERE id = 1").stdout.strip() == MARKER
        db.stop()

        # A token that may not read the mount gets MariaDB's error, not keys.
        assert not db.start(stranger)
        log = db.err.read_text()
        assert "403" in log and "permission denied" in log, log[-3000:]

        # The plugin's reads are on Keyward's record, by its identity, naming key and version.
        records = kw.call("GET", "/v1/audit?action=kv:Read&principal=mariadb&limit=1000")["records"]
        allowed = [r for r in records if r["outcome"] == "allow"]
        assert {r["resource"] for r in allowed} >= {"kv/mariadb/1", "kv/mariadb/2"}
        assert {r.get("version") for r in allowed if r["resource"] == "kv/mariadb/1"} >= {1, 3}
        # The reads tried while sealed are there too, as errors that say so.
        others = {(r["outcome"], r.get("error_code")) for r in records if r["outcome"] != "allow"}
        assert others <= {("error", "Sealed"), ("error", "NotFound")}, others
        assert ("error", "Sealed") in others
        refused = kw.call("GET", "/v1/audit?action=kv:Read&principal=stranger&limit=100")["records"]
        assert refused and all(r["outcome"] == "deny" for r in refused)
    finally:
        if db:
            db.stop()
        kw.stop()
