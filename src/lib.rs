//! geopromo: GPS points in, location-based promotion eligibility out.
//!
//! - [`geofence`]: pure core: fences from GeoJSON, validation, the raster/H3/R-tree index, matching.
//! - [`promo`]: pure core: promotions, per-user enter/exit state, the input and output event contracts.
//! - [`live`]: pure core: the resumable window of live eligibility events and activity counts.
//! - [`stream`]: Kafka adapter: the consume → match → rules → produce processor, dead letters, state
//!   changelog, the embedded dev broker and the traffic simulator.
//! - [`store`]: sqlx store (SQLite or PostgreSQL): fences, promotions, users, eligibility.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`otel`]: distributed tracing (OTLP), `traceparent` through HTTP and Kafka headers.
//! - [`config`]: layered settings (file → environment file → `GEOPROMO__` variables).
//! - [`auth`]: EdDSA access tokens tied to revocable sessions, rotating refresh tokens, roles, limits.
//! - [`api`]: the HTTP API (axum): fences, promotions, eligibility, auth, problem+json, OpenAPI.
//! - [`app`]: wiring: build everything, run until a shutdown future resolves.
//! - [`batch`]: the `geopromo match` job: points from CSV/NDJSON, matches as NDJSON, on all cores.
//! - [`cli`]: command-line interface.
//! - [`error`]: the cause chain of an error in one line, for logs and messages.
//! - [`allocator`]: the binary's allocator: mimalloc for small blocks, the system's for large ones.
//! - [`text`]: the rule for ids, names and labels (no control characters), shared by every boundary.

pub mod allocator;
pub mod api;
pub mod app;
pub mod auth;
pub mod batch;
pub mod cli;
pub mod config;
pub mod error;
pub mod geofence;
pub mod live;
pub mod otel;
pub mod promo;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod text;
