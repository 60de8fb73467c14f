#!/usr/bin/env bash
# HSM speed: the software HSM and SoftHSM2 through Keyward's PKCS#11 backend, one thread each, in one run,
# next to `openssl speed` on the same machine.
#
#   benches/hsm.sh                  # 3 s per operation and backend
#   SECONDS_PER_OP=5 benches/hsm.sh
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf 'directories.tokendir = %s\n' "$dir" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
softhsm2-util --init-token --free --label keyward-bench --pin 1234 --so-pin 5678 >/dev/null
export KEYWARD_PKCS11_MODULE=${KEYWARD_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
export KEYWARD_PKCS11_TOKEN_LABEL=keyward-bench KEYWARD_PKCS11_PIN=1234

echo "# $(nproc) cores, $(date -u +%FT%TZ), $(openssl version)"
cargo run --release --locked -q -p keyward-hsm-pkcs11 --example speed
s=${SECONDS_PER_OP:-3}
echo "# openssl speed, same machine"
openssl speed -seconds "$s" -bytes 1024 -evp aes-256-gcm 2>/dev/null | tail -n 1
openssl speed -seconds "$s" rsa2048 2>/dev/null | grep -E '^rsa 2048' | head -n 1
openssl speed -seconds "$s" ecdsap256 2>/dev/null | grep -E 'nistp256' | tail -n 1
openssl speed -seconds "$s" -bytes 1024 -hmac sha256 2>/dev/null | tail -n 1
