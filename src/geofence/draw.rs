//! What maps need from a fence: a compact outline to draw, the latitude its tolerance band is drawn at,
//! the nearest boundary point to a probe, and where a validation problem sits.

use serde_json::Value;

use super::fence::{CoordPath, Fence, FenceProblem};
use super::metric::{wrap_lon_delta, LocalMetric};
use super::GeoPoint;

/// Positions are written to 1e-5° (about a metre): below what a map shows at street level, and half the
/// bytes of full precision.
const OUTLINE_DECIMALS: f64 = 1e5;

fn rounded(position: [f64; 2]) -> Value {
    let round = |v: f64| (v * OUTLINE_DECIMALS).round() / OUTLINE_DECIMALS;
    // Longitudes past ±180 (antimeridian rings) are kept: maps draw them continuous across the line.
    serde_json::json!([round(position[0]), round(position[1])])
}

/// Twice the signed area in lon/lat (positive: counterclockwise).
fn signed_area2(ring: &[[f64; 2]]) -> f64 {
    ring.windows(2)
        .map(|e| e[0][0] * e[1][1] - e[1][0] * e[0][1])
        .sum()
}

/// The fence as a GeoJSON geometry for drawing: its polygons with holes (a circle as a 64-gon), with
/// positions rounded to about a metre and rings wound as RFC 7946 says (exterior counterclockwise, holes
/// clockwise), so the outside of the fence is always on the right of a ring: maps draw the tolerance
/// band as a line offset to the right.
#[must_use]
pub fn outline_geometry(fence: &Fence) -> Value {
    let ring_json = |ring: &[[f64; 2]], exterior: bool| {
        let counterclockwise = signed_area2(ring) > 0.0;
        let positions = ring.iter().copied().map(rounded);
        Value::Array(if counterclockwise == exterior {
            positions.collect()
        } else {
            positions.rev().collect()
        })
    };
    let mut polygons: Vec<Value> = fence
        .polygons
        .iter()
        .map(|p| {
            Value::Array(
                p.rings
                    .iter()
                    .enumerate()
                    .map(|(i, r)| ring_json(r, i == 0))
                    .collect(),
            )
        })
        .collect();
    if let Some(circle) = fence.circle {
        polygons.push(Value::Array(vec![ring_json(&circle.ring(64), true)]));
    }
    serde_json::json!({"type": "MultiPolygon", "coordinates": polygons})
}

/// The latitude a fence's tolerance band is drawn at: the middle of its extent. A map draws the band as
/// a line `2 × tolerance` wide in metres at that latitude; across one city the scale varies by well
/// under 1%.
#[must_use]
pub fn band_latitude(fence: &Fence) -> f64 {
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for ring in fence.outlines() {
        for [_, lat] in ring {
            low = low.min(lat);
            high = high.max(lat);
        }
    }
    if low.is_finite() {
        0.5 * (low + high)
    } else {
        0.0
    }
}

/// The point of the fence's boundary nearest to `point` (lon, lat), in the local metric at the point.
/// For a probe on a map: O(vertices), not for the matching path.
#[must_use]
pub fn nearest_boundary_point(fence: &Fence, point: GeoPoint) -> Option<[f64; 2]> {
    let metric = LocalMetric::at_latitude(point.lat());
    let to_xy = |[lon, lat]: [f64; 2]| {
        (
            wrap_lon_delta(lon - point.lon()) * metric.m_per_deg_lon,
            (lat - point.lat()) * metric.m_per_deg_lat,
        )
    };
    let mut best: Option<(f64, (f64, f64))> = None;
    for ring in fence
        .polygons
        .iter()
        .flat_map(|p| p.rings.iter().cloned())
        .chain(fence.circle.map(|c| c.ring(720)))
    {
        for edge in ring.windows(2) {
            let (a, b) = (to_xy(edge[0]), to_xy(edge[1]));
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let length2 = dx * dx + dy * dy;
            let t = if length2 > 0.0 {
                (-(a.0 * dx + a.1 * dy) / length2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let closest = (a.0 + t * dx, a.1 + t * dy);
            let d2 = closest.0 * closest.0 + closest.1 * closest.1;
            if best.is_none_or(|(best_d2, _)| d2 < best_d2) {
                best = Some((d2, closest));
            }
        }
    }
    best.map(|(_, (x, y))| {
        [
            wrap_lon_delta(point.lon() + x / metric.m_per_deg_lon),
            point.lat() + y / metric.m_per_deg_lat,
        ]
    })
}

/// Where on the map a validation problem sits: the coordinate it names, else the position (or the ring's
/// first position) its path points at in the feature's `geometry`.
#[must_use]
pub fn problem_position(problem: &FenceProblem, geometry: Option<&Value>) -> Option<[f64; 2]> {
    let finite = |lon: f64, lat: f64| (lon.is_finite() && lat.is_finite()).then_some([lon, lat]);
    let path = match problem {
        FenceProblem::SelfIntersection { lon, lat, .. }
        | FenceProblem::RingsCross { lon, lat, .. }
        | FenceProblem::CoordinateOutOfRange { lon, lat, .. } => return finite(*lon, *lat),
        FenceProblem::RingNotClosed { last, .. } => return finite(last[0], last[1]),
        FenceProblem::BadCoordinates { at, .. }
        | FenceProblem::CoordinateNotFinite { at, .. }
        | FenceProblem::BeyondSupportedLatitude { at, .. }
        | FenceProblem::RingTooFewPositions { at, .. }
        | FenceProblem::EdgeSpansAntimeridian { at, .. } => *at,
        FenceProblem::HoleOutsideShell { polygon, ring } => CoordPath {
            polygon: *polygon,
            ring: *ring,
            position: None,
        },
        FenceProblem::ZeroArea { polygon } => CoordPath {
            polygon: *polygon,
            ring: 0,
            position: None,
        },
        _ => return None,
    };
    position_at(geometry?, path)
}

fn position_at(geometry: &Value, path: CoordPath) -> Option<[f64; 2]> {
    let coordinates = geometry.get("coordinates")?;
    let polygon = match geometry.get("type")?.as_str()? {
        "Polygon" => coordinates,
        "MultiPolygon" => coordinates.get(path.polygon)?,
        _ => return None,
    };
    let ring = polygon.get(path.ring)?;
    let position = ring.get(path.position.unwrap_or(0))?;
    let lon = position.get(0)?.as_f64()?;
    let lat = position.get(1)?.as_f64()?;
    (lon.is_finite() && lat.is_finite()).then_some([lon, lat])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geofence::{parse_fences, ParseOptions};

    fn square() -> Fence {
        let json = r#"{"type":"Feature","id":"sq","properties":{},"geometry":{"type":"Polygon",
            "coordinates":[[[10.0,50.0],[10.1,50.0],[10.1,50.1],[10.0,50.1],[10.0,50.0]]]}}"#;
        parse_fences(json.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences
            .remove(0)
    }

    #[test]
    fn the_nearest_boundary_point_is_the_foot_of_the_perpendicular() {
        let fence = square();
        let outside = GeoPoint::new(50.05, 10.11).unwrap();
        let [lon, lat] = nearest_boundary_point(&fence, outside).unwrap();
        assert!((lon - 10.1).abs() < 1e-9, "{lon}");
        assert!((lat - 50.05).abs() < 1e-9, "{lat}");
        let beyond_corner = GeoPoint::new(50.2, 10.2).unwrap();
        assert_eq!(
            nearest_boundary_point(&fence, beyond_corner),
            Some([10.1, 50.1])
        );
    }

    #[test]
    fn outlines_are_rounded_multipolygons_and_bands_sit_mid_fence() {
        let fence = square();
        let outline = outline_geometry(&fence);
        assert_eq!(outline["type"], "MultiPolygon");
        assert_eq!(
            outline["coordinates"][0][0][1],
            serde_json::json!([10.1, 50.0])
        );
        // Given clockwise, the exterior ring is written counterclockwise.
        let clockwise = r#"{"type":"Feature","id":"cw","properties":{},"geometry":{"type":"Polygon",
            "coordinates":[[[10.0,50.0],[10.0,50.1],[10.1,50.1],[10.1,50.0],[10.0,50.0]]]}}"#;
        let fence_cw = parse_fences(clockwise.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences
            .remove(0);
        let ring: Vec<[f64; 2]> =
            serde_json::from_value(outline_geometry(&fence_cw)["coordinates"][0][0].clone())
                .unwrap();
        assert!(signed_area2(&ring) > 0.0);
        assert!((band_latitude(&fence) - 50.05).abs() < 1e-9);
    }

    #[test]
    fn problems_are_placed_where_they_are() {
        let bowtie = r#"{"type":"Feature","id":"bow","properties":{},"geometry":{"type":"Polygon",
            "coordinates":[[[0.0,0.0],[1.0,1.0],[1.0,0.0],[0.0,1.0],[0.0,0.0]]]}}"#;
        let parsed = parse_fences(
            bowtie.as_bytes(),
            &ParseOptions::default().skip_invalid(true),
        )
        .unwrap();
        let problem = &parsed.skipped[0].problems[0];
        assert_eq!(problem_position(problem, None), Some([0.5, 0.5]));
        let geometry: Value =
            serde_json::json!({"type":"Polygon","coordinates":[[[3.0,4.0],[5.0,6.0]]]});
        let short = FenceProblem::RingTooFewPositions {
            at: CoordPath {
                polygon: 0,
                ring: 0,
                position: None,
            },
            count: 2,
        };
        assert_eq!(problem_position(&short, Some(&geometry)), Some([3.0, 4.0]));
        assert_eq!(
            problem_position(&FenceProblem::MissingId, Some(&geometry)),
            None
        );
    }
}
