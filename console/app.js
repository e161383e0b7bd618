// geopromo ops console: one page over the /v1 API, with the same login and tokens as any client.
// Tokens live in memory only (a reload asks to sign in again) and are refreshed with the API's rotation.
import * as maplibregl from "./vendor/maplibre-gl.mjs";

const started = performance.now();
const $ = (selector) => document.querySelector(selector);
// Not `form.name`/`form.id`: those are the form's own attributes, not its fields.
const field = (form, name) => form.elements.namedItem(name);
const EARTH_CIRCUMFERENCE_M = 40075016.686;
// Exposed for the browser test and for anyone debugging the page from the devtools console.
const state = (window.geopromo = {
  session: null,
  fences: { type: "FeatureCollection", features: [] },
  promotions: [],
  selected: null,
  upload: null,
  timings: {},
  live: { events: 0, connected: false },
});

// ---------------------------------------------------------------- API and session

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, { method = "GET", body, headers = {}, raw = false } = {}, retried = false) {
  const init = { method, headers: { ...headers } };
  if (state.session) init.headers.Authorization = `Bearer ${state.session.access_token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401 && state.session && !retried && (await refresh())) {
    return api(path, { method, body, headers, raw }, true);
  }
  if (raw) return response;
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not JSON */ }
    if (response.status === 401) signedOut("Your session ended; sign in again.");
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  return response.json();
}

let refreshTimer = null;
let refreshing = null;

function adoptTokens(tokens, user) {
  state.session = { ...tokens, user: user ?? state.session?.user };
  clearTimeout(refreshTimer);
  // Refresh at 80% of the access token's life: requests never carry an expired token.
  refreshTimer = setTimeout(refresh, Math.max(5, tokens.expires_in * 0.8) * 1000);
}

function refresh() {
  if (!state.session) return Promise.resolve(false);
  refreshing ??= fetch("/v1/auth/refresh", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: state.session.refresh_token }),
  })
    .then(async (response) => {
      if (!response.ok) return false;
      adoptTokens(await response.json());
      return true;
    })
    .catch(() => false)
    .finally(() => { refreshing = null; });
  return refreshing;
}

async function login(event) {
  event.preventDefault();
  state.timings.signInAt = performance.now();
  const form = new FormData(event.target);
  const message = $("#login-message");
  message.textContent = "";
  try {
    const response = await fetch("/v1/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        username: form.get("username"),
        password: form.get("password"),
        client: "ops",
        device_label: "ops console",
      }),
    });
    const body = await response.json();
    if (!response.ok) throw new ApiError(response.status, body);
    if (!body.roles.includes("ops")) {
      message.textContent = "This account has no ops role.";
      return;
    }
    adoptTokens(body, form.get("username"));
    $("#login").close();
    $("#who").textContent = form.get("username");
    $("#logout").hidden = false;
    await loadEverything();
  } catch (error) {
    message.textContent = error.message;
  }
}

async function logout() {
  try { await api("/v1/auth/logout", { method: "POST" }); } catch { /* the session is gone either way */ }
  signedOut("Signed out.");
}

function signedOut(text) {
  state.session = null;
  clearTimeout(refreshTimer);
  stopLive();
  $("#who").textContent = "";
  $("#logout").hidden = true;
  $("#login-message").textContent = text ?? "";
  if (!$("#login").open) $("#login").showModal();
}

// ---------------------------------------------------------------- map

const consoleConfig = await fetch("./config.json").then((r) => r.json()).catch(() => ({}));

function baseStyle() {
  if (consoleConfig.style_url) return consoleConfig.style_url;
  const sources = {
    countries: { type: "geojson", data: "./vendor/countries-110m.geojson", attribution: "Natural Earth" },
  };
  const layers = [{ id: "water", type: "background", paint: { "background-color": "#cfe0ee" } }];
  if (consoleConfig.raster_tiles) {
    sources.tiles = { type: "raster", tiles: [consoleConfig.raster_tiles], tileSize: 256, attribution: consoleConfig.attribution || "" };
    layers.push({ id: "tiles", type: "raster", source: "tiles" });
  } else {
    layers.push({ id: "land", type: "fill", source: "countries", paint: { "fill-color": "#f4f1ea" } });
  }
  layers.push({ id: "borders", type: "line", source: "countries", paint: { "line-color": "#a49e93", "line-width": 0.6 } });
  return { version: 8, sources, layers };
}

const map = new maplibregl.Map({
  container: "map",
  style: baseStyle(),
  center: [0, 20],
  zoom: 1.3,
  attributionControl: { compact: true },
});
state.map = map;
map.addControl(new maplibregl.NavigationControl(), "top-right");
map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-right");
const mapReady = new Promise((resolve) => map.on("load", resolve));

// A tolerance band is a line `tolerance` metres wide, offset by half that to the outside of the outline
// (the server winds rings so that the outside is on the right on the ground; the screen's y axis points
// down, which mirrors it, hence the negative offset), with round joins: the outer half of the
// boundary's buffer. Pixels per metre at zoom z and latitude φ: 512·2^z / (C·cos φ). It is opaque: a
// translucent wide line shows its own overlaps at corners.
function bandWidthAtZoom0(properties) {
  const cos = Math.cos((properties.band_lat * Math.PI) / 180);
  return (properties.tolerance_m * 512) / (EARTH_CIRCUMFERENCE_M * Math.max(cos, 0.01));
}
const scaled = (factor) => ["interpolate", ["exponential", 2], ["zoom"],
  0, ["*", ["get", "band_w0"], factor], 24, ["*", ["get", "band_w0"], factor * 2 ** 24]];
const bandWidth = scaled(1);
const bandOffset = scaled(-0.5);

function withBands(collection) {
  for (const feature of collection.features) feature.properties.band_w0 = bandWidthAtZoom0(feature.properties);
  return collection;
}

const empty = () => ({ type: "FeatureCollection", features: [] });

async function setUpLayers() {
  await mapReady;
  // Simplified per zoom on the worker (geojson-vt): 1 px tolerance, small tile buffers, so 3,000+ county
  // outlines stay cheap to pan and zoom.
  map.addSource("fences", { type: "geojson", data: empty(), promoteId: "id", tolerance: 1, buffer: 32 });
  // Bands are wide lines drawn from the tiles their outline lies in: their own source, with tile-wide
  // buffers so that a band up to a tile wide (1 km up to zoom ~15) is not cut at tile edges; from zoom 7,
  // below which a band of a few kilometres is a pixel or two (and the wide buffers would cost the most).
  map.addSource("fence-bands", { type: "geojson", data: empty(), tolerance: 1, buffer: 512 });
  map.addSource("preview", { type: "geojson", data: empty(), buffer: 512 });
  map.addSource("problems", { type: "geojson", data: empty() });
  map.addSource("probe", { type: "geojson", data: empty() });
  map.addSource("live", { type: "geojson", data: empty() });
  map.addLayer({ id: "fence-band", type: "line", source: "fence-bands", minzoom: 7, layout: { "line-join": "round", "line-cap": "round" },
    paint: { "line-color": "#f6d9a8", "line-width": bandWidth, "line-offset": bandOffset } });
  map.addLayer({ id: "fence-fill", type: "fill", source: "fences",
    paint: { "fill-color": ["case", ["boolean", ["feature-state", "selected"], false], "#1d6fd1", "#3d7fb8"],
      "fill-opacity": ["case", ["boolean", ["feature-state", "selected"], false], 0.35, 0.15] } });
  map.addLayer({ id: "fence-line", type: "line", source: "fences",
    paint: { "line-color": "#1d4f80", "line-width": ["case", ["boolean", ["feature-state", "selected"], false], 2.5, 0.8] } });
  map.addLayer({ id: "preview-band", type: "line", source: "preview", layout: { "line-join": "round", "line-cap": "round" },
    paint: { "line-color": "#cde8d3", "line-width": bandWidth, "line-offset": bandOffset } });
  map.addLayer({ id: "preview-line", type: "line", source: "preview",
    paint: { "line-color": "#1b7f3b", "line-width": 2, "line-dasharray": [2, 1] } });
  map.addLayer({ id: "problem-shapes", type: "line", source: "problems", filter: ["==", ["geometry-type"], "LineString"],
    paint: { "line-color": "#b3261e", "line-width": 1.5, "line-dasharray": [2, 1] } });
  map.addLayer({ id: "problem-points", type: "circle", source: "problems", filter: ["==", ["geometry-type"], "Point"],
    paint: { "circle-radius": 7, "circle-color": "#b3261e", "circle-stroke-color": "#fff", "circle-stroke-width": 2 } });
  map.addLayer({ id: "probe-lines", type: "line", source: "probe", filter: ["==", ["geometry-type"], "LineString"],
    paint: { "line-color": "#6a1b9a", "line-width": 2, "line-dasharray": [1, 1] } });
  map.addLayer({ id: "probe-points", type: "circle", source: "probe", filter: ["==", ["geometry-type"], "Point"],
    paint: { "circle-radius": ["case", ["==", ["get", "kind"], "probe"], 6, 4],
      "circle-color": ["case", ["==", ["get", "kind"], "probe"], "#6a1b9a", "#fff"],
      "circle-stroke-color": "#6a1b9a", "circle-stroke-width": 2 } });
  map.addLayer({ id: "live-points", type: "circle", source: "live",
    paint: { "circle-radius": 6, "circle-color": ["case", ["==", ["get", "kind"], "enter"], "#1b7f3b", "#8a5a00"],
      "circle-opacity": ["get", "opacity"], "circle-stroke-color": "#fff", "circle-stroke-width": 1 } });
  map.on("click", probe);
  map.on("mouseenter", "fence-fill", () => { map.getCanvas().style.cursor = "crosshair"; });
  map.on("mouseleave", "fence-fill", () => { map.getCanvas().style.cursor = ""; });
}

function boundsOf(geometry) {
  const bounds = new maplibregl.LngLatBounds();
  const visit = (c) => (typeof c[0] === "number" ? bounds.extend(c) : c.forEach(visit));
  visit(geometry.coordinates);
  return bounds;
}

// ---------------------------------------------------------------- fences

async function loadFences() {
  const t0 = performance.now();
  const collection = await api("/v1/map/fences");
  state.timings.fencesFetchMs = performance.now() - t0;
  state.fences = withBands(collection);
  await mapReady;
  map.getSource("fences").setData(state.fences);
  map.getSource("fence-bands").setData(state.fences);
  $("#fence-count").textContent = state.fences.features.length;
  renderFenceList();
  map.once("idle", () => {
    state.timings.fencesDrawnMs = performance.now() - t0;
    state.timings.firstRenderMs ??= performance.now() - started;
    state.timings.signInToDrawnMs ??= performance.now() - state.timings.signInAt;
    document.body.dataset.fencesDrawn = String(state.fences.features.length);
  });
}

function renderFenceList() {
  const query = $("#fence-search").value.trim().toLowerCase();
  const list = $("#fence-list");
  const matching = state.fences.features.filter(
    (f) => !query || f.properties.id.toLowerCase().includes(query) || f.properties.name.toLowerCase().includes(query),
  );
  list.replaceChildren(
    ...matching.slice(0, 300).map((feature) => {
      const item = document.createElement("li");
      item.dataset.id = feature.properties.id;
      item.classList.toggle("selected", feature.properties.id === state.selected);
      item.innerHTML = `<div></div><div class="meta"></div>`;
      item.firstChild.textContent = feature.properties.name || feature.properties.id;
      item.lastChild.textContent = `${feature.properties.id} · ${feature.properties.tolerance_m} m · ${feature.properties.vertices} vertices`;
      item.addEventListener("click", () => selectFence(feature.properties.id, true));
      return item;
    }),
  );
  if (matching.length > 300) {
    const more = document.createElement("li");
    more.className = "muted";
    more.textContent = `… ${matching.length - 300} more: refine the search`;
    list.append(more);
  }
}

function selectFence(id, fly) {
  if (state.selected) map.setFeatureState({ source: "fences", id: state.selected }, { selected: false });
  state.selected = id;
  const feature = state.fences.features.find((f) => f.properties.id === id);
  if (!feature) {
    $("#fence-details").hidden = true;
    return;
  }
  map.setFeatureState({ source: "fences", id }, { selected: true });
  const p = feature.properties;
  $("#fence-details").hidden = false;
  $("#fence-title").textContent = p.name || p.id;
  $("#fence-id").textContent = p.id;
  $("#fence-vertices").textContent = p.radius_m ? `circle, radius ${p.radius_m} m` : p.vertices;
  $("#fence-tolerance").textContent = `${p.tolerance_m} m`;
  $("#fence-promotions").textContent = p.promotions.length ? p.promotions.join(", ") : "none";
  const form = $("#fence-edit");
  field(form, "name").value = p.name;
  field(form, "tolerance_m").value = p.tolerance_m;
  $("#fence-message").textContent = "";
  for (const item of document.querySelectorAll("#fence-list li")) item.classList.toggle("selected", item.dataset.id === id);
  if (fly) map.fitBounds(boundsOf(feature.geometry), { padding: 80, maxZoom: 14, duration: 600 });
}

async function saveFence(event) {
  event.preventDefault();
  const id = state.selected;
  const message = $("#fence-message");
  message.className = "message";
  try {
    const feature = await api(`/v1/fences/${encodeURIComponent(id)}`);
    feature.properties.name = field(event.target, "name").value;
    feature.properties.tolerance_m = Number(field(event.target, "tolerance_m").value);
    await api(`/v1/fences/${encodeURIComponent(id)}`, { method: "PUT", body: feature });
    message.className = "message ok";
    message.textContent = "Saved.";
    await loadFences();
    selectFence(id, false);
  } catch (error) {
    message.textContent = problemText(error);
  }
}

async function deleteFence() {
  const id = state.selected;
  const feature = state.fences.features.find((f) => f.properties.id === id);
  const affected = feature?.properties.promotions ?? [];
  $("#confirm-text").textContent = affected.length
    ? `Delete fence ${id}? These promotions target it: ${affected.join(", ")}. The API refuses until they no longer do.`
    : `Delete fence ${id}? No promotion targets it.`;
  const dialog = $("#confirm");
  dialog.showModal();
  const answer = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (answer !== "ok") return;
  const message = $("#fence-message");
  try {
    await api(`/v1/fences/${encodeURIComponent(id)}`, { method: "DELETE" });
    state.selected = null;
    $("#fence-details").hidden = true;
    await loadFences();
  } catch (error) {
    message.className = "message";
    message.textContent = problemText(error);
  }
}

function problemText(error) {
  const extra = error.problem?.errors?.length ? `: ${error.problem.errors.join("; ")}` : "";
  return `${error.message}${extra}`;
}

// ---------------------------------------------------------------- upload

async function checkUpload(file) {
  const message = $("#upload-message");
  message.className = "message";
  message.textContent = "";
  let text;
  try {
    text = await file.text();
    JSON.parse(text);
  } catch (error) {
    message.textContent = `${file.name} is not JSON: ${error.message}`;
    return;
  }
  try {
    const report = await api("/v1/fences?dry_run=true", { method: "POST", body: text });
    state.upload = { name: file.name, text, report };
    showReport();
  } catch (error) {
    message.textContent = problemText(error);
  }
}

function showReport() {
  const { report, name } = state.upload;
  $("#upload-report").hidden = false;
  $("#upload-summary").textContent =
    `${name}: ${report.features} features, ${report.valid} valid, ${report.invalid} invalid.`;
  const byFeature = new Map();
  for (const problem of report.problems) {
    if (!byFeature.has(problem.feature)) byFeature.set(problem.feature, []);
    byFeature.get(problem.feature).push(problem);
  }
  $("#problem-list").replaceChildren(
    ...report.problems.map((problem) => {
      const item = document.createElement("li");
      item.className = "problem";
      item.dataset.code = problem.code;
      const label = problem.id ? `feature ${problem.feature} (${problem.id})` : `feature ${problem.feature}`;
      item.innerHTML = `<div></div><div class="meta"></div>`;
      item.firstChild.textContent = label;
      item.lastChild.textContent = problem.message + (problem.at ? "" : " (no position)");
      if (problem.at) item.addEventListener("click", () => map.flyTo({ center: problem.at, zoom: Math.max(map.getZoom(), 12) }));
      return item;
    }),
  );
  $("#repair-list").replaceChildren(
    ...report.repairs.map((repair) => Object.assign(document.createElement("li"), { textContent: repair })),
  );
  // The invalid features as they came, outlined in red, with a marker on each problem.
  const uploaded = JSON.parse(state.upload.text);
  const features = uploaded.type === "FeatureCollection" ? uploaded.features : [uploaded];
  const shapes = [...byFeature.keys()].flatMap((index) => {
    const geometry = features[index]?.geometry;
    const polygons = geometry?.type === "Polygon" ? [geometry.coordinates] : geometry?.type === "MultiPolygon" ? geometry.coordinates : [];
    return polygons.flat().filter((ring) => Array.isArray(ring) && ring.every((p) => Array.isArray(p) && p.length >= 2 && p.every(Number.isFinite)))
      .map((ring) => ({ type: "Feature", properties: {}, geometry: { type: "LineString", coordinates: ring } }));
  });
  map.getSource("problems").setData({
    type: "FeatureCollection",
    features: [...shapes, ...report.problems.filter((p) => p.at).map((p) => ({
      type: "Feature",
      properties: { code: p.code, message: p.message },
      geometry: { type: "Point", coordinates: p.at },
    }))],
  });
  map.getSource("preview").setData(withBands(report.preview));
  const confirm = $("#upload-confirm");
  confirm.disabled = report.valid === 0;
  confirm.textContent = report.invalid ? `Store the ${report.valid} valid fences` : `Store ${report.valid} fences`;
  const everything = new maplibregl.LngLatBounds();
  for (const f of report.preview.features) everything.extend(boundsOf(f.geometry));
  for (const p of report.problems) if (p.at) everything.extend(p.at);
  for (const shape of shapes) everything.extend(boundsOf(shape.geometry));
  if (!everything.isEmpty()) map.fitBounds(everything, { padding: 80, maxZoom: 13, duration: 600 });
}

async function confirmUpload() {
  const { text, report } = state.upload;
  const message = $("#upload-message");
  const invalid = new Set(report.problems.map((p) => p.feature));
  let document_ = JSON.parse(text);
  if (document_.type === "FeatureCollection" && invalid.size) {
    document_ = { ...document_, features: document_.features.filter((_, i) => !invalid.has(i)) };
  }
  try {
    const stored = await api("/v1/fences", { method: "POST", body: document_ });
    message.className = "message ok";
    message.textContent = `Stored ${stored.stored} fences (catalog version ${stored.catalog_version}).`;
    clearUpload();
    await loadFences();
  } catch (error) {
    message.className = "message";
    message.textContent = problemText(error);
  }
}

function clearUpload() {
  state.upload = null;
  $("#upload-report").hidden = true;
  map.getSource("problems").setData(empty());
  map.getSource("preview").setData(empty());
}

// ---------------------------------------------------------------- probe

let probePopup = null;

async function probe(event) {
  if (!state.session) return;
  const { lng, lat } = event.lngLat.wrap();
  const hit = map.queryRenderedFeatures(event.point, { layers: ["fence-fill"] })[0];
  if (hit) selectFence(hit.properties.id, false);
  let matches;
  try {
    matches = await api(`/v1/match?lat=${lat.toFixed(6)}&lon=${lng.toFixed(6)}&nearest=true`);
  } catch (error) {
    matches = [];
    $("#status").textContent = problemText(error);
  }
  const features = [{ type: "Feature", properties: { kind: "probe" }, geometry: { type: "Point", coordinates: [lng, lat] } }];
  for (const m of matches) {
    if (!m.nearest || m.inside) continue;
    features.push({ type: "Feature", properties: { kind: "nearest" }, geometry: { type: "Point", coordinates: m.nearest } });
    features.push({ type: "Feature", properties: {}, geometry: { type: "LineString", coordinates: [[lng, lat], m.nearest] } });
  }
  map.getSource("probe").setData({ type: "FeatureCollection", features });
  const body = document.createElement("div");
  body.id = "probe-result";
  body.dataset.matches = String(matches.length);
  const head = document.createElement("strong");
  head.textContent = `${lat.toFixed(5)}, ${lng.toFixed(5)}`;
  body.append(head);
  if (!matches.length) body.append(Object.assign(document.createElement("div"), { textContent: "No fence within tolerance." }));
  for (const m of matches) {
    const line = document.createElement("div");
    line.className = "probe-match";
    line.dataset.fence = m.fence_id;
    line.dataset.distance = String(m.distance_m);
    line.textContent = `${m.fence_name || m.fence_id}: ${m.inside ? "inside" : `${m.distance_m} m outside`}` +
      (m.promotions.length ? ` · promotions: ${m.promotions.join(", ")}` : " · no promotion now");
    body.append(line);
  }
  probePopup?.remove();
  probePopup = new maplibregl.Popup({ maxWidth: "320px" }).setLngLat([lng, lat]).setDOMContent(body).addTo(map);
}

// ---------------------------------------------------------------- promotions

async function loadPromotions() {
  state.promotions = await api("/v1/promotions");
  $("#promotion-list").replaceChildren(
    ...state.promotions.map((p) => {
      const item = document.createElement("li");
      item.dataset.id = p.id;
      item.innerHTML = `<div></div><div class="meta"></div>`;
      item.firstChild.textContent = `${p.name || p.id}${p.active ? "" : " (inactive)"}`;
      const window_ = `${p.valid_from ?? "always"} → ${p.valid_until ?? "no end"}`;
      item.lastChild.textContent = `${p.id} · fences ${p.fences.join(", ")} · ${window_}`;
      item.addEventListener("click", () => editPromotion(p));
      if (p.active) {
        const off = Object.assign(document.createElement("button"), { textContent: "Deactivate", type: "button" });
        off.addEventListener("click", async (e) => {
          e.stopPropagation();
          try {
            await api(`/v1/promotions/${encodeURIComponent(p.id)}/deactivate`, { method: "POST" });
            await loadPromotions();
          } catch (error) {
            $("#promotion-message").textContent = problemText(error);
          }
        });
        item.append(off);
      }
      return item;
    }),
  );
}

const toLocalInput = (rfc3339) => (rfc3339 ? new Date(rfc3339).toISOString().slice(0, 16) : "");
const fromLocalInput = (value) => (value ? new Date(`${value}:00Z`).toISOString().replace(".000Z", "Z") : undefined);

function editPromotion(p) {
  const form = $("#promotion-form");
  $("#promotion-form-title").textContent = p ? `Edit ${p.id}` : "New promotion";
  field(form, "id").value = p?.id ?? "";
  field(form, "id").readOnly = Boolean(p);
  field(form, "name").value = p?.name ?? "";
  field(form, "fences").value = p?.fences.join(", ") ?? (state.selected ?? "");
  field(form, "valid_from").value = toLocalInput(p?.valid_from);
  field(form, "valid_until").value = toLocalInput(p?.valid_until);
  field(form, "cooldown_s").value = p?.cooldown_s ?? "";
  field(form, "active").checked = p?.active ?? true;
  state.editingPromotion = p?.id ?? null;
}

async function savePromotion(event) {
  event.preventDefault();
  const form = event.target;
  const message = $("#promotion-message");
  message.className = "message";
  const spec = {
    id: field(form, "id").value.trim(),
    name: field(form, "name").value.trim() || undefined,
    fences: field(form, "fences").value.split(",").map((s) => s.trim()).filter(Boolean),
    valid_from: fromLocalInput(field(form, "valid_from").value),
    valid_until: fromLocalInput(field(form, "valid_until").value),
    active: field(form, "active").checked,
    cooldown_s: field(form, "cooldown_s").value === "" ? undefined : Number(field(form, "cooldown_s").value),
  };
  try {
    if (state.editingPromotion) {
      await api(`/v1/promotions/${encodeURIComponent(spec.id)}`, { method: "PUT", body: spec });
    } else {
      await api("/v1/promotions", { method: "POST", body: spec });
    }
    message.className = "message ok";
    message.textContent = "Saved.";
    await Promise.all([loadPromotions(), loadFences()]);
  } catch (error) {
    message.textContent = problemText(error);
  }
}

// ---------------------------------------------------------------- live events (SSE over fetch)

let liveAbort = null;
let lastEventId = null;
const liveFeatures = [];
const counts = { fences: new Map(), promotions: new Map() };

function startLive() {
  stopLive();
  liveAbort = new AbortController();
  readLive(liveAbort.signal);
  refreshActivity();
}

function stopLive() {
  liveAbort?.abort();
  liveAbort = null;
  state.live.connected = false;
}

// EventSource cannot send an Authorization header, and tokens do not belong in URLs (they end up in
// logs), so the stream is read with fetch and parsed here.
async function readLive(signal) {
  let wait = 500;
  while (!signal.aborted && state.session) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const response = await api("/v1/events/stream", { headers, raw: true });
      if (!response.ok) throw new Error(`stream answered ${response.status}`);
      state.live.connected = true;
      $("#live-state").textContent = "connected";
      $("#live-state").className = "ok";
      wait = 500;
      await parseEvents(response.body, signal);
    } catch (error) {
      if (signal.aborted) return;
      $("#live-state").textContent = `reconnecting (${error.message})`;
    }
    state.live.connected = false;
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 10000);
  }
}

async function parseEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel(), { once: true });
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { event: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") message.event = text;
        else if (field === "data") message.data += (message.data ? "\n" : "") + text;
        else if (field === "id") message.id = text;
      }
      if (message.id) lastEventId = message.id;
      onLiveMessage(message);
    }
  }
}

function onLiveMessage({ event, data }) {
  if (event === "enter" || event === "exit") {
    const record = JSON.parse(data);
    state.live.events += 1;
    bump(counts.fences, record.fence_id, event, record.user_id);
    bump(counts.promotions, record.promotion_id, event, record.user_id);
    renderActivity();
    liveFeatures.push({
      type: "Feature",
      properties: { kind: event, at: Date.now(), opacity: 1 },
      geometry: { type: "Point", coordinates: [record.lon, record.lat] },
    });
    if (liveFeatures.length > 2000) liveFeatures.shift();
    drawLive();
    const item = document.createElement("li");
    item.className = event;
    item.dataset.user = record.user_id;
    item.dataset.kind = event;
    item.dataset.promotion = record.promotion_id;
    item.textContent = `${new Date(record.emitted_at).toLocaleTimeString()} ${event} ${record.user_id} · ${record.fence_name || record.fence_id} · ${record.promotion_id}`;
    item.addEventListener("click", () => map.flyTo({ center: [record.lon, record.lat], zoom: Math.max(map.getZoom(), 12) }));
    const list = $("#live-events");
    list.prepend(item);
    while (list.children.length > 100) list.lastChild.remove();
  } else if (event === "gap" || event === "dropped" || event === "end") {
    const reason = JSON.parse(data);
    $("#live-state").textContent = `${event}: ${reason.reason ?? reason.detail}`;
  }
}

function bump(table, id, kind, user) {
  const row = table.get(id) ?? { id, enters: 0, exits: 0, users: new Set(), unique_users: 0 };
  if (kind === "enter") row.enters += 1; else row.exits += 1;
  row.users.add(user);
  row.unique_users = Math.max(row.unique_users, row.users.size);
  table.set(id, row);
}

function drawLive() {
  const now = Date.now();
  // Points fade over ten minutes.
  for (const f of liveFeatures) f.properties.opacity = Math.max(0.15, 1 - (now - f.properties.at) / 600000);
  map.getSource("live")?.setData({ type: "FeatureCollection", features: liveFeatures });
}

function renderActivity() {
  for (const [name, table] of [["fences", counts.fences], ["promotions", counts.promotions]]) {
    const rows = [...table.values()].sort((a, b) => b.enters + b.exits - (a.enters + a.exits)).slice(0, 20);
    $(`#activity-${name} tbody`).replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        tr.dataset.id = row.id;
        for (const value of [row.id, row.enters, row.exits, row.unique_users]) {
          tr.append(Object.assign(document.createElement("td"), { textContent: String(value) }));
        }
        return tr;
      }),
    );
  }
}

// Server counts are the truth (they cover the last hour across every instance's output); live events
// bump them between refreshes.
async function refreshActivity() {
  if (!state.session) return;
  try {
    const [fences, promotions] = await Promise.all([api("/v1/activity/fences"), api("/v1/activity/promotions")]);
    for (const [table, report] of [[counts.fences, fences], [counts.promotions, promotions]]) {
      table.clear();
      for (const item of report.items) table.set(item.id, { ...item, users: new Set() });
    }
    renderActivity();
  } catch { /* shown by the next attempt */ }
}
setInterval(refreshActivity, 30000);
setInterval(drawLive, 15000);

// ---------------------------------------------------------------- wiring

async function loadEverything() {
  await setUpLayersOnce();
  await Promise.all([loadFences(), loadPromotions()]);
  startLive();
}

let layersReady = null;
const setUpLayersOnce = () => (layersReady ??= setUpLayers());

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => {
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b === button);
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `tab-${button.dataset.tab}`;
  });
}
$("#login-form").addEventListener("submit", login);
$("#logout").addEventListener("click", logout);
$("#fence-search").addEventListener("input", renderFenceList);
$("#fence-edit").addEventListener("submit", saveFence);
$("#fence-delete").addEventListener("click", deleteFence);
$("#file-input").addEventListener("change", (e) => e.target.files[0] && checkUpload(e.target.files[0]));
const drop = $("#drop-zone");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) checkUpload(e.dataTransfer.files[0]);
});
$("#upload-confirm").addEventListener("click", confirmUpload);
$("#upload-cancel").addEventListener("click", clearUpload);
$("#promotion-form").addEventListener("submit", savePromotion);
$("#promotion-new").addEventListener("click", () => editPromotion(null));

setUpLayersOnce();
signedOut();
