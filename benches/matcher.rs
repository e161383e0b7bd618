//! Matching and index-build benchmarks on real data (US counties, 1 km tolerance; Natural Earth countries at
//! four tolerances), a 10k-vertex polygon and 10,000 store-sized circles.
//! Run: `cargo bench --bench matcher`. Each iteration matches a batch of points on one thread.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use geopromo::geofence::sample::{
    near_boundary_points, uniform_points, wobbly_polygon, CONUS_BOUNDS,
};
use geopromo::geofence::{
    parse_fences, Fence, FenceIndex, GeoPoint, IndexOptions, ParseOptions, SpatialOrder, Strategy,
};
use h3o::Resolution;

const BATCH: usize = 20_000;

fn counties() -> Vec<Fence> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/geodata/us-counties.geojson"
    ))
    .unwrap();
    let options = ParseOptions::default()
        .default_tolerance_m(1000.0)
        .skip_invalid(true);
    parse_fences(&bytes, &options).unwrap().fences
}

fn world_countries(tolerance_m: f64) -> Vec<Fence> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/geodata/world-countries.geojson"
    ))
    .unwrap();
    let options = ParseOptions::default()
        .default_tolerance_m(tolerance_m)
        .skip_invalid(true);
    parse_fences(&bytes, &options).unwrap().fences
}

fn match_all(index: &FenceIndex, points: &[GeoPoint], strategy: Strategy) -> usize {
    let mut out = Vec::new();
    let mut total = 0;
    for &p in points {
        index.match_with(strategy, p, &mut out);
        total += out.len();
    }
    total
}

/// The default raster at three densities, the H3 cover at resolution 7, and R-tree candidates alone.
fn strategies(c: &mut Criterion, group_name: &str, fences: &[Fence], points: &[GeoPoint]) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(points.len() as u64));
    for cells in [32, 64, 128] {
        let index = FenceIndex::build(fences, IndexOptions::default().cells_per_degree(cells));
        group.bench_with_input(BenchmarkId::new("raster", cells), points, |b, pts| {
            b.iter(|| match_all(black_box(&index), pts, Strategy::Raster))
        });
        if cells == 64 {
            // The whole batch at once (`match_batch`): the raster lookups of 16 points interleaved.
            group.bench_with_input(BenchmarkId::new("raster_batch", cells), points, |b, pts| {
                let (mut out, mut ends) = (Vec::new(), Vec::new());
                b.iter(|| {
                    black_box(&index).match_batch(pts, &mut out, &mut ends);
                    out.len()
                })
            });
            group.bench_with_input(BenchmarkId::new("rtree", "exact"), points, |b, pts| {
                b.iter(|| match_all(black_box(&index), pts, Strategy::RTree))
            });
        }
    }
    let index = FenceIndex::build(
        fences,
        IndexOptions::default().h3_resolution(Some(Resolution::Seven)),
    );
    group.bench_with_input(BenchmarkId::new("h3", 7), points, |b, pts| {
        b.iter(|| match_all(black_box(&index), pts, Strategy::H3))
    });
    group.finish();
}

mod match_point {
    use super::*;

    pub fn uniform_conus(c: &mut Criterion) {
        let fences = counties();
        let points = uniform_points(CONUS_BOUNDS, BATCH, 1);
        strategies(c, "match_uniform_conus", &fences, &points);
    }

    pub fn near_boundary(c: &mut Criterion) {
        let fences = counties();
        let points = near_boundary_points(&fences, BATCH, 1500.0, 2);
        strategies(c, "match_near_boundary", &fences, &points);
        let hot: Vec<GeoPoint> = points
            .iter()
            .take(200)
            .cycle()
            .take(BATCH)
            .copied()
            .collect();
        strategies(c, "match_near_boundary_hot", &fences, &hot);
    }

    /// What `geopromo match` does with a block of points near boundaries: 200,000 of them (a 4 MB block
    /// holds ~190 k), matched on one core in runs of 4,096, in input order or in spatial order (the
    /// ordering's cost included).
    pub fn near_boundary_bulk(c: &mut Criterion) {
        const BULK: usize = 200_000;
        const RUN: usize = 4096;
        let fences = counties();
        let points = near_boundary_points(&fences, BULK, 1500.0, 7);
        let index = FenceIndex::build(&fences, IndexOptions::default().cells_per_degree(64));
        let mut group = c.benchmark_group("match_near_boundary_bulk");
        group.throughput(Throughput::Elements(points.len() as u64));
        group.sample_size(10);
        group.bench_function("input_order", |b| {
            let (mut out, mut ends) = (Vec::new(), Vec::new());
            b.iter(|| {
                let mut total = 0;
                for run in points.chunks(RUN) {
                    black_box(&index).match_batch(run, &mut out, &mut ends);
                    total += out.len();
                }
                total
            })
        });
        group.bench_function("spatial_order", |b| {
            let mut order = SpatialOrder::default();
            let (mut run_points, mut out, mut ends) = (Vec::new(), Vec::new(), Vec::new());
            b.iter(|| {
                let mut total = 0;
                for run in order.sort(&points).chunks(RUN) {
                    run_points.clear();
                    run_points.extend(run.iter().map(|&i| points[i as usize]));
                    black_box(&index).match_batch(&run_points, &mut out, &mut ends);
                    total += out.len();
                }
                total
            })
        });
        group.finish();
    }

    pub fn polygon_10k_vertices(c: &mut Criterion) {
        let fence = Fence {
            id: "big".into(),
            name: "10k-vertex city".into(),
            tolerance_m: 1000.0,
            polygons: vec![wobbly_polygon(-6.2, 106.8, 20_000.0, 10_000, 3)],
            circle: None,
        };
        let fences = vec![fence];
        let bounds = (-6.45, 106.55, -5.95, 107.05);
        let points = uniform_points(bounds, BATCH, 4);
        strategies(c, "match_10k_vertex_polygon", &fences, &points);
        let near = near_boundary_points(&fences, BATCH, 1500.0, 5);
        strategies(c, "match_10k_vertex_polygon_near_boundary", &fences, &near);
    }

    /// 10,000 circles of 100–500 m around a 60 × 60 km metro area (store geofences), 200 m tolerance.
    pub fn circles(c: &mut Criterion) {
        let centres = uniform_points((-6.45, 106.55, -5.95, 107.05), 10_000, 6);
        let features: Vec<serde_json::Value> = centres
            .iter()
            .enumerate()
            .map(|(i, p)| {
                serde_json::json!({"type": "Feature", "id": format!("store-{i}"),
                    "properties": {"radius_m": 100.0 + (i % 5) as f64 * 100.0, "tolerance_m": 200.0},
                    "geometry": {"type": "Point", "coordinates": [p.lon(), p.lat()]}})
            })
            .collect();
        let collection = serde_json::json!({"type": "FeatureCollection", "features": features});
        let fences = parse_fences(collection.to_string().as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        let points = uniform_points((-6.45, 106.55, -5.95, 107.05), BATCH, 7);
        strategies(c, "match_store_circles", &fences, &points);
    }
}

mod build {
    use super::*;

    pub fn counties_index(c: &mut Criterion) {
        let fences = counties();
        let mut group = c.benchmark_group("index_build_counties");
        group.sample_size(10);
        for cells in [32, 64, 128] {
            group.bench_with_input(BenchmarkId::new("raster", cells), &fences, |b, f| {
                b.iter(|| {
                    FenceIndex::build(
                        black_box(f),
                        IndexOptions::default().cells_per_degree(cells),
                    )
                })
            });
        }
        group.bench_with_input(BenchmarkId::new("raster64+h3", 7), &fences, |b, f| {
            b.iter(|| {
                FenceIndex::build(
                    black_box(f),
                    IndexOptions::default().h3_resolution(Some(Resolution::Seven)),
                )
            })
        });
        group.finish();
    }

    /// The same fences at four tolerances: time and memory follow the boundary length times the
    /// tolerance, not the area the fences cover (sizes printed once per tolerance).
    pub fn world_index_by_tolerance(c: &mut Criterion) {
        let mut group = c.benchmark_group("index_build_world_countries");
        group.sample_size(10);
        for tolerance_m in [100.0, 1_000.0, 10_000.0, 50_000.0] {
            let fences = world_countries(tolerance_m);
            let stats = FenceIndex::build(&fences, IndexOptions::default())
                .stats()
                .clone();
            eprintln!(
                "world countries at {tolerance_m} m: {} raster cells in {} dense blocks, ~{:.0} MB",
                stats.raster_cells,
                stats.raster_dense_blocks,
                stats.approx_heap_bytes as f64 / 1e6
            );
            group.bench_with_input(
                BenchmarkId::new("raster64", tolerance_m),
                &fences,
                |b, f| b.iter(|| FenceIndex::build(black_box(f), IndexOptions::default())),
            );
        }
        group.finish();
    }

    pub fn counties_parse(c: &mut Criterion) {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/geodata/us-counties.geojson"
        ))
        .unwrap();
        let mut group = c.benchmark_group("parse_validate_counties");
        group.sample_size(10);
        group.bench_function("geojson", |b| {
            b.iter(|| {
                parse_fences(
                    black_box(&bytes),
                    &ParseOptions::default().skip_invalid(true),
                )
                .unwrap()
            })
        });
        group.finish();
    }
}

/// Changing one fence in a set of 100,000 (store-zone-sized polygons of 24–96 vertices spread over the
/// continental US, 200 m tolerance): the time from handing the change to the index to matching a point
/// with the new snapshot. The base is built once; every iteration starts from it (or from it with 256
/// changes already in the overlay, close to the worst case before a compaction).
mod fence_changes {
    use super::*;
    use geopromo::geofence::sample::SampleRng;
    use geopromo::geofence::{FenceChange, LayeredIndex};

    fn zones(count: usize) -> Vec<Fence> {
        let centres = uniform_points(CONUS_BOUNDS, count, 11);
        let mut rng = SampleRng::new(12);
        centres
            .iter()
            .enumerate()
            .map(|(i, p)| Fence {
                id: format!("zone-{i}"),
                name: format!("zone {i}"),
                tolerance_m: 200.0,
                polygons: vec![wobbly_polygon(
                    p.lat(),
                    p.lon(),
                    rng.range(300.0, 1500.0),
                    24 + rng.below(73),
                    i as u64,
                )],
                circle: None,
            })
            .collect()
    }

    pub fn one_change_in_100k(c: &mut Criterion) {
        let fences = zones(100_000);
        let started = std::time::Instant::now();
        let base = LayeredIndex::build(fences.clone(), IndexOptions::default());
        eprintln!(
            "100k zones: {} vertices, base built in {:.2} s",
            base.base_stats().vertices,
            started.elapsed().as_secs_f64()
        );
        let county = counties()
            .into_iter()
            .max_by_key(Fence::vertex_count)
            .unwrap();
        let county_vertices = county.vertex_count();
        let [lon, lat] = county.polygons[0].rings[0][0];
        let probe = GeoPoint::new(lat, lon).unwrap();
        let mut moved = fences[500].clone();
        for position in moved.polygons[0].rings[0].iter_mut() {
            position[1] += 0.01;
        }
        let busy = base.apply((0..256).map(|i| {
            let mut f = fences[i * 7].clone();
            f.name = format!("renamed {i}");
            FenceChange::Upsert(f)
        }));

        let mut group = c.benchmark_group("fence_change_in_100k");
        let mut out = Vec::new();
        // The probe sits on the changed fence's first vertex: matched when the fence is there.
        let mut run = |name: &str, from: &LayeredIndex, change: FenceChange, probe: GeoPoint| {
            let expect_match = matches!(change, FenceChange::Upsert(_));
            group.bench_function(name, |b| {
                b.iter(|| {
                    let next = from.apply([change.clone()]);
                    next.match_point(probe, &mut out);
                    assert_eq!(!out.is_empty(), expect_match);
                    next
                })
            });
        };
        eprintln!("added fence: {county_vertices} vertices");
        let first_vertex = |f: &Fence| {
            let [lon, lat] = f.polygons[0].rings[0][0];
            GeoPoint::new(lat, lon).unwrap()
        };
        let zone_42 = first_vertex(&fences[42]);
        let moved_probe = first_vertex(&moved);
        run(
            "add_county",
            &base,
            FenceChange::Upsert(county.clone()),
            probe,
        );
        run(
            "replace_zone",
            &base,
            FenceChange::Upsert(moved),
            moved_probe,
        );
        run(
            "delete_zone",
            &base,
            FenceChange::Delete("zone-42".into()),
            zone_42,
        );
        run(
            "add_county_overlay_256",
            &busy,
            FenceChange::Upsert(county),
            probe,
        );
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = match_point::uniform_conus, match_point::near_boundary, match_point::near_boundary_bulk,
        match_point::polygon_10k_vertices,
        match_point::circles, build::counties_index, build::world_index_by_tolerance, build::counties_parse,
        fence_changes::one_change_in_100k
}
criterion_main!(benches);
