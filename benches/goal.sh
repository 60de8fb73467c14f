#!/usr/bin/env bash
# The HTTP goal, measured as a distribution rather than once: audited encrypt of 1 KiB against the floor.
#
#   benches/goal.sh                          # 7 rounds, 5 s per line, 32 connections
#   ROUNDS=11 DURATION=4 benches/goal.sh
#
# This machine's speed drifts within minutes (the floor of one run has moved by a third between two lines),
# so one pair of lines says little about where the goal stands. The lines alternate: floor (the same requests
# as the encrypt line, `--op floor --like encrypt`), audited encrypt, floor, audited encrypt, ..., floor; a
# round's share is its encrypt line against the mean of the floor lines on either side of it.
# The summary gives every round's share and p99, their median, and how many rounds met each goal
# (at least 50 % of the floor; p99 under 5 ms).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-32}
ROUNDS=${ROUNDS:-7}
source benches/common.sh
trap stop_servers EXIT

FLOOR=$(port); AUDITED=$(port)
printf 'rate_limit_per_second = 0\n' > "$TMP/audited.toml"
"$BIN" bench-floor --listen "127.0.0.1:$FLOOR" 2>/dev/null & pids+=($!)
KEYWARD_DEV_ROOT_TOKEN=$TOKEN "$BIN" serve --dev --config "$TMP/audited.toml" --data-dir "$TMP/a" --listen "127.0.0.1:$AUDITED" >/dev/null 2>&1 & pids+=($!)
wait_for_ports $FLOOR $AUDITED

line() { KEYWARD_TOKEN=$TOKEN "$BIN" bench --duration "$DURATION" --warmup 1 --concurrency "$CONCURRENCY" "$@"; }
floor() { echo "F $(line --addr "http://127.0.0.1:$FLOOR" --op floor --like encrypt)" | tee -a "$TMP/lines"; }
audited() { echo "E $(line --addr "http://127.0.0.1:$AUDITED" --op encrypt)" | tee -a "$TMP/lines"; }

echo "# $(nproc) cores, $CONCURRENCY connections, ${DURATION}s per line, $ROUNDS rounds, $(date -u +%FT%TZ)"
floor
for ((i = 0; i < ROUNDS; i++)); do
  audited
  floor
done

python3 - "$TMP/lines" <<'PY'
import re, statistics, sys
lines = [l for l in open(sys.argv[1]) if "req/s" in l]
rate = lambda l: float(re.search(r"(\d+) req/s", l).group(1))
p99 = lambda l: float(re.search(r"p99 ([\d.]+) ms", l).group(1))
shares, tails = [], []
for i in range(1, len(lines) - 1, 2):
    before, enc, after = lines[i - 1], lines[i], lines[i + 1]
    floor = (rate(before) + rate(after)) / 2
    shares.append(rate(enc) / floor)
    tails.append(p99(enc))
print("# shares of the floor: " + ", ".join(f"{s:.0%}" for s in shares))
print("# p99 of audited encrypt (ms): " + ", ".join(f"{t:.2f}" for t in tails))
print(f"# median share {statistics.median(shares):.0%} (range {min(shares):.0%}-{max(shares):.0%}), "
      f"median p99 {statistics.median(tails):.2f} ms; "
      f"rounds at 50 % or more: {sum(s >= 0.5 for s in shares)} of {len(shares)}; "
      f"rounds with p99 under 5 ms: {sum(t < 5 for t in tails)} of {len(tails)}")
PY
