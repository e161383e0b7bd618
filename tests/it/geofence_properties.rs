//! Property tests: the indexed lookups must give exactly what testing every part gives, for random points,
//! points near boundaries and points on vertices, over random fences with holes and varied tolerances.

use geopromo::geofence::sample::{near_boundary_points, wobbly_polygon};
use geopromo::geofence::{
    Fence, FenceChange, FenceIndex, GeoPoint, IndexOptions, LayeredIndex, Polygon,
    Strategy as Lookup,
};
use h3o::Resolution;
use proptest::prelude::*;

fn ring_around(lat: f64, lon: f64, radius_m: f64, vertices: usize, seed: u64) -> Vec<[f64; 2]> {
    wobbly_polygon(lat, lon, radius_m, vertices, seed)
        .rings
        .remove(0)
}

/// A random town: a wobbly outline, sometimes with a hole, sometimes with a second member, anywhere below
/// 80° latitude (including across the antimeridian's neighbourhood).
fn fence_strategy(id: usize) -> impl Strategy<Value = Fence> {
    (
        -80.0f64..80.0,
        -1.0f64..1.0,
        500.0f64..30_000.0,
        4usize..300,
        any::<u64>(),
        prop_oneof![Just(0.0), 1.0f64..5000.0],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            move |(lat, east, radius, vertices, seed, tolerance_m, hole, second)| {
                // Up to the antimeridian but never across it (fences that cross it are refused today):
                // the outline and the second member reach at most 4.5 radii east or west.
                let reach_deg = 4.5 * radius / (111_000.0 * lat.to_radians().cos());
                let lon = east * (180.0 - reach_deg);
                let mut rings = vec![ring_around(lat, lon, radius, vertices, seed)];
                if hole {
                    rings.push(ring_around(lat, lon, radius * 0.3, 8, seed ^ 1));
                }
                let mut polygons = vec![Polygon { rings }];
                if second {
                    let offset = radius * 3.0 / 111_000.0;
                    polygons.push(Polygon {
                        rings: vec![ring_around(lat, lon + offset, radius * 0.5, 12, seed ^ 2)],
                    });
                }
                Fence {
                    id: format!("f{id}"),
                    name: format!("town {id}"),
                    tolerance_m,
                    polygons,
                    circle: None,
                }
            },
        )
}

fn fences_strategy() -> impl Strategy<Value = Vec<Fence>> {
    (1usize..4).prop_flat_map(|n| (0..n).map(fence_strategy).collect::<Vec<_>>())
}

/// Points around the fences: near vertices, on vertices, on edge midpoints, and anywhere near.
fn probe_points(fences: &[Fence], jitter: &[(f64, f64)]) -> Vec<GeoPoint> {
    let mut points = Vec::new();
    for (k, ring) in fences
        .iter()
        .flat_map(|f| f.polygons.iter())
        .flat_map(|p| p.rings.iter())
        .enumerate()
    {
        for (i, w) in ring.windows(2).enumerate().step_by(1 + ring.len() / 12) {
            let (dlat, dlon) = jitter[(i + k) % jitter.len()];
            for (lon, lat) in [
                (w[0][0], w[0][1]),
                (0.5 * (w[0][0] + w[1][0]), 0.5 * (w[0][1] + w[1][1])),
                (w[0][0] + dlon, w[0][1] + dlat),
            ] {
                let lon = if lon > 180.0 {
                    lon - 360.0
                } else if lon < -180.0 {
                    lon + 360.0
                } else {
                    lon
                };
                points.extend(GeoPoint::new(lat.clamp(-90.0, 90.0), lon).ok());
            }
        }
    }
    points
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Boundaries belong to their fence: every vertex matches its own fence as inside, at distance 0.
    #[test]
    fn every_vertex_is_inside_its_fence(fences in fences_strategy()) {
        let index = FenceIndex::build(&fences, IndexOptions::default());
        for (f, fence) in fences.iter().enumerate() {
            for &[lon, lat] in fence.polygons.iter().flat_map(|p| p.rings.iter()).flatten() {
                let found = index.matches(GeoPoint::new(lat, lon).unwrap());
                let own = found.iter().find(|m| m.fence == f as u32);
                prop_assert!(own.is_some_and(|m| m.inside && m.distance_m == 0.0), "({}, {}): {:?}", lat, lon, found);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn indexed_lookups_equal_brute_force(
        fences in fences_strategy(),
        jitter in prop::collection::vec((-0.08f64..0.08, -0.08f64..0.08), 16),
        cells_per_degree in prop_oneof![Just(16u32), Just(64), Just(200)],
    ) {
        let options = IndexOptions::default()
            .cells_per_degree(cells_per_degree)
            .h3_resolution(Some(Resolution::Eight));
        let index = FenceIndex::build(&fences, options);
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        let probes = probe_points(&fences, &jitter);
        prop_assert!(probes.len() >= 3);
        let (mut batch, mut ends) = (Vec::new(), Vec::new());
        index.match_batch(&probes, &mut batch, &mut ends);
        prop_assert_eq!(ends.len(), probes.len());
        for (i, &point) in probes.iter().enumerate() {
            index.match_point_brute_force(point, &mut expected);
            for strategy in [Lookup::Raster, Lookup::H3, Lookup::RTree] {
                index.match_with(strategy, point, &mut actual);
                prop_assert_eq!(&actual, &expected, "{:?} at {}", strategy, point);
            }
            let from = if i == 0 { 0 } else { ends[i - 1] };
            prop_assert_eq!(&batch[from..ends[i]], &expected[..], "batch at {}", point);
        }
    }

    /// Points within a few kilometres of an edge, on both sides: where the indexed lookups tell inside
    /// from outside by the side of the nearest edge, and the reference counts crossings.
    #[test]
    fn near_boundary_lookups_equal_brute_force(
        fences in fences_strategy(),
        max_offset_m in prop_oneof![Just(50.0f64), Just(1500.0), Just(6000.0)],
        seed in any::<u64>(),
    ) {
        let index = FenceIndex::build(&fences, IndexOptions::default());
        let probes = near_boundary_points(&fences, 400, max_offset_m, seed);
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        let (mut batch, mut ends) = (Vec::new(), Vec::new());
        index.match_batch(&probes, &mut batch, &mut ends);
        for (i, &point) in probes.iter().enumerate() {
            index.match_point_brute_force(point, &mut expected);
            index.match_with(Lookup::Raster, point, &mut actual);
            prop_assert_eq!(&actual, &expected, "raster at {}", point);
            let from = if i == 0 { 0 } else { ends[i - 1] };
            prop_assert_eq!(&batch[from..ends[i]], &expected[..], "batch at {}", point);
        }
    }

    #[test]
    fn distances_respect_tolerance_and_inside_means_zero(
        fences in fences_strategy(),
        jitter in prop::collection::vec((-0.05f64..0.05, -0.05f64..0.05), 8),
    ) {
        let index = FenceIndex::build(&fences, IndexOptions::default());
        for point in probe_points(&fences, &jitter) {
            for m in index.matches(point) {
                let tolerance = index.fence(m.fence).tolerance_m;
                prop_assert!(m.distance_m >= 0.0 && m.distance_m <= tolerance, "{:?} tol {}", m, tolerance);
                prop_assert_eq!(m.inside, m.distance_m == 0.0);
            }
        }
    }
}

/// A change to fence `f{id}` for ids 0..6: an upsert of a new random town, or a delete.
fn change_strategy() -> impl Strategy<Value = FenceChange> {
    (0usize..6, any::<bool>()).prop_flat_map(|(id, delete)| {
        if delete {
            Just(FenceChange::Delete(format!("f{id}"))).boxed()
        } else {
            fence_strategy(id).prop_map(FenceChange::Upsert).boxed()
        }
    })
}

/// (id, inside, distance) per match, by id: positions differ between a layered index and a fresh build.
fn by_id(
    matches: &[geopromo::geofence::FenceMatch],
    id_of: impl Fn(u32) -> String,
) -> Vec<(String, bool, f64)> {
    let mut named: Vec<_> = matches
        .iter()
        .map(|m| (id_of(m.fence), m.inside, m.distance_m))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A layered index after any sequence of changes (in one or several snapshots, compacted or not)
    /// answers exactly what a fresh build over the resulting fence set answers, on every lookup path.
    #[test]
    fn layered_changes_equal_a_rebuild(
        initial in fences_strategy(),
        changes in prop::collection::vec(change_strategy(), 1..8),
        split in 0usize..8,
        compact in any::<bool>(),
        extra_reach_m in prop_oneof![Just(0.0), 1.0f64..500.0],
        jitter in prop::collection::vec((-0.08f64..0.08, -0.08f64..0.08), 16),
    ) {
        let options = IndexOptions::default().extra_reach_m(extra_reach_m);
        let mut expected_set: Vec<Fence> = initial.clone();
        for change in &changes {
            match change {
                FenceChange::Upsert(fence) => match expected_set.iter_mut().find(|f| f.id == fence.id) {
                    Some(existing) => *existing = fence.clone(),
                    None => expected_set.push(fence.clone()),
                },
                FenceChange::Delete(id) => expected_set.retain(|f| &f.id != id),
            }
        }
        let split = split.min(changes.len());
        let mut layered = LayeredIndex::build(initial.clone(), options)
            .apply(changes[..split].iter().cloned());
        if compact {
            layered = layered.compacted();
        }
        let layered = layered.apply(changes[split..].iter().cloned());
        prop_assert_eq!(layered.len(), expected_set.len());
        let fresh = FenceIndex::build(&expected_set, options);
        let mut everything = initial.clone();
        everything.extend(changes.iter().filter_map(|c| match c {
            FenceChange::Upsert(f) => Some(f.clone()),
            FenceChange::Delete(_) => None,
        }));
        let (mut expected, mut actual) = (Vec::new(), Vec::new());
        for point in probe_points(&everything, &jitter) {
            fresh.match_point_brute_force(point, &mut expected);
            let expected = by_id(&expected, |p| fresh.fence(p).id.to_string());
            layered.match_point_brute_force(point, &mut actual);
            prop_assert_eq!(&by_id(&actual, |p| layered.fence(p).id.to_string()), &expected, "brute force at {}", point);
            for strategy in [Lookup::Raster, Lookup::RTree] {
                layered.match_with(strategy, point, &mut actual);
                prop_assert!(actual.windows(2).all(|w| w[0].fence < w[1].fence), "ordered by position");
                prop_assert_eq!(&by_id(&actual, |p| layered.fence(p).id.to_string()), &expected, "{:?} at {}", strategy, point);
            }
        }
    }
}
