// The console's offline base map: Natural Earth 1:110m country outlines (world-atlas) as GeoJSON,
// positions to 1e-3° (~100 m, finer than 1:110m draws). Run by vendor.sh.
import { readFileSync, writeFileSync } from "node:fs";
import { feature } from "topojson-client";

const [input, output] = process.argv.slice(2);
const topology = JSON.parse(readFileSync(input, "utf8"));
const countries = feature(topology, topology.objects.countries);
const round = (c) => (typeof c[0] === "number" ? c.map((v) => Math.round(v * 1e3) / 1e3) : c.map(round));
const features = countries.features
  .filter((f) => f.geometry)
  .map((f) => ({
    type: "Feature",
    properties: { name: f.properties.name },
    geometry: { type: f.geometry.type, coordinates: round(f.geometry.coordinates) },
  }));
writeFileSync(output, JSON.stringify({ type: "FeatureCollection", features }) + "\n");
