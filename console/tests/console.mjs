// Drives the ops console in Debian's Chromium (headless) with playwright-core, the way an ops person
// uses it. Started by tests/it/console.rs against a real `geopromo serve`; prints one `RESULT {json}` line
// per step and saves a screenshot of each step in $ARTIFACTS. Exits non-zero, saying why, when a step
// does not show what it should.
//
//   MODE=flow  login → invalid upload (problem listed and placed) → fixed upload (fence drawn) →
//              probe 800 m outside a 1 km fence → promotion created in the console → location posted
//              through the API → enter event shown live → logout revokes the session
//   MODE=perf  the page with every fence of the server (US counties): first render, pan and zoom frames
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const base = env("GEOPROMO_URL");
const artifacts = env("ARTIFACTS");
const mode = env("MODE", "flow");
mkdirSync(artifacts, { recursive: true });

function result(step, data) {
  console.log(`RESULT ${JSON.stringify({ step, ...data })}`);
}

function expect(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // WebGL on a machine without a GPU: SwiftShader, which Chromium now only uses when asked.
  args: ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const browserErrors = [];
page.on("pageerror", (error) => browserErrors.push(error.message));
page.on("response", (response) => {
  if (response.status() >= 400 && !response.url().includes("/v1/")) browserErrors.push(`${response.status()} ${response.url()}`);
});
page.on("console", (message) => {
  if (message.type() === "error") browserErrors.push(message.text());
});
const shot = (name) => page.screenshot({ path: join(artifacts, `${name}.png`) });

async function login(user, password) {
  await page.goto(`${base}/console/`);
  await page.waitForSelector("#login[open]");
  await page.fill("#login-form input[name=username]", user);
  await page.fill("#login-form input[name=password]", password);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("body[data-fences-drawn]", { timeout: 60000 });
}

// A point `metres` east of (lon, lat), on the local metric (WGS84 at that latitude).
function east(lon, lat, metres) {
  const phi = (lat * Math.PI) / 180;
  const e2 = 0.00669437999014;
  const w = 1 - e2 * Math.sin(phi) ** 2;
  const mPerDegLon = ((6378137 / Math.sqrt(w)) * Math.cos(phi) * Math.PI) / 180;
  return lon + metres / mPerDegLon;
}

async function clickMapAt(lon, lat) {
  const box = await page.locator("#map").boundingBox();
  const point = await page.evaluate(([lon, lat]) => window.geopromo.map.project([lon, lat]), [lon, lat]);
  await page.mouse.click(box.x + point.x, box.y + point.y);
}

async function waitIdle() {
  await page.evaluate(() => new Promise((resolve) => {
    const map = window.geopromo.map;
    if (map.loaded() && !map.isMoving()) resolve(); else map.once("idle", resolve);
  }));
}

async function flow() {
  const ops = [env("OPS_USER"), env("OPS_PASSWORD")];
  const mobile = [env("MOBILE_USER"), env("MOBILE_PASSWORD")];
  const invalidFile = env("INVALID_FILE");
  const fixedFile = env("FIXED_FILE");
  // The fixed file's fence: a square whose east edge is at EDGE_LON, centred on CENTER_LAT, 1 km tolerance.
  const fenceId = env("FENCE_ID");
  const edgeLon = Number(env("EDGE_LON"));
  const centerLat = Number(env("CENTER_LAT"));
  const centerLon = Number(env("CENTER_LON"));

  await page.goto(`${base}/console/`);
  await page.waitForSelector("#login[open]");
  await shot("01-login");
  await login(...ops);
  expect(await page.locator("#who").textContent() === ops[0], "the signed-in user is shown");
  await shot("02-signed-in");
  result("login", { fences: Number(await page.getAttribute("body", "data-fences-drawn")) });

  // An upload with one invalid feature: the problem is listed by feature and placed on the map.
  await page.click("#tabs button[data-tab=upload]");
  await page.setInputFiles("#file-input", invalidFile);
  await page.waitForSelector("#problem-list li.problem");
  const problems = await page.$$eval("#problem-list li", (items) => items.map((li) => ({ code: li.dataset.code, text: li.textContent })));
  await waitIdle();
  const placed = await page.evaluate(() => window.geopromo.map.queryRenderedFeatures({ layers: ["problem-points"] }).map((f) => f.geometry.coordinates));
  const summary = await page.locator("#upload-summary").textContent();
  await shot("03-invalid-upload");
  expect(problems.length === 1 && problems[0].code === "self_intersection", `one self-intersection listed, got ${JSON.stringify(problems)}`);
  expect(placed.length === 1, `the problem is drawn on the map (${placed.length} markers)`);
  result("invalid-upload", { problems, placed, summary });
  await page.click("#upload-cancel");

  // The fixed file: no problem; stored on confirmation and drawn with its band.
  await page.setInputFiles("#file-input", fixedFile);
  await page.waitForFunction(() => window.geopromo.upload?.report?.invalid === 0);
  await shot("04-fixed-preview");
  await page.click("#upload-confirm");
  await page.waitForSelector("#upload-message.ok");
  await page.waitForFunction((id) => window.geopromo.fences.features.some((f) => f.id === id), fenceId);
  await page.click("#tabs button[data-tab=fences]");
  await page.fill("#fence-search", fenceId);
  await page.click(`#fence-list li[data-id="${fenceId}"]`);
  await waitIdle();
  const drawn = await page.evaluate((id) => window.geopromo.map.queryRenderedFeatures({ layers: ["fence-line"] }).filter((f) => f.properties.id === id).length, fenceId);
  const band = await page.evaluate((id) => window.geopromo.map.queryRenderedFeatures({ layers: ["fence-band"] }).filter((f) => f.properties.id === id).length, fenceId);
  await shot("05-fence-stored");
  expect(drawn > 0 && band > 0, `the stored fence and its band are drawn (outline ${drawn}, band ${band})`);
  result("stored", { drawn, band, message: await page.locator("#upload-message").textContent() });

  // Probe 800 m outside the 1 km-tolerance fence.
  const probeLon = east(edgeLon, centerLat, 800);
  await page.evaluate(([lon, lat]) => window.geopromo.map.jumpTo({ center: [lon, lat], zoom: 13.5 }), [edgeLon, centerLat]);
  await waitIdle();
  await clickMapAt(probeLon, centerLat);
  await page.waitForSelector(`#probe-result .probe-match[data-fence="${fenceId}"]`);
  const distance = Number(await page.getAttribute(`#probe-result .probe-match[data-fence="${fenceId}"]`, "data-distance"));
  const probeText = await page.locator("#probe-result").textContent();
  await waitIdle();
  const nearestDrawn = await page.evaluate(() => window.geopromo.map.queryRenderedFeatures({ layers: ["probe-lines"] }).length);
  await shot("06-probe");
  expect(Math.abs(distance - 800) < 3, `the probe reports ~800 m, got ${distance}`);
  expect(nearestDrawn > 0, "the line to the nearest boundary point is drawn");
  result("probe", { distance, text: probeText, nearestDrawn });

  // A promotion on the new fence, made in the console.
  await page.click("#tabs button[data-tab=promotions]");
  await page.fill("#promotion-form input[name=id]", "console-coffee");
  await page.fill("#promotion-form input[name=name]", "Console coffee");
  await page.fill("#promotion-form input[name=fences]", fenceId);
  await page.click("#promotion-form button[type=submit]");
  await page.waitForSelector('#promotion-list li[data-id="console-coffee"]');
  await shot("07-promotion");

  // A location posted through the API appears live as an enter event.
  await page.click("#tabs button[data-tab=live]");
  await page.waitForFunction(() => window.geopromo.live.connected);
  const loginResponse = await fetch(`${base}/v1/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: mobile[0], password: mobile[1], client: "mobile" }),
  });
  expect(loginResponse.ok, `the mobile user signs in (${loginResponse.status})`);
  const mobileToken = (await loginResponse.json()).access_token;
  const posted = Date.now();
  let enter = null;
  // The processor picks up the new promotion within the catalog poll; until then a point matches nothing.
  for (let attempt = 0; attempt < 60 && !enter; attempt += 1) {
    const response = await fetch(`${base}/v1/locations`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${mobileToken}` },
      body: JSON.stringify({ lat: centerLat, lon: centerLon, accuracy_m: 5 }),
    });
    expect(response.status === 202, `the location is accepted (${response.status})`);
    enter = await page.waitForSelector(`#live-events li[data-user="${mobile[0]}"][data-kind=enter][data-promotion="console-coffee"]`, { timeout: 1000 }).catch(() => null);
  }
  expect(enter, "the enter event appears in the live view");
  const seenAfterMs = Date.now() - posted;
  await page.waitForSelector(`#activity-fences tr[data-id="${fenceId}"]`);
  await page.evaluate(([lon, lat]) => window.geopromo.map.jumpTo({ center: [lon, lat], zoom: 12 }), [centerLon, centerLat]);
  await waitIdle();
  const livePoints = await page.evaluate(() => window.geopromo.map.queryRenderedFeatures({ layers: ["live-points"] }).length);
  await shot("08-live-enter");
  expect(livePoints > 0, "the enter event is drawn on the map");
  result("live", { event: await enter.textContent(), seenAfterMs, livePoints });

  // Edit the fence's tolerance; deleting it is refused while the promotion targets it, and the dialog
  // named that promotion first.
  await page.click("#tabs button[data-tab=fences]");
  await page.fill("#fence-search", fenceId);
  await page.click(`#fence-list li[data-id="${fenceId}"]`);
  await page.fill("#fence-edit input[name=tolerance_m]", "1500");
  await page.click("#fence-edit button[type=submit]");
  await page.waitForSelector("#fence-message.ok");
  await page.waitForFunction((id) => window.geopromo.fences.features.find((f) => f.id === id)?.properties.tolerance_m === 1500, fenceId);
  await page.click("#fence-delete");
  const warning = await page.locator("#confirm-text").textContent();
  await page.click("#confirm-ok");
  await page.waitForFunction(() => document.querySelector("#fence-message").textContent.length > 0);
  const refusal = await page.locator("#fence-message").textContent();
  await shot("09-edit-and-refused-delete");
  expect(warning.includes("console-coffee"), `the delete dialog names the promotion: ${warning}`);
  expect(refusal.length > 0 && (await page.evaluate((id) => window.geopromo.fences.features.some((f) => f.id === id), fenceId)), `the fence stays: ${refusal}`);
  result("edit", { warning, refusal });

  // Deactivate the promotion.
  await page.click("#tabs button[data-tab=promotions]");
  await page.click('#promotion-list li[data-id="console-coffee"] button');
  await page.waitForFunction(() => window.geopromo.promotions.some((p) => p.id === "console-coffee" && !p.active));
  await shot("10-deactivated");
  result("deactivate", { active: false });

  // Logout revokes the session: the token the page held stops working.
  const token = await page.evaluate(() => window.geopromo.session.access_token);
  await page.click("#logout");
  await page.waitForSelector("#login[open]");
  let status = 200;
  for (let attempt = 0; attempt < 30 && status !== 401; attempt += 1) {
    status = (await fetch(`${base}/v1/fences`, { headers: { Authorization: `Bearer ${token}` } })).status;
    if (status !== 401) await new Promise((r) => setTimeout(r, 200));
  }
  await shot("11-logged-out");
  expect(status === 401, `the old token is refused after logout (${status})`);
  result("logout", { status });
}

async function perf() {
  const ops = [env("OPS_USER"), env("OPS_PASSWORD")];
  const navigation = Date.now();
  await login(...ops);
  const firstRender = Date.now() - navigation;
  const timings = await page.evaluate(() => window.geopromo.timings);
  const fences = Number(await page.getAttribute("body", "data-fences-drawn"));
  await page.evaluate(() => window.geopromo.map.jumpTo({ center: [-96, 38], zoom: 4.5 }));
  await waitIdle();
  await shot("20-counties");
  // Frames during a scripted zoom in, pan and zoom out (each 2 s): the frame time distribution, with the
  // fence layers shown and, for comparison, hidden (the base map alone: what software WebGL costs here).
  const animate = (hideFences) => page.evaluate(async (hideFences) => {
    const map = window.geopromo.map;
    for (const id of ["fence-band", "fence-fill", "fence-line"]) map.setLayoutProperty(id, "visibility", hideFences ? "none" : "visible");
    const gaps = [];
    let last = performance.now();
    let running = true;
    const tick = (now) => {
      gaps.push(now - last);
      last = now;
      if (running) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    const move = (options) => new Promise((resolve) => { map.once("moveend", resolve); map.easeTo({ ...options, duration: 2000 }); });
    await move({ center: [-87.6, 41.8], zoom: 8 });
    await move({ center: [-84.4, 33.7], zoom: 8 });
    await move({ center: [-96, 38], zoom: 4.5 });
    running = false;
    for (const id of ["fence-band", "fence-fill", "fence-line"]) map.setLayoutProperty(id, "visibility", "visible");
    gaps.sort((a, b) => a - b);
    const at = (q) => gaps[Math.min(gaps.length - 1, Math.floor(q * gaps.length))];
    return { frames: gaps.length, fps: gaps.length / 6, median_ms: at(0.5), p95_ms: at(0.95), max_ms: gaps[gaps.length - 1] };
  }, hideFences);
  const frames = await animate(false);
  const baseOnly = await animate(true);
  await waitIdle();
  await shot("21-counties-after-pan");
  const payloadBytes = await page.evaluate(async () => {
    const response = await fetch("/v1/map/fences", { headers: { Authorization: `Bearer ${window.geopromo.session.access_token}` } });
    return (await response.text()).length;
  });
  expect(fences > 3000, `every county is drawn (${fences})`);
  result("perf", { fences, navigationToDrawnMs: firstRender, timings, frames, baseOnly, payloadBytes });
}

try {
  if (mode === "perf") await perf(); else await flow();
  // 4xx answers from the API are part of the flow (the old token after logout); resource loads are not.
  const real = browserErrors.filter((e) => !/the server responded with a status of 4\d\d/.test(e) || /console\//.test(e));
  writeFileSync(join(artifacts, `${mode}-browser-errors.txt`), real.join("\n"));
  expect(real.length === 0, `no errors in the page: ${real.join(" | ")}`);
} catch (error) {
  await shot(`failure-${mode}`).catch(() => {});
  console.error(error.stack || String(error));
  console.error(`browser errors: ${browserErrors.join(" | ")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
