# Sourced by the load scripts (from the repository root): the release binary, a scratch directory, the
# servers they start (stopped with `stop_servers`), free loopback ports and a dev root token.
cargo build --release --locked -p keyward-cli >/dev/null 2>&1 || cargo build --release --locked -p keyward-cli
BIN=target/release/keyward
TMP=$(mktemp -d)
pids=()
TOKEN="kw.bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

stop_servers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until each loopback port accepts connections (10 s at most each). A connection whose two ends are the
# same address does not count: with nothing listening yet, a connect to a free port can be given that port as
# its own and connect to itself.
wait_for_ports() {
  python3 - "$@" <<'END'
import socket, sys, time
for port in map(int, sys.argv[1:]):
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.getsockname() != s.getpeername():
                    break
        except OSError:
            pass
        time.sleep(0.1)
END
}

# Starts one dev-mode server with the durable audit log and rate limiting off on a free port, waits for it,
# and sets S (its port), V (its Vault API port) and KEY (a new key of spec $1).
serve_audited() {
  S=$(port)
  V=$(port)
  printf 'rate_limit_per_second = 0\n' > "$TMP/audited.toml"
  KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/s" --listen "127.0.0.1:$S" \
    --vault-listen "127.0.0.1:$V" >/dev/null 2>&1 & pids+=($!)
  wait_for_ports "$S" "$V"
  KEY=$(KEYWARD_ADDR="http://127.0.0.1:$S" KEYWARD_TOKEN=$TOKEN "$BIN" --json key create --spec "$1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key_id"])')
}

# Alternated lines REST, door, REST, ..., REST in $TMP/lines (the door's lines tagged $1, the REST lines R):
# each door line against the mean of the REST lines on either side of it, since this machine's speed drifts
# within minutes; prints the ratios, their median against the goal $3, and the median p99 of each. $2 names
# the door.
alternation_report() {
  python3 - "$TMP/lines" "$1" "$2" "$3" <<'PY'
import re, statistics, sys
path, tag, door, goal = sys.argv[1:]
lines = [l for l in open(path) if "req/s" in l]
rate = lambda l: float(re.search(r"(\d+) req/s", l).group(1))
p99 = lambda l: float(re.search(r"p99 ([\d.]+) ms", l).group(1))
ratios = [rate(lines[i]) / ((rate(lines[i - 1]) + rate(lines[i + 1])) / 2)
          for i in range(1, len(lines) - 1) if lines[i][0] == tag]
errors = sum(int(re.search(r"errors=(\d+)", l).group(1)) for l in lines)
print(f"# {door}/rest per round: " + ", ".join(f"{r:.3f}" for r in ratios))
print(f"# median {door}/rest {statistics.median(ratios):.3f} (goal {goal}); median p99 rest "
      f"{statistics.median(p99(l) for l in lines if l[0] == 'R'):.2f} ms, {door} "
      f"{statistics.median(p99(l) for l in lines if l[0] == tag):.2f} ms; errors {errors}")
PY
}
