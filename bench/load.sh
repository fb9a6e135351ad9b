#!/usr/bin/env bash
# HTTP load test, one command, bounded in time and count. Everything runs on loopback:
#
#   bare         keygate's own HTTP stack answering 200 without checking anything, sent the
#                same requests (Authorization header included)
#                (crates/server/examples/bare.rs)
#   keygate      /authz/v1/apps with one reused token, then with a fresh token per request
#   jose peer    Node.js + jose, one worker per core, doing the same checks (kid, ES256, iss,
#                aud, exp, 20-minute lifetime), with the same two token mixes
#   create       POST /v1/apiKeys on SQLite: key generation and sealing included
#
# It prints requests/s and p50/p99 latency for each, then the SPEC §10 ratios. Installs wrk
# (apt) and the peer (npm, under bench/peers/jose) if missing. Results vary with the machine;
# compare the ratios, which are measured in one run.
#
#   bench/load.sh                      # 10 s per run
#   DURATION=5s CONNECTIONS=32 bench/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
FRESH_TOKENS=${FRESH_TOKENS:-300000}
KG=127.0.0.1:18080 BARE=127.0.0.1:18090 PEER=18091

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "load: installing wrk"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk
fi
command -v node >/dev/null || { echo "load: node is required for the jose peer" >&2; exit 1; }
if [ ! -d bench/peers/jose/node_modules/jose ]; then
  echo "load: installing the jose peer"
  (cd bench/peers/jose && npm install --no-audit --no-fund --silent)
fi

echo "load: building (release)"
cargo build --release -q -p keygate
cargo build --release -q -p keygate-server --example bare
cargo build --release -q -p keygate-client --example mint_tokens
bin=target/release

wait_http() { for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }

unset KEYGATE_MASTER_KEY
export KEYGATE_LOG=warn
# Load tests must not hit the rate limit or the active-key cap.
KEYGATE_RATE_LIMIT_PER_HOUR=4000000000 KEYGATE_MAX_ACTIVE_TEAM_KEYS=1000000000 \
  "$bin/keygate" serve --listen "$KG" --database "sqlite://$work/data/keygate.db" >"$work/keygate.out" 2>&1 &
pids+=($!)
wait_http "http://$KG/healthz"
boot=$("$bin/keygate" admin bootstrap --database "sqlite://$work/data/keygate.db" --out "$work/keys")
read -r issuer kid p8 < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["issuerId"], d["keyId"], d["privateKeyPath"])' "$boot")
sleep 0.5 # the server picks the bootstrapped key up from the change feed
reused=$("$bin/keygate" token --key "$p8" --key-id "$kid" --issuer-id "$issuer" --lifetime 20m)
echo "load: minting $FRESH_TOKENS fresh tokens"
"$bin/examples/mint_tokens" "$p8" "$kid" "$issuer" "$FRESH_TOKENS" >"$work/fresh.txt"
openssl pkey -in "$p8" -pubout -out "$work/public.pem" 2>/dev/null

"$bin/examples/bare" "$BARE" >/dev/null 2>&1 &
pids+=($!)
node bench/peers/jose/server.mjs "$PEER" "$kid" "$issuer" "$work/public.pem" >/dev/null 2>&1 &
pids+=($!)
wait_http "http://$BARE/"
wait_http "http://127.0.0.1:$PEER/"

# run NAME URL [wrk args...]: prints a row and records requests/s in $work/NAME.rps
run() {
  local name=$1 url=$2; shift 2
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" "$@")
  local rps p50 p99 bad
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
  if grep -q WARNING <<<"$out"; then grep WARNING <<<"$out" >&2; exit 1; fi
  printf "%-26s %12s req/s   p50 %9s   p99 %9s   %s\n" "$name" "$rps" "$p50" "$p99" "${bad:+($bad non-2xx!)}"
  echo "$rps" >"$work/$name.rps"
}

echo
echo "$(date -u +%F) $(nproc) cores; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; load generator and servers share the machine"
run bare "http://$BARE/v1/apps" -H "Authorization: Bearer $reused"
run keygate-reused "http://$KG/authz/v1/apps" -H "Authorization: Bearer $reused"
run keygate-fresh "http://$KG/authz/v1/apps" -s bench/fresh.lua -- "$work/fresh.txt" "$THREADS"
run jose-reused "http://127.0.0.1:$PEER/v1/apps" -H "Authorization: Bearer $reused"
run jose-fresh "http://127.0.0.1:$PEER/v1/apps" -s bench/fresh.lua -- "$work/fresh.txt" "$THREADS"
admin=$("$bin/keygate" token --key "$p8" --key-id "$kid" --issuer-id "$issuer" --lifetime 20m)
CONNECTIONS=4 run create-key "http://$KG/v1/apiKeys" -s bench/create.lua -H "Authorization: Bearer $admin"

r() { cat "$work/$1.rps"; }
echo
python3 - "$(r bare)" "$(r keygate-reused)" "$(r keygate-fresh)" "$(r jose-reused)" "$(r jose-fresh)" "$(r create-key)" <<'EOF'
import sys
bare, reused, fresh, jreused, jfresh, create = map(float, sys.argv[1:])
rows = [
    ("reused token: keygate / jose", reused / jreused, ">= 10x"),
    ("reused token: keygate / bare", reused / bare, ">= 0.8x"),
    ("fresh token:  keygate / jose", fresh / jfresh, ">= 2x"),
]
for name, ratio, target in rows:
    print(f"{name:32} {ratio:6.2f}x   (target {target})")
print(f"{'key creations per second':32} {create:8.0f}   (target >= 500)")
EOF
