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
    parse_fences, Fence, FenceIndex, GeoPoint, IndexOptions, ParseOptions, Strategy,
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

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = match_point::uniform_conus, match_point::near_boundary, match_point::polygon_10k_vertices,
        match_point::circles, build::counties_index, build::world_index_by_tolerance, build::counties_parse
}
criterion_main!(benches);
