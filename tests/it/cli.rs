//! The `geopromo` binary as users run it: exit codes, output lines, error reports.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn geopromo(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_geopromo"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A run that refuses its fences exits before reading stdin; the broken pipe that causes is expected.
    if let Err(error) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn quick_start_matches_the_sample_points() {
    let out = geopromo(
        &[
            "match",
            "--fences",
            "geodata/cities.geojson",
            "geodata/sample-points.csv",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9);
    assert_eq!(lines[0]["id"], "monas");
    assert_eq!(lines[0]["matches"][0]["fence"], "jakarta");
    assert_eq!(lines[0]["matches"][0]["inside"], true);
    let bay = &lines[1]["matches"][0];
    assert_eq!(bay["inside"], false);
    assert!(
        (bay["distance_m"].as_f64().unwrap() - 818.0).abs() < 5.0,
        "{bay}"
    );
    assert_eq!(lines[8]["matches"], serde_json::json!([]));
}

#[test]
fn bad_rows_are_reported_by_line_and_skipped_with_exit_1() {
    let csv = "name,lon,lat,id\nx,106.8272,-6.1754,a\ny,106.8,nope,b\nz,106.8,-6.2\n\nw,200,0,c\nv,106.8272,-6.1754,d\n";
    for index in ["raster", "h3", "rtree"] {
        let out = geopromo(
            &[
                "match",
                "--fences",
                "geodata/cities.geojson",
                "--index",
                index,
                "-",
            ],
            csv,
        );
        assert_eq!(out.status.code(), Some(1), "{index}");
        let stdout = text(&out.stdout);
        let ids: Vec<&str> = stdout.lines().map(|l| &l[7..8]).collect();
        assert_eq!(ids, ["a", "d"], "{stdout}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("line 3: lat \"nope\" is not a number"),
            "{stderr}"
        );
        assert!(stderr.contains("line 4: missing column id"), "{stderr}");
        assert!(
            stderr.contains("line 6: longitude 200 is outside [-180, 180]"),
            "{stderr}"
        );
    }
}

#[test]
fn points_come_under_the_column_names_people_use_and_as_geojson() {
    let monas = (-6.1754, 106.8272);
    let csv = format!("Latitude,Longitude,user\n{},{},u1\n", monas.0, monas.1);
    let out = geopromo(&["match", "--fences", "geodata/cities.geojson"], &csv);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // No id column: the line number names the point.
    assert!(
        text(&out.stdout).starts_with("{\"id\":2,\"matches\":[{\"fence\":\"jakarta\""),
        "{}",
        text(&out.stdout)
    );

    let named = geopromo(
        &[
            "match",
            "--fences",
            "geodata/cities.geojson",
            "--id-col",
            "user",
            "--lat-col",
            "Latitude",
            "--lon-col",
            "longitude",
        ],
        &csv,
    );
    assert!(named.status.success(), "{}", text(&named.stderr));
    assert!(
        text(&named.stdout).starts_with("{\"id\":\"u1\","),
        "{}",
        text(&named.stdout)
    );

    let missing = geopromo(
        &[
            "match",
            "--fences",
            "geodata/cities.geojson",
            "--lat-col",
            "y",
        ],
        &csv,
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr)
            .contains("has no latitude column (looked for y; name it with --lat-col)"),
        "{}",
        text(&missing.stderr)
    );

    let collection = format!(
        r#"{{"type": "FeatureCollection",
  "features": [
    {{"type": "Feature", "id": "monas", "properties": {{}}, "geometry": {{"type": "Point", "coordinates": [{lon}, {lat}]}}}},
    {{"type": "Feature", "properties": {{}}, "geometry": {{"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}}},
    {{"type": "Feature", "properties": {{"id": 7}}, "geometry": {{"type": "Point", "coordinates": [0, 0]}}}}
  ]
}}
"#,
        lat = monas.0,
        lon = monas.1
    );
    let out = geopromo(
        &["match", "--fences", "geodata/cities.geojson"],
        &collection,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "monas");
    assert_eq!(lines[0]["matches"][0]["fence"], "jakarta");
    assert_eq!(lines[1]["id"], 7);
    assert!(
        text(&out.stderr).contains("feature 1: geometry must be a Point, found \"LineString\""),
        "{}",
        text(&out.stderr)
    );

    let broken = geopromo(
        &["match", "--fences", "geodata/cities.geojson"],
        "{\"type\": \"FeatureCollection\",\n \"features\": [\n",
    );
    assert_eq!(broken.status.code(), Some(2));
    assert!(
        text(&broken.stderr).contains("the input is not valid GeoJSON: EOF while parsing"),
        "{}",
        text(&broken.stderr)
    );
}

#[test]
fn ndjson_points_keep_their_id_type() {
    let input = "{\"id\":7,\"lat\":-6.1754,\"lon\":106.8272,\"extra\":true}\n{\"id\":\"s\",\"lat\":0,\"lon\":0}\n";
    let out = geopromo(&["match", "--fences", "geodata/cities.geojson"], input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("{\"id\":7,\"matches\":[{\"fence\":\"jakarta\""),
        "{stdout}"
    );
    assert!(stdout.contains("{\"id\":\"s\",\"matches\":[]}"), "{stdout}");
}

#[test]
fn invalid_fences_are_refused_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fences.geojson");
    std::fs::write(&path, r#"{"type":"FeatureCollection","features":[
        {"type":"Feature","id":"ok","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}},
        {"type":"Feature","id":"open","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}}]}"#).unwrap();
    let path = path.to_str().unwrap();

    let refused = geopromo(&["match", "--fences", path], "id,lat,lon\np,0.2,0.5\n");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("feature 1 (id \"open\"): polygon 0 ring 0: ring is not closed"),
        "{stderr}"
    );
    assert!(stderr.contains("pass --skip-invalid"), "{stderr}");

    let skipped = geopromo(
        &["match", "--fences", path, "--skip-invalid"],
        "id,lat,lon\np,0.2,0.5\n",
    );
    assert!(skipped.status.success(), "{}", text(&skipped.stderr));
    assert!(text(&skipped.stdout).contains("\"fence\":\"ok\""));
    assert!(text(&skipped.stderr).contains("skipped: feature 1 (id \"open\")"));

    let validate = geopromo(&["fences", "validate", path], "");
    assert_eq!(validate.status.code(), Some(1));
    assert_eq!(text(&validate.stdout).lines().count(), 1);
    let valid = geopromo(&["fences", "validate", "geodata/cities.geojson"], "");
    assert!(valid.status.success());
    assert!(text(&valid.stderr).contains("3 features, 3 valid, 0 invalid"));
}
