//! GeoJSON (RFC 7946) Feature / FeatureCollection of Polygon / MultiPolygon (and Point + `radius_m`
//! circles) → validated [`Fence`]s.
//!
//! Each feature is parsed on its own so that one bad feature never hides the problems of another, and every
//! problem names its feature (index and id) and, where it applies, the coordinate.

use std::collections::HashMap;

use serde_json::Value;

use super::fence::{
    Circle, CoordPath, FeatureRef, Fence, FenceProblem, Polygon, RejectedFeature, Repair,
};
use super::metric::{MAX_FENCE_LATITUDE, MAX_TOLERANCE_M};
use super::part::MAX_PART_VERTICES;
use super::validate;

/// How features become fences.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct ParseOptions {
    pub default_tolerance_m: f64,
    pub max_vertices: usize,
    /// Keep the valid features and report the others instead of rejecting the whole input.
    pub skip_invalid: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            default_tolerance_m: 1000.0,
            max_vertices: 1_000_000,
            skip_invalid: false,
        }
    }
}

impl ParseOptions {
    pub fn default_tolerance_m(mut self, metres: f64) -> Self {
        self.default_tolerance_m = metres;
        self
    }

    pub fn max_vertices(mut self, limit: usize) -> Self {
        self.max_vertices = limit;
        self
    }

    pub fn skip_invalid(mut self, skip: bool) -> Self {
        self.skip_invalid = skip;
        self
    }
}

/// The fences read from one input, with what was skipped and what was repaired.
#[derive(Debug, Clone, Default)]
pub struct ParsedFences {
    pub fences: Vec<Fence>,
    /// Features left out; non-empty only when [`ParseOptions::skip_invalid`] is set.
    pub skipped: Vec<RejectedFeature>,
    pub repairs: Vec<Repair>,
}

/// Why an input as a whole could not be read as fences.
#[derive(Debug, thiserror::Error)]
pub enum GeoJsonError {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a GeoJSON Feature or FeatureCollection at the top level, found {0}")]
    NotFeatures(String),
    #[error("default tolerance {0} m is outside [0, {MAX_TOLERANCE_M}]")]
    BadDefaultTolerance(f64),
    #[error("{} of {total} features are invalid", rejected.len())]
    Invalid {
        total: usize,
        rejected: Vec<RejectedFeature>,
    },
}

impl GeoJsonError {
    /// One line per problem, for CLIs and logs.
    #[must_use]
    pub fn report_lines(&self) -> Vec<String> {
        match self {
            Self::Invalid { rejected, .. } => problem_lines(rejected),
            other => vec![other.to_string()],
        }
    }
}

/// One line per problem of every rejected feature: "feature 3 (id \"x\"): polygon 0 ring 0: ...".
#[must_use]
pub fn problem_lines(rejected: &[RejectedFeature]) -> Vec<String> {
    rejected
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(move |p| format!("{}: {p}", r.feature))
        })
        .collect()
}

/// Parses and validates fences from GeoJSON bytes.
pub fn parse_fences(bytes: &[u8], options: &ParseOptions) -> Result<ParsedFences, GeoJsonError> {
    let root: Value = serde_json::from_slice(bytes)?;
    parse_fences_value(root, options)
}

/// As [`parse_fences`], from an already parsed JSON document.
pub fn parse_fences_value(
    root: Value,
    options: &ParseOptions,
) -> Result<ParsedFences, GeoJsonError> {
    if !(0.0..=MAX_TOLERANCE_M).contains(&options.default_tolerance_m) {
        return Err(GeoJsonError::BadDefaultTolerance(
            options.default_tolerance_m,
        ));
    }
    let kind = root.get("type").and_then(Value::as_str).map(str::to_owned);
    let features = match (kind.as_deref(), root) {
        (Some("FeatureCollection"), Value::Object(mut map)) => match map.remove("features") {
            Some(Value::Array(features)) => features,
            _ => {
                return Err(GeoJsonError::NotFeatures(
                    "a FeatureCollection without a \"features\" array".into(),
                ))
            }
        },
        (Some("Feature"), root) => vec![root],
        (Some(other), _) => return Err(GeoJsonError::NotFeatures(format!("type {other:?}"))),
        (None, root) => return Err(GeoJsonError::NotFeatures(describe(&root))),
    };
    let total = features.len();
    let mut parsed = ParsedFences::default();
    let mut rejected = Vec::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    for (index, feature) in features.iter().enumerate() {
        match parse_feature(index, feature, options, &mut parsed.repairs) {
            Ok(fence) => {
                if let Some(&first_index) = seen_ids.get(&fence.id) {
                    rejected.push(RejectedFeature {
                        feature: FeatureRef {
                            index,
                            id: Some(fence.id.clone()),
                        },
                        problems: vec![FenceProblem::DuplicateId {
                            id: fence.id,
                            first_index,
                        }],
                    });
                } else {
                    seen_ids.insert(fence.id.clone(), index);
                    parsed.fences.push(fence);
                }
            }
            Err(r) => rejected.push(r),
        }
    }
    if rejected.is_empty() {
        return Ok(parsed);
    }
    if options.skip_invalid {
        parsed.skipped = rejected;
        Ok(parsed)
    } else {
        Err(GeoJsonError::Invalid { total, rejected })
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object without a \"type\"".into(),
    }
}

fn feature_id(feature: &Value) -> Result<Option<String>, FenceProblem> {
    let raw = match feature.get("id") {
        Some(id) if !id.is_null() => Some(id),
        _ => feature
            .get("properties")
            .and_then(|p| p.get("id"))
            .filter(|v| !v.is_null()),
    };
    match raw {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            crate::text::check_printable("id", s)
                .map_err(|e| FenceProblem::BadId(format!("{s:?}: {e}")))?;
            Ok(Some(s.clone()))
        }
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(FenceProblem::BadId(other.to_string())),
    }
}

fn parse_feature(
    index: usize,
    feature: &Value,
    options: &ParseOptions,
    repairs: &mut Vec<Repair>,
) -> Result<Fence, RejectedFeature> {
    let mut problems = Vec::new();
    let id = feature_id(feature).unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    let feature_ref = FeatureRef {
        index,
        id: id.clone(),
    };
    let reject = |problems| RejectedFeature {
        feature: feature_ref.clone(),
        problems,
    };
    if feature.get("type").and_then(Value::as_str) != Some("Feature") {
        problems.push(FenceProblem::NotAFeature(describe_type(feature)));
        return Err(reject(problems));
    }
    if id.is_none() && problems.is_empty() {
        problems.push(FenceProblem::MissingId);
    }
    let properties = feature.get("properties").filter(|p| p.is_object());
    let name = match properties.and_then(|p| p.get("name")) {
        None | Some(Value::Null) => id.clone().unwrap_or_default(),
        Some(Value::String(s)) => {
            if let Err(e) = crate::text::check_printable("name", s) {
                problems.push(FenceProblem::BadName(format!("{s:?}: {e}")));
            }
            s.clone()
        }
        Some(other) => {
            problems.push(FenceProblem::BadName(other.to_string()));
            String::new()
        }
    };
    let tolerance_m = match properties.and_then(|p| p.get("tolerance_m")) {
        None | Some(Value::Null) => options.default_tolerance_m,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=MAX_TOLERANCE_M).contains(&t) => t,
            _ => {
                problems.push(FenceProblem::BadTolerance {
                    found: v.to_string(),
                    max: MAX_TOLERANCE_M,
                });
                0.0
            }
        },
    };
    let geometry = feature.get("geometry");
    if geometry.and_then(|g| g.get("type")).and_then(Value::as_str) == Some("Point") {
        let circle = parse_circle(geometry.unwrap_or(&Value::Null), properties, &mut problems);
        return match (problems.is_empty(), circle, id) {
            (true, Some(circle), Some(id)) => Ok(Fence {
                id,
                name,
                tolerance_m,
                polygons: Vec::new(),
                circle: Some(circle),
            }),
            _ => Err(reject(problems)),
        };
    }
    let polygons = parse_geometry(geometry, &mut problems).and_then(|raw| {
        let mut repaired = Vec::new();
        let polygons = validate_polygons(raw, &mut problems, &mut repaired);
        repairs.extend(repaired.into_iter().map(|what| Repair {
            feature: feature_ref.clone(),
            what,
        }));
        polygons
    });
    if let Some(polygons) = &polygons {
        let count: usize = polygons.iter().map(Polygon::vertex_count).sum();
        // The prepared geometry addresses a part's vertices (closing ones too) in 28 bits, whatever the option.
        let limit = options.max_vertices.min(MAX_PART_VERTICES / 2);
        if count > limit {
            problems.push(FenceProblem::TooManyVertices { count, limit });
        }
    }
    match (problems.is_empty(), polygons, id) {
        (true, Some(polygons), Some(id)) => Ok(Fence {
            id,
            name,
            tolerance_m,
            polygons,
            circle: None,
        }),
        _ => Err(reject(problems)),
    }
}

/// Largest circle radius: like tolerances, distances are held to their contract up to 100 km.
pub const MAX_RADIUS_M: f64 = MAX_TOLERANCE_M;

/// A `Point` geometry with a radius: `properties.radius_m`, or `radius_m` on the geometry itself (where
/// the store keeps it, as a GeoJSON foreign member).
fn parse_circle(
    geometry: &Value,
    properties: Option<&Value>,
    problems: &mut Vec<FenceProblem>,
) -> Option<Circle> {
    let at = CoordPath {
        polygon: 0,
        ring: 0,
        position: Some(0),
    };
    let center = match geometry.get("coordinates") {
        Some(Value::Array(a)) if a.len() >= 2 => a[0].as_f64().zip(a[1].as_f64()),
        _ => None,
    };
    let center = match center {
        Some((lon, lat)) if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) => {
            problems.push(FenceProblem::CoordinateOutOfRange { at, lon, lat });
            None
        }
        Some((_, lat)) if lat.abs() > MAX_FENCE_LATITUDE => {
            problems.push(FenceProblem::BeyondSupportedLatitude {
                at,
                lat,
                max: MAX_FENCE_LATITUDE,
            });
            None
        }
        Some((lon, lat)) => Some([lon, lat]),
        None => {
            problems.push(FenceProblem::BadCoordinates {
                at,
                what: format!(
                    "Point coordinates must be [lon, lat] numbers, found {}",
                    geometry.get("coordinates").unwrap_or(&Value::Null)
                ),
            });
            None
        }
    };
    let radius = properties
        .and_then(|p| p.get("radius_m"))
        .filter(|r| !r.is_null())
        .or_else(|| geometry.get("radius_m"));
    let radius_m = match radius.map(|r| (r, r.as_f64())) {
        Some((_, Some(r))) if r > 0.0 && r <= MAX_RADIUS_M => Some(r),
        other => {
            problems.push(FenceProblem::BadRadius {
                found: other.map_or_else(|| "nothing".to_string(), |(r, _)| r.to_string()),
                max: MAX_RADIUS_M,
            });
            None
        }
    };
    Some(Circle {
        center: center?,
        radius_m: radius_m?,
    })
}

fn describe_type(v: &Value) -> String {
    match v.get("type").and_then(Value::as_str) {
        Some(t) => format!("type {t:?}"),
        None => describe(v),
    }
}

type RawPolygon = Vec<Vec<[f64; 2]>>;

fn parse_geometry(
    geometry: Option<&Value>,
    problems: &mut Vec<FenceProblem>,
) -> Option<Vec<RawPolygon>> {
    let geometry = match geometry {
        None | Some(Value::Null) => {
            problems.push(FenceProblem::MissingGeometry);
            return None;
        }
        Some(g) => g,
    };
    let coords = geometry.get("coordinates");
    match geometry.get("type").and_then(Value::as_str) {
        Some("Polygon") => parse_polygon(coords, 0, problems).map(|p| vec![p]),
        Some("MultiPolygon") => {
            let Some(Value::Array(polys)) = coords else {
                problems.push(bad_coords(
                    0,
                    0,
                    None,
                    "MultiPolygon coordinates must be an array of polygons",
                ));
                return None;
            };
            let parsed: Vec<_> = polys
                .iter()
                .enumerate()
                .map(|(i, p)| parse_polygon(Some(p), i, problems))
                .collect();
            parsed.into_iter().collect()
        }
        Some(other) => {
            problems.push(FenceProblem::UnsupportedGeometry(other.to_string()));
            None
        }
        None => {
            problems.push(FenceProblem::UnsupportedGeometry(describe(geometry)));
            None
        }
    }
}

fn bad_coords(polygon: usize, ring: usize, position: Option<usize>, what: &str) -> FenceProblem {
    FenceProblem::BadCoordinates {
        at: CoordPath {
            polygon,
            ring,
            position,
        },
        what: what.to_string(),
    }
}

fn parse_polygon(
    coords: Option<&Value>,
    polygon: usize,
    problems: &mut Vec<FenceProblem>,
) -> Option<RawPolygon> {
    let Some(Value::Array(rings)) = coords else {
        problems.push(bad_coords(
            polygon,
            0,
            None,
            "polygon coordinates must be an array of rings",
        ));
        return None;
    };
    if rings.is_empty() {
        problems.push(bad_coords(polygon, 0, None, "polygon has no rings"));
        return None;
    }
    let mut out = Vec::with_capacity(rings.len());
    for (ring, r) in rings.iter().enumerate() {
        let Value::Array(positions) = r else {
            problems.push(bad_coords(
                polygon,
                ring,
                None,
                "ring must be an array of positions",
            ));
            return None;
        };
        let mut parsed = Vec::with_capacity(positions.len());
        for (i, pos) in positions.iter().enumerate() {
            let xy = match pos {
                Value::Array(a) if a.len() >= 2 => a[0].as_f64().zip(a[1].as_f64()),
                _ => None,
            };
            match xy {
                Some((lon, lat)) => parsed.push([lon, lat]),
                None => {
                    problems.push(bad_coords(
                        polygon,
                        ring,
                        Some(i),
                        &format!("position must be [lon, lat] numbers, found {pos}"),
                    ));
                    return None;
                }
            }
        }
        out.push(parsed);
    }
    Some(out)
}

/// Validates raw polygons. Degenerate parts that can be dropped without changing what a reasonable
/// reader means (a collapsed hole, a collapsed member of a multipolygon that has others) are dropped and
/// reported as repairs; everything else is a problem.
fn validate_polygons(
    raw: Vec<RawPolygon>,
    problems: &mut Vec<FenceProblem>,
    repairs: &mut Vec<String>,
) -> Option<Vec<Polygon>> {
    let raw = super::polar::clip_to_supported_latitudes(raw, repairs);
    let multi = raw.len() > 1;
    let mut polygons = Vec::with_capacity(raw.len());
    let mut dropped_members = Vec::new();
    for (p, rings) in raw.into_iter().enumerate() {
        let mut checked: Vec<Vec<[f64; 2]>> = Vec::with_capacity(rings.len());
        let mut member_problems = Vec::new();
        for (r, positions) in rings.iter().enumerate() {
            let at = CoordPath {
                polygon: p,
                ring: r,
                position: None,
            };
            let mut ring_problems = Vec::new();
            let mut ring = validate::check_ring(positions, at, &mut ring_problems, repairs);
            if let (Some(hole), Some(shell)) = (ring.as_mut(), checked.first()) {
                validate::align_to_shell(shell, hole);
            }
            let collapsed = match &ring {
                Some(ring) => validate::is_degenerate(ring),
                None => matches!(
                    ring_problems.as_slice(),
                    [FenceProblem::RingTooFewPositions { .. }]
                ),
            };
            if collapsed && r > 0 {
                repairs.push(format!("dropped collapsed hole: {at}"));
                continue;
            }
            if collapsed && r == 0 && multi {
                dropped_members.push(p);
                member_problems.clear();
                break;
            }
            if collapsed {
                match ring_problems.is_empty() {
                    true => member_problems.push(FenceProblem::ZeroArea { polygon: p }),
                    false => member_problems.append(&mut ring_problems),
                }
                continue;
            }
            member_problems.append(&mut ring_problems);
            checked.extend(ring);
        }
        if dropped_members.last() == Some(&p) {
            repairs.push(format!(
                "dropped collapsed member polygon {p} of the multipolygon"
            ));
            continue;
        }
        if member_problems.is_empty() {
            validate::check_polygon_topology(p, &checked, &mut member_problems);
        }
        if member_problems.is_empty() {
            polygons.push(Polygon { rings: checked });
        } else {
            problems.append(&mut member_problems);
        }
    }
    if !problems.is_empty() {
        return None;
    }
    if polygons.is_empty() {
        problems.push(FenceProblem::Empty);
        return None;
    }
    Some(polygons)
}

/// A validated fence as a GeoJSON geometry: a Polygon for one part, a MultiPolygon for several, a Point
/// with a `radius_m` foreign member for a circle.
#[must_use]
pub fn fence_geometry(fence: &crate::geofence::Fence) -> Value {
    if let Some(circle) = fence.circle {
        return serde_json::json!({
            "type": "Point",
            "coordinates": circle.center.to_vec(),
            "radius_m": circle.radius_m,
        });
    }
    // Rings kept whole across the antimeridian are written back with longitudes in [-180, 180], as they
    // came in; reading them again repairs them the same way.
    let wrap = |lon: f64| super::metric::wrap_lon_delta(lon);
    let polygon = |p: &crate::geofence::Polygon| {
        Value::from(
            p.rings
                .iter()
                .map(|ring| {
                    ring.iter()
                        .map(|c| Value::from(vec![wrap(c[0]), c[1]]))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>(),
        )
    };
    match fence.polygons.as_slice() {
        [single] => serde_json::json!({"type": "Polygon", "coordinates": polygon(single)}),
        parts => serde_json::json!({
            "type": "MultiPolygon",
            "coordinates": parts.iter().map(polygon).collect::<Vec<_>>(),
        }),
    }
}

/// A validated fence as a GeoJSON Feature that [`parse_fences`] reads back to the same fence.
#[must_use]
pub fn fence_feature(fence: &crate::geofence::Fence) -> Value {
    let mut properties = serde_json::json!({"name": fence.name, "tolerance_m": fence.tolerance_m});
    if let Some(circle) = fence.circle {
        properties["radius_m"] = circle.radius_m.into();
    }
    serde_json::json!({
        "type": "Feature",
        "id": fence.id,
        "properties": properties,
        "geometry": fence_geometry(fence),
    })
}
