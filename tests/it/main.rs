//! The integration suite as one binary: one link instead of one per file, and one set of shared fixtures
//! (`common`: the Kafka settings and clients, fresh databases, the HTTP test client). Each module is one
//! area; run one with `cargo test --release --test it -- stream_mock::`.
//!
//! Every test that needs a database gets a fresh one (a SQLite file in a temp dir, or a new PostgreSQL
//! database), every server listens on port 0, and every Kafka test has its own cluster or group.

mod common;

mod api;
mod api_hardening;
mod auth;
mod cli;
mod console;
mod deploy;
mod failover;
mod fuzz_api;
mod geofence_engine;
mod geofence_properties;
mod live;
mod outside;
mod propagation;
mod store;
mod stream_mock;
mod stream_tansu;
mod traces;
