#!/usr/bin/env bash
# Copies the console's third-party parts from npm (versions pinned in package-lock.json) into
# console/vendor/, which is committed and embedded in the binary: `cargo build` needs no Node.
#   console/vendor.sh          refresh vendor/ from node_modules (npm ci first)
#   console/vendor.sh --check  fail if vendor/ differs from what npm's locked packages give (CI runs this)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
[ -d node_modules/maplibre-gl ] || npm ci --silent --no-audit --no-fund
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cp node_modules/maplibre-gl/dist/maplibre-gl.mjs node_modules/maplibre-gl/dist/maplibre-gl-worker.mjs \
   node_modules/maplibre-gl/dist/maplibre-gl.css "$out/"
cp node_modules/maplibre-gl/LICENSE.txt "$out/maplibre-gl-LICENSE.txt"
node build-basemap.mjs node_modules/world-atlas/countries-110m.json "$out/countries-110m.geojson"
if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$out" vendor >/dev/null; then
    diff -rq "$out" vendor || true
    echo "console/vendor differs from the locked npm packages: run console/vendor.sh and commit" >&2
    exit 1
  fi
  echo "console/vendor matches the locked npm packages"
else
  rm -rf vendor && mkdir vendor && cp "$out"/* vendor/
  echo "console/vendor refreshed"
fi
