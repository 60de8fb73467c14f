"""`keyward encrypt --file` streams: a 1 GiB file goes through in constant memory, and comes back intact."""
import os
import subprocess
import tempfile

from conftest import BIN, ROOT, run_measured

GIB = 1 << 30
# The binary's own footprint (about 35 MiB: runtime, TLS roots, allocator) plus a few segments, whatever the
# size of the file.
LIMIT_KIB = 96 * 1024


def test_a_1_gib_file_round_trips_in_constant_memory(api, server):
    key = api.create("AES_256")["key_id"]
    env = dict(os.environ, KEYWARD_ADDR=server["base"], KEYWARD_TOKEN=ROOT)
    with tempfile.TemporaryDirectory(dir=server["data"]) as d:
        plain, sealed, back = (os.path.join(d, n) for n in ("plain.bin", "plain.bin.kws", "back.bin"))
        # A sparse file of zeros with a marker at each end, so a dropped or moved segment shows.
        with open(plain, "wb") as f:
            f.truncate(GIB)
            f.write(b"first")
            f.seek(GIB - 4)
            f.write(b"last")
        enc_kib = run_measured(
            [BIN, "encrypt", key, "--file", plain, "--out", sealed, "--context", "f=big"], env)
        assert os.path.getsize(sealed) > GIB
        os.unlink(plain)
        dec_kib = run_measured(
            [BIN, "decrypt", "--file", sealed, "--out", back, "--context", "f=big"], env)
        assert enc_kib < LIMIT_KIB, f"encrypt peaked at {enc_kib} KiB"
        assert dec_kib < LIMIT_KIB, f"decrypt peaked at {dec_kib} KiB"
        assert os.path.getsize(back) == GIB
        zeros = bytes(1 << 20)
        with open(back, "rb") as f:
            assert f.read(5) == b"first"
            left = GIB - 9
            while left:
                chunk = f.read(min(len(zeros), left))
                assert chunk == zeros[: len(chunk)], "the decrypted file differs"
                left -= len(chunk)
            assert f.read() == b"last"
        os.unlink(back)
        # A wrong context, and a file cut short by one byte, are refused after streaming; no plaintext of
        # theirs is left behind, not even the part that came before the failure.
        with open(sealed, "r+b") as f:
            f.truncate(os.path.getsize(sealed) - 1)
        for context in ("f=other", "f=big"):
            refused = subprocess.run(
                [BIN, "decrypt", "--file", sealed, "--out", back, "--context", context],
                env=env, capture_output=True)
            assert refused.returncode != 0
            assert not os.path.exists(back) and not os.path.exists(back + ".partial")
