"""Secrets typed at a terminal never show on it: the CLI asks for passwords and unseal shares on stderr and
reads them with the terminal's echo off, and puts the terminal back as it was, also when interrupted.

The CLI runs with a pseudo-terminal as its stdin; what the terminal would display (its echo) is read from
the terminal's other end.
"""
import json
import os
import pty
import select
import signal
import subprocess
import termios
import time

import requests

from conftest import BIN, ROOT, free_port

PASSWORD = "a terminal password, long enough"


def at_terminal(base, args, answers, token=ROOT, interrupt=False, lines=None):
    """Runs `keyward ARGS` at a terminal, typing each answer once its prompt is on stderr (or, with `lines`,
    all of them after the first prompt). Returns the exit status, stdout, stderr, what the terminal displayed,
    and whether its echo was on again afterwards."""
    master, slave = pty.openpty()
    env = dict(os.environ, KEYWARD_ADDR=base, KEYWARD_TOKEN=token)
    proc = subprocess.Popen([BIN, *args], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    os.close(slave)
    out, err, shown = b"", b"", b""
    typed = 0
    deadline = time.time() + 60
    open_pipes = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    while open_pipes and time.time() < deadline:
        ready, _, _ = select.select([*open_pipes, master], [], [], 0.1)
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if fd == master:
                shown += chunk
                continue
            if not chunk:
                del open_pipes[fd]
            elif open_pipes[fd] == "out":
                out += chunk
            else:
                err += chunk
        prompts = err.count(b": ")
        if typed < len(answers) and prompts > typed:
            if interrupt:
                time.sleep(0.2)
                proc.send_signal(signal.SIGINT)
                interrupt = False
                answers = []
            else:
                if lines is not None:
                    for line in lines:
                        os.write(master, line.encode() + b"\n")
                        time.sleep(0.05)
                else:
                    os.write(master, answers[typed].encode() + b"\n")
                typed += 1
    proc.wait(timeout=30)
    time.sleep(0.1)
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    echo_on = bool(termios.tcgetattr(master)[3] & termios.ECHO)
    os.close(master)
    return proc.returncode, out.decode(), err.decode(), shown, echo_on


def test_passwords_typed_at_a_terminal_do_not_show(server):
    base = server["base"]
    rc, out, err, shown, echo_on = at_terminal(
        base, ["identity", "create", "tty-alice", "--kind", "user", "--role", "key-user", "--password-stdin"],
        [PASSWORD, PASSWORD])
    assert rc == 0, err
    assert "Password: " in err and "Password again: " in err, err
    assert PASSWORD.encode() not in shown, shown
    assert shown.strip() == b"", shown
    assert echo_on

    rc, out, err, shown, echo_on = at_terminal(base, ["--json", "login", "tty-alice"], [PASSWORD], token="")
    assert rc == 0, err
    assert PASSWORD.encode() not in shown, shown
    assert shown.strip() == b"", shown
    assert echo_on
    token = json.loads(out)["token"]
    who = requests.get(base + "/v1/auth/self", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert who.status_code == 200 and who.json()["name"] == "tty-alice", who.text


def test_two_different_passwords_create_nothing(server):
    base = server["base"]
    rc, out, err, shown, echo_on = at_terminal(
        base, ["identity", "create", "tty-bob", "--kind", "user", "--password-stdin"],
        [PASSWORD, PASSWORD + "!"])
    assert rc != 0
    assert "differ" in err, err
    assert echo_on
    r = requests.get(base + "/v1/identities/tty-bob", headers={"Authorization": f"Bearer {ROOT}"}, timeout=10)
    assert r.status_code == 404, r.text


def test_an_interrupted_prompt_puts_the_terminal_back(server):
    rc, out, err, shown, echo_on = at_terminal(server["base"], ["login", "tty-alice"], ["unused"], token="",
                                               interrupt=True)
    assert rc == 130, (rc, err)
    assert "Password: " in err, err
    assert echo_on


def test_unseal_shares_typed_at_a_terminal_do_not_show(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")],
                            stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                requests.get(base + "/v1/sys/status", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        init = requests.post(base + "/v1/sys/init", json={"shares": 3, "threshold": 2}, timeout=30).json()
        shares, root = init["shares"], init["root_token"]

        rc, out, err, shown, echo_on = at_terminal(base, ["--json", "operator", "unseal"], [shares[0]], token="")
        assert rc == 0, err
        assert "Unseal share: " in err, err
        assert json.loads(out)["progress"] == 1, out
        rc, out, err, shown2, echo_on2 = at_terminal(base, ["--json", "operator", "unseal"], [shares[1]],
                                                     token="")
        assert rc == 0, err
        assert json.loads(out)["sealed"] is False, out
        for s in shares[:2]:
            assert s.encode() not in shown + shown2
        assert (shown + shown2).strip() == b"", shown + shown2
        assert echo_on and echo_on2

        # Several shares, one per line, an empty line ending them.
        rc, out, err, shown, echo_on = at_terminal(base, ["--json", "operator", "generate-root"], [""],
                                                   token=root, lines=[shares[1], shares[2], ""])
        assert rc == 0, err
        token = json.loads(out)["root_token"]
        assert all(s.encode() not in shown for s in shares), shown
        assert shown.strip() == b"", shown
        assert echo_on
        who = requests.get(base + "/v1/auth/self", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert who.status_code == 200, who.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
