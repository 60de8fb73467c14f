#!/usr/bin/env bash
# No regression: audited encrypt of this tree's build against another build of Keyward, in one run.
#
#   benches/versus.sh /path/to/keyward-before            # 7 rounds, 5 s per line, 32 connections
#   ROUNDS=9 DURATION=4 benches/versus.sh OLD_BIN [NEW_BIN]
#
# Both servers run side by side in dev mode with the durable audit log (rate limiting off); the lines
# alternate old, new, old, new, ..., old, and a round's ratio is its new line against the mean of the old lines
# on either side of it, since this machine's speed drifts within minutes. The same load generator (this
# tree's `keyward bench`) drives both. A third server, the new build with the audit log off, gives what
# auditing costs in the same run (goal: at most 20 %).
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?usage: benches/versus.sh OLD_BIN [NEW_BIN]}
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-32}
ROUNDS=${ROUNDS:-7}
source benches/common.sh
NEW=${2:-$BIN}
trap stop_servers EXIT

A=$(port); B=$(port); U=$(port)
printf 'rate_limit_per_second = 0\n' > "$TMP/audited.toml"
printf 'rate_limit_per_second = 0\naudit = false\n' > "$TMP/unaudited.toml"
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$OLD" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/old" --listen "127.0.0.1:$A" >/dev/null 2>&1 & pids+=($!)
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$NEW" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/new" --listen "127.0.0.1:$B" >/dev/null 2>&1 & pids+=($!)
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$NEW" serve --dev --config "$TMP/unaudited.toml" --data-dir "$TMP/off" --listen "127.0.0.1:$U" >/dev/null 2>&1 & pids+=($!)
wait_for_ports $A $B $U

line() { KEYWARD_TOKEN=$TOKEN "$BIN" bench --duration "$DURATION" --warmup 1 --concurrency "$CONCURRENCY" --op encrypt "$@"; }
old() { echo "O $(line --addr "http://127.0.0.1:$A")" | tee -a "$TMP/lines"; }
new() { echo "N $(line --addr "http://127.0.0.1:$B")" | tee -a "$TMP/lines"; }
off() { echo "U $(line --addr "http://127.0.0.1:$U")" | tee -a "$TMP/lines"; }

echo "# $(nproc) cores, $CONCURRENCY connections, ${DURATION}s per line, $ROUNDS rounds, $(date -u +%FT%TZ)"
echo "# old: $OLD; new: $NEW"
old
for ((i = 0; i < ROUNDS; i++)); do
  new
  old
done
new
off
new

python3 - "$TMP/lines" <<'PY'
import re, statistics, sys
lines = [l for l in open(sys.argv[1]) if "req/s" in l]
rate = lambda l: float(re.search(r"(\d+) req/s", l).group(1))
p99 = lambda l: float(re.search(r"p99 ([\d.]+) ms", l).group(1))
ratios = []
seq = [l for l in lines if l[0] in "ON"]
for i in range(1, len(seq) - 1):
    if seq[i][0] == "N" and seq[i - 1][0] == "O" and seq[i + 1][0] == "O":
        ratios.append(rate(seq[i]) / ((rate(seq[i - 1]) + rate(seq[i + 1])) / 2))
news = [l for l in lines if l[0] == "N"]
olds = [l for l in lines if l[0] == "O"]
off = [l for l in lines if l[0] == "U"]
print("# new/old per round: " + ", ".join(f"{r:.3f}" for r in ratios))
print(f"# median new/old {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
      f"median p99 old {statistics.median(map(p99, olds)):.2f} ms, new {statistics.median(map(p99, news)):.2f} ms")
if off:
    around = (rate(news[-2]) + rate(news[-1])) / 2
    print(f"# audit cost (new build): audited {around:.0f} req/s against audit off {rate(off[0]):.0f} req/s: "
          f"{1 - around / rate(off[0]):.0%}")
PY
