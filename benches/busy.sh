#!/usr/bin/env bash
# Where the time goes: CPU per request of each server thread and of the load generator, and how busy the two
# cores are, for the floor, the durable floor, and encrypt with audit on and off.
#
#   benches/busy.sh                 # 2 rounds, 8 s per target, 32 connections
#   ROUNDS=3 DURATION=10 benches/busy.sh
#
# CPU time is read from /proc (utime + stime of every thread, grouped by thread name) before and after each
# measurement; the load generator's from its rusage. "busy" is (server + load generator CPU per request)
# x rate / cores: near 100 % the run is bound by CPU, well below it by waiting (a durable flush, here).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8}
CONCURRENCY=${CONCURRENCY:-32}
source benches/common.sh
trap stop_servers EXIT

printf 'rate_limit_per_second = 0\n' > "$TMP/audited.toml"
printf 'rate_limit_per_second = 0\naudit = false\n' > "$TMP/unaudited.toml"
FLOOR=$(port); DURABLE=$(port); AUDITED=$(port); UNAUDITED=$(port)
"$BIN" bench-floor --listen "127.0.0.1:$FLOOR" 2>/dev/null & pids+=($!); P_FLOOR=$!
"$BIN" bench-floor --listen "127.0.0.1:$DURABLE" --durable "$TMP/durable-floor.log" 2>/dev/null & pids+=($!); P_DURABLE=$!
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/a" --listen "127.0.0.1:$AUDITED" >/dev/null 2>&1 & pids+=($!); P_AUDITED=$!
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/unaudited.toml" --data-dir "$TMP/u" --listen "127.0.0.1:$UNAUDITED" >/dev/null 2>&1 & pids+=($!); P_UNAUDITED=$!
wait_for_ports $FLOOR $DURABLE $AUDITED $UNAUDITED

# Per thread name: CPU ticks and context switches.
snapshot() {
  for t in /proc/"$1"/task/*; do
    name=$(tr ' ' _ < "$t/comm")
    stat=($(cut -d')' -f2 "$t/stat"))
    switches=$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s}' "$t/status")
    echo "$name $((stat[11] + stat[12])) $switches"
  done | awk '{c[$1] += $2; s[$1] += $3} END {for (k in c) print k, c[k], s[k]}' | sort
}

measure() { # pid port "op [options]" label
  snapshot "$1" > "$TMP/before"
  # The load generator's CPU time: its rusage, as its parent (Python) sees it once it has exited.
  KEYWARD_TOKEN=$TOKEN python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[3:], stdout=out, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[2], "w").write(f"{r.ru_utime} {r.ru_stime}")
' "$TMP/out" "$TMP/loadgen" "$BIN" bench --duration "$DURATION" --warmup 0 --concurrency "$CONCURRENCY" \
    --addr "http://127.0.0.1:$2" --op $3
  snapshot "$1" > "$TMP/after"
  python3 - "$4" "$TMP/out" "$TMP/loadgen" "$TMP/before" "$TMP/after" "$(getconf CLK_TCK)" "$(nproc)" <<'PY'
import re, sys
label, out, loadgen, before, after, tck, cores = sys.argv[1:]
text = open(out).read()
n = int(re.search(r"requests=(\d+)", text).group(1))
rate = float(re.search(r"(\d+) req/s", text).group(1))
user, system = map(float, open(loadgen).read().split()[-2:])
lg = (user + system) * 1e6 / n
def load(path):
    return {f[0]: (int(f[1]), int(f[2])) for f in (line.split() for line in open(path)) if len(f) == 3}
b, a = load(before), load(after)
threads = []
for name, (ticks, switches) in a.items():
    t0, s0 = b.get(name, (0, 0))
    us = (ticks - t0) * 1e6 / int(tck) / n
    if us >= 0.3:
        threads.append((name, us, (switches - s0) / n))
server = sum(us for _, us, _ in threads)
busy = (server + lg) * rate / 1e6 / int(cores)
print(f"{label:<20} {rate:>8,.0f} req/s  server {server:5.1f} us/req  load generator {lg:5.1f} us/req  busy {busy:4.0%}")
for name, us, cs in sorted(threads, key=lambda t: -t[1]):
    print(f"    {name:<22} {us:5.1f} us/req  {cs:4.2f} context switches/req")
PY
}

echo "# $(nproc) cores, $CONCURRENCY connections, ${DURATION}s per target, $(date -u +%FT%TZ)"
for _ in $(seq "$ROUNDS"); do
  # The floors carry the same requests as the encrypt targets.
  measure "$P_FLOOR" "$FLOOR" "floor --like encrypt" floor
  measure "$P_DURABLE" "$DURABLE" "floor --like encrypt" "durable floor"
  measure "$P_AUDITED" "$AUDITED" encrypt "encrypt, audit on"
  measure "$P_UNAUDITED" "$UNAUDITED" encrypt "encrypt, audit off"
done
