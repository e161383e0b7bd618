#!/usr/bin/env bash
# Rebuilds geodata/world-countries.geojson from the world-atlas npm package (pinned version).
# Needs node and npm; everything is installed under geodata/.build, which git ignores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build="$here/.build"
mkdir -p "$build"
cd "$build"
[ -f package.json ] || echo '{"private":true,"type":"module"}' > package.json
npm install --silent --no-audit --no-fund world-atlas@2.0.2 topojson-client@3.1.0
cp "$here/build-world-countries.mjs" .
node build-world-countries.mjs node_modules/world-atlas/countries-50m.json "$here/world-countries.geojson"
