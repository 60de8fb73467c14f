"""The Vault API, driven by hvac (the Python Vault client) against Keyward's Vault listener: health, token
lookup, KV version 2 (versions, check-and-set, list, delete, undelete, destroy, metadata), policies on
kv/<mount>/<path>, errors in Vault's shape, values encrypted at rest, and every access audited."""
import os
import uuid

import hvac
import hvac.exceptions
import pytest
import requests

from conftest import ROOT


@pytest.fixture
def vault(server):
    return hvac.Client(url=server["vault"], token=ROOT)


def service(api, name, statements):
    """An identity with one policy of its own and a token."""
    api.call("PUT", f"/v1/policies/{name}", {"statements": statements}, expect=200)
    api.call("POST", "/v1/identities", {"name": name, "kind": "service", "roles": [], "policies": [name]},
             expect=201)
    return api.call("POST", f"/v1/identities/{name}/tokens", {}, expect=201)["token"]


def test_health_and_token_lookup_answer_as_vault_does(server, vault):
    health = vault.sys.read_health_status(method="GET")
    assert health["initialized"] is True and health["sealed"] is False and health["version"]
    assert vault.is_authenticated()
    me = vault.auth.token.lookup_self()["data"]
    assert me["display_name"] == "root" and "admin" in me["policies"]
    assert ROOT not in str(me), "the token itself is never echoed"
    assert not hvac.Client(url=server["vault"], token="kw.not-a-token").is_authenticated()
    mounts = vault.sys.list_mounted_secrets_engines()["data"]
    assert mounts["secret/"]["options"]["version"] == "2" and mounts["secret/"]["type"] == "kv"
    tune = requests.get(server["vault"] + "/v1/sys/mounts/secret/tune", headers={"X-Vault-Token": ROOT}).json()
    assert tune["options"]["version"] == "2"
    # Errors in Vault's shape and codes.
    r = requests.get(server["vault"] + "/v1/secret/data/nowhere", headers={"X-Vault-Token": ROOT})
    assert r.status_code == 404 and isinstance(r.json()["errors"], list)
    r = requests.get(server["vault"] + "/v1/secret/data/x", headers={"X-Vault-Token": "kw.wrong"})
    assert r.status_code == 403 and r.json() == {"errors": ["permission denied"]}
    r = requests.get(server["vault"] + "/v1/nomount/data/x", headers={"X-Vault-Token": ROOT})
    assert r.status_code == 404 and r.json()["errors"]


def test_kv_v2_versions_cas_list_delete_undelete_destroy(server, api, vault):
    kv = vault.secrets.kv.v2
    path = f"app-{uuid.uuid4().hex[:8]}/db"
    password = f"pw-{uuid.uuid4().hex}"
    w1 = kv.create_or_update_secret(path=path, secret={"user": "app", "password": password}, mount_point="secret")
    assert w1["data"]["version"] == 1 and w1["data"]["destroyed"] is False
    read = kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"user": "app", "password": password}
    assert read["data"]["metadata"]["version"] == 1 and read["data"]["metadata"]["created_time"].endswith("Z")
    # Check-and-set: the current version or nothing.
    w2 = kv.create_or_update_secret(path=path, secret={"user": "app", "password": "second"}, cas=1,
                                    mount_point="secret")
    assert w2["data"]["version"] == 2
    with pytest.raises(hvac.exceptions.InvalidRequest) as e:
        kv.create_or_update_secret(path=path, secret={"x": "y"}, cas=1, mount_point="secret")
    assert "check-and-set" in str(e.value)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(path=path, secret={"x": "y"}, cas=0, mount_point="secret")
    old = kv.read_secret_version(path=path, version=1, mount_point="secret", raise_on_deleted_version=True)
    assert old["data"]["data"]["password"] == password
    # List: names directly under a prefix, folders with a slash.
    prefix = path.split("/")[0]
    kv.create_or_update_secret(path=f"{prefix}/nested/deep", secret={"a": "b"}, mount_point="secret")
    assert sorted(kv.list_secrets(path=prefix, mount_point="secret")["data"]["keys"]) == ["db", "nested/"]
    meta = kv.read_secret_metadata(path=path, mount_point="secret")["data"]
    assert meta["current_version"] == 2 and meta["oldest_version"] == 1 and set(meta["versions"]) == {"1", "2"}
    # Delete the latest: a 404 that still names it; undelete brings it back; destroy is for good.
    kv.delete_latest_version_of_secret(path=path, mount_point="secret")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    assert kv.read_secret_metadata(path=path, mount_point="secret")["data"]["versions"]["2"]["deletion_time"]
    kv.undelete_secret_versions(path=path, versions=[2], mount_point="secret")
    assert kv.read_secret_version(path=path, mount_point="secret",
                                  raise_on_deleted_version=True)["data"]["data"]["password"] == "second"
    kv.destroy_secret_versions(path=path, versions=[1], mount_point="secret")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path=path, version=1, mount_point="secret", raise_on_deleted_version=True)
    assert kv.read_secret_metadata(path=path, mount_point="secret")["data"]["versions"]["1"]["destroyed"]
    # Settings: fewer versions kept, check-and-set required.
    kv.update_metadata(path=path, max_versions=2, cas_required=True, mount_point="secret")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(path=path, secret={"x": "y"}, mount_point="secret")
    kv.create_or_update_secret(path=path, secret={"x": "y"}, cas=2, mount_point="secret")
    meta = kv.read_secret_metadata(path=path, mount_point="secret")["data"]
    assert meta["max_versions"] == 2 and sorted(meta["versions"]) == ["2", "3"]
    kv.delete_metadata_and_all_versions(path=path, mount_point="secret")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)

    # Values are Keyward ciphertexts at rest, under the mount's own key (an ordinary, visible key).
    for root, _, files in os.walk(server["data"]):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert password.encode() not in fh.read(), f
    key = api.call("GET", "/v1/keys/alias:kv-secret")
    assert key["spec"] == "AES_256" and key["state"] == "Enabled"
    # The mount's first write made that key, and its record names it.
    made = api.call("GET", f"/v1/audit?action=kv:Write&key_id={key['key_id']}")["records"]
    assert made and all(r["resource"].startswith("kv/secret/") for r in made)
    # Every access is on the record with mount, path and version, never the value.
    records = api.call("GET", f"/v1/audit?action=kv:Write&limit=1000")["records"]
    mine = [r for r in records if r.get("resource") == f"kv/secret/{path}"]
    assert mine and {r.get("version") for r in mine} >= {1, 2}
    assert all(r.get("key_id") in (None, key["key_id"]) for r in mine)
    reads = api.call("GET", f"/v1/audit?action=kv:Read&limit=1000")["records"]
    assert any(r.get("resource") == f"kv/secret/{path}" for r in reads)
    assert password not in str(records) + str(reads)


def test_policies_name_mount_and_path(server, api, vault):
    tag = uuid.uuid4().hex[:8]
    vault.secrets.kv.v2.create_or_update_secret(path=f"team-{tag}/a", secret={"v": "1"}, mount_point="apps")
    vault.secrets.kv.v2.create_or_update_secret(path=f"other-{tag}/b", secret={"v": "2"}, mount_point="apps")
    token = service(api, f"reader-{tag}", [
        {"effect": "allow", "actions": ["kv:Read", "kv:List"], "resources": [f"kv/apps/team-{tag}/*"]}])
    reader = hvac.Client(url=server["vault"], token=token).secrets.kv.v2
    assert reader.read_secret_version(path=f"team-{tag}/a", mount_point="apps",
                                      raise_on_deleted_version=True)["data"]["data"] == {"v": "1"}
    with pytest.raises(hvac.exceptions.Forbidden):
        reader.read_secret_version(path=f"other-{tag}/b", mount_point="apps", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        reader.create_or_update_secret(path=f"team-{tag}/a", secret={"v": "x"}, mount_point="apps")
    # A key role gives no secret: key-user and key-admin are for keys only.
    api.call("POST", "/v1/identities", {"name": f"ku-{tag}", "kind": "service", "roles": ["key-user"]}, expect=201)
    ku = api.call("POST", f"/v1/identities/ku-{tag}/tokens", {}, expect=201)["token"]
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=server["vault"], token=ku).secrets.kv.v2.read_secret_version(
            path=f"team-{tag}/a", mount_point="apps", raise_on_deleted_version=True)
    # A policy resource that is not a secret path is refused where it is written.
    r = requests.put(server["base"] + f"/v1/policies/bad-{tag}", headers={"Authorization": f"Bearer {ROOT}"},
                     json={"statements": [{"effect": "allow", "actions": ["kv:Read"], "resources": ["kv/bad mount"]}]})
    assert r.status_code == 400
    denied = api.call("GET", f"/v1/audit?action=kv:Write&outcome=deny&principal=reader-{tag}")["records"]
    assert denied and denied[0]["resource"] == f"kv/apps/team-{tag}/a"


def test_bad_input_is_refused_and_changes_nothing(server, vault):
    h = {"X-Vault-Token": ROOT}
    base = server["vault"] + "/v1/secret/data/"
    for body in [{"data": "not an object"}, {"nodata": {}}, {"data": {}, "options": {"cas": "x"}}]:
        r = requests.post(base + "bad", headers=h, json=body)
        assert r.status_code == 400 and r.json()["errors"], body
    assert requests.get(base + "bad", headers=h).status_code == 404
    for path in ["a//b", "x*y"]:
        r = requests.post(base + path, headers=h, json={"data": {"a": "b"}})
        assert r.status_code in (400, 404), path
    r = requests.post(base + "big", headers=h, json={"data": {"v": "x" * 70_000}})
    assert r.status_code in (400, 413)
    assert requests.get(base + "big", headers=h).status_code == 404
