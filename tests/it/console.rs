//! The ops console in a real browser: `geopromo serve` as a user runs it, Debian's Chromium driven by
//! playwright-core (`console/tests/console.mjs`, installed by `.ci/test`). Screenshots of every step land
//! in `console/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::process::{geopromo, Running};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run the suite with .ci/test, which installs Debian's chromium"
    );
    assert!(
        repo().join("console/node_modules/playwright-core").exists(),
        "console/node_modules is missing: run the suite with .ci/test (npm ci in console/)"
    );
}

/// Runs the browser script in `mode`; returns its `RESULT` lines as JSON, keyed by step.
fn run_script(mode: &str, env: &[(&str, String)]) -> serde_json::Map<String, serde_json::Value> {
    let artifacts = repo().join("console/test-artifacts");
    let out = Command::new("node")
        .arg(repo().join("console/tests/console.mjs"))
        .env("MODE", mode)
        .env("ARTIFACTS", &artifacts)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console {mode} run failed (screenshots in {}):\n{stdout}\n{stderr}",
        artifacts.display()
    );
    let mut results = serde_json::Map::new();
    for line in stdout.lines() {
        if let Some(json) = line.strip_prefix("RESULT ") {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            eprintln!("console {mode}: {value}");
            results.insert(value["step"].as_str().unwrap().to_owned(), value);
        }
    }
    results
}

fn add_user(dir: &Path, env: &[(&str, String)], user: &str, role: &str, password: &str) {
    let out = geopromo(
        dir,
        &["user", "add", user, "--role", role, "--password-stdin"],
        &format!("{password}\n"),
        env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 0.02° square (≈ 2.2 km) in Semarang, far from the seeded cities, 1 km tolerance; and the same file
/// with one bow-tie feature.
const CENTER: (f64, f64) = (110.42, -6.98);

fn square(id: &str, lon: f64, lat: f64) -> String {
    let (w, e, s, n) = (lon - 0.01, lon + 0.01, lat - 0.01, lat + 0.01);
    format!(
        r#"{{"type":"Feature","id":"{id}","properties":{{"name":"Console square","tolerance_m":1000}},
        "geometry":{{"type":"Polygon","coordinates":[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]}}}}"#
    )
}

#[test]
fn ops_console_flow_in_chromium() {
    require_browser();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "GEOPROMO__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("console.sqlite").display()),
        ),
        ("GEOPROMO__DATABASE__POLL_INTERVAL_MS", "200".to_owned()),
    ];
    add_user(dir.path(), &env, "ops-ana", "ops", "ops password 1");
    add_user(dir.path(), &env, "rider-1", "mobile", "mobile password 1");
    let (lon, lat) = CENTER;
    let bowtie = format!(
        r#"{{"type":"Feature","id":"bowtie","properties":{{"name":"Crossed"}},
        "geometry":{{"type":"Polygon","coordinates":[[[{a},{b}],[{c},{d}],[{c},{b}],[{a},{d}],[{a},{b}]]]}}}}"#,
        a = lon + 0.1,
        b = lat,
        c = lon + 0.12,
        d = lat + 0.02
    );
    let collection = |name: &str, features: &[&str]| {
        let path = dir.path().join(name);
        let body = format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        );
        std::fs::write(&path, body).unwrap();
        path
    };
    let square = square("console-square", lon, lat);
    let invalid = collection("invalid.geojson", &[&square, &bowtie]);
    let fixed = collection("fixed.geojson", &[&square]);

    let serve = Running::start(dir.path(), &["serve"], &env);
    let address = serve.api_address();
    let results = run_script(
        "flow",
        &[
            ("GEOPROMO_URL", format!("http://{address}")),
            ("OPS_USER", "ops-ana".into()),
            ("OPS_PASSWORD", "ops password 1".into()),
            ("MOBILE_USER", "rider-1".into()),
            ("MOBILE_PASSWORD", "mobile password 1".into()),
            ("INVALID_FILE", invalid.display().to_string()),
            ("FIXED_FILE", fixed.display().to_string()),
            ("FENCE_ID", "console-square".into()),
            ("EDGE_LON", (lon + 0.01).to_string()),
            ("CENTER_LAT", lat.to_string()),
            ("CENTER_LON", lon.to_string()),
        ],
    );
    for step in [
        "login",
        "invalid-upload",
        "stored",
        "probe",
        "live",
        "edit",
        "deactivate",
        "logout",
    ] {
        assert!(results.contains_key(step), "step {step} did not report");
    }
    let distance = results["probe"]["distance"].as_f64().unwrap();
    assert!((distance - 800.0).abs() < 3.0, "{distance}");
    assert_eq!(results["logout"]["status"], 401);
    let live = results["live"]["event"].as_str().unwrap();
    assert!(
        live.contains("enter rider-1") && live.contains("console-coffee"),
        "{live}"
    );
}

#[test]
fn ops_console_draws_three_thousand_counties() {
    require_browser();
    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "GEOPROMO__DATABASE__URL",
        format!("sqlite://{}", dir.path().join("counties.sqlite").display()),
    )];
    add_user(dir.path(), &env, "ops-ana", "ops", "ops password 1");
    let counties = repo().join("geodata/us-counties.geojson");
    let import = geopromo(
        dir.path(),
        &[
            "fences",
            "import",
            counties.to_str().unwrap(),
            "--skip-invalid",
        ],
        "",
        &env,
    );
    // Exit 1: imported, with the 22 counties that do not validate reported and left out.
    let (said, report) = (
        String::from_utf8_lossy(&import.stdout),
        String::from_utf8_lossy(&import.stderr),
    );
    assert!(
        import.status.code() == Some(1) && said.contains("imported 3209 fences"),
        "{said}{report}"
    );
    let serve = Running::start(dir.path(), &["serve"], &env);
    let results = run_script(
        "perf",
        &[
            ("GEOPROMO_URL", format!("http://{}", serve.api_address())),
            ("OPS_USER", "ops-ana".into()),
            ("OPS_PASSWORD", "ops password 1".into()),
        ],
    );
    let perf = &results["perf"];
    // Timings are reported (README, closing notes), not asserted: this checks that everything is drawn.
    assert!(perf["fences"].as_u64().unwrap() > 3000, "{perf}");
    assert!(perf["frames"]["frames"].as_u64().unwrap() > 0, "{perf}");
}
