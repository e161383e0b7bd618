"""Uniform random points over the continental US box (24.4..49.4 N, 125.0..66.9 W) as CSV id,lat,lon.

usage: python3 points.py COUNT OUT.csv [SEED]
"""
import random
import sys

count, out = int(sys.argv[1]), sys.argv[2]
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
with open(out, "w") as f:
    f.write("id,lat,lon\n")
    for i in range(count):
        f.write(f"p{i},{rng.uniform(24.4, 49.4):.6f},{rng.uniform(-125.0, -66.9):.6f}\n")
