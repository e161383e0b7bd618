#!/usr/bin/env bash
# `geopromo match` end to end on uniform CONUS points against the US counties at 1 km, against shapely.
#
#   bash benches/batch/run.sh [POINTS] [RUNS]      # default 1000000 3
#
# Generates the points once (benches/batch/points.py, seeded), runs the release binary RUNS times with
# the output to a file, and prints each wall time and the median. With shapely, numpy and pyproj
# installed (pip install shapely numpy pyproj) it also runs benches/batch/shapely_match.py on the same data.
set -euo pipefail
cd "$(dirname "$0")/../.."
points=${1:-1000000}
runs=${2:-3}
dir=${TMPDIR:-/tmp}/geopromo-batch
mkdir -p "$dir"
csv="$dir/uniform-$points.csv"
[ -s "$csv" ] || python3 benches/batch/points.py "$points" "$csv"
cargo build --release --quiet --bin geopromo
walls=()
for run in $(seq "$runs"); do
  # The previous run's output is removed before the clock starts: truncating it in the redirect would
  # time the kernel dropping its ~70 bytes per point of page cache (0.17 s for 5 M points on the
  # 2-core VM), which is not the job's work and which writing a new file does not pay.
  rm -f "$dir/out.ndjson"
  start=$(date +%s.%N)
  target/release/geopromo match --fences geodata/us-counties.geojson --skip-invalid --tolerance-m 1000 \
    "$csv" > "$dir/out.ndjson" 2> "$dir/log.txt" || { cat "$dir/log.txt"; exit 1; }
  end=$(date +%s.%N)
  wall=$(echo "$end - $start" | bc)
  walls+=("$wall")
  echo "run $run: wall ${wall} s; $(grep -E '^(index|matched)' "$dir/log.txt" | sed 's/^index: .*built in/index built in/' | tr '\n' ';')"
done
median=$(printf '%s\n' "${walls[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median wall: $median s for $points points = $(echo "$points / $median / 1000000" | bc -l | cut -c1-4) M points/s end to end"
if python3 -c "import shapely, numpy, pyproj" 2>/dev/null; then
  python3 benches/batch/shapely_match.py geodata/us-counties.geojson "$csv" 1000
fi
