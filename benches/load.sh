#!/usr/bin/env bash
# Load test: Keyward over HTTP next to the machine's HTTP floor, measured in one run.
#
#   benches/load.sh                 # 10 s per measurement, 32 connections
#   DURATION=5 CONCURRENCY=64 benches/load.sh
#
# Starts, on loopback only: the floor server (`keyward bench-floor`: reads each request, answers a fixed 200;
# driven with the same requests as the encrypt lines, `--op floor --like encrypt`), the durable floor
# (`bench-floor --durable`: the same answer once a 300-byte record is durable in a file, by group commit; what
# the least durable-audit design costs on this machine), Keyward in dev mode
# with the durable audit log, the same on the PostgreSQL store (in a scratch schema of KEYWARD_BENCH_POSTGRES,
# default postgres://postgres@127.0.0.1:5432/test; needs psql), three production-mode nodes sharing one
# database (initialised once, each unsealed with the share; the load is spread over them), and Keyward in dev
# mode with the audit log off (to show what auditing costs).
# The load generator shares the two cores with the servers, so only figures from the same run compare.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-32}
source benches/common.sh
PG=${KEYWARD_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
SCHEMA=kwbench_$$
cleanup() {
  stop_servers
  psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
  psql "$PG" -qc "DROP SCHEMA IF EXISTS ${SCHEMA}_cluster CASCADE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

FLOOR=$(port); DURABLE=$(port); AUDITED=$(port); UNAUDITED=$(port); ONPG=$(port); N1=$(port); N2=$(port); N3=$(port)

printf 'rate_limit_per_second = 0\n' > "$TMP/audited.toml"
printf 'rate_limit_per_second = 0\naudit = false\n' > "$TMP/unaudited.toml"
"$BIN" bench-floor --listen "127.0.0.1:$FLOOR" 2>/dev/null & pids+=($!)
"$BIN" bench-floor --listen "127.0.0.1:$DURABLE" --durable "$TMP/durable-floor.log" 2>/dev/null & pids+=($!)
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/a" --listen "127.0.0.1:$AUDITED" >/dev/null 2>&1 & pids+=($!)
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/unaudited.toml" --data-dir "$TMP/u" --listen "127.0.0.1:$UNAUDITED" >/dev/null 2>&1 & pids+=($!)
psql "$PG" -qc "CREATE SCHEMA $SCHEMA" >/dev/null
case $PG in *\?*) PGSTORE="$PG&options=-csearch_path%3D$SCHEMA";; *) PGSTORE="$PG?options=-csearch_path%3D$SCHEMA";; esac
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/p" --store "$PGSTORE" --listen "127.0.0.1:$ONPG" >/dev/null 2>&1 & pids+=($!)
# Three nodes on one database (another schema), initialised once and each unsealed with the share.
psql "$PG" -qc "CREATE SCHEMA ${SCHEMA}_cluster" >/dev/null
case $PG in *\?*) CLSTORE="$PG&options=-csearch_path%3D${SCHEMA}_cluster";; *) CLSTORE="$PG?options=-csearch_path%3D${SCHEMA}_cluster";; esac
for n in $N1 $N2 $N3; do
  "$BIN" serve --config "$TMP/audited.toml" --data-dir "$TMP/n$n" --store "$CLSTORE" --listen "127.0.0.1:$n" >/dev/null 2>&1 & pids+=($!)
done
wait_for_ports $FLOOR $DURABLE $AUDITED $UNAUDITED $ONPG $N1 $N2 $N3
INIT=$(KEYWARD_ADDR="http://127.0.0.1:$N1" "$BIN" --json operator init --shares 1 --threshold 1)
SHARE=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["shares"][0])' "$INIT")
CLTOKEN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["root_token"])' "$INIT")
sleep 1
for n in $N1 $N2 $N3; do KEYWARD_ADDR="http://127.0.0.1:$n" "$BIN" operator unseal "$SHARE" >/dev/null; done
CLUSTER="http://127.0.0.1:$N1,http://127.0.0.1:$N2,http://127.0.0.1:$N3"

run() { KEYWARD_TOKEN=$TOKEN "$BIN" bench --duration "$DURATION" --warmup 2 --concurrency "$CONCURRENCY" "$@" | tee -a "$TMP/lines"; }
echo "# $(nproc) cores, $CONCURRENCY connections, ${DURATION}s per line, $(date -u +%FT%TZ)"
# The goal lines first, between two floor lines: this machine's speed drifts within a run, so they are
# compared with the floor measured next to them.
# The floor lines carry the same load as the encrypt lines (the same POST, token and 1 KiB payload; the floor
# reads it and answers 200); the bare-GET floor after them is the lighter reference of earlier runs.
run --addr "http://127.0.0.1:$FLOOR" --op floor --like encrypt
run --addr "http://127.0.0.1:$AUDITED" --op encrypt
echo "# audit log off (dev-mode switch, for this comparison only)"
run --addr "http://127.0.0.1:$UNAUDITED" --op encrypt
echo "# durable floor: a fixed answer once a record is durable (group commit to a file, nothing else)"
run --addr "http://127.0.0.1:$DURABLE" --op floor --like encrypt
run --addr "http://127.0.0.1:$FLOOR" --op floor --like encrypt
echo "# floor, bare GET without a body (the reference of runs before 2026-11-30 12:00)"
run --addr "http://127.0.0.1:$FLOOR" --op floor
echo "# audit on"
run --addr "http://127.0.0.1:$AUDITED" --op decrypt
run --addr "http://127.0.0.1:$AUDITED" --op sign
run --addr "http://127.0.0.1:$AUDITED" --op data-key
echo "# PostgreSQL store (audited)"
run --addr "http://127.0.0.1:$ONPG" --op encrypt
run --addr "http://127.0.0.1:$ONPG" --op decrypt
echo "# PostgreSQL store, three nodes on one database (connections spread evenly)"
KEYWARD_TOKEN=$CLTOKEN "$BIN" bench --duration "$DURATION" --warmup 2 --concurrency "$CONCURRENCY" --addr "$CLUSTER" --op encrypt
KEYWARD_TOKEN=$CLTOKEN "$BIN" bench --duration "$DURATION" --warmup 2 --concurrency "$CONCURRENCY" --addr "$CLUSTER" --op decrypt
run --addr "http://127.0.0.1:$FLOOR" --op floor --like encrypt
# The goal figures: audited encrypt against the mean of the two floor lines around it, and what audit costs.
python3 - "$TMP/lines" <<'PY'
import re, sys
rates = [float(m.group(1)) for m in (re.search(r"(\d+) req/s", l) for l in open(sys.argv[1])) if m]
floor = (rates[0] + rates[4]) / 2
print(f"# encrypt with audit: {rates[1] / floor:.0%} of the floor ({rates[1]:,.0f} of {floor:,.0f} req/s); "
      f"audit off: {rates[2] / floor:.0%}; audit costs {1 - rates[1] / rates[2]:.0%} of encrypt throughput; "
      f"durable floor: {rates[3] / floor:.0%} (durability alone costs {1 - rates[3] / floor:.0%}); "
      f"against the bare-GET floor ({rates[5]:,.0f} req/s): {rates[1] / rates[5]:.0%}")
PY
