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
# and sets S (its port) and KEY (a new key of spec $1).
serve_audited() {
  S=$(port)
  printf 'rate_limit_per_second = 0\n' > "$TMP/audited.toml"
  KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/s" --listen "127.0.0.1:$S" >/dev/null 2>&1 & pids+=($!)
  wait_for_ports "$S"
  KEY=$(KEYWARD_ADDR="http://127.0.0.1:$S" KEYWARD_TOKEN=$TOKEN "$BIN" --json key create --spec "$1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key_id"])')
}
