"""Field-level protection end to end, the way an application uses it: 10,000 generated customers protected
through the API into a PostgreSQL table of ciphertext, mask and blind-index columns; one customer found by
phone with WHERE phone_bidx = <index of the query>; no plaintext anywhere in the table; the result opened
again; and a service allowed to write and search but not to read gets 403 on unprotect."""
import base64
import os
import random
import urllib.parse
import uuid

import pg8000.native
import requests

from conftest import ROOT  # noqa: F401  (the server fixture runs with it)

CUSTOMERS = 10_000
W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def id_card(rng):
    first = f"{rng.choice([110105, 310104, 440305, 330106])}{rng.randint(1950, 2005)}" \
            f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    return first + "10X98765432"[sum(int(d) * w for d, w in zip(first, W)) % 11]


def luhn_complete(prefix):
    for d in "0123456789":
        digits = [int(c) for c in prefix + d][::-1]
        total = sum(x if i % 2 == 0 else (x * 2 - 9 if x * 2 > 9 else x * 2) for i, x in enumerate(digits))
        if total % 10 == 0:
            return prefix + d
    raise AssertionError


def customers(n):
    rng = random.Random(20261207)
    phones = set()
    out = []
    while len(out) < n:
        phone = f"1{rng.choice('3456789')}{rng.randint(0, 10**9 - 1):09d}"
        if phone in phones:
            continue
        phones.add(phone)
        card = luhn_complete(f"622202{rng.randint(0, 10**9 - 1):09d}")
        out.append({"phone": phone, "id": id_card(rng), "card": card})
    return out


def pg():
    url = urllib.parse.urlparse(os.environ.get("KEYWARD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test"))
    return pg8000.native.Connection(user=url.username or "postgres", password=url.password,
                                    host=url.hostname or "127.0.0.1", port=url.port or 5432,
                                    database=(url.path or "/test").lstrip("/"))


def protect(api, key, items, expect=200):
    return api.call("POST", f"/v1/keys/{key}/protect", {"items": items}, expect=expect)["items"]


def test_ten_thousand_customers_are_stored_searched_and_read_back(api):
    key = api.create("AES_256", alias=f"alias/pii-{uuid.uuid4().hex[:8]}")["key_id"]
    people = customers(CUSTOMERS)
    fields = [("phone", "phone"), ("id", "id_card_cn"), ("card", "bank_card")]
    rows = []
    per_call = 1000 // len(fields)
    for start in range(0, CUSTOMERS, per_call):
        batch = people[start:start + per_call]
        items = [{"value": p[f], "type": t, "context": {"table": "customers"}} for p in batch for f, t in fields]
        answers = protect(api, key, items)
        assert all("error" not in a for a in answers), [a for a in answers if "error" in a][:3]
        for i, _ in enumerate(batch):
            row = []
            for j in range(len(fields)):
                a = answers[i * len(fields) + j]
                row += [a["ciphertext"], a["masked"], a["blind_index"]]
            rows.append(row)

    db = pg()
    table = f"customers_{uuid.uuid4().hex[:10]}"
    cols = [f"{f}_{c}" for f, _ in fields for c in ("ct", "masked", "bidx")]
    db.run(f"CREATE TABLE {table} (n serial PRIMARY KEY, {', '.join(c + ' text NOT NULL' for c in cols)})")
    try:
        db.run(f"CREATE INDEX ON {table} (phone_bidx)")
        for start in range(0, len(rows), 500):
            chunk = rows[start:start + 500]
            values = ", ".join("(" + ", ".join(f":v{r}_{c}" for c in range(len(cols))) + ")" for r in range(len(chunk)))
            params = {f"v{r}_{c}": v for r, row in enumerate(chunk) for c, v in enumerate(row)}
            db.run(f"INSERT INTO {table} ({', '.join(cols)}) VALUES {values}", **params)
        assert db.run(f"SELECT count(*) FROM {table}")[0][0] == CUSTOMERS

        # Search: the index of the query value, written another way, finds exactly that customer.
        target = people[7321]
        spelled = f"{target['phone'][:3]}-{target['phone'][3:7]}-{target['phone'][7:]}"
        bidx = api.call("POST", f"/v1/keys/{key}/blind-index",
                        {"items": [{"value": spelled, "type": "phone"}]})["items"][0]["blind_index"]
        found = db.run(f"SELECT phone_ct, phone_masked, id_masked, card_masked FROM {table} WHERE phone_bidx = :b", b=bidx)
        assert len(found) == 1, found
        phone_ct, phone_masked, id_masked, card_masked = found[0]
        assert phone_masked == target["phone"][:3] + "****" + target["phone"][-4:]
        assert id_masked == target["id"][:6] + "*" * 8 + target["id"][-4:]
        assert card_masked == target["card"][:6] + "*" * (len(target["card"]) - 10) + target["card"][-4:]

        # No plaintext in the table: not one phone, ID number or card number of anyone, as text anywhere.
        dump = "\n".join(r[0] for r in db.run(f"SELECT t::text FROM {table} t"))
        sample = people[::97] + [target]
        for p in sample:
            for f, _ in fields:
                assert p[f] not in dump, f"{f} of a customer appears in the table"
        # Not in the ciphertexts either (they are base64 of AES-GCM output).
        assert all(target["phone"].encode() not in base64.b64decode(r[0]) for r in found)

        opened = api.call("POST", f"/v1/keys/{key}/unprotect", {"items": [
            {"ciphertext": phone_ct, "type": "phone", "context": {"table": "customers"}}]})["items"][0]
        assert opened == {"value": target["phone"]}
    finally:
        db.run(f"DROP TABLE {table}")
        db.close()

    # A service that writes and searches but never reads: protect and blind-index, no unprotect.
    name = f"intake-{uuid.uuid4().hex[:6]}"
    api.call("PUT", f"/v1/policies/{name}", {"statements": [
        {"effect": "allow", "actions": ["kms:Protect", "kms:BlindIndex"], "resources": [f"key/{key}"]}]})
    api.call("POST", "/v1/identities", {"name": name, "kind": "service", "roles": [], "policies": [name]}, expect=201)
    token = api.call("POST", f"/v1/identities/{name}/tokens", {}, expect=201)["token"]
    as_service = lambda path, body: requests.post(api.base + f"/v1/keys/{key}/{path}", json=body, timeout=30,
                                                  headers={"Authorization": f"Bearer {token}"})
    r = as_service("protect", {"items": [{"value": "13900001111", "type": "phone"}]})
    assert r.status_code == 200 and r.json()["items"][0]["masked"] == "139****1111", r.text
    ct = r.json()["items"][0]["ciphertext"]
    r = as_service("blind-index", {"items": [{"value": "139 0000 1111", "type": "phone"}]})
    assert r.status_code == 200, r.text
    r = as_service("unprotect", {"items": [{"ciphertext": ct, "type": "phone"}]})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "AccessDenied"), r.text
    # Every call is on the key's trail, the refused one too.
    trail = api.call("GET", f"/v1/audit?key_id={key}&principal={name}")["records"]
    assert [(t["action"], t["outcome"]) for t in trail][-3:] == [
        ("kms:Protect", "allow"), ("kms:BlindIndex", "allow"), ("kms:Unprotect", "deny")], trail[-3:]


def test_each_item_fails_on_its_own_and_nothing_is_echoed(api):
    key = api.create("AES_256", blind_index_bits=128)["key_id"]
    assert api.call("GET", f"/v1/keys/{key}")["blind_index_bits"] == 128
    secret_looking = "4111111111111112"
    answers = protect(api, key, [
        {"value": "4111 1111 1111 1111", "type": "bank_card"},
        {"value": secret_looking, "type": "bank_card"},
        {"value": "x", "type": "passport"},
        {"value": "x", "type": "text", "mode": "fpe"},
        {"value": "x", "type": "text", "unknown": 1},
        {"value": "张三丰", "type": "name", "mask": {"keep_first": 2, "char": "#"}},
        {"value": "x", "type": "text", "context": {"keyward:field": "phone"}},
    ])
    assert answers[0]["masked"] == "411111******1111" and len(answers[0]["blind_index"]) == 32
    codes = [a.get("error", {}).get("code") for a in answers]
    assert codes == [None, "ValidationError", "ValidationError", "ValidationError", "ValidationError", None,
                     "ValidationError"], answers
    assert secret_looking not in answers[1]["error"]["message"] and "bank_card" in answers[1]["error"]["message"]
    assert answers[5]["masked"] == "张##"
    # Opened only as the type it was protected as.
    wrong = api.call("POST", f"/v1/keys/{key}/unprotect",
                     {"items": [{"ciphertext": answers[0]["ciphertext"], "type": "digits"}]})["items"][0]
    assert wrong["error"]["code"] == "InvalidCiphertext"
    for body, status in [({"items": []}, 400), ({"items": [{"value": "1", "type": "digits"}] * 1001}, 400), ({}, 400)]:
        r = api.session.post(api.base + f"/v1/keys/{key}/protect", json=body, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (status, "ValidationError"), r.text
    rsa = api.create("RSA_2048", "ENCRYPT_DECRYPT")["key_id"]
    r = api.session.post(api.base + f"/v1/keys/{rsa}/protect", json={"items": [{"value": "1", "type": "digits"}]},
                         timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "IncorrectKeyUsage"), r.text


def test_the_cli_protects_and_unprotects_whole_files(server, api, tmp_path):
    import csv
    import json
    import subprocess
    from conftest import BIN
    env = dict(os.environ, KEYWARD_ADDR=server["base"], KEYWARD_TOKEN=ROOT)
    key = api.create("AES_256")["key_id"]
    people = customers(2500)
    src = tmp_path / "customers.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["n", "phone", "note", "card"])
        for i, p in enumerate(people):
            w.writerow([i, p["phone"], f"note, with a comma {i}", p["card"]])
    out, back = tmp_path / "protected.csv", tmp_path / "back.csv"
    cols = "phone:phone,card:bank_card"
    run = lambda *args: subprocess.run([BIN, *args], env=env, capture_output=True, text=True)
    r = run("protect", key, "--columns", cols, "--in", str(src), "--out", str(out), "--context", "table=c")
    assert r.returncode == 0, r.stderr
    assert "2500 rows" in r.stderr
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["n", "phone", "phone_masked", "phone_bidx", "note", "card", "card_masked", "card_bidx"]
    assert len(rows) == 2501 and rows[1][2] == people[0]["phone"][:3] + "****" + people[0]["phone"][-4:]
    text = out.read_text()
    assert all(p["phone"] not in text and p["card"] not in text for p in people[::50])
    # The index a search would use is the one in the file.
    bidx = api.call("POST", f"/v1/keys/{key}/blind-index",
                    {"items": [{"value": people[1234]["phone"], "type": "phone"}]})["items"][0]["blind_index"]
    assert rows[1235][3] == bidx
    r = run("unprotect", key, "--columns", cols, "--in", str(out), "--out", str(back), "--context", "table=c")
    assert r.returncode == 0, r.stderr
    with open(back, newline="") as b, open(src, newline="") as s:
        assert list(csv.reader(b)) == list(csv.reader(s))
    assert oct(back.stat().st_mode & 0o777) == "0o600", "plaintext is the owner's only"

    # A bad row is named by its line, and nothing is written.
    bad = tmp_path / "bad.csv"
    lines = src.read_text().splitlines()
    lines[1801] = lines[1801].replace(people[1800]["card"], "4111111111111112")
    bad.write_text("\n".join(lines) + "\n")
    failed = tmp_path / "failed.csv"
    r = run("protect", key, "--columns", cols, "--in", str(bad), "--out", str(failed))
    assert r.returncode != 0 and "line 1802" in r.stderr and "bank_card" in r.stderr, r.stderr
    assert "4111111111111112" not in r.stderr
    assert not failed.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".failed.csv")]

    # Deterministic mode: a repeated value gets the same ciphertext, so the column can be joined on.
    twice, det = tmp_path / "twice.csv", tmp_path / "det.csv"
    twice.write_text("n,phone\n1,13812345678\n2,13812345678\n3,13912345678\n")
    r = run("protect", key, "--columns", "phone:phone", "--mode", "deterministic", "--in", str(twice), "--out", str(det))
    assert r.returncode == 0, r.stderr
    with open(det, newline="") as f:
        cts = [row[1] for row in list(csv.reader(f))[1:]]
    assert cts[0] == cts[1] != cts[2]

    # JSON lines, in and back.
    src_j, out_j, back_j = tmp_path / "c.jsonl", tmp_path / "p.jsonl", tmp_path / "b.jsonl"
    src_j.write_text("".join(json.dumps({"email": p["phone"][-4:] + "@example.com", "id": str(i)}) + "\n"
                             for i, p in enumerate(people[:10])))
    r = run("protect", key, "--columns", "email:email", "--format", "jsonl", "--in", str(src_j), "--out", str(out_j))
    assert r.returncode == 0, r.stderr
    first = json.loads(out_j.read_text().splitlines()[0])
    assert set(first) == {"email", "email_masked", "email_bidx", "id"} and first["email_masked"].endswith("@example.com")
    r = run("unprotect", key, "--columns", "email:email", "--format", "jsonl", "--in", str(out_j), "--out", str(back_j))
    assert r.returncode == 0, r.stderr
    assert [json.loads(l) for l in back_j.read_text().splitlines()] == [json.loads(l) for l in src_j.read_text().splitlines()]


def test_deterministic_mode_gives_equal_ciphertexts_for_equal_values(api):
    key = api.create("AES_256")["key_id"]
    items = [{"value": v, "type": "email", "mode": "deterministic", "context": {"table": "users"}}
             for v in ["a@example.com", "a@example.com", "b@example.com"]]
    a, again, b = protect(api, key, items)
    assert a["ciphertext"] == again["ciphertext"] != b["ciphertext"]
    plain = protect(api, key, [{**items[0], "mode": "encrypt"}, {**items[0], "mode": "encrypt"}])
    assert plain[0]["ciphertext"] != plain[1]["ciphertext"], "encrypt mode never repeats"
    opened = api.call("POST", f"/v1/keys/{key}/unprotect", {"items": [
        {"ciphertext": a["ciphertext"], "type": "email", "context": {"table": "users"}}]})["items"][0]
    assert opened == {"value": "a@example.com"}
    # The ordinary decrypt opens it too, with the context the field was bound to.
    d = api.call("POST", "/v1/decrypt", {"ciphertext": a["ciphertext"],
                                         "context": {"table": "users", "keyward:field": "email"}})
    assert base64.b64decode(d["plaintext"]) == b"a@example.com"


def luhn_ok(number):
    digits = [int(c) for c in number][::-1]
    return sum(x if i % 2 == 0 else (x * 2 - 9 if x * 2 > 9 else x * 2) for i, x in enumerate(digits)) % 10 == 0


def test_fpe_values_fit_the_columns_they_replace(api, tmp_path):
    """Mode fpe into a table whose schema cannot change: CHAR(11) phones, CHAR(18) ID cards, CHAR(16) cards
    with a Luhn check constraint; the values are checked here with Python's own Luhn and GB 11643 rules."""
    key = api.create("AES_256")["key_id"]
    people = customers(300)
    items = [{"value": p[f], "type": t, "mode": "fpe"} for p in people
             for f, t in (("phone", "phone"), ("id", "id_card_cn"), ("card", "bank_card"))]
    answers = protect(api, key, items)
    assert all("error" not in a for a in answers), answers[:3]
    db = pg()
    table = f"legacy_{uuid.uuid4().hex[:8]}"
    db.run(f"CREATE TABLE {table} (phone CHAR(11) NOT NULL, id_card CHAR(18) NOT NULL, "
           f"card CHAR(16) NOT NULL CHECK (card ~ '^[0-9]{{16}}$'))")
    try:
        for i, p in enumerate(people):
            phone, idc, card = (answers[3 * i + k] for k in range(3))
            assert phone["version"] == 1
            assert len(phone["ciphertext"]) == 11 and phone["ciphertext"][:3] == p["phone"][:3]
            assert phone["ciphertext"] != p["phone"]
            ct = idc["ciphertext"]
            assert ct[:6] == p["id"][:6] and ct[17] == "10X98765432"[sum(int(d) * w for d, w in zip(ct[:17], W)) % 11]
            c = card["ciphertext"]
            assert luhn_ok(c) and c[:6] == p["card"][:6] and c[-4:] == p["card"][-4:] and c != p["card"]
            db.run(f"INSERT INTO {table} VALUES (:a, :b, :c)", a=phone["ciphertext"], b=ct, c=c)
        stored = db.run(f"SELECT phone, id_card, card FROM {table}")
        assert len(stored) == 300
        flat = " ".join(" ".join(r) for r in stored)
        assert not any(p["phone"] in flat or p["card"] in flat for p in people)
        # Read back through unprotect, item by item with the version protect reported.
        back = api.call("POST", f"/v1/keys/{key}/unprotect", {"items": [
            {"ciphertext": v, "type": t, "mode": "fpe", "version": 1}
            for r in stored[:100] for v, t in zip(r, ("phone", "id_card_cn", "bank_card"))]})["items"]
        assert [b["value"] for b in back] == [p[f] for p in people[:100] for f in ("phone", "id", "card")]
    finally:
        db.run(f"DROP TABLE {table}")
        db.close()

    # An explicit tweak; refusals by item; rotation keeps old values readable with their version.
    tweak = base64.b64encode(b"customer-17").decode()
    a, email, short = protect(api, key, [
        {"value": "13812345678", "type": "phone", "mode": "fpe", "tweak": tweak},
        {"value": "a@example.com", "type": "email", "mode": "fpe"},
        {"value": "12345", "type": "digits", "mode": "fpe"}])
    assert email["error"]["code"] == "ValidationError" and "a@example.com" not in email["error"]["message"]
    assert short["error"]["code"] == "ValidationError"
    r = api.call("POST", f"/v1/keys/{key}/protect", {"items": [
        {"value": "a@example.com", "type": "email", "tweak": tweak}]})["items"][0]
    assert r["error"]["code"] == "ValidationError" and "fpe" in r["error"]["message"]
    api.call("POST", f"/v1/keys/{key}/rotate", {})
    opened = api.call("POST", f"/v1/keys/{key}/unprotect", {"items": [
        {"ciphertext": a["ciphertext"], "type": "phone", "mode": "fpe", "version": 1, "tweak": tweak}]})["items"][0]
    assert opened == {"value": "13812345678"}
    again = protect(api, key, [{"value": "13812345678", "type": "phone", "mode": "fpe", "tweak": tweak}])[0]
    assert again["version"] == 2 and again["ciphertext"] != a["ciphertext"]

    # The CLI in mode fpe: a key-version column beside each value, used again by unprotect.
    import csv
    import subprocess
    from conftest import BIN, ROOT as root
    env = dict(os.environ, KEYWARD_ADDR=api.base, KEYWARD_TOKEN=root)
    src, out, back = tmp_path / "c.csv", tmp_path / "p.csv", tmp_path / "b.csv"
    src.write_text("n,card\n" + "".join(f"{i},{p['card']}\n" for i, p in enumerate(people[:50])))
    run = lambda *args: subprocess.run([BIN, *args], env=env, capture_output=True, text=True)
    r = run("protect", key, "--columns", "card:bank_card", "--mode", "fpe", "--in", str(src), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(out, newline="")))
    assert rows[0] == ["n", "card", "card_masked", "card_bidx", "card_kv"]
    assert all(luhn_ok(row[1]) and row[4] == "2" for row in rows[1:])
    api.call("POST", f"/v1/keys/{key}/rotate", {})
    r = run("unprotect", key, "--columns", "card:bank_card", "--mode", "fpe", "--in", str(out), "--out", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_text() == src.read_text()
