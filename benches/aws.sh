#!/usr/bin/env bash
# The AWS KMS protocol against the REST API: audited Encrypt of 1 KiB through each, on one server, in one run.
#
#   benches/aws.sh                          # 5 rounds, 5 s per line, 32 connections
#   ROUNDS=7 DURATION=4 benches/aws.sh
#
# One dev-mode server with the durable audit log (rate limiting off). The lines alternate REST, AWS, REST, ...,
# REST; a round's ratio is its AWS line against the mean of the REST lines on either side of it, since this
# machine's speed drifts within minutes. Every AWS request is signed afresh with Signature Version 4 by the load
# generator (as an SDK signs each request) and verified by the server; the access key belongs to an identity
# with the key-user role, made for the run. Goal: the AWS line at 85 % of the REST line or better.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-32}
ROUNDS=${ROUNDS:-5}
source benches/common.sh
trap stop_servers EXIT

serve_audited SYMMETRIC_DEFAULT

line() { KEYWARD_TOKEN=$TOKEN "$BIN" bench --addr "http://127.0.0.1:$S" --key "$KEY" --duration "$DURATION" --warmup 1 --concurrency "$CONCURRENCY" "$@"; }
rest() { echo "R $(line --op encrypt)" | tee -a "$TMP/lines"; }
aws() { echo "A $(line --op aws-encrypt)" | tee -a "$TMP/lines"; }

echo "# $(nproc) cores, $CONCURRENCY connections, ${DURATION}s per line, $ROUNDS rounds, $(date -u +%FT%TZ)"
rest
for ((i = 0; i < ROUNDS; i++)); do
  aws
  rest
done

alternation_report A aws 0.85
