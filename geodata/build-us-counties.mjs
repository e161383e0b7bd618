// Converts the us-atlas counties-10m TopoJSON (US Census Bureau cartographic boundaries, 1:10m)
// into the GeoJSON FeatureCollection geopromo reads. Run through build-us-counties.sh.
import { readFileSync, writeFileSync } from "node:fs";
import { feature } from "topojson-client";

const [input, output] = process.argv.slice(2);
const topology = JSON.parse(readFileSync(input, "utf8"));
const states = new Map(
  topology.objects.states.geometries.map((g) => [g.id, g.properties.name]),
);
const counties = feature(topology, topology.objects.counties);
const round = (c) => (typeof c[0] === "number" ? c.map((v) => Math.round(v * 1e6) / 1e6) : c.map(round));
const features = counties.features.map((f) => ({
  type: "Feature",
  id: f.id,
  properties: { name: f.properties.name, state: states.get(f.id.slice(0, 2)) ?? null },
  geometry: { type: f.geometry.type, coordinates: round(f.geometry.coordinates) },
}));
writeFileSync(output, JSON.stringify({ type: "FeatureCollection", features }) + "\n");
console.log(`wrote ${features.length} counties to ${output}`);
