// Converts the world-atlas countries-50m TopoJSON (Natural Earth admin-0 countries, 1:50m) into the
// GeoJSON FeatureCollection geopromo reads. Run through build-world-countries.sh.
import { readFileSync, writeFileSync } from "node:fs";
import { feature } from "topojson-client";

const [input, output] = process.argv.slice(2);
const topology = JSON.parse(readFileSync(input, "utf8"));
const countries = feature(topology, topology.objects.countries);
const round = (c) => (typeof c[0] === "number" ? c.map((v) => Math.round(v * 1e6) / 1e6) : c.map(round));
const seen = new Map();
const features = countries.features
  .filter((f) => f.geometry)
  .map((f) => {
    // A few Natural Earth units share no ISO code (id undefined): name them by their name instead.
    let id = f.id ?? f.properties.name;
    const n = (seen.get(id) ?? 0) + 1;
    seen.set(id, n);
    if (n > 1) id = `${id}-${n}`;
    return {
      type: "Feature",
      id,
      properties: { name: f.properties.name },
      geometry: { type: f.geometry.type, coordinates: round(f.geometry.coordinates) },
    };
  });
writeFileSync(output, JSON.stringify({ type: "FeatureCollection", features }) + "\n");
console.log(`wrote ${features.length} countries to ${output}`);
