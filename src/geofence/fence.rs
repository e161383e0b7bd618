//! Validated fences: what the matcher indexes.

use std::fmt;

/// A ring as (lon, lat) positions, closed: the last position equals the first.
pub type Ring = Vec<[f64; 2]>;

/// A polygon: the exterior ring first, then holes. Insideness is even-odd over all rings.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    pub rings: Vec<Ring>,
}

impl Polygon {
    #[must_use]
    pub fn vertex_count(&self) -> usize {
        self.rings.iter().map(|r| r.len().saturating_sub(1)).sum()
    }
}

/// A circular area: every point whose geodesic distance to `center` is at most `radius_m`. Built only
/// by validation, so the centre is within the supported latitudes and the radius in (0, 100 km].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    /// (lon, lat), as GeoJSON writes positions.
    pub center: [f64; 2],
    pub radius_m: f64,
}

impl Circle {
    /// A closed ring of `segments` vertices, each exactly `radius_m` (geodesic) from the centre: what the
    /// covers are built from (widened by [`Self::ring_gap_m`]), and what maps draw. Longitudes are kept
    /// continuous, so a circle on the antimeridian has vertices beyond ±180°.
    #[must_use]
    pub fn ring(&self, segments: usize) -> Ring {
        let [lon0, lat0] = self.center;
        let metric = super::metric::LocalMetric::at_latitude(lat0);
        let mut ring: Ring = (0..segments)
            .map(|i| {
                let angle = std::f64::consts::TAU * i as f64 / segments as f64;
                let (sin, cos) = angle.sin_cos();
                let mut scale = self.radius_m;
                let mut vertex = [lon0, lat0];
                // The local metric is off by up to a few tenths of a percent at 100 km: scale the offset
                // until the vertex lies on the geodesic circle.
                for _ in 0..4 {
                    vertex = [
                        lon0 + scale * cos / metric.m_per_deg_lon,
                        lat0 + scale * sin / metric.m_per_deg_lat,
                    ];
                    let d = super::metric::geodesic_distance_m(lat0, lon0, vertex[1], vertex[0]);
                    if d <= 0.0 {
                        break;
                    }
                    scale *= self.radius_m / d;
                }
                vertex
            })
            .collect();
        ring.push(ring[0]);
        ring
    }

    /// How far the chords of [`Self::ring`] can lie inside the circle (the sagitta, with room for the
    /// curvature of the ring in lon/lat): covers built from the ring are grown by this much.
    #[must_use]
    pub fn ring_gap_m(&self, segments: usize) -> f64 {
        let half_angle = std::f64::consts::PI / segments as f64;
        2.0 * self.radius_m * (1.0 - half_angle.cos()) + 0.5
    }

    /// Distance in metres from a point to the circle's boundary, and whether the point is inside.
    #[must_use]
    pub fn boundary_distance(&self, lat: f64, lon: f64) -> (f64, bool) {
        let d = super::metric::geodesic_distance_m(self.center[1], self.center[0], lat, lon);
        ((d - self.radius_m).abs(), d <= self.radius_m)
    }

    /// Whether the point is inside, and its distance to the boundary if that is at most `limit_m`
    /// (0 inside). Decided by the cheap mid-latitude distance (within 2% of the geodesic one within 200 km
    /// of a centre below 85°: `metric::tests`) when it is clear by a 3% margin, and by
    /// Vincenty's geodesic otherwise: most points a cover
    /// hands over are clearly far from a small circle, or clearly inside a large one.
    #[must_use]
    pub fn classify(&self, lat: f64, lon: f64, limit_m: f64) -> (bool, Option<f64>) {
        let approx = super::metric::distance_m(self.center[1], self.center[0], lat, lon);
        if approx > (self.radius_m + limit_m) * 1.03 + 1.0 {
            return (false, None);
        }
        if approx < self.radius_m * 0.97 - 1.0 {
            return (true, Some(0.0));
        }
        let (d, inside) = self.boundary_distance(lat, lon);
        match inside {
            true => (true, Some(0.0)),
            false => (false, (d <= limit_m).then_some(d)),
        }
    }
}

/// A named area with a match tolerance. Built only by validation ([`crate::geofence::geojson`]), so every
/// polygon in it is closed, simple, non-degenerate and within the supported latitudes. A fence is either
/// polygons or one circle (a GeoJSON `Point` with `properties.radius_m`).
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    pub id: String,
    pub name: String,
    pub tolerance_m: f64,
    pub polygons: Vec<Polygon>,
    pub circle: Option<Circle>,
}

impl Fence {
    #[must_use]
    pub fn vertex_count(&self) -> usize {
        self.polygons.iter().map(Polygon::vertex_count).sum()
    }

    /// The exterior rings, with a circle drawn as a 64-gon: for sampling and drawing, not for matching.
    #[must_use]
    pub fn outlines(&self) -> Vec<Ring> {
        let mut rings: Vec<Ring> = self.polygons.iter().map(|p| p.rings[0].clone()).collect();
        rings.extend(self.circle.map(|c| c.ring(64)));
        rings
    }
}

/// Where in a feature's coordinates a problem sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordPath {
    pub polygon: usize,
    pub ring: usize,
    pub position: Option<usize>,
}

impl fmt::Display for CoordPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "polygon {} ring {}", self.polygon, self.ring)?;
        if let Some(p) = self.position {
            write!(f, " position {p}")?;
        }
        Ok(())
    }
}

/// One thing wrong with one feature.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FenceProblem {
    #[error("not valid JSON for a feature: {0}")]
    Malformed(String),
    #[error("expected a GeoJSON Feature, found {0}")]
    NotAFeature(String),
    #[error("geometry is missing or null")]
    MissingGeometry,
    #[error("geometry type {0} is not supported (only Polygon, MultiPolygon, and Point with properties.radius_m for a circle)")]
    UnsupportedGeometry(String),
    #[error("a Point fence is a circle and needs properties.radius_m, a number in (0, {max}] metres, found {found}")]
    BadRadius { found: String, max: f64 },
    #[error("no id: set Feature.id or properties.id")]
    MissingId,
    #[error("id must be a non-empty string or an integer, found {0}")]
    BadId(String),
    #[error("id {id:?} is already used by feature {first_index}")]
    DuplicateId { id: String, first_index: usize },
    #[error("properties.name must be a string, found {0}")]
    BadName(String),
    #[error("properties.tolerance_m must be a number in [0, {max}], found {found}")]
    BadTolerance { found: String, max: f64 },
    #[error("{at}: {what}")]
    BadCoordinates { at: CoordPath, what: String },
    #[error("{at}: coordinate ({lon}, {lat}) is not a finite number")]
    CoordinateNotFinite { at: CoordPath, lon: f64, lat: f64 },
    #[error(
        "{at}: coordinate ({lon}, {lat}) is out of range (lon in [-180, 180], lat in [-90, 90])"
    )]
    CoordinateOutOfRange { at: CoordPath, lon: f64, lat: f64 },
    #[error("{at}: latitude {lat} is beyond ±{max}°, where straight lon/lat edges and the distance model degrade; polar fences are not supported")]
    BeyondSupportedLatitude { at: CoordPath, lat: f64, max: f64 },
    #[error("{at}: ring is not closed (first position {first:?} differs from last {last:?})")]
    RingNotClosed {
        at: CoordPath,
        first: [f64; 2],
        last: [f64; 2],
    },
    #[error("{at}: ring has {count} positions; a closed ring needs at least 4")]
    RingTooFewPositions { at: CoordPath, count: usize },
    #[error("{at}: edge spans {span:.1}° of longitude and the ring's longitudes never come back: it goes round the globe (encloses a pole), which fences cannot")]
    EdgeSpansAntimeridian { at: CoordPath, span: f64 },
    #[error("{at}: ring intersects itself at ({lon}, {lat})")]
    SelfIntersection { at: CoordPath, lon: f64, lat: f64 },
    #[error("polygon {polygon}: rings {ring_a} and {ring_b} cross at ({lon}, {lat})")]
    RingsCross {
        polygon: usize,
        ring_a: usize,
        ring_b: usize,
        lon: f64,
        lat: f64,
    },
    #[error("polygon {polygon} ring {ring}: hole lies outside its exterior ring")]
    HoleOutsideShell { polygon: usize, ring: usize },
    #[error("polygon {polygon}: exterior ring encloses zero area")]
    ZeroArea { polygon: usize },
    #[error("{count} vertices exceed the limit of {limit}")]
    TooManyVertices { count: usize, limit: usize },
    #[error("geometry has no polygon left")]
    Empty,
}

impl FenceProblem {
    /// A stable machine-readable code, for APIs and logs.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::NotAFeature(_) => "not_a_feature",
            Self::MissingGeometry => "missing_geometry",
            Self::UnsupportedGeometry(_) => "unsupported_geometry",
            Self::BadRadius { .. } => "bad_radius",
            Self::MissingId => "missing_id",
            Self::BadId(_) => "bad_id",
            Self::DuplicateId { .. } => "duplicate_id",
            Self::BadName(_) => "bad_name",
            Self::BadTolerance { .. } => "bad_tolerance",
            Self::BadCoordinates { .. } => "bad_coordinates",
            Self::CoordinateNotFinite { .. } => "coordinate_not_finite",
            Self::CoordinateOutOfRange { .. } => "coordinate_out_of_range",
            Self::BeyondSupportedLatitude { .. } => "beyond_supported_latitude",
            Self::RingNotClosed { .. } => "ring_not_closed",
            Self::RingTooFewPositions { .. } => "ring_too_few_positions",
            Self::EdgeSpansAntimeridian { .. } => "edge_spans_antimeridian",
            Self::SelfIntersection { .. } => "self_intersection",
            Self::RingsCross { .. } => "rings_cross",
            Self::HoleOutsideShell { .. } => "hole_outside_shell",
            Self::ZeroArea { .. } => "zero_area",
            Self::TooManyVertices { .. } => "too_many_vertices",
            Self::Empty => "empty",
        }
    }
}

/// Names a feature in reports: its position in the input and its id when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRef {
    pub index: usize,
    pub id: Option<String>,
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "feature {} (id {id:?})", self.index),
            None => write!(f, "feature {}", self.index),
        }
    }
}

/// A feature that was rejected, with everything wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedFeature {
    pub feature: FeatureRef,
    pub problems: Vec<FenceProblem>,
}

/// A degenerate part that validation dropped instead of rejecting the whole feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    pub feature: FeatureRef,
    pub what: String,
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: repaired: {}", self.feature, self.what)
    }
}
