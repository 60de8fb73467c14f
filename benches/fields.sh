#!/usr/bin/env bash
# Field-level protection: values per second through HTTP, and the CLI over a large CSV with its peak memory.
#
#   benches/fields.sh                      # 3 rounds of 5 s at 8 connections; a 1,000,000-row CSV
#   ROWS=200000 ROUNDS=2 benches/fields.sh
#
# One dev-mode server with the durable audit log (rate limiting off). Each request protects 1000 mobile
# numbers (mode encrypt: ciphertext, mask and blind index each; then mode fpe), or 1000 card numbers in mode
# fpe; values/s is requests/s times 1000. The encrypt
# line of 1 KiB is measured in the same rounds as the reference. Then `keyward protect` streams a generated CSV
# of ROWS customers (two protected columns) and its peak resident memory is read from /usr/bin/time, on a
# file a tenth the size too, so that "flat" is a comparison, not an absolute. Goals: 100,000 values/s; the
# CLI's peak memory the same whatever the file's size.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-8}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-1000000}
source benches/common.sh
trap stop_servers EXIT

serve_audited AES_256
export KEYWARD_ADDR="http://127.0.0.1:$S" KEYWARD_TOKEN=$TOKEN

line() { "$BIN" bench --key "$KEY" --duration "$DURATION" --warmup 1 --concurrency "$CONCURRENCY" "$@"; }
echo "# $(nproc) cores, $CONCURRENCY connections, ${DURATION}s per line, $ROUNDS rounds, $(date -u +%FT%TZ)"
for ((i = 0; i < ROUNDS; i++)); do
  echo "E $(line --op encrypt)" | tee -a "$TMP/lines"
  echo "P $(line --op protect)" | tee -a "$TMP/lines"
  echo "F $(line --op protect-fpe)" | tee -a "$TMP/lines"
  echo "C $(line --op protect-fpe-card)" | tee -a "$TMP/lines"
done
python3 - "$TMP/lines" <<'PY'
import re, statistics, sys
rate = lambda l: float(re.search(r"([\d.]+) req/s", l).group(1))
lines = open(sys.argv[1]).read().splitlines()
enc = [rate(l) for l in lines if l.startswith("E ")]
print(f"encrypt 1 KiB: median {statistics.median(enc):,.0f} req/s")
for tag, what in [("P", "protect, 1000 phone numbers per request"),
                  ("F", "protect mode fpe, 1000 phone numbers per request"),
                  ("C", "protect mode fpe, 1000 card numbers per request")]:
    vals = [rate(l) * 1000 for l in lines if l.startswith(tag + " ")]
    print(f"{what}: median {statistics.median(vals):,.0f} values/s ({min(vals):,.0f} to {max(vals):,.0f})")
PY

python3 - "$TMP" "$ROWS" <<'PY'
import csv, random, sys
tmp, rows = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for name, n in [("small", rows // 10), ("large", rows)]:
    with open(f"{tmp}/{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "phone", "email"])
        for i in range(n):
            w.writerow([i, f"1{rng.choice('3456789')}{rng.randint(0, 10**9 - 1):09d}", f"user{i}@example.com"])
PY
for name in small large; do
  n=$(($(wc -l < "$TMP/$name.csv") - 1))
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$TMP/$name.rss" "$BIN" protect "$KEY" --columns phone:phone,email:email \
    --in "$TMP/$name.csv" --out "$TMP/$name.out.csv" 2>/dev/null
  end=$(date +%s.%N)
  python3 -c "import sys; n,s,e,r=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]),int(open(sys.argv[4]).read().split()[-1]); print(f'CLI {n:,} rows: {n*2/(e-s):,.0f} values/s, peak RSS {r/1024:.1f} MiB')" \
    "$n" "$start" "$end" "$TMP/$name.rss"
done
