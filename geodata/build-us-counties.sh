#!/usr/bin/env bash
# Rebuilds geodata/us-counties.geojson from the us-atlas npm package (pinned version).
# Needs node and npm; everything is installed under geodata/.build, which git ignores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build="$here/.build"
mkdir -p "$build"
cd "$build"
[ -f package.json ] || echo '{"private":true,"type":"module"}' > package.json
npm install --silent --no-audit --no-fund us-atlas@3.0.1 topojson-client@3.1.0
cp "$here/build-us-counties.mjs" .
node build-us-counties.mjs node_modules/us-atlas/counties-10m.json "$here/us-counties.geojson"
