//! Deterministic sample data: points and polygons for tests, benchmarks and simulations.
//! A fixed seed always gives the same data, on every machine.

use super::fence::{Fence, Polygon};
use super::metric::LocalMetric;
use super::point::GeoPoint;

/// SplitMix64: tiny, fast, and good enough for sample data (not for anything secret).
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

/// The contiguous United States as (min_lat, min_lon, max_lat, max_lon).
pub const CONUS_BOUNDS: (f64, f64, f64, f64) = (24.4, -125.0, 49.4, -66.9);

/// Points uniform in a lat/lon box.
#[must_use]
pub fn uniform_points(bounds: (f64, f64, f64, f64), count: usize, seed: u64) -> Vec<GeoPoint> {
    let mut rng = SampleRng::new(seed);
    let (min_lat, min_lon, max_lat, max_lon) = bounds;
    (0..count)
        .filter_map(|_| {
            GeoPoint::new(rng.range(min_lat, max_lat), rng.range(min_lon, max_lon)).ok()
        })
        .collect()
}

/// Points near fence boundaries: a random position on a random edge, moved up to `max_offset_m` in a random
/// direction; some land exactly on vertices.
#[must_use]
pub fn near_boundary_points(
    fences: &[Fence],
    count: usize,
    max_offset_m: f64,
    seed: u64,
) -> Vec<GeoPoint> {
    let rings: Vec<&[[f64; 2]]> = fences
        .iter()
        .flat_map(|f| f.polygons.iter())
        .flat_map(|p| p.rings.iter().map(Vec::as_slice))
        .collect();
    // Circles have no vertex rings; sample near them on their drawn outline.
    let circle_rings: Vec<Vec<[f64; 2]>> = fences
        .iter()
        .filter_map(|f| f.circle.map(|c| c.ring(64)))
        .collect();
    let rings: Vec<&[[f64; 2]]> = rings
        .into_iter()
        .chain(circle_rings.iter().map(Vec::as_slice))
        .collect();
    let mut rng = SampleRng::new(seed);
    let mut points = Vec::with_capacity(count);
    while points.len() < count && !rings.is_empty() {
        let ring = rings[rng.below(rings.len())];
        let i = rng.below(ring.len() - 1);
        let (a, b) = (ring[i], ring[i + 1]);
        let t = if rng.unit() < 0.05 { 0.0 } else { rng.unit() };
        let (lon, lat) = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]));
        let metric = LocalMetric::at_latitude(lat);
        let (dist, bearing) = (
            rng.range(0.0, max_offset_m),
            rng.range(0.0, std::f64::consts::TAU),
        );
        let lat = lat + dist * bearing.cos() / metric.m_per_deg_lat;
        let lon = lon + dist * bearing.sin() / metric.m_per_deg_lon;
        if let Ok(p) = GeoPoint::new(lat, lon) {
            points.push(p);
        }
    }
    points
}

/// A star-shaped polygon with `vertices` vertices and a wobbly radius around `radius_m`, like a detailed city
/// outline: simple by construction (one vertex per angle).
#[must_use]
pub fn wobbly_polygon(
    center_lat: f64,
    center_lon: f64,
    radius_m: f64,
    vertices: usize,
    seed: u64,
) -> Polygon {
    let mut rng = SampleRng::new(seed);
    let metric = LocalMetric::at_latitude(center_lat);
    let mut ring: Vec<[f64; 2]> = (0..vertices)
        .map(|i| {
            let angle = std::f64::consts::TAU * i as f64 / vertices as f64;
            let wobble = 0.75 + 0.2 * (angle * 7.0).sin() + 0.05 * rng.unit();
            let r = radius_m * wobble;
            [
                center_lon + r * angle.cos() / metric.m_per_deg_lon,
                center_lat + r * angle.sin() / metric.m_per_deg_lat,
            ]
        })
        .collect();
    ring.push(ring[0]);
    Polygon { rings: vec![ring] }
}
