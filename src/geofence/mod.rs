//! The geofence engine: pure, synchronous, free of I/O. Fences come in as GeoJSON ([`geojson`]), are
//! validated into [`Fence`]s, and are indexed into a [`FenceIndex`] that matches points.

mod cover;
pub mod draw;
pub mod fence;
pub mod geojson;
pub mod index;
pub mod layered;
pub mod metric;
pub mod order;
pub mod part;
pub mod point;
mod polar;
pub(crate) mod prefetch;
mod raster;
pub mod sample;
mod validate;

pub use fence::{Circle, Fence, FenceProblem, Polygon, RejectedFeature, Repair};
pub use geojson::{parse_fences, GeoJsonError, ParseOptions, ParsedFences};
pub use index::{FenceIndex, FenceInfo, FenceMatch, IndexOptions, IndexStats, Strategy};
pub use layered::{FenceChange, LayeredIndex};
pub use order::{spatial_order, SpatialOrder};
pub use point::{GeoPoint, PointError};

/// A fence index that can be replaced atomically while readers keep matching against the one they loaded.
pub type SharedIndex = arc_swap::ArcSwap<FenceIndex>;
