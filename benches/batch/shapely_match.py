"""The peer figure for `geopromo match`: shapely 2 (GEOS) matching the same points against the same
fences with the same tolerance, projected to CONUS Albers (EPSG:5070) so the tolerance is in metres.

usage: python3 shapely_match.py FENCES.geojson POINTS.csv [TOLERANCE_M]
Prints the index build time (projection included) and the match rate (STRtree dwithin query).
"""
import json
import sys
import time

import numpy as np
import shapely
from pyproj import Transformer

fences_path, points_path = sys.argv[1], sys.argv[2]
tolerance = float(sys.argv[3]) if len(sys.argv) > 3 else 1000.0
to_albers = Transformer.from_crs("EPSG:4326", "EPSG:5070", always_xy=True)

with open(fences_path) as f:
    features = json.load(f)["features"]
started = time.perf_counter()
geoms = shapely.from_geojson([json.dumps(ft["geometry"]) for ft in features])
geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_albers.transform(xy[:, 0], xy[:, 1])))
geoms = geoms[shapely.is_valid(geoms)]
tree = shapely.STRtree(geoms)
built = time.perf_counter() - started

started = time.perf_counter()
data = np.loadtxt(points_path, delimiter=",", skiprows=1, usecols=(1, 2))
x, y = to_albers.transform(data[:, 1], data[:, 0])
points = shapely.points(x, y)
loaded = time.perf_counter() - started

started = time.perf_counter()
pairs = tree.query(points, predicate="dwithin", distance=tolerance)
matched = time.perf_counter() - started
print(
    f"shapely {shapely.__version__}: {len(geoms)} fences built in {built:.3f} s; "
    f"{len(points)} points loaded+projected in {loaded:.3f} s; "
    f"matched in {matched:.3f} s = {len(points) / matched / 1e6:.2f} M points/s "
    f"({len(np.unique(pairs[0]))} points with a match)"
)
