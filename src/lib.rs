//! geopromo: GPS points in, location-based promotion eligibility out.
//!
//! - [`geofence`]: the pure core: fences from GeoJSON, validation, the H3/R-tree index, matching.
//! - [`batch`]: the `geopromo match` job: points from CSV/NDJSON, matches as NDJSON, on all cores.
//! - [`cli`]: command-line interface.

pub mod batch;
pub mod cli;
pub mod geofence;
