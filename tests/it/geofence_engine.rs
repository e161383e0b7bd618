//! The geofence engine against hand-made cases, the whole US counties file, and Karney's geodesics.

use geo::{Distance, Geodesic, Point};
use geopromo::geofence::sample::{
    near_boundary_points, uniform_points, wobbly_polygon, SampleRng, CONUS_BOUNDS,
};
use geopromo::geofence::{
    parse_fences, Fence, FenceIndex, FenceMatch, FenceProblem, GeoJsonError, GeoPoint,
    IndexOptions, ParseOptions, Polygon, Strategy,
};
use h3o::Resolution;
use serde_json::json;

fn feature(id: &str, geometry: serde_json::Value) -> serde_json::Value {
    json!({"type": "Feature", "id": id, "properties": {"name": id}, "geometry": geometry})
}

fn polygon(rings: serde_json::Value) -> serde_json::Value {
    json!({"type": "Polygon", "coordinates": rings})
}

fn square(lon: f64, lat: f64, size: f64) -> serde_json::Value {
    json!([
        [lon, lat],
        [lon + size, lat],
        [lon + size, lat + size],
        [lon, lat + size],
        [lon, lat]
    ])
}

/// The problems of the only rejected feature of a one-feature input.
fn problems_of(geojson: serde_json::Value) -> Vec<FenceProblem> {
    match parse_fences(geojson.to_string().as_bytes(), &ParseOptions::default()) {
        Err(GeoJsonError::Invalid { rejected, .. }) => {
            assert_eq!(rejected.len(), 1, "{rejected:?}");
            rejected[0].problems.clone()
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn codes(problems: &[FenceProblem]) -> Vec<&'static str> {
    problems.iter().map(FenceProblem::code).collect()
}

fn index_of(fences: &[Fence]) -> FenceIndex {
    FenceIndex::build(
        fences,
        IndexOptions::default().h3_resolution(Some(Resolution::Eight)),
    )
}

fn fences_of(features: Vec<serde_json::Value>, tolerance_m: f64) -> Vec<Fence> {
    let fc = json!({"type": "FeatureCollection", "features": features});
    let options = ParseOptions::default().default_tolerance_m(tolerance_m);
    parse_fences(fc.to_string().as_bytes(), &options)
        .unwrap()
        .fences
}

/// Matches through every strategy and checks they agree before returning the answer.
fn matches_everywhere(index: &FenceIndex, lat: f64, lon: f64) -> Vec<FenceMatch> {
    let point = GeoPoint::new(lat, lon).unwrap();
    let mut reference = Vec::new();
    index.match_point_brute_force(point, &mut reference);
    for strategy in [Strategy::Raster, Strategy::H3, Strategy::RTree] {
        let mut out = Vec::new();
        index.match_with(strategy, point, &mut out);
        assert_eq!(out, reference, "{strategy:?} at ({lat}, {lon})");
    }
    reference
}

mod validation {
    use super::*;

    #[test]
    fn out_of_range_coordinates_name_the_position() {
        let p = problems_of(feature(
            "a",
            polygon(json!([[[0, 0], [1, 0], [1, 91], [0, 0]]])),
        ));
        assert_eq!(
            p[0].to_string(),
            "polygon 0 ring 0 position 2: coordinate (1, 91) is out of range (lon in [-180, 180], lat in [-90, 90])"
        );
        let p = problems_of(feature(
            "a",
            polygon(json!([[[0, 0], [181, 0], [1, 1], [0, 0]]])),
        ));
        assert_eq!(codes(&p), ["coordinate_out_of_range"]);
    }

    #[test]
    fn nan_and_huge_numbers_are_json_errors_with_a_location() {
        let err = parse_fences(
            b"{\"type\":\"Feature\",\n\"id\":1,\"geometry\":NaN}",
            &ParseOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse_fences(b"[1e999]", &ParseOptions::default()).unwrap_err();
        assert!(err.to_string().starts_with("not valid JSON"), "{err}");
    }

    #[test]
    fn unclosed_ring() {
        let p = problems_of(feature(
            "a",
            polygon(json!([[[0, 0], [1, 0], [1, 1], [0, 1]]])),
        ));
        assert_eq!(codes(&p), ["ring_not_closed"]);
        assert!(p[0]
            .to_string()
            .contains("first position [0.0, 0.0] differs from last [0.0, 1.0]"));
    }

    #[test]
    fn ring_with_fewer_than_four_positions() {
        let p = problems_of(feature("a", polygon(json!([[[0, 0], [1, 0], [0, 0]]]))));
        assert_eq!(
            p[0].to_string(),
            "polygon 0 ring 0: ring has 3 positions; a closed ring needs at least 4"
        );
    }

    #[test]
    fn self_intersecting_ring_reports_where() {
        let p = problems_of(feature(
            "a",
            polygon(json!([[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]])),
        ));
        assert_eq!(
            p,
            vec![FenceProblem::SelfIntersection {
                at: geopromo::geofence::fence::CoordPath {
                    polygon: 0,
                    ring: 0,
                    position: None
                },
                lon: 1.0,
                lat: 1.0,
            }]
        );
    }

    #[test]
    fn zero_area_polygon() {
        let p = problems_of(feature(
            "a",
            polygon(json!([[[0, 0], [1, 1], [2, 2], [0, 0]]])),
        ));
        assert_eq!(codes(&p), ["zero_area"]);
    }

    #[test]
    fn hole_outside_and_hole_crossing_the_shell() {
        let outside = json!([square(0.0, 0.0, 1.0), square(5.0, 5.0, 0.5)]);
        assert_eq!(
            codes(&problems_of(feature("a", polygon(outside)))),
            ["hole_outside_shell"]
        );
        let crossing = json!([square(0.0, 0.0, 1.0), square(0.5, 0.5, 1.0)]);
        assert!(codes(&problems_of(feature("a", polygon(crossing)))).contains(&"rings_cross"));
    }

    #[test]
    fn duplicate_ids_name_the_first_use() {
        let fc = json!({"type": "FeatureCollection", "features": [
            feature("dup", polygon(json!([square(0.0, 0.0, 1.0)]))),
            feature("dup", polygon(json!([square(2.0, 0.0, 1.0)]))),
        ]});
        let err = parse_fences(fc.to_string().as_bytes(), &ParseOptions::default()).unwrap_err();
        assert_eq!(
            err.report_lines(),
            ["feature 1 (id \"dup\"): id \"dup\" is already used by feature 0"]
        );
    }

    #[test]
    fn vertex_limit_is_configurable() {
        let fc = feature("a", polygon(json!([square(0.0, 0.0, 1.0)])));
        let options = ParseOptions::default().max_vertices(3);
        let err = parse_fences(fc.to_string().as_bytes(), &options).unwrap_err();
        assert_eq!(
            err.report_lines(),
            ["feature 0 (id \"a\"): 4 vertices exceed the limit of 3"]
        );
        assert!(parse_fences(fc.to_string().as_bytes(), &options.max_vertices(4)).is_ok());
    }

    #[test]
    fn ids_names_tolerances_and_geometry_types_are_checked() {
        let no_id = json!({"type": "Feature", "properties": {}, "geometry": polygon(json!([square(0.0, 0.0, 1.0)]))});
        assert_eq!(codes(&problems_of(no_id)), ["missing_id"]);
        let bad_tol = json!({"type": "Feature", "properties": {"id": "x", "tolerance_m": -5},
            "geometry": polygon(json!([square(0.0, 0.0, 1.0)]))});
        assert_eq!(codes(&problems_of(bad_tol)), ["bad_tolerance"]);
        let line = feature(
            "l",
            json!({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
        );
        assert_eq!(
            problems_of(line)[0].to_string(),
            "geometry type LineString is not supported (only Polygon, MultiPolygon, and Point with properties.radius_m for a circle)"
        );
        let point = feature("p", json!({"type": "Point", "coordinates": [0, 0]}));
        assert_eq!(
            problems_of(point)[0].to_string(),
            "a Point fence is a circle and needs properties.radius_m, a number in (0, 100000] metres, found nothing"
        );
        let bad_pos = feature("b", polygon(json!([[[0, 0], [1, "x"], [1, 1], [0, 0]]])));
        assert!(problems_of(bad_pos)[0]
            .to_string()
            .starts_with("polygon 0 ring 0 position 1: position must be"));
    }

    #[test]
    fn polar_fences_are_clipped_and_antimeridian_crossings_repaired() {
        // Wholly beyond 85°: nothing to keep, refused with the reason.
        let polar = problems_of(feature("n", polygon(json!([square(0.0, 85.5, 1.0)]))));
        assert_eq!(codes(&polar)[0], "beyond_supported_latitude");
        // A ring round the globe encloses a pole: closed through it and clipped at 85°N.
        let round = json!({"type": "FeatureCollection", "features": [feature(
            "r",
            polygon(json!([[[0, 70], [120, 70], [-120, 70], [0, 75], [0, 70]]])),
        )]});
        let parsed = parse_fences(round.to_string().as_bytes(), &ParseOptions::default()).unwrap();
        assert!(
            parsed.repairs.iter().any(|r| r.what.contains("north pole")),
            "{:?}",
            parsed.repairs
        );
        let index = FenceIndex::build(&parsed.fences, IndexOptions::default());
        assert_eq!(matches_everywhere(&index, 80.0, 100.0).len(), 1);
        assert_eq!(matches_everywhere(&index, 80.0, -100.0).len(), 1);
        assert!(matches_everywhere(&index, 60.0, 0.0).is_empty());
        // A square reaching past 85°N is cut at 85°N.
        let cut = json!({"type": "FeatureCollection", "features": [feature(
            "c",
            polygon(json!([square(10.0, 84.0, 2.0)])),
        )]});
        let parsed = parse_fences(cut.to_string().as_bytes(), &ParseOptions::default()).unwrap();
        assert!(parsed.repairs.iter().any(|r| r.what.contains("clipped")));
        let ring = &parsed.fences[0].polygons[0].rings[0];
        assert!(ring.iter().all(|p| p[1] <= 85.0) && ring.iter().any(|p| p[1] == 85.0));
        // A triangle written with an edge from 170° to -170°: 20° wide across the antimeridian.
        let fc = json!({"type": "FeatureCollection", "features": [feature(
            "w",
            polygon(json!([[[170, 0], [-170, 0], [-170, 1], [170, 0]]])),
        )]});
        let options = ParseOptions::default().default_tolerance_m(1000.0);
        let parsed = parse_fences(fc.to_string().as_bytes(), &options).unwrap();
        assert_eq!(parsed.repairs.len(), 1);
        assert!(
            parsed.repairs[0]
                .to_string()
                .contains("crosses the antimeridian"),
            "{}",
            parsed.repairs[0]
        );
        let index = index_of(&parsed.fences);
        for lon in [179.0, 180.0, -180.0, -179.5] {
            let found = matches_everywhere(&index, 0.2, lon);
            assert!(found.len() == 1 && found[0].inside, "{lon}: {found:?}");
        }
        // 0.005° south of the edge along the equator, on either side of the line: ~553 m.
        for lon in [179.5, -179.5] {
            let found = matches_everywhere(&index, -0.005, lon);
            assert_eq!(found.len(), 1, "{lon}");
            assert!(
                (found[0].distance_m - 552.9).abs() < 1.0,
                "{lon}: {found:?}"
            );
        }
        assert!(matches_everywhere(&index, 0.2, 160.0).is_empty());
        // Written back as it came in, and read again to the same fence.
        let again = parse_fences(
            json!({"type": "FeatureCollection", "features": [geopromo::geofence::geojson::fence_feature(&parsed.fences[0])]})
                .to_string()
                .as_bytes(),
            &options,
        )
        .unwrap();
        assert_eq!(again.fences, parsed.fences);
    }

    #[test]
    fn envelopes_round_the_globe_are_bands_along_their_parallels() {
        // What bbox-to-polygon tools write for a polar cap and for a band of latitudes: edges from
        // -180° to 180° along a parallel, which are straight in lon/lat and go the whole way round.
        let fc = json!({"type": "FeatureCollection", "features": [
            feature("cap", polygon(json!([[[-180, -90], [180, -90], [180, -60], [-180, -60], [-180, -90]]]))),
            feature("band", polygon(json!([[[-180, -5], [180, -5], [180, 5], [-180, 5], [-180, -5]]]))),
        ]});
        let options = ParseOptions::default().default_tolerance_m(1000.0);
        let parsed = parse_fences(fc.to_string().as_bytes(), &options).unwrap();
        assert_eq!(parsed.fences.len(), 2);
        let round_the_globe = parsed
            .repairs
            .iter()
            .filter(|r| r.what.contains("round the globe along that parallel"))
            .count();
        assert_eq!(round_the_globe, 4, "{:?}", parsed.repairs);
        assert!(parsed.repairs.iter().any(|r| r.what.contains("clipped")));
        // No H3 cover: at any useful resolution a band round the globe is tens of millions of cells.
        let index = FenceIndex::build(&parsed.fences, IndexOptions::default());
        let names = |found: &[FenceMatch]| {
            found
                .iter()
                .map(|m| (&*index.fence(m.fence).id, m.inside))
                .collect::<Vec<_>>()
        };
        for lon in [-180.0, -179.999, -90.0, 0.0, 90.0, 179.999, 180.0] {
            assert_eq!(
                names(&matches_everywhere(&index, -70.0, lon)),
                [("cap", true)],
                "{lon}"
            );
            assert_eq!(
                names(&matches_everywhere(&index, 0.0, lon)),
                [("band", true)],
                "{lon}"
            );
            // 0.005° beyond each band's edge: outside, at the distance to the parallel (~553 m).
            for lat in [-59.995, 5.005, -5.005] {
                let found = matches_everywhere(&index, lat, lon);
                assert_eq!(found.len(), 1, "({lat}, {lon}): {found:?}");
                assert!(!found[0].inside, "({lat}, {lon}): {found:?}");
                assert!(
                    (found[0].distance_m - 553.0).abs() < 6.0,
                    "({lat}, {lon}): {found:?}"
                );
            }
            assert!(matches_everywhere(&index, -50.0, lon).is_empty(), "{lon}");
        }
    }

    #[test]
    fn every_bad_feature_is_listed_and_skip_invalid_keeps_the_good_ones() {
        let fc = json!({"type": "FeatureCollection", "features": [
            feature("good", polygon(json!([square(0.0, 0.0, 1.0)]))),
            feature("open", polygon(json!([[[0, 0], [1, 0], [1, 1], [0, 1]]]))),
            json!({"type": "Nope"}),
        ]});
        let bytes = fc.to_string();
        let err = parse_fences(bytes.as_bytes(), &ParseOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "2 of 3 features are invalid");
        let parsed = parse_fences(
            bytes.as_bytes(),
            &ParseOptions::default().skip_invalid(true),
        )
        .unwrap();
        assert_eq!(parsed.fences.len(), 1);
        assert_eq!(
            parsed
                .skipped
                .iter()
                .map(|s| s.feature.index)
                .collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn collapsed_members_and_holes_are_dropped_and_reported() {
        let multi = json!({"type": "MultiPolygon", "coordinates": [
            [square(0.0, 0.0, 1.0), [[0.2, 0.2], [0.3, 0.3], [0.4, 0.4], [0.2, 0.2]]],
            [[[5, 5], [6, 6], [7, 7], [5, 5]]],
        ]});
        let fc = json!({"type": "FeatureCollection", "features": [feature("m", multi)]});
        let parsed = parse_fences(fc.to_string().as_bytes(), &ParseOptions::default()).unwrap();
        assert_eq!(parsed.fences[0].polygons.len(), 1);
        assert_eq!(parsed.fences[0].polygons[0].rings.len(), 1);
        let repairs: Vec<String> = parsed.repairs.iter().map(ToString::to_string).collect();
        assert_eq!(repairs, [
            "feature 0 (id \"m\"): repaired: dropped collapsed hole: polygon 0 ring 1",
            "feature 0 (id \"m\"): repaired: dropped collapsed member polygon 1 of the multipolygon",
        ]);
    }

    #[test]
    fn top_level_must_be_features() {
        let err = parse_fences(
            br#"{"type":"Polygon","coordinates":[]}"#,
            &ParseOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "expected a GeoJSON Feature or FeatureCollection at the top level, found type \"Polygon\"");
    }
}

mod matching {
    use super::*;

    #[test]
    fn holes_are_not_inside_but_their_edges_are_within_tolerance() {
        let donut = polygon(json!([square(10.0, 10.0, 1.0), square(10.4, 10.4, 0.2)]));
        let index = index_of(&fences_of(vec![feature("donut", donut)], 1000.0));
        assert!(matches_everywhere(&index, 10.2, 10.2)[0].inside);
        assert!(
            matches_everywhere(&index, 10.5, 10.5).is_empty(),
            "middle of the hole is 11 km from any edge"
        );
        let near_hole_edge = matches_everywhere(&index, 10.405, 10.5);
        assert!(!near_hole_edge[0].inside);
        assert!(
            (near_hole_edge[0].distance_m - 553.0).abs() < 2.0,
            "{near_hole_edge:?}"
        );
    }

    #[test]
    fn multipolygon_matches_by_its_nearest_member() {
        let multi = json!({"type": "MultiPolygon", "coordinates": [[square(0.0, 0.0, 0.1)], [square(0.2, 0.0, 0.1)]]});
        let index = index_of(&fences_of(vec![feature("two", multi)], 2000.0));
        assert!(
            matches_everywhere(&index, 0.05, 0.15).is_empty(),
            "5.6 km from both members"
        );
        let near_first = matches_everywhere(&index, 0.05, 0.11);
        assert_eq!(
            near_first.len(),
            1,
            "one match per fence, whichever member is nearer"
        );
        assert!(
            (near_first[0].distance_m - 1113.2).abs() < 1.0,
            "{near_first:?}"
        );
        let near_second = matches_everywhere(&index, 0.05, 0.195);
        assert!(
            (near_second[0].distance_m - 556.6).abs() < 1.0,
            "{near_second:?}"
        );
        assert!(matches_everywhere(&index, 0.05, 0.25)[0].inside);
    }

    #[test]
    fn tolerance_zero_matches_inside_and_on_the_boundary_only() {
        let index = index_of(&fences_of(
            vec![feature("z", polygon(json!([square(0.0, 0.0, 1.0)])))],
            0.0,
        ));
        assert!(matches_everywhere(&index, 0.5, 0.5)[0].inside);
        for (lat, lon) in [(0.0, 0.5), (0.5, 1.0), (0.0, 0.0), (1.0, 1.0)] {
            let on_edge = matches_everywhere(&index, lat, lon);
            assert_eq!(
                on_edge,
                vec![FenceMatch {
                    fence: 0,
                    inside: true,
                    distance_m: 0.0
                }],
                "({lat}, {lon})"
            );
        }
        assert!(
            matches_everywhere(&index, 1.000_01, 0.5).is_empty(),
            "1.1 m outside with tolerance 0"
        );
    }

    #[test]
    fn tolerance_is_per_fence() {
        let a = json!({"type": "Feature", "id": "a", "properties": {"tolerance_m": 100},
            "geometry": polygon(json!([square(0.0, 0.0, 1.0)]))});
        let b = feature("b", polygon(json!([square(0.0, 1.02, 1.0)])));
        let index = index_of(&fences_of(vec![a, b], 5000.0));
        // 0.01° (1.1 km) north of a, 0.01° south of b: only b's 5 km tolerance reaches.
        let m = matches_everywhere(&index, 1.01, 0.5);
        assert_eq!(m.len(), 1);
        assert_eq!(&*index.fence(m[0].fence).id, "b");
    }

    #[test]
    fn antimeridian_neighbours_are_found_from_the_other_side() {
        let west = polygon(json!([[
            [-180, 51],
            [-179.5, 51],
            [-179.5, 52],
            [-180, 52],
            [-180, 51]
        ]]));
        let east = polygon(json!([[
            [179.5, 51],
            [180, 51],
            [180, 52],
            [179.5, 52],
            [179.5, 51]
        ]]));
        let index = index_of(&fences_of(
            vec![feature("west", west), feature("east", east)],
            1000.0,
        ));
        let on_west_side = matches_everywhere(&index, 51.5, -179.995);
        assert_eq!(on_west_side.len(), 2, "{on_west_side:?}");
        assert!(on_west_side[0].inside);
        assert!(
            (on_west_side[1].distance_m - 348.0).abs() < 2.0,
            "{on_west_side:?}"
        );
        let beyond_east = matches_everywhere(&index, 51.5, 179.49);
        assert!(
            (beyond_east[0].distance_m - 696.0).abs() < 3.0,
            "{beyond_east:?}"
        );
    }

    #[test]
    fn high_latitude_fence_and_points_at_the_poles() {
        let north = polygon(json!([[[10, 84], [20, 84], [20, 85], [10, 85], [10, 84]]]));
        let index = index_of(&fences_of(vec![feature("north", north)], 5000.0));
        assert!(matches_everywhere(&index, 84.5, 15.0)[0].inside);
        let beyond = matches_everywhere(&index, 85.02, 15.0);
        assert!((beyond[0].distance_m - 2236.0).abs() < 15.0, "{beyond:?}");
        assert!(matches_everywhere(&index, 90.0, 0.0).is_empty());
        assert!(matches_everywhere(&index, -90.0, 180.0).is_empty());
    }

    #[test]
    fn ten_thousand_vertex_polygon_agrees_with_brute_force() {
        let fence = Fence {
            id: "big".into(),
            name: "big".into(),
            tolerance_m: 1000.0,
            polygons: vec![wobbly_polygon(-6.2, 106.8, 20_000.0, 10_000, 3)],
            circle: None,
        };
        let fences = vec![fence];
        let index = index_of(&fences);
        let mut points = uniform_points((-6.45, 106.55, -5.95, 107.05), 3000, 9);
        points.extend(near_boundary_points(&fences, 3000, 1500.0, 10));
        let hits = points
            .iter()
            .filter(|p| !matches_everywhere(&index, p.lat(), p.lon()).is_empty())
            .count();
        assert!(hits > 3000, "{hits}");
    }
}

mod circles {
    use super::*;
    use geo::Destination;
    use geopromo::geofence::geojson::fence_feature;

    fn circle(id: &str, lon: f64, lat: f64, radius_m: f64, tolerance_m: f64) -> serde_json::Value {
        json!({"type": "Feature", "id": id,
               "properties": {"radius_m": radius_m, "tolerance_m": tolerance_m},
               "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    }

    fn parse(features: Vec<serde_json::Value>) -> Vec<Fence> {
        let fc = json!({"type": "FeatureCollection", "features": features});
        parse_fences(fc.to_string().as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences
    }

    #[test]
    fn a_point_with_a_radius_is_a_circle_with_exact_geodesic_distances() {
        let (lon, lat, radius) = (106.8272, -6.1754, 500.0);
        let fences = parse(vec![circle("store", lon, lat, radius, 1000.0)]);
        let index = index_of(&fences);
        let centre = Point::new(lon, lat);
        let mut rng = SampleRng::new(11);
        for _ in 0..400 {
            let bearing = rng.range(0.0, 360.0);
            let from_centre = rng.range(0.0, 1700.0);
            let p = Geodesic.destination(centre, bearing, from_centre);
            let found = matches_everywhere(&index, p.y(), p.x());
            let exact = Geodesic.distance(centre, p);
            if exact <= radius - 0.01 {
                assert!(found.len() == 1 && found[0].inside, "{exact}: {found:?}");
            } else if exact >= radius + 0.01 && exact <= radius + 999.99 {
                assert_eq!(found.len(), 1, "{exact}");
                assert!(!found[0].inside);
                // Karney's geodesic against Vincenty's: the same to well under a centimetre.
                assert!(
                    (found[0].distance_m - (exact - radius)).abs() < 0.01,
                    "{exact}: {found:?}"
                );
            } else if exact >= radius + 1000.01 {
                assert!(found.is_empty(), "{exact}: {found:?}");
            }
        }
    }

    #[test]
    fn large_circles_and_circles_on_the_antimeridian_agree_across_strategies() {
        let fences = parse(vec![
            circle("wide", 10.0, 60.0, 100_000.0, 5000.0),
            circle("dateline", 179.95, -16.5, 10_000.0, 1000.0),
            circle("small", 10.5, 60.2, 50.0, 0.0),
        ]);
        let index = index_of(&fences);
        let mut rng = SampleRng::new(5);
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            let (centre, reach) = match rng.below(3) {
                0 => (Point::new(10.0, 60.0), 110_000.0),
                1 => (Point::new(179.95, -16.5), 12_000.0),
                _ => (Point::new(10.5, 60.2), 80.0),
            };
            let p = Geodesic.destination(centre, rng.range(0.0, 360.0), rng.range(0.0, reach));
            for m in matches_everywhere(&index, p.y(), p.x()) {
                seen[m.fence as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
        // East of the antimeridian, 400 m from the circle's edge on the far side of the line.
        let p = Geodesic.destination(Point::new(179.95, -16.5), 90.0, 10_000.0 + 400.0);
        assert!(p.x() < -179.0, "{p:?}");
        let found = matches_everywhere(&index, p.y(), p.x());
        assert_eq!(found.len(), 1);
        assert!((found[0].distance_m - 400.0).abs() < 0.01, "{found:?}");
    }

    #[test]
    fn circles_round_trip_through_their_feature_and_bad_radii_are_named() {
        let fences = parse(vec![circle("c", 2.35, 48.85, 250.0, 100.0)]);
        let again = parse(vec![fence_feature(&fences[0])]);
        assert_eq!(again, fences);
        assert_eq!(fences[0].circle.unwrap().radius_m, 250.0);
        for (radius, found) in [
            (json!(0), "0"),
            (json!(-3), "-3"),
            (json!(200_000), "200000"),
            (json!("5"), "\"5\""),
        ] {
            let bad = json!({"type": "Feature", "id": "c", "properties": {"radius_m": radius},
                "geometry": {"type": "Point", "coordinates": [0, 0]}});
            let problems = problems_of(bad);
            assert_eq!(codes(&problems), ["bad_radius"]);
            assert!(
                problems[0].to_string().ends_with(&format!("found {found}")),
                "{}",
                problems[0]
            );
        }
        let polar = json!({"type": "Feature", "id": "c", "properties": {"radius_m": 10},
            "geometry": {"type": "Point", "coordinates": [0, 89]}});
        assert_eq!(codes(&problems_of(polar)), ["beyond_supported_latitude"]);
        let nowhere = json!({"type": "Feature", "id": "c", "properties": {"radius_m": 10},
            "geometry": {"type": "Point", "coordinates": [0]}});
        assert_eq!(codes(&problems_of(nowhere)), ["bad_coordinates"]);
    }
}

mod accuracy {
    use super::*;

    /// The geodesic distance from `p` to the lon/lat-straight segment a→b, by dense sampling then golden
    /// section search with Karney's algorithm: the reference the contract is stated against.
    fn reference_distance(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
        let at = |t: f64| {
            Geodesic.distance(
                Point::new(p[0], p[1]),
                Point::new(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])),
            )
        };
        let best = (0..=200)
            .map(|i| i as f64 / 200.0)
            .min_by(|x, y| at(*x).total_cmp(&at(*y)))
            .unwrap();
        let (mut lo, mut hi) = ((best - 0.005).max(0.0), (best + 0.005).min(1.0));
        for _ in 0..60 {
            let (m1, m2) = (lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618);
            if at(m1) < at(m2) {
                hi = m2
            } else {
                lo = m1
            }
        }
        at(0.5 * (lo + hi)).min(at(0.0)).min(at(1.0))
    }

    #[test]
    fn distances_are_within_half_a_percent_of_geodesics_up_to_100_km() {
        let mut rng = SampleRng::new(42);
        let mut worst: f64 = 0.0;
        for _ in 0..400 {
            let lat = rng.range(-80.0, 80.0);
            let lon = rng.range(-179.0, 179.0);
            let len = rng.range(0.001, 1.0);
            let angle = rng.range(0.0, std::f64::consts::TAU);
            let a = [lon, lat];
            let b = [
                lon + len * angle.cos(),
                (lat + len * angle.sin()).clamp(-84.9, 84.9),
            ];
            let c = [
                lon + len * 0.5 * angle.sin(),
                (lat - len * 0.5 * angle.cos()).clamp(-84.9, 84.9),
            ];
            let poly = Polygon {
                rings: vec![vec![a, b, c, a]],
            };
            let fence = Fence {
                id: "t".into(),
                name: "t".into(),
                tolerance_m: 100_000.0,
                polygons: vec![poly],
                circle: None,
            };
            let index = FenceIndex::build(std::slice::from_ref(&fence), IndexOptions::default());
            let (dlat, dlon) = (
                rng.range(-0.8, 0.8),
                rng.range(-0.8, 0.8) / lat.to_radians().cos().max(0.2),
            );
            let Ok(p) = GeoPoint::new((lat + dlat).clamp(-85.0, 85.0), lon + dlon) else {
                continue;
            };
            let found = index.matches(p);
            let reference = [(a, b), (b, c), (c, a)]
                .iter()
                .map(|&(s, e)| reference_distance([p.lon(), p.lat()], s, e))
                .fold(f64::INFINITY, f64::min);
            match found.first() {
                Some(m) if m.inside => {}
                Some(m) => {
                    let err = (m.distance_m - reference).abs();
                    assert!(
                        err <= (0.005 * reference).max(1.0),
                        "{p}: {} vs {reference}",
                        m.distance_m
                    );
                    worst = worst.max(err / reference.max(200.0));
                }
                None => assert!(reference > 99_000.0, "{p}: missed at {reference} m"),
            }
        }
        assert!(worst < 0.005, "worst relative error {worst}");
    }
}

mod counties {
    use super::*;

    fn load() -> geopromo::geofence::ParsedFences {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/geodata/us-counties.geojson"
        ))
        .unwrap();
        parse_fences(&bytes, &ParseOptions::default().skip_invalid(true)).unwrap()
    }

    #[test]
    fn the_whole_file_validates_with_known_problems() {
        let parsed = load();
        assert_eq!(parsed.fences.len() + parsed.skipped.len(), 3231);
        assert_eq!(parsed.skipped.len(), 22, "{:#?}", parsed.skipped);
        assert_eq!(parsed.repairs.len(), 21);
        assert!(parsed
            .skipped
            .iter()
            .all(|s| !s.problems.is_empty() && s.feature.id.is_some()));
        let aleutians = parsed.fences.iter().find(|f| f.id == "02016").unwrap();
        assert!(aleutians.polygons.iter().any(|p| p.rings[0][0][0] > 170.0));
        assert!(aleutians.polygons.iter().any(|p| p.rings[0][0][0] < -170.0));
    }

    #[test]
    fn every_strategy_agrees_with_brute_force_over_the_counties() {
        let parsed = load();
        let index = FenceIndex::build(
            &parsed.fences,
            IndexOptions::default().h3_resolution(Some(Resolution::Seven)),
        );
        let mut points = uniform_points(CONUS_BOUNDS, 4000, 11);
        points.extend(near_boundary_points(&parsed.fences, 4000, 1200.0, 12));
        points.extend(uniform_points((51.0, 172.0, 53.5, 180.0), 500, 13));
        points.extend(uniform_points((51.0, -180.0, 53.5, -165.0), 500, 14));
        let matched = points
            .iter()
            .filter(|p| !matches_everywhere(&index, p.lat(), p.lon()).is_empty())
            .count();
        assert!(matched > 6000, "{matched}");
        let sf = index.matches(GeoPoint::new(37.7793, -122.4193).unwrap());
        assert_eq!(&*index.fence(sf[0].fence).name, "San Francisco");
    }
}

mod world {
    use super::*;

    fn load(tolerance_m: f64) -> geopromo::geofence::ParsedFences {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/geodata/world-countries.geojson"
        ))
        .unwrap();
        let options = ParseOptions::default()
            .skip_invalid(true)
            .default_tolerance_m(tolerance_m);
        parse_fences(&bytes, &options).unwrap()
    }

    /// Near the real world's borders (coasts, enclaves, the antimeridian repairs, the clipped
    /// Antarctica), every lookup path agrees with testing every part by crossing count.
    #[test]
    fn near_border_lookups_agree_with_brute_force() {
        let parsed = load(5000.0);
        let index = FenceIndex::build(
            &parsed.fences,
            IndexOptions::default().h3_resolution(Some(Resolution::Five)),
        );
        let points = near_boundary_points(&parsed.fences, 3000, 8000.0, 21);
        let matched = points
            .iter()
            .filter(|p| !matches_everywhere(&index, p.lat(), p.lon()).is_empty())
            .count();
        assert!(matched > 1500, "{matched}");
    }

    #[test]
    fn russia_and_fiji_are_kept_whole_across_the_antimeridian_and_antarctica_is_clipped_at_85_south(
    ) {
        let parsed = load(5000.0);
        assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        assert_eq!(parsed.fences.len(), 241);
        let antarctica: Vec<_> = parsed
            .repairs
            .iter()
            .filter(|r| r.feature.id.as_deref() == Some("010"))
            .map(|r| r.what.clone())
            .collect();
        assert!(
            antarctica.iter().any(|r| r.contains("south pole"))
                && antarctica.iter().any(|r| r.contains("wholly beyond"))
                && antarctica.iter().any(|r| r.contains("clipped")),
            "{antarctica:?}"
        );
        let index = FenceIndex::build(&parsed.fences, IndexOptions::default());
        let name = |lat: f64, lon: f64| -> Vec<String> {
            matches_everywhere(&index, lat, lon)
                .iter()
                .map(|m| index.fence(m.fence).name.to_string())
                .collect()
        };
        // Chukotka, on both sides of the line; Taveuni (Fiji), which the line crosses.
        assert_eq!(name(68.0, 179.5), ["Russia"]);
        assert_eq!(name(68.0, -179.5), ["Russia"]);
        assert_eq!(name(-16.8, -179.97), ["Fiji"]);
        assert_eq!(name(-16.8, 179.99), ["Fiji"]);
        // Antarctica: the interior, either side of the antimeridian, and up to (not beyond) 85°S.
        // (Natural Earth's Antarctica leaves the Ross Ice Shelf out: at the antimeridian its coast is the
        // grounding line at 84.35°S.)
        assert_eq!(name(-80.0, 0.0), ["Antarctica"]);
        assert_eq!(name(-84.6, 179.9), ["Antarctica"]);
        assert_eq!(name(-84.6, -179.9), ["Antarctica"]);
        assert_eq!(name(-84.9, 90.0), ["Antarctica"]);
        assert!(name(-86.0, 90.0).is_empty());
        assert!(name(-60.0, -120.0).is_empty(), "the Southern Ocean");
    }

    #[test]
    fn every_strategy_agrees_with_brute_force_over_the_world() {
        agree_over_the_world(5000.0, 3000);
    }

    /// At 50 km the band is many blocks wide: whole-band blocks are one record each.
    #[test]
    fn every_strategy_agrees_with_brute_force_over_the_world_at_50_km() {
        agree_over_the_world(50_000.0, 1000);
    }

    fn agree_over_the_world(tolerance_m: f64, count: usize) {
        let parsed = load(tolerance_m);
        let index = FenceIndex::build(
            &parsed.fences,
            IndexOptions::default().h3_resolution(Some(Resolution::Five)),
        );
        let mut points = uniform_points((-84.0, -180.0, 84.0, 180.0), count, 21);
        points.extend(near_boundary_points(
            &parsed.fences,
            count,
            tolerance_m * 1.2,
            22,
        ));
        points.extend(uniform_points((60.0, 170.0, 72.0, 180.0), count / 10, 23));
        points.extend(uniform_points((60.0, -180.0, 72.0, -168.0), count / 10, 24));
        let matched = points
            .iter()
            .filter(|p| !matches_everywhere(&index, p.lat(), p.lon()).is_empty())
            .count();
        assert!(matched > count, "{matched}");
    }
}

mod swapping {
    use super::*;
    use geopromo::geofence::SharedIndex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn readers_keep_matching_while_the_index_is_swapped() {
        let a = fences_of(
            vec![feature("a", polygon(json!([square(0.0, 0.0, 1.0)])))],
            0.0,
        );
        let b = fences_of(
            vec![feature("b", polygon(json!([square(0.0, 0.0, 1.0)])))],
            0.0,
        );
        let shared = Arc::new(SharedIndex::from_pointee(FenceIndex::build(
            &a,
            IndexOptions::default(),
        )));
        let readers = Readers::start(&shared, |index: &FenceIndex, point, _| {
            let m = index.matches(point);
            assert_eq!(m.len(), 1, "a reader never sees a half-built index");
            index.fence(m[0].fence).id.to_string()
        });
        for i in 0..50 {
            let next = if i % 2 == 0 { &b } else { &a };
            shared.store(Arc::new(FenceIndex::build(next, IndexOptions::default())));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        readers.stop_and_check_both_seen();
    }

    /// Two threads matching (0.5, 0.5) against whatever `shared` holds until stopped; each records the
    /// fence ids `read` returns.
    struct Readers {
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<std::collections::BTreeSet<String>>>,
    }

    impl Readers {
        fn start<T: Send + Sync + 'static>(
            shared: &Arc<arc_swap::ArcSwap<T>>,
            read: fn(&T, GeoPoint, &mut Vec<geopromo::geofence::FenceMatch>) -> String,
        ) -> Self {
            let stop = Arc::new(AtomicBool::new(false));
            let threads = (0..2)
                .map(|_| {
                    let (shared, stop) = (Arc::clone(shared), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        let point = GeoPoint::new(0.5, 0.5).unwrap();
                        let (mut seen, mut out) = (std::collections::BTreeSet::new(), Vec::new());
                        while !stop.load(Ordering::Relaxed) {
                            seen.insert(read(&shared.load(), point, &mut out));
                        }
                        seen
                    })
                })
                .collect();
            Self { stop, threads }
        }

        /// Both fences were seen by every reader: the swaps happened while they read.
        fn stop_and_check_both_seen(self) {
            self.stop.store(true, Ordering::Relaxed);
            for reader in self.threads {
                let seen = reader.join().unwrap();
                assert!(seen.contains("a") && seen.contains("b"), "{seen:?}");
            }
        }
    }

    /// One change at a time into a layered index behind arc-swap: every snapshot has exactly one fence
    /// over the point (the change deletes one and adds the other together), so a reader that saw a mix
    /// would find none or two. Readers never wait: they load a snapshot and match.
    #[test]
    fn readers_see_each_layered_change_whole() {
        use geopromo::geofence::{FenceChange, LayeredIndex};
        let square_named = |id: &str| {
            fences_of(
                vec![feature(id, polygon(json!([square(0.0, 0.0, 1.0)])))],
                0.0,
            )
            .remove(0)
        };
        let (a, b) = (square_named("a"), square_named("b"));
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(LayeredIndex::build(
            vec![a.clone()],
            IndexOptions::default(),
        )));
        let readers = Readers::start(&shared, |index: &LayeredIndex, point, out| {
            index.match_point(point, out);
            assert_eq!(out.len(), 1, "a reader never sees half a change");
            index.fence(out[0].fence).id.to_string()
        });
        for i in 0..200 {
            let (gone, added) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let next = shared.load().apply([
                FenceChange::Delete(gone.id.clone()),
                FenceChange::Upsert(added.clone()),
            ]);
            shared.store(Arc::new(next));
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        readers.stop_and_check_both_seen();
        assert_eq!(shared.load().len(), 1);
    }
}
