#!/usr/bin/env bash
# Vault's transit encrypt against the REST API: audited encrypt of 1 KiB through each, on one server, in one run.
#
#   benches/vault.sh                        # 5 rounds, 5 s per line, 32 connections
#   ROUNDS=7 DURATION=4 benches/vault.sh
#
# One dev-mode server with the durable audit log (rate limiting off) and the Vault listener. The lines
# alternate REST, Vault, REST, ..., REST; a round's ratio is its Vault line against the mean of the REST lines
# on either side of it, since this machine's speed drifts within minutes. The Vault line posts
# {"plaintext": ...} to /v1/transit/encrypt/<name> (a transit key made for the run) and gets back a
# vault:v1: ciphertext; the REST line posts the same plaintext to /v1/keys/{key}/encrypt. Goal: the Vault line
# at 90 % of the REST line or better.
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
vault() { echo "V $(line --op vault-encrypt --vault-addr "http://127.0.0.1:$V")" | tee -a "$TMP/lines"; }

echo "# $(nproc) cores, $CONCURRENCY connections, ${DURATION}s per line, $ROUNDS rounds, $(date -u +%FT%TZ)"
rest
for ((i = 0; i < ROUNDS; i++)); do
  vault
  rest
done

alternation_report V vault 0.90
