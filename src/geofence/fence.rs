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

/// A named area with a match tolerance. Built only by validation ([`crate::geofence::geojson`]), so every
/// polygon in it is closed, simple, non-degenerate and within the supported latitudes.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    pub id: String,
    pub name: String,
    pub tolerance_m: f64,
    pub polygons: Vec<Polygon>,
}

impl Fence {
    #[must_use]
    pub fn vertex_count(&self) -> usize {
        self.polygons.iter().map(Polygon::vertex_count).sum()
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
    #[error("geometry type {0} is not supported (only Polygon and MultiPolygon)")]
    UnsupportedGeometry(String),
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
    #[error("{at}: edge spans {span:.1}° of longitude; features crossing the antimeridian must be split at ±180° (RFC 7946 §3.1.9)")]
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
