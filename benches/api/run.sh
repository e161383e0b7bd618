#!/usr/bin/env bash
# API load test on loopback: `geopromo serve` in dev mode (embedded broker, processor, API in one
# process), 1,000 mobile users each reusing its own access token, wrk with 2 threads; then the own-results
# read flat out (wrk) and at a fixed 5,000 req/s (autocannon, when installed: npm install -g autocannon).
#   bash benches/api/run.sh [connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
connections=${1:-64}
seconds=${2:-20}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
export GEOPROMO__DATABASE__URL="sqlite://$work/bench.sqlite"
export GEOPROMO__METRICS__LISTEN=""
export GEOPROMO__API__LISTEN="127.0.0.1:18080"
export GEOPROMO__LOG__FILTER=warn
# GEOPROMO_BIN runs another build (an A/B against a saved binary) instead of building this tree.
bin=${GEOPROMO_BIN:-target/release/geopromo}
[ -n "${GEOPROMO_BIN:-}" ] || cargo build --release --quiet
$bin migrate >/dev/null
users=$(seq -f "rider-%g" 1 1000)
# shellcheck disable=SC2086
echo "bench password" | $bin user add $users --role mobile >/dev/null
# shellcheck disable=SC2086
$bin session issue $users --client mobile | python3 -c 'import sys, json; [print(json.loads(l)["access_token"]) for l in sys.stdin]' > "$work/tokens.txt"
$bin serve > "$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf localhost:18080/readyz >/dev/null && break; sleep 0.2; done
export TOKENS="$work/tokens.txt"
echo "== POST /v1/locations, $connections connections, ${seconds}s"
wrk -t2 -c"$connections" -d"${seconds}s" --latency -s benches/api/locations.lua http://127.0.0.1:18080
[ -n "${LOCATIONS_ONLY:-}" ] && exit 0
echo "== GET /v1/users/me/promotions, $connections connections, ${seconds}s, flat out"
wrk -t2 -c"$connections" -d"${seconds}s" --latency -s benches/api/own-results.lua http://127.0.0.1:18080
if command -v autocannon >/dev/null; then
  echo "== GET /v1/users/me/promotions at 5,000 req/s (autocannon, 32 connections), ${seconds}s"
  NODE_PATH=$(npm root -g) node benches/api/own-results-rate.js http://127.0.0.1:18080 "$TOKENS" 5000 "$seconds"
else
  echo "(install autocannon with npm -g for the fixed-rate read test)"
fi
